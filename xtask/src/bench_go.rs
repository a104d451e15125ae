//! `cargo xtask bench --go`: what tracing costs a Go HTTPS server (Go's own `crypto/tls`, read by
//! entry-style probes on emulated jumps; `ddtrace-agent/src/integrations/go_tls.rs`).
//!
//! One Go server (`tests/apps/go_http`, `tls-server`: HTTPS, HTTP/1.1, a self-signed certificate)
//! runs for the whole benchmark. The load is Go's own HTTPS client (`go_http load`): GETs at a
//! fixed rate over keep-alive connections, open loop (each request due at a fixed time, its
//! latency counted from then). Phases alternate over several cycles: (a) no agent, (b) the
//! agent attached (tracing only, spans to the console exporter, discarded). Reported: p50 and
//! p99 per phase (medians over cycles), what (b) adds, and the server's CPU per 1,000 requests
//! with (b)/(a): a peer's users measured +40% CPU on Go services; the goal is <= +5%.
//!
//! Exits non-zero only when the harness itself fails.

use std::{
    fmt::Write as _,
    fs,
    net::TcpListener,
    path::Path,
    process::{Child, Command, ExitCode, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::{
    bench_probe_costs,
    bench::{
        background_load, kill_unreaped, median, number, proc_cpu_time, publish, reply, root_and_agent,
        steal_and_noise_notes, steal_time, BenchArgs, Lines, Stream, Watched,
    },
    process::step,
    workspace,
};

#[derive(Debug, Args)]
pub struct GoArgs {
    /// Instead of the uprobe cost: what the agent costs a Go HTTPS server (crypto/tls probes).
    #[arg(long)]
    pub go: bool,
}

const DEFAULT_CYCLES: usize = 3;
const DEFAULT_RATE: u32 = 1000;
const WARMUP_SECONDS: u64 = 2;
const AGENT_READY: &str = "ddtrace-agent: attached: tracing";
/// The server's CPU per request may grow by this much with the agent attached.
const CPU_GOAL: f64 = 1.05;

/// One measured phase.
struct Run {
    p50_us: f64,
    p99_us: f64,
    completed: u64,
    scheduled: u64,
    errors: u64,
    server_cpu: Option<Duration>,
    agent_cpu: Option<Duration>,
}

impl Run {
    fn per_kilo(&self, cpu: Option<Duration>) -> f64 {
        match cpu {
            Some(cpu) if self.completed > 0 => cpu.as_secs_f64() * 1e6 / self.completed as f64,
            _ => f64::NAN,
        }
    }
}

pub fn run(args: &BenchArgs) -> Result<ExitCode> {
    let cycles = args.cycles.unwrap_or(DEFAULT_CYCLES);
    let rate = args.rate.unwrap_or(DEFAULT_RATE);
    let (seconds, connections) = (args.http.duration, args.http.connections);
    if cycles == 0 || rate == 0 || seconds == 0 || connections == 0 {
        bail!("--cycles, --rate, --duration and --connections must be at least 1");
    }
    let agent = root_and_agent(args)?;
    let out_dir = workspace::target_dir().join("bench");
    fs::create_dir_all(&out_dir).with_context(|| format!("could not create {}", out_dir.display()))?;
    // Built as the tests build it (static, offline, the shared Go cache); panics with go's
    // output when the build fails.
    let binary = ddtrace_tests::native_app::build_go("go_http/main.go", "go_http");
    // The load runs a copy: another file, so the agent's probes (placed in the server's file,
    // which global probe scope arms in every process mapping it) never trap in the load.
    let load_binary = out_dir.join("go_http_load");
    fs::copy(&binary, &load_binary).context("could not copy the Go program for the load")?;
    let port = free_port()?;
    let mut server = GoServer::start(&binary, port)?;
    step("bench", format!("server: {} tls-server {port}, pid {}", binary.display(), server.child.id()));
    let version = go_version();
    let background_busy = background_load()?;
    let url = format!("https://127.0.0.1:{port}/users/7");
    let server_pid = server.child.id();
    let load = |agent_pid: Option<u32>| -> Result<Run> {
        let mut child = Command::new(&load_binary)
            .args(["load", &url, &rate.to_string(), &WARMUP_SECONDS.to_string(), &seconds.to_string()])
            .arg(connections.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .context("could not start the Go load generator")?;
        let lines = Lines::new(child.stdout.take().context("the load's stdout was not piped")?);
        let timeout = Duration::from_secs(WARMUP_SECONDS + seconds + 30);
        let measuring = reply(&lines, &mut child, "the load generator", timeout)?;
        if measuring.trim() != "measuring" {
            bail!("the load generator printed {measuring:?} instead of `measuring`");
        }
        let server_before = proc_cpu_time(server_pid);
        let agent_before = agent_pid.and_then(proc_cpu_time);
        let done = reply(&lines, &mut child, "the load generator", timeout)?;
        let server_cpu = proc_cpu_time(server_pid).zip(server_before).map(|(after, before)| after - before);
        let agent_cpu = agent_pid.and_then(proc_cpu_time).zip(agent_before).map(|(after, before)| after - before);
        let _ = child.wait();
        let field = |name: &str| -> Result<f64> {
            done.split_whitespace()
                .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
                .with_context(|| format!("no {name} in the load generator's line {done:?}"))
        };
        Ok(Run {
            p50_us: field("p50_us")?,
            p99_us: field("p99_us")?,
            completed: field("completed")? as u64,
            scheduled: field("scheduled")? as u64,
            errors: field("errors")? as u64,
            server_cpu,
            agent_cpu,
        })
    };
    let pid = server_pid.to_string();
    let attach_timeout = Duration::from_secs(args.attach_timeout);
    let started = Instant::now();
    let steal_before = steal_time();
    // The agent attached for the length of `during`, its crypto/tls probes checked.
    let with_agent = |during: &dyn Fn(u32) -> Result<Run>| -> Result<Run> {
        let mut cmd = Command::new(&agent);
        cmd.args(["--pid", &pid, "--exporter", "console", "--profiling-enabled", "false"]).env_remove("RUST_LOG");
        let mut watched = Watched::start(cmd, Stream::Stderr, AGENT_READY, attach_timeout)?;
        let run = during(watched.child.id());
        let stderr = watched.stop()?;
        if !stderr.iter().any(|line| line.contains("go-crypto/tls: attached")) {
            bail!("the agent did not attach its crypto/tls probes:\n{}", stderr.join("\n"));
        }
        run
    };
    let labels = ["(a) no agent", "(b) agent attached"];
    let mut runs: [Vec<Run>; 2] = [Vec::new(), Vec::new()];
    for cycle in 0..cycles {
        for index in 0..2 {
            let slot = (index + cycle) % 2;
            let run = if slot == 0 { load(None) } else { with_agent(&|agent_pid| load(Some(agent_pid))) }
            .with_context(|| format!("{}, cycle {}", labels[slot], cycle + 1))?;
            server.check_alive()?;
            step(
                "bench",
                format!(
                    "{}, cycle {}: p50 {:.0} µs, p99 {:.0} µs; {}/{} requests ({} errors); server cpu {:.1} ms/1k req{}",
                    labels[slot],
                    cycle + 1,
                    run.p50_us,
                    run.p99_us,
                    run.completed,
                    run.scheduled,
                    run.errors,
                    run.per_kilo(run.server_cpu),
                    run.agent_cpu.map(|_| format!(", agent cpu {:.1} ms/1k req", run.per_kilo(run.agent_cpu))).unwrap_or_default()
                ),
            );
            runs[slot].push(run);
        }
    }
    // Where the cost is: one more (b) phase with the kernel's program statistics on (they add
    // two clock reads to every program run, so this phase stays out of the verdict).
    let costs = std::cell::RefCell::new(Vec::new());
    let diagnosed = with_agent(&|agent_pid| {
        let _stats = bench_probe_costs::StatsOn::start()?;
        let run = load(Some(agent_pid));
        *costs.borrow_mut() = bench_probe_costs::program_costs(agent_pid);
        run
    })
    .context("the extra phase with the kernel's program statistics")?;
    let requests_sent = rate as u64 * (WARMUP_SECONDS + seconds);
    step("bench", format!("extra (b) phase with program statistics: server cpu {:.1} ms/1k req", diagnosed.per_kilo(diagnosed.server_cpu)));
    let summary = |runs: &[Run]| Summary {
        p50: median(runs.iter().map(|r| r.p50_us)),
        p99: median(runs.iter().map(|r| r.p99_us)),
        server: median(runs.iter().map(|r| r.per_kilo(r.server_cpu))),
        agent: median(runs.iter().map(|r| r.per_kilo(r.agent_cpu))),
        completed: runs.iter().map(|r| r.completed).sum(),
        scheduled: runs.iter().map(|r| r.scheduled).sum(),
        errors: runs.iter().map(|r| r.errors).sum(),
    };
    let (base, traced) = (summary(&runs[0]), summary(&runs[1]));
    // Each cycle's phases ran back to back: their ratio cancels the host's slower drifts, which
    // on these VMs move a phase's CPU per request by 10% from one cycle to the next.
    let ratio = median(runs[0].iter().zip(&runs[1]).map(|(a, b)| b.per_kilo(b.server_cpu) / a.per_kilo(a.server_cpu)));
    let ratio_of_medians = traced.server / base.server;
    let mut table = String::new();
    let _ = writeln!(
        table,
        "\nHTTPS GETs to a Go {version} net/http server (crypto/tls) over loopback at {rate} req/s from {connections} \
         keep-alive connections (Go's client), {seconds} s measured per phase after {WARMUP_SECONDS} s of warm-up:\n\
         medians of {cycles} cycles per phase"
    );
    let _ = writeln!(
        table,
        "  {:<20} {:>8} {:>8} {:>17} {:>7} {:>13} {:>12}",
        "phase", "p50 µs", "p99 µs", "done/scheduled", "errors", "server ms/1k", "agent ms/1k"
    );
    for (label, s) in labels.iter().zip([&base, &traced]) {
        let agent = if s.agent.is_finite() { format!("{:.1}", s.agent) } else { "-".into() };
        let _ = writeln!(
            table,
            "  {:<20} {:>8.0} {:>8.0} {:>17} {:>7} {:>13.1} {:>12}",
            label,
            s.p50,
            s.p99,
            format!("{}/{}", s.completed, s.scheduled),
            s.errors,
            s.server,
            agent
        );
    }
    let verdict = if ratio <= CPU_GOAL { "goal met" } else { "GOAL MISSED" };
    let _ = writeln!(
        table,
        "  added by the agent: p50 {:+.0} µs; server CPU per request (b)/(a) = {ratio:.3} ({:+.1}%; goal <= {CPU_GOAL:.2}: \
         {verdict})\n  (the median of each cycle's own ratio; the ratio of the medians above is {ratio_of_medians:.3})",
        traced.p50 - base.p50,
        100.0 * (ratio - 1.0)
    );
    let _ = writeln!(
        table,
        "  ms/1k: CPU time (user + system) over the measured window per 1,000 completed requests; the load generator \
         runs on the same CPUs in both phases."
    );
    let _ = writeln!(
        table,
        "\nWhere the agent's kernel time goes, from one more (b) phase with kernel.bpf_stats_enabled (not in the figures \
         above), over the {requests_sent} requests it sent; each uprobe hit also costs its trap, which this leaves out:"
    );
    table.push_str(&bench_probe_costs::table(&costs.borrow(), requests_sent));
    steal_and_noise_notes(&mut table, steal_time().saturating_sub(steal_before), started.elapsed(), background_busy);
    let json = format!(
        "{{\"benchmark\": \"go\", \"go\": \"{version}\", \"rate\": {rate}, \"connections\": {connections}, \
         \"seconds\": {seconds}, \"cycles\": {cycles}, \"p50_us\": [{}, {}], \"p99_us\": [{}, {}], \
         \"server_ms_per_1k\": [{}, {}], \"agent_ms_per_1k\": {}, \"server_cpu_ratio\": {}, \
         \"server_cpu_ratio_of_medians\": {}, \"kernel_programs_us_per_request\": {}}}\n",
        number(base.p50),
        number(traced.p50),
        number(base.p99),
        number(traced.p99),
        number(base.server),
        number(traced.server),
        number(traced.agent),
        number(ratio),
        number(ratio_of_medians),
        number(costs.borrow().iter().map(|cost| cost.nanos).sum::<u64>() as f64 / requests_sent.max(1) as f64 / 1000.0)
    );
    publish(&out_dir, "go.json", &table, &json)?;
    Ok(ExitCode::SUCCESS)
}

struct Summary {
    p50: f64,
    p99: f64,
    server: f64,
    agent: f64,
    completed: u64,
    scheduled: u64,
    errors: u64,
}

/// The Go server, alive for the whole benchmark.
struct GoServer {
    child: Child,
}

impl GoServer {
    fn start(binary: &Path, port: u16) -> Result<Self> {
        let mut child = Command::new(binary)
            .args(["tls-server", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("could not start {}", binary.display()))?;
        let lines = Lines::new(child.stdout.take().context("the server's stdout was not piped")?);
        let mut server = Self { child };
        let line = reply(&lines, &mut server.child, "the Go server", Duration::from_secs(30))?;
        if line.trim() != "ready" {
            bail!("the Go server printed {line:?} instead of `ready`");
        }
        Ok(server)
    }

    fn check_alive(&mut self) -> Result<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => bail!("the Go server exited during the benchmark ({status})"),
        }
    }
}

impl Drop for GoServer {
    fn drop(&mut self) {
        kill_unreaped(&mut self.child);
    }
}

fn go_version() -> String {
    Command::new("go")
        .args(["env", "GOVERSION"])
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| "(unknown version)".into())
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
