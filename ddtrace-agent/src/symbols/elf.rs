use std::{
    collections::HashMap,
    io,
    path::{Path, PathBuf},
};

use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol, SymbolKind};

use super::go_build_info::{self, GoBuild};
use super::{go_dwarf, go_pclntab};
use super::mapped_file::MappedFile;
use super::x86_calls::{self, ENDBR64};

/// True for a program built by Go: its toolchain has written `.go.buildinfo` into every binary
/// since Go 1.13, stripped or not.
pub fn built_by_go<'data, R: object::ReadRef<'data>>(file: &object::File<'data, R>) -> bool {
    file.sections().any(|section| section.name().is_ok_and(|name| name == ".go.buildinfo"))
}

/// Errors of symbol resolution; each names the file and what a user can do.
#[derive(Debug, thiserror::Error)]
pub enum SymbolError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} is not an ELF object this agent can read: {reason}")]
    NotElf { path: PathBuf, reason: String },
    #[error("symbol `{symbol}` not found in {path} (stripped binary, or another version of the library)")]
    MissingSymbol { path: PathBuf, symbol: String },
    #[error("no safe probe site for `{symbol}` in {path}: {reason}")]
    Unplaceable { path: PathBuf, symbol: String, reason: String },
    #[error("symbol `{symbol}` in {path} is at {address:#x}, outside every loadable segment")]
    NotInSegment { path: PathBuf, symbol: String, address: u64 },
}

/// Where to put a uprobe: an offset in the file, as the kernel wants it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeLocation {
    pub file_offset: u64,
    /// The function's virtual address in the ELF (for logs and tests).
    pub address: u64,
    /// A site in Go code with its own spec (when a hit counts, where the result is).
    pub go: Option<ddtrace_common::GoSiteSpec>,
}

/// The function symbols of one ELF file (dynamic and static tables together).
pub struct ElfSymbols {
    path: PathBuf,
    /// The file, mapped: probe placement reads function bytes from it.
    data: MappedFile,
    /// name -> virtual address of defined function symbols.
    functions: HashMap<String, u64>,
    /// name -> size in bytes, for the functions whose symbol gives one.
    sizes: HashMap<String, u64>,
    /// (vaddr, memsz, file offset, filesz) of each PT_LOAD segment.
    segments: Vec<(u64, u64, u64, u64)>,
    go: bool,
    x86_64: bool,
    /// Go binaries: their build, and the itabs of `.itablink` (the `(type, interface)` pairs
    /// the linker laid out), by address.
    go_build: Option<GoBuild>,
    go_itabs: Vec<u64>,
}

impl ElfSymbols {
    /// Reads and indexes `path` (a path on our side, e.g. under `/proc/<pid>/root`).
    pub fn load(path: &Path) -> Result<Self, SymbolError> {
        let data = MappedFile::open(path).map_err(|source| SymbolError::Read { path: path.to_path_buf(), source })?;
        Self::parse(path, data)
    }

    fn parse(path: &Path, data: MappedFile) -> Result<Self, SymbolError> {
        let not_elf = |reason: String| SymbolError::NotElf { path: path.to_path_buf(), reason };
        let file = object::File::parse(&*data).map_err(|e| not_elf(e.to_string()))?;
        if file.format() != object::BinaryFormat::Elf {
            return Err(not_elf(format!("{:?} format", file.format())));
        }
        let mut functions = HashMap::new();
        let mut sizes = HashMap::new();
        for symbol in file.dynamic_symbols().chain(file.symbols()) {
            if symbol.kind() != SymbolKind::Text || symbol.is_undefined() || symbol.address() == 0 {
                continue;
            }
            if let Ok(name) = symbol.name() {
                functions.entry(name.to_string()).or_insert(symbol.address());
                if symbol.size() > 0 {
                    sizes.entry(name.to_string()).or_insert(symbol.size());
                }
            }
        }
        let segments = file
            .segments()
            .map(|segment| {
                let (offset, filesz) = segment.file_range();
                (segment.address(), segment.size(), offset, filesz)
            })
            .collect();
        let go = built_by_go(&file);
        let x86_64 = file.architecture() == object::Architecture::X86_64;
        let (go_build, go_itabs) = if go { add_go_functions(&file, &mut functions, &mut sizes) } else { (None, Vec::new()) };
        drop(file);
        Ok(Self { path: path.to_path_buf(), data, functions, sizes, segments, go, x86_64, go_build, go_itabs })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether Go built this file: its goroutine stacks move, so no uretprobe may go in it.
    pub fn built_by_go(&self) -> bool {
        self.go
    }

    pub fn has_function(&self, name: &str) -> bool {
        self.functions.contains_key(name)
    }

    /// The file offset of function `name`'s first instruction worth probing.
    pub fn function_entry(&self, name: &str) -> Result<ProbeLocation, SymbolError> {
        let address = *self
            .functions
            .get(name)
            .ok_or_else(|| SymbolError::MissingSymbol { path: self.path.clone(), symbol: name.to_string() })?;
        self.entry_at(address).ok_or_else(|| SymbolError::NotInSegment {
            path: self.path.clone(),
            symbol: name.to_string(),
            address,
        })
    }

    /// The function a thin wrapper calls first (see [`x86_calls`]), when `also_called_by`
    /// calls it too: e.g. the `ssl_read_internal` behind `SSL_read_ex`, which `SSL_read`
    /// also calls, although the library does not export it. `None` when the wrapper does
    /// anything else first, the other function does not call the same one, or the file is not
    /// x86-64 code.
    pub fn wrapped_function(&self, wrapper: &str, also_called_by: &str) -> Option<ProbeLocation> {
        /// Enough of a function's start to reach its first call or its core call.
        const WRAPPER_PROLOGUE: usize = 32;
        const CALLER_SCAN: usize = 128;
        if !self.x86_64 {
            return None;
        }
        let wrapper_address = *self.functions.get(wrapper)?;
        let target = x86_calls::first_call_target(self.function_code(wrapper, WRAPPER_PROLOGUE)?, wrapper_address)?;
        let caller_address = *self.functions.get(also_called_by)?;
        // Within the caller only: the bytes after a short function may be the wrapper itself.
        let scan = self.sizes.get(also_called_by).map_or(CALLER_SCAN, |&size| CALLER_SCAN.min(size as usize));
        if !x86_calls::calls(self.function_code(also_called_by, scan)?, caller_address, target) {
            return None;
        }
        self.entry_at(target)
    }

    /// The function `wrapper` calls after rearranging its arguments, and where each register
    /// it passes came from (see [`x86_calls::forwarded_call`]). `None` when the wrapper does
    /// anything the decoder does not follow, or the file is not x86-64 code.
    pub fn forwarded_call(&self, wrapper: &str) -> Option<(ProbeLocation, x86_calls::ForwardedCall)> {
        const WRAPPER_PROLOGUE: usize = 48;
        if !self.x86_64 {
            return None;
        }
        let address = *self.functions.get(wrapper)?;
        let call = x86_calls::forwarded_call(self.function_code(wrapper, WRAPPER_PROLOGUE)?, address)?;
        Some((self.entry_at(call.target)?, call))
    }

    /// How the first instruction at `location` reads (its bytes and, for the ones uprobes care
    /// about, a name), and whether a uprobe there is emulated: for `--stats`.
    pub fn describe_site(&self, location: &ProbeLocation) -> String {
        let start = location.file_offset as usize;
        let code = self.data.get(start..start + 8).unwrap_or(&[]);
        let emulated = self.emulated_at(location);
        format!(
            "first instruction {} ({}): {}",
            code.iter().take(4).map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" "),
            x86_calls::instruction_kind(code),
            if emulated { "emulated" } else { "single-stepped (a second trap per call)" }
        )
    }

    /// Whether the kernel emulates the first instruction at `location` when a uprobe is there
    /// (no single-step; see [`x86_calls::emulated_by_uprobes`]).
    pub fn emulated_at(&self, location: &ProbeLocation) -> bool {
        let start = location.file_offset as usize;
        self.x86_64 && self.data.get(start..start + 8).is_some_and(x86_calls::emulated_by_uprobes)
    }

    /// Where a probe on the function at `address` goes: past its `endbr64`, if any.
    fn entry_at(&self, address: u64) -> Option<ProbeLocation> {
        let file_offset = self.file_offset(address)?;
        let starts_with_endbr = self
            .data
            .get(file_offset as usize..file_offset as usize + ENDBR64.len())
            .is_some_and(|bytes| bytes == ENDBR64);
        let skip = if starts_with_endbr { ENDBR64.len() as u64 } else { 0 };
        Some(ProbeLocation { file_offset: file_offset + skip, address: address + skip, go: None })
    }

    /// A probe at `address` exactly (a site inside a function), with its Go spec.
    pub fn site_at(&self, address: u64, go: ddtrace_common::GoSiteSpec) -> Option<ProbeLocation> {
        Some(ProbeLocation { file_offset: self.file_offset(address)?, address, go: Some(go) })
    }

    /// Function `name`'s whole code and its address, where its size is known (Go binaries:
    /// up to the next function), for placing probes inside it.
    pub fn whole_function(&self, name: &str) -> Option<(&[u8], u64)> {
        let address = *self.functions.get(name)?;
        let size = *self.sizes.get(name)? as usize;
        let start = self.file_offset(address)? as usize;
        Some((self.data.get(start..start.checked_add(size)?)?, address))
    }

    /// The address of function `name`, where the file names it.
    pub fn function_address(&self, name: &str) -> Option<u64> {
        self.functions.get(name).copied()
    }

    /// The offsets of `(struct type, member)` pairs from the file's DWARF (see [`go_dwarf`]);
    /// `None` when it has none it can read (stripped).
    pub fn go_member_offsets(&self, wanted: &[(&str, &str)]) -> Option<Vec<Option<u64>>> {
        go_dwarf::member_offsets(&object::File::parse(&*self.data).ok()?, wanted)
    }

    /// What a Go binary says of its build.
    pub fn go_build(&self) -> Option<&GoBuild> {
        self.go_build.as_ref()
    }

    /// The address of the Go itab whose method table holds, at each `(slot, function)` given,
    /// that function: how a `(type, interface)` pair is found in a stripped binary (the
    /// methods of `*net.TCPConn` name the type). `None` when there is none or its table cannot
    /// be read from the file.
    pub fn go_itab_with_methods(&self, methods: &[(usize, &str)]) -> Option<u64> {
        /// `itab.fun`: after the interface type, the concrete type and the hash (padded).
        const FUN_OFFSET: u64 = 24;
        let wanted: Vec<(u64, u64)> =
            methods.iter().map(|(slot, name)| Some((*slot as u64, *self.functions.get(*name)?))).collect::<Option<_>>()?;
        self.go_itabs.iter().copied().find(|&itab| {
            wanted.iter().all(|&(slot, function)| {
                let at = self.file_offset(itab + FUN_OFFSET + 8 * slot).map(|offset| offset as usize);
                at.and_then(|at| self.data.get(at..at + 8)).is_some_and(|bytes| bytes == function.to_le_bytes())
            })
        })
    }

    /// The first `len` bytes of function `name`'s code, for integrations that read a library's
    /// own code to learn its layout.
    pub fn function_code(&self, name: &str, len: usize) -> Option<&[u8]> {
        let address = *self.functions.get(name)?;
        let start = self.file_offset(address)? as usize;
        self.data.get(start..start + len).or_else(|| self.data.get(start..))
    }

    fn file_offset(&self, address: u64) -> Option<u64> {
        self.segments
            .iter()
            .find(|(vaddr, _memsz, _offset, filesz)| address >= *vaddr && address < vaddr + filesz)
            .map(|(vaddr, _, offset, _)| address - vaddr + offset)
    }
}

/// Adds a Go binary's functions from its own table (`.gopclntab`: stripped binaries keep it)
/// to those its symbols named, each sized up to the next one; returns its build and itabs.
fn add_go_functions<'data, R: object::ReadRef<'data>>(
    file: &object::File<'data, R>,
    functions: &mut HashMap<String, u64>,
    sizes: &mut HashMap<String, u64>,
) -> (Option<GoBuild>, Vec<u64>) {
    match go_pclntab::of_elf(file) {
        Ok(table) => {
            for pair in table.windows(2) {
                sizes.entry(pair[0].name.clone()).or_insert(pair[1].entry.saturating_sub(pair[0].entry));
            }
            for function in table {
                functions.entry(function.name).or_insert(function.entry);
            }
        }
        Err(error) => tracing::debug!(%error, "Go function table unreadable"),
    }
    let itabs = file
        .section_by_name(".itablink")
        .and_then(|section| section.data().ok())
        .map(|bytes| bytes.chunks_exact(8).map(|word| u64::from_le_bytes(word.try_into().unwrap_or_default())).collect())
        .unwrap_or_default();
    (go_build_info::of_elf(file), itabs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_libc_function_to_file_offset() {
        let libc = Path::new("/lib/x86_64-linux-gnu/libc.so.6");
        let symbols = ElfSymbols::load(libc).expect("libc is readable ELF");
        let location = symbols.function_entry("getpid").expect("getpid is exported");
        assert!(location.file_offset > 0);
        // The bytes at the offset are code: not a zero page.
        let bytes = &symbols.data[location.file_offset as usize..location.file_offset as usize + 4];
        assert_ne!(bytes, [0, 0, 0, 0]);
    }

    #[test]
    fn missing_symbol_names_file_and_symbol() {
        let libc = Path::new("/lib/x86_64-linux-gnu/libc.so.6");
        let symbols = ElfSymbols::load(libc).unwrap();
        let error = symbols.function_entry("no_such_function_xyz").unwrap_err().to_string();
        assert!(error.contains("no_such_function_xyz") && error.contains("libc.so.6"), "{error}");
    }

    #[test]
    fn non_elf_is_a_clear_error() {
        use std::fs;
        let path = std::env::temp_dir().join(format!("not-elf-{}.txt", std::process::id()));
        fs::write(&path, b"hello").unwrap();
        let error = ElfSymbols::load(&path).err().unwrap().to_string();
        fs::remove_file(&path).unwrap();
        assert!(error.contains("not an ELF"), "{error}");
    }
}
