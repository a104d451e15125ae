use rand::Rng;

/// A random non-zero 64-bit span id.
pub fn new_span_id() -> u64 {
    rand::thread_rng().gen_range(1..=u64::MAX)
}

/// A 128-bit trace id laid out as Datadog tracers do: the upper 64 bits are the start time in
/// Unix seconds (32 bits) followed by 32 zero bits, the lower 64 bits are random.
pub fn new_trace_id(unix_ns: i64) -> u128 {
    let seconds = (unix_ns / 1_000_000_000) as u64 & 0xffff_ffff;
    ((seconds << 32) as u128) << 64 | new_span_id() as u128
}

#[cfg(test)]
mod tests {
    #[test]
    fn trace_id_upper_bits_hold_seconds() {
        let id = super::new_trace_id(1_700_000_000_123_000_000);
        assert_eq!((id >> 96) as u64, 1_700_000_000);
        assert_eq!((id >> 64) as u32, 0);
        assert_ne!(id as u64, 0);
    }
}
