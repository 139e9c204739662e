//! The read-only view of snapshots: what `DIR/.snapshots/` and a `browse`
//! mount show. A plain API over the repository, driven by the FUSE adapter.
//!
//! # Node ids
//! Every view node has bit 63 set, so it never collides with a live node
//! (backing inode numbers). `VIEW_ROOT` is the folder of snapshots. A
//! snapshot gets an index (1, 2, ...) the first time the view sees it, fixed
//! for the life of the view; a node inside it is `bit 63 | index << 40 |
//! backing inode number`, so hard links in a snapshot share a node (and
//! `cp -a` out of it keeps them) and ids are stable for the mount's life.
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

use crate::errno::{Errno, SysResult};
use crate::objects::{self, Entry, EntryKind, FileNode, ObjKind, ObjectId, Time, Tree};
use crate::objstore::Objects;
use crate::snapshot::{self, SnapshotInfo};

pub const VIEW_BIT: u64 = 1 << 63;
/// The folder of snapshots.
pub const VIEW_ROOT: u64 = VIEW_BIT | 1;
const INO_MASK: u64 = (1 << 40) - 1;

pub fn is_view(node: u64) -> bool {
    node & VIEW_BIT != 0
}

/// One node the kernel knows.
struct VNode {
    snap: u32,
    entry: Entry,
    /// Node id of the directory it was found in, for paths in messages.
    parent: u64,
    nlookup: AtomicU64,
}

struct Snaps {
    /// index -> snapshot (index 0 unused)
    by_index: Vec<Option<SnapshotInfo>>,
    by_name: HashMap<String, u32>,
    by_id: HashMap<String, u32>,
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
    /// Trees, with the bytes they hold in all (bounded by TREE_CACHE_BYTES too).
    trees: Mutex<(lru::LruCache<ObjectId, Arc<Tree>>, usize)>,
    fnodes: Mutex<lru::LruCache<ObjectId, Arc<FileNode>>>,
    blocks: Mutex<lru::LruCache<ObjectId, Arc<Vec<u8>>>>,
    ttl: Duration,
    refreshed: Mutex<Option<std::time::Instant>>,
}

fn cap(n: usize) -> std::num::NonZeroUsize {
    std::num::NonZeroUsize::new(n).expect("non-zero")
}

fn systime(t: Time) -> SystemTime {
    crate::sys::time_from(t.sec, t.nsec as i64)
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
            snaps: RwLock::new(Snaps { by_index: vec![None], by_name: HashMap::new(), by_id: HashMap::new() }),
            only,
            trees: Mutex::new((lru::LruCache::new(cap(TREE_CACHE)), 0)),
            fnodes: Mutex::new(lru::LruCache::new(cap(NODE_CACHE))),
            blocks: Mutex::new(lru::LruCache::new(cap((BLOCK_CACHE_BYTES / bs.max(1)).max(16) as usize))),
            ttl: Duration::from_secs(60),
            refreshed: Mutex::new(None),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Learn of new snapshots: at most every 200 ms unless `force`.
    fn refresh(&self, force: bool) {
        {
            let mut r = self.refreshed.lock().unwrap_or_else(|e| e.into_inner());
            if !force && r.is_some_and(|t| t.elapsed() < Duration::from_millis(200)) {
                return;
            }
            *r = Some(std::time::Instant::now());
        }
        let all = match snapshot::list(&**self.objects.store()) {
            Ok(a) => a,
            Err(e) => {
                log::error!("listing snapshots: {e}");
                return;
            }
        };
        let mut s = self.snaps.write().unwrap_or_else(|e| e.into_inner());
        if all.iter().any(|i| !s.by_id.contains_key(&i.id)) {
            // packs written since we last looked (a daemon snapshotting into
            // this repository while it is browsed)
            if let Err(e) = self.objects.index_new_packs() {
                log::error!("indexing new packs: {e}");
            }
        }
        // forgotten snapshots leave the folder
        let present: std::collections::HashSet<&str> = all.iter().map(|i| i.id.as_str()).collect();
        let gone: Vec<(String, u32)> =
            s.by_id.iter().filter(|(id, _)| !present.contains(id.as_str())).map(|(id, i)| (id.clone(), *i)).collect();
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
        for info in all {
            if self.only.as_ref().is_some_and(|o| *o != info.record.name && *o != info.id) {
                continue;
            }
            if s.by_id.contains_key(&info.id) {
                continue;
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
        let s = self.snaps.read().unwrap_or_else(|e| e.into_inner());
        s.by_index
            .iter()
            .enumerate()
            .filter_map(|(i, x)| x.as_ref().map(|x| (i as u32, x.record.name.clone())))
            .collect()
    }

    fn snap_name(&self, idx: u32) -> String {
        let s = self.snaps.read().unwrap_or_else(|e| e.into_inner());
        s.by_index.get(idx as usize).and_then(|x| x.as_ref()).map(|x| x.record.name.clone()).unwrap_or_default()
    }

    fn node(&self, id: u64) -> SysResult<Arc<VNode>> {
        self.nodes.read().unwrap_or_else(|e| e.into_inner()).get(&id).cloned().ok_or(Errno::ENOENT)
    }

    fn node_id(snap: u32, ino: u64) -> u64 {
        VIEW_BIT | ((snap as u64) << 40) | (ino & INO_MASK)
    }

    /// Register a node the kernel learns of (lookup count +1).
    fn remember(&self, snap: u32, entry: &Entry, parent: u64) -> u64 {
        let id = Self::node_id(snap, entry.ino);
        let mut n = self.nodes.write().unwrap_or_else(|e| e.into_inner());
        match n.get(&id) {
            Some(v) => {
                v.nlookup.fetch_add(1, Ordering::SeqCst);
            }
            None => {
                n.insert(id, Arc::new(VNode { snap, entry: entry.clone(), parent, nlookup: AtomicU64::new(1) }));
            }
        }
        id
    }

    pub fn forget(&self, id: u64, k: u64) {
        if id == VIEW_ROOT {
            return;
        }
        let mut n = self.nodes.write().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = n.get(&id) {
            let prev = v.nlookup.fetch_sub(k.min(v.nlookup.load(Ordering::SeqCst)), Ordering::SeqCst);
            if prev <= k {
                n.remove(&id);
            }
        }
    }

    /// Nodes held (for memory bounds in status and tests).
    pub fn node_count(&self) -> usize {
        self.nodes.read().unwrap_or_else(|e| e.into_inner()).len()
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

    fn attr(&self, id: u64, e: &Entry) -> FileAttr {
        let size = if e.kind == EntryKind::Dir { 4096 } else { e.size };
        FileAttr {
            ino: fuser::INodeNo(id),
            size,
            blocks: size.div_ceil(512),
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

    fn tree(&self, id: &ObjectId) -> SysResult<Arc<Tree>> {
        if let Some(t) = self.trees.lock().unwrap_or_else(|e| e.into_inner()).0.get(id) {
            return Ok(t.clone());
        }
        let t = Arc::new(self.objects.tree(id).map_err(|e| {
            log::error!("snapshot tree {id}: {e}");
            Errno::EIO
        })?);
        let mut c = self.trees.lock().unwrap_or_else(|e| e.into_inner());
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

    /// The root entry of snapshot `idx`.
    fn snap_root(&self, idx: u32) -> SysResult<Entry> {
        let info = {
            let s = self.snaps.read().unwrap_or_else(|e| e.into_inner());
            s.by_index.get(idx as usize).and_then(|x| x.clone()).ok_or(Errno::ENOENT)?
        };
        let top = info.root_tree().map_err(|_| Errno::EIO)?;
        let t = self.tree(&top)?;
        t.get(b".").cloned().ok_or(Errno::EIO)
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
            let find =
                || self.snaps.read().unwrap_or_else(|e| e.into_inner()).by_name.get(&*name.to_string_lossy()).copied();
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
        if p.entry.kind != EntryKind::Dir {
            return Err(Errno::ENOTDIR);
        }
        let t = self.tree(&p.entry.content)?;
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
                let root_ino = self.snap_root(idx).map(|e| e.ino).unwrap_or(0);
                entries.push((Self::node_id(idx, root_ino), FileType::Directory, name.into_bytes()));
            }
        } else {
            let v = self.node(id)?;
            if v.entry.kind != EntryKind::Dir {
                return Err(Errno::ENOTDIR);
            }
            let t = self.tree(&v.entry.content)?;
            for e in &t.entries {
                entries.push((Self::node_id(v.snap, e.ino), file_type(e.kind), e.name.clone()));
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

    fn file_node(&self, id: &ObjectId) -> Result<Arc<FileNode>, crate::objstore::ObjError> {
        if let Some(n) = self.fnodes.lock().unwrap_or_else(|e| e.into_inner()).get(id) {
            return Ok(n.clone());
        }
        let n = Arc::new(self.objects.node(id)?);
        self.fnodes.lock().unwrap_or_else(|e| e.into_inner()).put(*id, n.clone());
        Ok(n)
    }

    /// The blob id of block `b` of a file.
    fn block_id(&self, e: &Entry, b: u64) -> Result<ObjectId, crate::objstore::ObjError> {
        if e.content.is_zero() {
            return Ok(ObjectId::ZERO);
        }
        let mut id = e.content;
        let mut level = e.levels;
        loop {
            let n = self.file_node(&id)?;
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

    fn block(&self, id: &ObjectId) -> Result<Arc<Vec<u8>>, crate::objstore::ObjError> {
        if let Some(b) = self.blocks.lock().unwrap_or_else(|e| e.into_inner()).get(id) {
            return Ok(b.clone());
        }
        let b = Arc::new(self.objects.get(id, ObjKind::Blob)?);
        self.blocks.lock().unwrap_or_else(|e| e.into_inner()).put(*id, b.clone());
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
        let end = (off + size as u64).min(e.size);
        let mut out = Vec::with_capacity((end - off) as usize);
        let mut pos = off;
        while pos < end {
            let b = pos / self.bs;
            let in_block = (pos % self.bs) as usize;
            let take = ((self.bs - in_block as u64).min(end - pos)) as usize;
            let fail = |err: crate::objstore::ObjError| {
                log::error!("READ FAILED: {}: {err}", self.describe(id));
                Errno::EIO
            };
            let bid = self.block_id(e, b).map_err(fail)?;
            if bid.is_zero() {
                out.resize(out.len() + take, 0);
            } else {
                let data = self.block(&bid).map_err(fail)?;
                let avail = data.len().saturating_sub(in_block).min(take);
                out.extend_from_slice(&data[in_block..in_block + avail]);
                out.resize(out.len() + (take - avail), 0);
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
