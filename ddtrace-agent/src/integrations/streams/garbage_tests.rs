//! Hostile bytes through every wire protocol: each connection recognised (a real first message),
//! then random bytes in both directions, cut at random places and with random gaps the capture
//! did not keep. Nothing may panic, and whatever spans come out must be closed and bounded. A
//! seeded generator: a failure names its seed and replays.

use rand::{rngs::StdRng, Rng, SeedableRng};

use super::StreamLayer;
use crate::{
    config::SettingsInput,
    core::test_support::tree_recording_ends,
    probes::{SocketActivity, SocketOp},
};

/// First messages that make each protocol recognise the connection (a client's).
fn openings() -> Vec<(&'static str, Vec<u8>, SocketOp)> {
    let mut startup = 41u32.to_be_bytes().to_vec();
    startup.extend(196_608u32.to_be_bytes());
    startup.extend(b"user\0app\0database\0shop\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0");
    let mut greeting = vec![0x4a, 0, 0, 0, 10];
    greeting.extend(b"10.11.6-MariaDB\0");
    greeting.extend([0x41; 56]);
    vec![
        ("http", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), SocketOp::Sent),
        ("postgres", startup, SocketOp::Sent),
        ("mysql", greeting, SocketOp::Received),
        ("redis", b"*1\r\n$4\r\nPING\r\n".to_vec(), SocketOp::Sent),
    ]
}

/// Bytes that look like the protocols in places (their type bytes, lengths, CRLFs) and like
/// nothing in others.
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
    let length = rng.gen_range(0..600);
    let mut out = Vec::with_capacity(length);
    while out.len() < length {
        if rng.gen_bool(0.3) {
            out.extend_from_slice(pieces[rng.gen_range(0..pieces.len())]);
        } else {
            out.push(rng.gen());
        }
    }
    out
}

#[test]
fn random_bytes_cut_anywhere_never_panic_and_give_closed_spans() {
    let config = SettingsInput::default().resolve();
    for seed in 0..2000u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let (mut contexts, ended) = tree_recording_ends();
        let mut layer = StreamLayer::new(crate::integrations::wire_protocols(&config));
        let openings = openings();
        let (name, opening, op) = &openings[seed as usize % openings.len()];
        let mut now = 1_000;
        let mut event = |op: SocketOp, data: &[u8], uncaptured: u64, layer: &mut StreamLayer, contexts: &mut _| {
            now += 10;
            let activity = SocketActivity {
                tgid: 3,
                tid: 3,
                ktime_ns: now,
                fd: 7,
                op,
                length: data.len() as u64 + uncaptured,
                data: data.into(),
                peer: Some("127.0.0.1:9".parse().unwrap()),
                local: None,
                tls_session: None,
            };
            layer.on_socket(&activity, contexts);
        };
        event(SocketOp::Connected, b"", 0, &mut layer, &mut contexts);
        event(*op, opening, 0, &mut layer, &mut contexts);
        for _ in 0..rng.gen_range(1..40) {
            let direction = if rng.gen_bool(0.5) { SocketOp::Sent } else { SocketOp::Received };
            let bytes = hostile(&mut rng);
            let uncaptured = if rng.gen_bool(0.2) { rng.gen_range(0..100_000) } else { 0 };
            event(direction, &bytes, uncaptured, &mut layer, &mut contexts);
        }
        event(SocketOp::Closed, b"", 0, &mut layer, &mut contexts);
        for span in ended.lock().unwrap().iter() {
            assert!(span.end_unix_ns >= span.start_unix_ns, "seed {seed} ({name}): {span:#?}");
            assert!(span.data.resource.len() <= 10_000, "seed {seed} ({name}): a resource past any bound");
        }
        assert_eq!(contexts.open_detached(), 0, "seed {seed} ({name}): the close ended every call");
    }
}
