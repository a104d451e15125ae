//! `cargo xtask bench --tls`: what the OpenSSL probes cost a Python program, whether the agent
//! traces it or another process.
//!
//! A Python loop (`tests/apps/bench/tls_loop.py`) times `SSL_write_ex` + `SSL_read_ex` pairs over
//! memory BIOs, (a) with no agent, (b) with the agent tracing ANOTHER Python process that maps
//! the same libssl, (c) with the agent tracing the loop itself. (b) must cost ~nothing: uprobes
//! are attached per traced process, and other processes mapping the library never trap. The
//! configurations rotate for several cycles in the same loop process; medians are reported, with
//! ratios to (a).
//!
//! Exits non-zero only when the harness itself fails.

use std::{
    fmt::Write as _,
    fs,
    io::Write,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, ExitCode, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::{
    bench::{
        background_load, kill_unreaped, median, number, publish, python_executable, reply, root_and_agent,
        steal_and_noise_notes, steal_time, BenchArgs, Lines, Stream, Watched,
    },
    process::step,
    workspace,
};

/// `cargo xtask bench --tls` options (flattened into `cargo xtask bench`'s).
#[derive(Debug, Args)]
pub struct TlsArgs {
    /// Instead of the uprobe cost: what the OpenSSL probes cost a process traced or not.
    #[arg(long)]
    pub tls: bool,
}

const LOOP: &str = "tests/apps/bench/tls_loop.py";
/// Pairs per round when `--calls` keeps its default (which is sized for the C target).
const PAIRS_PER_ROUND: u64 = 50_000;
const DEFAULT_CYCLES: usize = 3;
/// The agent's stderr line once the OpenSSL probes are in place.
const AGENT_READY: &str = "openssl: attached";
/// How long one round may take (50,000 pairs at ~50 µs).
const ROUND_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Config {
    NoAgent,
    AgentElsewhere,
    AgentHere,
}

impl Config {
    const ALL: [Config; 3] = [Config::NoAgent, Config::AgentElsewhere, Config::AgentHere];

    fn label(self) -> &'static str {
        match self {
            Config::NoAgent => "(a) no agent",
            Config::AgentElsewhere => "(b) agent tracing another process",
            Config::AgentHere => "(c) agent tracing this process",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Config::NoAgent => "no_agent",
            Config::AgentElsewhere => "agent_elsewhere",
            Config::AgentHere => "agent_here",
        }
    }
}

/// A Python process driven over stdin.
struct Python {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines,
}

impl Python {
    fn start(python: &Path, args: &[&str]) -> Result<Self> {
        let mut child = Command::new(python)
            .arg("-u")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("could not start {} {args:?}", python.display()))?;
        let stdin = child.stdin.take().context("stdin not piped")?;
        let stdout = Lines::new(child.stdout.take().context("stdout not piped")?);
        Ok(Self { child, stdin, stdout })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn ask(&mut self, line: &str, timeout: Duration) -> Result<String> {
        writeln!(self.stdin, "{line}").and_then(|_| self.stdin.flush()).context("the loop's stdin")?;
        reply(&self.stdout, &mut self.child, "the TLS loop", timeout)
    }
}

impl Drop for Python {
    fn drop(&mut self) {
        kill_unreaped(&mut self.child);
    }
}

pub fn run(args: &BenchArgs) -> Result<ExitCode> {
    let cycles = args.cycles.unwrap_or(DEFAULT_CYCLES);
    let pairs = if args.calls == 200_000 { PAIRS_PER_ROUND } else { args.calls };
    if args.rounds == 0 || pairs == 0 || cycles == 0 {
        bail!("--rounds, --calls and --cycles must be at least 1");
    }
    let agent = root_and_agent(args)?;
    let python = python_executable()?;
    let out_dir = workspace::target_dir().join("bench");
    fs::create_dir_all(&out_dir).with_context(|| format!("could not create {}", out_dir.display()))?;
    let (cert, key) = certificate(&out_dir)?;
    let script = workspace::root().join(LOOP);
    let mut tls_loop =
        Python::start(&python, &[&script.to_string_lossy(), &cert.to_string_lossy(), &key.to_string_lossy()])?;
    let ready = reply(&tls_loop.stdout, &mut tls_loop.child, "the TLS loop", Duration::from_secs(30))?;
    if ready != "ready" {
        bail!("the TLS loop said {ready:?} instead of `ready`");
    }
    // The other process of (b): maps libssl (`import ssl`) and waits.
    let mut other = Python::start(&python, &["-c", "import ssl, sys; print('ready', flush=True); sys.stdin.read()"])?;
    reply(&other.stdout, &mut other.child, "the other process", Duration::from_secs(30))?;
    step("bench", format!("TLS loop pid {}, other process pid {}", tls_loop.pid(), other.pid()));
    let background_busy = background_load()?;

    let attach_timeout = Duration::from_secs(args.attach_timeout);
    let run_started = Instant::now();
    let steal_before = steal_time();
    let mut rounds: Vec<Vec<f64>> = vec![Vec::new(); Config::ALL.len()];
    for cycle in 0..cycles {
        // Rotated each cycle, so that no configuration always runs right after the same one.
        for index in 0..Config::ALL.len() {
            let slot = (index + cycle) % Config::ALL.len();
            let config = Config::ALL[slot];
            let target = match config {
                Config::NoAgent => None,
                Config::AgentElsewhere => Some(other.pid()),
                Config::AgentHere => Some(tls_loop.pid()),
            };
            let mut daemon = match target {
                Some(pid) => Some(start_agent(&agent, pid, attach_timeout)?),
                None => None,
            };
            tls_loop.ask(&format!("go {}", pairs / 10 + 1), ROUND_TIMEOUT)?; // warm-up
            let mut measured = Vec::new();
            for _ in 0..args.rounds {
                let answer = tls_loop.ask(&format!("go {pairs}"), ROUND_TIMEOUT)?;
                measured.push(answer.trim().parse::<f64>().with_context(|| format!("the loop answered {answer:?}"))?);
            }
            if let Some(daemon) = daemon.as_mut() {
                daemon.stop().with_context(|| format!("{}, cycle {}", config.label(), cycle + 1))?;
            }
            step(
                "bench",
                format!(
                    "{}, cycle {}: ns per pair: {}",
                    config.label(),
                    cycle + 1,
                    measured.iter().map(|v| format!("{v:.0}")).collect::<Vec<_>>().join(" ")
                ),
            );
            rounds[slot].extend(measured);
        }
    }
    let _ = tls_loop.ask("exit", Duration::from_secs(5));
    let medians: Vec<f64> = rounds.iter().map(|r| median(r.iter().copied())).collect();
    let mut table = String::new();
    let _ = writeln!(
        table,
        "\nSSL_write_ex + SSL_read_ex pairs over memory BIOs in Python: median of {cycles} cycles x {} rounds of {pairs} pairs",
        args.rounds
    );
    let _ = writeln!(table, "  {:<40} {:>10} {:>12}", "configuration", "ns/pair", "vs (a)");
    for (config, value) in Config::ALL.iter().zip(&medians) {
        let _ = writeln!(table, "  {:<40} {:>10.0} {:>12.2}", config.label(), value, value / medians[0]);
    }
    let _ = writeln!(table, "  (b) should be ~(a): uprobes are attached to the traced processes only.");
    steal_and_noise_notes(
        &mut table,
        steal_time().saturating_sub(steal_before),
        run_started.elapsed(),
        background_busy,
    );
    let mut json = String::from("{\n");
    let _ = writeln!(json, "  \"pairs_per_round\": {pairs},\n  \"rounds\": {},\n  \"cycles\": {cycles},", args.rounds);
    for (config, value) in Config::ALL.iter().zip(&medians) {
        let _ = writeln!(json, "  \"{}_ns_per_pair\": {},", config.key(), number(*value));
    }
    let _ = writeln!(json, "  \"elsewhere_over_none\": {},", number(medians[1] / medians[0]));
    let _ = writeln!(json, "  \"here_over_none\": {}\n}}", number(medians[2] / medians[0]));
    publish(&out_dir, "tls-cost.json", &table, &json)?;
    Ok(ExitCode::SUCCESS)
}

fn start_agent(agent: &Path, pid: u32, timeout: Duration) -> Result<Watched> {
    let mut cmd = Command::new(agent);
    cmd.args(["--pid", &pid.to_string(), "--exporter", "console", "--profiling-enabled", "false"]);
    Watched::start(cmd, Stream::Stderr, AGENT_READY, timeout)
}

/// A self-signed certificate for the loop's server side, made once with the `openssl` command.
fn certificate(out_dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let dir = out_dir.join("tls");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    fs::create_dir_all(&dir).with_context(|| format!("could not create {}", dir.display()))?;
    let status = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .context("the openssl command is needed to make the benchmark's certificate")?;
    if !status.success() {
        bail!("openssl req failed ({status})");
    }
    Ok((cert, key))
}
