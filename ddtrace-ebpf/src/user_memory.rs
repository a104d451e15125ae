//! Reading the target's memory: every read bounded and checked, none ever faults (a bad
//! pointer reads as 0).

use aya_ebpf::helpers::generated::bpf_probe_read_user as read_user_raw;

/// The 8 bytes at `address` in the target, or 0 when they cannot be read.
#[inline(always)]
pub fn read_u64(address: u64) -> u64 {
    if address == 0 {
        return 0;
    }
    let mut value = 0u64;
    // SAFETY: reads 8 bytes of the target's memory into a local; fails instead of faulting.
    let result = unsafe {
        read_user_raw(&mut value as *mut u64 as *mut core::ffi::c_void, 8, address as *const core::ffi::c_void)
    };
    if result == 0 {
        value
    } else {
        0
    }
}

/// The two 8-byte words at `address` in the target (a Go interface: its itab and its data), in
/// one read; `(0, 0)` when they cannot be read.
#[inline(always)]
pub fn read_pair(address: u64) -> (u64, u64) {
    if address == 0 {
        return (0, 0);
    }
    let mut words = [0u64; 2];
    // SAFETY: reads 16 bytes of the target's memory into a local; fails instead of faulting.
    let result = unsafe {
        read_user_raw(words.as_mut_ptr() as *mut core::ffi::c_void, 16, address as *const core::ffi::c_void)
    };
    if result == 0 {
        (words[0], words[1])
    } else {
        (0, 0)
    }
}
