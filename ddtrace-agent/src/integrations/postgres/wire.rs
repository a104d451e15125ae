//! PostgreSQL's frontend/backend protocol (version 3) framing: a type byte and a 4-byte
//! big-endian length (which counts itself) before each body, except the client's first message
//! (startup, SSL or GSS request, cancel), which has no type byte; read with the stream layer's
//! `FrameReader`.

/// The startup message's protocol version 3.0.
pub const PROTOCOL_3: u32 = 196_608;
pub const SSL_REQUEST: u32 = 80_877_103;
pub const GSS_ENC_REQUEST: u32 = 80_877_104;
pub const CANCEL_REQUEST: u32 = 80_877_102;
use crate::integrations::streams::framing::{FrameHead, FrameReader, Framing};

/// The longest message length believed: past it the bytes are not PostgreSQL (the server's own
/// limit for a query is 1 GB).
const MAX_LENGTH: u32 = 1 << 30;

/// PostgreSQL's header: a type byte (none for the client's first message) and a length that
/// counts itself.
#[derive(Debug)]
pub struct PostgresFraming {
    /// The next header has no type byte (the client's first message).
    untyped_next: bool,
}

impl PostgresFraming {
    /// `untyped_first` for the client's direction of a connection seen from its start.
    pub fn new(untyped_first: bool) -> Self {
        Self { untyped_next: untyped_first }
    }

    /// The next message has no type byte (after an SSL request was refused, the startup
    /// message follows).
    pub fn expect_untyped(&mut self) {
        self.untyped_next = true;
    }
}

impl Framing for PostgresFraming {
    fn header_size(&self) -> usize {
        if self.untyped_next {
            4
        } else {
            5
        }
    }

    fn read_head(&mut self, header: &[u8]) -> Option<FrameHead> {
        let (kind, length) = match header {
            [a, b, c, d] => (0, u32::from_be_bytes([*a, *b, *c, *d])),
            [kind, a, b, c, d] if kind.is_ascii_graphic() => (*kind, u32::from_be_bytes([*a, *b, *c, *d])),
            _ => return None,
        };
        if !(4..=MAX_LENGTH).contains(&length) {
            return None;
        }
        self.untyped_next = false;
        Some(FrameHead { kind, sequence: 0, length: length as usize - 4 })
    }
}

/// The reader of one direction of a PostgreSQL connection.
pub type MessageReader = FrameReader<PostgresFraming>;

/// The NUL-terminated strings at the start of `body`, in order (the last may be cut).
pub fn strings(body: &[u8]) -> impl Iterator<Item = &[u8]> {
    body.split(|b| *b == 0)
}

/// An untyped first message's code: the protocol version or a request's code.
pub fn untyped_code(body: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(body.get(..4)?.try_into().ok()?))
}

/// Whether `data` starts a client's first message: startup (protocol 3), or an SSL, GSS or
/// cancel request.
pub fn starts_first_message(data: &[u8]) -> bool {
    let (Some(length), Some(code)) = (data.get(..4), data.get(4..8)) else { return false };
    let length = u32::from_be_bytes(length.try_into().unwrap_or_default());
    let code = u32::from_be_bytes(code.try_into().unwrap_or_default());
    match code {
        PROTOCOL_3 => (9..=10_000).contains(&length),
        SSL_REQUEST | GSS_ENC_REQUEST => length == 8,
        CANCEL_REQUEST => length == 16,
        _ => false,
    }
}

/// Whether `data` starts a query a client sends mid-stream (a connection open before the
/// attach): `Q` or `P` with a plausible length.
pub fn starts_query(data: &[u8]) -> bool {
    let (Some(kind), Some(length)) = (data.first(), data.get(1..5)) else { return false };
    let length = u32::from_be_bytes(length.try_into().unwrap_or_default());
    matches!(kind, b'Q' | b'P') && (5..MAX_LENGTH).contains(&length)
}

/// Whether `data` starts with a whole query message whose text is SQL: a `Q`, or a `P` followed
/// by the extended protocol's next message. Evidence enough, without the usual port, for a
/// connection open before the attach.
pub fn starts_whole_query(data: &[u8]) -> bool {
    let (Some(kind), Some(length)) = (data.first(), data.get(1..5)) else { return false };
    let end = u32::from_be_bytes(length.try_into().unwrap_or_default()) as usize + 1;
    let Some(body) = data.get(5..end) else { return false };
    match kind {
        b'Q' => body.last() == Some(&0) && crate::integrations::sql_wire::looks_like_sql(body),
        b'P' => {
            let Some(name_end) = body.iter().position(|b| *b == 0) else { return false };
            let next_ok = data.get(end).is_none_or(|next| matches!(next, b'B' | b'D' | b'S' | b'H' | b'E'));
            next_ok && crate::integrations::sql_wire::looks_like_sql(&body[name_end + 1..])
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::integrations::streams::framing::Lost;

    fn reader(keep: usize, untyped_first: bool) -> MessageReader {
        MessageReader::new(PostgresFraming::new(untyped_first), keep)
    }

    fn messages(
        reader: &mut MessageReader,
        data: &[u8],
        uncaptured: usize,
    ) -> Result<Vec<(char, String, usize)>, Lost> {
        let mut out = Vec::new();
        reader.feed(data, uncaptured, &mut |m| {
            out.push((m.head.kind as char, String::from_utf8_lossy(m.body).into_owned(), m.head.length))
        })?;
        Ok(out)
    }

    #[test]
    fn messages_split_anywhere_read_the_same_and_bodies_past_the_capture_are_skipped() {
        let mut wire = 8u32.to_be_bytes().to_vec();
        wire.extend(SSL_REQUEST.to_be_bytes());
        wire.extend(b"Q\x00\x00\x00\x0dSELECT 1\x00");
        let whole = messages(&mut reader(64, true), &wire, 0).unwrap();
        assert_eq!(whole.len(), 2);
        assert_eq!(whole[1], ('Q', "SELECT 1\0".to_string(), 9));
        for cut in 1..wire.len() {
            let mut reader = reader(64, true);
            let mut split = messages(&mut reader, &wire[..cut], 0).unwrap();
            split.extend(messages(&mut reader, &wire[cut..], 0).unwrap());
            assert_eq!(split, whole, "cut at {cut}");
        }
        // A 1 MB DataRow of which the capture kept 10 bytes.
        let mut server = reader(4, false);
        let mut row = b"D".to_vec();
        row.extend((1_000_004u32).to_be_bytes());
        row.extend(b"0123456789");
        assert_eq!(messages(&mut server, &row, 1_000_000 - 10).unwrap(), [('D', "0123".to_string(), 1_000_000)]);
        assert!(server.at_boundary());
        assert_eq!(messages(&mut server, b"Z\x00\x00", 10), Err(Lost::Uncaptured));
        assert_eq!(messages(&mut reader(4, false), b"\x01\xff\xff\xff\xff", 0), Err(Lost::Malformed));
    }

    #[test]
    fn first_messages_and_queries_are_recognised() {
        let mut startup = 41u32.to_be_bytes().to_vec();
        startup.extend(PROTOCOL_3.to_be_bytes());
        assert!(starts_first_message(&startup));
        assert!(!starts_first_message(b"GET / HTTP/1.1\r\n"));
        assert!(starts_query(b"Q\x00\x00\x00\x0dSELECT 1\x00"));
        assert!(!starts_query(b"QUIT\r\n"));
    }
}
