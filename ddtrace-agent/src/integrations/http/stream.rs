//! HTTP/1.x as a wire protocol of the stream layer: each request/response exchange of a
//! connection is an `http.request` context (server or client, by who opened the connection).
//!
//! A server context opens when the request head has been read, on the reading thread, as a local
//! root continuing the caller's trace when the request carries Datadog or W3C context headers;
//! what the thread does while serving (database calls, calls to other services) is its child. It
//! ends with the response. A client context opens when the request head has been written, as a
//! child of what is open on the thread (inside the context the connection was opened in, while
//! that is open: an event-driven server such as nginx proxies one request while it takes on
//! others), and ends with the response; it stays off the thread's stack (nothing the thread does
//! meanwhile is its child). When both ends of a connection are traced processes, the server's
//! context continues the client's (see `streams::linking`). In Go programs a thread does not
//! tell which request a call belongs to: see `streams::client_parent`.

use std::{collections::VecDeque, net::SocketAddr, sync::Arc};

use super::{
    build_http_url, client_library, resource_name, starts_request, ConnectionTracker, Exchange, ExchangeOutcome,
    ExtractedContext, HeaderTags, KeptHeaders, MessageHead, ParserLimits, QueryObfuscator, StyleList,
};
use crate::{
    config::SpanSchema,
    core::{ContextData, ContextError, ContextId, ContextTree, RemoteParent, SpanKind},
    integrations::handlers,
    integrations::streams::{
        client_parent::ClientParent, linking::Caller, ConnectionFacts, Moment, ProtocolConnection, Role, Segment,
        StreamServices, WireProtocol,
    },
    interpreters::python::NamedFrame,
};

/// What every HTTP connection shares: which headers to keep and tag, and how to read them.
struct HttpSettings {
    schema: SpanSchema,
    kept: Arc<KeptHeaders>,
    header_tags: HeaderTags,
    obfuscator: QueryObfuscator,
    propagation: StyleList,
}

/// HTTP/1.x, recognised by a request line where requests go (a client writes one, a server
/// reads one).
pub struct HttpProtocol {
    settings: Arc<HttpSettings>,
}

impl HttpProtocol {
    /// `header_tags`: the allow-list of headers copied into spans (`DD_TRACE_HEADER_TAGS`);
    /// `schema`: how client spans named after their library are named.
    pub fn new(header_tags: HeaderTags, schema: SpanSchema) -> Self {
        let settings = HttpSettings {
            schema,
            kept: Arc::new(KeptHeaders::for_tracing(&header_tags)),
            header_tags,
            obfuscator: QueryObfuscator::default(),
            propagation: StyleList::default(),
        };
        Self { settings: Arc::new(settings) }
    }
}

impl WireProtocol for HttpProtocol {
    fn name(&self) -> &'static str {
        "http"
    }

    fn recognises(&self, segment: &Segment<'_>, facts: &ConnectionFacts) -> bool {
        segment.direction == facts.requests_go() && starts_request(segment.data)
    }

    fn open(&self, facts: &ConnectionFacts) -> Box<dyn ProtocolConnection> {
        Box::new(HttpConnection {
            tracker: ConnectionTracker::new(facts.role, ParserLimits::default(), self.settings.kept.clone()),
            settings: self.settings.clone(),
            open: VecDeque::new(),
            exchanges: Vec::new(),
            caller: None,
        })
    }
}

/// One HTTP connection: its parser and pairing, and the contexts of its exchanges.
struct HttpConnection {
    tracker: ConnectionTracker,
    settings: Arc<HttpSettings>,
    /// Contexts opened for requests still waiting for their response: (thread, context).
    open: VecDeque<(u32, ContextId)>,
    /// Exchanges ended by the last segment (a buffer kept for its capacity).
    exchanges: Vec<Exchange>,
    /// A client's: the frames of the code that wrote the latest request bytes, when recorded.
    caller: Option<Arc<[NamedFrame]>>,
}

impl ProtocolConnection for HttpConnection {
    fn on_data(
        &mut self,
        segment: &Segment<'_>,
        facts: &ConnectionFacts,
        services: &mut StreamServices,
        contexts: &mut ContextTree,
    ) {
        // The frames of this write only: a later request written without any (a record the
        // ring dropped) keeps the traffic-level name rather than an earlier call's.
        if segment.direction == crate::integrations::streams::Direction::Write {
            self.caller = segment.caller.cloned();
        }
        let seen = self.tracker.requests_seen();
        self.tracker.on_data(segment.direction, segment.data, segment.length, segment.ktime_ns, &mut self.exchanges);
        let started = (self.tracker.requests_seen() - seen) as usize;
        if started > 0 {
            self.open_contexts(segment.moment(), facts, started, services, contexts);
        }
        self.finish(segment.moment(), facts, services, contexts);
    }

    fn on_close(
        &mut self,
        at: Moment,
        facts: &ConnectionFacts,
        services: &mut StreamServices,
        contexts: &mut ContextTree,
    ) {
        self.tracker.on_close(at.ktime_ns, &mut self.exchanges);
        self.finish(at, facts, services, contexts);
    }
}

impl HttpConnection {
    /// Opens a context for each of the `started` latest requests: a server's read them, a
    /// client's wrote them.
    fn open_contexts(
        &mut self,
        at: Moment,
        facts: &ConnectionFacts,
        started: usize,
        services: &mut StreamServices,
        contexts: &mut ContextTree,
    ) {
        // Index on the connection of the first of them: how the two ends' requests are paired.
        let first_index = self.tracker.requests_seen() - started as u64;
        for (index, head) in (first_index..).zip(self.tracker.latest_requests(started)) {
            let mut data = request_data_of(&self.settings, head, facts);
            if facts.role == Role::Client {
                if let Some(library) = self.caller.take().as_deref().and_then(client_library::library_of) {
                    data.name = library.name(self.settings.schema);
                    data.component = library.component;
                    data.integration_service = library.service(self.settings.schema);
                }
                let id = services.start_client_call(at, head.started_ns, facts, data, contexts);
                self.open.push_back((at.tid, id));
                if let Some(local) = facts.local {
                    services.callers.call_opened(local, index, id, contexts);
                }
                continue;
            }
            // A process seen serving through a framework: its requests as that framework's spans.
            let (method, target) = (head.method().unwrap_or_default(), head.target().unwrap_or_default());
            let path = target.split(['?', '#']).next().unwrap_or(target);
            if let Some(framework) = handlers::framework_request(at.tgid, self.settings.schema, method, path) {
                (data.name, data.component) = (framework.name, framework.component);
                if let Some(route) = framework.route {
                    handlers::name_after_route(&mut data, method, route);
                }
                if let Some(origin) = framework.origin {
                    origin.tag(&mut data);
                }
            }
            // A traced client at the other end is the real parent: its span is the call that
            // sent this request. Headers can only name a span of the caller's own tracer, if it
            // has one (in-process tracing besides ours), or of some hop further away; they are
            // the parent (and their sampling decision the trace's) only when the client end is
            // not traced.
            let caller = services.callers.caller(facts.peer, facts.local, index, contexts);
            let remote = match caller {
                Caller::Open(client_span) => Some(client_span),
                Caller::NotSeenYet | Caller::Unknown => {
                    self.settings.propagation.extract(&head.headers).map(|extracted| {
                        let remote = RemoteParent { trace_id: extracted.trace_id, parent_id: extracted.parent_id };
                        continue_callers_decision(&mut data, extracted);
                        remote
                    })
                }
            };
            let frame = services.next_server_frame();
            let id = contexts.start_root(at.tgid, at.tid, head.started_ns, frame, data, remote);
            self.open.push_back((at.tid, id));
            services.parents.request_opened(at.tgid, at.tid, id, head.started_ns, at.goroutine);
            if let (Caller::NotSeenYet, Some(peer)) = (caller, facts.peer) {
                services.callers.wait(peer, index, at.tid, id);
            }
        }
    }

    /// Ends the contexts of the exchanges that ended (recording whole those that had none).
    fn finish(
        &mut self,
        at: Moment,
        facts: &ConnectionFacts,
        services: &mut StreamServices,
        contexts: &mut ContextTree,
    ) {
        let role = facts.role;
        let header_tags = &self.settings.header_tags;
        for exchange in self.exchanges.drain(..) {
            if let Some((tid, id)) = self.open.pop_front() {
                let peer = facts.peer;
                let finish = |data: &mut ContextData| {
                    add_response(data, &exchange, role, header_tags);
                    // The client's address when it was learnt after the request (TLS above).
                    if let (Role::Server, Some(peer)) = (role, peer) {
                        data.meta.get_or_insert_with("network.client.ip".into(), || peer.ip().to_string());
                    }
                };
                match role {
                    Role::Server => {
                        services.parents.request_ended(at.tgid, id);
                        contexts.end(tid, id, exchange.ended_ns, finish);
                    }
                    Role::Client => {
                        // False when its parent ended first (it ended with it).
                        contexts.end_detached(id, exchange.ended_ns, finish);
                        if let Some(local) = facts.local {
                            services.callers.call_ended(local, id);
                        }
                    }
                }
                continue;
            }
            let mut data = request_data_of(&self.settings, &exchange.request, facts);
            add_response(&mut data, &exchange, role, header_tags);
            let (tgid, tid, started, ended) = (at.tgid, at.tid, exchange.started_ns, exchange.ended_ns);
            let parent = if role == Role::Client {
                // The response's moment names the client's read loop, not who sent the request.
                services.parents.for_call(tgid, started, 0)
            } else {
                ClientParent::CallingThread
            };
            match parent {
                ClientParent::CallingThread => {
                    contexts.record_within(tgid, tid, facts.opened_within, started, ended, data)
                }
                ClientParent::Request { tid: parent_tid, id } => {
                    contexts.record_under(Some((parent_tid, id)), tgid, tid, started, ended, data)
                }
                ClientParent::NewTrace => contexts.record_under(None, tgid, tid, started, ended, data),
            }
        }
    }
}

/// The request's context with its allow-listed headers.
fn request_data_of(settings: &HttpSettings, request: &MessageHead, facts: &ConnectionFacts) -> ContextData {
    let scheme = if facts.tls { "https" } else { "http" };
    let mut data = request_data(request, facts.role, scheme, facts.peer, &settings.obfuscator);
    data.meta.extend(settings.header_tags.request_tags(&request.headers).into_iter().map(|(k, v)| (k.into(), v)));
    data
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
        data.metrics.insert("_sampling_priority_v1".into(), f64::from(priority));
    }
    if let Some(origin) = caller.origin {
        data.meta.insert("_dd.origin".into(), origin);
    }
    data.meta.extend(caller.tags.into_iter().map(|(k, v)| (k.into(), v)));
}

/// What the response adds: the status, and the error for a connection that closed without an
/// answer, a 5xx, or for clients a 4xx too (dd-trace-py's `DD_TRACE_HTTP_CLIENT_ERROR_STATUSES`
/// default, 400-499; a 4xx is the caller's mistake, not the server's).
fn add_response(data: &mut ContextData, exchange: &Exchange, role: Role, header_tags: &HeaderTags) {
    if let Some(status) = exchange.status() {
        data.meta.insert("http.status_code".into(), status.to_string());
    }
    if let Some(response) = &exchange.response {
        data.meta.extend(header_tags.response_tags(&response.headers).into_iter().map(|(k, v)| (k.into(), v)));
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
