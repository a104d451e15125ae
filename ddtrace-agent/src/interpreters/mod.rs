//! Interpreters whose code is data: finding the runtime's structures in a process, telling the
//! kernel how to walk its frames, and naming what the kernel recorded. Integrations and products
//! use the names; none of them sees an offset.

pub mod python;
mod registry;

pub use registry::Interpreters;
