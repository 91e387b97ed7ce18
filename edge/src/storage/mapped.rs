//! Cached bodies mapped into memory, guarded against SIGBUS.
//!
//! A page of a mapped file that cannot be read — an I/O error of the disk,
//! or the file cut short under a running edge — raises SIGBUS in whichever
//! thread touches it, which would end the whole process. Every mapping here
//! is registered in a fixed table; a SIGBUS handler that finds the faulting
//! address in it puts a zero page there (so the touching instruction
//! completes), marks the mapping failed and returns. Chunks are handed out
//! only after their pages were touched here and the mapping was not marked,
//! so a failing page fails that response ([`Mapped::chunk`] errs), never the
//! process, and never sends zeros for data. A fault outside the table goes
//! to the handler that was there before (Rust's own, then the default).
//! With the table full, bodies are not mapped (the caller reads them).

use std::fs::File;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Once, OnceLock};

use bytes::Bytes;

/// Mappings alive at once at most (each one area of the process's address
/// space; Linux allows 65 530 by default).
pub const SLOTS: usize = 32768;

struct Region {
    start: AtomicUsize,
    len: AtomicUsize,
    failed: AtomicBool,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: Region = Region { start: AtomicUsize::new(0), len: AtomicUsize::new(0), failed: AtomicBool::new(false) };
static REGIONS: [Region; SLOTS] = [EMPTY; SLOTS];
static INSTALL: Once = Once::new();
static INSTALLED: AtomicBool = AtomicBool::new(false);
/// Where the search for a free slot starts: after the last one taken.
static NEXT: AtomicUsize = AtomicUsize::new(0);
static PAGE: AtomicUsize = AtomicUsize::new(4096);
/// The SIGBUS action before ours (set before ours is installed).
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();

/// A body file mapped read-only, registered with the SIGBUS guard.
pub struct Mapped {
    map: memmap2::Mmap,
    slot: usize,
}

impl Mapped {
    /// Maps `file`; `None` if the guard is not available or its table is
    /// full (the caller then reads the file instead).
    pub fn new(file: &File) -> std::io::Result<Option<Arc<Mapped>>> {
        install();
        if !INSTALLED.load(Ordering::Acquire) {
            return Ok(None);
        }
        // SAFETY: a body file is never written after it is renamed into
        // place (fills write a temp file, a new generation gets a new name,
        // purges and evictions unlink: the mapping keeps the inode); a fill's
        // temp file mapped while written is read only below where it is
        // written to (see `Fill::mapping`). A page that still cannot be read
        // is caught by the SIGBUS guard.
        #[allow(unsafe_code)]
        let map = unsafe { memmap2::Mmap::map(file)? };
        let (start, len) = (map.as_ptr() as usize, map.len());
        if len == 0 {
            return Ok(None);
        }
        let from = NEXT.load(Ordering::Relaxed);
        for slot in (from..SLOTS).chain(0..from) {
            let r = &REGIONS[slot];
            if r.start.compare_exchange(0, start, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                r.failed.store(false, Ordering::Release);
                r.len.store(len, Ordering::Release);
                NEXT.store((slot + 1) % SLOTS, Ordering::Relaxed);
                return Ok(Some(Arc::new(Mapped { map, slot })));
            }
        }
        Ok(None)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether a page of it could not be read (a zero page stands there now).
    pub fn failed(&self) -> bool {
        REGIONS[self.slot].failed.load(Ordering::Acquire)
    }

    /// The whole mapping as `Bytes`, its pages NOT read here first: only for
    /// the kernel to copy from (a write to a plain socket), where a page that
    /// cannot be read fails the write with `EFAULT` and raises no SIGBUS.
    /// Code of this process reads a mapping through [`Mapped::chunk`].
    pub fn unread(self: &Arc<Self>) -> Bytes {
        Bytes::from_owner(Owner(Arc::clone(self)))
    }

    /// Bytes `from..to` as a slice of the mapping, once each of their pages
    /// has been read here without a fault.
    pub fn chunk(self: &Arc<Self>, from: usize, to: usize) -> std::io::Result<Bytes> {
        let page = PAGE.load(Ordering::Relaxed);
        let base = self.map.as_ptr();
        let mut at = from - from % page;
        while at < to {
            // SAFETY: `at` is inside the mapping (`from <= at < to <= len`
            // after the first page, which starts at or before `from`).
            #[allow(unsafe_code)]
            unsafe {
                std::ptr::read_volatile(base.add(at.max(from)));
            }
            at += page;
        }
        if REGIONS[self.slot].failed.load(Ordering::Acquire) {
            return Err(std::io::Error::other(
                "a page of the cached body could not be read (I/O error or file cut short)",
            ));
        }
        Ok(Bytes::from_owner(Owner(Arc::clone(self))).slice(from..to))
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // Out of the table before the mapping goes (the map field drops
        // after this): nobody touches it any more.
        let r = &REGIONS[self.slot];
        r.len.store(0, Ordering::Release);
        r.start.store(0, Ordering::Release);
    }
}

/// A mapping as the owner of `Bytes`.
struct Owner(Arc<Mapped>);

impl AsRef<[u8]> for Owner {
    fn as_ref(&self) -> &[u8] {
        &self.0.map
    }
}

fn install() {
    INSTALL.call_once(|| {
        #[allow(unsafe_code)]
        // SAFETY: plain libc calls on owned, zeroed structs.
        unsafe {
            let page = libc::sysconf(libc::_SC_PAGESIZE);
            if page > 0 {
                PAGE.store(page as usize, Ordering::Relaxed);
            }
            let mut previous: libc::sigaction = std::mem::zeroed();
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_sigbus as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut previous) == 0
                && PREVIOUS.set(previous).is_ok()
                && libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut()) == 0
            {
                INSTALLED.store(true, Ordering::Release);
            } else {
                tracing::warn!("cannot guard mapped cache files against SIGBUS; reading them instead");
            }
        }
    });
}

/// Async-signal-safe: atomics and one `mmap`.
extern "C" fn on_sigbus(signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    #[allow(unsafe_code)]
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers;
    // the zero page replaces exactly one page inside a live registered
    // mapping (its owner keeps it alive while a thread touches it).
    unsafe {
        let addr = (*info).si_addr() as usize;
        let page = PAGE.load(Ordering::Relaxed);
        for r in REGIONS.iter() {
            let (start, len) = (r.start.load(Ordering::Acquire), r.len.load(Ordering::Acquire));
            if start != 0 && addr >= start && addr < start + len {
                let at = (addr - addr % page) as *mut libc::c_void;
                let zero = libc::mmap(
                    at,
                    page,
                    libc::PROT_READ,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                    -1,
                    0,
                );
                if zero != libc::MAP_FAILED {
                    r.failed.store(true, Ordering::Release);
                    return;
                }
            }
        }
        // Not ours: as if this handler were not there.
        let previous = PREVIOUS.get();
        if let Some(previous) =
            previous.filter(|p| p.sa_flags & libc::SA_SIGINFO != 0 && p.sa_sigaction > libc::SIG_IGN)
        {
            let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                std::mem::transmute(previous.sa_sigaction);
            handler(signal, info, context);
        } else {
            // The fault repeats when this returns, under the default action.
            libc::signal(libc::SIGBUS, libc::SIG_DFL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn thousands_of_mappings_live_at_once_and_their_slots_come_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("body");
        std::fs::write(&path, vec![3u8; 8192]).expect("write");
        let file = File::open(&path).expect("open");
        // The mapped tier keeps up to half the slots mapped: thousands.
        const N: usize = 8192;
        let maps: Vec<_> = (0..N).map(|_| Mapped::new(&file).expect("map").expect("a slot")).collect();
        assert!(maps.iter().all(|m| m.chunk(0, 8192).expect("read")[..] == [3u8; 8192][..]));
        drop(maps);
        let again: Vec<_> = (0..N).map(|_| Mapped::new(&file).expect("map").expect("a slot again")).collect();
        assert_eq!(again.len(), N);
    }

    #[test]
    fn a_page_cut_off_under_the_mapping_fails_the_chunk_not_the_process() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("body");
        let mut f = File::create(&path).expect("create");
        f.write_all(&vec![7u8; 256 << 10]).expect("write");
        let map = Mapped::new(&File::open(&path).expect("open")).expect("map").expect("guarded");
        let whole = map.chunk(0, 256 << 10).expect("readable");
        assert!(whole.iter().all(|b| *b == 7));
        let head = map.chunk(0, 4096).expect("head");

        f.set_len(8192).expect("truncate");
        assert_eq!(map.chunk(0, 8192).expect("still there").len(), 8192, "pages within the file are fine");
        let e = map.chunk(100 << 10, 200 << 10).expect_err("cut off");
        assert!(e.to_string().contains("could not be read"), "{e}");
        assert!(map.chunk(0, 4096).is_err(), "the mapping stays failed");
        assert_eq!(head[..], [7u8; 4096][..], "bytes handed out before stay as they were");
        drop((whole, head, map));

        // The slot is free again, and a new mapping is not failed.
        let again = Mapped::new(&File::open(&path).expect("open")).expect("map").expect("guarded");
        assert_eq!(again.chunk(0, 8192).expect("readable").len(), 8192);
    }
}
