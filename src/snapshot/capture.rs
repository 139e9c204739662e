//! Copy-before-write: what lets writers go on while a snapshot is read.
//!
//! A snapshot pauses writers only to seal the epoch. From then until the
//! snapshot is done, the live layer calls a [`Capture`] *before* every change:
//! it saves the sealed state that change would destroy, if the snapshot may
//! still need it:
//!
//! - an inode's stat, xattrs and symlink target, before a metadata change;
//! - a directory's listing (name -> inode), before a name in it changes;
//! - a descriptor of an inode, before it is unlinked or moved (its data and
//!   metadata stay readable through it);
//! - the blocks a write, truncate, fallocate or copy is about to change,
//!   hashed and stored at once, for files the snapshot reads (new, changed,
//!   or every file in full mode).
//!
//! The walk reads the live state and *then* asks the capture: since a
//! capture always happens before the change, finding nothing captured after
//! a read proves the read saw the sealed state; finding something means
//! the change may have begun, and the captured value is used instead.
//! Inodes the walk has finished are marked done and captured no more.

use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex};

pub use crate::live::{DataChange, Preserver};
use crate::os::errno::{Errno, SysResult};
use crate::os::sys::{self, Stat};
use crate::repo::objects::{ObjKind, ObjectId};
use crate::repo::objstore::Objects;
use crate::tracker::{Kind, Record, FULL, RENAMED};
use crate::util::Locked;

/// The sealed state of one inode.
#[derive(Clone)]
pub struct Captured {
    pub st: Stat,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    pub target: Vec<u8>,
}

#[derive(Default)]
struct Inner {
    inodes: HashMap<u64, Captured>,
    dirs: HashMap<u64, Vec<(Vec<u8>, u64)>>,
    pins: HashMap<u64, Arc<OwnedFd>>,
    blocks: HashMap<u64, HashMap<u64, ObjectId>>,
    done: HashSet<u64>,
    error: Option<String>,
}

pub struct Capture {
    objects: Arc<Objects>,
    bs: u64,
    /// `None`: full mode, every file is read.
    sealed: Option<Arc<HashMap<u64, Record>>>,
    /// Capture the listing of every directory (hard links force walks by path).
    all_dirs: bool,
    /// A directory got a new name: the snapshot reads everything below it
    /// anew, and we cannot tell here what lies below it: save every
    /// directory listing and every block changed, as in full mode.
    renamed_dir: bool,
    inner: Mutex<Inner>,
}

impl Capture {
    pub fn new(objects: Arc<Objects>, bs: u64, sealed: Option<Arc<HashMap<u64, Record>>>, all_dirs: bool) -> Capture {
        let renamed_dir =
            sealed.as_ref().is_some_and(|s| s.values().any(|r| r.kind == Kind::Dir && r.flags & RENAMED != 0));
        Capture { objects, bs, sealed, all_dirs, renamed_dir, inner: Mutex::new(Inner::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.locked()
    }

    /// A capture that failed (the repository is full, say) fails the snapshot.
    pub fn error(&self) -> Option<String> {
        self.lock().error.clone()
    }

    fn fail(&self, what: String) {
        log::error!("copy-before-write: {what}");
        self.lock().error.get_or_insert(what);
    }

    /// The walk has finished `ino`.
    pub fn done(&self, ino: u64) {
        self.lock().done.insert(ino);
    }

    fn wanted(&self, ino: u64) -> bool {
        !self.lock().done.contains(&ino)
    }

    /// Whether the snapshot may list this directory.
    fn dir_walked(&self, ino: u64) -> bool {
        match &self.sealed {
            None => true,
            Some(s) => self.all_dirs || self.renamed_dir || s.contains_key(&ino),
        }
    }

    fn copy_block(&self, fd: BorrowedFd<'_>, b: u64, size: u64) -> Result<ObjectId, String> {
        let off = b * self.bs;
        let len = self.bs.min(size - off) as usize;
        let mut buf = vec![0u8; len];
        let got = sys::pread_full(fd, &mut buf, off).map_err(|e| e.to_string())?;
        buf.truncate(got);
        if buf.iter().all(|&x| x == 0) {
            return Ok(ObjectId::ZERO);
        }
        self.objects.put(ObjKind::Blob, &buf).map(|(id, _)| id).map_err(|e| e.to_string())
    }
}

/// The calls the live layer makes before each change (see the module
/// comment): save what the sealed snapshot would lose.
impl Preserver for Capture {
    /// Before a metadata change to the inode `fd` refers to.
    fn before_meta(&self, ino: u64, fd: BorrowedFd<'_>) {
        if !self.wanted(ino) || self.lock().inodes.contains_key(&ino) {
            return;
        }
        match snapshot_inode(fd) {
            Ok(c) => {
                self.lock().inodes.entry(ino).or_insert(c);
            }
            Err(e) => self.fail(format!("inode {ino}: {e}")),
        }
    }

    /// Before a name in directory `dir` (descriptor `fd`) changes.
    fn before_dir(&self, dir: u64, fd: BorrowedFd<'_>) {
        if !self.wanted(dir) || !self.dir_walked(dir) || self.lock().dirs.contains_key(&dir) {
            return;
        }
        match list_with_inodes(fd) {
            Ok(l) => {
                self.lock().dirs.entry(dir).or_insert(l);
            }
            Err(e) => self.fail(format!("directory {dir}: {e}")),
        }
    }

    /// Before `name` in `dir` is unlinked, replaced or moved away: keep it open.
    fn before_unlink(&self, dir: u64, dir_fd: BorrowedFd<'_>, name: &CStr) {
        self.before_dir(dir, dir_fd);
        let Ok(fd) = sys::open_path(dir_fd, name) else { return };
        let Ok(st) = sys::fstat(fd.as_fd()) else { return };
        if !self.wanted(st.st_ino) {
            return;
        }
        self.before_meta(st.st_ino, fd.as_fd());
        self.lock().pins.entry(st.st_ino).or_insert_with(|| Arc::new(fd));
    }

    /// Before the data of file `ino` (open as `fd`, readable) changes.
    fn before_data(&self, ino: u64, fd: BorrowedFd<'_>, change: DataChange) {
        if !self.wanted(ino) {
            return;
        }
        self.before_meta(ino, fd);
        let size = match self.lock().inodes.get(&ino) {
            Some(c) => c.st.st_size as u64,
            None => return,
        };
        // Which blocks will the snapshot read from this file?
        let rec = self.sealed.as_ref().map(|s| s.get(&ino));
        let all = vec![(0, size.div_ceil(self.bs))];
        let needed: Vec<(u64, u64)> = match rec {
            None => all,                                             // full mode
            Some(_) if self.renamed_dir => all,                      // it may lie below a moved directory
            Some(None) => return,                                    // clean: reused from the last snapshot
            Some(Some(r)) if r.flags & (FULL | RENAMED) != 0 => all, // maybe read whole
            Some(Some(r)) => {
                let mut r = r.clone();
                r.size = size;
                r.dirty_ranges(self.bs)
            }
        };
        let n = size.div_ceil(self.bs);
        let (first, end) = match change {
            DataChange::Range { off, len } => (off / self.bs, (off + len).div_ceil(self.bs).min(n)),
            DataChange::Truncate { size: new } => (new / self.bs, n),
            DataChange::Shift { off } => (off / self.bs, n),
        };
        for (s, e) in needed {
            for b in s.max(first)..e.min(end) {
                if self.lock().blocks.get(&ino).is_some_and(|m| m.contains_key(&b)) {
                    continue;
                }
                match self.copy_block(fd, b, size) {
                    Ok(id) => {
                        self.lock().blocks.entry(ino).or_default().entry(b).or_insert(id);
                    }
                    Err(e) => {
                        self.fail(format!("inode {ino} block {b}: {e}"));
                        return;
                    }
                }
            }
        }
    }
}

impl Capture {
    // --- what the walk asks, after reading the live state

    pub fn inode(&self, ino: u64) -> Option<Captured> {
        self.lock().inodes.get(&ino).cloned()
    }

    pub fn dir(&self, ino: u64) -> Option<Vec<(Vec<u8>, u64)>> {
        self.lock().dirs.get(&ino).cloned()
    }

    pub fn pinned(&self, ino: u64) -> Option<Arc<OwnedFd>> {
        self.lock().pins.get(&ino).cloned()
    }

    pub fn block(&self, ino: u64, b: u64) -> Option<ObjectId> {
        self.lock().blocks.get(&ino).and_then(|m| m.get(&b).copied())
    }
}

fn snapshot_inode(fd: BorrowedFd<'_>) -> SysResult<Captured> {
    let st = sys::fstat(fd)?;
    let xattrs = sys::xattrs_at_fd(fd)?;
    let target = if sys::file_type(&st) == libc::S_IFLNK { sys::readlinkat(fd)? } else { Vec::new() };
    Ok(Captured { st, xattrs, target })
}

fn list_with_inodes(fd: BorrowedFd<'_>) -> SysResult<Vec<(Vec<u8>, u64)>> {
    let mut out = Vec::new();
    for e in sys::list_dir(fd)? {
        let name = std::os::unix::ffi::OsStringExt::into_vec(e.name);
        let c = CString::new(name.clone()).map_err(|_| Errno::EINVAL)?;
        match sys::fstatat(fd, &c) {
            Ok(st) => out.push((name, st.st_ino)),
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(e),
        }
    }
    out.sort();
    Ok(out)
}
