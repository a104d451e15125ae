use rustc_hash::FxHashMap as HashMap;

use super::{context::ExecutionContext, sample::CpuSample};

/// What core tells its listeners.
#[derive(Debug, Clone, Copy)]
pub enum CoreEvent<'a> {
    ContextStarted(&'a ExecutionContext),
    ContextEnded(&'a ExecutionContext),
    /// The traced process `tgid` went away (its open contexts were ended before this).
    ProcessExited(u32),
    /// A thread of a traced process was sampled on a CPU (`cpu.sampled`).
    CpuSampled(&'a CpuSample),
}

type Listener = Box<dyn FnMut(&CoreEvent<'_>) + Send>;

/// dd-trace-py's `core.on` / `core.dispatch`: listeners subscribe to an event name, either the
/// generic one (`context.ended`) or one specific to an operation (`context.ended.sqlite.query`).
#[derive(Default)]
pub struct EventHub {
    listeners: HashMap<String, Vec<Listener>>,
    /// Someone listens to a `context.<started|ended>.<name>` event.
    operation_listeners: bool,
}

impl EventHub {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `listener` for `event` (e.g. `context.ended`, `context.started.sqlite.query`).
    pub fn on(&mut self, event: &str, listener: impl FnMut(&CoreEvent<'_>) + Send + 'static) {
        self.operation_listeners |= ["context.started.", "context.ended."].iter().any(|base| event.starts_with(base));
        self.listeners.entry(event.to_string()).or_default().push(Box::new(listener));
    }

    /// Calls every listener of `event`, in registration order.
    pub fn dispatch(&mut self, event: &str, payload: &CoreEvent<'_>) {
        if let Some(listeners) = self.listeners.get_mut(event) {
            for listener in listeners {
                listener(payload);
            }
        }
    }

    /// Dispatches `<base>` then `<base>.<operation name>`; the specific name is only built when
    /// someone listens to it, to keep allocation off the per-event path.
    pub(super) fn dispatch_context(&mut self, base: &str, payload: &CoreEvent<'_>, context: &ExecutionContext) {
        self.dispatch(base, payload);
        if self.operation_listeners {
            let specific = format!("{base}.{}", context.data.name);
            self.dispatch(&specific, payload);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn dispatches_to_listeners_of_that_event_only() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut hub = EventHub::new();
        let s = seen.clone();
        hub.on("a", move |_| s.lock().unwrap().push("a1"));
        let s = seen.clone();
        hub.on("a", move |_| s.lock().unwrap().push("a2"));
        let s = seen.clone();
        hub.on("b", move |_| s.lock().unwrap().push("b"));
        hub.dispatch("a", &CoreEvent::ProcessExited(1));
        hub.dispatch("c", &CoreEvent::ProcessExited(1));
        assert_eq!(*seen.lock().unwrap(), vec!["a1", "a2"]);
    }

    #[test]
    fn context_events_reach_generic_and_operation_listeners() {
        use crate::core::{ContextData, ExecutionContext, SpanKind};
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut hub = EventHub::new();
        for name in ["context.ended", "context.ended.sqlite.query", "context.ended.other"] {
            let s = seen.clone();
            hub.on(name, move |_| s.lock().unwrap().push(name));
        }
        let context = ExecutionContext {
            id: 1,
            trace_id: 1,
            parent_id: 0,
            root_id: 1,
            tgid: 1,
            tid: 1,
            start_unix_ns: 0,
            end_unix_ns: 1,
            data: ContextData::new("sqlite.query", "sqlite", "sql", SpanKind::Client),
        };
        hub.dispatch_context("context.ended", &CoreEvent::ContextEnded(&context), &context);
        assert_eq!(*seen.lock().unwrap(), vec!["context.ended", "context.ended.sqlite.query"]);
    }
}
