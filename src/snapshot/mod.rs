//! Taking snapshots, listing them, comparing them, reading them back.
//!
//! # Building a snapshot
//! [`Builder`] walks the backing tree through descriptors. With a sealed
//! dirty set and the previous snapshot it descends only into directories
//! that hold a change (every record's ancestors are recorded, see
//! `tracker.rs`); every other directory is the previous snapshot's tree,
//! referenced by id. In a walked directory each entry is stat'ed; a file
//! without a record keeps its previous block list, a file with a record gets
//! its block list updated: only the dirty blocks are read, hashed and stored,
//! and only the block-list nodes above them are rewritten (O(k log n)). New
//! files, files marked FULL, and everything in `--full` mode are read whole,
//! holes skipped (SEEK_DATA/SEEK_HOLE) and all-zero blocks stored as holes.
//!
//! Hard links: each snapshot stores a link table (path -> inode, for every
//! non-directory with more than one link). A changed inode found in the
//! previous table forces a walk of every directory it is linked in.
//!
//! # The commit point
//! Objects go to packs first; the snapshot record, written last, is the
//! commit point: a crash before it leaves packs no snapshot refers to
//! (harmless; prune removes them) and the tracker still holds the sealed
//! changes for the next attempt.

mod blocklist;
mod builder;
pub mod capture;
mod diff;
pub mod plan;
mod record;
pub mod take;
pub mod view;

pub use blocklist::*;
pub use builder::*;
pub use diff::*;
pub use record::*;

use std::time::Instant;

use thiserror::Error;

use crate::os::errno::Errno;
use crate::repo::objstore::ObjError;
use crate::repo::store::StoreError;

pub const RECORD_FORMAT: u32 = 1;

#[derive(Debug, Error)]
pub enum SnapError {
    #[error(transparent)]
    Obj(#[from] ObjError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("reading {path}: {errno}")]
    Backing { path: String, errno: Errno },
    #[error(
        "snapshot name {0:?} is not valid: use 1-100 letters, digits, '.', '_' or '-', not starting with '.' or '-'"
    )]
    BadName(String),
    #[error("a snapshot named {0:?} exists already")]
    Duplicate(String),
    #[error("no snapshot named or with id {0:?}")]
    Unknown(String),
    #[error("snapshot record {0} is damaged")]
    BadRecord(String),
    #[error("{0}")]
    TooDeep(String),
    #[error("repository format: snapshot {id} has record format {found}, newer than this snapfs understands")]
    NewerRecord { id: String, found: u32 },
    /// Copy-before-write could not save what a change destroyed while the
    /// snapshot was being taken (its message).
    #[error("copy-before-write failed: {0}")]
    CopyBeforeWrite(String),
    /// Taking the snapshot panicked (caught: it fails as any error does).
    #[error("internal error: {0}")]
    Panicked(String),
    /// A name several lineages of a shared repository use.
    #[error("snapshot name {name:?} is used by more than one host or directory: {}; give the id", hosts.join(", "))]
    Ambiguous { name: String, hosts: Vec<String> },
    /// A prune elsewhere condemned packs this snapshot reused or wrote,
    /// before it could commit (it is taken again).
    #[error("a prune on another host condemned {0} pack(s) this snapshot uses; not committed")]
    Condemned(usize),
}

/// What a snapshot failure is to a caller that wants an errno: the
/// backing filesystem's own error, else `EIO` (or `EINVAL` for a bad name).
impl crate::os::errno::ToErrno for SnapError {
    fn to_errno(&self) -> crate::os::errno::Errno {
        use crate::os::errno::Errno;
        match self {
            SnapError::Obj(e) => e.to_errno(),
            SnapError::Store(e) => e.to_errno(),
            SnapError::Backing { errno, .. } => *errno,
            SnapError::BadName(_) | SnapError::Duplicate(_) => Errno::EINVAL,
            SnapError::Unknown(_) => Errno::ENOENT,
            _ => Errno::EIO,
        }
    }
}

pub type SnapResult<T> = Result<T, SnapError>;

fn backing(path: &[u8], errno: Errno) -> SnapError {
    SnapError::Backing { path: crate::util::show_path(path), errno }
}

/// The stats of this snapshot's start, for the record.
pub fn elapsed_ms(t0: Instant) -> u64 {
    t0.elapsed().as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::os::sys;
    use crate::repo::objects::{self, Entry, ObjKind, ObjectId, TreeId};
    use crate::repo::objstore::Objects;
    use crate::repo::store::{LocalStore, Store};
    use crate::tracker::{Record, FULL, META};
    use std::collections::HashMap;
    use std::os::fd::{AsFd, OwnedFd};
    use std::sync::Arc;

    fn objects() -> (tempfile::TempDir, Objects) {
        let t = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(LocalStore::new(t.path()));
        let o = Objects::open(store, None).unwrap();
        (t, o)
    }

    fn blob(o: &Objects, b: u64, gen: u8) -> SnapResult<ObjectId> {
        let mut v = b.to_le_bytes().to_vec();
        v.push(gen);
        Ok(o.put(ObjKind::Blob, &v)?.0)
    }

    #[test]
    fn block_lists_update_in_place_and_grow_and_shrink() {
        let (_t, o) = objects();
        for (old_n, new_n, dirty) in [
            (10u64, 10u64, vec![(3u64, 4u64)]),
            (3000, 3000, vec![(1500, 1501)]),
            (1000, 5000, vec![(1000, 5000)]),
            (5000, 1000, vec![]),
            (3 * 1024 + 5, 10, vec![]),
            (10, 3 * 1024 + 5, vec![(10, 3 * 1024 + 5)]),
            (3 * 1024 + 5, 3 * 1024 + 5, vec![(0, 1), (2047, 2049)]),
            (256 * 256 + 7, 300, vec![]),
            (300, 256 * 256 + 7, vec![(300, 256 * 256 + 7)]),
            (0, 7, vec![(0, 7)]),
            (7, 0, vec![]),
        ] {
            let (root, levels) = build_block_list(&o, old_n, None, &[(0, old_n)], |b| blob(&o, b, 0)).unwrap();
            let mut reads = 0;
            let (root2, levels2) = build_block_list(&o, new_n, Some((root, levels, old_n)), &dirty, |b| {
                reads += 1;
                blob(&o, b, 1)
            })
            .unwrap();
            let ids = block_ids(&o, root2, levels2).unwrap();
            assert_eq!(ids.len() as u64, new_n, "{old_n}->{new_n}");
            let d = Dirty(&dirty);
            for (b, id) in ids.iter().enumerate() {
                let b = b as u64;
                let gen = if d.contains(b) || b >= old_n { 1 } else { 0 };
                assert_eq!(*id, blob(&o, b, gen).unwrap(), "{old_n}->{new_n} block {b}");
            }
            let want_reads: u64 = dirty.iter().map(|(s, e)| e.min(&new_n) - s).sum();
            assert_eq!(reads, want_reads, "{old_n}->{new_n}");
        }
    }

    #[test]
    fn diff_walks_trees_of_any_depth() {
        let (_t, o) = objects();
        let depth = 2 * crate::util::MAX_DEPTH;
        let (a, b) = (test_chain(&o, depth, 1), test_chain(&o, depth, 2));
        let d = diff(&o, a, b, 4096).unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].path.len(), 2 * depth + 1);
        assert!(d[0].path.starts_with("d/d/") && d[0].path.ends_with("/d/f"));
        assert_eq!((d[0].change.as_str(), d[0].kind.as_str()), ("modified", "file"));
        assert!(diff(&o, a, a, 4096).unwrap().is_empty());
    }

    #[test]
    fn names_and_links() {
        assert!(valid_name("2026-11-24T10.15.00Z") && valid_name("before_upgrade"));
        assert!(!valid_name("") && !valid_name(".x") && !valid_name("a/b") && !valid_name("a b"));
        assert_eq!(default_name(1_795_515_300), "2026-11-24T10.15.00Z");
        let mut t = LinkTable::new();
        t.insert(b"a/b".to_vec(), 5);
        t.insert(b"c".to_vec(), 5);
        assert_eq!(decode_links(&encode_links(&t)), Some(t));
    }

    /// Every tree below `id` re-encoded in format 1 (as snapfs wrote it
    /// before format 2): the ids of the format 1 copy.
    fn to_format_1(o: &Objects, id: TreeId) -> TreeId {
        let mut t = o.tree(&id).unwrap();
        for e in &mut t.entries {
            if let Some(sub) = e.subtree() {
                e.content = to_format_1(o, sub).id();
            }
            e.dev = None;
            e.blocks = None;
        }
        TreeId::from_dir(o.put(ObjKind::Tree, &objects::encode_v1(&t)).unwrap().0)
    }

    #[test]
    fn incremental_snapshots_build_on_format_1_trees() {
        use crate::tracker::{Kind, ENTRIES};
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        std::fs::write(p.join("a"), vec![1u8; 100_000]).unwrap();
        std::fs::write(p.join("b1"), b"linked").unwrap();
        std::fs::hard_link(p.join("b1"), p.join("b2")).unwrap();
        std::fs::create_dir(p.join("sub")).unwrap();
        std::fs::write(p.join("sub/c"), b"below").unwrap();
        let fd: OwnedFd = std::fs::File::open(p).unwrap().into();
        let (_t, o) = objects();
        let bs = 4096;
        let top1 = Builder::new(&o, bs, None, LinkTable::new()).build(fd.as_fd(), None).unwrap();
        let old = to_format_1(&o, top1);
        let root_v1 = root_entry(&o, old).unwrap();
        assert_eq!((root_v1.dev, root_v1.blocks), (None, None));
        // a changed name in the root: the root is walked, the rest kept
        std::fs::write(p.join("new"), b"n").unwrap();
        let root_ino = sys::fstat(fd.as_fd()).unwrap().st_ino;
        let mut sealed = HashMap::new();
        let new_ino = std::fs::metadata(p.join("new")).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).unwrap();
        let rec = |kind, flags| Record {
            kind,
            flags,
            parent: root_ino,
            name: Default::default(),
            size: 0,
            grown_from: None,
            blocks: Default::default(),
        };
        sealed.insert(root_ino, rec(Kind::Dir, ENTRIES));
        sealed.insert(new_ino, rec(Kind::File, FULL | META));
        let mut b = Builder::new(&o, bs, Some(&sealed), LinkTable::new());
        let top2 = b.build(fd.as_fd(), Some(old)).unwrap();
        let root = root_entry(&o, top2).unwrap();
        let raw = o.get(&root.content, ObjKind::Tree).unwrap();
        assert_eq!(raw[0], 2, "the walked directory is written in format 2");
        let t = o.dir_tree(&root).unwrap();
        let dev = sys::fstat(fd.as_fd()).unwrap().st_dev;
        for n in [&b"a"[..], b"b1", b"b2"] {
            let e = t.get(n).unwrap();
            assert_eq!(e.dev, Some(dev), "{n:?}: kept from format 1, on the directory's device");
            assert_eq!(e.blocks, None, "{n:?}: st_blocks not recorded in format 1");
        }
        assert_eq!(read_file(&o, t.get(b"a").unwrap(), bs).unwrap(), vec![1u8; 100_000]);
        assert!(t.get(b"new").unwrap().blocks.is_some());
        // the unchanged directory is the format 1 tree, by id
        assert_eq!(t.get(b"sub").unwrap().content, root_v1_sub(&o, &root_v1));
        assert_eq!(b.links().len(), 2);
    }

    fn root_v1_sub(o: &Objects, root: &Entry) -> ObjectId {
        o.dir_tree(root).unwrap().get(b"sub").unwrap().content
    }
}
