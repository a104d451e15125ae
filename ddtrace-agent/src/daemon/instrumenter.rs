use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    sync::Arc,
};

use crate::{
    core::{ContextTree, WallClock},
    integrations::Integration,
    probes::{KernelPrograms, ProbeDef, ProbeError, ProbeEvent, ProbeId, ProcessChange, ProcessChangeKind},
    symbols::{ElfSymbols, SymbolError},
    target::{is_process, MappedObject, Process, TargetError},
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
    Integration { integration: usize, probe: usize },
    LibraryLoaded,
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
    Waiting {
        integration: &'static str,
        library: &'static str,
    },
    Failed {
        integration: &'static str,
        path: PathBuf,
        reason: String,
    },
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
            Self::Waiting { integration, library } => {
                write!(f, "{integration}: waiting for {library} (not loaded yet)")
            }
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

/// A library file an integration is attached to (once for every process that maps it).
type LibraryKey = (String, u64, usize);

/// Attaches integrations to the libraries traced processes map, now and whenever they map more,
/// follows the processes' forks, execs and exits, and routes kernel events to the integration
/// that owns the probe.
pub struct Instrumenter {
    programs: KernelPrograms,
    integrations: Vec<Box<dyn Integration>>,
    routes: Vec<Option<Route>>,
    /// The traced processes.
    processes: HashMap<u32, Process>,
    /// (device, inode, integration index) already looked at, attached or not.
    examined: HashSet<LibraryKey>,
    /// Libraries with probes, and their symbols (integrations read them per process).
    attached: HashMap<LibraryKey, Arc<ElfSymbols>>,
    /// (tgid, library) pairs whose integration was told about that process.
    announced: HashSet<(u32, LibraryKey)>,
    /// (device, inode) of dynamic linkers whose rendezvous is probed.
    linkers: HashSet<(String, u64)>,
    /// Library-load notifications handled (each one a rescan of the maps).
    pub library_events: u64,
}

impl Instrumenter {
    pub fn new(programs: KernelPrograms, integrations: Vec<Box<dyn Integration>>) -> Self {
        Self {
            programs,
            integrations,
            routes: Vec::new(),
            processes: HashMap::new(),
            examined: HashSet::new(),
            attached: HashMap::new(),
            announced: HashSet::new(),
            linkers: HashSet::new(),
            library_events: 0,
        }
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
        let objects = process.mapped_objects()?;
        let mut outcomes = self.attach_new_libraries(&process, &objects);
        if let Err(reason) = self.watch_linker(&process, &objects) {
            tracing::warn!(pid = process.pid, %reason, "libraries loaded later (dlopen) will not be instrumented");
        }
        self.processes.insert(process.pid, process);
        for (index, integration) in self.integrations.iter().enumerate() {
            if !self.attached.keys().any(|(_, _, i)| *i == index)
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

    /// Routes one kernel event. Returns attach outcomes when the event was a library load.
    pub fn handle(&mut self, event: &ProbeEvent, contexts: &mut ContextTree) -> Vec<AttachOutcome> {
        tracing::trace!(?event, "kernel event");
        match self.routes.get(event.probe_id() as usize).copied().flatten() {
            Some(Route::Integration { integration, probe }) => {
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
            None => Vec::new(),
        }
    }

    /// The traced processes.
    pub fn process_ids(&self) -> Vec<u32> {
        self.processes.keys().copied().collect()
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
            ProcessChangeKind::Forked { child } => match is_process(child) {
                // The kernel tracked the new task before it ran; a thread shares its process's
                // bit already, so its own id must not stay marked.
                Some(false) | None => {
                    if !self.processes.contains_key(&child) {
                        self.programs.untrack_process(child);
                    }
                    (None, Vec::new())
                }
                Some(true) => match Process::open(child) {
                    Ok(process) => match self.instrument(process) {
                        Ok(outcomes) => (
                            Some(ProcessOutcome::Forked { parent: change.tgid, child }),
                            outcomes.into_iter().filter(|o| !matches!(o, AttachOutcome::Waiting { .. })).collect(),
                        ),
                        Err(_) => (None, Vec::new()),
                    },
                    Err(_) => {
                        self.programs.untrack_process(child);
                        (None, Vec::new())
                    }
                },
            },
            ProcessChangeKind::Exec => {
                let Some(process) = self.processes.get(&change.tgid).cloned() else { return (None, Vec::new()) };
                // A new program: nothing the integrations knew of the old image holds.
                contexts.end_process(change.tgid, change.ktime_ns);
                for integration in &mut self.integrations {
                    integration.on_process_exit(change.tgid);
                }
                self.announced.retain(|(tgid, _)| *tgid != change.tgid);
                let outcomes = match process.mapped_objects() {
                    Ok(objects) => {
                        let outcomes = self.attach_new_libraries(&process, &objects);
                        if let Err(reason) = self.watch_linker(&process, &objects) {
                            tracing::debug!(pid = process.pid, %reason, "no dynamic linker after exec");
                        }
                        outcomes
                    }
                    Err(_) => Vec::new(),
                };
                let program = std::fs::read_link(format!("/proc/{}/exe", change.tgid))
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                (Some(ProcessOutcome::Execed { pid: change.tgid, program }), outcomes)
            }
            ProcessChangeKind::Exited => {
                if !self.processes.contains_key(&change.tgid) {
                    return (None, Vec::new());
                }
                contexts.end_process(change.tgid, change.ktime_ns);
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
        self.processes.remove(&tgid);
        self.announced.retain(|(pid, _)| *pid != tgid);
    }

    fn attach_new_libraries(&mut self, process: &Process, objects: &[MappedObject]) -> Vec<AttachOutcome> {
        let mut outcomes = Vec::new();
        let executable = std::fs::read_link(format!("/proc/{}/exe", process.pid)).ok();
        for object in objects {
            for index in 0..self.integrations.len() {
                let key = (object.dev.clone(), object.inode, index);
                if let Some(symbols) = self.attached.get(&key).cloned() {
                    // Probes already in place (another process maps the same file).
                    if self.announced.insert((process.pid, key)) {
                        self.integrations[index].on_library_attached(process.pid, &symbols);
                    }
                    continue;
                }
                if self.examined.contains(&key) {
                    continue;
                }
                let library = self.integrations[index].library();
                let by_name = library.matches_file(&object.path);
                let is_executable = executable.as_deref() == Some(object.path.as_path());
                if !(by_name || is_executable && library.marker_symbol().is_some()) {
                    continue;
                }
                let host_path = process.host_path(&object.path);
                let symbols = match ElfSymbols::load(&host_path) {
                    Ok(symbols) => symbols,
                    Err(error) => {
                        self.examined.insert(key);
                        if by_name {
                            outcomes.push(self.failed(index, &object.path, error.to_string()));
                        }
                        continue;
                    }
                };
                // A statically linked copy of the library counts only if its marker is there.
                if !by_name && !library.marker_symbol().is_some_and(|m| symbols.has_function(m)) {
                    self.examined.insert(key);
                    continue;
                }
                self.examined.insert(key.clone());
                outcomes.push(match self.attach_integration(index, &symbols, &host_path, process.pid) {
                    Ok(probes) => {
                        self.announced.insert((process.pid, key.clone()));
                        self.attached.insert(key, Arc::new(symbols));
                        AttachOutcome::Attached {
                            integration: self.integrations[index].name(),
                            probes,
                            path: object.path.clone(),
                            after_load: None,
                        }
                    }
                    Err(reason) => self.failed(index, &object.path, reason),
                });
            }
        }
        outcomes
    }

    fn failed(&self, index: usize, path: &Path, reason: String) -> AttachOutcome {
        AttachOutcome::Failed { integration: self.integrations[index].name(), path: path.to_path_buf(), reason }
    }

    /// Attaches every probe of integration `index`; a missing optional symbol is skipped, a
    /// missing required one fails the integration for this library.
    fn attach_integration(
        &mut self,
        index: usize,
        symbols: &ElfSymbols,
        host_path: &Path,
        pid: u32,
    ) -> Result<usize, String> {
        let probes = self.integrations[index].probes();
        // A uretprobe swaps the return address for a trampoline's; when Go grows a goroutine's
        // stack it walks the frames, meets that address and kills the program ("unexpected
        // return pc"). Entry probes are safe; exits in Go code need return-site probes.
        if symbols.built_by_go() && probes.iter().any(|def| def.exit) {
            return Err(format!(
                "{} is a Go program: return probes (uretprobes) would crash it when Go moves a goroutine's stack",
                symbols.path().display()
            ));
        }
        let mut locations = Vec::new();
        for (probe_index, def) in probes.iter().enumerate() {
            match symbols.function_entry(def.symbol) {
                Ok(location) => locations.push((probe_index, def, location)),
                Err(error @ SymbolError::MissingSymbol { .. }) if def.required => return Err(error.to_string()),
                Err(error) => tracing::debug!(%error, "optional probe skipped"),
            }
        }
        for (probe_index, def, location) in &locations {
            let id = self.programs.attach(def, host_path, location.file_offset, pid).map_err(|e| e.to_string())?;
            self.route(id, Route::Integration { integration: index, probe: *probe_index });
        }
        self.integrations[index].on_library_attached(pid, symbols);
        Ok(locations.len())
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
        if !self.linkers.insert((linker.dev.clone(), linker.inode)) {
            return Ok(()); // its rendezvous is already probed, for every process
        }
        let host_path = process.host_path(&linker.path);
        let symbols = ElfSymbols::load(&host_path).map_err(|e| e.to_string())?;
        let location = symbols.function_entry(LINKER_RENDEZVOUS_SYMBOL).map_err(|e| e.to_string())?;
        let id = self
            .programs
            .attach(&LINKER_PROBE, &host_path, location.file_offset, process.pid)
            .map_err(|e| e.to_string())?;
        self.route(id, Route::LibraryLoaded);
        Ok(())
    }

    fn route(&mut self, id: ProbeId, route: Route) {
        let id = id as usize;
        if self.routes.len() <= id {
            self.routes.resize(id + 1, None);
        }
        self.routes[id] = Some(route);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InstrumentError {
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error(transparent)]
    Probe(#[from] ProbeError),
}
