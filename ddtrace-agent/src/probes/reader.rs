use std::time::Duration;

use aya::maps::{Map, MapData, RingBuf};
use tokio::io::unix::AsyncFd;

use super::{
    event::{decode, KernelEvent},
    loader::ProbeError,
};

/// How often the reader drains the ring buffer. The kernel wakes it only for urgent probes (a
/// library was loaded); everything else is picked up on this tick, in batches.
const DRAIN_INTERVAL: Duration = Duration::from_millis(20);

/// Reads the kernel's ring buffer: waits until it is readable or the drain timer fires, then
/// drains it completely.
pub struct EventReader {
    ring: AsyncFd<RingBuf<MapData>>,
    tick: tokio::time::Interval,
    /// Records that did not decode (a version mismatch between object and daemon).
    pub malformed: u64,
}

impl EventReader {
    pub(super) fn new(map: Map) -> Result<Self, ProbeError> {
        let ring = RingBuf::try_from(map).map_err(|e| ProbeError::Load(e.to_string()))?;
        // SAFETY: the RingBuf owns its map fd for as long as the AsyncFd lives.
        let ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(|e| ProbeError::Load(format!("registering the ring buffer with tokio: {e}")))?;
        let mut tick = tokio::time::interval(DRAIN_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok(Self { ring, tick, malformed: 0 })
    }

    /// Waits for events and appends them to `out`. Cancel-safe: nothing is lost if the future is
    /// dropped while waiting.
    pub async fn next_batch(&mut self, out: &mut Vec<KernelEvent>) {
        tokio::select! {
            guard = self.ring.readable_mut() => {
                if let Ok(mut guard) = guard {
                    guard.clear_ready();
                }
            }
            _ = self.tick.tick() => {}
        }
        self.drain(out);
    }

    /// Appends every event already in the ring buffer to `out`, without waiting.
    pub fn drain(&mut self, out: &mut Vec<KernelEvent>) {
        let ring = self.ring.get_mut();
        while let Some(record) = ring.next() {
            match decode(&record) {
                Ok(event) => out.push(event),
                Err(error) => {
                    self.malformed += 1;
                    tracing::debug!(%error, "malformed kernel event");
                }
            }
        }
    }
}
