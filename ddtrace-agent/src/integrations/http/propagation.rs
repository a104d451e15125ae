//! The caller's trace context, extracted from request headers so the server span joins its trace.
//!
//! Styles are tried in the configured order (`DD_TRACE_PROPAGATION_STYLE_EXTRACT`, default
//! `datadog,tracecontext`) and the first valid context wins, as in dd-trace-py. One exception,
//! from Datadog's propagation spec (implemented in dd-trace-py's `HTTPPropagator._resolve_contexts`):
//! when a later `tracecontext` context has the same trace id but another parent id, its parent id
//! wins, because something between the caller and us (a proxy, an OpenTelemetry hop) updated
//! `traceparent` but not `x-datadog-*`. The replaced parent is kept in `_dd.parent_id` (the `p`
//! member of `tracestate`, else the Datadog parent id). Contexts with other trace ids would become
//! span links in dd-trace-py; they are dropped here.

use std::collections::BTreeMap;

use thiserror::Error;

use super::message_parser::Header;

/// Every header this module reads (lowercase), for [`KeptHeaders`](super::KeptHeaders).
pub const HEADER_NAMES: &[&str] =
    &[DD_TRACE_ID, DD_PARENT_ID, DD_SAMPLING_PRIORITY, DD_ORIGIN, DD_TAGS, TRACEPARENT, TRACESTATE];

const DD_TRACE_ID: &str = "x-datadog-trace-id";
const DD_PARENT_ID: &str = "x-datadog-parent-id";
const DD_SAMPLING_PRIORITY: &str = "x-datadog-sampling-priority";
const DD_ORIGIN: &str = "x-datadog-origin";
const DD_TAGS: &str = "x-datadog-tags";
const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";

/// Tag holding the parent id a context replaced (or W3C's `p`).
pub const LAST_PARENT_ID_TAG: &str = "_dd.parent_id";
/// Tag holding the upper 64 bits of a 128-bit trace id, as 16 lowercase hex digits.
pub const TRACE_ID_HIGH_TAG: &str = "_dd.p.tid";
/// Tag recording why propagated tags were dropped.
pub const PROPAGATION_ERROR_TAG: &str = "_dd.propagation_error";
/// `x-datadog-tags` longer than this is dropped (dd-trace-py's `DD_TRACE_X_DATADOG_TAGS_MAX_LENGTH`).
const MAX_DD_TAGS_LEN: usize = 512;

/// A propagation format, as named in `DD_TRACE_PROPAGATION_STYLE*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PropagationStyle {
    /// `x-datadog-*` headers.
    Datadog,
    /// W3C `traceparent` and `tracestate`.
    TraceContext,
    /// Accepted in the configuration but not extracted yet.
    B3Multi,
    /// Accepted in the configuration but not extracted yet.
    B3Single,
    /// Accepted in the configuration; baggage carries no trace context.
    Baggage,
}

/// A style name the configuration does not know.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PropagationStyleError {
    #[error(
        "unknown trace propagation style {style:?}: it is ignored; the known styles are datadog, tracecontext, \
         b3multi, b3, baggage and none"
    )]
    Unknown { style: String },
}

/// The ordered extraction styles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StyleList {
    styles: Vec<PropagationStyle>,
    extract_first: bool,
}

impl Default for StyleList {
    /// `datadog,tracecontext`.
    fn default() -> Self {
        Self { styles: vec![PropagationStyle::Datadog, PropagationStyle::TraceContext], extract_first: false }
    }
}

impl StyleList {
    /// Parses a comma-separated style list; `none` and empty items are skipped, unknown styles are
    /// returned as errors (and skipped) so one typo does not disable propagation.
    pub fn parse(value: &str) -> (Self, Vec<PropagationStyleError>) {
        let mut styles = Vec::new();
        let mut errors = Vec::new();
        for item in value.split(',').map(|s| s.trim().to_ascii_lowercase()) {
            let style = match item.as_str() {
                "" | "none" => continue,
                "datadog" => PropagationStyle::Datadog,
                "tracecontext" => PropagationStyle::TraceContext,
                "b3multi" => PropagationStyle::B3Multi,
                "b3" | "b3 single header" => PropagationStyle::B3Single,
                "baggage" => PropagationStyle::Baggage,
                _ => {
                    errors.push(PropagationStyleError::Unknown { style: item });
                    continue;
                }
            };
            if !styles.contains(&style) {
                styles.push(style);
            }
        }
        (Self { styles, extract_first: false }, errors)
    }

    /// The list from the environment's values: `DD_TRACE_PROPAGATION_STYLE_EXTRACT` first, then
    /// `DD_TRACE_PROPAGATION_STYLE`, then the default.
    pub fn from_settings(extract: Option<&str>, both: Option<&str>) -> (Self, Vec<PropagationStyleError>) {
        match extract.or(both) {
            Some(value) => Self::parse(value),
            None => (Self::default(), Vec::new()),
        }
    }

    /// `DD_TRACE_PROPAGATION_EXTRACT_FIRST`: only the first valid context counts, no reparenting.
    pub fn with_extract_first(mut self, extract_first: bool) -> Self {
        self.extract_first = extract_first;
        self
    }

    /// The styles, in order.
    pub fn styles(&self) -> &[PropagationStyle] {
        &self.styles
    }

    /// The caller's context from request headers (lowercase names), if any style yields one.
    pub fn extract(&self, headers: &[Header]) -> Option<ExtractedContext> {
        let mut contexts = Vec::new();
        for &style in &self.styles {
            let context = match style {
                PropagationStyle::Datadog => extract_datadog(headers),
                PropagationStyle::TraceContext => extract_tracecontext(headers),
                PropagationStyle::B3Multi | PropagationStyle::B3Single | PropagationStyle::Baggage => None,
            };
            if let Some(context) = context {
                contexts.push(context);
                if self.extract_first {
                    break;
                }
            }
        }
        let mut contexts = contexts.into_iter();
        let mut primary = contexts.next()?;
        let datadog_parent = (primary.style == PropagationStyle::Datadog).then_some(primary.parent_id);
        for other in contexts {
            let reparent = other.style == PropagationStyle::TraceContext
                && other.trace_id == primary.trace_id
                && other.parent_id != primary.parent_id;
            if !reparent {
                continue;
            }
            let last_parent = match other.tags.get(LAST_PARENT_ID_TAG) {
                Some(p) => Some(p.clone()),
                None => datadog_parent.map(|id| format!("{id:016x}")),
            };
            if let Some(last_parent) = last_parent {
                primary.tags.insert(LAST_PARENT_ID_TAG.to_owned(), last_parent);
            }
            primary.parent_id = other.parent_id;
        }
        Some(primary)
    }
}

/// A trace context extracted from request headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtractedContext {
    /// The full 128-bit trace id (upper half from `_dd.p.tid` or `traceparent`, else zero).
    pub trace_id: u128,
    /// The caller's span id.
    pub parent_id: u64,
    pub sampling_priority: Option<i32>,
    /// `synthetics`, `rum`, ... as the caller set it.
    pub origin: Option<String>,
    /// Propagated `_dd.p.*` tags, plus `_dd.parent_id` and `_dd.propagation_error` when set.
    pub tags: BTreeMap<String, String>,
    /// The style the context was read from.
    pub style: PropagationStyle,
}

fn header<'a>(headers: &'a [Header], name: &str) -> Option<&'a str> {
    headers.iter().find(|h| h.name == name).map(|h| h.value.trim())
}

fn extract_datadog(headers: &[Header]) -> Option<ExtractedContext> {
    let trace_id: u64 = header(headers, DD_TRACE_ID)?.parse().ok().filter(|&id| id != 0)?;
    // Without a parent (RUM, synthetics) the caller's span is unknown, not invalid.
    let parent_id: u64 = match header(headers, DD_PARENT_ID) {
        Some(value) => value.parse().ok()?,
        None => 0,
    };
    let sampling_priority = header(headers, DD_SAMPLING_PRIORITY).and_then(|v| v.parse().ok());
    let origin = header(headers, DD_ORIGIN).filter(|o| !o.is_empty()).map(str::to_owned);
    let mut tags = header(headers, DD_TAGS).map(parse_dd_tags).unwrap_or_default();
    let mut high = 0u64;
    if let Some(tid) = tags.remove(TRACE_ID_HIGH_TAG) {
        match parse_lower_hex(&tid, 16) {
            Some(value) => {
                high = value as u64;
                tags.insert(TRACE_ID_HIGH_TAG.to_owned(), tid);
            }
            None => {
                tags.insert(PROPAGATION_ERROR_TAG.to_owned(), format!("malformed_tid {tid}"));
            }
        }
    }
    Some(ExtractedContext {
        trace_id: (u128::from(high) << 64) | u128::from(trace_id),
        parent_id,
        sampling_priority,
        origin,
        tags,
        style: PropagationStyle::Datadog,
    })
}

/// `x-datadog-tags`: `key=value` pairs separated by commas; only `_dd.p.*` keys propagate. A
/// header too long or malformed yields no tags but a `_dd.propagation_error`, like dd-trace-py.
fn parse_dd_tags(value: &str) -> BTreeMap<String, String> {
    let mut tags = BTreeMap::new();
    if value.len() > MAX_DD_TAGS_LEN {
        tags.insert(PROPAGATION_ERROR_TAG.to_owned(), "extract_max_size".to_owned());
        return tags;
    }
    if value.is_empty() {
        return tags;
    }
    let mut parsed = BTreeMap::new();
    for pair in value.split(',') {
        let valid_key = |k: &str| !k.is_empty() && k.bytes().all(|b| b.is_ascii_graphic() && b != b'=' && b != b',');
        let valid_value = |v: &str| !v.is_empty() && v.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b',');
        match pair.split_once('=') {
            Some((k, v)) if valid_key(k) && valid_value(v) => {
                if k.starts_with("_dd.p.") {
                    parsed.insert(k.to_owned(), v.to_owned());
                }
            }
            _ => {
                tags.insert(PROPAGATION_ERROR_TAG.to_owned(), "decoding_error".to_owned());
                return tags;
            }
        }
    }
    parsed
}

/// Exactly `len` lowercase hex digits (W3C forbids uppercase; zero checks are the caller's).
fn parse_lower_hex(s: &str, len: usize) -> Option<u128> {
    if s.len() != len || !s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    u128::from_str_radix(s, 16).ok()
}

/// W3C `traceparent`: `version-traceid-parentid-flags`, lowercase hex. Version `ff` is invalid,
/// version `00` is exactly 55 characters, later versions may append `-...` fields.
fn parse_traceparent(value: &str) -> Option<(u128, u64, u8)> {
    if !value.is_ascii() || value.len() < 55 {
        return None;
    }
    let b = value.as_bytes();
    let version = parse_lower_hex(&value[0..2], 2)?;
    if version == 0xff || (version == 0 && value.len() != 55) || (value.len() > 55 && b[55] != b'-') {
        return None;
    }
    if b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    let trace_id = parse_lower_hex(&value[3..35], 32).filter(|&id| id != 0)?;
    let parent_id = parse_lower_hex(&value[36..52], 16).filter(|&id| id != 0)? as u64;
    let flags = parse_lower_hex(&value[53..55], 2)? as u8;
    Some((trace_id, parent_id, flags))
}

fn extract_tracecontext(headers: &[Header]) -> Option<ExtractedContext> {
    let (trace_id, parent_id, flags) = parse_traceparent(header(headers, TRACEPARENT)?)?;
    let sampled = flags & 1 == 1;
    // Several tracestate headers form one list (W3C trace-context §3.3.1.1).
    let tracestate: Vec<&str> = headers.iter().filter(|h| h.name == TRACESTATE).map(|h| h.value.as_str()).collect();
    let dd = tracestate
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find_map(|member| member.strip_prefix("dd="))
        .unwrap_or_default();
    let mut priority = None;
    let mut origin = None;
    let mut tags = BTreeMap::new();
    for field in dd.split(';').filter(|f| !f.is_empty()) {
        let Some((key, value)) = field.split_once(':') else { continue };
        match key {
            "s" => priority = value.parse::<i32>().ok(),
            // `~` stands for `=`, which tracestate values cannot hold.
            "o" => origin = Some(value.replace('~', "=")),
            "p" if parse_lower_hex(value, 16).is_some() => {
                tags.insert(LAST_PARENT_ID_TAG.to_owned(), value.to_owned());
            }
            _ => {
                if let Some(name) = key.strip_prefix("t.") {
                    tags.insert(format!("_dd.p.{name}"), value.replace('~', "="));
                }
            }
        }
    }
    // The sampled flag is authoritative; tracestate's priority only refines it when they agree.
    let sampling_priority = match priority {
        Some(p) if (p > 0) == sampled => p,
        _ => i32::from(sampled),
    };
    Some(ExtractedContext {
        trace_id,
        parent_id,
        sampling_priority: Some(sampling_priority),
        origin,
        tags,
        style: PropagationStyle::TraceContext,
    })
}

#[cfg(test)]
#[path = "propagation_tests.rs"]
mod tests;
