//! The telemetry product: instrumentation telemetry for the traced process through the Datadog
//! agent (libdatadog's worker, `intake::telemetry`): `app-started` with the configuration of the
//! daemon and of every product (each setting with its origin), heartbeats, `app-closing` at exit.
//! For a node, each traced process has its own ([`per_process`]).

mod per_process;

use std::time::Duration;

use super::{ConfigEntry, Product, ProductConfig, ProductError, SharedSummary};
use per_process::{PerProcessTelemetry, SharedReport};

use crate::{
    config::{Origin, Setting},
    core::{EventHub, Identities},
    intake::{
        identity::ClientIdentity,
        telemetry::{ConfigurationEntry, ConfigurationOrigin, TelemetryClient},
    },
};

/// How long `at_exit` waits for `app-closing` to be sent.
pub const CLOSING_DEADLINE: Duration = Duration::from_secs(3);

/// Where telemetry goes, and for whom; `None` in [`TelemetryInputs::agent`] when traces do not
/// go to a Datadog agent.
#[derive(Debug, Clone)]
pub struct TelemetryAgent {
    pub agent_url: String,
    pub identity: ClientIdentity,
}

/// What the daemon gives the product.
pub struct TelemetryInputs {
    pub agent: Option<TelemetryAgent>,
    /// `DD_INSTRUMENTATION_TELEMETRY_ENABLED`.
    pub enabled: Setting<bool>,
    /// `DD_TELEMETRY_HEARTBEAT_INTERVAL`, seconds.
    pub heartbeat_interval_seconds: Setting<f64>,
    /// The daemon's own settings (service, env, version, agent URL, ...).
    pub daemon_config: ProductConfig,
    /// The other products' configurations, known once they all started.
    pub summary: SharedSummary,
    /// Node mode: every process of this registry speaks for itself (the agent's identity is
    /// then nobody's).
    pub per_process: Option<Identities>,
}

pub struct TelemetryProduct {
    inputs: TelemetryInputs,
    client: Option<TelemetryClient>,
    per_process: Option<PerProcessTelemetry>,
}

impl TelemetryProduct {
    pub fn new(inputs: TelemetryInputs) -> Self {
        Self { inputs, client: None, per_process: None }
    }

    /// The products running and not, as `app-started` lists them.
    fn product_states(&self) -> Vec<(&'static str, bool)> {
        let Some(summary) = self.inputs.summary.get() else { return Vec::new() };
        let running = summary.running.iter().map(|name| (*name, true));
        running.chain(summary.not_running.iter().map(|name| (*name, false))).collect()
    }

    /// `app-started`'s configuration: the daemon's settings, then each product's (this one's
    /// included).
    fn configuration(&self) -> Vec<ConfigurationEntry> {
        let products = self.inputs.summary.get().map(|s| s.configurations.as_slice()).unwrap_or_default();
        std::iter::once(&self.inputs.daemon_config)
            .chain(products.iter().map(|(_, config)| config))
            .flat_map(|config| config.entries.iter())
            .map(|entry| ConfigurationEntry::new(&entry.name, &entry.value, telemetry_origin(entry.origin)))
            .collect()
    }

    fn close(&mut self, join: bool) -> Result<(), ProductError> {
        if let Some(mut per_process) = self.per_process.take() {
            per_process.close(join);
        }
        let Some(mut client) = self.client.take() else { return Ok(()) };
        let deadline = if join { CLOSING_DEADLINE } else { Duration::from_millis(1) };
        client.stop(deadline).map_err(|e| ProductError::Operation {
            product: "telemetry",
            operation: "at_exit",
            reason: e.to_string(),
        })
    }
}

/// Our origins in telemetry's vocabulary: both environments are `env_var` (the target's is what
/// the in-process tracer would have read), the command line is `code`.
pub fn telemetry_origin(origin: Origin) -> ConfigurationOrigin {
    match origin {
        Origin::Default => ConfigurationOrigin::Default,
        Origin::Inferred => ConfigurationOrigin::Calculated,
        Origin::DaemonEnvironment | Origin::TargetEnvironment => ConfigurationOrigin::EnvVar,
        Origin::CommandLine => ConfigurationOrigin::Code,
        Origin::RemoteConfig => ConfigurationOrigin::RemoteConfig,
    }
}

impl Product for TelemetryProduct {
    fn name(&self) -> &'static str {
        "telemetry"
    }

    /// Nothing to send yet: `app-started` waits for the other products' configuration.
    fn start(&mut self, _hub: &mut EventHub) -> Result<(), ProductError> {
        if self.inputs.agent.is_none() {
            return Err(ProductError::Start { product: "telemetry", reason: "no Datadog agent to send to".into() });
        }
        Ok(())
    }

    fn restart(&mut self, _join: bool) -> Result<(), ProductError> {
        Ok(())
    }

    fn stop(&mut self, join: bool) -> Result<(), ProductError> {
        self.close(join)
    }

    fn at_exit(&mut self, join: bool) -> Result<(), ProductError> {
        self.close(join)
    }

    /// Every product has started and the probes are attached: `app-started` (for each process,
    /// in node mode, as it comes).
    fn post_preload(&mut self) -> Result<(), ProductError> {
        let Some(agent) = &self.inputs.agent else { return Ok(()) };
        if self.client.is_some() || self.per_process.is_some() {
            return Ok(());
        }
        let error =
            |reason: String| ProductError::Operation { product: "telemetry", operation: "post_preload", reason };
        let heartbeat_interval = Duration::from_secs_f64(self.inputs.heartbeat_interval_seconds.value);
        if let Some(identities) = &self.inputs.per_process {
            // The node's own service, env and version name nobody: each process reports its own.
            let node_identity = ["DD_SERVICE", "DD_ENV", "DD_VERSION"];
            let report = SharedReport {
                agent_url: agent.agent_url.clone(),
                heartbeat_interval,
                configuration: self
                    .configuration()
                    .into_iter()
                    .filter(|e| !node_identity.contains(&e.name.as_str()))
                    .collect(),
                products: self.product_states(),
            };
            let telemetry = PerProcessTelemetry::spawn(report, identities.clone()).map_err(|e| error(e.to_string()))?;
            self.per_process = Some(telemetry);
            return Ok(());
        }
        let mut builder = TelemetryClient::builder(&agent.agent_url, agent.identity.clone())
            .heartbeat_interval(heartbeat_interval)
            .configuration(self.configuration());
        for (name, enabled) in self.product_states() {
            builder = builder.product(name, enabled);
        }
        self.client = Some(builder.start().map_err(|e| error(e.to_string()))?);
        Ok(())
    }

    /// Settings changed remotely: sent with the next heartbeat (`app-client-configuration-change`).
    fn configuration_changed(&mut self, changes: &[ConfigEntry]) -> Result<(), ProductError> {
        let Some(client) = &self.client else { return Ok(()) };
        let entries = changes
            .iter()
            .map(|entry| ConfigurationEntry::new(&entry.name, &entry.value, telemetry_origin(entry.origin)));
        client.add_configuration(entries).map_err(|e| ProductError::Operation {
            product: "telemetry",
            operation: "configuration_changed",
            reason: e.to_string(),
        })
    }

    /// Off with `DD_INSTRUMENTATION_TELEMETRY_ENABLED=false`, and when traces do not go to a
    /// Datadog agent.
    fn enabled(&self) -> bool {
        self.inputs.enabled.value && self.inputs.agent.is_some()
    }

    fn config(&self) -> Option<ProductConfig> {
        let TelemetryInputs { enabled, heartbeat_interval_seconds: heartbeat, .. } = &self.inputs;
        Some(
            ProductConfig::new()
                .with("DD_INSTRUMENTATION_TELEMETRY_ENABLED", enabled.value.to_string(), enabled.origin)
                .with("DD_TELEMETRY_HEARTBEAT_INTERVAL", heartbeat.value.to_string(), heartbeat.origin),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::products::ProductsSummary;

    #[test]
    fn configuration_lists_the_daemon_then_every_product_with_origins() {
        let summary = SharedSummary::default();
        let product = TelemetryProduct::new(TelemetryInputs {
            agent: None,
            enabled: Setting { value: true, origin: Origin::Default },
            heartbeat_interval_seconds: Setting { value: 60.0, origin: Origin::Default },
            daemon_config: ProductConfig::new().with("DD_SERVICE", "checkout", Origin::TargetEnvironment),
            summary: summary.clone(),
            per_process: None,
        });
        summary
            .set(ProductsSummary {
                configurations: vec![
                    ("tracing", ProductConfig::new().with("DD_TRACE_SAMPLE_RATE", "0.5", Origin::RemoteConfig)),
                    ("telemetry", product.config().unwrap()),
                ],
                ..Default::default()
            })
            .unwrap();
        let entries: Vec<(String, String, ConfigurationOrigin)> =
            product.configuration().into_iter().map(|e| (e.name, e.value.unwrap_or_default(), e.origin)).collect();
        assert_eq!(entries[0], ("DD_SERVICE".into(), "checkout".into(), ConfigurationOrigin::EnvVar));
        assert_eq!(entries[1], ("DD_TRACE_SAMPLE_RATE".into(), "0.5".into(), ConfigurationOrigin::RemoteConfig));
        assert_eq!(entries[2].0, "DD_INSTRUMENTATION_TELEMETRY_ENABLED");
        // Not enabled without an agent.
        assert!(!product.enabled());
    }
}
