//! The kernel side, seen from the daemon: loading the embedded eBPF object, attaching uprobes
//! with a probe spec each, reading and decoding the ring buffer, and the kernel's counters.

mod btf;
mod counters;
mod detacher;
mod drain_timer;
mod event;
mod exec_layout;
mod loader;
mod reader;
mod ring;
mod scope;
mod socket_layout;
mod spec;
mod tracefs;

pub use counters::KernelCounters;
pub use detacher::Detacher;
pub use event::{
    decode, DecodeError, EntryData, ExitData, InterpreterStack, KernelEvent, OptIn, ProbeEvent, ProcessChange,
    ProcessChangeKind, SocketActivity, SocketOp, StackSample,
};
pub use loader::{KernelPrograms, NodeExecs, ProbeError, ProbeId, ProbeLinks};
pub use reader::{EventReader, MAX_BATCH};
pub use scope::ProbeScope;
pub use spec::{Capture, ProbeDef, ProbeKind};
