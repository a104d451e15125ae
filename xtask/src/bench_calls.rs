//! What an integration's probes cost a Python program calling the library in a loop, with and
//! without the agent, in one run:
//!
//! - `cargo xtask bench --tls`: `SSL_write_ex` + `SSL_read_ex` pairs over memory BIOs
//!   (`tests/apps/bench/tls_loop.py`), (a) with no agent, (b) with the agent tracing ANOTHER
//!   Python process that maps the same libssl, (c) with the agent tracing the loop itself, (d) as
//!   (b) with `--probe-scope process`. (b) is what the default global scope costs a process the
//!   agent does not trace (its calls trap and return); (d) must cost ~nothing.
//! - `cargo xtask bench --sqlite`: `sqlite3_prepare_v2` + `sqlite3_finalize` pairs
//!   (`tests/apps/bench/sqlite_prepare_loop.py`), (a) with no agent, (b) with the agent probing
//!   the exported prepare functions (whose first instruction is single-stepped), (c) with its
//!   default placement (the function they call, emulated).
//!
//! The configurations rotate for several cycles in the same loop process; medians are reported,
//! with ratios to (a). Exits non-zero only when the harness itself fails.

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

/// `cargo xtask bench --tls` and `--sqlite` options (flattened into `cargo xtask bench`'s).
#[derive(Debug, Args)]
pub struct LibraryCallArgs {
    /// Instead of the uprobe cost: what the OpenSSL probes cost a process traced or not.
    #[arg(long)]
    pub tls: bool,
    /// Instead of the uprobe cost: what the SQLite prepare probe costs, placed on the exported
    /// functions or where the agent places it.
    #[arg(long)]
    pub sqlite: bool,
    /// Instead of the uprobe cost: what recording the caller's Python frames adds to a
    /// statement's execution made 30 frames deep (the agent with and without `--python-callers`).
    #[arg(long)]
    pub sqlite_callers: bool,
}

/// Pairs per round when `--calls` keeps its default (which is sized for the C target).
const PAIRS_PER_ROUND: u64 = 50_000;
const DEFAULT_CYCLES: usize = 3;
/// How long one round may take (50,000 pairs at ~50 µs).
const ROUND_TIMEOUT: Duration = Duration::from_secs(60);

/// Which process the agent traces in a configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Traced {
    Nothing,
    AnotherProcess,
    TheLoop,
}

/// One configuration of a workload.
struct Setup {
    label: &'static str,
    key: &'static str,
    traced: Traced,
    agent_args: &'static [&'static str],
}

/// A library-call loop and the configurations it is timed in.
struct Workload {
    title: &'static str,
    script: &'static str,
    /// A Python program that maps the same library and waits (the other process of (b)).
    other: &'static str,
    /// The agent's stderr line once the workload's probes are in place.
    agent_ready: &'static str,
    setups: &'static [Setup],
    note: &'static str,
    output: &'static str,
}

const TLS: Workload = Workload {
    title: "SSL_write_ex + SSL_read_ex pairs over memory BIOs in Python",
    script: "tests/apps/bench/tls_loop.py",
    other: "import ssl, sys; print('ready', flush=True); sys.stdin.read()",
    agent_ready: "openssl: attached",
    setups: &[
        Setup { label: "(a) no agent", key: "no_agent", traced: Traced::Nothing, agent_args: &[] },
        Setup {
            label: "(b) agent tracing another process",
            key: "agent_elsewhere",
            traced: Traced::AnotherProcess,
            agent_args: &[],
        },
        Setup { label: "(c) agent tracing this process", key: "agent_here", traced: Traced::TheLoop, agent_args: &[] },
        Setup {
            label: "(d) as (b), --probe-scope process",
            key: "agent_elsewhere_process_scope",
            traced: Traced::AnotherProcess,
            agent_args: &["--probe-scope", "process"],
        },
    ],
    note: "(b): the default global scope: an untraced process's calls trap and return (the kernel's bitmap \
           keeps them out); (d) should be ~(a): links per traced process.",
    output: "tls-cost.json",
};

const SQLITE: Workload = Workload {
    title: "sqlite3_prepare_v2 + sqlite3_finalize pairs through ctypes",
    script: "tests/apps/bench/sqlite_prepare_loop.py",
    other: "import sys; print('ready', flush=True); sys.stdin.read()",
    agent_ready: "sqlite: attached",
    setups: &[
        Setup { label: "(a) no agent", key: "no_agent", traced: Traced::Nothing, agent_args: &[] },
        Setup {
            label: "(b) agent, probes on the exported functions",
            key: "agent_exported",
            traced: Traced::TheLoop,
            agent_args: &["--sqlite-probes", "exported"],
        },
        Setup { label: "(c) agent, default placement", key: "agent_auto", traced: Traced::TheLoop, agent_args: &[] },
    ],
    note: "(b): sqlite3_prepare_v2 starts with `sub $0x10,%rsp`, single-stepped; (c): the function it calls, emulated.",
    output: "sqlite-prepare-cost.json",
};

const SQLITE_CALLERS: Workload = Workload {
    title: "sqlite3_prepare_v2 + sqlite3_step + sqlite3_finalize through ctypes, 30 Python frames deep",
    script: "tests/apps/bench/sqlite_step_loop.py",
    other: "import sys; print('ready', flush=True); sys.stdin.read()",
    agent_ready: "sqlite: attached",
    setups: &[
        Setup { label: "(a) no agent", key: "no_agent", traced: Traced::Nothing, agent_args: &[] },
        Setup {
            label: "(b) agent, --python-callers false",
            key: "agent_without_callers",
            traced: Traced::TheLoop,
            agent_args: &["--python-callers", "false"],
        },
        Setup {
            label: "(c) agent, callers recorded",
            key: "agent_with_callers",
            traced: Traced::TheLoop,
            agent_args: &[],
        },
    ],
    note: "(c) - (b): one walk of ~33 Python frames at each execution's first step (goal <= 2 us).",
    output: "sqlite-callers-cost.json",
};

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
        reply(&self.stdout, &mut self.child, "the loop", timeout)
    }
}

impl Drop for Python {
    fn drop(&mut self) {
        kill_unreaped(&mut self.child);
    }
}

pub fn run(args: &BenchArgs) -> Result<ExitCode> {
    let workload = if args.calls_bench.sqlite {
        &SQLITE
    } else if args.calls_bench.sqlite_callers {
        &SQLITE_CALLERS
    } else {
        &TLS
    };
    let cycles = args.cycles.unwrap_or(DEFAULT_CYCLES);
    let pairs = if args.calls == 200_000 { PAIRS_PER_ROUND } else { args.calls };
    if args.rounds == 0 || pairs == 0 || cycles == 0 {
        bail!("--rounds, --calls and --cycles must be at least 1");
    }
    let agent = root_and_agent(args)?;
    let python = python_executable()?;
    let out_dir = workspace::target_dir().join("bench");
    fs::create_dir_all(&out_dir).with_context(|| format!("could not create {}", out_dir.display()))?;
    let script = workspace::root().join(workload.script).to_string_lossy().into_owned();
    let mut loop_args = vec![script];
    if std::ptr::eq(workload, &TLS) {
        let (cert, key) = certificate(&out_dir)?;
        loop_args.extend([cert.to_string_lossy().into_owned(), key.to_string_lossy().into_owned()]);
    }
    let loop_args: Vec<&str> = loop_args.iter().map(String::as_str).collect();
    let mut call_loop = Python::start(&python, &loop_args)?;
    let ready = reply(&call_loop.stdout, &mut call_loop.child, "the loop", Duration::from_secs(30))?;
    if ready != "ready" {
        bail!("the loop said {ready:?} instead of `ready`");
    }
    // The other process of a configuration that traces another process: maps the library and waits.
    let mut other = Python::start(&python, &["-c", workload.other])?;
    reply(&other.stdout, &mut other.child, "the other process", Duration::from_secs(30))?;
    step("bench", format!("loop pid {}, other process pid {}", call_loop.pid(), other.pid()));
    let background_busy = background_load()?;

    let attach_timeout = Duration::from_secs(args.attach_timeout);
    let run_started = Instant::now();
    let steal_before = steal_time();
    let setups = workload.setups;
    let mut rounds: Vec<Vec<f64>> = vec![Vec::new(); setups.len()];
    for cycle in 0..cycles {
        // Rotated each cycle, so that no configuration always runs right after the same one.
        for index in 0..setups.len() {
            let slot = (index + cycle) % setups.len();
            let config = &setups[slot];
            let target = match config.traced {
                Traced::Nothing => None,
                Traced::AnotherProcess => Some(other.pid()),
                Traced::TheLoop => Some(call_loop.pid()),
            };
            let mut daemon = match target {
                Some(pid) => Some(start_agent(&agent, pid, workload, config, attach_timeout)?),
                None => None,
            };
            call_loop.ask(&format!("go {}", pairs / 10 + 1), ROUND_TIMEOUT)?; // warm-up
            let mut measured = Vec::new();
            for _ in 0..args.rounds {
                let answer = call_loop.ask(&format!("go {pairs}"), ROUND_TIMEOUT)?;
                measured.push(answer.trim().parse::<f64>().with_context(|| format!("the loop answered {answer:?}"))?);
            }
            if let Some(daemon) = daemon.as_mut() {
                daemon.stop().with_context(|| format!("{}, cycle {}", config.label, cycle + 1))?;
            }
            step(
                "bench",
                format!(
                    "{}, cycle {}: ns per pair: {}",
                    config.label,
                    cycle + 1,
                    measured.iter().map(|v| format!("{v:.0}")).collect::<Vec<_>>().join(" ")
                ),
            );
            rounds[slot].extend(measured);
        }
    }
    let _ = call_loop.ask("exit", Duration::from_secs(5));
    let medians: Vec<f64> = rounds.iter().map(|r| median(r.iter().copied())).collect();
    let mut table = String::new();
    let _ =
        writeln!(table, "\n{}: median of {cycles} cycles x {} rounds of {pairs} pairs", workload.title, args.rounds);
    let _ = writeln!(table, "  {:<46} {:>10} {:>12}", "configuration", "ns/pair", "vs (a)");
    for (config, value) in setups.iter().zip(&medians) {
        let _ = writeln!(table, "  {:<46} {:>10.0} {:>12.2}", config.label, value, value / medians[0]);
    }
    let _ = writeln!(table, "  {}", workload.note);
    steal_and_noise_notes(
        &mut table,
        steal_time().saturating_sub(steal_before),
        run_started.elapsed(),
        background_busy,
    );
    let mut json = String::from("{\n");
    let _ = writeln!(json, "  \"pairs_per_round\": {pairs},\n  \"rounds\": {},\n  \"cycles\": {cycles},", args.rounds);
    for (config, value) in setups.iter().zip(&medians) {
        let _ = writeln!(json, "  \"{}_ns_per_pair\": {},", config.key, number(*value));
    }
    let ratios: Vec<String> = setups[1..]
        .iter()
        .zip(&medians[1..])
        .map(|(config, value)| format!("  \"{}_over_{}\": {}", config.key, setups[0].key, number(value / medians[0])))
        .collect();
    let _ = writeln!(json, "{}\n}}", ratios.join(",\n"));
    publish(&out_dir, workload.output, &table, &json)?;
    Ok(ExitCode::SUCCESS)
}

fn start_agent(agent: &Path, pid: u32, workload: &Workload, setup: &Setup, timeout: Duration) -> Result<Watched> {
    let mut cmd = Command::new(agent);
    cmd.args(["--pid", &pid.to_string(), "--exporter", "console", "--profiling-enabled", "false"]);
    cmd.args(setup.agent_args);
    Watched::start(cmd, Stream::Stderr, workload.agent_ready, timeout)
}

/// A self-signed certificate for the loop's server side, made once with the `openssl` command.
pub(crate) fn certificate(out_dir: &Path) -> Result<(PathBuf, PathBuf)> {
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
