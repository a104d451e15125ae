//! Attaching to a live service: keep-alive connections it already had open (a load balancer's,
//! a client session's) are followed from their next request, in clear text and over TLS.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    time::Duration,
};

use ddtrace_tests::{
    agent_process::AgentProcess,
    http::{free_port, keep_alive_get as get},
    target_app::KeepAliveServer,
    test_agent::TestAgent,
    tls::{TestCertificate, TlsApp},
};

const ATTACH_TIMEOUT: Duration = Duration::from_secs(20);

#[test]
fn a_keep_alive_connection_opened_before_attach_is_followed_from_its_next_request() {
    let _serial = ddtrace_tests::serial();
    let agent = TestAgent::start();
    let server = KeepAliveServer::start();
    let port = server.port;

    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    assert!(get(&mut stream, &mut reader, port, "/before/1").contains("200"));
    // Half a request is in flight when the agent attaches: its end must not look like a message.
    stream.write_all(b"GET /straddling/2 HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: ").unwrap();

    let pid = server.pid().to_string();
    let url = agent.url();
    let mut daemon = AgentProcess::start(&["--pid", &pid, "--agent-url", &url, "--service", "live"]);
    daemon.wait_for_stderr("following 1 TCP connections already open, from their next message", ATTACH_TIMEOUT);
    stream.write_all(b"padding\r\n\r\n").unwrap();
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    assert!(status.contains("200"), "{status}");
    let mut rest = String::new();
    while rest != "\r\n" {
        rest.clear();
        reader.read_line(&mut rest).unwrap();
    }
    let mut body = [0u8; 17];
    reader.read_exact(&mut body).unwrap();
    for i in 0..3 {
        assert!(get(&mut stream, &mut reader, port, &format!("/after/{i}")).contains("200"));
    }

    agent.wait_for_spans(Duration::from_secs(10), |spans| spans.len() >= 3);
    std::thread::sleep(Duration::from_millis(1500));
    let spans = agent.spans();
    let resources: Vec<&str> = spans.iter().filter_map(|s| s["resource"].as_str()).collect();
    // The straddling request's head began before we could see it: no span rather than a wrong one.
    assert_eq!(resources, ["GET /after/?"; 3], "{spans:#?}\n{}", daemon.stderr_text());
    for span in &spans {
        assert_eq!(span["meta"]["span.kind"], "server");
        assert_eq!(span["meta"]["network.client.ip"], "127.0.0.1");
    }
    agent.assert_checks_passed();
    daemon.signal(libc::SIGINT);
    assert!(daemon.wait_exit(Duration::from_secs(10)).success());
}

#[test]
fn a_tls_session_opened_before_attach_is_followed_from_its_next_request() {
    let _serial = ddtrace_tests::serial();
    let agent = TestAgent::start();
    let certificate = TestCertificate::make("attach");
    let port = free_port();
    let _server = TlsApp::serve(port, &certificate);
    let mut client = TlsApp::client(&certificate);
    let base = format!("https://localhost:{port}");
    // The session (TCP connection and TLS handshake) exists before the agent does.
    assert_eq!(client.get(&format!("{base}/users/1")), 200);

    let pid = client.pid().to_string();
    let url = agent.url();
    let mut daemon = AgentProcess::start(&["--pid", &pid, "--agent-url", &url, "--service", "live-tls"]);
    daemon.wait_for_stderr("following 1 TCP connections already open, from their next message", ATTACH_TIMEOUT);
    assert_eq!(client.get(&format!("{base}/users/2")), 200);
    assert_eq!(client.get(&format!("{base}/fail")), 503);

    agent.wait_for_spans(Duration::from_secs(10), |spans| spans.len() >= 2);
    std::thread::sleep(Duration::from_millis(1500));
    let spans = agent.spans();
    let mut resources: Vec<&str> = spans.iter().filter_map(|s| s["resource"].as_str()).collect();
    resources.sort();
    assert_eq!(resources, ["GET /fail", "GET /users/?"], "{spans:#?}\n{}", daemon.stderr_text());
    for span in &spans {
        assert_eq!(span["meta"]["span.kind"], "client");
        // The peer comes from the kernel's table of the connection found at attach.
        assert_eq!(span["meta"]["network.destination.port"], port.to_string());
        assert!(span["meta"]["http.url"].as_str().unwrap().starts_with("https://"), "{span:#}");
    }
    agent.assert_checks_passed();
    daemon.signal(libc::SIGINT);
    assert!(daemon.wait_exit(Duration::from_secs(10)).success());
}
