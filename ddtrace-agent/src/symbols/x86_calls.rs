//! Just enough x86-64 decoding to see through a thin wrapper: a function whose prologue is a
//! stack adjustment and then a call (OpenSSL's `SSL_read_ex` is `sub $8,%rsp; call
//! ssl_read_internal; ...`).
//!
//! Why it matters: a uprobe on an instruction the kernel cannot emulate (such as `sub
//! $imm,%rsp`) runs that instruction out of line and single-steps it, a second trap that costs
//! several microseconds on a virtual machine; `push` and `call` are emulated. The function a
//! wrapper calls usually starts with `push`, so probing it is cheaper, and it serves every
//! wrapper of it at once.

/// `endbr64`: marks indirect-branch targets under CET. It does not touch the stack or argument
/// registers, so a probe placed after it still sees the call's arguments and return address.
pub const ENDBR64: [u8; 4] = [0xf3, 0x0f, 0x1e, 0xfa];

/// The argument registers of the x86-64 calling convention, in order, by register number
/// (rdi, rsi, rdx, rcx, r8, r9).
pub const ARGUMENT_REGISTERS: [u8; 6] = [7, 6, 2, 1, 8, 9];

/// The target of the call a wrapper makes first, when its prologue (see [`forwarded_call`])
/// leaves every argument register as the wrapper got it: the callee gets the wrapper's own
/// arguments. Anything else: `None`, as the wrapper may do work of its own before the call.
pub fn first_call_target(code: &[u8], address: u64) -> Option<u64> {
    let call = forwarded_call(code, address)?;
    ARGUMENT_REGISTERS
        .iter()
        .all(|&register| call.registers[register as usize] == Source::Entry(register))
        .then_some(call.target)
}

/// Where a register's value at a wrapper's call comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The value register `n` held when the wrapper was entered.
    Entry(u8),
    /// Anything else (a constant, a computation).
    Other,
}

/// A wrapper's first call: its target, and where each register (by number: rax 0, rcx 1,
/// rdx 2, rbx 3, rsp 4, rbp 5, rsi 6, rdi 7, r8-r15) got its value at the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardedCall {
    pub target: u64,
    pub registers: [Source; 16],
}

/// Like [`first_call_target`], for wrappers that rearrange their arguments before the call
/// (SQLite's `sqlite3_prepare_v2` is `sub $0x10,%rsp; mov %rcx,%r9; mov $0x80,%ecx; push %r8;
/// xor %r8d,%r8d; call sqlite3LockAndPrepare`): register moves, 32-bit constants, `xor`,
/// `and`/`or` with an immediate, pushes and stack adjustments are followed, so the caller
/// can check which of the wrapper's arguments reach which of the callee's. Anything else
/// (a memory operand, a branch): `None`.
pub fn forwarded_call(code: &[u8], address: u64) -> Option<ForwardedCall> {
    let mut registers: [Source; 16] = std::array::from_fn(|n| Source::Entry(n as u8));
    let mut at = if code.starts_with(&ENDBR64) { ENDBR64.len() } else { 0 };
    for _ in 0..12 {
        let rest = code.get(at..)?;
        // An optional REX prefix: W (64-bit operand), R (extends ModRM.reg), B (extends rm).
        let (rex, body) = match rest {
            [rex @ 0x40..=0x4f, body @ ..] => (*rex, body),
            body => (0, body),
        };
        let prefix = usize::from(rex != 0);
        let reg = |modrm: u8| ((modrm >> 3) & 7) | ((rex & 4) << 1);
        let rm = |modrm: u8| (modrm & 7) | ((rex & 1) << 3);
        match body {
            [0xe8, ..] if rex == 0 => {
                return Some(ForwardedCall { target: relative_target(code, at, address)?, registers })
            }
            // sub $imm8/$imm32,%rsp
            [0x83, 0xec, _, ..] if rex == 0x48 => at += 4,
            [0x81, 0xec, _, _, _, _, ..] if rex == 0x48 => at += 7,
            // push %reg
            [0x50..=0x57, ..] if rex == 0 || rex == 0x41 => at += prefix + 1,
            // mov %reg,%reg (ModRM mod = 11: registers only)
            [0x89, modrm, ..] if modrm & 0xc0 == 0xc0 => {
                let (source, destination) = (reg(*modrm), rm(*modrm));
                if destination == 4 {
                    return None; // the stack pointer: not a prologue we know
                }
                // A 32-bit move (no REX.W) zero-extends: not the 64-bit value passed through.
                registers[destination as usize] =
                    if rex & 0x08 != 0 { registers[source as usize] } else { Source::Other };
                at += prefix + 2;
            }
            // mov $imm32,%r32
            [opcode @ 0xb8..=0xbf, _, _, _, _, ..] if rex & 0x08 == 0 => {
                let destination = (opcode - 0xb8) | ((rex & 1) << 3);
                registers[destination as usize] = Source::Other;
                at += prefix + 5;
            }
            // xor %r,%r (zeroing) / and|or $imm8,%r32 / or $imm8,%r8 (low byte)
            [0x31, modrm, ..] if modrm & 0xc0 == 0xc0 && reg(*modrm) == rm(*modrm) => {
                registers[rm(*modrm) as usize] = Source::Other;
                at += prefix + 2;
            }
            [0x83, modrm, _, ..] if modrm & 0xc0 == 0xc0 && matches!((modrm >> 3) & 7, 1 | 4) => {
                registers[rm(*modrm) as usize] = Source::Other;
                at += prefix + 3;
            }
            [0x80, modrm, _, ..] if modrm & 0xc0 == 0xc0 && (modrm >> 3) & 7 == 1 && rm(*modrm) < 4 => {
                registers[rm(*modrm) as usize] = Source::Other;
                at += prefix + 3;
            }
            _ => return None,
        }
    }
    None
}

/// Whether the kernel runs a uprobe on this first instruction without single-stepping it:
/// x86-64 emulates `push %reg`, `call`/`jmp rel32`, short and near conditional jumps and the
/// one-byte `nop`; everything else (`sub`, `mov`, `lea`...) is copied out of line and
/// single-stepped, a second trap (~7-16 µs on these virtual machines, against ~1 µs).
pub fn emulated_by_uprobes(code: &[u8]) -> bool {
    matches!(
        code,
        [0x50..=0x57, ..]
            | [0x41, 0x50..=0x57, ..]
            | [0xe8 | 0xe9 | 0xeb | 0x90, ..]
            | [0x70..=0x7f, ..]
            | [0x0f, 0x80..=0x8f, ..]
    )
}

/// A name for the first instruction of `code`, for the kinds that matter to uprobes.
pub fn instruction_kind(code: &[u8]) -> &'static str {
    match code {
        [0x50..=0x57, ..] | [0x41, 0x50..=0x57, ..] => "push",
        [0xe8, ..] => "call",
        [0xe9 | 0xeb, ..] => "jmp",
        [0x70..=0x7f, ..] | [0x0f, 0x80..=0x8f, ..] => "conditional jump",
        [0x90, ..] => "nop",
        [0xf3, 0x0f, 0x1e, 0xfa, ..] => "endbr64",
        [0x48, 0x83 | 0x81, 0xec, ..] => "sub from rsp",
        [0x40..=0x4f, 0x89 | 0x8b, ..] | [0x89 | 0x8b, ..] => "mov",
        [0x40..=0x4f, 0x8d, ..] | [0x8d, ..] => "lea",
        _ => "other",
    }
}

/// Whether `code` (at `address`) holds a `call rel32` or `jmp rel32` to `target`: a check that
/// a second function calls what a wrapper was decoded to call. Bytes are scanned without
/// decoding; a false match would need an `e8`/`e9` byte followed by exactly the right offset.
pub fn calls(code: &[u8], address: u64, target: u64) -> bool {
    (0..code.len())
        .filter(|&at| matches!(code[at], 0xe8 | 0xe9))
        .any(|at| relative_target(code, at, address) == Some(target))
}

/// The destination of the `rel32` branch whose opcode byte is at `code[at]`.
fn relative_target(code: &[u8], at: usize, address: u64) -> Option<u64> {
    let offset = i32::from_le_bytes(code.get(at + 1..at + 5)?.try_into().ok()?);
    let next = address.checked_add(at as u64 + 5)?;
    next.checked_add_signed(i64::from(offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Debian's libsqlite3 3.40: `sqlite3_prepare_v2` at 0xbdcb0 and `sqlite3_prepare_v3`.
    const PREPARE_V2: [u8; 22] = [
        0x48, 0x83, 0xec, 0x10, 0x49, 0x89, 0xc9, 0xb9, 0x80, 0, 0, 0, 0x41, 0x50, 0x45, 0x31, 0xc0, 0xe8, 0x4a, 0xfb,
        0xff, 0xff,
    ];
    const PREPARE_V3: [u8; 23] = [
        0x48, 0x83, 0xec, 0x10, 0x83, 0xe1, 0x0f, 0x41, 0x51, 0x80, 0xc9, 0x80, 0x4d, 0x89, 0xc1, 0x45, 0x31, 0xc0,
        0xe8, 0x29, 0xfb, 0xff, 0xff,
    ];

    #[test]
    fn follows_arguments_through_sqlites_prepare_wrappers() {
        let v2 = forwarded_call(&PREPARE_V2, 0xbdcb0).unwrap();
        assert_eq!(v2.target, 0xbd810);
        // db, zSql, nByte pass through; ppStmt (rcx) goes to r9; flags and pOld are constants.
        assert_eq!(v2.registers[7], Source::Entry(7));
        assert_eq!(v2.registers[6], Source::Entry(6));
        assert_eq!(v2.registers[2], Source::Entry(2));
        assert_eq!(v2.registers[9], Source::Entry(1));
        assert_eq!((v2.registers[1], v2.registers[8]), (Source::Other, Source::Other));
        let v3 = forwarded_call(&PREPARE_V3, 0xbdcd0).unwrap();
        assert_eq!(v3.target, 0xbd810);
        assert_eq!(v3.registers[9], Source::Entry(8));
        assert_eq!(v3.registers[1], Source::Other);
        // A memory operand, or the stack pointer rewritten: not followed.
        assert_eq!(forwarded_call(&[0x48, 0x8b, 0x07, 0xe8, 0, 0, 0, 0], 0), None);
        assert_eq!(forwarded_call(&[0x48, 0x89, 0xfc, 0xe8, 0, 0, 0, 0], 0), None);
        assert_eq!(forwarded_call(&PREPARE_V2[..10], 0xbdcb0), None);
        // mov %ecx,%r9d zero-extends: r9 does not hold the 64-bit rcx.
        let narrow = forwarded_call(&[0x41, 0x89, 0xc9, 0xe8, 0, 0, 0, 0], 0).unwrap();
        assert_eq!(narrow.registers[9], Source::Other);
    }

    #[test]
    fn tells_emulated_first_instructions_from_single_stepped_ones() {
        assert!(emulated_by_uprobes(&[0x41, 0x57])); // push %r15
        assert!(emulated_by_uprobes(&[0x55])); // push %rbp
        assert!(emulated_by_uprobes(&[0xe8, 0, 0, 0, 0]));
        assert!(!emulated_by_uprobes(&PREPARE_V2)); // sub $0x10,%rsp
        assert!(!emulated_by_uprobes(&[0x48, 0x8d, 0x05, 0, 0, 0, 0])); // lea
        assert!(!emulated_by_uprobes(&[]));
    }

    /// Debian's libssl 3: `SSL_write_ex` at 0x35a50, `sub $0x8,%rsp; call 0x355e0`.
    const SSL_WRITE_EX: [u8; 9] = [0x48, 0x83, 0xec, 0x08, 0xe8, 0x87, 0xfb, 0xff, 0xff];

    #[test]
    fn sees_through_a_stack_adjustment_to_the_call() {
        assert_eq!(first_call_target(&SSL_WRITE_EX, 0x35a50), Some(0x355e0));
    }

    #[test]
    fn accepts_endbr_pushes_and_register_moves_before_the_call() {
        // endbr64; push %rbx; push %r12; mov %rdi,%rbx; call +0x10
        let code = [0xf3, 0x0f, 0x1e, 0xfa, 0x53, 0x41, 0x54, 0x48, 0x89, 0xfb, 0xe8, 0x10, 0, 0, 0];
        assert_eq!(first_call_target(&code, 0x1000), Some(0x1000 + 15 + 0x10));
    }

    #[test]
    fn refuses_a_wrapper_that_works_before_its_call() {
        // sub $0x18,%rsp; mov %fs:0x28,%rax; ... (SSL_write: a stack protector and a check first)
        let code = [0x48, 0x83, 0xec, 0x18, 0x64, 0x48, 0x8b, 0x04, 0x25, 0x28, 0, 0, 0];
        assert_eq!(first_call_target(&code, 0x359c0), None);
        // mov (%rdi),%rax: a memory operand, not a register move.
        assert_eq!(first_call_target(&[0x48, 0x8b, 0x07, 0xe8, 0, 0, 0, 0], 0), None);
        // mov %rsi,%rdi: the callee would get other arguments than the wrapper's.
        assert_eq!(first_call_target(&[0x48, 0x89, 0xf7, 0xe8, 0, 0, 0, 0], 0), None);
        // mov %rsp,%rbp (a frame pointer) is fine.
        assert_eq!(first_call_target(&[0x55, 0x48, 0x89, 0xe5, 0xe8, 0, 0, 0, 0], 0), Some(9));
        // Cut short.
        assert_eq!(first_call_target(&SSL_WRITE_EX[..6], 0x35a50), None);
    }

    #[test]
    fn finds_a_call_to_the_target_anywhere_in_a_function() {
        // Debian's SSL_write calls 0x355e0 from 0x359de (offset 0x1e).
        let mut code = vec![0x90; 0x40];
        code[0x1e..0x23].copy_from_slice(&[0xe8, 0xfd, 0xfb, 0xff, 0xff]);
        assert!(calls(&code, 0x359c0, 0x355e0));
        assert!(!calls(&code, 0x359c0, 0x355f0));
        assert!(!calls(&code[..0x20], 0x359c0, 0x355e0), "a call cut by the end of the code");
    }
}
