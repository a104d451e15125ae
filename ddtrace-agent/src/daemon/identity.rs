//! Each traced process's identity (see `core::Identities`): what `--pid` gives its tree, and
//! what a fork inherits.

use crate::{
    config::Config,
    core::{Identities, ProcessIdentity},
    intake::identity::new_runtime_id,
    target::Container,
};

/// `--pid`'s processes are the service the flags and the root's environment say (one `Config`);
/// each has its own container and runtime id. Tags stay with the tracing policy (`DD_TAGS`, or
/// remote configuration's), which applies to every span.
pub fn tree_identity(config: &Config, pid: u32, runtime_id: Option<&str>) -> ProcessIdentity {
    let container = Container::of(pid);
    ProcessIdentity {
        service: config.service.value.clone(),
        env: config.env.value.clone(),
        version: config.version.value.clone(),
        tags: Vec::new(),
        runtime_id: runtime_id.map_or_else(new_runtime_id, str::to_owned),
        entity_id: container.entity_id(),
        container_id: container.id,
    }
}

/// A traced process forked: the child is the same service in the same container, with a
/// runtime id of its own (as an in-process tracer's `restart` in a forked child gives it).
pub fn inherit(identities: &Identities, parent: u32, child: u32) {
    if let Some(identity) = identities.get(parent) {
        identities.set(child, ProcessIdentity { runtime_id: new_runtime_id(), ..(*identity).clone() });
    }
}
