//! The edge's cache storage behind pingora-cache: a disk tier that keeps
//! every cached answer, and a memory tier in front of it for small hot
//! objects (`.info`, `.mod`, lists, small zips), bounded in bytes.
//!
//! On disk each entry is two files under `objects/<2 hex>/`: `<hash>.meta`
//! (the serialized `CacheMeta`, the request key, the body length and the
//! generation of the body) and `<hash>.<generation>.body`. A fill writes the
//! body to `tmp/`, syncs it and renames it into place, then writes the
//! meta: in place for a key that had none, else beside and renamed over the
//! old one, synced before the rename, so a reader sees the old entry or the
//! new one, never a mix. A body smaller than a page (every `.info`, most
//! `.mod` and lists) is held in memory while it fills and written inside
//! its meta file, checksummed: one file per entry. One up to
//! [`FILL_MEMORY_MAX`] whose length the origin told (small zips) is held
//! in memory too, and written straight into its body file (no temp file,
//! no rename). Anything a crash leaves
//! behind (temp files, a body without meta, a meta short, damaged, or whose
//! body is missing or short) is removed at start, never served.
//! The sync waits for the kernel's writeback of the fill's pages (see
//! [`flush_delay`]); until then the finished fill is served from its temp
//! file, which the rename keeps (readers and mappings of it stay valid).
//!
//! Fills stream: readers that arrive while a zip is still being written get
//! what has been written so far (pingora's streaming partial writes) — the
//! fill's last chunks as they are, the temp file where they fell behind —
//! so waiters of a coalesced miss get bytes at once.
//!
//! Several processes may share the cache during a graceful upgrade. Each
//! writes its temp files in a directory of its own under `tmp/`, locked
//! (`flock`) for as long as it lives; a process that opens the cache removes
//! only unlocked ones, and while another process is alive it leaves recent
//! files alone (they may be a publish in progress, not a crash's leftovers).
//!
//! The memory tier never undoes a purge: an object read from disk (or a
//! fill) is promoted to memory only if no purge is running and none ended
//! since it was read.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use modcdn_shared::policy::{CacheStatus, CACHE_STATUS_HEADER};
use parking_lot::Mutex;
use pingora::cache::key::CacheHashKey;
use pingora::cache::storage::streaming_write::U64WriteId;
use pingora::cache::storage::{
    HandleHit, HandleMiss, HitHandler, MissFinishType, MissHandler, PurgeOutcome, PurgeTarget, PurgeType, Storage,
};
use pingora::cache::trace::SpanHandle;
use pingora::cache::{CacheKey, CacheMeta};
use pingora::{Error, ErrorType, Result};
use tokio::sync::watch;

mod fill;
mod hit;
mod mapped;
mod memfile;
mod placement;

pub use fill::Filler;
use hit::Hit;
pub use memfile::{Files, MemBody, MemFile};

/// Bytes read from disk per body chunk: large enough that the thread hop
/// per read is cheap, small enough that many clients streaming large zips
/// hold little memory (each holds about one chunk).
const CHUNK: usize = 256 << 10;
/// Bytes per chunk of a mapped body (slices: no copy, no memory held);
/// small enough that a paced client (bandwidth tiers) gets an even stream.
const MAPPED_CHUNK: usize = 256 << 10;
const MAGIC: &[u8; 16] = b"MODCDN-EDGE-M02\n";
/// A meta file whose body is inside it, followed by the CRC-32 of all before.
const MAGIC_INLINE: &[u8; 16] = b"MODCDN-EDGE-I02\n";
/// The meta files of earlier versions, with Pingora's serialized meta
/// (read, never written).
const MAGIC_PINGORA: &[u8; 16] = b"MODCDN-EDGE-M01\n";

/// Builds the cache key of a request key (`Request::key()`), and of its
/// copy for one credential (`credential`: a tag of it, never the secret);
/// the one place that decides them, so purges find what the proxy stored.
/// A credential's copy is a key no public request can spell (`#` is in no
/// GOPROXY path), so no public request or memory fast path finds it.
pub fn cache_key(primary: &str, credential: Option<&str>) -> CacheKey {
    match credential {
        None => CacheKey::new(primary, ""),
        Some(tag) => CacheKey::new(format!("{primary}{CREDENTIAL_SEPARATOR}{tag}"), ""),
    }
}

const CREDENTIAL_SEPARATOR: &str = "#credential=";

/// The prefix every credential's copy of `primary` starts with, to purge them.
pub fn credential_copies(primary: &str) -> String {
    format!("{primary}{CREDENTIAL_SEPARATOR}")
}

/// Which tier a cache hit is served from: `memory`, or `disk` (also a
/// fill still being written, which readers follow from its file).
pub fn tier_of(hit: &(dyn HandleHit + Send + Sync)) -> &'static str {
    match hit.as_any().downcast_ref::<Hit>() {
        Some(Hit::Memory { .. }) => "memory",
        _ => "disk",
    }
}

/// A response's cache metadata kept parsed. Pingora's serialized form
/// (zstd-compressed headers) costs more to write and read back than a
/// small miss costs otherwise (its `serialize` was 5 % of the event loop's
/// work in a stream of cold misses), so a fill keeps this, its readers and
/// the memory tier build on it, and the meta file holds it in a plain
/// encoding of its own ([`Parts::encode`]).
#[derive(Clone)]
struct Parts {
    header: pingora::http::ResponseHeader,
    fresh_until: SystemTime,
    created: SystemTime,
    stale_while_revalidate: u32,
    stale_if_error: u32,
}

impl Parts {
    fn of(meta: &CacheMeta) -> Parts {
        Parts {
            header: meta.response_header_copy(),
            fresh_until: meta.fresh_until(),
            created: meta.created(),
            stale_while_revalidate: meta.stale_while_revalidate_sec(),
            stale_if_error: meta.stale_if_error_sec(),
        }
    }

    /// The times (nanoseconds since the epoch) and stale windows, little
    /// endian, the status, then each header as its name and value, each
    /// after its length.
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&unix_nanos(self.fresh_until).to_le_bytes());
        out.extend_from_slice(&unix_nanos(self.created).to_le_bytes());
        out.extend_from_slice(&self.stale_while_revalidate.to_le_bytes());
        out.extend_from_slice(&self.stale_if_error.to_le_bytes());
        out.extend_from_slice(&self.header.status.as_u16().to_le_bytes());
        for (name, value) in self.header.headers.iter() {
            for part in [name.as_str().as_bytes(), value.as_bytes()] {
                out.extend_from_slice(&(part.len() as u32).to_le_bytes());
                out.extend_from_slice(part);
            }
        }
    }

    fn decode(mut buf: &[u8]) -> Option<Parts> {
        fn take<'a>(buf: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
            let (head, rest) = buf.split_at_checked(n)?;
            *buf = rest;
            Some(head)
        }
        let u64_of = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or_default());
        let u32_of = |b: &[u8]| u32::from_le_bytes(b.try_into().unwrap_or_default());
        let time = |nanos: u64| UNIX_EPOCH + std::time::Duration::from_nanos(nanos);
        let fresh_until = time(u64_of(take(&mut buf, 8)?));
        let created = time(u64_of(take(&mut buf, 8)?));
        let stale_while_revalidate = u32_of(take(&mut buf, 4)?);
        let stale_if_error = u32_of(take(&mut buf, 4)?);
        let status = u16::from_le_bytes(take(&mut buf, 2)?.try_into().ok()?);
        let mut header = pingora::http::ResponseHeader::build(status, None).ok()?;
        while !buf.is_empty() {
            let len = u32_of(take(&mut buf, 4)?) as usize;
            let name = http::HeaderName::from_bytes(take(&mut buf, len)?).ok()?;
            let len = u32_of(take(&mut buf, 4)?) as usize;
            let value = http::HeaderValue::from_bytes(take(&mut buf, len)?).ok()?;
            header.append_header(name, value).ok()?;
        }
        Some(Parts { header, fresh_until, created, stale_while_revalidate, stale_if_error })
    }

    /// About what its headers take, in memory or on disk.
    fn header_bytes(&self) -> usize {
        self.header.headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 32).sum()
    }

    fn meta(&self) -> CacheMeta {
        CacheMeta::new(
            self.fresh_until,
            self.created,
            self.stale_while_revalidate,
            self.stale_if_error,
            self.header.clone(),
        )
    }
}

/// What is kept in the memory tier: the metadata already parsed, the
/// response head serialized, the body.
pub struct MemObject {
    /// What it answers, for metrics.
    pub kind: Option<modcdn_shared::Kind>,
    /// The HTTP/1.1 head of an answer from here, serialized once: the
    /// status line and header lines, `Content-Length` last; without `Age`,
    /// `Date`, `Connection` and the blank line, which each answer adds.
    pub head: Bytes,
    /// The head of a 304 for it, as [`MemObject::not_modified`] makes it.
    not_modified: OnceLock<Bytes>,
    /// Its head for an HTTP/2 stream, as [`MemObject::h2_head`] makes it.
    h2_head: OnceLock<pingora::http::ResponseHeader>,
    pub fresh_until: SystemTime,
    pub created: SystemTime,
    /// Its header says it is a hit.
    parts: Parts,
    pub body: MemBody,
    /// Hits from the tier, as [`placement`] counts them.
    hits: AtomicU32,
}

impl MemObject {
    fn new(primary: &str, mut parts: Parts, body: MemBody) -> MemObject {
        // Everything served from here is a hit: say so once, not per answer.
        let _ = parts.header.insert_header(CACHE_STATUS_HEADER, CacheStatus::Hit.as_str());
        MemObject {
            kind: modcdn_shared::Request::parse(&format!("/{primary}")).ok().map(|r| r.kind()),
            head: http1_head(&parts.header, Some(body.bytes.len())),
            not_modified: OnceLock::new(),
            h2_head: OnceLock::new(),
            fresh_until: parts.fresh_until,
            created: parts.created,
            parts,
            body,
            hits: AtomicU32::new(0),
        }
    }

    /// The same answer with `body` (the same bytes, held elsewhere).
    fn with_body(&self, body: MemBody) -> MemObject {
        MemObject {
            kind: self.kind,
            head: self.head.clone(),
            not_modified: self.not_modified.clone(),
            h2_head: self.h2_head.clone(),
            fresh_until: self.fresh_until,
            created: self.created,
            parts: self.parts.clone(),
            body,
            hits: AtomicU32::new(self.hits.load(Ordering::Relaxed)),
        }
    }

    fn meta(&self) -> CacheMeta {
        self.parts.meta()
    }

    /// The response head it answers with, as stored (with its `x-cache`).
    pub fn header(&self) -> &pingora::http::ResponseHeader {
        &self.parts.header
    }

    /// As [`MemObject::head`], the head of a 304 (Not Modified) for it, as
    /// Pingora's cache makes it from the stored head; made once, when first
    /// asked for.
    pub fn not_modified(&self) -> &Bytes {
        self.not_modified.get_or_init(|| {
            let mut header = self.parts.header.clone();
            pingora::protocols::http::conditional_filter::to_304(&mut header);
            http1_head(&header, None)
        })
    }

    /// As [`MemObject::head`], its head for an HTTP/2 stream: the stored
    /// head without what each answer adds (`Age`, `Date`) or HTTP/2 leaves
    /// out (HTTP/1's hop-by-hop headers), and without the letter case of
    /// HTTP/1 names (HTTP/2's are lower case): each answer clones less.
    /// Made once, when first asked for.
    pub fn h2_head(&self) -> &pingora::http::ResponseHeader {
        self.h2_head.get_or_init(|| {
            use http::header::{AGE, CONNECTION, DATE, TRANSFER_ENCODING, UPGRADE};
            let stored = &self.parts.header;
            let (mut head, ()) = http::Response::new(()).into_parts();
            head.status = stored.status;
            for (name, value) in stored.headers.iter() {
                if [TRANSFER_ENCODING, CONNECTION, UPGRADE, AGE, DATE].contains(name) || name == "keep-alive" {
                    continue;
                }
                head.headers.append(name.clone(), value.clone());
            }
            head.into()
        })
    }
}

/// `header` as HTTP/1.1 status and header lines for a body of `len` bytes,
/// or with no `Content-Length` (a 304) (framing, hop-by-hop headers, `Age`
/// and `Date` are each answer's own).
pub fn http1_head(header: &pingora::http::ResponseHeader, len: Option<usize>) -> Bytes {
    use http::header::{AGE, CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
    let status = header.status;
    let mut head = format!("HTTP/1.1 {} {}\r\n", status.as_str(), status.canonical_reason().unwrap_or("")).into_bytes();
    for (name, value) in header.headers.iter() {
        if [CONTENT_LENGTH, TRANSFER_ENCODING, CONNECTION, AGE, DATE].contains(name) || name == "keep-alive" {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    if let Some(len) = len {
        head.extend_from_slice(format!("content-length: {len}\r\n").as_bytes());
    }
    head.into()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FillState {
    Partial(u64),
    Complete(u64),
    Failed,
}

/// A write in progress.
struct Fill {
    id: u64,
    /// The request key it answers, for purges by prefix.
    primary: String,
    tag: U64WriteId,
    meta: Parts,
    /// Where its temp file goes, made once the body reaches a page (see
    /// [`fill::PAGE`]): a smaller one (every `.info`, most `.mod` and
    /// lists), or one of a told length up to [`FILL_MEMORY_MAX`], is held
    /// whole in `tail`, and its durable write puts it inside its meta file
    /// (or, a page or more, straight into its body file), which spares the
    /// miss a file created and written on the event loop, and its durable
    /// write a file (or a rename).
    part: PathBuf,
    /// The temp file, open for readers: it stays valid when the fill is
    /// renamed into place, so a reader never loses it mid-publish.
    reader: OnceLock<Arc<File>>,
    /// The finished body's file, mapped for all its readers at once (see
    /// [`Fill::mapping`]); held by them, not by the fill, so that a purge
    /// or an eviction lets its pages go with its last reader, not when the
    /// fill's durable write is due.
    mapped: Mutex<std::sync::Weak<mapped::Mapped>>,
    state: watch::Sender<FillState>,
    aborted: AtomicBool,
    /// Chunks handed straight to the filling request's own reader, so the
    /// first client's bytes are not read back from the file just written.
    own: Mutex<OwnChunks>,
    /// The last chunks written, kept while other readers follow the fill:
    /// they take them as they are (no copy) instead of reading them back.
    recent: Mutex<Recent>,
    /// Readers following the fill, other than its own.
    followers: AtomicUsize,
    /// Where each of them is in the body (see [`Fill::followers_keep_up`]).
    places: Mutex<Vec<std::sync::Weak<AtomicU64>>>,
    /// Its file was made as long as the body when it was created, its
    /// blocks taken (see [`Filler::file`]): it can be mapped while written.
    sized: AtomicBool,
    /// A write failed and the fill relays the rest of its body to its own
    /// reader only, keeping nothing (see [`Filler::relaying`]).
    unkept: AtomicBool,
    /// Its own reader took chunks (or went): a relaying writer waits on it.
    drained: tokio::sync::Notify,
    /// Where the file ends, and the bytes taken past it (see [`Tail`]).
    tail: Mutex<Tail>,
    /// Bumped by its file's writer after each write, and when it stops
    /// (see [`fill::write_out`]).
    wrote: watch::Sender<()>,
}

/// A fill's bytes past where its file ends: a body held whole (see
/// [`FILL_MEMORY_MAX`]), or those its writer has yet to write, in order
/// from `in_file`. Its readers take them from here, and what is below
/// `in_file` from the file.
#[derive(Default)]
struct Tail {
    /// Where the file ends: every byte below is written.
    in_file: u64,
    /// By offset.
    chunks: std::collections::VecDeque<(u64, Bytes)>,
    /// Their bytes.
    bytes: u64,
    /// They count against the store's bound of bytes not yet written
    /// (see [`UNWRITTEN_MAX`]): the fill has a file.
    counted: bool,
    /// Its writer is at work, or queued (see [`fill::write_out`]).
    writing: bool,
    /// The fill is finished: its writer writes its last bytes too, past
    /// the last page boundary.
    last: bool,
    /// A write failed (the disk full, an I/O error): its writer stopped.
    failed: Option<String>,
}

impl Tail {
    fn push(&mut self, chunk: Bytes) {
        let at = self.in_file + self.bytes;
        self.bytes += chunk.len() as u64;
        self.chunks.push_back((at, chunk));
    }

    /// The body from `pos` to at most `end` (within one chunk), if held.
    fn slice(&self, pos: u64, end: u64) -> Option<Bytes> {
        let i = self.chunks.partition_point(|(at, c)| at + c.len() as u64 <= pos);
        let (at, chunk) = self.chunks.get(i).filter(|(at, _)| *at <= pos)?;
        let (from, to) = ((pos - at) as usize, (end.min(at + chunk.len() as u64) - at) as usize);
        (to > from).then(|| chunk.slice(from..to))
    }

    /// All it holds, as one piece: a body held whole.
    fn whole(&self) -> Bytes {
        match self.chunks.len() {
            0 => Bytes::new(),
            1 => self.chunks[0].1.clone(),
            _ => self.chunks.iter().flat_map(|(_, c)| c.iter().copied()).collect::<Vec<u8>>().into(),
        }
    }

    /// What the writer writes next, from `in_file`: up to the last page
    /// boundary (every write but the last starts and ends on one, see
    /// [`fill::PAGE`]), or to the end once the fill is finished, about
    /// [`WRITE_MAX`] bytes at most (more if one chunk is larger) in at most
    /// 512 pieces (a call takes 1 024).
    fn next_write(&self) -> Vec<Bytes> {
        let page = |at: u64| at / fill::PAGE * fill::PAGE;
        let mut end = if self.last { self.bytes } else { page(self.in_file + self.bytes) - self.in_file };
        let mut held = 0;
        for (i, (_, chunk)) in self.chunks.iter().enumerate() {
            if held >= end || (held > 0 && (held + chunk.len() as u64 > WRITE_MAX || i == 512)) {
                // (Cut short of the end: at a page boundary too, if one is
                // passed.)
                end = end.min(Some(page(self.in_file + held) - self.in_file).filter(|e| *e > 0).unwrap_or(held));
                break;
            }
            held += chunk.len() as u64;
        }
        let (mut pieces, mut taken) = (Vec::new(), 0);
        for (_, chunk) in &self.chunks {
            if taken >= end {
                break;
            }
            let take = (end - taken).min(chunk.len() as u64) as usize;
            pieces.push(chunk.slice(..take));
            taken += take as u64;
        }
        pieces
    }

    /// `n` bytes from `in_file` are written: the file holds them now.
    fn wrote(&mut self, mut n: u64) {
        self.in_file += n;
        self.bytes -= n;
        while n > 0 {
            let Some((at, chunk)) = self.chunks.front_mut() else { break };
            if chunk.len() as u64 <= n {
                n -= chunk.len() as u64;
                self.chunks.pop_front();
            } else {
                *chunk = chunk.slice(n as usize..);
                *at += n;
                n = 0;
            }
        }
    }
}

/// Bytes of fills taken from their origins and not yet in their files, at
/// most: past them a fill takes no more until its writer has written some
/// (the disk's pace). Answers do not wait for their files: the writer, on
/// a thread of its own at the lowest priority, writes them beside the
/// answer (on another core) or after it. One client's first download of a
/// new 64 MiB zip (p50 of 8–12 fresh keys, alternating with the file
/// written on the event loop as the body came): on one core, level in a
/// fast spell of this machine (68–90 against 74–84 ms), 87–159 against
/// 233–238 ms in a slow one (writing fresh page-cache pages slow, the copy
/// 60–70 % of the edge); with two cores, 64–65 against 221–230 ms.
const UNWRITTEN_MAX: u64 = 128 << 20;

/// Bytes a fill's writer writes at most in one call.
const WRITE_MAX: u64 = 1 << 20;

/// Bytes a fill holds before its writer starts (then it writes what
/// comes, as it comes): a smaller body's file is written in one go, when
/// the fill finishes, one hop to the writer's thread.
const WRITE_MIN: u64 = 256 << 10;

impl Fill {
    /// A follower read up to `pos` (`place`, its place): a writer that
    /// waits for it (see [`Fill::followers_keep_up`]) hears of it.
    fn followed(&self, place: Option<&AtomicU64>, pos: u64) {
        if let Some(place) = place {
            place.store(pos, Ordering::Relaxed);
            if self.unkept.load(Ordering::Relaxed) {
                self.drained.notify_one();
            }
        }
    }

    /// Whether the recent chunks have room for `len` bytes more without
    /// dropping any that a follower has yet to read: a fill not kept has
    /// no file to read them from once they are gone, so its writer waits
    /// for the slowest of its followers, as for its own reader, and none
    /// fails for falling behind. (A follower that takes nothing is cut at
    /// its connection's send deadline, and the writer goes on.)
    fn followers_keep_up(&self, len: usize) -> bool {
        let slowest = {
            let mut places = self.places.lock();
            places.retain(|p| p.strong_count() > 0);
            places.iter().filter_map(|p| p.upgrade()).map(|p| p.load(Ordering::Relaxed)).min()
        };
        let Some(slowest) = slowest else { return true };
        let mut recent = self.recent.lock();
        recent.drop_before(slowest);
        recent.bytes == 0 || recent.bytes + len <= RECENT_MAX
    }

    /// The fill is finished and its file holds all of it (its writer may
    /// still write it after its readers had the last bytes, see
    /// [`UNWRITTEN_MAX`]).
    fn on_file(&self) -> bool {
        let FillState::Complete(len) = *self.state.borrow() else { return false };
        self.tail.lock().in_file >= len
    }

    /// The file of this finished fill (all of it on file, see
    /// [`Fill::on_file`]), mapped: one mapping for all the
    /// readers that read it at once (a lookup's, or a follower's that fell
    /// behind the recent chunks), since a finished fill's file is no longer
    /// written (its last bytes went in at its finish, and it keeps its
    /// inode when renamed into place or unlinked). So is a fill being
    /// written whose file was made as long as its body at once (`sized`):
    /// its bytes below where the file is written to (a page boundary, each
    /// write starting there) no longer change, and only those are read.
    /// `None` where it cannot be (a body held whole, a fill not kept, the
    /// guard's table full, an error): it is read instead. A mapping shorter
    /// than the body means the file was cut short under the edge.
    fn mapping(&self) -> Option<Arc<mapped::Mapped>> {
        if !(self.on_file() || self.sized.load(Ordering::SeqCst)) || self.unkept.load(Ordering::SeqCst) {
            return None;
        }
        let mut held = self.mapped.lock();
        if let Some(map) = held.upgrade().filter(|m| !m.failed()) {
            return Some(map);
        }
        let map = mapped::Mapped::new(self.reader.get()?).ok().flatten()?;
        *held = Arc::downgrade(&map);
        Some(map)
    }
}

/// The last [`RECENT_MAX`] bytes of a fill's chunks, by offset.
#[derive(Default)]
struct Recent {
    chunks: std::collections::VecDeque<(u64, Bytes)>,
    bytes: usize,
}

/// Bytes of its last chunks a fill keeps for the readers following it:
/// those that keep up with the fill take them as written, and only one
/// that fell behind reads the file (once the fill is finished, its mapping,
/// see [`Fill::mapping`]). In a stampede of 200 clients on one core most
/// fall behind: a fill of 64 MiB from a local origin was finished in
/// 0.5 s, its clients in 6.
const RECENT_MAX: usize = 4 << 20;

impl Recent {
    fn push(&mut self, at: u64, chunk: Bytes) {
        self.bytes += chunk.len();
        self.chunks.push_back((at, chunk));
        while self.bytes > RECENT_MAX {
            let Some((_, old)) = self.chunks.pop_front() else { break };
            self.bytes -= old.len();
        }
    }

    /// Drops the chunks that end at or before `pos`.
    fn drop_before(&mut self, pos: u64) {
        while let Some((at, chunk)) = self.chunks.front() {
            if at + chunk.len() as u64 > pos {
                break;
            }
            self.bytes -= chunk.len();
            self.chunks.pop_front();
        }
    }

    /// The body from `pos` to at most `end` (within one chunk), if held.
    fn slice(&self, pos: u64, end: u64) -> Option<Bytes> {
        let i = self.chunks.partition_point(|(at, c)| at + c.len() as u64 <= pos);
        let (at, chunk) = self.chunks.get(i).filter(|(at, _)| *at <= pos)?;
        let (from, to) = ((pos - at) as usize, (end.min(at + chunk.len() as u64) - at) as usize);
        (to > from).then(|| chunk.slice(from..to))
    }
}

/// Chunks written and not yet taken by the filling request's reader, at
/// most [`OWN_MAX`] bytes of them; past that (a slow client), its reader
/// reads the gap from the file as any other reader does.
#[derive(Default)]
struct OwnChunks {
    chunks: std::collections::VecDeque<(u64, Bytes)>,
    bytes: usize,
    /// The reader went.
    gone: bool,
}

/// Bytes held for the filling request's reader before it reads from the
/// file instead.
const OWN_MAX: usize = 4 << 20;

/// Bytes a fill not kept (a write failed) holds for its own reader on
/// Pingora's path, which its writer cannot wait for (see
/// [`Filler::relaying`]): a client further behind loses its answer, as
/// every answer on that path did when a write failed.
const UNWAITED_MAX: usize = 32 << 20;

/// The largest body a fill holds whole, with no temp file, until its
/// durable write (when the origin's answer says its length), and puts in
/// the memory tier as it is published (every `.info`, `.mod` and list,
/// small zips). A larger one enters the memory tier on its first hit: a zip
/// fetched once (most are, at any one edge) neither displaces what is hot
/// nor costs its fill a read-back of megabytes. A steady stream of new
/// 16 KiB zips (10 connections) went at 0.31–0.38× nginx's pace when each
/// fill made its temp file on the event loop, wrote it there, held its
/// descriptor, and was read back for the memory tier.
const FILL_MEMORY_MAX: u64 = 64 << 10;

/// The largest body a read from disk copies into the memory tier; a larger
/// one is mapped (the mapped tier). Measured with random hits over 20 000
/// zips of 16 KiB (more than the memory tier holds): copying them in (into
/// memory files) as they were read, each copy evicting another, gave
/// 16.5–23.4k req/s; mapping them, 72.7–74.1k (nginx 62.3–67.0k).
const DISK_COPY_MAX: u64 = 4 << 10;

/// Objects the mapped tier holds at most: each is a mapping (of the
/// [`mapped`] guard's [`mapped::SLOTS`]), the rest are for readers of
/// bodies the tier let go. With 2 048, random hits over 4 000 zips of
/// 256 KiB were 0.45× Varnish's (each miss of the tier a disk read, a new
/// mapping and an old one's end).
const MAPPED_MAX: usize = mapped::SLOTS / 2;

/// Finished fills waiting for their durable write at most (each holds a
/// descriptor); past them a fill is made durable at once, with every fill
/// waiting, and the request that filled it waits for that.
const PENDING_MAX: usize = 1024;

/// What a finished fill held whole counts against [`held_max`] besides its
/// body and head: its state, its task and its index entry (the edge's
/// resident memory grew by about 2 KiB per `.info` waiting, 20 000 of them).
const HELD_FILL_BYTES: u64 = 2 << 10;

/// The bytes finished fills whose bodies are held whole (see
/// [`FILL_MEMORY_MAX`]; they hold no descriptor) may hold while they wait
/// for their durable write; past them every fill waiting is hurried to
/// disk, and the request past them waits until they are under it again.
/// As much as the kernel lets a writer's unwritten pages reach before it
/// starts writing them back (`vm.dirty_background_bytes`, else
/// `vm.dirty_background_ratio` of the memory, or of the process's cgroup's
/// limit if lower: 10 % by default), which is what nginx's cache, writing
/// through the page cache, may hold; at least 64 MiB, at most 512 MiB
/// (with 1 GiB, 80 000 new 16 KiB zips took the edge's resident memory to
/// 2.2 GiB, with 512 MiB to 1.3, with 64 MiB to 0.6; at 3 400, 3 175 and
/// 2 950 misses/s). So a burst of cold `.info`, `.mod` and small zips (`go
/// mod download` of a large module graph, a CI farm's first build) is
/// taken at memory's pace and made durable in batches later. A steady
/// stream of 20 000 new 16 KiB zips (10 connections) went at 0.43× nginx's
/// pace with 64 MiB, each fill past it waiting for a batch of 4 000 made
/// durable with the event loop stalled, and 20 000 new `.info` at 0.63×
/// with a bound of 16 384 fills.
fn held_max() -> u64 {
    let number = |path: &str| std::fs::read_to_string(path).ok()?.trim().parse::<u64>().ok();
    let memory = || {
        let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
        let kib = meminfo.lines().find_map(|l| l.strip_prefix("MemTotal:"))?.trim().trim_end_matches("kB");
        let total = kib.trim().parse::<u64>().ok()? << 10;
        // (cgroup v2: the process's own group, e.g. a systemd unit's
        // `MemoryMax`, or a container's, "max" for none.)
        let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok();
        let group = cgroup.as_deref().and_then(|c| c.lines().find_map(|l| l.strip_prefix("0::")));
        let limit = group.and_then(|g| number(&format!("/sys/fs/cgroup{}/memory.max", g.trim_end_matches('/'))));
        Some(limit.map_or(total, |limit| limit.min(total)))
    };
    let ratio = || Some(memory()? / 100 * number("/proc/sys/vm/dirty_background_ratio").unwrap_or(10));
    let bytes = number("/proc/sys/vm/dirty_background_bytes").filter(|b| *b > 0);
    bytes.or_else(ratio).unwrap_or(0).clamp(64 << 20, 512 << 20)
}

/// Durable writes made in one batch at most (two `syncfs` each). The
/// writer took every write queued as its batch: once [`held_max`] was
/// reached, all the fills waiting (28 000 small zips at 512 MiB) went to
/// disk together, and the requests past the bound, which wait for the
/// bytes held to fall under it, waited for all of them: 8.2 s at most in
/// a stream of 80 000 new 16 KiB zips.
const BATCH_MAX: usize = 1024;

/// How long a finished fill waits before its durable write: until the
/// kernel's own writeback has taken its pages (`vm.dirty_expire_centisecs`
/// plus `vm.dirty_writeback_centisecs`, 35 s by default), so that the sync
/// before the rename finds them written and costs a flush, not the write;
/// or until fills stop (see [`CacheStore::hurry_when_quiet`]).
/// Syncing at once put that writeback on the edge's own threads: in
/// alternating turns of cold 1 MiB misses, the edge pinned to one core,
/// 346 µs more per miss than with this wait (paired median of 100 turns;
/// nginx `proxy_cache`, which never syncs, leaves its writeback to the
/// kernel as well).
fn flush_delay() -> std::time::Duration {
    let centisecs = |name: &str| -> Option<u64> {
        std::fs::read_to_string(format!("/proc/sys/vm/{name}")).ok()?.trim().parse().ok()
    };
    let (expire, every) = (centisecs("dirty_expire_centisecs"), centisecs("dirty_writeback_centisecs"));
    std::time::Duration::from_millis(10 * (expire.unwrap_or(3000) + every.unwrap_or(500)))
}

/// One entry on disk, as found at start.
#[derive(Debug, Clone)]
pub struct Stored {
    pub hash: String,
    pub primary: String,
    pub size: u64,
    pub fresh_until: SystemTime,
}

#[derive(Default)]
struct Index {
    /// hash → (request key, body bytes)
    by_hash: HashMap<String, (String, u64)>,
    /// request key → hash, ordered so a module's entries are one range.
    by_key: BTreeMap<String, String>,
}

impl Index {
    fn insert(&mut self, hash: &str, primary: &str, size: u64) {
        self.by_hash.insert(hash.to_string(), (primary.to_string(), size));
        self.by_key.insert(primary.to_string(), hash.to_string());
    }
    fn remove(&mut self, hash: &str) {
        if let Some((primary, _)) = self.by_hash.remove(hash) {
            self.by_key.remove(&primary);
        }
    }
}

#[derive(Clone)]
struct Weigh;
impl quick_cache::Weighter<String, Arc<MemObject>> for Weigh {
    fn weight(&self, key: &String, v: &Arc<MemObject>) -> u64 {
        (key.len() + v.parts.header_bytes() + v.head.len() + v.body.bytes.len() + 128) as u64
    }
}

pub struct CacheStore {
    dir: PathBuf,
    /// This process's temp directory, under `tmp/`.
    tmp: PathBuf,
    /// Held locked while the process lives (see the module docs); read
    /// only by tests, which hand the cache over without exiting.
    #[cfg_attr(not(test), allow(dead_code))]
    lock: File,
    /// Purges running now and done so far: a promotion to memory happens
    /// only if none runs and none finished since the object was read.
    purges: Mutex<PurgeGate>,
    /// Memory tier, by request key (no hashing on the hit path).
    memory: quick_cache::sync::Cache<String, Arc<MemObject>, Weigh>,
    /// The memory files its bodies may take, and who holds them.
    files: Arc<Files>,
    holders: Mutex<placement::Holders>,
    /// Mapped tier: disk-tier objects above [`DISK_COPY_MAX`], read since
    /// they were published, their bodies mappings of their files (the
    /// page cache's pages: no copy, no memory of the process's own), by
    /// request key as the memory tier. Only what the disk tier indexes.
    mapped: quick_cache::sync::Cache<String, Arc<MemObject>>,
    memory_object_max: u64,
    fills: Mutex<HashMap<String, Arc<Fill>>>,
    /// Finished fills whose durable write is still running, and the
    /// threads that run those writes.
    publishing: watch::Sender<usize>,
    /// Fills finished since the store opened (see
    /// [`CacheStore::hurry_when_quiet`]).
    finishes: AtomicU64,
    durable: modcdn_shared::background::Background,
    /// The threads that write fills' files (see [`fill::write_out`]).
    writes: modcdn_shared::background::Background,
    /// Bytes of fills not yet in their files, and how many at most (see
    /// [`UNWRITTEN_MAX`]).
    unwritten: watch::Sender<u64>,
    unwritten_max: u64,
    /// Whether fills' writers may write, when tests hold them back.
    #[cfg(test)]
    write_gate: Option<Arc<(Mutex<bool>, parking_lot::Condvar)>>,
    batch: Mutex<fill::Batch>,
    /// The cache's directory, open: what a batch syncs (`syncfs`).
    root: File,
    /// How long a finished fill waits before its durable write (see
    /// [`flush_delay`]), unless asked to hurry (bumped), or `draining`
    /// (shutting down: none waits), or too many wait (`pending_max`
    /// holding a descriptor, `held_max` bytes held whole).
    flush_delay: std::time::Duration,
    hurry: watch::Sender<u64>,
    draining: AtomicBool,
    pending_max: usize,
    /// Finished fills waiting that hold a descriptor (their temp file's).
    holding: watch::Sender<usize>,
    /// Bytes finished fills waiting hold whole: their bodies, their heads
    /// and [`HELD_FILL_BYTES`] each.
    held_bytes: watch::Sender<u64>,
    /// At most so many of them before every fill waiting is hurried to
    /// disk (see [`held_max`]).
    held_max: u64,
    /// Durable writes the writer takes into one batch at most (see
    /// [`BATCH_MAX`]).
    batch_max: usize,
    /// Batches the writer may still take, when tests hold it back.
    #[cfg(test)]
    batch_gate: Option<Arc<(Mutex<usize>, parking_lot::Condvar)>>,
    /// Until when another process (an upgrade's old one) may still publish
    /// into this cache, so that a key missing from the index may be on disk.
    shared_until: Option<std::time::Instant>,
    index: Mutex<Index>,
    next_id: AtomicU64,
    /// Bodies mapped now, so that readers of one file share one mapping,
    /// and the size at which it is next cleared of ended ones.
    maps: Mutex<(HashMap<PathBuf, std::sync::Weak<mapped::Mapped>>, usize)>,
}

/// Bytes free for this process on the file system of `dir` (`None` when
/// it cannot tell).
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: statvfs with a NUL-terminated path and a buffer of its type,
    // read only when it succeeded.
    #[allow(unsafe_code)]
    let st = unsafe {
        if libc::statvfs(path.as_ptr(), st.as_mut_ptr()) != 0 {
            return None;
        }
        st.assume_init()
    };
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

fn storage_error(context: &str, e: impl std::fmt::Display) -> Box<Error> {
    Error::explain(ErrorType::InternalError, format!("edge cache: {context}: {e}"))
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// The parsed meta file.
#[derive(Clone)]
struct MetaFile {
    generation: u64,
    body_len: u64,
    primary: String,
    parts: Parts,
    /// The body, when it is kept in the meta file (smaller than a page):
    /// then the entry is this one file, which a crash leaves whole, short
    /// or damaged (its checksum tells), and `generation` names no body file.
    inline: Option<Bytes>,
}

impl MetaFile {
    fn encode(&self) -> Vec<u8> {
        let inline = self.inline.as_deref().unwrap_or_default();
        let mut out = Vec::with_capacity(64 + self.primary.len() + self.parts.header_bytes() + inline.len());
        out.extend_from_slice(if self.inline.is_some() { MAGIC_INLINE } else { MAGIC });
        out.extend_from_slice(&self.generation.to_le_bytes());
        out.extend_from_slice(&self.body_len.to_le_bytes());
        out.extend_from_slice(&(self.primary.len() as u32).to_le_bytes());
        out.extend_from_slice(self.primary.as_bytes());
        let at = out.len();
        out.extend_from_slice(&0u32.to_le_bytes());
        self.parts.encode(&mut out);
        let len = (out.len() - at - 4) as u32;
        out[at..at + 4].copy_from_slice(&len.to_le_bytes());
        if self.inline.is_some() {
            out.extend_from_slice(inline);
            let crc = crc32fast::hash(&out);
            out.extend_from_slice(&crc.to_le_bytes());
        }
        out
    }

    fn decode(buf: &[u8]) -> Option<MetaFile> {
        let (rest, pingora, inline) = if let Some(rest) = buf.strip_prefix(MAGIC.as_slice()) {
            (rest, false, false)
        } else if let Some(rest) = buf.strip_prefix(MAGIC_PINGORA.as_slice()) {
            (rest, true, false)
        } else {
            let (whole, crc) = buf.split_at_checked(buf.len().checked_sub(4)?)?;
            if crc32fast::hash(whole).to_le_bytes() != crc {
                return None;
            }
            (whole.strip_prefix(MAGIC_INLINE.as_slice())?, false, true)
        };
        let u64_at = |b: &[u8]| -> Option<u64> { Some(u64::from_le_bytes(b.get(..8)?.try_into().ok()?)) };
        let generation = u64_at(rest)?;
        let body_len = u64_at(rest.get(8..)?)?;
        let mut rest = rest.get(16..)?;
        let mut pieces = Vec::with_capacity(3);
        for _ in 0..if pingora { 3 } else { 2 } {
            let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
            pieces.push(rest.get(4..4 + len)?);
            rest = &rest[4 + len..];
        }
        let inline = match inline {
            true if rest.len() as u64 == body_len => Some(Bytes::copy_from_slice(rest)),
            false if rest.is_empty() => None,
            _ => return None,
        };
        let parts = match pieces[1..] {
            [meta0, meta1] => Parts::of(&CacheMeta::deserialize(meta0, meta1).ok()?),
            [parts] => Parts::decode(parts)?,
            _ => return None,
        };
        let primary = String::from_utf8(pieces[0].to_vec()).ok()?;
        Some(MetaFile { generation, body_len, primary, parts, inline })
    }
}

/// Purges running and ended, for promotions to memory.
#[derive(Default)]
struct PurgeGate {
    running: u32,
    ended: u64,
}

/// A running purge; when dropped (done or cancelled) it has ended.
struct PurgeGuard<'a>(&'a Mutex<PurgeGate>);

impl Drop for PurgeGuard<'_> {
    fn drop(&mut self) {
        let mut gate = self.0.lock();
        gate.running -= 1;
        gate.ended += 1;
    }
}

/// The lock file of a process's temp directory.
const LOCK: &str = ".lock";
/// How recent a file must be to be spared while another process is alive.
const LIVE_GRACE: std::time::Duration = std::time::Duration::from_secs(600);

/// Removes the temp directories of processes that are gone (their lock is
/// free) and loose temp files older than [`LIVE_GRACE`]; whether another
/// process holds the cache now.
fn clean_tmp(tmp: &Path) -> std::io::Result<bool> {
    std::fs::create_dir_all(tmp)?;
    let mut others_alive = false;
    for entry in std::fs::read_dir(tmp)? {
        let path = entry?.path();
        if path.is_dir() {
            let held = File::open(path.join(LOCK))
                .is_ok_and(|f| matches!(f.try_lock(), Err(std::fs::TryLockError::WouldBlock)));
            if held {
                others_alive = true;
            } else {
                let _ = std::fs::remove_dir_all(&path);
            }
        } else {
            let old = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .is_ok_and(|m| m.elapsed().unwrap_or_default() > LIVE_GRACE);
            if old {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    Ok(others_alive)
}

fn sync_write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = File::create(path)?;
    f.write_all(bytes)?;
    f.sync_data()
}

impl CacheStore {
    /// `n` bytes of fills are written (or never will be): they no longer
    /// count against [`UNWRITTEN_MAX`].
    fn uncount(&self, n: u64) {
        let max = self.unwritten_max;
        self.unwritten.send_if_modified(|b| {
            let over = *b > max;
            *b = b.saturating_sub(n);
            over && *b <= max
        });
    }

    /// Opens (creating) the cache under `dir`, cleaning what a crash left,
    /// and returns the entries found so the eviction manager can track them.
    pub fn open(dir: &Path, memory_bytes: u64, memory_object_max: u64) -> std::io::Result<(CacheStore, Vec<Stored>)> {
        let objects = dir.join("objects");
        std::fs::create_dir_all(&objects)?;
        // Every shard now, not on the first fill of each: a new directory
        // is among the dearest things a file system does, and in a fresh
        // cache nearly every cold miss of the first hundreds would pay one
        // (publishing still creates a shard that went missing).
        for shard in 0..=u8::MAX {
            match std::fs::create_dir(objects.join(format!("{shard:02x}"))) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
                _ => {}
            }
        }
        let others_alive = clean_tmp(&dir.join("tmp"))?;
        let tmp = dir.join("tmp").join(format!("{}-{:x}", std::process::id(), unix_nanos(SystemTime::now())));
        std::fs::create_dir_all(&tmp)?;
        let lock = File::create(tmp.join(LOCK))?;
        lock.try_lock().map_err(|e| std::io::Error::other(format!("locking {}: {e}", tmp.display())))?;
        // While another process lives, a recent file may be its publish in
        // progress rather than a crash's leftover.
        let spare_after = others_alive.then(|| SystemTime::now() - LIVE_GRACE);
        let mut found = Vec::new();
        let mut index = Index::default();
        for shard in std::fs::read_dir(&objects)? {
            let shard = shard?.path();
            if !shard.is_dir() {
                continue;
            }
            found.extend(Self::scan_shard(&shard, &mut index, spare_after)?);
        }
        let memory =
            quick_cache::sync::Cache::with_weighter((memory_bytes / 4096).max(16) as usize, memory_bytes.max(1), Weigh);
        let store = CacheStore {
            dir: dir.to_path_buf(),
            tmp,
            lock,
            purges: Mutex::new(PurgeGate::default()),
            memory,
            files: Files::of_process(),
            holders: Mutex::default(),
            mapped: quick_cache::sync::Cache::new(MAPPED_MAX),
            memory_object_max: if memory_bytes == 0 { 0 } else { memory_object_max },
            fills: Mutex::new(HashMap::new()),
            publishing: watch::channel(0).0,
            finishes: AtomicU64::new(0),
            durable: modcdn_shared::background::Background::start("cache-durable", 2)?,
            writes: modcdn_shared::background::Background::start("cache-writes", 1)?,
            unwritten: watch::channel(0).0,
            unwritten_max: UNWRITTEN_MAX,
            #[cfg(test)]
            write_gate: None,
            batch: Mutex::default(),
            root: File::open(dir)?,
            flush_delay: flush_delay(),
            hurry: watch::channel(0).0,
            draining: AtomicBool::new(false),
            pending_max: memfile::descriptors(PENDING_MAX),
            holding: watch::channel(0).0,
            held_bytes: watch::channel(0).0,
            held_max: held_max(),
            batch_max: BATCH_MAX,
            #[cfg(test)]
            batch_gate: None,
            shared_until: others_alive.then(|| std::time::Instant::now() + LIVE_GRACE),
            index: Mutex::new(index),
            next_id: AtomicU64::new(unix_nanos(SystemTime::now())),
            maps: Mutex::new((HashMap::new(), 1024)),
        };
        Ok((store, found))
    }

    /// Keeps the complete entries of one shard directory, removes the rest
    /// (but files modified after `spare_after`, when set).
    fn scan_shard(shard: &Path, index: &mut Index, spare_after: Option<SystemTime>) -> std::io::Result<Vec<Stored>> {
        let spared = |path: &Path| {
            spare_after.is_some_and(|t| std::fs::metadata(path).and_then(|m| m.modified()).is_ok_and(|m| m > t))
        };
        let mut metas = Vec::new();
        let mut bodies = Vec::new();
        for entry in std::fs::read_dir(shard)? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
            if let Some(hash) = name.strip_suffix(".meta") {
                metas.push((hash.to_string(), path));
            } else {
                bodies.push((name, path));
            }
        }
        let mut keep = std::collections::HashSet::new();
        let mut found = Vec::new();
        for (hash, path) in metas {
            let parsed = std::fs::read(&path).ok().and_then(|b| MetaFile::decode(&b));
            let complete = parsed.as_ref().and_then(|m| {
                if m.inline.is_some() {
                    return Some(None);
                }
                let body = shard.join(format!("{hash}.{}.body", m.generation));
                let len = std::fs::metadata(&body).ok()?.len();
                (len == m.body_len).then_some(Some(body))
            });
            match (parsed, complete) {
                (Some(m), Some(body)) => {
                    keep.extend(body);
                    index.insert(&hash, &m.primary, m.body_len);
                    found.push(Stored { hash, primary: m.primary, size: m.body_len, fresh_until: m.parts.fresh_until });
                }
                _ if spared(&path) => {}
                _ => {
                    tracing::warn!(file = %path.display(), "removing an incomplete cache entry");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        for (_, path) in bodies {
            if !keep.contains(&path) && !spared(&path) {
                let _ = std::fs::remove_file(&path);
            }
        }
        Ok(found)
    }

    /// The body at `path` (open as `file`), mapped and shared by everyone
    /// reading it now; `None` when it cannot be mapped safely (see
    /// [`mapped`]).
    fn map_body(&self, path: &Path, file: &File) -> std::io::Result<Option<Arc<mapped::Mapped>>> {
        let (maps, clear_at) = &mut *self.maps.lock();
        if let Some(map) = maps.get(path).and_then(std::sync::Weak::upgrade).filter(|m| !m.failed()) {
            return Ok(Some(map));
        }
        let Some(map) = mapped::Mapped::new(file)? else { return Ok(None) };
        if maps.len() >= *clear_at {
            // (Amortized: the mapped tier keeps thousands alive.)
            maps.retain(|_, w| w.strong_count() > 0);
            *clear_at = (2 * maps.len()).max(1024);
        }
        maps.insert(path.to_path_buf(), Arc::downgrade(&map));
        Ok(Some(map))
    }

    fn shard(&self, hash: &str) -> PathBuf {
        self.dir.join("objects").join(&hash[..2.min(hash.len())])
    }

    fn meta_path(&self, hash: &str) -> PathBuf {
        self.shard(hash).join(format!("{hash}.meta"))
    }

    fn body_path(&self, hash: &str, generation: u64) -> PathBuf {
        self.shard(hash).join(format!("{hash}.{generation}.body"))
    }

    /// Makes the finished fills waiting for their durable write (see
    /// [`flush_delay`]) durable now if none finished since `since` (what
    /// this returned the last time), and returns the fills finished so far.
    /// A burst of misses is over: its fills go to disk while it is quiet
    /// (the writes at nice 19), not with the next burst's. Streams of
    /// 20 000 new 16 KiB zips 8 s apart (10 connections, the edge on one
    /// core): the fills of one, 360 MiB held whole, still waited when the
    /// next began, which passed [`held_max`] within a few thousand, and every
    /// fill after that waited for a batch made durable: the second stream
    /// went at 6 906 and 6 936 req/s in two series, now at 17 627 and
    /// 13 567 (the first at 9 664–16 289 in all four).
    pub fn hurry_when_quiet(&self, since: u64) -> u64 {
        let now = self.finishes.load(Ordering::Relaxed);
        if now == since && *self.publishing.borrow() > 0 {
            self.hurry.send_modify(|n| *n += 1);
        }
        now
    }

    /// Finished fills waiting for their durable write (see
    /// [`flush_delay`]; a crash loses them), and the bytes those held whole
    /// hold in memory (see [`held_max`]).
    pub fn waiting(&self) -> (usize, u64) {
        (*self.publishing.borrow(), *self.held_bytes.borrow())
    }

    /// Entries and bytes on disk: those published, and finished fills
    /// waiting for their durable write (see [`flush_delay`]).
    pub fn disk_usage(&self) -> (usize, u64) {
        let waiting = self.finished_fills();
        let index = self.index.lock();
        let waiting = waiting.into_iter().filter(|(h, _, _)| !index.by_hash.contains_key(h));
        let (n, bytes) = waiting.fold((0, 0), |(n, b), (_, _, len)| (n + 1, b + len));
        (index.by_hash.len() + n, index.by_hash.values().map(|(_, s)| *s).sum::<u64>() + bytes)
    }

    /// Finished fills not yet published: hash, request key, body bytes.
    fn finished_fills(&self) -> Vec<(String, String, u64)> {
        let fills = self.fills.lock();
        let finished = fills.iter().filter_map(|(hash, f)| match *f.state.borrow() {
            FillState::Complete(len) => Some((hash.clone(), f.primary.clone(), len)),
            _ => None,
        });
        finished.collect()
    }

    /// Bytes held by the memory tier.
    pub fn memory_usage(&self) -> u64 {
        self.memory.weight()
    }

    /// Objects in the mapped tier.
    pub fn mapped_objects(&self) -> usize {
        self.mapped.len()
    }

    /// The request keys stored under `prefix` (e.g. `example.com/a/@` for
    /// one module), finished fills waiting for their durable write too.
    pub fn keys_with_prefix(&self, prefix: &str) -> Vec<String> {
        let waiting = self.finished_fills().into_iter().map(|(_, k, _)| k).filter(|k| k.starts_with(prefix));
        let mut keys: BTreeSet<String> = waiting.collect();
        let index = self.index.lock();
        keys.extend(
            index.by_key.range(prefix.to_string()..).take_while(|(k, _)| k.starts_with(prefix)).map(|(k, _)| k.clone()),
        );
        keys.into_iter().collect()
    }

    /// Removes one entry by hash from disk, and from memory too unless it
    /// is an eviction (the memory tier has its own budget, and what is in
    /// it stays correct), and stops a fill in progress from publishing.
    /// Returns whether anything was there.
    async fn remove(&'static self, hash: &str, from_memory: bool) -> Result<bool> {
        let _purge = from_memory.then(|| self.begin_purge());
        let fill = self.fills.lock().remove(hash).inspect(|f| f.aborted.store(true, Ordering::SeqCst));
        let filling = fill.is_some();
        let primary = self.index.lock().by_hash.get(hash).map(|(p, _)| p.clone()).or(fill.map(|f| f.primary.clone()));
        let in_memory = from_memory && primary.as_ref().is_some_and(|p| self.memory.remove(p).is_some());
        let was_indexed = self.index.lock().by_hash.contains_key(hash);
        let (meta_path, shard, hash_owned) = (self.meta_path(hash), self.shard(hash), hash.to_string());
        let on_disk = tokio::task::spawn_blocking(move || -> std::io::Result<bool> {
            let generation = std::fs::read(&meta_path).ok().and_then(|b| MetaFile::decode(&b)).map(|m| m.generation);
            match std::fs::remove_file(&meta_path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
                Err(e) => return Err(e),
            }
            if let Some(g) = generation {
                let _ = std::fs::remove_file(shard.join(format!("{hash_owned}.{g}.body")));
            }
            Ok(true)
        })
        .await
        .map_err(|e| storage_error("purge", e))?
        .map_err(|e| storage_error("purge", e))?;
        self.index.lock().remove(hash);
        // After the index: a lookup that maps the file now finds it gone
        // from the index and takes its mapping out again (see `map_in`).
        // An eviction too: a mapping would keep the file's blocks.
        let mapped = primary.is_some_and(|p| self.mapped.remove(&p).is_some());
        Ok(in_memory || mapped || filling || on_disk || was_indexed)
    }

    /// Purges one request key. Returns whether it was cached.
    pub async fn purge_key(&'static self, primary: &str) -> Result<bool> {
        let _purge = self.begin_purge();
        let in_memory = self.memory.remove(primary).is_some() | self.mapped.remove(primary).is_some();
        Ok(self.remove(&cache_key(primary, None).combined(), true).await? || in_memory)
    }

    /// Purges every request key starting with `prefix`, in both tiers (the
    /// memory tier may hold objects the disk tier has already evicted).
    /// Returns how many were cached.
    pub async fn purge_prefix(&'static self, prefix: &str) -> Result<usize> {
        let in_memory = std::sync::atomic::AtomicUsize::new(0);
        let _purge = self.begin_purge();
        let retain = |k: &String, _: &Arc<MemObject>| {
            let keep = !k.starts_with(prefix);
            in_memory.fetch_add(usize::from(!keep), Ordering::Relaxed);
            keep
        };
        self.memory.retain(retain);
        self.mapped.retain(retain);
        let in_memory = in_memory.into_inner();
        // A finished fill enters the index before it leaves the fills, so
        // reading the fills first sees every entry in one of the two (read
        // the other way round, a fill published in between was in neither).
        let mut hashes: BTreeSet<String> =
            self.fills.lock().iter().filter(|(_, f)| f.primary.starts_with(prefix)).map(|(h, _)| h.clone()).collect();
        hashes.extend(self.keys_with_prefix(prefix).iter().map(|k| cache_key(k, None).combined()));
        let mut on_disk = 0;
        for hash in hashes {
            on_disk += usize::from(self.remove(&hash, true).await?);
        }
        Ok(on_disk.max(in_memory))
    }

    /// How many purges have ended, to promote what is read from here on.
    fn purge_epoch(&self) -> u64 {
        self.purges.lock().ended
    }

    /// Marks a purge as running until the guard drops.
    fn begin_purge(&self) -> PurgeGuard<'_> {
        self.purges.lock().running += 1;
        PurgeGuard(&self.purges)
    }

    /// Puts `obj` in the memory tier unless a purge runs now or ended since
    /// `epoch` (the lock keeps a purge from starting between check and insert).
    fn promote(&self, primary: &str, obj: Arc<MemObject>, epoch: u64) {
        let gate = self.purges.lock();
        if gate.running == 0 && gate.ended == epoch {
            self.memory.insert(primary.to_string(), obj.clone());
            if obj.body.file.is_some() {
                self.holders.lock().push(primary, &obj);
            }
        }
    }

    /// Puts `obj`, a mapping of the disk entry `hash`, in the mapped tier,
    /// as [`CacheStore::promote`] does, and only while the index holds the
    /// entry (its removal takes it out of the tier after the index).
    fn map_in(&self, primary: &str, hash: &str, obj: Arc<MemObject>, epoch: u64) {
        {
            let gate = self.purges.lock();
            if gate.running != 0 || gate.ended != epoch {
                return;
            }
            self.mapped.insert(primary.to_string(), obj);
        }
        // (A fill is published into the index before it leaves the fills.)
        let stored = self.fills.lock().contains_key(hash) || self.index.lock().by_hash.contains_key(hash);
        if !stored {
            self.mapped.remove(primary);
        }
    }

    /// Takes `obj` out of the mapped tier: a write of its mapping failed
    /// (the next request reads the disk entry again, and finds it whole or
    /// gone).
    pub fn unmap(&self, obj: &Arc<MemObject>) {
        self.mapped.retain(|_, o| !Arc::ptr_eq(o, obj));
    }

    /// Whether another process (an upgrade's old one) may still publish
    /// into this cache, so that a key missing from the index may be on disk.
    fn shared(&self) -> bool {
        self.shared_until.is_some_and(|until| std::time::Instant::now() < until)
    }

    /// Makes every finished fill durable on disk now (or drops it), and
    /// waits until they are.
    pub async fn settled(&self) {
        self.hurry.send_modify(|n| *n += 1);
        let _ = self.publishing.subscribe().wait_for(|n| *n == 0).await;
    }

    /// Whether the cache's file system has room now for a fill of a body
    /// of `len` bytes that is written as it comes (above
    /// [`FILL_MEMORY_MAX`]; smaller ones go to disk behind the answer, where
    /// a failure loses only the copy). A fill on Pingora's path is read back
    /// by the task that writes it, and one that runs out of room holds what
    /// its reader has not read, up to [`UNWAITED_MAX`] (see
    /// [`fill::Filler::relaying`]): without room, the answer goes out
    /// uncached, as a proxy's, at the client's pace, holding nothing.
    pub fn has_room(&self, len: u64) -> bool {
        if len <= FILL_MEMORY_MAX {
            return true;
        }
        // Room for the meta file too, and what the file system rounds up.
        const MARGIN: u64 = 1 << 20;
        free_bytes(&self.tmp).is_none_or(|free| free >= len.saturating_add(MARGIN))
    }

    /// At shutdown: what fills finished is made durable now, and what
    /// fills finish from here on at once.
    pub async fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.settled().await;
    }

    /// Lets another process take the cache over, as this one's exit does.
    #[cfg(test)]
    fn release(&self) {
        let _ = self.lock.unlock();
    }

    /// The cached body of `primary` (fresh or not), from either tier, if it
    /// is at most `max` bytes.
    pub async fn read_cached(&'static self, primary: &str, max: usize) -> Option<Bytes> {
        if let Some(obj) = self.memory_get(primary) {
            return (obj.body.bytes.len() <= max).then(|| obj.body.bytes.clone());
        }
        let span = pingora::cache::trace::Span::inactive().handle();
        let (_, mut hit) = Storage::lookup(self, &cache_key(primary, None), &span).await.ok()??;
        let mut body = Vec::new();
        while let Some(chunk) = hit.read_body().await.ok()? {
            if body.len() + chunk.len() > max {
                return None;
            }
            body.extend_from_slice(&chunk);
        }
        Some(Bytes::from(body))
    }

    /// A fresh-or-not object of the memory tier or of the mapped tier (one
    /// whose mapping is whole), for the proxy's fast path.
    pub fn memory_get(&self, primary: &str) -> Option<Arc<MemObject>> {
        if let Some(obj) = self.memory.get(primary) {
            self.count_hit(primary, &obj);
            return Some(obj);
        }
        let obj = self.mapped.get(primary)?;
        if obj.body.sound() {
            self.count_hit(primary, &obj);
            return Some(obj);
        }
        self.unmap(&obj);
        None
    }

    /// For a key [`CacheStore::memory_get`] did not find: whether nothing
    /// is on disk or being filled under it either, known without I/O (a
    /// cache another process may publish to is never sure).
    pub fn surely_absent(&self, key: &CacheKey) -> bool {
        let hash = key.combined();
        !self.shared() && !self.fills.lock().contains_key(&hash) && !self.index.lock().by_hash.contains_key(&hash)
    }

    /// A reader of `obj`: of its bytes, or for a mapped-tier body, of its
    /// mapping (each chunk's pages read before it is handed out).
    fn memory_hit(&self, obj: &Arc<MemObject>) -> (CacheMeta, HitHandler) {
        let len = obj.body.bytes.len();
        let hit = match &obj.body.mapped {
            Some(map) => Hit::Disk { body: hit::DiskBody::Mapped(map.clone()), pos: 0, end: len },
            None => Hit::Memory { body: obj.body.bytes.clone(), start: 0, end: len, done: false },
        };
        (obj.meta(), Box::new(hit))
    }

    /// A reader of a fill found by a lookup. A finished one waiting for
    /// its durable write (see [`flush_delay`]) is read as a published
    /// entry is: mapped, and in the mapped tier for the lane's next hits
    /// (the mapping stays valid when the file is renamed into place), once
    /// its file holds all of it (until then, as one in progress). One
    /// whose file was cut short under it is dropped, never published, and
    /// the lookup misses (`None`), as for a published entry.
    fn fill_hit(&self, primary: &str, hash: &str, fill: &Arc<Fill>) -> Option<(CacheMeta, HitHandler)> {
        let epoch = self.purge_epoch();
        let FillState::Complete(len) = *fill.state.borrow() else { return Some(self.partial_hit(fill, false)) };
        if len <= DISK_COPY_MAX || !fill.on_file() {
            return Some(self.partial_hit(fill, false));
        }
        match fill.mapping() {
            Some(map) if map.len() as u64 == len => {
                let obj = Arc::new(MemObject::new(primary, fill.meta.clone(), MemBody::of_mapping(map)));
                self.map_in(primary, hash, obj.clone(), epoch);
                Some(self.memory_hit(&obj))
            }
            Some(_) => {
                tracing::warn!(key = %primary, "a finished fill's file was cut short; dropped");
                fill.aborted.store(true, Ordering::SeqCst);
                {
                    let mut fills = self.fills.lock();
                    if fills.get(hash).is_some_and(|f| f.id == fill.id) {
                        fills.remove(hash);
                    }
                }
                self.mapped.remove(primary);
                None
            }
            _ => Some(self.partial_hit(fill, false)),
        }
    }

    /// A reader of a fill in progress; `own` for the request that fills it
    /// (it takes the chunks as they are written).
    fn partial_hit(&self, fill: &Arc<Fill>, own: bool) -> (CacheMeta, HitHandler) {
        if !own {
            fill.followers.fetch_add(1, Ordering::Relaxed);
        }
        let place = (!own).then(|| {
            let place = Arc::new(AtomicU64::new(0));
            let mut places = fill.places.lock();
            places.retain(|p| p.strong_count() > 0);
            places.push(Arc::downgrade(&place));
            place
        });
        let state = fill.state.subscribe();
        (fill.meta.meta(), Box::new(Hit::Partial { fill: fill.clone(), state, pos: 0, own, place }))
    }

    /// What a disk lookup of `primary` (`hash`) found, as an object of the
    /// memory tier (a small body, copied in unless `promote` says not) or
    /// of the mapped tier; `None` for a body to read from its file.
    fn take_in(&self, primary: &str, hash: &str, found: DiskLookup, epoch: u64) -> Option<Arc<MemObject>> {
        match found {
            DiskLookup::Small { parts, body, promote } => {
                let obj = Arc::new(MemObject::new(primary, parts, body));
                if promote {
                    self.promote(primary, obj.clone(), epoch);
                }
                Some(obj)
            }
            DiskLookup::Mapped { parts, map } => {
                let obj = Arc::new(MemObject::new(primary, parts, MemBody::of_mapping(map)));
                self.map_in(primary, hash, obj.clone(), epoch);
                Some(obj)
            }
            DiskLookup::Large { .. } => None,
        }
    }

    /// `key`'s entry, published on disk and in neither tier, read into
    /// the memory or the mapped tier as a lookup reads it, for the lane to
    /// answer; `None` if there is none, it is still filling, it is read
    /// from its file (see [`DiskLookup::Large`]), or the read failed (the
    /// full path then looks it up, and answers what that finds).
    pub async fn load(&'static self, key: &CacheKey) -> Option<Arc<MemObject>> {
        let primary = key.primary_key_str()?;
        let hash = key.combined();
        if self.fills.lock().contains_key(&hash) || !self.index.lock().by_hash.contains_key(&hash) {
            return None;
        }
        let epoch = self.purge_epoch();
        let (meta_path, shard, h) = (self.meta_path(&hash), self.shard(&hash), hash.clone());
        let read = tokio::task::spawn_blocking(move || read_disk(self, &meta_path, &shard, &h));
        let found = read.await.ok()?.ok()??;
        self.take_in(primary, &hash, found, epoch)
    }

    /// A fill of `key`'s answer `meta`, where lookups find it (what
    /// [`Storage::get_miss_handler`] gives, as the concrete type).
    pub fn begin_fill(&'static self, key: &CacheKey, meta: &CacheMeta) -> Filler {
        let hash = key.combined();
        let primary = key.primary_key_str().unwrap_or_default().to_string();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let part = self.tmp.join(format!("{hash}.{id}.part"));
        let (state, _) = watch::channel(FillState::Partial(0));
        let fill = Arc::new(Fill {
            id,
            primary: primary.clone(),
            tag: id.into(),
            meta: Parts::of(meta),
            part,
            reader: OnceLock::new(),
            mapped: Mutex::default(),
            state,
            aborted: AtomicBool::new(false),
            own: Mutex::new(OwnChunks::default()),
            recent: Mutex::new(Recent::default()),
            followers: AtomicUsize::new(0),
            places: Mutex::default(),
            sized: AtomicBool::new(false),
            unkept: AtomicBool::new(false),
            drained: tokio::sync::Notify::new(),
            tail: Mutex::default(),
            wrote: watch::channel(()).0,
        });
        self.fills.lock().insert(hash.clone(), fill.clone());
        let len = meta.headers().get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        Filler::new(self, hash, primary, fill, len)
    }
}

/// What a disk lookup found.
enum DiskLookup {
    Small {
        parts: Parts,
        body: MemBody,
        /// Copied into the memory tier (else only served: it is off, or
        /// the body is above its object limit).
        promote: bool,
    },
    Mapped {
        parts: Parts,
        map: Arc<mapped::Mapped>,
    },
    /// Not mappable now (see [`mapped`]): read from the file.
    Large {
        parts: Parts,
        file: File,
        len: usize,
    },
}

fn read_disk(store: &CacheStore, meta_path: &Path, shard: &Path, hash: &str) -> std::io::Result<Option<DiskLookup>> {
    let memory_max = store.memory_object_max;
    let buf = match std::fs::read(meta_path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let Some(m) = MetaFile::decode(&buf) else { return Ok(None) };
    if let Some(body) = m.inline {
        let promote = m.body_len <= memory_max;
        return Ok(Some(DiskLookup::Small { parts: m.parts, body: MemBody::heap(body), promote }));
    }
    let body_path = shard.join(format!("{hash}.{}.body", m.generation));
    let mut file = match File::open(&body_path) {
        Ok(f) => f,
        // Replaced or purged between reading meta and opening the body.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if file.metadata()?.len() != m.body_len {
        return Ok(None);
    }
    if m.body_len <= memory_max.min(DISK_COPY_MAX) {
        let mut body = Vec::with_capacity(m.body_len as usize);
        file.read_to_end(&mut body)?;
        return Ok(Some(DiskLookup::Small { parts: m.parts, body: MemBody::heap(body.into()), promote: true }));
    }
    Ok(Some(match store.map_body(&body_path, &file)? {
        Some(map) => DiskLookup::Mapped { parts: m.parts, map },
        None => DiskLookup::Large { parts: m.parts, file, len: m.body_len as usize },
    }))
}

#[async_trait]
impl Storage for CacheStore {
    async fn lookup(&'static self, key: &CacheKey, _trace: &SpanHandle) -> Result<Option<(CacheMeta, HitHandler)>> {
        let primary = key.primary_key_str().unwrap_or_default();
        if let Some(obj) = self.memory_get(primary) {
            return Ok(Some(self.memory_hit(&obj)));
        }
        let hash = key.combined();
        let fill = self.fills.lock().get(&hash).cloned();
        if let Some(hit) = fill.and_then(|fill| self.fill_hit(primary, &hash, &fill)) {
            return Ok(Some(hit));
        }
        // What is not in the index is not on disk: a miss costs no disk
        // read, and has no await point at which a fill could begin unseen.
        // (This process indexes what it publishes; while another may still
        // publish here, the disk is asked.)
        if !self.shared() && !self.index.lock().by_hash.contains_key(&hash) {
            return Ok(None);
        }
        let epoch = self.purge_epoch();
        let read = || {
            let (meta_path, shard, h) = (self.meta_path(&hash), self.shard(&hash), hash.clone());
            async move {
                tokio::task::spawn_blocking(move || read_disk(self, &meta_path, &shard, &h))
                    .await
                    .map_err(|e| storage_error("lookup", e))?
                    .map_err(|e| storage_error("lookup", e))
            }
        };
        let mut found = read().await?;
        if found.is_none() && self.index.lock().by_hash.contains_key(&hash) {
            // Published while the disk was read.
            found = read().await?;
        }
        match found {
            // A miss must still be one when this returns: pingora takes the
            // cache lock right after, and a fill that began (and released
            // the lock) while the disk was read would otherwise get a second
            // writer, and its origin a second request.
            None => {
                let fill = self.fills.lock().get(&hash).cloned();
                Ok(fill.and_then(|fill| self.fill_hit(primary, &hash, &fill)))
            }
            Some(DiskLookup::Large { parts, file, len }) => {
                let meta = parts.meta();
                let body = hit::DiskBody::File { file: Arc::new(file), len };
                Ok(Some((meta, Box::new(Hit::Disk { body, pos: 0, end: len }))))
            }
            Some(found) => Ok(self.take_in(primary, &hash, found, epoch).map(|obj| self.memory_hit(&obj))),
        }
    }

    async fn lookup_streaming_write(
        &'static self,
        key: &CacheKey,
        streaming_write_tag: Option<&[u8]>,
        trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let Some(tag) = streaming_write_tag.and_then(|t| U64WriteId::try_from(t).ok()) else {
            return self.lookup(key, trace).await;
        };
        let id: u64 = tag.into();
        let fill = self.fills.lock().get(&key.combined()).filter(|f| f.id == id).cloned();
        match fill {
            Some(fill) => Ok(Some(self.partial_hit(&fill, true))),
            None => self.lookup(key, trace).await,
        }
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        Ok(Box::new(self.begin_fill(key, meta)))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        kind: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        let removed = self.remove(&target.key().combined(), matches!(kind, PurgeType::Invalidation)).await?;
        Ok(if removed { PurgeOutcome::Purged(None) } else { PurgeOutcome::NotFound })
    }

    async fn expire(&'static self, target: PurgeTarget<'_>, _trace: &SpanHandle) -> Result<PurgeOutcome> {
        let hash = target.key().combined();
        let stored = self.read_meta(&hash).await?;
        let Some(mut m) = stored else { return Ok(PurgeOutcome::NotFound) };
        let mut meta = m.parts.meta();
        meta.expire_at(SystemTime::now());
        m.parts = Parts::of(&meta);
        self.write_meta(&hash, m).await?;
        Ok(PurgeOutcome::Expired)
    }

    async fn update_meta(&'static self, key: &CacheKey, meta: &CacheMeta, _trace: &SpanHandle) -> Result<bool> {
        let hash = key.combined();
        let Some(mut m) = self.read_meta(&hash).await? else { return Ok(false) };
        m.parts = Parts::of(meta);
        self.write_meta(&hash, m).await?;
        Ok(true)
    }

    fn support_streaming_partial_write(&self) -> bool {
        true
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync + 'static) {
        self
    }
}

impl CacheStore {
    /// The meta file of `hash`; a finished fill of it waiting for its
    /// durable write is made durable first (so that an update of its meta,
    /// a revalidation's or an expiry, is not lost).
    async fn read_meta(&'static self, hash: &str) -> Result<Option<MetaFile>> {
        let waiting =
            || self.fills.lock().get(hash).filter(|f| matches!(*f.state.borrow(), FillState::Complete(_))).is_some();
        if waiting() {
            let mut publishing = self.publishing.subscribe();
            self.hurry.send_modify(|n| *n += 1);
            while waiting() {
                if publishing.changed().await.is_err() {
                    break;
                }
            }
        }
        let path = self.meta_path(hash);
        tokio::task::spawn_blocking(move || match std::fs::read(&path) {
            Ok(b) => Ok(MetaFile::decode(&b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        })
        .await
        .map_err(|e| storage_error("read meta", e))?
        .map_err(|e| storage_error("read meta", e))
    }

    /// Replaces the meta file atomically; the memory copy follows.
    async fn write_meta(&'static self, hash: &str, m: MetaFile) -> Result<()> {
        let epoch = self.purge_epoch();
        // A mapped-tier copy is read again from disk, with this meta.
        self.mapped.remove(&m.primary);
        if let Some(obj) = self.memory.get(&m.primary) {
            self.promote(&m.primary, Arc::new(MemObject::new(&m.primary, m.parts.clone(), obj.body.clone())), epoch);
        }
        let path = self.meta_path(hash);
        let tmp = self.tmp.join(format!("{hash}.{}.meta", self.next_id.fetch_add(1, Ordering::Relaxed)));
        tokio::task::spawn_blocking(move || {
            sync_write(&tmp, &m.encode())?;
            std::fs::rename(&tmp, &path)
        })
        .await
        .map_err(|e| storage_error("write meta", e))?
        .map_err(|e| storage_error("write meta", e))
    }
}

#[cfg(test)]
mod tests;
