//! `cargo xtask bench --databases`: what the agent spends per query of each database protocol.
//!
//! For PostgreSQL (psycopg2), MySQL (PyMySQL against MariaDB) and Redis (redis-py), a Python
//! client (`tests/apps/bench/db_query_loop.py`: one connection, one small query at a fixed rate,
//! open loop) runs against a server of Debian's started for the run, in phases that alternate
//! over several cycles: (a) no agent, (b) the agent tracing the client (a span per query).
//! Reported per protocol, medians over the cycles: the agent's CPU per 1,000 queries, the
//! client's CPU per 1,000 queries and its ratio to (a), the spans the agent sent, and the
//! client's latency.
//!
//! Exits non-zero only when the harness itself fails.

use std::{
    fmt::Write as _,
    fs,
    io::Write,
    process::{Command, ExitCode, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::Args;
use ddtrace_tests::{mysql_server::MysqlServer, postgres_server::PostgresServer, redis_server::RedisServer};

use crate::{
    bench::{
        background_load, median, proc_cpu_time, publish, python_executable, reply, root_and_agent,
        steal_and_noise_notes, steal_time, BenchArgs, Lines, Stream, Watched,
    },
    bench_http::sent_spans,
    process::step,
    workspace,
};

/// `cargo xtask bench --databases` options (flattened into `cargo xtask bench`'s; `--rate` and
/// `--cycles` are shared).
#[derive(Debug, Args)]
pub struct DatabaseArgs {
    /// The agent's CPU per 1,000 queries of PostgreSQL, MySQL and Redis clients.
    #[arg(long)]
    pub databases: bool,
    /// --databases: measured seconds per phase.
    #[arg(long, default_value_t = 10)]
    pub database_seconds: u64,
}

const CLIENT: &str = "tests/apps/bench/db_query_loop.py";
const DEFAULT_RATE: u32 = 2_000;
const DEFAULT_CYCLES: usize = 3;
const AGENT_READY: &str = "ddtrace-agent: attached: tracing";
const PROTOCOLS: [&str; 3] = ["postgresql", "mysql", "redis"];

/// One phase's figures.
#[derive(Debug, Default, Clone, Copy)]
struct Run {
    queries: f64,
    client_cpu: Duration,
    agent_cpu: Duration,
    spans: f64,
    p50_us: f64,
}

/// Milliseconds of CPU per 1,000 queries.
fn per_thousand(cpu: Duration, queries: f64) -> f64 {
    cpu.as_secs_f64() * 1e3 / queries * 1000.0
}

pub fn run(args: &BenchArgs) -> Result<ExitCode> {
    let rate = args.rate.unwrap_or(DEFAULT_RATE);
    let cycles = args.cycles.unwrap_or(DEFAULT_CYCLES);
    let seconds = args.databases.database_seconds;
    if rate == 0 || cycles == 0 || seconds == 0 {
        bail!("--rate, --cycles and --database-seconds must be at least 1");
    }
    let agent_binary = root_and_agent(args)?;
    let python = python_executable()?;
    let out_dir = workspace::target_dir().join("bench");
    fs::create_dir_all(&out_dir)?;
    let background = background_load()?;
    let started = Instant::now();
    let steal_before = steal_time();
    let postgres = PostgresServer::start();
    let mysql = MysqlServer::start();
    let redis = RedisServer::start();
    let ports = [postgres.port, mysql.port, redis.port];
    // (protocol, traced, run)
    let mut runs: Vec<(&str, bool, Run)> = Vec::new();
    for cycle in 1..=cycles {
        for (protocol, port) in PROTOCOLS.into_iter().zip(ports) {
            for traced in [false, true] {
                let client = Client { python: &python, protocol, port, rate, seconds };
                let run = measure(&client, traced.then_some(agent_binary.as_path()), args)?;
                step(
                    "bench",
                    format!(
                        "cycle {cycle} {protocol} {}: client {:.1} ms, agent {:.1} ms of CPU, {} spans for {} queries; p50 {:.0} us",
                        if traced { "traced" } else { "alone" },
                        run.client_cpu.as_secs_f64() * 1e3,
                        run.agent_cpu.as_secs_f64() * 1e3,
                        run.spans,
                        run.queries,
                        run.p50_us
                    ),
                );
                runs.push((protocol, traced, run));
            }
        }
    }
    drop((postgres, mysql, redis));

    let medians = |protocol: &str, traced: bool, figure: &dyn Fn(&Run) -> f64| {
        median(runs.iter().filter(|(p, t, _)| *p == protocol && *t == traced).map(|(_, _, run)| figure(run)))
    };
    let client_per_k = |r: &Run| per_thousand(r.client_cpu, r.queries);
    let agent_per_k = |r: &Run| per_thousand(r.agent_cpu, r.queries);
    let mut table = String::new();
    let mut json = String::from("{");
    writeln!(
        table,
        "Database clients on loopback: {rate} queries/s on one connection for {seconds} s per phase, {cycles} cycles (medians)"
    )?;
    writeln!(
        table,
        "  protocol     agent CPU/1k   client CPU/1k alone   traced   ratio   spans/query   p50 alone   traced"
    )?;
    for protocol in PROTOCOLS {
        let agent = medians(protocol, true, &agent_per_k);
        let (alone, traced) = (medians(protocol, false, &client_per_k), medians(protocol, true, &client_per_k));
        let spans_per_query = medians(protocol, true, &|r| r.spans / r.queries);
        writeln!(
            table,
            "  {protocol:<12} {agent:>9.1} ms {alone:>16.1} ms {traced:>6.1} ms {:>6.3} {spans_per_query:>12.2} {:>9.0} us {:>5.0} us",
            traced / alone,
            medians(protocol, false, &|r| r.p50_us),
            medians(protocol, true, &|r| r.p50_us),
        )?;
        let _ = write!(
            json,
            "{}\"{protocol}\": {{\"agent_cpu_ms_per_1000\": {agent:.3}, \"client_cpu_ratio\": {:.4}, \"spans_per_query\": {spans_per_query:.3}}}",
            if json.len() > 1 { ", " } else { "" },
            traced / alone
        );
    }
    json.push_str(&format!(", \"rate\": {rate}, \"seconds\": {seconds}, \"cycles\": {cycles}}}"));
    writeln!(
        table,
        "  agent CPU: the agent's user + system time over the measured window; spans: what it sent (warm-up included)."
    )?;
    steal_and_noise_notes(&mut table, steal_time().saturating_sub(steal_before), started.elapsed(), background);
    publish(&out_dir, "databases.json", &table, &json)?;
    Ok(ExitCode::SUCCESS)
}

struct Client<'a> {
    python: &'a std::path::Path,
    protocol: &'a str,
    port: u16,
    rate: u32,
    seconds: u64,
}

fn measure(client: &Client, agent_binary: Option<&std::path::Path>, args: &BenchArgs) -> Result<Run> {
    let mut child = Command::new(client.python)
        .arg(workspace::root().join(CLIENT))
        .args([
            client.protocol.to_string(),
            client.port.to_string(),
            client.rate.to_string(),
            client.seconds.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("the query loop does not start")?;
    let lines = Lines::new(child.stdout.take().context("piped")?);
    let who = format!("the {} query loop", client.protocol);
    let ready = reply(&lines, &mut child, &who, Duration::from_secs(30))?;
    if ready != "ready" {
        bail!("{who} said {ready:?}");
    }
    let mut agent = match agent_binary {
        None => None,
        Some(binary) => {
            // Spans go the way users' do: msgpack to an intake (one that costs nothing).
            let sink = crate::bench_sink::TraceSink::start()?;
            let mut cmd = Command::new(binary);
            let pid = child.id().to_string();
            cmd.args(["--pid", &pid, "--agent-url", &sink.url, "--profiling-enabled", "false"]);
            Some(Watched::start(cmd, Stream::Stderr, AGENT_READY, Duration::from_secs(args.attach_timeout))?)
        }
    };
    let agent_pid = agent.as_ref().map(|a| a.child.id());
    let agent_before = agent_pid.and_then(proc_cpu_time).unwrap_or_default();
    child.stdin.as_mut().context("piped")?.write_all(b"go\n")?;
    let done = reply(&lines, &mut child, &who, Duration::from_secs(client.seconds * 3 + 30))?;
    let agent_cpu = agent_pid.and_then(proc_cpu_time).unwrap_or_default().saturating_sub(agent_before);
    drop(child.stdin.take());
    let _ = child.wait();
    let spans = match &mut agent {
        Some(agent) => sent_spans(&agent.stop()?)
            .map(|n| n as f64)
            .with_context(|| format!("the agent tracing {who} printed no span count"))?,
        None => 0.0,
    };
    let numbers: Vec<f64> = done.split_whitespace().skip(1).filter_map(|n| n.parse().ok()).collect();
    let [queries, user_ns, system_ns, p50_ns, _p99_ns] = numbers[..] else { bail!("{who} said {done:?}") };
    Ok(Run {
        queries,
        client_cpu: Duration::from_nanos((user_ns + system_ns) as u64),
        agent_cpu,
        spans,
        p50_us: p50_ns / 1e3,
    })
}
