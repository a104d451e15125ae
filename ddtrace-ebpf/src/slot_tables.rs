//! Direct-mapped tables in array maps: a key's slot is its hash, a newer key takes an older
//! one's slot. For the Go probes' per-request bookkeeping, which a hash map made the costliest
//! part of a request: measured on a Go HTTPS server at 1,000 req/s, two hash-map inserts of
//! new keys (a request's context is a new address each time) took 1.25 µs of the probe's 1.5,
//! LRU or not, as every insert takes a free element, locks a bucket and touches cold memory.
//! An array slot is one cache line, no lock, no allocation.
//!
//! Small on purpose: a table stays under 32 KiB, which the kernel allocates from its linear
//! map (huge pages) rather than vmalloc's 4 KiB pages. At 1,000 req/s the TLB no longer holds
//! a bigger table's pages between requests: with 2^14 slots (512 KiB) the two writes of
//! `ServeHTTP`'s program cost 630 of its 970 ns a run; with 2^10 (24 KiB), 440-520 ns.
//!
//! What a slot may lose: a key whose slot another key took is not found (the caller then knows
//! nothing, never something wrong). What it must never give is a value that is not the key's:
//! two CPUs writing one slot at once may leave fields of both, so each slot carries a check
//! word over its process, key and value, and a slot whose check does not match is empty.

use aya_ebpf::maps::Array;

/// Slots per table: a power of two (the index is the hash's top bits). 1,024 slots of 24 bytes
/// and the map's header fit in 32 KiB.
pub const SLOTS: u32 = 1 << SLOT_BITS;
const SLOT_BITS: u32 = 10;

/// The process is not stored: it is in the check word, which a slot of another process with
/// the same key fails.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Slot {
    key: u64,
    value: u64,
    check: u64,
}

/// Fibonacci hashing: Go's heap addresses share their low bits (alignment), the multiply
/// spreads every bit of the key into the top ones.
#[inline(always)]
fn index(tgid: u32, key: u64) -> u32 {
    let mixed = (key ^ ((tgid as u64) << 40)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (mixed >> (64 - SLOT_BITS)) as u32
}

#[inline(always)]
fn check(tgid: u32, key: u64, value: u64) -> u64 {
    (key.rotate_left(17) ^ value ^ tgid as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F) | 1
}

/// `key` of process `tgid` now maps to `value` (0 is no value).
#[inline(always)]
pub fn put(table: &Array<Slot>, tgid: u32, key: u64, value: u64) {
    let Some(slot) = table.get_ptr_mut(index(tgid, key)) else { return };
    // SAFETY: a slot of the array; a concurrent writer can only make the check fail.
    unsafe {
        (*slot).check = 0;
        (*slot).key = key;
        (*slot).value = value;
        (*slot).check = check(tgid, key, value);
    }
}

/// What `key` of process `tgid` maps to, if its slot still holds it.
#[inline(always)]
pub fn get(table: &Array<Slot>, tgid: u32, key: u64) -> Option<u64> {
    let slot = *table.get(index(tgid, key))?;
    let holds = slot.key == key && slot.value != 0;
    (holds && slot.check == check(tgid, key, slot.value)).then_some(slot.value)
}

/// `key` of process `tgid` maps to nothing (its slot is left alone if another key holds it).
#[inline(always)]
pub fn remove(table: &Array<Slot>, tgid: u32, key: u64) {
    let Some(slot) = table.get_ptr_mut(index(tgid, key)) else { return };
    // SAFETY: as in `put`.
    unsafe {
        if (*slot).key == key && (*slot).check == check(tgid, key, (*slot).value) {
            (*slot).check = 0;
        }
    }
}
