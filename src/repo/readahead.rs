//! Reading objects from a remote store a chunk at a time.
//!
//! Every read of an object store is a round trip (tens of milliseconds
//! here), however small: reading a 64 KiB block, or a directory's tree, on
//! its own made a restore from a bucket 90x slower than from disk. Objects
//! that are read together were written together (a file's blocks in
//! order, a snapshot's trees and block lists in metadata packs of their
//! own), so a read fetches the aligned [`CHUNK`] of the pack that holds the
//! object, and the objects after it are then read from memory.
//!
//! One reader fetches a chunk while the others that want it wait for it
//! (no chunk is fetched twice at once); a failed fetch is tried again by
//! the next reader. A chunk fetched whole is followed by a fetch of the
//! next one in the background (a reader going through a file finds it
//! there: restore from the bucket, 8 workers, went from 19.3 s to 15-19 s
//! with it, runs being noisy). Packs
//! are named by their contents, so a chunk never
//! goes stale: what the cache holds is bounded by [`SLOTS`] chunks, least
//! recently used first out. Packs just written are put in whole when they
//! hold metadata (the next snapshot reads its trees from them).

use std::sync::{Arc, Mutex};

use crate::repo::store::{FileKind, Store, StoreError, StoreResult};
use crate::util::Locked;

/// The unit of reading ahead: 4 MiB (about 60 blocks of 64 KiB, or the
/// trees of thousands of directories).
pub const CHUNK: u64 = 4 << 20;

/// An object spanning more chunks than this is read on its own.
pub const MAX_SPAN: u64 = 4;

/// Chunks kept: 24, at most 96 MiB (two for each of 8 restore workers, and
/// the metadata a snapshot walks); three per reader when more read at once
/// (see [`Chunks::make_room`]).
pub const SLOTS: usize = 24;

/// A chunk: empty until its first reader has fetched it.
type Slot = Arc<Mutex<Option<Arc<[u8]>>>>;

type Slots = Mutex<lru::LruCache<(String, u64), Slot>>;

pub struct Chunks {
    slots: Arc<Slots>,
    /// Whether a chunk fetched whole is followed by the next (off in tests
    /// that count reads).
    prefetch: bool,
}

impl Default for Chunks {
    fn default() -> Chunks {
        let slots = lru::LruCache::new(std::num::NonZeroUsize::new(SLOTS).expect("SLOTS > 0"));
        Chunks { slots: Arc::new(Mutex::new(slots)), prefetch: true }
    }
}

/// The slot of chunk `k` of `pack` (made empty if there is none).
fn slot(slots: &Slots, pack: &str, k: u64) -> Slot {
    let mut slots = slots.locked();
    match slots.get(&(pack.to_string(), k)) {
        Some(s) => s.clone(),
        None => {
            let s = Slot::default();
            slots.put((pack.to_string(), k), s.clone());
            s
        }
    }
}

/// The bytes of a chunk: what its slot holds, or fetched into it (by one
/// caller while the others wait on the slot).
fn fill(slot: &Slot, store: &dyn Store, pack: &str, k: u64) -> StoreResult<Arc<[u8]>> {
    let mut s = slot.locked();
    if let Some(c) = &*s {
        return Ok(c.clone());
    }
    let v = store.get_range_upto(FileKind::Pack, pack, k * CHUNK, CHUNK as usize)?;
    Ok(s.insert(Arc::from(v)).clone())
}

impl Chunks {
    /// Room for `n` readers going through packs at once: each holds the
    /// chunk it reads and the one fetched ahead, which must not push each
    /// other out (16 restore workers in 24 chunks took twice as long as 8).
    pub fn make_room(&self, n: usize) {
        let want = SLOTS.max(3 * n);
        let mut slots = self.slots.locked();
        if slots.cap().get() < want {
            slots.resize(std::num::NonZeroUsize::new(want).expect("want > 0"));
        }
    }

    /// `len` bytes at `off` of the pack `pack`, from the chunks that hold
    /// them (an object that crosses a chunk's end is put together from both:
    /// reading it on its own cost a round trip per chunk, a restore from a
    /// bucket made twice the reads it needed); `None` for an object that
    /// spans more than [`MAX_SPAN`] chunks (the caller reads it on its own).
    pub fn read(&self, store: &Arc<dyn Store>, pack: &str, off: u64, len: usize) -> Option<StoreResult<Vec<u8>>> {
        if len == 0 {
            return None;
        }
        let end = off + len as u64;
        let (first, last) = (off / CHUNK, (end - 1) / CHUNK);
        if last - first >= MAX_SPAN {
            return None;
        }
        let mut out = Vec::with_capacity(len);
        for k in first..=last {
            let chunk = match self.chunk(store, pack, k) {
                Ok(c) => c,
                Err(e) => return Some(Err(e)),
            };
            let from = off.max(k * CHUNK) - k * CHUNK;
            let to = end.min((k + 1) * CHUNK) - k * CHUNK;
            match chunk.get(from as usize..to as usize) {
                Some(b) => out.extend_from_slice(b),
                None => {
                    return Some(Err(StoreError::Short {
                        path: format!("packs/{pack}").into(),
                        got: out.len() + chunk.len().saturating_sub(from as usize),
                        want: len,
                    }))
                }
            }
        }
        Some(Ok(out))
    }

    /// Chunk `k` of `pack`, fetched if need be; a whole chunk is followed
    /// by a fetch of the next one in the background (unless it is there or
    /// on its way).
    fn chunk(&self, store: &Arc<dyn Store>, pack: &str, k: u64) -> StoreResult<Arc<[u8]>> {
        let c = fill(&slot(&self.slots, pack, k), &**store, pack, k)?;
        let ahead =
            self.prefetch && c.len() as u64 == CHUNK && !self.slots.locked().contains(&(pack.to_string(), k + 1));
        if ahead {
            let (slots, store, pack) = (self.slots.clone(), store.clone(), pack.to_string());
            let next = slot(&slots, &pack, k + 1);
            let _ = std::thread::Builder::new().name("snapfs-readahead".into()).spawn(move || {
                if let Err(e) = fill(&next, &*store, &pack, k + 1) {
                    log::debug!("reading ahead in pack {pack}: {e}");
                }
            });
        }
        Ok(c)
    }

    /// The bytes of a pack just written, in chunks.
    pub fn insert(&self, pack: &str, bytes: &[u8]) {
        let mut slots = self.slots.locked();
        for (k, c) in bytes.chunks(CHUNK as usize).enumerate() {
            slots.put((pack.to_string(), k as u64), Arc::new(Mutex::new(Some(Arc::from(c)))));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::store::LocalStore;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A local store that counts ranged reads.
    struct Counting {
        inner: LocalStore,
        reads: AtomicUsize,
    }

    impl Store for Counting {
        fn put(&self, kind: FileKind, name: &str, data: &[u8]) -> StoreResult<()> {
            self.inner.put(kind, name, data)
        }
        fn get(&self, kind: FileKind, name: &str) -> StoreResult<Vec<u8>> {
            self.inner.get(kind, name)
        }
        fn get_range(&self, kind: FileKind, name: &str, off: u64, len: usize) -> StoreResult<Vec<u8>> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            self.inner.get_range(kind, name, off, len)
        }
        fn size(&self, kind: FileKind, name: &str) -> StoreResult<u64> {
            self.inner.size(kind, name)
        }
        fn list(&self, kind: FileKind) -> StoreResult<Vec<String>> {
            self.inner.list(kind)
        }
        fn delete(&self, kind: FileKind, name: &str) -> StoreResult<()> {
            self.inner.delete(kind, name)
        }
    }

    fn pack(n: usize) -> (tempfile::TempDir, Arc<Counting>, Arc<dyn Store>, Vec<u8>) {
        let t = tempfile::tempdir().unwrap();
        let bytes: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
        let s = Arc::new(Counting { inner: LocalStore::new(t.path()), reads: AtomicUsize::new(0) });
        s.put(FileKind::Pack, "p", &bytes).unwrap();
        (t, s.clone(), s, bytes)
    }

    fn counted() -> Chunks {
        Chunks { prefetch: false, ..Chunks::default() }
    }

    #[test]
    fn reads_inside_a_chunk_fetch_it_once() {
        let n = CHUNK as usize + 1000;
        let (_t, n_reads, s, bytes) = pack(n);
        let c = counted();
        for off in [0usize, 10, 70_000, CHUNK as usize - 100] {
            assert_eq!(c.read(&s, "p", off as u64, 100).unwrap().unwrap(), bytes[off..off + 100]);
        }
        assert_eq!(n_reads.reads.load(Ordering::SeqCst), 1);
        // the short last chunk, then a read past the end of the pack
        assert_eq!(c.read(&s, "p", CHUNK + 10, 990).unwrap().unwrap(), bytes[CHUNK as usize + 10..]);
        assert!(matches!(c.read(&s, "p", CHUNK + 10, 991), Some(Err(StoreError::Short { .. }))));
        assert_eq!(n_reads.reads.load(Ordering::SeqCst), 2);
        // across a chunk's end: put together from both, no read more
        let at = CHUNK as usize - 10;
        assert_eq!(c.read(&s, "p", at as u64, 20).unwrap().unwrap(), bytes[at..at + 20]);
        assert_eq!(n_reads.reads.load(Ordering::SeqCst), 2);
        // and past the pack's end from there: short
        assert!(matches!(c.read(&s, "p", at as u64, 1100), Some(Err(StoreError::Short { .. }))));
        // an object over more than MAX_SPAN chunks: the caller's
        assert!(c.read(&s, "p", 0, (MAX_SPAN * CHUNK) as usize + 1).is_none());
    }

    #[test]
    fn the_chunk_after_a_whole_one_is_fetched_ahead() {
        let (_t, n_reads, s, bytes) = pack(2 * CHUNK as usize + 10);
        let c = Chunks::default();
        assert_eq!(c.read(&s, "p", 5, 10).unwrap().unwrap(), bytes[5..15]);
        let t0 = std::time::Instant::now();
        while n_reads.reads.load(Ordering::SeqCst) < 2 {
            assert!(t0.elapsed() < std::time::Duration::from_secs(10), "no read ahead");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let at = CHUNK as usize + 7;
        assert_eq!(c.read(&s, "p", at as u64, 10).unwrap().unwrap(), bytes[at..at + 10]);
        // (chunk 1 was fetched ahead; reading it fetches the short chunk 2)
        assert!(n_reads.reads.load(Ordering::SeqCst) <= 3);
    }

    #[test]
    fn a_written_pack_is_read_from_memory() {
        let (_t, n_reads, s, bytes) = pack(5000);
        let c = counted();
        c.insert("p", &bytes);
        assert_eq!(c.read(&s, "p", 4000, 1000).unwrap().unwrap(), bytes[4000..]);
        assert_eq!(n_reads.reads.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_failed_fetch_is_tried_again() {
        let (_t, _, s, bytes) = pack(5000);
        let c = counted();
        assert!(matches!(c.read(&s, "q", 0, 10), Some(Err(StoreError::NotFound { .. }))));
        assert_eq!(c.read(&s, "p", 0, 10).unwrap().unwrap(), bytes[..10]);
    }

    #[test]
    fn concurrent_readers_of_a_chunk_share_one_fetch() {
        let (_t, n_reads, s, bytes) = pack(100_000);
        let c = counted();
        std::thread::scope(|sc| {
            for i in 0..8 {
                let (c, s, bytes) = (&c, &s, &bytes);
                sc.spawn(move || {
                    let off = i * 1000;
                    assert_eq!(c.read(s, "p", off as u64, 500).unwrap().unwrap(), bytes[off..off + 500]);
                });
            }
        });
        assert_eq!(n_reads.reads.load(Ordering::SeqCst), 1);
    }
}
