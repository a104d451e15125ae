//! HTTP/1.x seen from outside the process: what the socket capture hands us (the first bytes of
//! each read or write, and its real length) becomes request/response exchanges, and the pieces a
//! span needs are derived from them the way dd-trace-py derives them.
//!
//! This folder owns, as pure userspace code with no knowledge of eBPF, sockets or spans:
//! - [`message_parser`]: one direction of one connection, fed segment by segment, emits message
//!   heads and message ends (bodies are counted, never buffered);
//! - [`exchange`]: pairs requests and responses of one connection (keep-alive, pipelining, closes);
//! - [`resource`]: the `METHOD /path` resource with ids in the path quantized;
//! - [`url`]: `http.url`, with the query string obfuscated by Datadog's default pattern;
//! - [`propagation`]: the caller's trace context from Datadog and W3C request headers;
//! - [`headers`]: the `DD_TRACE_HEADER_TAGS` allow-list, and which headers the parser keeps;
//! - [`client_library`]: which Python library made an outbound call, from its caller's frames.
//!
//! `stream` makes it a wire protocol of the stream layer (`integrations::streams`): each
//! connection that starts with a request line, its exchanges as contexts.

pub mod client_library;
pub mod exchange;
pub mod headers;
pub mod message_parser;
pub mod propagation;
pub mod resource;
mod stream;
pub mod url;

pub use exchange::{ConnectionTracker, Direction, Exchange, ExchangeOutcome, Role};
pub use headers::{HeaderTagError, HeaderTags, KeptHeaders};
pub use message_parser::{
    starts_request, BodyFraming, HeadCompleteness, Header, HttpVersion, IgnoreReason, MessageHead, MessageKind,
    MessageParser, ParseEvent, ParserLimits, ParserStats, StartLine,
};
pub use propagation::{ExtractedContext, PropagationStyle, PropagationStyleError, StyleList};
pub use resource::{quantize_path, resource_name};
pub use stream::HttpProtocol;
pub use url::{build_http_url, QueryObfuscator, QueryObfuscatorError};
