//! The live view: a POSIX passthrough over the backing directory that tells
//! the [`Tracker`] about every change before making it.
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

use fuser::{FileAttr, FileType};

use crate::os::creds::{AsCaller, WithoutFsetid};
use crate::os::errno::{cvt, Errno, SysResult};
use crate::os::sys::{self, cstr, Stat};
use crate::snapshot::capture::{Capture, DataChange};
use crate::tracker::{Ancestry, Kind, Tracker};
use crate::util::{Locked, RwLocked};

pub mod reserved;
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
        Options { writeback: false, attr_ttl: Duration::from_secs(10), entry_ttl: Duration::from_secs(10) }
    }
}

/// How we reach a backing inode.
enum Anchor {
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
    anchor: Mutex<Anchor>,
    pub dev: u64,
    pub ino: u64,
    pub mode: u32,
    nlookup: AtomicU64,
    /// Known to have no `security.capability` xattr. The kernel asks for it
    /// before every write (FUSE has no SB_NOSEC); only a setxattr, which
    /// goes through us, can add one.
    no_caps: AtomicBool,
    /// The links we have seen it under: (backing inode of the parent, name),
    /// most recent last. Every name change goes through us, so removed
    /// names are dropped here and the rest stay true.
    links: Mutex<Vec<(u64, OsString)>>,
    /// A regular file's mtime as the kernel has it. With the writeback
    /// cache the kernel keeps mtime itself: it takes ours once, when it
    /// first learns the inode (the stat this starts as), and from then on
    /// changes it on its own and sends it in a SETATTR (which updates this)
    /// when it writes the inode back, before or after the data. So every
    /// change we make to the file's data puts this back afterwards: the
    /// backing mtime is always the kernel's (see "Times with the writeback
    /// cache" in doc/DESIGN.md). Held while the backing mtime is set.
    kmtime: Mutex<libc::timespec>,
}

fn mtime_of(st: &Stat) -> libc::timespec {
    libc::timespec { tv_sec: st.st_mtime, tv_nsec: st.st_mtime_nsec }
}

impl Inode {
    pub fn kind(&self) -> Kind {
        Kind::from_mode(self.mode)
    }
    fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFDIR
    }
    fn is_symlink(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFLNK
    }
    fn set_link(&self, parent: u64, name: &OsStr) {
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
    fn drop_link(&self, parent: u64, name: &OsStr) -> Option<(u64, OsString)> {
        let mut l = self.links.locked();
        l.retain(|(p, n)| !(*p == parent && n == name));
        l.last().cloned()
    }

    fn current_link(&self) -> Option<(u64, OsString)> {
        self.links.locked().last().cloned()
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
    /// Offset the descriptor is positioned at (`-1`: unknown).
    pos: Mutex<i64>,
}

#[derive(Default)]
struct Table {
    by_node: HashMap<u64, Arc<Inode>>,
    by_key: HashMap<(u64, u64), u64>,
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
    pub attr: FileAttr,
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
    capture: RwLock<Option<Arc<Capture>>>,
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
    tracker: Arc<Tracker>,
    root_dev: u64,
    root_ino: u64,
    opts: Options,
}

thread_local! {
    static READ_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
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

fn dtype_to_filetype(d: u8) -> FileType {
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

/// Build the attributes the kernel sees from a backing stat.
pub fn attr_from_stat(st: &Stat) -> FileAttr {
    FileAttr {
        ino: fuser::INodeNo(st.st_ino),
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

/// Attributes as the kernel must see them for node `nodeid`.
pub fn attr_for(st: &Stat, nodeid: u64) -> FileAttr {
    let mut a = attr_from_stat(st);
    a.ino = fuser::INodeNo(nodeid);
    a
}

fn timespec(t: Option<TimeSpec>) -> libc::timespec {
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
    pub fn new(root: BorrowedFd<'_>, tracker: Arc<Tracker>, opts: Options) -> SysResult<LiveFs> {
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
            capture: RwLock::new(None),
            table: RwLock::new(t),
            fds: Mutex::new(lru::LruCache::new(std::num::NonZeroUsize::new(cap).unwrap())),
            mount_fd,
            mount_id,
            next_node: AtomicU64::new(EXTRA_NODES),
            files: RwLock::new(HashMap::new()),
            dirs: RwLock::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            tracker,
            root_dev: st.st_dev,
            root_ino: st.st_ino,
            opts,
        })
    }

    fn writer(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.gate.read_locked()
    }

    /// Hold all changes off (a snapshot's point in time).
    pub fn pause_writers(&self) -> std::sync::RwLockWriteGuard<'_, ()> {
        self.gate.write_locked()
    }

    /// From now on, let `c` save what each change would destroy.
    pub fn begin_capture(&self, c: Arc<Capture>) {
        *self.capture.write_locked() = Some(c);
    }

    pub fn end_capture(&self) {
        *self.capture.write_locked() = None;
    }

    fn cap(&self) -> Option<Arc<Capture>> {
        self.capture.read_locked().clone()
    }

    /// Copy-before-write of a data change through an open file.
    fn cap_data(&self, h: &Handle, change: DataChange) {
        let Some(c) = self.cap() else { return };
        if h.readable {
            c.before_data(h.ino, h.fd.as_fd(), change);
        } else if let Ok(i) = self.inode(h.node) {
            self.cap_data_inode(&c, &i, change);
        }
    }

    fn cap_data_inode(&self, c: &Capture, i: &Inode, change: DataChange) {
        if let Ok(r) = self.fd(i).and_then(|p| sys::reopen(p.as_fd(), libc::O_RDONLY | libc::O_NONBLOCK)) {
            c.before_data(i.ino, r.as_fd(), change);
        }
    }

    fn cap_meta(&self, i: &Inode) {
        if let Some(c) = self.cap() {
            if let Ok(fd) = self.fd(i) {
                c.before_meta(i.ino, fd.as_fd());
            }
        }
    }

    fn cap_dir(&self, d: &Inode) {
        if let Some(c) = self.cap() {
            if let Ok(fd) = self.fd(d) {
                c.before_dir(d.ino, fd.as_fd());
            }
        }
    }

    fn cap_unlink(&self, d: &Inode, name: &std::ffi::CString) {
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

    pub fn tracker(&self) -> &Arc<Tracker> {
        &self.tracker
    }

    pub fn root_ino(&self) -> u64 {
        self.root_ino
    }

    /// Number of inodes the kernel currently holds references to.
    pub fn inode_count(&self) -> usize {
        self.table.read_locked().by_node.len()
    }

    fn link_of(&self, ino: u64) -> Option<(u64, OsString)> {
        let t = self.table.read_locked();
        let node = t.by_key.get(&(self.root_dev, ino))?;
        t.by_node.get(node)?.current_link()
    }

    pub fn inode(&self, nodeid: u64) -> SysResult<Arc<Inode>> {
        let t = self.table.read_locked();
        t.by_node.get(&nodeid).cloned().ok_or(Errno::ENOENT)
    }

    fn file(&self, fh: u64) -> SysResult<Arc<Handle>> {
        self.files.read_locked().get(&fh).cloned().ok_or(Errno::EBADF)
    }

    fn dir(&self, fh: u64) -> SysResult<Arc<DirHandle>> {
        self.dirs.read_locked().get(&fh).cloned().ok_or(Errno::EBADF)
    }

    /// The reserved name (see [`reserved`]) `name` is in `parent`, if any.
    fn reserved(&self, parent: &Inode, name: &OsStr) -> Option<Reserved> {
        if parent.nodeid == ROOT {
            Reserved::at_root(name.as_bytes())
        } else {
            None
        }
    }

    /// How to reach the inode `fd` refers to from now on; the descriptor
    /// goes to the cache when a handle will do.
    fn anchor_for(&self, fd: OwnedFd, st: &Stat) -> (Anchor, Option<Arc<OwnedFd>>) {
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
    fn remember(&self, fd: OwnedFd, st: &Stat, parent_ino: u64, name: &OsStr) -> u64 {
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
    fn cache_fd(&self, node: u64, fd: OwnedFd) {
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
    fn pin(&self, dev: u64, ino: u64) {
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

    fn entry_for(&self, parent: &Inode, name: &OsStr) -> SysResult<Entry> {
        let c = cstr(name)?;
        let fd = sys::open_path(self.fd(parent)?.as_fd(), &c)?;
        let st = sys::fstat(fd.as_fd())?;
        let nodeid = self.remember(fd, &st, parent.ino, name);
        Ok(Entry { nodeid, attr: attr_for(&st, nodeid) })
    }

    pub fn lookup(&self, parent: u64, name: &OsStr) -> SysResult<Entry> {
        let p = self.inode(parent)?;
        // (the adapter routes `.snapshots` to the view before this)
        if self.reserved(&p, name).is_some() {
            return Err(Errno::ENOENT);
        }
        self.entry_for(&p, name)
    }

    pub fn getattr(&self, nodeid: u64, fh: Option<u64>) -> SysResult<FileAttr> {
        let st = match fh.and_then(|fh| self.file(fh).ok()) {
            Some(h) => sys::fstat(h.fd.as_fd())?,
            None => sys::fstat(self.fd(&*self.inode(nodeid)?)?.as_fd())?,
        };
        // The root shows its backing number; the kernel knows it as node 1.
        Ok(if nodeid == ROOT { attr_from_stat(&st) } else { attr_for(&st, nodeid) })
    }

    fn proc_path(fd: &Arc<OwnedFd>) -> std::ffi::CString {
        sys::proc_fd_path(fd.as_raw_fd())
    }

    pub fn setattr(&self, ctx: &Ctx, nodeid: u64, a: &SetAttr) -> SysResult<FileAttr> {
        let _writers = self.writer();
        let i = self.inode(nodeid)?;
        let handle = a.fh.and_then(|fh| self.file(fh).ok());
        let kind = i.kind();
        // An unlinked file (still open) is in no snapshot: nothing to track.
        let track = linked(&sys::fstat(self.fd(&i)?.as_fd())?);
        if let Some(size) = a.size {
            if let Some(c) = self.cap() {
                self.cap_data_inode(&c, &i, DataChange::Truncate { size });
            }
        }
        self.cap_meta(&i);
        if track && (a.mode.is_some() || a.uid.is_some() || a.gid.is_some() || a.atime.is_some() || a.mtime.is_some()) {
            self.tracker.meta(self, i.ino, kind);
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
                self.tracker.set_size(self, i.ino, old, size);
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
    fn make_node(
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
        self.tracker.entries(self, p.ino);
        {
            let _as = AsCaller::new(ctx.uid, ctx.gid);
            make(self.fd(&p)?.as_fd(), &c)?;
        }
        let e = self.entry_for(&p, name)?;
        self.tracker.created(self, p.ino, name, e.attr.ino.0, Kind::from_mode(mode_of(&e.attr)));
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
        self.tracker.entries(self, p.ino);
        self.tracker.linked(self, i.ino, i.kind());
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
        Ok(Entry { nodeid, attr: attr_for(&st, nodeid) })
    }

    pub fn unlink(&self, parent: u64, name: &OsStr) -> SysResult<()> {
        self.remove(parent, name, 0)
    }

    pub fn rmdir(&self, parent: u64, name: &OsStr) -> SysResult<()> {
        self.remove(parent, name, libc::AT_REMOVEDIR)
    }

    fn remove(&self, parent: u64, name: &OsStr, flags: i32) -> SysResult<()> {
        let _writers = self.writer();
        let p = self.inode(parent)?;
        if let Some(r) = self.reserved(&p, name) {
            return Err(r.on_remove());
        }
        let c = cstr(name)?;
        let st = sys::fstatat(self.fd(&p)?.as_fd(), &c)?;
        let last = sys::is_dir(&st) || st.st_nlink <= 1;
        self.cap_unlink(&p, &c);
        self.tracker.entries(self, p.ino);
        if last {
            self.pin(st.st_dev, st.st_ino);
        } else {
            self.tracker.meta(self, st.st_ino, Kind::from_mode(st.st_mode));
        }
        // SAFETY: every pointer is to a buffer or C string that outlives the call, passed with its true length; the result is checked.
        cvt(unsafe { libc::unlinkat(self.fd(&p)?.as_raw_fd(), c.as_ptr(), flags) })?;
        if last {
            self.tracker.gone(st.st_ino);
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
        self.tracker.entries(self, p.ino);
        self.tracker.entries(self, np.ino);
        self.tracker.meta(self, src.st_ino, Kind::from_mode(src.st_mode));
        if let Some(d) = &dst {
            self.tracker.meta(self, d.st_ino, Kind::from_mode(d.st_mode));
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
                self.tracker.moved(self, d.st_ino, Kind::from_mode(d.st_mode), p.ino, name);
                self.relink(d.st_dev, d.st_ino, (np.ino, newname), (p.ino, name));
            } else if sys::is_dir(d) || d.st_nlink <= 1 {
                self.tracker.gone(d.st_ino);
            } else {
                self.unlinked_name(d, np.ino, newname);
            }
        }
        self.tracker.moved(self, src.st_ino, Kind::from_mode(src.st_mode), np.ino, newname);
        self.relink(src.st_dev, src.st_ino, (p.ino, name), (np.ino, newname));
        Ok(())
    }

    /// `parent/name` no longer names the inode `st` (which has other links):
    /// forget that link, and record the change under a link it still has so
    /// its directories are marked.
    fn unlinked_name(&self, st: &Stat, parent: u64, name: &OsStr) {
        let node = {
            let t = self.table.read_locked();
            t.by_key.get(&(st.st_dev, st.st_ino)).and_then(|n| t.by_node.get(n)).cloned()
        };
        if let Some((p, n)) = node.and_then(|i| i.drop_link(parent, name)) {
            self.tracker.moved(self, st.st_ino, Kind::from_mode(st.st_mode), p, &n);
        }
    }

    /// `from` no longer names inode `(dev, ino)`; `to` does.
    fn relink(&self, dev: u64, ino: u64, from: (u64, &OsStr), to: (u64, &OsStr)) {
        let t = self.table.read_locked();
        if let Some(i) = t.by_key.get(&(dev, ino)).and_then(|n| t.by_node.get(n)) {
            i.drop_link(from.0, from.1);
            i.set_link(to.0, to.1);
        }
    }

    /// Adjust the flags the kernel asked for into the flags we open the backing file with.
    fn backing_flags(&self, flags: i32) -> (i32, bool) {
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

    fn add_file(&self, fd: OwnedFd, ino: u64, node: u64, flags: i32) -> u64 {
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
                self.cap_data_inode(&c, &i, DataChange::Truncate { size: 0 });
            }
        }
        if trunc {
            let old = sys::fstat(self.fd(&i)?.as_fd())?.st_size as u64;
            if old > 0 {
                self.tracker.set_size(self, i.ino, old, 0);
            } else {
                self.tracker.meta(self, i.ino, i.kind());
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
        self.tracker.entries(self, p.ino);
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
        self.tracker.created(self, p.ino, name, st.st_ino, Kind::from_mode(st.st_mode));
        let fh = self.add_file(fd, st.st_ino, nodeid, f);
        Ok((Entry { nodeid, attr: attr_for(&st, nodeid) }, OpenReply { fh, direct_io: direct, keep_cache: !direct }))
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
            self.tracker.write(self, h.ino, off, data.len() as u64, st.st_size as u64);
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

    pub fn opendir(&self, nodeid: u64) -> SysResult<u64> {
        let i = self.inode(nodeid)?;
        let fd = sys::reopen(self.fd(&i)?.as_fd(), libc::O_RDONLY | libc::O_DIRECTORY)?;
        let fh = self.next_fh.fetch_add(1, Ordering::SeqCst);
        let d = DirHandle { fd, nodeid, ino: i.ino, pos: Mutex::new(0) };
        self.dirs.write_locked().insert(fh, Arc::new(d));
        Ok(fh)
    }

    /// List entries from `offset`; `add(ino, next_offset, type, name)` returns
    /// true when the reply is full.
    pub fn readdir(
        &self,
        fh: u64,
        offset: i64,
        mut add: impl FnMut(u64, i64, FileType, &OsStr) -> bool,
    ) -> SysResult<()> {
        let d = self.dir(fh)?;
        let mut pos = d.pos.locked();
        if *pos != offset {
            sys::lseek(d.fd.as_fd(), offset, libc::SEEK_SET)?;
            *pos = offset;
        }
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let batch = sys::getdents(d.fd.as_fd(), &mut buf)?;
            if batch.is_empty() {
                return Ok(());
            }
            for e in batch {
                if reserved::hidden(d.nodeid == ROOT, e.name.as_bytes()) {
                    *pos = e.next_off;
                    continue;
                }
                if add(e.ino, e.next_off, dtype_to_filetype(e.dtype), &e.name) {
                    // Reply full: this entry comes again in the next call,
                    // and the descriptor is past it; reposition then.
                    *pos = -1;
                    return Ok(());
                }
                *pos = e.next_off;
            }
        }
    }

    /// Like [`LiveFs::readdir`], with each entry's attributes. Every entry but
    /// `.` and `..` counts as a lookup (the kernel will forget it), but only
    /// once `add` accepted it.
    pub fn readdirplus(
        &self,
        fh: u64,
        offset: i64,
        mut add: impl FnMut(i64, &OsStr, &FileAttr) -> bool,
    ) -> SysResult<()> {
        let d = self.dir(fh)?;
        let mut pos = d.pos.locked();
        if *pos != offset {
            sys::lseek(d.fd.as_fd(), offset, libc::SEEK_SET)?;
            *pos = offset;
        }
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let batch = sys::getdents(d.fd.as_fd(), &mut buf)?;
            if batch.is_empty() {
                return Ok(());
            }
            for e in batch {
                let hidden = reserved::hidden(d.nodeid == ROOT, e.name.as_bytes());
                let dots = e.name == "." || e.name == "..";
                let full = if hidden {
                    false
                } else if dots {
                    // The kernel does not count lookups of dot entries.
                    let c = cstr(&e.name)?;
                    match sys::fstatat(d.fd.as_fd(), &c) {
                        Ok(st) => add(e.next_off, &e.name, &attr_for(&st, st.st_ino)),
                        Err(_) => false,
                    }
                } else {
                    let c = cstr(&e.name)?;
                    let found = sys::open_path(d.fd.as_fd(), &c).and_then(|fd| Ok((sys::fstat(fd.as_fd())?, fd)));
                    match found {
                        Ok((st, fd)) => {
                            let node = self.remember(fd, &st, d.ino, &e.name);
                            let full = add(e.next_off, &e.name, &attr_for(&st, node));
                            if full {
                                self.forget(node, 1);
                            }
                            full
                        }
                        // vanished since getdents: leave it out
                        Err(_) => false,
                    }
                };
                if full {
                    // this entry comes again in the next call; reposition then
                    *pos = -1;
                    return Ok(());
                }
                *pos = e.next_off;
            }
        }
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

    pub fn statfs(&self) -> SysResult<libc::statvfs> {
        let i = self.inode(ROOT)?;
        let mut s = std::mem::MaybeUninit::<libc::statvfs>::uninit();
        // SAFETY: every pointer is to a buffer or C string that outlives the call, passed with its true length; the result is checked.
        cvt(unsafe { libc::fstatvfs(self.fd(&i)?.as_raw_fd(), s.as_mut_ptr()) })?;
        // SAFETY: the call before succeeded, so the kernel filled the value in.
        Ok(unsafe { s.assume_init() })
    }

    /// Path for the xattr calls that have no `*at` form. Symlinks cannot be
    /// reached through `/proc/self/fd` without following them.
    fn xattr_path(&self, i: &Inode) -> SysResult<std::ffi::CString> {
        if i.is_symlink() {
            return Err(Errno::EPERM);
        }
        Ok(Self::proc_path(&self.fd(i)?))
    }

    pub fn setxattr(&self, nodeid: u64, name: &OsStr, value: &[u8], flags: i32) -> SysResult<()> {
        let _writers = self.writer();
        let i = self.inode(nodeid)?;
        let p = self.xattr_path(&i)?;
        let n = cstr(name)?;
        self.cap_meta(&i);
        self.tracker.meta(self, i.ino, i.kind());
        i.no_caps.store(false, Ordering::SeqCst);
        // SAFETY: every pointer is to a buffer or C string that outlives the call, passed with its true length; the result is checked.
        cvt(unsafe {
            libc::setxattr(p.as_ptr(), n.as_ptr(), value.as_ptr() as *const libc::c_void, value.len(), flags)
        })
        .map(|_| ())
    }

    /// `size == 0` asks for the size only.
    pub fn getxattr(&self, nodeid: u64, name: &OsStr, size: u32) -> SysResult<Vec<u8>> {
        let i = self.inode(nodeid)?;
        if i.is_symlink() {
            return Err(Errno::ENODATA);
        }
        let caps = name == "security.capability";
        if caps && i.no_caps.load(Ordering::SeqCst) {
            return Err(Errno::ENODATA);
        }
        let p = self.xattr_path(&i)?;
        let n = cstr(name)?;
        let mut buf = vec![0u8; size as usize];
        let r =
            // SAFETY: every pointer is to a buffer or C string that outlives the call, passed with its true length; the result is checked.
            cvt(unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr() as *mut libc::c_void, buf.len()) });
        if caps && r == Err(Errno::ENODATA) {
            i.no_caps.store(true, Ordering::SeqCst);
        }
        let r = r?;
        if size == 0 {
            return Ok((r as u32).to_ne_bytes().to_vec());
        }
        buf.truncate(r as usize);
        Ok(buf)
    }

    pub fn listxattr(&self, nodeid: u64, size: u32) -> SysResult<Vec<u8>> {
        let i = self.inode(nodeid)?;
        if i.is_symlink() {
            return Ok(if size == 0 { 0u32.to_ne_bytes().to_vec() } else { Vec::new() });
        }
        let p = self.xattr_path(&i)?;
        let mut buf = vec![0u8; size as usize];
        // SAFETY: every pointer is to a buffer or C string that outlives the call, passed with its true length; the result is checked.
        let r = cvt(unsafe { libc::listxattr(p.as_ptr(), buf.as_mut_ptr() as *mut libc::c_char, buf.len()) })?;
        if size == 0 {
            return Ok((r as u32).to_ne_bytes().to_vec());
        }
        buf.truncate(r as usize);
        Ok(buf)
    }

    pub fn removexattr(&self, nodeid: u64, name: &OsStr) -> SysResult<()> {
        let _writers = self.writer();
        let i = self.inode(nodeid)?;
        let p = self.xattr_path(&i)?;
        let n = cstr(name)?;
        self.cap_meta(&i);
        self.tracker.meta(self, i.ino, i.kind());
        // SAFETY: every pointer is to a buffer or C string that outlives the call, passed with its true length; the result is checked.
        cvt(unsafe { libc::removexattr(p.as_ptr(), n.as_ptr()) }).map(|_| ())
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
            self.tracker.shift(self, h.ino, off, size.saturating_sub(len));
        } else if mode & libc::FALLOC_FL_INSERT_RANGE != 0 {
            self.tracker.shift(self, h.ino, off, size + len);
        } else {
            self.tracker.touch_range(self, h.ino, off, len, size);
            if !keep && end > size {
                self.tracker.set_size(self, h.ino, size, end);
            }
        }
        // SAFETY: a system call on descriptors and values we own, without pointers; the result is checked.
        cvt(unsafe { libc::fallocate(h.fd.as_raw_fd(), mode, off as i64, len as i64) })?;
        self.keep_kernel_mtime_of(h.node, h.fd.as_fd());
        if let Ok(st) = sys::fstat(h.fd.as_fd()) {
            self.tracker.observe_size(h.ino, st.st_size as u64);
        }
        Ok(())
    }

    /// After a change to a regular file's data: with the writeback cache,
    /// put the kernel's mtime back on the backing file (our write moved it
    /// to the time the data reached us; the kernel shows, and later sends,
    /// its own). `fd` is open for writing.
    fn keep_kernel_mtime(&self, i: &Inode, fd: BorrowedFd<'_>) {
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

    fn keep_kernel_mtime_of(&self, node: u64, fd: BorrowedFd<'_>) {
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
            self.tracker.write(self, ho.ino, off_out, len, st.st_size as u64);
        }
        let mut oi = off_in as i64;
        let mut oo = off_out as i64;
        // SAFETY: every pointer is to a buffer or C string that outlives the call, passed with its true length; the result is checked.
        let r = cvt(unsafe {
            libc::copy_file_range(hi.fd.as_raw_fd(), &mut oi, ho.fd.as_raw_fd(), &mut oo, len as usize, flags)
        })?;
        self.keep_kernel_mtime_of(ho.node, ho.fd.as_fd());
        if let Ok(st) = sys::fstat(ho.fd.as_fd()) {
            self.tracker.observe_size(ho.ino, st.st_size as u64);
        }
        Ok(r as u32)
    }
}

/// Whether an inode is reachable by a name (an unlinked file that is still
/// open belongs to no snapshot).
fn linked(st: &Stat) -> bool {
    st.st_nlink > 0 || sys::is_dir(st)
}

fn mode_of(a: &FileAttr) -> u32 {
    match a.kind {
        FileType::Directory => libc::S_IFDIR,
        FileType::Symlink => libc::S_IFLNK,
        FileType::NamedPipe => libc::S_IFIFO,
        FileType::Socket => libc::S_IFSOCK,
        FileType::CharDevice => libc::S_IFCHR,
        FileType::BlockDevice => libc::S_IFBLK,
        FileType::RegularFile => libc::S_IFREG,
    }
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
}
