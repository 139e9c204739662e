//! The live view: a POSIX passthrough over the backing directory that tells
//! the [`Tracker`] about every change before making it.
//! (About 700 lines of code and 190 of unit tests: the inode table and the
//! calls that share it stay together; directories, files and xattrs are in
//! their own files beside it.)
//!
//! # Inodes
//! Each inode the kernel knows is an [`Inode`] holding an `O_PATH` descriptor
//! of the backing inode, keyed by the backing `(st_dev, st_ino)` so hard links
//! share one node. The node id is the backing inode number (root is 1), so
//! `stat` through the mount shows the same numbers as the backing filesystem
//! and they stay the same across mounts. Inodes of another device (a mount
//! inside the backing tree) or a number that collides get ids from a counter
//! starting at [`EXTRA_NODES`]. While we hold the `O_PATH` descriptor the
//! backing filesystem cannot reuse the number, so a node id never names two
//! inodes at once. The kernel's lookup count is kept per node; when `forget`
//! brings it to zero the node and its descriptor go away.
//!
//! # Locks
//! Order: tracker state, then the inode table, then an inode's `link`. The
//! tracker calls back into [`LiveFs::link_of`] while holding its lock, so
//! nothing here may call the tracker while holding the table lock.
//!
//! # Permissions
//! The mount uses `default_permissions`: the kernel checks access with the
//! caller's full credentials. New inodes are created with the caller's fsuid
//! and fsgid (see [`crate::os::creds`]) so the backing filesystem decides owner
//! and group. Everything else runs with the daemon's (root) credentials.
//!
//! # Paths
//! Nothing here uses a path into the mount. Inodes are reached by `*at` calls
//! on descriptors, or by `/proc/self/fd/N` for calls that have no `*at` form.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use crate::os::creds::{AsCaller, WithoutFsetid};
use crate::os::errno::{cvt, Errno, SysResult};
use crate::os::sys::{self, cstr, Stat};
use crate::tracker::{Ancestry, Kind};
use crate::util::{Locked, RwLocked};

mod dirs;
mod files;
mod inodes;
mod observer;
pub mod reserved;
mod xattrs;

pub use inodes::Inode;
use inodes::{mtime_of, Anchor, Table};
pub use observer::{ChangeObserver, DataChange, Preserver};
pub use reserved::{Reserved, REPO_NAME, SNAPSHOTS_NAME};

/// Node id of the root.
pub const ROOT: u64 = 1;
/// First node id handed out for inodes whose backing number cannot be used.
/// Bit 63 stays free for the snapshot views.
pub const EXTRA_NODES: u64 = 1 << 56;

/// Who is asking.
#[derive(Debug, Clone, Copy)]
pub struct Ctx {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

impl Ctx {
    pub fn root() -> Ctx {
        Ctx { uid: 0, gid: 0, pid: 0 }
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    /// Kernel writeback cache is on: open flags must be adjusted.
    pub writeback: bool,
    pub attr_ttl: Duration,
    pub entry_ttl: Duration,
}

impl Default for Options {
    fn default() -> Self {
        // Long: the mount is the only writer of the backing tree, so the
        // kernel's entries and attributes stay right (it updates them for
        // every change it passes through). A listing the kernel serves from
        // its cache refreshes no entry; with 10 s, a `du` after it paid a
        // lookup per file (scripts/bench-meta).
        Options { writeback: false, attr_ttl: Duration::from_secs(300), entry_ttl: Duration::from_secs(300) }
    }
}

/// An open file.
pub struct Handle {
    pub fd: OwnedFd,
    /// Backing inode number (the tracker's key) and node id.
    pub ino: u64,
    pub node: u64,
    /// Opened for reading too (copy-before-write reads through it).
    pub readable: bool,
}

/// An open directory and where its stream stands.
pub struct DirHandle {
    fd: OwnedFd,
    nodeid: u64,
    /// Backing inode number of the directory.
    ino: u64,
    /// Where the stream stands.
    cursor: Mutex<DirCursor>,
}

/// Entries read from the descriptor but not yet given to the kernel (a
/// reply holds a few dozen; a read of the descriptor gives up to a
/// thousand), and the offset of the first of them (or of the descriptor,
/// when there are none). A call that continues where the last stopped is
/// served from them: listing a directory reads it once, whatever its size.
#[derive(Default)]
pub(crate) struct DirCursor {
    pos: i64,
    pending: std::collections::VecDeque<crate::os::sys::DirEntry>,
}

/// Attribute changes requested by `setattr`.
#[derive(Debug, Default, Clone, Copy)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeSpec>,
    pub mtime: Option<TimeSpec>,
    pub fh: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
pub enum TimeSpec {
    Now,
    At(SystemTime),
}

/// A reply to lookup-like calls.
#[derive(Debug, Clone)]
pub struct Entry {
    pub nodeid: u64,
    pub attr: Attr,
}

/// What `open`/`create` tell the kernel about a handle.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenReply {
    pub fh: u64,
    pub direct_io: bool,
    /// The kernel may keep the file's cached pages: every change to the file
    /// goes through this mount, so they cannot be stale.
    pub keep_cache: bool,
}

pub struct LiveFs {
    /// Every change to the tree holds this shared; a snapshot takes it
    /// exclusively for the instant it seals the epoch (and, for now, while
    /// it reads: see doc/DESIGN.md).
    gate: RwLock<()>,
    /// Copy-before-write for a snapshot being read.
    preserver: RwLock<Option<Arc<dyn Preserver>>>,
    table: RwLock<Table>,
    /// `O_PATH` descriptors of handle-anchored inodes, most recently used
    /// kept. A passthrough cannot hold one descriptor per inode the kernel
    /// remembers: the open-file limit is far below the size of big trees.
    fds: Mutex<lru::LruCache<u64, Arc<OwnedFd>>>,
    /// Descriptor of the backing root, for `open_by_handle_at`.
    mount_fd: Arc<OwnedFd>,
    /// Mount id of the backing root: handles from other mounts are not used.
    mount_id: i32,
    next_node: AtomicU64,
    files: RwLock<HashMap<u64, Arc<Handle>>>,
    dirs: RwLock<HashMap<u64, Arc<DirHandle>>>,
    next_fh: AtomicU64,
    /// Told before every change (the tracker, on a mount).
    observer: Arc<dyn ChangeObserver>,
    root_dev: u64,
    root_ino: u64,
    opts: Options,
}

thread_local! {
    static READ_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// What the passthrough reports of a node: the backing `stat`, and the
/// inode number `stat` through the mount shows (the node id; the root shows
/// its backing number). The FUSE adapter turns it into the kernel's form.
#[derive(Clone, Copy)]
pub struct Attr {
    pub ino: u64,
    pub st: Stat,
}

impl std::fmt::Debug for Attr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Attr {{ ino: {}, mode: {:o}, size: {} }}", self.ino, self.st.st_mode, self.st.st_size)
    }
}

impl Attr {
    pub fn of(st: &Stat, nodeid: u64) -> Attr {
        Attr { ino: nodeid, st: *st }
    }
}

pub(crate) fn timespec(t: Option<TimeSpec>) -> libc::timespec {
    match t {
        None => libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT },
        Some(TimeSpec::Now) => libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_NOW },
        Some(TimeSpec::At(t)) => match t.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(d) => libc::timespec { tv_sec: d.as_secs() as i64, tv_nsec: d.subsec_nanos() as i64 },
            Err(e) => {
                let d = e.duration();
                let mut sec = -(d.as_secs() as i64);
                let mut nsec = d.subsec_nanos() as i64;
                if nsec > 0 {
                    sec -= 1;
                    nsec = 1_000_000_000 - nsec;
                }
                libc::timespec { tv_sec: sec, tv_nsec: nsec }
            }
        },
    }
}

impl Ancestry for LiveFs {
    fn link_of(&self, ino: u64) -> Option<(u64, OsString)> {
        self.link_of(ino)
    }
}

impl LiveFs {
    /// A passthrough over the directory `root` (any descriptor of it; an
    /// `O_PATH` one is made from it).
    pub fn new(root: BorrowedFd<'_>, observer: Arc<dyn ChangeObserver>, opts: Options) -> SysResult<LiveFs> {
        let fd = sys::open_path(root, c".")?;
        let st = sys::fstat(fd.as_fd())?;
        if !sys::is_dir(&st) {
            return Err(Errno::ENOTDIR);
        }
        let fd = Arc::new(fd);
        let mount_id = sys::handle_of(fd.as_fd()).map(|(_, m)| m).unwrap_or(-1);
        let root_inode = Inode {
            nodeid: ROOT,
            anchor: Mutex::new(Anchor::Pinned(fd.clone())),
            dev: st.st_dev,
            ino: st.st_ino,
            mode: st.st_mode,
            nlookup: AtomicU64::new(1 << 40),
            no_caps: AtomicBool::new(false),
            links: Mutex::new(Vec::new()),
            kmtime: Mutex::new(mtime_of(&st)),
        };
        let mut t = Table::default();
        t.by_key.insert((st.st_dev, st.st_ino), ROOT);
        t.by_node.insert(ROOT, Arc::new(root_inode));
        let cap = (sys::nofile_limit() / 4).clamp(256, 16384) as usize;
        // open_by_handle_at wants a real descriptor, not an O_PATH one
        let mount_fd = Arc::new(sys::reopen(fd.as_fd(), libc::O_RDONLY | libc::O_DIRECTORY)?);
        Ok(LiveFs {
            gate: RwLock::new(()),
            preserver: RwLock::new(None),
            table: RwLock::new(t),
            fds: Mutex::new(lru::LruCache::new(std::num::NonZeroUsize::new(cap).unwrap())),
            mount_fd,
            mount_id,
            next_node: AtomicU64::new(EXTRA_NODES),
            files: RwLock::new(HashMap::new()),
            dirs: RwLock::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            observer,
            root_dev: st.st_dev,
            root_ino: st.st_ino,
            opts,
        })
    }

    pub(crate) fn writer(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.gate.read_locked()
    }

    /// Hold all changes off (a snapshot's point in time).
    pub fn pause_writers(&self) -> std::sync::RwLockWriteGuard<'_, ()> {
        self.gate.write_locked()
    }

    /// From now on, let `p` save what each change would destroy.
    pub fn begin_preserving(&self, p: Arc<dyn Preserver>) {
        *self.preserver.write_locked() = Some(p);
    }

    pub fn end_preserving(&self) {
        *self.preserver.write_locked() = None;
    }

    pub(crate) fn cap(&self) -> Option<Arc<dyn Preserver>> {
        self.preserver.read_locked().clone()
    }

    /// Copy-before-write of a data change through an open file.
    pub(crate) fn cap_data(&self, h: &Handle, change: DataChange) {
        let Some(c) = self.cap() else { return };
        if h.readable {
            c.before_data(h.ino, h.fd.as_fd(), change);
        } else if let Ok(i) = self.inode(h.node) {
            self.cap_data_inode(&*c, &i, change);
        }
    }

    pub(crate) fn cap_data_inode(&self, c: &dyn Preserver, i: &Inode, change: DataChange) {
        if let Ok(r) = self.fd(i).and_then(|p| sys::reopen(p.as_fd(), libc::O_RDONLY | libc::O_NONBLOCK)) {
            c.before_data(i.ino, r.as_fd(), change);
        }
    }

    pub(crate) fn cap_meta(&self, i: &Inode) {
        if let Some(c) = self.cap() {
            if let Ok(fd) = self.fd(i) {
                c.before_meta(i.ino, fd.as_fd());
            }
        }
    }

    pub(crate) fn cap_dir(&self, d: &Inode) {
        if let Some(c) = self.cap() {
            if let Ok(fd) = self.fd(d) {
                c.before_dir(d.ino, fd.as_fd());
            }
        }
    }

    pub(crate) fn cap_unlink(&self, d: &Inode, name: &std::ffi::CString) {
        if let Some(c) = self.cap() {
            if let Ok(fd) = self.fd(d) {
                c.before_unlink(d.ino, fd.as_fd(), name);
            }
        }
    }

    /// A directory descriptor of the backing root (never the mount).
    pub fn root_fd(&self) -> BorrowedFd<'_> {
        self.mount_fd.as_fd()
    }

    pub fn options(&self) -> &Options {
        &self.opts
    }

    pub fn root_ino(&self) -> u64 {
        self.root_ino
    }

    /// Number of inodes the kernel currently holds references to.
    pub fn inode_count(&self) -> usize {
        self.table.read_locked().by_node.len()
    }

    /// The reserved name (see [`reserved`]) `name` is in `parent`, if any.
    pub(crate) fn reserved(&self, parent: &Inode, name: &OsStr) -> Option<Reserved> {
        if parent.nodeid == ROOT {
            Reserved::at_root(name.as_bytes())
        } else {
            None
        }
    }

    pub(crate) fn entry_for(&self, parent: &Inode, name: &OsStr) -> SysResult<Entry> {
        let c = cstr(name)?;
        let fd = sys::open_path(self.fd(parent)?.as_fd(), &c)?;
        let st = sys::fstat(fd.as_fd())?;
        let nodeid = self.remember(fd, &st, parent.ino, name);
        Ok(Entry { nodeid, attr: Attr::of(&st, nodeid) })
    }

    pub fn lookup(&self, parent: u64, name: &OsStr) -> SysResult<Entry> {
        let p = self.inode(parent)?;
        // (the adapter routes `.snapshots` to the view before this)
        if self.reserved(&p, name).is_some() {
            return Err(Errno::ENOENT);
        }
        self.entry_for(&p, name)
    }

    pub fn getattr(&self, nodeid: u64, fh: Option<u64>) -> SysResult<Attr> {
        let st = match fh.and_then(|fh| self.file(fh).ok()) {
            Some(h) => sys::fstat(h.fd.as_fd())?,
            None => sys::fstat(self.fd(&*self.inode(nodeid)?)?.as_fd())?,
        };
        // The root shows its backing number; the kernel knows it as node 1.
        Ok(Attr::of(&st, if nodeid == ROOT { st.st_ino } else { nodeid }))
    }

    pub(crate) fn proc_path(fd: &Arc<OwnedFd>) -> std::ffi::CString {
        sys::proc_fd_path(fd.as_raw_fd())
    }

    pub fn setattr(&self, ctx: &Ctx, nodeid: u64, a: &SetAttr) -> SysResult<Attr> {
        let _writers = self.writer();
        let i = self.inode(nodeid)?;
        let handle = a.fh.and_then(|fh| self.file(fh).ok());
        let kind = i.kind();
        // An unlinked file (still open) is in no snapshot: nothing to track.
        let track = linked(&sys::fstat(self.fd(&i)?.as_fd())?);
        if let Some(size) = a.size {
            if let Some(c) = self.cap() {
                self.cap_data_inode(&*c, &i, DataChange::Truncate { size });
            }
        }
        self.cap_meta(&i);
        if track && (a.mode.is_some() || a.uid.is_some() || a.gid.is_some() || a.atime.is_some() || a.mtime.is_some()) {
            self.observer.meta(self, i.ino, kind);
        }
        if a.uid.is_some() || a.gid.is_some() {
            let uid = a.uid.unwrap_or(u32::MAX);
            let gid = a.gid.unwrap_or(u32::MAX);
            // SAFETY: every pointer is to a buffer or C string that outlives the call, passed with its true length; the result is checked.
            cvt(unsafe {
                libc::fchownat(
                    self.fd(&i)?.as_raw_fd(),
                    c"".as_ptr(),
                    uid,
                    gid,
                    libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
                )
            })?;
        }
        if let Some(mode) = a.mode {
            let mode = mode & 0o7777;
            match &handle {
                // SAFETY: a system call on descriptors and values we own, without pointers; the result is checked.
                Some(h) => cvt(unsafe { libc::fchmod(h.fd.as_raw_fd(), mode) })?,
                None if i.is_symlink() => return Err(Errno::EOPNOTSUPP),
                // SAFETY: every pointer is to a buffer or C string that outlives the call, passed with its true length; the result is checked.
                None => cvt(unsafe { libc::chmod(Self::proc_path(&self.fd(&i)?).as_ptr(), mode) })?,
            };
        }
        if let Some(size) = a.size {
            let reopened;
            let fd = match &handle {
                Some(h) => h.fd.as_fd(),
                None => {
                    if i.is_dir() {
                        return Err(Errno::EISDIR);
                    }
                    reopened = sys::reopen(self.fd(&i)?.as_fd(), libc::O_WRONLY)?;
                    reopened.as_fd()
                }
            };
            let old = sys::fstat(fd)?.st_size as u64;
            if track {
                self.observer.set_size(self, i.ino, old, size);
            }
            let _kill = WithoutFsetid::new(ctx.uid != 0);
            // SAFETY: a system call on descriptors and values we own, without pointers; the result is checked.
            cvt(unsafe { libc::ftruncate(fd.as_raw_fd(), size as i64) })?;
        }
        if a.atime.is_some() || a.mtime.is_some() {
            let times = [timespec(a.atime), timespec(a.mtime)];
            let mut k = i.kmtime.locked();
            // SAFETY: a valid descriptor, an empty name with AT_EMPTY_PATH,
            // and two timespecs.
            cvt(unsafe {
                libc::utimensat(
                    self.fd(&i)?.as_raw_fd(),
                    c"".as_ptr(),
                    times.as_ptr(),
                    libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
                )
            })?;
            match a.mtime {
                Some(TimeSpec::At(_)) => *k = times[1],
                Some(TimeSpec::Now) => *k = mtime_of(&sys::fstat(self.fd(&i)?.as_fd())?),
                None => {}
            }
        } else if a.size.is_some() {
            // a truncate the kernel sent without its time
            if let Some(h) = &handle {
                self.keep_kernel_mtime(&i, h.fd.as_fd());
            } else if let Ok(fd) = sys::reopen(self.fd(&i)?.as_fd(), libc::O_WRONLY) {
                self.keep_kernel_mtime(&i, fd.as_fd());
            }
        }
        self.getattr(nodeid, a.fh)
    }

    pub fn readlink(&self, nodeid: u64) -> SysResult<Vec<u8>> {
        let i = self.inode(nodeid)?;
        sys::readlinkat(self.fd(&i)?.as_fd())
    }

    /// Create a node with `make` running as the caller, then register it.
    pub(crate) fn make_node(
        &self,
        ctx: &Ctx,
        parent: u64,
        name: &OsStr,
        make: impl FnOnce(BorrowedFd<'_>, &std::ffi::CStr) -> SysResult<()>,
    ) -> SysResult<Entry> {
        let _writers = self.writer();
        let p = self.inode(parent)?;
        if let Some(r) = self.reserved(&p, name) {
            return Err(r.on_create());
        }
        let c = cstr(name)?;
        self.cap_dir(&p);
        self.observer.entries(self, p.ino);
        {
            let _as = AsCaller::new(ctx.uid, ctx.gid);
            make(self.fd(&p)?.as_fd(), &c)?;
        }
        let e = self.entry_for(&p, name)?;
        self.observer.created(self, p.ino, name, e.attr.ino, Kind::from_mode(e.attr.st.st_mode));
        Ok(e)
    }

    pub fn mkdir(&self, ctx: &Ctx, parent: u64, name: &OsStr, mode: u32) -> SysResult<Entry> {
        self.make_node(ctx, parent, name, |dir, c| {
            // SAFETY: every pointer is to a buffer or C string that outlives the call, passed with its true length; the result is checked.
            cvt(unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), mode) }).map(|_| ())
        })
    }

    pub fn mknod(&self, ctx: &Ctx, parent: u64, name: &OsStr, mode: u32, rdev: u32) -> SysResult<Entry> {
        self.make_node(ctx, parent, name, |dir, c| {
            // SAFETY: every pointer is to a buffer or C string that outlives the call, passed with its true length; the result is checked.
            cvt(unsafe { libc::mknodat(dir.as_raw_fd(), c.as_ptr(), mode, rdev as libc::dev_t) }).map(|_| ())
        })
    }

    pub fn symlink(&self, ctx: &Ctx, parent: u64, name: &OsStr, target: &OsStr) -> SysResult<Entry> {
        let t = cstr(target)?;
        self.make_node(ctx, parent, name, |dir, c| {
            // SAFETY: every pointer is to a buffer or C string that outlives the call, passed with its true length; the result is checked.
            cvt(unsafe { libc::symlinkat(t.as_ptr(), dir.as_raw_fd(), c.as_ptr()) }).map(|_| ())
        })
    }

    pub fn link(&self, nodeid: u64, newparent: u64, newname: &OsStr) -> SysResult<Entry> {
        let _writers = self.writer();
        let i = self.inode(nodeid)?;
        let p = self.inode(newparent)?;
        if let Some(r) = self.reserved(&p, newname) {
            return Err(r.on_create());
        }
        let c = cstr(newname)?;
        self.cap_dir(&p);
        self.cap_meta(&i);
        self.observer.entries(self, p.ino);
        self.observer.linked(self, i.ino, i.kind());
        // SAFETY: every pointer is to a buffer or C string that outlives the call, passed with its true length; the result is checked.
        cvt(unsafe {
            libc::linkat(
                self.fd(&i)?.as_raw_fd(),
                c"".as_ptr(),
                self.fd(&p)?.as_raw_fd(),
                c.as_ptr(),
                libc::AT_EMPTY_PATH,
            )
        })?;
        let fd = sys::open_path(self.fd(&p)?.as_fd(), &c)?;
        let st = sys::fstat(fd.as_fd())?;
        // Keep the name the inode was known by; add a lookup reference.
        let node = {
            let t = self.table.read_locked();
            t.by_key.get(&(st.st_dev, st.st_ino)).copied()
        };
        let nodeid = match node {
            Some(n) if n == nodeid => {
                i.nlookup.fetch_add(1, Ordering::SeqCst);
                i.set_link(p.ino, newname);
                n
            }
            _ => self.remember(fd, &st, p.ino, newname),
        };
        Ok(Entry { nodeid, attr: Attr::of(&st, nodeid) })
    }

    pub fn unlink(&self, parent: u64, name: &OsStr) -> SysResult<()> {
        self.remove(parent, name, 0)
    }

    pub fn rmdir(&self, parent: u64, name: &OsStr) -> SysResult<()> {
        self.remove(parent, name, libc::AT_REMOVEDIR)
    }

    pub(crate) fn remove(&self, parent: u64, name: &OsStr, flags: i32) -> SysResult<()> {
        let _writers = self.writer();
        let p = self.inode(parent)?;
        if let Some(r) = self.reserved(&p, name) {
            return Err(r.on_remove());
        }
        let c = cstr(name)?;
        let st = sys::fstatat(self.fd(&p)?.as_fd(), &c)?;
        let last = sys::is_dir(&st) || st.st_nlink <= 1;
        self.cap_unlink(&p, &c);
        self.observer.entries(self, p.ino);
        if last {
            self.pin(st.st_dev, st.st_ino);
        } else {
            self.observer.meta(self, st.st_ino, Kind::from_mode(st.st_mode));
        }
        // SAFETY: every pointer is to a buffer or C string that outlives the call, passed with its true length; the result is checked.
        cvt(unsafe { libc::unlinkat(self.fd(&p)?.as_raw_fd(), c.as_ptr(), flags) })?;
        if last {
            self.observer.gone(st.st_ino);
        } else {
            self.unlinked_name(&st, p.ino, name);
        }
        Ok(())
    }

    pub fn rename(&self, parent: u64, name: &OsStr, newparent: u64, newname: &OsStr, flags: u32) -> SysResult<()> {
        let _writers = self.writer();
        let p = self.inode(parent)?;
        let np = self.inode(newparent)?;
        if let Some(r) = self.reserved(&p, name).or(self.reserved(&np, newname)) {
            return Err(r.on_rename());
        }
        let c = cstr(name)?;
        let nc = cstr(newname)?;
        let src = sys::fstatat(self.fd(&p)?.as_fd(), &c)?;
        let dst = sys::fstatat(self.fd(&np)?.as_fd(), &nc).ok();
        // both names change: keep what was at either, and both listings
        self.cap_unlink(&p, &c);
        if dst.is_some() {
            self.cap_unlink(&np, &nc);
        } else {
            self.cap_dir(&np);
        }
        self.observer.entries(self, p.ino);
        self.observer.entries(self, np.ino);
        self.observer.meta(self, src.st_ino, Kind::from_mode(src.st_mode));
        if let Some(d) = &dst {
            self.observer.meta(self, d.st_ino, Kind::from_mode(d.st_mode));
            let replaced = flags & libc::RENAME_EXCHANGE == 0 && (sys::is_dir(d) || d.st_nlink <= 1);
            if replaced && d.st_ino != src.st_ino {
                self.pin(d.st_dev, d.st_ino);
            }
        }
        // SAFETY: every pointer is to a buffer or C string that outlives the call, passed with its true length; the result is checked.
        cvt(unsafe {
            libc::renameat2(self.fd(&p)?.as_raw_fd(), c.as_ptr(), self.fd(&np)?.as_raw_fd(), nc.as_ptr(), flags)
        })?;
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        if let Some(d) = &dst {
            if d.st_ino == src.st_ino {
                // rename between two links of one inode: nothing moved
                return Ok(());
            }
            if exchange {
                self.observer.moved(self, d.st_ino, Kind::from_mode(d.st_mode), p.ino, name);
                self.relink(d.st_dev, d.st_ino, (np.ino, newname), (p.ino, name));
            } else if sys::is_dir(d) || d.st_nlink <= 1 {
                self.observer.gone(d.st_ino);
            } else {
                self.unlinked_name(d, np.ino, newname);
            }
        }
        self.observer.moved(self, src.st_ino, Kind::from_mode(src.st_mode), np.ino, newname);
        self.relink(src.st_dev, src.st_ino, (p.ino, name), (np.ino, newname));
        Ok(())
    }

    /// `parent/name` no longer names the inode `st` (which has other links):
    /// forget that link, and record the change under a link it still has so
    /// its directories are marked.
    pub(crate) fn unlinked_name(&self, st: &Stat, parent: u64, name: &OsStr) {
        let node = {
            let t = self.table.read_locked();
            t.by_key.get(&(st.st_dev, st.st_ino)).and_then(|n| t.by_node.get(n)).cloned()
        };
        if let Some((p, n)) = node.and_then(|i| i.drop_link(parent, name)) {
            self.observer.moved(self, st.st_ino, Kind::from_mode(st.st_mode), p, &n);
        }
    }

    /// `from` no longer names inode `(dev, ino)`; `to` does.
    pub(crate) fn relink(&self, dev: u64, ino: u64, from: (u64, &OsStr), to: (u64, &OsStr)) {
        let t = self.table.read_locked();
        if let Some(i) = t.by_key.get(&(dev, ino)).and_then(|n| t.by_node.get(n)) {
            i.drop_link(from.0, from.1);
            i.set_link(to.0, to.1);
        }
    }

    pub fn statfs(&self) -> SysResult<libc::statvfs> {
        let i = self.inode(ROOT)?;
        let mut s = std::mem::MaybeUninit::<libc::statvfs>::uninit();
        // SAFETY: every pointer is to a buffer or C string that outlives the call, passed with its true length; the result is checked.
        cvt(unsafe { libc::fstatvfs(self.fd(&i)?.as_raw_fd(), s.as_mut_ptr()) })?;
        // SAFETY: the call before succeeded, so the kernel filled the value in.
        Ok(unsafe { s.assume_init() })
    }
}

/// Whether an inode is reachable by a name (an unlinked file that is still
/// open belongs to no snapshot).
pub(crate) fn linked(st: &Stat) -> bool {
    st.st_nlink > 0 || sys::is_dir(st)
}

/// Name bytes for logs.
pub fn show(name: &OsStr) -> String {
    String::from_utf8_lossy(name.as_bytes()).into_owned()
}

#[cfg(test)]
mod tests {
    //! `LiveFs` without a mount: the parts that need no kernel.
    use super::*;
    use crate::repo::state::StateDb;
    use crate::tracker::Tracker;
    use crate::util::Locked;
    use std::ffi::OsStr;

    fn live() -> (tempfile::TempDir, LiveFs, Arc<Tracker>) {
        let t = tempfile::tempdir().unwrap();
        let root = std::fs::File::open(t.path()).unwrap();
        let st = sys::fstat(root.as_fd()).unwrap();
        let db = StateDb::temporary();
        let (tracker, _) = Tracker::open(&db, 4096, st.st_ino, "/test").unwrap();
        let tracker = Arc::new(tracker);
        let fs = LiveFs::new(root.as_fd(), tracker.clone(), Options::default()).unwrap();
        (t, fs, tracker)
    }

    #[test]
    fn reserved_names_answer_as_the_rule_says() {
        let (t, fs, _) = live();
        let c = Ctx::root();
        let e = |r: SysResult<Entry>| r.err();
        assert_eq!(e(fs.mkdir(&c, ROOT, OsStr::new(".snapshots"), 0o755)), Some(Errno::EEXIST));
        assert_eq!(e(fs.mkdir(&c, ROOT, OsStr::new(".snapfs"), 0o755)), Some(Errno::EPERM));
        assert_eq!(e(fs.symlink(&c, ROOT, OsStr::new(".snapfs"), OsStr::new("x"))), Some(Errno::EPERM));
        assert_eq!(e(fs.lookup(ROOT, OsStr::new(".snapfs"))), Some(Errno::ENOENT));
        assert_eq!(fs.unlink(ROOT, OsStr::new(".snapfs")).err(), Some(Errno::ENOENT));
        assert_eq!(fs.rmdir(ROOT, OsStr::new(".snapshots")).err(), Some(Errno::EROFS));
        let d = fs.mkdir(&c, ROOT, OsStr::new("d"), 0o755).unwrap();
        assert_eq!(fs.rename(ROOT, OsStr::new("d"), ROOT, OsStr::new(".snapshots"), 0).err(), Some(Errno::EROFS));
        assert_eq!(fs.rename(ROOT, OsStr::new("d"), ROOT, OsStr::new(".snapfs"), 0).err(), Some(Errno::EPERM));
        // below the root they are ordinary names
        fs.mkdir(&c, d.nodeid, OsStr::new(".snapfs"), 0o755).unwrap();
        assert!(t.path().join("d/.snapfs").is_dir());
        assert!(!t.path().join(".snapfs").exists());
    }

    #[test]
    fn changes_are_tracked_before_they_are_made() {
        let (t, fs, tracker) = live();
        let c = Ctx::root();
        let (e, o) = fs.create(&c, ROOT, OsStr::new("f"), 0o644, libc::O_RDWR).unwrap();
        fs.write(o.fh, 0, &[7u8; 10_000], false).unwrap();
        fs.release(o.fh);
        let s = tracker.summary();
        assert_eq!((s.files, s.dirs), (1, 1), "{s:?}");
        assert_eq!(std::fs::read(t.path().join("f")).unwrap(), vec![7u8; 10_000]);
        fs.unlink(ROOT, OsStr::new("f")).unwrap();
        assert_eq!(tracker.summary().files, 0, "a removed file is forgotten");
        assert!(fs.getattr(e.nodeid, None).is_ok(), "the node stays until the kernel forgets it");
    }

    /// Records what it is told, and the size the file had then.
    struct Recorder {
        file: std::path::PathBuf,
        seen: std::sync::Mutex<Vec<String>>,
    }

    impl ChangeObserver for Recorder {
        fn write(&self, _: &dyn Ancestry, _ino: u64, off: u64, len: u64, old_size: u64) {
            let now = std::fs::metadata(&self.file).map(|m| m.len()).unwrap_or(0);
            self.seen.locked().push(format!("write {off}+{len} of {old_size} (file {now})"));
        }
        fn set_size(&self, _: &dyn Ancestry, _: u64, old: u64, new: u64) {
            self.seen.locked().push(format!("size {old}->{new}"));
        }
        fn touch_range(&self, _: &dyn Ancestry, _: u64, _: u64, _: u64, _: u64) {
            self.seen.locked().push("touch".into());
        }
        fn shift(&self, _: &dyn Ancestry, _: u64, _: u64, _: u64) {
            self.seen.locked().push("shift".into());
        }
        fn meta(&self, _: &dyn Ancestry, _: u64, _: Kind) {
            self.seen.locked().push("meta".into());
        }
        fn entries(&self, _: &dyn Ancestry, dir: u64) {
            self.seen.locked().push(format!("entries {}", if dir == 0 { "?" } else { "dir" }));
        }
        fn created(&self, _: &dyn Ancestry, _: u64, name: &OsStr, _: u64, _: Kind) {
            self.seen.locked().push(format!("created {}", name.to_string_lossy()));
        }
        fn linked(&self, _: &dyn Ancestry, _: u64, _: Kind) {
            self.seen.locked().push("linked".into());
        }
        fn moved(&self, _: &dyn Ancestry, _: u64, _: Kind, _: u64, name: &OsStr) {
            self.seen.locked().push(format!("moved {}", name.to_string_lossy()));
        }
        fn gone(&self, _: u64) {
            self.seen.locked().push("gone".into());
        }
        fn observe_size(&self, _: u64, size: u64) {
            self.seen.locked().push(format!("size is {size}"));
        }
    }

    #[test]
    fn the_observer_hears_of_each_change_before_it_is_made() {
        let t = tempfile::tempdir().unwrap();
        let root = std::fs::File::open(t.path()).unwrap();
        let rec = Arc::new(Recorder { file: t.path().join("f"), seen: Default::default() });
        let fs = LiveFs::new(root.as_fd(), rec.clone(), Options::default()).unwrap();
        let c = Ctx::root();
        let (_, o) = fs.create(&c, ROOT, OsStr::new("f"), 0o644, libc::O_RDWR).unwrap();
        fs.write(o.fh, 0, b"hello", false).unwrap();
        fs.write(o.fh, 5, b" world", false).unwrap();
        fs.release(o.fh);
        fs.rename(ROOT, OsStr::new("f"), ROOT, OsStr::new("g"), 0).unwrap();
        fs.unlink(ROOT, OsStr::new("g")).unwrap();
        let seen = rec.seen.locked().clone();
        assert_eq!(
            seen,
            [
                "entries dir",
                "created f",
                // told before: the file is still as it was
                "write 0+5 of 0 (file 0)",
                "write 5+6 of 5 (file 5)",
                "entries dir",
                "entries dir",
                "meta",
                "moved g",
                "entries dir",
                "gone",
            ],
            "{seen:?}"
        );
    }
    /// Saves, at each call, what the descriptor still shows.
    #[derive(Default)]
    struct Saver {
        seen: std::sync::Mutex<Vec<String>>,
    }

    impl Preserver for Saver {
        fn before_data(&self, _: u64, fd: BorrowedFd<'_>, change: DataChange) {
            let mut buf = vec![0u8; 64];
            let n = sys::pread_full(fd, &mut buf, 0).unwrap();
            let old = String::from_utf8_lossy(&buf[..n]).into_owned();
            self.seen.locked().push(format!("data {change:?} of {old:?}"));
        }
        fn before_meta(&self, _: u64, fd: BorrowedFd<'_>) {
            self.seen.locked().push(format!("meta mode {:o}", sys::fstat(fd).unwrap().st_mode & 0o7777));
        }
        fn before_dir(&self, _: u64, fd: BorrowedFd<'_>) {
            let names = sys::list_dir(fd).unwrap().into_iter().map(|d| d.name.to_string_lossy().into_owned());
            let mut names: Vec<String> = names.filter(|n| n != "." && n != "..").collect();
            names.sort();
            self.seen.locked().push(format!("dir {names:?}"));
        }
        fn before_unlink(&self, _: u64, dir: BorrowedFd<'_>, name: &std::ffi::CStr) {
            let there = sys::open_path(dir, name).is_ok();
            self.seen.locked().push(format!("unlink {} (there: {there})", name.to_string_lossy()));
        }
    }

    #[test]
    fn the_preserver_sees_the_state_each_change_destroys() {
        let (t, fs, _) = live();
        let c = Ctx::root();
        let (e, o) = fs.create(&c, ROOT, OsStr::new("f"), 0o644, libc::O_RDWR).unwrap();
        fs.write(o.fh, 0, b"old", false).unwrap();
        let saver = Arc::new(Saver::default());
        fs.begin_preserving(saver.clone());
        fs.write(o.fh, 0, b"new", false).unwrap();
        let chmod = SetAttr { mode: Some(0o600), ..Default::default() };
        fs.setattr(&c, e.nodeid, &chmod).unwrap();
        fs.release(o.fh);
        fs.unlink(ROOT, OsStr::new("f")).unwrap();
        fs.end_preserving();
        fs.mkdir(&c, ROOT, OsStr::new("d"), 0o755).unwrap();
        fs.begin_preserving(saver.clone());
        fs.mkdir(&c, ROOT, OsStr::new("e"), 0o755).unwrap();
        fs.end_preserving();
        fs.mkdir(&c, ROOT, OsStr::new("later"), 0o755).unwrap();
        let seen = saver.seen.locked().clone();
        assert_eq!(
            seen,
            ["data Range { off: 0, len: 3 } of \"old\"", "meta mode 644", "unlink f (there: true)", "dir [\"d\"]",],
            "{seen:?}"
        );
        assert!(!t.path().join("f").exists() && t.path().join("later").is_dir());
    }
}
