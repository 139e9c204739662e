//! The daemon's state and the control service: `Service` holds what a
//! mounted directory's daemon knows (its live filesystem, tracker, objects,
//! health, schedule, replicas) and answers each control request
//! (`handle(Request) -> Reply`) by calling the plain operations of
//! `snapshot` and `ops`.

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::umount;
use crate::control::{Reply, Request, StatusReport};
use crate::live::LiveFs;
use crate::ops::health::Health;
use crate::repo::objects::SnapshotId;

/// The nice value of the thread that takes scheduled snapshots (see
/// `schedule_loop`). Under a CPU-bound load a scheduled snapshot takes
/// longer; its start, which the triggers bound, does not move.
const SCHEDULED_NICE: i32 = 19;
use crate::repo::objstore::Objects;
use crate::repo::state::StateDb;
use crate::repo::Repo;
use crate::snapshot::{self, DiffReport, SnapshotInfo};
use crate::tracker::{LastSession, Tracker};
use crate::util::{Locked, RwLocked};
use crate::{ops::maint, ops::schedule, ops::verify, tracker::scan, util};

/// How often a failed state database is tried again.
pub(crate) const STATE_RETRY: Duration = Duration::from_secs(3);

/// Everything the control socket and the signal thread need.
///
/// Lock order, where several are held: `snapshotting`, then `forgetting`,
/// then `maint`; the others are short and never held while another is
/// taken.
pub(crate) struct Service {
    pub(crate) dir: PathBuf,
    pub(crate) backing: PathBuf,
    pub(crate) repo_display: String,
    pub(crate) repo_access: String,
    pub(crate) repo_id: String,
    pub(crate) block_size: u64,
    pub(crate) live: Arc<LiveFs>,
    pub(crate) tracker: Arc<Tracker>,
    pub(crate) mounted_since: String,
    pub(crate) last: LastSession,
    pub(crate) scan: Mutex<Option<scan::ScanStats>>,
    /// The scan failed: the tracker may have missed changes, so the next
    /// snapshot compares everything.
    pub(crate) scan_failed: std::sync::atomic::AtomicBool,
    pub(crate) objects: Arc<Objects>,
    /// One snapshot at a time.
    pub(crate) snapshotting: Mutex<()>,
    pub(crate) progress: Mutex<Option<Arc<snapshot::Progress>>>,
    /// Readers of the whole repository (verify) share it; prune takes it
    /// alone (after `snapshotting`, never the other way round).
    pub(crate) maint: std::sync::RwLock<()>,
    /// Progress of a verify or prune.
    pub(crate) task: Mutex<Option<Arc<verify::VerifyProgress>>>,
    pub(crate) health: Health,
    pub(crate) scheduler: Mutex<schedule::Scheduler>,
    /// Retention was skipped for a write-only key (said once).
    pub(crate) retention_skipped: std::sync::atomic::AtomicBool,
    /// The sled database (tracking state, index, health): after an I/O
    /// error it is reopened and written back from memory.
    pub(crate) state: Arc<StateDb>,
    /// Snapshots a restore or rollback is reading (id -> until when).
    pub(crate) held: Mutex<std::collections::HashMap<SnapshotId, Instant>>,
    /// Taken by forget while it decides and removes, and by a new hold.
    pub(crate) forgetting: Mutex<()>,
    /// Copies of the repository elsewhere, brought up to date after each
    /// snapshot in the background.
    pub(crate) replicas: Arc<crate::ops::replica::Replicas>,
    /// Whether the repository sits on the device of the data it protects.
    pub(crate) same_device: bool,
    /// The host name its snapshots are recorded under.
    pub(crate) host: String,
    /// In a repository other hosts share: this host's and directory's
    /// snapshots, the only ones it lists, continues and keeps.
    pub(crate) lineage: Option<snapshot::Lineage>,
    /// With replicas: the snapshots this daemon committed (when, µs) and
    /// the oldest change each holds (ms), until every replica has them.
    pub(crate) committed: Mutex<std::collections::VecDeque<(i64, i64)>>,
    /// The mount's requests by opcode (`status --ops`).
    pub(crate) ops: Arc<crate::fuse::opstats::OpStats>,
}

/// The most snapshots `committed` remembers (while a replica is behind).
const COMMITTED_MAX: usize = 100_000;

impl Service {
    /// The snapshots this daemon sees (its lineage's, in a shared repository).
    fn snapshots(&self) -> Result<Vec<SnapshotInfo>> {
        Ok(snapshot::of_lineage(snapshot::list(&**self.objects.store())?, self.lineage.as_ref()))
    }

    /// What no committed snapshot holds, for the schedule; the dirty bytes
    /// only if `bytes` (counting them walks the dirty set).
    fn risk(&self, bytes: bool) -> schedule::Risk {
        let u = self.tracker.unprotected();
        let ms = |ns: i128| ns.div_euclid(1_000_000) as i64;
        schedule::Risk {
            bytes: if bytes && u.oldest_ns.is_some() { self.tracker.dirty_bytes() } else { 0 },
            oldest_ms: u.oldest_ns.map(ms),
            last_ms: u.last_ns.map(ms),
        }
    }

    pub(crate) fn status(&self, files: bool, ops: bool) -> StatusReport {
        let dirty = self.tracker.summary();
        let risk = schedule::Risk { bytes: dirty.bytes, ..self.risk(false) };
        StatusReport {
            mounted: true,
            mountpoint: self.dir.display().to_string(),
            backing: self.backing.display().to_string(),
            repository: self.repo_display.clone(),
            repository_access: self.repo_access.clone(),
            repository_id: self.repo_id.clone(),
            block_size: self.block_size,
            pid: Some(std::process::id()),
            mounted_since: Some(self.mounted_since.clone()),
            last_session: last_name(&self.last).into(),
            dirty,
            files: if files { Some(self.tracker.entries_list()) } else { None },
            inodes: Some(self.live.inode_count()),
            scan: self.scan.locked().clone(),
            replicas: self.not_copied(self.replicas.statuses(), risk.oldest_ms),
            warnings: self.warnings(),
            ops: ops.then(|| self.ops.report()),
            health: Some({
                let mut h = crate::ops::health::report(&**self.objects.store(), Some(&self.health));
                h.repairs += self.objects.healed_on_read();
                h.schedule = self.scheduler.locked().status_at(util::unix_now_ms(), &risk);
                h
            }),
        }
    }

    /// The replicas' statuses with the oldest change each lacks: the
    /// oldest of those no snapshot holds yet (`unprotected`, ms) and of
    /// those in snapshots committed since its last successful round began.
    /// Unknown (None) before a round of this session succeeded.
    fn not_copied(
        &self,
        mut all: Vec<crate::ops::replica::ReplicaStatus>,
        unprotected: Option<i64>,
    ) -> Vec<crate::ops::replica::ReplicaStatus> {
        let mut committed = self.committed.locked();
        // what every replica has is no longer needed
        if let Some(min) = all.iter().map(|r| r.copied_before_us).min().flatten() {
            while committed.front().is_some_and(|(at, _)| *at < min) {
                committed.pop_front();
            }
        }
        let now = util::unix_now_ms();
        for r in &mut all {
            let Some(since) = r.copied_before_us else { continue };
            let in_snapshots = committed.iter().filter(|(at, _)| *at >= since).map(|(_, oldest)| *oldest).min();
            if let Some(t) = [unprotected, in_snapshots].into_iter().flatten().min() {
                r.oldest_change_not_copied = Some(util::rfc3339(t.div_euclid(1000)));
                r.oldest_change_not_copied_age_sec = Some(now.saturating_sub(t).max(0) as u64 / 1000);
            }
        }
        all
    }

    fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.same_device && self.replicas.is_empty() {
            w.push(format!(
                "NOT A BACKUP AGAINST DISK FAILURE: the only repository ({}) is on the same device as the data; \
                 add a replica elsewhere (`snapfs replica add {} s3:https://HOST/BUCKET/PREFIX`)",
                self.repo_display,
                self.dir.display()
            ));
        }
        w
    }

    /// Take a snapshot: pause writers, seal the epoch, store what changed,
    /// commit the record, and give the sealed changes up only then.
    fn snapshot(&self, name: Option<String>, full: bool) -> Result<SnapshotInfo> {
        let r = self.snapshot_inner(name, full);
        match &r {
            Ok(_) => self.health.set_failing(None),
            Err(e) => {
                let msg = format!("{e:#}");
                self.health.error("snapshot", &msg);
                self.health.set_failing(Some(&msg));
            }
        }
        r
    }

    /// After the state database failed: reopen it and write everything kept
    /// in memory back (tracking state, index of packs written meanwhile,
    /// health). The caller holds `snapshotting`.
    pub(crate) fn recover_state(&self) -> Result<()> {
        let Some((since, why)) = self.state.failure() else { return Ok(()) };
        self.state.reopen()?;
        self.tracker.rewrite()?;
        let n = self.objects.index_new_packs()?;
        self.health.rewrite()?;
        self.state.flush()?;
        self.state.recovered();
        log::warn!(
            "state database usable again (failing since {}: {why}); tracking state written back, {n} packs indexed",
            util::rfc3339(since)
        );
        Ok(())
    }

    /// The snapshots held now.
    fn held_ids(&self) -> std::collections::HashSet<SnapshotId> {
        let mut h = self.held.locked();
        let now = Instant::now();
        h.retain(|_, until| *until > now);
        h.keys().cloned().collect()
    }

    /// Hold snapshot `id` for `secs` (it must still exist: checked while no
    /// forget runs).
    fn hold(&self, id: &str, secs: u64) -> Result<()> {
        let _no_forget = self.forgetting.locked();
        let Some(id) = self.snapshots()?.into_iter().map(|s| s.id).find(|s| s.as_str() == id) else {
            bail!("snapshot {id} does not exist (forgotten?)");
        };
        let until = Instant::now() + Duration::from_secs(secs.min(3600));
        self.held.locked().insert(id, until);
        Ok(())
    }

    /// The repository answers and is the one we mounted with (its config:
    /// one read; the mount checked the rest, and the daemon seals with the
    /// keys it holds whatever the config says now).
    fn check_repository(&self) -> Result<()> {
        match crate::repo::Location::parse(&self.repo_access).and_then(|l| Repo::config_at(&l)) {
            Ok(c) if c.id == self.repo_id => Ok(()),
            Ok(_) => anyhow::bail!(
                "the repository at {} is not the one this mount started with (another repository mounted there?)",
                self.repo_display
            ),
            Err(e) => anyhow::bail!("the repository at {} is unreachable: {e}", self.repo_display),
        }
    }

    fn snapshot_inner(&self, name: Option<String>, full: bool) -> Result<SnapshotInfo> {
        let _one = self.snapshotting.locked();
        self.check_repository()?;
        if let Err(e) = self.recover_state() {
            anyhow::bail!(
                "the state database ({}/state) cannot be written: {e:#}; snapshots stop until it can \
                 (repository device full or unreachable?) while tracking goes on in memory",
                self.repo_display
            );
        }
        self.snapshot_locked(name, full).inspect_err(|e| self.note_state_error(e))
    }

    /// An error that came from the state database marks it failed (it is
    /// reopened and written back later).
    fn note_state_error(&self, e: &anyhow::Error) {
        if e.chain().any(|c| c.downcast_ref::<sled::Error>().is_some()) {
            self.state.failed(e);
        }
    }

    fn links_of(&self, s: &SnapshotInfo) -> Result<snapshot::LinkTable> {
        Ok(snapshot::take::links_of(&self.objects, s)?)
    }

    /// Run `work` with a progress that `snapfs` clients can ask for.
    fn with_task<T>(&self, p: Arc<verify::VerifyProgress>, work: impl FnOnce() -> T) -> T {
        *self.task.locked() = Some(p);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
        *self.task.locked() = None;
        r.unwrap_or_else(|p| std::panic::resume_unwind(p))
    }

    fn snapshot_locked(&self, name: Option<String>, full: bool) -> Result<SnapshotInfo> {
        let take = snapshot::take::Take {
            objects: &self.objects,
            live: &self.live,
            tracker: &self.tracker,
            block_size: self.block_size,
            source: self.dir.display().to_string(),
            host: self.host.clone(),
            lineage: self.lineage.as_ref(),
            scan_failed: &self.scan_failed,
            progress: &self.progress,
        };
        let (info, saved) = take.run(name, full)?;
        let oldest = self.tracker.committed_oldest().map(|ns| ns.div_euclid(1_000_000) as i64);
        if let (Some(o), false) = (oldest, self.replicas.is_empty()) {
            let mut c = self.committed.locked();
            // full: the oldest two become one, keeping the older change and
            // the later time (counted as copied later, never sooner)
            if c.len() >= COMMITTED_MAX {
                if let (Some((_, o0)), Some(next)) = (c.pop_front(), c.front_mut()) {
                    next.1 = next.1.min(o0);
                }
            }
            c.push_back((util::unix_now_us(), o));
        }
        // The record is the commit point: the snapshot exists. The
        // tracker's memory has moved on even if saving it failed.
        if let Err(e) = saved {
            log::error!("TRACKING STATE NOT SAVED after snapshot {}: {e}", info.record.name);
            self.state.failed(&e);
        }
        self.replicas.snapshot_committed(info.record.stats.added_bytes);
        Ok(info)
    }

    /// `verify --live`: the live directory against the latest snapshot and
    /// the dirty set. Holds the snapshot lock (the dirty set only grows
    /// meanwhile).
    fn verify_live(&self) -> Result<crate::ops::verify_live::LiveReport> {
        let _one = self.snapshotting.locked();
        while self.tracker.scan_pending() && !self.scan_failed.load(std::sync::atomic::Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.scan_failed.load(std::sync::atomic::Ordering::SeqCst) {
            bail!("the mount-time scan failed: the next snapshot compares everything, there is no dirty set to check");
        }
        let all = self.snapshots()?;
        let Some(latest) = all.last() else {
            bail!("no snapshot yet: the first snapshot reads everything, there is nothing to check");
        };
        if self.tracker.base_snapshot().as_deref() != Some(latest.id.as_str()) {
            bail!(
                "the dirty set is not relative to the latest snapshot {} (the next snapshot compares everything): \
                 take a snapshot first",
                latest.record.name
            );
        }
        let links = self.links_of(latest)?;
        let top = latest.root_tree()?;
        let p = Arc::new(verify::VerifyProgress::default());
        p.bytes_total.store(latest.record.stats.logical_bytes, std::sync::atomic::Ordering::Relaxed);
        let mut r = self.with_task(p.clone(), || {
            let record = |ino| self.tracker.record(ino);
            crate::ops::verify_live::check(
                &self.objects,
                self.block_size,
                self.live.root_fd(),
                top,
                &links,
                &record,
                &p,
            )
        })?;
        r.snapshot = latest.record.name.clone();
        r.snapshot_id = latest.id.to_string();
        log::info!(
            "verify --live against {}: {} dirs, {} files, {} missed, {} ms",
            r.snapshot,
            r.dirs,
            r.files,
            r.missed_count,
            r.duration_ms
        );
        self.health.set_live_check(&r);
        if !r.ok {
            self.health.error("verify --live", &format!("{} changes missed by the tracker", r.missed_count));
        }
        Ok(r)
    }

    fn diff(&self, a: &str, b: &str) -> Result<DiffReport> {
        let all = self.snapshots()?;
        let sa = snapshot::find(&all, a)?;
        let sb = snapshot::find(&all, b)?;
        diff_report(&self.objects, sa, sb)
    }

    /// `snapfs verify DIR`: check the repository while snapshots go on.
    fn verify(&self, opts: verify::VerifyOptions, rebuild_index: bool) -> Result<verify::VerifyReport> {
        let r = {
            let _readers = self.maint.read_locked();
            let p = Arc::new(verify::VerifyProgress::default());
            self.with_task(p.clone(), || verify::run(&self.objects, &opts, &self.health, &p))?
        };
        if rebuild_index && !r.index_problems.is_empty() {
            // not while a snapshot or a verify reads through the index
            let _one = self.snapshotting.locked();
            let _alone = self.maint.write_locked();
            let n = self.objects.rebuild_index()?;
            log::info!("index rebuilt from {n} packs");
        }
        Ok(r)
    }

    /// verify --read-data --repair: alone (it writes packs and deletes
    /// damaged ones), healing from the replicas and `from`.
    fn verify_repair(&self, opts: verify::VerifyOptions, from: &[String]) -> Result<verify::VerifyReport> {
        let mut sources = self.replicas.sources();
        for url in from {
            sources.push(crate::ops::replica::source(url, &self.repo_id, self.objects.store().keys())?);
        }
        let _one = self.snapshotting.locked();
        let _alone = self.maint.write_locked();
        let p = Arc::new(verify::VerifyProgress::default());
        Ok(self.with_task(p.clone(), || {
            crate::ops::repair::verify_and_repair(&self.objects, &opts, &self.health, &p, &sources)
        })?)
    }

    fn forget(&self, names: &[String], policy: &maint::Policy, dry_run: bool) -> Result<maint::ForgetReport> {
        let _one = self.snapshotting.locked();
        {
            let _forgetting = self.forgetting.locked();
            maint::forget(
                &**self.objects.store(),
                names,
                policy,
                dry_run,
                None,
                &self.held_ids(),
                self.lineage.as_ref(),
            )
        }
        .inspect(|_| self.replicas.wake())
        .inspect_err(|e| self.health.error("forget", &util::with_causes(e)))
        .map_err(Into::into)
    }

    /// One scheduled run: a snapshot named `auto-<time>`, then retention
    /// over the scheduled snapshots and a prune if it forgot any.
    pub(crate) fn scheduled_run(&self, keep: &maint::Policy) -> Result<String> {
        let all = self.snapshots()?;
        let name = snapshot::unique_name(
            &all,
            &format!("{}{}", schedule::AUTO_PREFIX, snapshot::default_name(util::unix_now())),
        );
        let info = self.snapshot(Some(name), false)?;
        if keep.is_empty() {
            return Ok(info.record.name);
        }
        // A write-only key adds snapshots and removes none: retention is
        // for a host that holds a full key (said once, not failed on).
        if crate::repo::crypto::require_full(self.objects.keys().map(|k| &**k), "retention").is_err() {
            if !self.retention_skipped.swap(true, std::sync::atomic::Ordering::Relaxed) {
                log::warn!(
                    "schedule: --keep is not applied with a write-only key (it never removes snapshots); run forget and prune where a full key is"
                );
            }
            return Ok(format!("{} (retention left to a full key)", info.record.name));
        }
        let forgot = {
            let _one = self.snapshotting.locked();
            {
                let _forgetting = self.forgetting.locked();
                maint::forget(
                    &**self.objects.store(),
                    &[],
                    keep,
                    false,
                    Some(schedule::AUTO_PREFIX),
                    &self.held_ids(),
                    self.lineage.as_ref(),
                )?
            }
        };
        if !forgot.removed.is_empty() {
            let p = self.prune(&maint::PruneOptions::default())?;
            return Ok(format!(
                "{}; forgot {}, pruned {}",
                info.record.name,
                forgot.removed.len(),
                util::human_bytes(p.bytes_freed)
            ));
        }
        Ok(info.record.name)
    }

    /// Set the schedule (None: no automatic snapshots), and keep it.
    pub(crate) fn set_schedule(&self, s: Option<schedule::Schedule>) -> Result<()> {
        let latest = self
            .snapshots()?
            .last()
            .map(|l| l.record.time_sec.saturating_mul(1000).saturating_add(i64::from(l.record.time_nsec / 1_000_000)));
        self.scheduler.locked().set(s.clone(), latest, util::unix_now_ms());
        self.health.set_schedule(s.as_ref());
        match &s {
            Some(s) => log::info!("schedule: {}, keep {}", s.text(), s.keep),
            None => log::info!("schedule: off"),
        }
        Ok(())
    }

    /// Prune: no snapshot runs meanwhile, nor a verify.
    fn prune(&self, opts: &maint::PruneOptions) -> Result<maint::PruneReport> {
        let _one = self.snapshotting.locked();
        let _alone = self.maint.write_locked();
        self.check_repository()?;
        self.recover_state().context("the state database cannot be written")?;
        let p = Arc::new(verify::VerifyProgress::default());
        self.with_task(p.clone(), || maint::run_prune(&self.objects, opts, &self.health, &p))
            .map_err(anyhow::Error::from)
            .inspect_err(|e| self.note_state_error(e))
    }

    /// Unmount ourselves; busy mounts are detached lazily when `lazy`.
    pub(crate) fn unmount(&self, lazy: bool) -> std::io::Result<()> {
        // Make the tracking state durable first: after a lazy unmount the
        // session may linger until the last open file is closed.
        if let Err(e) = self.tracker.flush() {
            log::error!("flushing tracking state: {e}");
        }
        umount(&self.dir, lazy)?;
        // (not before: after STOPPING=1 systemd kills a daemon that has not
        // exited within TimeoutStopSec, and a busy mount stays)
        crate::os::systemd::stopping(&format!("unmounted {}; saving the tracking state", self.dir.display()));
        Ok(())
    }
}

impl Service {
    /// The flusher: a durable point of the tracking state every `every`;
    /// while the state database fails, an attempt to reopen it and write
    /// everything back every `STATE_RETRY`. Runs until the process ends.
    pub(crate) fn flush_loop(&self, every: Duration) {
        let mut last_try: Option<Instant> = None;
        let mut last_log: Option<Instant> = None;
        loop {
            std::thread::sleep(every);
            if self.state.failure().is_some() {
                if last_try.is_some_and(|t| t.elapsed() < STATE_RETRY) {
                    continue;
                }
                last_try = Some(Instant::now());
                let guard = match self.snapshotting.try_lock() {
                    Ok(g) => g,
                    Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
                    Err(std::sync::TryLockError::WouldBlock) => continue,
                };
                if let Err(e) = self.recover_state() {
                    if last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                        last_log = Some(Instant::now());
                        log::error!("TRACKING STATE NOT SAVED: the state database is still failing: {e:#}");
                        self.health.error("state", &format!("tracking state not saved: {e:#}"));
                    }
                }
                drop(guard);
                continue;
            }
            if let Err(e) = self.tracker.flush() {
                log::error!("TRACKING STATE NOT SAVED: {e}");
                self.state.failed(&e);
                self.health.error("state", &format!("tracking state not saved: {e}"));
                last_log = Some(Instant::now());
            }
        }
    }

    /// The mount-time scan for changes made while nothing watched.
    pub(crate) fn scan_unwatched(&self, fd: OwnedFd, threshold: i128) {
        match scan::scan(fd.as_fd(), &self.tracker, threshold) {
            Ok(stats) => {
                log::info!(
                    "scan: {} entries in {} directories, {} changed while unwatched, {} ms",
                    stats.entries,
                    stats.dirs,
                    stats.changed,
                    stats.millis
                );
                *self.scan.locked() = Some(stats);
                self.tracker.scan_done();
                if let Err(e) = self.tracker.flush() {
                    log::error!("TRACKING STATE NOT SAVED: {e}");
                }
            }
            Err(e) => {
                log::error!("scan of the backing directory failed: {e}; the next snapshot compares everything");
                self.scan_failed.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
    }

    /// Automatic snapshots when the schedule says so. Runs until the
    /// process ends. It looks at least once a second (a change or
    /// `max_dirty` may make a run due at any time) and wakes when a time
    /// trigger comes due; idle, a look is two short locks.
    pub(crate) fn schedule_loop(&self) {
        // Scheduled snapshots yield the CPU to the writers they protect
        // (threads the snapshot starts inherit it): under a random writer
        // with --max-age 5s the writer kept 0.86x of its speed at the
        // normal priority, 0.99-1.01x at nice 19 (scripts/bench-rpo). A
        // snapshot asked for by hand runs at the normal priority.
        crate::os::sys::lower_thread_priority(SCHEDULED_NICE);
        let mut wait = Duration::from_millis(250);
        loop {
            std::thread::sleep(wait);
            wait = Duration::from_secs(1);
            // the tracker's lock is not taken under the scheduler's
            let Some(count_bytes) = self.scheduler.locked().schedule().map(|s| s.max_dirty.is_some()) else {
                continue;
            };
            let risk = self.risk(count_bytes);
            let now = util::unix_now_ms();
            let (why, keep) = {
                let s = self.scheduler.locked();
                if let Some(at) = s.wake_at(&risk) {
                    let ms = at.saturating_sub(now).clamp(50, 1000) as u64;
                    wait = Duration::from_millis(ms);
                }
                let Some(why) = s.due(now, &risk) else { continue };
                (why, s.schedule().map(|s| s.keep.clone()).unwrap_or_default())
            };
            // a snapshot in flight (a manual one) may take what made a
            // change-driven run due: wait for it and look again, rather
            // than take an empty snapshot after it
            if why != schedule::Trigger::Every {
                drop(self.snapshotting.locked());
                let risk = self.risk(count_bytes);
                if self.scheduler.locked().due(util::unix_now_ms(), &risk).is_none() {
                    wait = Duration::from_millis(50);
                    continue;
                }
            }
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.scheduled_run(&keep)))
                .unwrap_or_else(|p| Err(anyhow::anyhow!("internal error: {}", util::panic_message(&*p))))
                .map_err(|e| format!("{e:#}"));
            // how old the oldest unprotected change was when the run came
            // due: the recovery point the schedule kept (scripts/bench-rpo)
            let age = match risk.oldest_ms {
                Some(o) => format!("oldest change {:.2} s old", now.saturating_sub(o) as f64 / 1000.0),
                None => "nothing changed".into(),
            };
            match &r {
                Ok(m) => log::info!("scheduled snapshot ({why}, {age}): {m}"),
                Err(e) => {
                    log::error!("SCHEDULED SNAPSHOT ({why}, {age}) FAILED: {e}");
                    self.health.error("schedule", e);
                }
            }
            self.scheduler.locked().ran(now, util::unix_now_ms(), why, r);
            wait = Duration::from_millis(50);
        }
    }

    /// Answer one control request.
    pub(crate) fn handle(&self, req: Request) -> Reply {
        match req {
            Request::Status { files, ops } => Reply { status: Some(self.status(files, ops)), ..Reply::ok() },
            Request::Flush => match self.tracker.flush() {
                Ok(()) => Reply::ok(),
                Err(e) => Reply::err(e.to_string()),
            },
            Request::Unmount { lazy } => match self.unmount(lazy) {
                Ok(()) => Reply::ok(),
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Reply::err(format!(
                    "{} is busy (files are open); use --lazy to detach it anyway",
                    self.dir.display()
                )),
                Err(e) => Reply::err(format!("unmount failed: {e}")),
            },
            Request::Snapshot { name: Some(n), .. } if n.starts_with(schedule::AUTO_PREFIX) => Reply::err(format!(
                "snapshot failed: names starting with {} are the schedule's (its retention would remove them)",
                schedule::AUTO_PREFIX
            )),
            Request::Snapshot { name, full } => match self.snapshot(name, full) {
                Ok(info) => Reply { snapshot: Some(info), ..Reply::ok() },
                Err(e) => Reply::err(format!("snapshot failed: {e:#}")),
            },
            Request::Progress => {
                let p = self.progress.locked().clone();
                let t = self.task.locked().clone();
                Reply { progress: p.map(|p| p.get()), task: t.map(|t| t.view()), ..Reply::ok() }
            }
            Request::Schedule { every, max_dirty, max_age, settle, keep, off } => {
                let keep_given = keep.is_some();
                let cur = self.scheduler.locked().schedule().cloned();
                let given = schedule::Schedule { every, max_dirty, max_age, settle, keep: Default::default() };
                let triggers = given.has_trigger() || settle.is_some();
                let new = if off {
                    None
                } else {
                    // the triggers given replace the schedule's; the
                    // retention stays unless given
                    let cur_keep = cur.as_ref().map(|c| c.keep.clone());
                    let new = match (triggers, cur) {
                        (true, _) => Some(schedule::Schedule { keep: keep.or(cur_keep).unwrap_or_default(), ..given }),
                        (false, Some(cur)) => Some(schedule::Schedule { keep: keep.unwrap_or(cur.keep), ..cur }),
                        (false, None) if keep_given => {
                            return Reply::err("no schedule yet: give --every, --max-age or --max-dirty too");
                        }
                        (false, None) => None,
                    };
                    if let Some(Err(e)) = new.as_ref().map(schedule::Schedule::check) {
                        return Reply::err(e);
                    }
                    new
                };
                let changed = off || triggers || keep_given;
                match if changed { self.set_schedule(new) } else { Ok(()) } {
                    Ok(()) => Reply { status: Some(self.status(false, false)), ..Reply::ok() },
                    Err(e) => Reply::err(format!("{e:#}")),
                }
            }
            Request::Forget { names, policy, dry_run } => match self.forget(&names, &policy, dry_run) {
                Ok(r) => Reply { forget: Some(r), ..Reply::ok() },
                Err(e) => Reply::err(format!("forget failed: {e:#}")),
            },
            Request::Prune { dry_run, max_unused, grace_secs } => {
                let opts = maint::PruneOptions {
                    dry_run,
                    max_unused: max_unused.unwrap_or(maint::PruneOptions::default().max_unused),
                    grace_secs: grace_secs.unwrap_or(maint::PruneOptions::default().grace_secs),
                };
                match self.prune(&opts) {
                    Ok(r) => Reply { prune: Some(r), ..Reply::ok() },
                    Err(e) => Reply::err(format!("prune failed: {e:#}")),
                }
            }
            Request::Verify { read_data, subset, rebuild_index, repair, from } => {
                let jobs = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
                let opts = verify::VerifyOptions { read_data, subset, jobs, block_size: Some(self.block_size) };
                let r = if repair { self.verify_repair(opts, &from) } else { self.verify(opts, rebuild_index) };
                match r {
                    Ok(r) => Reply { verify: Some(r), ..Reply::ok() },
                    Err(e) => Reply::err(format!("verify failed: {e:#}")),
                }
            }
            Request::Hold { snapshot, secs } => match self.hold(&snapshot, secs) {
                Ok(()) => Reply::ok(),
                Err(e) => Reply::err(format!("{e:#}")),
            },
            Request::Replica { add, remove, sync } => {
                let r = (|| -> Result<()> {
                    if let Some(u) = add {
                        let u = self.replicas.add(&u)?;
                        log::info!("replica {u} added");
                    }
                    if let Some(u) = remove {
                        self.replicas.remove(&u)?;
                        log::info!("replica {u} removed");
                    }
                    Ok(())
                })();
                match r {
                    Err(e) => Reply::err(format!("{e:#}")),
                    Ok(()) => {
                        let st = if sync { self.replicas.sync_all() } else { self.replicas.statuses() };
                        let st = self.not_copied(st, self.risk(false).oldest_ms);
                        Reply { replicas: Some(st), ..Reply::ok() }
                    }
                }
            }
            Request::VerifyLive => match self.verify_live() {
                Ok(r) => Reply { live: Some(r), ..Reply::ok() },
                Err(e) => Reply::err(format!("verify --live failed: {e:#}")),
            },
            Request::List => match snapshot::list_all(&**self.objects.store()) {
                Ok(l) => Reply { snapshots: Some(snapshot::of_lineage(l, self.lineage.as_ref())), ..Reply::ok() },
                Err(e) => Reply::err(e.to_string()),
            },
            Request::Diff { a, b } => match self.diff(&a, &b) {
                Ok(d) => Reply { diff: Some(d), ..Reply::ok() },
                Err(e) => Reply::err(format!("{e:#}")),
            },
        }
    }
}

/// Compare two snapshots.
pub fn diff_report(objects: &Objects, a: &SnapshotInfo, b: &SnapshotInfo) -> Result<DiffReport> {
    let entries = snapshot::diff(objects, a.root_tree()?, b.root_tree()?, a.record.block_size)?;
    let count = |c: &str| entries.iter().filter(|e| e.change == c).count() as u64;
    Ok(DiffReport {
        from: a.record.name.clone(),
        to: b.record.name.clone(),
        added: count("added"),
        removed: count("removed"),
        modified: count("modified"),
        changed_bytes: entries.iter().map(|e| e.bytes).sum(),
        entries,
    })
}

pub fn last_name(l: &LastSession) -> &'static str {
    match l {
        LastSession::First => "first",
        LastSession::Clean { .. } => "clean",
        LastSession::Unclean { .. } => "unclean",
    }
}
