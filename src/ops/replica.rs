//! Replicas: complete copies of a repository on other storage (a bucket,
//! another disk), kept up to date after each snapshot.
//!
//! A replica holds the same config (the same repository id and block
//! size), and the same packs and snapshot records as its primary, so any
//! copy can stand in for any other: `restore --repo REPLICA` on a new
//! machine needs nothing else.
//!
//! One sync round, without a lock on either side and without blocking the
//! primary's writers or its next snapshot:
//! 1. list the primary's records (`R0`), then its packs: every record in
//!    `R0` was committed after all its packs were written, so they are in
//!    that listing (or, if prune repacked them meanwhile, the copy of the
//!    pack that went fails and the round stops: nothing half done);
//! 2. copy the packs the replica lacks (in parallel);
//! 3. list the primary's records again (`R2`) and copy the records of
//!    `R0 ∩ R2` the replica lacks: a record still there after its packs
//!    were copied has all its objects in the replica. Records newer than
//!    `R0` wait for the next round. Packs first, records last: a replica
//!    never shows a snapshot whose data it does not hold;
//! 4. records the primary once had (`seen`) and no longer has were
//!    forgotten there: they are removed from the replica, then the packs
//!    the primary no longer has either and that no replica record uses.
//!    A record the primary never had is never removed (a primary that lost
//!    its records does not empty its replicas).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::ops::{OpError, OpResult};
use crate::repo::objstore::Objects;
use crate::repo::store::{FileKind, Store, StoreError};
use crate::util::Locked;

/// What one sync round did.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SyncReport {
    pub packs_copied: u64,
    pub bytes_copied: u64,
    pub records_copied: u64,
    pub records_removed: u64,
    pub packs_removed: u64,
    /// Records of the primary the replica still lacks after the round
    /// (committed while it ran).
    pub snapshots_behind: u64,
    pub duration_ms: u64,
}

/// How far a replica is behind its primary.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Lag {
    pub snapshots_behind: u64,
    pub packs_behind: u64,
    pub bytes_behind: u64,
}

/// The primary's records and packs the replica lacks, and their size.
pub fn lag(from: &dyn Store, to: &dyn Store) -> OpResult<Lag> {
    let have_r: HashSet<String> = to.list(FileKind::Snapshot)?.into_iter().collect();
    let have_p: HashSet<String> = to.list(FileKind::Pack)?.into_iter().collect();
    let mut lag = Lag::default();
    for r in from.list(FileKind::Snapshot)? {
        if !have_r.contains(&r) {
            lag.snapshots_behind += 1;
        }
    }
    for p in from.list(FileKind::Pack)? {
        if !have_p.contains(&p) {
            lag.packs_behind += 1;
            lag.bytes_behind += from.size(FileKind::Pack, &p)?;
        }
    }
    Ok(lag)
}

/// Make the replica's key slots the primary's. Slots are small and named
/// by their hash: a slot of the same name is the same slot.
fn sync_keys(from: &dyn Store, to: &dyn Store) -> OpResult<()> {
    let want: HashSet<String> = from.list(FileKind::Key)?.into_iter().collect();
    let have: HashSet<String> = to.list(FileKind::Key)?.into_iter().collect();
    for k in want.difference(&have) {
        to.put(FileKind::Key, k, &from.get(FileKind::Key, k)?)?;
    }
    if !want.is_empty() {
        for k in have.difference(&want) {
            to.delete(FileKind::Key, k)?;
        }
    }
    Ok(())
}

/// Live counters of a round (for status and progress bars).
#[derive(Debug, Default)]
pub struct SyncProgress {
    pub bytes_total: AtomicU64,
    pub bytes_done: AtomicU64,
}

/// One sync round from `from` to `to` (see the module docs). `seen` holds
/// the ids of the primary's records seen so far (kept by the caller; an
/// empty set only means nothing is removed from the replica this time).
pub fn sync(
    from: &Arc<dyn Store>,
    to: &Arc<dyn Store>,
    seen: &mut HashSet<String>,
    jobs: usize,
    progress: &SyncProgress,
) -> OpResult<SyncReport> {
    let t0 = Instant::now();
    let mut report = SyncReport::default();
    // 0. key slots (an encrypted repository's): what the primary has, and
    // no more (a slot removed there is revoked here too)
    sync_keys(&**from, &**to)?;
    // 1. records, then packs
    let r0: HashSet<String> = from.list(FileKind::Snapshot)?.into_iter().collect();
    let packs = from.list(FileKind::Pack)?;
    let have: HashSet<String> = to.list(FileKind::Pack)?.into_iter().collect();
    // 2. the packs the replica lacks
    let todo: Vec<String> = packs.iter().filter(|p| !have.contains(*p)).cloned().collect();
    let mut sizes = Vec::with_capacity(todo.len());
    for p in &todo {
        sizes.push(from.size(FileKind::Pack, p).map_err(|e| gone(e, p))?);
    }
    progress.bytes_total.store(sizes.iter().sum(), Ordering::Relaxed);
    progress.bytes_done.store(0, Ordering::Relaxed);
    let next = Mutex::new(todo.iter());
    let failed: Mutex<Option<OpError>> = Mutex::new(None);
    let copied = AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..jobs.clamp(1, 32).min(todo.len().max(1)) {
            s.spawn(|| loop {
                if failed.locked().is_some() {
                    return;
                }
                let Some(p) = next.locked().next() else { return };
                let r = from.get(FileKind::Pack, p).map_err(|e| gone(e, p)).and_then(|data| {
                    // the pack's name is the hash of its bytes: a damaged
                    // primary copy is not spread
                    if !crate::repo::objects::ObjectId::names(p, &data) {
                        damaged!("pack {p} is damaged on the primary (its bytes do not match its name): not copied");
                    }
                    to.put(FileKind::Pack, p, &data)?;
                    progress.bytes_done.fetch_add(data.len() as u64, Ordering::Relaxed);
                    copied.fetch_add(data.len() as u64, Ordering::Relaxed);
                    Ok(())
                });
                if let Err(e) = r {
                    *failed.locked() = Some(e);
                    return;
                }
            });
        }
    });
    if let Some(e) = failed.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
    }
    report.packs_copied = todo.len() as u64;
    report.bytes_copied = copied.load(Ordering::Relaxed);
    // 3. records that were there before and still are
    let r2: HashSet<String> = from.list(FileKind::Snapshot)?.into_iter().collect();
    let have_r: HashSet<String> = to.list(FileKind::Snapshot)?.into_iter().collect();
    for r in r0.intersection(&r2) {
        if have_r.contains(r) {
            continue;
        }
        let b = from.get(FileKind::Snapshot, r)?;
        if crate::repo::objects::ObjectId::of(&b).hex() != *r {
            log::error!("snapshot record {r} is damaged on the primary: not copied to the replica");
            continue;
        }
        to.put(FileKind::Snapshot, r, &b)?;
        report.records_copied += 1;
    }
    report.snapshots_behind = r2.iter().filter(|r| !have_r.contains(*r) && !r0.contains(*r)).count() as u64;
    // 4. what the primary forgot
    let forgotten: Vec<&String> = have_r.iter().filter(|r| seen.contains(*r) && !r2.contains(*r)).collect();
    seen.extend(r2.iter().cloned());
    if !forgotten.is_empty() {
        for r in &forgotten {
            to.delete(FileKind::Snapshot, r)?;
            report.records_removed += 1;
            seen.remove(*r);
        }
        report.packs_removed = drop_unused_packs(from, to)?;
    }
    report.duration_ms = t0.elapsed().as_millis() as u64;
    Ok(report)
}

fn gone(e: StoreError, p: &str) -> OpError {
    match e {
        StoreError::NotFound { .. } => OpError::Refused(format!(
            "pack {p} went away on the primary while being copied (prune?): the next round goes on"
        )),
        e => e.into(),
    }
}

/// Delete the replica's packs the primary no longer has and that no
/// replica record uses. Returns how many.
fn drop_unused_packs(from: &Arc<dyn Store>, to: &Arc<dyn Store>) -> OpResult<u64> {
    let primary: HashSet<String> = from.list(FileKind::Pack)?.into_iter().collect();
    let candidates: Vec<String> = to.list(FileKind::Pack)?.into_iter().filter(|p| !primary.contains(p)).collect();
    if candidates.is_empty() {
        return Ok(0);
    }
    // an index in memory over the replica's packs
    let objects = Objects::open(to.clone(), None)?;
    let snaps = crate::snapshot::list(&**to)?;
    let used = crate::ops::maint::mark(&objects, &snaps, &Default::default())?;
    let mut n = 0;
    for p in candidates {
        let entries = objects.pack_entries(&p)?;
        if entries.iter().all(|e| !used.contains(&e.id)) {
            to.delete(FileKind::Pack, &p)?;
            n += 1;
        }
    }
    Ok(n)
}

/// What `status` says about one replica.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ReplicaStatus {
    pub url: String,
    /// How far behind it was after the last round (or the last check).
    pub lag: Lag,
    pub last_success: Option<String>,
    pub last_success_sec: Option<i64>,
    pub last_error: Option<String>,
    pub last_error_time: Option<String>,
    pub last_sync: Option<SyncReport>,
    /// A round is running now: bytes done of bytes to copy.
    #[serde(default)]
    pub syncing: Option<(u64, u64)>,
    /// Every snapshot committed before this time (µs) is on the replica:
    /// the start of the last successful round (which copies every record
    /// it listed at its start), this session. The daemon notes a commit
    /// after the record is written, so a round that began between the two
    /// counts it as not copied yet: the age shown is never short, and the
    /// round the commit wakes puts it right.
    #[serde(default)]
    pub copied_before_us: Option<i64>,
    /// The oldest change not yet on the replica (RFC 3339) and its age:
    /// in a snapshot committed since `copied_before_us`, or not in any
    /// snapshot yet (filled in by the daemon, which knows both).
    #[serde(default)]
    pub oldest_change_not_copied: Option<String>,
    #[serde(default)]
    pub oldest_change_not_copied_age_sec: Option<u64>,
}

struct Replica {
    url: String,
    status: Mutex<ReplicaStatus>,
    /// Records seen on the primary (kept in a file beside the list).
    seen: Mutex<HashSet<String>>,
    /// One round at a time.
    busy: Mutex<()>,
    progress: SyncProgress,
}

/// The replicas of a mounted repository: the list (kept in the local
/// directory of the repository, `replicas`, one URL a line), what each
/// round found, and the background rounds (after each snapshot, and every
/// minute to catch up after a failure).
pub struct Replicas {
    dir: std::path::PathBuf,
    primary: Arc<dyn Store>,
    config: crate::repo::Config,
    list: Mutex<Vec<Arc<Replica>>>,
    wake: (Mutex<bool>, std::sync::Condvar),
    on_error: Box<dyn Fn(&str) + Send + Sync>,
}

/// Open the repository at `url` as a copy to heal from: it must be the
/// repository `id` (same ids and keys), read with `keys`.
pub fn source(
    url: &str,
    id: &str,
    keys: Option<Arc<crate::repo::crypto::Keys>>,
) -> OpResult<crate::ops::repair::Source> {
    let loc = crate::repo::Location::parse(url)?;
    let repo = crate::repo::Repo::open_at(&loc, None)?;
    if repo.config.id != id {
        refused!("{url} holds another repository (id {}), not a copy of this one", repo.config.id);
    }
    let store: Arc<dyn Store> = match keys {
        Some(k) => Arc::new(crate::repo::store::WithKeys::new(repo.store(), k)),
        None => repo.store(),
    };
    Ok(crate::ops::repair::Source { name: loc.to_string(), store })
}

/// The copies a reader of `repo` heals from when it hits damage (restore,
/// browse): the replicas kept with the repository, then each of `from`
/// (other copies with the same id). Opened only when asked (at the first
/// damage); one that cannot be opened is skipped with a warning.
pub fn heal_sources(
    repo: &crate::repo::Repo,
    from: &[String],
) -> impl Fn() -> Vec<crate::ops::repair::Source> + Send + Sync {
    let (dir, store, config, from) = (repo.path.clone(), repo.store(), repo.config.clone(), from.to_vec());
    move || {
        let keys = store.keys();
        let mut sources = Replicas::open(&dir, store.clone(), config.clone(), Box::new(|_| {})).sources();
        for url in &from {
            match source(url, &config.id, keys.clone()) {
                Ok(s) => sources.push(s),
                Err(e) => log::warn!("{url} cannot serve a repair: {}", crate::util::with_causes(&e)),
            }
        }
        sources
    }
}

/// How often replicas are brought up to date without a snapshot (a round
/// that failed is tried again then).
pub const RETRY: std::time::Duration = std::time::Duration::from_secs(60);

fn seen_file(dir: &std::path::Path, url: &str) -> std::path::PathBuf {
    dir.join(format!("replica-seen-{}", &blake3::hash(url.as_bytes()).to_hex()[..16]))
}

impl Replicas {
    pub fn open(
        dir: &std::path::Path,
        primary: Arc<dyn Store>,
        config: crate::repo::Config,
        on_error: Box<dyn Fn(&str) + Send + Sync>,
    ) -> Replicas {
        let r = Replicas {
            dir: dir.to_path_buf(),
            primary,
            config,
            list: Mutex::new(Vec::new()),
            wake: (Mutex::new(false), std::sync::Condvar::new()),
            on_error,
        };
        let urls = std::fs::read_to_string(dir.join("replicas")).unwrap_or_default();
        for u in urls.lines().map(str::trim).filter(|u| !u.is_empty()) {
            r.push(u);
        }
        r
    }

    fn push(&self, url: &str) {
        let seen: HashSet<String> = std::fs::read_to_string(seen_file(&self.dir, url))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.len() == 64)
            .map(str::to_string)
            .collect();
        let status = ReplicaStatus { url: url.to_string(), ..Default::default() };
        self.list.locked().push(Arc::new(Replica {
            url: url.to_string(),
            status: Mutex::new(status),
            seen: Mutex::new(seen),
            busy: Mutex::new(()),
            progress: SyncProgress::default(),
        }));
    }

    fn save(&self) -> OpResult<()> {
        let urls: Vec<String> = self.list.locked().iter().map(|r| r.url.clone()).collect();
        let mut text = urls.join("\n");
        text.push('\n');
        crate::repo::write_durably(&self.dir, "replicas", text.as_bytes())?;
        Ok(())
    }

    /// Add a replica at `url` (a path or an s3: URL): made a replica of
    /// this repository (or found to be one already); its history is
    /// copied by the rounds that follow.
    pub fn add(&self, url: &str) -> OpResult<String> {
        let loc = crate::repo::Location::parse_canonical(url)?;
        let url = loc.to_string();
        if self.list.locked().iter().any(|r| r.url == url) {
            refused!("{url} is a replica already");
        }
        crate::repo::Repo::init_replica(&loc, &self.config)?;
        self.push(&url);
        self.save()?;
        self.wake();
        Ok(url)
    }

    pub fn remove(&self, url: &str) -> OpResult<()> {
        let loc = crate::repo::Location::parse_canonical(url)?.to_string();
        let mut l = self.list.locked();
        let before = l.len();
        l.retain(|r| r.url != loc && r.url != url);
        if l.len() == before {
            refused!("{url} is not a replica of this repository");
        }
        drop(l);
        let _ = std::fs::remove_file(seen_file(&self.dir, &loc));
        self.save()
    }

    pub fn is_empty(&self) -> bool {
        self.list.locked().is_empty()
    }

    pub fn statuses(&self) -> Vec<ReplicaStatus> {
        self.list
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|r| {
                let mut s = r.status.locked().clone();
                if r.busy.try_lock().is_err() {
                    s.syncing = Some((
                        r.progress.bytes_done.load(Ordering::Relaxed),
                        r.progress.bytes_total.load(Ordering::Relaxed),
                    ));
                }
                s
            })
            .collect()
    }

    /// A snapshot of `bytes` was committed on the primary: every replica is
    /// behind by it until its next round says otherwise.
    pub fn snapshot_committed(&self, bytes: u64) {
        for r in self.list.locked().iter() {
            let mut st = r.status.locked();
            st.lag.snapshots_behind += 1;
            st.lag.packs_behind += 1;
            st.lag.bytes_behind += bytes;
        }
        self.wake();
    }

    /// Start a round soon (after a snapshot, a forget, an add).
    pub fn wake(&self) {
        *self.wake.0.locked() = true;
        self.wake.1.notify_all();
    }

    /// A round for every replica now, waiting for them; their statuses.
    /// The replicas as copies to heal from (`verify --repair`): those that
    /// open and hold this repository, with its keys.
    pub fn sources(&self) -> Vec<crate::ops::repair::Source> {
        let urls: Vec<String> = self.list.locked().iter().map(|r| r.url.clone()).collect();
        urls.into_iter()
            .filter_map(|url| match source(&url, &self.config.id, self.primary.keys()) {
                Ok(s) => Some(s),
                Err(e) => {
                    log::warn!("replica {url} cannot serve a repair: {}", crate::util::with_causes(&e));
                    None
                }
            })
            .collect()
    }

    pub fn sync_all(&self) -> Vec<ReplicaStatus> {
        let all: Vec<Arc<Replica>> = self.list.locked().clone();
        for r in &all {
            self.round(r);
        }
        self.statuses()
    }

    fn round(&self, r: &Replica) {
        let _one = r.busy.locked();
        let started = crate::util::unix_now_us();
        let result = (|| -> OpResult<SyncReport> {
            let loc = crate::repo::Location::parse(&r.url)?;
            let mut repo = crate::repo::Repo::open_at(&loc, None)?;
            if repo.config.id != self.config.id {
                refused!("{} now holds another repository (id {}): not synced", r.url, repo.config.id);
            }
            // a replica made before the primary's format upgrade follows it
            if repo.config.format < self.config.format {
                repo.rewrite_config(self.config.clone())?;
            }
            let to = repo.store();
            let mut seen = r.seen.locked().clone();
            let rep = sync(&self.primary, &to, &mut seen, 4, &r.progress)?;
            let mut text: Vec<&str> = seen.iter().map(String::as_str).collect();
            text.sort_unstable();
            crate::repo::write_durably(
                &self.dir,
                seen_file(&self.dir, &r.url).file_name().and_then(|n| n.to_str()).unwrap_or("replica-seen"),
                text.join("\n").as_bytes(),
            )?;
            *r.seen.locked() = seen;
            let l = lag(&*self.primary, &*to)?;
            r.status.locked().lag = l;
            Ok(rep)
        })();
        let now = crate::util::unix_now();
        let mut st = r.status.locked();
        match result {
            Ok(rep) => {
                if rep.packs_copied + rep.records_copied + rep.records_removed > 0 {
                    log::info!(
                        "replica {}: {} packs ({}) and {} snapshots copied, {} forgotten, in {} ms",
                        r.url,
                        rep.packs_copied,
                        crate::util::human_bytes(rep.bytes_copied),
                        rep.records_copied,
                        rep.records_removed,
                        rep.duration_ms
                    );
                }
                st.last_success = Some(crate::util::rfc3339(now));
                st.last_success_sec = Some(now);
                st.copied_before_us = Some(started);
                st.last_sync = Some(rep);
            }
            Err(e) => {
                let msg = crate::util::with_causes(&e);
                log::error!("REPLICA {} BEHIND: {msg}", r.url);
                st.last_error = Some(msg.clone());
                st.last_error_time = Some(crate::util::rfc3339(now));
                drop(st);
                (self.on_error)(&format!("{}: {msg}", r.url));
            }
        }
    }

    /// The background rounds: woken after each snapshot, and every
    /// `RETRY` anyway. Runs until the process ends.
    pub fn run(self: Arc<Self>) {
        loop {
            {
                let mut woken = self.wake.0.locked();
                if !*woken {
                    woken = self.wake.1.wait_timeout(woken, RETRY).unwrap_or_else(|e| e.into_inner()).0;
                }
                *woken = false;
            }
            self.sync_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::store::LocalStore;

    fn stores() -> (tempfile::TempDir, Arc<dyn Store>, Arc<dyn Store>) {
        let t = tempfile::tempdir().unwrap();
        for d in ["a", "b"] {
            std::fs::create_dir_all(t.path().join(d)).unwrap();
        }
        let a: Arc<dyn Store> = Arc::new(LocalStore::new(&t.path().join("a")));
        let b: Arc<dyn Store> = Arc::new(LocalStore::new(&t.path().join("b")));
        (t, a, b)
    }

    fn hexname(data: &[u8]) -> String {
        crate::repo::objects::ObjectId::of(data).hex()
    }

    #[test]
    fn packs_first_records_last_and_forgotten_records_follow() {
        let (_t, a, b) = stores();
        let p1 = b"pack one".to_vec();
        a.put(FileKind::Pack, &hexname(&p1), &p1).unwrap();
        let r1 = b"{\"record\":1}".to_vec();
        a.put(FileKind::Snapshot, &hexname(&r1), &r1).unwrap();
        let mut seen = HashSet::new();
        let p = SyncProgress::default();
        let r = sync(&a, &b, &mut seen, 4, &p).unwrap();
        assert_eq!((r.packs_copied, r.records_copied, r.bytes_copied), (1, 1, p1.len() as u64));
        assert_eq!(lag(&*a, &*b).unwrap(), Lag::default());
        // nothing to do the second time
        let r = sync(&a, &b, &mut seen, 4, &p).unwrap();
        assert_eq!((r.packs_copied, r.records_copied), (0, 0));
        // a new snapshot: behind until the next round
        let p2 = b"pack two".to_vec();
        a.put(FileKind::Pack, &hexname(&p2), &p2).unwrap();
        let r2 = b"{\"record\":2}".to_vec();
        a.put(FileKind::Snapshot, &hexname(&r2), &r2).unwrap();
        let l = lag(&*a, &*b).unwrap();
        assert_eq!((l.snapshots_behind, l.packs_behind, l.bytes_behind), (1, 1, p2.len() as u64));
        sync(&a, &b, &mut seen, 1, &p).unwrap();
        assert_eq!(b.list(FileKind::Snapshot).unwrap().len(), 2);
        // forgotten on the primary: forgotten on the replica
        a.delete(FileKind::Snapshot, &hexname(&r1)).unwrap();
        let r = sync(&a, &b, &mut seen, 1, &p).unwrap();
        assert_eq!(r.records_removed, 1);
        assert_eq!(b.list(FileKind::Snapshot).unwrap(), vec![hexname(&r2)]);
        // a record the primary never had stays
        let other = b"{\"record\":3}".to_vec();
        b.put(FileKind::Snapshot, &hexname(&other), &other).unwrap();
        let mut fresh = HashSet::new();
        sync(&a, &b, &mut fresh, 1, &p).unwrap();
        assert_eq!(b.list(FileKind::Snapshot).unwrap().len(), 2);
    }

    #[test]
    fn a_damaged_primary_pack_is_not_spread_and_stops_the_round_before_records() {
        let (_t, a, b) = stores();
        let good = b"good".to_vec();
        a.put(FileKind::Pack, &hexname(b"something else"), &good).unwrap();
        let r1 = b"{\"record\":1}".to_vec();
        a.put(FileKind::Snapshot, &hexname(&r1), &r1).unwrap();
        let e = sync(&a, &b, &mut HashSet::new(), 2, &SyncProgress::default()).unwrap_err();
        assert!(e.to_string().contains("damaged on the primary"), "{e}");
        assert!(b.list(FileKind::Snapshot).unwrap().is_empty());
        assert!(b.list(FileKind::Pack).unwrap().is_empty());
    }
}
