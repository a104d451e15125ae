//! Where this build of SQLite keeps a statement's SQL text, learnt from the library's own code.
//!
//! `sqlite3_sql(stmt)` returns `stmt->zSql`; compiled, it is a NULL check and one load,
//! `mov rax, [rdi + OFFSET]`. Decoding that load gives the field's offset for exactly the build
//! the target maps, with no table of versions. A build whose `sqlite3_sql` looks different
//! (API armor, another compiler) simply yields nothing, and we fall back to a placeholder.

/// How far into `sqlite3_sql` to look for the load.
pub const SCAN_BYTES: usize = 32;

/// The offset of `zSql` in `sqlite3_stmt`, decoded from `sqlite3_sql`'s first bytes.
pub fn sql_field_offset(code: &[u8]) -> Option<u64> {
    // REX.W 8B /r with reg = rax, rm = rdi: modrm 0x47 (disp8) or 0x87 (disp32).
    code.windows(3)
        .enumerate()
        .find_map(|(at, window)| match window {
            [0x48, 0x8b, 0x47] => code.get(at + 3).map(|d| *d as i8 as i64),
            [0x48, 0x8b, 0x87] => code.get(at + 3..at + 7).map(|d| i32::from_le_bytes([d[0], d[1], d[2], d[3]]) as i64),
            _ => None,
        })
        .filter(|offset| *offset > 0)
        .map(|offset| offset as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_disp32_and_disp8_loads() {
        // Debian 12's libsqlite3 3.40: test rdi,rdi; je; mov rax,[rdi+0xf8]; ret
        let debian = [0x48, 0x85, 0xff, 0x74, 0x0b, 0x48, 0x8b, 0x87, 0xf8, 0x00, 0x00, 0x00, 0xc3];
        assert_eq!(sql_field_offset(&debian), Some(0xf8));
        let short = [0xf3, 0x0f, 0x1e, 0xfa, 0x48, 0x8b, 0x47, 0x30, 0xc3];
        assert_eq!(sql_field_offset(&short), Some(0x30));
        assert_eq!(sql_field_offset(&[0x31, 0xc0, 0xc3]), None);
    }

    #[test]
    fn reads_the_offset_from_the_system_library() {
        let path = std::path::Path::new("/usr/lib/x86_64-linux-gnu/libsqlite3.so.0");
        let symbols = crate::symbols::ElfSymbols::load(path).expect("libsqlite3 is installed (.ci/run installs it)");
        let code = symbols.function_code("sqlite3_sql", SCAN_BYTES).unwrap();
        assert!(sql_field_offset(code).is_some(), "{code:02x?}");
    }
}
