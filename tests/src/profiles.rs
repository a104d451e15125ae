//! Profiles the test agent received at `/profiling/v1/input`: the multipart form taken apart,
//! `event.json` parsed, the pprof decompressed and decoded with libdatadog's protobuf types, and
//! its samples flattened to function names for assertions.

use base64::Engine as _;
use libdd_profiling_protobuf::prost_impls;
use prost::Message as _;
use serde_json::Value;

use crate::{http::get as http_get, test_agent::TestAgent};

/// One upload as the agent received it.
pub struct UploadedProfile {
    pub headers: Value,
    /// The form parts: (name, filename, bytes).
    pub parts: Vec<(String, String, Vec<u8>)>,
    pub event: Value,
    pub pprof: prost_impls::Profile,
}

/// A sample of a decoded pprof, flattened.
#[derive(Debug, Clone)]
pub struct FlatSample {
    /// Function names, leaf first.
    pub functions: Vec<String>,
    /// Mapping file names, leaf first.
    pub modules: Vec<String>,
    /// Source lines, leaf first (0 when unknown).
    pub lines: Vec<i64>,
    pub values: Vec<i64>,
    /// (key, string value, numeric value).
    pub labels: Vec<(String, String, i64)>,
}

impl FlatSample {
    pub fn num_label(&self, key: &str) -> Option<i64> {
        self.labels.iter().find(|(k, ..)| k == key).map(|(_, _, n)| *n)
    }

    pub fn str_label(&self, key: &str) -> Option<&str> {
        self.labels.iter().find(|(k, ..)| k == key).map(|(_, s, _)| s.as_str())
    }

    /// Whether `chain` (outermost first, e.g. main, a, b) appears as consecutive callers.
    pub fn has_call_chain(&self, chain: &[&str]) -> bool {
        let root_first: Vec<&str> = self.functions.iter().rev().map(String::as_str).collect();
        root_first.windows(chain.len()).any(|w| w == chain)
    }
}

impl UploadedProfile {
    /// `header` of the request, case-insensitively.
    pub fn header(&self, name: &str) -> &str {
        header(&self.headers, name)
    }

    /// The pprof's sample types as (type, unit).
    pub fn sample_types(&self) -> Vec<(String, String)> {
        let s = |i: i64| self.pprof.string_table[i as usize].clone();
        self.pprof.sample_types.iter().map(|t| (s(t.r#type), s(t.unit))).collect()
    }

    pub fn samples(&self) -> Vec<FlatSample> {
        let p = &self.pprof;
        let s = |i: i64| p.string_table.get(i as usize).cloned().unwrap_or_default();
        let function_name = |id: u64| p.functions.iter().find(|f| f.id == id).map(|f| s(f.name)).unwrap_or_default();
        let module = |id: u64| p.mappings.iter().find(|m| m.id == id).map(|m| s(m.filename)).unwrap_or_default();
        p.samples
            .iter()
            .map(|sample| {
                let locations: Vec<&prost_impls::Location> =
                    sample.location_ids.iter().filter_map(|id| p.locations.iter().find(|l| l.id == *id)).collect();
                FlatSample {
                    functions: locations
                        .iter()
                        .map(|l| l.lines.first().map(|line| function_name(line.function_id)).unwrap_or_default())
                        .collect(),
                    modules: locations.iter().map(|l| module(l.mapping_id)).collect(),
                    lines: locations.iter().map(|l| l.lines.first().map_or(0, |line| line.line)).collect(),
                    values: sample.values.clone(),
                    labels: sample.labels.iter().map(|l| (s(l.key), s(l.str), l.num)).collect(),
                }
            })
            .collect()
    }
}

/// The profile uploads the test agent received so far, in order.
pub fn received_profiles(agent: &TestAgent) -> Vec<UploadedProfile> {
    let (status, body) = http_get(agent.port, "/test/session/requests").unwrap();
    assert_eq!(status, 200, "{body}");
    let requests: Vec<Value> = serde_json::from_str(&body).unwrap();
    requests
        .into_iter()
        .filter(|r| r["url"].as_str().is_some_and(|u| u.ends_with("/profiling/v1/input")))
        .map(|r| {
            let body = base64::engine::general_purpose::STANDARD.decode(r["body"].as_str().unwrap()).unwrap();
            let headers = r["headers"].clone();
            let parts = multipart_parts(header(&headers, "Content-Type"), &body);
            let part = |name: &str| {
                parts.iter().find(|(n, ..)| n == name).map(|(.., bytes)| bytes.clone()).unwrap_or_else(|| {
                    panic!("no {name} part in the upload: {:?}", parts.iter().map(|p| &p.0).collect::<Vec<_>>())
                })
            };
            let event: Value = serde_json::from_slice(&part("event")).expect("event.json is JSON");
            let compressed = part("profile.pprof");
            assert!(compressed.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]), "profile.pprof is not zstd-compressed");
            let raw = zstd::decode_all(compressed.as_slice()).unwrap();
            let pprof = prost_impls::Profile::decode(raw.as_slice()).expect("profile.pprof is a pprof");
            UploadedProfile { headers, parts, event, pprof }
        })
        .collect()
}

fn header<'a>(headers: &'a Value, name: &str) -> &'a str {
    headers
        .as_object()
        .unwrap()
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {name} header in {headers:#}"))
}

/// The parts of a multipart/form-data body: (name, filename, bytes).
fn multipart_parts(content_type: &str, body: &[u8]) -> Vec<(String, String, Vec<u8>)> {
    let boundary = content_type
        .split(';')
        .find_map(|p| p.trim().strip_prefix("boundary="))
        .unwrap_or_else(|| panic!("no boundary in {content_type:?}"))
        .trim_matches('"');
    let delimiter = format!("--{boundary}").into_bytes();
    let mut parts = Vec::new();
    let mut rest = body;
    while let Some(at) = find(rest, &delimiter) {
        rest = &rest[at + delimiter.len()..];
        if rest.starts_with(b"--") {
            break;
        }
        let Some(end) = find(rest, &delimiter) else { break };
        let part = &rest[..end];
        let header_end = find(part, b"\r\n\r\n").expect("part without headers");
        let headers = String::from_utf8_lossy(&part[..header_end]).into_owned();
        let content = part[header_end + 4..].strip_suffix(b"\r\n").unwrap_or(&part[header_end + 4..]);
        let attribute = |name: &str| {
            let key = format!("{name}=\"");
            headers.split(&key).nth(1).and_then(|v| v.split('"').next()).unwrap_or("").to_owned()
        };
        parts.push((attribute(" name"), attribute("filename"), content.to_vec()));
    }
    parts
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
