//! The read-only view of snapshots: what `DIR/.snapshots/` and a `browse`
//! mount show. A plain API over the repository, driven by the FUSE adapter.
//!
//! (One file on purpose, about 600 lines of code and 500 of tests: the
//! node table, the caches and the reads that use them are one unit, and
//! splitting them would put the caches' invariants in two places.)
//!
//! # Node ids
//! Every view node has bit 63 set, so it never collides with a live node
//! (backing inode numbers). `VIEW_ROOT` is the folder of snapshots. A
//! snapshot gets an index (1, 2, ...) the first time the view sees it, fixed
//! for the life of the view. An inode is identified by (snapshot, device,
//! inode number), so hard links in a snapshot share a node (and `cp -a` out
//! of it keeps them) and files of two filesystems never do. A node on the
//! snapshot root's device with an inode number below 2^40 is `bit 63 |
//! index << 40 | inode number` (stable for the mount's life, and `stat`
//! shows the backing number); any other gets `bit 63 | bit 62 | counter`,
//! kept while the kernel knows the node.
//!
//! # Holes
//! `st_blocks` is what stat showed when the snapshot was taken (format 1
//! trees did not record it: then the stored blocks of the block list are
//! counted, once, and cached), and `lseek(SEEK_DATA/SEEK_HOLE)` reports
//! the holes the block list holds, skipping a whole node of holes by its
//! id (`objects::hole_node`), so `cp`, `tar -S` and `du` see a sparse file.
//!
//! # Damaged records
//! A snapshot record that is damaged (see `snapshot::list_all`), or whose
//! block size is not the repository's, is shown as a folder (under its
//! name if that can be read and is free, else its id) that answers EIO to
//! everything but `stat`.
//!
//! # Laziness and memory
//! Snapshots are opened only when looked up; trees, block-list nodes and
//! decompressed blocks are kept in bounded LRU caches; nodes are dropped
//! when the kernel forgets them. Listing a folder of 1,000 snapshots reads
//! the records, nothing else.
//!
//! # Integrity
//! Every object is verified against its id when read (`Objects::get`). A
//! damaged object makes the read fail with EIO, and the log names the file
//! and the snapshot.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use fuser::{FileAttr, FileType};

use crate::os::errno::{Errno, SysResult, ToErrno};
use crate::repo::objects::{self, Entry, EntryKind, FileNode, ObjKind, ObjectId, SnapshotId, Time, Tree, TreeId};
use crate::repo::objstore::{ObjError, Objects};
use crate::snapshot::{self, SnapshotInfo};
use crate::util::{Locked, RwLocked};

pub const VIEW_BIT: u64 = 1 << 63;
/// The folder of snapshots.
pub const VIEW_ROOT: u64 = VIEW_BIT | 1;
const INO_MASK: u64 = (1 << 40) - 1;
/// Node ids given from a counter (inodes of other devices, large numbers).
const ALLOC_BIT: u64 = 1 << 62;
/// Snapshot indexes stay below this, so `index << 40` never reaches bit 62.
const MAX_SNAPS: usize = 1 << 22;
/// Ids given to entries listed but never looked up are forgotten past this.
const MAX_IDS: usize = 1 << 20;

/// What identifies an inode in a view: (snapshot index, device, inode).
type Key = (u32, u64, u64);

pub fn is_view(node: u64) -> bool {
    node & VIEW_BIT != 0
}

/// One node the kernel knows.
struct VNode {
    snap: u32,
    entry: Entry,
    /// Its key, when its id came from the counter.
    key: Option<Key>,
    /// Node id of the directory it was found in, for paths in messages.
    parent: u64,
    nlookup: AtomicU64,
}

struct Snaps {
    /// index -> snapshot (index 0 unused)
    by_index: Vec<Option<SnapshotInfo>>,
    by_name: HashMap<String, u32>,
    by_id: HashMap<SnapshotId, u32>,
    /// The device of each snapshot's root (`None`: not recorded).
    root_dev: HashMap<u32, Option<u64>>,
}

/// Node ids given from the counter, by key.
struct Ids {
    by_key: HashMap<Key, u64>,
    next: u64,
}

/// Cache sizes.
const TREE_CACHE: usize = 1024;
/// ... and at most about this many bytes of them.
const TREE_CACHE_BYTES: usize = 64 << 20;

/// Roughly what a decoded tree takes in memory.
fn tree_bytes(t: &Tree) -> usize {
    t.entries
        .iter()
        .map(|e| {
            std::mem::size_of::<Entry>()
                + e.name.len()
                + e.target.len()
                + e.xattrs.iter().map(|(k, v)| k.len() + v.len() + 48).sum::<usize>()
        })
        .sum::<usize>()
        + 64
}
const NODE_CACHE: usize = 1024;
/// Bytes of decompressed blocks kept (1,024 blocks at the default block
/// size; at least 16 blocks whatever the size).
const BLOCK_CACHE_BYTES: u64 = 64 << 20;

pub struct View {
    objects: Arc<Objects>,
    bs: u64,
    nodes: RwLock<HashMap<u64, Arc<VNode>>>,
    snaps: RwLock<Snaps>,
    /// Show only this snapshot (browse --snapshot).
    only: Option<String>,
    /// In a shared repository: the lineage whose snapshots are shown.
    lineage: RwLock<Option<crate::snapshot::Lineage>>,
    /// Trees, with the bytes they hold in all (bounded by TREE_CACHE_BYTES too).
    trees: Mutex<(lru::LruCache<TreeId, Arc<Tree>>, usize)>,
    fnodes: Mutex<lru::LruCache<ObjectId, Arc<FileNode>>>,
    blocks: Mutex<lru::LruCache<ObjectId, Arc<Vec<u8>>>>,
    /// Stored blocks counted in block lists of format 1 entries (st_blocks).
    counted: Mutex<lru::LruCache<(ObjectId, u64), u64>>,
    ids: Mutex<Ids>,
    ttl: Duration,
    refreshed: Mutex<Option<std::time::Instant>>,
}

fn cap(n: usize) -> std::num::NonZeroUsize {
    std::num::NonZeroUsize::new(n).expect("non-zero")
}

fn shape(id: ObjectId, what: &'static str) -> ObjError {
    ObjError::Decode { id, err: objects::DecodeError { what } }
}

fn systime(t: Time) -> SystemTime {
    crate::os::sys::time_from(t.sec, t.nsec as i64)
}

fn file_type(k: EntryKind) -> FileType {
    match k {
        EntryKind::File => FileType::RegularFile,
        EntryKind::Dir => FileType::Directory,
        EntryKind::Symlink => FileType::Symlink,
        EntryKind::Fifo => FileType::NamedPipe,
        EntryKind::Socket => FileType::Socket,
        EntryKind::CharDev => FileType::CharDevice,
        EntryKind::BlockDev => FileType::BlockDevice,
    }
}

impl View {
    pub fn new(objects: Arc<Objects>, bs: u64, only: Option<String>) -> View {
        View {
            objects,
            bs,
            nodes: RwLock::new(HashMap::new()),
            snaps: RwLock::new(Snaps {
                by_index: vec![None],
                by_name: HashMap::new(),
                by_id: HashMap::new(),
                root_dev: HashMap::new(),
            }),
            only,
            lineage: RwLock::new(None),
            trees: Mutex::new((lru::LruCache::new(cap(TREE_CACHE)), 0)),
            fnodes: Mutex::new(lru::LruCache::new(cap(NODE_CACHE))),
            blocks: Mutex::new(lru::LruCache::new(cap((BLOCK_CACHE_BYTES / bs.max(1)).max(16) as usize))),
            counted: Mutex::new(lru::LruCache::new(cap(4096))),
            ids: Mutex::new(Ids { by_key: HashMap::new(), next: 1 }),
            ttl: Duration::from_secs(60),
            refreshed: Mutex::new(None),
        }
    }

    /// Show only the snapshots of `lineage` (None: all).
    pub fn set_lineage(&self, lineage: Option<crate::snapshot::Lineage>) {
        *self.lineage.write_locked() = lineage;
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Learn of new snapshots: at most every 200 ms unless `force`.
    fn refresh(&self, force: bool) {
        {
            let mut r = self.refreshed.locked();
            if !force && r.is_some_and(|t| t.elapsed() < Duration::from_millis(200)) {
                return;
            }
            *r = Some(std::time::Instant::now());
        }
        let all = match snapshot::list_all(&**self.objects.store()) {
            Ok(a) => snapshot::of_lineage(a, self.lineage.read_locked().as_ref()),
            Err(e) => {
                log::error!("listing snapshots: {e}");
                return;
            }
        };
        let mut s = self.snaps.write_locked();
        if all.iter().any(|i| !s.by_id.contains_key(&i.id)) {
            // packs written since we last looked (a daemon snapshotting into
            // this repository while it is browsed)
            if let Err(e) = self.objects.index_new_packs() {
                log::error!("indexing new packs: {e}");
            }
        }
        // forgotten snapshots leave the folder
        let present: std::collections::HashSet<&SnapshotId> = all.iter().map(|i| &i.id).collect();
        let gone: Vec<(SnapshotId, u32)> =
            s.by_id.iter().filter(|(id, _)| !present.contains(id)).map(|(id, i)| (id.clone(), *i)).collect();
        for (id, idx) in gone {
            s.by_id.remove(&id);
            if let Some(Some(info)) = s.by_index.get(idx as usize) {
                let name = info.record.name.clone();
                if s.by_name.get(&name) == Some(&idx) {
                    s.by_name.remove(&name);
                }
            }
            s.by_index[idx as usize] = None;
        }
        // sound records take their names first
        let (good, bad): (Vec<_>, Vec<_>) = all.into_iter().partition(|i| i.damaged.is_none());
        for mut info in good.into_iter().chain(bad) {
            if self.only.as_ref().is_some_and(|o| *o != info.record.name && o.as_str() != info.id.as_str()) {
                continue;
            }
            if s.by_id.contains_key(&info.id) {
                continue;
            }
            if s.by_index.len() >= MAX_SNAPS {
                log::error!("more than {MAX_SNAPS} snapshots: the others are not shown");
                break;
            }
            if info.damaged.is_none() && info.record.block_size != self.bs {
                info.damaged =
                    Some(format!("its block size {} is not the repository's {}", info.record.block_size, self.bs));
            }
            if let Some(problem) = &info.damaged {
                log::error!("snapshot record {} is damaged: {problem}", info.id);
                if info.record.name.is_empty() || s.by_name.contains_key(&info.record.name) {
                    info.record.name = info.id.to_string();
                }
            }
            let idx = s.by_index.len() as u32;
            s.by_name.insert(info.record.name.clone(), idx);
            s.by_id.insert(info.id.clone(), idx);
            s.by_index.push(Some(info));
        }
    }

    /// The node id of a snapshot's root, looked up once and kept for the
    /// view's life (a `browse --snapshot` mount's root).
    pub fn pin_snapshot_root(&self, name: &str) -> SysResult<u64> {
        let a = self.lookup(VIEW_ROOT, OsStr::new(name))?;
        Ok(a.ino.0)
    }

    /// Snapshots the view shows, oldest first: (index, name).
    pub fn snapshot_names(&self) -> Vec<(u32, String)> {
        self.refresh(true);
        let s = self.snaps.read_locked();
        s.by_index
            .iter()
            .enumerate()
            .filter_map(|(i, x)| x.as_ref().map(|x| (i as u32, x.record.name.clone())))
            .collect()
    }

    fn snap_name(&self, idx: u32) -> String {
        let s = self.snaps.read_locked();
        s.by_index.get(idx as usize).and_then(|x| x.as_ref()).map(|x| x.record.name.clone()).unwrap_or_default()
    }

    fn node(&self, id: u64) -> SysResult<Arc<VNode>> {
        self.nodes.read_locked().get(&id).cloned().ok_or(Errno::ENOENT)
    }

    /// The device of snapshot `snap`'s root, if recorded.
    fn root_dev(&self, snap: u32) -> Option<u64> {
        if let Some(d) = self.snaps.read_locked().root_dev.get(&snap) {
            return *d;
        }
        self.snap_root(snap).ok().and_then(|e| e.dev)
    }

    /// The node id of `e` in snapshot `snap`, and its key if it came from
    /// the counter (see the module doc).
    fn node_id(&self, snap: u32, e: &Entry) -> (u64, Option<Key>) {
        let root = self.root_dev(snap);
        let dev = e.dev.or(root);
        if dev == root && e.ino <= INO_MASK {
            return (VIEW_BIT | ((snap as u64) << 40) | e.ino, None);
        }
        let key = (snap, dev.unwrap_or(0), e.ino);
        let full = {
            let ids = self.ids.locked();
            if let Some(id) = ids.by_key.get(&key) {
                return (*id, Some(key));
            }
            ids.by_key.len() >= MAX_IDS
        };
        if full {
            // drop the ids of entries listed but not known to the kernel
            // (locks in the order forget takes them: nodes, then ids)
            let nodes = self.nodes.read_locked();
            self.ids.locked().by_key.retain(|_, id| nodes.contains_key(id));
        }
        let mut ids = self.ids.locked();
        if let Some(id) = ids.by_key.get(&key) {
            return (*id, Some(key));
        }
        let id = VIEW_BIT | ALLOC_BIT | (ids.next & (ALLOC_BIT - 1));
        ids.next += 1;
        ids.by_key.insert(key, id);
        (id, Some(key))
    }

    /// Register a node the kernel learns of (lookup count +1).
    fn remember(&self, snap: u32, entry: &Entry, parent: u64) -> u64 {
        let (id, key) = self.node_id(snap, entry);
        let mut n = self.nodes.write_locked();
        match n.get(&id) {
            Some(v) => {
                v.nlookup.fetch_add(1, Ordering::SeqCst);
            }
            None => {
                n.insert(id, Arc::new(VNode { snap, entry: entry.clone(), key, parent, nlookup: AtomicU64::new(1) }));
                // (a forget may have dropped the id between node_id and here)
                if let Some(key) = key {
                    self.ids.locked().by_key.entry(key).or_insert(id);
                }
            }
        }
        id
    }

    pub fn forget(&self, id: u64, k: u64) {
        if id == VIEW_ROOT {
            return;
        }
        let mut n = self.nodes.write_locked();
        if let Some(v) = n.get(&id) {
            let prev = v.nlookup.fetch_sub(k.min(v.nlookup.load(Ordering::SeqCst)), Ordering::SeqCst);
            if prev <= k {
                if let Some(key) = v.key {
                    let mut ids = self.ids.locked();
                    if ids.by_key.get(&key) == Some(&id) {
                        ids.by_key.remove(&key);
                    }
                }
                n.remove(&id);
            }
        }
    }

    /// Nodes held (for memory bounds in status and tests).
    pub fn node_count(&self) -> usize {
        self.nodes.read_locked().len()
    }

    fn root_attr(&self) -> FileAttr {
        let now = SystemTime::now();
        FileAttr {
            ino: fuser::INodeNo(VIEW_ROOT),
            size: 0,
            blocks: 0,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            kind: FileType::Directory,
            perm: 0o555,
            nlink: 2,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    /// `st_blocks` of an entry: as recorded, or (format 1) counted.
    fn blocks_of(&self, id: u64, e: &Entry) -> u64 {
        if let Some(b) = e.blocks {
            return b;
        }
        match e.kind {
            EntryKind::Dir => 8,
            EntryKind::File => {
                let key = (e.content, e.size);
                if let Some(b) = self.counted.locked().get(&key) {
                    return *b;
                }
                match self.count_stored(e) {
                    Ok(b) => {
                        self.counted.locked().put(key, b);
                        b
                    }
                    Err(err) => {
                        log::error!("READ FAILED: {}: {err}", self.describe(id));
                        e.size.div_ceil(512)
                    }
                }
            }
            _ => e.size.div_ceil(512),
        }
    }

    /// 512-byte units the stored (non-hole) blocks of a file take.
    fn count_stored(&self, e: &Entry) -> Result<u64, ObjError> {
        let bs = self.bs;
        let mut units = 0u64;
        self.scan(e, 0, &mut |b, count, hole| {
            if !hole {
                let len = bs.min(e.size.saturating_sub(b * bs));
                units += count.saturating_sub(1) * (bs / 512) + len.div_ceil(512);
            }
            false
        })?;
        Ok(units)
    }

    fn attr(&self, id: u64, e: &Entry) -> FileAttr {
        let size = if e.kind == EntryKind::Dir { 4096 } else { e.size };
        FileAttr {
            ino: fuser::INodeNo(id),
            size,
            blocks: self.blocks_of(id, e),
            atime: systime(e.atime),
            mtime: systime(e.mtime),
            ctime: systime(e.ctime),
            crtime: systime(e.mtime),
            kind: file_type(e.kind),
            perm: (e.mode & 0o7777) as u16,
            nlink: e.nlink.max(1),
            uid: e.uid,
            gid: e.gid,
            rdev: e.rdev as u32,
            blksize: self.bs as u32,
            flags: 0,
        }
    }

    fn tree(&self, id: &TreeId) -> SysResult<Arc<Tree>> {
        if let Some(t) = self.trees.locked().0.get(id) {
            return Ok(t.clone());
        }
        let t = Arc::new(self.objects.tree_healing(id).map_err(|e| {
            log::error!("snapshot tree {id}: {e}");
            e.to_errno()
        })?);
        let mut c = self.trees.locked();
        let (cache, bytes) = &mut *c;
        if let Some((_, old)) = cache.push(*id, t.clone()) {
            *bytes -= tree_bytes(&old);
        }
        *bytes += tree_bytes(&t);
        // a few huge directories must not hold gigabytes
        while *bytes > TREE_CACHE_BYTES && cache.len() > 1 {
            match cache.pop_lru() {
                Some((_, old)) => *bytes -= tree_bytes(&old),
                None => break,
            }
        }
        Ok(t)
    }

    /// The tree of directory node `v` (EIO for a damaged snapshot, or a
    /// directory whose tree is shaped as a snapshot's top tree).
    fn dir_tree(&self, v: &VNode) -> SysResult<Arc<Tree>> {
        let Some(id) = v.entry.subtree() else {
            return Err(Errno::ENOTDIR);
        };
        self.check_snap(v.snap)?;
        let t = self.tree(&id)?;
        if t.is_top() {
            log::error!("snapshot tree {}: a directory shaped as a snapshot's top tree", v.entry.content);
            return Err(Errno::EIO);
        }
        Ok(t)
    }

    fn info(&self, idx: u32) -> SysResult<SnapshotInfo> {
        let s = self.snaps.read_locked();
        s.by_index.get(idx as usize).and_then(|x| x.clone()).ok_or(Errno::ENOENT)
    }

    /// EIO if snapshot `idx` has a damaged record.
    fn check_snap(&self, idx: u32) -> SysResult<()> {
        let info = self.info(idx)?;
        match &info.damaged {
            Some(problem) => {
                log::error!("READ FAILED: snapshot record {} ({}) is damaged: {problem}", info.id, info.record.name);
                Err(Errno::EIO)
            }
            None => Ok(()),
        }
    }

    /// The root entry of snapshot `idx` (for a damaged record, an empty
    /// folder that answers EIO).
    fn snap_root(&self, idx: u32) -> SysResult<Entry> {
        let info = self.info(idx)?;
        let root = if info.damaged.is_some() {
            let t = Time { sec: info.record.time_sec, nsec: 0 };
            Entry {
                name: b".".to_vec(),
                kind: EntryKind::Dir,
                mode: 0o555,
                uid: 0,
                gid: 0,
                size: 0,
                mtime: t,
                atime: t,
                ctime: t,
                ino: 0,
                dev: None,
                nlink: 2,
                rdev: 0,
                blocks: Some(0),
                content: ObjectId::ZERO,
                levels: 0,
                target: Vec::new(),
                xattrs: Vec::new(),
                totals: Default::default(),
            }
        } else {
            let top = info.root_tree().map_err(|_| Errno::EIO)?;
            let t = self.tree(&top)?;
            if !t.is_top() {
                log::error!("snapshot {}: its top tree {top} is not one", info.record.name);
                return Err(Errno::EIO);
            }
            t.entries[0].clone()
        };
        self.snaps.write_locked().root_dev.insert(idx, root.dev);
        Ok(root)
    }

    pub fn getattr(&self, id: u64) -> SysResult<FileAttr> {
        if id == VIEW_ROOT {
            return Ok(self.root_attr());
        }
        let v = self.node(id)?;
        Ok(self.attr(id, &v.entry))
    }

    pub fn lookup(&self, parent: u64, name: &OsStr) -> SysResult<FileAttr> {
        if parent == VIEW_ROOT {
            let find = || self.snaps.read_locked().by_name.get(&*name.to_string_lossy()).copied();
            self.refresh(false);
            let idx = match find() {
                Some(i) => i,
                None => {
                    // a snapshot taken since the last look
                    self.refresh(true);
                    find().ok_or(Errno::ENOENT)?
                }
            };
            let root = self.snap_root(idx)?;
            let id = self.remember(idx, &root, VIEW_ROOT);
            return Ok(self.attr(id, &root));
        }
        let p = self.node(parent)?;
        let t = self.dir_tree(&p)?;
        let e = t.get(name.as_bytes()).ok_or(Errno::ENOENT)?.clone();
        let id = self.remember(p.snap, &e, parent);
        Ok(self.attr(id, &e))
    }

    /// Entries of a directory from `offset`: `add(node id, next offset, kind,
    /// name)` returns true when full. Offsets: 1 ".", 2 "..", then 3 + index.
    pub fn readdir(
        &self,
        id: u64,
        offset: i64,
        mut add: impl FnMut(u64, i64, FileType, &OsStr) -> bool,
    ) -> SysResult<()> {
        let mut entries: Vec<(u64, FileType, Vec<u8>)> = Vec::new();
        if id == VIEW_ROOT {
            for (idx, name) in self.snapshot_names() {
                let node =
                    self.snap_root(idx).map(|e| self.node_id(idx, &e).0).unwrap_or(VIEW_BIT | (idx as u64) << 40);
                entries.push((node, FileType::Directory, name.into_bytes()));
            }
        } else {
            let v = self.node(id)?;
            let t = self.dir_tree(&v)?;
            for e in &t.entries {
                entries.push((self.node_id(v.snap, e).0, file_type(e.kind), e.name.clone()));
            }
        }
        let mut i = offset;
        if i < 1 && add(id, 1, FileType::Directory, OsStr::new(".")) {
            return Ok(());
        }
        if i < 2 {
            i = 2;
            if add(id, 2, FileType::Directory, OsStr::new("..")) {
                return Ok(());
            }
        }
        for (k, (node, kind, name)) in entries.iter().enumerate().skip((i - 2).max(0) as usize) {
            if add(*node, 3 + k as i64, *kind, OsStr::from_bytes(name)) {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Where a node is, for messages: "snapshot NAME, path a/b/c".
    fn describe(&self, id: u64) -> String {
        let mut parts = Vec::new();
        let mut cur = id;
        let mut snap = 0;
        // (any depth: a chain longer than the nodes held is a loop)
        for _ in 0..=self.node_count() {
            let Ok(v) = self.node(cur) else { break };
            snap = v.snap;
            if v.parent == VIEW_ROOT {
                break;
            }
            parts.push(String::from_utf8_lossy(&v.entry.name).into_owned());
            cur = v.parent;
        }
        parts.reverse();
        format!(
            "snapshot {}, file {}",
            self.snap_name(snap),
            if parts.is_empty() { ".".into() } else { crate::util::show_path(parts.join("/").as_bytes()) }
        )
    }

    fn file_node(&self, id: &ObjectId, level: u8) -> Result<Arc<FileNode>, ObjError> {
        let n = self.fnodes.locked().get(id).cloned();
        let n = match n {
            Some(n) => n,
            None => {
                let n = Arc::new(self.objects.node_healing(id)?);
                self.fnodes.locked().put(*id, n.clone());
                n
            }
        };
        if n.level != level {
            return Err(shape(*id, "block list (a node at the wrong level)"));
        }
        Ok(n)
    }

    /// The blob id of block `b` of a file (checked: `check_blocks`).
    fn block_id(&self, e: &Entry, b: u64) -> Result<ObjectId, ObjError> {
        if e.content.is_zero() {
            return Ok(ObjectId::ZERO);
        }
        let mut id = e.content;
        let mut level = e.levels;
        loop {
            if self.objects.is_hole(&id, level) {
                return Ok(ObjectId::ZERO);
            }
            let n = self.file_node(&id, level)?;
            let span = if level == 0 { 1 } else { objects::node_span(level - 1) };
            let k = ((b % objects::node_span(level)) / span) as usize;
            let next = n.entries.get(k).copied().unwrap_or(ObjectId::ZERO);
            if level == 0 || next.is_zero() {
                return Ok(next);
            }
            id = next;
            level -= 1;
        }
    }

    /// Walk the block list of `e` from block `from` in order: `f(first,
    /// count, hole)` for each stored block and each run of holes (a whole
    /// node of holes is one run, not read); `f` returns true to stop.
    fn scan(&self, e: &Entry, from: u64, f: &mut dyn FnMut(u64, u64, bool) -> bool) -> Result<(), ObjError> {
        let n = e.block_count(self.bs);
        e.check_blocks(self.bs).map_err(|err| ObjError::Decode { id: e.content, err })?;
        if from >= n {
            return Ok(());
        }
        if e.content.is_zero() {
            f(from, n - from, true);
            return Ok(());
        }
        let mut end = 0;
        if !self.scan_node(e.content, e.levels, 0, n, from, &mut end, f)? && end < n {
            // a list shorter than the size: the rest reads as zeros
            let s = end.max(from);
            f(s, n - s, true);
        }
        Ok(())
    }

    /// [`Self::scan`] below node `id` at `level` covering blocks from `start`
    /// (of `n` in the file); `end`: where the list covered so far ends.
    /// Returns whether `f` stopped.
    #[allow(clippy::too_many_arguments)]
    fn scan_node(
        &self,
        id: ObjectId,
        level: u8,
        start: u64,
        n: u64,
        from: u64,
        end: &mut u64,
        f: &mut dyn FnMut(u64, u64, bool) -> bool,
    ) -> Result<bool, ObjError> {
        if start >= n {
            return Err(shape(id, "block list (more blocks than its size)"));
        }
        let span = objects::node_span(level).min(n - start);
        if start + span <= from {
            *end = start + span;
            return Ok(false);
        }
        if self.objects.is_hole(&id, level) {
            let s = start.max(from);
            *end = start + span;
            return Ok(f(s, start + span - s, true));
        }
        let node = self.file_node(&id, level)?;
        if level == 0 {
            for (k, b) in node.entries.iter().enumerate() {
                let blk = start + k as u64;
                if blk >= n {
                    return Err(shape(id, "block list (more blocks than its size)"));
                }
                *end = blk + 1;
                if blk >= from && f(blk, 1, b.is_zero()) {
                    return Ok(true);
                }
            }
        } else {
            let cspan = objects::node_span(level - 1);
            for (k, c) in node.entries.iter().enumerate() {
                if self.scan_node(*c, level - 1, start + k as u64 * cspan, n, from, end, f)? {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// `lseek(SEEK_DATA | SEEK_HOLE)` in a file of the snapshot: the holes
    /// are those its block list holds (zero ids); the end is a hole.
    pub fn lseek(&self, id: u64, offset: i64, whence: i32) -> SysResult<i64> {
        let v = self.node(id)?;
        let e = &v.entry;
        if whence != libc::SEEK_DATA && whence != libc::SEEK_HOLE {
            return Err(Errno::EINVAL);
        }
        if offset < 0 {
            return Err(Errno(libc::ENXIO));
        }
        let size = e.size as i64;
        if e.kind != EntryKind::File {
            // a directory or other: all data, as for filesystems without holes
            return if offset >= size {
                Err(Errno(libc::ENXIO))
            } else if whence == libc::SEEK_DATA {
                Ok(offset)
            } else {
                Ok(size)
            };
        }
        if offset >= size {
            return Err(Errno(libc::ENXIO));
        }
        let want_hole = whence == libc::SEEK_HOLE;
        let mut found = None;
        self.scan(e, offset as u64 / self.bs, &mut |b, _, hole| {
            if hole == want_hole {
                found = Some(b);
                return true;
            }
            false
        })
        .map_err(|err| {
            log::error!("READ FAILED: {}: {err}", self.describe(id));
            err.to_errno()
        })?;
        match found {
            Some(b) => Ok(((b * self.bs) as i64).clamp(offset, size)),
            None if want_hole => Ok(size),
            None => Err(Errno(libc::ENXIO)),
        }
    }

    fn block(&self, id: &ObjectId) -> Result<Arc<Vec<u8>>, ObjError> {
        if let Some(b) = self.blocks.locked().get(id) {
            return Ok(b.clone());
        }
        let b = Arc::new(self.objects.get_healing(id, ObjKind::Blob)?);
        self.blocks.locked().put(*id, b.clone());
        Ok(b)
    }

    pub fn read(&self, id: u64, off: u64, size: u32) -> SysResult<Vec<u8>> {
        let v = self.node(id)?;
        let e = &v.entry;
        if e.kind != EntryKind::File {
            return Err(Errno::EISDIR);
        }
        if off >= e.size {
            return Ok(Vec::new());
        }
        let fail = |err: ObjError| {
            // (the error decides: damage is EIO, contents a write-only key
            // cannot open EACCES)
            let errno = crate::os::errno::ToErrno::to_errno(&err);
            if errno == Errno(libc::EACCES) {
                log::debug!("read of {}: {err}", self.describe(id));
            } else {
                log::error!("READ FAILED: {}: {err}", self.describe(id));
            }
            errno
        };
        e.check_blocks(self.bs).map_err(|err| fail(ObjError::Decode { id: e.content, err }))?;
        let end = off.saturating_add(size as u64).min(e.size);
        let mut out = Vec::with_capacity((end - off) as usize);
        let mut pos = off;
        while pos < end {
            let b = pos / self.bs;
            let in_block = (pos % self.bs) as usize;
            let take = ((self.bs - in_block as u64).min(end - pos)) as usize;
            let bid = self.block_id(e, b).map_err(fail)?;
            if bid.is_zero() {
                out.resize(out.len() + take, 0);
            } else {
                let data = self.block(&bid).map_err(fail)?;
                // every block is whole but the last, which ends at the size
                if data.len() as u64 != self.bs.min(e.size - b * self.bs) {
                    return Err(fail(shape(bid, "blob (not the length its place in the file needs)")));
                }
                out.extend_from_slice(&data[in_block..in_block + take]);
            }
            pos += take as u64;
        }
        Ok(out)
    }

    pub fn readlink(&self, id: u64) -> SysResult<Vec<u8>> {
        let v = self.node(id)?;
        if v.entry.kind != EntryKind::Symlink {
            return Err(Errno::EINVAL);
        }
        Ok(v.entry.target.clone())
    }

    /// `size == 0` asks for the size only.
    pub fn getxattr(&self, id: u64, name: &OsStr, size: u32) -> SysResult<Vec<u8>> {
        if id == VIEW_ROOT {
            return Err(Errno::ENODATA);
        }
        let v = self.node(id)?;
        let val = v.entry.xattrs.iter().find(|(k, _)| k.as_slice() == name.as_bytes()).map(|(_, v)| v.clone());
        let val = val.ok_or(Errno::ENODATA)?;
        if size == 0 {
            return Ok((val.len() as u32).to_ne_bytes().to_vec());
        }
        if val.len() > size as usize {
            return Err(Errno::ERANGE);
        }
        Ok(val)
    }

    pub fn listxattr(&self, id: u64, size: u32) -> SysResult<Vec<u8>> {
        let mut list = Vec::new();
        if id != VIEW_ROOT {
            let v = self.node(id)?;
            for (k, _) in &v.entry.xattrs {
                list.extend_from_slice(k);
                list.push(0);
            }
        }
        if size == 0 {
            return Ok((list.len() as u32).to_ne_bytes().to_vec());
        }
        if list.len() > size as usize {
            return Err(Errno::ERANGE);
        }
        Ok(list)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::objects::Totals;
    use crate::repo::store::{LocalStore, Store};
    use crate::snapshot::{SnapshotRecord, SnapshotStats};

    const BS: u64 = 4096;

    fn entry(name: &str, kind: EntryKind, ino: u64, dev: Option<u64>) -> Entry {
        let t = Time { sec: 1_700_000_000, nsec: 5 };
        Entry {
            name: name.as_bytes().to_vec(),
            kind,
            mode: 0o755,
            uid: 0,
            gid: 0,
            size: 0,
            mtime: t,
            atime: t,
            ctime: t,
            ino,
            dev,
            nlink: 1,
            rdev: 0,
            blocks: None,
            content: ObjectId::ZERO,
            levels: 0,
            target: Vec::new(),
            xattrs: Vec::new(),
            totals: Totals::default(),
        }
    }

    /// A file entry holding `blocks` (None: a hole) in a block list.
    fn file(o: &Objects, name: &str, ino: u64, dev: Option<u64>, blocks: &[Option<&[u8]>], size: u64) -> Entry {
        let mut e = entry(name, EntryKind::File, ino, dev);
        e.size = size;
        let ids: Vec<ObjectId> =
            blocks.iter().map(|b| b.map_or(ObjectId::ZERO, |b| o.put(ObjKind::Blob, b).unwrap().0)).collect();
        let n = ids.len() as u64;
        let (root, levels) = crate::snapshot::build_block_list(o, n, None, &[(0, n)], |b| Ok(ids[b as usize])).unwrap();
        e.content = root;
        e.levels = levels;
        e
    }

    /// A repository with one snapshot `s` whose root holds `entries`, its
    /// trees encoded by `enc`; and a view of it.
    fn repo(
        make: impl FnOnce(&Objects) -> Vec<Entry>,
        enc: fn(&Tree) -> Vec<u8>,
        bs: u64,
    ) -> (tempfile::TempDir, Arc<Objects>, View) {
        let t = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(LocalStore::new(t.path()));
        let o = Arc::new(Objects::open(store.clone(), None).unwrap());
        let mut entries = make(&o);
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        let (dir, _) = o.put(ObjKind::Tree, &enc(&Tree { entries })).unwrap();
        let mut root = entry(".", EntryKind::Dir, 2, Some(1));
        root.content = dir;
        let (top, _) = o.put(ObjKind::Tree, &enc(&Tree { entries: vec![root] })).unwrap();
        let top = TreeId::from_dir(top);
        let (links, _) = o.put(ObjKind::Meta, &objects::encode_links(&Default::default())).unwrap();
        o.flush().unwrap();
        let rec = SnapshotRecord {
            format: 1,
            name: "s".into(),
            time: "2026-01-01T00:00:00Z".into(),
            time_sec: 1,
            time_nsec: 0,
            tree: top,
            links,
            parent: None,
            full: true,
            source: String::new(),
            host: String::new(),
            block_size: bs,
            stats: SnapshotStats::default(),
        };
        snapshot::commit(&*store, &rec).unwrap();
        let v = View::new(o.clone(), BS, None);
        (t, o, v)
    }

    fn look(v: &View, path: &str) -> SysResult<FileAttr> {
        let mut cur = VIEW_ROOT;
        let mut a = v.getattr(VIEW_ROOT)?;
        for part in std::iter::once("s").chain(path.split('/').filter(|p| !p.is_empty())) {
            a = v.lookup(cur, OsStr::new(part))?;
            cur = a.ino.0;
        }
        Ok(a)
    }

    #[test]
    fn inodes_are_told_apart_by_device_and_all_64_bits() {
        let big = (1u64 << 40) + 7;
        let (_t, _o, v) = repo(
            |o| {
                vec![
                    file(o, "a", 7, Some(1), &[Some(b"on device 1")], 11),
                    file(o, "b", 7, Some(2), &[Some(b"on device 2")], 11),
                    file(o, "c", big, Some(1), &[Some(b"a large inode number")], 20),
                    file(o, "d", 7, Some(1), &[Some(b"on device 1")], 11), // a hard link of a
                ]
            },
            Tree::encode,
            BS,
        );
        let ids: Vec<u64> = ["a", "b", "c", "d"].iter().map(|n| look(&v, n).unwrap().ino.0).collect();
        assert_eq!(ids[0], ids[3], "hard links share a node");
        assert!(ids[0] != ids[1] && ids[0] != ids[2] && ids[1] != ids[2], "{ids:x?}");
        assert_eq!(ids[0] & INO_MASK, 7, "the root's device shows the backing number");
        assert_eq!(v.read(ids[1], 0, 100).unwrap(), b"on device 2");
        assert_eq!(v.read(ids[2], 0, 100).unwrap(), b"a large inode number");
        // readdir gives the same ids
        let root = look(&v, "").unwrap().ino.0;
        let mut listed = HashMap::new();
        v.readdir(root, 0, |node, _, _, name| {
            listed.insert(name.to_string_lossy().into_owned(), node);
            false
        })
        .unwrap();
        assert_eq!(listed["b"], ids[1]);
        assert_eq!(listed["c"], ids[2]);
        // forgotten and looked up again: still right
        v.forget(ids[1], 1);
        assert_eq!(v.read(look(&v, "b").unwrap().ino.0, 0, 100).unwrap(), b"on device 2");
    }

    #[test]
    fn holes_blocks_and_lseek() {
        let data = vec![7u8; BS as usize];
        let mut blocks: Vec<Option<&[u8]>> = vec![None; 3 * 256 + 10];
        blocks[300] = Some(&data);
        blocks[301] = Some(&data);
        blocks[3 * 256 + 9] = Some(&data[..100]);
        let size = (3 * 256 + 9) * BS + 100;
        for (enc, v1) in [(Tree::encode as fn(&Tree) -> Vec<u8>, false), (objects::encode_v1, true)] {
            let (_t, _o, v) = repo(
                |o| {
                    let mut f = file(o, "f", 9, Some(1), &blocks, size);
                    f.blocks = Some(40); // as stat showed it (format 2 only)
                    vec![f, file(o, "holes", 10, Some(1), &vec![None; 70_000], 70_000 * BS)]
                },
                enc,
                BS,
            );
            let a = look(&v, "f").unwrap();
            // format 1: counted from the block list: 2 full blocks and 100 bytes
            assert_eq!(a.blocks, if v1 { 2 * 8 + 1 } else { 40 });
            let id = a.ino.0;
            let d = 300 * BS as i64;
            assert_eq!(v.lseek(id, 0, libc::SEEK_DATA), Ok(d));
            assert_eq!(v.lseek(id, 0, libc::SEEK_HOLE), Ok(0));
            assert_eq!(v.lseek(id, d + 1, libc::SEEK_HOLE), Ok(d + 2 * BS as i64));
            assert_eq!(v.lseek(id, d + 2 * BS as i64, libc::SEEK_DATA), Ok((3 * 256 + 9) * BS as i64));
            assert_eq!(v.lseek(id, (3 * 256 + 9) * BS as i64, libc::SEEK_HOLE), Ok(size as i64));
            assert_eq!(v.lseek(id, size as i64, libc::SEEK_DATA), Err(Errno(libc::ENXIO)));
            assert_eq!(v.read(id, d as u64 - 2, 4).unwrap(), vec![0, 0, 7, 7]);
            // a file all holes: skipped by id, no node read past the first level
            let h = look(&v, "holes").unwrap();
            assert_eq!(h.blocks, 0);
            assert_eq!(v.lseek(h.ino.0, 5, libc::SEEK_DATA), Err(Errno(libc::ENXIO)));
            assert_eq!(v.lseek(h.ino.0, 5, libc::SEEK_HOLE), Ok(5));
        }
    }

    #[test]
    fn hostile_block_lists_and_records_give_eio() {
        // levels = 7 (node_span overflowed: a division by zero) and a node of level 7
        let (_t, _o, v) = repo(
            |o| {
                let (blob, _) = o.put(ObjKind::Blob, b"x").unwrap();
                let (leaf, _) = o.put(ObjKind::FileNode, &FileNode { level: 0, entries: vec![blob] }.encode()).unwrap();
                let (n7, _) = o.put(ObjKind::FileNode, &FileNode { level: 7, entries: vec![leaf] }.encode()).unwrap();
                let (n1, _) = o.put(ObjKind::FileNode, &FileNode { level: 1, entries: vec![leaf] }.encode()).unwrap();
                let mut a = file(o, "node7", 3, Some(1), &[], 1);
                a.content = n7;
                let mut b = file(o, "wrong_level", 4, Some(1), &[], 1);
                b.content = n1; // a level-1 node where level 0 belongs
                let mut c = file(o, "too_big", 5, Some(1), &[], 1 << 40);
                c.content = leaf; // levels 0 for 2^28 blocks
                vec![a, b, c]
            },
            Tree::encode,
            BS,
        );
        for n in ["node7", "wrong_level", "too_big"] {
            let id = look(&v, n).unwrap().ino.0;
            assert_eq!(v.read(id, 0, 10), Err(Errno::EIO), "{n}");
            assert_eq!(v.lseek(id, 0, libc::SEEK_DATA), Err(Errno::EIO), "{n}");
            assert_eq!(v.lseek(id, 0, libc::SEEK_HOLE), Err(Errno::EIO), "{n}");
        }
        // an entry with levels 7: its tree does not decode
        let (_t, _o, v) = repo(
            |o| {
                let mut e = file(o, "levels7", 3, Some(1), &[Some(b"x")], 1);
                e.levels = 7;
                vec![e]
            },
            Tree::encode,
            BS,
        );
        assert_eq!(look(&v, "levels7").unwrap_err(), Errno::EIO);
        // a record whose block size is 2^50, or not the repository's
        for bs in [1 << 50, 2 * BS] {
            let (_t, _o, v) = repo(|o| vec![file(o, "f", 3, Some(1), &[Some(b"x")], 1)], Tree::encode, bs);
            let root = look(&v, "").expect("the damaged snapshot is there");
            assert_eq!(v.lookup(root.ino.0, OsStr::new("f")).unwrap_err(), Errno::EIO);
            assert_eq!(v.readdir(root.ino.0, 0, |_, _, _, _| false).unwrap_err(), Errno::EIO);
        }
    }
}
