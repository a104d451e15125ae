//! HTTP over sockets end to end with nginx (Debian's binary, unmodified; a master and two
//! event-driven workers) and the real curl binary, in clear text. Spans checked at the Datadog
//! test agent.
//!
//! What nginx does on the wire, as the agent sees it: workers `accept4` connections, read
//! requests with `recvfrom` (1 KiB first, then into a larger header buffer when the head is
//! longer), write response heads with `writev` (head in the first buffer, an error page's body in
//! the next ones) and static bodies with `sendfile`; as a proxy it `connect`s (non-blocking,
//! EINPROGRESS), `writev`s the request and `recvfrom`s the response.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use ddtrace_tests::{
    agent_process::AgentProcess,
    nginx::{Nginx, NginxConfig},
    target_app::python_executable,
    test_agent::TestAgent,
};
use serde_json::Value;

const ATTACH_TIMEOUT: Duration = Duration::from_secs(20);
/// Time for spans that should not exist to show up anyway, before counting.
const SETTLE: Duration = Duration::from_millis(1500);

fn meta<'a>(span: &'a Value, key: &str) -> &'a str {
    span["meta"][key].as_str().unwrap_or_else(|| panic!("no meta {key} in {span:#}"))
}

fn is_error(span: &Value) -> bool {
    span["error"].as_i64().unwrap_or(0) != 0
}

/// The daemon attached to `pid` (and its existing and future descendants).
fn attach(pid: u32, agent: &TestAgent, service: &str) -> AgentProcess {
    let started = Instant::now();
    let pid = pid.to_string();
    let url = agent.url();
    let mut daemon = AgentProcess::start(&["--pid", &pid, "--agent-url", &url, "--service", service]);
    // Not an integration's line: nginx's workers are traced after the master.
    daemon.wait_attached(ATTACH_TIMEOUT);
    eprintln!("attached to {pid} in {} ms", started.elapsed().as_millis());
    daemon
}

/// The spans at the agent once `count` arrived and a while passed for any extra one.
fn settled_spans(agent: &TestAgent, count: usize, since: Instant) -> Vec<Value> {
    agent.wait_for_spans(Duration::from_secs(15), |spans| spans.len() >= count);
    eprintln!("{count} spans at the agent {} ms after the first request", since.elapsed().as_millis());
    std::thread::sleep(SETTLE);
    agent.spans()
}

/// Runs the real curl on `urls` (one invocation: one keep-alive connection for all of them).
/// Returns one `<status> <new connections>` line per URL.
fn curl(urls: &[String]) -> String {
    let mut command = Command::new("curl");
    command.args(["-sS", "--max-time", "10"]);
    for url in urls {
        command.args(["-o", "/dev/null", "-w", "%{http_code} %{num_connects}\\n", url]);
    }
    let output = command.output().expect("curl runs (.ci/run installs it)");
    assert!(output.status.success(), "curl failed: {output:?}");
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn nginx_serves_curl_over_one_keep_alive_connection_as_one_web_span_per_request() {
    let _serial = ddtrace_tests::serial();
    let agent = TestAgent::start();
    let nginx = Nginx::start();
    assert_eq!(nginx.worker_pids().len(), 2, "nginx has its two workers before the attach");
    let mut daemon = attach(nginx.master_pid(), &agent, "nginx-static");

    let started = Instant::now();
    let paths = ["/users/42?token=hunter2&page=1", "/missing/7", "/fail", "/big.bin", "/users/42"];
    let urls: Vec<String> = paths.iter().map(|p| nginx.http_url(p)).collect();
    // One connection for all five (`num_connects` 1, then 0): the 256 KiB file in the middle
    // leaves by sendfile, and the request after it must still be followed.
    assert_eq!(curl(&urls), "200 1\n404 0\n503 0\n200 0\n200 0\n");

    let spans = settled_spans(&agent, 5, started);
    let mut resources: Vec<&str> = spans.iter().filter_map(|s| s["resource"].as_str()).collect();
    resources.sort();
    assert_eq!(
        resources,
        ["GET /big.bin", "GET /fail", "GET /missing/?", "GET /users/?", "GET /users/?"],
        "{spans:#?}\n{}",
        daemon.stderr_text()
    );
    for span in &spans {
        assert_eq!(span["name"], "http.request");
        assert_eq!(span["type"], "web");
        assert_eq!(span["service"], "nginx-static");
        assert_eq!(meta(span, "span.kind"), "server");
        assert_eq!(meta(span, "http.method"), "GET");
        assert!(meta(span, "http.useragent").starts_with("curl/"), "{span:#}");
        assert_eq!(meta(span, "network.client.ip"), "127.0.0.1");
        assert_eq!(span["parent_id"].as_u64().unwrap_or(0), 0, "each request is a trace of its own: {span:#}");
    }
    let status = |resource: &str| -> Vec<&str> {
        spans.iter().filter(|s| s["resource"] == resource).map(|s| meta(s, "http.status_code")).collect()
    };
    assert_eq!(status("GET /users/?"), ["200", "200"]);
    assert_eq!(status("GET /big.bin"), ["200"]);
    assert_eq!(status("GET /missing/?"), ["404"]);
    assert_eq!(status("GET /fail"), ["503"]);
    let secret = spans
        .iter()
        .map(|s| meta(s, "http.url"))
        .find(|url| url.contains("page=1"))
        .expect("the request with a query string");
    assert!(secret.starts_with(&format!("http://127.0.0.1:{}/users/42?", nginx.http_port)), "{secret}");
    assert!(!secret.contains("hunter2"), "the token leaked into http.url: {secret}");
    for span in &spans {
        // A 5xx is the server's error; a 4xx is the client's (dd-trace-py marks server spans so).
        assert_eq!(is_error(span), span["resource"] == "GET /fail", "{span:#}");
    }
    // The two workers are separate processes: the spans carry the worker's pid, never the master's.
    let workers = nginx.worker_pids();
    for span in &spans {
        let pid = span["metrics"]["process_id"].as_f64().expect("process_id") as u32;
        assert!(workers.contains(&pid), "{span:#} (workers {workers:?})");
    }
    assert_eq!(nginx.access_log().lines().count(), 5, "nginx served the five requests");
    agent.assert_checks_passed();
    daemon.signal(libc::SIGINT);
    assert!(daemon.wait_exit(Duration::from_secs(20)).success());
}

/// nginx's upstream, a Python server on a free port (not traced: the tests attach to nginx only).
struct Upstream {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl Upstream {
    /// `python -m http.server` serving `api/orders/7`.
    fn static_files() -> Self {
        let port = ddtrace_tests::http::free_port();
        let dir = std::env::temp_dir().join(format!("ddtrace-nginx-upstream-{port}"));
        std::fs::create_dir_all(dir.join("api/orders")).unwrap();
        std::fs::write(dir.join("api/orders/7"), "{\"order\": 7}").unwrap();
        let mut command = Command::new(python_executable());
        command.args(["-m", "http.server", &port.to_string(), "--bind", "127.0.0.1", "--directory"]).arg(&dir);
        Self::start(command, port, dir)
    }

    /// `tests/apps/slow_upstream.py`: answers `/.../<ms>` after `ms` milliseconds.
    fn slow() -> Self {
        let port = ddtrace_tests::http::free_port();
        let mut command = Command::new(python_executable());
        command.arg(ddtrace_tests::workspace_root().join("tests/apps/slow_upstream.py")).arg(port.to_string());
        Self::start(command, port, std::env::temp_dir().join(format!("ddtrace-nginx-upstream-{port}")))
    }

    fn start(mut command: Command, port: u16, dir: std::path::PathBuf) -> Self {
        let child = command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("python starts");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the upstream did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, port, dir }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn nginx_proxying_to_an_upstream_makes_a_client_span_inside_the_request_it_serves() {
    let _serial = ddtrace_tests::serial();
    let agent = TestAgent::start();
    // The upstream is not traced: its spans would be a second server span per request.
    let upstream = Upstream::static_files();
    let nginx = Nginx::start_with(NginxConfig { upstream_port: Some(upstream.port), ..NginxConfig::default() });
    let mut daemon = attach(nginx.master_pid(), &agent, "nginx-proxy");

    let started = Instant::now();
    // One at a time: each proxied request is the only one its worker has in flight.
    for _ in 0..2 {
        assert_eq!(curl(&[nginx.http_url("/api/orders/7?session=abc")]), "200 1\n");
    }

    let spans = settled_spans(&agent, 4, started);
    assert_eq!(spans.len(), 4, "{spans:#?}\n{}", daemon.stderr_text());
    let servers: Vec<&Value> = spans.iter().filter(|s| s["meta"]["span.kind"] == "server").collect();
    assert_eq!(servers.len(), 2, "{spans:#?}");
    for server in servers {
        assert_eq!(server["resource"], "GET /api/orders/?");
        assert_eq!(meta(server, "http.status_code"), "200");
        let children: Vec<&Value> = spans.iter().filter(|s| s["parent_id"] == server["span_id"]).collect();
        assert_eq!(children.len(), 1, "one upstream call under {server:#}\n{spans:#?}");
        let call = children[0];
        assert_eq!(call["trace_id"], server["trace_id"]);
        assert_eq!(call["name"], "http.request");
        assert_eq!(call["type"], "http");
        assert_eq!(meta(call, "span.kind"), "client");
        assert_eq!(call["resource"], "GET /api/orders/?");
        assert_eq!(meta(call, "out.host"), "127.0.0.1");
        assert_eq!(meta(call, "network.destination.port"), upstream.port.to_string());
        assert_eq!(meta(call, "http.status_code"), "200");
        assert!(!is_error(call));
        // Inside its parent in time too.
        assert!(
            call["start"].as_i64() >= server["start"].as_i64() && end_ns(call) <= end_ns(server),
            "{call:#}\n{server:#}"
        );
    }
    agent.assert_checks_passed();
    daemon.signal(libc::SIGINT);
    assert!(daemon.wait_exit(Duration::from_secs(20)).success());
}

/// The span's end, in ns since the epoch.
fn end_ns(span: &Value) -> i64 {
    span["start"].as_i64().unwrap() + span["duration"].as_i64().unwrap()
}

/// One worker, two proxied requests in flight at once: the first (upstream answers in 400 ms) is
/// answered while the second (800 ms) is still waiting. An event-driven worker's thread holds both;
/// each must keep its own upstream call as its child and end with its own response.
#[test]
fn interleaved_proxied_requests_in_one_worker_keep_their_own_upstream_call_and_end() {
    let _serial = ddtrace_tests::serial();
    let agent = TestAgent::start();
    let upstream = Upstream::slow();
    let config = NginxConfig { upstream_port: Some(upstream.port), workers: 1, ..NginxConfig::default() };
    let nginx = Nginx::start_with(config);
    let mut daemon = attach(nginx.master_pid(), &agent, "nginx-interleaved");

    let started = Instant::now();
    let first_url = nginx.http_url("/api/first/400");
    let first = std::thread::spawn(move || curl(&[first_url]));
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(curl(&[nginx.http_url("/api/second/800")]), "200 1\n");
    assert_eq!(first.join().unwrap(), "200 1\n");

    let spans = settled_spans(&agent, 4, started);
    assert_eq!(spans.len(), 4, "{spans:#?}\n{}", daemon.stderr_text());
    for (name, upstream_ms) in [("first", 400), ("second", 800)] {
        let path = format!("/api/{name}/{upstream_ms}");
        let server = spans
            .iter()
            .find(|s| s["meta"]["span.kind"] == "server" && meta(s, "http.url").ends_with(&path))
            .unwrap_or_else(|| panic!("the {name} request's server span: {spans:#?}"));
        assert_eq!(meta(server, "http.status_code"), "200", "ended by its own response: {server:#}");
        let duration_ms = server["duration"].as_i64().unwrap() / 1_000_000;
        assert!(duration_ms >= upstream_ms - 50, "{name} lasted {duration_ms} ms: {server:#}");
        let children: Vec<&Value> = spans.iter().filter(|s| s["parent_id"] == server["span_id"]).collect();
        assert_eq!(children.len(), 1, "{name}'s upstream call under it: {spans:#?}");
        let call = children[0];
        assert_eq!(meta(call, "span.kind"), "client");
        assert!(meta(call, "http.url").ends_with(&path), "{name}'s own call: {call:#}");
        assert_eq!(call["trace_id"], server["trace_id"]);
        assert!(end_ns(call) <= end_ns(server), "{call:#}\n{server:#}");
    }
    agent.assert_checks_passed();
    daemon.signal(libc::SIGINT);
    assert!(daemon.wait_exit(Duration::from_secs(20)).success());
}

/// A shell that runs `command` each time a line arrives on its stdin, printing `done` after it:
/// traced from before the command exists, so the command is a traced child from its first
/// instruction.
struct CommandRunner {
    child: Child,
    output: BufReader<std::process::ChildStdout>,
}

impl CommandRunner {
    fn start(command: &str) -> Self {
        let script = format!("while read _; do {command}; echo done; done");
        let mut child = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("sh runs");
        let output = BufReader::new(child.stdout.take().unwrap());
        Self { child, output }
    }

    /// Runs the command once; returns what it printed.
    fn run(&mut self) -> String {
        writeln!(self.child.stdin.as_mut().unwrap(), "go").unwrap();
        let mut printed = String::new();
        loop {
            let mut line = String::new();
            assert!(self.output.read_line(&mut line).unwrap() > 0, "the shell exited: {printed}");
            if line == "done\n" {
                return printed;
            }
            printed.push_str(&line);
        }
    }

    /// Closes the shell's stdin: it exits.
    fn finish(mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

#[test]
fn curl_started_under_a_traced_shell_gets_a_client_span_per_request() {
    let _serial = ddtrace_tests::serial();
    let agent = TestAgent::start();
    // nginx is the (untraced) server here.
    let nginx = Nginx::start();
    let ok = nginx.http_url("/users/42?api_key=s3cr3t");
    let missing = nginx.http_url("/missing/7");
    let mut runner = CommandRunner::start(&format!(
        "curl -sS --max-time 10 -o /dev/null -w '%{{http_code}}\\n' '{ok}' -o /dev/null -w '%{{http_code}}\\n' '{missing}'"
    ));
    let mut daemon = attach(runner.child.id(), &agent, "curl");

    let started = Instant::now();
    assert_eq!(runner.run(), "200\n404\n");

    let spans = settled_spans(&agent, 2, started);
    assert_eq!(spans.len(), 2, "{spans:#?}\n{}", daemon.stderr_text());
    for span in &spans {
        assert_eq!(span["name"], "http.request");
        assert_eq!(span["type"], "http");
        assert_eq!(meta(span, "span.kind"), "client");
        assert_eq!(meta(span, "out.host"), "127.0.0.1");
        assert_eq!(meta(span, "network.destination.port"), nginx.http_port.to_string());
        assert!(meta(span, "http.useragent").starts_with("curl/"), "{span:#}");
    }
    let ok_span = spans.iter().find(|s| s["resource"] == "GET /users/?").expect("the 200");
    assert_eq!(meta(ok_span, "http.status_code"), "200");
    assert!(!is_error(ok_span));
    assert!(!meta(ok_span, "http.url").contains("s3cr3t"), "{ok_span:#}");
    let missing_span = spans.iter().find(|s| s["resource"] == "GET /missing/?").expect("the 404");
    assert_eq!(meta(missing_span, "http.status_code"), "404");
    // dd-trace-py's client default: a 4xx is an error for the caller.
    assert!(is_error(missing_span), "{missing_span:#}");
    agent.assert_checks_passed();
    runner.finish();
    assert!(daemon.wait_exit(Duration::from_secs(15)).success(), "the daemon exits with its target");
}

/// A request head of about `head_bytes`: the Host and User-Agent first, then filler headers
/// of 1000 bytes each (every line fits any of nginx's header buffers).
fn huge_request(port: u16, head_bytes: usize) -> Vec<u8> {
    let mut head = format!(
        "GET /users/42?size={head_bytes} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: huge-client/1.0\r\n\
         Connection: close\r\n"
    );
    let mut n = 0;
    while head.len() + 1000 < head_bytes {
        head.push_str(&format!("X-Filler-{n:03}: {}\r\n", "f".repeat(1000 - 17)));
        n += 1;
    }
    head.push_str("X-Last: end\r\n\r\n");
    head.into_bytes()
}

/// Sends `request` on a new connection; returns the response's status line.
fn send(port: u16, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(request).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    answer.lines().next().unwrap_or_default().to_string()
}

/// Huge request heads against two header buffer sizes: `8 16k`, where nginx reads most of the
/// head in one `recvfrom` the capture keeps only 4095 bytes of, and `32 2k`, where every read
/// is captured whole and the head runs into the parser's 16 KiB cap.
///
/// Each huge request gives one span, with the right resource and status: the request line and
/// the first headers are in the bytes seen, and the response is seen whole. Headers after the
/// gap (or past the cap) are missing from the span; nothing is made up from the rest, which is
/// skipped until a segment starts a new message.
#[test]
fn huge_request_heads_give_one_span_each_and_leave_the_daemon_healthy() {
    let _serial = ddtrace_tests::serial();
    for buffers in ["8 16k", "32 2k"] {
        let agent = TestAgent::start();
        let nginx = Nginx::start_with(NginxConfig { header_buffers: buffers.to_string(), ..NginxConfig::default() });
        let mut daemon = attach(nginx.master_pid(), &agent, "nginx-huge");
        let port = nginx.http_port;

        let started = Instant::now();
        // ~12 KiB: three times the capture of one read; ~20 KiB: over the parser's cap.
        for size in [12 * 1024, 20 * 1024] {
            let request = huge_request(port, size);
            assert!((size - 1000..size + 100).contains(&request.len()), "{}", request.len());
            assert_eq!(send(port, &request), "HTTP/1.1 200 OK", "nginx accepts a {size}-byte head ({buffers})");
        }
        agent.wait_for_spans(Duration::from_secs(10), |spans| spans.len() >= 2);
        assert!(daemon.is_running(), "{}", daemon.stderr_text());
        // Then a normal request on a new connection.
        let normal = format!("GET /users/42?normal=1 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
        assert_eq!(send(port, normal.as_bytes()), "HTTP/1.1 200 OK");

        let spans = settled_spans(&agent, 3, started);
        assert_eq!(spans.len(), 3, "({buffers}) {spans:#?}\n{}", daemon.stderr_text());
        for span in &spans {
            assert_eq!(span["resource"], "GET /users/?", "({buffers}) {span:#}");
            assert_eq!(meta(span, "http.status_code"), "200", "({buffers}) {span:#}");
            assert_eq!(meta(span, "span.kind"), "server");
            assert!(!is_error(span), "({buffers}) {span:#}");
        }
        for size in [12 * 1024, 20 * 1024] {
            let span = spans
                .iter()
                .find(|s| meta(s, "http.url").ends_with(&format!("size={size}")))
                .unwrap_or_else(|| panic!("({buffers}) the {size}-byte request's span: {spans:#?}"));
            // In the first bytes of the head, so seen whatever was cut.
            assert_eq!(meta(span, "http.useragent"), "huge-client/1.0", "({buffers}) {span:#}");
        }
        let normal = spans.iter().find(|s| meta(s, "http.url").ends_with("normal=1")).expect("the normal request");
        assert!(normal["meta"]["http.useragent"].is_null(), "nothing carried over: {normal:#}");
        assert!(daemon.is_running(), "{}", daemon.stderr_text());
        agent.assert_checks_passed();
        daemon.signal(libc::SIGINT);
        assert!(daemon.wait_exit(Duration::from_secs(20)).success());
    }
}

/// The HTTPS server block (for the TLS tests) answers with the certificate the harness made.
#[test]
fn the_https_server_block_serves_the_same_routes_with_the_test_certificate() {
    let _serial = ddtrace_tests::serial();
    let nginx = Nginx::start();
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(nginx.certificate())
        .args(["-o", "/dev/null", "-w", "%{http_code}\\n", &nginx.https_url("/users/42")])
        .args(["-o", "/dev/null", "-w", "%{http_code}\\n", &nginx.https_url("/fail")])
        .output()
        .expect("curl runs");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "200\n503\n", "{output:?}\n{}", nginx.error_log());
}

/// nginx over TLS: its SSL_read/SSL_write plaintext gives the same spans as clear text, with
/// `https://` URLs, and the socket's ciphertext none.
#[test]
fn nginx_over_tls_serves_curl_with_one_web_span_per_request() {
    let _serial = ddtrace_tests::serial();
    let agent = TestAgent::start();
    let nginx = Nginx::start();
    let mut daemon = attach(nginx.master_pid(), &agent, "nginx-tls");
    daemon.wait_for_stderr("openssl: attached", ATTACH_TIMEOUT);

    let started = Instant::now();
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(nginx.certificate())
        .args(["-o", "/dev/null", "-w", "%{http_code} %{num_connects}\\n", &nginx.https_url("/users/42?token=hunter2")])
        .args(["-o", "/dev/null", "-w", "%{http_code} %{num_connects}\\n", &nginx.https_url("/fail")])
        .args(["-o", "/dev/null", "-w", "%{http_code} %{num_connects}\\n", &nginx.https_url("/big.bin")])
        .output()
        .expect("curl runs");
    // One TLS connection for the three.
    assert_eq!(String::from_utf8_lossy(&output.stdout), "200 1\n503 0\n200 0\n", "{output:?}\n{}", nginx.error_log());

    let spans = settled_spans(&agent, 3, started);
    let mut resources: Vec<&str> = spans.iter().filter_map(|s| s["resource"].as_str()).collect();
    resources.sort();
    assert_eq!(resources, ["GET /big.bin", "GET /fail", "GET /users/?"], "{spans:#?}\n{}", daemon.stderr_text());
    for span in &spans {
        assert_eq!(meta(span, "span.kind"), "server");
        assert_eq!(meta(span, "network.client.ip"), "127.0.0.1");
        let url = meta(span, "http.url");
        assert!(url.starts_with(nginx.https_url("/").as_str()), "{span:#}");
        assert!(!url.contains("hunter2"), "{span:#}");
    }
    let fail = spans.iter().find(|s| s["resource"] == "GET /fail").unwrap();
    assert!(is_error(fail) && meta(fail, "http.status_code") == "503", "{fail:#}");
    let big = spans.iter().find(|s| s["resource"] == "GET /big.bin").unwrap();
    assert_eq!(meta(big, "http.status_code"), "200");
    agent.assert_checks_passed();
    daemon.signal(libc::SIGINT);
    assert!(daemon.wait_exit(Duration::from_secs(20)).success());
}

/// curl over TLS exec'd five times by a traced shell: every run's TLS exchange gives its client
/// spans. Each curl is a new process whose libssl its dynamic linker maps within milliseconds of
/// the fork: the probes, one per library file for every process mapping it (the default global
/// scope), have their breakpoints in it from that mapping on, and the kernel's bitmap, set at the
/// fork, lets its calls through.
#[test]
fn curl_over_tls_exec_d_by_a_traced_shell_gets_every_client_span() {
    let _serial = ddtrace_tests::serial();
    let agent = TestAgent::start();
    let nginx = Nginx::start();
    let cert = nginx.certificate().display().to_string();
    let ok = nginx.https_url("/users/42");
    let fail = nginx.https_url("/fail");
    let mut runner = CommandRunner::start(&format!(
        "curl -sS --max-time 10 --cacert '{cert}' -o /dev/null -w '%{{http_code}}\\n' '{ok}' -o /dev/null -w '%{{http_code}}\\n' '{fail}'"
    ));
    let mut daemon = attach(runner.child.id(), &agent, "curl-tls");

    let started = Instant::now();
    const RUNS: usize = 5;
    for _ in 0..RUNS {
        assert_eq!(runner.run(), "200\n503\n");
    }
    let spans = settled_spans(&agent, 2 * RUNS, started);
    assert_eq!(spans.len(), 2 * RUNS, "{RUNS} curl runs, two requests each: {spans:#?}\n{}", daemon.stderr_text());
    for span in &spans {
        assert_eq!(meta(span, "span.kind"), "client");
        assert_eq!(meta(span, "network.destination.port"), nginx.https_port.to_string());
        assert!(meta(span, "http.url").starts_with("https://"), "{span:#}");
    }
    assert_eq!(spans.iter().filter(|s| is_error(s)).count(), RUNS, "the 503s: {spans:#?}");
    agent.assert_checks_passed();
    runner.finish();
    assert!(daemon.wait_exit(Duration::from_secs(15)).success(), "the daemon exits with its target");
}
