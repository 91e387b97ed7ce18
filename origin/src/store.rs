//! Durable storage of artifacts, keyed by escaped GOPROXY path.
//!
//! Writes never expose a partial artifact: the body streams into a temp file
//! in the destination directory ([`Store::stage`]), is fsynced, and only then
//! renamed into place next to its metadata record ([`Store::publish`]), and
//! the directory is fsynced. A body without a matching record (size and
//! all) is never served, so a crash at any point leaves either the old state
//! or the new one. Leftover temp files are removed when the store opens.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};

use serde::{Deserialize, Serialize};

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
}

/// A stored artifact, opened for reading.
#[derive(Debug)]
pub struct Hit {
    pub meta: Meta,
    pub body: File,
}

/// A body being written; removed on drop unless published.
#[derive(Debug)]
pub struct Staged {
    key: String,
    temp: PathBuf,
    file: Option<File>,
}

impl Staged {
    /// The file to write the body into (taken once).
    pub fn take_file(&mut self) -> Option<File> {
        self.file.take()
    }
    /// Where the body is, to read it back for validation.
    pub fn path(&self) -> &Path {
        &self.temp
    }
    pub fn key(&self) -> &str {
        &self.key
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.temp.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.temp);
        }
    }
}

/// Artifact storage. Methods block (file I/O); async callers use
/// `spawn_blocking`. Every implementation passes [`conformance`].
pub trait Store: Send + Sync + 'static {
    /// The artifact at `key`, if a complete one is stored.
    fn get(&self, key: &str) -> io::Result<Option<Hit>>;
    /// A new temp file for `key`'s body, invisible to `get`.
    fn stage(&self, key: &str) -> io::Result<Staged>;
    /// Makes a fully written, fsynced staged body visible under its key with
    /// `meta`, replacing what was there.
    fn publish(&self, staged: Staged, meta: &Meta) -> io::Result<()>;
    /// Objects and bytes stored.
    fn usage(&self) -> (i64, i64);
}

/// The disk store: `<root>/<key>` holds the body and `<root>/<key>.meta` its
/// record, so the layout mirrors the GOPROXY URL space.
pub struct DiskStore {
    root: PathBuf,
    objects: AtomicI64,
    bytes: AtomicI64,
}

const TEMP_PREFIX: &str = ".tmp-";
const META_SUFFIX: &str = ".meta";

impl DiskStore {
    /// Opens (creating) the store at `root`, removing leftover temp files and
    /// counting what is stored.
    pub fn open(root: &Path) -> io::Result<DiskStore> {
        fs::create_dir_all(root)?;
        let store = DiskStore { root: root.to_path_buf(), objects: AtomicI64::new(0), bytes: AtomicI64::new(0) };
        let (mut objects, mut bytes, mut removed) = (0, 0, 0);
        let mut dirs = vec![root.to_path_buf()];
        while let Some(dir) = dirs.pop() {
            for entry in fs::read_dir(&dir)? {
                let entry = entry?;
                let name = entry.file_name();
                let name = name.to_string_lossy();
                let ty = entry.file_type()?;
                if ty.is_dir() {
                    dirs.push(entry.path());
                } else if name.starts_with(TEMP_PREFIX) {
                    fs::remove_file(entry.path())?;
                    removed += 1;
                } else if let Some(body) = name.strip_suffix(META_SUFFIX) {
                    if let Ok(meta) = read_meta(&entry.path()) {
                        if fs::metadata(dir.join(body)).map(|m| m.len() == meta.size).unwrap_or(false) {
                            objects += 1;
                            bytes += meta.size as i64;
                        }
                    }
                }
            }
        }
        if removed > 0 {
            tracing::info!(removed, root = %root.display(), "removed leftover temp files");
        }
        store.objects.store(objects, Ordering::Relaxed);
        store.bytes.store(bytes, Ordering::Relaxed);
        Ok(store)
    }

    fn path_of(&self, key: &str) -> io::Result<PathBuf> {
        // Keys come from `Request::key`, which only builds checked paths;
        // refuse anything else rather than trust the caller.
        let bad = key.is_empty()
            || key.starts_with('/')
            || key.split('/').any(|e| e.is_empty() || e == "." || e == ".." || e.starts_with(TEMP_PREFIX))
            || key.contains(['\\', '\0'])
            || key.ends_with(META_SUFFIX);
        if bad {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("refusing store key {key:?}")));
        }
        Ok(self.root.join(key))
    }
}

fn meta_path(body: &Path) -> PathBuf {
    let mut s = body.as_os_str().to_owned();
    s.push(META_SUFFIX);
    PathBuf::from(s)
}

fn read_meta(path: &Path) -> io::Result<Meta> {
    let bytes = fs::read(path)?;
    serde_json::from_slice(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn temp_path(dest: &Path) -> PathBuf {
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    dest.with_file_name(format!("{TEMP_PREFIX}{name}-{:016x}", fastrand::u64(..)))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Store for DiskStore {
    fn get(&self, key: &str) -> io::Result<Option<Hit>> {
        let path = self.path_of(key)?;
        let meta = match read_meta(&meta_path(&path)) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => return Ok(None),
            Err(e) => return Err(e),
        };
        let body = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        if body.metadata()?.len() != meta.size {
            // Mid-replacement, or a torn write from a crash: not ours to serve.
            return Ok(None);
        }
        Ok(Some(Hit { meta, body }))
    }

    fn stage(&self, key: &str) -> io::Result<Staged> {
        let dest = self.path_of(key)?;
        if let Some(dir) = dest.parent() {
            fs::create_dir_all(dir)?;
        }
        let temp = temp_path(&dest);
        let file = fs::OpenOptions::new().write(true).create_new(true).open(&temp)?;
        Ok(Staged { key: key.to_string(), temp, file: Some(file) })
    }

    fn publish(&self, mut staged: Staged, meta: &Meta) -> io::Result<()> {
        let dest = self.path_of(&staged.key)?;
        let dir = dest.parent().map(Path::to_path_buf).unwrap_or_else(|| self.root.clone());
        if fs::metadata(&staged.temp)?.len() != meta.size {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "staged body size differs from its record"));
        }
        let old = read_meta(&meta_path(&dest)).ok();
        let meta_dest = meta_path(&dest);
        let meta_temp = temp_path(&meta_dest);
        let write_meta = || -> io::Result<()> {
            let mut f = fs::OpenOptions::new().write(true).create_new(true).open(&meta_temp)?;
            f.write_all(&serde_json::to_vec(meta).map_err(io::Error::other)?)?;
            f.sync_all()
        };
        if let Err(e) = write_meta() {
            let _ = fs::remove_file(&meta_temp);
            return Err(e);
        }
        // Body first: a body whose record is missing or of another size is
        // never served, so every crash point leaves a consistent store.
        fs::rename(&staged.temp, &dest)?;
        staged.temp = PathBuf::new();
        if let Err(e) = fs::rename(&meta_temp, &meta_dest) {
            let _ = fs::remove_file(&meta_temp);
            return Err(e);
        }
        sync_dir(&dir)?;
        match old {
            Some(old) => self.bytes.fetch_add(meta.size as i64 - old.size as i64, Ordering::Relaxed),
            None => {
                self.objects.fetch_add(1, Ordering::Relaxed);
                self.bytes.fetch_add(meta.size as i64, Ordering::Relaxed)
            }
        };
        Ok(())
    }

    fn usage(&self) -> (i64, i64) {
        (self.objects.load(Ordering::Relaxed), self.bytes.load(Ordering::Relaxed))
    }
}

/// The contract every [`Store`] must meet; each backend's tests call it.
pub fn conformance(store: &dyn Store) {
    use std::io::Read;
    let meta = |body: &[u8]| Meta {
        size: body.len() as u64,
        sha256: modcdn_shared::dirhash::sha256_reader(body)
            .map(|d| d.iter().map(|b| format!("{b:02x}")).collect())
            .unwrap_or_default(),
        h1: None,
        fetched_at_ms: 1,
        upstream: "test".into(),
    };
    let write = |key: &str, body: &[u8]| -> Staged {
        let mut s = store.stage(key).expect("stage");
        let mut f = s.take_file().expect("file");
        f.write_all(body).expect("write");
        f.sync_all().expect("sync");
        s
    };
    let read = |key: &str| -> Option<(Meta, Vec<u8>)> {
        store.get(key).expect("get").map(|mut h| {
            let mut v = Vec::new();
            h.body.read_to_end(&mut v).expect("read");
            (h.meta, v)
        })
    };
    let key = "example.com/!conformance/@v/v1.0.0.zip";
    assert!(read(key).is_none(), "empty store has nothing");
    let (objects0, bytes0) = store.usage();

    // A staged body is invisible, and dropping it leaves nothing.
    let staged = write(key, b"partial");
    assert!(read(key).is_none(), "staged body must be invisible");
    drop(staged);
    assert!(read(key).is_none(), "dropped stage must leave nothing");

    // Published: visible with its record.
    let staged = write(key, b"hello");
    store.publish(staged, &meta(b"hello")).expect("publish");
    assert_eq!(read(key), Some((meta(b"hello"), b"hello".to_vec())));
    assert_eq!(store.usage(), (objects0 + 1, bytes0 + 5));

    // Replacement is whole.
    let staged = write(key, b"hello, world");
    store.publish(staged, &meta(b"hello, world")).expect("replace");
    assert_eq!(read(key).map(|(_, b)| b), Some(b"hello, world".to_vec()));
    assert_eq!(store.usage(), (objects0 + 1, bytes0 + 12));

    // A record that does not match the body is refused at publish.
    let staged = write(key, b"xx");
    assert!(store.publish(staged, &meta(b"xyz")).is_err());
    assert_eq!(read(key).map(|(_, b)| b), Some(b"hello, world".to_vec()));

    // Keys that could escape the store are refused.
    for bad in ["../x", "/etc/passwd", "a/../../b", "a//b", "", "a/.tmp-x", "a\\b", "x.meta"] {
        assert!(store.get(bad).is_err(), "{bad:?}");
        assert!(store.stage(bad).is_err(), "{bad:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_store_conformance_and_crash_leftovers() {
        let dir = tempdir();
        let store = DiskStore::open(&dir).expect("open");
        conformance(&store);

        // Leftovers of a crash: a temp file, and a body without its record.
        let key = "example.com/m/@v/v1.0.0.zip";
        let mut s = store.stage(key).expect("stage");
        s.take_file().expect("file").write_all(b"half").expect("write");
        let temp = s.path().to_path_buf();
        std::mem::forget(s);
        fs::write(dir.join(key), b"no record").expect("body");
        drop(store);
        let store = DiskStore::open(&dir).expect("reopen");
        assert!(!temp.exists(), "temp file removed at open");
        assert!(store.get(key).expect("get").is_none(), "a body without record is not served");
        assert_eq!(store.usage().0, 1, "only the conformance artifact counts");
        let _ = fs::remove_dir_all(&dir);
    }

    fn tempdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("modcdn-store-test-{}-{:x}", std::process::id(), fastrand::u64(..)));
        fs::create_dir_all(&d).expect("tempdir");
        d
    }
}
