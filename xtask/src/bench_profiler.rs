//! `cargo xtask bench --profiler`: what sampling costs a Python program, ddtrace-agent against
//! py-spy, at the same rate.
//!
//! A pure-Python program (`tests/apps/bench/cpu_workload.py`) does a fixed amount of CPU work,
//! (a) unprofiled, (b) profiled by ddtrace-agent, (c) profiled by py-spy (`record`, its default
//! blocking mode, which pauses the target for every sample) and, with `--nonblocking`, (d) by
//! py-spy `--nonblocking`. Each profiler attaches to a fresh workload process before its work
//! starts and stops when it exits. The configurations rotate for several cycles so that the VM's
//! drifts weigh on all alike; medians are reported: the target's slowdown (its own wall and CPU
//! time of the work) and each profiler's own CPU time per second of the target's CPU.
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
        background_load, children_cpu_time, kill_unreaped, median, number, proc_cpu_time, publish, python_executable,
        reply, root_and_agent, signal, status_text, steal_and_noise_notes, steal_time, string, wait_timeout, BenchArgs,
        Lines, Stream, Watched,
    },
    process::{find_in_path, is_executable, step},
    test::{ensure_python_tool, python_script_dirs},
    workspace,
};

/// `cargo xtask bench --profiler` options (flattened into `cargo xtask bench`'s).
#[derive(Debug, Args)]
pub struct ProfilerArgs {
    /// Instead of the uprobe cost: the profiler's cost to a Python program, against py-spy.
    #[arg(long)]
    pub profiler: bool,
    /// --profiler: units of work of the Python workload (one is ~0.02 s of CPU). Long enough by
    /// default for the steady state to outweigh loading symbols at the first samples.
    #[arg(long, default_value_t = 300)]
    pub work_units: u32,
    /// --profiler: also measure `py-spy record --nonblocking`.
    #[arg(long)]
    pub nonblocking: bool,
}

/// Runs of each configuration when `--cycles` is not given.
const DEFAULT_CYCLES: usize = 5;
/// Sampling rate when `--rate` is not given, in Hz (ddtrace-agent's default).
const DEFAULT_RATE_HZ: u32 = 100;
const WORKLOAD: &str = "tests/apps/bench/cpu_workload.py";
/// ddtrace-agent's stderr line once its perf events sample the target.
const AGENT_SAMPLING: &str = "profiling: sampling CPU at";
/// py-spy's stdout line once it has attached (`py-spy> Sampling process 100 times a second...`).
const PY_SPY_SAMPLING: &str = "Sampling process";
/// How long a profiler gets to write its profile and exit once the workload has exited.
const PROFILER_EXIT_GRACE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Config {
    Unprofiled,
    Ddtrace,
    PySpy,
    PySpyNonblocking,
}

impl Config {
    fn label(self) -> &'static str {
        match self {
            Config::Unprofiled => "(a) unprofiled",
            Config::Ddtrace => "(b) ddtrace-agent",
            Config::PySpy => "(c) py-spy",
            Config::PySpyNonblocking => "(d) py-spy --nonblocking",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Config::Unprofiled => "unprofiled",
            Config::Ddtrace => "ddtrace_agent",
            Config::PySpy => "py_spy",
            Config::PySpyNonblocking => "py_spy_nonblocking",
        }
    }
}

/// One run of the workload under one configuration.
#[derive(Debug, Clone, Copy)]
struct Run {
    /// The workload's own wall and CPU time of its work, in seconds.
    wall_s: f64,
    cpu_s: f64,
    /// The profiler's CPU time (user + system) over its whole life, and from the moment it
    /// reported sampling to its exit.
    profiler_cpu: Option<Duration>,
    profiler_cpu_sampling: Option<Duration>,
    /// Samples the profiler reported (ddtrace-agent: its exit report; py-spy: its raw output).
    samples: Option<u64>,
}

pub fn run(args: &BenchArgs) -> Result<ExitCode> {
    let options = &args.profiler;
    let cycles = args.cycles.unwrap_or(DEFAULT_CYCLES);
    let rate = args.rate.unwrap_or(DEFAULT_RATE_HZ);
    if cycles == 0 || rate == 0 || options.work_units == 0 {
        bail!("--cycles, --rate and --work-units must be at least 1");
    }
    let agent = root_and_agent(args)?;
    let py_spy = py_spy()?;
    let python = python_executable()?;
    let workload = workspace::root().join(WORKLOAD);
    let out_dir = workspace::target_dir().join("bench");
    fs::create_dir_all(&out_dir).with_context(|| format!("could not create {}", out_dir.display()))?;
    step("bench", format!("python: {}; py-spy: {}", python.display(), py_spy.display()));

    let background_busy = background_load()?;

    let mut configs = vec![Config::Unprofiled, Config::Ddtrace, Config::PySpy];
    if options.nonblocking {
        configs.push(Config::PySpyNonblocking);
    }
    let bench = Bench {
        python,
        workload,
        agent,
        py_spy,
        out_dir: out_dir.clone(),
        rate,
        work_units: options.work_units,
        attach_timeout: Duration::from_secs(args.attach_timeout),
    };
    let run_started = Instant::now();
    let steal_before = steal_time();
    let mut runs: Vec<(Config, Vec<Run>)> = configs.iter().map(|&config| (config, Vec::new())).collect();
    for cycle in 0..cycles {
        // Rotated each cycle, so that no configuration always runs right after the same one.
        for index in 0..configs.len() {
            let slot = (index + cycle) % configs.len();
            let config = configs[slot];
            let run = bench.run(config).with_context(|| format!("{}, cycle {}", config.label(), cycle + 1))?;
            step(
                "bench",
                format!(
                    "{}, cycle {}: work wall {:.3} s, cpu {:.3} s{}{}",
                    config.label(),
                    cycle + 1,
                    run.wall_s,
                    run.cpu_s,
                    run.profiler_cpu.map(|cpu| format!(", profiler cpu {} ms", cpu.as_millis())).unwrap_or_default(),
                    run.samples.map(|n| format!(", {n} samples")).unwrap_or_default(),
                ),
            );
            runs[slot].1.push(run);
        }
    }
    let report = Report {
        background_busy,
        rate,
        work_units: options.work_units,
        cycles,
        runs,
        steal: steal_time().saturating_sub(steal_before),
        elapsed: run_started.elapsed(),
    };
    publish(&out_dir, "profiler.json", &report.table(), &report.json())?;
    Ok(ExitCode::SUCCESS)
}

/// py-spy's own binary, installed from PyPI if missing. Preferred in python3's script directory
/// over PATH, where pyenv puts a shim that would be counted in py-spy's CPU time.
fn py_spy() -> Result<PathBuf> {
    let in_script_dirs = || -> Result<Option<PathBuf>> {
        Ok(python_script_dirs()?.into_iter().map(|dir| dir.join("py-spy")).find(|p| is_executable(p)))
    };
    if let Some(path) = in_script_dirs()? {
        return Ok(path);
    }
    let dir = ensure_python_tool("py-spy", "py-spy", "py-spy")?;
    if let Some(path) = in_script_dirs()? {
        return Ok(path);
    }
    dir.map(|dir| dir.join("py-spy"))
        .or_else(|| find_in_path("py-spy"))
        .context("py-spy was installed but cannot be found")
}

struct Bench {
    python: PathBuf,
    workload: PathBuf,
    agent: PathBuf,
    py_spy: PathBuf,
    out_dir: PathBuf,
    rate: u32,
    work_units: u32,
    attach_timeout: Duration,
}

impl Bench {
    fn run(&self, config: Config) -> Result<Run> {
        let mut workload = Workload::start(&self.python, &self.workload, self.work_units)?;
        let pid = workload.child.id().to_string();
        let rate = self.rate.to_string();
        let output = self.out_dir.join(format!("profiler-{}.out", config.key()));
        let _ = fs::remove_file(&output);
        let mut profiler = match config {
            Config::Unprofiled => None,
            Config::Ddtrace => {
                let mut cmd = Command::new(&self.agent);
                cmd.args(["--pid", &pid, "--exporter", "console", "--profiling-frequency", &rate, "--profile-output"])
                    .arg(&output)
                    // Its default filter logs the exit report (with the sample count) at info.
                    .env_remove("RUST_LOG");
                Some(Profiler::start(cmd, Stream::Stderr, AGENT_SAMPLING, self.attach_timeout)?)
            }
            Config::PySpy | Config::PySpyNonblocking => {
                let mut cmd = Command::new(&self.py_spy);
                cmd.args(["record", "--rate", &rate, "--pid", &pid, "--format", "raw", "--output"]).arg(&output);
                if config == Config::PySpyNonblocking {
                    cmd.arg("--nonblocking");
                }
                Some(Profiler::start(cmd, Stream::Stdout, PY_SPY_SAMPLING, self.attach_timeout)?)
            }
        };
        if let Some(profiler) = &profiler {
            if config == Config::Ddtrace && !profiler.watched.seen.iter().any(|l| l.contains(&format!("at {rate} Hz")))
            {
                step(
                    "bench",
                    format!("WARNING: the agent does not sample at {rate} Hz: {}", profiler.watched.printed()),
                );
            }
        }
        let (wall_s, cpu_s) = workload.work()?;
        let mut run = Run { wall_s, cpu_s, profiler_cpu: None, profiler_cpu_sampling: None, samples: None };
        if let Some(profiler) = profiler.as_mut() {
            let (total, sampling) = profiler.wait_exit()?;
            run.profiler_cpu = Some(total);
            run.profiler_cpu_sampling = sampling;
            run.samples = match config {
                Config::Ddtrace => agent_samples(&profiler.watched.seen),
                _ => raw_samples(&output),
            };
        }
        Ok(run)
    }
}

/// The running workload and its line protocol (see the Python file's header).
struct Workload {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines,
}

impl Workload {
    fn start(python: &Path, script: &Path, units: u32) -> Result<Self> {
        let mut child = Command::new(python)
            .arg("-u")
            .arg(script)
            .arg(units.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("could not start {} {}", python.display(), script.display()))?;
        let stdin = child.stdin.take().context("the workload's stdin was not piped")?;
        let stdout = Lines::new(child.stdout.take().context("the workload's stdout was not piped")?);
        let mut workload = Self { child, stdin, stdout };
        let ready = workload.reply(Duration::from_secs(30))?;
        if !ready.starts_with("ready") {
            bail!("the workload printed {ready:?} instead of `ready pid=...`");
        }
        Ok(workload)
    }

    fn reply(&mut self, timeout: Duration) -> Result<String> {
        reply(&self.stdout, &mut self.child, "the workload", timeout)
    }

    /// Starts the work, returns its (wall, CPU) seconds, and reaps the workload.
    fn work(&mut self) -> Result<(f64, f64)> {
        writeln!(self.stdin, "go").and_then(|()| self.stdin.flush()).context("could not write to the workload")?;
        let line = self.reply(Duration::from_secs(600))?;
        let times = parse_times(&line).with_context(|| format!("unexpected reply from the workload: {line:?}"))?;
        match wait_timeout(&mut self.child, Duration::from_secs(10))? {
            Some(status) if status.success() => Ok(times),
            status => bail!("the workload {}", status_text(status)),
        }
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        kill_unreaped(&mut self.child);
    }
}

/// Parses `wall_s=<f> cpu_s=<f> result=<n>`.
fn parse_times(line: &str) -> Option<(f64, f64)> {
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|word| word.strip_prefix(name)?.strip_prefix('='))
            .and_then(|value| value.parse::<f64>().ok())
    };
    Some((field("wall_s")?, field("cpu_s")?))
}

/// A profiler attached to the workload.
struct Profiler {
    watched: Watched,
    /// Its CPU time when it reported sampling (start-up, attaching, symbol loading).
    cpu_at_ready: Option<Duration>,
}

impl Profiler {
    /// Starts it and returns once it printed `ready_marker` on `stream`.
    fn start(cmd: Command, stream: Stream, ready_marker: &str, timeout: Duration) -> Result<Self> {
        let watched = Watched::start(cmd, stream, ready_marker, timeout)?;
        let cpu_at_ready = proc_cpu_time(watched.child.id());
        Ok(Self { watched, cpu_at_ready })
    }

    /// Waits for it to exit on its own (the workload has exited), SIGINT after a grace period.
    /// Returns its whole CPU time and the part after it reported sampling.
    fn wait_exit(&mut self) -> Result<(Duration, Option<Duration>)> {
        let mut deadline = Instant::now() + PROFILER_EXIT_GRACE;
        let mut interrupted = false;
        loop {
            match self.watched.output.next(deadline.saturating_duration_since(Instant::now())) {
                Ok(Some(line)) => self.watched.seen.push(line),
                Ok(None) => break,
                Err(_) if !interrupted => {
                    step(
                        "bench",
                        format!(
                            "WARNING: still running {} s after the workload exited, SIGINT",
                            PROFILER_EXIT_GRACE.as_secs()
                        ),
                    );
                    signal(&self.watched.child, libc::SIGINT);
                    interrupted = true;
                    deadline = Instant::now() + Duration::from_secs(10);
                }
                Err(_) => bail!("it did not exit after SIGINT; {}", self.watched.printed()),
            }
        }
        // Every other child has been reaped: the growth of our children's CPU time is its.
        let before = children_cpu_time();
        let status = wait_timeout(&mut self.watched.child, Duration::from_secs(10))?;
        let total = children_cpu_time().saturating_sub(before);
        match status {
            Some(status) if status.success() || interrupted => {
                Ok((total, self.cpu_at_ready.map(|ready| total.saturating_sub(ready))))
            }
            _ => bail!("it {}; {}", status_text(status), self.watched.printed()),
        }
    }
}

/// The sample count of the agent's exit report
/// (`... profiling: finished at exit report=samples=N dropped_queue_full=...`).
fn agent_samples(stderr: &[String]) -> Option<u64> {
    let line = stderr.iter().rev().find(|line| line.contains("report=samples="))?;
    let (_, rest) = line.split_once("report=samples=")?;
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// Samples in a py-spy raw (collapsed stacks) file: the sum of each line's trailing count.
fn raw_samples(path: &Path) -> Option<u64> {
    let text = fs::read_to_string(path).ok()?;
    Some(text.lines().filter_map(|line| line.rsplit_once(' ')?.1.trim().parse::<u64>().ok()).sum())
}

struct Report {
    background_busy: f64,
    rate: u32,
    work_units: u32,
    cycles: usize,
    runs: Vec<(Config, Vec<Run>)>,
    steal: Duration,
    elapsed: Duration,
}

/// Medians of one configuration's runs.
struct Summary {
    wall_s: f64,
    cpu_s: f64,
    profiler_cpu_ms: f64,
    profiler_cpu_sampling_ms: f64,
    /// Profiler CPU ms per second of the target's CPU time, whole life and while sampling.
    ms_per_target_cpu_s: f64,
    sampling_ms_per_target_cpu_s: f64,
    samples: f64,
    samples_per_target_cpu_s: f64,
}

impl Summary {
    fn of(runs: &[Run]) -> Self {
        let ms = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0);
        let samples = |r: &Run| r.samples.map_or(f64::NAN, |n| n as f64);
        Self {
            wall_s: median(runs.iter().map(|r| r.wall_s)),
            cpu_s: median(runs.iter().map(|r| r.cpu_s)),
            profiler_cpu_ms: median(runs.iter().map(|r| ms(r.profiler_cpu))),
            profiler_cpu_sampling_ms: median(runs.iter().map(|r| ms(r.profiler_cpu_sampling))),
            ms_per_target_cpu_s: median(runs.iter().map(|r| ms(r.profiler_cpu) / r.cpu_s)),
            sampling_ms_per_target_cpu_s: median(runs.iter().map(|r| ms(r.profiler_cpu_sampling) / r.cpu_s)),
            samples: median(runs.iter().map(samples)),
            samples_per_target_cpu_s: median(runs.iter().map(|r| samples(r) / r.cpu_s)),
        }
    }
}

impl Report {
    fn baseline(&self) -> Summary {
        Summary::of(&self.runs[0].1)
    }

    fn table(&self) -> String {
        let base = self.baseline();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\nProfiling a pure-Python CPU-bound workload ({} units) at {} Hz: medians of {} runs per configuration",
            self.work_units, self.rate, self.cycles
        );
        let _ = writeln!(
            out,
            "  {:<26} {:>8} {:>8} {:>7} {:>7} {:>10} {:>10} {:>9} {:>9}",
            "configuration", "wall s", "cpu s", "x wall", "x cpu", "prof. ms", "ms/cpu-s", "(sampl.)", "samples/s"
        );
        for (config, runs) in &self.runs {
            let s = Summary::of(runs);
            // No profiler, no profiler figures: `-` rather than NaN.
            let cell = |value: f64, precision: usize| {
                if value.is_finite() {
                    format!("{value:.precision$}")
                } else {
                    "-".to_string()
                }
            };
            let _ = writeln!(
                out,
                "  {:<26} {:>8.3} {:>8.3} {:>7.3} {:>7.3} {:>10} {:>10} {:>9} {:>9}",
                config.label(),
                s.wall_s,
                s.cpu_s,
                s.wall_s / base.wall_s,
                s.cpu_s / base.cpu_s,
                cell(s.profiler_cpu_ms, 0),
                cell(s.ms_per_target_cpu_s, 1),
                cell(s.sampling_ms_per_target_cpu_s, 1),
                cell(s.samples_per_target_cpu_s, 1),
            );
        }
        let _ = writeln!(
            out,
            "  x wall, x cpu: the target's wall and CPU time of its work over (a)'s. prof. ms: the profiler's CPU \
             time over its whole life (start-up included);\n  ms/cpu-s: that per second of the target's CPU time; \
             (sampl.): the same from the moment it reported sampling. samples/s: samples per target CPU second."
        );
        steal_and_noise_notes(&mut out, self.steal, self.elapsed, self.background_busy);
        out
    }

    fn json(&self) -> String {
        let base = self.baseline();
        let list = |values: &mut dyn Iterator<Item = f64>| values.map(number).collect::<Vec<_>>().join(", ");
        let configs: Vec<String> = self
            .runs
            .iter()
            .map(|(config, runs)| {
                let s = Summary::of(runs);
                let ms = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0);
                format!(
                    "    {key}: {{\"label\": {label}, \"wall_s\": {wall}, \"cpu_s\": {cpu}, \"wall_over_unprofiled\": {xw}, \
                     \"cpu_over_unprofiled\": {xc}, \"profiler_cpu_ms\": {pms}, \"profiler_cpu_ms_while_sampling\": {psms}, \
                     \"profiler_cpu_ms_per_target_cpu_s\": {per}, \"profiler_cpu_ms_per_target_cpu_s_while_sampling\": {sper}, \
                     \"samples\": {samples}, \"samples_per_target_cpu_s\": {sps}, \"runs_wall_s\": [{rw}], \
                     \"runs_cpu_s\": [{rc}], \"runs_profiler_cpu_ms\": [{rp}]}}",
                    key = string(config.key()),
                    label = string(config.label()),
                    wall = number(s.wall_s),
                    cpu = number(s.cpu_s),
                    xw = number(s.wall_s / base.wall_s),
                    xc = number(s.cpu_s / base.cpu_s),
                    pms = number(s.profiler_cpu_ms),
                    psms = number(s.profiler_cpu_sampling_ms),
                    per = number(s.ms_per_target_cpu_s),
                    sper = number(s.sampling_ms_per_target_cpu_s),
                    samples = number(s.samples),
                    sps = number(s.samples_per_target_cpu_s),
                    rw = list(&mut runs.iter().map(|r| r.wall_s)),
                    rc = list(&mut runs.iter().map(|r| r.cpu_s)),
                    rp = list(&mut runs.iter().map(|r| ms(r.profiler_cpu))),
                )
            })
            .collect();
        format!(
            "{{\n  \"workload\": {workload},\n  \"work_units\": {units},\n  \"rate_hz\": {rate},\n  \"cycles\": {cycles},\n  \
             \"statistic\": \"median over the runs\",\n  \"background_cpu_busy\": {busy},\n  \"steal_seconds\": {steal},\n  \
             \"elapsed_seconds\": {elapsed},\n  \"configurations\": {{\n{configs}\n  }}\n}}\n",
            workload = string(WORKLOAD),
            units = self.work_units,
            rate = self.rate,
            cycles = self.cycles,
            busy = number(self.background_busy),
            steal = number(self.steal.as_secs_f64()),
            elapsed = number(self.elapsed.as_secs_f64()),
            configs = configs.join(",\n"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_workloads_reply() {
        assert_eq!(parse_times("wall_s=4.5 cpu_s=4.25 result=7"), Some((4.5, 4.25)));
        assert_eq!(parse_times("ready pid=1"), None);
    }

    #[test]
    fn reads_the_agents_sample_count() {
        let stderr = vec![
            "ddtrace-agent: profiling: sampling CPU at 100 Hz on 2 CPUs".to_string(),
            "2026-01-01T00:00:00Z  INFO ddtrace_agent::products::profiling: profiling: finished at exit \
             report=samples=412 dropped_queue_full=0 uploads=0 failed_uploads=0 unwind: ok=412"
                .to_string(),
        ];
        assert_eq!(agent_samples(&stderr), Some(412));
    }
}
