//! Python frames at CPU samples: for a process the daemon found a CPython in, the sampler
//! follows the sampled thread's frame chain (it lives in the heap, not in the stack copy) and
//! records each frame's code object and instruction position, innermost first. The offsets come
//! from the daemon per process ([`PythonLayout`]); this program knows no Python version. Every
//! read is `bpf_probe_read_user`, which fails instead of faulting; nothing is written.

use aya_ebpf::{
    helpers::generated::{bpf_get_current_task_btf, bpf_probe_read_kernel, bpf_probe_read_user},
    macros::map,
    maps::{HashMap, PerCpuArray},
};
use ddtrace_common::{
    event_kind, python_stack_flags, EventHeader, PythonFrame, PythonLayout, PythonStackEvent, MAX_PYTHON_FRAMES,
    PYTHON_FRAME_READ_BYTES, PYTHON_STACK_HEADER_BYTES,
};

use super::EVENTS;

/// Processes whose samples carry Python frames, by tgid; written by the daemon at attach.
#[map(name = "PYTHON_PROCESSES")]
static PYTHON_PROCESSES: HashMap<u32, PythonLayout> = HashMap::with_max_entries(4096, 0);

/// Where the event is assembled (1.6 KiB does not fit the 512-byte BPF stack): one slot for the
/// sampler and one for the programs at events, which the sampler's interrupt may cut into.
#[map(name = "PYTHON_SCRATCH")]
static PYTHON_SCRATCH: PerCpuArray<PythonStackEvent> = PerCpuArray::with_max_entries(2, 0);

/// Frames recorded at an event (innermost first): what is looked for there, the library that
/// made a call and the view that made it, sits in the innermost frames; each frame more costs
/// the event's program verification at start-up (the loop is followed frame by frame).
const MAX_CALLER_FRAMES: usize = 32;

/// Which [`PYTHON_SCRATCH`] slot a program uses.
#[derive(Clone, Copy)]
pub enum Recorder {
    /// The CPU sampler (perf event, interrupt context).
    Sampler = 0,
    /// A program at a traced call (system call tracepoint, uprobe).
    Event = 1,
}

/// Set by the daemon: zero when no caller's frames are recorded at events (its
/// `--python-callers false`, the baseline of `cargo xtask bench --sqlite-callers`).
#[unsafe(no_mangle)]
static RECORD_CALLERS: u32 = 1;

/// Whether events of the process carry their caller's Python frames.
#[inline(always)]
pub fn records_callers(tgid: u32) -> bool {
    // SAFETY: a volatile read of a global the loader sets; a map lookup whose value is not read.
    unsafe { core::ptr::read_volatile(&RECORD_CALLERS) != 0 && PYTHON_PROCESSES.get(&tgid).is_some() }
}

const FRAME_WORDS: usize = PYTHON_FRAME_READ_BYTES as usize / 8;
// The index masks (`& (FRAME_WORDS - 1)`) keep indexes in the array only for a power of two.
const _: () = assert!(FRAME_WORDS.is_power_of_two());
const SHORT_FRAME_BYTES: u32 = 72;

/// 3.11+ frames live side by side in the thread's data stack (and 3.12's entry frames on the C
/// stack): one read of the page a frame is in serves the frames below it in that page, instead
/// of a read per frame (each read costs ~80 ns; a web view's 30 frames fit in a page or two).
/// Older frame objects are scattered in the heap: read one by one.
const PAGE_BYTES: u64 = 4096;
const PAGE_WORDS: usize = PAGE_BYTES as usize / 8;

/// A copied window of the target's memory and where it starts.
#[repr(C)]
pub struct PythonPage {
    words: [u64; PAGE_WORDS],
    /// Kept in map memory, not a register: the verifier then knows nothing of it on any path,
    /// and prunes the walk's paths instead of following each of them for every frame.
    start: u64,
}

/// The page being walked, per recorder (see [`PYTHON_SCRATCH`]).
#[map(name = "PYTHON_PAGES")]
static PYTHON_PAGES: PerCpuArray<PythonPage> = PerCpuArray::with_max_entries(2, 0);

#[inline(always)]
fn read_user_u64(address: u64) -> Option<u64> {
    let mut value = 0u64;
    // SAFETY: the helper copies 8 bytes into `value` or fails; it never faults the target.
    let failed = unsafe { bpf_probe_read_user(&mut value as *mut u64 as *mut _, 8, address as *const _) };
    (failed == 0).then_some(value)
}

/// The innermost frame of the current thread, or why there is none.
#[inline(always)]
fn innermost_frame(layout: &PythonLayout) -> Result<u64, u32> {
    let mut fsbase = 0u64;
    // SAFETY: reads one field of the current task (offset from the kernel's BTF) or fails.
    let failed = unsafe {
        let task = bpf_get_current_task_btf() as u64;
        bpf_probe_read_kernel(&mut fsbase as *mut u64 as *mut _, 8, (task + layout.task_fsbase as u64) as *const _)
    };
    if failed != 0 || fsbase == 0 {
        return Err(python_stack_flags::READ_FAILED);
    }
    let mut key = 0u32;
    // SAFETY: as `read_user_u64`, 4 bytes.
    let failed = unsafe { bpf_probe_read_user(&mut key as *mut u32 as *mut _, 4, layout.tss_key_address as *const _) };
    // Keys past glibc's first block of 32 live in a second level we do not follow.
    if failed != 0 || key >= 32 {
        return Err(python_stack_flags::READ_FAILED);
    }
    let tstate =
        read_user_u64(fsbase + layout.tls_block as u64 + key as u64 * 16 + 8).ok_or(python_stack_flags::READ_FAILED)?;
    if tstate == 0 {
        return Err(python_stack_flags::NO_THREAD_STATE);
    }
    if read_user_u64(tstate + layout.tstate_thread_id as u64) != Some(fsbase) {
        return Err(python_stack_flags::NOT_THIS_THREAD);
    }
    let mut frame = read_user_u64(tstate + layout.tstate_frame as u64).ok_or(python_stack_flags::READ_FAILED)?;
    if layout.cframe_frame != PythonLayout::NO_OFFSET && frame != 0 {
        frame = read_user_u64(frame + layout.cframe_frame as u64).ok_or(python_stack_flags::READ_FAILED)?;
    }
    Ok(frame)
}

/// Writes the current thread's Python frames as one event, when its process has a layout. The
/// daemon gives them to the event written next with the same `header` time (a sample, a socket
/// write).
#[inline(always)]
pub fn record_stack(tgid: u32, header: EventHeader, recorder: Recorder) {
    let (probe_id, tid, ktime_ns) = (header.probe_id, header.tid, header.ktime_ns);
    let _ = match recorder {
        Recorder::Sampler => ddtrace_record_sampled_stack(tgid, probe_id, tid, ktime_ns),
        Recorder::Event => ddtrace_record_caller_stack(tgid, probe_id, tid, ktime_ns),
    };
}

// The walk as global functions: the kernel verifies each once per program that calls it, on
// its own, instead of inside the calling program's every path (inlined, it cost the socket and
// TLS programs ~190 ms of verification each at start-up). One per recorder, so that each has its
// constant frame limit.

/// [`record_stack`] for the CPU sampler.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn ddtrace_record_sampled_stack(tgid: u32, probe_id: u32, tid: u32, ktime_ns: u64) -> i32 {
    let header = EventHeader { kind: event_kind::PYTHON_STACK, probe_id, tgid, tid, ktime_ns };
    walk_and_record(tgid, header, Recorder::Sampler);
    0
}

/// [`record_stack`] at an event.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn ddtrace_record_caller_stack(tgid: u32, probe_id: u32, tid: u32, ktime_ns: u64) -> i32 {
    let header = EventHeader { kind: event_kind::PYTHON_STACK, probe_id, tgid, tid, ktime_ns };
    walk_and_record(tgid, header, Recorder::Event);
    0
}

#[inline(always)]
fn walk_and_record(tgid: u32, header: EventHeader, recorder: Recorder) {
    // SAFETY: a map lookup; the value is copied out at once.
    let Some(layout) = (unsafe { PYTHON_PROCESSES.get(&tgid) }).copied() else { return };
    let Some(event) = PYTHON_SCRATCH.get_ptr_mut(recorder as u32) else { return };
    // SAFETY: the per-CPU scratch value; a perf-event program is not preempted on its CPU.
    let event = unsafe { &mut *event };
    event.header = EventHeader { kind: event_kind::PYTHON_STACK, ..header };
    event.frame_count = 0;
    event.flags = 0;
    let mut frame = match innermost_frame(&layout) {
        Ok(frame) => frame,
        Err(flag) => {
            event.flags = flag;
            0
        }
    };
    // Two constant sizes (a size computed from the layout loses its bounds for the verifier
    // once the compiler spills it): 3.11+ frames need 72 bytes, and the last frame of a frame
    // chunk may end right before unmapped memory; older frame objects need 112.
    let short = layout.frame_bytes <= SHORT_FRAME_BYTES;
    // A constant at each (inlined) call: the verifier follows the loop this many times.
    let limit = match recorder {
        Recorder::Sampler => MAX_PYTHON_FRAMES,
        Recorder::Event => MAX_CALLER_FRAMES,
    };
    let mut count = 0usize;
    if short {
        let Some(page) = PYTHON_PAGES.get_ptr_mut(recorder as u32) else { return };
        // SAFETY: the per-CPU page buffer of this recorder, as the scratch above.
        let page = unsafe { &mut *page };
        // 3.11+ frames always have the four fields, within their 72 bytes (plain numbers here:
        // an `Option` kept across the branches leaves an undefined register the verifier refuses).
        let index = |offset: u32| (offset / 8) as usize & (FRAME_WORDS - 1);
        let (code, instruction, previous) =
            (index(layout.frame_code), index(layout.frame_instruction), index(layout.frame_previous));
        let (marker_word, marker_shift) = (index(layout.frame_marker), (layout.frame_marker % 8) * 8);
        // Where the copied window starts; none held: above every frame, so the first one is read.
        page.start = u64::MAX;
        while count < limit && frame != 0 {
            // SAFETY: a read of the buffer's own field (volatile: from memory on every path).
            let held = unsafe { core::ptr::read_volatile(&page.start) };
            if frame < held || frame + SHORT_FRAME_BYTES as u64 > held + PAGE_BYTES {
                // The frame's page, or for a frame that crosses into the next page the page's
                // worth of bytes that ends with it: memory the frame proves is there.
                let base = frame & !(PAGE_BYTES - 1);
                let tail = (frame + SHORT_FRAME_BYTES as u64).wrapping_sub(PAGE_BYTES);
                let window = if tail > base { tail } else { base };
                // SAFETY: copies one page's worth of the target into the buffer, or fails.
                let failed = unsafe {
                    bpf_probe_read_user(page.words.as_mut_ptr() as *mut _, PAGE_BYTES as u32, window as *const _)
                };
                if failed != 0 {
                    event.flags |= python_stack_flags::READ_FAILED;
                    break;
                }
                page.start = window;
            }
            // SAFETY: as above.
            let held = unsafe { core::ptr::read_volatile(&page.start) };
            let first = (frame.wrapping_sub(held) / 8) as usize;
            let at = |word: usize| page.words[(first + word) & (PAGE_WORDS - 1)];
            event.frames[count] = PythonFrame {
                code: at(code),
                instruction: at(instruction),
                marker: ((at(marker_word) >> (marker_shift & 63)) & 0xff) as u32,
                _pad: 0,
            };
            count += 1;
            frame = at(previous);
        }
    } else {
        // Frame objects one by one, into the page buffer (plain masked indexes, no branch per
        // field: the verifier follows this loop frame by frame, and branches it cannot prune
        // multiply its work: ~100 ms per program with an `Option` per field).
        let Some(page) = PYTHON_PAGES.get_ptr_mut(recorder as u32) else { return };
        // SAFETY: the per-CPU page buffer of this recorder.
        let words = unsafe { &mut (*page).words };
        let index = |offset: u32| (offset / 8) as usize & (FRAME_WORDS - 1);
        let (code, instruction, previous) =
            (index(layout.frame_code), index(layout.frame_instruction), index(layout.frame_previous));
        let (marker_word, marker_shift) = (index(layout.frame_marker), (layout.frame_marker % 8) * 8);
        let marker_mask = if layout.frame_marker == PythonLayout::NO_OFFSET { 0 } else { 0xff };
        while count < limit && frame != 0 {
            // SAFETY: copies one frame object's first bytes into the buffer, or fails.
            let failed = unsafe {
                bpf_probe_read_user(words.as_mut_ptr() as *mut _, PYTHON_FRAME_READ_BYTES, frame as *const _)
            };
            if failed != 0 {
                event.flags |= python_stack_flags::READ_FAILED;
                break;
            }
            event.frames[count] = PythonFrame {
                code: words[code],
                instruction: words[instruction],
                marker: ((words[marker_word] >> (marker_shift & 63)) & marker_mask) as u32,
                _pad: 0,
            };
            count += 1;
            frame = words[previous];
        }
    }
    if frame != 0 && count == limit {
        event.flags |= python_stack_flags::TRUNCATED;
    }
    event.frame_count = count as u32;
    let total = PYTHON_STACK_HEADER_BYTES + count * core::mem::size_of::<PythonFrame>();
    // SAFETY: `total` never exceeds the scratch value's size (header + MAX_PYTHON_FRAMES frames).
    let bytes = unsafe { core::slice::from_raw_parts(event as *const PythonStackEvent as *const u8, total) };
    if EVENTS.output::<[u8]>(bytes, super::unhurried_submit_flags()).is_err() {
        super::count(ddtrace_common::counter::DROPPED_RING_FULL);
    }
}
