//! What the tracing product applies to every trace, shared between the product (which changes
//! it on remote configuration) and its aggregator (which reads it per ended context).

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc, Mutex,
};

use crate::config::{Origin, Setting};

/// The tracing settings in effect, each with where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingSettings {
    /// `DD_TRACE_ENABLED`: false stops producing spans.
    pub enabled: Setting<bool>,
    /// `DD_TRACE_SAMPLE_RATE`: `None` keeps every trace.
    pub sample_rate: Setting<Option<f64>>,
    /// `DD_TAGS`: tags on every span.
    pub tags: Setting<Vec<(String, String)>>,
}

impl Default for TracingSettings {
    fn default() -> Self {
        Self {
            enabled: Setting { value: true, origin: Origin::Default },
            sample_rate: Setting { value: None, origin: Origin::Default },
            tags: Setting { value: Vec::new(), origin: Origin::Default },
        }
    }
}

/// The settings the aggregator reads, and a version that changes with them so it refreshes
/// what it derives (span tags) only when something changed.
#[derive(Debug, Clone, Default)]
pub struct SharedPolicy {
    inner: Arc<Mutex<(u64, TracingSettings)>>,
}

impl SharedPolicy {
    pub fn new(settings: TracingSettings) -> Self {
        Self { inner: Arc::new(Mutex::new((0, settings))) }
    }

    /// The settings in effect now.
    pub fn get(&self) -> TracingSettings {
        self.lock().1.clone()
    }

    /// Replaces the settings; the aggregator picks them up at the next ended context.
    pub fn set(&self, settings: TracingSettings) {
        let mut guard = self.lock();
        guard.0 += 1;
        guard.1 = settings;
    }

    /// Calls `read` with the version and the settings, under the lock.
    pub(super) fn read<T>(&self, read: impl FnOnce(u64, &TracingSettings) -> T) -> T {
        let guard = self.lock();
        read(guard.0, &guard.1)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, TracingSettings)> {
        // A panic elsewhere while holding it left plain data behind: still usable.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Traces the product did not send, by reason.
#[derive(Debug, Default)]
pub struct DropCounters {
    /// Traces dropped by the sample rate.
    pub sampled_out: AtomicU64,
    /// Spans ended while tracing was disabled (remotely).
    pub while_disabled: AtomicU64,
}

impl DropCounters {
    pub fn sampled_out(&self) -> u64 {
        self.sampled_out.load(Ordering::Relaxed)
    }
    pub fn while_disabled(&self) -> u64 {
        self.while_disabled.load(Ordering::Relaxed)
    }
}
