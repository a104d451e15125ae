//! Hostile bytes through every wire protocol (the fuzzers' replay, seeded): a connection
//! recognised by its first message, then random segments in both directions, cut anywhere, with
//! gaps the capture did not keep, and reconnections. Nothing may panic, the close must end every
//! call, and resources stay bounded. A failure names its seed and replays.

use rand::{rngs::StdRng, Rng, SeedableRng};

use super::replay::{replay, PROTOCOLS};
use crate::core::test_support::tree_recording_ends;

/// Bytes that look like the protocols in places (their type bytes, lengths, CRLFs) and like
/// nothing in others, framed as the replay reads them.
fn hostile(rng: &mut StdRng) -> Vec<u8> {
    let pieces: [&[u8]; 10] = [
        b"*",
        b"$",
        b"\r\n",
        b"-1",
        b"Z\0\0\0\x05I",
        b"\xff\xff\xff\xff",
        b"\0\0\0",
        b"\xfe",
        b"HTTP/1.1 200 OK\r\n",
        b"99999999",
    ];
    let mut input = Vec::new();
    for _ in 0..rng.gen_range(1..40) {
        let mut segment = Vec::new();
        let length = rng.gen_range(0..255);
        while segment.len() < length {
            if rng.gen_bool(0.3) {
                segment.extend_from_slice(pieces[rng.gen_range(0..pieces.len())]);
            } else {
                segment.push(rng.gen());
            }
        }
        segment.truncate(255);
        let flags: u8 = rng.gen::<u8>() & if rng.gen_bool(0.05) { 0x0F } else { 0x07 };
        input.push(flags);
        input.push(segment.len() as u8);
        input.extend(segment);
        input.extend([rng.gen::<u8>(), rng.gen::<u8>()]);
    }
    input
}

#[test]
fn random_bytes_cut_anywhere_never_panic_and_give_closed_spans() {
    for seed in 0..2000u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let protocol = PROTOCOLS[seed as usize % PROTOCOLS.len()];
        let (mut contexts, ended) = tree_recording_ends();
        let open = replay(protocol, &hostile(&mut rng), &mut contexts);
        assert_eq!(open, 0, "seed {seed} ({protocol}): the close ended every call");
        for span in ended.lock().unwrap().iter() {
            assert!(span.end_unix_ns >= span.start_unix_ns, "seed {seed} ({protocol}): {span:#?}");
            assert!(span.data.resource.len() <= 10_000, "seed {seed} ({protocol}): a resource past any bound");
        }
    }
}
