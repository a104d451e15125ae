//! A socket's addresses read from the kernel's own `struct sock`, for accepted and connected
//! sockets: this end's address (no system call argument names it) and, when `accept` was given
//! no `sockaddr`, the peer's. Offsets come from the daemon ([`SocketLayout`], read from the
//! kernel's BTF): the walk is current task -> files -> fdtable -> file -> socket -> sock, every
//! step a checked `bpf_probe_read_kernel`, so a wrong offset yields no address, never a fault.

use aya_ebpf::helpers::{
    bpf_probe_read_kernel,
    generated::{bpf_get_current_task, bpf_probe_read_kernel as read_kernel_raw},
};
use ddtrace_common::{socket_flags, SocketEvent, SocketLayout, SOCK_COMMON_READ_BYTES};

pub const AF_UNIX: u16 = 1;
/// The only Unix sockets followed: a datagram socket (journald's, sd_notify's) carries no
/// protocol we parse.
const SOCK_STREAM: u16 = 1;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
/// Offsets into the copy of the socket's first bytes are masked with this: the verifier then
/// knows every index is inside the copy.
const MASK: usize = SOCK_COMMON_READ_BYTES - 1;

/// Set by the daemon at load time; all zero (unknown) when it could not read the kernel's BTF.
#[unsafe(no_mangle)]
static SOCKET_LAYOUT: SocketLayout = SocketLayout {
    known: 0,
    task_files: 0,
    files_fdt: 0,
    fdtable_max_fds: 0,
    fdtable_fd: 0,
    file_private_data: 0,
    socket_sk: 0,
    skc_family: 0,
    skc_num: 0,
    skc_rcv_saddr: 0,
    skc_v6_rcv_saddr: 0,
    skc_dport: 0,
    skc_daddr: 0,
    skc_v6_daddr: 0,
    unix_addr: 0,
    sock_socket: 0,
    socket_inode_number: 0,
    sk_type: 0,
};

/// One field of the layout. Volatile: the value is the daemon's, not the compiler's zero.
macro_rules! offset {
    ($field:ident) => {
        // SAFETY: reads a field of a static the loader may have rewritten.
        unsafe { core::ptr::read_volatile(&SOCKET_LAYOUT.$field) }
    };
}

#[inline(always)]
fn read<T>(address: u64) -> Option<T> {
    if address == 0 {
        return None;
    }
    // SAFETY: the helper copies kernel memory and fails instead of faulting.
    unsafe { bpf_probe_read_kernel(address as *const T) }.ok()
}

/// The `struct sock *` behind descriptor `fd` of the current process.
#[inline(always)]
pub fn sock_of(fd: u32) -> Option<u64> {
    // SAFETY: plain helper call; the task pointer is only used as an address to read from.
    let task = unsafe { bpf_get_current_task() };
    let files: u64 = read(task + offset!(task_files) as u64)?;
    let fdt: u64 = read(files + offset!(files_fdt) as u64)?;
    let max_fds: u32 = read(fdt + offset!(fdtable_max_fds) as u64)?;
    if fd >= max_fds {
        return None;
    }
    let fd_array: u64 = read(fdt + offset!(fdtable_fd) as u64)?;
    let file: u64 = read(fd_array + fd as u64 * 8)?;
    let socket: u64 = read(file + offset!(file_private_data) as u64)?;
    read(socket + offset!(socket_sk) as u64)
}

/// Fills this end's address (and the peer's, if the system call did not give it) of the socket
/// `fd` of the current process into `event`.
#[inline(always)]
pub fn read_from_kernel(event: &mut SocketEvent, fd: u32) {
    if offset!(known) == 0 {
        return;
    }
    let Some(sock) = sock_of(fd) else { return };
    read_from_sock(event, sock);
}

/// [`read_from_kernel`] for the kernel's socket `sock`, known already.
#[inline(always)]
pub fn read_from_sock(event: &mut SocketEvent, sock: u64) {
    if offset!(known) == 0 {
        return;
    }
    // One copy of the socket's first bytes, where `sock_common` keeps them all, rather than a
    // helper call per field.
    let mut common = [0u8; SOCK_COMMON_READ_BYTES];
    // SAFETY: copies kernel memory into a local of exactly that size; fails instead of faulting.
    let result = unsafe {
        read_kernel_raw(
            common.as_mut_ptr() as *mut core::ffi::c_void,
            SOCK_COMMON_READ_BYTES as u32,
            sock as *const core::ffi::c_void,
        )
    };
    if result != 0 {
        return;
    }
    let u16_at = |offset: u32| {
        let at = offset as usize;
        u16::from_ne_bytes([common[at & MASK], common[(at + 1) & MASK]])
    };
    let family = u16_at(offset!(skc_family));
    let (local, peer, length) = match family {
        AF_INET => (offset!(skc_rcv_saddr), offset!(skc_daddr), 4),
        AF_INET6 if offset!(skc_v6_rcv_saddr) != SocketLayout::ABSENT => {
            (offset!(skc_v6_rcv_saddr), offset!(skc_v6_daddr), 16)
        }
        _ => return,
    };
    event.local_family = family;
    event.local_port = u16_at(offset!(skc_num));
    copy_address(&common, local, length, &mut event.local_address);
    event.flags |= socket_flags::LOCAL_ADDRESS;
    if event.address_family == 0 {
        // `accept(fd, NULL, NULL)`: the kernel's socket knows the peer all the same.
        event.address_family = family;
        event.port = u16::from_be(u16_at(offset!(skc_dport)));
        copy_address(&common, peer, length, &mut event.address);
    }
}

#[inline(always)]
fn copy_address(common: &[u8; SOCK_COMMON_READ_BYTES], offset: u32, length: usize, out: &mut [u8; 16]) {
    let at = offset as usize;
    for i in 0..16 {
        out[i] = if i < length { common[(at + i) & MASK] } else { 0 };
    }
}

/// The address family of the kernel's socket `sock` (0 if unknown).
#[inline(always)]
pub fn family(sock: u64) -> u16 {
    if offset!(known) == 0 {
        return 0;
    }
    read::<u16>(sock + offset!(skc_family) as u64).unwrap_or(0)
}

/// Whether `sock` is an IPv4 or IPv6 socket.
#[inline(always)]
pub fn is_inet(sock: u64) -> bool {
    matches!(family(sock), AF_INET | AF_INET6)
}

/// Whether `sock` is a Unix stream socket (not a datagram one).
#[inline(always)]
pub fn is_unix_stream(sock: u64) -> bool {
    let at = offset!(sk_type);
    family(sock) == AF_UNIX
        && at != SocketLayout::ABSENT
        && read::<u16>(sock + at as u64).is_some_and(|kind| kind == SOCK_STREAM)
}

/// Whether `sock` still has its `struct socket`, that is, a file some process holds (a TCP
/// socket loses it when its last descriptor is closed).
#[inline(always)]
pub fn has_socket(sock: u64) -> bool {
    let at = offset!(sock_socket);
    if offset!(known) == 0 || at == SocketLayout::ABSENT {
        return false;
    }
    read::<u64>(sock + at as u64).is_some_and(|socket| socket != 0)
}

/// Whether Unix socket `sock` was accepted from a listener: it then shares the listener's
/// bound address, which a plain client's socket lacks.
#[inline(always)]
pub fn unix_accepted(sock: u64) -> bool {
    let at = offset!(unix_addr);
    if offset!(known) == 0 || at == SocketLayout::ABSENT {
        return false;
    }
    read::<u64>(sock + at as u64).unwrap_or(0) != 0
}

/// The inode number of socket `sock` (0 if unknown): unlike the `struct sock`'s address, never
/// the same for two sockets alive at once or one after the other.
#[inline(always)]
pub fn inode_number(sock: u64) -> u64 {
    let (to_socket, to_number) = (offset!(sock_socket), offset!(socket_inode_number));
    if offset!(known) == 0 || to_socket == SocketLayout::ABSENT || to_number == SocketLayout::ABSENT {
        return 0;
    }
    let Some(socket) = read::<u64>(sock + to_socket as u64) else { return 0 };
    read::<u64>(socket + to_number as u64).unwrap_or(0)
}
