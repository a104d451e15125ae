//! Reading (never writing) the target's memory, with `process_vm_readv`: a bad address is an
//! error for us, never a fault in the target.

/// The most bytes one read copies out of the target.
pub const MAX_READ: usize = 4096;

const PAGE: u64 = 4096;

/// Reads up to `buf.len()` bytes at `address` of process `pid`; returns how many were read.
fn read_at(pid: u32, address: u64, buf: &mut [u8]) -> Option<usize> {
    let local = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let remote = libc::iovec { iov_base: address as *mut libc::c_void, iov_len: buf.len() };
    // SAFETY: one local iovec into our own buffer; the kernel checks the remote range.
    let read = unsafe { libc::process_vm_readv(pid as libc::pid_t, &local, 1, &remote, 1, 0) };
    (read > 0).then_some(read as usize)
}

/// The 8-byte value at `address`.
pub fn read_u64(pid: u32, address: u64) -> Option<u64> {
    let mut buf = [0u8; 8];
    (read_at(pid, address, &mut buf)? == 8).then(|| u64::from_ne_bytes(buf))
}

/// The 4-byte value at `address`.
pub fn read_u32(pid: u32, address: u64) -> Option<u32> {
    let mut buf = [0u8; 4];
    (read_at(pid, address, &mut buf)? == 4).then(|| u32::from_ne_bytes(buf))
}

/// Exactly `len` bytes at `address` (one system call; `len` is the caller's bound).
pub fn read_bytes(pid: u32, address: u64, len: usize) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; len];
    if len == 0 {
        return Some(buf);
    }
    (read_at(pid, address, &mut buf)? == len).then_some(buf)
}

/// The NUL-terminated string at `address`, at most `max` bytes (bounded by [`MAX_READ`]).
/// Reads page by page so a string ending just before an unmapped page is still read.
pub fn read_c_string(pid: u32, address: u64, max: usize) -> Option<Vec<u8>> {
    let max = max.min(MAX_READ);
    let mut out = Vec::new();
    let mut cursor = address;
    while out.len() < max {
        let to_page_end = (PAGE - cursor % PAGE) as usize;
        let mut chunk = vec![0u8; to_page_end.min(max - out.len())];
        let read = read_at(pid, cursor, &mut chunk)?;
        if let Some(nul) = chunk[..read].iter().position(|b| *b == 0) {
            out.extend_from_slice(&chunk[..nul]);
            return Some(out);
        }
        out.extend_from_slice(&chunk[..read]);
        cursor += read as u64;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_memory_and_refuses_bad_addresses() {
        let text = b"SELECT 1\0tail";
        let pid = std::process::id();
        assert_eq!(read_c_string(pid, text.as_ptr() as u64, 100).unwrap(), b"SELECT 1");
        assert_eq!(read_c_string(pid, text.as_ptr() as u64, 3).unwrap(), b"SEL");
        let value: u64 = 0x1122_3344_5566_7788;
        assert_eq!(read_u64(pid, &value as *const u64 as u64), Some(value));
        assert_eq!(read_u64(pid, 8), None);
        assert_eq!(read_c_string(pid, 8, 10), None);
    }
}
