//! Deletion plans: how prune deletes packs from a repository that other
//! hosts write at the same time (an object store), with no lock, no
//! conditional write and no trust in listings being current.
//!
//! Prune works in two phases, a grace period apart:
//! 1. **condemn**: the packs that hold nothing in use (and those repacked:
//!    their objects in use copied to new packs first) are named in a plan,
//!    `plans/<id>`, with the time. Nothing is deleted.
//! 2. **delete** (a later prune, once the plan is older than the grace): the
//!    records are read and marked again; a condemned pack is deleted only if
//!    every object in use it holds has a copy in a pack no plan names;
//!    otherwise it is rescued (kept). A plan is removed a second grace later.
//!
//! A snapshot, from its start, never reuses an object from a pack a plan it
//! can see names (it stores the object again), and before its commit it
//! reads the plans again (while its last packs are written: those are new,
//! and prune judges no pack younger than the grace): if one names a pack it
//! reused or wrote, it starts over. So a snapshot that reused a condemned
//! pack committed before that plan was visible to it; if the grace exceeds
//! twice the time a listing may lag behind a write (plus the last pack
//! writes and one PUT), its record is visible to phase 2, which rescues the
//! pack. See doc/DESIGN.md "Many hosts, one repository".
//!
//! A plan is metadata: sealed like a record in an encrypted repository
//! (write-only keys read it too: they take snapshots). A plan that cannot be
//! read condemns nothing; phase 2 checks every pack anew, so a forged plan
//! can only get deleted what holds nothing in use.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::repo::objects::{ObjectId, PackId};
use crate::repo::store::{FileKind, Store, StoreError, StoreResult};

pub const PLAN_FORMAT: u32 = 1;

/// Default grace between condemning a pack and deleting it.
pub const DEFAULT_GRACE_SECS: u64 = 3600;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Plan {
    pub format: u32,
    /// Who condemned, and when (seconds since the epoch).
    pub host: String,
    pub time_sec: i64,
    /// Pack names.
    pub condemned: Vec<String>,
}

/// A plan as listed: its name and what could be read of it.
#[derive(Debug, Clone)]
pub struct Listed {
    pub name: String,
    pub plan: Result<Plan, String>,
}

impl Listed {
    /// Old enough for its packs to go (phase 2).
    pub fn ripe(&self, now: i64, grace: u64) -> bool {
        matches!(&self.plan, Ok(p) if p.time_sec.saturating_add(grace as i64) <= now)
    }

    /// Old enough to be removed itself (every host has long seen it).
    pub fn spent(&self, now: i64, grace: u64) -> bool {
        matches!(&self.plan, Ok(p) if p.time_sec.saturating_add(2 * grace as i64) <= now)
    }
}

/// Write a plan; its name is the blake3 of its stored bytes.
pub fn write(store: &dyn Store, plan: &Plan) -> StoreResult<String> {
    let mut bytes = serde_json::to_vec_pretty(plan).expect("a plan serializes");
    if let Some(k) = store.keys() {
        bytes = k.seal_plan(&bytes);
    }
    let name = ObjectId::of(&bytes).hex();
    store.put(FileKind::Plan, &name, &bytes)?;
    Ok(name)
}

/// Every plan in the repository (a store failure is an error; a plan that
/// does not decode is listed as damaged).
pub fn read_all(store: &dyn Store) -> StoreResult<Vec<Listed>> {
    let mut out = Vec::new();
    for name in store.list(FileKind::Plan)? {
        let bytes = match store.get(FileKind::Plan, &name) {
            Ok(b) => b,
            // removed since the listing (spent)
            Err(StoreError::NotFound { .. }) => continue,
            Err(e) => return Err(e),
        };
        out.push(Listed { plan: decode(store, &name, &bytes), name });
    }
    Ok(out)
}

fn decode(store: &dyn Store, name: &str, bytes: &[u8]) -> Result<Plan, String> {
    if !ObjectId::names(name, bytes) {
        return Err("its contents do not match its name".into());
    }
    let plain = match store.keys() {
        Some(k) => k.open_plan(bytes, name).map_err(|e| e.to_string())?,
        None if bytes.starts_with(crate::repo::crypto::PLAN_MAGIC) => {
            return Err("it is encrypted, and this repository is not".into())
        }
        None => bytes.to_vec(),
    };
    let plan: Plan = serde_json::from_slice(&plain).map_err(|e| format!("not a deletion plan: {e}"))?;
    if plan.format != PLAN_FORMAT {
        return Err(format!("format {} (this snapfs knows {PLAN_FORMAT})", plan.format));
    }
    if let Some(bad) = plan.condemned.iter().find(|p| PackId::parse(p).is_none()) {
        return Err(format!("it names {bad:?}, which is not a pack"));
    }
    Ok(plan)
}

/// The packs any readable plan names: no snapshot reuses their objects.
pub fn condemned(plans: &[Listed]) -> HashSet<String> {
    plans.iter().filter_map(|l| l.plan.as_ref().ok()).flat_map(|p| p.condemned.iter().cloned()).collect()
}

/// Phase 2 for one condemned pack: it may go if every object in use it
/// holds (`used`) has a copy `elsewhere` (in a pack no plan names).
pub fn may_delete(entries: &[ObjectId], used: &HashSet<ObjectId>, elsewhere: impl Fn(&ObjectId) -> bool) -> bool {
    entries.iter().all(|id| !used.contains(id) || elsewhere(id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::store::LocalStore;

    fn oid(b: u8) -> ObjectId {
        ObjectId([b; 32])
    }

    #[test]
    fn plans_ripen_after_the_grace_and_are_spent_after_two() {
        let l = Listed {
            name: "x".into(),
            plan: Ok(Plan { format: 1, host: "a".into(), time_sec: 1000, condemned: vec![] }),
        };
        assert!(!l.ripe(1000 + 59, 60) && l.ripe(1000 + 60, 60));
        assert!(!l.spent(1000 + 119, 60) && l.spent(1000 + 120, 60));
        let damaged = Listed { name: "y".into(), plan: Err("bad".into()) };
        assert!(!damaged.ripe(i64::MAX, 0) && !damaged.spent(i64::MAX, 0));
    }

    #[test]
    fn a_condemned_pack_goes_only_when_what_is_in_use_is_elsewhere() {
        let used: HashSet<ObjectId> = [oid(1), oid(2)].into();
        let copies: HashSet<ObjectId> = [oid(2)].into();
        let elsewhere = |id: &ObjectId| copies.contains(id);
        // nothing in use
        assert!(may_delete(&[oid(7), oid(8)], &used, elsewhere));
        // in use and copied (repacked)
        assert!(may_delete(&[oid(2), oid(8)], &used, elsewhere));
        // in use, referenced since it was condemned, no copy: rescued
        assert!(!may_delete(&[oid(1), oid(2)], &used, elsewhere));
    }

    #[test]
    fn plans_round_trip_and_bad_ones_condemn_nothing() {
        let t = tempfile::tempdir().unwrap();
        let store = LocalStore::new(t.path());
        let pack = PackId::from_id(oid(9)).to_string();
        let p = Plan { format: 1, host: "h".into(), time_sec: 5, condemned: vec![pack.clone()] };
        let name = write(&store, &p).unwrap();
        // a forged one naming something that is no pack, and one whose
        // name does not match
        let bad = serde_json::to_vec(&Plan { condemned: vec!["../config".into()], ..p.clone() }).unwrap();
        store.put(FileKind::Plan, &ObjectId::of(&bad).hex(), &bad).unwrap();
        store.put(FileKind::Plan, &"0".repeat(64), b"{}").unwrap();
        let all = read_all(&store).unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all.iter().find(|l| l.name == name).unwrap().plan.as_ref().unwrap(), &p);
        assert_eq!(all.iter().filter(|l| l.plan.is_err()).count(), 2);
        assert_eq!(condemned(&all), [pack].into());
    }
}
