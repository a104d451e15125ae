//! Arbitrary bytes replayed as the traffic of one connection, for the fuzzers
//! (`cargo xtask fuzz`) and the hostile-input tests: the connection opens with a first message
//! that makes one protocol recognise it, then the input decides each segment's direction, bytes
//! and the bytes the capture did not keep. Whatever comes out must not panic, and the close must
//! end every call.

use super::StreamLayer;
use crate::{
    config::SettingsInput,
    core::ContextTree,
    probes::{SocketActivity, SocketOp},
};

/// One socket event of the replayed connection: its op, bytes and uncaptured bytes.
type Emit<'a> = dyn FnMut(SocketOp, &[u8], u64, &mut StreamLayer, &mut ContextTree) + 'a;

/// The protocols a replay can open a connection for.
pub const PROTOCOLS: [&str; 4] = ["http", "postgresql", "mysql", "redis"];

/// A first message (and its direction) that makes `protocol` recognise a client's connection.
pub fn opening(protocol: &str) -> Option<(Vec<u8>, SocketOp)> {
    Some(match protocol {
        "http" => (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), SocketOp::Sent),
        "postgresql" => {
            let mut startup = 41u32.to_be_bytes().to_vec();
            startup.extend(196_608u32.to_be_bytes());
            startup.extend(b"user\0app\0database\0shop\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0");
            (startup, SocketOp::Sent)
        }
        "mysql" => {
            let mut greeting = vec![0x4a, 0, 0, 0, 10];
            greeting.extend(b"10.11.6-MariaDB\0");
            greeting.extend([0x41; 56]);
            (greeting, SocketOp::Received)
        }
        "redis" => (b"*1\r\n$4\r\nPING\r\n".to_vec(), SocketOp::Sent),
        _ => return None,
    })
}

/// Replays `input` on a connection opened for `protocol` through every wire protocol the agent
/// has, then closes it. Returns how many detached contexts the close left open (always 0).
///
/// Input: segments of `[flags][length][bytes...]`. Flags bit 0: read (else write); bits 1-2:
/// bytes the capture did not keep after these (0: none; 1: the next byte; 2: the next two bytes,
/// big-endian, times 16); bit 3: the connection closes and reopens first.
pub fn replay(protocol: &str, input: &[u8], contexts: &mut ContextTree) -> usize {
    replay_on(&mut layer(), protocol, input, contexts)
}

/// A stream layer with every wire protocol, with default settings.
pub fn layer() -> StreamLayer {
    StreamLayer::new(crate::integrations::wire_protocols(&SettingsInput::default().resolve()))
}

/// One fuzzer input for `protocol`: replayed on a layer and a tree made once per fuzzing
/// process (the protocols' settings are not what is fuzzed; no product listens to the tree, so
/// ended contexts are dropped). Panics when a call outlives the close.
pub fn fuzz_one(protocol: &str, input: &[u8]) {
    thread_local! {
        static STATE: std::cell::RefCell<(StreamLayer, ContextTree)> = std::cell::RefCell::new((
            layer(),
            ContextTree::new(crate::core::WallClock::calibrate(), crate::core::EventHub::new()),
        ));
    }
    STATE.with_borrow_mut(|(layer, contexts)| {
        assert_eq!(replay_on(layer, protocol, input, contexts), 0, "the close ends every call");
    });
}

/// [`replay`] on a layer made once (a fuzzer's: the protocols' settings, a compiled URL
/// obfuscation pattern among them, are not made anew for every input). The process's state is
/// forgotten at the end.
pub fn replay_on(layer: &mut StreamLayer, protocol: &str, input: &[u8], contexts: &mut ContextTree) -> usize {
    let Some((first, first_op)) = opening(protocol) else { return 0 };
    let mut now = 1_000;
    let mut event =
        |op: SocketOp, data: &[u8], uncaptured: u64, layer: &mut StreamLayer, contexts: &mut ContextTree| {
            now += 10;
            let activity = SocketActivity {
                tgid: 3,
                tid: 3,
                ktime_ns: now,
                fd: 7,
                op,
                length: data.len() as u64 + uncaptured,
                data: data.into(),
                peer: Some("127.0.0.1:9".parse().expect("an address")),
                local: None,
                tls_session: None,
                goroutine: 0,
            };
            layer.on_socket(&activity, contexts);
        };
    let open = |layer: &mut StreamLayer, contexts: &mut ContextTree, event: &mut Emit<'_>| {
        event(SocketOp::Connected, b"", 0, layer, contexts);
        event(first_op, &first, 0, layer, contexts);
    };
    open(layer, contexts, &mut event);
    let mut rest = input;
    while let [flags, length, tail @ ..] = rest {
        let length = usize::from(*length).min(tail.len());
        let (data, mut tail) = tail.split_at(length);
        let uncaptured = match (flags >> 1) & 3 {
            1 => match tail.split_first() {
                Some((n, more)) => {
                    tail = more;
                    u64::from(*n)
                }
                None => 0,
            },
            2 => match tail {
                [a, b, more @ ..] => {
                    tail = more;
                    u64::from(u16::from_be_bytes([*a, *b])) * 16
                }
                _ => 0,
            },
            _ => 0,
        };
        if flags & 8 != 0 {
            event(SocketOp::Closed, b"", 0, layer, contexts);
            open(layer, contexts, &mut event);
        }
        let op = if flags & 1 != 0 { SocketOp::Received } else { SocketOp::Sent };
        event(op, data, uncaptured, layer, contexts);
        rest = tail;
    }
    event(SocketOp::Closed, b"", 0, layer, contexts);
    let open = contexts.open_detached();
    layer.process_exited(3);
    contexts.end_process(3, now + 10);
    open
}
