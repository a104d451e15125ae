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
    /// Set through remote configuration (`APM_TRACING`) while the daemon runs.
    RemoteConfig,
}

impl Origin {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Default => "default",
            Self::Inferred => "inferred",
            Self::DaemonEnvironment => "env_var",
            Self::TargetEnvironment => "target_env_var",
            Self::CommandLine => "code",
            Self::RemoteConfig => "remote_config",
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
    pub cli_trace_enabled: Option<bool>,
    pub cli_profiling_enabled: Option<bool>,
    pub cli_profiling_frequency: Option<u32>,
    /// Already checked to be in [0, 1] by the flag's parser.
    pub cli_trace_sample_rate: Option<f64>,
    pub cli_remote_config_poll_interval: Option<f64>,
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
    /// `DD_TRACE_ENABLED`: whether the tracing product runs (default true).
    pub trace_enabled: Setting<bool>,
    /// `DD_PROFILING_ENABLED`: whether the profiling product runs. Default true, unlike
    /// dd-trace-py: attaching the daemon to a process is already the opt-in.
    pub profiling_enabled: Setting<bool>,
    /// `DD_PROFILING_SAMPLING_FREQUENCY`: CPU samples per second of a thread's CPU time (default 100).
    pub profiling_frequency_hz: Setting<u32>,
    /// `DD_PROFILING_UPLOAD_PERIOD`: seconds between profile uploads (default 60, as dd-trace-py).
    pub profiling_upload_period: Setting<f64>,
    /// `DD_TRACE_HEADER_TAGS` as written (`header[:tag],...`): the only HTTP headers copied into
    /// spans. Empty by default.
    pub header_tags: Setting<String>,
    /// `DD_TRACE_SAMPLE_RATE`: the share of traces kept, in [0, 1]; `None` keeps them all.
    pub trace_sample_rate: Setting<Option<f64>>,
    /// `DD_REMOTE_CONFIGURATION_ENABLED` (default true; only used with the Datadog exporter).
    pub remote_config_enabled: Setting<bool>,
    /// `DD_REMOTE_CONFIG_POLL_INTERVAL_SECONDS` (default 5 s, as in-process tracers).
    pub remote_config_poll_interval: Setting<f64>,
    /// `DD_INSTRUMENTATION_TELEMETRY_ENABLED` (default true; only with the Datadog exporter).
    pub telemetry_enabled: Setting<bool>,
    /// `DD_TELEMETRY_HEARTBEAT_INTERVAL` in seconds (default 60, as in-process tracers).
    pub telemetry_heartbeat_interval: Setting<f64>,
    /// `DD_TRACE_SPAN_ATTRIBUTE_SCHEMA`: `v0` (default: integrations' own services, as
    /// dd-trace-py) or `v1` (the process's service, `peer.service` on client spans).
    pub span_attribute_schema: Setting<SpanSchema>,
    /// `DD_TRACE_PEER_SERVICE_DEFAULTS_ENABLED`: `peer.service` on client spans under v0 too.
    pub peer_service_defaults: Setting<bool>,
}

/// How spans are named: dd-trace-py's span attribute schemas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SpanSchema {
    #[default]
    V0,
    V1,
}

impl SpanSchema {
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "v0" => Some(Self::V0),
            "v1" => Some(Self::V1),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::V0 => "v0",
            Self::V1 => "v1",
        }
    }
}

impl Config {
    /// Whether client spans get `peer.service` (schema v1, or the v0 opt-in).
    pub fn peer_service(&self) -> bool {
        self.span_attribute_schema.value == SpanSchema::V1 || self.peer_service_defaults.value
    }
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

    /// Resolves a typed setting: the flag's value (`cli`, parsed by clap), else the target's
    /// environment, then the daemon's, parsed by `parse`. A value that does not parse is logged
    /// and skipped: the next source applies.
    fn parsed<T>(&self, cli: Option<T>, key: &str, parse: impl Fn(&str) -> Option<T>) -> Option<Setting<T>> {
        if let Some(value) = cli {
            return Some(Setting { value, origin: Origin::CommandLine });
        }
        let sources = [(&self.target_env, Origin::TargetEnvironment), (&self.daemon_env, Origin::DaemonEnvironment)];
        for (env, origin) in sources {
            let Some(text) = non_empty(env.get(key)) else { continue };
            match parse(&text) {
                Some(value) => return Some(Setting { value, origin }),
                None => tracing::warn!(
                    setting = key,
                    value = text,
                    source = origin.as_str(),
                    "ignoring an invalid value; using the next source or the default"
                ),
            }
        }
        None
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
            trace_enabled: self
                .parsed(self.cli_trace_enabled, "DD_TRACE_ENABLED", parse_bool)
                .unwrap_or(Setting { value: true, origin: Origin::Default }),
            profiling_enabled: self
                .parsed(self.cli_profiling_enabled, "DD_PROFILING_ENABLED", parse_bool)
                .unwrap_or(Setting { value: true, origin: Origin::Default }),
            profiling_frequency_hz: self
                .parsed(self.cli_profiling_frequency, "DD_PROFILING_SAMPLING_FREQUENCY", parse_frequency)
                .unwrap_or(Setting { value: DEFAULT_PROFILING_FREQUENCY_HZ, origin: Origin::Default }),
            header_tags: self
                .string(&None, "DD_TRACE_HEADER_TAGS")
                .unwrap_or(Setting { value: String::new(), origin: Origin::Default }),
            profiling_upload_period: self
                .parsed(None, "DD_PROFILING_UPLOAD_PERIOD", parse_interval)
                .unwrap_or(Setting { value: 60.0, origin: Origin::Default }),
            trace_sample_rate: match self.parsed(self.cli_trace_sample_rate, "DD_TRACE_SAMPLE_RATE", parse_rate) {
                Some(Setting { value, origin }) => Setting { value: Some(value), origin },
                None => Setting { value: None, origin: Origin::Default },
            },
            remote_config_enabled: self
                .parsed(None, "DD_REMOTE_CONFIGURATION_ENABLED", parse_bool)
                .unwrap_or(Setting { value: true, origin: Origin::Default }),
            telemetry_enabled: self
                .parsed(None, "DD_INSTRUMENTATION_TELEMETRY_ENABLED", parse_bool)
                .unwrap_or(Setting { value: true, origin: Origin::Default }),
            telemetry_heartbeat_interval: self
                .parsed(None, "DD_TELEMETRY_HEARTBEAT_INTERVAL", parse_interval)
                .unwrap_or(Setting { value: 60.0, origin: Origin::Default }),
            remote_config_poll_interval: self
                .parsed(self.cli_remote_config_poll_interval, "DD_REMOTE_CONFIG_POLL_INTERVAL_SECONDS", parse_interval)
                .unwrap_or(Setting { value: DEFAULT_REMOTE_CONFIG_POLL_INTERVAL_SECONDS, origin: Origin::Default }),
            span_attribute_schema: self
                .parsed(None, "DD_TRACE_SPAN_ATTRIBUTE_SCHEMA", SpanSchema::parse)
                .unwrap_or(Setting { value: SpanSchema::V0, origin: Origin::Default }),
            peer_service_defaults: self
                .parsed(None, "DD_TRACE_PEER_SERVICE_DEFAULTS_ENABLED", parse_bool)
                .unwrap_or(Setting { value: false, origin: Origin::Default }),
        }
    }
}

/// As in-process tracers: `DD_REMOTE_CONFIG_POLL_INTERVAL_SECONDS` defaults to 5.
pub const DEFAULT_REMOTE_CONFIG_POLL_INTERVAL_SECONDS: f64 = 5.0;

/// Booleans as Datadog tracers accept them: true/false, 1/0, yes/no, on/off (any case).
/// CPU samples per second per thread when nothing sets it: py-spy's and Datadog's native
/// profiler's default, 10 ms of CPU time per sample.
pub const DEFAULT_PROFILING_FREQUENCY_HZ: u32 = 100;

/// A sampling frequency in Hz, 1 to 1000 (beyond that the sampler itself costs the target).
pub fn parse_frequency(text: &str) -> Option<u32> {
    text.trim().parse::<u32>().ok().filter(|hz| (1..=1000).contains(hz))
}

pub fn parse_bool(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// A sample rate: a number in [0, 1].
pub fn parse_rate(text: &str) -> Option<f64> {
    text.trim().parse::<f64>().ok().filter(|rate| (0.0..=1.0).contains(rate))
}

/// A poll interval in seconds: positive and at most an hour.
pub fn parse_interval(text: &str) -> Option<f64> {
    text.trim().parse::<f64>().ok().filter(|seconds| *seconds > 0.0 && *seconds <= 3600.0)
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
    fn typed_settings_have_defaults_origins_and_skip_invalid_values() {
        let config = SettingsInput::default().resolve();
        assert_eq!(config.trace_enabled, Setting { value: true, origin: Origin::Default });
        assert_eq!(config.profiling_enabled, Setting { value: true, origin: Origin::Default });
        assert_eq!(config.profiling_frequency_hz, Setting { value: 100, origin: Origin::Default });
        assert_eq!(config.profiling_upload_period.value, 60.0);
        assert_eq!(config.trace_sample_rate, Setting { value: None, origin: Origin::Default });
        assert_eq!(config.remote_config_poll_interval.value, 5.0);

        let input = SettingsInput {
            daemon_env: env(&[
                ("DD_TRACE_ENABLED", "false"),
                ("DD_PROFILING_ENABLED", "0"),
                ("DD_PROFILING_SAMPLING_FREQUENCY", "250"),
                ("DD_TRACE_SAMPLE_RATE", "0.25"),
            ]),
            target_env: env(&[
                ("DD_TRACE_ENABLED", "True"),
                ("DD_TRACE_SAMPLE_RATE", "1.5"),
                ("DD_REMOTE_CONFIG_POLL_INTERVAL_SECONDS", "0.2"),
            ]),
            ..Default::default()
        };
        let config = input.resolve();
        assert_eq!(config.trace_enabled, Setting { value: true, origin: Origin::TargetEnvironment });
        assert_eq!(config.profiling_enabled, Setting { value: false, origin: Origin::DaemonEnvironment });
        assert_eq!(config.profiling_frequency_hz, Setting { value: 250, origin: Origin::DaemonEnvironment });
        // 1.5 is out of range in the target's environment: the daemon's value applies.
        assert_eq!(config.trace_sample_rate, Setting { value: Some(0.25), origin: Origin::DaemonEnvironment });
        assert_eq!(config.remote_config_poll_interval.value, 0.2);
        // A flag beats both environments.
        let input = SettingsInput { cli_trace_sample_rate: Some(1.0), cli_trace_enabled: Some(false), ..input };
        let config = input.resolve();
        assert_eq!(config.trace_sample_rate, Setting { value: Some(1.0), origin: Origin::CommandLine });
        assert_eq!(config.trace_enabled, Setting { value: false, origin: Origin::CommandLine });
        assert_eq!(parse_bool("nope"), None);
        assert_eq!(parse_rate("0"), Some(0.0));
        assert_eq!(parse_rate("-0.1"), None);
    }

    #[test]
    fn tags_parse_commas_and_spaces() {
        assert_eq!(
            parse_tags("team:db, region:eu-west-1 bare"),
            vec![("team".into(), "db".into()), ("region".into(), "eu-west-1".into()), ("bare".into(), String::new())]
        );
    }
}
