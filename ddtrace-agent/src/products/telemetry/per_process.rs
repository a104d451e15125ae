//! Telemetry for a node: each traced process speaks as its own tracer would, with its own
//! runtime id, service, env and version: `app-started` when it is identified, heartbeats while
//! it lives, `app-closing` once it is gone, every request naming its container.
//!
//! One worker per process is a task on one runtime, on one thread: under churn (a thousand
//! short-lived workers a minute) a thread each would cost more than the processes themselves.
//! The registry is watched through its generation counter (one atomic load per tick); a process
//! that came and went between two ticks sends nothing.

use std::{collections::HashMap, sync::Arc, thread::JoinHandle, time::Duration};

use super::CLOSING_DEADLINE;
use crate::{
    core::{Identities, ProcessIdentity},
    intake::{
        container_headers::ContainerOfPayloads,
        identity::ClientIdentity,
        telemetry::{ConfigurationEntry, ConfigurationOrigin, TelemetryClient, TelemetryTask},
    },
};

/// How often the registry is looked at.
const WATCH_INTERVAL: Duration = Duration::from_millis(100);

/// What every process's `app-started` shares.
#[derive(Clone)]
pub struct SharedReport {
    pub agent_url: String,
    pub heartbeat_interval: Duration,
    /// The products' settings (the node's), after which each process's own identity comes.
    pub configuration: Vec<ConfigurationEntry>,
    pub products: Vec<(&'static str, bool)>,
}

/// The thread that runs every process's worker; [`close`](Self::close) says goodbye for each.
pub struct PerProcessTelemetry {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl PerProcessTelemetry {
    pub fn spawn(report: SharedReport, identities: Identities) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("dd-telemetry-node".to_owned())
            .spawn(move || runtime.block_on(watch(report, identities, stopped)))?;
        Ok(Self { stop: Some(stop), thread: Some(thread) })
    }

    /// `app-closing` for every process still traced, waiting at most [`CLOSING_DEADLINE`] when
    /// `join`.
    pub fn close(&mut self, join: bool) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            if join {
                let _ = thread.join();
            }
        }
    }
}

impl Drop for PerProcessTelemetry {
    fn drop(&mut self) {
        self.close(false);
    }
}

struct Traced {
    identity: Arc<ProcessIdentity>,
    task: TelemetryTask,
}

async fn watch(report: SharedReport, identities: Identities, mut stopped: tokio::sync::oneshot::Receiver<()>) {
    let runtime = tokio::runtime::Handle::current();
    let mut traced: HashMap<u32, Traced> = HashMap::new();
    let mut closing = Vec::new();
    let mut seen_generation = None;
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            _ = tick.tick() => {}
        }
        closing.retain(|task: &tokio::task::JoinHandle<()>| !task.is_finished());
        let generation = identities.generation();
        if seen_generation == Some(generation) {
            continue;
        }
        seen_generation = Some(generation);
        let now = identities.snapshot();
        // Gone, or another program now (an exec gives a new identity): goodbye.
        let ended: Vec<u32> = traced
            .iter()
            .filter(|(pid, t)| now.get(pid).is_none_or(|identity| identity.runtime_id != t.identity.runtime_id))
            .map(|(pid, _)| *pid)
            .collect();
        for pid in ended {
            if let Some(gone) = traced.remove(&pid) {
                closing.push(gone.task.close());
            }
        }
        for (pid, identity) in now {
            if traced.contains_key(&pid) {
                continue;
            }
            match start(&report, &identity, &runtime) {
                Ok(task) => {
                    traced.insert(pid, Traced { identity, task });
                }
                Err(error) => tracing::debug!(pid, %error, "telemetry: not started for this process"),
            }
        }
    }
    closing.extend(traced.into_values().map(|t| t.task.close()));
    let all_closed = futures_join_all(closing);
    if tokio::time::timeout(CLOSING_DEADLINE, all_closed).await.is_err() {
        tracing::debug!("telemetry: some app-closing were not sent within {CLOSING_DEADLINE:?}");
    }
}

async fn futures_join_all(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for task in tasks {
        let _ = task.await;
    }
}

fn start(
    report: &SharedReport,
    process: &ProcessIdentity,
    runtime: &tokio::runtime::Handle,
) -> Result<TelemetryTask, crate::intake::telemetry::TelemetryError> {
    let mut identity = ClientIdentity::new(process.service.clone())
        .with_runtime_id(process.runtime_id.clone())
        .with_tags(process.tags.iter().map(|(k, v)| format!("{k}:{v}")).collect());
    if let Some(env) = &process.env {
        identity = identity.with_env(env.clone());
    }
    if let Some(version) = &process.version {
        identity = identity.with_app_version(version.clone());
    }
    let own = [
        ("DD_SERVICE", Some(&process.service)),
        ("DD_ENV", process.env.as_ref()),
        ("DD_VERSION", process.version.as_ref()),
    ];
    let mut builder = TelemetryClient::builder(&report.agent_url, identity)
        .heartbeat_interval(report.heartbeat_interval)
        .configuration(report.configuration.iter().cloned())
        .configuration(
            own.into_iter()
                .filter_map(|(name, value)| Some(ConfigurationEntry::new(name, value?, ConfigurationOrigin::EnvVar))),
        );
    for (name, enabled) in &report.products {
        builder = builder.product(*name, *enabled);
    }
    let container =
        ContainerOfPayloads { container_id: process.container_id.clone(), entity_id: process.entity_id.clone() };
    builder.spawn_in(runtime, container)
}
