use std::borrow::Cow;

use crate::tags::TagMap;

/// The role of the operation, as Datadog's `span.kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    Internal,
    Client,
    Server,
    Producer,
    Consumer,
}

impl SpanKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Internal => "internal",
            Self::Client => "client",
            Self::Server => "server",
            Self::Producer => "producer",
            Self::Consumer => "consumer",
        }
    }
}

/// Why an operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextError {
    pub kind: String,
    pub message: String,
}

/// What an integration says about an operation; the shape products read. Like dd-trace-py's
/// `core.context_with_data(...)` keyword arguments, it is generic: no product or library in it.
#[derive(Debug, Clone, PartialEq)]
pub struct ContextData {
    /// Operation name, e.g. `sqlite.query`.
    pub name: &'static str,
    /// A literal for some operations (a traced function's name), else what was learnt.
    pub resource: Cow<'static, str>,
    /// e.g. `sql`, `web`, `http`.
    pub span_type: &'static str,
    pub component: &'static str,
    pub kind: SpanKind,
    /// Keys are literals but for the few an integration builds (`http.request.headers.<name>`).
    pub meta: TagMap<String>,
    pub metrics: TagMap<f64>,
    pub error: Option<ContextError>,
    /// The service an in-process integration names its spans with by default (dd-trace-py's
    /// schema v0: `redis`, `postgres`); `None`: the process's. Products decide what to show.
    pub integration_service: Option<&'static str>,
    /// Known only by what happened inside it (a handler seen through the calls it made): it ends
    /// where its last child ended, whenever the tree ends it (see `ContextTree`).
    pub bounded_by_children: bool,
}

impl ContextData {
    pub fn new(name: &'static str, component: &'static str, span_type: &'static str, kind: SpanKind) -> Self {
        Self {
            name,
            resource: Cow::Borrowed(""),
            span_type,
            component,
            kind,
            meta: TagMap::new(),
            metrics: TagMap::new(),
            error: None,
            integration_service: None,
            bounded_by_children: false,
        }
    }

    pub fn with_service(mut self, service: &'static str) -> Self {
        self.integration_service = Some(service);
        self
    }

    pub fn with_resource(mut self, resource: impl Into<Cow<'static, str>>) -> Self {
        self.resource = resource.into();
        self
    }

    pub fn with_meta(mut self, key: impl Into<Cow<'static, str>>, value: impl Into<String>) -> Self {
        self.meta.insert(key.into(), value.into());
        self
    }
}

/// One operation on one thread of a target, with its place in the thread's tree.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecutionContext {
    pub id: u64,
    pub trace_id: u128,
    /// 0 for the root of a tree.
    pub parent_id: u64,
    /// The root of this context's tree (itself for a root).
    pub root_id: u64,
    pub tgid: u32,
    pub tid: u32,
    pub start_unix_ns: i64,
    /// 0 while the context is open.
    pub end_unix_ns: i64,
    pub data: ContextData,
}

impl ExecutionContext {
    pub fn is_root(&self) -> bool {
        // The local root: a server span continuing a caller's trace has a (remote) parent.
        self.id == self.root_id
    }

    pub fn duration_ns(&self) -> i64 {
        (self.end_unix_ns - self.start_unix_ns).max(0)
    }
}
