//! `snapfs rollback`: revert the mounted directory (or a path in it) to a
//! snapshot, in place, through the mount (so the tracker records it and
//! kernel caches stay right), after a safety snapshot: only what differs
//! between the snapshot and the safety snapshot is written.

use super::restore::*;
use crate::ops::{OpContext, OpError, OpResult};
use crate::os::errno::cvt;
use crate::os::sys;
use crate::repo::objects::{Entry, EntryKind};
use crate::repo::objstore::Objects;
use crate::snapshot::{self, SnapshotInfo};
use crate::util;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// What a rollback changed.
#[derive(Debug, Default, Serialize, Deserialize, Clone)]
pub struct RollbackStats {
    /// The safety snapshot taken first.
    pub safety_snapshot: String,
    pub removed: u64,
    pub restored: u64,
    pub patched_files: u64,
    pub metadata: u64,
    pub written: u64,
}

/// Revert `sub` of the live directory (`root`: a descriptor of the mount)
/// to snapshot `to`, given `now`: a snapshot of the directory as it is (the
/// safety snapshot, taken just before). Only what differs between the two
/// (by hashes) is touched; only differing blocks are written.
/// Whether `sub` can be rolled back to `to`: it names something in the
/// snapshot, and its parent is a directory of the live tree at `root`.
/// Checked before the safety snapshot is taken, so a bad PATH leaves
/// nothing behind.
pub fn rollback_check(objects: &Objects, to: &SnapshotInfo, sub: &str, root: BorrowedFd<'_>) -> OpResult<()> {
    if sub.split('/').any(|p| p == "..") {
        refused!("{sub}: a path in the directory may not contain ..");
    }
    find_entry(objects, to, sub)?;
    let rel = sub.trim_matches('/').as_bytes();
    let pdir = rel.iter().rposition(|b| *b == b'/').map_or(&rel[..0], |i| &rel[..i]);
    open_dir(root, pdir).map(drop)
}

pub fn rollback(
    objects: &Objects,
    to: &SnapshotInfo,
    now: &SnapshotInfo,
    sub: &str,
    root: BorrowedFd<'_>,
) -> OpResult<RollbackStats> {
    sys::raise_nofile_limit(); // a descriptor per level of a deep tree
    let bs = to.record.block_size;
    check_record(to)?;
    check_record(now)?;
    let want = find_entry(objects, to, sub)?;
    let have = find_entry(objects, now, sub).ok();
    let mut st = RollbackStats { safety_snapshot: now.record.name.clone(), ..Default::default() };
    let rel = sub.trim_matches('/').as_bytes().to_vec();
    let (pdir, name) = match rel.iter().rposition(|b| *b == b'/') {
        Some(i) => (rel[..i].to_vec(), rel[i + 1..].to_vec()),
        None => (Vec::new(), rel.clone()),
    };
    if rel.is_empty() {
        if want.kind != EntryKind::Dir {
            damaged!("the snapshot's root is not a directory");
        }
        let Some(have) = have else {
            damaged!("no root in the current snapshot");
        };
        let work =
            vec![Work::Dir { parent: None, path: Vec::new(), want: want.clone(), have: Some(have.clone()), depth: 0 }];
        sync_tree(objects, bs, root, work, &mut st)?;
        if meta_differs(&want, &have) {
            set_meta(root, c".", &want)?;
            st.metadata += 1;
        }
    } else {
        let d = Arc::new(open_dir(root, &pdir)?);
        let mut w = want.clone();
        w.name = name.clone();
        let mut work = Vec::new();
        let depth = rel.split(|b| *b == b'/').count();
        sync_entry(objects, bs, &d, &pdir, &w, have.as_ref(), &mut st, &mut work, depth)?;
        sync_tree(objects, bs, root, work, &mut st)?;
    }
    Ok(st)
}

fn meta_differs(a: &Entry, b: &Entry) -> bool {
    (a.mode, a.uid, a.gid, a.mtime, &a.xattrs) != (b.mode, b.uid, b.gid, b.mtime, &b.xattrs)
}

/// What the rollback walk leaves for later, kept on the heap (any depth
/// down to [`util::MAX_DEPTH`] levels; one descriptor per level at most).
#[allow(clippy::large_enum_variant)] // a few per level at most
enum Work {
    /// Make the directory `want.name` in `parent` (`None`: the root
    /// itself), at `path`, hold what `want` holds, given it holds `have`
    /// (`None`: it was just made).
    Dir { parent: Option<Arc<OwnedFd>>, path: Vec<u8>, want: Entry, have: Option<Entry>, depth: usize },
    /// Then (its directories done) set its metadata: it was restored
    /// anew, or its metadata differed.
    Meta { parent: Arc<OwnedFd>, want: Entry, restored: bool },
}

/// Do the work, and what it leaves, until none is left.
fn sync_tree(
    objects: &Objects,
    bs: u64,
    root: BorrowedFd<'_>,
    mut work: Vec<Work>,
    st: &mut RollbackStats,
) -> OpResult<()> {
    while let Some(w) = work.pop() {
        let (parent, path, want, have, depth) = match w {
            Work::Meta { parent, want, restored } => {
                set_meta(parent.as_fd(), &cname(&want.name), &want)?;
                if restored {
                    st.restored += 1;
                } else {
                    st.metadata += 1;
                }
                continue;
            }
            Work::Dir { parent, path, want, have, depth } => (parent, path, want, have, depth),
        };
        if have.as_ref().is_some_and(|h| h.content == want.content) {
            continue;
        }
        if depth > util::MAX_DEPTH {
            refused!("{}", util::too_deep(&path));
        }
        let wt = objects.dir_tree(&want)?;
        let ht = match &have {
            Some(h) => Some(objects.dir_tree(h)?),
            None => None,
        };
        let d = Arc::new(match &parent {
            None => open_dir(root, &path)?,
            Some(up) => sys::open_beneath(up.as_fd(), &cname(&want.name), libc::O_RDONLY | libc::O_DIRECTORY)
                .map_err(|e| not_followed(&path, e))?,
        });
        if let Some(ht) = &ht {
            // names that are gone from the snapshot go first
            for h in &ht.entries {
                if wt.get(&h.name).is_none() {
                    check_name(&h.name)?;
                    remove_any(d.as_fd(), &cname(&h.name))?;
                    st.removed += 1;
                }
            }
        }
        for w in &wt.entries {
            check_name(&w.name)?;
            let h = ht.as_ref().and_then(|t| t.get(&w.name));
            sync_entry(objects, bs, &d, &path, w, h, st, &mut work, depth + 1)?;
        }
    }
    Ok(())
}

/// Make `w.name` in `dir` (at `path`) what `w` says, given it is `h` now;
/// a directory below is left as work for later (at `depth`).
#[allow(clippy::too_many_arguments)]
fn sync_entry(
    objects: &Objects,
    bs: u64,
    dir_fd: &Arc<OwnedFd>,
    path: &[u8],
    w: &Entry,
    h: Option<&Entry>,
    st: &mut RollbackStats,
    work: &mut Vec<Work>,
    depth: usize,
) -> OpResult<()> {
    let dir = dir_fd.as_fd();
    let n = cname(&w.name);
    let p = util::join_rel(path, &w.name);
    let h = h.filter(|h| h.kind == w.kind);
    if h.is_none() && sys::fstatat(dir, &n).is_ok() {
        remove_any(dir, &n)?;
        st.removed += 1;
    }
    match (w.kind, h) {
        (EntryKind::Dir, Some(h)) => {
            // its metadata after what is below it
            if meta_differs(w, h) {
                work.push(Work::Meta { parent: dir_fd.clone(), want: w.clone(), restored: false });
            }
            let (want, have) = (w.clone(), Some(h.clone()));
            work.push(Work::Dir { parent: Some(dir_fd.clone()), path: p, want, have, depth });
        }
        (EntryKind::Dir, None) => {
            // restore the whole subtree from the snapshot
            // SAFETY: every pointer is to a buffer or C string that outlives the call, passed with its true length; the result is checked.
            cvt(unsafe { libc::mkdirat(dir.as_raw_fd(), n.as_ptr(), 0o700) }).map_err(|e| OpError::sys(show(&p), e))?;
            work.push(Work::Meta { parent: dir_fd.clone(), want: w.clone(), restored: true });
            work.push(Work::Dir { parent: Some(dir_fd.clone()), path: p, want: w.clone(), have: None, depth });
        }
        (EntryKind::File, Some(h)) => {
            if h.nlink > 1 && w.nlink == 1 && (w.content != h.content || w.size != h.size || meta_differs(w, h)) {
                // linked since: patching the shared inode would change its
                // other names too; this name gets a file of its own
                remove_any(dir, &n)?;
                let c = RestoreProgress::default();
                write_file(objects, bs, dir, w, &c, &p)?;
                st.written += c.written.load(Ordering::Relaxed);
                st.restored += 1;
            } else if w.content != h.content || w.size != h.size {
                st.written += patch_file(objects, bs, dir, w, h, &p)?;
                st.patched_files += 1;
            } else if meta_differs(w, h) {
                set_meta(dir, &n, w)?;
                st.metadata += 1;
            }
        }
        (EntryKind::Symlink, Some(h)) if w.target == h.target => {
            if meta_differs(w, h) {
                set_meta(dir, &n, w)?;
                st.metadata += 1;
            }
        }
        (_, Some(h)) if w.kind != EntryKind::File && w.kind != EntryKind::Symlink && w.rdev == h.rdev => {
            if meta_differs(w, h) {
                set_meta(dir, &n, w)?;
                st.metadata += 1;
            }
        }
        (EntryKind::File, None) => {
            let c = RestoreProgress::default();
            write_file(objects, bs, dir, w, &c, &p)?;
            st.written += c.written.load(Ordering::Relaxed);
            st.restored += 1;
        }
        _ => {
            // symlinks with another target, devices, fifos, sockets
            if sys::fstatat(dir, &n).is_ok() {
                remove_any(dir, &n)?;
            }
            let mut jobs = Vec::new();
            let mut links = Vec::new();
            let mut first = HashMap::new();
            let mut rs = RestoreStats::default();
            let mut one = w.clone();
            one.nlink = 1;
            place(dir, path, &one, true, bs, &mut jobs, &mut links, &mut first, &mut rs)?;
            st.restored += 1;
        }
    }
    Ok(())
}

/// Turn file `dir/name`, known to hold `h`'s content, into `w`'s: write the
/// blocks whose ids differ (the hashes say which; nothing else is read),
/// cut or extend it to the right size, verify what was written. Returns
/// the bytes written.
fn patch_file(objects: &Objects, bs: u64, dir: BorrowedFd<'_>, w: &Entry, h: &Entry, path: &[u8]) -> OpResult<u64> {
    let n = cname(&w.name);
    let new = snapshot::entry_blocks(objects, w, bs)?;
    let old = snapshot::entry_blocks(objects, h, bs)?;
    let fd = sys::openat(dir, &n, libc::O_RDWR | libc::O_NOFOLLOW, 0).map_err(|e| OpError::sys(show(path), e))?;
    // SAFETY: a system call on descriptors and values we own, without pointers; the result is checked.
    cvt(unsafe { libc::ftruncate(fd.as_raw_fd(), w.size as i64) }).map_err(|e| OpError::sys(show(path), e))?;
    let mut written = 0;
    let mut buf = vec![0u8; bs as usize];
    for (b, id) in new.iter().enumerate() {
        let off = b as u64 * bs;
        let len = bs.min(w.size - off) as usize;
        // ids hash the whole block, length included: equal ids, equal bytes
        if old.get(b) == Some(id) {
            continue;
        }
        written += put_block(objects, fd.as_fd(), b, *id, off, &mut buf[..len], path)?;
    }
    drop(fd);
    set_meta(dir, &n, w).with_what(|| show(path))?;
    Ok(written)
}
