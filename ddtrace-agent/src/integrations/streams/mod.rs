//! The connections of traced processes as byte streams, whatever they speak: socket activity
//! from the kernel's system call tracepoints and TLS plaintext from the TLS library probes become,
//! per connection, reads and writes in order, handed to the wire protocol that recognised the
//! connection's first bytes ([`WireProtocol`]: HTTP/1.x, Redis...). The layer knows no protocol.
//!
//! - A stream is a socket of a process (its fd), or the plaintext of a TLS session seen at the
//!   library (its `SSL*`), tied to the socket whose fd the kernel saw it use (or, for a read
//!   served from the library's buffer, the fd it used before) and closed with that socket. The
//!   socket's own bytes are then ciphertext, which no protocol recognises.
//! - The first segment of a new connection decides what it speaks; nothing recognised it: the
//!   connection is ignored to its close, and the kernel is told to stop copying its bytes. A
//!   connection open before the agent attached (adopted) is mid-stream: each segment is offered
//!   until one starts a message a protocol recognises, up to 64, then it is ignored the same way.
//! - [`StreamServices`] holds what spans across connections need: the parent of a client call
//!   when threads do not tell ([`client_parent`]) and the link between a traced client and a
//!   traced server ([`linking`]).

pub mod client_parent;
pub mod framing;
pub mod linking;
mod protocol;
#[cfg(any(test, feature = "fuzzing"))]
pub mod replay;

use std::{collections::HashMap, net::SocketAddr, sync::Arc};

pub use protocol::{
    ConnectionFacts, Direction, Moment, ProtocolConnection, Role, Segment, StreamServices, WireProtocol,
};

use crate::{
    core::ContextTree,
    interpreters::python::NamedFrame,
    probes::{SocketActivity, SocketOp},
};
use ddtrace_common::FD_UNKNOWN;

/// The byte stream a connection follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Stream {
    /// What the socket carries: clear text, or ciphertext no protocol recognises.
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

/// Segments of a connection found open at attach offered to the protocols before it counts as
/// speaking none of them (a mid-stream connection waits for a message start; not forever).
const MAX_OFFERS: u32 = 64;

/// What a connection speaks.
enum Speaks {
    /// Nothing recognised yet (a connection adopted mid-stream: so many segments offered).
    NotYet(u32),
    Protocol(Box<dyn ProtocolConnection>),
    /// Its first bytes matched no protocol: ignored to its close.
    Nothing,
}

struct Connection {
    facts: ConnectionFacts,
    /// For a TLS session: the fd of the socket it was last seen using.
    socket_fd: Option<u32>,
    speaks: Speaks,
    /// For a socket seen accepted or connected: the time of that event (which socket this is).
    opened_ktime_ns: Option<u64>,
}

/// A socket no protocol is spoken on: its reads and writes need not be reported any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SilentSocket {
    pub tgid: u32,
    pub fd: u32,
    /// When it was accepted or connected (which socket of that fd number).
    pub opened_ktime_ns: u64,
}

/// Connections seen, by what their first bytes said.
#[derive(Debug, Default, Clone)]
pub struct StreamStats {
    /// Per protocol, in registration order: connections recognised.
    pub recognised: Vec<(&'static str, u64)>,
    /// Connections whose first bytes no protocol recognised (ciphertext under TLS, among others).
    pub unrecognised: u64,
}

impl std::fmt::Display for StreamStats {
    /// `connections: http=3 postgresql=1 ... unrecognised=2`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "connections:")?;
        for (protocol, count) in &self.recognised {
            write!(f, " {protocol}={count}")?;
        }
        write!(f, " unrecognised={}", self.unrecognised)
    }
}

/// Follows the connections of traced processes and hands their bytes to their protocols.
pub struct StreamLayer {
    protocols: Vec<Box<dyn WireProtocol>>,
    connections: HashMap<Stream, Connection>,
    /// The TLS session last seen on each socket (tgid, fd).
    session_of_socket: HashMap<(u32, u32), u64>,
    services: StreamServices,
    stats: StreamStats,
    /// Sockets found to speak nothing since the last [`StreamLayer::take_silent`].
    silent: Vec<SilentSocket>,
}

impl StreamLayer {
    pub fn new(protocols: Vec<Box<dyn WireProtocol>>) -> Self {
        let recognised = protocols.iter().map(|p| (p.name(), 0)).collect();
        Self {
            protocols,
            connections: HashMap::new(),
            session_of_socket: HashMap::new(),
            services: StreamServices::default(),
            stats: StreamStats { recognised, unrecognised: 0 },
            silent: Vec::new(),
        }
    }

    /// The sockets found to speak no known protocol since the last call: the kernel can stop
    /// reporting their reads and writes.
    pub fn take_silent(&mut self) -> Vec<SilentSocket> {
        std::mem::take(&mut self.silent)
    }

    pub fn stats(&self) -> &StreamStats {
        &self.stats
    }

    /// Follows one socket system call or TLS library call.
    pub fn on_socket(&mut self, event: &SocketActivity, contexts: &mut ContextTree) {
        self.on_socket_from(event, None, contexts)
    }

    /// As [`Self::on_socket`], for a write whose `caller` (the interpreter frames of the code
    /// that made it) the kernel recorded.
    pub fn on_socket_from(
        &mut self,
        event: &SocketActivity,
        caller: Option<&Arc<[NamedFrame]>>,
        contexts: &mut ContextTree,
    ) {
        let socket = Stream::Socket { tgid: event.tgid, fd: event.fd };
        match event.op {
            SocketOp::Accepted | SocketOp::Connected => {
                // A new socket on a reused fd: the old one's TLS session ended with it, and so
                // did the old socket.
                self.close_tls_session_of(event, contexts);
                self.close(socket, event, contexts);
                let role = if event.op == SocketOp::Accepted { Role::Server } else { Role::Client };
                let (peer, local) = (event.peer, event.local);
                if let (Role::Client, Some(local)) = (role, local) {
                    self.services.callers.client_connected((event.tgid, event.fd), local, peer);
                }
                let facts = ConnectionFacts {
                    role,
                    peer,
                    local,
                    tls: false,
                    opened_within: contexts.innermost(event.tid),
                    adopted: false,
                };
                let connection = Connection {
                    facts,
                    socket_fd: None,
                    speaks: Speaks::NotYet(0),
                    opened_ktime_ns: Some(event.ktime_ns),
                };
                self.connections.insert(socket, connection);
            }
            SocketOp::Received | SocketOp::Sent => {
                let stream = match event.tls_session {
                    Some(session) => self.tls_stream(event, session, contexts),
                    None => socket,
                };
                let Some(connection) = self.connections.get_mut(&stream) else { return };
                let segment = Segment {
                    tgid: event.tgid,
                    tid: event.tid,
                    ktime_ns: event.ktime_ns,
                    direction: if event.op == SocketOp::Received { Direction::Read } else { Direction::Write },
                    data: &event.data,
                    length: usize::try_from(event.length).unwrap_or(usize::MAX),
                    caller,
                    goroutine: event.goroutine,
                };
                if let Speaks::NotYet(offered) = connection.speaks {
                    connection.speaks =
                        recognise(&self.protocols, &segment, &connection.facts, offered, &mut self.stats);
                    if let (Speaks::Nothing, Stream::Socket { tgid, fd }, Some(opened_ktime_ns)) =
                        (&connection.speaks, stream, connection.opened_ktime_ns)
                    {
                        self.silent.push(SilentSocket { tgid, fd, opened_ktime_ns });
                    }
                }
                if let Speaks::Protocol(protocol) = &mut connection.speaks {
                    protocol.on_data(&segment, &connection.facts, &mut self.services, contexts);
                }
            }
            SocketOp::Closed => {
                self.close_tls_session_of(event, contexts);
                self.close(socket, event, contexts);
            }
        }
    }

    /// Follows a connection the process had open before the agent attached (the kernel was told
    /// of its fd too). Its first message seen is the first a protocol recognises.
    pub fn adopt(&mut self, tgid: u32, fd: u32, accepted: bool, peer: SocketAddr) {
        // No local address: requests on it cannot be paired with the other end's by their index
        // (neither end saw the connection's first request). Opened before the attach: within
        // nothing the agent knows of.
        let facts = ConnectionFacts {
            role: if accepted { Role::Server } else { Role::Client },
            peer: Some(peer),
            local: None,
            tls: false,
            opened_within: None,
            adopted: true,
        };
        self.connections
            // Told to the kernel with no connection time (`adopt_socket`): 0 names it.
            .insert(
                Stream::Socket { tgid, fd },
                Connection { facts, socket_fd: None, speaks: Speaks::NotYet(0), opened_ktime_ns: Some(0) },
            );
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
        let socket = fd.and_then(|fd| self.connections.get(&Stream::Socket { tgid, fd })).map(|s| s.facts.clone());
        match self.connections.get_mut(&stream) {
            Some(connection) => {
                connection.socket_fd = fd;
                // A session whose first plaintext came from the library's buffer (a request that
                // arrived with the handshake's last bytes) learns its socket on a later call.
                if let (None, Some(socket)) = (connection.facts.peer, socket) {
                    (connection.facts.peer, connection.facts.local) = (socket.peer, socket.local);
                }
            }
            None => {
                // The socket's side when the kernel saw it accepted or connected; else who spoke
                // first (in the protocols we know, the client does).
                // A session on a socket open before the attach is mid-stream as that socket is.
                let facts = match socket {
                    Some(socket) => ConnectionFacts { tls: true, ..socket },
                    None => ConnectionFacts {
                        role: if event.op == SocketOp::Sent { Role::Client } else { Role::Server },
                        peer: None,
                        local: None,
                        tls: true,
                        opened_within: None,
                        adopted: false,
                    },
                };
                let connection = Connection { facts, socket_fd: fd, speaks: Speaks::NotYet(0), opened_ktime_ns: None };
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

    /// Ends `stream`: what waits for an answer ends as its protocol says.
    fn close(&mut self, stream: Stream, event: &SocketActivity, contexts: &mut ContextTree) {
        let Some(mut connection) = self.connections.remove(&stream) else { return };
        if let Speaks::Protocol(protocol) = &mut connection.speaks {
            let at = Moment { tgid: event.tgid, tid: event.tid, ktime_ns: event.ktime_ns, goroutine: event.goroutine };
            protocol.on_close(at, &connection.facts, &mut self.services, contexts);
        }
        if let (Stream::Socket { tgid, fd }, Role::Client, Some(local)) =
            (stream, connection.facts.role, connection.facts.local)
        {
            self.services.callers.client_closed((tgid, fd), local);
        }
    }

    /// Says whether process `tgid` serves requests on threads they do not own (Go's goroutines):
    /// then a client call's parent is not taken from its thread.
    pub fn set_threads_shared(&mut self, tgid: u32, shared: bool) {
        self.services.parents.set_threads_shared(tgid, shared);
    }

    /// Forgets the connections of a process that exited.
    pub fn process_exited(&mut self, tgid: u32) {
        self.services.parents.process_exited(tgid);
        self.connections.retain(|stream, _| stream.tgid() != tgid);
        self.session_of_socket.retain(|(pid, _), _| *pid != tgid);
        self.services.callers.process_exited(tgid);
    }
}

/// What `segment`, a connection's first (or, adopted, its next after `offered` others), says the
/// connection speaks.
fn recognise(
    protocols: &[Box<dyn WireProtocol>],
    segment: &Segment<'_>,
    facts: &ConnectionFacts,
    offered: u32,
    stats: &mut StreamStats,
) -> Speaks {
    if let Some(index) = protocols.iter().position(|p| p.recognises(segment, facts)) {
        stats.recognised[index].1 += 1;
        return Speaks::Protocol(protocols[index].open(facts));
    }
    if facts.adopted && offered + 1 < MAX_OFFERS {
        return Speaks::NotYet(offered + 1);
    }
    stats.unrecognised += 1;
    Speaks::Nothing
}

#[cfg(test)]
#[path = "tls_tests.rs"]
mod tls_tests;

#[cfg(test)]
#[path = "garbage_tests.rs"]
mod garbage_tests;
