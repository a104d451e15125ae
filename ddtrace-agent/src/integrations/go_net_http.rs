//! Go's net/http client, for one fact only: which goroutine each outgoing request is written
//! for. The client writes a request on the connection's write loop, not on the goroutine that
//! called `RoundTrip`, so the bytes alone would name the wrong goroutine. Two entry probes (on
//! the stack check's jump, emulated) let the kernel carry the sender over: `roundTrip(req)` on
//! the sending goroutine, `(*Request).write` on the write loop (`ddtrace-ebpf/src/goroutines.rs`).
//! The request's span itself comes from its bytes, like any client's; this integration has no
//! events of its own.

use ddtrace_common::GoSiteSpec;

use super::{Integration, LibraryMatch, ProbeSite};
use crate::{
    core::ContextTree,
    probes::{ProbeDef, ProbeEvent},
    symbols::{go_probe_sites, ElfSymbols, SymbolError},
};

const ROUND_TRIP: &str = "net/http.(*Transport).roundTrip";
const REQUEST_WRITE: &str = "net/http.(*Request).write";

static PROBES: [ProbeDef; 2] = [
    // func (t *Transport) roundTrip(req *Request) (*Response, error), on the sending goroutine.
    ProbeDef::go_request_hand_off(ROUND_TRIP, false).required(),
    // func (r *Request) write(w io.Writer, ...) error, on the connection's write loop.
    ProbeDef::go_request_hand_off(REQUEST_WRITE, true).required(),
];

#[derive(Default)]
pub struct GoNetHttpIntegration;

impl Integration for GoNetHttpIntegration {
    fn name(&self) -> &'static str {
        "go-net/http"
    }

    fn library(&self) -> LibraryMatch {
        LibraryMatch::SharedLibrary { display: "Go net/http", file_prefixes: &[], marker_symbol: ROUND_TRIP }
    }

    fn probes(&self) -> &'static [ProbeDef] {
        &PROBES
    }

    fn probe_sites(&self, library: &ElfSymbols) -> Vec<ProbeSite> {
        PROBES.iter().enumerate().map(|(index, def)| (index, entry(library, def.symbol))).collect()
    }

    /// The hand-off stays in the kernel: no event reaches here.
    fn on_event(&mut self, _probe_index: usize, _event: &ProbeEvent, _contexts: &mut ContextTree) {}
}

/// Function `name`'s entry site, counted once per call (not again when its stack grows).
fn entry(library: &ElfSymbols, name: &str) -> Result<crate::symbols::ProbeLocation, SymbolError> {
    let unplaceable = |reason: String| SymbolError::Unplaceable {
        path: library.path().to_path_buf(),
        symbol: name.to_string(),
        reason,
    };
    let (code, address) = library
        .whole_function(name)
        .ok_or_else(|| SymbolError::MissingSymbol { path: library.path().to_path_buf(), symbol: name.to_string() })?;
    let site = go_probe_sites::entry_site(code, address).map_err(|e| unplaceable(e.to_string()))?;
    let spec = GoSiteSpec { only_if: site.only_if.map_or(0, go_probe_sites::BranchTaken::encoded), ..GoSiteSpec::default() };
    library.site_at(site.address, spec).ok_or_else(|| unplaceable(format!("{:#x} is in no segment", site.address)))
}
