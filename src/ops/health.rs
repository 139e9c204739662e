//! What `snapfs status` reports about the health of the backups: the last
//! verify and its result, and recent errors (a failed snapshot, a failed
//! scheduled run, an I/O error of the repository). Kept in the sled tree
//! `health` beside the tracking state: losing it loses only this history.

use serde::{Deserialize, Serialize};

use crate::ops::verify::VerifyReport;
use crate::util::Locked;

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
            summary: crate::ops::verify::summary(r),
            duration_ms: r.duration_ms,
        }
    }
}

/// The last `verify --live`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct LiveCheckSummary {
    pub time: String,
    pub time_sec: i64,
    pub ok: bool,
    /// The snapshot the live directory was compared with.
    pub snapshot: String,
    pub missed: u64,
    pub summary: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StateFailure {
    pub since: String,
    pub since_sec: i64,
    pub error: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorEvent {
    pub time: String,
    pub time_sec: i64,
    /// What failed: "snapshot", "schedule", "prune", "verify", ...
    pub during: String,
    pub error: String,
}

/// Kept in memory, and in the state database when it works (so a failing
/// database loses nothing of what `status` shows while the daemon runs).
pub struct Health {
    db: std::sync::Arc<crate::repo::state::StateDb>,
    mem: std::sync::Mutex<std::collections::HashMap<String, Vec<u8>>>,
}

impl Health {
    pub fn open(db: &std::sync::Arc<crate::repo::state::StateDb>) -> sled::Result<Health> {
        let mut mem = std::collections::HashMap::new();
        for kv in db.tree("health")?.iter() {
            let (k, v) = kv?;
            mem.insert(String::from_utf8_lossy(&k).into_owned(), v.to_vec());
        }
        Ok(Health { db: db.clone(), mem: std::sync::Mutex::new(mem) })
    }

    fn get<T: serde::de::DeserializeOwned>(&self, key: &str) -> Option<T> {
        let m = self.mem.locked();
        serde_json::from_slice(m.get(key)?).ok()
    }

    fn set<T: Serialize>(&self, key: &str, v: &T) {
        let bytes = serde_json::to_vec(v).expect("serializes");
        self.mem.locked().insert(key.to_string(), bytes.clone());
        self.save(key, Some(bytes));
    }

    fn remove(&self, key: &str) {
        self.mem.locked().remove(key);
        self.save(key, None);
    }

    fn save(&self, key: &str, v: Option<Vec<u8>>) {
        let r = self.db.tree("health").and_then(|t| {
            match v {
                Some(v) => t.insert(key, v)?,
                None => t.remove(key)?,
            };
            self.db.flush()
        });
        if let Err(e) = r {
            log::error!("cannot record {key} in the state database: {e}");
            self.db.failed(&e);
        }
    }

    /// Write everything back (after the database was reopened).
    pub fn rewrite(&self) -> sled::Result<()> {
        let all: Vec<(String, Vec<u8>)> = self.mem.locked().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let t = self.db.tree("health")?;
        for (k, v) in all {
            t.insert(k, v)?;
        }
        Ok(())
    }

    /// Objects, packs and records healed by `verify --repair`, in all.
    pub fn repairs(&self) -> u64 {
        self.get("repairs").unwrap_or(0)
    }

    pub fn add_repairs(&self, n: u64) {
        if n > 0 {
            self.set("repairs", &(self.repairs() + n));
        }
    }

    pub fn last_verify(&self) -> Option<VerifySummary> {
        self.get("verify")
    }

    pub fn set_verify(&self, r: &VerifyReport) {
        self.set("verify", &VerifySummary::of(r));
    }

    pub fn last_live_check(&self) -> Option<LiveCheckSummary> {
        self.get("verify_live")
    }

    pub fn set_live_check(&self, r: &crate::ops::verify_live::LiveReport) {
        let now = crate::util::unix_now();
        let summary = if r.ok {
            format!("no change missed: {} files, {} compared", r.files, crate::util::human_bytes(r.bytes_compared))
        } else {
            format!("{} CHANGES MISSED BY THE TRACKER", r.missed_count)
        };
        let s = LiveCheckSummary {
            time: crate::util::rfc3339(now),
            time_sec: now,
            ok: r.ok,
            snapshot: r.snapshot.clone(),
            missed: r.missed_count,
            summary,
        };
        self.set("verify_live", &s);
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
    /// How long the latest snapshot took, and what it added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_snapshot_duration_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_snapshot_added_bytes: Option<u64>,
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
    /// The last `verify --live` (the tracker against the live directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_live_check: Option<LiveCheckSummary>,
    /// Things healed by `verify --repair` (from a replica or --from), in all.
    #[serde(default)]
    pub repairs: u64,
    /// Recent errors, oldest first.
    pub errors: Vec<ErrorEvent>,
    /// Set while snapshots fail: the last error. Cleared by a snapshot that
    /// succeeds.
    pub failing: Option<String>,
    /// Set while the tracking state cannot be saved (the repository's device
    /// is full or gone): tracking goes on in memory, a crash now would make
    /// the next mount compare files changed since `since`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_failing: Option<StateFailure>,
    /// Automatic snapshots and retention, when configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule: Option<crate::ops::schedule::ScheduleStatus>,
}

/// Gather the health of a repository.
pub fn report(store: &dyn crate::repo::store::Store, health: Option<&Health>) -> HealthReport {
    use crate::repo::store::FileKind;
    let mut r = HealthReport::default();
    match crate::snapshot::list(store) {
        Ok(all) => {
            r.snapshots = all.len() as u64;
            if let Some(s) = all.last() {
                r.last_snapshot = Some(s.record.name.clone());
                r.last_snapshot_time = Some(s.record.time.clone());
                r.last_snapshot_age_sec = Some(crate::util::unix_now() - s.record.time_sec);
                r.logical_bytes_latest = s.record.stats.logical_bytes;
                r.last_snapshot_duration_ms = Some(s.record.stats.duration_ms);
                r.last_snapshot_added_bytes = Some(s.record.stats.added_bytes);
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
        r.last_live_check = h.last_live_check();
        r.errors = h.errors();
        r.repairs = h.repairs();
        if r.failing.is_none() {
            r.failing = h.get("failing");
        }
        if let Some((t, e)) = h.db.failure() {
            r.state_failing = Some(StateFailure { since: crate::util::rfc3339(t), since_sec: t, error: e });
        }
    }
    r
}

impl Health {
    /// The schedule set on an earlier mount.
    pub fn schedule(&self) -> Option<crate::ops::schedule::Schedule> {
        self.get("schedule")
    }

    pub fn set_schedule(&self, s: Option<&crate::ops::schedule::Schedule>) {
        match s {
            Some(s) => self.set("schedule", s),
            None => self.remove("schedule"),
        }
    }

    /// Snapshots are failing with `error` (None: they work again).
    pub fn set_failing(&self, error: Option<&str>) {
        match error {
            Some(e) => self.set("failing", &e.to_string()),
            None => {
                if self.get::<String>("failing").is_some() {
                    self.remove("failing");
                }
            }
        }
    }
}
