//! Struct member offsets from a Go binary's own DWARF, when it kept it (not `-s -w`): the
//! layout a probe follows, straight from the compiler that built the program, for any Go
//! release (the per-release table serves stripped binaries).
//!
//! Go writes its DWARF zlib-compressed (`SHF_COMPRESSED`): the two sections read here
//! (`.debug_info`, `.debug_abbrev`) are inflated, up to a bound, and dropped after the walk.

use gimli::RunTimeEndian;
use object::{CompressionFormat, Object, ObjectSection};

/// Most bytes inflated per section: a large Go service's `.debug_info` is tens of MB.
const MAX_SECTION_BYTES: usize = 256 << 20;

/// The offset of each `(struct type, member)` asked, in order (`("crypto/tls.Conn", "conn")`),
/// as the binary's DWARF gives it; `None` for the whole when there is no readable DWARF.
pub fn member_offsets(file: &object::File<'_>, wanted: &[(&str, &str)]) -> Option<Vec<Option<u64>>> {
    let info = section(file, ".debug_info")?;
    let abbrev = section(file, ".debug_abbrev")?;
    let endian = if file.is_little_endian() { RunTimeEndian::Little } else { RunTimeEndian::Big };
    let debug_info = gimli::DebugInfo::new(&info, endian);
    let debug_abbrev = gimli::DebugAbbrev::new(&abbrev, endian);
    let mut found = vec![None; wanted.len()];
    let mut units = debug_info.units();
    while let Ok(Some(header)) = units.next() {
        let Ok(abbreviations) = header.abbreviations(&debug_abbrev) else { continue };
        let mut entries = header.entries(&abbreviations);
        // The struct type whose members are being read, by index into `wanted`'s types.
        let mut inside: Option<(&str, isize)> = None;
        let mut depth: isize = 0;
        while let Ok(Some((delta, entry))) = entries.next_dfs() {
            depth += delta;
            if inside.is_some_and(|(_, struct_depth)| depth <= struct_depth) {
                inside = None;
            }
            let name = entry
                .attr_value(gimli::DW_AT_name)
                .ok()
                .flatten()
                .and_then(|value| match value {
                    gimli::AttributeValue::String(s) => std::str::from_utf8(s.slice()).ok(),
                    _ => None,
                });
            match (entry.tag(), name, inside) {
                (gimli::DW_TAG_structure_type, Some(name), _) if wanted.iter().any(|(t, _)| *t == name) => {
                    inside = Some((name, depth));
                }
                (gimli::DW_TAG_member, Some(member), Some((type_name, _))) => {
                    let Some(index) = wanted.iter().position(|(t, m)| *t == type_name && *m == member) else { continue };
                    if let Ok(Some(gimli::AttributeValue::Udata(offset))) =
                        entry.attr_value(gimli::DW_AT_data_member_location)
                    {
                        found[index].get_or_insert(offset);
                    }
                }
                _ => {}
            }
        }
        if found.iter().all(Option::is_some) {
            break;
        }
    }
    Some(found)
}

/// Section `name`'s bytes, inflated when compressed with zlib.
fn section(file: &object::File<'_>, name: &str) -> Option<Vec<u8>> {
    let compressed = file.section_by_name(name)?.compressed_data().ok()?;
    match compressed.format {
        CompressionFormat::None => Some(compressed.data.to_vec()),
        CompressionFormat::Zlib => {
            let size = usize::try_from(compressed.uncompressed_size).ok()?;
            if size > MAX_SECTION_BYTES {
                return None;
            }
            miniz_oxide::inflate::decompress_to_vec_zlib_with_limit(compressed.data, size).ok()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn an_unstripped_go_binary_tells_its_struct_offsets_and_a_stripped_one_has_none() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let source = root.join("tests/apps/go_http/main.go");
        let full = super::super::go_test_build::build(&root, &source, "go-dwarf-full", false);
        let elf = object::File::parse(&*full).unwrap();
        let wanted = [("crypto/tls.Conn", "conn"), ("internal/poll.FD", "Sysfd"), ("net/http.Request", "ctx")];
        let offsets = member_offsets(&elf, &wanted).expect("Go's DWARF, inflated");
        // The values are checked against Go's reflect by integrations::go_layout's tests.
        assert_eq!(offsets[0], Some(0), "conn is crypto/tls.Conn's first field");
        assert!(offsets.iter().all(Option::is_some), "{offsets:?}");
        let stripped = super::super::go_test_build::build(&root, &source, "go-dwarf-stripped", true);
        assert!(member_offsets(&object::File::parse(&*stripped).unwrap(), &wanted).is_none());
    }
}
