//! RESP (Redis serialization protocol, versions 2 and 3) read incrementally, one direction of a
//! connection at a time, from what the capture holds: segments cut anywhere, and bytes the
//! capture did not keep (counted, never seen). Bulk payloads are skipped (counted, not copied)
//! past the few bytes a caller wants kept; only a value's framing is ever parsed.
//!
//! The reader turns bytes into [`Token`]s; the nesting of aggregates is the callers'
//! ([`super::commands`], [`super::replies`]) through [`Nesting`].

/// The longest line kept (simple strings, errors, numbers, aggregate headers): an error's message
/// past it is cut.
pub const MAX_LINE: usize = 512;

/// One framing element of RESP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token<'a> {
    /// A line-framed element: its type byte and its text (without CRLF; cut at [`MAX_LINE`]). A
    /// type byte RESP does not know is an inline command's first character (client side).
    Line { kind: u8, text: &'a [u8] },
    /// A length-framed element (`$` bulk string, `!` bulk error, `=` verbatim string) complete:
    /// its first bytes (at most the `keep` the reader was built with) and its length.
    Bulk { kind: u8, kept: &'a [u8], length: usize },
}

#[derive(Debug)]
enum State {
    /// At the first byte of an element.
    Start,
    /// In a line: its type byte so far and its text.
    Line { kind: u8 },
    /// In a length-framed payload: bytes of it (and its CRLF) still to come.
    Payload { kind: u8, length: usize, remaining: usize },
}

/// Why a direction cannot be followed any more until the next segment starts anew.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lost {
    /// Bytes the capture did not keep fell in the framing, not inside a payload.
    Uncaptured,
    /// Bytes that are not RESP (a header's length that is no number, say).
    Malformed,
}

/// The RESP reader of one direction.
#[derive(Debug)]
pub struct RespReader {
    state: State,
    /// The current line's text, or the kept head of the current payload.
    buffer: Vec<u8>,
    /// Payload bytes kept for a caller (command names and arguments, error messages).
    keep: usize,
}

impl RespReader {
    /// A reader keeping the first `keep` bytes of every payload.
    pub fn new(keep: usize) -> Self {
        Self { state: State::Start, buffer: Vec::new(), keep }
    }

    /// Whether the reader stands between two elements (nothing of one read yet).
    pub fn at_boundary(&self) -> bool {
        matches!(self.state, State::Start)
    }

    /// Forgets any element in progress: the next byte starts one.
    pub fn reset(&mut self) {
        self.state = State::Start;
        self.buffer.clear();
    }

    /// Reads `data`, then `uncaptured` bytes the capture did not keep, calling `on_token` for
    /// every element completed. An error leaves the reader reset: the caller decides what was
    /// lost.
    pub fn feed(
        &mut self,
        mut data: &[u8],
        uncaptured: usize,
        on_token: &mut dyn FnMut(Token<'_>),
    ) -> Result<(), Lost> {
        while !data.is_empty() {
            match self.state {
                State::Start => {
                    self.buffer.clear();
                    self.state = State::Line { kind: data[0] };
                    data = &data[1..];
                }
                State::Line { kind } => {
                    let end = data.iter().position(|b| *b == b'\n');
                    let (text, rest) = match end {
                        Some(at) => (&data[..at], &data[at + 1..]),
                        None => (data, &data[data.len()..]),
                    };
                    let room = MAX_LINE.saturating_sub(self.buffer.len());
                    self.buffer.extend_from_slice(&text[..text.len().min(room)]);
                    data = rest;
                    if end.is_some() {
                        if self.buffer.last() == Some(&b'\r') {
                            self.buffer.pop();
                        }
                        self.line_done(kind, on_token).inspect_err(|_| self.reset())?;
                    }
                }
                State::Payload { kind, length, remaining } => {
                    let take = remaining.min(data.len());
                    // Of the payload proper (not its CRLF), what is still wanted.
                    let payload_left = remaining.saturating_sub(2);
                    let wanted = self.keep.saturating_sub(self.buffer.len()).min(payload_left).min(take);
                    self.buffer.extend_from_slice(&data[..wanted]);
                    data = &data[take..];
                    self.payload_advanced(kind, length, remaining - take, on_token);
                }
            }
        }
        if uncaptured == 0 {
            return Ok(());
        }
        match self.state {
            State::Payload { kind, length, remaining } if remaining >= uncaptured => {
                self.payload_advanced(kind, length, remaining - uncaptured, on_token);
                Ok(())
            }
            _ => {
                self.reset();
                Err(Lost::Uncaptured)
            }
        }
    }

    fn payload_advanced(&mut self, kind: u8, length: usize, remaining: usize, on_token: &mut dyn FnMut(Token<'_>)) {
        if remaining == 0 {
            self.state = State::Start;
            on_token(Token::Bulk { kind, kept: &self.buffer, length });
        } else {
            self.state = State::Payload { kind, length, remaining };
        }
    }

    /// A line ended: a token, or the header of a payload to read.
    fn line_done(&mut self, kind: u8, on_token: &mut dyn FnMut(Token<'_>)) -> Result<(), Lost> {
        if matches!(kind, b'$' | b'!' | b'=') {
            let length = parse_length(&self.buffer).ok_or(Lost::Malformed)?;
            self.buffer.clear();
            match usize::try_from(length) {
                // A null bulk string (RESP2's `$-1`): a line-framed element after all.
                Err(_) => {
                    self.state = State::Start;
                    on_token(Token::Line { kind, text: b"-1" });
                }
                Ok(length) => {
                    self.state = State::Payload { kind, length, remaining: length.saturating_add(2) };
                }
            }
            return Ok(());
        }
        self.state = State::Start;
        on_token(Token::Line { kind, text: &self.buffer });
        Ok(())
    }
}

/// Whether `kind` starts a line-framed element of a reply (RESP2 and RESP3).
pub fn is_reply_type(kind: u8) -> bool {
    matches!(
        kind,
        b'+' | b'-' | b':' | b'$' | b'*' | b'_' | b',' | b'#' | b'(' | b'%' | b'~' | b'>' | b'|' | b'!' | b'='
    )
}

/// A header's length or count: a decimal number, maybe negative (`-1`: null).
pub fn parse_length(text: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(text).ok()?;
    let value: i64 = text.parse().ok()?;
    (value >= -1).then_some(value)
}

/// How many elements an aggregate header announces, if `kind` is an aggregate type: arrays,
/// sets and pushes count their elements, maps and attributes their keys and values.
pub fn aggregate_elements(kind: u8, text: &[u8]) -> Option<Result<u64, Lost>> {
    let per_entry = match kind {
        b'*' | b'~' | b'>' => 1,
        b'%' | b'|' => 2,
        _ => return None,
    };
    Some(match parse_length(text) {
        Some(-1) => Ok(0),
        Some(count) => Ok(count as u64 * per_entry),
        None => Err(Lost::Malformed),
    })
}

/// Where a direction stands in the nesting of its current top-level value.
#[derive(Debug, Default)]
pub struct Nesting {
    /// Elements still to come in each open aggregate, innermost last.
    open: Vec<u64>,
}

/// The deepest nesting followed: deeper replies are read as malformed (the connection is then
/// given up until the next exchange), never followed without bound.
const MAX_DEPTH: usize = 64;

impl Nesting {
    pub fn depth(&self) -> usize {
        self.open.len()
    }

    /// An element was read: `Ok(true)` if it completed the top-level value.
    pub fn element(&mut self, token: &Token<'_>) -> Result<bool, Lost> {
        if let Token::Line { kind, text } = token {
            if let Some(count) = aggregate_elements(*kind, text) {
                let count = count?;
                if count > 0 {
                    if self.open.len() >= MAX_DEPTH {
                        return Err(Lost::Malformed);
                    }
                    self.open.push(count);
                    return Ok(false);
                }
            }
        }
        // A scalar, or an empty aggregate: one element of the enclosing one.
        while let Some(left) = self.open.last_mut() {
            *left -= 1;
            if *left > 0 {
                return Ok(false);
            }
            self.open.pop();
        }
        Ok(true)
    }

    pub fn reset(&mut self) {
        self.open.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(reader: &mut RespReader, data: &[u8], uncaptured: usize) -> Result<Vec<String>, Lost> {
        let mut out = Vec::new();
        reader.feed(data, uncaptured, &mut |token| {
            out.push(match token {
                Token::Line { kind, text } => format!("{}{}", kind as char, String::from_utf8_lossy(text)),
                Token::Bulk { kind, kept, length } => {
                    format!("{}{}:{}", kind as char, length, String::from_utf8_lossy(kept))
                }
            })
        })?;
        Ok(out)
    }

    #[test]
    fn elements_split_anywhere_read_the_same() {
        let wire = b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nhello\r\n+OK\r\n$-1\r\n";
        let whole = tokens(&mut RespReader::new(16), wire, 0).unwrap();
        assert_eq!(whole, ["*3", "$3:SET", "$3:key", "$5:hello", "+OK", "$-1"]);
        for cut in 1..wire.len() {
            let mut reader = RespReader::new(16);
            let mut split = tokens(&mut reader, &wire[..cut], 0).unwrap();
            split.extend(tokens(&mut reader, &wire[cut..], 0).unwrap());
            assert_eq!(split, whole, "cut at {cut}");
        }
    }

    #[test]
    fn payloads_are_kept_up_to_the_limit_and_uncaptured_bytes_inside_them_are_skipped() {
        let mut reader = RespReader::new(4);
        // A 10-byte value of which the capture kept 3 bytes: 7 payload bytes and CRLF unseen.
        let out = tokens(&mut reader, b"$10\r\nabc", 9).unwrap();
        assert_eq!(out, ["$10:abc"]);
        assert!(reader.at_boundary());
        assert_eq!(tokens(&mut reader, b"$6\r\nabcdef\r\n", 0).unwrap(), ["$6:abcd"]);
        // Unseen bytes in the framing: lost, and the reader starts anew.
        assert_eq!(tokens(&mut reader, b"*2\r\n$1", 5), Err(Lost::Uncaptured));
        assert!(reader.at_boundary());
    }

    #[test]
    fn nesting_counts_resp3_aggregates_and_rejects_garbage() {
        let mut reader = RespReader::new(0);
        let mut nesting = Nesting::default();
        let mut complete = Vec::new();
        let wire = b"%2\r\n+a\r\n*2\r\n:1\r\n_\r\n+b\r\n~0\r\n:7\r\n";
        reader.feed(wire, 0, &mut |token| complete.push(nesting.element(&token).unwrap())).unwrap();
        // The map (two keys, two values, the last an empty set) completes at `~0`; `:7` is another.
        assert_eq!(complete, [false, false, false, false, false, false, true, true]);
        let mut reader = RespReader::new(0);
        assert_eq!(reader.feed(b"$x\r\n", 0, &mut |_| {}), Err(Lost::Malformed));
        assert_eq!(aggregate_elements(b'*', b"-2").map(|r| r.is_err()), Some(true));
    }
}
