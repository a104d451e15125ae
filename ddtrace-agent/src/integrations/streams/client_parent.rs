//! Which context a client call made by a traced process belongs to.
//!
//! Where each request is served on a thread of its own (Python's threading servers, gunicorn's
//! sync workers, most C and Java servers), the thread says it all: a call is a child of what is
//! open on the thread that made it. Go breaks that: goroutines run M to N on OS threads, and
//! net/http's client writes a request on one goroutine (the connection's write loop) and reads
//! the response on another (its read loop), neither of them the handler's. The thread that read
//! a response may hold an unrelated request's context, or none.
//!
//! The rule for such processes, the least surprising one we can keep from the traffic alone: a
//! call is the child of the one request of the process that was being served when the call
//! started (read before it, not answered yet). With several requests in flight nothing in the
//! traffic says which one made the call, and a wrong parent is worse than none: the call then
//! starts a trace of its own.

use std::collections::{HashMap, HashSet};

use crate::core::ContextId;

/// Where a client exchange's context goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientParent {
    /// Under the innermost context open on the calling thread (a root when there is none).
    CallingThread,
    /// Under this open request context (thread it was opened on, its id).
    Request { tid: u32, id: ContextId },
    /// A trace of its own.
    NewTrace,
}

/// A request being served: opened on `tid` when its head was read at `started_ns`, by
/// `goroutine` in Go (0: not known).
#[derive(Debug, Clone, Copy)]
struct Serving {
    tid: u32,
    id: ContextId,
    started_ns: u64,
    goroutine: u64,
}

/// The requests each process is serving, and which processes share threads between requests.
#[derive(Debug, Default)]
pub struct ClientParents {
    shared_threads: HashSet<u32>,
    serving: HashMap<u32, Vec<Serving>>,
}

impl ClientParents {
    /// Says whether process `tgid` runs requests on threads they do not own (Go).
    pub fn set_threads_shared(&mut self, tgid: u32, shared: bool) {
        if shared {
            self.shared_threads.insert(tgid);
        } else {
            self.shared_threads.remove(&tgid);
        }
    }

    /// A request context opened.
    pub fn request_opened(&mut self, tgid: u32, tid: u32, id: ContextId, started_ns: u64, goroutine: u64) {
        self.serving.entry(tgid).or_default().push(Serving { tid, id, started_ns, goroutine });
    }

    /// A request context ended (answered, or its connection closed).
    pub fn request_ended(&mut self, tgid: u32, id: ContextId) {
        if let Some(serving) = self.serving.get_mut(&tgid) {
            serving.retain(|s| s.id != id);
            if serving.is_empty() {
                self.serving.remove(&tgid);
            }
        }
    }

    /// The parent of a call process `tgid` started at `started_ns`, for `goroutine` (0: not
    /// known): in Go, the request its goroutine serves; where the goroutine serves none (one
    /// the handler started) or is not known, the one request in flight, if only one is.
    pub fn for_call(&self, tgid: u32, started_ns: u64, goroutine: u64) -> ClientParent {
        if !self.shared_threads.contains(&tgid) {
            return ClientParent::CallingThread;
        }
        let serving = self.serving.get(&tgid).into_iter().flatten();
        if let Some(exact) = serving.clone().find(|s| goroutine != 0 && s.goroutine == goroutine) {
            return ClientParent::Request { tid: exact.tid, id: exact.id };
        }
        let mut before = self.serving.get(&tgid).into_iter().flatten().filter(|s| s.started_ns <= started_ns);
        match (before.next(), before.next()) {
            (Some(only), None) => ClientParent::Request { tid: only.tid, id: only.id },
            _ => ClientParent::NewTrace,
        }
    }

    /// Forgets a process that exited (or exec'd another program).
    pub fn process_exited(&mut self, tgid: u32) {
        self.serving.remove(&tgid);
        self.shared_threads.remove(&tgid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_per_request_process_keeps_the_calling_threads_context() {
        let mut parents = ClientParents::default();
        parents.request_opened(1, 10, 100, 1_000, 0);
        assert_eq!(parents.for_call(1, 2_000, 0), ClientParent::CallingThread);
    }

    #[test]
    fn in_go_the_one_request_in_flight_adopts_the_call_whatever_thread_made_it() {
        let mut parents = ClientParents::default();
        parents.set_threads_shared(1, true);
        parents.request_opened(1, 10, 100, 1_000, 0);
        assert_eq!(parents.for_call(1, 2_000, 0), ClientParent::Request { tid: 10, id: 100 });
        // A request read after the call started cannot have made it.
        parents.request_opened(1, 11, 101, 2_500, 0);
        assert_eq!(parents.for_call(1, 2_000, 0), ClientParent::Request { tid: 10, id: 100 });
        parents.request_ended(1, 100);
        assert_eq!(parents.for_call(1, 3_000, 0), ClientParent::Request { tid: 11, id: 101 });
        parents.request_ended(1, 101);
        assert_eq!(parents.for_call(1, 4_000, 0), ClientParent::NewTrace, "nothing served: a trace of its own");
    }

    #[test]
    fn in_go_a_call_during_concurrent_requests_starts_its_own_trace_rather_than_guess() {
        let mut parents = ClientParents::default();
        parents.set_threads_shared(1, true);
        parents.request_opened(1, 10, 100, 1_000, 0);
        parents.request_opened(1, 10, 101, 1_100, 0);
        assert_eq!(parents.for_call(1, 2_000, 0), ClientParent::NewTrace);
        // Another process's requests are not candidates.
        parents.set_threads_shared(2, true);
        assert_eq!(parents.for_call(2, 2_000, 0), ClientParent::NewTrace);
        parents.process_exited(1);
        assert_eq!(parents.for_call(1, 2_000, 0), ClientParent::CallingThread);
    }

    #[test]
    fn in_go_a_call_made_for_a_serving_goroutine_is_that_requests_child_at_any_concurrency() {
        let mut parents = ClientParents::default();
        parents.set_threads_shared(1, true);
        // Three requests in flight, served by goroutines 0xa0, 0xb0, 0xc0.
        parents.request_opened(1, 10, 100, 1_000, 0xa0);
        parents.request_opened(1, 11, 101, 1_100, 0xb0);
        parents.request_opened(1, 10, 102, 1_200, 0xc0);
        assert_eq!(parents.for_call(1, 2_000, 0xb0), ClientParent::Request { tid: 11, id: 101 });
        assert_eq!(parents.for_call(1, 2_000, 0xc0), ClientParent::Request { tid: 10, id: 102 });
        // A goroutine that serves nothing (one a handler started): today's rule, which refuses
        // to guess among several.
        assert_eq!(parents.for_call(1, 2_000, 0xd0), ClientParent::NewTrace);
        parents.request_ended(1, 100);
        parents.request_ended(1, 102);
        assert_eq!(parents.for_call(1, 3_000, 0xd0), ClientParent::Request { tid: 11, id: 101 });
        // The goroutine's next request is another context.
        parents.request_ended(1, 101);
        parents.request_opened(1, 12, 103, 4_000, 0xb0);
        assert_eq!(parents.for_call(1, 4_100, 0xb0), ClientParent::Request { tid: 12, id: 103 });
    }
}
