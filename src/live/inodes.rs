//! The inodes the kernel knows: one `Inode` per backing (device, inode), holding an `O_PATH`
//! descriptor (or a file handle, reopened on use); node ids, lookup counts, the links seen.

use super::*;
use crate::os::errno::{Errno, SysResult};
use crate::os::sys::{self, Stat};
use crate::tracker::Kind;
use crate::util::{Locked, RwLocked};
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// How we reach a backing inode.
pub(crate) enum Anchor {
    /// A descriptor held for the node's life: the root, inodes without a
    /// usable file handle (another filesystem inside the tree), and inodes
    /// whose last link we removed (holding them stops the backing
    /// filesystem from reusing the number while the kernel knows the node).
    Pinned(Arc<OwnedFd>),
    /// A file handle; descriptors come from the bounded cache.
    Handle(sys::FileHandle),
}

pub struct Inode {
    pub nodeid: u64,
    pub(crate) anchor: Mutex<Anchor>,
    pub dev: u64,
    pub ino: u64,
    pub mode: u32,
    pub(crate) nlookup: AtomicU64,
    /// Known to have no `security.capability` xattr. The kernel asks for it
    /// before every write (FUSE has no SB_NOSEC); only a setxattr, which
    /// goes through us, can add one.
    pub(crate) no_caps: AtomicBool,
    /// The links we have seen it under: (backing inode of the parent, name),
    /// most recent last. Every name change goes through us, so removed
    /// names are dropped here and the rest stay true.
    pub(crate) links: Mutex<Vec<(u64, OsString)>>,
    /// A regular file's mtime as the kernel has it. With the writeback
    /// cache the kernel keeps mtime itself: it takes ours once, when it
    /// first learns the inode (the stat this starts as), and from then on
    /// changes it on its own and sends it in a SETATTR (which updates this)
    /// when it writes the inode back, before or after the data. So every
    /// change we make to the file's data puts this back afterwards: the
    /// backing mtime is always the kernel's (see "Times with the writeback
    /// cache" in doc/DESIGN.md). Held while the backing mtime is set.
    pub(crate) kmtime: Mutex<libc::timespec>,
}

pub(crate) fn mtime_of(st: &Stat) -> libc::timespec {
    libc::timespec { tv_sec: st.st_mtime, tv_nsec: st.st_mtime_nsec }
}

impl Inode {
    pub fn kind(&self) -> Kind {
        Kind::from_mode(self.mode)
    }
    pub(crate) fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFDIR
    }
    pub(crate) fn is_symlink(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFLNK
    }
    pub(crate) fn set_link(&self, parent: u64, name: &OsStr) {
        let mut l = self.links.locked();
        if l.last().is_some_and(|(p, n)| *p == parent && n == name) {
            return;
        }
        l.retain(|(p, n)| !(*p == parent && n == name));
        if self.is_dir() {
            l.clear(); // a directory has one name
        }
        l.push((parent, name.to_os_string()));
        if l.len() > 16 {
            l.remove(0);
        }
    }

    /// `parent/name` no longer names this inode; returns a link it still has.
    pub(crate) fn drop_link(&self, parent: u64, name: &OsStr) -> Option<(u64, OsString)> {
        let mut l = self.links.locked();
        l.retain(|(p, n)| !(*p == parent && n == name));
        l.last().cloned()
    }

    pub(crate) fn current_link(&self) -> Option<(u64, OsString)> {
        self.links.locked().last().cloned()
    }
}

#[derive(Default)]
pub(crate) struct Table {
    pub(crate) by_node: HashMap<u64, Arc<Inode>>,
    pub(crate) by_key: HashMap<(u64, u64), u64>,
}

impl LiveFs {
    pub(crate) fn link_of(&self, ino: u64) -> Option<(u64, OsString)> {
        let t = self.table.read_locked();
        let node = t.by_key.get(&(self.root_dev, ino))?;
        t.by_node.get(node)?.current_link()
    }

    pub fn inode(&self, nodeid: u64) -> SysResult<Arc<Inode>> {
        let t = self.table.read_locked();
        t.by_node.get(&nodeid).cloned().ok_or(Errno::ENOENT)
    }

    /// How to reach the inode `fd` refers to from now on; the descriptor
    /// goes to the cache when a handle will do.
    pub(crate) fn anchor_for(&self, fd: OwnedFd, st: &Stat) -> (Anchor, Option<Arc<OwnedFd>>) {
        if st.st_dev == self.root_dev {
            if let Ok((h, mount_id)) = sys::handle_of(fd.as_fd()) {
                if mount_id == self.mount_id {
                    return (Anchor::Handle(h), Some(Arc::new(fd)));
                }
            }
        }
        (Anchor::Pinned(Arc::new(fd)), None)
    }

    /// Register a backing inode the kernel is about to learn of (lookup count +1).
    pub(crate) fn remember(&self, fd: OwnedFd, st: &Stat, parent_ino: u64, name: &OsStr) -> u64 {
        let key = (st.st_dev, st.st_ino);
        {
            let t = self.table.read_locked();
            if let Some(&node) = t.by_key.get(&key) {
                if let Some(i) = t.by_node.get(&node) {
                    i.nlookup.fetch_add(1, Ordering::SeqCst);
                    i.set_link(parent_ino, name);
                    drop(t);
                    self.cache_fd(node, fd);
                    return node;
                }
            }
        }
        let (anchor, cached) = self.anchor_for(fd, st);
        let mut t = self.table.write_locked();
        if let Some(&node) = t.by_key.get(&key) {
            if let Some(i) = t.by_node.get(&node) {
                i.nlookup.fetch_add(1, Ordering::SeqCst);
                i.set_link(parent_ino, name);
                return node;
            }
        }
        let node = if st.st_dev == self.root_dev && st.st_ino != ROOT && !t.by_node.contains_key(&st.st_ino) {
            st.st_ino
        } else {
            self.next_node.fetch_add(1, Ordering::SeqCst)
        };
        let inode = Inode {
            nodeid: node,
            anchor: Mutex::new(anchor),
            dev: st.st_dev,
            ino: st.st_ino,
            mode: st.st_mode,
            nlookup: AtomicU64::new(1),
            no_caps: AtomicBool::new(false),
            links: Mutex::new(vec![(parent_ino, name.to_os_string())]),
            kmtime: Mutex::new(mtime_of(st)),
        };
        t.by_key.insert(key, node);
        t.by_node.insert(node, Arc::new(inode));
        drop(t);
        if let Some(fd) = cached {
            self.fds.locked().put(node, fd);
        }
        node
    }

    /// Keep a fresh descriptor of a handle-anchored node for its next use.
    pub(crate) fn cache_fd(&self, node: u64, fd: OwnedFd) {
        if let Ok(i) = self.inode(node) {
            if matches!(*i.anchor.locked(), Anchor::Handle(_)) {
                self.fds.locked().put(node, Arc::new(fd));
            }
        }
    }

    /// An `O_PATH` descriptor of the inode.
    pub fn fd(&self, i: &Inode) -> SysResult<Arc<OwnedFd>> {
        let handle = match &*i.anchor.locked() {
            Anchor::Pinned(fd) => return Ok(fd.clone()),
            Anchor::Handle(h) => h.clone(),
        };
        if let Some(fd) = self.fds.locked().get(&i.nodeid) {
            return Ok(fd.clone());
        }
        let fd = Arc::new(sys::open_by_handle(self.mount_fd.as_fd(), &handle, libc::O_PATH)?);
        self.fds.locked().put(i.nodeid, fd.clone());
        Ok(fd)
    }

    /// Hold the inode `(dev, ino)` open until the kernel forgets it: its last
    /// link is about to go.
    pub(crate) fn pin(&self, dev: u64, ino: u64) {
        let i = {
            let t = self.table.read_locked();
            match t.by_key.get(&(dev, ino)).and_then(|n| t.by_node.get(n)) {
                Some(i) => i.clone(),
                None => return,
            }
        };
        if let Ok(fd) = self.fd(&i) {
            *i.anchor.locked() = Anchor::Pinned(fd);
            self.fds.locked().pop(&i.nodeid);
        }
    }

    /// The kernel dropped `n` references to `nodeid`.
    pub fn forget(&self, nodeid: u64, n: u64) {
        if nodeid == ROOT {
            return;
        }
        let mut t = self.table.write_locked();
        let Some(i) = t.by_node.get(&nodeid) else {
            return;
        };
        let prev = i.nlookup.fetch_sub(n.min(i.nlookup.load(Ordering::SeqCst)), Ordering::SeqCst);
        if prev <= n {
            let key = (i.dev, i.ino);
            t.by_node.remove(&nodeid);
            if t.by_key.get(&key) == Some(&nodeid) {
                t.by_key.remove(&key);
            }
            drop(t);
            self.fds.locked().pop(&nodeid);
        }
    }
}
