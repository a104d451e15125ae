//! MySQL and MariaDB as a wire protocol of the stream layer: every client (libmysqlclient,
//! PyMySQL, mysql2 for Node, Go and Java drivers), over TCP or a Unix domain socket, gives a
//! `mysql.query` span per query, as dd-trace-py's MySQL integrations show it: service `mysql`
//! (schema v0), resource the SQL obfuscated as the Datadog agent does, the user and database from
//! the handshake (`COM_INIT_DB` changes the database).
//!
//! A command and its response: `COM_QUERY` (with multi-statements, every result set up to the
//! last), `COM_STMT_EXECUTE` (named by the SQL of its `COM_STMT_PREPARE`, remembered by statement
//! id; a statement prepared before the attach by its id only). Responses end at an OK or ERR, or
//! at the end of the last result set; EOF packets are told apart from OK packets by their size,
//! so it works whether or not the client deprecated EOF. A prepare alone, the handshake and
//! `COM_INIT_DB` give no span. ERR is the error (its code as the type, the server's message);
//! OK's affected rows, or the rows of a result set, are `db.row_count`. The handshake's
//! authentication data is never read; a client that asks for TLS leaves the socket to the TLS
//! session's plaintext.

mod wire;

use std::collections::{HashMap, VecDeque};

use wire::{MysqlFraming, PacketReader, MAX_PAYLOAD, SERVER_MORE_RESULTS_EXISTS};

use crate::{
    config::SpanSchema,
    core::{ContextData, ContextError, ContextId, ContextTree, SpanKind},
    integrations::streams::{
        framing::Frame, ConnectionFacts, Direction, Moment, ProtocolConnection, Role, Segment, StreamServices,
        WireProtocol,
    },
    obfuscation::obfuscate_sql_for_dbms,
};

/// Bytes of a client packet kept: the SQL of a query.
const KEPT_CLIENT_BYTES: usize = 8192;
/// Bytes of a server packet kept: an error's message, an OK's counts.
const KEPT_SERVER_BYTES: usize = 512;
const MAX_STATEMENTS: usize = 512;
const MYSQL_PORT: u16 = 3306;

/// MySQL and MariaDB clients, spans named by `schema`.
pub struct MysqlProtocol {
    pub schema: SpanSchema,
}

impl WireProtocol for MysqlProtocol {
    fn name(&self) -> &'static str {
        "mysql"
    }

    fn recognises(&self, segment: &Segment<'_>, facts: &ConnectionFacts) -> bool {
        if facts.role != Role::Client {
            return false;
        }
        match segment.direction {
            // The server speaks first.
            Direction::Read => !facts.adopted && wire::starts_greeting(segment.data),
            // Mid-stream: a command, on MySQL's port or a Unix socket (no peer), or on any port a
            // whole command packet whose text is SQL.
            Direction::Write => {
                facts.adopted
                    && (facts.peer.is_none_or(|p| p.port() == MYSQL_PORT) && wire::starts_command(segment.data)
                        || wire::is_whole_command(segment.data))
            }
        }
    }

    fn open(&self, facts: &ConnectionFacts) -> Box<dyn ProtocolConnection> {
        Box::new(MysqlConnection {
            schema: self.schema,
            writes: PacketReader::new(MysqlFraming, KEPT_CLIENT_BYTES),
            reads: PacketReader::new(MysqlFraming, KEPT_SERVER_BYTES),
            phase: if facts.adopted { Phase::Commands } else { Phase::Greeting },
            user: None,
            database: None,
            statements: HashMap::new(),
            statement_order: VecDeque::new(),
            pending: VecDeque::new(),
            reply_unseen: None,
            continuing_write: false,
            continuing_read: false,
            deprecate_eof: false,
            server_capabilities: 0,
        })
    }
}

/// Where the connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Before the server's greeting.
    Greeting,
    /// Authentication, until the server's OK (or ERR).
    Handshake,
    Commands,
    /// The client asked for TLS: this stream now carries ciphertext.
    Encrypted,
}

/// A command waiting for (the rest of) its response.
#[derive(Debug)]
struct Pending {
    /// `None`: no span (a prepare, `COM_INIT_DB`, the handshake).
    id: Option<ContextId>,
    what: Expecting,
    /// For a prepare: the SQL to name its statement id with.
    prepared_sql: Option<String>,
    /// For `COM_INIT_DB`: the database it selects.
    database: Option<String>,
    rows: Option<u64>,
    error: Option<ContextError>,
}

/// What the rest of a response holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expecting {
    /// Its first packet: OK, ERR, or a result set's column count.
    First,
    /// Column definitions still to come.
    Columns(u64),
    /// The column definitions are over: an EOF (if the client kept EOF), a row, or the end.
    AfterColumns,
    /// Rows, until EOF or OK.
    Rows,
    /// A prepare's answer: parameter and column definitions to skip.
    Definitions(u64),
}

struct MysqlConnection {
    schema: SpanSchema,
    writes: PacketReader,
    reads: PacketReader,
    phase: Phase,
    user: Option<String>,
    database: Option<String>,
    /// Prepared statements by id: their SQL.
    statements: HashMap<u32, String>,
    statement_order: VecDeque<u32>,
    pending: VecDeque<Pending>,
    /// A response is being read that the capture could not follow: the time of its last read.
    reply_unseen: Option<u64>,
    /// The last packet of each direction was of the largest size: the next continues it.
    continuing_write: bool,
    continuing_read: bool,
    /// Both ends deprecated EOF packets (from the handshake; assumed not on a connection open
    /// before the attach).
    deprecate_eof: bool,
    /// The server's capabilities, from its greeting.
    server_capabilities: u32,
}

impl ProtocolConnection for MysqlConnection {
    fn on_data(
        &mut self,
        segment: &Segment<'_>,
        facts: &ConnectionFacts,
        services: &mut StreamServices,
        contexts: &mut ContextTree,
    ) {
        if self.phase == Phase::Encrypted {
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
            self.response_ended_unseen(last_read_ns, contexts);
        }
        for pending in self.pending.drain(..) {
            let error = pending.error.clone().or_else(|| {
                Some(ContextError {
                    kind: "ConnectionError".to_string(),
                    message: "the connection closed before the response".to_string(),
                })
            });
            end(pending, error, at.ktime_ns, contexts);
        }
    }
}

/// A packet with its kept payload, owned (the reader lends its buffer only during the call).
struct Packet {
    sequence: u8,
    payload: Vec<u8>,
    length: usize,
}

fn owned(frame: &Frame<'_>) -> Packet {
    Packet { sequence: frame.head.sequence, payload: frame.body.to_vec(), length: frame.head.length }
}

impl MysqlConnection {
    fn on_write(
        &mut self,
        segment: &Segment<'_>,
        uncaptured: usize,
        facts: &ConnectionFacts,
        services: &mut StreamServices,
        contexts: &mut ContextTree,
    ) {
        if let Some(last_read_ns) = self.reply_unseen.take() {
            self.response_ended_unseen(last_read_ns, contexts);
        }
        let mut packets = Vec::new();
        let fed = self.writes.feed(segment.data, uncaptured, &mut |frame| packets.push(owned(&frame)));
        for packet in packets {
            let continues = std::mem::replace(&mut self.continuing_write, packet.length == MAX_PAYLOAD);
            if !continues {
                self.client_packet(&packet, segment, facts, services, contexts);
            }
        }
        if fed.is_err() {
            self.writes.reset();
            self.reads.reset();
            for pending in self.pending.drain(..) {
                end(pending, Some(lost_error()), segment.ktime_ns, contexts);
            }
        }
    }

    fn client_packet(
        &mut self,
        packet: &Packet,
        segment: &Segment<'_>,
        facts: &ConnectionFacts,
        services: &mut StreamServices,
        contexts: &mut ContextTree,
    ) {
        let payload = packet.payload.as_slice();
        if self.phase == Phase::Handshake {
            if packet.sequence == 1 {
                let response = wire::handshake_response(payload);
                if response.capabilities & wire::CLIENT_SSL != 0 && packet.length <= 32 {
                    // An SSL request: the handshake goes on inside TLS.
                    self.phase = Phase::Encrypted;
                    return;
                }
                self.user = response.user;
                self.database = response.database;
                let both = response.capabilities & self.server_capabilities;
                self.deprecate_eof = both & wire::CLIENT_DEPRECATE_EOF != 0;
            }
            // Authentication data (responses to an auth switch): never read.
            return;
        }
        if self.phase != Phase::Commands || packet.sequence != 0 {
            return;
        }
        let Some((&command, argument)) = payload.split_first() else { return };
        let cut = packet.length > payload.len();
        let pending = |id, what| Pending { id, what, prepared_sql: None, database: None, rows: None, error: None };
        match command {
            wire::COM_QUERY => {
                let sql = String::from_utf8_lossy(argument).into_owned();
                let data = query_data(&sql, cut, self, facts);
                let id = services.start_client_call(segment.moment(), segment.ktime_ns, facts, data, contexts);
                self.pending.push_back(pending(Some(id), Expecting::First));
            }
            wire::COM_STMT_PREPARE => {
                let mut prepare = pending(None, Expecting::First);
                prepare.prepared_sql = Some(String::from_utf8_lossy(argument).into_owned());
                self.pending.push_back(prepare);
            }
            wire::COM_STMT_EXECUTE => {
                let id = argument.get(..4).map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
                let data = match self.statements.get(&id).cloned() {
                    Some(sql) => query_data(&sql, false, self, facts),
                    None => base_data(self, facts)
                        .with_resource(format!("EXECUTE {id} (statement prepared before ddtrace-agent attached)")),
                };
                let span =
                    services.start_client_call(segment.moment(), segment.ktime_ns, facts, data, contexts);
                self.pending.push_back(pending(Some(span), Expecting::First));
            }
            wire::COM_INIT_DB => {
                let mut init = pending(None, Expecting::First);
                init.database = Some(String::from_utf8_lossy(argument).into_owned());
                self.pending.push_back(init);
            }
            wire::COM_STMT_CLOSE => {
                if let Some(b) = argument.get(..4) {
                    self.statements.remove(&u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
                }
            }
            // No response: COM_QUIT, COM_STMT_SEND_LONG_DATA.
            wire::COM_QUIT | wire::COM_STMT_SEND_LONG_DATA => {}
            // Others (ping, statistics, reset...) have a response and no span.
            _ => self.pending.push_back(pending(None, Expecting::First)),
        }
    }

    fn on_read(&mut self, segment: &Segment<'_>, uncaptured: usize, contexts: &mut ContextTree) {
        if let Some(last) = &mut self.reply_unseen {
            *last = segment.ktime_ns;
            return;
        }
        if self.phase == Phase::Commands && self.pending.is_empty() && self.reads.at_boundary() {
            // Nothing asked (a server's notice before it closes, or what follows a loss).
            return;
        }
        let mut packets = Vec::new();
        let fed = self.reads.feed(segment.data, uncaptured, &mut |frame| packets.push(owned(&frame)));
        for packet in packets {
            let continues = std::mem::replace(&mut self.continuing_read, packet.length == MAX_PAYLOAD);
            if !continues {
                self.server_packet(&packet, segment.ktime_ns, contexts);
            }
        }
        if fed.is_err() {
            self.reads.reset();
            if !self.pending.is_empty() {
                self.reply_unseen = Some(segment.ktime_ns);
            }
        }
    }

    fn server_packet(&mut self, packet: &Packet, ktime_ns: u64, contexts: &mut ContextTree) {
        let payload = packet.payload.as_slice();
        let header = payload.first().copied().unwrap_or(0);
        match self.phase {
            Phase::Greeting => {
                self.server_capabilities = wire::greeting_capabilities(payload);
                self.phase = Phase::Handshake;
                return;
            }
            Phase::Handshake => {
                // OK or ERR ends the handshake; anything else is authentication going on.
                if matches!(header, 0x00 | 0xFF) {
                    self.phase = Phase::Commands;
                }
                return;
            }
            Phase::Commands => {}
            Phase::Encrypted => return,
        }
        let deprecate_eof = self.deprecate_eof;
        let Some(front) = self.pending.front_mut() else { return };
        let is_error = header == 0xFF;
        if is_error {
            let (code, message) = wire::err_packet(payload);
            front.error.get_or_insert(ContextError { kind: code.to_string(), message });
        }
        // A packet that ends a result set (EOF, or OK with an EOF header): its status says
        // whether another result set follows.
        let ends_result = |length: usize| {
            let status = if length == 5 { wire::eof_status(payload) } else { wire::ok_packet(payload).map(|(_, s)| s) };
            status.unwrap_or(0) & SERVER_MORE_RESULTS_EXISTS != 0
        };
        let mut prepared = None;
        let done = match front.what {
            _ if is_error => true,
            Expecting::First => match header {
                0x00 if front.prepared_sql.is_some() => {
                    // COM_STMT_PREPARE_OK: statement id, columns, parameters; then their
                    // definitions, each group closed by an EOF unless the client deprecated EOF.
                    let id = payload.get(1..5).map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
                    let columns = payload.get(5..7).map_or(0, |b| u64::from(u16::from_le_bytes([b[0], b[1]])));
                    let parameters = payload.get(7..9).map_or(0, |b| u64::from(u16::from_le_bytes([b[0], b[1]])));
                    let eofs = if deprecate_eof { 0 } else { u64::from(columns > 0) + u64::from(parameters > 0) };
                    prepared = front.prepared_sql.take().map(|sql| (id, sql));
                    let definitions = columns + parameters + eofs;
                    front.what = Expecting::Definitions(definitions);
                    definitions == 0
                }
                0x00 => {
                    let (affected, status) = wire::ok_packet(payload).unwrap_or((0, 0));
                    front.rows = Some(front.rows.unwrap_or(0) + affected);
                    if let Some(database) = front.database.take() {
                        self.database = Some(database);
                    }
                    status & SERVER_MORE_RESULTS_EXISTS == 0
                }
                // LOCAL INFILE: the client sends a file; not followed.
                0xFB => true,
                _ => {
                    let columns = wire::length_encoded(payload).map_or(0, |(n, _)| n);
                    front.what = if columns == 0 { Expecting::AfterColumns } else { Expecting::Columns(columns) };
                    false
                }
            },
            Expecting::Columns(left) => {
                front.what = if left > 1 { Expecting::Columns(left - 1) } else { Expecting::AfterColumns };
                false
            }
            Expecting::Definitions(left) => {
                front.what = Expecting::Definitions(left.saturating_sub(1));
                left <= 1
            }
            // Told apart by size, so it works whatever the client negotiated: the EOF closing the
            // column definitions is 5 bytes, the OK closing an empty result (EOF deprecated) 7+.
            Expecting::AfterColumns if header == 0xFE && packet.length == 5 => {
                front.what = Expecting::Rows;
                false
            }
            Expecting::AfterColumns | Expecting::Rows if header == 0xFE && packet.length < MAX_PAYLOAD => {
                front.rows.get_or_insert(0);
                let more = ends_result(packet.length);
                if more {
                    front.what = Expecting::First;
                }
                !more
            }
            Expecting::AfterColumns | Expecting::Rows => {
                front.what = Expecting::Rows;
                front.rows = Some(front.rows.unwrap_or(0) + 1);
                false
            }
        };
        if let Some((id, sql)) = prepared {
            self.remember(id, sql);
        }
        if done {
            let finished = self.pending.pop_front().expect("front exists");
            let error = finished.error.clone();
            end(finished, error, ktime_ns, contexts);
        }
    }

    fn remember(&mut self, id: u32, sql: String) {
        if self.statements.len() >= MAX_STATEMENTS {
            if let Some(oldest) = self.statement_order.pop_front() {
                self.statements.remove(&oldest);
            }
        }
        self.statement_order.push_back(id);
        self.statements.insert(id, sql);
    }

    /// The client writes again after a response the capture could not follow: that response
    /// ended with the last read; what else waited cannot be told apart.
    fn response_ended_unseen(&mut self, last_read_ns: u64, contexts: &mut ContextTree) {
        if let Some(front) = self.pending.pop_front() {
            let error = front.error.clone();
            end(Pending { rows: None, ..front }, error, last_read_ns, contexts);
        }
        for lost in self.pending.drain(..) {
            end(lost, Some(lost_error()), last_read_ns, contexts);
        }
        self.reads.reset();
        self.continuing_read = false;
    }
}

fn lost_error() -> ContextError {
    ContextError {
        kind: "mysql.Lost".to_string(),
        message: "the response could not be told apart (bytes past the capture)".to_string(),
    }
}

fn query_data(sql: &str, cut: bool, connection: &MysqlConnection, facts: &ConnectionFacts) -> ContextData {
    let mut data = base_data(connection, facts).with_resource(obfuscate_sql_for_dbms(sql, Some("mysql")));
    if cut {
        data = data.with_meta("sql.truncated", "true");
    }
    data
}

/// A query's span as dd-trace-py's MySQL integrations tag it.
fn base_data(connection: &MysqlConnection, facts: &ConnectionFacts) -> ContextData {
    let mut data = ContextData::new("mysql.query", "mysql", "sql", SpanKind::Client).with_meta("db.system", "mysql");
    // v0: the integration's own service; v1: the process's.
    if connection.schema == SpanSchema::V0 {
        data = data.with_service("mysql");
    }
    for (key, value) in [("db.user", &connection.user), ("db.name", &connection.database)] {
        if let Some(value) = value {
            data = data.with_meta(key, value.clone());
        }
    }
    match facts.peer {
        Some(peer) => {
            let host = peer.ip().to_string();
            data = data.with_meta("out.host", host.clone()).with_meta("server.address", host);
            data.metrics.insert("network.destination.port".into(), f64::from(peer.port()));
        }
        // A Unix domain socket: the server is this host.
        None => data = data.with_meta("out.host", "localhost").with_meta("server.address", "localhost"),
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
        if let Some(error) = error.as_ref().filter(|e| e.kind.parse::<u16>().is_ok()) {
            data.meta.insert("db.response.status_code".into(), error.kind.clone());
        }
        data.error = error;
    });
}

#[cfg(test)]
mod tests;
