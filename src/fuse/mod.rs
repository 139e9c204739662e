//! The FUSE adapters: each callback calls one method of [`LiveFs`] or of the
//! snapshot [`View`] and replies.
//!
//! [`SnapFuse`] serves a live mount: node ids with bit 63 set belong to the
//! view behind `DIR/.snapshots`, where every mutating call is EROFS.
//! [`BrowseFuse`] serves a read-only `browse` mount of a repository.
//! No filesystem logic lives here; errors arrive as [`crate::os::errno::Errno`]
//! already decided by the layer below.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fuser::{
    AccessFlags, CopyFileRangeFlags, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig,
    LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::live::{Attr, Ctx, LiveFs, OpenReply, SetAttr, TimeSpec, ROOT, SNAPSHOTS_NAME};
use crate::os::sys;
use crate::snapshot::view::{is_view, View, VIEW_ROOT};
use fuser::{FileAttr, FileType};
use std::time::SystemTime;

mod browse;
mod guard;
pub mod opstats;

use browse::view_dir_flags;
pub use browse::BrowseFuse;
pub use guard::Guarded;
use opstats::{Op, OpStats};

/// Kernel-side settings for a live mount.
#[derive(Debug, Clone)]
pub struct KernelOptions {
    pub max_write: u32,
    pub writeback: bool,
    pub readdirplus: bool,
}

impl Default for KernelOptions {
    fn default() -> Self {
        KernelOptions { max_write: 1 << 20, writeback: false, readdirplus: true }
    }
}

pub struct SnapFuse {
    live: Arc<LiveFs>,
    view: Arc<View>,
    kernel: KernelOptions,
    on_destroy: Option<Box<dyn FnOnce() + Send + Sync>>,
    ops: Arc<OpStats>,
}

impl SnapFuse {
    pub fn new(
        live: Arc<LiveFs>,
        view: Arc<View>,
        kernel: KernelOptions,
        on_destroy: Box<dyn FnOnce() + Send + Sync>,
        ops: Arc<OpStats>,
    ) -> SnapFuse {
        SnapFuse { live, view, kernel, on_destroy: Some(on_destroy), ops }
    }

    fn ttl(&self) -> Duration {
        self.live.options().entry_ttl
    }

    /// `.snapshots` at the root of the live tree.
    fn is_snapshots(parent: INodeNo, name: &OsStr) -> bool {
        parent.0 == ROOT && name == SNAPSHOTS_NAME
    }
}

const EROFS: fuser::Errno = fuser::Errno::EROFS;

// --- routing: which filesystem a node id belongs to, decided here only

/// Node ids with bit 63 set are the snapshot view's (`.snapshots` in a live
/// mount); everything that would change one answers `EROFS`. Reserved names
/// in the live tree are `live::reserved`'s: the live filesystem answers for
/// them, except the lookup of `.snapshots`, which enters the view.
fn writable(ino: INodeNo) -> Result<(), fuser::Errno> {
    if is_view(ino.0) {
        Err(EROFS)
    } else {
        Ok(())
    }
}

// --- replies for view nodes, shared by the live and the browse adapters

fn view_entry(view: &View, r: crate::os::errno::SysResult<fuser::FileAttr>, reply: ReplyEntry) {
    match r {
        Ok(a) => reply.entry(&view.ttl(), &a, Generation(0)),
        Err(e) => reply.error(e.into()),
    }
}

fn view_attr(view: &View, ino: u64, reply: ReplyAttr) {
    match view.getattr(ino) {
        Ok(a) => reply.attr(&view.ttl(), &a),
        Err(e) => reply.error(e.into()),
    }
}

fn view_open(flags: OpenFlags, reply: ReplyOpen) {
    if flags.0 & libc::O_ACCMODE != libc::O_RDONLY || flags.0 & libc::O_TRUNC != 0 {
        return reply.error(EROFS);
    }
    // snapshot contents never change: the kernel may keep its cache
    reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE);
}

fn view_read(view: &View, ino: u64, offset: u64, size: u32, reply: ReplyData) {
    match view.read(ino, offset, size) {
        Ok(d) => reply.data(&d),
        Err(e) => reply.error(e.into()),
    }
}

fn view_readdir(view: &View, ino: u64, offset: u64, mut reply: ReplyDirectory) {
    let r =
        view.readdir(ino, offset as i64, |node, next, kind, name| reply.add(INodeNo(node), next as u64, kind, name));
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e.into()),
    }
}

fn view_readdirplus(view: &View, ino: u64, offset: u64, mut reply: ReplyDirectoryPlus) {
    let ttl = view.ttl();
    let dir_attr = view.getattr(ino);
    let r = view.readdir(ino, offset as i64, |_node, next, _kind, name| {
        if name == "." || name == ".." {
            // the kernel counts no lookup for these
            return match &dir_attr {
                Ok(a) => reply.add(a.ino, next as u64, name, &ttl, a, Generation(0)),
                Err(_) => false,
            };
        }
        match view.lookup(ino, name) {
            Ok(a) => {
                let full = reply.add(a.ino, next as u64, name, &ttl, &a, Generation(0));
                if full {
                    view.forget(a.ino.0, 1);
                }
                full
            }
            Err(_) => false,
        }
    });
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e.into()),
    }
}

fn view_xattr(r: crate::os::errno::SysResult<Vec<u8>>, size: u32, reply: ReplyXattr) {
    match r {
        Ok(d) if size == 0 => reply.size(u32::from_ne_bytes(d[..4].try_into().unwrap())),
        Ok(d) => reply.data(&d),
        Err(e) => reply.error(e.into()),
    }
}

fn view_lseek(view: &View, ino: u64, offset: i64, whence: i32, reply: ReplyLseek) {
    match view.lseek(ino, offset, whence) {
        Ok(o) => reply.offset(o),
        Err(e) => reply.error(e.into()),
    }
}

fn file_type(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

fn dtype_kind(d: u8) -> FileType {
    match d {
        libc::DT_DIR => FileType::Directory,
        libc::DT_LNK => FileType::Symlink,
        libc::DT_FIFO => FileType::NamedPipe,
        libc::DT_SOCK => FileType::Socket,
        libc::DT_CHR => FileType::CharDevice,
        libc::DT_BLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

/// The kernel's form of what the passthrough reports.
fn file_attr(a: &Attr) -> FileAttr {
    let st = &a.st;
    FileAttr {
        ino: fuser::INodeNo(a.ino),
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: sys::time_from(st.st_atime, st.st_atime_nsec),
        mtime: sys::time_from(st.st_mtime, st.st_mtime_nsec),
        ctime: sys::time_from(st.st_ctime, st.st_ctime_nsec),
        crtime: SystemTime::UNIX_EPOCH,
        kind: file_type(st.st_mode),
        perm: (st.st_mode & 0o7777) as u16,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev as u32,
        blksize: st.st_blksize as u32,
        flags: 0,
    }
}

/// A lookup's answer for a name that does not exist: node 0 (see `lookup`).
fn negative_attr() -> FileAttr {
    FileAttr {
        ino: fuser::INodeNo(0),
        size: 0,
        blocks: 0,
        atime: SystemTime::UNIX_EPOCH,
        mtime: SystemTime::UNIX_EPOCH,
        ctime: SystemTime::UNIX_EPOCH,
        crtime: SystemTime::UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 0,
        flags: 0,
    }
}

fn ctx(req: &Request) -> Ctx {
    Ctx { uid: req.uid(), gid: req.gid(), pid: req.pid() }
}

fn time(t: Option<TimeOrNow>) -> Option<TimeSpec> {
    t.map(|t| match t {
        TimeOrNow::Now => TimeSpec::Now,
        TimeOrNow::SpecificTime(s) => TimeSpec::At(s),
    })
}

fn fopen(o: &OpenReply) -> FopenFlags {
    let mut f = FopenFlags::empty();
    if o.direct_io {
        f |= FopenFlags::FOPEN_DIRECT_IO;
    }
    if o.keep_cache {
        f |= FopenFlags::FOPEN_KEEP_CACHE;
    }
    f
}

impl Filesystem for SnapFuse {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        if let Err(max) = config.set_max_write(self.kernel.max_write) {
            let _ = config.set_max_write(max);
        }
        let _ = config.set_max_background(64);
        // HANDLE_KILLPRIV_V2: we clear setuid/setgid on write and truncate
        // (see `LiveFs::write`), so the kernel need not ask for
        // security.capability before every write. POSIX_ACL: the kernel
        // caches ACLs and checks them, as the backing filesystem would.
        let mut wanted = vec![
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_ATOMIC_O_TRUNC,
            InitFlags::FUSE_HANDLE_KILLPRIV_V2,
            InitFlags::FUSE_POSIX_ACL,
            // a symlink's target never changes (only its name does)
            InitFlags::FUSE_CACHE_SYMLINKS,
        ];
        if self.kernel.readdirplus {
            wanted.push(InitFlags::FUSE_DO_READDIRPLUS);
            wanted.push(InitFlags::FUSE_READDIRPLUS_AUTO);
        }
        for f in wanted {
            if let Err(e) = config.add_capabilities(f) {
                log::info!("kernel does not offer {e:?}");
            }
        }
        if self.kernel.writeback {
            if let Err(e) = config.add_capabilities(InitFlags::FUSE_WRITEBACK_CACHE) {
                log::warn!("kernel lacks writeback cache ({e:?}); continuing without");
            }
        }
        Ok(())
    }

    fn destroy(&mut self) {
        if let Some(f) = self.on_destroy.take() {
            f();
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _t = self.ops.timer(Op::Lookup);
        if is_view(parent.0) {
            return view_entry(&self.view, self.view.lookup(parent.0, name), reply);
        }
        if Self::is_snapshots(parent, name) {
            return view_entry(&self.view, self.view.getattr(VIEW_ROOT), reply);
        }
        match self.live.lookup(parent.0, name) {
            Ok(e) => reply.entry(&self.ttl(), &file_attr(&e.attr), Generation(0)),
            // A name that is not there is answered as node 0 with the entry
            // timeout: the kernel keeps the negative entry and asks again
            // only when it expires (a create through the mount fills it).
            // The daemon is the only writer of the backing tree while
            // mounted, so nothing appears there behind the kernel's back.
            Err(e) if e == crate::os::errno::Errno::ENOENT => reply.entry(&self.ttl(), &negative_attr(), Generation(0)),
            Err(e) => reply.error(e.into()),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let _t = self.ops.timer(Op::Forget);
        if is_view(ino.0) {
            return self.view.forget(ino.0, nlookup);
        }
        self.live.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let _t = self.ops.timer(Op::Getattr);
        if is_view(ino.0) {
            return view_attr(&self.view, ino.0, reply);
        }
        match self.live.getattr(ino.0, fh.map(|f| f.0)) {
            Ok(a) => reply.attr(&self.live.options().attr_ttl, &file_attr(&a)),
            Err(e) => reply.error(e.into()),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let _t = self.ops.timer(Op::Setattr);
        if let Err(e) = writable(ino) {
            return reply.error(e);
        }
        let a = SetAttr { mode, uid, gid, size, atime: time(atime), mtime: time(mtime), fh: fh.map(|f| f.0) };
        match self.live.setattr(&ctx(_req), ino.0, &a) {
            Ok(a) => reply.attr(&self.live.options().attr_ttl, &file_attr(&a)),
            Err(e) => reply.error(e.into()),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let _t = self.ops.timer(Op::Readlink);
        let r = if is_view(ino.0) { self.view.readlink(ino.0) } else { self.live.readlink(ino.0) };
        match r {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(e.into()),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let _t = self.ops.timer(Op::Mknod);
        if let Err(e) = writable(parent) {
            return reply.error(e);
        }
        match self.live.mknod(&ctx(req), parent.0, name, mode, rdev) {
            Ok(e) => reply.entry(&self.ttl(), &file_attr(&e.attr), Generation(0)),
            Err(e) => reply.error(e.into()),
        }
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, _umask: u32, reply: ReplyEntry) {
        let _t = self.ops.timer(Op::Mkdir);
        if let Err(e) = writable(parent) {
            return reply.error(e);
        }
        match self.live.mkdir(&ctx(req), parent.0, name, mode) {
            Ok(e) => reply.entry(&self.ttl(), &file_attr(&e.attr), Generation(0)),
            Err(e) => reply.error(e.into()),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _t = self.ops.timer(Op::Unlink);
        if let Err(e) = writable(parent) {
            return reply.error(e);
        }
        match self.live.unlink(parent.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e.into()),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _t = self.ops.timer(Op::Rmdir);
        if let Err(e) = writable(parent) {
            return reply.error(e);
        }
        match self.live.rmdir(parent.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e.into()),
        }
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let _t = self.ops.timer(Op::Symlink);
        if let Err(e) = writable(parent) {
            return reply.error(e);
        }
        match self.live.symlink(&ctx(req), parent.0, link_name, target.as_os_str()) {
            Ok(e) => reply.entry(&self.ttl(), &file_attr(&e.attr), Generation(0)),
            Err(e) => reply.error(e.into()),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let _t = self.ops.timer(Op::Rename);
        if let Err(e) = writable(parent).and(writable(newparent)) {
            return reply.error(e);
        }
        match self.live.rename(parent.0, name, newparent.0, newname, flags.bits()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e.into()),
        }
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let _t = self.ops.timer(Op::Link);
        if let Err(e) = writable(ino).and(writable(newparent)) {
            return reply.error(e);
        }
        match self.live.link(ino.0, newparent.0, newname) {
            Ok(e) => reply.entry(&self.ttl(), &file_attr(&e.attr), Generation(0)),
            Err(e) => reply.error(e.into()),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _t = self.ops.timer(Op::Open);
        if is_view(ino.0) {
            return view_open(flags, reply);
        }
        match self.live.open(&ctx(_req), ino.0, flags.0) {
            Ok(o) => reply.opened(FileHandle(o.fh), fopen(&o)),
            Err(e) => reply.error(e.into()),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let _t = self.ops.timer(Op::Read);
        if is_view(_ino.0) {
            return view_read(&self.view, _ino.0, offset, size, reply);
        }
        self.live.read_with(fh.0, offset, size, |r| match r {
            Ok(d) => reply.data(d),
            Err(e) => reply.error(e.into()),
        })
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let _t = self.ops.timer(Op::Write);
        if let Err(e) = writable(_ino) {
            return reply.error(e);
        }
        let kill = _write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
        match self.live.write(fh.0, offset, data, kill) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e.into()),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        let _t = self.ops.timer(Op::Flush);
        // Nothing to do on close: locks are the kernel's, and with the
        // writeback cache the kernel writes dirty pages back before it
        // sends FLUSH. ENOSYS makes it stop sending FLUSH at all, which
        // saves a round trip per close().
        reply.error(fuser::Errno::ENOSYS);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _t = self.ops.timer(Op::Release);
        if !is_view(_ino.0) {
            self.live.release(fh.0);
        }
        reply.ok();
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        let _t = self.ops.timer(Op::Fsync);
        if is_view(_ino.0) {
            return reply.ok();
        }
        match self.live.fsync(fh.0, datasync) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e.into()),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _t = self.ops.timer(Op::Opendir);
        if is_view(ino.0) {
            return reply.opened(FileHandle(0), view_dir_flags(ino.0));
        }
        // The kernel keeps the listing in its page cache across opens and
        // drops it when the directory changes through this mount, which is
        // the only writer of the backing tree while mounted: a second
        // `find`, `du` or `git status` reads no directory from the daemon.
        match self.live.opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(e.into()),
        }
    }

    fn readdir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let _t = self.ops.timer(Op::Readdir);
        if is_view(_ino.0) {
            return view_readdir(&self.view, _ino.0, offset, reply);
        }
        let r = self.live.readdir(fh.0, offset as i64, |ino, next, d, name| {
            reply.add(INodeNo(ino), next as u64, dtype_kind(d), name)
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e.into()),
        }
    }

    fn readdirplus(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        let _t = self.ops.timer(Op::Readdirplus);
        if is_view(_ino.0) {
            return view_readdirplus(&self.view, _ino.0, offset, reply);
        }
        let ttl = self.ttl();
        let r = self.live.readdirplus(fh.0, offset as i64, |next, name, attr| {
            reply.add(INodeNo(attr.ino), next as u64, name, &ttl, &file_attr(attr), Generation(0))
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e.into()),
        }
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        let _t = self.ops.timer(Op::Releasedir);
        if !is_view(_ino.0) {
            self.live.releasedir(fh.0);
        }
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        let _t = self.ops.timer(Op::Fsyncdir);
        if is_view(_ino.0) {
            return reply.ok();
        }
        match self.live.fsyncdir(fh.0, datasync) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e.into()),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let _t = self.ops.timer(Op::Statfs);
        match self.live.statfs() {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(e.into()),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let _t = self.ops.timer(Op::Setxattr);
        if let Err(e) = writable(ino) {
            return reply.error(e);
        }
        match self.live.setxattr(ino.0, name, value, flags) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e.into()),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let _t = self.ops.timer(Op::Getxattr);
        if is_view(ino.0) {
            return view_xattr(self.view.getxattr(ino.0, name, size), size, reply);
        }
        match self.live.getxattr(ino.0, name, size) {
            Ok(d) if size == 0 => reply.size(u32::from_ne_bytes(d[..4].try_into().unwrap())),
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(e.into()),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _t = self.ops.timer(Op::Listxattr);
        if is_view(ino.0) {
            return view_xattr(self.view.listxattr(ino.0, size), size, reply);
        }
        match self.live.listxattr(ino.0, size) {
            Ok(d) if size == 0 => reply.size(u32::from_ne_bytes(d[..4].try_into().unwrap())),
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(e.into()),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _t = self.ops.timer(Op::Removexattr);
        if let Err(e) = writable(ino) {
            return reply.error(e);
        }
        match self.live.removexattr(ino.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e.into()),
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        let _t = self.ops.timer(Op::Access);
        // default_permissions: the kernel has checked already.
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let _t = self.ops.timer(Op::Create);
        if let Err(e) = writable(parent) {
            return reply.error(e);
        }
        match self.live.create(&ctx(req), parent.0, name, mode, flags) {
            Ok((e, o)) => reply.created(&self.ttl(), &file_attr(&e.attr), Generation(0), FileHandle(o.fh), fopen(&o)),
            Err(e) => reply.error(e.into()),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let _t = self.ops.timer(Op::Fallocate);
        if let Err(e) = writable(ino) {
            return reply.error(e);
        }
        match self.live.fallocate(fh.0, offset, length, mode) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e.into()),
        }
    }

    fn lseek(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: i64, whence: i32, reply: ReplyLseek) {
        let _t = self.ops.timer(Op::Lseek);
        if is_view(_ino.0) {
            return view_lseek(&self.view, _ino.0, offset, whence, reply);
        }
        match self.live.lseek(fh.0, offset, whence) {
            Ok(o) => reply.offset(o),
            Err(e) => reply.error(e.into()),
        }
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        let _t = self.ops.timer(Op::CopyFileRange);
        if let Err(e) = writable(ino_out) {
            return reply.error(e);
        }
        if is_view(ino_in.0) {
            // the kernel copies through read and write instead
            return reply.error(fuser::Errno::EXDEV);
        }
        match self.live.copy_file_range(fh_in.0, offset_in, fh_out.0, offset_out, len, flags.bits() as u32) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e.into()),
        }
    }
}
