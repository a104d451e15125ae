//! What a wire protocol gives the stream layer, and what the layer gives it.
//!
//! The layer follows connections and hands each one's bytes, in order and by direction, to the
//! protocol that recognised its first bytes. A protocol parses and pairs its messages and opens
//! and ends contexts for them; it never sees sockets, TLS sessions or fds.

use std::{net::SocketAddr, sync::Arc};

use super::{
    client_parent::{ClientParent, ClientParents},
    linking::CallerIndex,
};
use crate::{
    core::{ContextData, ContextId, ContextTree},
    interpreters::python::NamedFrame,
};

/// The side of the connection the traced process is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Accepted the connection: reads requests, writes responses.
    Server,
    /// Opened the connection: writes requests, reads responses.
    Client,
}

/// The direction of a read or write, seen from the traced process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Read,
    Write,
}

/// What is known of a connection, whatever it speaks.
#[derive(Debug, Clone)]
pub struct ConnectionFacts {
    pub role: Role,
    pub peer: Option<SocketAddr>,
    /// This end's address, when the kernel could read it.
    pub local: Option<SocketAddr>,
    /// Plaintext of a TLS session (seen at the TLS library).
    pub tls: bool,
    /// The innermost context of the thread that opened the connection, when it opened it.
    pub opened_within: Option<ContextId>,
    /// Open before the agent attached: its first bytes seen were mid-stream.
    pub adopted: bool,
}

impl ConnectionFacts {
    /// The direction requests travel in, from this end: a server reads them, a client writes them.
    pub fn requests_go(&self) -> Direction {
        match self.role {
            Role::Server => Direction::Read,
            Role::Client => Direction::Write,
        }
    }
}

/// One read or write of a connection: its first bytes (the capture) and its real length.
#[derive(Debug, Clone, Copy)]
pub struct Segment<'a> {
    pub tgid: u32,
    pub tid: u32,
    pub ktime_ns: u64,
    pub direction: Direction,
    /// What was captured: the first bytes, at most the capture size.
    pub data: &'a [u8],
    /// How many bytes the call moved (`data` may be shorter).
    pub length: usize,
    /// For a write the kernel recorded the caller of: the interpreter frames (innermost first)
    /// of the code that made it.
    pub caller: Option<&'a Arc<[NamedFrame]>>,
    /// Go processes: the goroutine the bytes moved for (0: not known).
    pub goroutine: u64,
}

/// Where and when something happened on a connection that carries no bytes (a close).
#[derive(Debug, Clone, Copy)]
pub struct Moment {
    pub tgid: u32,
    pub tid: u32,
    pub ktime_ns: u64,
    /// Go processes: the goroutine the bytes moved for (0: not known).
    pub goroutine: u64,
}

impl Segment<'_> {
    pub fn moment(&self) -> Moment {
        Moment { tgid: self.tgid, tid: self.tid, ktime_ns: self.ktime_ns, goroutine: self.goroutine }
    }
}

/// What the layer keeps across connections and protocols for their spans.
#[derive(Debug)]
pub struct StreamServices {
    /// Which request a client call of a process belongs to, when its threads do not tell (Go).
    pub parents: ClientParents,
    /// The client connections of traced processes, to link a traced server to its caller.
    pub callers: CallerIndex,
    next_frame: u64,
}

impl Default for StreamServices {
    fn default() -> Self {
        Self { parents: ClientParents::default(), callers: CallerIndex::default(), next_frame: u64::MAX }
    }
}

impl StreamServices {
    /// A frame for a server context: above every real stack address (so calls made while serving
    /// nest inside) and each below the previous one (so a pipelined request never looks like the
    /// return of the one before it).
    pub fn next_server_frame(&mut self) -> u64 {
        let frame = self.next_frame;
        self.next_frame -= 1;
        frame
    }

    /// Opens the context of a client call (an outgoing request, a database query) that was
    /// written `at` and started at `started_ns`, off the thread's stack, under the parent the
    /// client-call rule gives (see [`ClientParents`]).
    pub fn start_client_call(
        &self,
        at: Moment,
        started_ns: u64,
        facts: &ConnectionFacts,
        data: ContextData,
        contexts: &mut ContextTree,
    ) -> ContextId {
        let (tgid, tid) = (at.tgid, at.tid);
        match self.parents.for_call(tgid, started_ns, at.goroutine) {
            ClientParent::CallingThread => {
                contexts.start_detached_within(tgid, tid, facts.opened_within, started_ns, data)
            }
            ClientParent::Request { tid: parent_tid, id } => {
                contexts.start_detached_under(Some((parent_tid, id)), tgid, tid, started_ns, data)
            }
            ClientParent::NewTrace => contexts.start_detached_under(None, tgid, tid, started_ns, data),
        }
    }
}

/// A protocol the layer can recognise on a connection: registered in one place
/// (`integrations::wire_protocols`), like library integrations.
pub trait WireProtocol: Send {
    fn name(&self) -> &'static str;
    /// Whether `segment` starts a message of this protocol as it would travel in its direction
    /// from `facts.role`'s end: the first segment of a new connection, or any segment of one
    /// adopted mid-stream until a protocol says yes. The peer's port may be a hint, never proof.
    fn recognises(&self, segment: &Segment<'_>, facts: &ConnectionFacts) -> bool;
    /// The state of one connection that speaks it, from the recognised segment on.
    fn open(&self, facts: &ConnectionFacts) -> Box<dyn ProtocolConnection>;
}

/// One connection's parser and pairing, and the contexts of its messages.
pub trait ProtocolConnection: Send {
    /// The next read or write, in order.
    fn on_data(
        &mut self,
        segment: &Segment<'_>,
        facts: &ConnectionFacts,
        services: &mut StreamServices,
        contexts: &mut ContextTree,
    );
    /// The connection closed: what waits for an answer ends as the protocol says.
    fn on_close(
        &mut self,
        at: Moment,
        facts: &ConnectionFacts,
        services: &mut StreamServices,
        contexts: &mut ContextTree,
    );
}
