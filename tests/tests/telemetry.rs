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

/// Node mode: each traced process reports as its own tracer would: `app-started` under its own
/// service, env and runtime id (the one on its spans), requests naming its container, and
/// `app-closing` when it exits, while the agent goes on.
#[test]
fn on_a_node_each_process_reports_as_itself_from_its_container() {
    use ddtrace_tests::container::FakeContainer;
    let _serial = ddtrace_tests::serial();
    let agent = TestAgent::start();
    let container = FakeContainer::create();
    let mut alpha = SqliteWorker::spawn_with_prefix(
        &container.command_prefix(),
        &[("DD_SERVICE", "alpha"), ("DD_ENV", "prod"), ("DD_VERSION", "2.1")],
    );
    alpha.run("import");
    let url = agent.url();
    let mut daemon =
        AgentProcess::start_with_env(&["--node", "--agent-url", &url], &[("DD_TELEMETRY_HEARTBEAT_INTERVAL", "0.5")]);
    daemon.wait_attached(ATTACH_TIMEOUT);
    // Started after the agent.
    let mut beta = SqliteWorker::spawn_with_env(&[("DD_SERVICE", "beta")]);
    beta.run("work 1");
    alpha.run("work 1");
    let spans = agent.wait_for_spans(Duration::from_secs(10), |spans| {
        ["alpha", "beta"].iter().all(|service| spans.iter().any(|s| s["service"] == *service))
    });
    let runtime_id = |service: &str| -> String {
        let span = spans.iter().find(|s| s["service"] == service).unwrap();
        span["meta"]["runtime-id"].as_str().unwrap().to_string()
    };
    let (alpha_id, beta_id) = (runtime_id("alpha"), runtime_id("beta"));

    let started_for = |runtime_id: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let events = ddtrace_tests::telemetry::telemetry_events(&agent);
            if let Some(found) =
                events.into_iter().find(|(k, _, envelope)| k == "app-started" && envelope["runtime_id"] == runtime_id)
            {
                return found;
            }
            assert!(std::time::Instant::now() < deadline, "no app-started for {runtime_id}:\n{}", daemon.stderr_text());
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let (_, started, envelope) = started_for(&alpha_id);
    assert_eq!(envelope["application"]["service_name"], "alpha", "{envelope:#}");
    assert_eq!(envelope["application"]["env"], "prod", "{envelope:#}");
    assert_eq!(envelope["application"]["service_version"], "2.1", "{envelope:#}");
    assert_eq!(envelope["host"]["container_id"], container.id.as_str(), "{envelope:#}");
    assert_eq!(setting(&started["configuration"], "DD_SERVICE"), (&Value::from("alpha"), "env_var"));
    let (_, _, envelope) = started_for(&beta_id);
    assert_eq!(envelope["application"]["service_name"], "beta", "{envelope:#}");

    // Beta exits: its app-closing, while the agent runs on.
    beta.exit();
    let closed = |runtime_id: &str| {
        ddtrace_tests::telemetry::telemetry_events(&agent)
            .iter()
            .any(|(k, _, envelope)| k == "app-closing" && envelope["runtime_id"] == runtime_id)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !closed(&beta_id) {
        assert!(std::time::Instant::now() < deadline, "no app-closing for beta:\n{}", daemon.stderr_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!closed(&alpha_id), "alpha still runs");
    daemon.signal(libc::SIGTERM);
    let status = daemon.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "daemon exit {status}:\n{}", daemon.stderr_text());
    assert!(closed(&alpha_id), "alpha's app-closing at the agent's stop");
    alpha.exit();

    // Every telemetry request for alpha names its container, none for beta names one.
    let telemetry: Vec<_> = agent.requests().into_iter().filter(|r| r.url.contains("apmtelemetry")).collect();
    let alphas: Vec<_> = telemetry.iter().filter(|r| r.body_contains(&alpha_id)).collect();
    assert!(alphas.len() >= 2, "{telemetry:#?}");
    for request in alphas {
        assert_eq!(request.header("Datadog-Container-ID"), Some(container.id.as_str()), "{request:?}");
    }
    for request in telemetry.iter().filter(|r| r.body_contains(&beta_id)) {
        assert_eq!(request.header("Datadog-Container-ID"), None, "{request:?}");
    }
    agent.assert_checks_passed();
}
