//! ELF symbol lookup: function name -> file offset where a uprobe can be placed.
//!
//! Kept apart from the target (which file, mapped where) as blazesym keeps normalization apart
//! from symbolization.

mod elf;

pub use elf::{ElfSymbols, ProbeLocation, SymbolError};
