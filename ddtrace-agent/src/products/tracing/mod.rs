//! The tracing product: ended execution contexts become spans, grouped into trace chunks when
//! their local root ends, and flushed to a trace sink every second and at exit.

mod aggregator;
mod span_builder;
mod writer;

use std::time::Duration;

pub use aggregator::TraceAggregator;
pub use span_builder::{SpanBuilder, TraceTags};
pub use writer::{TraceWriter, WriterStats};

use super::{Product, ProductError};
use crate::{
    core::{CoreEvent, EventHub},
    intake::TraceSink,
};

/// How often finished traces are sent.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// The longest `at_exit` waits for the last send.
pub const EXIT_FLUSH_DEADLINE: Duration = Duration::from_secs(5);

pub struct TracingProduct {
    tags: TraceTags,
    sink: Option<Box<dyn TraceSink>>,
    writer: Option<TraceWriter>,
}

impl TracingProduct {
    pub fn new(tags: TraceTags, sink: Box<dyn TraceSink>) -> Self {
        Self { tags, sink: Some(sink), writer: None }
    }

    /// Sends what is buffered (waiting at most `EXIT_FLUSH_DEADLINE` when `join`) and closes the
    /// writer; chunks that still arrive are dropped and counted.
    fn flush_and_close(&mut self, join: bool, when: &'static str) {
        if let Some(writer) = self.writer.take() {
            let stats = writer.shutdown(if join { EXIT_FLUSH_DEADLINE } else { Duration::ZERO });
            tracing::info!(
                sent_chunks = stats.sent_chunks,
                sent_spans = stats.sent_spans,
                failed_chunks = stats.failed_chunks,
                dropped_chunks = stats.dropped_chunks,
                "tracing: flushed {when}"
            );
        }
    }
}

impl Product for TracingProduct {
    fn name(&self) -> &'static str {
        "tracing"
    }

    fn start(&mut self, hub: &mut EventHub) -> Result<(), ProductError> {
        let sink =
            self.sink.take().ok_or(ProductError::Start { product: "tracing", reason: "already started".into() })?;
        let writer = TraceWriter::spawn(sink, FLUSH_INTERVAL)
            .map_err(|e| ProductError::Start { product: "tracing", reason: e.to_string() })?;
        let mut aggregator = TraceAggregator::new(SpanBuilder::new(self.tags.clone()), writer.sender());
        hub.on("context.ended", move |event| {
            if let CoreEvent::ContextEnded(context) = event {
                aggregator.on_context_ended(context);
            }
        });
        self.writer = Some(writer);
        Ok(())
    }

    /// The daemon does not fork when the target does: the writer and the hub subscription keep
    /// serving the child's spans as they are.
    fn restart(&mut self, _join: bool) -> Result<(), ProductError> {
        Ok(())
    }

    fn stop(&mut self, join: bool) -> Result<(), ProductError> {
        self.flush_and_close(join, "on stop");
        Ok(())
    }

    fn at_exit(&mut self, join: bool) -> Result<(), ProductError> {
        self.flush_and_close(join, "at exit");
        Ok(())
    }

    /// Nothing waits for the probes: spans start flowing as soon as they fire.
    fn post_preload(&mut self) -> Result<(), ProductError> {
        Ok(())
    }
}
