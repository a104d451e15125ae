//! What every probe in Go code does first: whether the hit counts. A site on a conditional
//! jump counts only when the jump goes the way its spec says (the daemon's code analysis,
//! `ddtrace-agent/src/symbols/go_probe_sites.rs`), decided from the flags the kernel saved,
//! before the jump runs.

use aya_ebpf::{bindings::pt_regs, helpers::bpf_get_current_pid_tgid, programs::ProbeContext, EbpfContext};
use ddtrace_common::{go_site, ProbeSpec};

use super::tracked_spec;

/// A hit of a probe in Go code that counts: the thread's `pid_tgid`, the site's spec and the
/// saved user registers; `None` when the process is not traced or the site's jump goes the way
/// its spec does not count.
#[inline(always)]
pub fn counted_hit(ctx: &ProbeContext) -> Option<(u64, ProbeSpec, &pt_regs)> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (_, spec) = tracked_spec(ctx, pid_tgid)?;
    // SAFETY: a uprobe's context is the saved user registers.
    let regs = unsafe { &*(ctx.as_ptr() as *const pt_regs) };
    counts(spec.go.only_if, regs.eflags).then_some((pid_tgid, spec, regs))
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

