//! Files and directories only their owner can use.
//!
//! A repository holds every protected byte: its files are 0600 and its
//! directories 0700, owned by the user the daemon runs as, whatever the
//! umask (the daemon's FUSE workers run with umask 0 so that files created
//! through the mount get exactly the caller's mode; see `creds.rs`). Every
//! place that creates something in a repository, and the daemon's log and
//! control socket directory, goes through here.
//!
//! Logs and markers are opened with `O_NOFOLLOW | O_NONBLOCK`: a symlink
//! planted at their name is refused, never followed, and a fifo never
//! blocks the opener.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub const FILE_MODE: u32 = 0o600;
pub const DIR_MODE: u32 = 0o700;

/// Create one directory, mode 0700.
pub fn create_dir(path: &Path) -> io::Result<()> {
    DirBuilder::new().mode(DIR_MODE).create(path)
}

/// Create a directory and its missing parents, each 0700.
pub fn create_dir_all(path: &Path) -> io::Result<()> {
    DirBuilder::new().mode(DIR_MODE).recursive(true).create(path)
}

/// Options for a new private file (0600, never through a symlink).
pub fn new_file() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.write(true).create_new(true).mode(FILE_MODE).custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
    o
}

/// Open (or create, 0600) a file to append to, such as a log: a symlink at
/// `path` is refused, a fifo does not block, and anything but a regular
/// file owned by us is refused.
pub fn open_append(path: &Path) -> io::Result<File> {
    let f = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    let m = f.metadata()?;
    if !m.file_type().is_file() {
        return Err(io::Error::other(format!("{}: not a regular file", path.display())));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if m.uid() != unsafe { libc::geteuid() } {
        return Err(io::Error::other(format!("{}: owned by uid {}, not by us", path.display(), m.uid())));
    }
    if m.mode() & 0o077 != 0 {
        f.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))?;
    }
    Ok(f)
}

/// What in the repository at `root` others may read or write (the root,
/// its top-level entries and the directories below `packs/`): one line
/// each, empty when private. Files inside a private directory are out of
/// reach and not listed.
pub fn exposure(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut check = |p: &Path, m: &std::fs::Metadata| {
        let mode = m.mode() & 0o777;
        let who = match (mode & 0o022 != 0, mode & 0o044 != 0) {
            (true, _) => "others can write",
            (false, true) => "others can read",
            _ => return,
        };
        out.push(format!("{} is {:o}: {who}", p.display(), mode));
    };
    let Ok(m) = std::fs::symlink_metadata(root) else { return out };
    check(root, &m);
    // Behind a private root nothing below is reachable; only say so once.
    if m.mode() & 0o077 == 0 {
        return out;
    }
    for name in ["config", "lock", "log", "packs", "snapshots", "state"] {
        let p = root.join(name);
        if let Ok(m) = std::fs::symlink_metadata(&p) {
            check(&p, &m);
        }
    }
    out
}

/// Make every file of the repository at `root` 0600 and every directory
/// 0700 (a repository made by an older snapfs). Returns how many changed.
pub fn tighten(root: &Path) -> io::Result<u64> {
    let mut n = 0;
    let mut todo: Vec<PathBuf> = vec![root.to_path_buf()];
    while let Some(p) = todo.pop() {
        let m = std::fs::symlink_metadata(&p)?;
        let want = if m.is_dir() {
            DIR_MODE
        } else if m.is_file() {
            FILE_MODE
        } else {
            continue;
        };
        if m.mode() & 0o7777 != want {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(want))?;
            n += 1;
        }
        if m.is_dir() {
            for e in std::fs::read_dir(&p)? {
                todo.push(e?.path());
            }
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn modes_whatever_the_umask() {
        let t = tempfile::tempdir().unwrap();
        // SAFETY: umask only changes this process's file creation mask.
        let old = unsafe { libc::umask(0) };
        create_dir_all(&t.path().join("a/b")).unwrap();
        new_file().open(t.path().join("a/b/f")).unwrap().write_all(b"x").unwrap();
        open_append(&t.path().join("a/log")).unwrap();
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        let mode = |p: &str| std::fs::metadata(t.path().join(p)).unwrap().mode() & 0o7777;
        assert_eq!(mode("a"), 0o700);
        assert_eq!(mode("a/b"), 0o700);
        assert_eq!(mode("a/b/f"), 0o600);
        assert_eq!(mode("a/log"), 0o600);
    }

    #[test]
    fn logs_never_follow_links_nor_block() {
        let t = tempfile::tempdir().unwrap();
        let target = t.path().join("victim");
        std::fs::write(&target, b"keep").unwrap();
        std::os::unix::fs::symlink(&target, t.path().join("log")).unwrap();
        assert!(open_append(&t.path().join("log")).is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        let fifo = std::ffi::CString::new(t.path().join("fifo").as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        // no reader: a blocking open would hang; this fails at once (ENXIO)
        assert!(open_append(&t.path().join("fifo")).is_err());
    }

    #[test]
    fn exposure_and_tighten() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path().join("r");
        std::fs::create_dir_all(r.join("packs/ab")).unwrap();
        std::fs::write(r.join("config"), b"{}").unwrap();
        std::fs::write(r.join("packs/ab/p"), b"x").unwrap();
        for (p, m) in [("", 0o755), ("config", 0o666), ("packs", 0o777), ("packs/ab/p", 0o644)] {
            std::fs::set_permissions(r.join(p), std::fs::Permissions::from_mode(m)).unwrap();
        }
        let e = exposure(&r);
        assert!(e.iter().any(|l| l.contains("config is 666: others can write")), "{e:?}");
        assert!(e.iter().any(|l| l.ends_with("r is 755: others can read")), "{e:?}");
        assert_eq!(tighten(&r).unwrap(), 5);
        assert!(exposure(&r).is_empty());
        assert_eq!(std::fs::metadata(r.join("packs/ab/p")).unwrap().mode() & 0o777, 0o600);
    }
}
