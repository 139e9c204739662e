//! Retention (`forget`) and reclaiming space (`prune`).
//!
//! `forget` removes snapshot records only: by name, or all but those a
//! [`Policy`] keeps. `prune` then removes the objects no remaining snapshot
//! references:
//!
//! 1. mark: walk every snapshot's trees, block-list nodes and link table
//!    (each unique object once), collecting the ids in use;
//! 2. plan, from the pack trailers: a pack with nothing in use is deleted; a
//!    pack whose unused share exceeds the threshold is repacked (its objects
//!    in use are copied, still compressed and verified, into new packs);
//!    other packs stay as they are;
//! 3. write the new packs durably and index them;
//! 4. drop from the index every entry in a doomed pack (or point it at the
//!    copy in a kept pack), and drop those packs from the indexed set;
//! 5. delete the doomed packs.
//!
//! Killed at any point, every object a snapshot references is still in a
//! pack, and the index never names a pack that is gone: a doomed pack that
//! survives a crash is simply indexed again at the next open and pruned
//! next time. Prune never runs beside a snapshot: the daemon serializes
//! them, and without a daemon the repository lock keeps one from starting.
//!
//! A repository other hosts write at the same time (an object store) has no
//! such lock: there, step 5 is split in two phases a grace period apart
//! (`repo::plans`): the doomed packs are named in a deletion plan, and a
//! later prune deletes those of plans older than the grace that hold no
//! object in use without a copy in a pack no plan names.
//!
//! (About 730 lines of code and 70 of tests: retention rules, forget and prune, the steps of giving space
//! back, which share the records, the deletion plans and the progress type.)

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::ops::verify::VerifyProgress;
use crate::ops::{OpError, OpResult};
use crate::repo::objects::{EntryKind, ObjKind, ObjectId, PackId, SnapshotId, TreeId};
use crate::repo::objstore::{Location, Objects};
use crate::repo::pack::PackEntry;
use crate::repo::plans;
use crate::repo::store::{FileKind, Store};
use crate::snapshot::{self, SnapshotInfo};

/// Which snapshots to keep: the newest `last`, and the newest snapshot of
/// each of the latest `hourly` hours, `daily` days, ... that have one
/// (local time; weeks start on Monday). The rules add up.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    #[serde(default)]
    pub last: u32,
    #[serde(default)]
    pub hourly: u32,
    #[serde(default)]
    pub daily: u32,
    #[serde(default)]
    pub weekly: u32,
    #[serde(default)]
    pub monthly: u32,
    #[serde(default)]
    pub yearly: u32,
}

impl Policy {
    pub fn is_empty(&self) -> bool {
        *self == Policy::default()
    }

    /// `hourly=24,daily=7,weekly=4,monthly=12` (also `last=N`, `yearly=N`).
    pub fn parse(s: &str) -> Result<Policy, String> {
        let mut p = Policy::default();
        for part in s.split(',').map(str::trim).filter(|x| !x.is_empty()) {
            let (k, v) = part.split_once('=').ok_or_else(|| format!("{part:?}: expected RULE=N"))?;
            let n: u32 = v.trim().parse().map_err(|_| format!("{part:?}: {v:?} is not a count"))?;
            let slot = match k.trim() {
                "last" => &mut p.last,
                "hourly" => &mut p.hourly,
                "daily" => &mut p.daily,
                "weekly" => &mut p.weekly,
                "monthly" => &mut p.monthly,
                "yearly" => &mut p.yearly,
                other => {
                    return Err(format!("unknown rule {other:?} (last, hourly, daily, weekly, monthly, yearly)"));
                }
            };
            *slot = n;
        }
        Ok(p)
    }

    fn rules(&self) -> [(&'static str, u32); 6] {
        [
            ("last", self.last),
            ("hourly", self.hourly),
            ("daily", self.daily),
            ("weekly", self.weekly),
            ("monthly", self.monthly),
            ("yearly", self.yearly),
        ]
    }
}

impl std::fmt::Display for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.rules().iter().filter(|(_, n)| *n > 0).map(|(k, n)| format!("{k}={n}")).collect();
        write!(f, "{}", if parts.is_empty() { "none".to_string() } else { parts.join(",") })
    }
}

/// The bucket of a time for a rule (`offset`: seconds east of UTC at that time).
fn bucket(rule: &str, sec: i64, offset: i64) -> i64 {
    let local = sec + offset;
    let day = local.div_euclid(86_400);
    match rule {
        "hourly" => local.div_euclid(3600),
        "daily" => day,
        // 1970-01-01 was a Thursday: +3 makes weeks start on Monday
        "weekly" => (day + 3).div_euclid(7),
        "monthly" => {
            let (y, m, _) = crate::util::civil_from_days(day);
            y * 12 + m as i64
        }
        "yearly" => crate::util::civil_from_days(day).0,
        _ => unreachable!("rule {rule}"),
    }
}

/// For snapshots given as (time in seconds, index), the reasons each is
/// kept for (empty: forget it).
pub fn apply(policy: &Policy, times: &[i64], offset: impl Fn(i64) -> i64) -> Vec<Vec<&'static str>> {
    let mut reasons = vec![Vec::new(); times.len()];
    let mut order: Vec<usize> = (0..times.len()).collect();
    // newest first; the later of equal times first
    order.sort_by(|&a, &b| times[b].cmp(&times[a]).then(b.cmp(&a)));
    for (rule, count) in policy.rules() {
        let mut last_key = None;
        let mut n = 0;
        for &i in &order {
            if n >= count {
                break;
            }
            let key = if rule == "last" { i as i64 } else { bucket(rule, times[i], offset(times[i])) };
            if last_key != Some(key) {
                reasons[i].push(rule);
                last_key = Some(key);
                n += 1;
            }
        }
    }
    reasons
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ForgetItem {
    pub name: String,
    pub id: String,
    pub time: String,
    /// The rules that keep it.
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ForgetReport {
    pub dry_run: bool,
    pub policy: String,
    pub kept: Vec<ForgetItem>,
    pub removed: Vec<ForgetItem>,
}

fn item(s: &SnapshotInfo, reasons: &[&str]) -> ForgetItem {
    ForgetItem {
        name: s.record.name.clone(),
        id: s.id.to_string(),
        time: s.record.time.clone(),
        reasons: reasons.iter().map(|r| r.to_string()).collect(),
    }
}

/// Remove snapshot records: the named ones, or those `policy` does not keep.
/// With `only_prefix`, the policy applies to the snapshots whose names start
/// with it (the schedule's); the others are left alone. With `lineage` (a
/// daemon on a shared repository), only that host's and directory's
/// snapshots are looked at. In a shared repository the keep rules apply to
/// each host and directory apart (restic's grouping by host and paths).
pub fn forget(
    store: &dyn Store,
    names: &[String],
    policy: &Policy,
    dry_run: bool,
    only_prefix: Option<&str>,
    held: &HashSet<SnapshotId>,
    lineage: Option<&snapshot::Lineage>,
) -> OpResult<ForgetReport> {
    crate::repo::crypto::require_full(store.keys().as_deref(), "forget")?;
    let with_damaged = snapshot::list_all(store)?;
    let mut all: Vec<_> = with_damaged.iter().filter(|s| s.damaged.is_none()).cloned().collect();
    if let Some(p) = only_prefix {
        all.retain(|s| s.record.name.starts_with(p));
    }
    all = snapshot::of_lineage(all, lineage);
    let mut report = ForgetReport { dry_run, policy: policy.to_string(), ..Default::default() };
    let doomed: HashSet<SnapshotId> = match (names.is_empty(), policy.is_empty()) {
        (false, false) => refused!("give snapshot names or keep rules, not both"),
        (true, true) => {
            refused!("nothing to forget: give snapshot names or keep rules (--keep-last N, --keep-daily N, ...)")
        }
        (false, true) => {
            let mut d = HashSet::new();
            for n in names {
                // (a damaged record too, by its id)
                d.insert(snapshot::find(&all, n).or_else(|_| snapshot::find(&with_damaged, n))?.id.clone());
            }
            d
        }
        (true, false) => {
            // (sorted by time: each group is too)
            let group = |s: &SnapshotInfo| {
                if store.shared() {
                    (s.record.host.clone(), s.record.source.clone())
                } else {
                    Default::default()
                }
            };
            let mut groups: Vec<((String, String), Vec<&SnapshotInfo>)> = Vec::new();
            for s in &all {
                let g = group(s);
                match groups.iter_mut().find(|(k, _)| *k == g) {
                    Some((_, v)) => v.push(s),
                    None => groups.push((g, vec![s])),
                }
            }
            let mut doomed = HashSet::new();
            for (_, members) in &groups {
                let times: Vec<i64> = members.iter().map(|s| s.record.time_sec).collect();
                let reasons = apply(policy, &times, crate::util::local_offset);
                for (s, r) in members.iter().zip(&reasons) {
                    if r.is_empty() {
                        doomed.insert(s.id.clone());
                    } else {
                        report.kept.push(item(s, r));
                    }
                }
            }
            doomed
        }
    };
    for s in &all {
        if doomed.contains(&s.id) && held.contains(&s.id) {
            report.kept.push(item(s, &["in use by a restore or rollback"]));
        } else if doomed.contains(&s.id) {
            report.removed.push(item(s, &[]));
        } else if !names.is_empty() {
            report.kept.push(item(s, &[]));
        }
    }
    for s in with_damaged.iter().filter(|s| s.damaged.is_some() && doomed.contains(&s.id)) {
        report.removed.push(item(s, &[]));
    }
    if !dry_run {
        for s in &report.removed {
            store.delete(FileKind::Snapshot, &s.id)?;
            log::info!("forgot snapshot {} ({})", s.name, s.id);
        }
    }
    Ok(report)
}

#[derive(Debug, Clone)]
pub struct PruneOptions {
    pub dry_run: bool,
    /// Repack a pack when more than this share of its bytes is unused.
    pub max_unused: f64,
    /// In a shared repository: how long a condemned pack waits before it
    /// is deleted (see `repo::plans`).
    pub grace_secs: u64,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions { dry_run: false, max_unused: 0.2, grace_secs: crate::repo::plans::DEFAULT_GRACE_SECS }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PruneReport {
    pub dry_run: bool,
    pub snapshots: u64,
    pub objects_in_use: u64,
    pub packs_before: u64,
    pub bytes_before: u64,
    /// Packs with nothing in use, deleted.
    pub packs_deleted: u64,
    /// Packs with more than `max_unused` unused, rewritten.
    pub packs_repacked: u64,
    pub packs_written: u64,
    /// Bytes of objects copied into new packs.
    pub bytes_copied: u64,
    pub objects_removed: u64,
    /// Bytes freed (deleted and repacked packs minus the new packs).
    pub bytes_freed: u64,
    /// Unused bytes left in packs kept as they are.
    pub unused_bytes_kept: u64,
    pub packs_after: u64,
    pub bytes_after: u64,
    pub duration_ms: u64,
    /// Shared repository: packs named in a new deletion plan (deleted by a
    /// prune after the grace), condemned packs kept because a snapshot
    /// uses them since, and condemned packs still waiting.
    #[serde(default)]
    pub packs_condemned: u64,
    #[serde(default)]
    pub packs_rescued: u64,
    #[serde(default)]
    pub packs_waiting: u64,
    /// Shared repository: packs younger than the grace, not condemned yet.
    #[serde(default)]
    pub packs_young: u64,
}

/// Every object id the snapshots reference.
pub(crate) fn mark(
    objects: &Objects,
    snaps: &[SnapshotInfo],
    progress: &VerifyProgress,
) -> OpResult<HashSet<ObjectId>> {
    let mut used: HashSet<ObjectId> = HashSet::new();
    let what = |id: &ObjectId, s: &SnapshotInfo, e: crate::repo::objstore::ObjError| {
        OpError::Damaged(format!(
            "snapshot {}: object {id} cannot be read ({e}); prune stops so as not to drop data: run `snapfs verify`",
            s.record.name
        ))
    };
    progress.snapshots_total.store(snaps.len() as u64, Ordering::Relaxed);
    for (i, s) in snaps.iter().enumerate() {
        let links = s.record.links;
        if used.insert(links) {
            objects.get(&links, ObjKind::Meta).map_err(|e| what(&links, s, e))?;
        }
        let top = s.root_tree()?;
        let mut trees: Vec<TreeId> = vec![top];
        let mut nodes: Vec<(ObjectId, u8)> = Vec::new();
        while let Some(t) = trees.pop() {
            if !used.insert(t.id()) {
                continue;
            }
            let tree = objects.tree(&t).map_err(|e| what(&t.id(), s, e))?;
            for e in tree.entries {
                match e.kind {
                    EntryKind::Dir => trees.extend(e.subtree()),
                    EntryKind::File if !e.content.is_zero() => nodes.push((e.content, e.levels)),
                    _ => {}
                }
            }
            while let Some((n, level)) = nodes.pop() {
                if !used.insert(n) {
                    continue;
                }
                let node = objects.node(&n).map_err(|e| what(&n, s, e))?;
                for c in node.entries {
                    if c.is_zero() {
                        continue;
                    }
                    if level > 0 {
                        nodes.push((c, level - 1));
                    } else {
                        used.insert(c);
                    }
                }
            }
        }
        progress.snapshots_done.store(i as u64 + 1, Ordering::Relaxed);
    }
    Ok(used)
}

/// `prune` as both the daemon and the offline command run it: a failure
/// logged loudly and kept among `health`'s recent errors.
pub fn run_prune(
    objects: &Objects,
    opts: &PruneOptions,
    health: &crate::ops::health::Health,
    progress: &VerifyProgress,
) -> OpResult<PruneReport> {
    prune(objects, opts, progress).inspect_err(|e| {
        let msg = crate::util::with_causes(e);
        log::error!("PRUNE FAILED: {msg}");
        health.error("prune", &msg)
    })
}

/// Remove what no snapshot references. The caller excludes snapshots.
pub fn prune(objects: &Objects, opts: &PruneOptions, progress: &VerifyProgress) -> OpResult<PruneReport> {
    crate::repo::crypto::require_full(objects.keys().map(|k| &**k), "prune")?;
    let t0 = Instant::now();
    let store = objects.store().clone();
    let mut report = PruneReport { dry_run: opts.dry_run, ..Default::default() };
    // every record must be readable: an unreadable one could reference anything
    let snaps = snapshot::list_all(&*store)?;
    if let Some(s) = snaps.iter().find(|s| s.damaged.is_some()) {
        damaged!(
            "snapshot record {} is damaged; prune stops so as not to drop data: run `snapfs verify` (or forget it by its id)",
            s.id
        );
    }
    report.snapshots = snaps.len() as u64;
    // other hosts' packs (listed after the records: every pack a listed
    // record needs is there), and none a prune elsewhere deleted
    if store.shared() {
        objects.refresh()?;
    }
    progress.phase.store(3, Ordering::Relaxed);
    let used = mark(objects, &snaps, progress)?;
    report.objects_in_use = used.len() as u64;

    // plan
    progress.phase.store(1, Ordering::Relaxed);
    // (a file there whose name is no pack id is none of prune's business)
    let listed = store.list_times(FileKind::Pack)?;
    // In a shared repository, a pack younger than the grace may be one of a
    // snapshot another host is taking (written, not yet committed): it is
    // not condemned yet (a later prune takes it if it stays unused).
    let young_after = crate::util::unix_now() - opts.grace_secs as i64;
    let young: HashSet<String> =
        listed.iter().filter(|(_, t)| t.is_some_and(|t| t > young_after)).map(|(n, _)| n.clone()).collect();
    let names: Vec<String> = listed.into_iter().map(|(n, _)| n).filter(|n| PackId::parse(n).is_some()).collect();
    progress.packs_total.store(names.len() as u64, Ordering::Relaxed);
    struct PackInfo {
        name: String,
        size: u64,
        entries: Vec<PackEntry>,
        used_bytes: u64,
    }
    /// Where each object of `packs` is, in the first of them holding it.
    fn first_homes<'a>(packs: impl IntoIterator<Item = &'a PackInfo>) -> HashMap<ObjectId, Location> {
        let mut home = HashMap::new();
        for p in packs {
            let pack = PackId::parse(&p.name).expect("listed as a pack id above");
            for e in &p.entries {
                home.entry(e.id).or_insert_with(|| Location { pack: pack.clone(), entry: *e });
            }
        }
        home
    }
    /// How many objects of `packs` no snapshot uses.
    fn unused_in<'a>(packs: impl IntoIterator<Item = &'a PackInfo>, used: &HashSet<ObjectId>) -> u64 {
        let ids: HashSet<ObjectId> =
            packs.into_iter().flat_map(|p| p.entries.iter()).filter(|e| !used.contains(&e.id)).map(|e| e.id).collect();
        ids.len() as u64
    }
    /// Point the index off the packs `gone`: each object there at
    /// `home(id)` (None: dropped from the index), except those `keep` says
    /// stay as the index has them; drop the packs from the indexed set.
    /// Returns their names.
    fn repoint_off(
        objects: &Objects,
        gone: &HashSet<&str>,
        home: impl Fn(&ObjectId) -> Option<Location>,
        keep: impl Fn(&ObjectId) -> bool,
    ) -> OpResult<Vec<String>> {
        let mut changes: Vec<(ObjectId, Option<Location>)> = Vec::new();
        objects.scan_index(|id, loc| {
            if loc.is_some_and(|l| gone.contains(l.pack.as_str())) && !keep(&id) {
                changes.push((id, home(&id)));
            }
        })?;
        let names: Vec<String> = gone.iter().map(|s| s.to_string()).collect();
        objects.reindex(&changes, &names)?;
        Ok(names)
    }
    let mut packs: Vec<PackInfo> = Vec::with_capacity(names.len());
    for (i, name) in names.into_iter().enumerate() {
        let entries = objects.pack_entries(&name).map_err(|e| {
            OpError::Damaged(format!(
                "{e}; prune stops so as not to drop data: run `snapfs verify` (and remove or repair the pack)"
            ))
        })?;
        let size = store.size(FileKind::Pack, &name)?;
        let used_bytes = entries.iter().filter(|e| used.contains(&e.id)).map(|e| e.stored as u64).sum();
        packs.push(PackInfo { name, size, entries, used_bytes });
        progress.packs_done.store(i as u64 + 1, Ordering::Relaxed);
    }
    report.packs_before = packs.len() as u64;
    report.bytes_before = packs.iter().map(|p| p.size).sum();
    // A shared repository: delete what plans older than the grace condemned
    // (phase 2), then plan the rest of the work over the packs no plan names.
    let shared = store.shared();
    let mut freed_now = 0u64;
    if shared {
        let plans = plans::read_all(&*store)?;
        let condemned = plans::condemned(&plans);
        let now = crate::util::unix_now();
        let ripe: HashSet<&str> = plans
            .iter()
            .filter(|l| l.ripe(now, opts.grace_secs))
            .filter_map(|l| l.plan.as_ref().ok())
            .flat_map(|p| p.condemned.iter().map(String::as_str))
            .collect();
        let (named, free): (Vec<PackInfo>, Vec<PackInfo>) =
            packs.into_iter().partition(|p| condemned.contains(&p.name));
        packs = free;
        let elsewhere = first_homes(&packs);
        let mut delete: Vec<&PackInfo> = Vec::new();
        for p in named.iter().filter(|p| ripe.contains(p.name.as_str())) {
            let ids: Vec<ObjectId> = p.entries.iter().map(|e| e.id).collect();
            if plans::may_delete(&ids, &used, |id| elsewhere.contains_key(id)) {
                delete.push(p);
            } else {
                log::warn!("prune: condemned pack {} holds objects a snapshot uses since: kept", p.name);
                report.packs_rescued += 1;
            }
        }
        report.packs_deleted = delete.len() as u64;
        freed_now = delete.iter().map(|p| p.size).sum();
        report.packs_waiting = (named.len() - delete.len()) as u64 - report.packs_rescued;
        let gone: HashSet<&str> = delete.iter().map(|p| p.name.as_str()).collect();
        report.objects_removed = unused_in(delete.iter().copied(), &used);
        if !opts.dry_run {
            let names = repoint_off(objects, &gone, |id| elsewhere.get(id).cloned(), |_| false)?;
            for name in &names {
                store.delete(FileKind::Pack, name)?;
            }
            // a plan is removed once every host has long seen it (its packs
            // went a grace ago); one that cannot be read condemns nothing
            for l in &plans {
                if l.spent(now, opts.grace_secs) || l.plan.is_err() {
                    if let Err(e) = &l.plan {
                        log::warn!("prune: deletion plan {} is damaged ({e}): removed", l.name);
                    }
                    store.delete(FileKind::Plan, &l.name)?;
                }
            }
        }
    }
    #[derive(PartialEq, Clone, Copy)]
    enum Fate {
        Keep,
        Repack,
        Delete,
    }
    let fates: Vec<Fate> = packs
        .iter()
        .map(|p| {
            let data: u64 = p.entries.iter().map(|e| e.stored as u64).sum();
            if shared && young.contains(&p.name) {
                Fate::Keep
            } else if p.used_bytes == 0 {
                Fate::Delete
            } else if (data - p.used_bytes.min(data)) as f64 > opts.max_unused * data as f64 {
                Fate::Repack
            } else {
                Fate::Keep
            }
        })
        .collect();
    // Where each object stays: the kept pack the index names (the copy mark
    // read and checked), else the first kept pack holding it, if that copy
    // checks out (a duplicate left by an interrupted prune or snapshot).
    let kept: HashSet<&str> =
        packs.iter().zip(&fates).filter(|(_, f)| **f == Fate::Keep).map(|(p, _)| p.name.as_str()).collect();
    let mut home = first_homes(packs.iter().zip(&fates).filter(|(_, f)| **f == Fate::Keep).map(|(p, _)| p));
    // homes found damaged: their objects are copied elsewhere below
    let mut lost: HashSet<ObjectId> = HashSet::new();
    // (only objects held by more than one pack can have another copy)
    let mut seen: HashSet<ObjectId> = HashSet::new();
    let mut dups: HashSet<ObjectId> = HashSet::new();
    for p in &packs {
        for e in &p.entries {
            if !seen.insert(e.id) {
                dups.insert(e.id);
            }
        }
    }
    drop(seen);
    for (id, loc) in home.iter_mut() {
        if !used.contains(id) || !dups.contains(id) {
            continue;
        }
        match objects.locate(id)? {
            Some(l) if kept.contains(l.pack.as_str()) => *loc = l,
            Some(_) => {
                let ok = store
                    .get_range(FileKind::Pack, &loc.pack, loc.entry.offset, loc.entry.stored as usize)
                    .ok()
                    .and_then(|b| objects.decode_object(&loc.pack, &loc.entry, &b).ok())
                    .is_some_and(|raw| objects.id_of(loc.entry.kind, &raw) == *id);
                if !ok {
                    log::warn!("prune: the copy of {id} in pack {} is damaged; keeping another", loc.pack);
                    lost.insert(*id); // not a home: copied below
                }
            }
            None => {}
        }
    }
    home.retain(|id, _| !lost.contains(id));
    let mut to_copy: Vec<(usize, PackEntry)> = Vec::new();
    let mut copying: HashSet<ObjectId> = HashSet::new();
    for (i, (p, f)) in packs.iter().zip(&fates).enumerate() {
        if *f == Fate::Repack {
            for e in &p.entries {
                if used.contains(&e.id) && !home.contains_key(&e.id) && copying.insert(e.id) {
                    to_copy.push((i, *e));
                }
            }
        }
    }
    // an object in use that only a deleted pack holds cannot happen (such a
    // pack would have been repacked); check anyway
    for (p, f) in packs.iter().zip(&fates) {
        if *f == Fate::Delete {
            if let Some(e) = p.entries.iter().find(|e| used.contains(&e.id)) {
                return Err(OpError::Internal(format!("pack {} to be deleted holds object {} in use", p.name, e.id)));
            }
        }
    }
    if shared {
        report.packs_condemned = fates.iter().filter(|f| **f != Fate::Keep).count() as u64;
        report.packs_young = packs.iter().filter(|p| young.contains(&p.name)).count() as u64;
    } else {
        report.packs_deleted = fates.iter().filter(|f| **f == Fate::Delete).count() as u64;
    }
    report.packs_repacked = fates.iter().filter(|f| **f == Fate::Repack).count() as u64;
    report.bytes_copied = to_copy.iter().map(|(_, e)| e.stored as u64).sum();
    report.unused_bytes_kept = packs
        .iter()
        .zip(&fates)
        .filter(|(_, f)| **f == Fate::Keep)
        .map(|(p, _)| p.entries.iter().filter(|e| !used.contains(&e.id)).map(|e| e.stored as u64).sum::<u64>())
        .sum();
    let doomed: Vec<usize> = (0..packs.len()).filter(|&i| fates[i] != Fate::Keep).collect();
    let doomed_bytes: u64 = doomed.iter().map(|&i| packs[i].size).sum();
    if !shared {
        report.objects_removed = unused_in(doomed.iter().map(|&i| &packs[i]), &used);
    }
    if opts.dry_run || doomed.is_empty() {
        if shared {
            // (condemned packs go at a later prune)
            report.bytes_freed = freed_now;
            report.packs_after = report.packs_before - report.packs_deleted;
        } else {
            report.bytes_freed = doomed_bytes.saturating_sub(report.bytes_copied);
            report.packs_after = report.packs_before - report.packs_deleted - report.packs_repacked;
        }
        report.bytes_after = report.bytes_before - report.bytes_freed;
        report.duration_ms = t0.elapsed().as_millis() as u64;
        return Ok(report);
    }

    // copy, pack by pack, verifying every object on the way
    progress.phase.store(5, Ordering::Relaxed);
    progress.bytes_total.store(report.bytes_copied, Ordering::Relaxed);
    progress.bytes_done.store(0, Ordering::Relaxed);
    progress.packs_total.store(report.packs_repacked, Ordering::Relaxed);
    progress.packs_done.store(0, Ordering::Relaxed);
    objects.take_stats();
    let mut k = 0;
    while k < to_copy.len() {
        let pi = to_copy[k].0;
        let p = &packs[pi];
        // one read of the pack for all its objects in use
        let bytes = store.get(FileKind::Pack, &p.name)?;
        while k < to_copy.len() && to_copy[k].0 == pi {
            let e = &to_copy[k].1;
            let stored = bytes
                .get(e.offset as usize..(e.offset + e.stored as u64) as usize)
                .ok_or_else(|| OpError::Damaged(format!("pack {} is shorter than its trailer says", p.name)))?;
            objects.copy_object(&p.name, e, stored).map_err(|err| {
                OpError::Damaged(format!("{err}; prune stops so as not to drop data: run `snapfs verify`"))
            })?;
            progress.bytes_done.fetch_add(e.stored as u64, Ordering::Relaxed);
            k += 1;
        }
        progress.packs_done.fetch_add(1, Ordering::Relaxed);
    }
    if let Err(e) = objects.flush() {
        objects.discard_pending();
        return Err(e.into());
    }
    let added = objects.take_stats();
    report.packs_written = added.packs;
    crate::util::crash_point("prune-after-copy");

    if shared {
        // phase 1: name them in a plan; a prune after the grace deletes them
        let condemned: Vec<String> = doomed.iter().map(|&i| packs[i].name.clone()).collect();
        let plan = plans::Plan {
            format: plans::PLAN_FORMAT,
            host: crate::util::hostname(),
            time_sec: crate::util::unix_now(),
            condemned,
        };
        let name = plans::write(&*store, &plan)?;
        log::info!(
            "prune: {} packs condemned in plan {name}: deleted by a prune after {} s",
            doomed.len(),
            opts.grace_secs
        );
    } else {
        // the index: nothing may point into a doomed pack any more
        let doomed_names: HashSet<&str> = doomed.iter().map(|&i| packs[i].name.as_str()).collect();
        // (objects copied were indexed at their new place by the flush: that stays)
        let dropped = repoint_off(objects, &doomed_names, |id| home.get(id).cloned(), |id| copying.contains(id))?;
        crate::util::crash_point("prune-after-reindex");

        // and only now the packs go
        progress.phase.store(4, Ordering::Relaxed);
        for (i, name) in dropped.iter().enumerate() {
            store.delete(FileKind::Pack, name)?;
            if i == 0 {
                crate::util::crash_point("prune-mid-delete");
            }
        }
    }
    // files interrupted writes left (an hour old: no write takes that long)
    let swept = store.sweep(std::time::Duration::from_secs(3600))?;
    if swept > 0 {
        log::info!("prune: removed {swept} temporary files left by interrupted writes");
    }
    let after = store.list(FileKind::Pack)?;
    report.packs_after = after.len() as u64;
    report.bytes_after = after.iter().map(|n| store.size(FileKind::Pack, n).unwrap_or(0)).sum();
    report.bytes_freed = report.bytes_before.saturating_sub(report.bytes_after);
    report.duration_ms = t0.elapsed().as_millis() as u64;
    log::info!(
        "prune: {} packs deleted, {} repacked into {}, {} objects removed, {} freed",
        report.packs_deleted,
        report.packs_repacked,
        report.packs_written,
        report.objects_removed,
        crate::util::human_bytes(report.bytes_freed)
    );
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3600;
    const D: i64 = 86_400;

    fn kept(p: &Policy, times: &[i64]) -> Vec<usize> {
        apply(p, times, |_| 0).iter().enumerate().filter(|(_, r)| !r.is_empty()).map(|(i, _)| i).collect()
    }

    #[test]
    fn parse_policy() {
        let p = Policy::parse("hourly=24,daily=7,weekly=4,monthly=12").unwrap();
        assert_eq!(p, Policy { hourly: 24, daily: 7, weekly: 4, monthly: 12, ..Default::default() });
        assert_eq!(p.to_string(), "hourly=24,daily=7,weekly=4,monthly=12");
        assert!(Policy::parse("often=3").is_err());
        assert!(Policy::parse("daily=x").is_err());
        assert!(Policy::parse("").unwrap().is_empty());
    }

    #[test]
    fn keep_last() {
        let times = [10, 20, 30, 40];
        assert_eq!(kept(&Policy { last: 2, ..Default::default() }, &times), vec![2, 3]);
        assert_eq!(kept(&Policy { last: 9, ..Default::default() }, &times), vec![0, 1, 2, 3]);
    }

    #[test]
    fn table_of_times() {
        // 2026-11-02 (a Monday) 00:00 UTC
        let mon = 1_793_577_600;
        assert_eq!(crate::util::rfc3339(mon), "2026-11-02T00:00:00Z");
        // every 15 minutes for 10 days
        let times: Vec<i64> = (0..10 * 96).map(|i| mon + i * 900).collect();
        let last = times.len() - 1;
        // hourly=3: the last snapshot of each of the last 3 hours
        assert_eq!(kept(&Policy { hourly: 3, ..Default::default() }, &times), vec![last - 8, last - 4, last]);
        // daily=2: the last of each of the last two days
        assert_eq!(kept(&Policy { daily: 2, ..Default::default() }, &times), vec![last - 96, last]);
        // weekly=2: the days run Mon 2 .. Wed 11: weeks of Nov 2 and Nov 9
        let w = kept(&Policy { weekly: 2, ..Default::default() }, &times);
        assert_eq!(w, vec![7 * 96 - 1, last]);
        assert_eq!(crate::util::rfc3339(times[w[0]]), "2026-11-08T23:45:00Z");
        // monthly=3 with one month only: one kept
        assert_eq!(kept(&Policy { monthly: 3, ..Default::default() }, &times), vec![last]);
        // rules add up; reasons say which
        let p = Policy { last: 1, daily: 2, ..Default::default() };
        let r = apply(&p, &times, |_| 0);
        assert_eq!(r[last], vec!["last", "daily"]);
        assert_eq!(r[last - 96], vec!["daily"]);
        assert_eq!(r.iter().filter(|x| !x.is_empty()).count(), 2);
        // a time zone moves day boundaries: at UTC+2 the 22:00 UTC snapshot is the next day
        let t = [mon + 21 * H, mon + 22 * H];
        assert_eq!(
            apply(&Policy { daily: 2, ..Default::default() }, &t, |_| 0).iter().filter(|x| !x.is_empty()).count(),
            1
        );
        assert_eq!(
            apply(&Policy { daily: 2, ..Default::default() }, &t, |_| 2 * H).iter().filter(|x| !x.is_empty()).count(),
            2
        );
        // months and years
        let spread: Vec<i64> = (0..30).map(|i| mon + i * 20 * D).collect();
        let m = kept(&Policy { monthly: 4, ..Default::default() }, &spread);
        assert_eq!(m.len(), 4);
        assert!(m.contains(&29));
        let y = kept(&Policy { yearly: 5, ..Default::default() }, &spread);
        // 2026, 2027, 2028
        assert_eq!(y.len(), 3);
        assert!(kept(&Policy::default(), &spread).is_empty());
    }
}
