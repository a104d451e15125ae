//! Which traced processes run an interpreter whose frames the sampler walks: found when a
//! process is selected or execs (a forked child inherits its parent's), told to the kernel,
//! forgotten at exit. Also holds each thread's interpreter frames from their record until the
//! event recorded with them comes (a native sample, an outbound write), and names those of events.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use super::{
    python::{NamedFrame, PythonError, PythonFrames, PythonRuntime},
    InterpreterFrames,
};
use crate::probes::{InterpreterStack, KernelPrograms};

/// A process that ran no interpreter when looked at may load one later (a shared libpython is
/// mapped after the exec): it is looked at again on its samples, this often, this long.
const RETRY_EVERY: Duration = Duration::from_millis(200);
const RETRY_FOR: Duration = Duration::from_secs(30);
/// Threads whose frames wait for their sample; beyond, the oldest records are dropped (a sample
/// lost to a full ring leaves its frames behind).
const MAX_HELD: usize = 4096;

enum Seen {
    Walked(Arc<PythonRuntime>),
    /// No interpreter, or one we cannot read: (first look, last look, whether to look again,
    /// why the process could not be read, if that was it).
    Without {
        first: Instant,
        last: Instant,
        retry: bool,
        unreadable: Option<String>,
    },
}

#[derive(Default)]
pub struct Interpreters {
    processes: HashMap<u32, Seen>,
    /// By thread: the frames of its coming sample or event (with its ktime).
    held: HashMap<u32, InterpreterStack>,
    /// Namers of the frames recorded at events, by process (the profiler has its own).
    namers: HashMap<u32, PythonFrames>,
}

impl Interpreters {
    pub fn new() -> Self {
        Self::default()
    }

    /// Looks for an interpreter in `pid` (selected, or just exec'd) and, when there is one we can
    /// read, tells the sampler to walk its frames. Returns a line for the user, if any.
    pub fn process_started(&mut self, pid: u32, programs: &mut KernelPrograms) -> Option<String> {
        programs.forget_python_frames(pid);
        let now = Instant::now();
        let without = |retry, unreadable| Seen::Without { first: now, last: now, retry, unreadable };
        let (seen, line) = match PythonRuntime::find(pid) {
            Ok(Some(runtime)) => self.walk(pid, Arc::new(runtime), programs),
            Ok(None) => (without(true, None), None),
            // Perhaps gone, perhaps not readable by us: said once the looking ends.
            Err(error @ PythonError::Unreadable { .. }) => (without(true, Some(error.to_string())), None),
            Err(error) => (without(false, None), Some(format!("python: pid {pid}: {error}"))),
        };
        self.processes.insert(pid, seen);
        line
    }

    /// A forked child has its parent's memory: its parent's interpreter, at the same addresses,
    /// without reading its files again (a pre-fork server starts workers by the dozen).
    pub fn process_forked(&mut self, parent: u32, child: u32, programs: &mut KernelPrograms) -> Option<String> {
        match self.processes.get(&parent) {
            Some(Seen::Walked(runtime)) => {
                let runtime = Arc::new(PythonRuntime { pid: child, ..(**runtime).clone() });
                let (seen, _) = self.walk(child, runtime, programs);
                self.processes.insert(child, seen);
                None
            }
            _ => self.process_started(child, programs),
        }
    }

    fn walk(&self, pid: u32, runtime: Arc<PythonRuntime>, programs: &mut KernelPrograms) -> (Seen, Option<String>) {
        let layout = runtime.layout;
        let tss_key = runtime.tss_key_address;
        let now = Instant::now();
        match programs.walk_python_frames(pid, |fsbase| layout.kernel_layout(tss_key, fsbase)) {
            Ok(true) => {
                let line = format!(
                    "python: pid {pid} runs CPython {} ({}): Python frames in its profiles",
                    runtime.version_text(),
                    runtime.binary.display()
                );
                (Seen::Walked(runtime), Some(line))
            }
            Ok(false) => (Seen::Without { first: now, last: now, retry: false, unreadable: None }, None),
            Err(error) => (
                Seen::Without { first: now, last: now, retry: false, unreadable: None },
                Some(format!("python: pid {pid}: {error}")),
            ),
        }
    }

    /// On a sample of `pid`: looks again at a process that had no interpreter, when it is due.
    pub fn sampled(&mut self, pid: u32, programs: &mut KernelPrograms) -> Option<String> {
        let Some(Seen::Without { first, last, retry, unreadable }) = self.processes.get_mut(&pid) else { return None };
        if !*retry || last.elapsed() < RETRY_EVERY {
            return None;
        }
        if first.elapsed() > RETRY_FOR {
            *retry = false;
            return unreadable
                .take()
                .map(|reason| format!("python: pid {pid}: {reason}: no Python frames in its profiles"));
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
        self.namers.remove(&pid);
        if self.processes.remove(&pid).is_some() {
            programs.forget_python_frames(pid);
        }
    }

    /// Keeps a thread's frames for its sample, which the kernel writes right after them.
    pub fn hold(&mut self, stack: InterpreterStack) {
        if self.held.len() >= MAX_HELD {
            self.held.clear();
        }
        self.held.insert(stack.tid, stack);
    }

    /// The interpreter whose frames `pid`'s events were last named with.
    pub fn runtime_of(&self, pid: u32) -> Option<Arc<PythonRuntime>> {
        self.namers.get(&pid).map(|namer| namer.runtime().clone())
    }

    /// The frames recorded with the event of thread `tid` of `pid` at `ktime_ns`, named,
    /// innermost first: the code that made the call.
    pub fn caller_frames(&mut self, pid: u32, tid: u32, ktime_ns: u64) -> Option<Arc<[NamedFrame]>> {
        if self.held.is_empty() {
            return None;
        }
        let recorded = self.take(pid, tid, ktime_ns)?;
        // A namer serves one interpreter: after an exec the process has another.
        let namer = match self.namers.get_mut(&pid) {
            Some(namer) if Arc::ptr_eq(namer.runtime(), &recorded.runtime) => namer,
            _ => {
                self.namers.insert(pid, PythonFrames::new(recorded.runtime.clone()));
                self.namers.get_mut(&pid)?
            }
        };
        namer.named(&recorded.frames)
    }

    /// The frames recorded with the sample of thread `tid` of `pid` taken at `ktime_ns`, if any.
    pub fn take(&mut self, pid: u32, tid: u32, ktime_ns: u64) -> Option<InterpreterFrames> {
        let stack = self.held.remove(&tid)?;
        let Some(Seen::Walked(runtime)) = self.processes.get(&pid) else { return None };
        (stack.ktime_ns == ktime_ns).then(|| InterpreterFrames {
            frames: stack.frames,
            flags: stack.flags,
            runtime: runtime.clone(),
        })
    }
}
