//! A product's configuration as configuration telemetry reports it (dd-trace-py reports a
//! product's `DDConfig`): each setting with its value and where that value came from.

use crate::config::Origin;

/// One setting: `DD_TRACE_SAMPLE_RATE = 0.5` from the target's environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigEntry {
    /// The setting's name as users set it (`DD_TRACE_ENABLED`).
    pub name: String,
    /// The value in effect, as a string: telemetry reports strings.
    pub value: String,
    pub origin: Origin,
}

/// The settings of one product.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProductConfig {
    pub entries: Vec<ConfigEntry>,
}

impl ProductConfig {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one setting (builder style, so a product's `config()` reads as a list).
    pub fn with(mut self, name: impl Into<String>, value: impl Into<String>, origin: Origin) -> Self {
        self.entries.push(ConfigEntry { name: name.into(), value: value.into(), origin });
        self
    }
}
