use std::time::Duration;

use aya::maps::Map;
use tokio::io::unix::AsyncFd;

use super::{
    drain_timer::DrainTimer,
    event::{decode, KernelEvent},
    loader::ProbeError,
    ring::RingReader,
};

/// How often the reader drains the ring buffer while events come. The kernel wakes it only for
/// urgent probes (a library was loaded); everything else is picked up on this tick, in batches.
const BUSY_DRAIN_INTERVAL: Duration = Duration::from_millis(20);
/// The tick's period grows, doubling at each tick that finds nothing waiting, up to this while
/// nothing comes: an idle agent
/// wakes 10 times a second instead of 50 (each wake-up costs more than the drain on a VM), and a
/// 4 MiB ring still holds 100 ms of a 40 MB/s burst before the period is short again.
const IDLE_DRAIN_INTERVAL: Duration = Duration::from_millis(100);
/// While events come slowly, they are read at most this late. At each tick the reader only
/// looks at how much is waiting (two loads from the ring's mapped pages) and drains when that
/// is [`WORTH_DRAINING_BYTES`] or when the oldest has waited this long: a service at a few
/// hundred requests/s is read in warm batches instead of many cold ones (at 200 requests/s,
/// draining every 20 ms cost ~2x the agent CPU per request of draining every 100 ms), while a
/// burst is still seen at the next 20 ms tick.
const QUIET_DRAIN_INTERVAL: Duration = Duration::from_millis(100);
/// Waiting bytes that make a tick drain at once: a sixteenth of the ring (counted in bytes, not
/// records: a record with captured payload is ten times a probe's).
const WORTH_DRAINING_BYTES: usize = ddtrace_common::RING_BUFFER_BYTES as usize / 16;

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
    period: Duration,
    timer: DrainTimer,
    /// Records that did not decode (a version mismatch between object and daemon).
    pub malformed: u64,
    /// Records read, malformed ones included: what the programs submitted and we drained.
    pub read: u64,
    /// The last batch stopped at [`MAX_BATCH`]: more records were waiting.
    behind: bool,
    /// When the last drain ran.
    drained_at: std::time::Instant,
}

impl EventReader {
    pub(super) fn new(map: Map) -> Result<Self, ProbeError> {
        let ring = RingReader::new(map).map_err(ProbeError::Load)?;
        // SAFETY: the reader owns its map fd for as long as the AsyncFd lives.
        let ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(|e| ProbeError::Load(format!("registering the ring buffer with tokio: {e}")))?;
        let period = BUSY_DRAIN_INTERVAL;
        let timer = DrainTimer::new().map_err(|e| ProbeError::Load(format!("creating the drain timer: {e}")))?;
        arm(&timer, period);
        Ok(Self { ring, period, timer, malformed: 0, read: 0, behind: false, drained_at: std::time::Instant::now() })
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
            loop {
                let urgent = tokio::select! {
                    guard = self.ring.readable_mut() => {
                        if let Ok(mut guard) = guard {
                            guard.clear_ready();
                        }
                        true
                    }
                    _ = self.timer.fired() => false,
                };
                let waiting = self.ring.get_ref().waiting_bytes();
                let due = waiting >= WORTH_DRAINING_BYTES
                    || (waiting > 0 && self.drained_at.elapsed() >= QUIET_DRAIN_INTERVAL);
                if urgent || due {
                    break;
                }
                // Nothing worth a drain yet: tick on (short while events come, to see a burst
                // early; growing while none do).
                self.period =
                    if waiting > 0 { BUSY_DRAIN_INTERVAL } else { (self.period * 2).min(IDLE_DRAIN_INTERVAL) };
                arm(&self.timer, self.period);
            }
        }
        self.behind = self.drain(out);
        self.drained_at = std::time::Instant::now();
        self.period = BUSY_DRAIN_INTERVAL;
        arm(&self.timer, self.period);
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
