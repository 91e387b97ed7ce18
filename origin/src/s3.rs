//! The shared store: artifacts in an S3-compatible object store (AWS S3,
//! Ceph RGW, SeaweedFS, Garage, R2) through the `object_store` crate, so
//! that every origin reads what any origin verified and stored.
//!
//! An object holds what a disk file holds: the body, then its trailer
//! record ([`crate::store::trailer`]), written and replaced as one. Bodies
//! stream through local files both ways, never whole in memory: an upload
//! of more than one part is a multipart upload, which S3 makes visible only
//! when it completes, so an origin killed halfway leaves no partial object
//! (only parts a bucket lifecycle rule cleans up). Immutable artifacts are
//! created with `If-None-Match: *`, so two origins that pull the same one
//! during a membership change agree on one copy.
//!
//! The `object_store` client is async; the [`Store`] trait blocks (callers
//! hold it in `spawn_blocking`). The store runs its requests on a runtime
//! of its own and waits for them, so it may be called from any thread.

use std::fs::File;
use std::future::Future;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use modcdn_shared::request::{Kind, Request};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, ObjectStore, PutMode, UpdateVersion, WriteMultipart};
use serde::Deserialize;

use crate::store::{self, Hit, Meta, Record, Staged, Store, Usage};

/// `[store]`: where artifacts are kept.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `disk` (default): `store_dir` alone. `s3`: the object store holds
    /// everything, `store_dir` is a local tier of `store_max_mib` in front.
    pub kind: StoreKind,
    /// The bucket (it must exist). Required for `s3`.
    pub bucket: String,
    /// Key prefix inside the bucket, so origins of several clusters can
    /// share one bucket. Default "".
    pub prefix: String,
    /// The S3 endpoint (`http://127.0.0.1:8333`, `https://rgw.example`);
    /// none: AWS S3 (or `AWS_ENDPOINT_URL`).
    pub endpoint: Option<String>,
    /// Default `us-east-1` (or `AWS_REGION`).
    pub region: Option<String>,
    /// Credentials; none: `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`
    /// from the environment (or the instance's role on AWS).
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Path-style requests (`endpoint/bucket/key`), as SeaweedFS, Ceph RGW
    /// and MinIO want; virtual-hosted style (`bucket.endpoint/key`) when
    /// false. Default false.
    pub path_style: bool,
    /// Longest one request to the object store may take, in ms (an upload
    /// part, a download). Default 60000.
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    #[default]
    Disk,
    S3,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            kind: StoreKind::Disk,
            bucket: String::new(),
            prefix: String::new(),
            endpoint: None,
            region: None,
            access_key_id: None,
            secret_access_key: None,
            path_style: false,
            timeout_ms: 60_000,
        }
    }
}

impl StoreConfig {
    /// Problems with the `[store]` table, each with its key.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut errs = Vec::new();
        if self.kind != StoreKind::S3 {
            return errs;
        }
        if self.bucket.trim().is_empty() {
            errs.push(("store.bucket".into(), "is required when kind = \"s3\"".into()));
        }
        if let Some(endpoint) = &self.endpoint {
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                errs.push(("store.endpoint".into(), format!("{endpoint:?} must be an http:// or https:// URL")));
            }
        }
        if self.access_key_id.is_some() != self.secret_access_key.is_some() {
            errs.push(("store.access_key_id".into(), "access_key_id and secret_access_key go together".into()));
        }
        if self.prefix.split('/').any(|e| e == "." || e == "..") {
            errs.push(("store.prefix".into(), format!("{:?} has a '.' or '..' element", self.prefix)));
        }
        if self.timeout_ms == 0 {
            errs.push(("store.timeout_ms".into(), "must be above 0".into()));
        }
        errs
    }
}

/// Objects at most this large are written in one request; larger ones in
/// parts of this size (S3 wants at least 5 MiB per part).
const PART: usize = 8 << 20;
/// Parts of one upload in flight at once.
const PARTS_IN_FLIGHT: usize = 2;

/// The object store backend.
pub struct S3Store {
    objects: Arc<dyn ObjectStore>,
    /// Elements every key is put under.
    prefix: Vec<String>,
    /// Where bodies being staged or read are kept (its own backend use only).
    scratch: PathBuf,
    runtime: Option<tokio::runtime::Runtime>,
    /// What to call it in messages: `s3://bucket/prefix` at the endpoint.
    name: String,
}

impl S3Store {
    /// Connects and checks that the bucket answers (a start-up error
    /// otherwise, naming it); `scratch` holds temp files.
    pub fn open(config: &StoreConfig, scratch: &Path) -> Result<S3Store, String> {
        let name =
            format!("s3://{}/{} at {}", config.bucket, config.prefix, config.endpoint.as_deref().unwrap_or("AWS S3"));
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&config.bucket)
            .with_virtual_hosted_style_request(!config.path_style)
            .with_client_options(
                object_store::ClientOptions::new()
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_timeout(Duration::from_millis(config.timeout_ms)),
            )
            // A few quick retries: an object store that is down must become
            // a clear 503 soon, not a request that hangs for minutes.
            .with_retry(object_store::RetryConfig {
                max_retries: 2,
                retry_timeout: Duration::from_millis(config.timeout_ms),
                backoff: object_store::BackoffConfig {
                    init_backoff: Duration::from_millis(50),
                    max_backoff: Duration::from_millis(500),
                    base: 2.0,
                },
            });
        if let Some(endpoint) = &config.endpoint {
            builder = builder.with_endpoint(endpoint).with_allow_http(endpoint.starts_with("http://"));
        }
        if let Some(region) = &config.region {
            builder = builder.with_region(region);
        }
        if let (Some(id), Some(secret)) = (&config.access_key_id, &config.secret_access_key) {
            builder = builder.with_access_key_id(id).with_secret_access_key(secret);
        }
        let objects: Arc<dyn ObjectStore> = Arc::new(builder.build().map_err(|e| format!("store ({name}): {e}"))?);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("modcdn-s3")
            .enable_all()
            .build()
            .map_err(|e| format!("store: runtime: {e}"))?;
        std::fs::create_dir_all(scratch).map_err(|e| format!("store scratch {}: {e}", scratch.display()))?;
        let prefix = config.prefix.split('/').filter(|e| !e.is_empty()).map(str::to_string).collect();
        let s3 = S3Store { objects, prefix, scratch: scratch.to_path_buf(), runtime: Some(runtime), name };
        // The bucket must answer now: a wrong endpoint, bucket or key is a
        // start-up error, not a 503 on the first miss.
        let (objects, probe) = (Arc::clone(&s3.objects), s3.path_of_elements(Vec::new()));
        s3.run(async move {
            let mut listing = objects.list(Some(&probe));
            match listing.next().await {
                Some(Err(e)) => Err(io_error(e)),
                _ => Ok(()),
            }
        })
        .map_err(|e| format!("store ({}): {e}", s3.name))?;
        Ok(s3)
    }

    /// Runs `fut` on the store's runtime and waits for it.
    fn run<T: Send + 'static>(&self, fut: impl Future<Output = io::Result<T>> + Send + 'static) -> io::Result<T> {
        let runtime = self.runtime.as_ref().ok_or_else(|| io::Error::other("object store closed"))?;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        runtime.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv().map_err(|_| io::Error::other("object store request ended without an answer"))?
    }

    fn path_of_elements(&self, elements: Vec<String>) -> ObjectPath {
        ObjectPath::from_iter(self.prefix.iter().cloned().chain(elements))
    }

    fn path_of(&self, key: &str) -> io::Result<ObjectPath> {
        Ok(self.path_of_elements(store::stored_elements(key)?))
    }

    /// Streams the object at `key` into `out` (from its start); the record
    /// of its trailer when the object is whole, `None` when there is none.
    pub(crate) fn download(&self, key: &str, out: &File) -> io::Result<Option<Meta>> {
        let (objects, path) = (Arc::clone(&self.objects), self.path_of(key)?);
        let mut writer = out.try_clone()?;
        let found = self.run(async move {
            let got = match objects.get(&path).await {
                Ok(got) => got,
                Err(object_store::Error::NotFound { .. }) => return Ok(false),
                Err(e) => return Err(io_error(e)),
            };
            let mut body = got.into_stream();
            while let Some(chunk) = body.next().await {
                writer.write_all(&chunk.map_err(io_error)?)?;
            }
            Ok(true)
        })?;
        if !found {
            return Ok(None);
        }
        let meta = store::read_trailer(out)?;
        if meta.is_none() {
            tracing::warn!(%key, store = %self.name, "object without a whole trailer record; not served");
        }
        Ok(meta)
    }

    /// Writes the body in `body` (its first `meta.size` bytes) and its
    /// record as the object at `key`: one request up to [`PART`], a
    /// multipart upload past it. An immutable artifact another origin
    /// already stored with the same hash is left as it is.
    pub(crate) fn upload(&self, key: &str, body: &Path, meta: &Meta) -> io::Result<()> {
        let (objects, path) = (Arc::clone(&self.objects), self.path_of(key)?);
        let trailer = store::trailer(meta)?;
        let (immutable, meta, mut file) = (is_immutable(key), meta.clone(), File::open(body)?);
        if file.metadata()?.len() < meta.size {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "staged body shorter than its record"));
        }
        self.run(async move {
            let same = |m: Option<Meta>| m.is_some_and(|m| m.sha256 == meta.sha256 && m.route == meta.route);
            if meta.size + trailer.len() as u64 <= PART as u64 {
                let mut whole = Vec::with_capacity(meta.size as usize + trailer.len());
                (&mut file).take(meta.size).read_to_end(&mut whole)?;
                whole.extend_from_slice(&trailer);
                let mode = if immutable { PutMode::Create } else { PutMode::Overwrite };
                return match objects.put_opts(&path, whole.clone().into(), mode.into()).await {
                    Ok(_) => Ok(()),
                    // Another origin stored it first: keep its copy when it
                    // is this one, replace it when it is not (a copy from
                    // another route, or damaged).
                    Err(object_store::Error::AlreadyExists { .. }) if same(trailer_of(&objects, &path).await?) => {
                        Ok(())
                    }
                    Err(object_store::Error::AlreadyExists { .. }) => {
                        objects.put(&path, whole.into()).await.map(drop).map_err(io_error)
                    }
                    Err(e) => Err(io_error(e)),
                };
            }
            if immutable && same(trailer_of(&objects, &path).await?) {
                return Ok(());
            }
            let mut parts =
                WriteMultipart::new_with_chunk_size(objects.put_multipart(&path).await.map_err(io_error)?, PART);
            let filled = async {
                const CHUNK: u64 = 1 << 20;
                let mut buf = vec![0u8; CHUNK as usize];
                let mut left = meta.size;
                while left > 0 {
                    let n = file.read(&mut buf[..left.min(CHUNK) as usize])?;
                    if n == 0 {
                        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "staged body cut short"));
                    }
                    parts.wait_for_capacity(PARTS_IN_FLIGHT).await.map_err(io_error)?;
                    parts.write(&buf[..n]);
                    left -= n as u64;
                }
                parts.write(&trailer);
                Ok(())
            }
            .await;
            match filled {
                Ok(()) => parts.finish().await.map(drop).map_err(io_error),
                Err(e) => {
                    let _ = parts.abort().await;
                    Err(e)
                }
            }
        })
    }

    /// Creates the small object `name` (a path outside every artifact key:
    /// no module path starts with an element without a dot) unless it
    /// exists; false when another node created it first.
    pub(crate) fn create_small(&self, name: &str, body: Vec<u8>) -> io::Result<bool> {
        let (objects, path) = (Arc::clone(&self.objects), self.path_of(name)?);
        self.run(async move {
            match objects.put_opts(&path, body.into(), PutMode::Create.into()).await {
                Ok(_) => Ok(true),
                Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
                Err(e) => Err(io_error(e)),
            }
        })
    }

    /// The small objects under `dir` whose names sort after `after`, in
    /// name order, with their bodies.
    pub(crate) fn small_after(&self, dir: &str, after: &str) -> io::Result<Vec<(String, Vec<u8>)>> {
        let (objects, dir_path) = (Arc::clone(&self.objects), self.path_of(dir)?);
        let offset = self.path_of(&format!("{dir}/{after}"))?;
        self.run(async move {
            let mut listing = objects.list_with_offset(Some(&dir_path), &offset);
            let mut names = Vec::new();
            while let Some(object) = listing.next().await {
                let object = object.map_err(io_error)?;
                names.push(object.location);
            }
            names.sort();
            let mut out = Vec::new();
            for path in names {
                let body = objects.get(&path).await.map_err(io_error)?.bytes().await.map_err(io_error)?;
                out.push((path.filename().unwrap_or_default().to_string(), body.to_vec()));
            }
            Ok(out)
        })
    }

    /// A temp file in the scratch directory, already unlinked (it lives as
    /// long as the handle).
    fn scratch_file(&self) -> io::Result<File> {
        let temp = store::temp_path(&self.scratch.join("get"));
        let file = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&temp)?;
        std::fs::remove_file(&temp)?;
        Ok(file)
    }
}

/// Artifacts whose bytes never change once published: canonical `.info`,
/// `.mod`, `.zip`, and checksum-database tiles and lookups.
fn is_immutable(key: &str) -> bool {
    Request::parse(&format!("/{key}"))
        .is_ok_and(|r| matches!(r.kind(), Kind::Info | Kind::Mod | Kind::Zip | Kind::SumDbTile | Kind::SumDbLookup))
}

/// The record of the object at `path`, read from its last bytes.
async fn trailer_of(objects: &Arc<dyn ObjectStore>, path: &ObjectPath) -> io::Result<Option<Meta>> {
    let options = GetOptions { range: Some(GetRange::Suffix(store::MAX_TRAILER)), ..GetOptions::default() };
    let got = match objects.get_opts(path, options).await {
        Ok(got) => got,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(io_error(e)),
    };
    let len = got.meta.size;
    let tail = got.bytes().await.map_err(io_error)?;
    Ok(store::parse_trailer(&tail, len))
}

/// The object store failed to answer: a miss waits for it (503), a hit in
/// the local tier does not.
#[derive(Debug, thiserror::Error)]
#[error("object store: {0}")]
pub struct Unavailable(String);

fn io_error(e: object_store::Error) -> io::Error {
    match e {
        object_store::Error::NotFound { .. } => io::Error::new(io::ErrorKind::NotFound, e.to_string()),
        e => io::Error::other(Unavailable(e.to_string())),
    }
}

impl Store for S3Store {
    fn get(&self, key: &str) -> io::Result<Option<Hit>> {
        let file = self.scratch_file()?;
        Ok(self.download(key, &file)?.map(|meta| Hit { meta, file }))
    }

    fn stage(&self, key: &str) -> io::Result<Staged> {
        store::stored_elements(key)?;
        let temp = store::temp_path(&self.scratch.join("put"));
        let file = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&temp)?;
        Ok(Staged::new(key, temp, file))
    }

    fn publish(&self, staged: Staged, meta: &Meta) -> io::Result<()> {
        if std::fs::metadata(staged.path()?)?.len() != meta.size {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "staged body size differs from its record"));
        }
        self.upload(staged.key(), staged.path()?, meta)
    }

    fn usage(&self) -> Option<Usage> {
        None
    }

    /// Tagged by the object's ETag, so that of two origins replacing the
    /// same record only the first succeeds (`If-Match`).
    fn read_record(&self, key: &str) -> io::Result<Option<Record>> {
        let (objects, path) = (Arc::clone(&self.objects), self.path_of(key)?);
        self.run(async move {
            let got = match objects.get(&path).await {
                Ok(got) => got,
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(io_error(e)),
            };
            let tag = got.meta.e_tag.clone().unwrap_or_default();
            let whole = got.bytes().await.map_err(io_error)?;
            let Some(meta) = store::parse_trailer(&whole, whole.len() as u64) else {
                return Err(io::Error::new(io::ErrorKind::InvalidData, format!("record {path} has no whole trailer")));
            };
            Ok(Some(Record { body: whole[..meta.size as usize].to_vec(), tag }))
        })
    }

    fn replace_record(&self, key: &str, body: &[u8], seen: Option<&Record>) -> io::Result<bool> {
        let (objects, path) = (Arc::clone(&self.objects), self.path_of(key)?);
        let mut whole = body.to_vec();
        whole.extend_from_slice(&store::trailer(&store::record_meta(body))?);
        let mode = match seen {
            None => PutMode::Create,
            Some(r) => PutMode::Update(UpdateVersion { e_tag: Some(r.tag.clone()), version: None }),
        };
        self.run(async move {
            match objects.put_opts(&path, whole.into(), mode.into()).await {
                Ok(_) => Ok(true),
                Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => Ok(false),
                Err(e) => Err(io_error(e)),
            }
        })
    }

    fn remove(&self, key: &str, prefix: bool) -> io::Result<u64> {
        let objects = Arc::clone(&self.objects);
        if !prefix {
            let path = self.path_of(key)?;
            return self.run(async move {
                match objects.head(&path).await {
                    Ok(_) => objects.delete(&path).await.map(|()| 1).map_err(io_error),
                    Err(object_store::Error::NotFound { .. }) => Ok(0),
                    Err(e) => Err(io_error(e)),
                }
            });
        }
        // A prefix is `<dir>/<start of a name>`: list under dir, keep those
        // whose path below it starts with the name.
        let (dir, start) = key
            .rsplit_once('/')
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("refusing purge prefix {key:?}")))?;
        let dir = self.path_of(dir)?;
        let start = format!("{}/{start}", dir.as_ref());
        self.run(async move {
            let mut listing = objects.list(Some(&dir));
            let mut doomed = Vec::new();
            while let Some(object) = listing.next().await {
                let object = object.map_err(io_error)?;
                if object.location.as_ref().starts_with(&start) {
                    doomed.push(object.location);
                }
            }
            let mut removed = 0;
            for path in doomed {
                match objects.delete(&path).await {
                    Ok(()) => removed += 1,
                    Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(io_error(e)),
                }
            }
            Ok(removed)
        })
    }
}

impl Drop for S3Store {
    fn drop(&mut self) {
        // Dropping a runtime inside another one's context panics; let its
        // threads end on their own.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A bounded local disk tier in front of the object store: reads come from
/// local disk when it has the artifact and fill it from the object store
/// when it does not; writes go to the object store first (the durable,
/// shared copy), then to local disk. The origin's own records (verified
/// tree heads) are always read from the object store, where every origin
/// keeps them.
pub struct Tiered {
    pub local: store::DiskStore,
    pub shared: Arc<S3Store>,
}

impl Store for Tiered {
    fn get(&self, key: &str) -> io::Result<Option<Hit>> {
        if store::is_record(key) {
            return self.shared.get(key);
        }
        if let Some(hit) = self.local.get(key)? {
            return Ok(Some(hit));
        }
        // Read through: download into a local staged file, publish it there.
        let mut staged = self.local.stage(key)?;
        let file = staged.take_file().ok_or_else(|| io::Error::other("staged file taken"))?;
        let Some(meta) = self.shared.download(key, &file)? else { return Ok(None) };
        file.set_len(meta.size)?;
        drop(file);
        if let Err(e) = self.local.publish(staged, &meta) {
            // The local tier is full or failing: serve from the object store.
            tracing::warn!(%key, error = %e, "could not keep a copy in the local tier");
            return self.shared.get(key);
        }
        self.local.get(key)
    }

    fn stage(&self, key: &str) -> io::Result<Staged> {
        self.local.stage(key)
    }

    fn publish(&self, staged: Staged, meta: &Meta) -> io::Result<()> {
        if std::fs::metadata(staged.path()?)?.len() != meta.size {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "staged body size differs from its record"));
        }
        self.shared.upload(staged.key(), staged.path()?, meta)?;
        if let Err(e) = self.local.publish(staged, meta) {
            // Stored where it matters; the local copy comes with the next read.
            tracing::warn!(error = %e, "could not keep a copy in the local tier");
        }
        Ok(())
    }

    fn usage(&self) -> Option<Usage> {
        self.local.usage()
    }

    fn read_record(&self, key: &str) -> io::Result<Option<Record>> {
        self.shared.read_record(key)
    }

    fn replace_record(&self, key: &str, body: &[u8], seen: Option<&Record>) -> io::Result<bool> {
        self.shared.replace_record(key, body, seen)
    }

    fn remove(&self, key: &str, prefix: bool) -> io::Result<u64> {
        let shared = self.shared.remove(key, prefix)?;
        Ok(shared.max(self.local.remove(key, prefix)?))
    }

    fn evict_local(&self, key: &str, prefix: bool) -> io::Result<u64> {
        self.local.remove(key, prefix)
    }
}
