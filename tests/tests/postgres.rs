//! PostgreSQL on the wire: psycopg2 (its wheel's own libpq) and psycopg 3 (the system's libpq,
//! extended protocol) against a real PostgreSQL 15 on loopback, traced from outside. Each
//! `execute` is a `postgres.query` span as dd-trace-py's psycopg integration makes it (service
//! `postgres`, resource the obfuscated SQL, database, user and application from the startup), an
//! error its SQLSTATE; the driver's implicit `BEGIN` gives none, and no literal leaves the host.

use std::time::Duration;

use ddtrace_tests::{
    agent_process::AgentProcess, postgres_server::PostgresServer, target_app::SqliteWorker, test_agent::TestAgent,
};
use serde_json::Value;

const ATTACH_TIMEOUT: Duration = Duration::from_secs(20);

/// The resources of the worker's `work`, in order.
const WORK_RESOURCES: [&str; 8] = [
    "CREATE TABLE IF NOT EXISTS users ( id serial PRIMARY KEY, name text UNIQUE, secret text )",
    "INSERT INTO users ( name, secret ) VALUES ( ? )",
    "COMMIT",
    "SELECT id, name FROM users WHERE name = ?",
    "SELECT * FROM nope",
    "ROLLBACK",
    "SELECT generate_series ( ? )",
    "COMMIT",
];

fn meta<'a>(span: &'a Value, key: &str) -> &'a str {
    span["meta"][key].as_str().unwrap_or_default()
}

/// When the worker connects: after the agent attached (its startup seen), or before.
#[derive(Clone, Copy, PartialEq)]
enum Connect {
    Traced,
    BeforeAttach,
}

fn traced_work(
    server: &PostgresServer,
    driver: &str,
    sslmode: &str,
    connect: Connect,
) -> (Vec<Value>, String, TestAgent) {
    let agent = TestAgent::start();
    let port = server.port.to_string();
    let mut worker = SqliteWorker::spawn_script("postgres_worker.py", &[&port, driver, sslmode], &[]);
    if connect == Connect::BeforeAttach {
        worker.run("connect");
    }
    let mut daemon = AgentProcess::attach(worker.pid(), &agent.url(), &[]);
    daemon.wait_attached(ATTACH_TIMEOUT);
    if connect == Connect::Traced {
        worker.run("connect");
    }
    worker.run("work");
    worker.exit();
    let status = daemon.wait_exit(Duration::from_secs(15));
    let stderr = daemon.stderr_text();
    assert!(status.success(), "{status}\n{stderr}");
    let spans = agent.spans().into_iter().filter(|s| s["name"] == "postgres.query").collect();
    (spans, stderr, agent)
}

fn check(server: &PostgresServer, driver: &str, sslmode: &str) {
    let (spans, stderr, agent) = traced_work(server, driver, sslmode, Connect::Traced);
    let context = format!("{driver}: {spans:#?}\n{stderr}");
    let resources: Vec<&str> = spans.iter().map(|s| s["resource"].as_str().unwrap_or_default()).collect();
    let expected = WORK_RESOURCES;
    assert_eq!(resources, expected, "{context}");
    for span in &spans {
        assert_eq!((span["service"].as_str(), span["type"].as_str()), (Some("postgres"), Some("sql")), "{span:#}");
        assert_eq!(meta(span, "_dd.base_service"), "e2e-sqlite", "{span:#}");
        assert_eq!((meta(span, "db.system"), meta(span, "span.kind")), ("postgresql", "client"), "{span:#}");
        assert_eq!((meta(span, "db.name"), meta(span, "db.user")), ("shop", "app"), "{span:#}");
        assert_eq!(meta(span, "db.application"), "e2e-worker", "{span:#}");
        assert_eq!(meta(span, "out.host"), "127.0.0.1", "{span:#}");
        assert_eq!(span["metrics"]["network.destination.port"].as_f64(), Some(f64::from(server.port)), "{span:#}");
    }
    let find = |resource: &str| spans.iter().find(|s| s["resource"] == resource).unwrap();
    assert_eq!(find(expected[1])["metrics"]["db.row_count"].as_f64(), Some(1.0), "{context}");
    assert_eq!(find(expected[3])["metrics"]["db.row_count"].as_f64(), Some(1.0), "{context}");
    // 320 kB of rows, read in pieces the capture keeps the first 4 kB of: the span ends when the
    // result does; its count is known when the last read held the result's end whole.
    let large = find(expected[6]);
    let rows = large["metrics"]["db.row_count"].as_f64();
    assert!(rows.is_none() || rows == Some(20000.0), "{large:#}");
    assert_eq!(large["error"].as_i64().unwrap_or(0), 0, "{large:#}");
    let failed = find("SELECT * FROM nope");
    assert_eq!(failed["error"], 1, "{failed:#}");
    assert_eq!(meta(failed, "error.type"), "42P01", "{failed:#}");
    assert_eq!(meta(failed, "error.message"), "relation \"nope\" does not exist", "{failed:#}");
    let errors = spans.iter().filter(|s| s["error"].as_i64().unwrap_or(0) != 0).count();
    assert_eq!(errors, 1, "{context}");
    for request in agent.requests() {
        assert!(!request.body_contains("s3cret") && !request.body_contains("bob-"), "{request:?}");
    }
    agent.assert_checks_passed();
}

#[test]
fn psycopg2_and_psycopg_queries_are_spans_as_dd_trace_py_shows_them() {
    let _serial = ddtrace_tests::serial();
    let server = PostgresServer::start();
    check(&server, "psycopg2", "disable");
    check(&server, "psycopg", "disable");
}

/// Over TLS: the socket carries the SSL request, then ciphertext; the queries are read from the
/// plaintext at the TLS library (psycopg2's wheel bundles its own libssl, psycopg uses the
/// system's), and the spans are the same.
#[test]
fn queries_over_tls_are_read_at_the_tls_library_and_give_the_same_spans() {
    let _serial = ddtrace_tests::serial();
    let server = PostgresServer::start_with_tls();
    check(&server, "psycopg2", "require");
    check(&server, "psycopg", "require");
}

/// A connection opened before the attach (a live service's pool), on a port that is not
/// PostgreSQL's usual one: recognised by its next query's whole message, and followed from
/// there. The startup was missed, so the database, user and application are not known.
#[test]
fn a_connection_open_before_the_attach_on_another_port_gives_spans_from_its_next_query() {
    let _serial = ddtrace_tests::serial();
    let server = PostgresServer::start();
    for driver in ["psycopg2", "psycopg"] {
        let (spans, stderr, agent) = traced_work(&server, driver, "disable", Connect::BeforeAttach);
        let resources: Vec<&str> = spans.iter().map(|s| s["resource"].as_str().unwrap_or_default()).collect();
        assert_eq!(resources, WORK_RESOURCES, "{driver}: {spans:#?}\n{stderr}");
        for span in &spans {
            assert_eq!(meta(span, "db.system"), "postgresql", "{span:#}");
            assert_eq!(meta(span, "db.name"), "", "the startup was before the attach: {span:#}");
            assert_eq!(span["metrics"]["network.destination.port"].as_f64(), Some(f64::from(server.port)), "{span:#}");
        }
        agent.assert_checks_passed();
    }
}

/// A Flask view that queries PostgreSQL through psycopg2 (the view's own pooled connection, opened
/// at its first request): the queries' caller frames, recorded at their writes on the wire, show
/// the view; it is the request's child and the queries' parent, and the process's requests are
/// `flask.request`.
#[test]
fn a_flask_view_querying_postgres_is_the_parent_of_its_queries() {
    let _serial = ddtrace_tests::serial();
    let server = PostgresServer::start();
    let agent = TestAgent::start();
    let pg_port = format!("PGPORT={}", server.port);
    let app = ddtrace_tests::target_app::Gunicorn::serve("flask_postgres_app:app", 1, &["-e", &pg_port]);
    let pid = app.master_pid().to_string();
    let url = agent.url();
    let mut daemon = AgentProcess::start(&["--pid", &pid, "--agent-url", &url, "--service", "shop"]);
    daemon.wait_attached(Duration::from_secs(30));
    for uid in [41, 42] {
        let (status, body) = ddtrace_tests::http::get(app.port, &format!("/users/{uid}")).expect("the app answers");
        assert_eq!(status, 200, "{body}");
    }
    let spans = agent.wait_for_spans(Duration::from_secs(10), |spans| {
        spans.iter().filter(|s| s["name"] == "flask.request").count() >= 2
    });
    // The rule that served them, from the app's routing table, as dd-trace-py names them.
    let requests: Vec<&Value> =
        spans.iter().filter(|s| s["name"] == "flask.request" && s["resource"] == "GET /users/<int:uid>").collect();
    assert_eq!(requests.len(), 2, "{spans:#?}\n{}", daemon.stderr_text());
    for request in requests {
        let view = spans
            .iter()
            .find(|s| s["name"] == "flask_postgres_app.user" && s["parent_id"] == request["span_id"])
            .unwrap_or_else(|| panic!("the view of {request:#}\n{spans:#?}"));
        let queries: Vec<&str> = spans
            .iter()
            .filter(|s| s["name"] == "postgres.query" && s["parent_id"] == view["span_id"])
            .filter_map(|s| s["resource"].as_str())
            .collect();
        assert!(queries.len() >= 2, "the view's queries: {queries:?}\n{spans:#?}");
        assert_eq!(meta(request, "_dd.code_origin.frames.0.method"), "user");
        assert_eq!(meta(request, "http.route"), "/users/<int:uid>");
    }
    agent.assert_checks_passed();
    daemon.signal(libc::SIGINT);
    assert!(daemon.wait_exit(Duration::from_secs(10)).success());
    app.stop();
}
