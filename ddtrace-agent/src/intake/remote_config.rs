//! Remote configuration: polling the Datadog agent's `/v0.7/config` endpoint for `APM_TRACING`
//! configurations, on behalf of one traced process.
//!
//! The protocol work (request building, TUF target validation, hashes, caching of known files,
//! reporting client state back to the agent) is libdatadog's `libdd-remote-config`
//! (`SingleChangesFetcher`); this module gives it a blocking face and turns its file changes into
//! decoded JSON documents ([`RemoteConfigChange`]). What a configuration means (`lib_config`,
//! `service_target`, ...) is for the products: this client knows nothing of them.
//!
//! Two ways to use it: call [`RemoteConfigClient::poll`] on your own schedule, or hand the client
//! to [`RemoteConfigClient::spawn_poller`], which polls on a thread of its own and calls back for
//! each change.
//!
//! Runtime: the fetcher is async; the client owns a current-thread tokio runtime and blocks on
//! it. From a plain `std::thread` that costs nothing; from inside a tokio runtime (the daemon's)
//! the blocking call moves to a scoped thread ([`outside_tokio`]) instead of panicking, and the
//! runtime is shut down in the background on drop, which is allowed anywhere.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

use libdd_capabilities_impl::{HttpClientCapability, NativeCapabilities};
use libdd_common::Endpoint;
use libdd_remote_config::fetch::{ConfigApplyState, ConfigInvariants, ConfigOptions, SingleChangesFetcher};
use libdd_remote_config::file_change_tracker::{Change, FilePath};
use libdd_remote_config::file_storage::{ParseFile, RawFile, RawFileStorage};
use libdd_remote_config::{RemoteConfigCapabilities, RemoteConfigPath, RemoteConfigProduct, Target};
use strum::IntoEnumIterator;
use tracing::{debug, info, warn};

use super::blocking::outside_tokio;
use super::identity::ClientIdentity;

/// The only remote configuration product this client subscribes to.
pub const APM_TRACING: &str = "APM_TRACING";

/// How often the poller asks the agent, as in-process tracers do
/// (`DD_REMOTE_CONFIG_POLL_INTERVAL_SECONDS` defaults to 5 s).
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(5);

/// How long one poll may take before it counts as failed.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);

/// One configuration file of the `APM_TRACING` product, as the agent delivered it.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteConfigFile {
    /// The file's remote configuration path, e.g. `datadog/2/APM_TRACING/<config_id>/config`.
    /// Updates and removals of a file carry the same path.
    pub path: String,
    /// The configuration id (the path segment after the product).
    pub config_id: String,
    /// The file's version in the agent's targets.
    pub version: u64,
    /// The decoded JSON document: for `APM_TRACING`, `{"lib_config": {...}, "service_target":
    /// {...}, ...}`. In a [`RemoteConfigChange::Removed`], the last content delivered, or `null`
    /// when that content was not valid JSON.
    pub content: serde_json::Value,
}

/// What changed in the set of configurations the agent serves this client.
#[derive(Debug, Clone, PartialEq)]
pub enum RemoteConfigChange {
    /// A configuration the client did not have.
    Added(RemoteConfigFile),
    /// New content for a configuration the client had (same path).
    Updated(RemoteConfigFile),
    /// A configuration the agent no longer serves: whatever it set should be reverted.
    Removed(RemoteConfigFile),
}

impl RemoteConfigChange {
    /// The file this change is about.
    pub fn file(&self) -> &RemoteConfigFile {
        match self {
            Self::Added(file) | Self::Updated(file) | Self::Removed(file) => file,
        }
    }
}

/// What can go wrong with remote configuration, phrased for the person running the daemon.
#[derive(Debug, thiserror::Error)]
pub enum RemoteConfigError {
    /// The agent URL could not be used.
    #[error(
        "the Datadog agent URL {url:?} is not usable for remote configuration: {reason}; pass a \
         URL such as http://localhost:8126 or unix:///var/run/datadog/apm.socket with \
         --agent-url / DD_TRACE_AGENT_URL"
    )]
    InvalidAgentUrl { url: String, reason: String },

    /// The identity has no service; the agent routes configurations by service.
    #[error(
        "remote configuration needs the traced process's service name, and none was given; set \
         DD_SERVICE for the process (or let the daemon infer one)"
    )]
    MissingService,

    /// A thread or runtime the client needs could not be started.
    #[error("could not start the remote configuration client's {what}: {source}")]
    Setup {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },

    /// A poll failed: agent down, remote configuration disabled, an invalid response.
    #[error(
        "polling remote configuration from the Datadog agent at {url} failed: {reason}; check \
         that the agent runs and has remote configuration enabled \
         (DD_REMOTE_CONFIGURATION_ENABLED=true, the default)"
    )]
    Poll { url: String, reason: String },
}

/// Decodes each file once, when libdatadog stores it.
#[derive(Clone, Default)]
struct JsonDecoder;

/// A decoded file, or why it could not be decoded.
type Decoded = Result<serde_json::Value, String>;

impl ParseFile for JsonDecoder {
    type Parsed = Decoded;

    fn parse(&self, _path: &RemoteConfigPath, contents: Vec<u8>) -> Decoded {
        serde_json::from_slice(&contents).map_err(|e| format!("not valid JSON: {e}"))
    }
}

type Storage = RawFileStorage<JsonDecoder>;
type Fetcher = SingleChangesFetcher<Storage, NativeCapabilities>;

/// Options for a [`RemoteConfigClient`]; start with [`RemoteConfigClient::builder`].
#[derive(Debug, Clone)]
pub struct RemoteConfigClientBuilder {
    agent_url: String,
    identity: ClientIdentity,
    capabilities: u64,
    poll_interval: Duration,
    timeout: Duration,
}

impl RemoteConfigClientBuilder {
    /// The client capabilities as a bit set: bit `n` set for capability `n` of the remote
    /// configuration protocol (e.g. `1 << 12` APM_TRACING_SAMPLE_RATE, `1 << 19`
    /// APM_TRACING_ENABLED), i.e. the products' capabilities OR'ed. Bits libdatadog does not
    /// know are logged and left out.
    pub fn capabilities(mut self, bits: u64) -> Self {
        self.capabilities = bits;
        self
    }

    /// How long [`RemoteConfigClient::spawn_poller`] waits between polls
    /// (default [`DEFAULT_POLL_INTERVAL`]).
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// How long one poll may take (default [`DEFAULT_TIMEOUT`]).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Builds the client. Does not contact the agent: the first [`RemoteConfigClient::poll`]
    /// does.
    pub fn build(self) -> Result<RemoteConfigClient, RemoteConfigError> {
        let identity = self.identity;
        if identity.service.is_empty() {
            return Err(RemoteConfigError::MissingService);
        }
        let endpoint = agent_endpoint(&self.agent_url, self.timeout)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("dd-remote-config")
            .build()
            .map_err(|source| RemoteConfigError::Setup { what: "tokio runtime", source })?;

        let target = Target::new(
            identity.service,
            identity.env.unwrap_or_default(),
            identity.app_version.unwrap_or_default(),
            identity.tags,
            Vec::new(),
        );
        let options = ConfigOptions {
            invariants: ConfigInvariants {
                language: identity.language,
                tracer_version: identity.tracer_version,
                endpoint,
                agentless: None,
            },
            products: vec![RemoteConfigProduct::ApmTracing],
            capabilities: capabilities_from_bits(self.capabilities),
        };
        let fetcher = Fetcher::new_no_agentless(
            Storage::default(),
            target,
            identity.runtime_id,
            options,
            // Creates its hyper client lazily, on the first poll (inside our runtime).
            NativeCapabilities::new_periodic(),
        );

        Ok(RemoteConfigClient {
            fetcher,
            runtime: BackgroundRuntime(Some(runtime)),
            agent_url: self.agent_url,
            poll_interval: self.poll_interval,
        })
    }
}

/// Polls the Datadog agent for the `APM_TRACING` configurations of one traced process.
pub struct RemoteConfigClient {
    fetcher: Fetcher,
    runtime: BackgroundRuntime,
    agent_url: String,
    poll_interval: Duration,
}

impl std::fmt::Debug for RemoteConfigClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteConfigClient")
            .field("agent_url", &self.agent_url)
            .field("client_id", &self.fetcher.get_client_id())
            .field("poll_interval", &self.poll_interval)
            .finish_non_exhaustive()
    }
}

impl RemoteConfigClient {
    /// Starts building a client for the agent at `agent_url` (`http://host:port` or
    /// `unix:///path/to/apm.socket`; `/v0.7/config` is appended) that speaks for `identity`.
    pub fn builder(agent_url: &str, identity: ClientIdentity) -> RemoteConfigClientBuilder {
        RemoteConfigClientBuilder {
            agent_url: agent_url.to_owned(),
            identity,
            capabilities: 0,
            poll_interval: DEFAULT_POLL_INTERVAL,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Asks the agent once and returns what changed since the previous poll: removals first,
    /// then additions and updates. Files that are not JSON are not returned; they are reported
    /// to the agent as failed to apply (and logged).
    ///
    /// A failed poll returns no changes: the configurations already returned stay in force.
    /// An agent without remote configuration (HTTP 404) counts as serving no configuration, so
    /// everything returned before is removed.
    pub fn poll(&mut self) -> Result<Vec<RemoteConfigChange>, RemoteConfigError> {
        let (fetcher, runtime) = (&mut self.fetcher, &self.runtime);
        let changes = outside_tokio(|| runtime.block_on(fetcher.fetch_changes::<Decoded>()))
            .map_err(|e| RemoteConfigError::Poll { url: self.agent_url.clone(), reason: format!("{e:#}") })?;

        let mut delivered = Vec::with_capacity(changes.len());
        for change in changes {
            let (file, kind): (_, fn(RemoteConfigFile) -> RemoteConfigChange) = match change {
                Change::Add(file) => (file, RemoteConfigChange::Added),
                Change::Update(file, _previous) => (file, RemoteConfigChange::Updated),
                Change::Remove(file) => {
                    if is_apm_tracing(&file) {
                        let content = file.contents().as_ref().ok().cloned();
                        let content = content.unwrap_or(serde_json::Value::Null);
                        delivered.push(RemoteConfigChange::Removed(describe(&file, content)));
                    }
                    continue;
                }
            };
            if !is_apm_tracing(&file) {
                // The agent only sends what we subscribed to; a stub may send anything.
                debug!(path = file.path().as_str(), "ignoring a non-APM_TRACING config");
                continue;
            }
            let decoded = file.contents().clone();
            match decoded {
                Ok(content) => delivered.push(kind(describe(&file, content))),
                Err(reason) => {
                    warn!(
                        path = file.path().as_str(),
                        agent_url = %self.agent_url,
                        "remote configuration file ignored: {reason}"
                    );
                    self.fetcher.set_config_state(&file, ConfigApplyState::Error(reason));
                }
            }
        }
        Ok(delivered)
    }

    /// Tells the agent, with the next poll, whether the configuration at `path` was applied
    /// (`Ok`) or not (`Err(reason)`). Configurations count as applied unless reported otherwise.
    /// Unknown paths are ignored.
    pub fn set_apply_result(&self, path: &str, result: Result<(), String>) {
        let Ok(path) = RemoteConfigPath::parse(path) else {
            debug!(path, "apply result for an unparsable remote configuration path");
            return;
        };
        let state = match result {
            Ok(()) => ConfigApplyState::Acknowledged,
            Err(reason) => ConfigApplyState::Error(reason),
        };
        self.fetcher.fetcher.set_config_state(&path, state);
    }

    /// Replaces the capabilities sent with the next polls (see
    /// [`RemoteConfigClientBuilder::capabilities`]), e.g. when a product starts or stops.
    pub fn set_capabilities(&mut self, bits: u64) {
        self.fetcher.set_product_capabilities(vec![RemoteConfigProduct::ApmTracing], capabilities_from_bits(bits));
    }

    /// The id this client reports itself under (random, one per client).
    pub fn client_id(&self) -> &str {
        self.fetcher.get_client_id()
    }

    /// The agent base URL this client polls.
    pub fn agent_url(&self) -> &str {
        &self.agent_url
    }

    /// How long the poller waits between polls.
    pub fn poll_interval(&self) -> Duration {
        self.poll_interval
    }

    /// Moves the client to a thread of its own that polls every [`Self::poll_interval`] and
    /// calls `on_change` for each change, in order. `on_change` returns whether the change was
    /// applied; an `Err` (or a panic, which is caught) is reported to the agent as an apply
    /// error. Failed polls are logged (once until polling works again) and retried.
    pub fn spawn_poller<F>(self, on_change: F) -> Result<RemoteConfigPoller, RemoteConfigError>
    where
        F: FnMut(&RemoteConfigChange) -> Result<(), String> + Send + 'static,
    {
        let (commands, inbox) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("dd-rc-poller".to_owned())
            .spawn(move || run_poller(self, &inbox, on_change))
            .map_err(|source| RemoteConfigError::Setup { what: "poller thread", source })?;
        Ok(RemoteConfigPoller { commands, thread: Some(thread) })
    }
}

/// The poller thread: poll, hand out the changes, wait for the interval or a command.
fn run_poller(
    mut client: RemoteConfigClient,
    inbox: &mpsc::Receiver<PollerCommand>,
    mut on_change: impl FnMut(&RemoteConfigChange) -> Result<(), String>,
) -> RemoteConfigClient {
    let mut failing = false;
    loop {
        client.poll_and_hand_out(&mut failing, &mut on_change);
        match inbox.recv_timeout(client.poll_interval) {
            Ok(PollerCommand::Stop) | Err(RecvTimeoutError::Disconnected) => return client,
            Ok(PollerCommand::SetCapabilities(bits)) => client.set_capabilities(bits),
            Ok(PollerCommand::PollNow) | Err(RecvTimeoutError::Timeout) => {}
        }
    }
}

impl RemoteConfigClient {
    /// One poll, each change handed to `on_change` in order: what a poller does at every
    /// interval. `on_change` returns whether the change was applied; an `Err` (or a panic, which
    /// is caught) is reported to the agent as an apply error. A failed poll is logged once
    /// until polling works again (`failing` remembers, per client).
    pub fn poll_and_hand_out(
        &mut self,
        failing: &mut bool,
        on_change: &mut impl FnMut(&RemoteConfigChange) -> Result<(), String>,
    ) {
        match self.poll() {
            Ok(changes) => {
                if *failing {
                    info!(agent_url = %self.agent_url, "remote configuration polls work again");
                    *failing = false;
                }
                for change in &changes {
                    let result = catch_unwind(AssertUnwindSafe(|| on_change(change)))
                        .unwrap_or_else(|_| Err("the configuration handler panicked".to_owned()));
                    // A removed file is no longer reported on, whatever happened.
                    if result.is_err() && !matches!(change, RemoteConfigChange::Removed(_)) {
                        self.set_apply_result(&change.file().path, result);
                    }
                }
            }
            Err(e) if !*failing => {
                warn!("{e}; retrying every {:?}", self.poll_interval);
                *failing = true;
            }
            Err(e) => debug!("{e}"),
        }
    }
}

enum PollerCommand {
    SetCapabilities(u64),
    PollNow,
    Stop,
}

/// A [`RemoteConfigClient`] polling on its own thread; stopped (and joined) on drop.
#[derive(Debug)]
pub struct RemoteConfigPoller {
    commands: mpsc::Sender<PollerCommand>,
    thread: Option<JoinHandle<RemoteConfigClient>>,
}

impl RemoteConfigPoller {
    /// Replaces the capabilities and polls right away with them.
    pub fn set_capabilities(&self, bits: u64) {
        let _ = self.commands.send(PollerCommand::SetCapabilities(bits));
    }

    /// Polls right away instead of at the end of the current interval.
    pub fn poll_now(&self) {
        let _ = self.commands.send(PollerCommand::PollNow);
    }

    /// Stops polling, waits for a poll in progress (at most the client's timeout) and gives the
    /// client back (`None` if the poller thread died, which it only does if the client panics).
    pub fn stop(mut self) -> Option<RemoteConfigClient> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> Option<RemoteConfigClient> {
        let thread = self.thread.take()?;
        let _ = self.commands.send(PollerCommand::Stop);
        thread.join().ok()
    }
}

impl Drop for RemoteConfigPoller {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// A tokio runtime that may be dropped anywhere, even inside another runtime (where dropping
/// it normally would panic): it is shut down in the background.
struct BackgroundRuntime(Option<tokio::runtime::Runtime>);

impl BackgroundRuntime {
    fn block_on<F: Future>(&self, future: F) -> F::Output {
        match &self.0 {
            Some(runtime) => runtime.block_on(future),
            None => unreachable!("the runtime is only taken out on drop"),
        }
    }
}

impl Drop for BackgroundRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

fn is_apm_tracing(file: &RawFile<Decoded>) -> bool {
    file.path().product() == RemoteConfigProduct::ApmTracing
}

fn describe(file: &RawFile<Decoded>, content: serde_json::Value) -> RemoteConfigFile {
    let path = file.path();
    RemoteConfigFile {
        path: path.as_str().to_owned(),
        config_id: path.config_id().to_owned(),
        version: file.version(),
        content,
    }
}

/// Parses the agent URL the way libdatadog does, and rejects what it would panic or fail on
/// later (no scheme, no host).
fn agent_endpoint(url: &str, timeout: Duration) -> Result<Endpoint, RemoteConfigError> {
    let invalid = |reason: String| RemoteConfigError::InvalidAgentUrl { url: url.to_owned(), reason };
    let uri = libdd_common::parse_uri(url).map_err(|e| invalid(e.to_string()))?;
    match uri.scheme_str() {
        Some("http" | "https" | "unix") => {}
        Some(other) => return Err(invalid(format!("unsupported scheme {other:?}"))),
        None => return Err(invalid("no scheme (http://, https:// or unix://)".to_owned())),
    }
    if uri.authority().is_none() {
        return Err(invalid("no host".to_owned()));
    }
    Ok(Endpoint {
        url: uri,
        timeout_ms: timeout.as_millis().clamp(1, u128::from(u64::MAX)) as u64,
        ..Default::default()
    })
}

/// The capabilities whose bit is set in `bits`. Bits without a libdatadog capability cannot be
/// sent through its API: they are logged and dropped.
fn capabilities_from_bits(bits: u64) -> Vec<RemoteConfigCapabilities> {
    let mut sent = 0u64;
    let capabilities: Vec<_> = RemoteConfigCapabilities::iter()
        .filter(|capability| {
            let bit = *capability as u32;
            bit < 64 && bits & (1 << bit) != 0
        })
        .inspect(|capability| sent |= 1 << (*capability as u32))
        .collect();
    if bits & !sent != 0 {
        warn!(
            unknown_bits = format_args!("{:#x}", bits & !sent),
            "remote configuration capabilities unknown to libdatadog are not sent"
        );
    }
    capabilities
}

#[cfg(test)]
mod tests {
    use super::*;

    use base64::Engine as _;
    use ddtrace_tests::{
        http::{free_port, get as http_get, post as http_post},
        test_agent::TestAgent,
    };
    use serde_json::json;
    use std::time::Instant;

    const SAMPLE_RATE: u64 = 1 << 12;
    const CUSTOM_TAGS: u64 = 1 << 15;
    const TRACING_ENABLED: u64 = 1 << 19;

    fn identity() -> ClientIdentity {
        ClientIdentity::new("checkout")
            .with_env("staging")
            .with_app_version("1.2.3")
            .with_tags(vec!["team:payments".to_owned()])
    }

    fn stub_config(agent: &TestAgent, path: &str, msg: serde_json::Value) {
        let body = json!({ "path": path, "msg": msg }).to_string();
        let (status, response) = http_post(agent.port, "/test/session/responses/config/path", &body).unwrap();
        assert_eq!(status, 202, "stubbing {path}: {response}");
    }

    /// Polls until something changes (the stub is in place as soon as the POST returned, but
    /// keep tests robust against a slow agent).
    fn poll_until_changed(client: &mut RemoteConfigClient) -> Vec<RemoteConfigChange> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let changes = client.poll().unwrap();
            if !changes.is_empty() || Instant::now() > deadline {
                return changes;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    #[test]
    fn capability_bits_map_to_libdatadog_capabilities() {
        let capabilities = capabilities_from_bits(SAMPLE_RATE | TRACING_ENABLED | 1 << 63 | 1);
        assert_eq!(
            capabilities,
            [RemoteConfigCapabilities::ApmTracingSampleRate, RemoteConfigCapabilities::ApmTracingEnabled]
        );
        assert!(capabilities_from_bits(0).is_empty());
    }

    #[test]
    fn unusable_agent_urls_are_reported() {
        for url in ["localhost:8126", "http://[::1", "ftp://agent:21"] {
            let err = RemoteConfigClient::builder(url, identity()).build().unwrap_err();
            assert!(matches!(err, RemoteConfigError::InvalidAgentUrl { .. }), "{url}: {err:?}");
            assert!(err.to_string().contains("--agent-url"), "{err}");
        }
        let err = RemoteConfigClient::builder("http://localhost:8126", ClientIdentity::new("")).build().unwrap_err();
        assert!(matches!(err, RemoteConfigError::MissingService), "{err:?}");
    }

    #[test]
    fn unreachable_agent_is_a_poll_error() {
        let url = format!("http://127.0.0.1:{}", free_port());
        let mut client = RemoteConfigClient::builder(&url, identity()).timeout(Duration::from_secs(1)).build().unwrap();
        let err = client.poll().unwrap_err();
        assert!(matches!(err, RemoteConfigError::Poll { .. }), "{err:?}");
        assert!(err.to_string().contains(&url), "{err}");
    }

    #[test]
    fn works_from_inside_a_tokio_runtime() {
        // Build, poll (failing) and drop on a runtime thread: none of it may panic.
        let url = format!("http://127.0.0.1:{}", free_port());
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async move {
            let mut client =
                RemoteConfigClient::builder(&url, identity()).timeout(Duration::from_millis(500)).build().unwrap();
            assert!(client.poll().is_err());
        });
    }

    // ---- against a real Datadog test agent ------------------------------------------------

    #[test]
    fn apm_tracing_configs_reach_the_client() {
        let agent = TestAgent::start();
        let path = "datadog/2/APM_TRACING/checkout-staging/config";
        let first = json!({
            "action": "enable",
            "service_target": {"service": "checkout", "env": "staging"},
            "lib_config": {"tracing_enabled": false, "tracing_sampling_rate": 0.5},
        });

        // The daemon's way: from a plain thread.
        let url = agent.url();
        let port = agent.port;
        let first_clone = first.clone();
        let client = std::thread::spawn(move || {
            let mut client = RemoteConfigClient::builder(&url, identity())
                .capabilities(SAMPLE_RATE | CUSTOM_TAGS | TRACING_ENABLED)
                .build()
                .unwrap();

            // Nothing stubbed: the test agent answers `{}`, i.e. nothing changed.
            assert_eq!(client.poll().unwrap(), []);

            let (status, body) = http_post(
                port,
                "/test/session/responses/config/path",
                &json!({"path": path, "msg": first_clone}).to_string(),
            )
            .unwrap();
            assert_eq!(status, 202, "{body}");
            client
        })
        .join()
        .unwrap();

        // Moving the client between threads is fine too.
        let mut client = client;
        let changes = poll_until_changed(&mut client);
        assert_eq!(changes.len(), 1, "{changes:#?}\n{}", agent.log_text());
        let RemoteConfigChange::Added(file) = &changes[0] else {
            panic!("expected an addition: {changes:#?}");
        };
        assert_eq!(file.path, path);
        assert_eq!(file.config_id, "checkout-staging");
        assert_eq!(file.content, first);
        assert_eq!(file.content["lib_config"]["tracing_enabled"], false);
        assert_eq!(file.content["lib_config"]["tracing_sampling_rate"], 0.5);

        // The same response again is no change.
        assert_eq!(client.poll().unwrap(), []);

        // New content at the same path is an update.
        let second = json!({"lib_config": {"tracing_enabled": true, "tracing_sampling_rate": 0.25}});
        stub_config(&agent, path, second.clone());
        let changes = poll_until_changed(&mut client);
        assert_eq!(
            changes,
            [RemoteConfigChange::Updated(RemoteConfigFile {
                path: path.to_owned(),
                config_id: "checkout-staging".to_owned(),
                version: 0, // the test agent always serves version 0
                content: second.clone(),
            })]
        );

        // Another config replacing it: the old one is removed (first), the new one added.
        let other_path = "datadog/2/APM_TRACING/checkout-any/config";
        let third = json!({"lib_config": {"tracing_tags": ["team:payments"]}});
        stub_config(&agent, other_path, third.clone());
        let changes = poll_until_changed(&mut client);
        assert_eq!(changes.len(), 2, "{changes:#?}");
        assert_eq!((changes[0].file().path.as_str(), &changes[0].file().content), (path, &second));
        assert!(matches!(changes[0], RemoteConfigChange::Removed(_)), "{changes:#?}");
        assert_eq!((changes[1].file().path.as_str(), &changes[1].file().content), (other_path, &third));
        assert!(matches!(changes[1], RemoteConfigChange::Added(_)), "{changes:#?}");

        // Invalid content is not delivered, and is reported to the agent as an apply error.
        let broken_path = "datadog/2/APM_TRACING/broken/config";
        stub_raw_config(&agent, broken_path, b"{not json");
        let changes = poll_until_changed(&mut client);
        assert!(
            changes.iter().all(|c| matches!(c, RemoteConfigChange::Removed(f) if f.path == other_path)),
            "{changes:#?}"
        );
        client.poll().unwrap();

        // What the agent was told, from the requests it received.
        let requests = config_requests(&agent);
        assert!(requests.len() >= 6, "{requests:#?}");
        let first_request = &requests[0];
        let client_json = &first_request["client"];
        assert_eq!(client_json["products"], json!(["APM_TRACING"]));
        assert_eq!(client_json["is_tracer"], true);
        assert_eq!(client_json["id"], client.client_id());
        let tracer = &client_json["client_tracer"];
        assert_eq!(tracer["service"], "checkout");
        assert_eq!(tracer["env"], "staging");
        assert_eq!(tracer["app_version"], "1.2.3");
        assert_eq!(tracer["language"], super::super::agent_exporter::LANGUAGE);
        assert_eq!(tracer["tags"], json!(["team:payments"]));
        assert!(!tracer["runtime_id"].as_str().unwrap_or("").is_empty());
        assert_eq!(capabilities_as_bits(&client_json["capabilities"]), SAMPLE_RATE | CUSTOM_TAGS | TRACING_ENABLED);

        // After the first config arrived, the client says it has it and applied it.
        let acknowledged = requests
            .iter()
            .find(|r| r["cached_target_files"].as_array().is_some_and(|files| files.iter().any(|f| f["path"] == path)));
        let acknowledged = acknowledged.unwrap_or_else(|| panic!("{requests:#?}"));
        let states = acknowledged["client"]["state"]["config_states"].as_array().unwrap();
        assert!(
            states
                .iter()
                .any(|s| s["id"] == "checkout-staging" && s["product"] == "APM_TRACING" && s["apply_state"] == 2),
            "{acknowledged:#?}"
        );
        // The broken file was reported as an error (apply_state 3) in the last poll.
        let last = requests.last().unwrap();
        let states = last["client"]["state"]["config_states"].as_array().unwrap();
        assert!(
            states.iter().any(|s| s["id"] == "broken"
                && s["apply_state"] == 3
                && s["apply_error"].as_str().is_some_and(|e| e.contains("JSON"))),
            "{last:#?}"
        );
    }

    #[test]
    fn poller_calls_back_and_follows_capability_changes() {
        let agent = TestAgent::start();
        let path = "datadog/2/APM_TRACING/checkout/config";
        let config = json!({"lib_config": {"tracing_enabled": false, "tracing_sampling_rate": 0.5}});
        stub_config(&agent, path, config.clone());

        let (sender, received) = mpsc::channel();
        let poller = RemoteConfigClient::builder(&agent.url(), identity())
            .capabilities(TRACING_ENABLED)
            .poll_interval(Duration::from_millis(200))
            .build()
            .unwrap()
            .spawn_poller(move |change| {
                sender.send(change.clone()).unwrap();
                Err("sampling rules are not supported".to_owned())
            })
            .unwrap();

        let change = received.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(change.file().content, config);
        assert!(matches!(change, RemoteConfigChange::Added(_)));

        poller.set_capabilities(TRACING_ENABLED | SAMPLE_RATE);
        let deadline = Instant::now() + Duration::from_secs(10);
        let reported = loop {
            let requests = config_requests(&agent);
            let last = requests.last().cloned().unwrap_or_default();
            let error_reported = last["client"]["state"]["config_states"].as_array().is_some_and(|states| {
                states.iter().any(|s| s["apply_state"] == 3 && s["apply_error"] == "sampling rules are not supported")
            });
            let capabilities = capabilities_as_bits(&last["client"]["capabilities"]);
            if capabilities == TRACING_ENABLED | SAMPLE_RATE && error_reported {
                break true;
            }
            if Instant::now() > deadline {
                break false;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(reported, "{:#?}", config_requests(&agent));

        let client = poller.stop().expect("the poller gives its client back");
        assert_eq!(client.agent_url(), agent.url());
        // Nothing else changed.
        assert!(received.try_recv().is_err());
    }

    /// Stubs a response whose file is `raw` bytes (which the path endpoint cannot: it JSON
    /// encodes `msg`), built the way the test agent builds its own.
    fn stub_raw_config(agent: &TestAgent, path: &str, raw: &[u8]) {
        use sha2::Digest as _;
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
        let targets = json!({
            "signatures": [{"keyid": "", "sig": ""}],
            "signed": {
                "_type": "targets",
                "custom": {"opaque_backend_state": ""},
                "expires": "2100-01-01T00:00:00Z",
                "spec_version": "1.0.0",
                "targets": {
                    path: {
                        "custom": {"v": 1},
                        "hashes": {"sha256": format!("{:x}", sha2::Sha256::digest(raw))},
                        "length": raw.len(),
                    }
                },
                "version": 1,
            },
        });
        let response = json!({
            "roots": [],
            "targets": b64(targets.to_string().as_bytes()),
            "target_files": [{"path": path, "raw": b64(raw)}],
            "client_configs": [path],
        });
        let (status, body) = http_post(agent.port, "/test/session/responses/config", &response.to_string()).unwrap();
        assert_eq!(status, 202, "{body}");
    }

    /// The decoded bodies of the `/v0.7/config` requests the test agent received, oldest first
    /// (the order `/test/session/requests` uses).
    fn config_requests(agent: &TestAgent) -> Vec<serde_json::Value> {
        let (status, body) = http_get(agent.port, "/test/session/requests").unwrap();
        assert_eq!(status, 200, "{body}");
        let requests: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
        let bodies: Vec<serde_json::Value> = requests
            .iter()
            .filter(|r| r["url"].as_str().is_some_and(|u| u.ends_with("/v0.7/config")))
            .filter_map(|r| {
                let raw = base64::engine::general_purpose::STANDARD.decode(r["body"].as_str()?).ok()?;
                serde_json::from_slice(&raw).ok()
            })
            .collect();
        bodies
    }

    /// The capabilities field of a request back to a bit set. The protocol's bytes are
    /// big-endian; libdatadog writes them as a JSON array of numbers (the Go agent reads both
    /// that and the base64 string other tracers send), so accept both.
    fn capabilities_as_bits(field: &serde_json::Value) -> u64 {
        let bytes: Vec<u8> = match field {
            serde_json::Value::String(b64) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap_or_else(|e| panic!("capabilities {b64:?}: {e}")),
            serde_json::Value::Array(numbers) => {
                numbers.iter().map(|n| n.as_u64().and_then(|n| u8::try_from(n).ok()).unwrap()).collect()
            }
            other => panic!("unexpected capabilities {other}"),
        };
        bytes.iter().fold(0, |bits, byte| bits << 8 | u64::from(*byte))
    }
}
