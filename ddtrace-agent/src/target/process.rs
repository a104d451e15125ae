use std::{
    fs, io,
    path::{Path, PathBuf},
};

use super::maps::{parse_maps, MappedObject};

/// Errors a user can hit when naming a target process.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("process {pid} does not exist (check the pid with `ps -p {pid}`)")]
    NoSuchProcess { pid: u32 },
    #[error("cannot read {path}: permission denied; run ddtrace-agent as root (sudo) or with CAP_SYS_PTRACE")]
    PermissionDenied { path: PathBuf },
    #[error("process {pid} exited while it was being inspected")]
    Exited { pid: u32 },
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// A live process, addressed by pid.
#[derive(Debug, Clone)]
pub struct Process {
    pub pid: u32,
    proc_dir: PathBuf,
}

impl Process {
    /// Checks that `pid` names a live process we can inspect.
    pub fn open(pid: u32) -> Result<Self, TargetError> {
        let proc_dir = PathBuf::from(format!("/proc/{pid}"));
        if pid == 0 || !proc_dir.exists() {
            return Err(TargetError::NoSuchProcess { pid });
        }
        let process = Self { pid, proc_dir };
        // Reading maps needs ptrace-level access: fail early with a clear message.
        process.mapped_objects()?;
        Ok(process)
    }

    /// The ELF objects (executable and shared libraries) the process maps now.
    pub fn mapped_objects(&self) -> Result<Vec<MappedObject>, TargetError> {
        let path = self.proc_dir.join("maps");
        let text = fs::read_to_string(&path).map_err(|e| self.io_error(path, e))?;
        Ok(parse_maps(&text))
    }

    /// A path of the target's filesystem, as seen from ours (through its mount namespace).
    pub fn host_path(&self, target_path: &Path) -> PathBuf {
        let relative = target_path.strip_prefix("/").unwrap_or(target_path);
        self.proc_dir.join("root").join(relative)
    }

    /// The short command name (`comm`).
    pub fn comm(&self) -> Option<String> {
        fs::read_to_string(self.proc_dir.join("comm")).ok().map(|s| s.trim().to_string())
    }

    /// The command line, split on NULs.
    pub fn cmdline(&self) -> Vec<String> {
        fs::read(self.proc_dir.join("cmdline"))
            .map(|bytes| {
                bytes
                    .split(|b| *b == 0)
                    .filter(|part| !part.is_empty())
                    .map(|part| String::from_utf8_lossy(part).into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn io_error(&self, path: PathBuf, error: io::Error) -> TargetError {
        match error.kind() {
            io::ErrorKind::NotFound => TargetError::Exited { pid: self.pid },
            io::ErrorKind::PermissionDenied => TargetError::PermissionDenied { path },
            // ESRCH: the process went away between open and read.
            _ if error.raw_os_error() == Some(libc::ESRCH) => TargetError::Exited { pid: self.pid },
            _ => TargetError::Io { path, source: error },
        }
    }
}
