//! Instrumentation telemetry: `app-started` (with the configuration and where each setting came
//! from), `app-heartbeat`, configuration changes and `app-closing`, sent for one traced process
//! to the Datadog agent's telemetry proxy (`/telemetry/proxy/api/v2/apmtelemetry`).
//!
//! The work is libdatadog's `libdd-telemetry` worker (`TelemetryWorkerBuilder`): payload model,
//! sequence numbers, batching, the heartbeat schedule, and the request headers. This module
//! picks the options that fit a daemon speaking for another process and gives it a small,
//! product-agnostic face. Which settings to report, and with which origin, is for the products.
//!
//! Runtime: the worker runs on a thread of its own with its own current-thread tokio runtime;
//! every call here only queues a message, except [`TelemetryClient::stop`], which waits (bounded)
//! for `app-closing` to be sent. All of it works from plain threads and inside a tokio runtime.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use libdd_shared_runtime::Worker;
use libdd_telemetry::config::TelemetryEndpoint;
use libdd_telemetry::data::Configuration;
use libdd_telemetry::worker::{TelemetryActions, TelemetryWorkerBuilder, TelemetryWorkerHandle};
use tracing::debug;

use super::container_headers::{ContainerAwareHttp, ContainerOfPayloads, SPEAKS_FOR_CONTAINER};
use super::identity::ClientIdentity;

/// Where a setting's value came from, in telemetry's vocabulary (`env_var`, `code`,
/// `remote_config`, `default`, ...): libdatadog's type, re-exported.
pub use libdd_telemetry::data::ConfigurationOrigin;

/// How often `app-heartbeat` is sent, as in-process tracers do
/// (`DD_TELEMETRY_HEARTBEAT_INTERVAL` defaults to 60 s).
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(60);

/// How long one telemetry request may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);

/// One setting as reported in telemetry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigurationEntry {
    /// The setting's name as users know it, e.g. `DD_TRACE_SAMPLE_RATE`.
    pub name: String,
    /// Its value as text; `None` for a setting without a value (sent as `null`).
    pub value: Option<String>,
    /// Where the value came from.
    pub origin: ConfigurationOrigin,
    /// For values from remote configuration: the configuration id that set it.
    pub config_id: Option<String>,
}

impl ConfigurationEntry {
    /// A setting `name` = `value` that came from `origin`.
    pub fn new(name: impl Into<String>, value: impl Into<String>, origin: ConfigurationOrigin) -> Self {
        Self { name: name.into(), value: Some(value.into()), origin, config_id: None }
    }

    /// Records the remote configuration that set this value.
    pub fn with_config_id(mut self, config_id: impl Into<String>) -> Self {
        self.config_id = Some(config_id.into());
        self
    }

    fn into_libdd(self) -> Configuration {
        Configuration {
            name: self.name,
            value: self.value,
            origin: self.origin,
            config_id: self.config_id,
            seq_id: None,
        }
    }
}

/// What can go wrong with telemetry, phrased for the person running the daemon.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The agent URL could not be used.
    #[error(
        "the Datadog agent URL {url:?} is not usable for telemetry: {reason}; pass a URL such \
         as http://localhost:8126 or unix:///var/run/datadog/apm.socket with --agent-url / \
         DD_TRACE_AGENT_URL"
    )]
    InvalidAgentUrl { url: String, reason: String },

    /// The identity has no service; telemetry is keyed by service.
    #[error(
        "telemetry needs the traced process's service name, and none was given; set DD_SERVICE \
         for the process (or let the daemon infer one)"
    )]
    MissingService,

    /// libdatadog could not start its telemetry worker.
    #[error("could not start the telemetry worker for the agent at {url}: {reason}")]
    Setup { url: String, reason: String },

    /// The worker did not take the message (its queue is full, or it has stopped).
    #[error("telemetry for the agent at {url} dropped {what}: {reason}")]
    Dropped { url: String, what: &'static str, reason: String },

    /// `app-closing` could not be confirmed sent within the time given.
    #[error(
        "telemetry for the agent at {url} did not finish within {timeout:?}; app-closing may \
         not have been sent"
    )]
    StopTimedOut { url: String, timeout: Duration },
}

/// Options for a [`TelemetryClient`]; start with [`TelemetryClient::builder`].
#[derive(Debug, Clone)]
pub struct TelemetryClientBuilder {
    agent_url: String,
    identity: ClientIdentity,
    configuration: Vec<ConfigurationEntry>,
    products: Vec<(String, bool)>,
    heartbeat_interval: Duration,
    timeout: Duration,
}

impl TelemetryClientBuilder {
    /// The settings reported in `app-started`.
    pub fn configuration(mut self, entries: impl IntoIterator<Item = ConfigurationEntry>) -> Self {
        self.configuration.extend(entries);
        self
    }

    /// A product and whether it is enabled, reported in `app-started` (`products`).
    pub fn product(mut self, name: impl Into<String>, enabled: bool) -> Self {
        self.products.push((name.into(), enabled));
        self
    }

    /// How often `app-heartbeat` is sent (default [`DEFAULT_HEARTBEAT_INTERVAL`]). Settings and
    /// integrations added after the start go out with the next heartbeat.
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.heartbeat_interval = interval;
        self
    }

    /// How long one request may take (default [`DEFAULT_TIMEOUT`]).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Starts the worker and queues `app-started`. An agent that is down is not an error here:
    /// the worker logs failed sends (at debug level) and goes on.
    pub fn start(self) -> Result<TelemetryClient, TelemetryError> {
        let (worker, url, queued) = self.worker_builder(None)?;
        // Spawns its own thread and runtime: fine from anywhere.
        let handle = worker
            .run::<ContainerAwareHttp>()
            .map_err(|e| TelemetryError::Setup { url: url.clone(), reason: format!("{e:#}") })?;
        TelemetryClient::started(handle, url, queued)
    }

    /// Like [`start`](Self::start), the worker a task on `runtime` (one runtime for many
    /// processes' workers, node mode: a thread each would not survive churn) whose requests name
    /// `container`. [`TelemetryTask::close`] sends `app-closing` and ends it.
    pub fn spawn_in(
        self,
        runtime: &tokio::runtime::Handle,
        container: ContainerOfPayloads,
    ) -> Result<TelemetryTask, TelemetryError> {
        let (worker, url, queued) = self.worker_builder(container.container_id.clone())?;
        let (handle, worker) = worker.build_worker::<ContainerAwareHttp>(Some(runtime.clone()));
        let (close, closed) = tokio::sync::oneshot::channel();
        let task = runtime.spawn(SPEAKS_FOR_CONTAINER.scope(container, drive(worker, closed)));
        let mut client = TelemetryClient::started(handle, url, queued)?;
        // `app-closing` is the task's to send, once (see `drive`).
        client.stopped = true;
        Ok(TelemetryTask { client, close, task })
    }

    /// libdatadog's builder with this one's options, and what is queued before `app-started`.
    fn worker_builder(
        self,
        container_id: Option<String>,
    ) -> Result<(TelemetryWorkerBuilder, String, QueuedAtStart), TelemetryError> {
        let identity = self.identity;
        if identity.service.is_empty() {
            return Err(TelemetryError::MissingService);
        }
        let url = self.agent_url;
        if !["http://", "https://", "unix://"].iter().any(|scheme| url.starts_with(scheme)) {
            return Err(TelemetryError::InvalidAgentUrl {
                url,
                reason: "no http://, https:// or unix:// scheme".to_owned(),
            });
        }

        let mut builder = TelemetryWorkerBuilder::new_fetch_host(
            identity.service,
            identity.language,
            identity.language_version,
            identity.tracer_version,
        );
        builder.application.env = identity.env;
        builder.application.service_version = identity.app_version;
        builder.runtime_id = Some(identity.runtime_id);
        builder.config.telemetry_heartbeat_interval = self.heartbeat_interval;
        if container_id.is_some() {
            builder.host.container_id = container_id;
        }
        // No API key: always through the agent's proxy, never directly to the intake.
        builder
            .config
            .set_endpoint(TelemetryEndpoint {
                url: Some(url.clone()),
                timeout_ms: self.timeout.as_millis().clamp(1, u128::from(u64::MAX)) as u64,
                ..Default::default()
            })
            .map_err(|e| TelemetryError::InvalidAgentUrl { url: url.clone(), reason: format!("{e:#}") })?;
        Ok((builder, url, QueuedAtStart { configuration: self.configuration, products: self.products }))
    }
}

/// A worker through libdatadog's public `Worker` face (its own loop is private): wait for the
/// next action and run it, until told to close; then `shutdown`, which sends what is queued and
/// `app-closing`. Waiting is cancellation safe (the trait's contract).
async fn drive(mut worker: impl Worker, mut closed: tokio::sync::oneshot::Receiver<()>) {
    loop {
        tokio::select! {
            biased;
            _ = &mut closed => break,
            () = worker.trigger() => worker.run().await,
        }
    }
    worker.shutdown().await;
}

/// A process's telemetry worker running as a task (see [`TelemetryClientBuilder::spawn_in`]).
#[derive(Debug)]
pub struct TelemetryTask {
    client: TelemetryClient,
    close: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl TelemetryTask {
    pub fn client(&self) -> &TelemetryClient {
        &self.client
    }

    /// Sends what is pending and `app-closing`; the task ends after (await it to know when).
    pub fn close(self) -> tokio::task::JoinHandle<()> {
        let _ = self.close.send(());
        self.task
    }
}

/// What goes out with `app-started`.
struct QueuedAtStart {
    configuration: Vec<ConfigurationEntry>,
    products: Vec<(String, bool)>,
}

/// Sends instrumentation telemetry for one traced process; see the module documentation.
pub struct TelemetryClient {
    handle: TelemetryWorkerHandle<ContainerAwareHttp>,
    agent_url: String,
    stopped: bool,
}

impl std::fmt::Debug for TelemetryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelemetryClient")
            .field("agent_url", &self.agent_url)
            .field("stopped", &self.stopped)
            .finish_non_exhaustive()
    }
}

impl TelemetryClient {
    fn started(
        handle: TelemetryWorkerHandle<ContainerAwareHttp>,
        agent_url: String,
        queued: QueuedAtStart,
    ) -> Result<Self, TelemetryError> {
        let client = TelemetryClient { handle, agent_url, stopped: false };
        // Queued before Start, so they are part of app-started.
        client.add_configuration(queued.configuration)?;
        for (name, enabled) in queued.products {
            client.handle.add_product_change(name, enabled, None).map_err(|e| client.dropped("a product state", e))?;
        }
        client.handle.send_start().map_err(|e| client.dropped("app-started", e))?;
        Ok(client)
    }

    /// Starts building a client for the agent at `agent_url` (`http://host:port` or
    /// `unix:///path/to/apm.socket`) that speaks for `identity`.
    pub fn builder(agent_url: &str, identity: ClientIdentity) -> TelemetryClientBuilder {
        TelemetryClientBuilder {
            agent_url: agent_url.to_owned(),
            identity,
            configuration: Vec::new(),
            products: Vec::new(),
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Reports settings that changed (e.g. through remote configuration): sent with the next
    /// heartbeat as `app-client-configuration-change`.
    pub fn add_configuration(
        &self,
        entries: impl IntoIterator<Item = ConfigurationEntry>,
    ) -> Result<(), TelemetryError> {
        for entry in entries {
            self.handle
                .try_send_msg(TelemetryActions::AddConfig(entry.into_libdd()))
                .map_err(|e| self.dropped("a configuration entry", e))?;
        }
        Ok(())
    }

    /// Reports an integration (an instrumented library) and whether it is enabled: sent with
    /// the next heartbeat as `app-integrations-change`.
    pub fn add_integration(
        &self,
        name: impl Into<String>,
        enabled: bool,
        version: Option<String>,
    ) -> Result<(), TelemetryError> {
        self.handle
            .add_integration(name.into(), enabled, version, None, Some(true), None)
            .map_err(|e| self.dropped("an integration", e))
    }

    /// The agent base URL this client sends to.
    pub fn agent_url(&self) -> &str {
        &self.agent_url
    }

    /// Sends what is pending and `app-closing`, and waits for the worker to finish, at most
    /// `timeout` (requests still running then are cancelled). Further calls do nothing.
    pub fn stop(&mut self, timeout: Duration) -> Result<(), TelemetryError> {
        if std::mem::replace(&mut self.stopped, true) {
            return Ok(());
        }
        self.handle.send_stop().map_err(|e| self.dropped("app-closing", e))?;

        // libdatadog's wait has no upper bound of its own (it waits for the worker thread to
        // report that it ended); wait for it on a helper thread so a worker that never ends
        // cannot hang the daemon.
        let deadline = Instant::now() + timeout;
        let handle = self.handle.clone();
        let (done, finished) = mpsc::channel();
        let spawned = std::thread::Builder::new().name("dd-telemetry-stop".to_owned()).spawn(move || {
            handle.wait_for_shutdown_deadline(deadline);
            let _ = done.send(());
        });
        if let Err(e) = spawned {
            debug!(error = %e, "telemetry stop: not waiting for the worker");
            return Ok(());
        }
        // A little past the deadline: the worker needs a moment to notice the cancellation.
        finished
            .recv_timeout(timeout + Duration::from_millis(500))
            .map_err(|_| TelemetryError::StopTimedOut { url: self.agent_url.clone(), timeout })
    }

    fn dropped(&self, what: &'static str, e: anyhow::Error) -> TelemetryError {
        TelemetryError::Dropped { url: self.agent_url.clone(), what, reason: format!("{e:#}") }
    }
}

impl Drop for TelemetryClient {
    /// Without [`TelemetryClient::stop`], the worker still sends `app-closing`, on its own
    /// thread, but nobody waits for it.
    fn drop(&mut self) {
        if !self.stopped {
            let _ = self.handle.send_stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use ddtrace_tests::{http::get as http_get, test_agent::TestAgent};
    use serde_json::Value;

    fn identity() -> ClientIdentity {
        ClientIdentity::new("checkout").with_env("staging").with_app_version("1.2.3")
    }

    use ddtrace_tests::telemetry::{telemetry_events, wait_for_event};

    fn find<'a>(events: &'a [(String, Value, Value)], kind: &str) -> &'a (String, Value, Value) {
        events.iter().find(|(k, ..)| k == kind).unwrap_or_else(|| panic!("no {kind} among {events:#?}"))
    }

    fn configuration_of(payload: &Value) -> Vec<(String, Value, String, Value)> {
        payload["configuration"]
            .as_array()
            .unwrap_or_else(|| panic!("no configuration in {payload:#}"))
            .iter()
            .map(|c| {
                (
                    c["name"].as_str().unwrap_or("").to_owned(),
                    c["value"].clone(),
                    c["origin"].as_str().unwrap_or("").to_owned(),
                    c["config_id"].clone(),
                )
            })
            .collect()
    }

    #[test]
    fn lifecycle_and_configuration_reach_the_test_agent() {
        let agent = TestAgent::start();
        let identity = identity();
        let runtime_id = identity.runtime_id.clone();

        // The daemon's way: from a plain thread.
        let url = agent.url();
        let mut client = std::thread::spawn(move || {
            TelemetryClient::builder(&url, identity)
                .heartbeat_interval(Duration::from_millis(300))
                .configuration([
                    ConfigurationEntry::new("DD_SERVICE", "checkout", ConfigurationOrigin::EnvVar),
                    ConfigurationEntry::new("DD_TRACE_ENABLED", "true", ConfigurationOrigin::Default),
                    ConfigurationEntry::new("DD_TRACE_SAMPLE_RATE", "1.0", ConfigurationOrigin::Code),
                ])
                .product("tracing", true)
                .start()
                .unwrap()
        })
        .join()
        .unwrap();

        let events = wait_for_event(&agent, "app-heartbeat");
        let (_, started, envelope) = find(&events, "app-started");
        assert_eq!(
            configuration_of(started),
            [
                ("DD_SERVICE".to_owned(), Value::from("checkout"), "env_var".to_owned(), Value::Null),
                ("DD_TRACE_ENABLED".to_owned(), Value::from("true"), "default".to_owned(), Value::Null),
                ("DD_TRACE_SAMPLE_RATE".to_owned(), Value::from("1.0"), "code".to_owned(), Value::Null),
            ]
        );
        assert_eq!(started["products"]["tracing"]["enabled"], true, "{started:#}");
        let application = &envelope["application"];
        assert_eq!(application["service_name"], "checkout");
        assert_eq!(application["env"], "staging");
        assert_eq!(application["service_version"], "1.2.3");
        assert_eq!(application["language_name"], super::super::agent_exporter::LANGUAGE);
        assert_eq!(application["tracer_version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(envelope["runtime_id"], runtime_id.as_str());
        assert_eq!(envelope["api_version"], "v2");
        assert!(!envelope["host"]["hostname"].as_str().unwrap_or("").is_empty());
        find(&events, "app-heartbeat");

        // A change after the start (say, by remote configuration) goes out with a heartbeat.
        client
            .add_configuration([ConfigurationEntry::new(
                "DD_TRACE_SAMPLE_RATE",
                "0.5",
                ConfigurationOrigin::RemoteConfig,
            )
            .with_config_id("checkout-staging")])
            .unwrap();
        client.add_integration("sqlite", true, None).unwrap();
        let events = wait_for_event(&agent, "app-client-configuration-change");
        let (_, change, _) = find(&events, "app-client-configuration-change");
        assert_eq!(
            configuration_of(change),
            [(
                "DD_TRACE_SAMPLE_RATE".to_owned(),
                Value::from("0.5"),
                "remote_config".to_owned(),
                Value::from("checkout-staging"),
            )]
        );
        let events = wait_for_event(&agent, "app-integrations-change");
        let (_, integrations, _) = find(&events, "app-integrations-change");
        assert_eq!(integrations["integrations"][0]["name"], "sqlite", "{integrations:#}");

        // And from inside a tokio runtime, which libdatadog's blocking calls do not allow as is.
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async { client.stop(Duration::from_secs(3)) })
            .unwrap();
        let events = telemetry_events(&agent);
        let (_, _, closing) = find(&events, "app-closing");
        assert_eq!(closing["runtime_id"], runtime_id.as_str());
        // Nothing after app-closing, and every payload came from the same runtime, in order.
        assert_eq!(events.last().map(|(k, ..)| k.as_str()), Some("app-closing"));
        let seq_ids: Vec<u64> = {
            let (status, body) = http_get(agent.port, "/test/session/apmtelemetry").unwrap();
            assert_eq!(status, 200);
            let envelopes: Vec<Value> = serde_json::from_str(&body).unwrap();
            assert!(envelopes.iter().all(|e| e["runtime_id"] == runtime_id.as_str()));
            envelopes.iter().filter_map(|e| e["seq_id"].as_u64()).collect()
        };
        let mut sorted = seq_ids.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), seq_ids.len(), "seq_ids repeat: {seq_ids:?}");

        // Stopping again is a no-op.
        client.stop(Duration::from_secs(1)).unwrap();
    }

    #[test]
    fn unreachable_agent_does_not_block_stop() {
        let url = format!("http://127.0.0.1:{}", ddtrace_tests::http::free_port());
        let mut client = TelemetryClient::builder(&url, identity()).timeout(Duration::from_secs(10)).start().unwrap();
        let started = Instant::now();
        // Whatever happens to the requests, stop returns within its bound.
        let _ = client.stop(Duration::from_millis(500));
        assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    }

    #[test]
    fn unusable_settings_are_reported() {
        let err = TelemetryClient::builder("localhost:8126", identity()).start().unwrap_err();
        assert!(matches!(err, TelemetryError::InvalidAgentUrl { .. }), "{err:?}");
        assert!(err.to_string().contains("--agent-url"), "{err}");
        let err = TelemetryClient::builder("http://localhost:8126", ClientIdentity::new("")).start().unwrap_err();
        assert!(matches!(err, TelemetryError::MissingService), "{err:?}");
    }
}
