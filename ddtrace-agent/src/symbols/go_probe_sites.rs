//! Where probes go in a Go function: never a uretprobe (Go moves goroutine stacks and walks
//! their frames: a return address swapped for the kernel's trampoline kills the program), and
//! no single-step where an instruction the kernel emulates can carry the probe.
//!
//! Why it matters, measured on these VMs with bare perf uprobes: a probe on an emulated
//! instruction (`jcc`, `jmp`, `call rel32`, `push`, `nop`) costs ~0.37 µs; one on any other
//! instruction, `ret` included, is run out of line and single-stepped: ~15 µs, 40 times more.
//!
//! - **Entry.** A Go function starts with its stack check, `CMPQ SP, 16(R14)` (after a `LEAQ
//!   -n(SP), R12` for big frames), then `JBE` to the code that grows the stack and starts the
//!   function again. The `JBE` is emulated and sees every argument register as the call left it,
//!   so the probe goes there, and counts only when the branch is not taken: a call that grows
//!   its stack passes the check twice, and is one call.
//! - **Return.** Go's compiler ends each return path with a tail such as `MOVQ 0x20(SP), AX;
//!   MOVQ 0x60(SP), BP; ADDQ $0x68, SP; RET`, reached by jumps. Instead of the `RET`, the probes
//!   go on the jumps into the tail (emulated), each counting only when it jumps there, and say
//!   where the result register's value is at that moment (a register, or a slot of the frame),
//!   found by running the tail symbolically. Where the decoder cannot follow a tail (an
//!   instruction it does not model writes the result, a slot whose address was taken is read
//!   after a call, a jump table in the function), the probe goes on that `RET`: correct, dearer.
//!
//! The whole function is decoded with a full x86-64 decoder, from its entry to the next
//! function's (Go puts no data in its text): a probe is never placed inside an instruction.

use std::collections::{HashMap, HashSet};

use iced_x86::{
    Code, Decoder, DecoderOptions, FlowControl, Instruction, InstructionInfoFactory, Mnemonic, OpAccess, OpKind,
    Register,
};

use super::x86_calls;

/// x86 register numbers (rax 0, rcx 1, rdx 2, rbx 3, rsp 4, rbp 5, rsi 6, rdi 7, r8-r15).
pub const RAX: u8 = 0;
pub const RBX: u8 = 3;
const RSP: u8 = 4;

/// The site's probe counts only when the branch at the site goes this way (decided by the
/// flags the kernel saved: the `jcc` has not run yet when the probe fires).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BranchTaken {
    /// The x86 condition code (the low nibble of the `jcc` opcode: 6 is `BE`).
    pub condition: u8,
    pub taken: bool,
}

impl BranchTaken {
    /// The kernel's encoding (`ddtrace_common::GoSiteSpec::only_if`).
    pub fn encoded(self) -> u32 {
        use ddtrace_common::go_site;
        let taken = if self.taken { go_site::WHEN_TAKEN } else { 0 };
        go_site::BRANCH_DECIDES | taken | u32::from(self.condition) & go_site::CONDITION_MASK
    }
}

/// Where a probe goes, and when it counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoSite {
    pub address: u64,
    /// `None`: every time the instruction runs.
    pub only_if: Option<BranchTaken>,
    /// The kernel emulates the instruction (no single-step).
    pub emulated: bool,
}

/// Where the tracked result register's value is when a return site's probe fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultAt {
    /// In this register (x86 number).
    Register(u8),
    /// In the 8 bytes at this offset from the stack pointer.
    Stack(i32),
}

/// A probe standing for one way out of the function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoReturnSite {
    pub site: GoSite,
    pub result: ResultAt,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SiteError {
    #[error("undecodable instruction at {0:#x}")]
    Undecodable(u64),
    #[error("the function has no return")]
    NoReturn,
    #[error("a prologue this agent does not recognise (its entry would be single-stepped)")]
    UnrecognisedPrologue,
}

/// The entry probe's site for the Go function whose code starts `code` at `address`.
pub fn entry_site(code: &[u8], address: u64) -> Result<GoSite, SiteError> {
    let instructions = decode(code.get(..64).unwrap_or(code), address, 3)?;
    let first = instructions.first().ok_or(SiteError::Undecodable(address))?;
    if emulated(code, address, first) {
        return Ok(GoSite { address, only_if: None, emulated: true });
    }
    let check = match instructions.as_slice() {
        [cmp, jbe, ..] if is_stack_check(cmp, Register::RSP) => Some(jbe),
        [lea, cmp, jbe] if is_big_frame_lea(lea) && is_stack_check(cmp, Register::R12) => Some(jbe),
        _ => None,
    };
    match check {
        Some(jbe) if matches!(jbe.code(), Code::Jbe_rel8_64 | Code::Jbe_rel32_64) && emulated(code, address, jbe) => {
            Ok(GoSite {
                address: jbe.ip(),
                only_if: Some(BranchTaken { condition: condition_code(jbe), taken: false }),
                emulated: true,
            })
        }
        _ => Ok(GoSite { address, only_if: None, emulated: false }),
    }
}

/// [`entry_site`], refused unless the kernel emulates it: a site the analysis did not recognise
/// may also be passed twice by a call that grows its stack (data reported twice).
pub fn emulated_entry_site(code: &[u8], address: u64) -> Result<GoSite, SiteError> {
    let site = entry_site(code, address)?;
    if site.emulated {
        Ok(site)
    } else {
        Err(SiteError::UnrecognisedPrologue)
    }
}

/// The return sites of the Go function whose whole code is `code` at `address`, each saying
/// where `result` (an x86 register number: [`RAX`] for a first integer result) is then.
/// Returns whose result is the constant 0 get no site when `skip_zero` (a read that moved
/// nothing has nothing to report).
pub fn return_sites(code: &[u8], address: u64, result: u8, skip_zero: bool) -> Result<Vec<GoReturnSite>, SiteError> {
    let instructions = decode(code, address, usize::MAX)?;
    let function = Function::new(code, address, &instructions);
    let mut sites = Vec::new();
    for (index, instruction) in instructions.iter().enumerate() {
        if instruction.flow_control() != FlowControl::Return {
            continue;
        }
        match function.carried_return(index, result) {
            Some(Carried::Unreachable) => {}
            Some(Carried::Zero) if skip_zero => {}
            Some(Carried::By(carriers)) => sites.extend(carriers),
            Some(Carried::Zero) | None => sites.push(GoReturnSite {
                site: GoSite {
                    address: instruction.ip(),
                    only_if: None,
                    emulated: emulated(code, address, instruction),
                },
                result: ResultAt::Register(result),
            }),
        }
    }
    if instructions.iter().all(|i| i.flow_control() != FlowControl::Return) {
        return Err(SiteError::NoReturn);
    }
    Ok(sites)
}

/// The one direct call the function makes to `callee`, as a site (a `call rel32`: emulated),
/// or `None` when it makes none or several.
pub fn only_call_to(code: &[u8], address: u64, callee: u64) -> Result<Option<GoSite>, SiteError> {
    let instructions = decode(code, address, usize::MAX)?;
    let mut calls = instructions
        .iter()
        .filter(|i| i.flow_control() == FlowControl::Call && i.near_branch_target() == callee && i.len() == 5);
    let (Some(call), None) = (calls.next(), calls.next()) else { return Ok(None) };
    Ok(emulated(code, address, call).then_some(GoSite { address: call.ip(), only_if: None, emulated: true }))
}

/// Whether `register` holds, at the call at `call`, what the function loads from its frame
/// slot `slot` (an argument's spill, see [`spilled_argument`]) on the straight way to the call:
/// the copy's destination is the caller's buffer, not some other copy's.
pub fn call_argument_from_slot(code: &[u8], address: u64, call: u64, register: u8, slot: i32) -> Result<bool, SiteError> {
    let instructions = decode(code, address, usize::MAX)?;
    let function = Function::new(code, address, &instructions);
    let Some(at) = instructions.iter().position(|i| i.ip() == call) else { return Ok(false) };
    let mut info = InstructionInfoFactory::new();
    for index in (0..at).rev().take(32) {
        let instruction = &instructions[index];
        // Control may reach what follows from elsewhere: the value is not this way's alone.
        if function.targets.contains(&instructions[index + 1].ip()) {
            return Ok(false);
        }
        if matches!(
            instruction.flow_control(),
            FlowControl::UnconditionalBranch | FlowControl::Return | FlowControl::IndirectBranch | FlowControl::Call
        ) {
            return Ok(false);
        }
        let writes = info.info(instruction).used_registers().iter().any(|used| {
            register_number(used.register()) == Some(register)
                && !matches!(used.access(), OpAccess::Read | OpAccess::CondRead | OpAccess::NoMemAccess)
        });
        if writes {
            return Ok(matches!(model(instruction), Step::Load { to, offset } if to == register && offset == i64::from(slot)));
        }
    }
    Ok(false)
}

/// Where the function keeps its argument `register` (an x86 number; RAX holds a method's
/// receiver) for its whole body: the offset from the body's stack pointer of the slot its
/// prologue spills it to, when that store is the slot's only write and no address near the
/// slot is ever formed. `None` otherwise.
pub fn spilled_argument(code: &[u8], address: u64, register: u8) -> Result<Option<i32>, SiteError> {
    let instructions = decode(code, address, usize::MAX)?;
    let function = Function::new(code, address, &instructions);
    let mut spill = None;
    // Where the return address is from the body's stack pointer: what the prologue took off SP.
    let mut return_address: i64 = 0;
    for (index, instruction) in instructions.iter().enumerate() {
        let stack_check = index < 3 && matches!(instruction.code(), Code::Jbe_rel8_64 | Code::Jbe_rel32_64);
        if instruction.flow_control() != FlowControl::Next && !stack_check {
            break; // the prologue ends at its first branch or call
        }
        match model(instruction) {
            Step::MoveStack(by) => return_address -= by,
            Step::Store { offset, from } if from == register && spill.is_none() => spill = Some(offset),
            _ if instruction.mnemonic() == Mnemonic::Push => return_address += 8,
            _ => {}
        }
    }
    let Some(offset) = spill else { return Ok(None) };
    // Arguments are spilled above the return address, out of reach of any local's address;
    // only an address formed up there (an argument's own) could reach the slot.
    let args_taken = match &function.taken_addresses {
        None => true,
        Some(addresses) => addresses.iter().any(|&taken| taken >= return_address),
    };
    if offset < return_address + 8 || args_taken {
        return Ok(None);
    }
    let mut info = InstructionInfoFactory::new();
    let writes = instructions
        .iter()
        .filter(|instruction| {
            info.info(instruction).used_memory().iter().any(|memory| {
                let written = !matches!(memory.access(), OpAccess::Read | OpAccess::CondRead | OpAccess::NoMemAccess);
                let at = memory.displacement() as i64;
                let size = memory.memory_size().size().max(1) as i64;
                written
                    && memory.base() == Register::RSP
                    && memory.index() == Register::None
                    && at < offset + 8
                    && offset < at + size
            })
        })
        .count();
    if writes != 1 {
        return Ok(None);
    }
    Ok(i32::try_from(offset).ok())
}

/// How one `RET` is carried.
enum Carried {
    /// By these emulated jumps into its tail.
    By(Vec<GoReturnSite>),
    /// The result is the constant 0 on this way out.
    Zero,
    /// Nothing reaches the tail.
    Unreachable,
}

/// Most jumps that may carry one return; a tail reached by more gets its `RET` probed.
const MAX_CARRIERS: usize = 8;

struct Function<'a> {
    code: &'a [u8],
    address: u64,
    instructions: &'a [Instruction],
    /// Addresses direct jumps go to.
    targets: HashSet<u64>,
    /// A jump whose target the code does not say (a jump table): every tail may be entered
    /// from it, so none is carried.
    indirect_jump: bool,
    /// Offsets from the stack pointer whose address the function forms (`LEAQ d(SP), r`):
    /// what a call may write through. `None`: the stack pointer itself is copied.
    taken_addresses: Option<Vec<i64>>,
}

impl<'a> Function<'a> {
    fn new(code: &'a [u8], address: u64, instructions: &'a [Instruction]) -> Self {
        let mut targets = HashSet::new();
        let mut indirect_jump = false;
        let mut taken = Some(Vec::new());
        for instruction in instructions {
            match instruction.flow_control() {
                FlowControl::UnconditionalBranch | FlowControl::ConditionalBranch => {
                    targets.insert(instruction.near_branch_target());
                }
                FlowControl::IndirectBranch => indirect_jump = true,
                _ => {}
            }
            if let (Some(addresses), Some(escape)) = (taken.as_mut(), stack_address_taken(instruction)) {
                match escape {
                    Escape::At(offset) => addresses.push(offset),
                    Escape::Everything => taken = None,
                }
            }
        }
        Self { code, address, instructions, targets, indirect_jump, taken_addresses: taken }
    }

    /// The jumps that carry the return at `ret` (an index), or `None` when its `RET` must be
    /// probed itself.
    fn carried_return(&self, ret: usize, result: u8) -> Option<Carried> {
        if self.indirect_jump {
            return None;
        }
        // The tail: back from the RET to where control arrives by jumps, or falls in from a
        // conditional jump (counted when not taken); anything else falling in extends the tail.
        let mut start = ret;
        let fall_through = loop {
            let previous = &self.instructions[start.checked_sub(1)?];
            let targeted = self.targets.contains(&self.instructions[start].ip());
            match previous.flow_control() {
                FlowControl::UnconditionalBranch
                | FlowControl::Return
                | FlowControl::Interrupt
                | FlowControl::Exception
                | FlowControl::IndirectBranch => break None,
                FlowControl::ConditionalBranch => break Some(start - 1),
                // Jumped to and fallen into from an instruction that is no jump: no single
                // carrier stands for that way in.
                _ if targeted => return None,
                _ => start -= 1,
            }
        };
        let entry = self.instructions[start].ip();
        let value = self.run_tail(&self.instructions[start..=ret], result)?;
        let result = match value {
            Value::Register(register) => ResultAt::Register(register),
            Value::Stack(offset) => ResultAt::Stack(i32::try_from(offset).ok()?),
            Value::Constant(0) => return Some(Carried::Zero),
            Value::Constant(_) | Value::Unknown => return None,
        };
        let mut carriers = Vec::new();
        for (index, instruction) in self.instructions.iter().enumerate() {
            let jumps_in = matches!(
                instruction.flow_control(),
                FlowControl::UnconditionalBranch | FlowControl::ConditionalBranch
            ) && instruction.near_branch_target() == entry;
            let falls_in = fall_through == Some(index);
            if !jumps_in && !falls_in {
                continue;
            }
            if !emulated(self.code, self.address, instruction) {
                return None;
            }
            let only_if = (instruction.flow_control() == FlowControl::ConditionalBranch)
                .then(|| BranchTaken { condition: condition_code(instruction), taken: jumps_in });
            // A conditional jump to the very next instruction enters the tail either way.
            let only_if = if jumps_in && falls_in { None } else { only_if };
            carriers.push(GoReturnSite {
                site: GoSite { address: instruction.ip(), only_if, emulated: true },
                result,
            });
        }
        if carriers.is_empty() {
            return Some(Carried::Unreachable);
        }
        (carriers.len() <= MAX_CARRIERS).then_some(Carried::By(carriers))
    }

    /// Runs `tail` from the state a carrier sees (every register and slot its own value) and
    /// says where `result` comes from at its end.
    fn run_tail(&self, tail: &[Instruction], result: u8) -> Option<Value> {
        let mut registers: [Value; 16] = std::array::from_fn(|i| Value::Register(i as u8));
        let mut frame = Frame::default();
        let mut sp: i64 = 0;
        let mut info = InstructionInfoFactory::new();
        for instruction in tail {
            match model(instruction) {
                Step::Ignore => {}
                Step::Copy { to, from } => registers[to as usize] = registers[from as usize],
                Step::Set { to, value } => registers[to as usize] = Value::Constant(value),
                Step::Load { to, offset } => registers[to as usize] = frame.read(sp + offset, |at| self.reachable(at)),
                Step::Store { offset, from } => frame.write(sp + offset, 8, registers[from as usize]),
                Step::StoreConstant { offset, bytes, value } => {
                    for word in 0..bytes / 8 {
                        frame.write(sp + offset + 8 * word, 8, Value::Constant(value));
                    }
                }
                Step::MoveStack(by) => sp += by,
                Step::Pop(to) => {
                    registers[to as usize] = Value::Unknown;
                    sp += 8;
                }
                Step::Call => {
                    for (number, register) in registers.iter_mut().enumerate() {
                        if number as u8 != RSP {
                            *register = Value::Unknown;
                        }
                    }
                    // A slot the compiler reloads after a call is one it keeps live across it,
                    // so never where the callee spills its register arguments (the bottom of
                    // this frame): only slots whose address was formed may have changed.
                    frame.foreign_write(|at| self.reachable(at));
                }
                Step::Other => {
                    let used = info.info(instruction);
                    for register in used.used_registers() {
                        if matches!(register.access(), OpAccess::Read | OpAccess::NoMemAccess | OpAccess::CondRead) {
                            continue;
                        }
                        // Vector and flag registers hold no integer result.
                        let Some(number) = register_number(register.register()) else { continue };
                        if number == RSP {
                            return None; // the stack pointer moved in a way not modelled
                        }
                        registers[number as usize] = Value::Unknown;
                    }
                    for memory in used.used_memory() {
                        if matches!(memory.access(), OpAccess::Read | OpAccess::CondRead | OpAccess::NoMemAccess) {
                            continue;
                        }
                        if memory.base() == Register::RSP && memory.index() != Register::None {
                            return None; // a store anywhere in the frame
                        }
                        if memory.base() == Register::RSP {
                            let size = memory.memory_size().size().max(1) as i64;
                            frame.write(sp + memory.displacement() as i64, size, Value::Unknown);
                        } else {
                            frame.foreign_write(|at| self.reachable(at));
                        }
                    }
                }
            }
        }
        Some(registers[result as usize])
    }

    /// Whether code other than this function's own stack-relative moves may write the slot at
    /// `offset` (from the carrier's stack pointer, which is the body's: Go moves SP only in
    /// the prologue and epilogue).
    fn reachable(&self, offset: i64) -> bool {
        match &self.taken_addresses {
            None => true,
            // An object whose address was formed may be of any size: every slot above it.
            Some(addresses) => addresses.iter().any(|&taken| taken <= offset),
        }
    }
}

/// The frame's slots as a tail run changes them, by offset from the carrier's stack pointer.
#[derive(Default)]
struct Frame {
    /// 8-byte values written whole.
    slots: HashMap<i64, Value>,
    /// Byte ranges written with values not followed.
    clobbered: Vec<(i64, i64)>,
    /// A call or a store through a pointer happened: slots reachable by pointers are unknown.
    foreign: bool,
}

impl Frame {
    fn write(&mut self, at: i64, size: i64, value: Value) {
        self.slots.retain(|&offset, _| offset + 8 <= at || offset >= at + size);
        if size == 8 && value != Value::Unknown {
            self.slots.insert(at, value);
        } else {
            self.clobbered.push((at, at + size));
        }
    }

    fn read(&self, at: i64, reachable: impl Fn(i64) -> bool) -> Value {
        if let Some(value) = self.slots.get(&at) {
            return *value;
        }
        // Part of a slot the tail wrote whole: not followed.
        if self.slots.keys().any(|&offset| offset < at + 8 && at < offset + 8) {
            return Value::Unknown;
        }
        let clobbered = self.clobbered.iter().any(|&(start, end)| start < at + 8 && at < end);
        if clobbered || self.foreign && reachable(at) {
            Value::Unknown
        } else {
            Value::Stack(at)
        }
    }

    fn foreign_write(&mut self, reachable: impl Fn(i64) -> bool) {
        self.foreign = true;
        for (offset, value) in self.slots.iter_mut() {
            if reachable(*offset) {
                *value = Value::Unknown;
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Value {
    Register(u8),
    Stack(i64),
    Constant(i64),
    Unknown,
}

/// What one tail instruction does, as far as the tail's run needs.
enum Step {
    Ignore,
    Copy { to: u8, from: u8 },
    Set { to: u8, value: i64 },
    Load { to: u8, offset: i64 },
    Store { offset: i64, from: u8 },
    StoreConstant { offset: i64, bytes: i64, value: i64 },
    MoveStack(i64),
    Pop(u8),
    Call,
    Other,
}

fn model(instruction: &Instruction) -> Step {
    let register = |operand: u32| register_number(instruction.op_register(operand));
    let stack_slot = || {
        (instruction.memory_base() == Register::RSP && instruction.memory_index() == Register::None)
            .then(|| instruction.memory_displacement64() as i64)
    };
    let is_64 = |operand: u32| instruction.op_register(operand).size() == 8;
    match (instruction.mnemonic(), instruction.op_count()) {
        (Mnemonic::Nop, _) => Step::Ignore,
        (Mnemonic::Call, _) => Step::Call,
        (Mnemonic::Mov, 2) => match (instruction.op0_kind(), instruction.op1_kind()) {
            (OpKind::Register, OpKind::Register) if is_64(0) && is_64(1) => match (register(0), register(1)) {
                (Some(to), Some(from)) if to != RSP && from != RSP => Step::Copy { to, from },
                _ => Step::Other,
            },
            (OpKind::Register, OpKind::Memory) if is_64(0) => match (register(0), stack_slot()) {
                (Some(to), Some(offset)) if to != RSP => Step::Load { to, offset },
                _ => Step::Other,
            },
            (OpKind::Memory, OpKind::Register) if is_64(1) => match (stack_slot(), register(1)) {
                (Some(offset), Some(from)) if from != RSP => Step::Store { offset, from },
                _ => Step::Other,
            },
            (OpKind::Memory, OpKind::Immediate32to64) => match stack_slot() {
                Some(offset) => Step::StoreConstant { offset, bytes: 8, value: instruction.immediate(1) as i64 },
                None => Step::Other,
            },
            (OpKind::Register, OpKind::Immediate32 | OpKind::Immediate32to64 | OpKind::Immediate64) => {
                match register(0) {
                    Some(to) if to != RSP => Step::Set { to, value: instruction.immediate(1) as i64 },
                    _ => Step::Other,
                }
            }
            _ => Step::Other,
        },
        // XORL AX, AX: the whole register zeroed.
        (Mnemonic::Xor, 2)
            if instruction.op0_kind() == OpKind::Register
                && instruction.op1_kind() == OpKind::Register
                && instruction.op0_register() == instruction.op1_register()
                && instruction.op0_register().size() >= 4 =>
        {
            match register(0) {
                Some(to) if to != RSP => Step::Set { to, value: 0 },
                _ => Step::Other,
            }
        }
        // MOVUPS X15, d(SP): X15 is always zero in Go's register ABI.
        (Mnemonic::Movups, 2)
            if instruction.op0_kind() == OpKind::Memory && instruction.op1_register() == Register::XMM15 =>
        {
            match stack_slot() {
                Some(offset) => Step::StoreConstant { offset, bytes: 16, value: 0 },
                None => Step::Other,
            }
        }
        (Mnemonic::Add | Mnemonic::Sub, 2)
            if instruction.op0_register() == Register::RSP && instruction.op1_kind() == OpKind::Immediate8to64
                || instruction.op0_register() == Register::RSP && instruction.op1_kind() == OpKind::Immediate32to64 =>
        {
            let by = instruction.immediate(1) as i64;
            Step::MoveStack(if instruction.mnemonic() == Mnemonic::Add { by } else { -by })
        }
        (Mnemonic::Pop, 1) if instruction.op0_kind() == OpKind::Register => match register(0) {
            Some(to) if to != RSP => Step::Pop(to),
            _ => Step::Other,
        },
        (Mnemonic::Ret, _) => Step::Ignore,
        _ => Step::Other,
    }
}

/// Where an instruction makes the stack's address known to other code.
enum Escape {
    /// `LEAQ d(SP), r` (not the frame pointer's own `LEAQ d(SP), BP`).
    At(i64),
    /// The stack pointer copied or computed with.
    Everything,
}

fn stack_address_taken(instruction: &Instruction) -> Option<Escape> {
    if instruction.mnemonic() == Mnemonic::Lea {
        if instruction.memory_base() != Register::RSP {
            return None;
        }
        if instruction.op0_register() == Register::RBP || instruction.memory_index() != Register::None {
            return (instruction.op0_register() != Register::RBP).then_some(Escape::Everything);
        }
        return Some(Escape::At(instruction.memory_displacement64() as i64));
    }
    // The frame pointer's own `MOVQ SP, BP` (after `PUSHQ BP`, Go 1.21+): BP is never written
    // through.
    if instruction.mnemonic() == Mnemonic::Mov
        && instruction.op0_kind() == OpKind::Register
        && instruction.op0_register() == Register::RBP
        && instruction.op1_kind() == OpKind::Register
        && instruction.op1_register() == Register::RSP
    {
        return None;
    }
    // SP as a plain register operand, other than moving it by a constant or comparing it.
    let uses_sp = (0..instruction.op_count())
        .any(|operand| instruction.op_kind(operand) == OpKind::Register && instruction.op_register(operand) == Register::RSP);
    if !uses_sp {
        return None;
    }
    match instruction.mnemonic() {
        Mnemonic::Add | Mnemonic::Sub | Mnemonic::Cmp | Mnemonic::Push | Mnemonic::Pop => None,
        _ => Some(Escape::Everything),
    }
}

fn decode(code: &[u8], address: u64, limit: usize) -> Result<Vec<Instruction>, SiteError> {
    let mut decoder = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
    let mut instructions = Vec::new();
    while decoder.can_decode() && instructions.len() < limit {
        let instruction = decoder.decode();
        if instruction.is_invalid() {
            // Go pads between functions with INT3; garbage past a table's bound ends the walk.
            if instructions.is_empty() {
                return Err(SiteError::Undecodable(instruction.ip()));
            }
            break;
        }
        instructions.push(instruction);
    }
    Ok(instructions)
}

fn emulated(code: &[u8], address: u64, instruction: &Instruction) -> bool {
    let start = (instruction.ip() - address) as usize;
    code.get(start..start + instruction.len()).is_some_and(x86_calls::emulated_by_uprobes)
}

/// `CMPQ SP, 16(R14)` (or `R12` after a big frame's `LEAQ`): `g.stackguard0` compared.
fn is_stack_check(instruction: &Instruction, register: Register) -> bool {
    instruction.mnemonic() == Mnemonic::Cmp
        && instruction.memory_base() == Register::R14
        && instruction.memory_displacement64() == 16
        && (0..instruction.op_count()).any(|operand| {
            instruction.op_kind(operand) == OpKind::Register && instruction.op_register(operand) == register
        })
}

/// `LEAQ -n(SP), R12`: a big frame's stack check compares where SP will be.
fn is_big_frame_lea(instruction: &Instruction) -> bool {
    instruction.mnemonic() == Mnemonic::Lea
        && instruction.op0_register() == Register::R12
        && instruction.memory_base() == Register::RSP
}

/// The condition nibble of a `jcc` (`0x7c`/`0x0f 0x8c`: 0xc, `L`).
fn condition_code(instruction: &Instruction) -> u8 {
    // iced's condition codes are named, not numbered; the encoding's nibble is what the kernel
    // program evaluates against the flags, so it is read from the instruction's code.
    use iced_x86::ConditionCode as C;
    match instruction.condition_code() {
        C::o => 0,
        C::no => 1,
        C::b => 2,
        C::ae => 3,
        C::e => 4,
        C::ne => 5,
        C::be => 6,
        C::a => 7,
        C::s => 8,
        C::ns => 9,
        C::p => 10,
        C::np => 11,
        C::l => 12,
        C::ge => 13,
        C::le => 14,
        C::g => 15,
        _ => 0xff,
    }
}

fn register_number(register: Register) -> Option<u8> {
    let full = register.full_register();
    let number = match full {
        Register::RAX => 0,
        Register::RCX => 1,
        Register::RDX => 2,
        Register::RBX => 3,
        Register::RSP => 4,
        Register::RBP => 5,
        Register::RSI => 6,
        Register::RDI => 7,
        Register::R8 => 8,
        Register::R9 => 9,
        Register::R10 => 10,
        Register::R11 => 11,
        Register::R12 => 12,
        Register::R13 => 13,
        Register::R14 => 14,
        Register::R15 => 15,
        _ => return None,
    };
    Some(number)
}

#[cfg(test)]
#[path = "go_probe_sites_tests.rs"]
mod tests;
