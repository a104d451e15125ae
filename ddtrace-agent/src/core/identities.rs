//! Who each traced process is, for every product that speaks for it: its service, env, version
//! and tags (unified service tagging), its runtime id, and the container it runs in.
//!
//! In node mode every selected process has its own; a forked child gets its parent's with a
//! runtime id of its own (the product protocol's `restart` in the child). The daemon fills the
//! map when it selects a process and empties it after the process's last context has ended;
//! products read it when they build what they send. A process with no entry is described by the
//! products' own defaults (`--pid`'s single target).

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, RwLock,
    },
};

/// One process's identity.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ProcessIdentity {
    pub service: String,
    pub env: Option<String>,
    pub version: Option<String>,
    /// The process's own `DD_TAGS`, over the tracing policy's (which every span carries).
    pub tags: Vec<(String, String)>,
    /// The process's runtime id (a UUID), as `runtime-id` on its spans.
    pub runtime_id: String,
    /// The container id, for the `Datadog-Container-ID` header of what is sent for it.
    pub container_id: Option<String>,
    /// `ci-<id>` or `in-<cgroup inode>`, for the `Datadog-Entity-ID` header.
    pub entity_id: Option<String>,
}

/// The identities of the traced processes, shared between the daemon (which writes) and the
/// products (which read, once per span or payload).
#[derive(Debug, Clone, Default)]
pub struct Identities {
    by_pid: Arc<RwLock<HashMap<u32, Arc<ProcessIdentity>>>>,
    /// Bumped at every change: a reader that cached an answer knows it still holds with one
    /// atomic load instead of a lock and a lookup (the span path asks once per span).
    generation: Arc<AtomicU64>,
    required: bool,
}

impl Identities {
    /// Identities every traced process has (node mode): what has none was not selected, and no
    /// product speaks for it.
    pub fn required() -> Self {
        Self { required: true, ..Self::default() }
    }

    pub fn are_required(&self) -> bool {
        self.required
    }

    pub fn set(&self, pid: u32, identity: ProcessIdentity) {
        self.write().insert(pid, Arc::new(identity));
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Changes so far (see `generation`).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn get(&self, pid: u32) -> Option<Arc<ProcessIdentity>> {
        self.by_pid.read().unwrap_or_else(|e| e.into_inner()).get(&pid).cloned()
    }

    pub fn remove(&self, pid: u32) {
        if self.write().remove(&pid).is_some() {
            self.generation.fetch_add(1, Ordering::Release);
        }
    }

    /// Every process's identity, by pid, at this moment.
    pub fn snapshot(&self) -> HashMap<u32, Arc<ProcessIdentity>> {
        self.by_pid.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// One identity per distinct service and env among the processes, the one of the lowest
    /// pid (the oldest, usually): whom a per-service client (remote configuration) speaks as.
    pub fn services(&self) -> Vec<Arc<ProcessIdentity>> {
        let by_pid = self.by_pid.read().unwrap_or_else(|e| e.into_inner());
        type ServiceKey<'a> = (&'a str, Option<&'a str>);
        let mut first: HashMap<ServiceKey<'_>, (u32, &Arc<ProcessIdentity>)> = HashMap::new();
        for (pid, identity) in by_pid.iter() {
            let key = (identity.service.as_str(), identity.env.as_deref());
            let entry = first.entry(key).or_insert((*pid, identity));
            if *pid < entry.0 {
                *entry = (*pid, identity);
            }
        }
        let mut services: Vec<Arc<ProcessIdentity>> = first.into_values().map(|(_, id)| id.clone()).collect();
        services.sort_by(|a, b| (&a.service, &a.env).cmp(&(&b.service, &b.env)));
        services
    }

    pub fn len(&self) -> usize {
        self.by_pid.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<u32, Arc<ProcessIdentity>>> {
        self.by_pid.write().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_between_writer_and_readers() {
        let identities = Identities::default();
        let reader = identities.clone();
        identities.set(7, ProcessIdentity { service: "checkout".into(), ..Default::default() });
        assert_eq!(reader.get(7).unwrap().service, "checkout");
        identities.remove(7);
        assert!(reader.get(7).is_none() && reader.is_empty());
    }

    #[test]
    fn services_are_distinct_by_service_and_env_and_named_by_their_oldest_process() {
        let identities = Identities::default();
        let process = |service: &str, env: Option<&str>, runtime_id: &str| ProcessIdentity {
            service: service.into(),
            env: env.map(Into::into),
            runtime_id: runtime_id.into(),
            ..Default::default()
        };
        identities.set(30, process("web", Some("prod"), "newer"));
        identities.set(20, process("web", Some("prod"), "older"));
        identities.set(25, process("web", Some("staging"), "s"));
        identities.set(40, process("worker", None, "w"));
        let services: Vec<(String, Option<String>, String)> = identities
            .services()
            .iter()
            .map(|id| (id.service.clone(), id.env.clone(), id.runtime_id.clone()))
            .collect();
        assert_eq!(
            services,
            vec![
                ("web".into(), Some("prod".into()), "older".into()),
                ("web".into(), Some("staging".into()), "s".into()),
                ("worker".into(), None, "w".into()),
            ]
        );
    }
}
