//! No panic takes the mount down: every callback runs under
//! `catch_unwind`; a panicking one answers EIO and the worker serves on.

use std::ffi::OsStr;
use std::path::Path;

use fuser::{
    AccessFlags, CopyFileRangeFlags, FileHandle, Filesystem, INodeNo, KernelConfig, LockOwner, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

// --- no panic takes the mount down

/// Serves `F`, so that a panic in a callback does not take the mount down.
///
/// fuser 0.18 runs each callback on its worker thread with no guard: a
/// panic ends that worker (the request is answered EIO when its reply is
/// dropped), and `Session::run` returns as soon as it finds a worker ended,
/// which unmounts: ENOTCONN for everyone. Here each callback runs under
/// `catch_unwind`: the panic is logged, the reply, dropped while unwinding,
/// answers EIO, and the worker serves on. (Locks poisoned on the way are
/// taken over: the layers below never unwrap a lock.) Every callback that
/// `SnapFuse` or `BrowseFuse` implements must be forwarded below, or it
/// answers ENOSYS.
pub struct Guarded<F>(pub F);

fn guard(op: &str, f: impl FnOnce()) {
    if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        log::error!("INTERNAL ERROR: {op} panicked: {}; answered EIO, still serving", crate::util::panic_message(&*p));
    }
}

macro_rules! guarded {
    ($($name:ident($($arg:ident: $ty:ty),*);)*) => {
        $(fn $name(&self, $($arg: $ty),*) {
            guard(stringify!($name), || self.0.$name($($arg),*))
        })*
    };
}

impl<F: Filesystem> Filesystem for Guarded<F> {
    fn init(&mut self, req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        self.0.init(req, config)
    }

    fn destroy(&mut self) {
        guard("destroy", || self.0.destroy())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        guard("lookup", || {
            crate::util::panic_point("lookup", || name.as_encoded_bytes().to_vec());
            self.0.lookup(req, parent, name, reply)
        })
    }

    guarded! {
        forget(req: &Request, ino: INodeNo, nlookup: u64);
        getattr(req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr);
        setattr(req: &Request, ino: INodeNo, mode: Option<u32>, uid: Option<u32>, gid: Option<u32>, size: Option<u64>,
            atime: Option<TimeOrNow>, mtime: Option<TimeOrNow>, ctime: Option<std::time::SystemTime>,
            fh: Option<FileHandle>, crtime: Option<std::time::SystemTime>, chgtime: Option<std::time::SystemTime>,
            bkuptime: Option<std::time::SystemTime>, flags: Option<fuser::BsdFileFlags>, reply: ReplyAttr);
        readlink(req: &Request, ino: INodeNo, reply: ReplyData);
        mknod(req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, rdev: u32, reply: ReplyEntry);
        mkdir(req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry);
        unlink(req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty);
        rmdir(req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty);
        symlink(req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry);
        rename(req: &Request, parent: INodeNo, name: &OsStr, newparent: INodeNo, newname: &OsStr,
            flags: RenameFlags, reply: ReplyEmpty);
        link(req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry);
        open(req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen);
        read(req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, size: u32, flags: OpenFlags,
            lock_owner: Option<LockOwner>, reply: ReplyData);
        write(req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, data: &[u8], write_flags: WriteFlags,
            flags: OpenFlags, lock_owner: Option<LockOwner>, reply: ReplyWrite);
        flush(req: &Request, ino: INodeNo, fh: FileHandle, lock_owner: LockOwner, reply: ReplyEmpty);
        release(req: &Request, ino: INodeNo, fh: FileHandle, flags: OpenFlags, lock_owner: Option<LockOwner>,
            flush: bool, reply: ReplyEmpty);
        fsync(req: &Request, ino: INodeNo, fh: FileHandle, datasync: bool, reply: ReplyEmpty);
        opendir(req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen);
        readdir(req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, reply: ReplyDirectory);
        readdirplus(req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, reply: ReplyDirectoryPlus);
        releasedir(req: &Request, ino: INodeNo, fh: FileHandle, flags: OpenFlags, reply: ReplyEmpty);
        fsyncdir(req: &Request, ino: INodeNo, fh: FileHandle, datasync: bool, reply: ReplyEmpty);
        statfs(req: &Request, ino: INodeNo, reply: ReplyStatfs);
        setxattr(req: &Request, ino: INodeNo, name: &OsStr, value: &[u8], flags: i32, position: u32,
            reply: ReplyEmpty);
        getxattr(req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr);
        listxattr(req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr);
        removexattr(req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty);
        access(req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty);
        create(req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, flags: i32,
            reply: ReplyCreate);
        fallocate(req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, length: u64, mode: i32,
            reply: ReplyEmpty);
        lseek(req: &Request, ino: INodeNo, fh: FileHandle, offset: i64, whence: i32, reply: ReplyLseek);
        copy_file_range(req: &Request, ino_in: INodeNo, fh_in: FileHandle, offset_in: u64, ino_out: INodeNo,
            fh_out: FileHandle, offset_out: u64, len: u64, flags: CopyFileRangeFlags, reply: ReplyWrite);
    }
}
