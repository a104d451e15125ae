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
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task_btf, bpf_task_pt_regs},
    macros::{map, raw_tracepoint},
    maps::{Array, LruHashMap},
    programs::RawTracePointContext,
};
use ddtrace_common::{event_kind, socket_op, SocketEntry, SocketKey};

use super::{
    header, is_tracked, note_clone,
    python::{self, Recorder},
    slot_tables::{self, Set, SETS},
    socket_addresses,
    sockets::{
        self, emit_connection, is_transfer, nr, report_transfer, socket_value, AddressSource, Transfer, SOCKETS,
        SOCKET_CLOSING, SOCKET_UNIX,
    },
    tls,
};

/// `recv(..., MSG_PEEK)`: the bytes stay queued and will be received again.
const MSG_PEEK: u64 = 2;
/// The code segment of a task's registers saved on entry from user space (x86-64 `__USER_CS`):
/// a kernel thread's are not. An io_uring worker's are a copy of its creator's, which is why a
/// transfer's call must also agree with its direction and its fd with its socket (below).
const USER_CS: u64 = 0x33;

/// TCP states (`include/net/tcp_states.h`).
const TCP_SYN_SENT: u64 = 2;
const TCP_SYN_RECV: u64 = 3;
const TCP_FIN_WAIT1: u64 = 4;
const TCP_CLOSE: u64 = 7;
const TCP_LAST_ACK: u64 = 9;
const TCP_LISTEN: u64 = 10;

/// The side of the host's TCP sockets, by `struct sock *`, from their handshake, until their
/// first transfer in a tracked process. Accepted ones are met in softirq, with no process to
/// filter by: the LRU bounds what the host's other connections leave here.
#[map(name = "TCP_SIDES")]
static TCP_SIDES: LruHashMap<u64, u32> = LruHashMap::with_max_entries(16384, 0);

/// The process and fd of each followed TCP socket, by `struct sock *`, for its end (seen in
/// softirq for a reset, or when a new handshake reuses the address); as many as `SOCKETS`.
#[map(name = "TCP_OWNERS")]
static TCP_OWNERS: LruHashMap<u64, SocketKey> = LruHashMap::with_max_entries(65536, 0);

/// TCP sockets whose transfers are not reported (silenced by the daemon, or carrying TLS), by
/// `struct sock *` (value: the process), checked before anything else: such a transfer then
/// costs one array set (two slots), not the saved registers and a hash lookup (a traced Redis
/// server's every GET, a Go HTTPS server's every TLS record). Emptied when the socket reaches
/// TCP_CLOSE, which every TCP socket does before it is freed, and when a new connection takes
/// the address. Not for Unix sockets, whose close is not seen.
#[map(name = "SILENCED_SOCKETS")]
static SILENCED_SOCKETS: Array<Set> = Array::with_max_entries(SETS, 0);

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
    let moved = ctx.arg::<u64>(1) as i32;
    // A failed call (a non-blocking read's EAGAIN: every other read of an event loop) moved
    // nothing: out before any map is touched, in every process.
    if moved < 0 {
        return;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !is_tracked(tgid) {
        return;
    }
    let sk = ctx.arg::<u64>(0);
    if moved == 0 {
        if received {
            at_end_of_stream(tgid, sk);
        }
        return;
    }
    if received && ctx.arg::<u64>(2) & MSG_PEEK != 0 {
        return;
    }
    // While a TLS call is in flight its socket is learnt below, silenced or not.
    if slot_tables::get(&SILENCED_SOCKETS, 0, sk) == Some(tgid as u64) && !tls::any_call_in_flight() {
        return;
    }
    let Some(call) = saved_call() else { return };
    // The registers must be this transfer's own call: io_uring may send or receive from task
    // work on the way out of any other system call of the thread.
    if !is_transfer(call.orig_rax) || receives(call.orig_rax) != received {
        return;
    }
    let fd = call.rdi as u32;
    let key = SocketKey { tgid, fd };
    let entry = match SOCKETS.get_ptr_mut(&key) {
        // SAFETY: points into the map's value; read and written in place by this thread.
        Some(entry) if unsafe { same_socket(&*entry, sk) } => entry,
        found => {
            // Whatever the table says of this fd, it must now name `sk` (see above).
            if socket_addresses::sock_of(fd) != Some(sk) {
                return;
            }
            match found {
                // Adopted at attach (a TCP connection): the daemon knew the fd, not the socket.
                // SAFETY: as above.
                Some(entry) if unsafe { (*entry).sk } == 0 && socket_addresses::is_inet(sk) => {
                    // SAFETY: as above.
                    unsafe { (*entry).sk = sk };
                    let _ = TCP_OWNERS.insert(&sk, &key, BPF_NOEXIST as u64);
                    entry
                }
                stale => {
                    if stale.is_some() {
                        // The process closed that socket unseen (a Unix socket, a descriptor it
                        // shared) and the number now names another.
                        let _ = SOCKETS.remove(&key);
                        sockets::emit_closed(pid_tgid, fd);
                    }
                    if !follow(pid_tgid, fd, sk) {
                        return;
                    }
                    match SOCKETS.get_ptr_mut(&key) {
                        Some(entry) => entry,
                        None => return,
                    }
                }
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

/// Whether system call `id` receives (else it sends).
#[inline(always)]
fn receives(id: u64) -> bool {
    matches!(id, nr::READ | nr::READV | nr::RECVFROM | nr::RECVMSG)
}

/// A read found the end of `sk`'s stream: if the connection had already reached TCP_CLOSE
/// (marked `SOCKET_CLOSING`), its last bytes are read and it ends now.
#[inline(always)]
fn at_end_of_stream(tgid: u32, sk: u64) {
    // SAFETY: the value is copied out at once.
    let Some(owner) = (unsafe { TCP_OWNERS.get(&sk) }).copied() else { return };
    if owner.tgid != tgid {
        return;
    }
    // SAFETY: as above.
    let closing = unsafe { SOCKETS.get(&owner) }.is_some_and(|e| e.sk == sk && e.state & SOCKET_CLOSING != 0);
    if closing {
        let _ = TCP_OWNERS.remove(&sk);
        end_owner(owner, sk);
    }
}

/// The first bytes of socket `sk` on `key.fd`: a TCP connection whose handshake was seen, or a
/// Unix stream, becomes followed, announced by its connection event. Anything else (UDP, a
/// connection older than the agent that was not adopted) is not.
///
/// Not inlined: its copy of the socket's first bytes gets a frame of its own, or the
/// transfer's frame and the caller-stack recorder's together pass the kernel's 512 bytes.
#[inline(never)]
fn follow(pid_tgid: u64, fd: u32, sk: u64) -> bool {
    let key = SocketKey { tgid: (pid_tgid >> 32) as u32, fd };
    // SAFETY: the value is copied out at once.
    let (side, unix, inode) = match unsafe { TCP_SIDES.get(&sk) }.copied() {
        Some(side) => {
            let _ = TCP_SIDES.remove(&sk);
            // A socket shared through fork keeps its first owner.
            let _ = TCP_OWNERS.insert(&sk, &key, BPF_NOEXIST as u64);
            (side, 0, 0)
        }
        // Not the standard streams: a systemd service's stdout and stderr are Unix streams to
        // journald.
        None if key.fd > 2 && socket_addresses::is_unix_stream(sk) => {
            let side = if socket_addresses::unix_accepted(sk) { socket_op::ACCEPTED } else { socket_op::CONNECTED };
            (side, SOCKET_UNIX, socket_addresses::inode_number(sk))
        }
        None => return false,
    };
    let at = emit_connection(pid_tgid, key.fd, side, AddressSource::Sock(sk));
    let entry = SocketEntry { state: socket_value(side, at) | unix, sk, inode };
    SOCKETS.insert(&key, &entry, 0).is_ok()
}

/// Whether followed socket `entry` is still the one at `sk`. A TCP socket's address is reused
/// only after it reached TCP_CLOSE and a new handshake took it, which ends the old entry.
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
        // A passive open: the new socket cloned from its listener, in softirq (which process
        // will accept it is not known yet). Not SYN_SENT -> SYN_RECV, a simultaneous open.
        TCP_SYN_RECV if old == TCP_LISTEN => remember(sk, socket_op::ACCEPTED),
        // Reset, timed out, or finished: every TCP socket passes here before it is freed.
        TCP_CLOSE => end(sk, true),
        // Maybe the owner's close(2) (not a `shutdown`, after which it may still read).
        TCP_FIN_WAIT1 | TCP_LAST_ACK => end(sk, false),
        _ => {}
    }
    0
}

/// A new TCP connection at `sk`. If a followed socket was at that address, it was freed
/// unseen (its fd closed by close_range, dup2 or exit, after it reached TCP_CLOSE): it ends.
#[inline(always)]
fn remember(sk: u64, side: u32) {
    slot_tables::remove(&SILENCED_SOCKETS, 0, sk);
    // SAFETY: the value is copied out at once.
    if let Some(owner) = (unsafe { TCP_OWNERS.get(&sk) }).copied() {
        let _ = TCP_OWNERS.remove(&sk);
        end_owner(owner, sk);
    }
    let _ = TCP_SIDES.insert(&sk, &side, 0);
}

/// TCP socket `sk` reached TCP_CLOSE (`closed`) or began closing. Its followed entry ends in
/// the owner's close(2), or at TCP_CLOSE once the process has no descriptor of it left; a
/// reset or a FIN while the process still holds it leaves queued bytes to read: the entry is
/// marked, and ends at the read that finds the end of the stream (or at a new handshake on
/// the address).
#[inline(always)]
fn end(sk: u64, closed: bool) {
    if closed {
        slot_tables::remove(&SILENCED_SOCKETS, 0, sk);
        let _ = TCP_SIDES.remove(&sk);
    }
    // SAFETY: the value is copied out at once.
    let Some(owner) = (unsafe { TCP_OWNERS.get(&sk) }).copied() else { return };
    let pid_tgid = bpf_get_current_pid_tgid();
    let in_owners_close = (pid_tgid >> 32) as u32 == owner.tgid
        && saved_call().is_some_and(|call| call.orig_rax == nr::CLOSE && call.rdi as u32 == owner.fd);
    if !in_owners_close {
        if !closed {
            return;
        }
        if socket_addresses::has_socket(sk) {
            if let Some(entry) = SOCKETS.get_ptr_mut(&owner) {
                // SAFETY: points into the map's value.
                unsafe {
                    if (*entry).sk == sk {
                        (*entry).state |= SOCKET_CLOSING;
                    }
                }
            }
            return;
        }
    }
    let _ = TCP_OWNERS.remove(&sk);
    end_owner(owner, sk);
}

/// Ends `owner`'s entry, if it still is socket `sk`, and tells the daemon.
#[inline(always)]
fn end_owner(owner: SocketKey, sk: u64) {
    // SAFETY: the value is copied out at once.
    let owned = unsafe { SOCKETS.get(&owner) }.is_some_and(|entry| entry.sk == sk);
    if owned && SOCKETS.remove(&owner).is_ok() {
        // In softirq the current task is anyone's: the event names the owner.
        sockets::emit_closed((owner.tgid as u64) << 32 | owner.tgid as u64, owner.fd);
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
