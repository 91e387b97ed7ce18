//! Verify before storing: a `.zip` or `.mod` pulled from upstream is checked
//! against the checksum database the way the go command does it — the
//! lookup record, the signed tree head (Ed25519, the configured verifier
//! key), the record's inclusion in that tree (proof from tiles, themselves
//! checked against the tree hash), and consistency with every tree head seen
//! before (a forked log is detected). A different hash is a security event:
//! 502 "checksum mismatch", nothing stored, a metric and a log line.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use modcdn_shared::module::{ModulePath, Version};
use modcdn_shared::note;
use modcdn_shared::tlog::{self, Tile, TilePlan, Tree};

use crate::error::OriginError;
use crate::Origin;

/// Tile height the go command and sum.golang.org use.
const TILE_HEIGHT: u32 = 8;
/// Largest lookup answer or tile accepted.
const MAX_ANSWER: usize = 1 << 20;
/// Authenticated tiles kept in memory.
const TILE_CACHE: usize = 4096;

pub struct SumDbVerifier {
    pub name: String,
    note: note::Verifier,
    /// The largest tree head verified so far.
    known: Mutex<Option<Tree>>,
    /// Tiles that passed authentication, by path (immutable: the width is in the path).
    tiles: Mutex<HashMap<String, Vec<u8>>>,
}

impl SumDbVerifier {
    pub fn new(name: &str, key: &str) -> Result<SumDbVerifier, String> {
        let note = note::Verifier::new(key).map_err(|e| format!("checksum database key {key:?}: {e}"))?;
        if note.name != name {
            return Err(format!("checksum database key is for {:?}, not {name:?}", note.name));
        }
        Ok(SumDbVerifier { name: name.to_string(), note, known: Mutex::new(None), tiles: Mutex::new(HashMap::new()) })
    }
}

impl SumDbVerifier {
    /// Where the largest verified tree head is kept across restarts (not a
    /// GOPROXY path: clients cannot ask for it).
    fn tree_key(&self) -> String {
        format!("sumdb/{}/verified-tree", self.name)
    }

    /// Picks up the tree head an earlier run (or another origin sharing the
    /// store) verified, so that a log that forked while this origin was
    /// down is still caught.
    pub fn load(&self, store: &dyn crate::store::Store) {
        let Ok(Some(record)) = store.read_record(&self.tree_key()) else { return };
        if let Some(tree) = parse_tree(&record.body) {
            tracing::info!(db = %self.name, records = tree.n, "resuming from the last verified tree head");
            self.know(tree);
        }
    }

    /// Remembers `tree` in memory unless a larger one is known.
    fn know(&self, tree: Tree) {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if known.is_none_or(|k| tree.n > k.n) {
            *known = Some(tree);
        }
    }
}

fn parse_tree(body: &[u8]) -> Option<Tree> {
    tlog::parse_tree(&String::from_utf8_lossy(body)).ok()
}

/// How many times a record another origin replaced in between is read again.
const PUBLISH_TRIES: usize = 8;

/// Makes `tree` the largest verified tree head where every origin sharing
/// the store reads it: a larger one found there is checked against it (a
/// fork between what two origins saw is caught) and taken instead; a
/// smaller one is replaced only if no other origin replaced it in between,
/// so the stored head never shrinks. A store that cannot be read or
/// written only means the next check starts from an earlier head.
async fn publish(o: &Arc<Origin>, v: &SumDbVerifier, mut tree: Tree) -> Result<(), OriginError> {
    use base64::Engine;
    for _ in 0..PUBLISH_TRIES {
        let (store, key) = (Arc::clone(&o.store), v.tree_key());
        let seen = match tokio::task::spawn_blocking(move || store.read_record(&key)).await {
            Ok(Ok(seen)) => seen,
            _ => break,
        };
        if let Some(stored) = seen.as_ref().and_then(|r| parse_tree(&r.body)) {
            tree = larger_consistent(o, v, tree, stored).await?;
            if stored.n >= tree.n {
                break;
            }
        }
        let text = format!(
            "go.sum database tree\n{}\n{}\n",
            tree.n,
            base64::engine::general_purpose::STANDARD.encode(tree.hash)
        );
        let (store, key) = (Arc::clone(&o.store), v.tree_key());
        let replaced = tokio::task::spawn_blocking(move || store.replace_record(&key, text.as_bytes(), seen.as_ref()));
        match replaced.await {
            Ok(Ok(true)) => {
                v.know(tree);
                return Ok(());
            }
            Ok(Ok(false)) => continue,
            _ => break,
        }
    }
    tracing::debug!(db = %v.name, records = tree.n, "verified tree head kept in memory only");
    v.know(tree);
    Ok(())
}

fn failed(msg: impl std::fmt::Display) -> OriginError {
    OriginError::Verification(msg.to_string())
}

/// Checks `h1` (of the zip, or of the go.mod when `go_mod`) of
/// `module@version` against the checksum database. Modules under `nosumdb`
/// or private patterns, and origins without a verifying database, pass.
pub async fn check(
    o: &Arc<Origin>,
    module: &ModulePath,
    version: &Version,
    h1: &str,
    go_mod: bool,
) -> Result<(), OriginError> {
    let Some(v) = o.upstreams.verifier.as_ref() else { return Ok(()) };
    if o.upstreams.private.is_nosumdb(module.as_str()) {
        return Ok(());
    }
    let result = check_with(o, v, module, version, h1, go_mod).await;
    match &result {
        Err(OriginError::ChecksumMismatch(msg)) => {
            o.metrics.checksum_mismatch.inc();
            tracing::error!(module = %module, version = %version, %msg, "SECURITY: checksum mismatch; nothing stored");
        }
        Err(e) => {
            tracing::warn!(module = %module, version = %version, error = %e, "checksum database verification failed; nothing stored")
        }
        Ok(()) => {}
    }
    result
}

async fn check_with(
    o: &Arc<Origin>,
    v: &SumDbVerifier,
    m: &ModulePath,
    ver: &Version,
    h1: &str,
    go_mod: bool,
) -> Result<(), OriginError> {
    let lookup = fetch(o, v, &format!("lookup/{}@{}", m.escaped(), ver.escaped())).await?;
    let lookup = String::from_utf8(lookup).map_err(|_| failed("lookup answer is not UTF-8"))?;
    let (id, text, signed) = tlog::parse_record(&lookup).map_err(failed)?;
    let tree_text = v.note.open(signed).map_err(failed)?;
    let tree = tlog::parse_tree(tree_text).map_err(failed)?;
    check_consistent(o, v, tree).await?;

    if id < 0 || id >= tree.n {
        return Err(failed(format!("record {id} is outside the tree of {} records", tree.n)));
    }
    let want = tlog::record_proof_indexes(tree.n, id).map_err(failed)?;
    let hashes = read_hashes(o, v, tree, &want).await?;
    let proof = tlog::record_proof(tree.n, id, &hashes).map_err(failed)?;
    tlog::check_record(&proof, tree.n, &tree.hash, id, &tlog::record_hash(text.as_bytes())).map_err(failed)?;

    let suffix = if go_mod { "/go.mod" } else { "" };
    let prefix = format!("{} {}{suffix} ", m.as_str(), ver.as_str());
    let recorded = text
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .ok_or_else(|| failed(format!("record has no line for {prefix}")))?;
    if recorded != h1 {
        return Err(OriginError::ChecksumMismatch(format!(
            "{}@{}{suffix}: upstream has {h1}, checksum database {} has {recorded}",
            m.as_str(),
            ver.as_str(),
            v.name
        )));
    }
    Ok(())
}

/// Checks `tree` against the largest tree seen so far, then makes the
/// larger of the two the one every origin sees.
async fn check_consistent(o: &Arc<Origin>, v: &SumDbVerifier, tree: Tree) -> Result<(), OriginError> {
    let known = *v.known.lock().unwrap_or_else(|p| p.into_inner());
    let big = match known {
        None => tree,
        Some(known) => larger_consistent(o, v, tree, known).await?,
    };
    if known.is_some_and(|k| k.n >= big.n) {
        return Ok(());
    }
    publish(o, v, big).await
}

/// The larger of two verified trees, once the smaller is proved to be its
/// prefix. Equal sizes with different hashes is a fork.
async fn larger_consistent(o: &Arc<Origin>, v: &SumDbVerifier, a: Tree, b: Tree) -> Result<Tree, OriginError> {
    let (big, small) = if a.n >= b.n { (a, b) } else { (b, a) };
    if big.n == small.n {
        if big.hash != small.hash {
            return Err(failed(format!("checksum database {} has forked: two trees of {} records", v.name, big.n)));
        }
        return Ok(big);
    }
    if small.n > 0 {
        let want = tlog::tree_proof_indexes(big.n, small.n).map_err(failed)?;
        let hashes = read_hashes(o, v, big, &want).await?;
        let proof = tlog::prove_tree(big.n, small.n, &hashes).map_err(failed)?;
        tlog::check_tree(&proof, big.n, &big.hash, small.n, &small.hash).map_err(|_| {
            failed(format!(
                "checksum database {} is inconsistent between trees of {} and {} records",
                v.name, small.n, big.n
            ))
        })?;
    }
    Ok(big)
}

/// Stored hashes of `tree`, from tiles authenticated against its hash.
async fn read_hashes(
    o: &Arc<Origin>,
    v: &SumDbVerifier,
    tree: Tree,
    indexes: &[i64],
) -> Result<Vec<tlog::Hash>, OriginError> {
    if indexes.is_empty() {
        return Ok(Vec::new());
    }
    let plan = TilePlan::new(tree, TILE_HEIGHT, indexes).map_err(failed)?;
    let mut data = Vec::with_capacity(plan.tiles.len());
    for t in &plan.tiles {
        data.push(tile(o, v, t).await?);
    }
    let hashes = plan.hashes(&data).map_err(failed)?;
    let mut cache = v.tiles.lock().unwrap_or_else(|p| p.into_inner());
    if cache.len() + plan.tiles.len() > TILE_CACHE {
        cache.clear();
    }
    for (t, d) in plan.tiles.iter().zip(data) {
        cache.insert(t.path(), d);
    }
    Ok(hashes)
}

async fn tile(o: &Arc<Origin>, v: &SumDbVerifier, t: &Tile) -> Result<Vec<u8>, OriginError> {
    let path = t.path();
    if let Some(d) = v.tiles.lock().unwrap_or_else(|p| p.into_inner()).get(&path) {
        return Ok(d.clone());
    }
    fetch(o, v, &path).await
}

/// One answer from the database, bounded in size.
async fn fetch(o: &Arc<Origin>, v: &SumDbVerifier, path: &str) -> Result<Vec<u8>, OriginError> {
    let Some(source) = o.checksum_db(&v.name) else {
        return Err(failed(format!("{}: not proxied here", v.name)));
    };
    let fetched = source.fetch(path).await.map_err(|e| match e {
        crate::error::UpstreamError::NotFound { message, .. } => {
            failed(format!("{}: {path}: not in the checksum database: {message}", v.name))
        }
        other => OriginError::Upstream(other),
    })?;
    let mut body = Vec::new();
    let mut stream = fetched.body;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if body.len() + chunk.len() > MAX_ANSWER {
            return Err(failed(format!("{path}: answer above {MAX_ANSWER} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
