//! What a uprobe leaves in a process's memory: the breakpoints the kernel writes over probed
//! instructions, found by comparing the code the process runs with its file.

use std::os::unix::fs::FileExt;

/// x86-64's `int3`: the instruction the kernel writes over a probed function's first byte.
#[cfg(target_arch = "x86_64")]
const BREAKPOINT: &[u8] = &[0xcc];
/// arm64's `brk #0x5` (little endian), the uprobe breakpoint there.
#[cfg(target_arch = "aarch64")]
const BREAKPOINT: &[u8] = &[0xa0, 0x00, 0x20, 0xd4];

/// Breakpoints the kernel installed in process `pid`'s executable mappings of `library`: places
/// where the code the process runs (read through /proc/<pid>/mem, which shows the page the
/// uprobe wrote its breakpoint into) differs from the file by a breakpoint. Text segments are
/// position-independent code, identical to the file otherwise.
pub fn breakpoints_in(pid: u32, library: &str) -> usize {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps readable");
    let memory = std::fs::File::open(format!("/proc/{pid}/mem")).expect("mem readable (run as root)");
    let mut found = 0;
    let mut mappings = 0;
    for line in maps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 6 || !fields[1].contains('x') || !fields[5].contains(library) {
            continue;
        }
        mappings += 1;
        let (start, end) = fields[0].split_once('-').unwrap();
        let start = u64::from_str_radix(start, 16).unwrap();
        let length = (u64::from_str_radix(end, 16).unwrap() - start) as usize;
        let file_offset = u64::from_str_radix(fields[2], 16).unwrap();
        let file = std::fs::File::open(format!("/proc/{pid}/root{}", fields[5])).expect("library readable");
        let mut in_file = vec![0u8; length];
        let read = file.read_at(&mut in_file, file_offset).expect("library read");
        in_file.truncate(read);
        let mut in_memory = vec![0u8; in_file.len()];
        memory.read_exact_at(&mut in_memory, start).expect("process memory read");
        let mut at = 0;
        while at < in_file.len() {
            if in_memory[at..].starts_with(BREAKPOINT) && !in_file[at..].starts_with(BREAKPOINT) {
                found += 1;
                at += BREAKPOINT.len();
            } else {
                at += 1;
            }
        }
    }
    assert!(mappings > 0, "pid {pid} maps no executable {library}:\n{maps}");
    found
}
