//! Work that stands behind answers (the durable writes both nodes make
//! after answering): on threads of its own at the lowest CPU priority, so
//! that on a busy core it takes the time requests leave, never the other
//! way round. A job that has waited [`MAX_AGE`] is taken by a thread of
//! normal priority instead, so a core busy for long cannot starve them.
//!
//! The limit is an age, not a queue length: a burst of misses queues jobs
//! that each wait on the disk (two fsyncs), not on the CPU, and handing
//! those to normal priority put their kernel work on the requests' core.
//! A length limit of 64 did, in a run of 1 000 sequential misses through
//! edge and origin pinned to one core: p50 2.14–2.39 ms per miss against
//! 0.91–1.58 ms with this age limit (alternating runs, same machine).

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

type Job = Box<dyn FnOnce() + Send>;

/// How long a job waits for a low-priority thread before a thread of
/// normal priority takes it.
pub const MAX_AGE: Duration = Duration::from_secs(1);

pub struct Background {
    queue: Arc<Queue>,
}

#[derive(Default)]
struct Queue {
    state: Mutex<State>,
    /// A job was queued (low-priority threads wait on it).
    queued: Condvar,
    /// The queue closed (normal-priority threads otherwise wake on time).
    closed: Condvar,
}

#[derive(Default)]
struct State {
    jobs: VecDeque<(Instant, Job)>,
    closed: bool,
}

impl Background {
    /// Starts `threads` threads named `name` at nice 19 (on Linux, a
    /// thread's own) and as many at normal priority for jobs that waited
    /// too long.
    pub fn start(name: &str, threads: usize) -> std::io::Result<Background> {
        let queue = Arc::new(Queue::default());
        for _ in 0..threads.max(1) {
            let low = Arc::clone(&queue);
            std::thread::Builder::new().name(format!("{name}-low")).spawn(move || {
                if let Err(e) = rustix::process::setpriority_process(None, 19) {
                    tracing::debug!(error = %e, "background work keeps normal priority");
                }
                while let Some(job) = low.next(Duration::ZERO) {
                    job();
                }
            })?;
            let normal = Arc::clone(&queue);
            std::thread::Builder::new().name(name.to_string()).spawn(move || {
                while let Some(job) = normal.next(MAX_AGE) {
                    job();
                }
            })?;
        }
        Ok(Background { queue })
    }

    /// Runs `job` on a thread of the pool and waits for its result.
    pub async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> std::io::Result<T> + Send + 'static,
    ) -> std::io::Result<T> {
        let (tx, rx) = futures_channel::oneshot::channel();
        self.spawn(move || {
            let _ = tx.send(job());
        })?;
        rx.await.map_err(|_| std::io::Error::other("background job dropped"))?
    }

    /// Queues `job` for a thread of the pool, and does not wait for it.
    pub fn spawn(&self, job: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
        {
            let mut state = self.queue.state.lock().unwrap_or_else(|p| p.into_inner());
            if state.closed {
                return Err(std::io::Error::other("background threads stopped"));
            }
            state.jobs.push_back((Instant::now(), Box::new(job)));
        }
        self.queue.queued.notify_one();
        Ok(())
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.queue.state.lock().unwrap_or_else(|p| p.into_inner()).closed = true;
        self.queue.queued.notify_all();
        self.queue.closed.notify_all();
    }
}

impl Queue {
    /// The next job that has waited at least `age`; `None` once closed
    /// (jobs still queued then are dropped, and their callers told).
    fn next(&self, age: Duration) -> Option<Job> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if state.closed {
                return None;
            }
            let waited = state.jobs.front().map(|(at, _)| at.elapsed());
            match waited {
                Some(w) if w >= age => return state.jobs.pop_front().map(|(_, job)| job),
                // Normal priority: wake when the oldest job comes of age.
                Some(w) => {
                    state = self.closed.wait_timeout(state, age - w).unwrap_or_else(|p| p.into_inner()).0;
                }
                None if age.is_zero() => state = self.queued.wait(state).unwrap_or_else(|p| p.into_inner()),
                None => state = self.closed.wait_timeout(state, age).unwrap_or_else(|p| p.into_inner()).0,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nice() -> std::io::Result<i32> {
        rustix::process::getpriority_process(None).map_err(std::io::Error::from)
    }

    #[test]
    fn jobs_run_at_the_lowest_priority_until_one_waits_too_long() {
        let pool = Background::start("test", 1).expect("start");
        assert_eq!(block(pool.run(nice)).expect("run"), 19);
        // The low-priority thread held (a core busy for long): the next
        // job waits its time, then runs at the priority the process has.
        let (hold, held) = std::sync::mpsc::channel::<()>();
        let blocker = pool.run(move || {
            let _ = held.recv();
            Ok(())
        });
        let mut blocker = std::pin::pin!(blocker);
        let waker = std::task::Waker::noop();
        let _ = std::future::Future::poll(blocker.as_mut(), &mut std::task::Context::from_waker(waker));
        let started = Instant::now();
        assert_eq!(block(pool.run(nice)).expect("run"), nice().expect("priority"));
        assert!(started.elapsed() >= MAX_AGE, "taken after {:?}", started.elapsed());
        hold.send(()).expect("release");
        block(blocker).expect("blocker");
    }

    #[test]
    fn a_dropped_pool_stops_its_threads_and_refuses_jobs() {
        let pool = Background::start("test", 1).expect("start");
        let queue = Arc::clone(&pool.queue);
        drop(pool);
        assert!(queue.next(Duration::ZERO).is_none());
    }

    /// Polls `f` to completion on this thread (the jobs run on others).
    fn block<T>(f: impl std::future::Future<Output = T>) -> T {
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
