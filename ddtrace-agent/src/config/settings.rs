use std::collections::HashMap;

use super::{agent_url::resolve_agent_url, service_name::infer_service};

/// Where a setting's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Default,
    /// Inferred from the target (its script, module or executable).
    Inferred,
    DaemonEnvironment,
    TargetEnvironment,
    CommandLine,
}

impl Origin {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Default => "default",
            Self::Inferred => "inferred",
            Self::DaemonEnvironment => "env_var",
            Self::TargetEnvironment => "target_env_var",
            Self::CommandLine => "code",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting<T> {
    pub value: T,
    pub origin: Origin,
}

/// Where finished traces go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExporterKind {
    /// The Datadog agent's trace endpoint.
    Datadog,
    /// An indented span tree on standard output: needs no Datadog account.
    Console,
}

/// The raw inputs settings are resolved from.
#[derive(Debug, Default, Clone)]
pub struct SettingsInput {
    pub cli_service: Option<String>,
    pub cli_env: Option<String>,
    pub cli_version: Option<String>,
    pub cli_agent_url: Option<String>,
    pub daemon_env: HashMap<String, String>,
    pub target_env: HashMap<String, String>,
    /// The target's command line, to infer a service name.
    pub target_cmdline: Vec<String>,
    pub target_comm: Option<String>,
}

/// The resolved configuration of one daemon run.
#[derive(Debug, Clone)]
pub struct Config {
    pub service: Setting<String>,
    pub env: Setting<Option<String>>,
    pub version: Setting<Option<String>>,
    pub tags: Setting<Vec<(String, String)>>,
    pub agent_url: Setting<String>,
}

fn non_empty(value: Option<&String>) -> Option<String> {
    value.map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
}

impl SettingsInput {
    /// Resolves a string setting: command line, then the target's `key`, then the daemon's.
    fn string(&self, cli: &Option<String>, key: &str) -> Option<Setting<String>> {
        if let Some(value) = non_empty(cli.as_ref()) {
            return Some(Setting { value, origin: Origin::CommandLine });
        }
        if let Some(value) = non_empty(self.target_env.get(key)) {
            return Some(Setting { value, origin: Origin::TargetEnvironment });
        }
        non_empty(self.daemon_env.get(key)).map(|value| Setting { value, origin: Origin::DaemonEnvironment })
    }

    fn optional(&self, cli: &Option<String>, key: &str) -> Setting<Option<String>> {
        match self.string(cli, key) {
            Some(Setting { value, origin }) => Setting { value: Some(value), origin },
            None => Setting { value: None, origin: Origin::Default },
        }
    }

    pub fn resolve(&self) -> Config {
        let service = self.string(&self.cli_service, "DD_SERVICE").unwrap_or_else(|| Setting {
            value: infer_service(&self.target_cmdline, self.target_comm.as_deref()),
            origin: Origin::Inferred,
        });
        let tags = match self.string(&None, "DD_TAGS") {
            Some(Setting { value, origin }) => Setting { value: parse_tags(&value), origin },
            None => Setting { value: Vec::new(), origin: Origin::Default },
        };
        let agent_url = match non_empty(self.cli_agent_url.as_ref()) {
            Some(value) => Setting { value, origin: Origin::CommandLine },
            None => resolve_agent_url(&self.daemon_env),
        };
        Config {
            service,
            env: self.optional(&self.cli_env, "DD_ENV"),
            version: self.optional(&self.cli_version, "DD_VERSION"),
            tags,
            agent_url,
        }
    }
}

/// `DD_TAGS`: `key:value` pairs separated by commas or spaces (as Datadog tracers accept them).
pub fn parse_tags(text: &str) -> Vec<(String, String)> {
    text.split([',', ' '])
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|tag| match tag.split_once(':') {
            Some((key, value)) => (key.trim().to_string(), value.trim().to_string()),
            None => (tag.to_string(), String::new()),
        })
        .filter(|(key, _)| !key.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn command_line_beats_target_env_beats_daemon_env() {
        let mut input = SettingsInput {
            daemon_env: env(&[("DD_SERVICE", "daemon"), ("DD_ENV", "staging")]),
            target_env: env(&[("DD_SERVICE", "checkout")]),
            ..Default::default()
        };
        let config = input.resolve();
        assert_eq!(config.service, Setting { value: "checkout".into(), origin: Origin::TargetEnvironment });
        assert_eq!(config.env.value.as_deref(), Some("staging"));
        assert_eq!(config.env.origin, Origin::DaemonEnvironment);
        input.cli_service = Some("billing".into());
        assert_eq!(input.resolve().service.origin, Origin::CommandLine);
    }

    #[test]
    fn service_is_inferred_when_set_nowhere() {
        let input =
            SettingsInput { target_cmdline: vec!["python3".into(), "/srv/app/worker.py".into()], ..Default::default() };
        assert_eq!(input.resolve().service, Setting { value: "worker".into(), origin: Origin::Inferred });
    }

    #[test]
    fn tags_parse_commas_and_spaces() {
        assert_eq!(
            parse_tags("team:db, region:eu-west-1 bare"),
            vec![("team".into(), "db".into()), ("region".into(), "eu-west-1".into()), ("bare".into(), String::new())]
        );
    }
}
