//! The process being instrumented: its identity, the ELF objects it maps, and its exit.
//!
//! Files are always opened through `/proc/<pid>/root`, so a process in another mount namespace
//! (a container) is inspected through its own view of the filesystem.

mod container;
mod environ;
mod exit_watch;
mod go_runtime;
mod library_search;
mod maps;
pub mod memory;
mod process;
mod selection;
mod sockets;
mod tree;

pub use container::Container;
pub use environ::read_environ;
pub use exit_watch::ExitWatch;
pub use go_runtime::{go_build, runs_go};
pub use library_search::{file_identity, loadable_libraries, LibraryFile};
pub use maps::{parse_maps, MappedObject};
pub use process::{Process, TargetError};
pub use selection::{refusal, Candidate, SelectionRules, Verdict};
pub use sockets::{open_tcp_connections, ConnectionSide, OpenConnection};
pub use tree::{ancestors, descendants, is_kernel_thread, is_process, is_thread_of, never_traced};
