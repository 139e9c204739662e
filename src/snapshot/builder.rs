//! The snapshot walk (`Builder`): from the root, into the directories that
//! hold a change (or all of them for a full snapshot), reading only dirty
//! blocks, and everything else taken from the previous snapshot by id;
//! the hard-link table beside it.

use super::*;
use crate::os::errno::Errno;
use crate::os::sys;
use crate::repo::objects::{self, Entry, EntryKind, ObjKind, ObjectId, Time, Totals, Tree, TreeId};
use crate::repo::objstore::Objects;
use crate::snapshot::capture::Capture;
use crate::tracker::Record;
use crate::util;
use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

// ---------------------------------------------------------------------------
// link tables

pub use crate::repo::objects::{encode_links, LinkTable};

/// A link table, or `None` if its bytes are malformed (see
/// [`objects::decode_links`]).
pub fn decode_links(b: &[u8]) -> Option<LinkTable> {
    objects::decode_links(b).ok()
}

fn parent_of(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|b| *b == b'/') {
        Some(i) => &path[..i],
        None => b"",
    }
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
        dev: Some(st.st_dev),
        nlink: st.st_nlink as u32,
        rdev: st.st_rdev,
        blocks: Some(st.st_blocks as u64),
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
    /// The shortcuts of an incremental snapshot.
    plan: super::plan::Plan,
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
        let plan =
            super::plan::Plan::new(sealed.is_some(), &links_prev, |ino| sealed.is_some_and(|s| s.contains_key(&ino)));
        Builder {
            progress: None,
            capture: None,
            objects,
            bs,
            sealed,
            links: links_prev,
            plan,
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
        self.plan.must_walk(path, self.record(ino).is_some(), prev.is_some())
    }

    /// Build the top tree (one entry "." for the root directory) from the
    /// backing root `root` (a directory descriptor) and the previous
    /// snapshot's top tree.
    pub fn build(&mut self, root: BorrowedFd<'_>, prev_top: Option<TreeId>) -> SnapResult<TreeId> {
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
        let (id, _) = self.objects.put_tree(&Tree { entries: vec![e] })?;
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
            let meta_clean = self.plan.meta_clean(rec);
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
            Some(p) if !p.content.is_zero() => Some(self.objects.dir_tree(p)?),
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
        listing.retain(|(n, _, _)| !crate::live::reserved::hidden(path.is_empty(), n));
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
    fn take(&mut self, mut e: Entry, dev: u64, path: &[u8], totals: &mut Totals, entries: &mut Vec<Entry>) {
        // an entry of a format 1 tree, kept as it was: on this directory's device
        if e.dev.is_none() {
            e.dev = Some(dev);
        }
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
        let blocks = self.plan.blocks(rec, prev.is_some(), prev.map_or(0, |p| p.size), size);
        // unchanged since the previous snapshot
        if let (Some(p), super::plan::Blocks::Keep) = (prev, blocks) {
            return Ok((p.content, p.levels));
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
        let incremental = match (prev, rec, blocks) {
            (Some(p), Some(r), super::plan::Blocks::KeepClean) => Some((p, r)),
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
    // SAFETY: every pointer is to a buffer or C string that outlives the call, passed with its true length; the result is checked.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags | libc::O_NOATIME) };
    let fd = if fd < 0 && Errno::last() == Errno::EPERM {
        // SAFETY: every pointer is to a buffer or C string that outlives the call, passed with its true length; the result is checked.
        unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags) }
    } else {
        fd
    };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: the descriptor was just returned by the kernel (checked) and nothing else owns or closes it.
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

/// A top tree holding a chain `d/d/…/d` of `depth` directories with an
/// empty-content file `f` of `size` bytes at the bottom (for tests of deep
/// walks).
#[cfg(test)]
pub(crate) fn test_chain(objects: &Objects, depth: usize, size: u64) -> TreeId {
    // SAFETY: a plain C struct, for which all-zero bytes are a valid value.
    let mut st: sys::Stat = unsafe { std::mem::zeroed() };
    st.st_mode = libc::S_IFREG | 0o644;
    st.st_size = size as i64;
    st.st_nlink = 1;
    let mut e = entry_from_stat(b"f", &st);
    // what each directory holds below it, as a snapshot records it
    let mut below = Totals { files: 1, dirs: 0, others: 0, bytes: size };
    st.st_mode = libc::S_IFDIR | 0o755;
    st.st_size = 0;
    for i in 0..=depth {
        let (id, _) = objects.put(ObjKind::Tree, &Tree { entries: vec![e] }.encode()).unwrap();
        st.st_ino = i as u64 + 1000;
        e = entry_from_stat(if i == depth { b"." } else { b"d" }, &st);
        e.content = id;
        e.totals = below;
        below.dirs += 1;
    }
    objects.put_tree(&Tree { entries: vec![e] }).unwrap().0
}
