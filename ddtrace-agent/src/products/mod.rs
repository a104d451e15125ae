//! Products, as in dd-trace-py's product protocol: units that turn what core reports into data
//! for a Datadog product. A product knows nothing of integrations: it consumes core events.

mod manager;
pub mod tracing;

pub use manager::ProductManager;

use crate::core::EventHub;

#[derive(Debug, thiserror::Error)]
pub enum ProductError {
    #[error("product {product} failed to start: {reason}")]
    Start { product: &'static str, reason: String },
}

/// The product protocol (see the seed document): the daemon calls these at the matching points
/// of the target's life.
pub trait Product: Send {
    fn name(&self) -> &'static str;
    /// Other products this one needs started first.
    fn requires(&self) -> &'static [&'static str] {
        &[]
    }
    /// Starts the product; it subscribes to the core events it consumes.
    fn start(&mut self, hub: &mut EventHub) -> Result<(), ProductError>;
    /// After the probes are loaded and attached.
    fn post_preload(&mut self) {}
    /// After the traced process forked.
    fn restart(&mut self, _join: bool) {}
    /// The product is disabled.
    fn stop(&mut self, _join: bool) {}
    /// The traced process exited or the daemon is stopping: flush everything.
    fn at_exit(&mut self, join: bool);
}
