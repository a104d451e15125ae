use std::path::Path;

use super::*;

fn root() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn a_stripped_go_binary_gets_its_tls_probes_on_emulated_sites_with_the_socket_itabs() {
    let root = root();
    crate::symbols::go_test_build::build(&root, &root.join("tests/apps/go_http/main.go"), "go-tls-sites", true);
    let library = ElfSymbols::load(&root.join("target/go-tls-sites")).unwrap();
    assert!(library.has_function(WRITE), "found in the function table of a stripped binary");
    let sites = GoTlsIntegration.probe_sites(&library);
    let locations: Vec<(usize, ProbeLocationView)> =
        sites.into_iter().map(|(index, site)| (index, ProbeLocationView::of(&library, site.unwrap()))).collect();
    let count = |index: usize| locations.iter().filter(|(i, _)| *i == index).count();
    // Go 1.19's Read copies its plaintext with one memmove: one site for the read.
    assert_eq!((count(0), count(COPY), count(READ_ENTRY), count(READ_RETURN)), (1, 1, 0, 0), "{}", locations.len());
    for (index, view) in &locations {
        assert!(view.emulated, "probe {index} at {:#x} emulated", view.address);
        let spec = view.spec;
        assert_ne!(spec.conn_itabs[0], 0, "*net.TCPConn's itab found");
        let itab = view.address.wrapping_add(spec.conn_itabs[0] as u64);
        assert!(library.go_itab_with_methods(&[(2, "net.(*TCPConn).Read")]) == Some(itab));
        if *index == COPY {
            assert_eq!(spec.result & go_site::RESULT_KIND_MASK, go_site::RESULT_ON_STACK, "the receiver's slot");
            assert_eq!(spec.only_if, 0);
        } else {
            assert_eq!(spec.only_if, go_site::BRANCH_DECIDES | 6, "entries count when JBE is not taken");
        }
    }
}

struct ProbeLocationView {
    address: u64,
    emulated: bool,
    spec: GoSiteSpec,
}

impl ProbeLocationView {
    fn of(library: &ElfSymbols, location: crate::symbols::ProbeLocation) -> Self {
        Self { address: location.address, emulated: library.emulated_at(&location), spec: location.go.unwrap() }
    }
}
