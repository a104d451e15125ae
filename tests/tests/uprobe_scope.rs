//! What another process mapping the same library gets: with `--probe-scope process`, its code
//! untouched, not one breakpoint; with the default global scope, breakpoints (its calls trap and
//! return at once), no span ever, and its code as the file once the agent is gone.

use std::{collections::HashSet, time::Duration};

use ddtrace_tests::{
    agent_process::AgentProcess, breakpoints::breakpoints_in, target_app::SqliteWorker, test_agent::TestAgent,
};

const ATTACH_TIMEOUT: Duration = Duration::from_secs(20);
fn process_ids_with_spans(agent: &TestAgent) -> HashSet<u32> {
    agent.spans().iter().filter_map(|s| Some(s["metrics"]["process_id"].as_f64()? as u32)).collect()
}

/// Two Python processes map the same libsqlite3; the agent traces one. The most direct proof
/// that the other pays nothing is its own code: the kernel puts a breakpoint in the address
/// space of every process a uprobe applies to (with a file-wide uprobe, every process mapping
/// the file), so the untraced process's copy of libsqlite3 must read exactly as the file does,
/// before and after it ran queries, while the traced one's has the probes' breakpoints. And
/// its queries reach no one.
/// Two Python workers that mapped libsqlite3, not a breakpoint in either yet, and the agent
/// attached to the first with `flags`.
fn traced_and_untraced(agent: &TestAgent, flags: &[&str]) -> (SqliteWorker, SqliteWorker, AgentProcess) {
    let mut traced = SqliteWorker::spawn();
    let mut untraced = SqliteWorker::spawn();
    traced.run("import");
    untraced.run("import");
    assert_eq!(breakpoints_in(untraced.pid(), "libsqlite3"), 0, "breakpoints before any agent ran");
    let mut daemon = AgentProcess::attach(traced.pid(), &agent.url(), flags);
    daemon.wait_for_stderr("sqlite: attached 4 probes to", ATTACH_TIMEOUT);
    (traced, untraced, daemon)
}

#[test]
fn with_process_scope_an_untraced_process_has_no_breakpoint_and_no_spans() {
    let _serial = ddtrace_tests::serial();
    let agent = TestAgent::start();
    let (mut traced, mut untraced, mut daemon) = traced_and_untraced(&agent, &["--probe-scope", "process"]);
    let traced_pid = traced.pid();
    let traced_breakpoints = breakpoints_in(traced.pid(), "libsqlite3");
    assert!(traced_breakpoints > 0, "no breakpoint in the traced process: the check itself does not work");
    assert_eq!(breakpoints_in(untraced.pid(), "libsqlite3"), 0, "the untraced process got the traced one's probes");

    untraced.run("work 5");
    traced.run("work 1");
    assert_eq!(breakpoints_in(untraced.pid(), "libsqlite3"), 0, "after the untraced process's queries");
    traced.exit();
    let status = daemon.wait_exit(Duration::from_secs(15));
    let stderr = daemon.stderr_text();
    assert!(status.success(), "{status}\n{stderr}");
    let pids = process_ids_with_spans(&agent);
    assert!(pids.contains(&traced_pid), "the traced process's query is missing: {pids:?}\n{stderr}");
    assert!(!pids.contains(&untraced.pid()), "spans of the untraced process: {pids:?}\n{stderr}");
    untraced.exit();
    agent.assert_checks_passed();
}

/// The default global scope: the untraced process's calls trap (its code has the breakpoints)
/// but the kernel's bitmap of tracked processes keeps them out: no span; when the agent stops,
/// every breakpoint is gone from both.
#[test]
fn with_global_scope_an_untraced_process_traps_but_gives_no_spans_and_is_restored() {
    let _serial = ddtrace_tests::serial();
    let agent = TestAgent::start();
    let (mut traced, mut untraced, mut daemon) = traced_and_untraced(&agent, &[]);
    let traced_pid = traced.pid();
    assert!(breakpoints_in(traced.pid(), "libsqlite3") > 0, "no breakpoint in the traced process");
    assert!(breakpoints_in(untraced.pid(), "libsqlite3") > 0, "global scope: every mapping has them");
    untraced.run("work 5");
    traced.run("work 1");
    daemon.signal(libc::SIGINT);
    let status = daemon.wait_exit(Duration::from_secs(15));
    let stderr = daemon.stderr_text();
    assert!(status.success(), "{status}\n{stderr}");
    assert_eq!(breakpoints_in(untraced.pid(), "libsqlite3"), 0, "detached: the code reads as the file");
    assert_eq!(breakpoints_in(traced.pid(), "libsqlite3"), 0, "detached: the code reads as the file");
    let pids = process_ids_with_spans(&agent);
    assert!(pids.contains(&traced_pid), "the traced process's query is missing: {pids:?}\n{stderr}");
    assert!(!pids.contains(&untraced.pid()), "spans of the untraced process: {pids:?}\n{stderr}");
    traced.exit();
    untraced.exit();
    agent.assert_checks_passed();
}
