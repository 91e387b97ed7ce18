//! Hot-reloaded membership: the current [`Snapshot`] behind an `ArcSwap`,
//! replaced whole when the file changes (polled) or on SIGHUP. Requests in
//! flight keep the snapshot they started with, so a reload drops none; a
//! file with an error keeps the previous snapshot and logs file, line, key.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use crate::load::LoadView;
use crate::membership::{MembershipError, MembershipFile, Snapshot};

/// What identifies a version of the file: modification time, length and a
/// hash of the content (so an edit within one mtime tick is still seen).
type Fingerprint = (Option<SystemTime>, u64, u64);

fn fingerprint(path: &Path) -> Fingerprint {
    let meta = std::fs::metadata(path).ok();
    let content = std::fs::read(path).unwrap_or_default();
    (meta.as_ref().and_then(|m| m.modified().ok()), meta.map_or(0, |m| m.len()), xxhash_rust::xxh3::xxh3_64(&content))
}

pub struct Membership {
    path: PathBuf,
    current: ArcSwap<Snapshot>,
    view: Arc<LoadView>,
    seen: Mutex<Fingerprint>,
    /// Versions of the file refused (the previous membership kept).
    rejected: AtomicU64,
    /// Versions of the file taken into routing after the first.
    applied: AtomicU64,
}

impl Membership {
    /// Loads `path`; an error here is a start-up error.
    pub fn load(path: &Path) -> Result<Arc<Membership>, MembershipError> {
        let seen = fingerprint(path);
        let snapshot = MembershipFile::snapshot_with(path, None)?;
        let view = Arc::clone(&snapshot.view);
        Ok(Arc::new(Membership {
            path: path.to_path_buf(),
            current: ArcSwap::from_pointee(snapshot),
            view,
            seen: Mutex::new(seen),
            rejected: AtomicU64::new(0),
            applied: AtomicU64::new(0),
        }))
    }

    /// The snapshot to route with now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// The live numbers, shared by every snapshot.
    pub fn view(&self) -> &Arc<LoadView> {
        &self.view
    }

    /// Re-reads the file if it changed (or `force`). `Ok(true)` when a new
    /// snapshot is in place; on error the old one stays.
    pub fn reload(&self, force: bool) -> Result<bool, MembershipError> {
        let now = fingerprint(&self.path);
        // A forced reload of the version already in place (SIGHUP after the
        // poll took the edit) is applied again but is no new version.
        let new_version = {
            let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if !force && *seen == now {
                return Ok(false);
            }
            *seen != now
        };
        // Remember this version even if it is bad, so one bad edit is
        // reported once, not on every poll.
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = now;
        let snapshot = MembershipFile::snapshot_with(&self.path, Some(Arc::clone(&self.view))).inspect_err(|_| {
            self.rejected.fetch_add(1, Ordering::Relaxed);
        })?;
        self.current.store(Arc::new(snapshot));
        if new_version {
            self.applied.fetch_add(1, Ordering::Relaxed);
        }
        Ok(true)
    }

    /// How many versions of the file were refused since start (each kept
    /// the previous membership).
    pub fn rejected_reloads(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// How many new versions of the file were taken into routing since
    /// start.
    pub fn applied_reloads(&self) -> u64 {
        self.applied.load(Ordering::Relaxed)
    }

    /// Watches the file: polls every `interval`, and reloads at once on
    /// SIGHUP. Stops when the handle is dropped.
    pub fn watch(self: &Arc<Self>, interval: Duration) -> std::io::Result<WatchHandle> {
        let hup = Arc::new(AtomicBool::new(false));
        let sig = signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&hup))?;
        let stop = Arc::new(AtomicBool::new(false));
        let (me, stop2) = (Arc::clone(self), Arc::clone(&stop));
        let tick = Duration::from_millis(50).min(interval);
        let thread = std::thread::Builder::new().name("membership-watch".into()).spawn(move || {
            let mut waited = Duration::ZERO;
            while !stop2.load(Ordering::Relaxed) {
                std::thread::sleep(tick);
                waited += tick;
                let forced = hup.swap(false, Ordering::Relaxed);
                if !forced && waited < interval {
                    continue;
                }
                waited = Duration::ZERO;
                match me.reload(forced) {
                    Ok(true) => tracing::info!(file = %me.path.display(), "membership reloaded"),
                    Ok(false) => {}
                    Err(e) => tracing::error!(error = %e, "membership not reloaded; keeping the previous one"),
                }
            }
        })?;
        Ok(WatchHandle { stop, thread: Some(thread), sig })
    }
}

pub struct WatchHandle {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    sig: signal_hook::SigId,
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        signal_hook::low_level::unregister(self.sig);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
