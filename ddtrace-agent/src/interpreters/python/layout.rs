//! Where CPython keeps what the sampler and the daemon read, per minor version (x86_64, the
//! default non-debug build). From each version's headers (`Include/cpython/pystate.h`,
//! `Include/internal/pycore_frame.h`, `Include/cpython/code.h`), checked on running
//! interpreters: Debian's 3.11 and pyenv's 3.8 to 3.13 (the tests walk each of them).

use ddtrace_common::PythonLayout;

/// How a frame says where it is in its code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstructionKind {
    /// `f_lasti`, an `int` byte offset (3.8, 3.9).
    LastiBytes,
    /// `f_lasti`, an `int` in 2-byte code units (3.10).
    LastiUnits,
    /// A pointer into the code object's bytecode, which starts `code_adaptive` bytes into it
    /// (3.11+).
    Pointer,
}

/// How a frame marks the end of what one C call of the eval loop runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Boundary {
    /// Every Python frame has its own `_PyEval_EvalFrameDefault` (3.8-3.10).
    EveryFrame,
    /// The marker byte is `is_entry`: the group ends after the frame that has it (3.11).
    AfterEntryFrame,
    /// The marker byte is `owner`; a frame owned by the C stack (3) is a shim that ends the
    /// group and is not shown (3.12+).
    ShimFrame,
}

/// How line numbers are encoded in a code object's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineTableFormat {
    /// `co_lnotab` (3.8, 3.9).
    Lnotab,
    /// `co_linetable`, 3.10's pairs.
    Pairs310,
    /// `co_linetable`, the location table of 3.11+.
    Locations,
}

/// Everything version-specific.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionLayout {
    pub minor: u32,
    /// Offset in `_PyRuntime` of the thread-state TLS key's `_key` (a `Py_tss_t` is
    /// `{int _is_initialized; pthread_key_t _key}`).
    pub tss_key: u64,
    pub tstate_frame: u32,
    pub cframe_frame: Option<u32>,
    /// `PyThreadState.thread_id`.
    pub tstate_thread_id: u32,
    pub frame_code: u32,
    pub frame_previous: u32,
    pub frame_instruction: u32,
    pub frame_marker: Option<u32>,
    pub frame_bytes: u32,
    pub instruction: InstructionKind,
    pub boundary: Boundary,
    pub code_first_line: u32,
    pub code_filename: u32,
    pub code_name: u32,
    /// `co_qualname` (3.11+); before, the name is all there is.
    pub code_qualname: Option<u32>,
    pub code_line_table: u32,
    pub line_table: LineTableFormat,
    /// Where the bytecode starts in the code object (3.11+, `PyCode_Type.tp_basicsize`).
    pub code_adaptive: u32,
    /// Where a compact ASCII string's characters start (`sizeof(PyASCIIObject)`), and a compact
    /// non-ASCII one's (`sizeof(PyCompactUnicodeObject)`).
    pub ascii_data: u64,
    pub compact_data: u64,
}

/// `PyASCIIObject.length` and `.state`, the same in every supported version.
pub const UNICODE_LENGTH: u64 = 16;
pub const UNICODE_STATE: u64 = 32;
/// `PyBytesObject.ob_size` and `.ob_sval`.
pub const BYTES_SIZE: u64 = 16;
pub const BYTES_DATA: u64 = 32;
/// `PyObject.ob_type`.
pub const OBJECT_TYPE: u64 = 8;
/// The `owner` of a frame that a C call pushed to mark its place (3.12+).
pub const FRAME_OWNED_BY_CSTACK: u32 = 3;

const fn old(
    minor: u32,
    tss_key: u64,
    lasti: u32,
    instruction: InstructionKind,
    table: LineTableFormat,
) -> VersionLayout {
    VersionLayout {
        minor,
        tss_key,
        tstate_frame: 24,
        cframe_frame: None,
        tstate_thread_id: 176,
        frame_code: 32,
        frame_previous: 24,
        frame_instruction: lasti,
        frame_marker: None,
        frame_bytes: lasti + 8,
        instruction,
        boundary: Boundary::EveryFrame,
        code_first_line: 40,
        code_filename: 104,
        code_name: 112,
        code_qualname: None,
        code_line_table: 120,
        line_table: table,
        code_adaptive: 0,
        ascii_data: 48,
        compact_data: 72,
    }
}

const V3_8: VersionLayout = old(8, 1396, 104, InstructionKind::LastiBytes, LineTableFormat::Lnotab);
const V3_9: VersionLayout = old(9, 588, 104, InstructionKind::LastiBytes, LineTableFormat::Lnotab);
const V3_10: VersionLayout = old(10, 588, 96, InstructionKind::LastiUnits, LineTableFormat::Pairs310);
const V3_11: VersionLayout = VersionLayout {
    minor: 11,
    tss_key: 596,
    tstate_frame: 56,
    cframe_frame: Some(8),
    tstate_thread_id: 152,
    frame_code: 32,
    frame_previous: 48,
    frame_instruction: 56,
    frame_marker: Some(68),
    frame_bytes: 72,
    instruction: InstructionKind::Pointer,
    boundary: Boundary::AfterEntryFrame,
    code_first_line: 72,
    code_filename: 112,
    code_name: 120,
    code_qualname: Some(128),
    code_line_table: 136,
    line_table: LineTableFormat::Locations,
    code_adaptive: 184,
    ascii_data: 48,
    compact_data: 72,
};
const V3_12: VersionLayout = VersionLayout {
    minor: 12,
    tss_key: 1548,
    cframe_frame: Some(0),
    tstate_thread_id: 136,
    frame_code: 0,
    frame_previous: 8,
    frame_marker: Some(70),
    boundary: Boundary::ShimFrame,
    code_first_line: 68,
    code_adaptive: 192,
    ascii_data: 40,
    compact_data: 56,
    ..V3_11
};
const V3_13: VersionLayout = VersionLayout {
    minor: 13,
    tss_key: 2164,
    tstate_frame: 72,
    cframe_frame: None,
    tstate_thread_id: 152,
    code_adaptive: 200,
    ..V3_12
};

/// The layout of CPython 3.`minor`, if this agent knows it.
pub fn for_minor(minor: u32) -> Option<VersionLayout> {
    [V3_8, V3_9, V3_10, V3_11, V3_12, V3_13].into_iter().find(|layout| layout.minor == minor)
}

/// The versions [`for_minor`] knows, for messages.
pub const KNOWN_VERSIONS: &str = "3.8 to 3.13";

impl VersionLayout {
    /// What the sampler needs for a process: these offsets, the address of its TLS key, and
    /// where the running kernel keeps a task's TLS base.
    pub fn kernel_layout(&self, tss_key_address: u64, task_fsbase: u32) -> PythonLayout {
        PythonLayout {
            task_fsbase,
            tls_block: GLIBC_TLS_BLOCK,
            tss_key_address,
            tstate_frame: self.tstate_frame,
            cframe_frame: self.cframe_frame.unwrap_or(PythonLayout::NO_OFFSET),
            frame_code: self.frame_code,
            frame_previous: self.frame_previous,
            frame_instruction: self.frame_instruction,
            frame_marker: self.frame_marker.unwrap_or(PythonLayout::NO_OFFSET),
            frame_bytes: self.frame_bytes,
            tstate_thread_id: self.tstate_thread_id,
        }
    }
}

/// glibc (x86_64, 2.34+ and before): `pthread_getspecific(key)` for a key below 32 reads
/// `THREAD_SELF->specific_1stblock[key].data`, at `fs + 0x310 + 16 * key + 8`.
pub const GLIBC_TLS_BLOCK: u32 = 0x310;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_version_fits_the_kernel_reads() {
        for minor in 8..=13 {
            let layout = for_minor(minor).unwrap();
            let kernel = layout.kernel_layout(0x1000, 3128);
            assert!(kernel.frame_bytes <= ddtrace_common::PYTHON_FRAME_READ_BYTES, "3.{minor}");
            for offset in [kernel.frame_code, kernel.frame_previous, kernel.frame_instruction] {
                assert!(offset % 8 == 0 && offset + 8 <= kernel.frame_bytes, "3.{minor}: {offset}");
            }
            if let Some(marker) = layout.frame_marker {
                assert!(marker < kernel.frame_bytes, "3.{minor}: marker at {marker}");
            }
        }
        assert_eq!(for_minor(7), None);
        assert_eq!(for_minor(14), None);
    }
}
