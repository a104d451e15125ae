//! Both ends of an HTTP connection traced: a Python client and a Python `http.server`, parent and
//! child under one daemon. The server's span is the child of the client's span, found through
//! the connection's addresses in the kernel: nothing is written into the request.

use std::{
    io::{BufRead, BufReader, Write},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::Duration,
};

use ddtrace_tests::{agent_process::AgentProcess, target_app::python_executable, test_agent::TestAgent};
use serde_json::Value;

const ATTACH_TIMEOUT: Duration = Duration::from_secs(20);

/// `tests/apps/linked_pair.py`: the client process, with the server as its child.
struct LinkedPair {
    client: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    server_pid: u32,
}

impl LinkedPair {
    fn spawn() -> Self {
        let script = ddtrace_tests::workspace_root().join("tests/apps/linked_pair.py");
        let mut client = Command::new(python_executable())
            .arg("-u")
            .arg(&script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python starts");
        let stdin = client.stdin.take().unwrap();
        let mut stdout = BufReader::new(client.stdout.take().unwrap());
        let mut ready = String::new();
        stdout.read_line(&mut ready).unwrap();
        let server_pid = ready.split_whitespace().nth(2).and_then(|p| p.parse().ok());
        let server_pid = server_pid.unwrap_or_else(|| panic!("expected `ready <port> <pid>`, got {ready:?}"));
        Self { client, stdin, stdout, server_pid }
    }

    /// GETs `path` from the server; returns the request headers the server received.
    fn fetch(&mut self, path: &str) -> serde_json::Map<String, Value> {
        writeln!(self.stdin, "fetch {path}").unwrap();
        self.stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        let body = line.trim().strip_prefix("ok ").unwrap_or_else(|| panic!("client answered {line:?}"));
        serde_json::from_str::<Value>(body).unwrap().as_object().unwrap().clone()
    }

    fn exit(mut self) {
        writeln!(self.stdin, "exit").unwrap();
        self.stdin.flush().unwrap();
        let _ = self.client.wait();
    }
}

impl Drop for LinkedPair {
    fn drop(&mut self) {
        // SAFETY: plain kill(2) of our child's child, if still there.
        unsafe { libc::kill(self.server_pid as i32, libc::SIGKILL) };
        let _ = self.client.kill();
        let _ = self.client.wait();
    }
}

fn kind(span: &Value) -> &str {
    span["meta"]["span.kind"].as_str().unwrap_or_default()
}

#[test]
fn the_server_span_of_a_traced_client_call_is_the_client_spans_child_without_any_header() {
    let _serial = ddtrace_tests::serial();
    let agent = TestAgent::start();
    let mut pair = LinkedPair::spawn();
    let pid = pair.client.id().to_string();
    let url = agent.url();
    let mut daemon = AgentProcess::start(&["--pid", &pid, "--agent-url", &url, "--service", "linked"]);
    daemon.wait_for_stderr("tracing child process", ATTACH_TIMEOUT);
    daemon.wait_attached(ATTACH_TIMEOUT);
    assert!(
        !daemon.stderr_text().contains("socket addresses are unknown"),
        "this machine's kernel publishes BTF; the daemon could not use it:\n{}",
        daemon.stderr_text()
    );

    let mut received = Vec::new();
    for path in ["/users/1", "/users/2"] {
        received.push(pair.fetch(path));
    }
    for headers in &received {
        assert!(headers.contains_key("Host"), "the server echoed its request headers: {headers:?}");
        let propagation: Vec<&String> = headers
            .keys()
            .filter(|name| {
                let name = name.to_ascii_lowercase();
                name.starts_with("x-datadog-") || name == "traceparent" || name == "tracestate"
            })
            .collect();
        assert!(propagation.is_empty(), "the request was written into: {propagation:?}");
    }

    let spans = agent.wait_for_spans(Duration::from_secs(10), |spans| spans.len() >= 4);
    let requests: Vec<&Value> = spans.iter().filter(|s| s["name"] == "http.request").collect();
    assert_eq!(requests.len(), 4, "{spans:#?}\n{}", daemon.stderr_text());
    let clients: Vec<&Value> = requests.iter().copied().filter(|s| kind(s) == "client").collect();
    let servers: Vec<&Value> = requests.iter().copied().filter(|s| kind(s) == "server").collect();
    assert_eq!((clients.len(), servers.len()), (2, 2), "{requests:#?}");
    for client in &clients {
        let server = servers
            .iter()
            .find(|s| s["parent_id"] == client["span_id"])
            .unwrap_or_else(|| panic!("no server span under {client:#}\n{servers:#?}\n{}", daemon.stderr_text()));
        assert_eq!(server["trace_id"], client["trace_id"]);
        assert_eq!(server["resource"], client["resource"]);
        assert_ne!(server["parent_id"], 0);
    }
    assert_ne!(clients[0]["trace_id"], clients[1]["trace_id"], "two calls from nothing open: two traces");
    agent.assert_checks_passed();
    pair.exit();
    assert!(daemon.wait_exit(Duration::from_secs(15)).success(), "{}", daemon.stderr_text());
}
