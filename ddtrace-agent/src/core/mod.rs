//! The abstraction between integrations and products, as in dd-trace-py's `core`: integrations
//! open and close [`ExecutionContext`]s on threads of the target; products listen to the
//! [`EventHub`] (`context.started.<name>`, `context.ended.<name>`). Core knows neither side.

mod call_stacks;
mod clock;
mod context;
mod hub;
mod identities;
mod ids;
mod sample;
#[cfg(any(test, feature = "fuzzing"))]
pub mod test_support;
mod tree;

/// Per-thread stacks (open calls, open contexts) are kept when they empty, so a thread's next
/// call reuses them instead of allocating; past this many threads the empty ones are dropped.
const KEPT_IDLE_THREADS: usize = 1024;

pub use call_stacks::CallStacks;
pub use clock::WallClock;
pub use context::{ContextData, ContextError, ExecutionContext, SpanKind};
pub use hub::{CoreEvent, EventHub};
pub use identities::{Identities, ProcessIdentity};
pub use ids::{new_span_id, new_trace_id};
pub use sample::{ActiveContext, CpuSample};
pub use tree::{ContextId, ContextTree, RemoteParent};
