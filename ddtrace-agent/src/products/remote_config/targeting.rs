//! Which `APM_TRACING` configurations apply to this process, and what they add up to.
//!
//! A configuration targets a service and an environment (`service_target`, `*` for any); the
//! ones that do not match this process are ignored. Of those that match, the more specific wins
//! key by key (service and env, then service, then env, then the organisation-wide one), as
//! Datadog's tracers merge them. The result is one document, `{"lib_config": {...}}`: a key
//! that no configuration sets is absent, which tells products to use their local setting.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::intake::remote_config::RemoteConfigChange;

/// The configurations the agent currently serves this process, by path.
#[derive(Debug, Clone)]
pub struct ActiveConfigs {
    service: String,
    env: Option<String>,
    by_path: BTreeMap<String, Value>,
}

impl ActiveConfigs {
    pub fn new(service: &str, env: Option<&str>) -> Self {
        Self { service: service.to_string(), env: env.map(str::to_string), by_path: BTreeMap::new() }
    }

    pub fn apply(&mut self, change: &RemoteConfigChange) {
        match change {
            RemoteConfigChange::Added(file) | RemoteConfigChange::Updated(file) => {
                self.by_path.insert(file.path.clone(), file.content.clone());
            }
            RemoteConfigChange::Removed(file) => {
                self.by_path.remove(&file.path);
            }
        }
    }

    /// How specific `document`'s target is for this process; `None` if it targets another.
    fn specificity(&self, document: &Value) -> Option<u8> {
        let target = document.get("service_target");
        let field = |name: &str| {
            target.and_then(|t| t.get(name)).and_then(Value::as_str).filter(|v| !v.is_empty() && *v != "*")
        };
        let service = match field("service") {
            Some(service) if service != self.service => return None,
            Some(_) => 2,
            None => 0,
        };
        let env = match field("env") {
            Some(env) if Some(env) != self.env.as_deref() => return None,
            Some(_) => 1,
            None => 0,
        };
        Some(service + env)
    }

    /// The `lib_config` keys in force: the most specific matching configuration's value for
    /// each key (nulls set nothing).
    pub fn effective(&self) -> Value {
        let mut matching: Vec<(u8, &Value)> =
            self.by_path.values().filter_map(|d| self.specificity(d).map(|s| (s, d))).collect();
        matching.sort_by_key(|(specificity, _)| *specificity);
        let mut lib_config = Map::new();
        for (_, document) in matching {
            if let Some(Value::Object(keys)) = document.get("lib_config") {
                for (key, value) in keys {
                    if !value.is_null() {
                        lib_config.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        json!({ "lib_config": lib_config })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intake::remote_config::RemoteConfigFile;

    fn file(path: &str, content: Value) -> RemoteConfigFile {
        RemoteConfigFile { path: path.into(), config_id: path.into(), version: 1, content }
    }

    #[test]
    fn specific_targets_win_key_by_key_and_removal_restores() {
        let mut active = ActiveConfigs::new("checkout", Some("prod"));
        assert_eq!(active.effective(), json!({"lib_config": {}}));
        active.apply(&RemoteConfigChange::Added(file(
            "org",
            json!({"lib_config": {"tracing_sampling_rate": 0.1, "tracing_enabled": true}}),
        )));
        active.apply(&RemoteConfigChange::Added(file(
            "service",
            json!({"service_target": {"service": "checkout", "env": "*"}, "lib_config": {"tracing_enabled": false, "tracing_sampling_rate": null}}),
        )));
        active.apply(&RemoteConfigChange::Added(file(
            "other",
            json!({"service_target": {"service": "billing", "env": "prod"}, "lib_config": {"tracing_tags": ["a:b"]}}),
        )));
        assert_eq!(active.effective(), json!({"lib_config": {"tracing_sampling_rate": 0.1, "tracing_enabled": false}}));
        active.apply(&RemoteConfigChange::Removed(file("service", Value::Null)));
        assert_eq!(active.effective(), json!({"lib_config": {"tracing_sampling_rate": 0.1, "tracing_enabled": true}}));
        active.apply(&RemoteConfigChange::Removed(file("org", Value::Null)));
        assert_eq!(active.effective(), json!({"lib_config": {}}));
    }
}
