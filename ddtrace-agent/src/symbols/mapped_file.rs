//! A binary read through a read-only private mapping rather than copied into the heap.
//!
//! Why: a module's tables (symbols, unwind info) are a small part of its file, and a copy of the
//! whole file cost the agent its size in anonymous memory: pyenv's libpython (23 MB, most of it
//! DWARF) raised the agent's resident size by ~27 MB at a Python service's first samples, and
//! the allocator kept the pages after the copy was freed. Mapped, only the pages parsing reads
//! are resident, and they are file pages the kernel can drop.
//!
//! The risk a mapping brings: a file truncated in place while mapped faults (SIGBUS) on access.
//! Binaries and libraries are replaced by rename, not rewritten, by package managers and
//! builds, and a library truncated under a running process would crash that process first.

use std::{fs::File, io, ops::Deref, os::fd::AsRawFd, path::Path, ptr::NonNull};

#[derive(Debug)]
pub struct MappedFile {
    /// `None` for an empty file (a zero-length mapping is not allowed).
    at: Option<NonNull<u8>>,
    len: usize,
}

// SAFETY: the mapping is read-only and owned; nothing aliases it mutably.
unsafe impl Send for MappedFile {}
// SAFETY: as above: shared reads of immutable memory.
unsafe impl Sync for MappedFile {}

impl MappedFile {
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = File::open(path)?;
        let len = usize::try_from(file.metadata()?.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "file larger than the address space"))?;
        if len == 0 {
            return Ok(Self { at: None, len: 0 });
        }
        // SAFETY: a fresh private read-only mapping of an open file; checked below.
        let at =
            unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_PRIVATE, file.as_raw_fd(), 0) };
        if at == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { at: NonNull::new(at.cast()), len })
    }
}

impl Deref for MappedFile {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self.at {
            // SAFETY: `len` readable bytes are mapped at `at` for as long as `self` lives.
            Some(at) => unsafe { std::slice::from_raw_parts(at.as_ptr(), self.len) },
            None => &[],
        }
    }
}

impl Drop for MappedFile {
    fn drop(&mut self) {
        if let Some(at) = self.at {
            // SAFETY: unmaps exactly the mapping made in `open`, which nothing borrows any more.
            unsafe { libc::munmap(at.as_ptr().cast(), self.len) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mapped_file_reads_as_its_contents_and_an_empty_one_as_nothing() {
        let dir = std::env::temp_dir().join(format!("mapped-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (full, empty) = (dir.join("full"), dir.join("empty"));
        std::fs::write(&full, b"\x7fELF and more").unwrap();
        std::fs::write(&empty, b"").unwrap();
        assert_eq!(&*MappedFile::open(&full).unwrap(), b"\x7fELF and more");
        assert!(MappedFile::open(&empty).unwrap().is_empty());
        assert_eq!(MappedFile::open(&dir.join("absent")).unwrap_err().kind(), io::ErrorKind::NotFound);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
