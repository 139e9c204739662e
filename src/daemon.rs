//! `snapfs mount`: set up a protected directory and serve it.
//!
//! The order matters and is the whole point of this module:
//! 1. block SIGTERM/SIGINT/SIGHUP (every thread inherits the mask; one thread
//!    waits for them and unmounts);
//! 2. refuse a directory that already has a snapfs mount, and claim the
//!    control socket (a second daemon for the same mount point fails here);
//! 3. open the backing directory *before* mounting; from then on everything,
//!    the repository and sled included, is reached through that descriptor
//!    (`/proc/self/fd/N/...`), never through the mount;
//! 4. lock the repository, open the tracker, mount (the FUSE handshake is done
//!    when this returns), then tell the parent we are ready;
//! 5. serve until unmounted; the tracker is flushed and marked clean last.
//!
//! Without `--foreground` the command re-executes itself with `--foreground
//! --ready-fd 3` in a new session and waits for one line on that pipe:
//! `READY` or `ERROR <message>`.

use std::ffi::CString;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::capture::Capture;
use crate::control::{self, Reply, Request, StatusReport};
use crate::fuse::{KernelOptions, SnapFuse};
use crate::health::Health;
use crate::live::{self, LiveFs};
use crate::objects::{ObjKind, ObjectId};
use crate::objstore::Objects;
use crate::repo::{Repo, DEFAULT_BLOCK_SIZE};
use crate::snapshot::{self, DiffReport, SnapError, SnapshotInfo, SnapshotRecord};
use crate::state::StateDb;
use crate::tracker::{LastSession, Tracker};
use crate::{check, maint, scan, schedule, sys, util};

#[derive(Debug, Clone)]
pub struct MountArgs {
    pub dir: PathBuf,
    pub backing: Option<PathBuf>,
    pub repo: Option<PathBuf>,
    pub foreground: bool,
    pub threads: usize,
    pub writeback: bool,
    pub flush_ms: u64,
    pub ready_fd: Option<RawFd>,
    /// Automatic snapshots every this many seconds.
    pub every: Option<u64>,
    /// Retention for automatic snapshots.
    pub keep: Option<maint::Policy>,
}

/// Absolute, symlink-free path; lexical when the path cannot be resolved
/// (a dead FUSE mount answers ENOTCONN to stat).
pub fn canonical(p: &Path) -> PathBuf {
    match p.canonicalize() {
        Ok(c) => c,
        Err(_) => std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()),
    }
}

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone)]
pub struct MountEntry {
    pub mountpoint: PathBuf,
    pub fstype: String,
    pub source: String,
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn mounts() -> Vec<MountEntry> {
    let Ok(s) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    s.lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let mp = pre.split(' ').nth(4)?;
            let mut post = post.split(' ');
            let fstype = post.next()?.to_string();
            let source = post.next().unwrap_or("").to_string();
            Some(MountEntry { mountpoint: PathBuf::from(unescape(mp)), fstype, source: unescape(&source) })
        })
        .collect()
}

/// The snapfs mount at `dir`, if any.
pub fn snapfs_mount_at(dir: &Path) -> Option<MountEntry> {
    mounts().into_iter().rev().find(|m| {
        m.mountpoint == dir
            && m.fstype.starts_with("fuse")
            && (m.source.starts_with("snapfs:") || m.source.starts_with("snapfs-browse:"))
    })
}

fn cpath(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| anyhow!("path contains a NUL byte"))
}

/// Unmount `dir`; with `lazy`, detach even if busy.
pub fn umount(dir: &Path, lazy: bool) -> std::io::Result<()> {
    let c = CString::new(dir.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let flags = if lazy { libc::MNT_DETACH } else { 0 };
    if unsafe { libc::umount2(c.as_ptr(), flags) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Flush the kernel's cached writes of the filesystem at `dir` to its daemon.
/// Called by clients (never by the daemon, whose own mount this would be).
pub fn syncfs(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        unsafe { libc::syncfs(f.as_raw_fd()) };
    }
}

/// Tune the mount's backing-device info in sysfs: read-ahead of 1 MiB, and
/// with the writeback cache no FUSE "strict limit" on dirty pages (which
/// otherwise throttles writers at 1% of the dirty threshold). Found through
/// /proc/self/mountinfo, never by touching the mount.
fn tune_bdi(dir: &Path, writeback: bool) {
    let Ok(s) = std::fs::read_to_string("/proc/self/mountinfo") else { return };
    let Some(dev) = s.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.len() > 4 && Path::new(&unescape(f[4])) == dir && l.contains(" - fuse") && l.contains("snapfs:"))
            .then(|| f[2].to_string())
    }) else {
        return;
    };
    let base = PathBuf::from(format!("/sys/class/bdi/{dev}"));
    let set = |name: &str, v: &str| {
        if let Err(e) = std::fs::write(base.join(name), v) {
            log::info!("cannot set {}/{name}: {e}", base.display());
        }
    };
    set("read_ahead_kb", "1024");
    if writeback {
        set("strict_limit", "0");
    }
}

pub fn mount(args: MountArgs) -> Result<()> {
    if args.foreground {
        run(args)
    } else {
        spawn_background(&args)
    }
}

fn check_dir(dir: &Path) -> Result<PathBuf> {
    let meta = std::fs::metadata(dir).with_context(|| format!("{}: cannot use as a mount point", dir.display()))?;
    if !meta.is_dir() {
        bail!("{}: not a directory", dir.display());
    }
    let dir = canonical(dir);
    if snapfs_mount_at(&dir).is_some() {
        bail!("{} is already protected by a snapfs mount", dir.display());
    }
    Ok(dir)
}

fn spawn_background(args: &MountArgs) -> Result<()> {
    let dir = check_dir(&args.dir)?;
    let mut a: Vec<std::ffi::OsString> = vec!["mount".into()];
    if let Some(b) = &args.backing {
        a.extend(["--backing".into(), canonical(b).into_os_string()]);
    }
    if let Some(r) = &args.repo {
        a.extend(["--repo".into(), canonical(r).into_os_string()]);
    }
    a.extend([
        "--threads".into(),
        args.threads.to_string().into(),
        "--flush-ms".into(),
        args.flush_ms.to_string().into(),
    ]);
    if !args.writeback {
        a.push("--no-writeback".into());
    }
    if let Some(e) = args.every {
        a.extend(["--every".into(), e.to_string().into()]);
    }
    if let Some(k) = &args.keep {
        a.extend(["--keep".into(), k.to_string().into()]);
    }
    let pid = spawn_daemon(a, &dir)?;
    println!("snapfs: {} is protected (daemon pid {pid})", dir.display());
    Ok(())
}

/// Run `snapfs ARGS --foreground --ready-fd 3 DIR` in a new session and wait
/// for its one line: `READY` (returns its pid) or `ERROR <message>`.
fn spawn_daemon(args: Vec<std::ffi::OsString>, dir: &Path) -> Result<u32> {
    let mut fds = [0 as RawFd; 2];
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        bail!("pipe: {}", std::io::Error::last_os_error());
    }
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let exe = std::env::current_exe().context("cannot find the snapfs executable")?;
    let mut cmd = Command::new(exe);
    cmd.args(&args).arg("--foreground").arg("--ready-fd").arg("3").arg(dir);
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    let wfd = w.as_raw_fd();
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::dup2(wfd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("cannot start the snapfs daemon")?;
    drop(w);
    let mut line = String::new();
    BufReader::new(std::fs::File::from(r)).read_line(&mut line)?;
    let line = line.trim_end();
    if line == "READY" {
        return Ok(child.id());
    }
    if let Some(msg) = line.strip_prefix("ERROR ") {
        let _ = child.wait();
        bail!("{msg}");
    }
    let status = child.wait()?;
    bail!("the snapfs daemon exited before the mount was ready ({status}); run with --foreground to see why")
}

#[derive(Debug, Clone)]
pub struct BrowseArgs {
    pub repo: PathBuf,
    pub mnt: PathBuf,
    pub snapshot: Option<String>,
    pub foreground: bool,
    pub ready_fd: Option<RawFd>,
}

/// `snapfs browse`: mount a repository's snapshots read-only, with no live
/// daemon (a copy of a repository on another machine will do).
pub fn browse(args: BrowseArgs) -> Result<()> {
    if !args.foreground {
        let mnt = check_dir(&args.mnt)?;
        let mut a: Vec<std::ffi::OsString> = vec!["browse".into(), "--repo".into(), canonical(&args.repo).into()];
        if let Some(s) = &args.snapshot {
            a.extend(["--snapshot".into(), s.into()]);
        }
        let pid = spawn_daemon(a, &mnt)?;
        println!(
            "snapfs: snapshots of {} are at {} (read-only, pid {pid}, log {})",
            args.repo.display(),
            mnt.display(),
            browse_log(&mnt).display()
        );
        return Ok(());
    }
    let ready_fd = args.ready_fd;
    match serve_browse(args) {
        Ok(()) => Ok(()),
        Err(e) => {
            notify(ready_fd, &format!("ERROR {e:#}"));
            Err(e)
        }
    }
}

/// Where a background browse daemon logs (damaged objects are reported there).
fn browse_log(mnt: &Path) -> PathBuf {
    std::env::temp_dir().join(format!("{}.log", control::socket_name(mnt)))
}

fn serve_browse(args: BrowseArgs) -> Result<()> {
    let sigset = block_signals();
    let mnt = check_dir(&args.mnt)?;
    let listener = control::listen(&mnt).map_err(|e| anyhow!("control socket: {e}"))?;
    if args.ready_fd.is_some() {
        redirect_output_to(&browse_log(&mnt))?;
    }
    let repo_path = canonical(&args.repo);
    let repo = Repo::open(&repo_path)?;
    let objects = Arc::new(Objects::open(repo.store(), None)?);
    let all = snapshot::list(&**objects.store())?;
    if all.is_empty() {
        log::warn!("{} has no snapshots yet", repo_path.display());
    }
    let view = Arc::new(crate::view::View::new(objects, repo.block_size(), args.snapshot.clone()));
    let root = match &args.snapshot {
        Some(name) => {
            let info = snapshot::find(&all, name)?;
            view.pin_snapshot_root(&info.record.name).map_err(|e| anyhow!("snapshot {name}: {e}"))?
        }
        None => crate::view::VIEW_ROOT,
    };
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName(format!("snapfs-browse:{}", repo_path.display())),
        fuser::MountOption::Subtype("snapfs".into()),
        fuser::MountOption::DefaultPermissions,
        fuser::MountOption::RO,
    ];
    config.acl = fuser::SessionACL::All;
    config.n_threads = Some(2);
    let session = fuser::Session::new(crate::fuse::Guarded(crate::fuse::BrowseFuse::new(view, root)), &mnt, &config)
        .with_context(|| format!("mounting {}", mnt.display()))?;
    tune_bdi(&mnt, false);
    let in_flight = Arc::new(std::sync::RwLock::new(()));
    {
        let (mnt, in_flight, repo_path) = (mnt.clone(), in_flight.clone(), repo_path.clone());
        std::thread::Builder::new().name("control".into()).spawn(move || {
            control::serve(listener, in_flight, move |req| match req {
                Request::Unmount { lazy } => match umount(&mnt, lazy) {
                    Ok(()) => Reply::ok(),
                    Err(e) => Reply::err(format!("unmount failed: {e}")),
                },
                Request::Status { .. } => Reply {
                    status: Some(StatusReport {
                        mounted: true,
                        mountpoint: mnt.display().to_string(),
                        repository: repo_path.display().to_string(),
                        pid: Some(std::process::id()),
                        last_session: "browse".into(),
                        ..Default::default()
                    }),
                    ..Reply::ok()
                },
                _ => Reply::err("a browse mount only answers status and unmount"),
            })
        })?;
    }
    {
        let mnt = mnt.clone();
        on_signals(sigset, move |lazy| umount(&mnt, lazy))?;
    }
    notify(args.ready_fd, "READY");
    let r = session.run();
    drop(in_flight.write().unwrap_or_else(|e| e.into_inner()));
    r.context("FUSE session")?;
    Ok(())
}

/// How often a failed state database is tried again.
const STATE_RETRY: Duration = Duration::from_secs(3);

/// Everything the control socket and the signal thread need.
struct Shared {
    dir: PathBuf,
    backing: PathBuf,
    repo_display: String,
    repo_access: String,
    repo_id: String,
    block_size: u64,
    live: Arc<LiveFs>,
    tracker: Arc<Tracker>,
    mounted_since: String,
    last: LastSession,
    scan: Mutex<Option<scan::ScanStats>>,
    /// The scan failed: the tracker may have missed changes, so the next
    /// snapshot compares everything.
    scan_failed: std::sync::atomic::AtomicBool,
    objects: Arc<Objects>,
    /// One snapshot at a time.
    snapshotting: Mutex<()>,
    progress: Mutex<Option<Arc<snapshot::Progress>>>,
    /// Readers of the whole repository (verify) share it; prune takes it
    /// alone (after `snapshotting`, never the other way round).
    maint: std::sync::RwLock<()>,
    /// Progress of a verify or prune.
    task: Mutex<Option<Arc<check::VerifyProgress>>>,
    health: Health,
    scheduler: Mutex<schedule::Scheduler>,
    /// The sled database (tracking state, index, health): after an I/O
    /// error it is reopened and written back from memory.
    state: Arc<StateDb>,
    /// Snapshots a restore or rollback is reading (id -> until when).
    held: Mutex<std::collections::HashMap<String, Instant>>,
    /// Taken by forget while it decides and removes, and by a new hold.
    forgetting: Mutex<()>,
}

impl Shared {
    fn status(&self, files: bool) -> StatusReport {
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
            dirty: self.tracker.summary(),
            files: if files { Some(self.tracker.entries_list()) } else { None },
            inodes: Some(self.live.inode_count()),
            scan: self.scan.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            health: Some({
                let mut h = crate::health::report(&**self.objects.store(), Some(&self.health));
                h.schedule = self.scheduler.lock().unwrap_or_else(|e| e.into_inner()).status_at(util::unix_now());
                h
            }),
        }
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
    fn recover_state(&self) -> Result<()> {
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
    fn held_ids(&self) -> std::collections::HashSet<String> {
        let mut h = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        h.retain(|_, until| *until > now);
        h.keys().cloned().collect()
    }

    /// Hold snapshot `id` for `secs` (it must still exist: checked while no
    /// forget runs).
    fn hold(&self, id: &str, secs: u64) -> Result<()> {
        let _no_forget = self.forgetting.lock().unwrap_or_else(|e| e.into_inner());
        if !snapshot::list(&**self.objects.store())?.iter().any(|s| s.id == id) {
            bail!("snapshot {id} does not exist (forgotten?)");
        }
        let until = Instant::now() + Duration::from_secs(secs.min(3600));
        self.held.lock().unwrap_or_else(|e| e.into_inner()).insert(id.to_string(), until);
        Ok(())
    }

    /// The repository answers and is the one we mounted with.
    fn check_repository(&self) -> Result<()> {
        match crate::repo::Repo::open(Path::new(&self.repo_access)) {
            Ok(r) if r.config.id == self.repo_id => Ok(()),
            Ok(_) => anyhow::bail!(
                "the repository at {} is not the one this mount started with (another repository mounted there?)",
                self.repo_display
            ),
            Err(e) => anyhow::bail!("the repository at {} is unreachable: {e}", self.repo_display),
        }
    }

    fn snapshot_inner(&self, name: Option<String>, full: bool) -> Result<SnapshotInfo> {
        let _one = self.snapshotting.lock().unwrap_or_else(|e| e.into_inner());
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

    /// The hard-link table of snapshot `s` (empty if it has none).
    fn links_of(&self, s: &SnapshotInfo) -> Result<snapshot::LinkTable> {
        Ok(match ObjectId::from_hex(&s.record.links) {
            Some(id) => snapshot::decode_links(&self.objects.get(&id, ObjKind::Meta)?).unwrap_or_default(),
            None => Default::default(),
        })
    }

    /// Run `work` with a progress that `snapfs` clients can ask for.
    fn with_task<T>(&self, p: Arc<check::VerifyProgress>, work: impl FnOnce() -> T) -> T {
        *self.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(p);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
        *self.task.lock().unwrap_or_else(|e| e.into_inner()) = None;
        r.unwrap_or_else(|p| std::panic::resume_unwind(p))
    }

    fn snapshot_locked(&self, name: Option<String>, full: bool) -> Result<SnapshotInfo> {
        let store = self.objects.store().clone();
        let all = snapshot::list(&*store)?;
        let name = match name {
            Some(n) => {
                if !snapshot::valid_name(&n) {
                    return Err(SnapError::BadName(n).into());
                }
                if all.iter().any(|s| s.record.name == n) {
                    return Err(SnapError::Duplicate(n).into());
                }
                n
            }
            None => {
                let base = snapshot::default_name(util::unix_now());
                let mut n = base.clone();
                let mut k = 1;
                while all.iter().any(|s| s.record.name == n) {
                    n = format!("{base}-{k}");
                    k += 1;
                }
                n
            }
        };
        // The scan for changes made while unmounted must be complete.
        while self.tracker.scan_pending() && !self.scan_failed.load(std::sync::atomic::Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let latest = all.last();
        let incremental = !full
            && !self.scan_failed.load(std::sync::atomic::Ordering::SeqCst)
            && latest.is_some()
            && self.tracker.base_snapshot().as_deref() == latest.map(|s| s.id.as_str());
        let prev_top = match latest {
            Some(l) => Some(l.root_tree()?),
            None => None,
        };
        let links_prev = match latest {
            Some(l) => self.links_of(l)?,
            None => Default::default(),
        };
        let progress = Arc::new(snapshot::Progress::default());
        let t0 = Instant::now();
        self.objects.take_stats();
        // The instant of the snapshot: hold writers only to seal the epoch and
        // start copy-before-write.
        let writers = self.live.pause_writers();
        let sealed = self.tracker.seal();
        let capture = Arc::new(Capture::new(
            self.objects.clone(),
            self.block_size,
            incremental.then(|| sealed.clone()),
            incremental && snapshot::links_force_walks(&links_prev, &sealed),
        ));
        self.live.begin_capture(capture.clone());
        drop(writers);
        let paused = t0.elapsed();
        // sealed: from now on `progress` answers
        *self.progress.lock().unwrap_or_else(|e| e.into_inner()) = Some(progress.clone());
        // (a panic is an error here too: the capture must end, the epoch unseal)
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> Result<SnapshotInfo> {
            let mut b = snapshot::Builder::new(
                &self.objects,
                self.block_size,
                if incremental { Some(&sealed) } else { None },
                links_prev,
            );
            b.set_progress(progress.clone());
            b.set_capture(&capture);
            let t_walk = Instant::now();
            let top = b.build(self.live.root_fd(), prev_top)?;
            if let Some(e) = capture.error() {
                anyhow::bail!("copy-before-write failed: {e}");
            }
            let (links, _) = self.objects.put(ObjKind::Meta, &snapshot::encode_links(b.links()))?;
            let t_flush = Instant::now();
            self.objects.flush()?;
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
            stats.duration_ms = snapshot::elapsed_ms(t0);
            stats.paused_us = paused.as_micros() as u64;
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            let record = SnapshotRecord {
                format: snapshot::RECORD_FORMAT,
                name: name.clone(),
                time: util::rfc3339(now.as_secs() as i64),
                time_sec: now.as_secs() as i64,
                time_nsec: now.subsec_nanos(),
                tree: top.hex(),
                links: links.hex(),
                parent: if incremental { latest.map(|l| l.id.clone()) } else { None },
                full: !incremental,
                source: self.dir.display().to_string(),
                host: hostname(),
                block_size: self.block_size,
                stats,
            };
            Ok(snapshot::commit(&*store, &record)?)
        }))
        .unwrap_or_else(|p| Err(anyhow::anyhow!("internal error: {}", util::panic_message(&*p))));
        self.live.end_capture();
        let out = match result {
            Ok(info) => {
                // The record is the commit point: the snapshot exists. The
                // tracker's memory has moved on even if saving it failed.
                if let Err(e) = self.tracker.commit(&info.id) {
                    log::error!("TRACKING STATE NOT SAVED after snapshot {}: {e}", info.record.name);
                    self.state.failed(&e);
                }
                Ok(info)
            }
            Err(e) => {
                self.objects.discard_pending();
                self.tracker.unseal();
                Err(e)
            }
        };
        *self.progress.lock().unwrap_or_else(|e| e.into_inner()) = None;
        match &out {
            Ok(i) => log::info!(
                "snapshot {} ({}) taken in {} ms, writers paused {} µs: {} read, {} added",
                i.record.name,
                &i.id[..12],
                i.record.stats.duration_ms,
                paused.as_micros(),
                util::human_bytes(i.record.stats.read_bytes),
                util::human_bytes(i.record.stats.added_bytes)
            ),
            Err(e) => log::error!("SNAPSHOT FAILED: {e:#}"),
        }
        out
    }

    /// `verify --live`: the live directory against the latest snapshot and
    /// the dirty set. Holds the snapshot lock (the dirty set only grows
    /// meanwhile).
    fn verify_live(&self) -> Result<crate::livecheck::LiveReport> {
        let _one = self.snapshotting.lock().unwrap_or_else(|e| e.into_inner());
        while self.tracker.scan_pending() && !self.scan_failed.load(std::sync::atomic::Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.scan_failed.load(std::sync::atomic::Ordering::SeqCst) {
            bail!("the mount-time scan failed: the next snapshot compares everything, there is no dirty set to check");
        }
        let all = snapshot::list(&**self.objects.store())?;
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
        let p = Arc::new(check::VerifyProgress::default());
        p.bytes_total.store(latest.record.stats.logical_bytes, std::sync::atomic::Ordering::Relaxed);
        let mut r = self.with_task(p.clone(), || {
            let record = |ino| self.tracker.record(ino);
            crate::livecheck::check(&self.objects, self.block_size, self.live.root_fd(), top, &links, &record, &p)
        })?;
        r.snapshot = latest.record.name.clone();
        r.snapshot_id = latest.id.clone();
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
        let all = snapshot::list(&**self.objects.store())?;
        let sa = snapshot::find(&all, a)?;
        let sb = snapshot::find(&all, b)?;
        diff_report(&self.objects, sa, sb)
    }

    /// `snapfs verify DIR`: check the repository while snapshots go on.
    fn verify(&self, opts: check::VerifyOptions, rebuild_index: bool) -> Result<check::VerifyReport> {
        let r = {
            let _readers = self.maint.read().unwrap_or_else(|e| e.into_inner());
            let p = Arc::new(check::VerifyProgress::default());
            self.with_task(p.clone(), || check::verify(&self.objects, &opts, &p))
                .inspect_err(|e| self.health.error("verify", &format!("{e:#}")))?
        };
        self.health.set_verify(&r);
        if !r.ok {
            log::error!("VERIFY FOUND DAMAGE: {}", check::summary(&r));
            self.health.error("verify", &check::summary(&r));
        }
        if rebuild_index && !r.index_problems.is_empty() {
            // not while a snapshot or a verify reads through the index
            let _one = self.snapshotting.lock().unwrap_or_else(|e| e.into_inner());
            let _alone = self.maint.write().unwrap_or_else(|e| e.into_inner());
            let n = self.objects.rebuild_index()?;
            log::info!("index rebuilt from {n} packs");
        }
        Ok(r)
    }

    fn forget(&self, names: &[String], policy: &maint::Policy, dry_run: bool) -> Result<maint::ForgetReport> {
        let _one = self.snapshotting.lock().unwrap_or_else(|e| e.into_inner());
        {
            let _forgetting = self.forgetting.lock().unwrap_or_else(|e| e.into_inner());
            maint::forget(&**self.objects.store(), names, policy, dry_run, None, &self.held_ids())
        }
        .inspect_err(|e| self.health.error("forget", &format!("{e:#}")))
    }

    /// One scheduled run: a snapshot named `auto-<time>`, then retention
    /// over the scheduled snapshots and a prune if it forgot any.
    fn scheduled_run(&self, keep: &maint::Policy) -> Result<String> {
        let all = snapshot::list(&**self.objects.store())?;
        let base = format!("{}{}", schedule::AUTO_PREFIX, snapshot::default_name(util::unix_now()));
        let mut name = base.clone();
        let mut k = 1;
        while all.iter().any(|s| s.record.name == name) {
            name = format!("{base}-{k}");
            k += 1;
        }
        let info = self.snapshot(Some(name), false)?;
        if keep.is_empty() {
            return Ok(info.record.name);
        }
        let forgot = {
            let _one = self.snapshotting.lock().unwrap_or_else(|e| e.into_inner());
            {
                let _forgetting = self.forgetting.lock().unwrap_or_else(|e| e.into_inner());
                maint::forget(&**self.objects.store(), &[], keep, false, Some(schedule::AUTO_PREFIX), &self.held_ids())?
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
    fn set_schedule(&self, s: Option<schedule::Schedule>) -> Result<()> {
        let latest = snapshot::list(&**self.objects.store())?.last().map(|l| l.record.time_sec);
        self.scheduler.lock().unwrap_or_else(|e| e.into_inner()).set(s.clone(), latest, util::unix_now());
        self.health.set_schedule(s.as_ref());
        match &s {
            Some(s) => log::info!("schedule: a snapshot every {}, keep {}", schedule::interval_text(s.every), s.keep),
            None => log::info!("schedule: off"),
        }
        Ok(())
    }

    /// Prune: no snapshot runs meanwhile, nor a verify.
    fn prune(&self, opts: &maint::PruneOptions) -> Result<maint::PruneReport> {
        let _one = self.snapshotting.lock().unwrap_or_else(|e| e.into_inner());
        let _alone = self.maint.write().unwrap_or_else(|e| e.into_inner());
        self.check_repository()?;
        self.recover_state().context("the state database cannot be written")?;
        let p = Arc::new(check::VerifyProgress::default());
        self.with_task(p.clone(), || maint::prune(&self.objects, opts, &p)).inspect_err(|e| {
            self.note_state_error(e);
            log::error!("PRUNE FAILED: {e:#}");
            self.health.error("prune", &format!("{e:#}"))
        })
    }

    /// Unmount ourselves; busy mounts are detached lazily when `lazy`.
    fn unmount(&self, lazy: bool) -> std::io::Result<()> {
        // Make the tracking state durable first: after a lazy unmount the
        // session may linger until the last open file is closed.
        if let Err(e) = self.tracker.flush() {
            log::error!("flushing tracking state: {e}");
        }
        umount(&self.dir, lazy)
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_default()
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

fn block_signals() -> libc::sigset_t {
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Report the outcome to the parent waiting on `ready_fd`.
/// A thread that waits for the blocked signals (SIGTERM, SIGINT, SIGHUP)
/// and unmounts; lazily if the mount is busy.
fn on_signals(
    sigset: libc::sigset_t,
    unmount: impl Fn(bool) -> std::io::Result<()> + Send + 'static,
) -> std::io::Result<()> {
    std::thread::Builder::new().name("signals".into()).spawn(move || loop {
        let mut sig: libc::c_int = 0;
        if unsafe { libc::sigwait(&sigset, &mut sig) } != 0 {
            continue;
        }
        log::info!("signal {sig}: unmounting");
        match unmount(false) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                log::warn!("mount busy; detaching lazily");
                if let Err(e) = unmount(true) {
                    log::error!("unmount failed: {e}");
                }
            }
            Err(e) => log::error!("unmount failed: {e}"),
        }
    })?;
    Ok(())
}

fn notify(ready_fd: Option<RawFd>, msg: &str) {
    if let Some(fd) = ready_fd {
        let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
        let _ = writeln!(f, "{msg}");
    }
}

fn run(args: MountArgs) -> Result<()> {
    let ready_fd = args.ready_fd;
    match setup_and_serve(args) {
        Ok(()) => Ok(()),
        Err(e) => {
            notify(ready_fd, &format!("ERROR {e:#}"));
            Err(e)
        }
    }
}

fn setup_and_serve(args: MountArgs) -> Result<()> {
    let sigset = block_signals();
    let dir = check_dir(&args.dir)?;
    // A daemon that was just unmounted may hold its socket for a moment
    // while its last threads exit: wait a little before calling it taken.
    let t0 = Instant::now();
    let listener = loop {
        match control::listen(&dir) {
            Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) && t0.elapsed() < Duration::from_secs(3) => {
                std::thread::sleep(Duration::from_millis(50))
            }
            r => break r,
        }
    };
    let listener = listener.map_err(|e| {
        if e.raw_os_error() == Some(libc::EADDRINUSE) {
            anyhow!("{} is already protected by a running snapfs daemon", dir.display())
        } else {
            anyhow!("control socket: {e}")
        }
    })?;
    let backing = match &args.backing {
        Some(b) => {
            let b = canonical(b);
            if !b.is_dir() {
                bail!("{}: backing directory does not exist or is not a directory", b.display());
            }
            b
        }
        None => dir.clone(),
    };
    // Opened before mounting: afterwards `dir` shows the mount, and this is
    // the only way to the real files.
    let bpath = cpath(&backing)?;
    let braw = unsafe { libc::open(bpath.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    if braw < 0 {
        bail!("{}: {}", backing.display(), std::io::Error::last_os_error());
    }
    let backing_fd = unsafe { OwnedFd::from_raw_fd(braw) };
    let root_st = sys::fstat(backing_fd.as_fd()).map_err(|e| anyhow!("{}: {e}", backing.display()))?;

    let (mut repo, repo_display) = match &args.repo {
        None => {
            let p = PathBuf::from(format!("/proc/self/fd/{}/{}", backing_fd.as_raw_fd(), live::REPO_NAME));
            let shown = backing.join(live::REPO_NAME).display().to_string();
            // Name the place as the user knows it, not by our descriptor.
            let shown_err = |e: crate::repo::RepoError| anyhow!(e.to_string().replace(&*p.to_string_lossy(), &shown));
            let repo = if p.exists() {
                Repo::open(&p).map_err(shown_err)?
            } else {
                Repo::init(&p, DEFAULT_BLOCK_SIZE).map_err(shown_err)?
            };
            (repo, shown)
        }
        Some(r) => {
            let r = canonical(r);
            if r.starts_with(&dir) {
                bail!(
                    "repository {} is inside the mount point {}; use the default ({}/{}) or a place outside",
                    r.display(),
                    dir.display(),
                    dir.display(),
                    live::REPO_NAME
                );
            }
            let repo = Repo::open(&r).map_err(|e| match e {
                crate::repo::RepoError::NotARepo(p) => {
                    anyhow!("{}: not a snapfs repository; create it with `snapfs init {}`", p.display(), p.display())
                }
                e => e.into(),
            })?;
            (repo, r.display().to_string())
        }
    };
    repo.lock()?;
    if ready_fd_is_background(&args) {
        redirect_output_to(&repo.log_path())?;
    }
    log::info!("protecting {} (backing {}, repository {})", dir.display(), backing.display(), repo_display);

    let bs = repo.block_size();
    let db = repo.open_state()?;
    let (tracker, last) = Tracker::open(&db, bs, root_st.st_ino, &dir.display().to_string())?;
    let objects = Arc::new(Objects::open(repo.store(), Some(&db))?);
    let tracker = Arc::new(tracker);
    let live_opts = live::Options { writeback: args.writeback, ..Default::default() };
    let live = Arc::new(LiveFs::new(backing_fd.as_fd(), tracker.clone(), live_opts)?);
    sys::raise_nofile_limit();
    unsafe { libc::umask(0) };

    let repo_access = match &args.repo {
        // through our descriptor of the backing directory: not via the mount
        None => format!("/proc/{}/fd/{}/{}", std::process::id(), backing_fd.as_raw_fd(), live::REPO_NAME),
        Some(_) => repo_display.clone(),
    };
    let shared = Arc::new(Shared {
        dir: dir.clone(),
        backing: backing.clone(),
        repo_display,
        repo_access,
        repo_id: repo.config.id.clone(),
        block_size: bs,
        live: live.clone(),
        tracker: tracker.clone(),
        mounted_since: util::rfc3339(util::unix_now()),
        last: last.clone(),
        scan: Mutex::new(None),
        scan_failed: std::sync::atomic::AtomicBool::new(false),
        objects: objects.clone(),
        snapshotting: Mutex::new(()),
        progress: Mutex::new(None),
        maint: std::sync::RwLock::new(()),
        task: Mutex::new(None),
        health: Health::open(&db)?,
        scheduler: Mutex::new(schedule::Scheduler::default()),
        state: db.clone(),
        held: Mutex::new(std::collections::HashMap::new()),
        forgetting: Mutex::new(()),
    });

    let t_close = tracker.clone();
    let on_destroy = Box::new(move || match t_close.close() {
        Ok(()) => log::info!("tracking state flushed and marked clean"),
        Err(e) => log::error!("could not save tracking state: {e}"),
    });
    let view = Arc::new(crate::view::View::new(objects.clone(), bs, None));
    let fs = SnapFuse::new(
        live.clone(),
        view,
        KernelOptions { writeback: args.writeback, ..Default::default() },
        on_destroy,
    );
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName(format!("snapfs:{}", backing.display())),
        fuser::MountOption::Subtype("snapfs".into()),
        fuser::MountOption::DefaultPermissions,
    ];
    config.acl = fuser::SessionACL::All;
    config.n_threads = Some(args.threads.max(1));
    let session = fuser::Session::new(crate::fuse::Guarded(fs), &dir, &config)
        .with_context(|| format!("mounting {}", dir.display()))?;
    log::info!("mounted {} (last session: {})", dir.display(), last_name(&last));
    tune_bdi(&dir, args.writeback);

    // Periodic durable points; after a failure of the state database,
    // attempts to reopen it every few seconds.
    {
        let shared = shared.clone();
        let every = Duration::from_millis(args.flush_ms.max(10));
        std::thread::Builder::new().name("flush".into()).spawn(move || {
            let mut last_try: Option<Instant> = None;
            let mut last_log: Option<Instant> = None;
            loop {
                std::thread::sleep(every);
                if shared.state.failure().is_some() {
                    if last_try.is_some_and(|t| t.elapsed() < STATE_RETRY) {
                        continue;
                    }
                    last_try = Some(Instant::now());
                    let guard = match shared.snapshotting.try_lock() {
                        Ok(g) => g,
                        Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
                        Err(std::sync::TryLockError::WouldBlock) => continue,
                    };
                    if let Err(e) = shared.recover_state() {
                        if last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                            last_log = Some(Instant::now());
                            log::error!("TRACKING STATE NOT SAVED: the state database is still failing: {e:#}");
                            shared.health.error("state", &format!("tracking state not saved: {e:#}"));
                        }
                    }
                    drop(guard);
                    continue;
                }
                if let Err(e) = shared.tracker.flush() {
                    log::error!("TRACKING STATE NOT SAVED: {e}");
                    shared.state.failed(&e);
                    shared.health.error("state", &format!("tracking state not saved: {e}"));
                    last_log = Some(Instant::now());
                }
            }
        })?;
    }
    // Changes made while we were not watching.
    if let Some(threshold) = last.scan_threshold() {
        let shared = shared.clone();
        let fd = backing_fd.try_clone()?;
        std::thread::Builder::new().name("scan".into()).spawn(move || {
            match scan::scan(fd.as_fd(), &shared.tracker, threshold) {
                Ok(stats) => {
                    log::info!(
                        "scan: {} entries in {} directories, {} changed while unwatched, {} ms",
                        stats.entries,
                        stats.dirs,
                        stats.changed,
                        stats.millis
                    );
                    *shared.scan.lock().unwrap_or_else(|e| e.into_inner()) = Some(stats);
                    shared.tracker.scan_done();
                    if let Err(e) = shared.tracker.flush() {
                        log::error!("TRACKING STATE NOT SAVED: {e}");
                    }
                }
                Err(e) => {
                    log::error!("scan of the backing directory failed: {e}; the next snapshot compares everything");
                    shared.scan_failed.store(true, std::sync::atomic::Ordering::SeqCst);
                }
            }
        })?;
    }
    // Control socket.
    let in_flight = Arc::new(std::sync::RwLock::new(()));
    {
        let shared = shared.clone();
        let in_flight = in_flight.clone();
        std::thread::Builder::new().name("control".into()).spawn(move || {
            control::serve(listener, in_flight, move |req| match req {
                Request::Status { files } => Reply { status: Some(shared.status(files)), ..Reply::ok() },
                Request::Flush => match shared.tracker.flush() {
                    Ok(()) => Reply::ok(),
                    Err(e) => Reply::err(e.to_string()),
                },
                Request::Unmount { lazy } => match shared.unmount(lazy) {
                    Ok(()) => Reply::ok(),
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Reply::err(format!(
                        "{} is busy (files are open); use --lazy to detach it anyway",
                        shared.dir.display()
                    )),
                    Err(e) => Reply::err(format!("unmount failed: {e}")),
                },
                Request::Snapshot { name: Some(n), .. } if n.starts_with(schedule::AUTO_PREFIX) => Reply::err(format!(
                    "snapshot failed: names starting with {} are the schedule's (its retention would remove them)",
                    schedule::AUTO_PREFIX
                )),
                Request::Snapshot { name, full } => match shared.snapshot(name, full) {
                    Ok(info) => Reply { snapshot: Some(info), ..Reply::ok() },
                    Err(e) => Reply::err(format!("snapshot failed: {e:#}")),
                },
                Request::Progress => {
                    let p = shared.progress.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    let t = shared.task.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    Reply { progress: p.map(|p| p.get()), task: t.map(|t| t.view()), ..Reply::ok() }
                }
                Request::Schedule { every, keep, off } => {
                    let keep_given = keep.is_some();
                    let cur = shared.scheduler.lock().unwrap_or_else(|e| e.into_inner()).schedule().cloned();
                    let new = if off {
                        None
                    } else {
                        match (every, cur) {
                            (Some(every), cur) => Some(schedule::Schedule {
                                every,
                                keep: keep.or(cur.map(|c| c.keep)).unwrap_or_default(),
                            }),
                            (None, Some(cur)) => Some(schedule::Schedule { keep: keep.unwrap_or(cur.keep), ..cur }),
                            (None, None) if keep.is_some() => {
                                return Reply::err("no schedule yet: give --every too");
                            }
                            (None, None) => None,
                        }
                    };
                    let changed = off || every.is_some() || keep_given;
                    match if changed { shared.set_schedule(new) } else { Ok(()) } {
                        Ok(()) => Reply { status: Some(shared.status(false)), ..Reply::ok() },
                        Err(e) => Reply::err(format!("{e:#}")),
                    }
                }
                Request::Forget { names, policy, dry_run } => match shared.forget(&names, &policy, dry_run) {
                    Ok(r) => Reply { forget: Some(r), ..Reply::ok() },
                    Err(e) => Reply::err(format!("forget failed: {e:#}")),
                },
                Request::Prune { dry_run, max_unused } => {
                    let opts = maint::PruneOptions {
                        dry_run,
                        max_unused: max_unused.unwrap_or(maint::PruneOptions::default().max_unused),
                    };
                    match shared.prune(&opts) {
                        Ok(r) => Reply { prune: Some(r), ..Reply::ok() },
                        Err(e) => Reply::err(format!("prune failed: {e:#}")),
                    }
                }
                Request::Verify { read_data, subset, rebuild_index } => {
                    let jobs = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
                    match shared.verify(check::VerifyOptions { read_data, subset, jobs }, rebuild_index) {
                        Ok(r) => Reply { verify: Some(r), ..Reply::ok() },
                        Err(e) => Reply::err(format!("verify failed: {e:#}")),
                    }
                }
                Request::Hold { snapshot, secs } => match shared.hold(&snapshot, secs) {
                    Ok(()) => Reply::ok(),
                    Err(e) => Reply::err(format!("{e:#}")),
                },
                Request::VerifyLive => match shared.verify_live() {
                    Ok(r) => Reply { live: Some(r), ..Reply::ok() },
                    Err(e) => Reply::err(format!("verify --live failed: {e:#}")),
                },
                Request::List => match snapshot::list(&**shared.objects.store()) {
                    Ok(l) => Reply { snapshots: Some(l), ..Reply::ok() },
                    Err(e) => Reply::err(e.to_string()),
                },
                Request::Diff { a, b } => match shared.diff(&a, &b) {
                    Ok(d) => Reply { diff: Some(d), ..Reply::ok() },
                    Err(e) => Reply::err(format!("{e:#}")),
                },
            })
        })?;
    }
    // Signals: unmount cleanly.
    {
        let shared = shared.clone();
        on_signals(sigset, move |lazy| shared.unmount(lazy))?;
    }

    // Automatic snapshots: the flags, or what was set on an earlier mount.
    let sched = match args.every {
        Some(every) => Some(schedule::Schedule { every, keep: args.keep.clone().unwrap_or_default() }),
        None => shared.health.schedule(),
    };
    if sched.is_some() {
        shared.set_schedule(sched)?;
    }
    {
        let shared = shared.clone();
        std::thread::Builder::new().name("schedule".into()).spawn(move || loop {
            std::thread::sleep(Duration::from_millis(250));
            let now = util::unix_now();
            let keep = {
                let s = shared.scheduler.lock().unwrap_or_else(|e| e.into_inner());
                if !s.due(now) {
                    continue;
                }
                s.schedule().map(|s| s.keep.clone()).unwrap_or_default()
            };
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| shared.scheduled_run(&keep)))
                .unwrap_or_else(|p| Err(anyhow::anyhow!("internal error: {}", util::panic_message(&*p))))
                .map_err(|e| format!("{e:#}"));
            if let Err(e) = &r {
                log::error!("SCHEDULED SNAPSHOT FAILED: {e}");
                shared.health.error("schedule", e);
            }
            shared.scheduler.lock().unwrap_or_else(|e| e.into_inner()).ran(now, util::unix_now(), r);
        })?;
    }

    notify(args.ready_fd, "READY");
    let t0 = Instant::now();
    let r = session.run();
    log::info!("session ended after {:?}", t0.elapsed());
    // `destroy` ran inside run(); make sure the state is clean even if not.
    if let Err(e) = tracker.close() {
        log::error!("could not save tracking state: {e}");
    }
    // Let the control thread send its reply to an `unmount` request.
    drop(in_flight.write().unwrap_or_else(|e| e.into_inner()));
    r.context("FUSE session")?;
    Ok(())
}

fn ready_fd_is_background(args: &MountArgs) -> bool {
    args.ready_fd.is_some()
}

fn redirect_output_to(path: &Path) -> Result<()> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("log {}", path.display()))?;
    unsafe {
        libc::dup2(f.as_raw_fd(), 1);
        libc::dup2(f.as_raw_fd(), 2);
    }
    Ok(())
}
