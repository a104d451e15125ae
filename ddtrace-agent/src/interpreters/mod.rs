//! Interpreters whose code is data: finding the runtime's structures in a process, telling the
//! kernel how to walk its frames, and naming what the kernel recorded. Integrations and products
//! use the names; none of them sees an offset.

pub mod python;
mod registry;

use std::sync::Arc;

pub use registry::Interpreters;

/// A sampled thread's interpreter frames, innermost first, as the kernel read them, with the
/// interpreter they belong to (the one found when the frames were walked: a process that exec'd
/// since has another).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterpreterFrames {
    pub frames: Box<[ddtrace_common::PythonFrame]>,
    /// Bits of `ddtrace_common::python_stack_flags`.
    pub flags: u32,
    pub runtime: Arc<python::PythonRuntime>,
}
