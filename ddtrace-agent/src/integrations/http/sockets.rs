//! HTTP over the sockets of traced processes: socket activity from the kernel's system call
//! tracepoints, one [`ConnectionTracker`] per (process, fd), and each request/response exchange
//! an `http.request` context (server or client, by who opened the connection).
//!
//! A server context opens when the request head has been read, on the reading thread, as a local
//! root continuing the caller's trace when the request carries Datadog or W3C context headers;
//! what the thread does while serving (database calls, calls to other services) is its child. It
//! ends with the response. A client context opens when the request head has been written, as a
//! child of what is open on the thread (inside the context the connection was opened in, while
//! that is open: an event-driven server such as nginx proxies one request while it takes on
//! others), and ends with the response; it stays off the thread's stack (nothing the thread does
//! meanwhile is its child). When both ends of a connection are traced processes, the server's
//! context continues the client's (see [`super::linking`]). In Go programs a thread does not
//! tell which request a call belongs to: see [`ClientParents`].
//! Connections opened before the agent attached are not followed (their first bytes are
//! mid-stream).
//!
//! TLS connections are followed twice: the socket's own bytes are ciphertext, which the parser
//! recognises and ignores, and the plaintext seen at the TLS library arrives as socket activity
//! carrying the library's session (`SSL*`). Each session is a connection of its own, tied to the
//! socket whose fd the kernel saw it use (or, for a read served from the library's buffer, the fd
//! the session used before), and closed with that socket.

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    sync::Arc,
};

use super::linking::{Caller, CallerIndex};
use super::{
    build_http_url,
    client_parent::{ClientParent, ClientParents},
    resource_name, starts_request, ConnectionTracker, Direction, Exchange, ExchangeOutcome, ExtractedContext,
    HeaderTags, KeptHeaders, MessageHead, ParserLimits, QueryObfuscator, Role, StyleList,
};
use crate::{
    core::{ContextData, ContextError, ContextId, ContextTree, RemoteParent, SpanKind},
    probes::{SocketActivity, SocketOp},
};
use ddtrace_common::FD_UNKNOWN;

/// The byte stream a connection's parser follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Stream {
    /// What the socket carries: clear text, or ciphertext the parser ignores.
    Socket { tgid: u32, fd: u32 },
    /// The plaintext of a TLS session, seen at the TLS library.
    Tls { tgid: u32, session: u64 },
}

impl Stream {
    fn tgid(&self) -> u32 {
        match *self {
            Self::Socket { tgid, .. } | Self::Tls { tgid, .. } => tgid,
        }
    }
}

struct Connection {
    tracker: ConnectionTracker,
    peer: Option<SocketAddr>,
    /// This end's address, when the kernel could read it.
    local: Option<SocketAddr>,
    tls: bool,
    /// For a TLS session: the fd of the socket it was last seen using.
    socket_fd: Option<u32>,
    /// False for a connection found open at attach, until a request starts a read (server) or a
    /// write (client): what came before was the middle of a message.
    in_step: bool,
    /// Contexts opened for requests still waiting for their response: (thread, context).
    open: VecDeque<(u32, ContextId)>,
    /// The innermost context of the thread that opened the connection, when it opened it.
    opened_within: Option<ContextId>,
}

/// Turns the socket activity of traced processes into HTTP contexts.
pub struct HttpOverSockets {
    connections: HashMap<Stream, Connection>,
    /// The TLS session last seen on each socket (tgid, fd).
    session_of_socket: HashMap<(u32, u32), u64>,
    spans: SpanShaper,
    callers: CallerIndex,
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
            session_of_socket: HashMap::new(),
            spans: SpanShaper {
                kept: Arc::new(KeptHeaders::for_tracing(&header_tags)),
                header_tags,
                obfuscator: QueryObfuscator::default(),
                propagation: StyleList::default(),
                exchanges: Vec::new(),
                parents: ClientParents::default(),
                next_frame: u64::MAX,
            },
            callers: CallerIndex::default(),
        }
    }

    /// Follows one socket system call or TLS library call; ended exchanges become contexts on
    /// the calling thread.
    pub fn on_socket(&mut self, event: &SocketActivity, contexts: &mut ContextTree) {
        let socket = Stream::Socket { tgid: event.tgid, fd: event.fd };
        match event.op {
            SocketOp::Accepted | SocketOp::Connected => {
                // A new socket on a reused fd: the old one's TLS session ended with it.
                self.close_tls_session_of(event, contexts);
                let role = if event.op == SocketOp::Accepted { Role::Server } else { Role::Client };
                let tracker = ConnectionTracker::new(role, ParserLimits::default(), self.spans.kept.clone());
                let (peer, local) = (event.peer, event.local);
                if let (Role::Client, Some(local)) = (role, local) {
                    self.callers.client_connected((event.tgid, event.fd), local, peer);
                }
                let opened_within = contexts.innermost(event.tid);
                let connection = Connection {
                    tracker,
                    peer,
                    local,
                    tls: false,
                    socket_fd: None,
                    in_step: true,
                    open: VecDeque::new(),
                    opened_within,
                };
                self.connections.insert(socket, connection);
            }
            SocketOp::Received | SocketOp::Sent => {
                let stream = match event.tls_session {
                    Some(session) => self.tls_stream(event, session, contexts),
                    None => socket,
                };
                let Some(connection) = self.connections.get_mut(&stream) else { return };
                let direction = if event.op == SocketOp::Received { Direction::Read } else { Direction::Write };
                if !connection.in_step {
                    let requests_go =
                        if connection.tracker.role() == Role::Server { Direction::Read } else { Direction::Write };
                    if direction != requests_go || !starts_request(&event.data) {
                        return;
                    }
                    connection.in_step = true;
                }
                let length = usize::try_from(event.length).unwrap_or(usize::MAX);
                let seen = connection.tracker.requests_seen();
                connection.tracker.on_data(direction, &event.data, length, event.ktime_ns, &mut self.spans.exchanges);
                let started = (connection.tracker.requests_seen() - seen) as usize;
                if started > 0 {
                    self.spans.open_contexts(event, connection, started, &mut self.callers, contexts);
                }
                self.spans.finish(event, connection, &mut self.callers, contexts);
            }
            SocketOp::Closed => {
                self.close_tls_session_of(event, contexts);
                self.close(socket, event, contexts);
            }
        }
    }

    /// Follows a connection the process had open before the agent attached (the kernel was told
    /// of its fd too). Its first message seen is the first request that starts a read or write.
    pub fn adopt(&mut self, tgid: u32, fd: u32, accepted: bool, peer: SocketAddr) {
        let role = if accepted { Role::Server } else { Role::Client };
        let tracker = ConnectionTracker::new(role, ParserLimits::default(), self.spans.kept.clone());
        // No local address: requests on it cannot be paired with the other end's by their
        // index (neither end saw the connection's first request). Opened before the attach:
        // within nothing the agent knows of.
        let connection = Connection {
            tracker,
            peer: Some(peer),
            local: None,
            tls: false,
            socket_fd: None,
            in_step: false,
            open: VecDeque::new(),
            opened_within: None,
        };
        self.connections.insert(Stream::Socket { tgid, fd }, connection);
    }

    /// The connection TLS plaintext of `session` belongs to, made on its first bytes. The
    /// session is tied to the socket the kernel saw it use during the call, if any.
    fn tls_stream(&mut self, event: &SocketActivity, session: u64, contexts: &mut ContextTree) -> Stream {
        let tgid = event.tgid;
        let stream = Stream::Tls { tgid, session };
        let seen_fd = (event.fd != FD_UNKNOWN).then_some(event.fd);
        let known_fd = match self.connections.get(&stream) {
            // The usual case, one lookup: a known session on the socket it already used, or a
            // read served from the library's buffer.
            Some(connection) if seen_fd.is_none() || seen_fd == connection.socket_fd => return stream,
            Some(connection) => connection.socket_fd,
            None => None,
        };
        let fd = seen_fd.or(known_fd);
        if let Some(fd) = seen_fd {
            let previous = self.session_of_socket.insert((tgid, fd), session);
            if let Some(old) = previous.filter(|&old| old != session) {
                // The socket carries a new session (an `SSL*` freed and another made): the old
                // one is over.
                self.close(Stream::Tls { tgid, session: old }, event, contexts);
            }
        }
        let socket = fd
            .and_then(|fd| self.connections.get(&Stream::Socket { tgid, fd }))
            .map(|socket| (socket.tracker.role(), socket.peer, socket.local, socket.opened_within));
        match self.connections.get_mut(&stream) {
            Some(connection) => {
                connection.socket_fd = fd;
                // A session whose first plaintext came from the library's buffer (a request that
                // arrived with the handshake's last bytes) learns its socket on a later call.
                if let (None, Some((_, peer, local, _))) = (connection.peer, socket) {
                    (connection.peer, connection.local) = (peer, local);
                }
            }
            None => {
                // The socket's side when the kernel saw it accepted or connected; else who spoke
                // first: in HTTP/1.x the client does.
                let role = match socket {
                    Some((role, ..)) => role,
                    None if event.op == SocketOp::Sent => Role::Client,
                    None => Role::Server,
                };
                let (peer, local, opened_within) = socket.map_or((None, None, None), |(_, p, l, w)| (p, l, w));
                let tracker = ConnectionTracker::new(role, ParserLimits::default(), self.spans.kept.clone());
                let connection = Connection {
                    tracker,
                    peer,
                    local,
                    tls: true,
                    socket_fd: fd,
                    in_step: true,
                    open: VecDeque::new(),
                    opened_within,
                };
                self.connections.insert(stream, connection);
            }
        }
        stream
    }

    /// The socket of `event` closed (or was replaced): so did its TLS session.
    fn close_tls_session_of(&mut self, event: &SocketActivity, contexts: &mut ContextTree) {
        let tgid = event.tgid;
        if let Some(session) = self.session_of_socket.remove(&(tgid, event.fd)) {
            self.close(Stream::Tls { tgid, session }, event, contexts);
        }
    }

    /// Ends `stream`: exchanges still waiting for their response end as the parser says.
    fn close(&mut self, stream: Stream, event: &SocketActivity, contexts: &mut ContextTree) {
        let Some(mut connection) = self.connections.remove(&stream) else { return };
        connection.tracker.on_close(event.ktime_ns, &mut self.spans.exchanges);
        self.spans.finish(event, &mut connection, &mut self.callers, contexts);
        if let (Stream::Socket { tgid, fd }, Role::Client, Some(local)) =
            (stream, connection.tracker.role(), connection.local)
        {
            self.callers.client_closed((tgid, fd), local);
        }
    }

    /// Says whether process `tgid` serves requests on threads they do not own (Go's goroutines):
    /// then a client call's parent is not taken from its thread.
    pub fn set_threads_shared(&mut self, tgid: u32, shared: bool) {
        self.spans.parents.set_threads_shared(tgid, shared);
    }

    /// Forgets the connections of a process that exited.
    pub fn process_exited(&mut self, tgid: u32) {
        self.spans.parents.process_exited(tgid);
        self.connections.retain(|stream, _| stream.tgid() != tgid);
        self.session_of_socket.retain(|(pid, _), _| *pid != tgid);
        self.callers.process_exited(tgid);
    }
}

impl SpanShaper {
    /// Opens a context for each of the `started` latest requests of `connection`: a server's
    /// read them, a client's wrote them.
    fn open_contexts(
        &mut self,
        event: &SocketActivity,
        connection: &mut Connection,
        started: usize,
        callers: &mut CallerIndex,
        contexts: &mut ContextTree,
    ) {
        let role = connection.tracker.role();
        // Index on the connection of the first of them: how the two ends' requests are paired.
        let first_index = connection.tracker.requests_seen() - started as u64;
        for (index, head) in (first_index..).zip(connection.tracker.latest_requests(started)) {
            let mut data = self.request_data(head, role, connection);
            if role == Role::Client {
                let (tgid, tid, started) = (event.tgid, event.tid, head.started_ns);
                let id = match self.parents.for_call(tgid, started) {
                    ClientParent::CallingThread => {
                        contexts.start_detached_within(tgid, tid, connection.opened_within, started, data)
                    }
                    ClientParent::Request { tid: parent_tid, id } => {
                        contexts.start_detached_under(Some((parent_tid, id)), tgid, tid, started, data)
                    }
                    ClientParent::NewTrace => contexts.start_detached_under(None, tgid, tid, started, data),
                };
                connection.open.push_back((event.tid, id));
                if let Some(local) = connection.local {
                    callers.call_opened(local, index, id, contexts);
                }
                continue;
            }
            // A traced client at the other end is the real parent: its span is the call that
            // sent this request. Headers can only name a span of the caller's own tracer, if it
            // has one (in-process tracing besides ours), or of some hop further away; they are
            // the parent (and their sampling decision the trace's) only when the client end is
            // not traced.
            let caller = callers.caller(connection.peer, connection.local, index, contexts);
            let remote = match caller {
                Caller::Open(client_span) => Some(client_span),
                Caller::NotSeenYet | Caller::Unknown => self.propagation.extract(&head.headers).map(|extracted| {
                    let remote = RemoteParent { trace_id: extracted.trace_id, parent_id: extracted.parent_id };
                    continue_callers_decision(&mut data, extracted);
                    remote
                }),
            };
            let frame = self.next_frame;
            self.next_frame -= 1;
            let id = contexts.start_root(event.tgid, event.tid, head.started_ns, frame, data, remote);
            connection.open.push_back((event.tid, id));
            self.parents.request_opened(event.tgid, event.tid, id, head.started_ns);
            if let (Caller::NotSeenYet, Some(peer)) = (caller, connection.peer) {
                callers.wait(peer, index, event.tid, id);
            }
        }
    }

    /// Ends the contexts of the exchanges that ended (recording whole those that had none).
    fn finish(
        &mut self,
        event: &SocketActivity,
        connection: &mut Connection,
        callers: &mut CallerIndex,
        contexts: &mut ContextTree,
    ) {
        let role = connection.tracker.role();
        let mut exchanges = std::mem::take(&mut self.exchanges);
        for exchange in exchanges.drain(..) {
            if let Some((tid, id)) = connection.open.pop_front() {
                let header_tags = &self.header_tags;
                let peer = connection.peer;
                let finish = |data: &mut ContextData| {
                    add_response(data, &exchange, role, header_tags);
                    // The client's address when it was learnt after the request (TLS above).
                    if let (Role::Server, Some(peer)) = (role, peer) {
                        data.meta.entry("network.client.ip".to_string()).or_insert_with(|| peer.ip().to_string());
                    }
                };
                match role {
                    Role::Server => {
                        self.parents.request_ended(event.tgid, id);
                        contexts.end(tid, id, exchange.ended_ns, finish);
                    }
                    Role::Client => {
                        // False when its parent ended first (it ended with it).
                        contexts.end_detached(id, exchange.ended_ns, finish);
                        if let Some(local) = connection.local {
                            callers.call_ended(local, id);
                        }
                    }
                }
                continue;
            }
            let mut data = self.request_data(&exchange.request, role, connection);
            add_response(&mut data, &exchange, role, &self.header_tags);
            let (tgid, tid, started, ended) = (event.tgid, event.tid, exchange.started_ns, exchange.ended_ns);
            let parent =
                if role == Role::Client { self.parents.for_call(tgid, started) } else { ClientParent::CallingThread };
            match parent {
                ClientParent::CallingThread => {
                    contexts.record_within(tgid, tid, connection.opened_within, started, ended, data)
                }
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
    fn request_data(&self, request: &MessageHead, role: Role, connection: &Connection) -> ContextData {
        let scheme = if connection.tls { "https" } else { "http" };
        let mut data = request_data(request, role, scheme, connection.peer, &self.obfuscator);
        data.meta.extend(self.header_tags.request_tags(&request.headers));
        data
    }
}

/// The `http.request` context of a request, tagged as dd-trace-py tags its web and client spans.
fn request_data(
    request: &MessageHead,
    role: Role,
    scheme: &str,
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
        .with_meta("http.url", build_http_url(scheme, &host, port, target, obfuscator));
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

/// The caller's part of the trace that travels with it, on the local root as dd-trace-py puts it:
/// its sampling decision (kept as is: every service of a trace keeps or drops it together), its
/// origin, and its propagated `_dd.p.*` tags.
fn continue_callers_decision(data: &mut ContextData, caller: ExtractedContext) {
    if let Some(priority) = caller.sampling_priority {
        data.metrics.insert("_sampling_priority_v1".to_string(), f64::from(priority));
    }
    if let Some(origin) = caller.origin {
        data.meta.insert("_dd.origin".to_string(), origin);
    }
    data.meta.extend(caller.tags);
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

#[cfg(test)]
#[path = "sockets_tls_tests.rs"]
mod tls_tests;
