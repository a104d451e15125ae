use std::time::Duration;

use aya::maps::Map;
use tokio::io::unix::AsyncFd;

use super::{
    drain_timer::DrainTimer,
    event::{decode, KernelEvent},
    loader::ProbeError,
    ring::RingReader,
};

/// How often the reader drains the ring. The kernel wakes it before that for urgent events (a
/// library was loaded) and when an eighth of the ring waits (checked every 256th event per CPU,
/// see the kernel programs' `unhurried_submit_flags`): a service at a few hundred requests/s is
/// read in warm batches ten times a second (draining every 20 ms had cost ~2x the agent's CPU per
/// request at 200 requests/s, cold caches each time), and a burst is read as it fills the ring.
const DRAIN_INTERVAL: Duration = Duration::from_millis(100);

/// Most records taken per batch. Draining "until empty" never ended while the kernel wrote
/// faster than the daemon read (a batch of millions of events, grown by reallocation: most of
/// the daemon's time went to zeroing fresh pages, and its memory followed the backlog); a
/// bounded batch keeps the batch buffer at one size and lets the loop's other work run between
/// batches.
pub const MAX_BATCH: usize = 4096;

/// The smallest record the programs write (an exit event and the ring's 8-byte header): how many
/// records a full ring can hold at most.
const SMALLEST_RECORD_BYTES: usize = 8 + 24;

/// Reads the kernel's ring buffer: waits until it is readable or the drain timer fires, then
/// takes a batch.
pub struct EventReader {
    ring: AsyncFd<RingReader>,
    timer: DrainTimer,
    /// Records that did not decode (a version mismatch between object and daemon).
    pub malformed: u64,
    /// Records read, malformed ones included: what the programs submitted and we drained.
    pub read: u64,
    /// The last batch stopped at [`MAX_BATCH`]: more records were waiting.
    behind: bool,
}

impl EventReader {
    pub(super) fn new(map: Map) -> Result<Self, ProbeError> {
        let ring = RingReader::new(map).map_err(ProbeError::Load)?;
        // SAFETY: the reader owns its map fd for as long as the AsyncFd lives.
        let ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(|e| ProbeError::Load(format!("registering the ring buffer with tokio: {e}")))?;
        let timer = DrainTimer::new().map_err(|e| ProbeError::Load(format!("creating the drain timer: {e}")))?;
        arm(&timer, DRAIN_INTERVAL);
        Ok(Self { ring, timer, malformed: 0, read: 0, behind: false })
    }

    /// Waits for events (not when the last batch left some behind) and appends up to
    /// [`MAX_BATCH`] of them to `out`. Cancel-safe: nothing is lost if the future is dropped
    /// while waiting.
    pub async fn next_batch(&mut self, out: &mut Vec<KernelEvent>) {
        if self.behind {
            // The loop's thread also drives the signals, timers and other fds: let them run
            // between batches, or a backlog that never ends would leave SIGTERM unanswered.
            tokio::task::yield_now().await;
        } else {
            tokio::select! {
                guard = self.ring.readable_mut() => {
                    if let Ok(mut guard) = guard {
                        guard.clear_ready();
                    }
                }
                _ = self.timer.fired() => {}
            }
        }
        self.behind = self.drain(out);
        arm(&self.timer, DRAIN_INTERVAL);
    }

    /// Appends up to [`MAX_BATCH`] events already in the ring buffer to `out`, without waiting;
    /// returns whether it stopped at that bound (more may be waiting).
    pub fn drain(&mut self, out: &mut Vec<KernelEvent>) -> bool {
        let malformed = &mut self.malformed;
        let read = self.ring.get_mut().read(MAX_BATCH, |record| match decode(record) {
            Ok(event) => out.push(event),
            Err(error) => {
                *malformed += 1;
                tracing::debug!(%error, "malformed kernel event");
            }
        });
        self.read += read as u64;
        read == MAX_BATCH
    }

    /// Hands every event in the ring buffer to `handle`, a batch at a time, up to what a full
    /// ring holds (the kernel may go on writing: this must end).
    pub fn drain_all(&mut self, out: &mut Vec<KernelEvent>, mut handle: impl FnMut(&mut Vec<KernelEvent>)) {
        let most_batches = ddtrace_common::RING_BUFFER_BYTES as usize / SMALLEST_RECORD_BYTES / MAX_BATCH + 1;
        for _ in 0..most_batches {
            let more = self.drain(out);
            handle(out);
            if !more {
                break;
            }
        }
    }
}

fn arm(timer: &DrainTimer, period: Duration) {
    if let Err(error) = timer.arm(period) {
        // Without the tick only urgent probes wake the reader: say so, once is enough to act.
        tracing::warn!(%error, "arming the ring buffer's drain timer failed");
    }
}
