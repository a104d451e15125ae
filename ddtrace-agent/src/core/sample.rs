//! CPU samples as core reports them: what the sampled thread was running (its registers and the
//! top of its stack, for the profiler to unwind) and which context it was in, so profiles can
//! point at the spans that were open.

/// The innermost open context of the sampled thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActiveContext {
    /// The open context (its span id).
    pub id: u64,
    /// The root of its tree in this process (the local root span id).
    pub root_id: u64,
}

/// One CPU sample of a thread of a traced process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuSample {
    pub tgid: u32,
    pub tid: u32,
    pub unix_ns: i64,
    /// User-space instruction, stack and frame pointers when sampled.
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    /// The thread was in a system call (`ip` is where it entered the kernel).
    pub in_kernel: bool,
    /// A copy of the user stack from `sp` up (may be empty).
    pub stack: Box<[u8]>,
    /// The interpreter's frames at the sample, as the kernel read them (a CPython thread's),
    /// for the profiler to name and put among the native ones.
    pub interpreter: Option<crate::interpreters::InterpreterFrames>,
    /// Filled by core: the context open on the thread at the sample, if any.
    pub active: Option<ActiveContext>,
}
