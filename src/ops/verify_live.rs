//! `snapfs verify DIR --live`: does the latest snapshot plus the dirty set
//! describe the live directory? Any difference the dirty set does not
//! explain is a change the tracker missed, which the next incremental
//! snapshot would miss too.
//!
//! The check walks the backing directory beside the latest snapshot and
//! follows the decisions an incremental snapshot makes, checking every
//! shortcut it would take instead of taking it:
//! - a directory without a record (and not walked for a hard link) would be
//!   reused whole from the snapshot: its names, and every entry below it
//!   (kind, inode, mode, owner, size, mtime, link count, device, xattrs,
//!   symlink target, file content), must equal the snapshot's;
//! - in a directory that is walked, an entry without a record is taken
//!   from the snapshot as it was (no stat): its stat must be equal; an
//!   entry without a `META`/`FULL` record keeps the snapshot's xattrs and
//!   symlink target: they must be equal;
//! - a file without a record and of unchanged size keeps the snapshot's
//!   content: every block must be equal; a file with a record (not `FULL`)
//!   is re-read only where blocks are marked: every other block must be
//!   equal.
//!
//! Entries new since the snapshot (other inode, kind or name) are read in
//! full by the next snapshot: nothing to check.
//!
//! Writers may go on meanwhile. Every operation marks the tracker before
//! it changes the backing file, and the daemon holds the snapshot lock (so
//! no record goes away): a difference is looked up in the dirty set *after*
//! it was read, and a change that raced the check is then explained by its
//! record.

use std::collections::HashSet;
use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::time::Instant;

use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use crate::ops::verify::VerifyProgress;
use crate::ops::{OpError, OpResult};
use crate::os::sys;
use crate::repo::objects::{Entry, EntryKind, ObjKind, ObjectId, Tree, TreeId};
use crate::repo::objstore::Objects;
use crate::snapshot::{self, LinkTable};
use crate::tracker::{Record, FULL};
use crate::util;

/// At most this many differences are listed.
const MAX_LISTED: usize = 200;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LiveReport {
    pub ok: bool,
    pub snapshot: String,
    pub snapshot_id: String,
    /// Directories and files compared with the snapshot, and bytes read.
    pub dirs: u64,
    pub files: u64,
    pub bytes_compared: u64,
    /// Entries the next snapshot reads anew (new, or recorded in full).
    pub fresh: u64,
    /// Differences the dirty set explains (changes made during the check).
    pub explained: u64,
    /// Changes the tracker missed.
    pub missed: Vec<Missed>,
    /// How many in all (`missed` lists the first ones).
    pub missed_count: u64,
    pub duration_ms: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Missed {
    pub path: String,
    pub what: String,
}

/// Compare the backing directory `root` with the snapshot whose top tree is
/// `top` (link table `links`), given the dirty set `record` (per backing
/// inode).
pub fn check(
    objects: &Objects,
    bs: u64,
    root: BorrowedFd<'_>,
    top: TreeId,
    links: &LinkTable,
    record: &dyn Fn(u64) -> Option<Record>,
    progress: &VerifyProgress,
) -> OpResult<LiveReport> {
    let t0 = Instant::now();
    progress.phase.store(6, Ordering::Relaxed);
    // the rules the next (incremental) snapshot follows
    let plan = snapshot::plan::Plan::new(true, links, |ino| record(ino).is_some());
    let mut c =
        Checker { objects, bs, record, links, plan, progress, r: LiveReport::default(), buf: vec![0u8; bs as usize] };
    let top = objects.tree(&top)?;
    let Some(prev) = top.get(b".").cloned() else {
        damaged!("snapshot has no root entry");
    };
    let st = sys::fstat(root)?;
    if st.st_ino != prev.ino {
        refused!("the snapshot is of another directory (root inode {} here, {} in the snapshot)", st.st_ino, prev.ino);
    }
    let strict = if c.plan.must_walk(b"", record(st.st_ino).is_some(), true) { None } else { Some(st.st_ino) };
    c.dir(root, b"", &prev, strict)?;
    c.r.ok = c.r.missed_count == 0;
    c.r.duration_ms = t0.elapsed().as_millis() as u64;
    Ok(c.r)
}

struct Checker<'a> {
    objects: &'a Objects,
    bs: u64,
    record: &'a dyn Fn(u64) -> Option<Record>,
    links: &'a LinkTable,
    plan: snapshot::plan::Plan,
    progress: &'a VerifyProgress,
    r: LiveReport,
    buf: Vec<u8>,
}

fn show(p: &[u8]) -> String {
    if p.is_empty() {
        ".".into()
    } else {
        util::show_path(p)
    }
}

impl Checker<'_> {
    /// A difference at `path`: explained if `explained()` (asked now, after
    /// the read), else a missed change.
    fn differs(&mut self, path: &[u8], what: String, explained: bool) {
        if explained {
            self.r.explained += 1;
            return;
        }
        log::error!("verify --live: change missed by the tracker: {}: {what}", show(path));
        self.r.missed_count += 1;
        if self.r.missed.len() < MAX_LISTED {
            self.r.missed.push(Missed { path: show(path), what });
        }
    }

    /// Whether a directory judged reusable whole (`strict` = its inode) now
    /// has a record: a change raced the check.
    fn now_walked(&self, strict: Option<u64>) -> bool {
        strict.is_some_and(|top| (self.record)(top).is_some())
    }

    /// Whether a difference in the xattrs or target of `dir/name` (inode
    /// `ino`) is a metadata change made during the check (its record is
    /// there now, or the name changed).
    fn meta_explained(&self, dir: BorrowedFd<'_>, name: &CString, ino: u64, strict: Option<u64>) -> bool {
        changed_name(dir, name, ino)
            || self.now_walked(strict)
            || (strict.is_none() && (self.record)(ino).is_some_and(|r| !self.plan.meta_clean(Some(&r))))
    }

    /// The directory open at `fd`, at `path`, whose snapshot entry is `prev`
    /// (same inode and kind). `strict`: the inode of the directory from
    /// which down the snapshot would be reused whole. The directories being
    /// checked are kept on the heap, one [`Level`] each, down to
    /// [`util::MAX_DEPTH`] levels.
    fn dir(&mut self, fd: BorrowedFd<'_>, path: &[u8], prev: &Entry, strict: Option<u64>) -> OpResult<()> {
        let root = fd;
        let parking = sys::Parking::new(root);
        let mut path = path.to_vec();
        let mut stack: Vec<Level> = self.level(None, root, &path, prev, strict)?.into_iter().collect();
        loop {
            let depth = stack.len();
            let Some(lvl) = stack.last_mut() else { return Ok(()) };
            path.truncate(lvl.path_len);
            let Some(name) = lvl.names.next() else {
                stack.pop();
                continue;
            };
            if let Some(fd) = &mut lvl.fd {
                // parked while the check was further down: open it again
                match parking.ensure(fd) {
                    Ok(()) => {}
                    Err(e) if e.0 == libc::ESTALE || e == crate::os::errno::Errno::ENOENT => {
                        // removed meanwhile (with everything below it)
                        self.r.explained += 1;
                        stack.pop();
                        continue;
                    }
                    Err(e) => return Err(OpError::sys(show(&path), e)),
                }
            }
            let lvl = stack.last().expect("a level");
            let fd = match &lvl.fd {
                Some(d) => d.get()?,
                None => root,
            };
            let strict = lvl.strict;
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(&name);
            let child = &path;
            let cname = CString::new(name.clone())?;
            let st = match sys::fstatat(fd, &cname) {
                Ok(st) => st,
                Err(crate::os::errno::Errno::ENOENT) => continue, // gone meanwhile
                Err(e) => return Err(OpError::sys(show(child), e)),
            };
            let live = snapshot::entry_from_stat(&name, &st);
            let prev_e = lvl.tree.get(&name).filter(|p| p.ino == live.ino && p.kind == live.kind).cloned();
            let Some(prev_e) = prev_e else {
                if strict.is_some() {
                    let what =
                        if lvl.tree.get(&name).is_some() { "replaced, not recorded" } else { "created, not recorded" };
                    let expl = self.now_walked(strict) || changed_name(fd, &cname, live.ino);
                    self.differs(child, what.into(), expl);
                } else {
                    self.r.fresh += 1;
                }
                continue;
            };
            let rec = (self.record)(live.ino);
            // a hard link the next snapshot walks to by path
            let linked = self.links.get(child) == Some(&live.ino);
            // without a record the next snapshot takes the entry as it was
            if strict.is_some() || rec.is_none() {
                let diffs = stat_differences(&prev_e, &live);
                if !diffs.is_empty() {
                    let now = (self.record)(live.ino).is_some();
                    let expl = changed_name(fd, &cname, live.ino)
                        || if strict.is_some() { self.now_walked(strict) || (linked && now) } else { now };
                    self.differs(child, format!("{} changed, not recorded", diffs.join(", ")), expl);
                }
            }
            let meta_clean = self.plan.meta_clean(rec.as_ref());
            if strict.is_some() || meta_clean {
                let xattrs = match sys::xattrs_at(fd, &cname) {
                    Ok(x) => x,
                    Err(crate::os::errno::Errno::ENOENT) => continue,
                    Err(e) => return Err(OpError::sys(show(child), e)),
                };
                if xattrs != prev_e.xattrs {
                    let expl = self.meta_explained(fd, &cname, live.ino, strict);
                    self.differs(child, "extended attributes changed, not recorded".into(), expl);
                }
                if live.kind == EntryKind::Symlink && sys::readlink_at(fd, &cname).unwrap_or_default() != prev_e.target
                {
                    let expl = self.meta_explained(fd, &cname, live.ino, strict);
                    self.differs(child, "symlink target changed, not recorded".into(), expl);
                }
            }
            match live.kind {
                EntryKind::Dir => {
                    if depth > util::MAX_DEPTH {
                        refused!("{}", util::too_deep(child));
                    }
                    let walked = strict.is_none() && self.plan.must_walk(child, rec.is_some(), true);
                    let child_strict = if walked { None } else { strict.or(Some(live.ino)) };
                    let sub = match sys::openat(fd, &cname, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW, 0) {
                        Ok(d) => d,
                        Err(crate::os::errno::Errno::ENOENT) => continue,
                        Err(e) => return Err(OpError::sys(show(child), e)),
                    };
                    // go down (the rest of this directory comes after)
                    if let Some(below) = self.level(Some(sub), root, &path, &prev_e, child_strict)? {
                        stack.push(below);
                        parking.entered(stack.iter_mut().filter_map(|l| l.fd.as_mut()));
                    }
                }
                EntryKind::File => self.file(fd, &cname, child, &live, &prev_e, rec, strict, linked)?,
                _ => {}
            }
        }
    }

    /// Start checking the directory open at `fd` (`None`: at `root`), at
    /// `path`: list it, and report what it lost if it is reused whole.
    /// `None`: it was removed meanwhile.
    fn level(
        &mut self,
        fd: Option<OwnedFd>,
        root: BorrowedFd<'_>,
        path: &[u8],
        prev: &Entry,
        strict: Option<u64>,
    ) -> OpResult<Option<Level>> {
        let dir = fd.as_ref().map_or(root, |d| d.as_fd());
        self.r.dirs += 1;
        let tree = if prev.content.is_zero() { Tree::default() } else { self.objects.dir_tree(prev)? };
        let listed = match sys::list_dir(dir) {
            Ok(l) => l,
            // removed meanwhile (with everything below it)
            Err(crate::os::errno::Errno::ENOENT) if removed(dir) || sys::fstat(dir).is_err() => {
                self.r.explained += 1;
                return Ok(None);
            }
            Err(e) => return Err(OpError::sys(show(path), e)),
        };
        let mut names: Vec<Vec<u8>> = listed.into_iter().map(|e| e.name.into_vec()).collect();
        if path.is_empty() {
            names.retain(|n| !crate::live::reserved::hidden(true, n));
        }
        names.sort();
        if strict.is_some() {
            let live: HashSet<&[u8]> = names.iter().map(|n| &n[..]).collect();
            for e in &tree.entries {
                if !live.contains(&e.name[..]) {
                    let expl = self.now_walked(strict) || removed(dir);
                    self.differs(&util::join_rel(path, &e.name), "removed, not recorded".into(), expl);
                }
            }
        }
        Ok(Some(Level { fd: fd.map(sys::LevelFd::new), path_len: path.len(), tree, names: names.into_iter(), strict }))
    }

    #[allow(clippy::too_many_arguments)]
    fn file(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &CString,
        path: &[u8],
        live: &Entry,
        prev: &Entry,
        rec: Option<Record>,
        strict: Option<u64>,
        linked: bool,
    ) -> OpResult<()> {
        let bs = self.bs;
        // what the next snapshot re-reads
        let dirty: Vec<(u64, u64)> = match (&rec, strict) {
            (_, Some(_)) => Vec::new(),
            (r, None) => match self.plan.blocks(r.as_ref(), true, prev.size, live.size) {
                snapshot::plan::Blocks::Keep => Vec::new(),
                snapshot::plan::Blocks::Read => {
                    // read whole by the next snapshot: nothing to check
                    self.r.fresh += 1;
                    self.progress.bytes_done.fetch_add(live.size, Ordering::Relaxed);
                    return Ok(());
                }
                snapshot::plan::Blocks::KeepClean => {
                    let mut r = r.clone().expect("a record");
                    r.size = live.size;
                    r.dirty_ranges(bs)
                }
            },
        };
        let fd = match sys::openat(dir, name, libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK, 0) {
            Ok(fd) => fd,
            Err(crate::os::errno::Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(OpError::sys(show(path), e)),
        };
        if sys::fstat(fd.as_fd())?.st_ino != live.ino {
            return Ok(()); // replaced meanwhile: the next snapshot reads it anew
        }
        self.r.files += 1;
        let ids = if prev.content.is_zero() {
            Vec::new()
        } else {
            snapshot::block_ids(self.objects, prev.content, prev.levels)?
        };
        let n = live.size.div_ceil(bs);
        let mut bad: Vec<u64> = Vec::new();
        for b in 0..n {
            let off = b * bs;
            let len = bs.min(live.size - off) as usize;
            self.progress.bytes_done.fetch_add(len as u64, Ordering::Relaxed);
            if dirty.iter().any(|&(s, e)| s <= b && b < e) {
                continue;
            }
            let got = sys::pread_full(fd.as_fd(), &mut self.buf[..len], off)?;
            self.buf[got..len].fill(0);
            self.r.bytes_compared += len as u64;
            let block = &self.buf[..len];
            let id =
                if block.iter().all(|&x| x == 0) { ObjectId::ZERO } else { self.objects.id_of(ObjKind::Blob, block) };
            if ids.get(b as usize) != Some(&id) {
                bad.push(b);
            }
        }
        if bad.is_empty() {
            return Ok(());
        }
        // Looked up after the read: a write that raced the check is marked.
        // A file removed or cut short meanwhile explains what it lost.
        let st_now = sys::fstat(fd.as_fd())?;
        if st_now.st_nlink == 0 {
            self.r.explained += bad.len() as u64;
            return Ok(());
        }
        let cut = bad.len();
        bad.retain(|&b| b * bs < st_now.st_size as u64);
        self.r.explained += (cut - bad.len()) as u64;
        let now = (self.record)(live.ino);
        let covered = |b: u64| match &now {
            Some(r) if r.flags & FULL != 0 => true,
            Some(r) => {
                let mut r = r.clone();
                r.size = live.size;
                r.dirty_ranges(bs).iter().any(|&(s, e)| s <= b && b < e)
            }
            None => false,
        };
        let walked_now = strict.is_none() || self.now_walked(strict) || (linked && now.is_some());
        let missed: Vec<u64> = bad.iter().copied().filter(|&b| !(walked_now && covered(b))).collect();
        self.r.explained += (bad.len() - missed.len()) as u64;
        if !missed.is_empty() {
            let first: Vec<String> = missed.iter().take(8).map(|b| b.to_string()).collect();
            let more = if missed.len() > 8 { format!(" … ({} blocks)", missed.len()) } else { String::new() };
            self.differs(path, format!("content of block {}{more} changed, not recorded", first.join(", ")), false);
        }
        Ok(())
    }
}

/// A directory being checked (one per level, on the heap).
struct Level {
    /// Its descriptor (`None`: the root, which the caller holds).
    fd: Option<sys::LevelFd>,
    /// The length of its path.
    path_len: usize,
    /// Its tree in the snapshot.
    tree: Tree,
    /// The names still to check.
    names: std::vec::IntoIter<Vec<u8>>,
    strict: Option<u64>,
}

/// Whether the directory open at `fd` was removed meanwhile.
fn removed(fd: BorrowedFd<'_>) -> bool {
    sys::fstat(fd).is_ok_and(|st| st.st_nlink == 0)
}

/// Whether `name` in `dir` is gone or names another inode now (a change
/// made during the check: the dirty set of a removed inode is gone too).
fn changed_name(dir: BorrowedFd<'_>, name: &CString, ino: u64) -> bool {
    removed(dir) || sys::fstatat(dir, name).map_or(true, |st| st.st_ino != ino)
}

/// What differs between a snapshot entry and the live stat (times of
/// access and change excluded: reads and the tracker's own work move them).
fn stat_differences(prev: &Entry, live: &Entry) -> Vec<&'static str> {
    let mut d = Vec::new();
    if prev.mode != live.mode {
        d.push("mode");
    }
    if (prev.uid, prev.gid) != (live.uid, live.gid) {
        d.push("owner");
    }
    if prev.kind != EntryKind::Dir && prev.size != live.size {
        d.push("size");
    }
    if prev.mtime != live.mtime {
        d.push("mtime");
    }
    if prev.kind != EntryKind::Dir && prev.nlink != live.nlink {
        d.push("link count");
    }
    if prev.rdev != live.rdev {
        d.push("device");
    }
    d
}

/// The report as text.
pub fn render(r: &LiveReport) -> String {
    let mut s = format!(
        "live directory against snapshot {} ({}) and the dirty set: {} directories, {} files, {} compared; {} entries to be read anew by the next snapshot, {} differences explained by changes made meanwhile\n",
        r.snapshot,
        &r.snapshot_id[..r.snapshot_id.len().min(12)],
        r.dirs,
        r.files,
        crate::util::human_bytes(r.bytes_compared),
        r.fresh,
        r.explained
    );
    if r.ok {
        s.push_str("no change missed by the tracker\n");
    } else {
        s.push_str(&format!("{} CHANGES MISSED BY THE TRACKER:\n", r.missed_count));
        for m in &r.missed {
            s.push_str(&format!("  {}: {}\n", m.path, m.what));
        }
        if r.missed_count as usize > r.missed.len() {
            s.push_str(&format!("  … and {} more\n", r.missed_count as usize - r.missed.len()));
        }
    }
    s
}
