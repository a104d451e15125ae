use std::io::IsTerminal;

use clap::Parser;

/// Spans are built on the event thread and freed on the writer thread: glibc's allocator
/// serialises those cross-thread frees on an arena lock (measured: ~10% of the daemon's time in
/// futex waits at 300k spans/s); mimalloc frees them without contention.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use ddtrace_agent::{cli::Cli, daemon};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            // libdatadog logs every retry; our own warning says what failed and what to do.
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,ddtrace_agent=info,libdd_data_pipeline=off,libdd_trace_utils=off".into()),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("ddtrace-agent: error: cannot start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(daemon::run(cli)) {
        Ok(_) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ddtrace-agent: error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
