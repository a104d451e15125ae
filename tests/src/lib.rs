//! End-to-end test harness: a real Datadog test agent, real target processes, and the real
//! `ddtrace-agent` binary loading the real eBPF programs. Nothing is mocked.

pub mod agent_process;
pub mod breakpoints;
pub mod chart;
pub mod container;
pub mod http;
pub mod mysql_server;
pub mod native_app;
pub mod nginx;
pub mod postgres_server;
pub mod profiles;
pub mod redis_server;
pub mod target_app;
pub mod telemetry;
pub mod test_agent;
pub mod tls;

use std::path::PathBuf;

/// End-to-end tests take this lock so they run one at a time: each starts Python processes
/// and a test agent, and timing goals (100 ms to instrument a library) are asserted on a
/// machine with 2 cores.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Unix-epoch nanoseconds now.
pub fn unix_now_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i64
}

/// The spans whose resource starts with `prefix`.
pub fn with_resource<'a>(spans: &'a [serde_json::Value], prefix: &str) -> Vec<&'a serde_json::Value> {
    spans.iter().filter(|s| s["resource"].as_str().unwrap_or("").starts_with(prefix)).collect()
}

/// The live children of process `pid` (from `/proc/<pid>/task/*/children`).
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("children")).ok())
        .flat_map(|children| children.split_whitespace().filter_map(|c| c.parse().ok()).collect::<Vec<u32>>())
        .collect()
}
