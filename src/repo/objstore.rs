//! Objects in packs, found through an index.
//!
//! New objects collect in a pending pack (deduplicated against the index and
//! the pending pack) that is written to the [`Store`] when it reaches
//! [`PACK_TARGET`] bytes or on [`Objects::flush`]. Compressing, sealing and
//! writing packs happen on an encoder thread (started at the first object
//! added), so that the caller hashes and reads the next block meanwhile; a
//! failed pack write is returned by the next `put` and by `flush`. The index maps object id
//! to pack and position; it lives in sled (`index` and `indexed_packs`
//! trees) and can always be rebuilt from the pack trailers. At open, packs
//! the index does not know yet (written before a crash) are indexed. Every
//! object read is checked against its id.
//!
//! (About 1,020 lines of code and 170 of tests: the encoder thread, the index upkeep, the reading and healing paths
//! share the sink's locks and its pending set; the index, packs and read-ahead are files of their own.)

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use thiserror::Error;

use crate::repo::crypto::Keys;
use crate::repo::index::Index;
pub use crate::repo::index::Location;
use crate::repo::objects::{DecodeError, Entry, FileNode, ObjKind, ObjectId, PackId, Tree, TreeId};
use crate::repo::pack::{self, PackEntry, PackError, PackWriter};
use crate::repo::readahead::Chunks;
use crate::repo::state::StateDb;
use crate::repo::store::{FileKind, Store, StoreError};
use crate::util::{Locked, RwLocked};

/// Size at which a pending pack is written out.
pub const PACK_TARGET: usize = 16 << 20;

#[derive(Debug, Error)]
pub enum ObjError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Pack(#[from] PackError),
    #[error("object {0} is missing from the repository (index says nothing, or its pack is gone)")]
    Missing(ObjectId),
    #[error("object {id}: {err}")]
    Decode { id: ObjectId, err: DecodeError },
    #[error("object {id} is a {found:?}, expected a {want:?}")]
    WrongKind { id: ObjectId, found: ObjKind, want: ObjKind },
    #[error("entry {0:?} is read as a directory but is none")]
    NotDir(String),
    #[error("a {kind:?} object of {len} bytes is larger than the format allows")]
    TooLarge { kind: ObjKind, len: usize },
    #[error("index database: {0}")]
    Db(#[from] sled::Error),
    /// A pack written in the background failed (`flush` returns the error
    /// itself); what was pending is dropped.
    #[error("writing a pack failed: {message}")]
    PackWriteFailed { message: String, enospc: bool },
}

impl ObjError {
    pub fn is_enospc(&self) -> bool {
        match self {
            ObjError::Store(e) => e.is_enospc(),
            ObjError::PackWriteFailed { enospc, .. } => *enospc,
            _ => false,
        }
    }
}

/// Every object failure (missing, damaged, malformed) is `EIO` to a
/// reader; file contents a write-only key cannot open are `EACCES`.
impl crate::os::errno::ToErrno for ObjError {
    fn to_errno(&self) -> crate::os::errno::Errno {
        match self {
            ObjError::Store(e) => e.to_errno(),
            ObjError::Pack(PackError::Sealed(crate::repo::crypto::CryptoError::WriteOnly)) => {
                crate::os::errno::Errno(libc::EACCES)
            }
            _ => crate::os::errno::Errno::EIO,
        }
    }
}

pub type ObjResult<T> = Result<T, ObjError>;

/// See [`Objects::quiesce`].
pub struct Quiet<'a> {
    _io: std::sync::MutexGuard<'a, ()>,
}

/// The objects added and not yet in an indexed pack (queued to the encoder,
/// or in the pack it is filling), readable from here meanwhile.
#[derive(Default)]
struct Pending {
    raw: HashMap<ObjectId, (ObjKind, Arc<[u8]>)>,
}

/// What the encoder thread shares with [`Objects`].
struct Sink {
    store: Arc<dyn Store>,
    keys: Option<Arc<Keys>>,
    index: Index,
    pending: Mutex<Pending>,
    /// Held while a pack is written and indexed (see [`Objects::quiesce`]).
    io: Mutex<()>,
    /// Packs written and indexed so far (changed under `pending`).
    packs_done: AtomicU64,
    /// A background pack write failed: puts fail until `flush` returns the
    /// error (or `discard_pending`).
    failed: AtomicBool,
    failure: Mutex<Option<ObjError>>,
    /// While a snapshot is taken: the packs it reused objects from or wrote
    /// (see [`Objects::track_packs`]).
    used_packs: Mutex<Option<HashSet<String>>>,
    added_objects: AtomicU64,
    added_stored: AtomicU64,
    added_raw: AtomicU64,
    added_blob: AtomicU64,
    added_packs: AtomicU64,
    /// Reads ahead of a remote store (see `repo::readahead`).
    chunks: Option<Chunks>,
}

/// Work for the encoder thread, done in order.
enum Job {
    Put { id: ObjectId, kind: ObjKind, raw: Arc<[u8]> },
    Copy { entry: PackEntry, stored: Vec<u8> },
    Flush(SyncSender<ObjResult<()>>),
    Discard(SyncSender<()>),
}

/// The encoder thread ended (it panicked): nothing more is written.
fn encoder_gone() -> ObjError {
    ObjError::PackWriteFailed { message: "the pack encoder thread is gone".into(), enospc: false }
}

/// Pack trailers of a remote store read at once when indexing.
const TRAILERS_AT_ONCE: usize = 8;

/// Jobs queued to the encoder before `put` waits (each at most one block).
const QUEUE: usize = 16;

struct Encoder {
    tx: SyncSender<Job>,
    thread: std::thread::JoinHandle<()>,
}

impl Sink {
    /// The encoder thread: fill a pack, write it when full or asked.
    ///
    /// File data and metadata (trees, block lists, link tables) fill packs
    /// of their own: a snapshot's metadata is read together (restore's
    /// walk, the next snapshot's), and a remote store is read a chunk of a
    /// pack at a time (see `repo::readahead`).
    fn encode(self: Arc<Sink>, jobs: std::sync::mpsc::Receiver<Job>) {
        let new = || PackWriter::new(self.keys.as_ref());
        let mut writers = [new(), new()];
        let of = |kind: ObjKind| usize::from(kind != ObjKind::Blob);
        for job in jobs {
            let w = match job {
                Job::Put { id, kind, raw } => {
                    if self.failed.load(Ordering::Acquire) {
                        self.drop_pending(&id);
                        continue;
                    }
                    let stored = writers[of(kind)].add(id, kind, &raw);
                    self.added_stored.fetch_add(stored as u64, Ordering::Relaxed);
                    of(kind)
                }
                Job::Copy { entry, stored } => {
                    if self.failed.load(Ordering::Acquire) {
                        self.drop_pending(&entry.id);
                        continue;
                    }
                    writers[of(entry.kind)].add_encoded(&entry, &stored);
                    of(entry.kind)
                }
                Job::Flush(reply) => {
                    let r = self.write(&mut writers).and_then(|()| self.failure.locked().take().map_or(Ok(()), Err));
                    self.failed.store(false, Ordering::Release);
                    let _ = reply.send(r);
                    continue;
                }
                Job::Discard(reply) => {
                    writers = [new(), new()];
                    *self.failure.locked() = None;
                    self.failed.store(false, Ordering::Release);
                    let _ = reply.send(());
                    continue;
                }
            };
            if writers[w].len() >= PACK_TARGET {
                if let Err(e) = self.write(std::slice::from_mut(&mut writers[w])) {
                    self.failed.store(true, Ordering::Release);
                    self.failure.locked().get_or_insert(e);
                }
            }
        }
    }

    /// An object queued after a pack write failed is not written: it must
    /// not stay pending (a later put would take it as stored).
    fn drop_pending(&self, id: &ObjectId) {
        self.pending.locked().raw.remove(id);
    }

    /// Write the packs `writers` hold (durably), index them, and let their
    /// objects go from pending. They are written at once (the data and the
    /// metadata pack of a snapshot: one round trip or fsync, not two).
    /// On failure nothing half-done is kept: the pending objects are
    /// dropped, the caller fails and starts over (a pack written before
    /// the failure stays, indexed, as any written pack does).
    fn write(&self, writers: &mut [PackWriter]) -> ObjResult<()> {
        let packs: Vec<_> = writers
            .iter_mut()
            .filter(|w| !w.is_empty())
            .map(|w| std::mem::replace(w, PackWriter::new(self.keys.as_ref())).finish())
            .collect();
        if packs.is_empty() {
            return Ok(());
        }
        let io = self.io.locked();
        let put = |(name, bytes, _): &(PackId, Vec<u8>, Vec<PackEntry>)| {
            self.store.put(FileKind::Pack, name, bytes).map_err(ObjError::from)
        };
        // (at once on any store: a round trip each on a remote one, an
        // fsync each on a disk)
        let written: Vec<ObjResult<()>> = if packs.len() > 1 {
            std::thread::scope(|s| {
                let handles: Vec<_> = packs.iter().map(|p| s.spawn(move || put(p))).collect();
                handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(encoder_gone()))).collect()
            })
        } else {
            packs.iter().map(put).collect()
        };
        let mut result = Ok(());
        for ((name, bytes, entries), w) in packs.iter().zip(written) {
            let r = w.and_then(|()| self.index.add_pack(name, entries));
            match r {
                Ok(()) => {
                    if let Some(c) = &self.chunks {
                        if entries.iter().all(|e| e.kind != ObjKind::Blob) {
                            c.insert(name, bytes);
                        }
                    }
                    let mut p = self.pending.locked();
                    for e in entries {
                        p.raw.remove(&e.id);
                    }
                    if let Some(u) = self.used_packs.locked().as_mut() {
                        u.insert(name.to_string());
                    }
                    self.packs_done.fetch_add(1, Ordering::AcqRel);
                    self.added_packs.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    if result.is_ok() {
                        result = Err(e);
                    }
                }
            }
        }
        drop(io);
        if result.is_err() {
            self.pending.locked().raw.clear();
        }
        result
    }
}

/// The error is damage to the object or its pack (another copy may be
/// sound); not a write-only key's refusal, not a store that is down.
fn is_damage(err: &ObjError) -> bool {
    matches!(
        err,
        ObjError::Missing(_)
            | ObjError::Decode { .. }
            | ObjError::Pack(
                PackError::Malformed(_)
                    | PackError::HashMismatch { .. }
                    | PackError::Decompress { .. }
                    | PackError::Sealed(crate::repo::crypto::CryptoError::Tampered(_))
            )
            | ObjError::Store(StoreError::NotFound { .. } | StoreError::Short { .. })
    )
}

/// Counters of what was added since they were last taken.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AddStats {
    pub objects: u64,
    /// Bytes as stored in packs (compressed).
    pub stored_bytes: u64,
    /// Bytes before compression.
    pub raw_bytes: u64,
    /// Of those, blobs (file data).
    pub blob_bytes: u64,
    pub packs: u64,
}

pub struct Objects {
    sink: Arc<Sink>,
    /// The ids of all-hole block-list nodes, per level (they depend on the id key).
    holes: Vec<ObjectId>,
    encoder: OnceLock<Encoder>,
    /// Packs a deletion plan names (see `repo::plans`): their objects are
    /// not reused, a put stores them again.
    excluded: RwLock<HashSet<String>>,
    /// Objects forgotten with a pack another host's prune deleted: a copy
    /// may be in a pack indexed before (read: the index is built again).
    forgotten: Mutex<HashSet<ObjectId>>,
    /// Where a read that hits damage gets a sound copy (a mount's replicas).
    healer: RwLock<Option<Healer>>,
    /// Objects healed so on read.
    healed: AtomicU64,
}

/// Gives a sound copy of an object (its bytes, and where they came from),
/// or None.
pub type Healer = Arc<dyn Fn(&ObjectId, ObjKind) -> Option<(Vec<u8>, String)> + Send + Sync>;

impl Drop for Objects {
    /// What is still pending is dropped (as without a flush); the encoder
    /// finishes the job it is on and ends.
    fn drop(&mut self) {
        if let Some(Encoder { tx, thread }) = self.encoder.take() {
            drop(tx);
            let _ = thread.join();
        }
    }
}

impl Objects {
    /// Objects indexed in sled (the daemon), or in memory built from the pack
    /// trailers (`db` = None: tools that run beside a daemon holding sled).
    pub fn open(store: Arc<dyn Store>, db: Option<&Arc<StateDb>>) -> ObjResult<Objects> {
        let index = match db {
            Some(db) => Index::Sled(db.clone()),
            None => Index::memory(),
        };
        let keys = store.keys();
        let store_remote = store.remote();
        let holes = match &keys {
            None => (0..=crate::repo::objects::MAX_LEVEL).map(crate::repo::objects::hole_node).collect(),
            Some(k) => crate::repo::objects::hole_nodes(|kind, raw| k.id_of(kind, raw)),
        };
        let sink = Arc::new(Sink {
            store,
            keys,
            index,
            pending: Mutex::new(Pending::default()),
            io: Mutex::new(()),
            packs_done: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            failure: Mutex::new(None),
            used_packs: Mutex::new(None),
            added_objects: AtomicU64::new(0),
            added_stored: AtomicU64::new(0),
            added_raw: AtomicU64::new(0),
            added_blob: AtomicU64::new(0),
            added_packs: AtomicU64::new(0),
            chunks: store_remote.then(Chunks::default),
        });
        let o = Objects {
            sink,
            holes,
            encoder: OnceLock::new(),
            excluded: RwLock::new(HashSet::new()),
            forgotten: Mutex::new(HashSet::new()),
            healer: RwLock::new(None),
            healed: AtomicU64::new(0),
        };
        o.index_new_packs()?;
        Ok(o)
    }

    /// `n` threads are about to read many objects at once (restore's
    /// workers): a remote store's read-ahead keeps room for them all.
    pub fn expect_readers(&self, n: usize) {
        if let Some(c) = &self.sink.chunks {
            c.make_room(n);
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.sink.store
    }

    /// The keys of an encrypted repository.
    pub fn keys(&self) -> Option<&Arc<Keys>> {
        self.sink.keys.as_ref()
    }

    /// The id `raw` has as an object of `kind` in this repository (keyed
    /// blake3 in an encrypted one).
    pub fn id_of(&self, kind: ObjKind, raw: &[u8]) -> ObjectId {
        match &self.sink.keys {
            Some(k) => k.id_of(kind, raw),
            None => ObjectId::of_object(kind, raw),
        }
    }

    /// The id of a full all-hole block-list node at `level` (see
    /// [`crate::repo::objects::hole_node`]).
    pub fn hole_node(&self, level: u8) -> ObjectId {
        self.holes.get(level as usize).copied().unwrap_or(ObjectId::ZERO)
    }

    /// Whether the subtree `id` at `level` of a block list is all holes, by
    /// its id alone.
    pub fn is_hole(&self, id: &ObjectId, level: u8) -> bool {
        id.is_zero() || *id == self.hole_node(level)
    }

    /// The checked bytes of an object as stored in pack `pack`.
    pub fn decode_object(&self, pack: &str, e: &PackEntry, stored: &[u8]) -> Result<Vec<u8>, PackError> {
        pack::decode_object(self.sink.keys.as_deref(), pack, e, stored)
    }

    /// Read the trailer of a pack.
    pub fn pack_entries(&self, name: &str) -> ObjResult<Vec<PackEntry>> {
        /// The end of a pack read at once: the footer, and the trailer
        /// with it when it fits (a pack of 256 blocks has one of about
        /// 20 KiB): one read less, a round trip on a remote store.
        const TAIL: u64 = 64 << 10;
        let size = self.sink.store.size(FileKind::Pack, name)?;
        if size < 8 + 4 + 16 {
            return Err(PackError::Malformed(name.into()).into());
        }
        let start = size - size.min(TAIL);
        let tail = self.sink.store.get_range(FileKind::Pack, name, start, (size - start) as usize)?;
        let off = pack::parse_footer(name, &tail[tail.len() - 16..], size)?;
        let t = match off.checked_sub(start) {
            Some(at) => tail[at as usize..tail.len() - 16].to_vec(),
            None => self.sink.store.get_range(FileKind::Pack, name, off, (size - 16 - off) as usize)?,
        };
        match pack::parse_trailer(self.sink.keys.as_deref(), name, &t, off) {
            Ok(e) => Ok(e),
            Err(e) => {
                // say so when the pack is of the other form (an encrypted
                // pack in a plain repository, or the reverse)
                let head = self.sink.store.get_range(FileKind::Pack, name, 0, 8)?;
                pack::check_magic(name, &head, self.sink.keys.is_some())?;
                Err(e.into())
            }
        }
    }

    /// Index every pack in the store the index does not know. Returns how many.
    pub fn index_new_packs(&self) -> ObjResult<usize> {
        self.index_packs_into(&self.sink.index, None)
    }

    /// Add every pack of the store (as `listed`, or listed now) that `index`
    /// does not know to it.
    fn index_packs_into(&self, index: &Index, listed: Option<Vec<String>>) -> ObjResult<usize> {
        let mut n = 0;
        let mut names = match listed {
            Some(l) => l,
            None => self.sink.store.list(FileKind::Pack)?,
        };
        // packs a plan condemns first: a copy elsewhere is indexed after, and wins
        {
            let ex = self.excluded.read_locked();
            if !ex.is_empty() {
                names.sort_by_key(|n| !ex.contains(n));
            }
        }
        let mut todo = Vec::new();
        for name in names {
            let Some(id) = PackId::parse(&name) else {
                log::warn!("packs/{name}: not a pack name; ignored");
                continue;
            };
            if !index.has_pack(&name)? {
                todo.push(id);
            }
        }
        // (a remote store's trailers are read several at once: each read is
        // a round trip; they are indexed in the order above)
        let at_once = if self.sink.store.remote() { TRAILERS_AT_ONCE } else { 1 };
        let t0 = std::time::Instant::now();
        for batch in todo.chunks(at_once * 8) {
            let next = std::sync::atomic::AtomicUsize::new(0);
            let read: Vec<Mutex<Option<ObjResult<Vec<PackEntry>>>>> = batch.iter().map(|_| Mutex::new(None)).collect();
            std::thread::scope(|s| {
                for _ in 0..at_once.min(batch.len()) {
                    s.spawn(|| loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(id) = batch.get(i) else { return };
                        *read[i].locked() = Some(self.pack_entries(id));
                    });
                }
            });
            for (id, r) in batch.iter().zip(read) {
                match r.into_inner().unwrap_or_else(|e| e.into_inner()) {
                    Some(Ok(entries)) => {
                        index.add_pack(id, &entries)?;
                        n += 1;
                    }
                    Some(Err(e)) => log::error!("pack {id} cannot be indexed: {e}"),
                    None => log::error!("pack {id} cannot be indexed: its reader ended"),
                }
            }
        }
        if n > 0 {
            log::info!("indexed {n} packs in {} ms", t0.elapsed().as_millis());
        }
        Ok(n)
    }

    /// Build an index in memory anew from the packs there are now, and
    /// put it in place of the old one at once (readers never see it empty).
    fn reload_memory_index(&self) -> ObjResult<()> {
        let Index::Memory { objects, packs, others } = &self.sink.index else { return Ok(()) };
        let fresh = Index::memory();
        self.index_packs_into(&fresh, None)?;
        let Index::Memory { objects: o, packs: p, others: x } = fresh else { unreachable!("built above") };
        *objects.write_locked() = o.into_inner().unwrap_or_else(|e| e.into_inner());
        *packs.write_locked() = p.into_inner().unwrap_or_else(|e| e.into_inner());
        *others.write_locked() = x.into_inner().unwrap_or_else(|e| e.into_inner());
        Ok(())
    }

    /// Forget the index and build it again from the packs.
    pub fn rebuild_index(&self) -> ObjResult<usize> {
        self.sink.index.clear()?;
        self.index_new_packs()
    }

    /// Whether the index is the persistent one (sled) rather than one built
    /// in memory from the pack trailers at open.
    pub fn index_is_persistent(&self) -> bool {
        matches!(self.sink.index, Index::Sled(_))
    }

    /// Call `f` for every entry of the index, and return the packs it holds
    /// as indexed. (For a memory index: the same, built from the trailers.)
    pub fn scan_index(&self, mut f: impl FnMut(ObjectId, Option<Location>)) -> ObjResult<HashSet<String>> {
        match &self.sink.index {
            Index::Sled(db) => {
                for kv in db.tree("index")?.iter() {
                    let (k, v) = kv?;
                    let Ok(id) = <[u8; 32]>::try_from(&*k) else {
                        f(ObjectId::ZERO, None);
                        continue;
                    };
                    let id = ObjectId(id);
                    f(id, Location::decode(id, &v));
                }
            }
            Index::Memory { objects, .. } => {
                for (id, loc) in objects.read_locked().iter() {
                    f(*id, Some(loc.clone()));
                }
            }
        }
        let mut packs = HashSet::new();
        self.index_known_packs(|p| {
            packs.insert(p);
        })?;
        Ok(packs)
    }

    /// Point objects elsewhere or drop them from the index (prune, before
    /// their packs go), and drop `packs` from the set of indexed packs; then
    /// make it durable.
    pub fn reindex(&self, changes: &[(ObjectId, Option<Location>)], packs: &[String]) -> ObjResult<()> {
        match &self.sink.index {
            Index::Sled(db) => {
                let (objects, indexed) = (db.tree("index")?, db.tree("indexed_packs")?);
                // Packs first: killed half-way (sled recovers a prefix), a
                // pack still there is no longer marked indexed and is indexed
                // whole at the next open.
                for p in packs {
                    indexed.remove(p.as_bytes())?;
                }
                for chunk in changes.chunks(4096) {
                    let mut batch = sled::Batch::default();
                    for (id, loc) in chunk {
                        match loc {
                            Some(l) => batch.insert(&id.0, l.encode()),
                            None => batch.remove(&id.0),
                        }
                    }
                    objects.apply_batch(batch)?;
                }
                db.flush()?;
            }
            Index::Memory { objects, packs: indexed, others } => {
                let mut o = objects.write_locked();
                for (id, loc) in changes {
                    match loc {
                        Some(l) => o.insert(*id, l.clone()),
                        None => o.remove(id),
                    };
                }
                let mut ip = indexed.write_locked();
                for p in packs {
                    ip.remove(p);
                }
                // (the copies in packs that go, go too)
                let gone: HashSet<&str> = packs.iter().map(String::as_str).collect();
                others.write_locked().retain(|_, v| {
                    v.retain(|l| !gone.contains(l.pack.as_str()));
                    !v.is_empty()
                });
            }
        }
        Ok(())
    }

    /// Add an object, as stored in `from`, to the pending pack even if the
    /// index knows it (prune moving it out of a pack that will go). Its
    /// stored bytes are verified first.
    pub fn copy_object(&self, from: &str, e: &PackEntry, stored: &[u8]) -> ObjResult<()> {
        let raw = self.decode_object(from, e, stored)?;
        self.check_failed()?;
        {
            let mut p = self.sink.pending.locked();
            if p.raw.contains_key(&e.id) {
                return Ok(());
            }
            p.raw.insert(e.id, (e.kind, raw.into()));
        }
        self.send(Job::Copy { entry: *e, stored: stored.to_vec() })
    }

    pub fn has(&self, id: &ObjectId) -> ObjResult<bool> {
        if self.sink.pending.locked().raw.contains_key(id) {
            return Ok(true);
        }
        Ok(self.sink.index.get(id)?.is_some())
    }

    pub fn locate(&self, id: &ObjectId) -> ObjResult<Option<Location>> {
        self.sink.index.get(id)
    }

    /// Store an object unless it is there already. Returns its id and whether it was new.
    pub fn put(&self, kind: ObjKind, raw: &[u8]) -> ObjResult<(ObjectId, bool)> {
        if raw.len() > crate::repo::objects::max_object_bytes(kind) {
            return Err(ObjError::TooLarge { kind, len: raw.len() });
        }
        let id = self.id_of(kind, raw);
        self.check_failed()?;
        let packs = self.sink.packs_done.load(Ordering::Acquire);
        if self.reusable(&id)? || !self.enqueue(id, kind, raw, Some(packs))? {
            return Ok((id, false));
        }
        self.sink.added_objects.fetch_add(1, Ordering::Relaxed);
        self.sink.added_raw.fetch_add(raw.len() as u64, Ordering::Relaxed);
        if kind == ObjKind::Blob {
            self.sink.added_blob.fetch_add(raw.len() as u64, Ordering::Relaxed);
        }
        Ok((id, true))
    }

    /// Make `raw` pending and hand it to the encoder, unless it is pending
    /// already. With `packs_seen` (the packs written when the caller asked
    /// the index), ask the index again if a pack was written since: it took
    /// its objects out of pending. Returns whether it was queued.
    fn enqueue(&self, id: ObjectId, kind: ObjKind, raw: &[u8], packs_seen: Option<u64>) -> ObjResult<bool> {
        let data: Arc<[u8]> = {
            let mut p = self.sink.pending.locked();
            if p.raw.contains_key(&id) {
                return Ok(false);
            }
            if let Some(seen) = packs_seen {
                if self.sink.packs_done.load(Ordering::Acquire) != seen && self.reusable(&id)? {
                    return Ok(false);
                }
            }
            let data: Arc<[u8]> = raw.into();
            p.raw.insert(id, (kind, data.clone()));
            data
        };
        self.send(Job::Put { id, kind, raw: data })?;
        Ok(true)
    }

    /// Whether the index has `id` in a pack no plan condemns (and note the
    /// pack as used, when tracking).
    fn reusable(&self, id: &ObjectId) -> ObjResult<bool> {
        let Some(loc) = self.sink.index.get(id)? else { return Ok(false) };
        {
            let ex = self.excluded.read_locked();
            if !ex.is_empty() && ex.contains(loc.pack.as_str()) {
                return Ok(false);
            }
        }
        if let Some(u) = self.sink.used_packs.locked().as_mut() {
            if !u.contains(loc.pack.as_str()) {
                u.insert(loc.pack.to_string());
            }
        }
        Ok(true)
    }

    /// Packs whose objects are not to be reused (those deletion plans name).
    pub fn set_excluded(&self, packs: HashSet<String>) {
        *self.excluded.write_locked() = packs;
    }

    /// Start (true) or stop noting the packs that puts reuse objects from
    /// or write; [`Objects::used_packs`] gives them.
    pub fn track_packs(&self, on: bool) {
        *self.sink.used_packs.locked() = on.then(HashSet::new);
    }

    /// The packs noted since tracking began.
    pub fn used_packs(&self) -> HashSet<String> {
        self.sink.used_packs.locked().clone().unwrap_or_default()
    }

    /// Bring the index up to date with the store other hosts write too:
    /// index the packs it does not know, and forget the packs that are gone
    /// (deleted by a prune). Returns (packs indexed, packs forgotten).
    pub fn refresh(&self) -> ObjResult<(usize, usize)> {
        let (added, gone) = self.refresh_names()?;
        Ok((added, gone.len()))
    }

    /// [`Objects::refresh`], naming the packs forgotten.
    pub fn refresh_names(&self) -> ObjResult<(usize, Vec<String>)> {
        let known = self.known_packs()?;
        let listed = self.sink.store.list(FileKind::Pack)?;
        self.refresh_listed(known, listed)
    }

    /// The packs the index holds now: taken before a listing of the store,
    /// for [`Objects::refresh_listed`].
    pub fn known_packs(&self) -> ObjResult<HashSet<String>> {
        let _io = self.sink.io.locked();
        let mut known = HashSet::new();
        self.index_known_packs(|p| {
            known.insert(p);
        })?;
        Ok(known)
    }

    /// [`Objects::refresh_names`] from a listing of the packs made after
    /// `known` was taken (so a pack written meanwhile, which the listing
    /// may lack, is not taken for deleted). Returns (packs indexed, packs
    /// forgotten).
    pub fn refresh_listed(&self, known: HashSet<String>, listed: Vec<String>) -> ObjResult<(usize, Vec<String>)> {
        let in_list: HashSet<&str> = listed.iter().map(String::as_str).collect();
        let gone: Vec<String> = known.into_iter().filter(|p| !in_list.contains(p.as_str())).collect();
        if !gone.is_empty() {
            let _io = self.sink.io.locked();
            let ids = self.forget_packs(&gone)?;
            log::info!("{} packs deleted by a prune elsewhere: their {} objects forgotten", gone.len(), ids.len());
            self.forgotten.locked().extend(ids);
        }
        let added = self.index_packs_into(&self.sink.index, Some(listed))?;
        Ok((added, gone))
    }

    /// Drop `packs` from the index: the packs, and every entry that places
    /// an object in one of them. Returns those objects.
    pub fn forget_packs(&self, packs: &[String]) -> ObjResult<Vec<ObjectId>> {
        let set: HashSet<&str> = packs.iter().map(String::as_str).collect();
        let mut changes = Vec::new();
        self.scan_index(|id, loc| {
            if loc.is_some_and(|l| set.contains(l.pack.as_str())) {
                changes.push((id, None));
            }
        })?;
        self.reindex(&changes, packs)?;
        Ok(changes.into_iter().map(|(id, _)| id).collect())
    }

    /// Call `f` with the name of every pack the index holds.
    fn index_known_packs(&self, mut f: impl FnMut(String)) -> ObjResult<()> {
        match &self.sink.index {
            Index::Sled(db) => {
                for kv in db.tree("indexed_packs")?.iter() {
                    f(String::from_utf8_lossy(&kv?.0).into_owned());
                }
            }
            Index::Memory { packs, .. } => packs.read_locked().iter().cloned().for_each(f),
        }
        Ok(())
    }

    /// Store an object even though the index has it (a repair: the copy
    /// the index names is damaged); the new pack's entry replaces it.
    pub fn put_again(&self, kind: ObjKind, raw: &[u8]) -> ObjResult<()> {
        self.check_failed()?;
        self.enqueue(self.id_of(kind, raw), kind, raw, None).map(drop)
    }

    /// A pack written in the background failed: say so (the error itself
    /// comes from `flush`).
    fn check_failed(&self) -> ObjResult<()> {
        if !self.sink.failed.load(Ordering::Acquire) {
            return Ok(());
        }
        let f = self.sink.failure.locked();
        Err(ObjError::PackWriteFailed {
            message: f.as_ref().map(|e| e.to_string()).unwrap_or_else(|| "an earlier pack".into()),
            enospc: f.as_ref().is_some_and(|e| e.is_enospc()),
        })
    }

    /// Hand a job to the encoder thread (started at the first).
    fn send(&self, job: Job) -> ObjResult<()> {
        let enc = self.encoder.get_or_init(|| {
            let (tx, rx) = sync_channel(QUEUE);
            let sink = self.sink.clone();
            let thread = std::thread::Builder::new()
                .name("snapfs-encoder".into())
                .spawn(move || sink.encode(rx))
                .expect("spawn the pack encoder thread");
            Encoder { tx, thread }
        });
        enc.tx.send(job).map_err(|_| encoder_gone())
    }

    /// While the guard lives, no pack is written or indexed (objects still
    /// queue up for the encoder): the packs in the store and the index agree.
    pub fn quiesce(&self) -> Quiet<'_> {
        Quiet { _io: self.sink.io.locked() }
    }

    /// Write the pending pack (durably) and index it; return the error of
    /// any pack written in the background since the last flush.
    pub fn flush(&self) -> ObjResult<()> {
        if self.encoder.get().is_none() {
            return Ok(());
        }
        let (tx, rx) = sync_channel(1);
        self.send(Job::Flush(tx))?;
        rx.recv().unwrap_or_else(|_| Err(encoder_gone()))
    }

    /// Drop what is pending without writing it (a failed snapshot).
    pub fn discard_pending(&self) {
        if self.encoder.get().is_some() {
            let (tx, rx) = sync_channel(1);
            if self.send(Job::Discard(tx)).is_ok() {
                let _ = rx.recv();
            }
        }
        self.sink.pending.locked().raw.clear();
    }

    /// The verified bytes of an object, and its kind.
    pub fn get_any(&self, id: &ObjectId) -> ObjResult<(ObjKind, Vec<u8>)> {
        if let Some((k, raw)) = self.sink.pending.locked().raw.get(id) {
            return Ok((*k, raw.to_vec()));
        }
        match self.read_indexed(id) {
            // An index built in memory beside a running daemon goes stale
            // when the daemon writes packs or prune moves objects: index the
            // packs written since, and look again.
            // Forgotten with a pack a prune elsewhere deleted: a copy may be in
            // a pack indexed before it; build the index anew.
            Err(e @ ObjError::Missing(_)) if self.forgotten.locked().remove(id) => {
                log::info!("object {id} was in a pack deleted elsewhere: indexing every pack again");
                match &self.sink.index {
                    Index::Memory { .. } => self.reload_memory_index()?,
                    Index::Sled(_) => {
                        self.rebuild_index()?;
                    }
                }
                self.forgotten.locked().clear();
                self.read_indexed(id).map_err(|_| e)
            }
            // (also the persistent index of a repository other hosts write)
            Err(e @ ObjError::Missing(_))
                if matches!(self.sink.index, Index::Memory { .. }) || self.sink.store.shared() =>
            {
                if self.index_new_packs()? == 0 {
                    return Err(e);
                }
                self.read_indexed(id)
            }
            // (a pack deleted since: the index may even have preferred it
            // to the copy, if both were there when it was built)
            Err(ObjError::Store(StoreError::NotFound { .. })) if matches!(self.sink.index, Index::Memory { .. }) => {
                self.reload_memory_index()?;
                self.read_indexed(id)
            }
            // Our own prune moved it between the lookup and the read: the
            // index already says where it is now.
            Err(ObjError::Store(StoreError::NotFound { .. })) => self.read_indexed(id),
            r => r,
        }
    }

    fn read_indexed(&self, id: &ObjectId) -> ObjResult<(ObjKind, Vec<u8>)> {
        let loc = self.sink.index.get(id)?.ok_or(ObjError::Missing(*id))?;
        match self.read_at(&loc) {
            // another copy in this repository, if the index knows one
            Err(e) if is_damage(&e) => {
                for other in self.sink.index.others(id) {
                    if let Ok(r) = self.read_at(&other) {
                        log::warn!("object {id}: {e}; read the copy in pack {}", other.pack);
                        return Ok(r);
                    }
                }
                Err(e)
            }
            r => r,
        }
    }

    fn read_at(&self, loc: &Location) -> ObjResult<(ObjKind, Vec<u8>)> {
        let (off, len) = (loc.entry.offset, loc.entry.stored as usize);
        let ahead = self.sink.chunks.as_ref().and_then(|c| c.read(&self.sink.store, &loc.pack, off, len));
        let stored = match ahead {
            Some(r) => r?,
            None => self.sink.store.get_range(FileKind::Pack, &loc.pack, off, len)?,
        };
        let raw = self.decode_object(&loc.pack, &loc.entry, &stored)?;
        Ok((loc.entry.kind, raw))
    }

    pub fn get(&self, id: &ObjectId, want: ObjKind) -> ObjResult<Vec<u8>> {
        let (kind, raw) = self.get_any(id)?;
        if kind != want {
            return Err(ObjError::WrongKind { id: *id, found: kind, want });
        }
        Ok(raw)
    }

    /// Let reads through [`Objects::get_healing`] that hit damage heal from
    /// `healer`.
    pub fn set_healer(&self, healer: Option<Healer>) {
        *self.healer.write_locked() = healer;
    }

    /// How many objects reads healed.
    pub fn healed_on_read(&self) -> u64 {
        self.healed.load(Ordering::Relaxed)
    }

    /// [`Objects::get`], and when the object is damaged or missing, a sound
    /// copy from the healer (checked against its id) is returned and
    /// written back (a new pack).
    pub fn get_healing(&self, id: &ObjectId, want: ObjKind) -> ObjResult<Vec<u8>> {
        let err = match self.get(id, want) {
            Ok(raw) => return Ok(raw),
            Err(e) => e,
        };
        let damage = is_damage(&err);
        let Some(h) = self.healer.read_locked().clone().filter(|_| damage) else { return Err(err) };
        let Some((raw, from)) = h(id, want) else { return Err(err) };
        if self.id_of(want, &raw) != *id {
            log::error!("a copy of {id} from {from} has another id: not used");
            return Err(err);
        }
        match self.put_again(want, &raw).and_then(|()| self.flush()) {
            Ok(()) => {
                self.healed.fetch_add(1, Ordering::Relaxed);
                log::warn!("REPAIRED object {id} on read ({err}) from {from}");
            }
            Err(e) => log::error!("object {id} read from {from} but not written back: {e}"),
        }
        Ok(raw)
    }

    /// [`Objects::tree`] through [`Objects::get_healing`].
    pub fn tree_healing(&self, id: &TreeId) -> ObjResult<Tree> {
        as_tree(&id.id(), &self.get_healing(&id.id(), ObjKind::Tree)?)
    }

    /// [`Objects::node`] through [`Objects::get_healing`].
    pub fn node_healing(&self, id: &ObjectId) -> ObjResult<FileNode> {
        as_node(id, &self.get_healing(id, ObjKind::FileNode)?)
    }

    /// [`Objects::dir_tree`] through [`Objects::get_healing`].
    pub fn dir_tree_healing(&self, e: &Entry) -> ObjResult<Tree> {
        self.tree_healing(&subtree_of(e)?)
    }

    pub fn tree(&self, id: &TreeId) -> ObjResult<Tree> {
        as_tree(&id.id(), &self.get(&id.id(), ObjKind::Tree)?)
    }

    /// The tree of a directory entry (an entry of another kind is an
    /// error: a directory whose listing is wanted must be one).
    pub fn dir_tree(&self, e: &Entry) -> ObjResult<Tree> {
        self.tree(&subtree_of(e)?)
    }

    /// Stores a tree; its id and whether it was new.
    pub fn put_tree(&self, tree: &Tree) -> ObjResult<(TreeId, bool)> {
        let (id, new) = self.put(ObjKind::Tree, &tree.encode())?;
        Ok((TreeId::from_dir(id), new))
    }

    pub fn node(&self, id: &ObjectId) -> ObjResult<FileNode> {
        as_node(id, &self.get(id, ObjKind::FileNode)?)
    }

    /// Counters since the last call, reset.
    pub fn take_stats(&self) -> AddStats {
        AddStats {
            objects: self.sink.added_objects.swap(0, Ordering::Relaxed),
            stored_bytes: self.sink.added_stored.swap(0, Ordering::Relaxed),
            raw_bytes: self.sink.added_raw.swap(0, Ordering::Relaxed),
            blob_bytes: self.sink.added_blob.swap(0, Ordering::Relaxed),
            packs: self.sink.added_packs.swap(0, Ordering::Relaxed),
        }
    }
}

fn as_tree(id: &ObjectId, raw: &[u8]) -> ObjResult<Tree> {
    Tree::decode(raw).map_err(|err| ObjError::Decode { id: *id, err })
}

/// The tree of directory entry `e` (another kind is [`ObjError::NotDir`]).
fn subtree_of(e: &Entry) -> ObjResult<TreeId> {
    e.subtree().ok_or_else(|| ObjError::NotDir(String::from_utf8_lossy(&e.name).into_owned()))
}

fn as_node(id: &ObjectId, raw: &[u8]) -> ObjResult<FileNode> {
    FileNode::decode(raw).map_err(|err| ObjError::Decode { id: *id, err })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::store::LocalStore;

    #[test]
    fn put_get_dedup_and_rebuild() {
        let t = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(LocalStore::new(t.path()));
        let db = StateDb::temporary();
        let o = Objects::open(store.clone(), Some(&db)).unwrap();
        let (a, new) = o.put(ObjKind::Blob, b"hello").unwrap();
        // the same bytes as another kind are another object
        let (t, new_t) = o.put(ObjKind::Tree, b"hello").unwrap();
        assert!(new_t && t != a);
        assert!(new);
        let (_, new) = o.put(ObjKind::Blob, b"hello").unwrap();
        assert!(!new);
        assert_eq!(o.get(&a, ObjKind::Blob).unwrap(), b"hello"); // from pending
        o.flush().unwrap();
        assert_eq!(o.get(&a, ObjKind::Blob).unwrap(), b"hello"); // from the pack
        assert!(matches!(o.get(&a, ObjKind::Tree), Err(ObjError::WrongKind { .. })));
        let s = o.take_stats();
        // (file data and metadata in packs of their own)
        assert_eq!((s.objects, s.packs, s.raw_bytes, s.blob_bytes), (2, 2, 10, 5));
        let packs = store.list(FileKind::Pack).unwrap();
        let kinds: Vec<Vec<ObjKind>> =
            packs.iter().map(|p| o.pack_entries(p).unwrap().iter().map(|e| e.kind).collect()).collect();
        assert!(kinds.contains(&vec![ObjKind::Blob]) && kinds.contains(&vec![ObjKind::Tree]), "{kinds:?}");
        // the index is rebuilt from packs alone
        assert_eq!(o.rebuild_index().unwrap(), 2);
        assert_eq!(o.get(&a, ObjKind::Blob).unwrap(), b"hello");
        // an in-memory index over the same store finds it too
        let m = Objects::open(store, None).unwrap();
        assert_eq!(m.get(&a, ObjKind::Blob).unwrap(), b"hello");
        assert!(matches!(
            m.get(&ObjectId::of_object(ObjKind::Blob, b"nope"), ObjKind::Blob),
            Err(ObjError::Missing(_))
        ));
    }

    /// A store that keeps nothing open (so a deleted pack is gone at once),
    /// whose writes fail with ENOSPC while `full` is set.
    struct Uncached(std::path::PathBuf, AtomicBool);
    impl Store for Uncached {
        fn put(&self, k: FileKind, n: &str, d: &[u8]) -> crate::repo::store::StoreResult<()> {
            if self.1.load(Ordering::SeqCst) {
                let err = std::io::Error::from_raw_os_error(libc::ENOSPC);
                return Err(StoreError::Io { path: self.0.join(n), err });
            }
            LocalStore::new(&self.0).put(k, n, d)
        }
        fn get(&self, k: FileKind, n: &str) -> crate::repo::store::StoreResult<Vec<u8>> {
            LocalStore::new(&self.0).get(k, n)
        }
        fn get_range(&self, k: FileKind, n: &str, o: u64, l: usize) -> crate::repo::store::StoreResult<Vec<u8>> {
            LocalStore::new(&self.0).get_range(k, n, o, l)
        }
        fn size(&self, k: FileKind, n: &str) -> crate::repo::store::StoreResult<u64> {
            LocalStore::new(&self.0).size(k, n)
        }
        fn list(&self, k: FileKind) -> crate::repo::store::StoreResult<Vec<String>> {
            LocalStore::new(&self.0).list(k)
        }
        fn delete(&self, k: FileKind, n: &str) -> crate::repo::store::StoreResult<()> {
            LocalStore::new(&self.0).delete(k, n)
        }
    }

    #[test]
    fn a_pack_failed_in_the_background_fails_the_next_put_and_the_flush_once() {
        let t = tempfile::tempdir().unwrap();
        let store = Arc::new(Uncached(t.path().to_path_buf(), AtomicBool::new(true)));
        let o = Objects::open(store.clone(), Some(&StateDb::temporary())).unwrap();
        // fill more than a pack: its write fails on the encoder thread
        let mut block = vec![0u8; 1 << 20];
        let mut failed = None;
        for i in 0..((2 * PACK_TARGET) >> 20) {
            block[..8].copy_from_slice(&(i as u64).to_le_bytes());
            block[8..].iter_mut().enumerate().for_each(|(j, b)| *b = (j as u64 * 2654435761 + i as u64) as u8);
            if let Err(e) = o.put(ObjKind::Blob, &block) {
                failed = Some(e);
                break;
            }
        }
        // (the put that finds it may come before the encoder is done)
        let e = match failed {
            Some(e) => e,
            None => o.flush().unwrap_err(),
        };
        assert!(e.is_enospc(), "{e}");
        if matches!(e, ObjError::PackWriteFailed { .. }) {
            // the flush returns the error itself, once
            let f = o.flush().unwrap_err();
            assert!(matches!(f, ObjError::Store(_)) && f.is_enospc(), "{f}");
        }
        // nothing half-done stays pending; with room again, objects go in
        store.1.store(false, Ordering::SeqCst);
        let (id, new) = o.put(ObjKind::Blob, b"after the failure").unwrap();
        assert!(new);
        o.flush().unwrap();
        assert_eq!(o.get(&id, ObjKind::Blob).unwrap(), b"after the failure");
        assert_eq!(store.list(FileKind::Pack).unwrap().len(), 1);
    }

    #[test]
    fn a_memory_index_follows_objects_moved_by_prune() {
        let t = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(LocalStore::new(t.path()));
        let w = Objects::open(store.clone(), Some(&StateDb::temporary())).unwrap();
        let (x, _) = w.put(ObjKind::Blob, b"moved by prune").unwrap();
        w.flush().unwrap();
        let old = store.list(FileKind::Pack).unwrap().pop().unwrap();
        // a reader beside the daemon, its index built now
        let r = Objects::open(Arc::new(Uncached(t.path().to_path_buf(), AtomicBool::new(false))), None).unwrap();
        // prune: copy into a new pack, then delete the old one
        let e = w.pack_entries(&old).unwrap()[0];
        let stored = store.get_range(FileKind::Pack, &old, e.offset, e.stored as usize).unwrap();
        w.copy_object(&old, &e, &stored).unwrap();
        w.put(ObjKind::Blob, b"written since").unwrap();
        w.flush().unwrap();
        // a reader whose index saw both copies (either may have won)
        let r2 = Objects::open(Arc::new(Uncached(t.path().to_path_buf(), AtomicBool::new(false))), None).unwrap();
        store.delete(FileKind::Pack, &old).unwrap();
        assert_eq!(r.get(&x, ObjKind::Blob).unwrap(), b"moved by prune");
        assert_eq!(r2.get(&x, ObjKind::Blob).unwrap(), b"moved by prune");
    }

    /// Two packs hold one object, one of them damaged: a memory index
    /// (built from the trailers in whatever order they come) reads the
    /// sound copy whichever it named.
    #[test]
    fn a_memory_index_reads_the_sound_copy_of_an_object_two_packs_hold() {
        let t = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(LocalStore::new(t.path()));
        let w = Objects::open(store.clone(), Some(&StateDb::temporary())).unwrap();
        let bytes: Vec<u8> = (0..50_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let (x, _) = w.put(ObjKind::Blob, &bytes).unwrap();
        w.flush().unwrap();
        w.put_again(ObjKind::Blob, &bytes).unwrap();
        w.flush().unwrap();
        let packs = store.list(FileKind::Pack).unwrap();
        assert_eq!(packs.len(), 2);
        // pack `p` with a byte of its first object flipped; its bytes before
        let damage = |p: &str| {
            let e = w.pack_entries(p).unwrap()[0];
            let original = store.get(FileKind::Pack, p).unwrap();
            let mut b = original.clone();
            b[e.offset as usize + e.stored as usize / 2] ^= 0x55;
            store.delete(FileKind::Pack, p).unwrap();
            store.put(FileKind::Pack, p, &b).unwrap();
            original
        };
        for damaged in &packs {
            let original = damage(damaged);
            let r = Objects::open(store.clone(), None).unwrap();
            assert_eq!(r.get(&x, ObjKind::Blob).unwrap(), bytes, "with pack {damaged} damaged");
            store.delete(FileKind::Pack, damaged).unwrap();
            store.put(FileKind::Pack, damaged, &original).unwrap();
        }
        // both damaged: the error is the damage
        for p in &packs {
            damage(p);
        }
        let r = Objects::open(store.clone(), None).unwrap();
        assert!(is_damage(&r.get(&x, ObjKind::Blob).unwrap_err()));
    }
}
