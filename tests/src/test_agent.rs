//! Datadog's own test agent (`ddapm-test-agent` from PyPI), started per test on free ports,
//! with payload checks on and error responses on.
use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::http::{free_ports, get};

/// The checks every test runs with.
pub const ENABLED_CHECKS: &str = "trace_count_header,meta_tracer_version_header,trace_content_length";

/// One request as the test agent received it.
#[derive(Clone)]
pub struct ReceivedRequest {
    pub url: String,
    /// Lower-case header names.
    pub headers: std::collections::HashMap<String, String>,
    pub body: Vec<u8>,
}

impl std::fmt::Debug for ReceivedRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceivedRequest")
            .field("url", &self.url)
            .field("headers", &self.headers)
            .field("body_bytes", &self.body.len())
            .finish()
    }
}

impl ReceivedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(&name.to_ascii_lowercase()).map(String::as_str)
    }

    /// Whether the body holds `needle` (a msgpack string is its bytes, after a length prefix).
    pub fn body_contains(&self, needle: &str) -> bool {
        self.body.windows(needle.len()).any(|w| w == needle.as_bytes())
    }
}

/// A running `ddapm-test-agent`, killed on drop.
pub struct TestAgent {
    child: Child,
    pub port: u16,
    log: PathBuf,
}

impl TestAgent {
    /// Starts it and waits until it answers. Panics with a clear message when it cannot run.
    pub fn start() -> TestAgent {
        Self::start_with(&[])
    }

    /// Also serving the trace intake on the Unix domain socket `path` (as the Datadog agent's
    /// `/var/run/datadog/apm.socket`); its test endpoints stay on TCP.
    pub fn start_with_socket(path: &std::path::Path) -> TestAgent {
        Self::start_with(&["--trace-uds-socket", path.to_str().unwrap()])
    }

    fn start_with(extra_args: &[&str]) -> TestAgent {
        // Three different ports (the test agent refuses equal ones).
        let [port, otlp_http_port, otlp_grpc_port] = free_ports::<3>();
        let log = std::env::temp_dir().join(format!("ddapm-test-agent-{port}.log"));
        let log_file = std::fs::File::create(&log).unwrap();
        let child = Command::new("ddapm-test-agent")
            .args(["--port", &port.to_string()])
            // Its OTLP listeners default to fixed ports: keep parallel tests apart.
            .args(["--otlp-http-port", &otlp_http_port.to_string(), "--otlp-grpc-port", &otlp_grpc_port.to_string()])
            .args(extra_args)
            .env("ENABLED_CHECKS", ENABLED_CHECKS)
            // Keep failures for /test/trace_check/failures; a failing payload also gets an error
            // response, so the daemon sees it.
            .env("DD_POOL_TRACE_CHECK_FAILURES", "true")
            // Error responses stay on (its default). Any value here, even "false", is a
            // truthy string to the test agent and would turn them off.
            .env_remove("DD_DISABLE_ERROR_RESPONSES")
            // Otherwise the test agent forwards to a real agent.
            .env_remove("DD_TRACE_AGENT_URL")
            .env_remove("DD_AGENT_URL")
            .current_dir(std::env::temp_dir())
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("could not start ddapm-test-agent ({e}): install it with `pip install ddapm-test-agent` (the README's test command does)")
            });
        let mut agent = TestAgent { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = agent.child.try_wait().unwrap() {
                panic!("ddapm-test-agent exited early ({status}):\n{}", agent.log_text());
            }
            if matches!(get(port, "/info"), Ok((200, _))) {
                return agent;
            }
            assert!(
                Instant::now() < deadline,
                "ddapm-test-agent did not answer on port {port} within 30 s:\n{}",
                agent.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Every trace received: a list of traces, each a list of spans (JSON objects).
    pub fn traces(&self) -> Vec<Vec<serde_json::Value>> {
        let (status, body) = get(self.port, "/test/traces").expect("GET /test/traces");
        assert_eq!(status, 200, "GET /test/traces: {body}");
        serde_json::from_str(&body).expect("traces are JSON")
    }

    /// Every span received, flattened.
    pub fn spans(&self) -> Vec<serde_json::Value> {
        self.traces().into_iter().flatten().collect()
    }

    /// Waits until `ready` holds for the spans received, or the timeout passes; returns the spans.
    pub fn wait_for_spans(
        &self,
        timeout: Duration,
        ready: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let spans = self.spans();
            if ready(&spans) || Instant::now() > deadline {
                return spans;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every request the test agent received on its intake endpoints, oldest first: method,
    /// URL, headers (names as sent) and the body, decoded.
    pub fn requests(&self) -> Vec<ReceivedRequest> {
        use base64::Engine;
        let (status, body) = get(self.port, "/test/session/requests").expect("GET /test/session/requests");
        assert_eq!(status, 200, "GET /test/session/requests: {body}");
        let list: Vec<serde_json::Value> = serde_json::from_str(&body).expect("requests are JSON");
        let mut requests: Vec<ReceivedRequest> = list
            .into_iter()
            .map(|r| ReceivedRequest {
                url: r["url"].as_str().unwrap_or_default().to_string(),
                headers: r["headers"]
                    .as_object()
                    .map(|h| {
                        h.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.as_str().unwrap_or("").to_string())).collect()
                    })
                    .unwrap_or_default(),
                body: base64::engine::general_purpose::STANDARD
                    .decode(r["body"].as_str().unwrap_or(""))
                    .unwrap_or_default(),
            })
            .collect();
        requests.reverse();
        requests
    }

    /// Panics unless the enabled checks ran and none failed.
    pub fn assert_checks_passed(&self) {
        let (status, body) = get(self.port, "/test/trace_check/failures").expect("GET failures");
        assert_eq!(status, 200, "test agent checks failed:\n{body}");
        let (status, body) = get(self.port, "/test/trace_check/summary").expect("GET summary");
        assert_eq!(status, 200, "{body}");
        let summary: serde_json::Value = serde_json::from_str(&body).unwrap();
        for check in ENABLED_CHECKS.split(',') {
            let passed = summary[check]["Passed_Checks"].as_u64().unwrap_or(0);
            let failed = summary[check]["Failed_Checks"].as_u64().unwrap_or(0);
            assert!(passed > 0 && failed == 0, "check {check}: passed {passed}, failed {failed}: {summary}");
        }
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}
