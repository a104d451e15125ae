//! MySQL through the stream layer, as socket activity: a client (process 5) connected to
//! 127.0.0.1:3306.

use std::sync::{Arc, Mutex};

use super::MysqlProtocol;
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

fn packet(sequence: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_le_bytes()[..3].to_vec();
    out.push(sequence);
    out.extend(payload);
    out
}

fn greeting(deprecate_eof: bool) -> Vec<u8> {
    let mut payload = vec![10];
    payload.extend(b"10.11.6-MariaDB\0");
    payload.extend([1, 0, 0, 0]); // thread id
    payload.extend([b'x'; 8]); // scramble
    payload.push(0);
    payload.extend(0xF7FFu16.to_le_bytes()); // capabilities, lower
    payload.push(8); // charset
    payload.extend([2, 0]); // status
                            // The upper capabilities; 0x0100 is CLIENT_DEPRECATE_EOF (1 << 24).
    let upper: u16 = if deprecate_eof { 0x0100 | 0x80BF } else { 0x80BF };
    payload.extend(upper.to_le_bytes());
    payload.extend([21; 1]);
    payload.extend([0; 10]);
    payload.extend([b'y'; 13]);
    payload.extend(b"mysql_native_password\0");
    packet(0, &payload)
}

fn handshake_response(deprecate_eof: bool) -> Vec<u8> {
    let mut capabilities: u32 = 0x0200 | 0x8 | 0x8000 | 0x0008_0000;
    if deprecate_eof {
        capabilities |= 0x0100_0000;
    }
    let mut payload = capabilities.to_le_bytes().to_vec();
    payload.extend([0, 0, 0, 1, 33]);
    payload.extend([0; 23]);
    payload.extend(b"app\0");
    payload.extend([20]);
    payload.extend([b'p'; 20]); // the password's hash: never read
    payload.extend(b"shop\0mysql_native_password\0");
    packet(1, &payload)
}

const OK: &[u8] = &[0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00];

impl Client {
    fn new() -> Self {
        let (contexts, ended) = tree_recording_ends();
        let layer = StreamLayer::new(vec![Box::new(MysqlProtocol { schema: SpanSchema::V0 })]);
        Self { layer, contexts, ended, now: 1_000 }
    }

    fn connected(deprecate_eof: bool) -> Self {
        let mut client = Self::new();
        client.event(SocketOp::Connected, b"", 0);
        client.read(&greeting(deprecate_eof));
        client.write(&handshake_response(deprecate_eof));
        client.read(&packet(2, OK));
        client
    }

    fn event(&mut self, op: SocketOp, data: &[u8], uncaptured: usize) {
        self.now += 100;
        let activity = SocketActivity {
            tgid: 5,
            tid: 5,
            ktime_ns: self.now,
            fd: 6,
            op,
            length: (data.len() + uncaptured) as u64,
            data: data.into(),
            peer: (op == SocketOp::Connected).then(|| "127.0.0.1:3306".parse().unwrap()),
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

    fn query(&mut self, sql: &str) {
        let mut payload = vec![0x03];
        payload.extend(sql.as_bytes());
        self.write(&packet(0, &payload));
    }

    fn spans(&self) -> Vec<ExecutionContext> {
        self.ended.lock().unwrap().clone()
    }
}

/// A result set of one column and `rows` rows, with or without EOF packets.
fn result_set(rows: usize, deprecate_eof: bool, status: u16) -> Vec<u8> {
    let mut out = packet(1, &[1]);
    out.extend(packet(
        2,
        b"\x03def\x04shop\x05users\x05users\x04name\x04name\x0c\x21\x00\xfd\x02\x00\x00\xfd\x00\x00\x00\x00\x00",
    ));
    let mut sequence = 3;
    let eof = |sequence: u8| packet(sequence, &[&[0xFE, 0, 0][..], &status.to_le_bytes()].concat());
    if !deprecate_eof {
        out.extend(eof(sequence));
        sequence += 1;
    }
    for i in 0..rows {
        out.extend(packet(sequence, format!("\x03r{i:02}").as_bytes()));
        sequence += 1;
    }
    if deprecate_eof {
        out.extend(packet(sequence, &[&[0xFE, 0, 0][..], &status.to_le_bytes(), &[0, 0]].concat()));
    } else {
        out.extend(eof(sequence));
    }
    out
}

#[test]
fn queries_results_and_errors_with_and_without_eof_packets() {
    for deprecate_eof in [false, true] {
        let mut client = Client::connected(deprecate_eof);
        assert!(client.spans().is_empty(), "the handshake gives no span");
        client.query("SELECT name FROM users WHERE secret = 'hunter2'");
        client.read(&result_set(3, deprecate_eof, 0x2));
        client.query("SELECT name FROM users WHERE 1 = 0");
        client.read(&result_set(0, deprecate_eof, 0x2));
        client.query("INSERT INTO users (name) VALUES ('bob'), ('amy')");
        client.read(&packet(1, &[0x00, 0x02, 0x00, 0x02, 0x00, 0x00, 0x00]));
        client.query("SELECT * FROM nope");
        client.read(&packet(1, b"\xff\x7a\x04#42S02Table 'shop.nope' doesn't exist"));
        let spans = client.spans();
        assert_eq!(spans.len(), 4, "deprecate_eof {deprecate_eof}: {spans:#?}");
        let data = &spans[0].data;
        assert_eq!((data.name, data.span_type, data.kind), ("mysql.query", "sql", SpanKind::Client));
        assert_eq!(data.integration_service, Some("mysql"));
        assert_eq!(data.resource, "SELECT name FROM users WHERE secret = ?");
        assert_eq!((data.meta["db.user"].as_str(), data.meta["db.name"].as_str()), ("app", "shop"));
        assert_eq!(data.meta["db.system"], "mysql");
        assert_eq!(data.metrics["db.row_count"], 3.0);
        assert_eq!(spans[1].data.metrics["db.row_count"], 0.0);
        assert_eq!(spans[2].data.metrics["db.row_count"], 2.0);
        let error = spans[3].data.error.as_ref().expect("an ERR packet");
        assert_eq!((error.kind.as_str(), error.message.as_str()), ("1146", "Table 'shop.nope' doesn't exist"));
    }
}

#[test]
fn multi_statements_end_with_their_last_result_and_prepared_statements_are_named_by_their_sql() {
    let mut client = Client::connected(false);
    client.query("SELECT 1; SELECT 2");
    let mut both = result_set(1, false, 0x0A); // SERVER_MORE_RESULTS_EXISTS
    both.extend(result_set(1, false, 0x02));
    client.read(&both);
    // COM_STMT_PREPARE: an OK with statement 7, 1 column and 1 parameter, their definitions
    // and EOFs; then two executions.
    let mut prepare = vec![0x16];
    prepare.extend(b"SELECT name FROM users WHERE id = ?");
    client.write(&packet(0, &prepare));
    let mut answer = packet(1, &[0x00, 7, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0]);
    for sequence in 2..6 {
        answer.extend(packet(sequence, if sequence % 2 == 0 { b"\x03def" } else { &[0xFE, 0, 0, 2, 0] }));
    }
    client.read(&answer);
    for _ in 0..2 {
        client.write(&packet(0, &[0x17, 7, 0, 0, 0, 0, 1, 0, 0, 0]));
        client.read(&result_set(1, false, 0x2));
    }
    let spans = client.spans();
    let resources: Vec<&str> = spans.iter().map(|s| s.data.resource.as_ref()).collect();
    // The agent's obfuscator drops the `;` between statements.
    assert_eq!(
        resources,
        ["SELECT ? SELECT ?", "SELECT name FROM users WHERE id = ?", "SELECT name FROM users WHERE id = ?"]
    );
    assert_eq!(spans[0].data.metrics["db.row_count"], 2.0, "both result sets");
}

#[test]
fn tls_and_garbage_give_no_span() {
    let mut client = Client::new();
    client.event(SocketOp::Connected, b"", 0);
    client.read(&greeting(false));
    // An SSL request (the short handshake response with CLIENT_SSL), then ciphertext.
    let mut ssl = (0x0200u32 | 0x0800 | 0x8000).to_le_bytes().to_vec();
    ssl.extend([0; 28]);
    client.write(&packet(1, &ssl));
    client.write(&[0x16, 0x03, 0x01, 0x02, 0x00]);
    client.read(&[0x16, 0x03, 0x03, 0x00, 0x7a]);
    assert!(client.spans().is_empty());
    // Not a greeting: nothing follows it.
    let mut other = Client::connected(false);
    other.read(b"\x00\x01garbage");
    other.query("SELECT 1");
    other.read(&packet(1, OK));
    assert_eq!(other.spans().len(), 1, "a stray read before the query does not stop pairing");
}

#[test]
fn a_pooled_connection_on_another_port_is_recognised_by_a_whole_command_of_sql() {
    let adopted_on = |port: u16, first_write: &[u8]| {
        let mut client = Client::new();
        client.layer.adopt(5, 6, false, format!("127.0.0.1:{port}").parse().unwrap());
        client.write(first_write);
        client.read(&result_set(1, true, 0x0002));
        client.spans()
    };
    let select = packet(0, &[b"\x03".as_slice(), b"SELECT 1"].concat());
    let spans = adopted_on(43_306, &select);
    assert_eq!(spans.len(), 1, "{spans:#?}");
    assert_eq!(spans[0].data.resource, "SELECT ?");
    // A command byte and a length, but no statement: nothing, off MySQL's port.
    assert!(adopted_on(43_306, &packet(0, b"\x03\x01\x02")).is_empty());
    // The packet's length does not match the write: nothing either.
    assert!(adopted_on(43_306, &select[..7]).is_empty());
}
