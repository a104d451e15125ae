//! Project automation, run as `cargo xtask <command>` (an alias in `.cargo/config.toml`).
//!
//! - `build-ebpf`: bootstrap nightly + bpf-linker if needed, build the kernel-side object.
//! - `test`: install the Debian and Python packages the tests need if missing (as root), build
//!   everything, run the test suite.
//! - `demo`: trace a bundled SQLite app and print its spans; needs root, no Datadog account.
//! - `bench`: overhead benchmarks (uprobe cost; `--profiler`: the profiler's against py-spy;
//!   `--http`: the latency added to a Python HTTP server; `--tls`: the OpenSSL probes' cost to a
//!   process traced or not; `--sqlite`: the SQLite prepare probe's cost by placement;
//!   `--vs-ddtrace`: a Flask app alone, under ddtrace-run and with this agent; `--soak`: a
//!   sustained event rate, an overload and the recovery).
//! - `bootstrap`: only the toolchain setup that `build-ebpf` starts with.

mod bench;
mod bench_calls;
mod bench_churn;
mod bench_databases;
mod bench_go;
mod bench_http;
mod bench_probe_costs;
mod bench_profiler;
mod bench_redis;
mod bench_sink;
mod bench_soak;
mod bench_tracked_bit;
mod bench_vs_ddtrace;
mod bootstrap;
mod build_ebpf;
mod demo;
mod fuzz;
mod process;
mod system_packages;
mod test;
mod workspace;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", about = "Build, test and demo tasks for ddtrace-agent")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install what the eBPF build needs (nightly rust-src, bpf-linker), if missing.
    Bootstrap(bootstrap::BootstrapArgs),
    /// Build the kernel-side eBPF object (bootstraps the toolchain first).
    BuildEbpf(build_ebpf::BuildEbpfArgs),
    /// Install the packages the tests need, build everything and run the test suite (as root: it
    /// installs packages, and the tests load eBPF programs).
    Test(test::TestArgs),
    /// Trace a bundled Python SQLite app for a few seconds, printing spans to the console.
    Demo(demo::DemoArgs),
    /// Overhead benchmarks.
    Bench(bench::BenchArgs),
    /// The wire protocol parsers under libFuzzer (10 minutes each by default).
    Fuzz(fuzz::FuzzArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error}");
            for cause in error.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> Result<ExitCode> {
    match task {
        Task::Bootstrap(args) => bootstrap::ensure(&args).map(|_| ExitCode::SUCCESS),
        Task::BuildEbpf(args) => build_ebpf::run(&args).map(|_| ExitCode::SUCCESS),
        Task::Test(args) => test::run(&args),
        Task::Demo(args) => demo::run(&args),
        Task::Bench(args) => bench::run(&args),
        Task::Fuzz(args) => fuzz::run(&args),
    }
}
