//! Redis through the stream layer, as socket activity: a client (process 7) connected to
//! 127.0.0.1:6379.

use std::sync::{Arc, Mutex};

use super::RedisProtocol;
use crate::{
    config::SpanSchema,
    core::{test_support::tree_recording_ends, ContextTree, ExecutionContext, SpanKind},
    integrations::streams::StreamLayer,
    probes::{SocketActivity, SocketOp},
};

const PID: u32 = 7;
const FD: u32 = 5;

struct Client {
    layer: StreamLayer,
    contexts: ContextTree,
    ended: Arc<Mutex<Vec<ExecutionContext>>>,
    now: u64,
}

impl Client {
    fn connected() -> Self {
        let (contexts, ended) = tree_recording_ends();
        let mut client = Self {
            layer: StreamLayer::new(vec![Box::new(RedisProtocol { schema: SpanSchema::V0 })]),
            contexts,
            ended,
            now: 1_000,
        };
        client.event(SocketOp::Connected, b"", 0);
        client
    }

    fn event(&mut self, op: SocketOp, data: &[u8], uncaptured: usize) {
        self.now += 100;
        let activity = SocketActivity {
            tgid: PID,
            tid: PID,
            ktime_ns: self.now,
            fd: FD,
            op,
            length: (data.len() + uncaptured) as u64,
            data: data.into(),
            peer: (op == SocketOp::Connected).then(|| "127.0.0.1:6379".parse().unwrap()),
            local: None,
            tls_session: None,
            goroutine: 0,
        };
        self.layer.on_socket(&activity, &mut self.contexts);
    }

    fn write(&mut self, data: &[u8]) {
        self.event(SocketOp::Sent, data, 0);
    }

    fn read(&mut self, data: &[u8]) {
        self.event(SocketOp::Received, data, 0);
    }

    fn spans(&self) -> Vec<ExecutionContext> {
        self.ended.lock().unwrap().clone()
    }
}

fn command(args: &[&str]) -> Vec<u8> {
    let mut wire = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        wire.extend(format!("${}\r\n{arg}\r\n", arg.len()).into_bytes());
    }
    wire
}

#[test]
fn a_command_and_its_reply_are_one_span_tagged_as_dd_trace_py_tags_it() {
    let mut client = Client::connected();
    client.write(&command(&["SET", "user:1", "s3cret"]));
    client.read(b"+OK\r\n");
    client.write(&command(&["GET", "user:1"]));
    client.read(b"$6\r\ns3cret\r\n");
    let spans = client.spans();
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let set = &spans[0].data;
    assert_eq!(
        (set.name, set.resource.as_ref(), set.span_type, set.kind),
        ("redis.command", "SET", "redis", SpanKind::Client)
    );
    assert_eq!(set.integration_service, Some("redis"));
    assert_eq!(set.meta["redis.raw_command"], "SET user:1 ?", "the value never leaves the host");
    assert_eq!(set.meta["out.host"], "127.0.0.1");
    assert_eq!(set.metrics["network.destination.port"], 6379.0);
    assert_eq!(set.metrics["redis.args_length"], 3.0);
    assert_eq!(set.metrics["out.redis_db"], 0.0);
    assert!(spans[0].start_unix_ns < spans[0].end_unix_ns);
    let get = &spans[1].data;
    assert_eq!((get.resource.as_ref(), get.meta["redis.raw_command"].as_str()), ("GET", "GET user:1"));
    assert_eq!(get.metrics["db.row_count"], 1.0);
    assert!(get.error.is_none());
}

#[test]
fn a_pipeline_is_one_span_ended_by_its_last_reply_and_a_transaction_shows_what_was_queued() {
    let mut client = Client::connected();
    let mut pipeline = command(&["MULTI"]);
    pipeline.extend(command(&["SET", "a", "1"]));
    pipeline.extend(command(&["INCR", "a"]));
    pipeline.extend(command(&["EXEC"]));
    client.write(&pipeline);
    client.read(b"+OK\r\n+QUEUED\r\n");
    assert!(client.spans().is_empty(), "two replies of four");
    client.read(b"+QUEUED\r\n*2\r\n+OK\r\n:2\r\n");
    let spans = client.spans();
    assert_eq!(spans.len(), 1, "{spans:#?}");
    let data = &spans[0].data;
    assert_eq!(data.resource, "SET\nINCR");
    assert_eq!(data.meta["redis.raw_command"], "SET a ?\nINCR a");
    assert_eq!(data.metrics["redis.pipeline_length"], 2.0);
    assert!(!data.metrics.contains_key("redis.args_length"));
}

#[test]
fn errors_select_and_resp3_replies_are_read() {
    let mut client = Client::connected();
    client.write(&command(&["SELECT", "3"]));
    client.read(b"+OK\r\n");
    client.write(&command(&["LPUSH", "k", "v"]));
    client.read(b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n");
    // RESP3: a map, with a push (pub/sub) in between that answers nothing.
    client.write(&command(&["HGETALL", "h"]));
    client.read(b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n%1\r\n$1\r\nf\r\n$1\r\nv\r\n");
    client.write(&command(&["MGET", "a", "b", "c"]));
    client.read(b"*3\r\n$1\r\n1\r\n$-1\r\n$1\r\n3\r\n");
    let spans = client.spans();
    // The leading SELECT is the driver's set-up (no span).
    assert_eq!(spans.len(), 3, "{spans:#?}");
    let lpush = &spans[0].data;
    let error = lpush.error.as_ref().expect("an error reply");
    assert_eq!(error.kind, "redis.exceptions.ResponseError");
    assert!(error.message.starts_with("WRONGTYPE Operation"), "{error:?}");
    assert_eq!(lpush.metrics["out.redis_db"], 3.0, "after SELECT 3");
    assert_eq!(spans[1].data.resource, "HGETALL");
    assert_eq!(spans[1].data.metrics["db.row_count"], 1.0);
    assert_eq!(spans[2].data.metrics["db.row_count"], 2.0, "MGET: its non-empty values");
}

#[test]
fn a_value_larger_than_the_capture_is_skipped_and_a_cut_pipeline_drops_what_waits() {
    let mut client = Client::connected();
    // SET with a 100 kB value of which the capture kept the first bytes.
    let mut head = b"*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n$100000\r\n".to_vec();
    head.extend(std::iter::repeat_n(b'x', 100));
    let unseen = 100_000 - 100 + 2;
    client.event(SocketOp::Sent, &head, unseen);
    client.read(b"+OK\r\n");
    let spans = client.spans();
    assert_eq!(spans.len(), 1, "{spans:#?}");
    assert_eq!(spans[0].data.meta["redis.raw_command"], "SET big ?");
    assert!(spans[0].data.error.is_none());
    // A pipeline cut inside its framing: nothing can be paired; the next command is again.
    let mut pipeline = command(&["GET", "a"]);
    pipeline.extend(b"*2\r\n$3\r\nGE");
    client.event(SocketOp::Sent, &pipeline, 500);
    client.read(b"$-1\r\n$-1\r\n");
    client.write(&command(&["PING"]));
    client.read(b"+PONG\r\n");
    let spans = client.spans();
    assert_eq!(spans.last().unwrap().data.resource, "PING", "{spans:#?}");
    assert!(spans.last().unwrap().data.error.is_none());
}

#[test]
fn garbage_and_other_protocols_give_no_span() {
    let mut client = Client::connected();
    client.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    client.read(b"+OK\r\n");
    client.write(&command(&["GET", "a"]));
    client.read(b"$1\r\na\r\n");
    assert!(client.spans().is_empty(), "the connection's first bytes were not RESP");
    let mut client = Client::connected();
    client.write(b"*1\r\n$4\r\nPING\r\n");
    client.read(b"\x00\x01garbage\r\n");
    let garbage_read = client.now;
    client.close();
    // Something answered, unreadable: the command ended with that read, and nothing is made
    // up about its reply.
    let spans = client.spans();
    assert_eq!(spans.len(), 1);
    assert!(spans[0].data.error.is_none() && !spans[0].data.metrics.contains_key("db.row_count"));
    let started = garbage_read - 100;
    assert_eq!(spans[0].end_unix_ns - spans[0].start_unix_ns, (garbage_read - started) as i64);
}

impl Client {
    fn close(&mut self) {
        self.event(SocketOp::Closed, b"", 0);
    }
}

#[test]
fn a_reply_larger_than_the_capture_ends_with_the_last_read_before_the_next_command() {
    let mut client = Client::connected();
    client.write(&command(&["HGETALL", "huge"]));
    // The reply's first read: its header and some fields, most of it past the capture.
    client.event(SocketOp::Received, b"*20000\r\n$5\r\nfield\r\n$5\r\nvalue\r\n$5\r\nfi", 60_000);
    client.event(SocketOp::Received, b"eld\r\n$5\r\nvalue", 60_000);
    let last_read = client.now;
    assert!(client.spans().is_empty());
    client.write(&command(&["PING"]));
    client.read(b"+PONG\r\n");
    let spans = client.spans();
    assert_eq!(spans.len(), 2, "{spans:#?}");
    assert_eq!(spans[0].data.resource, "HGETALL");
    assert!(spans[0].data.error.is_none());
    let clock_offset = spans[1].start_unix_ns - (last_read as i64 + 100);
    assert_eq!(spans[0].end_unix_ns - clock_offset, last_read as i64, "ended at its last read");
    assert_eq!(spans[1].data.resource, "PING");
}

#[test]
fn a_drivers_connection_set_up_gives_no_span() {
    let mut client = Client::connected();
    client.write(&command(&["CLIENT", "SETINFO", "LIB-NAME", "redis-py"]));
    client.read(b"+OK\r\n");
    client.write(&command(&["SELECT", "2"]));
    client.read(b"+OK\r\n");
    client.write(&command(&["GET", "k"]));
    client.read(b"$-1\r\n");
    // Once the application spoke, a SELECT is its own.
    client.write(&command(&["SELECT", "1"]));
    client.read(b"+OK\r\n");
    let spans = client.spans();
    let resources: Vec<&str> = spans.iter().map(|s| s.data.resource.as_ref()).collect();
    assert_eq!(resources, ["GET", "SELECT"]);
    assert_eq!(spans[0].data.metrics["out.redis_db"], 2.0);
    assert_eq!(spans[0].data.metrics["db.row_count"], 0.0, "a missing key: no row");
}
