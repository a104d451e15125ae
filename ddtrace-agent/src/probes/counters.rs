use aya::maps::{MapData, PerCpuArray};
use ddtrace_common::counter;

/// The kernel programs' counters, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelCounters {
    pub values: [u64; counter::COUNT as usize],
}

impl KernelCounters {
    pub(super) fn read(map: &PerCpuArray<MapData, u64>) -> Self {
        let mut values = [0u64; counter::COUNT as usize];
        for (index, value) in values.iter_mut().enumerate() {
            if let Ok(per_cpu) = map.get(&(index as u32), 0) {
                *value = per_cpu.iter().sum();
            }
        }
        Self { values }
    }

    /// These counters with `events` records read from the ring buffer (see [`counter::EVENTS`]).
    pub fn with_events_read(mut self, events: u64) -> Self {
        self.values[counter::EVENTS as usize] = events;
        self
    }

    pub fn get(&self, index: u32) -> u64 {
        self.values[index as usize]
    }
}

impl std::fmt::Display for KernelCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> =
            counter::NAMES.iter().zip(self.values.iter()).map(|(name, value)| format!("{name}={value}")).collect();
        write!(f, "{}", parts.join(" "))
    }
}
