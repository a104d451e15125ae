//! Who the daemon speaks for when it talks to the Datadog agent on behalf of a traced process.
//!
//! Remote configuration and telemetry both identify the "tracer" they talk for: one
//! service/env/version and one runtime id. The daemon plays that tracer for each process it
//! instruments, so both clients take the same [`ClientIdentity`], and one identity (one runtime
//! id) should be shared by all clients working for the same process.

use super::agent_exporter::LANGUAGE;

/// The tracer identity sent with remote configuration polls and telemetry payloads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// `DD_SERVICE` of the traced process (never empty: the daemon infers one when unset).
    pub service: String,
    /// `DD_ENV`, if any.
    pub env: Option<String>,
    /// `DD_VERSION` (the application's version), if any.
    pub app_version: Option<String>,
    /// Identifies one run of the traced process; a fork gets a new one.
    pub runtime_id: String,
    /// Sent as the tracer language; defaults to [`LANGUAGE`], as for traces.
    pub language: String,
    /// Sent as the language version; defaults to the kernel release (the "runtime" of an eBPF
    /// tracer), as for traces.
    pub language_version: String,
    /// This daemon's version.
    pub tracer_version: String,
    /// `key:value` tags of the process (`DD_TAGS`), sent with remote configuration polls.
    pub tags: Vec<String>,
}

impl ClientIdentity {
    /// An identity for `service` with a fresh runtime id and the daemon's defaults for the rest.
    pub fn new(service: impl Into<String>) -> Self {
        Self {
            service: service.into(),
            env: None,
            app_version: None,
            runtime_id: new_runtime_id(),
            language: LANGUAGE.to_owned(),
            language_version: kernel_release(),
            tracer_version: env!("CARGO_PKG_VERSION").to_owned(),
            tags: Vec::new(),
        }
    }

    /// Sets `env` (`DD_ENV`).
    pub fn with_env(mut self, env: impl Into<String>) -> Self {
        self.env = Some(env.into());
        self
    }

    /// Sets the application's version (`DD_VERSION`).
    pub fn with_app_version(mut self, version: impl Into<String>) -> Self {
        self.app_version = Some(version.into());
        self
    }

    /// Replaces the generated runtime id (e.g. to share one with the trace exporter).
    pub fn with_runtime_id(mut self, runtime_id: impl Into<String>) -> Self {
        self.runtime_id = runtime_id.into();
        self
    }

    /// Sets the `key:value` tags (`DD_TAGS`).
    pub fn with_tags(mut self, tags: Vec<String>) -> Self {
        self.tags = tags;
        self
    }
}

/// A random UUIDv4 in its usual text form, the format tracers use for runtime ids.
pub fn new_runtime_id() -> String {
    let mut bytes: [u8; 16] = rand::random();
    bytes[6] = (bytes[6] & 0x0f) | 0x40; // version 4
    bytes[8] = (bytes[8] & 0x3f) | 0x80; // RFC 4122 variant
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_ids_are_uuid_v4() {
        let id = new_runtime_id();
        let groups: Vec<&str> = id.split('-').collect();
        assert_eq!(groups.iter().map(|g| g.len()).collect::<Vec<_>>(), [8, 4, 4, 4, 12], "{id}");
        assert!(groups[2].starts_with('4'), "{id}");
        assert!(matches!(&groups[3][..1], "8" | "9" | "a" | "b"), "{id}");
        assert_ne!(id, new_runtime_id());
    }
}
