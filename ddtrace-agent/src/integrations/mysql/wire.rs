//! MySQL's client/server protocol (MariaDB's too): packets of a 3-byte little-endian length and a
//! sequence number, read with the stream layer's `FrameReader`, and the few payloads the spans
//! need: the server's greeting, the client's handshake response, commands, OK, ERR and EOF.

use crate::integrations::streams::framing::{FrameHead, FrameReader, Framing};

pub const COM_QUIT: u8 = 0x01;
pub const COM_INIT_DB: u8 = 0x02;
pub const COM_QUERY: u8 = 0x03;
pub const COM_STMT_PREPARE: u8 = 0x16;
pub const COM_STMT_EXECUTE: u8 = 0x17;
pub const COM_STMT_CLOSE: u8 = 0x19;
pub const COM_STMT_SEND_LONG_DATA: u8 = 0x18;

/// The greeting's protocol version.
const PROTOCOL_10: u8 = 10;
/// A payload of this length continues in the next packet.
pub const MAX_PAYLOAD: usize = 0xFF_FFFF;
/// Capability: the client connects with a database named.
const CLIENT_CONNECT_WITH_DB: u32 = 0x8;
/// Capability: the 4.1 protocol (SQLSTATE in ERR packets, 4-byte capabilities).
const CLIENT_PROTOCOL_41: u32 = 0x200;
/// Capability: the client asks for TLS (its short handshake response is an SSL request).
pub const CLIENT_SSL: u32 = 0x800;
/// Capability: no EOF packets; an OK packet (with an EOF header) ends a result set.
pub const CLIENT_DEPRECATE_EOF: u32 = 0x0100_0000;
/// Status flag of OK and EOF packets: another result set follows.
pub const SERVER_MORE_RESULTS_EXISTS: u16 = 0x8;

#[derive(Debug, Default)]
pub struct MysqlFraming;

impl Framing for MysqlFraming {
    fn header_size(&self) -> usize {
        4
    }

    fn read_head(&mut self, header: &[u8]) -> Option<FrameHead> {
        let [a, b, c, sequence] = header else { return None };
        let length = u32::from_le_bytes([*a, *b, *c, 0]) as usize;
        Some(FrameHead { kind: 0, sequence: *sequence, length })
    }
}

pub type PacketReader = FrameReader<MysqlFraming>;

/// Whether `data` starts the server's greeting (protocol 10, a printable version string).
pub fn starts_greeting(data: &[u8]) -> bool {
    let [a, b, c, 0, PROTOCOL_10, version @ ..] = data else { return false };
    let length = u32::from_le_bytes([*a, *b, *c, 0]);
    let printable = version.iter().take_while(|b| **b != 0).count();
    (30..2000).contains(&length)
        && printable > 0
        && version.get(printable) == Some(&0)
        && version[..printable].iter().all(|b| b.is_ascii_graphic() || *b == b' ')
}

/// Whether `data` starts a command a client sends mid-stream (a connection open before the
/// attach): a query or a prepared statement's execution, sequence 0.
pub fn starts_command(data: &[u8]) -> bool {
    let [a, b, c, 0, command, ..] = data else { return false };
    let length = u32::from_le_bytes([*a, *b, *c, 0]);
    matches!(*command, COM_QUERY | COM_STMT_PREPARE | COM_STMT_EXECUTE) && length >= 1
}

/// Whether `data` is exactly one command packet of sequence 0 whose statement text is SQL, or
/// the execution of a prepared statement (its iteration count is always 1). Evidence enough,
/// without the usual port, for a connection open before the attach.
pub fn is_whole_command(data: &[u8]) -> bool {
    let [a, b, c, 0, command, payload @ ..] = data else { return false };
    let length = u32::from_le_bytes([*a, *b, *c, 0]) as usize;
    if length != payload.len() + 1 {
        return false;
    }
    match *command {
        COM_QUERY | COM_STMT_PREPARE => crate::integrations::sql_wire::looks_like_sql(payload),
        COM_STMT_EXECUTE => payload.get(5..9) == Some(&[1, 0, 0, 0]),
        _ => false,
    }
}

/// The server's capabilities in its greeting (protocol 10): two bytes after the version, the
/// thread id, the first scramble and a filler; two more after the charset and status.
pub fn greeting_capabilities(payload: &[u8]) -> u32 {
    let Some(version_end) = payload.iter().skip(1).position(|b| *b == 0) else { return 0 };
    let at = 1 + version_end + 1 + 4 + 8 + 1;
    let lower = payload.get(at..at + 2).map_or(0, |b| u16::from_le_bytes([b[0], b[1]]));
    let upper = payload.get(at + 5..at + 7).map_or(0, |b| u16::from_le_bytes([b[0], b[1]]));
    u32::from(lower) | u32::from(upper) << 16
}

/// What the client's handshake response says.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HandshakeResponse {
    pub capabilities: u32,
    pub user: Option<String>,
    pub database: Option<String>,
}

/// Reads a handshake response (protocol 4.1; older clients give only their capabilities).
pub fn handshake_response(payload: &[u8]) -> HandshakeResponse {
    let mut response = HandshakeResponse::default();
    let Some(flags) = payload.get(..4) else { return response };
    response.capabilities = u32::from_le_bytes(flags.try_into().unwrap_or_default());
    if response.capabilities & CLIENT_PROTOCOL_41 == 0 || payload.len() <= 32 {
        return response;
    }
    // capabilities, max packet (4), charset (1), 23 reserved: then the user, NUL-terminated.
    let rest = &payload[32..];
    let Some(end) = rest.iter().position(|b| *b == 0) else { return response };
    response.user = Some(String::from_utf8_lossy(&rest[..end]).into_owned());
    let rest = &rest[end + 1..];
    // The authentication response: length-encoded (or one length byte), never read.
    let Some((auth_length, used)) = length_encoded(rest) else { return response };
    let Some(rest) = rest.get(used + auth_length as usize..) else { return response };
    if response.capabilities & CLIENT_CONNECT_WITH_DB != 0 {
        let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
        response.database = Some(String::from_utf8_lossy(&rest[..end]).into_owned()).filter(|d| !d.is_empty());
    }
    response
}

/// A length-encoded integer: its value and how many bytes it took.
pub fn length_encoded(data: &[u8]) -> Option<(u64, usize)> {
    let (first, rest) = data.split_first()?;
    let bytes = |n: usize| -> Option<(u64, usize)> {
        let mut value = [0u8; 8];
        value[..n].copy_from_slice(rest.get(..n)?);
        Some((u64::from_le_bytes(value), n + 1))
    };
    match first {
        0..=0xFA => Some((u64::from(*first), 1)),
        0xFC => bytes(2),
        0xFD => bytes(3),
        0xFE => bytes(8),
        _ => None,
    }
}

/// An OK packet (header 0x00, or 0xFE closing a result set): affected rows and status flags.
pub fn ok_packet(payload: &[u8]) -> Option<(u64, u16)> {
    let rest = payload.get(1..)?;
    let (affected, used) = length_encoded(rest)?;
    let rest = &rest[used..];
    let (_, used) = length_encoded(rest)?;
    let status = rest.get(used..used + 2)?;
    Some((affected, u16::from_le_bytes([status[0], status[1]])))
}

/// An EOF packet's status flags (header 0xFE, 5 bytes: warnings, then status).
pub fn eof_status(payload: &[u8]) -> Option<u16> {
    let status = payload.get(3..5)?;
    Some(u16::from_le_bytes([status[0], status[1]]))
}

/// An ERR packet: its error code and message (after the `#` and SQLSTATE, when present).
pub fn err_packet(payload: &[u8]) -> (u16, String) {
    let code = payload.get(1..3).map_or(0, |c| u16::from_le_bytes([c[0], c[1]]));
    let mut message = payload.get(3..).unwrap_or_default();
    if message.first() == Some(&b'#') && message.len() >= 6 {
        message = &message[6..];
    }
    (code, String::from_utf8_lossy(message).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greetings_commands_and_handshakes_are_read() {
        let mut greeting = vec![0x4a, 0, 0, 0, 10];
        greeting.extend(b"10.11.6-MariaDB-0+deb12u1\0");
        greeting.extend([0; 40]);
        assert!(starts_greeting(&greeting));
        assert!(!starts_greeting(b"HTTP/1.1 200 OK\r\n"));
        assert!(starts_command(b"\x09\x00\x00\x00\x03SELECT 1"));
        assert!(!starts_command(b"\x09\x00\x00\x01\x03SELECT 1"));

        let mut response = (CLIENT_PROTOCOL_41 | CLIENT_CONNECT_WITH_DB).to_le_bytes().to_vec();
        response.extend([0; 28]);
        response.extend(b"app\0");
        response.extend([3, 0xaa, 0xbb, 0xcc]);
        response.extend(b"shop\0mysql_native_password\0");
        let read = handshake_response(&response);
        assert_eq!((read.user.as_deref(), read.database.as_deref()), (Some("app"), Some("shop")));
    }

    #[test]
    fn ok_err_and_eof_packets_are_read() {
        assert_eq!(ok_packet(&[0x00, 0x03, 0x00, 0x08, 0x00, 0x00, 0x00]), Some((3, 0x8)));
        assert_eq!(length_encoded(&[0xFC, 0x10, 0x27]), Some((10_000, 3)));
        let (code, message) = err_packet(b"\xff\x7a\x04#42S02Table 'shop.nope' doesn't exist");
        assert_eq!((code, message.as_str()), (1146, "Table 'shop.nope' doesn't exist"));
        assert_eq!(eof_status(&[0xFE, 0, 0, 0x0A, 0]), Some(0x0A));
    }
}
