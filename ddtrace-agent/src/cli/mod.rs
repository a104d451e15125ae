//! Command-line flags. `DD_*` environment variables are resolved in `config`, which also reads
//! the target's own environment and records where each value came from.

use clap::Parser;

use crate::config::{parse_frequency, parse_interval, parse_rate, ExporterKind};

/// Traces an unmodified, running process with eBPF and sends its traces to Datadog.
#[derive(Debug, Parser)]
#[command(name = "ddtrace-agent", about, long_about = None, disable_version_flag = true)]
pub struct Cli {
    /// The process to instrument (with the children it has and will have).
    #[arg(long, required_unless_present = "node", conflicts_with = "node")]
    pub pid: Option<u32>,

    /// Node mode: trace every selected process on this host, those running now and those started
    /// later, until stopped. Selected: processes whose environment sets DD_SERVICE, and those the
    /// --select-* flags add. Each is reported under its own DD_SERVICE, DD_ENV, DD_VERSION and
    /// DD_TAGS, with its container.
    #[arg(long)]
    pub node: bool,

    /// Node mode: also trace processes whose executable's file name matches GLOB (`*` and `?`),
    /// e.g. `--select-exe 'gunicorn*'`. Repeatable.
    #[arg(long = "select-exe", value_name = "GLOB", requires = "node")]
    pub select_executables: Vec<String>,

    /// Node mode: trace every user process (kernel threads, the Datadog agent and processes with
    /// an in-process Datadog tracer are still left alone).
    #[arg(long, requires = "node")]
    pub select_all: bool,

    /// Node mode: where Datadog's stable configuration files are (application_monitoring.yaml,
    /// and the fleet-managed one under managed/datadog-agent/stable/). A process they give a
    /// DD_SERVICE is selected; what they set is each process's configuration (fleet over its
    /// environment over local).
    #[arg(long, value_name = "DIR", default_value = "/etc/datadog-agent", requires = "node")]
    pub stable_config_dir: std::path::PathBuf,

    /// Service name (default: DD_SERVICE of the target or of this daemon, else inferred from the target).
    #[arg(long)]
    pub service: Option<String>,

    /// Environment, e.g. prod (default: DD_ENV).
    #[arg(long)]
    pub env: Option<String>,

    /// Version of the traced application (default: DD_VERSION).
    #[arg(long)]
    pub version: Option<String>,

    /// Datadog agent URL (default: DD_TRACE_AGENT_URL, else DD_AGENT_HOST/DD_TRACE_AGENT_PORT, else http://localhost:8126).
    #[arg(long)]
    pub agent_url: Option<String>,

    /// Where traces go: the Datadog agent, or the console (needs no Datadog account).
    #[arg(long, value_enum, default_value = "datadog")]
    pub exporter: ExporterKind,

    /// Whether to trace (default: DD_TRACE_ENABLED, else true).
    #[arg(long, value_name = "BOOL", value_parser = clap::builder::BoolishValueParser::new())]
    pub trace_enabled: Option<bool>,

    /// Share of traces kept, 0 to 1, decided per trace (default: DD_TRACE_SAMPLE_RATE, else all).
    #[arg(long, value_name = "RATE", value_parser = parse_rate_flag)]
    pub trace_sample_rate: Option<f64>,

    /// Whether the kernel records the Python frames of the code that makes a statement or an
    /// outbound request (which library made a call, which view served a request).
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub python_callers: bool,

    /// Whether to profile CPU (default: DD_PROFILING_ENABLED, else true).
    #[arg(long, value_name = "BOOL", value_parser = clap::builder::BoolishValueParser::new())]
    pub profiling_enabled: Option<bool>,

    /// CPU samples per second of each thread's CPU time, 1-1000 (default: DD_PROFILING_SAMPLING_FREQUENCY, else 100).
    #[arg(long, value_name = "HZ", value_parser = parse_frequency_flag)]
    pub profiling_frequency: Option<u32>,

    /// Also write the whole run's CPU profile to FILE at exit: a flame graph if FILE ends in .svg
    /// (open it in a browser), else a pprof file (go tool pprof -http=: FILE). Needs no agent.
    #[arg(long, value_name = "FILE")]
    pub profile_output: Option<std::path::PathBuf>,

    /// Seconds between remote configuration polls (default: DD_REMOTE_CONFIG_POLL_INTERVAL_SECONDS, else 5).
    #[arg(long, value_name = "SECONDS", value_parser = parse_interval_flag, hide = true)]
    pub remote_config_poll_interval: Option<f64>,

    /// Trace calls of a function by symbol: FILE:SYMBOL (FILE as the target sees it, or a file
    /// name the target maps). Repeatable. Spans are named `trace.annotation`, as with DD_TRACE_METHODS.
    #[arg(long = "trace-function", value_name = "FILE:SYMBOL")]
    pub trace_functions: Vec<String>,

    /// Where the OpenSSL probes go: `auto`, the internal functions that every read and write
    /// calls (fewer and much cheaper probes) when the library's code shows them, else the
    /// exported ones; `exported`, always SSL_read, SSL_write and their _ex forms.
    #[arg(long, value_enum, default_value = "auto")]
    pub openssl_probes: crate::integrations::ProbePlacement,

    /// Which processes a uprobe covers: `global` (default), one link per library file for every
    /// process mapping it, the kernel letting only traced processes' calls through (children are
    /// traced from their first instruction, at any fork and exit rate; other processes trap and
    /// return); `process`, links per traced process (other processes never trap; each new process
    /// misses its first ~25-100 ms and each exit costs the kernel ~100 ms per link).
    #[arg(long, value_enum, default_value = "global")]
    pub probe_scope: crate::probes::ProbeScope,

    /// Where the SQLite probes go: `auto`, the one function the prepare forms call when the
    /// library's code shows it (their own first instruction would be single-stepped), else the
    /// exported functions; `exported`, always sqlite3_prepare, _v2 and _v3.
    #[arg(long, value_enum, default_value = "auto")]
    pub sqlite_probes: crate::integrations::ProbePlacement,

    /// Print the kernel and pipeline counters every N seconds (they are always printed at exit),
    /// and each probe site with its first instruction and whether the kernel emulates it.
    #[arg(long, value_name = "SECONDS")]
    pub stats: Option<u64>,

    /// Benchmark baseline only: attach the empty programs to FILE:SYMBOL and trace nothing.
    #[arg(long, value_name = "FILE:SYMBOL", hide = true)]
    pub bench_empty_probes: Option<String>,
}

fn parse_rate_flag(text: &str) -> Result<f64, String> {
    parse_rate(text).ok_or_else(|| format!("{text:?} is not a sample rate: give a number from 0 to 1"))
}

fn parse_frequency_flag(text: &str) -> Result<u32, String> {
    parse_frequency(text).ok_or_else(|| format!("{text:?} is not a sampling frequency: give Hz, from 1 to 1000"))
}

fn parse_interval_flag(text: &str) -> Result<f64, String> {
    parse_interval(text).ok_or_else(|| format!("{text:?} is not an interval: give seconds, more than 0, at most 3600"))
}
