//! The resource of an HTTP span: `METHOD /path`, with the path segments that look like ids
//! replaced by `?` so that `/users/123` and `/users/456` are one resource.
//!
//! Without a framework we never see the route (`/users/<id>`), so the path must be generalised
//! from its shape. The rule follows Datadog's cross-tracer "simplified endpoint" used for resource
//! renaming (dd-trace-py `SimplifiedEndpointComputer`, `http.endpoint`), with `?` as the
//! placeholder the issue asks for. A segment becomes `?` when it is:
//! - all digits (any length: unlike the endpoint rule, a single digit is an id too);
//! - an "int id": 3+ characters of digits and `._-`, with a digit (`123-456`, `2024.01.02`);
//! - hex: 6+ hex digits with a digit (`deadbeef42`, object ids);
//! - a "hex id": 6+ characters of hex digits and `._-`, with a digit (UUIDs);
//! - a "string id": 20+ characters, or any of `%&'()*+,:=@` (tokens, encoded values);
//! - mixed alphanumerics: 8+ letters and digits with at least 2 digits (`user42abc`, `a1b2c3d4e5`);
//!   short words with a digit (`v1`, `v2`, `ipv6`, `oauth2`) stay.
//!
//! Empty segments are dropped (`/a//b/` is `/a/b`), the query string and fragment are excluded.

/// `METHOD /quantized/path` for a request target (origin-form, absolute-form, `*` or authority).
pub fn resource_name(method: &str, target: &str) -> String {
    match method {
        // The authority of a CONNECT is a host, not a path: keep the resource low-cardinality.
        "CONNECT" => "CONNECT".to_owned(),
        _ if target == "*" => format!("{method} *"),
        _ => format!("{method} {}", quantize_path(path_of(target))),
    }
}

/// The path of a request target: without query and fragment, and without scheme and authority
/// for the absolute form proxies receive.
pub fn path_of(target: &str) -> &str {
    let end = target.find(['?', '#']).unwrap_or(target.len());
    let target = &target[..end];
    match target.find("://") {
        Some(scheme_end) if !target[..scheme_end].contains('/') => {
            let rest = &target[scheme_end + 3..];
            rest.find('/').map_or("/", |slash| &rest[slash..])
        }
        _ => target,
    }
}

/// Replaces the id-like segments of `path` (no query string) by `?`.
pub fn quantize_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        out.push('/');
        out.push_str(if looks_like_id(segment) { "?" } else { segment });
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

fn looks_like_id(segment: &str) -> bool {
    let bytes = segment.as_bytes();
    let digits = bytes.iter().filter(|b| b.is_ascii_digit()).count();
    let all = |f: fn(&u8) -> bool| bytes.iter().all(f);
    if digits == bytes.len() {
        return true;
    }
    if digits > 0 && bytes.len() >= 3 && all(|b| b.is_ascii_digit() || id_punctuation(b)) {
        return true;
    }
    if digits > 0 && bytes.len() >= 6 && all(|b| b.is_ascii_hexdigit() || id_punctuation(b)) {
        return true;
    }
    if bytes.len() >= 20 || bytes.iter().any(|b| b"%&'()*+,:=@".contains(b)) {
        return true;
    }
    digits >= 2 && bytes.len() >= 8 && all(u8::is_ascii_alphanumeric)
}

/// `.`, `_` and `-`: what ids use to group their digits.
fn id_punctuation(b: &u8) -> bool {
    matches!(b, b'.' | b'_' | b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_quantized() {
        let cases = [
            ("/users/123/orders/550e8400-e29b-41d4-a716-446655440000", "/users/?/orders/?"),
            ("/users/7", "/users/?"),
            ("/objects/5f1d7a3b9c8e4f2a1b3c4d5e", "/objects/?"),
            ("/blobs/deadbeef42", "/blobs/?"),
            ("/days/2024-01-02/report", "/days/?/report"),
            ("/files/v1.2.3", "/files/v1.2.3"),
            ("/tokens/eyJhbGciOiJIUzI1NiJ9abc", "/tokens/?"),
            ("/search/a%20b", "/search/?"),
            ("/u/user42abc", "/u/?"),
            ("/api/v1/users", "/api/v1/users"),
            ("/oauth2/callback", "/oauth2/callback"),
            ("/ipv6/status", "/ipv6/status"),
            ("/static/app.js", "/static/app.js"),
            ("/cafe/facade", "/cafe/facade"),
        ];
        for (path, expected) in cases {
            assert_eq!(quantize_path(path), expected, "{path}");
        }
    }

    #[test]
    fn query_fragment_and_empty_segments() {
        assert_eq!(resource_name("GET", "/users/42?token=abc#top"), "GET /users/?");
        assert_eq!(resource_name("GET", "/"), "GET /");
        assert_eq!(resource_name("GET", "?x=1"), "GET /");
        assert_eq!(resource_name("POST", "/a//b/"), "POST /a/b");
    }

    #[test]
    fn other_target_forms() {
        assert_eq!(resource_name("GET", "http://example.com:8080/items/99?x"), "GET /items/?");
        assert_eq!(resource_name("GET", "http://example.com"), "GET /");
        assert_eq!(resource_name("OPTIONS", "*"), "OPTIONS *");
        assert_eq!(resource_name("CONNECT", "example.com:443"), "CONNECT");
        assert_eq!(resource_name("GET", "/redirect/http://x/1"), "GET /redirect/?/x/?");
    }
}
