//! Which traced processes run an interpreter whose frames the sampler walks: found when a
//! process is selected, forks or execs, told to the kernel, forgotten at exit. Also holds each
//! thread's interpreter frames from their record until the thread's native sample comes.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use super::python::{PythonError, PythonRuntime};
use crate::{
    core::InterpreterFrames,
    probes::{KernelPrograms, PythonStack},
};

/// A process that ran no interpreter when looked at may load one later (a shared libpython is
/// mapped after the exec): it is looked at again on its samples, this often, this long.
const RETRY_EVERY: Duration = Duration::from_millis(200);
const RETRY_FOR: Duration = Duration::from_secs(30);

enum Seen {
    Walked,
    /// No interpreter, or one we cannot read: (first look, last look).
    Without { first: Instant, last: Instant, retry: bool },
}

#[derive(Default)]
pub struct Interpreters {
    processes: HashMap<u32, Seen>,
    /// By thread: the frames of its coming sample (with that sample's ktime).
    held: HashMap<u32, PythonStack>,
}

impl Interpreters {
    pub fn new() -> Self {
        Self::default()
    }

    /// Looks for an interpreter in `pid` (selected, forked, or just exec'd) and, when there is one
    /// we can read, tells the sampler to walk its frames. Returns a line for the user, if any.
    pub fn process_started(&mut self, pid: u32, programs: &mut KernelPrograms) -> Option<String> {
        programs.forget_python_frames(pid);
        let now = Instant::now();
        let (seen, line) = match PythonRuntime::find(pid) {
            Ok(Some(runtime)) => {
                let layout = runtime.layout;
                let tss_key = runtime.tss_key_address;
                match programs.walk_python_frames(pid, |fsbase| layout.kernel_layout(tss_key, fsbase)) {
                    Ok(true) => (
                        Seen::Walked,
                        Some(format!(
                            "python: pid {pid} runs CPython {} ({}): Python frames in its profiles",
                            runtime.version_text(),
                            runtime.binary.display()
                        )),
                    ),
                    Ok(false) => (Seen::Without { first: now, last: now, retry: false }, None),
                    Err(error) => (
                        Seen::Without { first: now, last: now, retry: false },
                        Some(format!("python: pid {pid}: {error}")),
                    ),
                }
            }
            Ok(None) => (Seen::Without { first: now, last: now, retry: true }, None),
            Err(error @ PythonError::Unreadable { .. }) => {
                tracing::debug!(pid, %error, "python");
                (Seen::Without { first: now, last: now, retry: true }, None)
            }
            Err(error) => (Seen::Without { first: now, last: now, retry: false }, Some(format!("python: pid {pid}: {error}"))),
        };
        self.processes.insert(pid, seen);
        line
    }

    /// On a sample of `pid`: looks again at a process that had no interpreter, when it is due.
    pub fn sampled(&mut self, pid: u32, programs: &mut KernelPrograms) -> Option<String> {
        let Some(Seen::Without { first, last, retry: true }) = self.processes.get_mut(&pid) else { return None };
        if last.elapsed() < RETRY_EVERY || first.elapsed() > RETRY_FOR {
            return None;
        }
        *last = Instant::now();
        let first = *first;
        let line = self.process_started(pid, programs);
        if let Some(Seen::Without { first: kept, .. }) = self.processes.get_mut(&pid) {
            *kept = first;
        }
        line
    }

    pub fn process_exited(&mut self, pid: u32, programs: &mut KernelPrograms) {
        if self.processes.remove(&pid).is_some() {
            programs.forget_python_frames(pid);
        }
    }

    /// Keeps a thread's frames for its sample, which the kernel writes right after them.
    pub fn hold(&mut self, stack: PythonStack) {
        self.held.insert(stack.tid, stack);
    }

    /// The frames recorded with the sample of thread `tid` taken at `ktime_ns`, if any.
    pub fn take(&mut self, tid: u32, ktime_ns: u64) -> Option<InterpreterFrames> {
        let stack = self.held.remove(&tid)?;
        (stack.ktime_ns == ktime_ns).then_some(InterpreterFrames { frames: stack.frames, flags: stack.flags })
    }
}
