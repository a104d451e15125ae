//! Reading the instrumentation telemetry the test agent received.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{http::get, test_agent::TestAgent};

/// Every telemetry event received, oldest first, batches flattened: `(request_type, payload,
/// envelope)`.
pub fn telemetry_events(agent: &TestAgent) -> Vec<(String, Value, Value)> {
    let (status, body) = get(agent.port, "/test/session/apmtelemetry").unwrap();
    assert_eq!(status, 200, "{body}");
    let mut envelopes: Vec<Value> = serde_json::from_str(&body).unwrap();
    envelopes.sort_by_key(|e| e["seq_id"].as_u64());
    let mut events = Vec::new();
    for envelope in envelopes {
        let kind = envelope["request_type"].as_str().unwrap_or("").to_owned();
        if kind == "message-batch" {
            for message in envelope["payload"].as_array().into_iter().flatten() {
                let kind = message["request_type"].as_str().unwrap_or("").to_owned();
                events.push((kind, message["payload"].clone(), envelope.clone()));
            }
        } else {
            events.push((kind, envelope["payload"].clone(), envelope.clone()));
        }
    }
    events
}

pub fn wait_for_event(agent: &TestAgent, kind: &str) -> Vec<(String, Value, Value)> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let events = telemetry_events(agent);
        if events.iter().any(|(k, ..)| k == kind) {
            return events;
        }
        assert!(Instant::now() < deadline, "no {kind} among {events:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `name -> (value, origin)` of a configuration list.
pub fn setting<'a>(configuration: &'a Value, name: &str) -> (&'a Value, &'a str) {
    let entry = configuration
        .as_array()
        .and_then(|entries| entries.iter().find(|e| e["name"] == name))
        .unwrap_or_else(|| panic!("no {name} in {configuration:#}"));
    (&entry["value"], entry["origin"].as_str().unwrap_or(""))
}
