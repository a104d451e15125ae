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

}

impl Product for TracingProduct {
    fn name(&self) -> &'static str {
        "tracing"
    }

    fn start(&mut self, hub: &mut EventHub) -> Result<(), ProductError> {
        let sink = self.sink.take().ok_or(ProductError::Start { product: "tracing", reason: "already started".into() })?;
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

    fn at_exit(&mut self, join: bool) {
        if let Some(writer) = self.writer.take() {
            let stats = writer.shutdown(if join { EXIT_FLUSH_DEADLINE } else { Duration::ZERO });
            tracing::info!(
                sent_chunks = stats.sent_chunks,
                sent_spans = stats.sent_spans,
                failed_chunks = stats.failed_chunks,
                dropped_chunks = stats.dropped_chunks,
                "tracing: flushed at exit"
            );
        }
    }
}
