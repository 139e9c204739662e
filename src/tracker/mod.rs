//! The dirty set: which blocks and which metadata changed since the epoch began.
//!
//! Every change to the protected directory is recorded here, keyed by the
//! backing inode number, *before* the change is made (so a crash can never
//! leave a change on disk that the tracker would not find, see below).
//!
//! A [`Record`] per changed inode holds
//! - data: a [`BlockSet`] of changed blocks below the size the file had when
//!   the epoch began, plus `grown_from`: every block from there on is new
//!   (appends, extension, truncate-up, holes made by seeking past the end);
//! - flags: `META` (mode, owner, times, xattrs, links), `FULL` (compare the
//!   whole file: created, or changed while we were not watching), `ENTRIES`
//!   (a directory's list of names changed), `DESCENDANT` (something below this
//!   directory changed);
//! - the link it was last seen under (parent inode, name), for paths.
//!
//! Invariant: every record's ancestors up to the root have records too, so a
//! snapshot can walk down from the root into exactly the directories that hold
//! a change, and `status` can name every dirty path.
//!
//! # Unprotected changes
//! Beside the dirty set, in memory only, the times the change-driven
//! schedule and `status` need ([`Tracker::unprotected`]): when the oldest
//! change of the epoch was marked, the same for a sealed epoch until its
//! snapshot commits (its changes are not protected before), and when the
//! latest change was marked. A change is marked before it is made, so an
//! age from these is never short. Records loaded from an earlier session
//! count from the start of their epoch (their own times were not kept:
//! older than they were, never younger), and a directory no committed
//! snapshot holds (none yet, or the state was lost) is unprotected as a
//! whole from then.
//!
//! # Durability
//! The state lives in memory and is written to sled by [`Tracker::flush`],
//! which the daemon calls periodically (no sync per write). A flush first
//! samples the time `T`, then collects the state: since every operation marks
//! before it acts, a change whose backing ctime is before `T` is either in the
//! collected state or is still being marked — and is then newer than `T` by
//! at most the scheduling gap. `durable_at = T` is stored after the data.
//! At the next mount, a scan of the backing tree marks for full comparison
//! every inode whose ctime is not older than `durable_at` minus a margin: the
//! changes lost by a SIGKILL after the last flush, and every change made to the
//! backing directory while nothing was mounted. ctime cannot be set by users;
//! the margin (1 s) covers the coarse kernel clock and small clock steps. Nothing here is needed to rebuild
//! a repository: if the state is lost, the next snapshot compares everything.
//!
//! (About 550 lines of code and 280 of tests: the dirty set and its invariants in one place; persistence and the
//! scan are files of their own.)

pub mod blockset;
mod persist;
mod record;
pub mod scan;

pub use persist::{LastSession, StoredRoot};
pub use record::*;

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::os::sys;
use crate::repo::state::StateDb;
use crate::util::Locked;

#[derive(Debug, Error)]
pub enum TrackerError {
    #[error("tracking database: {0}")]
    Db(#[from] sled::Error),
    #[error("tracking database holds a damaged record for inode {0}")]
    Corrupt(u64),
    #[error("the repository tracks another directory (root inode {stored}, this one is {found}, last at {path}); use a repository of its own for this directory")]
    OtherRoot { stored: u64, found: u64, path: String },
}

/// Where an inode is linked, as the live layer knows it.
pub trait Ancestry {
    /// The directory `ino` was last seen in and its name there.
    fn link_of(&self, ino: u64) -> Option<(u64, OsString)>;
}

/// An ancestry that knows nothing (for tests and for the scan, which passes
/// links explicitly).
pub struct NoAncestry;
impl Ancestry for NoAncestry {
    fn link_of(&self, _ino: u64) -> Option<(u64, OsString)> {
        None
    }
}

#[derive(Default)]
struct State {
    records: HashMap<u64, Record>,
    /// The dirty set of the epoch a snapshot in progress has sealed. Until
    /// the snapshot commits, sled keeps the union of this and `records`.
    sealed: Option<Arc<HashMap<u64, Record>>>,
    /// The committed snapshot this state is the delta from.
    base_snapshot: Option<String>,
    changed: HashSet<u64>,
    changed_chunks: HashSet<(u64, u64)>,
    removed: HashSet<u64>,
    root: u64,
    /// The directory's path, as recorded in `meta` at open.
    root_path: String,
    epoch_start_ns: i128,
    /// A mount-time scan has not finished: do not advance `durable_at`.
    scan_pending: bool,
    /// When the oldest change in `records` was marked (ns).
    first_change_ns: Option<i128>,
    /// When the oldest change in `sealed` was marked (ns).
    sealed_first_ns: Option<i128>,
    /// When the latest change was marked (ns), in whichever epoch.
    last_change_ns: Option<i128>,
    /// No committed snapshot holds the directory: all of it is unprotected
    /// since then (ns).
    whole_since_ns: Option<i128>,
    /// The oldest change the last committed snapshot holds (ns).
    committed_oldest_ns: Option<i128>,
}

/// Summary of the dirty set.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Summary {
    /// Regular files with changed data or metadata.
    pub files: u64,
    /// Directories whose entries or metadata changed.
    pub dirs: u64,
    /// Symlinks, devices, fifos, sockets with changes.
    pub others: u64,
    pub blocks: u64,
    pub bytes: u64,
    pub block_size: u64,
    /// When this epoch began (RFC 3339).
    pub since: String,
    /// The mount-time scan for changes made while unmounted is still running.
    pub scan_pending: bool,
    /// When the oldest change no committed snapshot holds was made (RFC
    /// 3339; at the latest: see [`Tracker::unprotected`]), and how long ago.
    #[serde(default)]
    pub oldest_change: Option<String>,
    #[serde(default)]
    pub oldest_change_age_sec: Option<u64>,
    /// When the latest change was made (RFC 3339).
    #[serde(default)]
    pub last_change: Option<String>,
    /// No committed snapshot holds the directory (none yet, or the state
    /// was lost): all of it is unprotected, not just the dirty set.
    #[serde(default)]
    pub no_snapshot: bool,
}

/// What no committed snapshot holds yet: the times of the oldest and the
/// latest change (ns since the epoch, the time each was marked).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Unprotected {
    /// None: everything is in a committed snapshot.
    pub oldest_ns: Option<i128>,
    pub last_ns: Option<i128>,
}

/// One dirty path.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DirtyEntry {
    pub path: String,
    pub ino: u64,
    pub kind: Kind,
    pub changes: Vec<String>,
    pub size: u64,
    pub blocks: u64,
    pub bytes: u64,
    /// Dirty block ranges, `[start, end)` in blocks.
    pub ranges: Vec<(u64, u64)>,
}

pub struct Tracker {
    bs: u64,
    state: Mutex<State>,
    db: Option<Arc<StateDb>>,
    flushing: Mutex<()>,
}

impl Tracker {
    /// A tracker that keeps its state in memory only.
    pub fn in_memory(bs: u64, root: u64) -> Tracker {
        let now = sys::now_ns();
        let st = State { root, epoch_start_ns: now, whole_since_ns: Some(now), ..Default::default() };
        Tracker { bs, state: Mutex::new(st), db: None, flushing: Mutex::new(()) }
    }

    pub fn block_size(&self) -> u64 {
        self.bs
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.locked()
    }

    /// Get or create the record of `ino`, keeping the ancestor invariant.
    /// Every change passes here (a creation for its parent): its time is
    /// marked too.
    fn touch<'a>(st: &'a mut State, anc: &dyn Ancestry, ino: u64, kind: Kind) -> &'a mut Record {
        let now = sys::now_ns();
        st.first_change_ns.get_or_insert(now);
        st.last_change_ns = Some(now);
        if !st.records.contains_key(&ino) {
            let (parent, name) =
                if ino == st.root { (0, OsString::new()) } else { anc.link_of(ino).unwrap_or((0, OsString::new())) };
            st.records.insert(ino, Record::new(kind, parent, name));
            if parent != 0 {
                Self::mark_ancestors(st, anc, parent);
            }
        }
        st.changed.insert(ino);
        st.records.get_mut(&ino).unwrap()
    }

    /// Mark `dir` and its ancestors as holding a change, stopping at the first
    /// that is already recorded (its ancestors are, by the invariant).
    fn mark_ancestors(st: &mut State, anc: &dyn Ancestry, mut dir: u64) {
        loop {
            if let Some(r) = st.records.get_mut(&dir) {
                if r.flags & DESCENDANT == 0 {
                    r.flags |= DESCENDANT;
                    st.changed.insert(dir);
                }
                return;
            }
            let (parent, name) =
                if dir == st.root { (0, OsString::new()) } else { anc.link_of(dir).unwrap_or((0, OsString::new())) };
            let mut r = Record::new(Kind::Dir, parent, name);
            r.flags = DESCENDANT;
            st.records.insert(dir, r);
            st.changed.insert(dir);
            if parent == 0 {
                return;
            }
            dir = parent;
        }
    }

    fn blocks_of(&self, off: u64, end: u64) -> (u64, u64) {
        (off / self.bs, end.div_ceil(self.bs))
    }

    fn add_blocks(st: &mut State, ino: u64, start: u64, end: u64) {
        let State { records, changed_chunks, .. } = st;
        if let Some(r) = records.get_mut(&ino) {
            r.blocks.insert_range(start, end, &mut |c| {
                changed_chunks.insert((ino, c));
            });
        }
    }

    fn grow(r: &mut Record, old_size: u64, bs: u64) {
        let g = old_size / bs;
        r.grown_from = Some(r.grown_from.map_or(g, |x| x.min(g)));
    }

    /// `len` bytes are about to be written at `off` into a file of `old_size` bytes.
    pub fn write(&self, anc: &dyn Ancestry, ino: u64, off: u64, len: u64, old_size: u64) {
        if len == 0 {
            return;
        }
        let end = off + len;
        let mut st = self.lock();
        let r = Self::touch(&mut st, anc, ino, Kind::File);
        r.size = old_size.max(end);
        if end > old_size {
            Self::grow(r, old_size, self.bs);
        }
        if off < old_size {
            let (s, e) = self.blocks_of(off, end.min(old_size));
            Self::add_blocks(&mut st, ino, s, e);
        }
    }

    /// The file is about to change size (truncate, extend).
    pub fn set_size(&self, anc: &dyn Ancestry, ino: u64, old_size: u64, new_size: u64) {
        let bs = self.bs;
        let mut st = self.lock();
        let r = Self::touch(&mut st, anc, ino, Kind::File);
        r.flags |= META;
        r.size = new_size;
        if new_size > old_size {
            Self::grow(r, old_size, bs);
        } else if new_size < old_size {
            if let Some(g) = r.grown_from {
                if g * bs >= new_size {
                    r.grown_from = None;
                }
            }
            let keep = new_size.div_ceil(bs);
            let State { records, changed_chunks, .. } = &mut *st;
            let r = records.get_mut(&ino).unwrap();
            r.blocks.remove_from(keep, &mut |c| {
                changed_chunks.insert((ino, c));
            });
            if !new_size.is_multiple_of(bs) {
                let b = new_size / bs;
                Self::add_blocks(&mut st, ino, b, b + 1);
            }
        }
    }

    /// Bytes `off..off+len` of a file of `size` bytes are about to change
    /// content without changing its size (punch hole, zero range, allocate).
    pub fn touch_range(&self, anc: &dyn Ancestry, ino: u64, off: u64, len: u64, size: u64) {
        let mut st = self.lock();
        let r = Self::touch(&mut st, anc, ino, Kind::File);
        r.size = size;
        if off < size && len > 0 {
            let (s, e) = self.blocks_of(off, (off + len).min(size));
            Self::add_blocks(&mut st, ino, s, e);
        }
    }

    /// Everything from `off` on is about to move (collapse or insert range).
    pub fn shift(&self, anc: &dyn Ancestry, ino: u64, off: u64, new_size: u64) {
        let mut st = self.lock();
        let r = Self::touch(&mut st, anc, ino, Kind::File);
        r.flags |= META;
        r.size = new_size;
        Self::grow(r, off, self.bs);
    }

    /// Metadata of `ino` (mode, owner, times, xattrs, link count) is about to change.
    pub fn meta(&self, anc: &dyn Ancestry, ino: u64, kind: Kind) {
        let mut st = self.lock();
        Self::touch(&mut st, anc, ino, kind).flags |= META;
    }

    /// The list of names in directory `dir` is about to change.
    pub fn entries(&self, anc: &dyn Ancestry, dir: u64) {
        let mut st = self.lock();
        Self::touch(&mut st, anc, dir, Kind::Dir).flags |= ENTRIES | META;
    }

    /// `ino` must be compared in full (created, or changed while unwatched).
    pub fn full(&self, anc: &dyn Ancestry, ino: u64, kind: Kind, size: u64) {
        let mut st = self.lock();
        let r = Self::touch(&mut st, anc, ino, kind);
        r.flags |= FULL | META;
        if kind == Kind::Dir {
            r.flags |= ENTRIES;
        }
        r.size = size;
    }

    /// A new inode `ino` now exists at `parent/name`.
    pub fn created(&self, anc: &dyn Ancestry, parent: u64, name: &OsStr, ino: u64, kind: Kind) {
        let mut st = self.lock();
        Self::touch(&mut st, anc, parent, Kind::Dir).flags |= ENTRIES | META;
        // A reused inode number must not inherit the old inode's record.
        if st.records.remove(&ino).is_some() {
            st.changed_chunks.retain(|(i, _)| *i != ino);
            st.removed.insert(ino);
        }
        let mut r = Record::new(kind, parent, name.to_os_string());
        r.flags = FULL | CREATED | META | if kind == Kind::Dir { ENTRIES } else { 0 };
        st.records.insert(ino, r);
        st.changed.insert(ino);
    }

    /// After an operation whose effect on the size is not known in advance.
    pub fn observe_size(&self, ino: u64, size: u64) {
        let mut st = self.lock();
        if let Some(r) = st.records.get_mut(&ino) {
            if r.size != size {
                r.size = size;
                st.changed.insert(ino);
            }
        }
    }

    /// `ino` is no longer linked anywhere: forget what we knew about it.
    pub fn gone(&self, ino: u64) {
        let mut st = self.lock();
        if ino == st.root {
            return;
        }
        if st.records.remove(&ino).is_some() {
            st.changed.remove(&ino);
            st.changed_chunks.retain(|(i, _)| *i != ino);
            st.removed.insert(ino);
        }
    }

    /// `ino` now lives at `parent/name` (after a rename).
    /// A new hard link to `ino` was made.
    pub fn linked(&self, anc: &dyn Ancestry, ino: u64, kind: Kind) {
        let mut st = self.lock();
        Self::touch(&mut st, anc, ino, kind).flags |= META | RENAMED;
    }

    pub fn moved(&self, anc: &dyn Ancestry, ino: u64, kind: Kind, parent: u64, name: &OsStr) {
        let mut st = self.lock();
        let r = Self::touch(&mut st, anc, ino, kind);
        r.flags |= META | RENAMED;
        r.parent = parent;
        r.name = name.to_os_string();
        Self::mark_ancestors(&mut st, anc, parent);
    }

    /// The scan for changes made while unmounted has finished.
    pub fn scan_done(&self) {
        self.lock().scan_pending = false;
    }

    pub fn scan_pending(&self) -> bool {
        self.lock().scan_pending
    }

    /// A copy of the record of `ino`, if it is dirty.
    pub fn record(&self, ino: u64) -> Option<Record> {
        self.lock().records.get(&ino).cloned()
    }

    /// The times of what no committed snapshot holds (see the module docs).
    pub fn unprotected(&self) -> Unprotected {
        Self::unprotected_of(&self.lock())
    }

    /// The time of the oldest change the last committed snapshot holds
    /// (None: it holds none), as [`Tracker::unprotected`] had it.
    pub fn committed_oldest(&self) -> Option<i128> {
        self.lock().committed_oldest_ns
    }

    fn unprotected_of(st: &State) -> Unprotected {
        let oldest = [st.whole_since_ns, st.sealed_first_ns, st.first_change_ns].into_iter().flatten().min();
        Unprotected { oldest_ns: oldest, last_ns: st.last_change_ns }
    }

    pub fn summary(&self) -> Summary {
        let st = self.lock();
        let secs = |ns: i128| ns.div_euclid(1_000_000_000) as i64;
        let u = Self::unprotected_of(&st);
        let mut s = Summary {
            block_size: self.bs,
            since: crate::util::rfc3339(secs(st.epoch_start_ns)),
            scan_pending: st.scan_pending,
            oldest_change: u.oldest_ns.map(|t| crate::util::rfc3339(secs(t))),
            oldest_change_age_sec: u.oldest_ns.map(|t| secs(sys::now_ns() - t).max(0) as u64),
            last_change: u.last_ns.filter(|_| u.oldest_ns.is_some()).map(|t| crate::util::rfc3339(secs(t))),
            no_snapshot: st.whole_since_ns.is_some(),
            ..Default::default()
        };
        for r in st.records.values().filter(|r| r.is_dirty()) {
            match r.kind {
                Kind::File => {
                    s.files += 1;
                    let (b, n) = r.dirty_amount(self.bs);
                    s.blocks += b;
                    s.bytes += n;
                }
                Kind::Dir if r.flags & (ENTRIES | META | FULL) != 0 => s.dirs += 1,
                Kind::Dir => {}
                Kind::Other => s.others += 1,
            }
        }
        s
    }

    /// Bytes of file data dirty (what `summary` counts as `bytes`), for
    /// `max_dirty`: it walks the dirty set, so it is asked only while
    /// something is unprotected.
    pub fn dirty_bytes(&self) -> u64 {
        let st = self.lock();
        st.records.values().filter(|r| r.kind == Kind::File && r.is_dirty()).map(|r| r.dirty_amount(self.bs).1).sum()
    }

    /// The path of a record, from the links of it and its ancestors (any
    /// depth: a chain longer than the number of records is a loop).
    fn path_of(st: &State, ino: u64) -> String {
        let mut parts: Vec<&[u8]> = Vec::new();
        let mut unknown = None;
        let mut cur = ino;
        while cur != st.root {
            match st.records.get(&cur) {
                Some(r) if r.parent != 0 && parts.len() <= st.records.len() => {
                    parts.push(r.name.as_bytes());
                    cur = r.parent;
                }
                Some(r) => {
                    parts.push(r.name.as_bytes());
                    unknown = Some(format!("<inode {cur}?>"));
                    break;
                }
                None => {
                    unknown = Some(format!("<inode {cur}>"));
                    break;
                }
            }
        }
        if let Some(u) = &unknown {
            parts.push(u.as_bytes());
        }
        parts.reverse();
        let joined = parts.join(&b'/');
        String::from_utf8_lossy(&joined).into_owned()
    }

    /// Every dirty inode with its path, sorted by path.
    pub fn entries_list(&self) -> Vec<DirtyEntry> {
        let st = self.lock();
        let mut out: Vec<DirtyEntry> = st
            .records
            .iter()
            .filter(|(_, r)| r.is_dirty())
            .map(|(&ino, r)| {
                let mut changes = Vec::new();
                if r.flags & CREATED != 0 {
                    changes.push("created");
                } else if r.flags & FULL != 0 {
                    changes.push("full");
                }
                if r.kind == Kind::File && (!r.blocks.is_empty() || r.grown_from.is_some()) && r.flags & FULL == 0 {
                    changes.push("data");
                }
                if r.flags & ENTRIES != 0 && r.flags & CREATED == 0 {
                    changes.push("entries");
                }
                if r.flags & META != 0 {
                    changes.push("meta");
                }
                let changes = changes.into_iter().map(String::from).collect();
                let (blocks, bytes) = r.dirty_amount(self.bs);
                DirtyEntry {
                    path: Self::path_of(&st, ino),
                    ino,
                    kind: r.kind,
                    changes,
                    size: r.size,
                    blocks,
                    bytes,
                    ranges: r.dirty_ranges(self.bs),
                }
            })
            .collect();
        out.sort_by(|a, b| a.path.cmp(&b.path));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BS: u64 = 65536;

    fn db_at(p: &std::path::Path) -> Arc<StateDb> {
        StateDb::open(p).unwrap()
    }

    struct Tree(HashMap<u64, (u64, OsString)>);
    impl Ancestry for Tree {
        fn link_of(&self, ino: u64) -> Option<(u64, OsString)> {
            self.0.get(&ino).cloned()
        }
    }

    fn tree() -> Tree {
        // root 1, dir a=2 under root, file f=3 in a, file g=4 in root
        let mut m = HashMap::new();
        m.insert(2, (1, OsString::from("a")));
        m.insert(3, (2, OsString::from("f")));
        m.insert(4, (1, OsString::from("g")));
        Tree(m)
    }

    #[test]
    fn write_across_block_boundary() {
        let t = Tracker::in_memory(BS, 1);
        let a = tree();
        t.write(&a, 3, BS - 10, 20, 10 * BS);
        let r = t.record(3).unwrap();
        assert_eq!(r.dirty_ranges(BS), vec![(0, 2)]);
        assert_eq!(r.dirty_amount(BS), (2, 2 * BS));
        // ancestors are recorded
        assert!(t.record(2).unwrap().flags & DESCENDANT != 0);
        assert!(t.record(1).unwrap().flags & DESCENDANT != 0);
        let e = t.entries_list();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].path, "a/f");
    }

    #[test]
    fn append_and_holes() {
        let t = Tracker::in_memory(BS, 1);
        let a = tree();
        // file of 100 bytes, append 10 bytes: block 0 changed
        t.write(&a, 4, 100, 10, 100);
        assert_eq!(t.record(4).unwrap().dirty_ranges(BS), vec![(0, 1)]);
        // a write far past the end makes holes: everything from the old end is new
        t.write(&a, 4, 10 * BS, 1, 110);
        let r = t.record(4).unwrap();
        assert_eq!(r.dirty_ranges(BS), vec![(0, 11)]);
        assert_eq!(r.dirty_amount(BS), (11, 10 * BS + 1));
    }

    #[test]
    fn truncate_down_and_up() {
        let t = Tracker::in_memory(BS, 1);
        let a = tree();
        t.write(&a, 3, 5 * BS, 10, 8 * BS); // block 5
        t.write(&a, 3, 0, 10, 8 * BS); // block 0
        t.set_size(&a, 3, 8 * BS, 3 * BS + 7); // cuts block 5, block 3 shortened
        let r = t.record(3).unwrap();
        assert_eq!(r.dirty_ranges(BS), vec![(0, 1), (3, 4)]);
        t.set_size(&a, 3, 3 * BS + 7, 6 * BS); // grows from block 3
        let r = t.record(3).unwrap();
        assert_eq!(r.dirty_ranges(BS), vec![(0, 1), (3, 6)]);
        // aligned truncate down touches no partial block
        let t = Tracker::in_memory(BS, 1);
        t.set_size(&a, 4, 8 * BS, 2 * BS);
        let r = t.record(4).unwrap();
        assert_eq!(r.dirty_ranges(BS), vec![]);
        assert!(r.flags & META != 0);
    }

    #[test]
    fn created_files_are_full_and_gone_files_vanish() {
        let t = Tracker::in_memory(BS, 1);
        let a = tree();
        t.created(&a, 1, OsStr::new("g"), 4, Kind::File);
        t.write(&a, 4, 0, 3 * BS, 0);
        let r = t.record(4).unwrap();
        assert_eq!(r.dirty_ranges(BS), vec![(0, 3)]);
        assert!(t.record(1).unwrap().flags & ENTRIES != 0);
        t.gone(4);
        assert!(t.record(4).is_none());
        let s = t.summary();
        assert_eq!((s.files, s.dirs), (0, 1));
    }

    #[test]
    fn persisted_state_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state");
        let a = tree();
        {
            let (t, last) = Tracker::open(&db_at(&p), BS, 1, "/x").unwrap();
            assert_eq!(last, LastSession::First);
            t.write(&a, 3, 7 * BS + 1, 1, 100 * BS);
            t.write(&a, 3, 5000 * BS, 1, 100 * BS);
            t.meta(&a, 4, Kind::File);
            t.close().unwrap();
        }
        let (t, last) = Tracker::open(&db_at(&p), BS, 1, "/x").unwrap();
        assert!(matches!(last, LastSession::Clean { .. }));
        let r = t.record(3).unwrap();
        assert_eq!(r.dirty_ranges(BS), vec![(7, 8), (100, 5001)]);
        assert_eq!(t.entries_list().iter().map(|e| e.path.as_str()).collect::<Vec<_>>(), vec!["a/f", "g"]);
        // Not closed: the next open sees an unclean session.
        drop(t);
        let (_t, last) = Tracker::open(&db_at(&p), BS, 1, "/x").unwrap();
        assert!(matches!(last, LastSession::Unclean { .. }));
        drop(_t);
        // Another directory's root is refused.
        assert!(matches!(Tracker::open(&db_at(&p), BS, 99, "/y"), Err(TrackerError::OtherRoot { .. })));
    }

    #[test]
    fn sealed_changes_persist_until_commit() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state");
        let a = tree();
        {
            let (t, _) = Tracker::open(&db_at(&p), BS, 1, "/x").unwrap();
            t.write(&a, 3, 0, 1, 10 * BS);
            let sealed = t.seal();
            assert_eq!(sealed.get(&3).unwrap().dirty_ranges(BS), vec![(0, 1)]);
            assert!(t.record(3).is_none()); // a new epoch
            t.write(&a, 3, 5 * BS, 1, 10 * BS);
            t.close().unwrap(); // crash before commit: both survive
        }
        {
            let (t, _) = Tracker::open(&db_at(&p), BS, 1, "/x").unwrap();
            assert_eq!(t.record(3).unwrap().dirty_ranges(BS), vec![(0, 1), (5, 6)]);
            let _ = t.seal();
            t.write(&a, 3, 7 * BS, 1, 10 * BS);
            t.commit("snap1").unwrap();
            assert_eq!(t.base_snapshot().as_deref(), Some("snap1"));
            t.close().unwrap();
        }
        let (t, _) = Tracker::open(&db_at(&p), BS, 1, "/x").unwrap();
        assert_eq!(t.record(3).unwrap().dirty_ranges(BS), vec![(7, 8)]);
        assert_eq!(t.base_snapshot().as_deref(), Some("snap1"));
        // a failed snapshot gives its changes back
        let _ = t.seal();
        t.unseal();
        assert_eq!(t.record(3).unwrap().dirty_ranges(BS), vec![(7, 8)]);
    }

    #[test]
    fn rewrite_puts_memory_back_over_a_stale_database() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state");
        let a = tree();
        {
            let db = db_at(&p);
            let (t, _) = Tracker::open(&db, BS, 1, "/x").unwrap();
            t.write(&a, 3, BS, 1, 10 * BS);
            let _ = t.seal();
            t.commit("snap1").unwrap();
            t.write(&a, 3, 2 * BS, 1, 10 * BS);
            t.flush().unwrap();
            // the database lost what it had, and kept a record from long ago
            db.tree("inodes").unwrap().clear().unwrap();
            db.tree("blocks").unwrap().clear().unwrap();
            db.tree("inodes")
                .unwrap()
                .insert(99u64.to_be_bytes(), Record::new(Kind::File, 1, "old".into()).encode())
                .unwrap();
            db.tree("meta").unwrap().remove("base_snapshot").unwrap();
            t.meta(&a, 4, Kind::File); // in memory only
            t.rewrite().unwrap();
        }
        let (t, last) = Tracker::open(&db_at(&p), BS, 1, "/x").unwrap();
        assert!(matches!(last, LastSession::Unclean { .. }));
        assert_eq!(t.record(3).unwrap().dirty_ranges(BS), vec![(2, 3)]);
        assert!(t.record(4).is_some());
        assert!(t.record(99).is_none());
        assert_eq!(t.base_snapshot().as_deref(), Some("snap1"));
    }

    /// A clock step, so that marks made one after the other differ.
    fn tick() {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }

    #[test]
    fn unprotected_changes_follow_seal_commit_and_unseal() {
        let t = Tracker::in_memory(BS, 1);
        let a = tree();
        // no committed snapshot yet: the whole directory is unprotected
        let whole = t.unprotected().oldest_ns;
        assert!(whole.is_some() && t.summary().no_snapshot);
        let _ = t.seal();
        t.commit("s0").unwrap();
        assert_eq!(t.unprotected().oldest_ns, None, "all in s0");
        assert_eq!(t.committed_oldest(), whole, "s0 holds all of it");
        assert!(!t.summary().no_snapshot && t.summary().oldest_change.is_none());
        tick();
        t.write(&a, 3, 0, 1, 10 * BS);
        let first = t.unprotected();
        assert!(first.oldest_ns > whole && first.oldest_ns == first.last_ns);
        tick();
        t.meta(&a, 4, Kind::File);
        let u = t.unprotected();
        assert_eq!(u.oldest_ns, first.oldest_ns, "the oldest stays");
        assert!(u.last_ns > first.last_ns, "the latest moves");
        // sealed: not protected before the commit
        let _ = t.seal();
        assert_eq!(t.unprotected().oldest_ns, first.oldest_ns);
        tick();
        t.write(&a, 3, 5 * BS, 1, 10 * BS);
        let after_seal = t.unprotected().last_ns;
        t.commit("s1").unwrap();
        assert_eq!(t.committed_oldest(), first.oldest_ns, "s1 holds the first change");
        // the change made after the seal is not in s1
        assert_eq!(t.unprotected().oldest_ns, after_seal);
        // a failed snapshot gives its changes' time back
        let _ = t.seal();
        tick();
        t.write(&a, 3, 6 * BS, 1, 10 * BS);
        t.unseal();
        assert_eq!(t.unprotected().oldest_ns, after_seal);
        let _ = t.seal();
        t.commit("s2").unwrap();
        assert_eq!(t.unprotected().oldest_ns, None);
        assert_eq!(t.committed_oldest(), after_seal);
        let _ = t.seal();
        t.commit("s3").unwrap();
        assert_eq!(t.committed_oldest(), None, "s3 holds no change");
        assert_eq!(t.summary().oldest_change, None);
    }

    #[test]
    fn loaded_changes_count_from_their_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state");
        let a = tree();
        let epoch = {
            let (t, _) = Tracker::open(&db_at(&p), BS, 1, "/x").unwrap();
            // first mount, no snapshot: all of it is at risk from the start
            let whole = t.unprotected().oldest_ns.unwrap();
            let _ = t.seal();
            t.commit("s1").unwrap();
            t.close().unwrap();
            whole
        };
        let epoch2 = {
            let (t, _) = Tracker::open(&db_at(&p), BS, 1, "/x").unwrap();
            assert_eq!(t.unprotected().oldest_ns, None, "clean and in s1");
            tick();
            let _ = t.seal();
            t.commit("s2").unwrap();
            let start = t.lock().epoch_start_ns;
            tick();
            t.write(&a, 3, 0, 1, 10 * BS);
            t.close().unwrap();
            start
        };
        assert!(epoch2 > epoch);
        let (t, _) = Tracker::open(&db_at(&p), BS, 1, "/x").unwrap();
        // the write's own time was not kept: it counts from its epoch
        assert_eq!(t.unprotected().oldest_ns, Some(epoch2));
        assert!(!t.summary().no_snapshot);
    }

    #[test]
    fn removed_records_are_removed_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state");
        let a = tree();
        {
            let (t, _) = Tracker::open(&db_at(&p), BS, 1, "/x").unwrap();
            t.write(&a, 3, 0, 1, 10);
            t.flush().unwrap();
            t.gone(3);
            t.close().unwrap();
        }
        let (t, _) = Tracker::open(&db_at(&p), BS, 1, "/x").unwrap();
        assert!(t.record(3).is_none());
    }
}
