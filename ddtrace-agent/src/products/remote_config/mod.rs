//! The remote configuration product: polls the Datadog agent for `APM_TRACING` configurations
//! (libdatadog's client, `intake::remote_config`) and hands the daemon, for each change, the
//! document every product's `apm_tracing_rc` gets. It never calls other products itself: the
//! daemon's loop forwards each document to the manager, so products stay on the daemon's
//! thread and layering stays one-way.

mod targeting;

use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;

use super::{Product, ProductConfig, ProductError, SharedSummary};
use crate::{
    config::Setting,
    core::EventHub,
    intake::{
        identity::ClientIdentity,
        remote_config::{RemoteConfigChange, RemoteConfigClient, RemoteConfigPoller},
    },
};
pub use targeting::ActiveConfigs;

/// Where the product reaches the agent, and for whom; `None` in [`RemoteConfigInputs::agent`]
/// when traces do not go to a Datadog agent (e.g. `--exporter console`).
#[derive(Debug, Clone)]
pub struct RemoteConfigAgent {
    pub agent_url: String,
    pub identity: ClientIdentity,
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
}

impl RemoteConfigProduct {
    pub fn new(inputs: RemoteConfigInputs) -> Self {
        Self { inputs, client: None, poller: None }
    }

    fn stop_polling(&mut self) {
        if let Some(poller) = self.poller.take() {
            poller.stop();
        }
        self.client = None;
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
        let interval = Duration::from_secs_f64(self.inputs.poll_interval_seconds.value);
        let client = RemoteConfigClient::builder(&agent.agent_url, agent.identity.clone())
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
        let Some(client) = self.client.take() else { return Ok(()) };
        let capabilities = self.inputs.summary.get().map(|summary| summary.capabilities).unwrap_or(0);
        let agent = self.inputs.agent.as_ref().expect("started with an agent");
        let mut active = ActiveConfigs::new(&agent.identity.service, agent.identity.env.as_deref());
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
            .map_err(|e| ProductError::Operation {
                product: "remote_config",
                operation: "post_preload",
                reason: e.to_string(),
            })?;
        self.poller = Some(poller);
        Ok(())
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
