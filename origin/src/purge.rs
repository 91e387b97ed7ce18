//! The origin's purge log: every purge (takedown, bad upstream data) is
//! removed from the store and appended here with the next sequence number,
//! durably, before it is acknowledged. Edges follow the log with
//! `GET /purgez?after=N` and apply entries idempotently, so an edge that was
//! down catches up when it returns.
//!
//! On disk: `purge.log` in the store directory, one JSON `LogEntry` a line.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use modcdn_shared::purge::{LogEntry, LogPage, Target};
use std::sync::Mutex;

/// Entries in one page of `/purgez`.
const PAGE: usize = 1000;

pub struct PurgeLog {
    path: PathBuf,
    entries: Mutex<Vec<LogEntry>>,
}

impl PurgeLog {
    /// Reads the log (a torn last line from a crash is dropped).
    pub fn open(dir: &Path) -> io::Result<PurgeLog> {
        let path = dir.join("purge.log");
        let mut entries: Vec<LogEntry> = Vec::new();
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(PurgeLog { path, entries: Mutex::new(entries) })
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
        Ok(PurgeLog { path, entries: Mutex::new(entries) })
    }

    /// Appends `target` durably; returns its sequence number.
    pub fn append(&self, target: Target) -> io::Result<u64> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let entry = LogEntry { seq: entries.len() as u64 + 1, target };
        let mut line = serde_json::to_vec(&entry).map_err(io::Error::other)?;
        line.push(b'\n');
        let mut f = OpenOptions::new().create(true).append(true).open(&self.path)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_survives_reopen_and_a_torn_tail() {
        let dir = std::env::temp_dir().join(format!("modcdn-purgelog-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).expect("dir");
        let log = PurgeLog::open(&dir).expect("open");
        assert_eq!(log.append(Target::Module("example.com/a".into())).expect("append"), 1);
        assert_eq!(log.append(Target::Path("example.com/b/@v/list".into())).expect("append"), 2);
        assert_eq!(log.page(1).entries.len(), 1);
        assert_eq!(log.page(5).last, 2);
        let mut f = OpenOptions::new().append(true).open(dir.join("purge.log")).expect("open log");
        f.write_all(b"{\"seq\":3,\"tar").expect("torn write");
        let log = PurgeLog::open(&dir).expect("reopen");
        let page = log.page(0);
        assert_eq!((page.entries.len(), page.last), (2, 2));
        assert_eq!(log.append(Target::Module("example.com/c".into())).expect("append after cut"), 3);
        assert_eq!(PurgeLog::open(&dir).expect("reopen").page(0).last, 3);
        assert_eq!(page.entries[1].target, Target::Path("example.com/b/@v/list".into()));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
