//! What every probe in Go code does first: whether the hit counts. A site on a conditional
//! jump counts only when the jump goes the way its spec says (the daemon's code analysis,
//! `ddtrace-agent/src/symbols/go_probe_sites.rs`), decided from the flags the kernel saved,
//! before the jump runs.

use aya_ebpf::{
    bindings::{pt_regs, BPF_NOEXIST},
    helpers::bpf_get_current_pid_tgid,
    macros::map,
    maps::LruHashMap,
    programs::ProbeContext,
    EbpfContext,
};
use ddtrace_common::{go_site, probe_flags, ProbeSpec};

use super::{announce_hit, tracked_spec};

/// `(tgid << 32 | probe id)` of the first hits announced (`probe_flags::ANNOUNCE_FIRST_HIT`);
/// the daemon removes a process's entries when it exits or runs another program.
#[map(name = "ANNOUNCED_HITS")]
static ANNOUNCED_HITS: LruHashMap<u64, u8> = LruHashMap::with_max_entries(4096, 0);

/// A hit of a probe in Go code that counts: the thread's `pid_tgid`, the site's spec and the
/// saved user registers; `None` when the process is not traced or the site's jump goes the way
/// its spec does not count.
#[inline(always)]
pub fn counted_hit(ctx: &ProbeContext) -> Option<(u64, ProbeSpec, &pt_regs)> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (probe_id, spec) = tracked_spec(ctx, pid_tgid)?;
    // SAFETY: a uprobe's context is the saved user registers.
    let regs = unsafe { &*(ctx.as_ptr() as *const pt_regs) };
    if !counts(spec.go.only_if, regs.eflags) {
        return None;
    }
    if spec.flags & probe_flags::ANNOUNCE_FIRST_HIT != 0 {
        announce_first_hit(pid_tgid, probe_id);
    }
    Some((pid_tgid, spec, regs))
}

/// Tells the daemon, once per process, that probe `probe_id` ran there. Remembered only once
/// the event is in the ring: a hit whose event was dropped is announced again.
#[inline(never)]
fn announce_first_hit(pid_tgid: u64, probe_id: u32) {
    let key = (pid_tgid & 0xFFFF_FFFF_0000_0000) | probe_id as u64;
    // SAFETY: a presence check; the value is not read.
    if unsafe { ANNOUNCED_HITS.get(&key) }.is_some() {
        return;
    }
    if announce_hit(pid_tgid, probe_id) {
        let _ = ANNOUNCED_HITS.insert(&key, &1, BPF_NOEXIST as u64);
    }
}

/// Whether a hit counts: always, or when the `jcc` at the site goes the way the spec says,
/// decided from the flags as the CPU will (CF 0, PF 2, ZF 6, SF 7, OF 11).
#[inline(always)]
fn counts(only_if: u32, flags: u64) -> bool {
    if only_if & go_site::BRANCH_DECIDES == 0 {
        return true;
    }
    let bit = |n: u32| (flags >> n) & 1 != 0;
    let (cf, pf, zf, sf, of) = (bit(0), bit(2), bit(6), bit(7), bit(11));
    let condition = only_if & go_site::CONDITION_MASK;
    let holds = match condition >> 1 {
        0 => of,
        1 => cf,
        2 => zf,
        3 => cf || zf,
        4 => sf,
        5 => pf,
        6 => sf != of,
        _ => zf || sf != of,
    };
    let taken = if condition & 1 == 0 { holds } else { !holds };
    taken == (only_if & go_site::WHEN_TAKEN != 0)
}

