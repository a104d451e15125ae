//! MySQL on the wire: PyMySQL (pure Python) against a real MariaDB 10.11 over TCP and over its
//! Unix socket, traced from outside. Each `execute` is a `mysql.query` span (service `mysql`,
//! resource the obfuscated SQL, user and database from the handshake), an error its code and
//! message, a result its rows; no literal leaves the host.

use std::time::Duration;

use ddtrace_tests::{
    agent_process::AgentProcess, mysql_server::MysqlServer, target_app::SqliteWorker, test_agent::TestAgent,
};
use serde_json::Value;

const ATTACH_TIMEOUT: Duration = Duration::from_secs(20);

/// The resources of the worker's `work`, in order.
const WORK_RESOURCES: [&str; 6] = [
    "CREATE TABLE IF NOT EXISTS users ( id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR ( ? ) UNIQUE, secret TEXT )",
    "INSERT INTO users ( name, secret ) VALUES ( ? )",
    "COMMIT",
    "SELECT id, name FROM users WHERE name = ?",
    "SELECT * FROM nope",
    "SELECT seq FROM seq_1_to_5000",
];

/// The worker's `work` traced, its connection made by `connect` (`connect` or `connect_socket`)
/// after the attach or, with `before_attach`, before it; the `mysql.query` spans and the agent's
/// stderr.
fn traced_work(server: &MysqlServer, connect: &str, before_attach: bool) -> (Vec<Value>, String, TestAgent) {
    traced_commands(server, &[connect], &["work"], before_attach, &[])
}

/// The worker's `before` commands run before the attach (with `before_attach`) or after it,
/// then its `after` ones, traced by an agent with `env`; as [`traced_work`].
fn traced_commands(
    server: &MysqlServer,
    before: &[&str],
    after: &[&str],
    before_attach: bool,
    env: &[(&str, &str)],
) -> (Vec<Value>, String, TestAgent) {
    let agent = TestAgent::start();
    let port = server.port.to_string();
    let socket = server.socket.display().to_string();
    let mut worker = SqliteWorker::spawn_script("mysql_worker.py", &[&port, &socket], &[]);
    if before_attach {
        before.iter().for_each(|command| worker.run(command));
    }
    let mut daemon = AgentProcess::attach_with_env(worker.pid(), &agent.url(), env);
    daemon.wait_attached(ATTACH_TIMEOUT);
    if !before_attach {
        before.iter().for_each(|command| worker.run(command));
    }
    after.iter().for_each(|command| worker.run(command));
    worker.exit();
    let status = daemon.wait_exit(Duration::from_secs(15));
    let stderr = daemon.stderr_text();
    assert!(status.success(), "{status}\n{stderr}");
    let spans = agent.spans().into_iter().filter(|s| s["name"] == "mysql.query").collect();
    (spans, stderr, agent)
}

fn meta<'a>(span: &'a Value, key: &str) -> &'a str {
    span["meta"][key].as_str().unwrap_or_default()
}

#[test]
fn pymysql_queries_over_tcp_and_a_unix_socket_are_spans_as_dd_trace_py_shows_them() {
    let _serial = ddtrace_tests::serial();
    let server = MysqlServer::start();
    for (connect, over_socket) in [("connect", false), ("connect_socket", true)] {
        let (spans, stderr, agent) = traced_work(&server, connect, false);
        let context = format!("{connect}: {spans:#?}\n{stderr}");
        let resources: Vec<&str> = spans.iter().map(|s| s["resource"].as_str().unwrap_or_default()).collect();
        // PyMySQL's own set-up queries at connect (SET AUTOCOMMIT...) are real round trips: kept.
        let expected = WORK_RESOURCES;
        let application: Vec<&str> = resources.iter().copied().filter(|r| expected.contains(r)).collect();
        assert_eq!(application, expected, "{context}");
        for span in &spans {
            assert_eq!((span["service"].as_str(), span["type"].as_str()), (Some("mysql"), Some("sql")), "{span:#}");
            assert_eq!((meta(span, "db.system"), meta(span, "span.kind")), ("mysql", "client"), "{span:#}");
            assert_eq!((meta(span, "db.name"), meta(span, "db.user")), ("shop", "app"), "{span:#}");
            if over_socket {
                assert_eq!(meta(span, "out.host"), "localhost", "{span:#}");
            } else {
                assert_eq!(meta(span, "out.host"), "127.0.0.1", "{span:#}");
                assert_eq!(span["metrics"]["network.destination.port"].as_f64(), Some(f64::from(server.port)));
            }
        }
        let find = |resource: &str| spans.iter().find(|s| s["resource"] == resource).unwrap();
        assert_eq!(find(expected[1])["metrics"]["db.row_count"].as_f64(), Some(1.0), "{context}");
        assert_eq!(find(expected[3])["metrics"]["db.row_count"].as_f64(), Some(1.0), "{context}");
        let large = find(expected[5]);
        let rows = large["metrics"]["db.row_count"].as_f64();
        assert!(rows.is_none() || rows == Some(5000.0), "{large:#}");
        let failed = find("SELECT * FROM nope");
        assert_eq!(failed["error"], 1, "{failed:#}");
        assert_eq!(meta(failed, "error.type"), "1146", "{failed:#}");
        assert_eq!(meta(failed, "error.message"), "Table 'shop.nope' doesn't exist", "{failed:#}");
        let errors = spans.iter().filter(|s| s["error"].as_i64().unwrap_or(0) != 0).count();
        assert_eq!(errors, 1, "{context}");
        for request in agent.requests() {
            assert!(!request.body_contains("s3cret") && !request.body_contains("bob-"), "{request:?}");
        }
        agent.assert_checks_passed();
    }
}

/// A connection opened before the attach on a port that is not MySQL's usual one: recognised
/// by its next command's whole packet, and followed from there (the handshake was missed: no
/// database or user).
#[test]
fn a_connection_open_before_the_attach_on_another_port_gives_spans_from_its_next_query() {
    let _serial = ddtrace_tests::serial();
    let server = MysqlServer::start();
    let (spans, stderr, agent) = traced_work(&server, "connect", true);
    let resources: Vec<&str> = spans.iter().map(|s| s["resource"].as_str().unwrap_or_default()).collect();
    assert_eq!(resources, WORK_RESOURCES, "{spans:#?}\n{stderr}");
    for span in &spans {
        assert_eq!(meta(span, "db.system"), "mysql", "{span:#}");
        assert_eq!(meta(span, "db.name"), "", "the handshake was before the attach: {span:#}");
        assert_eq!(span["metrics"]["network.destination.port"].as_f64(), Some(f64::from(server.port)), "{span:#}");
    }
    agent.assert_checks_passed();
}

/// Connections over the Unix socket one after the other, each closed before the next: the
/// kernel gives no sign of a Unix socket's close, and the next socket gets the same fd (and may
/// get the same kernel object); each is still its own connection, with its own handshake's user.
#[test]
fn unix_socket_connections_closed_and_opened_again_are_each_their_own() {
    let _serial = ddtrace_tests::serial();
    let server = MysqlServer::start();
    let users = ["alice", "bob", "carol"];
    let mut commands = Vec::new();
    for user in users {
        commands.extend([format!("connect_socket_as {user}"), "work".to_string(), "close".to_string()]);
    }
    let commands: Vec<&str> = commands.iter().map(String::as_str).collect();
    let (spans, stderr, agent) = traced_commands(&server, &[], &commands, false, &[]);
    let context = format!("{spans:#?}\n{stderr}");
    let work: Vec<(&str, &str)> = spans
        .iter()
        .filter(|s| WORK_RESOURCES.contains(&s["resource"].as_str().unwrap_or_default()))
        .map(|s| (meta(s, "db.user"), s["resource"].as_str().unwrap_or_default()))
        .collect();
    let expected: Vec<(&str, &str)> =
        users.iter().flat_map(|user| WORK_RESOURCES.iter().map(move |resource| (*user, *resource))).collect();
    assert_eq!(work, expected, "{context}");
    // PyMySQL's connections, as the agent counted them at exit.
    assert!(stderr.contains(" mysql=3 "), "three connections, not one glued from several: {context}");
    agent.assert_checks_passed();
}

/// Kernels before 6.3 have no socket-layer tracepoints: the agent follows sockets from the
/// socket system calls' tracepoints there (`DDTRACE_SOCKET_HOOKS=syscalls` picks them on any
/// kernel), with the same spans, over TCP and a Unix socket.
#[test]
fn the_system_call_tracepoints_of_older_kernels_give_the_same_spans() {
    let _serial = ddtrace_tests::serial();
    let server = MysqlServer::start();
    for (hooks, layer) in [(None, true), (Some("syscalls"), false)] {
        let env: Vec<(&str, &str)> = hooks.map(|h| ("DDTRACE_SOCKET_HOOKS", h)).into_iter().collect();
        for connect in ["connect_as", "connect_socket_as"] {
            let user = format!("{}-{connect}", hooks.unwrap_or("default"));
            let command = format!("{connect} {user}");
            let (spans, stderr, agent) = traced_commands(&server, &[&command], &["work"], false, &env);
            let context = format!("{hooks:?} {connect}: {spans:#?}\n{stderr}");
            assert_eq!(stderr.contains("socket traffic from the socket layer's tracepoints"), layer, "{context}");
            let resources: Vec<&str> = spans.iter().map(|s| s["resource"].as_str().unwrap_or_default()).collect();
            let application: Vec<&str> = resources.iter().copied().filter(|r| WORK_RESOURCES.contains(r)).collect();
            assert_eq!(application, WORK_RESOURCES, "{context}");
            assert!(spans.iter().all(|s| meta(s, "db.user") == user), "{context}");
            agent.assert_checks_passed();
        }
    }
}
