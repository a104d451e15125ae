//! Socket traffic of tracked processes: the table of followed sockets (per process and fd), the
//! events that report their connections and their first bytes, and, for kernels without the
//! socket layer's tracepoints (before 6.3; see `socket_layer`), the programs that follow them
//! from the system call tracepoints: accepted and connected sockets are remembered at the
//! call's exit, and the reads and writes on them are reported. Tracepoints rather than libc
//! uprobes: Go and static binaries make these system calls without libc, and an untracked
//! process pays a bitmap lookup, not a uprobe trap.

use core::mem::offset_of;

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user, generated::bpf_probe_read_user as read_user_raw},
    macros::{map, tracepoint},
    maps::{LruHashMap, PerCpuArray},
    programs::TracePointContext,
    EbpfContext,
};
use ddtrace_common::{
    counter, event_kind, socket_op, EventHeader, PendingSyscall, SocketEntry, SocketEvent, SocketKey,
    MAX_SOCKET_CAPTURE, SOCKET_EVENT_HEADER_BYTES,
};

use super::user_memory::read_u64;
use super::{
    count, header, is_tracked,
    python::{self, Recorder},
    socket_addresses, EVENTS,
};

/// x86-64 system call numbers.
pub(crate) mod nr {
    pub const READ: u64 = 0;
    pub const WRITE: u64 = 1;
    pub const CLOSE: u64 = 3;
    pub const READV: u64 = 19;
    pub const WRITEV: u64 = 20;
    pub const SENDFILE: u64 = 40;
    pub const CONNECT: u64 = 42;
    pub const ACCEPT: u64 = 43;
    pub const SENDTO: u64 = 44;
    pub const RECVFROM: u64 = 45;
    pub const SENDMSG: u64 = 46;
    pub const RECVMSG: u64 = 47;
    pub const ACCEPT4: u64 = 288;
    pub const CLONE: u64 = 56;
    pub const CLONE3: u64 = 435;
}

const EINPROGRESS: i64 = 115;

/// Bit of a `SOCKETS` value: a TLS library call read or wrote this socket, so the reads and
/// writes on it are ciphertext and are not reported.
const SOCKET_CARRIES_TLS: u64 = 1 << 16;
/// Bit of a `SOCKETS` value, set by the daemon: no protocol it knows is spoken on this socket,
/// so its reads and writes are not reported (a traced Redis server pays a lookup per call, not a
/// copy and an event).
const SOCKET_IGNORED: u64 = ddtrace_common::SOCKET_IGNORED;
/// Bit of a `SOCKETS` value: a Unix socket, whose entry's inode number tells it from a later
/// socket at the same `struct sock` (its close is not seen).
pub(crate) const SOCKET_UNIX: u64 = 1 << 18;
/// Bit of a `SOCKETS` value: the TCP connection reached TCP_CLOSE (a reset, or the peer's FIN
/// after our shutdown) while the process still holds it; it ends at its end of stream.
pub(crate) const SOCKET_CLOSING: u64 = 1 << 19;

/// Sockets of tracked processes: accepted or connected since the daemon attached, with their
/// `socket_op` (ACCEPTED or CONNECTED), [`SOCKET_CARRIES_TLS`] and [`SOCKET_IGNORED`] in the low
/// half and, in the high half, the low 32 bits of the connection event's time: which socket
/// this is, for the daemon's requests about an fd number the process may have reused since.
/// LRU, so a close the program missed (a process killed mid-call) never fills it.
#[map(name = "SOCKETS")]
pub(crate) static SOCKETS: LruHashMap<SocketKey, SocketEntry> = LruHashMap::with_max_entries(65536, 0);

/// System calls in flight, by thread, from entry to exit.
#[map(name = "PENDING_SYSCALLS")]
static PENDING_SYSCALLS: LruHashMap<u64, PendingSyscall> = LruHashMap::with_max_entries(16384, 0);

#[map(name = "SOCKET_SCRATCH")]
static SOCKET_SCRATCH: PerCpuArray<SocketEvent> = PerCpuArray::with_max_entries(1, 0);

/// The programs run on `syscalls:sys_{enter,exit}_<name>` (only the calls below fire them) or,
/// where the kernel lacks those, on `raw_syscalls:sys_{enter,exit}` (every call). Both records
/// have the call's number at 8 (`int __syscall_nr`, or `long id` whose low half is there on
/// x86-64), the arguments from 16 (sys_enter) or `long ret` at 16 (sys_exit); stable since the
/// tracepoints exist.
const ID_OFFSET: usize = 8;
const ARGS_OFFSET: usize = 16;
const RET_OFFSET: usize = 16;

/// A field of the tracepoint record, loaded straight from the context (the verifier allows
/// aligned reads of a tracepoint's record at constant offsets): a helper call per field cost
/// the traced process ~1% of a Redis server's CPU.
#[inline(always)]
fn record_field<T: Copy>(ctx: &TracePointContext, offset: usize) -> T {
    // SAFETY: `offset` is a constant inside the record, aligned for T (see the offsets above).
    unsafe { *(ctx.as_ptr() as *const u8).add(offset).cast::<T>() }
}

#[inline(always)]
fn arg(ctx: &TracePointContext, n: usize) -> u64 {
    record_field::<u64>(ctx, ARGS_OFFSET + n * 8)
}

/// Entry of the calls that carry a socket's bytes or make a connection (three arguments or
/// more: the direct loads below stay inside each of their records).
#[tracepoint]
pub fn ddtrace_syscall_enter(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !is_tracked(tgid) {
        return 0;
    }
    let id = record_field::<u32>(&ctx, ID_OFFSET) as u64;
    let mut record_caller = 0;
    let wanted = match id {
        nr::ACCEPT | nr::ACCEPT4 | nr::CONNECT => true,
        id if is_transfer(id) => {
            let fd = arg(&ctx, 0) as u32;
            match SOCKETS.get_ptr_mut(&SocketKey { tgid, fd }) {
                None => false,
                // SAFETY: points into this socket's map value; a race with another thread of
                // the process on the same fd can at worst cost one event.
                Some(entry) => match unsafe { wants_transfer(pid_tgid, fd, id, &mut (*entry).state) } {
                    Transfer::Skip => false,
                    Transfer::Report => true,
                    Transfer::ReportWithCaller => {
                        record_caller = 1;
                        true
                    }
                },
            }
        }
        _ => false,
    };
    if wanted {
        let pending =
            PendingSyscall { id, fd: arg(&ctx, 0), pointer: arg(&ctx, 1), count: arg(&ctx, 2), record_caller };
        let _ = PENDING_SYSCALLS.insert(&pid_tgid, &pending, 0);
    }
    0
}

/// System calls that move a socket's bytes.
#[inline(always)]
pub(crate) fn is_transfer(id: u64) -> bool {
    matches!(
        id,
        nr::READ
            | nr::WRITE
            | nr::READV
            | nr::WRITEV
            | nr::SENDTO
            | nr::RECVFROM
            | nr::SENDMSG
            | nr::RECVMSG
            | nr::SENDFILE
    )
}

pub(crate) enum Transfer {
    Skip,
    Report,
    /// Report, with the caller's stack first (see [`is_outbound_write`]).
    ReportWithCaller,
}

/// Whether call `id` on followed socket `fd` (whose `SOCKETS` state is `state`) is reported.
#[inline(always)]
pub(crate) fn wants_transfer(pid_tgid: u64, fd: u32, id: u64, state: &mut u64) -> Transfer {
    // Even on a silenced socket (a TLS handshake's records are recognised by no protocol): a
    // TLS call in progress learns its socket here.
    if super::tls::any_call_in_flight() && super::tls::note_socket_io(pid_tgid, fd) {
        *state |= SOCKET_CARRIES_TLS;
    }
    // Its ciphertext is of no use: the plaintext comes from the TLS probes.
    if *state & (SOCKET_CARRIES_TLS | SOCKET_IGNORED) != 0 {
        Transfer::Skip
    } else if is_outbound_write(id, *state) {
        Transfer::ReportWithCaller
    } else {
        Transfer::Report
    }
}

/// A write on a socket this process connected: a request going out, whose caller is worth
/// knowing (which library made the call, from which code). Only where an interpreter's frames
/// can be walked is anything recorded.
#[inline(always)]
fn is_outbound_write(id: u64, state: u64) -> bool {
    matches!(id, nr::WRITE | nr::WRITEV | nr::SENDTO | nr::SENDMSG)
        && state & 0xFFFF == socket_op::CONNECTED as u64
        && python::records_callers(((bpf_get_current_pid_tgid()) >> 32) as u32)
}

/// Whether `fd` of `tgid` is a socket the process connected (not one it accepted).
#[inline(always)]
pub(crate) fn is_connected_socket(tgid: u32, fd: u32) -> bool {
    // SAFETY: a map lookup; the value is copied out at once.
    let state = unsafe { SOCKETS.get(&SocketKey { tgid, fd }) }.map_or(0, |entry| entry.state);
    state & 0xFFFF == socket_op::CONNECTED as u64
}

/// The first argument, read through the helper: this program also runs on calls whose record
/// ends before the third argument (close has one), where the kernel refuses a program whose
/// direct loads reach past the record.
#[inline(always)]
fn helper_arg0(ctx: &TracePointContext) -> u64 {
    // SAFETY: bounded read of the tracepoint record through the helper.
    unsafe { ctx.read_at::<u64>(ARGS_OFFSET) }.unwrap_or(0)
}

/// Close and clone, at entry only: rare next to reads and writes, so a helper per field is fine.
#[tracepoint]
pub fn ddtrace_syscall_enter_close_clone(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !is_tracked(tgid) {
        return 0;
    }
    // SAFETY: bounded read of the tracepoint record.
    let id = unsafe { ctx.read_at::<u32>(ID_OFFSET) }.unwrap_or(u32::MAX) as u64;
    match id {
        // Reported on entry, not exit: the kernel frees the fd inside the call, and another
        // thread can get the same number from accept or socket+connect and report that before
        // this call's exit runs (seen with Go's many threads): a close reported at exit would
        // end the new connection. Close releases the fd even when it fails (EINTR, EIO), and
        // EBADF means the fd was not ours.
        nr::CLOSE => {
            let fd = helper_arg0(&ctx) as u32;
            if SOCKETS.remove(&SocketKey { tgid, fd }).is_ok() {
                let _ = emit_connection(pid_tgid, fd, socket_op::CLOSED, AddressSource::None);
            }
        }
        // Whether the task this call makes is a thread, for the fork tracepoint.
        nr::CLONE => {
            super::note_clone(pid_tgid, helper_arg0(&ctx));
        }
        nr::CLONE3 => {
            // clone3(struct clone_args *args, size_t size): `flags` is the struct's first field.
            // SAFETY: bounded 8-byte read of user memory through the helper.
            let flags = unsafe { bpf_probe_read_user(helper_arg0(&ctx) as *const u64) }.unwrap_or(0);
            super::note_clone(pid_tgid, flags);
        }
        _ => {}
    }
    0
}

#[tracepoint]
pub fn ddtrace_syscall_exit(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !is_tracked(tgid) {
        return 0;
    }
    // Most system calls of a traced process are none of ours (a server's epoll_wait, a client's
    // nanosleep): told from the record alone, before any map lookup.
    let id = record_field::<u32>(&ctx, ID_OFFSET) as u64;
    if !matches!(id, nr::ACCEPT | nr::ACCEPT4 | nr::CONNECT) && !is_transfer(id) {
        return 0;
    }
    // SAFETY: the value is copied out before the entry is removed.
    let Some(pending) = (unsafe { PENDING_SYSCALLS.get(&pid_tgid) }).copied() else { return 0 };
    let _ = PENDING_SYSCALLS.remove(&pid_tgid);
    // An entry left by a call whose exit was missed belongs to no other call.
    if pending.id != id {
        return 0;
    }
    let ret = record_field::<i64>(&ctx, RET_OFFSET);
    let at = header(event_kind::SOCKET, 0, pid_tgid);
    if pending.record_caller != 0 && ret > 0 {
        python::record_stack(tgid, at, Recorder::Event);
    }
    match pending.id {
        nr::ACCEPT | nr::ACCEPT4 if ret >= 0 => {
            let fd = ret as u32;
            let at = emit_connection(pid_tgid, fd, socket_op::ACCEPTED, AddressSource::SockAddr(pending.pointer));
            let entry = SocketEntry { state: socket_value(socket_op::ACCEPTED, at), sk: 0, inode: 0 };
            let _ = SOCKETS.insert(&SocketKey { tgid, fd }, &entry, 0);
        }
        nr::CONNECT if ret == 0 || ret == -EINPROGRESS => {
            let fd = pending.fd as u32;
            let at = emit_connection(pid_tgid, fd, socket_op::CONNECTED, AddressSource::SockAddr(pending.pointer));
            let entry = SocketEntry { state: socket_value(socket_op::CONNECTED, at), sk: 0, inode: 0 };
            let _ = SOCKETS.insert(&SocketKey { tgid, fd }, &entry, 0);
        }
        id if ret > 0 => report_transfer(at, id, pending.fd as u32, ret as u64, pending.pointer, pending.count),
        _ => {}
    }
    0
}

/// `moved` bytes (more than 0) went through `fd` in call `id`, whose second and third
/// arguments were `pointer` and `count`: reported with the first of them.
#[inline(always)]
pub(crate) fn report_transfer(at: EventHeader, id: u64, fd: u32, moved: u64, pointer: u64, count: u64) {
    match id {
        nr::READ | nr::RECVFROM => emit_data(at, fd, socket_op::RECEIVED, moved, pointer, 0, 0),
        nr::WRITE | nr::SENDTO => emit_data(at, fd, socket_op::SENT, moved, pointer, 0, 0),
        // A file sent to the socket by the kernel (Go's http.ServeFile, nginx's `sendfile on`):
        // no bytes in the process to copy, but its length keeps the body count right.
        nr::SENDFILE => emit_data(at, fd, socket_op::SENT, moved, 0, 0, 0),
        nr::READV | nr::WRITEV | nr::RECVMSG | nr::SENDMSG => {
            let op = if id == nr::READV || id == nr::RECVMSG { socket_op::RECEIVED } else { socket_op::SENT };
            // msghdr: msg_iov at 16, msg_iovlen at 24; readv/writev pass the iovec array itself.
            let (iov, buffers) = if id == nr::RECVMSG || id == nr::SENDMSG {
                (read_u64(pointer + 16), read_u64(pointer + 24))
            } else {
                (pointer, count)
            };
            emit_vector(at, fd, op, moved, iov, buffers);
        }
        _ => {}
    }
}

pub(crate) enum AddressSource {
    None,
    /// A `struct sockaddr *` in the target's memory.
    SockAddr(u64),
    /// The kernel's `struct sock *`, which knows both ends.
    Sock(u64),
}

/// The event's fixed part, with no address and no data yet.
#[inline(always)]
fn start_event(at: EventHeader, fd: u32, op: u32) -> Option<&'static mut SocketEvent> {
    let event = SOCKET_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: the per-CPU scratch value; these programs do not migrate CPU while running.
    let event = unsafe { &mut *event };
    event.header = at;
    event.fd = fd;
    event.op = op;
    event.length = 0;
    event.captured_len = 0;
    event.address_family = 0;
    event.port = 0;
    event.local_family = 0;
    event.local_port = 0;
    event.flags = 0;
    event.session = 0;
    event.goroutine = 0;
    Some(event)
}

/// A `SOCKETS` value: the side, and which socket (the connection event's time).
#[inline(always)]
pub(crate) fn socket_value(op: u32, event_ktime_ns: u64) -> u64 {
    (event_ktime_ns & 0xFFFF_FFFF) << 32 | op as u64
}

/// Accepted, connected or closed. Returns the event's time (0 if it could not be made).
#[inline(always)]
pub(crate) fn emit_connection(pid_tgid: u64, fd: u32, op: u32, address: AddressSource) -> u64 {
    let Some(event) = start_event(header(event_kind::SOCKET, 0, pid_tgid), fd, op) else { return 0 };
    match address {
        AddressSource::SockAddr(pointer) => {
            read_peer(event, pointer);
            // After `read_peer`: the kernel's socket gives the peer only when the call did not.
            // A connect in progress (EINPROGRESS) already has its local port: bound before the SYN.
            socket_addresses::read_from_kernel(event, fd);
        }
        AddressSource::Sock(sock) => socket_addresses::read_from_sock(event, sock),
        AddressSource::None => {}
    }
    let at = event.header.ktime_ns;
    submit(event);
    at
}

/// The end of socket `fd` of `owner` (a pid_tgid), in an event built on the stack rather than in
/// the per-CPU scratch: this may run in softirq, over a program of this CPU that is filling it.
#[inline(always)]
pub(crate) fn emit_closed(owner: u64, fd: u32) {
    let mut head = [0u8; SOCKET_EVENT_HEADER_BYTES];
    let at = header(event_kind::SOCKET, 0, owner);
    // SAFETY: each write lands inside `head` (the offsets are those of fields of the event's
    // first SOCKET_EVENT_HEADER_BYTES); unaligned writes, as a byte array has no alignment.
    unsafe {
        let base = head.as_mut_ptr();
        core::ptr::write_unaligned(base.add(offset_of!(SocketEvent, header)).cast::<EventHeader>(), at);
        core::ptr::write_unaligned(base.add(offset_of!(SocketEvent, fd)).cast::<u32>(), fd);
        core::ptr::write_unaligned(base.add(offset_of!(SocketEvent, op)).cast::<u32>(), socket_op::CLOSED);
    }
    if EVENTS.output::<[u8; SOCKET_EVENT_HEADER_BYTES]>(&head, super::unhurried_submit_flags()).is_err() {
        count(counter::DROPPED_RING_FULL);
    }
}

/// `length` bytes moved on `fd` (or, with `socket_flags::TLS`, through TLS session `session`);
/// the first of them are copied from `data`, in the target's memory.
#[inline(always)]
pub(crate) fn emit_data(at: EventHeader, fd: u32, op: u32, length: u64, data: u64, flags: u32, session: u64) {
    let goroutine = super::goroutines::moved_for(at.tgid, op);
    emit_data_for(at, fd, op, length, data, flags, session, goroutine);
}

/// [`emit_data`] for bytes moved for `goroutine` (0: none), known by the caller.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn emit_data_for(
    at: EventHeader,
    fd: u32,
    op: u32,
    length: u64,
    data: u64,
    flags: u32,
    session: u64,
    goroutine: u64,
) {
    let Some(event) = start_event(at, fd, op) else { return };
    event.length = length;
    event.flags = flags;
    event.session = session;
    event.goroutine = goroutine;
    if data != 0 && length > 0 {
        let wanted = if length > MAX_SOCKET_CAPTURE as u64 {
            count(counter::SOCKET_CAPTURE_TRUNCATED);
            MAX_SOCKET_CAPTURE as u32
        } else {
            length as u32
        };
        // The mask keeps the verifier's bound proof simple: `wanted` <= MAX_SOCKET_CAPTURE.
        let wanted = wanted & MAX_SOCKET_CAPTURE as u32;
        // SAFETY: reads at most `data.len()` bytes of the target's memory into our scratch.
        let result = unsafe {
            read_user_raw(event.data.as_mut_ptr() as *mut core::ffi::c_void, wanted, data as *const core::ffi::c_void)
        };
        if result == 0 {
            event.captured_len = wanted;
        }
    }
    submit(event);
}

/// Buffers of a vectored read or write copied, in order: Node's and nginx's writes gather a
/// message's pieces (PostgreSQL's Parse, Bind, Execute and Sync; a response's head and body)
/// from several buffers.
const MAX_VECTOR_PIECES: u64 = 8;

/// `length` bytes moved on `fd` through the `buffers` iovecs at `iov`: the first of them copied,
/// buffer after buffer, up to `MAX_SOCKET_CAPTURE`.
#[inline(always)]
fn emit_vector(at: EventHeader, fd: u32, op: u32, length: u64, iov: u64, buffers: u64) {
    let Some(event) = start_event(at, fd, op) else { return };
    event.length = length;
    event.goroutine = super::goroutines::moved_for(at.tgid, op);
    let mut left = if length > MAX_SOCKET_CAPTURE as u64 { MAX_SOCKET_CAPTURE as u64 } else { length };
    let mut copied: u32 = 0;
    for index in 0..MAX_VECTOR_PIECES {
        if left == 0 || index >= buffers || iov == 0 {
            break;
        }
        let entry = iov + index * 16;
        let (base, size) = (read_u64(entry), read_u64(entry + 8));
        let piece = if size < left { size } else { left };
        if base == 0 || piece == 0 {
            continue;
        }
        // Both masks are no-ops (copied + piece <= MAX_SOCKET_CAPTURE); they are the verifier's
        // proof that the piece lands inside `data`.
        let offset = (copied & MAX_SOCKET_CAPTURE as u32) as usize;
        let piece = piece as u32 & MAX_SOCKET_CAPTURE as u32;
        // SAFETY: reads at most `piece` bytes of the target's memory into our scratch, at an
        // offset and of a length each below MAX_SOCKET_CAPTURE + 1, inside `data`'s room.
        let result = unsafe {
            read_user_raw(
                event.data.as_mut_ptr().add(offset) as *mut core::ffi::c_void,
                piece,
                base as *const core::ffi::c_void,
            )
        };
        if result != 0 {
            break;
        }
        copied += piece;
        left -= piece as u64;
    }
    if length > MAX_SOCKET_CAPTURE as u64 {
        count(counter::SOCKET_CAPTURE_TRUNCATED);
    }
    event.captured_len = copied;
    submit(event);
}

#[inline(always)]
fn submit(event: &SocketEvent) {
    let total = SOCKET_EVENT_HEADER_BYTES + (event.captured_len & MAX_SOCKET_CAPTURE as u32) as usize;
    // SAFETY: `total` never exceeds the scratch value's size.
    let bytes = unsafe { core::slice::from_raw_parts(event as *const SocketEvent as *const u8, total) };
    if EVENTS.output::<[u8]>(bytes, super::unhurried_submit_flags()).is_err() {
        count(counter::DROPPED_RING_FULL);
    }
}

/// Copies the peer address out of a `struct sockaddr_in` / `sockaddr_in6`.
#[inline(always)]
fn read_peer(event: &mut SocketEvent, pointer: u64) {
    if pointer == 0 {
        return;
    }
    let mut raw = [0u8; 24];
    // SAFETY: reads 24 bytes of the target's memory into a local; fails instead of faulting.
    let result =
        unsafe { read_user_raw(raw.as_mut_ptr() as *mut core::ffi::c_void, 24, pointer as *const core::ffi::c_void) };
    if result != 0 {
        return;
    }
    let family = u16::from_le_bytes([raw[0], raw[1]]);
    event.port = u16::from_be_bytes([raw[2], raw[3]]);
    match family {
        2 => {
            event.address_family = 2;
            event.address[..4].copy_from_slice(&raw[4..8]);
        }
        10 => {
            event.address_family = 10;
            event.address.copy_from_slice(&raw[8..24]);
        }
        _ => event.port = 0,
    }
}
