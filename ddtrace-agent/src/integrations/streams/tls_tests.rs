//! TLS plaintext through [`StreamLayer`] with HTTP: sessions tied to their socket, reads served from the
//! library's buffer (no fd), roles and closes.

use ddtrace_common::FD_UNKNOWN;

use crate::integrations::{http::HeaderTags, test_support::http_layer};
use crate::{
    core::{test_support::tree_recording_ends, SpanKind},
    probes::{SocketActivity, SocketOp},
};

const PID: u32 = 40;
const SESSION: u64 = 0x5555_0000_1000;

fn activity(fd: u32, op: SocketOp, data: &[u8], tls_session: Option<u64>) -> SocketActivity {
    SocketActivity {
        tgid: PID,
        tid: PID,
        ktime_ns: 1_000,
        fd,
        op,
        length: data.len() as u64,
        data: data.into(),
        peer: matches!(op, SocketOp::Accepted | SocketOp::Connected).then(|| "127.0.0.1:5555".parse().unwrap()),
        local: None,
        tls_session,
        goroutine: 0,
    }
}

const REQUEST: &[u8] = b"GET /users/42 HTTP/1.1\r\nHost: shop.example\r\n\r\n";
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
/// The start of a TLS record: what the socket itself carries.
const CIPHERTEXT: &[u8] = &[0x17, 0x03, 0x03, 0x00, 0x40, 0x9a, 0x11, 0x42];

#[test]
fn plaintext_of_an_accepted_socket_is_one_https_server_span_and_its_ciphertext_none() {
    let (mut contexts, ended) = tree_recording_ends();
    let mut http = http_layer(HeaderTags::default());
    http.on_socket(&activity(7, SocketOp::Accepted, b"", None), &mut contexts);
    http.on_socket(&activity(7, SocketOp::Received, CIPHERTEXT, None), &mut contexts);
    http.on_socket(&activity(7, SocketOp::Received, REQUEST, Some(SESSION)), &mut contexts);
    http.on_socket(&activity(7, SocketOp::Sent, CIPHERTEXT, None), &mut contexts);
    // The response written from the library's buffer without a system call in the same call.
    http.on_socket(&activity(FD_UNKNOWN, SocketOp::Sent, RESPONSE, Some(SESSION)), &mut contexts);
    let ended = ended.lock().unwrap();
    assert_eq!(ended.len(), 1, "{ended:#?}");
    let span = &ended[0].data;
    assert_eq!((span.kind, span.resource.as_ref()), (SpanKind::Server, "GET /users/?"));
    assert_eq!(span.meta["http.url"], "https://shop.example/users/42");
    assert_eq!(span.meta["http.status_code"], "200");
    assert_eq!(span.meta["network.client.ip"], "127.0.0.1");
}

#[test]
fn closing_the_socket_ends_its_tls_session() {
    let (mut contexts, ended) = tree_recording_ends();
    let mut http = http_layer(HeaderTags::default());
    http.on_socket(&activity(8, SocketOp::Connected, b"", None), &mut contexts);
    http.on_socket(&activity(8, SocketOp::Sent, REQUEST, Some(SESSION)), &mut contexts);
    http.on_socket(&activity(8, SocketOp::Closed, b"", None), &mut contexts);
    let ended = ended.lock().unwrap();
    assert_eq!(ended.len(), 1, "{ended:#?}");
    let span = &ended[0].data;
    assert_eq!(span.kind, SpanKind::Client);
    assert_eq!(span.meta["out.host"], "shop.example");
    assert!(span.error.is_some(), "a request the connection closed on is an error");
}

#[test]
fn a_session_on_a_socket_opened_before_attach_takes_its_role_from_who_speaks_first() {
    let (mut contexts, ended) = tree_recording_ends();
    let mut http = http_layer(HeaderTags::default());
    // fd 9 was never seen accepted or connected: the client writes the request first.
    http.on_socket(&activity(9, SocketOp::Sent, REQUEST, Some(SESSION)), &mut contexts);
    http.on_socket(&activity(FD_UNKNOWN, SocketOp::Received, RESPONSE, Some(SESSION)), &mut contexts);
    // And a server session on another socket reads first.
    http.on_socket(&activity(10, SocketOp::Received, REQUEST, Some(SESSION + 1)), &mut contexts);
    http.on_socket(&activity(10, SocketOp::Sent, RESPONSE, Some(SESSION + 1)), &mut contexts);
    let kinds: Vec<SpanKind> = ended.lock().unwrap().iter().map(|c| c.data.kind).collect();
    assert_eq!(kinds, [SpanKind::Client, SpanKind::Server]);
}

#[test]
fn a_new_session_on_the_same_socket_ends_the_old_one() {
    let (mut contexts, ended) = tree_recording_ends();
    let mut http = http_layer(HeaderTags::default());
    http.on_socket(&activity(11, SocketOp::Connected, b"", None), &mut contexts);
    http.on_socket(&activity(11, SocketOp::Sent, REQUEST, Some(SESSION)), &mut contexts);
    // A second SSL object on the socket: the first one's request never got its answer.
    http.on_socket(&activity(11, SocketOp::Sent, REQUEST, Some(SESSION + 8)), &mut contexts);
    http.on_socket(&activity(11, SocketOp::Received, RESPONSE, Some(SESSION + 8)), &mut contexts);
    let ended = ended.lock().unwrap();
    assert_eq!(ended.len(), 2, "{ended:#?}");
    assert!(ended[0].data.error.is_some());
    assert_eq!(ended[1].data.meta["http.status_code"], "200");
}

#[test]
fn a_request_read_from_the_librarys_buffer_still_gets_its_clients_address() {
    let (mut contexts, ended) = tree_recording_ends();
    let mut http = http_layer(HeaderTags::default());
    http.on_socket(&activity(12, SocketOp::Accepted, b"", None), &mut contexts);
    // The request came with the handshake's last bytes: no read on the socket in SSL_read.
    http.on_socket(&activity(FD_UNKNOWN, SocketOp::Received, REQUEST, Some(SESSION)), &mut contexts);
    http.on_socket(&activity(12, SocketOp::Sent, RESPONSE, Some(SESSION)), &mut contexts);
    let ended = ended.lock().unwrap();
    assert_eq!(ended.len(), 1, "{ended:#?}");
    assert_eq!(ended[0].data.meta["network.client.ip"], "127.0.0.1");
}

#[test]
fn a_socket_whose_first_bytes_no_protocol_recognises_is_silenced_once_and_others_never() {
    let (mut contexts, _ended) = tree_recording_ends();
    let mut layer = http_layer(HeaderTags::default());
    let mut connected = activity(9, SocketOp::Connected, b"", None);
    connected.ktime_ns = 4_242;
    layer.on_socket(&connected, &mut contexts);
    layer.on_socket(&activity(9, SocketOp::Sent, CIPHERTEXT, None), &mut contexts);
    layer.on_socket(&activity(9, SocketOp::Received, CIPHERTEXT, None), &mut contexts);
    let silent = layer.take_silent();
    assert_eq!(silent, [super::SilentSocket { tgid: PID, fd: 9, opened_ktime_ns: 4_242 }]);
    assert!(layer.take_silent().is_empty(), "said once");
    // The plaintext of its TLS session is followed all the same.
    layer.on_socket(&activity(9, SocketOp::Sent, REQUEST, Some(SESSION)), &mut contexts);
    // A connection found open at attach is mid-stream: silenced only after 64 unknown segments.
    layer.adopt(PID, 10, false, "127.0.0.1:80".parse().unwrap());
    for _ in 0..63 {
        layer.on_socket(&activity(10, SocketOp::Received, b"\x00\x01binary", None), &mut contexts);
    }
    assert!(layer.take_silent().is_empty());
    layer.on_socket(&activity(10, SocketOp::Received, b"\x00\x01binary", None), &mut contexts);
    assert_eq!(layer.take_silent(), [super::SilentSocket { tgid: PID, fd: 10, opened_ktime_ns: 0 }]);
    // An HTTP connection: spoken.
    layer.on_socket(&activity(11, SocketOp::Connected, b"", None), &mut contexts);
    layer.on_socket(&activity(11, SocketOp::Sent, REQUEST, None), &mut contexts);
    assert!(layer.take_silent().is_empty());
}
