use std::path::Path;

use object::{Object, ObjectSection};

use super::*;
use crate::symbols::go_pclntab;

/// `tests/apps/go_http` built stripped by the machine's Go, and the code of function `name`
/// (from its entry to the next function's) with its address.
fn go_function(name: &str) -> (Vec<u8>, u64) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let binary = super::super::go_test_build::build(
        &root,
        &root.join("tests/apps/go_http/main.go"),
        "go-probe-sites",
        true,
    );
    let elf = object::File::parse(&*binary).unwrap();
    let functions = go_pclntab::of_elf(&elf).unwrap();
    let index = functions.iter().position(|f| f.name == name).unwrap_or_else(|| panic!("{name} in the table"));
    let (start, end) = (functions[index].entry, functions[index + 1].entry);
    let text = elf.section_by_name(".text").unwrap();
    let code = text.data_range(start, end - start).unwrap().unwrap().to_vec();
    (code, start)
}

#[test]
fn a_go_function_is_entered_at_its_stack_checks_jump_counted_when_not_growing_the_stack() {
    for name in ["crypto/tls.(*Conn).Read", "crypto/tls.(*Conn).Write"] {
        let (code, address) = go_function(name);
        let site = entry_site(&code, address).unwrap();
        // After CMPQ SP, 16(R14) (4 bytes), or LEAQ -n(SP), R12 and CMPQ R12, 16(R14) (9).
        let offset = (site.address - address) as usize;
        assert!(offset == 4 || offset == 9, "{name}: {offset}");
        assert!(code[offset..].starts_with(&[0x0f, 0x86]) || code[offset] == 0x76, "{name}: a JBE");
        assert_eq!(site.only_if, Some(BranchTaken { condition: 6, taken: false }), "{name}");
        assert!(site.emulated, "{name}");
    }
}

#[test]
fn tls_reads_return_through_emulated_jumps_that_know_where_the_byte_count_is() {
    let (code, address) = go_function("crypto/tls.(*Conn).Read");
    let sites = return_sites(&code, address, RAX, true).unwrap();
    assert!(!sites.is_empty());
    for site in &sites {
        assert!(site.site.emulated, "every return carried by an emulated jump: {site:?}");
        assert!(site.site.address > address && site.site.address < address + code.len() as u64);
        // The byte at the site starts a jump, never the middle of an instruction.
        let byte = code[(site.site.address - address) as usize];
        assert!(matches!(byte, 0x70..=0x7f | 0x0f | 0xeb | 0xe9), "{byte:#x} at {site:?}");
    }
    // Go 1.19's `return n, nil`: n is in a register when the jumps into the tail fire.
    assert!(sites.iter().any(|s| matches!(s.result, ResultAt::Register(_))), "{sites:#?}");
    // The `return 0, ...` ways out need no probe for a read.
    let all = return_sites(&code, address, RAX, false).unwrap();
    assert!(all.len() > sites.len(), "zero-result returns are sites when asked: {} vs {}", all.len(), sites.len());
}

/// Hand-made functions: what cannot be followed gets its `RET` probed.
mod tails {
    use super::*;

    const AT: u64 = 0x1000;

    #[test]
    fn a_jump_into_a_tail_loading_the_result_from_the_frame_carries_it() {
        let code = [
            0x74, 0x02, // je +2 (to the tail)
            0xcc, 0xcc, // int3 padding: not a way in
            0x48, 0x8b, 0x44, 0x24, 0x20, // mov rax, [rsp+0x20]
            0x48, 0x83, 0xc4, 0x28, // add rsp, 0x28
            0xc3, // ret
        ];
        let sites = return_sites(&code, AT, RAX, true).unwrap();
        assert_eq!(
            sites,
            vec![GoReturnSite {
                site: GoSite { address: AT, only_if: Some(BranchTaken { condition: 4, taken: true }), emulated: true },
                result: ResultAt::Stack(0x20),
            }]
        );
    }

    #[test]
    fn a_result_computed_in_the_tail_gets_the_ret_probed() {
        let code = [
            0xeb, 0x01, // jmp +1
            0xcc, // int3
            0x48, 0x01, 0xd8, // add rax, rbx (not modelled: rax unknown)
            0xc3, // ret
        ];
        let sites = return_sites(&code, AT, RAX, true).unwrap();
        assert_eq!(
            sites,
            vec![GoReturnSite {
                site: GoSite { address: AT + 6, only_if: None, emulated: false },
                result: ResultAt::Register(RAX),
            }]
        );
    }

    #[test]
    fn a_jump_table_leaves_every_ret_probed() {
        let code = [
            0xff, 0xe0, // jmp rax
            0x48, 0x89, 0xc8, // mov rax, rcx
            0xc3, // ret
        ];
        let sites = return_sites(&code, AT, RAX, true).unwrap();
        assert_eq!(sites.len(), 1);
        assert_eq!(sites[0].site.address, AT + 5);
    }

    #[test]
    fn a_slot_whose_address_was_taken_is_not_trusted_after_a_call() {
        let code = [
            0x48, 0x8d, 0x54, 0x24, 0x18, // lea rdx, [rsp+0x18]
            0xeb, 0x01, // jmp +1
            0xcc, // int3
            0xff, 0xd2, // call rdx
            0x48, 0x8b, 0x44, 0x24, 0x20, // mov rax, [rsp+0x20]
            0xc3, // ret
        ];
        let sites = return_sites(&code, AT, RAX, true).unwrap();
        assert_eq!(sites.len(), 1);
        assert_eq!(sites[0].site.address, AT + 15, "the RET itself: {sites:?}");
    }

    #[test]
    fn a_private_slot_survives_a_call() {
        let code = [
            0x48, 0x8d, 0x54, 0x24, 0x40, // lea rdx, [rsp+0x40] (above the slot)
            0xeb, 0x01, // jmp +1
            0xcc, // int3
            0x48, 0x89, 0x4c, 0x24, 0x20, // mov [rsp+0x20], rcx
            0xff, 0xd2, // call rdx
            0x48, 0x8b, 0x44, 0x24, 0x20, // mov rax, [rsp+0x20]
            0xc3, // ret
        ];
        let sites = return_sites(&code, AT, RAX, true).unwrap();
        assert_eq!(sites.len(), 1);
        assert_eq!((sites[0].site.address, sites[0].result), (AT + 5, ResultAt::Register(1)));
    }

    #[test]
    fn a_non_go_start_is_probed_at_the_entry() {
        let code = [0x48, 0x83, 0xec, 0x08, 0xc3]; // sub rsp, 8; ret
        assert_eq!(entry_site(&code, AT).unwrap(), GoSite { address: AT, only_if: None, emulated: false });
        let push = [0x55, 0xc3]; // push rbp; ret
        assert_eq!(entry_site(&push, AT).unwrap(), GoSite { address: AT, only_if: None, emulated: true });
        assert_eq!(entry_site(&[0x06], AT), Err(SiteError::Undecodable(AT)));
    }
}

#[test]
fn a_tls_read_copies_its_plaintext_with_one_memmove_and_keeps_its_receiver_in_one_slot() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let binary = super::super::go_test_build::build(&root, &root.join("tests/apps/go_http/main.go"), "go-probe-sites", true);
    let elf = object::File::parse(&*binary).unwrap();
    let functions = go_pclntab::of_elf(&elf).unwrap();
    let memmove = functions.iter().find(|f| f.name == "runtime.memmove").unwrap().entry;
    let (code, address) = go_function("crypto/tls.(*Conn).Read");
    let call = only_call_to(&code, address, memmove).unwrap().expect("one copy into the caller's buffer");
    assert!(call.emulated && call.only_if.is_none());
    assert_eq!(code[(call.address - address) as usize], 0xe8, "a call rel32");
    // The receiver's slot is where the prologue's `MOVQ AX, d(SP)` (48 89 44 24 d) puts it.
    let slot = spilled_argument(&code, address, RAX).unwrap().expect("the receiver's slot");
    let store = code.windows(5).position(|w| w[..4] == [0x48, 0x89, 0x44, 0x24]).expect("MOVQ AX, d(SP)");
    assert_eq!(slot, i32::from(code[store + 4]), "{slot:#x}");
    // And the copy writes into `b`: its pointer (RBX at entry) reloaded from its own slot.
    let buffer = spilled_argument(&code, address, RBX).unwrap().expect("b's slot");
    assert!(call_argument_from_slot(&code, address, call.address, RAX, buffer).unwrap());
    assert!(!call_argument_from_slot(&code, address, call.address, RAX, slot).unwrap(), "not from the receiver's");
    // Write makes no copy of its own and several calls: not asked here; a function with two
    // memmove calls has no single copy site.
    let (write, write_address) = go_function("crypto/tls.(*Conn).Write");
    assert!(only_call_to(&write, write_address, memmove).unwrap().is_none());
}

mod fall_through {
    use super::*;

    const AT: u64 = 0x2000;

    #[test]
    fn a_tail_also_fallen_into_from_plain_code_gets_its_ret_probed() {
        let code = [
            0x75, 0x03, // jne +3 (to the tail's add)
            0x48, 0x89, 0xc8, // mov rax, rcx (falls into the tail)
            0x48, 0x83, 0xc4, 0x08, // add rsp, 8 (the jump's target)
            0xc3, // ret
        ];
        let sites = return_sites(&code, AT, RAX, true).unwrap();
        assert_eq!(sites.len(), 1, "{sites:?}");
        assert_eq!(sites[0].site.address, AT + 9, "the RET itself: no jump stands for the fall-through");
    }

    #[test]
    fn a_tail_fallen_into_from_a_conditional_jump_is_carried_both_ways() {
        let code = [
            0x48, 0x89, 0xc8, // mov rax, rcx
            0x74, 0x04, // je +4 (to the ret)
            0x75, 0x00, // jne +0: to the next instruction, so it enters the tail either way
            0x74, 0x00, // je +0, likewise, the tail's way in by falling through
            0xc3, // ret
        ];
        let sites = return_sites(&code, AT, RAX, true).unwrap();
        let carriers: Vec<(u64, Option<BranchTaken>)> = sites.iter().map(|s| (s.site.address - AT, s.site.only_if)).collect();
        assert_eq!(
            carriers,
            vec![(3, Some(BranchTaken { condition: 4, taken: true })), (7, None)],
            "the first je counts when taken; the je falling in either way counts always"
        );
        assert!(sites.iter().all(|s| s.result == ResultAt::Register(RAX)), "{sites:?}");
    }
}
