//! Open files: open and create, reads and writes, fsync, fallocate, copy_file_range; every
//! data change told to the tracker and to copy-before-write first, and the kernel's mtime kept.

use super::DataChange;
use super::*;
use crate::os::creds::{AsCaller, WithoutFsetid};
use crate::os::errno::{cvt, Errno, SysResult};
use crate::os::sys::{self, cstr};
use crate::tracker::Kind;
use crate::util::{Locked, RwLocked};
use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

impl LiveFs {
    pub(crate) fn file(&self, fh: u64) -> SysResult<Arc<Handle>> {
        self.files.read_locked().get(&fh).cloned().ok_or(Errno::EBADF)
    }

    /// Adjust the flags the kernel asked for into the flags we open the backing file with.
    pub(crate) fn backing_flags(&self, flags: i32) -> (i32, bool) {
        let mut f = flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_NOCTTY | libc::O_NOFOLLOW);
        // The kernel computes append offsets itself; we write where it says so
        // the tracker records the right blocks.
        f &= !libc::O_APPEND;
        let direct = f & libc::O_DIRECT != 0;
        f &= !libc::O_DIRECT;
        if self.opts.writeback && f & libc::O_ACCMODE == libc::O_WRONLY {
            // The kernel reads pages to fill partial writes.
            f = (f & !libc::O_ACCMODE) | libc::O_RDWR;
        }
        (f, direct)
    }

    pub(crate) fn add_file(&self, fd: OwnedFd, ino: u64, node: u64, flags: i32) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::SeqCst);
        let readable = flags & libc::O_ACCMODE != libc::O_WRONLY;
        self.files.write_locked().insert(fh, Arc::new(Handle { fd, ino, node, readable }));
        fh
    }

    pub fn open(&self, ctx: &Ctx, nodeid: u64, flags: i32) -> SysResult<OpenReply> {
        let i = self.inode(nodeid)?;
        let (f, direct) = self.backing_flags(flags);
        let trunc = f & libc::O_TRUNC != 0 && f & libc::O_ACCMODE != libc::O_RDONLY;
        let _writers = trunc.then(|| self.writer());
        if trunc {
            if let Some(c) = self.cap() {
                self.cap_data_inode(&*c, &i, DataChange::Truncate { size: 0 });
            }
        }
        if trunc {
            let old = sys::fstat(self.fd(&i)?.as_fd())?.st_size as u64;
            if old > 0 {
                self.observer.set_size(self, i.ino, old, 0);
            } else {
                self.observer.meta(self, i.ino, i.kind());
            }
        }
        let fd = {
            let _kill = WithoutFsetid::new(trunc && ctx.uid != 0);
            sys::reopen(self.fd(&i)?.as_fd(), f)?
        };
        if trunc {
            self.keep_kernel_mtime(&i, fd.as_fd());
        }
        Ok(OpenReply { fh: self.add_file(fd, i.ino, nodeid, f), direct_io: direct, keep_cache: !direct })
    }

    pub fn create(&self, ctx: &Ctx, parent: u64, name: &OsStr, mode: u32, flags: i32) -> SysResult<(Entry, OpenReply)> {
        let _writers = self.writer();
        let p = self.inode(parent)?;
        if let Some(r) = self.reserved(&p, name) {
            return Err(r.on_create());
        }
        let c = cstr(name)?;
        let (f, direct) = self.backing_flags(flags);
        self.cap_dir(&p);
        self.observer.entries(self, p.ino);
        let fd = {
            let _as = AsCaller::new(ctx.uid, ctx.gid);
            sys::openat(self.fd(&p)?.as_fd(), &c, f | libc::O_CREAT | libc::O_NOFOLLOW | (flags & libc::O_EXCL), mode)?
        };
        let st = sys::fstat(fd.as_fd())?;
        let path_fd = sys::reopen(fd.as_fd(), libc::O_PATH)?;
        let nodeid = self.remember(path_fd, &st, p.ino, name);
        if let Ok(i) = self.inode(nodeid) {
            // a new file carries no security.capability
            i.no_caps.store(true, Ordering::SeqCst);
        }
        self.observer.created(self, p.ino, name, st.st_ino, Kind::from_mode(st.st_mode));
        let fh = self.add_file(fd, st.st_ino, nodeid, f);
        Ok((Entry { nodeid, attr: Attr::of(&st, nodeid) }, OpenReply { fh, direct_io: direct, keep_cache: !direct }))
    }

    /// Read up to `size` bytes at `off` and hand them to `f` (no copy).
    pub fn read_with<R>(&self, fh: u64, off: u64, size: u32, f: impl FnOnce(SysResult<&[u8]>) -> R) -> R {
        let h = match self.file(fh) {
            Ok(h) => h,
            Err(e) => return f(Err(e)),
        };
        READ_BUF.with(|b| {
            let mut buf = b.borrow_mut();
            if buf.len() < size as usize {
                buf.resize(size as usize, 0);
            }
            match sys::pread_full(h.fd.as_fd(), &mut buf[..size as usize], off) {
                Ok(n) => f(Ok(&buf[..n])),
                Err(e) => f(Err(e)),
            }
        })
    }

    pub fn read(&self, fh: u64, off: u64, size: u32) -> SysResult<Vec<u8>> {
        self.read_with(fh, off, size, |r| r.map(|d| d.to_vec()))
    }

    /// Write `data` at `off`. `kill_suidgid`: the writer lacks `CAP_FSETID`,
    /// so setuid/setgid bits must go (the backing filesystem does it).
    /// Write `data` at `off` through handle `fh`.
    pub fn write(&self, fh: u64, off: u64, data: &[u8], kill_suidgid: bool) -> SysResult<u32> {
        let _writers = self.writer();
        let h = self.file(fh)?;
        let st = sys::fstat(h.fd.as_fd())?;
        // captured even when unlinked: a snapshot may be reading it through a pin
        self.cap_data(&h, DataChange::Range { off, len: data.len() as u64 });
        if linked(&st) {
            self.observer.write(self, h.ino, off, data.len() as u64, st.st_size as u64);
        }
        let _kill = WithoutFsetid::new(kill_suidgid);
        let mut done = 0;
        while done < data.len() {
            match sys::pwrite(h.fd.as_fd(), &data[done..], off + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(Errno::EINTR) => continue,
                Err(e) if done == 0 => return Err(e),
                Err(_) => break,
            }
        }
        self.keep_kernel_mtime_of(h.node, h.fd.as_fd());
        Ok(done as u32)
    }

    pub fn release(&self, fh: u64) {
        self.files.write_locked().remove(&fh);
    }

    pub fn fsync(&self, fh: u64, datasync: bool) -> SysResult<()> {
        let h = self.file(fh)?;
        let r = if datasync {
            // SAFETY: a system call on descriptors and values we own, without pointers; the result is checked.
            unsafe { libc::fdatasync(h.fd.as_raw_fd()) }
        } else {
            // SAFETY: a system call on descriptors and values we own, without pointers; the result is checked.
            unsafe { libc::fsync(h.fd.as_raw_fd()) }
        };
        cvt(r).map(|_| ())
    }

    pub fn fallocate(&self, fh: u64, off: u64, len: u64, mode: i32) -> SysResult<()> {
        let _writers = self.writer();
        let h = self.file(fh)?;
        let st = sys::fstat(h.fd.as_fd())?;
        let size = st.st_size as u64;
        let keep = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let end = off.saturating_add(len);
        let change = if mode & (libc::FALLOC_FL_COLLAPSE_RANGE | libc::FALLOC_FL_INSERT_RANGE) != 0 {
            DataChange::Shift { off }
        } else {
            DataChange::Range { off, len }
        };
        self.cap_data(&h, change);
        if !linked(&st) {
            // not in any snapshot
        } else if mode & libc::FALLOC_FL_COLLAPSE_RANGE != 0 {
            self.observer.shift(self, h.ino, off, size.saturating_sub(len));
        } else if mode & libc::FALLOC_FL_INSERT_RANGE != 0 {
            self.observer.shift(self, h.ino, off, size + len);
        } else {
            self.observer.touch_range(self, h.ino, off, len, size);
            if !keep && end > size {
                self.observer.set_size(self, h.ino, size, end);
            }
        }
        // SAFETY: a system call on descriptors and values we own, without pointers; the result is checked.
        cvt(unsafe { libc::fallocate(h.fd.as_raw_fd(), mode, off as i64, len as i64) })?;
        self.keep_kernel_mtime_of(h.node, h.fd.as_fd());
        if let Ok(st) = sys::fstat(h.fd.as_fd()) {
            self.observer.observe_size(h.ino, st.st_size as u64);
        }
        Ok(())
    }

    /// After a change to a regular file's data: with the writeback cache,
    /// put the kernel's mtime back on the backing file (our write moved it
    /// to the time the data reached us; the kernel shows, and later sends,
    /// its own). `fd` is open for writing.
    pub(crate) fn keep_kernel_mtime(&self, i: &Inode, fd: BorrowedFd<'_>) {
        if !self.opts.writeback || i.mode & libc::S_IFMT != libc::S_IFREG {
            return;
        }
        let k = i.kmtime.locked();
        let times = [libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT }, *k];
        // SAFETY: a valid descriptor and two timespecs.
        if let Err(e) = cvt(unsafe { libc::futimens(fd.as_raw_fd(), times.as_ptr()) }) {
            log::warn!("inode {}: cannot keep the kernel's mtime: {e}", i.ino);
        }
    }

    pub(crate) fn keep_kernel_mtime_of(&self, node: u64, fd: BorrowedFd<'_>) {
        if let Ok(i) = self.inode(node) {
            self.keep_kernel_mtime(&i, fd);
        }
    }

    pub fn lseek(&self, fh: u64, off: i64, whence: i32) -> SysResult<i64> {
        let h = self.file(fh)?;
        sys::lseek(h.fd.as_fd(), off, whence)
    }

    pub fn copy_file_range(
        &self,
        fh_in: u64,
        off_in: u64,
        fh_out: u64,
        off_out: u64,
        len: u64,
        flags: u32,
    ) -> SysResult<u32> {
        let _writers = self.writer();
        let hi = self.file(fh_in)?;
        let ho = self.file(fh_out)?;
        let in_size = sys::fstat(hi.fd.as_fd())?.st_size as u64;
        let len = len.min(in_size.saturating_sub(off_in)).min(u32::MAX as u64 & !0xfff);
        if len == 0 {
            return Ok(0);
        }
        let st = sys::fstat(ho.fd.as_fd())?;
        self.cap_data(&ho, DataChange::Range { off: off_out, len });
        if linked(&st) {
            self.observer.write(self, ho.ino, off_out, len, st.st_size as u64);
        }
        let mut oi = off_in as i64;
        let mut oo = off_out as i64;
        // SAFETY: every pointer is to a buffer or C string that outlives the call, passed with its true length; the result is checked.
        let r = cvt(unsafe {
            libc::copy_file_range(hi.fd.as_raw_fd(), &mut oi, ho.fd.as_raw_fd(), &mut oo, len as usize, flags)
        })?;
        self.keep_kernel_mtime_of(ho.node, ho.fd.as_fd());
        if let Ok(st) = sys::fstat(ho.fd.as_fd()) {
            self.observer.observe_size(ho.ino, st.st_size as u64);
        }
        Ok(r as u32)
    }
}
