//! `cargo xtask demo`: builds everything, runs a small SQLite app and the agent attached to it,
//! with spans printed to the console. Needs root, no Datadog account.

use std::{
    path::PathBuf,
    process::{Child, Command, ExitCode, ExitStatus},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::{
    process::{self, step},
    workspace,
};

/// `cargo xtask demo` options.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How long to trace the app before stopping it.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// The Python interpreter that runs the demo app.
    #[arg(long, default_value = "python3")]
    pub python: String,
    /// Run this agent binary instead of building the eBPF object and `target/release/ddtrace-agent`.
    #[arg(long, value_name = "PATH")]
    pub agent: Option<PathBuf>,
}

/// How long the agent gets to notice its target is gone and flush before we give up on it.
const AGENT_EXIT_GRACE: Duration = Duration::from_secs(15);

pub fn run(args: &DemoArgs) -> Result<ExitCode> {
    let agent_binary = match &args.agent {
        Some(agent) => agent.clone(),
        None => workspace::build_everything()?,
    };

    // The app's own deadline is a backstop in case this process dies before stopping it.
    let script = workspace::root().join("xtask/demo/sqlite_app.py");
    let mut app_cmd = Command::new(interpreter(&args.python)?);
    app_cmd.arg(&script).args(["--seconds", &(args.seconds + 60).to_string()]);
    let mut app = Guarded::spawn(&mut app_cmd)?;
    let app_pid = app.child.id();
    step("demo", format!("started the SQLite app, pid {app_pid}: {}", process::describe(&app_cmd)));

    let mut agent_cmd = Command::new(&agent_binary);
    agent_cmd.args(["--pid", &app_pid.to_string(), "--service", "demo-sqlite", "--exporter", "console"]);
    let mut agent = Guarded::spawn(&mut agent_cmd)?;
    step(
        "demo",
        format!(
            "started the agent, pid {}: {}; tracing for {} s",
            agent.child.id(),
            process::describe(&agent_cmd),
            args.seconds
        ),
    );

    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    while Instant::now() < deadline {
        if let Some(status) = agent.child.try_wait()? {
            step("demo", format!("the agent exited early ({status}); stopping the app"));
            app.stop(Duration::from_secs(5))?;
            return Ok(exit_code(status));
        }
        if let Some(status) = app.child.try_wait()? {
            step("demo", format!("the app exited early ({status})"));
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }

    step("demo", format!("stopping the app (SIGTERM to pid {app_pid})"));
    app.stop(Duration::from_secs(5))?;

    // The agent exits by itself once its target is gone.
    let Some(status) = agent.wait_timeout(AGENT_EXIT_GRACE)? else {
        step(
            "demo",
            format!(
                "the agent is still running {} s after its target exited; interrupting it",
                AGENT_EXIT_GRACE.as_secs()
            ),
        );
        agent.stop(Duration::from_secs(5))?;
        bail!("the agent did not exit after its target process {app_pid} exited");
    };
    step("demo", format!("the agent exited ({status})"));
    Ok(exit_code(status))
}

/// The interpreter binary behind `python` (e.g. a pyenv shim, which is a shell script that
/// execs it). The agent inspects its target when it starts: it must see Python, not the shim.
fn interpreter(python: &str) -> Result<PathBuf> {
    let mut query = Command::new(python);
    query.args(["-c", "import sys; print(sys.executable)"]);
    let executable =
        process::output(&mut query).with_context(|| format!("cannot run the demo app's interpreter `{python}`"))?;
    let executable = PathBuf::from(executable.trim());
    if !process::is_executable(&executable) {
        bail!("`{python}` reports its executable as {}, which is not executable", executable.display());
    }
    Ok(executable)
}

/// A child process that is terminated if this process returns early (error or panic).
struct Guarded {
    child: Child,
}

impl Guarded {
    fn spawn(cmd: &mut Command) -> Result<Self> {
        let child = cmd.spawn().with_context(|| format!("could not start `{}`", process::describe(cmd)))?;
        Ok(Self { child })
    }

    fn signal(&self, signal: libc::c_int) {
        let Ok(pid) = libc::pid_t::try_from(self.child.id()) else {
            return;
        };
        // SAFETY: kill has no memory-safety preconditions; the pid is our own unreaped child.
        unsafe { libc::kill(pid, signal) };
    }

    fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then SIGKILL if it is still running after `grace`.
    fn stop(&mut self, grace: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        self.signal(libc::SIGTERM);
        if let Some(status) = self.wait_timeout(grace)? {
            return Ok(status);
        }
        self.child.kill()?;
        Ok(self.child.wait()?)
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.stop(Duration::from_secs(2));
        }
    }
}

/// The agent's status as our own: its code, or 128 + signal as a shell reports it.
fn exit_code(status: ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        (None, Some(signal)) => ExitCode::from(u8::try_from(128 + signal).unwrap_or(1)),
        (None, None) => ExitCode::FAILURE,
    }
}
