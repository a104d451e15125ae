use rustc_hash::FxHashMap as HashMap;

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
/// Local roots (requests a server took on) are not calls nested in what is below them: an
/// event-driven server's thread takes on a request while others are in flight, and ends them in
/// any order. Ending a context ends what was opened inside it, up to the next local root.
///
/// Contexts remember the call frame they were opened at. A context opened at the same or a
/// higher frame than an open one proves that one's call returned without its exit event (lost
/// in a full ring buffer): it is ended then, instead of swallowing every later span as a child.
///
/// A context [`ContextData::bounded_by_children`] ends where its last child ended (at its start
/// if none did), whatever ends it: the end of its parent, or a call shown to have returned.
pub struct ContextTree {
    clock: WallClock,
    /// tid -> (frame, open context), innermost last.
    threads: HashMap<u32, Vec<(u64, ExecutionContext)>>,
    /// Open contexts kept off their thread's stack (see [`Self::start_detached`]), by id.
    detached: HashMap<ContextId, ExecutionContext>,
    hub: EventHub,
    /// Open contexts bounded by their children: the latest end of a child so far (0: none yet).
    bounded: HashMap<ContextId, i64>,
    /// Contexts ended because an enclosing one ended first (their exit event was lost).
    pub abandoned: u64,
}

impl ContextTree {
    pub fn new(clock: WallClock, hub: EventHub) -> Self {
        Self {
            clock,
            threads: HashMap::default(),
            detached: HashMap::default(),
            hub,
            bounded: HashMap::default(),
            abandoned: 0,
        }
    }

    /// A child of `parent` ended at `end_unix_ns`: a parent bounded by its children ends no
    /// earlier.
    fn child_ended(&mut self, parent: ContextId, end_unix_ns: i64) {
        if let Some(latest) = self.bounded.get_mut(&parent) {
            *latest = (*latest).max(end_unix_ns);
        }
    }

    /// When `context`, bounded by its children, ends: where its last child ended.
    fn bounded_end(&mut self, context: &ExecutionContext) -> i64 {
        self.bounded.remove(&context.id).unwrap_or(0).max(context.start_unix_ns)
    }

    /// The innermost open context of thread `tid`, as it is now.
    pub fn innermost_context(&self, tid: u32) -> Option<&ExecutionContext> {
        self.threads.get(&tid).and_then(|stack| stack.last()).map(|(_, c)| c)
    }

    /// Lets `add` fill in more of the open context `id` of thread `tid` (what was learnt while it
    /// runs). Returns false when it is not open there.
    pub fn annotate(&mut self, tid: u32, id: ContextId, add: impl FnOnce(&mut ContextData)) -> bool {
        let open = self.threads.get_mut(&tid).and_then(|stack| stack.iter_mut().rev().find(|(_, c)| c.id == id));
        match open {
            Some((_, context)) => {
                add(&mut context.data);
                true
            }
            None => false,
        }
    }

    /// Opens a context for the call at `frame` on thread `tid`, child of the thread's innermost
    /// open context.
    pub fn start(&mut self, tgid: u32, tid: u32, ktime_ns: u64, frame: u64, data: ContextData) -> ContextId {
        self.end_returned_calls(tid, frame, ktime_ns);
        let start_unix_ns = self.clock.to_unix_ns(ktime_ns);
        let context = self.new_context(tgid, tid, start_unix_ns, data);
        let id = context.id;
        if context.data.bounded_by_children {
            self.bounded.insert(id, 0);
        }
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
        self.start_detached_within(tgid, tid, None, ktime_ns, data)
    }

    /// Same, as a child of the innermost context inside `within` when `within` is still open on
    /// the thread (see [`Self::record_within`]).
    pub fn start_detached_within(
        &mut self,
        tgid: u32,
        tid: u32,
        within: Option<ContextId>,
        ktime_ns: u64,
        data: ContextData,
    ) -> ContextId {
        let start_unix_ns = self.clock.to_unix_ns(ktime_ns);
        let context = self.new_context_within(tgid, tid, within, start_unix_ns, data);
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
    /// Detached contexts still open (client calls waiting for their answer).
    pub fn open_detached(&self) -> usize {
        self.detached.len()
    }

    pub fn end_detached(&mut self, id: ContextId, ktime_ns: u64, finish: impl FnOnce(&mut ContextData)) -> bool {
        let Some(mut context) = self.detached.remove(&id) else { return false };
        context.end_unix_ns = self.clock.to_unix_ns(ktime_ns).max(context.start_unix_ns);
        self.child_ended(context.parent_id, context.end_unix_ns);
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
        if position + 1 == stack.len() {
            // The usual case, the innermost context returning: nothing above it to sort out,
            // and nothing to allocate.
            let Some((_, context)) = stack.pop() else { return false };
            let emptied = stack.is_empty();
            self.forget_if_emptied(tid, emptied);
            self.close(context, id, end_unix_ns, &mut Some(finish));
            return true;
        }
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
        let emptied = stack.is_empty();
        self.forget_if_emptied(tid, emptied);
        // Innermost first, so children always end before their parent.
        let mut finish = Some(finish);
        while let Some(context) = ended.pop() {
            self.close(context, id, end_unix_ns, &mut finish);
        }
        true
    }

    /// An emptied stack stays for its thread's next context (no allocation per call) while few
    /// threads are known; past that, an emptied one goes at once.
    fn forget_if_emptied(&mut self, tid: u32, emptied: bool) {
        if emptied && self.threads.len() > super::KEPT_IDLE_THREADS {
            self.threads.remove(&tid);
        }
    }

    /// Ends `context`, taken off its stack: `finish` fills it in when it is `id`, the context
    /// the caller ended (the others were open inside it and are abandoned).
    fn close(
        &mut self,
        mut context: ExecutionContext,
        id: ContextId,
        end_unix_ns: i64,
        finish: &mut Option<impl FnOnce(&mut ContextData)>,
    ) {
        context.end_unix_ns = end_unix_ns.max(context.start_unix_ns);
        self.end_detached_children(context.id, end_unix_ns);
        let bounded = context.data.bounded_by_children;
        if bounded {
            context.end_unix_ns = self.bounded_end(&context);
        }
        self.child_ended(context.parent_id, context.end_unix_ns);
        if context.id == id {
            if let Some(finish) = finish.take() {
                finish(&mut context.data);
            }
        } else if !bounded {
            self.abandoned += 1;
        }
        self.hub.dispatch_context("context.ended", &CoreEvent::ContextEnded(&context), &context);
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
                self.child_ended(parent, context.end_unix_ns);
                self.abandoned += 1;
                self.hub.dispatch_context("context.ended", &CoreEvent::ContextEnded(&context), &context);
            }
        }
    }

    /// Records an operation already over (both ends known), as a child of the thread's innermost
    /// open context.
    pub fn record(&mut self, tgid: u32, tid: u32, start_ktime_ns: u64, end_ktime_ns: u64, data: ContextData) {
        self.record_within(tgid, tid, None, start_ktime_ns, end_ktime_ns, data);
    }

    /// Same, as a child of the innermost context inside `within` when `within` is still open on
    /// the thread: an operation that belongs to work begun earlier (a call on a connection opened
    /// while serving one request, ending while the thread serves others).
    pub fn record_within(
        &mut self,
        tgid: u32,
        tid: u32,
        within: Option<ContextId>,
        start_ktime_ns: u64,
        end_ktime_ns: u64,
        data: ContextData,
    ) {
        let start_unix_ns = self.clock.to_unix_ns(start_ktime_ns);
        let mut context = self.new_context_within(tgid, tid, within, start_unix_ns, data);
        context.end_unix_ns = self.clock.to_unix_ns(end_ktime_ns).max(start_unix_ns);
        self.child_ended(context.parent_id, context.end_unix_ns);
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
        self.child_ended(context.parent_id, context.end_unix_ns);
        self.hub.dispatch_context("context.started", &CoreEvent::ContextStarted(&context), &context);
        self.hub.dispatch_context("context.ended", &CoreEvent::ContextEnded(&context), &context);
    }

    /// Ends every open context of process `tgid` (it exited) and tells the listeners.
    pub fn end_process(&mut self, tgid: u32, ktime_ns: u64) {
        let threads: Vec<u32> = self
            .threads
            .iter()
            .filter(|(_, stack)| stack.first().is_some_and(|(_, c)| c.tgid == tgid))
            .map(|(tid, _)| *tid)
            .collect();
        for tid in threads {
            // Outermost first; each end may leave later local roots open.
            while let Some(outermost) = self.threads.get(&tid).and_then(|stack| stack.first()).map(|(_, c)| c.id) {
                self.end(tid, outermost, ktime_ns, |_| {});
            }
        }
        let detached: Vec<ContextId> = self.detached.values().filter(|c| c.tgid == tgid).map(|c| c.id).collect();
        for id in detached {
            self.end_detached(id, ktime_ns, |_| {});
        }
        // Emptied stacks are kept for their thread's next call; an exit is the time to let the
        // idle ones go (they do not say which process they were of).
        self.threads.retain(|_, stack| !stack.is_empty());
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

    /// The innermost open context of thread `tid`.
    pub fn innermost(&self, tid: u32) -> Option<ContextId> {
        self.threads.get(&tid).and_then(|stack| stack.last()).map(|(_, c)| c.id)
    }

    /// Contexts open now, all threads together.
    /// Threads with state here (open contexts or an emptied stack not yet forgotten).
    pub fn threads_known(&self) -> usize {
        self.threads.len() + self.detached.len()
    }

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

    /// A new context under the innermost one inside `within` if that is open on the thread, else
    /// under the thread's innermost.
    fn new_context_within(
        &self,
        tgid: u32,
        tid: u32,
        within: Option<ContextId>,
        start_unix_ns: i64,
        data: ContextData,
    ) -> ExecutionContext {
        let parent = self.threads.get(&tid).and_then(|stack| {
            let position = stack.iter().rposition(|(_, c)| Some(c.id) == within)?;
            Some(&stack[inside_of(stack, position) - 1].1)
        });
        match parent {
            Some(parent) => child_of(parent, tgid, tid, start_unix_ns, data),
            None => self.new_context(tgid, tid, start_unix_ns, data),
        }
    }

    fn new_context(&self, tgid: u32, tid: u32, start_unix_ns: i64, data: ContextData) -> ExecutionContext {
        match self.threads.get(&tid).and_then(|stack| stack.last()).map(|(_, c)| c) {
            Some(parent) => child_of(parent, tgid, tid, start_unix_ns, data),
            None => {
                let id = new_span_id();
                let trace_id = new_trace_id(start_unix_ns);
                ExecutionContext {
                    id,
                    trace_id,
                    parent_id: 0,
                    root_id: id,
                    tgid,
                    tid,
                    start_unix_ns,
                    end_unix_ns: 0,
                    data,
                }
            }
        }
    }
}

/// A new context under `parent`.
fn child_of(parent: &ExecutionContext, tgid: u32, tid: u32, start_unix_ns: i64, data: ContextData) -> ExecutionContext {
    ExecutionContext {
        id: new_span_id(),
        trace_id: parent.trace_id,
        parent_id: parent.id,
        root_id: parent.root_id,
        tgid,
        tid,
        start_unix_ns,
        end_unix_ns: 0,
        data,
    }
}

/// Where the contexts inside `stack[position]` end: at the next local root above it, or the top.
fn inside_of(stack: &[(u64, ExecutionContext)], position: usize) -> usize {
    stack[position + 1..].iter().position(|(_, c)| c.is_root()).map_or(stack.len(), |i| position + 1 + i)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::core::{test_support::tree_recording_ends, SpanKind};

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
            interpreter: None,
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
    fn a_context_bounded_by_its_children_ends_where_its_last_child_ended() {
        let (mut tree, ended) = tree_recording_ends();
        let request = tree.start_root(1, 10, 1_000, u64::MAX, data("http.request"), None);
        let mut handler = data("handler");
        handler.bounded_by_children = true;
        let handler = tree.start(1, 10, 2_000, 1 << 63, handler);
        let query = tree.start(1, 10, 2_000, 0x0f00, data("sqlite.query"));
        tree.end(10, query, 3_000, |_| {});
        let call = tree.start_detached(1, 10, 3_500, data("http.request"));
        tree.end_detached(call, 5_000, |_| {});
        tree.end(10, request, 9_000, |_| {});
        let ended = ended.lock().unwrap();
        let names: Vec<&str> = ended.iter().map(|c| c.data.name).collect();
        assert_eq!(names, ["sqlite.query", "http.request", "handler", "http.request"]);
        let clock = |ktime| tree.clock.to_unix_ns(ktime);
        let handler_span = &ended[2];
        assert_eq!((handler_span.id, handler_span.parent_id), (handler, request));
        assert_eq!((handler_span.start_unix_ns, handler_span.end_unix_ns), (clock(2_000), clock(5_000)));
        assert_eq!(ended[3].end_unix_ns, clock(9_000));
        assert_eq!(tree.abandoned, 0, "a bounded context is not abandoned when its parent ends it");
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
    fn an_event_driven_thread_ends_its_requests_in_any_order() {
        let (mut tree, ended) = tree_recording_ends();
        let first = tree.start_root(1, 10, 1_000, u64::MAX, data("first"), None);
        let query = tree.start(1, 10, 1_500, 0x0f00, data("query of first"));
        tree.end(10, query, 1_600, |_| {});
        let second = tree.start_root(1, 10, 2_000, u64::MAX - 1, data("second"), None);
        // The first request is answered while the second is in flight: the second stays open.
        assert!(tree.end(10, first, 3_000, |d| d.resource = "first done".into()));
        assert_eq!(tree.innermost(10), Some(second));
        assert!(tree.end(10, second, 4_000, |d| d.resource = "second done".into()));
        let ended = ended.lock().unwrap();
        let names: Vec<_> = ended.iter().map(|c| (c.data.name, c.data.resource.as_ref())).collect();
        assert_eq!(names, [("query of first", ""), ("first", "first done"), ("second", "second done")]);
        assert_eq!(ended[2].end_unix_ns - ended[2].start_unix_ns, 2_000);
        assert_eq!(tree.abandoned, 0);
    }

    #[test]
    fn a_call_recorded_within_an_earlier_request_is_its_child_not_the_latest_ones() {
        let (mut tree, ended) = tree_recording_ends();
        let first = tree.start_root(1, 10, 1_000, u64::MAX, data("first"), None);
        let second = tree.start_root(1, 10, 2_000, u64::MAX - 1, data("second"), None);
        tree.record_within(1, 10, Some(first), 1_100, 2_500, data("call of first"));
        tree.record_within(1, 10, None, 2_100, 2_600, data("call of the innermost"));
        let open_call = tree.start_detached_within(1, 10, Some(first), 2_200, data("open call of first"));
        tree.end_detached(open_call, 2_700, |_| {});
        tree.end(10, first, 3_000, |_| {});
        tree.record_within(1, 10, Some(first), 3_100, 3_200, data("call after first ended"));
        tree.end(10, second, 4_000, |_| {});
        let ended = ended.lock().unwrap();
        let parent = |name: &str| ended.iter().find(|c| c.data.name == name).unwrap().parent_id;
        assert_eq!(parent("call of first"), first);
        assert_eq!(parent("open call of first"), first);
        assert_eq!(parent("call of the innermost"), second);
        assert_eq!(parent("call after first ended"), second, "falls back to the innermost");
    }

    #[test]
    fn process_exit_ends_every_request_of_an_event_driven_thread() {
        let (mut tree, ended) = tree_recording_ends();
        tree.start_root(7, 70, 1_000, u64::MAX, data("first"), None);
        tree.start_root(7, 70, 2_000, u64::MAX - 1, data("second"), None);
        tree.end_process(7, 9_000);
        assert_eq!(ended.lock().unwrap().len(), 2);
        assert_eq!(tree.open_contexts(), 0);
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
