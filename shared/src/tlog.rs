//! Transparency-log proofs for the checksum database, as
//! golang.org/x/mod/sumdb/tlog does them (RFC 6962 hashing, tiles).
//!
//! A log of N records is a Merkle tree; its hashes are numbered in storage
//! order ([`stored_hash_index`]) and served in tiles of height H. Proving a
//! record is in the tree, or that a tree of N records is a prefix of one of
//! M, needs a few stored hashes; they come from tiles, which are themselves
//! checked against the signed tree hash before any hash is believed. Tile
//! fetching is the caller's (async) business: [`TilePlan`] says which tiles,
//! [`TilePlan::hashes`] checks them and reads the hashes out.

use std::collections::HashMap;

use base64::Engine;
use sha2::{Digest, Sha256};

pub const HASH_SIZE: usize = 32;
pub type Hash = [u8; HASH_SIZE];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlogError {
    #[error("invalid transparency proof")]
    ProofFailed,
    #[error("downloaded inconsistent tile")]
    InconsistentTile,
    #[error("malformed tree note")]
    MalformedTree,
    #[error("malformed record data")]
    MalformedRecord,
    #[error("tlog: {0}")]
    Invalid(String),
}

/// A tree head: record count and root hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tree {
    pub n: i64,
    pub hash: Hash,
}

fn maxpow2(n: i64) -> (i64, u32) {
    let mut l = 0u32;
    while (1i64 << (l + 1)) < n {
        l += 1;
    }
    (1 << l, l)
}

/// The leaf hash of a record: SHA-256(0x00 || data).
pub fn record_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

/// An interior hash: SHA-256(0x01 || left || right).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The storage index of the hash at `level` and position `n` in that level.
pub fn stored_hash_index(level: u32, mut n: i64) -> i64 {
    for _ in 0..level {
        n = 2 * n + 1;
    }
    let mut i = 0i64;
    while n > 0 {
        i += n;
        n >>= 1;
    }
    i + level as i64
}

/// The inverse of [`stored_hash_index`].
pub fn split_stored_hash_index(index: i64) -> (u32, i64) {
    let mut n = index / 2;
    let mut index_n = stored_hash_index(0, n);
    loop {
        let x = index_n + 1 + (n + 1).trailing_zeros() as i64;
        if x > index {
            break;
        }
        n += 1;
        index_n = x;
    }
    let level = (index - index_n) as u32;
    (level, n >> level)
}

fn subtree_index(mut lo: i64, hi: i64, need: &mut Vec<i64>) {
    while lo < hi {
        let (k, level) = maxpow2(hi - lo + 1);
        need.push(stored_hash_index(level, lo >> level));
        lo += k;
    }
}

fn subtree_hash(mut lo: i64, hi: i64, hashes: &[Hash]) -> Result<(Hash, usize), TlogError> {
    let mut num = 0usize;
    while lo < hi {
        let (k, _) = maxpow2(hi - lo + 1);
        num += 1;
        lo += k;
    }
    if hashes.len() < num || num == 0 {
        return Err(TlogError::Invalid("bad index math in subtree hash".into()));
    }
    let mut h = hashes[num - 1];
    for i in (0..num - 1).rev() {
        h = node_hash(&hashes[i], &h);
    }
    Ok((h, num))
}

/// The root hash of a tree of `n` records from its stored hashes at
/// [`tree_hash_indexes`]`(n)`.
pub fn tree_hash(n: i64, hashes: &[Hash]) -> Result<Hash, TlogError> {
    if n == 0 {
        return Ok([0; HASH_SIZE]);
    }
    let (h, used) = subtree_hash(0, n, hashes)?;
    if used != hashes.len() {
        return Err(TlogError::Invalid("bad index math in tree hash".into()));
    }
    Ok(h)
}

pub fn tree_hash_indexes(n: i64) -> Vec<i64> {
    let mut need = Vec::new();
    subtree_index(0, n, &mut need);
    need
}

fn leaf_proof_index(lo: i64, hi: i64, n: i64, need: &mut Vec<i64>) {
    if lo + 1 == hi {
        return;
    }
    let (k, _) = maxpow2(hi - lo);
    if n < lo + k {
        leaf_proof_index(lo, lo + k, n, need);
        subtree_index(lo + k, hi, need);
    } else {
        subtree_index(lo, lo + k, need);
        leaf_proof_index(lo + k, hi, n, need);
    }
}

fn leaf_proof(lo: i64, hi: i64, n: i64, hashes: &[Hash]) -> Result<(Vec<Hash>, usize), TlogError> {
    if lo + 1 == hi {
        return Ok((Vec::new(), 0));
    }
    let (k, _) = maxpow2(hi - lo);
    let (mut p, th, used) = if n < lo + k {
        let (p, a) = leaf_proof(lo, lo + k, n, hashes)?;
        let (th, b) = subtree_hash(lo + k, hi, &hashes[a..])?;
        (p, th, a + b)
    } else {
        let (th, a) = subtree_hash(lo, lo + k, hashes)?;
        let (p, b) = leaf_proof(lo + k, hi, n, &hashes[a..])?;
        (p, th, a + b)
    };
    p.push(th);
    Ok((p, used))
}

/// Stored hashes needed to prove record `n` is in a tree of `t` records.
pub fn record_proof_indexes(t: i64, n: i64) -> Result<Vec<i64>, TlogError> {
    if t < 0 || n < 0 || n >= t {
        return Err(TlogError::Invalid("invalid inputs in record proof".into()));
    }
    let mut need = Vec::new();
    leaf_proof_index(0, t, n, &mut need);
    Ok(need)
}

/// The proof for record `n` in a tree of `t`, from the hashes at
/// [`record_proof_indexes`].
pub fn record_proof(t: i64, n: i64, hashes: &[Hash]) -> Result<Vec<Hash>, TlogError> {
    record_proof_indexes(t, n)?;
    let (p, used) = leaf_proof(0, t, n, hashes)?;
    if used != hashes.len() {
        return Err(TlogError::Invalid("bad index math in record proof".into()));
    }
    Ok(p)
}

/// Checks that record `n` with leaf hash `h` is in the tree of `t` records
/// with root `th`.
pub fn check_record(p: &[Hash], t: i64, th: &Hash, n: i64, h: &Hash) -> Result<(), TlogError> {
    if t < 0 || n < 0 || n >= t {
        return Err(TlogError::Invalid("invalid inputs in check record".into()));
    }
    if run_record_proof(p, 0, t, n, h)? == *th {
        Ok(())
    } else {
        Err(TlogError::ProofFailed)
    }
}

fn run_record_proof(p: &[Hash], lo: i64, hi: i64, n: i64, leaf: &Hash) -> Result<Hash, TlogError> {
    if lo + 1 == hi {
        return if p.is_empty() { Ok(*leaf) } else { Err(TlogError::ProofFailed) };
    }
    let Some((last, rest)) = p.split_last() else { return Err(TlogError::ProofFailed) };
    let (k, _) = maxpow2(hi - lo);
    if n < lo + k {
        Ok(node_hash(&run_record_proof(rest, lo, lo + k, n, leaf)?, last))
    } else {
        Ok(node_hash(last, &run_record_proof(rest, lo + k, hi, n, leaf)?))
    }
}

fn tree_proof_index(lo: i64, hi: i64, n: i64, need: &mut Vec<i64>) {
    if n == hi {
        if lo != 0 {
            subtree_index(lo, hi, need);
        }
        return;
    }
    let (k, _) = maxpow2(hi - lo);
    if n <= lo + k {
        tree_proof_index(lo, lo + k, n, need);
        subtree_index(lo + k, hi, need);
    } else {
        subtree_index(lo, lo + k, need);
        tree_proof_index(lo + k, hi, n, need);
    }
}

fn tree_proof(lo: i64, hi: i64, n: i64, hashes: &[Hash]) -> Result<(Vec<Hash>, usize), TlogError> {
    if n == hi {
        if lo == 0 {
            return Ok((Vec::new(), 0));
        }
        let (th, used) = subtree_hash(lo, hi, hashes)?;
        return Ok((vec![th], used));
    }
    let (k, _) = maxpow2(hi - lo);
    let (mut p, th, used) = if n <= lo + k {
        let (p, a) = tree_proof(lo, lo + k, n, hashes)?;
        let (th, b) = subtree_hash(lo + k, hi, &hashes[a..])?;
        (p, th, a + b)
    } else {
        let (th, a) = subtree_hash(lo, lo + k, hashes)?;
        let (p, b) = tree_proof(lo + k, hi, n, &hashes[a..])?;
        (p, th, a + b)
    };
    p.push(th);
    Ok((p, used))
}

/// Stored hashes needed to prove a tree of `n` records is a prefix of one of `t`.
pub fn tree_proof_indexes(t: i64, n: i64) -> Result<Vec<i64>, TlogError> {
    if t < 1 || n < 1 || n > t {
        return Err(TlogError::Invalid("invalid inputs in tree proof".into()));
    }
    let mut need = Vec::new();
    tree_proof_index(0, t, n, &mut need);
    Ok(need)
}

/// The consistency proof from `n` to `t` records, from the hashes at
/// [`tree_proof_indexes`].
pub fn prove_tree(t: i64, n: i64, hashes: &[Hash]) -> Result<Vec<Hash>, TlogError> {
    tree_proof_indexes(t, n)?;
    let (p, used) = tree_proof(0, t, n, hashes)?;
    if used != hashes.len() {
        return Err(TlogError::Invalid("bad index math in tree proof".into()));
    }
    Ok(p)
}

/// Checks that the tree of `n` records with root `h` is a prefix of the tree
/// of `t` records with root `th`.
pub fn check_tree(p: &[Hash], t: i64, th: &Hash, n: i64, h: &Hash) -> Result<(), TlogError> {
    if t < 1 || n < 1 || n > t {
        return Err(TlogError::Invalid("invalid inputs in check tree".into()));
    }
    let (h2, th2) = run_tree_proof(p, 0, t, n, h)?;
    if th2 == *th && h2 == *h {
        Ok(())
    } else {
        Err(TlogError::ProofFailed)
    }
}

fn run_tree_proof(p: &[Hash], lo: i64, hi: i64, n: i64, old: &Hash) -> Result<(Hash, Hash), TlogError> {
    if n == hi {
        if lo == 0 {
            return if p.is_empty() { Ok((*old, *old)) } else { Err(TlogError::ProofFailed) };
        }
        return if p.len() == 1 { Ok((p[0], p[0])) } else { Err(TlogError::ProofFailed) };
    }
    let Some((last, rest)) = p.split_last() else { return Err(TlogError::ProofFailed) };
    let (k, _) = maxpow2(hi - lo);
    if n <= lo + k {
        let (oh, th) = run_tree_proof(rest, lo, lo + k, n, old)?;
        Ok((oh, node_hash(&th, last)))
    } else {
        let (oh, th) = run_tree_proof(rest, lo + k, hi, n, old)?;
        Ok((node_hash(last, &oh), node_hash(last, &th)))
    }
}

/// A tile of the log: height `h`, level `l` (in tiles), number `n` in the
/// level, width `w` hashes (2^h for a full tile).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tile {
    pub h: u32,
    pub l: u32,
    pub n: i64,
    pub w: u32,
}

impl Tile {
    /// The tile's path under the database URL, e.g. `tile/8/0/x001/234.p/5`.
    pub fn path(&self) -> String {
        let mut n = self.n;
        let mut s = format!("{:03}", n % 1000);
        while n >= 1000 {
            n /= 1000;
            s = format!("x{:03}/{s}", n % 1000);
        }
        let p = if self.w != 1 << self.h { format!(".p/{}", self.w) } else { String::new() };
        format!("tile/{}/{}/{s}{p}", self.h, self.l)
    }
}

/// A tile path as the checksum-database protocol names it:
/// `tile/H/L/[xNNN/]*NNN[.p/W]`, or `tile/H/data/...` for the records a
/// level-0 tile hashes (golang.org/x/mod/sumdb/tlog's ParseTilePath). Only
/// the canonical spelling is accepted: `H` in 1..=30, `L` in 0..=63, a
/// partial width below 2^H, each number element three digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TilePath {
    pub tile: Tile,
    /// The record data of the tile rather than its hashes.
    pub data: bool,
}

impl TilePath {
    pub fn parse(path: &str) -> Result<TilePath, TlogError> {
        let bad = || TlogError::Invalid(format!("invalid tile path {path:?}"));
        let mut f: Vec<&str> = path.split('/').collect();
        if f.len() < 4 || f[0] != "tile" {
            return Err(bad());
        }
        let h: u32 = number(f[1]).ok_or_else(bad)?;
        let data = f[2] == "data";
        let l: u32 = if data { 0 } else { number(f[2]).ok_or_else(bad)? };
        if !(1..=30).contains(&h) || l > 63 {
            return Err(bad());
        }
        let mut w = 1u32 << h;
        let last = f.len() - 2;
        if let Some(stem) = f[last].strip_suffix(".p") {
            let ww: u32 = number(f[last + 1]).ok_or_else(bad)?;
            if ww == 0 || ww >= w {
                return Err(bad());
            }
            w = ww;
            f[last] = stem;
            f.pop();
        }
        let mut n: i64 = 0;
        for e in &f[3..] {
            let nn: i64 = number(e.strip_prefix('x').unwrap_or(e)).ok_or_else(bad)?;
            if nn >= 1000 {
                return Err(bad());
            }
            n = n.checked_mul(1000).and_then(|n| n.checked_add(nn)).ok_or_else(bad)?;
        }
        let t = TilePath { tile: Tile { h, l, n, w }, data };
        if t.path() != path {
            return Err(bad());
        }
        Ok(t)
    }

    pub fn path(&self) -> String {
        let p = self.tile.path();
        if !self.data {
            return p;
        }
        // tile/H/L/... with "data" for L.
        let mut parts: Vec<&str> = p.splitn(4, '/').collect();
        parts[2] = "data";
        parts.join("/")
    }
}

/// A decimal number of ASCII digits only (no sign, no spaces).
fn number<T: std::str::FromStr>(s: &str) -> Option<T> {
    (!s.is_empty() && s.len() <= 19 && s.bytes().all(|c| c.is_ascii_digit())).then(|| s.parse().ok()).flatten()
}

fn tile_for_index(h: u32, index: i64) -> (Tile, usize, usize) {
    let (mut level, mut n) = split_stored_hash_index(index);
    let l = level / h;
    level -= l * h;
    let tn = (n << level) >> h;
    n -= (tn << h) >> level;
    let w = ((n + 1) << level) as u32;
    (Tile { h, l, n: tn, w }, ((n << level) as usize) * HASH_SIZE, (((n + 1) << level) as usize) * HASH_SIZE)
}

fn tile_hash(data: &[u8]) -> Hash {
    if data.len() == HASH_SIZE {
        let mut h = [0u8; HASH_SIZE];
        h.copy_from_slice(data);
        return h;
    }
    let half = data.len() / 2;
    node_hash(&tile_hash(&data[..half]), &tile_hash(&data[half..]))
}

fn hash_from_tile(t: &Tile, data: &[u8], index: i64) -> Result<Hash, TlogError> {
    if t.h < 1 || t.h > 30 || t.l >= 64 || t.w < 1 || t.w > 1 << t.h || data.len() < t.w as usize * HASH_SIZE {
        return Err(TlogError::Invalid(format!("invalid tile {}", t.path())));
    }
    let (t1, start, end) = tile_for_index(t.h, index);
    if t.l != t1.l || t.n != t1.n || t.w < t1.w {
        return Err(TlogError::Invalid(format!("index {index} is in {} not {}", t1.path(), t.path())));
    }
    Ok(tile_hash(&data[start..end]))
}

fn tile_parent(t: Tile, k: u32, n: i64) -> Option<Tile> {
    let mut t = t;
    t.l += k;
    t.n >>= k * t.h;
    t.w = 1 << t.h;
    let max = n >> (t.l * t.h);
    if (t.n << t.h) + t.w as i64 >= max {
        if t.n << t.h >= max {
            return None;
        }
        t.w = (max - (t.n << t.h)) as u32;
    }
    Some(t)
}

/// Which tiles to fetch to read stored hashes `indexes` of `tree`, checked
/// against its root hash (golang.org/x/mod/sumdb/tlog's tileHashReader).
pub struct TilePlan {
    pub tree: Tree,
    pub tiles: Vec<Tile>,
    stx: Vec<i64>,
    stx_tile: Vec<usize>,
    indexes: Vec<i64>,
    index_tile: Vec<usize>,
}

impl TilePlan {
    pub fn new(tree: Tree, height: u32, indexes: &[i64]) -> Result<TilePlan, TlogError> {
        let mut order: HashMap<Tile, usize> = HashMap::new();
        let mut tiles = Vec::new();
        let stx = tree_hash_indexes(tree.n);
        let mut stx_tile = Vec::with_capacity(stx.len());
        for &x in &stx {
            let (tile, _, _) = tile_for_index(height, x);
            let tile = tile_parent(tile, 0, tree.n).ok_or(TlogError::Invalid("tile beyond tree".into()))?;
            let j = *order.entry(tile).or_insert_with(|| {
                tiles.push(tile);
                tiles.len() - 1
            });
            stx_tile.push(j);
        }
        let mut index_tile = vec![0; indexes.len()];
        for (i, &x) in indexes.iter().enumerate() {
            if x >= stored_hash_index(0, tree.n) {
                return Err(TlogError::Invalid("indexes not in tree".into()));
            }
            let (tile, _, _) = tile_for_index(height, x);
            let mut k = 0;
            loop {
                let p = tile_parent(tile, k, tree.n).ok_or(TlogError::Invalid("lost tile parent".into()))?;
                if let Some(&j) = order.get(&p) {
                    if k == 0 {
                        index_tile[i] = j;
                    }
                    break;
                }
                k += 1;
            }
            while k > 0 {
                k -= 1;
                let p = tile_parent(tile, k, tree.n).ok_or(TlogError::Invalid("lost tile parent".into()))?;
                if p.w != 1 << p.h {
                    return Err(TlogError::Invalid("bad math in tile plan".into()));
                }
                order.insert(p, tiles.len());
                if k == 0 {
                    index_tile[i] = tiles.len();
                }
                tiles.push(p);
            }
        }
        Ok(TilePlan { tree, tiles, stx, stx_tile, indexes: indexes.to_vec(), index_tile })
    }

    /// Checks the fetched `data` (one per tile, in order) against the tree
    /// hash, then reads out the requested hashes.
    pub fn hashes(&self, data: &[Vec<u8>]) -> Result<Vec<Hash>, TlogError> {
        if data.len() != self.tiles.len() {
            return Err(TlogError::Invalid("wrong number of tiles".into()));
        }
        for (t, d) in self.tiles.iter().zip(data) {
            if d.len() != t.w as usize * HASH_SIZE {
                return Err(TlogError::InconsistentTile);
            }
        }
        let hash_at = |i: usize, index: i64| hash_from_tile(&self.tiles[i], &data[i], index);
        let Some(last) = self.stx.len().checked_sub(1) else { return Err(TlogError::Invalid("empty tree".into())) };
        let mut th = hash_at(self.stx_tile[last], self.stx[last])?;
        for i in (0..last).rev() {
            th = node_hash(&hash_at(self.stx_tile[i], self.stx[i])?, &th);
        }
        if th != self.tree.hash {
            return Err(TlogError::InconsistentTile);
        }
        let order: HashMap<Tile, usize> = self.tiles.iter().enumerate().map(|(i, t)| (*t, i)).collect();
        for i in self.stx.len()..self.tiles.len() {
            let tile = self.tiles[i];
            let p = tile_parent(tile, 1, self.tree.n).ok_or(TlogError::InconsistentTile)?;
            let j = *order.get(&p).ok_or(TlogError::InconsistentTile)?;
            let h = hash_from_tile(&p, &data[j], stored_hash_index(p.l * p.h, tile.n))?;
            if h != tile_hash(&data[i]) {
                return Err(TlogError::InconsistentTile);
            }
        }
        self.indexes.iter().zip(&self.index_tile).map(|(&x, &j)| hash_at(j, x)).collect()
    }
}

/// Parses a tree note body: `go.sum database tree\n<N>\n<base64 hash>\n...`.
pub fn parse_tree(text: &str) -> Result<Tree, TlogError> {
    let rest = text.strip_prefix("go.sum database tree\n").ok_or(TlogError::MalformedTree)?;
    if text.matches('\n').count() < 3 || text.len() > 1_000_000 {
        return Err(TlogError::MalformedTree);
    }
    let mut lines = rest.splitn(3, '\n');
    let n_str = lines.next().ok_or(TlogError::MalformedTree)?;
    let n: i64 = n_str.parse().map_err(|_| TlogError::MalformedTree)?;
    if n < 0 || n.to_string() != n_str {
        return Err(TlogError::MalformedTree);
    }
    let h = base64::engine::general_purpose::STANDARD
        .decode(lines.next().ok_or(TlogError::MalformedTree)?)
        .map_err(|_| TlogError::MalformedTree)?;
    let hash: Hash = h.try_into().map_err(|_| TlogError::MalformedTree)?;
    Ok(Tree { n, hash })
}

fn valid_record_text(text: &str) -> bool {
    !text.is_empty() && text.ends_with('\n') && !text.contains("\n\n") && !text.chars().any(|c| c < ' ' && c != '\n')
}

/// Splits a lookup answer into record id, record text and the rest (the
/// signed tree note).
pub fn parse_record(msg: &str) -> Result<(i64, &str, &str), TlogError> {
    let (id, msg) = msg.split_once('\n').ok_or(TlogError::MalformedRecord)?;
    let id: i64 = id.parse().map_err(|_| TlogError::MalformedRecord)?;
    let i = msg.find("\n\n").ok_or(TlogError::MalformedRecord)?;
    let (text, rest) = (&msg[..i + 1], &msg[i + 2..]);
    if !valid_record_text(text) {
        return Err(TlogError::MalformedRecord);
    }
    Ok((id, text, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stored hashes of a log of `records`, built as x/mod's
    /// StoredHashesForRecordHash does: each record appends its leaf and the
    /// interior hashes it completes.
    fn stored(records: usize) -> Vec<Hash> {
        let mut all: Vec<Hash> = Vec::new();
        for i in 0..records as i64 {
            let mut h = record_hash(format!("leaf {i}").as_bytes());
            all.push(h);
            let m = (i + 1).trailing_zeros();
            for level in 0..m {
                let left = all[stored_hash_index(level, (i >> level) - 1) as usize];
                h = node_hash(&left, &h);
                all.push(h);
            }
            assert_eq!(all.len() as i64, stored_hash_index(0, i + 1), "stored count after {i}");
        }
        all
    }

    fn read(all: &[Hash], idx: &[i64]) -> Vec<Hash> {
        idx.iter().map(|&i| all[i as usize]).collect()
    }

    #[test]
    fn index_math_round_trips() {
        for index in 0..5000 {
            let (l, n) = split_stored_hash_index(index);
            assert_eq!(stored_hash_index(l, n), index, "{index}");
        }
    }

    #[test]
    fn record_and_tree_proofs_verify_and_reject_tampering() {
        let all = stored(100);
        for t in 1..=100i64 {
            let th = tree_hash(t, &read(&all, &tree_hash_indexes(t))).expect("tree hash");
            for n in 0..t {
                let p = record_proof(t, n, &read(&all, &record_proof_indexes(t, n).expect("idx"))).expect("proof");
                let leaf = record_hash(format!("leaf {n}").as_bytes());
                check_record(&p, t, &th, n, &leaf).expect("record in tree");
                assert!(check_record(&p, t, &th, n, &record_hash(b"forged")).is_err());
                let h = tree_hash(n + 1, &read(&all, &tree_hash_indexes(n + 1))).expect("old hash");
                let tp =
                    prove_tree(t, n + 1, &read(&all, &tree_proof_indexes(t, n + 1).expect("idx"))).expect("tree proof");
                check_tree(&tp, t, &th, n + 1, &h).expect("prefix");
                assert!(check_tree(&tp, t, &th, n + 1, &record_hash(b"fork")).is_err());
            }
        }
    }

    #[test]
    fn tiles_serve_and_authenticate_hashes() {
        let all = stored(1000);
        let h = 2; // small tiles: several levels
        for n in [1i64, 5, 17, 256, 999, 1000] {
            let tree = Tree { n, hash: tree_hash(n, &read(&all, &tree_hash_indexes(n))).expect("hash") };
            let want = record_proof_indexes(n, n / 2).expect("idx");
            let plan = TilePlan::new(tree, h, &want).expect("plan");
            let data: Vec<Vec<u8>> = plan
                .tiles
                .iter()
                .map(|t| {
                    let start = t.n << t.h;
                    (0..t.w as i64).flat_map(|i| all[stored_hash_index(t.h * t.l, start + i) as usize]).collect()
                })
                .collect();
            assert_eq!(plan.hashes(&data).expect("hashes"), read(&all, &want), "n = {n}");
            let mut bad = data.clone();
            if let Some(b) = bad.last_mut().and_then(|d| d.first_mut()) {
                *b ^= 1;
            }
            assert!(plan.hashes(&bad).is_err(), "a flipped bit is caught (n = {n})");
        }
        assert_eq!(Tile { h: 8, l: 0, n: 1234, w: 5 }.path(), "tile/8/0/x001/234.p/5");
        assert_eq!(Tile { h: 8, l: 1, n: 3, w: 256 }.path(), "tile/8/1/003");
    }

    #[test]
    fn notes_and_records_parse() {
        let hash = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        let tree = parse_tree(&format!("go.sum database tree\n42\n{hash}\n")).expect("tree");
        assert_eq!((tree.n, tree.hash), (42, [7u8; 32]));
        for bad in ["go.sum database tree\n042\nAAAA\n", "other\n1\nx\n", "go.sum database tree\n-1\n\n"] {
            assert!(parse_tree(bad).is_err(), "{bad:?}");
        }
        let (id, text, rest) =
            parse_record("7\nexample.com/m v1.0.0 h1:x=\nexample.com/m v1.0.0/go.mod h1:y=\n\nnote").expect("record");
        assert_eq!((id, rest), (7, "note"));
        assert!(text.ends_with("h1:y=\n"));
        assert!(parse_record("x\nbad").is_err());
        assert!(parse_record("7\nno blank line").is_err());
    }

    #[test]
    fn tile_paths_round_trip_as_x_mod_spells_them() {
        for p in [
            "tile/8/0/000",
            "tile/8/0/x001/234.p/5",
            "tile/8/1/x123/x456/078",
            "tile/8/data/000",
            "tile/8/data/x001/002.p/255",
            "tile/30/63/999",
            "tile/1/0/000.p/1",
        ] {
            let t = TilePath::parse(p).unwrap_or_else(|e| panic!("{p}: {e:?}"));
            assert_eq!(t.path(), p);
        }
        let t = TilePath::parse("tile/8/0/x001/234.p/5").expect("tile");
        assert_eq!(t.tile, Tile { h: 8, l: 0, n: 1234, w: 5 });
        for p in ["tile/99/0/000", "tile/8/0/000.p/256", "tile/8/0/1", "tile/8/-1/000", "tile/8/0/+01", "tile/x/0/000"]
        {
            assert!(TilePath::parse(p).is_err(), "{p}");
        }
    }
}
