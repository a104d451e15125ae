use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    sync::Arc,
};

use crate::{
    core::{ContextTree, WallClock},
    integrations::{handlers::Handlers, Integration},
    interpreters::{python::NamedFrame, InterpreterFrames, Interpreters},
    probes::{
        Detacher, InterpreterStack, KernelPrograms, ProbeDef, ProbeError, ProbeEvent, ProbeId, ProbeKind, ProbeLinks,
        ProbeScope, ProcessChange, ProcessChangeKind,
    },
    symbols::{ElfSymbols, SymbolError},
    target::{
        file_identity, is_process, is_thread_of, loadable_libraries, read_environ, LibraryFile, MappedObject, Process,
        TargetError,
    },
};

/// The dynamic linker calls this (empty) function after every change to the list of loaded
/// objects: the debugger rendezvous (`r_brk`). A probe on it tells us a library was just
/// dlopen'ed, with no timer and no rescans in between: our counterpart of dd-trace-py's import
/// hooks.
const LINKER_RENDEZVOUS_SYMBOL: &str = "_dl_debug_state";
static LINKER_PROBE: ProbeDef = ProbeDef::entry(LINKER_RENDEZVOUS_SYMBOL).urgent();

/// What a probe id leads to.
#[derive(Debug, Clone, Copy)]
enum Route {
    Integration {
        integration: usize,
        probe: usize,
    },
    LibraryLoaded,
    /// A probe that arms others of its library (in `Instrumenter::triggers`): its only event is
    /// its first hit in a process.
    FirstHit,
}

/// One line of the attach report a user reads at start and when libraries arrive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttachOutcome {
    Attached {
        integration: &'static str,
        probes: usize,
        path: PathBuf,
        /// For a library loaded after we attached: from the linker's notice to probes in place.
        after_load: Option<std::time::Duration>,
    },
    /// Probes attached to a library the process does not map yet, but that its dynamic linker
    /// would load: the kernel inserts their breakpoints when it is mapped, before its first call.
    Foreseen {
        integration: &'static str,
        probes: usize,
        path: PathBuf,
    },
    Waiting {
        integration: &'static str,
        library: &'static str,
    },
    /// Probes attached to a process when another of its integration's probes first ran there
    /// (`ProbeDef::armed_by`).
    Armed {
        integration: &'static str,
        probes: usize,
        path: PathBuf,
        /// The probe whose first hit armed them.
        trigger: &'static str,
        /// From that hit to the probes in place.
        after_hit: std::time::Duration,
    },
    Failed {
        integration: &'static str,
        path: PathBuf,
        reason: String,
    },
}

impl AttachOutcome {
    /// The attach failed because the process no longer exists (ESRCH).
    fn process_gone(&self) -> bool {
        matches!(self, Self::Failed { reason, .. } if process_gone(reason))
    }
}

impl std::fmt::Display for AttachOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Attached { integration, probes, path, after_load } => {
                write!(f, "{integration}: attached {probes} probes to {}", path.display())?;
                match after_load {
                    Some(latency) => write!(f, " ({} µs after it was loaded)", latency.as_micros()),
                    None => Ok(()),
                }
            }
            Self::Foreseen { integration, probes, path } => write!(
                f,
                "{integration}: attached {probes} probes to {} (not loaded yet: in place for its first call)",
                path.display()
            ),
            Self::Waiting { integration, library } => {
                write!(f, "{integration}: waiting for {library} (not loaded yet)")
            }
            Self::Armed { integration, probes, path, trigger, after_hit } => write!(
                f,
                "{integration}: armed {probes} more probes in {} at the first call of {trigger} ({} µs after it)",
                path.display(),
                after_hit.as_micros()
            ),
            Self::Failed { integration, path, reason } => {
                write!(f, "{integration}: not attached to {}: {reason}", path.display())
            }
        }
    }
}

/// What happened to the set of traced processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessOutcome {
    /// A traced process forked a child, now traced too.
    Forked { parent: u32, child: u32 },
    /// A traced process exec'd a new program; its libraries were looked at again.
    Execed { pid: u32, program: String },
    /// A traced process exited.
    Exited { pid: u32 },
}

impl std::fmt::Display for ProcessOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Forked { parent, child } => write!(f, "pid {parent} forked {child}: tracing it too"),
            Self::Execed { pid, program } => write!(f, "pid {pid} exec'd {program}: instrumenting it again"),
            Self::Exited { pid } => write!(f, "pid {pid} exited"),
        }
    }
}

/// A library file an integration probes: (device, inode, integration index).
type LibraryKey = (String, u64, usize);
/// A dynamic linker file: (device, inode).
type LinkerKey = (String, u64);

/// What decides the libraries a process's linker would load: its root directory (a container
/// has its own), the linker cache's age, and `LD_LIBRARY_PATH`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ForeseenKey {
    root: Option<(u64, u64)>,
    cache_modified: Option<std::time::SystemTime>,
    ld_library_path: Option<String>,
}

impl ForeseenKey {
    fn of(process: &Process, ld_library_path: Option<String>) -> Self {
        use std::os::unix::fs::MetadataExt;
        let root = std::fs::metadata(process.host_path(Path::new("/"))).ok().map(|m| (m.dev(), m.ino()));
        let cache_modified =
            std::fs::metadata(process.host_path(Path::new("/etc/ld.so.cache"))).and_then(|m| m.modified()).ok();
        Self { root, cache_modified, ld_library_path }
    }
}

/// An integration's probes in one library file, resolved once and attached to every traced
/// process that maps the file.
struct LibraryProbes {
    symbols: Arc<ElfSymbols>,
    /// (probe id, index of the probe in its integration, file offset of the function).
    probes: Vec<(ProbeId, usize, u64)>,
    /// The probes whose first hit arms others (`ProbeDef::armed_by`).
    triggers: Vec<ProbeId>,
}

impl LibraryProbes {
    /// How many of the probes are attached with the library (not armed later).
    fn attached_at_once(&self, defs: &[ProbeDef]) -> usize {
        self.probes.iter().filter(|(_, index, _)| defs[*index].armed_by.is_none()).count()
    }
}

/// What a process's links are attached to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum LinkTarget {
    Library(LibraryKey),
    /// A library's probes armed by another's first hit (`ProbeDef::armed_by`).
    Armed(LibraryKey),
    Linker(LinkerKey),
}

/// Attaches integrations to the libraries traced processes map, now and whenever they map more,
/// follows the processes' forks, execs and exits, and routes kernel events to the integration
/// that owns the probe.
///
/// Probes are resolved once per library file (one probe id each) but attached per process: the
/// kernel then installs breakpoints in the traced processes only (see
/// `KernelPrograms::attach_to_process`), so every traced process, child or exec'd image, gets
/// its own links, dropped when it exits.
pub struct Instrumenter {
    programs: KernelPrograms,
    integrations: Vec<Box<dyn Integration>>,
    routes: Vec<Option<Route>>,
    /// The traced processes.
    processes: HashMap<u32, Process>,
    /// Library files already looked at, probed or not.
    examined: HashSet<LibraryKey>,
    /// Library files with probes, and their symbols (integrations read them per process).
    libraries: HashMap<LibraryKey, LibraryProbes>,
    /// (tgid, library) pairs whose integration was told about that process.
    announced: HashSet<(u32, LibraryKey)>,
    /// Dynamic linkers looked at: their rendezvous probe id and file offset, when found.
    linkers: HashMap<LinkerKey, Option<(ProbeId, u64)>>,
    /// Which processes a link covers.
    scope: ProbeScope,
    /// A mapped file's identity as `stat` gives it, by its identity in `/proc/<pid>/maps`: the
    /// two differ on overlayfs and btrfs, and a library foreseen by its path (stat) must be
    /// known again when it is mapped, or it would get a second set of probes.
    file_identities: HashMap<(String, u64), (String, u64)>,
    /// Every traced process's uprobe links, by what they are attached to (process scope).
    links: HashMap<u32, HashMap<LinkTarget, Vec<ProbeLinks>>>,
    /// Links for every process mapping their file (global scope).
    global_links: HashMap<LinkTarget, Vec<ProbeLinks>>,
    /// Links attached before their library was mapped; kept across an exec that does not map
    /// the library (yet).
    foreseen_links: HashSet<(u32, LibraryKey)>,
    /// The libraries processes could load, by what decides them (see [`ForeseenKey`]).
    foreseen: HashMap<ForeseenKey, Arc<Vec<(usize, LibraryFile)>>>,
    /// Library-load notifications handled (each one a rescan of the maps).
    pub library_events: u64,
    /// Drops links on other threads: a detach waits for the kernel for ~100 ms.
    detacher: Detacher,
    /// Print each probe site with its first instruction when a library is resolved.
    pub report_sites: bool,
    /// Traced processes whose interpreter frames the sampler walks.
    interpreters: Interpreters,
    /// Views of the requests served, from the frames of the calls they make.
    handlers: Handlers,
    /// Probes whose first hit in a process arms others of their library, and which library.
    triggers: HashMap<ProbeId, LibraryKey>,
    /// The triggers each process announced (the kernel remembers them until told to forget).
    announced_hits: HashMap<u32, HashSet<ProbeId>>,
}

impl Instrumenter {
    pub fn new(programs: KernelPrograms, integrations: Vec<Box<dyn Integration>>, scope: ProbeScope) -> Self {
        Self {
            scope,
            global_links: HashMap::new(),
            file_identities: HashMap::new(),
            programs,
            integrations,
            routes: Vec::new(),
            processes: HashMap::new(),
            examined: HashSet::new(),
            libraries: HashMap::new(),
            announced: HashSet::new(),
            linkers: HashMap::new(),
            links: HashMap::new(),
            foreseen_links: HashSet::new(),
            foreseen: HashMap::new(),
            library_events: 0,
            detacher: Detacher::default(),
            report_sites: false,
            interpreters: Interpreters::new(),
            handlers: Handlers::new(),
            triggers: HashMap::new(),
            announced_hits: HashMap::new(),
        }
    }

    /// Says whether process `pid` runs Go: the kernel then tells each of its reads and writes
    /// which goroutine it was for.
    pub fn set_runs_go(&mut self, pid: u32, go: bool) {
        self.programs.set_runs_go(pid, go);
    }

    /// Looks for an interpreter in `pid`, newly traced or exec'd, or takes its parent's when it
    /// was `forked_from` one (see [`Interpreters`]). Returns a line for the user, if any.
    pub fn interpreter_started(&mut self, pid: u32, forked_from: Option<u32>) -> Option<String> {
        match forked_from {
            Some(parent) => self.interpreters.process_forked(parent, pid, &mut self.programs),
            None => self.interpreters.process_started(pid, &mut self.programs),
        }
    }

    /// Keeps a thread's interpreter frames for its coming sample.
    pub fn hold_interpreter_frames(&mut self, stack: InterpreterStack) {
        self.interpreters.hold(stack);
    }

    /// At a sample of `tid` of `pid` taken at `ktime_ns`: the interpreter frames recorded with it,
    /// and a line for the user when the process was looked at again and something was found.
    pub fn interpreter_frames(
        &mut self,
        pid: u32,
        tid: u32,
        ktime_ns: u64,
    ) -> (Option<InterpreterFrames>, Option<String>) {
        let line = self.interpreters.sampled(pid, &mut self.programs);
        (self.interpreters.take(pid, tid, ktime_ns), line)
    }

    /// At an event of `tid` of `pid` at `ktime_ns` (an outbound write): the interpreter frames
    /// recorded with it, named, innermost first. A process seen without an interpreter is looked
    /// at again when due, as on its samples (`interpreter_frames`).
    /// The view the frames show, if any, opens first (the call's own context nests inside it).
    pub fn caller_frames(
        &mut self,
        pid: u32,
        tid: u32,
        ktime_ns: u64,
        contexts: &mut ContextTree,
    ) -> (Option<Arc<[NamedFrame]>>, Option<String>) {
        let line = self.interpreters.sampled(pid, &mut self.programs);
        let frames = self.interpreters.caller_frames(pid, tid, ktime_ns);
        if let Some(frames) = &frames {
            let runtime = self.interpreters.runtime_of(pid);
            self.handlers.caller_seen(pid, tid, ktime_ns, frames, runtime, contexts);
        }
        (frames, line)
    }

    /// How spans named after a framework are named (`DD_TRACE_SPAN_ATTRIBUTE_SCHEMA`).
    pub fn set_span_schema(&mut self, schema: crate::config::SpanSchema) {
        self.handlers.set_span_schema(schema);
    }

    pub fn programs(&self) -> &KernelPrograms {
        &self.programs
    }

    pub fn programs_mut(&mut self) -> &mut KernelPrograms {
        &mut self.programs
    }

    /// Starts tracing `process`: lets it through the kernel filter, attaches every integration
    /// whose library it maps, and watches the dynamic linker for libraries loaded later.
    pub fn instrument(&mut self, process: Process) -> Result<Vec<AttachOutcome>, InstrumentError> {
        self.programs.track_process(process.pid)?;
        let mut outcomes = match self.attach_process(&process) {
            Ok(mut outcomes) => {
                outcomes.extend(self.attach_foreseen(&process));
                // A short-lived child (a shell's command) may be gone before its probes are:
                // nothing to report, it is forgotten when its exit is read.
                if outcomes.iter().any(AttachOutcome::process_gone) {
                    outcomes.retain(|outcome| !outcome.process_gone());
                }
                outcomes
            }
            Err(error) => {
                self.forget_links(process.pid);
                self.programs.untrack_process(process.pid);
                return Err(error.into());
            }
        };
        self.processes.insert(process.pid, process);
        for (index, integration) in self.integrations.iter().enumerate() {
            if !self.libraries.keys().any(|(_, _, i)| *i == index)
                && !outcomes
                    .iter()
                    .any(|o| matches!(o, AttachOutcome::Failed { integration: n, .. } if *n == integration.name()))
            {
                outcomes.push(AttachOutcome::Waiting {
                    integration: integration.name(),
                    library: integration.library().display(),
                });
            }
        }
        Ok(outcomes)
    }

    /// Node mode, global scope: puts the probes of every library the processes sharing
    /// `process`'s filesystem root could load (and its dynamic linker's rendezvous) in place now,
    /// for programs not started yet: a process that lives a millisecond has no time to wait for
    /// an attach (~25-100 ms each). `process` itself is not traced.
    pub fn prepare_for(&mut self, process: &Process) -> Vec<AttachOutcome> {
        if self.scope != ProbeScope::Global {
            return Vec::new();
        }
        if let Ok(objects) = process.mapped_objects() {
            if let Err(reason) = self.watch_linker(process, &objects) {
                tracing::debug!(pid = process.pid, %reason, "no rendezvous probe prepared");
            }
        }
        let outcomes = self.attach_foreseen(process);
        self.foreseen_links.retain(|(pid, _)| *pid != process.pid);
        outcomes
    }

    /// Attaches the linker probe and the integrations to what `process` maps, in the order that
    /// leaves no library unseen: read the maps, probe the linker's rendezvous, read the maps
    /// again, attach the libraries. A library the linker mapped before the second read is in
    /// it; one mapped after is announced by the rendezvous probe, now in place.
    fn attach_process(&mut self, process: &Process) -> Result<Vec<AttachOutcome>, TargetError> {
        let objects = process.mapped_objects()?;
        if let Err(reason) = self.watch_linker(process, &objects) {
            if process_gone(&reason) {
                return Err(TargetError::Exited { pid: process.pid });
            }
            tracing::warn!(pid = process.pid, %reason, "libraries loaded later (dlopen) will not be instrumented");
        }
        let objects = process.mapped_objects()?;
        Ok(self.attach_new_libraries(process, &objects))
    }

    /// Routes one kernel event. Returns attach outcomes when the event was a library load.
    pub fn handle(&mut self, event: &ProbeEvent, contexts: &mut ContextTree) -> Vec<AttachOutcome> {
        tracing::trace!(?event, "kernel event");
        match self.routes.get(event.probe_id() as usize).copied().flatten() {
            Some(Route::Integration { integration, probe }) => {
                if let ProbeEvent::Entry(entry) = event {
                    // Recorded for probes that ask (`ProbeDef::recording_caller`).
                    if let Some(frames) = self.interpreters.caller_frames(entry.tgid, entry.tid, entry.ktime_ns) {
                        let runtime = self.interpreters.runtime_of(entry.tgid);
                        let (tgid, tid, ktime_ns) = (entry.tgid, entry.tid, entry.ktime_ns);
                        self.handlers.caller_seen(tgid, tid, ktime_ns, &frames, runtime, contexts);
                    }
                }
                self.integrations[integration].on_event(probe, event, contexts);
                Vec::new()
            }
            Some(Route::LibraryLoaded) => {
                self.library_events += 1;
                let Some(process) = self.processes.get(&event.tgid()).cloned() else { return Vec::new() };
                let Ok(objects) = process.mapped_objects() else {
                    return Vec::new(); // the process is exiting
                };
                let mut outcomes = self.attach_new_libraries(&process, &objects);
                let latency = WallClock::monotonic_now_ns().saturating_sub(event.ktime_ns());
                for outcome in &mut outcomes {
                    if let AttachOutcome::Attached { after_load, .. } = outcome {
                        *after_load = Some(std::time::Duration::from_nanos(latency));
                    }
                }
                outcomes
            }
            Some(Route::FirstHit) => match self.triggers.get(&event.probe_id()).cloned() {
                Some(library) => self.arm(event.tgid(), event.probe_id(), library, event.ktime_ns()),
                None => Vec::new(),
            },
            None => Vec::new(),
        }
    }

    /// How much per-process and per-file state is held (for `--stats`: what a node under churn
    /// must not accumulate).
    pub fn state_sizes(&self) -> String {
        format!(
            "processes={} announced={} foreseen_links={} process_links={} file_identities={} foreseen_roots={} examined={}",
            self.processes.len(),
            self.announced.len(),
            self.foreseen_links.len(),
            self.links.len(),
            self.file_identities.len(),
            self.foreseen.len(),
            self.examined.len()
        )
    }

    /// The traced processes.
    pub fn process_ids(&self) -> Vec<u32> {
        self.processes.keys().copied().collect()
    }

    pub fn traces_any_process(&self) -> bool {
        !self.processes.is_empty()
    }

    pub fn is_tracing(&self, pid: u32) -> bool {
        self.processes.contains_key(&pid)
    }

    /// Follows a fork, exec or exit reported by the kernel.
    pub fn handle_process_change(
        &mut self,
        change: &ProcessChange,
        contexts: &mut ContextTree,
    ) -> (Option<ProcessOutcome>, Vec<AttachOutcome>) {
        match change.kind {
            // The kernel tracked the new task before it ran; a thread shares its process's bit
            // already, so its own id must not stay marked. (A thread of the forking process is
            // told by one path lookup, before its status is read.)
            ProcessChangeKind::Forked { child } => {
                let new_process = !is_thread_of(change.tgid, child) && is_process(child) == Some(true);
                let opened = if new_process { Process::open(child).ok() } else { None };
                let Some(process) = opened else {
                    if !self.processes.contains_key(&child) {
                        self.programs.untrack_process(child);
                    }
                    return (None, Vec::new());
                };
                match self.instrument(process) {
                    Ok(outcomes) => (
                        Some(ProcessOutcome::Forked { parent: change.tgid, child }),
                        outcomes.into_iter().filter(|o| !matches!(o, AttachOutcome::Waiting { .. })).collect(),
                    ),
                    Err(_) => (None, Vec::new()),
                }
            }
            ProcessChangeKind::Exec => {
                let Some(process) = self.processes.get(&change.tgid).cloned() else { return (None, Vec::new()) };
                // A new program: nothing the integrations knew of the old image holds.
                contexts.end_process(change.tgid, change.ktime_ns);
                for integration in &mut self.integrations {
                    integration.on_process_exit(change.tgid);
                }
                self.handlers.process_exited(change.tgid);
                self.announced.retain(|(tgid, _)| *tgid != change.tgid);
                // The new image announces its triggers' first hits again (arming is idempotent).
                self.forget_announced_hits(change.tgid);
                // The links stay: a probe's perf event targets the task, whose address space
                // the kernel compares at each mapping, so the new image's copy of a library
                // gets the breakpoints of the old links from the moment it is mapped, before
                // this event is even read. The ones for files the new image does not map
                // (yet: dlopen re-attaches them) are dropped below.
                let outcomes = match self.attach_process(&process) {
                    Ok(mut outcomes) => {
                        self.drop_unmapped_links(&process);
                        // The new image may say other library paths (LD_LIBRARY_PATH).
                        outcomes.extend(self.attach_foreseen(&process));
                        outcomes
                    }
                    Err(_) => Vec::new(), // exiting already
                };
                let program = std::fs::read_link(format!("/proc/{}/exe", change.tgid))
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                (Some(ProcessOutcome::Execed { pid: change.tgid, program }), outcomes)
            }
            ProcessChangeKind::Exited => {
                // Also a process the kernel tracked on its own (node mode's opt-in at exec) that
                // was over before the daemon knew it: its contexts end, its state goes.
                contexts.end_process(change.tgid, change.ktime_ns);
                if !self.processes.contains_key(&change.tgid) {
                    for integration in &mut self.integrations {
                        integration.on_process_exit(change.tgid);
                    }
                    self.forget_announced_hits(change.tgid);
                    return (None, Vec::new());
                }
                self.process_exited(change.tgid);
                (Some(ProcessOutcome::Exited { pid: change.tgid }), Vec::new())
            }
        }
    }

    /// Forgets process `tgid` (it exited, or the daemon stops).
    pub fn process_exited(&mut self, tgid: u32) {
        for integration in &mut self.integrations {
            integration.on_process_exit(tgid);
        }
        self.programs.untrack_process(tgid);
        // Its pid may come back as another program's.
        self.programs.set_runs_go(tgid, false);
        self.interpreters.process_exited(tgid, &mut self.programs);
        self.handlers.process_exited(tgid);
        self.processes.remove(&tgid);
        self.announced.retain(|(pid, _)| *pid != tgid);
        self.forget_announced_hits(tgid);
        self.forget_links(tgid);
    }

    /// Lets the kernel announce again the first hits process `tgid` announced.
    fn forget_announced_hits(&mut self, tgid: u32) {
        for trigger in self.announced_hits.remove(&tgid).into_iter().flatten() {
            self.programs.forget_announced_hit(tgid, trigger);
        }
    }

    /// Attaches to process `tgid` the probes of `library` that `trigger`'s first hit there arms
    /// (`announced_ns`: when it hit).
    ///
    /// The kernel announces a first hit once: the hit is kept as announced when the probes are
    /// in place or their attach failed for good; otherwise (a process not known yet, the file
    /// not found in its maps) the kernel is told to announce it again at its next hit.
    fn arm(&mut self, tgid: u32, trigger: ProbeId, library: LibraryKey, announced_ns: u64) -> Vec<AttachOutcome> {
        let target = LinkTarget::Armed(library.clone());
        if self.has_links(tgid, &target) {
            // Armed already (global scope, or a process exec'd the same file).
            self.announced_hits.entry(tgid).or_default().insert(trigger);
            return Vec::new();
        }
        let mapped = self.processes.get(&tgid).cloned().and_then(|process| {
            let objects = process.mapped_objects().ok()?; // exiting
            objects.iter().find_map(|object| {
                let identity = self.file_identity(&process, object)?;
                (identity.0 == library.0 && identity.1 == library.1).then(|| (process.clone(), object.path.clone()))
            })
        });
        let Some((process, path)) = mapped else {
            self.programs.forget_announced_hit(tgid, trigger);
            return Vec::new();
        };
        self.announced_hits.entry(tgid).or_default().insert(trigger);
        let integration = library.2;
        match self.attach_library(&library, &process.host_path(&path), tgid, true) {
            Ok(links) => {
                let probes = links.len();
                self.store_links(tgid, target, links);
                let defs = self.integrations[integration].probes();
                let trigger = self.libraries[&library]
                    .probes
                    .iter()
                    .find(|(id, _, _)| *id == trigger)
                    .map_or("?", |(_, index, _)| defs[*index].symbol);
                let after_hit = WallClock::monotonic_now_ns().saturating_sub(announced_ns);
                vec![AttachOutcome::Armed {
                    integration: self.integrations[integration].name(),
                    probes,
                    path,
                    trigger,
                    after_hit: std::time::Duration::from_nanos(after_hit),
                }]
            }
            Err(reason) => vec![self.failed(integration, &path, reason)],
        }
    }

    /// Detaches every probe from every process, waiting at most `timeout` (the daemon stops).
    pub fn detach_all(mut self, timeout: std::time::Duration) {
        for link in std::mem::take(&mut self.global_links).into_values().flatten() {
            self.detacher.detach(link);
        }
        for (_, links) in std::mem::take(&mut self.links) {
            for link in links.into_values().flatten() {
                self.detacher.detach(link);
            }
        }
        self.detacher.finish(timeout);
    }

    /// Detaches every probe from process `tgid`.
    fn forget_links(&mut self, tgid: u32) {
        for (_, links) in self.links.remove(&tgid).into_iter().flatten() {
            links.into_iter().for_each(|link| self.detacher.detach(link));
        }
        self.foreseen_links.retain(|(pid, _)| *pid != tgid);
    }

    /// Detaches from `process` the probes of files it no longer maps (after an exec).
    fn drop_unmapped_links(&mut self, process: &Process) {
        let Ok(objects) = process.mapped_objects() else { return };
        // Both identities of each mapped file: linkers are keyed as maps says, libraries as stat.
        let mut identities: Vec<(String, u64)> = objects.iter().map(|o| (o.dev.clone(), o.inode)).collect();
        identities.extend(objects.iter().filter_map(|o| self.file_identity(process, o)).collect::<Vec<_>>());
        let Some(links) = self.links.get_mut(&process.pid) else { return };
        let mapped: HashSet<(&str, u64)> = identities.iter().map(|(dev, inode)| (dev.as_str(), *inode)).collect();
        let foreseen = &self.foreseen_links;
        let unmapped: Vec<LinkTarget> = links
            .keys()
            .filter(|target| match target {
                LinkTarget::Library(key) if foreseen.contains(&(process.pid, key.clone())) => false,
                LinkTarget::Library((dev, inode, _))
                | LinkTarget::Armed((dev, inode, _))
                | LinkTarget::Linker((dev, inode)) => !mapped.contains(&(dev.as_str(), *inode)),
            })
            .cloned()
            .collect();
        for target in unmapped {
            for link in links.remove(&target).into_iter().flatten() {
                self.detacher.detach(link);
            }
        }
    }

    /// `object`'s identity as `stat` gives it through the process's root (see
    /// `file_identities`); `None` when the file cannot be reached (the process is exiting). Only
    /// what `stat` said is remembered: a guess kept here would give every later process mapping
    /// the file a second set of probes (measured: 4 spans per statement under churn).
    fn file_identity(&mut self, process: &Process, object: &MappedObject) -> Option<(String, u64)> {
        let seen = (object.dev.clone(), object.inode);
        if let Some(identity) = self.file_identities.get(&seen) {
            return Some(identity.clone());
        }
        let identity = file_identity(&process.host_path(&object.path))?;
        self.file_identities.insert(seen, identity.clone());
        Some(identity)
    }

    /// Attaches, before they are mapped, the integrations' probes to every library file the
    /// process's dynamic linker would load for them: a library that arrives later (`dlopen`, or
    /// an exec'd image's startup) then has its breakpoints from the instant it is mapped, where
    /// the linker's notice would bring them milliseconds after its first calls. The rendezvous
    /// probe stays for what no search foresaw (a wheel's bundled copy, an absolute dlopen).
    fn attach_foreseen(&mut self, process: &Process) -> Vec<AttachOutcome> {
        let mut outcomes = Vec::new();
        for (index, file) in self.foreseen_files(process).iter() {
            let key = (file.dev.clone(), file.inode, *index);
            let first_time = self.examined.insert(key.clone());
            if first_time {
                let object =
                    MappedObject { path: file.path.clone(), dev: file.dev.clone(), inode: file.inode, start: 0 };
                match self.resolve_library(*index, process, &object, None, &mut None) {
                    Ok(Some(probes)) => self.keep_library(key.clone(), probes),
                    Ok(None) => {}
                    Err(reason) => outcomes.push(self.failed(*index, &file.path, reason)),
                }
            }
            let Some(library) = self.libraries.get(&key) else { continue };
            let probes = library.attached_at_once(self.integrations[*index].probes());
            let target = LinkTarget::Library(key.clone());
            if self.has_links(process.pid, &target) {
                // Mapped already, or foreseen before: kept across an exec either way.
                self.foreseen_links.insert((process.pid, key));
                continue;
            }
            match self.attach_library(&key, &process.host_path(&file.path), process.pid, false) {
                Ok(links) => {
                    self.store_links(process.pid, target, links);
                    self.foreseen_links.insert((process.pid, key));
                    if first_time {
                        outcomes.push(AttachOutcome::Foreseen {
                            integration: self.integrations[*index].name(),
                            probes,
                            path: file.path.clone(),
                        });
                    }
                }
                Err(reason) => outcomes.push(self.failed(*index, &file.path, reason)),
            }
        }
        outcomes
    }

    /// The library files (and the integration each is for) that `process` could load. Found
    /// once per filesystem root, linker cache and `LD_LIBRARY_PATH`: a forked worker asks what
    /// its parent already asked.
    fn foreseen_files(&mut self, process: &Process) -> Arc<Vec<(usize, LibraryFile)>> {
        let ld_library_path = read_environ(process.pid).remove("LD_LIBRARY_PATH");
        let key = ForeseenKey::of(process, ld_library_path.clone());
        if let Some(files) = self.foreseen.get(&key) {
            return files.clone();
        }
        let matchers: Vec<(usize, crate::integrations::LibraryMatch)> = self
            .integrations
            .iter()
            .enumerate()
            .map(|(index, integration)| (index, integration.library()))
            .filter(|(_, library)| library.marker_symbol().is_some()) // shared libraries only
            .collect();
        let files = loadable_libraries(process, ld_library_path.as_deref(), |path| {
            matchers.iter().any(|(_, library)| library.matches_file(path))
        });
        let mut by_integration: Vec<(usize, LibraryFile)> = Vec::new();
        for file in files {
            for (index, library) in &matchers {
                if library.matches_file(&file.path) {
                    by_integration.push((*index, file.clone()));
                }
            }
        }
        let files = Arc::new(by_integration);
        self.foreseen.insert(key, files.clone());
        files
    }

    fn has_links(&self, pid: u32, target: &LinkTarget) -> bool {
        match self.scope {
            ProbeScope::Global => self.global_links.contains_key(target),
            ProbeScope::Process => self.links.get(&pid).is_some_and(|links| links.contains_key(target)),
        }
    }

    /// Keeps `links`: for every process (global scope) or for `pid`.
    fn store_links(&mut self, pid: u32, target: LinkTarget, links: Vec<ProbeLinks>) {
        match self.scope {
            ProbeScope::Global => self.global_links.insert(target, links),
            ProbeScope::Process => self.links.entry(pid).or_default().insert(target, links),
        };
    }

    /// The pid a link is attached for: the process, or 0 (every process) in global scope.
    fn link_pid(&self, pid: u32) -> u32 {
        match self.scope {
            ProbeScope::Global => 0,
            ProbeScope::Process => pid,
        }
    }

    fn attach_new_libraries(&mut self, process: &Process, objects: &[MappedObject]) -> Vec<AttachOutcome> {
        let mut outcomes = Vec::new();
        let executable = std::fs::read_link(format!("/proc/{}/exe", process.pid)).ok();
        for object in objects {
            let Some((dev, inode)) = self.file_identity(process, object) else { continue };
            // Read once for every integration that looks at the file (an executable is looked
            // at by each whose library may be linked in statically).
            let mut loaded = None;
            for index in 0..self.integrations.len() {
                let key = (dev.clone(), inode, index);
                let first_time = !self.examined.contains(&key);
                if first_time {
                    self.examined.insert(key.clone());
                    match self.resolve_library(index, process, object, executable.as_deref(), &mut loaded) {
                        Ok(Some(probes)) => self.keep_library(key.clone(), probes),
                        Ok(None) => {}
                        Err(reason) => outcomes.push(self.failed(index, &object.path, reason)),
                    }
                }
                let Some(library) = self.libraries.get(&key) else { continue };
                let symbols = library.symbols.clone();
                let probes = library.attached_at_once(self.integrations[index].probes());
                let target = LinkTarget::Library(key.clone());
                if !self.has_links(process.pid, &target) {
                    let host_path = process.host_path(&object.path);
                    match self.attach_library(&key, &host_path, process.pid, false) {
                        Ok(links) => {
                            self.store_links(process.pid, target, links);
                        }
                        Err(reason) => {
                            outcomes.push(self.failed(index, &object.path, reason));
                            continue;
                        }
                    }
                    // Reported once per file, not for every process mapping it.
                    if first_time {
                        outcomes.push(AttachOutcome::Attached {
                            integration: self.integrations[index].name(),
                            probes,
                            path: object.path.clone(),
                            after_load: None,
                        });
                    }
                }
                if self.announced.insert((process.pid, key)) {
                    self.integrations[index].on_library_attached(process.pid, &symbols);
                }
            }
        }
        outcomes
    }

    /// Looks at `object` for integration `index` the first time a process maps it: whether it
    /// is the integration's library, and where its probes go. Registers the probes (their ids
    /// serve every process). `Ok(None)`: not this integration's library. `loaded` keeps the
    /// file's symbols (or why they could not be read) for the next integration.
    fn resolve_library(
        &mut self,
        index: usize,
        process: &Process,
        object: &MappedObject,
        executable: Option<&Path>,
        loaded: &mut Option<Result<Arc<ElfSymbols>, String>>,
    ) -> Result<Option<LibraryProbes>, String> {
        let library = self.integrations[index].library();
        let by_name = library.matches_file(&object.path);
        let is_executable = executable == Some(object.path.as_path());
        if !(by_name || is_executable && library.marker_symbol().is_some()) {
            return Ok(None);
        }
        let load = || ElfSymbols::load(&process.host_path(&object.path)).map(Arc::new).map_err(|e| e.to_string());
        let symbols = match loaded.get_or_insert_with(load) {
            Ok(symbols) => symbols.clone(),
            Err(error) if by_name => return Err(error.clone()),
            Err(_) => return Ok(None),
        };
        // A statically linked copy of the library counts only if its marker is there.
        if !by_name && !library.marker_symbol().is_some_and(|m| symbols.has_function(m)) {
            return Ok(None);
        }
        let defs = self.integrations[index].probes();
        // A uretprobe swaps the return address for a trampoline's; when Go grows a goroutine's
        // stack it walks the frames, meets that address and kills the program ("unexpected
        // return pc"). Entry probes are safe; exits in Go code need return-site probes.
        if symbols.built_by_go() && defs.iter().any(|def| def.exit) {
            return Err(format!(
                "{} is a Go program: return probes (uretprobes) would crash it when Go moves a goroutine's stack",
                symbols.path().display()
            ));
        }
        let mut sites = Vec::new();
        for (probe_index, site) in self.integrations[index].probe_sites(&symbols) {
            match site {
                Ok(location) => sites.push((probe_index, location)),
                Err(error @ (SymbolError::MissingSymbol { .. } | SymbolError::Unplaceable { .. }))
                    if defs[probe_index].required =>
                {
                    return Err(error.to_string())
                }
                Err(error) => tracing::debug!(%error, "optional probe skipped"),
            }
        }
        if self.report_sites {
            for (probe_index, location) in &sites {
                let armed = match defs[*probe_index].armed_by {
                    Some(trigger) => format!(" (armed by the first call of {})", defs[trigger].symbol),
                    None => String::new(),
                };
                eprintln!(
                    "ddtrace-agent: {}: probe site {}{armed} in {} at file offset {:#x}, {}",
                    self.integrations[index].name(),
                    defs[*probe_index].symbol,
                    object.path.display(),
                    location.file_offset,
                    symbols.describe_site(location)
                );
            }
        }
        let mut probes = Vec::with_capacity(sites.len());
        let mut triggers = Vec::new();
        let arms_others = |trigger: usize| sites.iter().any(|(other, _)| defs[*other].armed_by == Some(trigger));
        let announcing: Vec<bool> = sites.iter().map(|(probe_index, _)| arms_others(*probe_index)).collect();
        for ((probe_index, location), announces) in sites.into_iter().zip(announcing) {
            let file_offset = location.file_offset;
            let def = ProbeDef { announce_first_hit: announces, ..defs[probe_index] };
            let id = self.programs.register_probe_at(&def, location.go).map_err(|e| e.to_string())?;
            if announces {
                // Only a probe in Go code announces its first hit (the kernel does it where such
                // a hit is counted), and its program reports nothing else.
                debug_assert!(
                    matches!(def.kind, ProbeKind::GoCode { .. }),
                    "{} arms other probes but is not a probe in Go code",
                    def.symbol
                );
                self.route(id, Route::FirstHit);
                triggers.push(id);
            } else {
                self.route(id, Route::Integration { integration: index, probe: probe_index });
            }
            probes.push((id, probe_index, file_offset));
        }
        Ok(Some(LibraryProbes { symbols, probes, triggers }))
    }

    /// Keeps a resolved library's probes, and which library each of its triggers arms.
    fn keep_library(&mut self, key: LibraryKey, probes: LibraryProbes) {
        for &id in &probes.triggers {
            self.triggers.insert(id, key.clone());
        }
        self.libraries.insert(key, probes);
    }

    fn failed(&self, index: usize, path: &Path, reason: String) -> AttachOutcome {
        AttachOutcome::Failed { integration: self.integrations[index].name(), path: path.to_path_buf(), reason }
    }

    /// Attaches the probes of library `key` to process `pid`: those armed by another's first
    /// hit when `armed`, else the others. Any failure detaches the ones already attached (the
    /// links are dropped).
    fn attach_library(
        &mut self,
        key: &LibraryKey,
        host_path: &Path,
        pid: u32,
        armed: bool,
    ) -> Result<Vec<ProbeLinks>, String> {
        let pid = self.link_pid(pid);
        let library = &self.libraries[key];
        let defs = self.integrations[key.2].probes();
        let mut links = Vec::with_capacity(library.probes.len());
        for &(id, probe_index, file_offset) in &library.probes {
            let def = &defs[probe_index];
            if def.armed_by.is_some() != armed {
                continue;
            }
            links.push(
                self.programs.attach_to_process(id, def, host_path, file_offset, pid).map_err(|e| e.to_string())?,
            );
        }
        Ok(links)
    }

    fn watch_linker(&mut self, process: &Process, objects: &[MappedObject]) -> Result<(), String> {
        let linker = objects
            .iter()
            .find(|o| {
                o.path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("ld-linux") || n.starts_with("ld-musl"))
            })
            .ok_or("no dynamic linker mapped (static executable)")?;
        let key = (linker.dev.clone(), linker.inode);
        let target = LinkTarget::Linker(key.clone());
        if self.has_links(process.pid, &target) {
            return Ok(()); // this process's rendezvous is already probed (kept across exec)
        }
        let host_path = process.host_path(&linker.path);
        let (id, file_offset) = match self.linkers.get(&key) {
            Some(Some(probe)) => *probe,
            Some(None) => return Err("the dynamic linker has no rendezvous function".into()),
            None => {
                let resolved = self.resolve_linker(&host_path);
                self.linkers.insert(key, resolved.as_ref().ok().copied());
                resolved?
            }
        };
        let links = self
            .programs
            .attach_to_process(id, &LINKER_PROBE, &host_path, file_offset, self.link_pid(process.pid))
            .map_err(|e| e.to_string())?;
        self.store_links(process.pid, target, vec![links]);
        Ok(())
    }

    /// Finds the linker's rendezvous function and registers its probe (one id for every process).
    fn resolve_linker(&mut self, host_path: &Path) -> Result<(ProbeId, u64), String> {
        let symbols = ElfSymbols::load(host_path).map_err(|e| e.to_string())?;
        let location = symbols.function_entry(LINKER_RENDEZVOUS_SYMBOL).map_err(|e| e.to_string())?;
        let id = self.programs.register_probe(&LINKER_PROBE).map_err(|e| e.to_string())?;
        self.route(id, Route::LibraryLoaded);
        Ok((id, location.file_offset))
    }

    fn route(&mut self, id: ProbeId, route: Route) {
        let id = id as usize;
        if self.routes.len() <= id {
            self.routes.resize(id + 1, None);
        }
        self.routes[id] = Some(route);
    }
}

/// Whether an attach failed because the process no longer exists (ESRCH).
fn process_gone(reason: &str) -> bool {
    reason.contains("(os error 3)")
}

#[derive(Debug, thiserror::Error)]
pub enum InstrumentError {
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error(transparent)]
    Probe(#[from] ProbeError),
}
