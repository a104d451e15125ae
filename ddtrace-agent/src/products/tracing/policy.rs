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

/// The settings the aggregator reads, with a version that changes with them (so it refreshes
/// what it derives, span tags, only when something changed).
///
/// A change applies to spans that end after it arrived: events reach the daemon up to a drain
/// interval late, so the settings before the last change are kept with the time of the change,
/// and a span that ended earlier is judged by them (work done while tracing was off stays
/// untraced even when "on again" arrives before its events were read).
#[derive(Debug, Clone, Default)]
pub struct SharedPolicy {
    inner: Arc<Mutex<Versions>>,
}

#[derive(Debug, Default)]
struct Versions {
    version: u64,
    current: TracingSettings,
    /// The settings before the last change, and the unix time (ns) of that change.
    previous: Option<(TracingSettings, i64)>,
}

impl SharedPolicy {
    pub fn new(settings: TracingSettings) -> Self {
        Self { inner: Arc::new(Mutex::new(Versions { version: 0, current: settings, previous: None })) }
    }

    /// The settings in effect now.
    pub fn get(&self) -> TracingSettings {
        self.lock().current.clone()
    }

    /// Replaces the settings for spans that end from now on.
    pub fn set(&self, settings: TracingSettings) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(i64::MAX);
        self.set_at(settings, now);
    }

    /// Replaces the settings for spans that end at or after `since_unix_ns`.
    pub fn set_at(&self, settings: TracingSettings, since_unix_ns: i64) {
        let mut guard = self.lock();
        let previous = std::mem::replace(&mut guard.current, settings);
        guard.previous = Some((previous, since_unix_ns));
        guard.version += 2;
    }

    /// Calls `read` with a version (a different one for each distinct settings) and the
    /// settings that apply to a span that ended at `end_unix_ns`, under the lock.
    pub(super) fn read<T>(&self, end_unix_ns: i64, read: impl FnOnce(u64, &TracingSettings) -> T) -> T {
        let guard = self.lock();
        match &guard.previous {
            Some((previous, since)) if end_unix_ns < *since => read(guard.version - 1, previous),
            _ => read(guard.version, &guard.current),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Versions> {
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
    /// Spans of processes with no identity where every traced process must have one (node mode:
    /// a process tracked at its exec that the daemon then refused).
    pub unidentified: AtomicU64,
}

impl DropCounters {
    pub fn sampled_out(&self) -> u64 {
        self.sampled_out.load(Ordering::Relaxed)
    }
    pub fn while_disabled(&self) -> u64 {
        self.while_disabled.load(Ordering::Relaxed)
    }
    pub fn unidentified(&self) -> u64 {
        self.unidentified.load(Ordering::Relaxed)
    }
}
