//! `cargo xtask fuzz`: each wire protocol's parser under libFuzzer (cargo-fuzz, on the nightly,
//! with the address sanitizer), for a time each. The inputs are one connection's traffic
//! (`integrations::streams::replay`: its first message makes the protocol recognise it, then
//! segments in both directions with uncaptured gaps and reconnections). Corpora live in
//! `ddtrace-agent/fuzz/corpus/<target>` (committed: each run starts from what the last found);
//! a crash stops the run with libFuzzer's report and the input in `.../artifacts/<target>`.

use std::process::{Command, ExitCode};

use anyhow::{Context, Result};
use clap::Args;

use crate::{
    bootstrap::{self, BootstrapArgs},
    process::{self, find_in_path, step},
    workspace,
};

/// The fuzz targets, one per wire protocol.
const TARGETS: [&str; 4] = ["http", "postgresql", "mysql", "redis"];
const FUZZ_DIR: &str = "ddtrace-agent/fuzz";

#[derive(Debug, Args)]
pub struct FuzzArgs {
    /// Seconds per target (the bar: 10 minutes per parser).
    #[arg(long, default_value_t = 600)]
    pub seconds: u64,
    /// Only these targets (default: all of http, postgresql, mysql, redis).
    pub targets: Vec<String>,
}

pub fn run(args: &FuzzArgs) -> Result<ExitCode> {
    let toolchain = bootstrap::ensure(&BootstrapArgs { bpf_linker_root: None })?;
    if find_in_path("cargo-fuzz").is_none() {
        let mut install = Command::new("cargo");
        install.args(["install", "cargo-fuzz", "--locked"]);
        step("fuzz", format!("cargo-fuzz: missing, installing: {}", process::describe(&install)));
        process::run(&mut install).context("installing cargo-fuzz failed")?;
    }
    let targets: Vec<&str> =
        if args.targets.is_empty() { TARGETS.to_vec() } else { args.targets.iter().map(String::as_str).collect() };
    let directory = workspace::root().join(FUZZ_DIR);
    for target in targets {
        if !TARGETS.contains(&target) {
            anyhow::bail!("no fuzz target {target}: the targets are {}", TARGETS.join(", "));
        }
        let corpus = directory.join("corpus").join(target);
        std::fs::create_dir_all(&corpus)?;
        let mut fuzz = toolchain.nightly("cargo");
        fuzz.current_dir(&directory).args(["fuzz", "run", "--release", target]).arg(&corpus).args([
            "--",
            &format!("-max_total_time={}", args.seconds),
            "-max_len=4096",
            "-print_final_stats=1",
        ]);
        step("fuzz", format!("{target} for {} s: {}", args.seconds, process::describe(&fuzz)));
        let status = process::status(&mut fuzz)?;
        if !status.success() {
            step(
                "fuzz",
                format!(
                    "{target}: libFuzzer found a failure ({status}); the input is in {FUZZ_DIR}/artifacts/{target}"
                ),
            );
            return Ok(ExitCode::FAILURE);
        }
        step("fuzz", format!("{target}: no failure in {} s", args.seconds));
    }
    Ok(ExitCode::SUCCESS)
}
