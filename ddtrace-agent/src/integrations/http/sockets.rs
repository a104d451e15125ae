//! HTTP over the sockets of traced processes: socket activity from the kernel's system call
//! tracepoints, one [`ConnectionTracker`] per (process, fd), and each request/response exchange
//! an `http.request` context (server or client, by who opened the connection).
//!
//! A server context opens when the request head has been read, on the reading thread, as a local
//! root continuing the caller's trace when the request carries Datadog or W3C context headers;
//! what the thread does while serving (database calls, calls to other services) is its child. It
//! ends with the response. A client exchange is recorded whole when its response ends, as a child
//! of what is open on the thread then, or for Go of the one request in flight (see
//! [`ClientParents`]). Connections opened before the agent attached are not
//! followed (their first bytes are mid-stream).

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    sync::Arc,
};

use super::{
    build_http_url,
    client_parent::{ClientParent, ClientParents},
    resource_name, ConnectionTracker, Direction, Exchange, ExchangeOutcome, HeaderTags, KeptHeaders, MessageHead,
    ParserLimits, QueryObfuscator, Role, StyleList,
};
use crate::{
    core::{ContextData, ContextError, ContextId, ContextTree, RemoteParent, SpanKind},
    probes::{SocketActivity, SocketOp},
};

struct Connection {
    tracker: ConnectionTracker,
    peer: Option<SocketAddr>,
    /// Server contexts opened for requests still waiting for their response: (thread, context).
    open: VecDeque<(u32, ContextId)>,
}

/// Turns the socket activity of traced processes into HTTP contexts.
pub struct HttpOverSockets {
    connections: HashMap<(u32, u32), Connection>,
    spans: SpanShaper,
}

/// What turns exchanges into contexts, apart from the connections so both can be borrowed at once
/// on the per-event path.
struct SpanShaper {
    kept: Arc<KeptHeaders>,
    header_tags: HeaderTags,
    obfuscator: QueryObfuscator,
    propagation: StyleList,
    exchanges: Vec<Exchange>,
    parents: ClientParents,
    /// Frames given to server contexts, counting down from the top: above every real stack
    /// address (so calls made while serving nest inside) and each below the previous one (so a
    /// pipelined request never looks like the return of the one before it).
    next_frame: u64,
}

impl HttpOverSockets {
    /// `header_tags`: the allow-list of headers copied into spans (`DD_TRACE_HEADER_TAGS`).
    pub fn new(header_tags: HeaderTags) -> Self {
        Self {
            connections: HashMap::new(),
            spans: SpanShaper {
                kept: Arc::new(KeptHeaders::for_tracing(&header_tags)),
                header_tags,
                obfuscator: QueryObfuscator::default(),
                propagation: StyleList::default(),
                exchanges: Vec::new(),
                parents: ClientParents::default(),
                next_frame: u64::MAX,
            },
        }
    }

    /// Follows one socket system call; ended exchanges become contexts on the calling thread.
    pub fn on_socket(&mut self, event: &SocketActivity, contexts: &mut ContextTree) {
        let key = (event.tgid, event.fd);
        match event.op {
            SocketOp::Accepted | SocketOp::Connected => {
                let role = if event.op == SocketOp::Accepted { Role::Server } else { Role::Client };
                let tracker = ConnectionTracker::new(role, ParserLimits::default(), self.spans.kept.clone());
                self.connections.insert(key, Connection { tracker, peer: event.peer, open: VecDeque::new() });
            }
            SocketOp::Received | SocketOp::Sent => {
                let Some(connection) = self.connections.get_mut(&key) else { return };
                let direction = if event.op == SocketOp::Received { Direction::Read } else { Direction::Write };
                let length = usize::try_from(event.length).unwrap_or(usize::MAX);
                let seen = connection.tracker.requests_seen();
                connection.tracker.on_data(direction, &event.data, length, event.ktime_ns, &mut self.spans.exchanges);
                let started = (connection.tracker.requests_seen() - seen) as usize;
                if started > 0 && connection.tracker.role() == Role::Server {
                    self.spans.open_server_contexts(event, connection, started, contexts);
                }
                self.spans.finish(event, connection, contexts);
            }
            SocketOp::Closed => {
                let Some(mut connection) = self.connections.remove(&key) else { return };
                connection.tracker.on_close(event.ktime_ns, &mut self.spans.exchanges);
                self.spans.finish(event, &mut connection, contexts);
            }
        }
    }

    /// Says whether process `tgid` serves requests on threads they do not own (Go's goroutines):
    /// then a client call's parent is not taken from its thread.
    pub fn set_threads_shared(&mut self, tgid: u32, shared: bool) {
        self.spans.parents.set_threads_shared(tgid, shared);
    }

    /// Forgets the connections of a process that exited.
    pub fn process_exited(&mut self, tgid: u32) {
        self.connections.retain(|(pid, _), _| *pid != tgid);
        self.spans.parents.process_exited(tgid);
    }
}

impl SpanShaper {
    /// Opens a server context for each of the `started` latest requests of `connection`.
    fn open_server_contexts(
        &mut self,
        event: &SocketActivity,
        connection: &mut Connection,
        started: usize,
        contexts: &mut ContextTree,
    ) {
        for head in connection.tracker.latest_requests(started) {
            let remote = self
                .propagation
                .extract(&head.headers)
                .map(|caller| RemoteParent { trace_id: caller.trace_id, parent_id: caller.parent_id });
            let data = self.request_data(head, Role::Server, connection.peer);
            let frame = self.next_frame;
            self.next_frame -= 1;
            let id = contexts.start_root(event.tgid, event.tid, head.started_ns, frame, data, remote);
            connection.open.push_back((event.tid, id));
            self.parents.request_opened(event.tgid, event.tid, id, head.started_ns);
        }
    }

    /// Ends the server contexts of the exchanges that ended, and records the client ones.
    fn finish(&mut self, event: &SocketActivity, connection: &mut Connection, contexts: &mut ContextTree) {
        let role = connection.tracker.role();
        let mut exchanges = std::mem::take(&mut self.exchanges);
        for exchange in exchanges.drain(..) {
            if role == Role::Server {
                if let Some((tid, id)) = connection.open.pop_front() {
                    self.parents.request_ended(event.tgid, id);
                    let header_tags = &self.header_tags;
                    contexts.end(tid, id, exchange.ended_ns, |data| add_response(data, &exchange, role, header_tags));
                    continue;
                }
            }
            let mut data = self.request_data(&exchange.request, role, connection.peer);
            add_response(&mut data, &exchange, role, &self.header_tags);
            let (tgid, tid, started, ended) = (event.tgid, event.tid, exchange.started_ns, exchange.ended_ns);
            let parent =
                if role == Role::Client { self.parents.for_call(tgid, started) } else { ClientParent::CallingThread };
            match parent {
                ClientParent::CallingThread => contexts.record(tgid, tid, started, ended, data),
                ClientParent::Request { tid: parent_tid, id } => {
                    contexts.record_under(Some((parent_tid, id)), tgid, tid, started, ended, data)
                }
                ClientParent::NewTrace => contexts.record_under(None, tgid, tid, started, ended, data),
            }
        }
        // Hand the (empty) buffer back: its capacity serves the next events.
        self.exchanges = exchanges;
    }

    /// The request's context with its allow-listed headers.
    fn request_data(&self, request: &MessageHead, role: Role, peer: Option<SocketAddr>) -> ContextData {
        let mut data = request_data(request, role, peer, &self.obfuscator);
        data.meta.extend(self.header_tags.request_tags(&request.headers));
        data
    }
}

/// The `http.request` context of a request, tagged as dd-trace-py tags its web and client spans.
fn request_data(
    request: &MessageHead,
    role: Role,
    peer: Option<SocketAddr>,
    obfuscator: &QueryObfuscator,
) -> ContextData {
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
    data
}

/// What the response adds: the status, and the error for a connection that closed without an
/// answer, a 5xx, or for clients a 4xx too (dd-trace-py's `DD_TRACE_HTTP_CLIENT_ERROR_STATUSES`
/// default, 400-499; a 4xx is the caller's mistake, not the server's).
fn add_response(data: &mut ContextData, exchange: &Exchange, role: Role, header_tags: &HeaderTags) {
    if let Some(status) = exchange.status() {
        data.meta.insert("http.status_code".to_string(), status.to_string());
    }
    if let Some(response) = &exchange.response {
        data.meta.extend(header_tags.response_tags(&response.headers));
    }
    let client_error = role == Role::Client && exchange.status().is_some_and(|s| (400..500).contains(&s));
    if exchange.is_error() || client_error {
        let message = match (exchange.outcome, exchange.status()) {
            (_, Some(status)) => format!("{status} response"),
            (ExchangeOutcome::NoResponse, None) => "the connection closed before a response".to_string(),
            _ => "incomplete response".to_string(),
        };
        data.error = Some(ContextError { kind: "HTTPError".to_string(), message });
    }
}
