//! TLS plaintext of tracked processes, at the TLS library: uprobes on OpenSSL's `SSL_read`,
//! `SSL_write` (their `_ex` forms, or the internal functions all of them call) copy the first
//! bytes of what the call really moved, at its return. The socket the plaintext belongs to is learnt on the way: while a TLS call is in
//! flight on a thread, the system call tracepoints write the fd of the socket it reads or writes
//! into the call's record (`note_socket_io`). A read served from the library's buffer makes no
//! system call; its event carries `FD_UNKNOWN` and the daemon maps the session to the fd it saw
//! before.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{map, uprobe, uretprobe},
    maps::{Array, LruHashMap},
    programs::{ProbeContext, RetProbeContext},
};
use ddtrace_common::{event_kind, probe_flags, socket_flags, socket_op, TlsCall, FD_UNKNOWN};

use super::{header, is_tracked, python, sockets, tracked_spec, user_memory};

/// TLS calls in flight, by thread (a thread is in at most one: these functions do not nest,
/// except for TLS carried inside TLS through OpenSSL's SSL BIO, where the inner call's record
/// replaces the outer's and the outer one is not reported).
#[map(name = "TLS_CALLS")]
static TLS_CALLS: LruHashMap<u64, TlsCall> = LruHashMap::with_max_entries(16384, 0);

/// How many TLS calls are in flight on the host (entries counted up, exits that found their
/// record counted down): while none is, a socket's read or write skips the `TLS_CALLS` lookup
/// (a busy Redis server that no TLS touches paid it on every call). Never below the truth: a
/// record replaced or evicted before its exit leaves it higher, which only costs lookups.
#[map(name = "TLS_CALLS_IN_FLIGHT")]
static TLS_CALLS_IN_FLIGHT: Array<u64> = Array::with_max_entries(1, 0);

#[inline(always)]
fn count_in_flight(up: bool) {
    if let Some(count) = TLS_CALLS_IN_FLIGHT.get_ptr_mut(0) {
        // SAFETY: points into the array map's one value, 8-aligned; atomic: any CPU may count.
        unsafe {
            if up {
                core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(count, 1);
            } else {
                core::intrinsics::atomic_xsub::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(count, 1);
            }
        }
    }
}

/// Whether any TLS call may be in flight (see [`TLS_CALLS_IN_FLIGHT`]).
#[inline(always)]
pub fn any_call_in_flight() -> bool {
    TLS_CALLS_IN_FLIGHT.get(0).is_none_or(|count| *count != 0)
}

#[uprobe]
pub fn ddtrace_tls_entry(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some((_, spec)) = tracked_spec(&ctx, pid_tgid) else { return 0 };
    let length_out = if spec.flags & probe_flags::TLS_LENGTH_OUT != 0 { ctx.arg::<u64>(3).unwrap_or(0) } else { 0 };
    let call = TlsCall {
        session: ctx.arg::<u64>(0).unwrap_or(0),
        buffer: ctx.arg::<u64>(1).unwrap_or(0),
        length_out,
        flags: spec.flags,
        fd: FD_UNKNOWN,
    };
    if TLS_CALLS.insert(&pid_tgid, &call, 0).is_ok() {
        count_in_flight(true);
    }
    0
}

#[uretprobe]
pub fn ddtrace_tls_exit(ctx: RetProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !is_tracked((pid_tgid >> 32) as u32) {
        return 0;
    }
    // SAFETY: the value is copied out before the entry is removed.
    let Some(call) = (unsafe { TLS_CALLS.get(&pid_tgid) }).copied() else { return 0 };
    if TLS_CALLS.remove(&pid_tgid).is_ok() {
        count_in_flight(false);
    }
    // These functions return an `int`: only eax is defined.
    let ret = ctx.ret::<u64>() as u32 as i32;
    let moved = if call.flags & probe_flags::TLS_LENGTH_OUT != 0 {
        // SSL_read_ex/SSL_write_ex (and the internal functions): 1 on success, the byte count
        // through the size_t out-pointer.
        if ret > 0 {
            user_memory::read_u64(call.length_out)
        } else {
            0
        }
    } else if ret > 0 {
        ret as u64
    } else {
        0
    };
    if moved == 0 {
        return 0;
    }
    let op = if call.flags & probe_flags::TLS_WRITE != 0 { socket_op::SENT } else { socket_op::RECEIVED };
    let at = header(event_kind::SOCKET, 0, pid_tgid);
    // A request going out through TLS: who made the call (see `sockets::is_outbound_write`).
    let tgid = (pid_tgid >> 32) as u32;
    if op == socket_op::SENT
        && call.fd != FD_UNKNOWN
        && python::records_callers(tgid)
        && sockets::is_connected_socket(tgid, call.fd)
    {
        python::record_stack(tgid, at, python::Recorder::Event);
    }
    sockets::emit_data(at, call.fd, op, moved, call.buffer, socket_flags::TLS, call.session);
    0
}

/// A tracked thread reads or writes socket `fd`: if it is inside a TLS call, that call's
/// plaintext belongs to this socket. Returns whether it is.
#[inline(always)]
pub fn note_socket_io(pid_tgid: u64, fd: u32) -> bool {
    match TLS_CALLS.get_ptr_mut(&pid_tgid) {
        Some(call) => {
            // SAFETY: points into the map's value for this thread, which only this thread writes.
            unsafe { (*call).fd = fd };
            true
        }
        None => false,
    }
}
