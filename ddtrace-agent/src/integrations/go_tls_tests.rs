use std::{path::Path, process::Command};

use super::*;

fn root() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn the_layout_table_matches_what_go_itself_reports() {
    let root = root();
    crate::symbols::go_test_build::build(&root, &root.join("tests/apps/go_layout/main.go"), "go-layout", false);
    let output = Command::new(root.join("target/go-layout")).output().unwrap();
    let printed = String::from_utf8(output.stdout).unwrap();
    let version = String::from_utf8(Command::new("go").arg("env").arg("GOVERSION").output().unwrap().stdout).unwrap();
    let layout = layout_for(version.trim()).unwrap_or_else(|| panic!("{} is not in the table", version.trim()));
    assert_eq!(
        printed.trim(),
        format!(
            "tls_conn_conn={} conn_fd={} netfd_sysfd={}",
            layout.tls_conn_conn, layout.conn_fd, layout.netfd_sysfd
        ),
        "the table for {}",
        version.trim()
    );
}

#[test]
fn versions_outside_the_table_are_refused() {
    assert!(layout_for("go1.19.8").is_some());
    assert!(layout_for("go1.18").is_some());
    assert!(layout_for("go1.17.13").is_none());
    assert!(layout_for("go1.26rc1").is_none());
    assert!(layout_for("devel +abc").is_none());
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
