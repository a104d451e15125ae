//! Which processes a uprobe covers: the choice between completeness and cost that
//! `--probe-scope` leaves to the user (see the README's Safety section for the figures).

/// Which processes a uprobe link covers (`--probe-scope`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ProbeScope {
    /// One link per library file for every process that maps it; the kernel's bitmap of tracked
    /// processes keeps the others' calls out (they still trap: ~1-2 µs per probed call). A
    /// forked child inherits its parent's breakpoints and an exec'd image gets them when it maps
    /// the file, so both are traced from their first instruction, and a process's fork or exit
    /// costs no attach or detach at all.
    #[default]
    Global,
    /// Links per traced process: other processes never trap; but each new process costs the
    /// kernel an RCU grace period before its probes work (its first calls are missed) and each
    /// link it had costs one more when it exits (~100 ms each, serialised in the kernel).
    Process,
}
