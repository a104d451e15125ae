//! The remote configuration product: polls the Datadog agent for `APM_TRACING` configurations
//! (libdatadog's client, `intake::remote_config`) and hands the daemon, for each change, the
//! document every product's `apm_tracing_rc` gets. For one traced tree it speaks as that tree's
//! tracer; for a node, as one tracer per service ([`per_service`]), and each document then says
//! which service and env it is for (`service_target`). It never calls other products itself: the
//! daemon's loop forwards each document to the manager, so products stay on the daemon's
//! thread and layering stays one-way.

mod per_service;
mod targeting;

use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;

use super::{Product, ProductConfig, ProductError, SharedSummary};
use crate::{
    config::Setting,
    core::{EventHub, Identities},
    intake::{
        identity::ClientIdentity,
        remote_config::{RemoteConfigChange, RemoteConfigClient, RemoteConfigPoller},
    },
};
use per_service::{PerServicePollers, PollerSettings};
pub use targeting::ActiveConfigs;

/// Where the product reaches the agent, and for whom; `None` in [`RemoteConfigInputs::agent`]
/// when traces do not go to a Datadog agent (e.g. `--exporter console`).
#[derive(Debug, Clone)]
pub struct RemoteConfigAgent {
    pub agent_url: String,
    pub speaks_for: SpeaksFor,
}

/// Whom the product polls as.
#[derive(Debug, Clone)]
pub enum SpeaksFor {
    /// One traced tree, one tracer: its documents apply to every traced process.
    Target(ClientIdentity),
    /// Every service and env among these processes, each as its own tracer.
    EachService(Identities),
}

/// What the daemon gives the product.
pub struct RemoteConfigInputs {
    pub agent: Option<RemoteConfigAgent>,
    /// `DD_REMOTE_CONFIGURATION_ENABLED`.
    pub enabled: Setting<bool>,
    /// `DD_REMOTE_CONFIG_POLL_INTERVAL_SECONDS`.
    pub poll_interval_seconds: Setting<f64>,
    /// Where `APM_TRACING` documents go: the daemon hands each to `ProductManager::apm_tracing_rc`.
    pub apm_tracing: UnboundedSender<serde_json::Value>,
    /// The running products' capabilities, known once they all started.
    pub summary: SharedSummary,
}

pub struct RemoteConfigProduct {
    inputs: RemoteConfigInputs,
    client: Option<RemoteConfigClient>,
    poller: Option<RemoteConfigPoller>,
    per_service: Option<PerServicePollers>,
}

impl RemoteConfigProduct {
    pub fn new(inputs: RemoteConfigInputs) -> Self {
        Self { inputs, client: None, poller: None, per_service: None }
    }

    fn stop_polling(&mut self) {
        if let Some(poller) = self.poller.take() {
            poller.stop();
        }
        self.client = None;
        self.per_service = None;
    }

    fn operation_error(reason: impl ToString) -> ProductError {
        ProductError::Operation { product: "remote_config", operation: "post_preload", reason: reason.to_string() }
    }

    /// Polls as the one tracer of the traced tree, on the client's own thread.
    fn poll_as_target(&mut self, identity: &ClientIdentity, capabilities: u64) -> Result<(), ProductError> {
        let Some(client) = self.client.take() else { return Ok(()) };
        let mut active = ActiveConfigs::new(&identity.service, identity.env.as_deref());
        let documents = self.inputs.apm_tracing.clone();
        let mut last_sent: Option<serde_json::Value> = None;
        let mut client = client;
        client.set_capabilities(capabilities);
        let poller = client
            .spawn_poller(move |change: &RemoteConfigChange| {
                active.apply(change);
                let document = active.effective();
                if last_sent.as_ref() != Some(&document) {
                    tracing::debug!(%document, "remote configuration: APM_TRACING changed");
                    documents.send(document.clone()).map_err(|_| "the daemon is stopping".to_string())?;
                    last_sent = Some(document);
                }
                Ok(())
            })
            .map_err(Self::operation_error)?;
        self.poller = Some(poller);
        Ok(())
    }
}

impl Product for RemoteConfigProduct {
    fn name(&self) -> &'static str {
        "remote_config"
    }

    fn start(&mut self, _hub: &mut EventHub) -> Result<(), ProductError> {
        let Some(agent) = &self.inputs.agent else {
            return Err(ProductError::Start { product: "remote_config", reason: "no Datadog agent to poll".into() });
        };
        // Per service, clients are made as services appear (`post_preload` on).
        let SpeaksFor::Target(identity) = &agent.speaks_for else { return Ok(()) };
        let interval = Duration::from_secs_f64(self.inputs.poll_interval_seconds.value);
        let client = RemoteConfigClient::builder(&agent.agent_url, identity.clone())
            .poll_interval(interval)
            .build()
            .map_err(|e| ProductError::Start { product: "remote_config", reason: e.to_string() })?;
        self.client = Some(client);
        Ok(())
    }

    fn restart(&mut self, _join: bool) -> Result<(), ProductError> {
        Ok(())
    }

    fn stop(&mut self, _join: bool) -> Result<(), ProductError> {
        self.stop_polling();
        Ok(())
    }

    fn at_exit(&mut self, _join: bool) -> Result<(), ProductError> {
        self.stop_polling();
        Ok(())
    }

    /// Every product has started: poll with their capabilities from now on.
    fn post_preload(&mut self) -> Result<(), ProductError> {
        if self.poller.is_some() || self.per_service.is_some() {
            return Ok(());
        }
        let capabilities = self.inputs.summary.get().map(|summary| summary.capabilities).unwrap_or(0);
        let Some(agent) = self.inputs.agent.clone() else { return Ok(()) };
        match agent.speaks_for {
            SpeaksFor::Target(identity) => self.poll_as_target(&identity, capabilities),
            SpeaksFor::EachService(identities) => {
                let settings = PollerSettings {
                    agent_url: agent.agent_url,
                    poll_interval: Duration::from_secs_f64(self.inputs.poll_interval_seconds.value),
                    capabilities,
                };
                let pollers = PerServicePollers::spawn(settings, identities, self.inputs.apm_tracing.clone())
                    .map_err(Self::operation_error)?;
                self.per_service = Some(pollers);
                Ok(())
            }
        }
    }

    /// Off with `DD_REMOTE_CONFIGURATION_ENABLED=false`, and when traces do not go to a Datadog
    /// agent: there is no agent to poll.
    fn enabled(&self) -> bool {
        self.inputs.enabled.value && self.inputs.agent.is_some()
    }

    fn config(&self) -> Option<ProductConfig> {
        Some(
            ProductConfig::new()
                .with(
                    "DD_REMOTE_CONFIGURATION_ENABLED",
                    self.inputs.enabled.value.to_string(),
                    self.inputs.enabled.origin,
                )
                .with(
                    "DD_REMOTE_CONFIG_POLL_INTERVAL_SECONDS",
                    self.inputs.poll_interval_seconds.value.to_string(),
                    self.inputs.poll_interval_seconds.origin,
                ),
        )
    }
}
