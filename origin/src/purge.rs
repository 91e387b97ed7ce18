//! The origin's purge log: every purge (takedown, bad upstream data) is
//! removed from the store and appended here with the next sequence number,
//! durably, before it is acknowledged. Edges follow the log with
//! `GET /purgez?after=N` and apply entries idempotently, so an edge that was
//! down catches up when it returns.
//!
//! On disk: `purge.log` in the store directory, one JSON `LogEntry` a line.
//! On a shared object store: one object per entry, `purge/<seq>` (20
//! digits), created only if absent, so origins appending at once get
//! distinct numbers without a lock; every origin follows the shared log,
//! drops its local copies of what others purged, and serves the same log.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use std::sync::{Arc, Mutex};
use std::time::Duration;

use modcdn_shared::purge::{LogEntry, LogPage, Target};

use crate::s3::S3Store;
use crate::Origin;

/// Entries in one page of `/purgez`.
const PAGE: usize = 1000;

pub struct PurgeLog {
    backing: Backing,
    entries: Mutex<Vec<LogEntry>>,
    /// Entries whose purge this origin has applied to its own copies (a
    /// shared log; none at start, so what was purged while it was down goes
    /// from its local tier too).
    applied: std::sync::atomic::AtomicUsize,
}

enum Backing {
    File(PathBuf),
    Shared(Arc<S3Store>),
}

/// Where shared entries are kept, under the store's prefix.
const SHARED_DIR: &str = "purge";
/// How often an origin on a shared store reads what others purged.
const FOLLOW_EVERY: Duration = Duration::from_secs(1);

fn entry_name(seq: u64) -> String {
    format!("{seq:020}")
}

impl PurgeLog {
    /// Reads the log (a torn last line from a crash is dropped).
    pub fn open(dir: &Path) -> io::Result<PurgeLog> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("purge.log");
        let mut entries: Vec<LogEntry> = Vec::new();
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(PurgeLog {
                    backing: Backing::File(path),
                    entries: Mutex::new(entries),
                    applied: Default::default(),
                })
            }
            Err(e) => return Err(e),
        };
        let (mut good, total) = (0u64, file.metadata()?.len());
        let mut reader = BufReader::new(file);
        let mut line = String::new();
        while reader.read_line(&mut line)? > 0 {
            match serde_json::from_str::<LogEntry>(line.trim_end()) {
                Ok(e) if line.ends_with('\n') && e.seq == entries.len() as u64 + 1 => {
                    good += line.len() as u64;
                    entries.push(e);
                }
                _ => break,
            }
            line.clear();
        }
        if good < total {
            // A torn append from a crash: cut it, so new entries follow the good ones.
            tracing::warn!(file = %path.display(), kept = entries.len(), "purge log ended in a damaged line; cut it");
            OpenOptions::new().write(true).open(&path)?.set_len(good)?;
        }
        Ok(PurgeLog { backing: Backing::File(path), entries: Mutex::new(entries), applied: Default::default() })
    }

    /// The log every origin on `shared` writes and reads.
    pub fn open_shared(shared: Arc<S3Store>) -> io::Result<PurgeLog> {
        let log =
            PurgeLog { backing: Backing::Shared(shared), entries: Mutex::new(Vec::new()), applied: Default::default() };
        log.catch_up(&mut log.entries.lock().unwrap_or_else(|p| p.into_inner()))?;
        Ok(log)
    }

    /// Reads what other origins appended to a shared log and returns the
    /// entries this origin has not applied to its own copies yet (none for
    /// a log of its own).
    pub fn follow(&self) -> io::Result<Vec<LogEntry>> {
        use std::sync::atomic::Ordering;
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        self.catch_up(&mut entries)?;
        let from = self.applied.swap(entries.len(), Ordering::Relaxed).min(entries.len());
        Ok(entries[from..].to_vec())
    }

    fn catch_up(&self, entries: &mut Vec<LogEntry>) -> io::Result<()> {
        let Backing::Shared(shared) = &self.backing else { return Ok(()) };
        for (name, body) in shared.small_after(SHARED_DIR, &entry_name(entries.len() as u64))? {
            let entry: LogEntry = serde_json::from_slice(&body)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("purge log entry {name}: {e}")))?;
            // Only the next number extends the log: a gap waits for its entry.
            if entry.seq != entries.len() as u64 + 1 || name != entry_name(entry.seq) {
                break;
            }
            entries.push(entry);
        }
        Ok(())
    }

    /// Appends `target` durably; returns its sequence number.
    pub fn append(&self, target: Target) -> io::Result<u64> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let path = match &self.backing {
            Backing::File(path) => path,
            Backing::Shared(shared) => {
                // The next free number: taken by creating its entry; when
                // another origin took it, read what it wrote and go on.
                for _ in 0..100 {
                    self.catch_up(&mut entries)?;
                    let entry = LogEntry { seq: entries.len() as u64 + 1, target: target.clone() };
                    let body = serde_json::to_vec(&entry).map_err(io::Error::other)?;
                    if shared.create_small(&format!("{SHARED_DIR}/{}", entry_name(entry.seq)), body)? {
                        entries.push(entry);
                        return Ok(entries.len() as u64);
                    }
                }
                return Err(io::Error::other("purge log: no free sequence number after 100 tries"));
            }
        };
        let entry = LogEntry { seq: entries.len() as u64 + 1, target };
        let mut line = serde_json::to_vec(&entry).map_err(io::Error::other)?;
        line.push(b'\n');
        let mut f = OpenOptions::new().create(true).append(true).open(path)?;
        f.write_all(&line)?;
        f.sync_data()?;
        let seq = entry.seq;
        entries.push(entry);
        Ok(seq)
    }

    /// Entries after `after`, at most a page, and the last sequence number.
    pub fn page(&self, after: u64) -> LogPage {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let from = (after as usize).min(entries.len());
        LogPage { entries: entries[from..].iter().take(PAGE).cloned().collect(), last: entries.len() as u64 }
    }
}

/// On a shared store: every [`FOLLOW_EVERY`], reads what other origins
/// purged and drops this origin's own copies of it (memory and local tier).
pub fn follow(origin: &Arc<Origin>) {
    if !matches!(origin.purge_log.backing, Backing::Shared(_)) {
        return;
    }
    let origin = Arc::downgrade(origin);
    tokio::spawn(async move {
        let mut every = tokio::time::interval(FOLLOW_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let Some(o) = origin.upgrade() else { return };
            let o2 = Arc::clone(&o);
            let done = tokio::task::spawn_blocking(move || -> io::Result<usize> {
                let new = o2.purge_log.follow()?;
                for entry in &new {
                    let (key, prefix) = entry.target.keys();
                    o2.pulls.writes.cancel(&key, prefix);
                    o2.memory.remove(&key, prefix);
                    o2.store.evict_local(&key, prefix)?;
                }
                Ok(new.len())
            })
            .await;
            match done {
                Ok(Ok(0)) => {}
                Ok(Ok(n)) => {
                    o.refresh_store_gauges();
                    tracing::info!(entries = n, "applied purges of other origins");
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "could not follow the shared purge log"),
                Err(e) => tracing::warn!(error = %e, "purge log follower failed"),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_survives_reopen_and_a_torn_tail() {
        let dir = std::env::temp_dir().join(format!("modcdn-purgelog-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).expect("dir");
        let log = PurgeLog::open(&dir).expect("open");
        assert_eq!(log.append(Target::parse(None, Some("example.com/a")).expect("module")).expect("append"), 1);
        assert_eq!(log.append(Target::parse(Some("example.com/b/@v/list"), None).expect("path")).expect("append"), 2);
        assert_eq!(log.page(1).entries.len(), 1);
        assert_eq!(log.page(5).last, 2);
        let mut f = OpenOptions::new().append(true).open(dir.join("purge.log")).expect("open log");
        f.write_all(b"{\"seq\":3,\"tar").expect("torn write");
        let log = PurgeLog::open(&dir).expect("reopen");
        let page = log.page(0);
        assert_eq!((page.entries.len(), page.last), (2, 2));
        assert_eq!(
            log.append(Target::parse(None, Some("example.com/c")).expect("module")).expect("append after cut"),
            3
        );
        assert_eq!(PurgeLog::open(&dir).expect("reopen").page(0).last, 3);
        assert_eq!(page.entries[1].target, Target::parse(Some("example.com/b/@v/list"), None).expect("path"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
