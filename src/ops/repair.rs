//! `verify --read-data --repair`: heal what verify found damaged from
//! another copy of the repository (a replica, or `--from` another one with
//! the same id).
//!
//! First whole packs: a pack that is damaged, or that the index knew and
//! is gone, is fetched by its name from a source holding a pack of that
//! name whose bytes hash to it (replicas hold the very same packs), and put
//! back in its place. Then single objects: each is taken from a source only
//! after it decodes and hashes to its id *in this repository* (the sources
//! share its keys and ids), and is written into a new pack here; a damaged
//! pack no source holds whole is replaced by copying out its sound objects
//! and fetching the rest, and is dropped from the index and deleted only
//! when every one of them is in a new pack. A damaged snapshot record is
//! fetched by its name (the hash of its bytes). What cannot be healed is
//! named and left as it was. `verify_and_repair` verifies again after each
//! round (healing a tree can show what lies below it) until it is clean or
//! a round heals nothing.

use std::collections::HashSet;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::ops::verify::VerifyReport;
use crate::ops::OpResult;
use crate::repo::objects::{ObjKind, ObjectId, PackId};
use crate::repo::objstore::Objects;
use crate::repo::store::{FileKind, Store, StoreError};

/// What a repair did.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RepairReport {
    /// One line per thing healed: what, and from where.
    pub repaired: Vec<String>,
    /// One line per thing that could not be healed, and why.
    pub failed: Vec<String>,
    /// Damaged packs replaced by new ones and deleted.
    pub packs_replaced: u64,
}

/// A copy to heal from: its name (for the log) and its store, opened with
/// this repository's keys.
#[derive(Clone)]
pub struct Source {
    pub name: String,
    pub store: Arc<dyn Store>,
}

/// The copies to heal from, each with its objects (an index built from its
/// trailers), opened at the first use. Repair and the daemon's healing
/// reads both go through it.
pub struct Sources {
    list: Vec<(Source, Option<Objects>)>,
}

impl Sources {
    pub fn new(sources: Vec<Source>) -> Sources {
        Sources { list: sources.into_iter().map(|s| (s, None)).collect() }
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Each source that opens, with its objects; why the others did not.
    fn opened(&mut self) -> (Vec<(&Source, &Objects)>, Vec<String>) {
        let mut why = Vec::new();
        for (src, objs) in self.list.iter_mut() {
            if objs.is_none() {
                match Objects::open(src.store.clone(), None) {
                    Ok(o) => *objs = Some(o),
                    Err(e) => why.push(format!("{}: {e}", src.name)),
                }
            }
        }
        (self.list.iter().filter_map(|(s, o)| o.as_ref().map(|o| (s, o))).collect(), why)
    }

    /// A copy of object `id` from the first source that reads it (checked
    /// there), and the source's name.
    pub fn find(&mut self, id: &ObjectId, kind: ObjKind) -> Option<(Vec<u8>, String)> {
        let (open, why) = self.opened();
        for w in why {
            log::warn!("a copy to heal from cannot be opened: {w}");
        }
        open.into_iter().find_map(|(s, o)| o.get(id, kind).ok().map(|raw| (raw, s.name.clone())))
    }
}

/// A healer for [`Objects::set_healer`]: reads that hit damage take a copy
/// from the sources `sources` gives (asked again while it gives none: a
/// mount's replicas can be added later), each opened once.
pub fn healer(sources: impl Fn() -> Vec<Source> + Send + Sync + 'static) -> crate::repo::objstore::Healer {
    let cache = std::sync::Mutex::new(Sources::new(Vec::new()));
    Arc::new(move |id: &ObjectId, kind| {
        let mut c = crate::util::Locked::locked(&cache);
        if c.is_empty() {
            *c = Sources::new(sources());
        }
        c.find(id, kind)
    })
}

/// Put pack `name` from `from` into `to` if `from` holds it whole (its
/// bytes hash to its name), in place of a damaged copy there (`replace`).
/// Returns whether it did.
fn fetch_pack(from: &dyn Store, to: &dyn Store, name: &str, replace: bool) -> Result<bool, StoreError> {
    let Ok(bytes) = from.get(FileKind::Pack, name) else { return Ok(false) };
    if !ObjectId::names(name, &bytes) {
        return Ok(false);
    }
    if replace {
        to.delete(FileKind::Pack, name)?;
    }
    to.put(FileKind::Pack, name, &bytes)?;
    Ok(true)
}

fn kind_of(name: &str) -> Option<ObjKind> {
    Some(match name {
        "blob" => ObjKind::Blob,
        "file node" => ObjKind::FileNode,
        "tree" => ObjKind::Tree,
        "links" => ObjKind::Meta,
        _ => return None,
    })
}

struct Healer<'a> {
    objects: &'a Objects,
    sources: Sources,
    report: RepairReport,
}

impl Healer<'_> {
    /// Fetch object `id` from the first source that has a sound copy, and
    /// store it here anew. Returns where it came from.
    fn heal(&mut self, id: ObjectId, kind: ObjKind) -> Result<String, String> {
        let objects = self.objects;
        let (open, mut why) = self.sources.opened();
        for (src, o) in open {
            // the source's pack holding it, when this repository lacks that
            // pack altogether (lost): the whole pack, checked by its name
            if let Ok(Some(loc)) = o.locate(&id) {
                let store = objects.store();
                if matches!(store.size(FileKind::Pack, &loc.pack), Err(StoreError::NotFound { .. })) {
                    let fetched = fetch_pack(&*src.store, &**store, &loc.pack, false).map_err(|e| e.to_string());
                    let indexed = fetched.and_then(|fetched| {
                        if fetched {
                            objects.index_new_packs().map_err(|e| e.to_string())?;
                        }
                        Ok(fetched)
                    });
                    match indexed {
                        Ok(true) => return Ok(format!("{} (its whole pack {})", src.name, loc.pack)),
                        Ok(false) => {}
                        Err(e) => return Err(format!("writing pack {} back: {e}", loc.pack)),
                    }
                }
            }
            match o.get(&id, kind) {
                Ok(raw) if objects.id_of(kind, &raw) == id => match objects.put_again(kind, &raw) {
                    Ok(()) => return Ok(src.name.clone()),
                    Err(e) => return Err(format!("writing it back: {e}")),
                },
                Ok(_) => why.push(format!("{}: its copy has another id (another repository?)", src.name)),
                Err(e) => why.push(format!("{}: {e}", src.name)),
            }
        }
        if why.is_empty() {
            why.push("no other copy to heal from (add a replica, or give --from)".into());
        }
        Err(why.join("; "))
    }
}

/// Heal what `found` (a verify with `read_data`) names, from `sources`.
pub fn repair(objects: &Objects, found: &VerifyReport, sources: &[Source]) -> OpResult<RepairReport> {
    crate::repo::crypto::require_full(objects.keys().map(|k| &**k), "verify --repair")?;
    let store = objects.store().clone();
    let mut h = Healer { objects, sources: Sources::new(sources.to_vec()), report: RepairReport::default() };
    let mut done: HashSet<ObjectId> = HashSet::new();

    // whole packs, by name: the damaged ones and those gone from the store
    let (_, gone) = objects.refresh_names()?;
    let mut whole_healed: HashSet<String> = HashSet::new();
    let wanted = found.damaged_packs.iter().map(|p| (p.name.clone(), true)).chain(gone.into_iter().map(|n| (n, false)));
    for (name, present) in wanted {
        if PackId::parse(&name).is_none() {
            continue;
        }
        for s in sources {
            if fetch_pack(&*s.store, &*store, &name, present)? {
                h.report.repaired.push(format!("pack {name} from {}", s.name));
                whole_healed.insert(name.clone());
                break;
            }
        }
    }
    if !whole_healed.is_empty() {
        objects.index_new_packs()?;
        return Ok(h.report);
    }

    // damaged packs: copy out what is sound, heal the rest, then replace
    let mut replaced: Vec<String> = Vec::new();
    let mut trailerless: Vec<String> = Vec::new();
    for p in &found.damaged_packs {
        let Some(_) = PackId::parse(&p.name) else { continue };
        let entries = match objects.pack_entries(&p.name) {
            Ok(e) => e,
            Err(e) => {
                // no trailer: its objects are reported missing, healed below
                log::warn!("repair: pack {} has no readable trailer ({e}); its objects are fetched one by one", p.name);
                trailerless.push(p.name.clone());
                continue;
            }
        };
        let mut whole = true;
        // (in another order than the pack's: the new pack must not come out
        // byte for byte the same, under the damaged one's name)
        for e in entries.iter().rev() {
            if !done.insert(e.id) {
                continue;
            }
            let sound = store
                .get_range(FileKind::Pack, &p.name, e.offset, e.stored as usize)
                .ok()
                .filter(|b| objects.decode_object(&p.name, e, b).is_ok());
            match sound {
                Some(stored) => {
                    if let Err(err) = objects.copy_object(&p.name, e, &stored) {
                        h.report.failed.push(format!("object {} of pack {}: copying it out: {err}", e.id, p.name));
                        whole = false;
                    }
                }
                None => match h.heal(e.id, e.kind) {
                    Ok(from) => h.report.repaired.push(format!("object {} (pack {}) from {from}", e.id, p.name)),
                    Err(why) => {
                        h.report.failed.push(format!("object {} (pack {}): {why}", e.id, p.name));
                        whole = false;
                    }
                },
            }
        }
        if whole {
            replaced.push(p.name.clone());
        } else {
            log::warn!("repair: pack {} is kept (not all of it could be healed)", p.name);
        }
    }

    // objects named damaged or missing (in packs that hash right, or in none)
    for d in &found.damaged_objects {
        let (Some(id), Some(kind)) = (ObjectId::from_hex(&d.id), kind_of(&d.kind)) else { continue };
        if !done.insert(id) {
            continue;
        }
        // (missing, and back now with a whole pack fetched for another)
        if d.pack.is_none()
            && objects.locate(&id)?.is_some_and(|l| !l.pack.is_empty())
            && objects.get(&id, kind).is_ok()
        {
            continue;
        }
        match h.heal(id, kind) {
            Ok(from) => h.report.repaired.push(format!("{} {id} from {from}", d.kind)),
            Err(why) => h.report.failed.push(format!("{} {id}: {why}", d.kind)),
        }
    }
    objects.flush()?;
    // (a pack with no trailer goes only if everything could be healed)
    if h.report.failed.is_empty() {
        replaced.extend(trailerless);
    }

    // the replaced packs leave the index (their objects now point at the
    // new packs), then the store
    // (a pack that did come out the same is left, and named)
    replaced.retain(|name| {
        let same = entries_point_at(objects, name);
        if same {
            h.report
                .failed
                .push(format!("pack {name}: rebuilt identical to the damaged copy; heal it from a replica holding it"));
        }
        !same
    });
    if !replaced.is_empty() {
        objects.forget_packs(&replaced)?;
        for name in &replaced {
            store.delete(FileKind::Pack, name)?;
            log::warn!("repair: damaged pack {name} replaced and deleted");
            h.report.packs_replaced += 1;
        }
    }

    // damaged snapshot records, by name
    for r in &found.damaged_records {
        let mut healed = None;
        for s in sources {
            match s.store.get(FileKind::Snapshot, &r.name) {
                Ok(b) if ObjectId::names(&r.name, &b) => {
                    healed = Some((s.name.clone(), b));
                    break;
                }
                _ => {}
            }
        }
        match healed {
            Some((from, bytes)) => {
                store.delete(FileKind::Snapshot, &r.name)?;
                store.put(FileKind::Snapshot, &r.name, &bytes)?;
                h.report.repaired.push(format!("snapshot record {} from {from}", r.name));
            }
            None => h.report.failed.push(format!("snapshot record {}: no sound copy elsewhere", r.name)),
        }
    }
    for line in &h.report.repaired {
        log::warn!("REPAIRED {line}");
    }
    for line in &h.report.failed {
        log::error!("NOT REPAIRED {line}");
    }
    Ok(h.report)
}

/// Whether the index places some object in pack `name` now that the new
/// packs are written (a rebuilt pack that came out with the same name).
fn entries_point_at(objects: &Objects, name: &str) -> bool {
    let mut any = false;
    let _ = objects.scan_index(|_, loc| any |= loc.is_some_and(|l| l.pack.as_str() == name));
    any
}

/// `verify` and, where it finds damage, `repair` from `sources` and verify
/// again: the report is the second verify's, with what the repair did.
/// Each thing healed is counted in the health record (`status`).
pub fn verify_and_repair(
    objects: &Objects,
    opts: &crate::ops::verify::VerifyOptions,
    health: &crate::ops::health::Health,
    progress: &crate::ops::verify::VerifyProgress,
    sources: &[Source],
) -> OpResult<VerifyReport> {
    if !opts.read_data || opts.subset.is_some() {
        refused!("--repair goes with --read-data over every pack (no --subset)");
    }
    let mut report = crate::ops::verify::run(objects, opts, health, progress)?;
    let mut all = RepairReport::default();
    for _round in 0..8 {
        if report.ok {
            break;
        }
        let done = repair(objects, &report, sources)?;
        health.add_repairs(done.repaired.len() as u64);
        let healed_some = !done.repaired.is_empty();
        all.repaired.extend(done.repaired);
        all.packs_replaced += done.packs_replaced;
        all.failed = done.failed;
        report = crate::ops::verify::run(objects, opts, health, progress)?;
        if !healed_some {
            break;
        }
    }
    if !all.repaired.is_empty() || !all.failed.is_empty() {
        report.repair = Some(all);
    }
    Ok(report)
}
