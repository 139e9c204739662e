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

pub mod blockset;
pub mod scan;

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::os::sys;
use crate::repo::state::StateDb;
use crate::tracker::blockset::BlockSet;
use crate::util::Locked;

pub const META: u8 = 1;
pub const FULL: u8 = 2;
pub const CREATED: u8 = 4;
pub const ENTRIES: u8 = 8;
pub const DESCENDANT: u8 = 16;
/// The inode got a name this epoch (moved, or a new hard link): the next
/// snapshot may find it where the previous one had nothing, and read it
/// whole (copy-before-write must then save every block it changes).
pub const RENAMED: u8 = 32;

/// How far before the last durable point the mount-time scan looks (ns).
pub const SCAN_MARGIN_NS: i128 = 1_000_000_000;

#[derive(Debug, Error)]
pub enum TrackerError {
    #[error("tracking database: {0}")]
    Db(#[from] sled::Error),
    #[error("tracking database holds a damaged record for inode {0}")]
    Corrupt(u64),
    #[error("the repository tracks another directory (root inode {stored}, this one is {found}, last at {path}); use a repository of its own for this directory")]
    OtherRoot { stored: u64, found: u64, path: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    File,
    Dir,
    Other,
}

impl Kind {
    pub fn from_mode(mode: u32) -> Kind {
        match mode & libc::S_IFMT {
            libc::S_IFREG => Kind::File,
            libc::S_IFDIR => Kind::Dir,
            _ => Kind::Other,
        }
    }
    fn code(self) -> u8 {
        match self {
            Kind::File => 0,
            Kind::Dir => 1,
            Kind::Other => 2,
        }
    }
    fn from_code(c: u8) -> Option<Kind> {
        match c {
            0 => Some(Kind::File),
            1 => Some(Kind::Dir),
            2 => Some(Kind::Other),
            _ => None,
        }
    }
}

/// What changed about one inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub kind: Kind,
    pub flags: u8,
    pub parent: u64,
    pub name: OsString,
    pub size: u64,
    pub grown_from: Option<u64>,
    pub blocks: BlockSet,
}

impl Record {
    fn new(kind: Kind, parent: u64, name: OsString) -> Record {
        Record { kind, flags: 0, parent, name, size: 0, grown_from: None, blocks: BlockSet::new() }
    }

    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(40 + self.name.len());
        v.push(1u8);
        v.push(self.kind.code());
        v.push(self.flags);
        v.extend_from_slice(&self.parent.to_le_bytes());
        v.extend_from_slice(&self.size.to_le_bytes());
        v.extend_from_slice(&self.grown_from.unwrap_or(u64::MAX).to_le_bytes());
        v.extend_from_slice(&(self.name.len() as u32).to_le_bytes());
        v.extend_from_slice(self.name.as_bytes());
        v
    }

    fn decode(b: &[u8]) -> Option<Record> {
        if b.len() < 31 || b[0] != 1 {
            return None;
        }
        let kind = Kind::from_code(b[1])?;
        let u = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
        let nlen = u32::from_le_bytes(b[27..31].try_into().unwrap()) as usize;
        let name = b.get(31..31 + nlen)?.to_vec();
        let g = u(19);
        Some(Record {
            kind,
            flags: b[2],
            parent: u(3),
            size: u(11),
            grown_from: if g == u64::MAX { None } else { Some(g) },
            name: OsString::from_vec(name),
            blocks: BlockSet::new(),
        })
    }

    /// The union of an older record and a newer one for the same inode.
    pub fn merge(old: &Record, new: &Record) -> Record {
        let mut m = new.clone();
        m.flags |= old.flags;
        m.blocks.union_with(&old.blocks);
        m.grown_from = match (old.grown_from, new.grown_from) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        m
    }

    /// Whether this record says anything beyond "a descendant changed".
    pub fn is_dirty(&self) -> bool {
        self.flags & !DESCENDANT != 0 || !self.blocks.is_empty() || self.grown_from.is_some()
    }

    /// Dirty blocks as sorted `start..end` runs, clipped to the current size.
    pub fn dirty_ranges(&self, bs: u64) -> Vec<(u64, u64)> {
        if self.kind != Kind::File {
            return Vec::new();
        }
        let n = self.size.div_ceil(bs);
        if self.flags & FULL != 0 {
            return if n > 0 { vec![(0, n)] } else { Vec::new() };
        }
        let tail = self.grown_from.map(|g| g.min(n)).unwrap_or(n);
        let mut out: Vec<(u64, u64)> = self
            .blocks
            .ranges()
            .into_iter()
            .filter_map(|(s, e)| if s < tail { Some((s, e.min(tail))) } else { None })
            .collect();
        if tail < n {
            match out.last_mut() {
                Some(last) if last.1 == tail => last.1 = n,
                _ => out.push((tail, n)),
            }
        }
        out
    }

    /// (blocks, bytes) that are dirty.
    pub fn dirty_amount(&self, bs: u64) -> (u64, u64) {
        let ranges = self.dirty_ranges(bs);
        let blocks: u64 = ranges.iter().map(|(s, e)| e - s).sum();
        let mut bytes = blocks * bs;
        let n = self.size.div_ceil(bs);
        if let Some(&(_, e)) = ranges.last() {
            if e == n && !self.size.is_multiple_of(bs) {
                bytes -= bs - self.size % bs;
            }
        }
        (blocks, bytes)
    }
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

/// The trees of the tracking state, for one piece of work.
struct Db {
    state: Arc<StateDb>,
    inodes: sled::Tree,
    blocks: sled::Tree,
    meta: sled::Tree,
}

impl Db {
    /// Record whose state this is and that a session runs (unclean).
    fn session(&self, root: u64, root_path: &str) -> Result<(), sled::Error> {
        self.meta.insert("root_ino", &root.to_le_bytes())?;
        self.meta.insert("root_path", root_path.as_bytes())?;
        self.meta.insert("clean", &[0u8])?;
        Ok(())
    }

    /// Make what was written durable, then (unless a scan is pending) the
    /// durable point `t`, after the data it covers.
    fn durable(&self, t: i128, scan_pending: bool) -> Result<(), sled::Error> {
        self.flush()?;
        if !scan_pending {
            self.meta.insert("durable_at", &t.to_le_bytes())?;
            self.flush()?;
        }
        Ok(())
    }

    fn of(state: &Arc<StateDb>) -> Result<Db, sled::Error> {
        Ok(Db {
            state: state.clone(),
            inodes: state.tree("inodes")?,
            blocks: state.tree("blocks")?,
            meta: state.tree("meta")?,
        })
    }

    fn flush(&self) -> Result<(), sled::Error> {
        self.state.flush()
    }
}

fn chunk_key(ino: u64, c: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&ino.to_be_bytes());
    k[8..].copy_from_slice(&c.to_be_bytes());
    k
}

fn get_i128(t: &sled::Tree, k: &str) -> Result<Option<i128>, sled::Error> {
    Ok(t.get(k)?.and_then(|v| v.as_ref().try_into().ok().map(i128::from_le_bytes)))
}

fn get_u64(t: &sled::Tree, k: &str) -> Result<Option<u64>, sled::Error> {
    Ok(t.get(k)?.and_then(|v| v.as_ref().try_into().ok().map(u64::from_le_bytes)))
}

/// The root inode and path a persisted state belongs to.
pub type StoredRoot = (u64, String);

/// What opening the persisted state found out about the last session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LastSession {
    /// Nothing recorded: this is the first mount; the epoch begins now.
    First,
    /// Unmounted cleanly at this time (ns).
    Clean { at_ns: i128 },
    /// Killed or crashed; the last durable point was this time (ns).
    Unclean { durable_ns: i128 },
}

impl LastSession {
    /// Inodes with a ctime at or after this may have changed unseen.
    pub fn scan_threshold(&self) -> Option<i128> {
        match *self {
            LastSession::First => None,
            LastSession::Clean { at_ns } => Some(at_ns - SCAN_MARGIN_NS),
            LastSession::Unclean { durable_ns } => Some(durable_ns - SCAN_MARGIN_NS),
        }
    }
}

impl Tracker {
    /// A tracker that keeps its state in memory only.
    pub fn in_memory(bs: u64, root: u64) -> Tracker {
        let st = State { root, epoch_start_ns: sys::now_ns(), ..Default::default() };
        Tracker { bs, state: Mutex::new(st), db: None, flushing: Mutex::new(()) }
    }

    /// Read the persisted state at `path` without changing it (for `status`
    /// of an unmounted directory). Returns the last session and the root the
    /// state belongs to.
    pub fn load(state: &Arc<StateDb>, bs: u64) -> Result<(Tracker, LastSession, Option<StoredRoot>), TrackerError> {
        let Db { inodes, blocks, meta, .. } = Db::of(state)?;
        let mut st = State::default();
        let stored_root = match get_u64(&meta, "root_ino")? {
            Some(r) => {
                let path = meta.get("root_path")?.map(|v| String::from_utf8_lossy(&v).into_owned()).unwrap_or_default();
                Some((r, path))
            }
            None => None,
        };
        st.root = stored_root.as_ref().map(|r| r.0).unwrap_or(0);
        st.base_snapshot = meta.get("base_snapshot")?.map(|v| String::from_utf8_lossy(&v).into_owned());
        let last = match get_i128(&meta, "epoch_start")? {
            None => {
                st.epoch_start_ns = sys::now_ns();
                LastSession::First
            }
            Some(start) => {
                st.epoch_start_ns = start;
                let durable = get_i128(&meta, "durable_at")?.unwrap_or(start);
                if meta.get("clean")?.is_some_and(|v| v.as_ref() == [1]) {
                    LastSession::Clean { at_ns: durable }
                } else {
                    LastSession::Unclean { durable_ns: durable }
                }
            }
        };
        for kv in inodes.iter() {
            let (k, v) = kv?;
            let ino = u64::from_be_bytes(k.as_ref().try_into().map_err(|_| TrackerError::Corrupt(0))?);
            let rec = Record::decode(&v).ok_or(TrackerError::Corrupt(ino))?;
            st.records.insert(ino, rec);
        }
        for kv in blocks.iter() {
            let (k, v) = kv?;
            if k.len() != 16 {
                continue;
            }
            let ino = u64::from_be_bytes(k[..8].try_into().unwrap());
            let c = u64::from_be_bytes(k[8..].try_into().unwrap());
            if let Some(r) = st.records.get_mut(&ino) {
                r.blocks.set_chunk(c, &v);
            }
        }
        let t = Tracker { bs, state: Mutex::new(st), db: Some(state.clone()), flushing: Mutex::new(()) };
        Ok((t, last, stored_root))
    }

    /// Open the persisted state at `path` for a directory whose root has
    /// backing inode `root`, and mark the session as running (unclean until
    /// [`Tracker::close`]).
    pub fn open(
        state: &Arc<StateDb>,
        bs: u64,
        root: u64,
        root_path: &str,
    ) -> Result<(Tracker, LastSession), TrackerError> {
        let (t, last, stored) = Self::load(state, bs)?;
        if let Some((stored, path)) = stored {
            if stored != root {
                return Err(TrackerError::OtherRoot { stored, found: root, path });
            }
        }
        let db = Db::of(state)?;
        {
            let mut st = t.lock();
            st.root = root;
            st.root_path = root_path.to_string();
            st.scan_pending = last.scan_threshold().is_some();
            db.meta.insert("epoch_start", &st.epoch_start_ns.to_le_bytes())?;
            if last == LastSession::First {
                db.meta.insert("durable_at", &st.epoch_start_ns.to_le_bytes())?;
            }
        }
        db.session(root, root_path)?;
        db.flush()?;
        Ok((t, last))
    }

    pub fn block_size(&self) -> u64 {
        self.bs
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.locked()
    }

    /// Get or create the record of `ino`, keeping the ancestor invariant.
    fn touch<'a>(st: &'a mut State, anc: &dyn Ancestry, ino: u64, kind: Kind) -> &'a mut Record {
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

    pub fn summary(&self) -> Summary {
        let st = self.lock();
        let mut s = Summary {
            block_size: self.bs,
            since: crate::util::rfc3339((st.epoch_start_ns / 1_000_000_000) as i64),
            scan_pending: st.scan_pending,
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

    /// What sled must hold for `ino`: the union of the sealed and the current record.
    fn persisted_view(st: &State, ino: u64) -> Option<Record> {
        let sealed = st.sealed.as_ref().and_then(|s| s.get(&ino));
        match (sealed, st.records.get(&ino)) {
            (Some(a), Some(b)) => Some(Record::merge(a, b)),
            (Some(a), None) => Some(a.clone()),
            (None, Some(b)) => Some(b.clone()),
            (None, None) => None,
        }
    }

    /// Write what changed since the last flush to sled and make it durable.
    pub fn flush(&self) -> Result<(), TrackerError> {
        let Some(state) = &self.db else { return Ok(()) };
        let _one_at_a_time = self.flushing.locked();
        // A failed database gets the whole state at once when it is usable
        // again ([`Tracker::rewrite`]): a flush of the latest changes alone
        // could mark it durable while it lacks earlier ones.
        if let Some((_, e)) = state.failure() {
            return Err(TrackerError::Db(sled::Error::Io(std::io::Error::other(format!(
                "the state database is failing ({e}); tracking goes on in memory"
            )))));
        }
        let r = self.flush_to(state);
        if let Err(e) = &r {
            state.failed(e);
        }
        r
    }

    fn flush_to(&self, state: &Arc<StateDb>) -> Result<(), TrackerError> {
        let db = Db::of(state)?;
        let t = sys::now_ns();
        let (removed, recs, chunks, scan_pending) = {
            let mut st = self.lock();
            let mut inos: HashSet<u64> = st.removed.drain().collect();
            inos.extend(st.changed.drain());
            let mut removed = Vec::new();
            let mut recs = Vec::new();
            for ino in inos {
                match Self::persisted_view(&st, ino) {
                    Some(r) => recs.push((ino, r.encode())),
                    None => removed.push(ino),
                }
            }
            let cc: Vec<(u64, u64)> = st.changed_chunks.drain().collect();
            let chunks: Vec<(u64, u64, Option<Vec<u8>>)> = cc
                .into_iter()
                .filter_map(|(ino, c)| Self::persisted_view(&st, ino).map(|r| (ino, c, r.blocks.chunk_bytes(c))))
                .collect();
            (removed, recs, chunks, st.scan_pending)
        };
        // Removals first: an inode number can be removed and reused within
        // one interval; what follows writes its new state.
        for ino in &removed {
            db.inodes.remove(ino.to_be_bytes())?;
            let keys: Vec<sled::IVec> = db.blocks.scan_prefix(ino.to_be_bytes()).keys().collect::<Result<_, _>>()?;
            for k in keys {
                db.blocks.remove(k)?;
            }
        }
        for (ino, bytes) in recs {
            db.inodes.insert(ino.to_be_bytes(), bytes)?;
        }
        for (ino, c, bytes) in chunks {
            match bytes {
                Some(b) => db.blocks.insert(chunk_key(ino, c), b)?,
                None => db.blocks.remove(chunk_key(ino, c))?,
            };
        }
        db.durable(t, scan_pending)?;
        Ok(())
    }

    /// Write the whole state to a database that may have lost recent
    /// flushes (reopened after a failure), and make it durable.
    pub fn rewrite(&self) -> Result<(), TrackerError> {
        let Some(state) = &self.db else { return Ok(()) };
        let _one_at_a_time = self.flushing.locked();
        let db = Db::of(state)?;
        let t = sys::now_ns();
        let (recs, chunks, root, root_path, start, base, scan_pending) = {
            let mut st = self.lock();
            st.removed.clear();
            st.changed.clear();
            st.changed_chunks.clear();
            let mut inos: HashSet<u64> = st.records.keys().copied().collect();
            if let Some(s) = &st.sealed {
                inos.extend(s.keys().copied());
            }
            let mut recs = Vec::new();
            let mut chunks = Vec::new();
            for ino in inos {
                if let Some(r) = Self::persisted_view(&st, ino) {
                    for c in r.blocks.chunk_indices() {
                        if let Some(b) = r.blocks.chunk_bytes(c) {
                            chunks.push((ino, c, b));
                        }
                    }
                    recs.push((ino, r.encode()));
                }
            }
            (recs, chunks, st.root, st.root_path.clone(), st.epoch_start_ns, st.base_snapshot.clone(), st.scan_pending)
        };
        // Without a base the next snapshot compares everything: so a crash
        // while the records are rewritten (sled recovers a prefix of the
        // operations) can never leave a base with half of its records.
        db.meta.remove("base_snapshot")?;
        db.flush()?;
        db.inodes.clear()?;
        db.blocks.clear()?;
        for (ino, bytes) in recs {
            db.inodes.insert(ino.to_be_bytes(), bytes)?;
        }
        for (ino, c, b) in chunks {
            db.blocks.insert(chunk_key(ino, c), b)?;
        }
        db.meta.insert("epoch_start", &start.to_le_bytes())?;
        match base {
            Some(b) => db.meta.insert("base_snapshot", b.as_bytes())?,
            None => db.meta.remove("base_snapshot")?,
        };
        db.session(root, &root_path)?;
        db.durable(t, scan_pending)?;
        Ok(())
    }

    /// The committed snapshot this dirty set is relative to.
    pub fn base_snapshot(&self) -> Option<String> {
        self.lock().base_snapshot.clone()
    }

    /// Start a snapshot: the current dirty set becomes the sealed one and a new
    /// epoch begins. The caller holds writers off for this instant.
    pub fn seal(&self) -> Arc<HashMap<u64, Record>> {
        let mut st = self.lock();
        assert!(st.sealed.is_none(), "a snapshot is already in progress");
        let sealed = Arc::new(std::mem::take(&mut st.records));
        st.sealed = Some(sealed.clone());
        st.epoch_start_ns = sys::now_ns();
        sealed
    }

    /// The snapshot of the sealed epoch failed: its changes belong to the
    /// current epoch again.
    pub fn unseal(&self) {
        let mut st = self.lock();
        let Some(sealed) = st.sealed.take() else { return };
        for (ino, old) in sealed.iter() {
            let merged = match st.records.get(ino) {
                Some(new) => Record::merge(old, new),
                None => old.clone(),
            };
            st.records.insert(*ino, merged);
        }
    }

    /// The snapshot of the sealed epoch is committed as `snapshot`: forget the
    /// sealed changes and remember which snapshot the state is relative to.
    pub fn commit(&self, snapshot: &str) -> Result<(), TrackerError> {
        {
            let mut st = self.lock();
            let Some(sealed) = st.sealed.take() else { return Ok(()) };
            for (ino, r) in sealed.iter() {
                st.changed.insert(*ino);
                for c in r.blocks.chunk_indices() {
                    st.changed_chunks.insert((*ino, c));
                }
            }
            st.base_snapshot = Some(snapshot.to_string());
            let start = st.epoch_start_ns;
            if let Some(state) = &self.db {
                let db = Db::of(state)?;
                db.meta.insert("base_snapshot", snapshot.as_bytes())?;
                db.meta.insert("epoch_start", &start.to_le_bytes())?;
            }
        }
        self.flush()
    }

    /// Forget everything: the next snapshot compares every file in full
    /// (used when the state does not belong to the repository's last snapshot).
    pub fn reset_to(&self, snapshot: Option<&str>) -> Result<(), TrackerError> {
        {
            let mut st = self.lock();
            let inos: Vec<u64> = st.records.keys().copied().collect();
            st.records.clear();
            st.removed.extend(inos);
            st.base_snapshot = snapshot.map(str::to_string);
            if let Some(state) = &self.db {
                let db = Db::of(state)?;
                match snapshot {
                    Some(s) => db.meta.insert("base_snapshot", s.as_bytes())?,
                    None => db.meta.remove("base_snapshot")?,
                };
            }
        }
        self.flush()
    }

    /// Flush and record a clean end of the session.
    pub fn close(&self) -> Result<(), TrackerError> {
        self.flush()?;
        if let Some(state) = &self.db {
            let db = Db::of(state)?;
            if !self.scan_pending() {
                db.meta.insert("durable_at", &sys::now_ns().to_le_bytes())?;
            }
            db.meta.insert("clean", &[1u8])?;
            db.flush()?;
        }
        Ok(())
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
