//! Redis on the wire: redis-py against a real `redis-server` on loopback, traced from outside.
//! Each command is a `redis.command` span as dd-trace-py's redis integration makes it (service
//! `redis`, resource the command, `redis.raw_command` obfuscated), a pipeline one span, an error
//! reply an error; the driver's own connection set-up gives none, and no stored value leaves the
//! host.

use std::time::Duration;

use ddtrace_tests::{
    agent_process::AgentProcess, redis_server::RedisServer, target_app::SqliteWorker, test_agent::TestAgent,
};
use serde_json::Value;

const ATTACH_TIMEOUT: Duration = Duration::from_secs(20);

fn meta<'a>(span: &'a Value, key: &str) -> &'a str {
    span["meta"][key].as_str().unwrap_or_default()
}

#[test]
fn redis_py_commands_pipelines_and_errors_are_spans_as_dd_trace_py_shows_them() {
    let _serial = ddtrace_tests::serial();
    let server = RedisServer::start();
    let agent = TestAgent::start();
    let port = server.port.to_string();
    let mut worker = SqliteWorker::spawn_script("redis_worker.py", &[&port], &[]);
    let mut daemon = AgentProcess::attach(worker.pid(), &agent.url(), &[]);
    daemon.wait_attached(ATTACH_TIMEOUT);
    worker.run("connect");
    worker.run("work");
    worker.exit();
    let status = daemon.wait_exit(Duration::from_secs(15));
    let stderr = daemon.stderr_text();
    assert!(status.success(), "{status}\n{stderr}");

    // One connection, recognised as Redis (the exit line counts connections by protocol).
    assert!(stderr.contains("connections: http=0 postgresql=0 mysql=0 redis=1"), "{stderr}");
    let spans: Vec<Value> = agent.spans().into_iter().filter(|s| s["name"] == "redis.command").collect();
    let context = format!("{spans:#?}\n{stderr}");
    let resources: Vec<&str> = spans.iter().map(|s| s["resource"].as_str().unwrap_or_default()).collect();
    let mut sorted = resources.clone();
    sorted.sort_unstable();
    // Seven application calls; redis-py's `CLIENT SETINFO` at connect is not one of them.
    assert_eq!(sorted, ["GET", "GET", "LPUSH", "MGET", "SET", "SET", "SET\nINCRBY"], "{context}");
    for span in &spans {
        assert_eq!(span["service"], "redis", "{span:#}");
        assert_eq!(span["type"], "redis", "{span:#}");
        assert_eq!(meta(span, "_dd.base_service"), "e2e-sqlite", "{span:#}");
        assert_eq!((meta(span, "component"), meta(span, "db.system")), ("redis", "redis"), "{span:#}");
        assert_eq!((meta(span, "span.kind"), meta(span, "out.host")), ("client", "127.0.0.1"), "{span:#}");
        assert_eq!(span["metrics"]["network.destination.port"].as_f64(), Some(f64::from(server.port)), "{span:#}");
        assert_eq!(span["metrics"]["out.redis_db"].as_f64(), Some(0.0), "{span:#}");
    }
    let by_raw = |raw: &str| {
        spans.iter().find(|s| meta(s, "redis.raw_command") == raw).unwrap_or_else(|| panic!("no {raw:?}: {context}"))
    };
    by_raw("SET user:1 ?");
    by_raw("SET big ?");
    let pipeline = by_raw("SET counter ?\nINCRBY counter 1");
    assert_eq!(pipeline["metrics"]["redis.pipeline_length"].as_f64(), Some(2.0), "{pipeline:#}");
    let get = by_raw("GET user:1");
    assert_eq!(get["metrics"]["db.row_count"].as_f64(), Some(1.0), "{get:#}");
    assert_eq!(get["metrics"]["redis.args_length"].as_f64(), Some(2.0), "{get:#}");
    assert_eq!(by_raw("GET missing")["metrics"]["db.row_count"].as_f64(), Some(0.0));
    assert_eq!(by_raw("MGET user:1 missing counter")["metrics"]["db.row_count"].as_f64(), Some(2.0));
    let failed = by_raw("LPUSH user:1 ?");
    assert_eq!(failed["error"], 1, "{failed:#}");
    assert!(meta(failed, "error.message").starts_with("WRONGTYPE"), "{failed:#}");
    let ok = spans.iter().filter(|s| s["error"].as_i64().unwrap_or(0) == 0).count();
    assert_eq!(ok, 6, "only the LPUSH failed: {context}");

    // No stored value reached the agent, in any payload.
    for request in agent.requests() {
        assert!(!request.body_contains("s3cret") && !request.body_contains("xxxxxxxx"), "{request:?}");
    }
    agent.assert_checks_passed();
}

/// `DD_TRACE_SPAN_ATTRIBUTE_SCHEMA=v1` in the target: the process's service, the command under
/// `redis.command`, and `peer.service` from the server's host, as dd-trace-py names them.
#[test]
fn schema_v1_names_redis_spans_as_dd_trace_py_does() {
    let _serial = ddtrace_tests::serial();
    let server = RedisServer::start();
    let agent = TestAgent::start();
    let port = server.port.to_string();
    let mut worker =
        SqliteWorker::spawn_script("redis_worker.py", &[&port], &[("DD_TRACE_SPAN_ATTRIBUTE_SCHEMA", "v1")]);
    let mut daemon = AgentProcess::attach(worker.pid(), &agent.url(), &[]);
    daemon.wait_attached(ATTACH_TIMEOUT);
    worker.run("connect");
    worker.run("work");
    worker.exit();
    assert!(daemon.wait_exit(Duration::from_secs(15)).success(), "{}", daemon.stderr_text());
    let spans: Vec<Value> = agent.spans().into_iter().filter(|s| s["name"] == "redis.command").collect();
    assert_eq!(spans.len(), 7, "{spans:#?}");
    for span in &spans {
        assert_eq!(span["service"], "e2e-sqlite", "{span:#}");
        assert_eq!((meta(span, "peer.service"), meta(span, "_dd.peer.service.source")), ("127.0.0.1", "out.host"));
        assert!(span["meta"].get("redis.raw_command").is_none() && span["meta"].get("_dd.base_service").is_none());
    }
    assert!(spans.iter().any(|s| meta(s, "redis.command") == "SET user:1 ?"), "{spans:#?}");
    agent.assert_checks_passed();
}
