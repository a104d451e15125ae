//! TLS plaintext of Go programs, at `crypto/tls.(*Conn).Write` and `Read` (Go's TLS is its own,
//! not OpenSSL). Every probe is an entry-style uprobe (never a uretprobe in Go code): the
//! daemon puts the entry probe on the stack check's jump and the return probes on the jumps
//! into each return tail (`ddtrace-agent/src/symbols/go_probe_sites.rs`), and each site's spec
//! says when a hit counts (the jump's direction, decided from the saved flags) and where the
//! result is.
//!
//! Go's register ABI (1.17+): the receiver in RAX, the buffer's pointer and length in RBX and
//! RCX; the first result in RAX; the running goroutine (`runtime.g`) in R14. A read is keyed by
//! its goroutine from entry to return, as the goroutine may change threads while it waits.
//!
//! The socket is read from the `Conn` itself (`conn` → `*net.TCPConn` → `*netFD` →
//! `Sysfd`), and only when the interface's itab is `*net.TCPConn`'s or `*net.UnixConn`'s
//! (the daemon found both in the binary): any other `net.Conn` leaves the fd unknown.

use aya_ebpf::{
    bindings::pt_regs,
    macros::{map, uprobe},
    maps::LruHashMap,
    programs::ProbeContext,
};
use ddtrace_common::{
    event_kind, go_site, probe_flags, socket_flags, socket_op, GoKey, GoSiteSpec, TlsCall, FD_UNKNOWN,
};

use super::{go_sites::counted_hit, goroutines, header, sockets, user_memory};

/// Go TLS reads in flight, by process and goroutine.
#[map(name = "GO_TLS_READS")]
static GO_TLS_READS: LruHashMap<GoKey, TlsCall> = LruHashMap::with_max_entries(16384, 0);

#[uprobe]
pub fn ddtrace_go_tls_entry(ctx: ProbeContext) -> u32 {
    let Some((pid_tgid, spec, regs)) = counted_hit(&ctx) else { return 0 };
    let conn = regs.rax;
    let fd = socket_of(&spec.go, conn, regs.rip);
    if spec.flags & probe_flags::TLS_WRITE != 0 {
        // The plaintext is there at entry; a write that fails breaks the connection anyway.
        let at = header(event_kind::SOCKET, 0, pid_tgid);
        let goroutine = goroutines::moved_by(at.tgid, socket_op::SENT, regs.r14);
        sockets::emit_data_for(at, fd, socket_op::SENT, regs.rcx, regs.rbx, socket_flags::TLS, conn, goroutine);
        return 0;
    }
    let key = GoKey { address: regs.r14, tgid: (pid_tgid >> 32) as u32, _pad: 0 };
    let call = TlsCall { session: conn, buffer: regs.rbx, length_out: 0, flags: spec.flags, fd };
    let _ = GO_TLS_READS.insert(&key, &call, 0);
    0
}

#[uprobe]
pub fn ddtrace_go_tls_return(ctx: ProbeContext) -> u32 {
    let Some((pid_tgid, spec, regs)) = counted_hit(&ctx) else { return 0 };
    let key = GoKey { address: regs.r14, tgid: (pid_tgid >> 32) as u32, _pad: 0 };
    // SAFETY: the value is copied out before the entry is removed.
    let Some(call) = (unsafe { GO_TLS_READS.get(&key) }).copied() else { return 0 };
    let _ = GO_TLS_READS.remove(&key);
    let moved = result(&spec.go, regs) as i64;
    if moved <= 0 {
        return 0;
    }
    let at = header(event_kind::SOCKET, 0, pid_tgid);
    let (op, session) = (socket_op::RECEIVED, call.session);
    sockets::emit_data_for(at, call.fd, op, moved as u64, call.buffer, socket_flags::TLS, session, regs.r14);
    0
}

/// A `crypto/tls.(*Conn).Read` at the one `runtime.memmove` that copies its plaintext into the
/// caller's buffer (`call rel32`, emulated): `memmove(to=RAX, from=RBX, n=RCX)` in Go's register
/// ABI, the data at `from`; the `Conn` in the frame slot the spec names (the receiver's spill).
/// One hit per read that moved data, where the entry and return sites take several.
#[uprobe]
pub fn ddtrace_go_tls_copy(ctx: ProbeContext) -> u32 {
    let Some((pid_tgid, spec, regs)) = counted_hit(&ctx) else { return 0 };
    let moved = regs.rcx as i64;
    if moved <= 0 {
        return 0;
    }
    let conn = result(&spec.go, regs);
    let fd = socket_of(&spec.go, conn, regs.rip);
    let at = header(event_kind::SOCKET, 0, pid_tgid);
    sockets::emit_data_for(at, fd, socket_op::RECEIVED, moved as u64, regs.rbx, socket_flags::TLS, conn, regs.r14);
    0
}

/// The function's first result where the return site's spec says it is.
#[inline(always)]
fn result(spec: &GoSiteSpec, regs: &pt_regs) -> u64 {
    let payload = spec.result & !go_site::RESULT_KIND_MASK;
    match spec.result & go_site::RESULT_KIND_MASK {
        go_site::RESULT_IN_REGISTER => register(regs, payload),
        go_site::RESULT_ON_STACK => user_memory::read_u64(regs.rsp.wrapping_add(payload as u16 as i16 as i64 as u64)),
        _ => 0,
    }
}

/// x86 register `number` (rax 0, rcx 1, rdx 2, rbx 3, rsp 4, rbp 5, rsi 6, rdi 7, r8-r15).
#[inline(always)]
fn register(regs: &pt_regs, number: u32) -> u64 {
    match number {
        0 => regs.rax,
        1 => regs.rcx,
        2 => regs.rdx,
        3 => regs.rbx,
        4 => regs.rsp,
        5 => regs.rbp,
        6 => regs.rsi,
        7 => regs.rdi,
        8 => regs.r8,
        9 => regs.r9,
        10 => regs.r10,
        11 => regs.r11,
        12 => regs.r12,
        13 => regs.r13,
        14 => regs.r14,
        _ => regs.r15,
    }
}

/// The socket under a `crypto/tls.Conn`, when its `net.Conn` is a `*net.TCPConn` or a
/// `*net.UnixConn` of this binary; else `FD_UNKNOWN`. `site` is the probe's address.
#[inline(always)]
fn socket_of(spec: &GoSiteSpec, conn: u64, site: u64) -> u32 {
    let (itab, net_conn) = user_memory::read_pair(conn.wrapping_add(spec.tls_conn_conn as u64));
    let known = |delta: i64| delta != 0 && itab == site.wrapping_add(delta as u64);
    if itab == 0 || !(known(spec.conn_itabs[0]) || known(spec.conn_itabs[1])) {
        return FD_UNKNOWN;
    }
    let net_fd = user_memory::read_u64(net_conn.wrapping_add(spec.conn_fd as u64));
    if net_fd == 0 {
        return FD_UNKNOWN;
    }
    let fd = user_memory::read_u64(net_fd.wrapping_add(spec.netfd_sysfd as u64)) as i64;
    if (0..i32::MAX as i64).contains(&fd) {
        fd as u32
    } else {
        FD_UNKNOWN
    }
}
