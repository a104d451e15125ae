//! `APM_TRACING`'s `lib_config` keys the tracing product honours, over its local settings.

use serde_json::Value;

use super::policy::TracingSettings;
use crate::config::{parse_tags, Origin, Setting};

fn remote<T>(value: T) -> Setting<T> {
    Setting { value, origin: Origin::RemoteConfig }
}

/// The settings in effect under `document` (`{"lib_config": {...}}`): each key present and not
/// null overrides the local setting; the others keep it. An invalid value is an error and
/// nothing is applied.
pub fn apply(local: &TracingSettings, document: &Value) -> Result<TracingSettings, String> {
    let mut settings = local.clone();
    let Some(lib_config) = document.get("lib_config").filter(|c| !c.is_null()) else {
        return Ok(settings);
    };
    match lib_config.get("tracing_enabled") {
        None | Some(Value::Null) => {}
        Some(Value::Bool(enabled)) => settings.enabled = remote(*enabled),
        Some(other) => return Err(format!("tracing_enabled must be a boolean, not {other}")),
    }
    match lib_config.get("tracing_sampling_rate") {
        None | Some(Value::Null) => {}
        Some(value) => match value.as_f64().filter(|rate| (0.0..=1.0).contains(rate)) {
            Some(rate) => settings.sample_rate = remote(Some(rate)),
            None => return Err(format!("tracing_sampling_rate must be a number in [0, 1], not {value}")),
        },
    }
    match lib_config.get("tracing_tags") {
        None | Some(Value::Null) => {}
        Some(Value::Array(tags)) => {
            let mut parsed = Vec::with_capacity(tags.len());
            for tag in tags {
                let Some(tag) = tag.as_str() else {
                    return Err(format!("tracing_tags must be a list of \"key:value\" strings, not {tag}"));
                };
                parsed.extend(parse_tags(tag));
            }
            settings.tags = remote(parsed);
        }
        Some(other) => return Err(format!("tracing_tags must be a list, not {other}")),
    }
    Ok(settings)
}

/// The service and env a document is for (`service_target`, node mode), if it says.
pub fn service_target(document: &Value) -> Option<(&str, Option<&str>)> {
    let target = document.get("service_target")?;
    Some((target.get("service")?.as_str()?, target.get("env").and_then(Value::as_str)))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn local() -> TracingSettings {
        TracingSettings {
            sample_rate: Setting { value: Some(0.5), origin: Origin::TargetEnvironment },
            tags: Setting { value: vec![("team".into(), "db".into())], origin: Origin::DaemonEnvironment },
            ..Default::default()
        }
    }

    #[test]
    fn remote_values_override_and_removal_restores_local() {
        let document = json!({"lib_config": {
            "tracing_enabled": false,
            "tracing_sampling_rate": 0.1,
            "tracing_tags": ["team:payments", "tier:1"],
        }});
        let settings = apply(&local(), &document).unwrap();
        assert_eq!(settings.enabled, Setting { value: false, origin: Origin::RemoteConfig });
        assert_eq!(settings.sample_rate, Setting { value: Some(0.1), origin: Origin::RemoteConfig });
        assert_eq!(settings.tags.value, vec![("team".into(), "payments".into()), ("tier".into(), "1".into())]);
        // Keys left out or null keep the local value.
        let settings = apply(&local(), &json!({"lib_config": {"tracing_sampling_rate": null}})).unwrap();
        assert_eq!(settings, local());
        assert_eq!(apply(&local(), &json!({})).unwrap(), local());
        assert_eq!(
            apply(&local(), &json!({"lib_config": {"tracing_enabled": true}})).unwrap().enabled.origin,
            Origin::RemoteConfig
        );
    }

    #[test]
    fn invalid_values_are_errors() {
        for lib_config in [
            json!({"tracing_enabled": "no"}),
            json!({"tracing_sampling_rate": 2}),
            json!({"tracing_tags": "a:b"}),
            json!({"tracing_tags": [1]}),
        ] {
            assert!(apply(&local(), &json!({"lib_config": lib_config})).is_err(), "{lib_config}");
        }
    }
}
