use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc::{self, SyncSender, TryRecvError, TrySendError},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use crate::intake::{traces::TraceChunk, TraceSink};

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

enum Message {
    Chunk(TraceChunk),
    Shutdown,
}

/// Sends finished chunks from a thread of its own, so a slow or absent agent never stalls the
/// event pipeline. Chunks are batched and flushed every `interval`.
pub struct TraceWriter {
    tx: SyncSender<Message>,
    dropped: Arc<AtomicU64>,
    stats: Arc<Mutex<WriterStats>>,
    thread: thread::Thread,
    done: mpsc::Receiver<()>,
}

/// The aggregator's end of the writer.
#[derive(Clone)]
pub struct ChunkSender {
    tx: SyncSender<Message>,
    dropped: Arc<AtomicU64>,
    queued: Arc<AtomicU64>,
    writer: thread::Thread,
}

impl ChunkSender {
    /// Queues `chunk` without ever blocking the event pipeline; drops and counts it when full.
    pub fn send(&self, chunk: TraceChunk) {
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
        let (tx, rx) = mpsc::sync_channel::<Message>(QUEUE_CAPACITY);
        let (done_tx, done) = mpsc::channel();
        let stats = Arc::new(Mutex::new(WriterStats::default()));
        let thread_stats = stats.clone();
        // The thread sleeps until the next flush and then drains the queue: senders never wake
        // it, so handing a chunk over costs the event pipeline no context switch.
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
                if stop || batch.len() as u64 >= BATCH_CHUNKS || Instant::now() >= next_flush {
                    flush(sink.as_mut(), &mut batch, &thread_stats);
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
        Ok(Self { tx, dropped: Arc::new(AtomicU64::new(0)), stats, done, thread: thread.thread().clone() })
    }

    pub fn sender(&self) -> ChunkSender {
        ChunkSender {
            tx: self.tx.clone(),
            dropped: self.dropped.clone(),
            queued: Arc::new(AtomicU64::new(0)),
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
    let mut stats = stats.lock().unwrap();
    match result {
        Ok(()) => {
            stats.sent_chunks += count;
            stats.sent_spans += spans;
        }
        Err(error) => {
            stats.failed_chunks += count;
            tracing::warn!(%error, chunks = count, "traces not delivered");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intake::{traces::Span, IntakeError};

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
}
