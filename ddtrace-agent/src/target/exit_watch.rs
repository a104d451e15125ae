use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
};

use tokio::io::unix::AsyncFd;

/// Becomes ready when the target process exits: a pidfd polled by tokio, no timer.
pub struct ExitWatch {
    fd: AsyncFd<PidFd>,
}

struct PidFd(OwnedFd);

impl AsRawFd for PidFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl ExitWatch {
    pub fn new(pid: u32) -> io::Result<Self> {
        // SAFETY: plain syscall; the returned fd is owned below.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own.
        let owned = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        // SAFETY: PidFd owns the descriptor for as long as the AsyncFd lives.
        let fd = unsafe { AsyncFd::register_with_interest(PidFd(owned), tokio::io::Interest::READABLE) }
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(Self { fd })
    }

    /// Resolves once the process has exited.
    pub async fn exited(&self) {
        // A pidfd turns readable when the process exits; readiness stays set afterwards.
        let _ = self.fd.readable().await;
    }
}
