//! Two traced processes on loopback, as socket activity: the client (process 1) connected from
//! 127.0.0.1:40000 to the server (process 2) on 127.0.0.1:8080.

use std::sync::{Arc, Mutex};

use crate::{
    core::{test_support::tree_recording_ends, ContextData, ContextTree, ExecutionContext, SpanKind},
    integrations::{http::HeaderTags, streams::StreamLayer, test_support::http_layer},
    probes::{SocketActivity, SocketOp},
};

const CLIENT: (u32, u32) = (1, 3);
const SERVER: (u32, u32) = (2, 4);
const CLIENT_TID: u32 = 11;
const SERVER_TID: u32 = 22;

struct Harness {
    http: StreamLayer,
    contexts: ContextTree,
    ended: Arc<Mutex<Vec<ExecutionContext>>>,
    now: u64,
}

impl Harness {
    fn new() -> Self {
        let (contexts, ended) = tree_recording_ends();
        Self { http: http_layer(HeaderTags::parse("").0), contexts, ended, now: 1_000 }
    }

    fn event(&mut self, end: (u32, u32), tid: u32, op: SocketOp, data: &[u8]) {
        self.event_in_session(end, tid, op, data, None);
    }

    /// `session`: TLS plaintext of that `SSL*`, seen at the library.
    fn event_in_session(&mut self, (tgid, fd): (u32, u32), tid: u32, op: SocketOp, data: &[u8], session: Option<u64>) {
        self.now += 1_000;
        let (peer, local) = match (tgid, op) {
            (1, SocketOp::Connected) => (Some("127.0.0.1:8080"), Some("127.0.0.1:40000")),
            (2, SocketOp::Accepted) => (Some("127.0.0.1:40000"), Some("127.0.0.1:8080")),
            _ => (None, None),
        };
        let activity = SocketActivity {
            tgid,
            tid,
            ktime_ns: self.now,
            fd,
            op,
            length: data.len() as u64,
            data: data.into(),
            peer: peer.map(|p| p.parse().unwrap()),
            local: local.map(|l| l.parse().unwrap()),
            tls_session: session,
            goroutine: 0,
        };
        self.http.on_socket(&activity, &mut self.contexts);
    }

    fn connect(&mut self) {
        self.event(CLIENT, CLIENT_TID, SocketOp::Connected, b"");
        self.event(SERVER, SERVER_TID, SocketOp::Accepted, b"");
    }

    fn client_writes(&mut self, request: &[u8]) {
        self.event(CLIENT, CLIENT_TID, SocketOp::Sent, request);
    }

    fn server_reads(&mut self, request: &[u8]) {
        self.event(SERVER, SERVER_TID, SocketOp::Received, request);
    }

    fn respond(&mut self) {
        let response = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        self.event(SERVER, SERVER_TID, SocketOp::Sent, response);
        self.event(CLIENT, CLIENT_TID, SocketOp::Received, response);
    }

    /// (client span, server span) of each exchange, in order.
    fn pairs(&self) -> Vec<(ExecutionContext, ExecutionContext)> {
        let ended = self.ended.lock().unwrap();
        let of = |kind: SpanKind| -> Vec<ExecutionContext> {
            ended.iter().filter(|c| c.data.name == "http.request" && c.data.kind == kind).cloned().collect()
        };
        let (clients, servers) = (of(SpanKind::Client), of(SpanKind::Server));
        assert_eq!(clients.len(), servers.len(), "{ended:#?}");
        clients.into_iter().zip(servers).collect()
    }
}

const REQUEST: &[u8] = b"GET /a HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n";

fn assert_linked(client: &ExecutionContext, server: &ExecutionContext) {
    assert_eq!((server.parent_id, server.trace_id), (client.id, client.trace_id), "{client:#?}\n{server:#?}");
    assert!(server.is_root(), "still the server process's local root");
}

#[test]
fn the_server_span_of_a_traced_clients_request_is_the_client_spans_child() {
    let mut h = Harness::new();
    h.connect();
    h.client_writes(REQUEST);
    h.server_reads(REQUEST);
    h.respond();
    // Keep-alive: the second request on the connection pairs with the second call.
    h.client_writes(b"GET /b HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n");
    h.server_reads(b"GET /b HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n");
    h.respond();
    let pairs = h.pairs();
    assert_eq!(pairs.len(), 2);
    for (client, server) in &pairs {
        assert_linked(client, server);
        assert_eq!(client.data.resource, server.data.resource);
    }
    assert_ne!(pairs[0].0.trace_id, pairs[1].0.trace_id, "two calls from nothing open: two traces");
    assert_eq!((h.contexts.open_contexts(), h.contexts.abandoned), (0, 0));
}

#[test]
fn a_request_read_before_the_clients_write_was_seen_is_linked_when_it_is() {
    let mut h = Harness::new();
    h.connect();
    // The server woke and read before the client's system call returned and reported it.
    h.server_reads(REQUEST);
    // Work the server does at once is in the request's trace too, once linked.
    let query =
        h.contexts.start(2, SERVER_TID, h.now + 10, 0x7ff0, ContextData::new("q", "t", "sql", SpanKind::Client));
    h.client_writes(REQUEST);
    h.contexts.end(SERVER_TID, query, h.now + 20, |_| {});
    h.respond();
    let (client, server) = h.pairs().remove(0);
    assert_linked(&client, &server);
    let ended = h.ended.lock().unwrap();
    let query = ended.iter().find(|c| c.data.name == "q").unwrap();
    assert_eq!((query.parent_id, query.trace_id), (server.id, client.trace_id));
}

#[test]
fn a_traced_client_wins_over_context_headers_and_headers_count_when_the_client_is_not_traced() {
    let with_headers: &[u8] =
        b"GET /a HTTP/1.1\r\nHost: h\r\nx-datadog-trace-id: 4242\r\nx-datadog-parent-id: 99\r\n\r\n";
    let mut h = Harness::new();
    h.connect();
    h.client_writes(with_headers);
    h.server_reads(with_headers);
    h.respond();
    let (client, server) = h.pairs().remove(0);
    assert_linked(&client, &server);

    // The same request from a process we do not trace: only the server end is known.
    let mut h = Harness::new();
    h.event(SERVER, SERVER_TID, SocketOp::Accepted, b"");
    h.server_reads(with_headers);
    h.event(SERVER, SERVER_TID, SocketOp::Sent, b"HTTP/1.1 204 No Content\r\n\r\n");
    let ended = h.ended.lock().unwrap();
    assert_eq!((ended[0].trace_id, ended[0].parent_id), (4242, 99));
}

#[test]
fn a_client_span_is_the_child_of_what_the_thread_has_open_and_errors_on_a_closed_connection() {
    let mut h = Harness::new();
    let outer =
        h.contexts.start(1, CLIENT_TID, 1_500, 0x7ff0, ContextData::new("job", "t", "custom", SpanKind::Internal));
    h.event(CLIENT, CLIENT_TID, SocketOp::Connected, b"");
    h.client_writes(REQUEST);
    h.event(CLIENT, CLIENT_TID, SocketOp::Closed, b"");
    h.contexts.end(CLIENT_TID, outer, h.now + 1, |_| {});
    let ended = h.ended.lock().unwrap();
    let (call, job) = (&ended[0], &ended[1]);
    assert_eq!((call.data.name, call.parent_id, call.trace_id), ("http.request", job.id, job.trace_id));
    assert!(call.data.error.is_some(), "no response: {call:#?}");
    assert_eq!(h.contexts.abandoned, 0);
}

#[test]
fn https_between_traced_processes_is_linked_through_the_sockets_under_the_sessions() {
    const CIPHERTEXT: &[u8] = &[0x17, 0x03, 0x03, 0x00, 0x40, 0x9a, 0x11, 0x42];
    let response: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let mut h = Harness::new();
    h.connect();
    h.event_in_session(CLIENT, CLIENT_TID, SocketOp::Sent, REQUEST, Some(0xc1));
    h.client_writes(CIPHERTEXT);
    h.server_reads(CIPHERTEXT);
    h.event_in_session(SERVER, SERVER_TID, SocketOp::Received, REQUEST, Some(0x5e));
    h.event_in_session(SERVER, SERVER_TID, SocketOp::Sent, response, Some(0x5e));
    h.event_in_session(CLIENT, CLIENT_TID, SocketOp::Received, response, Some(0xc1));
    let (client, server) = h.pairs().remove(0);
    assert_linked(&client, &server);
    assert!(server.data.meta["http.url"].starts_with("https://"), "{server:#?}");
}
