/// Converts the kernel's monotonic timestamps (`bpf_ktime_get_ns`) to Unix-epoch nanoseconds.
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    /// realtime - monotonic, in nanoseconds.
    offset_ns: i64,
}

fn now(clock: libc::clockid_t) -> i64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

impl WallClock {
    /// Measures the offset, keeping the tightest of a few samples so a preemption between the
    /// two clock reads does not skew every timestamp.
    pub fn calibrate() -> Self {
        let mut best = (i64::MAX, 0i64);
        for _ in 0..5 {
            let before = now(libc::CLOCK_MONOTONIC);
            let real = now(libc::CLOCK_REALTIME);
            let after = now(libc::CLOCK_MONOTONIC);
            let width = after - before;
            if width < best.0 {
                best = (width, real - (before + width / 2));
            }
        }
        Self { offset_ns: best.1 }
    }

    pub fn to_unix_ns(&self, ktime_ns: u64) -> i64 {
        ktime_ns as i64 + self.offset_ns
    }

    /// The current monotonic time, in the kernel's unit.
    pub fn monotonic_now_ns() -> u64 {
        now(libc::CLOCK_MONOTONIC) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_now_maps_to_realtime_now() {
        let clock = WallClock::calibrate();
        let converted = clock.to_unix_ns(WallClock::monotonic_now_ns());
        let real = now(libc::CLOCK_REALTIME);
        assert!((real - converted).abs() < 5_000_000, "off by {} ns", real - converted);
    }
}
