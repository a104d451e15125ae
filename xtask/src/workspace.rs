//! Where things are in this workspace, and building the user-space agent.

use std::{
    env,
    path::{Path, PathBuf},
};

use anyhow::Result;

use crate::process::{self, step};

/// The workspace root (the parent of this xtask crate).
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives inside the workspace")
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` if set, else `<root>/target`.
pub fn target_dir() -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root().join(dir),
        None => root().join("target"),
    }
}

/// The release agent binary that [`build_agent`] produces.
fn agent_binary() -> PathBuf {
    target_dir().join("release").join("ddtrace-agent")
}

/// `cargo build --release -p ddtrace-agent`, with the toolchain that runs this xtask.
pub fn build_agent() -> Result<PathBuf> {
    let mut cmd = process::host_cargo();
    cmd.current_dir(root()).args(["build", "--release", "-p", "ddtrace-agent"]);
    step("agent", format!("building: {}", process::describe(&cmd)));
    process::run(&mut cmd)?;
    let binary = agent_binary();
    step("agent", format!("built {}", relative(&binary).display()));
    Ok(binary)
}

/// `path` relative to the workspace root when it is inside it, for shorter messages.
fn relative(path: &Path) -> &Path {
    path.strip_prefix(root()).unwrap_or(path)
}

/// Bootstraps the toolchain, builds the eBPF object and the release agent; returns the agent.
pub fn build_everything() -> Result<PathBuf> {
    let toolchain = crate::bootstrap::ensure(&crate::bootstrap::BootstrapArgs { bpf_linker_root: None })?;
    crate::build_ebpf::build(&toolchain, true)?;
    build_agent()
}
