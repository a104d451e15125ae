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
///
/// Settings can also be set for one service and env (node mode's remote configuration, one
/// per service): the processes of that service follow them, the others the node's.
#[derive(Debug, Clone, Default)]
pub struct SharedPolicy {
    inner: Arc<Mutex<Policies>>,
}

#[derive(Debug, Default)]
struct Policies {
    /// The last version given out: every settings value, of any scope, has its own.
    last_version: u64,
    node: Versions,
    /// service -> (env, its settings); few envs per service, so a list.
    by_service: std::collections::HashMap<String, Vec<(Option<String>, Versions)>>,
}

#[derive(Debug, Default)]
struct Versions {
    version: u64,
    current: TracingSettings,
    /// The settings before the last change, and the unix time (ns) of that change.
    previous: Option<(TracingSettings, i64)>,
}

impl Versions {
    fn replace(&mut self, settings: TracingSettings, since_unix_ns: i64, version: u64) {
        let previous = std::mem::replace(&mut self.current, settings);
        self.previous = Some((previous, since_unix_ns));
        self.version = version;
    }

    fn read<T>(&self, end_unix_ns: i64, read: impl FnOnce(u64, &TracingSettings) -> T) -> T {
        match &self.previous {
            Some((previous, since)) if end_unix_ns < *since => read(self.version - 1, previous),
            _ => read(self.version, &self.current),
        }
    }
}

impl Policies {
    /// Two versions per change: the new settings', and one below for the previous ones.
    fn next_version(&mut self) -> u64 {
        self.last_version += 2;
        self.last_version
    }

    fn of_service(&self, service: &str, env: Option<&str>) -> Option<&Versions> {
        let envs = self.by_service.get(service)?;
        envs.iter().find(|(e, _)| e.as_deref() == env).map(|(_, versions)| versions)
    }
}

fn unix_now_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(i64::MAX)
}

impl SharedPolicy {
    pub fn new(settings: TracingSettings) -> Self {
        let node = Versions { version: 0, current: settings, previous: None };
        Self { inner: Arc::new(Mutex::new(Policies { node, ..Default::default() })) }
    }

    /// The settings in effect now for processes without settings of their own.
    pub fn get(&self) -> TracingSettings {
        self.lock().node.current.clone()
    }

    /// The settings in effect now for the processes of `service` and `env`.
    pub fn get_for(&self, service: &str, env: Option<&str>) -> TracingSettings {
        let policies = self.lock();
        policies.of_service(service, env).unwrap_or(&policies.node).current.clone()
    }

    /// Replaces the settings for spans that end from now on.
    pub fn set(&self, settings: TracingSettings) {
        self.set_at(settings, unix_now_ns());
    }

    /// Replaces the settings for spans that end at or after `since_unix_ns`.
    pub fn set_at(&self, settings: TracingSettings, since_unix_ns: i64) {
        let mut policies = self.lock();
        let version = policies.next_version();
        policies.node.replace(settings, since_unix_ns, version);
    }

    /// Replaces the settings of `service` and `env`'s processes for spans that end from now on
    /// (before, they followed the node's).
    pub fn set_for(&self, service: &str, env: Option<&str>, settings: TracingSettings) {
        self.set_for_at(service, env, settings, unix_now_ns());
    }

    pub fn set_for_at(&self, service: &str, env: Option<&str>, settings: TracingSettings, since_unix_ns: i64) {
        let mut policies = self.lock();
        let version = policies.next_version();
        let node_settings = policies.node.current.clone();
        let envs = policies.by_service.entry(service.to_string()).or_default();
        let index = match envs.iter().position(|(e, _)| e.as_deref() == env) {
            Some(index) => index,
            None => {
                envs.push((env.map(str::to_string), Versions { current: node_settings, ..Default::default() }));
                envs.len() - 1
            }
        };
        envs[index].1.replace(settings, since_unix_ns, version);
    }

    /// Calls `read` with a version (a different one for each distinct settings) and the
    /// settings that apply to a span of `service` (and env) that ended at `end_unix_ns`, under
    /// the lock. `None`: the node's settings.
    pub(super) fn read<T>(
        &self,
        service: Option<(&str, Option<&str>)>,
        end_unix_ns: i64,
        read: impl FnOnce(u64, &TracingSettings) -> T,
    ) -> T {
        let policies = self.lock();
        let versions = match service {
            Some((service, env)) if !policies.by_service.is_empty() => {
                policies.of_service(service, env).unwrap_or(&policies.node)
            }
            _ => &policies.node,
        };
        versions.read(end_unix_ns, read)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Policies> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sampled(rate: f64) -> TracingSettings {
        TracingSettings {
            sample_rate: Setting { value: Some(rate), origin: Origin::RemoteConfig },
            ..Default::default()
        }
    }

    fn rate_of(policy: &SharedPolicy, service: Option<(&str, Option<&str>)>, end: i64) -> (u64, Option<f64>) {
        policy.read(service, end, |version, settings| (version, settings.sample_rate.value))
    }

    #[test]
    fn a_service_s_settings_apply_to_it_alone_from_their_time_on() {
        let policy = SharedPolicy::default();
        policy.set_for_at("web", Some("prod"), sampled(0.1), 100);
        let (web_before, rate) = rate_of(&policy, Some(("web", Some("prod"))), 99);
        assert_eq!(rate, None, "before the change: the node's");
        let (web_after, rate) = rate_of(&policy, Some(("web", Some("prod"))), 100);
        assert_eq!(rate, Some(0.1));
        assert_eq!(rate_of(&policy, Some(("web", Some("staging"))), 100).1, None, "another env");
        assert_eq!(rate_of(&policy, Some(("worker", Some("prod"))), 100).1, None, "another service");
        let (node, rate) = rate_of(&policy, None, 100);
        assert_eq!(rate, None);
        // Versions tell every distinct settings apart (the aggregator caches tags by version).
        assert!(web_before != web_after && web_after != node, "{web_before} {web_after} {node}");
        assert_eq!(policy.get_for("web", Some("prod")).sample_rate.value, Some(0.1));
        assert_eq!(policy.get_for("worker", None), policy.get());
    }
}
