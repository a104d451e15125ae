//! The offsets the kernel programs follow from the current task to a socket's addresses, read
//! from the running kernel's BTF (they change between kernel builds, and our programs carry no
//! CO-RE relocations).

use ddtrace_common::{SocketLayout, SOCK_COMMON_READ_BYTES};

use super::btf::{Btf, BtfError};

#[derive(Debug, thiserror::Error)]
pub enum SocketLayoutError {
    #[error("{0}")]
    Btf(#[from] BtfError),
    #[error("{strukt}.{member} is {actual} bytes on this kernel, expected {expected}")]
    UnexpectedSize { strukt: &'static str, member: &'static str, actual: u32, expected: u32 },
    #[error("sock_common.{0} lies beyond the first {SOCK_COMMON_READ_BYTES} bytes the programs copy")]
    BeyondCopy(&'static str),
}

/// Reads the layout from `/sys/kernel/btf/vmlinux`.
pub fn socket_layout_from_kernel() -> Result<SocketLayout, SocketLayoutError> {
    socket_layout(&mut Btf::from_kernel()?)
}

/// Every member the walk reads, with the size the program reads it as: a layout that disagrees
/// is refused rather than read wrong.
pub fn socket_layout(btf: &mut Btf) -> Result<SocketLayout, SocketLayoutError> {
    let mut offset = |strukt: &'static str, member: &'static str, expected: u32| {
        let place = btf.member(strukt, member)?;
        if place.size != expected {
            return Err(SocketLayoutError::UnexpectedSize { strukt, member, actual: place.size, expected });
        }
        if strukt == "sock_common" && (place.offset + place.size) as usize > SOCK_COMMON_READ_BYTES {
            return Err(SocketLayoutError::BeyondCopy(member));
        }
        Ok(place.offset)
    };
    let mut layout = SocketLayout {
        known: 1,
        task_files: offset("task_struct", "files", 8)?,
        files_fdt: offset("files_struct", "fdt", 8)?,
        fdtable_max_fds: offset("fdtable", "max_fds", 4)?,
        fdtable_fd: offset("fdtable", "fd", 8)?,
        file_private_data: offset("file", "private_data", 8)?,
        socket_sk: offset("socket", "sk", 8)?,
        skc_family: offset("sock_common", "skc_family", 2)?,
        skc_num: offset("sock_common", "skc_num", 2)?,
        skc_rcv_saddr: offset("sock_common", "skc_rcv_saddr", 4)?,
        skc_dport: offset("sock_common", "skc_dport", 2)?,
        skc_daddr: offset("sock_common", "skc_daddr", 4)?,
        skc_v6_rcv_saddr: SocketLayout::ABSENT,
        skc_v6_daddr: SocketLayout::ABSENT,
        unix_addr: SocketLayout::ABSENT,
        sock_socket: SocketLayout::ABSENT,
        socket_inode_number: SocketLayout::ABSENT,
        sk_type: SocketLayout::ABSENT,
    };
    // A kernel built without IPv6 has no IPv6 members: its IPv4 sockets are still read.
    match (offset("sock_common", "skc_v6_rcv_saddr", 16), offset("sock_common", "skc_v6_daddr", 16)) {
        (Ok(local), Ok(peer)) => (layout.skc_v6_rcv_saddr, layout.skc_v6_daddr) = (local, peer),
        (Err(SocketLayoutError::Btf(BtfError::NoMember { .. })), _)
        | (_, Err(SocketLayoutError::Btf(BtfError::NoMember { .. }))) => {}
        (Err(error), _) | (_, Err(error)) => return Err(error),
    }
    // Without it, Unix sockets met after attach are taken for clients (what traced processes
    // mostly are on them): no reason to refuse the rest.
    if let Ok(place) = btf.member("unix_sock", "addr") {
        if place.size == 8 {
            layout.unix_addr = place.offset;
        }
    }
    // Without these, a Unix socket closed unseen and followed by another at the same address
    // and fd would pass for the same connection.
    if let (Ok(socket), Ok(inode), Ok(number), Ok(start)) = (
        btf.member("sock", "sk_socket"),
        btf.member("socket_alloc", "vfs_inode"),
        btf.member("inode", "i_ino"),
        btf.member("socket_alloc", "socket"),
    ) {
        if socket.size == 8 && number.size == 8 && start.offset == 0 {
            (layout.sock_socket, layout.socket_inode_number) = (socket.offset, inode.offset + number.offset);
        }
    }
    // Without it, no Unix socket is followed (datagram ones must not be).
    if let Ok(place) = btf.member("sock", "sk_type") {
        if place.size == 2 {
            layout.sk_type = place.offset;
        }
    }
    Ok(layout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_kernels_layout_is_complete_and_consistent() {
        let layout = socket_layout_from_kernel().expect("the socket layout from this kernel's BTF");
        assert_eq!(layout.known, 1);
        // `struct sock` starts with `struct sock_common`, whose fields sit in its first bytes.
        for field in [layout.skc_family, layout.skc_num, layout.skc_rcv_saddr, layout.skc_dport, layout.skc_daddr] {
            assert!(field < 64, "{layout:?}");
        }
        assert!(layout.fdtable_fd > layout.fdtable_max_fds, "fdtable is max_fds, then fd: {layout:?}");
        assert!(layout.task_files > 0 && layout.socket_sk > 0 && layout.file_private_data > 0);
        assert_ne!(layout.skc_v6_rcv_saddr, SocketLayout::ABSENT, "this kernel has IPv6");
        // `unix_sock` starts with its `struct sock`, and `addr` follows it.
        assert!(layout.unix_addr != SocketLayout::ABSENT && layout.unix_addr > 64, "{layout:?}");
        assert!(layout.sock_socket != SocketLayout::ABSENT && layout.socket_inode_number > 0, "{layout:?}");
        assert!(layout.sk_type != SocketLayout::ABSENT && layout.sk_type > 64, "{layout:?}");
    }
}
