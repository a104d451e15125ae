//! PostgreSQL as a wire protocol of the stream layer: every client (libpq and psycopg, pure
//! JavaScript, Go, Java drivers) gives a `postgres.query` span per query, as dd-trace-py's psycopg
//! integration shows it: service `postgres` (schema v0), resource the SQL obfuscated as the
//! Datadog agent does, the database, user and application from the startup message.
//!
//! A query is what one `ReadyForQuery` answers: a simple `Query`, or the extended protocol's
//! messages up to a `Sync` (`Parse`/`Bind`/`Execute`; named statements remembered from their
//! `Parse`, one prepared before the attach named by its statement name only). Its span starts with
//! its first message written and ends at the `ReadyForQuery`; `CommandComplete` gives
//! `db.row_count`, `ErrorResponse` the error (SQLSTATE and message). Batches without `Execute`
//! (a driver preparing a statement), the startup and a bare `BEGIN` (the driver's implicit
//! transaction start) give no span. `COPY` is one query. TLS: the
//! socket's `SSLRequest` is answered `S`, and the session's plaintext (from the TLS library probes)
//! is a stream of its own that starts with the startup message. Password messages are never read.
//!
//! What the capture cut: a query longer than it has its resource cut and `sql.truncated`; a
//! result larger than it (rows past the capture) ends at the `ReadyForQuery` when the last read
//! holds it whole, else at the last read before the client writes again.

mod wire;

use std::collections::{HashMap, VecDeque};

use wire::{MessageReader, PostgresFraming};

use crate::{
    config::SpanSchema,
    core::{ContextData, ContextError, ContextId, ContextTree, SpanKind},
    integrations::streams::{
        framing::Frame, ConnectionFacts, Direction, Moment, ProtocolConnection, Role, Segment, StreamServices,
        WireProtocol,
    },
    obfuscation::obfuscate_sql_for_dbms,
};

/// Bytes of a client message kept: the SQL of a query (the capture holds at most 4 kB of a write).
const KEPT_CLIENT_BYTES: usize = 8192;
/// Bytes of a server message kept: an error's fields, a command tag.
const KEPT_SERVER_BYTES: usize = 1024;
/// Named statements remembered per connection; past it, the oldest name is forgotten.
const MAX_STATEMENTS: usize = 512;
/// Queries waiting for their `ReadyForQuery` on one connection (a pipeline).
const MAX_PENDING: usize = 1024;
const POSTGRES_PORT: u16 = 5432;

/// PostgreSQL clients, spans named by `schema`.
pub struct PostgresProtocol {
    pub schema: SpanSchema,
}

impl WireProtocol for PostgresProtocol {
    fn name(&self) -> &'static str {
        "postgresql"
    }

    fn recognises(&self, segment: &Segment<'_>, facts: &ConnectionFacts) -> bool {
        if facts.role != Role::Client || segment.direction != Direction::Write {
            return false;
        }
        if wire::starts_first_message(segment.data) {
            return true;
        }
        // Mid-stream (a pooled connection open before the attach): a query on PostgreSQL's port
        // (a `Q` then four bytes is too little to tell otherwise), or on any port a whole query
        // message whose text is SQL.
        facts.adopted
            && (facts.peer.is_some_and(|p| p.port() == POSTGRES_PORT) && wire::starts_query(segment.data)
                || wire::starts_whole_query(segment.data))
    }

    fn open(&self, facts: &ConnectionFacts) -> Box<dyn ProtocolConnection> {
        Box::new(PostgresConnection {
            schema: self.schema,
            writes: MessageReader::new(PostgresFraming::new(!facts.adopted), KEPT_CLIENT_BYTES),
            reads: MessageReader::new(PostgresFraming::new(false), KEPT_SERVER_BYTES),
            startup: Startup::default(),
            statements: HashMap::new(),
            statement_order: VecDeque::new(),
            unnamed_statement: None,
            batch: None,
            pending: VecDeque::new(),
            awaiting_ssl_answer: false,
            encrypted: false,
            reply_unseen: None,
        })
    }
}

/// What the startup message said (unknown on a connection open before the attach).
#[derive(Debug, Default, Clone)]
struct Startup {
    user: Option<String>,
    database: Option<String>,
    application: Option<String>,
}

/// A statement's SQL and whether the capture cut it.
#[derive(Debug, Clone)]
struct Sql {
    text: String,
    cut: bool,
}

/// Extended-protocol messages written since the last `Sync`.
#[derive(Debug)]
struct Batch {
    started_ns: u64,
    sql: Option<Sql>,
    /// The statement `Bind` named when its SQL is unknown (prepared before the attach).
    unknown_statement: Option<String>,
    executes: bool,
}

/// A query waiting for its `ReadyForQuery`.
#[derive(Debug)]
struct Pending {
    /// `None`: no span (the startup, a batch that only prepares).
    id: Option<ContextId>,
    rows: Option<u64>,
    error: Option<ContextError>,
}

struct PostgresConnection {
    schema: SpanSchema,
    writes: MessageReader,
    reads: MessageReader,
    startup: Startup,
    statements: HashMap<Vec<u8>, Sql>,
    statement_order: VecDeque<Vec<u8>>,
    unnamed_statement: Option<Sql>,
    batch: Option<Batch>,
    pending: VecDeque<Pending>,
    /// An SSL or GSS encryption request was written: its answer is one byte, unframed.
    awaiting_ssl_answer: bool,
    /// The server accepted encryption: this stream now carries ciphertext (the plaintext is the
    /// TLS session's stream).
    encrypted: bool,
    /// A result is being read that the capture could not follow: the time of its last read.
    reply_unseen: Option<u64>,
}

impl ProtocolConnection for PostgresConnection {
    fn on_data(
        &mut self,
        segment: &Segment<'_>,
        facts: &ConnectionFacts,
        services: &mut StreamServices,
        contexts: &mut ContextTree,
    ) {
        if self.encrypted {
            return;
        }
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
            self.result_ended_unseen(last_read_ns, contexts);
        }
        for pending in self.pending.drain(..) {
            let error = pending.error.clone().or_else(|| {
                Some(ContextError {
                    kind: "ConnectionError".to_string(),
                    message: "the connection closed before the query completed".to_string(),
                })
            });
            end(pending, error, at.ktime_ns, contexts);
        }
    }
}

impl PostgresConnection {
    fn on_write(
        &mut self,
        segment: &Segment<'_>,
        uncaptured: usize,
        facts: &ConnectionFacts,
        services: &mut StreamServices,
        contexts: &mut ContextTree,
    ) {
        if let Some(last_read_ns) = self.reply_unseen.take() {
            self.result_ended_unseen(last_read_ns, contexts);
        }
        let mut messages = Vec::new();
        let fed = self.writes.feed(segment.data, uncaptured, &mut |message| messages.push(owned(&message)));
        for message in messages {
            self.client_message(&message, segment, facts, services, contexts);
        }
        if fed.is_err() {
            // What the capture cut cannot be counted: a batch in progress is lost, and what
            // waits cannot be paired with its answers any more.
            self.batch = None;
            self.writes.reset();
            self.reads.reset();
            for pending in self.pending.drain(..) {
                end(pending, Some(lost_error()), segment.ktime_ns, contexts);
            }
        }
    }

    fn client_message(
        &mut self,
        message: &OwnedMessage,
        segment: &Segment<'_>,
        facts: &ConnectionFacts,
        services: &mut StreamServices,
        contexts: &mut ContextTree,
    ) {
        let body = message.body.as_slice();
        let cut = message.length > body.len();
        match message.kind {
            0 => match wire::untyped_code(body) {
                Some(wire::PROTOCOL_3) => {
                    self.startup = parse_startup(&body[4..]);
                    // The startup ends with a ReadyForQuery too.
                    self.push(Pending { id: None, rows: None, error: None }, segment.ktime_ns, contexts);
                }
                Some(wire::SSL_REQUEST | wire::GSS_ENC_REQUEST) => self.awaiting_ssl_answer = true,
                _ => {}
            },
            b'Q' => {
                let sql = Sql { text: first_string(body), cut };
                let id = (!is_driver_begin(&sql.text)).then(|| {
                    let data = query_data(&sql, self.schema, &self.startup, facts);
                    services.start_client_call(segment.moment(), segment.ktime_ns, facts, data, contexts)
                });
                self.push(Pending { id, rows: None, error: None }, segment.ktime_ns, contexts);
            }
            b'P' => {
                let mut parts = wire::strings(body);
                let name = parts.next().unwrap_or_default().to_vec();
                let sql = Sql { text: String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned(), cut };
                self.remember(name, sql.clone());
                let batch = self.batch_at(segment.ktime_ns);
                batch.sql.get_or_insert(sql);
            }
            b'B' => {
                let mut parts = wire::strings(body);
                let _portal = parts.next();
                let name = parts.next().unwrap_or_default();
                let known =
                    if name.is_empty() { self.unnamed_statement.clone() } else { self.statements.get(name).cloned() };
                let name = String::from_utf8_lossy(name).into_owned();
                let batch = self.batch_at(segment.ktime_ns);
                if batch.sql.is_none() {
                    match known {
                        Some(sql) => batch.sql = Some(sql),
                        None => batch.unknown_statement = Some(name),
                    }
                }
            }
            b'E' => self.batch_at(segment.ktime_ns).executes = true,
            b'S' => {
                let Some(batch) = self.batch.take() else {
                    // A Sync alone still gets its ReadyForQuery.
                    self.push(Pending { id: None, rows: None, error: None }, segment.ktime_ns, contexts);
                    return;
                };
                let begins = batch.sql.as_ref().is_some_and(|sql| is_driver_begin(&sql.text));
                let id = (batch.executes && !begins).then(|| {
                    let data = match (&batch.sql, &batch.unknown_statement) {
                        (Some(sql), _) => query_data(sql, self.schema, &self.startup, facts),
                        (None, name) => unknown_statement_data(name.as_deref(), self.schema, &self.startup, facts),
                    };
                    services.start_client_call(segment.moment(), batch.started_ns, facts, data, contexts)
                });
                self.push(Pending { id, rows: None, error: None }, segment.ktime_ns, contexts);
            }
            // Close of a statement ('S'; a portal's is 'P').
            b'C' if body.first() == Some(&b'S') => {
                let name = wire::strings(&body[1..]).next().unwrap_or_default();
                self.statements.remove(name);
            }
            _ => {}
        }
    }

    fn batch_at(&mut self, ktime_ns: u64) -> &mut Batch {
        self.batch.get_or_insert(Batch { started_ns: ktime_ns, sql: None, unknown_statement: None, executes: false })
    }

    fn remember(&mut self, name: Vec<u8>, sql: Sql) {
        if name.is_empty() {
            self.unnamed_statement = Some(sql);
            return;
        }
        if self.statements.len() >= MAX_STATEMENTS {
            if let Some(oldest) = self.statement_order.pop_front() {
                self.statements.remove(&oldest);
            }
        }
        self.statement_order.push_back(name.clone());
        self.statements.insert(name, sql);
    }

    fn push(&mut self, pending: Pending, ktime_ns: u64, contexts: &mut ContextTree) {
        if self.pending.len() >= MAX_PENDING {
            if let Some(oldest) = self.pending.pop_front() {
                end(oldest, Some(lost_error()), ktime_ns, contexts);
            }
        }
        self.pending.push_back(pending);
    }

    fn on_read(&mut self, segment: &Segment<'_>, uncaptured: usize, contexts: &mut ContextTree) {
        let mut data = segment.data;
        if self.awaiting_ssl_answer {
            self.awaiting_ssl_answer = false;
            match data.first() {
                Some(b'S' | b'G') => {
                    self.encrypted = true;
                    return;
                }
                Some(b'N') => {
                    self.writes.framing.expect_untyped();
                    data = &data[1..];
                }
                _ => {}
            }
        }
        if let Some(last) = &mut self.reply_unseen {
            *last = segment.ktime_ns;
            // Found again: a last read held whole that ends with ReadyForQuery.
            if uncaptured == 0 && ends_with_ready_for_query(data) {
                self.reply_unseen = None;
                if let (Some(front), Some(tag)) = (self.pending.front_mut(), command_tag_before_ready(data)) {
                    front.rows = row_count(&tag).or(front.rows);
                }
                self.result_ended_unseen(segment.ktime_ns, contexts);
            }
            return;
        }
        let mut messages = Vec::new();
        let fed = self.reads.feed(data, uncaptured, &mut |message| messages.push(owned(&message)));
        for message in messages {
            self.server_message(&message, segment.ktime_ns, contexts);
        }
        if fed.is_err() {
            self.reads.reset();
            if !self.pending.is_empty() {
                self.reply_unseen = Some(segment.ktime_ns);
            }
        }
    }

    fn server_message(&mut self, message: &OwnedMessage, ktime_ns: u64, contexts: &mut ContextTree) {
        let body = message.body.as_slice();
        match message.kind {
            b'Z' => {
                if let Some(done) = self.pending.pop_front() {
                    let error = done.error.clone();
                    end(done, error, ktime_ns, contexts);
                }
            }
            b'C' => {
                if let Some(front) = self.pending.front_mut() {
                    front.rows = row_count(&first_string(body)).or(front.rows);
                }
            }
            b'E' => {
                if let Some(front) = self.pending.front_mut() {
                    front.error.get_or_insert_with(|| error_of(body));
                }
            }
            _ => {}
        }
    }

    /// The client writes again (or a last read ended with ReadyForQuery) after a result the
    /// capture could not follow: that query ended with the last read; what else waited cannot
    /// be told apart.
    fn result_ended_unseen(&mut self, last_read_ns: u64, contexts: &mut ContextTree) {
        if let Some(front) = self.pending.pop_front() {
            let error = front.error.clone();
            end(front, error, last_read_ns, contexts);
        }
        for lost in self.pending.drain(..) {
            end(lost, Some(lost_error()), last_read_ns, contexts);
        }
        self.reads.reset();
    }
}

/// A message with its kept body, owned (the reader lends its buffer only during the call).
struct OwnedMessage {
    kind: u8,
    body: Vec<u8>,
    length: usize,
}

fn owned(message: &Frame<'_>) -> OwnedMessage {
    OwnedMessage { kind: message.head.kind, body: message.body.to_vec(), length: message.head.length }
}

fn first_string(body: &[u8]) -> String {
    String::from_utf8_lossy(wire::strings(body).next().unwrap_or_default()).into_owned()
}

fn parse_startup(parameters: &[u8]) -> Startup {
    let mut startup = Startup::default();
    let mut strings = wire::strings(parameters);
    while let (Some(key), Some(value)) = (strings.next(), strings.next()) {
        let value = String::from_utf8_lossy(value).into_owned();
        match key {
            b"user" => startup.user = Some(value),
            b"database" => startup.database = Some(value),
            b"application_name" => startup.application = Some(value),
            _ => {}
        }
    }
    // Without a database, the server uses the user's name.
    if startup.database.is_none() {
        startup.database = startup.user.clone();
    }
    startup
}

/// `SELECT 5`, `INSERT 0 1`, `UPDATE 3`, `COPY 10`: the last number of the command tag.
fn row_count(tag: &str) -> Option<u64> {
    let mut words = tag.split_ascii_whitespace();
    let first = words.next()?;
    if !matches!(first, "SELECT" | "INSERT" | "UPDATE" | "DELETE" | "MERGE" | "COPY" | "FETCH" | "MOVE") {
        return None;
    }
    words.last()?.parse().ok()
}

/// An `ErrorResponse`: its SQLSTATE (`C`) as the type, its message (`M`).
fn error_of(body: &[u8]) -> ContextError {
    let (mut code, mut message) = (String::new(), String::new());
    for field in wire::strings(body) {
        match field.split_first() {
            Some((b'C', value)) => code = String::from_utf8_lossy(value).into_owned(),
            Some((b'M', value)) => message = String::from_utf8_lossy(value).into_owned(),
            _ => {}
        }
    }
    ContextError { kind: if code.is_empty() { "ErrorResponse".to_string() } else { code }, message }
}

/// `BEGIN` alone: what drivers (psycopg2, psycopg) send before the first statement of a
/// transaction when not in autocommit; dd-trace-py shows no span for it (an application that
/// runs a bare `BEGIN` itself loses that span too).
fn is_driver_begin(sql: &str) -> bool {
    sql.trim().trim_end_matches(';').eq_ignore_ascii_case("BEGIN")
}

fn is_sqlstate(code: &str) -> bool {
    code.len() == 5 && code.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
}

fn ends_with_ready_for_query(data: &[u8]) -> bool {
    data.len() >= 6 && matches!(&data[data.len() - 6..], [b'Z', 0, 0, 0, 5, b'I' | b'T' | b'E'])
}

/// The `CommandComplete` tag right before the final `ReadyForQuery` of `data`, if it is there
/// whole (the end of a result, read back from its last bytes).
fn command_tag_before_ready(data: &[u8]) -> Option<String> {
    let before = &data[..data.len().checked_sub(6)?];
    // 'C', a length, the tag and its NUL: the tag is at most a few dozen bytes.
    (6..=before.len().min(64)).find_map(|size| {
        let start = before.len() - size;
        let length = u32::from_be_bytes(before.get(start + 1..start + 5)?.try_into().ok()?) as usize;
        let whole = before[start] == b'C' && length + 1 == size && before.last() == Some(&0);
        whole.then(|| String::from_utf8_lossy(&before[start + 5..before.len() - 1]).into_owned())
    })
}

fn lost_error() -> ContextError {
    ContextError {
        kind: "postgres.Lost".to_string(),
        message: "the answer could not be told apart (bytes past the capture)".to_string(),
    }
}

/// The span of a query, tagged as dd-trace-py's psycopg integration tags it.
fn query_data(sql: &Sql, schema: SpanSchema, startup: &Startup, facts: &ConnectionFacts) -> ContextData {
    let mut data =
        base_data(schema, startup, facts).with_resource(obfuscate_sql_for_dbms(&sql.text, Some("postgresql")));
    if sql.cut {
        data = data.with_meta("sql.truncated", "true");
    }
    data
}

/// A statement prepared before the agent attached: its name is all there is.
fn unknown_statement_data(
    name: Option<&str>,
    schema: SpanSchema,
    startup: &Startup,
    facts: &ConnectionFacts,
) -> ContextData {
    let name = name.filter(|n| !n.is_empty()).unwrap_or("unnamed");
    base_data(schema, startup, facts)
        .with_resource(format!("EXECUTE {name} (statement prepared before ddtrace-agent attached)"))
}

fn base_data(schema: SpanSchema, startup: &Startup, facts: &ConnectionFacts) -> ContextData {
    // dd-trace-py's names: v0 `postgres.query` under the service `postgres`; v1
    // `postgresql.query` under the process's service.
    let mut data = match schema {
        SpanSchema::V0 => {
            ContextData::new("postgres.query", "postgres", "sql", SpanKind::Client).with_service("postgres")
        }
        SpanSchema::V1 => ContextData::new("postgresql.query", "postgres", "sql", SpanKind::Client),
    }
    .with_meta("db.system", "postgresql");
    for (key, value) in
        [("db.user", &startup.user), ("db.name", &startup.database), ("db.application", &startup.application)]
    {
        if let Some(value) = value {
            data = data.with_meta(key, value.clone());
        }
    }
    if let Some(peer) = facts.peer {
        let host = peer.ip().to_string();
        data = data.with_meta("out.host", host.clone()).with_meta("server.address", host);
        data.metrics.insert("network.destination.port".into(), f64::from(peer.port()));
    }
    data.metrics.insert("_dd.measured".into(), 1.0);
    data
}

fn end(pending: Pending, error: Option<ContextError>, ktime_ns: u64, contexts: &mut ContextTree) {
    let Some(id) = pending.id else { return };
    contexts.end_detached(id, ktime_ns, |data| {
        if let Some(rows) = pending.rows {
            data.metrics.insert("db.row_count".into(), rows as f64);
        }
        // A server's error: its SQLSTATE, as OpenTelemetry's database conventions name it.
        if let Some(error) = error.as_ref().filter(|e| is_sqlstate(&e.kind)) {
            data.meta.insert("db.response.status_code".into(), error.kind.clone());
        }
        data.error = error;
    });
}

#[cfg(test)]
mod tests;
