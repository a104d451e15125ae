//! Go's net/http, for one fact only: which goroutine each outgoing request is sent for. The
//! client writes a request on the connection's write loop, not on the goroutine that called
//! `RoundTrip`, and a handler may send from a goroutine of its own. Three entry probes (on the
//! stack check's jump, emulated) let the kernel carry it over (`ddtrace-ebpf/src/goroutines.rs`):
//! `serverHandler.ServeHTTP` (the serving goroutine and its request's context), `roundTrip(req)`
//! (the sending goroutine, or the one serving an ancestor of `req`'s context), and
//! `(*Request).write` on the write loop. The spans themselves come from the bytes, like any
//! client's and server's; this integration has no events of its own.

use ddtrace_common::{names, GoSiteSpec};

use super::{go_layout, Integration, LibraryMatch, ProbeSite};
use crate::{
    core::ContextTree,
    probes::{ProbeDef, ProbeEvent},
    symbols::{go_probe_sites, ElfSymbols, SymbolError},
};

const SERVE: &str = "net/http.serverHandler.ServeHTTP";
const ROUND_TRIP: &str = "net/http.(*Transport).roundTrip";
const REQUEST_WRITE: &str = "net/http.(*Request).write";

/// `ROUND_TRIP`'s index in [`PROBES`].
const ROUND_TRIP_PROBE: usize = 1;

static PROBES: [ProbeDef; 3] = [
    // func (sh serverHandler) ServeHTTP(rw ResponseWriter, req *Request), on the serving
    // goroutine (absent from programs that serve nothing). Only `roundTrip` reads what it
    // records: a server that sends no request never pays its trap and program (~1.5 µs a
    // request on these VMs), and one that does has it armed by an attach (~20 ms) after its
    // first call.
    ProbeDef::go_code(SERVE, names::GO_SERVE_PROGRAM, false).armed_by(ROUND_TRIP_PROBE),
    // func (t *Transport) roundTrip(req *Request) (*Response, error), on the sending goroutine.
    ProbeDef::go_code(ROUND_TRIP, names::GO_ROUND_TRIP_PROGRAM, false).required(),
    // func (r *Request) write(w io.Writer, ...) error, on the connection's write loop.
    ProbeDef::go_code(REQUEST_WRITE, names::GO_REQUEST_WRITE_PROGRAM, false).required(),
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
        let layout = go_layout::of(library);
        PROBES
            .iter()
            .enumerate()
            .map(|(index, def)| {
                let site = match &layout {
                    Ok(layout) => entry(library, def.symbol, layout.request_ctx),
                    Err(reason) => Err(SymbolError::Unplaceable {
                        path: library.path().to_path_buf(),
                        symbol: def.symbol.to_string(),
                        reason: reason.clone(),
                    }),
                };
                (index, site)
            })
            .collect()
    }

    /// The hand-off stays in the kernel: no event reaches here.
    fn on_event(&mut self, _probe_index: usize, _event: &ProbeEvent, _contexts: &mut ContextTree) {}
}

/// Function `name`'s entry site, counted once per call (not again when its stack grows).
fn entry(library: &ElfSymbols, name: &str, request_ctx: u16) -> Result<crate::symbols::ProbeLocation, SymbolError> {
    let unplaceable = |reason: String| SymbolError::Unplaceable {
        path: library.path().to_path_buf(),
        symbol: name.to_string(),
        reason,
    };
    let (code, address) = library
        .whole_function(name)
        .ok_or_else(|| SymbolError::MissingSymbol { path: library.path().to_path_buf(), symbol: name.to_string() })?;
    let site = go_probe_sites::emulated_entry_site(code, address).map_err(|e| unplaceable(e.to_string()))?;
    let only_if = site.only_if.map_or(0, go_probe_sites::BranchTaken::encoded);
    let spec = GoSiteSpec { only_if, request_ctx, ..GoSiteSpec::default() };
    library.site_at(site.address, spec).ok_or_else(|| unplaceable(format!("{:#x} is in no segment", site.address)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probes::ProbeKind;

    #[test]
    fn serve_http_is_armed_by_round_trip_a_probe_in_go_code_that_is_attached_at_once() {
        assert_eq!(PROBES[0].symbol, SERVE);
        assert_eq!(PROBES[0].armed_by, Some(ROUND_TRIP_PROBE));
        let trigger = &PROBES[ROUND_TRIP_PROBE];
        assert_eq!(trigger.symbol, ROUND_TRIP);
        assert!(matches!(trigger.kind, ProbeKind::GoCode { .. }));
        assert_eq!(trigger.armed_by, None);
    }
}
