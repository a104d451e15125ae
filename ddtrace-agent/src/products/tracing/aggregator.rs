use std::collections::HashMap;

use super::{span_builder::SpanBuilder, writer::ChunkSender};
use crate::{
    core::ExecutionContext,
    intake::traces::{Span, TraceChunk},
};

/// Holds the spans of unfinished local trees; when a tree's root ends, its chunk (root first)
/// goes to the writer. Children always end before their root (core guarantees it per thread).
pub struct TraceAggregator {
    builder: SpanBuilder,
    /// root context id -> finished descendants.
    pending: HashMap<u64, Vec<Span>>,
    out: ChunkSender,
}

impl TraceAggregator {
    pub fn new(builder: SpanBuilder, out: ChunkSender) -> Self {
        Self { builder, pending: HashMap::new(), out }
    }

    pub fn on_context_ended(&mut self, context: &ExecutionContext) {
        let span = self.builder.build(context);
        if !context.is_root() {
            self.pending.entry(context.root_id).or_default().push(span);
            return;
        }
        let mut spans = vec![span];
        if let Some(children) = self.pending.remove(&context.id) {
            spans.extend(children);
        }
        self.out.send(TraceChunk { spans });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        core::{ContextData, SpanKind},
        products::tracing::TraceTags,
    };

    fn context(id: u64, parent_id: u64, root_id: u64) -> ExecutionContext {
        ExecutionContext {
            id,
            trace_id: 77,
            parent_id,
            root_id,
            tgid: 1,
            tid: 1,
            start_unix_ns: 0,
            end_unix_ns: 1,
            data: ContextData::new("op", "test", "custom", SpanKind::Internal),
        }
    }

    struct Collect(std::sync::Arc<std::sync::Mutex<Vec<TraceChunk>>>);
    impl crate::intake::TraceSink for Collect {
        fn send(&mut self, chunks: Vec<TraceChunk>) -> Result<(), crate::intake::IntakeError> {
            self.0.lock().unwrap().extend(chunks);
            Ok(())
        }
    }

    #[test]
    fn chunk_is_sent_when_the_root_ends_with_the_root_first() {
        let sent = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let writer = crate::products::tracing::TraceWriter::spawn(
            Box::new(Collect(sent.clone())),
            std::time::Duration::from_secs(3600),
        )
        .unwrap();
        let mut aggregator = TraceAggregator::new(SpanBuilder::new(TraceTags::default()), writer.sender());
        aggregator.on_context_ended(&context(3, 2, 1));
        aggregator.on_context_ended(&context(2, 1, 1));
        assert_eq!(aggregator.pending.len(), 1, "held until the root ends");
        aggregator.on_context_ended(&context(1, 0, 1));
        assert!(aggregator.pending.is_empty());
        writer.shutdown(std::time::Duration::from_secs(5));
        let sent = sent.lock().unwrap();
        let chunk = &sent[0];
        assert_eq!(chunk.spans.iter().map(|s| s.span_id).collect::<Vec<_>>(), vec![1, 3, 2]);
    }
}
