//! `cargo xtask bench --vs-ddtrace`: what tracing a Flask app costs from outside (ddtrace-agent)
//! against from inside (dd-trace-py's `ddtrace-run`), in one run.
//!
//! The app (`tests/apps/bench/flask_app.py`, werkzeug's threaded server): three SQLite statements
//! on a new connection per request, an HTTPS call to a local `openssl s_server` on every tenth.
//! Phases rotate over cycles, each with a fresh server process: (a) the app alone, (b) under
//! `ddtrace-run` (ddtrace from PyPI), (c) the app alone with ddtrace-agent attached (profiling
//! on, as users run it). Both tracers send to one `ddapm-test-agent`. The load generator is
//! `--http`'s (open loop, a new connection per request). Reported: latency percentiles, what (b)
//! and (c) add to (a)'s p50 and their ratio (goal: ours <= 0.10x ddtrace-run's), the agent's CPU
//! per request (goal <= 20 µs) and its resident memory idle and under the load (goals <= 40 MB
//! and <= 60 MB).
//!
//! Exits non-zero only when the harness itself fails; a missed goal is reported, not fatal.

use std::{
    fmt::Write as _,
    fs,
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, ExitCode, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::{
    bench::{
        background_load, kill_unreaped, median, number, publish, python_executable, reply, root_and_agent, rss_mb,
        steal_and_noise_notes, steal_time, BenchArgs, Lines, Stream, Watched,
    },
    bench_calls::certificate,
    bench_http::{Load, Run},
    process::{self, step},
    test::ensure_python_tool,
    workspace,
};

/// `cargo xtask bench --vs-ddtrace` options (flattened into `cargo xtask bench`'s; `--rate`,
/// `--cycles`, `--duration` and `--connections` are shared).
#[derive(Debug, Args)]
pub struct VsDdtraceArgs {
    /// Instead of the uprobe cost: a Flask app alone, under ddtrace-run, and with this agent.
    #[arg(long)]
    pub vs_ddtrace: bool,
}

const APP: &str = "tests/apps/bench/flask_app.py";
const PATH: &str = "/users/42";
const DEFAULT_CYCLES: usize = 3;
const DEFAULT_RATE: u32 = 200;
const SERVICE: &str = "bench-flask";
/// The agent's stderr line once it traces the app.
const AGENT_READY: &str = "ddtrace-agent: attached: tracing";
/// How long the attached agent idles before its idle memory is read.
const SETTLE: Duration = Duration::from_secs(2);

const GOAL_ADDED_P50_RATIO: f64 = 0.10;
const GOAL_AGENT_US_PER_REQUEST: f64 = 20.0;
const GOAL_RSS_IDLE_MB: f64 = 40.0;
const GOAL_RSS_LOAD_MB: f64 = 60.0;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Config {
    Alone,
    DdtraceRun,
    Agent,
}

impl Config {
    const ALL: [Config; 3] = [Config::Alone, Config::DdtraceRun, Config::Agent];

    fn label(self) -> &'static str {
        match self {
            Config::Alone => "(a) alone",
            Config::DdtraceRun => "(b) ddtrace-run",
            Config::Agent => "(c) ddtrace-agent",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Config::Alone => "alone",
            Config::DdtraceRun => "ddtrace_run",
            Config::Agent => "ddtrace_agent",
        }
    }
}

/// One phase's figures.
struct Phase {
    run: Run,
    /// The agent's resident memory after attaching and idling, and right after the load, in MB.
    rss_idle_mb: Option<f64>,
    rss_load_mb: Option<f64>,
}

/// A child process killed on drop.
struct Guarded(Child);

impl Drop for Guarded {
    fn drop(&mut self) {
        kill_unreaped(&mut self.0);
    }
}

pub fn run(args: &BenchArgs) -> Result<ExitCode> {
    let cycles = args.cycles.unwrap_or(DEFAULT_CYCLES);
    let rate = args.rate.unwrap_or(DEFAULT_RATE);
    if cycles == 0 || rate == 0 || args.http.duration == 0 || args.http.connections == 0 {
        bail!("--cycles, --rate, --duration and --connections must be at least 1");
    }
    let agent = root_and_agent(args)?;
    let python = python_executable()?;
    let ddtrace_dir = ensure_python_tool("bench", "ddtrace", "ddtrace-run")?;
    let test_agent_dir = ensure_python_tool("bench", "ddapm-test-agent", "ddapm-test-agent")?;
    let out_dir = workspace::target_dir().join("bench");
    fs::create_dir_all(&out_dir).with_context(|| format!("could not create {}", out_dir.display()))?;

    let intake_port = free_port()?;
    let mut intake = Command::new(tool(&test_agent_dir, "ddapm-test-agent"));
    intake.args(["--port", &intake_port.to_string()]).stdout(Stdio::null()).stderr(Stdio::null());
    let _intake = Guarded(intake.spawn().context("could not start ddapm-test-agent")?);
    wait_listening(intake_port, "ddapm-test-agent")?;
    let intake_url = format!("http://127.0.0.1:{intake_port}");

    let (cert, key) = certificate(&out_dir)?;
    let backend_port = free_port()?;
    let mut backend = Command::new("openssl");
    backend
        .args(["s_server", "-quiet", "-www", "-accept", &backend_port.to_string(), "-cert"])
        .arg(&cert)
        .arg("-key")
        .arg(&key)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _backend = Guarded(backend.spawn().context("could not start `openssl s_server` (the HTTPS backend)")?);
    wait_listening(backend_port, "the HTTPS backend")?;

    let background_busy = background_load()?;
    let run_started = Instant::now();
    let steal_before = steal_time();
    let attach_timeout = Duration::from_secs(args.attach_timeout);
    let mut phases: Vec<Vec<Phase>> = Config::ALL.iter().map(|_| Vec::new()).collect();
    for cycle in 0..cycles {
        for index in 0..Config::ALL.len() {
            // Rotated each cycle, so that no phase always runs right after the same one.
            let slot = (index + cycle) % Config::ALL.len();
            let config = Config::ALL[slot];
            let mut server = start_app(&python, config, &ddtrace_dir, backend_port, &intake_url)?;
            let load = Load {
                port: server.port,
                path: PATH,
                rate,
                connections: args.http.connections,
                duration: Duration::from_secs(args.http.duration),
                new_connections: true,
            };
            let phase = if config == Config::Agent {
                let mut cmd = Command::new(&agent);
                cmd.args(["--pid", &server.pid.to_string(), "--agent-url", &intake_url, "--service", SERVICE]);
                let mut watched = Watched::start(cmd, Stream::Stderr, AGENT_READY, attach_timeout)?;
                thread::sleep(SETTLE);
                let agent_pid = watched.child.id();
                let rss_idle_mb = rss_mb(agent_pid);
                let run = load.run(server.pid, Some(agent_pid));
                let rss_load_mb = rss_mb(agent_pid);
                watched.stop()?;
                Phase { run: run?, rss_idle_mb, rss_load_mb }
            } else {
                Phase { run: load.run(server.pid, None)?, rss_idle_mb: None, rss_load_mb: None }
            };
            if let Ok(Some(status)) = server.child.0.try_wait() {
                bail!("the app exited during {} ({status})", config.label());
            }
            drop(server);
            step(
                "bench",
                format!(
                    "{}, cycle {}: p50 {:.0} µs, p99 {:.0} µs; {}/{} requests ({} errors){}",
                    config.label(),
                    cycle + 1,
                    phase.run.percentile(50.0),
                    phase.run.percentile(99.0),
                    phase.run.completed(),
                    phase.run.scheduled,
                    phase.run.errors,
                    phase
                        .run
                        .agent_cpu
                        .map(|_| format!(
                            ", agent {:.1} µs CPU/request, RSS {:.1} MB idle, {:.1} MB loaded",
                            phase.run.per_kilo(phase.run.agent_cpu),
                            phase.rss_idle_mb.unwrap_or(f64::NAN),
                            phase.rss_load_mb.unwrap_or(f64::NAN)
                        ))
                        .unwrap_or_default(),
                ),
            );
            phases[slot].push(phase);
        }
    }
    let steal = steal_time().saturating_sub(steal_before);
    let (table, json) = report(&phases, rate, cycles, args, steal, run_started.elapsed(), background_busy);
    publish(&out_dir, "vs-ddtrace.json", &table, &json)?;
    Ok(ExitCode::SUCCESS)
}

/// The app's server process and its port.
struct App {
    child: Guarded,
    pid: u32,
    port: u16,
}

fn start_app(
    python: &Path,
    config: Config,
    ddtrace_dir: &Option<PathBuf>,
    backend_port: u16,
    intake_url: &str,
) -> Result<App> {
    let script = workspace::root().join(APP);
    let mut cmd = match config {
        Config::DdtraceRun => {
            let mut cmd = Command::new(tool(ddtrace_dir, "ddtrace-run"));
            cmd.arg(python);
            cmd.envs([("DD_TRACE_AGENT_URL", intake_url), ("DD_SERVICE", SERVICE)]);
            cmd
        }
        _ => Command::new(python),
    };
    // werkzeug logs every request on stderr: not the benchmark's output.
    cmd.arg("-u")
        .arg(&script)
        .arg(backend_port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    step("bench", format!("starting: {}", process::describe(&cmd)));
    let mut child = cmd.spawn().with_context(|| format!("could not start {}", script.display()))?;
    let stdout = Lines::new(child.stdout.take().context("the app's stdout was not piped")?);
    let line = reply(&stdout, &mut child, "the Flask app", Duration::from_secs(60))?;
    let port = line
        .strip_prefix("ready ")
        .and_then(|port| port.trim().parse().ok())
        .with_context(|| format!("the app printed {line:?} instead of `ready PORT`"))?;
    // ddtrace-run execs the interpreter in its own process: the pid is the app's either way.
    let pid = child.id();
    Ok(App { child: Guarded(child), pid, port })
}

/// `name` from `dir` when pip put it off PATH, else from PATH.
fn tool(dir: &Option<PathBuf>, name: &str) -> PathBuf {
    dir.as_ref().map_or_else(|| PathBuf::from(name), |dir| dir.join(name))
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_listening(port: u16, who: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("{who} did not listen on port {port} within 30 s");
        }
        thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn report(
    phases: &[Vec<Phase>],
    rate: u32,
    cycles: usize,
    args: &BenchArgs,
    steal: Duration,
    elapsed: Duration,
    background_busy: f64,
) -> (String, String) {
    let p = |slot: usize, q: f64| median(phases[slot].iter().map(|phase| phase.run.percentile(q)));
    let of = |slot: usize, value: &dyn Fn(&Phase) -> Option<f64>| {
        median(phases[slot].iter().map(|phase| value(phase).unwrap_or(f64::NAN)))
    };
    let (alone, ddtrace, ours) = (0, 1, 2);
    let added = |slot: usize| p(slot, 50.0) - p(alone, 50.0);
    let ratio = added(ours) / added(ddtrace);
    let agent_us = of(ours, &|phase| Some(phase.run.per_kilo(phase.run.agent_cpu)));
    let rss_idle = of(ours, &|phase| phase.rss_idle_mb);
    let rss_load = of(ours, &|phase| phase.rss_load_mb);
    let verdict = |met: bool| if met { "met" } else { "MISSED" };
    let mut table = String::new();
    let _ = writeln!(
        table,
        "\nFlask app ({PATH}: 3 SQLite statements on a new connection, an HTTPS call on every tenth), {rate} req/s \
         from {} client threads, a new connection each, {} s per phase: medians of {cycles} cycles",
        args.http.connections, args.http.duration
    );
    let _ = writeln!(
        table,
        "  {:<20} {:>9} {:>9} {:>12} {:>17} {:>14}",
        "phase", "p50 µs", "p99 µs", "added p50", "done/scheduled", "app ms/1k req"
    );
    for (slot, config) in Config::ALL.iter().enumerate() {
        let done: u64 = phases[slot].iter().map(|phase| phase.run.completed()).sum();
        let scheduled: u64 = phases[slot].iter().map(|phase| phase.run.scheduled).sum();
        let _ = writeln!(
            table,
            "  {:<20} {:>9.0} {:>9.0} {:>12} {:>17} {:>14.1}",
            config.label(),
            p(slot, 50.0),
            p(slot, 99.0),
            if slot == alone { "-".to_string() } else { format!("{:+.0} µs", added(slot)) },
            format!("{done}/{scheduled}"),
            of(slot, &|phase| Some(phase.run.per_kilo(phase.run.server_cpu))),
        );
    }
    let _ = writeln!(
        table,
        "  P3 added p50, ours / ddtrace-run's: {ratio:.2} (goal <= {GOAL_ADDED_P50_RATIO:.2}: {})",
        verdict(ratio <= GOAL_ADDED_P50_RATIO)
    );
    let _ = writeln!(
        table,
        "  P4 agent CPU: {agent_us:.1} µs per request, i.e. {agent_us:.1} ms per 1,000 (goal <= {GOAL_AGENT_US_PER_REQUEST}: {}); \
         RSS {rss_idle:.1} MB idle (goal <= {GOAL_RSS_IDLE_MB}: {}), {rss_load:.1} MB under the load (goal <= {GOAL_RSS_LOAD_MB}: {})",
        verdict(agent_us <= GOAL_AGENT_US_PER_REQUEST),
        verdict(rss_idle <= GOAL_RSS_IDLE_MB),
        verdict(rss_load <= GOAL_RSS_LOAD_MB),
    );
    let _ = writeln!(
        table,
        "  latency: from each request's due time (open loop) to the end of its response; app ms/1k: the app's CPU \
         (ddtrace-run's in-process work included) per 1,000 requests."
    );
    steal_and_noise_notes(&mut table, steal, elapsed, background_busy);
    let mut json = String::from("{\n");
    for (slot, config) in Config::ALL.iter().enumerate() {
        let _ = writeln!(json, "  \"{}_p50_us\": {},", config.key(), number(p(slot, 50.0)));
        let _ = writeln!(json, "  \"{}_p99_us\": {},", config.key(), number(p(slot, 99.0)));
    }
    let _ = writeln!(json, "  \"added_p50_ratio_agent_over_ddtrace_run\": {},", number(ratio));
    let _ = writeln!(json, "  \"agent_cpu_us_per_request\": {},", number(agent_us));
    let _ = writeln!(json, "  \"agent_rss_idle_mb\": {},", number(rss_idle));
    let _ = writeln!(json, "  \"agent_rss_load_mb\": {},", number(rss_load));
    let _ = writeln!(json, "  \"rate\": {rate},\n  \"cycles\": {cycles}\n}}");
    (table, json)
}
