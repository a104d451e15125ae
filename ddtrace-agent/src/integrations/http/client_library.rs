//! Which library made an outbound HTTP call, from the interpreter frames of the code that wrote
//! the request (the kernel records them at the write): dd-trace-py names a client span after the
//! library its integration wraps, so a call made through `requests` is `requests.request` there,
//! not a bare `http.request`. Only the integrations dd-trace-py enables by default are named
//! (requests, httpx); a call through urllib3 or `http.client` alone keeps the traffic-level name,
//! as dd-trace-py shows nothing for those by default.

use crate::{config::SpanSchema, interpreters::python::NamedFrame};

/// A Python HTTP client library, as dd-trace-py's integration for it names its spans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLibrary {
    /// The span name under schema v0 (v1: `http.client.request` for all).
    name_v0: &'static str,
    pub component: &'static str,
    /// The service of its spans under schema v0, when the integration has one of its own.
    service_v0: Option<&'static str>,
}

impl ClientLibrary {
    pub fn name(&self, schema: SpanSchema) -> &'static str {
        match schema {
            SpanSchema::V0 => self.name_v0,
            SpanSchema::V1 => "http.client.request",
        }
    }

    /// The integration's own service, if it has one under `schema` (else the process's).
    pub fn service(&self, schema: SpanSchema) -> Option<&'static str> {
        match schema {
            SpanSchema::V0 => self.service_v0,
            SpanSchema::V1 => None,
        }
    }
}

/// A library is told by the file its code runs from (every Python version names the file; only
/// 3.11+ qualify the function).
const KNOWN: &[(&str, ClientLibrary)] = &[
    // dd-trace-py wraps `Session.send`, which every call through `requests` goes through.
    (
        "/requests/sessions.py",
        ClientLibrary { name_v0: "requests.request", component: "requests", service_v0: Some("requests") },
    ),
    // `Client.send` and `AsyncClient.send`; no service of its own: the caller's.
    ("/httpx/_client.py", ClientLibrary { name_v0: "http.request", component: "httpx", service_v0: None }),
];

/// The library the call went through: of the known libraries in `frames` (innermost first), the
/// innermost (a wrapper of `requests`, an SDK, still calls through `requests`).
pub fn library_of(frames: &[NamedFrame]) -> Option<ClientLibrary> {
    frames
        .iter()
        .find_map(|frame| KNOWN.iter().find(|(file, _)| frame.file.ends_with(file)).map(|(_, library)| *library))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(function: &str, file: &str) -> NamedFrame {
        NamedFrame { function: function.into(), file: file.into(), line: Some(1), first_line: Some(1) }
    }

    #[test]
    fn a_call_through_requests_is_named_as_dd_trace_py_names_it() {
        let site = "/usr/lib/python3/dist-packages";
        let frames = [
            frame("HTTPConnection.send", "/usr/lib/python3.11/http/client.py"),
            frame("HTTPConnectionPool.urlopen", &format!("{site}/urllib3/connectionpool.py")),
            frame("HTTPAdapter.send", &format!("{site}/requests/adapters.py")),
            frame("Session.send", &format!("{site}/requests/sessions.py")),
            frame("Session.request", &format!("{site}/requests/sessions.py")),
            frame("get", &format!("{site}/requests/api.py")),
            frame("user", "/srv/app.py"),
        ];
        let library = library_of(&frames).expect("requests");
        assert_eq!(library.name(SpanSchema::V0), "requests.request");
        assert_eq!(library.component, "requests");
        assert_eq!(library.service(SpanSchema::V0), Some("requests"));
        assert_eq!(library.name(SpanSchema::V1), "http.client.request");
        assert_eq!(library.service(SpanSchema::V1), None);
    }

    #[test]
    fn httpx_keeps_the_callers_service_and_plain_calls_are_not_named() {
        let httpx = [frame("Client.send", "/venv/lib/python3.12/site-packages/httpx/_client.py")];
        let library = library_of(&httpx).expect("httpx");
        assert_eq!(
            (library.name(SpanSchema::V0), library.component, library.service(SpanSchema::V0)),
            ("http.request", "httpx", None)
        );
        let stdlib = [frame("urlopen", "/usr/lib/python3.11/urllib/request.py"), frame("main", "/srv/job.py")];
        assert_eq!(library_of(&stdlib), None);
        // A file merely named like the library's is not it.
        assert_eq!(library_of(&[frame("send", "/srv/my_requests_sessions.py")]), None);
    }
}
