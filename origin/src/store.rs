//! Durable storage of artifacts, keyed by escaped GOPROXY path.
//!
//! One file per artifact at `<root>/<key>`, so the layout mirrors the
//! GOPROXY URL space: the body, then a trailer holding its metadata record
//! (JSON, its length, a magic tag). The body starts at offset 0, so ranges
//! are plain offsets. Writes never expose a partial artifact: the body
//! streams into a temp file in the destination directory ([`Store::stage`]);
//! [`Store::publish`] appends the trailer, fsyncs, renames it into place and
//! fsyncs the directory. A file whose trailer is missing or does not match
//! its length is never served, and leftover temp files are removed when the
//! store opens.
//!
//! With a byte budget, the least recently used artifacts are removed past
//! it (an LRU index of every stored key, ordered by file time at open); the
//! records the origin keeps for itself (verified tree heads) never are.
//! Path elements too long for a file name are stored under a name derived
//! from their hash, which no escaped module path can spell.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What is known of a stored artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// Body size in bytes.
    pub size: u64,
    /// Hex SHA-256 of the body; the ETag.
    pub sha256: String,
    /// `h1:` hash for `.mod` and `.zip`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub h1: Option<String>,
    /// When it was fetched, in milliseconds since the Unix epoch.
    pub fetched_at_ms: u64,
    /// Which upstream it came from.
    pub upstream: String,
    /// The private route it was fetched under (its patterns); none for
    /// the public chain. Served only while the module is still that route's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
}

/// A stored artifact, opened for reading: its body is the first
/// `meta.size` bytes of `file`.
#[derive(Debug)]
pub struct Hit {
    pub meta: Meta,
    pub file: File,
}

impl Hit {
    /// Reads the whole body.
    pub fn read_body(&self) -> io::Result<Vec<u8>> {
        let mut buf = vec![0; self.meta.size as usize];
        self.file.read_exact_at(&mut buf, 0)?;
        Ok(buf)
    }
}

/// A body being written; removed on drop unless published.
#[derive(Debug)]
pub struct Staged {
    key: String,
    /// Where the body is written; none for a body held in memory.
    temp: Option<PathBuf>,
    /// The body, for the writer (taken once) and for reading it back.
    file: File,
    taken: bool,
}

impl Staged {
    /// A body for `key` being written to `file` at `temp` (removed on drop).
    pub(crate) fn new(key: &str, temp: PathBuf, file: File) -> Staged {
        Staged { key: key.to_string(), temp: Some(temp), file, taken: false }
    }
    /// A body for `key` in an anonymous memory file, gone when dropped.
    #[cfg(any(test, feature = "test-util"))]
    fn in_memory(key: &str, file: File) -> Staged {
        Staged { key: key.to_string(), temp: None, file, taken: false }
    }
    /// The file to write the body into (taken once).
    pub fn take_file(&mut self) -> Option<File> {
        if std::mem::replace(&mut self.taken, true) {
            return None;
        }
        self.file.try_clone().ok()
    }
    /// The body written so far, from its start, to read it back (for
    /// validation) once the writer is done.
    pub fn reader(&self) -> io::Result<File> {
        match &self.temp {
            Some(temp) => File::open(temp),
            None => {
                let mut file = self.file.try_clone()?;
                io::Seek::rewind(&mut file)?;
                Ok(file)
            }
        }
    }
    /// The temp file holding the body, for backends that stage on disk.
    pub(crate) fn path(&self) -> io::Result<&Path> {
        self.temp.as_deref().ok_or_else(|| io::Error::other("staged body has no file"))
    }
    pub fn key(&self) -> &str {
        &self.key
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if let Some(temp) = &self.temp {
            let _ = fs::remove_file(temp);
        }
    }
}

/// Artifact storage. Methods block (file I/O); async callers use
/// `spawn_blocking`. Every implementation passes [`conformance`].
pub trait Store: Send + Sync + 'static {
    /// The artifact at `key`, if a complete one is stored.
    fn get(&self, key: &str) -> io::Result<Option<Hit>>;
    /// True when `key` is surely not stored, known without I/O: a miss then
    /// costs no disk read and no hop to a blocking thread. Never true for a
    /// stored key; a store others write to (an object store) cannot know.
    fn surely_absent(&self, _key: &str) -> bool {
        false
    }
    /// A new temp file for `key`'s body, invisible to `get`.
    fn stage(&self, key: &str) -> io::Result<Staged>;
    /// Makes a fully written staged body visible under its key with `meta`,
    /// durably, replacing what was there.
    fn publish(&self, staged: Staged, meta: &Meta) -> io::Result<()>;
    /// Objects stored, bytes they take, and how many were evicted; `None`
    /// for a backend that does not count (an object store: listing a
    /// bucket to count it costs what the count is worth).
    fn usage(&self) -> Option<Usage>;
    /// Removes the artifact at `key`, or with `prefix` every artifact whose
    /// key starts with it (a purge). Returns how many were removed.
    fn remove(&self, key: &str, prefix: bool) -> io::Result<u64>;

    /// Drops this node's own copies of what another node purged from the
    /// store they share (a local tier in front of it); the same arguments
    /// as [`Store::remove`]. A store of its own has nothing to drop.
    fn evict_local(&self, _key: &str, _prefix: bool) -> io::Result<u64> {
        Ok(0)
    }

    /// The small record at `key` (see [`is_record`]) with the tag
    /// [`Store::replace_record`] checks. A store written by this process
    /// alone tags a record by its hash.
    fn read_record(&self, key: &str) -> io::Result<Option<Record>> {
        let Some(hit) = self.get(key)? else { return Ok(None) };
        let body = hit.read_body()?;
        Ok(Some(Record { tag: hex_sha256(&body), body }))
    }

    /// Writes `body` as the record at `key` only if it is still the one
    /// `seen` read (still absent when `seen` is `None`): false when another
    /// writer came first, to read it again and decide anew.
    fn replace_record(&self, key: &str, body: &[u8], seen: Option<&Record>) -> io::Result<bool> {
        static WRITING: Mutex<()> = Mutex::new(());
        let _one = WRITING.lock().unwrap_or_else(|p| p.into_inner());
        if self.read_record(key)?.map(|r| r.tag) != seen.map(|r| r.tag.clone()) {
            return Ok(false);
        }
        self.put(key, body, &record_meta(body))?;
        Ok(true)
    }

    /// Stores a body held in memory: stage, write, publish.
    fn put(&self, key: &str, body: &[u8], meta: &Meta) -> io::Result<()> {
        let mut staged = self.stage(key)?;
        let mut file = staged.take_file().ok_or_else(|| io::Error::other("staged file taken"))?;
        file.write_all(body)?;
        drop(file);
        self.publish(staged, meta)
    }
}

/// A record as read, with what a conditional replace checks against.
#[derive(Debug, Clone)]
pub struct Record {
    pub body: Vec<u8>,
    /// A hash of the body, or the object store's ETag.
    pub(crate) tag: String,
}

/// The trailer record of a record the origin writes for itself.
pub(crate) fn record_meta(body: &[u8]) -> Meta {
    Meta {
        size: body.len() as u64,
        sha256: hex_sha256(body),
        h1: None,
        fetched_at_ms: crate::pull::now_ms(),
        upstream: "modcdn".into(),
        route: None,
    }
}

fn hex_sha256(body: &[u8]) -> String {
    Sha256::digest(body).iter().map(|b| format!("{b:02x}")).collect()
}

/// What a store holds, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub objects: i64,
    pub bytes: i64,
    /// Artifacts removed to stay within the byte budget since it opened.
    pub evicted: i64,
}

/// The disk store.
pub struct DiskStore {
    root: PathBuf,
    objects: AtomicI64,
    bytes: AtomicI64,
    /// Bytes the store may take; 0: unbounded.
    budget: u64,
    /// Every stored key with the bytes its file takes, least recently used
    /// first.
    lru: Mutex<lru::LruCache<String, u64>>,
    /// Artifacts removed to stay within the budget.
    evicted: AtomicI64,
}

/// Keys the origin keeps for itself, never evicted: the verified tree head
/// of each checksum database (`sumdb/<name>/verified-tree`).
pub fn is_record(key: &str) -> bool {
    key.starts_with("sumdb/") && key.ends_with("/verified-tree")
}

/// The longest path element stored under its own name; longer ones (a file
/// name has at most 255 bytes) are stored under a hashed name.
const MAX_ELEMENT: usize = 200;

const TEMP_PREFIX: &str = ".tmp-";
const MAGIC: &[u8; 8] = b"MODCDN\x01\n";
/// Trailer after the JSON record: its length (u32 LE) and [`MAGIC`].
const TRAILER_FIXED: u64 = 12;
const MAX_RECORD: u64 = 64 * 1024;

impl DiskStore {
    /// Opens (creating) the store at `root`, removing leftover temp files and
    /// indexing what is stored (oldest file first), then evicting down to
    /// `budget` bytes (0: unbounded).
    pub fn open(root: &Path, budget: u64) -> io::Result<DiskStore> {
        fs::create_dir_all(root)?;
        let (mut found, mut removed) = (Vec::new(), 0);
        let mut dirs = vec![root.to_path_buf()];
        while let Some(dir) = dirs.pop() {
            for entry in fs::read_dir(&dir)? {
                let entry = entry?;
                let ty = entry.file_type()?;
                if ty.is_dir() {
                    dirs.push(entry.path());
                } else if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                    fs::remove_file(entry.path())?;
                    removed += 1;
                } else if dir != root {
                    // Files at the top (the purge log) are not artifacts.
                    let meta = entry.metadata()?;
                    let rel = entry.path().strip_prefix(root).map(|p| p.to_string_lossy().into_owned());
                    let touched = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
                    found.push((touched, rel.unwrap_or_default(), meta.len()));
                }
            }
        }
        if removed > 0 {
            tracing::info!(removed, root = %root.display(), "removed leftover temp files");
        }
        found.sort();
        let mut lru = lru::LruCache::unbounded();
        let mut bytes = 0;
        for (_, key, len) in found {
            bytes += len as i64;
            lru.put(key, len);
        }
        let store = DiskStore {
            root: root.to_path_buf(),
            objects: AtomicI64::new(lru.len() as i64),
            bytes: AtomicI64::new(bytes),
            budget,
            lru: Mutex::new(lru),
            evicted: AtomicI64::new(0),
        };
        store.evict_over_budget(None)?;
        Ok(store)
    }

    /// Where `key` is stored: its own path under the root, with elements too
    /// long for a file name replaced by `<start>!!<sha256>` (`!!` appears in
    /// no escaped path, so no other key can land there).
    fn path_of(&self, key: &str) -> io::Result<PathBuf> {
        let mut path = self.root.clone();
        path.extend(stored_elements(key)?);
        Ok(path)
    }

    /// The key a file under the root stands for, as the LRU index names it.
    fn index_key(&self, path: &Path) -> String {
        path.strip_prefix(&self.root).map(|p| p.to_string_lossy().into_owned()).unwrap_or_default()
    }

    /// Marks `key` as just used.
    fn touch(&self, path: &Path) {
        if self.budget > 0 {
            self.lru.lock().unwrap_or_else(|p| p.into_inner()).promote(&self.index_key(path));
        }
    }

    /// Removes least recently used artifacts until the store is within its
    /// budget, sparing `keep` (the artifact just stored) and the origin's
    /// own records.
    fn evict_over_budget(&self, keep: Option<&str>) -> io::Result<()> {
        if self.budget == 0 {
            return Ok(());
        }
        let mut spared = Vec::new();
        while self.bytes.load(Ordering::Relaxed) > self.budget as i64 {
            let Some((key, len)) = self.lru.lock().unwrap_or_else(|p| p.into_inner()).pop_lru() else { break };
            if keep == Some(key.as_str()) || is_record(&key) {
                spared.push((key, len));
                continue;
            }
            match fs::remove_file(self.root.join(&key)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    spared.push((key, len));
                    self.restore(spared);
                    return Err(e);
                }
            }
            self.objects.fetch_sub(1, Ordering::Relaxed);
            self.bytes.fetch_sub(len as i64, Ordering::Relaxed);
            self.evicted.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%key, bytes = len, "evicted to stay within the store budget");
        }
        self.restore(spared);
        Ok(())
    }

    /// Puts spared keys back as the most recently used.
    fn restore(&self, spared: Vec<(String, u64)>) {
        let mut lru = self.lru.lock().unwrap_or_else(|p| p.into_inner());
        for (key, len) in spared {
            lru.put(key, len);
        }
    }
}

/// The elements `key` is stored under, in every backend: its own path
/// elements, with those too long for a file name replaced by
/// `<start>!!<sha256>` (`!!` appears in no escaped path, so no other key can
/// land there). Keys come from `Request::key`, which only builds checked
/// paths; anything else is refused rather than trusted.
pub(crate) fn stored_elements(key: &str) -> io::Result<Vec<String>> {
    let bad = key.is_empty()
        || key.starts_with('/')
        || key.split('/').any(|e| e.is_empty() || e == "." || e == ".." || e.starts_with(TEMP_PREFIX))
        || key.contains(['\\', '\0']);
    if bad {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("refusing store key {key:?}")));
    }
    Ok(key
        .split('/')
        .map(|element| {
            if element.len() <= MAX_ELEMENT {
                element.to_string()
            } else {
                let digest = hex_sha256(element.as_bytes());
                format!("{}!!{digest}", &element[..64])
            }
        })
        .collect())
}

/// The trailer that follows a body: its record, the record's length and
/// [`MAGIC`]. Every backend stores a body and its trailer as one object, so
/// the two are always written, replaced and removed together.
pub(crate) fn trailer(meta: &Meta) -> io::Result<Vec<u8>> {
    let mut trailer = serde_json::to_vec(meta).map_err(io::Error::other)?;
    trailer.extend_from_slice(&(trailer.len() as u32).to_le_bytes());
    trailer.extend_from_slice(MAGIC);
    Ok(trailer)
}

/// The most bytes a trailer takes: what to read from an object's end to
/// find its record.
pub(crate) const MAX_TRAILER: u64 = MAX_RECORD + TRAILER_FIXED;

/// The record in `tail`, the last bytes of an object of `len` bytes; `None`
/// when it is missing, torn or does not account for the object's length.
pub(crate) fn parse_trailer(tail: &[u8], len: u64) -> Option<Meta> {
    let fixed = tail.len().checked_sub(TRAILER_FIXED as usize).map(|at| &tail[at..])?;
    if &fixed[4..] != MAGIC {
        return None;
    }
    let record_len = u32::from_le_bytes([fixed[0], fixed[1], fixed[2], fixed[3]]) as u64;
    if record_len > MAX_RECORD || record_len + TRAILER_FIXED > len || record_len + TRAILER_FIXED > tail.len() as u64 {
        return None;
    }
    let end = tail.len() - TRAILER_FIXED as usize;
    let meta = serde_json::from_slice::<Meta>(&tail[end - record_len as usize..end]).ok()?;
    (meta.size + record_len + TRAILER_FIXED == len).then_some(meta)
}

/// Reads the record in the trailer of `file`; `None` when it is missing,
/// torn or does not account for the file's length.
pub(crate) fn read_trailer(file: &File) -> io::Result<Option<Meta>> {
    let len = file.metadata()?.len();
    let at = len - len.min(MAX_TRAILER);
    let mut tail = vec![0u8; (len - at) as usize];
    file.read_exact_at(&mut tail, at)?;
    Ok(parse_trailer(&tail, len))
}

pub(crate) fn temp_path(dest: &Path) -> PathBuf {
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    dest.with_file_name(format!("{TEMP_PREFIX}{name}-{:016x}", fastrand::u64(..)))
}

impl Store for DiskStore {
    /// Its index holds every key it stores: what it found at open, and
    /// each publish (entered before the write leaves the pulls' list of
    /// writes in progress, which is asked first).
    fn surely_absent(&self, key: &str) -> bool {
        self.path_of(key)
            .is_ok_and(|path| !self.lru.lock().unwrap_or_else(|p| p.into_inner()).contains(&self.index_key(&path)))
    }

    fn get(&self, key: &str) -> io::Result<Option<Hit>> {
        let path = self.path_of(key)?;
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        if !file.metadata()?.is_file() {
            return Ok(None);
        }
        let hit = read_trailer(&file)?.map(|meta| Hit { meta, file });
        if hit.is_some() {
            self.touch(&path);
        }
        Ok(hit)
    }

    fn stage(&self, key: &str) -> io::Result<Staged> {
        let dest = self.path_of(key)?;
        if let Some(dir) = dest.parent() {
            fs::create_dir_all(dir)?;
        }
        let temp = temp_path(&dest);
        let file = fs::OpenOptions::new().read(true).write(true).create_new(true).open(&temp)?;
        Ok(Staged::new(key, temp, file))
    }

    fn publish(&self, mut staged: Staged, meta: &Meta) -> io::Result<()> {
        let dest = self.path_of(&staged.key)?;
        let dir = dest.parent().map(Path::to_path_buf).unwrap_or_else(|| self.root.clone());
        let temp = staged.path()?.to_path_buf();
        let mut file = fs::OpenOptions::new().append(true).open(&temp)?;
        if file.metadata()?.len() != meta.size {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "staged body size differs from its record"));
        }
        file.write_all(&trailer(meta)?)?;
        // Data and size, which is all a reader needs; timestamps can wait.
        file.sync_data()?;
        let total = file.metadata()?.len() as i64;
        drop(file);
        let old = fs::metadata(&dest).ok().map(|m| m.len() as i64);
        fs::rename(&temp, &dest)?;
        staged.temp = None;
        File::open(&dir)?.sync_all()?;
        let index_key = self.index_key(&dest);
        let previous = self.lru.lock().unwrap_or_else(|p| p.into_inner()).put(index_key.clone(), total as u64);
        match previous.map(|p| p as i64).or(old) {
            Some(old) => self.bytes.fetch_add(total - old, Ordering::Relaxed),
            None => {
                self.objects.fetch_add(1, Ordering::Relaxed);
                self.bytes.fetch_add(total, Ordering::Relaxed)
            }
        };
        self.evict_over_budget(Some(&index_key))
    }

    fn usage(&self) -> Option<Usage> {
        Some(Usage {
            objects: self.objects.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            evicted: self.evicted.load(Ordering::Relaxed),
        })
    }

    fn remove(&self, key: &str, prefix: bool) -> io::Result<u64> {
        // A prefix is `<dir>/<start of a name>`: walk that directory.
        let (dir, start) = match (prefix, key.rsplit_once('/')) {
            (true, Some((dir, start))) => (self.path_of(dir)?, start.to_string()),
            _ => {
                let path = self.path_of(key)?;
                let (dir, name) =
                    (path.parent().map(Path::to_path_buf), path.file_name().map(|n| n.to_string_lossy().into_owned()));
                (dir.unwrap_or_else(|| self.root.clone()), name.unwrap_or_default())
            }
        };
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let mut doomed = Vec::new();
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if (prefix && name.starts_with(&start)) || name == start {
                doomed.push(entry.path());
            }
        }
        let mut removed = 0;
        while let Some(path) = doomed.pop() {
            let meta = match fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if meta.is_dir() {
                for entry in fs::read_dir(&path)? {
                    doomed.push(entry?.path());
                }
                continue;
            }
            fs::remove_file(&path)?;
            if !path.file_name().is_some_and(|n| n.to_string_lossy().starts_with(TEMP_PREFIX)) {
                removed += 1;
                let len = self.lru.lock().unwrap_or_else(|p| p.into_inner()).pop(&self.index_key(&path));
                self.objects.fetch_sub(1, Ordering::Relaxed);
                self.bytes.fetch_sub(len.unwrap_or(meta.len()) as i64, Ordering::Relaxed);
            }
        }
        if removed > 0 {
            File::open(&dir)?.sync_all()?;
        }
        Ok(removed)
    }
}

/// A store held in memory, for tests of what stands in front of a store:
/// each body is an anonymous memory file (`memfd`), sealed against writes
/// once published, so a [`Hit`] is a file read at offsets as with the other
/// backends. Keys are checked as the disk store checks them; nothing is
/// counted against a budget.
#[cfg(any(test, feature = "test-util"))]
#[derive(Default)]
pub struct MemoryStore {
    objects: Mutex<std::collections::BTreeMap<String, (Meta, File)>>,
}

#[cfg(any(test, feature = "test-util"))]
impl Store for MemoryStore {
    fn get(&self, key: &str) -> io::Result<Option<Hit>> {
        stored_elements(key)?;
        let objects = self.objects.lock().unwrap_or_else(|p| p.into_inner());
        let Some((meta, file)) = objects.get(key) else { return Ok(None) };
        Ok(Some(Hit { meta: meta.clone(), file: file.try_clone()? }))
    }

    fn stage(&self, key: &str) -> io::Result<Staged> {
        use rustix::fs::{memfd_create, MemfdFlags};
        stored_elements(key)?;
        let fd = memfd_create("modcdn-staged", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
        Ok(Staged::in_memory(key, File::from(fd)))
    }

    fn publish(&self, staged: Staged, meta: &Meta) -> io::Result<()> {
        use rustix::fs::{fcntl_add_seals, SealFlags};
        if staged.file.metadata()?.len() != meta.size {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "staged body size differs from its record"));
        }
        // Whoever still holds the writer can no longer change what is served.
        fcntl_add_seals(&staged.file, SealFlags::WRITE | SealFlags::GROW | SealFlags::SHRINK | SealFlags::SEAL)?;
        let file = staged.file.try_clone()?;
        self.objects.lock().unwrap_or_else(|p| p.into_inner()).insert(staged.key.clone(), (meta.clone(), file));
        Ok(())
    }

    fn usage(&self) -> Option<Usage> {
        let objects = self.objects.lock().unwrap_or_else(|p| p.into_inner());
        let bytes = objects.values().map(|(meta, _)| meta.size as i64).sum();
        Some(Usage { objects: objects.len() as i64, bytes, evicted: 0 })
    }

    fn remove(&self, key: &str, prefix: bool) -> io::Result<u64> {
        stored_elements(key)?;
        let mut objects = self.objects.lock().unwrap_or_else(|p| p.into_inner());
        let before = objects.len();
        if prefix {
            objects.retain(|k, _| !k.starts_with(key));
        } else {
            objects.remove(key);
        }
        Ok((before - objects.len()) as u64)
    }
}

/// The contract every [`Store`] must meet; each backend's tests call it
/// (feature `test-util` for tests outside this crate).
#[cfg(any(test, feature = "test-util"))]
pub fn conformance(store: &dyn Store) {
    let meta = |body: &[u8]| Meta {
        size: body.len() as u64,
        sha256: modcdn_shared::dirhash::sha256_reader(body)
            .map(|d| d.iter().map(|b| format!("{b:02x}")).collect())
            .unwrap_or_default(),
        h1: None,
        fetched_at_ms: 1,
        upstream: "test".into(),
        route: None,
    };
    let write = |key: &str, body: &[u8]| -> Staged {
        let mut s = store.stage(key).expect("stage");
        let mut f = s.take_file().expect("file");
        f.write_all(body).expect("write");
        f.sync_all().expect("sync");
        s
    };
    let read = |key: &str| -> Option<(Meta, Vec<u8>)> {
        let found = store.get(key).expect("get");
        assert!(found.is_none() || !store.surely_absent(key), "{key} is stored, yet said surely absent");
        found.map(|h| {
            let body = h.read_body().expect("read");
            (h.meta, body)
        })
    };
    let key = "example.com/!conformance/@v/v1.0.0.zip";
    assert!(read(key).is_none(), "empty store has nothing");
    // Backends that count must count right.
    let objects = || store.usage().map(|u| u.objects);
    let objects0 = objects();
    let plus_one = objects0.map(|n| n + 1);

    // A staged body is invisible, and dropping it leaves nothing.
    let staged = write(key, b"partial");
    assert!(read(key).is_none(), "staged body must be invisible");
    drop(staged);
    assert!(read(key).is_none(), "dropped stage must leave nothing");

    // Published: visible with its record.
    let staged = write(key, b"hello");
    store.publish(staged, &meta(b"hello")).expect("publish");
    assert_eq!(read(key), Some((meta(b"hello"), b"hello".to_vec())));
    assert_eq!(objects(), plus_one);

    // Replacement is whole.
    let staged = write(key, b"hello, world");
    store.publish(staged, &meta(b"hello, world")).expect("replace");
    assert_eq!(read(key).map(|(_, b)| b), Some(b"hello, world".to_vec()));
    assert_eq!(objects(), plus_one);

    // put: the same, from memory.
    store.put("example.com/!conformance/@v/list", b"v1.0.0\n", &meta(b"v1.0.0\n")).expect("put");
    assert_eq!(read("example.com/!conformance/@v/list").map(|(_, b)| b), Some(b"v1.0.0\n".to_vec()));

    // A record that does not match the body is refused at publish.
    let staged = write(key, b"xx");
    assert!(store.publish(staged, &meta(b"xyz")).is_err());
    assert_eq!(read(key).map(|(_, b)| b), Some(b"hello, world".to_vec()));

    // Keys that could escape the store are refused.
    for bad in ["../x", "/etc/passwd", "a/../../b", "a//b", "", "a/.tmp-x", "a\\b"] {
        assert!(store.get(bad).is_err(), "{bad:?}");
        assert!(store.stage(bad).is_err(), "{bad:?}");
        assert!(store.remove(bad, false).is_err(), "{bad:?}");
    }

    // Purges: one key, then a module's keys by prefix, sparing a nested module.
    let nested = "example.com/!conformance/sub/@v/v1.0.0.mod";
    store.put(nested, b"module x\n", &meta(b"module x\n")).expect("put nested");
    store.put("example.com/!conformance/@latest", b"{}", &meta(b"{}")).expect("put latest");
    assert_eq!(store.remove("example.com/!conformance/@v/list", false).expect("remove"), 1);
    assert!(read("example.com/!conformance/@v/list").is_none());
    assert_eq!(store.remove("example.com/!conformance/@v/list", false).expect("remove again"), 0);
    assert_eq!(store.remove("example.com/!conformance/@", true).expect("remove module"), 2);
    assert!(read(key).is_none() && read("example.com/!conformance/@latest").is_none());
    assert!(read(nested).is_some(), "a nested module is another module");
    assert_eq!(objects(), plus_one);
    assert_eq!(store.remove(nested, false).expect("remove nested"), 1);
    // Records: created only while absent, replaced only from what was read.
    let record = "sumdb/conformance.example/verified-tree";
    let body = |r: Option<Record>| r.map(|r| r.body);
    assert!(store.read_record(record).expect("read record").is_none());
    assert!(store.replace_record(record, b"one", None).expect("create record"));
    assert!(!store.replace_record(record, b"other", None).expect("create again"), "created only while absent");
    let one = store.read_record(record).expect("read record").expect("record");
    assert_eq!(one.body, b"one");
    assert!(store.replace_record(record, b"two", Some(&one)).expect("replace record"));
    assert!(!store.replace_record(record, b"stale", Some(&one)).expect("replace again"), "a stale read loses");
    assert_eq!(body(store.read_record(record).expect("read record")), Some(b"two".to_vec()));
    assert_eq!(store.remove(record, false).expect("remove record"), 1);

    // Leave the artifact callers may look at afterwards.
    store.put(key, b"hello, world", &meta(b"hello, world")).expect("put again");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_store_conformance_and_sealed_bodies() {
        let store = MemoryStore::default();
        conformance(&store);
        // A writer kept past publish cannot change what is served.
        let key = "example.com/m/@v/v1.0.0.zip";
        let mut staged = store.stage(key).expect("stage");
        let mut writer = staged.take_file().expect("file");
        writer.write_all(b"whole").expect("write");
        store.publish(staged, &meta(b"whole")).expect("publish");
        assert!(writer.write_all(b" and more").is_err(), "sealed");
        assert_eq!(store.get(key).expect("get").expect("hit").read_body().expect("body"), b"whole");
    }

    #[test]
    fn disk_store_conformance_and_crash_leftovers() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let store = DiskStore::open(&dir, 0).expect("open");
        conformance(&store);

        // Leftovers of a crash: a temp file, and a file without its trailer.
        let key = "example.com/m/@v/v1.0.0.zip";
        let mut s = store.stage(key).expect("stage");
        s.take_file().expect("file").write_all(b"half").expect("write");
        let temp = s.path().expect("temp").to_path_buf();
        std::mem::forget(s);
        fs::write(dir.join(key), b"no record").expect("body");
        store.put("example.com/kept/@v/list", b"v1.0.0\n", &meta(b"v1.0.0\n")).expect("put");
        drop(store);
        let store = DiskStore::open(&dir, 0).expect("reopen");
        assert!(!temp.exists(), "temp file removed at open");
        assert!(store.get(key).expect("get").is_none(), "a body without record is not served");
        // A torn trailer (cut short) is not served either.
        let good = dir.join("example.com/!conformance/@v/v1.0.0.zip");
        let bytes = fs::read(&good).expect("read");
        fs::write(&good, &bytes[..bytes.len() - 3]).expect("cut");
        assert!(store.get("example.com/!conformance/@v/v1.0.0.zip").expect("get").is_none());
        // What is stored is known at open without asking the disk, and so
        // is what is not.
        assert!(!store.surely_absent("example.com/kept/@v/list"), "found at open");
        assert!(store.surely_absent("example.com/other/@v/v1.0.0.info"));
        assert_eq!(store.remove("example.com/kept/@v/list", false).expect("remove"), 1);
        assert!(store.surely_absent("example.com/kept/@v/list"), "removed");
    }

    fn meta(body: &[u8]) -> Meta {
        Meta {
            size: body.len() as u64,
            sha256: String::new(),
            h1: None,
            fetched_at_ms: 1,
            upstream: "t".into(),
            route: None,
        }
    }

    #[test]
    fn the_budget_evicts_least_recently_used_and_spares_records() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let budget = 20_000;
        let store = DiskStore::open(&dir, budget).expect("open");
        let record = "sumdb/sum.golang.org/verified-tree";
        store
            .put(record, b"go.sum database tree\n1\nAAAA\n", &meta(b"go.sum database tree\n1\nAAAA\n"))
            .expect("record");
        let body = vec![7u8; 1000];
        let key = |i: usize| format!("example.com/m{i}/@v/v1.0.0.zip");
        for i in 0..100 {
            store.put(&key(i), &body, &meta(&body)).expect("put");
            // m0 is used all the time: it stays.
            assert!(store.get(&key(0)).expect("get").is_some(), "m0 evicted at {i}");
            let u = store.usage().expect("counted");
            assert!(u.bytes <= budget as i64 + 1200, "{u:?} after {i}");
        }
        let u = store.usage().expect("counted");
        assert!(u.evicted > 70, "{u:?}");
        assert!(store.get(&key(1)).expect("get").is_none(), "the least recently used went first");
        assert!(store.get(&key(99)).expect("get").is_some(), "the newest stays");
        assert!(store.get(record).expect("get").is_some(), "records are never evicted");
        let kept: Vec<usize> = (0..100).filter(|i| store.get(&key(*i)).ok().flatten().is_some()).collect();
        drop(store);
        // Reopened with a smaller budget: it shrinks at once, oldest files first.
        let store = DiskStore::open(&dir, 5_000).expect("reopen");
        let u = store.usage().expect("counted");
        assert!(u.bytes <= 5_000 && u.objects < kept.len() as i64, "{u:?}");
        assert!(store.get(&key(99)).expect("get").is_some() && store.get(record).expect("get").is_some());
    }

    #[test]
    fn path_elements_past_file_name_limits_are_stored_safely() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let store = DiskStore::open(&dir, 0).expect("open");
        let long = "a".repeat(300);
        let key = format!("example.com/{long}/{long}x/@v/v1.0.0.mod");
        store.put(&key, b"module x\n", &meta(b"module x\n")).expect("put");
        assert_eq!(store.get(&key).expect("get").expect("hit").read_body().expect("body"), b"module x\n");
        let other = format!("example.com/{long}/{long}y/@v/v1.0.0.mod");
        assert!(store.get(&other).expect("get").is_none(), "another long name is another file");
        assert_eq!(store.remove(&key, false).expect("remove"), 1);
    }
}
