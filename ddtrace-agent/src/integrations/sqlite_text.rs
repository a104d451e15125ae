//! SQLite-specific text helpers: where the first statement of a SQL string ends, and the names
//! of SQLite's result codes.

/// The first statement of `sql`, as `sqlite3_prepare*` compiles it: up to and including the first
/// `;` outside quotes, identifiers and comments. (`sqlite3_prepare` gets the whole remaining
/// script; the rest is compiled by later calls.)
pub fn first_statement(sql: &str) -> &str {
    let bytes = sql.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            quote @ (b'\'' | b'"' | b'`') => i = skip_until(bytes, i + 1, quote),
            b'[' => i = skip_until(bytes, i + 1, b']'),
            b'-' if bytes.get(i + 1) == Some(&b'-') => i = skip_until(bytes, i + 2, b'\n'),
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i = sql[i + 2..].find("*/").map_or(bytes.len(), |end| i + 2 + end + 2);
            }
            b';' => return sql[..=i].trim(),
            _ => i += 1,
        }
    }
    sql.trim()
}

/// Index just past the next `end` byte at or after `from` (or the end of input).
fn skip_until(bytes: &[u8], from: usize, end: u8) -> usize {
    bytes[from.min(bytes.len())..].iter().position(|b| *b == end).map_or(bytes.len(), |p| from + p + 1)
}

/// SQLite's result codes that end a `sqlite3_step` well.
pub const SQLITE_OK: i32 = 0;
pub const SQLITE_ROW: i32 = 100;
pub const SQLITE_DONE: i32 = 101;

/// The symbolic name and message of a primary result code, as `sqlite3_errstr` gives them.
pub fn result_code(code: i32) -> (&'static str, &'static str) {
    match code & 0xff {
        1 => ("SQLITE_ERROR", "SQL logic error"),
        2 => ("SQLITE_INTERNAL", "internal logic error"),
        3 => ("SQLITE_PERM", "access permission denied"),
        4 => ("SQLITE_ABORT", "query aborted"),
        5 => ("SQLITE_BUSY", "database is locked"),
        6 => ("SQLITE_LOCKED", "database table is locked"),
        7 => ("SQLITE_NOMEM", "out of memory"),
        8 => ("SQLITE_READONLY", "attempt to write a readonly database"),
        9 => ("SQLITE_INTERRUPT", "interrupted"),
        10 => ("SQLITE_IOERR", "disk I/O error"),
        11 => ("SQLITE_CORRUPT", "database disk image is malformed"),
        12 => ("SQLITE_NOTFOUND", "unknown operation"),
        13 => ("SQLITE_FULL", "database or disk is full"),
        14 => ("SQLITE_CANTOPEN", "unable to open database file"),
        15 => ("SQLITE_PROTOCOL", "locking protocol"),
        17 => ("SQLITE_SCHEMA", "database schema has changed"),
        18 => ("SQLITE_TOOBIG", "string or blob too big"),
        19 => ("SQLITE_CONSTRAINT", "constraint failed"),
        20 => ("SQLITE_MISMATCH", "datatype mismatch"),
        21 => ("SQLITE_MISUSE", "bad parameter or other API misuse"),
        23 => ("SQLITE_AUTH", "authorization denied"),
        25 => ("SQLITE_RANGE", "column index out of range"),
        26 => ("SQLITE_NOTADB", "file is not a database"),
        _ => ("SQLITE_ERROR", "unknown error"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_statement_stops_at_the_first_real_semicolon() {
        assert_eq!(first_statement("SELECT 1; SELECT 2;"), "SELECT 1;");
        assert_eq!(first_statement("  SELECT 'a;b' ; x"), "SELECT 'a;b' ;");
        assert_eq!(first_statement("SELECT \"x;\" -- c;\n; y"), "SELECT \"x;\" -- c;\n;");
        assert_eq!(first_statement("SELECT /* ; */ 1"), "SELECT /* ; */ 1");
        assert_eq!(first_statement("SELECT [a;b] FROM t"), "SELECT [a;b] FROM t");
        assert_eq!(first_statement("SELECT 'unterminated"), "SELECT 'unterminated");
    }

    #[test]
    fn extended_codes_map_to_their_primary_code() {
        // SQLITE_CONSTRAINT_UNIQUE = 2067
        assert_eq!(result_code(2067).0, "SQLITE_CONSTRAINT");
        assert_eq!(result_code(1).1, "SQL logic error");
    }
}
