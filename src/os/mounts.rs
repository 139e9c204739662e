//! The mount table as this process sees it (`/proc/self/mountinfo`), and
//! the client-side calls on a mount point: unmount, syncfs. Nothing here
//! runs inside a daemon on its own mount except `umount2`, which sends the
//! daemon no request.

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Absolute, symlink-free path; lexical when the path cannot be resolved
/// (a dead FUSE mount answers ENOTCONN to stat).
pub fn canonical(p: &Path) -> PathBuf {
    match p.canonicalize() {
        Ok(c) => c,
        Err(_) => std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()),
    }
}

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone)]
pub struct MountEntry {
    pub mountpoint: PathBuf,
    pub fstype: String,
    pub source: String,
    /// The filesystem's own options (for FUSE: `user_id=N,group_id=N,...`).
    pub options: String,
}

impl MountEntry {
    /// The uid that mounted a FUSE filesystem (its `user_id=` option).
    pub fn fuse_user(&self) -> Option<u32> {
        self.options.split(',').find_map(|o| o.strip_prefix("user_id=")?.parse().ok())
    }
}

pub(crate) fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn mounts() -> Vec<MountEntry> {
    let Ok(s) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    s.lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let mp = pre.split(' ').nth(4)?;
            let mut post = post.split(' ');
            let fstype = post.next()?.to_string();
            let source = post.next().unwrap_or("").to_string();
            let options = post.next().unwrap_or("").to_string();
            Some(MountEntry { mountpoint: PathBuf::from(unescape(mp)), fstype, source: unescape(&source), options })
        })
        .collect()
}

/// The snapfs mount at `dir`, if any.
pub fn snapfs_mount_at(dir: &Path) -> Option<MountEntry> {
    mounts().into_iter().rev().find(|m| {
        m.mountpoint == dir
            && m.fstype.starts_with("fuse")
            && (m.source.starts_with("snapfs:") || m.source.starts_with("snapfs-browse:"))
    })
}

/// Unmount `dir`; with `lazy`, detach even if busy.
pub fn umount(dir: &Path, lazy: bool) -> std::io::Result<()> {
    let c = CString::new(dir.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let flags = if lazy { libc::MNT_DETACH } else { 0 };
    // SAFETY: every pointer is to a buffer or C string that outlives the call, passed with its true length; the result is checked.
    if unsafe { libc::umount2(c.as_ptr(), flags) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Flush the kernel's cached writes of the filesystem at `dir` to its daemon.
/// Called by clients (never by the daemon, whose own mount this would be).
pub fn syncfs(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        // SAFETY: a system call on descriptors and values we own, without pointers; the result is checked.
        unsafe { libc::syncfs(f.as_raw_fd()) };
    }
}
