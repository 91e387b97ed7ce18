//! The durable writes that stand behind answers (sync, rename, meta), on
//! threads of their own at the lowest CPU priority: on a busy core they take
//! the time requests leave, never the other way round. Past
//! [`MAX_QUEUED`] waiting, a write runs on the blocking pool at normal
//! priority instead, so a core busy for long cannot starve them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use parking_lot::Mutex;

type Job = Box<dyn FnOnce() + Send>;

/// Writes waiting for a low-priority thread before one more runs at
/// normal priority.
const MAX_QUEUED: usize = 64;

pub(super) struct Durable {
    jobs: mpsc::Sender<Job>,
    queued: Arc<AtomicUsize>,
}

impl Durable {
    /// Starts `threads` threads at nice 19 (Linux: a thread's own).
    pub(super) fn start(threads: usize) -> std::io::Result<Durable> {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let queued = Arc::new(AtomicUsize::new(0));
        for _ in 0..threads.max(1) {
            let (rx, queued) = (Arc::clone(&rx), Arc::clone(&queued));
            std::thread::Builder::new().name("cache-durable".into()).spawn(move || {
                if let Err(e) = rustix::process::setpriority_process(None, 19) {
                    tracing::debug!(error = %e, "durable writes keep normal priority");
                }
                loop {
                    let Ok(job) = rx.lock().recv() else { return };
                    queued.fetch_sub(1, Ordering::Relaxed);
                    job();
                }
            })?;
        }
        Ok(Durable { jobs: tx, queued })
    }

    /// Runs `write` at low priority (or on the blocking pool past the
    /// queue's bound) and waits for its result.
    pub(super) async fn run<T: Send + 'static>(
        &self,
        write: impl FnOnce() -> std::io::Result<T> + Send + 'static,
    ) -> std::io::Result<T> {
        if self.queued.load(Ordering::Relaxed) >= MAX_QUEUED {
            return tokio::task::spawn_blocking(write).await.map_err(std::io::Error::other)?;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.queued.fetch_add(1, Ordering::Relaxed);
        let job: Job = Box::new(move || {
            let _ = tx.send(write());
        });
        if let Err(mpsc::SendError(job)) = self.jobs.send(job) {
            // No thread left to take it (cannot happen while the store
            // lives): the pool runs it.
            self.queued.fetch_sub(1, Ordering::Relaxed);
            tokio::task::spawn_blocking(job).await.map_err(std::io::Error::other)?;
        }
        rx.await.map_err(|_| std::io::Error::other("durable write dropped"))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_run_at_the_lowest_priority_until_too_many_wait() {
        let durable = Durable::start(1).expect("start");
        let nice = || rustix::process::getpriority_process(None).map_err(std::io::Error::from);
        assert_eq!(durable.run(nice).await.expect("run"), 19);
        // A full queue: the next write runs on the blocking pool, at the
        // priority the process has.
        durable.queued.store(MAX_QUEUED, Ordering::Relaxed);
        let normal = rustix::process::getpriority_process(None).expect("priority");
        assert_eq!(durable.run(nice).await.expect("run"), normal);
    }
}
