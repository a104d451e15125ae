//! Trace-level sampling by rate, decided on the local root the way Datadog's samplers decide: a
//! hash of the trace id compared to the rate, so every tracer (and every process of a
//! distributed trace) that sees the same trace id at the same rate makes the same decision.

/// The multiplier Datadog tracers hash trace ids with (Knuth's multiplicative hashing).
pub const KNUTH_FACTOR: u64 = 1_111_111_111_111_111_111;

/// `_sampling_priority_v1` of a kept trace (the brief's "auto keep").
pub const PRIORITY_KEEP: f64 = 1.0;

/// `_dd.p.dm`: the decision maker, here a sampling rule (`DD_TRACE_SAMPLE_RATE` is one).
pub const DECISION_MAKER_RULE: &str = "-3";

/// Whether the trace `trace_id` is kept at `rate`: keep if
/// `(low64(trace_id) * KNUTH_FACTOR) mod 2^64 <= rate * 2^64`.
pub fn keeps(trace_id: u128, rate: f64) -> bool {
    if rate >= 1.0 {
        return true;
    }
    let hashed = (trace_id as u64).wrapping_mul(KNUTH_FACTOR);
    // `as` saturates: negative and NaN rates become 0.
    let threshold = (rate * 18_446_744_073_709_551_616.0) as u64;
    hashed <= threshold
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_are_deterministic_and_follow_the_rate() {
        assert!(keeps(12345, 1.0));
        // Only a trace id whose hash is 0 survives rate 0; with random ids, none does.
        assert!(!keeps(12345, 0.0));
        assert!((1..10_000u128).all(|id| !keeps(id, 0.0)));
        // Same id, same rate, same decision; a higher rate keeps what a lower one kept.
        let id = 0xdead_beef_0000_0000_1234_5678_9abc_def0u128;
        assert_eq!(keeps(id, 0.3), keeps(id, 0.3));
        let kept_at = |rate: f64| (1..=20_000u128).filter(|&id| keeps(id * 7919, rate)).count();
        let half = kept_at(0.5);
        assert!((9_000..11_000).contains(&half), "kept {half} of 20000 at 0.5");
        assert!((1_600..2_400).contains(&kept_at(0.1)), "{}", kept_at(0.1));
        assert!((1..=20_000u128).filter(|&id| keeps(id, 0.1)).all(|id| keeps(id, 0.5)));
        // Only the low 64 bits count, as in Datadog's samplers.
        assert_eq!(keeps(5 | 1 << 100, 0.5), keeps(5, 0.5));
    }

    #[test]
    fn matches_the_reference_formula() {
        // dd-trace-py: ((trace_id * KNUTH_FACTOR) % 2**64) <= rate * 2**64
        let id: u64 = 0x5f3a_1c2b_9d8e_7f60;
        let hashed = (u128::from(id) * u128::from(KNUTH_FACTOR)) % (1u128 << 64);
        for rate in [0.01, 0.25, 0.5, 0.75, 0.99] {
            let expected = (hashed as f64) <= rate * 2f64.powi(64);
            assert_eq!(keeps(u128::from(id), rate), expected, "rate {rate}");
        }
    }
}
