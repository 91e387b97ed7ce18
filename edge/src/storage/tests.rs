//! Unit tests of the cache storage: restarts, streaming readers, failed
//! fills, purges racing fills and promotions, crash leftovers, upgrades.

use super::*;
use pingora::cache::trace::Span;
use pingora::http::ResponseHeader;

fn meta(body_len: usize) -> CacheMeta {
    let mut h = ResponseHeader::build(200, None).expect("header");
    h.insert_header("content-length", body_len.to_string()).expect("content-length");
    let now = SystemTime::now();
    CacheMeta::new(now + std::time::Duration::from_secs(3600), now, 0, 0, h)
}

fn open(dir: &Path, memory: u64) -> (&'static CacheStore, Vec<Stored>) {
    let (store, found) = CacheStore::open(dir, memory, 1 << 10).expect("open");
    (Box::leak(Box::new(store)), found)
}

async fn read_all(mut hit: HitHandler) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(b) = hit.read_body().await? {
        out.extend_from_slice(&b);
    }
    Ok(out)
}

/// Fills `key` with `body` and waits until it is durable on disk.
async fn fill(store: &'static CacheStore, key: &str, body: &[u8]) {
    finish_fill(store, key, body).await;
    store.settled().await;
}

/// Fills `key` with `body`; its durable write is left to run when it will.
async fn finish_fill(store: &'static CacheStore, key: &str, body: &[u8]) {
    let span = Span::inactive().handle();
    let mut miss = store.get_miss_handler(&cache_key(key, None), &meta(body.len()), &span).await.expect("miss handler");
    for chunk in body.chunks(4096) {
        miss.write_body(Bytes::copy_from_slice(chunk), false).await.expect("write");
    }
    miss.finish().await.expect("finish");
    written_out(store, &cache_key(key, None)).await;
}

/// Waits (5 s at most) until the writer of `key`'s fill, if any, has
/// written what it may yet write (all of a finished fill).
async fn written_out(store: &CacheStore, key: &CacheKey) {
    let Some(fill) = store.fills.lock().get(&key.combined()).cloned() else { return };
    let mut wrote = fill.wrote.subscribe();
    while fill.tail.lock().writing {
        let woke = tokio::time::timeout(std::time::Duration::from_secs(5), wrote.changed()).await;
        woke.expect("the fill's writer went on").expect("the fill is there");
    }
}

/// A fill of `key` with a body of `len` bytes (a pattern), its first
/// `first` bytes written.
async fn begun(store: &'static CacheStore, key: &str, len: usize, first: usize) -> (CacheKey, Vec<u8>, MissHandler) {
    let key = cache_key(key, None);
    let body: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    let span = Span::inactive().handle();
    let mut miss = store.get_miss_handler(&key, &meta(len), &span).await.expect("miss");
    miss.write_body(Bytes::copy_from_slice(&body[..first]), false).await.expect("write");
    (key, body, miss)
}

/// A store in `dir` whose every write fails (its temp directory gone), a
/// fill of `key` in it of `len` bytes (the lane's, `relaying`, or
/// Pingora's), and its own reader.
async fn failing_fill(
    dir: &Path,
    key: &CacheKey,
    len: usize,
    relaying: bool,
) -> (&'static CacheStore, fill::Filler, HitHandler) {
    let (store, _) = open(dir, 0);
    std::fs::remove_dir_all(&store.tmp).expect("no temp directory: every write fails");
    let fill = store.begin_fill(key, &meta(len));
    let fill = if relaying { fill.relaying() } else { fill };
    let tag = fill.streaming_write_tag().map(<[u8]>::to_vec);
    let span = Span::inactive().handle();
    let (_, own) = store.lookup_streaming_write(key, tag.as_deref(), &span).await.expect("lookup").expect("own reader");
    (store, fill, own)
}

/// A store whose finished fills wait an hour for their durable write
/// unless hurried, and at most `pending_max` of them holding a descriptor,
/// 1 MiB held whole.
fn open_waiting(dir: &Path, pending_max: usize) -> &'static CacheStore {
    open_waiting_with(dir, |store| store.pending_max = pending_max)
}

/// As [`open_waiting`], with 1 024 waiting that hold a descriptor, and
/// then `set`.
fn open_waiting_with(dir: &Path, set: impl FnOnce(&mut CacheStore)) -> &'static CacheStore {
    let (mut store, _) = CacheStore::open(dir, 0, 1 << 10).expect("open");
    store.flush_delay = std::time::Duration::from_secs(3600);
    store.pending_max = 1024;
    store.held_max = 1 << 20;
    set(&mut store);
    Box::leak(Box::new(store))
}

/// Waits (10 s at most) until `n` finished fills wait for their durable write.
async fn pending(store: &CacheStore, n: usize) -> bool {
    let mut publishing = store.publishing.subscribe();
    let waited = tokio::time::timeout(std::time::Duration::from_secs(10), publishing.wait_for(|p| *p == n)).await;
    waited.is_ok()
}

/// Hands the cache over (as an exit does), opens it again, and checks that
/// it holds one entry: `key`, whose body is `body`.
async fn only_entry_after_a_restart(store: &CacheStore, dir: &Path, key: &CacheKey, body: &[u8]) {
    store.release();
    let (again, found) = open(dir, 0);
    assert_eq!(found.len(), 1);
    let span = Span::inactive().handle();
    let (_, hit) = again.lookup(key, &span).await.expect("lookup").expect("hit after a restart");
    assert_eq!(read_all(hit).await.expect("read"), body);
}

fn files_in(dir: &Path) -> usize {
    std::fs::read_dir(dir).expect("dir").count()
}

#[tokio::test]
async fn a_finished_fill_waits_for_the_kernels_writeback_before_its_durable_write_and_is_served_meanwhile() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let span = Span::inactive().handle();
    let store = open_waiting(tmp.path(), 16);
    let primary = "example.com/w/@v/v1.0.0.zip";
    let (key, body): (_, Vec<u8>) = (cache_key(primary, None), (0..100_000u32).map(|i| (i % 251) as u8).collect());
    finish_fill(store, primary, &body).await;
    // Nothing synced, renamed into place or indexed yet.
    let mut publishing = store.publishing.subscribe();
    let wait = tokio::time::timeout(std::time::Duration::from_secs(1), publishing.wait_for(|n| *n == 0));
    assert!(wait.await.is_err(), "the durable write waits for the flush delay");
    assert!(store.index.lock().by_hash.is_empty());
    assert_eq!(files_in(&store.shard(&key.combined())), 0);
    // It counts as held all the same.
    assert_eq!(store.disk_usage(), (1, body.len() as u64));
    assert_eq!(store.keys_with_prefix("example.com/w/@"), [primary]);
    // Meanwhile it is served whole, from a mapping the lane finds next.
    let (_, hit) = store.lookup(&key, &span).await.expect("lookup").expect("hit");
    assert_eq!(read_all(hit).await.expect("read"), body);
    assert!(store.memory_get(primary).is_some_and(|o| o.body.mapped.is_some()), "in the mapped tier");
    // Hurried (as at shutdown), it is made durable now, and a restart finds it.
    store.settled().await;
    assert_eq!(store.disk_usage(), (1, body.len() as u64));
    only_entry_after_a_restart(store, tmp.path(), &key, &body[..]).await;
}

#[tokio::test]
async fn an_eviction_of_a_fill_waiting_for_its_durable_write_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let span = Span::inactive().handle();
    let store = open_waiting(tmp.path(), 16);
    let primary = "example.com/x/@v/v1.0.0.zip";
    let key = cache_key(primary, None);
    finish_fill(store, primary, &[3; 100_000]).await;
    let (_, hit) = store.lookup(&key, &span).await.expect("lookup").expect("hit");
    drop(hit);
    assert!(store.memory_get(primary).is_some(), "mapped");
    let target = key.to_compact();
    let evicted = store.purge(PurgeTarget::Active(&target), PurgeType::Eviction, &span).await.expect("evict");
    assert!(matches!(evicted, PurgeOutcome::Purged(_)));
    assert!(store.memory_get(primary).is_none(), "its mapping went with it");
    assert!(store.lookup(&key, &span).await.expect("lookup").is_none());
    store.settled().await;
    assert_eq!(store.disk_usage(), (0, 0));
    assert_eq!(files_in(&store.shard(&key.combined())), 0);
    assert_eq!(files_in(&store.tmp), 1, "only the lock file is left");
}

#[tokio::test]
async fn a_fill_whose_file_is_cut_short_while_it_waits_is_dropped_not_served_or_published() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let span = Span::inactive().handle();
    let store = open_waiting(tmp.path(), 16);
    let primary = "example.com/cut/@v/v1.0.0.zip";
    let key = cache_key(primary, None);
    finish_fill(store, primary, &[5; 100_000]).await;
    let part = store.fills.lock().get(&key.combined()).expect("waiting").part.clone();
    std::fs::OpenOptions::new().write(true).open(&part).expect("part").set_len(4096).expect("cut");
    assert!(store.lookup(&key, &span).await.expect("lookup").is_none(), "a miss, not 4 KiB of 100 000");
    assert!(store.memory_get(primary).is_none());
    store.settled().await;
    assert_eq!(store.disk_usage(), (0, 0));
    assert_eq!(files_in(&store.shard(&key.combined())), 0);
    assert!(!part.exists());
}

#[tokio::test]
async fn a_revalidation_of_a_fill_waiting_for_its_durable_write_is_kept() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let span = Span::inactive().handle();
    let store = open_waiting(tmp.path(), 16);
    let primary = "example.com/r/@v/list";
    let key = cache_key(primary, None);
    finish_fill(store, primary, b"v1.0.0\n").await;
    let until = SystemTime::now() + std::time::Duration::from_secs(7200);
    let header = meta(7).response_header_copy();
    let revalidated = CacheMeta::new(until, SystemTime::now(), 0, 0, header);
    assert!(store.update_meta(&key, &revalidated, &span).await.expect("update"), "the waiting fill's meta is updated");
    store.release();
    let (again, found) = open(tmp.path(), 0);
    assert_eq!(found.len(), 1);
    assert_eq!(unix_nanos(found[0].fresh_until) / 1_000_000_000, unix_nanos(until) / 1_000_000_000);
    let (_, hit) = again.lookup(&key, &span).await.expect("lookup").expect("hit");
    assert_eq!(read_all(hit).await.expect("read"), b"v1.0.0\n", "its body kept with the new meta");
}

#[tokio::test]
async fn fills_are_made_durable_at_once_when_too_many_wait_or_the_edge_shuts_down() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = open_waiting(tmp.path(), 1);
    finish_fill(store, "example.com/p/@v/v1.0.0.zip", &[1; 100_000]).await;
    assert!(pending(store, 1).await);
    // One may wait; the second goes to disk at once, and takes the one
    // waiting (an hour from its durable write) with it, rather than one
    // fill per request past the bound: in a steady stream of cold misses
    // (20 000 new keys over 10 connections) 2 136-2 756 against 1 334-1 528
    // misses/s.
    finish_fill(store, "example.com/p/@v/v1.1.0.zip", &[2; 100_000]).await;
    assert!(pending(store, 0).await, "both fills are made durable without waiting");
    assert_eq!(store.index.lock().by_key.len(), 2);
    assert_eq!(store.keys_with_prefix("example.com/p/@").len(), 2, "both are held");
    // Shutting down: any fill from then on goes at once.
    tokio::time::timeout(std::time::Duration::from_secs(10), store.drain()).await.expect("drained");
    finish_fill(store, "example.com/p/@v/v1.2.0.zip", &[3; 100_000]).await;
    assert!(pending(store, 0).await, "a fill after the drain began is made durable without waiting");
    assert_eq!(store.disk_usage(), (3, 300_000));
}

#[tokio::test]
async fn a_body_smaller_than_a_page_is_held_whole_no_temp_file_then_written_inside_its_meta() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let span = Span::inactive().handle();
    let store = open_waiting(tmp.path(), 16);
    let primary = "example.com/small/@v/v1.0.0.info";
    let body = br#"{"Version":"v1.0.0","Time":"2026-01-02T03:04:05Z"}"#;
    let key = cache_key(primary, None);
    finish_fill(store, primary, body).await;
    assert_eq!(files_in(&store.tmp), 1, "no temp file: only the lock file");
    let (_, hit) = store.lookup(&key, &span).await.expect("lookup").expect("the waiting fill");
    assert_eq!(read_all(hit).await.expect("read"), body);
    store.settled().await;
    assert_eq!(files_in(&store.shard(&key.combined())), 1, "its meta, the body inside, written in place");
    assert_eq!(files_in(&store.tmp), 1);
    only_entry_after_a_restart(store, tmp.path(), &key, &body[..]).await;
}

#[tokio::test]
async fn a_body_of_known_small_length_is_held_whole_no_temp_file_then_written_into_its_place() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let span = Span::inactive().handle();
    let store = open_waiting(tmp.path(), 16);
    let primary = "example.com/small/@v/v1.0.0.zip";
    let body: Vec<u8> = (0..16_384u32).map(|i| (i % 251) as u8).collect();
    let key = cache_key(primary, None);
    finish_fill(store, primary, &body).await;
    assert_eq!(files_in(&store.tmp), 1, "no temp file: only the lock file");
    let (_, hit) = store.lookup(&key, &span).await.expect("lookup").expect("the waiting fill");
    assert_eq!(read_all(hit).await.expect("read"), body);
    store.settled().await;
    assert_eq!(files_in(&store.shard(&key.combined())), 2, "its body file and its meta, in place");
    assert_eq!(std::fs::read(body_file(tmp.path(), &key.combined())).expect("body file"), body);
    assert_eq!(files_in(&store.tmp), 1);
    only_entry_after_a_restart(store, tmp.path(), &key, &body).await;
    // One whose length was not told, or was more than it sent, is
    // written to a temp file as it comes.
    let store = open_waiting(tmp.path(), 16);
    let mut miss = store
        .get_miss_handler(&cache_key("example.com/small/@v/v1.1.0.zip", None), &meta(16_384), &span)
        .await
        .expect("miss handler");
    for chunk in body.chunks(4096).chain([&[7u8; FILL_MEMORY_MAX as usize][..]]) {
        miss.write_body(Bytes::copy_from_slice(chunk), false).await.expect("write");
    }
    assert_eq!(files_in(&store.tmp), 2, "the lock file and this fill's temp file");
}

#[tokio::test]
async fn fills_held_whole_are_bounded_in_bytes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = open_waiting(tmp.path(), 1024);
    // Each counts its body, its head and what a fill holds besides:
    // fifteen of 64 KiB are under 1 MiB, sixteen over.
    let body = vec![9u8; FILL_MEMORY_MAX as usize];
    for v in 0..15 {
        finish_fill(store, &format!("example.com/b/@v/v1.{v}.0.zip"), &body).await;
    }
    assert!(pending(store, 15).await, "none was hurried");
    // The sixteenth is past the bound: every one waiting goes to disk with
    // it, and those after it wait again.
    for v in 15..20 {
        finish_fill(store, &format!("example.com/b/@v/v1.{v}.0.zip"), &body).await;
    }
    assert!(pending(store, 4).await, "the sixteenth hurried all before it");
    let each = FILL_MEMORY_MAX + HELD_FILL_BYTES;
    assert!((4 * each..5 * each).contains(&*store.held_bytes.borrow()));
}

#[tokio::test]
async fn past_the_bytes_held_a_fill_waits_for_them_to_fall_under_the_bound_not_for_every_fill_before_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let gate = Arc::new((Mutex::new(0), parking_lot::Condvar::new()));
    let store = open_waiting_with(tmp.path(), |store| {
        store.batch_max = 2;
        store.batch_gate = Some(gate.clone());
    });
    let open_gate = |batches: usize| {
        *gate.0.lock() += batches;
        gate.1.notify_all();
    };
    let body = vec![9u8; FILL_MEMORY_MAX as usize];
    let key = |v: usize| format!("example.com/g/@v/v1.{v}.0.zip");
    for v in 0..15 {
        finish_fill(store, &key(v), &body).await;
    }
    assert!(pending(store, 15).await, "none was hurried");
    // The sixteenth is past the bound: all sixteen are hurried to disk,
    // two per batch, and one batch takes the bytes held under the bound.
    open_gate(1);
    let last = key(15);
    let past = tokio::time::timeout(std::time::Duration::from_secs(5), finish_fill(store, &last, &body));
    past.await.expect("the fill past the bound finished after one batch, not eight");
    assert!(pending(store, 14).await, "the other batches wait at the gate");
    open_gate(7);
    assert!(pending(store, 0).await, "all made durable");
    assert_eq!(store.disk_usage(), (16, 16 * FILL_MEMORY_MAX));
}

#[tokio::test]
async fn fills_held_whole_count_against_a_bound_of_their_own_not_the_descriptors() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = open_waiting(tmp.path(), 2);
    // Small bodies hold no descriptor: many more than two may wait.
    for v in 0..100 {
        finish_fill(store, &format!("example.com/held/@v/v1.{v}.0.info"), b"{}").await;
    }
    assert!(pending(store, 100).await, "none was hurried");
    assert!(store.index.lock().by_key.is_empty());
    // Bodies in files count against the descriptors' bound as before.
    for v in 0..3 {
        finish_fill(store, &format!("example.com/held/@v/v1.{v}.0.zip"), &[1; 100_000]).await;
    }
    assert!(pending(store, 0).await, "the third file hurried all before it");
    assert_eq!(store.disk_usage().0, 103);
}

#[tokio::test]
async fn fills_past_the_bound_finish_only_once_under_it_so_what_they_hold_stays_bounded() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = open_waiting(tmp.path(), 2);
    for v in 0..20 {
        let key = format!("example.com/b/@v/v1.{v}.0.zip");
        finish_fill(store, &key, &[v as u8; 100_000]).await;
        // At most two wait for the flush delay; with one past them, those
        // are made durable (and their descriptors closed) by the time its
        // request ends.
        let waiting = *store.holding.borrow();
        assert!(waiting <= 2, "after fill {v}, {waiting} fills hold a descriptor");
    }
    assert!(files_in(&store.tmp) <= 3, "the lock file and at most two waiting fills");
    store.settled().await;
    assert_eq!(store.disk_usage(), (20, 2_000_000));
}

#[tokio::test]
async fn fills_made_durable_together_each_survive_a_restart_and_one_that_fails_fails_alone() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let span = Span::inactive().handle();
    let store = open_waiting(tmp.path(), 64);
    // Odd ones in temp files, even ones held whole.
    let body = |v: usize| -> Vec<u8> { (0..5_000 + v % 2 * 70_000 + v * 100).map(|i| (i * 7 + v) as u8).collect() };
    let key = |v: usize| format!("example.com/t/@v/v1.{v}.0.zip");
    for v in 0..40 {
        finish_fill(store, &key(v), &body(v)).await;
    }
    // One fill's file is gone before its durable write.
    let lost = store.fills.lock().get(&cache_key(&key(7), None).combined()).expect("waiting").part.clone();
    std::fs::remove_file(&lost).expect("remove");
    // All hurried at once: the writer takes them in batches.
    store.settled().await;
    assert_eq!(store.disk_usage().0, 39);
    assert_eq!(files_in(&store.tmp), 1, "only the lock file is left");
    store.release();
    let (again, found) = open(tmp.path(), 0);
    assert_eq!(found.len(), 39);
    for v in 0..40 {
        let hit = again.lookup(&cache_key(&key(v), None), &span).await.expect("lookup");
        match hit {
            Some((_, hit)) => assert_eq!(read_all(hit).await.expect("read"), body(v), "{}", key(v)),
            None => assert_eq!(v, 7, "{} lost", key(v)),
        }
    }
}

#[tokio::test]
async fn two_fills_of_one_key_made_durable_together_leave_the_second_alone_on_disk() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = open_waiting(tmp.path(), 16);
    let primary = "example.com/twice/@v/list";
    finish_fill(store, primary, b"v1.0.0\n").await;
    finish_fill(store, primary, b"v1.0.0\nv1.1.0\n").await;
    store.settled().await;
    let key = cache_key(primary, None);
    assert_eq!(files_in(&store.shard(&key.combined())), 1, "one meta, with the second body");
    only_entry_after_a_restart(store, tmp.path(), &key, b"v1.0.0\nv1.1.0\n").await;
}

#[tokio::test]
async fn a_fill_in_a_fresh_cache_creates_no_directory() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (store, _) = open(tmp.path(), 1 << 20);
    let dirs = |store: &CacheStore| std::fs::read_dir(store.dir.join("objects")).expect("objects").count();
    let shards = dirs(store);
    assert_eq!(shards, 256, "every shard is there from the start");
    let key = "example.com/fresh/@v/v1.0.0.zip";
    assert!(!store.shard(&cache_key(key, None).combined()).read_dir().expect("its shard").any(|_| true));
    fill(store, key, &[7; 100_000]).await;
    assert_eq!(dirs(store), shards);
    assert!(store.shard(&cache_key(key, None).combined()).read_dir().expect("its shard").count() == 2, "meta and body");
}

#[tokio::test]
async fn fills_survive_a_restart_from_both_tiers() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_path_buf();
    let span = Span::inactive().handle();
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let (store, _) = open(&dir, 1 << 20);
    fill(store, "example.com/a/@v/v1.0.0.zip", &big).await;
    fill(store, "example.com/a/@v/v1.0.0.mod", b"module example.com/a\n").await;
    for (key, body) in
        [("example.com/a/@v/v1.0.0.zip", &big[..]), ("example.com/a/@v/v1.0.0.mod", b"module example.com/a\n")]
    {
        let (_, hit) = store.lookup(&cache_key(key, None), &span).await.expect("lookup").expect("hit");
        assert_eq!(read_all(hit).await.expect("read"), body, "{key}");
    }
    assert!(store.memory_get("example.com/a/@v/v1.0.0.mod").is_some(), "small bodies go to the memory tier");
    assert!(store.memory.get("example.com/a/@v/v1.0.0.zip").is_none(), "large ones do not");
    let mapped = store.memory_get("example.com/a/@v/v1.0.0.zip").expect("read once, a large one is mapped");
    assert!(mapped.body.mapped.is_some() && mapped.body.bytes[..] == big[..]);

    let (again, found) = open(&dir, 1 << 20);
    assert_eq!(found.len(), 2);
    let (_, mut hit) =
        again.lookup(&cache_key("example.com/a/@v/v1.0.0.zip", None), &span).await.expect("lookup").expect("hit");
    assert!(hit.can_seek());
    hit.seek(1000, Some(2000)).expect("seek");
    assert_eq!(read_all(hit).await.expect("read"), &big[1000..2000]);
    assert_eq!(
        again.keys_with_prefix("example.com/a/@"),
        ["example.com/a/@v/v1.0.0.mod", "example.com/a/@v/v1.0.0.zip"]
    );
}

#[tokio::test]
async fn a_purge_reaches_what_only_the_memory_tier_still_holds() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let span = Span::inactive().handle();
    let (store, _) = open(tmp.path(), 1 << 20);
    let key = "example.com/d/@v/v1.0.0.mod";
    fill(store, key, b"module example.com/d\n").await;
    // Evicted from disk by the budget: the memory tier keeps serving it.
    let target = cache_key(key, None).to_compact();
    store.purge(PurgeTarget::Active(&target), PurgeType::Eviction, &span).await.expect("evict");
    assert!(store.memory_get(key).is_some());
    assert!(store.keys_with_prefix("example.com/d/@").is_empty());
    // A module purge must still take it out.
    assert_eq!(store.purge_prefix("example.com/d/@").await.expect("purge"), 1);
    assert!(store.memory_get(key).is_none());
    assert!(store.lookup(&cache_key(key, None), &span).await.expect("lookup").is_none());
}

#[tokio::test]
async fn readers_follow_a_fill_and_a_failed_fill_is_never_served() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_path_buf();
    let span = Span::inactive().handle();
    let (store, _) = open(&dir, 0);
    let key = cache_key("example.com/b/@v/v1.0.0.zip", None);
    let mut miss = store.get_miss_handler(&key, &meta(8), &span).await.expect("miss");
    miss.write_body(Bytes::from_static(b"abcd"), false).await.expect("write");
    let (_, mut reader) = store.lookup(&key, &span).await.expect("lookup").expect("partial hit");
    assert!(!reader.can_seek());
    assert_eq!(reader.read_body().await.expect("read").as_deref(), Some(&b"abcd"[..]));
    let late = tokio::spawn(async move { read_all(reader).await });
    miss.write_body(Bytes::from_static(b"efgh"), true).await.expect("write");
    miss.finish().await.expect("finish");
    assert_eq!(late.await.expect("join").expect("read"), b"efgh");
    store.settled().await;

    // A fill dropped half way: its reader gets an error, nothing stays.
    let key2 = cache_key("example.com/b/@v/v2.0.0.zip", None);
    let mut miss = store.get_miss_handler(&key2, &meta(8), &span).await.expect("miss");
    miss.write_body(Bytes::from_static(b"half"), false).await.expect("write");
    let (_, reader) = store.lookup(&key2, &span).await.expect("lookup").expect("partial hit");
    drop(miss);
    assert!(read_all(reader).await.is_err(), "a reader of a failed fill must not see a short body as complete");
    assert!(store.lookup(&key2, &span).await.expect("lookup").is_none());
    let (_, found) = open(&dir, 0);
    assert_eq!(found.len(), 1, "only the finished fill is on disk");
}

#[tokio::test]
async fn a_follower_behind_a_finished_fill_reads_its_mapping_not_the_file() {
    // A stampede's followers fall behind the fill's recent chunks (one
    // core serves 200 clients) and read most of the body after the fill
    // finished: read from the file, each chunk cost a copy more (and a
    // zeroed buffer) than a hit of the published body, which is mapped.
    let tmp = tempfile::tempdir().expect("tempdir");
    let span = Span::inactive().handle();
    let store = open_waiting(tmp.path(), 1024);
    let begun_with = WRITE_MIN as usize;
    let (key, body, mut miss) =
        begun(store, "example.com/stampede/@v/v1.0.0.zip", 2 * RECENT_MAX + 12_345, begun_with).await;
    written_out(store, &key).await;
    let (_, mut follower) = store.lookup(&key, &span).await.expect("lookup").expect("a follower");
    // (Joined after the first chunk was written: it reads it from the file,
    // mapped while written, as its blocks and length were taken at once.)
    let chunk = follower.read_body().await.expect("read").expect("the first chunk");
    assert_eq!(mappings_of(&key.combined()), 1, "the follower reads the fill being written from its mapping");
    let first = chunk.to_vec();
    drop(chunk);
    for chunk in body[begun_with..].chunks(64 << 10) {
        miss.write_body(Bytes::copy_from_slice(chunk), false).await.expect("write");
    }
    miss.finish().await.expect("finish");
    written_out(store, &key).await;
    assert!(pending(store, 1).await, "the fill waits for its durable write");
    let next = follower.read_body().await.expect("read").expect("the next chunk").to_vec();
    assert_eq!(mappings_of(&key.combined()), 1, "the follower reads the finished fill's mapping, the same one");
    // A lookup of the finished fill meanwhile shares that mapping.
    let (_, hit) = store.lookup(&key, &span).await.expect("lookup").expect("a hit");
    assert_eq!(mappings_of(&key.combined()), 1, "one mapping of the fill");
    let read = [first, next, read_all(follower).await.expect("read the rest")].concat();
    assert!(read == body, "the body whole and in order");
    assert!(read_all(hit).await.expect("read") == body);
    // Evicted while it waits for its durable write (an hour here): its
    // pages go with its last reader, not when that write is due.
    let target = key.to_compact();
    let evicted = store.purge(PurgeTarget::Active(&target), PurgeType::Eviction, &span).await.expect("evict");
    assert!(matches!(evicted, PurgeOutcome::Purged(_)));
    assert_eq!(mappings_of(&key.combined()), 0, "unmapped, its readers gone");
}

#[tokio::test]
async fn a_fill_takes_the_blocks_of_its_whole_body_at_its_first_write() {
    // Taken a page at a time by each write (ext4's delayed allocation),
    // they cost the event loop more than the copy.
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir().expect("tempdir");
    let span = Span::inactive().handle();
    let store = open_waiting(tmp.path(), 1024);
    let (key, body, mut miss) = begun(store, "example.com/large/@v/v1.0.0.zip", (4 << 20) + 777, 128 << 10).await;
    let part = store.fills.lock().values().next().expect("the fill").part.clone();
    let file = std::fs::metadata(&part).expect("its temp file");
    assert_eq!(file.len(), body.len() as u64, "the file as long as the body at once");
    assert!(file.blocks() * 512 >= body.len() as u64, "blocks for the whole body: {} bytes", file.blocks() * 512);
    for chunk in body[128 << 10..].chunks(128 << 10) {
        miss.write_body(Bytes::copy_from_slice(chunk), false).await.expect("write");
    }
    miss.finish().await.expect("finish");
    let (_, hit) = store.lookup(&key, &span).await.expect("lookup").expect("a hit");
    assert!(read_all(hit).await.expect("read") == body, "the body whole");
    store.settled().await;
    let (_, hit) = store.lookup(&key, &span).await.expect("lookup").expect("a hit");
    assert!(read_all(hit).await.expect("read") == body, "the body whole, published");
}

#[tokio::test]
async fn a_purge_during_a_fill_wins_and_crash_leftovers_are_removed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_path_buf();
    let span = Span::inactive().handle();
    let (store, _) = open(&dir, 1 << 20);
    let key = cache_key("example.com/c/@v/list", None);
    let mut miss = store.get_miss_handler(&key, &meta(7), &span).await.expect("miss");
    miss.write_body(Bytes::from_static(b"v1.0.0\n"), true).await.expect("write");
    assert!(store.purge_key("example.com/c/@v/list").await.expect("purge"));
    assert!(miss.finish().await.is_err(), "the purged fill is not published");
    assert!(store.lookup(&key, &span).await.expect("lookup").is_none());

    let (info, zip) = ("example.com/c/@v/v1.0.0.info", "example.com/c/@v/v1.0.0.zip");
    fill(store, info, br#"{"Version":"v1.0.0"}"#).await;
    fill(store, zip, &[9; 5_000]).await;
    let shard_of = |key: &str| dir.join("objects").join(&cache_key(key, None).combined()[..2]);
    let shard = shard_of(zip);
    // Leftovers: a torn meta, a body without meta, a stray temp file.
    std::fs::write(shard.join("ffff.meta"), b"MODCDN-EDGE-M01\ntorn").expect("torn meta");
    std::fs::write(shard.join("eeee.1.body"), b"orphan").expect("orphan body");
    std::fs::write(store.tmp.join("dddd.2.part"), b"partial").expect("temp");
    // A body cut short behind a good meta.
    std::fs::write(body_file(&dir, &cache_key(zip, None).combined()), b"PK").expect("cut body");
    // A meta holding its body, whole in length but one byte of the body
    // lost (as a page a crash did not write).
    let meta = store.meta_path(&cache_key(info, None).combined());
    let mut bytes = std::fs::read(&meta).expect("meta");
    let at = bytes.len() - 6;
    bytes[at] ^= 0xff;
    std::fs::write(&meta, &bytes).expect("damaged meta");
    // As after a crash: no process holds the cache any more.
    store.release();
    let (again, found) = open(&dir, 1 << 20);
    assert!(found.is_empty(), "{found:?}");
    for key in [info, zip] {
        assert!(again.lookup(&cache_key(key, None), &span).await.expect("lookup").is_none(), "{key}");
        let left: Vec<_> = std::fs::read_dir(shard_of(key)).expect("shard").flatten().map(|e| e.file_name()).collect();
        assert!(left.is_empty(), "{key}: {left:?}");
    }
    // Only the new process's own temp directory is left.
    assert_eq!(std::fs::read_dir(dir.join("tmp")).expect("tmp").count(), 1);
}

#[tokio::test]
async fn a_module_purge_reaches_a_fill_not_yet_on_disk() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let span = Span::inactive().handle();
    let (store, _) = open(tmp.path(), 0);
    let key = cache_key("example.com/e/@v/v1.0.0.zip", None);
    let mut miss = store.get_miss_handler(&key, &meta(4), &span).await.expect("miss");
    miss.write_body(Bytes::from_static(b"abcd"), true).await.expect("write");
    assert_eq!(store.purge_prefix("example.com/e/@").await.expect("purge"), 1);
    assert!(miss.finish().await.is_err(), "the purged fill is not published");
    store.settled().await;
    assert!(store.lookup(&key, &span).await.expect("lookup").is_none());
}

#[tokio::test]
async fn a_finished_fill_is_served_whole_before_and_after_it_is_durable() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let span = Span::inactive().handle();
    let (store, _) = open(tmp.path(), 0);
    let key = cache_key("example.com/f/@v/v1.0.0.zip", None);
    let mut miss = store.get_miss_handler(&key, &meta(8), &span).await.expect("miss");
    miss.write_body(Bytes::from_static(b"abcdefgh"), true).await.expect("write");
    let (_, reader) = store.lookup(&key, &span).await.expect("lookup").expect("partial hit");
    miss.finish().await.expect("finish");
    // Whatever the durable write is doing now, a reader gets the whole body.
    let (_, now) = store.lookup(&key, &span).await.expect("lookup").expect("hit");
    assert_eq!(read_all(reader).await.expect("read"), b"abcdefgh");
    assert_eq!(read_all(now).await.expect("read"), b"abcdefgh");
    store.settled().await;
    let (_, later) = store.lookup(&key, &span).await.expect("lookup").expect("hit");
    assert!(later.can_seek(), "a durable entry is read from its file");
    assert_eq!(read_all(later).await.expect("read"), b"abcdefgh");
    assert_eq!(store.keys_with_prefix("example.com/f/@"), ["example.com/f/@v/v1.0.0.zip"]);
}

#[tokio::test]
async fn a_miss_is_answered_without_waiting_so_no_fill_begins_unseen() {
    // Pingora takes the cache lock right after a lookup misses. A lookup
    // that waited on a disk read while a fill began (and released the lock)
    // would make a second writer, and a second origin request: a key this
    // cache never stored misses at once, and one it stored and lost finds
    // the fill that began meanwhile.
    let tmp = tempfile::tempdir().expect("tempdir");
    let span = Span::inactive().handle();
    let (store, _) = open(tmp.path(), 0);
    let key = cache_key("example.com/h/@v/v1.0.0.zip", None);
    let mut lookup = Box::pin(store.lookup(&key, &span));
    assert!(matches!(futures::poll!(&mut lookup), std::task::Poll::Ready(Ok(None))), "a miss without waiting");
    let mut miss = store.get_miss_handler(&key, &meta(4), &span).await.expect("miss");
    let (_, reader) = store.lookup(&key, &span).await.expect("lookup").expect("the fill");
    miss.write_body(Bytes::from_static(b"abcd"), true).await.expect("write");
    miss.finish().await.expect("finish");
    assert_eq!(read_all(reader).await.expect("read"), b"abcd");
    store.settled().await;
}

#[test]
fn meta_file_round_trips_and_rejects_damage() {
    let m = MetaFile {
        generation: 7,
        body_len: 42,
        primary: "example.com/a/@v/v1.0.0.zip".into(),
        parts: Parts::of(&meta(42)),
        inline: None,
    };
    let body = Bytes::from_static(b"{\"Version\":\"v1.0.0\"}");
    let held = MetaFile { body_len: body.len() as u64, inline: Some(body.clone()), ..m.clone() };
    for m in [m, held] {
        let enc = m.encode();
        let back = MetaFile::decode(&enc).expect("decodes");
        assert_eq!((back.generation, back.body_len, back.primary.as_str()), (7, m.body_len, m.primary.as_str()));
        assert_eq!(back.inline, m.inline);
        assert_eq!(back.encode(), enc, "the same head, times and body");
        for cut in 0..enc.len() {
            assert!(MetaFile::decode(&enc[..cut]).is_none(), "truncated at {cut}");
        }
        let mut extra = enc.clone();
        extra.push(0);
        assert!(MetaFile::decode(&extra).is_none());
        if m.inline.is_some() {
            for at in 0..enc.len() {
                let mut damaged = enc.clone();
                damaged[at] ^= 1;
                assert!(MetaFile::decode(&damaged).is_none(), "a bit flipped at {at}");
            }
        }
    }
}

#[tokio::test]
async fn entries_an_earlier_version_wrote_with_pingoras_meta_are_served_after_an_upgrade() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let span = Span::inactive().handle();
    let primary = "example.com/old/@v/v1.0.0.zip";
    let key = cache_key(primary, None);
    let hash = key.combined();
    let shard = tmp.path().join("objects").join(&hash[..2]);
    std::fs::create_dir_all(&shard).expect("shard");
    let body = vec![5u8; 9_000];
    std::fs::write(shard.join(format!("{hash}.3.body")), &body).expect("body");
    let (meta0, meta1) = meta(body.len()).serialize().expect("serialize");
    let mut file = MAGIC_PINGORA.to_vec();
    file.extend_from_slice(&3u64.to_le_bytes());
    file.extend_from_slice(&(body.len() as u64).to_le_bytes());
    for part in [primary.as_bytes(), &meta0, &meta1] {
        file.extend_from_slice(&(part.len() as u32).to_le_bytes());
        file.extend_from_slice(part);
    }
    std::fs::write(shard.join(format!("{hash}.meta")), &file).expect("meta");
    let (store, found) = open(tmp.path(), 0);
    assert_eq!(found.len(), 1, "kept at start");
    let (meta, hit) = store.lookup(&key, &span).await.expect("lookup").expect("hit");
    assert_eq!(meta.response_header().headers["content-length"], "9000");
    assert_eq!(read_all(hit).await.expect("read"), body);
}

#[tokio::test]
async fn a_large_answer_replaces_a_small_one_in_the_memory_tier() {
    // A 404 kept in memory, then the zip published: the memory tier must not
    // keep answering the old 404 (expired, so every request pulls again).
    let tmp = tempfile::tempdir().expect("tempdir");
    let span = Span::inactive().handle();
    let (store, _) = open(tmp.path(), 1 << 20);
    let key = "example.com/e/@v/v1.0.0.zip";
    fill(store, key, b"not found\n").await;
    assert!(store.memory_get(key).is_some());
    let big: Vec<u8> = (0..10_000u32).map(|i| (i % 253) as u8).collect();
    fill(store, key, &big).await;
    assert!(store.memory_get(key).is_none(), "the old small answer left the memory tier");
    let (_, hit) = store.lookup(&cache_key(key, None), &span).await.expect("lookup").expect("hit");
    assert_eq!(read_all(hit).await.expect("read"), big);
}

#[tokio::test]
async fn a_fill_above_the_fill_limit_is_mapped_on_its_first_hit() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let span = Span::inactive().handle();
    let (store, _) = CacheStore::open(tmp.path(), 16 << 20, 4 << 20).expect("open");
    let store: &'static CacheStore = Box::leak(Box::new(store));
    let (small, large) = ("example.com/f/@v/v1.0.0.mod", "example.com/f/@v/v1.0.0.zip");
    let body: Vec<u8> = (0..(FILL_MEMORY_MAX as u32 + 1)).map(|i| (i % 249) as u8).collect();
    fill(store, small, b"module example.com/f\n").await;
    fill(store, large, &body).await;
    assert!(store.memory_get(small).is_some(), "a small fill is in memory once published");
    assert!(store.memory_get(large).is_none(), "a larger one is not read back at its fill");
    let (_, hit) = store.lookup(&cache_key(large, None), &span).await.expect("lookup").expect("hit");
    assert_eq!(read_all(hit).await.expect("read"), body);
    let mapped = store.memory_get(large).expect("its first hit maps it");
    assert!(mapped.body.mapped.is_some() && mapped.body.bytes[..] == body[..]);
    assert!(store.memory.get(large).is_none(), "not copied into memory");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_purge_racing_a_promotion_to_memory_is_not_undone() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let span = Span::inactive().handle();
    let (store, _) = open(tmp.path(), 1 << 20);
    let key = "example.com/f/@v/v1.0.0.mod";
    for round in 0..300 {
        fill(store, key, b"module example.com/f\n").await;
        // On disk only, so the next lookup reads it and promotes it.
        store.memory.remove(key);
        let lookup =
            tokio::spawn(
                async move { store.lookup(&cache_key(key, None), &Span::inactive().handle()).await.map(|_| ()) },
            );
        let purge = tokio::spawn(async move { store.purge_key(key).await });
        lookup.await.expect("join").expect("lookup");
        purge.await.expect("join").expect("purge");
        assert!(store.memory_get(key).is_none(), "round {round}: the purged object came back into memory");
        assert!(store.lookup(&cache_key(key, None), &span).await.expect("lookup").is_none(), "round {round}");
    }
}

#[tokio::test]
async fn a_new_keys_meta_written_in_place_yields_to_one_another_process_published_meanwhile() {
    // The old process of an upgrade fills a key its index lacks (so its
    // meta would be written in place), which the new process published
    // meanwhile: the old one's answer replaces it, and nothing is left over.
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_path_buf();
    let span = Span::inactive().handle();
    let (old, _) = open(&dir, 0);
    let (new, _) = open(&dir, 0);
    let primary = "example.com/both/@v/v1.0.0.mod";
    let key = cache_key(primary, None);
    fill(new, primary, b"module example.com/both // new\n").await;
    fill(old, primary, b"module example.com/both // old\n").await;
    assert_eq!(files_in(&old.shard(&key.combined())), 1, "one meta, the body inside");
    let (_, hit) = old.lookup(&key, &span).await.expect("lookup").expect("hit");
    assert_eq!(read_all(hit).await.expect("read"), b"module example.com/both // old\n");
    new.release();
    only_entry_after_a_restart(old, &dir, &key, b"module example.com/both // old\n").await;
}

#[tokio::test]
async fn a_second_process_on_the_cache_leaves_the_first_ones_fills_alone() {
    // A graceful upgrade: the new edge opens the cache while the old one is
    // still writing fills; neither its temp files nor its fresh entries go.
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_path_buf();
    let span = Span::inactive().handle();
    let (old, _) = open(&dir, 1 << 20);
    let key = cache_key("example.com/g/@v/v1.0.0.zip", None);
    let mut miss = old.get_miss_handler(&key, &meta(8), &span).await.expect("miss");
    miss.write_body(Bytes::from_static(b"abcd"), false).await.expect("write");
    // A body the old process just renamed into place, its meta not yet written.
    let hash = cache_key("example.com/g/@v/v2.0.0.zip", None).combined();
    let shard = dir.join("objects").join(&hash[..2]);
    std::fs::create_dir_all(&shard).expect("shard");
    let in_flight = shard.join(format!("{hash}.5.body"));
    std::fs::write(&in_flight, b"publishing").expect("body");

    let (new, _) = open(&dir, 1 << 20);
    miss.write_body(Bytes::from_static(b"efgh"), true).await.expect("write after the new process opened");
    miss.finish().await.expect("the old process's fill publishes");
    old.settled().await;
    let (_, hit) = new.lookup(&key, &span).await.expect("lookup").expect("the new process sees it");
    assert_eq!(read_all(hit).await.expect("read"), b"abcdefgh");
    assert!(in_flight.exists(), "a fresh body of a live process is not taken for a crash leftover");

    // Once no other process holds the cache, leftovers are removed.
    old.release();
    new.release();
    let _ = open(&dir, 1 << 20);
    assert!(!in_flight.exists(), "with no live process it is a leftover");
}

#[tokio::test]
async fn the_filling_request_takes_its_chunks_as_written_and_the_file_only_for_gaps() {
    use std::os::unix::fs::FileExt;
    let tmp = tempfile::tempdir().expect("tempdir");
    let span = Span::inactive().handle();
    let (store, _) = open(tmp.path(), 0);
    let key = cache_key("example.com/own/@v/v1.0.0.zip", None);
    let chunk = 4096;
    let chunks = OWN_MAX / chunk + 3;
    let body: Vec<u8> = (0..chunk * chunks).map(|i| (i % 251) as u8).collect();
    let mut miss = store.get_miss_handler(&key, &meta(body.len()), &span).await.expect("miss");
    let tag = miss.streaming_write_tag().map(<[u8]>::to_vec);
    let (_, mut own) =
        store.lookup_streaming_write(&key, tag.as_deref(), &span).await.expect("lookup").expect("own reader");
    let write = |i: usize| Bytes::copy_from_slice(&body[i * chunk..(i + 1) * chunk]);
    let first = WRITE_MIN as usize / chunk;
    for i in 0..first {
        miss.write_body(write(i), false).await.expect("write");
    }
    written_out(store, &key).await;
    // Spoil the file behind the writer: another reader sees it, the
    // filling request's own reader does not read the file at all.
    let part = store.fills.lock().get(&key.combined()).expect("fill").part.clone();
    let spoil = std::fs::OpenOptions::new().write(true).open(&part).expect("part");
    spoil.write_all_at(&vec![0u8; chunk], 0).expect("spoil");
    let (_, mut other) = store.lookup(&key, &span).await.expect("lookup").expect("partial hit");
    let spoiled = other.read_body().await.expect("read").expect("a chunk");
    assert_eq!(&spoiled[..chunk], &vec![0u8; chunk][..]);
    assert_eq!(own.read_body().await.expect("read").as_deref(), Some(&body[..chunk]));
    // A slow reader: past OWN_MAX the writer holds no more chunks; once the
    // reader takes one, the next is held again. The gap between comes from
    // the file, and the whole body arrives in order.
    for i in first..chunks - 1 {
        miss.write_body(write(i), false).await.expect("write");
    }
    assert!(store.fills.lock().get(&key.combined()).expect("fill").own.lock().bytes <= OWN_MAX);
    assert_eq!(own.read_body().await.expect("read").as_deref(), Some(&body[chunk..2 * chunk]));
    miss.write_body(write(chunks - 1), true).await.expect("write");
    miss.finish().await.expect("finish");
    let rest = read_all(own).await.expect("read");
    assert!(rest == body[2 * chunk..], "{} bytes, not the body's last {}", rest.len(), body.len() - 2 * chunk);
    store.settled().await;
}

/// A relaying fill whose write fails (here: its temp directory gone) is
/// not kept: lookups miss it, and the rest of the body goes to its own
/// reader, the writer waiting while that holds [`OWN_MAX`] (for followers,
/// see the next test). With its own reader gone, and no follower, the
/// writer stops.
#[tokio::test]
async fn a_relaying_fill_whose_write_fails_relays_the_rest_to_its_reader_at_its_pace_and_keeps_nothing() {
    use futures::FutureExt;
    let tmp = tempfile::tempdir().expect("tempdir");
    let span = Span::inactive().handle();
    let chunk = 64 << 10;
    let chunks = OWN_MAX / chunk + 4;
    let body: Vec<u8> = (0..chunk * chunks).map(|i| (i % 251) as u8).collect();
    let piece = |i: usize| Bytes::copy_from_slice(&body[i * chunk..(i + 1) * chunk]);
    let key = cache_key("example.com/relay/@v/v1.0.0.zip", None);
    let (store, mut fill, mut own) = failing_fill(tmp.path(), &key, body.len(), true).await;
    let (_, mut follower) = store.lookup(&key, &span).await.expect("lookup").expect("follower");
    fill.write_body(piece(0), false).await.expect("the first write fails, and is relayed");
    assert!(store.lookup(&key, &span).await.expect("lookup").is_none(), "a fill not kept is not found");
    assert_eq!(follower.read_body().await.expect("recent").as_deref(), Some(&body[..chunk]));
    drop(follower);
    let mut i = 1;
    while fill.own_bytes() + chunk <= OWN_MAX {
        fill.write_body(piece(i), false).now_or_never().expect("room for it").expect("relayed");
        i += 1;
    }
    // Full: the writer waits for the reader to take a chunk.
    let mut next = Box::pin(fill.write_body(piece(i), false));
    assert!(futures::poll!(&mut next).is_pending(), "the writer waits while its reader holds OWN_MAX");
    assert_eq!(own.read_body().await.expect("read").as_deref(), Some(&body[..chunk]));
    next.await.expect("relayed once there is room");
    for j in i + 1..chunks {
        let write = fill.write_body(piece(j), false);
        let (wrote, read) = tokio::join!(write, own.read_body());
        wrote.expect("relayed");
        assert!(read.expect("read").is_some());
    }
    assert!(Box::new(fill).finish().await.is_err(), "not kept");
    let rest = read_all(own).await.expect("the rest");
    assert!(rest == body[(chunks - i) * chunk..], "{} bytes, in order", rest.len());
    store.settled().await;
    assert!(store.lookup(&key, &span).await.expect("lookup").is_none(), "nothing kept");

    // Its reader gone (the client went), a waiting writer stops.
    let key = cache_key("example.com/relay/@v/v1.0.1.zip", None);
    let mut fill = store.begin_fill(&key, &meta(body.len())).relaying();
    let tag = fill.streaming_write_tag().map(<[u8]>::to_vec);
    let (_, own) =
        store.lookup_streaming_write(&key, tag.as_deref(), &span).await.expect("lookup").expect("own reader");
    let mut i = 0;
    while fill.own_bytes() + chunk <= OWN_MAX {
        fill.write_body(piece(i), false).await.expect("relayed");
        i += 1;
    }
    let mut next = Box::pin(fill.write_body(piece(i), false));
    assert!(futures::poll!(&mut next).is_pending());
    drop(own);
    assert!(next.await.is_err(), "no reader, no relay");
}

/// On Pingora's path a fill's own reader reads on the task that writes,
/// which a writer waiting for it would stall for ever: a fill whose write
/// fails there relays the rest to it at once, holding up to
/// [`UNWAITED_MAX`] bytes it has not read (a write past them fails), and
/// finishes as an entry of no weight (told of a failure, Pingora disabled
/// the request's cache, and with it the answer read from the fill: a 500,
/// or an answer cut short). Nothing of it is kept.
#[tokio::test]
async fn on_pingoras_path_a_fill_whose_write_fails_relays_the_rest_without_waiting_and_keeps_nothing() {
    use futures::FutureExt;
    let tmp = tempfile::tempdir().expect("tempdir");
    let span = Span::inactive().handle();
    let chunk = 1 << 20;
    let chunks = UNWAITED_MAX / chunk;
    let body: Vec<u8> = (0..chunk * (chunks + 1)).map(|i| (i % 241) as u8).collect();
    let piece = |i: usize| Bytes::copy_from_slice(&body[i * chunk..(i + 1) * chunk]);
    let key = cache_key("example.com/unwaited/@v/v1.0.0.zip", None);
    let (store, mut fill, mut own) = failing_fill(tmp.path(), &key, body.len(), false).await;
    for i in 0..chunks {
        fill.write_body(piece(i), false).now_or_never().expect("the writer never waits").expect("relayed");
    }
    assert!(store.lookup(&key, &span).await.expect("lookup").is_none(), "a fill not kept is not found");
    // Its reader UNWAITED_MAX behind: it takes a chunk, and the last fits.
    assert_eq!(own.read_body().await.expect("read").as_deref(), Some(&body[..chunk]));
    fill.write_body(piece(chunks), false).now_or_never().expect("never waits").expect("relayed");
    let finished = Box::new(fill).finish().await;
    assert!(matches!(finished, Ok(MissFinishType::Created(0))), "an entry of no weight");
    let rest = read_all(own).await.expect("the rest");
    assert!(rest == body[chunk..], "{} bytes, in order", rest.len());
    store.settled().await;
    assert!(store.lookup(&key, &span).await.expect("lookup").is_none(), "nothing kept");

    // A reader further behind than UNWAITED_MAX loses its answer.
    let key = cache_key("example.com/unwaited/@v/v1.0.1.zip", None);
    let mut fill = store.begin_fill(&key, &meta(body.len()));
    let tag = fill.streaming_write_tag().map(<[u8]>::to_vec);
    let (_, _own) =
        store.lookup_streaming_write(&key, tag.as_deref(), &span).await.expect("lookup").expect("own reader");
    for i in 0..chunks {
        fill.write_body(piece(i), false).now_or_never().expect("never waits").expect("relayed");
    }
    let past = fill.write_body(piece(chunks), false).now_or_never().expect("never waits");
    assert!(past.is_err(), "past UNWAITED_MAX a write fails");
}

/// Followers of a fill not kept have no file to read what the recent
/// chunks no longer hold: its writer waits for the slowest of them, as for
/// its own reader, so each reads the body whole (they failed once they fell
/// [`RECENT_MAX`] behind); one that goes lets the writer on, and the fill
/// goes on for its followers once its own reader went.
#[tokio::test]
async fn followers_of_a_fill_not_kept_are_waited_for_and_read_it_whole() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let span = Span::inactive().handle();
    let chunk = 64 << 10;
    let chunks = 2 * RECENT_MAX / chunk;
    let body: Vec<u8> = (0..chunk * chunks).map(|i| (i % 249) as u8).collect();
    let piece = |i: usize| Bytes::copy_from_slice(&body[i * chunk..(i + 1) * chunk]);
    let key = cache_key("example.com/relay/@v/v1.0.0.zip", None);
    let (store, mut fill, mut own) = failing_fill(tmp.path(), &key, body.len(), true).await;
    let (_, mut slow) = store.lookup(&key, &span).await.expect("lookup").expect("a follower");
    let (_, idle) = store.lookup(&key, &span).await.expect("lookup").expect("another");
    fill.write_body(piece(0), false).await.expect("the first write fails, and is relayed");
    // The own reader takes each chunk as it comes; the followers nothing.
    let mut own_read = Vec::new();
    let mut i = 1;
    let mut waiting = loop {
        own_read.extend_from_slice(&own.read_body().await.expect("read").expect("a chunk"));
        let mut write = Box::pin(fill.write_body(piece(i), false));
        if futures::poll!(&mut write).is_pending() {
            break write;
        }
        i += 1;
        assert!(i < chunks, "the writer never waited for its followers");
    };
    assert!(i * chunk <= RECENT_MAX + chunk, "it waits once the recent chunks hold RECENT_MAX: chunk {i}");
    // The follower that reads nothing goes (its client cut at the send
    // deadline): the writer waits for the other still.
    drop(idle);
    assert!(futures::poll!(&mut waiting).is_pending(), "the slow follower holds it");
    let first = slow.read_body().await.expect("read").expect("the first chunk");
    waiting.await.expect("relayed once the slow follower took a chunk");
    // The rest, the own reader going halfway: the fill goes on for the
    // follower, and ends not kept.
    let writes = async {
        for j in i + 1..chunks {
            fill.write_body(piece(j), false).await.expect("relayed");
        }
        Box::new(fill).finish().await.is_err()
    };
    let own_half = async {
        while own_read.len() < body.len() / 2 {
            own_read.extend_from_slice(&own.read_body().await.expect("read").expect("a chunk"));
        }
        drop(own);
        own_read
    };
    let (not_kept, own_read, rest) = tokio::join!(writes, own_half, read_all(slow));
    assert!(not_kept, "not kept");
    assert!(own_read == body[..own_read.len()], "the own reader's bytes in order");
    let read = [first.to_vec(), rest.expect("the follower reads it whole")].concat();
    assert!(read == body, "the follower's body whole and in order: {} bytes", read.len());
    assert!(store.lookup(&key, &span).await.expect("lookup").is_none(), "nothing kept");
}

#[tokio::test]
async fn a_purge_before_the_memory_copy_is_made_keeps_it_out() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let span = Span::inactive().handle();
    let (store, _) = open(tmp.path(), 1 << 20);
    let key = "example.com/late/@v/v1.0.0.mod";
    let mut miss = store.get_miss_handler(&cache_key(key, None), &meta(21), &span).await.expect("miss");
    miss.write_body(Bytes::from_static(b"module example.com/l\n"), true).await.expect("write");
    miss.finish().await.expect("finish");
    // The durable write and the memory copy run behind; a purge now wins.
    store.purge_key(key).await.expect("purge");
    store.settled().await;
    assert!(store.memory_get(key).is_none(), "the purged answer went into memory after its purge");
    assert!(store.lookup(&cache_key(key, None), &span).await.expect("lookup").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_prefix_purge_racing_a_publish_removes_the_entry() {
    // A finished fill moves from the fills to the index while it publishes,
    // and a prefix purge looks in both: in the wrong order (the index, then
    // the fills, with the removal of what the index held in between), it
    // missed the entry in both and left it cached.
    let tmp = tempfile::tempdir().expect("tempdir");
    let span = Span::inactive().handle();
    let (store, _) = open(tmp.path(), 1 << 20);
    for round in 0..300 {
        let prefix = format!("example.com/g{round}/@v/");
        let (stored, filled) = (format!("{prefix}v1.0.0.mod"), format!("{prefix}v1.0.1.mod"));
        fill(store, &stored, b"abc").await;
        let mut miss = store.get_miss_handler(&cache_key(&filled, None), &meta(3), &span).await.expect("miss");
        miss.write_body(Bytes::from_static(b"abc"), true).await.expect("write");
        miss.finish().await.expect("finish");
        // The purge comes at a different point of the publish each round.
        std::thread::sleep(std::time::Duration::from_micros(10 * (round % 50)));
        let purged = store.purge_prefix(&prefix).await.expect("purge");
        store.settled().await;
        for key in [&stored, &filled] {
            assert!(
                store.lookup(&cache_key(key, None), &span).await.expect("lookup").is_none(),
                "round {round}: {key}"
            );
        }
        assert_eq!(purged, 2, "round {round}");
    }
}

/// Lines of this process's mappings that name the file of `hash`.
fn mappings_of(hash: &str) -> usize {
    std::fs::read_to_string("/proc/self/maps").expect("maps").lines().filter(|l| l.contains(hash)).count()
}

#[tokio::test]
async fn the_mapped_tier_lets_go_of_what_the_disk_tier_evicts_purges_or_loses() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let span = Span::inactive().handle();
    let (store, _) = open(tmp.path(), 1 << 20);
    let key = "example.com/m/@v/v1.0.0.zip";
    let hash = cache_key(key, None).combined();
    let body: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8).collect();
    let hit = || async {
        let (_, hit) = store.lookup(&cache_key(key, None), &span).await.expect("lookup").expect("hit");
        assert_eq!(read_all(hit).await.expect("read"), body);
    };

    // An eviction: the file's blocks must not stay held by a mapping.
    fill(store, key, &body).await;
    hit().await;
    assert!(store.memory_get(key).is_some_and(|o| o.body.mapped.is_some()), "mapped on its first hit");
    assert_eq!(mappings_of(&hash), 1);
    assert!(store.remove(&hash, false).await.expect("evict"));
    assert!(store.memory_get(key).is_none(), "evicted from disk, out of the mapped tier");
    assert_eq!(mappings_of(&hash), 0, "and unmapped");

    // A new answer for the key (a refetch): the old mapping must not stand
    // in front of it.
    fill(store, key, &body).await;
    hit().await;
    let newer: Vec<u8> = body.iter().map(|b| b ^ 0x5a).collect();
    fill(store, key, &newer).await;
    let (_, h) = store.lookup(&cache_key(key, None), &span).await.expect("lookup").expect("hit");
    assert!(read_all(h).await.expect("read") == newer, "the newer body is served");
    let obj = store.memory_get(key).expect("mapped again");
    assert!(obj.body.bytes[..] == newer[..]);
    drop(obj);
    store.remove(&hash, false).await.expect("evict");

    // A purge of its module.
    fill(store, key, &body).await;
    hit().await;
    assert_eq!(store.purge_prefix("example.com/m/@").await.expect("purge"), 1);
    assert!(store.memory_get(key).is_none() && mappings_of(&hash) == 0, "purged");
    assert!(store.lookup(&cache_key(key, None), &span).await.expect("lookup").is_none());

    // Its file cut short under the mapping: a read fails, the tier lets it
    // go, and the entry is a miss (the length on disk is not its record's).
    fill(store, key, &body).await;
    hit().await;
    let file = body_file(tmp.path(), &hash);
    std::fs::OpenOptions::new().write(true).open(&file).expect("open").set_len(4096).expect("truncate");
    let (_, failing) = store.lookup(&cache_key(key, None), &span).await.expect("lookup").expect("hit");
    assert!(read_all(failing).await.is_err(), "the cut-off pages are not served");
    assert!(store.memory_get(key).is_none(), "a failed mapping leaves the tier");
    assert!(store.lookup(&cache_key(key, None), &span).await.expect("lookup").is_none(), "a miss now");
}

/// The body file of `hash` under the cache at `dir`.
fn body_file(dir: &Path, hash: &str) -> PathBuf {
    let shard = dir.join("objects").join(&hash[..2]);
    std::fs::read_dir(&shard)
        .expect("shard")
        .map(|e| e.expect("entry").path())
        .find(|p| p.extension().is_some_and(|e| e == "body") && p.to_string_lossy().contains(hash))
        .expect("body file")
}

#[tokio::test]
async fn a_body_held_in_its_meta_is_copied_into_memory_only_within_the_object_limit() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let span = Span::inactive().handle();
    // Up to 1 KiB per object in memory; both bodies are held whole on disk.
    let (store, _) = open(tmp.path(), 1 << 20);
    let (small, larger) = ("example.com/h/@v/v1.0.0.mod", "example.com/h/@v/v1.0.0.zip");
    fill(store, small, &[1; 500]).await;
    fill(store, larger, &[2; 3_000]).await;
    store.memory.remove(small);
    assert!(store.memory.get(larger).is_none(), "above the limit: never in memory");
    for key in [small, larger] {
        let (_, hit) = store.lookup(&cache_key(key, None), &span).await.expect("lookup").expect("hit");
        assert_eq!(read_all(hit).await.expect("read").len(), if key == small { 500 } else { 3_000 });
    }
    assert!(store.memory.get(small).is_some(), "read back into memory");
    assert!(store.memory.get(larger).is_none(), "served, but kept out of memory");
}

#[tokio::test]
async fn a_body_read_from_disk_is_copied_into_memory_only_when_tiny() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let span = Span::inactive().handle();
    let (store, _) = CacheStore::open(tmp.path(), 16 << 20, 64 << 10).expect("open");
    let store: &'static CacheStore = Box::leak(Box::new(store));
    let (tiny, small) = ("example.com/t/@v/v1.0.0.mod", "example.com/t/@v/v1.0.0.zip");
    let zip: Vec<u8> = (0..16_000u32).map(|i| (i % 239) as u8).collect();
    fill(store, tiny, b"module example.com/t\n").await;
    fill(store, small, &zip).await;
    assert!(store.memory.get(small).is_some(), "a fill of up to 64 KiB is in memory");
    // Both let go by the memory tier (its budget), then read from disk.
    store.memory.remove(tiny);
    store.memory.remove(small);
    for key in [tiny, small] {
        let (_, hit) = store.lookup(&cache_key(key, None), &span).await.expect("lookup").expect("hit");
        read_all(hit).await.expect("read");
    }
    assert!(store.memory.get(tiny).is_some(), "a tiny body is copied in");
    assert!(store.memory.get(small).is_none(), "a 16 KB one is not copied (each copy evicted another)");
    assert!(store.memory_get(small).is_some_and(|o| o.body.mapped.is_some() && o.body.bytes[..] == zip[..]));
}

#[tokio::test]
async fn a_hot_object_takes_a_memory_file_from_a_colder_one_when_none_is_free() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut store, _) = CacheStore::open(tmp.path(), 16 << 20, 64 << 10).expect("open");
    store.files = Files::at_most(2);
    let store: &'static CacheStore = Box::leak(Box::new(store));
    let zip = |i: u8| vec![i; memfile::MIN];
    let keys = ["example.com/a/@v/v1.0.0.zip", "example.com/b/@v/v1.0.0.zip", "example.com/c/@v/v1.0.0.zip"];
    for (i, key) in keys.iter().enumerate() {
        fill(store, key, &zip(i as u8)).await;
    }
    let [hot, cold, late] = keys;
    let filed = |key: &str| store.memory.peek(key).expect("in memory").body.file.is_some();
    assert!(filed(hot) && filed(cold) && !filed(late), "the first fills take the files there are");

    for _ in 0..100 {
        store.memory_get(hot).expect("hit");
    }
    for _ in 1..placement::ASK_AFTER {
        store.memory_get(late).expect("hit");
    }
    assert!(!filed(late), "a few hits ask for nothing");
    store.memory_get(late).expect("hit");
    assert!(filed(late), "hit often, it took a file");
    assert!(filed(hot) && !filed(cold), "from the object hit least, not from the oldest holder");
    assert_eq!(store.files.open(), 2);
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(store.memory_get(key).expect("hit").body.bytes[..], zip(i as u8)[..], "{key}: same bytes");
    }

    // Nothing is moved for an object the tier no longer holds, and a move
    // never stands in front of what replaced it.
    let gone = store.memory_get(cold).expect("hit");
    store.purge_key(cold).await.expect("purge");
    for _ in 0..1000 {
        store.count_hit(cold, &gone);
    }
    assert!(store.memory.peek(cold).is_none(), "the purged object stays out");
    assert!(filed(hot) && filed(late), "and no file was taken for it");
    let old = store.memory_get(late).expect("hit");
    fill(store, late, &zip(9)).await;
    let moved = Arc::new(old.with_body(MemBody::heap(old.body.bytes.clone())));
    assert!(!store.swap(late, &old, moved), "not in place of a newer fill");
    assert_eq!(store.memory_get(late).expect("hit").body.bytes[..], zip(9)[..]);
}

#[tokio::test]
async fn a_hot_object_read_back_from_disk_returns_to_memory_in_a_memory_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let span = Span::inactive().handle();
    let (store, _) = CacheStore::open(tmp.path(), 16 << 20, 64 << 10).expect("open");
    let store: &'static CacheStore = Box::leak(Box::new(store));
    let (hot, cold) = ("example.com/h/@v/v1.0.0.zip", "example.com/c/@v/v1.0.0.zip");
    let zip = |i: u8| vec![i; memfile::MIN];
    fill(store, hot, &zip(1)).await;
    fill(store, cold, &zip(2)).await;
    // Let go by the memory tier (a flow of other fills), then read from disk.
    for key in [hot, cold] {
        store.memory.remove(key);
        let (_, hit) = store.lookup(&cache_key(key, None), &span).await.expect("lookup").expect("hit");
        read_all(hit).await.expect("read");
    }
    let mapped = store.memory_get(hot).expect("hit");
    assert!(mapped.body.mapped.is_some() && store.memory.peek(hot).is_none(), "read back as a mapping");
    for _ in 2..placement::ASK_AFTER {
        store.memory_get(hot).expect("hit");
        store.memory_get(cold).expect("hit");
    }
    assert!(store.memory.peek(hot).is_none(), "a few hits copy nothing");
    store.memory_get(hot).expect("hit");
    let back = store.memory.peek(hot).expect("hit often, it is back in memory");
    assert!(back.body.file.is_some() && back.body.bytes[..] == zip(1)[..], "in a memory file, the same bytes");
    assert!(store.mapped.peek(hot).is_none(), "and out of the mapped tier");
    assert!(store.memory.peek(cold).is_none() && store.memory_get(cold).is_some_and(|o| o.body.mapped.is_some()));

    // Never in front of a newer fill, nor after a purge.
    let stale = store.memory_get(cold).expect("hit");
    fill(store, cold, &zip(3)).await;
    for _ in 0..1000 {
        store.count_hit(cold, &stale);
    }
    assert_eq!(store.memory_get(cold).expect("hit").body.bytes[..], zip(3)[..]);
    store.memory.remove(cold);
    let copy = Arc::new(stale.with_body(MemBody::heap(stale.body.bytes.clone())));
    assert!(!store.bring_back(cold, &stale, copy, store.purge_epoch()), "a copy made as the fill ended goes again");
    assert!(store.memory.peek(cold).is_none());
    let (_, hit) = store.lookup(&cache_key(cold, None), &span).await.expect("lookup").expect("hit");
    read_all(hit).await.expect("read");
    let gone = store.memory_get(cold).expect("hit");
    store.purge_key(cold).await.expect("purge");
    for _ in 0..1000 {
        store.count_hit(cold, &gone);
    }
    assert!(store.memory_get(cold).is_none(), "the purged object stays out");
}

#[tokio::test]
async fn followers_of_a_fill_take_its_recent_chunks_and_read_the_file_only_when_behind() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let span = Span::inactive().handle();
    let (store, _) = open(tmp.path(), 0);
    let key = cache_key("example.com/follow/@v/v1.0.0.zip", None);
    let chunk = 64 << 10;
    let chunks = RECENT_MAX / chunk * 2;
    let body: Vec<u8> = (0..chunk * chunks).map(|i| (i % 253) as u8).collect();
    let write = |i: usize| Bytes::copy_from_slice(&body[i * chunk..(i + 1) * chunk]);
    let mut miss = store.get_miss_handler(&key, &meta(body.len()), &span).await.expect("miss");
    let (_, mut follower) = store.lookup(&key, &span).await.expect("lookup").expect("partial hit");
    // Keeping up with the fill: each chunk is the one written, not a copy
    // read back from the file.
    let mut got = Vec::new();
    for i in 0..2 {
        let data = write(i);
        let at = data.as_ptr();
        miss.write_body(data, false).await.expect("write");
        let read = follower.read_body().await.expect("read").expect("a chunk");
        assert_eq!(read.as_ptr(), at, "chunk {i} is the one written");
        got.extend_from_slice(&read);
    }
    // Behind by more than the fill keeps: the rest from the file, in order.
    for i in 2..chunks {
        miss.write_body(write(i), false).await.expect("write");
    }
    assert!(store.fills.lock().get(&key.combined()).expect("fill").recent.lock().bytes <= RECENT_MAX);
    miss.finish().await.expect("finish");
    got.extend(read_all(follower).await.expect("read the rest"));
    assert!(got == body, "the whole body ({} of {} bytes)", got.len(), body.len());
    store.settled().await;
    let fill = store.fills.lock().get(&key.combined()).cloned();
    assert!(fill.is_none(), "published");
}

#[tokio::test]
async fn a_fill_is_written_a_page_at_a_time_and_readers_get_the_bytes_held_past_the_last_page() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let span = Span::inactive().handle();
    let (store, _) = open(tmp.path(), 0);
    let key = cache_key("example.com/pages/@v/v1.0.0.zip", None);
    // As Pingora hands a body over: the bytes read with the head, then
    // whole reads, and small ones when the upstream trickles.
    let sizes = [3793, 65536, 10, 100, 4000, 65536, 1, 8192, 300, 131072, 65536, 77, 65536];
    let body: Vec<u8> = (0..sizes.iter().sum::<usize>()).map(|i| (i % 241) as u8).collect();
    // No length given: the file grows as it is written (one made as long
    // as the body at once is `a_fill_takes_the_blocks_of_its_whole_body_at_its_first_write`),
    // off the request's path, a page at a time.
    let mut no_length = meta(body.len());
    no_length.response_header_mut().remove_header("content-length");
    let mut miss = store.get_miss_handler(&key, &no_length, &span).await.expect("miss");
    let part = store.fills.lock().get(&key.combined()).expect("fill").part.clone();
    let (_, mut follower) = store.lookup(&key, &span).await.expect("lookup").expect("partial hit");
    let (mut written, mut got) = (0, Vec::new());
    for size in sizes {
        miss.write_body(Bytes::copy_from_slice(&body[written..written + size]), false).await.expect("write");
        written += size;
        // (No file before the body reaches a page.)
        assert_eq!(part.exists(), written as u64 >= fill::PAGE, "after {written} bytes");
        // (Its writer writes on a thread of its own, as the bytes come.)
        let in_file = std::fs::metadata(&part).map_or(0, |m| m.len());
        assert_eq!(in_file % fill::PAGE, 0, "after {written} bytes the file ends mid-page, at {in_file}");
        // A reader joining now, and one following all along, get every
        // byte taken so far, from the file and past it.
        let (_, late) = store.lookup(&key, &span).await.expect("lookup").expect("partial hit");
        let late = tokio::time::timeout(std::time::Duration::from_secs(5), read_up_to(late, written))
            .await
            .expect("a reader joining mid-fill gets what was taken");
        assert!(late == body[..written], "a late reader got {} bytes of {written}", late.len());
        while got.len() < written {
            let chunk = tokio::time::timeout(std::time::Duration::from_secs(5), follower.read_body())
                .await
                .expect("the follower is not kept waiting for a page")
                .expect("read")
                .expect("a chunk");
            got.extend_from_slice(&chunk);
        }
        assert!(got == body[..written], "the follower got {} bytes of {written}", got.len());
    }
    miss.finish().await.expect("finish");
    written_out(store, &key).await;
    assert!(std::fs::read(&part).expect("part") == body, "the whole body is in the file once written out");
    assert!(read_all(follower).await.expect("read").is_empty());
    store.settled().await;
    let (_, hit) = store.lookup(&key, &span).await.expect("lookup").expect("hit");
    assert!(read_all(hit).await.expect("read") == body);
}

/// Reads `hit` until it has `n` bytes.
async fn read_up_to(mut hit: HitHandler, n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while out.len() < n {
        out.extend_from_slice(&hit.read_body().await.expect("read").expect("a chunk"));
    }
    out
}

/// Holds the writers of `store`'s fills (as a disk that takes its time
/// would); `open_writes` lets them go.
fn hold_writes(store: &mut CacheStore) -> Arc<(Mutex<bool>, parking_lot::Condvar)> {
    let gate = Arc::new((Mutex::new(false), parking_lot::Condvar::new()));
    store.write_gate = Some(gate.clone());
    gate
}

fn open_writes(gate: &(Mutex<bool>, parking_lot::Condvar)) {
    *gate.0.lock() = true;
    gate.1.notify_all();
}

#[tokio::test]
async fn a_fill_is_answered_and_found_whole_before_its_file_is_written_and_published_only_once_it_is() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let span = Span::inactive().handle();
    let mut gate = None;
    let store = open_waiting_with(tmp.path(), |store| gate = Some(hold_writes(store)));
    let gate = gate.expect("gate");
    let len = (1 << 20) + 777;
    let (key, body, mut miss) = begun(store, "example.com/behind/@v/v1.0.0.zip", len, 64 << 10).await;
    let tag = miss.streaming_write_tag().map(<[u8]>::to_vec);
    let (_, own) = store.lookup_streaming_write(&key, tag.as_deref(), &span).await.expect("lookup").expect("own");
    for chunk in body[64 << 10..].chunks(64 << 10) {
        miss.write_body(Bytes::copy_from_slice(chunk), false).await.expect("write");
    }
    let finished = tokio::time::timeout(std::time::Duration::from_secs(5), miss.finish());
    finished.await.expect("the fill finishes while its file waits for the disk").expect("finish");
    assert!(read_all(own).await.expect("read") == body, "its answer whole");
    // Found by a lookup meanwhile: read from what the fill holds.
    let (_, hit) = store.lookup(&key, &span).await.expect("lookup").expect("the fill");
    assert!(read_all(hit).await.expect("read") == body, "a lookup's answer whole");
    let part = store.fills.lock().get(&key.combined()).expect("the fill").part.clone();
    let on_file = std::fs::read(&part).expect("its temp file");
    assert!(on_file.iter().all(|b| *b == 0), "nothing written yet: its blocks only");
    assert_eq!(*store.unwritten.borrow(), len as u64, "all of it counted as not written");
    // Hurried to disk, it waits for its writer, and is then published whole.
    store.hurry.send_modify(|n| *n += 1);
    assert!(pending(store, 1).await, "not published while its file is not written");
    open_writes(&gate);
    store.settled().await;
    assert_eq!(*store.unwritten.borrow(), 0);
    assert!(store.fills.lock().is_empty(), "published");
    let (_, hit) = store.lookup(&key, &span).await.expect("lookup").expect("the published entry");
    assert!(read_all(hit).await.expect("read") == body, "published whole");
    assert_eq!(std::fs::read(body_file(tmp.path(), &key.combined())).expect("body file"), body);
}

#[tokio::test]
async fn fills_take_no_more_than_the_bound_of_bytes_not_yet_written_until_their_writers_write() {
    use futures::FutureExt;
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut gate = None;
    let store = open_waiting_with(tmp.path(), |store| {
        gate = Some(hold_writes(store));
        store.unwritten_max = 1 << 20;
    });
    let gate = gate.expect("gate");
    let chunk = 64 << 10;
    let (_, body, mut miss) = begun(store, "example.com/bound/@v/v1.0.0.zip", 4 << 20, chunk).await;
    let mut at = chunk;
    while *store.unwritten.borrow() + chunk as u64 <= 1 << 20 {
        miss.write_body(Bytes::copy_from_slice(&body[at..at + chunk]), false)
            .now_or_never()
            .expect("room")
            .expect("write");
        at += chunk;
    }
    // Past the bound: the next write is taken, and the fill waits.
    let mut next = Box::pin(miss.write_body(Bytes::copy_from_slice(&body[at..at + chunk]), false));
    assert!(futures::poll!(&mut next).is_pending(), "the fill waits for its writer past the bound");
    open_writes(&gate);
    tokio::time::timeout(std::time::Duration::from_secs(5), next).await.expect("on once written").expect("write");
    drop(miss);
}

#[test]
fn a_fills_writer_writes_from_page_to_page_in_bounded_calls_and_the_rest_once_finished() {
    // As an upstream that trickles hands a body over: many small chunks
    // of odd sizes, more than one call takes.
    let sizes = [3793usize, 10, 100, 4000, 65536, 1, 8192, 300].repeat(300);
    let body: Vec<u8> = (0..sizes.iter().sum::<usize>()).map(|i| (i % 239) as u8).collect();
    let mut tail = Tail::default();
    let mut at = 0;
    for size in sizes {
        tail.push(Bytes::copy_from_slice(&body[at..at + size]));
        at += size;
    }
    let mut file = Vec::new();
    // Until the fill is finished, from page to page; then the rest.
    for last in [false, true] {
        tail.last = last;
        loop {
            let pieces = tail.next_write();
            if pieces.is_empty() {
                break;
            }
            assert!(pieces.len() <= 512, "{} pieces in one call", pieces.len());
            let n: usize = pieces.iter().map(Bytes::len).sum();
            assert!(n as u64 <= WRITE_MAX + (64 << 10), "{n} bytes in one call");
            assert_eq!(tail.in_file as usize, file.len());
            pieces.iter().for_each(|p| file.extend_from_slice(p));
            tail.wrote(n as u64);
            if !last {
                assert_eq!(file.len() as u64 % fill::PAGE, 0, "a write ended mid-page, at {}", file.len());
            }
        }
        assert!(last || tail.bytes < fill::PAGE, "{} bytes left before the last write", tail.bytes);
    }
    assert_eq!(tail.bytes, 0);
    assert!(file == body, "the file is the body");
}
