//! The real `ddtrace-agent` binary, run against a target.
use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::workspace_root;

/// The release binary built by `cargo xtask test`.
pub fn agent_binary() -> PathBuf {
    let path = workspace_root().join("target/release/ddtrace-agent");
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo xtask build-ebpf && cargo build --release -p ddtrace-agent` (or run `cargo xtask test`)",
        path.display()
    );
    path
}

/// A running daemon; its stderr is collected line by line.
pub struct AgentProcess {
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
    stdout: Arc<Mutex<Vec<String>>>,
}

/// Collects a child's output lines on a thread of its own.
fn collect_lines(pipe: impl std::io::Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

/// The start of the line that means "traced from now on".
pub const ATTACHED_MARKER: &str = "ddtrace-agent: attached: tracing";

impl AgentProcess {
    /// Starts `ddtrace-agent` with `args`, collecting its stdout (the console exporter's span
    /// trees) and stderr.
    pub fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[])
    }

    /// Like [`start`](Self::start), with `env` added to the agent's environment (how a pod is
    /// told where the Datadog agent is).
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(agent_binary());
        command
            .args(args)
            // Only what the test gives: the developer's own settings must not leak in.
            .env_remove("DD_TRACE_AGENT_URL")
            .env_remove("DD_AGENT_HOST")
            .env_remove("DD_TRACE_AGENT_PORT")
            .envs(env.iter().copied());
        Self::spawn(command)
    }

    /// Runs `command` (the agent, or a shell that execs it), collecting both outputs.
    fn spawn(mut command: Command) -> Self {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{command:?} does not start: {e}"));
        let stderr = collect_lines(child.stderr.take().unwrap());
        let stdout = collect_lines(child.stdout.take().unwrap());
        Self { child, stderr, stdout }
    }

    /// Starts `ddtrace-agent` with `args` through `sh -c '<prefix> ddtrace-agent ARGS'` (the
    /// prefix ends in `exec`, so the agent keeps the shell's pid), e.g. inside a
    /// [`FakeContainer`](crate::container::FakeContainer)'s cgroups.
    pub fn start_with_prefix(prefix: &str, args: &[&str]) -> Self {
        Self::start_with_program(prefix, &agent_binary(), args)
    }

    /// Like [`start_with_prefix`](Self::start_with_prefix), running `program` (a copy of the agent).
    pub fn start_with_program(prefix: &str, program: &std::path::Path, args: &[&str]) -> Self {
        let quoted: Vec<String> = args.iter().map(|a| format!("'{}'", a.replace('\'', "'\\''"))).collect();
        let command = format!("{prefix} '{}' {}", program.display(), quoted.join(" "));
        let mut shell = Command::new("sh");
        shell.args(["-c", &command]);
        Self::spawn(shell)
    }

    pub fn stdout_text(&self) -> String {
        self.stdout.lock().unwrap().join("\n")
    }

    /// Attaches to `pid`, sending traces to `agent_url`, with a fixed service name.
    pub fn attach(pid: u32, agent_url: &str, extra: &[&str]) -> Self {
        let pid = pid.to_string();
        let mut args = vec!["--pid", &pid, "--agent-url", agent_url, "--service", "e2e-sqlite"];
        args.extend_from_slice(extra);
        Self::start(&args)
    }

    /// Like [`attach`](Self::attach), with `env` added to the agent's environment.
    pub fn attach_with_env(pid: u32, agent_url: &str, env: &[(&str, &str)]) -> Self {
        let pid = pid.to_string();
        Self::start_with_env(&["--pid", &pid, "--agent-url", agent_url, "--service", "e2e-sqlite"], env)
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// Waits until a stderr line contains `needle`; panics with the stderr seen otherwise.
    pub fn wait_for_stderr(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.stderr.lock().unwrap().iter().any(|line| line.contains(needle)) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                panic!("ddtrace-agent exited ({status}) before printing {needle:?}:\n{}", self.stderr_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("ddtrace-agent did not print {needle:?} within {timeout:?}:\n{}", self.stderr_text());
    }

    /// Waits until at least `count` stderr lines contain `needle` (e.g. periodic stats lines).
    pub fn wait_for_stderr_count(&mut self, needle: &str, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.stderr.lock().unwrap().iter().filter(|line| line.contains(needle)).count() >= count {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("ddtrace-agent did not print {count} lines with {needle:?} within {timeout:?}:\n{}", self.stderr_text());
    }

    /// Waits for the line the daemon prints once every process of the target (the root and the
    /// children it had already forked: nginx or gunicorn workers) is traced. Lines printed
    /// before it, such as an integration's attach line, can come before the children are.
    pub fn wait_attached(&mut self, timeout: Duration) {
        self.wait_for_stderr(ATTACHED_MARKER, timeout);
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: plain kill(2) on our child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// Waits for the daemon to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the stderr thread catch the last lines.
                std::thread::sleep(Duration::from_millis(100));
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "ddtrace-agent still running after {timeout:?}:\n{}",
                self.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
