//! Open directories and their listings (reserved names left out at the root).

use super::*;
use crate::os::errno::{cvt, Errno, SysResult};
use crate::os::sys::{self, cstr};
use crate::util::{Locked, RwLocked};
use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

impl LiveFs {
    pub(crate) fn dir(&self, fh: u64) -> SysResult<Arc<DirHandle>> {
        self.dirs.read_locked().get(&fh).cloned().ok_or(Errno::EBADF)
    }

    pub fn opendir(&self, nodeid: u64) -> SysResult<u64> {
        let i = self.inode(nodeid)?;
        let fd = sys::reopen(self.fd(&i)?.as_fd(), libc::O_RDONLY | libc::O_DIRECTORY)?;
        let fh = self.next_fh.fetch_add(1, Ordering::SeqCst);
        let d = DirHandle { fd, nodeid, ino: i.ino, cursor: Mutex::new(DirCursor::default()) };
        self.dirs.write_locked().insert(fh, Arc::new(d));
        Ok(fh)
    }

    /// Hand the entries from `offset` to `each` until it says the reply is
    /// full (`true`: that entry was not taken and comes first next time).
    fn entries_from(
        d: &DirHandle,
        offset: i64,
        mut each: impl FnMut(&sys::DirEntry) -> SysResult<bool>,
    ) -> SysResult<()> {
        let mut c = d.cursor.locked();
        if c.pos != offset {
            sys::lseek(d.fd.as_fd(), offset, libc::SEEK_SET)?;
            c.pos = offset;
            c.pending.clear();
        }
        let mut buf = Vec::new();
        loop {
            if c.pending.is_empty() {
                if buf.is_empty() {
                    buf = vec![0u8; 32 * 1024];
                }
                let batch = sys::getdents(d.fd.as_fd(), &mut buf)?;
                if batch.is_empty() {
                    return Ok(());
                }
                c.pending.extend(batch);
            }
            while let Some(e) = c.pending.front() {
                if each(e)? {
                    return Ok(());
                }
                c.pos = e.next_off;
                c.pending.pop_front();
            }
        }
    }

    /// List entries from `offset`; `add(ino, next_offset, type, name)` returns
    /// true when the reply is full.
    pub fn readdir(&self, fh: u64, offset: i64, mut add: impl FnMut(u64, i64, u8, &OsStr) -> bool) -> SysResult<()> {
        let d = self.dir(fh)?;
        let root = d.nodeid == ROOT;
        Self::entries_from(&d, offset, |e| {
            Ok(!reserved::hidden(root, e.name.as_bytes()) && add(e.ino, e.next_off, e.dtype, &e.name))
        })
    }

    /// Like [`LiveFs::readdir`], with each entry's attributes. Every entry but
    /// `.` and `..` counts as a lookup (the kernel will forget it), but only
    /// once `add` accepted it.
    pub fn readdirplus(&self, fh: u64, offset: i64, mut add: impl FnMut(i64, &OsStr, &Attr) -> bool) -> SysResult<()> {
        let d = self.dir(fh)?;
        let root = d.nodeid == ROOT;
        Self::entries_from(&d, offset, |e| {
            if reserved::hidden(root, e.name.as_bytes()) {
                return Ok(false);
            }
            let c = cstr(&e.name)?;
            if e.name == "." || e.name == ".." {
                // The kernel does not count lookups of dot entries.
                return Ok(match sys::fstatat(d.fd.as_fd(), &c) {
                    Ok(st) => add(e.next_off, &e.name, &Attr::of(&st, st.st_ino)),
                    Err(_) => false,
                });
            }
            let found = sys::open_path(d.fd.as_fd(), &c).and_then(|fd| Ok((sys::fstat(fd.as_fd())?, fd)));
            Ok(match found {
                Ok((st, fd)) => {
                    let node = self.remember(fd, &st, d.ino, &e.name);
                    let full = add(e.next_off, &e.name, &Attr::of(&st, node));
                    if full {
                        self.forget(node, 1);
                    }
                    full
                }
                // vanished since getdents: leave it out
                Err(_) => false,
            })
        })
    }

    pub fn releasedir(&self, fh: u64) {
        self.dirs.write_locked().remove(&fh);
    }

    pub fn fsyncdir(&self, fh: u64, datasync: bool) -> SysResult<()> {
        let d = self.dir(fh)?;
        let r = if datasync {
            // SAFETY: a system call on descriptors and values we own, without pointers; the result is checked.
            unsafe { libc::fdatasync(d.fd.as_raw_fd()) }
        } else {
            // SAFETY: a system call on descriptors and values we own, without pointers; the result is checked.
            unsafe { libc::fsync(d.fd.as_raw_fd()) }
        };
        cvt(r).map(|_| ())
    }
}
