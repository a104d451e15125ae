//! ddtrace-agent: an eBPF out-of-process auto-instrumenter. See `../shared/notes/architecture.md`
//! for the layers; each is a module folder below, dependencies pointing down.

pub mod cli;
pub mod config;
pub mod core;
pub mod daemon;
pub mod intake;
pub mod integrations;
pub mod interpreters;
pub mod obfuscation;
pub mod probes;
pub mod products;
pub mod symbols;
pub mod tags;
pub mod target;
