//! What the passthrough tells before each change it makes: the
//! `ChangeObserver` it calls. The tracker (the dirty set) is the observer of
//! a mount; tests use one that records the calls. Every call comes *before*
//! the backing file changes (a crash in between leaves the change marked,
//! never unmarked), with the `Ancestry` to name the inode's directories.
//!
//! While a snapshot runs, a second seam, the `Preserver`, is called before
//! each change too, with a descriptor of what is about to change: it saves
//! what the snapshot still needs (copy-before-write, `snapshot::capture`).

use std::ffi::{CStr, OsStr};
use std::os::fd::BorrowedFd;

use crate::tracker::{Ancestry, Kind};

pub trait ChangeObserver: Send + Sync {
    /// `len` bytes at `off` of `ino` (of `old_size` bytes) are written.
    fn write(&self, anc: &dyn Ancestry, ino: u64, off: u64, len: u64, old_size: u64);
    /// `ino` is cut or grown from `old_size` to `new_size` bytes.
    fn set_size(&self, anc: &dyn Ancestry, ino: u64, old_size: u64, new_size: u64);
    /// `len` bytes at `off` change in place (fallocate, punch hole).
    fn touch_range(&self, anc: &dyn Ancestry, ino: u64, off: u64, len: u64, size: u64);
    /// Everything from `off` on moves (collapse or insert range).
    fn shift(&self, anc: &dyn Ancestry, ino: u64, off: u64, new_size: u64);
    /// Metadata of `ino` changes (mode, owner, times, xattrs, links).
    fn meta(&self, anc: &dyn Ancestry, ino: u64, kind: Kind);
    /// The names in directory `dir` change.
    fn entries(&self, anc: &dyn Ancestry, dir: u64);
    /// `ino` was created as `name` in `parent`.
    fn created(&self, anc: &dyn Ancestry, parent: u64, name: &OsStr, ino: u64, kind: Kind);
    /// `ino` got another name.
    fn linked(&self, anc: &dyn Ancestry, ino: u64, kind: Kind);
    /// `ino` is now `name` in `parent`.
    fn moved(&self, anc: &dyn Ancestry, ino: u64, kind: Kind, parent: u64, name: &OsStr);
    /// `ino` lost its last name.
    fn gone(&self, ino: u64);
    /// `ino` is `size` bytes long now (after a change whose size only the
    /// filesystem knew).
    fn observe_size(&self, ino: u64, size: u64);
}

/// What a change is about to do to a file's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataChange {
    /// Bytes `off..off+len` change.
    Range { off: u64, len: u64 },
    /// The file is cut (or grown) to this size.
    Truncate { size: u64 },
    /// Everything from `off` on moves (collapse / insert range).
    Shift { off: u64 },
}

/// Called before each change while a snapshot runs, with a descriptor of
/// the inode (or directory) about to change, so that what the change
/// destroys can be saved first. Failures are the preserver's to record.
pub trait Preserver: Send + Sync {
    /// Before the data of file `ino` (open readable as `fd`) changes.
    fn before_data(&self, ino: u64, fd: BorrowedFd<'_>, change: DataChange);
    /// Before a metadata change to the inode `fd` refers to.
    fn before_meta(&self, ino: u64, fd: BorrowedFd<'_>);
    /// Before a name in directory `dir` (descriptor `fd`) changes.
    fn before_dir(&self, dir: u64, fd: BorrowedFd<'_>);
    /// Before `name` in `dir` is unlinked, replaced or moved away.
    fn before_unlink(&self, dir: u64, dir_fd: BorrowedFd<'_>, name: &CStr);
}

impl ChangeObserver for crate::tracker::Tracker {
    fn write(&self, anc: &dyn Ancestry, ino: u64, off: u64, len: u64, old_size: u64) {
        crate::tracker::Tracker::write(self, anc, ino, off, len, old_size)
    }
    fn set_size(&self, anc: &dyn Ancestry, ino: u64, old_size: u64, new_size: u64) {
        crate::tracker::Tracker::set_size(self, anc, ino, old_size, new_size)
    }
    fn touch_range(&self, anc: &dyn Ancestry, ino: u64, off: u64, len: u64, size: u64) {
        crate::tracker::Tracker::touch_range(self, anc, ino, off, len, size)
    }
    fn shift(&self, anc: &dyn Ancestry, ino: u64, off: u64, new_size: u64) {
        crate::tracker::Tracker::shift(self, anc, ino, off, new_size)
    }
    fn meta(&self, anc: &dyn Ancestry, ino: u64, kind: Kind) {
        crate::tracker::Tracker::meta(self, anc, ino, kind)
    }
    fn entries(&self, anc: &dyn Ancestry, dir: u64) {
        crate::tracker::Tracker::entries(self, anc, dir)
    }
    fn created(&self, anc: &dyn Ancestry, parent: u64, name: &OsStr, ino: u64, kind: Kind) {
        crate::tracker::Tracker::created(self, anc, parent, name, ino, kind)
    }
    fn linked(&self, anc: &dyn Ancestry, ino: u64, kind: Kind) {
        crate::tracker::Tracker::linked(self, anc, ino, kind)
    }
    fn moved(&self, anc: &dyn Ancestry, ino: u64, kind: Kind, parent: u64, name: &OsStr) {
        crate::tracker::Tracker::moved(self, anc, ino, kind, parent, name)
    }
    fn gone(&self, ino: u64) {
        crate::tracker::Tracker::gone(self, ino)
    }
    fn observe_size(&self, ino: u64, size: u64) {
        crate::tracker::Tracker::observe_size(self, ino, size)
    }
}
