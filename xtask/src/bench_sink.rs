//! A trace intake for benchmarks that push more spans than `ddapm-test-agent` can take.
//!
//! `cargo xtask bench` makes ~1M spans a second of its probed loop. The test agent (Python)
//! decodes and keeps every payload: at that rate it would fall behind, hold gigabytes, and take a
//! core from the 2 the target and our agent share. This sink speaks just enough HTTP/1.1 for our
//! agent's exporter (libdatadog's, unchanged) to run its real path (msgpack encoding, HTTP), reads
//! each body, counts the traces it announces, and answers as the Datadog Agent does. Tests keep
//! asserting against the real test agent; this only stands in where its own cost would blur ours.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    thread,
};

use anyhow::{Context, Result};

/// What the sink received so far.
#[derive(Debug, Default)]
pub(crate) struct SinkCounts {
    pub(crate) traces: AtomicU64,
    pub(crate) body_bytes: AtomicU64,
}

/// A listening sink; it serves until the process exits.
pub(crate) struct TraceSink {
    pub(crate) url: String,
    pub(crate) counts: Arc<SinkCounts>,
}

impl TraceSink {
    pub(crate) fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").context("the bench's trace sink could not listen")?;
        let url = format!("http://{}", listener.local_addr()?);
        let counts = Arc::new(SinkCounts::default());
        let shared = counts.clone();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let counts = shared.clone();
                thread::spawn(move || serve(stream, &counts));
            }
        });
        Ok(Self { url, counts })
    }
}

/// One keep-alive connection: requests until the client closes it or sends something we cannot
/// frame (then the connection is dropped; the exporter reconnects).
fn serve(stream: TcpStream, counts: &SinkCounts) {
    let Ok(mut writer) = stream.try_clone() else { return };
    let mut reader = BufReader::new(stream);
    let mut body = Vec::new();
    loop {
        let Some(request) = read_head(&mut reader) else { return };
        body.resize(request.content_length, 0);
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let answer: &[u8] = if request.path.ends_with("/traces") {
            counts.traces.fetch_add(request.trace_count, Ordering::Relaxed);
            counts.body_bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 22\r\n\r\n{\"rate_by_service\":{}}"
        } else {
            // `/info`, remote configuration, telemetry: absent, as on an agent that lacks them.
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"
        };
        if writer.write_all(answer).is_err() {
            return;
        }
    }
}

struct RequestHead {
    path: String,
    content_length: usize,
    trace_count: u64,
}

/// The request line and the headers the sink needs; `None` at end of stream or on a request it
/// cannot frame (chunked bodies: libdatadog sends a length).
fn read_head(reader: &mut impl BufRead) -> Option<RequestHead> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let path = line.split_whitespace().nth(1)?.to_string();
    let mut head = RequestHead { path, content_length: 0, trace_count: 0 };
    loop {
        line.clear();
        // End of stream inside the headers: no request.
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let header = line.trim_end();
        if header.is_empty() {
            return Some(head);
        }
        let (name, value) = header.split_once(':')?;
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "content-length" => head.content_length = value.parse().ok()?,
            "x-datadog-trace-count" => head.trace_count = value.parse().ok()?,
            "transfer-encoding" if value.eq_ignore_ascii_case("chunked") => return None,
            _ => {}
        }
    }
}
