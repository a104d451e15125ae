//! The offsets of Go's own structs that the kernel follows, by Go release: from a
//! `crypto/tls.Conn` to its socket, and from a `net/http.Request` to its context. They come
//! from this table, generated and checked by the test `the_table_matches_what_go_itself_reports`
//! (it builds `tests/apps/go_layout` with the machine's Go, which prints each offset as Go's
//! `reflect` lays it out), or, for a release the table does not cover, from the binary's own
//! DWARF when it kept it (not `-s -w`).
//!
//! Coverage: Go 1.18 to 1.25 (1.18 is the first function table this agent reads; the register
//! ABI came in 1.17). Only the machine's release (Debian's 1.19) is checked by the test; the
//! other rows are read from Go's sources: `tls.Conn.conn` and `net.conn.fd` are first fields,
//! `netFD.pfd` first since 1.9, `poll.FD.Sysfd` after its 16-byte mutex; `Request.ctx` moved by
//! 16 bytes in 1.23, when `Pattern string` came before it. A wrong `Request.ctx` fails safe (no
//! context is then recognised as served). A release outside the table gets one line saying so,
//! and keeps its traffic-level tracing.

use crate::symbols::{go_build_info::GoBuild, ElfSymbols};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoLayout {
    /// `crypto/tls.Conn.conn` (a `net.Conn`).
    pub tls_conn_conn: u16,
    /// `net.conn.fd`, embedded first in `net.TCPConn` and `net.UnixConn`.
    pub conn_fd: u16,
    /// `net.netFD.pfd` + `internal/poll.FD.Sysfd`.
    pub netfd_sysfd: u16,
    /// `net/http.Request.ctx` (a `context.Context`).
    pub request_ctx: u16,
}

/// By (major, minor) range.
const LAYOUTS: [((u32, u32), (u32, u32), GoLayout); 2] = [
    ((1, 18), (1, 22), GoLayout { tls_conn_conn: 0, conn_fd: 0, netfd_sysfd: 16, request_ctx: 232 }),
    ((1, 23), (1, 25), GoLayout { tls_conn_conn: 0, conn_fd: 0, netfd_sysfd: 16, request_ctx: 248 }),
];

/// The layout for Go `version` (`go1.19.8`), when the table has it.
pub fn layout_for(version: &str) -> Option<GoLayout> {
    let mut parts = version.strip_prefix("go")?.split(|c: char| !c.is_ascii_digit());
    let major: u32 = parts.next()?.parse().ok()?;
    let minor: u32 = parts.next()?.parse().ok()?;
    LAYOUTS.iter().find(|(from, to, _)| (major, minor) >= *from && (major, minor) <= *to).map(|(_, _, layout)| *layout)
}

/// The layout of the Go release that built `library`, or the line that says why not.
pub fn of(library: &ElfSymbols) -> Result<GoLayout, String> {
    match library.go_build() {
        Some(GoBuild::Known { version, .. }) => layout_for(version).or_else(|| from_dwarf(library)).ok_or_else(|| {
            format!(
                "{version}'s struct layout is not in this agent's table (Go 1.18-1.25) and the binary has no DWARF; \
                 traffic-level tracing kept"
            )
        }),
        Some(GoBuild::BeforeGo118) | None => {
            Err("built by a Go older than 1.18 (no register ABI); traffic-level tracing kept".into())
        }
    }
}

/// The layout from `library`'s DWARF, when it has every offset the socket needs (`request_ctx`
/// is 0, unknown, in a program without net/http's server).
pub fn from_dwarf(library: &ElfSymbols) -> Option<GoLayout> {
    const WANTED: [(&str, &str); 6] = [
        ("crypto/tls.Conn", "conn"),
        ("net.TCPConn", "conn"),
        ("net.conn", "fd"),
        ("net.netFD", "pfd"),
        ("internal/poll.FD", "Sysfd"),
        ("net/http.Request", "ctx"),
    ];
    let offsets = library.go_member_offsets(&WANTED)?;
    let at = |index: usize| offsets[index].and_then(|offset| u16::try_from(offset).ok());
    Some(GoLayout {
        tls_conn_conn: at(0)?,
        conn_fd: at(1)?.checked_add(at(2)?)?,
        netfd_sysfd: at(3)?.checked_add(at(4)?)?,
        request_ctx: at(5).unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use std::{path::Path, process::Command};

    use super::*;

    #[test]
    fn the_table_matches_what_go_itself_reports() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        crate::symbols::go_test_build::build(&root, &root.join("tests/apps/go_layout/main.go"), "go-layout", false);
        let output = Command::new(root.join("target/go-layout")).output().unwrap();
        let printed = String::from_utf8(output.stdout).unwrap();
        let version = String::from_utf8(Command::new("go").args(["env", "GOVERSION"]).output().unwrap().stdout).unwrap();
        let layout = layout_for(version.trim()).unwrap_or_else(|| panic!("{} is not in the table", version.trim()));
        assert_eq!(
            printed.trim(),
            format!(
                "tls_conn_conn={} conn_fd={} netfd_sysfd={} request_ctx={}",
                layout.tls_conn_conn, layout.conn_fd, layout.netfd_sysfd, layout.request_ctx
            ),
            "the table for {}",
            version.trim()
        );
    }

    #[test]
    fn an_unstripped_binarys_dwarf_gives_the_tables_layout() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let source = root.join("tests/apps/go_http/main.go");
        crate::symbols::go_test_build::build(&root, &source, "go-layout-dwarf", false);
        let library = ElfSymbols::load(&root.join("target/go-layout-dwarf")).unwrap();
        let version = String::from_utf8(Command::new("go").args(["env", "GOVERSION"]).output().unwrap().stdout).unwrap();
        assert_eq!(from_dwarf(&library), layout_for(version.trim()), "DWARF and the table (checked by reflect) agree");
        crate::symbols::go_test_build::build(&root, &source, "go-layout-stripped", true);
        let stripped = ElfSymbols::load(&root.join("target/go-layout-stripped")).unwrap();
        assert_eq!(from_dwarf(&stripped), None, "-s -w leaves no DWARF");
    }

    #[test]
    fn versions_outside_the_table_are_refused() {
        assert!(layout_for("go1.19.8").is_some());
        assert!(layout_for("go1.18").is_some());
        assert!(layout_for("go1.17.13").is_none());
        assert!(layout_for("go1.26rc1").is_none());
        assert!(layout_for("devel +abc").is_none());
    }
}
