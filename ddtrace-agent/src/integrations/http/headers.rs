//! Which headers the parser keeps, and which of those become span tags (`DD_TRACE_HEADER_TAGS`).
//!
//! Nothing is copied into a span unless the user listed the header: the parser only keeps the
//! headers a span is built from (host, user agent, trace context) plus the allow-list.

use thiserror::Error;

use super::message_parser::Header;
use super::propagation;

/// The lowercase names of the headers whose values a [`MessageParser`](super::MessageParser)
/// keeps with a message head. Framing headers (`content-length`, `transfer-encoding`,
/// `connection`) are always read for framing, and only kept if listed here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeptHeaders {
    /// Lowercase, unique; a handful, so a scan beats hashing a lowercased copy of every name.
    names: Vec<String>,
}

impl KeptHeaders {
    /// Keeps no header at all.
    pub fn none() -> Self {
        Self::default()
    }

    /// What spans need: `host`, `user-agent`, the trace context headers and the allow-list.
    pub fn for_tracing(header_tags: &HeaderTags) -> Self {
        Self::none()
            .with(["host", "user-agent"])
            .with(propagation::HEADER_NAMES.iter().copied())
            .with(header_tags.header_names())
    }

    /// Adds `names` (any case).
    pub fn with<'a>(mut self, names: impl IntoIterator<Item = &'a str>) -> Self {
        for name in names.into_iter().map(|n| n.trim().to_ascii_lowercase()) {
            if !self.names.contains(&name) {
                self.names.push(name);
            }
        }
        self
    }

    /// Whether the header called `lowercase_name` is kept.
    pub fn contains(&self, lowercase_name: &str) -> bool {
        self.names.iter().any(|n| n == lowercase_name)
    }

    /// The lowercase name of the kept header called `name` (any case), if it is kept.
    pub fn find(&self, name: &[u8]) -> Option<&str> {
        self.names.iter().find(|n| n.as_bytes().eq_ignore_ascii_case(name)).map(String::as_str)
    }
}

/// A `DD_TRACE_HEADER_TAGS` entry that was skipped, and why.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HeaderTagError {
    #[error("DD_TRACE_HEADER_TAGS entry {entry:?} names no header; write `header` or `header:tag_name`")]
    MissingHeaderName { entry: String },
    #[error(
        "DD_TRACE_HEADER_TAGS entry {entry:?} ends with ':' but names no tag; write `header` for the default \
         tag name or `header:tag_name`"
    )]
    MissingTagName { entry: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct HeaderTag {
    /// Lowercase, trimmed.
    header: String,
    /// The user's tag name, used for requests and responses alike; `None` for the default names.
    tag: Option<String>,
}

/// The header allow-list, parsed from `DD_TRACE_HEADER_TAGS` (`header[:tag_name],...`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderTags {
    entries: Vec<HeaderTag>,
}

impl HeaderTags {
    /// Parses the variable's value. Entries are separated by commas or whitespace, as dd-trace-py
    /// accepts both; invalid entries are skipped and returned so the caller can log them (one bad
    /// entry must not cost the others). The tag name is after the last `:` because header names
    /// cannot contain one.
    pub fn parse(value: &str) -> (Self, Vec<HeaderTagError>) {
        let mut tags = Self::default();
        let mut errors = Vec::new();
        for entry in value.split(|c: char| c == ',' || c.is_whitespace()).filter(|e| !e.is_empty()) {
            let (header, tag) = match entry.rsplit_once(':') {
                Some((header, tag)) => (header.trim(), Some(tag.trim())),
                None => (entry.trim(), None),
            };
            if header.is_empty() {
                errors.push(HeaderTagError::MissingHeaderName { entry: entry.to_owned() });
                continue;
            }
            if tag == Some("") {
                errors.push(HeaderTagError::MissingTagName { entry: entry.to_owned() });
                continue;
            }
            let header = header.to_ascii_lowercase();
            // A repeated header keeps its first mapping, like a dict built left to right would
            // keep its last: either is defensible, first is what the user sees first.
            if tags.entries.iter().any(|e| e.header == header) {
                continue;
            }
            tags.entries.push(HeaderTag { header, tag: tag.map(str::to_owned) });
        }
        (tags, errors)
    }

    /// Whether no header is listed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The listed header names, lowercase.
    pub fn header_names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|e| e.header.as_str())
    }

    /// The `(tag, value)` pairs for the listed headers present in a request.
    pub fn request_tags(&self, headers: &[Header]) -> Vec<(String, String)> {
        self.tags(headers, "request")
    }

    /// The `(tag, value)` pairs for the listed headers present in a response.
    pub fn response_tags(&self, headers: &[Header]) -> Vec<(String, String)> {
        self.tags(headers, "response")
    }

    fn tags(&self, headers: &[Header], request_or_response: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for entry in &self.entries {
            let mut values = headers.iter().filter(|h| h.name == entry.header).map(|h| h.value.as_str());
            let Some(first) = values.next() else { continue };
            // Repeated headers are one list (RFC 9110 §5.3), so join them the way a proxy would.
            let value = values.fold(first.to_owned(), |acc, v| acc + "," + v);
            let tag = match &entry.tag {
                Some(tag) => tag.clone(),
                None => default_tag_name(request_or_response, &entry.header),
            };
            out.push((tag, value));
        }
        out
    }
}

/// dd-trace-py's default tag name: `http.<request|response>.headers.<name>`, the name lowercased
/// and every character outside `[a-z0-9_\-:/]` replaced by `_` (so `X-Request.ID` becomes
/// `x-request_id`; dots would otherwise open a new object in the UI).
pub fn default_tag_name(request_or_response: &str, header: &str) -> String {
    let normalized: String = header
        .trim()
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | ':' | '/') { c } else { '_' })
        .collect();
    format!("http.{request_or_response}.headers.{normalized}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &str, value: &str) -> Header {
        Header { name: name.to_owned(), value: value.to_owned() }
    }

    #[test]
    fn default_and_custom_tag_names() {
        let (tags, errors) = HeaderTags::parse("X-Request-Id, Referer:http.referer");
        assert!(errors.is_empty());
        let request = [header("x-request-id", "abc"), header("referer", "http://a/"), header("cookie", "secret")];
        assert_eq!(
            tags.request_tags(&request),
            [
                ("http.request.headers.x-request-id".to_owned(), "abc".to_owned()),
                ("http.referer".to_owned(), "http://a/".to_owned())
            ]
        );
        assert_eq!(
            tags.response_tags(&[header("x-request-id", "abc")]),
            [("http.response.headers.x-request-id".to_owned(), "abc".to_owned())]
        );
    }

    #[test]
    fn nothing_outside_the_list_is_copied() {
        let (tags, _) = HeaderTags::parse("");
        assert!(tags.is_empty());
        assert!(tags.request_tags(&[header("authorization", "Bearer x")]).is_empty());
        let (tags, _) = HeaderTags::parse("x-a");
        assert!(tags.request_tags(&[header("authorization", "Bearer x")]).is_empty());
    }

    #[test]
    fn space_separated_and_repeated_headers() {
        let (tags, errors) = HeaderTags::parse("  accept   x-forwarded-for:client ");
        assert!(errors.is_empty());
        let got = tags.request_tags(&[header("x-forwarded-for", "1.1.1.1"), header("x-forwarded-for", "2.2.2.2")]);
        assert_eq!(got, [("client".to_owned(), "1.1.1.1,2.2.2.2".to_owned())]);
    }

    #[test]
    fn invalid_entries_are_reported_and_skipped() {
        let (tags, errors) = HeaderTags::parse(":tag,x-b:,x-c");
        assert_eq!(tags.header_names().collect::<Vec<_>>(), ["x-c"]);
        assert_eq!(
            errors,
            [
                HeaderTagError::MissingHeaderName { entry: ":tag".to_owned() },
                HeaderTagError::MissingTagName { entry: "x-b:".to_owned() }
            ]
        );
        assert!(errors[0].to_string().contains("DD_TRACE_HEADER_TAGS"));
    }

    #[test]
    fn normalization_matches_dd_trace_py() {
        assert_eq!(default_tag_name("request", "Content-Type"), "http.request.headers.content-type");
        assert_eq!(default_tag_name("response", "X-Weird.Name!"), "http.response.headers.x-weird_name_");
    }

    #[test]
    fn kept_headers_cover_spans_and_the_allow_list() {
        let (tags, _) = HeaderTags::parse("X-Custom");
        let kept = KeptHeaders::for_tracing(&tags);
        for name in ["host", "user-agent", "traceparent", "tracestate", "x-datadog-trace-id", "x-custom"] {
            assert!(kept.contains(name), "{name}");
        }
        assert!(!kept.contains("cookie"));
        assert!(!KeptHeaders::none().contains("host"));
    }
}
