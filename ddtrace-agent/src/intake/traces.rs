//! The trace payload model of the intake layer: what the tracing product hands to a
//! [`TraceSink`](super::TraceSink). Plain owned data, independent of any wire format; each sink
//! converts it (msgpack v0.4 through libdatadog, console text, ...).

use std::borrow::Cow;

pub use crate::tags::{TagMap, TagName};

/// A tag's value: a literal for most fixed ones (`span.kind:client`, `component`), so building a
/// span allocates only for what it learnt.
pub type TagValue = Cow<'static, str>;

/// One finished span, in Datadog's terms.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Span {
    /// Full 128-bit trace id. Sinks that speak v0.4 split it into `trace_id` (low 64 bits) and
    /// the `_dd.p.tid` tag (high 64 bits).
    pub trace_id: u128,
    pub span_id: u64,
    /// 0 for a trace root.
    pub parent_id: u64,
    /// Operation name, e.g. `sqlite.query`.
    pub name: Cow<'static, str>,
    /// What was operated on, e.g. the obfuscated SQL statement.
    pub resource: Cow<'static, str>,
    pub service: String,
    /// Datadog span type: `sql`, `web`, `http`, `redis`, ...
    pub span_type: Cow<'static, str>,
    pub start_unix_ns: i64,
    pub duration_ns: i64,
    /// 1 if the operation failed, else 0 (as in the v0.4 protocol).
    pub error: i32,
    pub meta: TagMap<TagValue>,
    pub metrics: TagMap<f64>,
}

/// The spans of one trace that finished together in one process. The first span is the local
/// root (the span whose parent, if any, lives outside this chunk).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TraceChunk {
    pub spans: Vec<Span>,
    /// The container of the process the spans come from (`Datadog-Container-ID`), when the
    /// sender is not in it (a node agent speaks for other containers' processes).
    pub container_id: Option<String>,
}

impl TraceChunk {
    /// The local root, if the chunk is not empty.
    pub fn local_root(&self) -> Option<&Span> {
        self.spans.first()
    }

    /// The trace id shared by the chunk's spans (that of the local root).
    pub fn trace_id(&self) -> Option<u128> {
        self.local_root().map(|s| s.trace_id)
    }
}
