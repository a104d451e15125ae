//! Databases on the wire from Node.js: pg, mysql2 and redis from npm, whose protocol code is
//! JavaScript (no library to probe), against real PostgreSQL, MariaDB and Redis servers, traced
//! from outside: the same spans as from Python's drivers.

use std::time::Duration;

use ddtrace_tests::{
    agent_process::AgentProcess, mysql_server::MysqlServer, postgres_server::PostgresServer, redis_server::RedisServer,
    target_app::SqliteWorker, test_agent::TestAgent,
};
use serde_json::Value;

const ATTACH_TIMEOUT: Duration = Duration::from_secs(20);

fn meta<'a>(span: &'a Value, key: &str) -> &'a str {
    span["meta"][key].as_str().unwrap_or_default()
}

fn resources<'a>(spans: &'a [Value], name: &str) -> Vec<&'a str> {
    spans.iter().filter(|s| s["name"] == name).map(|s| s["resource"].as_str().unwrap_or_default()).collect()
}

fn error_of<'a>(spans: &'a [Value], name: &str) -> Vec<(&'a str, &'a str)> {
    spans
        .iter()
        .filter(|s| s["name"] == name && s["error"].as_i64().unwrap_or(0) != 0)
        .map(|s| (meta(s, "error.type"), meta(s, "error.message")))
        .collect()
}

#[test]
fn node_pg_mysql2_and_redis_clients_give_the_same_spans_as_pythons() {
    let _serial = ddtrace_tests::serial();
    let (postgres, mysql, redis) = (PostgresServer::start(), MysqlServer::start(), RedisServer::start());
    let agent = TestAgent::start();
    let mut worker = SqliteWorker::spawn_node_script("db_worker.js", &[]);
    let mut daemon = AgentProcess::attach(worker.pid(), &agent.url(), &[]);
    daemon.wait_attached(ATTACH_TIMEOUT);
    worker.run(&format!("pg {}", postgres.port));
    worker.run(&format!("mysql {}", mysql.port));
    worker.run(&format!("redis {}", redis.port));
    worker.exit();
    let status = daemon.wait_exit(Duration::from_secs(15));
    let stderr = daemon.stderr_text();
    assert!(status.success(), "{status}\n{stderr}");
    let spans = agent.spans();
    let context = format!("{spans:#?}\n{stderr}");

    // pg: the extended protocol for every query; a named statement's second run binds it by
    // name only, and still carries its SQL.
    assert_eq!(
        resources(&spans, "postgres.query"),
        [
            "CREATE TABLE IF NOT EXISTS node_users ( id serial PRIMARY KEY, name text, secret text )",
            "INSERT INTO node_users ( name, secret ) VALUES ( ? )",
            "SELECT id FROM node_users WHERE name = ?",
            "SELECT id FROM node_users WHERE name = ?",
            "SELECT * FROM nope",
        ],
        "{context}"
    );
    assert_eq!(error_of(&spans, "postgres.query"), [("42P01", "relation \"nope\" does not exist")], "{context}");
    for span in spans.iter().filter(|s| s["name"] == "postgres.query") {
        assert_eq!((meta(span, "db.name"), meta(span, "db.application")), ("shop", "node-worker"), "{span:#}");
    }

    // mysql2: prepared statements (COM_STMT_PREPARE, then EXECUTE) named by their SQL.
    let mysql_resources = resources(&spans, "mysql.query");
    for expected in [
        // As libdatadog (the agent) obfuscates it: the comma after `( ? )` goes too.
        "CREATE TABLE IF NOT EXISTS node_users ( id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR ( ? ) secret TEXT )",
        "INSERT INTO node_users ( name, secret ) VALUES ( ? )",
        "SELECT id FROM node_users WHERE name = ?",
        "SELECT * FROM nope",
    ] {
        assert!(mysql_resources.contains(&expected), "{expected} missing from {mysql_resources:#?}\n{context}");
    }
    assert_eq!(error_of(&spans, "mysql.query"), [("1146", "Table 'shop.nope' doesn't exist")], "{context}");
    for span in spans.iter().filter(|s| s["name"] == "mysql.query") {
        assert_eq!((meta(span, "db.name"), meta(span, "db.user")), ("shop", "app"), "{span:#}");
    }

    // redis: node-redis's own set-up at connect gives no span; MULTI/EXEC is one span.
    let redis_resources = resources(&spans, "redis.command");
    assert!(redis_resources.contains(&"SET") && redis_resources.contains(&"GET"), "{context}");
    assert!(redis_resources.iter().any(|r| r.contains("INCR")), "the transaction: {redis_resources:?}\n{context}");
    assert_eq!(error_of(&spans, "redis.command").len(), 1, "the LPUSH on a string: {context}");
    assert!(!redis_resources.iter().any(|r| r.starts_with("CLIENT") || r.starts_with("HELLO")), "{redis_resources:?}");

    for request in agent.requests() {
        assert!(!request.body_contains("s3cret"), "{request:?}");
    }
    agent.assert_checks_passed();
}
