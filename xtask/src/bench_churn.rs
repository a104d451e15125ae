//! `cargo xtask bench --churn`: a node agent under process churn, as recycled PHP-FPM or gunicorn
//! workers, cron jobs and CGI make it: `--churn-per-minute` (default 1,000) short-lived selected
//! processes a minute for `--churn-minutes` (default 10). Each is `tests/apps/sqlite_once.c` (about
//! a millisecond of life, two statements) with `DD_SERVICE=churn-<n>`, a service of its own, so
//! the spans the console exporter prints tell which processes were traced.
//!
//! Reported: processes started and traced (every one, the goal), statements seen of those run, and
//! the agent's resident memory each minute (flat, the goal: the last minute's within 5% of the
//! first's).

use std::{
    collections::HashMap,
    fmt::Write as _,
    fs,
    process::{Command, ExitCode, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::{
    bench::{publish, root_and_agent, rss_mb, BenchArgs},
    process::step,
    workspace,
};

/// `cargo xtask bench --churn` options (flattened into `cargo xtask bench`'s).
#[derive(Debug, Args)]
pub struct ChurnArgs {
    /// Instead of the uprobe cost: short-lived selected processes under a node agent.
    #[arg(long)]
    pub churn: bool,
    /// --churn: minutes of churn.
    #[arg(long, default_value_t = 10)]
    pub churn_minutes: u64,
    /// --churn: processes started a minute.
    #[arg(long, default_value_t = 1000)]
    pub churn_per_minute: u64,
}

const STATEMENTS: usize = 2;
const READY: &str = "attached: tracing";
/// Memory is flat when the last minute's RSS is within this share of the first minute's.
const FLAT: f64 = 0.05;

pub fn run(args: &BenchArgs) -> Result<ExitCode> {
    let churn = &args.churn;
    if churn.churn_minutes == 0 || churn.churn_per_minute == 0 {
        bail!("--churn-minutes and --churn-per-minute must be at least 1");
    }
    let agent = root_and_agent(args)?;
    let out_dir = workspace::target_dir().join("bench");
    fs::create_dir_all(&out_dir)?;
    let program = out_dir.join("sqlite_once");
    let source = workspace::root().join("tests/apps/sqlite_once.c");
    let built = Command::new("gcc")
        .args(["-O1", "-o"])
        .arg(&program)
        .arg(&source)
        .args(["-Wl,--no-as-needed", "/usr/lib/x86_64-linux-gnu/libsqlite3.so.0"])
        .status()
        .context("gcc runs")?;
    if !built.success() {
        bail!("gcc could not build {}", source.display());
    }
    let spans_path = out_dir.join("churn-spans.txt");
    let log_path = out_dir.join("churn-agent.log");
    let mut agent = Command::new(&agent)
        .args(["--node", "--exporter", "console", "--profiling-enabled", "false"])
        .stdin(Stdio::null())
        .stdout(fs::File::create(&spans_path)?)
        .stderr(fs::File::create(&log_path)?)
        .spawn()
        .context("the agent starts")?;
    let deadline = Instant::now() + Duration::from_secs(args.attach_timeout);
    while !fs::read_to_string(&log_path).unwrap_or_default().contains(READY) {
        if Instant::now() > deadline || agent.try_wait()?.is_some() {
            bail!("the agent did not attach:\n{}", fs::read_to_string(&log_path).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let agent_pid = agent.id();
    let interval = Duration::from_secs(60) / churn.churn_per_minute as u32;
    let total = churn.churn_minutes * churn.churn_per_minute;
    step("bench", format!("churn: {total} processes, one every {} ms", interval.as_millis()));
    let started = Instant::now();
    let mut rss_per_minute = Vec::new();
    let mut failed = 0;
    for n in 0..total {
        let due = started + interval * n as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let status = Command::new(&program)
            .arg(STATEMENTS.to_string())
            .env("DD_SERVICE", format!("churn-{n}"))
            .stdout(Stdio::null())
            .status();
        if !status.is_ok_and(|s| s.success()) {
            failed += 1;
        }
        if (n + 1) % churn.churn_per_minute == 0 {
            let rss = rss_mb(agent_pid).unwrap_or(f64::NAN);
            step("bench", format!("minute {}: agent RSS {rss:.1} MB", rss_per_minute.len() + 1));
            rss_per_minute.push(rss);
        }
    }
    std::thread::sleep(Duration::from_secs(3)); // the last spans flushed (every second)
                                                // SAFETY: plain kill(2) on our child.
    unsafe { libc::kill(agent_pid as i32, libc::SIGINT) };
    let status = agent.wait()?;
    if !status.success() {
        bail!("the agent exited with {status}:\n{}", fs::read_to_string(&log_path).unwrap_or_default());
    }
    // Console lines: `trace <id> (service churn-<n>)`, then one line per span.
    let spans = fs::read_to_string(&spans_path)?;
    let mut per_process: HashMap<&str, usize> = HashMap::new();
    for line in spans.lines() {
        if let Some(service) = line.split("(service ").nth(1).and_then(|rest| rest.strip_suffix(')')) {
            if service.starts_with("churn-") {
                *per_process.entry(service).or_default() += 1;
            }
        }
    }
    let traced = per_process.len() as u64;
    let statements: usize = per_process.values().sum();
    let ran = total - failed;
    let (first, last) =
        (rss_per_minute.first().copied().unwrap_or(f64::NAN), rss_per_minute.last().copied().unwrap_or(f64::NAN));
    let flat = last <= first * (1.0 + FLAT);
    let mut table = String::new();
    let _ = writeln!(
        table,
        "\nChurn: {total} selected processes ({} a minute for {} min), each ~1 ms long with {STATEMENTS} statements",
        churn.churn_per_minute, churn.churn_minutes
    );
    let _ = writeln!(
        table,
        "  processes run: {ran} ({failed} failed to run); traced: {traced}; missed: {}",
        ran.saturating_sub(traced)
    );
    let _ = writeln!(table, "  statements traced: {statements} of {}", ran as usize * STATEMENTS);
    let _ = writeln!(
        table,
        "  agent RSS per minute (MB): {}",
        rss_per_minute.iter().map(|r| format!("{r:.1}")).collect::<Vec<_>>().join(" ")
    );
    let _ = writeln!(
        table,
        "  goals: no process missed: {}; memory flat (last minute within {:.0}% of the first): {}",
        if traced >= ran { "met" } else { "MISSED" },
        FLAT * 100.0,
        if flat { "met" } else { "MISSED" }
    );
    let json = format!(
        "{{\"processes\": {ran}, \"traced\": {traced}, \"statements\": {statements}, \"rss_mb_per_minute\": [{}]}}\n",
        rss_per_minute.iter().map(|r| format!("{r:.1}")).collect::<Vec<_>>().join(", ")
    );
    publish(&out_dir, "churn.json", &table, &json)?;
    Ok(ExitCode::SUCCESS)
}
