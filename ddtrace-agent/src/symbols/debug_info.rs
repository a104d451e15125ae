//! Source positions from DWARF debug information (`.debug_info`, `.debug_line`), when a module
//! carries it: ELF virtual address -> file and line, with the functions inlined there.
//!
//! Only the sections addr2line reads are copied out of the file when the module is loaded (a file
//! without `.debug_info` keeps nothing); they are parsed at the first lookup, once per module,
//! since the module is shared by every process mapping it. Malformed or unsupported DWARF gives
//! no position, never an error: the symbol table still names the function.

use std::{
    fmt,
    sync::{Arc, Mutex, OnceLock},
};

use gimli::{EndianArcSlice, RunTimeEndian, SectionId};
use object::{CompressionFormat, Object, ObjectSection};

type Reader = EndianArcSlice<RunTimeEndian>;

/// DWARF sections beyond this total are not kept: positions are worth less than the agent's
/// memory. pyenv's libpython (13 MB of these sections) cost ~38 MB resident once addr2line had
/// parsed what a loaded Flask app's samples needed; a debug build of a large program carries
/// gigabytes.
const MAX_DEBUG_BYTES: u64 = 8 << 20;

/// The sections addr2line reads for lines and (inlined) function names; location lists, macros
/// and type units are left out.
const SECTIONS: [SectionId; 10] = [
    SectionId::DebugAbbrev,
    SectionId::DebugAddr,
    SectionId::DebugAranges,
    SectionId::DebugInfo,
    SectionId::DebugLine,
    SectionId::DebugLineStr,
    SectionId::DebugRanges,
    SectionId::DebugRngLists,
    SectionId::DebugStr,
    SectionId::DebugStrOffsets,
];

/// One level of the source position of an address: the innermost inlined function first, the
/// function the code was compiled into last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFrame {
    /// The name DWARF gives (the linkage name when there is one, so still mangled).
    pub function: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
}

/// A module's DWARF, parsed at its first lookup.
pub struct DebugInfo {
    dwarf: Arc<gimli::Dwarf<Reader>>,
    /// `None` once parsing failed. addr2line's context fills caches through `&self` without
    /// synchronization (it is `Send`, not `Sync`), hence the mutex: the module is shared.
    context: OnceLock<Option<Mutex<addr2line::Context<Reader>>>>,
}

impl fmt::Debug for DebugInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parsed = match self.context.get() {
            None => "not yet",
            Some(None) => "failed",
            Some(Some(_)) => "yes",
        };
        f.debug_struct("DebugInfo").field("parsed", &parsed).finish_non_exhaustive()
    }
}

impl DebugInfo {
    /// Copies the DWARF sections of `file`; `None` when it has no (usable) `.debug_info`.
    pub fn load(file: &object::File<'_>) -> Option<Self> {
        let has_debug_info = file.section_by_name(SectionId::DebugInfo.name()).is_some_and(|s| s.size() > 0);
        if !has_debug_info {
            return None;
        }
        let endian = if file.is_little_endian() { RunTimeEndian::Little } else { RunTimeEndian::Big };
        let mut total = 0u64;
        let mut sections = Vec::with_capacity(SECTIONS.len());
        for id in SECTIONS {
            let Some(section) = file.section_by_name(id.name()) else { continue };
            let compressed = section.compressed_data().ok()?;
            // Compressed sections (SHF_COMPRESSED, common in distribution debug files) would need
            // a zlib/zstd decoder: skip the module rather than read garbage.
            if compressed.format != CompressionFormat::None {
                return None;
            }
            total += compressed.data.len() as u64;
            if total > MAX_DEBUG_BYTES {
                return None;
            }
            sections.push((id, Arc::<[u8]>::from(compressed.data)));
        }
        let empty: Arc<[u8]> = Arc::new([]);
        let dwarf = gimli::Dwarf::load(|id| -> Result<Reader, gimli::Error> {
            let data = sections.iter().find(|(s, _)| *s == id).map_or_else(|| empty.clone(), |(_, d)| d.clone());
            Ok(Reader::new(data, endian))
        })
        .ok()?;
        Some(Self { dwarf: Arc::new(dwarf), context: OnceLock::new() })
    }

    /// The source position of `vaddr`, innermost inlined function first; empty when the DWARF
    /// does not cover it or cannot be read.
    pub fn frames(&self, vaddr: u64) -> Vec<SourceFrame> {
        let context = self.context.get_or_init(|| match addr2line::Context::from_arc_dwarf(self.dwarf.clone()) {
            Ok(context) => Some(Mutex::new(context)),
            Err(error) => {
                tracing::debug!("unreadable DWARF, no source lines for this module: {error}");
                None
            }
        });
        let Some(Ok(context)) = context.as_ref().map(Mutex::lock) else { return Vec::new() };
        let mut frames = Vec::new();
        // Split DWARF (.dwo files) is not looked for: what the main file holds is used.
        let Ok(mut iter) = context.find_frames(vaddr).skip_all_loads() else { return frames };
        // Stop at the first error: the frames read until then are still right.
        while let Ok(Some(frame)) = iter.next() {
            let function = frame.function.as_ref().and_then(|f| f.raw_name().ok()).map(|n| n.into_owned());
            let (file, line) = frame.location.map_or((None, None), |l| (l.file.map(str::to_owned), l.line));
            frames.push(SourceFrame { function, file, line });
        }
        frames
    }

    /// Whether the DWARF was parsed (a lookup happened), for tests.
    #[cfg(test)]
    pub fn parsed(&self) -> bool {
        self.context.get().is_some()
    }
}

#[cfg(test)]
mod tests {
    use std::{
        path::{Path, PathBuf},
        process::Command,
    };

    use object::{Object, ObjectSymbol};

    use crate::symbols::{symbolize::symbolize_vaddr, ElfModule};

    /// A C file whose lines the tests check: `work` is a real function, `twice` is inlined into it.
    const SOURCE: &str = "\
static inline __attribute__((always_inline)) int twice(int x) {
    return x * 2;
}

__attribute__((noinline)) int work(int x) {
    int y = twice(x);
    return y + 1;
}

int main(int argc, char **argv) {
    (void)argv;
    return work(argc);
}
";

    /// A directory of its own under the system temp dir, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("ddtrace-dwarf-{name}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Compiles `SOURCE` with gcc and `flags` into `dir`; the source is `dir/sample.c`.
    fn compile(dir: &Path, flags: &[&str]) -> PathBuf {
        let source = dir.join("sample.c");
        std::fs::write(&source, SOURCE).unwrap();
        let binary = dir.join("sample");
        let status = Command::new("gcc").args(flags).arg("-o").arg(&binary).arg(&source).status().expect("gcc runs");
        assert!(status.success(), "gcc {flags:?} failed");
        binary
    }

    fn vaddr_of(binary: &Path, name: &str) -> u64 {
        let data = std::fs::read(binary).unwrap();
        let file = object::File::parse(&*data).unwrap();
        file.symbols().find(|s| s.name() == Ok(name)).map(|s| s.address()).expect("the symbol is in .symtab")
    }

    #[test]
    fn a_function_gets_its_source_file_and_line() {
        let dir = TempDir::new("lines");
        let binary = compile(&dir.0, &["-g", "-O1"]);
        let work = vaddr_of(&binary, "work");
        let module = ElfModule::load(&binary).unwrap();
        assert!(module.has_debug_info());
        let debug_info = module.debug_info().unwrap();
        assert!(!debug_info.parsed(), "DWARF is parsed at the first lookup, not at load");
        let symbol = symbolize_vaddr(binary.clone(), &module, work);
        assert!(debug_info.parsed());
        assert_eq!(symbol.function.as_deref(), Some("work"));
        assert!(!symbol.function_from_debug_info);
        let file = symbol.file.as_deref().expect("DWARF names the file");
        assert!(file.ends_with("sample.c"), "{symbol:?}");
        // The function's first instruction belongs to its first lines (5-7).
        assert!(symbol.line.is_some_and(|l| (5..=7).contains(&l)), "{symbol:?}");
        // Every address of `work` resolves to the function's lines, some through `twice`
        // (inlined: lines 1-3, called from line 6) at -O1 if gcc kept it as inline code.
        for offset in 0..16 {
            let symbol = symbolize_vaddr(binary.clone(), &module, work + offset);
            if symbol.function.as_deref() != Some("work") {
                break;
            }
            if let Some(inlined) = symbol.inlined.first() {
                assert_eq!(inlined.function.as_deref(), Some("twice"), "{symbol:?}");
                assert!(inlined.line.is_some_and(|l| (1..=3).contains(&l)), "{symbol:?}");
                assert_eq!(symbol.line, Some(6), "the call site of the inlined function: {symbol:?}");
            } else if let Some(line) = symbol.line {
                assert!((5..=8).contains(&line), "{symbol:?}");
            }
        }
    }

    #[test]
    fn inlined_functions_come_innermost_first() {
        let dir = TempDir::new("inlined");
        // -O0 keeps the always_inline code as its own inlined subroutine with lines of its own.
        let binary = compile(&dir.0, &["-g", "-O0"]);
        let work = vaddr_of(&binary, "work");
        let module = ElfModule::load(&binary).unwrap();
        let inlined = (0..64u64)
            .map(|offset| symbolize_vaddr(binary.clone(), &module, work + offset))
            .take_while(|s| s.function.as_deref() == Some("work"))
            .find(|s| !s.inlined.is_empty())
            .expect("some instruction of `work` is from the inlined `twice`");
        assert_eq!(inlined.inlined.len(), 1, "{inlined:?}");
        assert_eq!(inlined.inlined[0].function.as_deref(), Some("twice"));
        assert!(inlined.inlined[0].file.as_deref().is_some_and(|f| f.ends_with("sample.c")));
        assert!(inlined.inlined[0].line.is_some_and(|l| (1..=3).contains(&l)), "{inlined:?}");
        assert_eq!(inlined.line, Some(6), "the call site in `work`: {inlined:?}");
    }

    #[test]
    fn without_symbol_table_dwarf_names_the_function() {
        let dir = TempDir::new("stripped");
        let binary = compile(&dir.0, &["-g", "-O1"]);
        let work = vaddr_of(&binary, "work");
        let stripped = dir.0.join("sample.stripped");
        // Drops .symtab only; `work` is not exported, so no symbol table names it.
        let status = Command::new("objcopy")
            .args(["--strip-unneeded", "--keep-section=.debug_*"])
            .arg(&binary)
            .arg(&stripped)
            .status()
            .expect("objcopy runs");
        assert!(status.success());
        let module = ElfModule::load(&stripped).unwrap();
        assert!(module.function_at(work).is_none(), "no symbol for `work` is left");
        let symbol = symbolize_vaddr(stripped.clone(), &module, work);
        assert_eq!(symbol.function.as_deref(), Some("work"), "{symbol:?}");
        assert!(symbol.function_from_debug_info);
        assert_eq!(symbol.offset, work);
        assert!(symbol.file.as_deref().is_some_and(|f| f.ends_with("sample.c")), "{symbol:?}");
        assert_eq!(symbol.to_string(), format!("work (sample.stripped+{work:#x})"));
    }

    #[test]
    fn a_file_without_dwarf_gives_no_line_and_keeps_nothing() {
        let dir = TempDir::new("nodwarf");
        let binary = compile(&dir.0, &["-O1"]);
        let work = vaddr_of(&binary, "work");
        let module = ElfModule::load(&binary).unwrap();
        assert!(!module.has_debug_info());
        assert!(module.source_frames(work).is_empty());
        let symbol = symbolize_vaddr(binary, &module, work);
        assert_eq!(symbol.function.as_deref(), Some("work"));
        assert_eq!((symbol.file, symbol.line, symbol.inlined.len()), (None, None, 0));
    }

    #[test]
    fn malformed_dwarf_gives_no_line_and_no_error() {
        let dir = TempDir::new("malformed");
        let binary = compile(&dir.0, &["-g", "-O1"]);
        let work = vaddr_of(&binary, "work");
        // Overwrite .debug_info and .debug_line with garbage, keeping the ELF structure.
        let mut data = std::fs::read(&binary).unwrap();
        let ranges: Vec<_> = {
            let file = object::File::parse(&*data).unwrap();
            [".debug_info", ".debug_line", ".debug_abbrev"]
                .iter()
                .filter_map(|name| file.section_by_name(name).and_then(|s| object::ObjectSection::file_range(&s)))
                .collect()
        };
        assert!(!ranges.is_empty());
        for (offset, size) in ranges {
            for (i, byte) in data[offset as usize..(offset + size) as usize].iter_mut().enumerate() {
                *byte = (i as u8).wrapping_mul(37) ^ 0xa5;
            }
        }
        let garbled = dir.0.join("sample.garbled");
        std::fs::write(&garbled, &data).unwrap();
        let module = ElfModule::load(&garbled).unwrap();
        let symbol = symbolize_vaddr(garbled, &module, work);
        assert_eq!(symbol.function.as_deref(), Some("work"), "the symbol table still names it");
        assert_eq!(symbol.line, None, "{symbol:?}");
    }
}
