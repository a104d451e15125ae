//! What a Go binary says about its build: the Go version and the main module, from the
//! `.go.buildinfo` section the Go toolchain writes into every binary (stripped ones included).
//!
//! Since Go 1.18 the section holds both strings inline: a 32-byte header (`\xff Go buildinf:`,
//! the pointer size, flags with bit 1 set), then the version and the module information, each a
//! uvarint length and its bytes. The module information is `go version -m`'s text between two
//! 16-byte markers; its `path` line names the main package. Older binaries point at their
//! strings instead; for those the version is not read (they are told apart as such).

use std::fmt;

/// The section's first bytes.
const MAGIC: &[u8; 14] = b"\xff Go buildinf:";
const HEADER_BYTES: usize = 32;
/// Flag bit: the strings follow the header (Go 1.18+).
const FLAG_INLINE_STRINGS: u8 = 0x2;
/// Bytes of the markers around the module information.
const MODINFO_MARKER_BYTES: usize = 16;

/// The build of a Go binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GoBuild {
    /// Go 1.18+: `version` as the toolchain names it (`go1.19.8`), the main package's path.
    Known { version: String, main_path: Option<String> },
    /// Built by a Go older than 1.18 (its build information is not inline).
    BeforeGo118,
}

impl fmt::Display for GoBuild {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Known { version, main_path: Some(path) } => write!(f, "{version} ({path})"),
            Self::Known { version, main_path: None } => write!(f, "{version}"),
            Self::BeforeGo118 => write!(f, "a Go older than 1.18"),
        }
    }
}

/// The build information in `section` (the bytes of `.go.buildinfo`), or `None` when they are
/// not build information.
pub fn parse(section: &[u8]) -> Option<GoBuild> {
    if section.len() < HEADER_BYTES || &section[..MAGIC.len()] != MAGIC {
        return None;
    }
    if section[15] & FLAG_INLINE_STRINGS == 0 {
        return Some(GoBuild::BeforeGo118);
    }
    let mut rest = &section[HEADER_BYTES..];
    let version = String::from_utf8(take_string(&mut rest)?.to_vec()).ok()?;
    let main_path = take_string(&mut rest).and_then(main_path);
    Some(GoBuild::Known { version, main_path })
}

/// The build information of the ELF file `elf`, if Go built it.
pub fn of_elf<'data, R: object::ReadRef<'data>>(elf: &object::File<'data, R>) -> Option<GoBuild> {
    use object::{Object, ObjectSection};
    let section = elf.section_by_name(".go.buildinfo")?;
    parse(section.data().ok()?)
}

/// A uvarint-prefixed string at the front of `rest`, which then starts after it.
fn take_string<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    let (length, used) = uvarint(rest)?;
    let length = usize::try_from(length).ok()?;
    let bytes = rest.get(used..used.checked_add(length)?)?;
    *rest = &rest[used + length..];
    Some(bytes)
}

/// A little-endian base-128 number (Go's `binary.Uvarint`) and the bytes it took.
fn uvarint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, byte) in bytes.iter().take(10).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// The `path` line of the module information (between its markers).
fn main_path(modinfo: &[u8]) -> Option<String> {
    let text = modinfo.get(MODINFO_MARKER_BYTES..modinfo.len().checked_sub(MODINFO_MARKER_BYTES)?)?;
    let text = std::str::from_utf8(text).ok()?;
    text.lines().find_map(|line| line.strip_prefix("path\t")).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(version: &str, modinfo: &str) -> Vec<u8> {
        let mut bytes = MAGIC.to_vec();
        bytes.extend([8, FLAG_INLINE_STRINGS]);
        bytes.resize(HEADER_BYTES, 0);
        for text in [version.as_bytes().to_vec(), [[0xAAu8; 16].as_slice(), modinfo.as_bytes(), &[0xBB; 16]].concat()] {
            let mut length = text.len();
            // uvarint
            loop {
                let byte = (length & 0x7f) as u8;
                length >>= 7;
                bytes.push(if length == 0 { byte } else { byte | 0x80 });
                if length == 0 {
                    break;
                }
            }
            bytes.extend(text);
        }
        bytes
    }

    #[test]
    fn the_version_and_main_path_of_a_go_1_18_plus_binary() {
        let modinfo = "path\texample.com/shop/cmd/api\nmod\texample.com/shop\t(devel)\t\n".repeat(3);
        let build = parse(&section("go1.19.8", &modinfo)).expect("build info");
        assert_eq!(
            build,
            GoBuild::Known { version: "go1.19.8".into(), main_path: Some("example.com/shop/cmd/api".into()) }
        );
        assert_eq!(build.to_string(), "go1.19.8 (example.com/shop/cmd/api)");
    }

    #[test]
    fn older_and_malformed_sections() {
        let mut old = MAGIC.to_vec();
        old.extend([8, 0]);
        old.resize(HEADER_BYTES, 0);
        assert_eq!(parse(&old), Some(GoBuild::BeforeGo118));
        assert_eq!(parse(b"not build info at all, no magic here"), None);
        // A length past the end.
        let mut cut = section("go1.21.0", "");
        cut.truncate(HEADER_BYTES + 3);
        assert_eq!(parse(&cut), None);
    }

    #[test]
    fn a_go_binary_built_by_the_machines_go_reads_as_its_go_version() {
        // Debian's Go builds the test programs; `go version` says which.
        let output = std::process::Command::new("go")
            .arg("version")
            .output()
            .unwrap_or_else(|e| panic!("`go` cannot run (`cargo xtask test` installs golang-go): {e}"));
        let expected = String::from_utf8_lossy(&output.stdout).split_whitespace().nth(2).unwrap_or_default().to_owned();
        let target = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target");
        let go = target.join("go-build-info-test");
        std::fs::create_dir_all(&go).unwrap();
        std::fs::write(go.join("main.go"), "package main\n\nfunc main() {}\n").unwrap();
        std::fs::write(go.join("go.mod"), "module example.com/buildinfo\n\ngo 1.18\n").unwrap();
        let data = super::super::go_test_build::build(&go, std::path::Path::new("."), "go-build-info-test/app", true);
        let elf = object::File::parse(&*data).unwrap();
        let build = of_elf(&elf).expect("stripped, it still has .go.buildinfo");
        assert_eq!(build, GoBuild::Known { version: expected, main_path: Some("example.com/buildinfo".into()) });
    }
}
