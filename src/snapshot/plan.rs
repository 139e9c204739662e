//! The shortcuts an incremental snapshot takes, written once: the
//! `Builder` follows them, and `verify --live` checks every one it would
//! take instead of taking it. With the dirty set of the epoch (records per
//! backing inode) and the previous snapshot:
//! - a directory is walked (listed, each entry stat'ed) when there is no
//!   dirty set (full), it is new, it has a record, or a changed inode is
//!   hard-linked in it (the previous link table); any other directory is
//!   the previous snapshot's tree, by id;
//! - an entry's xattrs and symlink target are the previous snapshot's
//!   unless its record has `META` or `FULL`;
//! - a file's block list is the previous one whole when it has no record
//!   and the same size; the previous one except the dirty blocks when it
//!   has a record without `FULL`; else the file is read whole.

use std::collections::HashSet;

use super::{forced_dirs, LinkTable};
use crate::tracker::{Record, FULL, META};

/// What a file's previous block list is good for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocks {
    /// Kept whole.
    Keep,
    /// Kept except the record's dirty blocks (and those past the old end).
    KeepClean,
    /// Read whole.
    Read,
}

/// The rules for one snapshot (or one check of the next one).
pub struct Plan {
    incremental: bool,
    /// Directories walked because a changed inode is hard-linked there.
    forced: HashSet<Vec<u8>>,
}

impl Plan {
    /// `incremental`: there is a dirty set and a previous snapshot it is
    /// relative to; `changed(ino)`: the inode has a record.
    pub fn new(incremental: bool, links: &LinkTable, changed: impl Fn(u64) -> bool) -> Plan {
        let forced = if incremental { forced_dirs(links, changed) } else { HashSet::new() };
        Plan { incremental, forced }
    }

    pub fn incremental(&self) -> bool {
        self.incremental
    }

    /// Whether the directory at `path` (relative to the root) is walked:
    /// `recorded` it has a record, `before` it was in the previous snapshot
    /// (same name and inode).
    pub fn must_walk(&self, path: &[u8], recorded: bool, before: bool) -> bool {
        !self.incremental || !before || recorded || self.forced.contains(path)
    }

    /// Whether an entry keeps the previous snapshot's xattrs and target.
    pub fn meta_clean(&self, rec: Option<&Record>) -> bool {
        self.incremental && rec.is_none_or(|r| r.flags & (META | FULL) == 0)
    }

    /// What a file's previous block list (of a file of `old_size` bytes,
    /// now `size`) is good for.
    pub fn blocks(&self, rec: Option<&Record>, before: bool, old_size: u64, size: u64) -> Blocks {
        match (self.incremental && before, rec) {
            (false, _) => Blocks::Read,
            (true, None) if old_size == size => Blocks::Keep,
            (true, None) => Blocks::Read,
            (true, Some(r)) if r.flags & FULL != 0 => Blocks::Read,
            (true, Some(_)) => Blocks::KeepClean,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rules() {
        let links: LinkTable = [(b"a/b/link".to_vec(), 7u64)].into_iter().collect();
        let p = Plan::new(true, &links, |ino| ino == 7);
        assert!(p.must_walk(b"a/b", false, true) && p.must_walk(b"a", false, true) && p.must_walk(b"", false, true));
        assert!(!p.must_walk(b"c", false, true));
        assert!(p.must_walk(b"c", true, true) && p.must_walk(b"c", false, false));
        let full = Plan::new(false, &links, |_| true);
        assert!(full.must_walk(b"c", false, true));
        assert!(!full.meta_clean(None));
        let mut r = Record {
            kind: crate::tracker::Kind::File,
            flags: 0,
            parent: 1,
            name: "f".into(),
            size: 0,
            grown_from: None,
            blocks: crate::tracker::blockset::BlockSet::new(),
        };
        assert!(p.meta_clean(None) && p.meta_clean(Some(&r)));
        assert_eq!(p.blocks(Some(&r), true, 10, 20), Blocks::KeepClean);
        r.flags = META;
        assert!(!p.meta_clean(Some(&r)));
        r.flags = FULL;
        assert_eq!(p.blocks(Some(&r), true, 10, 10), Blocks::Read);
        assert_eq!(p.blocks(None, true, 10, 10), Blocks::Keep);
        assert_eq!(p.blocks(None, true, 10, 11), Blocks::Read);
        assert_eq!(p.blocks(None, false, 10, 10), Blocks::Read);
        assert_eq!(full.blocks(None, true, 10, 10), Blocks::Read);
    }
}
