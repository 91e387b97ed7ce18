//! Memory-tier bodies the kernel can send without copying them.
//!
//! A body of [`MIN`] to [`MAX`] bytes lives in a sealed `memfd` (shared
//! memory, no disk), mapped read-only: every reader takes it as `Bytes` from
//! the mapping, and the lane hands it to `sendfile`, which queues its pages
//! on the socket instead of copying them into socket buffers (the copy was a
//! fifth of the edge's CPU for a 16 KiB hit). The seals (no write, no
//! shrink, no grow) keep the bytes as they were for as long as any reader
//! or queued send holds them. Each costs a file descriptor while it is in
//! the memory tier, so at most so many [`Files`] are open; past that, and
//! outside the sizes, a body stays on the heap and is written as before.
//! Which objects hold them is the memory tier's choice: see [`super::placement`].

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use super::mapped::Mapped;

/// Bodies smaller than this stay on the heap: one `writev` of head and body
/// costs less than a send of the head and a `sendfile`.
pub const MIN: usize = 16 << 10;
/// Bodies larger than this stay on the heap: measured on loopback, 16–64
/// KiB hits gained (16 KiB: 135k → 152k req/s, 64 KiB: 70k → 82k), larger
/// ones were mixed (128 and 512 KiB slower, 256 KiB faster), and 1 MiB
/// hits fell from 5.8k to 2.0k req/s, the core busy in the kernel's
/// transmit.
pub const MAX: usize = 64 << 10;

/// Memory files open at once at most.
const MAX_FILES: usize = 4096;

/// The memory files of one cache: how many are open, and at most how many.
pub struct Files {
    open: AtomicUsize,
    max: usize,
}

/// `max`, or an eighth of the process's file limit when that is less (0
/// when it cannot be read): for what holds descriptors besides the client
/// connections, whose they are first.
pub fn descriptors(max: usize) -> usize {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit fills the struct it is given.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    if rc != 0 {
        0
    } else {
        max.min((limit.rlim_cur / 8) as usize)
    }
}

impl Files {
    /// [`MAX_FILES`], or an eighth of the process's file limit when that is
    /// less: the descriptors are the client connections' first.
    pub fn of_process() -> Arc<Files> {
        Files::at_most(descriptors(MAX_FILES))
    }

    pub fn at_most(max: usize) -> Arc<Files> {
        Arc::new(Files { open: AtomicUsize::new(0), max })
    }

    /// Memory files open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

/// A ready body (of the memory tier, or of the mapped tier): its bytes, and
/// the sealed file or the cache file's mapping that holds them when they are
/// in one.
#[derive(Clone)]
pub struct MemBody {
    pub bytes: Bytes,
    pub file: Option<Arc<MemFile>>,
    /// A mapped-tier body: the mapping of its cache file. Its `bytes` are
    /// [`Mapped::unread`]: the lane writes them to plain sockets only, and
    /// everything else reads the mapping through [`Mapped::chunk`].
    pub mapped: Option<Arc<Mapped>>,
}

impl MemBody {
    /// `data` as a body: in a memory file when it is large enough and one
    /// of `files` can be had (see the module docs), else as it is.
    pub fn new(data: Vec<u8>, files: &Arc<Files>) -> MemBody {
        let data = Bytes::from(data);
        MemBody::in_file(&data, files).unwrap_or_else(|| MemBody::heap(data))
    }

    /// `data` on the heap.
    pub fn heap(data: Bytes) -> MemBody {
        MemBody { bytes: data, file: None, mapped: None }
    }

    /// A copy of `data` in a memory file, if it is of the sizes and one of
    /// `files` can be had.
    pub fn in_file(data: &[u8], files: &Arc<Files>) -> Option<MemBody> {
        if !(MIN..=MAX).contains(&data.len()) {
            return None;
        }
        match MemFile::new(data, files) {
            Ok(Some(file)) => {
                let file = Arc::new(file);
                Some(MemBody { bytes: Bytes::from_owner(Owner(file.clone())), file: Some(file), mapped: None })
            }
            Ok(None) => None,
            Err(e) => {
                tracing::debug!(error = %e, "memory file not made; the body stays on the heap");
                None
            }
        }
    }

    /// A body, on the heap or mapped, that a memory file would serve faster.
    pub fn wants_file(&self) -> bool {
        self.file.is_none() && (MIN..=MAX).contains(&self.bytes.len())
    }

    /// The body of a cache file, as its mapping.
    pub(super) fn of_mapping(map: Arc<Mapped>) -> MemBody {
        MemBody { bytes: map.unread(), file: None, mapped: Some(map) }
    }

    /// Where answers from it come from, for metrics.
    pub fn tier(&self) -> &'static str {
        if self.mapped.is_some() {
            "disk"
        } else {
            "memory"
        }
    }

    /// Whether its bytes are still those stored: not so for a mapping a page
    /// of which could not be read.
    pub fn sound(&self) -> bool {
        self.mapped.as_ref().is_none_or(|m| !m.failed())
    }
}

/// A sealed memory file and its read-only mapping.
pub struct MemFile {
    map: memmap2::Mmap,
    file: File,
    files: Arc<Files>,
}

impl MemFile {
    /// `data` in a new sealed memory file; `None` when all of `files` are
    /// open.
    fn new(data: &[u8], files: &Arc<Files>) -> std::io::Result<Option<MemFile>> {
        if files.open.fetch_add(1, Ordering::AcqRel) >= files.max {
            files.open.fetch_sub(1, Ordering::AcqRel);
            return Ok(None);
        }
        let made = Self::make(data, files.clone());
        if made.is_err() {
            files.open.fetch_sub(1, Ordering::AcqRel);
        }
        made.map(Some)
    }

    fn make(data: &[u8], files: Arc<Files>) -> std::io::Result<MemFile> {
        // SAFETY: memfd_create with a NUL-terminated name; the descriptor it
        // returns is owned by the `File` made from it, once.
        #[allow(unsafe_code)]
        let mut file = unsafe {
            let fd = libc::memfd_create(c"modcdn-body".as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            File::from_raw_fd(fd)
        };
        file.write_all(data)?;
        let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
        // SAFETY: fcntl on a descriptor this function owns.
        #[allow(unsafe_code)]
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the file is sealed against writes and size changes, so
        // the mapping's pages are the bytes written, always there.
        #[allow(unsafe_code)]
        let map = unsafe { memmap2::Mmap::map(&file)? };
        Ok(MemFile { map, file, files })
    }

    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl Drop for MemFile {
    fn drop(&mut self) {
        self.files.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A memory file as the owner of `Bytes`.
struct Owner(Arc<MemFile>);

impl AsRef<[u8]> for Owner {
    fn as_ref(&self) -> &[u8] {
        &self.0.map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_body_is_a_sealed_file_with_the_same_bytes_and_a_small_one_is_not() {
        let data: Vec<u8> = (0..MIN + 5).map(|i| (i % 251) as u8).collect();
        let files = Files::at_most(1);
        let body = MemBody::new(data.clone(), &files);
        assert_eq!(body.bytes[..], data[..]);
        let file = body.file.as_ref().expect("in a memory file");
        // SAFETY: fcntl and pread on a descriptor the body keeps open.
        #[allow(unsafe_code)]
        let (seals, wrote) =
            unsafe { (libc::fcntl(file.fd(), libc::F_GET_SEALS), libc::pwrite(file.fd(), b"x".as_ptr().cast(), 1, 0)) };
        assert_ne!(seals & libc::F_SEAL_WRITE, 0, "sealed against writes");
        assert_eq!(wrote, -1, "a write is refused");
        assert_eq!(body.bytes[0], data[0]);

        assert!(MemBody::new(data.clone(), &files).file.is_none(), "past the files there are, on the heap");
        drop(body);
        assert!(MemBody::new(data, &files).file.is_some(), "a file closed is one to be had");
        let files = Files::at_most(2);
        assert!(MemBody::new(vec![1; MIN - 1], &files).file.is_none(), "below the sizes, on the heap");
        assert!(MemBody::new(vec![1; MAX + 1], &files).file.is_none(), "above the sizes, on the heap");
    }
}
