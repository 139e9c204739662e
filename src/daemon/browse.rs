//! `snapfs browse`: a repository's snapshots mounted read-only, with no
//! live daemon (a copy of a repository on another machine will do). Its
//! control socket answers `status` and `unmount`.

use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};

use super::process::{block_signals, notify, on_signals, redirect_output_to, spawn_daemon};
use super::{check_dir, tune_bdi, umount};
use crate::control::{self, Reply, Request, StatusReport};
use crate::repo::objstore::Objects;
use crate::repo::Repo;
use crate::snapshot;
use crate::util::RwLocked;

#[derive(Debug, Clone)]
pub struct BrowseArgs {
    /// A local path or an `s3:` URL.
    pub repo: String,
    pub mnt: PathBuf,
    pub snapshot: Option<String>,
    /// Other copies that reads hitting damage heal from (beside the
    /// replicas kept with the repository).
    pub heal_from: Vec<String>,
    pub foreground: bool,
    pub ready_fd: Option<RawFd>,
    /// The key of an encrypted repository.
    pub key: Option<std::sync::Arc<crate::repo::keyslot::KeySource>>,
}

/// `snapfs browse`: mount a repository's snapshots read-only, with no live
/// daemon (a copy of a repository on another machine will do).
pub fn browse(args: BrowseArgs) -> Result<()> {
    if !args.foreground {
        let mnt = check_dir(&args.mnt)?;
        let loc = crate::repo::Location::parse_canonical(&args.repo)?;
        let mut a: Vec<std::ffi::OsString> = vec!["browse".into(), "--repo".into(), loc.to_string().into()];
        if let Some(s) = &args.snapshot {
            a.extend(["--snapshot".into(), s.into()]);
        }
        for url in &args.heal_from {
            a.extend(["--heal-from".into(), url.into()]);
        }
        let pid = spawn_daemon(a, &mnt, args.key.as_deref())?;
        println!(
            "snapfs: snapshots of {} are at {} (read-only, pid {pid}, log {})",
            loc,
            mnt.display(),
            browse_log(&mnt)?.display()
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

/// Where a background browse daemon logs (damaged objects are reported
/// there): our private runtime directory, never a shared one like /tmp.
fn browse_log(mnt: &Path) -> Result<PathBuf> {
    let dir = control::own_runtime_dir().context("runtime directory")?;
    Ok(dir.join(format!("{}.log", control::socket_name(mnt))))
}

fn serve_browse(args: BrowseArgs) -> Result<()> {
    let sigset = block_signals();
    // SAFETY: umask cannot fail. Everything the daemon creates is private.
    unsafe { libc::umask(0o077) };
    let mnt = check_dir(&args.mnt)?;
    let listener = control::listen(&mnt).map_err(|e| anyhow!("control socket: {e}"))?;
    if args.ready_fd.is_some() {
        redirect_output_to(&browse_log(&mnt)?)?;
    }
    let mut repo = Repo::open_at(&crate::repo::Location::parse_canonical(&args.repo)?, None)?;
    repo.unlock_with(|| args.key.as_deref().map(|k| k.clone_source()))?;
    let repo_path = repo.location.to_string();
    let objects = Arc::new(Objects::open(repo.store(), None)?);
    // a read that hits damage heals from another copy
    objects.set_healer(Some(crate::ops::repair::healer(crate::ops::replica::heal_sources(&repo, &args.heal_from))));
    let all = snapshot::list(&**objects.store())?;
    if all.is_empty() {
        log::warn!("{repo_path} has no snapshots yet");
    }
    let view = Arc::new(crate::snapshot::view::View::new(objects, repo.block_size(), args.snapshot.clone()));
    let root = match &args.snapshot {
        Some(name) => {
            let info = snapshot::find(&all, name)?;
            view.pin_snapshot_root(&info.record.name).map_err(|e| anyhow!("snapshot {name}: {e}"))?
        }
        None => crate::snapshot::view::VIEW_ROOT,
    };
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName(format!("snapfs-browse:{repo_path}")),
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
                        repository: repo_path.clone(),
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
    crate::os::systemd::ready(&format!("showing the snapshots of {repo_path}"));
    let r = session.run();
    crate::os::systemd::stopping("unmounted");
    drop(in_flight.write_locked());
    r.context("FUSE session")?;
    Ok(())
}
