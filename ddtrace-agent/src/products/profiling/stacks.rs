//! From a CPU sample (registers and a stack copy) to symbolized frames, leaf first.
//!
//! Per process: its executable mappings, read at its first sample and again when an address
//! falls outside them (a library loaded since), at most every [`MAPS_REFRESH`]. Per address:
//! the symbolized frames (one, plus one per function inlined there when the module carries DWARF),
//! cached, since a hot loop is sampled at the same few addresses.

use std::{
    collections::HashMap,
    fmt,
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{
    core::CpuSample,
    intake::profile_exporter::Frame,
    interpreters::{
        python::{runs_frame_groups, NamedFrame, PythonFrames},
        InterpreterFrames,
    },
    symbols::{ProcessMaps, Symbolizer, UnwindEnd, Unwinder, UserRegisters},
};

/// The shortest time between two reads of one process's maps.
const MAPS_REFRESH: Duration = Duration::from_millis(200);
/// Frames kept per stack (dd-trace-py's `DD_PROFILING_MAX_FRAMES` default is 64; native stacks
/// run deeper, an interpreter's especially).
pub const MAX_FRAMES: usize = crate::symbols::MAX_DEPTH;
/// Cached addresses, all processes together; the cache starts over beyond this.
const FRAME_CACHE_LIMIT: usize = 200_000;

/// Shown past the innermost Python frames the sampler records (`MAX_PYTHON_FRAMES`).
pub const TRUNCATED_FRAMES: &str = "[more Python frames]";

/// The frame shown for time the thread spent in a system call.
pub const SYSCALL_FRAME: &str = "[system call]";

/// How unwinding went, for the report at exit.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UnwindCounts {
    pub complete: u64,
    pub stack_copy_end: u64,
    pub no_unwind_info: u64,
    pub max_depth: u64,
    /// A frame's call frame information needs a register the sampler does not copy.
    pub unsupported_rule: u64,
    pub invalid: u64,
    /// Samples of processes whose maps could not be read (gone before their first sample).
    pub unknown_process: u64,
    /// Samples with interpreter frames; of those, cut at the sampler's depth, and stopped by a
    /// frame that could not be read; interpreter threads whose state did not name the sampled
    /// thread; frames whose code could not be named.
    pub python_samples: u64,
    pub python_truncated: u64,
    pub python_read_failed: u64,
    pub python_not_this_thread: u64,
    pub python_unnamed_frames: u64,
}

impl fmt::Display for UnwindCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "complete={} cut_at_stack_copy_end={} no_unwind_info={} max_depth={} unsupported_rule={} invalid={} \
             unknown_process={} python_samples={} python_truncated={} python_read_failed={} \
             python_not_this_thread={} python_unnamed_frames={}",
            self.complete,
            self.stack_copy_end,
            self.no_unwind_info,
            self.max_depth,
            self.unsupported_rule,
            self.invalid,
            self.unknown_process,
            self.python_samples,
            self.python_truncated,
            self.python_read_failed,
            self.python_not_this_thread,
            self.python_unnamed_frames
        )
    }
}

struct KnownProcess {
    maps: ProcessMaps,
    read_at: Instant,
}

/// Unwinds and symbolizes samples of any number of processes.
#[derive(Default)]
pub struct StackResolver {
    unwinder: Unwinder,
    symbolizer: Symbolizer,
    processes: HashMap<u32, KnownProcess>,
    /// Per (process, address): innermost (inlined) first.
    frames: HashMap<(u32, u64), Box<[Frame]>>,
    addresses: Vec<u64>,
    /// Per process: its interpreter's frame namer.
    interpreters: HashMap<u32, PythonFrames>,
    pub counts: UnwindCounts,
}

impl StackResolver {
    pub fn new() -> Self {
        Self::default()
    }

    /// The frames of `sample`, innermost first; `None` when the process's maps are unknown.
    pub fn resolve(&mut self, sample: &CpuSample) -> Option<Vec<Frame>> {
        let tgid = sample.tgid;
        if !self.processes.contains_key(&tgid) {
            let Ok(maps) = ProcessMaps::read(tgid) else {
                self.counts.unknown_process += 1;
                return None;
            };
            self.processes.insert(tgid, KnownProcess { maps, read_at: Instant::now() });
        }
        self.refresh_maps_if_stale(tgid, sample.ip);
        let process = self.processes.get(&tgid)?;
        let registers = UserRegisters { ip: sample.ip, sp: sample.sp, bp: sample.bp };
        let end = self.unwinder.unwind(
            &process.maps,
            self.symbolizer.modules(),
            registers,
            &sample.stack,
            &mut self.addresses,
        );
        match end {
            UnwindEnd::Complete => self.counts.complete += 1,
            UnwindEnd::StackCopyEnd => self.counts.stack_copy_end += 1,
            UnwindEnd::NoUnwindInfo { .. } => self.counts.no_unwind_info += 1,
            UnwindEnd::MaxDepth => self.counts.max_depth += 1,
            UnwindEnd::UnsupportedRule { .. } => self.counts.unsupported_rule += 1,
            UnwindEnd::Invalid { .. } => self.counts.invalid += 1,
        }
        if self.frames.len() > FRAME_CACHE_LIMIT {
            self.frames.clear();
        }
        let mut frames = Vec::with_capacity(self.addresses.len().min(MAX_FRAMES) + 1);
        if sample.in_kernel {
            frames.push(Frame::new(SYSCALL_FRAME, "[kernel]"));
        }
        let limit = frames.len() + MAX_FRAMES;
        let addresses = std::mem::take(&mut self.addresses);
        for (depth, &address) in addresses.iter().take(MAX_FRAMES).enumerate() {
            // A return address points after the call, possibly at the next function's first
            // byte: the call itself is one byte back.
            let lookup = if depth == 0 { address } else { address.saturating_sub(1) };
            let room = limit - frames.len();
            frames.extend(self.frames_at(tgid, lookup).iter().take(room).cloned());
            if frames.len() >= limit {
                break;
            }
        }
        self.addresses = addresses;
        if let Some(interpreter) = &sample.interpreter {
            let groups = self.interpreter_groups(tgid, interpreter);
            frames = splice_interpreter_frames(frames, groups);
        }
        Some(frames)
    }

    /// The sample's interpreter frames, named, in the groups each eval-loop call runs.
    fn interpreter_groups(&mut self, tgid: u32, interpreter: &InterpreterFrames) -> Vec<Vec<NamedFrame>> {
        // A namer serves one interpreter: after an exec the process has another.
        let current =
            self.interpreters.get(&tgid).is_some_and(|namer| Arc::ptr_eq(namer.runtime(), &interpreter.runtime));
        if !current {
            self.interpreters.insert(tgid, PythonFrames::new(interpreter.runtime.clone()));
        }
        let Some(namer) = self.interpreters.get_mut(&tgid) else { return Vec::new() };
        let unnamed_before = namer.unnamed;
        let mut groups = namer.groups(&interpreter.frames);
        use ddtrace_common::python_stack_flags as flags;
        let counts = &mut self.counts;
        counts.python_unnamed_frames += namer.unnamed - unnamed_before;
        counts.python_samples += u64::from(!interpreter.frames.is_empty());
        counts.python_truncated += u64::from(interpreter.flags & flags::TRUNCATED != 0);
        counts.python_read_failed += u64::from(interpreter.flags & flags::READ_FAILED != 0);
        counts.python_not_this_thread += u64::from(interpreter.flags & flags::NOT_THIS_THREAD != 0);
        // The walk stops after the innermost frames: what was cut is at the outer end.
        if interpreter.flags & flags::TRUNCATED != 0 {
            if let Some(outermost) = groups.last_mut() {
                outermost.push(NamedFrame {
                    function: TRUNCATED_FRAMES.into(),
                    file: "".into(),
                    line: None,
                    first_line: None,
                });
            }
        }
        groups
    }

    /// Forgets an exited process (its addresses mean nothing any more).
    pub fn forget(&mut self, tgid: u32) {
        self.processes.remove(&tgid);
        self.interpreters.remove(&tgid);
        self.symbolizer.modules().forget_paths_under(&std::path::Path::new("/proc").join(tgid.to_string()));
        self.frames.retain(|(pid, _), _| *pid != tgid);
    }

    fn refresh_maps_if_stale(&mut self, tgid: u32, ip: u64) {
        let Some(process) = self.processes.get_mut(&tgid) else { return };
        if process.maps.find(ip).is_none() && process.read_at.elapsed() >= MAPS_REFRESH {
            if let Ok(maps) = ProcessMaps::read(tgid) {
                process.maps = maps;
                // Addresses may now belong to another file.
                self.frames.retain(|(pid, _), _| *pid != tgid);
            }
            process.read_at = Instant::now();
        }
    }

    /// The frames of one address, innermost (inlined) first.
    fn frames_at(&mut self, tgid: u32, address: u64) -> &[Frame] {
        let Self { frames, processes, symbolizer, .. } = self;
        frames.entry((tgid, address)).or_insert_with(|| {
            match processes.get(&tgid).map(|p| symbolizer.symbolize(&p.maps, address)) {
                Some(Ok(symbol)) => symbol_frames(symbol),
                // Anonymous executable memory (JIT code), the vDSO, or a file gone since.
                _ => Box::new([Frame::new("[unknown]", "[unknown]")]),
            }
        })
    }
}

/// `native` (innermost first) with each eval-loop frame replaced by the Python frames that call
/// ran, innermost group first. Groups left over (the native unwinding stopped early) go at the
/// outer end. More eval-loop frames than groups: the innermost ones are calls that have not
/// pushed their frame yet, and stay as they are.
fn splice_interpreter_frames(native: Vec<Frame>, groups: Vec<Vec<NamedFrame>>) -> Vec<Frame> {
    if groups.is_empty() {
        return native;
    }
    let eval_frames = native.iter().filter(|f| runs_frame_groups(&f.function)).count();
    let mut not_pushed_yet = eval_frames.saturating_sub(groups.len());
    let python = |frame: NamedFrame| Frame {
        function: frame.function,
        module: frame.file.clone(),
        file: frame.file,
        line: frame.line,
    };
    let mut groups = groups.into_iter();
    let mut spliced = Vec::with_capacity(native.len() + 32);
    for frame in native {
        if runs_frame_groups(&frame.function) {
            if not_pushed_yet > 0 {
                not_pushed_yet -= 1;
                spliced.push(frame);
                continue;
            }
            if let Some(group) = groups.next() {
                spliced.extend(group.into_iter().map(python));
                continue;
            }
        }
        spliced.push(frame);
    }
    spliced.extend(groups.flatten().map(python));
    spliced
}

/// A symbol's frames: each function inlined at the address (innermost first), then its own.
fn symbol_frames(symbol: crate::symbols::Symbol) -> Box<[Frame]> {
    let module = symbol.module.display().to_string();
    let mut frames: Vec<Frame> = symbol
        .inlined
        .iter()
        .map(|inlined| {
            let function = inlined.function.as_deref().unwrap_or("[inlined]");
            Frame::new(function, module.as_str()).with_source(inlined.file.clone().unwrap_or_default(), inlined.line)
        })
        .collect();
    let function = match &symbol.function {
        Some(name) => name.clone(),
        None => symbol.to_string(),
    };
    frames.push(Frame::new(function, module).with_source(symbol.file.unwrap_or_default(), symbol.line));
    frames.into_boxed_slice()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn native(names: &[&str]) -> Vec<Frame> {
        names.iter().map(|n| Frame::new(*n, "libpython3.11.so")).collect()
    }

    fn group(names: &[&str]) -> Vec<NamedFrame> {
        names
            .iter()
            .map(|n| NamedFrame { function: (*n).into(), file: "app.py".into(), line: Some(1), first_line: Some(1) })
            .collect()
    }

    fn names(frames: &[Frame]) -> Vec<&str> {
        frames.iter().map(|f| f.function.as_ref()).collect()
    }

    #[test]
    fn each_eval_loop_call_is_replaced_by_its_python_frames_innermost_first() {
        let spliced = splice_interpreter_frames(
            native(&["long_mod", "_PyEval_EvalFrameDefault", "list_sort", "_PyEval_EvalFrameDefault.cold", "main"]),
            vec![group(&["gamma", "key"]), group(&["beta", "alpha", "<module>"])],
        );
        assert_eq!(names(&spliced), ["long_mod", "gamma", "key", "list_sort", "beta", "alpha", "<module>", "main"]);
        assert_eq!(&*spliced[1].file, "app.py");
    }

    #[test]
    fn groups_without_an_eval_frame_go_outermost_and_extra_eval_frames_stay() {
        let cut_short = splice_interpreter_frames(native(&["leaf"]), vec![group(&["gamma"]), group(&["main"])]);
        assert_eq!(names(&cut_short), ["leaf", "gamma", "main"]);
        let not_pushed_yet = splice_interpreter_frames(
            native(&["_PyEval_EvalFrameDefault", "_PyEval_EvalFrameDefault", "main"]),
            vec![group(&["only"])],
        );
        assert_eq!(names(&not_pushed_yet), ["_PyEval_EvalFrameDefault", "only", "main"]);
        assert_eq!(names(&splice_interpreter_frames(native(&["a"]), Vec::new())), ["a"]);
    }
}
