//! Snapshot records: the commit points (`snapshots/<id>`, the blake3 of
//! the record's JSON), their names, checks, listing and lookup.

use super::*;
use crate::repo::objects::{self, ObjectId, SnapshotId, TreeId};
use crate::repo::store::{FileKind, Store, StoreError};
use serde::{Deserialize, Serialize};

/// What a snapshot cost and holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotStats {
    pub files: u64,
    pub dirs: u64,
    pub others: u64,
    /// Sum of the sizes of all files in the snapshot.
    pub logical_bytes: u64,
    /// Bytes read from the backing files to take it.
    pub read_bytes: u64,
    /// Bytes added to the repository (compressed, in packs).
    pub added_bytes: u64,
    /// The same before compression.
    pub added_raw_bytes: u64,
    /// Of that, file data (blobs) and metadata (block lists, trees, tables).
    #[serde(default)]
    pub added_data_bytes: u64,
    #[serde(default)]
    pub added_meta_bytes: u64,
    pub added_objects: u64,
    /// Directories listed and files whose block list was rebuilt.
    pub dirs_walked: u64,
    pub files_read: u64,
    /// Entries of walked directories taken from the previous snapshot as
    /// they were (no record: not even a stat).
    #[serde(default)]
    pub entries_reused: u64,
    pub duration_ms: u64,
    /// How long writers were held off (waiting for in-flight changes, and
    /// sealing the epoch), in microseconds.
    #[serde(default)]
    pub paused_us: u64,
}

/// The commit point of a snapshot, stored as `snapshots/<id>`, where the id
/// is the blake3 hash of this JSON.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotRecord {
    pub format: u32,
    pub name: String,
    /// RFC 3339, and seconds/nanoseconds since the epoch.
    pub time: String,
    pub time_sec: i64,
    pub time_nsec: u32,
    /// A tree with one entry, ".": the snapshot root with its metadata.
    pub tree: TreeId,
    /// The link table object.
    pub links: ObjectId,
    /// The snapshot this one was taken relative to, if incremental.
    pub parent: Option<SnapshotId>,
    pub full: bool,
    pub source: String,
    pub host: String,
    pub block_size: u64,
    pub stats: SnapshotStats,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub id: SnapshotId,
    #[serde(flatten)]
    pub record: SnapshotRecord,
    /// Set for a damaged record (only [`list_all`] gives those): what is
    /// wrong. The record is then what could be read of it, perhaps nothing
    /// but defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub damaged: Option<String>,
}

impl SnapshotInfo {
    pub fn root_tree(&self) -> SnapResult<TreeId> {
        Ok(self.record.tree)
    }
}

/// `2026-11-24T10.15.00Z`: sorts by time, needs no quoting.
pub fn default_name(sec: i64) -> String {
    crate::util::rfc3339(sec).replace(':', ".")
}

/// `base`, or `base-1`, `base-2`, ... : the first no snapshot in `all` has.
pub fn unique_name(all: &[SnapshotInfo], base: &str) -> String {
    let mut n = base.to_string();
    let mut k = 1;
    while all.iter().any(|s| s.record.name == n) {
        n = format!("{base}-{k}");
        k += 1;
    }
    n
}

pub fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 100
        && !n.starts_with('.')
        && !n.starts_with('-')
        && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// What is wrong with a record's fields, if anything: the name rules,
/// a block size a repository may have, nanoseconds.
pub fn check_record(r: &SnapshotRecord) -> Result<(), String> {
    if !valid_name(&r.name) {
        return Err(format!("its name {:?} is not a valid snapshot name", r.name));
    }
    if !objects::valid_block_size(r.block_size) {
        return Err(format!("its block size {} is not one a repository can have", r.block_size));
    }
    if r.time_nsec >= 1_000_000_000 {
        return Err("its time is malformed".into());
    }
    Ok(())
}

/// Read and check one record: it must hash to its name, parse, be of a
/// format we know (a newer one is an error of its own) and pass
/// [`check_record`]. `Ok(Err(..))`: damaged, with what could be read.
fn read_record(store: &dyn Store, id: &SnapshotId) -> SnapResult<Result<SnapshotInfo, SnapshotInfo>> {
    let stored = store.get(FileKind::Snapshot, id)?;
    // In an encrypted repository a record is sealed: opened, it is the JSON.
    let opened = match store.keys() {
        Some(k) => k.open_record(&stored, id).map_err(|e| e.to_string()),
        None if stored.starts_with(crate::repo::crypto::RECORD_MAGIC) => {
            Err("it is encrypted, and this repository is not".to_string())
        }
        None => Ok(stored.clone()),
    };
    // (what could be read of it is shown even when it does not match its name)
    let (bytes, opened) = match opened {
        Ok(b) if SnapshotId::of_record(&stored) != *id => (b, Err("its contents do not match its name".to_string())),
        Ok(b) => (b, Ok(())),
        Err(e) => (Vec::new(), Err(e)),
    };
    let bytes = &bytes[..];
    let v: Option<serde_json::Value> = serde_json::from_slice(bytes).ok();
    let damaged = |problem: String| {
        let mut record: SnapshotRecord = v
            .clone()
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_else(|| SnapshotRecord::unreadable(v.as_ref()));
        if !valid_name(&record.name) {
            record.name = String::new();
        }
        Ok(Err(SnapshotInfo { id: id.clone(), record, damaged: Some(problem) }))
    };
    if let Err(problem) = &opened {
        return damaged(problem.clone());
    }
    let Some(v) = v.clone() else { return damaged("it is not JSON".into()) };
    let found = v.get("format").and_then(|f| f.as_u64()).unwrap_or(0);
    if found > RECORD_FORMAT as u64 {
        return Err(SnapError::NewerRecord { id: id.to_string(), found: found.min(u32::MAX as u64) as u32 });
    }
    let record: SnapshotRecord = match serde_json::from_value(v) {
        Ok(r) => r,
        Err(e) => return damaged(format!("it cannot be parsed: {e}")),
    };
    if let Err(problem) = check_record(&record) {
        return damaged(problem);
    }
    Ok(Ok(SnapshotInfo { id: id.clone(), record, damaged: None }))
}

impl SnapshotRecord {
    /// What a damaged record shows: its name and time if those parse.
    fn unreadable(v: Option<&serde_json::Value>) -> SnapshotRecord {
        let s = |k: &str| v.and_then(|v| v.get(k)).and_then(|x| x.as_str()).unwrap_or_default().to_string();
        SnapshotRecord {
            format: RECORD_FORMAT,
            name: s("name"),
            time: s("time"),
            time_sec: v.and_then(|v| v.get("time_sec")).and_then(|x| x.as_i64()).unwrap_or(0),
            time_nsec: 0,
            tree: TreeId::from_dir(ObjectId::ZERO),
            links: ObjectId::ZERO,
            parent: None,
            full: false,
            source: String::new(),
            host: String::new(),
            block_size: 0,
            stats: SnapshotStats::default(),
        }
    }
}

/// One record, by id, read and checked as [`list_all`] does.
pub fn read_one(store: &dyn Store, id: &SnapshotId) -> SnapResult<SnapshotInfo> {
    read_record(store, id).map(|r| r.unwrap_or_else(|d| d))
}

fn sort_infos(out: &mut [SnapshotInfo]) {
    out.sort_by(|a, b| {
        (a.record.time_sec, a.record.time_nsec, &a.record.name, &a.id).cmp(&(
            b.record.time_sec,
            b.record.time_nsec,
            &b.record.name,
            &b.id,
        ))
    });
}

/// Every snapshot record in the repository, oldest first, damaged ones
/// included (`damaged` says what is wrong; a record forgotten while we
/// listed is left out).
pub fn list_all(store: &dyn Store) -> SnapResult<Vec<SnapshotInfo>> {
    let mut out = Vec::new();
    for name in store.list(FileKind::Snapshot)? {
        let Some(id) = SnapshotId::parse(&name) else {
            log::warn!("snapshots/{name:?} is not named as a snapshot record is: ignored");
            continue;
        };
        match read_record(store, &id) {
            Ok(Ok(s)) | Ok(Err(s)) => out.push(s),
            Err(SnapError::Store(StoreError::NotFound { .. })) => {}
            Err(e) => return Err(e),
        }
    }
    sort_infos(&mut out);
    Ok(out)
}

/// Every sound snapshot in the repository, oldest first. A damaged record
/// is left out (and logged): [`list_all`] shows it.
pub fn list(store: &dyn Store) -> SnapResult<Vec<SnapshotInfo>> {
    let mut out = list_all(store)?;
    out.retain(|s| match &s.damaged {
        Some(problem) => {
            log::error!("snapshot record {} is damaged ({problem}): skipped", s.id);
            false
        }
        None => true,
    });
    Ok(out)
}

/// Whose snapshots these are: a host and the directory it protects. In a
/// repository several hosts share (an object store), a daemon sees, names,
/// continues (incremental) and keeps (retention) its own lineage only; a
/// repository of its own (local, locked by one daemon) is all one lineage,
/// whatever the host was called or where the directory was mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lineage {
    pub host: String,
    pub source: String,
}

impl Lineage {
    pub fn holds(&self, r: &SnapshotRecord) -> bool {
        r.host == self.host && r.source == self.source
    }
}

/// The snapshots of `lineage` (all of them for None).
pub fn of_lineage(mut all: Vec<SnapshotInfo>, lineage: Option<&Lineage>) -> Vec<SnapshotInfo> {
    if let Some(l) = lineage {
        all.retain(|s| l.holds(&s.record));
    }
    all
}

/// A host name as `--host` takes it: 1 to 64 letters, digits, `.`, `-`, `_`.
pub fn parse_host(s: &str) -> Result<String, String> {
    let ok = !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!("{s:?} is not a host name (1-64 letters, digits, '.', '-', '_')"))
    }
}

/// Find a snapshot by name, full id or unique id prefix (4+ characters).
pub fn find<'a>(all: &'a [SnapshotInfo], key: &str) -> SnapResult<&'a SnapshotInfo> {
    if let Some(s) = all.iter().find(|s| s.id.as_str() == key) {
        return Ok(s);
    }
    // (one name can be in several hosts' lineages of a shared repository)
    let named: Vec<_> = all.iter().filter(|s| s.record.name == key).collect();
    match named.as_slice() {
        [one] => return Ok(one),
        [] => {}
        many => {
            return Err(SnapError::Ambiguous {
                name: key.to_string(),
                hosts: many
                    .iter()
                    .map(|s| format!("{}:{} ({})", s.record.host, s.record.source, &s.id[..12]))
                    .collect(),
            })
        }
    }
    let matches: Vec<_> = all.iter().filter(|s| key.len() >= 4 && s.id.starts_with(key)).collect();
    match matches.as_slice() {
        [one] => Ok(one),
        _ => Err(SnapError::Unknown(key.to_string())),
    }
}

/// Write a record; the commit point.
pub fn commit(store: &dyn Store, record: &SnapshotRecord) -> SnapResult<SnapshotInfo> {
    let mut bytes = serde_json::to_vec_pretty(record).expect("record serializes");
    if let Some(k) = store.keys() {
        bytes = k.seal_record(&bytes);
    }
    let id = SnapshotId::of_record(&bytes);
    store.put(FileKind::Snapshot, &id, &bytes)?;
    Ok(SnapshotInfo { id, record: record.clone(), damaged: None })
}
