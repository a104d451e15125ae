use std::sync::{atomic::Ordering, Arc};

use rustc_hash::FxHashMap as HashMap;

use super::{
    policy::{DropCounters, SharedPolicy},
    sampler,
    span_builder::SpanBuilder,
    writer::ChunkSender,
};
use crate::{
    core::ExecutionContext,
    intake::traces::{Span, TraceChunk},
};

/// Holds the spans of unfinished local trees; when a tree's root ends, its chunk (root first)
/// goes to the writer. Children always end before their root (core guarantees it per thread).
///
/// The policy is applied here: nothing is built while tracing is disabled, and the sample rate
/// decides on the local root whether the chunk is sent (kept) or only counted (dropped).
pub struct TraceAggregator {
    builder: SpanBuilder,
    /// root context id -> finished descendants.
    pending: HashMap<u64, Vec<Span>>,
    out: ChunkSender,
    policy: SharedPolicy,
    /// The policy version `builder`'s tags come from.
    policy_version: Option<u64>,
    drops: Arc<DropCounters>,
}

impl TraceAggregator {
    pub fn new(builder: SpanBuilder, out: ChunkSender, policy: SharedPolicy, drops: Arc<DropCounters>) -> Self {
        Self { builder, pending: HashMap::default(), out, policy, policy_version: None, drops }
    }

    pub fn on_context_ended(&mut self, context: &ExecutionContext) {
        let identity = self.builder.identity(context.tgid);
        // A process's service may have settings of its own (node mode's remote configuration).
        let service = identity.as_ref().map(|id| (id.service.as_str(), id.env.as_deref()));
        let (enabled, sample_rate) = self.policy.read(service, context.end_unix_ns, |version, settings| {
            if self.policy_version != Some(version) {
                self.builder.set_tags(settings.tags.value.clone());
                self.policy_version = Some(version);
            }
            (settings.enabled.value, settings.sample_rate.value)
        });
        if !enabled {
            self.drops.while_disabled.fetch_add(1, Ordering::Relaxed);
            if context.is_root() {
                self.pending.remove(&context.id);
            }
            return;
        }
        if identity.is_none() && self.builder.excludes(context.tgid) {
            self.drops.unidentified.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let span = self.builder.build(context);
        if !context.is_root() {
            self.pending.entry(context.root_id).or_default().push(span);
            return;
        }
        let mut spans = vec![span];
        if let Some(children) = self.pending.remove(&context.id) {
            spans.extend(children);
        }
        // A caller that propagated its sampling decision made it for the whole trace: a
        // service in the middle keeps it rather than deciding again.
        let decided_upstream = spans[0].metrics.contains_key("_sampling_priority_v1");
        if let Some(rate) = sample_rate.filter(|_| !decided_upstream) {
            if !sampler::keeps(context.trace_id, rate) {
                self.drops.sampled_out.fetch_add(1, Ordering::Relaxed);
                return;
            }
            // The product's decision: the exporter keeps a priority that is already set.
            let root = &mut spans[0];
            root.metrics.insert("_sampling_priority_v1".into(), sampler::PRIORITY_KEEP);
            root.metrics.insert("_dd.rule_psr".into(), rate);
            root.meta.insert("_dd.p.dm".into(), sampler::DECISION_MAKER_RULE.into());
        }
        // What the Datadog agent tags the chunk with: the container of the process it came from.
        let container_id = identity.and_then(|id| id.container_id.clone());
        self.out.send(TraceChunk { spans, container_id });
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
        let mut aggregator = TraceAggregator::new(
            SpanBuilder::new(TraceTags::default()),
            writer.sender(),
            SharedPolicy::default(),
            Arc::default(),
        );
        aggregator.on_context_ended(&context(3, 2, 1));
        aggregator.on_context_ended(&context(2, 1, 1));
        assert_eq!(aggregator.pending.len(), 1, "held until the root ends");
        aggregator.on_context_ended(&context(1, 0, 1));
        assert!(aggregator.pending.is_empty());
        writer.shutdown(std::time::Duration::from_secs(5));
        let sent = sent.lock().unwrap();
        let chunk = &sent[0];
        assert_eq!(chunk.spans.iter().map(|s| s.span_id).collect::<Vec<_>>(), vec![1, 3, 2]);
        // No rate configured: no sampling decision here (the exporter marks it auto keep).
        assert!(!chunk.spans[0].metrics.contains_key("_sampling_priority_v1"));
    }

    fn traced(trace_id: u128, id: u64) -> ExecutionContext {
        ExecutionContext { trace_id, ..context(id, 0, id) }
    }

    #[test]
    fn sample_rate_keeps_marks_and_drops_and_disabled_builds_nothing() {
        use crate::config::{Origin, Setting};
        use crate::products::tracing::TracingSettings;
        let sent = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let writer = crate::products::tracing::TraceWriter::spawn(
            Box::new(Collect(sent.clone())),
            std::time::Duration::from_secs(3600),
        )
        .unwrap();
        let policy = SharedPolicy::new(TracingSettings {
            sample_rate: Setting { value: Some(0.5), origin: Origin::TargetEnvironment },
            tags: Setting { value: vec![("team".into(), "db".into())], origin: Origin::TargetEnvironment },
            ..Default::default()
        });
        let drops = Arc::new(DropCounters::default());
        let mut aggregator = TraceAggregator::new(
            SpanBuilder::new(TraceTags::default()),
            writer.sender(),
            policy.clone(),
            drops.clone(),
        );
        let ids: Vec<u128> = (1..=200u128).map(|i| i * 0x9e37_79b9_7f4a_7c15).collect();
        for (i, id) in ids.iter().enumerate() {
            aggregator.on_context_ended(&traced(*id, i as u64 + 1));
        }
        let kept: Vec<u128> = ids.iter().copied().filter(|id| sampler::keeps(*id, 0.5)).collect();
        assert!(!kept.is_empty() && kept.len() < ids.len());
        assert_eq!(drops.sampled_out() as usize, ids.len() - kept.len());

        // Switched off (as remote configuration does): nothing is built or sent; on again: sent,
        // with the new tags. A span that ended before "on" arrived was still off.
        let mut settings = policy.get();
        settings.enabled = Setting { value: false, origin: Origin::RemoteConfig };
        policy.set_at(settings.clone(), 0);
        aggregator.on_context_ended(&traced(kept[0], 1000));
        assert_eq!(drops.while_disabled(), 1);
        settings.enabled = Setting { value: true, origin: Origin::RemoteConfig };
        settings.sample_rate.value = None;
        settings.tags.value = vec![("team".into(), "payments".into())];
        policy.set_at(settings, 10);
        aggregator.on_context_ended(&ExecutionContext { end_unix_ns: 5, ..traced(kept[1], 1002) });
        assert_eq!(drops.while_disabled(), 2);
        aggregator.on_context_ended(&ExecutionContext { end_unix_ns: 11, ..traced(7, 1001) });

        writer.shutdown(std::time::Duration::from_secs(5));
        let sent = sent.lock().unwrap();
        assert_eq!(sent.len(), kept.len() + 1);
        for (chunk, id) in sent.iter().zip(&kept) {
            let root = &chunk.spans[0];
            assert_eq!(root.trace_id, *id);
            assert_eq!(root.metrics["_sampling_priority_v1"], 1.0);
            assert_eq!(root.metrics["_dd.rule_psr"], 0.5);
            assert_eq!(root.meta["_dd.p.dm"], "-3");
            assert_eq!(root.meta["team"], "db");
        }
        let last = &sent.last().unwrap().spans[0];
        assert_eq!((last.span_id, last.meta["team"].as_ref()), (1001, "payments"));
        assert!(!last.metrics.contains_key("_dd.rule_psr"));
    }

    #[test]
    fn a_decision_propagated_by_the_caller_is_kept_over_the_local_rate() {
        use crate::config::{Origin, Setting};
        use crate::products::tracing::TracingSettings;
        let sent = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let writer = crate::products::tracing::TraceWriter::spawn(
            Box::new(Collect(sent.clone())),
            std::time::Duration::from_secs(3600),
        )
        .unwrap();
        // A local rate of 0 would drop every trace this service starts...
        let policy = SharedPolicy::new(TracingSettings {
            sample_rate: Setting { value: Some(0.0), origin: Origin::TargetEnvironment },
            ..Default::default()
        });
        let drops = Arc::new(DropCounters::default());
        let mut aggregator =
            TraceAggregator::new(SpanBuilder::new(TraceTags::default()), writer.sender(), policy, drops.clone());
        // ...but this one continues a caller that kept it (user keep, 2).
        let mut continued = traced(99, 5);
        continued.data.metrics.insert("_sampling_priority_v1".into(), 2.0);
        aggregator.on_context_ended(&continued);
        aggregator.on_context_ended(&traced(98, 6));
        writer.shutdown(std::time::Duration::from_secs(5));
        let sent = sent.lock().unwrap();
        assert_eq!(sent.len(), 1);
        let root = &sent[0].spans[0];
        assert_eq!((root.span_id, root.metrics["_sampling_priority_v1"]), (5, 2.0));
        assert!(!root.metrics.contains_key("_dd.rule_psr"));
        assert_eq!(drops.sampled_out(), 1);
    }
}
