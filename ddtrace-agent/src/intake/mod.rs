//! Intake: getting finished telemetry out of the daemon.
//!
//! This layer owns the payload model handed over by the products ([`traces::Span`],
//! [`traces::TraceChunk`]) and the sinks that deliver it: the Datadog agent
//! ([`agent_exporter::AgentExporter`], through libdatadog's trace exporter) and the console
//! ([`console_exporter::ConsoleExporter`], to inspect traces without an agent). It knows
//! nothing of integrations or of how spans were built.

pub mod agent_exporter;
mod blocking;
pub mod console_exporter;
pub mod container_headers;
pub mod identity;
pub mod profile_exporter;
pub mod remote_config;
pub mod telemetry;
pub mod traces;

/// Where finished trace chunks go. Implementations must not block the event pipeline for long;
/// `send` is called from a dedicated flush thread.
pub trait TraceSink: Send {
    /// Delivers `chunks`. On error the chunks are lost: the caller counts them and moves on.
    fn send(&mut self, chunks: Vec<traces::TraceChunk>) -> Result<(), IntakeError>;

    /// Called once at shutdown, after the last send.
    fn shutdown(&mut self) -> Result<(), IntakeError> {
        Ok(())
    }
}

/// What can go wrong while delivering data, phrased for the person running the daemon.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// The agent URL could not be used to build an exporter.
    #[error(
        "the Datadog agent URL {url:?} is not usable: {reason}; pass a URL such as \
         http://localhost:8126 or unix:///var/run/datadog/apm.socket with --agent-url / \
         DD_TRACE_AGENT_URL"
    )]
    InvalidAgentUrl { url: String, reason: String },

    /// libdatadog refused to build the trace exporter for another reason.
    #[error("could not set up the trace exporter for the Datadog agent at {url}: {reason}")]
    ExporterSetup { url: String, reason: String },

    /// Nothing answered at the agent URL (connection refused, timeout, DNS...).
    #[error(
        "the Datadog agent at {url} is unreachable: {reason}; start it or pass --agent-url / \
         DD_TRACE_AGENT_URL"
    )]
    AgentUnreachable { url: String, reason: String },

    /// The agent answered with an HTTP error status.
    #[error(
        "the Datadog agent at {url} rejected {chunks} trace chunk(s) with HTTP {status}: \
         {body}; check the agent's logs (and its version: the v0.4 trace endpoint is required)"
    )]
    AgentRejected { url: String, chunks: usize, status: u16, body: String },

    /// Anything else the exporter reported while sending (serialization, internal state).
    #[error("sending {chunks} trace chunk(s) to the Datadog agent at {url} failed: {reason}")]
    SendFailed { url: String, chunks: usize, reason: String },

    /// Stopping the exporter's background workers did not finish cleanly.
    #[error("shutting down the trace exporter for {url} failed: {reason}; some data may be lost")]
    Shutdown { url: String, reason: String },

    /// Writing to a local output (console sink) failed.
    #[error("writing traces to {target} failed: {source}; check that the output is still open")]
    Write {
        target: &'static str,
        #[source]
        source: std::io::Error,
    },
}
