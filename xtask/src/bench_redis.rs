//! `cargo xtask bench --redis`: what tracing adds to a tight Redis GET loop on loopback.
//!
//! A Redis server (Debian's `redis-server`) and a lean C client (`tests/apps/bench/
//! redis_get_loop.c`: one connection, GETs at a fixed rate, open loop) run for each phase. Phases
//! alternate over several cycles: (a) no agent; (b) the agent tracing the client (every command a
//! `redis.command` span); (c) the agent tracing the server, as a node agent does for a process that
//! opted in (no span: the server's side of the protocol is not traced, so its connections are
//! recognised as nothing and left alone). Reported, medians over the cycles: the server's and the
//! client's CPU per 1,000 GETs, the client's latency, and the agent's CPU per 1,000 GETs; and the
//! traced process's CPU ratio to (a), the median of each cycle's own ratio. Goal: the traced process's CPU at most +5% (a peer's users measured +60% on a Redis
//! server at 10k ops/s).
//!
//! Exits non-zero only when the harness itself fails.

use std::{
    fmt::Write as _,
    fs,
    io::Write,
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::Args;
use ddtrace_tests::redis_server::RedisServer;

use crate::{
    bench::{
        background_load, median, proc_cpu_time, publish, reply, root_and_agent, steal_and_noise_notes, steal_time,
        BenchArgs, Lines, Stream, Watched,
    },
    process::{self, find_in_path, step},
    workspace,
};

/// `cargo xtask bench --redis` options (flattened into `cargo xtask bench`'s; `--rate` and
/// `--cycles` are shared).
#[derive(Debug, Args)]
pub struct RedisArgs {
    /// The cost of tracing a Redis client, and of tracing a Redis server, on a GET loop.
    #[arg(long)]
    pub redis: bool,
    /// --redis: measured seconds per phase.
    #[arg(long, default_value_t = 10)]
    pub redis_seconds: u64,
}

const CLIENT: &str = "tests/apps/bench/redis_get_loop.c";
const DEFAULT_RATE: u32 = 10_000;
const DEFAULT_CYCLES: usize = 5;
const AGENT_READY: &str = "ddtrace-agent: attached: tracing";
/// The traced process's CPU may grow by at most this factor.
const GOAL: f64 = 1.05;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    NoAgent,
    ClientTraced,
    ServerTraced,
}

impl Phase {
    const ALL: [Phase; 3] = [Phase::NoAgent, Phase::ClientTraced, Phase::ServerTraced];

    fn label(self) -> &'static str {
        match self {
            Phase::NoAgent => "(a) no agent",
            Phase::ClientTraced => "(b) client traced",
            Phase::ServerTraced => "(c) server traced",
        }
    }
}

/// One phase's figures.
#[derive(Debug, Default, Clone, Copy)]
struct Run {
    requests: f64,
    server_cpu: Duration,
    client_cpu: Duration,
    agent_cpu: Duration,
    p50_us: f64,
    p99_us: f64,
}

impl Run {
    /// Milliseconds of CPU per 1,000 requests.
    fn per_thousand(cpu: Duration, requests: f64) -> f64 {
        cpu.as_secs_f64() * 1e3 / requests * 1000.0
    }
}

pub fn run(args: &BenchArgs) -> Result<ExitCode> {
    let rate = args.rate.unwrap_or(DEFAULT_RATE);
    let cycles = args.cycles.unwrap_or(DEFAULT_CYCLES);
    let seconds = args.redis.redis_seconds;
    if rate == 0 || cycles == 0 || seconds == 0 {
        bail!("--rate, --cycles and --redis-seconds must be at least 1");
    }
    let agent_binary = root_and_agent(args)?;
    let out_dir = workspace::target_dir().join("bench");
    fs::create_dir_all(&out_dir)?;
    let client_binary = compile_client(&out_dir)?;
    let background = background_load()?;
    let started = Instant::now();
    let steal_before = steal_time();
    let server = RedisServer::start();
    let mut runs: Vec<(Phase, Run)> = Vec::new();
    for cycle in 1..=cycles {
        for phase in Phase::ALL {
            let run = measure(phase, &server, &client_binary, &agent_binary, rate, seconds, args)?;
            step(
                "bench",
                format!(
                    "cycle {cycle} {}: server {:.1} ms, client {:.1} ms, agent {:.1} ms of CPU for {} GETs; p50 {:.0} us",
                    phase.label(),
                    run.server_cpu.as_secs_f64() * 1e3,
                    run.client_cpu.as_secs_f64() * 1e3,
                    run.agent_cpu.as_secs_f64() * 1e3,
                    run.requests,
                    run.p50_us
                ),
            );
            runs.push((phase, run));
        }
    }
    drop(server);
    let medians = |phase: Phase, figure: fn(&Run) -> f64| {
        median(runs.iter().filter(|(p, _)| *p == phase).map(|(_, run)| figure(run)))
    };
    let server_per_k = |r: &Run| Run::per_thousand(r.server_cpu, r.requests);
    let client_per_k = |r: &Run| Run::per_thousand(r.client_cpu, r.requests);
    let agent_per_k = |r: &Run| Run::per_thousand(r.agent_cpu, r.requests);
    let mut table = String::new();
    writeln!(table, "Redis GET loop on loopback: {rate} GETs/s for {seconds} s per phase, {cycles} cycles (medians)")?;
    writeln!(table, "  phase                 server CPU/1k   client CPU/1k   agent CPU/1k   client p50   p99")?;
    for phase in Phase::ALL {
        writeln!(
            table,
            "  {:<20} {:>10.1} ms {:>12.1} ms {:>12.1} ms {:>9.0} us {:>6.0} us",
            phase.label(),
            medians(phase, server_per_k),
            medians(phase, client_per_k),
            medians(phase, agent_per_k),
            medians(phase, |r| r.p50_us),
            medians(phase, |r| r.p99_us),
        )?;
    }
    // Each cycle's own ratio, its phases back to back: the host's drift from one cycle to the
    // next (5-10% of a phase's CPU per GET on these VMs) cancels out, as in `bench --go`.
    let per_cycle = |phase: Phase, figure: fn(&Run) -> f64| {
        median(runs.chunks(Phase::ALL.len()).map(|cycle| {
            let of = |wanted: Phase| cycle.iter().find(|(p, _)| *p == wanted).map_or(f64::NAN, |(_, run)| figure(run));
            of(phase) / of(Phase::NoAgent)
        }))
    };
    let client_ratio = per_cycle(Phase::ClientTraced, client_per_k);
    let server_ratio = per_cycle(Phase::ServerTraced, server_per_k);
    let of_medians = |phase: Phase, figure: fn(&Run) -> f64| medians(phase, figure) / medians(Phase::NoAgent, figure);
    let verdict = |ratio: f64| if ratio <= GOAL { "met" } else { "missed" };
    writeln!(
        table,
        "  traced client's CPU (b)/(a): {client_ratio:.3} (goal <= {GOAL}: {}; ratio of the medians {:.3})",
        verdict(client_ratio),
        of_medians(Phase::ClientTraced, client_per_k)
    )?;
    writeln!(
        table,
        "  traced server's CPU (c)/(a): {server_ratio:.3} (goal <= {GOAL}: {}; ratio of the medians {:.3})",
        verdict(server_ratio),
        of_medians(Phase::ServerTraced, server_per_k)
    )?;
    writeln!(table, "  (each ratio is the median over the cycles of the cycle's own phases)")?;
    steal_and_noise_notes(&mut table, steal_time().saturating_sub(steal_before), started.elapsed(), background);
    let json = format!(
        "{{\"rate\": {rate}, \"seconds\": {seconds}, \"cycles\": {cycles}, \"client_cpu_ratio\": {client_ratio:.4}, \
         \"server_cpu_ratio\": {server_ratio:.4}, \"agent_cpu_ms_per_1000_traced\": {:.3}, \
         \"agent_cpu_ms_per_1000_server\": {:.3}}}",
        medians(Phase::ClientTraced, agent_per_k),
        medians(Phase::ServerTraced, agent_per_k)
    );
    publish(&out_dir, "redis.json", &table, &json)?;
    Ok(ExitCode::SUCCESS)
}

fn measure(
    phase: Phase,
    server: &RedisServer,
    client_binary: &Path,
    agent_binary: &Path,
    rate: u32,
    seconds: u64,
    args: &BenchArgs,
) -> Result<Run> {
    let mut client = Command::new(client_binary)
        .args([server.port.to_string(), rate.to_string(), seconds.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("the Redis client does not start")?;
    let lines = Lines::new(client.stdout.take().context("piped")?);
    let ready = reply(&lines, &mut client, "the Redis client", Duration::from_secs(10))?;
    if ready != "ready" {
        bail!("the Redis client said {ready:?}");
    }
    let traced = match phase {
        Phase::NoAgent => None,
        Phase::ClientTraced => Some(client.id()),
        Phase::ServerTraced => Some(server.pid()),
    };
    let mut agent = match traced {
        None => None,
        Some(pid) => {
            let mut cmd = Command::new(agent_binary);
            let pid = pid.to_string();
            cmd.args(["--pid", &pid, "--exporter", "console", "--profiling-enabled", "false"]);
            Some(Watched::start(cmd, Stream::Stderr, AGENT_READY, Duration::from_secs(args.attach_timeout))?)
        }
    };
    let agent_pid = agent.as_ref().map(|a| a.child.id());
    let agent_before = agent_pid.and_then(proc_cpu_time).unwrap_or_default();
    let server_before = proc_cpu_time(server.pid()).context("the Redis server is gone")?;
    client.stdin.as_mut().context("piped")?.write_all(b"go\n")?;
    let done = reply(&lines, &mut client, "the Redis client", Duration::from_secs(seconds * 3 + 30))?;
    let server_cpu = proc_cpu_time(server.pid()).context("the Redis server is gone")? - server_before;
    let agent_cpu = agent_pid.and_then(proc_cpu_time).unwrap_or_default().saturating_sub(agent_before);
    let _ = client.wait();
    if let Some(agent) = &mut agent {
        agent.stop()?;
    }
    let numbers: Vec<f64> = done.split_whitespace().skip(1).filter_map(|n| n.parse().ok()).collect();
    let [requests, user_ns, system_ns, p50_ns, p99_ns] = numbers[..] else { bail!("the Redis client said {done:?}") };
    Ok(Run {
        requests,
        server_cpu,
        client_cpu: Duration::from_nanos((user_ns + system_ns) as u64),
        agent_cpu,
        p50_us: p50_ns / 1e3,
        p99_us: p99_ns / 1e3,
    })
}

fn compile_client(out_dir: &Path) -> Result<PathBuf> {
    let binary = out_dir.join("redis_get_loop");
    let compiler = find_in_path("cc").context("no C compiler: `cc` is not on PATH (install gcc)")?;
    let mut cmd = Command::new(compiler);
    cmd.args(["-O2", "-Wall", "-Wextra", "-o"]).arg(&binary).arg(workspace::root().join(CLIENT));
    process::run(&mut cmd)?;
    Ok(binary)
}
