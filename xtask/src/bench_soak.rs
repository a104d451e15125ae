//! `cargo xtask bench --soak`: the agent under a sustained event rate, then far past what it can
//! consume, then back, in one agent run.
//!
//! The C loop of `cargo xtask bench` (`tests/apps/bench/call_loop.c`, `pace R S`) calls the probed
//! `bench_work` at a fixed rate; the agent traces it with `--trace-function` (an entry and an exit
//! event per call, spans to the discarded console) and prints its kernel counters every second.
//! Phases: (1) 50,000 events/s for `--soak-seconds` (default 60): goal, not one event lost; (2) as
//! fast as the loop can call (tens of times the daemon's capacity) as long: losses counted, never
//! waited for, the target unharmed (it keeps its pace), memory bounded; (3) 50,000 events/s for
//! 10 s: full service again, nothing lost. Reported: per phase, the calls made, the events the
//! kernel submitted and dropped, the slices the target ran late, and the agent's peak memory.
//!
//! Exits non-zero only when the harness itself fails; a missed goal is reported, not fatal.

use std::{
    fmt::Write as _,
    fs,
    process::{Command, ExitCode},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::{
    bench::{
        compile_target, number, publish, root_and_agent, rss_mb, steal_and_noise_notes, steal_time, BenchArgs, Stream,
        Target, Watched,
    },
    process::step,
    workspace,
};

/// `cargo xtask bench --soak` options (flattened into `cargo xtask bench`'s).
#[derive(Debug, Args)]
pub struct SoakArgs {
    /// Instead of the uprobe cost: a sustained event rate, then an overload, then the rate again.
    #[arg(long)]
    pub soak: bool,
    /// --soak: seconds of the sustained phase and of the overload.
    #[arg(long, default_value_t = 60)]
    pub soak_seconds: u64,
}

/// Calls per second of the sustained phases: an entry and an exit event each, 50,000 events/s.
const SUSTAINED_CALLS_PER_SECOND: u64 = 25_000;
const RECOVERY_SECONDS: u64 = 10;
const AGENT_READY: &str = "attached 1 probes to";
/// The agent's stats period, and how long a phase's last counters take to be printed.
const STATS_PERIOD: Duration = Duration::from_secs(1);
/// The agent's memory budget under overload: its queues are bounded (the ring buffer, 65,536
/// span chunks waiting for the intake), so its memory must level off below this.
const OVERLOAD_RSS_BUDGET_MB: f64 = 128.0;

struct PhaseResult {
    label: &'static str,
    calls: u64,
    behind_ms: u64,
    seconds: u64,
    events: u64,
    dropped: u64,
    peak_rss_mb: f64,
}

pub fn run(args: &BenchArgs) -> Result<ExitCode> {
    let seconds = args.soak.soak_seconds;
    if seconds == 0 {
        bail!("--soak-seconds must be at least 1");
    }
    let agent = root_and_agent(args)?;
    let out_dir = workspace::target_dir().join("bench");
    fs::create_dir_all(&out_dir).with_context(|| format!("could not create {}", out_dir.display()))?;
    let binary = compile_target(&out_dir)?;
    let mut target = Target::start(&binary)?;
    let mut cmd = Command::new(&agent);
    cmd.args(["--pid", &target.pid.to_string(), "--trace-function"])
        .arg(format!("{}:bench_work", binary.display()))
        .args(["--exporter", "console", "--profiling-enabled", "false", "--stats", "1"]);
    let mut watched = Watched::start(cmd, Stream::Stderr, AGENT_READY, Duration::from_secs(args.attach_timeout))?;
    let agent_pid = watched.child.id();
    thread::sleep(STATS_PERIOD * 2);
    let idle_rss_mb = rss_mb(agent_pid).unwrap_or(f64::NAN);
    let started = Instant::now();
    let steal_before = steal_time();
    let phases = [
        ("(1) 50,000 events/s", SUSTAINED_CALLS_PER_SECOND, seconds),
        ("(2) overload: as fast as the loop calls", 0, seconds),
        ("(3) 50,000 events/s again", SUSTAINED_CALLS_PER_SECOND, RECOVERY_SECONDS),
    ];
    let mut results = Vec::new();
    for (label, rate, seconds) in phases {
        let before = latest_counters(&mut watched).context("the agent printed no stats line")?;
        let peak = PeakRss::watch(agent_pid);
        let reply = target.pace(rate, seconds)?;
        let peak_rss_mb = peak.stop();
        thread::sleep(STATS_PERIOD * 2); // the phase's last events drained and counted
        let after = latest_counters(&mut watched).context("the agent stopped printing stats")?;
        let field = |name: &str| {
            reply.split_whitespace().find_map(|w| w.strip_prefix(name)?.strip_prefix('=')?.parse::<u64>().ok())
        };
        let result = PhaseResult {
            label,
            calls: field("calls").context("the loop did not say how many calls it made")?,
            behind_ms: field("behind_ms").unwrap_or(0),
            seconds,
            events: after.0.saturating_sub(before.0),
            dropped: after.1.saturating_sub(before.1),
            peak_rss_mb,
        };
        step(
            "bench",
            format!(
                "{label}: {} calls, {} events, {} dropped, {} late ms, peak RSS {:.1} MB",
                result.calls, result.events, result.dropped, result.behind_ms, result.peak_rss_mb
            ),
        );
        results.push(result);
    }
    target.exit()?;
    let stderr = watched.stop()?;
    if !stderr.iter().any(|line| line.contains("target exited")) {
        bail!("the agent did not report the target's exit; it printed:\n{}", stderr.join("\n"));
    }
    let table = report(&results, idle_rss_mb, steal_time().saturating_sub(steal_before), started.elapsed());
    let mut json = String::from("{\n");
    let _ = writeln!(json, "  \"idle_rss_mb\": {},", number(idle_rss_mb));
    for (index, result) in results.iter().enumerate() {
        let _ = writeln!(
            json,
            "  \"phase{}\": {{\"calls\": {}, \"events\": {}, \"dropped\": {}, \"behind_ms\": {}, \"peak_rss_mb\": {}}}{}",
            index + 1,
            result.calls,
            result.events,
            result.dropped,
            result.behind_ms,
            number(result.peak_rss_mb),
            if index + 1 < results.len() { "," } else { "" }
        );
    }
    json.push_str("}\n");
    publish(&out_dir, "soak.json", &table, &json)?;
    Ok(ExitCode::SUCCESS)
}

fn report(results: &[PhaseResult], idle_rss_mb: f64, steal: Duration, elapsed: Duration) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nSoak: `bench_work` traced with --trace-function (an entry and an exit event per call); agent memory {idle_rss_mb:.1} MB idle"
    );
    let _ = writeln!(
        out,
        "  {:<42} {:>12} {:>12} {:>12} {:>10} {:>9} {:>9}",
        "phase", "events/s", "submitted", "dropped", "lost %", "late ms", "peak MB"
    );
    for result in results {
        let offered = 2 * result.calls;
        let _ = writeln!(
            out,
            "  {:<42} {:>12.0} {:>12} {:>12} {:>10.2} {:>9} {:>9.1}",
            result.label,
            offered as f64 / result.seconds as f64,
            result.events,
            result.dropped,
            100.0 * result.dropped as f64 / offered.max(1) as f64,
            result.behind_ms,
            result.peak_rss_mb
        );
    }
    let verdict = |met: bool| if met { "met" } else { "MISSED" };
    let (first, overload, last) = (&results[0], &results[1], &results[2]);
    let _ = writeln!(
        out,
        "  P7: (1) loses nothing: {}; (2) drops counted ({}), memory bounded (peak {:.1} MB, budget \
         {OVERLOAD_RSS_BUDGET_MB} MB): {}; (3) loses nothing again: {}",
        verdict(first.dropped == 0),
        overload.dropped,
        overload.peak_rss_mb,
        verdict(overload.peak_rss_mb <= OVERLOAD_RSS_BUDGET_MB),
        verdict(last.dropped == 0),
    );
    let _ = writeln!(
        out,
        "  submitted + dropped = 2 x calls when nothing is lost on the way; late ms: 1 ms slices the target \
         finished after their deadline (its own slowdown)."
    );
    steal_and_noise_notes(&mut out, steal, elapsed, 0.0);
    out
}

/// The last `events` and `dropped_ring_full` the agent's stats lines reported, after reading
/// what it printed so far.
fn latest_counters(watched: &mut Watched) -> Option<(u64, u64)> {
    while let Ok(Some(line)) = watched.output.next(Duration::from_millis(1)) {
        watched.seen.push(line);
    }
    let line = watched.seen.iter().rev().find(|line| line.contains("ddtrace-agent: stats: "))?;
    let field = |name: &str| {
        line.split(|c: char| c.is_whitespace() || c == ';')
            .find_map(|word| word.strip_prefix(name)?.strip_prefix('=')?.parse::<u64>().ok())
    };
    Some((field("events")?, field("dropped_ring_full")?))
}

/// The agent's peak resident memory, sampled every 200 ms on a thread of its own.
struct PeakRss {
    stop: Arc<AtomicBool>,
    peak_kb: Arc<AtomicU64>,
    thread: thread::JoinHandle<()>,
}

impl PeakRss {
    fn watch(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peak_kb = Arc::new(AtomicU64::new(0));
        let (flag, peak) = (stop.clone(), peak_kb.clone());
        let thread = thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                if let Some(mb) = rss_mb(pid) {
                    peak.fetch_max((mb * 1024.0) as u64, Ordering::Relaxed);
                }
                thread::sleep(Duration::from_millis(200));
            }
        });
        Self { stop, peak_kb, thread }
    }

    fn stop(self) -> f64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        self.peak_kb.load(Ordering::Relaxed) as f64 / 1024.0
    }
}
