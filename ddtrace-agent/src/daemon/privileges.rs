//! The capabilities the daemon needs, found by measurement on these machines' kernel (6.18): a
//! non-root user given exactly these three with `setpriv` traces a node; take any one away and
//! something breaks. A check at start names the missing ones instead of failing later on an
//! obscure `EACCES`.
//!
//! CAP_BPF and CAP_PERFMON are not enough: the kernel's uprobe event source checks CAP_SYS_ADMIN
//! itself (`perf_event_open` of a uprobe answers EACCES without it, with CAP_BPF, CAP_PERFMON and
//! the rest granted; measured with a 20-line C program). With CAP_SYS_ADMIN, loading programs and
//! opening perf events need nothing more.

/// `CAP_DAC_OVERRIDE` covers what `CAP_DAC_READ_SEARCH` is needed for (a root container given
/// `SYS_ADMIN` keeps it).
const CAP_DAC_OVERRIDE: u32 = 1;
const CAP_DAC_READ_SEARCH: u32 = 2;

/// (capability number, name, what it is needed for).
const NEEDED: [(u32, &str, &str); 3] = [
    (
        21,
        "CAP_SYS_ADMIN",
        "uprobes: the kernel's uprobe events require it; it also covers loading the eBPF programs and sampling CPUs",
    ),
    (
        19,
        "CAP_SYS_PTRACE",
        "reading other users' processes: their maps, environment, memory and files under /proc/<pid>/root",
    ),
    (2, "CAP_DAC_READ_SEARCH", "reading tracefs (tracepoint ids and formats) and files inside containers"),
];

/// What to grant, for the error line.
pub const GRANT: &str = "CAP_SYS_ADMIN, CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH";

/// The needed capabilities this process lacks, each with why it is needed.
pub fn missing_capabilities() -> Vec<String> {
    let Some(effective) = effective_capabilities() else { return Vec::new() };
    missing_from(effective)
}

fn missing_from(effective: u64) -> Vec<String> {
    let has = |bit: u32| effective & (1u64 << bit) != 0;
    NEEDED
        .iter()
        .filter(|(bit, _, _)| {
            let stood_in = *bit == CAP_DAC_READ_SEARCH && has(CAP_DAC_OVERRIDE);
            !has(*bit) && !stood_in
        })
        .map(|(_, name, why)| format!("{name} ({why})"))
        .collect()
}

/// `CapEff` of `/proc/self/status`.
fn effective_capabilities() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("CapEff:"))?;
    u64::from_str_radix(line.trim_start_matches("CapEff:").trim(), 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_THREE: u64 = (1 << 21) | (1 << 19) | (1 << 2);

    #[test]
    fn root_and_the_three_lack_nothing() {
        assert!(missing_from(u64::MAX).is_empty());
        assert!(missing_from(ALL_THREE).is_empty());
    }

    #[test]
    fn each_missing_one_is_named() {
        for (bit, name, _) in NEEDED {
            let missing = missing_from(ALL_THREE & !(1 << bit));
            assert_eq!(missing.len(), 1, "{missing:?}");
            assert!(missing[0].starts_with(name), "{missing:?}");
        }
        // CAP_DAC_OVERRIDE stands in for CAP_DAC_READ_SEARCH.
        assert!(missing_from((ALL_THREE & !(1 << 2)) | (1 << 1)).is_empty());
        // CAP_BPF and CAP_PERFMON do not stand in for CAP_SYS_ADMIN.
        let bpf_perfmon = (1 << 39) | (1 << 38) | (1 << 19) | (1 << 2);
        assert!(missing_from(bpf_perfmon)[0].starts_with("CAP_SYS_ADMIN"));
    }
}
