//! The tracing product: ended execution contexts become spans, grouped into trace chunks when
//! their local root ends, and flushed to a trace sink every second and at exit.

mod aggregator;
mod policy;
mod remote;
mod sampler;
mod span_builder;
mod writer;

use std::{sync::Arc, time::Duration};

pub use aggregator::TraceAggregator;
pub use policy::{DropCounters, SharedPolicy, TracingSettings};
pub use span_builder::{SpanBuilder, TraceTags};
pub use writer::{TraceWriter, WriterStats};

use super::{Product, ProductConfig, ProductError};
use crate::{
    core::{CoreEvent, EventHub},
    intake::TraceSink,
};

/// Remote-configuration capability bits (the protocol's numbering, as in libdatadog's
/// `RemoteConfigCapabilities`) of what this product applies live.
pub const CAPABILITY_SAMPLE_RATE: u64 = 1 << 12;
pub const CAPABILITY_CUSTOM_TAGS: u64 = 1 << 15;
pub const CAPABILITY_TRACING_ENABLED: u64 = 1 << 19;

/// How often finished traces are sent.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// The longest `at_exit` waits for the last send.
pub const EXIT_FLUSH_DEADLINE: Duration = Duration::from_secs(5);

pub struct TracingProduct {
    tags: TraceTags,
    identities: crate::core::Identities,
    /// The settings from the command line and the environments; what a removed remote
    /// configuration falls back to.
    local: TracingSettings,
    /// The settings in effect (local, overridden by remote configuration).
    policy: SharedPolicy,
    drops: Arc<DropCounters>,
    sink: Option<Box<dyn TraceSink>>,
    writer: Option<TraceWriter>,
}

impl TracingProduct {
    pub fn new(tags: TraceTags, settings: TracingSettings, sink: Box<dyn TraceSink>) -> Self {
        Self {
            tags,
            identities: Default::default(),
            policy: SharedPolicy::new(settings.clone()),
            local: settings,
            drops: Arc::default(),
            sink: Some(sink),
            writer: None,
        }
    }

    /// Spans of processes with an identity of their own are described by it (node mode).
    pub fn with_identities(mut self, identities: crate::core::Identities) -> Self {
        self.identities = identities;
        self
    }

    /// The settings in effect now.
    pub fn settings(&self) -> TracingSettings {
        self.policy.get()
    }

    /// Sends what is buffered (waiting at most `EXIT_FLUSH_DEADLINE` when `join`) and closes the
    /// writer; chunks that still arrive are dropped and counted.
    fn flush_and_close(&mut self, join: bool, when: &'static str) {
        if let Some(writer) = self.writer.take() {
            let stats = writer.shutdown(if join { EXIT_FLUSH_DEADLINE } else { Duration::ZERO });
            tracing::info!(
                sent_chunks = stats.sent_chunks,
                sent_spans = stats.sent_spans,
                failed_chunks = stats.failed_chunks,
                dropped_chunks = stats.dropped_chunks,
                sampled_out_traces = self.drops.sampled_out(),
                spans_while_disabled = self.drops.while_disabled(),
                spans_of_unselected_processes = self.drops.unidentified(),
                "tracing: flushed {when}"
            );
        }
    }
}

impl Product for TracingProduct {
    fn name(&self) -> &'static str {
        "tracing"
    }

    fn start(&mut self, hub: &mut EventHub) -> Result<(), ProductError> {
        let sink =
            self.sink.take().ok_or(ProductError::Start { product: "tracing", reason: "already started".into() })?;
        let writer = TraceWriter::spawn(sink, FLUSH_INTERVAL)
            .map_err(|e| ProductError::Start { product: "tracing", reason: e.to_string() })?;
        let mut aggregator = TraceAggregator::new(
            SpanBuilder::new(self.tags.clone()).with_identities(self.identities.clone()),
            writer.sender(),
            self.policy.clone(),
            self.drops.clone(),
        );
        hub.on("context.ended", move |event| {
            if let CoreEvent::ContextEnded(context) = event {
                aggregator.on_context_ended(context);
            }
        });
        self.writer = Some(writer);
        Ok(())
    }

    /// The daemon does not fork when the target does: the writer and the hub subscription keep
    /// serving the child's spans as they are.
    fn restart(&mut self, _join: bool) -> Result<(), ProductError> {
        Ok(())
    }

    fn stop(&mut self, join: bool) -> Result<(), ProductError> {
        self.flush_and_close(join, "on stop");
        Ok(())
    }

    fn at_exit(&mut self, join: bool) -> Result<(), ProductError> {
        self.flush_and_close(join, "at exit");
        Ok(())
    }

    /// Nothing waits for the probes: spans start flowing as soon as they fire.
    fn post_preload(&mut self) -> Result<(), ProductError> {
        Ok(())
    }

    /// `DD_TRACE_ENABLED=false` leaves the product out (remote configuration can pause a
    /// running product, not start one that is off).
    fn enabled(&self) -> bool {
        self.local.enabled.value
    }

    fn config(&self) -> Option<ProductConfig> {
        let settings = self.policy.get();
        let rate = settings.sample_rate.value.map(|r| r.to_string()).unwrap_or_default();
        let tags: Vec<String> = settings.tags.value.iter().map(|(k, v)| format!("{k}:{v}")).collect();
        Some(
            ProductConfig::new()
                .with("DD_TRACE_ENABLED", settings.enabled.value.to_string(), settings.enabled.origin)
                .with("DD_TRACE_SAMPLE_RATE", rate, settings.sample_rate.origin)
                .with("DD_TAGS", tags.join(","), settings.tags.origin),
        )
    }

    fn capabilities(&self) -> u64 {
        CAPABILITY_TRACING_ENABLED | CAPABILITY_SAMPLE_RATE | CAPABILITY_CUSTOM_TAGS
    }

    /// Applies an `APM_TRACING` document's `lib_config` over the local settings: what it sets
    /// wins (origin `remote_config`), what it leaves out (or a document without `lib_config`,
    /// i.e. the configuration was removed) is the local setting again. A document with a
    /// `service_target` (node mode: one per service) applies to that service's processes only.
    fn apm_tracing_rc(&mut self, config: &serde_json::Value) -> Result<(), ProductError> {
        let settings = remote::apply(&self.local, config).map_err(|reason| ProductError::Operation {
            product: "tracing",
            operation: "apm_tracing_rc",
            reason,
        })?;
        let log_applied = |settings: &TracingSettings, service: &str| {
            tracing::info!(
                service,
                enabled = settings.enabled.value,
                sample_rate = ?settings.sample_rate.value,
                tags = ?settings.tags.value,
                "tracing: remote configuration applied"
            );
        };
        match remote::service_target(config) {
            Some((service, env)) if settings != self.policy.get_for(service, env) => {
                log_applied(&settings, service);
                self.policy.set_for(service, env, settings);
            }
            Some(_) => {}
            None if settings != self.policy.get() => {
                log_applied(&settings, "*");
                self.policy.set(settings);
            }
            None => {}
        }
        Ok(())
    }
}
