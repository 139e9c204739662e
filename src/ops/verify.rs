//! `snapfs verify`: is every snapshot in the repository whole?
//!
//! 1. Every pack's trailer is read (a truncated or foreign file is named).
//! 2. With `read_data`, whole packs (all, or a random subset) are read: the
//!    pack's bytes must hash to its name and every object in it must decode
//!    and hash to its id.
//! 3. The index must agree with the trailers (a persistent index only: a
//!    memory index is built from the trailers).
//! 4. Every snapshot record must hash to its name and parse; every tree,
//!    block-list node and link table a snapshot references is read (and so
//!    verified), and every blob it references must be in some pack (and not
//!    found damaged in step 2). Subtrees and files already checked are not
//!    visited again, so the cost is the unique metadata plus the data read.
//!
//! The report names each damaged object and, for each, the snapshots and
//! paths that depend on it.
//!
//! (About 800 lines of code and 100 of tests: verify's four phases share one report and one walk; repair and verify
//! --live are files of their own.)

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::ops::OpResult;
use crate::repo::objects::{EntryKind, ObjKind, ObjectId, SnapshotId, Totals, TreeId};
use crate::repo::objstore::{ObjResult, Objects};
use crate::repo::pack::{self, PackEntry};
use crate::repo::store::{FileKind, StoreError};
use crate::snapshot::{self, SnapshotInfo};
use crate::util::Locked;

#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    pub read_data: bool,
    /// Percent of packs to read with `read_data` (None: all).
    pub subset: Option<f64>,
    /// Parallel pack readers.
    pub jobs: usize,
    /// The repository's block size: every record must have it.
    pub block_size: Option<u64>,
}

/// Live counters, for a progress bar.
#[derive(Debug, Default)]
pub struct VerifyProgress {
    pub packs_total: AtomicU64,
    pub packs_done: AtomicU64,
    pub bytes_total: AtomicU64,
    pub bytes_done: AtomicU64,
    pub snapshots_total: AtomicU64,
    pub snapshots_done: AtomicU64,
    /// 1: trailers, 2: reading data, 3: snapshots, 4: deleting, 5: copying
    /// (prune), 6: comparing the live directory (verify --live).
    pub phase: AtomicU64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ProgressView {
    pub phase: String,
    pub packs_total: u64,
    pub packs_done: u64,
    pub bytes_total: u64,
    pub bytes_done: u64,
    pub snapshots_total: u64,
    pub snapshots_done: u64,
}

impl VerifyProgress {
    pub fn view(&self) -> ProgressView {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ProgressView {
            phase: match l(&self.phase) {
                1 => "packs",
                2 => "data",
                3 => "snapshots",
                4 => "deleting",
                5 => "copying",
                6 => "live",
                _ => "starting",
            }
            .into(),
            packs_total: l(&self.packs_total),
            packs_done: l(&self.packs_done),
            bytes_total: l(&self.bytes_total),
            bytes_done: l(&self.bytes_done),
            snapshots_total: l(&self.snapshots_total),
            snapshots_done: l(&self.snapshots_done),
        }
    }
}

/// Where a damaged object is needed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UsedBy {
    pub snapshot: String,
    /// Paths in the snapshot ("" is its root), at most [`MAX_PATHS`].
    pub paths: Vec<String>,
    /// How many paths there are in all.
    pub count: u64,
}

const MAX_PATHS: usize = 20;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DamagedObject {
    pub id: String,
    /// blob, file node, tree, links
    pub kind: String,
    /// What is wrong.
    pub problem: String,
    /// The pack holding it, if any.
    pub pack: Option<String>,
    /// Empty: no snapshot uses it (prune would drop it).
    pub used_by: Vec<UsedBy>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DamagedFile {
    /// A pack or snapshot record name.
    pub name: String,
    pub problem: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct VerifyReport {
    pub ok: bool,
    pub time: String,
    pub time_sec: i64,
    pub read_data: bool,
    pub subset: Option<f64>,
    pub snapshots: u64,
    pub packs: u64,
    pub packs_read: u64,
    pub objects: u64,
    pub bytes_read: u64,
    pub trees_checked: u64,
    pub files_checked: u64,
    pub damaged_packs: Vec<DamagedFile>,
    pub damaged_records: Vec<DamagedFile>,
    pub index_problems: Vec<String>,
    pub damaged_objects: Vec<DamagedObject>,
    /// Packs a prune on another host deleted while this verify ran (gone,
    /// and named by a deletion plan): not damage.
    #[serde(default)]
    pub packs_deleted_meanwhile: u64,
    pub duration_ms: u64,
    /// With `--repair`: what was healed before this (second) verify.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repair: Option<crate::ops::repair::RepairReport>,
}

impl VerifyReport {
    pub fn damage_count(&self) -> usize {
        self.damaged_packs.len() + self.damaged_records.len() + self.index_problems.len() + self.damaged_objects.len()
    }
}

/// What reading packs found: damaged packs, damaged objects.
type PackFindings = (Vec<DamagedFile>, Vec<(ObjectId, ObjKind, String)>);

/// A problem below a tree or in a file: (path relative to it, object).
type Problems = Arc<Vec<(Vec<u8>, ObjectId)>>;

struct Walker<'a> {
    objects: &'a Objects,
    /// Objects found in the pack trailers, and where.
    located: &'a HashMap<ObjectId, (u32, PackEntry)>,
    /// Objects known to be damaged, with what is wrong.
    bad: HashMap<ObjectId, (ObjKind, String)>,
    trees: HashMap<ObjectId, Problems>,
    /// What each tree holds below it, counted (None: not known, damaged).
    sums: HashMap<ObjectId, Option<Totals>>,
    /// Depth of the tree being walked (0: a snapshot's top tree).
    /// The block size of the snapshot being walked.
    bs: u64,
    files: HashMap<(ObjectId, u8), Problems>,
    none: Problems,
}

impl Walker<'_> {
    fn note(&mut self, id: ObjectId, kind: ObjKind, problem: String) {
        self.bad.entry(id).or_insert((kind, problem));
    }

    /// Read an object through the index (as every reader does), and note
    /// it as damaged if that fails.
    fn fetch<T>(&mut self, id: ObjectId, kind: ObjKind, get: impl FnOnce(&Objects) -> ObjResult<T>) -> Option<T> {
        if self.bad.contains_key(&id) {
            return None;
        }
        match get(self.objects) {
            Ok(v) => Some(v),
            Err(e) => {
                let problem = if self.located.contains_key(&id) {
                    e.to_string()
                } else if let Ok(Some(loc)) = self.objects.locate(&id) {
                    format!("unreadable: the index places it in pack {}, which is missing or damaged", loc.pack)
                } else {
                    "missing: no pack holds it".to_string()
                };
                self.note(id, kind, problem);
                None
            }
        }
    }

    /// The problems below the tree `id` (memoized: each distinct tree is
    /// walked once), and what it holds (`sums`, checked against what each
    /// directory entry claims). The trees being walked are kept on the
    /// heap, so a tree of any depth is walked without recursion.
    fn tree(&mut self, top: TreeId) -> Problems {
        let id = top.id();
        /// A tree being walked: its entries, how far, what was found, and
        /// what it holds so far (None: unknown, something below is damaged).
        struct Level {
            id: ObjectId,
            entries: Vec<crate::repo::objects::Entry>,
            next: usize,
            out: Vec<(Vec<u8>, ObjectId)>,
            sum: Option<Totals>,
        }
        if let Some(p) = self.trees.get(&id) {
            return p.clone();
        }
        // a tree opened `depth` levels below the snapshot's top tree
        let open = |w: &mut Self, id: ObjectId, depth: usize| match w
            .fetch(id, ObjKind::Tree, |o| o.tree(&TreeId::from_dir(id)))
        {
            None => Level { id, entries: Vec::new(), next: 0, out: vec![(Vec::new(), id)], sum: None },
            Some(t) => {
                let mut out = Vec::new();
                // what decode lets through but the tree's place forbids
                let top = t.is_top();
                let wrong = if top != (depth == 0) {
                    Some(if top {
                        "a directory shaped as a snapshot's top tree".to_string()
                    } else {
                        "a snapshot's top tree that is not one entry \".\"".into()
                    })
                } else {
                    t.entries.iter().find(|e| e.kind == EntryKind::File && e.check_blocks(w.bs).is_err()).map(|e| {
                        format!(
                            "file {:?}: its block list's levels do not fit its size",
                            String::from_utf8_lossy(&e.name)
                        )
                    })
                };
                if let Some(problem) = wrong {
                    w.note(id, ObjKind::Tree, problem);
                    out.push((Vec::new(), id));
                }
                Level { id, entries: t.entries, next: 0, out, sum: Some(Totals::default()) }
            }
        };
        let mut stack: Vec<Level> = vec![open(self, id, 0)];
        loop {
            let depth = stack.len();
            let lvl = stack.last_mut().expect("a level");
            let Some(e) = lvl.entries.get(lvl.next).cloned() else {
                let done = stack.pop().expect("a level");
                let p = if done.out.is_empty() { self.none.clone() } else { Arc::new(done.out) };
                self.trees.insert(done.id, p.clone());
                self.sums.insert(done.id, done.sum);
                if stack.is_empty() {
                    return p;
                }
                continue;
            };
            let sub = match e.kind {
                EntryKind::Dir => match self.trees.get(&e.content) {
                    Some(p) => {
                        let p = p.clone();
                        match (self.sums.get(&e.content).copied().flatten(), &mut lvl.sum) {
                            (Some(below), Some(s)) => {
                                if below != e.totals {
                                    self.note(lvl.id, ObjKind::Tree, format!(
                                        "directory {:?} claims {} files, {} directories, {} others, {} bytes below it; it holds {}, {}, {}, {}",
                                        String::from_utf8_lossy(&e.name),
                                        e.totals.files, e.totals.dirs, e.totals.others, e.totals.bytes,
                                        below.files, below.dirs, below.others, below.bytes
                                    ));
                                    lvl.out.push((Vec::new(), lvl.id));
                                }
                                s.files = s.files.wrapping_add(e.totals.files);
                                s.dirs = s.dirs.wrapping_add(e.totals.dirs);
                                s.others = s.others.wrapping_add(e.totals.others);
                                s.bytes = s.bytes.wrapping_add(e.totals.bytes);
                            }
                            _ => lvl.sum = None,
                        }
                        p
                    }
                    None => {
                        // walk it first, then come back to this entry
                        let below = open(self, e.content, depth);
                        stack.push(below);
                        continue;
                    }
                },
                EntryKind::File => self.file(e.content, e.levels),
                _ => Arc::new(Vec::new()),
            };
            let lvl = stack.last_mut().expect("a level");
            if let Some(s) = &mut lvl.sum {
                match e.kind {
                    EntryKind::Dir => s.dirs += 1,
                    EntryKind::File => {
                        s.files += 1;
                        s.bytes = s.bytes.wrapping_add(e.size);
                    }
                    _ => s.others += 1,
                }
            }
            for (p, bad) in sub.iter() {
                let mut path = if e.name == b"." { Vec::new() } else { e.name.clone() };
                if !p.is_empty() {
                    if !path.is_empty() {
                        path.push(b'/');
                    }
                    path.extend_from_slice(p);
                }
                lvl.out.push((path, *bad));
            }
            lvl.next += 1;
        }
    }

    fn file(&mut self, root: ObjectId, levels: u8) -> Problems {
        if root.is_zero() {
            return self.none.clone();
        }
        if let Some(p) = self.files.get(&(root, levels)) {
            return p.clone();
        }
        let mut out = Vec::new();
        let mut stack = vec![(root, levels)];
        while let Some((id, level)) = stack.pop() {
            let Some(n) = self.fetch(id, ObjKind::FileNode, |o| o.node(&id)) else {
                out.push((Vec::new(), id));
                continue;
            };
            if n.level != level {
                self.note(id, ObjKind::FileNode, format!("a node of level {} where level {level} belongs", n.level));
                out.push((Vec::new(), id));
                continue;
            }
            for c in n.entries {
                // (a hole: a zero block id, or a child node all of holes)
                if c.is_zero() || (level > 0 && self.objects.is_hole(&c, level - 1)) {
                    continue;
                }
                if level == 0 && self.located.get(&c).is_some_and(|(_, e)| e.raw as u64 > self.bs) {
                    self.note(c, ObjKind::Blob, format!("a block larger than the block size {}", self.bs));
                    out.push((Vec::new(), c));
                    continue;
                }
                if level > 0 {
                    stack.push((c, level - 1));
                } else if self.bad.contains_key(&c) {
                    out.push((Vec::new(), c));
                } else if !self.located.contains_key(&c) {
                    self.note(c, ObjKind::Blob, "missing: no pack holds it".into());
                    out.push((Vec::new(), c));
                }
            }
        }
        let p = if out.is_empty() { self.none.clone() } else { Arc::new(out) };
        self.files.insert((root, levels), p.clone());
        p
    }
}

fn kind_name(k: ObjKind) -> &'static str {
    match k {
        ObjKind::Blob => "blob",
        ObjKind::FileNode => "file node",
        ObjKind::Tree => "tree",
        ObjKind::Meta => "links",
    }
}

/// Percent of `n` packs, at least one when `n > 0` and `pct > 0`.
fn subset_count(n: usize, pct: f64) -> usize {
    if n == 0 || pct <= 0.0 {
        return 0;
    }
    (((n as f64) * pct / 100.0).ceil() as usize).clamp(1, n)
}

/// `verify` as both the daemon and the offline command run it: the result
/// kept in `health` (the last verify, and damage among the recent errors),
/// damage logged loudly.
pub fn run(
    objects: &Objects,
    opts: &VerifyOptions,
    health: &crate::ops::health::Health,
    progress: &VerifyProgress,
) -> OpResult<VerifyReport> {
    let r = verify(objects, opts, progress).inspect_err(|e| health.error("verify", &crate::util::with_causes(e)))?;
    health.set_verify(&r);
    if !r.ok {
        log::error!("VERIFY FOUND DAMAGE: {}", summary(&r));
        health.error("verify", &summary(&r));
    }
    Ok(r)
}

/// Verify the repository behind `objects`.
pub fn verify(objects: &Objects, opts: &VerifyOptions, progress: &VerifyProgress) -> OpResult<VerifyReport> {
    if opts.read_data && objects.keys().is_some_and(|k| k.access() != crate::repo::crypto::Access::Full) {
        refused!(
            "verify --read-data needs a full key: a write-only key checks the structure only (without --read-data)"
        );
    }
    let t0 = Instant::now();
    let store = objects.store().clone();
    let now = crate::util::unix_now();
    let mut report = VerifyReport {
        time: crate::util::rfc3339(now),
        time_sec: now,
        read_data: opts.read_data,
        subset: if opts.read_data { opts.subset } else { None },
        ..Default::default()
    };

    // 0. The snapshots to check, listed before the packs: every pack a
    // committed snapshot needs was written before its record, so it is in
    // the list of packs (snapshots taken meanwhile are for the next verify;
    // prune cannot run meanwhile).
    let record_ids = store.list(FileKind::Snapshot)?;

    // 1. trailers (of the packs listed while none is being written and
    // indexed: each of them is wholly in the index)
    progress.phase.store(1, Ordering::Relaxed);
    let packs = {
        let _quiet = objects.quiesce();
        store.list(FileKind::Pack)?
    };
    progress.packs_total.store(packs.len() as u64, Ordering::Relaxed);
    // In a repository other hosts write, a prune there may delete a listed
    // pack before it is read: gone now, and a deletion plan names it. (A
    // prune deletes only what no snapshot uses, and only a grace after the
    // plan; a pack lost any other way is still damage.)
    let condemned: std::sync::OnceLock<HashSet<String>> = std::sync::OnceLock::new();
    let deleted_meanwhile = |name: &str| {
        store.shared()
            && matches!(store.size(FileKind::Pack, name), Err(StoreError::NotFound { .. }))
            && condemned
                .get_or_init(|| {
                    crate::repo::plans::read_all(&*store).map(|p| crate::repo::plans::condemned(&p)).unwrap_or_default()
                })
                .contains(name)
    };
    let gone_meanwhile = AtomicU64::new(0);
    let mut located: HashMap<ObjectId, (u32, PackEntry)> = HashMap::new();
    let mut entries_of: Vec<Option<Vec<PackEntry>>> = Vec::with_capacity(packs.len());
    for (i, name) in packs.iter().enumerate() {
        match objects.pack_entries(name) {
            Ok(entries) => {
                for e in &entries {
                    located.entry(e.id).or_insert((i as u32, *e));
                }
                entries_of.push(Some(entries));
            }
            Err(_) if deleted_meanwhile(name) => {
                gone_meanwhile.fetch_add(1, Ordering::Relaxed);
                entries_of.push(None);
            }
            Err(e) => {
                report.damaged_packs.push(DamagedFile { name: name.clone(), problem: e.to_string() });
                entries_of.push(None);
            }
        }
        progress.packs_done.store(i as u64 + 1, Ordering::Relaxed);
    }
    report.packs = packs.len() as u64;
    report.objects = located.len() as u64;

    // 2. data
    let mut bad: HashMap<ObjectId, (ObjKind, String)> = HashMap::new();
    if opts.read_data {
        progress.phase.store(2, Ordering::Relaxed);
        let mut chosen: Vec<usize> = (0..packs.len()).filter(|&i| entries_of[i].is_some()).collect();
        if let Some(pct) = opts.subset {
            let k = subset_count(chosen.len(), pct);
            // a random choice each run, so repeated runs cover every pack
            let mut keyed: Vec<(ObjectId, usize)> = chosen
                .iter()
                .map(|&i| (ObjectId::of(format!("{}{}", crate::util::random_id(), i).as_bytes()), i))
                .collect();
            keyed.sort();
            chosen = keyed.into_iter().take(k).map(|(_, i)| i).collect();
        }
        let total: u64 = chosen.iter().map(|&i| store.size(FileKind::Pack, &packs[i]).unwrap_or(0)).sum();
        progress.packs_total.store(chosen.len() as u64, Ordering::Relaxed);
        progress.packs_done.store(0, Ordering::Relaxed);
        progress.bytes_total.store(total, Ordering::Relaxed);
        let next = AtomicU64::new(0);
        let found: Mutex<PackFindings> = Mutex::new((Vec::new(), Vec::new()));
        let jobs = opts.jobs.max(1).min(chosen.len().max(1));
        std::thread::scope(|s| {
            for _ in 0..jobs {
                s.spawn(|| loop {
                    let k = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some(&i) = chosen.get(k) else { break };
                    let name = &packs[i];
                    let entries = entries_of[i].as_deref().unwrap_or(&[]);
                    let (pack_bad, obj_bad) = read_pack(&*store, name, entries);
                    if !pack_bad.is_empty() && deleted_meanwhile(name) {
                        gone_meanwhile.fetch_add(1, Ordering::Relaxed);
                    } else {
                        let mut f = found.locked();
                        f.0.extend(pack_bad);
                        f.1.extend(obj_bad);
                    }
                    let size = entries.iter().map(|e| e.offset + e.stored as u64).max().unwrap_or(0);
                    progress.bytes_done.fetch_add(size.max(1), Ordering::Relaxed);
                    progress.packs_done.fetch_add(1, Ordering::Relaxed);
                });
            }
        });
        progress.bytes_done.store(total, Ordering::Relaxed);
        let (pack_bad, obj_bad) = found.into_inner().unwrap_or_else(|e| e.into_inner());
        report.damaged_packs.extend(pack_bad);
        for (id, kind, problem) in obj_bad {
            bad.entry(id).or_insert((kind, problem));
        }
        report.packs_read = chosen.len() as u64;
        report.bytes_read = total;
    }

    // 3. index against trailers
    if objects.index_is_persistent() {
        let mut problems = Vec::new();
        let mut seen = HashSet::new();
        let mut gone: BTreeMap<String, u64> = BTreeMap::new();
        let pack_pos: HashMap<&str, usize> = packs.iter().enumerate().map(|(i, p)| (p.as_str(), i)).collect();
        let indexed = objects.scan_index(|id, loc| {
            let Some(loc) = loc else {
                problems.push(format!("index: a malformed entry for object {id}"));
                return;
            };
            seen.insert(id);
            match pack_pos.get(loc.pack.as_str()) {
                None => *gone.entry(loc.pack.to_string()).or_default() += 1,
                Some(&i) => {
                    if let Some(entries) = &entries_of[i] {
                        if !entries.contains(&loc.entry) {
                            problems.push(format!("index: object {id} is not where it says in pack {}", loc.pack));
                        }
                    }
                }
            }
        })?;
        // Packs written since the list above are not judged (listed after
        // the scan: a pack is written before it is indexed).
        let now: HashSet<String> = store.list(FileKind::Pack)?.into_iter().collect();
        gone.retain(|p, _| !now.contains(p));
        for (p, n) in gone {
            problems.push(format!("index: {n} objects are said to be in pack {p}, which does not exist"));
        }
        let mut missing: BTreeMap<&str, u64> = BTreeMap::new();
        for (i, entries) in entries_of.iter().enumerate() {
            for e in entries.iter().flatten() {
                if !seen.contains(&e.id) {
                    *missing.entry(packs[i].as_str()).or_default() += 1;
                }
            }
        }
        for (p, n) in missing {
            let how = if indexed.contains(p) { "marked as indexed, but" } else { "not indexed:" };
            problems.push(format!("index: pack {p} {how} {n} of its objects are missing from the index"));
        }
        for p in indexed {
            if !pack_pos.contains_key(p.as_str()) && !now.contains(&p) {
                problems.push(format!("index: pack {p} is listed as indexed but does not exist"));
            }
        }
        problems.truncate(1000);
        report.index_problems = problems;
    }

    // 4. snapshots
    progress.phase.store(3, Ordering::Relaxed);
    let mut snaps: Vec<SnapshotInfo> = Vec::new();
    for id in record_ids {
        match read_record(&*store, &id) {
            Ok(s) => snaps.push(s),
            // forgotten meanwhile
            Err(_) if matches!(store.size(FileKind::Snapshot, &id), Err(StoreError::NotFound { .. })) => {}
            Err(problem) => report.damaged_records.push(DamagedFile { name: id, problem }),
        }
    }
    snaps.sort_by_key(|s| (s.record.time_sec, s.record.time_nsec));
    report.snapshots = snaps.len() as u64;
    progress.snapshots_total.store(snaps.len() as u64, Ordering::Relaxed);
    let mut w = Walker {
        objects,
        located: &located,
        bad,
        trees: HashMap::new(),
        sums: HashMap::new(),

        bs: opts.block_size.unwrap_or(0),
        files: HashMap::new(),
        none: Arc::new(Vec::new()),
    };
    // object -> snapshot -> paths
    let mut users: HashMap<ObjectId, BTreeMap<usize, (Vec<String>, u64)>> = HashMap::new();
    for (si, s) in snaps.iter().enumerate() {
        let mut found: Vec<(Vec<u8>, ObjectId)> = Vec::new();
        if opts.block_size.is_some_and(|bs| bs != s.record.block_size) {
            report.damaged_records.push(DamagedFile {
                name: s.id.to_string(),
                problem: format!(
                    "its block size {} is not the repository's {}",
                    s.record.block_size,
                    opts.block_size.unwrap_or(0)
                ),
            });
            progress.snapshots_done.store(si as u64 + 1, Ordering::Relaxed);
            continue;
        }
        w.bs = s.record.block_size;
        found.extend(w.tree(s.record.tree).iter().cloned());
        {
            let l = s.record.links;
            {
                let ok = w.fetch(l, ObjKind::Meta, |o| o.get(&l, ObjKind::Meta)).map(|b| snapshot::decode_links(&b));
                match ok {
                    None => found.push((b"(hard-link table)".to_vec(), l)),
                    Some(None) => {
                        w.note(l, ObjKind::Meta, "malformed link table".into());
                        found.push((b"(hard-link table)".to_vec(), l));
                    }
                    Some(Some(_)) => {}
                }
            }
        }
        for (path, id) in found {
            let u = users.entry(id).or_default().entry(si).or_default();
            u.1 += 1;
            if u.0.len() < MAX_PATHS {
                u.0.push(String::from_utf8_lossy(&path).into_owned());
            }
        }
        progress.snapshots_done.store(si as u64 + 1, Ordering::Relaxed);
    }
    report.trees_checked = w.trees.len() as u64;
    report.files_checked = w.files.len() as u64;

    let mut damaged: Vec<DamagedObject> = w
        .bad
        .iter()
        .map(|(id, (kind, problem))| DamagedObject {
            id: id.hex(),
            kind: kind_name(*kind).into(),
            problem: problem.clone(),
            pack: located.get(id).map(|(i, _)| packs[*i as usize].clone()),
            used_by: users
                .get(id)
                .map(|m| {
                    m.iter()
                        .map(|(si, (paths, count))| UsedBy {
                            snapshot: snaps[*si].record.name.clone(),
                            paths: paths.clone(),
                            count: *count,
                        })
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect();
    // those snapshots need first
    damaged.sort_by(|a, b| (a.used_by.is_empty(), &a.kind, &a.id).cmp(&(b.used_by.is_empty(), &b.kind, &b.id)));
    report.damaged_objects = damaged;
    report.packs_deleted_meanwhile = gone_meanwhile.into_inner();
    report.ok = report.damage_count() == 0;
    report.duration_ms = t0.elapsed().as_millis() as u64;
    Ok(report)
}

/// Read a whole pack: its bytes must hash to its name, and every object in
/// it must decode and match its id.
fn read_pack(store: &dyn crate::repo::store::Store, name: &str, entries: &[PackEntry]) -> PackFindings {
    let mut packs = Vec::new();
    let mut objs = Vec::new();
    let bytes = match store.get(FileKind::Pack, name) {
        Ok(b) => b,
        Err(e) => {
            packs.push(DamagedFile { name: name.into(), problem: e.to_string() });
            for e in entries {
                objs.push((e.id, e.kind, format!("unreadable pack {name}")));
            }
            return (packs, objs);
        }
    };
    if ObjectId::of(&bytes).hex() != name {
        packs.push(DamagedFile { name: name.into(), problem: "its contents do not match its name (damaged)".into() });
    }
    let keys = store.keys();
    for e in entries {
        let end = e.offset as usize + e.stored as usize;
        let r = match bytes.get(e.offset as usize..end) {
            Some(stored) => {
                pack::decode_object(keys.as_deref(), name, e, stored).map(|_| ()).map_err(|err| err.to_string())
            }
            None => Err(format!("pack {name} is shorter than its trailer says")),
        };
        if let Err(problem) = r {
            objs.push((e.id, e.kind, problem));
        }
    }
    (packs, objs)
}

fn read_record(store: &dyn crate::repo::store::Store, name: &str) -> Result<SnapshotInfo, String> {
    let id = SnapshotId::parse(name).ok_or("it is not named as a snapshot record is (64 hex digits)")?;
    let all = snapshot::read_one(store, &id).map_err(|e| e.to_string())?;
    match all.damaged {
        Some(problem) => Err(problem),
        None => Ok(all),
    }
}

/// A short human summary, one line.
pub fn summary(r: &VerifyReport) -> String {
    let what = if r.read_data {
        match r.subset {
            Some(p) => format!("structure and data ({p}% of packs, {})", crate::util::human_bytes(r.bytes_read)),
            None => format!("structure and data ({})", crate::util::human_bytes(r.bytes_read)),
        }
    } else {
        "structure".to_string()
    };
    let what = match r.packs_deleted_meanwhile {
        0 => what,
        n => format!("{what}; {n} packs deleted meanwhile by a prune elsewhere"),
    };
    if r.ok {
        format!("no damage: {} snapshots, {} packs, {} objects; checked {what}", r.snapshots, r.packs, r.objects)
    } else {
        format!(
            "DAMAGE: {} damaged objects, {} damaged packs, {} damaged snapshot records, {} index problems; checked {what}",
            r.damaged_objects.len(),
            r.damaged_packs.len(),
            r.damaged_records.len(),
            r.index_problems.len()
        )
    }
}

/// The full human report.
pub fn render(r: &VerifyReport) -> String {
    let mut s = String::new();
    if let Some(rep) = &r.repair {
        for l in &rep.repaired {
            s += &format!("repaired {l}\n");
        }
        for l in &rep.failed {
            s += &format!("NOT repaired: {l}\n");
        }
        if rep.packs_replaced > 0 {
            s += &format!("{} damaged packs replaced\n", rep.packs_replaced);
        }
        s += "after the repair:\n";
    }
    for p in &r.damaged_packs {
        s += &format!("damaged pack {}: {}\n", p.name, p.problem);
    }
    for p in &r.damaged_records {
        s += &format!("damaged snapshot record {}: {}\n", p.name, p.problem);
    }
    for p in &r.index_problems {
        s += &format!("{p}\n");
    }
    for o in &r.damaged_objects {
        let pack = o.pack.as_deref().map(|p| format!(" in pack {p}")).unwrap_or_default();
        s += &format!("damaged {} {}{pack}: {}\n", o.kind, o.id, o.problem);
        if o.used_by.is_empty() {
            s += "    used by no snapshot (prune would drop it)\n";
        }
        for u in &o.used_by {
            let more = if u.count as usize > u.paths.len() {
                format!(" (and {} more)", u.count as usize - u.paths.len())
            } else {
                String::new()
            };
            let paths: Vec<String> =
                u.paths.iter().map(|p| if p.starts_with('(') { p.clone() } else { format!("/{p}") }).collect();
            s += &format!("    snapshot {}: {}{more}\n", u.snapshot, paths.join(", "));
        }
    }
    s += &summary(r);
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::subset_count;
    use crate::repo::store::FileKind;

    #[test]
    fn the_walk_goes_down_trees_of_any_depth() {
        use std::collections::HashMap;
        use std::sync::Arc;
        let t = tempfile::tempdir().unwrap();
        let store: Arc<dyn crate::repo::store::Store> = Arc::new(crate::repo::store::LocalStore::new(t.path()));
        let objects = crate::repo::objstore::Objects::open(store, None).unwrap();
        let top = crate::snapshot::test_chain(&objects, 2 * crate::util::MAX_DEPTH, 0);
        let located = HashMap::new();
        let none = Arc::new(Vec::new());
        let mut w = super::Walker {
            objects: &objects,
            located: &located,
            bad: HashMap::new(),
            trees: HashMap::new(),
            sums: HashMap::new(),
            bs: 4096,
            files: HashMap::new(),
            none,
        };
        assert!(w.tree(top).is_empty());
        assert_eq!(w.trees.len(), 2 * crate::util::MAX_DEPTH + 2);
    }

    /// A store other hosts write, where a prune elsewhere deletes packs
    /// just before this verify reads them.
    struct PrunedMeanwhile {
        inner: crate::repo::store::LocalStore,
        doomed: std::sync::Mutex<std::collections::HashSet<String>>,
    }

    impl crate::repo::store::Store for PrunedMeanwhile {
        fn put(&self, k: FileKind, n: &str, d: &[u8]) -> crate::repo::store::StoreResult<()> {
            self.inner.put(k, n, d)
        }
        fn get(&self, k: FileKind, n: &str) -> crate::repo::store::StoreResult<Vec<u8>> {
            if k == FileKind::Pack && self.doomed.lock().unwrap().remove(n) {
                self.inner.delete(k, n)?;
            }
            self.inner.get(k, n)
        }
        fn get_range(&self, k: FileKind, n: &str, o: u64, l: usize) -> crate::repo::store::StoreResult<Vec<u8>> {
            self.inner.get_range(k, n, o, l)
        }
        fn size(&self, k: FileKind, n: &str) -> crate::repo::store::StoreResult<u64> {
            self.inner.size(k, n)
        }
        fn list(&self, k: FileKind) -> crate::repo::store::StoreResult<Vec<String>> {
            self.inner.list(k)
        }
        fn delete(&self, k: FileKind, n: &str) -> crate::repo::store::StoreResult<()> {
            self.inner.delete(k, n)
        }
        fn shared(&self) -> bool {
            true
        }
    }

    #[test]
    fn a_pack_a_prune_elsewhere_deletes_meanwhile_is_not_damage_one_lost_is() {
        use crate::repo::objects::ObjKind;
        use std::sync::Arc;
        let t = tempfile::tempdir().unwrap();
        let s = Arc::new(PrunedMeanwhile {
            inner: crate::repo::store::LocalStore::new(t.path()),
            doomed: Default::default(),
        });
        let store: Arc<dyn crate::repo::store::Store> = s.clone();
        let objects = crate::repo::objstore::Objects::open(store.clone(), None).unwrap();
        for b in [&b"condemned"[..], b"lost", b"kept"] {
            objects.put(ObjKind::Blob, b).unwrap();
            objects.flush().unwrap();
        }
        let packs = store.list(FileKind::Pack).unwrap();
        assert_eq!(packs.len(), 3);
        let plan = crate::repo::plans::Plan {
            format: crate::repo::plans::PLAN_FORMAT,
            host: "elsewhere".into(),
            time_sec: 0,
            condemned: vec![packs[0].clone()],
        };
        crate::repo::plans::write(&*store, &plan).unwrap();
        s.doomed.lock().unwrap().extend([packs[0].clone(), packs[1].clone()]);
        let opts = super::VerifyOptions { read_data: true, jobs: 2, ..Default::default() };
        let r = super::verify(&objects, &opts, &Default::default()).unwrap();
        assert_eq!(r.packs_deleted_meanwhile, 1, "{r:?}");
        let damaged: Vec<&str> = r.damaged_packs.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(damaged, [packs[1].as_str()], "{r:?}");
        assert!(!r.ok);
    }

    #[test]
    fn subsets() {
        assert_eq!(subset_count(0, 10.0), 0);
        assert_eq!(subset_count(10, 0.0), 0);
        assert_eq!(subset_count(10, 1.0), 1);
        assert_eq!(subset_count(10, 25.0), 3);
        assert_eq!(subset_count(10, 100.0), 10);
        assert_eq!(subset_count(10, 400.0), 10);
    }
}
