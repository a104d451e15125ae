//! A [`TraceSink`] that sends trace payloads to a Datadog agent's `/v0.4/traces` endpoint.
//!
//! The payloads arrive encoded ([`super::msgpack_v04`], on the thread that finished the spans);
//! this sends them the way libdatadog's trace exporter does: its `send_with_retry` (retries with
//! exponential back-off) over its connector (TCP or the agent's Unix socket; see
//! [`super::agent_http`] for the one socket option we change) and its tracer headers (`TracerHeaderTags`, trace count, real HTTP status). What the exporter adds on top
//! (client-side stats, `/info` polling, telemetry) the daemon leaves to the agent.
//!
//! Runtime: a current-thread tokio runtime owned by the sink and driven by `block_on` on the
//! writer thread, so a send wakes no other thread. `block_on` panics on a thread that is already
//! inside a tokio runtime, and dropping a runtime panics there too: such calls (construction from
//! `async fn main`, a drop in a task) go through a short-lived scoped thread instead.

use std::str::FromStr;
use std::time::Duration;

use http::{header::CONTENT_TYPE, uri::PathAndQuery, HeaderMap, HeaderValue, Uri};
use libdd_common::{header, parse_uri, Endpoint};
use libdd_trace_utils::send_with_retry::{send_with_retry, CompressionStrategy, RetryStrategy, SendWithRetryError};
use libdd_trace_utils::tracer_header_tags::TracerHeaderTags;
use tracing::debug;

use super::agent_http::AgentHttp;
use super::blocking::outside_tokio;
pub(crate) use super::msgpack_v04::SpanDefaults;
use super::msgpack_v04::V04Encoder;
use super::traces::TraceChunk;
use super::{EncodedPayload, IntakeError, TraceSink};

/// Sent as `Datadog-Meta-Lang`. The agent and backend only use the language to label payloads
/// (receiver stats, the service's runtime facet); it does not change how traces are processed.
/// We instrument native libraries in processes written in any language, so the honest label is
/// the mechanism, not a guess at the target's language ("rust" would describe the daemon, not
/// the traced code).
pub const LANGUAGE: &str = "ebpf";

/// The agent's trace endpoint, appended to the agent URL.
const TRACES_PATH: &str = "/v0.4/traces";

/// How long a shutdown waits for the runtime's last tasks.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);

/// How much of an agent error body to keep in an error message.
const MAX_ERROR_BODY: usize = 512;

/// Sends trace payloads to the Datadog agent (v0.4 protocol). Each payload holds the chunks of
/// one container and says so in its `Datadog-Container-ID` header (the agent tags a payload with
/// its header's container).
#[derive(Debug)]
pub struct AgentExporter {
    /// `None` once shut down.
    runtime: Option<tokio::runtime::Runtime>,
    http: AgentHttp,
    endpoint: Endpoint,
    agent_url: String,
    tracer_version: String,
    kernel_release: String,
    encoder: V04Encoder,
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
        let invalid = |reason: String| IntakeError::InvalidAgentUrl { url: agent_url.to_owned(), reason };
        let base = parse_uri(agent_url).map_err(|e| invalid(format!("{e:#}")))?;
        let url = with_path(&base, TRACES_PATH).map_err(invalid)?;
        // The "language version" of an eBPF tracer is the kernel it runs on.
        let kernel_release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".to_owned());
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| {
            IntakeError::ExporterSetup {
                url: agent_url.to_owned(),
                reason: format!("could not start the exporter's runtime: {e}"),
            }
        })?;
        Ok(Self {
            runtime: Some(runtime),
            http: AgentHttp::for_url(&url),
            endpoint: Endpoint { url, ..Default::default() },
            agent_url: agent_url.to_owned(),
            tracer_version: tracer_version.to_owned(),
            kernel_release,
            encoder: V04Encoder::new(SpanDefaults {
                service: service.to_owned(),
                env: env.map(str::to_owned),
                app_version: app_version.map(str::to_owned),
            }),
        })
    }

    /// The agent base URL this exporter sends to.
    pub fn agent_url(&self) -> &str {
        &self.agent_url
    }

    /// The headers Datadog tracers send with a payload of `chunks` traces.
    fn headers(&self, container_id: Option<&str>, chunks: usize) -> HeaderMap {
        let tags = TracerHeaderTags {
            lang: LANGUAGE,
            lang_version: &self.kernel_release,
            tracer_version: &self.tracer_version,
            container_id: container_id.unwrap_or_default(),
            ..Default::default()
        };
        let mut headers: HeaderMap = tags.into();
        headers.insert(header::DATADOG_SEND_REAL_HTTP_STATUS, HeaderValue::from_static("1"));
        headers.insert(header::DATADOG_TRACE_COUNT, chunks.into());
        headers.insert(CONTENT_TYPE, header::APPLICATION_MSGPACK);
        headers
    }
}

impl TraceSink for AgentExporter {
    /// Encodes `chunks` (one payload per container) and sends them; the daemon's writer hands
    /// payloads encoded already ([`TraceSink::send_encoded`]).
    fn send(&mut self, chunks: Vec<TraceChunk>) -> Result<(), IntakeError> {
        let mut payloads: Vec<EncodedPayload> = Vec::new();
        for chunk in chunks.iter().filter(|c| !c.spans.is_empty()) {
            let at = EncodedPayload::index_for(&mut payloads, chunk, &self.encoder, 0);
            payloads[at].append(&self.encoder, chunk);
        }
        for mut payload in payloads {
            payload.finish(&self.encoder);
            // The next payloads would wait out the same timeouts and retries.
            self.send_encoded(payload)?;
        }
        Ok(())
    }

    fn wire_format(&self) -> Option<V04Encoder> {
        Some(self.encoder.clone())
    }

    fn send_encoded(&mut self, payload: EncodedPayload) -> Result<(), IntakeError> {
        let chunks = payload.chunks;
        let Some(runtime) = &self.runtime else {
            return Err(IntakeError::SendFailed {
                url: self.agent_url.clone(),
                chunks,
                reason: "the exporter was already shut down".to_owned(),
            });
        };
        let headers = self.headers(payload.container_id.as_deref(), chunks);
        let (bytes, container) = (payload.bytes.len(), payload.container_id);
        let retries = RetryStrategy::default();
        let send =
            send_with_retry(&self.http, &self.endpoint, payload.bytes, &headers, &retries, CompressionStrategy::None);
        let url = &self.agent_url;
        let (status, attempts) = outside_tokio(|| match runtime.block_on(send) {
            Ok((response, attempts)) => Ok((response.status(), attempts)),
            Err(e) => Err(send_error(url, chunks, e)),
        })?;
        debug!(chunks, bytes, container, attempts, %status, "sent traces to the agent");
        Ok(())
    }

    fn shutdown(&mut self) -> Result<(), IntakeError> {
        if let Some(runtime) = self.runtime.take() {
            outside_tokio(move || runtime.shutdown_timeout(SHUTDOWN_TIMEOUT));
        }
        Ok(())
    }
}

impl Drop for AgentExporter {
    fn drop(&mut self) {
        let _ = TraceSink::shutdown(self);
    }
}

/// `base` with `path` appended to its own path (as libdatadog's exporter does).
fn with_path(base: &Uri, path: &str) -> Result<Uri, String> {
    let own = base.path().trim_end_matches('/');
    let mut parts = base.clone().into_parts();
    parts.path_and_query = Some(PathAndQuery::from_str(&format!("{own}{path}")).map_err(|e| e.to_string())?);
    Uri::from_parts(parts).map_err(|e| e.to_string())
}

fn send_error(url: &str, chunks: usize, e: SendWithRetryError) -> IntakeError {
    let unreachable = |reason: String| IntakeError::AgentUnreachable { url: url.to_owned(), reason };
    match e {
        SendWithRetryError::Http(response, _) => {
            let text = String::from_utf8_lossy(response.body());
            let mut body: String = text.trim().chars().take(MAX_ERROR_BODY).collect();
            if body.len() < text.trim().len() {
                body.push_str("...");
            }
            IntakeError::AgentRejected { url: url.to_owned(), chunks, status: response.status().as_u16(), body }
        }
        SendWithRetryError::Timeout(attempts) => unreachable(format!("no answer after {attempts} attempt(s)")),
        SendWithRetryError::Network(error, attempts) => unreachable(format!("{error} ({attempts} attempt(s))")),
        other => IntakeError::SendFailed { url: url.to_owned(), chunks, reason: other.to_string() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use crate::intake::msgpack_v04::tests::sample_chunk;

    const TRACE_ID: u128 = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210;

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
        // A node agent's payload speaks for another container.
        chunk.container_id = Some("0123abcd".to_owned());
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
        let mut containers = Vec::new();
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
            containers.push(header("datadog-container-id").map(str::to_owned));
        }
        // The daemon's own container is never sent; a payload's processes' container is.
        assert_eq!(containers, vec![None, Some("0123abcd".to_owned())]);

        agent.assert_checks_passed();
    }
}
