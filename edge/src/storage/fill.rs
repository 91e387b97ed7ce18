//! Writing one fill: the body to a temp file readers can follow, then
//! published in place (synced, renamed, meta replaced), or dropped.

use super::*;
use tokio::sync::oneshot;

/// Writes one fill.
pub struct Filler {
    store: &'static CacheStore,
    hash: String,
    primary: String,
    fill: Arc<Fill>,
    /// Its own reader reads on a task of its own: the writer may wait for
    /// it (see [`Filler::relaying`]).
    relay: bool,
    /// A write failed: nothing of the fill is kept, and the rest of its
    /// body is only relayed to its readers.
    unkept: bool,
    /// Bytes taken from the upstream.
    written: u64,
    /// The body is held whole, no temp file: its length, as the origin
    /// gave it, is at most [`FILL_MEMORY_MAX`] (until more comes).
    whole: bool,
    /// The body's length, as the origin gave it: the temp file's blocks
    /// are taken for it at once (see [`Filler::file`]).
    length: Option<u64>,
    done: bool,
}

/// The file is written a page at a time: every write but the last starts
/// and ends on a page boundary, the bytes past the last boundary held for
/// the next one (see [`Tail::next_write`]). A write that starts or ends mid-page costs the page cache
/// that partial page again on the next write: on this machine's ext4, 1 MiB
/// written as Pingora hands it over (a 3 793-byte head, then 64 KiB
/// chunks) took 384–468 µs, the same chunks aligned 256–309 µs.
pub(super) const PAGE: u64 = 4096;

/// Takes the blocks of `len` bytes for `file`, and makes it that long:
/// `true`; `false` for a file system that cannot (`EOPNOTSUPP`), which
/// takes them as the file is written.
fn allocate(file: &File, len: u64) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    let len = libc::off_t::try_from(len).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: fallocate on a descriptor this fill owns, no memory passed.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) };
    if rc == 0 {
        return Ok(true);
    }
    match std::io::Error::last_os_error() {
        e if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(false),
        e => Err(e),
    }
}

impl Filler {
    /// A fill of a body of `length` bytes, when the origin said (held
    /// whole up to [`FILL_MEMORY_MAX`], see [`Filler::whole`]).
    pub(super) fn new(
        store: &'static CacheStore,
        hash: String,
        primary: String,
        fill: Arc<Fill>,
        length: Option<u64>,
    ) -> Filler {
        let whole = length.is_some_and(|len| len <= FILL_MEMORY_MAX);
        Filler { store, hash, primary, fill, relay: false, unkept: false, written: 0, whole, length, done: false }
    }

    /// Makes the temp file, and counts the bytes taken so far against the
    /// store's bound of bytes not yet written (see [`UNWRITTEN_MAX`]).
    /// Right here: a new file in this process's own temp directory is
    /// quick, and a hop to the blocking pool (waking a thread) would stand
    /// in the miss's path.
    ///
    /// Its blocks are taken for the whole body at once (`fallocate`, the
    /// file as long as the body from the start, so that its readers can map
    /// it while it is written, see [`Fill::mapping`]). Taken a page at a time
    /// by each write (ext4's delayed allocation), they cost the event loop
    /// more than the copy itself: `perf` of one client's first download
    /// of a 64 MiB zip put 30 % of the edge's CPU in `ext4_da_write_begin`
    /// against 10 % copying. A disk without room for the body fails the
    /// fill here, before it takes the disk's last free blocks from others.
    fn make_file(&mut self) -> Result<()> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&self.fill.part)
            .map_err(|e| storage_error("create", e))?;
        if let Some(len) = self.length {
            match allocate(&file, len) {
                Ok(sized) => self.fill.sized.store(sized, Ordering::SeqCst),
                Err(e) => {
                    let _ = std::fs::remove_file(&self.fill.part);
                    return Err(storage_error("create", e));
                }
            }
        }
        let _ = self.fill.reader.set(Arc::new(file));
        // (Counted under the tail's lock, as its writer uncounts them.)
        let mut tail = self.fill.tail.lock();
        tail.counted = true;
        self.store.unwritten.send_modify(|b| *b += tail.bytes);
        Ok(())
    }

    /// Has the fill's writer write what it holds (once that is
    /// [`WRITE_MIN`], or the fill is finished), unless it is at work
    /// already: on the writes' threads, off the request's path.
    fn write_out(&self) {
        let start = {
            let mut tail = self.fill.tail.lock();
            let due = tail.bytes >= WRITE_MIN || (tail.last && tail.bytes > 0);
            let start = tail.counted && !tail.writing && tail.failed.is_none() && due;
            tail.writing |= start;
            start
        };
        if start {
            let (store, fill) = (self.store, self.fill.clone());
            if let Err(e) = store.writes.spawn(move || write_out(store, &fill)) {
                let mut tail = self.fill.tail.lock();
                tail.writing = false;
                tail.failed = Some(e.to_string());
            }
        }
    }

    /// Makes the fill's own reader one that reads on a task of its own (the
    /// lane's answer), which the writer may wait for. A write that fails
    /// (the disk full, an I/O error) breaks no answer: the fill is then not
    /// kept, and the rest of the body goes to its readers as the origin
    /// sends it, at the pace of the slowest of them (see [`Filler::relay`]).
    /// Pingora's path writes and reads on one task: a writer that waited for
    /// that reader would wait for ever, so the rest is held for it instead,
    /// up to [`UNWAITED_MAX`] bytes not yet read (it fails past that).
    pub fn relaying(mut self) -> Filler {
        self.relay = true;
        self
    }

    /// A write failed: lookups no longer find the fill, its
    /// temp file goes (the space it took, too), and what is written from
    /// here on is only relayed.
    fn unkeep(&mut self, e: &Error) {
        tracing::warn!(key = %self.primary, error = %e, "cache fill not kept; its answer goes on from the origin");
        self.unkept = true;
        self.fill.unkept.store(true, Ordering::SeqCst);
        {
            let mut fills = self.store.fills.lock();
            if fills.get(&self.hash).is_some_and(|f| f.id == self.fill.id) {
                fills.remove(&self.hash);
            }
        }
        // (Its readers' descriptor stays open: what was written before
        // stays readable, and what its writer had yet to write stays in
        // its tail.)
        let _ = std::fs::remove_file(&self.fill.part);
    }

    /// Hands `data` to the fill's own reader, once it holds less than
    /// [`OWN_MAX`] (on Pingora's path at once, see [`Filler::relaying`]),
    /// and to its followers, once the recent chunks have room for it (see
    /// [`Fill::followers_keep_up`]). With its own reader gone it goes on
    /// for its followers; with none left, it stops.
    async fn relay(&mut self, data: Bytes) -> Result<()> {
        loop {
            let drained = self.fill.drained.notified();
            {
                let own = self.fill.own.lock();
                if own.gone && self.fill.followers.load(Ordering::Relaxed) == 0 {
                    return Err(storage_error("fill", "not kept, and its readers are gone"));
                }
                let max = if self.relay { OWN_MAX } else { UNWAITED_MAX };
                let own_room = own.gone || own.bytes == 0 || own.bytes + data.len() <= max;
                if !own_room && !self.relay {
                    return Err(storage_error("fill", "not kept, and its reader is too far behind"));
                }
                if own_room && self.fill.followers_keep_up(data.len()) {
                    break;
                }
            }
            drained.await;
        }
        self.hand_over(data);
        Ok(())
    }

    /// `data`, written (or relayed), to the fill's readers.
    fn hand_over(&mut self, data: Bytes) {
        let len = data.len() as u64;
        if self.fill.followers.load(Ordering::Relaxed) > 0 {
            self.fill.recent.lock().push(self.written, data.clone());
        }
        {
            let mut own = self.fill.own.lock();
            if !own.gone && (self.unkept || own.bytes + data.len() <= OWN_MAX) {
                own.bytes += data.len();
                own.chunks.push_back((self.written, data));
            }
        }
        self.written += len;
        self.fill.state.send_replace(FillState::Partial(self.written));
    }

    /// Ends a fill that is not kept: its readers finish with what was
    /// relayed, and the lane hears it was not kept. Pingora's path is told
    /// of an entry of no weight (nothing for its eviction to free): told of
    /// a failure, it disables the request's cache, and with it the answer it
    /// still reads from this fill (a 500, or an answer cut short).
    fn finish_unkept(&mut self) -> Result<MissFinishType> {
        self.fill.state.send_replace(FillState::Complete(self.written));
        self.done = true;
        if !self.relay {
            return Ok(MissFinishType::Created(0));
        }
        Err(storage_error("fill", "not kept: a write failed"))
    }

    /// Others follow the fill (a stampede's clients), not only its own reader.
    pub fn followed(&self) -> bool {
        self.fill.followers.load(Ordering::Relaxed) > 0
    }

    /// Bytes held for the fill's own reader.
    #[cfg(test)]
    pub(super) fn own_bytes(&self) -> usize {
        self.fill.own.lock().bytes
    }

    fn aborted(&self) -> Result<()> {
        if self.fill.aborted.load(Ordering::SeqCst) {
            return Err(storage_error("fill", "purged while filling"));
        }
        Ok(())
    }
}

#[async_trait]
impl HandleMiss for Filler {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        self.aborted()?;
        if data.is_empty() {
            return Ok(());
        }
        if self.unkept {
            return self.relay(data).await;
        }
        let len = data.len() as u64;
        // Into the fill's tail, for its readers and its writer, which
        // writes it to the file off the request's path (see
        // [`UNWRITTEN_MAX`]). A small body is not written at all: held
        // whole until its durable write (see [`FILL_MEMORY_MAX`]).
        self.whole &= self.written + len <= FILL_MEMORY_MAX;
        let (failed, make) = {
            let mut tail = self.fill.tail.lock();
            let failed = tail.failed.clone();
            if failed.is_none() {
                tail.push(data.clone());
                if tail.counted {
                    self.store.unwritten.send_modify(|b| *b += len);
                }
            }
            (failed, !self.whole && self.fill.reader.get().is_none() && tail.bytes >= PAGE)
        };
        let made = if make { self.make_file() } else { Ok(()) };
        if let Some(e) = failed.map(|e| storage_error("write", e)).or(made.err()) {
            self.unkeep(&e);
            return self.relay(data).await;
        }
        self.write_out();
        self.hand_over(data);
        // Past the bound, the fill takes no more until its writer has
        // written some: the disk's pace.
        let max = self.store.unwritten_max;
        let _ = self.store.unwritten.subscribe().wait_for(|b| *b <= max).await;
        Ok(())
    }

    /// The body is whole: readers (the request that filled it, and every
    /// waiter) finish now, and the durable write (sync, rename, meta) and
    /// the memory tier's copy of a small body are made off the request's
    /// path, the durable write after [`flush_delay`] (with too many
    /// waiting, at once and on the request's path). Until
    /// then the fill stays where lookups find it; a crash before the rename
    /// loses the copy (fetched again), never serves part.
    async fn finish(mut self: Box<Self>) -> Result<MissFinishType> {
        self.aborted()?;
        if self.unkept {
            return self.finish_unkept();
        }
        // The last bytes go to the file too, if it has one or the body is
        // a page or more and not held whole: by its writer, off the
        // request's path (the durable write waits for it). A body held
        // whole (or smaller than a page) stays in the tail, for readers
        // and the durable write.
        let (failed, make) = {
            let mut tail = self.fill.tail.lock();
            tail.last = true;
            (tail.failed.clone(), !self.whole && self.fill.reader.get().is_none() && tail.bytes >= PAGE)
        };
        let made = if make { self.make_file() } else { Ok(()) };
        if let Some(e) = failed.map(|e| storage_error("write", e)).or(made.err()) {
            self.unkeep(&e);
            return self.finish_unkept();
        }
        self.write_out();
        let store = self.store;
        let epoch = store.purge_epoch();
        // What memory or a mapping held for the key (a 404, an older
        // answer) must not go on standing in front of the new answer. The
        // mapped tier first: a hot mapping brought back to memory meanwhile
        // is then either taken out below or sees its mapping gone (see
        // `placement`).
        store.mapped.remove(&self.primary);
        store.memory.remove(&self.primary);
        self.fill.state.send_replace(FillState::Complete(self.written));
        self.done = true;
        store.publishing.send_modify(|n| *n += 1);
        store.finishes.fetch_add(1, Ordering::Relaxed);
        let holds = self.fill.reader.get().is_some();
        let mut holding = 0;
        store.holding.send_if_modified(|n| {
            *n += usize::from(holds);
            holding = *n;
            false
        });
        let held = if holds { 0 } else { self.written + self.fill.meta.header_bytes() as u64 + HELD_FILL_BYTES };
        let mut held_bytes = 0;
        store.held_bytes.send_if_modified(|b| {
            *b += held;
            held_bytes = *b;
            false
        });
        // Asked to hurry from here on, or not to wait at all: shutting
        // down, or too many fills wait: more than `pending_max` holding a
        // descriptor, or more than `held_max` bytes held whole.
        let mut hurry = store.hurry.subscribe();
        let (over_descriptors, over_bytes) = (holding > store.pending_max, held_bytes > store.held_max);
        let over = over_descriptors || over_bytes;
        let wait = !store.draining.load(Ordering::SeqCst) && !over;
        if over {
            // Every fill waiting goes to disk with this one, in batches of
            // up to `batch_max`, not one per request past the bound (see
            // `write_batch`).
            store.hurry.send_modify(|n| *n += 1);
        }
        let publish = Publish {
            store,
            hash: std::mem::take(&mut self.hash),
            primary: std::mem::take(&mut self.primary),
            fill: self.fill.clone(),
            written: self.written,
            epoch,
        };
        tokio::spawn(async move {
            let published = match publish.flushed().await {
                Ok(()) => {
                    publish.keep_in_memory().await;
                    if wait {
                        tokio::select! {
                            _ = tokio::time::sleep(publish.store.flush_delay) => {}
                            _ = hurry.changed() => {}
                        }
                    }
                    publish.run().await
                }
                Err(e) => {
                    publish.drop_unwritten();
                    Err(e)
                }
            };
            if let Err(e) = published {
                tracing::warn!(key = %publish.primary, error = %e, "cache fill not kept on disk");
            }
            // (Waiters hear of it once it falls under the bound.)
            let max = publish.store.pending_max;
            publish.store.holding.send_if_modified(|n| {
                let over = *n > max;
                *n -= usize::from(holds);
                over && *n <= max
            });
            let max = publish.store.held_max;
            publish.store.held_bytes.send_if_modified(|b| {
                let over = *b > max;
                *b -= held;
                over && *b <= max
            });
            publish.store.publishing.send_modify(|n| *n -= 1);
        });
        // Past a bound, the request that filled waits until what fills
        // hold is under it again (a batch or so, not every fill hurried
        // before it): the descriptors of those in temp files, and the bytes
        // of those held whole. Fills then finish no faster than the disk
        // takes them, and what they hold stays bounded. Without this, a
        // steady stream of cold misses (wrk over unique keys, 10
        // connections) held 19 465 descriptors after 19 s and rising, of
        // the edge's 20 000. Waiting for its own durable write instead, a
        // request past the descriptors' bound found its write in the batch
        // after the one being written, and each batch then held only the
        // few fills made meanwhile: 8 000 new 128 KiB zips (10 connections)
        // went at 795–1 264 a second, slowest 0.7–1.7 s, against 1 313–
        // 1 424, slowest 0.25–0.42 s, now. (In a task of its own: a request
        // that goes away leaves it whole.)
        if over_descriptors {
            let _ = store.holding.subscribe().wait_for(|n| *n <= store.pending_max).await;
        }
        if over_bytes {
            let _ = store.held_bytes.subscribe().wait_for(|b| *b <= store.held_max).await;
        }
        Ok(MissFinishType::Created(self.written as usize + self.fill.meta.header_bytes()))
    }

    fn streaming_write_tag(&self) -> Option<&[u8]> {
        // The fill's id: the request that writes finds its own fill by it.
        Some(self.fill.tag.as_bytes())
    }
}

/// Writes what `fill`'s tail holds to its file, as it comes, until it
/// holds no more to write (up to its last page boundary until the fill is
/// finished); on a thread of the writes' pool (see [`UNWRITTEN_MAX`]). A
/// failed write stops it, and the fill is not kept; a fill dropped or
/// purged stops it too.
pub(super) fn write_out(store: &'static CacheStore, fill: &Fill) {
    loop {
        #[cfg(test)]
        if let Some(gate) = &store.write_gate {
            let mut open = gate.0.lock();
            gate.1.wait_while(&mut open, |open| !*open);
        }
        let (at, pieces) = {
            let mut tail = fill.tail.lock();
            let stop = fill.aborted.load(Ordering::SeqCst) || matches!(*fill.state.borrow(), FillState::Failed);
            let pieces = if stop { Vec::new() } else { tail.next_write() };
            if pieces.is_empty() {
                tail.writing = false;
                if stop && std::mem::take(&mut tail.counted) {
                    store.uncount(tail.bytes);
                }
                drop(tail);
                fill.wrote.send_replace(());
                return;
            }
            (tail.in_file, pieces)
        };
        let n: u64 = pieces.iter().map(|p| p.len() as u64).sum();
        let slices: Vec<&[u8]> = pieces.iter().map(|p| &p[..]).collect();
        let wrote = match fill.reader.get() {
            Some(file) => write_all_at(file, &slices, at),
            None => Err(storage_error("write", "the fill has no file")),
        };
        let failed = {
            let mut tail = fill.tail.lock();
            match wrote {
                Ok(()) => {
                    tail.wrote(n);
                    store.uncount(n);
                    false
                }
                Err(e) => {
                    tracing::warn!(key = %fill.primary, error = %e, "cache fill's file not written");
                    tail.failed = Some(e.to_string());
                    tail.writing = false;
                    if std::mem::take(&mut tail.counted) {
                        store.uncount(tail.bytes);
                    }
                    true
                }
            }
        };
        fill.wrote.send_replace(());
        if failed {
            return;
        }
    }
}

/// Writes `pieces` one after another from `offset`, in one call when the
/// kernel takes them whole.
fn write_all_at(file: &File, pieces: &[&[u8]], mut offset: u64) -> Result<()> {
    let mut slices: Vec<std::io::IoSlice> = pieces.iter().map(|p| std::io::IoSlice::new(p)).collect();
    let mut rest = &mut slices[..];
    // (Empty pieces in front go: nothing at all to write is no call.)
    std::io::IoSlice::advance_slices(&mut rest, 0);
    while !rest.is_empty() {
        match rustix::io::pwritev(file, rest, offset) {
            Ok(0) => return Err(storage_error("write", std::io::Error::from(std::io::ErrorKind::WriteZero))),
            Ok(n) => {
                offset += n as u64;
                std::io::IoSlice::advance_slices(&mut rest, n);
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(storage_error("write", e)),
        }
    }
    Ok(())
}

/// The durable write of a finished fill.
struct Publish {
    store: &'static CacheStore,
    hash: String,
    primary: String,
    fill: Arc<Fill>,
    written: u64,
    /// Purges done when the fill finished: a purge since then keeps its
    /// body out of the memory tier.
    epoch: u64,
}

impl Publish {
    /// Waits until the fill's writer has written all of it to its file
    /// (at once for a body held whole); an error if a write failed.
    async fn flushed(&self) -> Result<()> {
        let mut wrote = self.fill.wrote.subscribe();
        loop {
            {
                let tail = self.fill.tail.lock();
                if let Some(e) = &tail.failed {
                    return Err(storage_error("write", e.clone()));
                }
                let aborted = self.fill.aborted.load(Ordering::SeqCst);
                if aborted || !tail.counted || (!tail.writing && tail.bytes == 0) {
                    return Ok(());
                }
            }
            if wrote.changed().await.is_err() {
                return Err(storage_error("write", "the fill's writer went"));
            }
        }
    }

    /// A fill whose file was not written whole: lookups no longer find it,
    /// and its temp file goes. (Its readers had their answers from its
    /// tail.)
    fn drop_unwritten(&self) {
        {
            let mut fills = self.store.fills.lock();
            if fills.get(&self.hash).is_some_and(|f| f.id == self.fill.id) {
                fills.remove(&self.hash);
            }
        }
        let _ = std::fs::remove_file(&self.fill.part);
    }

    /// A small body enters the memory tier now, off the request's path (a
    /// copy made while serving cost every miss): one held whole as it is,
    /// one in a file read back; a larger one on its
    /// first hit (see [`FILL_MEMORY_MAX`]).
    async fn keep_in_memory(&self) {
        let store = self.store;
        if store.memory_object_max == 0 || self.written > store.memory_object_max.min(FILL_MEMORY_MAX) {
            return;
        }
        let (written, files) = (self.written as usize, store.files.clone());
        let read = match self.fill.reader.get().cloned() {
            None => Ok(MemBody::new(self.fill.tail.lock().whole().to_vec(), &files)),
            Some(reader) => {
                store
                    .durable
                    .run(move || {
                        let mut body = vec![0; written];
                        reader.read_exact_at(&mut body, 0)?;
                        Ok(MemBody::new(body, &files))
                    })
                    .await
            }
        };
        match read {
            Ok(body) if !self.fill.aborted.load(Ordering::SeqCst) => {
                let obj = MemObject::new(&self.primary, self.fill.meta.clone(), body);
                store.promote(&self.primary, Arc::new(obj), self.epoch);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(key = %self.primary, error = %e, "cache fill not kept in memory"),
        }
    }

    async fn run(&self) -> Result<()> {
        let (store, generation) = (self.store, self.fill.id);
        if self.fill.aborted.load(Ordering::SeqCst) {
            // Purged or dropped while it waited: nothing of it is published
            // (and what a later fill of the key publishes is left alone).
            let _ = std::fs::remove_file(&self.fill.part);
            return Ok(());
        }
        let hash = self.hash.clone();
        let file = self.fill.reader.get().map(|file| (file.clone(), self.fill.part.clone()));
        let whole = file.is_none().then(|| self.fill.tail.lock().whole());
        // A body held whole goes inside its meta if smaller than a page,
        // else into its body file.
        let (inline, held) = match whole {
            Some(body) if body.len() as u64 >= PAGE => (None, Some(body)),
            whole => (whole, None),
        };
        let parts = self.fill.meta.clone();
        let job = Durable {
            file,
            held,
            body: store.body_path(&hash, generation),
            shard: store.shard(&hash),
            meta_tmp: store.tmp.join(format!("{hash}.{generation}.meta")),
            meta_path: store.meta_path(&hash),
            meta: MetaFile { generation, body_len: self.written, primary: self.primary.clone(), parts, inline },
            fresh: !store.shared() && !store.index.lock().by_hash.contains_key(&hash),
            hash,
        };
        let published = store.write_durably(job).await.map_err(|e| storage_error("publish", e));
        if published.is_ok() && !self.fill.aborted.load(Ordering::SeqCst) {
            store.index.lock().insert(&self.hash, &self.primary, self.written);
            // (A lookup may have mapped the previous body meanwhile; one of
            // this body is made again on its next hit.)
            store.mapped.remove(&self.primary);
        }
        // Lookups go to disk (or memory) from here on. Only now, after the
        // index has it: a prefix purge reads the fills, then the index.
        {
            let mut fills = store.fills.lock();
            if fills.get(&self.hash).is_some_and(|f| f.id == self.fill.id) {
                fills.remove(&self.hash);
            }
        }
        // A purge that came while publishing wins.
        if published.is_err() || self.fill.aborted.load(Ordering::SeqCst) {
            let _ = std::fs::remove_file(&self.fill.part);
            if published.is_err() {
                // (Placed, but no meta names it.)
                let _ = std::fs::remove_file(store.body_path(&self.hash, generation));
            }
            if self.fill.aborted.load(Ordering::SeqCst) {
                let _ = store.remove(&self.hash, true).await;
            }
        }
        published
    }
}

/// One finished fill's durable write.
pub(super) struct Durable {
    /// The body's temp file and its path, renamed into place; none for a
    /// body held whole (then its meta file holds one smaller than a page).
    file: Option<(Arc<File>, PathBuf)>,
    /// A body held whole of a page or more (see [`FILL_MEMORY_MAX`]),
    /// written straight into its place.
    held: Option<Bytes>,
    body: PathBuf,
    shard: PathBuf,
    hash: String,
    meta: MetaFile,
    meta_tmp: PathBuf,
    meta_path: PathBuf,
    /// The key had no entry on disk when the fill finished.
    fresh: bool,
}

/// Durable writes queued for the one writer, and whether it is at work.
#[derive(Default)]
pub(super) struct Batch {
    queued: Vec<(Durable, oneshot::Sender<std::io::Result<()>>)>,
    writing: bool,
}

impl CacheStore {
    /// Makes `job` durable: queued for the one writer, which takes the jobs
    /// queued while it wrote the last ones as its next batch, up to
    /// `batch_max` of them.
    async fn write_durably(&'static self, job: Durable) -> std::io::Result<()> {
        let (done, written) = oneshot::channel();
        let start = {
            let mut batch = self.batch.lock();
            batch.queued.push((job, done));
            !std::mem::replace(&mut batch.writing, true)
        };
        if start {
            tokio::spawn(async move {
                let wrote = self.durable.run(move || {
                    self.write_batches();
                    Ok(())
                });
                if let Err(e) = wrote.await {
                    // (Only when its threads are gone: all queued fail.)
                    let queued = {
                        let mut batch = self.batch.lock();
                        batch.writing = false;
                        std::mem::take(&mut batch.queued)
                    };
                    for (_, done) in queued {
                        let _ = done.send(Err(std::io::Error::new(e.kind(), e.to_string())));
                    }
                }
            });
        }
        written.await.unwrap_or_else(|_| Err(std::io::Error::other("durable write dropped")))
    }

    fn write_batches(&self) {
        loop {
            let batch = {
                let mut batch = self.batch.lock();
                if batch.queued.is_empty() {
                    batch.writing = false;
                    return;
                }
                let n = batch.queued.len().min(self.batch_max);
                batch.queued.drain(..n).collect()
            };
            #[cfg(test)]
            if let Some(gate) = &self.batch_gate {
                let mut left = gate.0.lock();
                gate.1.wait_while(&mut left, |left| *left == 0);
                *left -= 1;
            }
            write_batch(&self.root, batch);
        }
    }
}

/// Makes a batch of finished fills durable, each as one alone is: its body
/// on disk before it is renamed into place, then its meta written, on disk,
/// and renamed over the one before. A fill alone syncs its own two files,
/// (a body held whole is written into its place, not renamed there), or
/// one if its body is held whole inside its meta (after [`flush_delay`]
/// they cost a flush, not a write). Several sync the file system once for
/// all their bodies (unless every body is held whole) and once for all
/// their metas (`syncfs`), where each fill's two syncs waited for the disk
/// in turn: in a steady stream of cold misses, past the bound of fills that
/// wait, every fill pays its durable write at once (see [`PENDING_MAX`]).
fn write_batch(root: &File, batch: Vec<(Durable, oneshot::Sender<std::io::Result<()>>)>) {
    let alone = batch.len() == 1;
    let copy = |e: &std::io::Error| std::io::Error::new(e.kind(), e.to_string());
    // Bodies in temp files are on disk before they are renamed into place,
    // those held whole (a page or more) written into place (those smaller
    // are written with their metas).
    let written: Vec<std::io::Result<()>> = batch
        .iter()
        .map(|(job, _)| match (&job.file, &job.held) {
            (Some((file, _)), _) if alone => file.sync_data(),
            (_, Some(body)) => job.write_held(body, alone),
            _ => Ok(()),
        })
        .collect();
    let files = batch.iter().any(|(job, _)| job.file.is_some() || job.held.is_some());
    let bodies = if alone || !files { Ok(()) } else { rustix::fs::syncfs(root).map_err(Into::into) };
    // (A key filled twice in one batch: the second replaces the first.)
    let mut placed_here: HashMap<&str, u64> = HashMap::new();
    let mut placed = Vec::with_capacity(batch.len());
    for ((job, _), written) in batch.iter().zip(written) {
        let p = match (&bodies, written) {
            (Ok(()), Ok(())) => job.place(alone, placed_here.get(job.hash.as_str()).copied()),
            (Err(e), _) => Err(copy(e)),
            (_, Err(e)) => Err(e),
        };
        if p.is_ok() {
            placed_here.insert(&job.hash, job.meta.generation);
        }
        placed.push(p);
    }
    if !alone && placed.iter().any(Result::is_ok) {
        if let Err(e) = rustix::fs::syncfs(root) {
            let e = std::io::Error::from(e);
            for ((job, _), p) in batch.iter().zip(placed.iter_mut()) {
                if let Ok(Placed::InPlace) = p {
                    let _ = std::fs::remove_file(&job.meta_path);
                }
                if p.is_ok() {
                    *p = Err(copy(&e));
                }
            }
        }
    }
    for ((job, done), placed) in batch.into_iter().zip(placed) {
        let _ = done.send(placed.and_then(|placed| job.replace_meta(placed)));
    }
}

/// Where a fill's new meta is once placed.
enum Placed {
    /// Written where it belongs: the key had none.
    InPlace,
    /// Beside, to be renamed over the one there, of this generation.
    Beside(Option<u64>),
}

impl Durable {
    /// `op`, and once more after making the shard if it went missing
    /// (they are all made at open).
    fn in_shard(&self, op: impl Fn() -> std::io::Result<()>) -> std::io::Result<()> {
        op().or_else(|e| match e.kind() {
            std::io::ErrorKind::NotFound => std::fs::create_dir_all(&self.shard).and_then(|()| op()),
            _ => Err(e),
        })
    }

    /// Writes `body`, held whole, into its body file, synced if `alone`
    /// (a new file: no other name has it; removed if the write fails).
    fn write_held(&self, body: &[u8], alone: bool) -> std::io::Result<()> {
        let write = || {
            let mut file = std::fs::OpenOptions::new().write(true).create_new(true).open(&self.body)?;
            file.write_all(body).and_then(|()| if alone { file.sync_data() } else { Ok(()) })
        };
        let wrote = self.in_shard(write);
        if wrote.is_err() {
            let _ = std::fs::remove_file(&self.body);
        }
        wrote
    }

    /// Renames the body (on disk) into place, if it is in a temp file, and
    /// writes the new meta (with the body, if held whole), synced if
    /// `alone`: in its place for a key that had none (`fresh`, and not
    /// placed `earlier` in the batch), else beside, with the generation it
    /// replaces (the one placed `earlier`, or the one on disk). A meta is
    /// the last thing written in place, and a crash's short or damaged one
    /// is removed at start: a new key's durable write needs no rename of
    /// it, which was the dearest part of its write (in batches of 800 cold
    /// misses, 200 of their 450 ms), and one held whole is one file.
    fn place(&self, alone: bool, earlier: Option<u64>) -> std::io::Result<Placed> {
        if let Some((_, part)) = &self.file {
            self.in_shard(|| std::fs::rename(part, &self.body))?;
        }
        let write = |path: &Path, create_new: bool| -> std::io::Result<()> {
            let mut meta = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .create_new(create_new)
                .open(path)?;
            let wrote =
                meta.write_all(&self.meta.encode()).and_then(|()| if alone { meta.sync_data() } else { Ok(()) });
            if wrote.is_err() {
                let _ = std::fs::remove_file(path);
            }
            wrote
        };
        if self.fresh && earlier.is_none() {
            match self.in_shard(|| write(&self.meta_path, true)) {
                // (One there after all: another process's, or a fill's
                // placed meanwhile; replaced as any other.)
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                placed => return placed.map(|()| Placed::InPlace),
            }
        }
        let on_disk = || std::fs::read(&self.meta_path).ok().and_then(|b| MetaFile::decode(&b)).map(|m| m.generation);
        let previous = earlier.or_else(on_disk);
        write(&self.meta_tmp, false)?;
        Ok(Placed::Beside(previous))
    }

    /// The new meta (on disk) in place of the old, whose body goes.
    fn replace_meta(&self, placed: Placed) -> std::io::Result<()> {
        let Placed::Beside(previous) = placed else { return Ok(()) };
        self.in_shard(|| std::fs::rename(&self.meta_tmp, &self.meta_path))?;
        if let Some(g) = previous.filter(|g| *g != self.meta.generation) {
            let _ = std::fs::remove_file(self.shard.join(format!("{}.{g}.body", self.hash)));
        }
        Ok(())
    }
}

impl Drop for Filler {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.fill.state.send_replace(FillState::Failed);
        {
            // (A writer at work stops on its own, and uncounts them.)
            let mut tail = self.fill.tail.lock();
            if !tail.writing && std::mem::take(&mut tail.counted) {
                self.store.uncount(tail.bytes);
            }
        }
        let mut fills = self.store.fills.lock();
        if fills.get(&self.hash).is_some_and(|f| f.id == self.fill.id) {
            fills.remove(&self.hash);
        }
        let _ = std::fs::remove_file(&self.fill.part);
    }
}
