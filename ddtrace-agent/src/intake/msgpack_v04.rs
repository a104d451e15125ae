//! The Datadog agent's `/v0.4/traces` payload (msgpack: an array of traces, each an array of span
//! maps), written straight from our [`Span`]s on the thread that finishes them.
//!
//! Why not libdatadog's serializer: it takes its own span model, and converting each span to it,
//! then serializing and de-duplicating it, was half of the daemon's CPU per span (and made the
//! writer thread drop chunks at 700k spans/s). Encoding where the spans are built leaves the
//! writer only bytes to send (with libdatadog's `send_with_retry`). The payload is checked against
//! libdatadog's own v0.4 decoder in the tests below.
//!
//! What Datadog tracers do at this point is done here, since the spans come from outside any
//! tracer:
//! - `trace_id` carries the low 64 bits; the first span (the local root) carries the high 64 bits
//!   as `_dd.p.tid` (16 lowercase hex digits) when they are not zero, i.e. for 128-bit ids;
//! - the local root gets `_dd.top_level = 1` and, unless a sampling decision was already made,
//!   `_sampling_priority_v1 = 1` (auto keep: the daemon does no sampling of its own);
//! - empty services take the daemon's service; `env` and (for spans of that service) `version`
//!   are filled in when configured and absent.
//!
//! We do not claim `Datadog-Client-Computed-Top-Level`, so the agent still computes top-level
//! spans itself; marking the root is harmless and matches what tracers send.

use rmp::encode;

use super::traces::{Span, TraceChunk};

/// Values the daemon fills into spans that do not carry their own, as in-process tracers do.
#[derive(Debug, Clone, Default)]
pub struct SpanDefaults {
    pub service: String,
    pub env: Option<String>,
    pub app_version: Option<String>,
}

/// The marker and room for a 32-bit array length: the payload's trace count is known at the end.
const ARRAY32: u8 = 0xdd;
const HEADER_LEN: usize = 5;

/// Encodes trace chunks into one v0.4 payload buffer.
#[derive(Debug, Clone, Default)]
pub struct V04Encoder {
    defaults: SpanDefaults,
}

impl V04Encoder {
    pub fn new(defaults: SpanDefaults) -> Self {
        Self { defaults }
    }

    /// Starts a payload in `out` (cleared first).
    pub fn start(&self, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&[ARRAY32, 0, 0, 0, 0]);
    }

    /// Appends one trace (the chunk's spans, local root first) to a started payload.
    pub fn append(&self, chunk: &TraceChunk, out: &mut Vec<u8>) {
        write_array_len(out, chunk.spans.len());
        for (i, span) in chunk.spans.iter().enumerate() {
            self.write_span(span, i == 0, out);
        }
    }

    /// Writes the number of traces appended since [`start`](Self::start) into the header.
    pub fn finish(&self, out: &mut [u8], traces: usize) {
        assert!(out.len() >= HEADER_LEN && out[0] == ARRAY32, "finish() of a payload that was not started");
        out[1..HEADER_LEN].copy_from_slice(&(traces as u32).to_be_bytes());
    }

    fn write_span(&self, span: &Span, local_root: bool, out: &mut Vec<u8>) {
        let defaults = &self.defaults;
        let service = if span.service.is_empty() { defaults.service.as_str() } else { span.service.as_str() };
        let env = defaults.env.as_deref().filter(|_| !span.meta.contains_key("env"));
        // Like in-process tracers: the app's version describes the app's own service only.
        let version = defaults
            .app_version
            .as_deref()
            .filter(|_| service == defaults.service && !span.meta.contains_key("version"));
        let high_trace_id = (span.trace_id >> 64) as u64;
        let tid = local_root && high_trace_id != 0;
        let has_priority = span.metrics.contains_key("_sampling_priority_v1");

        write_map_len(out, 12);
        write_str(out, "service");
        write_str(out, service);
        write_str(out, "name");
        write_str(out, &span.name);
        write_str(out, "resource");
        write_str(out, &span.resource);
        write_str(out, "type");
        write_str(out, &span.span_type);
        write_str(out, "trace_id");
        write_uint(out, span.trace_id as u64);
        write_str(out, "span_id");
        write_uint(out, span.span_id);
        write_str(out, "parent_id");
        write_uint(out, span.parent_id);
        write_str(out, "start");
        write_int(out, span.start_unix_ns);
        write_str(out, "duration");
        write_int(out, span.duration_ns);
        write_str(out, "error");
        write_int(out, i64::from(span.error));

        // A propagated `_dd.p.tid` is replaced by the one the id itself says.
        let kept_meta = |name: &str| !(tid && name == "_dd.p.tid");
        let meta_len = span.meta.iter().filter(|(k, _)| kept_meta(k)).count()
            + usize::from(env.is_some())
            + usize::from(version.is_some())
            + usize::from(tid);
        write_str(out, "meta");
        write_map_len(out, meta_len);
        for (name, value) in span.meta.iter().filter(|(k, _)| kept_meta(k)) {
            write_str(out, name);
            write_str(out, value);
        }
        if let Some(env) = env {
            write_str(out, "env");
            write_str(out, env);
        }
        if let Some(version) = version {
            write_str(out, "version");
            write_str(out, version);
        }
        if tid {
            write_str(out, "_dd.p.tid");
            write_hex16(out, high_trace_id);
        }

        let kept_metric = |name: &str| !(local_root && name == "_dd.top_level");
        let metrics_len = span.metrics.iter().filter(|(k, _)| kept_metric(k)).count()
            + usize::from(local_root)
            + usize::from(local_root && !has_priority);
        write_str(out, "metrics");
        write_map_len(out, metrics_len);
        for (name, value) in span.metrics.iter().filter(|(k, _)| kept_metric(k)) {
            write_str(out, name);
            write_f64(out, *value);
        }
        if local_root {
            write_str(out, "_dd.top_level");
            write_f64(out, 1.0);
            if !has_priority {
                write_str(out, "_sampling_priority_v1");
                write_f64(out, 1.0);
            }
        }
    }
}

// Writing into a `Vec` cannot fail: rmp's `Result`s are dropped on purpose below.

fn write_array_len(out: &mut Vec<u8>, len: usize) {
    let _ = encode::write_array_len(out, len as u32);
}

fn write_map_len(out: &mut Vec<u8>, len: usize) {
    let _ = encode::write_map_len(out, len as u32);
}

fn write_str(out: &mut Vec<u8>, value: &str) {
    let _ = encode::write_str(out, value);
}

fn write_uint(out: &mut Vec<u8>, value: u64) {
    let _ = encode::write_uint(out, value);
}

fn write_int(out: &mut Vec<u8>, value: i64) {
    let _ = encode::write_sint(out, value);
}

fn write_f64(out: &mut Vec<u8>, value: f64) {
    let _ = encode::write_f64(out, value);
}

/// `value` as 16 lowercase hex digits, a msgpack string, without formatting machinery.
fn write_hex16(out: &mut Vec<u8>, value: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let _ = encode::write_str_len(out, 16);
    out.extend((0..16).rev().map(|nibble| DIGITS[((value >> (nibble * 4)) & 0xf) as usize]));
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use libdd_trace_utils::{msgpack_decoder, span::v04::SpanSlice};

    const TRACE_ID: u128 = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210;

    fn defaults() -> SpanDefaults {
        SpanDefaults {
            service: "billing".to_owned(),
            env: Some("test".to_owned()),
            app_version: Some("1.2.3".to_owned()),
        }
    }

    pub(crate) fn sample_chunk(trace_id: u128) -> TraceChunk {
        let root = Span {
            trace_id,
            span_id: 11,
            parent_id: 0,
            name: "http.request".into(),
            resource: "GET /users/?".into(),
            service: "billing".to_owned(),
            span_type: "web".into(),
            start_unix_ns: 1_700_000_000_000_000_000,
            duration_ns: 5_000_000,
            meta: [("http.method".into(), "GET".into())].into_iter().collect(),
            ..Default::default()
        };
        let child = Span {
            trace_id,
            span_id: 12,
            parent_id: 11,
            name: "sqlite.query".into(),
            resource: "SELECT * FROM users WHERE id = ?".into(),
            service: "sqlite".to_owned(),
            span_type: "sql".into(),
            start_unix_ns: 1_700_000_000_001_000_000,
            duration_ns: 1_234_000,
            error: 1,
            meta: [("error.message".into(), "no such table".into())].into_iter().collect(),
            metrics: [("db.row_count".into(), 0.0)].into_iter().collect(),
        };
        TraceChunk { spans: vec![root, child], container_id: None }
    }

    /// The payload of `chunks`, read back with libdatadog's v0.4 decoder (the agent's reading).
    fn decoded(defaults: SpanDefaults, chunks: &[TraceChunk]) -> Vec<Vec<SpanSlice<'static>>> {
        let encoder = V04Encoder::new(defaults);
        let mut out = Vec::new();
        encoder.start(&mut out);
        for chunk in chunks {
            encoder.append(chunk, &mut out);
        }
        encoder.finish(&mut out, chunks.len());
        // The decoded spans borrow the payload: a test may keep it.
        let out: &'static [u8] = Box::leak(out.into_boxed_slice());
        let (traces, size) = msgpack_decoder::v04::from_slice(out).expect("libdatadog decodes our payload");
        // `size` counts what follows the outer array's header.
        assert_eq!(size + HEADER_LEN, out.len(), "trailing bytes after the payload");
        traces
    }

    fn meta(span: &SpanSlice<'static>, name: &str) -> Option<String> {
        span.meta.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
    }

    fn metric(span: &SpanSlice<'static>, name: &str) -> Option<f64> {
        span.metrics.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
    }

    #[test]
    fn spans_decode_with_libdatadog_and_split_the_128_bit_trace_id() {
        let traces = decoded(defaults(), &[sample_chunk(TRACE_ID), sample_chunk(0x42)]);
        assert_eq!(traces.len(), 2);
        let (root, child) = (&traces[0][0], &traces[0][1]);
        assert_eq!(root.trace_id, 0xfedc_ba98_7654_3210);
        assert_eq!(child.trace_id, 0xfedc_ba98_7654_3210);
        assert_eq!(meta(root, "_dd.p.tid").as_deref(), Some("0123456789abcdef"));
        // Propagated tags belong on the chunk root only.
        assert_eq!(meta(child, "_dd.p.tid").as_deref(), None);
        assert_eq!((root.span_id, root.parent_id), (11, 0));
        assert_eq!((child.span_id, child.parent_id), (12, 11));
        assert_eq!(root.name, "http.request");
        assert_eq!(meta(root, "http.method").as_deref(), Some("GET"));
        assert_eq!(child.resource, "SELECT * FROM users WHERE id = ?");
        assert_eq!(child.r#type, "sql");
        assert_eq!(child.error, 1);
        assert_eq!(child.duration, 1_234_000);
        assert_eq!(child.start, 1_700_000_000_001_000_000);
        assert_eq!(metric(child, "db.row_count"), Some(0.0));
        assert_eq!(meta(child, "error.message").as_deref(), Some("no such table"));
        // A 64-bit id has no high half to carry.
        assert_eq!(traces[1][0].trace_id, 0x42);
        assert_eq!(meta(&traces[1][0], "_dd.p.tid").as_deref(), None);
    }

    #[test]
    fn the_local_root_only_is_marked_and_an_upstream_decision_kept() {
        let traces = decoded(defaults(), &[sample_chunk(TRACE_ID)]);
        assert_eq!(metric(&traces[0][0], "_sampling_priority_v1"), Some(1.0));
        assert_eq!(metric(&traces[0][0], "_dd.top_level"), Some(1.0));
        assert_eq!(metric(&traces[0][1], "_sampling_priority_v1"), None);
        assert_eq!(metric(&traces[0][1], "_dd.top_level"), None);

        // A decision made upstream (here: user reject) is kept; a propagated tid and top-level
        // mark are replaced, never doubled.
        let mut chunk = sample_chunk(TRACE_ID);
        chunk.spans[0].metrics.insert("_sampling_priority_v1".into(), -1.0);
        chunk.spans[0].metrics.insert("_dd.top_level".into(), 0.0);
        chunk.spans[0].meta.insert("_dd.p.tid".into(), "ffffffffffffffff".into());
        let traces = decoded(defaults(), &[chunk]);
        let root = &traces[0][0];
        assert_eq!(metric(root, "_sampling_priority_v1"), Some(-1.0));
        assert_eq!(metric(root, "_dd.top_level"), Some(1.0));
        assert_eq!(meta(root, "_dd.p.tid").as_deref(), Some("0123456789abcdef"));
        assert_eq!(root.meta.iter().filter(|(k, _)| *k == "_dd.p.tid").count(), 1);
        assert_eq!(root.metrics.iter().filter(|(k, _)| *k == "_dd.top_level").count(), 1);
    }

    #[test]
    fn service_env_and_version_are_filled_in() {
        let mut chunk = sample_chunk(TRACE_ID);
        chunk.spans[0].service.clear();
        let traces = decoded(defaults(), &[chunk]);
        let (root, child) = (&traces[0][0], &traces[0][1]);
        assert_eq!(root.service, "billing");
        assert_eq!(meta(root, "env").as_deref(), Some("test"));
        assert_eq!(meta(root, "version").as_deref(), Some("1.2.3"));
        // The sqlite span is another service: env yes, the app's version no.
        assert_eq!(child.service, "sqlite");
        assert_eq!(meta(child, "env").as_deref(), Some("test"));
        assert_eq!(meta(child, "version").as_deref(), None);

        // A span's own env wins; no defaults configured, nothing added.
        let mut chunk = sample_chunk(TRACE_ID);
        chunk.spans[1].meta.insert("env".into(), "prod".into());
        let traces = decoded(defaults(), &[chunk]);
        assert_eq!(meta(&traces[0][1], "env").as_deref(), Some("prod"));
        let traces = decoded(SpanDefaults { service: "svc".into(), ..Default::default() }, &[sample_chunk(1)]);
        assert_eq!((meta(&traces[0][0], "env"), meta(&traces[0][0], "version")), (None, None));
    }

    #[test]
    fn an_empty_payload_is_an_empty_array() {
        assert!(decoded(defaults(), &[]).is_empty());
    }
}
