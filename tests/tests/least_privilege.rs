//! The agent as a non-root user with only the capabilities it documents (what the DaemonSet
//! grants): a node is traced; with any one of them taken away it stops at once with one line
//! naming the missing capability.

use std::{os::unix::fs::PermissionsExt, path::PathBuf, time::Duration};

use ddtrace_tests::{agent_process::AgentProcess, target_app::SqliteWorker, test_agent::TestAgent, with_resource};

const ATTACH_TIMEOUT: Duration = Duration::from_secs(20);
const CAPABILITIES: [&str; 3] = ["sys_admin", "sys_ptrace", "dac_read_search"];

/// A copy of the agent any user can run (the workspace may sit in root's home).
fn agent_copy() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ddtrace-least-privilege-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let copy = dir.join("ddtrace-agent");
    std::fs::copy(ddtrace_tests::agent_process::agent_binary(), &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    copy
}

/// `setpriv` as `nobody`, with exactly `caps` (also the bounding set: nothing can be regained).
fn as_nobody_with(caps: &[&str], agent: &std::path::Path, args: &[&str]) -> AgentProcess {
    let set = format!("-all,{}", caps.iter().map(|c| format!("+{c}")).collect::<Vec<_>>().join(","));
    let prefix = format!(
        "exec setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps={set} --ambient-caps={set} --bounding-set={set}"
    );
    AgentProcess::start_with_program(&prefix, agent, args)
}

#[test]
fn a_non_root_agent_with_only_its_three_capabilities_traces_a_node() {
    let _serial = ddtrace_tests::serial();
    let agent = TestAgent::start();
    let binary = agent_copy();
    let url = agent.url();
    let mut daemon = as_nobody_with(&CAPABILITIES, &binary, &["--node", "--agent-url", &url]);
    daemon.wait_attached(ATTACH_TIMEOUT);
    // A root process started after the agent: its /proc, its files and its probes.
    let mut worker = SqliteWorker::spawn_with_env(&[("DD_SERVICE", "least-privilege")]);
    worker.run("work 2");
    worker.exit();
    let spans = agent.wait_for_spans(Duration::from_secs(10), |spans| with_resource(spans, "INSERT").len() >= 2);
    let stderr = daemon.stderr_text();
    assert_eq!(with_resource(&spans, "INSERT").len(), 2, "{spans:#?}\n{stderr}");
    assert!(spans.iter().all(|s| s["service"] == "least-privilege"), "{spans:#?}");
    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.pid())).unwrap_or_default();
    assert!(status.lines().any(|l| l.starts_with("Uid:") && l.contains("65534")), "not running as nobody:\n{status}");
    agent.assert_checks_passed();
    daemon.signal(libc::SIGINT);
    assert!(daemon.wait_exit(Duration::from_secs(10)).success(), "{}", daemon.stderr_text());
    let _ = std::fs::remove_dir_all(binary.parent().unwrap());
}

#[test]
fn without_any_one_of_them_one_line_names_it() {
    let _serial = ddtrace_tests::serial();
    let binary = agent_copy();
    for missing in CAPABILITIES {
        let caps: Vec<&str> = CAPABILITIES.iter().copied().filter(|c| *c != missing).collect();
        let mut daemon = as_nobody_with(&caps, &binary, &["--node", "--exporter", "console"]);
        let status = daemon.wait_exit(Duration::from_secs(10));
        let stderr = daemon.stderr_text();
        assert!(!status.success(), "ran without {missing}:\n{stderr}");
        let name = format!("CAP_{}", missing.to_uppercase());
        let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("missing capabilities")).collect();
        assert_eq!(lines.len(), 1, "{stderr}");
        assert!(lines[0].contains(&name), "{name} not named:\n{stderr}");
    }
    let _ = std::fs::remove_dir_all(binary.parent().unwrap());
}

/// What the container image does: the three capabilities set on the binary as file capabilities,
/// the agent started by a non-root user that holds none (the container's bounding set allows
/// exactly those three, nothing is ambient).
#[test]
fn with_file_capabilities_as_in_the_image_a_non_root_user_traces_a_node() {
    let _serial = ddtrace_tests::serial();
    let agent = TestAgent::start();
    let binary = agent_copy();
    let setcap = std::process::Command::new("setcap")
        .args(["cap_sys_admin,cap_sys_ptrace,cap_dac_read_search+ep", binary.to_str().unwrap()])
        .output()
        .expect("setcap runs (libcap2-bin; `cargo xtask test` installs it)");
    assert!(setcap.status.success(), "setcap: {}", String::from_utf8_lossy(&setcap.stderr));
    let bounding = format!("-all,{}", CAPABILITIES.iter().map(|c| format!("+{c}")).collect::<Vec<_>>().join(","));
    let prefix =
        format!("exec setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all --bounding-set={bounding}");
    let url = agent.url();
    let mut daemon = AgentProcess::start_with_program(&prefix, &binary, &["--node", "--agent-url", &url]);
    daemon.wait_attached(ATTACH_TIMEOUT);
    let mut worker = SqliteWorker::spawn_with_env(&[("DD_SERVICE", "file-capabilities")]);
    worker.run("work 1");
    worker.exit();
    let spans = agent.wait_for_spans(Duration::from_secs(10), |spans| !with_resource(spans, "INSERT").is_empty());
    assert_eq!(with_resource(&spans, "INSERT").len(), 1, "{spans:#?}\n{}", daemon.stderr_text());
    daemon.signal(libc::SIGINT);
    assert!(daemon.wait_exit(Duration::from_secs(10)).success(), "{}", daemon.stderr_text());
    let _ = std::fs::remove_dir_all(binary.parent().unwrap());
}
