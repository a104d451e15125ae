//! `cargo xtask bench --http`: the latency ddtrace-agent adds to a Python HTTP server.
//!
//! One threading HTTP/1.1 server (`tests/apps/bench/http_server.py`, the real interpreter) runs
//! for the whole benchmark. A load generator in this process sends it GETs over loopback at a
//! fixed rate (open loop: request k of a connection is due at a fixed time whatever happened to
//! the earlier ones, and its latency runs from that due time to the end of its response, so a
//! stall is charged to every request it delays: no coordinated omission). Phases alternate over
//! several cycles: (a) no agent, (b) the agent attached (tracing only, spans to the console
//! exporter whose stdout is discarded). Each phase warms up for a second on its own connections
//! before measuring. Reported: latency percentiles per phase (medians over the cycles), what (b)
//! adds, and CPU time per 1,000 requests of the server and of the agent.
//!
//! Exits non-zero only when the harness itself fails.

use std::{
    fmt::Write as _,
    fs,
    io::{BufRead, BufReader, Write},
    net::{Shutdown, TcpStream},
    path::PathBuf,
    process::{Child, Command, ExitCode, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::{
    bench::{
        background_load, children_cpu_time, kill_unreaped, median, number, proc_cpu_time, publish, python_executable,
        reply, root_and_agent, steal_and_noise_notes, steal_time, string, BenchArgs, Lines, Stream, Watched,
    },
    process::step,
    workspace,
};

/// `cargo xtask bench --http` options (flattened into `cargo xtask bench`'s; `--rate` and
/// `--cycles` are shared).
#[derive(Debug, Args)]
pub struct HttpArgs {
    /// Instead of the uprobe cost: the latency the agent adds to a Python HTTP server.
    #[arg(long)]
    pub http: bool,
    /// --http: measured seconds per phase (after 1 s of warm-up).
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// --http: concurrent client connections (each on its own thread; the rate is split evenly).
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// --http: a new connection per request (`Connection: close`) instead of keep-alive ones.
    #[arg(long)]
    pub new_connections: bool,
}

const SERVER: &str = "tests/apps/bench/http_server.py";
const DEFAULT_CYCLES: usize = 3;
const DEFAULT_RATE: u32 = 500;
/// Load before the measured window, in every phase alike. Long enough for the agent's one-time
/// work under load to be over (its profiler reads the debug information of the code it first
/// samples, ~25 ms for a Python app, ~2 s after the load starts): the figures are what a service
/// pays while it runs, which is what the goals are about.
const WARMUP: Duration = Duration::from_secs(3);
/// The agent's stderr line once it has instrumented the target and its children.
const AGENT_READY: &str = "ddtrace-agent: attached: tracing";
/// A request not answered within this is counted as an error (and its connection reopened).
const IO_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Config {
    NoAgent,
    Agent,
}

impl Config {
    fn label(self) -> &'static str {
        match self {
            Config::NoAgent => "(a) no agent",
            Config::Agent => "(b) agent attached",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Config::NoAgent => "no_agent",
            Config::Agent => "agent",
        }
    }
}

/// One measured phase.
#[derive(Debug, Clone)]
pub(crate) struct Run {
    /// Latencies of the requests due in the measured window, in µs, sorted.
    latencies_us: Vec<f64>,
    /// Requests due in the measured window, and those among them that failed.
    pub(crate) scheduled: u64,
    pub(crate) errors: u64,
    /// The server's CPU time over the measured window.
    pub(crate) server_cpu: Option<Duration>,
    /// The agent's CPU time over the measured window, and over its whole life.
    pub(crate) agent_cpu: Option<Duration>,
    agent_cpu_total: Option<Duration>,
    /// Spans the agent reported sending at exit (warm-up requests included).
    spans: Option<u64>,
}

impl Run {
    pub(crate) fn completed(&self) -> u64 {
        self.latencies_us.len() as u64
    }

    pub(crate) fn percentile(&self, p: f64) -> f64 {
        percentile(&self.latencies_us, p)
    }

    /// CPU milliseconds per 1,000 completed requests.
    pub(crate) fn per_kilo(&self, cpu: Option<Duration>) -> f64 {
        match cpu {
            Some(cpu) if self.completed() > 0 => cpu.as_secs_f64() * 1e6 / self.completed() as f64,
            _ => f64::NAN,
        }
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn run(args: &BenchArgs) -> Result<ExitCode> {
    let options = &args.http;
    let cycles = args.cycles.unwrap_or(DEFAULT_CYCLES);
    let rate = args.rate.unwrap_or(DEFAULT_RATE);
    if cycles == 0 || rate == 0 || options.duration == 0 || options.connections == 0 {
        bail!("--cycles, --rate, --duration and --connections must be at least 1");
    }
    let agent = root_and_agent(args)?;
    let python = python_executable()?;
    let out_dir = workspace::target_dir().join("bench");
    fs::create_dir_all(&out_dir).with_context(|| format!("could not create {}", out_dir.display()))?;
    let mut server = Server::start(&python)?;
    step("bench", format!("server: {} {SERVER}, pid {}, port {}", python.display(), server.pid, server.port));

    let background_busy = background_load()?;
    let load = Load {
        port: server.port,
        path: "/bench",
        rate,
        connections: options.connections,
        duration: Duration::from_secs(options.duration),
        new_connections: options.new_connections,
    };
    let pid = server.pid.to_string();
    let attach_timeout = Duration::from_secs(args.attach_timeout);
    let run_started = Instant::now();
    let steal_before = steal_time();
    let configs = [Config::NoAgent, Config::Agent];
    let mut runs: Vec<(Config, Vec<Run>)> = configs.iter().map(|&config| (config, Vec::new())).collect();
    for cycle in 0..cycles {
        for index in 0..configs.len() {
            // Rotated each cycle, so that neither phase always comes first.
            let slot = (index + cycle) % configs.len();
            let config = configs[slot];
            let run = match config {
                Config::NoAgent => load.run(server.pid, None),
                Config::Agent => {
                    let mut cmd = Command::new(&agent);
                    cmd.args(["--pid", &pid, "--exporter", "console", "--profiling-enabled", "false"])
                        // Its default filter logs the exit report (with the span count) at info.
                        .env_remove("RUST_LOG");
                    // Watched discards the agent's stdout: the console exporter's span lines.
                    let mut watched = Watched::start(cmd, Stream::Stderr, AGENT_READY, attach_timeout)?;
                    let mut run = load.run(server.pid, Some(watched.child.id()));
                    let cpu_before = children_cpu_time();
                    let stderr = watched.stop()?;
                    if let Ok(run) = run.as_mut() {
                        // Every other child is unreaped: the growth is the agent's.
                        run.agent_cpu_total = Some(children_cpu_time().saturating_sub(cpu_before));
                        run.spans = sent_spans(&stderr);
                    }
                    run
                }
            }
            .with_context(|| format!("{}, cycle {}", config.label(), cycle + 1))?;
            server.check_alive()?;
            step(
                "bench",
                format!(
                    "{}, cycle {}: p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs; {}/{} requests ({} errors); \
                     server cpu {:.1} ms/1k req{}{}",
                    config.label(),
                    cycle + 1,
                    run.percentile(50.0),
                    run.percentile(99.0),
                    run.percentile(100.0),
                    run.completed(),
                    run.scheduled,
                    run.errors,
                    run.per_kilo(run.server_cpu),
                    run.agent_cpu
                        .map(|_| format!(", agent cpu {:.1} ms/1k req", run.per_kilo(run.agent_cpu)))
                        .unwrap_or_default(),
                    run.spans.map(|n| format!(", {n} spans")).unwrap_or_default(),
                ),
            );
            runs[slot].1.push(run);
        }
    }
    let report = Report {
        background_busy,
        python,
        load,
        cycles,
        runs,
        steal: steal_time().saturating_sub(steal_before),
        elapsed: run_started.elapsed(),
    };
    publish(&out_dir, "http.json", &report.table(), &report.json())?;
    Ok(ExitCode::SUCCESS)
}

/// The spans the agent sent, from its exit line (`tracing: flushed at exit ... sent_spans=N ...`).
pub(crate) fn sent_spans(stderr: &[String]) -> Option<u64> {
    let line = stderr.iter().rev().find(|line| line.contains("tracing: flushed at exit"))?;
    let (_, rest) = line.split_once("sent_spans=")?;
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// The Python server, alive for the whole benchmark.
struct Server {
    child: Child,
    pid: u32,
    port: u16,
}

impl Server {
    fn start(python: &std::path::Path) -> Result<Self> {
        let script = workspace::root().join(SERVER);
        let mut child = Command::new(python)
            .arg("-u")
            .arg(&script)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("could not start {} {}", python.display(), script.display()))?;
        let pid = child.id();
        let stdout = Lines::new(child.stdout.take().context("the server's stdout was not piped")?);
        let mut server = Self { child, pid, port: 0 };
        let line = reply(&stdout, &mut server.child, "the server", Duration::from_secs(30))?;
        server.port = line
            .strip_prefix("ready ")
            .and_then(|port| port.trim().parse().ok())
            .with_context(|| format!("the server printed {line:?} instead of `ready PORT`"))?;
        Ok(server)
    }

    fn check_alive(&mut self) -> Result<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => bail!("the server exited during the benchmark ({status})"),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        kill_unreaped(&mut self.child);
    }
}

/// The load generator's settings.
pub(crate) struct Load {
    pub(crate) port: u16,
    /// The request's path.
    pub(crate) path: &'static str,
    pub(crate) rate: u32,
    pub(crate) connections: usize,
    pub(crate) duration: Duration,
    pub(crate) new_connections: bool,
}

/// What one client thread measured.
#[derive(Default)]
struct ClientResult {
    latencies_us: Vec<f64>,
    scheduled: u64,
    errors: u64,
}

impl Load {
    /// One phase: warm-up then the measured window, with CPU times of the server (and agent) over it.
    pub(crate) fn run(&self, server: u32, agent: Option<u32>) -> Result<Run> {
        let start = Instant::now() + Duration::from_millis(50);
        let measure_from = start + WARMUP;
        let end = measure_from + self.duration;
        // Each connection sends every `connections`-th request of the global schedule.
        let interval = Duration::from_secs_f64(self.connections as f64 / f64::from(self.rate));
        let clients: Vec<_> = (0..self.connections)
            .map(|index| {
                let first = start + Duration::from_secs_f64(index as f64 / f64::from(self.rate));
                let (port, path, close) = (self.port, self.path, self.new_connections);
                thread::spawn(move || client(port, path, close, first, interval, measure_from, end))
            })
            .collect();
        thread::sleep(measure_from.saturating_duration_since(Instant::now()));
        let server_before = proc_cpu_time(server);
        let agent_before = agent.and_then(proc_cpu_time);
        let mut total = ClientResult::default();
        for client in clients {
            let result = client.join().map_err(|_| anyhow::anyhow!("a load generator thread panicked"))?;
            total.latencies_us.extend(result.latencies_us);
            total.scheduled += result.scheduled;
            total.errors += result.errors;
        }
        let since = |before: Option<Duration>, pid: u32| Some(proc_cpu_time(pid)?.saturating_sub(before?));
        let server_cpu = since(server_before, server);
        let agent_cpu = agent.and_then(|pid| since(agent_before, pid));
        total.latencies_us.sort_by(f64::total_cmp);
        Ok(Run {
            latencies_us: total.latencies_us,
            scheduled: total.scheduled,
            errors: total.errors,
            server_cpu,
            agent_cpu,
            agent_cpu_total: None,
            spans: None,
        })
    }
}

/// One client connection's loop: request k is due at `first + k * interval`; those due from
/// `measure_from` to `end` are measured.
fn client(
    port: u16,
    path: &str,
    close: bool,
    first: Instant,
    interval: Duration,
    measure_from: Instant,
    end: Instant,
) -> ClientResult {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: xtask-bench\r\nConnection: {}\r\n\r\n",
        if close { "close" } else { "keep-alive" }
    );
    let mut result = ClientResult::default();
    let mut connection: Option<BufReader<TcpStream>> = None;
    for k in 0u32.. {
        let due = first + interval * k;
        if due >= end {
            break;
        }
        let now = Instant::now();
        if due > now {
            thread::sleep(due - now);
        }
        let measured = due >= measure_from;
        if measured {
            result.scheduled += 1;
        }
        match exchange(&mut connection, port, request.as_bytes()) {
            Ok(()) => {
                if measured {
                    result.latencies_us.push(due.elapsed().as_secs_f64() * 1e6);
                }
            }
            Err(_) => {
                connection = None;
                if measured {
                    result.errors += 1;
                }
            }
        }
        if close {
            connection = None;
        }
    }
    if let Some(connection) = connection {
        let _ = connection.get_ref().shutdown(Shutdown::Both);
    }
    result
}

/// Sends one request on `connection` (opened if `None`) and reads its whole response.
fn exchange(connection: &mut Option<BufReader<TcpStream>>, port: u16, request: &[u8]) -> std::io::Result<()> {
    if connection.is_none() {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        *connection = Some(BufReader::new(stream));
    }
    let reader = connection.as_mut().expect("opened above");
    reader.get_mut().write_all(request)?;
    let invalid = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let mut line = String::new();
    let mut content_length = None;
    let mut status_line = true;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(invalid("connection closed before the response's head"));
        }
        let trimmed = line.trim_end();
        if status_line {
            if !trimmed.starts_with("HTTP/1.") || trimmed.split_whitespace().nth(1) != Some("200") {
                return Err(invalid("not a 200 response"));
            }
            status_line = false;
        } else if trimmed.is_empty() {
            break;
        } else if let Some((name, value)) = trimmed.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                content_length = value.trim().parse::<usize>().ok();
            }
        }
    }
    let length = content_length.ok_or_else(|| invalid("no Content-Length"))?;
    let mut body = vec![0; length];
    std::io::Read::read_exact(reader, &mut body)
}

struct Report {
    background_busy: f64,
    python: PathBuf,
    load: Load,
    cycles: usize,
    runs: Vec<(Config, Vec<Run>)>,
    steal: Duration,
    elapsed: Duration,
}

/// Medians over one configuration's cycles.
struct Summary {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
    completed: u64,
    scheduled: u64,
    errors: u64,
    server_ms_per_kilo: f64,
    agent_ms_per_kilo: f64,
    agent_cpu_total_ms: f64,
    spans: f64,
}

impl Summary {
    fn of(runs: &[Run]) -> Self {
        let ms = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0);
        Self {
            p50: median(runs.iter().map(|r| r.percentile(50.0))),
            p90: median(runs.iter().map(|r| r.percentile(90.0))),
            p99: median(runs.iter().map(|r| r.percentile(99.0))),
            max: median(runs.iter().map(|r| r.percentile(100.0))),
            completed: runs.iter().map(Run::completed).sum(),
            scheduled: runs.iter().map(|r| r.scheduled).sum(),
            errors: runs.iter().map(|r| r.errors).sum(),
            server_ms_per_kilo: median(runs.iter().map(|r| r.per_kilo(r.server_cpu))),
            agent_ms_per_kilo: median(runs.iter().map(|r| r.per_kilo(r.agent_cpu))),
            agent_cpu_total_ms: median(runs.iter().map(|r| ms(r.agent_cpu_total))),
            spans: median(runs.iter().map(|r| r.spans.map_or(f64::NAN, |n| n as f64))),
        }
    }
}

/// A table cell: `-` for what does not apply.
fn cell(value: f64, precision: usize) -> String {
    if value.is_finite() {
        format!("{value:.precision$}")
    } else {
        "-".to_string()
    }
}

impl Report {
    fn mode(&self) -> String {
        if self.load.new_connections {
            format!("{} client threads, a new connection per request (Connection: close)", self.load.connections)
        } else {
            format!("{} keep-alive connections", self.load.connections)
        }
    }

    fn table(&self) -> String {
        let base = Summary::of(&self.runs[0].1);
        let agent = Summary::of(&self.runs[1].1);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\nHTTP GETs to a Python ThreadingHTTPServer over loopback at {} req/s from {}, {} s measured per phase \
             after {} s of warm-up:\nmedians of {} cycles per phase",
            self.load.rate,
            self.mode(),
            self.load.duration.as_secs(),
            WARMUP.as_secs(),
            self.cycles
        );
        let _ = writeln!(
            out,
            "  {:<20} {:>8} {:>8} {:>8} {:>9} {:>17} {:>7} {:>12} {:>12} {:>8}",
            "phase",
            "p50 µs",
            "p90 µs",
            "p99 µs",
            "max µs",
            "done/scheduled",
            "errors",
            "server ms/1k",
            "agent ms/1k",
            "spans"
        );
        for (config, runs) in &self.runs {
            let s = Summary::of(runs);
            let _ = writeln!(
                out,
                "  {:<20} {:>8.0} {:>8.0} {:>8.0} {:>9.0} {:>17} {:>7} {:>12} {:>12} {:>8}",
                config.label(),
                s.p50,
                s.p90,
                s.p99,
                s.max,
                format!("{}/{}", s.completed, s.scheduled),
                s.errors,
                cell(s.server_ms_per_kilo, 1),
                cell(s.agent_ms_per_kilo, 1),
                cell(s.spans, 0),
            );
        }
        let added = |b: f64, a: f64| format!("{:+.0} µs ({:+.1}%)", a - b, 100.0 * (a - b) / b);
        let _ = writeln!(
            out,
            "  added by the agent: p50 {}, p99 {}; agent CPU {} ms per 1,000 requests while serving ({} ms over its \
             whole life per phase, start-up included)",
            added(base.p50, agent.p50),
            added(base.p99, agent.p99),
            cell(agent.agent_ms_per_kilo, 1),
            cell(agent.agent_cpu_total_ms, 0),
        );
        let _ = writeln!(
            out,
            "  latency: from each request's due time (open loop) to the end of its response. ms/1k: CPU time \
             (user + system, 10 ms ticks)\n  over the measured window per 1,000 completed requests. spans: the agent's \
             exit report, warm-up requests included."
        );
        steal_and_noise_notes(&mut out, self.steal, self.elapsed, self.background_busy);
        out
    }

    fn json(&self) -> String {
        let base = Summary::of(&self.runs[0].1);
        let list = |values: &mut dyn Iterator<Item = f64>| values.map(number).collect::<Vec<_>>().join(", ");
        let phases: Vec<String> = self
            .runs
            .iter()
            .map(|(config, runs)| {
                let s = Summary::of(runs);
                format!(
                    "    {key}: {{\"label\": {label}, \"p50_us\": {p50}, \"p90_us\": {p90}, \"p99_us\": {p99}, \
                     \"max_us\": {max}, \"added_p50_us\": {ap50}, \"added_p50_percent\": {pp50}, \"added_p99_us\": {ap99}, \
                     \"added_p99_percent\": {pp99}, \"completed\": {done}, \"scheduled\": {scheduled}, \"errors\": {errors}, \
                     \"server_cpu_ms_per_1000_requests\": {server}, \"agent_cpu_ms_per_1000_requests\": {agent}, \
                     \"agent_cpu_ms_whole_life\": {agent_total}, \"spans\": {spans}, \"runs_p50_us\": [{r50}], \
                     \"runs_p99_us\": [{r99}]}}",
                    key = string(config.key()),
                    label = string(config.label()),
                    p50 = number(s.p50),
                    p90 = number(s.p90),
                    p99 = number(s.p99),
                    max = number(s.max),
                    ap50 = number(s.p50 - base.p50),
                    pp50 = number(100.0 * (s.p50 - base.p50) / base.p50),
                    ap99 = number(s.p99 - base.p99),
                    pp99 = number(100.0 * (s.p99 - base.p99) / base.p99),
                    done = s.completed,
                    scheduled = s.scheduled,
                    errors = s.errors,
                    server = number(s.server_ms_per_kilo),
                    agent = number(s.agent_ms_per_kilo),
                    agent_total = number(s.agent_cpu_total_ms),
                    spans = number(s.spans),
                    r50 = list(&mut runs.iter().map(|r| r.percentile(50.0))),
                    r99 = list(&mut runs.iter().map(|r| r.percentile(99.0))),
                )
            })
            .collect();
        format!(
            "{{\n  \"server\": {server},\n  \"python\": {python},\n  \"rate_per_s\": {rate},\n  \"connections\": {conns},\n  \
             \"new_connection_per_request\": {close},\n  \"duration_s\": {duration},\n  \"warmup_s\": {warmup},\n  \
             \"cycles\": {cycles},\n  \"statistic\": \"median over the cycles of each phase's percentiles; counts summed\",\n  \
             \"background_cpu_busy\": {busy},\n  \"steal_seconds\": {steal},\n  \"elapsed_seconds\": {elapsed},\n  \
             \"phases\": {{\n{phases}\n  }}\n}}\n",
            server = string(SERVER),
            python = string(&self.python.display().to_string()),
            rate = self.load.rate,
            conns = self.load.connections,
            close = self.load.new_connections,
            duration = self.load.duration.as_secs(),
            warmup = WARMUP.as_secs(),
            cycles = self.cycles,
            busy = number(self.background_busy),
            steal = number(self.steal.as_secs_f64()),
            elapsed = number(self.elapsed.as_secs_f64()),
            phases = phases.join(",\n"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 50.0), 50.0);
        assert_eq!(percentile(&values, 99.0), 99.0);
        assert_eq!(percentile(&values, 100.0), 100.0);
        assert_eq!(percentile(&[7.0], 50.0), 7.0);
        assert!(percentile(&[], 50.0).is_nan());
    }

    #[test]
    fn reads_the_agents_span_count() {
        let stderr = vec![
            "2026-01-01T00:00:00Z  INFO ddtrace_agent::products::tracing: tracing: flushed at exit sent_chunks=3 \
             sent_spans=12 failed_chunks=0"
                .to_string(),
        ];
        assert_eq!(sent_spans(&stderr), Some(12));
        assert_eq!(sent_spans(&[]), None);
    }
}
