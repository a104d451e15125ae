use super::*;

fn headers(pairs: &[(&str, &str)]) -> Vec<Header> {
    pairs.iter().map(|(n, v)| Header { name: n.to_string(), value: v.to_string() }).collect()
}

const TRACEPARENT_VALUE: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

#[test]
fn datadog_headers() {
    let h = headers(&[
        ("x-datadog-trace-id", "1234"),
        ("x-datadog-parent-id", "5678"),
        ("x-datadog-sampling-priority", "2"),
        ("x-datadog-origin", "synthetics"),
        ("x-datadog-tags", "_dd.p.dm=-4,_dd.p.tid=640cfd8d00000000,other=x"),
    ]);
    let ctx = StyleList::default().extract(&h).unwrap();
    assert_eq!(ctx.trace_id, (0x640c_fd8d_0000_0000u128 << 64) | 1234);
    assert_eq!(ctx.parent_id, 5678);
    assert_eq!(ctx.sampling_priority, Some(2));
    assert_eq!(ctx.origin.as_deref(), Some("synthetics"));
    assert_eq!(ctx.tags.get("_dd.p.dm").map(String::as_str), Some("-4"));
    assert_eq!(ctx.tags.get("_dd.p.tid").map(String::as_str), Some("640cfd8d00000000"));
    assert!(!ctx.tags.contains_key("other"), "only _dd.p.* tags propagate");
    assert_eq!(ctx.style, PropagationStyle::Datadog);
}

#[test]
fn datadog_invalid_ids() {
    for (trace, parent) in [("0", "1"), ("abc", "1"), ("-5", "1"), ("18446744073709551616", "1"), ("1", "x")] {
        let h = headers(&[("x-datadog-trace-id", trace), ("x-datadog-parent-id", parent)]);
        assert_eq!(StyleList::default().extract(&h), None, "{trace} {parent}");
    }
    // No parent: the trace is still joined (RUM and synthetics send none).
    let ctx = StyleList::default().extract(&headers(&[("x-datadog-trace-id", "7")])).unwrap();
    assert_eq!((ctx.trace_id, ctx.parent_id, ctx.sampling_priority), (7, 0, None));
}

#[test]
fn datadog_tag_errors() {
    let long = format!("_dd.p.x={}", "a".repeat(600));
    let cases = [
        (long.as_str(), "extract_max_size"),
        ("_dd.p.dm=-4,garbage", "decoding_error"),
        ("_dd.p.tid=XYZ", "malformed_tid XYZ"),
        ("_dd.p.tid=640CFD8D00000000", "malformed_tid 640CFD8D00000000"),
    ];
    for (tags, error) in cases {
        let h = headers(&[("x-datadog-trace-id", "1"), ("x-datadog-parent-id", "2"), ("x-datadog-tags", tags)]);
        let ctx = StyleList::default().extract(&h).unwrap();
        assert_eq!(ctx.tags.get(PROPAGATION_ERROR_TAG).map(String::as_str), Some(error), "{tags}");
        assert_eq!(ctx.trace_id, 1, "the upper half stays zero");
        assert!(!ctx.tags.contains_key("_dd.p.tid"));
    }
}

#[test]
fn tracecontext_headers() {
    let h = headers(&[
        ("traceparent", TRACEPARENT_VALUE),
        ("tracestate", "foo=bar,dd=s:2;o:rum;p:00f067aa0ba902b7;t.dm:-4;t.usr.id:baz64~~,other=1"),
    ]);
    let (styles, _) = StyleList::parse("tracecontext");
    let ctx = styles.extract(&h).unwrap();
    assert_eq!(ctx.trace_id, 0x0af7_6519_16cd_43dd_8448_eb21_1c80_319c);
    assert_eq!(ctx.parent_id, 0xb7ad_6b71_6920_3331);
    assert_eq!(ctx.sampling_priority, Some(2));
    assert_eq!(ctx.origin.as_deref(), Some("rum"));
    assert_eq!(ctx.tags.get("_dd.p.dm").map(String::as_str), Some("-4"));
    assert_eq!(ctx.tags.get("_dd.p.usr.id").map(String::as_str), Some("baz64=="));
    assert_eq!(ctx.tags.get(LAST_PARENT_ID_TAG).map(String::as_str), Some("00f067aa0ba902b7"));
}

#[test]
fn tracecontext_sampling_priority_follows_the_sampled_flag() {
    let (styles, _) = StyleList::parse("tracecontext");
    let sampled = TRACEPARENT_VALUE;
    let dropped = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
    let cases = [
        (sampled, None, 1),
        (dropped, None, 0),
        (sampled, Some("dd=s:2"), 2),
        (sampled, Some("dd=s:-1"), 1),
        (dropped, Some("dd=s:-1"), -1),
        (dropped, Some("dd=s:2"), 0),
    ];
    for (traceparent, tracestate, expected) in cases {
        let mut pairs = vec![("traceparent", traceparent)];
        pairs.extend(tracestate.map(|ts| ("tracestate", ts)));
        let ctx = styles.extract(&headers(&pairs)).unwrap();
        assert_eq!(ctx.sampling_priority, Some(expected), "{traceparent} {tracestate:?}");
    }
}

#[test]
fn traceparent_validation() {
    let (styles, _) = StyleList::parse("tracecontext");
    let invalid = [
        "",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
        "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
        "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01extra",
        "00_0af7651916cd43dd8448eb211c80319c_b7ad6b7169203331_01",
        "0g-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319é-b7ad6b7169203331-01",
    ];
    for value in invalid {
        assert_eq!(styles.extract(&headers(&[("traceparent", value)])), None, "{value}");
    }
    // Future versions may carry more fields; surrounding whitespace is allowed.
    for value in ["01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-future", &format!(" {TRACEPARENT_VALUE} ")] {
        assert!(styles.extract(&headers(&[("traceparent", value)])).is_some(), "{value}");
    }
}

#[test]
fn first_valid_style_wins() {
    let h = headers(&[("x-datadog-trace-id", "1"), ("x-datadog-parent-id", "2"), ("traceparent", TRACEPARENT_VALUE)]);
    let ctx = StyleList::default().extract(&h).unwrap();
    assert_eq!((ctx.trace_id, ctx.parent_id, ctx.style), (1, 2, PropagationStyle::Datadog), "different trace ids");
    let (w3c_first, _) = StyleList::parse("tracecontext,datadog");
    assert_eq!(w3c_first.extract(&h).unwrap().style, PropagationStyle::TraceContext);
    // An invalid first style falls through to the next.
    let h = headers(&[("x-datadog-trace-id", "zero"), ("traceparent", TRACEPARENT_VALUE)]);
    assert_eq!(StyleList::default().extract(&h).unwrap().style, PropagationStyle::TraceContext);
}

#[test]
fn tracecontext_parent_wins_when_trace_ids_agree() {
    // Same trace (lower 64 bits and _dd.p.tid), but a hop updated only traceparent.
    let h = headers(&[
        ("x-datadog-trace-id", &(0x8448_eb21_1c80_319cu64).to_string()),
        ("x-datadog-parent-id", "10"),
        ("x-datadog-sampling-priority", "1"),
        ("x-datadog-tags", "_dd.p.tid=0af7651916cd43dd"),
        ("traceparent", TRACEPARENT_VALUE),
        ("tracestate", "dd=s:1;p:000000000000000a"),
    ]);
    let ctx = StyleList::default().extract(&h).unwrap();
    assert_eq!(ctx.style, PropagationStyle::Datadog);
    assert_eq!(ctx.parent_id, 0xb7ad_6b71_6920_3331);
    assert_eq!(ctx.tags.get(LAST_PARENT_ID_TAG).map(String::as_str), Some("000000000000000a"));

    // Without `p` in tracestate, the replaced Datadog parent is recorded.
    let mut h = h;
    h.pop();
    let ctx = StyleList::default().extract(&h).unwrap();
    assert_eq!(ctx.parent_id, 0xb7ad_6b71_6920_3331);
    assert_eq!(ctx.tags.get(LAST_PARENT_ID_TAG).map(String::as_str), Some("000000000000000a"));

    // DD_TRACE_PROPAGATION_EXTRACT_FIRST keeps the Datadog parent.
    let ctx = StyleList::default().with_extract_first(true).extract(&h).unwrap();
    assert_eq!(ctx.parent_id, 10);
}

#[test]
fn style_lists() {
    let (list, errors) = StyleList::parse(" Datadog , tracecontext,b3 single header,none,,bogus,datadog");
    assert_eq!(list.styles(), [PropagationStyle::Datadog, PropagationStyle::TraceContext, PropagationStyle::B3Single]);
    assert_eq!(errors, [PropagationStyleError::Unknown { style: "bogus".to_owned() }]);
    assert!(StyleList::parse("none").0.styles().is_empty());
    let (list, _) = StyleList::from_settings(None, Some("tracecontext"));
    assert_eq!(list.styles(), [PropagationStyle::TraceContext]);
    let (list, _) = StyleList::from_settings(Some("datadog"), Some("tracecontext"));
    assert_eq!(list.styles(), [PropagationStyle::Datadog]);
    assert_eq!(StyleList::from_settings(None, None).0, StyleList::default());
    // `none` extracts nothing.
    let h = headers(&[("x-datadog-trace-id", "1")]);
    assert_eq!(StyleList::parse("none").0.extract(&h), None);
    assert_eq!(StyleList::parse("b3multi").0.extract(&h), None);
}
