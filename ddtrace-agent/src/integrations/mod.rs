//! One module per instrumented library or wire protocol. A library integration says which
//! library it matches, which symbols it probes with what capture, and how its events open and
//! close execution contexts; a wire protocol (`streams::WireProtocol`) says which connections
//! speak it and how their messages do. Neither knows anything of products: they only talk to
//! `core`.

mod go_layout;
mod go_net_http;
mod go_tls;
pub mod handlers;
pub mod http;
mod mysql;
mod openssl;
mod postgres;
mod redis;
pub mod routes;
mod sql_wire;
mod sqlite;
mod sqlite_layout;
mod sqlite_text;
pub mod streams;
mod traced_function;

use std::path::Path;

use crate::{
    core::ContextTree,
    probes::{ProbeDef, ProbeEvent},
    symbols::{ElfSymbols, ProbeLocation, SymbolError},
};

pub use traced_function::{TracedFunction, TracedFunctionError};

/// Every library integration this agent has: the one place to add one.
pub fn all(sqlite_probes: ProbePlacement, openssl_probes: ProbePlacement) -> Vec<Box<dyn Integration>> {
    vec![
        Box::new(sqlite::SqliteIntegration::placed(sqlite_probes)),
        Box::new(openssl::OpenSslIntegration { probes: openssl_probes }),
        Box::new(go_tls::GoTlsIntegration),
        Box::new(go_net_http::GoNetHttpIntegration),
    ]
}

/// Every wire protocol this agent recognises on the connections of traced processes, in the
/// order they are asked: the one place to add one.
pub fn wire_protocols(config: &crate::config::Config) -> Vec<Box<dyn streams::WireProtocol>> {
    let (header_tags, header_tag_errors) = http::HeaderTags::parse(&config.header_tags.value);
    for error in header_tag_errors {
        tracing::warn!(%error, "DD_TRACE_HEADER_TAGS: entry skipped");
    }
    vec![
        Box::new(http::HttpProtocol::new(header_tags, config.span_attribute_schema.value)),
        Box::new(postgres::PostgresProtocol { schema: config.span_attribute_schema.value }),
        Box::new(mysql::MysqlProtocol { schema: config.span_attribute_schema.value }),
        Box::new(redis::RedisProtocol { schema: config.span_attribute_schema.value }),
    ]
}

#[cfg(test)]
pub mod test_support {
    use super::{http::HeaderTags, streams::StreamLayer};

    /// A stream layer that knows HTTP only.
    pub fn http_layer(header_tags: HeaderTags) -> StreamLayer {
        StreamLayer::new(vec![Box::new(super::http::HttpProtocol::new(header_tags, Default::default()))])
    }
}

/// Where an integration's probes go (`--openssl-probes`, `--sqlite-probes`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ProbePlacement {
    /// Functions the exported ones call, when the library's code shows them and the kernel
    /// emulates their first instruction (no single-step); otherwise the exported functions.
    #[default]
    Auto,
    /// The exported functions: the escape hatch should the library's code be misread in some
    /// build, and the baseline `cargo xtask bench --sqlite` compares with.
    Exported,
}

/// Which mapped files an integration instruments.
#[derive(Debug, Clone, Copy)]
pub enum LibraryMatch {
    /// A shared library, by file name.
    SharedLibrary {
        /// Shown to users: "waiting for libsqlite3".
        display: &'static str,
        /// File names start with one of these, followed by `.so` or `-`.
        file_prefixes: &'static [&'static str],
        /// A symbol that proves the library is linked in statically (checked in the executable).
        marker_symbol: &'static str,
    },
    /// One file, by absolute path or by file name.
    File(&'static str),
}

impl LibraryMatch {
    pub fn display(&self) -> &'static str {
        match self {
            Self::SharedLibrary { display, .. } => display,
            Self::File(file) => file,
        }
    }

    pub fn matches_file(&self, path: &Path) -> bool {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { return false };
        match self {
            Self::SharedLibrary { file_prefixes, .. } => file_prefixes.iter().any(|prefix| {
                name.strip_prefix(prefix).is_some_and(|rest| rest.starts_with(".so") || rest.starts_with('-'))
            }),
            Self::File(file) if file.starts_with('/') => path == Path::new(file),
            Self::File(file) => name == *file,
        }
    }

    /// The symbol to look for in the executable when no shared library matched.
    pub fn marker_symbol(&self) -> Option<&'static str> {
        match self {
            Self::SharedLibrary { marker_symbol, .. } => Some(marker_symbol),
            Self::File(_) => None,
        }
    }
}

/// The daemon-side counterpart of a dd-trace-py integration's `patch()`.
pub trait Integration: Send {
    fn name(&self) -> &'static str;
    fn library(&self) -> LibraryMatch;
    /// The probes to attach to a matching library; events carry the index into this slice.
    fn probes(&self) -> &'static [ProbeDef];
    /// Where the probes go in `library`: by default every one of [`Self::probes`] at the entry
    /// of the function it names. An integration may choose a subset, or functions the library
    /// does not export (see OpenSSL's).
    fn probe_sites(&self, library: &ElfSymbols) -> Vec<ProbeSite> {
        at_function_entries(self.probes(), library)
    }
    /// An event of probe `probe_index` fired in a traced process.
    fn on_event(&mut self, probe_index: usize, event: &ProbeEvent, contexts: &mut ContextTree);
    /// The integration's probes were attached to `library` for process `tgid`.
    fn on_library_attached(&mut self, _tgid: u32, _library: &ElfSymbols) {}
    /// Process `tgid` exited: forget its state.
    fn on_process_exit(&mut self, _tgid: u32) {}
}

/// One probe's place in a library: its index in the integration's probes, and where it goes or
/// why it cannot.
pub type ProbeSite = (usize, Result<ProbeLocation, SymbolError>);

/// `defs` (the first of an integration's probes), each at the entry of the function it names.
pub fn at_function_entries(defs: &[ProbeDef], library: &ElfSymbols) -> Vec<ProbeSite> {
    defs.iter().enumerate().map(|(index, def)| (index, library.function_entry(def.symbol))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_match_accepts_versioned_sonames_only() {
        let m = LibraryMatch::SharedLibrary {
            display: "libsqlite3",
            file_prefixes: &["libsqlite3"],
            marker_symbol: "sqlite3_step",
        };
        assert!(m.matches_file(Path::new("/usr/lib/x86_64-linux-gnu/libsqlite3.so.0.8.6")));
        assert!(m.matches_file(Path::new("/opt/libsqlite3.so")));
        assert!(!m.matches_file(Path::new("/usr/lib/libsqlite3x.so")));
        assert!(!m.matches_file(Path::new("/usr/lib/python3.11/_sqlite3.so")));
        assert!(LibraryMatch::File("app").matches_file(Path::new("/srv/app")));
        assert!(LibraryMatch::File("/srv/app").matches_file(Path::new("/srv/app")));
        assert!(!LibraryMatch::File("/srv/app").matches_file(Path::new("/other/app")));
    }
}
