//! A [`TraceSink`] that sends trace chunks to a Datadog agent's `/v0.4/traces` endpoint with
//! libdatadog's `TraceExporter` (msgpack encoding, the tracer headers, retries, `/info` polling).
//!
//! Runtime: the exporter's sync API drives its own tokio runtime (a libdatadog
//! `ForkSafeRuntime` with one worker thread) with `block_on`, which panics when the calling
//! thread is already inside a tokio runtime, and dropping that runtime panics there too. The
//! flush thread that calls [`TraceSink::send`] is a plain `std::thread`, where this costs nothing;
//! when a call does come from inside tokio (construction from `async fn main`, a drop in a task),
//! it is moved to a short-lived scoped thread instead of panicking.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use libdd_capabilities_impl::NativeCapabilities;
use libdd_data_pipeline::trace_exporter::agent_response::AgentResponse;
use libdd_data_pipeline::trace_exporter::error::{BuilderErrorKind, TraceExporterError};
use libdd_data_pipeline::trace_exporter::{
    TraceExporter, TraceExporterBuilder, TraceExporterInputFormat, TraceExporterOutputFormat,
};
use libdd_shared_runtime::ForkSafeRuntime;
use libdd_trace_utils::span::span_pool::PooledChunks;
use libdd_trace_utils::span::v04::{SpanSlice, VecMap};
use tracing::debug;

use super::blocking::outside_tokio;
use super::traces::{Span, TraceChunk};
use super::{IntakeError, TraceSink};

/// Sent as `Datadog-Meta-Lang`. The agent and backend only use the language to label payloads
/// (receiver stats, the service's runtime facet); it does not change how traces are processed.
/// We instrument native libraries in processes written in any language, so the honest label is
/// the mechanism, not a guess at the target's language ("rust" would describe the daemon, not
/// the traced code).
pub const LANGUAGE: &str = "ebpf";

/// How long shutdown waits for the exporter's background workers (the `/info` poller).
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);

/// How much of an agent error body to keep in an error message.
const MAX_ERROR_BODY: usize = 512;

type Exporter = TraceExporter<NativeCapabilities, ForkSafeRuntime>;

/// Containers a node agent keeps an exporter for at once; the least recently used one is shut
/// down past it (its next chunks build it again).
const MAX_CONTAINER_EXPORTERS: usize = 64;

/// Sends trace chunks to the Datadog agent (v0.4 protocol).
///
/// Chunks of processes in different containers go in different payloads, each with its own
/// `Datadog-Container-ID` header (the agent tags a payload with its header's container), so one
/// libdatadog exporter per container, all on one runtime.
#[derive(Debug)]
pub struct AgentExporter {
    /// By container id (`None`: the spans' processes are in no container, or `--pid`'s target).
    exporters: Vec<(Option<String>, Exporter)>,
    shut_down: bool,
    /// Owned here (also shared with the exporters) so that shutdown can stop its tokio runtime.
    runtime: Arc<ForkSafeRuntime>,
    agent_url: String,
    tracer_version: String,
    kernel_release: String,
    defaults: SpanDefaults,
}

/// Values the daemon fills into spans that do not carry their own, as in-process tracers do.
#[derive(Debug, Clone, Default)]
pub(crate) struct SpanDefaults {
    pub service: String,
    pub env: Option<String>,
    pub app_version: Option<String>,
}

impl AgentExporter {
    /// Builds an exporter for the agent at `agent_url` (`http://host:port` or
    /// `unix:///path/to/apm.socket`; `/v0.4/traces` is appended).
    ///
    /// `tracer_version` is sent as `Datadog-Meta-Tracer-Version` (the agent requires it; an empty
    /// string is replaced by this crate's version). `service`, `env` and `app_version` are the
    /// defaults for spans that do not set `service`, `env` and `version` themselves.
    ///
    /// Does not contact the agent: an agent that is down is reported by [`TraceSink::send`].
    pub fn new(
        agent_url: &str,
        tracer_version: &str,
        service: &str,
        env: Option<&str>,
        app_version: Option<&str>,
    ) -> Result<Self, IntakeError> {
        let tracer_version = if tracer_version.is_empty() { env!("CARGO_PKG_VERSION") } else { tracer_version };
        // The "language version" of an eBPF tracer is the kernel it runs on.
        let kernel_release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".to_owned());
        let runtime = outside_tokio(|| {
            ForkSafeRuntime::with_worker_threads(1).map_err(|e| IntakeError::ExporterSetup {
                url: agent_url.to_owned(),
                reason: format!("could not start the exporter's runtime: {e}"),
            })
        })?;
        let mut this = Self {
            exporters: Vec::new(),
            shut_down: false,
            runtime: Arc::new(runtime),
            agent_url: agent_url.to_owned(),
            tracer_version: tracer_version.to_owned(),
            kernel_release,
            defaults: SpanDefaults {
                service: service.to_owned(),
                env: env.map(str::to_owned),
                app_version: app_version.map(str::to_owned),
            },
        };
        // Built now so that a bad URL is reported at start.
        this.exporter_for(None)?;
        Ok(this)
    }

    /// The index of the exporter whose payloads say `container_id`, built on first use.
    fn exporter_for(&mut self, container_id: Option<&str>) -> Result<usize, IntakeError> {
        if let Some(at) = self.exporters.iter().position(|(id, _)| id.as_deref() == container_id) {
            // Most recently used last: eviction takes the front.
            let entry = self.exporters.remove(at);
            self.exporters.push(entry);
        } else {
            if self.exporters.len() >= MAX_CONTAINER_EXPORTERS {
                let (_, oldest) = self.exporters.remove(0);
                let _ = outside_tokio(move || oldest.shutdown(Some(SHUTDOWN_TIMEOUT)));
            }
            let exporter = self.build_exporter(container_id)?;
            self.exporters.push((container_id.map(str::to_owned), exporter));
        }
        Ok(self.exporters.len() - 1)
    }

    fn build_exporter(&self, container_id: Option<&str>) -> Result<Exporter, IntakeError> {
        let agent_url = &self.agent_url;
        outside_tokio(|| {
            let mut builder = TraceExporterBuilder::<ForkSafeRuntime>::new();
            builder
                .set_url(agent_url)
                .set_shared_runtime(self.runtime.clone())
                .set_input_format(TraceExporterInputFormat::V04)
                .set_output_format(TraceExporterOutputFormat::V04)
                .set_language(LANGUAGE)
                .set_language_version(&self.kernel_release)
                .set_tracer_version(&self.tracer_version)
                .set_service(&self.defaults.service)
                // The daemon does not fork; workers need no restart hooks.
                .set_restart_after_fork(false);
            if let Some(env) = &self.defaults.env {
                builder.set_env(env);
            }
            if let Some(version) = &self.defaults.app_version {
                builder.set_app_version(version);
            }
            if let Some(id) = container_id {
                builder.set_container_id(id);
            }
            // Left off on purpose: client-side stats (`enable_stats`), telemetry
            // (`enable_telemetry`), health metrics. The agent computes stats from what we send.
            builder.build::<NativeCapabilities>().map_err(|e| setup_error(agent_url, e))
        })
    }

    /// The agent base URL this exporter sends to.
    pub fn agent_url(&self) -> &str {
        &self.agent_url
    }
}

impl TraceSink for AgentExporter {
    fn send(&mut self, chunks: Vec<TraceChunk>) -> Result<(), IntakeError> {
        if self.shut_down {
            return Err(IntakeError::SendFailed {
                url: self.agent_url.clone(),
                chunks: chunks.len(),
                reason: "the exporter was already shut down".to_owned(),
            });
        }
        // One payload per container, in the order the containers first appear.
        let mut containers: Vec<Option<&str>> = Vec::new();
        for chunk in &chunks {
            let id = chunk.container_id.as_deref();
            if !containers.contains(&id) {
                containers.push(id);
            }
        }
        let mut first_error = None;
        for container in containers {
            let mut group =
                chunks.iter().filter(|c| c.container_id.as_deref() == container && !c.spans.is_empty()).peekable();
            if group.peek().is_none() {
                continue;
            }
            let at = match self.exporter_for(container) {
                Ok(at) => at,
                Err(e) => {
                    first_error = first_error.or(Some(e));
                    continue;
                }
            };
            let exporter = &self.exporters[at].1;
            let group: Vec<&TraceChunk> = group.collect();
            for payload in payloads(&group) {
                let highs = HighTraceIds::of(payload.iter().copied());
                let payload: Vec<Vec<SpanSlice<'_>>> =
                    payload.iter().map(|c| to_libdd_chunk(c, &self.defaults, &highs)).collect();
                let count = payload.len();
                let result = outside_tokio(|| exporter.send_trace_chunks(PooledChunks::unpooled(payload), None))
                    .map_err(|e| send_error(&self.agent_url, count, e));
                match result {
                    Ok(AgentResponse::Changed { body }) => {
                        debug!(chunks = count, container, agent_response = %body, "sent traces to the agent")
                    }
                    Ok(AgentResponse::Unchanged) => debug!(chunks = count, container, "sent traces to the agent"),
                    Err(e) => {
                        // The next payloads would wait out the same timeouts and retries.
                        first_error = first_error.or(Some(e));
                        break;
                    }
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn shutdown(&mut self) -> Result<(), IntakeError> {
        if std::mem::replace(&mut self.shut_down, true) {
            return Ok(());
        }
        let exporters = std::mem::take(&mut self.exporters);
        let runtime = &self.runtime;
        outside_tokio(move || {
            let mut workers = Ok(());
            for (_, exporter) in exporters {
                workers = workers.and(exporter.shutdown(Some(SHUTDOWN_TIMEOUT)));
            }
            // Stops the tokio runtime itself, so that dropping `self` later is cheap anywhere.
            let runtime = runtime.shutdown(Some(SHUTDOWN_TIMEOUT));
            workers.map_err(|e| e.to_string()).and(runtime.map_err(|e| e.to_string()))
        })
        .map_err(|reason| IntakeError::Shutdown { url: self.agent_url.clone(), reason })
    }
}

impl Drop for AgentExporter {
    fn drop(&mut self) {
        if let Err(e) = TraceSink::shutdown(self) {
            debug!(error = %e, "trace exporter shutdown on drop");
        }
    }
}

/// Converts one chunk to libdatadog's v0.4 span model, borrowing the strings.
///
/// What Datadog tracers do at this point, done here because the spans come from outside any
/// tracer:
/// - `trace_id` carries the low 64 bits; the first span (the local root) carries the high 64 bits
///   as `_dd.p.tid` (16 lowercase hex digits) when they are not zero, i.e. for 128-bit ids;
/// - the local root gets `_dd.top_level = 1` and, unless a sampling decision was already made,
///   `_sampling_priority_v1 = 1` (auto keep: the daemon does no sampling);
/// - empty services take the daemon's service; `env` and (for spans of that service) `version`
///   are filled in when configured and absent.
///
/// We do not claim `Datadog-Client-Computed-Top-Level`, so the agent still computes top-level
/// spans itself; marking the root is harmless and matches what tracers send.
pub(crate) fn to_libdd_chunk<'a>(
    chunk: &'a TraceChunk,
    defaults: &'a SpanDefaults,
    trace_id_highs: &'a HighTraceIds,
) -> Vec<SpanSlice<'a>> {
    chunk
        .spans
        .iter()
        .enumerate()
        .map(|(i, span)| {
            let mut converted = to_libdd_span(span, defaults);
            if i == 0 {
                mark_local_root(&mut converted, span.trace_id, trace_id_highs);
            }
            // Our tags are unique by construction (see `TagMap`, and the inserts above only
            // add absent names): spare libdatadog its duplicate scan of every span.
            converted.meta.mark_deduped();
            converted.metrics.mark_deduped();
            converted
        })
        .collect()
}

/// The `_dd.p.tid` texts of the 128-bit trace ids of some chunks (their high halves). Datadog's
/// 128-bit ids carry the trace's start second there (and zeros), so a payload's traces share
/// one or two: formatted once per payload, not per trace.
#[derive(Debug, Default)]
pub(crate) struct HighTraceIds {
    texts: Vec<(u64, String)>,
}

impl HighTraceIds {
    pub(crate) fn of<'c>(chunks: impl IntoIterator<Item = &'c TraceChunk>) -> Self {
        let mut texts: Vec<(u64, String)> = Vec::new();
        for chunk in chunks {
            let Some(root) = chunk.spans.first() else { continue };
            let high = (root.trace_id >> 64) as u64;
            if high != 0 && !texts.iter().any(|(seen, _)| *seen == high) {
                texts.push((high, format!("{high:016x}")));
            }
        }
        Self { texts }
    }

    fn hex(&self, high: u64) -> Cow<'_, str> {
        match self.texts.iter().find(|(seen, _)| *seen == high) {
            Some((_, text)) => Cow::Borrowed(text),
            None => Cow::Owned(format!("{high:016x}")),
        }
    }
}

fn to_libdd_span<'a>(span: &'a Span, defaults: &'a SpanDefaults) -> SpanSlice<'a> {
    let service: &'a str = if span.service.is_empty() { &defaults.service } else { &span.service };
    let mut meta = VecMap::with_capacity(span.meta.len() + 2);
    for (k, v) in &span.meta {
        meta.insert(Cow::Borrowed(k.as_ref()), Cow::Borrowed(v.as_ref()));
    }
    if let Some(env) = defaults.env.as_deref() {
        if !span.meta.contains_key("env") {
            meta.insert(Cow::Borrowed("env"), Cow::Borrowed(env));
        }
    }
    if let Some(version) = defaults.app_version.as_deref() {
        // Like in-process tracers: the app's version describes the app's own service only.
        if service == defaults.service && !span.meta.contains_key("version") {
            meta.insert(Cow::Borrowed("version"), Cow::Borrowed(version));
        }
    }
    let mut metrics = VecMap::with_capacity(span.metrics.len() + 2);
    for (k, v) in &span.metrics {
        metrics.insert(Cow::Borrowed(k.as_ref()), *v);
    }
    SpanSlice {
        service: Cow::Borrowed(service),
        name: Cow::Borrowed(&span.name),
        resource: Cow::Borrowed(&span.resource),
        r#type: Cow::Borrowed(&span.span_type),
        trace_id: u128::from(span.trace_id as u64),
        span_id: span.span_id,
        parent_id: span.parent_id,
        start: span.start_unix_ns,
        duration: span.duration_ns,
        error: span.error,
        meta,
        metrics,
        ..Default::default()
    }
}

/// Most bytes one payload should encode to. libdatadog encodes each payload into a fresh
/// buffer; past 512 KiB (mimalloc's largest pooled block) that buffer is mapped for the call and
/// unmapped after it, so every payload paid a page fault and a zeroed page per 4 KiB written
/// (measured: a seventh of the writer's time at 500k spans/s in 1.4 MB payloads). The estimate
/// below runs low by up to a third (a bench span: ~260 estimated, 350 encoded), hence the margin.
const PAYLOAD_BYTES_BUDGET: usize = 320 * 1024;

/// What one span adds to a payload, about: its strings and tags, and the msgpack keys and
/// numbers around them (~100 bytes).
fn encoded_size(span: &Span) -> usize {
    let tags: usize = span.meta.iter().map(|(k, v)| k.len() + v.len() + 4).sum::<usize>() + span.metrics.len() * 24;
    100 + span.name.len() + span.resource.len() + span.service.len() + span.span_type.len() + tags
}

/// `chunks` cut into consecutive payloads of about [`PAYLOAD_BYTES_BUDGET`] at most; a chunk is
/// never split (a larger one goes alone).
fn payloads<'a>(chunks: &'a [&'a TraceChunk]) -> impl Iterator<Item = &'a [&'a TraceChunk]> {
    let mut rest = chunks;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut bytes = 0;
        let mut end = 0;
        while end < rest.len() {
            let size: usize = rest[end].spans.iter().map(encoded_size).sum();
            if end > 0 && bytes + size > PAYLOAD_BYTES_BUDGET {
                break;
            }
            bytes += size;
            end += 1;
        }
        let (payload, tail) = rest.split_at(end);
        rest = tail;
        Some(payload)
    })
}

fn mark_local_root<'a>(root: &mut SpanSlice<'a>, trace_id: u128, highs: &'a HighTraceIds) {
    let high = (trace_id >> 64) as u64;
    if high != 0 {
        root.meta.insert_or_replace(Cow::Borrowed("_dd.p.tid"), highs.hex(high));
    }
    root.metrics.insert_or_replace(Cow::Borrowed("_dd.top_level"), 1.0);
    if !root.metrics.contains_key("_sampling_priority_v1") {
        root.metrics.insert(Cow::Borrowed("_sampling_priority_v1"), 1.0);
    }
}

fn setup_error(url: &str, e: TraceExporterError) -> IntakeError {
    match e {
        TraceExporterError::Builder(BuilderErrorKind::InvalidUri(reason)) => {
            IntakeError::InvalidAgentUrl { url: url.to_owned(), reason }
        }
        other => IntakeError::ExporterSetup { url: url.to_owned(), reason: other.to_string() },
    }
}

fn send_error(url: &str, chunks: usize, e: TraceExporterError) -> IntakeError {
    use std::io::ErrorKind;
    match e {
        TraceExporterError::Network(e) => IntakeError::AgentUnreachable { url: url.to_owned(), reason: e.to_string() },
        TraceExporterError::Io(e)
            if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::ConnectionRefused | ErrorKind::NotFound) =>
        {
            IntakeError::AgentUnreachable { url: url.to_owned(), reason: e.to_string() }
        }
        TraceExporterError::Request(e) => {
            let mut body: String = e.msg().trim().chars().take(MAX_ERROR_BODY).collect();
            if body.len() < e.msg().trim().len() {
                body.push_str("...");
            }
            IntakeError::AgentRejected { url: url.to_owned(), chunks, status: e.status().as_u16(), body }
        }
        other => IntakeError::SendFailed { url: url.to_owned(), chunks, reason: other.to_string() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    const TRACE_ID: u128 = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210;

    fn defaults() -> SpanDefaults {
        SpanDefaults {
            service: "billing".to_owned(),
            env: Some("test".to_owned()),
            app_version: Some("1.2.3".to_owned()),
        }
    }

    fn sample_chunk(trace_id: u128) -> TraceChunk {
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

    #[test]
    fn payloads_stay_within_the_byte_budget_and_never_split_a_chunk() {
        // Bare spans count 100 bytes each: about 3,270 fit the budget.
        let chunk = |spans: usize| TraceChunk { spans: vec![Span::default(); spans], container_id: None };
        assert_eq!(encoded_size(&Span::default()), 100);
        let chunks = [chunk(2000), chunk(1200), chunk(400), chunk(12000), chunk(1)];
        let refs: Vec<&TraceChunk> = chunks.iter().collect();
        let sizes: Vec<Vec<usize>> =
            payloads(&refs).map(|payload| payload.iter().map(|c| c.spans.len()).collect()).collect();
        assert_eq!(sizes, vec![vec![2000, 1200], vec![400], vec![12000], vec![1]]);
        assert_eq!(payloads(&[]).count(), 0);
    }

    #[test]
    fn conversion_splits_the_128_bit_trace_id() {
        let chunk = sample_chunk(TRACE_ID);
        let d = defaults();
        let highs = HighTraceIds::of([&chunk]);
        let spans = to_libdd_chunk(&chunk, &d, &highs);
        assert_eq!(spans.len(), 2);
        let (root, child) = (&spans[0], &spans[1]);

        assert_eq!(root.trace_id, 0xfedc_ba98_7654_3210);
        assert_eq!(child.trace_id, 0xfedc_ba98_7654_3210);
        assert_eq!(root.meta.get("_dd.p.tid").map(|v| v.as_ref()), Some("0123456789abcdef"));
        // Propagated tags belong on the chunk root only.
        assert!(child.meta.get("_dd.p.tid").is_none());

        assert_eq!((root.span_id, root.parent_id), (11, 0));
        assert_eq!((child.span_id, child.parent_id), (12, 11));
        assert_eq!(root.name, "http.request");
        assert_eq!(child.resource, "SELECT * FROM users WHERE id = ?");
        assert_eq!(child.r#type, "sql");
        assert_eq!(child.error, 1);
        assert_eq!(child.duration, 1_234_000);
        assert_eq!(child.start, 1_700_000_000_001_000_000);
        assert_eq!(child.metrics.get("db.row_count"), Some(&0.0));
    }

    #[test]
    fn conversion_marks_the_local_root_only() {
        let chunk = sample_chunk(TRACE_ID);
        let d = defaults();
        let highs = HighTraceIds::of([&chunk]);
        let spans = to_libdd_chunk(&chunk, &d, &highs);
        assert_eq!(spans[0].metrics.get("_sampling_priority_v1"), Some(&1.0));
        assert_eq!(spans[0].metrics.get("_dd.top_level"), Some(&1.0));
        assert!(spans[1].metrics.get("_sampling_priority_v1").is_none());
        assert!(spans[1].metrics.get("_dd.top_level").is_none());

        // A decision made upstream (here: user reject) is kept.
        let mut chunk = sample_chunk(TRACE_ID);
        chunk.spans[0].metrics.insert("_sampling_priority_v1".into(), -1.0);
        let highs = HighTraceIds::of([&chunk]);
        let spans = to_libdd_chunk(&chunk, &d, &highs);
        assert_eq!(spans[0].metrics.get("_sampling_priority_v1"), Some(&-1.0));
    }

    #[test]
    fn conversion_of_64_bit_ids_has_no_tid() {
        let chunk = sample_chunk(0x42);
        let d = defaults();
        let highs = HighTraceIds::of([&chunk]);
        let spans = to_libdd_chunk(&chunk, &d, &highs);
        assert_eq!(spans[0].trace_id, 0x42);
        assert!(spans[0].meta.get("_dd.p.tid").is_none());
    }

    #[test]
    fn conversion_fills_service_env_and_version() {
        let mut chunk = sample_chunk(TRACE_ID);
        chunk.spans[0].service.clear();
        let d = defaults();
        let highs = HighTraceIds::of([&chunk]);
        let spans = to_libdd_chunk(&chunk, &d, &highs);
        assert_eq!(spans[0].service, "billing");
        assert_eq!(spans[0].meta.get("env").map(|v| v.as_ref()), Some("test"));
        assert_eq!(spans[0].meta.get("version").map(|v| v.as_ref()), Some("1.2.3"));
        // The sqlite span is another service: env yes, the app's version no.
        assert_eq!(spans[1].service, "sqlite");
        assert_eq!(spans[1].meta.get("env").map(|v| v.as_ref()), Some("test"));
        assert!(spans[1].meta.get("version").is_none());
    }

    #[test]
    fn works_from_inside_a_tokio_runtime() {
        // Construction, a failed send and the drop all happen on a runtime thread; none may panic.
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let exporter = AgentExporter::new("http://127.0.0.1:9", "0.1.0", "svc", None, None);
            let exporter = exporter.unwrap();
            drop(exporter);
        });
    }

    #[test]
    fn invalid_url_is_reported() {
        let err = AgentExporter::new("http://[::1", "0.1.0", "svc", None, None).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("http://[::1"), "{msg}");
        assert!(msg.contains("--agent-url"), "{msg}");
    }

    #[test]
    fn unreachable_agent_is_reported() {
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        let mut exporter = AgentExporter::new(&url, "0.1.0", "svc", None, None).unwrap();
        let err = exporter.send(vec![sample_chunk(TRACE_ID)]).unwrap_err();
        assert!(matches!(err, IntakeError::AgentUnreachable { .. }), "unexpected error: {err:?}");
        let msg = err.to_string();
        assert!(msg.contains(&url) && msg.contains("DD_TRACE_AGENT_URL"), "{msg}");
    }

    // ---- against a real Datadog test agent (the harness shared with tests/) -------------------

    use ddtrace_tests::{
        http::{free_port, get as http_get},
        test_agent::TestAgent,
    };

    fn find_span(traces: &[Vec<serde_json::Value>], span_id: u64) -> Option<&serde_json::Value> {
        traces.iter().flatten().find(|s| s["span_id"].as_u64() == Some(span_id))
    }

    #[test]
    fn spans_reach_the_datadog_test_agent() {
        let agent = TestAgent::start();

        // The daemon's way: send from a plain flush thread.
        let url = agent.url();
        std::thread::spawn(move || {
            let mut exporter = AgentExporter::new(&url, "0.1.0", "billing", Some("test"), Some("1.2.3")).unwrap();
            exporter.send(vec![sample_chunk(TRACE_ID)]).unwrap();
            exporter.shutdown().unwrap();
        })
        .join()
        .unwrap();

        // And from inside a tokio runtime, which libdatadog's blocking API does not allow as is.
        let second_trace = TRACE_ID ^ 0x1111;
        let mut chunk = sample_chunk(second_trace);
        for (i, span) in chunk.spans.iter_mut().enumerate() {
            span.span_id = 21 + i as u64;
            span.parent_id = if i == 0 { 0 } else { 21 };
        }
        let url = agent.url();
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap().block_on(
            async move {
                let mut exporter = AgentExporter::new(&url, "0.1.0", "billing", None, None).unwrap();
                exporter.send(vec![chunk]).unwrap();
                // Dropped here, inside the runtime.
            },
        );

        let traces = agent.traces();
        let root = find_span(&traces, 11)
            .unwrap_or_else(|| panic!("root span missing from {traces:#?}\n{}", agent.log_text()));
        assert_eq!(root["name"], "http.request");
        assert_eq!(root["resource"], "GET /users/?");
        assert_eq!(root["service"], "billing");
        assert_eq!(root["type"], "web");
        assert_eq!(root["trace_id"].as_u64(), Some(TRACE_ID as u64));
        assert_eq!(root["parent_id"].as_u64().unwrap_or(0), 0);
        assert_eq!(root["meta"]["_dd.p.tid"], "0123456789abcdef");
        assert_eq!(root["meta"]["env"], "test");
        assert_eq!(root["meta"]["version"], "1.2.3");
        assert_eq!(root["metrics"]["_sampling_priority_v1"], 1.0);
        assert_eq!(root["metrics"]["_dd.top_level"], 1.0);

        let child = find_span(&traces, 12).expect("child span missing");
        assert_eq!(child["name"], "sqlite.query");
        assert_eq!(child["resource"], "SELECT * FROM users WHERE id = ?");
        assert_eq!(child["service"], "sqlite");
        assert_eq!(child["parent_id"].as_u64(), Some(11));
        assert_eq!(child["trace_id"].as_u64(), Some(TRACE_ID as u64));
        assert_eq!(child["error"].as_i64(), Some(1));
        assert_eq!(child["duration"].as_i64(), Some(1_234_000));

        let second = find_span(&traces, 21).expect("span sent from inside tokio missing");
        assert_eq!(second["trace_id"].as_u64(), Some(second_trace as u64));

        // The headers Datadog tracers send.
        let (status, body) = http_get(agent.port, "/test/session/requests").unwrap();
        assert_eq!(status, 200, "{body}");
        let requests: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
        let traces_requests: Vec<&serde_json::Value> =
            requests.iter().filter(|r| r["url"].as_str().is_some_and(|u| u.ends_with("/v0.4/traces"))).collect();
        assert_eq!(traces_requests.len(), 2, "{requests:#?}");
        for request in traces_requests {
            // Header names arrive as sent (hyper lowercases them).
            let headers: BTreeMap<String, String> = request["headers"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str().unwrap_or("").to_owned()))
                .collect();
            let header = |name: &str| headers.get(name).map(String::as_str);
            assert_eq!(header("datadog-meta-lang"), Some(LANGUAGE), "{headers:?}");
            assert_eq!(header("datadog-meta-tracer-version"), Some("0.1.0"), "{headers:?}");
            assert_eq!(header("x-datadog-trace-count"), Some("1"), "{headers:?}");
            assert_eq!(header("content-type"), Some("application/msgpack"), "{headers:?}");
            assert!(header("datadog-meta-lang-version").is_some(), "{headers:?}");
            assert!(header("content-length").is_some(), "{headers:?}");
        }

        agent.assert_checks_passed();
    }
}
