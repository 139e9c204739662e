//! Names at the root of the live tree that belong to snapfs, and what every
//! operation on them answers: the one place this rule is written.
//!
//! - `.snapfs` (the default repository, or the cache of one elsewhere) does
//!   not exist for users: lookup and removal give `ENOENT`, creating it or
//!   renaming onto it `EPERM`.
//! - `.snapshots` (the snapshot folders) exists and is read-only: lookup
//!   reaches the snapshot view, creating it gives `EEXIST` (it is there),
//!   removing it or renaming it or onto it `EROFS`.
//!
//! Neither is listed by `readdir`, walked by a snapshot or the mount-time
//! scan, or checked by `verify --live`.

use crate::os::errno::Errno;

/// Name of the repository inside the backing root.
pub const REPO_NAME: &str = ".snapfs";
/// Name of the snapshot folder at the root of the mount.
pub const SNAPSHOTS_NAME: &str = ".snapshots";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserved {
    Repo,
    Snapshots,
}

impl Reserved {
    /// The reserved name `name` is, at the root.
    pub fn at_root(name: &[u8]) -> Option<Reserved> {
        match name {
            n if n == REPO_NAME.as_bytes() => Some(Reserved::Repo),
            n if n == SNAPSHOTS_NAME.as_bytes() => Some(Reserved::Snapshots),
            _ => None,
        }
    }

    /// Creating it (mkdir, mknod, symlink, link, create).
    pub fn on_create(self) -> Errno {
        match self {
            Reserved::Repo => Errno::EPERM,
            Reserved::Snapshots => Errno::EEXIST,
        }
    }

    /// Removing it (unlink, rmdir).
    pub fn on_remove(self) -> Errno {
        match self {
            Reserved::Repo => Errno::ENOENT,
            Reserved::Snapshots => Errno::EROFS,
        }
    }

    /// Renaming it, or onto it.
    pub fn on_rename(self) -> Errno {
        match self {
            Reserved::Repo => Errno::EPERM,
            Reserved::Snapshots => Errno::EROFS,
        }
    }
}

/// Whether `name`, in the directory at the root, is left out of listings,
/// snapshots, scans and checks.
pub fn hidden(at_root: bool, name: &[u8]) -> bool {
    at_root && Reserved::at_root(name).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_rule() {
        assert_eq!(Reserved::at_root(b".snapfs"), Some(Reserved::Repo));
        assert_eq!(Reserved::at_root(b".snapshots"), Some(Reserved::Snapshots));
        assert_eq!(Reserved::at_root(b".snapshot"), None);
        assert_eq!(Reserved::Snapshots.on_create(), Errno::EEXIST);
        assert_eq!(Reserved::Repo.on_create(), Errno::EPERM);
        assert_eq!(Reserved::Snapshots.on_remove(), Errno::EROFS);
        assert_eq!(Reserved::Repo.on_remove(), Errno::ENOENT);
        assert!(hidden(true, b".snapfs") && !hidden(false, b".snapfs"));
    }
}
