//! `cargo xtask bench`: what our uprobes cost per call of a probed function (`--profiler`: see
//! `bench_profiler`; `--http`: see `bench_http`; `--tls`, `--sqlite`: see `bench_calls`;
//! `--vs-ddtrace`: see `bench_vs_ddtrace`; `--soak`: see `bench_soak`; `--churn`: see `bench_churn`;
//! `--redis`: see `bench_redis`; `--databases`: see `bench_databases`; `--go`: see `bench_go`).
//!
//! One C process (`tests/apps/bench/call_loop.c`) calls `bench_work` in timed rounds while, in
//! turn, (a) nothing, (b) empty entry+exit programs, and (c) our real entry/exit programs with
//! the daemon consuming their events are attached to it. The figure that matters is (c)/(b): what
//! our programs add on top of the uprobe machinery the kernel charges anyway.
//!
//! Exits non-zero only when the harness itself fails; a missed goal is reported, not fatal.

use std::{
    fmt::Write as _,
    fs,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, ExitCode, ExitStatus, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::{
    process::{self, find_in_path, is_executable, step},
    workspace,
};

/// `cargo xtask bench` options.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Timed rounds per configuration and cycle; the median over all of them is reported.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// How many times (b) and (c) are measured in alternation (the VM drifts: more cycles, a
    /// steadier median). Default 6; with --profiler, how many times each configuration runs the
    /// workload, default 5; with --go, cycles of each of (b) and (c), default 8.
    #[arg(long)]
    pub cycles: Option<usize>,
    /// Calls of the probed function per round.
    #[arg(long, default_value_t = 200_000)]
    pub calls: u64,
    /// Untimed calls before each configuration's rounds (caches, branch predictors, page state).
    #[arg(long, default_value_t = 20_000)]
    pub warmup_calls: u64,
    /// Seconds to wait for the agent to report its probes attached.
    #[arg(long, default_value_t = 30)]
    pub attach_timeout: u64,
    /// --profiler: sampling rate of both profilers, in Hz (default 100). --http: requests per second
    /// of the load generator, all connections together (default 500).
    #[arg(long)]
    pub rate: Option<u32>,
    /// Run this agent binary instead of building the eBPF object and `target/release/ddtrace-agent`.
    #[arg(long, value_name = "PATH")]
    pub agent: Option<PathBuf>,
    #[command(flatten)]
    pub profiler: crate::bench_profiler::ProfilerArgs,
    #[command(flatten)]
    pub http: crate::bench_http::HttpArgs,
    #[command(flatten)]
    pub go: crate::bench_go::GoArgs,
    #[command(flatten)]
    pub calls_bench: crate::bench_calls::LibraryCallArgs,
    #[command(flatten)]
    pub vs_ddtrace: crate::bench_vs_ddtrace::VsDdtraceArgs,
    #[command(flatten)]
    pub soak: crate::bench_soak::SoakArgs,
    #[command(flatten)]
    pub churn: crate::bench_churn::ChurnArgs,
    #[command(flatten)]
    pub redis: crate::bench_redis::RedisArgs,
    #[command(flatten)]
    pub databases: crate::bench_databases::DatabaseArgs,
}

/// The goal for (c)/(b) (the coverage and cost issue's P1): our programs may add at most 10% to
/// the bare uprobe cost.
const GOAL_OURS_OVER_EMPTY: f64 = 1.10;
/// The goal for the daemon's CPU per kernel event (P4), in ns.
const GOAL_AGENT_NS_PER_EVENT: f64 = 300.0;
/// The probed function in the C target.
const SYMBOL: &str = "bench_work";
/// Frame pointer kept so `bench_work` starts with `push %rbp`, which the kernel emulates; no CET
/// so there is no `endbr64` in front of it. See the C file's header.
const CFLAGS: &[&str] = &["-O1", "-fno-omit-frame-pointer", "-fcf-protection=none", "-Wall", "-Wextra"];
/// Above this share of busy CPU before the run, the figures are flagged as noisy.
const BUSY_WARNING: f64 = 0.10;
/// Lines the agent prints to stderr once its probes are live.
const EMPTY_ATTACHED: &str = "empty baseline probes attached";
const OURS_ATTACHED: &str = "attached 1 probes to";
/// How long the agent gets to drain its ring buffer, flush and exit after SIGINT.
const AGENT_STOP_GRACE: Duration = Duration::from_secs(60);

/// Cycles of (b) and (c) when `--cycles` is not given.
const DEFAULT_CYCLES: usize = 6;

pub fn run(args: &BenchArgs) -> Result<ExitCode> {
    // The benchmarks run the tests' programs (Go, nginx, the database servers, a C compiler): on
    // a fresh machine they install what the tests install (one dpkg query when all is there).
    crate::system_packages::ensure()?;
    // Each flag names a benchmark of its own; none is the uprobe cost below.
    let chosen: Vec<(&str, fn(&BenchArgs) -> Result<ExitCode>)> = [
        (args.profiler.profiler, "--profiler", crate::bench_profiler::run as fn(&BenchArgs) -> Result<ExitCode>),
        (args.http.http, "--http", crate::bench_http::run),
        (args.go.go, "--go", crate::bench_go::run),
        (args.calls_bench.tls, "--tls", crate::bench_calls::run),
        (args.calls_bench.sqlite, "--sqlite", crate::bench_calls::run),
        (args.calls_bench.sqlite_callers, "--sqlite-callers", crate::bench_calls::run),
        (args.vs_ddtrace.vs_ddtrace, "--vs-ddtrace", crate::bench_vs_ddtrace::run),
        (args.soak.soak, "--soak", crate::bench_soak::run),
        (args.churn.churn, "--churn", crate::bench_churn::run),
        (args.redis.redis, "--redis", crate::bench_redis::run),
        (args.databases.databases, "--databases", crate::bench_databases::run),
    ]
    .into_iter()
    .filter(|(on, _, _)| *on)
    .map(|(_, flag, run)| (flag, run))
    .collect();
    match chosen[..] {
        [] => {}
        [(_, run)] => return run(args),
        _ => {
            let flags: Vec<&str> = chosen.iter().map(|(flag, _)| *flag).collect();
            bail!("{} are separate benchmarks: run one at a time", flags.join(", "))
        }
    }
    let cycles = args.cycles.unwrap_or(DEFAULT_CYCLES);
    if args.rounds == 0 || args.calls == 0 || cycles == 0 {
        bail!("--rounds, --calls and --cycles must be at least 1");
    }
    let agent_binary = root_and_agent(args)?;

    let out_dir = workspace::target_dir().join("bench");
    fs::create_dir_all(&out_dir).with_context(|| format!("could not create {}", out_dir.display()))?;
    let target_binary = compile_target(&out_dir)?;
    let first_instruction = first_instruction(&target_binary, SYMBOL)?;
    step("bench", format!("{SYMBOL} starts with `{first_instruction}`"));
    if !first_instruction.starts_with("push") {
        step(
            "bench",
            format!(
                "WARNING: `{first_instruction}` is not emulated by the kernel's uprobes; every probe hit pays an \
                 out-of-line single step and the figures below mostly measure that"
            ),
        );
    }

    let background = background_load()?;

    // One target process for every configuration: the same code placement, page tables and
    // caches throughout, so the differences are the probes' alone; attaching to a process that is
    // already running is also how the agent is used. (b) and (c) alternate for several cycles so
    // that the VM's slow drifts (seen: +-20% over seconds) weigh on both alike. A last unprobed
    // pass checks that detaching restored the plain cost.
    let run_started = Instant::now();
    let steal_before = steal_time();
    let mut target = Target::start(&target_binary)?;
    let probe_spec = format!("{}:{SYMBOL}", target_binary.display());
    let pid = target.pid.to_string();
    let attach_timeout = Duration::from_secs(args.attach_timeout);
    let measure = |target: &mut Target, label: &str| -> Result<Vec<Sample>> {
        let samples = target.measure(args.warmup_calls, args.calls, args.rounds)?;
        let rounds: Vec<String> = samples.iter().map(|s| format!("{:.1}", s.wall_ns)).collect();
        step("bench", format!("{label}: wall ns/call per round: {}", rounds.join(" ")));
        Ok(samples)
    };

    let unprobed = Phase::new("(a)  unprobed", vec![measure(&mut target, "(a) unprobed")?]);
    let mut empty = Phase::new("(b)  empty entry+exit programs", Vec::new());
    let mut ours = Phase::new("(c)  ddtrace entry+exit programs + daemon", Vec::new());
    let mut counters = KernelCounters::default();
    let mut agent_cpu = Duration::ZERO;
    // The spans go the way users' do (msgpack to an agent's intake), to a sink that costs nothing.
    let sink = crate::bench_sink::TraceSink::start()?;
    let mut writer_dropped = 0;
    for cycle in 1..=cycles {
        let mut agent = start_agent(
            &agent_binary,
            &["--pid", &pid, "--bench-empty-probes", &probe_spec],
            EMPTY_ATTACHED,
            attach_timeout,
        )?;
        empty.cycles.push(measure(&mut target, &format!("(b) empty programs, cycle {cycle}"))?);
        agent.stop()?;

        let mut agent = start_agent(
            &agent_binary,
            // Profiling off: this measures the tracing probes; `--profiler` measures sampling.
            &["--pid", &pid, "--trace-function", &probe_spec, "--agent-url", &sink.url, "--profiling-enabled", "false"],
            OURS_ATTACHED,
            attach_timeout,
        )?;
        ours.cycles.push(measure(&mut target, &format!("(c) ddtrace programs, cycle {cycle}"))?);
        let children_cpu_before = children_cpu_time();
        let stderr = agent.stop()?;
        writer_dropped += dropped_chunks(&stderr);
        agent_cpu += children_cpu_time().saturating_sub(children_cpu_before);
        let cycle_counters = KernelCounters::parse(&stderr).with_context(|| {
            format!("the agent's exit line with its kernel counters is missing; its stderr:\n{}", stderr.join("\n"))
        })?;
        counters.events += cycle_counters.events;
        counters.dropped_ring_full += cycle_counters.dropped_ring_full;
    }

    let unprobed_after =
        Phase::new("(a') unprobed, after detaching", vec![measure(&mut target, "(a') unprobed, after detaching")?]);
    target.exit()?;

    let report = Report {
        background_busy: background,
        first_instruction,
        target_binary,
        rounds: args.rounds,
        cycles,
        calls: args.calls,
        warmup_calls: args.warmup_calls,
        unprobed,
        empty,
        ours,
        unprobed_after,
        counters,
        agent_cpu,
        sink_traces: sink.counts.traces.load(std::sync::atomic::Ordering::Relaxed),
        sink_bytes: sink.counts.body_bytes.load(std::sync::atomic::Ordering::Relaxed),
        writer_dropped,
        steal: steal_time().saturating_sub(steal_before),
        elapsed: run_started.elapsed(),
    };
    publish(&out_dir, "uprobe-cost.json", &report.table(), &report.json())?;
    Ok(ExitCode::SUCCESS)
}

/// Share of the CPUs other work keeps busy just before a run, with a warning when it is too much.
pub(crate) fn background_load() -> Result<f64> {
    let busy = CpuLoad::sample(Duration::from_secs(1))?.busy;
    step("bench", format!("before the run, other work kept {:.0}% of the CPUs busy", 100.0 * busy));
    if busy > BUSY_WARNING {
        step("bench", "WARNING: the machine is not idle; the figures below will be noisy (re-run when it is)");
    }
    Ok(busy)
}

/// Prints `table` and writes `json` to `target/bench/<file>`.
pub(crate) fn publish(out_dir: &Path, file: &str, table: &str, json: &str) -> Result<()> {
    print!("{table}");
    let json_path = out_dir.join(file);
    fs::write(&json_path, json).with_context(|| format!("could not write {}", json_path.display()))?;
    step("bench", format!("figures written to {}", relative(&json_path).display()));
    Ok(())
}

/// The table's note when the machine was busy before the run.
pub(crate) fn noise_note(out: &mut String, background_busy: f64) {
    if background_busy > BUSY_WARNING {
        let _ = writeln!(
            out,
            "  NOTE: other work kept {:.0}% of the CPUs busy just before the run; these figures are noisy",
            100.0 * background_busy
        );
    }
}

/// The table's closing notes: the host's steal time over the run, and [`noise_note`].
pub(crate) fn steal_and_noise_notes(out: &mut String, steal: Duration, elapsed: Duration, background_busy: f64) {
    let _ = writeln!(
        out,
        "  host steal during the run: {:.1} s of vCPU time over {:.1} s",
        steal.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    noise_note(out, background_busy);
}

/// Checks that we run as root, then returns `--agent` or the freshly built release agent.
pub(crate) fn root_and_agent(args: &BenchArgs) -> Result<PathBuf> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmark loads eBPF programs: run it as root (e.g. `sudo -E cargo xtask bench`)");
    }
    match &args.agent {
        Some(agent) => Ok(agent.clone()),
        None => workspace::build_everything(),
    }
}

/// How busy all CPUs together were over a short window, from `/proc/stat`.
struct CpuLoad {
    /// Fraction of CPU time not idle (0..1).
    busy: f64,
}

impl CpuLoad {
    fn sample(window: Duration) -> Result<Self> {
        let (busy_before, total_before) = Self::read()?;
        thread::sleep(window);
        let (busy_after, total_after) = Self::read()?;
        let total = total_after.saturating_sub(total_before).max(1);
        Ok(Self { busy: busy_after.saturating_sub(busy_before) as f64 / total as f64 })
    }

    /// (busy, total) clock ticks of the aggregate `cpu` line.
    fn read() -> Result<(u64, u64)> {
        let stat = fs::read_to_string("/proc/stat").context("could not read /proc/stat")?;
        let line = stat.lines().find(|line| line.starts_with("cpu ")).context("/proc/stat has no `cpu` line")?;
        // user nice system idle iowait irq softirq steal (guest time is already in user).
        let ticks: Vec<u64> = line.split_whitespace().skip(1).take(8).filter_map(|v| v.parse().ok()).collect();
        if ticks.len() < 5 {
            bail!("unexpected /proc/stat line: {line}");
        }
        let total: u64 = ticks.iter().sum();
        Ok((total - ticks[3] - ticks[4], total))
    }
}

/// CPU time (user + system) of this process's children that have been waited for.
pub(crate) fn children_cpu_time() -> Duration {
    // SAFETY: rusage is plain data; getrusage only writes it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a rusage; RUSAGE_CHILDREN cannot fail.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// The interpreter itself: `python3` is often a pyenv shim (a shell script that execs it), whose
/// start-up would be counted, and whose pid would not be the interpreter's until the exec.
pub(crate) fn python_executable() -> Result<PathBuf> {
    let path = process::output(Command::new("python3").args(["-c", "import sys; print(sys.executable)"]))?;
    let path = PathBuf::from(path.trim());
    if !is_executable(&path) {
        bail!("python3 reports {} as its executable, which is not one", path.display());
    }
    Ok(path)
}

/// utime + stime of a live process, from `/proc/<pid>/stat`.
/// Resident memory of process `pid` in MB (`VmRSS`).
pub(crate) fn rss_mb(pid: u32) -> Option<f64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()?;
    Some(kb / 1024.0)
}

pub(crate) fn proc_cpu_time(pid: u32) -> Option<Duration> {
    // The process's CPU clock, to the nanosecond (threads that exited included): the tick counts
    // of /proc/<pid>/stat are 10 ms steps, too coarse for a few thousand requests' worth of CPU.
    let mut clock: libc::clockid_t = 0;
    // SAFETY: plain libc calls with valid out-pointers.
    if unsafe { libc::clock_getcpuclockid(pid as libc::pid_t, &mut clock) } == 0 {
        let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        if unsafe { libc::clock_gettime(clock, &mut now) } == 0 {
            return Some(Duration::new(now.tv_sec as u64, now.tv_nsec as u32));
        }
    }
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command's closing parenthesis: state is field 3, utime 14 and stime 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(Duration::from_millis(ticks * 1000 / hz))
}

/// Compiles the C target into `out_dir/call_loop`.
pub(crate) fn compile_target(out_dir: &Path) -> Result<PathBuf> {
    let source = workspace::root().join("tests/apps/bench/call_loop.c");
    let binary = out_dir.join("call_loop");
    let compiler = find_in_path("cc").context("no C compiler: `cc` is not on PATH (install gcc)")?;
    let mut cmd = Command::new(compiler);
    cmd.args(CFLAGS).arg("-o").arg(&binary).arg(&source);
    step("bench", format!("compiling the target: {}", process::describe(&cmd)));
    process::run(&mut cmd)?;
    // The agent resolves FILE as the target sees it; an absolute path is unambiguous.
    fs::canonicalize(&binary).with_context(|| format!("{} was not produced", binary.display()))
}

/// The first instruction of `symbol` in `binary`, as objdump prints it (e.g. `push %rbp`).
fn first_instruction(binary: &Path, symbol: &str) -> Result<String> {
    let objdump = find_in_path("objdump").context("`objdump` is not on PATH (install binutils)")?;
    let mut cmd = Command::new(objdump);
    cmd.args(["-d", "--no-show-raw-insn", &format!("--disassemble={symbol}")]).arg(binary);
    let listing = process::output(&mut cmd)?;
    // The symbol's header line `0000000000001199 <bench_work>:` is followed by `   1199:\tpush   %rbp`.
    let header = format!("<{symbol}>:");
    let instruction = listing
        .lines()
        .skip_while(|line| !line.trim_end().ends_with(&header))
        .nth(1)
        .and_then(|line| line.split_once(":\t"))
        .map(|(_, instruction)| instruction.split_whitespace().collect::<Vec<_>>().join(" "));
    instruction.with_context(|| format!("objdump shows no instruction for {symbol} in {}", binary.display()))
}

/// `path` relative to the workspace root when it is inside it, for shorter messages.
pub(crate) fn relative(path: &Path) -> &Path {
    path.strip_prefix(workspace::root()).unwrap_or(path)
}

/// Lines of a child's stream, read by a thread so they can be awaited with a timeout.
pub(crate) struct Lines {
    receiver: Receiver<String>,
}

impl Lines {
    pub(crate) fn new(stream: impl std::io::Read + Send + 'static) -> Self {
        let (sender, receiver) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Self { receiver }
    }

    /// The next line; `None` at end of stream, an error on timeout.
    pub(crate) fn next(&self, timeout: Duration) -> Result<Option<String>, RecvTimeoutError> {
        match self.receiver.recv_timeout(timeout) {
            Ok(line) => Ok(Some(line)),
            Err(RecvTimeoutError::Disconnected) => Ok(None),
            Err(error) => Err(error),
        }
    }
}

/// The next line `child` (`who`, for messages) printed on `lines`, within `timeout`.
pub(crate) fn reply(lines: &Lines, child: &mut Child, who: &str, timeout: Duration) -> Result<String> {
    match lines.next(timeout) {
        Ok(Some(line)) => Ok(line),
        Ok(None) => {
            let status = wait_timeout(child, Duration::from_secs(1))?;
            bail!("{who} (pid {}) closed its output ({})", child.id(), status_text(status))
        }
        Err(_) => bail!("{who} (pid {}) did not answer within {} s", child.id(), timeout.as_secs()),
    }
}

/// Sends `signal` to `child` if it has not been reaped.
pub(crate) fn signal(child: &Child, signal: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(child.id()) else {
        return;
    };
    // SAFETY: kill has no memory-safety preconditions; the pid is our own unreaped child.
    unsafe { libc::kill(pid, signal) };
}

pub(crate) fn wait_timeout(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The running C target and its line protocol (see the C file's header).
pub(crate) struct Target {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines,
    pub(crate) pid: u32,
}

impl Target {
    pub(crate) fn start(binary: &Path) -> Result<Self> {
        let mut child = Command::new(binary)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("could not start {}", binary.display()))?;
        let stdin = child.stdin.take().context("the target's stdin was not piped")?;
        let stdout = Lines::new(child.stdout.take().context("the target's stdout was not piped")?);
        let pid = child.id();
        let mut target = Self { child, stdin, stdout, pid };
        let ready = target.reply(Duration::from_secs(10))?;
        if !ready.starts_with("ready") {
            bail!("the target {} printed {ready:?} instead of `ready pid=...`", binary.display());
        }
        step("bench", format!("target running, pid {pid}: {}", relative(binary).display()));
        Ok(target)
    }

    fn reply(&mut self, timeout: Duration) -> Result<String> {
        reply(&self.stdout, &mut self.child, "the target", timeout)
    }

    /// Calls `bench_work` `calls` times and returns the target's own wall and CPU ns per call.
    fn run_calls(&mut self, calls: u64) -> Result<Sample> {
        writeln!(self.stdin, "go {calls}")
            .and_then(|()| self.stdin.flush())
            .with_context(|| format!("could not write to the target (pid {})", self.pid))?;
        // Generous: 100 µs per call is 5x the single-stepped uprobe cost measured on these VMs.
        let timeout =
            Duration::from_secs(30) + Duration::from_micros(100).saturating_mul(calls.try_into().unwrap_or(u32::MAX));
        let line = self.reply(timeout)?;
        Sample::parse(&line).with_context(|| format!("unexpected reply from the target (pid {}): {line:?}", self.pid))
    }

    /// Untimed warm-up calls, then `rounds` timed rounds of `calls` calls.
    fn measure(&mut self, warmup_calls: u64, calls: u64, rounds: usize) -> Result<Vec<Sample>> {
        if warmup_calls > 0 {
            self.run_calls(warmup_calls)?;
        }
        (0..rounds).map(|_| self.run_calls(calls)).collect()
    }

    /// `pace R S` (`cargo xtask bench --soak`): R calls per second for S seconds; its reply line.
    pub(crate) fn pace(&mut self, rate: u64, seconds: u64) -> Result<String> {
        writeln!(self.stdin, "pace {rate} {seconds}")
            .and_then(|()| self.stdin.flush())
            .with_context(|| format!("could not write to the target (pid {})", self.pid))?;
        self.reply(Duration::from_secs(seconds + 60))
    }

    pub(crate) fn exit(mut self) -> Result<()> {
        // A write error means it is already gone, which the wait below reports.
        let _ = writeln!(self.stdin, "exit").and_then(|()| self.stdin.flush());
        match wait_timeout(&mut self.child, Duration::from_secs(10))? {
            Some(status) if status.success() => Ok(()),
            Some(status) => bail!("the target (pid {}) exited with {status}", self.pid),
            None => bail!("the target (pid {}) did not exit when told to", self.pid),
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        kill_unreaped(&mut self.child);
    }
}

/// SIGKILL and reap `child` if it has not been reaped yet.
pub(crate) fn kill_unreaped(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Which output stream of a [`Watched`] child carries its progress lines.
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

/// A child (an agent, a profiler) that reports on one stream, collected. The agent's stdout is
/// discarded: it carries spans, and printing them is the daemon's cost, not the target's; py-spy
/// reports on stdout and its stderr, errors only, is inherited.
pub(crate) struct Watched {
    pub(crate) child: Child,
    pub(crate) output: Lines,
    /// Lines printed so far.
    pub(crate) seen: Vec<String>,
    pub(crate) command: String,
}

/// Starts the agent and returns once it printed `ready_marker` (its probes are attached).
fn start_agent(binary: &Path, args: &[&str], ready_marker: &str, timeout: Duration) -> Result<Watched> {
    let mut cmd = Command::new(binary);
    cmd.args(args);
    Watched::start(cmd, Stream::Stderr, ready_marker, timeout)
}

impl Watched {
    /// Starts `cmd` and returns once it printed a line containing `ready_marker` on `stream`.
    pub(crate) fn start(mut cmd: Command, stream: Stream, ready_marker: &str, timeout: Duration) -> Result<Self> {
        cmd.stdin(Stdio::null());
        match stream {
            Stream::Stdout => cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()),
            Stream::Stderr => cmd.stdout(Stdio::null()).stderr(Stdio::piped()),
        };
        let command = process::describe(&cmd);
        step("bench", format!("starting: {command}"));
        let mut child = cmd.spawn().with_context(|| format!("could not start `{command}`"))?;
        let output = match stream {
            Stream::Stdout => child.stdout.take().map(Lines::new),
            Stream::Stderr => child.stderr.take().map(Lines::new),
        };
        let output = output.context("the output was not piped")?;
        let mut watched = Self { child, output, seen: Vec::new(), command };
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match watched.output.next(left) {
                Ok(Some(line)) => {
                    let ready = line.contains(ready_marker);
                    watched.seen.push(line);
                    if ready {
                        return Ok(watched);
                    }
                }
                Ok(None) => {
                    let status = wait_timeout(&mut watched.child, Duration::from_secs(5))?;
                    bail!(
                        "it stopped before reporting `{ready_marker}` ({}); {}",
                        status_text(status),
                        watched.printed()
                    );
                }
                Err(_) => {
                    signal(&watched.child, libc::SIGKILL);
                    bail!("it did not report `{ready_marker}` within {} s; {}", timeout.as_secs(), watched.printed());
                }
            }
        }
    }

    /// SIGINT, waits for a clean exit, and returns everything it printed.
    pub(crate) fn stop(&mut self) -> Result<Vec<String>> {
        signal(&self.child, libc::SIGINT);
        let deadline = Instant::now() + AGENT_STOP_GRACE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.output.next(left) {
                Ok(Some(line)) => self.seen.push(line),
                Ok(None) => break,
                Err(_) => {
                    signal(&self.child, libc::SIGKILL);
                    bail!("it did not exit within {} s of SIGINT; {}", AGENT_STOP_GRACE.as_secs(), self.printed());
                }
            }
        }
        let status = wait_timeout(&mut self.child, Duration::from_secs(10))?;
        match status {
            Some(status) if status.success() => Ok(std::mem::take(&mut self.seen)),
            _ => bail!("after SIGINT it {}; {}", status_text(status), self.printed()),
        }
    }

    /// What it printed so far, for error messages.
    pub(crate) fn printed(&self) -> String {
        if self.seen.is_empty() {
            format!("`{}` printed nothing", self.command)
        } else {
            format!("`{}` printed:\n{}", self.command, self.seen.join("\n"))
        }
    }
}

/// A child's fate for error messages: `exited with exit status: 1`, or still running.
pub(crate) fn status_text(status: Option<ExitStatus>) -> String {
    match status {
        Some(status) => format!("exited with {status}"),
        None => "did not exit".to_string(),
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            signal(&self.child, libc::SIGINT);
            if !matches!(wait_timeout(&mut self.child, Duration::from_secs(5)), Ok(Some(_))) {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

/// One timed round as the target reported it.
#[derive(Debug, Clone, Copy)]
struct Sample {
    wall_ns: f64,
    cpu_ns: f64,
}

impl Sample {
    /// Parses `ns_per_call=<f> cpu_ns_per_call=<f> sum=<n>`.
    fn parse(line: &str) -> Option<Self> {
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|word| word.strip_prefix(name)?.strip_prefix('='))
                .and_then(|value| value.parse::<f64>().ok())
        };
        Some(Self { wall_ns: field("ns_per_call")?, cpu_ns: field("cpu_ns_per_call")? })
    }
}

/// The rounds of one configuration, by cycle.
struct Phase {
    label: &'static str,
    cycles: Vec<Vec<Sample>>,
}

impl Phase {
    fn new(label: &'static str, cycles: Vec<Vec<Sample>>) -> Self {
        Self { label, cycles }
    }

    fn samples(&self) -> impl Iterator<Item = &Sample> {
        self.cycles.iter().flatten()
    }

    fn median_wall(&self) -> f64 {
        median(self.samples().map(|s| s.wall_ns))
    }

    fn median_cpu(&self) -> f64 {
        median(self.samples().map(|s| s.cpu_ns))
    }

    fn cycle_medians(&self) -> Vec<f64> {
        self.cycles.iter().map(|cycle| median(cycle.iter().map(|s| s.cpu_ns))).collect()
    }

    fn wall_range(&self) -> (f64, f64) {
        self.samples().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), s| (lo.min(s.wall_ns), hi.max(s.wall_ns)))
    }
}

pub(crate) fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// The kernel counters from the agent's exit line
/// (`ddtrace-agent: ... kernel: events=N dropped_ring_full=M ...`).
#[derive(Debug, Default)]
struct KernelCounters {
    events: u64,
    dropped_ring_full: u64,
}

impl KernelCounters {
    fn parse(stderr: &[String]) -> Option<Self> {
        let line = stderr.iter().rev().find(|line| line.contains("kernel: "))?;
        let (_, counters) = line.split_once("kernel: ")?;
        // Exact names: `malformed_events=` must not be read as `events=`.
        let field = |name: &str| {
            counters
                .split(|c: char| c.is_whitespace() || c == ';')
                .find_map(|word| word.strip_prefix(name)?.strip_prefix('='))
                .and_then(|value| value.parse::<u64>().ok())
        };
        Some(Self { events: field("events")?, dropped_ring_full: field("dropped_ring_full")? })
    }
}

/// The trace chunks an agent's exit line says its writer dropped (`dropped_chunks=N`).
fn dropped_chunks(stderr: &[String]) -> u64 {
    stderr
        .iter()
        .filter_map(|line| line.split_whitespace().find_map(|field| field.strip_prefix("dropped_chunks=")))
        .filter_map(|n| n.parse::<u64>().ok())
        .sum()
}

struct Report {
    /// Share of CPU other work used just before the run.
    background_busy: f64,
    first_instruction: String,
    target_binary: PathBuf,
    rounds: usize,
    cycles: usize,
    calls: u64,
    warmup_calls: u64,
    unprobed: Phase,
    empty: Phase,
    ours: Phase,
    unprobed_after: Phase,
    /// Summed over the cycles' (c) agents.
    counters: KernelCounters,
    /// CPU time of the (c) agents over their whole lives, start-up included.
    agent_cpu: Duration,
    /// Traces (one span each) and msgpack bytes the (c) agents delivered to the bench's sink.
    sink_traces: u64,
    sink_bytes: u64,
    /// Traces the (c) agents dropped because their intake could not keep up (their exit lines).
    writer_dropped: u64,
    /// vCPU time the hypervisor gave to others during the run (`steal` in /proc/stat).
    steal: Duration,
    elapsed: Duration,
}

/// Total steal time of all CPUs so far (/proc/stat's 8th cpu field, in USER_HZ ticks).
pub fn steal_time() -> Duration {
    let ticks = fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|stat| stat.lines().next()?.split_whitespace().nth(8)?.parse::<u64>().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

impl Report {
    /// The headline ratio, on the target thread's CPU time. Uprobe handlers and our programs run
    /// in the target's context, so their whole cost is charged to that thread; wall time also
    /// counts time the VM's host took away (steal) and time other tasks ran, which on these
    /// 2-vCPU VMs swings from +10% to +300% with the host's load (see `steal` in the report).
    fn ours_over_empty(&self) -> f64 {
        self.ours.median_cpu() / self.empty.median_cpu()
    }

    fn ours_over_empty_wall(&self) -> f64 {
        self.ours.median_wall() / self.empty.median_wall()
    }

    fn empty_over_unprobed(&self) -> f64 {
        self.empty.median_wall() / self.unprobed.median_wall()
    }

    fn ours_over_unprobed(&self) -> f64 {
        self.ours.median_wall() / self.unprobed.median_wall()
    }

    /// (c)/(b) within each cycle: how much the headline ratio moves from one cycle to the next.
    fn cycle_ratios(&self) -> Vec<f64> {
        self.ours.cycle_medians().iter().zip(self.empty.cycle_medians()).map(|(ours, empty)| ours / empty).collect()
    }

    fn goal_met(&self) -> bool {
        self.ours_over_empty() <= GOAL_OURS_OVER_EMPTY
    }

    /// Calls made while (c) was attached, over all cycles.
    fn traced_calls(&self) -> u64 {
        self.cycles as u64 * (self.warmup_calls + self.calls * self.rounds as u64)
    }

    /// One entry and one exit event per traced call.
    fn expected_events(&self) -> u64 {
        2 * self.traced_calls()
    }

    /// Per event the kernel delivered (the dropped ones cost the daemon nothing).
    fn agent_cpu_ns_per_event(&self) -> f64 {
        self.agent_cpu.as_nanos() as f64 / self.counters.events as f64
    }

    fn agent_cpu_ns_per_call(&self) -> f64 {
        self.agent_cpu.as_nanos() as f64 / self.traced_calls() as f64
    }

    fn table(&self) -> String {
        let mut out = String::new();
        let samples = self.rounds * self.cycles;
        let _ = writeln!(
            out,
            "\nCost per call of {SYMBOL} (first instruction `{}`): median of {samples} rounds of {} calls \
             ((b) and (c): {} cycles x {} rounds)",
            self.first_instruction, self.calls, self.cycles, self.rounds
        );
        let _ = writeln!(out, "  {:<44} {:>12} {:>12}   rounds min..max (wall)", "configuration", "wall ns", "cpu ns");
        for phase in [&self.unprobed, &self.empty, &self.ours, &self.unprobed_after] {
            let (min, max) = phase.wall_range();
            let _ = writeln!(
                out,
                "  {:<44} {:>12.1} {:>12.1}   {min:.1}..{max:.1}",
                phase.label,
                phase.median_wall(),
                phase.median_cpu(),
            );
        }
        let ratios: Vec<String> = self.cycle_ratios().iter().map(|r| format!("{r:.2}")).collect();
        let _ = writeln!(
            out,
            "  (c)/(b) = {:.2} on the target's CPU time (per cycle: {})   goal <= {GOAL_OURS_OVER_EMPTY}: {}",
            self.ours_over_empty(),
            ratios.join(" "),
            if self.goal_met() { "met" } else { "GOAL MISSED" }
        );
        let _ = writeln!(
            out,
            "  (c)/(b) = {:.2} on wall time; host steal during the run: {:.1} s of vCPU time over {:.1} s",
            self.ours_over_empty_wall(),
            self.steal.as_secs_f64(),
            self.elapsed.as_secs_f64()
        );
        let _ = writeln!(out, "  (b)/(a) = {:.1}", self.empty_over_unprobed());
        let _ = writeln!(out, "  (c)/(a) = {:.1}", self.ours_over_unprobed());
        let accounted = self.counters.events + self.counters.dropped_ring_full;
        let _ = writeln!(
            out,
            "  (c) kernel events: {} submitted, {} dropped (ring full), {} expected (entry + exit per call){}",
            self.counters.events,
            self.counters.dropped_ring_full,
            self.expected_events(),
            if accounted == self.expected_events() { "" } else { "  <- MISMATCH" }
        );
        let _ = writeln!(
            out,
            "  (c) agent CPU: {:.0} ns per traced call, {:.0} ns per kernel event received (goal <= {GOAL_AGENT_NS_PER_EVENT}) \
             (user + system, whole agent lifetime)",
            self.agent_cpu_ns_per_call(),
            self.agent_cpu_ns_per_event()
        );
        let _ = writeln!(
            out,
            "  (c) delivered: {} traces of {} traced calls, {:.1} MB of msgpack, to the bench's intake; {} dropped \
             by the agents' trace writers (sending slower than the calls came){}",
            self.sink_traces,
            self.traced_calls(),
            self.sink_bytes as f64 / 1e6,
            self.writer_dropped,
            // A call one of whose events the ring dropped makes no span.
            if self.sink_traces + self.writer_dropped + self.counters.dropped_ring_full < self.traced_calls() {
                "  <- SOME UNACCOUNTED FOR"
            } else {
                ""
            }
        );
        let _ = writeln!(
            out,
            "  wall: the loop's CLOCK_MONOTONIC time; cpu: the target thread's CPU time. Wall above cpu is time \
             the target lost to other tasks and interrupts (e.g. ring buffer wake-ups)."
        );
        noise_note(&mut out, self.background_busy);
        if !self.goal_met() {
            let _ = writeln!(
                out,
                "GOAL MISSED: our programs cost {:.2}x the empty ones per call (goal <= {GOAL_OURS_OVER_EMPTY})",
                self.ours_over_empty()
            );
        }
        out
    }

    fn json(&self) -> String {
        let numbers = |values: &mut dyn Iterator<Item = f64>| values.map(number).collect::<Vec<_>>().join(", ");
        let phase = |phase: &Phase| {
            format!(
                "{{\"ns_per_call\": {}, \"cpu_ns_per_call\": {}, \"rounds_ns_per_call\": [{}], \"rounds_cpu_ns_per_call\": [{}]}}",
                number(phase.median_wall()),
                number(phase.median_cpu()),
                numbers(&mut phase.samples().map(|s| s.wall_ns)),
                numbers(&mut phase.samples().map(|s| s.cpu_ns)),
            )
        };
        format!(
            r#"{{
  "symbol": "{SYMBOL}",
  "target": {target},
  "first_instruction": {first_instruction},
  "calls_per_round": {calls},
  "rounds_per_cycle": {rounds},
  "cycles": {cycles},
  "warmup_calls": {warmup},
  "statistic": "median over all rounds",
  "background_cpu_busy": {busy},
  "unprobed": {unprobed},
  "empty_probes": {empty},
  "ddtrace_probes": {ours},
  "unprobed_after": {after},
  "ratios": {{
    "ddtrace_over_empty": {c_b},
    "ddtrace_over_empty_wall": {c_b_wall},
    "steal_seconds": {steal},
    "ddtrace_over_empty_per_cycle": [{c_b_cycles}],
    "empty_over_unprobed": {b_a},
    "ddtrace_over_unprobed": {c_a}
  }},
  "goal": {{"ddtrace_over_empty_max": {goal}, "met": {met}}},
  "ddtrace_events": {{"events": {events}, "dropped_ring_full": {dropped}, "expected": {expected}}},
  "ddtrace_agent_cpu_ns_per_call": {agent_cpu},
  "ddtrace_agent_cpu_ns_per_event": {agent_cpu_event},
  "delivered": {{"traces": {sink_traces}, "msgpack_bytes": {sink_bytes}, "dropped_by_writer": {writer_dropped}}}
}}
"#,
            target = string(&self.target_binary.display().to_string()),
            busy = number(self.background_busy),
            first_instruction = string(&self.first_instruction),
            calls = self.calls,
            rounds = self.rounds,
            cycles = self.cycles,
            warmup = self.warmup_calls,
            unprobed = phase(&self.unprobed),
            empty = phase(&self.empty),
            ours = phase(&self.ours),
            after = phase(&self.unprobed_after),
            c_b = number(self.ours_over_empty()),
            c_b_wall = number(self.ours_over_empty_wall()),
            steal = number(self.steal.as_secs_f64()),
            c_b_cycles = numbers(&mut self.cycle_ratios().into_iter()),
            b_a = number(self.empty_over_unprobed()),
            c_a = number(self.ours_over_unprobed()),
            goal = number(GOAL_OURS_OVER_EMPTY),
            met = self.goal_met(),
            events = self.counters.events,
            dropped = self.counters.dropped_ring_full,
            expected = self.expected_events(),
            agent_cpu = number(self.agent_cpu_ns_per_call()),
            agent_cpu_event = number(self.agent_cpu_ns_per_event()),
            sink_traces = self.sink_traces,
            sink_bytes = self.sink_bytes,
            writer_dropped = self.writer_dropped,
        )
    }
}

/// A JSON number, or `null` for what JSON cannot represent (a ratio over a zero time).
pub(crate) fn number(value: f64) -> String {
    if value.is_finite() {
        format!("{value:.4}")
    } else {
        "null".to_string()
    }
}

/// A JSON string literal.
pub(crate) fn string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_targets_reply() {
        let sample = Sample::parse("ns_per_call=1512.250 cpu_ns_per_call=1500.125 sum=42").unwrap();
        assert_eq!((sample.wall_ns, sample.cpu_ns), (1512.25, 1500.125));
        assert!(Sample::parse("error: expected").is_none());
    }

    #[test]
    fn parses_the_agents_exit_counters() {
        let stderr = vec![
            "ddtrace-agent: bench_work: attached 1 probes to /x".to_string(),
            "ddtrace-agent: stopped by signal (12); kernel: events=400 dropped_ring_full=2 capture_truncated=0; \
             malformed_events=7 abandoned_contexts=0"
                .to_string(),
        ];
        let counters = KernelCounters::parse(&stderr).unwrap();
        assert_eq!((counters.events, counters.dropped_ring_full), (400, 2));
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median([3.0, 1.0, 2.0].into_iter()), 2.0);
        assert_eq!(median([4.0, 1.0, 2.0, 3.0].into_iter()), 2.5);
    }
}
