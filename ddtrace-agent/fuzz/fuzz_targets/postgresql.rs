//! postgresql: arbitrary traffic on a connection its first message opened (see `streams::replay`).
#![no_main]

use std::cell::RefCell;

use ddtrace_agent::{
    core::{ContextTree, EventHub, WallClock},
    integrations::streams::{replay, StreamLayer},
};
use libfuzzer_sys::fuzz_target;

thread_local! {
    /// Made once: the protocols' settings are not what is fuzzed. No product listens to the
    /// tree: ended contexts are dropped.
    static STATE: RefCell<(StreamLayer, ContextTree)> =
        RefCell::new((replay::layer(), ContextTree::new(WallClock::calibrate(), EventHub::new())));
}

fuzz_target!(|input: &[u8]| {
    STATE.with_borrow_mut(|(layer, contexts)| {
        assert_eq!(replay::replay_on(layer, "postgresql", input, contexts), 0, "the close ends every call");
    });
});
