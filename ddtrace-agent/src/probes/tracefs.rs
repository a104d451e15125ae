//! tracefs: where regular tracepoints are described. A fresh machine may not have it mounted;
//! like production agents, we mount it ourselves when we need it.

use std::{fs, io, path::Path};

const TRACEFS: &str = "/sys/kernel/tracing";

/// Mounts tracefs at /sys/kernel/tracing unless a tracefs is already there.
pub fn ensure_mounted() -> io::Result<()> {
    if Path::new(TRACEFS).join("events").exists() {
        return Ok(());
    }
    let target = std::ffi::CString::new(TRACEFS).expect("no NUL");
    let fstype = std::ffi::CString::new("tracefs").expect("no NUL");
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe { libc::mount(fstype.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether tracepoint `category/event` exists in this kernel (tracefs mounted).
pub fn has_event(category: &str, event: &str) -> bool {
    Path::new(TRACEFS).join("events").join(category).join(event).exists()
}

/// The byte offset of `field` in tracepoint `category/event`'s record, from its `format` file.
pub fn field_offset(category: &str, event: &str, field: &str) -> io::Result<u32> {
    let path = Path::new(TRACEFS).join("events").join(category).join(event).join("format");
    let format = fs::read_to_string(&path)?;
    parse_field_offset(&format, field)
        .ok_or_else(|| io::Error::other(format!("no field {field} in {}", path.display())))
}

fn parse_field_offset(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let declaration = line.trim().strip_prefix("field:")?;
        let (declaration, rest) = declaration.split_once(';')?;
        let name = declaration.split_whitespace().last()?.split('[').next()?;
        if name != field {
            return None;
        }
        rest.split(';').find_map(|part| part.trim().strip_prefix("offset:")?.parse().ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_offsets_in_both_old_and_new_layouts() {
        let new = "\tfield:__data_loc char[] child_comm;\toffset:16;\tsize:4;\tsigned:0;\n\tfield:pid_t child_pid;\toffset:20;\tsize:4;\tsigned:1;\n";
        assert_eq!(parse_field_offset(new, "child_pid"), Some(20));
        let old = "\tfield:char child_comm[16];\toffset:28;\tsize:16;\tsigned:0;\n\tfield:pid_t child_pid;\toffset:44;\tsize:4;\tsigned:1;\n";
        assert_eq!(parse_field_offset(old, "child_pid"), Some(44));
        assert_eq!(parse_field_offset(old, "child_comm"), Some(28));
        assert_eq!(parse_field_offset(old, "pid"), None);
    }

    #[test]
    fn reads_this_kernels_fork_tracepoint() {
        ensure_mounted().expect("mounting tracefs (run the tests as root)");
        assert!(field_offset("sched", "sched_process_fork", "child_pid").unwrap() >= 8);
        assert!(field_offset("sched", "sched_process_exit", "group_dead").unwrap() >= 8);
    }
}
