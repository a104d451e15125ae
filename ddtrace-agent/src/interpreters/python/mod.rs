//! CPython 3.8 to 3.13: `runtime` finds the interpreter in a process and checks our offsets
//! against it, `layout` holds the offsets per version, `frames` names the frames the sampler
//! recorded (with `line_table` for their lines), `objects` reads the interpreter's objects (3.11+).

pub mod frames;
pub mod layout;
pub mod line_table;
pub mod modules;
pub mod objects;
pub mod runtime;

pub use frames::{runs_frame_groups, NamedFrame, PythonFrames, UNKNOWN_FUNCTION};
pub use runtime::{PythonError, PythonRuntime};
