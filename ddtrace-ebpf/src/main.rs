//! Kernel-side programs of ddtrace-agent.
//!
//! Few and generic: one entry handler and one exit handler shared by every integration, told
//! apart by the attach cookie (a probe id indexing `PROBE_SPECS`). No protocol parsing here: the
//! programs filter by process, copy bounded data, and hand events to the daemon.
#![no_std]
#![feature(core_intrinsics)]
#![allow(internal_features)]
#![no_main]

mod go_sites;
mod go_tls;
mod goroutines;
mod opt_in;
mod python;
mod slot_tables;
mod socket_addresses;
mod socket_layer;
mod sockets;
mod tls;
mod user_memory;

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user, bpf_probe_read_user_str_bytes,
        generated::{
            bpf_get_attach_cookie, bpf_get_current_task_btf, bpf_probe_read_kernel,
            bpf_probe_read_user as read_user_raw, bpf_task_pt_regs,
        },
    },
    macros::{map, perf_event, tracepoint, uprobe, uretprobe},
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
    programs::{PerfEventContext, ProbeContext, RetProbeContext, TracePointContext},
    EbpfContext,
};
use aya_log_ebpf::debug;
use ddtrace_common::{
    capture_flags, counter, event_kind, exit_flags, probe_flags, sample_flags, EntryCaptureEvent, EntryEvent,
    EventHeader, ExitEvent, OutPointerKey, ProbeSpec, ProcessEvent, StackSampleEvent, ENTRY_ARGS, MAX_CAPTURE,
    MAX_PROBES, RING_BUFFER_BYTES, STACK_SAMPLE_HEADER_BYTES, STACK_SNAPSHOT_BYTES, TRACKED_PROCESS_WORDS,
};

#[map(name = "PROBE_SPECS")]
static PROBE_SPECS: Array<ProbeSpec> = Array::with_max_entries(MAX_PROBES, 0);

/// Bit `tgid` is set for every process the daemon instruments. Probes may be shared by processes
/// that map the same library file; only tracked ones produce events.
#[map(name = "TRACKED_PROCESSES")]
static TRACKED_PROCESSES: Array<u64> = Array::with_max_entries(TRACKED_PROCESS_WORDS, 0);

/// Out-pointers saved at entry, read back at exit. LRU so a lost exit never leaks an entry.
#[map(name = "OUT_POINTERS")]
static OUT_POINTERS: LruHashMap<OutPointerKey, u64> = LruHashMap::with_max_entries(16384, 0);

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BUFFER_BYTES, 0);

#[inline(always)]
fn count(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, programs do not migrate CPU while running.
        unsafe { *slot += 1 };
    }
}

/// Wake the reader for urgent probes (a library was just loaded). Everything else waits for the
/// reader's 100 ms drain tick, unless the ring fills: waking it costs the target ~0.6 us per event
/// (measured), and even deciding when to wake (`bpf_ringbuf_query` on every submit) showed in the
/// per-call cost, so see [`unhurried_submit_flags`].
#[inline(always)]
fn submit_flags(spec_flags: u32) -> u64 {
    if spec_flags & probe_flags::WAKE_READER != 0 {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        unhurried_submit_flags()
    }
}

/// Submits per CPU, to look at the ring's fill only every [`FILL_CHECK_EVERY`]th one.
#[map(name = "SUBMITS")]
static SUBMITS: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Every this many submits on a CPU, the program looks at how much of the ring waits: a burst of
/// a million events a second is seen within ~0.3 ms, 256 of the largest records (4 KiB of socket
/// data) are a quarter of the ring, and while the reader is behind (the ring stays full) the
/// wake-ups it sends for nothing stay rare. The check costs a per-CPU increment per event.
const FILL_CHECK_EVERY: u32 = 256;
/// Waiting bytes past which the reader is woken before its tick: an eighth of the ring, read at
/// once, leaves seven eighths for the time the reader takes to come.
const WAKE_WHEN_WAITING: u64 = RING_BUFFER_BYTES as u64 / 8;

/// The submit flags of an event nobody waits for: no wake-up, unless the ring is filling.
#[inline(always)]
pub(crate) fn unhurried_submit_flags() -> u64 {
    if let Some(submits) = SUBMITS.get_ptr_mut(0) {
        // SAFETY: this CPU's slot; programs do not migrate while they run.
        let due = unsafe {
            *submits = (*submits).wrapping_add(1);
            *submits % FILL_CHECK_EVERY == 0
        };
        if due && EVENTS.query(BPF_RB_AVAIL_DATA as u64) > WAKE_WHEN_WAITING {
            return BPF_RB_FORCE_WAKEUP as u64;
        }
    }
    BPF_RB_NO_WAKEUP as u64
}

#[inline(always)]
fn is_tracked(tgid: u32) -> bool {
    let word = TRACKED_PROCESSES.get(tgid / 64).copied().unwrap_or(0);
    word & (1u64 << (tgid % 64)) != 0
}

/// Sets or clears bit `tgid`. Not atomic (the BPF target has no atomic `or` in Rust's core): two
/// CPUs flipping bits of the same 64-pid word at the same instant could lose one; the daemon
/// re-asserts the bit when it handles the fork event, so such a loss lasts milliseconds.
#[inline(always)]
fn flip_tracked(tgid: u32, track: bool) {
    if let Some(word) = TRACKED_PROCESSES.get_ptr_mut(tgid / 64) {
        let bit = 1u64 << (tgid % 64);
        // Atomic (BPF_ATOMIC): another CPU may flip another process's bit of the same word at
        // the same time (a fork here, an exit or node mode's opt-in there); a plain
        // read-modify-write would undo it.
        // SAFETY: points into the array map's value, which the kernel keeps alive, 8-aligned.
        unsafe {
            if track {
                core::intrinsics::atomic_or::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(word, bit);
            } else {
                core::intrinsics::atomic_and::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(word, !bit);
            }
        }
    }
}

/// Returns the probe's spec when the current process is tracked.
#[inline(always)]
fn tracked_spec<C: EbpfContext>(ctx: &C, pid_tgid: u64) -> Option<(u32, ProbeSpec)> {
    if !is_tracked((pid_tgid >> 32) as u32) {
        return None;
    }
    // SAFETY: helper reads the cookie of the link that fired this program.
    let probe_id = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) } as u32;
    match PROBE_SPECS.get(probe_id) {
        Some(spec) => Some((probe_id, *spec)),
        None => {
            count(counter::MISSING_SPEC);
            debug!(ctx, "no spec for probe {}", probe_id);
            None
        }
    }
}

#[inline(always)]
fn header(kind: u32, probe_id: u32, pid_tgid: u64) -> EventHeader {
    EventHeader {
        kind,
        probe_id,
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        // SAFETY: plain helper call.
        ktime_ns: unsafe { bpf_ktime_get_ns() },
    }
}

#[inline(always)]
fn entry_args(ctx: &ProbeContext) -> [u64; ENTRY_ARGS] {
    [
        ctx.arg::<u64>(0).unwrap_or(0),
        ctx.arg::<u64>(1).unwrap_or(0),
        ctx.arg::<u64>(2).unwrap_or(0),
        ctx.arg::<u64>(3).unwrap_or(0),
        ctx.arg::<u64>(4).unwrap_or(0),
        ctx.arg::<u64>(5).unwrap_or(0),
    ]
}

/// Argument `n` of the copied registers. Padded to a power of two and masked so the verifier
/// sees a bounded stack read (a plain `% ENTRY_ARGS` or a match on `ctx` is rejected).
#[inline(always)]
fn select_arg(args: &[u64; ENTRY_ARGS], n: u32) -> u64 {
    let mut padded = [0u64; 8];
    padded[..ENTRY_ARGS].copy_from_slice(args);
    padded[(n & 7) as usize]
}

/// Per thread: the first argument and time of the last call whose caller was recorded.
#[map(name = "CALLER_RECORDED")]
static CALLER_RECORDED: LruHashMap<u64, [u64; 2]> = LruHashMap::with_max_entries(16384, 0);

/// A caller is recorded again for another object (a statement), after a call on it returned
/// something else than `ProbeSpec::same_caller_while_ret` (its run is over: see `ddtrace_exit`),
/// or after this long: a loop over a query's rows (a step per row, one caller) walks the
/// interpreter's frames once, not per row.
const CALLER_RECORD_INTERVAL_NS: u64 = 1_000_000;

#[inline(always)]
fn caller_worth_recording(pid_tgid: u64, object: u64, now_ns: u64) -> bool {
    if !python::records_callers((pid_tgid >> 32) as u32) {
        return false;
    }
    // SAFETY: a map lookup; the value is copied out at once.
    let last = unsafe { CALLER_RECORDED.get(&pid_tgid) }.copied();
    let due = match last {
        Some([last_object, at]) => last_object != object || now_ns.wrapping_sub(at) > CALLER_RECORD_INTERVAL_NS,
        None => true,
    };
    if due {
        let _ = CALLER_RECORDED.insert(&pid_tgid, &[object, now_ns], 0);
    }
    due
}

/// The shared entry handler.
#[uprobe]
pub fn ddtrace_entry(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some((probe_id, spec)) = tracked_spec(&ctx, pid_tgid) else {
        return 0;
    };
    let args = entry_args(&ctx);
    // SAFETY: regs points to the probe's saved registers.
    let frame = unsafe { (*ctx.regs).rsp };
    let kind =
        if spec.flags & probe_flags::CAPTURE_STRING != 0 { event_kind::ENTRY_WITH_CAPTURE } else { event_kind::ENTRY };
    let at = header(kind, probe_id, pid_tgid);
    if spec.flags & probe_flags::FORGET_CALLER != 0 {
        let _ = CALLER_RECORDED.remove(&pid_tgid);
    }
    if spec.flags & probe_flags::RECORD_CALLER != 0 && caller_worth_recording(pid_tgid, args[0], at.ktime_ns) {
        python::record_stack((pid_tgid >> 32) as u32, at, python::Recorder::Event);
    }

    if spec.flags & probe_flags::READ_OUT_POINTER_AT_EXIT != 0 {
        let key = OutPointerKey { pid_tgid, entry_stack_pointer: frame };
        let out_ptr = select_arg(&args, spec.out_arg);
        if OUT_POINTERS.insert(&key, &out_ptr, 0).is_err() {
            count(counter::OUT_POINTER_LOST);
        }
    }

    if spec.flags & probe_flags::CAPTURE_STRING != 0 {
        let src = select_arg(&args, spec.capture_arg) as *const u8;
        let mut limit = MAX_CAPTURE;
        if spec.flags & probe_flags::CAPTURE_LENGTH_ARG != 0 {
            let length = select_arg(&args, spec.length_arg) as i32;
            // The helper copies at most limit - 1 bytes and a NUL: never past the caller's bytes.
            if length >= 0 && (length as usize) < MAX_CAPTURE {
                limit = length as usize + 1;
            }
        }
        emit_entry_with_capture(src, limit, at, args, frame, spec.flags);
    } else {
        let _ = emit_entry(at, args, frame, spec.flags);
    }
    0
}

/// An argument-less entry event for probe `probe_id`, waking the reader; whether it was written.
#[inline(always)]
pub(crate) fn announce_hit(pid_tgid: u64, probe_id: u32) -> bool {
    emit_entry(header(event_kind::ENTRY, probe_id, pid_tgid), [0; ENTRY_ARGS], 0, probe_flags::WAKE_READER)
}

/// Whether the event was written (the ring had room).
#[inline(always)]
fn emit_entry(at: EventHeader, args: [u64; ENTRY_ARGS], frame: u64, spec_flags: u32) -> bool {
    let Some(mut slot) = EVENTS.reserve::<EntryEvent>(0) else {
        count(counter::DROPPED_RING_FULL);
        return false;
    };
    slot.write(EntryEvent { header: at, args, frame });
    slot.submit(submit_flags(spec_flags));
    true
}

#[inline(always)]
fn emit_entry_with_capture(
    src: *const u8,
    limit: usize,
    at: EventHeader,
    args: [u64; ENTRY_ARGS],
    frame: u64,
    spec_flags: u32,
) {
    let Some(mut slot) = EVENTS.reserve::<EntryCaptureEvent>(0) else {
        count(counter::DROPPED_RING_FULL);
        return;
    };
    // Fill in place: the event is larger than the 512-byte eBPF stack.
    let event = slot.as_mut_ptr();
    // SAFETY: `event` points to reserved ring buffer memory of the right size; every field is
    // written before submit. The string is read with the bounded user-memory helper.
    unsafe {
        (*event).entry = EntryEvent { header: at, args, frame };
        let limit = if limit > MAX_CAPTURE { MAX_CAPTURE } else { limit };
        let buffer = &mut (&mut (*event).capture)[..limit];
        match bpf_probe_read_user_str_bytes(src, buffer) {
            Ok(bytes) => {
                let len = bytes.len();
                (*event).capture_len = len as u32;
                // The helper stops at MAX_CAPTURE - 1 bytes plus the NUL: our bound, not the
                // caller's length, cut the string.
                if limit == MAX_CAPTURE && len >= MAX_CAPTURE - 1 {
                    (*event).capture_flags = capture_flags::TRUNCATED;
                    count(counter::CAPTURE_TRUNCATED);
                } else {
                    (*event).capture_flags = 0;
                }
            }
            Err(_) => {
                (*event).capture_len = 0;
                (*event).capture_flags = capture_flags::READ_FAILED;
                count(counter::CAPTURE_FAILED);
            }
        }
    }
    slot.submit(submit_flags(spec_flags));
}

/// The shared exit handler.
#[uretprobe]
pub fn ddtrace_exit(ctx: RetProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some((probe_id, spec)) = tracked_spec(&ctx, pid_tgid) else {
        return 0;
    };
    let mut out_value = 0u64;
    let mut flags_out = 0u32;
    // `ret` popped the return address the entry's stack pointer pointed at.
    // SAFETY: regs points to the probe's saved registers.
    let frame = unsafe { (*ctx.regs).rsp }.wrapping_sub(8);
    if spec.flags & probe_flags::READ_OUT_POINTER_AT_EXIT != 0 {
        let key = OutPointerKey { pid_tgid, entry_stack_pointer: frame };
        // SAFETY: value copied out before the remove below.
        match unsafe { OUT_POINTERS.get(&key) }.copied() {
            Some(out_ptr) => {
                let _ = OUT_POINTERS.remove(&key);
                // SAFETY: bounded 8-byte read of user memory through the helper.
                match unsafe { bpf_probe_read_user(out_ptr as *const u64) } {
                    Ok(value) => {
                        out_value = value;
                        flags_out = exit_flags::OUT_VALUE_VALID;
                    }
                    Err(_) => count(counter::OUT_POINTER_LOST),
                }
            }
            None => count(counter::OUT_POINTER_LOST),
        }
    }
    let ret = ctx.ret::<u64>();
    if spec.flags & probe_flags::RECORD_CALLER != 0 && ret as u32 != spec.same_caller_while_ret {
        let _ = CALLER_RECORDED.remove(&pid_tgid);
    }
    let Some(mut slot) = EVENTS.reserve::<ExitEvent>(0) else {
        count(counter::DROPPED_RING_FULL);
        return 0;
    };
    slot.write(ExitEvent {
        header: header(event_kind::EXIT, probe_id, pid_tgid),
        ret,
        frame,
        out_value,
        exit_flags: flags_out,
        _pad: 0,
    });
    slot.submit(submit_flags(spec.flags));
    0
}

/// Tracepoint field offsets, set by the daemon from the tracepoints' `format` files.
#[unsafe(no_mangle)]
static FORK_CHILD_PID_OFFSET: u32 = 20;
#[unsafe(no_mangle)]
static EXIT_GROUP_DEAD_OFFSET: u32 = 32;
/// Set by the daemon in node mode: non-zero when every new program of the host is reported (the
/// daemon selects by more than `DD_SERVICE`: executable names, stable configuration); zero when
/// only those that opt in are.
#[unsafe(no_mangle)]
static REPORT_EVERY_EXEC: u32 = 0;

#[inline(always)]
fn emit_process_event(kind: u32, pid_tgid: u64, child_pid: u32) {
    let Some(mut slot) = EVENTS.reserve::<ProcessEvent>(0) else {
        count(counter::DROPPED_RING_FULL);
        return;
    };
    slot.write(ProcessEvent { header: header(kind, 0, pid_tgid), child_pid, _pad: 0 });
    // Rare and acted on at once, so wake the reader now: new processes need their state, exits
    // end the run, and a forked child or an exec'd image gets its own uprobe links only when the
    // daemon handles this event (about a millisecond later). A child's library calls in that gap
    // are not seen (its probes are scoped to traced processes; its events still pass the bitmap).
    slot.submit(BPF_RB_FORCE_WAKEUP as u64);
}

/// `clone`'s flag for a new thread of the caller's process.
const CLONE_THREAD: u64 = 0x0001_0000;

/// Threads of tracked processes inside a `clone` or `clone3` that creates a thread (keyed by
/// pid_tgid): the fork tracepoint, which fires inside that call and does not say whether the new
/// task is a thread, reads it here. A threaded server starts a thread per request; each used to
/// cost an event and a look at `/proc` in the daemon for nothing.
#[map(name = "THREAD_CLONES")]
static THREAD_CLONES: LruHashMap<u64, u32> = LruHashMap::with_max_entries(4096, 0);

/// Called at `clone`/`clone3` entry in a tracked process with the call's flags.
#[inline(always)]
fn note_clone(pid_tgid: u64, flags: u64) {
    if flags & CLONE_THREAD != 0 {
        let _ = THREAD_CLONES.insert(&pid_tgid, &1, 0);
    } else {
        let _ = THREAD_CLONES.remove(&pid_tgid);
    }
}

/// A tracked process forked: track the child before it runs its first instruction (this
/// tracepoint fires in the parent before the child is woken), then tell the daemon. A new
/// thread needs neither: it shares its process's bit.
#[tracepoint]
pub fn ddtrace_process_fork(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !is_tracked((pid_tgid >> 32) as u32) {
        return 0;
    }
    // SAFETY: the value is only tested for presence.
    if unsafe { THREAD_CLONES.get(&pid_tgid) }.is_some() {
        let _ = THREAD_CLONES.remove(&pid_tgid);
        return 0;
    }
    // SAFETY: volatile read of a load-time constant the daemon may override.
    let offset = unsafe { core::ptr::read_volatile(&FORK_CHILD_PID_OFFSET) } as usize;
    // SAFETY: bounded read of the tracepoint record through the helper.
    let Ok(child) = (unsafe { ctx.read_at::<u32>(offset) }) else { return 0 };
    flip_tracked(child, true);
    emit_process_event(event_kind::PROCESS_FORK, pid_tgid, child);
    0
}

#[tracepoint]
pub fn ddtrace_process_exec(_ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if is_tracked((pid_tgid >> 32) as u32) {
        emit_process_event(event_kind::PROCESS_EXEC, pid_tgid, 0);
    }
    0
}

/// Node mode's exec program, loaded instead of `ddtrace_process_exec` (it needs `bpf_loop`, 5.17+:
/// `--pid` keeps working on older kernels). A new program that opts in is tracked now, before
/// its first instruction, and reported with what it said of itself; others are reported when the
/// daemon asks for every exec.
#[tracepoint]
pub fn ddtrace_process_exec_node(_ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if is_tracked(tgid) {
        emit_process_event(event_kind::PROCESS_EXEC, pid_tgid, 0);
        return 0;
    }
    // SAFETY: volatile read of a load-time constant the daemon may override.
    let every_exec = unsafe { core::ptr::read_volatile(&REPORT_EVERY_EXEC) } != 0;
    match opt_in::opted_in() {
        Some(event) => {
            flip_tracked(tgid, true);
            event.header = header(event_kind::PROCESS_OPT_IN, 0, pid_tgid);
            if EVENTS.output::<ddtrace_common::OptInEvent>(event, BPF_RB_FORCE_WAKEUP as u64).is_err() {
                count(counter::DROPPED_RING_FULL);
            }
        }
        None if every_exec => emit_process_event(event_kind::PROCESS_EXEC, pid_tgid, 0),
        None => {}
    }
    0
}

#[tracepoint]
pub fn ddtrace_process_exit(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !is_tracked(tgid) {
        return 0;
    }
    // SAFETY: volatile read of a load-time constant the daemon may override.
    let offset = unsafe { core::ptr::read_volatile(&EXIT_GROUP_DEAD_OFFSET) } as usize;
    // SAFETY: bounded read of the tracepoint record through the helper.
    let group_dead = unsafe { ctx.read_at::<u8>(offset) }.unwrap_or(0);
    if group_dead != 0 {
        flip_tracked(tgid, false);
        emit_process_event(event_kind::PROCESS_EXIT, pid_tgid, 0);
    }
    0
}

/// Empty programs: the baseline `cargo xtask bench` measures ours against.
/// Where a CPU sample is assembled before it is copied to the ring buffer: 31 KiB does not fit
/// the 512-byte BPF stack.
#[map(name = "SAMPLE_SCRATCH")]
static SAMPLE_SCRATCH: PerCpuArray<StackSampleEvent> = PerCpuArray::with_max_entries(1, 0);

/// The stack is copied in chunks of this size, from the stack pointer up, until one cannot be
/// read. `bpf_probe_read_user` fails as a whole when any page of its range is not mapped or not
/// present (the program runs in interrupt context and cannot fault pages in), and the program
/// cannot know where the thread's stack ends; one large read failed for most samples of a
/// shallow main thread (measured: 2 KiB copies with 10 KiB of stack above the stack pointer).
const STACK_CHUNK_BYTES: usize = 1024;

/// CPU sampler: runs on every CPU at the sampling period (software cpu-clock); for a thread of a
/// tracked process it copies the user registers and the top of the user stack for the daemon to
/// unwind. Never writes to the target, never faults it in (`bpf_probe_read_user` fails instead).
#[perf_event]
pub fn ddtrace_cpu_sample(ctx: PerfEventContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if tgid == 0 || !is_tracked(tgid) {
        return 0;
    }
    let sample_header = header(event_kind::STACK_SAMPLE, 0, pid_tgid);
    // First, so that the daemon holds the thread's Python frames when its native sample comes.
    python::record_stack(tgid, sample_header, python::Recorder::Sampler);
    let Some(event) = SAMPLE_SCRATCH.get_ptr_mut(0) else { return 0 };
    // SAFETY: the per-CPU scratch value; a perf-event program is not preempted on its CPU.
    let event = unsafe { &mut *event };
    event.header = sample_header;
    event.sample_flags = 0;
    event.stack_len = 0;
    // SAFETY: a perf-event program's context is `bpf_perf_event_data`, whose first field is the
    // interrupted context's registers; the verifier checks these loads.
    let regs = unsafe { &(*(ctx.as_ptr() as *const aya_ebpf::bindings::bpf_perf_event_data)).regs };
    if regs.cs & 3 == 3 {
        event.ip = regs.rip;
        event.sp = regs.rsp;
        event.bp = regs.rbp;
    } else {
        // In a system call: the registers it entered the kernel with are saved at the top of
        // its kernel stack.
        event.sample_flags |= sample_flags::IN_KERNEL;
        // SAFETY: plain integers; all-zero is a valid value.
        let mut user: aya_ebpf::bindings::pt_regs = unsafe { core::mem::zeroed() };
        // SAFETY: helpers that read kernel memory and report failure instead of faulting.
        let read = unsafe {
            let regs_address = bpf_task_pt_regs(bpf_get_current_task_btf() as *mut _);
            bpf_probe_read_kernel(
                &mut user as *mut _ as *mut core::ffi::c_void,
                core::mem::size_of::<aya_ebpf::bindings::pt_regs>() as u32,
                regs_address as *const core::ffi::c_void,
            )
        };
        if read != 0 {
            count(counter::STACK_COPY_FAILED);
            return 0;
        }
        event.ip = user.rip;
        event.sp = user.rsp;
        event.bp = user.rbp;
    }
    count(counter::STACK_SAMPLES);
    let mut copied = 0u32;
    for chunk in 0..STACK_SNAPSHOT_BYTES / STACK_CHUNK_BYTES {
        let offset = chunk * STACK_CHUNK_BYTES;
        // SAFETY: reads the target's memory into our scratch buffer, within its bounds.
        let result = unsafe {
            read_user_raw(
                event.stack.as_mut_ptr().add(offset) as *mut core::ffi::c_void,
                STACK_CHUNK_BYTES as u32,
                (event.sp + offset as u64) as *const core::ffi::c_void,
            )
        };
        if result != 0 {
            break;
        }
        copied = (offset + STACK_CHUNK_BYTES) as u32;
    }
    if copied == 0 {
        count(counter::STACK_COPY_FAILED);
    }
    event.stack_len = copied;
    let total = (STACK_SAMPLE_HEADER_BYTES as u32 + copied) as usize;
    // SAFETY: `total` never exceeds the scratch value's size (header + largest copy).
    let bytes = unsafe { core::slice::from_raw_parts(event as *const StackSampleEvent as *const u8, total) };
    if EVENTS.output::<[u8]>(bytes, unhurried_submit_flags()).is_err() {
        count(counter::DROPPED_RING_FULL);
    }
    0
}

#[uprobe]
pub fn bench_empty_entry(_ctx: ProbeContext) -> u32 {
    0
}

#[uretprobe]
pub fn bench_empty_exit(_ctx: RetProbeContext) -> u32 {
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
