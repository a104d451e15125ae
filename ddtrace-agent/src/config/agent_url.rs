use std::collections::HashMap;

use super::settings::{Origin, Setting};

pub const DEFAULT_AGENT_URL: &str = "http://localhost:8126";

/// `DD_TRACE_AGENT_URL`, else `DD_AGENT_HOST` / `DD_TRACE_AGENT_PORT`, else localhost:8126.
pub fn resolve_agent_url(env: &HashMap<String, String>) -> Setting<String> {
    let get = |key: &str| env.get(key).map(|v| v.trim()).filter(|v| !v.is_empty());
    if let Some(url) = get("DD_TRACE_AGENT_URL") {
        return Setting { value: url.to_string(), origin: Origin::DaemonEnvironment };
    }
    let host = get("DD_AGENT_HOST");
    let port = get("DD_TRACE_AGENT_PORT");
    if host.is_none() && port.is_none() {
        return Setting { value: DEFAULT_AGENT_URL.to_string(), origin: Origin::Default };
    }
    let host = host.unwrap_or("localhost");
    // An IPv6 literal needs brackets in a URL.
    let host = if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host.to_string() };
    Setting { value: format!("http://{host}:{}", port.unwrap_or("8126")), origin: Origin::DaemonEnvironment }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn precedence_of_agent_url_settings() {
        assert_eq!(resolve_agent_url(&env(&[])).value, "http://localhost:8126");
        assert_eq!(resolve_agent_url(&env(&[("DD_AGENT_HOST", "10.0.0.1")])).value, "http://10.0.0.1:8126");
        assert_eq!(resolve_agent_url(&env(&[("DD_TRACE_AGENT_PORT", "9126")])).value, "http://localhost:9126");
        assert_eq!(resolve_agent_url(&env(&[("DD_AGENT_HOST", "::1")])).value, "http://[::1]:8126");
        let url = resolve_agent_url(&env(&[("DD_TRACE_AGENT_URL", "http://a:1"), ("DD_AGENT_HOST", "b")]));
        assert_eq!(url.value, "http://a:1");
    }
}
