//! Objects in packs, found through an index.
//!
//! New objects collect in a pending pack (deduplicated against the index and
//! the pending pack) that is written to the [`Store`] when it reaches
//! [`PACK_TARGET`] bytes or on [`Objects::flush`]. The index maps object id
//! to pack and position; it lives in sled (`index` and `indexed_packs`
//! trees) and can always be rebuilt from the pack trailers. At open, packs
//! the index does not know yet (written before a crash) are indexed. Every
//! object read is checked against its id.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use thiserror::Error;

use crate::repo::crypto::Keys;
use crate::repo::objects::{DecodeError, FileNode, ObjKind, ObjectId, PackId, Tree};
use crate::repo::pack::{self, PackEntry, PackError, PackWriter};
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
    #[error("a {kind:?} object of {len} bytes is larger than the format allows")]
    TooLarge { kind: ObjKind, len: usize },
    #[error("index database: {0}")]
    Db(#[from] sled::Error),
}

impl ObjError {
    pub fn is_enospc(&self) -> bool {
        matches!(self, ObjError::Store(e) if e.is_enospc())
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

/// Where an object is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub pack: PackId,
    pub entry: PackEntry,
}

impl Location {
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(50);
        v.extend_from_slice(&self.pack.id().0);
        v.push(self.entry.kind as u8);
        v.push(self.entry.codec);
        v.extend_from_slice(&self.entry.offset.to_le_bytes());
        v.extend_from_slice(&self.entry.stored.to_le_bytes());
        v.extend_from_slice(&self.entry.raw.to_le_bytes());
        v
    }

    fn decode(id: ObjectId, b: &[u8]) -> Option<Location> {
        if b.len() != 50 {
            return None;
        }
        Some(Location {
            pack: PackId::from_id(ObjectId(b[..32].try_into().ok()?)),
            entry: PackEntry {
                id,
                kind: ObjKind::from_u8(b[32])?,
                codec: b[33],
                offset: u64::from_le_bytes(b[34..42].try_into().ok()?),
                stored: u32::from_le_bytes(b[42..46].try_into().ok()?),
                raw: u32::from_le_bytes(b[46..50].try_into().ok()?),
            },
        })
    }
}

enum Index {
    /// Trees `index` and `indexed_packs`, fetched for each use (see [`StateDb`]).
    Sled(Arc<StateDb>),
    Memory {
        objects: RwLock<HashMap<ObjectId, Location>>,
        packs: RwLock<HashSet<String>>,
    },
}

impl Index {
    fn get(&self, id: &ObjectId) -> ObjResult<Option<Location>> {
        match self {
            Index::Sled(db) => Ok(db.tree("index")?.get(id.0)?.and_then(|v| Location::decode(*id, &v))),
            Index::Memory { objects, .. } => Ok(objects.read_locked().get(id).cloned()),
        }
    }

    fn has_pack(&self, name: &str) -> ObjResult<bool> {
        match self {
            Index::Sled(db) => Ok(db.tree("indexed_packs")?.contains_key(name.as_bytes())?),
            Index::Memory { packs, .. } => Ok(packs.read_locked().contains(name)),
        }
    }

    fn add_pack(&self, name: &PackId, entries: &[PackEntry]) -> ObjResult<()> {
        match self {
            Index::Sled(db) => {
                let mut batch = sled::Batch::default();
                for e in entries {
                    batch.insert(&e.id.0, Location { pack: name.clone(), entry: *e }.encode());
                }
                db.tree("index")?.apply_batch(batch)?;
                db.tree("indexed_packs")?.insert(name.as_bytes(), &(entries.len() as u64).to_le_bytes())?;
            }
            Index::Memory { objects, packs } => {
                let mut o = objects.write_locked();
                for e in entries {
                    o.insert(e.id, Location { pack: name.clone(), entry: *e });
                }
                packs.write_locked().insert(name.to_string());
            }
        }
        Ok(())
    }

    fn clear(&self) -> ObjResult<()> {
        match self {
            Index::Sled(db) => {
                db.tree("index")?.clear()?;
                db.tree("indexed_packs")?.clear()?;
            }
            Index::Memory { objects, packs } => {
                objects.write_locked().clear();
                packs.write_locked().clear();
            }
        }
        Ok(())
    }
}

/// See [`Objects::quiesce`].
pub struct Quiet<'a> {
    _pending: std::sync::MutexGuard<'a, Pending>,
}

struct Pending {
    writer: PackWriter,
    raw: HashMap<ObjectId, (ObjKind, Vec<u8>)>,
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
    store: Arc<dyn Store>,
    /// An encrypted repository's keys (from the store it was opened with).
    keys: Option<Arc<Keys>>,
    /// The ids of all-hole block-list nodes, per level (they depend on the id key).
    holes: Vec<ObjectId>,
    index: Index,
    pending: Mutex<Pending>,
    added_objects: AtomicU64,
    added_stored: AtomicU64,
    added_raw: AtomicU64,
    added_blob: AtomicU64,
    added_packs: AtomicU64,
}

impl Objects {
    /// Objects indexed in sled (the daemon), or in memory built from the pack
    /// trailers (`db` = None: tools that run beside a daemon holding sled).
    pub fn open(store: Arc<dyn Store>, db: Option<&Arc<StateDb>>) -> ObjResult<Objects> {
        let index = match db {
            Some(db) => Index::Sled(db.clone()),
            None => Index::Memory { objects: RwLock::new(HashMap::new()), packs: RwLock::new(HashSet::new()) },
        };
        let keys = store.keys();
        let holes = match &keys {
            None => (0..=crate::repo::objects::MAX_LEVEL).map(crate::repo::objects::hole_node).collect(),
            Some(k) => crate::repo::objects::hole_nodes(|kind, raw| k.id_of(kind, raw)),
        };
        let o = Objects {
            store,
            index,
            pending: Mutex::new(Pending { writer: PackWriter::new(keys.as_ref()), raw: HashMap::new() }),
            keys,
            holes,
            added_objects: AtomicU64::new(0),
            added_stored: AtomicU64::new(0),
            added_raw: AtomicU64::new(0),
            added_blob: AtomicU64::new(0),
            added_packs: AtomicU64::new(0),
        };
        o.index_new_packs()?;
        Ok(o)
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The keys of an encrypted repository.
    pub fn keys(&self) -> Option<&Arc<Keys>> {
        self.keys.as_ref()
    }

    /// The id `raw` has as an object of `kind` in this repository (keyed
    /// blake3 in an encrypted one).
    pub fn id_of(&self, kind: ObjKind, raw: &[u8]) -> ObjectId {
        match &self.keys {
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
        pack::decode_object(self.keys.as_deref(), pack, e, stored)
    }

    /// Read the trailer of a pack.
    pub fn pack_entries(&self, name: &str) -> ObjResult<Vec<PackEntry>> {
        let size = self.store.size(FileKind::Pack, name)?;
        if size < 8 + 4 + 16 {
            return Err(PackError::Malformed(name.into()).into());
        }
        let footer = self.store.get_range(FileKind::Pack, name, size - 16, 16)?;
        let off = pack::parse_footer(name, &footer, size)?;
        let t = self.store.get_range(FileKind::Pack, name, off, (size - 16 - off) as usize)?;
        match pack::parse_trailer(self.keys.as_deref(), name, &t, off) {
            Ok(e) => Ok(e),
            Err(e) => {
                // say so when the pack is of the other form (an encrypted
                // pack in a plain repository, or the reverse)
                let head = self.store.get_range(FileKind::Pack, name, 0, 8)?;
                pack::check_magic(name, &head, self.keys.is_some())?;
                Err(e.into())
            }
        }
    }

    /// Index every pack in the store the index does not know. Returns how many.
    pub fn index_new_packs(&self) -> ObjResult<usize> {
        self.index_packs_into(&self.index)
    }

    /// Add every pack of the store that `index` does not know to it.
    fn index_packs_into(&self, index: &Index) -> ObjResult<usize> {
        let mut n = 0;
        for name in self.store.list(FileKind::Pack)? {
            let Some(id) = PackId::parse(&name) else {
                log::warn!("packs/{name}: not a pack name; ignored");
                continue;
            };
            if !index.has_pack(&name)? {
                match self.pack_entries(&name) {
                    Ok(entries) => {
                        index.add_pack(&id, &entries)?;
                        n += 1;
                    }
                    Err(e) => log::error!("pack {name} cannot be indexed: {e}"),
                }
            }
        }
        Ok(n)
    }

    /// Build an index in memory anew from the packs there are now, and
    /// put it in place of the old one at once (readers never see it empty).
    fn reload_memory_index(&self) -> ObjResult<()> {
        let Index::Memory { objects, packs } = &self.index else { return Ok(()) };
        let fresh = Index::Memory { objects: RwLock::new(HashMap::new()), packs: RwLock::new(HashSet::new()) };
        self.index_packs_into(&fresh)?;
        let Index::Memory { objects: o, packs: p } = fresh else { unreachable!("built above") };
        *objects.write_locked() = o.into_inner().unwrap_or_else(|e| e.into_inner());
        *packs.write_locked() = p.into_inner().unwrap_or_else(|e| e.into_inner());
        Ok(())
    }

    /// Forget the index and build it again from the packs.
    pub fn rebuild_index(&self) -> ObjResult<usize> {
        self.index.clear()?;
        self.index_new_packs()
    }

    /// Whether the index is the persistent one (sled) rather than one built
    /// in memory from the pack trailers at open.
    pub fn index_is_persistent(&self) -> bool {
        matches!(self.index, Index::Sled(_))
    }

    /// Call `f` for every entry of the index, and return the packs it holds
    /// as indexed. (For a memory index: the same, built from the trailers.)
    pub fn scan_index(&self, mut f: impl FnMut(ObjectId, Option<Location>)) -> ObjResult<HashSet<String>> {
        match &self.index {
            Index::Sled(db) => {
                let (objects, packs) = (db.tree("index")?, db.tree("indexed_packs")?);
                for kv in objects.iter() {
                    let (k, v) = kv?;
                    let Ok(id) = <[u8; 32]>::try_from(&*k) else {
                        f(ObjectId::ZERO, None);
                        continue;
                    };
                    let id = ObjectId(id);
                    f(id, Location::decode(id, &v));
                }
                let mut out = HashSet::new();
                for kv in packs.iter() {
                    out.insert(String::from_utf8_lossy(&kv?.0).into_owned());
                }
                Ok(out)
            }
            Index::Memory { objects, packs } => {
                for (id, loc) in objects.read_locked().iter() {
                    f(*id, Some(loc.clone()));
                }
                Ok(packs.read_locked().clone())
            }
        }
    }

    /// Point objects elsewhere or drop them from the index (prune, before
    /// their packs go), and drop `packs` from the set of indexed packs; then
    /// make it durable.
    pub fn reindex(&self, changes: &[(ObjectId, Option<Location>)], packs: &[String]) -> ObjResult<()> {
        match &self.index {
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
            Index::Memory { objects, packs: indexed } => {
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
            }
        }
        Ok(())
    }

    /// Add an object, as stored in `from`, to the pending pack even if the
    /// index knows it (prune moving it out of a pack that will go). Its
    /// stored bytes are verified first.
    pub fn copy_object(&self, from: &str, e: &PackEntry, stored: &[u8]) -> ObjResult<()> {
        let raw = self.decode_object(from, e, stored)?;
        let full = {
            let mut p = self.pending.locked();
            if p.raw.contains_key(&e.id) {
                return Ok(());
            }
            p.writer.add_encoded(e, stored);
            p.raw.insert(e.id, (e.kind, raw));
            p.writer.len() >= PACK_TARGET
        };
        if full {
            self.flush()?;
        }
        Ok(())
    }

    pub fn has(&self, id: &ObjectId) -> ObjResult<bool> {
        if self.pending.locked().raw.contains_key(id) {
            return Ok(true);
        }
        Ok(self.index.get(id)?.is_some())
    }

    pub fn locate(&self, id: &ObjectId) -> ObjResult<Option<Location>> {
        self.index.get(id)
    }

    /// Store an object unless it is there already. Returns its id and whether it was new.
    pub fn put(&self, kind: ObjKind, raw: &[u8]) -> ObjResult<(ObjectId, bool)> {
        if raw.len() > crate::repo::objects::max_object_bytes(kind) {
            return Err(ObjError::TooLarge { kind, len: raw.len() });
        }
        let id = self.id_of(kind, raw);
        if self.index.get(&id)?.is_some() {
            return Ok((id, false));
        }
        let full = {
            let mut p = self.pending.locked();
            if p.raw.contains_key(&id) {
                return Ok((id, false));
            }
            let stored = p.writer.add(id, kind, raw);
            p.raw.insert(id, (kind, raw.to_vec()));
            self.added_objects.fetch_add(1, Ordering::Relaxed);
            self.added_stored.fetch_add(stored as u64, Ordering::Relaxed);
            self.added_raw.fetch_add(raw.len() as u64, Ordering::Relaxed);
            if kind == ObjKind::Blob {
                self.added_blob.fetch_add(raw.len() as u64, Ordering::Relaxed);
            }
            p.writer.len() >= PACK_TARGET
        };
        if full {
            self.flush()?;
        }
        Ok((id, true))
    }

    /// While the guard lives, no pack is written or indexed (writers of
    /// objects wait): the packs in the store and the index agree.
    pub fn quiesce(&self) -> Quiet<'_> {
        Quiet { _pending: self.pending.locked() }
    }

    /// Write the pending pack (durably) and index it.
    pub fn flush(&self) -> ObjResult<()> {
        let mut p = self.pending.locked();
        if p.writer.is_empty() {
            return Ok(());
        }
        let writer = std::mem::replace(&mut p.writer, PackWriter::new(self.keys.as_ref()));
        let (name, bytes, entries) = writer.finish();
        match self.store.put(FileKind::Pack, &name, &bytes) {
            Ok(()) => {}
            Err(e) => {
                // Keep nothing half-done: the objects are gone from pending,
                // the caller fails the snapshot and starts over.
                p.raw.clear();
                return Err(e.into());
            }
        }
        self.index.add_pack(&name, &entries)?;
        p.raw.clear();
        self.added_packs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Drop what is pending without writing it (a failed snapshot).
    pub fn discard_pending(&self) {
        let mut p = self.pending.locked();
        p.writer = PackWriter::new(self.keys.as_ref());
        p.raw.clear();
    }

    /// The verified bytes of an object, and its kind.
    pub fn get_any(&self, id: &ObjectId) -> ObjResult<(ObjKind, Vec<u8>)> {
        if let Some((k, raw)) = self.pending.locked().raw.get(id) {
            return Ok((*k, raw.clone()));
        }
        match self.read_indexed(id) {
            // An index built in memory beside a running daemon goes stale
            // when the daemon writes packs or prune moves objects: index the
            // packs written since, and look again.
            Err(e @ ObjError::Missing(_)) if matches!(self.index, Index::Memory { .. }) => {
                if self.index_new_packs()? == 0 {
                    return Err(e);
                }
                self.read_indexed(id)
            }
            // (a pack deleted since: the index may even have preferred it
            // to the copy, if both were there when it was built)
            Err(ObjError::Store(StoreError::NotFound { .. })) if matches!(self.index, Index::Memory { .. }) => {
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
        let loc = self.index.get(id)?.ok_or(ObjError::Missing(*id))?;
        let stored = self.store.get_range(FileKind::Pack, &loc.pack, loc.entry.offset, loc.entry.stored as usize)?;
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

    pub fn tree(&self, id: &ObjectId) -> ObjResult<Tree> {
        let raw = self.get(id, ObjKind::Tree)?;
        Tree::decode(&raw).map_err(|err| ObjError::Decode { id: *id, err })
    }

    pub fn node(&self, id: &ObjectId) -> ObjResult<FileNode> {
        let raw = self.get(id, ObjKind::FileNode)?;
        FileNode::decode(&raw).map_err(|err| ObjError::Decode { id: *id, err })
    }

    /// Counters since the last call, reset.
    pub fn take_stats(&self) -> AddStats {
        AddStats {
            objects: self.added_objects.swap(0, Ordering::Relaxed),
            stored_bytes: self.added_stored.swap(0, Ordering::Relaxed),
            raw_bytes: self.added_raw.swap(0, Ordering::Relaxed),
            blob_bytes: self.added_blob.swap(0, Ordering::Relaxed),
            packs: self.added_packs.swap(0, Ordering::Relaxed),
        }
    }
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
        assert_eq!((s.objects, s.packs, s.raw_bytes, s.blob_bytes), (2, 1, 10, 5));
        // the index is rebuilt from packs alone
        assert_eq!(o.rebuild_index().unwrap(), 1);
        assert_eq!(o.get(&a, ObjKind::Blob).unwrap(), b"hello");
        // an in-memory index over the same store finds it too
        let m = Objects::open(store, None).unwrap();
        assert_eq!(m.get(&a, ObjKind::Blob).unwrap(), b"hello");
        assert!(matches!(
            m.get(&ObjectId::of_object(ObjKind::Blob, b"nope"), ObjKind::Blob),
            Err(ObjError::Missing(_))
        ));
    }

    /// A store that keeps nothing open (so a deleted pack is gone at once).
    struct Uncached(std::path::PathBuf);
    impl Store for Uncached {
        fn put(&self, k: FileKind, n: &str, d: &[u8]) -> crate::repo::store::StoreResult<()> {
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
    fn a_memory_index_follows_objects_moved_by_prune() {
        let t = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(LocalStore::new(t.path()));
        let w = Objects::open(store.clone(), Some(&StateDb::temporary())).unwrap();
        let (x, _) = w.put(ObjKind::Blob, b"moved by prune").unwrap();
        w.flush().unwrap();
        let old = store.list(FileKind::Pack).unwrap().pop().unwrap();
        // a reader beside the daemon, its index built now
        let r = Objects::open(Arc::new(Uncached(t.path().to_path_buf())), None).unwrap();
        // prune: copy into a new pack, then delete the old one
        let e = w.pack_entries(&old).unwrap()[0];
        let stored = store.get_range(FileKind::Pack, &old, e.offset, e.stored as usize).unwrap();
        w.copy_object(&old, &e, &stored).unwrap();
        w.put(ObjKind::Blob, b"written since").unwrap();
        w.flush().unwrap();
        // a reader whose index saw both copies (either may have won)
        let r2 = Objects::open(Arc::new(Uncached(t.path().to_path_buf())), None).unwrap();
        store.delete(FileKind::Pack, &old).unwrap();
        assert_eq!(r.get(&x, ObjKind::Blob).unwrap(), b"moved by prune");
        assert_eq!(r2.get(&x, ObjKind::Blob).unwrap(), b"moved by prune");
    }
}
