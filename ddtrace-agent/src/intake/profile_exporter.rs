//! Profiles to the Datadog agent's profiling intake (`/profiling/v1/input`).
//!
//! Products hand over a profile in our own small model ([`ProfileData`]: sample types, a
//! period, a time window, and samples made of frames, values and thread / span labels). This
//! module turns it into a pprof with libdatadog's `libdd-profiling` (`internal::Profile`: string
//! and location interning, aggregation of identical samples, zstd-compressed encoding) and
//! uploads it with the same crate's `exporter::ProfileExporter`, which sends what Datadog's
//! profilers send: a multipart form with `event.json` (family, version "4", start/end,
//! attachments, `tags_profiler`, endpoint counts) and the `profile.pprof` attachment.
//!
//! It knows nothing of perf events, unwinding or symbolization. Calls block (the upload runs on
//! libdatadog's own current-thread runtime) and work from plain threads and inside the daemon's
//! tokio runtime alike (see [`super::blocking`]).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use libdd_profiling::api;
use libdd_profiling::exporter::{self, Tag, Uri};
use libdd_profiling::internal::Profile;
use tracing::debug;

use super::blocking::outside_tokio;
use super::container_headers::ContainerOfPayloads;
use super::identity::ClientIdentity;

/// The profile family when none is set: what the profiled code is, for the profiling UI.
pub const DEFAULT_FAMILY: &str = "native";

/// How long one upload may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Label keys Datadog's profilers use; the profiling UI and Code Hotspots look for these.
pub const THREAD_ID_LABEL: &str = "thread id";
/// See [`THREAD_ID_LABEL`].
pub const THREAD_NAME_LABEL: &str = "thread name";
/// See [`THREAD_ID_LABEL`].
pub const SPAN_ID_LABEL: &str = "span id";
/// See [`THREAD_ID_LABEL`].
pub const LOCAL_ROOT_SPAN_ID_LABEL: &str = "local root span id";

/// What one value of a sample measures, e.g. `("samples", "count")` or
/// `("cpu-time", "nanoseconds")`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleType {
    /// The quantity, e.g. `cpu-time`.
    pub kind: String,
    /// Its unit, e.g. `nanoseconds`.
    pub unit: String,
}

impl SampleType {
    /// A sample type `kind` measured in `unit`.
    pub fn new(kind: impl Into<String>, unit: impl Into<String>) -> Self {
        Self { kind: kind.into(), unit: unit.into() }
    }

    fn as_api(&self) -> api::ValueType<'_> {
        api::ValueType::new(&self.kind, &self.unit)
    }
}

/// How often samples were taken: one sample every `value` of `sample_type`
/// (e.g. every 10 000 000 `cpu-time` nanoseconds at 100 Hz).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Period {
    /// What the period is measured in.
    pub sample_type: SampleType,
    /// The distance between two samples.
    pub value: i64,
}

/// One stack frame, already symbolized.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Frame {
    /// The function's name (demangled), or `module+0xoffset` for stripped code.
    pub function: Arc<str>,
    /// The executable or shared library the code belongs to.
    pub module: Arc<str>,
    /// The source file, when debug information names one; empty otherwise.
    pub file: Arc<str>,
    /// The source line, when known.
    pub line: Option<u32>,
}

impl Frame {
    /// A frame of `function` in `module`, with no source information.
    pub fn new(function: impl Into<Arc<str>>, module: impl Into<Arc<str>>) -> Self {
        Self { function: function.into(), module: module.into(), ..Self::default() }
    }

    /// Adds the source file and line.
    pub fn with_source(mut self, file: impl Into<Arc<str>>, line: Option<u32>) -> Self {
        self.file = file.into();
        self.line = line;
        self
    }
}

/// The span that was open on the sampled thread, so that Datadog links the sample to the trace
/// (Code Hotspots). Sent as numeric labels, as Datadog's profilers do; ids at or above 2^63
/// wrap to negative numbers there, as in those profilers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanLink {
    /// The span open on the thread when the sample was taken.
    pub span_id: u64,
    /// The root span of that span's trace chunk in this process.
    pub local_root_span_id: u64,
}

/// One stack sample (or several identical ones, already summed).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Sample {
    /// The stack, innermost frame (the leaf) first, as pprof orders it.
    pub frames: Vec<Frame>,
    /// One value per sample type of the profile, in the same order.
    pub values: Vec<i64>,
    /// The sampled thread's id (the kernel's tid).
    pub thread_id: Option<i64>,
    /// The sampled thread's name (`comm`).
    pub thread_name: Option<String>,
    /// The span open on that thread, if any.
    pub span: Option<SpanLink>,
}

/// A profile for one process over one time window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileData {
    /// What each value of a sample measures.
    pub sample_types: Vec<SampleType>,
    /// How often samples were taken, if known.
    pub period: Option<Period>,
    /// When the window began.
    pub start: SystemTime,
    /// When it ended.
    pub end: SystemTime,
    /// The samples.
    pub samples: Vec<Sample>,
    /// How many times each endpoint (a root span's resource) was served in the window; sent as
    /// `endpoint_counts` in `event.json`.
    pub endpoint_counts: Vec<(String, i64)>,
}

impl ProfileData {
    /// An empty profile of `sample_types` for the window `start`..`end`.
    pub fn new(sample_types: Vec<SampleType>, start: SystemTime, end: SystemTime) -> Self {
        Self { sample_types, period: None, start, end, samples: Vec::new(), endpoint_counts: Vec::new() }
    }

    /// The profile as a plain (uncompressed) pprof protobuf, as `go tool pprof` and other pprof
    /// readers open it.
    pub fn to_pprof(&self) -> Result<Vec<u8>, ProfileExportError> {
        let encoded = self.encode()?;
        zstd::decode_all(encoded.buffer.as_slice())
            .map_err(|e| ProfileExportError::Encode { reason: format!("decompressing libdatadog's pprof: {e}") })
    }

    /// Encodes it as a zstd-compressed pprof with libdatadog.
    fn encode(&self) -> Result<libdd_profiling::internal::EncodedProfile, ProfileExportError> {
        let sample_types: Vec<api::ValueType> = self.sample_types.iter().map(SampleType::as_api).collect();
        let period = self.period.as_ref().map(|p| api::Period { r#type: p.sample_type.as_api(), value: p.value });
        let invalid = |reason: String| ProfileExportError::InvalidProfile { reason };
        let mut profile = Profile::try_new(&sample_types, period)
            .map_err(|e| invalid(format!("libdatadog could not create the profile: {e}")))?;
        profile.set_start_time(self.start).map_err(|e| invalid(format!("the start time was refused: {e:#}")))?;

        for (index, sample) in self.samples.iter().enumerate() {
            if sample.values.len() != self.sample_types.len() {
                return Err(invalid(format!(
                    "sample {index} has {} value(s) for {} sample type(s)",
                    sample.values.len(),
                    self.sample_types.len()
                )));
            }
            let locations = sample
                .frames
                .iter()
                .map(|frame| api::Location {
                    mapping: api::Mapping { filename: &frame.module, ..Default::default() },
                    function: api::Function { name: &frame.function, system_name: "", filename: &frame.file },
                    address: 0,
                    line: frame.line.map_or(0, i64::from),
                })
                .collect();
            let mut labels = Vec::with_capacity(4);
            if let Some(tid) = sample.thread_id {
                labels.push(num_label(THREAD_ID_LABEL, tid));
            }
            if let Some(name) = &sample.thread_name {
                labels.push(api::Label { key: THREAD_NAME_LABEL, str: name, num: 0, num_unit: "" });
            }
            if let Some(span) = sample.span {
                labels.push(num_label(SPAN_ID_LABEL, span.span_id as i64));
                labels.push(num_label(LOCAL_ROOT_SPAN_ID_LABEL, span.local_root_span_id as i64));
            }
            profile
                .try_add_sample(api::Sample { locations, values: &sample.values, labels }, None)
                .map_err(|e| invalid(format!("sample {index} was refused: {e:#}")))?;
        }
        for (endpoint, count) in &self.endpoint_counts {
            profile
                .add_endpoint_count(endpoint.as_str().into(), *count)
                .map_err(|e| invalid(format!("endpoint count for {endpoint:?} was refused: {e:#}")))?;
        }
        profile
            .serialize_into_compressed_pprof(Some(self.end), None)
            .map_err(|e| ProfileExportError::Encode { reason: format!("{e:#}") })
    }
}

fn num_label(key: &'static str, num: i64) -> api::Label<'static> {
    api::Label { key, str: "", num, num_unit: "" }
}

/// What can go wrong while exporting profiles, phrased for the person running the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ProfileExportError {
    /// The agent URL could not be used.
    #[error(
        "the Datadog agent URL {url:?} is not usable for profiles: {reason}; pass a URL such as \
         http://localhost:8126 or unix:///var/run/datadog/apm.socket with --agent-url / \
         DD_TRACE_AGENT_URL"
    )]
    InvalidAgentUrl { url: String, reason: String },

    /// A tag could not be sent (libdatadog refuses empty keys and some characters).
    #[error("the profile tag {tag:?} is not valid: {reason}; fix it in DD_TAGS or the settings")]
    InvalidTag { tag: String, reason: String },

    /// The profile handed over is inconsistent (a bug in the product that built it).
    #[error("the profile cannot be encoded: {reason}")]
    InvalidProfile { reason: String },

    /// libdatadog failed to encode or compress the pprof (e.g. above its 16 MiB limit).
    #[error("encoding the pprof failed: {reason}; the profile is dropped")]
    Encode { reason: String },

    /// libdatadog could not set up its HTTP client or build the request.
    #[error("preparing the profile upload to {url} failed: {reason}")]
    ExporterSetup { url: String, reason: String },

    /// Nothing answered at the agent URL, or the request timed out.
    #[error(
        "the Datadog agent at {url} is unreachable for profiles: {reason}; start it or pass \
         --agent-url / DD_TRACE_AGENT_URL"
    )]
    AgentUnreachable { url: String, reason: String },

    /// The agent answered with an HTTP error status.
    #[error(
        "the Datadog agent at {url} rejected the profile with HTTP {status}; check the agent's \
         logs and that profiling is enabled there"
    )]
    AgentRejected { url: String, status: u16 },
}

/// Settings for a [`ProfileExporter`]; see [`ProfileExporter::builder`].
#[derive(Debug, Clone)]
pub struct ProfileExporterBuilder {
    agent_url: String,
    service: String,
    env: Option<String>,
    version: Option<String>,
    runtime_id: Option<String>,
    host: Option<String>,
    tags: Vec<(String, String)>,
    family: String,
    timeout: Duration,
}

impl ProfileExporterBuilder {
    /// `DD_ENV`.
    pub fn env(mut self, env: impl Into<String>) -> Self {
        self.env = Some(env.into());
        self
    }

    /// `DD_VERSION`: the application's version.
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = Some(version.into());
        self
    }

    /// The profiled process run's `runtime-id` (the one its traces carry).
    pub fn runtime_id(mut self, runtime_id: impl Into<String>) -> Self {
        self.runtime_id = Some(runtime_id.into());
        self
    }

    /// The `host` tag: the host the profiled process runs on.
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }

    /// One more tag sent with every profile.
    pub fn tag(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.tags.push((key.into(), value.into()));
        self
    }

    /// Tags given as `key:value` strings (`DD_TAGS` style); a string without `:` is a key with
    /// an empty value.
    pub fn tags<S: AsRef<str>>(mut self, tags: impl IntoIterator<Item = S>) -> Self {
        for tag in tags {
            let (key, value) = tag.as_ref().split_once(':').unwrap_or((tag.as_ref(), ""));
            self.tags.push((key.to_owned(), value.to_owned()));
        }
        self
    }

    /// Takes service, env, version, runtime id and tags from a traced process's identity.
    pub fn identity(mut self, identity: &ClientIdentity) -> Self {
        self.service = identity.service.clone();
        self.env = identity.env.clone();
        self.version = identity.app_version.clone();
        self.runtime_id = Some(identity.runtime_id.clone());
        self.tags(&identity.tags)
    }

    /// The profile family (`native` by default; `python`, `go`... for runtime-aware profiles).
    pub fn family(mut self, family: impl Into<String>) -> Self {
        self.family = family.into();
        self
    }

    /// How long one upload may take ([`DEFAULT_TIMEOUT`] by default).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Checks the URL and tags and returns the exporter. No connection is made yet.
    pub fn build(self) -> Result<ProfileExporter, ProfileExportError> {
        let target = AgentTarget::parse(&self.agent_url)?;
        let mut pairs: Vec<(&str, &str)> = vec![("service", &self.service)];
        let optional =
            [("env", &self.env), ("version", &self.version), ("runtime-id", &self.runtime_id), ("host", &self.host)];
        pairs.extend(optional.iter().filter_map(|(k, v)| v.as_deref().map(|v| (*k, v))));
        pairs.extend(self.tags.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let tags = pairs
            .into_iter()
            .map(|(key, value)| {
                Tag::new(key, value).map_err(|e| ProfileExportError::InvalidTag {
                    tag: format!("{key}:{value}"),
                    reason: format!("{e:#}"),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ProfileExporter {
            target,
            url: self.agent_url,
            tags,
            family: self.family,
            timeout: self.timeout,
            container: ContainerOfPayloads::default(),
        })
    }
}

/// Where the agent listens, checked once at construction.
#[derive(Debug, Clone)]
enum AgentTarget {
    Http(Uri),
    UnixSocket(std::path::PathBuf),
}

impl AgentTarget {
    fn parse(url: &str) -> Result<Self, ProfileExportError> {
        let invalid = |reason: String| ProfileExportError::InvalidAgentUrl { url: url.to_owned(), reason };
        if let Some(path) = url.strip_prefix("unix://") {
            if path.is_empty() {
                return Err(invalid("the unix socket path is empty".into()));
            }
            return Ok(Self::UnixSocket(path.into()));
        }
        let uri: Uri = url.parse().map_err(|e| invalid(format!("{e}")))?;
        match uri.scheme_str() {
            Some("http" | "https") if uri.host().is_some() => {}
            _ => return Err(invalid("only http://host:port and unix:///path URLs are supported".into())),
        }
        // libdatadog appends /profiling/v1/input to the URL's path, which must therefore exist.
        let with_path = format!("{}/", url.trim_end_matches('/'));
        with_path.parse().map(Self::Http).map_err(|e| invalid(format!("{e}")))
    }
}

/// Uploads profiles to the Datadog agent, one blocking call per profile.
#[derive(Debug, Clone)]
pub struct ProfileExporter {
    target: AgentTarget,
    url: String,
    tags: Vec<Tag>,
    family: String,
    timeout: Duration,
    /// The container the profiles come from, for the upload's headers (node mode).
    container: ContainerOfPayloads,
}

impl ProfileExporter {
    /// Starts the settings of an exporter to the agent at `agent_url` (`http://host:port` or
    /// `unix:///path`) for profiles of `service`.
    pub fn builder(agent_url: impl Into<String>, service: impl Into<String>) -> ProfileExporterBuilder {
        ProfileExporterBuilder {
            agent_url: agent_url.into(),
            service: service.into(),
            env: None,
            version: None,
            runtime_id: None,
            host: None,
            tags: Vec::new(),
            family: DEFAULT_FAMILY.to_owned(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// An exporter to the same agent for the profiles of one process of a node: its service,
    /// env, version, runtime id, tags and container instead of this one's.
    pub fn for_process(
        &self,
        service: &str,
        env: Option<&str>,
        version: Option<&str>,
        runtime_id: &str,
        tags: &[(String, String)],
        container: ContainerOfPayloads,
    ) -> Result<ProfileExporter, ProfileExportError> {
        let mut builder = Self::builder(self.url.clone(), service)
            .runtime_id(runtime_id)
            .family(self.family.clone())
            .timeout(self.timeout);
        if let Some(env) = env {
            builder = builder.env(env);
        }
        if let Some(version) = version {
            builder = builder.version(version);
        }
        for (key, value) in tags {
            builder = builder.tag(key.clone(), value.clone());
        }
        let mut exporter = builder.build()?;
        exporter.container = container;
        Ok(exporter)
    }

    /// The agent URL profiles go to.
    pub fn agent_url(&self) -> &str {
        &self.url
    }

    /// Encodes `profile` and uploads it, waiting (at most the timeout) for the agent's answer.
    pub fn export(&self, profile: &ProfileData) -> Result<(), ProfileExportError> {
        let encoded = profile.encode()?;
        let bytes = encoded.buffer.len();
        // libdatadog's exporter owns a tokio runtime: build, use and drop it off any runtime.
        outside_tokio(|| self.upload(encoded))?;
        debug!(url = %self.url, bytes, samples = profile.samples.len(), "profile uploaded");
        Ok(())
    }

    fn upload(&self, encoded: libdd_profiling::internal::EncodedProfile) -> Result<(), ProfileExportError> {
        let setup = |reason: String| ProfileExportError::ExporterSetup { url: self.url.clone(), reason };
        let endpoint = match &self.target {
            AgentTarget::Http(uri) => exporter::config::agent(uri.clone()),
            AgentTarget::UnixSocket(path) => exporter::config::agent_uds(path),
        }
        .map_err(|e| setup(format!("{e:#}")))?;
        let mut client = exporter::ProfileExporter::new(
            "ddtrace-agent",
            env!("CARGO_PKG_VERSION"),
            self.family.clone(),
            Some(self.tags.clone()),
            endpoint,
        )
        .map_err(|e| setup(format!("{e:#}")))?;
        client.set_timeout(self.timeout.as_millis().clamp(1, u128::from(u64::MAX)) as u64);
        let request = client.build(encoded, &[], &[], None, None, None).map_err(|e| setup(format!("{e:#}")))?;
        // libdd-profiling offers no way to add a header, so its request is read back and sent
        // with the process's container added, through the same crate's plain sender.
        let url = request.uri().to_string();
        let mut headers = request.headers().clone();
        for (name, value) in
            [("datadog-container-id", &self.container.container_id), ("datadog-entity-id", &self.container.entity_id)]
        {
            if let Some(value) = value.as_deref().and_then(|v| http::HeaderValue::from_str(v).ok()) {
                headers.insert(name, value);
            }
        }
        let body = read_body(request.body()).map_err(|e| setup(format!("reading the built upload back: {e:#}")))?;
        let sender = exporter::Exporter::new().map_err(|e| setup(format!("{e:#}")))?;
        let response = sender
            .send(http::Method::POST, &url, headers, &body, self.timeout)
            .map_err(|e| ProfileExportError::AgentUnreachable { url: self.url.clone(), reason: format!("{e:#}") })?;
        let status = response.status();
        if !status.is_success() {
            return Err(ProfileExportError::AgentRejected { url: self.url.clone(), status: status.as_u16() });
        }
        Ok(())
    }
}

/// The whole body of a built upload (a multipart form over in-memory readers: nothing waits).
fn read_body<B>(body: B) -> anyhow::Result<libdd_capabilities::Bytes>
where
    B: http_body_util::BodyExt,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    let collected = runtime.block_on(body.collect()).map_err(|e| anyhow::anyhow!(e.into()))?;
    Ok(collected.to_bytes())
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use ddtrace_tests::{profiles::received_profiles, test_agent::TestAgent};

    use super::*;

    const START_SECS: u64 = 1_700_000_000;

    /// Two stacks of one thread: main -> work -> hash (in a span) and main -> idle (outside).
    fn two_stack_profile() -> ProfileData {
        let start = UNIX_EPOCH + Duration::from_secs(START_SECS);
        let mut profile = ProfileData::new(
            vec![SampleType::new("samples", "count"), SampleType::new("cpu-time", "nanoseconds")],
            start,
            start + Duration::from_secs(60),
        );
        profile.period = Some(Period { sample_type: SampleType::new("cpu-time", "nanoseconds"), value: 10_000_000 });
        let main = Frame::new("main", "/usr/bin/app").with_source("app.c", Some(40));
        profile.samples.push(Sample {
            frames: vec![
                Frame::new("hash", "/usr/lib/libhash.so"),
                Frame::new("work", "/usr/bin/app").with_source("app.c", Some(12)),
                main.clone(),
            ],
            values: vec![3, 30_000_000],
            thread_id: Some(4242),
            thread_name: Some("worker".into()),
            span: Some(SpanLink { span_id: 7, local_root_span_id: 5 }),
        });
        profile.samples.push(Sample {
            frames: vec![Frame::new("idle", "/usr/bin/app"), main],
            values: vec![1, 10_000_000],
            thread_id: Some(4242),
            thread_name: Some("worker".into()),
            span: None,
        });
        profile.endpoint_counts.push(("GET /users".into(), 2));
        profile
    }

    #[test]
    fn profile_reaches_the_test_agent_with_event_json_and_a_decodable_pprof() {
        let agent = TestAgent::start();
        let exporter = ProfileExporter::builder(agent.url(), "checkout")
            .env("staging")
            .version("1.2.3")
            .runtime_id("0b6c1c7e-5d1e-4d0b-9d55-2f7c7b1f2a10")
            .host("node-1")
            .tags(["team:payments"])
            .family("native")
            .build()
            .unwrap();
        // The daemon's way for the profiling product: inside its tokio runtime.
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async { exporter.export(&two_stack_profile()) }).unwrap();

        let received = received_profiles(&agent);
        assert_eq!(received.len(), 1, "one upload expected");
        let upload = &received[0];
        assert!(upload.header("Content-Type").starts_with("multipart/form-data"));
        assert_eq!(upload.header("DD-EVP-ORIGIN"), "ddtrace-agent");
        let names: Vec<&str> = upload.parts.iter().map(|(name, ..)| name.as_str()).collect();
        assert_eq!(names, ["event", "profile.pprof"], "form parts");

        // event.json, as Datadog's profilers send it.
        assert_eq!(upload.parts[0].1, "event.json");
        let event = &upload.event;
        assert_eq!(event["family"], "native", "{event:#}");
        assert_eq!(event["version"], "4");
        assert_eq!(event["start"], "2023-11-14T22:13:20.000000000Z");
        assert_eq!(event["end"], "2023-11-14T22:14:20.000000000Z");
        assert_eq!(event["attachments"], serde_json::json!(["profile.pprof"]));
        assert_eq!(event["endpoint_counts"]["GET /users"], 2, "{event:#}");
        let tags: Vec<&str> = event["tags_profiler"].as_str().unwrap().split(',').collect();
        for expected in [
            "service:checkout",
            "env:staging",
            "version:1.2.3",
            "runtime-id:0b6c1c7e-5d1e-4d0b-9d55-2f7c7b1f2a10",
            "host:node-1",
            "team:payments",
        ] {
            assert!(tags.contains(&expected), "{expected} missing from {tags:?}");
        }

        // The pprof (zstd-compressed; the harness checked and decoded it), read back through
        // libdatadog's own API types.
        let decoded = libdd_profiling::api::Profile::try_from(&upload.pprof).unwrap();
        let kinds: Vec<(&str, &str)> = decoded.sample_types.iter().map(|t| (t.r#type, t.unit)).collect();
        assert_eq!(kinds, [("samples", "count"), ("cpu-time", "nanoseconds")]);
        assert_eq!(decoded.period.map(|(v, t)| (v, t.r#type)), Some((10_000_000, "cpu-time")));
        assert_eq!(decoded.start_time, UNIX_EPOCH + Duration::from_secs(START_SECS));
        assert_eq!(decoded.duration, Duration::from_secs(60));
        assert_eq!(decoded.samples.len(), 2);
        let mut stacks: Vec<(Vec<&str>, Vec<i64>)> = decoded
            .samples
            .iter()
            .map(|s| (s.locations.iter().map(|l| l.function.name).collect(), s.values.to_vec()))
            .collect();
        stacks.sort();
        assert_eq!(
            stacks,
            [(vec!["hash", "work", "main"], vec![3, 30_000_000]), (vec!["idle", "main"], vec![1, 10_000_000]),]
        );
        let in_span = decoded.samples.iter().find(|s| s.locations[0].function.name == "hash").unwrap();
        assert_eq!(in_span.locations[0].mapping.filename, "/usr/lib/libhash.so");
        assert_eq!((in_span.locations[1].function.filename, in_span.locations[1].line), ("app.c", 12));
        let label = |sample: &libdd_profiling::api::Sample, key: &str| {
            sample.labels.iter().find(|l| l.key == key).map(|l| (l.str.to_owned(), l.num))
        };
        assert_eq!(label(in_span, THREAD_ID_LABEL), Some((String::new(), 4242)));
        assert_eq!(label(in_span, THREAD_NAME_LABEL), Some(("worker".to_owned(), 0)));
        assert_eq!(label(in_span, SPAN_ID_LABEL), Some((String::new(), 7)));
        assert_eq!(label(in_span, LOCAL_ROOT_SPAN_ID_LABEL), Some((String::new(), 5)));
        let outside = decoded.samples.iter().find(|s| s.locations[0].function.name == "idle").unwrap();
        assert_eq!(label(outside, SPAN_ID_LABEL), None);
    }

    #[test]
    fn inconsistent_profiles_and_bad_urls_are_refused_with_reasons() {
        let mut profile = two_stack_profile();
        profile.samples[0].values.pop();
        let exporter = ProfileExporter::builder("http://127.0.0.1:1", "checkout").build().unwrap();
        let err = exporter.export(&profile).unwrap_err();
        assert!(matches!(err, ProfileExportError::InvalidProfile { .. }), "{err}");
        assert!(err.to_string().contains("sample 0 has 1 value(s) for 2 sample type(s)"), "{err}");

        let err = ProfileExporter::builder("ftp://agent", "checkout").build().unwrap_err();
        assert!(matches!(err, ProfileExportError::InvalidAgentUrl { .. }), "{err}");
        assert!(ProfileExporter::builder("unix:///var/run/datadog/apm.socket", "svc").build().is_ok());
    }

    #[test]
    fn an_absent_agent_is_reported_as_unreachable() {
        let port = ddtrace_tests::http::free_port();
        let exporter = ProfileExporter::builder(format!("http://127.0.0.1:{port}"), "checkout")
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let err = exporter.export(&two_stack_profile()).unwrap_err();
        assert!(matches!(err, ProfileExportError::AgentUnreachable { .. }), "{err}");
    }
}
