//! The dirty set in sled (`inodes`, `blocks`, `meta` trees): loading it at
//! mount, the durable points, writing it back after a failure, and what a
//! snapshot's seal and commit do to it.

use super::*;
use crate::os::sys;
use crate::repo::state::StateDb;
use crate::util::Locked;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

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
        // The times of the changes were not kept: they are no older than
        // their epoch (see the module docs).
        if !st.records.is_empty() {
            st.first_change_ns = Some(st.epoch_start_ns);
        }
        if st.base_snapshot.is_none() {
            st.whole_since_ns = Some(st.epoch_start_ns);
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
        // the sealed changes stay unprotected until the commit; changes
        // from now on are the new epoch's
        st.sealed_first_ns = st.first_change_ns.take();
        sealed
    }

    /// The snapshot of the sealed epoch failed: its changes belong to the
    /// current epoch again.
    pub fn unseal(&self) {
        let mut st = self.lock();
        let Some(sealed) = st.sealed.take() else { return };
        st.first_change_ns = [st.first_change_ns, st.sealed_first_ns.take()].into_iter().flatten().min();
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
            st.committed_oldest_ns = [st.sealed_first_ns.take(), st.whole_since_ns.take()].into_iter().flatten().min();
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
            st.first_change_ns = None;
            if snapshot.is_none() {
                st.whole_since_ns.get_or_insert_with(sys::now_ns);
            }
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
