use super::*;

fn kept() -> Arc<KeptHeaders> {
    Arc::new(KeptHeaders::none().with(["host", "user-agent", "x-datadog-trace-id"]))
}

fn parser(kind: MessageKind) -> MessageParser {
    MessageParser::new(kind, ParserLimits::default(), kept())
}

/// Feeds each piece whole (captured == real length), one timestamp per piece (1, 2, ...).
fn feed_all(p: &mut MessageParser, pieces: &[&[u8]]) -> Vec<ParseEvent> {
    let mut out = Vec::new();
    for (i, piece) in pieces.iter().enumerate() {
        p.feed(piece, piece.len(), i as u64 + 1, &mut out);
    }
    out
}

fn heads(events: &[ParseEvent]) -> Vec<&MessageHead> {
    events
        .iter()
        .filter_map(|e| match e {
            ParseEvent::Head(h) => Some(h),
            ParseEvent::End { .. } => None,
        })
        .collect()
}

fn ends(events: &[ParseEvent]) -> Vec<(u64, bool)> {
    events
        .iter()
        .filter_map(|e| match e {
            ParseEvent::End { ended_ns, complete } => Some((*ended_ns, *complete)),
            ParseEvent::Head(_) => None,
        })
        .collect()
}

/// Events without timestamps, to compare feeds split differently.
fn shape(events: &[ParseEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e {
            ParseEvent::Head(h) => {
                format!("head {:?} {:?} {:?} {:?}", h.start_line, h.headers, h.framing, h.completeness)
            }
            ParseEvent::End { complete, .. } => format!("end {complete}"),
        })
        .collect()
}

const GET: &[u8] = b"GET /users/42?q=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: curl/8.0\r\nCookie: s=1\r\n\r\n";

#[test]
fn request_head_is_parsed_and_only_kept_headers_are_returned() {
    let mut p = parser(MessageKind::Request);
    let events = feed_all(&mut p, &[GET]);
    assert_eq!(events.len(), 2, "{events:?}");
    let head = heads(&events)[0];
    assert_eq!(head.method(), Some("GET"));
    assert_eq!(head.target(), Some("/users/42?q=1"));
    assert_eq!(head.version, HttpVersion::Http11);
    assert_eq!(head.header("host"), Some("example.com"));
    assert_eq!(head.header("user-agent"), Some("curl/8.0"));
    assert_eq!(head.header("cookie"), None, "not kept");
    assert_eq!(head.framing, Some(BodyFraming::None));
    assert!(!head.connection_close);
    assert_eq!(ends(&events), [(1, true)]);
}

#[test]
fn every_split_point_gives_the_same_messages() {
    let stream = [
        &b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"[..],
        b"PUT /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nwiki\r\n5\r\npedia\r\n0\r\nX-T: 1\r\n\r\n",
        GET,
    ]
    .concat();
    let whole = shape(&feed_all(&mut parser(MessageKind::Request), &[&stream]));
    assert_eq!(heads(&feed_all(&mut parser(MessageKind::Request), &[&stream])).len(), 3);
    for split in 1..stream.len() {
        let (a, b) = stream.split_at(split);
        assert_eq!(shape(&feed_all(&mut parser(MessageKind::Request), &[a, b])), whole, "split at {split}");
    }
    let bytes: Vec<&[u8]> = stream.chunks(1).collect();
    assert_eq!(shape(&feed_all(&mut parser(MessageKind::Request), &bytes)), whole, "byte by byte");
}

#[test]
fn timestamps_are_first_byte_and_last_byte() {
    let mut p = parser(MessageKind::Request);
    let events = feed_all(&mut p, &[b"POST / HTTP/1.1\r\n", b"Content-Length: 3\r\n\r\n", b"a", b"bc"]);
    let head = heads(&events)[0];
    assert_eq!((head.started_ns, head.head_ended_ns), (1, 2));
    assert_eq!(ends(&events), [(4, true)]);
}

#[test]
fn uncaptured_body_bytes_are_counted() {
    let mut p = parser(MessageKind::Response);
    let head = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n";
    let mut out = Vec::new();
    // One write of head + 60000 body bytes, of which 512 were captured.
    let mut first = head.to_vec();
    first.resize(512, b'x');
    p.feed(&first, head.len() + 60000, 1, &mut out);
    assert_eq!(heads(&out).len(), 1);
    assert!(ends(&out).is_empty());
    p.feed(&[b'x'; 512], 40000, 2, &mut out);
    assert_eq!(ends(&out), [(2, true)]);
    // The next response on the connection is read normally.
    p.feed(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", 45, 3, &mut out);
    assert_eq!(heads(&out)[1].status(), Some(404));
}

#[test]
fn chunked_body_with_uncaptured_chunk_data() {
    let mut p = parser(MessageKind::Response);
    let mut out = Vec::new();
    let first = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n1000\r\n";
    // The chunk's 4096 data bytes were written but not captured.
    p.feed(first, first.len() + 4096, 1, &mut out);
    // The size line of the next chunk is split across segments.
    feed_more(&mut p, &mut out, &[b"\r\n1", b"0\r\n0123456789abcdef\r\n0\r", b"\n\r\n"]);
    assert_eq!(heads(&out)[0].framing, Some(BodyFraming::Chunked));
    assert_eq!(ends(&out), [(4, true)]);
}

fn feed_more(p: &mut MessageParser, out: &mut Vec<ParseEvent>, pieces: &[&[u8]]) {
    for (i, piece) in pieces.iter().enumerate() {
        p.feed(piece, piece.len(), i as u64 + 2, out);
    }
}

#[test]
fn uncaptured_chunk_size_line_resynchronises_on_the_next_message() {
    let mut p = parser(MessageKind::Response);
    let mut out = Vec::new();
    let first = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
    p.feed(first, first.len() + 100, 1, &mut out);
    p.feed(b"junk", 5000, 2, &mut out);
    p.feed(b"HTTP/1.1 204 No Content\r\n\r\n", 27, 3, &mut out);
    assert_eq!(ends(&out), [(2, false), (3, true)]);
    assert_eq!(heads(&out)[1].status(), Some(204));
    assert_eq!(p.stats().resyncs, 1);
}

#[test]
fn responses_without_body() {
    let mut p = parser(MessageKind::Response);
    p.expect_response_to("HEAD");
    p.expect_response_to("GET");
    p.expect_response_to("GET");
    p.expect_response_to("GET");
    let stream = [
        // HEAD: Content-Length describes the resource, not this response.
        &b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"[..],
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ]
    .concat();
    let events = feed_all(&mut p, &[&stream]);
    let statuses: Vec<_> = heads(&events).iter().map(|h| h.status().unwrap()).collect();
    assert_eq!(statuses, [200, 100, 204, 304, 200]);
    assert_eq!(ends(&events).len(), 5);
    assert_eq!(heads(&events)[4].framing, Some(BodyFraming::Length(2)));
}

#[test]
fn close_delimited_response_ends_at_close() {
    let mut p = parser(MessageKind::Response);
    let mut out = feed_all(&mut p, &[b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\nsome", b" body"]);
    assert_eq!(heads(&out)[0].framing, Some(BodyFraming::UntilClose));
    assert!(heads(&out)[0].connection_close);
    assert!(ends(&out).is_empty());
    p.finish(10, &mut out);
    assert_eq!(ends(&out), [(2, true)], "ends with its last byte, not at the close");
    assert_eq!(p.ignoring(), Some(IgnoreReason::Closed));
}

#[test]
fn close_before_the_body_ended_is_incomplete() {
    let mut p = parser(MessageKind::Response);
    let mut out = feed_all(&mut p, &[b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"]);
    p.finish(5, &mut out);
    assert_eq!(ends(&out), [(1, false)]);
}

#[test]
fn pipelined_and_keep_alive_requests() {
    let mut p = parser(MessageKind::Request);
    let one = b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\nGET /3 HTTP/1.1\r\nHost: a\r\n\r\n";
    let events = feed_all(&mut p, &[one]);
    let targets: Vec<_> = heads(&events).iter().map(|h| h.target().unwrap()).collect();
    assert_eq!(targets, ["/1", "/2", "/3"]);

    let mut p = parser(MessageKind::Request);
    let mut out = Vec::new();
    for i in 0..1000u64 {
        let request = format!("POST /item/{i} HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc");
        p.feed(request.as_bytes(), request.len(), i, &mut out);
    }
    assert_eq!(heads(&out).len(), 1000);
    assert_eq!(ends(&out).len(), 1000);
    assert_eq!(p.stats().heads, 1000);
}

#[test]
fn truncated_head_is_flagged_and_the_next_message_resynchronises() {
    let mut p = parser(MessageKind::Request);
    let mut out = Vec::new();
    let captured = b"GET /big HTTP/1.1\r\nHost: a\r\nUser-Agent: x\r\nCookie: aaaaaaaa";
    p.feed(captured, 6000, 1, &mut out);
    let head = heads(&out)[0].clone();
    assert_eq!(head.completeness, HeadCompleteness::Truncated);
    assert_eq!(head.target(), Some("/big"));
    assert_eq!(head.header("host"), Some("a"));
    assert_eq!(head.header("user-agent"), Some("x"));
    assert_eq!(head.framing, None);
    // The rest of the message (its body) arrives, then a new request.
    p.feed(b"zzzzzz", 100, 2, &mut out);
    p.feed(GET, GET.len(), 3, &mut out);
    assert_eq!(ends(&out), [(2, false), (3, true)]);
    assert_eq!(heads(&out)[1].target(), Some("/users/42?q=1"));
    assert_eq!(p.stats().truncated_heads, 1);
}

#[test]
fn truncation_inside_the_request_line_emits_nothing() {
    let mut p = parser(MessageKind::Request);
    let mut out = Vec::new();
    p.feed(b"GET /very/long", 9000, 1, &mut out);
    assert!(out.is_empty());
    assert_eq!(p.stats().lost_messages, 1);
}

#[test]
fn huge_heads_are_flagged_and_memory_stays_bounded() {
    let limits = ParserLimits { max_head_bytes: 1024, ..ParserLimits::default() };
    let mut p = MessageParser::new(MessageKind::Request, limits, kept());
    let mut out = Vec::new();
    let mut request = b"GET /h HTTP/1.1\r\nHost: a\r\n".to_vec();
    for i in 0..2000 {
        request.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "v".repeat(50)).as_bytes());
    }
    request.extend_from_slice(b"\r\n");
    for piece in request.chunks(700) {
        p.feed(piece, piece.len(), 1, &mut out);
        assert!(p.head.capacity() <= 4096, "head buffer grew to {}", p.head.capacity());
    }
    let head = heads(&out)[0];
    assert_eq!(head.completeness, HeadCompleteness::TooLarge);
    assert_eq!(head.header("host"), Some("a"));
    p.feed(GET, GET.len(), 2, &mut out);
    assert_eq!(heads(&out).len(), 2);
    assert_eq!(heads(&out)[1].completeness, HeadCompleteness::Complete);
}

#[test]
fn other_protocols_are_ignored_quickly() {
    let tls_client_hello = [0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03];
    let inputs: [(&[u8], MessageKind); 7] = [
        (&tls_client_hello, MessageKind::Request),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", MessageKind::Request),
        (b"*1\r\n$4\r\nPING\r\n", MessageKind::Request),
        (b"PING\r\n", MessageKind::Request),
        (b"+PONG\r\n", MessageKind::Response),
        (b"SSH-2.0-OpenSSH_9.6\r\n", MessageKind::Request),
        (b"\x00\x00\x00\x08\x04\xd2\x16\x2f", MessageKind::Request),
    ];
    for (input, kind) in inputs {
        let mut p = parser(kind);
        let mut out = Vec::new();
        p.feed(input, input.len(), 1, &mut out);
        // Later bytes that happen to look like HTTP do not revive the connection.
        p.feed(GET, GET.len(), 2, &mut out);
        assert!(out.is_empty(), "{input:?}: {out:?}");
        assert_eq!(p.ignoring(), Some(IgnoreReason::NotHttp), "{input:?}");
    }
}

#[test]
fn garbage_is_rejected_within_the_first_bytes() {
    let mut p = parser(MessageKind::Request);
    let mut out = Vec::new();
    p.feed(b"\x16", 1, 1, &mut out);
    assert_eq!(p.ignoring(), Some(IgnoreReason::NotHttp));
    let mut p = parser(MessageKind::Response);
    p.feed(b"HTTX", 4, 1, &mut out);
    assert_eq!(p.ignoring(), Some(IgnoreReason::NotHttp));
}

#[test]
fn garbage_after_valid_messages_resynchronises() {
    let mut p = parser(MessageKind::Request);
    let events = feed_all(&mut p, &[GET, b"\x00\x01garbage", b"more garbage", GET]);
    assert_eq!(heads(&events).len(), 2);
    assert_eq!(p.stats().lost_messages, 1);
}

#[test]
fn resynchronisation_gives_up_eventually() {
    let limits = ParserLimits { max_resync_segments: 3, ..ParserLimits::default() };
    let mut p = MessageParser::new(MessageKind::Request, limits, kept());
    let mut out = Vec::new();
    p.feed(GET, GET.len(), 1, &mut out);
    for ts in 2..10 {
        p.feed(b"\x00junk", 5, ts, &mut out);
    }
    assert_eq!(p.ignoring(), Some(IgnoreReason::LostSync));
}

#[test]
fn switching_protocols_stops_parsing() {
    let mut p = parser(MessageKind::Response);
    p.expect_response_to("GET");
    let events = feed_all(&mut p, &[b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello"]);
    assert_eq!(heads(&events)[0].status(), Some(101));
    assert_eq!(ends(&events), [(1, true)]);
    assert_eq!(p.ignoring(), Some(IgnoreReason::Upgraded));

    let mut p = parser(MessageKind::Response);
    p.expect_response_to("CONNECT");
    feed_all(&mut p, &[b"HTTP/1.1 200 Connection established\r\n\r\n\x16\x03\x01"]);
    assert_eq!(p.ignoring(), Some(IgnoreReason::Upgraded));
}

#[test]
fn framing_errors() {
    // Disagreeing lengths: the request is reported, its body cannot be followed.
    let mut p = parser(MessageKind::Request);
    let events = feed_all(&mut p, &[b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", GET]);
    assert_eq!(heads(&events)[0].framing, None);
    assert_eq!(ends(&events)[0], (1, false));
    assert_eq!(heads(&events).len(), 2);
    // Same value twice is fine.
    let mut p = parser(MessageKind::Request);
    let events = feed_all(&mut p, &[b"POST / HTTP/1.1\r\nContent-Length: 2, 2\r\n\r\nhi"]);
    assert_eq!(heads(&events)[0].framing, Some(BodyFraming::Length(2)));
    // A response with a transfer coding other than chunked last is read until close.
    let mut p = parser(MessageKind::Response);
    let events = feed_all(&mut p, &[b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\nxx"]);
    assert_eq!(heads(&events)[0].framing, Some(BodyFraming::UntilClose));
}

#[test]
fn bare_lf_leading_empty_lines_and_folding() {
    let mut p = parser(MessageKind::Request);
    let events = feed_all(&mut p, &[b"\r\n\r\nGET /x HTTP/1.0\nHost: a\nUser-Agent: one\n two\n\n"]);
    let head = heads(&events)[0];
    assert_eq!(head.target(), Some("/x"));
    assert_eq!(head.version, HttpVersion::Http10);
    assert!(head.connection_close, "HTTP/1.0 without keep-alive");
    assert_eq!(head.header("user-agent"), Some("one two"));
}

#[test]
fn http10_keep_alive_and_connection_close() {
    let mut p = parser(MessageKind::Request);
    let events = feed_all(
        &mut p,
        &[b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\nGET / HTTP/1.1\r\nConnection: close\r\n\r\n"],
    );
    assert!(!heads(&events)[0].connection_close);
    assert!(heads(&events)[1].connection_close);
}

#[test]
fn close_in_the_middle_of_a_head() {
    let mut p = parser(MessageKind::Response);
    let mut out = feed_all(&mut p, &[b"HTTP/1.1 502 Bad Gateway\r\nServer: x\r\n"]);
    p.finish(9, &mut out);
    assert_eq!(heads(&out)[0].completeness, HeadCompleteness::Truncated);
    assert_eq!(ends(&out), [(1, false)]);
}

/// xorshift64*: deterministic pseudo-random numbers without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Feeds `stream` in random pieces; each piece's capture is cut to `capture` bytes.
fn feed_randomly(p: &mut MessageParser, stream: &[u8], rng: &mut Rng, capture: usize) -> Vec<ParseEvent> {
    let mut out = Vec::new();
    let mut pos = 0;
    let mut ts = 0;
    while pos < stream.len() {
        let len = (1 + rng.below(300)).min(stream.len() - pos);
        let piece = &stream[pos..pos + len];
        ts += 1;
        p.feed(&piece[..len.min(capture)], len, ts, &mut out);
        pos += len;
    }
    p.finish(ts + 1, &mut out);
    out
}

#[test]
fn fuzz_random_bytes_never_produce_messages() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..500 {
        let len = rng.below(4000);
        let stream: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        for kind in [MessageKind::Request, MessageKind::Response] {
            let mut p = parser(kind);
            let capture = 1 + rng.below(1000);
            let events = feed_randomly(&mut p, &stream, &mut rng, capture);
            assert!(heads(&events).is_empty(), "{events:?}");
        }
    }
}

#[test]
fn fuzz_http_mutations_never_panic_nor_grow() {
    let mut rng = Rng(42);
    let base = [
        &b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"[..],
        b"PUT /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwiki\r\n0\r\n\r\n",
        GET,
    ]
    .concat();
    for _ in 0..2000 {
        let mut stream = base.clone();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(stream.len());
            match rng.below(3) {
                0 => stream[at] = rng.next() as u8,
                1 => {
                    stream.remove(at);
                }
                _ => stream.insert(at, rng.next() as u8),
            }
        }
        let limits = ParserLimits { max_head_bytes: 256, ..ParserLimits::default() };
        let mut p = MessageParser::new(MessageKind::Request, limits, kept());
        let capture = 1 + rng.below(400);
        let events = feed_randomly(&mut p, &stream, &mut rng, capture);
        assert!(heads(&events).len() <= 3 + 1, "{events:?}");
        assert!(p.head.capacity() <= 1024);
        for head in heads(&events) {
            assert!(head.method().is_some_and(|m| !m.is_empty() && m.len() <= MAX_METHOD_LEN), "{head:?}");
        }
    }
}

#[test]
fn fuzz_valid_streams_with_random_splits_match_the_whole_feed() {
    let mut rng = Rng(7);
    for _ in 0..300 {
        let mut stream = Vec::new();
        for i in 0..1 + rng.below(6) {
            match rng.below(3) {
                0 => stream.extend_from_slice(format!("GET /r/{i} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes()),
                1 => {
                    let body = "b".repeat(rng.below(2000));
                    let head = format!("POST /r/{i} HTTP/1.1\r\nContent-Length: {}\r\n\r\n", body.len());
                    stream.extend_from_slice((head + &body).as_bytes());
                }
                _ => {
                    stream.extend_from_slice(
                        format!("PUT /r/{i} HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").as_bytes(),
                    );
                    for _ in 0..rng.below(4) {
                        let n = 1 + rng.below(700);
                        stream.extend_from_slice(format!("{n:x}\r\n{}\r\n", "c".repeat(n)).as_bytes());
                    }
                    stream.extend_from_slice(b"0\r\n\r\n");
                }
            }
        }
        let whole = shape(&feed_all(&mut parser(MessageKind::Request), &[&stream]));
        let mut p = parser(MessageKind::Request);
        let split = feed_randomly(&mut p, &stream, &mut rng, usize::MAX);
        assert_eq!(shape(&split), whole);
        // With a small capture, whatever is reported is either exact or flagged.
        let mut p = parser(MessageKind::Request);
        let captured = feed_randomly(&mut p, &stream, &mut rng, 64);
        let whole_heads = heads(&feed_all(&mut parser(MessageKind::Request), &[&stream]))
            .into_iter()
            .map(|h| h.start_line.clone())
            .collect::<Vec<_>>();
        for head in heads(&captured) {
            assert!(head.is_truncated() || whole_heads.contains(&head.start_line), "{head:?}");
        }
    }
}
