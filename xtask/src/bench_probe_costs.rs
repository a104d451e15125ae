//! What each of the agent's kernel programs costs, from the kernel's own statistics
//! (`kernel.bpf_stats_enabled`): the run count and run time of every program the agent holds
//! open (`/proc/<agent>/fdinfo`), named from `/proc/kallsyms` (`bpf_prog_<tag>_<name>`).
//!
//! The statistics cost every program run two clock reads, so a benchmark turns them on only
//! for an extra phase whose figures stay out of its verdict. What they leave out is the trap
//! of each uprobe and the system-call tracepoints' own dispatch: the program is only part of
//! what a probe hit costs the target.

use std::{collections::HashMap, fmt::Write as _, fs};

use anyhow::{Context, Result};

const STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Kernel BPF statistics on while this lives; the previous setting back on drop.
pub struct StatsOn {
    previous: String,
}

impl StatsOn {
    pub fn start() -> Result<Self> {
        let previous = fs::read_to_string(STATS_SYSCTL).with_context(|| format!("could not read {STATS_SYSCTL}"))?;
        fs::write(STATS_SYSCTL, "1").with_context(|| format!("could not turn on {STATS_SYSCTL}"))?;
        Ok(Self { previous: previous.trim().to_string() })
    }
}

impl Drop for StatsOn {
    fn drop(&mut self) {
        let _ = fs::write(STATS_SYSCTL, &self.previous);
    }
}

/// One kernel program's runs and time, summed over its open descriptors.
pub struct ProgramCost {
    pub name: String,
    pub runs: u64,
    pub nanos: u64,
}

/// The run counts and times of the programs process `pid` holds, so far (statistics on).
pub fn program_costs(pid: u32) -> Vec<ProgramCost> {
    let names = program_names();
    let mut costs: HashMap<String, ProgramCost> = HashMap::new();
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else { return Vec::new() };
    for fd in fds.flatten() {
        let Ok(info) = fs::read_to_string(fd.path()) else { continue };
        let field = |name: &str| {
            info.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(':').map(|v| v.trim().to_string()))
        };
        let (Some(tag), Some(runs), Some(nanos)) = (field("prog_tag"), field("run_cnt"), field("run_time_ns")) else {
            continue;
        };
        let name = names.get(&tag).cloned().unwrap_or_else(|| format!("prog {tag}"));
        let cost = costs.entry(name.clone()).or_insert(ProgramCost { name, runs: 0, nanos: 0 });
        cost.runs += runs.parse::<u64>().unwrap_or(0);
        cost.nanos += nanos.parse::<u64>().unwrap_or(0);
    }
    let mut costs: Vec<ProgramCost> = costs.into_values().filter(|cost| cost.runs > 0).collect();
    costs.sort_by_key(|cost| std::cmp::Reverse(cost.nanos));
    costs
}

/// Program tag -> name, from the JIT's symbols.
fn program_names() -> HashMap<String, String> {
    let symbols = fs::read_to_string("/proc/kallsyms").unwrap_or_default();
    symbols
        .lines()
        .filter_map(|line| line.split_whitespace().nth(2)?.strip_prefix("bpf_prog_"))
        .filter_map(|rest| {
            let (tag, name) = rest.split_once('_')?;
            Some((tag.to_string(), name.to_string()))
        })
        .collect()
}

/// A table of the costs measured over `requests` requests: runs and microseconds per request,
/// nanoseconds per run. The system-call programs run for every process's calls (they return
/// at once for untracked ones), so their runs per request count more than the server's calls.
pub fn table(costs: &[ProgramCost], requests: u64) -> String {
    let mut out = String::new();
    let per_request = |value: u64| value as f64 / requests.max(1) as f64;
    let _ = writeln!(out, "  {:<34} {:>13} {:>12} {:>14}", "kernel program", "runs/request", "ns/run", "µs/request");
    for cost in costs {
        let _ = writeln!(
            out,
            "  {:<34} {:>13.2} {:>12.0} {:>14.2}",
            cost.name,
            per_request(cost.runs),
            cost.nanos as f64 / cost.runs.max(1) as f64,
            per_request(cost.nanos) / 1000.0
        );
    }
    let total: u64 = costs.iter().map(|cost| cost.nanos).sum();
    let _ = writeln!(out, "  {:<34} {:>13} {:>12} {:>14.2}", "all programs", "", "", per_request(total) / 1000.0);
    out
}
