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

/// rbx, rbp, r12-r15 by register number: what a prologue may write without touching the
/// arguments it passes on.
const CALLEE_SAVED: [u8; 6] = [3, 5, 12, 13, 14, 15];

/// The target of the call a wrapper makes first, when `code` (at `address`) is a prologue the
/// decoder knows, instruction by instruction, followed by `call rel32`: `endbr64`,
/// `sub $imm,%rsp`, `push %reg`, a register-to-register `mov` into a callee-saved register. So
/// the callee gets the wrapper's own arguments. Anything else: `None`, as the wrapper may do
/// work of its own before the call.
pub fn first_call_target(code: &[u8], address: u64) -> Option<u64> {
    let mut at = 0;
    if code.starts_with(&ENDBR64) {
        at += ENDBR64.len();
    }
    for _ in 0..4 {
        let rest = code.get(at..)?;
        match rest {
            [0xe8, ..] => return relative_target(code, at, address),
            // sub $imm8,%rsp / sub $imm32,%rsp
            [0x48, 0x83, 0xec, _, ..] => at += 4,
            [0x48, 0x81, 0xec, _, _, _, _, ..] => at += 7,
            // push %reg (with REX.B for r8..r15)
            [0x50..=0x57, ..] => at += 1,
            [0x41, 0x50..=0x57, ..] => at += 2,
            // mov %reg,%reg (64-bit, register operands only: ModRM mod = 11) saving a value in
            // a callee-saved register; one writing an argument register would change the call.
            [rex @ (0x48 | 0x49 | 0x4c | 0x4d), 0x89, modrm, ..]
                if modrm & 0xc0 == 0xc0 && CALLEE_SAVED.contains(&(((rex & 1) << 3) | (modrm & 7))) =>
            {
                at += 3
            }
            _ => return None,
        }
    }
    None
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
