//! One ELF file as the symbolizer sees it: its loadable segments (to turn file offsets into virtual
//! addresses), its build id (the cache key), and its functions as sorted address ranges.
//!
//! Names are kept mangled here; demangling happens once per symbolized frame in `symbolize.rs`,
//! so a library with tens of thousands of symbols is not demangled in full when it is loaded.

use std::{
    collections::HashMap,
    fs, io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use object::{Object, ObjectSegment, ObjectSymbol, SymbolKind};

use super::{
    cfi::CallFrameInfo,
    debug_info::{DebugInfo, SourceFrame},
    mapped_file::MappedFile,
};

/// Errors of loading a module for symbolization; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error("cannot read {path} for symbolization: {source} (is the target's root filesystem visible to the agent?)")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} is not an ELF object the symbolizer can read: {reason}")]
    NotElf { path: PathBuf, reason: String },
}

/// A PT_LOAD segment: where a range of the file lands in the ELF's virtual address space.
#[derive(Debug, Clone, Copy)]
struct Segment {
    vaddr: u64,
    file_offset: u64,
    file_size: u64,
}

/// A function symbol as an address range `[start, start + size)`.
#[derive(Debug, Clone)]
struct FunctionRange {
    start: u64,
    size: u64,
    mangled: Box<str>,
}

/// The function containing an address, with the address's distance from the function's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FunctionHit<'a> {
    pub mangled: &'a str,
    pub offset: u64,
}

/// The symbol tables and segments of one ELF file, shared (through `Arc`) by every process that
/// maps it.
#[derive(Debug)]
pub struct ElfModule {
    path: PathBuf,
    build_id: Option<Vec<u8>>,
    segments: Vec<Segment>,
    /// Sorted by start; one entry per start address.
    functions: Vec<FunctionRange>,
    /// Unwind tables, parsed here so every process mapping the file shares them.
    cfi: Option<CallFrameInfo>,
    /// DWARF for source positions, `None` when the file has none; parsed at the first lookup.
    debug_info: Option<DebugInfo>,
}

impl ElfModule {
    /// Parses `path` (a path the agent can open, e.g. under `/proc/<pid>/root`).
    pub fn load(path: &Path) -> Result<Self, ModuleError> {
        let data = MappedFile::open(path).map_err(|source| ModuleError::Read { path: path.to_path_buf(), source })?;
        Self::parse(path, &data)
    }

    fn parse(path: &Path, data: &[u8]) -> Result<Self, ModuleError> {
        let file = open_elf(path, data)?;
        let build_id = file.build_id().ok().flatten().map(<[u8]>::to_vec);
        let segments = file
            .segments()
            .map(|s| {
                let (file_offset, file_size) = s.file_range();
                Segment { vaddr: s.address(), file_offset, file_size }
            })
            .collect();
        let mut functions: Vec<FunctionRange> = file
            .dynamic_symbols()
            .chain(file.symbols())
            // Zero-sized symbols (labels, some hand-written assembly) give no range: trusting them
            // would attribute whole stretches of unrelated code to the last label before them.
            .filter(|s| s.kind() == SymbolKind::Text && !s.is_undefined() && s.address() != 0 && s.size() != 0)
            .filter_map(|s| {
                let name = s.name().ok().filter(|n| !n.is_empty())?;
                Some((s.is_global(), FunctionRange { start: s.address(), size: s.size(), mangled: name.into() }))
            })
            // Aliases share a start: keep a global name over a local one (`getpid` over `__getpid`
            // when both exist), then the first seen (the dynamic table, the exported name).
            .fold(HashMap::<u64, (bool, FunctionRange)>::new(), |mut by_start, (global, range)| {
                by_start
                    .entry(range.start)
                    .and_modify(|kept| {
                        if global && !kept.0 {
                            *kept = (global, range.clone());
                        }
                    })
                    .or_insert((global, range));
                by_start
            })
            .into_values()
            .map(|(_, range)| range)
            .collect();
        functions.sort_unstable_by_key(|f| f.start);
        let cfi = CallFrameInfo::parse(&file);
        let debug_info = DebugInfo::load(&file);
        Ok(Self { path: path.to_path_buf(), build_id, segments, functions, cfi, debug_info })
    }

    /// The path this module was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The `.note.gnu.build-id` contents, when the file has one.
    pub fn build_id(&self) -> Option<&[u8]> {
        self.build_id.as_deref()
    }

    /// How many function ranges the module knows (0 for a fully stripped file).
    pub fn function_count(&self) -> usize {
        self.functions.len()
    }

    /// The call frame information (`.eh_frame`, `.debug_frame`), `None` when the file has none.
    pub fn cfi(&self) -> Option<&CallFrameInfo> {
        self.cfi.as_ref()
    }

    /// Whether the file carries DWARF the symbolizer can read source positions from.
    pub fn has_debug_info(&self) -> bool {
        self.debug_info.is_some()
    }

    /// The source position of `vaddr` from DWARF, innermost inlined function first; empty without
    /// debug information covering it. The first call parses the module's DWARF.
    pub fn source_frames(&self, vaddr: u64) -> Vec<SourceFrame> {
        self.debug_info.as_ref().map(|d| d.frames(vaddr)).unwrap_or_default()
    }

    #[cfg(test)]
    pub(crate) fn debug_info(&self) -> Option<&DebugInfo> {
        self.debug_info.as_ref()
    }

    /// The ELF virtual address at which `file_offset` is loaded, if a PT_LOAD segment covers it.
    pub fn file_offset_to_vaddr(&self, file_offset: u64) -> Option<u64> {
        self.segments
            .iter()
            .find(|s| file_offset >= s.file_offset && file_offset - s.file_offset < s.file_size)
            .map(|s| s.vaddr + (file_offset - s.file_offset))
    }

    /// The function whose range contains `vaddr`, if any.
    pub fn function_at(&self, vaddr: u64) -> Option<FunctionHit<'_>> {
        let after = self.functions.partition_point(|f| f.start <= vaddr);
        // Nested ranges are rare; look back a few entries so an enclosing function is still found
        // when a small sized symbol sits inside it before `vaddr`.
        self.functions[..after]
            .iter()
            .rev()
            .take(4)
            .find(|f| vaddr - f.start < f.size)
            .map(|f| FunctionHit { mangled: &f.mangled, offset: vaddr - f.start })
    }
}

fn open_elf<'d>(path: &Path, data: &'d [u8]) -> Result<object::File<'d>, ModuleError> {
    let not_elf = |reason: String| ModuleError::NotElf { path: path.to_path_buf(), reason };
    let file = object::File::parse(data).map_err(|e| not_elf(e.to_string()))?;
    if file.format() != object::BinaryFormat::Elf {
        return Err(not_elf(format!("{:?} format", file.format())));
    }
    Ok(file)
}

/// What identifies a file on disk without reading it: a changed file (new inode, size or mtime)
/// gets a new key, so an upgraded library is re-read.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct FileKey {
    path: PathBuf,
    dev: u64,
    inode: u64,
    size: u64,
    mtime: i64,
}

/// The identity of a module's contents: its build id, or (without one) the file key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum ContentKey {
    BuildId(Vec<u8>),
    File(FileKey),
}

/// Modules keyed by build id, so a library mapped by many processes (or reached through several
/// paths, e.g. each container's root) is indexed once.
#[derive(Debug, Default)]
pub struct ModuleCache {
    by_file: HashMap<FileKey, Arc<ElfModule>>,
    by_content: HashMap<ContentKey, Arc<ElfModule>>,
    /// The last module read through each path: what a path under `/proc/<pid>/root` still
    /// means once the process exited and the path no longer opens (its last samples are often
    /// resolved just after its exit).
    by_path: HashMap<PathBuf, Arc<ElfModule>>,
    /// When each path was last checked against its file (`stat`): a profile's every frame asks
    /// for its module, and a `stat` per frame was ~5% of the agent's CPU under load.
    checked: HashMap<PathBuf, std::time::Instant>,
    parsed: usize,
}

/// How long a path's module is trusted before its file is checked again (a library replaced
/// in place is noticed within this).
const RECHECK_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

impl ModuleCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// The module for `path`, read and indexed only if no file with the same build id was before.
    pub fn get(&mut self, path: &Path) -> Result<Arc<ElfModule>, ModuleError> {
        if let (Some(module), Some(checked)) = (self.by_path.get(path), self.checked.get(path)) {
            if checked.elapsed() < RECHECK_AFTER {
                return Ok(module.clone());
            }
        }
        self.checked.insert(path.to_path_buf(), std::time::Instant::now());
        let read_error = |source| ModuleError::Read { path: path.to_path_buf(), source };
        let meta = match fs::metadata(path) {
            Ok(meta) => meta,
            Err(source) => return self.by_path.get(path).cloned().ok_or_else(|| read_error(source)),
        };
        let file_key = FileKey {
            path: path.to_path_buf(),
            dev: meta.dev(),
            inode: meta.ino(),
            size: meta.size(),
            mtime: meta.mtime(),
        };
        if let Some(module) = self.by_file.get(&file_key) {
            let module = module.clone();
            self.by_path.insert(path.to_path_buf(), module.clone());
            return Ok(module);
        }
        let data = MappedFile::open(path).map_err(read_error)?;
        // Only the note is read to decide: the symbol tables are indexed when the content is new.
        let build_id = open_elf(path, &data)?.build_id().ok().flatten().map(<[u8]>::to_vec);
        let content_key = match build_id {
            Some(id) => ContentKey::BuildId(id),
            None => ContentKey::File(file_key.clone()),
        };
        let module = match self.by_content.get(&content_key) {
            Some(module) => module.clone(),
            None => {
                let module = Arc::new(ElfModule::parse(path, &data)?);
                self.parsed += 1;
                self.by_content.insert(content_key, module.clone());
                module
            }
        };
        self.by_file.insert(file_key, module.clone());
        self.by_path.insert(path.to_path_buf(), module.clone());
        Ok(module)
    }

    /// Forgets the paths under `prefix` (e.g. `/proc/<pid>/root` of an exited process).
    pub fn forget_paths_under(&mut self, prefix: &Path) {
        self.by_path.retain(|path, _| !path.starts_with(prefix));
        self.by_file.retain(|key, _| !key.path.starts_with(prefix));
        self.checked.retain(|path, _| !path.starts_with(prefix));
    }

    /// How many files were fully indexed (tests use it to check sharing).
    pub fn modules_parsed(&self) -> usize {
        self.parsed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_library_reached_through_two_paths_is_indexed_once() {
        let libc = crate::symbols::symbolize::tests_support::libc_path();
        let mut cache = ModuleCache::new();
        let first = cache.get(&libc).unwrap();
        // The same file through /proc/self/root: another path, same build id.
        let other = Path::new("/proc/self/root").join(libc.strip_prefix("/").unwrap());
        let second = cache.get(&other).unwrap();
        assert!(first.build_id().is_some(), "Debian's libc carries a build id");
        assert!(Arc::ptr_eq(&first, &second));
        assert_eq!(cache.modules_parsed(), 1);
        assert!(first.function_count() > 1000);
    }
}
