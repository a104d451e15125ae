//! Linking the two ends of a connection between traced processes: the client connections of
//! traced processes are indexed by their local address, so a traced server that read a request
//! on a connection from that address finds the client span that sent it and continues its trace,
//! with no header written into the target.
//!
//! Requests are matched by their index on the connection (the n-th request the client wrote is
//! the n-th the server read: HTTP/1.x keeps them in order). The client's write normally comes
//! first in the ring buffer, but not always: the server can be woken and read the bytes before
//! the client's system call returns and reports the write. A server request read first waits
//! here, and the client span adopts it when it opens.

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
};

use crate::core::{ContextId, ContextTree, RemoteParent};

/// Server requests waiting for their caller, per client connection: a bound, not a queue to grow.
const MAX_WAITING: usize = 64;

/// What is known of the client end of a server's connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// A traced client's span for this request is open: its trace and id.
    Open(RemoteParent),
    /// The client is traced but its request has not been seen yet: call [`CallerIndex::wait`].
    NotSeenYet,
    /// No traced client (or its span already ended).
    Unknown,
}

#[derive(Debug, Default)]
struct ClientEnd {
    /// The client's (process, fd), to tell a reused address from the connection we know.
    owner: (u32, u32),
    peer: Option<SocketAddr>,
    /// Requests opened on the connection so far.
    opened: u64,
    /// Client spans still open: (request index, context).
    open: VecDeque<(u64, ContextId)>,
    /// Server requests read before their call was seen: (request index, server thread, context).
    waiting: Vec<(u64, u32, ContextId)>,
}

/// Client connections of traced processes by local address.
#[derive(Debug, Default)]
pub struct CallerIndex {
    clients: HashMap<SocketAddr, ClientEnd>,
}

/// Addresses compared as the kernel sees them: an IPv4 peer of an IPv6 socket is `::ffff:a.b.c.d`.
fn canonical(address: SocketAddr) -> SocketAddr {
    SocketAddr::new(address.ip().to_canonical(), address.port())
}

impl CallerIndex {
    /// A traced process connected `owner` (process, fd) from `local` to `peer`.
    pub fn client_connected(&mut self, owner: (u32, u32), local: SocketAddr, peer: Option<SocketAddr>) {
        let end = ClientEnd { owner, peer: peer.map(canonical), ..ClientEnd::default() };
        self.clients.insert(canonical(local), end);
    }

    /// The client connection `owner` from `local` closed.
    pub fn client_closed(&mut self, owner: (u32, u32), local: SocketAddr) {
        let local = canonical(local);
        if self.clients.get(&local).is_some_and(|end| end.owner == owner) {
            self.clients.remove(&local);
        }
    }

    pub fn process_exited(&mut self, tgid: u32) {
        self.clients.retain(|_, end| end.owner.0 != tgid);
    }

    /// The client opened span `id` for its request number `index` on the connection from
    /// `local`; servers that already read that request continue its trace now.
    pub fn call_opened(&mut self, local: SocketAddr, index: u64, id: ContextId, contexts: &mut ContextTree) {
        let Some(end) = self.clients.get_mut(&canonical(local)) else { return };
        end.opened = end.opened.max(index + 1);
        end.open.push_back((index, id));
        let Some(trace_id) = contexts.trace_id(id) else { return };
        end.waiting.retain(|&(waiting_index, tid, server)| {
            if waiting_index == index {
                let linked = contexts.set_remote_parent(tid, server, RemoteParent { trace_id, parent_id: id });
                tracing::trace!(server, client = id, linked, "server request linked to its caller after it");
            }
            waiting_index > index
        });
    }

    /// The client span `id` of the connection from `local` ended.
    pub fn call_ended(&mut self, local: SocketAddr, id: ContextId) {
        if let Some(end) = self.clients.get_mut(&canonical(local)) {
            end.open.retain(|&(_, open)| open != id);
        }
    }

    /// The caller of request number `index` read by a server on a connection from `peer` to
    /// `local` (the server's own address, when known: it must be where the client connected).
    pub fn caller(
        &self,
        peer: Option<SocketAddr>,
        local: Option<SocketAddr>,
        index: u64,
        contexts: &ContextTree,
    ) -> Caller {
        let Some(end) = peer.and_then(|peer| self.clients.get(&canonical(peer))) else { return Caller::Unknown };
        if let (Some(dialed), Some(local)) = (end.peer, local.map(canonical)) {
            // Another network namespace can reuse the same address; the 4-tuple tells them apart.
            // A client that dialed the unspecified address reached the server on loopback.
            if dialed.port() != local.port() || !(dialed.ip() == local.ip() || dialed.ip().is_unspecified()) {
                return Caller::Unknown;
            }
        }
        if index >= end.opened {
            return Caller::NotSeenYet;
        }
        let Some(&(_, id)) = end.open.iter().find(|(open_index, _)| *open_index == index) else {
            return Caller::Unknown;
        };
        match contexts.trace_id(id) {
            Some(trace_id) => Caller::Open(RemoteParent { trace_id, parent_id: id }),
            None => Caller::Unknown,
        }
    }

    /// Server context `server` of thread `tid` serves request `index` from `peer`, whose call has
    /// not been seen yet (see [`Caller::NotSeenYet`]).
    pub fn wait(&mut self, peer: SocketAddr, index: u64, tid: u32, server: ContextId) {
        if let Some(end) = self.clients.get_mut(&canonical(peer)) {
            if end.waiting.len() < MAX_WAITING {
                end.waiting.push((index, tid, server));
            }
        }
    }
}

#[cfg(test)]
#[path = "linking_tests.rs"]
mod tests;
