//! What another process mapping the same library gets: with `--probe-scope process`, its code
//! untouched, not one breakpoint; with the default global scope, breakpoints (its calls trap and
//! return at once), no span ever, and its code as the file once the agent is gone.

use std::{collections::HashSet, os::unix::fs::FileExt, time::Duration};

use ddtrace_tests::{agent_process::AgentProcess, target_app::SqliteWorker, test_agent::TestAgent};

const ATTACH_TIMEOUT: Duration = Duration::from_secs(20);
/// x86-64's `int3`: the instruction the kernel writes over a probed function's first byte.
#[cfg(target_arch = "x86_64")]
const BREAKPOINT: &[u8] = &[0xcc];
/// arm64's `brk #0x5` (little endian), the uprobe breakpoint there.
#[cfg(target_arch = "aarch64")]
const BREAKPOINT: &[u8] = &[0xa0, 0x00, 0x20, 0xd4];

/// Breakpoints the kernel installed in process `pid`'s executable mappings of `library`: places
/// where the code the process runs (read through /proc/<pid>/mem, which shows the page the
/// uprobe wrote its breakpoint into) differs from the file by a breakpoint. Text segments are
/// position-independent code, identical to the file otherwise.
fn breakpoints_in(pid: u32, library: &str) -> usize {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps readable");
    let memory = std::fs::File::open(format!("/proc/{pid}/mem")).expect("mem readable (run as root)");
    let mut found = 0;
    let mut mappings = 0;
    for line in maps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 6 || !fields[1].contains('x') || !fields[5].contains(library) {
            continue;
        }
        mappings += 1;
        let (start, end) = fields[0].split_once('-').unwrap();
        let start = u64::from_str_radix(start, 16).unwrap();
        let length = (u64::from_str_radix(end, 16).unwrap() - start) as usize;
        let file_offset = u64::from_str_radix(fields[2], 16).unwrap();
        let file = std::fs::File::open(format!("/proc/{pid}/root{}", fields[5])).expect("library readable");
        let mut in_file = vec![0u8; length];
        let read = file.read_at(&mut in_file, file_offset).expect("library read");
        in_file.truncate(read);
        let mut in_memory = vec![0u8; in_file.len()];
        memory.read_exact_at(&mut in_memory, start).expect("process memory read");
        let mut at = 0;
        while at < in_file.len() {
            if in_memory[at..].starts_with(BREAKPOINT) && !in_file[at..].starts_with(BREAKPOINT) {
                found += 1;
                at += BREAKPOINT.len();
            } else {
                at += 1;
            }
        }
    }
    assert!(mappings > 0, "pid {pid} maps no executable {library}:\n{maps}");
    found
}

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
