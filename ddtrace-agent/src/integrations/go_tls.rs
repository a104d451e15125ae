//! Go's own TLS, `crypto/tls` (Go programs do not use OpenSSL): the plaintext of
//! `(*Conn).Write` at its entry and of `(*Conn).Read` where it copies it into the caller's buffer
//! (or at its ways out, where the code has no such copy), handed over by the kernel as
//! socket activity of the connection it belongs to (`ddtrace-ebpf/src/go_tls.rs`), so the wire
//! protocols parse it as they parse OpenSSL's. Like OpenSSL's, this integration only says
//! where to attach: it has no events of its own.
//!
//! Where: the functions are found by name in Go's own function table (stripped binaries too),
//! and the sites inside them by decoding their code (`symbols::go_probe_sites`): the entry
//! probe on the stack check's jump, the return probes on the jumps into each return tail,
//! every one on an instruction the kernel emulates where the code allows it.
//!
//! The socket: the kernel follows `Conn.conn` (a `net.Conn`) to its `*net.TCPConn` or
//! `*net.UnixConn`, then `fd` and `pfd.Sysfd`. It does so only when the interface's itab is one
//! of those two, found here in the binary's `.itablink` by their methods: any other `net.Conn`
//! (a wrapper of the program's own) leaves the socket unknown rather than guessed.

use ddtrace_common::{go_site, names, GoSiteSpec};

use super::{go_layout, Integration, LibraryMatch, ProbeSite};
use crate::{
    core::ContextTree,
    probes::{ProbeDef, ProbeEvent},
    symbols::{
        go_probe_sites::{self, BranchTaken, GoSite, ResultAt},
        ElfSymbols, SymbolError,
    },
};

const WRITE: &str = "crypto/tls.(*Conn).Write";
const READ: &str = "crypto/tls.(*Conn).Read";

static PROBES: [ProbeDef; 4] = [
    // func (c *Conn) Write(b []byte) (int, error): the plaintext at entry.
    ProbeDef::go_code(WRITE, names::GO_TLS_ENTRY_PROGRAM, true).required(),
    // func (c *Conn) Read(b []byte) (int, error): where its one `copy` moves the plaintext into
    // b (one probe hit per read that moved data)...
    ProbeDef::go_code(READ, names::GO_TLS_COPY_PROGRAM, false),
    // ...or, where the code has no such copy, the buffer at entry and what was read into it at
    // each way out (three to four hits per read).
    ProbeDef::go_code(READ, names::GO_TLS_ENTRY_PROGRAM, false),
    ProbeDef::go_code(READ, names::GO_TLS_RETURN_PROGRAM, false),
];
const COPY: usize = 1;
const READ_ENTRY: usize = 2;
const READ_RETURN: usize = 3;

#[derive(Default)]
pub struct GoTlsIntegration;

impl Integration for GoTlsIntegration {
    fn name(&self) -> &'static str {
        "go-crypto/tls"
    }

    /// Go links its standard library into the executable: matched by its function.
    fn library(&self) -> LibraryMatch {
        LibraryMatch::SharedLibrary { display: "Go crypto/tls", file_prefixes: &[], marker_symbol: WRITE }
    }

    fn probes(&self) -> &'static [ProbeDef] {
        &PROBES
    }

    fn probe_sites(&self, library: &ElfSymbols) -> Vec<ProbeSite> {
        match sites(library) {
            Ok(sites) => sites,
            Err(reason) => {
                let error = SymbolError::Unplaceable {
                    path: library.path().to_path_buf(),
                    symbol: "crypto/tls.(*Conn)".to_string(),
                    reason,
                };
                vec![(0, Err(error))]
            }
        }
    }

    /// Go TLS probes report socket activity, which the wire protocols consume.
    fn on_event(&mut self, _probe_index: usize, _event: &ProbeEvent, _contexts: &mut ContextTree) {}
}

fn sites(library: &ElfSymbols) -> Result<Vec<ProbeSite>, String> {
    let layout = go_layout::of(library)?;
    // The methods of `*net.TCPConn`/`*net.UnixConn` in `net.Conn`'s method table (sorted:
    // Close 0, LocalAddr 1, Read 2, ..., Write 7) name the two itabs.
    let itab = |type_name: &str| {
        library.go_itab_with_methods(&[
            (0, &format!("net.(*{type_name}).Close")),
            (2, &format!("net.(*{type_name}).Read")),
            (7, &format!("net.(*{type_name}).Write")),
        ])
    };
    let conn_itabs = [itab("TCPConn"), itab("UnixConn")];
    if conn_itabs.iter().all(Option::is_none) {
        return Err("no *net.TCPConn or *net.UnixConn net.Conn itab in the binary".into());
    }
    let spec_at = |site: &GoSite, result: u32| GoSiteSpec {
        only_if: site.only_if.map_or(0, BranchTaken::encoded),
        result,
        conn_itabs: conn_itabs.map(|itab| itab.map_or(0, |itab| itab.wrapping_sub(site.address) as i64)),
        tls_conn_conn: layout.tls_conn_conn,
        conn_fd: layout.conn_fd,
        netfd_sysfd: layout.netfd_sysfd,
        request_ctx: 0,
    };
    let located = |site: &GoSite, result: u32| {
        library.site_at(site.address, spec_at(site, result)).ok_or_else(|| format!("{:#x} is in no segment", site.address))
    };
    let code = |name: &str| library.whole_function(name).ok_or_else(|| format!("{name}'s code is unreadable"));

    let mut sites = Vec::new();
    let (write, address) = code(WRITE)?;
    let entry = go_probe_sites::emulated_entry_site(write, address).map_err(|e| format!("{WRITE}: {e}"))?;
    sites.push((0, Ok(located(&entry, 0)?)));
    let (read, address) = code(READ)?;
    let read_error = |e: go_probe_sites::SiteError| format!("{READ}: {e}");
    let copy = match library.function_address("runtime.memmove") {
        Some(memmove) => go_probe_sites::only_call_to(read, address, memmove).map_err(read_error)?,
        None => None,
    };
    let receiver = go_probe_sites::spilled_argument(read, address, go_probe_sites::RAX).map_err(read_error)?;
    // The copy counts only when its destination is the caller's buffer: `b`'s pointer (RBX at
    // entry) reloaded from its spill slot on the straight way to the call.
    let buffer = go_probe_sites::spilled_argument(read, address, go_probe_sites::RBX).map_err(read_error)?;
    let copies_into_buffer = match (copy, buffer) {
        (Some(copy), Some(buffer)) => {
            go_probe_sites::call_argument_from_slot(read, address, copy.address, go_probe_sites::RAX, buffer)
                .map_err(read_error)?
        }
        _ => false,
    };
    if let (Some(copy), Some(receiver), true) = (copy, receiver, copies_into_buffer) {
        let receiver = i16::try_from(receiver).map_err(|_| format!("a receiver at SP{receiver:+} is out of range"))?;
        sites.push((COPY, Ok(located(&copy, go_site::RESULT_ON_STACK | u32::from(receiver as u16))?)));
        return Ok(sites);
    }
    let entry = go_probe_sites::emulated_entry_site(read, address).map_err(read_error)?;
    sites.push((READ_ENTRY, Ok(located(&entry, 0)?)));
    for exit in go_probe_sites::return_sites(read, address, go_probe_sites::RAX, true).map_err(read_error)? {
        let result = match exit.result {
            ResultAt::Register(number) => go_site::RESULT_IN_REGISTER | u32::from(number),
            ResultAt::Stack(offset) => {
                let offset = i16::try_from(offset).map_err(|_| format!("a result at SP{offset:+} is out of range"))?;
                go_site::RESULT_ON_STACK | u32::from(offset as u16)
            }
        };
        sites.push((READ_RETURN, Ok(located(&exit.site, result)?)));
    }
    Ok(sites)
}

#[cfg(test)]
#[path = "go_tls_tests.rs"]
mod tests;
