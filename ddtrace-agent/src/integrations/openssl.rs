//! OpenSSL (`libssl`, 1.1 and 3; what curl, nginx and Python's `ssl` module use): the plaintext
//! of TLS connections, where the socket capture only sees ciphertext.
//!
//! Probes on the data functions copy, at their return, the first bytes of what the call really
//! moved; the kernel hands them over as socket activity of the connection they belong to (see
//! `ddtrace-ebpf/src/tls.rs`), so the HTTP integration parses them like clear-text traffic.
//! This integration only says where to attach: it has no events of its own.
//!
//! Where: `SSL_read`, `SSL_read_ex` (and the SSL BIO) all call one internal function,
//! `ssl_read_internal(ssl, buf, num, &readbytes)`, and likewise for writes. When the library's
//! code shows it (see [`ElfSymbols::wrapped_function`]), the probes go there: two probes instead
//! of four, and much cheaper ones. The exported `_ex` functions start with `sub $8,%rsp`, which
//! a uprobe must single-step; the internal ones start with `push`, which the kernel emulates.
//! Measured with bare perf uprobes on Debian's libssl 3 (a loop of SSL_write_ex + SSL_read_ex
//! pairs, 2.6 µs bare): entry + return probes on the exported pair 27.8 µs, on the internal
//! pair 9.0 µs. Otherwise, the four exported functions.

use super::{at_function_entries, Integration, LibraryMatch, ProbePlacement, ProbeSite};
use crate::{
    core::ContextTree,
    probes::{ProbeDef, ProbeEvent},
    symbols::ElfSymbols,
};

/// The four exported functions, then the two internal ones that serve them.
static PROBES: [ProbeDef; 6] = [
    // int SSL_read(SSL *ssl, void *buf, int num): bytes read, or <= 0
    ProbeDef::tls_data("SSL_read", false, false).required(),
    // int SSL_write(SSL *ssl, const void *buf, int num): bytes written, or <= 0
    ProbeDef::tls_data("SSL_write", true, false).required(),
    // int SSL_read_ex(SSL *ssl, void *buf, size_t num, size_t *readbytes): 1 on success
    // (OpenSSL 1.1.1 and later; Python's ssl module uses these).
    ProbeDef::tls_data("SSL_read_ex", false, true),
    // int SSL_write_ex(SSL *ssl, const void *buf, size_t num, size_t *written)
    ProbeDef::tls_data("SSL_write_ex", true, true),
    // int ssl_read_internal(SSL *s, void *buf, size_t num, size_t *readbytes): > 0 on success,
    // the byte count through the out-pointer, as the `_ex` form.
    ProbeDef::tls_data("ssl_read_internal", false, true),
    // int ssl_write_internal(SSL *s, const void *buf, size_t num, size_t *written)
    ProbeDef::tls_data("ssl_write_internal", true, true),
];

/// How many of [`PROBES`] are the exported functions.
const EXPORTED: usize = 4;

#[derive(Default)]
pub struct OpenSslIntegration {
    pub probes: ProbePlacement,
}

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

    /// The internal pair when both `_ex` functions wrap what their plain forms call too (never
    /// a mix: a call would then be seen twice), else the exported functions.
    fn probe_sites(&self, library: &ElfSymbols) -> Vec<ProbeSite> {
        if self.probes == ProbePlacement::Exported {
            return at_function_entries(&PROBES[..EXPORTED], library);
        }
        let read = library.wrapped_function("SSL_read_ex", "SSL_read");
        let write = library.wrapped_function("SSL_write_ex", "SSL_write");
        match (read, write) {
            (Some(read), Some(write)) => vec![(EXPORTED, Ok(read)), (EXPORTED + 1, Ok(write))],
            _ => at_function_entries(&PROBES[..EXPORTED], library),
        }
    }

    /// TLS probes report socket activity, which the HTTP integration consumes; none reaches here.
    fn on_event(&mut self, _probe_index: usize, _event: &ProbeEvent, _contexts: &mut ContextTree) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probes::ProbeKind;

    /// The system's libssl 3 (Debian's, which `.ci/run` installs): its `_ex` functions wrap the
    /// internal ones, so exactly the two internal probes are placed, each at a function of its
    /// own that the plain form calls too.
    #[test]
    fn the_system_libssl_gets_the_two_internal_probes() {
        let libssl = ElfSymbols::load(std::path::Path::new("/lib/x86_64-linux-gnu/libssl.so.3")).expect("libssl 3");
        let sites = OpenSslIntegration::default().probe_sites(&libssl);
        let indices: Vec<usize> = sites.iter().map(|(index, _)| *index).collect();
        assert_eq!(indices, [EXPORTED, EXPORTED + 1]);
        let read = sites[0].1.as_ref().unwrap();
        let write = sites[1].1.as_ref().unwrap();
        let exported: Vec<u64> = ["SSL_read", "SSL_read_ex", "SSL_write", "SSL_write_ex"]
            .iter()
            .map(|name| libssl.function_entry(name).unwrap().address)
            .collect();
        assert_ne!(read.address, write.address);
        assert!(!exported.contains(&read.address) && !exported.contains(&write.address), "{sites:?}");
        // Both start with a push, which the kernel emulates (no single-step).
        for site in [read, write] {
            let code = libssl_code(site.file_offset);
            assert!(matches!(code, [0x50..=0x57, ..] | [0x41, 0x50..=0x57, ..]), "{site:?}: {code:02x?}");
        }
        // Read then write, both with the `_ex` form's out-pointer.
        assert!(matches!(PROBES[EXPORTED].kind, ProbeKind::TlsData { sends: false, length_out: true }));
        assert!(matches!(PROBES[EXPORTED + 1].kind, ProbeKind::TlsData { sends: true, length_out: true }));
    }

    fn libssl_code(file_offset: u64) -> [u8; 2] {
        let bytes = std::fs::read("/lib/x86_64-linux-gnu/libssl.so.3").unwrap();
        [bytes[file_offset as usize], bytes[file_offset as usize + 1]]
    }

    #[test]
    fn exported_probes_when_asked() {
        let libssl = ElfSymbols::load(std::path::Path::new("/lib/x86_64-linux-gnu/libssl.so.3")).expect("libssl 3");
        let sites = OpenSslIntegration { probes: ProbePlacement::Exported }.probe_sites(&libssl);
        let placed: Vec<(usize, u64)> =
            sites.iter().map(|(index, site)| (*index, site.as_ref().unwrap().address)).collect();
        let exported: Vec<(usize, u64)> = ["SSL_read", "SSL_write", "SSL_read_ex", "SSL_write_ex"]
            .iter()
            .enumerate()
            .map(|(index, name)| (index, libssl.function_entry(name).unwrap().address))
            .collect();
        assert_eq!(placed, exported);
    }

    #[test]
    fn a_library_whose_wrappers_do_other_work_keeps_the_exported_probes() {
        // libc has no SSL functions at all: the fallback asks for the four exported ones.
        let libc = ElfSymbols::load(std::path::Path::new("/lib/x86_64-linux-gnu/libc.so.6")).unwrap();
        let sites = OpenSslIntegration::default().probe_sites(&libc);
        let indices: Vec<usize> = sites.iter().map(|(index, _)| *index).collect();
        assert_eq!(indices, [0, 1, 2, 3]);
        assert!(sites.iter().all(|(_, site)| site.is_err()));
    }
}
