//! Go's own function table, `.gopclntab`: the runtime needs it to walk stacks, so it is in every
//! Go binary, stripped (`-ldflags=-s -w`) ones included, where the ELF symbol table is gone. It
//! names every function and gives its entry: what a probe on `crypto/tls.(*Conn).Write` needs in a
//! binary with no symbols.
//!
//! Layout since Go 1.18 (magic `0xfffffff0`; `0xfffffff1` since 1.20, the same for what is read
//! here): an 8-byte header (magic, two pad bytes, the instruction size quantum, the pointer size),
//! then pointer-sized words: the function count, the file count, the text start address, and the
//! offsets of the function name table, the compilation units, the file table, the pc tables and
//! the function table. The function table is `count + 1` pairs of 32-bit offsets (entry from the
//! text start, the function's record); a record starts with the entry offset again and the
//! name's offset in the name table (a NUL-terminated string). Older layouts are refused with
//! their magic named.

/// Go 1.18 and 1.19.
const MAGIC_GO118: u32 = 0xffff_fff0;
/// Go 1.20 and later.
const MAGIC_GO120: u32 = 0xffff_fff1;
/// Longest function name read.
const MAX_NAME: usize = 4096;

/// A function of a Go binary: its name (`crypto/tls.(*Conn).Write`) and entry address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoFunction {
    pub name: String,
    pub entry: u64,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PclntabError {
    #[error("no Go function table (.gopclntab is missing or shorter than its header)")]
    Missing,
    #[error("a Go function table of an unsupported layout (magic {0:#x}: built by a Go older than 1.18)")]
    Unsupported(u32),
    #[error("a malformed Go function table: {0}")]
    Malformed(&'static str),
}

/// Every function of the table in `section` (the bytes of `.gopclntab`), in entry order.
pub fn functions(section: &[u8]) -> Result<Vec<GoFunction>, PclntabError> {
    let header = section.get(..8).ok_or(PclntabError::Missing)?;
    let magic = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    if magic != MAGIC_GO118 && magic != MAGIC_GO120 {
        return Err(PclntabError::Unsupported(magic));
    }
    if header[7] != 8 {
        return Err(PclntabError::Malformed("not a 64-bit binary"));
    }
    let word = |index: usize| -> Result<u64, PclntabError> {
        let at = 8 + index * 8;
        let bytes = section.get(at..at + 8).ok_or(PclntabError::Malformed("header cut short"))?;
        // (index < 8: constant offsets within a header this long or refused.)
        Ok(u64::from_le_bytes(bytes.try_into().unwrap_or_default()))
    };
    let count = usize::try_from(word(0)?).map_err(|_| PclntabError::Malformed("function count"))?;
    let text_start = word(2)?;
    let names = usize::try_from(word(3)?).map_err(|_| PclntabError::Malformed("name table offset"))?;
    let table = usize::try_from(word(7)?).map_err(|_| PclntabError::Malformed("function table offset"))?;
    let past = PclntabError::Malformed("an offset points past the table");
    let u32_at = |at: Option<usize>| -> Result<u32, PclntabError> {
        let bytes = at.and_then(|at| section.get(at..at.checked_add(4)?)).ok_or(past.clone())?;
        Ok(u32::from_le_bytes(bytes.try_into().unwrap_or_default()))
    };
    if count > section.len() / 8 {
        return Err(PclntabError::Malformed("more functions than the table can hold"));
    }
    let mut functions = Vec::with_capacity(count);
    for index in 0..count {
        // Offsets from the file: every sum checked (a malformed table is refused, not a panic).
        let pair = index.checked_mul(8).and_then(|offset| table.checked_add(offset));
        let entry_offset = u32_at(pair)?;
        let record = u32_at(pair.and_then(|pair| pair.checked_add(4)))? as usize;
        let name_offset = u32_at(table.checked_add(record).and_then(|at| at.checked_add(4)))? as usize;
        let name = names
            .checked_add(name_offset)
            .and_then(|at| c_string(section, at))
            .ok_or(PclntabError::Malformed("a name past the table"))?;
        let entry =
            text_start.checked_add(u64::from(entry_offset)).ok_or(PclntabError::Malformed("an entry past 2^64"))?;
        functions.push(GoFunction { name, entry });
    }
    Ok(functions)
}

/// The functions of the ELF file `elf`'s `.gopclntab`.
pub fn of_elf<'data, R: object::ReadRef<'data>>(elf: &object::File<'data, R>) -> Result<Vec<GoFunction>, PclntabError> {
    use object::{Object, ObjectSection};
    let section = elf.section_by_name(".gopclntab").ok_or(PclntabError::Missing)?;
    functions(section.data().map_err(|_| PclntabError::Missing)?)
}

fn c_string(bytes: &[u8], at: usize) -> Option<String> {
    let rest = bytes.get(at..)?;
    let end = rest.iter().take(MAX_NAME).position(|b| *b == 0)?;
    String::from_utf8(rest[..end].to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, path::Path};

    use object::{Object, ObjectSymbol};

    use super::*;

    /// `tests/apps/go_http` built by the machine's Go, `-s -w` (stripped) or not.
    fn build(stripped: bool) -> Vec<u8> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let name = if stripped { "go-pclntab-stripped" } else { "go-pclntab-full" };
        super::super::go_test_build::build(&root, &root.join("tests/apps/go_http/main.go"), name, stripped)
    }

    #[test]
    fn a_stripped_go_binary_names_its_functions_at_the_addresses_its_symbols_had() {
        let full = build(false);
        let full_elf = object::File::parse(&*full).unwrap();
        let symbols: HashMap<String, u64> = full_elf
            .symbols()
            .filter(|s| s.kind() == object::SymbolKind::Text)
            .filter_map(|s| Some((s.name().ok()?.to_owned(), s.address())))
            .collect();
        let stripped = build(true);
        let stripped_elf = object::File::parse(&*stripped).unwrap();
        assert_eq!(stripped_elf.symbols().count(), 0, "-s -w leaves no symbol table");
        let functions = of_elf(&stripped_elf).expect("the function table of a stripped binary");
        assert!(functions.len() > 1000, "{} functions", functions.len());
        let entry = |name: &str| functions.iter().find(|f| f.name == name).map(|f| f.entry);
        for name in [
            "main.main",
            "net/http.(*conn).serve",
            "net/http.(*Server).Serve",
            "crypto/tls.(*Conn).Write",
            "crypto/tls.(*Conn).Read",
        ] {
            // Same code, same layout: the stripped binary's table gives the symbols' addresses.
            assert_eq!(entry(name), symbols.get(name).copied(), "{name}");
            assert!(entry(name).is_some(), "{name} in the table");
        }
        assert!(functions.windows(2).all(|pair| pair[0].entry <= pair[1].entry), "entry order");
    }

    #[test]
    fn other_layouts_and_garbage_are_refused_with_a_reason() {
        let mut go116 = vec![0xfa, 0xff, 0xff, 0xff, 0, 0, 1, 8];
        go116.resize(128, 0);
        assert_eq!(functions(&go116), Err(PclntabError::Unsupported(0xffff_fffa)));
        assert_eq!(functions(b"\xf0\xff"), Err(PclntabError::Missing));
        let mut cut = vec![0xf0, 0xff, 0xff, 0xff, 0, 0, 1, 8];
        cut.extend(3u64.to_le_bytes());
        assert!(matches!(functions(&cut), Err(PclntabError::Malformed(_))));
        // A function count the section cannot hold.
        let mut huge = vec![0xf1, 0xff, 0xff, 0xff, 0, 0, 1, 8];
        huge.extend(u64::MAX.to_le_bytes());
        huge.resize(72, 0);
        assert!(matches!(functions(&huge), Err(PclntabError::Malformed(_))));
    }
}
