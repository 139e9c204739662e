//! What `snapfs status` reports about the health of the backups: the last
//! verify and its result, and recent errors (a failed snapshot, a failed
//! scheduled run, an I/O error of the repository). Kept in the sled tree
//! `health` beside the tracking state: losing it loses only this history.

use serde::{Deserialize, Serialize};

use crate::check::VerifyReport;

/// Errors kept.
const MAX_ERRORS: usize = 20;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct VerifySummary {
    pub time: String,
    pub time_sec: i64,
    pub ok: bool,
    pub read_data: bool,
    pub subset: Option<f64>,
    /// Damaged objects, packs, records and index problems.
    pub damage: u64,
    pub summary: String,
    pub duration_ms: u64,
}

impl VerifySummary {
    pub fn of(r: &VerifyReport) -> VerifySummary {
        VerifySummary {
            time: r.time.clone(),
            time_sec: r.time_sec,
            ok: r.ok,
            read_data: r.read_data,
            subset: r.subset,
            damage: r.damage_count() as u64,
            summary: crate::check::summary(r),
            duration_ms: r.duration_ms,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorEvent {
    pub time: String,
    pub time_sec: i64,
    /// What failed: "snapshot", "schedule", "prune", "verify", ...
    pub during: String,
    pub error: String,
}

#[derive(Clone)]
pub struct Health {
    tree: sled::Tree,
}

impl Health {
    pub fn open(db: &sled::Db) -> sled::Result<Health> {
        Ok(Health { tree: db.open_tree("health")? })
    }

    fn get<T: serde::de::DeserializeOwned>(&self, key: &str) -> Option<T> {
        let v = self.tree.get(key).ok()??;
        serde_json::from_slice(&v).ok()
    }

    fn set<T: Serialize>(&self, key: &str, v: &T) {
        let bytes = serde_json::to_vec(v).expect("serializes");
        if let Err(e) = self.tree.insert(key, bytes).and_then(|_| self.tree.flush().map(|_| ())) {
            log::error!("cannot record {key} in the health tree: {e}");
        }
    }

    pub fn last_verify(&self) -> Option<VerifySummary> {
        self.get("verify")
    }

    pub fn set_verify(&self, r: &VerifyReport) {
        self.set("verify", &VerifySummary::of(r));
    }

    /// Recent errors, oldest first.
    pub fn errors(&self) -> Vec<ErrorEvent> {
        self.get("errors").unwrap_or_default()
    }

    pub fn error(&self, during: &str, error: &str) {
        let now = crate::util::unix_now();
        let mut all = self.errors();
        all.push(ErrorEvent {
            time: crate::util::rfc3339(now),
            time_sec: now,
            during: during.into(),
            error: error.into(),
        });
        if all.len() > MAX_ERRORS {
            all.drain(..all.len() - MAX_ERRORS);
        }
        self.set("errors", &all);
    }

    /// Forget the errors (`snapfs status --clear-errors`).
    pub fn clear_errors(&self) {
        self.set::<Vec<ErrorEvent>>("errors", &Vec::new());
    }
}

/// The health part of `snapfs status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct HealthReport {
    pub snapshots: u64,
    pub last_snapshot: Option<String>,
    pub last_snapshot_time: Option<String>,
    pub last_snapshot_age_sec: Option<i64>,
    /// Bytes in packs, and how many packs.
    pub repository_bytes: u64,
    pub packs: u64,
    /// Size of the files in the latest snapshot, and summed over all.
    pub logical_bytes_latest: u64,
    pub logical_bytes_all: u64,
    /// `logical_bytes_all / repository_bytes`: what deduplication and
    /// compression save across snapshots.
    pub dedup_ratio: f64,
    pub last_verify: Option<VerifySummary>,
    /// Recent errors, oldest first.
    pub errors: Vec<ErrorEvent>,
    /// Set while snapshots fail: the last error. Cleared by a snapshot that
    /// succeeds.
    pub failing: Option<String>,
    /// Automatic snapshots and retention, when configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule: Option<crate::schedule::ScheduleStatus>,
}

/// Gather the health of a repository.
pub fn report(store: &dyn crate::store::Store, health: Option<&Health>) -> HealthReport {
    use crate::store::FileKind;
    let mut r = HealthReport::default();
    match crate::snapshot::list(store) {
        Ok(all) => {
            r.snapshots = all.len() as u64;
            if let Some(s) = all.last() {
                r.last_snapshot = Some(s.record.name.clone());
                r.last_snapshot_time = Some(s.record.time.clone());
                r.last_snapshot_age_sec = Some(crate::util::unix_now() - s.record.time_sec);
                r.logical_bytes_latest = s.record.stats.logical_bytes;
            }
            r.logical_bytes_all = all.iter().map(|s| s.record.stats.logical_bytes).sum();
        }
        Err(e) => r.failing = Some(format!("cannot list snapshots: {e}")),
    }
    match store.list(FileKind::Pack) {
        Ok(packs) => {
            r.packs = packs.len() as u64;
            r.repository_bytes = packs.iter().map(|p| store.size(FileKind::Pack, p).unwrap_or(0)).sum();
        }
        Err(e) => r.failing = Some(format!("cannot list packs: {e}")),
    }
    if r.repository_bytes > 0 {
        r.dedup_ratio = r.logical_bytes_all as f64 / r.repository_bytes as f64;
    }
    if let Some(h) = health {
        r.last_verify = h.last_verify();
        r.errors = h.errors();
        if r.failing.is_none() {
            r.failing = h.get("failing");
        }
    }
    r
}

impl Health {
    /// The schedule set on an earlier mount.
    pub fn schedule(&self) -> Option<crate::schedule::Schedule> {
        self.get("schedule")
    }

    pub fn set_schedule(&self, s: Option<&crate::schedule::Schedule>) {
        match s {
            Some(s) => self.set("schedule", s),
            None => {
                let _ = self.tree.remove("schedule");
            }
        }
    }

    /// Snapshots are failing with `error` (None: they work again).
    pub fn set_failing(&self, error: Option<&str>) {
        match error {
            Some(e) => self.set("failing", &e.to_string()),
            None => {
                let _ = self.tree.remove("failing");
            }
        }
    }
}
