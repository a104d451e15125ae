//! PostgreSQL through the stream layer, as socket activity: a client (process 9) connected to
//! 127.0.0.1:5432.

use std::sync::{Arc, Mutex};

use super::{wire, PostgresProtocol};
use crate::{
    config::SpanSchema,
    core::{test_support::tree_recording_ends, ContextTree, ExecutionContext, SpanKind},
    integrations::streams::StreamLayer,
    probes::{SocketActivity, SocketOp},
};

struct Client {
    layer: StreamLayer,
    contexts: ContextTree,
    ended: Arc<Mutex<Vec<ExecutionContext>>>,
    now: u64,
}

impl Client {
    fn new() -> Self {
        let (contexts, ended) = tree_recording_ends();
        let layer = StreamLayer::new(vec![Box::new(PostgresProtocol { schema: SpanSchema::V0 })]);
        Self { layer, contexts, ended, now: 1_000 }
    }

    fn connected() -> Self {
        let mut client = Self::new();
        client.event(SocketOp::Connected, b"", 0);
        client
    }

    /// A connection open before the attach (process 9, fd 4) to 127.0.0.1:`port`.
    fn adopted(port: u16) -> Self {
        let mut client = Self::new();
        client.layer.adopt(9, 4, false, format!("127.0.0.1:{port}").parse().unwrap());
        client
    }

    fn event(&mut self, op: SocketOp, data: &[u8], uncaptured: usize) {
        self.now += 100;
        let activity = SocketActivity {
            tgid: 9,
            tid: 9,
            ktime_ns: self.now,
            fd: 4,
            op,
            length: (data.len() + uncaptured) as u64,
            data: data.into(),
            peer: (op == SocketOp::Connected).then(|| "127.0.0.1:5432".parse().unwrap()),
            local: None,
            tls_session: None,
            goroutine: 0,
        };
        self.layer.on_socket(&activity, &mut self.contexts);
    }

    fn write(&mut self, data: &[u8]) {
        self.event(SocketOp::Sent, data, 0);
    }

    fn read(&mut self, data: &[u8]) {
        self.event(SocketOp::Received, data, 0);
    }

    fn spans(&self) -> Vec<ExecutionContext> {
        self.ended.lock().unwrap().clone()
    }

    /// Startup for user `app` on database `shop`, and the server's answer up to ReadyForQuery.
    fn started(mut self) -> Self {
        let mut parameters = Vec::new();
        for part in ["user", "app", "database", "shop", "application_name", "billing", ""] {
            parameters.extend(part.as_bytes());
            parameters.push(0);
        }
        let mut startup = ((parameters.len() + 8) as u32).to_be_bytes().to_vec();
        startup.extend(wire::PROTOCOL_3.to_be_bytes());
        startup.extend(parameters);
        self.write(&startup);
        let mut answer = message(b'R', &0u32.to_be_bytes());
        answer.extend(message(b'S', b"server_version\x0015.8\x00"));
        answer.extend(ready());
        self.read(&answer);
        self
    }
}

fn message(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend(((body.len() + 4) as u32).to_be_bytes());
    out.extend(body);
    out
}

fn ready() -> Vec<u8> {
    message(b'Z', b"I")
}

fn query(sql: &str) -> Vec<u8> {
    message(b'Q', format!("{sql}\0").as_bytes())
}

#[test]
fn a_simple_query_is_one_span_with_the_startups_database_and_user() {
    let mut client = Client::connected().started();
    assert!(client.spans().is_empty(), "the startup gives no span");
    client.write(&query("SELECT name FROM users WHERE email = 'a@b.c'"));
    let mut answer = message(b'T', b"\x00\x01name\x00");
    answer.extend(message(b'D', b"\x00\x01\x00\x00\x00\x03bob"));
    answer.extend(message(b'C', b"SELECT 1\0"));
    answer.extend(ready());
    client.read(&answer);
    let spans = client.spans();
    assert_eq!(spans.len(), 1, "{spans:#?}");
    let data = &spans[0].data;
    assert_eq!((data.name, data.span_type, data.kind), ("postgres.query", "sql", SpanKind::Client));
    assert_eq!(data.integration_service, Some("postgres"));
    assert_eq!(data.resource, "SELECT name FROM users WHERE email = ?");
    assert_eq!(data.meta["db.system"], "postgresql");
    assert_eq!((data.meta["db.name"].as_str(), data.meta["db.user"].as_str()), ("shop", "app"));
    assert_eq!(data.meta["db.application"], "billing");
    assert_eq!(data.meta["out.host"], "127.0.0.1");
    assert_eq!(data.metrics["network.destination.port"], 5432.0);
    assert_eq!(data.metrics["db.row_count"], 1.0);
    assert!(data.error.is_none());
}

#[test]
fn the_extended_protocol_names_statements_and_errors_carry_their_sqlstate() {
    let mut client = Client::connected().started();
    // Parse a named statement, bind and execute it, sync: one span.
    let mut batch = message(b'P', b"s1\0INSERT INTO users (name) VALUES ($1)\0\0\0");
    batch.extend(message(b'B', b"\0s1\0\0\0\0\x01\0\0\0\x03bob\0\0"));
    batch.extend(message(b'E', b"\0\0\0\0\0"));
    batch.extend(message(b'S', b""));
    client.write(&batch);
    let mut answer = message(b'1', b"");
    answer.extend(message(b'2', b""));
    answer.extend(message(b'C', b"INSERT 0 1\0"));
    answer.extend(ready());
    client.read(&answer);
    // Again by name only.
    let mut again = message(b'B', b"\0s1\0\0\0\0\x01\0\0\0\x03amy\0\0");
    again.extend(message(b'E', b"\0\0\0\0\0"));
    again.extend(message(b'S', b""));
    client.write(&again);
    let mut failed =
        message(b'E', b"SERROR\0C23505\0Mduplicate key value violates unique constraint \"users_pkey\"\0\0");
    failed.extend(ready());
    client.read(&failed);
    // A driver preparing a statement without executing it: no span.
    let mut prepare = message(b'P', b"s2\0SELECT 1\0\0\0");
    prepare.extend(message(b'D', b"Ss2\0"));
    prepare.extend(message(b'S', b""));
    client.write(&prepare);
    client.read(&[message(b'1', b""), message(b't', b"\0\0"), message(b'n', b""), ready()].concat());
    let spans = client.spans();
    assert_eq!(spans.len(), 2, "{spans:#?}");
    for span in &spans {
        // The agent's obfuscator (libdatadog) makes positional parameters `?` too.
        assert_eq!(span.data.resource, "INSERT INTO users ( name ) VALUES ( ? )");
    }
    assert_eq!(spans[0].data.metrics["db.row_count"], 1.0);
    let error = spans[1].data.error.as_ref().expect("the duplicate key");
    assert_eq!(error.kind, "23505");
    assert!(error.message.starts_with("duplicate key value"), "{error:?}");
    assert_eq!(spans[1].data.meta["db.response.status_code"], "23505");
}

#[test]
fn ssl_accepted_leaves_the_socket_to_the_sessions_plaintext() {
    let mut client = Client::connected();
    let mut request = 8u32.to_be_bytes().to_vec();
    request.extend(wire::SSL_REQUEST.to_be_bytes());
    client.write(&request);
    client.read(b"S");
    // The handshake's ciphertext on the socket: nothing.
    client.write(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]);
    client.read(&[0x16, 0x03, 0x03, 0x00, 0x7a]);
    assert!(client.spans().is_empty());
    // Refused: the startup follows in clear.
    let mut client = Client::connected();
    client.write(&request);
    client.read(b"N");
    let mut client = client.started();
    client.write(&query("SELECT 1"));
    client.read(&[message(b'C', b"SELECT 1\0"), ready()].concat());
    assert_eq!(client.spans().len(), 1);
}

#[test]
fn a_result_past_the_capture_ends_at_its_ready_for_query_and_a_long_query_is_flagged() {
    let mut client = Client::connected().started();
    client.write(&query("SELECT * FROM big"));
    // Thousands of rows: the first read's capture ends mid-row, the last read holds the end.
    let mut first = message(b'T', b"\x00\x01id\x00");
    first.extend(message(b'D', b"\x00\x01\x00\x00\x00\x011"));
    first.extend(b"D\x00\x00");
    client.event(SocketOp::Received, &first, 50_000);
    client.event(SocketOp::Received, b"\x00\x01\x00\x00", 50_000);
    client.read(&[message(b'C', b"SELECT 9000\0"), ready()].concat());
    let long = format!("SELECT '{}'", "x".repeat(5000));
    let wire = query(&long);
    client.event(SocketOp::Sent, &wire[..4095], wire.len() - 4095);
    client.read(&[message(b'C', b"SELECT 1\0"), ready()].concat());
    let spans = client.spans();
    assert_eq!(spans.len(), 2, "{spans:#?}");
    assert_eq!(spans[0].data.resource, "SELECT * FROM big");
    assert!(spans[0].data.error.is_none());
    assert_eq!(spans[0].data.metrics["db.row_count"], 9000.0, "read back from the last bytes");
    assert_eq!(spans[1].data.meta["sql.truncated"], "true");
    assert!(!spans[1].data.resource.contains("xxx"), "{}", spans[1].data.resource);
}

#[test]
fn a_pooled_connection_open_before_the_attach_is_followed_from_its_next_query() {
    let mut client = Client::adopted(5432);
    // The middle of an earlier result, then a query.
    client.read(b"\x00\x00\x00\x03bob");
    client.write(&query("UPDATE users SET name = 'x' WHERE id = 7"));
    client.read(&[message(b'C', b"UPDATE 1\0"), ready()].concat());
    let spans = client.spans();
    assert_eq!(spans.len(), 1, "{spans:#?}");
    assert_eq!(spans[0].data.resource, "UPDATE users SET name = ? WHERE id = ?");
    assert!(!spans[0].data.meta.contains_key("db.name"), "the startup was before the attach");
}

#[test]
fn a_pooled_connection_on_another_port_is_recognised_by_a_whole_query_of_sql() {
    let adopted_on = |port: u16, first_write: &[u8]| {
        let mut client = Client::adopted(port);
        client.write(first_write);
        client.read(&[message(b'C', b"SELECT 1\0"), ready()].concat());
        client.spans()
    };
    let spans = adopted_on(45_871, &query("SELECT 1"));
    assert_eq!(spans.len(), 1, "{spans:#?}");
    assert_eq!(spans[0].data.resource, "SELECT ?");
    // A `Q` and a length, but not a statement: nothing, off PostgreSQL's port.
    assert!(adopted_on(45_871, &message(b'Q', b"\x01\x02\x03\0")).is_empty());
    // Cut short (the message's end is not in the write): nothing either.
    assert!(adopted_on(45_871, &query("SELECT 1")[..8]).is_empty());
}
