//! Node mode's opt-in at exec: a new program whose environment sets `DD_SERVICE` is tracked
//! here, in the exec tracepoint, before it runs its first instruction, so a process that lives a
//! millisecond is traced from its first library call. The daemon judges it afterwards (it may
//! refuse it: an in-process tracer, the Datadog agent) and untracks what it refuses.
//!
//! The environment is read where the kernel keeps it (`mm->env_start` to `env_end`), one
//! variable per `bpf_probe_read_user_str`: bounded in variables and in bytes per variable.

use aya_ebpf::{
    helpers::{
        bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes, bpf_probe_read_user_str_bytes,
        generated::{bpf_get_current_task, bpf_loop},
    },
    macros::map,
    maps::PerCpuArray,
};
use ddtrace_common::{ExecLayout, OptInEvent, OPT_IN_VALUE_BYTES};

/// Set by the daemon at load time; all zero (unknown) when it could not read the kernel's BTF.
#[unsafe(no_mangle)]
static EXEC_LAYOUT: ExecLayout = ExecLayout { known: 0, task_mm: 0, mm_env_start: 0, mm_env_end: 0 };

/// Steps (a variable, or 255 bytes of a long one) looked at; an environment with more is judged
/// by the daemon alone past them. Kubernetes adds ~7 variables per Service of the namespace.
const MAX_VARIABLES: u32 = 2048;
/// Bytes of one variable read at once (a longer one is read on in the next step).
const VARIABLE_BYTES: usize = 256;

#[map(name = "OPT_IN_SCRATCH")]
static SCRATCH: PerCpuArray<[u8; VARIABLE_BYTES]> = PerCpuArray::with_max_entries(1, 0);
#[map(name = "OPT_IN_EVENT")]
static EVENT: PerCpuArray<OptInEvent> = PerCpuArray::with_max_entries(1, 0);

macro_rules! offset {
    ($field:ident) => {
        // SAFETY: reads a field of a static the loader may have rewritten.
        unsafe { core::ptr::read_volatile(&EXEC_LAYOUT.$field) } as u64
    };
}

#[inline(always)]
fn read_kernel_u64(address: u64) -> Option<u64> {
    // SAFETY: the helper copies kernel memory and fails instead of faulting.
    unsafe { bpf_probe_read_kernel(address as *const u64) }.ok()
}

#[inline(always)]
fn starts_with(bytes: &[u8; VARIABLE_BYTES], prefix: &[u8]) -> bool {
    let mut i = 0;
    while i < prefix.len() {
        if bytes[i] != prefix[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Copies the value after `prefix` (NUL-terminated, bounded) into `out`.
#[inline(always)]
fn take_value(bytes: &[u8; VARIABLE_BYTES], prefix_len: usize, out: &mut [u8; OPT_IN_VALUE_BYTES]) {
    // SAFETY: a bounded string copy out of the per-CPU scratch value (kernel memory).
    let _ = unsafe { bpf_probe_read_kernel_str_bytes(bytes.as_ptr().add(prefix_len), out) };
}

/// Where the scan of one environment stands, on the exec program's stack (`bpf_loop`'s context).
#[repr(C)]
struct Scan {
    at: u64,
    end: u64,
    found: u64,
    /// The step is inside a variable longer than one read (its name was in an earlier one).
    mid: u64,
}

/// One variable of the environment, as `bpf_loop`'s callback: the verifier checks it once
/// instead of once per variable (a plain loop of 512 is past its budget). Returns 1 to stop.
extern "C" fn scan_variable(_index: u64, context: *mut core::ffi::c_void) -> i64 {
    // SAFETY: `context` is the `Scan` on the calling program's stack (bpf_loop passes it through).
    let scan = unsafe { &mut *(context as *mut Scan) };
    if scan.at >= scan.end {
        return 1;
    }
    let (Some(bytes), Some(event)) = (SCRATCH.get_ptr_mut(0), EVENT.get_ptr_mut(0)) else { return 1 };
    // SAFETY: per-CPU scratch values, used by this program only, for the length of one call.
    let (bytes, event) = unsafe { (&mut *bytes, &mut *event) };
    // SAFETY: the helper copies user memory and fails instead of faulting.
    let Ok(read) = (unsafe { bpf_probe_read_user_str_bytes(scan.at as *const u8, bytes) }) else { return 1 };
    let length = read.len() as u64;
    // A full read may be cut short: the rest of the variable (or just its NUL) comes next, and
    // is not the start of a variable.
    let cut = length == VARIABLE_BYTES as u64 - 1;
    if scan.mid == 0 {
        if starts_with(bytes, b"DD_SERVICE=") {
            if bytes[11] != 0 {
                take_value(bytes, 11, &mut event.service);
                scan.found = 1;
            }
        } else if starts_with(bytes, b"DD_ENV=") {
            take_value(bytes, 7, &mut event.env);
        } else if starts_with(bytes, b"DD_VERSION=") {
            take_value(bytes, 11, &mut event.version);
        }
    }
    if cut {
        scan.at += length;
        scan.mid = 1;
    } else {
        scan.at += length + 1; // and its NUL
        scan.mid = 0;
    }
    0
}

/// Reads the current (just exec'd) process's `DD_SERVICE`, `DD_ENV` and `DD_VERSION`. Returns the
/// filled event when `DD_SERVICE` is set and not empty.
#[inline(always)]
pub fn opted_in() -> Option<&'static mut OptInEvent> {
    // SAFETY: volatile read of a load-time constant.
    if unsafe { core::ptr::read_volatile(&EXEC_LAYOUT.known) } == 0 {
        return None;
    }
    // SAFETY: plain helper call; the task pointer is only used as an address to read from.
    let task = unsafe { bpf_get_current_task() };
    let mm = read_kernel_u64(task + offset!(task_mm))?;
    if mm == 0 {
        return None;
    }
    let mut scan = Scan {
        at: read_kernel_u64(mm + offset!(mm_env_start))?,
        end: read_kernel_u64(mm + offset!(mm_env_end))?,
        found: 0,
        mid: 0,
    };
    // SAFETY: per-CPU scratch value, used by this program only, for the length of one call.
    let event = unsafe { &mut *EVENT.get_ptr_mut(0)? };
    event.service[0] = 0;
    event.env[0] = 0;
    event.version[0] = 0;
    // SAFETY: a helper call with a callback of the signature it expects and a context on our
    // stack that outlives it.
    unsafe {
        bpf_loop(
            MAX_VARIABLES,
            scan_variable as *mut core::ffi::c_void,
            &mut scan as *mut Scan as *mut core::ffi::c_void,
            0,
        )
    };
    (scan.found != 0).then_some(event)
}
