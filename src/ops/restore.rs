//! `snapfs restore`: rebuild a snapshot, or a subtree of it, in a directory,
//! with parallel workers.
//!
//! # Nothing is written outside the target
//! Every directory is opened with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)` from a descriptor of the target, every final name
//! is created or opened with `O_NOFOLLOW`/`AT_SYMLINK_NOFOLLOW`, and names
//! from the snapshot are checked (no `/`, `.`, `..`, NUL). Symlinks in the
//! snapshot are created as symlinks and never followed; symlinks found in
//! the target are never followed either.
//!
//! # Order
//! 1. walk the snapshot's trees, create directories (owner-only for now),
//!    symlinks, fifos and devices, and collect the files;
//! 2. N workers write the files (holes stay holes: only stored blocks are
//!    written), verify every block written by reading it back and hashing
//!    it, then set owner, mode, xattrs and times;
//! 3. the other names of hard-linked files are linked to the first;
//! 4. directories get their metadata last, deepest first (writing into a
//!    directory changes its mtime).
//!
//! # Overwrite and resume
//! A non-empty target is refused unless `--overwrite`: then a file whose
//! blocks already hash to the snapshot's is left alone, otherwise only the
//! differing blocks are written. A marker `.snapfs-restore` in the target
//! names the snapshot while a restore runs; running the same restore again
//! after an interruption continues it as if with `--overwrite`.
//!
//! (About 900 lines of code and 50 of tests, which live mostly in tests/recovery.rs: the walk, the job queue, files
//! in parts and the metadata calls are one pipeline that rollback reuses.)

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::ops::{OpContext, OpError, OpResult};
use crate::os::errno::{cvt, Errno};
use crate::os::sys;
use crate::repo::objects::{Entry, EntryKind, ObjKind, ObjectId, Totals};
use crate::repo::objstore::Objects;
use crate::snapshot::{self, SnapshotInfo};
use crate::util;
use crate::util::Locked;

pub const MARKER: &str = ".snapfs-restore";

#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub jobs: usize,
    pub overwrite: bool,
    /// Counters the restore keeps up to date, for whoever shows its progress.
    pub progress: Option<Arc<RestoreProgress>>,
}

#[derive(Debug, Default, Serialize, Deserialize, Clone)]
pub struct RestoreStats {
    pub files: u64,
    pub dirs: u64,
    pub others: u64,
    pub links: u64,
    /// Bytes written to the target.
    pub written: u64,
    /// Bytes found already right (overwrite, resume).
    pub kept: u64,
}

/// Live counters of a restore (give one in [`RestoreOptions::progress`]
/// to watch it).
#[derive(Debug, Default)]
pub struct RestoreProgress {
    /// 0: making the directories, 1: writing the files, 2: hard links and
    /// the directories' metadata.
    phase: AtomicU64,
    dirs: AtomicU64,
    files_total: AtomicU64,
    bytes_total: AtomicU64,
    pub(crate) files: AtomicU64,
    pub(crate) written: AtomicU64,
    pub(crate) kept: AtomicU64,
    /// Bytes of holes already there (past the file's old end): neither
    /// read nor written.
    holes: AtomicU64,
}

/// What a restore has done, read from its [`RestoreProgress`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreView {
    /// "directories", "files" or "finishing".
    pub phase: &'static str,
    pub dirs: u64,
    pub files_done: u64,
    pub files_total: u64,
    /// Bytes of the files dealt with (written, found right, or holes).
    pub bytes_done: u64,
    /// The sum of the files' sizes.
    pub bytes_total: u64,
}

impl RestoreProgress {
    pub fn view(&self) -> RestoreView {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RestoreView {
            phase: match l(&self.phase) {
                0 => "directories",
                1 => "files",
                _ => "finishing",
            },
            dirs: l(&self.dirs),
            files_done: l(&self.files),
            files_total: l(&self.files_total),
            bytes_done: l(&self.written) + l(&self.kept) + l(&self.holes),
            bytes_total: l(&self.bytes_total),
        }
    }
}

/// A file to write: its directory (relative to the target) and entry; or
/// a part of a large one.
pub(crate) struct Job {
    dir: Vec<u8>,
    entry: Arc<Entry>,
    part: Option<Part>,
}

/// Files larger than this are written in parts of this size by several
/// workers at once (a large file alone would otherwise be one worker's,
/// and from a remote store one read after another).
const PART_BYTES: u64 = 32 << 20;

/// The blocks of a large file one job writes.
struct Part {
    blocks: std::ops::Range<u64>,
    file: Arc<PartedFile>,
}

/// A large file being written in parts: opened by the first part to run
/// (with the size it had before), finished by the last.
#[derive(Default)]
struct PartedFile {
    open: Mutex<Option<(Arc<OwnedFd>, u64)>>,
    left: AtomicU64,
}

impl Job {
    /// The jobs that write the file `e` in `dir`.
    fn of(dir: &[u8], e: &Entry, bs: u64, out: &mut Vec<Job>) {
        let entry = Arc::new(e.clone());
        let per = (PART_BYTES / bs.max(1)).max(1);
        let blocks = e.block_count(bs);
        if blocks <= per {
            out.push(Job { dir: dir.to_vec(), entry, part: None });
            return;
        }
        let file = Arc::new(PartedFile { left: AtomicU64::new(blocks.div_ceil(per)), ..Default::default() });
        for first in (0..blocks).step_by(per as usize) {
            let part = Part { blocks: first..(first + per).min(blocks), file: file.clone() };
            out.push(Job { dir: dir.to_vec(), entry: entry.clone(), part: Some(part) });
        }
    }

    /// Whether this job is a whole file or the first part of one (what the
    /// progress counts).
    fn starts_a_file(&self) -> bool {
        self.part.as_ref().is_none_or(|p| p.blocks.start == 0)
    }

    fn run(&self, objects: &Objects, bs: u64, dir: BorrowedFd<'_>, c: &RestoreProgress, path: &[u8]) -> OpResult<()> {
        let Some(part) = &self.part else {
            return write_file(objects, bs, dir, &self.entry, c, path);
        };
        let (fd, size_now) = {
            let mut open = part.file.open.locked();
            match &*open {
                Some((fd, size_now)) => (fd.clone(), *size_now),
                None => {
                    let (fd, size_now) = open_file(dir, &self.entry, path)?;
                    open.insert((Arc::new(fd), size_now)).clone()
                }
            }
        };
        write_blocks(objects, bs, fd.as_fd(), &self.entry, size_now, part.blocks.clone(), c, path)?;
        drop(fd);
        if part.file.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            // the last part: the file is closed before its metadata is set
            part.file.open.locked().take();
            finish_file(dir, &self.entry, c, path)?;
        }
        Ok(())
    }
}

pub(crate) fn check_name(n: &[u8]) -> OpResult<()> {
    if n.is_empty() || n == b"." || n == b".." || n.contains(&b'/') || n.contains(&0) {
        damaged!("the snapshot holds an unsafe name {:?}; refusing to restore it", String::from_utf8_lossy(n));
    }
    Ok(())
}

pub(crate) fn cname(n: &[u8]) -> CString {
    CString::new(n).expect("checked: no NUL")
}

pub(crate) fn show(p: &[u8]) -> String {
    util::show_path(p)
}

/// What opening a directory of the target beneath it (`openat2`, no
/// symlinks) failing at `path` means.
pub(crate) fn not_followed(path: &[u8], e: Errno) -> OpError {
    OpError::Refused(format!("{}: {e} (not a directory, or a symlink: not followed)", show(path)))
}

/// Open a directory of the target, relative to its root, never leaving it.
/// A path longer than PATH_MAX is opened a piece at a time, each piece
/// beneath the directory the one before opened.
pub(crate) fn open_dir(root: BorrowedFd<'_>, rel: &[u8]) -> OpResult<OwnedFd> {
    const PIECE: usize = 4000; // below PATH_MAX
    let fail = |e: Errno| not_followed(rel, e);
    if rel.len() <= PIECE {
        let p = if rel.is_empty() { c".".to_owned() } else { cname(rel) };
        return sys::open_beneath(root, &p, libc::O_RDONLY | libc::O_DIRECTORY).map_err(fail);
    }
    let mut fd: Option<OwnedFd> = None;
    let mut rest = rel;
    while !rest.is_empty() {
        let cut = match rest.len() <= PIECE {
            true => rest.len(),
            false => rest[..=PIECE].iter().rposition(|b| *b == b'/').unwrap_or(rest.len()),
        };
        let at = fd.as_ref().map_or(root, |d| d.as_fd());
        fd = Some(sys::open_beneath(at, &cname(&rest[..cut]), libc::O_RDONLY | libc::O_DIRECTORY).map_err(fail)?);
        rest = rest.get(cut + 1..).unwrap_or_default();
    }
    Ok(fd.expect("a non-empty path"))
}

/// Remove whatever is at `dir/name` (a file, a link, or a whole directory,
/// down to [`util::MAX_DEPTH`] levels below it: the directories being
/// emptied are kept on the heap, one descriptor each).
pub(crate) fn remove_any(dir: BorrowedFd<'_>, name: &CStr) -> OpResult<()> {
    let st = match sys::fstatat(dir, name) {
        Ok(st) => st,
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(OpError::sys(format!("{name:?}"), e)),
    };
    if !sys::is_dir(&st) {
        // SAFETY: every pointer is to a buffer or C string that outlives the call, passed with its true length; the result is checked.
        cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) })?;
        return Ok(());
    }
    let open = |at: BorrowedFd<'_>, n: &CStr| -> OpResult<(OwnedFd, std::vec::IntoIter<CString>)> {
        let sub = sys::openat(at, n, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW, 0)?;
        let names: Vec<CString> =
            sys::list_dir(sub.as_fd())?.iter().map(|e| cname(e.name.as_encoded_bytes())).collect();
        Ok((sub, names.into_iter()))
    };
    // (a directory being emptied, the names left in it, its name)
    let (sub, names) = open(dir, name)?;
    let mut stack = vec![(sub, names, name.to_owned())];
    loop {
        let depth = stack.len();
        let Some((fd, names, _)) = stack.last_mut() else { return Ok(()) };
        let Some(n) = names.next() else {
            let (_, _, n) = stack.pop().expect("a level");
            let up = stack.last().map_or(dir, |(fd, _, _)| fd.as_fd());
            // SAFETY: every pointer is to a buffer or C string that outlives the call, passed with its true length; the result is checked.
            cvt(unsafe { libc::unlinkat(up.as_raw_fd(), n.as_ptr(), libc::AT_REMOVEDIR) })?;
            continue;
        };
        let st = match sys::fstatat(fd.as_fd(), &n) {
            Ok(st) => st,
            Err(Errno::ENOENT) => continue,
            Err(e) => return Err(OpError::sys(format!("{n:?}"), e)),
        };
        if !sys::is_dir(&st) {
            // SAFETY: every pointer is to a buffer or C string that outlives the call, passed with its true length; the result is checked.
            cvt(unsafe { libc::unlinkat(fd.as_raw_fd(), n.as_ptr(), 0) })?;
        } else if depth > util::MAX_DEPTH {
            refused!("{}", util::too_deep(format!("{name:?}/…/{n:?}").as_bytes()));
        } else {
            let below = open(fd.as_fd(), &n)?;
            stack.push((below.0, below.1, n));
        }
    }
}

/// The progress marker in the target, if there is one (a regular file:
/// never followed, never a fifo that would hang us).
pub(crate) fn read_marker(root: BorrowedFd<'_>) -> Option<Marker> {
    let m = CString::new(MARKER).expect("no NUL");
    let fd = sys::openat(root, &m, libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK, 0).ok()?;
    let st = sys::fstat(fd.as_fd()).ok()?;
    if sys::file_type(&st) != libc::S_IFREG || st.st_size > 1 << 20 {
        return None;
    }
    let mut buf = vec![0u8; st.st_size as usize];
    let n = sys::pread_full(fd.as_fd(), &mut buf, 0).ok()?;
    serde_json::from_slice(&buf[..n]).ok()
}

/// Write the progress marker: whatever has the name goes first, and the
/// new file is created, never opened through a link.
pub(crate) fn write_marker(root: BorrowedFd<'_>, marker: &Marker) -> OpResult<()> {
    let m = CString::new(MARKER).expect("no NUL");
    // SAFETY: every pointer is to a buffer or C string that outlives the call, passed with its true length; the result is checked.
    match cvt(unsafe { libc::unlinkat(root.as_raw_fd(), m.as_ptr(), 0) }) {
        Ok(_) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(e.into()),
    }
    let fd = sys::openat(root, &m, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW, 0o600)?;
    let bytes = serde_json::to_vec(marker)?;
    let n = sys::pwrite(fd.as_fd(), &bytes, 0)?;
    if n != bytes.len() {
        return Err(std::io::Error::new(std::io::ErrorKind::WriteZero, "short write").into());
    }
    Ok(())
}

/// Set owner, mode, xattrs and times of `dir/name` as the entry says.
/// A chown's result: not root, files are the user's own, as with tar
/// (said once).
fn chowned(r: Result<i32, Errno>, name: &dyn std::fmt::Debug) -> OpResult<()> {
    match r {
        Ok(_) => Ok(()),
        // SAFETY: takes no arguments and cannot fail.
        Err(Errno::EPERM) if unsafe { libc::geteuid() } != 0 => {
            static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
            if !SAID.swap(true, Ordering::Relaxed) {
                eprintln!("snapfs: not running as root: owners are not restored (files belong to you)");
            }
            Ok(())
        }
        Err(err) => Err(OpError::sys(format!("chown {name:?}"), err)),
    }
}

/// Of the xattrs a restored inode has `now`, those the snapshot's entry
/// lacks (an ACL added since, say): they go. security.* labels belong to
/// the system.
fn unwanted_xattrs(now: Vec<(Vec<u8>, Vec<u8>)>, e: &Entry) -> impl Iterator<Item = Vec<u8>> + '_ {
    now.into_iter().map(|(k, _)| k).filter(|k| !k.starts_with(b"security.") && !e.xattrs.iter().any(|(x, _)| x == k))
}

/// The entry's access and modification times, for utimensat/futimens.
fn times_of(e: &Entry) -> [libc::timespec; 2] {
    let ts = |t: crate::repo::objects::Time| libc::timespec { tv_sec: t.sec, tv_nsec: t.nsec as i64 };
    [ts(e.atime), ts(e.mtime)]
}

/// [`set_meta`] for a regular file open at `fd`: the same, through the
/// descriptor (no lookup of the name again for each call; a restore of
/// small files spends most of its time in such calls).
fn set_meta_fd(fd: BorrowedFd<'_>, e: &Entry, path: &[u8]) -> OpResult<()> {
    let raw = fd.as_raw_fd();
    // SAFETY: a system call on descriptors and values we own, without pointers; the result is checked.
    chowned(cvt(unsafe { libc::fchown(raw, e.uid, e.gid) }), &show(path))?;
    // after chown, which clears setuid/setgid
    // SAFETY: a system call on descriptors and values we own, without pointers; the result is checked.
    cvt(unsafe { libc::fchmod(raw, e.mode & 0o7777) })
        .map_err(|err| OpError::sys(format!("chmod {}", show(path)), err))?;
    for (k, v) in &e.xattrs {
        let key = std::ffi::CString::new(k.as_slice()).map_err(|_| OpError::sys(show(path), Errno::EINVAL))?;
        // SAFETY: every pointer is to a buffer or C string that outlives the call, passed with its true length; the result is checked.
        cvt(unsafe { libc::fsetxattr(raw, key.as_ptr(), v.as_ptr() as *const libc::c_void, v.len(), 0) })
            .map_err(|err| OpError::sys(format!("xattr {} of {}", show(k), show(path)), err))?;
    }
    let now = sys::xattrs_at_fd(fd).map_err(|err| OpError::sys(format!("xattrs of {}", show(path)), err))?;
    for k in unwanted_xattrs(now, e) {
        let key = std::ffi::CString::new(k.as_slice()).map_err(|_| OpError::sys(show(path), Errno::EINVAL))?;
        // SAFETY: a C string that outlives the call; the result is checked.
        cvt(unsafe { libc::fremovexattr(raw, key.as_ptr()) })
            .map_err(|err| OpError::sys(format!("removing xattr {} of {}", show(&k), show(path)), err))?;
    }
    let times = times_of(e);
    // SAFETY: a pointer to two timespecs that outlive the call; the result is checked.
    cvt(unsafe { libc::futimens(raw, times.as_ptr()) })
        .map_err(|err| OpError::sys(format!("times of {}", show(path)), err))?;
    Ok(())
}

pub(crate) fn set_meta(dir: BorrowedFd<'_>, name: &CStr, e: &Entry) -> OpResult<()> {
    let nofollow = libc::AT_SYMLINK_NOFOLLOW;
    // SAFETY: every pointer is to a buffer or C string that outlives the call, passed with its true length; the result is checked.
    chowned(cvt(unsafe { libc::fchownat(dir.as_raw_fd(), name.as_ptr(), e.uid, e.gid, nofollow) }), &name)?;
    if e.kind != EntryKind::Symlink {
        // after chown, which clears setuid/setgid
        // never through a symlink put there meanwhile (glibc does this
        // with O_PATH|O_NOFOLLOW; a symlink gives EOPNOTSUPP)
        // SAFETY: every pointer is to a buffer or C string that outlives the call, passed with its true length; the result is checked.
        cvt(unsafe { libc::fchmodat(dir.as_raw_fd(), name.as_ptr(), e.mode & 0o7777, nofollow) })
            .map_err(|err| OpError::sys(format!("chmod {name:?}"), err))?;
    }
    for (k, v) in &e.xattrs {
        if let Err(err) = sys::set_xattr_at(dir, name, k, v) {
            // user.* cannot be set on symlinks; nothing else may fail silently
            if !(e.kind == EntryKind::Symlink && err == Errno::EPERM) {
                return Err(OpError::sys(format!("xattr {} of {name:?}", show(k)), err));
            }
        }
    }
    if e.kind != EntryKind::Symlink {
        let now = sys::xattrs_at(dir, name).map_err(|err| OpError::sys(format!("xattrs of {name:?}"), err))?;
        for k in unwanted_xattrs(now, e) {
            sys::remove_xattr_at(dir, name, &k)
                .map_err(|err| OpError::sys(format!("removing xattr {} of {name:?}", show(&k)), err))?;
        }
    }
    let times = times_of(e);
    // SAFETY: every pointer is to a buffer or C string that outlives the call, passed with its true length; the result is checked.
    cvt(unsafe { libc::utimensat(dir.as_raw_fd(), name.as_ptr(), times.as_ptr(), nofollow) })
        .map_err(|err| OpError::sys(format!("times of {name:?}"), err))?;
    Ok(())
}

/// The id a block would have in the repository.
pub(crate) fn block_id(objects: &Objects, data: &[u8]) -> ObjectId {
    if data.iter().all(|&b| b == 0) {
        ObjectId::ZERO
    } else {
        objects.id_of(ObjKind::Blob, data)
    }
}

/// Write one file (`dir/name`), verifying what was written.
pub(crate) fn write_file(
    objects: &Objects,
    bs: u64,
    dir: BorrowedFd<'_>,
    e: &Entry,
    c: &RestoreProgress,
    path: &[u8],
) -> OpResult<()> {
    let (fd, size_now) = open_file(dir, e, path)?;
    write_blocks(objects, bs, fd.as_fd(), e, size_now, 0..u64::MAX, c, path)?;
    set_meta_fd(fd.as_fd(), e, path)?;
    c.files.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Open (create) the regular file for `e` in `dir`, at its size; and the
/// size it had before.
fn open_file(dir: BorrowedFd<'_>, e: &Entry, path: &[u8]) -> OpResult<(OwnedFd, u64)> {
    let name = cname(&e.name);
    // An existing regular file is updated in place; anything else replaced.
    let existing = sys::fstatat(dir, &name).ok();
    if existing.as_ref().is_some_and(|st| !sys::is_reg(st) || st.st_nlink > 1) {
        remove_any(dir, &name)?;
    }
    let open = || sys::openat(dir, &name, libc::O_RDWR | libc::O_CREAT | libc::O_NOFOLLOW, 0o600);
    let fd = match (open(), &existing) {
        // read-only already (a resumed restore not run as root): writable
        // for now, its mode is set at the end
        (Err(Errno::EACCES), Some(st)) => {
            // SAFETY: every pointer is to a buffer or C string that outlives the call, passed with its true length; the result is checked.
            cvt(unsafe {
                libc::fchmodat(dir.as_raw_fd(), name.as_ptr(), (st.st_mode & 0o7777) | 0o200, libc::AT_SYMLINK_NOFOLLOW)
            })
            .map_err(|err| OpError::sys(show(path), err))?;
            open()
        }
        (r, _) => r,
    }
    .map_err(|err| OpError::sys(show(path), err))?;
    // (a file that was not there is empty: no stat of it)
    let size_now = match existing {
        None => 0,
        Some(_) => sys::fstat(fd.as_fd())?.st_size as u64,
    };
    // SAFETY: a system call on descriptors and values we own, without pointers; the result is checked.
    cvt(unsafe { libc::ftruncate(fd.as_raw_fd(), e.size as i64) }).map_err(|err| OpError::sys(show(path), err))?;
    Ok((fd, size_now))
}

/// Make the blocks `blocks` of the file `fd` (open at `e`'s size, of
/// `size_now` bytes before) hold what the snapshot has, verified.
#[allow(clippy::too_many_arguments)]
fn write_blocks(
    objects: &Objects,
    bs: u64,
    fd: BorrowedFd<'_>,
    e: &Entry,
    size_now: u64,
    blocks: std::ops::Range<u64>,
    c: &RestoreProgress,
    path: &[u8],
) -> OpResult<()> {
    let mut buf = vec![0u8; bs as usize];
    // runs of holes past the old end are holes already (the truncate made
    // them): a sparse file costs what it stores
    snapshot::visit_blocks(objects, e, bs, |first, count, id| -> OpResult<()> {
        for b in first.max(blocks.start)..(first + count).min(blocks.end) {
            let off = b * bs;
            if off >= e.size {
                break;
            }
            if id.is_zero() && off >= size_now {
                let end = ((first + count).min(blocks.end) * bs).min(e.size);
                c.holes.fetch_add(end - off, Ordering::Relaxed);
                break;
            }
            let len = bs.min(e.size - off) as usize;
            // what is there now (after truncate: zeros past the old end)
            let have = if off < size_now {
                let got = sys::pread_full(fd, &mut buf[..len], off)?;
                buf[got..len].fill(0);
                block_id(objects, &buf[..len])
            } else {
                ObjectId::ZERO
            };
            if have == id {
                c.kept.fetch_add(len as u64, Ordering::Relaxed);
                continue;
            }
            let n = put_block(objects, fd, b as usize, id, off, &mut buf[..len], path)?;
            c.written.fetch_add(n, Ordering::Relaxed);
        }
        Ok(())
    })
    .with_what(|| show(path))
}

/// A file's metadata, once its data is all written.
fn finish_file(dir: BorrowedFd<'_>, e: &Entry, c: &RestoreProgress, path: &[u8]) -> OpResult<()> {
    set_meta(dir, &cname(&e.name), e).with_what(|| show(path))?;
    c.files.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Make block `b` (at `off`, `buf.len()` bytes) of the file `fd` hold the
/// object `id`: a hole for a zero id, else its bytes; then read it back and
/// check it. Returns the bytes written.
pub(crate) fn put_block(
    objects: &Objects,
    fd: BorrowedFd<'_>,
    b: usize,
    id: ObjectId,
    off: u64,
    buf: &mut [u8],
    path: &[u8],
) -> OpResult<u64> {
    let len = buf.len();
    let mut written = 0;
    if id.is_zero() {
        // a hole again
        // SAFETY: a system call on descriptors and values we own, without pointers; the result is checked.
        let r = unsafe {
            libc::fallocate(
                fd.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                off as i64,
                len as i64,
            )
        };
        if r != 0 {
            buf.fill(0);
            write_all_at(fd, buf, off).map_err(|e| OpError::sys(show(path), e))?;
        }
    } else {
        let data = objects.get_healing(&id, ObjKind::Blob).with_what(|| show(path))?;
        if data.len() != len {
            damaged!("{}: block {b} holds {} bytes where the file needs {len}: damaged", show(path), data.len());
        }
        write_all_at(fd, &data, off).map_err(|e| OpError::sys(show(path), e))?;
        written = data.len() as u64;
    }
    // verify what the file now holds
    let got = sys::pread_full(fd, buf, off)?;
    if got != len || block_id(objects, buf) != id {
        damaged!("{}: block {b} does not read back as written", show(path));
    }
    Ok(written)
}

pub(crate) fn write_all_at(fd: BorrowedFd<'_>, mut data: &[u8], mut off: u64) -> Result<(), Errno> {
    while !data.is_empty() {
        match sys::pwrite(fd, data, off) {
            Ok(0) => return Err(Errno::EIO),
            Ok(n) => {
                data = &data[n..];
                off += n as u64;
            }
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A record restore can use: sound, and of a block size a repository may
/// have (it sizes the buffers).
pub(crate) fn check_record(snap: &SnapshotInfo) -> OpResult<()> {
    if let Some(problem) = &snap.damaged {
        damaged!("snapshot record {} is damaged: {problem}", snap.id);
    }
    snapshot::check_record(&snap.record)
        .map_err(|p| OpError::Damaged(format!("snapshot record {} is damaged: {p}", snap.id)))
}

/// How much a restore may create: what the entry at its top (and the
/// record) says lies below it.
pub(crate) struct Expansion(Totals);

impl Expansion {
    fn of(snap: &SnapshotInfo, top: &Entry) -> Expansion {
        let s = &snap.record.stats;
        let t = &top.totals;
        Expansion(Totals {
            files: t.files.min(s.files),
            dirs: t.dirs.min(s.dirs),
            others: t.others.min(s.others),
            bytes: t.bytes.min(s.logical_bytes),
        })
    }

    /// Count entry `e` (one name) into `placed`; an error past the limit.
    fn count(&self, placed: &mut Totals, e: &Entry) -> OpResult<()> {
        match e.kind {
            EntryKind::Dir => placed.dirs += 1,
            EntryKind::File => {
                placed.files += 1;
                placed.bytes = placed.bytes.saturating_add(e.size);
            }
            _ => placed.others += 1,
        }
        let l = &self.0;
        if placed.files > l.files || placed.dirs > l.dirs || placed.others > l.others || placed.bytes > l.bytes {
            damaged!(
                "the snapshot holds more than its record and directories say ({} files, {} directories, {} others, {} bytes): damaged; refusing to expand it",
                l.files,
                l.dirs,
                l.others,
                l.bytes
            );
        }
        Ok(())
    }
}

#[derive(Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Marker {
    snapshot: String,
    path: String,
}

/// Find the entry at `sub` (a '/'-separated path) in a snapshot.
pub fn find_entry(objects: &Objects, snap: &SnapshotInfo, sub: &str) -> OpResult<Entry> {
    let mut e = snapshot::root_entry(objects, snap.root_tree()?)?;
    for part in sub.split('/').filter(|p| !p.is_empty() && *p != ".") {
        if e.kind != EntryKind::Dir {
            refused!("{sub}: not a directory in snapshot {}", snap.record.name);
        }
        let t = objects.dir_tree_healing(&e)?;
        let Some(next) = t.get(part.as_bytes()) else {
            refused!("{sub}: no such path in snapshot {}", snap.record.name);
        };
        e = next.clone();
    }
    Ok(e)
}

/// Restore `sub` of `snap` into `target`.
pub fn restore(
    objects: &Objects,
    snap: &SnapshotInfo,
    sub: &str,
    target: &Path,
    opts: &RestoreOptions,
) -> OpResult<RestoreStats> {
    sys::raise_nofile_limit(); // a descriptor per level of a deep tree
    let t0 = std::time::Instant::now();
    let bs = snap.record.block_size;
    check_record(snap)?;
    let top = find_entry(objects, snap, sub)?;
    // What the snapshot says it holds bounds what it may expand to (a
    // small subtree referenced many times must not make millions of files).
    let limit = Expansion::of(snap, &top);
    let mut placed = Totals::default();
    std::fs::create_dir_all(target).with_what(|| format!("creating {}", target.display()))?;
    let tpath =
        CString::new(target.as_os_str().as_encoded_bytes()).map_err(|_| OpError::Refused("bad target path".into()))?;
    let root =
        // SAFETY: the raw descriptor stays open for as long as the borrow is used (AT_FDCWD: always).
        sys::openat(unsafe { BorrowedFd::borrow_raw(libc::AT_FDCWD) }, &tpath, libc::O_RDONLY | libc::O_DIRECTORY, 0)
            .map_err(|e| OpError::sys(target.display().to_string(), e))?;
    let marker = Marker { snapshot: snap.id.to_string(), path: sub.to_string() };
    if top.kind == EntryKind::Dir
        && !top.content.is_zero()
        && objects.dir_tree_healing(&top)?.get(MARKER.as_bytes()).is_some()
    {
        refused!("the snapshot has a {MARKER} of its own at the top, the name restore uses for its progress; restore the directories below it one by one");
    }
    let resuming = read_marker(root.as_fd()).is_some_and(|m| m == marker);
    let others: Vec<_> = sys::list_dir(root.as_fd())?.into_iter().filter(|e| e.name != MARKER).collect();
    if !others.is_empty() && !opts.overwrite && !resuming {
        refused!("{} is not empty; restore into an empty directory, or give --overwrite", target.display());
    }
    write_marker(root.as_fd(), &marker).with_what(|| format!("{}/{MARKER}", target.display()))?;
    let overwrite = opts.overwrite || resuming;

    // 1. directories and everything but regular files
    let c = opts.progress.clone().unwrap_or_default();
    let mut stats = RestoreStats::default();
    let mut jobs: Vec<Job> = Vec::new();
    let mut dirs: Vec<(Vec<u8>, Entry)> = Vec::new(); // (path, entry) in creation order
    let mut links: Vec<(Vec<u8>, Vec<u8>, Entry)> = Vec::new(); // (first path, this dir, entry)
    let mut first_path: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
    // (path, entry, the directory above it and its depth): every directory
    // is opened from the one above (one descriptor per level at most)
    type Waiting = (Vec<u8>, Entry, Option<(Arc<OwnedFd>, usize)>);
    let mut stack: Vec<Waiting> = Vec::new();
    match top.kind {
        EntryKind::Dir => {
            dirs.push((Vec::new(), top.clone()));
            stack.push((Vec::new(), top.clone(), None));
        }
        _ => {
            let mut e = top.clone();
            e.name = sub.rsplit('/').next().unwrap_or("file").as_bytes().to_vec();
            check_name(&e.name)?;
            place(root.as_fd(), b"", &e, overwrite, bs, &mut jobs, &mut links, &mut first_path, &mut stats)?;
        }
    }
    while let Some((path, dir, above)) = stack.pop() {
        let depth = above.as_ref().map_or(0, |a| a.1);
        let fd = Arc::new(match above {
            None => open_dir(root.as_fd(), &path)?,
            Some((up, _)) => sys::open_beneath(up.as_fd(), &cname(&dir.name), libc::O_RDONLY | libc::O_DIRECTORY)
                .map_err(|e| not_followed(&path, e))?,
        });
        let tree = objects.dir_tree_healing(&dir).with_what(|| format!("directory {}", show(&path)))?;
        if tree.is_top() {
            damaged!("directory {}: its tree is shaped as a snapshot's top tree: damaged", show(&path));
        }
        for e in &tree.entries {
            check_name(&e.name)?;
            limit.count(&mut placed, e)?;
            let p = util::join_rel(&path, &e.name);
            if e.kind == EntryKind::Dir {
                if depth >= util::MAX_DEPTH {
                    refused!("{}", util::too_deep(&p));
                }
                let n = cname(&e.name);
                match sys::fstatat(fd.as_fd(), &n) {
                    Ok(st) if sys::is_dir(&st) => {}
                    Ok(_) if overwrite => {
                        remove_any(fd.as_fd(), &n)?;
                        // SAFETY: every pointer is to a buffer or C string that outlives the call, passed with its true length; the result is checked.
                        cvt(unsafe { libc::mkdirat(fd.as_raw_fd(), n.as_ptr(), 0o700) })?;
                    }
                    Ok(_) => refused!("{}: exists and is not a directory", show(&p)),
                    Err(Errno::ENOENT) => {
                        // SAFETY: every pointer is to a buffer or C string that outlives the call, passed with its true length; the result is checked.
                        cvt(unsafe { libc::mkdirat(fd.as_raw_fd(), n.as_ptr(), 0o700) })
                            .map_err(|err| OpError::sys(show(&p), err))?;
                    }
                    Err(err) => return Err(OpError::sys(show(&p), err)),
                }
                dirs.push((p.clone(), e.clone()));
                c.dirs.store(dirs.len() as u64, Ordering::Relaxed);
                stack.push((p, e.clone(), Some((fd.clone(), depth + 1))));
            } else {
                place(fd.as_fd(), &path, e, overwrite, bs, &mut jobs, &mut links, &mut first_path, &mut stats)?;
            }
        }
    }
    stats.dirs = dirs.len() as u64;

    log::info!("restore: walked {} directories in {} ms", stats.dirs, t0.elapsed().as_millis());
    let t_files = std::time::Instant::now();
    objects.expect_readers(opts.jobs.max(1));
    // 2. files, in parallel
    let starts = || jobs.iter().filter(|j| j.starts_a_file());
    c.files_total.store(starts().count() as u64, Ordering::Relaxed);
    c.bytes_total.store(starts().map(|j| j.entry.size).sum(), Ordering::Relaxed);
    c.phase.store(1, Ordering::Relaxed);
    let queue = Mutex::new(jobs);
    let failed: Mutex<Option<OpError>> = Mutex::new(None);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..opts.jobs.max(1))
            .map(|_| {
                s.spawn(|| {
                    // the directory of the last job, kept open: the jobs of
                    // one directory are queued together, so a worker mostly
                    // takes the next file of the same one (no walk from the
                    // root for each file)
                    let mut dir: Option<(Vec<u8>, OwnedFd)> = None;
                    let mut work = || -> OpResult<()> {
                        while failed.locked().is_none() {
                            let Some(job) = queue.locked().pop() else { break };
                            let path = util::join_rel(&job.dir, &job.entry.name);
                            let d = match dir.take() {
                                Some((p, d)) if p == job.dir => (p, d),
                                _ => (job.dir.clone(), open_dir(root.as_fd(), &job.dir)?),
                            };
                            job.run(objects, bs, d.1.as_fd(), &c, &path)?;
                            dir = Some(d);
                        }
                        Ok(())
                    };
                    if let Err(e) = work() {
                        failed.locked().get_or_insert(e);
                    }
                })
            })
            .collect();
        for w in workers {
            let _ = w.join();
        }
    });
    if let Some(e) = failed.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e.within("restore stopped; run it again to continue"));
    }
    stats.files += c.files.load(Ordering::Relaxed);
    stats.written = c.written.load(Ordering::Relaxed);
    stats.kept = c.kept.load(Ordering::Relaxed);
    c.phase.store(2, Ordering::Relaxed);

    log::info!("restore: {} files written in {} ms", stats.files, t_files.elapsed().as_millis());
    // 3. the other names of hard-linked files
    for (first, dir, e) in &links {
        let (fdir, fname) = match first.iter().rposition(|b| *b == b'/') {
            Some(i) => (&first[..i], &first[i + 1..]),
            None => (&b""[..], &first[..]),
        };
        let from = open_dir(root.as_fd(), fdir)?;
        let to = open_dir(root.as_fd(), dir)?;
        let n = cname(&e.name);
        let same = match (sys::fstatat(to.as_fd(), &n), sys::fstatat(from.as_fd(), &cname(fname))) {
            (Ok(a), Ok(b)) => a.st_ino == b.st_ino && a.st_dev == b.st_dev,
            _ => false,
        };
        if !same {
            remove_any(to.as_fd(), &n)?;
            // SAFETY: every pointer is to a buffer or C string that outlives the call, passed with its true length; the result is checked.
            cvt(unsafe { libc::linkat(from.as_raw_fd(), cname(fname).as_ptr(), to.as_raw_fd(), n.as_ptr(), 0) })
                .map_err(|err| OpError::sys(format!("link {}", show(&util::join_rel(dir, &e.name))), err))?;
        }
        stats.links += 1;
    }

    // 4. directory metadata, deepest first
    for (path, e) in dirs.iter().rev() {
        if path.is_empty() {
            set_meta(root.as_fd(), c".", e).with_what(|| target.display().to_string())?;
        } else {
            let (pdir, name) = match path.iter().rposition(|b| *b == b'/') {
                Some(i) => (&path[..i], &path[i + 1..]),
                None => (&b""[..], &path[..]),
            };
            let d = open_dir(root.as_fd(), pdir)?;
            set_meta(d.as_fd(), &cname(name), e).with_what(|| show(path))?;
        }
    }
    // everything on disk before the marker goes: an interrupted restore
    // (power lost included) can be continued
    // SAFETY: a system call on descriptors and values we own, without pointers; the result is checked.
    cvt(unsafe { libc::syncfs(root.as_raw_fd()) })
        .map_err(|e| OpError::sys(format!("syncfs {}", target.display()), e))?;
    let m = CString::new(MARKER).expect("no NUL");
    // SAFETY: every pointer is to a buffer or C string that outlives the call, passed with its true length; the result is checked.
    let unlink = || cvt(unsafe { libc::unlinkat(root.as_raw_fd(), m.as_ptr(), 0) });
    match unlink() {
        // the target's own mode has no write bit (not running as root):
        // for a moment it has; its mode is set again just below
        // SAFETY: a system call on descriptors and values we own, without pointers; the result is checked.
        Err(Errno::EACCES) => cvt(unsafe { libc::fchmod(root.as_raw_fd(), 0o700) }).and_then(|_| unlink()),
        r => r,
    }
    .map_err(|e| OpError::sys(format!("removing {}/{MARKER}", target.display()), e))?;
    // the marker's removal changed the target's mtime: set it again
    if top.kind == EntryKind::Dir {
        set_meta(root.as_fd(), c".", &top).with_what(|| target.display().to_string())?;
    }
    Ok(stats)
}

/// Create a non-directory entry in `dir`, or queue it (files), or note it
/// as another name of a hard-linked file.
#[allow(clippy::too_many_arguments)]
pub(crate) fn place(
    dir: BorrowedFd<'_>,
    path: &[u8],
    e: &Entry,
    overwrite: bool,
    bs: u64,
    jobs: &mut Vec<Job>,
    links: &mut Vec<(Vec<u8>, Vec<u8>, Entry)>,
    first_path: &mut HashMap<(u64, u64), Vec<u8>>,
    stats: &mut RestoreStats,
) -> OpResult<()> {
    let p = util::join_rel(path, &e.name);
    if e.nlink > 1 {
        // an inode is (device, inode number): equal numbers on two
        // filesystems are two files (format 1 trees: no device, one group)
        let key = (e.dev.unwrap_or(0), e.ino);
        if let Some(first) = first_path.get(&key) {
            links.push((first.clone(), path.to_vec(), e.clone()));
            return Ok(());
        }
        first_path.insert(key, p.clone());
    }
    let n = cname(&e.name);
    let exists = sys::fstatat(dir, &n).is_ok();
    if exists && !overwrite {
        refused!("{}: exists", show(&p));
    }
    match e.kind {
        EntryKind::File => {
            Job::of(path, e, bs, jobs);
            return Ok(());
        }
        EntryKind::Symlink => {
            if exists {
                let same = sys::readlink_at(dir, &n).is_ok_and(|t| t == e.target);
                if !same {
                    remove_any(dir, &n)?;
                }
            }
            if sys::fstatat(dir, &n).is_err() {
                let t = CString::new(e.target.clone())
                    .map_err(|_| OpError::Damaged(format!("{}: bad symlink target", show(&p))))?;
                // SAFETY: every pointer is to a buffer or C string that outlives the call, passed with its true length; the result is checked.
                cvt(unsafe { libc::symlinkat(t.as_ptr(), dir.as_raw_fd(), n.as_ptr()) })
                    .map_err(|err| OpError::sys(show(&p), err))?;
            }
        }
        EntryKind::Fifo | EntryKind::Socket | EntryKind::CharDev | EntryKind::BlockDev => {
            if exists {
                remove_any(dir, &n)?;
            }
            let ft = match e.kind {
                EntryKind::Fifo => libc::S_IFIFO,
                EntryKind::Socket => libc::S_IFSOCK,
                EntryKind::CharDev => libc::S_IFCHR,
                _ => libc::S_IFBLK,
            };
            // SAFETY: every pointer is to a buffer or C string that outlives the call, passed with its true length; the result is checked.
            cvt(unsafe { libc::mknodat(dir.as_raw_fd(), n.as_ptr(), ft | 0o600, e.rdev as libc::dev_t) })
                .map_err(|err| OpError::sys(show(&p), err))?;
        }
        EntryKind::Dir => unreachable!("directories are made by the walk"),
    }
    set_meta(dir, &n, e).with_what(|| show(&p))?;
    stats.others += 1;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{SnapshotRecord, SnapshotStats};

    /// A repository from elsewhere may hold a tree deeper than any snapshot
    /// snapfs takes: restore stops with an error naming it.
    #[test]
    fn a_tree_deeper_than_the_limit_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let store: Arc<dyn crate::repo::store::Store> = Arc::new(crate::repo::store::LocalStore::new(t.path()));
        let objects = Objects::open(store, None).unwrap();
        let top = snapshot::test_chain(&objects, util::MAX_DEPTH + 1, 0);
        let record = SnapshotRecord {
            format: 1,
            name: "deep".into(),
            time: util::rfc3339(0),
            time_sec: 0,
            time_nsec: 0,
            tree: top,
            links: ObjectId::ZERO,
            parent: None,
            full: true,
            source: String::new(),
            host: String::new(),
            block_size: 4096,
            // (what the chain holds, so that the expansion cap lets it through)
            stats: SnapshotStats { files: 1, dirs: util::MAX_DEPTH as u64 + 2, ..Default::default() },
        };
        let snap = SnapshotInfo {
            id: crate::repo::objects::SnapshotId::parse(&"0".repeat(64)).unwrap(),
            record,
            damaged: None,
        };
        let target = t.path().join("target");
        let opts = RestoreOptions { jobs: 1, overwrite: false, progress: None };
        let err = restore(&objects, &snap, "", &target, &opts).unwrap_err().to_string();
        assert!(err.contains("more than 16384 directory levels deep") && err.contains("d/d/d"), "{err}");
        assert!(err.len() < 4000, "{} bytes", err.len());
        // what it made goes, however deep (std's remove_dir_all recurses)
        let root = sys::openat(
            // SAFETY: the raw descriptor stays open for as long as the borrow is used (AT_FDCWD: always).
            unsafe { BorrowedFd::borrow_raw(libc::AT_FDCWD) },
            &CString::new(t.path().as_os_str().as_encoded_bytes()).unwrap(),
            libc::O_RDONLY | libc::O_DIRECTORY,
            0,
        )
        .unwrap();
        remove_any(root.as_fd(), c"target").unwrap();
        assert!(!target.exists());
    }
}
