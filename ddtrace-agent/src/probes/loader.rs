use std::path::Path;

use aya::{
    maps::{Array, HashMap, MapData, MapError, PerCpuArray},
    programs::{
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLink, UProbeScope},
        PerfEvent, ProgramError, RawTracePoint, TracePoint, UProbe,
    },
    Ebpf, EbpfLoader,
};
use ddtrace_common::{
    names, socket_op, tracepoint_globals, GoSiteSpec, ProbeSpec, PythonLayout, SocketEntry, SocketKey, MAX_PROBES,
};

use super::{
    counters::KernelCounters,
    reader::EventReader,
    socket_layout::socket_layout_from_kernel,
    spec::{ProbeDef, ProbeKind},
    tracefs,
};

/// Index of a probe's spec in the kernel, passed to the programs as the attach cookie.
pub type ProbeId = u32;

/// The uprobe links of one probe in one process (entry and/or exit program). Dropping them
/// detaches the probe from that process only.
pub struct ProbeLinks(Vec<UProbeLink>);

/// A uprobe scope covering every thread of process `pid` and nothing else; pid 0: every
/// process mapping the file (the in-kernel bitmap of tracked processes is then the only gate).
fn process_scope(pid: u32) -> UProbeScope {
    std::num::NonZeroU32::new(pid).map_or(UProbeScope::AllProcesses, UProbeScope::OneProcess)
}

/// `bpf_map_update_elem` flags: create only, update only.
const MAP_NO_EXIST: u64 = 1;
const MAP_EXIST: u64 = 2;

/// The eBPF object this binary embeds (built by `cargo xtask build-ebpf`).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("DDTRACE_EBPF_OBJECT"));

/// System calls whose entry and exit the socket programs follow (x86-64 tracepoint names:
/// `sendfile` is `sendfile64`), each with three arguments or more (the entry program loads
/// them from the record directly). The numbers they stand for are in the eBPF object's `sockets`.
const SOCKET_SYSCALLS: &[&str] = &[
    "read",
    "write",
    "readv",
    "writev",
    "sendfile64",
    "connect",
    "accept",
    "accept4",
    "sendto",
    "recvfrom",
    "sendmsg",
    "recvmsg",
];
/// System calls the programs need at entry only: a close ends a socket, a clone tells a thread.
const ENTRY_ONLY_SYSCALLS: &[&str] = &["close", "clone", "clone3"];

/// The tracepoints of the socket layer's programs (category for tracefs, event, program): none
/// is a system call's, so the host's other system calls keep their fast path.
const SOCKET_LAYER_TRACEPOINTS: [(&str, &str, &str); 4] = [
    ("sock", "sock_send_length", names::SOCK_SENT_PROGRAM),
    ("sock", "sock_recv_length", names::SOCK_RECEIVED_PROGRAM),
    ("sock", "inet_sock_set_state", names::TCP_STATE_PROGRAM),
    ("task", "task_newtask", names::TASK_NEW_PROGRAM),
];

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("loading eBPF programs was refused ({0}); run ddtrace-agent as root (sudo) or with CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN")]
    NotPermitted(String),
    #[error("the embedded eBPF object could not be loaded: {0}")]
    Load(String),
    #[error("the eBPF object has no {0}; rebuild it with `cargo xtask build-ebpf`")]
    Missing(&'static str),
    #[error("more than {MAX_PROBES} probes; detach some integrations")]
    TooManyProbes,
    #[error("attaching {program} to {symbol} in {path} ({}) failed: {reason}", scope_text(*pid))]
    Attach { program: &'static str, symbol: String, path: String, pid: u32, reason: String },
    #[error("updating eBPF map {map}: {reason}")]
    Map { map: &'static str, reason: String },
}

/// Whom a link covers, in an error message.
fn scope_text(pid: u32) -> String {
    if pid == 0 {
        "all processes".into()
    } else {
        format!("pid {pid}")
    }
}

fn is_permission_error(text: &str) -> bool {
    // EPERM is a missing capability; EACCES from BPF_PROG_LOAD is the verifier saying no.
    text.contains("Operation not permitted") || text.contains("os error 1)")
}

/// The loaded kernel programs and the maps the daemon writes.
pub struct KernelPrograms {
    ebpf: Ebpf,
    specs: Array<MapData, ProbeSpec>,
    tracked: Array<MapData, u64>,
    /// Bit `tgid`: the process runs Go (its socket events carry the goroutine).
    go_processes: Array<MapData, u64>,
    /// First hits the kernel announced, by `tgid << 32 | probe id`.
    announced_hits: HashMap<MapData, u64, u8>,
    counters: PerCpuArray<MapData, u64>,
    /// Low half: the side and the kernel's flags; high half: which socket (see the kernel's map).
    sockets: HashMap<MapData, SocketKey, SocketEntry>,
    /// How the sampler walks the Python frames of each process that has a CPython.
    python: HashMap<MapData, u32, PythonLayout>,
    /// `task_struct.thread.fsbase` on this kernel, when its BTF says (Python frames need it).
    task_fsbase: Option<u32>,
    /// Kept alive for the life of the programs: dropping it closes the log map (see platform.md).
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    next_probe_id: ProbeId,
}

/// Node mode's exec reporting (see [`KernelPrograms::load_with`]).
#[derive(Debug, Clone, Copy)]
pub struct NodeExecs {
    pub every_exec: bool,
}

impl KernelPrograms {
    /// Loads the embedded object and its generic entry/exit programs.
    /// `kernel_log_level` is aya-log's level (0 = off): kernel diagnostics stay off the hot path
    /// unless asked for.
    pub fn load(kernel_log_level: u8) -> Result<Self, ProbeError> {
        Self::load_with(kernel_log_level, None, true)
    }

    /// Like [`load`](Self::load); `node` for node mode: the kernel tracks new programs that opt in
    /// at their exec and reports them, and with `every_exec: true` every other new program of
    /// the host too (the daemon selects by more than `DD_SERVICE`).
    /// `record_callers`: whether events of interpreted processes carry their caller's frames.
    pub fn load_with(kernel_log_level: u8, node: Option<NodeExecs>, record_callers: bool) -> Result<Self, ProbeError> {
        let every_exec = node.is_some_and(|node| node.every_exec);
        raise_memlock_limit();
        let offsets = lifecycle_field_offsets();
        let mut loader = EbpfLoader::new();
        loader.override_global(aya_log::LEVEL, &kernel_log_level, false);
        // Without it, a new program that opts in is judged by the daemon only: one that lives
        // less than a millisecond can be over before it is tracked.
        let exec_layout = node.is_some().then(super::exec_layout::exec_layout_from_kernel).and_then(|layout| {
            layout
                .inspect_err(|reason| tracing::warn!(%reason, "node: the kernel cannot read new programs' environments (no usable BTF); the daemon judges them alone, a moment after they start"))
                .ok()
        });
        if let Some(layout) = &exec_layout {
            loader.override_global(names::EXEC_LAYOUT, layout, true);
        }
        let every_exec = u32::from(every_exec);
        loader.override_global(tracepoint_globals::REPORT_EVERY_EXEC, &every_exec, true);
        let record_callers = u32::from(record_callers);
        loader.override_global(tracepoint_globals::RECORD_CALLERS, &record_callers, true);
        if let Ok((child_pid, group_dead)) = &offsets {
            loader.override_global(tracepoint_globals::FORK_CHILD_PID_OFFSET, child_pid, true);
            loader.override_global(tracepoint_globals::EXIT_GROUP_DEAD_OFFSET, group_dead, true);
        }
        // Without it the programs report no local socket addresses: HTTP spans of two traced
        // processes talking to each other are then not linked, everything else works.
        let socket_layout = socket_layout_from_kernel()
            .inspect_err(|reason| {
                tracing::warn!(%reason, "this end's socket addresses are unknown (no usable kernel BTF); HTTP calls between traced processes will not be linked")
            })
            .unwrap_or_default();
        loader.override_global(names::SOCKET_LAYOUT, &socket_layout, true);
        let mut ebpf = loader.load(EBPF_OBJECT).map_err(|e| {
            let text = format!("{e:#}: {}", std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default());
            if is_permission_error(&text) {
                ProbeError::NotPermitted(text)
            } else {
                ProbeError::Load(text)
            }
        })?;
        let logger = aya_log::EbpfLogger::init(&mut ebpf).ok();
        for name in [
            names::ENTRY_PROGRAM,
            names::EXIT_PROGRAM,
            names::TLS_ENTRY_PROGRAM,
            names::TLS_EXIT_PROGRAM,
            names::GO_TLS_ENTRY_PROGRAM,
            names::GO_TLS_RETURN_PROGRAM,
            names::GO_TLS_COPY_PROGRAM,
            names::GO_ROUND_TRIP_PROGRAM,
            names::GO_REQUEST_WRITE_PROGRAM,
            names::GO_SERVE_PROGRAM,
        ] {
            Self::uprobe(&mut ebpf, name)?.load().map_err(|e| load_error(name, e))?;
        }
        let specs = Array::try_from(ebpf.take_map(names::PROBE_SPECS).ok_or(ProbeError::Missing(names::PROBE_SPECS))?)
            .map_err(|e| ProbeError::Load(e.to_string()))?;
        let tracked = Array::try_from(
            ebpf.take_map(names::TRACKED_PROCESSES).ok_or(ProbeError::Missing(names::TRACKED_PROCESSES))?,
        )
        .map_err(|e| ProbeError::Load(e.to_string()))?;
        let go_processes =
            Array::try_from(ebpf.take_map(names::GO_PROCESSES).ok_or(ProbeError::Missing(names::GO_PROCESSES))?)
                .map_err(|e| ProbeError::Load(e.to_string()))?;
        let announced_hits = HashMap::try_from(
            ebpf.take_map(names::ANNOUNCED_HITS).ok_or(ProbeError::Missing(names::ANNOUNCED_HITS))?,
        )
        .map_err(|e| ProbeError::Load(e.to_string()))?;
        let counters =
            PerCpuArray::try_from(ebpf.take_map(names::COUNTERS).ok_or(ProbeError::Missing(names::COUNTERS))?)
                .map_err(|e| ProbeError::Load(e.to_string()))?;
        let sockets = HashMap::try_from(ebpf.take_map(names::SOCKETS).ok_or(ProbeError::Missing(names::SOCKETS))?)
            .map_err(|e| ProbeError::Load(e.to_string()))?;
        let python = HashMap::try_from(
            ebpf.take_map(names::PYTHON_PROCESSES).ok_or(ProbeError::Missing(names::PYTHON_PROCESSES))?,
        )
        .map_err(|e| ProbeError::Load(e.to_string()))?;
        let task_fsbase = match super::btf::Btf::from_kernel()
            .and_then(|mut btf| btf.member("task_struct", "thread.fsbase"))
        {
            Ok(place) if place.size == 8 => Some(place.offset),
            Ok(place) => {
                tracing::warn!(
                    size = place.size,
                    "task_struct.thread.fsbase is not 8 bytes: no Python frames in profiles"
                );
                None
            }
            Err(error) => {
                tracing::warn!(%error, "the kernel's BTF does not locate a task's TLS base: no Python frames in profiles");
                None
            }
        };
        let mut programs = Self {
            ebpf,
            specs,
            tracked,
            go_processes,
            announced_hits,
            counters,
            sockets,
            python,
            task_fsbase,
            logger,
            next_probe_id: 0,
        };
        programs.attach_socket_programs()?;
        match offsets {
            Ok(_) => programs.attach_lifecycle_tracepoints(node.is_some())?,
            Err(reason) => tracing::warn!(%reason, "children and exec of traced processes will not be followed"),
        }
        Ok(programs)
    }

    /// Fork, exec and exit of tracked processes, seen in the kernel as they happen; in node mode
    /// the exec program also opts new programs in (only it needs `bpf_loop`, 5.17+).
    fn attach_lifecycle_tracepoints(&mut self, node: bool) -> Result<(), ProbeError> {
        let exec = if node { names::EXEC_NODE_PROGRAM } else { names::EXEC_PROGRAM };
        for (program, event) in [
            (names::FORK_PROGRAM, "sched_process_fork"),
            (exec, "sched_process_exec"),
            (names::EXIT_PROCESS_PROGRAM, "sched_process_exit"),
        ] {
            self.attach_tracepoint(program, "sched", event)?;
        }
        Ok(())
    }

    /// Socket traffic of tracked processes: from the socket layer's own tracepoints where the
    /// kernel has them (6.3+), else from the socket system calls' tracepoints.
    /// `DDTRACE_SOCKET_HOOKS=syscalls` picks the latter on any kernel (to compare the two).
    fn attach_socket_programs(&mut self) -> Result<(), ProbeError> {
        let forced = std::env::var("DDTRACE_SOCKET_HOOKS").ok();
        let has_socket_layer =
            SOCKET_LAYER_TRACEPOINTS.iter().all(|(category, event, _)| tracefs::has_event(category, event));
        if has_socket_layer && forced.as_deref() != Some("syscalls") {
            for (_, event, program) in SOCKET_LAYER_TRACEPOINTS {
                let raw: &mut RawTracePoint = Self::program(&mut self.ebpf, program)?;
                raw.load().map_err(|e| load_error(program, e))?;
                raw.attach(event).map_err(|e| ProbeError::Attach {
                    program,
                    symbol: format!("raw tracepoint {event}"),
                    path: "bpf_raw_tracepoint_open".into(),
                    pid: 0,
                    reason: error_chain(&e),
                })?;
            }
            tracing::info!("socket traffic from the socket layer's tracepoints");
            return Ok(());
        }
        if forced.is_none() {
            tracing::info!(
                "no socket-layer tracepoints in this kernel (6.3+): socket traffic from the system calls' tracepoints"
            );
        }
        self.attach_syscall_tracepoints()
    }

    /// Socket system calls of tracked processes, on each call's own tracepoints: other system
    /// calls run no program (a uretprobe's return is a system call on x86-64 since 6.11, and a
    /// busy server's `epoll_wait` is none of ours). A kernel without them (no
    /// `CONFIG_FTRACE_SYSCALLS`) gets `raw_syscalls`, where every call of the machine runs the
    /// programs up to the tracked-process bitmap.
    fn attach_syscall_tracepoints(&mut self) -> Result<(), ProbeError> {
        let programs =
            [names::SYSCALL_ENTER_PROGRAM, names::SYSCALL_ENTER_CLOSE_CLONE_PROGRAM, names::SYSCALL_EXIT_PROGRAM];
        for program in programs {
            let tracepoint: &mut TracePoint = Self::program(&mut self.ebpf, program)?;
            tracepoint.load().map_err(|e| load_error(program, e))?;
        }
        if !tracefs::has_event("syscalls", "sys_enter_read") {
            tracing::info!(
                "no per-call system call tracepoints in this kernel: every system call runs the socket programs"
            );
            for program in programs {
                let event = if program == names::SYSCALL_EXIT_PROGRAM { "sys_exit" } else { "sys_enter" };
                self.attach_loaded_tracepoint(program, "raw_syscalls", event)?;
            }
            return Ok(());
        }
        for call in SOCKET_SYSCALLS {
            self.attach_loaded_tracepoint(names::SYSCALL_ENTER_PROGRAM, "syscalls", &format!("sys_enter_{call}"))?;
            self.attach_loaded_tracepoint(names::SYSCALL_EXIT_PROGRAM, "syscalls", &format!("sys_exit_{call}"))?;
        }
        for call in ENTRY_ONLY_SYSCALLS {
            let event = format!("sys_enter_{call}");
            self.attach_loaded_tracepoint(names::SYSCALL_ENTER_CLOSE_CLONE_PROGRAM, "syscalls", &event)?;
        }
        Ok(())
    }

    fn attach_tracepoint(&mut self, program: &'static str, category: &str, event: &str) -> Result<(), ProbeError> {
        let tracepoint: &mut TracePoint = Self::program(&mut self.ebpf, program)?;
        tracepoint.load().map_err(|e| load_error(program, e))?;
        self.attach_loaded_tracepoint(program, category, event)
    }

    fn attach_loaded_tracepoint(
        &mut self,
        program: &'static str,
        category: &str,
        event: &str,
    ) -> Result<(), ProbeError> {
        let tracepoint: &mut TracePoint = Self::program(&mut self.ebpf, program)?;
        tracepoint.attach(category, event).map_err(|e| ProbeError::Attach {
            program,
            symbol: format!("{category}:{event}"),
            path: "tracefs".into(),
            pid: 0,
            reason: error_chain(&e),
        })?;
        Ok(())
    }

    fn uprobe<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut UProbe, ProbeError> {
        Self::program(ebpf, name)
    }

    /// Program `name` of the object, as the program type `T` it must be.
    fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, ProbeError>
    where
        &'a mut T: TryFrom<&'a mut aya::programs::Program>,
    {
        ebpf.program_mut(name).ok_or(ProbeError::Missing(name))?.try_into().map_err(|_| ProbeError::Missing(name))
    }

    /// The ring buffer reader (can be taken once).
    pub fn take_event_reader(&mut self) -> Result<EventReader, ProbeError> {
        let map = self.ebpf.take_map(names::EVENTS).ok_or(ProbeError::Missing(names::EVENTS))?;
        EventReader::new(map)
    }

    /// The aya-log reader, drained by a background task.
    pub fn take_kernel_logger(&mut self) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
        self.logger.take()
    }

    /// Starts letting events of process `tgid` through the in-kernel filter.
    pub fn track_process(&mut self, tgid: u32) -> Result<(), ProbeError> {
        self.set_tracked(tgid, true)
    }

    pub fn untrack_process(&mut self, tgid: u32) {
        let _ = self.set_tracked(tgid, false);
    }

    /// Says whether process `tgid` runs Go: its reads and writes then carry their goroutine.
    pub fn set_runs_go(&mut self, tgid: u32, go: bool) {
        let index = tgid / 64;
        let Ok(word) = self.go_processes.get(&index, 0) else { return };
        let bit = 1u64 << (tgid % 64);
        if (word & bit != 0) != go {
            let _ = self.go_processes.set(index, if go { word | bit } else { word & !bit }, 0);
        }
    }

    /// Lets the kernel announce probe `probe_id`'s first hit in process `tgid` again (the process
    /// exited, or runs another program).
    pub fn forget_announced_hit(&mut self, tgid: u32, probe_id: ProbeId) {
        let _ = self.announced_hits.remove(&((tgid as u64) << 32 | probe_id as u64));
    }

    /// Flips bit `tgid` of the filter bitmap. The kernel flips bits too (forks, exits, node
    /// mode's opt-in at exec), atomically; this read-modify-write of a 64-process word is not, so
    /// a kernel flip of another bit of the same word between the read and the write would be
    /// undone. Writing only when the bit differs keeps that window to the daemon's real changes
    /// (a process the kernel already tracked, the common case in node mode, costs no write).
    fn set_tracked(&mut self, tgid: u32, tracked: bool) -> Result<(), ProbeError> {
        let map_error =
            |e: aya::maps::MapError| ProbeError::Map { map: names::TRACKED_PROCESSES, reason: e.to_string() };
        let index = tgid / 64;
        let word = self.tracked.get(&index, 0).map_err(map_error)?;
        let bit = 1u64 << (tgid % 64);
        if (word & bit != 0) == tracked {
            return Ok(());
        }
        let word = if tracked { word | bit } else { word & !bit };
        self.tracked.set(index, word, 0).map_err(map_error)
    }

    /// Lets the sampler record the Python frames of process `tgid` with `layout` (built with
    /// [`Self::task_fsbase`]). Returns false when the kernel's BTF did not give that offset.
    pub fn walk_python_frames(
        &mut self,
        tgid: u32,
        layout: impl FnOnce(u32) -> PythonLayout,
    ) -> Result<bool, ProbeError> {
        let Some(task_fsbase) = self.task_fsbase else { return Ok(false) };
        self.python
            .insert(tgid, layout(task_fsbase), 0)
            .map_err(|e| ProbeError::Map { map: names::PYTHON_PROCESSES, reason: e.to_string() })?;
        Ok(true)
    }

    /// Stops walking the Python frames of `tgid` (it exited, or exec'd another program).
    pub fn forget_python_frames(&mut self, tgid: u32) {
        let _ = self.python.remove(&tgid);
    }

    /// Tells the socket programs that `fd` of process `tgid` is a TCP connection it already had
    /// when the agent attached (they otherwise learn sockets from their handshake, or from
    /// accept and connect). False when the programs follow that fd already (a connection made
    /// between the attach and this call): theirs is the one to keep.
    pub fn adopt_socket(&mut self, tgid: u32, fd: u32, accepted: bool) -> Result<bool, ProbeError> {
        let side = if accepted { socket_op::ACCEPTED } else { socket_op::CONNECTED };
        let entry = SocketEntry { state: u64::from(side), sk: 0, inode: 0 };
        match self.sockets.insert(SocketKey { tgid, fd }, entry, MAP_NO_EXIST) {
            Ok(()) => Ok(true),
            Err(MapError::SyscallError(error)) if error.io_error.raw_os_error() == Some(libc::EEXIST) => Ok(false),
            Err(e) => Err(ProbeError::Map { map: names::SOCKETS, reason: e.to_string() }),
        }
    }

    /// Stops the reports of reads and writes on socket `fd` of process `tgid`, the one accepted
    /// or connected at `connected_ktime_ns` (nothing is done if the process has since reused the
    /// number for another socket): no protocol the daemon knows is spoken on it.
    pub fn ignore_socket(&mut self, tgid: u32, fd: u32, connected_ktime_ns: u64) -> Result<(), ProbeError> {
        let key = SocketKey { tgid, fd };
        let Ok(entry) = self.sockets.get(&key, 0) else { return Ok(()) };
        if entry.state >> 32 != connected_ktime_ns & 0xFFFF_FFFF {
            return Ok(());
        }
        // Only over the entry still there: one the programs removed meanwhile stays removed.
        match self.sockets.insert(
            key,
            SocketEntry { state: entry.state | ddtrace_common::SOCKET_IGNORED, ..entry },
            MAP_EXIST,
        ) {
            Ok(()) => Ok(()),
            Err(MapError::SyscallError(error)) if error.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            Err(e) => Err(ProbeError::Map { map: names::SOCKETS, reason: e.to_string() }),
        }
    }

    /// Writes `def`'s spec to the kernel and returns the probe id its events carry (the attach
    /// cookie). One id per (library, probe), shared by every process the probe is attached to.
    pub fn register_probe(&mut self, def: &ProbeDef) -> Result<ProbeId, ProbeError> {
        self.register_probe_at(def, None)
    }

    /// [`Self::register_probe`] for a probe whose site in Go code has its own spec (when the hit
    /// counts, where the result is).
    pub fn register_probe_at(&mut self, def: &ProbeDef, go: Option<GoSiteSpec>) -> Result<ProbeId, ProbeError> {
        if self.next_probe_id >= MAX_PROBES {
            return Err(ProbeError::TooManyProbes);
        }
        let id = self.next_probe_id;
        let mut spec = def.kernel_spec();
        spec.go = go.unwrap_or_default();
        self.specs.set(id, spec, 0).map_err(|e| ProbeError::Map { map: names::PROBE_SPECS, reason: e.to_string() })?;
        self.next_probe_id += 1;
        Ok(id)
    }

    /// Attaches probe `id` (registered for `def`) at `file_offset` of `path` for process `pid`
    /// only; dropping the returned links detaches it from that process.
    ///
    /// Scoped to the process, not to the file: the kernel installs the breakpoint only in the
    /// address spaces a probe's perf event targets (matched by mm, so every thread of `pid`),
    /// and other processes mapping the library never trap. With the file-wide scope every
    /// process of the host paid a trap per call (measured: SSL_write_ex+SSL_read_ex from ~7 to
    /// ~30 µs in a process we did not even trace). Children therefore need their own links
    /// (the daemon attaches on the fork event), and the in-kernel bitmap stays as a second gate.
    /// The perf event targets the task `pid` and follows it through exec (the kernel compares
    /// its current address space); a process whose main thread exits before the others loses
    /// its probes (the task has no address space any more).
    pub fn attach_to_process(
        &mut self,
        id: ProbeId,
        def: &ProbeDef,
        path: &Path,
        file_offset: u64,
        pid: u32,
    ) -> Result<ProbeLinks, ProbeError> {
        let attach_error = |program: &'static str, reason: String| ProbeError::Attach {
            program,
            symbol: def.symbol.to_string(),
            path: path.display().to_string(),
            pid,
            reason,
        };
        let scope = process_scope(pid);
        // The entry program also saves out-pointers that the exit reads back.
        let needs_entry = def.entry || def.out_pointer_arg.is_some();
        // Exit first: a call entered between the two attaches then has neither event, rather
        // than an entry whose exit never comes.
        let (exit_program, entry_program) = match def.kind {
            ProbeKind::Call => (names::EXIT_PROGRAM, names::ENTRY_PROGRAM),
            ProbeKind::TlsData { .. } => (names::TLS_EXIT_PROGRAM, names::TLS_ENTRY_PROGRAM),
            // Go code has no exit probes: both kinds run at an entry-style uprobe.
            // Go code has no exit probes (`def.exit` is false): only `program` is attached.
            ProbeKind::GoCode { program, .. } => (names::EXIT_PROGRAM, program),
        };
        let programs = [(def.exit, exit_program), (needs_entry, entry_program)];
        // On an error the links made so far are dropped, i.e. detached.
        let mut links = ProbeLinks(Vec::with_capacity(2));
        for (wanted, program) in programs {
            if !wanted {
                continue;
            }
            let point = UProbeAttachPoint {
                location: UProbeAttachLocation::AbsoluteOffset(file_offset),
                cookie: Some(id as u64),
            };
            let uprobe = Self::uprobe(&mut self.ebpf, program)?;
            let link_id = uprobe.attach(point, path, scope).map_err(|e| attach_error(program, error_chain(&e)))?;
            links.0.push(uprobe.take_link(link_id).map_err(|e| attach_error(program, error_chain(&e)))?);
        }
        Ok(links)
    }

    /// Loads the empty programs `cargo xtask bench` compares ours against and attaches them.
    pub fn attach_empty_baseline(&mut self, path: &Path, file_offset: u64, pid: u32) -> Result<(), ProbeError> {
        // The same scope as `attach_to_process`, so the baseline differs from ours by the
        // programs alone.
        let attach_error = |program: &'static str, reason: String| ProbeError::Attach {
            program,
            symbol: "baseline".into(),
            path: path.display().to_string(),
            pid,
            reason,
        };
        let scope = process_scope(pid);
        for program in [names::EMPTY_ENTRY_PROGRAM, names::EMPTY_EXIT_PROGRAM] {
            let uprobe = Self::uprobe(&mut self.ebpf, program)?;
            uprobe.load().map_err(|e| load_error(program, e))?;
            uprobe
                .attach(UProbeAttachLocation::AbsoluteOffset(file_offset), path, scope)
                .map_err(|e| attach_error(program, error_chain(&e)))?;
        }
        Ok(())
    }

    /// Starts the CPU sampler: a software cpu-clock event on every online CPU firing every
    /// `period` of CPU time, each running the sampling program (which keeps only tracked
    /// processes). A period rather than a frequency, so every sample stands for the same CPU
    /// time. Returns how many CPUs are sampled.
    pub fn start_cpu_sampling(&mut self, period: std::time::Duration) -> Result<usize, ProbeError> {
        let program = names::CPU_SAMPLE_PROGRAM;
        let cpus = aya::util::online_cpus().map_err(|(what, e)| ProbeError::Load(format!("{what}: {e}")))?;
        let perf_event: &mut PerfEvent = Self::program(&mut self.ebpf, program)?;
        perf_event.load().map_err(|e| load_error(program, e))?;
        let period_ns = (period.as_nanos() as u64).max(10_000);
        for &cpu in &cpus {
            perf_event
                .attach(
                    PerfEventConfig::Software(SoftwareEvent::CpuClock),
                    PerfEventScope::AllProcessesOneCpu { cpu },
                    SamplePolicy::Period(period_ns),
                    false,
                )
                .map_err(|e| ProbeError::Attach {
                    program,
                    symbol: format!("cpu-clock on CPU {cpu}"),
                    path: "perf_event_open".into(),
                    pid: 0,
                    reason: error_chain(&e),
                })?;
        }
        Ok(cpus.len())
    }

    /// Sums of the kernel's per-CPU counters.
    pub fn counters(&self) -> KernelCounters {
        KernelCounters::read(&self.counters)
    }
}

/// Offsets of `child_pid` (fork) and `group_dead` (exit) on this kernel.
fn lifecycle_field_offsets() -> Result<(u32, u32), String> {
    tracefs::ensure_mounted().map_err(|e| format!("tracefs is not mounted and could not be mounted: {e}"))?;
    let child_pid = tracefs::field_offset("sched", "sched_process_fork", "child_pid").map_err(|e| e.to_string())?;
    let group_dead = tracefs::field_offset("sched", "sched_process_exit", "group_dead").map_err(|e| e.to_string())?;
    Ok((child_pid, group_dead))
}

fn load_error(program: &'static str, error: ProgramError) -> ProbeError {
    let text = error_chain(&error);
    if is_permission_error(&text) {
        ProbeError::NotPermitted(text)
    } else {
        ProbeError::Load(format!("program {program}: {text}"))
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Older kernels charge eBPF maps to RLIMIT_MEMLOCK; newer ones use memory cgroups. Raising it
/// is harmless either way.
fn raise_memlock_limit() {
    let limit = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: plain syscall with a valid struct.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) };
}
