//! Following the traced process tree: workers forked before and after the agent attached, a
//! process that execs, and a process killed with SIGKILL.

use std::{collections::HashSet, time::Duration};

use ddtrace_tests::{
    agent_process::AgentProcess,
    target_app::{Gunicorn, SqliteWorker},
    test_agent::TestAgent,
};
use serde_json::Value;

const ATTACH_TIMEOUT: Duration = Duration::from_secs(20);

/// Pids that served a sqlite.query span (roots carry the `process_id` metric).
fn pids_with_spans(spans: &[Value], resource_prefix: &str) -> HashSet<u32> {
    // `process_id` is on each trace's local root: the query itself when it is one, else the
    // request span it ran under (HTTP is traced too).
    let process_of_trace: std::collections::HashMap<String, u32> = spans
        .iter()
        .filter_map(|s| Some((s["trace_id"].to_string(), s["metrics"]["process_id"].as_f64()? as u32)))
        .collect();
    spans
        .iter()
        .filter(|s| s["resource"].as_str().unwrap_or("").starts_with(resource_prefix))
        .filter_map(|s| process_of_trace.get(&s["trace_id"].to_string()).copied())
        .collect()
}

/// Sends requests until `want` distinct workers answered (bounded), returning them.
fn workers_serving(server: &Gunicorn, want: usize) -> HashSet<u32> {
    let mut seen = HashSet::new();
    for _ in 0..400 {
        seen.insert(server.request());
        if seen.len() >= want {
            break;
        }
    }
    seen
}

/// A span's end, in Unix nanoseconds.
fn end_unix_ns(span: &Value) -> i64 {
    span["start"].as_i64().unwrap() + span["duration"].as_i64().unwrap()
}

/// Workers recycled every 5 requests (`--max-requests 5`): forks and exits all along. Every
/// request's trace reaches the agent within 2 s of its end, counted by polling the agent.
#[test]
fn traces_of_recycled_workers_arrive_within_two_seconds() {
    let _serial = ddtrace_tests::serial();
    let agent = TestAgent::start();
    let server = Gunicorn::start_with(2, &["--max-requests", "5"]);
    let mut daemon = AgentProcess::attach(server.master_pid(), &agent.url(), &[]);
    daemon.wait_attached(ATTACH_TIMEOUT);
    const REQUESTS: usize = 40;
    let mut workers = HashSet::new();
    for _ in 0..REQUESTS {
        workers.insert(server.request());
    }
    let sent = std::time::Instant::now();
    // The first time each request's server span is seen at the agent, against its end.
    let mut arrivals: std::collections::HashMap<u64, i64> = std::collections::HashMap::new();
    while sent.elapsed() < Duration::from_secs(8) && arrivals.len() < REQUESTS {
        let now = ddtrace_tests::unix_now_ns();
        for span in agent.spans().iter().filter(|s| s["meta"]["span.kind"] == "server") {
            let id = span["span_id"].as_u64().unwrap();
            arrivals.entry(id).or_insert(now - end_unix_ns(span));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let stderr = daemon.stderr_text();
    assert!(workers.len() >= 6, "workers were recycled: {workers:?}");
    assert_eq!(arrivals.len(), REQUESTS, "every request traced:\n{stderr}");
    let late: Vec<i64> = arrivals.values().map(|delay| delay / 1_000_000).filter(|ms| *ms > 2_100).collect();
    assert!(late.is_empty(), "traces later than 2 s after their end (ms): {late:?}\n{stderr}");
    let slowest = arrivals.values().max().unwrap() / 1_000_000;
    eprintln!("{REQUESTS} traces from {} workers, the slowest at the agent {slowest} ms after its end", workers.len());
    server.stop();
    assert!(daemon.wait_exit(Duration::from_secs(20)).success(), "{}", daemon.stderr_text());
    agent.assert_checks_passed();
}

/// A threaded server starts a thread per request: the kernel tells a new thread from a new
/// process at its `clone`, so threads cost no event and no look at `/proc`, while a fork still
/// gives its child its own tracing.
#[test]
fn new_threads_are_not_reported_as_processes() {
    let _serial = ddtrace_tests::serial();
    let agent = TestAgent::start();
    let mut worker = SqliteWorker::spawn();
    let mut daemon = AgentProcess::attach(worker.pid(), &agent.url(), &["--profiling-enabled", "false"]);
    daemon.wait_attached(ATTACH_TIMEOUT);
    worker.run("threads 300");
    worker.exit();
    let status = daemon.wait_exit(Duration::from_secs(15));
    let stderr = daemon.stderr_text();
    assert!(status.success(), "{status}\n{stderr}");
    let events: u64 = stderr
        .split("kernel: events=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no event count in:\n{stderr}"));
    assert!(events < 30, "300 threads gave {events} kernel events (one per thread before):\n{stderr}");
}

#[test]
fn gunicorn_workers_forked_before_and_after_attach_are_all_traced() {
    let _serial = ddtrace_tests::serial();
    let agent = TestAgent::start();
    let server = Gunicorn::start(2);
    let mut daemon = AgentProcess::attach(server.master_pid(), &agent.url(), &[]);
    daemon.wait_for_stderr("tracing child process", ATTACH_TIMEOUT);
    daemon.wait_attached(ATTACH_TIMEOUT);
    let before = workers_serving(&server, 2);
    assert_eq!(before.len(), 2, "both workers answered: {before:?}");

    // A worker forked after the agent attached: the master replaces one it lost.
    let replaced = *before.iter().next().unwrap();
    // SAFETY: plain kill(2) of a gunicorn worker.
    unsafe { libc::kill(replaced as i32, libc::SIGKILL) };
    daemon.wait_for_stderr("forked", ATTACH_TIMEOUT);
    let mut all = before.clone();
    for _ in 0..400 {
        all.insert(server.request());
        if all.len() >= 3 {
            break;
        }
    }
    assert_eq!(all.len(), 3, "a new worker answered: {all:?}\n{}", daemon.stderr_text());
    let after: HashSet<u32> = all.difference(&before).copied().collect();
    // Its first requests are traced: it was tracked before its first instruction.
    for _ in 0..20 {
        server.request();
    }

    server.stop();
    let status = daemon.wait_exit(Duration::from_secs(20));
    let stderr = daemon.stderr_text();
    assert!(status.success(), "{status}\n{stderr}");
    assert!(stderr.contains("target exited"), "{stderr}");
    let spans = agent.spans();
    let traced = pids_with_spans(&spans, "INSERT INTO hits VALUES");
    for pid in before.iter().chain(after.iter()) {
        assert!(traced.contains(pid), "no spans from worker {pid}; traced {traced:?}\n{stderr}");
    }
    agent.assert_checks_passed();
}

#[test]
fn a_process_that_execs_is_instrumented_again() {
    let _serial = ddtrace_tests::serial();
    let agent = TestAgent::start();
    let mut worker = SqliteWorker::spawn();
    worker.run("import");
    let mut daemon = AgentProcess::attach(worker.pid(), &agent.url(), &[]);
    daemon.wait_for_stderr("sqlite: attached 4 probes to", ATTACH_TIMEOUT);
    worker.run("work 1");
    worker.run("exec");
    daemon.wait_for_stderr("exec'd", ATTACH_TIMEOUT);
    // The new image loads libsqlite3 again (by dlopen) and prepares its statements anew.
    worker.run("import");
    std::thread::sleep(Duration::from_millis(100));
    worker.run("work 2");
    worker.exit();
    let status = daemon.wait_exit(Duration::from_secs(15));
    let stderr = daemon.stderr_text();
    assert!(status.success(), "{status}\n{stderr}");
    let spans = agent.spans();
    let inserts = ddtrace_tests::with_resource(&spans, "INSERT INTO users ( name, secret ) VALUES").len();
    assert_eq!(inserts, 3, "1 before and 2 after exec:\n{spans:#?}\n{stderr}");
    agent.assert_checks_passed();
}

#[test]
fn a_target_killed_with_sigkill_is_noticed_and_flushed() {
    let _serial = ddtrace_tests::serial();
    let agent = TestAgent::start();
    let mut worker = SqliteWorker::spawn();
    worker.run("import");
    let mut daemon = AgentProcess::attach(worker.pid(), &agent.url(), &[]);
    daemon.wait_for_stderr("sqlite: attached 4 probes to", ATTACH_TIMEOUT);
    worker.run("work 2");
    worker.kill(libc::SIGKILL);
    let status = daemon.wait_exit(Duration::from_secs(15));
    let stderr = daemon.stderr_text();
    assert!(status.success(), "{status}\n{stderr}");
    assert!(stderr.contains("target exited"), "{stderr}");
    let spans = agent.spans();
    let inserts = ddtrace_tests::with_resource(&spans, "INSERT INTO users ( name, secret ) VALUES").len();
    assert_eq!(inserts, 2, "{stderr}");
}
