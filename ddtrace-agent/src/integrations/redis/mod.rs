//! Redis as a wire protocol of the stream layer: every client's commands (any language, any
//! driver: the bytes are RESP) and their replies, as dd-trace-py's redis integration shows them:
//! one `redis.command` span per command, or per pipeline (the commands a client wrote at once),
//! under the service `redis` (schema v0), its arguments obfuscated as the Datadog agent does.
//!
//! - [`resp`] reads RESP2 and RESP3 from the capture, payloads counted, not copied;
//! - [`command`] assembles commands and their text (`redis.raw_command`).
//!
//! Pairing: replies come in the order of the commands (pushes, RESP3's out-of-band messages, are
//! no reply). A pipeline's span ends with its last reply. A reply larger than the capture (an
//! `HGETALL` of thousands of fields) ends with the last read before the client writes again. When bytes the capture did not keep
//! fall in a command's framing (a pipeline longer than the capture, say), the commands waiting
//! are dropped (counted) and pairing starts anew at the next write that begins a command.
//! `AUTH` and `HELLO` arguments are never kept. What a driver sends on its own when it connects
//! (`HELLO`, `AUTH`, `CLIENT SETINFO`, `CLIENT SETNAME`, `SELECT`, `READONLY` before the first
//! other command) gives no span, as dd-trace-py shows none: only the application's commands.

mod command;
mod resp;

use std::collections::VecDeque;

use command::{Command, CommandBuilder, KEPT_ARGUMENT_BYTES};
use resp::{Nesting, RespReader, Token};

use crate::{
    config::SpanSchema,
    core::{ContextData, ContextError, ContextId, ContextTree, SpanKind},
    integrations::streams::{
        ConnectionFacts, Direction, Moment, ProtocolConnection, Role, Segment, StreamServices, WireProtocol,
    },
    obfuscation::obfuscate_redis,
};

/// Redis's port: recognises inline commands (`PING\r\n`), which any text protocol could start
/// with, where RESP arrays recognise themselves.
const REDIS_PORT: u16 = 6379;
/// Bytes of an error reply kept for the span's message.
const KEPT_ERROR_BYTES: usize = 256;
/// Commands waiting for their replies on one connection: past it, the oldest are dropped.
const MAX_PENDING: usize = 1024;
/// What drivers send when they connect, before the application's first command.
const CONNECTION_SETUP: [&str; 5] = ["HELLO", "AUTH", "CLIENT", "SELECT", "READONLY"];

/// Commands whose `db.row_count` dd-trace-py reports.
const ROW_COUNT_COMMANDS: [&str; 16] = [
    "GET",
    "GETDEL",
    "GETEX",
    "GETRANGE",
    "GETSET",
    "LINDEX",
    "LRANGE",
    "RPOP",
    "LPOP",
    "HGET",
    "HGETALL",
    "HKEYS",
    "HMGET",
    "HRANDFIELD",
    "HVALS",
    "MGET",
];

/// Redis clients: RESP arrays of bulk strings written on a connection the process opened.
/// Redis clients, spans named by `schema`.
pub struct RedisProtocol {
    pub schema: SpanSchema,
}

impl WireProtocol for RedisProtocol {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn recognises(&self, segment: &Segment<'_>, facts: &ConnectionFacts) -> bool {
        if facts.role != Role::Client || segment.direction != Direction::Write {
            return false;
        }
        starts_resp_command(segment.data)
            || (facts.peer.is_some_and(|p| p.port() == REDIS_PORT) && starts_inline_command(segment.data))
    }

    fn open(&self, facts: &ConnectionFacts) -> Box<dyn ProtocolConnection> {
        Box::new(RedisConnection {
            schema: self.schema,
            writes: RespReader::new(KEPT_ARGUMENT_BYTES),
            commands: CommandBuilder::default(),
            reads: RespReader::new(KEPT_ERROR_BYTES),
            nesting: Nesting::default(),
            pending: VecDeque::new(),
            // A new connection starts on database 0; one open before the attach, who knows.
            database: (!facts.adopted).then_some(0),
            written: Vec::new(),
            setting_up: !facts.adopted,
            reply_unseen: None,
            command_started: None,
        })
    }
}

/// `*<n>\r\n$`: an array of bulk strings, what every client library writes.
fn starts_resp_command(data: &[u8]) -> bool {
    let Some(rest) = data.strip_prefix(b"*") else { return false };
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    digits > 0 && rest[digits..].starts_with(b"\r\n$")
}

/// A printable line starting with a letter, that is not an HTTP request line.
fn starts_inline_command(data: &[u8]) -> bool {
    let line = data.split(|b| *b == b'\n').next().unwrap_or_default();
    data.len() > line.len()
        && line.first().is_some_and(u8::is_ascii_alphabetic)
        && line.iter().all(|b| (0x20..0x7f).contains(b) || *b == b'\r')
        && !line.windows(6).any(|w| w == b" HTTP/")
}

/// Commands written together (one, or a pipeline), their span open until their last reply.
#[derive(Debug)]
struct Pending {
    /// `None`: the driver's own connection set-up, which has no span.
    id: Option<ContextId>,
    commands: Vec<Command>,
    /// Replies still to come.
    replies_left: usize,
    /// The first error reply among theirs.
    error: Option<String>,
    /// The reply's rows, for the commands dd-trace-py counts them for.
    rows: Option<u64>,
}

struct RedisConnection {
    schema: SpanSchema,
    writes: RespReader,
    commands: CommandBuilder,
    reads: RespReader,
    nesting: Nesting,
    pending: VecDeque<Pending>,
    /// The database selected (`SELECT`), when known.
    database: Option<u32>,
    /// Commands completed by the current write (a buffer kept for its capacity).
    written: Vec<Command>,
    /// No command but the driver's connection set-up written yet.
    setting_up: bool,
    /// A reply is being read that the capture could not follow (larger than it): the time of
    /// its last read so far.
    reply_unseen: Option<u64>,
    /// When the command being written started (its first write).
    command_started: Option<u64>,
}

impl ProtocolConnection for RedisConnection {
    fn on_data(
        &mut self,
        segment: &Segment<'_>,
        facts: &ConnectionFacts,
        services: &mut StreamServices,
        contexts: &mut ContextTree,
    ) {
        let uncaptured = segment.length.saturating_sub(segment.data.len());
        match segment.direction {
            Direction::Write => self.on_write(segment, uncaptured, facts, services, contexts),
            Direction::Read => self.on_read(segment, uncaptured, contexts),
        }
    }

    fn on_close(
        &mut self,
        at: Moment,
        _facts: &ConnectionFacts,
        _services: &mut StreamServices,
        contexts: &mut ContextTree,
    ) {
        // A response the capture could not follow ended before the close, with its last read.
        if let Some(last_read_ns) = self.reply_unseen.take() {
            self.reply_ended_unseen(last_read_ns, contexts);
        }
        for pending in self.pending.drain(..) {
            let error = ContextError {
                kind: "redis.exceptions.ConnectionError".to_string(),
                message: "the connection closed before the reply".to_string(),
            };
            end(pending, Some(error), at.ktime_ns, self.database, contexts);
        }
    }
}

impl RedisConnection {
    fn on_write(
        &mut self,
        segment: &Segment<'_>,
        uncaptured: usize,
        facts: &ConnectionFacts,
        services: &mut StreamServices,
        contexts: &mut ContextTree,
    ) {
        if let Some(last_read_ns) = self.reply_unseen.take() {
            self.reply_ended_unseen(last_read_ns, contexts);
        }
        // A command written in several calls (a large value) started with the first.
        let started = *self.command_started.get_or_insert(segment.ktime_ns);
        let (commands, written) = (&mut self.commands, &mut self.written);
        let mut malformed = false;
        let fed = self.writes.feed(segment.data, uncaptured, &mut |token| match commands.token(&token) {
            Ok(Some(command)) => written.push(command),
            Ok(None) => {}
            Err(_) => malformed = true,
        });
        if fed.is_err() || malformed {
            // What was cut cannot be counted: neither can the replies. Start anew at the next
            // write, and drop what waits (its replies would be misread).
            self.writes.reset();
            self.commands.reset();
            self.reads.reset();
            self.nesting.reset();
            self.written.clear();
            self.command_started = None;
            for pending in self.pending.drain(..) {
                if let Some(id) = pending.id {
                    contexts.end_detached(id, segment.ktime_ns, |data| data.error = Some(lost_error()));
                }
            }
            return;
        }
        // The next command starts with the next write, unless this one ended inside it.
        let in_progress = !self.writes.at_boundary() || self.commands.in_progress();
        self.command_started = in_progress.then_some(segment.ktime_ns);
        if self.written.is_empty() {
            if self.command_started.is_some() {
                self.command_started = Some(started);
            }
            return;
        }
        let commands = std::mem::take(&mut self.written);
        let replies_left = commands.len();
        let at = segment.moment();
        self.setting_up &= commands.iter().all(|c| CONNECTION_SETUP.contains(&c.name.as_str()));
        let id = (!self.setting_up).then(|| {
            let data = command_data(&commands, self.schema, facts);
            services.start_client_call(at, started, facts, data, contexts)
        });
        if self.pending.len() >= MAX_PENDING {
            if let Some(id) = self.pending.pop_front().and_then(|oldest| oldest.id) {
                contexts.end_detached(id, started, |data| data.error = Some(lost_error()));
            }
        }
        self.pending.push_back(Pending { id, commands, replies_left, error: None, rows: None });
    }

    fn on_read(&mut self, segment: &Segment<'_>, uncaptured: usize, contexts: &mut ContextTree) {
        if let Some(last) = &mut self.reply_unseen {
            // Inside a reply larger than the capture: it lasts until the client writes again.
            *last = segment.ktime_ns;
            return;
        }
        if self.pending.is_empty() && self.reads.at_boundary() && self.nesting.depth() == 0 {
            // Nothing asked: a push (pub/sub) or what follows a loss; not followed.
            return;
        }
        let mut replies = Vec::new();
        let nesting = &mut self.nesting;
        // Per reply: (error text, rows), collected while the reader lends its buffer.
        let mut error: Option<String> = None;
        let mut rows = RowCount::default();
        let mut broken = false;
        let fed = self.reads.feed(segment.data, uncaptured, &mut |token| {
            if broken {
                return;
            }
            let top = nesting.depth();
            if let Token::Line { kind: b'-', text } | Token::Bulk { kind: b'!', kept: text, .. } = &token {
                error.get_or_insert_with(|| String::from_utf8_lossy(text).into_owned());
            }
            if let Token::Line { kind, .. } = &token {
                if !resp::is_reply_type(*kind) {
                    broken = true;
                    return;
                }
            }
            rows.element(&token, top);
            match nesting.element(&token) {
                Ok(true) => {
                    // A push is no reply.
                    if !rows.is_push {
                        replies.push((error.take(), rows.total()));
                    }
                    error = None;
                    rows = RowCount::default();
                }
                Ok(false) => {}
                Err(_) => broken = true,
            }
        });
        for (error, rows) in replies {
            self.reply(error, rows, segment.ktime_ns, contexts);
        }
        if fed.is_err() || broken {
            self.reads.reset();
            self.nesting.reset();
            if !self.pending.is_empty() {
                self.reply_unseen = Some(segment.ktime_ns);
            }
        }
    }

    /// The client writes again after a reply the capture could not follow to its end: that
    /// reply ended with the last read before; what else waited cannot be told apart.
    fn reply_ended_unseen(&mut self, last_read_ns: u64, contexts: &mut ContextTree) {
        if let Some(front) = self.pending.pop_front() {
            let error = front
                .error
                .clone()
                .map(|message| ContextError { kind: "redis.exceptions.ResponseError".to_string(), message });
            end(front, error, last_read_ns, self.database, contexts);
        }
        for lost in self.pending.drain(..) {
            if let Some(id) = lost.id {
                contexts.end_detached(id, last_read_ns, |data| data.error = Some(lost_error()));
            }
        }
    }

    /// One reply: it answers the oldest command waiting.
    fn reply(&mut self, error: Option<String>, rows: u64, ktime_ns: u64, contexts: &mut ContextTree) {
        let Some(front) = self.pending.front_mut() else { return };
        let answered = front.commands.len() - front.replies_left;
        if let Some(command) = front.commands.get(answered) {
            if command.name == "SELECT" && error.is_none() {
                self.database = command.first_argument_number().or(self.database);
            }
            if front.commands.len() == 1 && ROW_COUNT_COMMANDS.contains(&command.name.as_str()) {
                front.rows = Some(if error.is_some() {
                    0
                } else if command.name == "MGET" {
                    rows
                } else {
                    rows.min(1)
                });
            }
        }
        if front.error.is_none() {
            front.error = error;
        }
        front.replies_left -= 1;
        if front.replies_left == 0 {
            let done = self.pending.pop_front().expect("front exists");
            let error = done
                .error
                .clone()
                .map(|message| ContextError { kind: "redis.exceptions.ResponseError".to_string(), message });
            end(done, error, ktime_ns, self.database, contexts);
        }
    }
}

/// What a reply holds, as dd-trace-py counts rows: a non-empty value is one, an array (MGET) its
/// non-empty elements.
#[derive(Debug, Default)]
struct RowCount {
    started: bool,
    is_push: bool,
    scalar_non_empty: bool,
    elements_non_empty: u64,
}

impl RowCount {
    fn element(&mut self, token: &Token<'_>, depth: usize) {
        let non_empty = match token {
            Token::Bulk { length, .. } => *length > 0,
            Token::Line { kind: b'*' | b'~' | b'%', text } => resp::parse_length(text).is_some_and(|n| n > 0),
            Token::Line { kind: b'_' | b'-', .. } => false,
            Token::Line { kind: b'$', .. } => false,
            Token::Line { text, .. } => !text.is_empty(),
        };
        if !self.started {
            self.started = true;
            self.is_push = matches!(token, Token::Line { kind: b'>', .. });
            self.scalar_non_empty = non_empty;
            return;
        }
        if depth == 1 && non_empty {
            self.elements_non_empty += 1;
        }
    }

    fn total(&self) -> u64 {
        if self.elements_non_empty > 0 {
            self.elements_non_empty
        } else {
            u64::from(self.scalar_non_empty)
        }
    }
}

fn lost_error() -> ContextError {
    ContextError {
        kind: "redis.Lost".to_string(),
        message: "the reply could not be told apart (bytes past the capture)".to_string(),
    }
}

/// The span of commands written together, as dd-trace-py's redis integration tags it.
fn command_data(commands: &[Command], schema: SpanSchema, facts: &ConnectionFacts) -> ContextData {
    // redis-py wraps a transaction's pipeline in MULTI ... EXEC itself; dd-trace-py shows the
    // commands the application queued.
    let shown: &[Command] = match commands {
        [first, middle @ .., last] if commands.len() > 2 && first.name == "MULTI" && last.name == "EXEC" => middle,
        all => all,
    };
    let resource = shown.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join("\n");
    let raw = shown.iter().map(Command::text).collect::<Vec<_>>().join("\n");
    // v0: the service `redis` and `redis.raw_command`; v1: the process's service, and the
    // command's tag is `redis.command`.
    let (service, raw_key) = match schema {
        SpanSchema::V0 => (Some("redis"), "redis.raw_command"),
        SpanSchema::V1 => (None, "redis.command"),
    };
    let mut data = ContextData::new("redis.command", "redis", "redis", SpanKind::Client)
        .with_resource(resource)
        .with_meta("db.system", "redis")
        .with_meta(raw_key, obfuscate_redis(&raw));
    data.integration_service = service;
    if let Some(peer) = facts.peer {
        let host = peer.ip().to_string();
        data = data.with_meta("out.host", host.clone()).with_meta("server.address", host);
        data.metrics.insert("network.destination.port".into(), f64::from(peer.port()));
    }
    if commands.len() > 1 {
        data.metrics.insert("redis.pipeline_length".into(), shown.len() as f64);
    } else if let Some(command) = commands.first() {
        data.metrics.insert("redis.args_length".into(), command.arguments as f64);
    }
    data.metrics.insert("_dd.measured".into(), 1.0);
    data
}

fn end(
    pending: Pending,
    error: Option<ContextError>,
    ktime_ns: u64,
    database: Option<u32>,
    contexts: &mut ContextTree,
) {
    let Some(id) = pending.id else { return };
    contexts.end_detached(id, ktime_ns, |data| {
        if let Some(database) = database {
            data.metrics.insert("out.redis_db".into(), f64::from(database));
        }
        if let Some(rows) = pending.rows {
            data.metrics.insert("db.row_count".into(), rows as f64);
        }
        data.error = error;
    });
}

#[cfg(test)]
mod tests;
