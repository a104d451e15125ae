//! Symbolization: (module, ELF virtual address) -> demangled function name + offset, or
//! `module+0xoffset` for code no symbol covers (stripped files).
//!
//! Process-specific work (which file is mapped where) is done by `normalize.rs`; everything here
//! depends only on the file, so its results can be shared by every process mapping that file.

use std::{fmt, path::PathBuf};

use super::{
    module::{ElfModule, ModuleCache},
    normalize::{NormalizeError, ProcessMaps},
};

/// One symbolized address, ready for a profile's function/location tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Symbol {
    /// The file as the target sees it.
    pub module: PathBuf,
    /// The demangled function name; `None` when neither the symbol table nor DWARF names one.
    pub function: Option<String>,
    /// From the function's start, or (without a symbol-table function) the ELF virtual address
    /// itself, which is what `addr2line -e module` and `objdump` take.
    pub offset: u64,
    /// The name came from DWARF, the symbol table having none for the address (a stripped
    /// `.symtab` with debug information kept); `offset` is then the ELF virtual address.
    pub function_from_debug_info: bool,
    /// The source file (as the compiler saw it, usually absolute) from DWARF, when present.
    pub file: Option<String>,
    /// The source line from DWARF; with `inlined` code, the line in `function` of the outermost
    /// inlined call.
    pub line: Option<u32>,
    /// Functions inlined at this address, innermost first (empty without DWARF).
    pub inlined: Vec<InlinedFrame>,
}

/// A function inlined into a symbol's function, with its own source position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InlinedFrame {
    /// Demangled.
    pub function: Option<String>,
    pub file: Option<String>,
    /// For the innermost frame, the address's line; for the others, the line of the next inner
    /// frame's call.
    pub line: Option<u32>,
}

impl fmt::Display for Symbol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let module = self.module.file_name().unwrap_or(self.module.as_os_str()).to_string_lossy();
        match &self.function {
            Some(name) if self.function_from_debug_info => write!(f, "{name} ({module}+{:#x})", self.offset),
            Some(name) => write!(f, "{name}+{:#x}", self.offset),
            None => write!(f, "{module}+{:#x}", self.offset),
        }
    }
}

/// Demangles a Rust (legacy or v0) or C++ (Itanium) name; other names come back unchanged.
pub fn demangle(name: &str) -> String {
    // Rust first: legacy Rust names are valid Itanium names too, and the C++ demangler would show
    // their hash segment. `{:#}` drops the hash and crate disambiguators, as people write paths.
    if let Ok(rust) = rustc_demangle::try_demangle(name) {
        return format!("{rust:#}");
    }
    if name.starts_with("_Z") {
        if let Some(cpp) = cpp_demangle::Symbol::new(name.as_bytes()).ok().and_then(|s| s.demangle().ok()) {
            return cpp;
        }
    }
    name.to_string()
}

/// Symbolizes addresses of any process, sharing parsed modules across processes.
#[derive(Debug, Default)]
pub struct Symbolizer {
    modules: ModuleCache,
}

impl Symbolizer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Symbolizes an absolute `address` of the process whose `maps` are given.
    pub fn symbolize(&mut self, maps: &ProcessMaps, address: u64) -> Result<Symbol, NormalizeError> {
        let normalized = maps.normalize(address, &mut self.modules)?;
        Ok(symbolize_vaddr(normalized.path, &normalized.module, normalized.vaddr))
    }

    /// The module cache (to check sharing, or to symbolize already-normalized addresses).
    pub fn modules(&mut self) -> &mut ModuleCache {
        &mut self.modules
    }
}

/// Symbolizes an ELF virtual address of `module`; `path` is the file as the target sees it.
pub(crate) fn symbolize_vaddr(path: PathBuf, module: &ElfModule, vaddr: u64) -> Symbol {
    // Innermost first; the last frame is the function the code was compiled into.
    let mut source = module.source_frames(vaddr);
    let outer = source.pop();
    let inlined = source
        .into_iter()
        .map(|f| InlinedFrame { function: f.function.as_deref().map(demangle), file: f.file, line: f.line })
        .collect();
    let (dwarf_function, file, line) = outer.map_or((None, None, None), |f| (f.function, f.file, f.line));
    let (function, offset, function_from_debug_info) = match module.function_at(vaddr) {
        Some(hit) => (Some(demangle(hit.mangled)), hit.offset, false),
        None => match dwarf_function {
            Some(name) => (Some(demangle(&name)), vaddr, true),
            None => (None, vaddr, false),
        },
    };
    Symbol { module: path, function, offset, function_from_debug_info, file, line, inlined }
}

#[cfg(test)]
pub(crate) mod tests_support {
    use std::path::PathBuf;

    /// The libc this test process runs with, found in its own maps.
    pub fn libc_path() -> PathBuf {
        let maps = super::ProcessMaps::read(std::process::id()).unwrap();
        maps.mappings()
            .iter()
            .filter_map(|m| m.path.clone())
            .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("libc.so")))
            .expect("the test binary is dynamically linked against glibc")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn symbolization_marker() -> u64 {
        std::hint::black_box(6) * 7
    }

    fn symbolize_self(address: u64) -> Symbol {
        let maps = ProcessMaps::read(std::process::id()).unwrap();
        Symbolizer::new().symbolize(&maps, address).unwrap()
    }

    #[test]
    fn rust_function_in_the_test_binary_demangles_to_its_path() {
        let address = symbolization_marker as *const () as u64;
        let symbol = symbolize_self(address + 1);
        assert_eq!(symbol.function.as_deref(), Some("ddtrace_agent::symbols::symbolize::tests::symbolization_marker"));
        assert_eq!(symbol.offset, 1);
        assert!(symbol.to_string().ends_with("symbolization_marker+0x1"));
    }

    #[test]
    fn libc_getpid_symbolizes_to_getpid() {
        let address = libc::getpid as *const () as u64;
        let symbol = symbolize_self(address);
        assert!(symbol.module.to_string_lossy().contains("libc.so"), "{symbol:?}");
        let name = symbol.function.expect("libc's dynamic table names getpid");
        assert!(["getpid", "__getpid", "__GI___getpid"].contains(&name.as_str()), "got {name}");
        assert_eq!(symbol.offset, 0);
    }

    #[test]
    fn address_past_every_symbol_is_module_plus_offset() {
        let maps = ProcessMaps::read(std::process::id()).unwrap();
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        // The last byte of the test binary's last executable mapping: page padding after the last
        // function, which no symbol covers.
        let mapping = maps.mappings().iter().rfind(|m| m.path.as_ref() == Some(&exe)).unwrap();
        let symbol = Symbolizer::new().symbolize(&maps, mapping.end - 1).unwrap();
        assert_eq!(symbol.function, None, "{symbol}");
        let name = exe.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(symbol.to_string(), format!("{name}+{:#x}", symbol.offset));
    }

    #[test]
    fn names_demangle_by_language() {
        assert_eq!(demangle("_ZN7mycrate6module4func17h0123456789abcdefE"), "mycrate::module::func");
        assert_eq!(demangle("_RNvNtCs1234_7mycrate6module4func"), "mycrate::module::func");
        assert_eq!(demangle("_ZN9namespace5Klass6methodEi"), "namespace::Klass::method(int)");
        assert_eq!(demangle("_ZNKSt6vectorIiSaIiEE4sizeEv"), "std::vector<int, std::allocator<int> >::size() const");
        assert_eq!(demangle("getpid"), "getpid");
        assert_eq!(demangle("_Znot valid"), "_Znot valid");
    }
}
