//! Taking a snapshot: the whole step, from its name to the commit point.
//!
//! 1. name it (given and checked, or the time, made unique);
//! 2. wait for the mount-time scan; decide incremental (the dirty set is
//!    relative to the latest snapshot and the scan did not fail) or full;
//! 3. the instant: pause writers, seal the epoch, start copy-before-write,
//!    let writers go (microseconds);
//! 4. walk and store (the `Builder`), the link table, flush the packs;
//! 5. write the record: the commit point; then the tracker gives the sealed
//!    changes up. On failure nothing is committed and the sealed changes go
//!    back into the dirty set.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::capture::Capture;
use super::{Builder, LinkTable, Progress, SnapError, SnapResult, SnapshotInfo, SnapshotRecord};
use crate::live::LiveFs;
use crate::repo::objects::ObjKind;
use crate::repo::objstore::Objects;
use crate::tracker::{Tracker, TrackerError};
use crate::util;
use crate::util::Locked;

/// What a snapshot is taken of and with.
pub struct Take<'a> {
    pub objects: &'a Arc<Objects>,
    pub live: &'a LiveFs,
    pub tracker: &'a Tracker,
    pub block_size: u64,
    /// The protected directory and host, as recorded.
    pub source: String,
    pub host: String,
    /// In a shared repository: the snapshots of this host and directory
    /// are the ones it continues and names apart from.
    pub lineage: Option<&'a super::Lineage>,
    /// The mount-time scan failed: the tracker may have missed changes.
    pub scan_failed: &'a AtomicBool,
    /// Where clients find the progress of the snapshot being taken.
    pub progress: &'a Mutex<Option<Arc<Progress>>>,
}

/// The hard-link table of snapshot `s` (empty if it has none).
pub fn links_of(objects: &Objects, s: &SnapshotInfo) -> SnapResult<LinkTable> {
    Ok(super::decode_links(&objects.get(&s.record.links, ObjKind::Meta)?).unwrap_or_default())
}

impl Take<'_> {
    /// Take one (the caller holds the snapshot lock). Returns the committed
    /// snapshot, and whether the tracker could save that it moved on.
    pub fn run(&self, name: Option<String>, full: bool) -> SnapResult<(SnapshotInfo, Result<(), TrackerError>)> {
        let mut tries = 0;
        loop {
            match self.run_once(name.clone(), full) {
                Err(SnapError::Condemned(n)) if tries < 2 => {
                    tries += 1;
                    log::warn!("a prune elsewhere condemned {n} pack(s) this snapshot used: taking it again");
                }
                r => return r,
            }
        }
    }

    /// The snapshots so far; in a repository other hosts write, also learn
    /// the packs they wrote (to reuse their objects) and the ones a prune
    /// deleted, and reuse nothing from a pack a deletion plan names (see
    /// `repo::plans`). The three listings are independent: on an object
    /// store they are asked at once (one round trip, not three).
    fn sync_and_list(&self) -> SnapResult<Vec<SnapshotInfo>> {
        let store = self.objects.store();
        if !store.shared() {
            return super::list(&**store);
        }
        let known = self.objects.known_packs()?;
        let (plans, packs, listed) = std::thread::scope(|s| {
            let plans = s.spawn(|| crate::repo::plans::read_all(&**store));
            let packs = s.spawn(|| store.list(crate::repo::store::FileKind::Pack));
            let listed = super::list(&**store);
            (plans.join(), packs.join(), listed)
        });
        let joined = |what: &str| SnapError::Panicked(format!("listing the {what} panicked"));
        let plans = plans.map_err(|_| joined("plans"))??;
        self.objects.set_excluded(crate::repo::plans::condemned(&plans));
        // (indexed after the plans are known: a copy in a condemned pack loses)
        let (added, gone) = self.objects.refresh_listed(known, packs.map_err(|_| joined("packs"))??)?;
        let gone = gone.len();
        if added + gone > 0 {
            log::info!("repository: {added} packs of other hosts indexed, {gone} deleted packs forgotten");
        }
        listed
    }

    /// Before the commit: a plan written meanwhile must name no pack this
    /// snapshot reused or wrote.
    fn check_condemned(&self) -> SnapResult<()> {
        let store = self.objects.store();
        if !store.shared() {
            return Ok(());
        }
        let condemned = crate::repo::plans::condemned(&crate::repo::plans::read_all(&**store)?);
        let hit = self.objects.used_packs().iter().filter(|p| condemned.contains(*p)).count();
        if hit > 0 {
            return Err(SnapError::Condemned(hit));
        }
        Ok(())
    }

    fn run_once(&self, name: Option<String>, full: bool) -> SnapResult<(SnapshotInfo, Result<(), TrackerError>)> {
        let store = self.objects.store().clone();
        let all = super::of_lineage(self.sync_and_list()?, self.lineage);
        let name = match name {
            Some(n) => {
                if !super::valid_name(&n) {
                    return Err(SnapError::BadName(n));
                }
                if all.iter().any(|s| s.record.name == n) {
                    return Err(SnapError::Duplicate(n));
                }
                n
            }
            None => super::unique_name(&all, &super::default_name(util::unix_now())),
        };
        // The scan for changes made while unmounted must be complete.
        while self.tracker.scan_pending() && !self.scan_failed.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let latest = all.last();
        let incremental = !full
            && !self.scan_failed.load(Ordering::SeqCst)
            && latest.is_some()
            && self.tracker.base_snapshot().as_deref() == latest.map(|s| s.id.as_str());
        let prev_top = match latest {
            Some(l) => Some(l.root_tree()?),
            None => None,
        };
        let links_prev = match latest {
            Some(l) => links_of(self.objects, l)?,
            None => Default::default(),
        };
        let progress = Arc::new(Progress::default());
        let t0 = Instant::now();
        self.objects.take_stats();
        self.objects.track_packs(store.shared());
        // The instant of the snapshot: hold writers only to seal the epoch and
        // start copy-before-write.
        let writers = self.live.pause_writers();
        let sealed = self.tracker.seal();
        let capture = Arc::new(Capture::new(
            self.objects.clone(),
            self.block_size,
            incremental.then(|| sealed.clone()),
            incremental && super::links_force_walks(&links_prev, &sealed),
        ));
        self.live.begin_preserving(capture.clone());
        drop(writers);
        let paused = t0.elapsed();
        // sealed: from now on `progress` answers
        *self.progress.locked() = Some(progress.clone());
        // (a panic is an error here too: the capture must end, the epoch unseal)
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> SnapResult<SnapshotInfo> {
            let mut b =
                Builder::new(self.objects, self.block_size, if incremental { Some(&sealed) } else { None }, links_prev);
            b.set_progress(progress.clone());
            b.set_capture(&capture);
            let t_walk = Instant::now();
            let top = b.build(self.live.root_fd(), prev_top)?;
            if let Some(e) = capture.error() {
                return Err(SnapError::CopyBeforeWrite(e));
            }
            let (links, _) = self.objects.put(ObjKind::Meta, &super::encode_links(b.links()))?;
            let t_flush = Instant::now();
            if store.shared() {
                // The plans are read again while the last packs are written
                // (a round trip less): those packs are new, and no prune
                // condemns a pack younger than its grace.
                let (flushed, checked) = std::thread::scope(|s| {
                    let check = s.spawn(|| self.check_condemned());
                    (self.objects.flush(), check.join())
                });
                flushed?;
                checked.map_err(|_| SnapError::Panicked("reading the deletion plans panicked".into()))??;
            } else {
                self.objects.flush()?;
            }
            log::info!(
                "snapshot phases: walk {} ms, pack write {} ms",
                (t_flush - t_walk).as_millis(),
                t_flush.elapsed().as_millis()
            );
            let added = self.objects.take_stats();
            let mut stats = b.stats.clone();
            stats.added_bytes = added.stored_bytes;
            stats.added_raw_bytes = added.raw_bytes;
            stats.added_data_bytes = added.blob_bytes;
            stats.added_meta_bytes = added.raw_bytes - added.blob_bytes;
            stats.added_objects = added.objects;
            stats.duration_ms = super::elapsed_ms(t0);
            stats.paused_us = paused.as_micros() as u64;
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            let record = SnapshotRecord {
                format: super::RECORD_FORMAT,
                name: name.clone(),
                time: util::rfc3339(now.as_secs() as i64),
                time_sec: now.as_secs() as i64,
                time_nsec: now.subsec_nanos(),
                tree: top,
                links,
                parent: if incremental { latest.map(|l| l.id.clone()) } else { None },
                full: !incremental,
                source: self.source.clone(),
                host: self.host.clone(),
                block_size: self.block_size,
                stats,
            };
            super::commit(&*store, &record)
        }))
        .unwrap_or_else(|p| Err(SnapError::Panicked(util::panic_message(&*p))));
        self.live.end_preserving();
        self.objects.track_packs(false);
        *self.progress.locked() = None;
        match result {
            Ok(info) => {
                let saved = self.tracker.commit(&info.id);
                log::info!(
                    "snapshot {} ({}) taken in {} ms, writers paused {} µs: {} read, {} added",
                    info.record.name,
                    &info.id[..12],
                    info.record.stats.duration_ms,
                    paused.as_micros(),
                    util::human_bytes(info.record.stats.read_bytes),
                    util::human_bytes(info.record.stats.added_bytes)
                );
                Ok((info, saved))
            }
            Err(e) => {
                self.objects.discard_pending();
                self.tracker.unseal();
                log::error!("SNAPSHOT FAILED: {}", util::with_causes(&e));
                Err(e)
            }
        }
    }
}
