//! What a statement's text looks like on the wire, for the SQL protocols recognising a
//! connection mid-stream (open before the attach, on a port that is not the database's usual
//! one): the first message must then carry text a person would call SQL, not merely a plausible
//! header.

/// How much of the text is looked at.
const LOOKED_AT: usize = 64;

/// Whether `text` starts like a SQL statement: after blanks, a keyword's letter, a parenthesis
/// or a comment; and no control byte (other than blanks) in its first bytes. A NUL ends the text
/// (PostgreSQL's strings are NUL-terminated).
pub fn looks_like_sql(text: &[u8]) -> bool {
    let text = text.split(|b| *b == 0).next().unwrap_or_default();
    let head = &text[..text.len().min(LOOKED_AT)];
    let Some(first) = head.iter().find(|b| !b.is_ascii_whitespace()) else { return false };
    let starts_well = first.is_ascii_alphabetic() || matches!(first, b'(' | b'/' | b'-');
    starts_well && head.iter().all(|b| *b >= 0x20 || matches!(b, b'\t' | b'\n' | b'\r'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_statements_from_other_bytes() {
        assert!(looks_like_sql(b"SELECT 1"));
        assert!(looks_like_sql(b"  \n/* app */ UPDATE t SET a = 1"));
        assert!(looks_like_sql(b"(SELECT 1) UNION (SELECT 2)"));
        assert!(!looks_like_sql(b""));
        assert!(!looks_like_sql(b"   "));
        assert!(!looks_like_sql(b"\x00\x01binary"));
        assert!(looks_like_sql(b"SELECT 1\x00"));
        assert!(!looks_like_sql(b"\x00SELECT 1"));
        assert!(!looks_like_sql(b"SELECT \x01 1"));
        assert!(!looks_like_sql(b"123 not a statement"));
    }
}
