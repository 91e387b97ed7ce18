//! Writing one fill: the body to a temp file readers can follow, then
//! published in place (synced, renamed, meta replaced), or dropped.

use super::*;

/// Writes one fill.
pub(super) struct Filler {
    store: &'static CacheStore,
    hash: String,
    primary: String,
    fill: Arc<Fill>,
    file: Option<File>,
    written: u64,
    done: bool,
}

impl Filler {
    pub(super) fn new(
        store: &'static CacheStore,
        hash: String,
        primary: String,
        fill: Arc<Fill>,
        file: File,
    ) -> Filler {
        Filler { store, hash, primary, fill, file: Some(file), written: 0, done: false }
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
        let Some(file) = self.file.take() else { return Err(storage_error("fill", "write after failure")) };
        let len = data.len() as u64;
        // Into the page cache, right here: a buffered write is a memory copy,
        // and a hop to the blocking pool per chunk (16 for a 1 MiB zip) stood
        // in every miss's path. As nginx does, cache files are written on the
        // event loop; the sync, which may block for long, runs on the pool.
        file.write_all_at(&data, self.written).map_err(|e| storage_error("write", e))?;
        self.file = Some(file);
        if self.fill.followers.load(Ordering::Relaxed) > 0 {
            self.fill.recent.lock().push(self.written, data.clone());
        }
        {
            let mut own = self.fill.own.lock();
            if own.bytes + data.len() <= OWN_MAX {
                own.bytes += data.len();
                own.chunks.push_back((self.written, data));
            }
        }
        self.written += len;
        self.fill.state.send_replace(FillState::Partial(self.written));
        Ok(())
    }

    /// The body is whole: readers (the request that filled it, and every
    /// waiter) finish now, and the durable write (sync, rename, meta) and
    /// the memory tier's copy of a small body are made off the request's
    /// path. Until then the fill stays where lookups find it; a crash
    /// before the rename loses the copy (fetched again), never serves part.
    async fn finish(mut self: Box<Self>) -> Result<MissFinishType> {
        self.aborted()?;
        let Some(file) = self.file.take() else { return Err(storage_error("fill", "finish after failure")) };
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
        let publish = Publish {
            store,
            hash: std::mem::take(&mut self.hash),
            primary: std::mem::take(&mut self.primary),
            fill: self.fill.clone(),
            written: self.written,
            epoch,
        };
        tokio::spawn(async move {
            if let Err(e) = publish.run(file).await {
                tracing::warn!(key = %publish.primary, error = %e, "cache fill not kept on disk");
            }
            publish.store.publishing.send_modify(|n| *n -= 1);
        });
        Ok(MissFinishType::Created(self.written as usize + self.fill.meta.header_bytes()))
    }

    fn streaming_write_tag(&self) -> Option<&[u8]> {
        // The fill's id: the request that writes finds its own fill by it.
        Some(self.fill.tag.as_bytes())
    }
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
    async fn run(&self, file: File) -> Result<()> {
        let (store, generation) = (self.store, self.fill.id);
        let (parts, primary) = (self.fill.meta.clone(), self.primary.clone());
        let (part, body, meta_path) =
            (self.fill.part.clone(), store.body_path(&self.hash, generation), store.meta_path(&self.hash));
        let (shard, hash) = (store.shard(&self.hash), self.hash.clone());
        let meta_tmp = store.tmp.join(format!("{hash}.{generation}.meta"));
        // A small body enters the memory tier now, read back here, off the
        // request's path (a copy made while serving cost every miss); a
        // larger one on its first hit (see [`FILL_MEMORY_MAX`]).
        let (reader, small) = (
            self.fill.reader.clone(),
            store.memory_object_max > 0 && self.written <= store.memory_object_max.min(FILL_MEMORY_MAX),
        );
        let (written, files) = (self.written, store.files.clone());
        let published = store
            .durable
            .run(move || -> std::io::Result<Option<MemBody>> {
                file.sync_data()?;
                drop(file);
                std::fs::create_dir_all(&shard)?;
                let previous = std::fs::read(&meta_path).ok().and_then(|b| MetaFile::decode(&b)).map(|m| m.generation);
                std::fs::rename(&part, &body)?;
                let meta = parts.meta().serialize().map_err(std::io::Error::other)?;
                let meta = MetaFile { generation, body_len: written, primary, meta };
                sync_write(&meta_tmp, &meta.encode())?;
                std::fs::rename(&meta_tmp, &meta_path)?;
                if let Some(g) = previous.filter(|g| *g != generation) {
                    let _ = std::fs::remove_file(shard.join(format!("{hash}.{g}.body")));
                }
                if !small {
                    return Ok(None);
                }
                let mut body = vec![0; written as usize];
                reader.read_exact_at(&mut body, 0)?;
                Ok(Some(MemBody::new(body, &files)))
            })
            .await
            .map_err(|e| storage_error("publish", e));
        let published = match published {
            Ok(small) if !self.fill.aborted.load(Ordering::SeqCst) => {
                store.index.lock().insert(&self.hash, &self.primary, self.written);
                // (A lookup may have mapped the previous body meanwhile.)
                store.mapped.remove(&self.primary);
                if let Some(body) = small {
                    let obj = MemObject::new(&self.primary, self.fill.meta.clone(), body);
                    store.promote(&self.primary, Arc::new(obj), self.epoch);
                }
                Ok(())
            }
            other => other.map(|_| ()),
        };
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
            if self.fill.aborted.load(Ordering::SeqCst) {
                let _ = store.remove(&self.hash, true).await;
            }
        }
        published
    }
}

impl Drop for Filler {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.fill.state.send_replace(FillState::Failed);
        let mut fills = self.store.fills.lock();
        if fills.get(&self.hash).is_some_and(|f| f.id == self.fill.id) {
            fills.remove(&self.hash);
        }
        let _ = std::fs::remove_file(&self.fill.part);
    }
}
