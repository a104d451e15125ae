//! Finding CPython in a process: the object that exports `_PyRuntime` (the executable of a
//! static build such as Debian's, or `libpython3.X.so`), where it is loaded, which version it
//! is, and a check of our offsets against what the interpreter says about itself
//! (`PyCode_Type`'s size and member table) before any of them is trusted.

use std::{fmt, fs, path::PathBuf};

use object::{Object, ObjectSegment, ObjectSymbol};

use super::layout::{self, VersionLayout};
use crate::{symbols::parse_maps_line, target::memory};

/// A CPython interpreter in process `pid`, with addresses in that process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PythonRuntime {
    pub pid: u32,
    /// Major, minor, micro (micro 0 when only the file name told the version).
    pub version: (u32, u32, u32),
    pub layout: VersionLayout,
    /// The object that holds the interpreter, as the process sees it.
    pub binary: PathBuf,
    /// `_PyRuntime`, and the address of its thread-state TLS key.
    pub runtime_address: u64,
    pub tss_key_address: u64,
    /// `PyCode_Type`: a frame's code is named only when its type is this.
    pub code_type: u64,
}

/// Why a process's CPython cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PythonError {
    /// A version whose layout this agent does not know.
    UnknownVersion { version: String, binary: PathBuf },
    /// What the interpreter says about its code objects disagrees with our table: reading its
    /// frames would give garbage, so none are read.
    LayoutMismatch { version: String, what: String },
    /// The process or its files could not be read (it may have exited).
    Unreadable { reason: String },
}

impl fmt::Display for PythonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownVersion { version, binary } => write!(
                f,
                "CPython {version} ({}) is not a version this agent can read frames of ({}): its profiles show the \
                 interpreter's C functions only",
                binary.display(),
                layout::KNOWN_VERSIONS
            ),
            Self::LayoutMismatch { version, what } => write!(
                f,
                "CPython {version} does not have the layout this agent expects ({what}): no Python frames in its \
                 profiles"
            ),
            Self::Unreadable { reason } => write!(f, "could not inspect the interpreter: {reason}"),
        }
    }
}

impl PythonRuntime {
    /// The CPython in `pid`, `Ok(None)` when it runs none.
    pub fn find(pid: u32) -> Result<Option<Self>, PythonError> {
        let maps = fs::read_to_string(format!("/proc/{pid}/maps"))
            .map_err(|e| PythonError::Unreadable { reason: format!("/proc/{pid}/maps: {e}") })?;
        let mappings: Vec<_> = maps.lines().filter_map(parse_maps_line).collect();
        let musl =
            mappings.iter().filter_map(|m| m.path.as_ref()?.file_name()?.to_str()).any(|n| n.starts_with("ld-musl"));
        let mut candidates: Vec<&PathBuf> = mappings
            .iter()
            .filter_map(|m| m.path.as_ref())
            .filter(|path| path.file_name().and_then(|n| n.to_str()).is_some_and(names_python))
            .collect();
        candidates.dedup();
        for path in candidates {
            let Some(first) = mappings.iter().filter(|m| m.path.as_ref() == Some(path)).min_by_key(|m| m.start) else {
                continue;
            };
            let host_path = PathBuf::from(format!("/proc/{pid}/root")).join(path.strip_prefix("/").unwrap_or(path));
            // Through a read cache: pyenv's libpython with its DWARF is tens of MB, of which only
            // the headers and symbol tables are read.
            let Ok(file) = fs::File::open(&host_path) else { continue };
            let cache = object::read::ReadCache::new(file);
            let Ok(elf) = object::File::parse(&cache) else { continue };
            let Some(symbols) = InterpreterSymbols::of(&elf) else { continue };
            let Some(bias) = load_bias(&elf, first.start, first.file_offset) else { continue };
            if musl {
                return Err(PythonError::LayoutMismatch {
                    version: "(on musl libc)".into(),
                    what: "its threads' states are found through glibc's thread-specific data".into(),
                });
            }
            return Self::at(pid, path.clone(), &symbols, bias).map(Some);
        }
        Ok(None)
    }

    fn at(pid: u32, binary: PathBuf, symbols: &InterpreterSymbols, bias: u64) -> Result<Self, PythonError> {
        let runtime_address = symbols.runtime.wrapping_add(bias);
        let version = match symbols.version_hex {
            // `Py_Version` (3.11+): PY_VERSION_HEX, 0xMMmmuu.. .
            Some(address) => memory::read_u32(pid, address.wrapping_add(bias))
                .map(|hex| (hex >> 24, (hex >> 16) & 0xff, (hex >> 8) & 0xff))
                .ok_or_else(|| PythonError::Unreadable { reason: "Py_Version could not be read".into() })?,
            None => version_from_name(&binary).ok_or_else(|| PythonError::UnknownVersion {
                version: "of unknown version".into(),
                binary: binary.clone(),
            })?,
        };
        let version_text = version_text(version);
        let layout = (version.0 == 3)
            .then(|| layout::for_minor(version.1))
            .flatten()
            .ok_or_else(|| PythonError::UnknownVersion { version: version_text.clone(), binary: binary.clone() })?;
        let code_type = symbols.code_type.wrapping_add(bias);
        let tss_key_address = runtime_address + layout.tss_key;
        check_code_type(pid, code_type, &layout)
            .and_then(|()| check_tss_key(pid, tss_key_address))
            .map_err(|what| PythonError::LayoutMismatch { version: version_text.clone(), what })?;
        Ok(Self { pid, version, layout, binary, runtime_address, tss_key_address, code_type })
    }

    /// `3.11.7`, or `3.9` when the file name was all that told the version.
    pub fn version_text(&self) -> String {
        version_text(self.version)
    }
}

fn version_text((major, minor, micro): (u32, u32, u32)) -> String {
    if micro == 0 && minor < 11 {
        format!("{major}.{minor}")
    } else {
        format!("{major}.{minor}.{micro}")
    }
}

/// `python3.11`, `python3`, `libpython3.11.so.1.0`, `python3.11d`: worth opening.
fn names_python(name: &str) -> bool {
    name.starts_with("python") || name.starts_with("libpython")
}

/// `3.X` from `python3.X` or `libpython3.X.so...`.
fn version_from_name(path: &std::path::Path) -> Option<(u32, u32, u32)> {
    let name = path.file_name()?.to_str()?;
    let rest = name.strip_prefix("lib").unwrap_or(name).strip_prefix("python3.")?;
    let minor: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some((3, minor.parse().ok()?, 0))
}

/// The interpreter's symbols, as ELF virtual addresses.
struct InterpreterSymbols {
    runtime: u64,
    version_hex: Option<u64>,
    code_type: u64,
}

impl InterpreterSymbols {
    fn of<'data, R: object::ReadRef<'data>>(elf: &object::File<'data, R>) -> Option<Self> {
        let find =
            |name: &str| elf.dynamic_symbols().chain(elf.symbols()).find(|s| s.name() == Ok(name)).map(|s| s.address());
        Some(Self { runtime: find("_PyRuntime")?, version_hex: find("Py_Version"), code_type: find("PyCode_Type")? })
    }
}

/// What to add to an ELF virtual address to get the process address, from the mapping of the
/// file's lowest mapped offset.
fn load_bias<'data, R: object::ReadRef<'data>>(
    elf: &object::File<'data, R>,
    start: u64,
    file_offset: u64,
) -> Option<u64> {
    let segment = elf.segments().find(|segment| {
        let (offset, size) = segment.file_range();
        offset <= file_offset && file_offset < offset + size.max(1)
    })?;
    let vaddr = segment.address() + (file_offset - segment.file_range().0);
    Some(start.wrapping_sub(vaddr))
}

/// `PyTypeObject.tp_name`, `.tp_basicsize` and `.tp_members`, and `PyMemberDef`'s size and its
/// `name` and `offset` fields (x86_64, every supported version).
const TYPE_NAME: u64 = 24;
const TYPE_BASIC_SIZE: u64 = 32;
const TYPE_MEMBERS: u64 = 240;
const MEMBER_DEF_BYTES: u64 = 40;
const MEMBER_OFFSET: u64 = 16;

/// Checks our code-object offsets against `PyCode_Type` in the process: its name, its size
/// (where the bytecode starts, 3.11+) and the offsets its member table gives the fields we read.
fn check_code_type(pid: u32, code_type: u64, layout: &VersionLayout) -> Result<(), String> {
    let name = memory::read_u64(pid, code_type + TYPE_NAME)
        .and_then(|address| memory::read_c_string(pid, address, 16))
        .ok_or("PyCode_Type could not be read")?;
    if name != b"code" {
        return Err(format!("PyCode_Type is named {:?}", String::from_utf8_lossy(&name)));
    }
    if layout.code_adaptive != 0 {
        let size = memory::read_u64(pid, code_type + TYPE_BASIC_SIZE).ok_or("PyCode_Type's size")?;
        if size != u64::from(layout.code_adaptive) {
            return Err(format!("code objects are {size} bytes, not {}", layout.code_adaptive));
        }
    }
    let members = memory::read_u64(pid, code_type + TYPE_MEMBERS).ok_or("PyCode_Type's members")?;
    let line_table = match layout.line_table {
        super::layout::LineTableFormat::Lnotab => "co_lnotab",
        _ => "co_linetable",
    };
    let mut expected = vec![
        ("co_filename", layout.code_filename),
        ("co_name", layout.code_name),
        ("co_firstlineno", layout.code_first_line),
        (line_table, layout.code_line_table),
    ];
    if let Some(qualname) = layout.code_qualname {
        expected.push(("co_qualname", qualname));
    }
    // Bounded: the table is NULL-terminated and has about 20 entries.
    for index in 0..64 {
        let entry = members + index * MEMBER_DEF_BYTES;
        let name_address = memory::read_u64(pid, entry).ok_or("a member of PyCode_Type")?;
        if name_address == 0 {
            break;
        }
        let name = memory::read_c_string(pid, name_address, 32).ok_or("a member name of PyCode_Type")?;
        let offset = memory::read_u64(pid, entry + MEMBER_OFFSET).ok_or("a member offset of PyCode_Type")?;
        if let Some(at) = expected.iter().position(|(field, _)| field.as_bytes() == name) {
            let (field, ours) = expected.remove(at);
            if offset != u64::from(ours) {
                return Err(format!("{field} is at {offset}, not {ours}"));
            }
        }
    }
    match expected.first() {
        Some((field, _)) => Err(format!("PyCode_Type does not list {field}")),
        None => Ok(()),
    }
}

/// The thread-state key (`Py_tss_t` is `{int _is_initialized; pthread_key_t _key}`): once the
/// interpreter has made it, it must be one of the 32 glibc keeps in the thread itself, the only
/// ones the sampler reads. Not made yet (a process just exec'd) is fine: it is read per sample.
fn check_tss_key(pid: u32, key_address: u64) -> Result<(), String> {
    let initialized = memory::read_u32(pid, key_address - 4).ok_or("its thread-state key could not be read")?;
    let key = memory::read_u32(pid, key_address).ok_or("its thread-state key could not be read")?;
    match initialized {
        0 => Ok(()),
        1 if key < 32 => Ok(()),
        1 => Err(format!("its thread-state key is {key}, past the 32 glibc keeps in the thread")),
        other => Err(format!("its thread-state key is not where expected (flag {other})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_from_file_names() {
        assert_eq!(version_from_name("/usr/bin/python3.9".as_ref()), Some((3, 9, 0)));
        assert_eq!(version_from_name("/x/libpython3.10.so.1.0".as_ref()), Some((3, 10, 0)));
        assert_eq!(version_from_name("/usr/bin/python3".as_ref()), None);
        assert!(names_python("python3.11") && names_python("libpython3.8.so.1.0") && !names_python("libc.so.6"));
    }

    #[test]
    fn this_test_binary_runs_no_python() {
        assert_eq!(PythonRuntime::find(std::process::id()), Ok(None));
    }
}
