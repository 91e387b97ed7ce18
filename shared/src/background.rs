//! Work that stands behind answers (the durable writes both nodes make
//! after answering): on threads of its own at the lowest CPU priority, so
//! that on a busy core it takes the time requests leave, never the other
//! way round. Past [`MAX_WAITING`] jobs waiting, further jobs go to threads
//! of normal priority, so a core busy for long cannot starve them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

type Job = Box<dyn FnOnce() + Send>;

/// Jobs waiting for a low-priority thread before the next one goes to a
/// thread of normal priority.
pub const MAX_WAITING: usize = 64;

pub struct Background {
    low: mpsc::Sender<Job>,
    normal: mpsc::Sender<Job>,
    waiting: Arc<AtomicUsize>,
}

impl Background {
    /// Starts `threads` threads named `name` at nice 19 (on Linux, a
    /// thread's own) and as many at normal priority for a backlog.
    pub fn start(name: &str, threads: usize) -> std::io::Result<Background> {
        let waiting = Arc::new(AtomicUsize::new(0));
        let low = pool(&format!("{name}-low"), threads, Some(Arc::clone(&waiting)))?;
        let normal = pool(name, threads, None)?;
        Ok(Background { low, normal, waiting })
    }

    /// Runs `job` on a thread of the pool and waits for its result.
    pub async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> std::io::Result<T> + Send + 'static,
    ) -> std::io::Result<T> {
        let (tx, rx) = futures_channel::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(job());
        });
        let sent = if self.waiting.load(Ordering::Relaxed) < MAX_WAITING {
            self.waiting.fetch_add(1, Ordering::Relaxed);
            self.low.send(job).inspect_err(|_| {
                self.waiting.fetch_sub(1, Ordering::Relaxed);
            })
        } else {
            self.normal.send(job)
        };
        sent.map_err(|_| std::io::Error::other("background threads stopped"))?;
        rx.await.map_err(|_| std::io::Error::other("background job dropped"))?
    }
}

/// `threads` threads taking jobs from one queue; with `waiting`, at nice 19
/// and counting down the jobs they take.
fn pool(name: &str, threads: usize, waiting: Option<Arc<AtomicUsize>>) -> std::io::Result<mpsc::Sender<Job>> {
    let (tx, rx) = mpsc::channel::<Job>();
    let rx = Arc::new(Mutex::new(rx));
    for _ in 0..threads.max(1) {
        let (rx, waiting) = (Arc::clone(&rx), waiting.clone());
        std::thread::Builder::new().name(name.to_string()).spawn(move || {
            if waiting.is_some() {
                if let Err(e) = rustix::process::setpriority_process(None, 19) {
                    tracing::debug!(error = %e, "background work keeps normal priority");
                }
            }
            loop {
                let job = match rx.lock().unwrap_or_else(|p| p.into_inner()).recv() {
                    Ok(job) => job,
                    Err(_) => return,
                };
                if let Some(w) = &waiting {
                    w.fetch_sub(1, Ordering::Relaxed);
                }
                job();
            }
        })?;
    }
    Ok(tx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nice() -> std::io::Result<i32> {
        rustix::process::getpriority_process(None).map_err(std::io::Error::from)
    }

    #[test]
    fn jobs_run_at_the_lowest_priority_until_too_many_wait() {
        let pool = Background::start("test", 1).expect("start");
        let block = |f| futures_executor_block_on(f);
        assert_eq!(block(pool.run(nice)).expect("run"), 19);
        // A backlog: the next job runs at the priority the process has.
        pool.waiting.store(MAX_WAITING, Ordering::Relaxed);
        assert_eq!(block(pool.run(nice)).expect("run"), nice().expect("priority"));
    }

    /// Polls `f` to completion on this thread (the jobs run on others).
    fn futures_executor_block_on<T>(f: impl std::future::Future<Output = T>) -> T {
        let mut f = std::pin::pin!(f);
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        loop {
            if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
            std::thread::yield_now();
        }
    }
}
