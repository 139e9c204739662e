//! The index: where each object is (pack, position, sizes), in sled (the
//! daemon: trees `index` and `indexed_packs`) or in memory (tools beside a
//! daemon, built from the pack trailers). It can always be rebuilt from the
//! packs; [`crate::repo::objstore::Objects`] keeps it up to date.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use crate::repo::objects::{ObjKind, ObjectId, PackId};
use crate::repo::objstore::ObjResult;
use crate::repo::pack::PackEntry;
use crate::repo::state::StateDb;
use crate::util::RwLocked;

/// Where an object is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub pack: PackId,
    pub entry: PackEntry,
}

impl Location {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(50);
        v.extend_from_slice(&self.pack.id().0);
        v.push(self.entry.kind as u8);
        v.push(self.entry.codec);
        v.extend_from_slice(&self.entry.offset.to_le_bytes());
        v.extend_from_slice(&self.entry.stored.to_le_bytes());
        v.extend_from_slice(&self.entry.raw.to_le_bytes());
        v
    }

    pub(crate) fn decode(id: ObjectId, b: &[u8]) -> Option<Location> {
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

pub(crate) enum Index {
    /// Trees `index` and `indexed_packs`, fetched for each use (see [`StateDb`]).
    Sled(Arc<StateDb>),
    Memory {
        objects: RwLock<HashMap<ObjectId, Location>>,
        packs: RwLock<HashSet<String>>,
        /// Further copies of objects more than one pack holds (a repair's
        /// or a heal's new pack beside the damaged one, two hosts storing
        /// the same content): which copy `objects` names depends on the
        /// order the trailers came in, so a read that finds its copy
        /// damaged tries these.
        others: RwLock<HashMap<ObjectId, Vec<Location>>>,
    },
}

impl Index {
    pub(crate) fn memory() -> Index {
        Index::Memory { objects: Default::default(), packs: Default::default(), others: Default::default() }
    }

    /// The other copies of `id` the index knows, beside the one
    /// [`Index::get`] gives (a memory index only).
    pub(crate) fn others(&self, id: &ObjectId) -> Vec<Location> {
        match self {
            Index::Sled(_) => Vec::new(),
            Index::Memory { others, .. } => others.read_locked().get(id).cloned().unwrap_or_default(),
        }
    }

    pub(crate) fn get(&self, id: &ObjectId) -> ObjResult<Option<Location>> {
        match self {
            Index::Sled(db) => Ok(db.tree("index")?.get(id.0)?.and_then(|v| Location::decode(*id, &v))),
            Index::Memory { objects, .. } => Ok(objects.read_locked().get(id).cloned()),
        }
    }

    pub(crate) fn has_pack(&self, name: &str) -> ObjResult<bool> {
        match self {
            Index::Sled(db) => Ok(db.tree("indexed_packs")?.contains_key(name.as_bytes())?),
            Index::Memory { packs, .. } => Ok(packs.read_locked().contains(name)),
        }
    }

    pub(crate) fn add_pack(&self, name: &PackId, entries: &[PackEntry]) -> ObjResult<()> {
        match self {
            Index::Sled(db) => {
                let mut batch = sled::Batch::default();
                for e in entries {
                    batch.insert(&e.id.0, Location { pack: name.clone(), entry: *e }.encode());
                }
                db.tree("index")?.apply_batch(batch)?;
                db.tree("indexed_packs")?.insert(name.as_bytes(), &(entries.len() as u64).to_le_bytes())?;
            }
            Index::Memory { objects, packs, others } => {
                let mut o = objects.write_locked();
                for e in entries {
                    if let Some(old) = o.insert(e.id, Location { pack: name.clone(), entry: *e }) {
                        if old.pack != *name {
                            others.write_locked().entry(e.id).or_default().push(old);
                        }
                    }
                }
                packs.write_locked().insert(name.to_string());
            }
        }
        Ok(())
    }

    pub(crate) fn clear(&self) -> ObjResult<()> {
        match self {
            Index::Sled(db) => {
                db.tree("index")?.clear()?;
                db.tree("indexed_packs")?.clear()?;
            }
            Index::Memory { objects, packs, others } => {
                objects.write_locked().clear();
                packs.write_locked().clear();
                others.write_locked().clear();
            }
        }
        Ok(())
    }
}
