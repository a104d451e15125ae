use std::{borrow::Cow, sync::Arc};

use crate::{
    core::{ExecutionContext, Identities, ProcessIdentity},
    intake::traces::{Span, TagMap, TagValue},
};

/// Tags every span of this daemon's traces carries (unified service tagging and `DD_TAGS`), for
/// processes with no identity of their own (see [`Identities`]).
#[derive(Debug, Clone, Default)]
pub struct TraceTags {
    pub service: String,
    pub env: Option<String>,
    pub version: Option<String>,
    pub tags: Vec<(String, String)>,
    /// Client spans get `peer.service` from their `db.name`, else `out.host`, as dd-trace-py's
    /// peer service processor does (`DD_TRACE_PEER_SERVICE_DEFAULTS_ENABLED`, or schema v1).
    pub peer_service: bool,
}

/// Where dd-trace-py takes a client span's `peer.service` from, in order.
const PEER_SERVICE_SOURCES: [&str; 2] = ["db.name", "out.host"];

/// Turns an ended execution context into a span. Generic: it reads only core's context shape.
pub struct SpanBuilder {
    tags: TraceTags,
    identities: Identities,
    /// The last answer of `identities` (generation, process, identity): consecutive spans are
    /// mostly of one process, and the registry rarely changes between them.
    last: std::cell::RefCell<Option<LastIdentity>>,
}

/// (registry generation, process, its identity).
type LastIdentity = (u64, u32, Option<Arc<ProcessIdentity>>);

impl SpanBuilder {
    pub fn new(tags: TraceTags) -> Self {
        Self { tags, identities: Identities::default(), last: Default::default() }
    }

    /// Spans of a process with an identity take its service, env, version, tags and runtime id.
    pub fn with_identities(mut self, identities: Identities) -> Self {
        self.identities = identities;
        self
    }

    /// Whether spans of process `tgid` must not be built: identities are required (node mode)
    /// and it has none (a process tracked at its exec that the daemon then refused).
    pub fn excludes(&self, tgid: u32) -> bool {
        self.identities.are_required() && self.identity(tgid).is_none()
    }

    /// The identity of process `tgid`, if it has its own.
    pub fn identity(&self, tgid: u32) -> Option<Arc<ProcessIdentity>> {
        let generation = self.identities.generation();
        if let Some((seen, pid, identity)) = &*self.last.borrow() {
            if *seen == generation && *pid == tgid {
                return identity.clone();
            }
        }
        let identity = self.identities.get(tgid);
        *self.last.borrow_mut() = Some((generation, tgid, identity.clone()));
        identity
    }

    /// Replaces the `DD_TAGS`-like tags (e.g. remote configuration's `tracing_tags`).
    pub fn set_tags(&mut self, tags: Vec<(String, String)>) {
        self.tags.tags = tags;
    }

    pub fn build(&self, context: &ExecutionContext) -> Span {
        let data = &context.data;
        let identity = self.identity(context.tgid);
        let (service, env, version) = match &identity {
            Some(id) => (&id.service, &id.env, &id.version),
            None => (&self.tags.service, &self.tags.env, &self.tags.version),
        };
        // The policy's tags (DD_TAGS, or remote configuration's), then the process's own.
        let owned = |(k, v): &(String, String)| (Cow::Owned(k.clone()), TagValue::Owned(v.clone()));
        let own_tags = identity.as_ref().map_or(0, |id| id.tags.len());
        // What is always there, plus room for what the product may add (error, base service).
        let capacity = self.tags.tags.len() + own_tags + data.meta.len() + 6;
        let mut meta: TagMap<TagValue> = TagMap::with_capacity(capacity);
        meta.extend(self.tags.tags.iter().map(owned));
        if let Some(id) = &identity {
            meta.extend(id.tags.iter().map(owned));
        }
        if let Some(env) = env {
            meta.insert("env".into(), env.clone().into());
        }
        if let Some(version) = version {
            meta.insert("version".into(), version.clone().into());
        }
        meta.insert("component".into(), data.component.into());
        meta.insert("span.kind".into(), data.kind.as_str().into());
        meta.extend(data.meta.iter().map(|(k, v)| (k.clone(), TagValue::Owned(v.clone()))));
        let mut metrics = data.metrics.clone();
        if context.is_root() {
            metrics.insert("process_id".into(), context.tgid as f64);
            if let Some(id) = &identity {
                meta.insert("runtime-id".into(), id.runtime_id.clone().into());
            }
        }
        // dd-trace-py's default schema (v0): an integration's spans under its own service, the
        // process's kept as the base service.
        let service = match data.integration_service {
            Some(integration) => {
                meta.insert("_dd.base_service".into(), service.clone().into());
                integration.to_string()
            }
            None => service.clone(),
        };
        if self.tags.peer_service && data.kind == crate::core::SpanKind::Client && !meta.contains_key("peer.service") {
            let source = PEER_SERVICE_SOURCES.iter().find_map(|key| Some((*key, meta.get(key)?.clone())));
            if let Some((source, peer)) = source {
                meta.insert("peer.service".into(), peer);
                meta.insert("_dd.peer.service.source".into(), source.into());
            }
        }
        let mut error = 0;
        if let Some(e) = &data.error {
            error = 1;
            meta.insert("error.type".into(), e.kind.clone().into());
            meta.insert("error.message".into(), e.message.clone().into());
        }
        Span {
            trace_id: context.trace_id,
            span_id: context.id,
            parent_id: context.parent_id,
            name: data.name.into(),
            resource: if data.resource.is_empty() { data.name.into() } else { data.resource.clone() },
            service,
            span_type: data.span_type.into(),
            start_unix_ns: context.start_unix_ns,
            duration_ns: context.duration_ns(),
            error,
            meta,
            metrics,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{ContextData, ContextError, SpanKind};

    #[test]
    fn client_spans_get_peer_service_from_db_name_then_out_host_when_asked() {
        let context = |data: ContextData| ExecutionContext {
            id: 1,
            trace_id: 1,
            parent_id: 0,
            root_id: 1,
            tgid: 1,
            tid: 1,
            start_unix_ns: 0,
            end_unix_ns: 1,
            data,
        };
        let query = ContextData::new("postgres.query", "postgres", "sql", SpanKind::Client)
            .with_meta("db.name", "shop")
            .with_meta("out.host", "10.0.0.5");
        let command =
            ContextData::new("redis.command", "redis", "redis", SpanKind::Client).with_meta("out.host", "10.0.0.6");
        let on = SpanBuilder::new(TraceTags { peer_service: true, ..Default::default() });
        let span = on.build(&context(query.clone()));
        assert_eq!(
            (span.meta["peer.service"].as_ref(), span.meta["_dd.peer.service.source"].as_ref()),
            ("shop", "db.name")
        );
        let span = on.build(&context(command));
        assert_eq!(
            (span.meta["peer.service"].as_ref(), span.meta["_dd.peer.service.source"].as_ref()),
            ("10.0.0.6", "out.host")
        );
        let off = SpanBuilder::new(TraceTags::default());
        assert!(!off.build(&context(query)).meta.contains_key("peer.service"), "v0 without the opt-in: none");
    }

    #[test]
    fn carries_unified_tags_kind_and_error() {
        let builder = SpanBuilder::new(TraceTags {
            service: "billing".into(),
            env: Some("prod".into()),
            version: Some("1.2".into()),
            tags: vec![("team".into(), "db".into())],
            peer_service: false,
        });
        let mut data = ContextData::new("sqlite.query", "sqlite", "sql", SpanKind::Client).with_resource("SELECT ?");
        data.error = Some(ContextError { kind: "SQLITE_ERROR".into(), message: "boom".into() });
        let context = ExecutionContext {
            id: 5,
            trace_id: 9,
            parent_id: 0,
            root_id: 5,
            tgid: 42,
            tid: 43,
            start_unix_ns: 100,
            end_unix_ns: 350,
            data,
        };
        let span = builder.build(&context);
        assert_eq!((span.service.as_str(), span.resource.as_ref(), span.duration_ns), ("billing", "SELECT ?", 250));
        assert_eq!(span.meta["env"], "prod");
        assert_eq!(span.meta["span.kind"], "client");
        assert_eq!(span.meta["team"], "db");
        assert_eq!(span.meta["error.type"], "SQLITE_ERROR");
        assert_eq!(span.error, 1);
        assert_eq!(span.metrics["process_id"], 42.0);
    }
}
