//! For tests of core and of the integrations: a context tree whose ended contexts are kept.

use std::sync::{Arc, Mutex};

use super::{ContextTree, CoreEvent, EventHub, ExecutionContext, WallClock};

/// A tree, and the contexts it ended, in the order they ended.
pub fn tree_recording_ends() -> (ContextTree, Arc<Mutex<Vec<ExecutionContext>>>) {
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
