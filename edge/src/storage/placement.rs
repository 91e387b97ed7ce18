//! Which memory-tier objects hold the memory files (see [`super::memfile`]).
//!
//! A fill takes a file while one is free. Past that, files would stay with
//! the first objects filled, however cold, and a hot object filled later
//! would be written from the heap (a 16 KiB hit: 135.6k req/s against
//! 158–160k from a file). So a heap object that wants one asks for it on
//! its hits, at every power of two from [`ASK_AFTER`] (a few asks in its
//! life, not one per hit), and if none is free takes the file of an object
//! hit less: the objects holding files are looked at oldest first, clock
//! style; one hit as often or more keeps its file, its count halved (so a
//! past burst fades), and goes to the back.
//!
//! An object of the mapped tier (read back from disk after the memory tier
//! let it go, see [`super::DISK_COPY_MAX`]) asks the same way and, given a
//! file, comes back to the memory tier in it: a zip hit hard after a flow
//! of other fills pushed it out was otherwise served from its mapping for
//! good. Only in a file, so at most one such copy per [`TAKE_EVERY`] once
//! the files are taken: copies into memory as objects were read from disk,
//! each evicting another, were what made random hits over many zips slow.
//!
//! Objects are never changed in place: a move puts a copy, with the other
//! body, in the tier, and only where the tier still holds the object it was
//! made from, so a move never brings back what a purge took out or stands
//! an old answer in front of a newer fill.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Instant;

use super::{CacheStore, MemBody, MemObject};

/// Hits before a heap object first asks for a memory file.
pub(super) const ASK_AFTER: u32 = 16;

/// Holders looked at, at most, for one ask.
const LOOK_AT: usize = 16;

/// Time between two files taken back, at least. A move costs a new file,
/// a copy of the body and two swaps in the tier; where every object is
/// hit about as often (random hits over 20 000 zips of 16 KiB) there is no
/// hot set to gain from, and unbounded moves took that row from 74.7k to
/// 51.0k req/s. A hot object waits for its file a moment at most.
const TAKE_EVERY: std::time::Duration = std::time::Duration::from_millis(10);

/// The objects that were given a memory file, oldest first. Entries of
/// objects the tier let go are dropped as they are met, and all at once
/// when the list has doubled.
pub(super) struct Holders {
    list: VecDeque<(String, Weak<MemObject>)>,
    clean_at: usize,
    /// When the last file was taken back.
    taken: Option<Instant>,
}

impl Default for Holders {
    fn default() -> Holders {
        Holders { list: VecDeque::new(), clean_at: 1024, taken: None }
    }
}

impl Holders {
    pub(super) fn push(&mut self, primary: &str, obj: &Arc<MemObject>) {
        if self.list.len() >= self.clean_at {
            self.list.retain(|(_, o)| o.strong_count() > 0);
            self.clean_at = (self.list.len() * 2).max(1024);
        }
        self.list.push_back((primary.to_string(), Arc::downgrade(obj)));
    }
}

impl CacheStore {
    /// Counts a hit of `obj`, a memory-tier object, and gives it a memory
    /// file when it is time to ask for one.
    pub(super) fn count_hit(&self, primary: &str, obj: &Arc<MemObject>) {
        let hits = obj.hits.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        if hits >= ASK_AFTER && hits.is_power_of_two() && obj.body.wants_file() {
            self.give_file(primary, obj, hits);
        }
    }

    fn give_file(&self, primary: &str, obj: &Arc<MemObject>, hits: u32) {
        let epoch = self.purge_epoch();
        let mut holders = self.holders.lock();
        let in_memory = self.memory.peek(primary).is_some_and(|o| Arc::ptr_eq(&o, obj));
        let mapped = !in_memory
            && obj.body.bytes.len() as u64 <= self.memory_object_max
            && self.mapped.peek(primary).is_some_and(|o| Arc::ptr_eq(&o, obj));
        if !in_memory && !mapped {
            // Purged or replaced: no file is taken from another for it.
            return;
        }
        let mut body = MemBody::in_file(&obj.body.bytes, &self.files);
        if body.is_none() && self.take_file_back(&mut holders, hits) {
            // (None still if a reader of the file taken holds it.)
            body = MemBody::in_file(&obj.body.bytes, &self.files);
        }
        let Some(body) = body else { return };
        let filed = Arc::new(obj.with_body(body));
        let moved = if in_memory {
            self.swap(primary, obj, filed.clone())
        } else {
            // (Not if the file was cut under the mapping: the copy holds
            // zero pages.)
            obj.body.sound() && self.bring_back(primary, obj, filed.clone(), epoch)
        };
        if moved {
            holders.push(primary, &filed);
        }
    }

    /// Puts `back`, a copy of the mapped-tier object `old`, in the memory
    /// tier, where it holds nothing for `primary` and no purge ran since
    /// `epoch`, then takes `old` out of the mapped tier; whether it did.
    /// Whether the mapped tier still holds `old` is asked after the insert:
    /// a fill that finishes takes its key out of the mapped tier before the
    /// memory tier, so it either takes the copy out too or is seen here, and
    /// the copy goes again.
    pub(super) fn bring_back(&self, primary: &str, old: &Arc<MemObject>, back: Arc<MemObject>, epoch: u64) -> bool {
        {
            let gate = self.purges.lock();
            if gate.running != 0 || gate.ended != epoch || self.memory.peek(primary).is_some() {
                return false;
            }
            self.memory.insert(primary.to_string(), back.clone());
        }
        if self.mapped.remove_if(primary, |o| Arc::ptr_eq(o, old)).is_none() {
            self.memory.remove_if(primary, |o| Arc::ptr_eq(o, &back));
            return false;
        }
        true
    }

    /// Moves the memory file of a holder hit less often than `hits` back to
    /// the heap; whether one was found.
    fn take_file_back(&self, holders: &mut Holders, hits: u32) -> bool {
        let now = Instant::now();
        if holders.taken.is_some_and(|t| now < t + TAKE_EVERY) {
            return false;
        }
        for _ in 0..LOOK_AT {
            let Some((primary, weak)) = holders.list.pop_front() else { return false };
            let Some(holder) = weak.upgrade() else { continue };
            if !self.memory.peek(&primary).is_some_and(|o| Arc::ptr_eq(&o, &holder)) {
                continue;
            }
            let its = holder.hits.load(Ordering::Relaxed);
            if its >= hits {
                holder.hits.store(its / 2, Ordering::Relaxed);
                holders.list.push_back((primary, weak));
                continue;
            }
            let heap = Arc::new(holder.with_body(MemBody::heap(bytes::Bytes::copy_from_slice(&holder.body.bytes))));
            if self.swap(&primary, &holder, heap) {
                holders.taken = Some(now);
                return true;
            }
        }
        false
    }

    /// Puts `new` in the memory tier in place of `old`, if the tier holds
    /// `old` under `primary`; whether it did.
    pub(super) fn swap(&self, primary: &str, old: &Arc<MemObject>, new: Arc<MemObject>) -> bool {
        use quick_cache::sync::{EntryAction, EntryResult};
        let swapped = self.memory.entry(primary, Some(std::time::Duration::ZERO), |_, held| {
            if !Arc::ptr_eq(held, old) {
                return EntryAction::Retain(false);
            }
            *held = new;
            EntryAction::Retain(true)
        });
        // (Vacant: its guard, dropped here, inserts nothing.)
        matches!(swapped, EntryResult::Retained(true))
    }
}
