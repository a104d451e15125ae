//! HTTP over TLS end to end: OpenSSL's SSL_read/SSL_write (and `_ex`) plaintext, attributed to
//! its connection and parsed like clear text. Real servers and clients (Python's `ssl` module,
//! `requests`, curl), real certificates made by the test, spans checked at the test agent.

use std::{process::Command, time::Duration};

use ddtrace_tests::{
    agent_process::AgentProcess,
    http::free_port,
    test_agent::TestAgent,
    tls::{TestCertificate, TlsApp},
};
use serde_json::Value;

const ATTACH_TIMEOUT: Duration = Duration::from_secs(20);

fn meta<'a>(span: &'a Value, key: &str) -> &'a str {
    span["meta"][key].as_str().unwrap_or_else(|| panic!("no meta {key} in {span:#}"))
}

fn is_error(span: &Value) -> bool {
    span["error"].as_i64().unwrap_or(0) != 0
}

/// The daemon attached to `pid`, once its TLS probes are on the process's libssl: two of them,
/// on the internal functions every read and write form calls (the cheap place to probe, see
/// `integrations/openssl.rs`), not four on the exported ones.
fn attach(pid: u32, agent: &TestAgent, service: &str) -> AgentProcess {
    attach_with(pid, agent, service, &[], 2)
}

/// Same, with `extra` arguments, once `probes` TLS probes are attached.
fn attach_with(pid: u32, agent: &TestAgent, service: &str, extra: &[&str], probes: usize) -> AgentProcess {
    let pid = pid.to_string();
    let url = agent.url();
    let mut args = vec!["--pid", &pid, "--agent-url", &url, "--service", service];
    args.extend_from_slice(extra);
    let mut daemon = AgentProcess::start(&args);
    daemon.wait_for_stderr(&format!("openssl: attached {probes} probes to"), ATTACH_TIMEOUT);
    daemon.wait_attached(ATTACH_TIMEOUT);
    daemon
}

#[test]
fn https_server_requests_from_curl_become_web_spans() {
    https_server_serves_curl(&[], 2);
}

/// The same with the probes on SSL_read_ex/SSL_write_ex themselves: the placement used for a
/// libssl whose wrappers do not decode (and the `--openssl-probes exported` escape hatch).
#[test]
fn https_server_requests_become_web_spans_with_the_exported_function_probes_too() {
    https_server_serves_curl(&["--openssl-probes", "exported"], 4);
}

/// A Python `ssl` server traced with `extra` daemon arguments (`probes` TLS probes), hit by the
/// real curl: one web span per request, the caller's trace continued.
fn https_server_serves_curl(extra: &[&str], probes: usize) {
    let _serial = ddtrace_tests::serial();
    let agent = TestAgent::start();
    let certificate = TestCertificate::make("server");
    let port = free_port();
    let server = TlsApp::serve(port, &certificate);
    let mut daemon = attach_with(server.pid(), &agent, "tls-server", extra, probes);

    // Three requests on one keep-alive TLS session (curl reuses the connection).
    let base = format!("https://127.0.0.1:{port}");
    let output = Command::new("curl")
        .args(["-s", "-w", "%{http_code}\\n", "--cacert"])
        .arg(&certificate.cert)
        .args(["-o", "/dev/null", &format!("{base}/users/42?token=hunter2&page=1")])
        .args(["-o", "/dev/null", &format!("{base}/fail")])
        .args(["-o", "/dev/null", &format!("{base}/missing/7")])
        .output()
        .expect("curl runs");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "200\n503\n404\n", "{output:?}");
    // A caller that kept its trace (user keep) and propagated it with Datadog headers.
    let output = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(&certificate.cert)
        .args(["-H", "x-datadog-trace-id: 555", "-H", "x-datadog-parent-id: 66"])
        .args(["-H", "x-datadog-sampling-priority: 2", "-H", "x-datadog-origin: synthetics"])
        .args(["-H", "x-datadog-tags: _dd.p.dm=-4", &format!("{base}/users/43")])
        .output()
        .expect("curl runs");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "200", "{output:?}");

    agent.wait_for_spans(Duration::from_secs(10), |spans| spans.len() >= 4);
    std::thread::sleep(Duration::from_millis(1500));
    let spans = agent.spans().into_iter().filter(|s| s["name"] == "http.request").collect::<Vec<_>>();
    let mut resources: Vec<&str> = spans.iter().filter_map(|s| s["resource"].as_str()).collect();
    resources.sort();
    // One span per request, none from the ciphertext the socket carried.
    let expected = ["GET /fail", "GET /missing/?", "GET /users/?", "GET /users/?"];
    assert_eq!(resources, expected, "{spans:#?}\n{}", daemon.stderr_text());
    let ok = spans.iter().find(|s| s["resource"] == "GET /users/?" && s["trace_id"] != 555).unwrap();
    assert_eq!(ok["type"], "web");
    assert_eq!(ok["service"], "tls-server");
    assert_eq!(meta(ok, "span.kind"), "server");
    assert_eq!(meta(ok, "http.status_code"), "200");
    assert!(meta(ok, "http.useragent").starts_with("curl/"));
    assert_eq!(meta(ok, "network.client.ip"), "127.0.0.1");
    let url = meta(ok, "http.url");
    assert!(url.starts_with(&format!("https://127.0.0.1:{port}/users/42?")), "{url}");
    assert!(!url.contains("hunter2"), "the token leaked into http.url: {url}");
    assert!(!is_error(ok));
    let fail = spans.iter().find(|s| s["resource"] == "GET /fail").unwrap();
    assert_eq!(meta(fail, "http.status_code"), "503");
    assert!(is_error(fail), "a 5xx is a server error: {fail:#}");
    let missing = spans.iter().find(|s| s["resource"] == "GET /missing/?").unwrap();
    assert!(!is_error(missing), "a 404 is not a server error: {missing:#}");
    // The caller's trace is continued, with its sampling decision, origin and propagated tags.
    let continued = spans.iter().find(|s| s["trace_id"] == 555).expect("the request with Datadog headers");
    assert_eq!(continued["parent_id"], 66);
    assert_eq!(continued["metrics"]["_sampling_priority_v1"], 2.0);
    assert_eq!(meta(continued, "_dd.origin"), "synthetics");
    assert_eq!(meta(continued, "_dd.p.dm"), "-4");
    agent.assert_checks_passed();
    daemon.signal(libc::SIGINT);
    assert!(daemon.wait_exit(Duration::from_secs(10)).success());
}

#[test]
fn python_requests_over_https_gets_client_spans() {
    let _serial = ddtrace_tests::serial();
    let agent = TestAgent::start();
    let certificate = TestCertificate::make("client");
    let port = free_port();
    // The server is not traced: only the client's spans reach the agent.
    let _server = TlsApp::serve(port, &certificate);
    let mut client = TlsApp::client(&certificate);
    let mut daemon = attach(client.pid(), &agent, "tls-client");

    let base = format!("https://localhost:{port}");
    assert_eq!(client.get(&format!("{base}/users/7?api_key=s3cret")), 200);
    assert_eq!(client.get(&format!("{base}/missing")), 404);
    assert_eq!(client.get(&format!("{base}/fail")), 503);

    agent.wait_for_spans(Duration::from_secs(10), |spans| spans.len() >= 3);
    std::thread::sleep(Duration::from_millis(1500));
    let spans = agent.spans();
    assert_eq!(spans.len(), 3, "{spans:#?}\n{}", daemon.stderr_text());
    for span in &spans {
        // Named after the library that made the call, from the caller's Python frames the
        // kernel recorded at the TLS write, as dd-trace-py's requests integration names it.
        assert_eq!(span["name"], "requests.request", "{span:#}\n{}", daemon.stderr_text());
        assert_eq!(meta(span, "component"), "requests");
        assert_eq!(span["service"], "requests");
        assert_eq!(meta(span, "_dd.base_service"), "tls-client");
        assert_eq!(span["type"], "http");
        assert_eq!(meta(span, "span.kind"), "client");
        assert_eq!(meta(span, "out.host"), "localhost");
        assert_eq!(meta(span, "network.destination.port"), port.to_string());
        assert!(meta(span, "http.url").starts_with(&format!("https://localhost:{port}/")), "{span:#}");
        assert!(meta(span, "http.useragent").starts_with("python-requests/"), "{span:#}");
    }
    let ok = spans.iter().find(|s| s["resource"] == "GET /users/?").expect("the 200");
    assert_eq!(meta(ok, "http.status_code"), "200");
    assert!(!is_error(ok));
    assert!(!meta(ok, "http.url").contains("s3cret"), "{ok:#}");
    // dd-trace-py's client default: 4xx and 5xx are errors for the caller.
    for resource in ["GET /missing", "GET /fail"] {
        let span = spans.iter().find(|s| s["resource"] == resource).unwrap_or_else(|| panic!("{resource}"));
        assert!(is_error(span), "{span:#}");
    }
    agent.assert_checks_passed();
    daemon.signal(libc::SIGINT);
    assert!(daemon.wait_exit(Duration::from_secs(10)).success());
}

/// curl over TLS as a traced client, attached while it is in the middle of a transfer: its next
/// requests on the same TLS session are client spans. (A curl exec'd by an already traced parent
/// can finish its first TLS calls in the ~ms before its own probes are attached: uprobes are
/// scoped to traced processes so that other processes never pay for them.)
#[test]
fn curl_over_tls_attached_mid_transfer_gets_client_spans_for_its_next_requests() {
    let _serial = ddtrace_tests::serial();
    let agent = TestAgent::start();
    let certificate = TestCertificate::make("curl");
    let port = free_port();
    let _server = TlsApp::serve(port, &certificate);
    let base = format!("https://localhost:{port}");
    let curl = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--cacert"])
        .arg(&certificate.cert)
        .args(["-o", "/dev/null", "-w", "%{http_code} %{num_connects}\\n", &format!("{base}/slow/3000")])
        .args(["-o", "/dev/null", "-w", "%{http_code} %{num_connects}\\n", &format!("{base}/users/9?token=abc")])
        .args(["-o", "/dev/null", "-w", "%{http_code} %{num_connects}\\n", &format!("{base}/fail")])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("curl runs");
    // curl has sent its first request and waits 3 s for the answer.
    std::thread::sleep(Duration::from_millis(300));
    let mut daemon = attach(curl.id(), &agent, "curl-tls");
    let output = curl.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout), "200 1\n200 0\n503 0\n", "one TLS connection: {output:?}");

    agent.wait_for_spans(Duration::from_secs(10), |spans| spans.len() >= 2);
    std::thread::sleep(Duration::from_millis(1500));
    let spans = agent.spans();
    let mut resources: Vec<&str> = spans.iter().filter_map(|s| s["resource"].as_str()).collect();
    resources.sort();
    // The slow request was written before the attach: no span rather than half of one.
    assert_eq!(resources, ["GET /fail", "GET /users/?"], "{spans:#?}\n{}", daemon.stderr_text());
    for span in &spans {
        assert_eq!(meta(span, "span.kind"), "client");
        assert!(meta(span, "http.useragent").starts_with("curl/"), "{span:#}");
        assert_eq!(meta(span, "network.destination.port"), port.to_string());
        assert!(meta(span, "http.url").starts_with(&format!("{base}/")), "{span:#}");
        assert!(!meta(span, "http.url").contains("abc"), "{span:#}");
    }
    let fail = spans.iter().find(|s| s["resource"] == "GET /fail").unwrap();
    assert!(is_error(fail), "{fail:#}");
    agent.assert_checks_passed();
    assert!(daemon.wait_exit(Duration::from_secs(20)).success(), "the daemon exits with curl");
}
