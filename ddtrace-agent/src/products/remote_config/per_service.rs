//! Remote configuration for a node: one client per service and env among the traced processes,
//! as each service's in-process tracer would have, all polled from one thread.
//!
//! The Datadog agent serves each client the configurations that target it (its service and env
//! are in every poll), and the UI lists them per service; so a node with twenty services polls as
//! twenty tracers, not as one. Every document handed to the daemon carries the service and env it
//! is for (`service_target`), so a product applies it to those processes only: a configuration
//! for one service never changes another.
//!
//! Clients follow the processes: a service's client starts at the first poll after its first
//! process was identified, and stops once no process of it is left. What a removed service's
//! configuration set stays with the products (a recycled worker of it comes back under it) until
//! its client, back, says otherwise.

use std::{
    collections::HashMap,
    sync::mpsc::{self, RecvTimeoutError},
    thread::JoinHandle,
    time::Duration,
};

use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedSender;

use super::ActiveConfigs;
use crate::{
    core::{Identities, ProcessIdentity},
    intake::{
        identity::ClientIdentity,
        remote_config::{RemoteConfigChange, RemoteConfigClient},
    },
};

/// A service as remote configuration targets it.
type ServiceKey = (String, Option<String>);

/// What every client of the node shares.
pub struct PollerSettings {
    pub agent_url: String,
    pub poll_interval: Duration,
    pub capabilities: u64,
}

/// The thread polling for every service; stopped (and joined) on drop.
pub struct PerServicePollers {
    stop: mpsc::Sender<()>,
    thread: Option<JoinHandle<()>>,
}

impl PerServicePollers {
    /// Polls, every `settings.poll_interval`, for each service `identities` holds at that time,
    /// and sends each changed document to `documents`.
    pub fn spawn(
        settings: PollerSettings,
        identities: Identities,
        documents: UnboundedSender<Value>,
    ) -> std::io::Result<Self> {
        let (stop, inbox) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("dd-rc-services".to_owned())
            .spawn(move || run(&settings, &identities, &documents, &inbox))?;
        Ok(Self { stop, thread: Some(thread) })
    }
}

impl Drop for PerServicePollers {
    fn drop(&mut self) {
        let _ = self.stop.send(());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One service's client and what it last told the daemon.
struct ServiceClient {
    client: RemoteConfigClient,
    active: ActiveConfigs,
    last_sent: Value,
    failing: bool,
}

fn run(
    settings: &PollerSettings,
    identities: &Identities,
    documents: &UnboundedSender<Value>,
    inbox: &mpsc::Receiver<()>,
) {
    // `None`: a client that could not be built (said once, not retried).
    let mut clients: HashMap<ServiceKey, Option<ServiceClient>> = HashMap::new();
    loop {
        let services = identities.services();
        let present: std::collections::HashSet<ServiceKey> =
            services.iter().map(|identity| (identity.service.clone(), identity.env.clone())).collect();
        clients.retain(|key, _| present.contains(key));
        for identity in &services {
            let key = (identity.service.clone(), identity.env.clone());
            clients.entry(key).or_insert_with_key(|key| start_client(settings, key, identity));
        }
        for (key, client) in clients.iter_mut() {
            let Some(ServiceClient { client, active, last_sent, failing }) = client else { continue };
            client.poll_and_hand_out(failing, &mut |change: &RemoteConfigChange| {
                active.apply(change);
                let document = scoped(active.effective(), key);
                if *last_sent != document {
                    tracing::debug!(%document, "remote configuration: APM_TRACING changed");
                    documents.send(document.clone()).map_err(|_| "the daemon is stopping".to_string())?;
                    *last_sent = document;
                }
                Ok(())
            });
        }
        match inbox.recv_timeout(settings.poll_interval) {
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => {}
        }
    }
}

fn start_client(settings: &PollerSettings, key: &ServiceKey, process: &ProcessIdentity) -> Option<ServiceClient> {
    let (service, env) = key;
    let mut identity = ClientIdentity::new(service.clone())
        .with_runtime_id(process.runtime_id.clone())
        .with_tags(process.tags.iter().map(|(k, v)| format!("{k}:{v}")).collect());
    if let Some(env) = env {
        identity = identity.with_env(env.clone());
    }
    if let Some(version) = &process.version {
        identity = identity.with_app_version(version.clone());
    }
    let built = RemoteConfigClient::builder(&settings.agent_url, identity)
        .poll_interval(settings.poll_interval)
        .capabilities(settings.capabilities)
        .build();
    match built {
        Ok(client) => {
            tracing::info!(
                service,
                env = env.as_deref().unwrap_or(""),
                "remote configuration: polling for this service"
            );
            let active = ActiveConfigs::new(service, env.as_deref());
            // Nothing is in force until a configuration arrives: no document for it.
            let last_sent = scoped(active.effective(), key);
            Some(ServiceClient { client, active, last_sent, failing: false })
        }
        Err(error) => {
            tracing::warn!(service, %error, "remote configuration: no client for this service");
            None
        }
    }
}

/// `effective` (`{"lib_config": {...}}`) for the processes of one service and env only.
pub fn scoped(mut effective: Value, (service, env): &ServiceKey) -> Value {
    effective["service_target"] = json!({ "service": service, "env": env });
    effective
}
