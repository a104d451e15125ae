//! Which goroutine the bytes of a Go process move for: what makes a Go service's outgoing calls
//! children of the exact request that made them, at any concurrency.
//!
//! A read or a write in a Go process happens on the goroutine in R14 (Go's register ABI keeps
//! `runtime.g` there, and its system call stubs leave it alone). That is the serving goroutine
//! for a request a server reads, and the calling goroutine for a database driver's query. But
//! net/http's client writes each request on the connection's write loop, another goroutine; so
//! `(*Transport).roundTrip(req)` records which goroutine sent `req`, and `(*Request).write` on
//! the write loop says, until its next request, for whom the loop writes.
//!
//! A request a handler sends from a goroutine of its own names the request it serves through
//! its context (Go's way of saying it: `http.NewRequestWithContext(r.Context(), ...)`):
//! `serverHandler.ServeHTTP` records each served request's context, and `roundTrip` walks the
//! sent request's context up through its parents (every derived context embeds its parent
//! first) to a served one: the request is then sent for the goroutine serving it.

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{bpf_get_current_task_btf, bpf_task_pt_regs},
    macros::{map, uprobe},
    maps::Array,
    programs::ProbeContext,
};
use ddtrace_common::{socket_op, TRACKED_PROCESS_WORDS};

use super::{
    go_sites::counted_hit,
    slot_tables::{self, Set, SETS},
    user_memory,
};

/// Bit `tgid` is set (by the daemon) for traced processes that run Go.
#[map(name = "GO_PROCESSES")]
static GO_PROCESSES: Array<u64> = Array::with_max_entries(TRACKED_PROCESS_WORDS, 0);

// Every table below is a small set-associative array (`slot_tables`): a request pays no
// hash-map insert.

/// `(process, *http.Request)` -> the goroutine whose `roundTrip` sent it.
#[map(name = "GO_REQUEST_SENDERS")]
static GO_REQUEST_SENDERS: Array<Set> = Array::with_max_entries(SETS, 0);

/// `(process, a served request's context)` -> the goroutine serving it.
#[map(name = "GO_SERVED_CONTEXTS")]
static GO_SERVED_CONTEXTS: Array<Set> = Array::with_max_entries(SETS, 0);

/// `(process, goroutine)` -> the context of the request it serves now: a context found in
/// `GO_SERVED_CONTEXTS` counts only while its goroutine still serves it (a freed context's
/// address may come back as another).
#[map(name = "GO_SERVING")]
static GO_SERVING: Array<Set> = Array::with_max_entries(SETS, 0);

/// How far up a context's parents the walk goes (a handler's timeout and values add a few).
const MAX_CONTEXT_DEPTH: usize = 8;

/// A write loop's goroutine -> the goroutine it writes the current request for.
#[map(name = "GO_WRITING_FOR")]
static GO_WRITING_FOR: Array<Set> = Array::with_max_entries(SETS, 0);

#[inline(always)]
fn runs_go(tgid: u32) -> bool {
    let word = GO_PROCESSES.get(tgid / 64).copied().unwrap_or(0);
    word & (1u64 << (tgid % 64)) != 0
}

/// The goroutine an `op` (read or write) of the current thread of `tgid` moves bytes for; 0
/// outside Go processes.
#[inline(always)]
pub fn moved_for(tgid: u32, op: u32) -> u64 {
    if !runs_go(tgid) {
        return 0;
    }
    moved_by(tgid, op, running_goroutine())
}

/// The goroutine an `op` of goroutine `g` of `tgid` moves bytes for: `g`, or for a request
/// net/http's write loop writes, the goroutine that sent it. For probes in Go code, whose
/// registers hold `g` already (no read of the task's saved registers).
#[inline(always)]
pub fn moved_by(tgid: u32, op: u32, g: u64) -> u64 {
    if op != socket_op::SENT || g == 0 {
        return g;
    }
    slot_tables::get(&GO_WRITING_FOR, tgid, g).unwrap_or(g)
}

/// R14 of the current thread's user registers: in Go code, the running goroutine.
#[inline(always)]
fn running_goroutine() -> u64 {
    // SAFETY: `bpf_task_pt_regs` gives the verifier a typed pointer to the task's `pt_regs`:
    // R14 is read with a plain load (which the kernel guards against faults), not a helper call.
    unsafe {
        let regs = bpf_task_pt_regs(bpf_get_current_task_btf()) as *const pt_regs;
        if regs.is_null() {
            return 0;
        }
        core::ptr::read_volatile(&(*regs).r14)
    }
}

/// `func (t *Transport) roundTrip(req *Request) (*Response, error)`: RBX is `req`.
#[uprobe]
pub fn ddtrace_go_round_trip(ctx: ProbeContext) -> u32 {
    let Some((pid_tgid, spec, regs)) = counted_hit(&ctx) else { return 0 };
    let tgid = (pid_tgid >> 32) as u32;
    let context = request_context(regs.rbx, spec.go.request_ctx);
    let sender = serving_goroutine(tgid, context).unwrap_or(regs.r14);
    slot_tables::put(&GO_REQUEST_SENDERS, tgid, regs.rbx, sender);
    0
}

/// `func (sh serverHandler) ServeHTTP(rw ResponseWriter, req *Request)`: RDI is `req` (after
/// `sh.srv` in RAX and the interface in RBX, RCX); the goroutine serves its context.
#[uprobe]
pub fn ddtrace_go_serve(ctx: ProbeContext) -> u32 {
    let Some((pid_tgid, spec, regs)) = counted_hit(&ctx) else { return 0 };
    let tgid = (pid_tgid >> 32) as u32;
    let context = request_context(regs.rdi, spec.go.request_ctx);
    if context == 0 {
        return 0;
    }
    let goroutine = regs.r14;
    slot_tables::put(&GO_SERVED_CONTEXTS, tgid, context, goroutine);
    slot_tables::put(&GO_SERVING, tgid, goroutine, context);
    0
}

/// The object behind `request.ctx` (a `context.Context` interface: its data word).
#[inline(always)]
fn request_context(request: u64, ctx_offset: u16) -> u64 {
    if request == 0 || ctx_offset == 0 {
        return 0;
    }
    user_memory::read_u64(request.wrapping_add(ctx_offset as u64 + 8))
}

/// The goroutine serving `context` or one of its ancestors, if any does.
#[inline(always)]
fn serving_goroutine(tgid: u32, mut context: u64) -> Option<u64> {
    for _ in 0..MAX_CONTEXT_DEPTH {
        if context == 0 {
            return None;
        }
        if let Some(goroutine) = slot_tables::get(&GO_SERVED_CONTEXTS, tgid, context) {
            let current = slot_tables::get(&GO_SERVING, tgid, goroutine);
            return (current == Some(context)).then_some(goroutine);
        }
        // cancelCtx, timerCtx (a cancelCtx first), valueCtx: the parent interface first.
        context = user_memory::read_u64(context.wrapping_add(8));
    }
    None
}

/// `func (r *Request) write(w io.Writer, ...) error` on a connection's write loop: RAX is `r`.
#[uprobe]
pub fn ddtrace_go_request_write(ctx: ProbeContext) -> u32 {
    let Some((pid_tgid, _, regs)) = counted_hit(&ctx) else { return 0 };
    let tgid = (pid_tgid >> 32) as u32;
    let (request, writer) = (regs.rax, regs.r14);
    match slot_tables::get(&GO_REQUEST_SENDERS, tgid, request) {
        Some(sender) => {
            slot_tables::remove(&GO_REQUEST_SENDERS, tgid, request);
            slot_tables::put(&GO_WRITING_FOR, tgid, writer, sender);
        }
        // Not sent through a roundTrip we saw: the loop writes for nobody we know.
        None => slot_tables::remove(&GO_WRITING_FOR, tgid, writer),
    }
    0
}
