//! Call frame information (CFI) of one ELF file: for an ELF virtual address, the rules that
//! recover the caller's registers (canonical frame address, return address, saved rbp).
//!
//! Parsed once per module (modules are cached per build id and shared by every process mapping
//! them): the section bytes are kept, plus a sorted `(initial address, FDE offset)` index built
//! from `.eh_frame_hdr`'s binary search table when the file has one, else by walking the section
//! once. A lookup is then a binary search and the parse of one FDE and its CIE; nothing per
//! sample scans a whole section.
//!
//! `.eh_frame` is what every x86-64 ELF carries for exception unwinding; `.debug_frame` (only in
//! unstripped files, and usually only for code built without `-fasynchronous-unwind-tables`) is
//! consulted for addresses `.eh_frame` does not cover.

use std::{fmt, ops::Range, sync::Mutex};

use rustc_hash::FxHashMap;

use gimli::{
    BaseAddresses, CieOrFde, DebugFrame, EhFrame, EhFrameHdr, EndianSlice, LittleEndian, Register, UnwindSection,
};
use object::{Object, ObjectSection};

type Slice<'a> = EndianSlice<'a, LittleEndian>;

/// The reusable state of evaluating CFI rows; allocate one per unwinder, not per lookup.
pub type UnwindContext = gimli::UnwindContext<usize>;

/// DWARF register number of rbp on x86-64.
pub const RBP: u16 = 6;
/// DWARF register number of rsp on x86-64.
pub const RSP: u16 = 7;
/// DWARF register number of the return address (rip) on x86-64.
pub const RA: u16 = 16;

/// Pointer size of the only architecture the unwinder supports (x86-64).
const ADDRESS_SIZE: u8 = 8;

/// How many index entries before the binary search's hit are tried: FDEs rarely overlap, but a
/// zero-length or discarded FDE can share a start address with the real one.
const LOOK_BACK: usize = 4;

/// Why no rule could be found for an address.
#[derive(Debug, thiserror::Error)]
pub enum CfiError {
    #[error("no call frame information covers address {vaddr:#x}")]
    NotCovered { vaddr: u64 },
    #[error("malformed call frame information for address {vaddr:#x}: {source}")]
    Malformed { vaddr: u64, source: gimli::Error },
}

/// A DWARF expression of a CFI row, borrowed from the module's section bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnwindExpression<'a> {
    pub bytecode: &'a [u8],
    pub encoding: gimli::Encoding,
}

/// How to compute the canonical frame address (the caller's stack pointer at the call site).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CfaRule<'a> {
    /// `register + offset`, the DWARF register numbering ([`RSP`], [`RBP`], ...).
    RegisterOffset { register: u16, offset: i64 },
    /// The value of the expression (PLT stubs, signal trampolines).
    Expression(UnwindExpression<'a>),
}

/// How to recover one register of the caller, as DWARF defines the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterRule<'a> {
    /// No rule, or not recoverable. For the return address this marks the outermost frame; for a
    /// callee-saved register with no rule it means the register was not touched.
    Undefined,
    SameValue,
    /// Saved at `CFA + offset`.
    Offset(i64),
    /// Is `CFA + offset`.
    ValOffset(i64),
    /// Is in another register.
    Register(u16),
    /// Saved at the address the expression computes (with the CFA pushed first).
    Expression(UnwindExpression<'a>),
    /// Is the value the expression computes (with the CFA pushed first).
    ValExpression(UnwindExpression<'a>),
    /// Architecture-defined or constant rules, which x86-64 code does not use.
    Unsupported,
}

/// The rules of one CFI row, reduced to what an x86-64 unwinder tracking rip, rsp and rbp needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameRule<'a> {
    pub cfa: CfaRule<'a>,
    pub return_address: RegisterRule<'a>,
    pub rbp: RegisterRule<'a>,
    /// Usually `Undefined` (the caller's rsp is the CFA); signal trampolines restore it from the
    /// saved context.
    pub rsp: RegisterRule<'a>,
    /// The FDE is a signal trampoline's (`S` augmentation): the caller's pc was interrupted, not
    /// a return address, so it must be looked up as is rather than minus one.
    pub signal_frame: bool,
}

impl FrameRule<'_> {
    /// The same rule, when it holds no expression borrowed from the section (nearly every row
    /// of compiled code): what the lookup cache can keep.
    fn without_expressions(&self) -> Option<FrameRule<'static>> {
        let register = |rule: &RegisterRule<'_>| -> Option<RegisterRule<'static>> {
            Some(match *rule {
                RegisterRule::Undefined => RegisterRule::Undefined,
                RegisterRule::SameValue => RegisterRule::SameValue,
                RegisterRule::Offset(offset) => RegisterRule::Offset(offset),
                RegisterRule::ValOffset(offset) => RegisterRule::ValOffset(offset),
                RegisterRule::Register(other) => RegisterRule::Register(other),
                RegisterRule::Unsupported => RegisterRule::Unsupported,
                RegisterRule::Expression(_) | RegisterRule::ValExpression(_) => return None,
            })
        };
        let cfa = match self.cfa {
            CfaRule::RegisterOffset { register, offset } => CfaRule::RegisterOffset { register, offset },
            CfaRule::Expression(_) => return None,
        };
        Some(FrameRule {
            cfa,
            return_address: register(&self.return_address)?,
            rbp: register(&self.rbp)?,
            rsp: register(&self.rsp)?,
            signal_frame: self.signal_frame,
        })
    }
}

impl FrameRule<'static> {
    /// The rule of a PLT entry without CFI (lld emits none): the return address is on top of the
    /// stack, as on entry to any function. Inside a lazy-binding entry after its `push` this is
    /// off by one word; GNU ld's own CFI for `.plt` covers that case with an expression.
    pub const PLT: Self = Self {
        cfa: CfaRule::RegisterOffset { register: RSP, offset: 8 },
        return_address: RegisterRule::Offset(-8),
        rbp: RegisterRule::Undefined,
        rsp: RegisterRule::Undefined,
        signal_frame: false,
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    EhFrame,
    DebugFrame,
}

/// One CFI section: its bytes, the base addresses its pointers are relative to, and the index.
struct CfiSection {
    kind: Kind,
    data: Box<[u8]>,
    bases: BaseAddresses,
    /// `(initial address, offset of the FDE in data)`, sorted by address.
    index: Vec<(u64, u32)>,
}

impl CfiSection {
    fn eh_frame(&self) -> EhFrame<Slice<'_>> {
        let mut section = EhFrame::new(&self.data, LittleEndian);
        section.set_address_size(ADDRESS_SIZE);
        section
    }

    fn debug_frame(&self) -> DebugFrame<Slice<'_>> {
        let mut section = DebugFrame::new(&self.data, LittleEndian);
        section.set_address_size(ADDRESS_SIZE);
        section
    }

    fn find_rule(&self, ctx: &mut UnwindContext, vaddr: u64) -> gimli::Result<Option<FrameRule<'_>>> {
        match self.kind {
            Kind::EhFrame => find_rule_in(&self.eh_frame(), &self.bases, &self.index, ctx, vaddr),
            Kind::DebugFrame => find_rule_in(&self.debug_frame(), &self.bases, &self.index, ctx, vaddr),
        }
    }
}

/// The call frame information of one ELF file.
pub struct CallFrameInfo {
    eh_frame: Option<CfiSection>,
    debug_frame: Option<CfiSection>,
    /// `.plt`, `.plt.sec` and `.plt.got`: code that may have no FDE but a known frame shape.
    plt: Vec<Range<u64>>,
    /// Rules already found, by address: a profiler meets the same few thousand return
    /// addresses at every sample, and parsing an FDE and running its row program each time was
    /// most of the unwinder's cost.
    rules: Mutex<FxHashMap<u64, FrameRule<'static>>>,
}

/// Rules cached per module; the cache starts over beyond this.
const RULE_CACHE_LIMIT: usize = 64 * 1024;

impl fmt::Debug for CallFrameInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = |s: &Option<CfiSection>| s.as_ref().map(|s| s.index.len());
        f.debug_struct("CallFrameInfo")
            .field("eh_frame_fdes", &count(&self.eh_frame))
            .field("debug_frame_fdes", &count(&self.debug_frame))
            .field("plt", &self.plt)
            .finish()
    }
}

impl CallFrameInfo {
    /// Reads the CFI sections of `file`; `None` when it has neither `.eh_frame`, `.debug_frame`
    /// nor a PLT (then only the frame-pointer fallback can unwind its code).
    pub fn parse(file: &object::File<'_>) -> Option<Self> {
        let address = |name: &str| file.section_by_name(name).map(|s| s.address());
        let mut bases = BaseAddresses::default();
        if let Some(text) = address(".text") {
            bases = bases.set_text(text);
        }
        if let Some(got) = address(".got") {
            bases = bases.set_got(got);
        }
        let eh_frame = file.section_by_name(".eh_frame").and_then(|section| {
            let data: Box<[u8]> = section.data().ok().filter(|d| !d.is_empty())?.into();
            let mut bases = bases.clone().set_eh_frame(section.address());
            let hdr = file.section_by_name(".eh_frame_hdr");
            if let Some(hdr) = &hdr {
                bases = bases.set_eh_frame_hdr(hdr.address());
            }
            let mut cfi = CfiSection { kind: Kind::EhFrame, data, bases, index: Vec::new() };
            let from_hdr = hdr.and_then(|hdr| hdr_index(hdr.data().ok()?, &cfi.bases));
            cfi.index = match from_hdr {
                Some(index) => index,
                None => walk_index(&cfi.eh_frame(), &cfi.bases),
            };
            Some(cfi)
        });
        let debug_frame = file.section_by_name(".debug_frame").and_then(|section| {
            // Compressed sections (SHF_COMPRESSED) fail here: the object crate is built without
            // decompression, and files shipped that way are rare on production hosts.
            let data: Box<[u8]> = section.uncompressed_data().ok().filter(|d| !d.is_empty())?.into();
            let mut cfi = CfiSection { kind: Kind::DebugFrame, data, bases: bases.clone(), index: Vec::new() };
            cfi.index = walk_index(&cfi.debug_frame(), &cfi.bases);
            Some(cfi)
        });
        let plt: Vec<Range<u64>> = file
            .sections()
            .filter(|s| s.name().is_ok_and(|n| n.starts_with(".plt")) && s.size() > 0)
            .map(|s| s.address()..s.address() + s.size())
            .collect();
        if eh_frame.is_none() && debug_frame.is_none() && plt.is_empty() {
            return None;
        }
        Some(Self { eh_frame, debug_frame, plt, rules: Mutex::default() })
    }

    /// How many FDEs the index knows (`.eh_frame` and `.debug_frame` together).
    pub fn fde_count(&self) -> usize {
        [&self.eh_frame, &self.debug_frame].iter().filter_map(|s| s.as_ref()).map(|s| s.index.len()).sum()
    }

    /// Whether `vaddr` lies in a PLT section.
    pub fn is_plt(&self, vaddr: u64) -> bool {
        self.plt.iter().any(|r| r.contains(&vaddr))
    }

    /// The unwind rules at `vaddr`: from `.eh_frame`, else `.debug_frame`, else (in a PLT section
    /// without CFI) [`FrameRule::PLT`].
    pub fn find_rule<'a>(&'a self, ctx: &mut UnwindContext, vaddr: u64) -> Result<FrameRule<'a>, CfiError> {
        if let Some(rule) = self.rules.lock().ok().and_then(|rules| rules.get(&vaddr).copied()) {
            return Ok(rule);
        }
        let mut malformed = None;
        for section in [&self.eh_frame, &self.debug_frame].into_iter().flatten() {
            match section.find_rule(ctx, vaddr) {
                Ok(Some(rule)) => {
                    if let (Some(kept), Ok(mut rules)) = (rule.without_expressions(), self.rules.lock()) {
                        if rules.len() >= RULE_CACHE_LIMIT {
                            rules.clear();
                        }
                        rules.insert(vaddr, kept);
                    }
                    return Ok(rule);
                }
                Ok(None) => {}
                // A broken entry in one section should not hide a good one in the other.
                Err(source) => malformed = Some(source),
            }
        }
        if self.is_plt(vaddr) {
            return Ok(FrameRule::PLT);
        }
        Err(match malformed {
            Some(source) => CfiError::Malformed { vaddr, source },
            None => CfiError::NotCovered { vaddr },
        })
    }
}

/// The index from `.eh_frame_hdr`'s binary search table, `None` when the header has no table.
fn hdr_index(hdr: &[u8], bases: &BaseAddresses) -> Option<Vec<(u64, u32)>> {
    let parsed = EhFrameHdr::new(hdr, LittleEndian).parse(bases, ADDRESS_SIZE).ok()?;
    let table = parsed.table()?;
    let mut entries = table.iter(bases);
    let mut index = Vec::new();
    while let Some((start, fde)) = entries.next().ok()? {
        let offset = table.pointer_to_offset(fde).ok()?.0;
        index.push((start.direct().ok()?, u32::try_from(offset).ok()?));
    }
    // The linker sorts the table; sorting again is linear then, and protects the binary search.
    index.sort_unstable();
    Some(index)
}

/// The index built by walking every entry of a section once.
fn walk_index<'a, S: UnwindSection<Slice<'a>>>(section: &S, bases: &BaseAddresses) -> Vec<(u64, u32)> {
    let mut entries = section.entries(bases);
    let mut index = Vec::new();
    // A parse error leaves the iterator with no way to find the next entry: keep what came before.
    while let Ok(Some(entry)) = entries.next() {
        let CieOrFde::Fde(partial) = entry else { continue };
        let offset = partial.offset();
        let Ok(fde) = partial.parse(S::cie_from_offset) else { continue };
        // Address 0 marks functions the linker discarded (their relocations resolved to nothing).
        if fde.len() == 0 || fde.initial_address() == 0 {
            continue;
        }
        if let Ok(offset) = u32::try_from(offset) {
            index.push((fde.initial_address(), offset));
        }
    }
    index.sort_unstable();
    index
}

fn find_rule_in<'a, S: UnwindSection<Slice<'a>>>(
    section: &S,
    bases: &BaseAddresses,
    index: &[(u64, u32)],
    ctx: &mut UnwindContext,
    vaddr: u64,
) -> gimli::Result<Option<FrameRule<'a>>> {
    let after = index.partition_point(|&(start, _)| start <= vaddr);
    for &(_, offset) in index[..after].iter().rev().take(LOOK_BACK) {
        let fde = section.fde_from_offset(bases, S::Offset::from(offset as usize), S::cie_from_offset)?;
        if !fde.contains(vaddr) {
            continue;
        }
        let encoding = fde.cie().encoding();
        let row = fde.unwind_info_for_address(section, bases, ctx, vaddr)?;
        let expression = |e: &gimli::UnwindExpression<usize>| -> gimli::Result<UnwindExpression<'a>> {
            Ok(UnwindExpression { bytecode: e.get(section)?.0.slice(), encoding })
        };
        let register = |number: u16| -> gimli::Result<RegisterRule<'a>> {
            Ok(match row.register(Register(number)) {
                gimli::RegisterRule::Undefined => RegisterRule::Undefined,
                gimli::RegisterRule::SameValue => RegisterRule::SameValue,
                gimli::RegisterRule::Offset(offset) => RegisterRule::Offset(offset),
                gimli::RegisterRule::ValOffset(offset) => RegisterRule::ValOffset(offset),
                gimli::RegisterRule::Register(Register(other)) => RegisterRule::Register(other),
                gimli::RegisterRule::Expression(e) => RegisterRule::Expression(expression(&e)?),
                gimli::RegisterRule::ValExpression(e) => RegisterRule::ValExpression(expression(&e)?),
                _ => RegisterRule::Unsupported,
            })
        };
        let cfa = match row.cfa() {
            gimli::CfaRule::RegisterAndOffset { register: Register(register), offset } => {
                CfaRule::RegisterOffset { register: *register, offset: *offset }
            }
            gimli::CfaRule::Expression(e) => CfaRule::Expression(expression(e)?),
        };
        return Ok(Some(FrameRule {
            cfa,
            return_address: register(RA)?,
            rbp: register(RBP)?,
            rsp: register(RSP)?,
            signal_frame: fde.is_signal_trampoline(),
        }));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn libc_cfi() -> CallFrameInfo {
        let data = std::fs::read(crate::symbols::symbolize::tests_support::libc_path()).unwrap();
        CallFrameInfo::parse(&object::File::parse(&*data).unwrap()).expect("libc has .eh_frame")
    }

    #[test]
    fn libc_function_entry_has_the_return_address_on_top_of_the_stack() {
        let cfi = libc_cfi();
        assert!(cfi.fde_count() > 1000, "{cfi:?}");
        let maps = crate::symbols::ProcessMaps::read(std::process::id()).unwrap();
        let mut cache = crate::symbols::ModuleCache::new();
        let getpid = maps.normalize(libc::getpid as *const () as u64, &mut cache).unwrap();
        let mut ctx = UnwindContext::new();
        // At a function's first instruction every x86-64 CIE says: CFA = rsp + 8, RA at CFA - 8.
        let rule = cfi.find_rule(&mut ctx, getpid.vaddr).unwrap();
        assert_eq!(rule.cfa, CfaRule::RegisterOffset { register: RSP, offset: 8 });
        assert_eq!(rule.return_address, RegisterRule::Offset(-8));
        assert!(!rule.signal_frame);
    }

    #[test]
    fn addresses_outside_every_fde_are_not_covered() {
        let cfi = libc_cfi();
        let mut ctx = UnwindContext::new();
        assert!(matches!(cfi.find_rule(&mut ctx, 0), Err(CfiError::NotCovered { vaddr: 0 })));
        assert!(matches!(cfi.find_rule(&mut ctx, u64::MAX), Err(CfiError::NotCovered { .. })));
    }
}
