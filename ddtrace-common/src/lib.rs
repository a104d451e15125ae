//! The event ABI shared by the kernel programs (`ddtrace-ebpf`) and the daemon (`ddtrace-agent`).
//!
//! Everything here is `#[repr(C)]`, `Copy`, with padding written out as explicit fields, so both
//! sides agree byte for byte. The daemon never transmutes: it checks lengths and reads unaligned.
#![no_std]

/// Largest string argument the kernel copies out of the target (bytes, NUL included).
/// Bounded so a probe never copies an unbounded amount of the target's memory.
pub const MAX_CAPTURE: usize = 512;

/// Size of the probe spec table: the most probes attached at once, all integrations together.
pub const MAX_PROBES: u32 = 1024;

/// The largest pid Linux hands out (`PID_MAX_LIMIT` on 64-bit).
pub const PID_MAX_LIMIT: u32 = 4 * 1024 * 1024;

/// The in-kernel process filter is a bitmap of tgids in an array map of this many `u64` words
/// (512 KiB). An array lookup is inlined by the verifier; a hash lookup cost ~50 ns per probe
/// hit here, a third of our programs' whole run time (measured with `kernel.bpf_stats_enabled`).
pub const TRACKED_PROCESS_WORDS: u32 = PID_MAX_LIMIT / 64;

/// Ring buffer size (a power of two and a multiple of the page size).
pub const RING_BUFFER_BYTES: u32 = 4 * 1024 * 1024;

/// Argument registers copied on every entry event (x86-64 SysV: rdi, rsi, rdx, rcx, r8, r9).
pub const ENTRY_ARGS: usize = 6;

/// Bits of [`ProbeSpec::flags`].
pub mod probe_flags {
    /// Copy the NUL-terminated string pointed to by argument `capture_arg` at entry.
    pub const CAPTURE_STRING: u32 = 1 << 0;
    /// Remember argument `out_arg` (a pointer to an out-parameter) at entry and, at exit,
    /// report the 8 bytes it points to (e.g. the `sqlite3_stmt*` written through `ppStmt`).
    pub const READ_OUT_POINTER_AT_EXIT: u32 = 1 << 1;
    /// Wake the reader at once: for rare events the daemon must act on quickly
    /// (a library was just mapped and needs probes).
    pub const WAKE_READER: u32 = 1 << 2;
    /// Argument `length_arg` bounds the captured string (as SQLite's `nByte`: a byte count, or
    /// negative for "up to the NUL"): SQL handed over with a length need not be NUL-terminated,
    /// and the capture must not run into the memory after it.
    pub const CAPTURE_LENGTH_ARG: u32 = 1 << 3;
    /// A TLS data probe (`ddtrace_tls_entry`/`ddtrace_tls_exit`) on a function that sends
    /// plaintext (`SSL_write`); without it, one that receives (`SSL_read`).
    pub const TLS_WRITE: u32 = 1 << 4;
    /// A TLS data probe on an `_ex` form: it returns 1 on success and the byte count through the
    /// `size_t *` of argument 3.
    pub const TLS_LENGTH_OUT: u32 = 1 << 5;
    /// Record the caller's interpreter frames with the entry event (where the process runs an
    /// interpreter whose frames the kernel can walk): the code that made the call.
    pub const RECORD_CALLER: u32 = 1 << 6;
    /// This call ends the thread's run of calls with one caller (`sqlite3_reset`: the statement
    /// runs again, perhaps for other code): the next `RECORD_CALLER` call records again.
    pub const FORGET_CALLER: u32 = 1 << 7;
    /// The first counted hit of this probe in each process is announced (an `ENTRY` event with
    /// no arguments, waking the reader): the daemon then arms the probes that only matter once
    /// this one has run there (`ProbeDef::armed_by`).
    pub const ANNOUNCE_FIRST_HIT: u32 = 1 << 8;
}

/// A probe in Go code ([`ProbeSpec::go`]): when it counts, where a return site finds the
/// result, and how a `crypto/tls.Conn` leads to its socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoSiteSpec {
    /// 0: every hit counts; else [`go_site::BRANCH_DECIDES`] with the x86 condition code of the
    /// `jcc` at the site in the low nibble and [`go_site::WHEN_TAKEN`] when the hit counts only
    /// if the branch is taken (else only if it is not).
    pub only_if: u32,
    /// Return sites: where the result is; copy sites: where the `Conn` is. Either
    /// [`go_site::RESULT_IN_REGISTER`] with the x86 register number, or
    /// [`go_site::RESULT_ON_STACK`] with the offset from the stack pointer in the low 16 bits.
    pub result: u32,
    /// Where the `*net.TCPConn` and `*net.UnixConn` itabs (as `net.Conn`) are, from this
    /// site's address (PIE-proof: both move with the binary); 0 when not found.
    pub conn_itabs: [i64; 2],
    /// `crypto/tls.Conn.conn` (a `net.Conn` interface).
    pub tls_conn_conn: u16,
    /// `net.conn.fd` (a `*net.netFD`) in the `TCPConn`/`UnixConn` the interface holds.
    pub conn_fd: u16,
    /// `net.netFD.pfd.Sysfd` (an `int`).
    pub netfd_sysfd: u16,
    /// `net/http.Request.ctx` (a `context.Context`).
    pub request_ctx: u16,
}

/// [`GoSiteSpec`] encodings.
pub mod go_site {
    pub const BRANCH_DECIDES: u32 = 1 << 8;
    pub const WHEN_TAKEN: u32 = 1 << 4;
    pub const CONDITION_MASK: u32 = 0xf;
    pub const RESULT_IN_REGISTER: u32 = 1 << 24;
    pub const RESULT_ON_STACK: u32 = 2 << 24;
    pub const RESULT_KIND_MASK: u32 = 0xff << 24;
}

/// A Go object of one process as a kernel map key: a goroutine (`runtime.g`, in R14 in Go's
/// register ABI: goroutines move between threads, so a thread says nothing), a request or a
/// context, by address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct GoKey {
    pub address: u64,
    pub tgid: u32,
    pub _pad: u32,
}

/// What the kernel does for one attached probe; the daemon writes it at `PROBE_SPECS[probe_id]`
/// before attaching, and passes `probe_id` as the attach cookie.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeSpec {
    pub flags: u32,
    pub capture_arg: u32,
    pub out_arg: u32,
    pub length_arg: u32,
    /// With `RECORD_CALLER`: while calls on the same object return this value (a step that
    /// returned a row), the next one has the same caller and is not recorded again; any other
    /// return value ends the run (the object may be freed, and its address reused).
    pub same_caller_while_ret: u32,
    pub _pad: u32,
    /// Probes in Go code.
    pub go: GoSiteSpec,
}

/// [`EventHeader::kind`] values.
pub mod event_kind {
    pub const ENTRY: u32 = 1;
    pub const ENTRY_WITH_CAPTURE: u32 = 2;
    pub const EXIT: u32 = 3;
    /// A tracked process forked (or made a thread: the daemon tells them apart).
    pub const PROCESS_FORK: u32 = 4;
    /// A tracked process exec'd a new program.
    pub const PROCESS_EXEC: u32 = 5;
    /// The last thread of a tracked process exited.
    pub const PROCESS_EXIT: u32 = 6;
    /// The CPU sampler caught a thread of a tracked process on a CPU ([`StackSampleEvent`]).
    pub const STACK_SAMPLE: u32 = 7;
    /// A tracked process accepted, connected, moved bytes on or closed a socket ([`SocketEvent`]).
    pub const SOCKET: u32 = 8;
    /// Node mode: a program started with `DD_SERVICE` in its environment, tracked by the kernel
    /// at its exec, before it ran ([`OptInEvent`]). Sent instead of PROCESS_EXEC.
    pub const PROCESS_OPT_IN: u32 = 9;
    /// The Python frames of a thread sampled on a CPU ([`PythonStackEvent`]), written just
    /// before that sample's [`StackSampleEvent`].
    pub const PYTHON_STACK: u32 = 10;
}

/// Bytes kept of each unified service tagging value read from an environment at exec.
pub const OPT_IN_VALUE_BYTES: usize = 64;

/// What the kernel read from a new program's environment when it opted in: `DD_SERVICE`,
/// `DD_ENV` and `DD_VERSION`, each NUL-terminated (empty when unset), so the daemon knows the
/// process even if it has exited before its event is read.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptInEvent {
    pub header: EventHeader,
    pub service: [u8; OPT_IN_VALUE_BYTES],
    pub env: [u8; OPT_IN_VALUE_BYTES],
    pub version: [u8; OPT_IN_VALUE_BYTES],
}

/// Where the kernel keeps a process's environment strings: `task_struct.mm`, and
/// `mm_struct.env_start` / `env_end` (byte offsets on the running kernel, from its BTF, set as the
/// read-only global [`names::EXEC_LAYOUT`]). `known` is 0 when the daemon could not read them:
/// node mode then judges new programs in the daemon only.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecLayout {
    pub known: u32,
    pub task_mm: u32,
    pub mm_env_start: u32,
    pub mm_env_end: u32,
}

/// Most bytes of one read or write on a socket copied to the daemon: enough for a request line
/// and headers (a large `Cookie` can push trace context headers past 2 KiB); bodies are counted,
/// not copied.
pub const MAX_SOCKET_CAPTURE: usize = 4095;

/// Bytes of [`SocketEvent`] before the data; the kernel submits these plus `captured_len`.
pub const SOCKET_EVENT_HEADER_BYTES: usize = 104;

/// Bit of the kernel's `SOCKETS` values that the daemon sets when no protocol it knows is spoken
/// on a socket: its reads and writes are then no longer reported.
pub const SOCKET_IGNORED: u64 = 1 << 17;

/// [`SocketEvent::fd`] when the descriptor is not known (TLS plaintext read from the library's
/// buffer, with no system call on the socket during that call).
pub const FD_UNKNOWN: u32 = u32::MAX;

/// Bits of [`SocketEvent::flags`].
pub mod socket_flags {
    /// The data is TLS plaintext seen at the TLS library (`SSL_read`/`SSL_write`), not the bytes
    /// of the system call; `session` is the library's connection object.
    pub const TLS: u32 = 1 << 0;
    /// `local_family`, `local_port` and `local_address` hold this end's address.
    pub const LOCAL_ADDRESS: u32 = 1 << 1;
}

/// [`SocketEvent::op`] values.
pub mod socket_op {
    /// `accept`/`accept4` returned this socket; the address is the peer's.
    pub const ACCEPTED: u32 = 1;
    /// `connect` succeeded (or is in progress) on this socket; the address is the peer's.
    pub const CONNECTED: u32 = 2;
    /// Bytes were received (`read`, `recvfrom`, `readv`, `recvmsg`).
    pub const RECEIVED: u32 = 3;
    /// Bytes were sent (`write`, `sendto`, `writev`, `sendmsg`).
    pub const SENT: u32 = 4;
    /// `close` succeeded.
    pub const CLOSED: u32 = 5;
}

/// Socket activity of a tracked process, from the system call tracepoints: seen whether the
/// program calls libc or makes the system calls itself (Go, static binaries).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SocketEvent {
    pub header: EventHeader,
    pub fd: u32,
    /// One of [`socket_op`].
    pub op: u32,
    /// Bytes the call moved (its return value) for RECEIVED/SENT.
    pub length: u64,
    /// Bytes of `data` copied (the first bytes of the first buffer).
    pub captured_len: u32,
    /// `AF_INET` (2) or `AF_INET6` (10) when `address` holds the peer, else 0.
    pub address_family: u16,
    /// The peer's port, host byte order.
    pub port: u16,
    /// The peer's address: 4 bytes (IPv4) or 16 (IPv6), network order.
    pub address: [u8; 16],
    /// With [`socket_flags::LOCAL_ADDRESS`]: this end's address family, port (host order) and
    /// address (network order), as `address_family`, `port` and `address` are the peer's.
    pub local_family: u16,
    pub local_port: u16,
    /// Bits of [`socket_flags`].
    pub flags: u32,
    /// With [`socket_flags::TLS`]: the `SSL*` the plaintext belongs to.
    pub session: u64,
    pub local_address: [u8; 16],
    /// In a Go process (`GO_PROCESSES`), for reads and writes: the goroutine (`runtime.g`) the
    /// bytes moved for: the one that moved them, or for a request net/http's write loop writes,
    /// the goroutine whose `RoundTrip` sent it. 0 elsewhere.
    pub goroutine: u64,
    /// The copied bytes: at most `MAX_SOCKET_CAPTURE`, in twice that room so that the kernel's
    /// verifier can bound each piece of a vectored copy (at an offset below 4 KiB, of a length
    /// below 4 KiB) without knowing the pieces before it.
    pub data: [u8; SOCKET_DATA_ROOM],
}

/// Room of [`SocketEvent::data`].
pub const SOCKET_DATA_ROOM: usize = 2 * (MAX_SOCKET_CAPTURE + 1);

/// Key of the kernel's table of sockets of tracked processes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketKey {
    pub tgid: u32,
    pub fd: u32,
}

/// Value of the kernel's table of sockets of tracked processes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketEntry {
    /// The side (`socket_op::ACCEPTED` or `CONNECTED`) and flag bits ([`SOCKET_IGNORED`]...) in
    /// the low half; in the high half, the low 32 bits of the connection event's time: which
    /// socket this is, for the daemon's requests about an fd number the process may have reused.
    pub state: u64,
    /// The kernel's `struct sock *` behind the fd, where the socket-layer programs know it (0:
    /// not yet, as for a connection adopted at attach): a transfer on the same fd through
    /// another socket means the process closed this one unseen and reused the number.
    pub sk: u64,
    /// For a Unix socket, its inode number: a Unix socket's close is never seen, and the
    /// kernel may give the next one the same `struct sock` (0 otherwise).
    pub inode: u64,
}

/// A TLS library call in flight (`SSL_read`, `SSL_write`, ...), saved at entry for its exit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlsCall {
    /// The `SSL*`.
    pub session: u64,
    /// The plaintext buffer.
    pub buffer: u64,
    /// `_ex` forms: where the library writes the byte count.
    pub length_out: u64,
    /// The probe's [`probe_flags`].
    pub flags: u32,
    /// The socket the call read or wrote during the call, else [`FD_UNKNOWN`].
    pub fd: u32,
}

/// A system call in flight, saved at entry for its exit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingSyscall {
    pub id: u64,
    pub fd: u64,
    /// The buffer, iovec array, msghdr or sockaddr argument, by system call.
    pub pointer: u64,
    /// The third argument: `readv`/`writev`'s count of buffers.
    pub count: u64,
    /// Non-zero: a write of a connection this process made, whose caller's interpreter frames
    /// (if it runs one) are recorded with its event (what made an outbound call).
    pub record_caller: u64,
}

/// Common first bytes of every event.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    pub kind: u32,
    pub probe_id: u32,
    pub tgid: u32,
    pub tid: u32,
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC, converted to wall clock by the daemon.
    pub ktime_ns: u64,
}

/// A function was entered.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EntryEvent {
    pub header: EventHeader,
    pub args: [u64; ENTRY_ARGS],
    /// The call's frame: the stack pointer at entry (it points at the return address).
    /// Entry and exit of one call carry the same frame, so the daemon pairs them even when
    /// events were lost in between.
    pub frame: u64,
}

/// A function was entered and one string argument was copied.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EntryCaptureEvent {
    pub entry: EntryEvent,
    /// Bytes of `capture` that hold the string, without the NUL.
    pub capture_len: u32,
    /// Bits of [`capture_flags`].
    pub capture_flags: u32,
    pub capture: [u8; MAX_CAPTURE],
}

/// Bits of [`EntryCaptureEvent::capture_flags`].
pub mod capture_flags {
    /// The string filled the whole buffer: it may have been cut.
    pub const TRUNCATED: u32 = 1 << 0;
    /// The string could not be read (bad pointer, page not present).
    pub const READ_FAILED: u32 = 1 << 1;
}

/// A function returned.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitEvent {
    pub header: EventHeader,
    /// The return value register (rax).
    pub ret: u64,
    /// The call's frame, as at entry: the stack pointer after `ret` popped the return address,
    /// minus 8.
    pub frame: u64,
    /// With `READ_OUT_POINTER_AT_EXIT`: the 8 bytes the saved out-pointer points to.
    pub out_value: u64,
    /// Bits of [`exit_flags`].
    pub exit_flags: u32,
    pub _pad: u32,
}

/// Bits of [`ExitEvent::exit_flags`].
pub mod exit_flags {
    /// `out_value` holds a value read through the out-pointer.
    pub const OUT_VALUE_VALID: u32 = 1 << 0;
}

/// A lifecycle event of a tracked process (`sched_process_{fork,exec,exit}` tracepoints).
/// `header.tgid` is the tracked process; `header.probe_id` is 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessEvent {
    pub header: EventHeader,
    /// PROCESS_FORK: the new task's id (a process id, or a thread id for a new thread).
    pub child_pid: u32,
    pub _pad: u32,
}

/// Most bytes of a thread's user stack copied per CPU sample, from the stack pointer up.
/// The daemon unwinds this copy with the executable's call frame information, so stacks
/// through code built without frame pointers (most of Debian) are complete as long as the
/// frames fit; deeper frames are cut, and the cut counted by the daemon. 16 KiB cut one
/// Python sample in five (the interpreter's frames are large); 31 KiB is as much as fits, with
/// the event's header, in a per-CPU map value (the kernel caps those at 32 KiB).
pub const STACK_SNAPSHOT_BYTES: usize = 31 * 1024;

/// Bytes of [`StackSampleEvent`] before the stack copy; the kernel submits only these plus
/// `stack_len` bytes.
pub const STACK_SAMPLE_HEADER_BYTES: usize = 56;

/// One CPU sample of a thread of a tracked process: its user-space registers at the sample
/// and a copy of the top of its user stack. `header.probe_id` is 0.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct StackSampleEvent {
    pub header: EventHeader,
    /// User-space instruction pointer, stack pointer and frame pointer (rip, rsp, rbp).
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    /// Bytes of `stack` that hold the copy (0 when the stack could not be read).
    pub stack_len: u32,
    /// Bits of [`sample_flags`].
    pub sample_flags: u32,
    pub stack: [u8; STACK_SNAPSHOT_BYTES],
}

/// Bits of [`StackSampleEvent::sample_flags`].
pub mod sample_flags {
    /// The thread was in the kernel (a system call) when sampled; the registers are those it
    /// entered the kernel with.
    pub const IN_KERNEL: u32 = 1 << 0;
}

/// Most Python frames the sampler records per sample (innermost first; deeper ones are cut and
/// the cut flagged).
pub const MAX_PYTHON_FRAMES: usize = 64;

/// Most bytes of one interpreter frame the sampler reads (CPython 3.8's `PyFrameObject` up to
/// `f_lasti` is the largest: 112).
pub const PYTHON_FRAME_READ_BYTES: u32 = 128;

/// How the sampler finds a CPython thread's frames in process `tgid` (the value of the
/// `PYTHON_PROCESSES` map): offsets per interpreter version, and addresses in that process,
/// found by the daemon. The kernel only follows them; it knows no Python version.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PythonLayout {
    /// `task_struct.thread.fsbase` on the running kernel (the thread's TLS base).
    pub task_fsbase: u32,
    /// glibc's `pthread_getspecific` first-level block: the value of key `k` (below 32) is at
    /// `fsbase + tls_block + k * 16 + 8`.
    pub tls_block: u32,
    /// Address of CPython's thread-state TLS key (`_PyRuntime...autoTSSkey._key`, a u32).
    pub tss_key_address: u64,
    /// Offset in `PyThreadState` of the innermost frame pointer, or of the `_PyCFrame *` when
    /// `cframe_frame` is not [`PythonLayout::NO_OFFSET`].
    pub tstate_frame: u32,
    /// Offset in `_PyCFrame` of `current_frame` (3.11, 3.12), or `NO_OFFSET`.
    pub cframe_frame: u32,
    /// Offsets in a frame of its code object pointer, its caller, and its instruction position
    /// (a pointer, 3.11+; an `int`, 3.8-3.10).
    pub frame_code: u32,
    pub frame_previous: u32,
    pub frame_instruction: u32,
    /// Offset of the byte that marks a C-stack boundary (3.11 `is_entry`, 3.12+ `owner`), or
    /// `NO_OFFSET`.
    pub frame_marker: u32,
    /// Bytes of a frame that hold the fields above (at most [`PYTHON_FRAME_READ_BYTES`]).
    pub frame_bytes: u32,
    /// Offset in `PyThreadState` of `thread_id` (the thread's `pthread_self()`, its TLS base):
    /// a thread state read through the TLS slot must name the sampled thread, or it is not one.
    pub tstate_thread_id: u32,
}

impl PythonLayout {
    pub const NO_OFFSET: u32 = u32::MAX;
}

/// One Python frame as the sampler read it; the daemon names it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PythonFrame {
    /// The code object (3.13: the executable, possibly not a code object).
    pub code: u64,
    /// The instruction position, raw: a pointer (3.11+) or an `int` (3.8-3.10).
    pub instruction: u64,
    /// The frame's marker byte ([`PythonLayout::frame_marker`]), 0 when there is none.
    pub marker: u32,
    pub _pad: u32,
}

/// Bits of [`PythonStackEvent::flags`].
pub mod python_stack_flags {
    /// The chain went on past [`super::MAX_PYTHON_FRAMES`].
    pub const TRUNCATED: u32 = 1 << 0;
    /// A frame could not be read (the chain stops there).
    pub const READ_FAILED: u32 = 1 << 1;
    /// The thread has no thread state (not a Python thread, or not yet/no longer one).
    pub const NO_THREAD_STATE: u32 = 1 << 2;
    /// What the TLS slot pointed to is not this thread's state (another libc's layout).
    pub const NOT_THIS_THREAD: u32 = 1 << 3;
}

/// Bytes of [`PythonStackEvent`] before its frames; the kernel submits only the frames read.
pub const PYTHON_STACK_HEADER_BYTES: usize = 32;

/// The Python frames of a sampled thread, innermost first. `header.probe_id` is 0.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PythonStackEvent {
    pub header: EventHeader,
    pub frame_count: u32,
    /// Bits of [`python_stack_flags`].
    pub flags: u32,
    pub frames: [PythonFrame; MAX_PYTHON_FRAMES],
}

/// Byte offsets of the tracepoint fields the lifecycle programs read. The layout changes
/// between kernels (6.x turned the comm arrays into `__data_loc`), so the daemon reads each
/// tracepoint's `format` file and sets these read-only globals at load time.
pub mod tracepoint_globals {
    pub const FORK_CHILD_PID_OFFSET: &str = "FORK_CHILD_PID_OFFSET";
    /// Non-zero in node mode: every exec on the host is reported, not only tracked ones.
    pub const REPORT_EVERY_EXEC: &str = "REPORT_EVERY_EXEC";
    pub const EXIT_GROUP_DEAD_OFFSET: &str = "EXIT_GROUP_DEAD_OFFSET";
    /// Zero: no caller's interpreter frames are recorded at events (`--python-callers false`).
    pub const RECORD_CALLERS: &str = "RECORD_CALLERS";
}

/// Where the kernel keeps a socket's addresses, from the current task down to `struct
/// sock_common`: byte offsets on the running kernel, read by the daemon from the kernel's BTF and
/// set as a read-only global ([`names::SOCKET_LAYOUT`]) at load time. `known` is 0 when the
/// daemon could not read them: the programs then report no local address.
///
/// The `skc_*` offsets are into the first [`SOCK_COMMON_READ_BYTES`] of the socket, which the
/// programs copy at once; the IPv6 ones are [`SocketLayout::ABSENT`] on a kernel built without
/// IPv6.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketLayout {
    pub known: u32,
    /// `task_struct.files` (`struct files_struct *`).
    pub task_files: u32,
    /// `files_struct.fdt` (`struct fdtable *`).
    pub files_fdt: u32,
    /// `fdtable.max_fds` (`unsigned int`).
    pub fdtable_max_fds: u32,
    /// `fdtable.fd` (`struct file **`).
    pub fdtable_fd: u32,
    /// `file.private_data` (a socket file's `struct socket *`).
    pub file_private_data: u32,
    /// `socket.sk` (`struct sock *`, whose first member is `struct sock_common`).
    pub socket_sk: u32,
    /// `sock_common.skc_family` (`unsigned short`).
    pub skc_family: u32,
    /// `sock_common.skc_num`: the local port, host order.
    pub skc_num: u32,
    /// `sock_common.skc_rcv_saddr`: the local IPv4 address, network order.
    pub skc_rcv_saddr: u32,
    /// `sock_common.skc_v6_rcv_saddr`: the local IPv6 address.
    pub skc_v6_rcv_saddr: u32,
    /// `sock_common.skc_dport`: the peer's port, network order.
    pub skc_dport: u32,
    /// `sock_common.skc_daddr`: the peer's IPv4 address.
    pub skc_daddr: u32,
    /// `sock_common.skc_v6_daddr`: the peer's IPv6 address.
    pub skc_v6_daddr: u32,
    /// `unix_sock.addr` (`struct unix_address *`; `unix_sock` starts with its `struct sock`):
    /// set on a listener and on the sockets it accepts, unset on a plain client's. ABSENT when
    /// unknown (Unix sockets are then taken for clients).
    pub unix_addr: u32,
    /// `sock.sk_socket` (`struct socket *`). ABSENT when unknown.
    pub sock_socket: u32,
    /// From a `struct socket` to its inode's number: `socket_alloc.vfs_inode` + `inode.i_ino`
    /// (a socket is allocated inside a `socket_alloc`, at its start).
    pub socket_inode_number: u32,
    /// `sock.sk_type` (`unsigned short`: SOCK_STREAM, SOCK_DGRAM...). ABSENT when unknown.
    pub sk_type: u32,
}

impl SocketLayout {
    /// An offset of a member this kernel does not have.
    pub const ABSENT: u32 = u32::MAX;
}

/// Bytes of `struct sock` the programs copy in one read to take its addresses from (a power of
/// two: offsets into the copy are masked with `SOCK_COMMON_READ_BYTES - 1`).
pub const SOCK_COMMON_READ_BYTES: usize = 128;

/// Key of the map that carries an out-pointer from a probe's entry to its exit.
///
/// The call frame is identified by the stack pointer at entry (it points at the return
/// address; at the return probe it is 8 bytes higher), so nested and recursive calls of the
/// same function on one thread each keep their own out-pointer (SQLite prepares statements
/// from inside `sqlite3_prepare_v2` when it loads a schema).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutPointerKey {
    pub pid_tgid: u64,
    pub entry_stack_pointer: u64,
}

/// Indexes of the per-CPU counter array the daemon reports (`--stats`, and at exit).
pub mod counter {
    /// Events written to the ring buffer. Not counted by the programs (a per-CPU counter bump
    /// cost every probed call two map lookups): the daemon fills it in with the records it read.
    pub const EVENTS: u32 = 0;
    /// Events dropped because the ring buffer was full.
    pub const DROPPED_RING_FULL: u32 = 1;
    /// String captures cut at `MAX_CAPTURE`.
    pub const CAPTURE_TRUNCATED: u32 = 2;
    /// String captures that could not be read.
    pub const CAPTURE_FAILED: u32 = 3;
    /// Probe hits with no spec for their cookie (a probe raced its detach).
    pub const MISSING_SPEC: u32 = 4;
    /// Out-pointers that could not be saved or read back.
    pub const OUT_POINTER_LOST: u32 = 5;
    /// CPU samples of tracked threads taken.
    pub const STACK_SAMPLES: u32 = 6;
    /// CPU samples whose user stack could not be copied (sent with registers only).
    pub const STACK_COPY_FAILED: u32 = 7;
    /// Socket reads and writes cut at `MAX_SOCKET_CAPTURE`.
    pub const SOCKET_CAPTURE_TRUNCATED: u32 = 8;
    /// Number of counters.
    pub const COUNT: u32 = 9;
    /// Human names, by index.
    pub const NAMES: [&str; COUNT as usize] = [
        "events",
        "dropped_ring_full",
        "capture_truncated",
        "capture_failed",
        "missing_spec",
        "out_pointer_lost",
        "stack_samples",
        "stack_copy_failed",
        "socket_capture_truncated",
    ];
}

/// Names of maps and programs in the eBPF object, shared so neither side spells them twice.
pub mod names {
    pub const PROBE_SPECS: &str = "PROBE_SPECS";
    pub const TRACKED_PROCESSES: &str = "TRACKED_PROCESSES";
    /// Bitmap of the traced processes that run Go: their events carry the goroutine.
    pub const GO_PROCESSES: &str = "GO_PROCESSES";
    /// `(tgid << 32 | probe id)` of the first hits announced (`probe_flags::ANNOUNCE_FIRST_HIT`).
    pub const ANNOUNCED_HITS: &str = "ANNOUNCED_HITS";
    pub const GO_ROUND_TRIP_PROGRAM: &str = "ddtrace_go_round_trip";
    pub const GO_REQUEST_WRITE_PROGRAM: &str = "ddtrace_go_request_write";
    pub const GO_SERVE_PROGRAM: &str = "ddtrace_go_serve";
    pub const OUT_POINTERS: &str = "OUT_POINTERS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const EVENTS: &str = "EVENTS";
    pub const ENTRY_PROGRAM: &str = "ddtrace_entry";
    pub const EXIT_PROGRAM: &str = "ddtrace_exit";
    /// Programs that do nothing: the baseline of `cargo xtask bench`.
    pub const EMPTY_ENTRY_PROGRAM: &str = "bench_empty_entry";
    pub const EMPTY_EXIT_PROGRAM: &str = "bench_empty_exit";
    pub const FORK_PROGRAM: &str = "ddtrace_process_fork";
    pub const EXEC_PROGRAM: &str = "ddtrace_process_exec";
    pub const EXEC_NODE_PROGRAM: &str = "ddtrace_process_exec_node";
    pub const EXIT_PROCESS_PROGRAM: &str = "ddtrace_process_exit";
    pub const CPU_SAMPLE_PROGRAM: &str = "ddtrace_cpu_sample";
    pub const SYSCALL_ENTER_PROGRAM: &str = "ddtrace_syscall_enter";
    pub const SYSCALL_ENTER_CLOSE_CLONE_PROGRAM: &str = "ddtrace_syscall_enter_close_clone";
    pub const SYSCALL_EXIT_PROGRAM: &str = "ddtrace_syscall_exit";
    /// Raw tracepoint programs of the socket layer (`sock_send_length`, `sock_recv_length`,
    /// `inet_sock_set_state`) and of `task_newtask`: what replaces the system-call tracepoints
    /// where the kernel has them.
    pub const SOCK_SENT_PROGRAM: &str = "ddtrace_sock_sent";
    pub const SOCK_RECEIVED_PROGRAM: &str = "ddtrace_sock_received";
    pub const TCP_STATE_PROGRAM: &str = "ddtrace_tcp_state";
    pub const TASK_NEW_PROGRAM: &str = "ddtrace_task_new";
    pub const TLS_ENTRY_PROGRAM: &str = "ddtrace_tls_entry";
    pub const TLS_EXIT_PROGRAM: &str = "ddtrace_tls_exit";
    pub const GO_TLS_ENTRY_PROGRAM: &str = "ddtrace_go_tls_entry";
    pub const GO_TLS_RETURN_PROGRAM: &str = "ddtrace_go_tls_return";
    pub const GO_TLS_COPY_PROGRAM: &str = "ddtrace_go_tls_copy";
    pub const SOCKETS: &str = "SOCKETS";
    /// The [`super::SocketLayout`] global.
    pub const SOCKET_LAYOUT: &str = "SOCKET_LAYOUT";
    pub const EXEC_LAYOUT: &str = "EXEC_LAYOUT";
    pub const PYTHON_PROCESSES: &str = "PYTHON_PROCESSES";
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: plain #[repr(C)] structs of integers with explicit padding.
    unsafe impl aya::Pod for ProbeSpec {}
    unsafe impl aya::Pod for OutPointerKey {}
    unsafe impl aya::Pod for SocketKey {}
    unsafe impl aya::Pod for SocketEntry {}
    unsafe impl aya::Pod for SocketLayout {}
    unsafe impl aya::Pod for ExecLayout {}
    unsafe impl aya::Pod for PythonLayout {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layout_is_stable() {
        assert_eq!(size_of::<EventHeader>(), 24);
        assert_eq!(size_of::<EntryEvent>(), 80);
        assert_eq!(size_of::<EntryCaptureEvent>(), 88 + MAX_CAPTURE);
        assert_eq!(size_of::<ExitEvent>(), 56);
        assert_eq!(size_of::<ProbeSpec>(), 56);
        assert_eq!(size_of::<GoSiteSpec>(), 32);
        assert_eq!(size_of::<GoKey>(), 16);
        assert_eq!(size_of::<OutPointerKey>(), 16);
        assert_eq!(size_of::<ProcessEvent>(), 32);
        assert_eq!(size_of::<StackSampleEvent>(), STACK_SAMPLE_HEADER_BYTES + STACK_SNAPSHOT_BYTES);
        assert_eq!(core::mem::offset_of!(StackSampleEvent, stack), STACK_SAMPLE_HEADER_BYTES);
        assert_eq!(core::mem::offset_of!(SocketEvent, data), SOCKET_EVENT_HEADER_BYTES);
        assert_eq!(size_of::<SocketLayout>(), 72);
        assert_eq!(size_of::<OptInEvent>(), 24 + 3 * OPT_IN_VALUE_BYTES);
        assert_eq!(size_of::<PythonLayout>(), 48);
        assert_eq!(size_of::<PythonFrame>(), 24);
        assert_eq!(core::mem::offset_of!(PythonStackEvent, frames), PYTHON_STACK_HEADER_BYTES);
    }
}
