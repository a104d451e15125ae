//! `cargo xtask bench`: overhead benchmarks of instrumented vs. plain applications (to be written).

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

/// `cargo xtask bench` options; the benchmark's own flags will go here.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Arguments for the benchmark (ignored until it exists).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

pub fn run(_args: &BenchArgs) -> Result<ExitCode> {
    eprintln!("bench: not yet implemented");
    Ok(ExitCode::from(2))
}
