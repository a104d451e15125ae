//! Incremental HTTP/1.0 and 1.1 parser for one direction of one connection.
//!
//! The socket capture gives, for each read or write, its first bytes (bounded) and its real
//! length. So the parser is fed `(captured, real_length)` segments: message heads are buffered
//! (up to a cap) and parsed; bodies are only counted, their bytes need not be there. When bytes of
//! a head are missing, the message is flagged truncated and the parser waits for a segment that
//! starts with a new message (syscall boundaries are the only boundaries it can trust then).
//! Input that is not HTTP is recognised from its first bytes and the direction is then ignored.

use std::{collections::VecDeque, sync::Arc};

use super::headers::KeptHeaders;

/// Which messages a parser reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    Request,
    Response,
}

/// The protocol version of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpVersion {
    Http10,
    Http11,
}

/// The first line of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartLine {
    Request { method: String, target: String },
    Response { status: u16, reason: String },
}

/// A header the parser kept. The name is lowercase; the value is trimmed, and lossily decoded
/// (headers are ASCII in practice; a stray byte must not cost the message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: String,
}

/// How the body of a message is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body: requests without length, HEAD responses, 1xx, 204, 304.
    None,
    /// `Content-Length`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// A response without length: the body ends when the connection closes.
    UntilClose,
}

/// Whether a message head was seen whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadCompleteness {
    Complete,
    /// The capture missed bytes of the head: headers after the gap are unknown.
    Truncated,
    /// The head was longer than [`ParserLimits::max_head_bytes`]: later headers were not read.
    TooLarge,
}

/// A parsed message head, with the times the message started and the head ended (the timestamps
/// of the segments that held the first byte and the end of the head).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageHead {
    pub start_line: StartLine,
    pub version: HttpVersion,
    /// Only the headers the parser was told to keep, in message order.
    pub headers: Vec<Header>,
    pub completeness: HeadCompleteness,
    /// `None` when the head was not seen whole: then the body could not be followed.
    pub framing: Option<BodyFraming>,
    /// `Connection: close`, or HTTP/1.0 without `Connection: keep-alive`.
    pub connection_close: bool,
    pub started_ns: u64,
    pub head_ended_ns: u64,
}

impl MessageHead {
    /// The request method, for a request.
    pub fn method(&self) -> Option<&str> {
        match &self.start_line {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    /// The request target as sent (`/path?query`, or absolute for proxies), for a request.
    pub fn target(&self) -> Option<&str> {
        match &self.start_line {
            StartLine::Request { target, .. } => Some(target),
            StartLine::Response { .. } => None,
        }
    }

    /// The status code, for a response.
    pub fn status(&self) -> Option<u16> {
        match self.start_line {
            StartLine::Response { status, .. } => Some(status),
            StartLine::Request { .. } => None,
        }
    }

    /// The first kept header called `lowercase_name`.
    pub fn header(&self, lowercase_name: &str) -> Option<&str> {
        self.headers.iter().find(|h| h.name == lowercase_name).map(|h| h.value.as_str())
    }

    /// Whether headers may be missing.
    pub fn is_truncated(&self) -> bool {
        self.completeness != HeadCompleteness::Complete
    }
}

/// What the parser found in the segments it was fed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseEvent {
    /// A message head (possibly flagged truncated).
    Head(MessageHead),
    /// The message of the last `Head` ended. `complete` is false when its end could not be seen
    /// (truncated head, lost framing, connection closed early); `ended_ns` is then the last
    /// segment that belonged to it.
    End { ended_ns: u64, complete: bool },
}

/// Why a parser no longer reads its direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IgnoreReason {
    /// The first bytes were not HTTP (TLS, Redis, binary, ...).
    NotHttp,
    /// Framing was lost and no segment started a new message for too long.
    LostSync,
    /// The connection switched protocols (101, or a CONNECT tunnel).
    Upgraded,
    /// The connection was closed.
    Closed,
}

/// Bounds on what a parser keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParserLimits {
    /// Head bytes buffered per message; longer heads are flagged [`HeadCompleteness::TooLarge`].
    pub max_head_bytes: usize,
    /// Segments skipped while waiting for a new message before giving up on the direction. Large
    /// bodies whose framing was lost arrive as many segments, so this is generous.
    pub max_resync_segments: u32,
    /// Response methods remembered for pipelined requests (HEAD responses have no body).
    pub max_pending_methods: usize,
}

impl Default for ParserLimits {
    fn default() -> Self {
        Self { max_head_bytes: 16 * 1024, max_resync_segments: 4096, max_pending_methods: 64 }
    }
}

/// Counters for what the parser saw; for debugging and for tests, never per-event logging.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ParserStats {
    pub heads: u64,
    pub truncated_heads: u64,
    /// Messages that started but could not be parsed at all.
    pub lost_messages: u64,
    pub resyncs: u64,
}

/// Longest method token accepted; the longest registered method is 17 characters long.
const MAX_METHOD_LEN: usize = 24;
/// Head buffer capacity kept between messages.
const RETAINED_HEAD_CAPACITY: usize = 4096;
/// How much of an unfinished first line is checked.
const EARLY_CHECK_BYTES: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Reading a chunk-size line: hex digits, then anything (extensions) up to LF.
    Size {
        size: u64,
        digits: u8,
        in_extension: bool,
    },
    Data(u64),
    /// The CRLF after chunk data.
    DataEnd {
        cr: bool,
    },
    /// Trailer lines after the last chunk, up to an empty line.
    Trailer {
        line_len: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between messages.
    Idle,
    /// Buffering a head that started at `started_ns`.
    Head {
        started_ns: u64,
    },
    Length(u64),
    Chunked(Chunk),
    UntilClose,
    /// Waiting for a segment that starts a new message; `open` when a message's end is owed.
    Resync {
        skipped: u32,
        open: bool,
    },
    Ignoring(IgnoreReason),
}

/// The parser for one direction of one connection.
#[derive(Debug)]
pub struct MessageParser {
    kind: MessageKind,
    limits: ParserLimits,
    kept: Arc<KeptHeaders>,
    state: State,
    head: Vec<u8>,
    /// The first line of the buffered head was checked and is valid.
    start_line_ok: bool,
    /// For a response parser: whether the responses owed are to HEAD (true) or CONNECT requests.
    pending_methods: VecDeque<PendingMethod>,
    /// Timestamp of the last segment fed, for ends that are only noticed later.
    last_segment_ns: u64,
    /// Whether any valid message was seen: garbage before that means "not HTTP at all".
    seen_message: bool,
    stats: ParserStats,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PendingMethod {
    Head,
    Connect,
    Other,
}

impl MessageParser {
    /// A parser for `kind` messages that keeps the headers in `kept`.
    pub fn new(kind: MessageKind, limits: ParserLimits, kept: Arc<KeptHeaders>) -> Self {
        Self {
            kind,
            limits,
            kept,
            state: State::Idle,
            head: Vec::new(),
            start_line_ok: false,
            pending_methods: VecDeque::new(),
            last_segment_ns: 0,
            seen_message: false,
            stats: ParserStats::default(),
        }
    }

    /// Response parsers only: a request with `method` was sent, so a response to it is owed.
    /// Needed because responses to HEAD have no body and a 2xx to CONNECT opens a tunnel.
    pub fn expect_response_to(&mut self, method: &str) {
        if self.pending_methods.len() >= self.limits.max_pending_methods {
            // Nobody answers: forget the oldest rather than grow; at worst a HEAD response is
            // then read as having a body and the parser resynchronises.
            self.pending_methods.pop_front();
        }
        self.pending_methods.push_back(match method {
            "HEAD" => PendingMethod::Head,
            "CONNECT" => PendingMethod::Connect,
            _ => PendingMethod::Other,
        });
    }

    /// Why the parser ignores its input, if it does.
    pub fn ignoring(&self) -> Option<IgnoreReason> {
        match self.state {
            State::Ignoring(reason) => Some(reason),
            _ => None,
        }
    }

    /// Stops reading this direction (the other direction switched protocols, for instance).
    pub fn stop(&mut self, reason: IgnoreReason) {
        self.state = State::Ignoring(reason);
        self.head = Vec::new();
    }

    /// What the parser saw so far.
    pub fn stats(&self) -> ParserStats {
        self.stats
    }

    /// Feeds one read or write: `captured` holds its first bytes, `len` is its real length
    /// (bytes past `captured` are counted, never needed), at time `ts_ns`.
    pub fn feed(&mut self, captured: &[u8], len: usize, ts_ns: u64, out: &mut Vec<ParseEvent>) {
        let captured = &captured[..captured.len().min(len)];
        if let State::Resync { skipped, open } = self.state {
            if !self.resync_at(captured, skipped, open, out) {
                self.last_segment_ns = ts_ns;
                return;
            }
        }
        let mut known = captured;
        while !known.is_empty() && self.accepts_input() {
            let used = self.consume_known(known, ts_ns, out);
            known = &known[used..];
        }
        let mut unknown = len - captured.len();
        while unknown > 0 && self.accepts_input() {
            unknown -= self.consume_unknown(unknown, ts_ns, out);
        }
        self.last_segment_ns = ts_ns;
    }

    /// The connection closed at `ts_ns`: ends a body delimited by the close, and reports messages
    /// cut short. The parser ignores everything afterwards.
    pub fn finish(&mut self, ts_ns: u64, out: &mut Vec<ParseEvent>) {
        let last = if self.last_segment_ns == 0 { ts_ns } else { self.last_segment_ns };
        match self.state {
            State::UntilClose => out.push(ParseEvent::End { ended_ns: last, complete: true }),
            State::Length(_) | State::Chunked(_) | State::Resync { open: true, .. } => {
                out.push(ParseEvent::End { ended_ns: last, complete: false })
            }
            State::Head { started_ns } => {
                if self.emit_partial_head(started_ns, last, HeadCompleteness::Truncated, out) {
                    out.push(ParseEvent::End { ended_ns: last, complete: false });
                }
            }
            State::Idle | State::Resync { open: false, .. } | State::Ignoring(_) => {}
        }
        self.stop(IgnoreReason::Closed);
    }

    fn accepts_input(&self) -> bool {
        !matches!(self.state, State::Resync { .. } | State::Ignoring(_))
    }

    /// At the start of a segment while resynchronising: resumes if the segment starts a message.
    fn resync_at(&mut self, captured: &[u8], skipped: u32, open: bool, out: &mut Vec<ParseEvent>) -> bool {
        if !captured.is_empty() && starts_message(self.kind, captured) {
            if open {
                out.push(ParseEvent::End { ended_ns: self.last_segment_ns, complete: false });
            }
            self.stats.resyncs += 1;
            self.state = State::Idle;
            return true;
        }
        if skipped >= self.limits.max_resync_segments {
            if open {
                out.push(ParseEvent::End { ended_ns: self.last_segment_ns, complete: false });
            }
            self.stop(IgnoreReason::LostSync);
        } else {
            self.state = State::Resync { skipped: skipped + 1, open };
        }
        false
    }

    /// Framing is lost: wait for a segment that starts a message (or give up if none ever did).
    fn lose_sync(&mut self, open: bool) {
        self.head.clear();
        self.state =
            if self.seen_message { State::Resync { skipped: 0, open } } else { State::Ignoring(IgnoreReason::NotHttp) };
    }

    /// Consumes known bytes; returns how many were used.
    fn consume_known(&mut self, bytes: &[u8], ts_ns: u64, out: &mut Vec<ParseEvent>) -> usize {
        match self.state {
            State::Idle => {
                // RFC 9112 §2.2: empty lines before a request line are to be ignored.
                let skipped = bytes.iter().take_while(|b| matches!(b, b'\r' | b'\n')).count();
                if skipped < bytes.len() {
                    self.head.clear();
                    self.start_line_ok = false;
                    self.state = State::Head { started_ns: ts_ns };
                }
                skipped
            }
            State::Head { started_ns } => self.consume_head(bytes, started_ns, ts_ns, out),
            State::Length(remaining) => {
                let used = remaining.min(bytes.len() as u64);
                self.advance_length(remaining - used, ts_ns, out);
                used as usize
            }
            State::Chunked(chunk) => self.consume_chunked(chunk, bytes, ts_ns, out),
            State::UntilClose => bytes.len(),
            State::Resync { .. } | State::Ignoring(_) => bytes.len(),
        }
    }

    /// Consumes `count` bytes that exist but were not captured; returns how many were used.
    fn consume_unknown(&mut self, count: usize, ts_ns: u64, out: &mut Vec<ParseEvent>) -> usize {
        match self.state {
            State::Length(remaining) => {
                let used = remaining.min(count as u64);
                self.advance_length(remaining - used, ts_ns, out);
                used as usize
            }
            State::Chunked(Chunk::Data(remaining)) => {
                let used = remaining.min(count as u64);
                self.state = State::Chunked(if remaining == used {
                    Chunk::DataEnd { cr: false }
                } else {
                    Chunk::Data(remaining - used)
                });
                used as usize
            }
            State::UntilClose => count,
            State::Head { started_ns } => {
                // The gap is inside the head: its end, and so the body, cannot be found.
                let open = self.emit_partial_head(started_ns, ts_ns, HeadCompleteness::Truncated, out);
                self.state = State::Resync { skipped: 0, open };
                count
            }
            State::Idle => {
                // A message starts in bytes we do not have.
                self.stats.lost_messages += 1;
                self.state = State::Resync { skipped: 0, open: false };
                count
            }
            State::Chunked(_) => {
                // A chunk size line is missing: the rest of the body cannot be followed.
                self.state = State::Resync { skipped: 0, open: true };
                count
            }
            State::Resync { .. } | State::Ignoring(_) => count,
        }
    }

    fn advance_length(&mut self, remaining: u64, ts_ns: u64, out: &mut Vec<ParseEvent>) {
        if remaining == 0 {
            out.push(ParseEvent::End { ended_ns: ts_ns, complete: true });
            self.state = State::Idle;
        } else {
            self.state = State::Length(remaining);
        }
    }

    fn consume_head(&mut self, bytes: &[u8], started_ns: u64, ts_ns: u64, out: &mut Vec<ParseEvent>) -> usize {
        let old_len = self.head.len();
        let room = self.limits.max_head_bytes.saturating_sub(old_len);
        let take = room.min(bytes.len());
        self.head.extend_from_slice(&bytes[..take]);

        if !self.start_line_ok {
            // Rescanning a long first line on every segment would be quadratic: before its end is
            // buffered only its first bytes are checked (enough to reject other protocols).
            let check = match self.head[old_len..].contains(&b'\n') {
                true => check_start_line(self.kind, &self.head),
                false if old_len < EARLY_CHECK_BYTES => {
                    check_start_line(self.kind, &self.head[..self.head.len().min(EARLY_CHECK_BYTES)])
                }
                false => StartCheck::Partial,
            };
            match check {
                StartCheck::Valid => self.start_line_ok = true,
                StartCheck::Partial => {}
                StartCheck::Invalid => {
                    if self.seen_message {
                        self.stats.lost_messages += 1;
                    }
                    self.lose_sync(false);
                    return bytes.len();
                }
            }
        }

        if let Some(end) = find_head_end(&self.head, old_len.saturating_sub(3)) {
            let used = end - old_len;
            self.head.truncate(end);
            self.finish_head(started_ns, ts_ns, out);
            return used;
        }
        if take < bytes.len() {
            // Over the cap: report what was read, then look for the next message.
            let open = self.emit_partial_head(started_ns, ts_ns, HeadCompleteness::TooLarge, out);
            self.head = Vec::new();
            self.state = State::Resync { skipped: 0, open };
            return bytes.len();
        }
        take
    }

    /// Parses the complete head in the buffer and moves on to its body.
    fn finish_head(&mut self, started_ns: u64, ts_ns: u64, out: &mut Vec<ParseEvent>) {
        let parsed = parse_head(self.kind, &self.head, &self.kept, false);
        self.head.clear();
        if self.head.capacity() > RETAINED_HEAD_CAPACITY {
            // One huge head must not pin its buffer for the life of a keep-alive connection.
            self.head = Vec::new();
        }
        let Some(parsed) = parsed else {
            self.stats.lost_messages += u64::from(self.seen_message);
            self.lose_sync(false);
            return;
        };
        self.seen_message = true;
        self.stats.heads += 1;
        let framing = self.framing_of(&parsed);
        let status = match parsed.start_line {
            StartLine::Response { status, .. } => Some(status),
            StartLine::Request { .. } => None,
        };
        let pending = match status {
            // Interim responses leave the request waiting for its final response.
            Some(100..=199) if status != Some(101) => None,
            Some(_) => Some(self.pending_methods.pop_front().unwrap_or(PendingMethod::Other)),
            None => None,
        };
        let head = MessageHead {
            start_line: parsed.start_line,
            version: parsed.version,
            headers: parsed.headers,
            completeness: HeadCompleteness::Complete,
            framing: framing.ok(),
            connection_close: parsed.connection_close,
            started_ns,
            head_ended_ns: ts_ns,
        };
        out.push(ParseEvent::Head(head));

        let tunnel =
            status == Some(101) || (pending == Some(PendingMethod::Connect) && matches!(status, Some(200..=299)));
        match framing {
            _ if tunnel => {
                out.push(ParseEvent::End { ended_ns: ts_ns, complete: true });
                self.stop(IgnoreReason::Upgraded);
            }
            Ok(BodyFraming::None) => {
                out.push(ParseEvent::End { ended_ns: ts_ns, complete: true });
                self.state = State::Idle;
            }
            Ok(BodyFraming::Length(n)) => self.advance_length(n, ts_ns, out),
            Ok(BodyFraming::Chunked) => {
                self.state = State::Chunked(Chunk::Size { size: 0, digits: 0, in_extension: false })
            }
            Ok(BodyFraming::UntilClose) => self.state = State::UntilClose,
            Err(()) => self.state = State::Resync { skipped: 0, open: true },
        }
    }

    /// Body framing per RFC 9112 §6.3; `Err` when the headers contradict each other.
    fn framing_of(&self, head: &ParsedHead) -> Result<BodyFraming, ()> {
        if let StartLine::Response { status, .. } = head.start_line {
            let to_head = self.pending_methods.front() == Some(&PendingMethod::Head);
            if to_head || (100..200).contains(&status) || status == 204 || status == 304 {
                return Ok(BodyFraming::None);
            }
        }
        if let Some(chunked) = head.chunked {
            return match (chunked, self.kind) {
                (true, _) => Ok(BodyFraming::Chunked),
                (false, MessageKind::Response) => Ok(BodyFraming::UntilClose),
                // A request whose length cannot be determined is an error (the server answers
                // 400 and closes); its bytes cannot be followed.
                (false, MessageKind::Request) => Err(()),
            };
        }
        match (head.content_length, self.kind) {
            (Some(Ok(0)), _) => Ok(BodyFraming::None),
            (Some(Ok(n)), _) => Ok(BodyFraming::Length(n)),
            (Some(Err(())), _) => Err(()),
            (None, MessageKind::Request) => Ok(BodyFraming::None),
            (None, MessageKind::Response) => Ok(BodyFraming::UntilClose),
        }
    }

    /// Emits what can be read of an incomplete head, if its first line is whole. Returns whether
    /// a head was emitted (so an `End` is owed).
    fn emit_partial_head(
        &mut self,
        started_ns: u64,
        ts_ns: u64,
        completeness: HeadCompleteness,
        out: &mut Vec<ParseEvent>,
    ) -> bool {
        let parsed = parse_head(self.kind, &self.head, &self.kept, true);
        self.head.clear();
        let Some(parsed) = parsed else {
            self.stats.lost_messages += 1;
            return false;
        };
        if let StartLine::Response { status, .. } = parsed.start_line {
            if !(100..200).contains(&status) {
                self.pending_methods.pop_front();
            }
        }
        self.seen_message = true;
        self.stats.heads += 1;
        self.stats.truncated_heads += 1;
        out.push(ParseEvent::Head(MessageHead {
            start_line: parsed.start_line,
            version: parsed.version,
            headers: parsed.headers,
            completeness,
            framing: None,
            connection_close: parsed.connection_close,
            started_ns,
            head_ended_ns: ts_ns,
        }));
        true
    }

    fn consume_chunked(&mut self, mut chunk: Chunk, bytes: &[u8], ts_ns: u64, out: &mut Vec<ParseEvent>) -> usize {
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            chunk = match chunk {
                Chunk::Data(remaining) => {
                    let used = remaining.min((bytes.len() - i) as u64);
                    i += used as usize;
                    if used == remaining {
                        Chunk::DataEnd { cr: false }
                    } else {
                        Chunk::Data(remaining - used)
                    }
                }
                Chunk::Size { size, digits, in_extension } => {
                    i += 1;
                    match b {
                        b'\n' if digits == 0 => return self.chunk_error(i),
                        b'\n' if size == 0 => Chunk::Trailer { line_len: 0 },
                        b'\n' => Chunk::Data(size),
                        _ if in_extension => chunk,
                        b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' if digits < 15 => {
                            let digit = (b as char).to_digit(16).unwrap_or(0);
                            Chunk::Size { size: size * 16 + u64::from(digit), digits: digits + 1, in_extension }
                        }
                        // Extensions, whitespace before them, and the CR of CRLF: skipped.
                        b';' | b' ' | b'\t' | b'\r' if digits > 0 => Chunk::Size { size, digits, in_extension: true },
                        _ => return self.chunk_error(i),
                    }
                }
                Chunk::DataEnd { cr } => {
                    i += 1;
                    match b {
                        b'\r' if !cr => Chunk::DataEnd { cr: true },
                        b'\n' => Chunk::Size { size: 0, digits: 0, in_extension: false },
                        _ => return self.chunk_error(i),
                    }
                }
                Chunk::Trailer { line_len } => {
                    i += 1;
                    match b {
                        b'\n' if line_len == 0 => {
                            out.push(ParseEvent::End { ended_ns: ts_ns, complete: true });
                            self.state = State::Idle;
                            return i;
                        }
                        b'\n' => Chunk::Trailer { line_len: 0 },
                        b'\r' => chunk,
                        // A trailer line: only its length matters, and only to find the empty one.
                        _ => Chunk::Trailer { line_len: line_len + 1 },
                    }
                }
            };
        }
        self.state = State::Chunked(chunk);
        i
    }

    fn chunk_error(&mut self, used: usize) -> usize {
        self.state = State::Resync { skipped: 0, open: true };
        used
    }
}

/// Where the head ends (index after its empty line), searching from `from`.
fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(pos) = buf[i..].iter().position(|&b| b == b'\n') {
        let nl = i + pos;
        // The line that this LF ends is empty if it is LF or CRLF right after the previous LF.
        if nl >= 1 && buf[nl - 1] == b'\n' {
            return Some(nl + 1);
        }
        if nl >= 2 && buf[nl - 1] == b'\r' && buf[nl - 2] == b'\n' {
            return Some(nl + 1);
        }
        i = nl + 1;
    }
    None
}

enum StartCheck {
    Valid,
    Partial,
    Invalid,
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Checks as much of the first line as is buffered, so that other protocols are rejected within
/// a few bytes (a TLS record starts with 0x16, RESP with `*` then digits then CR).
fn check_start_line(kind: MessageKind, buf: &[u8]) -> StartCheck {
    let line_end = buf.iter().position(|&b| b == b'\n');
    let line = match line_end {
        Some(end) => &buf[..end],
        None => buf,
    };
    let complete = line_end.is_some();
    let valid = match kind {
        MessageKind::Request => check_request_line(line, complete),
        MessageKind::Response => check_status_line(line, complete),
    };
    match valid {
        false => StartCheck::Invalid,
        true if complete => StartCheck::Valid,
        true => StartCheck::Partial,
    }
}

/// Whether `line` is (a prefix of, when `!complete`) a valid request line.
fn check_request_line(line: &[u8], complete: bool) -> bool {
    // In an unfinished line a last CR may be the start of CRLF.
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let method_len = line.iter().take_while(|&&b| is_tchar(b)).count();
    if method_len > MAX_METHOD_LEN {
        return false;
    }
    let rest = &line[method_len..];
    if rest.is_empty() {
        return !complete;
    }
    if method_len == 0 || rest[0] != b' ' {
        return false;
    }
    let rest = &rest[1..];
    let target_len = rest.iter().take_while(|&&b| b > b' ' && b != 0x7f).count();
    let after_target = &rest[target_len..];
    if after_target.is_empty() {
        return !complete;
    }
    if target_len == 0 || after_target[0] != b' ' {
        return false;
    }
    version_prefix_ok(&after_target[1..], complete)
}

/// Whether `line` is (a prefix of) a valid status line: `HTTP/1.x SP 3DIGIT [SP reason]`.
fn check_status_line(line: &[u8], complete: bool) -> bool {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let version_len = line.len().min(8);
    if !version_prefix_ok(&line[..version_len], complete && line.len() <= 8) {
        return false;
    }
    let rest = &line[version_len..];
    if rest.is_empty() {
        return !complete;
    }
    if rest[0] != b' ' {
        return false;
    }
    let code = &rest[1..];
    let digits = code.iter().take(3).take_while(|b| b.is_ascii_digit()).count();
    if digits < code.len().min(3) {
        return false;
    }
    if digits < 3 {
        return !complete;
    }
    code.len() == 3 || code[3] == b' '
}

/// Whether `v` is (a prefix of) `HTTP/1.0` or `HTTP/1.1` (any 1.x digit is read as 1.1).
fn version_prefix_ok(v: &[u8], complete: bool) -> bool {
    const PREFIX: &[u8] = b"HTTP/1.";
    if v.len() <= PREFIX.len() {
        return !complete && PREFIX.starts_with(v);
    }
    v.len() == 8 && v.starts_with(PREFIX) && v[7].is_ascii_digit()
}

/// Whether a segment plausibly starts a message, to resynchronise on. Stricter than the start
/// line check: a body that happens to start with a token and a space must not pass, so the
/// method must be a registered one.
/// Whether `bytes` (the start of a read or write) can be the start of a request: where a parser
/// joining a connection mid-stream can begin.
pub fn starts_request(bytes: &[u8]) -> bool {
    starts_message(MessageKind::Request, bytes)
}

fn starts_message(kind: MessageKind, bytes: &[u8]) -> bool {
    match kind {
        MessageKind::Response => bytes.starts_with(b"HTTP/1.") || (bytes.len() < 7 && b"HTTP/1.".starts_with(bytes)),
        MessageKind::Request => {
            const METHODS: [&[u8]; 9] =
                [b"GET ", b"POST ", b"PUT ", b"DELETE ", b"HEAD ", b"OPTIONS ", b"PATCH ", b"CONNECT ", b"TRACE "];
            METHODS.iter().any(|m| bytes.starts_with(m))
        }
    }
}

struct ParsedHead {
    start_line: StartLine,
    version: HttpVersion,
    headers: Vec<Header>,
    /// `Some(last coding is chunked)` when `Transfer-Encoding` is present.
    chunked: Option<bool>,
    /// `Err` when the values disagree or are not numbers.
    content_length: Option<Result<u64, ()>>,
    connection_close: bool,
}

/// Parses a buffered head. With `partial`, only whole lines are read and the head need not end
/// with an empty line; the first line must be whole and valid either way.
fn parse_head(kind: MessageKind, buf: &[u8], kept: &KeptHeaders, partial: bool) -> Option<ParsedHead> {
    let buf = if partial { &buf[..buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1)] } else { buf };
    let mut lines = buf.split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let first = lines.next()?;
    let (start_line, version) = match kind {
        MessageKind::Request => parse_request_line(first)?,
        MessageKind::Response => parse_status_line(first)?,
    };
    let mut head = ParsedHead {
        start_line,
        version,
        headers: Vec::new(),
        chunked: None,
        content_length: None,
        connection_close: false,
    };
    let mut keep_alive = false;
    let mut close = false;
    let mut last_kept = false;
    for line in lines {
        if line.is_empty() {
            break;
        }
        if matches!(line[0], b' ' | b'\t') {
            // Obsolete line folding (RFC 9112 §5.2): continues the previous value.
            if last_kept {
                if let Some(h) = head.headers.last_mut() {
                    h.value.push(' ');
                    h.value.push_str(String::from_utf8_lossy(trim(line)).as_ref());
                }
            }
            continue;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        let name = &line[..colon];
        last_kept = false;
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            // Lenient: the peer accepted or sent it, and one odd line must not cost the message.
            continue;
        }
        let value = trim(&line[colon + 1..]);
        let is = |framing: &str| name.eq_ignore_ascii_case(framing.as_bytes());
        if is("content-length") {
            let parsed = parse_content_length(value);
            head.content_length = Some(match head.content_length {
                Some(previous) if previous != parsed => Err(()),
                _ => parsed,
            });
        } else if is("transfer-encoding") {
            let last = value.rsplit(|&b| b == b',').next().map(trim).unwrap_or_default();
            head.chunked = Some(last.eq_ignore_ascii_case(b"chunked"));
        } else if is("connection") {
            for token in value.split(|&b| b == b',').map(trim) {
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
        // Only a kept header costs a copy of its name and value.
        if let Some(name) = kept.find(name) {
            head.headers.push(Header { name: name.to_owned(), value: String::from_utf8_lossy(value).into_owned() });
            last_kept = true;
        }
    }
    head.connection_close = close || (head.version == HttpVersion::Http10 && !keep_alive);
    Some(head)
}

/// `Content-Length`, including the `5, 5` form some proxies produce.
fn parse_content_length(value: &[u8]) -> Result<u64, ()> {
    let mut result = None;
    for part in value.split(|&b| b == b',').map(trim) {
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return Err(());
        }
        let n = std::str::from_utf8(part).map_err(|_| ())?.parse::<u64>().map_err(|_| ())?;
        if result.is_some_and(|r| r != n) {
            return Err(());
        }
        result = Some(n);
    }
    result.ok_or(())
}

fn parse_request_line(line: &[u8]) -> Option<(StartLine, HttpVersion)> {
    if !check_request_line(line, true) {
        return None;
    }
    let mut parts = line.split(|&b| b == b' ');
    let method = parts.next()?;
    let target = parts.next()?;
    let version = parse_version(parts.next()?)?;
    let start_line = StartLine::Request {
        method: String::from_utf8_lossy(method).into_owned(),
        target: String::from_utf8_lossy(target).into_owned(),
    };
    Some((start_line, version))
}

fn parse_status_line(line: &[u8]) -> Option<(StartLine, HttpVersion)> {
    if !check_status_line(line, true) {
        return None;
    }
    let version = parse_version(&line[..8])?;
    let status = std::str::from_utf8(&line[9..12]).ok()?.parse().ok()?;
    let reason = line.get(13..).map(|r| String::from_utf8_lossy(r).into_owned()).unwrap_or_default();
    Some((StartLine::Response { status, reason }, version))
}

fn parse_version(v: &[u8]) -> Option<HttpVersion> {
    match v {
        b"HTTP/1.0" => Some(HttpVersion::Http10),
        _ if version_prefix_ok(v, true) => Some(HttpVersion::Http11),
        _ => None,
    }
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| !matches!(b, b' ' | b'\t')).unwrap_or(bytes.len());
    let end = bytes.iter().rposition(|b| !matches!(b, b' ' | b'\t')).map_or(start, |i| i + 1);
    &bytes[start..end]
}

#[cfg(test)]
#[path = "message_parser_tests.rs"]
mod tests;
