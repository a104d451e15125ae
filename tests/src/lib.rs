//! End-to-end test harness: a real Datadog test agent, real target processes, and the real
//! `ddtrace-agent` binary loading the real eBPF programs. Nothing is mocked.

pub mod agent_process;
pub mod http;
pub mod target_app;
pub mod test_agent;

use std::path::PathBuf;

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Unix-epoch nanoseconds now.
pub fn unix_now_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i64
}
