use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc::{self, SyncSender, TryRecvError, TrySendError},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use crate::intake::{msgpack_v04::V04Encoder, traces::TraceChunk, EncodedPayload, IntakeError, TraceSink};

/// Counters of what the writer delivered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterStats {
    pub sent_chunks: u64,
    pub sent_spans: u64,
    pub failed_chunks: u64,
    /// Chunks dropped because the queue to the sink was full (the sink is slower than the target).
    pub dropped_chunks: u64,
}

/// Chunks that make the writer flush before its interval: at high span rates it is woken every
/// this many chunks, so the queue never fills while the sink keeps up.
pub const BATCH_CHUNKS: u64 = 4096;

/// Most chunks waiting for the sink. Past it, new chunks are dropped and counted: a slow or
/// dead intake must not grow the daemon's memory without bound.
pub const QUEUE_CAPACITY: usize = 65_536;

/// Most bytes one encoded payload grows to before it is handed to the writer. Past 512 KiB
/// (mimalloc's largest pooled block) a buffer is mapped and unmapped per payload, and every
/// 4 KiB written costs a page fault; 320 KiB stays under it with room for the last trace.
pub const PAYLOAD_BYTES: usize = 320 * 1024;

/// What a payload's buffer starts with.
const INITIAL_PAYLOAD_BYTES: usize = 16 * 1024;

/// Most encoded bytes waiting for the sink (about 45k spans); past it chunks are dropped and
/// counted, as with [`QUEUE_CAPACITY`].
pub const QUEUED_BYTES_CAPACITY: usize = 16 * 1024 * 1024;

enum Message {
    Chunk(TraceChunk),
    Shutdown,
}

/// Payloads being encoded (one per container) and those full, waiting for the writer.
#[derive(Default)]
struct Payloads {
    open: Vec<EncodedPayload>,
    full: Vec<EncodedPayload>,
    /// Buffer capacity held by the payloads above and those being sent.
    queued_bytes: usize,
    /// The writer has taken its last payloads.
    closed: bool,
}

/// The encoding side of a sink with a wire format: chunks are encoded by whoever sends them.
struct Encoding {
    encoder: V04Encoder,
    payloads: Mutex<Payloads>,
}

impl Encoding {
    /// Appends `chunk` to its container's payload; `None` when the queue is full (dropped),
    /// else whether a payload just filled up.
    fn push(&self, chunk: &TraceChunk) -> Option<bool> {
        let mut payloads = self.payloads.lock().unwrap();
        if payloads.closed || payloads.queued_bytes >= QUEUED_BYTES_CAPACITY {
            return None;
        }
        if chunk.spans.is_empty() {
            return Some(false);
        }
        // Grows by doubling to the budget: a quiet service's payloads stay small.
        let opened = payloads.open.len();
        let at = EncodedPayload::index_for(&mut payloads.open, chunk, &self.encoder, INITIAL_PAYLOAD_BYTES);
        let payload = &mut payloads.open[at];
        // Counted by capacity: a buffer that doubled holds its whole allocation (all of it for
        // a payload started just now).
        let before = if at == opened { 0 } else { payload.bytes.capacity() };
        payload.append(&self.encoder, chunk);
        let (grown, full) = (payload.bytes.capacity() - before, payload.bytes.len() >= PAYLOAD_BYTES);
        payloads.queued_bytes += grown;
        if full {
            let payload = payloads.open.swap_remove(at);
            payloads.full.push(payload);
        }
        Some(full)
    }

    /// The full payloads, and the open ones too when `all`, finished. They still count as queued
    /// until [`sent`](Self::sent): a stalled send must hold back new chunks too.
    fn take(&self, all: bool) -> Vec<EncodedPayload> {
        self.take_then(all, false)
    }

    /// The last [`take`](Self::take): chunks pushed after it are dropped and counted.
    fn take_last(&self) -> Vec<EncodedPayload> {
        self.take_then(true, true)
    }

    fn take_then(&self, all: bool, close: bool) -> Vec<EncodedPayload> {
        let mut taken = {
            let mut payloads = self.payloads.lock().unwrap();
            payloads.closed |= close;
            let mut taken = std::mem::take(&mut payloads.full);
            if all {
                taken.append(&mut payloads.open);
            }
            taken
        };
        for payload in &mut taken {
            payload.finish(&self.encoder);
        }
        taken
    }

    /// A payload of `bytes` (its buffer's capacity) taken by [`take`](Self::take) is gone.
    fn sent(&self, bytes: usize) {
        self.payloads.lock().unwrap().queued_bytes -= bytes;
    }
}

/// Sends finished chunks from a thread of its own, so a slow or absent agent never stalls the
/// event pipeline. Chunks are batched and flushed every `interval`.
pub struct TraceWriter {
    tx: SyncSender<Message>,
    dropped: Arc<AtomicU64>,
    stats: Arc<Mutex<WriterStats>>,
    encoding: Option<Arc<Encoding>>,
    thread: thread::Thread,
    done: mpsc::Receiver<()>,
}

/// The aggregator's end of the writer.
#[derive(Clone)]
pub struct ChunkSender {
    tx: SyncSender<Message>,
    dropped: Arc<AtomicU64>,
    queued: Arc<AtomicU64>,
    encoding: Option<Arc<Encoding>>,
    writer: thread::Thread,
}

impl ChunkSender {
    /// Queues `chunk` without ever blocking the event pipeline; drops and counts it when full.
    /// With a sink that has a wire format, the chunk is encoded here.
    pub fn send(&self, chunk: TraceChunk) {
        if let Some(encoding) = &self.encoding {
            match encoding.push(&chunk) {
                Some(true) => self.writer.unpark(),
                Some(false) => {}
                None => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            return;
        }
        match self.tx.try_send(Message::Chunk(chunk)) {
            Ok(()) => {
                if self.queued.fetch_add(1, Ordering::Relaxed) % BATCH_CHUNKS == BATCH_CHUNKS - 1 {
                    self.writer.unpark();
                }
            }
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl TraceWriter {
    pub fn spawn(mut sink: Box<dyn TraceSink>, interval: Duration) -> std::io::Result<Self> {
        let wire_format = sink.wire_format();
        // With a wire format the channel only carries the shutdown: std's bounded channel
        // allocates all its slots at once (a few MB for the full queue).
        let capacity = if wire_format.is_some() { 1 } else { QUEUE_CAPACITY };
        let (tx, rx) = mpsc::sync_channel::<Message>(capacity);
        let (done_tx, done) = mpsc::channel();
        let stats = Arc::new(Mutex::new(WriterStats::default()));
        let thread_stats = stats.clone();
        let encoding =
            wire_format.map(|encoder| Arc::new(Encoding { encoder, payloads: Mutex::new(Payloads::default()) }));
        let thread_encoding = encoding.clone();
        // The thread sleeps until the next flush and then drains the queue: senders wake it only
        // for a full batch, so handing a chunk over costs the event pipeline no context switch.
        let thread = thread::Builder::new().name("trace-writer".into()).spawn(move || {
            let mut batch: Vec<TraceChunk> = Vec::new();
            let mut next_flush = Instant::now() + interval;
            loop {
                thread::park_timeout(next_flush.saturating_duration_since(Instant::now()));
                let mut stop = false;
                loop {
                    match rx.try_recv() {
                        Ok(Message::Chunk(chunk)) => batch.push(chunk),
                        Ok(Message::Shutdown) | Err(TryRecvError::Disconnected) => {
                            stop = true;
                            break;
                        }
                        Err(TryRecvError::Empty) => break,
                    }
                }
                let due = stop || Instant::now() >= next_flush;
                if let Some(encoding) = &thread_encoding {
                    // After a failure the next payloads would only wait out the same retries.
                    let mut failing = false;
                    let payloads = if stop { encoding.take_last() } else { encoding.take(due) };
                    for payload in payloads {
                        let bytes = payload.bytes.capacity();
                        if failing {
                            record(Err(None), payload.chunks as u64, payload.spans as u64, &thread_stats);
                        } else {
                            failing = !send_encoded(sink.as_mut(), payload, &thread_stats);
                        }
                        encoding.sent(bytes);
                    }
                }
                if due || batch.len() as u64 >= BATCH_CHUNKS {
                    flush(sink.as_mut(), &mut batch, &thread_stats);
                }
                if due {
                    next_flush = Instant::now() + interval;
                }
                if stop {
                    if let Err(error) = sink.shutdown() {
                        tracing::warn!(%error, "trace sink shutdown");
                    }
                    let _ = done_tx.send(());
                    return;
                }
            }
        })?;
        Ok(Self { tx, dropped: Arc::new(AtomicU64::new(0)), stats, encoding, done, thread: thread.thread().clone() })
    }

    pub fn sender(&self) -> ChunkSender {
        ChunkSender {
            tx: self.tx.clone(),
            dropped: self.dropped.clone(),
            queued: Arc::new(AtomicU64::new(0)),
            encoding: self.encoding.clone(),
            writer: self.thread.clone(),
        }
    }

    pub fn stats(&self) -> WriterStats {
        WriterStats { dropped_chunks: self.dropped.load(Ordering::Relaxed), ..*self.stats.lock().unwrap() }
    }

    /// Sends what is buffered and stops, waiting at most `deadline` for the last send.
    pub fn shutdown(self, deadline: Duration) -> WriterStats {
        // Wake it first: with a full queue, the send below waits for it to drain.
        self.thread.unpark();
        let _ = self.tx.send(Message::Shutdown);
        self.thread.unpark();
        if self.done.recv_timeout(deadline).is_err() {
            tracing::warn!(?deadline, "trace writer did not finish its last flush in time; some traces may be lost");
        }
        self.stats()
    }
}

fn flush(sink: &mut dyn TraceSink, batch: &mut Vec<TraceChunk>, stats: &Mutex<WriterStats>) {
    if batch.is_empty() {
        return;
    }
    let chunks = std::mem::take(batch);
    let (count, spans) = (chunks.len() as u64, chunks.iter().map(|c| c.spans.len() as u64).sum::<u64>());
    let result = sink.send(chunks);
    record(result.map_err(Some), count, spans, stats);
}

/// Whether the payload was delivered.
fn send_encoded(sink: &mut dyn TraceSink, payload: EncodedPayload, stats: &Mutex<WriterStats>) -> bool {
    let (count, spans) = (payload.chunks as u64, payload.spans as u64);
    let result = sink.send_encoded(payload);
    let delivered = result.is_ok();
    record(result.map_err(Some), count, spans, stats);
    delivered
}

/// Counts a send's outcome; `Err(None)`: not attempted after an earlier failure (already logged).
fn record(result: Result<(), Option<IntakeError>>, chunks: u64, spans: u64, stats: &Mutex<WriterStats>) {
    let mut stats = stats.lock().unwrap();
    match result {
        Ok(()) => {
            stats.sent_chunks += chunks;
            stats.sent_spans += spans;
        }
        Err(error) => {
            stats.failed_chunks += chunks;
            if let Some(error) = error {
                tracing::warn!(%error, chunks, "traces not delivered");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intake::traces::Span;

    struct Recording(Arc<Mutex<Vec<usize>>>);
    impl TraceSink for Recording {
        fn send(&mut self, chunks: Vec<TraceChunk>) -> Result<(), IntakeError> {
            self.0.lock().unwrap().push(chunks.len());
            Ok(())
        }
    }

    #[test]
    fn shutdown_flushes_what_is_buffered() {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let writer = TraceWriter::spawn(Box::new(Recording(sent.clone())), Duration::from_secs(3600)).unwrap();
        let sender = writer.sender();
        for _ in 0..3 {
            sender.send(TraceChunk { spans: vec![Span::default()], container_id: None });
        }
        let stats = writer.shutdown(Duration::from_secs(5));
        assert_eq!(*sent.lock().unwrap(), vec![3]);
        assert_eq!((stats.sent_chunks, stats.sent_spans), (3, 3));
    }

    /// A sink with a wire format: records (container, traces, bytes) of each payload, after
    /// checking with libdatadog's decoder that it holds that many traces. While `gate` is held,
    /// sending blocks (a slow agent).
    /// (container, traces, bytes) of each payload sent.
    type Sent = Arc<Mutex<Vec<(Option<String>, usize, usize)>>>;

    struct Wire {
        sent: Sent,
        gate: Arc<Mutex<()>>,
    }
    impl TraceSink for Wire {
        fn send(&mut self, _: Vec<TraceChunk>) -> Result<(), IntakeError> {
            panic!("a sink with a wire format gets payloads")
        }
        fn wire_format(&self) -> Option<V04Encoder> {
            Some(V04Encoder::default())
        }
        fn send_encoded(&mut self, payload: EncodedPayload) -> Result<(), IntakeError> {
            let _open = self.gate.lock().unwrap();
            let (traces, _) = libdd_trace_utils::msgpack_decoder::v04::from_slice(&payload.bytes).unwrap();
            assert_eq!(traces.len(), payload.chunks);
            self.sent.lock().unwrap().push((payload.container_id, payload.chunks, payload.bytes.len()));
            Ok(())
        }
    }

    fn chunk(container: Option<&str>, resource_len: usize) -> TraceChunk {
        let span = Span { resource: "x".repeat(resource_len).into(), ..Default::default() };
        TraceChunk { spans: vec![span], container_id: container.map(str::to_owned) }
    }

    #[test]
    fn chunks_are_encoded_by_the_sender_into_payloads_per_container_and_cut_at_the_budget() {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let sink = Wire { sent: sent.clone(), gate: Arc::default() };
        let writer = TraceWriter::spawn(Box::new(sink), Duration::from_secs(3600)).unwrap();
        let sender = writer.sender();
        // ~1 KiB traces: the first payload fills at PAYLOAD_BYTES and goes before the flush.
        let per_payload = PAYLOAD_BYTES / 1024 + 1;
        for _ in 0..per_payload {
            sender.send(chunk(None, 1000));
        }
        sender.send(chunk(Some("c1"), 10));
        sender.send(chunk(None, 10));
        let stats = writer.shutdown(Duration::from_secs(5));
        let sent = sent.lock().unwrap();
        let full: Vec<_> = sent.iter().filter(|(_, _, bytes)| *bytes >= PAYLOAD_BYTES).collect();
        assert_eq!(full.len(), 1, "{sent:?}");
        assert!(full[0].2 < PAYLOAD_BYTES + 2048, "a payload overshoots by one trace at most: {sent:?}");
        let traces_of = |container: Option<&str>| -> usize {
            sent.iter().filter(|(c, _, _)| c.as_deref() == container).map(|(_, n, _)| n).sum()
        };
        assert_eq!((traces_of(None), traces_of(Some("c1"))), (per_payload + 1, 1));
        assert_eq!((stats.sent_chunks, stats.dropped_chunks), (per_payload as u64 + 2, 0));
    }

    #[test]
    fn a_stalled_sink_bounds_what_waits_and_counts_the_drops() {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(Mutex::new(()));
        let stalled = gate.lock().unwrap();
        let sink = Wire { sent: sent.clone(), gate: gate.clone() };
        let writer = TraceWriter::spawn(Box::new(sink), Duration::from_secs(3600)).unwrap();
        let sender = writer.sender();
        // 64 KiB traces: the byte budget holds ~256 of them (one payload may be in the stalled send).
        let (sent_count, trace_bytes) = (400, 64 * 1024);
        for _ in 0..sent_count {
            sender.send(chunk(None, trace_bytes));
        }
        let dropped = writer.dropped.load(Ordering::Relaxed);
        let most_kept = (QUEUED_BYTES_CAPACITY / trace_bytes + 2 * PAYLOAD_BYTES / trace_bytes + 2) as u64;
        assert!(dropped > 0 && dropped >= sent_count - most_kept, "dropped {dropped}");
        drop(stalled);
        let stats = writer.shutdown(Duration::from_secs(10));
        assert_eq!(stats.sent_chunks + stats.dropped_chunks, sent_count, "{stats:?}");
    }

    #[test]
    fn chunks_sent_after_the_writer_stopped_are_dropped_and_counted() {
        let sink = Wire { sent: Arc::default(), gate: Arc::default() };
        let writer = TraceWriter::spawn(Box::new(sink), Duration::from_secs(3600)).unwrap();
        let sender = writer.sender();
        sender.send(chunk(None, 10));
        let stats = writer.shutdown(Duration::from_secs(5));
        assert_eq!((stats.sent_chunks, stats.dropped_chunks), (1, 0));
        sender.send(chunk(None, 10));
        assert_eq!(sender.dropped.load(Ordering::Relaxed), 1);
    }
}
