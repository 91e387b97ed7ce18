//! One upstream fetch per key, however many requests miss at once.
//!
//! The first caller for a key runs the work in its own task (so a client
//! that hangs up does not cancel it for the others); later callers wait for
//! the same result. The entry is removed when the work ends, so a failure
//! reaches every waiter and is not remembered.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use futures::future::{BoxFuture, FutureExt, Shared};

/// `None` when the work did not finish: its task panicked or was cancelled
/// (the runtime shutting down).
type Flight<T> = Shared<BoxFuture<'static, Option<T>>>;

pub struct Group<T: Clone + Send + Sync + 'static> {
    flights: Arc<Mutex<HashMap<String, Flight<T>>>>,
}

impl<T: Clone + Send + Sync + 'static> Default for Group<T> {
    fn default() -> Self {
        Group { flights: Arc::new(Mutex::new(HashMap::new())) }
    }
}

impl<T: Clone + Send + Sync + 'static> Group<T> {
    /// Runs `work` for `key` unless it is already running; returns its result
    /// (`None` if the work panicked or was cancelled) and whether this call
    /// joined a flight led by another.
    pub async fn run<F>(&self, key: &str, work: F) -> (Option<T>, bool)
    where
        F: Future<Output = T> + Send + 'static,
    {
        let (flight, joined) = {
            let mut map = self.flights.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(f) = map.get(key) {
                (f.clone(), true)
            } else {
                let flights = Arc::clone(&self.flights);
                let owned_key = key.to_string();
                // The fetch belongs to the trace of the request that started it.
                let task = tokio::spawn(tracing::Instrument::in_current_span(async move {
                    let out = work.await;
                    // Leave before the result is handed out, so a caller that
                    // arrives after completion starts afresh.
                    flights.lock().unwrap_or_else(|p| p.into_inner()).remove(&owned_key);
                    out
                }));
                let f: Flight<T> = async move {
                    match task.await {
                        Ok(v) => Some(v),
                        Err(e) => {
                            if e.is_panic() {
                                tracing::error!("a coalesced fetch panicked");
                            }
                            None
                        }
                    }
                }
                .boxed()
                .shared();
                map.insert(key.to_string(), f.clone());
                (f, false)
            }
        };
        (flight.await, joined)
    }

    /// Keys in flight now.
    pub fn len(&self) -> usize {
        self.flights.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_share_one_run_and_failures_are_not_kept() {
        let group: Arc<Group<Result<u32, String>>> = Arc::new(Group::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let mut handles = Vec::new();
        for _ in 0..50 {
            let (g, r) = (Arc::clone(&group), Arc::clone(&runs));
            handles.push(tokio::spawn(async move {
                g.run("k", async move {
                    r.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Err::<u32, String>("boom".into())
                })
                .await
            }));
        }
        let mut joined = 0;
        for h in handles {
            let (res, j) = h.await.expect("join");
            assert_eq!(res, Some(Err("boom".into())));
            joined += j as usize;
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(joined, 49);
        assert!(group.is_empty());
        let (res, joined) = group.run("k", async { Ok(7) }).await;
        assert_eq!((res, joined), (Some(Ok(7)), false), "a failure is not remembered");
        let (res, _) = group.run("p", async { panic!("bug") }).await;
        assert_eq!(res, None, "a panicking fetch is an error for its waiters, not a crash");
    }
}
