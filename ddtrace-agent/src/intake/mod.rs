//! Intake: getting finished telemetry out of the daemon.
//!
//! This layer owns the payload model handed over by the products ([`traces::Span`],
//! [`traces::TraceChunk`]) and the sinks that deliver it: the Datadog agent
//! ([`agent_exporter::AgentExporter`]: v0.4 msgpack sent with libdatadog) and the console
//! ([`console_exporter::ConsoleExporter`], to inspect traces without an agent). It knows
//! nothing of integrations or of how spans were built.

pub mod agent_exporter;
mod agent_http;
mod blocking;
pub mod console_exporter;
pub mod container_headers;
pub mod identity;
pub mod msgpack_v04;
pub mod profile_exporter;
pub mod remote_config;
pub mod telemetry;
pub mod traces;

/// Where finished trace chunks go. Implementations must not block the event pipeline for long;
/// `send` is called from a dedicated flush thread.
pub trait TraceSink: Send {
    /// Delivers `chunks`. On error the chunks are lost: the caller counts them and moves on.
    fn send(&mut self, chunks: Vec<traces::TraceChunk>) -> Result<(), IntakeError>;

    /// The sink's wire format when it has one: chunks are then encoded on the thread that
    /// finishes them (no span object crosses threads) and handed to
    /// [`send_encoded`](Self::send_encoded) as payloads.
    fn wire_format(&self) -> Option<msgpack_v04::V04Encoder> {
        None
    }

    /// Delivers a payload encoded with [`wire_format`](Self::wire_format) and finished.
    fn send_encoded(&mut self, payload: EncodedPayload) -> Result<(), IntakeError> {
        Err(IntakeError::SendFailed {
            url: String::new(),
            chunks: payload.chunks,
            reason: "this sink has no wire format".to_owned(),
        })
    }

    /// Called once at shutdown, after the last send.
    fn shutdown(&mut self) -> Result<(), IntakeError> {
        Ok(())
    }
}

/// Trace chunks of one container, encoded in a sink's wire format.
#[derive(Debug, Default)]
pub struct EncodedPayload {
    /// The container of the processes the spans come from (`Datadog-Container-ID`).
    pub container_id: Option<String>,
    pub bytes: Vec<u8>,
    pub chunks: usize,
    pub spans: usize,
}

impl EncodedPayload {
    /// The index in `payloads` of the one for `chunk`'s container, a new one (its buffer
    /// starting at `capacity`) started at the end when there is none.
    pub fn index_for(
        payloads: &mut Vec<EncodedPayload>,
        chunk: &traces::TraceChunk,
        encoder: &msgpack_v04::V04Encoder,
        capacity: usize,
    ) -> usize {
        let container = chunk.container_id.as_deref();
        if let Some(at) = payloads.iter().position(|p| p.container_id.as_deref() == container) {
            return at;
        }
        let mut payload = Self {
            container_id: chunk.container_id.clone(),
            bytes: Vec::with_capacity(capacity),
            ..Default::default()
        };
        encoder.start(&mut payload.bytes);
        payloads.push(payload);
        payloads.len() - 1
    }

    pub fn append(&mut self, encoder: &msgpack_v04::V04Encoder, chunk: &traces::TraceChunk) {
        encoder.append(chunk, &mut self.bytes);
        self.chunks += 1;
        self.spans += chunk.spans.len();
    }

    /// Ready to send: the header says how many traces follow.
    pub fn finish(&mut self, encoder: &msgpack_v04::V04Encoder) {
        encoder.finish(&mut self.bytes, self.chunks);
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

    /// The trace sender could not be set up (its runtime did not start).
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

    /// Writing to a local output (console sink) failed.
    #[error("writing traces to {target} failed: {source}; check that the output is still open")]
    Write {
        target: &'static str,
        #[source]
        source: std::io::Error,
    },
}
