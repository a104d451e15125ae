//! Whether a process runs a Go program. Go schedules its goroutines on OS threads M to N: which
//! thread made a system call says nothing about which request the call was for, so what is
//! inferred from threads elsewhere (a call's parent) must not be inferred for Go.

use std::fs::File;

use crate::symbols::{
    built_by_go,
    go_build_info::{self, GoBuild},
};

/// True when `pid`'s executable was built by Go. Reads the ELF's section headers only.
pub fn runs_go(pid: u32) -> bool {
    let Ok(file) = File::open(format!("/proc/{pid}/exe")) else { return false };
    let cache = object::read::ReadCache::new(file);
    let Ok(elf) = object::File::parse(&cache) else { return false };
    built_by_go(&elf)
}

/// What `pid`'s Go executable says of its build, when Go built it.
pub fn go_build(pid: u32) -> Option<GoBuild> {
    let file = File::open(format!("/proc/{pid}/exe")).ok()?;
    let cache = object::read::ReadCache::new(file);
    let elf = object::File::parse(&cache).ok()?;
    go_build_info::of_elf(&elf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_rust_test_binary_is_not_go() {
        assert!(!runs_go(std::process::id()));
    }
}
