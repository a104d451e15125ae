//! The shared libraries a process could load later, found as its dynamic linker would find them:
//! the linker's cache (`/etc/ld.so.cache`), the process's `LD_LIBRARY_PATH` and the default
//! directories, all read through `/proc/<pid>/root` (a container's own files).
//!
//! Why: a uprobe is bound to a file, and the kernel inserts its breakpoints when that file is
//! mapped. Probes attached to a library before the process maps it are in place before its
//! first call, where probes attached when the linker reports the load arrive milliseconds late
//! (Python's `import sqlite3` followed at once by queries).

use std::{
    collections::HashSet,
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use super::Process;

/// `ld.so.cache` in glibc's format since 2.32 (and after the old table in older caches).
const CACHE_MAGIC: &[u8] = b"glibc-ld.so.cache1.1";
/// The old format's magic, still written first by glibc < 2.32 (with the new one after it).
const OLD_CACHE_MAGIC: &[u8] = b"ld.so-1.7.0";
/// The new format's header: magic and version (20), nlibs, len_strings, flags and padding,
/// extension offset, three unused words.
const CACHE_HEADER_LEN: usize = 48;
/// One entry: flags (i32), key and value (string offsets), osversion, hwcap (u64).
const CACHE_ENTRY_LEN: usize = 24;
/// `FLAG_ELF_LIBC6 | FLAG_X8664_LIB64`: a 64-bit x86 library (the cache may list 32-bit ones).
const X86_64_LIBC6: i32 = 0x0303;

/// Where the linker looks after the cache (trusted directories of Debian and most distributions).
const DEFAULT_DIRECTORIES: &[&str] = &[
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
    "/usr/local/lib",
];

/// A library file the process may map: its path as the process sees it, and its identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibraryFile {
    pub path: PathBuf,
    /// `major:minor` in hex, as `/proc/<pid>/maps` prints the device.
    pub dev: String,
    pub inode: u64,
}

/// Every file the process's dynamic linker could load whose name `wanted` accepts, one per
/// file (a soname and its versioned name are one file). Unreadable sources are skipped: what is
/// not foreseen is still caught when the linker reports the load.
pub fn loadable_libraries(
    process: &Process,
    ld_library_path: Option<&str>,
    wanted: impl Fn(&Path) -> bool,
) -> Vec<LibraryFile> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(path) = ld_library_path {
        for directory in path.split([':', ';']).filter(|d| d.starts_with('/')) {
            candidates.extend(files_in(process, Path::new(directory), &wanted));
        }
    }
    if let Ok(cache) = fs::read(process.host_path(Path::new("/etc/ld.so.cache"))) {
        candidates.extend(cache_entries(&cache).into_iter().map(|(_, path)| path).filter(|p| wanted(p)));
    }
    for directory in DEFAULT_DIRECTORIES {
        candidates.extend(files_in(process, Path::new(directory), &wanted));
    }
    let mut seen = HashSet::new();
    candidates
        .into_iter()
        .filter_map(|path| {
            let host_path = process.host_path(&path);
            let metadata = fs::metadata(&host_path).ok()?;
            if !metadata.is_file() || !is_x86_64_elf(&host_path) {
                return None; // /lib and /usr/lib hold 32-bit libraries on some distributions
            }
            let (dev, inode) = identity_of(&metadata);
            seen.insert((dev.clone(), inode)).then_some(LibraryFile { path, dev, inode })
        })
        .collect()
}

/// A file's (device, inode) as `stat` gives them, the device printed as `/proc/<pid>/maps`
/// prints it: how a library found by its path is known again once it is mapped.
pub fn file_identity(path: &Path) -> Option<(String, u64)> {
    fs::metadata(path).ok().map(|metadata| identity_of(&metadata))
}

fn identity_of(metadata: &fs::Metadata) -> (String, u64) {
    (format!("{:02x}:{:02x}", libc::major(metadata.dev()), libc::minor(metadata.dev())), metadata.ino())
}

/// Whether the file is a 64-bit x86 ELF object (`e_machine` 62), what this agent probes.
fn is_x86_64_elf(path: &Path) -> bool {
    use std::io::Read;
    let mut header = [0u8; 20];
    fs::File::open(path).and_then(|mut file| file.read_exact(&mut header)).is_ok()
        && header.starts_with(b"\x7fELF")
        && header[4] == 2
        && u16::from_le_bytes([header[18], header[19]]) == 62
}

/// The files of `directory` (as the process sees it) whose names `wanted` accepts.
fn files_in(process: &Process, directory: &Path, wanted: &impl Fn(&Path) -> bool) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(process.host_path(directory)) else { return Vec::new() };
    let mut files: Vec<PathBuf> =
        entries.filter_map(|entry| Some(directory.join(entry.ok()?.file_name()))).filter(|path| wanted(path)).collect();
    files.sort();
    files
}

/// The (soname, path) pairs of 64-bit x86 libraries in an `ld.so.cache`; empty when the
/// format is not one we know.
pub fn cache_entries(cache: &[u8]) -> Vec<(String, PathBuf)> {
    let Some(start) = new_format_start(cache) else { return Vec::new() };
    let table = &cache[start..];
    let Some(count) = read_u32(table, 20) else { return Vec::new() };
    let mut entries = Vec::new();
    for index in 0..count as usize {
        let at = CACHE_HEADER_LEN + index * CACHE_ENTRY_LEN;
        let (Some(flags), Some(key), Some(value)) =
            (read_u32(table, at), read_u32(table, at + 4), read_u32(table, at + 8))
        else {
            break; // a truncated cache: keep what was whole
        };
        if flags as i32 != X86_64_LIBC6 {
            continue;
        }
        if let (Some(name), Some(path)) = (string_at(table, key), string_at(table, value)) {
            if path.starts_with('/') {
                entries.push((name, PathBuf::from(path)));
            }
        }
    }
    entries
}

/// Where the new-format table starts: at 0, or after the old format's table.
fn new_format_start(cache: &[u8]) -> Option<usize> {
    if cache.starts_with(CACHE_MAGIC) {
        return Some(0);
    }
    if !cache.starts_with(OLD_CACHE_MAGIC) {
        return None;
    }
    // struct { char magic[11]; u32 nlibs; struct { i32 flags; u32 key, value; } libs[]; }
    let old_count = read_u32(cache, 12)? as usize;
    let after_old = 16usize.checked_add(old_count.checked_mul(12)?)?;
    let start = after_old.checked_add(7)? & !7;
    cache.get(start..)?.starts_with(CACHE_MAGIC).then_some(start)
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at.checked_add(4)?)?.try_into().ok()?))
}

/// The NUL-terminated string at `offset` (offsets count from the new-format header).
fn string_at(table: &[u8], offset: u32) -> Option<String> {
    let rest = table.get(offset as usize..)?;
    let end = rest.iter().position(|&b| b == 0)?;
    std::str::from_utf8(&rest[..end]).ok().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new-format cache with `entries` (flags, soname, path).
    fn cache_with(entries: &[(i32, &str, &str)]) -> Vec<u8> {
        let mut strings = Vec::new();
        let strings_at = CACHE_HEADER_LEN + entries.len() * CACHE_ENTRY_LEN;
        let mut table = Vec::new();
        for (flags, name, path) in entries {
            let key = strings_at + strings.len();
            strings.extend_from_slice(name.as_bytes());
            strings.push(0);
            let value = strings_at + strings.len();
            strings.extend_from_slice(path.as_bytes());
            strings.push(0);
            table.extend_from_slice(&flags.to_le_bytes());
            table.extend_from_slice(&(key as u32).to_le_bytes());
            table.extend_from_slice(&(value as u32).to_le_bytes());
            table.extend_from_slice(&0u32.to_le_bytes());
            table.extend_from_slice(&0u64.to_le_bytes());
        }
        let mut cache = CACHE_MAGIC.to_vec();
        cache.extend_from_slice(&(entries.len() as u32).to_le_bytes());
        cache.extend_from_slice(&(strings.len() as u32).to_le_bytes());
        cache.resize(CACHE_HEADER_LEN, 0);
        cache.extend(table);
        cache.extend(strings);
        cache
    }

    #[test]
    fn reads_64_bit_entries_of_a_new_format_cache() {
        let cache = cache_with(&[
            (X86_64_LIBC6, "libsqlite3.so.0", "/usr/lib/x86_64-linux-gnu/libsqlite3.so.0"),
            (0x0003, "libsqlite3.so.0", "/usr/lib/i386-linux-gnu/libsqlite3.so.0"),
        ]);
        assert_eq!(
            cache_entries(&cache),
            vec![("libsqlite3.so.0".to_string(), PathBuf::from("/usr/lib/x86_64-linux-gnu/libsqlite3.so.0"))]
        );
    }

    #[test]
    fn finds_the_new_table_after_the_old_one() {
        let new = cache_with(&[(X86_64_LIBC6, "libssl.so.3", "/lib/libssl.so.3")]);
        let mut cache = OLD_CACHE_MAGIC.to_vec();
        cache.resize(12, 0);
        cache.extend_from_slice(&1u32.to_le_bytes());
        cache.extend_from_slice(&[0; 12]);
        cache.resize(32, 0); // aligned to 8
        cache.extend(new);
        assert_eq!(cache_entries(&cache).len(), 1);
    }

    #[test]
    fn garbage_and_truncation_give_what_is_whole() {
        assert!(cache_entries(b"not a cache").is_empty());
        assert!(cache_entries(&[]).is_empty());
        let cache = cache_with(&[(X86_64_LIBC6, "a.so", "/a.so"), (X86_64_LIBC6, "b.so", "/b.so")]);
        // Cut inside the second entry: its strings are gone too.
        assert!(cache_entries(&cache[..CACHE_HEADER_LEN + CACHE_ENTRY_LEN + 4]).is_empty());
    }

    /// This machine's own cache and directories: libsqlite3 is found once, as the file
    /// `/proc/self/maps` would show once it is mapped.
    #[test]
    fn this_machine_resolves_libsqlite3_to_one_file() {
        let me = Process::open(std::process::id()).unwrap();
        let found = loadable_libraries(&me, None, |path| {
            path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libsqlite3.so"))
        });
        assert_eq!(found.len(), 1, "{found:?}");
        let metadata = fs::metadata("/usr/lib/x86_64-linux-gnu/libsqlite3.so.0").unwrap();
        assert_eq!(found[0].inode, metadata.ino());
        assert!(found[0].dev.contains(':') && found[0].dev.len() >= 5, "{}", found[0].dev);
    }
}
