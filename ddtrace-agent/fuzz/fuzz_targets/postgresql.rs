//! postgresql: arbitrary traffic on a connection its first message opened (see `streams::replay`).
#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| ddtrace_agent::integrations::streams::replay::fuzz_one("postgresql", input));
