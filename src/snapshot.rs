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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::capture::Capture;
use crate::errno::Errno;
use crate::live::{REPO_NAME, SNAPSHOTS_NAME};
use crate::objects::{self, Entry, EntryKind, FileNode, ObjKind, ObjectId, Time, Totals, Tree};
use crate::objstore::{ObjError, Objects};
use crate::store::{FileKind, Store, StoreError};
use crate::sys;
use crate::tracker::{Record, FULL, META};
use crate::util;

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
}

pub type SnapResult<T> = Result<T, SnapError>;

fn backing(path: &[u8], errno: Errno) -> SnapError {
    SnapError::Backing { path: util::show_path(path), errno }
}

/// What a snapshot cost and holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotStats {
    pub files: u64,
    pub dirs: u64,
    pub others: u64,
    /// Sum of the sizes of all files in the snapshot.
    pub logical_bytes: u64,
    /// Bytes read from the backing files to take it.
    pub read_bytes: u64,
    /// Bytes added to the repository (compressed, in packs).
    pub added_bytes: u64,
    /// The same before compression.
    pub added_raw_bytes: u64,
    /// Of that, file data (blobs) and metadata (block lists, trees, tables).
    #[serde(default)]
    pub added_data_bytes: u64,
    #[serde(default)]
    pub added_meta_bytes: u64,
    pub added_objects: u64,
    /// Directories listed and files whose block list was rebuilt.
    pub dirs_walked: u64,
    pub files_read: u64,
    /// Entries of walked directories taken from the previous snapshot as
    /// they were (no record: not even a stat).
    #[serde(default)]
    pub entries_reused: u64,
    pub duration_ms: u64,
    /// How long writers were held off (waiting for in-flight changes, and
    /// sealing the epoch), in microseconds.
    #[serde(default)]
    pub paused_us: u64,
}

/// The commit point of a snapshot, stored as `snapshots/<id>`, where the id
/// is the blake3 hash of this JSON.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotRecord {
    pub format: u32,
    pub name: String,
    /// RFC 3339, and seconds/nanoseconds since the epoch.
    pub time: String,
    pub time_sec: i64,
    pub time_nsec: u32,
    /// A tree with one entry, ".": the snapshot root with its metadata.
    pub tree: String,
    /// The link table object.
    pub links: String,
    /// The snapshot this one was taken relative to, if incremental.
    pub parent: Option<String>,
    pub full: bool,
    pub source: String,
    pub host: String,
    pub block_size: u64,
    pub stats: SnapshotStats,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub id: String,
    #[serde(flatten)]
    pub record: SnapshotRecord,
}

impl SnapshotInfo {
    pub fn root_tree(&self) -> SnapResult<ObjectId> {
        ObjectId::from_hex(&self.record.tree).ok_or_else(|| SnapError::BadRecord(self.id.clone()))
    }
}

/// `2026-11-24T10.15.00Z`: sorts by time, needs no quoting.
pub fn default_name(sec: i64) -> String {
    crate::util::rfc3339(sec).replace(':', ".")
}

pub fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 100
        && !n.starts_with('.')
        && !n.starts_with('-')
        && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// Every snapshot in the repository, oldest first.
pub fn list(store: &dyn Store) -> SnapResult<Vec<SnapshotInfo>> {
    let mut out = Vec::new();
    for id in store.list(FileKind::Snapshot)? {
        let bytes = store.get(FileKind::Snapshot, &id)?;
        if ObjectId::of(&bytes).hex() != id {
            log::error!("snapshot record {id} does not match its name: damaged, skipped");
            continue;
        }
        let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|_| SnapError::BadRecord(id.clone()))?;
        let found = v.get("format").and_then(|f| f.as_u64()).unwrap_or(0) as u32;
        if found > RECORD_FORMAT {
            return Err(SnapError::NewerRecord { id, found });
        }
        let record: SnapshotRecord = serde_json::from_value(v).map_err(|_| SnapError::BadRecord(id.clone()))?;
        out.push(SnapshotInfo { id, record });
    }
    out.sort_by(|a, b| {
        (a.record.time_sec, a.record.time_nsec, &a.record.name).cmp(&(
            b.record.time_sec,
            b.record.time_nsec,
            &b.record.name,
        ))
    });
    Ok(out)
}

/// Find a snapshot by name, full id or unique id prefix (4+ characters).
pub fn find<'a>(all: &'a [SnapshotInfo], key: &str) -> SnapResult<&'a SnapshotInfo> {
    if let Some(s) = all.iter().find(|s| s.record.name == key || s.id == key) {
        return Ok(s);
    }
    let matches: Vec<_> = all.iter().filter(|s| key.len() >= 4 && s.id.starts_with(key)).collect();
    match matches.as_slice() {
        [one] => Ok(one),
        _ => Err(SnapError::Unknown(key.to_string())),
    }
}

/// Write a record; the commit point.
pub fn commit(store: &dyn Store, record: &SnapshotRecord) -> SnapResult<SnapshotInfo> {
    let bytes = serde_json::to_vec_pretty(record).expect("record serializes");
    let id = ObjectId::of(&bytes).hex();
    store.put(FileKind::Snapshot, &id, &bytes)?;
    Ok(SnapshotInfo { id, record: record.clone() })
}

// ---------------------------------------------------------------------------
// link tables

/// path (relative, '/'-separated) -> inode, for non-directories with nlink > 1.
pub type LinkTable = BTreeMap<Vec<u8>, u64>;

pub fn encode_links(t: &LinkTable) -> Vec<u8> {
    let mut v = vec![1u8];
    v.extend_from_slice(&(t.len() as u32).to_le_bytes());
    for (p, ino) in t {
        v.extend_from_slice(&(p.len() as u32).to_le_bytes());
        v.extend_from_slice(p);
        v.extend_from_slice(&ino.to_le_bytes());
    }
    v
}

pub fn decode_links(b: &[u8]) -> Option<LinkTable> {
    if b.first() != Some(&1) || b.len() < 5 {
        return None;
    }
    let n = u32::from_le_bytes(b[1..5].try_into().ok()?) as usize;
    let mut pos = 5;
    let mut t = LinkTable::new();
    for _ in 0..n {
        let l = u32::from_le_bytes(b.get(pos..pos + 4)?.try_into().ok()?) as usize;
        pos += 4;
        let p = b.get(pos..pos + l)?.to_vec();
        pos += l;
        let ino = u64::from_le_bytes(b.get(pos..pos + 8)?.try_into().ok()?);
        pos += 8;
        t.insert(p, ino);
    }
    (pos == b.len()).then_some(t)
}

fn parent_of(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|b| *b == b'/') {
        Some(i) => &path[..i],
        None => b"",
    }
}

// ---------------------------------------------------------------------------
// file block lists

/// Dirty block ranges, sorted.
struct Dirty<'a>(&'a [(u64, u64)]);

impl Dirty<'_> {
    fn contains(&self, b: u64) -> bool {
        let i = self.0.partition_point(|&(_, e)| e <= b);
        self.0.get(i).is_some_and(|&(s, _)| s <= b)
    }
    fn overlaps(&self, start: u64, end: u64) -> bool {
        let i = self.0.partition_point(|&(_, e)| e <= start);
        self.0.get(i).is_some_and(|&(s, _)| s < end)
    }
}

#[derive(Clone, Copy)]
enum Old {
    None,
    Node(ObjectId),
    /// A node the old tree did not have; its first descendant at the old
    /// root's level is the old root.
    Above,
}

struct FileTree<'a, F: FnMut(u64) -> SnapResult<ObjectId>> {
    objects: &'a Objects,
    dirty: Dirty<'a>,
    old_n: u64,
    new_n: u64,
    old_root: ObjectId,
    old_levels: u8,
    read: F,
}

impl<F: FnMut(u64) -> SnapResult<ObjectId>> FileTree<'_, F> {
    fn build(&mut self, old: Old, level: u8, start: u64) -> SnapResult<ObjectId> {
        let span = objects::node_span(level);
        let end = (start + span).min(self.new_n);
        if let Old::Node(id) = old {
            let old_end = (start + span).min(self.old_n);
            if old_end == end && !self.dirty.overlaps(start, end) {
                return Ok(id);
            }
        }
        let node = match old {
            Old::Node(id) if !id.is_zero() => Some(self.objects.node(&id)?),
            _ => None,
        };
        let mut entries = Vec::new();
        if level == 0 {
            for b in start..end {
                let keep = if b < self.old_n && !self.dirty.contains(b) {
                    node.as_ref().and_then(|n| n.entries.get((b - start) as usize).copied())
                } else {
                    None
                };
                entries.push(match keep {
                    Some(id) => id,
                    None => (self.read)(b)?,
                });
            }
        } else {
            let cspan = objects::node_span(level - 1);
            let count = (end - start).div_ceil(cspan);
            for k in 0..count {
                let child_old = match (&node, old) {
                    (Some(n), _) => n.entries.get(k as usize).map_or(Old::None, |id| Old::Node(*id)),
                    (None, Old::Above) if k == 0 => {
                        if level - 1 == self.old_levels {
                            Old::Node(self.old_root)
                        } else {
                            Old::Above
                        }
                    }
                    _ => Old::None,
                };
                entries.push(self.build(child_old, level - 1, start + k * cspan)?);
            }
        }
        let (id, _) = self.objects.put(ObjKind::FileNode, &FileNode { level, entries }.encode())?;
        Ok(id)
    }
}

/// Build the block list of a file of `new_n` blocks, reusing the old list
/// (`old`: root, levels, blocks) except for `dirty` blocks and blocks past
/// the old end; `read(b)` stores block `b` and gives its id.
pub fn build_block_list(
    objects: &Objects,
    new_n: u64,
    old: Option<(ObjectId, u8, u64)>,
    dirty: &[(u64, u64)],
    read: impl FnMut(u64) -> SnapResult<ObjectId>,
) -> SnapResult<(ObjectId, u8)> {
    if new_n == 0 {
        return Ok((ObjectId::ZERO, 0));
    }
    let levels = objects::levels_for(new_n);
    let (old_root, old_levels, old_n) = old.filter(|o| !o.0.is_zero() && o.2 > 0).unwrap_or((ObjectId::ZERO, 0, 0));
    let mut t = FileTree { objects, dirty: Dirty(dirty), old_n, new_n, old_root, old_levels, read };
    let start_old = if old_n == 0 {
        Old::None
    } else if levels > old_levels {
        Old::Above
    } else {
        // the file shrank to fewer levels: the new root is the old first descendant
        let mut id = old_root;
        for _ in levels..old_levels {
            let n = objects.node(&id)?;
            id = *n.entries.first().unwrap_or(&ObjectId::ZERO);
        }
        Old::Node(id)
    };
    let root = t.build(start_old, levels, 0)?;
    Ok((root, levels))
}

/// Every block id of a file, in order (zero id: a hole).
pub fn block_ids(objects: &Objects, root: ObjectId, levels: u8) -> Result<Vec<ObjectId>, ObjError> {
    if root.is_zero() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    let mut stack = vec![(root, levels)];
    // depth-first, children in order
    while let Some((id, level)) = stack.pop() {
        let n = objects.node(&id)?;
        if level == 0 {
            out.extend(n.entries);
        } else {
            for c in n.entries.iter().rev() {
                stack.push((*c, level - 1));
            }
        }
    }
    Ok(out)
}

/// The bytes of a file in a snapshot.
pub fn read_file(objects: &Objects, e: &Entry, bs: u64) -> Result<Vec<u8>, ObjError> {
    let mut out = Vec::with_capacity(e.size as usize);
    for id in block_ids(objects, e.content, e.levels)? {
        if id.is_zero() {
            out.resize(out.len() + bs as usize, 0);
        } else {
            out.extend_from_slice(&objects.get(&id, ObjKind::Blob)?);
            // a short block is only ever the last one
        }
    }
    out.resize(e.size as usize, 0);
    Ok(out)
}

/// A top tree holding a chain `d/d/…/d` of `depth` directories with an
/// empty-content file `f` of `size` bytes at the bottom (for tests of deep
/// walks).
#[cfg(test)]
pub(crate) fn test_chain(objects: &Objects, depth: usize, size: u64) -> ObjectId {
    let mut st: sys::Stat = unsafe { std::mem::zeroed() };
    st.st_mode = libc::S_IFREG | 0o644;
    st.st_size = size as i64;
    st.st_nlink = 1;
    let mut e = entry_from_stat(b"f", &st);
    st.st_mode = libc::S_IFDIR | 0o755;
    st.st_size = 0;
    for i in 0..=depth {
        let (id, _) = objects.put(ObjKind::Tree, &Tree { entries: vec![e] }.encode()).unwrap();
        st.st_ino = i as u64 + 1000;
        e = entry_from_stat(if i == depth { b"." } else { b"d" }, &st);
        e.content = id;
    }
    objects.put(ObjKind::Tree, &Tree { entries: vec![e] }.encode()).unwrap().0
}

// ---------------------------------------------------------------------------
// the builder

fn time(sec: i64, nsec: i64) -> Time {
    Time { sec, nsec: nsec as u32 }
}

pub(crate) fn entry_from_stat(name: &[u8], st: &sys::Stat) -> Entry {
    Entry {
        name: name.to_vec(),
        kind: EntryKind::from_mode(st.st_mode),
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        size: st.st_size as u64,
        mtime: time(st.st_mtime, st.st_mtime_nsec),
        atime: time(st.st_atime, st.st_atime_nsec),
        ctime: time(st.st_ctime, st.st_ctime_nsec),
        ino: st.st_ino,
        nlink: st.st_nlink as u32,
        rdev: st.st_rdev,
        content: ObjectId::ZERO,
        levels: 0,
        target: Vec::new(),
        xattrs: Vec::new(),
        totals: Totals::default(),
    }
}

/// Live counters of a snapshot being taken.
#[derive(Debug, Default)]
pub struct Progress {
    pub files: std::sync::atomic::AtomicU64,
    pub dirs: std::sync::atomic::AtomicU64,
    pub read_bytes: std::sync::atomic::AtomicU64,
}

impl Progress {
    pub fn get(&self) -> SnapshotStats {
        use std::sync::atomic::Ordering::Relaxed;
        SnapshotStats {
            files_read: self.files.load(Relaxed),
            dirs_walked: self.dirs.load(Relaxed),
            read_bytes: self.read_bytes.load(Relaxed),
            ..Default::default()
        }
    }
}

/// Whether a changed inode of the sealed set is hard-linked somewhere per the
/// previous link table (then some directories are walked by path).
pub fn links_force_walks(links: &LinkTable, sealed: &HashMap<u64, Record>) -> bool {
    links.values().any(|ino| sealed.contains_key(ino))
}

/// The directories an incremental snapshot walks because an inode that
/// `changed` is hard-linked in them (per the previous link table), with
/// their ancestors.
pub fn forced_dirs(links: &LinkTable, changed: impl Fn(u64) -> bool) -> HashSet<Vec<u8>> {
    let mut forced = HashSet::new();
    for (path, ino) in links {
        if changed(*ino) {
            let mut p = parent_of(path);
            loop {
                forced.insert(p.to_vec());
                if p.is_empty() {
                    break;
                }
                p = parent_of(p);
            }
        }
    }
    forced
}

/// Takes one snapshot.
pub struct Builder<'a> {
    progress: Option<std::sync::Arc<Progress>>,
    capture: Option<&'a Capture>,
    objects: &'a Objects,
    bs: u64,
    /// The sealed dirty set; `None`: compare everything (`--full`, or no
    /// usable previous snapshot).
    sealed: Option<&'a HashMap<u64, Record>>,
    links: LinkTable,
    /// Directories that must be walked because a changed inode is linked there.
    forced: HashSet<Vec<u8>>,
    /// Entries of hard-linked inodes built so far, by (device of the
    /// directory holding them, inode): every name gets the same.
    built: HashMap<(u64, u64), Entry>,
    pub stats: SnapshotStats,
    buf: Vec<u8>,
}

impl<'a> Builder<'a> {
    pub fn new(
        objects: &'a Objects,
        bs: u64,
        sealed: Option<&'a HashMap<u64, Record>>,
        links_prev: LinkTable,
    ) -> Builder<'a> {
        let forced = match sealed {
            Some(sealed) => forced_dirs(&links_prev, |ino| sealed.contains_key(&ino)),
            None => HashSet::new(),
        };
        Builder {
            progress: None,
            capture: None,
            objects,
            bs,
            sealed,
            links: links_prev,
            forced,
            built: HashMap::new(),
            stats: SnapshotStats::default(),
            buf: vec![0u8; bs as usize],
        }
    }

    /// Read through a copy-before-write capture (writers run meanwhile).
    pub fn set_capture(&mut self, c: &'a Capture) {
        self.capture = Some(c);
    }

    pub fn set_progress(&mut self, p: std::sync::Arc<Progress>) {
        self.progress = Some(p);
    }

    pub fn links(&self) -> &LinkTable {
        &self.links
    }

    fn record(&self, ino: u64) -> Option<&'a Record> {
        self.sealed.and_then(|s| s.get(&ino))
    }

    fn must_walk(&self, path: &[u8], ino: u64, prev: Option<&Entry>) -> bool {
        self.sealed.is_none() || prev.is_none() || self.record(ino).is_some() || self.forced.contains(path)
    }

    /// Build the top tree (one entry "." for the root directory) from the
    /// backing root `root` (a directory descriptor) and the previous
    /// snapshot's top tree.
    pub fn build(&mut self, root: BorrowedFd<'_>, prev_top: Option<ObjectId>) -> SnapResult<ObjectId> {
        let prev_top = match prev_top {
            Some(id) => Some(self.objects.tree(&id)?),
            None => None,
        };
        let prev_root = prev_top.as_ref().and_then(|t| t.get(b".")).cloned();
        let mut st = sys::fstat(root).map_err(|e| backing(b".", e))?;
        let mut xattrs = sys::xattrs_at(root, c".").map_err(|err| backing(b".", err))?;
        if let Some(c) = self.capture.and_then(|c| c.inode(st.st_ino)) {
            st = c.st;
            xattrs = c.xattrs;
        }
        let mut e = entry_from_stat(b".", &st);
        e.xattrs = xattrs;
        let prev_root = prev_root.filter(|p| p.ino == st.st_ino && p.kind == EntryKind::Dir);
        if self.must_walk(b"", st.st_ino, prev_root.as_ref()) {
            let (id, totals) = self.walk(root, st.st_ino, b"", prev_root.as_ref())?;
            e.content = id;
            e.totals = totals;
        } else {
            let p = prev_root.expect("checked");
            e.content = p.content;
            e.totals = p.totals;
        }
        if let Some(c) = self.capture {
            c.done(st.st_ino);
        }
        self.stats.files = e.totals.files;
        self.stats.dirs = e.totals.dirs + 1;
        self.stats.others = e.totals.others;
        self.stats.logical_bytes = e.totals.bytes;
        let (id, _) = self.objects.put(ObjKind::Tree, &Tree { entries: vec![e] }.encode())?;
        Ok(id)
    }

    /// Walk the directory `dir` (backing inode `dir_ino`, at `path`),
    /// returning its tree and totals. The levels being walked are kept on
    /// the heap, one [`Level`] each (with its descriptor), not on the
    /// stack: a tree is walked down to [`util::MAX_DEPTH`] levels, and a
    /// deeper one is an error naming the path.
    fn walk(
        &mut self,
        dir: BorrowedFd<'_>,
        dir_ino: u64,
        path: &[u8],
        prev: Option<&Entry>,
    ) -> SnapResult<(ObjectId, Totals)> {
        // The path of the entry being looked at: its directory's path (the
        // first `path_len` bytes), then its name.
        let mut path = path.to_vec();
        let parking = sys::Parking::new(dir);
        let mut stack = vec![self.level(None, dir, dir_ino, &path, prev, None)?];
        loop {
            let depth = stack.len();
            let lvl = stack.last_mut().expect("the root level is popped last");
            path.truncate(lvl.path_len);
            let Some((name, mut expected, listed)) = lvl.listing.next() else {
                // this directory is done: its tree goes into the level above
                let done = stack.pop().expect("a level");
                let (id, _) = self.objects.put(ObjKind::Tree, &Tree { entries: done.entries }.encode())?;
                let Some(up) = stack.last_mut() else { return Ok((id, done.totals)) };
                let mut e = done.entry.expect("a directory below the root has its entry");
                e.content = id;
                e.totals = done.totals;
                self.take(e, up.dev, &path, &mut up.totals, &mut up.entries);
                continue;
            };
            let dir_ino = lvl.dir_ino;
            if let Some(fd) = &mut lvl.fd {
                // parked while the walk was further down: open it again
                if let Err(e) = parking.ensure(fd) {
                    match self.capture.and_then(|c| c.pinned(dir_ino)) {
                        Some(pin) => {
                            let again = sys::reopen(pin.as_fd(), libc::O_RDONLY | libc::O_DIRECTORY);
                            *fd = sys::LevelFd::new(again.map_err(|e| backing(&path, e))?);
                        }
                        None => return Err(backing(&path, e)),
                    }
                }
            }
            let dir = match &lvl.fd {
                Some(fd) => fd.get().map_err(|e| backing(&path, e))?,
                None => dir,
            };
            let dev = lvl.dev;
            let cname = CString::new(name.clone()).map_err(|_| backing(&path, Errno::EINVAL))?;
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(&name);
            // Unchanged since the previous snapshot: the inode the name had at
            // the seal has no record and had this name then too. Every change
            // to an inode (data, metadata, links) makes a record, so its
            // previous entry is still right: no stat, no read.
            if self.sealed.is_some() {
                let mut at_seal = expected;
                if at_seal.is_none() {
                    if lvl.late.is_none() {
                        lvl.late = self.capture.and_then(|c| c.dir(dir_ino)).map(|l| l.into_iter().collect());
                    }
                    at_seal = match &lvl.late {
                        Some(l) => l.get(&name).copied(),
                        None => listed,
                    };
                }
                let unchanged = at_seal.and_then(|ino| {
                    // (not directories: at a mount point the listing names
                    // the directory underneath, and they are few)
                    let p = lvl.prev_tree.as_ref()?.get(&name)?;
                    (p.kind != EntryKind::Dir && p.ino == ino && self.record(ino).is_none()).then(|| p.clone())
                });
                if let Some(e) = unchanged {
                    self.stats.entries_reused += 1;
                    self.take(e, dev, &path, &mut lvl.totals, &mut lvl.entries);
                    continue;
                }
            }
            let live_st = sys::fstatat(dir, &cname);
            if expected.is_none() {
                if lvl.late.is_none() {
                    lvl.late = self.capture.and_then(|c| c.dir(dir_ino)).map(|l| l.into_iter().collect());
                }
                if let Some(l) = &lvl.late {
                    match l.get(&name) {
                        Some(ino) => expected = Some(*ino),
                        None => continue, // created after the seal
                    }
                }
            }
            // Where the inode is now: at its name, or (moved or unlinked since
            // the seal) through the descriptor the capture kept.
            let src = match (expected, live_st) {
                (Some(ino), Ok(st)) if st.st_ino == ino => Src::At(st),
                (Some(ino), _) => match self.capture.and_then(|c| c.pinned(ino)) {
                    Some(fd) => match sys::fstat(fd.as_fd()) {
                        Ok(st) => Src::Pin(st, fd),
                        Err(e) => return Err(backing(&path, e)),
                    },
                    None => {
                        // another name of an inode built already
                        if let Some(mut e) = self.built.get(&(dev, ino)).cloned() {
                            e.name = name.clone();
                            self.take(e, dev, &path, &mut lvl.totals, &mut lvl.entries);
                            continue;
                        }
                        log::warn!("snapshot: {} is gone and was not kept", util::show_path(&path));
                        continue;
                    }
                },
                (None, Ok(st)) => Src::At(st),
                (None, Err(Errno::ENOENT)) => continue, // gone since listed
                (None, Err(e)) => return Err(backing(&path, e)),
            };
            let mut st = *src.stat();
            // Another name of a hard-linked inode built already: the same
            // entry (the inode is done: read again, it could show changes
            // made after the seal).
            if let Some(mut e) = self.built.get(&(dev, st.st_ino)).filter(|_| st.st_dev == dev).cloned() {
                e.name = name.clone();
                self.take(e, dev, &path, &mut lvl.totals, &mut lvl.entries);
                continue;
            }
            let prev_e = lvl
                .prev_tree
                .as_ref()
                .and_then(|t| t.get(&name))
                .filter(|p| p.ino == st.st_ino && p.kind == EntryKind::from_mode(st.st_mode));
            let rec = self.record(st.st_ino);
            let meta_clean = self.sealed.is_some() && rec.is_none_or(|r| r.flags & (META | FULL) == 0);
            let mut xattrs = match prev_e {
                Some(p) if meta_clean => p.xattrs.clone(),
                _ => match &src {
                    Src::At(_) => sys::xattrs_at(dir, &cname),
                    Src::Pin(_, fd) => sys::xattrs_at_fd(fd.as_fd()),
                }
                .map_err(|err| backing(&path, err))?,
            };
            let mut target = Vec::new();
            if EntryKind::from_mode(st.st_mode) == EntryKind::Symlink {
                target = match prev_e {
                    Some(p) if meta_clean => p.target.clone(),
                    _ => match &src {
                        Src::At(_) => sys::readlink_at(dir, &cname),
                        Src::Pin(_, fd) => sys::readlinkat(fd.as_fd()),
                    }
                    .map_err(|err| backing(&path, err))?,
                };
            }
            // the sealed state, if a change has touched the inode since
            if let Some(c) = self.capture.and_then(|c| c.inode(st.st_ino)) {
                st = c.st;
                xattrs = c.xattrs;
                target = c.target;
            }
            let mut e = entry_from_stat(&name, &st);
            e.xattrs = xattrs;
            e.target = target;
            match e.kind {
                EntryKind::Dir => {
                    if self.must_walk(&path, st.st_ino, prev_e) {
                        if depth > util::MAX_DEPTH {
                            return Err(SnapError::TooDeep(util::too_deep(&path)));
                        }
                        let opened = match &src {
                            Src::At(_) => {
                                sys::openat(dir, &cname, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW, 0)
                            }
                            Src::Pin(_, fd) => sys::reopen(fd.as_fd(), libc::O_RDONLY | libc::O_DIRECTORY),
                        };
                        let mut fd = match opened {
                            Ok(fd) => fd,
                            Err(Errno::ENOENT) => continue,
                            Err(err) => return Err(backing(&path, err)),
                        };
                        // replaced by another directory between the stat and the open
                        if sys::fstat(fd.as_fd()).map_err(|e| backing(&path, e))?.st_ino != st.st_ino {
                            match self.capture.and_then(|c| c.pinned(st.st_ino)) {
                                Some(pin) => {
                                    fd = sys::reopen(pin.as_fd(), libc::O_RDONLY | libc::O_DIRECTORY)
                                        .map_err(|e| backing(&path, e))?
                                }
                                None => return Err(backing(&path, Errno::EAGAIN)),
                            }
                        }
                        // go down: the entry is finished when its level is
                        let below = self.level(Some(fd), dir, st.st_ino, &path, prev_e, Some(e))?;
                        stack.push(below);
                        parking.entered(stack.iter_mut().filter_map(|l| l.fd.as_mut()));
                        continue;
                    }
                    let p = prev_e.expect("checked");
                    e.content = p.content;
                    e.totals = p.totals;
                }
                EntryKind::File => {
                    let (content, levels) = self.file(dir, &cname, &src, &path, &st, prev_e, rec)?;
                    e.content = content;
                    e.levels = levels;
                }
                _ => {}
            }
            self.take(e, dev, &path, &mut lvl.totals, &mut lvl.entries);
        }
    }

    /// Start walking the directory open at `fd` (`None`: at `dir`, the
    /// root), at `path`, whose previous entry is `prev`: list it, drop what
    /// the previous link table linked here (it is recorded again).
    /// `entry`: its entry in the level above.
    fn level(
        &mut self,
        fd: Option<OwnedFd>,
        dir: BorrowedFd<'_>,
        dir_ino: u64,
        path: &[u8],
        prev: Option<&Entry>,
        entry: Option<Entry>,
    ) -> SnapResult<Level> {
        let dir = fd.as_ref().map_or(dir, |fd| fd.as_fd());
        util::panic_point("walk", || path.to_vec());
        self.stats.dirs_walked += 1;
        if let Some(p) = &self.progress {
            p.dirs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let prev_tree = match prev {
            Some(p) if !p.content.is_zero() => Some(self.objects.tree(&p.content)?),
            _ => None,
        };
        // hard links never cross devices: names here share this one
        let dev = sys::fstat(dir).map_err(|e| backing(path, e))?.st_dev;
        // (name, inode number in the listing)
        let live: Vec<(Vec<u8>, u64)> = sys::list_dir(dir)
            .map_err(|e| backing(path, e))?
            .into_iter()
            .map(|e| (std::os::unix::ffi::OsStringExt::into_vec(e.name), e.ino))
            .collect();
        // The sealed listing, if a change has touched this directory since:
        // (name, inode at the seal, inode listed live).
        let mut listing: Vec<(Vec<u8>, Option<u64>, Option<u64>)> = match self.capture.and_then(|c| c.dir(dir_ino)) {
            Some(l) => l.into_iter().map(|(n, i)| (n, Some(i), None)).collect(),
            None => live.into_iter().map(|(n, i)| (n, None, Some(i))).collect(),
        };
        listing.retain(|(n, _, _)| !(path.is_empty() && (n == REPO_NAME.as_bytes() || n == SNAPSHOTS_NAME.as_bytes())));
        listing.sort();
        let names: Vec<Vec<u8>> = listing.iter().map(|(n, _, _)| n.clone()).collect();
        // what the previous snapshot linked here is re-recorded below
        let stale: Vec<Vec<u8>> = self
            .links
            .keys()
            .filter(|p| {
                parent_of(p) == path || prev_tree.as_ref().is_some_and(|t| is_under_gone_dir(t, path, p, &names))
            })
            .cloned()
            .collect();
        for p in stale {
            self.links.remove(&p);
        }
        Ok(Level {
            entries: Vec::with_capacity(listing.len()),
            fd: fd.map(sys::LevelFd::new),
            dir_ino,
            path_len: path.len(),
            prev_tree,
            dev,
            listing: listing.into_iter(),
            totals: Totals::default(),
            late: None,
            entry,
        })
    }

    /// Add a finished entry: totals, done for copy-before-write, hard links.
    fn take(&mut self, e: Entry, dev: u64, path: &[u8], totals: &mut Totals, entries: &mut Vec<Entry>) {
        match e.kind {
            EntryKind::Dir => {
                totals.dirs += 1;
                totals.add(&e.totals);
            }
            EntryKind::File => {
                totals.files += 1;
                totals.bytes += e.size;
            }
            _ => totals.others += 1,
        }
        if let Some(c) = self.capture {
            c.done(e.ino);
        }
        if e.kind != EntryKind::Dir && e.nlink > 1 {
            self.links.insert(path.to_vec(), e.ino);
            self.built.entry((dev, e.ino)).or_insert_with(|| e.clone());
        }
        entries.push(e);
    }

    /// The block list of a regular file (`st`: its sealed stat).
    #[allow(clippy::too_many_arguments)]
    fn file(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &CString,
        src: &Src,
        path: &[u8],
        st: &sys::Stat,
        prev: Option<&Entry>,
        rec: Option<&Record>,
    ) -> SnapResult<(ObjectId, u8)> {
        let size = st.st_size as u64;
        let n = size.div_ceil(self.bs);
        // unchanged since the previous snapshot
        if let (Some(p), None, true) = (prev, rec, self.sealed.is_some()) {
            if p.size == size {
                return Ok((p.content, p.levels));
            }
        }
        let opened = match src {
            Src::At(_) => open_for_read(dir, name),
            Src::Pin(_, fd) => sys::reopen(fd.as_fd(), libc::O_RDONLY | libc::O_NONBLOCK),
        };
        let fd = opened.map_err(|e| backing(path, e))?;
        let check = sys::fstat(fd.as_fd()).map_err(|e| backing(path, e))?;
        if check.st_ino != st.st_ino {
            return Err(backing(path, Errno::EAGAIN));
        }
        self.stats.files_read += 1;
        if let Some(p) = &self.progress {
            p.files.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let progress = self.progress.clone();
        let data = data_ranges(fd.as_fd(), size);
        let incremental = match (prev, rec, self.sealed.is_some()) {
            (Some(p), Some(r), true) if r.flags & FULL == 0 => Some((p, r)),
            _ => None,
        };
        let (old, dirty) = match incremental {
            Some((p, r)) => {
                let mut r = r.clone();
                r.size = size;
                (Some((p.content, p.levels, p.size.div_ceil(self.bs))), r.dirty_ranges(self.bs))
            }
            None => (None, vec![(0, n)]),
        };
        let bs = self.bs;
        let ino = st.st_ino;
        let objects = self.objects;
        let capture = self.capture;
        let buf = &mut self.buf;
        let stats = &mut self.stats;
        let read = |b: u64| -> SnapResult<ObjectId> {
            let off = b * bs;
            let len = bs.min(size - off) as usize;
            // read the live block, then let a copy-before-write override it
            let live = if !data.iter().any(|&(s, e)| s < off + len as u64 && off < e) {
                ObjectId::ZERO
            } else {
                let got = sys::pread_full(fd.as_fd(), &mut buf[..len], off).map_err(|e| backing(path, e))?;
                stats.read_bytes += got as u64;
                if let Some(p) = &progress {
                    p.read_bytes.fetch_add(got as u64, std::sync::atomic::Ordering::Relaxed);
                }
                if got < len {
                    buf[got..len].fill(0);
                }
                let block = &buf[..len];
                if block.iter().all(|&x| x == 0) {
                    ObjectId::ZERO
                } else {
                    objects.put(ObjKind::Blob, block)?.0
                }
            };
            Ok(capture.and_then(|c| c.block(ino, b)).unwrap_or(live))
        };
        build_block_list(objects, n, old, &dirty, read)
    }
}

/// A directory the snapshot walk is in (one per level, on the heap).
struct Level {
    /// Its descriptor (`None`: the root, which the caller holds).
    fd: Option<sys::LevelFd>,
    dir_ino: u64,
    /// The length of its path.
    path_len: usize,
    prev_tree: Option<Tree>,
    dev: u64,
    /// The names still to look at: (name, inode at the seal, inode listed live).
    listing: std::vec::IntoIter<(Vec<u8>, Option<u64>, Option<u64>)>,
    /// A listing captured after we listed live (a name changed meanwhile).
    late: Option<HashMap<Vec<u8>, u64>>,
    entries: Vec<Entry>,
    totals: Totals,
    /// Its entry in the level above, finished when this level is.
    entry: Option<Entry>,
}

/// Where the walk reaches an inode: by its name, or through a descriptor the
/// copy-before-write kept (moved or unlinked since the seal).
enum Src {
    At(sys::Stat),
    Pin(sys::Stat, std::sync::Arc<OwnedFd>),
}

impl Src {
    fn stat(&self) -> &sys::Stat {
        match self {
            Src::At(st) | Src::Pin(st, _) => st,
        }
    }
}

/// Whether link-table path `p` lies under a directory of the previous tree
/// at `dir` that is gone from `names` (removed or renamed away).
fn is_under_gone_dir(prev: &Tree, dir: &[u8], p: &[u8], names: &[Vec<u8>]) -> bool {
    let prefix = if dir.is_empty() { Vec::new() } else { util::join_rel(dir, b"") };
    let Some(rest) = p.strip_prefix(prefix.as_slice()) else { return false };
    let Some(slash) = rest.iter().position(|b| *b == b'/') else { return false };
    let first = &rest[..slash];
    prev.get(first).is_some_and(|e| e.kind == EntryKind::Dir)
        && names.binary_search_by(|n| n.as_slice().cmp(first)).is_err()
}

fn open_for_read(dir: BorrowedFd<'_>, name: &CString) -> Result<OwnedFd, Errno> {
    let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC;
    let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags | libc::O_NOATIME) };
    let fd = if fd < 0 && Errno::last() == Errno::EPERM {
        unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags) }
    } else {
        fd
    };
    if fd < 0 {
        return Err(Errno::last());
    }
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The data (non-hole) byte ranges of a file of `size` bytes.
fn data_ranges(fd: BorrowedFd<'_>, size: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut pos = 0i64;
    while (pos as u64) < size {
        let start = match sys::lseek(fd, pos, libc::SEEK_DATA) {
            Ok(s) => s,
            Err(e) if e == Errno(libc::ENXIO) => break,
            Err(_) => return vec![(0, size)], // no SEEK_DATA: all data
        };
        let end = sys::lseek(fd, start, libc::SEEK_HOLE).unwrap_or(size as i64);
        out.push((start as u64, end as u64));
        pos = end;
    }
    out
}

// ---------------------------------------------------------------------------
// comparing snapshots

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DiffEntry {
    pub path: String,
    /// "added", "removed", "modified"
    pub change: String,
    pub kind: String,
    /// Bytes that differ (files: changed blocks, clipped to the size).
    pub bytes: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DiffReport {
    pub from: String,
    pub to: String,
    pub added: u64,
    pub removed: u64,
    pub modified: u64,
    pub changed_bytes: u64,
    pub entries: Vec<DiffEntry>,
}

/// The root directory entry of a snapshot's top tree.
pub fn root_entry(objects: &Objects, top: ObjectId) -> Result<Entry, ObjError> {
    let t = objects.tree(&top)?;
    t.get(b".").cloned().ok_or(ObjError::Decode { id: top, err: objects::DecodeError { what: "snapshot top tree" } })
}

/// Differences between two snapshots (top trees), visiting only subtrees
/// whose ids differ.
pub fn diff(objects: &Objects, a: ObjectId, b: ObjectId, bs: u64) -> Result<Vec<DiffEntry>, ObjError> {
    let mut out = Vec::new();
    let (ra, rb) = (root_entry(objects, a)?, root_entry(objects, b)?);
    if (ra.mode, ra.uid, ra.gid, &ra.xattrs) != (rb.mode, rb.uid, rb.gid, &rb.xattrs) {
        out.push(DiffEntry { path: ".".into(), change: "modified".into(), kind: "dir".into(), bytes: 0 });
    }
    diff_trees(objects, ra.content, rb.content, b"", bs, &mut out)?;
    Ok(out)
}

fn changed_file_bytes(objects: &Objects, a: &Entry, b: &Entry, bs: u64) -> Result<u64, ObjError> {
    if a.content == b.content {
        return Ok(a.size.abs_diff(b.size));
    }
    let x = block_ids(objects, a.content, a.levels)?;
    let y = block_ids(objects, b.content, b.levels)?;
    let n = x.len().max(y.len());
    let mut bytes = 0;
    for i in 0..n {
        if x.get(i) != y.get(i) {
            let start = i as u64 * bs;
            let end = ((i as u64 + 1) * bs).min(a.size.max(b.size));
            bytes += end.saturating_sub(start);
        }
    }
    Ok(bytes)
}

/// The differences below the trees `a` and `b` (at `path`), descending
/// only where ids differ. Depth-first in name order; the directories being
/// compared are kept on the heap (any depth), one path buffer for all.
fn diff_trees(
    objects: &Objects,
    a: ObjectId,
    b: ObjectId,
    path: &[u8],
    bs: u64,
    out: &mut Vec<DiffEntry>,
) -> Result<(), ObjError> {
    /// Two directories being compared, and how far.
    struct Pair {
        ta: Tree,
        tb: Tree,
        i: usize,
        j: usize,
        path_len: usize,
    }
    let load = |a: ObjectId, b: ObjectId, path_len: usize| -> Result<Pair, ObjError> {
        let ta = if a.is_zero() { Tree::default() } else { objects.tree(&a)? };
        let tb = if b.is_zero() { Tree::default() } else { objects.tree(&b)? };
        Ok(Pair { ta, tb, i: 0, j: 0, path_len })
    };
    if a == b {
        return Ok(());
    }
    let mut path = path.to_vec();
    let mut stack = vec![load(a, b, path.len())?];
    let show = |p: &[u8]| String::from_utf8_lossy(p).into_owned();
    let size_of = |e: &Entry| {
        if e.kind == EntryKind::Dir {
            e.totals.bytes
        } else if e.kind == EntryKind::File {
            e.size
        } else {
            0
        }
    };
    while let Some(f) = stack.last_mut() {
        path.truncate(f.path_len);
        let ea = f.ta.entries.get(f.i);
        let eb = f.tb.entries.get(f.j);
        let ord = match (ea, eb) {
            (None, None) => {
                stack.pop();
                continue;
            }
            (Some(x), Some(y)) => x.name.cmp(&y.name),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        let name = match ord {
            std::cmp::Ordering::Less => &ea.unwrap().name,
            _ => &eb.unwrap().name,
        };
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(name);
        let mut below = None;
        match ord {
            std::cmp::Ordering::Less => {
                let e = ea.unwrap();
                out.push(DiffEntry {
                    path: show(&path),
                    change: "removed".into(),
                    kind: e.kind.name().into(),
                    bytes: size_of(e),
                });
                f.i += 1;
            }
            std::cmp::Ordering::Greater => {
                let e = eb.unwrap();
                out.push(DiffEntry {
                    path: show(&path),
                    change: "added".into(),
                    kind: e.kind.name().into(),
                    bytes: size_of(e),
                });
                f.j += 1;
            }
            std::cmp::Ordering::Equal => {
                let (x, y) = (ea.unwrap(), eb.unwrap());
                let p = &path;
                if x.kind != y.kind {
                    out.push(DiffEntry {
                        path: show(p),
                        change: "removed".into(),
                        kind: x.kind.name().into(),
                        bytes: size_of(x),
                    });
                    out.push(DiffEntry {
                        path: show(p),
                        change: "added".into(),
                        kind: y.kind.name().into(),
                        bytes: size_of(y),
                    });
                } else if x.kind == EntryKind::Dir {
                    let meta_changed = (x.mode, x.uid, x.gid, &x.xattrs) != (y.mode, y.uid, y.gid, &y.xattrs);
                    if meta_changed {
                        out.push(DiffEntry { path: show(p), change: "modified".into(), kind: "dir".into(), bytes: 0 });
                    }
                    if x.content != y.content {
                        below = Some((x.content, y.content));
                    }
                } else {
                    let mut xs = x.clone();
                    let mut ys = y.clone();
                    // inode numbers, link counts, ctime and atime do not make a change
                    xs.ino = 0;
                    ys.ino = 0;
                    xs.nlink = 0;
                    ys.nlink = 0;
                    xs.ctime = Time::default();
                    ys.ctime = Time::default();
                    xs.atime = Time::default();
                    ys.atime = Time::default();
                    if xs != ys {
                        let bytes = if x.kind == EntryKind::File { changed_file_bytes(objects, x, y, bs)? } else { 0 };
                        out.push(DiffEntry {
                            path: show(p),
                            change: "modified".into(),
                            kind: x.kind.name().into(),
                            bytes,
                        });
                    }
                }
                f.i += 1;
                f.j += 1;
            }
        }
        if let Some((x, y)) = below {
            stack.push(load(x, y, path.len())?);
        }
    }
    Ok(())
}

/// The stats of this snapshot's start, for the record.
pub fn elapsed_ms(t0: Instant) -> u64 {
    t0.elapsed().as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::LocalStore;
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
        let depth = 2 * util::MAX_DEPTH;
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
}
