//! TEMPORARY frame-pointer-only unwinder, replaced by the DWARF unwinder (branch `unwinder`).

use std::fmt;

use super::{module::ModuleCache, normalize::ProcessMaps};

/// User registers at the sample.
#[derive(Debug, Clone, Copy)]
pub struct UserRegisters {
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
}

/// Why unwinding stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnwindEnd {
    Complete,
    StackCopyEnd,
    NoUnwindInfo { address: u64 },
    MaxDepth,
    Invalid,
}

impl fmt::Display for UnwindEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

#[derive(Debug, Default)]
pub struct Unwinder;

impl Unwinder {
    pub fn new() -> Self {
        Self
    }

    pub fn unwind(
        &mut self,
        _maps: &ProcessMaps,
        _modules: &mut ModuleCache,
        regs: UserRegisters,
        stack: &[u8],
        out: &mut Vec<u64>,
    ) -> UnwindEnd {
        out.clear();
        out.push(regs.ip);
        let word = |address: u64| -> Option<u64> {
            let offset = address.checked_sub(regs.sp)? as usize;
            let bytes = stack.get(offset..offset + 8)?;
            Some(u64::from_le_bytes(bytes.try_into().ok()?))
        };
        let (mut bp, mut sp) = (regs.bp, regs.sp);
        while out.len() < 128 {
            if bp <= sp {
                return UnwindEnd::Invalid;
            }
            let (Some(next_bp), Some(ra)) = (word(bp), word(bp + 8)) else { return UnwindEnd::StackCopyEnd };
            if ra == 0 {
                return UnwindEnd::Complete;
            }
            out.push(ra);
            sp = bp + 16;
            bp = next_bp;
        }
        UnwindEnd::MaxDepth
    }
}
