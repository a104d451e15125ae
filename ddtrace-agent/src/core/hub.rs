use std::collections::HashMap;

use super::context::ExecutionContext;

/// What core tells its listeners.
#[derive(Debug, Clone, Copy)]
pub enum CoreEvent<'a> {
    ContextStarted(&'a ExecutionContext),
    ContextEnded(&'a ExecutionContext),
    /// The traced process `tgid` went away (its open contexts were ended before this).
    ProcessExited(u32),
}

type Listener = Box<dyn FnMut(&CoreEvent<'_>) + Send>;

/// dd-trace-py's `core.on` / `core.dispatch`: listeners subscribe to an event name, either the
/// generic one (`context.ended`) or one specific to an operation (`context.ended.sqlite.query`).
#[derive(Default)]
pub struct EventHub {
    listeners: HashMap<String, Vec<Listener>>,
}

impl EventHub {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `listener` for `event` (e.g. `context.ended`, `context.started.sqlite.query`).
    pub fn on(&mut self, event: &str, listener: impl FnMut(&CoreEvent<'_>) + Send + 'static) {
        self.listeners.entry(event.to_string()).or_default().push(Box::new(listener));
    }

    pub fn has_listeners(&self, event: &str) -> bool {
        self.listeners.get(event).is_some_and(|l| !l.is_empty())
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
        if self.listeners.len() > 1 {
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
}
