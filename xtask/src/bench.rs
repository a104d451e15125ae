//! `cargo xtask bench`: what our uprobes cost per call of a probed function.
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
    bootstrap::{self, BootstrapArgs},
    build_ebpf,
    process::{self, find_in_path, step},
    workspace,
};

/// `cargo xtask bench` options.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Timed rounds per configuration; the median is reported.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Calls of the probed function per round.
    #[arg(long, default_value_t = 200_000)]
    pub calls: u64,
    /// Untimed calls before each configuration's rounds (caches, branch predictors, page state).
    #[arg(long, default_value_t = 20_000)]
    pub warmup_calls: u64,
    /// Seconds to wait for the agent to report its probes attached.
    #[arg(long, default_value_t = 30)]
    pub attach_timeout: u64,
    /// Run this agent binary instead of building the eBPF object and `target/release/ddtrace-agent`.
    #[arg(long, value_name = "PATH")]
    pub agent: Option<PathBuf>,
}

/// The goal at this stage for (c)/(b): our programs may add at most 25% to the bare uprobe cost.
const GOAL_OURS_OVER_EMPTY: f64 = 1.25;
/// The probed function in the C target.
const SYMBOL: &str = "bench_work";
/// Frame pointer kept so `bench_work` starts with `push %rbp`, which the kernel emulates; no CET
/// so there is no `endbr64` in front of it. See the C file's header.
const CFLAGS: &[&str] = &["-O1", "-fno-omit-frame-pointer", "-fcf-protection=none", "-Wall", "-Wextra"];
/// Lines the agent prints to stderr once its probes are live.
const EMPTY_ATTACHED: &str = "empty baseline probes attached";
const OURS_ATTACHED: &str = "attached 1 probes to";
/// How long the agent gets to drain its ring buffer, flush and exit after SIGINT.
const AGENT_STOP_GRACE: Duration = Duration::from_secs(60);

pub fn run(args: &BenchArgs) -> Result<ExitCode> {
    if args.rounds == 0 || args.calls == 0 || args.cycles == 0 {
        bail!("--rounds, --calls and --cycles must be at least 1");
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmark loads eBPF programs: run it as root (e.g. `sudo -E cargo xtask bench`)");
    }
    let agent_binary = match &args.agent {
        Some(agent) => agent.clone(),
        None => {
            let toolchain = bootstrap::ensure(&BootstrapArgs { bpf_linker_root: None })?;
            build_ebpf::build(&toolchain, true)?;
            workspace::build_agent()?
        }
    };

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

    // One target process for every configuration: the same code placement, page tables and
    // caches throughout, so the differences are the probes' alone; attaching to a process that is
    // already running is also how the agent is used. (b) and (c) alternate for several cycles so
    // that the VM's slow drifts (seen: +-20% over seconds) weigh on both alike. A last unprobed
    // pass checks that detaching restored the plain cost.
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
    for cycle in 1..=args.cycles {
        let mut agent = Agent::start(
            &agent_binary,
            &["--pid", &pid, "--bench-empty-probes", &probe_spec],
            EMPTY_ATTACHED,
            attach_timeout,
        )?;
        empty.cycles.push(measure(&mut target, &format!("(b) empty programs, cycle {cycle}"))?);
        agent.stop()?;

        let mut agent = Agent::start(
            &agent_binary,
            &["--pid", &pid, "--trace-function", &probe_spec, "--exporter", "console"],
            OURS_ATTACHED,
            attach_timeout,
        )?;
        ours.cycles.push(measure(&mut target, &format!("(c) ddtrace programs, cycle {cycle}"))?);
        let children_cpu_before = children_cpu_time();
        let stderr = agent.stop()?;
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
        first_instruction,
        target_binary,
        rounds: args.rounds,
        cycles: args.cycles,
        calls: args.calls,
        warmup_calls: args.warmup_calls,
        unprobed,
        empty,
        ours,
        unprobed_after,
        counters,
        agent_cpu,
    };
    print!("{}", report.table());
    let json_path = out_dir.join("uprobe-cost.json");
    fs::write(&json_path, report.json()).with_context(|| format!("could not write {}", json_path.display()))?;
    step("bench", format!("figures written to {}", relative(&json_path).display()));
    Ok(ExitCode::SUCCESS)
}

/// CPU time (user + system) of this process's children that have been waited for.
fn children_cpu_time() -> Duration {
    // SAFETY: rusage is plain data; getrusage only writes it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a rusage; RUSAGE_CHILDREN cannot fail.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// Compiles the C target into `out_dir/call_loop`.
fn compile_target(out_dir: &Path) -> Result<PathBuf> {
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
fn relative(path: &Path) -> &Path {
    path.strip_prefix(workspace::root()).unwrap_or(path)
}

/// Lines of a child's stream, read by a thread so they can be awaited with a timeout.
struct Lines {
    receiver: Receiver<String>,
}

impl Lines {
    fn new(stream: impl std::io::Read + Send + 'static) -> Self {
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
    fn next(&self, timeout: Duration) -> Result<Option<String>, RecvTimeoutError> {
        match self.receiver.recv_timeout(timeout) {
            Ok(line) => Ok(Some(line)),
            Err(RecvTimeoutError::Disconnected) => Ok(None),
            Err(error) => Err(error),
        }
    }
}

/// Sends `signal` to `child` if it has not been reaped.
fn signal(child: &Child, signal: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(child.id()) else { return };
    // SAFETY: kill has no memory-safety preconditions; the pid is our own unreaped child.
    unsafe { libc::kill(pid, signal) };
}

fn wait_timeout(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
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
struct Target {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines,
    pid: u32,
}

impl Target {
    fn start(binary: &Path) -> Result<Self> {
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
        match self.stdout.next(timeout) {
            Ok(Some(line)) => Ok(line),
            Ok(None) => {
                let status = wait_timeout(&mut self.child, Duration::from_secs(1))?;
                bail!("the target (pid {}) closed its output; exit status: {status:?}", self.pid)
            }
            Err(_) => bail!("the target (pid {}) did not answer within {} s", self.pid, timeout.as_secs()),
        }
    }

    /// Calls `bench_work` `calls` times and returns the target's own wall and CPU ns per call.
    fn run_calls(&mut self, calls: u64) -> Result<Sample> {
        writeln!(self.stdin, "go {calls}")
            .and_then(|()| self.stdin.flush())
            .with_context(|| format!("could not write to the target (pid {})", self.pid))?;
        // Generous: 100 µs per call is 5x the single-stepped uprobe cost measured on these VMs.
        let timeout = Duration::from_secs(30) + Duration::from_micros(100).saturating_mul(calls.try_into().unwrap_or(u32::MAX));
        let line = self.reply(timeout)?;
        Sample::parse(&line).with_context(|| format!("unexpected reply from the target (pid {}): {line:?}", self.pid))
    }

    fn measure(&mut self, label: &str, warmup_calls: u64, calls: u64, rounds: usize) -> Result<Phase> {
        if warmup_calls > 0 {
            self.run_calls(warmup_calls)?;
        }
        let samples = (0..rounds).map(|_| self.run_calls(calls)).collect::<Result<Vec<_>>>()?;
        Ok(Phase { label: label.to_string(), samples })
    }

    fn exit(mut self) -> Result<()> {
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
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// An agent attached to the target, with its stderr collected.
struct Agent {
    child: Child,
    stderr: Lines,
    seen: Vec<String>,
    command: String,
}

impl Agent {
    /// Starts the agent and returns once it printed `ready_marker` (its probes are attached).
    fn start(binary: &Path, args: &[&str], ready_marker: &str, timeout: Duration) -> Result<Self> {
        let mut cmd = Command::new(binary);
        // Spans go to stdout; printing them is the daemon's cost, not the target's.
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let command = process::describe(&cmd);
        step("bench", format!("starting the agent: {command}"));
        let mut child = cmd.spawn().with_context(|| format!("could not start `{command}`"))?;
        let stderr = Lines::new(child.stderr.take().context("the agent's stderr was not piped")?);
        let mut agent = Self { child, stderr, seen: Vec::new(), command };
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match agent.stderr.next(left) {
                Ok(Some(line)) => {
                    let ready = line.contains(ready_marker);
                    agent.seen.push(line);
                    if ready {
                        return Ok(agent);
                    }
                }
                Ok(None) => {
                    let status = wait_timeout(&mut agent.child, Duration::from_secs(5))?;
                    bail!(
                        "the agent exited before reporting `{ready_marker}` (status {status:?}); `{}` printed:\n{}",
                        agent.command,
                        agent.seen.join("\n")
                    );
                }
                Err(_) => {
                    signal(&agent.child, libc::SIGKILL);
                    bail!(
                        "the agent did not report `{ready_marker}` within {} s; `{}` printed:\n{}",
                        timeout.as_secs(),
                        agent.command,
                        agent.seen.join("\n")
                    );
                }
            }
        }
    }

    /// SIGINT, waits for a clean exit, and returns everything the agent printed to stderr.
    fn stop(&mut self) -> Result<Vec<String>> {
        signal(&self.child, libc::SIGINT);
        let deadline = Instant::now() + AGENT_STOP_GRACE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.next(left) {
                Ok(Some(line)) => self.seen.push(line),
                Ok(None) => break,
                Err(_) => {
                    signal(&self.child, libc::SIGKILL);
                    bail!(
                        "the agent did not exit within {} s of SIGINT; `{}` printed:\n{}",
                        AGENT_STOP_GRACE.as_secs(),
                        self.command,
                        self.seen.join("\n")
                    );
                }
            }
        }
        let status = wait_timeout(&mut self.child, Duration::from_secs(10))?;
        match status {
            Some(status) if status.success() => Ok(std::mem::take(&mut self.seen)),
            _ => bail!("the agent exited with {status:?} after SIGINT; `{}` printed:\n{}", self.command, self.seen.join("\n")),
        }
    }
}

impl Drop for Agent {
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

/// The rounds of one configuration.
struct Phase {
    label: String,
    samples: Vec<Sample>,
}

impl Phase {
    fn median_wall(&self) -> f64 {
        median(self.samples.iter().map(|s| s.wall_ns))
    }

    fn median_cpu(&self) -> f64 {
        median(self.samples.iter().map(|s| s.cpu_ns))
    }

    fn rounds_text(&self) -> String {
        self.samples.iter().map(|s| format!("{:.1}", s.wall_ns)).collect::<Vec<_>>().join(" ")
    }

    /// (max - min) / median of the wall times: how much the rounds disagree.
    fn spread(&self) -> f64 {
        let (min, max) = self
            .samples
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), s| (lo.min(s.wall_ns), hi.max(s.wall_ns)));
        (max - min) / self.median_wall()
    }
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
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

struct Report {
    first_instruction: String,
    target_binary: PathBuf,
    rounds: usize,
    calls: u64,
    warmup_calls: u64,
    unprobed: Phase,
    empty: Phase,
    ours: Phase,
    unprobed_after: Phase,
    counters: KernelCounters,
}

impl Report {
    fn ours_over_empty(&self) -> f64 {
        self.ours.median_wall() / self.empty.median_wall()
    }

    fn empty_over_unprobed(&self) -> f64 {
        self.empty.median_wall() / self.unprobed.median_wall()
    }

    fn ours_over_unprobed(&self) -> f64 {
        self.ours.median_wall() / self.unprobed.median_wall()
    }

    fn goal_met(&self) -> bool {
        self.ours_over_empty() <= GOAL_OURS_OVER_EMPTY
    }

    /// One entry and one exit event per call made while (c) was attached.
    fn expected_events(&self) -> u64 {
        2 * (self.warmup_calls + self.calls * self.rounds as u64)
    }

    fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\nuprobe cost per call of {SYMBOL} (first instruction `{}`), median of {} rounds x {} calls",
            self.first_instruction, self.rounds, self.calls
        );
        let _ = writeln!(out, "  {:<40} {:>12} {:>12} {:>8}", "configuration", "wall ns", "cpu ns", "spread");
        for phase in [&self.unprobed, &self.empty, &self.ours, &self.unprobed_after] {
            let _ = writeln!(
                out,
                "  {:<40} {:>12.1} {:>12.1} {:>7.1}%",
                phase.label,
                phase.median_wall(),
                phase.median_cpu(),
                100.0 * phase.spread()
            );
        }
        let _ = writeln!(
            out,
            "  (c)/(b) = {:.3}   goal <= {GOAL_OURS_OVER_EMPTY}: {}",
            self.ours_over_empty(),
            if self.goal_met() { "met" } else { "GOAL MISSED" }
        );
        let _ = writeln!(out, "  (b)/(a) = {:.1}", self.empty_over_unprobed());
        let _ = writeln!(out, "  (c)/(a) = {:.1}", self.ours_over_unprobed());
        let accounted = self.counters.events + self.counters.dropped_ring_full;
        let _ = writeln!(
            out,
            "  (c) kernel events: {} submitted, {} dropped (ring full), {} expected (entry+exit per call){}",
            self.counters.events,
            self.counters.dropped_ring_full,
            self.expected_events(),
            if accounted == self.expected_events() { "" } else { "  <- MISMATCH" }
        );
        if !self.goal_met() {
            let _ = writeln!(
                out,
                "GOAL MISSED: our programs cost {:.2}x the empty ones (goal <= {GOAL_OURS_OVER_EMPTY})",
                self.ours_over_empty()
            );
        }
        out
    }

    fn json(&self) -> String {
        let phase = |phase: &Phase| {
            let rounds: Vec<String> = phase.samples.iter().map(|s| number(s.wall_ns)).collect();
            let cpu_rounds: Vec<String> = phase.samples.iter().map(|s| number(s.cpu_ns)).collect();
            format!(
                "{{\"ns_per_call\": {}, \"cpu_ns_per_call\": {}, \"rounds_ns_per_call\": [{}], \"rounds_cpu_ns_per_call\": [{}]}}",
                number(phase.median_wall()),
                number(phase.median_cpu()),
                rounds.join(", "),
                cpu_rounds.join(", ")
            )
        };
        format!(
            r#"{{
  "symbol": "{SYMBOL}",
  "target": {target},
  "first_instruction": {first_instruction},
  "rounds": {rounds},
  "calls_per_round": {calls},
  "warmup_calls": {warmup},
  "statistic": "median",
  "unprobed": {unprobed},
  "empty_probes": {empty},
  "ddtrace_probes": {ours},
  "unprobed_after": {after},
  "ratios": {{
    "ddtrace_over_empty": {c_b},
    "empty_over_unprobed": {b_a},
    "ddtrace_over_unprobed": {c_a}
  }},
  "goal": {{"ddtrace_over_empty_max": {goal}, "met": {met}}},
  "ddtrace_events": {{"events": {events}, "dropped_ring_full": {dropped}, "expected": {expected}}}
}}
"#,
            target = string(&self.target_binary.display().to_string()),
            first_instruction = string(&self.first_instruction),
            rounds = self.rounds,
            calls = self.calls,
            warmup = self.warmup_calls,
            unprobed = phase(&self.unprobed),
            empty = phase(&self.empty),
            ours = phase(&self.ours),
            after = phase(&self.unprobed_after),
            c_b = number(self.ours_over_empty()),
            b_a = number(self.empty_over_unprobed()),
            c_a = number(self.ours_over_unprobed()),
            goal = number(GOAL_OURS_OVER_EMPTY),
            met = self.goal_met(),
            events = self.counters.events,
            dropped = self.counters.dropped_ring_full,
            expected = self.expected_events(),
        )
    }
}

/// A JSON number, or `null` for what JSON cannot represent (a ratio over a zero time).
fn number(value: f64) -> String {
    if value.is_finite() {
        format!("{value:.4}")
    } else {
        "null".to_string()
    }
}

/// A JSON string literal.
fn string(text: &str) -> String {
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
