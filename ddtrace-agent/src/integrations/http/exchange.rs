//! Request/response pairing for one connection.
//!
//! Requests are queued in order (pipelining allows several before the first response) and each
//! final response completes the oldest one. Which syscall direction carries requests depends on
//! the side the traced process is on: a server reads requests and writes responses, a client
//! writes requests and reads responses.

use std::{collections::VecDeque, sync::Arc};

use super::{
    headers::KeptHeaders,
    message_parser::{IgnoreReason, MessageHead, MessageKind, MessageParser, ParseEvent, ParserLimits},
};

pub use crate::integrations::streams::{Direction, Role};

/// How an exchange ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeOutcome {
    /// The response was seen to its last byte.
    Complete,
    /// A response head was seen, but not the end of its body (connection closed early, framing
    /// lost, or truncated head).
    ResponseIncomplete,
    /// The connection closed before any response: a connection failure.
    NoResponse,
}

/// One request and its response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    pub request: MessageHead,
    pub response: Option<MessageHead>,
    /// The first byte of the request was seen.
    pub started_ns: u64,
    /// The last byte of the response was seen (or the close, without response).
    pub ended_ns: u64,
    pub outcome: ExchangeOutcome,
}

impl Exchange {
    /// The response status, if a response was seen.
    pub fn status(&self) -> Option<u16> {
        self.response.as_ref().and_then(MessageHead::status)
    }

    /// Whether a span for this exchange is an error: a 5xx, or no response at all (the issue's
    /// "connection failures are errors"; a 4xx is the caller's fault, as in dd-trace-py).
    pub fn is_error(&self) -> bool {
        self.outcome == ExchangeOutcome::NoResponse || self.status().is_some_and(|s| s >= 500)
    }
}

/// Requests waiting for a response, per connection; beyond this, new requests are dropped (a
/// peer that never answers must not make us grow).
const MAX_OUTSTANDING: usize = 64;

/// Counters for what could not be paired.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PairingStats {
    /// Responses with no request waiting (its request was lost or never seen).
    pub orphan_responses: u64,
    /// Requests dropped because too many were waiting.
    pub dropped_requests: u64,
}

/// Follows one connection of a traced process and reports its exchanges.
#[derive(Debug)]
pub struct ConnectionTracker {
    role: Role,
    requests: MessageParser,
    responses: MessageParser,
    outstanding: VecDeque<MessageHead>,
    /// The head of the response being received for `outstanding.front()`.
    response: Option<MessageHead>,
    /// The next response `End` belongs to a response that completes nothing (interim or orphan).
    skip_next_end: bool,
    events: Vec<ParseEvent>,
    stats: PairingStats,
    /// Request heads seen so far (for callers that act when a request starts).
    requests_seen: u64,
}

impl ConnectionTracker {
    /// A tracker for a connection on which the traced process plays `role`.
    pub fn new(role: Role, limits: ParserLimits, kept: Arc<KeptHeaders>) -> Self {
        Self {
            role,
            requests: MessageParser::new(MessageKind::Request, limits, kept.clone()),
            responses: MessageParser::new(MessageKind::Response, limits, kept),
            outstanding: VecDeque::new(),
            response: None,
            skip_next_end: false,
            events: Vec::new(),
            stats: PairingStats::default(),
            requests_seen: 0,
        }
    }

    /// The side the traced process is on.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Whether nothing more can come out of this connection (not HTTP, upgraded, closed), so the
    /// caller can stop capturing it.
    pub fn is_ignored(&self) -> bool {
        let requests = self.requests.ignoring();
        requests.is_some() && (requests != Some(IgnoreReason::LostSync) || self.responses.ignoring().is_some())
    }

    /// How many request heads were seen: compare before and after [`Self::on_data`] to learn
    /// that requests started, and read them with [`Self::latest_requests`].
    pub fn requests_seen(&self) -> u64 {
        self.requests_seen
    }

    /// The `n` latest requests still waiting for their response, oldest first.
    pub fn latest_requests(&self, n: usize) -> impl Iterator<Item = &MessageHead> {
        self.outstanding.iter().skip(self.outstanding.len().saturating_sub(n))
    }

    /// Pairing counters.
    pub fn stats(&self) -> PairingStats {
        self.stats
    }

    /// A read or write of `len` bytes, of which `captured` are the first ones, at `ts_ns`.
    /// Completed exchanges are appended to `out`.
    pub fn on_data(&mut self, direction: Direction, captured: &[u8], len: usize, ts_ns: u64, out: &mut Vec<Exchange>) {
        let carries_requests =
            matches!((self.role, direction), (Role::Server, Direction::Read) | (Role::Client, Direction::Write));
        let mut events = std::mem::take(&mut self.events);
        if carries_requests {
            self.requests.feed(captured, len, ts_ns, &mut events);
            self.on_request_events(&mut events);
        } else {
            self.responses.feed(captured, len, ts_ns, &mut events);
            self.on_response_events(&mut events, out);
        }
        self.events = events;
    }

    /// The connection closed at `ts_ns`: close-delimited responses end, and requests still waiting
    /// become [`ExchangeOutcome::NoResponse`] exchanges.
    pub fn on_close(&mut self, ts_ns: u64, out: &mut Vec<Exchange>) {
        let mut events = std::mem::take(&mut self.events);
        self.requests.finish(ts_ns, &mut events);
        self.on_request_events(&mut events);
        self.responses.finish(ts_ns, &mut events);
        self.on_response_events(&mut events, out);
        if let Some(response) = self.response.take() {
            // A response head without an End cannot happen after finish(); keep it anyway.
            if let Some(request) = self.outstanding.pop_front() {
                out.push(exchange(request, Some(response), ts_ns, ExchangeOutcome::ResponseIncomplete));
            }
        }
        for request in self.outstanding.drain(..) {
            out.push(exchange(request, None, ts_ns, ExchangeOutcome::NoResponse));
        }
        self.events = events;
    }

    fn on_request_events(&mut self, events: &mut Vec<ParseEvent>) {
        for event in events.drain(..) {
            // Request ends do not matter: an exchange starts with its request and ends with its
            // response.
            let ParseEvent::Head(head) = event else { continue };
            if self.outstanding.len() >= MAX_OUTSTANDING {
                self.stats.dropped_requests += 1;
                continue;
            }
            self.responses.expect_response_to(head.method().unwrap_or_default());
            self.outstanding.push_back(head);
            self.requests_seen += 1;
        }
    }

    fn on_response_events(&mut self, events: &mut Vec<ParseEvent>, out: &mut Vec<Exchange>) {
        for event in events.drain(..) {
            match event {
                ParseEvent::Head(head) => {
                    // Interim responses (100 Continue, 103 Early Hints) precede the real one.
                    if head.status().is_some_and(|s| (100..200).contains(&s) && s != 101) {
                        self.skip_next_end = true;
                        continue;
                    }
                    if self.outstanding.is_empty() {
                        self.stats.orphan_responses += 1;
                        self.skip_next_end = true;
                    } else {
                        self.skip_next_end = false;
                        self.response = Some(head);
                    }
                }
                ParseEvent::End { ended_ns, complete } => {
                    if std::mem::take(&mut self.skip_next_end) {
                        continue;
                    }
                    let (Some(response), Some(request)) = (self.response.take(), self.outstanding.pop_front()) else {
                        continue;
                    };
                    let outcome = match complete && !response.is_truncated() {
                        true => ExchangeOutcome::Complete,
                        false => ExchangeOutcome::ResponseIncomplete,
                    };
                    out.push(exchange(request, Some(response), ended_ns, outcome));
                }
            }
        }
        if self.responses.ignoring() == Some(IgnoreReason::Upgraded) {
            // After 101 or a CONNECT tunnel, requests no longer flow either.
            self.requests.stop(IgnoreReason::Upgraded);
        }
    }
}

fn exchange(request: MessageHead, response: Option<MessageHead>, ended_ns: u64, outcome: ExchangeOutcome) -> Exchange {
    Exchange { started_ns: request.started_ns, request, response, ended_ns, outcome }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker(role: Role) -> ConnectionTracker {
        ConnectionTracker::new(role, ParserLimits::default(), Arc::new(KeptHeaders::none().with(["host"])))
    }

    fn send(t: &mut ConnectionTracker, direction: Direction, bytes: &[u8], ts: u64) -> Vec<Exchange> {
        let mut out = Vec::new();
        t.on_data(direction, bytes, bytes.len(), ts, &mut out);
        out
    }

    #[test]
    fn server_pairs_a_request_with_its_response() {
        let mut t = tracker(Role::Server);
        assert!(send(&mut t, Direction::Read, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n", 10).is_empty());
        let got = send(&mut t, Direction::Write, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 20);
        assert_eq!(got.len(), 1);
        let e = &got[0];
        assert_eq!(e.request.target(), Some("/a"));
        assert_eq!(e.request.header("host"), Some("x"));
        assert_eq!(e.status(), Some(200));
        assert_eq!((e.started_ns, e.ended_ns), (10, 20));
        assert_eq!(e.outcome, ExchangeOutcome::Complete);
        assert!(!e.is_error());
    }

    #[test]
    fn client_writes_requests_and_reads_responses() {
        let mut t = tracker(Role::Client);
        send(&mut t, Direction::Write, b"HEAD /x HTTP/1.1\r\n\r\n", 1);
        let got = send(&mut t, Direction::Read, b"HTTP/1.1 503 Busy\r\nContent-Length: 50\r\n\r\n", 2);
        assert_eq!(got[0].status(), Some(503), "a HEAD response has no body");
        assert!(got[0].is_error());
    }

    #[test]
    fn body_end_is_the_exchange_end() {
        let mut t = tracker(Role::Client);
        send(&mut t, Direction::Write, b"GET / HTTP/1.1\r\n\r\n", 1);
        let mut out = Vec::new();
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 10000\r\n\r\n";
        t.on_data(Direction::Read, head, head.len() + 5000, 2, &mut out);
        assert!(out.is_empty());
        t.on_data(Direction::Read, &[], 5000, 3, &mut out);
        assert_eq!(out[0].ended_ns, 3);
    }

    #[test]
    fn pipelined_requests_complete_in_order() {
        let mut t = tracker(Role::Server);
        send(&mut t, Direction::Read, b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\nGET /3 HTTP/1.1\r\n\r\n", 1);
        let responses = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\naHTTP/1.1 404 NF\r\nContent-Length: 0\r\n\r\n";
        let mut got = send(&mut t, Direction::Write, responses, 2);
        got.extend(send(&mut t, Direction::Write, b"HTTP/1.1 500 E\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 3));
        let pairs: Vec<_> = got.iter().map(|e| (e.request.target().unwrap(), e.status().unwrap())).collect();
        assert_eq!(pairs, [("/1", 200), ("/2", 404), ("/3", 500)]);
    }

    #[test]
    fn interim_responses_do_not_complete_the_request() {
        let mut t = tracker(Role::Client);
        send(&mut t, Direction::Write, b"POST /u HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n", 1);
        assert!(send(&mut t, Direction::Read, b"HTTP/1.1 100 Continue\r\n\r\n", 2).is_empty());
        send(&mut t, Direction::Write, b"abc", 3);
        let got = send(&mut t, Direction::Read, b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n", 4);
        assert_eq!(got[0].status(), Some(201));
        assert_eq!((got[0].started_ns, got[0].ended_ns), (1, 4));
    }

    #[test]
    fn close_with_outstanding_requests_fails_them() {
        let mut t = tracker(Role::Client);
        send(&mut t, Direction::Write, b"GET /slow HTTP/1.1\r\n\r\n", 1);
        let mut out = Vec::new();
        t.on_close(9, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].outcome, ExchangeOutcome::NoResponse);
        assert_eq!(out[0].ended_ns, 9);
        assert!(out[0].is_error());
    }

    #[test]
    fn close_ends_a_close_delimited_response() {
        let mut t = tracker(Role::Client);
        send(&mut t, Direction::Write, b"GET / HTTP/1.0\r\n\r\n", 1);
        assert!(send(&mut t, Direction::Read, b"HTTP/1.0 200 OK\r\n\r\nbody", 2).is_empty());
        let mut out = Vec::new();
        t.on_close(3, &mut out);
        assert_eq!(out[0].outcome, ExchangeOutcome::Complete);
        assert_eq!(out[0].ended_ns, 2);
    }

    #[test]
    fn close_mid_body_is_incomplete() {
        let mut t = tracker(Role::Server);
        send(&mut t, Direction::Read, b"GET / HTTP/1.1\r\n\r\n", 1);
        send(&mut t, Direction::Write, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", 2);
        let mut out = Vec::new();
        t.on_close(3, &mut out);
        assert_eq!(out[0].outcome, ExchangeOutcome::ResponseIncomplete);
    }

    #[test]
    fn orphan_responses_are_dropped() {
        let mut t = tracker(Role::Server);
        assert!(send(&mut t, Direction::Write, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 1).is_empty());
        assert_eq!(t.stats().orphan_responses, 1);
        send(&mut t, Direction::Read, b"GET / HTTP/1.1\r\n\r\n", 2);
        assert_eq!(send(&mut t, Direction::Write, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 3).len(), 1);
    }

    #[test]
    fn truncated_response_head_still_pairs() {
        let mut t = tracker(Role::Client);
        send(&mut t, Direction::Write, b"GET /a HTTP/1.1\r\n\r\n", 1);
        let mut out = Vec::new();
        t.on_data(Direction::Read, b"HTTP/1.1 500 Oops\r\nSet-Cookie: aaaa", 9000, 2, &mut out);
        send(&mut t, Direction::Write, b"GET /b HTTP/1.1\r\n\r\n", 3);
        out.extend(send(&mut t, Direction::Read, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 4));
        let got: Vec<_> = out.iter().map(|e| (e.request.target().unwrap(), e.status(), e.outcome)).collect();
        assert_eq!(
            got,
            [("/a", Some(500), ExchangeOutcome::ResponseIncomplete), ("/b", Some(200), ExchangeOutcome::Complete)]
        );
        assert_eq!(out[0].ended_ns, 2);
    }

    #[test]
    fn upgrade_stops_both_directions() {
        let mut t = tracker(Role::Server);
        send(&mut t, Direction::Read, b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", 1);
        let got = send(&mut t, Direction::Write, b"HTTP/1.1 101 Switching Protocols\r\n\r\n", 2);
        assert_eq!(got[0].status(), Some(101));
        assert!(send(&mut t, Direction::Read, b"GET /not-http-anymore HTTP/1.1\r\n\r\n", 3).is_empty());
        assert!(t.is_ignored());
    }

    #[test]
    fn non_http_connections_are_ignored() {
        let mut t = tracker(Role::Server);
        send(&mut t, Direction::Read, b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03", 1);
        assert!(t.is_ignored());
        let mut out = Vec::new();
        t.on_close(2, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn outstanding_requests_are_bounded() {
        let mut t = tracker(Role::Client);
        for i in 0..(MAX_OUTSTANDING as u64 + 10) {
            send(&mut t, Direction::Write, b"GET / HTTP/1.1\r\n\r\n", i);
        }
        assert_eq!(t.stats().dropped_requests, 10);
        let mut out = Vec::new();
        t.on_close(1000, &mut out);
        assert_eq!(out.len(), MAX_OUTSTANDING);
    }

    #[test]
    fn truncated_request_head_still_pairs() {
        let mut t = tracker(Role::Server);
        let mut out = Vec::new();
        t.on_data(Direction::Read, b"POST /upload HTTP/1.1\r\nHost: a\r\nCookie: zzz", 20000, 1, &mut out);
        t.on_data(Direction::Read, b"more body", 50000, 2, &mut out);
        out.extend(send(&mut t, Direction::Write, b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n", 3));
        assert_eq!(out.len(), 1);
        assert!(out[0].request.is_truncated());
        assert_eq!(out[0].request.header("host"), Some("a"));
        assert_eq!(out[0].status(), Some(201));
    }

    #[test]
    fn random_bytes_in_both_directions_make_no_exchange() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..300 {
            let mut t = tracker(if next() % 2 == 0 { Role::Server } else { Role::Client });
            let mut out = Vec::new();
            for ts in 0..20 {
                let bytes: Vec<u8> = (0..next() % 600).map(|_| next() as u8).collect();
                let len = bytes.len() + (next() % 3000) as usize;
                let direction = if next() % 2 == 0 { Direction::Read } else { Direction::Write };
                t.on_data(direction, &bytes, len, ts, &mut out);
            }
            t.on_close(99, &mut out);
            assert!(out.is_empty(), "{out:?}");
        }
    }

    #[test]
    fn a_thousand_keep_alive_exchanges() {
        let mut t = tracker(Role::Server);
        let mut all = Vec::new();
        for i in 0..1000u64 {
            let request = format!("GET /items/{i} HTTP/1.1\r\nHost: h\r\n\r\n");
            t.on_data(Direction::Read, request.as_bytes(), request.len(), 2 * i, &mut all);
            let response = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
            t.on_data(Direction::Write, response, response.len(), 2 * i + 1, &mut all);
        }
        assert_eq!(all.len(), 1000);
        assert!(all.iter().enumerate().all(|(i, e)| e.request.target() == Some(&format!("/items/{i}"))));
    }
}
