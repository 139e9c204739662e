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
//! `READY` or `ERROR <message>`. With `--foreground` under systemd
//! (`Type=notify`) the same moment sends `READY=1` to `$NOTIFY_SOCKET`, and
//! the unmount `STOPPING=1` (`os::systemd`).

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::control::{self};
use crate::fuse::{KernelOptions, SnapFuse};
use crate::live::{self, LiveFs};
use crate::ops::health::Health;
use crate::os::mounts::unescape;
pub use crate::os::mounts::{canonical, mounts, snapfs_mount_at, syncfs, umount, MountEntry};
use crate::repo::objstore::Objects;
use crate::repo::{Repo, DEFAULT_BLOCK_SIZE};
use crate::tracker::Tracker;
use crate::{ops::maint, ops::schedule, os::sys, util};

mod browse;
mod http;
mod process;
mod service;

use crate::util::RwLocked;
pub use browse::{browse, BrowseArgs};
use process::{block_signals, notify, on_signals, ready_fd_is_background, redirect_output_to, spawn_background};
use service::Service;
pub use service::{diff_report, last_name};

#[derive(Debug, Clone)]
pub struct MountArgs {
    pub dir: PathBuf,
    pub backing: Option<PathBuf>,
    /// A local path or an `s3:` URL.
    pub repo: Option<String>,
    /// Where the local state of a repository elsewhere goes (default: the
    /// backing directory's hidden `.snapfs/cache`).
    pub cache: Option<PathBuf>,
    pub foreground: bool,
    pub threads: usize,
    pub writeback: bool,
    pub flush_ms: u64,
    /// Serve Prometheus metrics over HTTP here.
    pub metrics: Option<std::net::SocketAddr>,
    pub ready_fd: Option<RawFd>,
    /// Automatic snapshots every this many seconds.
    pub every: Option<u64>,
    /// Automatic snapshots when this many bytes are dirty.
    pub max_dirty: Option<u64>,
    /// Automatic snapshots before a change is unprotected for longer than this (s).
    pub max_age: Option<u64>,
    /// With `max_age`: as soon as writes have paused this long (s).
    pub settle: Option<u64>,
    /// Retention for automatic snapshots.
    pub keep: Option<maint::Policy>,
    /// Replicas to add (kept with the repository; earlier ones stay).
    pub replicas: Vec<String>,
    /// The host name of its snapshots (default: this machine's).
    pub host: Option<String>,
    /// The key of an encrypted repository (also: a new default repository
    /// is made encrypted with it).
    pub key: Option<std::sync::Arc<crate::repo::keyslot::KeySource>>,
}

fn cpath(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| anyhow!("path contains a NUL byte"))
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

impl MountArgs {
    /// The schedule the flags give (None: none given, an earlier mount's
    /// applies), or why it cannot be followed.
    fn schedule(&self) -> Result<Option<schedule::Schedule>> {
        let s = schedule::Schedule {
            every: self.every,
            max_dirty: self.max_dirty,
            max_age: self.max_age,
            settle: self.settle,
            keep: self.keep.clone().unwrap_or_default(),
        };
        if !s.has_trigger() {
            if self.keep.is_some() || self.settle.is_some() {
                bail!("--keep and --settle need a schedule: give --every, --max-age or --max-dirty too");
            }
            return Ok(None);
        }
        s.check().map_err(|e| anyhow!("{e}"))?;
        Ok(Some(s))
    }
}

pub fn mount(args: MountArgs) -> Result<()> {
    // a schedule that cannot be followed fails here, not in the background
    args.schedule()?;
    if args.foreground {
        run(args)
    } else {
        spawn_background(&args)
    }
}

/// Refuse layouts where the mount would serve itself or hold its own
/// repository: `/`; a mount point inside its backing directory (every
/// worker would wait on its own mount); a backing directory inside the
/// mount point; a repository inside the backing directory other than the
/// hidden `.snapfs` (it would show through the mount and go into its own
/// snapshots) or inside the mount point.
fn check_layout(dir: &Path, backing: &Path, repo: Option<&Path>) -> Result<()> {
    if dir == Path::new("/") || backing == Path::new("/") {
        bail!("refusing to protect / (the daemon's own files, /proc and the repository would be beneath the mount)");
    }
    if dir != backing && dir.starts_with(backing) {
        bail!(
            "{} is inside its backing directory {}: the mount would serve itself; choose a mount point outside it",
            dir.display(),
            backing.display()
        );
    }
    if dir != backing && backing.starts_with(dir) {
        bail!("backing directory {} is inside the mount point {}", backing.display(), dir.display());
    }
    if let Some(r) = repo {
        if r.starts_with(dir) {
            bail!(
                "repository {} is inside the mount point {}; use the default ({}/{}) or a place outside",
                r.display(),
                dir.display(),
                dir.display(),
                live::REPO_NAME
            );
        }
        if r.starts_with(backing) && r != backing.join(live::REPO_NAME) {
            bail!(
                "repository {} is inside the backing directory {}: it would show through the mount and go into \
                 its own snapshots; use the default ({}/{}) or a place outside",
                r.display(),
                backing.display(),
                backing.display(),
                live::REPO_NAME
            );
        }
        if backing.starts_with(r) || dir.starts_with(r) {
            bail!("the protected directory is inside the repository {}", r.display());
        }
    }
    Ok(())
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
    // SAFETY: umask cannot fail. Everything the daemon creates for itself
    // is private; threads serving creates through the mount get a umask of
    // their own (`creds::caller_umask`).
    unsafe { libc::umask(0o077) };
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
    let location = args.repo.as_deref().map(crate::repo::Location::parse_canonical).transpose()?;
    let local_repo = match &location {
        Some(crate::repo::Location::Local(p)) => Some(p.clone()),
        _ => None,
    };
    check_layout(&dir, &backing, local_repo.as_deref())?;
    if let Some(c) = &args.cache {
        check_layout(&dir, &backing, Some(&canonical(c)))?;
    }
    // Opened before mounting: afterwards `dir` shows the mount, and this is
    // the only way to the real files.
    let bpath = cpath(&backing)?;
    // SAFETY: every pointer is to a buffer or C string that outlives the call, passed with its true length; the result is checked.
    let braw = unsafe { libc::open(bpath.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    if braw < 0 {
        bail!("{}: {}", backing.display(), std::io::Error::last_os_error());
    }
    // SAFETY: the descriptor was just returned by the kernel (checked) and nothing else owns or closes it.
    let backing_fd = unsafe { OwnedFd::from_raw_fd(braw) };
    let root_st = sys::fstat(backing_fd.as_fd()).map_err(|e| anyhow!("{}: {e}", backing.display()))?;

    let (mut repo, repo_display) = match location {
        None => {
            let p = PathBuf::from(format!("/proc/self/fd/{}/{}", backing_fd.as_raw_fd(), live::REPO_NAME));
            let shown = backing.join(live::REPO_NAME).display().to_string();
            // Name the place as the user knows it, not by our descriptor.
            let shown_err = |e: crate::repo::RepoError| anyhow!(e.to_string().replace(&*p.to_string_lossy(), &shown));
            let repo = if p.exists() {
                Repo::open(&p).map_err(shown_err)?
            } else {
                let enc = args.key.as_deref().map(|source| crate::repo::Encryption { source, kdf: Default::default() });
                let r = Repo::init_with(&p, DEFAULT_BLOCK_SIZE, enc.as_ref()).map_err(shown_err)?;
                if !r.is_encrypted() {
                    log::warn!("made the repository {shown}, NOT encrypted (give a key to mount to encrypt a new one)");
                }
                r
            };
            (repo, shown)
        }
        Some(loc) => {
            // a repository elsewhere keeps its local state in a cache: by
            // default the backing directory's hidden .snapfs
            let cache = match &args.cache {
                Some(c) => canonical(c),
                None => {
                    let hidden = PathBuf::from(format!("/proc/self/fd/{}/{}", backing_fd.as_raw_fd(), live::REPO_NAME));
                    if !loc.is_local() {
                        match crate::os::private::create_dir(&hidden) {
                            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                                bail!("{}/{}: {e}", backing.display(), live::REPO_NAME)
                            }
                            _ => {}
                        }
                    }
                    hidden.join("cache")
                }
            };
            let repo = Repo::open_at(&loc, Some(&cache)).map_err(|e| match e {
                crate::repo::RepoError::NotARepo(p) => {
                    anyhow!("{}: not a snapfs repository; create it with `snapfs init {}`", p.display(), p.display())
                }
                e => e.into(),
            })?;
            (repo, loc.to_string())
        }
    };
    repo.unlock_with(|| args.key.as_deref().map(|k| k.clone_source()))?;
    repo.lock()?;
    if ready_fd_is_background(&args) {
        redirect_output_to(&repo.log_path())?;
    }
    // A repository made by an older snapfs (or by hand) others could read
    // or write: make it private before anything goes into it.
    let exposed = crate::os::private::exposure(&repo.path);
    if !exposed.is_empty() {
        let n = crate::os::private::tighten(&repo.path).with_context(|| format!("making {repo_display} private"))?;
        log::warn!(
            "repository {repo_display} was not private ({}); made {n} files and directories private",
            exposed.join("; ")
        );
    }
    if repo.upgrade()? {
        log::warn!(
            "repository {repo_display} upgraded to format {}: snapfs before this version cannot read its new snapshots",
            crate::repo::FORMAT_VERSION
        );
    }
    log::info!("protecting {} (backing {}, repository {})", dir.display(), backing.display(), repo_display);

    let bs = repo.block_size();
    // A damaged state database (sled refuses it, or it holds records that
    // do not decode) is moved aside and started anew: it holds nothing
    // that cannot be rebuilt.
    let (mut db, mut repaired) = repo.open_state_repaired()?;
    let (tracker, last) = loop {
        match Tracker::open(&db, bs, root_st.st_ino, &dir.display().to_string()) {
            Err(e @ (crate::tracker::TrackerError::Corrupt(_) | crate::tracker::TrackerError::Db(_)))
                if repaired.is_none() =>
            {
                drop(db);
                repaired = Some(repo.quarantine_state(&e.to_string())?);
                db = repo.open_state()?;
            }
            r => break r?,
        }
    };
    let objects = Arc::new(Objects::open(repo.store(), Some(&db))?);
    let tracker = Arc::new(tracker);
    let live_opts = live::Options { writeback: args.writeback, ..Default::default() };
    let live = Arc::new(LiveFs::new(backing_fd.as_fd(), tracker.clone(), live_opts)?);
    sys::raise_nofile_limit();

    // Replicas: those kept with the repository, and any new ones named now.
    let replicas =
        Arc::new(crate::ops::replica::Replicas::open(&repo.path, repo.store(), repo.config.clone(), Box::new(|_| {})));
    for url in &args.replicas {
        match replicas.add(url) {
            Ok(u) => log::info!("replica {u} added"),
            Err(e) if e.to_string().contains("is a replica already") => {}
            Err(e) => bail!("replica {url}: {}", util::with_causes(&e)),
        }
    }
    // A read of .snapshots that hits damage heals from a replica.
    objects.set_healer(Some({
        let reps = replicas.clone();
        crate::ops::repair::healer(move || reps.sources())
    }));
    // The repository on the disk it protects is no backup against that disk.
    let same_device = repo.location.is_local()
        && std::fs::metadata(&repo.path).map(|m| std::os::unix::fs::MetadataExt::dev(&m)).ok() == Some(root_st.st_dev);
    let repo_access = match &args.repo {
        // through our descriptor of the backing directory: not via the mount
        None => format!("/proc/{}/fd/{}/{}", std::process::id(), backing_fd.as_raw_fd(), live::REPO_NAME),
        Some(_) => repo_display.clone(),
    };
    let host = args.host.clone().unwrap_or_else(util::hostname);
    let lineage = repo
        .store()
        .shared()
        .then(|| crate::snapshot::Lineage { host: host.clone(), source: dir.display().to_string() });
    let shared = Arc::new(Service {
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
        health: {
            let h = Health::open(&db)?;
            if let Some(note) = &repaired {
                h.error("state", note);
            }
            h
        },
        scheduler: Mutex::new(schedule::Scheduler::default()),
        retention_skipped: Default::default(),
        state: db.clone(),
        held: Mutex::new(std::collections::HashMap::new()),
        forgetting: Mutex::new(()),
        replicas: replicas.clone(),
        same_device,
        host: host.clone(),
        lineage: lineage.clone(),
        committed: Mutex::new(Default::default()),
        ops: Arc::new(crate::fuse::opstats::OpStats::new()),
    });

    let t_close = tracker.clone();
    let on_destroy = Box::new(move || match t_close.close() {
        Ok(()) => log::info!("tracking state flushed and marked clean"),
        Err(e) => log::error!("could not save tracking state: {e}"),
    });
    let view = Arc::new(crate::snapshot::view::View::new(objects.clone(), bs, None));
    view.set_lineage(lineage);
    let fs = SnapFuse::new(
        live.clone(),
        view,
        KernelOptions { writeback: args.writeback, ..Default::default() },
        on_destroy,
        shared.ops.clone(),
    );
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName(format!("snapfs:{}", backing.display())),
        fuser::MountOption::Subtype("snapfs".into()),
        fuser::MountOption::DefaultPermissions,
    ];
    config.acl = fuser::SessionACL::All;
    config.n_threads = Some(args.threads.max(1));
    // the metrics address is taken before mounting: a bad one fails the mount
    let metrics = args
        .metrics
        .map(|addr| std::net::TcpListener::bind(addr).with_context(|| format!("--metrics {addr}: cannot listen there")))
        .transpose()?;
    let session = fuser::Session::new(crate::fuse::Guarded(fs), &dir, &config)
        .with_context(|| format!("mounting {}", dir.display()))?;
    log::info!("mounted {} (last session: {})", dir.display(), last_name(&last));
    tune_bdi(&dir, args.writeback);

    // Periodic durable points; after a failure of the state database,
    // attempts to reopen it every few seconds.
    {
        let shared = shared.clone();
        let every = Duration::from_millis(args.flush_ms.max(10));
        std::thread::Builder::new().name("flush".into()).spawn(move || shared.flush_loop(every))?;
    }
    // Changes made while we were not watching.
    if let Some(threshold) = last.scan_threshold() {
        let shared = shared.clone();
        let fd = backing_fd.try_clone()?;
        std::thread::Builder::new().name("scan".into()).spawn(move || shared.scan_unwatched(fd, threshold))?;
    }
    // Control socket.
    let in_flight = Arc::new(std::sync::RwLock::new(()));
    {
        let shared = shared.clone();
        let in_flight = in_flight.clone();
        std::thread::Builder::new()
            .name("control".into())
            .spawn(move || control::serve(listener, in_flight, move |req| shared.handle(req)))?;
    }
    std::thread::Builder::new().name("replicas".into()).spawn(move || replicas.run())?;
    if let Some(l) = metrics {
        log::info!("metrics at http://{}/metrics", l.local_addr()?);
        let shared = shared.clone();
        std::thread::Builder::new().name("metrics".into()).spawn(move || shared.serve_metrics(l))?;
    }
    // Signals: unmount cleanly.
    {
        let shared = shared.clone();
        on_signals(sigset, move |lazy| shared.unmount(lazy))?;
    }

    // Automatic snapshots: the flags, or what was set on an earlier mount.
    let sched = match args.schedule()? {
        Some(s) => Some(s),
        None => shared.health.schedule(),
    };
    if sched.is_some() {
        shared.set_schedule(sched)?;
    }
    {
        let shared = shared.clone();
        std::thread::Builder::new().name("schedule".into()).spawn(move || shared.schedule_loop())?;
    }

    notify(args.ready_fd, "READY");
    crate::os::systemd::ready(&format!("protecting {}", dir.display()));
    let t0 = Instant::now();
    let r = session.run();
    // (unmounted by someone else: the service manager hears it now)
    crate::os::systemd::stopping("unmounted");
    log::info!("session ended after {:?}", t0.elapsed());
    // `destroy` ran inside run(); make sure the state is clean even if not.
    if let Err(e) = tracker.close() {
        log::error!("could not save tracking state: {e}");
    }
    // Let the control thread send its reply to an `unmount` request.
    drop(in_flight.write_locked());
    r.context("FUSE session")?;
    Ok(())
}
