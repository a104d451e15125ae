//! Instrumentation telemetry against Datadog's test agent: `app-started` carries the
//! configuration with each setting's origin (DD_SERVICE read from the target's environment),
//! and `app-closing` follows when the target exits.

use std::time::{Duration, Instant};

use ddtrace_tests::{agent_process::AgentProcess, http::get, target_app::SqliteWorker, test_agent::TestAgent};
use serde_json::Value;

const ATTACH_TIMEOUT: Duration = Duration::from_secs(20);

/// Every telemetry event received, oldest first, batches flattened: `(request_type, payload,
/// envelope)`.
fn telemetry_events(agent: &TestAgent) -> Vec<(String, Value, Value)> {
    let (status, body) = get(agent.port, "/test/session/apmtelemetry").unwrap();
    assert_eq!(status, 200, "{body}");
    let mut envelopes: Vec<Value> = serde_json::from_str(&body).unwrap();
    envelopes.sort_by_key(|e| e["seq_id"].as_u64());
    let mut events = Vec::new();
    for envelope in envelopes {
        let kind = envelope["request_type"].as_str().unwrap_or("").to_owned();
        if kind == "message-batch" {
            for message in envelope["payload"].as_array().into_iter().flatten() {
                let kind = message["request_type"].as_str().unwrap_or("").to_owned();
                events.push((kind, message["payload"].clone(), envelope.clone()));
            }
        } else {
            events.push((kind, envelope["payload"].clone(), envelope.clone()));
        }
    }
    events
}

fn wait_for_event(agent: &TestAgent, kind: &str) -> Vec<(String, Value, Value)> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let events = telemetry_events(agent);
        if events.iter().any(|(k, ..)| k == kind) {
            return events;
        }
        assert!(Instant::now() < deadline, "no {kind} among {events:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `name -> (value, origin)` of a configuration list.
fn setting<'a>(configuration: &'a Value, name: &str) -> (&'a Value, &'a str) {
    let entry = configuration
        .as_array()
        .and_then(|entries| entries.iter().find(|e| e["name"] == name))
        .unwrap_or_else(|| panic!("no {name} in {configuration:#}"));
    (&entry["value"], entry["origin"].as_str().unwrap_or(""))
}

#[test]
fn app_started_reports_settings_with_origins_and_app_closing_follows_the_exit() {
    let _serial = ddtrace_tests::serial();
    let agent = TestAgent::start();
    let mut worker = SqliteWorker::spawn_with_env(&[("DD_SERVICE", "checkout"), ("DD_TRACE_SAMPLE_RATE", "1")]);
    let pid = worker.pid().to_string();
    let url = agent.url();
    let mut daemon = AgentProcess::start(&["--pid", &pid, "--agent-url", &url, "--env", "e2e"]);
    daemon.wait_for_stderr("sqlite: waiting for libsqlite3", ATTACH_TIMEOUT);
    worker.run("import");
    worker.run("work 1");

    let events = wait_for_event(&agent, "app-started");
    let (_, started, envelope) = events.iter().find(|(k, ..)| k == "app-started").unwrap();
    let configuration = &started["configuration"];
    // The target's own DD_SERVICE, as the in-process tracer would have read it.
    assert_eq!(setting(configuration, "DD_SERVICE"), (&Value::from("checkout"), "env_var"));
    assert_eq!(setting(configuration, "DD_ENV"), (&Value::from("e2e"), "code"));
    assert_eq!(setting(configuration, "DD_TRACE_AGENT_URL"), (&Value::from(url.as_str()), "code"));
    assert_eq!(setting(configuration, "DD_TRACE_ENABLED"), (&Value::from("true"), "default"));
    assert_eq!(setting(configuration, "DD_TRACE_SAMPLE_RATE"), (&Value::from("1"), "env_var"));
    assert_eq!(setting(configuration, "DD_PROFILING_ENABLED"), (&Value::from("false"), "default"));
    setting(configuration, "DD_REMOTE_CONFIG_POLL_INTERVAL_SECONDS");
    assert_eq!(started["products"]["tracing"]["enabled"], true, "{started:#}");
    assert_eq!(envelope["application"]["service_name"], "checkout", "{envelope:#}");
    assert_eq!(envelope["application"]["env"], "e2e", "{envelope:#}");

    worker.exit();
    let status = daemon.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "daemon exit {status}:\n{}", daemon.stderr_text());
    let events = wait_for_event(&agent, "app-closing");
    assert_eq!(events.last().map(|(k, ..)| k.as_str()), Some("app-closing"), "{events:#?}");
    let runtime_ids: Vec<&Value> = events.iter().map(|(_, _, envelope)| &envelope["runtime_id"]).collect();
    assert!(runtime_ids.windows(2).all(|pair| pair[0] == pair[1]), "one runtime id: {runtime_ids:?}");
    // The spans went out under the target's service too.
    let spans = agent.spans();
    assert!(!spans.is_empty() && spans.iter().all(|s| s["service"] == "checkout"), "{spans:#?}");
}
