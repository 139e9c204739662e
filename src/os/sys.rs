//! Thin, safe wrappers over the `*at` system calls the passthrough needs.
//!
//! Everything here works relative to file descriptors of the backing tree,
//! never through a path that could enter snapfs's own mount (invariant 7).
//! Paths of the form `/proc/self/fd/N` name an inode we already hold a
//! descriptor for; they resolve beneath the mount.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::os::errno::{cvt, Errno, SysResult};

pub fn cstr(name: &OsStr) -> SysResult<CString> {
    CString::new(name.as_bytes()).map_err(|_| Errno::EINVAL)
}

/// `/proc/self/fd/N` for a descriptor we hold.
pub fn proc_fd_path(fd: RawFd) -> CString {
    CString::new(format!("/proc/self/fd/{fd}")).expect("no NUL in a number")
}

pub fn openat(dir: BorrowedFd<'_>, name: &CStr, flags: i32, mode: u32) -> SysResult<OwnedFd> {
    // SAFETY: every pointer is to a buffer or C string that outlives the call, passed with its true length; the result is checked.
    let fd = cvt(unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags | libc::O_CLOEXEC, mode) })?;
    // SAFETY: the descriptor was just returned by the kernel (checked) and nothing else owns or closes it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Open a path-only descriptor of `name` in `dir` without following a symlink.
pub fn open_path(dir: BorrowedFd<'_>, name: &CStr) -> SysResult<OwnedFd> {
    openat(dir, name, libc::O_PATH | libc::O_NOFOLLOW, 0)
}

/// Re-open an inode we hold an `O_PATH` descriptor of, with real access flags.
pub fn reopen(fd: BorrowedFd<'_>, flags: i32) -> SysResult<OwnedFd> {
    let p = proc_fd_path(fd.as_raw_fd());
    // SAFETY: every pointer is to a buffer or C string that outlives the call, passed with its true length; the result is checked.
    let r = cvt(unsafe { libc::open(p.as_ptr(), flags | libc::O_CLOEXEC) })?;
    // SAFETY: the descriptor was just returned by the kernel (checked) and nothing else owns or closes it.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

pub type Stat = libc::stat;

pub fn fstat(fd: BorrowedFd<'_>) -> SysResult<Stat> {
    let mut st = MaybeUninit::<Stat>::uninit();
    let empty = c"";
    // SAFETY: every pointer is to a buffer or C string that outlives the call, passed with its true length; the result is checked.
    cvt(unsafe {
        libc::fstatat(fd.as_raw_fd(), empty.as_ptr(), st.as_mut_ptr(), libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW)
    })?;
    // SAFETY: the call before succeeded, so the kernel filled the value in.
    Ok(unsafe { st.assume_init() })
}

pub fn fstatat(dir: BorrowedFd<'_>, name: &CStr) -> SysResult<Stat> {
    let mut st = MaybeUninit::<Stat>::uninit();
    // SAFETY: every pointer is to a buffer or C string that outlives the call, passed with its true length; the result is checked.
    cvt(unsafe { libc::fstatat(dir.as_raw_fd(), name.as_ptr(), st.as_mut_ptr(), libc::AT_SYMLINK_NOFOLLOW) })?;
    // SAFETY: the call before succeeded, so the kernel filled the value in.
    Ok(unsafe { st.assume_init() })
}

pub fn file_type(st: &Stat) -> u32 {
    st.st_mode & libc::S_IFMT
}

pub fn is_dir(st: &Stat) -> bool {
    file_type(st) == libc::S_IFDIR
}

pub fn is_reg(st: &Stat) -> bool {
    file_type(st) == libc::S_IFREG
}

/// (Total: times a `SystemTime` cannot hold, from a damaged or hostile
/// repository, become the nearest one it can.)
pub fn time_from(sec: i64, nsec: i64) -> SystemTime {
    let nsec = Duration::from_nanos(nsec.clamp(0, 999_999_999) as u64);
    let t = if sec >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(sec as u64))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(sec.unsigned_abs()))
    };
    t.and_then(|t| t.checked_add(nsec)).unwrap_or(if sec >= 0 {
        UNIX_EPOCH + Duration::from_secs(i64::MAX as u64 / 2)
    } else {
        UNIX_EPOCH
    })
}

/// ctime of a stat as nanoseconds since the epoch.
pub fn ctime_ns(st: &Stat) -> i128 {
    st.st_ctime as i128 * 1_000_000_000 + st.st_ctime_nsec as i128
}

pub fn now_ns() -> i128 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    }
}

pub fn readlinkat(fd: BorrowedFd<'_>) -> SysResult<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: every pointer is to a buffer or C string that outlives the call, passed with its true length; the result is checked.
    let n = cvt(unsafe {
        libc::readlinkat(fd.as_raw_fd(), c"".as_ptr(), buf.as_mut_ptr() as *mut libc::c_char, buf.len())
    })?;
    buf.truncate(n as usize);
    Ok(buf)
}

/// Read the target of `/proc/self/fd/N` (where that inode lives now).
pub fn fd_path(fd: RawFd) -> Option<OsString> {
    std::fs::read_link(format!("/proc/self/fd/{fd}")).ok().map(|p| p.into_os_string())
}

pub fn pread(fd: BorrowedFd<'_>, buf: &mut [u8], off: u64) -> SysResult<usize> {
    // SAFETY: every pointer is to a buffer or C string that outlives the call, passed with its true length; the result is checked.
    let n = cvt(unsafe { libc::pread(fd.as_raw_fd(), buf.as_mut_ptr() as *mut libc::c_void, buf.len(), off as i64) })?;
    Ok(n as usize)
}

/// Read until `buf` is full or end of file.
pub fn pread_full(fd: BorrowedFd<'_>, buf: &mut [u8], off: u64) -> SysResult<usize> {
    let mut done = 0;
    while done < buf.len() {
        match pread(fd, &mut buf[done..], off + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

pub fn pwrite(fd: BorrowedFd<'_>, buf: &[u8], off: u64) -> SysResult<usize> {
    // SAFETY: every pointer is to a buffer or C string that outlives the call, passed with its true length; the result is checked.
    let n = cvt(unsafe { libc::pwrite(fd.as_raw_fd(), buf.as_ptr() as *const libc::c_void, buf.len(), off as i64) })?;
    Ok(n as usize)
}

/// One entry of a directory as `getdents64` returns it.
pub struct DirEntry {
    pub ino: u64,
    /// Offset of the *next* entry, to resume after this one.
    pub next_off: i64,
    pub dtype: u8,
    pub name: OsString,
}

/// Read a batch of entries from a directory descriptor at its current position.
pub fn getdents(fd: BorrowedFd<'_>, buf: &mut [u8]) -> SysResult<Vec<DirEntry>> {
    // SAFETY: every pointer is to a buffer or C string that outlives the call, passed with its true length; the result is checked.
    let n = cvt(unsafe { libc::syscall(libc::SYS_getdents64, fd.as_raw_fd(), buf.as_mut_ptr(), buf.len()) } as i64)?;
    let mut out = Vec::new();
    let mut pos = 0usize;
    let n = n as usize;
    while pos < n {
        // struct linux_dirent64 { u64 d_ino; i64 d_off; u16 d_reclen; u8 d_type; char d_name[]; }
        let ino = u64::from_ne_bytes(buf[pos..pos + 8].try_into().unwrap());
        let off = i64::from_ne_bytes(buf[pos + 8..pos + 16].try_into().unwrap());
        let reclen = u16::from_ne_bytes(buf[pos + 16..pos + 18].try_into().unwrap()) as usize;
        let dtype = buf[pos + 18];
        let name_bytes = &buf[pos + 19..pos + reclen];
        let len = name_bytes.iter().position(|&b| b == 0).unwrap_or(name_bytes.len());
        out.push(DirEntry { ino, next_off: off, dtype, name: OsString::from_vec(name_bytes[..len].to_vec()) });
        pos += reclen;
    }
    Ok(out)
}

pub fn lseek(fd: BorrowedFd<'_>, off: i64, whence: i32) -> SysResult<i64> {
    // SAFETY: a system call on descriptors and values we own, without pointers; the result is checked.
    cvt(unsafe { libc::lseek(fd.as_raw_fd(), off, whence) })
}

/// Every entry of a directory (without `.` and `..`), read from `dir` (an O_PATH
/// or real descriptor).
pub fn list_dir(dir: BorrowedFd<'_>) -> SysResult<Vec<DirEntry>> {
    let d = reopen(dir, libc::O_RDONLY | libc::O_DIRECTORY)?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut all = Vec::new();
    loop {
        let batch = getdents(std::os::fd::AsFd::as_fd(&d), &mut buf)?;
        if batch.is_empty() {
            break;
        }
        all.extend(batch.into_iter().filter(|e| e.name != "." && e.name != ".."));
    }
    Ok(all)
}

/// Raise this process's open file limit to its hard maximum: a passthrough
/// holds one descriptor per inode the kernel remembers.
pub fn raise_nofile_limit() {
    // SAFETY: every pointer is to a buffer or C string that outlives the call, passed with its true length; the result is checked.
    unsafe {
        let mut rl = MaybeUninit::<libc::rlimit>::uninit();
        if libc::getrlimit(libc::RLIMIT_NOFILE, rl.as_mut_ptr()) == 0 {
            let mut rl = rl.assume_init();
            let mut target = rl.rlim_max;
            if let Ok(s) = std::fs::read_to_string("/proc/sys/fs/nr_open") {
                if let Ok(n) = s.trim().parse::<u64>() {
                    target = target.max(n.min(1 << 20));
                }
            }
            rl.rlim_cur = target;
            rl.rlim_max = rl.rlim_max.max(target);
            if libc::setrlimit(libc::RLIMIT_NOFILE, &rl) != 0 {
                let mut rl2 = MaybeUninit::<libc::rlimit>::uninit();
                libc::getrlimit(libc::RLIMIT_NOFILE, rl2.as_mut_ptr());
                let mut rl2 = rl2.assume_init();
                rl2.rlim_cur = rl2.rlim_max;
                libc::setrlimit(libc::RLIMIT_NOFILE, &rl2);
            }
        }
    }
}

/// Lower the calling thread's CPU priority to `nice` (a nice value is a
/// thread's own on Linux; threads it starts inherit it). Best effort.
pub fn lower_thread_priority(nice: i32) {
    // SAFETY: system calls on values we own, without pointers.
    unsafe {
        let tid = libc::gettid();
        if libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) != 0 {
            log::debug!("setpriority({nice}): {}", std::io::Error::last_os_error());
        }
    }
}

/// A file handle (`struct file_handle`): names an inode without holding it
/// open, valid for the life of the inode on that filesystem.
#[derive(Clone, PartialEq, Eq)]
pub struct FileHandle(Vec<u8>);

const MAX_HANDLE_SZ: usize = 128;

/// The handle of the inode `fd` refers to, and the id of its mount.
pub fn handle_of(fd: BorrowedFd<'_>) -> SysResult<(FileHandle, i32)> {
    // struct file_handle { u32 handle_bytes; i32 handle_type; u8 f_handle[]; }
    let mut buf = vec![0u8; 8 + MAX_HANDLE_SZ];
    buf[..4].copy_from_slice(&(MAX_HANDLE_SZ as u32).to_ne_bytes());
    let mut mount_id: libc::c_int = 0;
    // SAFETY: every pointer is to a buffer or C string that outlives the call, passed with its true length; the result is checked.
    let r = unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            fd.as_raw_fd(),
            c"".as_ptr(),
            buf.as_mut_ptr(),
            &mut mount_id as *mut libc::c_int,
            libc::AT_EMPTY_PATH,
        )
    };
    if r != 0 {
        return Err(Errno::last());
    }
    let n = u32::from_ne_bytes(buf[..4].try_into().unwrap()) as usize;
    buf.truncate(8 + n.min(MAX_HANDLE_SZ));
    Ok((FileHandle(buf), mount_id))
}

/// Open the inode a handle names (needs `CAP_DAC_READ_SEARCH`); `mount_fd`
/// is any descriptor on the same filesystem.
pub fn open_by_handle(mount_fd: BorrowedFd<'_>, h: &FileHandle, flags: i32) -> SysResult<OwnedFd> {
    let mut buf = h.0.clone();
    // SAFETY: every pointer is to a buffer or C string that outlives the call, passed with its true length; the result is checked.
    let r = unsafe {
        libc::syscall(libc::SYS_open_by_handle_at, mount_fd.as_raw_fd(), buf.as_mut_ptr(), flags | libc::O_CLOEXEC)
    };
    if r < 0 {
        return Err(Errno::last());
    }
    // SAFETY: the descriptor was just returned by the kernel (checked) and nothing else owns or closes it.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

/// How many directory descriptors a deep walk keeps open ([`Parking`]).
pub const WALK_WINDOW: usize = 64;

/// The directories a deep walk is in hold descriptors; so that a walk
/// needs few whatever the depth, only the [`WALK_WINDOW`] deepest are
/// open: the others are parked (closed, kept as a file handle) and opened
/// again by it when the walk comes back up. A handle names the inode
/// itself (generation included), so nothing a rename does can make it
/// open another directory. Directories without a handle on the walk's
/// mount (another filesystem, handles unsupported, no
/// `CAP_DAC_READ_SEARCH`) keep their descriptor.
pub struct Parking {
    /// A real descriptor of the walk's mount and its id; `None`: no
    /// parking (handles do not work here).
    mount: Option<(OwnedFd, i32)>,
}

impl Parking {
    /// For a walk from `root`.
    pub fn new(root: BorrowedFd<'_>) -> Parking {
        let mount = handle_of(root).ok().and_then(|(h, id)| {
            let fd = reopen(root, libc::O_RDONLY | libc::O_DIRECTORY).ok()?;
            // only if a handle brings a directory back here
            open_by_handle(fd.as_fd(), &h, libc::O_RDONLY | libc::O_DIRECTORY).ok()?;
            Some((fd, id))
        });
        Parking { mount }
    }

    /// After a level was entered (`open`: the levels' descriptors, deepest
    /// last): park the one that just left the window.
    pub fn entered<'a>(&self, open: impl DoubleEndedIterator<Item = &'a mut LevelFd>) {
        let Some((_, id)) = &self.mount else { return };
        if let Some(l) = open.rev().nth(WALK_WINDOW) {
            l.park(*id);
        }
    }

    /// Park a level now, if it can be.
    pub fn park(&self, l: &mut LevelFd) {
        if let Some((_, id)) = &self.mount {
            l.park(*id);
        }
    }

    /// Open a level's descriptor again if it was parked (ESTALE: the
    /// directory is gone).
    pub fn ensure(&self, l: &mut LevelFd) -> SysResult<()> {
        if l.fd.is_none() {
            let (Some((mount, _)), Some(h)) = (&self.mount, &l.handle) else { return Err(Errno::EBADF) };
            l.fd = Some(open_by_handle(mount.as_fd(), h, libc::O_RDONLY | libc::O_DIRECTORY)?);
        }
        Ok(())
    }
}

/// The descriptor of a directory a walk is in (see [`Parking`]).
pub struct LevelFd {
    fd: Option<OwnedFd>,
    handle: Option<FileHandle>,
}

impl LevelFd {
    pub fn new(fd: OwnedFd) -> LevelFd {
        LevelFd { fd: Some(fd), handle: None }
    }

    /// The descriptor, unless parked (see [`Parking::ensure`]).
    pub fn get(&self) -> SysResult<BorrowedFd<'_>> {
        self.fd.as_ref().map(|fd| fd.as_fd()).ok_or(Errno::EBADF)
    }

    fn park(&mut self, mount_id: i32) {
        if self.handle.is_none() {
            let Some(fd) = &self.fd else { return };
            match handle_of(fd.as_fd()) {
                Ok((h, id)) if id == mount_id => self.handle = Some(h),
                _ => return,
            }
        }
        self.fd = None;
    }
}

/// The soft limit on open descriptors.
pub fn nofile_limit() -> u64 {
    let mut rl = MaybeUninit::<libc::rlimit>::uninit();
    // SAFETY: every pointer is to a buffer or C string that outlives the call, passed with its true length; the result is checked.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, rl.as_mut_ptr()) == 0 {
            return rl.assume_init().rlim_cur;
        }
    }
    1024
}

// Linux 6.13+: the *xattrat system calls (x86_64 and aarch64 share numbers).
const SYS_GETXATTRAT: libc::c_long = 464;
const SYS_LISTXATTRAT: libc::c_long = 465;

#[repr(C)]
struct XattrArgs {
    value: u64,
    size: u32,
    flags: u32,
}

fn listxattr_at(dir: BorrowedFd<'_>, name: &CStr, flags: i32, buf: &mut [u8]) -> SysResult<usize> {
    // SAFETY: every pointer is to a buffer or C string that outlives the call, passed with its true length; the result is checked.
    let r = unsafe {
        libc::syscall(
            SYS_LISTXATTRAT,
            dir.as_raw_fd(),
            name.as_ptr(),
            flags as libc::c_uint,
            buf.as_mut_ptr(),
            buf.len(),
        )
    };
    if r < 0 {
        Err(Errno::last())
    } else {
        Ok(r as usize)
    }
}

fn getxattr_at(dir: BorrowedFd<'_>, name: &CStr, flags: i32, key: &CStr, buf: &mut [u8]) -> SysResult<usize> {
    let mut args = XattrArgs { value: buf.as_mut_ptr() as u64, size: buf.len() as u32, flags: 0 };
    // SAFETY: every pointer is to a buffer or C string that outlives the call, passed with its true length; the result is checked.
    let r = unsafe {
        libc::syscall(
            SYS_GETXATTRAT,
            dir.as_raw_fd(),
            name.as_ptr(),
            flags as libc::c_uint,
            key.as_ptr(),
            &mut args as *mut XattrArgs,
            std::mem::size_of::<XattrArgs>(),
        )
    };
    if r < 0 {
        Err(Errno::last())
    } else {
        Ok(r as usize)
    }
}

/// Call `f` with a growing buffer until the value fits.
fn with_buf(mut f: impl FnMut(&mut [u8]) -> SysResult<usize>) -> SysResult<Vec<u8>> {
    let mut size = 256;
    loop {
        let mut buf = vec![0u8; size];
        match f(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(Errno::ERANGE) if size < (1 << 20) => size *= 8,
            Err(e) => return Err(e),
        }
    }
}

/// All extended attributes of `dir/name` (not following a symlink), sorted.
/// Uses listxattrat/getxattrat; on older kernels symlinks get none and other
/// inodes are read through `/proc/self/fd`.
pub fn xattrs_at(dir: BorrowedFd<'_>, name: &CStr) -> SysResult<Vec<(Vec<u8>, Vec<u8>)>> {
    xattrs_impl(dir, name, libc::AT_SYMLINK_NOFOLLOW)
}

/// All extended attributes of the inode `fd` refers to (an `O_PATH`
/// descriptor will do), sorted.
pub fn xattrs_at_fd(fd: BorrowedFd<'_>) -> SysResult<Vec<(Vec<u8>, Vec<u8>)>> {
    match xattrs_impl(fd, c"", libc::AT_SYMLINK_NOFOLLOW | libc::AT_EMPTY_PATH) {
        // the *xattrat calls refuse O_PATH descriptors with an empty path
        Err(Errno::EBADF) => xattrs_via_proc(fd, c""),
        r => r,
    }
}

fn xattrs_impl(dir: BorrowedFd<'_>, name: &CStr, flags: i32) -> SysResult<Vec<(Vec<u8>, Vec<u8>)>> {
    let list = match with_buf(|b| listxattr_at(dir, name, flags, b)) {
        Ok(l) => l,
        Err(Errno::ENOSYS) => return xattrs_via_proc(dir, name),
        Err(Errno::EOPNOTSUPP) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for key in list.split(|b| *b == 0).filter(|k| !k.is_empty()) {
        let ck = CString::new(key).map_err(|_| Errno::EINVAL)?;
        match with_buf(|b| getxattr_at(dir, name, flags, &ck, b)) {
            Ok(v) => out.push((key.to_vec(), v)),
            Err(Errno::ENODATA) => {} // removed meanwhile
            Err(e) => return Err(e),
        }
    }
    out.sort();
    Ok(out)
}

fn xattrs_via_proc(dir: BorrowedFd<'_>, name: &CStr) -> SysResult<Vec<(Vec<u8>, Vec<u8>)>> {
    let st = if name.is_empty() { fstat(dir)? } else { fstatat(dir, name)? };
    if file_type(&st) == libc::S_IFLNK {
        return Ok(Vec::new());
    }
    let opened = if name.is_empty() { None } else { Some(open_path(dir, name)?) };
    let p = proc_fd_path(opened.as_ref().map_or(dir.as_raw_fd(), |f| f.as_raw_fd()));
    let list = match with_buf(|b| {
        // SAFETY: every pointer is to a buffer or C string that outlives the call, passed with its true length; the result is checked.
        let r = unsafe { libc::listxattr(p.as_ptr(), b.as_mut_ptr() as *mut libc::c_char, b.len()) };
        if r < 0 {
            Err(Errno::last())
        } else {
            Ok(r as usize)
        }
    }) {
        Ok(l) => l,
        Err(Errno::EOPNOTSUPP) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for key in list.split(|b| *b == 0).filter(|k| !k.is_empty()) {
        let ck = CString::new(key).map_err(|_| Errno::EINVAL)?;
        let v = with_buf(|b| {
            // SAFETY: every pointer is to a buffer or C string that outlives the call, passed with its true length; the result is checked.
            let r = unsafe { libc::getxattr(p.as_ptr(), ck.as_ptr(), b.as_mut_ptr() as *mut libc::c_void, b.len()) };
            if r < 0 {
                Err(Errno::last())
            } else {
                Ok(r as usize)
            }
        });
        match v {
            Ok(v) => out.push((key.to_vec(), v)),
            Err(Errno::ENODATA) => {}
            Err(e) => return Err(e),
        }
    }
    out.sort();
    Ok(out)
}

/// readlink of `dir/name`.
pub fn readlink_at(dir: BorrowedFd<'_>, name: &CStr) -> SysResult<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: every pointer is to a buffer or C string that outlives the call, passed with its true length; the result is checked.
    let n = cvt(unsafe {
        libc::readlinkat(dir.as_raw_fd(), name.as_ptr(), buf.as_mut_ptr() as *mut libc::c_char, buf.len())
    })?;
    buf.truncate(n as usize);
    Ok(buf)
}

/// `openat2` resolving `path` beneath `dir` without following any symlink:
/// whatever links a tree contains, the result is inside it.
pub fn open_beneath(dir: BorrowedFd<'_>, path: &CStr, flags: i32) -> SysResult<OwnedFd> {
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
    const RESOLVE_NO_SYMLINKS: u64 = 0x04;
    const RESOLVE_BENEATH: u64 = 0x08;
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: every pointer is to a buffer or C string that outlives the call, passed with its true length; the result is checked.
    let r = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            path.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if r < 0 {
        return Err(Errno::last());
    }
    // SAFETY: the descriptor was just returned by the kernel (checked) and nothing else owns or closes it.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

/// Set one extended attribute of `dir/name` (not following a symlink).
pub fn set_xattr_at(dir: BorrowedFd<'_>, name: &CStr, key: &[u8], value: &[u8]) -> SysResult<()> {
    const SYS_SETXATTRAT: libc::c_long = 463;
    let key = CString::new(key).map_err(|_| Errno::EINVAL)?;
    let args = XattrArgs { value: value.as_ptr() as u64, size: value.len() as u32, flags: 0 };
    // SAFETY: every pointer is to a buffer or C string that outlives the call, passed with its true length; the result is checked.
    let r = unsafe {
        libc::syscall(
            SYS_SETXATTRAT,
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW as libc::c_uint,
            key.as_ptr(),
            &args as *const XattrArgs,
            std::mem::size_of::<XattrArgs>(),
        )
    };
    if r < 0 {
        return match Errno::last() {
            // before Linux 6.13: through /proc/self/fd, never a symlink
            // SAFETY: every pointer is to a buffer or C string that outlives the call, passed with its true length; the result is checked.
            Errno::ENOSYS => xattr_via_proc(dir, name, |p| unsafe {
                libc::setxattr(p, key.as_ptr(), value.as_ptr() as *const libc::c_void, value.len(), 0)
            }),
            e => Err(e),
        };
    }
    Ok(())
}

/// Remove one extended attribute of `dir/name` (not following a symlink).
pub fn remove_xattr_at(dir: BorrowedFd<'_>, name: &CStr, key: &[u8]) -> SysResult<()> {
    const SYS_REMOVEXATTRAT: libc::c_long = 466;
    let key = CString::new(key).map_err(|_| Errno::EINVAL)?;
    // SAFETY: every pointer is to a buffer or C string that outlives the call, passed with its true length; the result is checked.
    let r = unsafe {
        libc::syscall(
            SYS_REMOVEXATTRAT,
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW as libc::c_uint,
            key.as_ptr(),
        )
    };
    if r < 0 {
        return match Errno::last() {
            // SAFETY: every pointer is to a buffer or C string that outlives the call, passed with its true length; the result is checked.
            Errno::ENOSYS => xattr_via_proc(dir, name, |p| unsafe { libc::removexattr(p, key.as_ptr()) }),
            e => Err(e),
        };
    }
    Ok(())
}

/// Run an xattr call on `/proc/self/fd/N` of `dir/name` opened `O_PATH |
/// O_NOFOLLOW` (symlinks: EPERM, as for user attributes on them).
fn xattr_via_proc(
    dir: BorrowedFd<'_>,
    name: &CStr,
    call: impl FnOnce(*const libc::c_char) -> libc::c_int,
) -> SysResult<()> {
    let fd = open_path(dir, name)?;
    if file_type(&fstat(fd.as_fd())?) == libc::S_IFLNK {
        return Err(Errno::EPERM);
    }
    let p = proc_fd_path(fd.as_raw_fd());
    cvt(call(p.as_ptr())).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn xattrs_of_a_name_in_a_directory() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("f");
        std::fs::write(&f, b"x").unwrap();
        let c = CString::new(f.to_str().unwrap()).unwrap();
        // SAFETY: every pointer is to a buffer or C string that outlives the call, passed with its true length; the result is checked.
        let r = unsafe { libc::setxattr(c.as_ptr(), c"user.k".as_ptr(), b"val".as_ptr() as *const libc::c_void, 3, 0) };
        assert_eq!(r, 0);
        std::os::unix::fs::symlink("f", t.path().join("l")).unwrap();
        let d = std::fs::File::open(t.path()).unwrap();
        let x = xattrs_at(d.as_fd(), c"f").unwrap();
        assert_eq!(x, vec![(b"user.k".to_vec(), b"val".to_vec())]);
        assert!(xattrs_at(d.as_fd(), c"l").unwrap().is_empty());
        let fd = open_path(d.as_fd(), c"f").unwrap();
        assert_eq!(xattrs_at_fd(fd.as_fd()).unwrap(), x);
        assert_eq!(readlink_at(d.as_fd(), c"l").unwrap(), b"f");
    }
}
