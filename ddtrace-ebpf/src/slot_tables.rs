//! Two-way set-associative tables in array maps: a key's set (two slots) is its hash, and a set
//! keeps the two latest keys put into it. For the Go probes' per-request bookkeeping, which a
//! hash map made the costliest part of a request: measured on a Go HTTPS server at 1,000 req/s, two hash-map inserts of
//! new keys (a request's context is a new address each time) took 1.25 µs of the probe's 1.5,
//! LRU or not, as every insert takes a free element, locks a bucket and touches cold memory.
//! A set is one or two cache lines, no lock, no allocation.
//!
//! Small on purpose: a table stays under 32 KiB, which the kernel allocates from its linear
//! map (huge pages) rather than vmalloc's 4 KiB pages. At 1,000 req/s the TLB no longer holds
//! a bigger table's pages between requests: with 2^14 slots (512 KiB) the two writes of
//! `ServeHTTP`'s program cost 630 of its 970 ns a run; with 2^10 (24 KiB), 440-520 ns.
//!
//! What a table may lose: a key whose slot newer keys took is not found (the caller then knows
//! nothing, never something wrong). What it must never give is a value that is not the key's:
//! two CPUs writing one slot at once may leave fields of both, so each slot carries a check
//! word over its process, key and value, and a slot whose check does not match is empty.

use aya_ebpf::maps::Array;

/// Sets per table: a power of two (the index is the hash's top bits). 512 sets of two 24-byte
/// slots and a word, and the map's header, fit in 32 KiB.
pub const SETS: u32 = 1 << SET_BITS;
const SET_BITS: u32 = 9;

/// The process is not stored: it is in the check word, which a slot of another process with
/// the same key fails.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Slot {
    key: u64,
    value: u64,
    check: u64,
}

/// Two slots for the keys of one hash. Direct-mapped (one slot a hash), a table this small lost
/// an in-flight request's entry to a newer key about once in 60 requests at 8 in flight (Go's
/// fan-out test failed); a key is lost here only to two newer keys of its set.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Set {
    ways: [Slot; 2],
    /// The way written last: a new key takes the other one.
    last: u64,
}

/// Fibonacci hashing: Go's heap addresses share their low bits (alignment), the multiply
/// spreads every bit of the key into the top ones.
#[inline(always)]
fn index(tgid: u32, key: u64) -> u32 {
    let mixed = (key ^ ((tgid as u64) << 40)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (mixed >> (64 - SET_BITS)) as u32
}

#[inline(always)]
fn check(tgid: u32, key: u64, value: u64) -> u64 {
    (key.rotate_left(17) ^ value ^ tgid as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F) | 1
}

#[inline(always)]
fn holds(slot: &Slot, tgid: u32, key: u64) -> bool {
    slot.key == key && slot.value != 0 && slot.check == check(tgid, key, slot.value)
}

/// `key` of process `tgid` now maps to `value` (0 is no value). Only this key's fields are
/// written, in its own slot or a victim's: a put never moves another key's entry, which could
/// bring back a value another CPU removed or replaced meanwhile.
#[inline(always)]
pub fn put(table: &Array<Set>, tgid: u32, key: u64, value: u64) {
    let Some(set) = table.get_ptr_mut(index(tgid, key)) else { return };
    // SAFETY: fields of the array's value, written with volatile stores in this order: a
    // concurrent writer of the same slot leaves fields of both, which the check word refuses.
    unsafe {
        let ways = &raw mut (*set).ways;
        let way = if (*ways)[0].key == key {
            0
        } else if (*ways)[1].key == key {
            1
        } else if (*ways)[0].check == 0 {
            0
        } else if (*ways)[1].check == 0 {
            1
        } else {
            // The way not written last; `& 1` keeps the index in bounds for the verifier.
            ((*set).last ^ 1) & 1
        } as usize;
        let slot = &raw mut (*ways)[way];
        core::ptr::write_volatile(&raw mut (*slot).check, 0);
        core::ptr::write_volatile(&raw mut (*slot).key, key);
        core::ptr::write_volatile(&raw mut (*slot).value, value);
        core::ptr::write_volatile(&raw mut (*slot).check, check(tgid, key, value));
        (*set).last = way as u64;
    }
}

/// What `key` of process `tgid` maps to, if its set still holds it.
#[inline(always)]
pub fn get(table: &Array<Set>, tgid: u32, key: u64) -> Option<u64> {
    // A copy: the value returned is the one checked.
    let set = *table.get(index(tgid, key))?;
    if holds(&set.ways[0], tgid, key) {
        return Some(set.ways[0].value);
    }
    holds(&set.ways[1], tgid, key).then_some(set.ways[1].value)
}

/// `key` of process `tgid` maps to nothing (slots of other keys are left alone).
#[inline(always)]
pub fn remove(table: &Array<Set>, tgid: u32, key: u64) {
    let Some(set) = table.get_ptr_mut(index(tgid, key)) else { return };
    // SAFETY: as in `put`.
    unsafe {
        for way in 0..2 {
            let slot = &raw mut (*set).ways[way];
            if holds(&*slot, tgid, key) {
                core::ptr::write_volatile(&raw mut (*slot).check, 0);
            }
        }
    }
}
