//! Reading a cached body: from the memory tier, from a complete file (as
//! slices of its mapping), or from a file still being filled.

use super::*;

/// Reads a cached body: from memory, from a complete file, or from a file
/// still being filled.
pub(super) enum Hit {
    Memory {
        body: Bytes,
        start: usize,
        end: usize,
        done: bool,
    },
    /// A complete body on disk.
    Disk {
        body: DiskBody,
        pos: usize,
        end: usize,
    },
    Partial {
        fill: Arc<Fill>,
        state: watch::Receiver<FillState>,
        pos: u64,
        /// Whether this is the filling request's own reader: it takes the
        /// chunks the writer hands it, and reads the file only where the
        /// writer held none (past [`OWN_MAX`]). Any other takes the fill's
        /// recent chunks, and reads the file where it fell behind them.
        own: bool,
        /// Any other's place in the body, which a fill not kept waits for
        /// (see [`Fill::followers_keep_up`]).
        place: Option<Arc<AtomicU64>>,
    },
}

/// A complete body on disk: mapped (chunks are slices of the mapping, so
/// serving one costs a single copy, into the socket), or read where it
/// cannot be mapped safely.
pub(super) enum DiskBody {
    Mapped(Arc<super::mapped::Mapped>),
    File { file: Arc<File>, len: usize },
}

impl DiskBody {
    pub(super) fn len(&self) -> usize {
        match self {
            DiskBody::Mapped(m) => m.len(),
            DiskBody::File { len, .. } => *len,
        }
    }

    async fn chunk(&self, from: usize, to: usize) -> Result<Bytes> {
        match self {
            DiskBody::Mapped(m) => m.chunk(from, to).map_err(|e| storage_error("read", e)),
            DiskBody::File { file, .. } => match read_at(file, from as u64, to - from).await? {
                c if c.is_empty() => Err(storage_error("read", "the cached body file is shorter than its record")),
                c => Ok(c),
            },
        }
    }
}

/// Reads up to `n` bytes at `pos`. Data in the page cache (a hot zip) is
/// read right here, without blocking (`RWF_NOWAIT`): a hop to the blocking
/// pool costs more than the copy. Anything else is read on the blocking pool.
/// May return fewer bytes than asked; callers advance by what they got.
async fn read_at(file: &Arc<File>, pos: u64, n: usize) -> Result<Bytes> {
    let mut buf = vec![0u8; n];
    let nowait = rustix::io::preadv2(
        &**file,
        &mut [std::io::IoSliceMut::new(&mut buf)],
        pos,
        rustix::io::ReadWriteFlags::NOWAIT,
    );
    if let Some(got) = nowait.ok().filter(|got| *got > 0) {
        buf.truncate(got);
        return Ok(Bytes::from(buf));
    }
    let file = file.clone();
    tokio::task::spawn_blocking(move || {
        let mut got = 0;
        while got < n {
            match file.read_at(&mut buf[got..], pos + got as u64)? {
                0 => break,
                k => got += k,
            }
        }
        buf.truncate(got);
        Ok::<_, std::io::Error>(Bytes::from(buf))
    })
    .await
    .map_err(|e| storage_error("read", e))?
    .map_err(|e| storage_error("read", e))
}

impl Drop for Hit {
    /// A follower no more; the chunks held for the filling request's reader
    /// go with it, and the writer holds no more (the fill lives on while
    /// others follow it).
    fn drop(&mut self) {
        let Hit::Partial { fill, own, .. } = self else { return };
        if *own {
            let mut own = fill.own.lock();
            own.chunks.clear();
            own.bytes = OWN_MAX;
            own.gone = true;
            fill.drained.notify_one();
        } else {
            if fill.followers.fetch_sub(1, Ordering::Relaxed) == 1 {
                *fill.recent.lock() = Recent::default();
            }
            // (A writer waiting for this follower goes on.)
            fill.drained.notify_one();
        }
    }
}

#[async_trait]
impl HandleHit for Hit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        match self {
            Hit::Memory { body, start, end, done } => {
                if *done {
                    return Ok(None);
                }
                *done = true;
                Ok(Some(body.slice(*start..*end)))
            }
            Hit::Disk { body, pos, end } => {
                if *pos >= *end {
                    return Ok(None);
                }
                let next = (*pos + MAPPED_CHUNK).min(*end);
                let chunk = body.chunk(*pos, next).await?;
                *pos += chunk.len();
                Ok(Some(chunk))
            }
            Hit::Partial { fill, state, pos, own, place } => loop {
                let now = *state.borrow_and_update();
                let mut available = match now {
                    FillState::Failed => return Err(storage_error("read", "the fill this read follows failed")),
                    FillState::Complete(n) if n == *pos => return Ok(None),
                    FillState::Complete(n) | FillState::Partial(n) => n,
                };
                if *own {
                    let mut own = fill.own.lock();
                    // (A writer that relays waits for this.)
                    fill.drained.notify_one();
                    while let Some((at, chunk)) = own.chunks.pop_front() {
                        own.bytes -= chunk.len();
                        match at.cmp(pos) {
                            // Taken already by a read of the file.
                            std::cmp::Ordering::Less => continue,
                            std::cmp::Ordering::Equal => {
                                *pos += chunk.len() as u64;
                                return Ok(Some(chunk));
                            }
                            // A gap the writer held nothing for: the file
                            // has it, up to this chunk.
                            std::cmp::Ordering::Greater => {
                                own.bytes += chunk.len();
                                own.chunks.push_front((at, chunk));
                                available = available.min(at);
                                break;
                            }
                        }
                    }
                }
                if available > *pos {
                    let recent = if *own { None } else { fill.recent.lock().slice(*pos, available) };
                    if let Some(chunk) = recent {
                        *pos += chunk.len() as u64;
                        fill.followed(place.as_deref(), *pos);
                        return Ok(Some(chunk));
                    }
                    // The file, as far as it goes; past it, the bytes its
                    // writer has yet to write.
                    let (in_file, tail) = {
                        let tail = fill.tail.lock();
                        (tail.in_file, tail.slice(*pos, available))
                    };
                    if *pos >= in_file {
                        if let Some(chunk) = tail {
                            *pos += chunk.len() as u64;
                            fill.followed(place.as_deref(), *pos);
                            return Ok(Some(chunk));
                        }
                        // Past the tail of a fill not kept, only its own
                        // reader is handed the chunks.
                        if fill.unkept.load(Ordering::SeqCst) {
                            return Err(storage_error("read", "the fill this read follows is not kept"));
                        }
                    } else {
                        // A finished fill is read as a published body is,
                        // from its mapping: a stampede's followers that
                        // fell behind the recent chunks read most of the
                        // body after its fill finished, and a read copied
                        // (and zeroed) each chunk once more (27 % of the
                        // edge's time, `perf`).
                        if let (FillState::Complete(len), true, Some(map)) = (now, fill.on_file(), fill.mapping()) {
                            if map.len() as u64 != len {
                                return Err(storage_error("read", "the fill's file was cut short"));
                            }
                            let at = *pos as usize;
                            *self = Hit::Disk { body: DiskBody::Mapped(map), pos: at, end: len as usize };
                            return self.read_body().await;
                        }
                        // While it is written, from its mapping too, if
                        // its file was made as long as the body (see
                        // `Fill::mapping`): bytes below `in_file` only.
                        if let Some(map) = fill.mapping() {
                            let to = (*pos + MAPPED_CHUNK as u64).min(available.min(in_file));
                            if to as usize > map.len() {
                                return Err(storage_error("read", "the fill's file was cut short"));
                            }
                            let chunk = map.chunk(*pos as usize, to as usize).map_err(|e| storage_error("read", e))?;
                            *pos = to;
                            fill.followed(place.as_deref(), *pos);
                            return Ok(Some(chunk));
                        }
                        let n = CHUNK.min((available.min(in_file) - *pos) as usize);
                        let Some(file) = fill.reader.get() else {
                            return Err(storage_error("read", "the fill has no file"));
                        };
                        let chunk = read_at(file, *pos, n).await?;
                        if chunk.is_empty() {
                            return Err(storage_error("read", "the fill's file is shorter than what was written"));
                        }
                        *pos += chunk.len() as u64;
                        fill.followed(place.as_deref(), *pos);
                        return Ok(Some(chunk));
                    }
                }
                if state.changed().await.is_err() {
                    // The writer is gone; its last word stands.
                    if !matches!(*state.borrow(), FillState::Complete(_)) {
                        return Err(storage_error("read", "the fill this read follows stopped"));
                    }
                }
            },
        }
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        !matches!(self, Hit::Partial { .. })
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        match self {
            Hit::Memory { body, start: s, end: e, done } => {
                if start >= body.len() {
                    return Error::e_explain(ErrorType::InternalError, "seek past the end");
                }
                *s = start;
                *e = end.map_or(body.len(), |end| end.min(body.len()));
                *done = false;
            }
            Hit::Disk { body, pos, end: e } => {
                if start >= body.len() {
                    return Error::e_explain(ErrorType::InternalError, "seek past the end");
                }
                *pos = start;
                *e = end.map_or(body.len(), |end| end.min(body.len()));
            }
            Hit::Partial { .. } => return Error::e_explain(ErrorType::InternalError, "seek while filling"),
        }
        Ok(())
    }

    fn should_count_access(&self) -> bool {
        !matches!(self, Hit::Partial { .. })
    }

    fn get_eviction_weight(&self) -> usize {
        match self {
            Hit::Memory { body, .. } => body.len(),
            Hit::Disk { body, .. } => body.len(),
            Hit::Partial { .. } => 0,
        }
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn std::any::Any + Send + Sync) {
        self
    }
}
