//! SQLite queries of a live, unmodified Python process, traced by the real daemon with the real
//! eBPF programs, checked in what reached Datadog's test agent.

use std::time::Duration;

use ddtrace_tests::{
    agent_process::AgentProcess, target_app::SqliteWorker, test_agent::TestAgent, unix_now_ns, with_resource,
};
use serde_json::Value;

const ATTACH_TIMEOUT: Duration = Duration::from_secs(20);
const UNKNOWN_STATEMENT: &str = "sqlite3_step (statement prepared before ddtrace-agent attached)";

/// The test agent shows a root's parent id 0 as null.
fn parent_id(span: &Value) -> u64 {
    span["parent_id"].as_u64().unwrap_or(0)
}

fn resource(span: &Value) -> &str {
    span["resource"].as_str().unwrap_or("")
}

/// What every `sqlite.query` span must look like.
fn assert_sqlite_span_shape(span: &Value, window: (i64, i64)) {
    assert_eq!(span["name"], "sqlite.query", "{span}");
    assert_eq!(span["type"], "sql", "{span}");
    assert_eq!(span["service"], "e2e-sqlite", "{span}");
    assert_eq!(span["meta"]["db.system"], "sqlite", "{span}");
    assert_eq!(span["meta"]["component"], "sqlite", "{span}");
    assert_eq!(span["meta"]["span.kind"], "client", "{span}");
    let start = span["start"].as_i64().unwrap();
    let duration = span["duration"].as_i64().unwrap();
    assert!(duration > 0 && duration < 1_000_000_000, "implausible duration {duration} ns: {span}");
    assert!(
        start >= window.0 && start + duration <= window.1,
        "span outside the test's time window {window:?}: {span}"
    );
    assert!(!resource(span).contains("hunter2"), "secret leaked into the resource: {span}");
}

/// Parents are in the same trace; the chunk's root carries `_dd.p.tid` like Datadog tracers.
fn assert_trace_structure(agent: &TestAgent) {
    for trace in agent.traces() {
        let root = trace.iter().find(|s| parent_id(s) == 0).expect("each trace has a root");
        let tid = root["meta"]["_dd.p.tid"].as_str().expect("root has _dd.p.tid");
        assert_eq!(tid.len(), 16, "{root}");
        for span in &trace {
            assert_eq!(span["trace_id"], root["trace_id"], "{span}");
            let parent = parent_id(span);
            assert!(parent == 0 || trace.iter().any(|s| s["span_id"].as_u64() == Some(parent)), "orphan span {span}");
        }
    }
}

#[test]
fn attach_before_import_traces_every_statement_run_at_once_after_a_lazy_import() {
    let _serial = ddtrace_tests::serial();
    let agent = TestAgent::start();
    let mut worker = SqliteWorker::spawn();
    let window_start = unix_now_ns();
    let mut daemon = AgentProcess::attach(worker.pid(), &agent.url(), &[]);
    // libsqlite3 is not mapped yet, but its file is known: its probes are in place before the
    // import maps it, so the first statement is seen whatever follows the import at once.
    daemon.wait_for_stderr("(not loaded yet: in place for its first call)", ATTACH_TIMEOUT);
    assert!(daemon.stderr_text().contains("sqlite: attached 4 probes to"), "{}", daemon.stderr_text());

    // Two threads, 62 statements each, from the microsecond after `import sqlite3`.
    worker.run("burst 2 60");
    worker.run("work 3");
    worker.run("fail");
    worker.run("txn");
    worker.exit();

    // The target exited: the daemon flushes and exits cleanly by itself.
    let status = daemon.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "daemon exit {status}:\n{}", daemon.stderr_text());
    let window = (window_start, unix_now_ns());
    let spans = agent.spans();
    let stderr = daemon.stderr_text();

    // Not one statement of the burst is missed.
    assert_eq!(with_resource(&spans, "CREATE TABLE burst").len(), 2, "{spans:#?}\n{stderr}");
    assert_eq!(with_resource(&spans, "INSERT INTO burst").len(), 120, "{stderr}");
    assert_eq!(with_resource(&spans, "SELECT count ( * ) FROM burst").len(), 2, "{spans:#?}");
    let create = with_resource(&spans, "CREATE TABLE users");
    let inserts = with_resource(&spans, "INSERT INTO users ( name, secret ) VALUES");
    let selects = with_resource(&spans, "SELECT id, name FROM users WHERE name = ? AND id > ?");
    assert_eq!(create.len(), 1, "spans: {spans:#?}\n{stderr}");
    assert_eq!(inserts.len(), 3, "spans: {spans:#?}");
    assert_eq!(selects.len(), 3, "spans: {spans:#?}");
    // `work` and `txn` each commit; the `BEGIN ` the driver issued before their INSERTs is its
    // own (dd-trace-py shows none), and so are SQLite's schema reads.
    assert_eq!(with_resource(&spans, "COMMIT").len(), 2, "spans: {spans:#?}");
    assert_eq!(with_resource(&spans, "INSERT INTO users ( name ) VALUES").len(), 1, "{spans:#?}");
    assert!(with_resource(&spans, "BEGIN").is_empty(), "{spans:#?}");
    assert!(!spans.iter().any(|s| resource(s).contains("sqlite_master")), "{spans:#?}");
    assert_eq!(spans.len(), 124 + 1 + 3 + 3 + 2 + 2 + 1, "nothing else: {spans:#?}");
    for span in spans.iter() {
        assert_sqlite_span_shape(span, window);
    }
    assert!(
        spans.iter().all(|s| resource(s) != UNKNOWN_STATEMENT),
        "every statement was prepared after attach: {spans:#?}"
    );
    // Obfuscated as the Datadog agent does.
    assert_eq!(resource(selects[0]), "SELECT id, name FROM users WHERE name = ? AND id > ?");

    // SQLite re-reads its schema while it runs CREATE TABLE: that query is SQLite's, not a child.
    let create_id = create[0]["span_id"].as_u64().unwrap();
    assert!(!spans.iter().any(|s| parent_id(s) == create_id), "{spans:#?}");

    // The failing statements are errors with SQLite's message.
    let constraint = with_resource(&spans, "INSERT INTO users ( id, name )");
    assert_eq!(constraint.len(), 1, "{spans:#?}");
    assert_eq!(constraint[0]["error"], 1);
    assert_eq!(constraint[0]["meta"]["error.type"], "SQLITE_CONSTRAINT");
    let syntax = with_resource(&spans, "SELEC broken");
    assert_eq!(syntax.len(), 1, "{spans:#?}");
    assert_eq!(syntax[0]["error"], 1);
    assert!(syntax[0]["meta"]["error.message"].as_str().unwrap().contains("SQL logic error"));
    let errors = spans.iter().filter(|s| s["error"] == 1).count();
    assert_eq!(errors, 2, "only the two failing statements are errors: {spans:#?}");

    assert_trace_structure(&agent);
    agent.assert_checks_passed();
    assert!(stderr.contains("dropped_ring_full=0"), "{stderr}");
    assert!(stderr.contains("target exited"), "{stderr}");
}

#[test]
fn attach_after_import_names_cached_statements_and_new_ones() {
    let _serial = ddtrace_tests::serial();
    let agent = TestAgent::start();
    let mut worker = SqliteWorker::spawn();
    // These statements are prepared now and kept in Python's statement cache.
    worker.run("work 1");
    let window_start = unix_now_ns();
    let mut daemon = AgentProcess::attach(worker.pid(), &agent.url(), &[]);
    daemon.wait_for_stderr("sqlite: attached 4 probes to", ATTACH_TIMEOUT);
    worker.run("work 2");
    // The SQL of cached statements is read from the live target when the daemon handles their
    // first execution (within its 100 ms drain interval): a live service, not one about to exit.
    std::thread::sleep(Duration::from_millis(500));
    worker.run("fail");
    // Everything done right before exit is flushed too.
    worker.run("work 1");
    worker.exit();
    let status = daemon.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "daemon exit {status}:\n{}", daemon.stderr_text());
    let window = (window_start, unix_now_ns());

    let spans = agent.spans();
    for span in &spans {
        assert_sqlite_span_shape(span, window);
    }
    // 3 INSERT + 3 SELECT executions of statements prepared and cached before attach: their
    // SQL is read back from the target, obfuscated like the rest.
    let stderr = daemon.stderr_text();
    assert_eq!(with_resource(&spans, "INSERT INTO users ( name, secret ) VALUES").len(), 3, "{spans:#?}\n{stderr}");
    assert_eq!(with_resource(&spans, "SELECT id, name FROM users WHERE name = ? AND id > ?").len(), 3, "{spans:#?}");
    assert!(with_resource(&spans, UNKNOWN_STATEMENT).is_empty(), "{spans:#?}");
    // Statements prepared after attach are named.
    assert_eq!(with_resource(&spans, "SELEC broken").len(), 1, "{spans:#?}");
    assert_eq!(with_resource(&spans, "INSERT INTO users ( id, name )").len(), 1, "{spans:#?}");
    assert_trace_structure(&agent);
    agent.assert_checks_passed();
}

/// A private copy of libsqlite3 found through the target's own `LD_LIBRARY_PATH` (as an app
/// shipping its libraries would): foreseen there, probed before the import maps it, once.
#[test]
fn a_library_on_the_targets_ld_library_path_is_probed_before_it_is_loaded() {
    let _serial = ddtrace_tests::serial();
    let agent = TestAgent::start();
    let dir = std::env::temp_dir().join(format!("ddtrace-ld-path-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let private = dir.join("libsqlite3.so.0");
    std::fs::copy("/usr/lib/x86_64-linux-gnu/libsqlite3.so.0", &private).unwrap();
    let mut worker = SqliteWorker::spawn_with_env(&[("LD_LIBRARY_PATH", dir.to_str().unwrap())]);
    let mut daemon = AgentProcess::attach(worker.pid(), &agent.url(), &[]);
    daemon.wait_for_stderr(
        &format!("sqlite: attached 4 probes to {} (not loaded yet", private.display()),
        ATTACH_TIMEOUT,
    );
    worker.run("burst 2 20");
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", worker.pid())).unwrap();
    assert!(maps.contains(private.to_str().unwrap()), "the private copy is the one loaded:\n{maps}");
    worker.exit();
    let status = daemon.wait_exit(Duration::from_secs(15));
    let stderr = daemon.stderr_text();
    assert!(status.success(), "{status}\n{stderr}");
    let spans = agent.spans();
    assert_eq!(with_resource(&spans, "INSERT INTO burst").len(), 40, "each once:\n{stderr}");
    assert_eq!(spans.len(), 2 * 22, "{spans:#?}");
    std::fs::remove_dir_all(&dir).unwrap();
    agent.assert_checks_passed();
}

/// The one line a refused `--pid` prints.
fn refusal(args: &[&str]) -> String {
    let mut daemon = AgentProcess::start(args);
    let status = daemon.wait_exit(Duration::from_secs(10));
    assert!(!status.success(), "{}", daemon.stderr_text());
    let stderr = daemon.stderr_text();
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line expected:\n{stderr}");
    lines[0].to_string()
}

#[test]
fn a_kernel_thread_or_the_agent_itself_is_refused_with_one_line() {
    let _serial = ddtrace_tests::serial();
    // kthreadd: followed, it would have meant every kernel thread.
    let line = refusal(&["--pid", "2", "--exporter", "console"]);
    assert!(line.contains("not tracing pid 2 (kthreadd): it is a kernel thread"), "{line}");
    // `exec ddtrace-agent --pid $$`: the shell's pid is now the agent's.
    let agent = ddtrace_tests::agent_process::agent_binary().display().to_string();
    let output = std::process::Command::new("sh")
        .args(["-c", &format!("exec '{agent}' --pid $$ --exporter console")])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.trim().lines().count() == 1 && stderr.contains("it is ddtrace-agent itself"), "{stderr}");
}

/// `ddtrace-agent --pid $$` from a shell traces the shell, not the agent it started (nor its
/// own frames in the profile).
#[test]
fn the_agent_started_by_its_target_does_not_trace_itself() {
    let _serial = ddtrace_tests::serial();
    let agent = ddtrace_tests::agent_process::agent_binary().display().to_string();
    let mut shell = std::process::Command::new("sh")
        .args(["-c", &format!("'{agent}' --pid $$ --exporter console 2>&1; echo agent-ended")])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(shell.stdout.take().unwrap());
    let mut printed = String::new();
    let deadline = std::time::Instant::now() + ATTACH_TIMEOUT;
    while !printed.contains("attached: tracing") && std::time::Instant::now() < deadline {
        use std::io::BufRead;
        let mut line = String::new();
        if stdout.read_line(&mut line).unwrap() == 0 {
            break;
        }
        printed.push_str(&line);
    }
    let agent_pids: Vec<u32> = ddtrace_tests::children_of(shell.id());
    for pid in &agent_pids {
        unsafe { libc::kill(*pid as i32, libc::SIGINT) };
    }
    let _ = std::io::Read::read_to_string(&mut stdout, &mut printed);
    let _ = shell.wait();
    assert!(printed.contains("attached: tracing 1 process(es)"), "the shell only:\n{printed}");
    assert!(!printed.contains("tracing child process"), "{printed}");
}

#[test]
fn a_pid_that_does_not_exist_is_one_clear_error() {
    let _serial = ddtrace_tests::serial();
    // Find a pid that is not in use.
    let pid = (400_000..500_000u32).find(|p| !std::path::Path::new(&format!("/proc/{p}")).exists()).unwrap();
    let mut daemon = AgentProcess::start(&["--pid", &pid.to_string(), "--exporter", "console"]);
    let status = daemon.wait_exit(Duration::from_secs(10));
    assert!(!status.success());
    let stderr = daemon.stderr_text();
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line expected:\n{stderr}");
    assert!(lines[0].contains(&format!("process {pid} does not exist")), "{stderr}");
}

#[test]
fn a_process_without_sqlite_keeps_running_and_says_what_it_waits_for() {
    let _serial = ddtrace_tests::serial();
    let agent = TestAgent::start();
    let worker = SqliteWorker::spawn(); // never imports sqlite3
    let mut daemon = AgentProcess::attach(worker.pid(), &agent.url(), &[]);
    daemon.wait_for_stderr("(not loaded yet: in place for its first call)", ATTACH_TIMEOUT);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(daemon.is_running(), "daemon stopped:\n{}", daemon.stderr_text());
    daemon.signal(libc::SIGINT);
    let status = daemon.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "SIGINT is a clean stop: {status}\n{}", daemon.stderr_text());
    assert!(daemon.stderr_text().contains("stopped by signal"), "{}", daemon.stderr_text());
    assert!(agent.spans().is_empty());
    worker.exit();
}

#[test]
fn an_unreachable_agent_loses_the_traces_but_not_the_target_nor_the_daemon() {
    let _serial = ddtrace_tests::serial();
    let closed_port = ddtrace_tests::http::free_port();
    let mut worker = SqliteWorker::spawn();
    worker.run("import");
    let mut daemon = AgentProcess::attach(worker.pid(), &format!("http://127.0.0.1:{closed_port}"), &[]);
    daemon.wait_for_stderr("sqlite: attached 4 probes to", ATTACH_TIMEOUT);
    worker.run("work 2");
    // The target is not slowed down or stopped by a dead intake.
    worker.run("work 2");
    worker.exit();
    let status = daemon.wait_exit(Duration::from_secs(30));
    let stderr = daemon.stderr_text();
    assert!(status.success(), "{status}\n{stderr}");
    assert!(stderr.contains(&format!("127.0.0.1:{closed_port} is unreachable")), "the user is told why:\n{stderr}");
    assert!(stderr.contains("failed_chunks=") && !stderr.contains("failed_chunks=0"), "losses are counted:\n{stderr}");
}

#[test]
fn without_privileges_the_daemon_says_what_it_needs() {
    let _serial = ddtrace_tests::serial();
    let worker = SqliteWorker::spawn();
    // As `nobody`, the target (root's) cannot even be inspected.
    let output = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(ddtrace_tests::agent_process::agent_binary())
        .args(["--pid", &worker.pid().to_string(), "--exporter", "console"])
        .output()
        .expect("setpriv runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    // Before anything else: which capabilities are missing, and what to do.
    assert!(stderr.contains("missing capabilities: CAP_SYS_ADMIN") && stderr.contains("root"), "{stderr}");
    assert_eq!(stderr.lines().filter(|l| !l.trim().is_empty()).count(), 1, "one clear line:\n{stderr}");
}

#[test]
fn sql_passed_with_a_length_is_captured_up_to_that_length_only() {
    let _serial = ddtrace_tests::serial();
    let agent = TestAgent::start();
    let mut worker = SqliteWorker::spawn();
    worker.run("import");
    let mut daemon = AgentProcess::attach(worker.pid(), &agent.url(), &[]);
    daemon.wait_for_stderr("sqlite: attached 4 probes to", ATTACH_TIMEOUT);
    worker.run("with_length");
    worker.exit();
    let status = daemon.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "{status}\n{}", daemon.stderr_text());
    let spans = agent.spans();
    assert!(spans.iter().all(|s| !resource(s).contains("LEAKED")), "read past nByte: {spans:#?}");
    assert_eq!(with_resource(&spans, "SELECT ?").len(), 1, "{spans:#?}");
}

#[test]
fn the_console_exporter_prints_span_trees_without_any_agent() {
    let _serial = ddtrace_tests::serial();
    let mut worker = SqliteWorker::spawn();
    worker.run("import");
    let pid = worker.pid().to_string();
    let mut daemon = AgentProcess::start(&["--pid", &pid, "--service", "console-demo", "--exporter", "console"]);
    daemon.wait_for_stderr("sqlite: attached 4 probes to", ATTACH_TIMEOUT);
    worker.run("work 1");
    worker.exit();
    let status = daemon.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "{status}\n{}", daemon.stderr_text());
    let stdout = daemon.stdout_text();
    // A trace header, then the CREATE TABLE span, without SQLite's own schema query under it.
    assert!(stdout.lines().any(|l| l.starts_with("trace ") && l.contains("(service console-demo)")), "{stdout}");
    let create =
        stdout.lines().position(|l| l.trim_start().starts_with("sqlite.query  CREATE TABLE users")).expect(&stdout);
    let next = stdout.lines().nth(create + 1).unwrap_or("");
    assert!(next.starts_with("trace "), "the CREATE has no child:\n{stdout}");
    assert!(!stdout.contains("sqlite_master"), "{stdout}");
    assert!(
        stdout.contains("INSERT INTO users ( name, secret ) VALUES ( ? )") && stdout.contains(" ms  [sql]"),
        "{stdout}"
    );
    assert!(!stdout.contains("hunter2"), "{stdout}");
}
