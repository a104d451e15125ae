//! The consumer side of the kernel's BPF ring buffer, mapping its data once.
//!
//! The kernel lets a reader map the data pages twice in a row, so that a record wrapping around
//! the end reads as one slice (aya's and libbpf's readers do). Every mapped page of a ring counts
//! in the reader's resident memory, so that doubled the ring's cost in the agent's RSS (8 MB for
//! the 4 MiB ring, a fifth of an idle agent's). This reader maps the data once and copies the
//! rare record that wraps into a scratch buffer.
//!
//! It also gives consumed space back in steps ([`RELEASE_STEP_BYTES`], and at the end of each
//! batch) rather than after every record: the kernel reads the consumer position at every
//! reserve, and a position rewritten per record keeps that cache line moving between the
//! target's CPU and ours.
//!
//! Layout (kernel/bpf/ringbuf.c): page 0 holds the consumer position (mapped read-write), page 1
//! the producer position, then the data pages. Each record starts with an 8-byte header (its
//! length with a busy bit, not yet committed, and a discard bit) and is padded to 8 bytes, so a
//! header never wraps; its data may.

use std::{
    os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd},
    ptr::NonNull,
    sync::atomic::{AtomicU32, AtomicUsize, Ordering},
};

use aya::maps::{Map, MapData};

const HEADER_BYTES: usize = 8;
const BUSY_BIT: u32 = 1 << 31;
const DISCARD_BIT: u32 = 1 << 30;

/// Consumed space is handed back to the kernel at least this often within a batch: small next
/// to the ring (4 MiB), so producers never see it much fuller than it is.
const RELEASE_STEP_BYTES: usize = 256 * 1024;

/// A read-only or read-write shared mapping of the ring's map fd, unmapped on drop.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(fd: BorrowedFd<'_>, len: usize, offset: usize, writable: bool) -> std::io::Result<Self> {
        let prot = if writable { libc::PROT_READ | libc::PROT_WRITE } else { libc::PROT_READ };
        // SAFETY: a fresh shared mapping of the map's fd; the kernel checks the offset, length
        // and protection against what a ring buffer map allows.
        let ptr =
            unsafe { libc::mmap(std::ptr::null_mut(), len, prot, libc::MAP_SHARED, fd.as_raw_fd(), offset as i64) };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self { ptr: NonNull::new(ptr.cast()).ok_or_else(std::io::Error::last_os_error)?, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `new` mapped; no reference into it outlives `self`.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Reads a BPF ring buffer map. Owns the map (and so its fd) for as long as it lives.
pub struct RingReader {
    map: MapData,
    consumer_page: Mapping,
    producer: Mapping,
    page_size: usize,
    mask: usize,
    /// Our position: bytes consumed since the ring was created. Published to the kernel in
    /// steps (see the module's comment).
    position: usize,
    published: usize,
    /// Where a record that wraps around the end of the data is put back together.
    scratch: Vec<u8>,
    /// A header that cannot be the kernel's was seen (said once).
    reported_bad_header: bool,
}

// SAFETY: the mappings are plain shared memory; the reader is only used from one thread at a
// time (`&mut self` for every read), and the kernel synchronises through the atomics below.
unsafe impl Send for RingReader {}

impl RingReader {
    pub fn new(map: Map) -> Result<Self, String> {
        let Map::RingBuf(map) = map else { return Err("the EVENTS map is not a ring buffer".into()) };
        let size = map.info().map_err(|e| format!("reading the ring buffer's size: {e}"))?.max_entries() as usize;
        if !size.is_power_of_two() {
            return Err(format!("ring buffer size {size} is not a power of two"));
        }
        // SAFETY: plain libc call.
        let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let fd = map.fd().as_fd();
        let consumer_page =
            Mapping::new(fd, page_size, 0, true).map_err(|e| format!("mapping the ring's consumer page: {e}"))?;
        let producer = Mapping::new(fd, page_size + size, page_size, false)
            .map_err(|e| format!("mapping the ring's producer page and data: {e}"))?;
        let mut reader = Self {
            map,
            consumer_page,
            producer,
            page_size,
            mask: size - 1,
            position: 0,
            published: 0,
            scratch: Vec::new(),
            reported_bad_header: false,
        };
        reader.position = reader.consumer_position().load(Ordering::Acquire);
        reader.published = reader.position;
        Ok(reader)
    }

    fn consumer_position(&self) -> &AtomicUsize {
        // SAFETY: the first word of the consumer page, 8-aligned, alive as long as `self`.
        unsafe { &*self.consumer_page.ptr.as_ptr().cast::<AtomicUsize>() }
    }

    fn producer_position(&self) -> usize {
        // SAFETY: the first word of the producer page, alive as long as `self`. The kernel
        // writes it with release semantics after a record's header is in place.
        unsafe { &*self.producer.ptr.as_ptr().cast::<AtomicUsize>() }.load(Ordering::Acquire)
    }

    /// Hands up to `most` committed records to `take`, in order; stops early at the first
    /// record still being written or when the ring is empty. Returns how many it read.
    pub fn read(&mut self, most: usize, mut take: impl FnMut(&[u8])) -> usize {
        let mut producer = self.producer_position();
        let mut read = 0;
        while read < most {
            if self.position == producer {
                // Caught up: look again once, since the kernel may have committed more meanwhile.
                self.publish();
                producer = self.producer_position();
                if self.position == producer {
                    break;
                }
            }
            let offset = self.position & self.mask;
            let size = self.mask + 1;
            let data = self.page_size + offset;
            // SAFETY: `offset` is 8-aligned and < size, so the 8-byte header lies in the data
            // area (page_size + size bytes from the producer page).
            let header = unsafe { &*self.producer.ptr.as_ptr().add(data).cast::<AtomicU32>() }.load(Ordering::Acquire);
            if header & BUSY_BIT != 0 {
                break;
            }
            let len = (header & !(BUSY_BIT | DISCARD_BIT)) as usize;
            if len > self.mask {
                // Never written by the kernel: stop rather than read beyond the ring.
                if !self.reported_bad_header {
                    self.reported_bad_header = true;
                    tracing::warn!(
                        header,
                        position = self.position,
                        "the event ring holds a record longer than itself; reading stopped"
                    );
                }
                break;
            }
            if header & DISCARD_BIT == 0 {
                let start = (offset + HEADER_BYTES) & self.mask;
                // SAFETY: the data area is `size` bytes after the producer page, mapped for as
                // long as `self`; the record's bytes are committed (busy bit clear, read with
                // acquire) and the kernel does not write them again before we publish past them.
                let data = unsafe { std::slice::from_raw_parts(self.producer.ptr.as_ptr().add(self.page_size), size) };
                take(record_bytes(data, start, len, &mut self.scratch));
                read += 1;
            }
            self.position += (HEADER_BYTES + len).next_multiple_of(8);
            if self.position - self.published >= RELEASE_STEP_BYTES {
                self.publish();
            }
        }
        self.publish();
        read
    }

    /// Gives the space read so far back to the kernel.
    fn publish(&mut self) {
        if self.published != self.position {
            // Release: our reads of the records happen before the kernel may reuse their space.
            self.consumer_position().store(self.position, Ordering::Release);
            self.published = self.position;
        }
    }
}

/// The `len` bytes of a record whose data starts at `start` in the ring's data area `data`
/// (mapped once): a slice of it, or, when the record wraps around the end, its two parts put
/// together in `scratch`.
fn record_bytes<'a>(data: &'a [u8], start: usize, len: usize, scratch: &'a mut Vec<u8>) -> &'a [u8] {
    if start + len <= data.len() {
        return &data[start..start + len];
    }
    let head = data.len() - start;
    scratch.clear();
    scratch.extend_from_slice(&data[start..]);
    scratch.extend_from_slice(&data[..len - head]);
    scratch
}

impl AsRawFd for RingReader {
    fn as_raw_fd(&self) -> RawFd {
        self.map.fd().as_fd().as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_read_in_place_or_put_together_when_it_wraps() {
        let data: Vec<u8> = (0u8..16).collect();
        let mut scratch = Vec::new();
        assert_eq!(record_bytes(&data, 4, 8, &mut scratch), &[4, 5, 6, 7, 8, 9, 10, 11]);
        assert_eq!(record_bytes(&data, 8, 8, &mut scratch), &[8, 9, 10, 11, 12, 13, 14, 15], "ends at the end");
        assert_eq!(record_bytes(&data, 12, 7, &mut scratch), &[12, 13, 14, 15, 0, 1, 2], "wraps");
        assert_eq!(record_bytes(&data, 0, 0, &mut scratch), &[] as &[u8]);
    }
}
