//! Products, as in dd-trace-py's product protocol: units that turn what core reports into data
//! for a Datadog product. A product knows nothing of integrations: it consumes core events.
//!
//! Adding a product is adding its module here and one line in [`registry`]; the
//! [`ProductManager`] does the rest (order, start, fork, stop, exit, remote configuration).

mod manager;
mod product_config;
pub mod profiling;
pub mod remote_config;
pub mod telemetry;
pub mod tracing;

use std::sync::{Arc, OnceLock};

pub use manager::{OrderError, ProductManager, ProductStatus, ProductsSummary};
pub use product_config::{ConfigEntry, ProductConfig};

use self::{
    profiling::{ProfilingInputs, ProfilingProduct},
    remote_config::{RemoteConfigInputs, RemoteConfigProduct},
    telemetry::{TelemetryInputs, TelemetryProduct},
    tracing::{TraceTags, TracingProduct, TracingSettings},
};
use crate::{core::EventHub, intake::TraceSink};

/// The manager's [`ProductsSummary`], set by the daemon once every product started (before
/// `post_preload`), for the products that report on the others.
pub type SharedSummary = Arc<OnceLock<ProductsSummary>>;

/// What the daemon hands the products it builds: one field per thing a product needs from it.
pub struct ProductInputs {
    pub trace_tags: TraceTags,
    /// Each traced process's own identity, where it has one (node mode).
    pub identities: crate::core::Identities,
    pub tracing_settings: TracingSettings,
    pub trace_sink: Box<dyn TraceSink>,
    pub profiling: ProfilingInputs,
    pub remote_config: RemoteConfigInputs,
    pub telemetry: TelemetryInputs,
}

/// Every product the daemon runs, in registration order (the order that breaks ties when
/// requirements allow several). This is the one place products are registered.
pub fn registry(inputs: ProductInputs) -> Vec<Box<dyn Product>> {
    vec![
        Box::new(
            TracingProduct::new(inputs.trace_tags, inputs.tracing_settings, inputs.trace_sink)
                .with_identities(inputs.identities),
        ),
        Box::new(ProfilingProduct::new(inputs.profiling)),
        Box::new(RemoteConfigProduct::new(inputs.remote_config)),
        Box::new(TelemetryProduct::new(inputs.telemetry)),
    ]
}

/// Why a product operation failed. The manager logs it with the product's name and goes on with
/// the other products.
#[derive(Debug, thiserror::Error)]
pub enum ProductError {
    /// The product could not start; the products that require it are not started either.
    #[error("product {product} failed to start: {reason}")]
    Start { product: &'static str, reason: String },
    /// Another operation of the protocol (`restart`, `stop`, `apm_tracing_rc`, ...) failed.
    #[error("product {product} failed in {operation}: {reason}")]
    Operation { product: &'static str, operation: &'static str, reason: String },
    /// The product panicked; the manager caught the panic so the daemon and the other
    /// products go on.
    #[error("product {product} panicked in {operation}: {message}")]
    Panicked { product: &'static str, operation: &'static str, message: String },
}

/// The product protocol (see the seed document): the daemon calls these at the matching points
/// of the target's life. `join` asks the product to wait (bounded) for its background work.
///
/// The five operations are mandatory, as in the seed: every product has to decide what a fork,
/// a stop and an exit mean for it. The other methods are the protocol's optional attributes.
pub trait Product: Send {
    /// The name other products `require` and logs show; a constant.
    fn name(&self) -> &'static str;

    /// Starts the product; it subscribes to the core events it consumes.
    fn start(&mut self, hub: &mut EventHub) -> Result<(), ProductError>;
    /// A traced process forked: the child is traced too.
    fn restart(&mut self, join: bool) -> Result<(), ProductError>;
    /// The product is disabled (by configuration or remotely) while the daemon goes on.
    fn stop(&mut self, join: bool) -> Result<(), ProductError>;
    /// The traced process exited or the daemon is stopping: flush everything.
    fn at_exit(&mut self, join: bool) -> Result<(), ProductError>;
    /// The probes are loaded and attached (dd-trace-py: the preload stage is over).
    fn post_preload(&mut self) -> Result<(), ProductError>;

    /// Other products (by name) this one needs running first.
    fn requires(&self) -> &[&'static str] {
        &[]
    }
    /// `false` skips the product, like dd-trace-py's `DD_<PRODUCT>_ENABLED=false`; the products
    /// that require it are not started either.
    fn enabled(&self) -> bool {
        true
    }
    /// The product's settings, for configuration telemetry; `None` when it has none.
    fn config(&self) -> Option<ProductConfig> {
        None
    }
    /// Remote-configuration APM capabilities this product handles, as a bit set.
    fn capabilities(&self) -> u64 {
        0
    }
    /// An `APM_TRACING` remote configuration arrived (e.g. remote enablement, sampling rate).
    fn apm_tracing_rc(&mut self, _config: &serde_json::Value) -> Result<(), ProductError> {
        Ok(())
    }
    /// Settings of running products changed (by remote configuration): each entry as it is
    /// now, e.g. for configuration telemetry. Called after every product handled the change.
    fn configuration_changed(&mut self, _changes: &[ConfigEntry]) -> Result<(), ProductError> {
        Ok(())
    }
}
