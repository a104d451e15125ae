//! `http.url`: `scheme://host[:port]/path?query`, with secrets in the query string replaced by
//! `<redacted>` using Datadog's default obfuscation pattern, as dd-trace-py does before the URL
//! leaves the process. The fragment is never included (clients do not send it anyway).

use regex::bytes::{Regex, RegexBuilder};
use thiserror::Error;

/// dd-trace-py's default for `DD_TRACE_OBFUSCATION_QUERY_STRING_REGEXP`:
/// `DD_TRACE_OBFUSCATION_QUERY_STRING_REGEXP_DEFAULT` in `ddtrace/settings/_config.py` (the same
/// pattern is shared by the other Datadog tracers). There it is written in verbose mode; this is
/// the same pattern with the verbose whitespace removed (its only literal space, before
/// `bearer`, is ignored in verbose mode). It is matched on bytes, case-insensitively, with ASCII
/// classes, as Python does on the encoded query.
pub const DEFAULT_QUERY_OBFUSCATION_PATTERN: &str = concat!(
    r#"(?:(?:"|%22)?)"#,
    r#"(?:(?:old[-_]?|new[-_]?)?p(?:ass)?w(?:or)?d(?:1|2)?"#,
    r#"|pass(?:[-_]?phrase)?"#,
    r#"|secret"#,
    r#"|(?:api[-_]?|private[-_]?|public[-_]?|access[-_]?|secret[-_]?|app(?:lication)?[-_]?)key(?:[-_]?id)?"#,
    r#"|token"#,
    r#"|consumer[-_]?(?:id|key|secret)"#,
    r#"|sign(?:ed|ature)?"#,
    r#"|auth(?:entication|orization)?)"#,
    r#"(?:(?:\s|%20)*(?:=|%3D)[^&]+"#,
    r#"|(?:"|%22)(?:\s|%20)*(?::|%3A)(?:\s|%20)*(?:"|%22)(?:%2[^2]|%[^2]|[^"%])+(?:"|%22))"#,
    r#"|(?:bearer(?:\s|%20)+[a-z0-9._\-]+"#,
    r#"|token(?::|%3A)[a-z0-9]{13}"#,
    r#"|gh[opsu]_[0-9a-zA-Z]{36}"#,
    r#"|ey[I-L](?:[\w=-]|%3D)+\.ey[I-L](?:[\w=-]|%3D)+(?:\.(?:[\w.+/=-]|%3D|%2F|%2B)+)?"#,
    r#"|-{5}BEGIN(?:[a-z\s]|%20)+PRIVATE(?:\s|%20)KEY-{5}[^\-]+-{5}END"#,
    r#"(?:[a-z\s]|%20)+PRIVATE(?:\s|%20)KEY(?:-{5})?(?:\n|%0A)?"#,
    r#"|(?:ssh-(?:rsa|dss)|ecdsa-[a-z0-9]+-[a-z0-9]+)(?:\s|%20|%09)+(?:[a-z0-9/.+]|%2F|%5C|%2B){100,}"#,
    r#"(?:=|%3D)*(?:(?:\s|%20|%09)+[a-z0-9._-]+)?)"#,
);

/// The replacement for every match, as in dd-trace-py.
pub const REDACTED: &str = "<redacted>";

/// A user pattern that does not compile.
#[derive(Debug, Error)]
pub enum QueryObfuscatorError {
    #[error(
        "DD_TRACE_OBFUSCATION_QUERY_STRING_REGEXP is not a valid regular expression ({source}); fix it, or unset \
         it for Datadog's default pattern"
    )]
    InvalidPattern {
        #[source]
        source: regex::Error,
    },
}

/// Redacts query strings.
#[derive(Debug, Clone)]
pub struct QueryObfuscator {
    /// `None` when obfuscation is disabled (an empty pattern).
    pattern: Option<Regex>,
}

impl Default for QueryObfuscator {
    /// Datadog's default pattern.
    fn default() -> Self {
        Self::new(DEFAULT_QUERY_OBFUSCATION_PATTERN).expect("the default pattern compiles")
    }
}

impl QueryObfuscator {
    /// An obfuscator for `pattern`; an empty pattern disables obfuscation (as the variable does).
    pub fn new(pattern: &str) -> Result<Self, QueryObfuscatorError> {
        if pattern.is_empty() {
            return Ok(Self { pattern: None });
        }
        let regex = RegexBuilder::new(pattern)
            .case_insensitive(true)
            // Byte-wise and ASCII-only, like Python's bytes patterns: `\w` and case folding must
            // not reach into Unicode (the Kelvin sign is not a `k`).
            .unicode(false)
            .build()
            .map_err(|source| QueryObfuscatorError::InvalidPattern { source })?;
        Ok(Self { pattern: Some(regex) })
    }

    /// The obfuscator for the value of `DD_TRACE_OBFUSCATION_QUERY_STRING_REGEXP`, if set.
    pub fn from_setting(value: Option<&str>) -> Result<Self, QueryObfuscatorError> {
        value.map_or_else(|| Ok(Self::default()), Self::new)
    }

    /// `query` with every match replaced by `<redacted>`.
    pub fn obfuscate(&self, query: &str) -> String {
        match &self.pattern {
            Some(regex) => {
                String::from_utf8_lossy(&regex.replace_all(query.as_bytes(), REDACTED.as_bytes())).into_owned()
            }
            None => query.to_owned(),
        }
    }
}

/// `http.url` for a request: `scheme://host[:port]/path?query`.
///
/// `host` is the `Host` header when there is one (it may carry a port), else the address the
/// caller knows (server: local address; client: peer). `port` is added when `host` has none and
/// it is not the scheme's default. An absolute-form target (proxies) brings its own scheme and
/// host. The query is obfuscated; an empty query leaves no `?`.
pub fn build_http_url(
    scheme: &str,
    host: &str,
    port: Option<u16>,
    target: &str,
    obfuscator: &QueryObfuscator,
) -> String {
    let target = target.split('#').next().unwrap_or_default();
    let (path_and_query, scheme, authority) = match target.find("://") {
        Some(i) if !target[..i].contains('/') && !target.starts_with('/') => {
            let rest = &target[i + 3..];
            let slash = rest.find(['/', '?']).unwrap_or(rest.len());
            (&rest[slash..], &target[..i], rest[..slash].to_owned())
        }
        _ => (target, scheme, authority(scheme, host, port)),
    };
    let (path, query) = match path_and_query.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path_and_query, None),
    };
    let path = if path.starts_with('/') { path } else { "/" };
    let mut url = format!("{scheme}://{authority}{path}");
    if let Some(query) = query.filter(|q| !q.is_empty()) {
        url.push('?');
        url.push_str(&obfuscator.obfuscate(query));
    }
    url
}

fn authority(scheme: &str, host: &str, port: Option<u16>) -> String {
    let default_port = if scheme == "https" { 443 } else { 80 };
    let (host, has_port) = if host.starts_with('[') {
        (host.to_owned(), host.contains("]:"))
    } else if host.matches(':').count() > 1 {
        // A bare IPv6 address: brackets first, or its last group would read as a port.
        (format!("[{host}]"), false)
    } else {
        (host.to_owned(), host.contains(':'))
    };
    match port {
        Some(port) if !has_port && port != default_port => format!("{host}:{port}"),
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obfuscate(query: &str) -> String {
        QueryObfuscator::default().obfuscate(query)
    }

    #[test]
    fn default_pattern_redacts_secrets() {
        assert_eq!(obfuscate("application_key=123"), "<redacted>");
        assert_eq!(obfuscate("q=shoes&password=hunter2&page=2"), "q=shoes&<redacted>&page=2");
        assert_eq!(obfuscate("user=a&api_key=abc&access-key-id=x"), "user=a&<redacted>&<redacted>");
        assert_eq!(obfuscate("TOKEN=abc"), "<redacted>", "case-insensitive");
        assert_eq!(obfuscate("signature%3Dabc"), "<redacted>", "encoded =");
        assert_eq!(obfuscate("q=%22pwd%22%3A%20%22secret%22"), "q=<redacted>", "JSON-ish");
        assert_eq!(obfuscate("auth=Bearer%20abc.def"), "<redacted>");
        let gh = format!("t=gho_{}", "a".repeat(36));
        assert_eq!(obfuscate(&gh), "t=<redacted>");
        let jwt = "x=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.sflKxwRJSMeKKF2QT4fwpMeJf36";
        assert_eq!(obfuscate(jwt), "x=<redacted>");
        let pem = "k=-----BEGIN%20RSA%20PRIVATE%20KEY-----MIIabc-----END%20RSA%20PRIVATE%20KEY-----";
        assert_eq!(obfuscate(pem), "k=<redacted>");
        let ssh = format!("k=ssh-rsa%20{}&n=1", "A".repeat(120));
        assert_eq!(obfuscate(&ssh), "k=<redacted>&n=1");
    }

    #[test]
    fn default_pattern_leaves_ordinary_queries() {
        for query in ["q=shoes&page=2", "sort=desc&limit=10", "keyword=rust", "passenger=2", "sig=1"] {
            assert_eq!(obfuscate(query), query);
        }
    }

    #[test]
    fn empty_pattern_disables_and_invalid_pattern_is_an_error() {
        let off = QueryObfuscator::new("").unwrap();
        assert_eq!(off.obfuscate("password=x"), "password=x");
        let custom = QueryObfuscator::from_setting(Some(r"ssn=\d{3}-\d{2}-\d{4}")).unwrap();
        assert_eq!(custom.obfuscate("ssn=123-45-6789&password=x"), "<redacted>&password=x");
        let err = QueryObfuscator::new("(unclosed").unwrap_err();
        assert!(err.to_string().contains("DD_TRACE_OBFUSCATION_QUERY_STRING_REGEXP"), "{err}");
        assert_eq!(QueryObfuscator::from_setting(None).unwrap().obfuscate("token=1"), "<redacted>");
    }

    #[test]
    fn urls() {
        let o = QueryObfuscator::default();
        assert_eq!(build_http_url("http", "example.com", Some(80), "/a/1?x=1", &o), "http://example.com/a/1?x=1");
        assert_eq!(build_http_url("http", "10.0.0.1", Some(8080), "/a", &o), "http://10.0.0.1:8080/a");
        assert_eq!(build_http_url("https", "h:8443", Some(8443), "/", &o), "https://h:8443/");
        assert_eq!(build_http_url("https", "h", Some(443), "/p?", &o), "https://h/p");
        assert_eq!(build_http_url("http", "h", None, "/p?token=abc#frag", &o), "http://h/p?<redacted>");
        assert_eq!(build_http_url("http", "::1", Some(8000), "/", &o), "http://[::1]:8000/");
        assert_eq!(build_http_url("http", "[::1]:9000", Some(9000), "/", &o), "http://[::1]:9000/");
        assert_eq!(
            build_http_url("http", "proxy", Some(3128), "http://example.com:81/x?password=1", &o),
            "http://example.com:81/x?<redacted>"
        );
        assert_eq!(build_http_url("http", "h", None, "http://example.com", &o), "http://example.com/");
        assert_eq!(build_http_url("http", "h", None, "*", &o), "http://h/");
    }
}
