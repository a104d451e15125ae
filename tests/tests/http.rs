//! HTTP over sockets end to end: Python's threading `http.server`, unmodified, traced at the
//! kernel's socket layer; spans checked at the Datadog test agent.

use std::{
    io::{Read, Write},
    net::TcpStream,
    process::{Child, Command, Stdio},
    time::Duration,
};

use ddtrace_tests::{
    agent_process::AgentProcess, http::free_port, target_app::python_executable, test_agent::TestAgent,
};
use serde_json::Value;

const ATTACH_TIMEOUT: Duration = Duration::from_secs(20);

/// `python -m http.server` serving a temporary directory with `users/42` in it.
struct StaticServer {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl StaticServer {
    fn start() -> Self {
        Self::start_with_env(&[])
    }

    /// Same, with `env` in the server's environment (the daemon reads `DD_*` settings there).
    fn start_with_env(env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("ddtrace-http-{port}"));
        std::fs::create_dir_all(dir.join("users")).unwrap();
        std::fs::write(dir.join("users/42"), "{\"id\": 42}").unwrap();
        let child = Command::new(python_executable())
            .args(["-m", "http.server", &port.to_string(), "--bind", "127.0.0.1", "--directory"])
            .arg(&dir)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python starts");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "http.server did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, port, dir }
    }

    /// Sends raw bytes on a new connection and reads whatever comes back until the server closes.
    fn send_raw(&self, bytes: &[u8]) -> Vec<u8> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        stream.write_all(bytes).unwrap();
        let _ = stream.shutdown(std::net::Shutdown::Write);
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        answer
    }
}

impl Drop for StaticServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The daemon attached to the server, sending to `agent` as `service`.
fn attach(server: &StaticServer, agent: &TestAgent, service: &str) -> AgentProcess {
    let pid = server.child.id().to_string();
    let url = agent.url();
    let mut daemon = AgentProcess::start(&["--pid", &pid, "--agent-url", &url, "--service", service]);
    daemon.wait_attached(ATTACH_TIMEOUT);
    daemon
}

fn meta<'a>(span: &'a Value, key: &str) -> &'a str {
    span["meta"][key].as_str().unwrap_or_else(|| panic!("no meta {key} in {span:#}"))
}

#[test]
fn python_http_server_requests_become_web_spans() {
    let _serial = ddtrace_tests::serial();
    let agent = TestAgent::start();
    // Only allow-listed headers reach spans, as the target's own environment says.
    let server = StaticServer::start_with_env(&[("DD_TRACE_HEADER_TAGS", "X-Request-Id:request.id,content-type")]);
    let mut daemon = attach(&server, &agent, "static-files");

    let port = server.port;
    let ok = server.send_raw(
        format!(
            "GET /users/42?token=hunter2&page=1 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: e2e-client/1.0\r\n\
             X-Request-Id: req-7\r\nCookie: session=topsecret\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    );
    assert!(ok.starts_with(b"HTTP/1.0 200"), "{}", String::from_utf8_lossy(&ok));
    let missing = server.send_raw(format!("GET /missing/7 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").as_bytes());
    assert!(missing.starts_with(b"HTTP/1.0 404"), "{}", String::from_utf8_lossy(&missing));

    let spans = agent.wait_for_spans(Duration::from_secs(10), |spans| spans.len() >= 2);
    assert_eq!(spans.len(), 2, "{spans:#?}\n{}", daemon.stderr_text());
    let ok_span = spans.iter().find(|s| s["resource"] == "GET /users/?").expect("resource with the id quantized");
    assert_eq!(ok_span["name"], "http.request");
    assert_eq!(ok_span["type"], "web");
    assert_eq!(ok_span["service"], "static-files");
    assert_eq!(meta(ok_span, "span.kind"), "server");
    assert_eq!(meta(ok_span, "http.method"), "GET");
    assert_eq!(meta(ok_span, "http.status_code"), "200");
    assert_eq!(meta(ok_span, "http.useragent"), "e2e-client/1.0");
    assert_eq!(meta(ok_span, "network.client.ip"), "127.0.0.1");
    let url = meta(ok_span, "http.url");
    assert!(url.starts_with(&format!("http://127.0.0.1:{port}/users/42?")), "{url}");
    assert!(!url.contains("hunter2"), "the token leaked into http.url: {url}");
    assert!(ok_span["error"].as_i64().unwrap_or(0) == 0);
    assert_eq!(meta(ok_span, "request.id"), "req-7");
    assert_eq!(meta(ok_span, "http.response.headers.content-type"), "application/octet-stream");
    assert!(!ok_span.to_string().contains("topsecret"), "a header not allow-listed reached the span: {ok_span:#}");
    let missing_span = spans.iter().find(|s| s["resource"] == "GET /missing/?").expect("the 404 span");
    assert_eq!(meta(missing_span, "http.status_code"), "404");
    // A 4xx is the client's error, not the server's (as dd-trace-py marks server spans).
    assert!(missing_span["error"].as_i64().unwrap_or(0) == 0);
    agent.assert_checks_passed();
    daemon.signal(libc::SIGINT);
    assert!(daemon.wait_exit(Duration::from_secs(10)).success());
}

#[test]
fn garbage_and_binary_protocols_on_an_http_port_make_no_span() {
    let _serial = ddtrace_tests::serial();
    let agent = TestAgent::start();
    let server = StaticServer::start();
    let mut daemon = attach(&server, &agent, "garbage");

    // A TLS ClientHello start, a Redis command, random bytes, a request head cut short.
    server.send_raw(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03]);
    server.send_raw(b"*1\r\n$4\r\nPING\r\n");
    let noise: Vec<u8> = (0..3000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    server.send_raw(&noise);
    server.send_raw(b"GET /trunc");
    // Then one real request: exactly one span, for it.
    let port = server.port;
    let ok = server.send_raw(format!("GET /users/42 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").as_bytes());
    assert!(ok.starts_with(b"HTTP/1.0 200"), "the server survived: {}", String::from_utf8_lossy(&ok));

    std::thread::sleep(Duration::from_secs(2));
    let spans = agent.wait_for_spans(Duration::from_secs(5), |spans| !spans.is_empty());
    let resources: Vec<&str> = spans.iter().filter_map(|s| s["resource"].as_str()).collect();
    assert_eq!(resources, ["GET /users/?"], "{spans:#?}\n{}", daemon.stderr_text());
    daemon.signal(libc::SIGINT);
    assert!(daemon.wait_exit(Duration::from_secs(10)).success());
}

#[test]
fn gunicorn_requests_parent_their_sqlite_queries_and_downstream_calls_and_continue_the_callers_trace() {
    let _serial = ddtrace_tests::serial();
    let agent = TestAgent::start();
    let downstream = StaticServer::start();
    let server = ddtrace_tests::target_app::Gunicorn::start(1);
    let pid = server.master_pid().to_string();
    let url = agent.url();
    let mut daemon = AgentProcess::start(&["--pid", &pid, "--agent-url", &url, "--service", "shop"]);
    daemon.wait_for_stderr("sqlite: attached", ATTACH_TIMEOUT);
    // The sqlite line can come before the worker is traced (the library is foreseen in the master).
    daemon.wait_attached(ATTACH_TIMEOUT);
    // The worker's connection to us is new: its request is followed from the accept.
    server.request();
    // A caller that is itself traced sent Datadog context headers.
    let port = server.port;
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .write_all(
            format!(
                "GET /orders/77?call={}&via=requests HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nx-datadog-trace-id: 4242\r\n\
                 x-datadog-parent-id: 99\r\nx-datadog-sampling-priority: 1\r\nConnection: close\r\n\r\n",
                downstream.port
            )
            .as_bytes(),
        )
        .unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer));

    let spans = agent.wait_for_spans(Duration::from_secs(10), |spans| {
        spans.iter().filter(|s| s["name"] == "flask.request").count() >= 2
            && spans.iter().any(|s| s["name"] == "requests.request")
    });
    // Served through Flask (its views were seen): dd-trace-py's `flask.request`.
    let requests: Vec<&Value> =
        spans.iter().filter(|s| s["name"] == "flask.request" && s["meta"]["span.kind"] == "server").collect();
    assert_eq!(requests.len(), 2, "{spans:#?}\n{}", daemon.stderr_text());
    // The Flask view that served each request, seen through the frames of the statements it ran:
    // dd-trace-py's view span (module.function), inside the request, around the view's work.
    let app = ddtrace_tests::workspace_root().join("tests/apps/wsgi_sqlite_app.py").canonicalize().unwrap();
    let mut views = Vec::new();
    for request in &requests {
        let view = spans
            .iter()
            .find(|s| s["name"] == "wsgi_sqlite_app.serve" && s["parent_id"] == request["span_id"])
            .unwrap_or_else(|| panic!("the view span of {request:#}\n{spans:#?}\n{}", daemon.stderr_text()));
        assert_eq!(meta(view, "component"), "flask");
        assert_eq!(meta(request, "component"), "flask");
        // dd-trace-py's entry code origin, on the request and on the view: the handler's first
        // line is its first decorator's (`@app.route`).
        for span in [*request, view] {
            assert_eq!(meta(span, "_dd.code_origin.type"), "entry", "{span:#}");
            assert_eq!(meta(span, "_dd.code_origin.frames.0.file"), app.display().to_string());
            assert_eq!(meta(span, "_dd.code_origin.frames.0.line"), "14");
            assert_eq!(meta(span, "_dd.code_origin.frames.0.type"), "wsgi_sqlite_app");
            assert_eq!(meta(span, "_dd.code_origin.frames.0.method"), "serve");
        }
        let queries: Vec<&Value> =
            spans.iter().filter(|s| s["name"] == "sqlite.query" && s["parent_id"] == view["span_id"]).collect();
        // CREATE, INSERT, SELECT: the app's SQLite work, each a child of the view that ran it.
        assert!(queries.len() >= 3, "{} sqlite children of {view:#}\n{spans:#?}", queries.len());
        assert!(queries.iter().all(|q| q["trace_id"] == request["trace_id"]));
        let view_end = view["start"].as_i64().unwrap() + view["duration"].as_i64().unwrap();
        let request_end = request["start"].as_i64().unwrap() + request["duration"].as_i64().unwrap();
        assert!(view["start"].as_i64() >= request["start"].as_i64() && view_end <= request_end, "{view:#}");
        views.push(view);
    }
    // The rule that served each request, read from the app's routing table, as dd-trace-py's
    // resource and `http.route` (`/orders/77` is served by `/<path:path>`).
    let continued = requests.iter().find(|s| s["resource"] == "GET /<path:path>").expect("the request with headers");
    assert_eq!(meta(continued, "http.route"), "/<path:path>");
    assert_eq!(continued["trace_id"], 4242, "{continued:#}");
    assert_eq!(continued["parent_id"], 99, "{continued:#}");
    let fresh = requests.iter().find(|s| s["resource"] == "GET /").expect("the request without headers");
    assert_eq!(meta(fresh, "http.route"), "/");
    assert_ne!(fresh["trace_id"], 4242);
    // The call made while serving is a client span, child of the view that made it, named after
    // the library that made it (the caller's frames at its write), as dd-trace-py names it.
    let call = spans
        .iter()
        .find(|s| s["name"] == "requests.request" && s["meta"]["span.kind"] == "client")
        .expect("the downstream call");
    assert_eq!(call["resource"], "GET /users/?");
    assert_eq!(meta(call, "component"), "requests");
    assert_eq!(call["service"], "requests");
    let continued_view = views.iter().find(|v| v["parent_id"] == continued["span_id"]).expect("its view");
    assert_eq!(call["parent_id"], continued_view["span_id"], "{call:#}");
    assert_eq!(call["trace_id"], 4242);
    assert_eq!(meta(call, "network.destination.port"), downstream.port.to_string());
    agent.assert_checks_passed();
    daemon.signal(libc::SIGINT);
    assert!(daemon.wait_exit(Duration::from_secs(10)).success());
    server.stop();
}

/// The request to `/nope/...` (no route serves it) keeps the quantized resource and no
/// `http.route`; the test agent's checks passed; the daemon stops cleanly.
fn the_404_has_no_route_and_the_run_ends_clean(spans: &[Value], agent: &TestAgent, mut daemon: AgentProcess) {
    let unrouted = spans.iter().find(|s| s["resource"] == "GET /nope/?").expect("the 404, quantized");
    assert!(unrouted["meta"].get("http.route").is_none(), "{unrouted:#}");
    agent.assert_checks_passed();
    daemon.signal(libc::SIGINT);
    assert!(daemon.wait_exit(Duration::from_secs(10)).success());
}

/// A Flask app served by werkzeug's threaded server (a thread per request): each request's span
/// is named after the rule that served it, read from the app's routing table in its memory, as
/// dd-trace-py names it (`GET /users/<int:uid>`, `http.route`), also when its view makes no call
/// we see; a path no rule serves keeps the quantized resource and no route.
#[test]
fn werkzeug_threaded_server_requests_are_named_after_their_flask_rule() {
    let _serial = ddtrace_tests::serial();
    let agent = TestAgent::start();
    let app_path = ddtrace_tests::workspace_root().join("tests/apps/bench/flask_app.py");
    let python = std::path::PathBuf::from(python_executable());
    let app = ddtrace_tests::target_app::ScriptChild::spawn(&python, &[app_path.to_str().unwrap()]);
    let port: u16 = app.ready_line().trim_start_matches("ready ").parse().expect("the app's port");
    let pid = app.pid().to_string();
    let url = agent.url();
    let mut daemon = AgentProcess::start(&["--pid", &pid, "--agent-url", &url, "--service", "shop"]);
    daemon.wait_attached(ATTACH_TIMEOUT);
    for path in ["/users/7", "/users/8", "/nope/9", "/ping/5"] {
        let (status, body) = ddtrace_tests::http::get(port, path).expect("the app answers");
        assert_eq!(status, if path.starts_with("/nope") { 404 } else { 200 }, "{body}");
    }
    let spans = agent.wait_for_spans(Duration::from_secs(10), |spans| {
        spans.iter().filter(|s| s["meta"]["span.kind"] == "server").count() >= 4
    });
    // A view that makes no call the agent sees is still named, from the table read at the
    // process's first view.
    let ping = spans.iter().find(|s| s["resource"] == "GET /ping/<int:n>").expect("the call-less view's request");
    assert_eq!((ping["name"].as_str(), meta(ping, "http.route")), (Some("flask.request"), "/ping/<int:n>"));
    let named: Vec<&Value> = spans.iter().filter(|s| s["resource"] == "GET /users/<int:uid>").collect();
    assert_eq!(named.len(), 2, "{spans:#?}\n{}", daemon.stderr_text());
    for request in named {
        assert_eq!(request["name"], "flask.request", "{request:#}");
        assert_eq!(meta(request, "http.route"), "/users/<int:uid>");
        assert_eq!(meta(request, "component"), "flask");
        assert!(spans.iter().any(|s| s["name"] == "__main__.user" && s["parent_id"] == request["span_id"]));
    }
    the_404_has_no_route_and_the_run_ends_clean(&spans, &agent, daemon);
}

/// FastAPI on uvicorn: once an `async def` endpoint is seen through its statements' frames, the
/// process's requests are `fastapi.request` named after the route that serves them, read from
/// the app's routes in its memory (`GET /items/{item_id}`, `http.route`), as dd-trace-py names
/// them, with their endpoint's entry code origin; no view span (the event loop's thread serves
/// many requests at once). A path no route serves keeps the quantized resource.
#[test]
fn fastapi_requests_are_named_after_their_route() {
    let _serial = ddtrace_tests::serial();
    let agent = TestAgent::start();
    let app_path = ddtrace_tests::workspace_root().join("tests/apps/fastapi_app.py").canonicalize().unwrap();
    let python = std::path::PathBuf::from(python_executable());
    let app = ddtrace_tests::target_app::ScriptChild::spawn(&python, &[app_path.to_str().unwrap()]);
    let port: u16 = app.ready_line().trim_start_matches("ready ").parse().expect("the app's port");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while ddtrace_tests::http::get(port, "/items/0").is_err() {
        assert!(std::time::Instant::now() < deadline, "uvicorn did not start serving");
        std::thread::sleep(Duration::from_millis(100));
    }
    let pid = app.pid().to_string();
    let url = agent.url();
    let mut daemon = AgentProcess::start(&["--pid", &pid, "--agent-url", &url, "--service", "shop"]);
    daemon.wait_attached(ATTACH_TIMEOUT);
    // The first request shows the endpoint's frames; the next ones are named as they arrive.
    for path in ["/items/1", "/items/2", "/users/bob/orders", "/nope/3"] {
        let (status, body) = ddtrace_tests::http::get(port, path).expect("the app answers");
        assert_eq!(status, if path.starts_with("/nope") { 404 } else { 200 }, "{body}");
    }
    let spans = agent.wait_for_spans(Duration::from_secs(10), |spans| {
        spans.iter().filter(|s| s["meta"]["span.kind"] == "server").count() >= 4
    });
    let file = app_path.display().to_string();
    for (route, method, line) in [("/items/{item_id}", "item", "21"), ("/users/{name}/orders", "orders", "26")] {
        let request = spans
            .iter()
            .find(|s| s["resource"] == format!("GET {route}"))
            .unwrap_or_else(|| panic!("GET {route}\n{spans:#?}\n{}", daemon.stderr_text()));
        assert_eq!(request["name"], "fastapi.request", "{request:#}");
        assert_eq!((meta(request, "component"), meta(request, "http.route")), ("fastapi", route));
        // dd-trace-py's entry code origin: the route's endpoint, read with the routes.
        assert_eq!(meta(request, "_dd.code_origin.type"), "entry", "{request:#}");
        assert_eq!(meta(request, "_dd.code_origin.frames.0.file"), file);
        assert_eq!(meta(request, "_dd.code_origin.frames.0.line"), line);
        assert_eq!(meta(request, "_dd.code_origin.frames.0.type"), "__main__");
        assert_eq!(meta(request, "_dd.code_origin.frames.0.method"), method);
    }
    the_404_has_no_route_and_the_run_ends_clean(&spans, &agent, daemon);
}

/// gunicorn's gthread workers serve requests on a pool of threads, several at once: each
/// request's view (seen through its statements, on the thread that serves it) is that request's
/// child, and its statements the view's.
#[test]
fn gthread_workers_give_each_concurrent_request_its_own_view() {
    let _serial = ddtrace_tests::serial();
    let agent = TestAgent::start();
    let server = ddtrace_tests::target_app::Gunicorn::serve(
        "wsgi_sqlite_app:app",
        1,
        &["--worker-class", "gthread", "--threads", "4"],
    );
    let pid = server.master_pid().to_string();
    let url = agent.url();
    let mut daemon = AgentProcess::start(&["--pid", &pid, "--agent-url", &url, "--service", "shop"]);
    daemon.wait_for_stderr("sqlite: attached", ATTACH_TIMEOUT);
    daemon.wait_attached(ATTACH_TIMEOUT);
    let port = server.port;
    let clients: Vec<_> = (0..8)
        .map(|i| {
            std::thread::spawn(move || {
                let (status, body) = ddtrace_tests::http::get(port, &format!("/items/{i}")).expect("gunicorn answers");
                assert_eq!(status, 200, "{body}");
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }
    let spans = agent.wait_for_spans(Duration::from_secs(10), |spans| {
        spans.iter().filter(|s| s["meta"]["span.kind"] == "server").count() >= 8
    });
    let requests: Vec<&Value> = spans.iter().filter(|s| s["meta"]["span.kind"] == "server").collect();
    assert_eq!(requests.len(), 8, "{spans:#?}\n{}", daemon.stderr_text());
    for request in &requests {
        let views: Vec<&Value> = spans
            .iter()
            .filter(|s| s["name"] == "wsgi_sqlite_app.serve" && s["parent_id"] == request["span_id"])
            .collect();
        assert_eq!(views.len(), 1, "one view under {request:#}\n{spans:#?}");
        let statements =
            spans.iter().filter(|s| s["name"] == "sqlite.query" && s["parent_id"] == views[0]["span_id"]).count();
        assert!(statements >= 3, "{statements} statements under {:#}\n{spans:#?}", views[0]);
        assert_eq!(meta(request, "_dd.code_origin.frames.0.method"), "serve");
        // Its view seen, each request is Flask's, named after its rule.
        assert_eq!(request["name"], "flask.request", "{request:#}");
        assert_eq!(request["resource"], "GET /<path:path>", "{request:#}");
    }
    agent.assert_checks_passed();
    daemon.signal(libc::SIGINT);
    assert!(daemon.wait_exit(Duration::from_secs(10)).success());
    server.stop();
}

/// Django under gunicorn: the view that served each request (a function view routed by `path`, a
/// class-based view under `include` and `re_path`), seen through the frames of its statements, is
/// dd-trace-py's `django.view` span with its entry code origin; the request is named after the
/// route Django resolved it to (read from the project's URL patterns in its memory), as
/// dd-trace-py names it: the patterns joined (`api/` + `^orders/...$` without its `^`).
#[test]
fn django_views_are_view_spans_around_their_statements_with_code_origin() {
    let _serial = ddtrace_tests::serial();
    let agent = TestAgent::start();
    let server = ddtrace_tests::target_app::Gunicorn::serve("django_app:application", 1, &[]);
    let pid = server.master_pid().to_string();
    let url = agent.url();
    let mut daemon = AgentProcess::start(&["--pid", &pid, "--agent-url", &url, "--service", "shop"]);
    daemon.wait_for_stderr("sqlite: attached", ATTACH_TIMEOUT);
    daemon.wait_attached(ATTACH_TIMEOUT);
    for target in ["/users/42", "/api/orders/7"] {
        let (status, body) = ddtrace_tests::http::get(server.port, target).expect("django answers");
        assert_eq!(status, 200, "{target}: {body}");
    }
    let spans = agent.wait_for_spans(Duration::from_secs(10), |spans| {
        spans.iter().filter(|s| s["name"] == "django.view").count() >= 2
    });
    let app = ddtrace_tests::workspace_root().join("tests/apps/django_app.py").canonicalize().unwrap();
    for (route, view_resource, method, line) in [
        ("users/<int:uid>", "django_app.user", "user", "37"),
        ("api/orders/(?P<oid>[0-9]+)$", "django_app.Orders.get", "Orders.get", "42"),
    ] {
        let resource = format!("GET {route}");
        let request = spans
            .iter()
            .find(|s| s["resource"] == resource && s["meta"]["span.kind"] == "server")
            .unwrap_or_else(|| panic!("{resource}\n{spans:#?}\n{}", daemon.stderr_text()));
        let view = spans
            .iter()
            .find(|s| s["name"] == "django.view" && s["parent_id"] == request["span_id"])
            .unwrap_or_else(|| panic!("the view of {resource}\n{spans:#?}"));
        assert_eq!(view["resource"], view_resource);
        assert_eq!(meta(view, "component"), "django");
        assert_eq!((request["name"].as_str(), meta(request, "component")), (Some("django.request"), "django"));
        assert_eq!(meta(request, "http.route"), route);
        for span in [request, view] {
            assert_eq!(meta(span, "_dd.code_origin.type"), "entry", "{span:#}");
            assert_eq!(meta(span, "_dd.code_origin.frames.0.file"), app.display().to_string());
            assert_eq!(meta(span, "_dd.code_origin.frames.0.line"), line);
            assert_eq!(meta(span, "_dd.code_origin.frames.0.type"), "django_app");
            assert_eq!(meta(span, "_dd.code_origin.frames.0.method"), method);
        }
        let queries = spans.iter().filter(|s| s["name"] == "sqlite.query" && s["parent_id"] == view["span_id"]).count();
        assert!(queries >= 3, "{queries} statements under {view:#}\n{spans:#?}");
    }
    agent.assert_checks_passed();
    daemon.signal(libc::SIGINT);
    assert!(daemon.wait_exit(Duration::from_secs(10)).success());
    server.stop();
}

#[test]
fn a_traced_client_gets_client_spans_for_its_calls() {
    let _serial = ddtrace_tests::serial();
    let agent = TestAgent::start();
    let server = StaticServer::start();
    let mut worker = ddtrace_tests::target_app::SqliteWorker::spawn();
    let pid = worker.pid().to_string();
    let url = agent.url();
    let mut daemon = AgentProcess::start(&["--pid", &pid, "--agent-url", &url, "--service", "caller"]);
    daemon.wait_attached(ATTACH_TIMEOUT);
    let port = server.port;
    worker.run(&format!("fetch http://127.0.0.1:{port}/users/42?api_key=s3cr3t"));
    worker.run(&format!("fetch http://127.0.0.1:{port}/nothing/here"));

    let spans = agent.wait_for_spans(Duration::from_secs(10), |spans| spans.len() >= 2);
    assert_eq!(spans.len(), 2, "{spans:#?}\n{}", daemon.stderr_text());
    let ok = spans.iter().find(|s| s["resource"] == "GET /users/?").expect("the first call");
    assert_eq!(ok["type"], "http");
    assert_eq!(meta(ok, "span.kind"), "client");
    assert_eq!(meta(ok, "out.host"), "127.0.0.1");
    assert_eq!(meta(ok, "network.destination.port"), port.to_string());
    assert_eq!(meta(ok, "http.status_code"), "200");
    assert!(!meta(ok, "http.url").contains("s3cr3t"), "{}", meta(ok, "http.url"));
    assert!(meta(ok, "http.useragent").starts_with("Python-urllib"));
    let missing = spans.iter().find(|s| s["resource"] == "GET /nothing/here").expect("the 404 call");
    assert_eq!(meta(missing, "http.status_code"), "404");
    // For a client, a 4xx is an error (dd-trace-py's default client error statuses).
    assert_eq!(missing["error"], 1, "{missing:#}");
    agent.assert_checks_passed();
    worker.exit();
    assert!(daemon.wait_exit(Duration::from_secs(15)).success());
}

#[test]
fn a_thousand_keep_alive_requests_on_one_connection_give_a_thousand_spans() {
    let _serial = ddtrace_tests::serial();
    let agent = TestAgent::start();
    let server = ddtrace_tests::target_app::KeepAliveServer::start();
    let port = server.port;
    let pid = server.pid().to_string();
    let url = agent.url();
    let mut daemon = AgentProcess::start(&["--pid", &pid, "--agent-url", &url, "--service", "keep-alive"]);
    daemon.wait_attached(ATTACH_TIMEOUT);

    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
    let started = std::time::Instant::now();
    for i in 0..1000 {
        // Ids in the path, so the resource shows quantization at volume too.
        // One write per request: `write!` would send each piece apart, and Nagle's algorithm
        // against the server's delayed ACK would hold each request ~40 ms.
        ddtrace_tests::http::keep_alive_get(&mut stream, &mut reader, port, &format!("/items/{i}"));
    }
    drop(stream);
    eprintln!("1000 requests in {} ms", started.elapsed().as_millis());

    let spans = agent.wait_for_spans(Duration::from_secs(20), |spans| spans.len() >= 1000);
    eprintln!("spans at the agent after {} ms", started.elapsed().as_millis());
    assert_eq!(spans.len(), 1000, "{}", daemon.stderr_text());
    assert!(spans.iter().all(|s| s["resource"] == "GET /items/?" && s["meta"]["http.status_code"] == "200"));
    agent.assert_checks_passed();
    daemon.signal(libc::SIGINT);
    assert!(daemon.wait_exit(Duration::from_secs(10)).success());
}

/// Requests over a Unix socket, a connection each, one after the other, the server closing
/// first: the kernel gives no sign of a Unix socket's close, and a new socket often takes the
/// same fd and the same kernel object as the one before (its inode number tells them apart).
/// Each connection is its own: five connections, five client spans.
#[test]
fn unix_socket_connections_one_after_the_other_are_each_their_own() {
    let _serial = ddtrace_tests::serial();
    let agent = TestAgent::start();
    let directory = tempfile_directory();
    let path = directory.join("api.sock").display().to_string();
    let mut server = ddtrace_tests::target_app::SqliteWorker::spawn_script("unix_http.py", &[&path], &[]);
    server.run("serve");
    let mut client = ddtrace_tests::target_app::SqliteWorker::spawn_script("unix_http.py", &[&path], &[]);
    let mut daemon = AgentProcess::attach(client.pid(), &agent.url(), &[]);
    daemon.wait_attached(ATTACH_TIMEOUT);
    client.run("fetch 5");
    let spans = agent.wait_for_spans(Duration::from_secs(10), |spans| spans.len() >= 5);
    client.exit();
    assert!(daemon.wait_exit(Duration::from_secs(15)).success());
    let stderr = daemon.stderr_text();
    let context = format!("{spans:#?}\n{stderr}");
    assert_eq!(spans.len(), 5, "{context}");
    assert!(spans.iter().all(|s| s["resource"] == "GET /items/?" && meta(s, "span.kind") == "client"), "{context}");
    assert!(stderr.contains(" http=5 "), "five connections, none glued to the one before: {context}");
    agent.assert_checks_passed();
    server.exit();
    let _ = std::fs::remove_dir_all(directory);
}

/// A fresh directory under the system's temporary one.
fn tempfile_directory() -> std::path::PathBuf {
    let directory = std::env::temp_dir().join(format!("ddtrace-unix-http-{}", std::process::id()));
    std::fs::create_dir_all(&directory).unwrap();
    directory
}
