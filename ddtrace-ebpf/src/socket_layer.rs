//! Socket traffic from the kernel's socket layer (6.3+), where it has the tracepoints: every send
//! and receive on a socket fires `sock_send_length` / `sock_recv_length` inside the system call
//! that made it, a TCP socket's state changes fire `inet_sock_set_state`, a new task
//! `task_newtask`. None is a system-call tracepoint: while any of those is attached, the kernel
//! sends every system call of every task of the host through its slow path, and each of our
//! socket calls ran two programs and a map insert and delete. Here a transfer runs one program,
//! after the bytes moved, and an epoll_wait or a futex runs none.
//!
//! The call's descriptor and buffer are the task's saved user registers (the system call's
//! arguments); a socket is followed once its first bytes move, with the side its handshake gave
//! (TCP) or its bound address tells (Unix), so a connection event is sent just before its first
//! bytes. The events are the system-call programs' own: the daemon cannot tell the two apart.

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task_btf, bpf_task_pt_regs},
    macros::{map, raw_tracepoint},
    maps::{Array, LruHashMap},
    programs::RawTracePointContext,
};
use ddtrace_common::{event_kind, socket_op, SocketEntry, SocketKey};

use super::{
    header, is_tracked, note_clone, tls,
    python::{self, Recorder},
    slot_tables::{self, Slot, SLOTS},
    socket_addresses::{self, AF_UNIX},
    sockets::{
        self, emit_connection, is_transfer, nr, report_transfer, socket_value, AddressSource, Transfer, SOCKETS,
        SOCKET_UNIX,
    },
};

/// `recv(..., MSG_PEEK)`: the bytes stay queued and will be received again.
const MSG_PEEK: u64 = 2;
/// The code segment of a task's registers saved on entry from user space (x86-64 `__USER_CS`);
/// an io_uring worker's registers are zeroed, and its transfers are not system calls.
const USER_CS: u64 = 0x33;

/// TCP states (`include/net/tcp_states.h`).
const TCP_ESTABLISHED: u64 = 1;
const TCP_SYN_SENT: u64 = 2;
const TCP_SYN_RECV: u64 = 3;
const TCP_FIN_WAIT1: u64 = 4;
const TCP_CLOSE: u64 = 7;
const TCP_LAST_ACK: u64 = 9;

/// A TCP socket of the host seen from its handshake: its side, and once a tracked process moved
/// its first bytes, that process and fd (`tgid` 0 until then).
#[derive(Clone, Copy)]
#[repr(C)]
struct TcpSocket {
    side: u32,
    tgid: u32,
    fd: u32,
    _pad: u32,
}

/// By `struct sock *`. Accepted sockets are met in softirq, with no process to filter by: the
/// LRU bounds what the host's other connections leave here.
#[map(name = "TCP_SOCKETS")]
static TCP_SOCKETS: LruHashMap<u64, TcpSocket> = LruHashMap::with_max_entries(16384, 0);

/// TCP sockets whose transfers are not reported (silenced by the daemon, or carrying TLS), by
/// `struct sock *` (value: the process), checked before anything else: such a transfer then
/// costs one array slot, not the saved registers and a hash lookup (a traced Redis server's
/// every GET, a Go HTTPS server's every TLS record). Emptied when the socket reaches TCP_CLOSE,
/// which every TCP socket does before it is freed, and when a new connection takes the address.
/// Not for Unix sockets, whose close is not seen.
#[map(name = "SILENCED_SOCKETS")]
static SILENCED_SOCKETS: Array<Slot> = Array::with_max_entries(SLOTS, 0);

/// The system call the current task is in, from its registers saved on entry.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct SavedCall {
    rdx: u64,
    rsi: u64,
    rdi: u64,
    orig_rax: u64,
}

#[inline(always)]
fn saved_call() -> Option<SavedCall> {
    // SAFETY: `bpf_task_pt_regs` gives the verifier a typed pointer to the task's `pt_regs`, so
    // its members are read with plain loads (which the kernel guards against faults), not a
    // helper call each.
    let call = unsafe {
        let regs = bpf_task_pt_regs(bpf_get_current_task_btf()) as *const pt_regs;
        if regs.is_null() {
            return None;
        }
        if core::ptr::read_volatile(&(*regs).cs) != USER_CS {
            return None;
        }
        SavedCall {
            rdx: core::ptr::read_volatile(&(*regs).rdx),
            rsi: core::ptr::read_volatile(&(*regs).rsi),
            rdi: core::ptr::read_volatile(&(*regs).rdi),
            orig_rax: core::ptr::read_volatile(&(*regs).orig_rax),
        }
    };
    Some(call)
}

#[raw_tracepoint(tracepoint = "sock_send_length")]
pub fn ddtrace_sock_sent(ctx: RawTracePointContext) -> u32 {
    on_transfer(&ctx, false);
    0
}

#[raw_tracepoint(tracepoint = "sock_recv_length")]
pub fn ddtrace_sock_received(ctx: RawTracePointContext) -> u32 {
    on_transfer(&ctx, true);
    0
}

/// `TP_PROTO(struct sock *sk, int ret, int flags)`: `ret` bytes moved through `sk`.
#[inline(always)]
fn on_transfer(ctx: &RawTracePointContext, received: bool) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !is_tracked(tgid) {
        return;
    }
    let moved = ctx.arg::<u64>(1) as i32;
    if moved <= 0 || (received && ctx.arg::<u64>(2) & MSG_PEEK != 0) {
        return;
    }
    let sk = ctx.arg::<u64>(0);
    // While a TLS call is in flight its socket is learnt below, silenced or not.
    if slot_tables::get(&SILENCED_SOCKETS, 0, sk) == Some(tgid as u64) && !tls::any_call_in_flight() {
        return;
    }
    let Some(call) = saved_call() else { return };
    if !is_transfer(call.orig_rax) {
        return;
    }
    let fd = call.rdi as u32;
    let key = SocketKey { tgid, fd };
    let entry = match SOCKETS.get_ptr_mut(&key) {
        // SAFETY: points into the map's value; read and written in place by this thread.
        Some(entry) if unsafe { same_socket(&*entry, sk) } => entry,
        // Adopted at attach (a TCP connection): the daemon knew the fd, not the socket.
        Some(entry) if unsafe { (*entry).sk } == 0 => {
            // SAFETY: as above.
            let side = unsafe {
                (*entry).sk = sk;
                ((*entry).state & 0xFFFF) as u32
            };
            let _ = TCP_SOCKETS.insert(&sk, &TcpSocket { side, tgid, fd, _pad: 0 }, 0);
            entry
        }
        stale => {
            if stale.is_some() {
                // The process closed that socket unseen (a Unix socket, a descriptor it
                // shared) and the number now names another.
                let _ = SOCKETS.remove(&key);
                sockets::emit_closed(pid_tgid, fd);
            }
            if !follow(pid_tgid, key, sk) {
                return;
            }
            match SOCKETS.get_ptr_mut(&key) {
                Some(entry) => entry,
                None => return,
            }
        }
    };
    // SAFETY: as above.
    let transfer = unsafe { sockets::wants_transfer(pid_tgid, fd, call.orig_rax, &mut (*entry).state) };
    let at = header(event_kind::SOCKET, 0, pid_tgid);
    match transfer {
        Transfer::Skip => {
            // SAFETY: as above.
            if unsafe { (*entry).state } & SOCKET_UNIX == 0 {
                slot_tables::put(&SILENCED_SOCKETS, 0, sk, tgid as u64);
            }
            return;
        }
        Transfer::ReportWithCaller => python::record_stack(tgid, at, Recorder::Event),
        Transfer::Report => {}
    }
    // Opaque to the compiler: otherwise it derives the copy's length from the 32-bit `moved`
    // in a register the verifier has no bound for, and the program is refused.
    let moved = core::hint::black_box(moved as u64);
    report_transfer(at, call.orig_rax, fd, moved, call.rsi, call.rdx);
}

/// The first bytes of socket `sk` on `key.fd`: a TCP connection whose handshake was seen, or a
/// Unix stream, becomes followed, announced by its connection event. Anything else (UDP, a
/// connection older than the agent that was not adopted) is not.
#[inline(always)]
fn follow(pid_tgid: u64, key: SocketKey, sk: u64) -> bool {
    let (side, unix, inode) = match TCP_SOCKETS.get_ptr_mut(&sk) {
        // SAFETY: points into the map's value.
        Some(tcp) => unsafe {
            (*tcp).tgid = key.tgid;
            (*tcp).fd = key.fd;
            ((*tcp).side, 0, 0)
        },
        None if socket_addresses::family(sk) == AF_UNIX => {
            let side = if socket_addresses::unix_accepted(sk) { socket_op::ACCEPTED } else { socket_op::CONNECTED };
            (side, SOCKET_UNIX, socket_addresses::inode_number(sk))
        }
        None => return false,
    };
    let at = emit_connection(pid_tgid, key.fd, side, AddressSource::Sock(sk));
    let entry = SocketEntry { state: socket_value(side, at) | unix, sk, inode };
    SOCKETS.insert(&key, &entry, 0).is_ok()
}

/// Whether followed socket `entry` is still the one at `sk`.
#[inline(always)]
fn same_socket(entry: &SocketEntry, sk: u64) -> bool {
    entry.sk == sk && (entry.state & SOCKET_UNIX == 0 || entry.inode == socket_addresses::inode_number(sk))
}

/// `TP_PROTO(const struct sock *sk, const int oldstate, const int newstate)`.
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn ddtrace_tcp_state(ctx: RawTracePointContext) -> u32 {
    let sk = ctx.arg::<u64>(0);
    let (old, new) = (ctx.arg::<u64>(1) & 0xFF, ctx.arg::<u64>(2) & 0xFF);
    match new {
        // A connect, in the connecting task.
        TCP_SYN_SENT => {
            if is_tracked((bpf_get_current_pid_tgid() >> 32) as u32) {
                remember(sk, socket_op::CONNECTED);
            }
        }
        // A passive open completing, in softirq: which process will accept it is not known yet.
        TCP_ESTABLISHED if old == TCP_SYN_RECV => remember(sk, socket_op::ACCEPTED),
        // Gone: reset, timed out, or finished (every TCP socket passes here before it is freed).
        TCP_CLOSE => end(sk, TCP_CLOSE),
        // The process closed its descriptor (not a `shutdown`, after which it may still read).
        TCP_FIN_WAIT1 | TCP_LAST_ACK => end(sk, new),
        _ => {}
    }
    0
}

#[inline(always)]
fn remember(sk: u64, side: u32) {
    slot_tables::remove(&SILENCED_SOCKETS, 0, sk);
    let _ = TCP_SOCKETS.insert(&sk, &TcpSocket { side, tgid: 0, fd: 0, _pad: 0 }, 0);
}

/// Ends the followed socket `sk`, if any: its process's entry goes, and the daemon is told.
#[inline(always)]
fn end(sk: u64, new_state: u64) {
    if new_state == TCP_CLOSE {
        slot_tables::remove(&SILENCED_SOCKETS, 0, sk);
    }
    // SAFETY: the value is copied out at once.
    let Some(tcp) = (unsafe { TCP_SOCKETS.get(&sk) }).copied() else { return };
    if new_state != TCP_CLOSE {
        // Only a close(2) of the owner ends it before TCP_CLOSE.
        let pid_tgid = bpf_get_current_pid_tgid();
        if tcp.tgid == 0 || (pid_tgid >> 32) as u32 != tcp.tgid {
            return;
        }
        match saved_call() {
            Some(call) if call.orig_rax == nr::CLOSE && call.rdi as u32 == tcp.fd => {}
            _ => return,
        }
    }
    let _ = TCP_SOCKETS.remove(&sk);
    if tcp.tgid == 0 {
        return;
    }
    let key = SocketKey { tgid: tcp.tgid, fd: tcp.fd };
    // SAFETY: the value is copied out at once.
    let owned = unsafe { SOCKETS.get(&key) }.is_some_and(|entry| entry.sk == sk);
    if owned && SOCKETS.remove(&key).is_ok() {
        // In softirq the current task is anyone's: the event names the owner.
        sockets::emit_closed((tcp.tgid as u64) << 32 | tcp.tgid as u64, tcp.fd);
    }
}

/// `TP_PROTO(struct task_struct *task, u64 clone_flags)`, in the parent: whether the task is a
/// thread, for the fork tracepoint that follows.
#[raw_tracepoint(tracepoint = "task_newtask")]
pub fn ddtrace_task_new(ctx: RawTracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if is_tracked((pid_tgid >> 32) as u32) {
        note_clone(pid_tgid, ctx.arg::<u64>(1));
    }
    0
}
