//! Settings, each knowing where its value came from. Precedence, highest first: the command
//! line, the target's own `DD_*` environment (what dd-trace-py would read in-process), the
//! daemon's environment (a node-wide default), then a default or a value inferred from the
//! target. The agent URL is read from the daemon's side only: the daemon is the one connecting.

mod agent_url;
mod service_name;
mod settings;
mod stable_config;

pub use agent_url::resolve_agent_url;
pub use service_name::infer_service;
pub use settings::{
    parse_bool, parse_frequency, parse_interval, parse_rate, parse_tags, Config, ExporterKind, Origin, Setting,
    SettingsInput, SpanSchema,
};
pub use stable_config::{runtime_language, StableConfiguration, StableSettings};
