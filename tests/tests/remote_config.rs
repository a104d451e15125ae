//! Remote configuration against Datadog's test agent: `APM_TRACING` configurations stubbed
//! through the test agent's session endpoints switch tracing off and on and change the sample
//! rate of a live, traced process, and a removed configuration restores the local settings.

use std::time::{Duration, Instant};

use ddtrace_tests::{
    agent_process::AgentProcess,
    http::post,
    target_app::SqliteWorker,
    telemetry::{setting, telemetry_events},
    test_agent::TestAgent,
};
use serde_json::{json, Value};

const ATTACH_TIMEOUT: Duration = Duration::from_secs(20);
const APPLIED: &str = "tracing: remote configuration applied";
const INSERT: &str = "INSERT INTO users ( name, secret ) VALUES";

fn stub(agent: &TestAgent, path: &str, msg: Value) {
    let body = json!({ "path": path, "msg": msg }).to_string();
    let (status, response) = post(agent.port, "/test/session/responses/config/path", &body).unwrap();
    assert_eq!(status, 202, "stubbing {path}: {response}");
}

fn inserts(agent: &TestAgent) -> usize {
    agent.spans().iter().filter(|s| s["resource"].as_str().is_some_and(|r| r.starts_with(INSERT))).count()
}

/// Waits until the daemon logged `count` remote configuration changes; returns the last.
fn wait_for_applied(daemon: &AgentProcess, count: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let stderr = daemon.stderr_text();
        let applied: Vec<&str> = stderr.lines().filter(|l| l.contains(APPLIED)).collect();
        if applied.len() >= count {
            return applied[count - 1].to_string();
        }
        assert!(Instant::now() < deadline, "remote configuration #{count} not applied:\n{stderr}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits for the INSERT spans to reach `expected` (and checks they do not go past it).
fn wait_for_inserts(agent: &TestAgent, expected: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while inserts(agent) < expected && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(inserts(agent), expected, "{:#?}", agent.spans());
}

/// The `sampled_out_traces` counter the tracing product logs at exit.
fn sampled_out(stderr: &str) -> usize {
    stderr
        .split("sampled_out_traces=")
        .nth(1)
        .and_then(|tail| tail.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no sampled_out_traces in\n{stderr}"))
}

#[test]
fn apm_tracing_switches_tracing_off_and_on_and_sets_the_sample_rate_live() {
    let _serial = ddtrace_tests::serial();
    let agent = TestAgent::start();
    let mut worker = SqliteWorker::spawn_with_env(&[
        ("DD_REMOTE_CONFIG_POLL_INTERVAL_SECONDS", "0.2"),
        ("DD_TELEMETRY_HEARTBEAT_INTERVAL", "0.5"),
    ]);
    let mut daemon = AgentProcess::attach(worker.pid(), &agent.url(), &[]);
    daemon.wait_attached(ATTACH_TIMEOUT);
    worker.run("import");
    daemon.wait_for_stderr("sqlite: attached", ATTACH_TIMEOUT);
    worker.run("work 1");
    wait_for_inserts(&agent, 1);

    // Off: work done now produces no spans.
    let path = "datadog/2/APM_TRACING/e2e-sqlite/config";
    let target = json!({"service": "e2e-sqlite", "env": "*"});
    stub(&agent, path, json!({"service_target": target, "lib_config": {"tracing_enabled": false}}));
    let stubbed = Instant::now();
    let applied = wait_for_applied(&daemon, 1);
    eprintln!(
        "remote configuration applied {} ms after the stub (poll interval 200 ms)",
        stubbed.elapsed().as_millis()
    );
    assert!(applied.contains("enabled=false"), "{applied}");
    worker.run("work 2");

    // On again, with tags: spans again, tagged.
    let lib_config = json!({"tracing_enabled": true, "tracing_tags": ["team:e2e"]});
    stub(&agent, path, json!({"service_target": target, "lib_config": lib_config}));
    let applied = wait_for_applied(&daemon, 2);
    assert!(applied.contains("enabled=true"), "{applied}");
    worker.run("work 3");
    wait_for_inserts(&agent, 4);
    let tagged = agent.spans().iter().filter(|s| s["meta"]["team"] == "e2e").count();
    assert!(tagged >= 6, "work 3's spans carry the remote tags: {:#?}", agent.spans());

    // Sample rate 0: every trace is dropped.
    stub(&agent, path, json!({"service_target": target, "lib_config": {"tracing_sampling_rate": 0}}));
    let applied = wait_for_applied(&daemon, 3);
    assert!(applied.contains("sample_rate=Some(0.0)"), "{applied}");
    worker.run("work 2");
    // Configuration telemetry reports the change, with its origin.
    let deadline = Instant::now() + Duration::from_secs(10);
    let change = loop {
        let events = telemetry_events(&agent);
        let found = events.into_iter().rev().find(|(kind, payload, _)| {
            kind == "app-client-configuration-change"
                && payload["configuration"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|e| e["name"] == "DD_TRACE_SAMPLE_RATE"))
        });
        if let Some((_, payload, _)) = found {
            break payload;
        }
        assert!(Instant::now() < deadline, "no configuration change in telemetry");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(setting(&change["configuration"], "DD_TRACE_SAMPLE_RATE"), (&Value::from("0"), "remote_config"));

    // The configuration removed (the agent now serves one for another service only): the local
    // settings are back, every trace is kept.
    let other = json!({"service_target": {"service": "billing", "env": "*"}, "lib_config": {"tracing_enabled": false}});
    stub(&agent, "datadog/2/APM_TRACING/billing/config", other);
    let applied = wait_for_applied(&daemon, 4);
    assert!(applied.contains("enabled=true") && applied.contains("sample_rate=None"), "{applied}");
    worker.run("work 1");
    wait_for_inserts(&agent, 5);

    worker.exit();
    let status = daemon.wait_exit(Duration::from_secs(15));
    let stderr = daemon.stderr_text();
    assert!(status.success(), "daemon exit {status}:\n{stderr}");
    // Nothing done while off or at rate 0 arrived late either.
    assert_eq!(inserts(&agent), 5, "{:#?}", agent.spans());
    // work 2 at rate 0: at least 2 INSERT, 2 SELECT and a COMMIT trace, counted as sampled out.
    assert!(sampled_out(&stderr) >= 5, "{stderr}");
    assert!(stderr.contains("products [tracing, profiling, remote_config, telemetry]"), "{stderr}");
    // Kept traces without a configured rate carry no rule decision; the tags went with the
    // configuration.
    let spans = agent.spans();
    let untagged = spans.iter().filter(|s| s["meta"].get("team").is_none()).count();
    assert!(untagged >= 4, "work 1 and 1's spans before and after carry no tags: {spans:#?}");
    assert!(spans.iter().all(|s| s["metrics"].get("_dd.rule_psr").is_none()), "{spans:#?}");

    // The daemon polled for the target's service, with the tracing product's capabilities.
    let polls = config_requests(&agent);
    let client = &polls.first().unwrap_or_else(|| panic!("no /v0.7/config request"))["client"];
    assert_eq!(client["client_tracer"]["service"], "e2e-sqlite", "{client:#}");
    assert_eq!(client["products"], json!(["APM_TRACING"]), "{client:#}");
    let capabilities = capability_bits(&client["capabilities"]);
    assert_eq!(capabilities, 1 << 12 | 1 << 15 | 1 << 19, "{client:#}");
    agent.assert_checks_passed();
}

/// The decoded bodies of the `/v0.7/config` requests the test agent received.
fn config_requests(agent: &TestAgent) -> Vec<Value> {
    let (status, body) = ddtrace_tests::http::get(agent.port, "/test/session/requests").unwrap();
    assert_eq!(status, 200, "{body}");
    let requests: Vec<Value> = serde_json::from_str(&body).unwrap();
    requests
        .iter()
        .filter(|r| r["url"].as_str().is_some_and(|u| u.ends_with("/v0.7/config")))
        .filter_map(|r| serde_json::from_slice(&base64_decode(r["body"].as_str()?)).ok())
        .collect()
}

/// The capabilities field as a bit set: big-endian bytes, as a JSON array of numbers
/// (libdatadog) or a base64 string (other tracers).
fn capability_bits(field: &Value) -> u64 {
    let bytes: Vec<u8> = match field {
        Value::String(text) => base64_decode(text),
        Value::Array(numbers) => numbers.iter().filter_map(|n| n.as_u64()).map(|n| n as u8).collect(),
        other => panic!("unexpected capabilities {other}"),
    };
    bytes.iter().fold(0, |bits, byte| bits << 8 | u64::from(*byte))
}

/// Standard base64 (the test agent's encoding of request bodies); the harness has no crate for it.
fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut buffer, mut bits) = (0u32, 0);
    for byte in text.bytes().filter(|b| *b != b'=' && !b.is_ascii_whitespace()) {
        let Some(value) = ALPHABET.iter().position(|a| *a == byte) else { continue };
        buffer = buffer << 6 | value as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
    }
    out
}

#[test]
fn dd_trace_enabled_false_in_the_target_leaves_tracing_out() {
    let _serial = ddtrace_tests::serial();
    let agent = TestAgent::start();
    let mut worker = SqliteWorker::spawn_with_env(&[("DD_TRACE_ENABLED", "false")]);
    let mut daemon = AgentProcess::attach(worker.pid(), &agent.url(), &[]);
    daemon.wait_attached(ATTACH_TIMEOUT);
    worker.run("import");
    daemon.wait_for_stderr("sqlite: attached", ATTACH_TIMEOUT);
    worker.run("work 2");
    worker.exit();
    let status = daemon.wait_exit(Duration::from_secs(15));
    let stderr = daemon.stderr_text();
    assert!(status.success(), "daemon exit {status}:\n{stderr}");
    assert!(stderr.contains("products [profiling, remote_config, telemetry]"), "{stderr}");
    assert!(agent.spans().is_empty(), "{:#?}", agent.spans());
}

#[test]
fn a_local_sample_rate_marks_kept_traces_with_the_rule_decision() {
    let _serial = ddtrace_tests::serial();
    let agent = TestAgent::start();
    let mut worker = SqliteWorker::spawn_with_env(&[("DD_TRACE_SAMPLE_RATE", "0.5")]);
    let mut daemon = AgentProcess::attach(worker.pid(), &agent.url(), &[]);
    daemon.wait_attached(ATTACH_TIMEOUT);
    worker.run("import");
    daemon.wait_for_stderr("sqlite: attached", ATTACH_TIMEOUT);
    worker.run("work 20");
    worker.exit();
    let status = daemon.wait_exit(Duration::from_secs(15));
    let stderr = daemon.stderr_text();
    assert!(status.success(), "daemon exit {status}:\n{stderr}");

    let traces = agent.traces();
    // 20 INSERT, 20 SELECT, a COMMIT, the CREATE TABLE (and whatever transaction statements
    // Python adds): over 40 traces, about half kept.
    let (kept, dropped) = (traces.len(), sampled_out(&stderr));
    assert!(kept + dropped >= 42, "kept {kept}, dropped {dropped}:\n{stderr}");
    let share = kept as f64 / (kept + dropped) as f64;
    assert!((0.2..=0.8).contains(&share), "kept {kept}, dropped {dropped}");
    for trace in &traces {
        let root = trace.iter().find(|s| s["parent_id"].as_u64().unwrap_or(0) == 0).expect("a root");
        assert_eq!(root["metrics"]["_sampling_priority_v1"], 1.0, "{root}");
        assert_eq!(root["metrics"]["_dd.rule_psr"], 0.5, "{root}");
        assert_eq!(root["meta"]["_dd.p.dm"], "-3", "{root}");
    }
    agent.assert_checks_passed();
}

/// Node mode: one remote configuration client per service, as each service's own tracer would
/// poll, and a configuration for one service changes that service alone: switched off, its
/// statements give no spans while the other service's still do; removed, it is back.
#[test]
fn on_a_node_each_service_polls_as_itself_and_its_configuration_changes_it_alone() {
    let _serial = ddtrace_tests::serial();
    let agent = TestAgent::start();
    let mut alpha = SqliteWorker::spawn_with_env(&[("DD_SERVICE", "alpha"), ("DD_ENV", "prod")]);
    let mut beta = SqliteWorker::spawn_with_env(&[("DD_SERVICE", "beta"), ("DD_ENV", "prod")]);
    alpha.run("import");
    beta.run("import");
    let url = agent.url();
    let mut daemon = AgentProcess::start_with_env(
        &["--node", "--agent-url", &url],
        &[("DD_REMOTE_CONFIG_POLL_INTERVAL_SECONDS", "0.2")],
    );
    daemon.wait_attached(ATTACH_TIMEOUT);
    let service_inserts = |service: &str| {
        agent
            .spans()
            .iter()
            .filter(|s| s["service"] == service && s["resource"].as_str().is_some_and(|r| r.starts_with(INSERT)))
            .count()
    };
    let wait_for = |service: &str, expected: usize| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while service_inserts(service) < expected && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(service_inserts(service), expected, "{service}: {:#?}", agent.spans());
    };
    alpha.run("work 1");
    beta.run("work 1");
    wait_for("alpha", 1);
    wait_for("beta", 1);

    // Off for alpha only.
    let alpha_only =
        json!({"service_target": {"service": "alpha", "env": "prod"}, "lib_config": {"tracing_enabled": false}});
    stub(&agent, "datadog/2/APM_TRACING/alpha/config", alpha_only);
    let applied = wait_for_applied(&daemon, 1);
    assert!(applied.contains("alpha") && applied.contains("enabled=false"), "{applied}");
    alpha.run("work 2");
    beta.run("work 2");
    wait_for("beta", 3);

    // Removed (the agent now serves a configuration for another service only): alpha is back.
    let other = json!({"service_target": {"service": "billing", "env": "*"}, "lib_config": {"tracing_enabled": false}});
    stub(&agent, "datadog/2/APM_TRACING/billing/config", other);
    let applied = wait_for_applied(&daemon, 2);
    assert!(applied.contains("alpha") && applied.contains("enabled=true"), "{applied}");
    alpha.run("work 1");
    wait_for("alpha", 2);

    alpha.exit();
    beta.exit();
    daemon.signal(libc::SIGINT);
    let status = daemon.wait_exit(Duration::from_secs(15));
    let stderr = daemon.stderr_text();
    assert!(status.success(), "daemon exit {status}:\n{stderr}");
    // Nothing alpha did while off arrived late; beta was never touched.
    assert_eq!((service_inserts("alpha"), service_inserts("beta")), (2, 3), "{:#?}", agent.spans());
    let applied: Vec<&str> = stderr.lines().filter(|l| l.contains(APPLIED)).collect();
    assert_eq!(applied.len(), 2, "only alpha's settings changed: {applied:#?}");

    // Each service polled as itself: its own service, env and runtime id (its process's, as on
    // its spans).
    let polls = config_requests(&agent);
    let runtime_id_of = |service: &str| -> String {
        let span = agent.spans().into_iter().find(|s| s["service"] == service).expect("a span");
        span["meta"]["runtime-id"].as_str().unwrap_or_default().to_string()
    };
    for service in ["alpha", "beta"] {
        let tracer = polls
            .iter()
            .map(|poll| &poll["client"]["client_tracer"])
            .find(|tracer| tracer["service"] == service)
            .unwrap_or_else(|| panic!("no poll for {service}: {polls:#?}"));
        assert_eq!(tracer["env"], "prod", "{tracer:#}");
        assert_eq!(tracer["runtime_id"].as_str(), Some(runtime_id_of(service).as_str()), "{tracer:#}");
    }
    agent.assert_checks_passed();
}
