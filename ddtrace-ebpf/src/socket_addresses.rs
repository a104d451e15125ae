//! A socket's addresses read from the kernel's own `struct sock`, for accepted and connected
//! sockets: this end's address (no system call argument names it) and, when `accept` was given
//! no `sockaddr`, the peer's. Offsets come from the daemon ([`SocketLayout`], read from the
//! kernel's BTF): the walk is current task -> files -> fdtable -> file -> socket -> sock, every
//! step a checked `bpf_probe_read_kernel`, so a wrong offset yields no address, never a fault.

use aya_ebpf::helpers::{bpf_probe_read_kernel, generated::bpf_get_current_task};
use ddtrace_common::{socket_flags, SocketEvent, SocketLayout};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

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
};

/// One field of the layout. Volatile: the value is the daemon's, not the compiler's zero.
macro_rules! offset {
    ($field:ident) => {
        // SAFETY: reads a field of a static the loader may have rewritten.
        unsafe { core::ptr::read_volatile(&SOCKET_LAYOUT.$field) } as u64
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
fn sock_of(fd: u32) -> Option<u64> {
    // SAFETY: plain helper call; the task pointer is only used as an address to read from.
    let task = unsafe { bpf_get_current_task() };
    let files: u64 = read(task + offset!(task_files))?;
    let fdt: u64 = read(files + offset!(files_fdt))?;
    let max_fds: u32 = read(fdt + offset!(fdtable_max_fds))?;
    if fd >= max_fds {
        return None;
    }
    let fd_array: u64 = read(fdt + offset!(fdtable_fd))?;
    let file: u64 = read(fd_array + fd as u64 * 8)?;
    let socket: u64 = read(file + offset!(file_private_data))?;
    read(socket + offset!(socket_sk))
}

/// Fills this end's address (and the peer's, if the system call did not give it) of the socket
/// `fd` of the current process into `event`.
#[inline(always)]
pub fn read_from_kernel(event: &mut SocketEvent, fd: u32) {
    // SAFETY: as in `offset!`.
    if unsafe { core::ptr::read_volatile(&SOCKET_LAYOUT.known) } == 0 {
        return;
    }
    let Some(sock) = sock_of(fd) else { return };
    let Some(family) = read::<u16>(sock + offset!(skc_family)) else { return };
    let Some(port) = read::<u16>(sock + offset!(skc_num)) else { return };
    let (local, peer) = match family {
        AF_INET => (offset!(skc_rcv_saddr), offset!(skc_daddr)),
        AF_INET6 => (offset!(skc_v6_rcv_saddr), offset!(skc_v6_daddr)),
        _ => return,
    };
    let length = if family == AF_INET { 4 } else { 16 };
    let mut address = [0u8; 16];
    if !read_address(sock + local, &mut address, length) {
        return;
    }
    event.local_family = family;
    event.local_port = port;
    event.local_address = address;
    event.flags |= socket_flags::LOCAL_ADDRESS;
    if event.address_family == 0 {
        // `accept(fd, NULL, NULL)`: the kernel's socket knows the peer all the same.
        let Some(port) = read::<u16>(sock + offset!(skc_dport)) else { return };
        let mut address = [0u8; 16];
        if read_address(sock + peer, &mut address, length) {
            event.address_family = family;
            event.port = u16::from_be(port);
            event.address = address;
        }
    }
}

#[inline(always)]
fn read_address(address: u64, out: &mut [u8; 16], length: usize) -> bool {
    if length == 4 {
        match read::<[u8; 4]>(address) {
            Some(v4) => {
                out[..4].copy_from_slice(&v4);
                true
            }
            None => false,
        }
    } else {
        match read::<[u8; 16]>(address) {
            Some(v6) => {
                *out = v6;
                true
            }
            None => false,
        }
    }
}
