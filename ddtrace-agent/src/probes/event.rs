use ddtrace_common::{
    capture_flags, event_kind, exit_flags, sample_flags, EntryCaptureEvent, EntryEvent, EventHeader, ExitEvent,
    OptInEvent, ProcessEvent, PythonFrame, ENTRY_ARGS, MAX_CAPTURE, MAX_PYTHON_FRAMES, PYTHON_STACK_HEADER_BYTES,
    SOCKET_EVENT_HEADER_BYTES, STACK_SAMPLE_HEADER_BYTES,
};

/// Anything the kernel programs report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelEvent {
    /// A probe of an integration (or of the dynamic linker) fired.
    Probe(ProbeEvent),
    /// A tracked process forked, exec'd or exited.
    Process(ProcessChange),
    /// The CPU sampler caught a thread of a tracked process running.
    StackSample(StackSample),
    /// The interpreter frames of a thread about to be reported by its `StackSample`.
    InterpreterStack(InterpreterStack),
    /// A tracked process used a socket.
    Socket(SocketActivity),
    /// Node mode: a new program opted in (`DD_SERVICE` in its environment) and is tracked.
    OptIn(OptIn),
}

/// What the kernel read from a new program's environment at its exec (node mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptIn {
    pub tgid: u32,
    pub ktime_ns: u64,
    pub service: String,
    /// Empty when unset.
    pub env: String,
    pub version: String,
}

/// What a tracked process did with a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketOp {
    Accepted,
    Connected,
    Received,
    Sent,
    Closed,
}

/// One socket system call of a tracked process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketActivity {
    pub tgid: u32,
    pub tid: u32,
    pub ktime_ns: u64,
    pub fd: u32,
    pub op: SocketOp,
    /// Bytes received or sent by the call.
    pub length: u64,
    /// Their first bytes (at most `MAX_SOCKET_CAPTURE`).
    pub data: Box<[u8]>,
    /// The peer, for Accepted and Connected when the call named it.
    pub peer: Option<std::net::SocketAddr>,
    /// This end's address, when the kernel read it from the socket.
    pub local: Option<std::net::SocketAddr>,
    /// For TLS plaintext (seen at the TLS library): the library's session (`SSL*`). `fd` is then
    /// [`ddtrace_common::FD_UNKNOWN`] when no system call on the socket happened during the call.
    pub tls_session: Option<u64>,
    /// Go processes: the goroutine the bytes moved for (see `ddtrace_common::SocketEvent`); 0
    /// when not known.
    pub goroutine: u64,
}

/// The fixed part of a socket record (the data follows, `captured_len` bytes).
#[repr(C)]
#[derive(Clone, Copy)]
struct SocketEventHead {
    header: EventHeader,
    fd: u32,
    op: u32,
    length: u64,
    captured_len: u32,
    address_family: u16,
    port: u16,
    address: [u8; 16],
    local_family: u16,
    local_port: u16,
    flags: u32,
    session: u64,
    local_address: [u8; 16],
    goroutine: u64,
}

const _: () = assert!(std::mem::size_of::<SocketEventHead>() == SOCKET_EVENT_HEADER_BYTES);

/// A thread's user registers and the top of its user stack, copied at a CPU sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackSample {
    pub tgid: u32,
    pub tid: u32,
    pub ktime_ns: u64,
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    /// The thread was in a system call; `ip` is where it entered the kernel.
    pub in_kernel: bool,
    /// The stack from `sp` up (empty when the kernel could not copy it).
    pub stack: Box<[u8]>,
}

/// The Python frames of a sampled thread, innermost first, as the sampler read them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterpreterStack {
    pub tid: u32,
    /// The same as its `StackSample`'s.
    pub ktime_ns: u64,
    pub frames: Box<[PythonFrame]>,
    /// Bits of `ddtrace_common::python_stack_flags`.
    pub flags: u32,
}

/// The fixed part of a Python stack record (`frame_count` frames follow).
#[repr(C)]
#[derive(Clone, Copy)]
struct InterpreterStackHead {
    header: EventHeader,
    frame_count: u32,
    flags: u32,
}

const _: () = assert!(std::mem::size_of::<InterpreterStackHead>() == PYTHON_STACK_HEADER_BYTES);

/// The fixed part of a sample record (the stack copy follows, `stack_len` bytes).
#[repr(C)]
#[derive(Clone, Copy)]
struct StackSampleHead {
    header: EventHeader,
    ip: u64,
    sp: u64,
    bp: u64,
    stack_len: u32,
    sample_flags: u32,
}

const _: () = assert!(std::mem::size_of::<StackSampleHead>() == STACK_SAMPLE_HEADER_BYTES);

/// A lifecycle change of a tracked process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessChange {
    pub tgid: u32,
    pub ktime_ns: u64,
    pub kind: ProcessChangeKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessChangeKind {
    /// A new task: a child process, or a thread of `tgid` (the kernel cannot tell them apart).
    Forked {
        child: u32,
    },
    Exec,
    Exited,
}

/// A decoded kernel event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeEvent {
    Entry(EntryData),
    Exit(ExitData),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryData {
    pub probe_id: u32,
    pub tgid: u32,
    pub tid: u32,
    pub ktime_ns: u64,
    pub args: [u64; ENTRY_ARGS],
    /// The call's frame (stack pointer at entry); its exit carries the same.
    pub frame: u64,
    /// The captured string argument, when the probe captures one and it could be read.
    pub capture: Option<Box<[u8]>>,
    pub capture_truncated: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitData {
    pub probe_id: u32,
    pub tgid: u32,
    pub tid: u32,
    pub ktime_ns: u64,
    pub ret: u64,
    /// The frame of the call that returned (as its entry saw it).
    pub frame: u64,
    pub out_value: Option<u64>,
}

impl ProbeEvent {
    pub fn probe_id(&self) -> u32 {
        match self {
            Self::Entry(e) => e.probe_id,
            Self::Exit(e) => e.probe_id,
        }
    }

    pub fn tgid(&self) -> u32 {
        match self {
            Self::Entry(e) => e.tgid,
            Self::Exit(e) => e.tgid,
        }
    }

    pub fn frame(&self) -> u64 {
        match self {
            Self::Entry(e) => e.frame,
            Self::Exit(e) => e.frame,
        }
    }

    pub fn ktime_ns(&self) -> u64 {
        match self {
            Self::Entry(e) => e.ktime_ns,
            Self::Exit(e) => e.ktime_ns,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("event of {len} bytes is shorter than its {kind} layout ({need} bytes)")]
    TooShort { kind: &'static str, len: usize, need: usize },
    #[error("unknown event kind {0}")]
    UnknownKind(u32),
}

/// Reads a `#[repr(C)]` POD value from the front of `bytes`, checking the length first.
fn read<T: Copy>(bytes: &[u8], kind: &'static str) -> Result<T, DecodeError> {
    let need = std::mem::size_of::<T>();
    if bytes.len() < need {
        return Err(DecodeError::TooShort { kind, len: bytes.len(), need });
    }
    // SAFETY: length checked above; T is a plain-old-data #[repr(C)] type from ddtrace-common,
    // valid for any bit pattern; the read tolerates any alignment.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// Decodes one ring buffer record.
pub fn decode(bytes: &[u8]) -> Result<KernelEvent, DecodeError> {
    let header: EventHeader = read(bytes, "header")?;
    let process_change = |kind| -> Result<KernelEvent, DecodeError> {
        let event: ProcessEvent = read(bytes, "process")?;
        let kind = match kind {
            event_kind::PROCESS_FORK => ProcessChangeKind::Forked { child: event.child_pid },
            event_kind::PROCESS_EXEC => ProcessChangeKind::Exec,
            _ => ProcessChangeKind::Exited,
        };
        Ok(KernelEvent::Process(ProcessChange { tgid: header.tgid, ktime_ns: header.ktime_ns, kind }))
    };
    match header.kind {
        event_kind::PROCESS_FORK | event_kind::PROCESS_EXEC | event_kind::PROCESS_EXIT => process_change(header.kind),
        event_kind::STACK_SAMPLE => decode_stack_sample(bytes),
        event_kind::PYTHON_STACK => decode_interpreter_stack(bytes),
        event_kind::SOCKET => decode_socket(bytes),
        event_kind::PROCESS_OPT_IN => {
            let event: OptInEvent = read(bytes, "opt-in")?;
            let text = |bytes: &[u8]| {
                let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
                String::from_utf8_lossy(&bytes[..end]).into_owned()
            };
            Ok(KernelEvent::OptIn(OptIn {
                tgid: header.tgid,
                ktime_ns: header.ktime_ns,
                service: text(&event.service),
                env: text(&event.env),
                version: text(&event.version),
            }))
        }
        other => decode_probe(bytes, &header, other).map(KernelEvent::Probe),
    }
}

/// The kernel submits only the bytes of the stack it copied: the record's length bounds the copy
/// as much as `stack_len` does.
fn decode_stack_sample(bytes: &[u8]) -> Result<KernelEvent, DecodeError> {
    let head: StackSampleHead = read(bytes, "stack sample")?;
    let available = bytes.len() - STACK_SAMPLE_HEADER_BYTES;
    let len = (head.stack_len as usize).min(available);
    Ok(KernelEvent::StackSample(StackSample {
        tgid: head.header.tgid,
        tid: head.header.tid,
        ktime_ns: head.header.ktime_ns,
        ip: head.ip,
        sp: head.sp,
        bp: head.bp,
        in_kernel: head.sample_flags & sample_flags::IN_KERNEL != 0,
        stack: bytes[STACK_SAMPLE_HEADER_BYTES..STACK_SAMPLE_HEADER_BYTES + len].into(),
    }))
}

/// The frames the record holds: `frame_count`, bounded by the record's length and the maximum.
fn decode_interpreter_stack(bytes: &[u8]) -> Result<KernelEvent, DecodeError> {
    let head: InterpreterStackHead = read(bytes, "interpreter stack")?;
    let frame_bytes = std::mem::size_of::<PythonFrame>();
    let available = (bytes.len() - PYTHON_STACK_HEADER_BYTES) / frame_bytes;
    let count = (head.frame_count as usize).min(available).min(MAX_PYTHON_FRAMES);
    let frames = (0..count)
        .map(|i| read::<PythonFrame>(&bytes[PYTHON_STACK_HEADER_BYTES + i * frame_bytes..], "interpreter frame"))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(KernelEvent::InterpreterStack(InterpreterStack {
        tid: head.header.tid,
        ktime_ns: head.header.ktime_ns,
        frames: frames.into(),
        flags: head.flags,
    }))
}

fn decode_socket(bytes: &[u8]) -> Result<KernelEvent, DecodeError> {
    use ddtrace_common::{socket_flags, socket_op};
    let head: SocketEventHead = read(bytes, "socket")?;
    let op = match head.op {
        socket_op::ACCEPTED => SocketOp::Accepted,
        socket_op::CONNECTED => SocketOp::Connected,
        socket_op::RECEIVED => SocketOp::Received,
        socket_op::SENT => SocketOp::Sent,
        socket_op::CLOSED => SocketOp::Closed,
        other => return Err(DecodeError::UnknownKind(other)),
    };
    let available = bytes.len() - SOCKET_EVENT_HEADER_BYTES;
    let len = (head.captured_len as usize).min(available);
    let peer = socket_address(head.address_family, head.port, head.address);
    let local = if head.flags & socket_flags::LOCAL_ADDRESS != 0 {
        socket_address(head.local_family, head.local_port, head.local_address)
    } else {
        None
    };
    let tls_session = (head.flags & socket_flags::TLS != 0).then_some(head.session);
    Ok(KernelEvent::Socket(SocketActivity {
        tgid: head.header.tgid,
        tid: head.header.tid,
        ktime_ns: head.header.ktime_ns,
        fd: head.fd,
        op,
        length: head.length,
        data: bytes[SOCKET_EVENT_HEADER_BYTES..SOCKET_EVENT_HEADER_BYTES + len].into(),
        peer,
        local,
        tls_session,
        goroutine: head.goroutine,
    }))
}

/// An address as the kernel reports it: family (AF_INET or AF_INET6), host-order port, and the
/// address bytes in network order.
fn socket_address(family: u16, port: u16, address: [u8; 16]) -> Option<std::net::SocketAddr> {
    match family {
        2 => {
            let octets: [u8; 4] = address[..4].try_into().unwrap_or_default();
            Some(std::net::SocketAddr::from((octets, port)))
        }
        10 => Some(std::net::SocketAddr::from((address, port))),
        _ => None,
    }
}

fn decode_probe(bytes: &[u8], header: &EventHeader, kind: u32) -> Result<ProbeEvent, DecodeError> {
    match kind {
        event_kind::ENTRY => {
            let event: EntryEvent = read(bytes, "entry")?;
            Ok(ProbeEvent::Entry(entry_data(&event, None, false)))
        }
        event_kind::ENTRY_WITH_CAPTURE => {
            let event: EntryCaptureEvent = read(bytes, "entry with capture")?;
            let capture = (event.capture_flags & capture_flags::READ_FAILED == 0).then(|| {
                let len = (event.capture_len as usize).min(MAX_CAPTURE);
                Box::<[u8]>::from(&event.capture[..len])
            });
            let truncated = event.capture_flags & capture_flags::TRUNCATED != 0;
            Ok(ProbeEvent::Entry(entry_data(&event.entry, capture, truncated)))
        }
        event_kind::EXIT => {
            let event: ExitEvent = read(bytes, "exit")?;
            Ok(ProbeEvent::Exit(ExitData {
                probe_id: header.probe_id,
                tgid: header.tgid,
                tid: header.tid,
                ktime_ns: header.ktime_ns,
                ret: event.ret,
                frame: event.frame,
                out_value: (event.exit_flags & exit_flags::OUT_VALUE_VALID != 0).then_some(event.out_value),
            }))
        }
        other => Err(DecodeError::UnknownKind(other)),
    }
}

fn entry_data(event: &EntryEvent, capture: Option<Box<[u8]>>, capture_truncated: bool) -> EntryData {
    EntryData {
        probe_id: event.header.probe_id,
        tgid: event.header.tgid,
        tid: event.header.tid,
        ktime_ns: event.header.ktime_ns,
        args: event.args,
        frame: event.frame,
        capture,
        capture_truncated,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of<T: Copy>(value: &T) -> Vec<u8> {
        // SAFETY: reading the bytes of a POD value.
        unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), std::mem::size_of::<T>()) }.to_vec()
    }

    #[test]
    fn decodes_exit_with_out_value() {
        let event = ExitEvent {
            header: EventHeader { kind: event_kind::EXIT, probe_id: 7, tgid: 10, tid: 11, ktime_ns: 99 },
            ret: 101,
            frame: 0x7ff0,
            out_value: 0xdead,
            exit_flags: exit_flags::OUT_VALUE_VALID,
            _pad: 0,
        };
        let KernelEvent::Probe(ProbeEvent::Exit(exit)) = decode(&bytes_of(&event)).unwrap() else {
            panic!("not an exit")
        };
        assert_eq!((exit.probe_id, exit.tid, exit.ret, exit.out_value), (7, 11, 101, Some(0xdead)));
    }

    #[test]
    fn decodes_capture_bounded_by_its_length() {
        let mut event = EntryCaptureEvent {
            entry: EntryEvent {
                header: EventHeader { kind: event_kind::ENTRY_WITH_CAPTURE, probe_id: 1, tgid: 2, tid: 3, ktime_ns: 4 },
                args: [0; ENTRY_ARGS],
                frame: 0x7ff0,
            },
            capture_len: 8,
            capture_flags: 0,
            capture: [0; MAX_CAPTURE],
        };
        event.capture[..9].copy_from_slice(b"SELECT 1\0");
        let KernelEvent::Probe(ProbeEvent::Entry(entry)) = decode(&bytes_of(&event)).unwrap() else {
            panic!("not an entry")
        };
        assert_eq!(entry.capture.as_deref(), Some(&b"SELECT 1"[..]));
        // A lying length never reads past the buffer.
        event.capture_len = u32::MAX;
        let KernelEvent::Probe(ProbeEvent::Entry(entry)) = decode(&bytes_of(&event)).unwrap() else { panic!() };
        assert_eq!(entry.capture.unwrap().len(), MAX_CAPTURE);
    }

    #[test]
    fn decodes_process_changes() {
        let event = ProcessEvent {
            header: EventHeader { kind: event_kind::PROCESS_FORK, probe_id: 0, tgid: 10, tid: 10, ktime_ns: 5 },
            child_pid: 11,
            _pad: 0,
        };
        let change = KernelEvent::Process(ProcessChange {
            tgid: 10,
            ktime_ns: 5,
            kind: ProcessChangeKind::Forked { child: 11 },
        });
        assert_eq!(decode(&bytes_of(&event)).unwrap(), change);
    }

    #[test]
    fn decodes_stack_samples_bounded_by_the_record() {
        let head = StackSampleHead {
            header: EventHeader { kind: event_kind::STACK_SAMPLE, probe_id: 0, tgid: 5, tid: 6, ktime_ns: 7 },
            ip: 0x401000,
            sp: 0x7ffe0000,
            bp: 0x7ffe0040,
            stack_len: 4096,
            sample_flags: sample_flags::IN_KERNEL,
        };
        let mut record = bytes_of(&head);
        record.extend_from_slice(&[0xab; 64]);
        let KernelEvent::StackSample(sample) = decode(&record).unwrap() else { panic!("not a sample") };
        assert_eq!(
            (sample.tgid, sample.tid, sample.ip, sample.sp, sample.bp),
            (5, 6, 0x401000, 0x7ffe0000, 0x7ffe0040)
        );
        assert!(sample.in_kernel);
        // stack_len says 4096 but only 64 bytes came: never read past the record.
        assert_eq!(&*sample.stack, &[0xab; 64][..]);
    }

    #[test]
    fn decodes_socket_activity_with_its_peer_and_bounded_data() {
        let head = SocketEventHead {
            header: EventHeader { kind: event_kind::SOCKET, probe_id: 0, tgid: 5, tid: 6, ktime_ns: 7 },
            fd: 9,
            op: ddtrace_common::socket_op::ACCEPTED,
            length: 0,
            captured_len: 0,
            address_family: 2,
            port: 8080,
            address: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            local_family: 0,
            local_port: 0,
            flags: 0,
            session: 0,
            local_address: [0; 16],
            goroutine: 0,
        };
        let KernelEvent::Socket(accepted) = decode(&bytes_of(&head)).unwrap() else { panic!("not a socket event") };
        assert_eq!((accepted.fd, accepted.op), (9, SocketOp::Accepted));
        assert_eq!(accepted.peer, Some("127.0.0.1:8080".parse().unwrap()));
        let head = SocketEventHead {
            op: ddtrace_common::socket_op::RECEIVED,
            length: 300,
            captured_len: 200,
            address_family: 0,
            ..head
        };
        let mut record = bytes_of(&head);
        record.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let KernelEvent::Socket(received) = decode(&record).unwrap() else { panic!() };
        assert_eq!((received.length, &*received.data, received.peer), (300, &b"GET / HTTP/1.1\r\n"[..], None));
    }

    #[test]
    fn short_and_unknown_records_are_errors() {
        assert!(matches!(decode(&[1, 2, 3]), Err(DecodeError::TooShort { .. })));
        let header = EventHeader { kind: 77, ..Default::default() };
        assert_eq!(decode(&bytes_of(&header)), Err(DecodeError::UnknownKind(77)));
        let header = EventHeader { kind: event_kind::EXIT, ..Default::default() };
        assert!(matches!(decode(&bytes_of(&header)), Err(DecodeError::TooShort { kind: "exit", .. })));
    }
}
