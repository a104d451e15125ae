//! HTTP over sockets end to end with Go's `net/http`, unmodified and static (no cgo, no libc): Go
//! makes its system calls itself, on non-blocking sockets polled with epoll, from goroutines that
//! move between OS threads. Everything the daemon learns comes from the `raw_syscalls`
//! tracepoints; spans checked at the Datadog test agent.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    sync::OnceLock,
    time::{Duration, Instant},
};

use ddtrace_tests::{
    agent_process::AgentProcess,
    http::free_port,
    native_app::{build_go, build_go_stripped, NativeApp},
    test_agent::TestAgent,
};
use serde_json::Value;

const ATTACH_TIMEOUT: Duration = Duration::from_secs(20);
/// The size of the Go server's /static file.
const STATIC_FILE_BYTES: usize = 256 * 1024;

/// The test program, built once per test run.
fn go_http() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let started = Instant::now();
        let binary = build_go("go_http/main.go", "go_http");
        eprintln!("go build: {} ms", started.elapsed().as_millis());
        binary
    })
}

/// The test program stripped (`-s -w`), as a release build would be.
fn go_http_stripped() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| build_go_stripped("go_http/main.go", "go_http_stripped"))
}

/// `go_http server PORT`, listening once started.
struct GoServer {
    app: NativeApp,
    port: u16,
}

impl GoServer {
    fn start() -> Self {
        let port = free_port();
        let app = NativeApp::spawn(go_http(), &["server", &port.to_string()]);
        Self { app, port }
    }

    /// `go_http tls-server PORT` of the stripped build: HTTPS on Go's own crypto/tls.
    fn start_tls() -> Self {
        let port = free_port();
        let app = NativeApp::spawn(go_http_stripped(), &["tls-server", &port.to_string()]);
        Self { app, port }
    }
}

/// The daemon attached to `pid`, sending to `agent` as `service`, once it says it is tracing.
fn attach(pid: u32, agent: &TestAgent, service: &str) -> AgentProcess {
    let pid = pid.to_string();
    let url = agent.url();
    // --stats: the probe sites are reported, for the checks of the program's code.
    let mut daemon =
        AgentProcess::start(&["--pid", &pid, "--agent-url", &url, "--service", service, "--stats", "600"]);
    daemon.wait_attached(ATTACH_TIMEOUT);
    daemon
}

/// One keep-alive connection: requests written whole, responses read by their Content-Length.
struct KeepAlive {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
    port: u16,
}

impl KeepAlive {
    fn open(port: u16) -> Self {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Self { stream, reader, port }
    }

    /// GETs `target` with `headers` (each "Name: value"); returns the status and the body.
    fn get(&mut self, target: &str, headers: &[&str]) -> (u16, String) {
        let mut request =
            format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nUser-Agent: e2e-go/1.0\r\n", self.port);
        for header in headers {
            request.push_str(header);
            request.push_str("\r\n");
        }
        request.push_str("\r\n");
        // One write per request: pieces would meet Nagle's algorithm and delayed ACKs.
        self.stream.write_all(request.as_bytes()).unwrap();
        let mut status_line = String::new();
        self.reader.read_line(&mut status_line).unwrap();
        let status = status_line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let mut content_length = 0;
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).unwrap();
            if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                content_length = value.trim().parse().unwrap();
            }
            if line == "\r\n" || line.is_empty() {
                break;
            }
        }
        let mut body = vec![0; content_length];
        self.reader.read_exact(&mut body).unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }
}

fn meta<'a>(span: &'a Value, key: &str) -> &'a str {
    span["meta"][key].as_str().unwrap_or_else(|| panic!("no meta {key} in {span:#}"))
}

fn is_error(span: &Value) -> bool {
    span["error"].as_i64().unwrap_or(0) != 0
}

/// Waits until the agent holds at least `expected` spans, then a little longer so extra (bogus or
/// duplicated) spans would show too, and returns them all.
fn exactly(agent: &TestAgent, expected: usize, daemon: &AgentProcess) -> Vec<Value> {
    agent.wait_for_spans(Duration::from_secs(20), |spans| spans.len() >= expected);
    std::thread::sleep(Duration::from_secs(2));
    let spans = agent.spans();
    assert_eq!(spans.len(), expected, "{spans:#?}\n{}", daemon.stderr_text());
    spans
}

/// Each call (`/users/{id}`) is the child of the request that made it (`...&id={id}`), in its
/// trace and within its time, with several requests in flight.
fn assert_calls_parented_by_the_requests_that_made_them(requests: &[&Value], calls: &[&Value]) {
    for call in calls {
        let id = meta(call, "http.url").rsplit('/').next().unwrap().to_string();
        let parent = requests
            .iter()
            .find(|r| r["span_id"] == call["parent_id"])
            .unwrap_or_else(|| panic!("the call for /users/{id} has no request for parent: {call:#}"));
        assert!(
            meta(parent, "http.url").ends_with(&format!("&id={id}")),
            "the call for /users/{id} was given the request {}",
            meta(parent, "http.url")
        );
        assert_eq!(call["trace_id"], parent["trace_id"]);
    }
}

/// The test agent leaves out a root's parent id.
fn parent_id(span: &Value) -> u64 {
    span["parent_id"].as_u64().unwrap_or(0)
}

/// The file offsets where `pid`'s executable code differs from its file: a uprobe is a
/// breakpoint instruction written into the process's copy of the page.
fn patched_code(pid: u32, binary: &Path) -> Vec<u64> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let file = std::fs::read(binary).unwrap();
    let memory = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut patched = Vec::new();
    let mut code_bytes = 0;
    for line in maps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 6 || !fields[1].contains('x') || Path::new(fields[5]) != binary {
            continue;
        }
        let (start, end) = fields[0].split_once('-').unwrap();
        let start = u64::from_str_radix(start, 16).unwrap();
        let end = u64::from_str_radix(end, 16).unwrap();
        let offset = usize::from_str_radix(fields[2], 16).unwrap();
        let len = ((end - start) as usize).min(file.len().saturating_sub(offset));
        let mut live = vec![0; len];
        std::os::unix::fs::FileExt::read_exact_at(&memory, &mut live, start).unwrap();
        code_bytes += len;
        for (i, (live, original)) in live.iter().zip(&file[offset..offset + len]).enumerate() {
            if live != original {
                assert_eq!(*live, 0xcc, "a changed byte that is not a breakpoint at file offset {:#x}", offset + i);
                patched.push((offset + i) as u64);
            }
        }
    }
    assert!(code_bytes > 1 << 20, "no executable mapping of {} in pid {pid}:\n{maps}", binary.display());
    patched
}

/// The probe sites the daemon reported (`--stats`) in `binary`: (file offset, emulated).
/// Each reported site of `binary`: its file offset, whether the kernel emulates its
/// instruction, and whether it waits for another probe's first hit to be armed.
fn reported_sites(stderr: &str, binary: &Path) -> Vec<(u64, bool, bool)> {
    let marker = format!(" in {} at file offset 0x", binary.display());
    stderr
        .lines()
        .filter(|line| line.contains("probe site"))
        .filter_map(|line| {
            let rest = &line[line.find(&marker)? + marker.len()..];
            let offset = u64::from_str_radix(rest.split(',').next()?, 16).ok()?;
            Some((offset, line.ends_with(": emulated"), line.contains("(armed by the first call of ")))
        })
        .collect()
}

/// While attached, the Go program's code differs from its file only by breakpoints at the
/// reported sites, each on an instruction the kernel emulates (never a uretprobe: none of
/// those shows a site); a site armed by another's first hit only once the daemon said so.
fn assert_only_reported_sites_patched(pid: u32, binary: &Path, daemon: &AgentProcess) {
    let stderr = daemon.stderr_text();
    let sites = reported_sites(&stderr, binary);
    assert!(!sites.is_empty(), "crypto/tls probe sites reported:\n{stderr}");
    assert!(sites.iter().all(|(_, emulated, _)| *emulated), "every site emulated:\n{stderr}");
    let armed = stderr.contains(&format!("go-net/http: armed 1 more probes in {}", binary.display()));
    let mut patched = patched_code(pid, binary);
    let mut expected: Vec<u64> =
        sites.iter().filter(|(_, _, later)| armed || !later).map(|(offset, _, _)| *offset).collect();
    patched.sort();
    expected.sort();
    assert_eq!(patched, expected, "breakpoints exactly at the reported sites");
}

#[test]
fn go_server_requests_become_one_web_span_each_and_continue_the_callers_trace() {
    let _serial = ddtrace_tests::serial();
    let agent = TestAgent::start();
    let server = GoServer::start();
    let mut daemon = attach(server.app.pid(), &agent, "go-users");

    const KEPT_ALIVE: usize = 100;
    let started = Instant::now();
    let mut connection = KeepAlive::open(server.port);
    // A caller that is itself traced sent Datadog context headers.
    let (status, body) = connection.get(
        "/users/42?token=hunter2&page=1",
        &["x-datadog-trace-id: 4242", "x-datadog-parent-id: 99", "x-datadog-sampling-priority: 1"],
    );
    assert_eq!((status, body.trim()), (200, "{\"id\":\"42\",\"name\":\"user 42\"}"));
    let (status, _) = connection.get("/fail", &[]);
    assert_eq!(status, 500);
    // A file: its head and first 512 bytes are written, the rest goes by sendfile(2).
    let (status, body) = connection.get("/static", &[]);
    assert_eq!((status, body.len()), (200, STATIC_FILE_BYTES));
    for i in 0..KEPT_ALIVE {
        assert_eq!(connection.get(&format!("/users/{i}"), &[]).0, 200);
    }
    drop(connection);
    // And one more on a connection of its own, closed by the client right after the response.
    let (status, _) = ddtrace_tests::http::get(server.port, "/users/1000").unwrap();
    assert_eq!(status, 200);
    eprintln!("{} requests in {} ms", KEPT_ALIVE + 4, started.elapsed().as_millis());

    let spans = exactly(&agent, KEPT_ALIVE + 4, &daemon);
    eprintln!("spans at the agent {} ms after the first request", started.elapsed().as_millis());
    for span in &spans {
        assert_eq!(span["name"], "http.request", "{span:#}");
        assert_eq!(span["type"], "web", "{span:#}");
        assert_eq!(span["service"], "go-users");
        assert_eq!(meta(span, "span.kind"), "server");
        assert_eq!(meta(span, "http.method"), "GET");
        assert_eq!(meta(span, "network.client.ip"), "127.0.0.1");
    }
    let users: Vec<&Value> = spans.iter().filter(|s| s["resource"] == "GET /users/?").collect();
    assert_eq!(users.len(), KEPT_ALIVE + 2, "every /users/<id> quantized to one resource");
    assert!(users.iter().all(|s| meta(s, "http.status_code") == "200" && !is_error(s)));
    // Each keep-alive request once, with its own path: nothing lost, nothing counted twice.
    let mut paths: Vec<String> = users.iter().map(|s| meta(s, "http.url").to_string()).collect();
    paths.sort();
    paths.dedup();
    assert_eq!(paths.len(), KEPT_ALIVE + 2, "{paths:#?}");

    let continued = users.iter().find(|s| meta(s, "http.url").contains("/users/42")).expect("the call with headers");
    assert_eq!(continued["trace_id"], 4242, "{continued:#}");
    assert_eq!(continued["parent_id"], 99, "{continued:#}");
    let url = meta(continued, "http.url");
    assert!(url.starts_with(&format!("http://127.0.0.1:{}/users/42?", server.port)), "{url}");
    assert!(!url.contains("hunter2"), "the token leaked into http.url: {url}");
    assert_eq!(meta(continued, "http.useragent"), "e2e-go/1.0");
    // The others start traces of their own.
    assert!(spans.iter().filter(|s| s["trace_id"] == 4242).count() == 1);

    let failed = spans.iter().find(|s| s["resource"] == "GET /fail").expect("the 500");
    assert_eq!(meta(failed, "http.status_code"), "500");
    assert!(is_error(failed), "a 5xx is the server's error: {failed:#}");
    // Ended by the last byte of the file (else the next request on the connection would have
    // been taken for more of its body).
    let file = spans.iter().find(|s| s["resource"] == "GET /static").expect("the file");
    assert_eq!(meta(file, "http.status_code"), "200");
    assert!(!is_error(file), "{file:#}");
    agent.assert_checks_passed();
    // Still attached: breakpoints only where crypto/tls's probes go (sockets are seen from
    // tracepoints).
    assert_only_reported_sites_patched(server.app.pid(), go_http(), &daemon);
    daemon.signal(libc::SIGINT);
    assert!(daemon.wait_exit(Duration::from_secs(10)).success());
    let stderr = daemon.stderr_text();
    assert!(stderr.contains("abandoned_contexts=0"), "server contexts ended by their response:\n{stderr}");
    // The program's Go build, read from its `.go.buildinfo`, and what is traced of it, in one line.
    let go_line = format!("go: pid {} runs a program built by go1.", server.app.pid());
    assert!(stderr.contains(&go_line), "{go_line}...:\n{stderr}");
    assert!(stderr.contains("go-crypto/tls: attached"), "{stderr}");
    // Detached: the program's code is its file's again.
    let patched = patched_code(server.app.pid(), go_http());
    assert!(patched.is_empty(), "breakpoints left in Go code at {patched:x?}");
}

#[test]
fn a_go_servers_outgoing_calls_are_client_spans_inside_the_request_they_serve() {
    let _serial = ddtrace_tests::serial();
    let agent = TestAgent::start();
    // Another Go server, not traced, answers the calls.
    let downstream = GoServer::start();
    let server = GoServer::start();
    let mut daemon = attach(server.app.pid(), &agent, "go-gateway");

    const CALLS: usize = 30;
    let started = Instant::now();
    let mut connection = KeepAlive::open(server.port);
    for i in 0..CALLS {
        let headers = [format!("x-datadog-trace-id: {}", 5000 + i), format!("x-datadog-parent-id: {}", 100 + i)];
        let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
        let (status, body) = connection.get(&format!("/call?port={}", downstream.port), &headers);
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("\"downstream_status\": 200"), "{body}");
    }
    drop(connection);
    eprintln!("{CALLS} calls in {} ms", started.elapsed().as_millis());

    let spans = exactly(&agent, 2 * CALLS, &daemon);
    let requests: Vec<&Value> = spans.iter().filter(|s| s["meta"]["span.kind"] == "server").collect();
    let calls: Vec<&Value> = spans.iter().filter(|s| s["meta"]["span.kind"] == "client").collect();
    assert_eq!((requests.len(), calls.len()), (CALLS, CALLS), "{spans:#?}");
    for request in &requests {
        assert_eq!(request["resource"], "GET /call");
        assert_eq!(meta(request, "http.status_code"), "200");
    }
    for call in &calls {
        assert_eq!(call["name"], "http.request");
        assert_eq!(call["type"], "http", "{call:#}");
        assert_eq!(call["resource"], "GET /users/?");
        assert_eq!(meta(call, "out.host"), "127.0.0.1");
        assert_eq!(meta(call, "network.destination.port"), downstream.port.to_string());
        assert_eq!(meta(call, "http.status_code"), "200");
        assert!(meta(call, "http.useragent").starts_with("Go-http-client/"), "{call:#}");
        assert!(!is_error(call));
        // Each call is a child of the request that made it, in its caller's trace, whichever OS
        // threads the goroutines ran on.
        let parent = requests.iter().find(|r| r["span_id"] == call["parent_id"]).unwrap_or_else(|| {
            panic!("the call's parent is not a request: {call:#}\n{spans:#?}\n{}", daemon.stderr_text())
        });
        assert_eq!(call["trace_id"], parent["trace_id"]);
        let (start, parent_start) = (call["start"].as_i64().unwrap(), parent["start"].as_i64().unwrap());
        let end = start + call["duration"].as_i64().unwrap();
        assert!(
            parent_start <= start && end <= parent_start + parent["duration"].as_i64().unwrap(),
            "{call:#}\n{parent:#}"
        );
    }
    // One call per request: no request adopted two calls.
    let mut parents: Vec<u64> = calls.iter().map(|c| c["parent_id"].as_u64().unwrap()).collect();
    parents.sort();
    parents.dedup();
    assert_eq!(parents.len(), CALLS);
    agent.assert_checks_passed();
    daemon.signal(libc::SIGINT);
    assert!(daemon.wait_exit(Duration::from_secs(10)).success());
}

#[test]
fn a_traced_go_client_on_many_goroutines_gets_exactly_one_client_span_per_call() {
    let _serial = ddtrace_tests::serial();
    let agent = TestAgent::start();
    let server = GoServer::start();
    const CALLS: usize = 200;
    const GOROUTINES: usize = 8;
    let url = format!("http://127.0.0.1:{}/users/9?api_key=s3cr3t", server.port);
    let mut client = NativeApp::spawn(go_http(), &["client", &url, &CALLS.to_string(), &GOROUTINES.to_string()]);
    let mut daemon = attach(client.pid(), &agent, "go-client");

    let started = Instant::now();
    client.go();
    assert!(client.wait_exit(Duration::from_secs(30)).success(), "the Go client's calls failed");
    eprintln!("{CALLS} calls from {GOROUTINES} goroutines in {} ms", started.elapsed().as_millis());
    // The target exited: the daemon flushes and exits by itself.
    assert!(daemon.wait_exit(Duration::from_secs(15)).success());

    let spans = exactly(&agent, CALLS, &daemon);
    for call in &spans {
        assert_eq!(call["name"], "http.request");
        assert_eq!(call["type"], "http");
        assert_eq!(call["resource"], "GET /users/?");
        assert_eq!(meta(call, "span.kind"), "client");
        assert_eq!(meta(call, "out.host"), "127.0.0.1");
        assert_eq!(meta(call, "network.destination.port"), server.port.to_string());
        assert_eq!(meta(call, "http.status_code"), "200");
        assert!(!meta(call, "http.url").contains("s3cr3t"), "{}", meta(call, "http.url"));
        // Nothing served here: each call is a trace of its own.
        assert_eq!(parent_id(call), 0, "{call:#}");
    }
    agent.assert_checks_passed();
}

#[test]
fn concurrent_connections_served_on_shared_threads_each_end_with_their_own_response() {
    let _serial = ddtrace_tests::serial();
    let agent = TestAgent::start();
    let server = GoServer::start();
    let mut daemon = attach(server.app.pid(), &agent, "go-busy");
    // An untraced Go client: many goroutines, so the server reads and answers many connections
    // at once on its few OS threads.
    // 64 at once: with 16, requests rarely overlapped on one thread (the old stack rule cut
    // short 24 to 40 requests in 1000 with 64).
    const CALLS: usize = 1000;
    const GOROUTINES: usize = 64;
    let url = format!("http://127.0.0.1:{}/users/3", server.port);
    let mut client = NativeApp::spawn(go_http(), &["client", &url, &CALLS.to_string(), &GOROUTINES.to_string()]);
    let started = Instant::now();
    client.go();
    assert!(client.wait_exit(Duration::from_secs(30)).success(), "the Go client's calls failed");
    eprintln!("{CALLS} calls from {GOROUTINES} goroutines in {} ms", started.elapsed().as_millis());

    let spans = exactly(&agent, CALLS, &daemon);
    for span in &spans {
        assert_eq!(span["resource"], "GET /users/?");
        assert_eq!(meta(span, "span.kind"), "server");
        // Ended by its own response, not by another request's that ran on the same thread.
        assert_eq!(span["meta"]["http.status_code"], "200", "{span:#}");
        assert!(!is_error(span), "{span:#}");
        assert_eq!(parent_id(span), 0, "requests are roots, never children of each other: {span:#}");
    }
    agent.assert_checks_passed();
    daemon.signal(libc::SIGINT);
    assert!(daemon.wait_exit(Duration::from_secs(10)).success());
    let stderr = daemon.stderr_text();
    assert!(stderr.contains("abandoned_contexts=0"), "{stderr}");
}

#[test]
fn tracing_a_go_function_is_refused_rather_than_crash_the_program() {
    let _serial = ddtrace_tests::serial();
    let agent = TestAgent::start();
    let server = GoServer::start();
    let pid = server.app.pid().to_string();
    let url = agent.url();
    // A traced function gets an entry probe and a uretprobe; a uretprobe in Go code kills the
    // program the first time the goroutine's stack grows (seen: "unexpected return pc").
    let function = format!("{}:net/http.(*conn).serve", go_http().display());
    let mut daemon = AgentProcess::start(&[
        "--pid",
        &pid,
        "--agent-url",
        &url,
        "--service",
        "go-guard",
        "--trace-function",
        &function,
        "--stats",
        "600",
    ]);
    daemon.wait_attached(ATTACH_TIMEOUT);
    let stderr = daemon.stderr_text();
    assert!(stderr.contains("is a Go program: return probes (uretprobes) would crash it"), "{stderr}");
    // Only crypto/tls's entry-style probes are in the program.
    assert_only_reported_sites_patched(server.app.pid(), go_http(), &daemon);
    // The server lives, and its traffic is still traced.
    for _ in 0..3 {
        let (status, body) = ddtrace_tests::http::get(server.port, "/static").unwrap();
        assert_eq!((status, body.len()), (200, STATIC_FILE_BYTES));
    }
    let spans = exactly(&agent, 3, &daemon);
    assert!(spans.iter().all(|s| s["resource"] == "GET /static" && s["meta"]["http.status_code"] == "200"));
    daemon.signal(libc::SIGINT);
    assert!(daemon.wait_exit(Duration::from_secs(10)).success());
}

#[test]
fn calls_made_while_many_requests_are_in_flight_are_each_the_child_of_the_request_that_made_them() {
    let _serial = ddtrace_tests::serial();
    let agent = TestAgent::start();
    let downstream = GoServer::start();
    let server = GoServer::start();
    let mut daemon = attach(server.app.pid(), &agent, "go-gateway-busy");
    // Request n makes the call for /users/n: which request made which call is known here, and
    // only here (the traffic does not say).
    const CALLS: usize = 200;
    const GOROUTINES: usize = 8;
    let url = format!("http://127.0.0.1:{}/call?port={}&id={{n}}", server.port, downstream.port);
    let mut client = NativeApp::spawn(go_http(), &["client", &url, &CALLS.to_string(), &GOROUTINES.to_string()]);
    client.go();
    assert!(client.wait_exit(Duration::from_secs(30)).success(), "the Go client's calls failed");

    let spans = exactly(&agent, 2 * CALLS, &daemon);
    let requests: Vec<&Value> = spans.iter().filter(|s| s["meta"]["span.kind"] == "server").collect();
    let calls: Vec<&Value> = spans.iter().filter(|s| s["meta"]["span.kind"] == "client").collect();
    assert_eq!((requests.len(), calls.len()), (CALLS, CALLS));
    // The goroutine each call was written for (net/http's write loop hands it over) names the
    // request its goroutine serves: every call is adopted by the request that made it.
    assert_calls_parented_by_the_requests_that_made_them(&requests, &calls);
    agent.assert_checks_passed();
    daemon.signal(libc::SIGINT);
    assert!(daemon.wait_exit(Duration::from_secs(10)).success());
}

/// The first try, as a new user would make it: a stripped, static Go HTTPS service
/// (standard library only) whose handler calls an HTTPS backend, 48 requests 8 at a time. Go's
/// TLS is not OpenSSL: the plaintext is read at `crypto/tls.(*Conn).Write`/`Read` with
/// entry-style probes only, every one on an emulated jump.
#[test]
fn a_stripped_go_https_service_and_its_https_calls_are_traced_through_crypto_tls() {
    let _serial = ddtrace_tests::serial();
    let agent = TestAgent::start();
    let backend = GoServer::start_tls();
    let server = GoServer::start_tls();
    let mut daemon = attach(server.app.pid(), &agent, "go-tls-gateway");
    const CALLS: usize = 48;
    const GOROUTINES: usize = 8;
    let url = format!("https://127.0.0.1:{}/call?port={}&scheme=https&id={{n}}", server.port, backend.port);
    let mut client = NativeApp::spawn(go_http(), &["client", &url, &CALLS.to_string(), &GOROUTINES.to_string()]);
    let started = Instant::now();
    client.go();
    assert!(client.wait_exit(Duration::from_secs(30)).success(), "the Go client's calls failed");
    eprintln!("{CALLS} HTTPS calls from {GOROUTINES} goroutines in {} ms", started.elapsed().as_millis());

    let spans = exactly(&agent, 2 * CALLS, &daemon);
    let requests: Vec<&Value> = spans.iter().filter(|s| s["meta"]["span.kind"] == "server").collect();
    let calls: Vec<&Value> = spans.iter().filter(|s| s["meta"]["span.kind"] == "client").collect();
    assert_eq!((requests.len(), calls.len()), (CALLS, CALLS), "{spans:#?}");
    let mut ids: Vec<String> = Vec::new();
    for request in &requests {
        assert_eq!(request["resource"], "GET /call");
        assert_eq!(request["type"], "web");
        assert_eq!(meta(request, "http.status_code"), "200");
        let url = meta(request, "http.url");
        assert!(url.starts_with(&format!("https://127.0.0.1:{}/call?", server.port)), "{url}");
        ids.push(url.rsplit("id=").next().unwrap().to_string());
    }
    ids.sort_by_key(|id| id.parse::<usize>().unwrap());
    assert_eq!(ids, (0..CALLS).map(|n| n.to_string()).collect::<Vec<_>>(), "each request once");
    for call in &calls {
        assert_eq!(call["resource"], "GET /users/?");
        assert_eq!(call["type"], "http");
        assert_eq!(meta(call, "out.host"), "127.0.0.1");
        assert_eq!(meta(call, "network.destination.port"), backend.port.to_string());
        assert_eq!(meta(call, "http.status_code"), "200");
        assert!(meta(call, "http.url").starts_with("https://"), "{call:#}");
    }
    assert_calls_parented_by_the_requests_that_made_them(&requests, &calls);
    agent.assert_checks_passed();
    // The service sends requests: `ServeHTTP`'s probe was armed at its first.
    let armed = format!("go-net/http: armed 1 more probes in {}", go_http_stripped().display());
    assert!(daemon.stderr_text().contains(&armed), "{}", daemon.stderr_text());
    assert_only_reported_sites_patched(server.app.pid(), go_http_stripped(), &daemon);
    daemon.signal(libc::SIGINT);
    assert!(daemon.wait_exit(Duration::from_secs(10)).success());
    let patched = patched_code(server.app.pid(), go_http_stripped());
    assert!(patched.is_empty(), "breakpoints left after detaching at {patched:x?}");

    // Killed rather than stopped: the kernel takes the probes out with the daemon's links.
    let mut killed = attach(server.app.pid(), &agent, "go-tls-gateway");
    // Nothing sent since: `ServeHTTP` is not armed, its code untouched.
    assert!(!killed.stderr_text().contains(&armed), "{}", killed.stderr_text());
    assert_only_reported_sites_patched(server.app.pid(), go_http_stripped(), &killed);
    killed.signal(libc::SIGKILL);
    killed.wait_exit(Duration::from_secs(10));
    let patched = patched_code(server.app.pid(), go_http_stripped());
    assert!(patched.is_empty(), "breakpoints left after the daemon was killed at {patched:x?}");
    // The service lives on.
    let mut after = NativeApp::spawn(go_http(), &["client", &format!("https://127.0.0.1:{}/users/1", server.port), "1", "1"]);
    after.go();
    assert!(after.wait_exit(Duration::from_secs(10)).success());
}

/// A handler that fans out from goroutines of its own, each sending with the request's context
/// (`http.NewRequestWithContext(r.Context(), ...)`, Go's way of saying which request a call is
/// for): with 8 such requests in flight, each call is the child of its own request.
#[test]
fn calls_sent_from_goroutines_a_handler_starts_are_children_of_its_request() {
    let _serial = ddtrace_tests::serial();
    let agent = TestAgent::start();
    let downstream = GoServer::start();
    let server = GoServer::start();
    let mut daemon = attach(server.app.pid(), &agent, "go-fanout");
    const REQUESTS: usize = 64;
    const GOROUTINES: usize = 8;
    // The service's first request, alone (one request in flight: the traffic-level rule parents
    // its calls), arms `ServeHTTP`'s probe, which only a service that sends requests needs.
    let first = format!("http://127.0.0.1:{}/fanout?port={}&id=1000", server.port, downstream.port);
    let mut client = NativeApp::spawn(go_http(), &["client", &first, "1", "1"]);
    client.go();
    assert!(client.wait_exit(Duration::from_secs(30)).success(), "the Go client's call failed");
    daemon.wait_for_stderr("go-net/http: armed 1 more probes in", Duration::from_secs(10));
    let url = format!("http://127.0.0.1:{}/fanout?port={}&id={{n}}", server.port, downstream.port);
    let mut client = NativeApp::spawn(go_http(), &["client", &url, &REQUESTS.to_string(), &GOROUTINES.to_string()]);
    client.go();
    assert!(client.wait_exit(Duration::from_secs(30)).success(), "the Go client's calls failed");

    let spans = exactly(&agent, 3 * (REQUESTS + 1), &daemon);
    let requests: Vec<&Value> = spans.iter().filter(|s| s["meta"]["span.kind"] == "server").collect();
    let calls: Vec<&Value> = spans.iter().filter(|s| s["meta"]["span.kind"] == "client").collect();
    assert_eq!((requests.len(), calls.len()), (REQUESTS + 1, 2 * (REQUESTS + 1)));
    assert_calls_parented_by_the_requests_that_made_them(&requests, &calls);
    agent.assert_checks_passed();
    daemon.signal(libc::SIGINT);
    assert!(daemon.wait_exit(Duration::from_secs(10)).success());
}

/// A Go program that starts another (fork and exec, as a supervisor or a CLI does): attached to
/// the parent, the child's HTTPS traffic is traced from its first request, its crypto/tls probes
/// in place before it runs (the probes are on the file, which the child maps at exec).
#[test]
fn the_https_traffic_of_a_child_a_go_program_starts_is_traced_from_its_first_request() {
    let _serial = ddtrace_tests::serial();
    let agent = TestAgent::start();
    let port = free_port();
    let parent = NativeApp::spawn(go_http_stripped(), &["spawn", "tls-server", &port.to_string()]);
    let mut daemon = attach(parent.pid(), &agent, "go-spawned");
    const CALLS: usize = 12;
    let url = format!("https://127.0.0.1:{port}/users/{{n}}");
    let mut client = NativeApp::spawn(go_http(), &["client", &url, &CALLS.to_string(), "3"]);
    client.go();
    assert!(client.wait_exit(Duration::from_secs(30)).success(), "the HTTPS calls failed");
    let spans = exactly(&agent, CALLS, &daemon);
    for span in &spans {
        assert_eq!(span["resource"], "GET /users/?");
        assert_eq!(meta(span, "span.kind"), "server");
        assert_eq!(meta(span, "http.status_code"), "200");
        assert!(meta(span, "http.url").starts_with("https://"), "{span:#}");
        let child = f64::from(children_of(parent.pid())[0]);
        assert_eq!(span["metrics"]["process_id"].as_f64(), Some(child), "served by the child: {span:#}");
    }
    agent.assert_checks_passed();
    daemon.signal(libc::SIGINT);
    assert!(daemon.wait_exit(Duration::from_secs(10)).success());
    // The child first (it would outlive its parent).
    for child in children_of(parent.pid()) {
        // SAFETY: a plain signal to a process this test started.
        unsafe { libc::kill(child as i32, libc::SIGKILL) };
    }
    drop(parent);
}

/// The direct children of `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|children| children.split_whitespace().filter_map(|c| c.parse().ok()).collect::<Vec<u32>>())
        .collect()
}
