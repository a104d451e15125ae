//! ELF symbol lookup: function name -> file offset where a uprobe can be placed, and the reverse
//! for the profiler: address in a process -> demangled function name.
//!
//! Kept apart from the target (which file, mapped where) as blazesym keeps normalization apart
//! from symbolization: `normalize` turns a process address into (file, ELF virtual address),
//! `module` indexes one ELF file once per build id, `symbolize` names the function.
//!
//! When a file carries DWARF, `debug_info` adds source file, line and inlined functions to a
//! symbol (parsed at the module's first lookup, so once per build id too).
//!
//! For the profiler's native stacks, `cfi` indexes a module's call frame information (with the
//! module, so once per build id) and `unwind` walks a sampled stack copy with it.

mod cfi;
mod debug_info;
mod elf;
pub mod go_build_info;
mod go_dwarf;
pub mod go_pclntab;
pub mod go_probe_sites;
#[cfg(test)]
pub mod go_test_build;
mod mapped_file;
mod module;
mod normalize;
mod symbolize;
mod unwind;
pub mod x86_calls;

pub use cfi::{CallFrameInfo, CfaRule, CfiError, FrameRule, RegisterRule, UnwindContext, UnwindExpression};
pub use debug_info::SourceFrame;
pub use elf::{built_by_go, ElfSymbols, ProbeLocation, SymbolError};
pub use module::{ElfModule, FunctionHit, ModuleCache, ModuleError};
pub use normalize::{parse_maps_line, Mapping, NormalizeError, NormalizedAddress, ProcessMaps};
pub use symbolize::{demangle, InlinedFrame, Symbol, Symbolizer};
pub use unwind::{UnwindEnd, Unwinder, UserRegisters, MAX_DEPTH};
