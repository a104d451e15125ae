//! OpenSSL (`libssl`, 1.1 and 3; what curl, nginx and Python's `ssl` module use): the plaintext
//! of TLS connections, where the socket capture only sees ciphertext.
//!
//! Probes on the four data functions copy, at their return, the first bytes of what the call
//! really moved; the kernel hands them over as socket activity of the connection they belong to
//! (see `ddtrace-ebpf/src/tls.rs`), so the HTTP integration parses them like clear-text traffic.
//! This integration only says where to attach: it has no events of its own.

use super::{Integration, LibraryMatch};
use crate::{
    core::ContextTree,
    probes::{ProbeDef, ProbeEvent},
};

static PROBES: [ProbeDef; 4] = [
    // int SSL_read(SSL *ssl, void *buf, int num): bytes read, or <= 0
    ProbeDef::tls_data("SSL_read", false, false).required(),
    // int SSL_write(SSL *ssl, const void *buf, int num): bytes written, or <= 0
    ProbeDef::tls_data("SSL_write", true, false).required(),
    // int SSL_read_ex(SSL *ssl, void *buf, size_t num, size_t *readbytes): 1 on success
    // (OpenSSL 1.1.1 and later; Python's ssl module uses these).
    ProbeDef::tls_data("SSL_read_ex", false, true),
    // int SSL_write_ex(SSL *ssl, const void *buf, size_t num, size_t *written)
    ProbeDef::tls_data("SSL_write_ex", true, true),
];

#[derive(Default)]
pub struct OpenSslIntegration;

impl Integration for OpenSslIntegration {
    fn name(&self) -> &'static str {
        "openssl"
    }

    fn library(&self) -> LibraryMatch {
        LibraryMatch::SharedLibrary { display: "libssl", file_prefixes: &["libssl"], marker_symbol: "SSL_read" }
    }

    fn probes(&self) -> &'static [ProbeDef] {
        &PROBES
    }

    /// TLS probes report socket activity, which the HTTP integration consumes; none reaches here.
    fn on_event(&mut self, _probe_index: usize, _event: &ProbeEvent, _contexts: &mut ContextTree) {}
}
