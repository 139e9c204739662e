//! What the passthrough tells before each change it makes: the
//! `ChangeObserver` it calls. The tracker (the dirty set) is the observer of
//! a mount; tests use one that records the calls. Every call comes *before*
//! the backing file changes (a crash in between leaves the change marked,
//! never unmarked), with the `Ancestry` to name the inode's directories.
//! (Copy-before-write, which saves what a running snapshot still needs, is
//! the passthrough's own: it needs the descriptors.)

use std::ffi::OsStr;

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
