//! The adapter of a `browse` mount: a repository's snapshots, read-only,
//! served by the view alone.

use std::ffi::OsStr;
use std::sync::Arc;

use fuser::{
    AccessFlags, FileHandle, Filesystem, FopenFlags, INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, ReplyAttr,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs,
    ReplyXattr, Request,
};

use crate::live::ROOT;
use crate::snapshot::view::{View, VIEW_ROOT};

use super::*;

/// A read-only mount of a repository's snapshots (`snapfs browse`). The
/// mount is made read-only, so the kernel refuses changes with EROFS itself.
pub struct BrowseFuse {
    view: Arc<View>,
    /// The view node shown as the mount's root (the folder of snapshots,
    /// or one snapshot's root).
    root: u64,
}

/// A directory inside a snapshot never changes: the kernel may keep its
/// listing in the page cache across opens (no readdir round trips once
/// read). The folder of snapshots changes, so it is read each time.
pub(super) fn view_dir_flags(node: u64) -> FopenFlags {
    if node == VIEW_ROOT {
        FopenFlags::empty()
    } else {
        FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE
    }
}

impl BrowseFuse {
    pub fn new(view: Arc<View>, root: u64) -> BrowseFuse {
        BrowseFuse { view, root }
    }

    fn map(&self, ino: INodeNo) -> u64 {
        if ino.0 == ROOT {
            self.root
        } else {
            ino.0
        }
    }
}

impl Filesystem for BrowseFuse {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.add_capabilities(InitFlags::FUSE_DO_READDIRPLUS);
        let _ = config.add_capabilities(InitFlags::FUSE_READDIRPLUS_AUTO);
        let _ = config.add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS);
        // The kernel evaluates the snapshot's ACLs (system.posix_acl_*
        // xattrs) as on the live mount; without it an ACL-denied user
        // could read through a browse mount.
        if let Err(e) = config.add_capabilities(InitFlags::FUSE_POSIX_ACL) {
            log::warn!("kernel does not offer POSIX ACLs ({e:?}): a browse mount checks mode bits only");
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        view_entry(&self.view, self.view.lookup(self.map(parent), name), reply);
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        if ino.0 != ROOT {
            self.view.forget(ino.0, nlookup);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        view_attr(&self.view, self.map(ino), reply);
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.view.readlink(self.map(ino)) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(e.into()),
        }
    }

    fn open(&self, _req: &Request, _ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        view_open(flags, reply);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        view_read(&self.view, self.map(ino), offset, size, reply);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(0), view_dir_flags(self.map(ino)));
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, reply: ReplyDirectory) {
        view_readdir(&self.view, self.map(ino), offset, reply);
    }

    fn readdirplus(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, reply: ReplyDirectoryPlus) {
        view_readdirplus(&self.view, self.map(ino), offset, reply);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        view_xattr(self.view.getxattr(self.map(ino), name, size), size, reply);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        view_xattr(self.view.listxattr(self.map(ino), size), size, reply);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn lseek(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: i64, whence: i32, reply: ReplyLseek) {
        view_lseek(&self.view, self.map(ino), offset, whence, reply);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply.statfs(0, 0, 0, 0, 0, 4096, 255, 4096);
    }
}
