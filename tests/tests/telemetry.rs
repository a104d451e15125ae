//! Instrumentation telemetry against Datadog's test agent: `app-started` carries the
//! configuration with each setting's origin (DD_SERVICE read from the target's environment),
//! and `app-closing` follows when the target exits.

use std::time::Duration;

use ddtrace_tests::{
    agent_process::AgentProcess,
    target_app::SqliteWorker,
    telemetry::{setting, wait_for_event},
    test_agent::TestAgent,
};
use serde_json::Value;

const ATTACH_TIMEOUT: Duration = Duration::from_secs(20);

#[test]
fn app_started_reports_settings_with_origins_and_app_closing_follows_the_exit() {
    let _serial = ddtrace_tests::serial();
    let agent = TestAgent::start();
    let mut worker = SqliteWorker::spawn_with_env(&[
        ("DD_SERVICE", "checkout"),
        ("DD_TRACE_SAMPLE_RATE", "1"),
        ("DD_TELEMETRY_HEARTBEAT_INTERVAL", "0.5"),
    ]);
    let pid = worker.pid().to_string();
    let url = agent.url();
    let mut daemon = AgentProcess::start(&["--pid", &pid, "--agent-url", &url, "--env", "e2e"]);
    daemon.wait_attached(ATTACH_TIMEOUT);
    worker.run("import");
    daemon.wait_for_stderr("sqlite: attached", ATTACH_TIMEOUT);
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
    assert_eq!(setting(configuration, "DD_PROFILING_ENABLED"), (&Value::from("true"), "default"));
    assert_eq!(setting(configuration, "DD_PROFILING_SAMPLING_FREQUENCY"), (&Value::from("100"), "default"));
    setting(configuration, "DD_REMOTE_CONFIG_POLL_INTERVAL_SECONDS");
    assert_eq!(started["products"]["tracing"]["enabled"], true, "{started:#}");
    assert_eq!(envelope["application"]["service_name"], "checkout", "{envelope:#}");
    assert_eq!(envelope["application"]["env"], "e2e", "{envelope:#}");
    assert_eq!(setting(configuration, "DD_TELEMETRY_HEARTBEAT_INTERVAL"), (&Value::from("0.5"), "env_var"));
    wait_for_event(&agent, "app-heartbeat");

    worker.exit();
    let exited = std::time::Instant::now();
    let status = daemon.wait_exit(Duration::from_secs(15));
    eprintln!("daemon exited {} ms after the target (flush, app-closing)", exited.elapsed().as_millis());
    assert!(status.success(), "daemon exit {status}:\n{}", daemon.stderr_text());
    let events = wait_for_event(&agent, "app-closing");
    assert_eq!(events.last().map(|(k, ..)| k.as_str()), Some("app-closing"), "{events:#?}");
    let runtime_ids: Vec<&Value> = events.iter().map(|(_, _, envelope)| &envelope["runtime_id"]).collect();
    assert!(runtime_ids.windows(2).all(|pair| pair[0] == pair[1]), "one runtime id: {runtime_ids:?}");
    // The spans went out under the target's service too.
    let spans = agent.spans();
    assert!(!spans.is_empty() && spans.iter().all(|s| s["service"] == "checkout"), "{spans:#?}");
}
