use ddtrace_common::{probe_flags, ProbeSpec};

/// What the kernel copies at a probe's entry, beyond the argument registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capture {
    Nothing,
    /// The NUL-terminated string argument `n` (bounded by `MAX_CAPTURE`).
    StringArg(u32),
}

/// Which kernel programs a probe runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    /// The generic entry/exit programs: arguments, captures and return values for the
    /// integration's own events.
    Call,
    /// The TLS data programs: the plaintext a TLS library function (`SSL_read(ssl, buf, num)`
    /// and its kin) moved, as socket activity of the connection it belongs to.
    TlsData {
        /// The function sends plaintext (`SSL_write`) rather than receives it.
        sends: bool,
        /// The `_ex` form: returns 1 on success and the byte count through argument 3.
        length_out: bool,
    },
    /// A probe in Go code: always entry-style (a uretprobe would crash Go), running the kernel
    /// program the integration names (`ddtrace-ebpf/src/go_tls.rs`, `goroutines.rs`), with its
    /// site's own spec (`ProbeLocation::go`).
    GoCode {
        program: &'static str,
        /// The program reports plaintext the function sends (`probe_flags::TLS_WRITE`).
        sends: bool,
    },
}

/// One function an integration probes, and how.
#[derive(Debug, Clone, Copy)]
pub struct ProbeDef {
    pub symbol: &'static str,
    /// Emit an event when the function is entered.
    pub entry: bool,
    /// Emit an event when it returns (a uretprobe: never on Go code).
    pub exit: bool,
    pub capture: Capture,
    /// Argument `n` is a pointer to an out-parameter whose value is reported at exit.
    pub out_pointer_arg: Option<u32>,
    /// Argument `n` bounds the captured string (a byte count; negative means up to the NUL).
    pub capture_length_arg: Option<u32>,
    /// The daemon must act on this event at once (wake the reader).
    pub urgent: bool,
    /// The entry event carries the caller's interpreter frames, where there are any; not again
    /// for calls on the same object (first argument) while they return this value (a step
    /// that returned a row: the same loop over a query's rows).
    pub record_caller: Option<u32>,
    /// The call ends its thread's run of calls with one caller (see `recording_caller`).
    pub forget_caller: bool,
    /// Without this symbol the integration cannot work on that library.
    pub required: bool,
    /// Attached to a process only once the integration's probe of this index has run there
    /// (its first hit is announced): a probe whose records only that one reads costs nothing
    /// in a process that never calls it.
    pub armed_by: Option<usize>,
    /// Announce this probe's first hit in each process (another probe is `armed_by` it).
    pub announce_first_hit: bool,
    pub kind: ProbeKind,
}

impl ProbeDef {
    /// An entry-only probe with nothing captured.
    pub const fn entry(symbol: &'static str) -> Self {
        Self {
            symbol,
            entry: true,
            exit: false,
            capture: Capture::Nothing,
            out_pointer_arg: None,
            capture_length_arg: None,
            urgent: false,
            record_caller: None,
            forget_caller: false,
            required: false,
            armed_by: None,
            announce_first_hit: false,
            kind: ProbeKind::Call,
        }
    }

    /// A TLS data probe (entry and exit) on `symbol`: see [`ProbeKind::TlsData`].
    pub const fn tls_data(symbol: &'static str, sends: bool, length_out: bool) -> Self {
        let mut def = Self::entry(symbol).with_exit();
        def.kind = ProbeKind::TlsData { sends, length_out };
        def
    }

    pub const fn with_exit(mut self) -> Self {
        self.exit = true;
        self
    }

    pub const fn capturing(mut self, capture: Capture) -> Self {
        self.capture = capture;
        self
    }

    pub const fn capture_length(mut self, arg: u32) -> Self {
        self.capture_length_arg = Some(arg);
        self
    }

    pub const fn out_pointer(mut self, arg: u32) -> Self {
        self.out_pointer_arg = Some(arg);
        self
    }

    pub const fn urgent(mut self) -> Self {
        self.urgent = true;
        self
    }

    pub const fn recording_caller(mut self, same_caller_while_ret: u32) -> Self {
        self.record_caller = Some(same_caller_while_ret);
        self
    }

    pub const fn forgetting_caller(mut self) -> Self {
        self.forget_caller = true;
        self
    }

    pub const fn required(mut self) -> Self {
        self.required = true;
        self
    }

    /// Attached only once probe `trigger` (an index in the same integration) has run in the
    /// process: see [`ProbeDef::armed_by`].
    pub const fn armed_by(mut self, trigger: usize) -> Self {
        self.armed_by = Some(trigger);
        self
    }

    /// A probe in Go code on `symbol` running kernel program `program`: see
    /// [`ProbeKind::GoCode`].
    pub const fn go_code(symbol: &'static str, program: &'static str, sends: bool) -> Self {
        let mut def = Self::entry(symbol);
        def.kind = ProbeKind::GoCode { program, sends };
        def
    }

    /// The kernel's view of this definition.
    pub fn kernel_spec(&self) -> ProbeSpec {
        let mut spec = ProbeSpec::default();
        if let Capture::StringArg(n) = self.capture {
            spec.flags |= probe_flags::CAPTURE_STRING;
            spec.capture_arg = n;
        }
        if let Some(n) = self.capture_length_arg {
            spec.flags |= probe_flags::CAPTURE_LENGTH_ARG;
            spec.length_arg = n;
        }
        if let Some(n) = self.out_pointer_arg {
            spec.flags |= probe_flags::READ_OUT_POINTER_AT_EXIT;
            spec.out_arg = n;
        }
        if self.forget_caller {
            spec.flags |= probe_flags::FORGET_CALLER;
        }
        if let Some(ret) = self.record_caller {
            spec.flags |= probe_flags::RECORD_CALLER;
            spec.same_caller_while_ret = ret;
        }
        if self.urgent {
            spec.flags |= probe_flags::WAKE_READER;
        }
        if self.announce_first_hit {
            spec.flags |= probe_flags::ANNOUNCE_FIRST_HIT;
        }
        if let ProbeKind::TlsData { sends, length_out } = self.kind {
            if sends {
                spec.flags |= probe_flags::TLS_WRITE;
            }
            if length_out {
                spec.flags |= probe_flags::TLS_LENGTH_OUT;
            }
        }
        if let ProbeKind::GoCode { sends: true, .. } = self.kind {
            spec.flags |= probe_flags::TLS_WRITE;
        }
        spec
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_spec_carries_capture_and_out_pointer() {
        let def = ProbeDef::entry("f").with_exit().capturing(Capture::StringArg(1)).out_pointer(3);
        let spec = def.kernel_spec();
        assert_eq!(spec.flags, probe_flags::CAPTURE_STRING | probe_flags::READ_OUT_POINTER_AT_EXIT);
        assert_eq!((spec.capture_arg, spec.out_arg), (1, 3));
    }

    #[test]
    fn a_probe_that_arms_others_asks_the_kernel_to_announce_its_first_hit() {
        let armed = ProbeDef::entry("g").armed_by(0);
        assert_eq!((armed.armed_by, armed.kernel_spec().flags), (Some(0), 0));
        let trigger = ProbeDef { announce_first_hit: true, ..ProbeDef::entry("f") };
        assert_eq!(trigger.kernel_spec().flags, probe_flags::ANNOUNCE_FIRST_HIT);
    }

    #[test]
    fn tls_data_probes_say_direction_and_length_form() {
        let write_ex = ProbeDef::tls_data("SSL_write_ex", true, true);
        assert!(write_ex.entry && write_ex.exit);
        assert_eq!(write_ex.kernel_spec().flags, probe_flags::TLS_WRITE | probe_flags::TLS_LENGTH_OUT);
        assert_eq!(ProbeDef::tls_data("SSL_read", false, false).kernel_spec().flags, 0);
    }
}
