//! Userspace stack unwinding for the profiler (x86-64): from the registers and a copy of the
//! user stack taken at sample time to the list of return addresses.
//!
//! Each frame is unwound with the call frame information of the module containing its pc
//! (`cfi.rs`); code without any (JIT code, the vdso, files stripped of `.eh_frame`) falls back to
//! the frame-pointer chain. Memory is only ever read from the snapshot, never from the process:
//! the target has moved on by the time the agent unwinds.

use std::{fmt, sync::Arc};

use gimli::{
    EndianSlice, Evaluation, EvaluationResult, EvaluationStorage, LittleEndian, Location, Piece, Reader, Value,
};

use super::{
    cfi::{CfaRule, FrameRule, RegisterRule, UnwindContext, UnwindExpression, RA, RBP, RSP},
    module::{ElfModule, ModuleCache},
    normalize::ProcessMaps,
};

/// The deepest stack reported; deeper stacks end with [`UnwindEnd::MaxDepth`].
pub const MAX_DEPTH: usize = 128;

/// Bound on DWARF expression steps, so a corrupt expression cannot loop (`DW_OP_skip`).
const MAX_EXPRESSION_STEPS: u32 = 64;

/// How far above the stack pointer a frame pointer may plausibly point: Linux's default stack
/// limit. Beyond it an rbp is taken for a general-purpose value rather than a frame the copy
/// missed.
const MAX_PLAUSIBLE_FRAME: u64 = 8 << 20;

/// The registers of the sampled thread that unwinding needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserRegisters {
    /// rip: the interrupted instruction.
    pub ip: u64,
    /// rsp: the address of `stack[0]` in [`Unwinder::unwind`].
    pub sp: u64,
    /// rbp, for frames unwound by frame pointer and CFA rules based on it.
    pub bp: u64,
}

/// Why unwinding stopped. `Display` gives a short stable label (no address), fit for counting
/// outcomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnwindEnd {
    /// Reached the outermost frame: its CFI leaves the return address undefined (`_start`,
    /// `clone3`), or the return address is 0.
    Complete,
    /// A word beyond the end of the stack copy was needed.
    StackCopyEnd,
    /// The pc at `address` has no CFI (unmapped, or its module has none for it) and the frame
    /// pointer chain could not be followed either.
    NoUnwindInfo { address: u64 },
    /// The CFI at `address` uses a rule this unwinder cannot evaluate (a register other than
    /// rip/rsp/rbp, an unsupported expression).
    UnsupportedRule { address: u64 },
    /// [`MAX_DEPTH`] frames were reported.
    MaxDepth,
    /// Unwinding the frame at `address` gave a stack pointer that does not increase, or read
    /// below the sampled stack pointer: a cycle or corrupt data.
    Invalid { address: u64 },
}

impl UnwindEnd {
    /// The label `Display` prints.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Complete => "complete",
            Self::StackCopyEnd => "stack_copy_end",
            Self::NoUnwindInfo { .. } => "no_unwind_info",
            Self::UnsupportedRule { .. } => "unsupported_rule",
            Self::MaxDepth => "max_depth",
            Self::Invalid { .. } => "invalid",
        }
    }
}

impl fmt::Display for UnwindEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// Why one frame could not be unwound; turned into an [`UnwindEnd`] with the frame's pc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StepError {
    BeyondCopy,
    BelowStackPointer,
    Unsupported,
    NoInfo,
}

impl StepError {
    fn end(self, pc: u64) -> UnwindEnd {
        match self {
            Self::BeyondCopy => UnwindEnd::StackCopyEnd,
            Self::BelowStackPointer => UnwindEnd::Invalid { address: pc },
            Self::Unsupported => UnwindEnd::UnsupportedRule { address: pc },
            Self::NoInfo => UnwindEnd::NoUnwindInfo { address: pc },
        }
    }
}

/// The copy of the user stack: `bytes[0]` is the byte at `base` (the sampled rsp).
struct StackCopy<'s> {
    base: u64,
    bytes: &'s [u8],
}

impl StackCopy<'_> {
    /// Reads a little-endian value of `size` (at most 8) bytes at `address`.
    fn read(&self, address: u64, size: usize) -> Result<u64, StepError> {
        let offset = address.checked_sub(self.base).ok_or(StepError::BelowStackPointer)?;
        let start = usize::try_from(offset).map_err(|_| StepError::BeyondCopy)?;
        let bytes = start.checked_add(size).and_then(|end| self.bytes.get(start..end)).ok_or(StepError::BeyondCopy)?;
        let mut word = [0u8; 8];
        word.get_mut(..size).ok_or(StepError::Unsupported)?.copy_from_slice(bytes);
        Ok(u64::from_le_bytes(word))
    }

    fn word(&self, address: u64) -> Result<u64, StepError> {
        self.read(address, 8)
    }
}

/// Unwinds sampled user stacks; keep one per profiler thread to reuse its buffers.
pub struct Unwinder {
    ctx: Box<UnwindContext>,
    /// Modules met during the current `unwind` call, by mapping start, so each module is looked up
    /// in the cache (a `stat` and path allocations) once per stack rather than once per frame.
    /// Cleared per call: the next stack may be another process's, with other mappings.
    seen: Vec<(u64, Option<Arc<ElfModule>>)>,
}

impl Default for Unwinder {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Unwinder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Unwinder").finish_non_exhaustive()
    }
}

impl Unwinder {
    /// An unwinder with empty buffers; they grow on first use and are then reused.
    pub fn new() -> Self {
        Self { ctx: Box::new(UnwindContext::new()), seen: Vec::new() }
    }

    /// Unwinds the stack of a thread of the process whose `maps` are given. `stack` is the copy
    /// of its user stack taken with `regs`, starting at `regs.sp`. `out` is cleared, then receives
    /// `regs.ip` and each caller's return address (not minus one), at most [`MAX_DEPTH`] entries.
    pub fn unwind(
        &mut self,
        maps: &ProcessMaps,
        modules: &mut ModuleCache,
        regs: UserRegisters,
        stack: &[u8],
        out: &mut Vec<u64>,
    ) -> UnwindEnd {
        out.clear();
        self.seen.clear();
        let stack = StackCopy { base: regs.sp, bytes: stack };
        let mut regs = regs;
        // The sampled ip is the interrupted instruction itself; a return address is the
        // instruction after a call, which may already belong to the next function (a call to a
        // noreturn function ends its caller), so callers are looked up at return address - 1.
        let mut exact_pc = true;
        out.push(regs.ip);
        loop {
            if out.len() >= MAX_DEPTH {
                return UnwindEnd::MaxDepth;
            }
            let pc = regs.ip;
            let lookup = if exact_pc { pc } else { pc - 1 };
            let module = self.module_at(maps, modules, lookup);
            let rule = module.as_ref().and_then(|(module, vaddr)| module.cfi()?.find_rule(&mut self.ctx, *vaddr).ok());
            let step = match rule {
                Some(rule) => {
                    exact_pc = rule.signal_frame;
                    dwarf_step(&rule, &regs, &stack)
                }
                None => {
                    exact_pc = false;
                    frame_pointer_step(&regs, &stack).map(Some)
                }
            };
            let caller = match step {
                Ok(Some(caller)) => caller,
                Ok(None) => return UnwindEnd::Complete,
                Err(error) => return error.end(pc),
            };
            if caller.ip == 0 {
                return UnwindEnd::Complete;
            }
            if caller.sp <= regs.sp {
                return UnwindEnd::Invalid { address: pc };
            }
            out.push(caller.ip);
            regs = caller;
        }
    }

    /// The module mapped at `pc` and the ELF virtual address of `pc` in it.
    fn module_at(&mut self, maps: &ProcessMaps, modules: &mut ModuleCache, pc: u64) -> Option<(Arc<ElfModule>, u64)> {
        let mapping = maps.find(pc)?;
        let module = match self.seen.iter().find(|(start, _)| *start == mapping.start) {
            Some((_, module)) => module.clone(),
            None => {
                let module = mapping.path.as_deref().and_then(|path| modules.get(&maps.open_path(path)).ok());
                self.seen.push((mapping.start, module.clone()));
                module
            }
        }?;
        let vaddr = module.file_offset_to_vaddr(pc - mapping.start + mapping.file_offset)?;
        Some((module, vaddr))
    }
}

/// The value of a register of the current frame; only rip, rsp and rbp are tracked.
fn register(regs: &UserRegisters, number: u16) -> Result<u64, StepError> {
    match number {
        RSP => Ok(regs.sp),
        RBP => Ok(regs.bp),
        RA => Ok(regs.ip),
        _ => Err(StepError::Unsupported),
    }
}

/// The caller's registers by the CFI rules; `None` for the outermost frame.
fn dwarf_step(
    rule: &FrameRule<'_>,
    regs: &UserRegisters,
    stack: &StackCopy<'_>,
) -> Result<Option<UserRegisters>, StepError> {
    let cfa = match rule.cfa {
        CfaRule::RegisterOffset { register: number, offset } => register(regs, number)?.wrapping_add_signed(offset),
        CfaRule::Expression(expression) => evaluate(expression, regs, stack, None)?,
    };
    let ip = match rule.return_address {
        RegisterRule::Undefined => return Ok(None),
        other => recover(other, cfa, regs, stack)?.ok_or(StepError::Unsupported)?,
    };
    // Callee-saved registers without a rule were not touched by this frame.
    let bp = recover(rule.rbp, cfa, regs, stack)?.unwrap_or(regs.bp);
    // By definition the CFA is the caller's rsp; only signal trampolines say otherwise.
    let sp = recover(rule.rsp, cfa, regs, stack)?.unwrap_or(cfa);
    Ok(Some(UserRegisters { ip, sp, bp }))
}

/// The caller's value of a register by its rule; `None` when the rule leaves it unchanged.
fn recover(
    rule: RegisterRule<'_>,
    cfa: u64,
    regs: &UserRegisters,
    stack: &StackCopy<'_>,
) -> Result<Option<u64>, StepError> {
    Ok(Some(match rule {
        RegisterRule::Undefined | RegisterRule::SameValue => return Ok(None),
        RegisterRule::Offset(offset) => match stack.word(cfa.wrapping_add_signed(offset)) {
            // A save slot below the stack pointer was popped already: in epilogues GCC's CFI
            // still names the slot after `pop`, but the register holds the caller's value again.
            Err(StepError::BelowStackPointer) => return Ok(None),
            other => other?,
        },
        RegisterRule::ValOffset(offset) => cfa.wrapping_add_signed(offset),
        RegisterRule::Register(number) => register(regs, number)?,
        RegisterRule::Expression(expression) => stack.word(evaluate(expression, regs, stack, Some(cfa))?)?,
        RegisterRule::ValExpression(expression) => evaluate(expression, regs, stack, Some(cfa))?,
        RegisterRule::Unsupported => return Err(StepError::Unsupported),
    }))
}

/// The caller's registers by the frame-pointer convention (`push rbp; mov rbp, rsp`): the saved
/// rbp at rbp, the return address above it.
fn frame_pointer_step(regs: &UserRegisters, stack: &StackCopy<'_>) -> Result<UserRegisters, StepError> {
    let bp = regs.bp;
    // rbp 0 ends frame-pointer chains (`_start` clears it); below or at rsp, or misaligned, it is
    // not a frame pointer at all.
    if bp <= regs.sp || !bp.is_multiple_of(8) || bp - regs.sp > MAX_PLAUSIBLE_FRAME {
        return Err(StepError::NoInfo);
    }
    let ip = stack.word(bp + 8)?;
    let saved_bp = stack.word(bp)?;
    Ok(UserRegisters { ip, sp: bp + 16, bp: saved_bp })
}

/// Fixed-size evaluation storage: CFI expressions are short (PLT and signal-trampoline rules use
/// two or three stack slots), and this keeps expression evaluation off the heap.
struct InlineStorage;

impl<R: Reader> EvaluationStorage<R> for InlineStorage {
    type Stack = [Value; 16];
    type ExpressionStack = [(R, R); 2];
    type Result = [Piece<R>; 1];
}

/// Evaluates a CFI expression with the frame's registers and the stack copy as its memory.
/// `cfa` is pushed first for register rules, as DWARF specifies; CFA expressions start empty.
fn evaluate(
    expression: UnwindExpression<'_>,
    regs: &UserRegisters,
    stack: &StackCopy<'_>,
    cfa: Option<u64>,
) -> Result<u64, StepError> {
    let bytecode = EndianSlice::new(expression.bytecode, LittleEndian);
    let mut evaluation = Evaluation::<_, InlineStorage>::new_in(bytecode, expression.encoding);
    evaluation.set_max_iterations(MAX_EXPRESSION_STEPS);
    if let Some(cfa) = cfa {
        evaluation.set_initial_value(cfa);
    }
    let mut state = evaluation.evaluate();
    loop {
        state = match state.map_err(|_| StepError::Unsupported)? {
            EvaluationResult::Complete => break,
            EvaluationResult::RequiresRegister { register: gimli::Register(number), .. } => {
                evaluation.resume_with_register(Value::Generic(register(regs, number)?))
            }
            EvaluationResult::RequiresMemory { address, size, .. } => {
                evaluation.resume_with_memory(Value::Generic(stack.read(address, size.into())?))
            }
            _ => return Err(StepError::Unsupported),
        };
    }
    match evaluation.as_result() {
        [Piece { location: Location::Address { address }, .. }] => Ok(*address),
        [Piece { location: Location::Value { value }, .. }] => value.to_u64(!0).map_err(|_| StepError::Unsupported),
        _ => Err(StepError::Unsupported),
    }
}

#[cfg(test)]
mod tests {
    use std::{
        hint::black_box,
        sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering::SeqCst},
    };

    use super::*;
    use crate::symbols::{parse_maps_line, Symbolizer};

    /// The registers of `inner` and a copy of the test thread's stack from its rsp up.
    struct Capture {
        regs: UserRegisters,
        stack: Vec<u8>,
    }

    /// Copies the live stack from `sp` up: at most 64 KiB, and never past the end of the mapping
    /// holding `sp` (the top of this thread's stack), which would fault.
    fn copy_own_stack(sp: u64) -> Vec<u8> {
        let len = (stack_mapping_end(sp) - sp).min(64 * 1024) as usize;
        // SAFETY: [sp, sp + len) lies in one mapping of this process (the stack it runs on), and
        // only the part above this frame's rsp, which outlives this call, is read.
        unsafe { std::slice::from_raw_parts(sp as *const u8, len) }.to_vec()
    }

    /// Reads (rip, rsp, rbp) where it is expanded; a macro so no call moves rsp in between.
    macro_rules! registers_here {
        () => {{
            let (ip, sp, bp): (u64, u64, u64);
            // SAFETY: reads three registers into outputs; no memory or stack is touched.
            unsafe {
                core::arch::asm!(
                    "lea {ip}, [rip]",
                    "mov {sp}, rsp",
                    "mov {bp}, rbp",
                    ip = out(reg) ip,
                    sp = out(reg) sp,
                    bp = out(reg) bp,
                    options(nomem, nostack, preserves_flags),
                );
            }
            UserRegisters { ip, sp, bp }
        }};
    }

    /// The end of the mapping holding `sp`: the top of the stack it belongs to.
    fn stack_mapping_end(sp: u64) -> u64 {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        maps.lines().filter_map(parse_maps_line).find(|m| m.start <= sp && sp < m.end).unwrap().end
    }

    #[inline(never)]
    fn inner(marker: u64) -> Capture {
        let regs = registers_here!();
        black_box(marker);
        Capture { regs, stack: copy_own_stack(regs.sp) }
    }

    // Each caller uses the result after the call, so the calls cannot become tail calls.
    #[inline(never)]
    fn middle(marker: u64) -> Capture {
        black_box(inner(black_box(marker + 1)))
    }

    #[inline(never)]
    fn outer(marker: u64) -> Capture {
        black_box(middle(black_box(marker + 1)))
    }

    fn unwind_own(regs: UserRegisters, stack: &[u8]) -> (Vec<u64>, UnwindEnd) {
        let maps = ProcessMaps::read(std::process::id()).unwrap();
        let mut frames = Vec::new();
        let end = Unwinder::new().unwind(&maps, &mut ModuleCache::new(), regs, stack, &mut frames);
        (frames, end)
    }

    /// Function names of the frames, callers looked up at return address - 1 as the profiler will.
    fn names(frames: &[u64]) -> Vec<String> {
        let maps = ProcessMaps::read(std::process::id()).unwrap();
        let mut symbolizer = Symbolizer::new();
        frames
            .iter()
            .enumerate()
            .map(|(i, &address)| {
                let address = if i == 0 { address } else { address - 1 };
                match symbolizer.symbolize(&maps, address) {
                    Ok(symbol) => symbol.to_string(),
                    Err(_) => format!("{address:#x}"),
                }
            })
            .collect()
    }

    /// Asserts the first frames are inner, middle, outer and the test calling them.
    fn assert_starts_with_the_chain(frames: &[u64], end: UnwindEnd) {
        let names = names(frames);
        eprintln!("{end} after {} frames:\n  {}", frames.len(), names.join("\n  "));
        let prefix = "ddtrace_agent::symbols::unwind::tests::";
        for (i, function) in ["inner", "middle", "outer", "real_stack_"].into_iter().enumerate() {
            let name = names.get(i).map(String::as_str).unwrap_or("(none)");
            assert!(name.starts_with(&format!("{prefix}{function}")), "frame {i} is {name}");
        }
    }

    #[test]
    // Not inlined into the harness's closure: the unwind must find this function's own frame.
    #[inline(never)]
    fn real_stack_unwinds_through_inner_middle_outer_and_beyond() {
        let capture = outer(black_box(1));
        let (frames, end) = unwind_own(capture.regs, &capture.stack);
        assert_eq!(frames[0], capture.regs.ip);
        assert_starts_with_the_chain(&frames, end);
        // Past the chain: the harness, std's thread start, libc's start_thread and clone3, whose CFI
        // marks the outermost frame (unless the 64 KiB copy ends first).
        assert!(frames.len() >= 8, "only {} frames", frames.len());
        assert!(matches!(end, UnwindEnd::Complete | UnwindEnd::StackCopyEnd), "ended {end:?}");
    }

    #[test]
    // Not inlined into the harness's closure: the unwind must find this function's own frame.
    #[inline(never)]
    fn real_stack_unwinds_by_cfi_alone_without_a_frame_pointer() {
        let capture = outer(black_box(2));
        let (with_rbp, _) = unwind_own(capture.regs, &capture.stack);
        // rbp 0 makes the frame-pointer fallback fail at once, so these frames come from CFI alone.
        // It holds as long as no frame's CFA is rbp-based: the test's own functions keep none, but
        // the prebuilt std is built with frame pointers, so the walk may stop (Invalid) in the
        // harness, where the real rbp would have been needed.
        let regs = UserRegisters { bp: 0, ..capture.regs };
        let (frames, end) = unwind_own(regs, &capture.stack);
        assert_starts_with_the_chain(&frames, end);
        assert!(with_rbp.starts_with(&frames), "{frames:x?} is not a prefix of {with_rbp:x?}");
    }

    /// Where the signal handler copies the stack; set up by the test before raising the signal,
    /// so the handler neither allocates nor reads files.
    static SIGNAL_BUFFER: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
    static SIGNAL_BUFFER_LEN: AtomicUsize = AtomicUsize::new(0);
    static SIGNAL_STACK_END: AtomicU64 = AtomicU64::new(0);
    static SIGNAL_COPIED: AtomicUsize = AtomicUsize::new(0);
    static SIGNAL_REGS: [AtomicU64; 3] = [const { AtomicU64::new(0) }; 3];

    extern "C" fn capture_in_signal_handler(_signal: libc::c_int) {
        let regs = registers_here!();
        let len = ((SIGNAL_STACK_END.load(SeqCst) - regs.sp) as usize).min(SIGNAL_BUFFER_LEN.load(SeqCst));
        // SAFETY: the handler runs on the thread's own stack (no SA_ONSTACK), so [sp, sp + len)
        // is below that stack's end; the buffer holds SIGNAL_BUFFER_LEN bytes.
        unsafe { std::ptr::copy_nonoverlapping(regs.sp as *const u8, SIGNAL_BUFFER.load(SeqCst), len) };
        SIGNAL_COPIED.store(len, SeqCst);
        for (slot, value) in SIGNAL_REGS.iter().zip([regs.ip, regs.sp, regs.bp]) {
            slot.store(value, SeqCst);
        }
    }

    #[test]
    // Not inlined into the harness's closure: the unwind must find this function's own frame.
    #[inline(never)]
    fn real_stack_unwinds_out_of_a_signal_handler_through_the_signal_frame() {
        let mut buffer = vec![0u8; 64 * 1024];
        let here = &buffer as *const Vec<u8> as u64;
        SIGNAL_STACK_END.store(stack_mapping_end(here), SeqCst);
        SIGNAL_BUFFER_LEN.store(buffer.len(), SeqCst);
        SIGNAL_BUFFER.store(buffer.as_mut_ptr(), SeqCst);
        // SAFETY: installs a handler for SIGUSR2, which nothing else in the test binary uses,
        // raises it at this thread (delivered before pthread_kill returns), then restores it.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = capture_in_signal_handler as *const () as usize;
            let mut previous: libc::sigaction = std::mem::zeroed();
            assert_eq!(libc::sigaction(libc::SIGUSR2, &action, &mut previous), 0);
            assert_eq!(libc::pthread_kill(libc::pthread_self(), libc::SIGUSR2), 0);
            libc::sigaction(libc::SIGUSR2, &previous, std::ptr::null_mut());
        }
        let [ip, sp, bp] = SIGNAL_REGS.each_ref().map(|r| r.load(SeqCst));
        let (frames, end) = unwind_own(UserRegisters { ip, sp, bp }, &buffer[..SIGNAL_COPIED.load(SeqCst)]);
        let names = names(&frames);
        eprintln!("{end} after {} frames:\n  {}", frames.len(), names.join("\n  "));
        assert!(names[0].contains("capture_in_signal_handler"), "frame 0 is {}", names[0]);
        // Then glibc's __restore_rt, whose CFI (expressions over the saved context) gives the
        // interrupted pc in pthread_kill, and from there the test itself.
        let test = "ddtrace_agent::symbols::unwind::tests::real_stack_unwinds_out_of_a_signal_handler";
        assert!(names.iter().any(|n| n.starts_with(test)), "the unwind did not get back to the test");
        assert!(matches!(end, UnwindEnd::Complete | UnwindEnd::StackCopyEnd), "ended {end:?}");
    }

    #[test]
    fn plt_entries_unwind_by_their_cfa_expression() {
        use object::{Object, ObjectSection};
        // libc's own lazy-binding PLT (GNU ld): CFA = rsp + 8, or rsp + 16 after the entry's push.
        let maps = ProcessMaps::read(std::process::id()).unwrap();
        let mut modules = ModuleCache::new();
        let getpid = libc::getpid as *const () as u64;
        let normalized = maps.normalize(getpid, &mut modules).unwrap();
        let load_bias = getpid - normalized.vaddr;
        let data = std::fs::read(&normalized.path).unwrap();
        let file = object::File::parse(&*data).unwrap();
        let Some(plt) = file.section_by_name(".plt") else {
            eprintln!("this libc has no .plt; nothing to test");
            return;
        };
        // The first entry after PLT0 (16 bytes each): `jmp *got(%rip)`, then at +11 after `push`.
        let entry = load_bias + plt.address() + 16;
        let rule = normalized.module.cfi().unwrap().find_rule(&mut UnwindContext::new(), plt.address() + 16).unwrap();
        assert!(matches!(rule.cfa, CfaRule::Expression(_)), "{rule:?}");
        let sp = 0x7ffd_0000_0000_u64;
        let caller = 0x5555_0000_1234_u64;
        let mut frames = Vec::new();
        let mut unwinder = Unwinder::new();
        for (ip, stack) in [(entry, [caller, 0]), (entry + 11, [7, caller])] {
            let stack: Vec<u8> = stack.iter().flat_map(|w| w.to_le_bytes()).collect();
            let end = unwinder.unwind(&maps, &mut modules, UserRegisters { ip, sp, bp: 0 }, &stack, &mut frames);
            assert_eq!(frames, [ip, caller], "ip at PLT entry + {:#x}", ip - entry);
            assert_eq!(end, UnwindEnd::NoUnwindInfo { address: caller });
        }
    }

    #[test]
    fn truncated_copies_end_at_the_copy_with_a_prefix_of_the_frames() {
        let capture = outer(black_box(3));
        let (full, full_end) = unwind_own(capture.regs, &capture.stack);
        for len in [0, 1, 8, 15, 64, 256, 1024, 4096, capture.stack.len() / 2] {
            let len = len.min(capture.stack.len());
            let (frames, end) = unwind_own(capture.regs, &capture.stack[..len]);
            assert!(full.starts_with(&frames), "copy of {len} bytes: {frames:x?} not a prefix of {full:x?}");
            if frames.len() < full.len() {
                assert_eq!(end, UnwindEnd::StackCopyEnd, "copy of {len} bytes");
            } else {
                assert_eq!(end, full_end, "copy of {len} bytes");
            }
        }
    }

    #[test]
    fn garbage_stacks_never_panic() {
        let maps = ProcessMaps::read(std::process::id()).unwrap();
        let mut modules = ModuleCache::new();
        let mut unwinder = Unwinder::new();
        let mut frames = Vec::new();
        // Real code addresses sprinkled among random words, so CFI rules run on garbage.
        let code = [inner as *const () as u64, libc::getpid as *const () as u64, libc::read as *const () as u64];
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let sp = 0x7ffd_0000_1000;
        let mut stack = vec![0u8; 4096];
        for round in 0..300 {
            for word in stack.chunks_exact_mut(8) {
                let value = match next() % 4 {
                    0 => code[(next() % 3) as usize] + next() % 0x200,
                    1 => sp + next() % 8192,
                    _ => next(),
                };
                word.copy_from_slice(&value.to_le_bytes());
            }
            let ip = if round % 2 == 0 { code[round % 3] + next() % 0x100 } else { next() };
            let regs = UserRegisters { ip, sp, bp: sp + next() % 8192 };
            let end = unwinder.unwind(&maps, &mut modules, regs, &stack[..(next() % 4097) as usize], &mut frames);
            assert!(!frames.is_empty() && frames.len() <= MAX_DEPTH, "{end:?} with {} frames", frames.len());
            assert_eq!(frames[0], ip);
        }
    }

    /// A hand-built stack: each frame pointer points at (saved rbp, return address).
    fn frame_pointer_stack(sp: u64, frames: &[(u64, u64)]) -> Vec<u8> {
        let mut stack = vec![0u8; 0x100];
        for &(at, word) in frames {
            let offset = (at - sp) as usize;
            stack[offset..offset + 8].copy_from_slice(&word.to_le_bytes());
        }
        stack
    }

    #[test]
    fn code_without_cfi_unwinds_by_the_frame_pointer_chain() {
        // No file-backed mapping: every pc is "JIT code" with no CFI.
        let maps = ProcessMaps::parse(1, "");
        let sp = 0x7ffd_0000_0000;
        let (rbp0, rbp1, rbp2) = (sp + 0x40, sp + 0x80, sp + 0xc0);
        let stack = frame_pointer_stack(
            sp,
            &[(rbp0, rbp1), (rbp0 + 8, 0x1111), (rbp1, rbp2), (rbp1 + 8, 0x2222), (rbp2, 0), (rbp2 + 8, 0)],
        );
        let regs = UserRegisters { ip: 0x1000, sp, bp: rbp0 };
        let mut frames = Vec::new();
        let mut unwinder = Unwinder::new();
        let end = unwinder.unwind(&maps, &mut ModuleCache::new(), regs, &stack, &mut frames);
        assert_eq!(frames, [0x1000, 0x1111, 0x2222]);
        assert_eq!(end, UnwindEnd::Complete);

        // An rbp below rsp is no frame pointer: nothing beyond the sampled ip.
        let end =
            unwinder.unwind(&maps, &mut ModuleCache::new(), UserRegisters { bp: sp - 16, ..regs }, &stack, &mut frames);
        assert_eq!(frames, [0x1000]);
        assert_eq!(end, UnwindEnd::NoUnwindInfo { address: 0x1000 });

        // A chain leading past the copy needs words the copy does not have.
        let end = unwinder.unwind(&maps, &mut ModuleCache::new(), regs, &stack[..0x80], &mut frames);
        assert_eq!(frames, [0x1000, 0x1111]);
        assert_eq!(end, UnwindEnd::StackCopyEnd);
    }

    #[test]
    fn a_frame_pointer_chain_that_loops_stops_instead_of_cycling() {
        let maps = ProcessMaps::parse(1, "");
        let sp = 0x7ffd_0000_0000;
        let rbp = sp + 0x40;
        // The saved rbp points back at itself: after one step rbp is no longer above rsp, so the
        // chain stops rather than reporting the same frame again.
        let stack = frame_pointer_stack(sp, &[(rbp, rbp), (rbp + 8, 0x1111)]);
        let mut frames = Vec::new();
        let regs = UserRegisters { ip: 0x1000, sp, bp: rbp };
        let end = Unwinder::new().unwind(&maps, &mut ModuleCache::new(), regs, &stack, &mut frames);
        assert_eq!(frames, [0x1000, 0x1111]);
        assert_eq!(end, UnwindEnd::NoUnwindInfo { address: 0x1111 });
    }

    #[test]
    fn outcomes_display_as_stable_labels() {
        assert_eq!(UnwindEnd::Complete.to_string(), "complete");
        assert_eq!(UnwindEnd::NoUnwindInfo { address: 0x1234 }.to_string(), "no_unwind_info");
        assert_eq!(UnwindEnd::Invalid { address: 1 }.to_string(), "invalid");
    }
}
