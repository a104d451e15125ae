//! Naming the frames the sampler recorded: each code object's qualified name, file and line
//! table read once from the process (read-only) and cached; each frame's line from its
//! instruction; frames grouped by the C call of the eval loop that runs them, so the profiler
//! can put each group where that call is in the native stack.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use ddtrace_common::PythonFrame;

use super::{
    layout::{self, Boundary, InstructionKind, VersionLayout},
    line_table::line_at,
    runtime::PythonRuntime,
};
use crate::target::memory;

/// A Python frame, named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedFrame {
    /// `Class.method`, `outer.<locals>.inner` (3.11+); the bare name before 3.11.
    pub function: Arc<str>,
    pub file: Arc<str>,
    pub line: Option<u32>,
    /// The code's first line (a decorated function's first decorator).
    pub first_line: Option<u32>,
}

/// What a code object says about itself, and the pointers that tell it from another code
/// object later allocated at the same address.
#[derive(Debug)]
struct CodeInfo {
    function: Arc<str>,
    file: Arc<str>,
    first_line: i64,
    line_table: Box<[u8]>,
    identity: [u64; 4],
}

/// How often a cached code object is checked to still be the same object.
const RECHECK: Duration = Duration::from_secs(1);
/// Cached code objects per process; the cache starts over beyond this.
const CODE_CACHE_LIMIT: usize = 50_000;
/// Longest name or path read, in characters.
const MAX_STRING: u64 = 1024;
/// Largest line table read.
const MAX_LINE_TABLE: u64 = 64 * 1024;
/// Bytes of a code object that hold every field we read (3.11's line table pointer ends at 144).
const CODE_HEAD_BYTES: usize = 144;

/// A cached answer for one address: the code object there, or none (not a code object, or
/// unreadable), and when it was last checked.
struct Cached {
    code: Option<CodeInfo>,
    checked_at: Instant,
    /// Lines already worked out from the line table, by instruction offset: a hot frame (a
    /// handler's loop, a query call site) comes back at the same few offsets.
    lines: Vec<(i64, Option<u32>)>,
}

/// Lines remembered per code object.
const LINES_PER_CODE: usize = 8;
/// Named stacks cached per process; the cache starts over beyond this.
const STACK_CACHE_LIMIT: usize = 4096;

/// A stack named once: when the oldest check of its code objects was made, its names, and how
/// many of its frames named no code object.
type NamedStack = (Instant, Arc<[NamedFrame]>, u64);

/// Names the frames of one process's interpreter.
pub struct PythonFrames {
    runtime: Arc<PythonRuntime>,
    codes: HashMap<u64, Cached>,
    /// Whole stacks already named, by their raw frames, with when they were named: the events
    /// of one call site (a query in a handler) record the same frames again and again, and
    /// naming them frame by frame was the largest cost of such an event in the daemon.
    stacks: rustc_hash::FxHashMap<Box<[PythonFrame]>, NamedStack>,
    /// While a stack is named: the oldest check of the code objects it used.
    oldest_check: Option<Instant>,
    /// Frames that named no code object (freed, or not code).
    pub unnamed: u64,
}

/// Shown for a frame whose code could not be read.
pub const UNKNOWN_FUNCTION: &str = "[unknown Python frame]";

impl PythonFrames {
    pub fn new(runtime: Arc<PythonRuntime>) -> Self {
        Self { runtime, codes: HashMap::new(), stacks: Default::default(), oldest_check: None, unnamed: 0 }
    }

    /// `frames` (innermost first) named, as one list; `None` when none could be. Answers from
    /// the stack cache until [`RECHECK`] after the oldest check of the code objects its names
    /// came from: a cached name is never older than the per-code cache allows.
    pub fn named(&mut self, frames: &[PythonFrame]) -> Option<Arc<[NamedFrame]>> {
        let now = Instant::now();
        if let Some((checked, named, unnamed)) = self.stacks.get(frames) {
            if now.saturating_duration_since(*checked) < RECHECK {
                self.unnamed += unnamed;
                return Some(named.clone());
            }
        }
        let unnamed_before = self.unnamed;
        self.oldest_check = Some(now);
        let named: Vec<NamedFrame> = self.groups_at(frames, now).into_iter().flatten().collect();
        let checked = self.oldest_check.take().unwrap_or(now);
        if named.is_empty() {
            return None;
        }
        let named: Arc<[NamedFrame]> = named.into();
        if self.stacks.len() >= STACK_CACHE_LIMIT {
            self.stacks.clear();
        }
        self.stacks.insert(frames.into(), (checked, named.clone(), self.unnamed - unnamed_before));
        Some(named)
    }

    pub fn runtime(&self) -> &Arc<PythonRuntime> {
        &self.runtime
    }

    /// `frames` (innermost first) named and cut into the groups each eval-loop call runs,
    /// innermost group first.
    pub fn groups(&mut self, frames: &[PythonFrame]) -> Vec<Vec<NamedFrame>> {
        // One clock read per stack, not per frame (it showed in profiles at every event).
        self.groups_at(frames, Instant::now())
    }

    fn groups_at(&mut self, frames: &[PythonFrame], now: Instant) -> Vec<Vec<NamedFrame>> {
        let layout = self.runtime.layout;
        let mut groups = Vec::new();
        let mut current = Vec::new();
        for frame in frames {
            if layout.boundary == Boundary::ShimFrame && frame.marker == layout::FRAME_OWNED_BY_CSTACK {
                if !current.is_empty() {
                    groups.push(std::mem::take(&mut current));
                }
                continue;
            }
            current.push(self.name(frame, now));
            let ends = match layout.boundary {
                Boundary::EveryFrame => true,
                Boundary::AfterEntryFrame => frame.marker != 0,
                Boundary::ShimFrame => false,
            };
            if ends {
                groups.push(std::mem::take(&mut current));
            }
        }
        if !current.is_empty() {
            groups.push(current);
        }
        groups
    }

    fn name(&mut self, frame: &PythonFrame, now: Instant) -> NamedFrame {
        let layout = self.runtime.layout;
        let oldest = self.oldest_check;
        let Some(cached) = self.code(frame.code, now) else {
            self.unnamed += 1;
            return NamedFrame { function: UNKNOWN_FUNCTION.into(), file: "".into(), line: None, first_line: None };
        };
        let checked_at = cached.checked_at;
        let offset = instruction_offset(&layout, frame.code, frame.instruction);
        let line = match cached.lines.iter().find(|(seen, _)| *seen == offset) {
            Some((_, line)) => *line,
            None => {
                let Some(code) = &cached.code else { unreachable!("code() answers only with a code object") };
                let line = line_at(layout.line_table, &code.line_table, code.first_line, offset)
                    .and_then(|line| u32::try_from(line).ok());
                if cached.lines.len() >= LINES_PER_CODE {
                    cached.lines.remove(0);
                }
                cached.lines.push((offset, line));
                line
            }
        };
        let Some(code) = &cached.code else { unreachable!("code() answers only with a code object") };
        let named = NamedFrame {
            function: code.function.clone(),
            file: code.file.clone(),
            line,
            first_line: u32::try_from(code.first_line).ok(),
        };
        // A stack being named for the cache is as old as its oldest code check.
        if let Some(oldest) = oldest {
            self.oldest_check = Some(oldest.min(checked_at));
        }
        named
    }

    /// The code object at `address`, read again when its answer is older than [`RECHECK`] and
    /// the object there is not the one read before (a negative answer is simply read again).
    fn code(&mut self, address: u64, now: Instant) -> Option<&mut Cached> {
        let pid = self.runtime.pid;
        let layout = self.runtime.layout;
        let fresh = match self.codes.get(&address) {
            None => false,
            Some(cached) if now.saturating_duration_since(cached.checked_at) < RECHECK => true,
            Some(Cached { code: Some(code), .. }) => read_identity(pid, address, &layout) == Some(code.identity),
            Some(Cached { code: None, .. }) => false,
        };
        if !fresh {
            if self.codes.len() >= CODE_CACHE_LIMIT {
                self.codes.clear();
            }
            let code = read_code(pid, address, &layout, self.runtime.code_type);
            self.codes.insert(address, Cached { code, checked_at: now, lines: Vec::new() });
        }
        let cached = self.codes.get_mut(&address)?;
        if fresh && now.saturating_duration_since(cached.checked_at) >= RECHECK {
            cached.checked_at = now;
        }
        cached.code.is_some().then_some(cached)
    }
}

/// Whether a native function is CPython's eval loop, each call of which runs a group of Python
/// frames (its `.cold` part included).
pub fn runs_frame_groups(native_function: &str) -> bool {
    native_function.starts_with("_PyEval_EvalFrameDefault")
}

/// Where the frame is in its code, as the line table counts (bytes before 3.11, code units
/// since); an instruction before the first counts as the first.
fn instruction_offset(layout: &VersionLayout, code: u64, instruction: u64) -> i64 {
    let offset = match layout.instruction {
        InstructionKind::LastiBytes => i64::from(instruction as u32 as i32),
        InstructionKind::LastiUnits => i64::from(instruction as u32 as i32).saturating_mul(2),
        InstructionKind::Pointer => {
            (instruction as i64).wrapping_sub(code.wrapping_add(u64::from(layout.code_adaptive)) as i64) / 2
        }
    };
    offset.max(0)
}

fn u64_at(head: &[u8], offset: u32) -> u64 {
    let at = offset as usize;
    head.get(at..at + 8).map_or(0, |b| u64::from_ne_bytes(b.try_into().unwrap()))
}

/// The pointers and first line that stay the same for the life of one code object.
fn identity(head: &[u8], layout: &VersionLayout) -> [u64; 4] {
    [
        u64_at(head, layout.code_filename),
        u64_at(head, layout.code_qualname.unwrap_or(layout.code_name)),
        u64_at(head, layout.code_line_table),
        u64_at(head, layout.code_first_line) & 0xffff_ffff,
    ]
}

fn read_identity(pid: u32, address: u64, layout: &VersionLayout) -> Option<[u64; 4]> {
    Some(identity(&memory::read_bytes(pid, address, CODE_HEAD_BYTES)?, layout))
}

/// The qualified name, file and first line of the code object at `address` (for `objects`).
pub(super) fn code_source(
    pid: u32,
    address: u64,
    layout: &VersionLayout,
    code_type: u64,
) -> Option<(Arc<str>, Arc<str>, i64)> {
    let code = read_code(pid, address, layout, code_type)?;
    Some((code.function, code.file, code.first_line))
}

/// Reads the code object at `address`, `None` when it is not one (its type is not
/// `PyCode_Type`: 3.13's shim frames hold `None`) or cannot be read.
fn read_code(pid: u32, address: u64, layout: &VersionLayout, code_type: u64) -> Option<CodeInfo> {
    let head = memory::read_bytes(pid, address, CODE_HEAD_BYTES)?;
    if u64_at(&head, layout::OBJECT_TYPE as u32) != code_type {
        return None;
    }
    let name = u64_at(&head, layout.code_qualname.unwrap_or(layout.code_name));
    let file = u64_at(&head, layout.code_filename);
    let first_line = i64::from(u64_at(&head, layout.code_first_line) as u32 as i32);
    let table = u64_at(&head, layout.code_line_table);
    Some(CodeInfo {
        function: read_unicode(pid, name, layout)?.into(),
        file: read_unicode(pid, file, layout).unwrap_or_default().into(),
        first_line,
        line_table: read_bytes_object(pid, table).unwrap_or_default().into_boxed_slice(),
        identity: identity(&head, layout),
    })
}

/// A `str` object's text (compact strings, which is all the interpreter makes for names and
/// file paths).
pub(super) fn read_unicode(pid: u32, address: u64, layout: &VersionLayout) -> Option<String> {
    let length = memory::read_u64(pid, address + layout::UNICODE_LENGTH)?.min(MAX_STRING);
    let state = memory::read_u32(pid, address + layout::UNICODE_STATE)?;
    let kind = (state >> 2) & 7;
    let compact = state & (1 << 5) != 0;
    let ascii = state & (1 << 6) != 0;
    if !compact {
        return None;
    }
    if ascii {
        let bytes = memory::read_bytes(pid, address + layout.ascii_data, length as usize)?;
        return String::from_utf8(bytes).ok();
    }
    let data = address + layout.compact_data;
    let bytes = memory::read_bytes(pid, data, (length * u64::from(kind)) as usize)?;
    let text = match kind {
        1 => bytes.iter().map(|&b| char::from(b)).collect(),
        2 => char::decode_utf16(bytes.chunks_exact(2).map(|c| u16::from_ne_bytes([c[0], c[1]])))
            .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
            .collect(),
        4 => bytes
            .chunks_exact(4)
            .map(|c| {
                char::from_u32(u32::from_ne_bytes([c[0], c[1], c[2], c[3]])).unwrap_or(char::REPLACEMENT_CHARACTER)
            })
            .collect(),
        _ => return None,
    };
    Some(text)
}

/// A `bytes` object's content.
fn read_bytes_object(pid: u32, address: u64) -> Option<Vec<u8>> {
    let size = memory::read_u64(pid, address + layout::BYTES_SIZE)?;
    if size > MAX_LINE_TABLE {
        return None;
    }
    memory::read_bytes(pid, address + layout::BYTES_DATA, size as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames_of(minor: u32) -> PythonFrames {
        let layout = layout::for_minor(minor).unwrap();
        PythonFrames::new(Arc::new(PythonRuntime {
            pid: std::process::id(),
            version: (3, minor, 0),
            layout,
            binary: "/usr/bin/python3".into(),
            runtime_address: 0,
            tss_key_address: 0,
            code_type: 0x1234,
        }))
    }

    fn sizes(groups: &[Vec<NamedFrame>]) -> Vec<usize> {
        groups.iter().map(Vec::len).collect()
    }

    #[test]
    fn groups_end_where_each_version_marks_an_eval_loop_call() {
        let frame = |marker| PythonFrame { code: 0, instruction: 0, marker, _pad: 0 };
        // 3.11: after the frame with is_entry.
        let chain = [frame(0), frame(0), frame(1), frame(0), frame(1)];
        assert_eq!(sizes(&frames_of(11).groups(&chain)), [3, 2]);
        // 3.12+: at the shim frames (owner 3), which are not shown.
        let chain = [frame(0), frame(0), frame(3), frame(0), frame(0), frame(3)];
        let mut v312 = frames_of(12);
        assert_eq!(sizes(&v312.groups(&chain)), [2, 2]);
        // A frame whose code cannot be read is kept, named so: the groups stay aligned.
        assert!(v312.groups(&chain)[0].iter().all(|f| &*f.function == UNKNOWN_FUNCTION));
        assert!(v312.unnamed > 0);
        // 3.8-3.10: one eval-loop call per frame.
        assert_eq!(sizes(&frames_of(9).groups(&[frame(0), frame(0), frame(0)])), [1, 1, 1]);
    }

    #[test]
    fn instruction_offsets_per_version() {
        let v38 = layout::for_minor(8).unwrap();
        let v310 = layout::for_minor(10).unwrap();
        let v311 = layout::for_minor(11).unwrap();
        // f_lasti and f_lineno share the word the kernel copied: only the low half counts.
        assert_eq!(instruction_offset(&v38, 0, (77u64 << 32) | 18), 18);
        assert_eq!(instruction_offset(&v38, 0, u64::from(u32::MAX)), 0, "-1: before the first");
        assert_eq!(instruction_offset(&v310, 0, 9), 18);
        let code = 0x7f00_0000_1000;
        assert_eq!(instruction_offset(&v311, code, code + 184 + 10), 5);
        assert_eq!(instruction_offset(&v311, code, code + 184 - 2), 0);
    }
}
