//! HTTP over the sockets of traced processes: socket activity from the kernel's system call
//! tracepoints, one [`ConnectionTracker`] per (process, fd), and each request/response exchange
//! recorded as an `http.request` context (server or client, by who opened the connection).
//!
//! Exchanges are recorded whole when they end, so work done on the thread while serving a request
//! (a database call) is not yet its child; connections opened before the agent attached are not
//! followed (their first bytes are mid-stream).

use std::{collections::HashMap, net::SocketAddr, sync::Arc};

use super::{
    build_http_url, resource_name, ConnectionTracker, Direction, Exchange, ExchangeOutcome, HeaderTags, KeptHeaders,
    ParserLimits, QueryObfuscator, Role,
};
use crate::{
    core::{ContextData, ContextError, ContextTree, SpanKind},
    probes::{SocketActivity, SocketOp},
};

struct Connection {
    tracker: ConnectionTracker,
    peer: Option<SocketAddr>,
}

/// Turns the socket activity of traced processes into HTTP contexts.
pub struct HttpOverSockets {
    connections: HashMap<(u32, u32), Connection>,
    kept: Arc<KeptHeaders>,
    obfuscator: QueryObfuscator,
    exchanges: Vec<Exchange>,
    /// Exchanges turned into contexts, for the exit log.
    pub recorded: u64,
}

impl Default for HttpOverSockets {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpOverSockets {
    pub fn new() -> Self {
        Self {
            connections: HashMap::new(),
            kept: Arc::new(KeptHeaders::for_tracing(&HeaderTags::default())),
            obfuscator: QueryObfuscator::default(),
            exchanges: Vec::new(),
            recorded: 0,
        }
    }

    /// Follows one socket system call; ended exchanges become contexts on the calling thread.
    pub fn on_socket(&mut self, event: &SocketActivity, contexts: &mut ContextTree) {
        let key = (event.tgid, event.fd);
        match event.op {
            SocketOp::Accepted | SocketOp::Connected => {
                let role = if event.op == SocketOp::Accepted { Role::Server } else { Role::Client };
                let tracker = ConnectionTracker::new(role, ParserLimits::default(), self.kept.clone());
                self.connections.insert(key, Connection { tracker, peer: event.peer });
            }
            SocketOp::Received | SocketOp::Sent => {
                let Some(connection) = self.connections.get_mut(&key) else { return };
                let direction = if event.op == SocketOp::Received { Direction::Read } else { Direction::Write };
                let length = usize::try_from(event.length).unwrap_or(usize::MAX);
                connection.tracker.on_data(direction, &event.data, length, event.ktime_ns, &mut self.exchanges);
            }
            SocketOp::Closed => {
                let Some(mut connection) = self.connections.remove(&key) else { return };
                connection.tracker.on_close(event.ktime_ns, &mut self.exchanges);
                self.record(event, connection.tracker.role(), connection.peer, contexts);
                return;
            }
        }
        if let Some(connection) = self.connections.get(&key) {
            let (role, peer) = (connection.tracker.role(), connection.peer);
            self.record(event, role, peer, contexts);
        }
    }

    /// Forgets the connections of a process that exited.
    pub fn process_exited(&mut self, tgid: u32) {
        self.connections.retain(|(pid, _), _| *pid != tgid);
    }

    fn record(&mut self, event: &SocketActivity, role: Role, peer: Option<SocketAddr>, contexts: &mut ContextTree) {
        for exchange in self.exchanges.drain(..) {
            let data = context_data(&exchange, role, peer, &self.obfuscator);
            contexts.record(event.tgid, event.tid, exchange.started_ns, exchange.ended_ns, data);
            self.recorded += 1;
        }
    }
}

/// The `http.request` context of one exchange, tagged as dd-trace-py tags its web and client spans.
fn context_data(
    exchange: &Exchange,
    role: Role,
    peer: Option<SocketAddr>,
    obfuscator: &QueryObfuscator,
) -> ContextData {
    let request = &exchange.request;
    let method = request.method().unwrap_or("GET");
    let target = request.target().unwrap_or("/");
    let host_header = request.header("host");
    let peer_host = peer.map(|p| p.ip().to_string()).unwrap_or_default();
    let (span_type, kind) = match role {
        Role::Server => ("web", SpanKind::Server),
        Role::Client => ("http", SpanKind::Client),
    };
    // A server knows its own address only from the Host header; a client knows its peer.
    let (host, port) = match (host_header, role) {
        (Some(host), _) => (host.to_string(), None),
        (None, Role::Client) => (peer_host.clone(), peer.map(|p| p.port())),
        (None, Role::Server) => ("localhost".to_string(), None),
    };
    let mut data = ContextData::new("http.request", "http", span_type, kind)
        .with_resource(resource_name(method, target))
        .with_meta("http.method", method)
        .with_meta("http.url", build_http_url("http", &host, port, target, obfuscator));
    if let Some(status) = exchange.status() {
        data = data.with_meta("http.status_code", status.to_string());
    }
    if let Some(agent) = request.header("user-agent") {
        data = data.with_meta("http.useragent", agent);
    }
    match role {
        Role::Server => {
            if let Some(peer) = peer {
                data = data.with_meta("network.client.ip", peer.ip().to_string());
            }
        }
        Role::Client => {
            let out_host = host_header.map(|h| h.rsplit_once(':').map_or(h, |(name, _)| name)).unwrap_or(&peer_host);
            data = data.with_meta("out.host", out_host);
            if let Some(peer) = peer {
                data = data.with_meta("network.destination.port", peer.port().to_string());
            }
        }
    }
    if exchange.is_error() {
        let message = match (exchange.outcome, exchange.status()) {
            (_, Some(status)) => format!("{status} response"),
            (ExchangeOutcome::NoResponse, None) => "the connection closed before a response".to_string(),
            _ => "incomplete response".to_string(),
        };
        data.error = Some(ContextError { kind: "HTTPError".to_string(), message });
    }
    data
}
