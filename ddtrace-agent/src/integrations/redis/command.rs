//! Redis commands as a client writes them (RESP arrays of bulk strings, or inline commands), and
//! their text as dd-trace-py's redis integration makes it (`stringify_cache_args`).

use super::resp::{parse_length, Lost, Token};

/// Each argument past this many characters is cut, with `...` (dd-trace-py's `VALUE_MAX_LEN`).
pub const MAX_ARGUMENT: usize = 100;
/// The command's arguments past this many characters in all are cut, with `...`
/// (`DD_REDIS_CMD_MAX_LENGTH`'s default).
pub const MAX_COMMAND: usize = 1000;
/// Bytes of each argument the reader keeps: enough to cut it as dd-trace-py does.
pub const KEPT_ARGUMENT_BYTES: usize = MAX_ARGUMENT + 1;

/// Commands whose arguments are secrets: never kept, not even in memory.
const SECRET_ARGUMENTS: [&str; 2] = ["AUTH", "HELLO"];

/// One command written by the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The command's name, upper case (`GET`, `SET`, ...).
    pub name: String,
    /// Its arguments as dd-trace-py shows them (each cut at [`MAX_ARGUMENT`], `...` marked),
    /// until the [`MAX_COMMAND`] budget ran out.
    pub shown: Vec<String>,
    /// Whether the budget cut the text (the last shown argument ends with `...`).
    pub cut: bool,
    /// How many arguments, the name included (`redis.args_length`).
    pub arguments: usize,
}

impl Command {
    /// The command as dd-trace-py's `redis.raw_command` has it, before obfuscation.
    pub fn text(&self) -> String {
        std::iter::once(self.name.as_str()).chain(self.shown.iter().map(String::as_str)).collect::<Vec<_>>().join(" ")
    }

    /// The first argument as a number (`SELECT 3`).
    pub fn first_argument_number(&self) -> Option<u32> {
        self.shown.first()?.parse().ok()
    }
}

/// Builds commands from the tokens of the client's writes.
#[derive(Debug, Default)]
pub struct CommandBuilder {
    current: Option<Building>,
}

#[derive(Debug)]
struct Building {
    command: Command,
    /// Arguments still to come, the name included.
    left: usize,
    budget_left: usize,
    secret: bool,
}

impl CommandBuilder {
    /// Takes the next token; returns the command it completed.
    pub fn token(&mut self, token: &Token<'_>) -> Result<Option<Command>, Lost> {
        match (&mut self.current, token) {
            (None, Token::Line { kind: b'*', text }) => match parse_length(text) {
                Some(count) if count > 0 => {
                    let command =
                        Command { name: String::new(), shown: Vec::new(), cut: false, arguments: count as usize };
                    self.current =
                        Some(Building { command, left: count as usize, budget_left: MAX_COMMAND, secret: false });
                    Ok(None)
                }
                // `*0` or `*-1` from a client: no command.
                Some(_) => Ok(None),
                None => Err(Lost::Malformed),
            },
            (None, Token::Line { kind, text }) if kind.is_ascii_alphabetic() => Ok(inline(*kind, text)),
            (Some(building), Token::Bulk { kind: b'$', kept, length }) => {
                building.argument(kept, *length);
                building.left -= 1;
                if building.left > 0 {
                    return Ok(None);
                }
                Ok(self.current.take().map(|b| b.command))
            }
            _ => {
                self.current = None;
                Err(Lost::Malformed)
            }
        }
    }

    /// Whether a command has begun and is not complete.
    pub fn in_progress(&self) -> bool {
        self.current.is_some()
    }

    /// Forgets a command in progress (its bytes were not all seen).
    pub fn reset(&mut self) {
        self.current = None;
    }
}

impl Building {
    fn argument(&mut self, kept: &[u8], length: usize) {
        if self.command.name.is_empty() {
            self.command.name = String::from_utf8_lossy(kept).to_ascii_uppercase();
            self.secret = SECRET_ARGUMENTS.contains(&self.command.name.as_str());
            return;
        }
        if self.command.cut {
            return;
        }
        if self.secret {
            self.command.shown.push("?".to_string());
            return;
        }
        let mut text = printable(kept);
        if length > MAX_ARGUMENT {
            text = cut_chars(&text, MAX_ARGUMENT) + "...";
        }
        let size = text.chars().count();
        if size > self.budget_left {
            text = cut_chars(&text, self.budget_left) + "...";
            self.command.cut = true;
        }
        self.budget_left = self.budget_left.saturating_sub(size);
        self.command.shown.push(text);
    }
}

/// A command typed as a line (`PING`, `SET k v`): space-separated, no quoting followed.
fn inline(first: u8, rest: &[u8]) -> Option<Command> {
    let mut line = vec![first];
    line.extend_from_slice(rest);
    let text = printable(&line);
    let mut words = text.split_ascii_whitespace();
    let name = words.next()?.to_ascii_uppercase();
    let secret = SECRET_ARGUMENTS.contains(&name.as_str());
    let shown: Vec<String> = words.map(|w| if secret { "?".to_string() } else { w.to_string() }).collect();
    Some(Command { arguments: shown.len() + 1, name, shown, cut: false })
}

/// Bytes as Python's `decode(errors="backslashreplace")` shows them.
fn printable(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for byte in chunk.invalid() {
            out.push_str(&format!("\\x{byte:02x}"));
        }
    }
    out
}

fn cut_chars(text: &str, chars: usize) -> String {
    text.chars().take(chars).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::integrations::redis::resp::RespReader;

    fn commands(wire: &[u8]) -> Vec<Command> {
        let mut reader = RespReader::new(KEPT_ARGUMENT_BYTES);
        let mut builder = CommandBuilder::default();
        let mut out = Vec::new();
        reader.feed(wire, 0, &mut |token| out.extend(builder.token(&token).unwrap())).unwrap();
        out
    }

    #[test]
    fn commands_read_as_dd_trace_py_shows_them() {
        let long = "v".repeat(150);
        let wire =
            format!("*3\r\n$3\r\nset\r\n$1\r\nk\r\n$150\r\n{long}\r\n*2\r\n$4\r\nAUTH\r\n$6\r\nsecret\r\nPING\r\n");
        let read = commands(wire.as_bytes());
        assert_eq!(read.len(), 3);
        assert_eq!(read[0].text(), format!("SET k {}...", "v".repeat(100)));
        assert_eq!(read[0].arguments, 3);
        assert_eq!(read[1].text(), "AUTH ?", "a secret is never kept");
        assert_eq!((read[2].name.as_str(), read[2].arguments), ("PING", 1));
    }

    #[test]
    fn the_thousand_character_budget_cuts_the_command() {
        let arg = "a".repeat(90);
        let mut wire = String::from("*13\r\n$4\r\nMSET\r\n");
        for _ in 0..12 {
            wire.push_str(&format!("$90\r\n{arg}\r\n"));
        }
        let read = commands(wire.as_bytes());
        let command = &read[0];
        assert!(command.cut);
        assert_eq!(command.arguments, 13);
        // 11 whole arguments (990 characters), then 10 of the 12th.
        assert_eq!(command.shown.len(), 12);
        assert_eq!(command.shown[11], format!("{}...", "a".repeat(10)));
    }

    #[test]
    fn bytes_that_are_not_text_are_escaped() {
        let read = commands(b"*2\r\n$3\r\nGET\r\n$3\r\nk\xff\x00\r\n");
        assert_eq!(read[0].text(), "GET k\\xff\u{0}");
    }
}
