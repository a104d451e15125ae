use std::collections::HashMap;

use super::{
    clock::WallClock,
    context::{ContextData, ExecutionContext},
    hub::{CoreEvent, EventHub},
    ids::{new_span_id, new_trace_id},
    sample::{ActiveContext, CpuSample},
};

/// Identifies an open context (its span id).
pub type ContextId = u64;

/// The caller's side of a distributed trace, continued by a local root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteParent {
    pub trace_id: u128,
    pub parent_id: u64,
}

/// The per-thread trees of [`ExecutionContext`]s of the traced processes. Each thread has a stack
/// of open contexts: a new context's parent is the innermost open one on its thread.
///
/// Contexts remember the call frame they were opened at. A context opened at the same or a
/// higher frame than an open one proves that one's call returned without its exit event (lost
/// in a full ring buffer): it is ended then, instead of swallowing every later span as a child.
pub struct ContextTree {
    clock: WallClock,
    /// tid -> (frame, open context), innermost last.
    threads: HashMap<u32, Vec<(u64, ExecutionContext)>>,
    /// Open contexts kept off their thread's stack (see [`Self::start_detached`]), by id.
    detached: HashMap<ContextId, ExecutionContext>,
    hub: EventHub,
    /// Contexts ended because an enclosing one ended first (their exit event was lost).
    pub abandoned: u64,
}

impl ContextTree {
    pub fn new(clock: WallClock, hub: EventHub) -> Self {
        Self { clock, threads: HashMap::new(), detached: HashMap::new(), hub, abandoned: 0 }
    }

    /// Opens a context for the call at `frame` on thread `tid`, child of the thread's innermost
    /// open context.
    pub fn start(&mut self, tgid: u32, tid: u32, ktime_ns: u64, frame: u64, data: ContextData) -> ContextId {
        self.end_returned_calls(tid, frame, ktime_ns);
        let start_unix_ns = self.clock.to_unix_ns(ktime_ns);
        let context = self.new_context(tgid, tid, start_unix_ns, data);
        let id = context.id;
        self.hub.dispatch_context("context.started", &CoreEvent::ContextStarted(&context), &context);
        self.threads.entry(tid).or_default().push((frame, context));
        id
    }

    /// Opens a context that starts a local trace on thread `tid`, as a request a server received
    /// does: no local parent even when the thread has open contexts, and `remote` (the caller's
    /// trace, from propagation headers) continued when given. Contexts opened on the thread while
    /// it is open are its children.
    pub fn start_root(
        &mut self,
        tgid: u32,
        tid: u32,
        ktime_ns: u64,
        frame: u64,
        data: ContextData,
        remote: Option<RemoteParent>,
    ) -> ContextId {
        self.end_returned_calls(tid, frame, ktime_ns);
        let start_unix_ns = self.clock.to_unix_ns(ktime_ns);
        let id = new_span_id();
        let (trace_id, parent_id) = match remote {
            Some(remote) => (remote.trace_id, remote.parent_id),
            None => (new_trace_id(start_unix_ns), 0),
        };
        let context =
            ExecutionContext { id, trace_id, parent_id, root_id: id, tgid, tid, start_unix_ns, end_unix_ns: 0, data };
        self.hub.dispatch_context("context.started", &CoreEvent::ContextStarted(&context), &context);
        self.threads.entry(tid).or_default().push((frame, context));
        id
    }

    /// Opens a context that is a child of the thread's innermost open context but is not pushed
    /// on the thread's stack: an operation the thread started that ends on its own, such as an
    /// HTTP call that ends when its response arrives. Nothing the thread does meanwhile becomes
    /// its child (an event loop writes other requests while one waits), and its open entry
    /// never makes the frame-based checks end the thread's real calls. End it with
    /// [`Self::end_detached`]; if its parent ends first, it ends with it.
    pub fn start_detached(&mut self, tgid: u32, tid: u32, ktime_ns: u64, data: ContextData) -> ContextId {
        let start_unix_ns = self.clock.to_unix_ns(ktime_ns);
        let context = self.new_context(tgid, tid, start_unix_ns, data);
        let id = context.id;
        self.hub.dispatch_context("context.started", &CoreEvent::ContextStarted(&context), &context);
        self.detached.insert(id, context);
        id
    }

    /// Like [`Self::start_detached`], under the open context `parent` (the thread it was opened
    /// on, its id) whatever thread starts the operation; the root of a trace of its own when
    /// `parent` is `None` or no longer open.
    pub fn start_detached_under(
        &mut self,
        parent: Option<(u32, ContextId)>,
        tgid: u32,
        tid: u32,
        ktime_ns: u64,
        data: ContextData,
    ) -> ContextId {
        let start_unix_ns = self.clock.to_unix_ns(ktime_ns);
        let context = self.context_under(parent, tgid, tid, start_unix_ns, data);
        let id = context.id;
        self.hub.dispatch_context("context.started", &CoreEvent::ContextStarted(&context), &context);
        self.detached.insert(id, context);
        id
    }

    /// Ends the detached context `id` (see [`Self::start_detached`]). Returns false when it is
    /// not open (never opened, or ended with its parent).
    pub fn end_detached(&mut self, id: ContextId, ktime_ns: u64, finish: impl FnOnce(&mut ContextData)) -> bool {
        let Some(mut context) = self.detached.remove(&id) else { return false };
        context.end_unix_ns = self.clock.to_unix_ns(ktime_ns).max(context.start_unix_ns);
        finish(&mut context.data);
        self.hub.dispatch_context("context.ended", &CoreEvent::ContextEnded(&context), &context);
        true
    }

    /// The trace of the open context `id`.
    pub fn trace_id(&self, id: ContextId) -> Option<u128> {
        if let Some(context) = self.detached.get(&id) {
            return Some(context.trace_id);
        }
        self.threads.values().flatten().find(|(_, c)| c.id == id).map(|(_, c)| c.trace_id)
    }

    /// Makes the open local root `id` of thread `tid` continue `remote`'s trace, as if
    /// [`Self::start_root`] had been given it; its open descendants follow. For a caller learnt
    /// just after the request (its event came later in the ring than ours). Descendants that
    /// already ended keep the trace they ended in. Returns false when `id` is not an open root.
    pub fn set_remote_parent(&mut self, tid: u32, id: ContextId, remote: RemoteParent) -> bool {
        let Some(stack) = self.threads.get_mut(&tid) else { return false };
        let Some((_, root)) = stack.iter_mut().find(|(_, c)| c.id == id && c.root_id == id) else { return false };
        root.parent_id = remote.parent_id;
        for (_, context) in stack.iter_mut().filter(|(_, c)| c.root_id == id) {
            context.trace_id = remote.trace_id;
        }
        for context in self.detached.values_mut().filter(|c| c.root_id == id) {
            context.trace_id = remote.trace_id;
        }
        true
    }

    /// Ends, as abandoned, the open contexts of `tid` whose calls must have returned: those at
    /// `frame` or above it (outer stack positions).
    fn end_returned_calls(&mut self, tid: u32, frame: u64, ktime_ns: u64) {
        let outermost_returned =
            self.threads.get(&tid).and_then(|stack| stack.iter().find(|(open, _)| *open <= frame).map(|(_, c)| c.id));
        if let Some(id) = outermost_returned {
            self.abandoned += 1;
            self.end(tid, id, ktime_ns, |_| {});
        }
    }

    /// Ends the open context `id` of thread `tid`, letting the caller fill in what it learnt at
    /// the end (status, error). Contexts opened inside it and still open end with it; local roots
    /// opened on the thread after it (and their children) stay open: a Go or event-loop server
    /// reads many requests on one OS thread, and they end in any order.
    /// Returns false when no such context is open.
    pub fn end(&mut self, tid: u32, id: ContextId, ktime_ns: u64, finish: impl FnOnce(&mut ContextData)) -> bool {
        let end_unix_ns = self.clock.to_unix_ns(ktime_ns);
        let Some(stack) = self.threads.get_mut(&tid) else { return false };
        let Some(position) = stack.iter().rposition(|(_, c)| c.id == id) else { return false };
        let mut ended: Vec<ExecutionContext> = Vec::new();
        let mut others = Vec::new();
        for (frame, context) in stack.drain(position..) {
            // Above `id`, a context is its descendant when its parent is `id` or one of those.
            if context.id == id || ended.iter().any(|e| e.id == context.parent_id) {
                ended.push(context);
            } else {
                others.push((frame, context));
            }
        }
        stack.extend(others);
        if stack.is_empty() {
            self.threads.remove(&tid);
        }
        // Innermost first, so children always end before their parent.
        let mut finish = Some(finish);
        while let Some(mut context) = ended.pop() {
            context.end_unix_ns = end_unix_ns.max(context.start_unix_ns);
            self.end_detached_children(context.id, end_unix_ns);
            if context.id == id {
                if let Some(finish) = finish.take() {
                    finish(&mut context.data);
                }
            } else {
                self.abandoned += 1;
            }
            self.hub.dispatch_context("context.ended", &CoreEvent::ContextEnded(&context), &context);
        }
        true
    }

    /// Ends, as abandoned, the detached contexts whose parent `parent` is ending: children end
    /// before their parent, and a span outliving its local root would never be sent.
    fn end_detached_children(&mut self, parent: ContextId, end_unix_ns: i64) {
        if self.detached.is_empty() {
            return;
        }
        let children: Vec<ContextId> =
            self.detached.values().filter(|c| c.parent_id == parent && c.id != parent).map(|c| c.id).collect();
        for id in children {
            if let Some(mut context) = self.detached.remove(&id) {
                context.end_unix_ns = end_unix_ns.max(context.start_unix_ns);
                self.abandoned += 1;
                self.hub.dispatch_context("context.ended", &CoreEvent::ContextEnded(&context), &context);
            }
        }
    }

    /// Records an operation already over (both ends known), as a child of the thread's innermost
    /// open context.
    pub fn record(&mut self, tgid: u32, tid: u32, start_ktime_ns: u64, end_ktime_ns: u64, data: ContextData) {
        let start_unix_ns = self.clock.to_unix_ns(start_ktime_ns);
        let mut context = self.new_context(tgid, tid, start_unix_ns, data);
        context.end_unix_ns = self.clock.to_unix_ns(end_ktime_ns).max(start_unix_ns);
        self.hub.dispatch_context("context.started", &CoreEvent::ContextStarted(&context), &context);
        self.hub.dispatch_context("context.ended", &CoreEvent::ContextEnded(&context), &context);
    }

    /// Records an operation already over as a child of `parent` (the thread it was opened on,
    /// its id), whatever thread did the operation; as the root of a trace of its own when
    /// `parent` is `None` or no longer open.
    pub fn record_under(
        &mut self,
        parent: Option<(u32, ContextId)>,
        tgid: u32,
        tid: u32,
        start_ktime_ns: u64,
        end_ktime_ns: u64,
        data: ContextData,
    ) {
        let start_unix_ns = self.clock.to_unix_ns(start_ktime_ns);
        let mut context = self.context_under(parent, tgid, tid, start_unix_ns, data);
        context.end_unix_ns = self.clock.to_unix_ns(end_ktime_ns).max(start_unix_ns);
        self.hub.dispatch_context("context.started", &CoreEvent::ContextStarted(&context), &context);
        self.hub.dispatch_context("context.ended", &CoreEvent::ContextEnded(&context), &context);
    }

    /// Ends every open context of process `tgid` (it exited) and tells the listeners.
    pub fn end_process(&mut self, tgid: u32, ktime_ns: u64) {
        let threads: Vec<(u32, ContextId)> = self
            .threads
            .iter()
            .filter_map(|(tid, stack)| stack.first().filter(|(_, c)| c.tgid == tgid).map(|(_, c)| (*tid, c.id)))
            .collect();
        for (tid, root) in threads {
            self.end(tid, root, ktime_ns, |_| {});
        }
        let detached: Vec<ContextId> = self.detached.values().filter(|c| c.tgid == tgid).map(|c| c.id).collect();
        for id in detached {
            self.end_detached(id, ktime_ns, |_| {});
        }
        self.hub.dispatch("process.exited", &CoreEvent::ProcessExited(tgid));
    }

    /// Reports a CPU sample of thread `sample.tid` taken at `ktime_ns`, with the context open on
    /// that thread now. Samples travel in the same ring buffer as probe events, so "now" is the
    /// moment of the sample, in order with the contexts' starts and ends.
    pub fn cpu_sampled(&mut self, ktime_ns: u64, mut sample: CpuSample) {
        sample.unix_ns = self.clock.to_unix_ns(ktime_ns);
        sample.active = self
            .threads
            .get(&sample.tid)
            .and_then(|stack| stack.last())
            .map(|(_, context)| ActiveContext { id: context.id, root_id: context.root_id });
        self.hub.dispatch("cpu.sampled", &CoreEvent::CpuSampled(&sample));
    }

    /// Contexts open now, all threads together.
    pub fn open_contexts(&self) -> usize {
        self.threads.values().map(Vec::len).sum::<usize>() + self.detached.len()
    }

    /// A new context under the open context `parent` (its thread, its id), or a new trace.
    fn context_under(
        &self,
        parent: Option<(u32, ContextId)>,
        tgid: u32,
        tid: u32,
        start_unix_ns: i64,
        data: ContextData,
    ) -> ExecutionContext {
        let id = new_span_id();
        let open = parent.and_then(|(parent_tid, parent_id)| {
            self.threads.get(&parent_tid)?.iter().find(|(_, c)| c.id == parent_id).map(|(_, c)| c)
        });
        let (trace_id, parent_id, root_id) = match open {
            Some(parent) => (parent.trace_id, parent.id, parent.root_id),
            None => (new_trace_id(start_unix_ns), 0, id),
        };
        ExecutionContext { id, trace_id, parent_id, root_id, tgid, tid, start_unix_ns, end_unix_ns: 0, data }
    }

    fn new_context(&self, tgid: u32, tid: u32, start_unix_ns: i64, data: ContextData) -> ExecutionContext {
        let id = new_span_id();
        let (trace_id, parent_id, root_id) = match self.threads.get(&tid).and_then(|stack| stack.last()).map(|(_, c)| c)
        {
            Some(parent) => (parent.trace_id, parent.id, parent.root_id),
            None => (new_trace_id(start_unix_ns), 0, id),
        };
        ExecutionContext { id, trace_id, parent_id, root_id, tgid, tid, start_unix_ns, end_unix_ns: 0, data }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::core::SpanKind;

    fn tree_recording_ends() -> (ContextTree, Arc<Mutex<Vec<ExecutionContext>>>) {
        let ended = Arc::new(Mutex::new(Vec::new()));
        let mut hub = EventHub::new();
        let sink = ended.clone();
        hub.on("context.ended", move |event| {
            if let CoreEvent::ContextEnded(c) = event {
                sink.lock().unwrap().push((*c).clone());
            }
        });
        (ContextTree::new(WallClock::calibrate(), hub), ended)
    }

    fn data(name: &'static str) -> ContextData {
        ContextData::new(name, "test", "custom", SpanKind::Internal)
    }

    #[test]
    fn cpu_samples_carry_the_innermost_open_context_of_their_thread() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut hub = EventHub::new();
        let sink = seen.clone();
        hub.on("cpu.sampled", move |event| {
            if let CoreEvent::CpuSampled(sample) = event {
                sink.lock().unwrap().push((sample.tid, sample.active));
            }
        });
        let mut tree = ContextTree::new(WallClock::calibrate(), hub);
        let sample = |tid| CpuSample {
            tgid: 1,
            tid,
            unix_ns: 0,
            ip: 0,
            sp: 0,
            bp: 0,
            in_kernel: false,
            stack: Box::new([]),
            active: None,
        };
        let outer = tree.start(1, 10, 1_000, 0x1000, data("outer"));
        let inner = tree.start(1, 10, 2_000, 0x0f00, data("inner"));
        tree.cpu_sampled(2_500, sample(10));
        tree.cpu_sampled(2_500, sample(11));
        tree.end(10, inner, 3_000, |_| {});
        tree.cpu_sampled(3_500, sample(10));
        tree.end(10, outer, 4_000, |_| {});
        tree.cpu_sampled(4_500, sample(10));
        let seen = seen.lock().unwrap();
        assert_eq!(seen[0], (10, Some(ActiveContext { id: inner, root_id: outer })));
        assert_eq!(seen[1], (11, None), "another thread is not in the context");
        assert_eq!(seen[2], (10, Some(ActiveContext { id: outer, root_id: outer })));
        assert_eq!(seen[3], (10, None));
    }

    #[test]
    fn a_local_root_continues_the_remote_trace_and_parents_what_runs_inside_it() {
        let (mut tree, ended) = tree_recording_ends();
        let remote = RemoteParent { trace_id: 0xabc, parent_id: 77 };
        let request = tree.start_root(1, 10, 1_000, u64::MAX, data("http.request"), Some(remote));
        let query = tree.start(1, 10, 2_000, 0x0f00, data("sqlite.query"));
        tree.end(10, query, 3_000, |_| {});
        // A second request on the thread (pipelined) is a root too, not a child of the first.
        let second = tree.start_root(1, 10, 3_500, u64::MAX - 1, data("http.request"), None);
        tree.end(10, second, 3_800, |_| {});
        tree.end(10, request, 4_000, |_| {});
        let ended = ended.lock().unwrap();
        let (query, second, request) = (&ended[0], &ended[1], &ended[2]);
        assert_eq!((request.trace_id, request.parent_id, request.root_id), (0xabc, 77, request.id));
        assert!(request.is_root(), "a local root despite its remote parent");
        assert_eq!((query.trace_id, query.parent_id, query.root_id), (0xabc, request.id, request.id));
        assert!(second.is_root() && second.parent_id == 0 && second.trace_id != 0xabc);
        assert_eq!(tree.abandoned, 0);
    }

    #[test]
    fn requests_read_on_one_thread_end_in_any_order_each_with_its_own_children() {
        let (mut tree, ended) = tree_recording_ends();
        let first = tree.start_root(1, 10, 1_000, u64::MAX, data("first"), None);
        let second = tree.start_root(1, 10, 1_500, u64::MAX - 1, data("second"), None);
        let query = tree.start(1, 10, 1_800, 0x0f00, data("second's query"));
        // The first answered before the second (and its query) ended.
        assert!(tree.end(10, first, 2_000, |_| {}));
        assert_eq!(tree.open_contexts(), 2, "the second request and its query stay open");
        assert!(tree.end(10, query, 2_500, |_| {}));
        assert!(tree.end(10, second, 3_000, |_| {}));
        let ended = ended.lock().unwrap();
        let names: Vec<&str> = ended.iter().map(|c| c.data.name).collect();
        assert_eq!(names, ["first", "second's query", "second"]);
        assert_eq!(ended[1].parent_id, ended[2].id);
        assert_eq!(ended[2].end_unix_ns - ended[2].start_unix_ns, 1_500);
        assert_eq!(tree.abandoned, 0);
    }

    #[test]
    fn an_operation_recorded_under_a_context_of_another_thread_joins_its_trace() {
        let (mut tree, ended) = tree_recording_ends();
        let request = tree.start_root(1, 10, 1_000, u64::MAX, data("request"), None);
        // Thread 11 holds an unrelated request: the explicit parent wins over the thread's.
        tree.start_root(1, 11, 1_100, u64::MAX - 1, data("other"), None);
        tree.record_under(Some((10, request)), 1, 11, 1_500, 1_800, data("call"));
        tree.record_under(None, 1, 10, 1_900, 1_950, data("lone call"));
        tree.end(10, request, 2_000, |_| {});
        let ended = ended.lock().unwrap();
        let (call, lone, request) = (&ended[0], &ended[1], &ended[2]);
        assert_eq!((call.parent_id, call.trace_id, call.root_id), (request.id, request.trace_id, request.id));
        assert_eq!(call.tid, 11);
        assert!(lone.is_root() && lone.trace_id != request.trace_id, "a trace of its own even on the request's thread");
    }

    #[test]
    fn nested_contexts_share_the_trace_and_point_to_their_parent() {
        let (mut tree, ended) = tree_recording_ends();
        let outer = tree.start(1, 10, 1_000, 0x1000, data("outer"));
        let inner = tree.start(1, 10, 2_000, 0x0f00, data("inner"));
        assert!(tree.end(10, inner, 3_000, |d| d.resource = "done".into()));
        assert!(tree.end(10, outer, 4_000, |_| {}));
        let ended = ended.lock().unwrap();
        assert_eq!(ended.len(), 2);
        let (inner, outer) = (&ended[0], &ended[1]);
        assert_eq!(inner.parent_id, outer.id);
        assert_eq!(inner.trace_id, outer.trace_id);
        assert_eq!(inner.root_id, outer.id);
        assert!(outer.is_root());
        assert_eq!(inner.duration_ns(), 1_000);
        assert_eq!(inner.data.resource, "done");
        assert_eq!(tree.open_contexts(), 0);
    }

    #[test]
    fn threads_have_separate_trees() {
        let (mut tree, ended) = tree_recording_ends();
        let a = tree.start(1, 10, 1_000, 0x1000, data("a"));
        let b = tree.start(1, 11, 1_500, 0x1000, data("b"));
        tree.end(10, a, 2_000, |_| {});
        tree.end(11, b, 2_000, |_| {});
        let ended = ended.lock().unwrap();
        assert!(ended[0].is_root() && ended[1].is_root());
        assert_ne!(ended[0].trace_id, ended[1].trace_id);
    }

    #[test]
    fn ending_a_parent_ends_children_whose_exit_was_lost() {
        let (mut tree, ended) = tree_recording_ends();
        let outer = tree.start(1, 10, 1_000, 0x1000, data("outer"));
        tree.start(1, 10, 2_000, 0x0f00, data("lost"));
        tree.end(10, outer, 5_000, |_| {});
        let ended = ended.lock().unwrap();
        assert_eq!(ended.iter().map(|c| c.data.name).collect::<Vec<_>>(), vec!["lost", "outer"]);
        assert_eq!(tree.abandoned, 1);
        assert!(!tree.end(10, outer, 6_000, |_| {}), "already ended");
    }

    #[test]
    fn a_lost_exit_does_not_make_later_calls_its_children() {
        let (mut tree, ended) = tree_recording_ends();
        tree.start(1, 10, 1_000, 0x1000, data("exit lost"));
        let next = tree.start(1, 10, 2_000, 0x1000, data("next call"));
        tree.end(10, next, 3_000, |_| {});
        let ended = ended.lock().unwrap();
        assert_eq!(ended.len(), 2);
        assert!(ended.iter().all(|c| c.is_root()), "siblings, not parent and child: {ended:?}");
        assert_eq!(tree.abandoned, 1);
    }

    #[test]
    fn a_detached_context_has_a_parent_but_parents_nothing_and_ends_with_its_parent_at_the_latest() {
        let (mut tree, ended) = tree_recording_ends();
        let function = tree.start(1, 10, 1_000, 0x7ff0, data("traced function"));
        let call = tree.start_detached(1, 10, 2_000, data("http call"));
        assert!(tree.trace_id(call).is_some());
        // The thread carries on (an event loop): a call it makes is not the HTTP call's child,
        // and no real frame ends the detached context.
        let query = tree.start(1, 10, 2_500, 0x7fe0, data("query"));
        tree.end(10, query, 2_600, |_| {});
        assert!(tree.end_detached(call, 3_000, |d| d.resource = "GET /".into()));
        assert!(!tree.end_detached(call, 3_100, |_| {}), "already ended");
        // One left open when its parent ends ends with it, before it.
        let unanswered = tree.start_detached(1, 10, 3_500, data("unanswered call"));
        tree.end(10, function, 4_000, |_| {});
        assert!(!tree.end_detached(unanswered, 5_000, |_| {}));
        let ended = ended.lock().unwrap();
        let names: Vec<&str> = ended.iter().map(|c| c.data.name).collect();
        assert_eq!(names, ["query", "http call", "unanswered call", "traced function"]);
        let function = &ended[3];
        assert!(ended[..3].iter().all(|c| c.parent_id == function.id && c.trace_id == function.trace_id));
        assert_eq!(ended[1].data.resource, "GET /");
        assert_eq!((ended[2].end_unix_ns, tree.abandoned, tree.open_contexts()), (function.end_unix_ns, 1, 0));
    }

    #[test]
    fn a_root_learns_its_remote_parent_late_and_its_open_descendants_follow() {
        let (mut tree, ended) = tree_recording_ends();
        let request = tree.start_root(1, 10, 1_000, u64::MAX, data("http.request"), None);
        let query = tree.start(1, 10, 1_500, 0x7ff0, data("query"));
        let call = tree.start_detached(1, 10, 1_600, data("call"));
        assert!(!tree.set_remote_parent(10, query, RemoteParent { trace_id: 1, parent_id: 2 }), "not a root");
        assert!(tree.set_remote_parent(10, request, RemoteParent { trace_id: 0xabc, parent_id: 77 }));
        assert_eq!(tree.trace_id(request), Some(0xabc));
        tree.end_detached(call, 1_700, |_| {});
        tree.end(10, request, 2_000, |_| {});
        let ended = ended.lock().unwrap();
        let request = ended.iter().find(|c| c.data.name == "http.request").unwrap();
        assert_eq!((request.trace_id, request.parent_id), (0xabc, 77));
        assert!(request.is_root());
        assert!(ended.iter().all(|c| c.trace_id == 0xabc), "{ended:?}");
    }

    #[test]
    fn process_exit_ends_its_open_contexts() {
        let (mut tree, ended) = tree_recording_ends();
        tree.start(7, 70, 1_000, 0x1000, data("open"));
        tree.start(8, 80, 1_000, 0x1000, data("other process"));
        tree.end_process(7, 9_000);
        assert_eq!(ended.lock().unwrap().len(), 1);
        assert_eq!(tree.open_contexts(), 1);
    }
}
