//! Normalization: an absolute address in a process -> (file, file offset), then the ELF virtual
//! address the symbol tables use.
//!
//! It needs every executable mapping with its own file offset (`crate::target::parse_maps` merges
//! a file's mappings, which is right for finding libraries but loses the per-mapping offset), so
//! `/proc/<pid>/maps` is parsed again here.

use std::{
    fs, io,
    path::{Path, PathBuf},
    sync::Arc,
};

use super::module::{ElfModule, ModuleCache, ModuleError};

/// Errors of normalization; each names the pid or file concerned.
#[derive(Debug, thiserror::Error)]
pub enum NormalizeError {
    #[error("cannot read /proc/{pid}/maps: {source} (the process exited, or the agent lacks ptrace access)")]
    Maps { pid: u32, source: io::Error },
    #[error("address {address:#x} is in no file-backed executable mapping (JIT code, vdso, or an unmapped address)")]
    Unmapped { address: u64 },
    #[error(
        "file offset {file_offset:#x} of {path} is in no loadable segment (the file changed since it was mapped?)"
    )]
    NotInSegment { path: PathBuf, file_offset: u64 },
    #[error(transparent)]
    Module(#[from] ModuleError),
}

/// One line of `/proc/<pid>/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub executable: bool,
    /// Offset in the file of the byte mapped at `start`.
    pub file_offset: u64,
    pub inode: u64,
    /// The file as the target sees it; `None` for anonymous and pseudo (`[vdso]`) mappings.
    pub path: Option<PathBuf>,
}

/// Parses one maps line: `start-end perms offset dev inode [path]`.
pub fn parse_maps_line(line: &str) -> Option<Mapping> {
    let mut fields = line.splitn(6, ' ');
    let (start, end) = fields.next()?.split_once('-')?;
    let perms = fields.next()?;
    let offset = fields.next()?;
    let _dev = fields.next()?;
    let inode = fields.next()?.parse().ok()?;
    // The path is padded with spaces and may itself contain spaces; a deleted file is suffixed.
    let path = fields.next().map(str::trim_start).filter(|p| p.starts_with('/'));
    let path = path.map(|p| PathBuf::from(p.strip_suffix(" (deleted)").unwrap_or(p)));
    Some(Mapping {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        executable: perms.as_bytes().get(2) == Some(&b'x'),
        file_offset: u64::from_str_radix(offset, 16).ok()?,
        inode,
        path,
    })
}

/// The file-backed executable mappings of one process, sorted by start.
#[derive(Debug, Clone)]
pub struct ProcessMaps {
    pid: u32,
    mappings: Vec<Mapping>,
}

/// An address normalized to a file: what the symbolizer needs, and nothing process-specific.
#[derive(Debug, Clone)]
pub struct NormalizedAddress {
    /// The file as the target sees it (for reports).
    pub path: PathBuf,
    pub file_offset: u64,
    /// The ELF virtual address (`file_offset` through the PT_LOAD segments).
    pub vaddr: u64,
    pub module: Arc<ElfModule>,
}

impl ProcessMaps {
    /// Reads `/proc/<pid>/maps` now; re-read after the process maps new libraries.
    pub fn read(pid: u32) -> Result<Self, NormalizeError> {
        let text =
            fs::read_to_string(format!("/proc/{pid}/maps")).map_err(|source| NormalizeError::Maps { pid, source })?;
        Ok(Self::parse(pid, &text))
    }

    /// Builds from maps text already read (keeps only file-backed executable mappings).
    pub fn parse(pid: u32, text: &str) -> Self {
        let mut mappings: Vec<Mapping> =
            text.lines().filter_map(parse_maps_line).filter(|m| m.executable && m.path.is_some()).collect();
        mappings.sort_unstable_by_key(|m| m.start);
        Self { pid, mappings }
    }

    pub fn mappings(&self) -> &[Mapping] {
        &self.mappings
    }

    /// The executable mapping containing `address`.
    pub fn find(&self, address: u64) -> Option<&Mapping> {
        let after = self.mappings.partition_point(|m| m.start <= address);
        self.mappings[..after].last().filter(|m| address < m.end)
    }

    /// Where the agent opens a file the target mapped: through the target's root, so files inside
    /// containers (another mount namespace) are found.
    pub fn open_path(&self, path: &Path) -> PathBuf {
        Path::new("/proc").join(self.pid.to_string()).join("root").join(path.strip_prefix("/").unwrap_or(path))
    }

    /// Normalizes `address` to its file and ELF virtual address, loading the file through `cache`.
    pub fn normalize(&self, address: u64, cache: &mut ModuleCache) -> Result<NormalizedAddress, NormalizeError> {
        let mapping = self.find(address).ok_or(NormalizeError::Unmapped { address })?;
        let path = mapping.path.clone().ok_or(NormalizeError::Unmapped { address })?;
        let file_offset = address - mapping.start + mapping.file_offset;
        let module = cache.get(&self.open_path(&path))?;
        let vaddr = module
            .file_offset_to_vaddr(file_offset)
            .ok_or_else(|| NormalizeError::NotInSegment { path: path.clone(), file_offset })?;
        Ok(NormalizedAddress { path, file_offset, vaddr, module })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_lines_parse_with_offsets_and_odd_paths() {
        let line = "7f1c2a428000-7f1c2a5bd000 r-xp 00028000 fe:01 1835031                    /usr/lib/x86_64-linux-gnu/libc.so.6";
        let m = parse_maps_line(line).unwrap();
        assert_eq!((m.start, m.end, m.file_offset, m.inode), (0x7f1c2a428000, 0x7f1c2a5bd000, 0x28000, 1835031));
        assert!(m.executable);
        assert_eq!(m.path.as_deref(), Some(Path::new("/usr/lib/x86_64-linux-gnu/libc.so.6")));
        let deleted = parse_maps_line("1000-2000 r-xp 00000000 fe:01 12 /tmp/my lib.so (deleted)").unwrap();
        assert_eq!(deleted.path.as_deref(), Some(Path::new("/tmp/my lib.so")));
        let vdso = parse_maps_line("7ffd1000-7ffd3000 r-xp 00000000 00:00 0                          [vdso]").unwrap();
        assert_eq!(vdso.path, None);
        let anon = parse_maps_line("7ffd1000-7ffd3000 rw-p 00000000 00:00 0").unwrap();
        assert!(!anon.executable);
        assert!(parse_maps_line("garbage").is_none());
    }

    #[inline(never)]
    fn normalization_marker() -> u64 {
        std::hint::black_box(41) + 1
    }

    #[test]
    fn own_function_normalizes_to_the_test_binary() {
        let address = normalization_marker as *const () as u64;
        let maps = ProcessMaps::read(std::process::id()).unwrap();
        let mut cache = ModuleCache::new();
        let normalized = maps.normalize(address, &mut cache).unwrap();
        let exe = fs::read_link("/proc/self/exe").unwrap();
        assert_eq!(normalized.path, exe);
        let hit = normalized.module.function_at(normalized.vaddr).expect("the test binary has a symbol table");
        assert_eq!(hit.offset, 0, "a function's own address is its start");
        assert!(hit.mangled.contains("normalization_marker"), "got {}", hit.mangled);
    }
}
