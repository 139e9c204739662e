//! The client side of the command line: each command talks to a mount's
//! daemon (over the control socket) or works on a repository offline, and
//! prints what it found (text, or `--json`). `main.rs` holds the argument
//! definitions only.

pub mod generate;
pub mod keys;
pub mod maint;
pub mod mount_helper;
pub mod progress;
pub mod recovery;
pub mod snapshots;
pub mod status;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use snapfs::control::{self, Request};
use snapfs::daemon::{self, MountArgs};
use snapfs::repo::{self, Repo};
use snapfs::util;

use crate::{Cli, Cmd, KeyCmd, ReplicaCmd, Triggers};
use maint as cli_maint;
use recovery::rollback;
use snapshots::{diff, list, print_diff, print_list, take_snapshot};
use status::{print_ops, print_replica, print_schedule, print_status, status};

/// Carry out one command.
/// The key options of this run (for every repository a command opens).
static KEY_ARGS: std::sync::OnceLock<keys::KeyArgs> = std::sync::OnceLock::new();

pub(crate) fn key_args() -> &'static keys::KeyArgs {
    KEY_ARGS.get_or_init(keys::KeyArgs::default)
}

pub(crate) fn run(cli: Cli) -> Result<()> {
    let _ = KEY_ARGS.set(cli.keys.clone());
    match cli.cmd {
        Cmd::Init {
            block_size,
            encryption,
            kdf_memory,
            kdf_iterations,
            copy_from,
            from_password_file,
            from_key_file,
            json,
            repo,
        } => {
            let mut bs =
                util::parse_size(&block_size).with_context(|| format!("cannot read block size {block_size:?}"))?;
            let loc = repo::Location::parse_canonical(&repo)?;
            // the old repository first: its key, and its block size (that of its blocks)
            let old = match &copy_from {
                Some(old) => {
                    let from_keys = keys::KeyArgs {
                        password_file: from_password_file,
                        key_file: from_key_file,
                        ..Default::default()
                    };
                    let mut o = Repo::open_at(&repo::Location::parse_canonical(old)?, None)?;
                    from_keys.unlock_no_env(&mut o)?;
                    if block_size != "64K" && bs != o.block_size() {
                        bail!(
                            "--copy-from keeps the old repository's block size ({})",
                            util::human_bytes(o.block_size())
                        );
                    }
                    bs = o.block_size();
                    Some(o)
                }
                None => None,
            };
            let mut made = None;
            let src = match encryption.as_str() {
                "none" => None,
                _ => {
                    let (s, m) = keys::new_source(None, None, Some(&cli.keys))?;
                    made = m;
                    Some(s)
                }
            };
            let kdf = keys::kdf(kdf_memory, kdf_iterations)?;
            let enc = src.as_ref().map(|source| repo::Encryption { source, kdf });
            let r = Repo::init_at(&loc, bs, None, enc.as_ref())?;
            let how = if r.is_encrypted() { "encrypted" } else { "NOT encrypted" };
            if !json {
                println!(
                    "created repository {} (id {}, block size {}, {how})",
                    r.location,
                    r.config.id,
                    util::human_bytes(bs)
                );
                if let Some(p) = &made {
                    println!("key file {} made: keep a copy elsewhere, it opens the repository", p.display());
                }
            }
            let copied = match &old {
                None => None,
                Some(o) => {
                    let from = snapfs::repo::objstore::Objects::open(o.store(), None)?;
                    let to = snapfs::repo::objstore::Objects::open(r.store(), None)?;
                    Some(snapfs::ops::copy::copy_history(&from, &to, |s, rep| {
                        if !json {
                            println!(
                                "copied {} ({} objects, {} so far)",
                                s.record.name,
                                rep.objects,
                                util::human_bytes(rep.bytes)
                            )
                        }
                    })?)
                }
            };
            if json {
                let out = serde_json::json!({
                    "repository": r.location.to_string(),
                    "id": r.config.id,
                    "block_size": bs,
                    "encrypted": r.is_encrypted(),
                    "key_file": made.as_ref().map(|p| p.display().to_string()),
                    "copied": copied,
                });
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else if let (Some(o), Some(rep)) = (old, copied) {
                println!(
                    "copied {} snapshots of {} ({} objects, {}){}",
                    rep.snapshots,
                    o.location,
                    rep.objects,
                    util::human_bytes(rep.bytes),
                    if rep.skipped > 0 {
                        format!("; {} damaged records left behind", rep.skipped)
                    } else {
                        String::new()
                    }
                );
            }
            Ok(())
        }
        Cmd::Key { what } => {
            let (repo, dir, kdf) = match &what {
                KeyCmd::List { repo, dir, .. } => (repo, dir.clone(), (None, None)),
                KeyCmd::Add { repo, dir, kdf_memory, kdf_iterations, .. }
                | KeyCmd::Passwd { repo, dir, kdf_memory, kdf_iterations, .. } => {
                    (repo, dir.clone(), (*kdf_memory, *kdf_iterations))
                }
                KeyCmd::Remove { repo, args } => match (repo, args.as_slice()) {
                    (Some(_), [_]) => (repo, None, (None, None)),
                    (None, [d, _]) => (repo, Some(PathBuf::from(d)), (None, None)),
                    _ => bail!("give DIR SLOT, or --repo REPO SLOT"),
                },
            };
            let mut r = repo_for(dir.as_deref(), repo.as_deref())?;
            let kdf = keys::kdf(kdf.0, kdf.1)?;
            let op = match &what {
                KeyCmd::List { json, .. } => keys::KeyOp::List { json: *json },
                KeyCmd::Add { write_only, new_password_file, new_key_file, .. } => keys::KeyOp::Add {
                    write_only: *write_only,
                    new_password_file: new_password_file.as_deref(),
                    new_key_file: new_key_file.as_deref(),
                    kdf,
                },
                KeyCmd::Remove { args, .. } => keys::KeyOp::Remove { name: args.last().expect("checked above") },
                KeyCmd::Passwd { new_password_file, new_key_file, .. } => keys::KeyOp::Passwd {
                    new_password_file: new_password_file.as_deref(),
                    new_key_file: new_key_file.as_deref(),
                    kdf,
                },
            };
            keys::key(&mut r, &cli.keys, op)
        }
        Cmd::Mount {
            backing,
            repo,
            cache,
            replicas,
            host,
            foreground,
            threads,
            no_writeback,
            flush_ms,
            metrics,
            triggers: Triggers { every, max_dirty, max_age, settle, keep },
            ready_fd,
            dir,
        } => {
            let writeback = !no_writeback;
            let local = backing.as_deref().unwrap_or(&dir).join(snapfs::live::REPO_NAME);
            let key = cli.keys.for_repo(|| match &repo {
                Some(r) => repo::Location::parse_canonical(r).ok(),
                None => Some(repo::Location::Local(local.clone())),
            })?;
            daemon::mount(MountArgs {
                key,
                dir,
                backing,
                repo,
                cache,
                replicas,
                host,
                foreground,
                threads,
                writeback,
                flush_ms,
                metrics,
                ready_fd,
                every,
                max_dirty,
                max_age,
                settle,
                keep,
            })
        }
        Cmd::Schedule { triggers: Triggers { every, max_dirty, max_age, settle, keep }, off, json, dir } => {
            let d = daemon::canonical(&dir);
            if daemon::snapfs_mount_at(&d).is_none() {
                bail!("{} is not a snapfs mount; give the schedule to `snapfs mount --every`", d.display());
            }
            let req = Request::Schedule { every, max_dirty, max_age, settle, keep, off };
            let r = control::call(&d, &req, Duration::from_secs(60))
                .with_context(|| format!("asking the daemon of {}", d.display()))?;
            let st = r.answer("status", |r| r.status)?;
            let sched = st.health.and_then(|h| h.schedule);
            if json {
                println!("{}", serde_json::to_string_pretty(&sched)?);
            } else {
                match sched {
                    None => println!("no automatic snapshots"),
                    Some(s) => print_schedule(&s),
                }
            }
            Ok(())
        }
        Cmd::Umount { lazy, dir } => umount(&dir, lazy),
        Cmd::Forget {
            repo,
            keep_last,
            keep_hourly,
            keep_daily,
            keep_weekly,
            keep_monthly,
            keep_yearly,
            dry_run,
            prune,
            json,
            out,
            args,
        } => {
            let (dir, names) = match repo {
                Some(_) => (None, args),
                None => match args.split_first() {
                    Some((d, rest)) => (Some(PathBuf::from(d)), rest.to_vec()),
                    None => bail!("give DIR [NAME...], or --repo REPO [NAME...]"),
                },
            };
            let policy = snapfs::ops::maint::Policy {
                last: keep_last,
                hourly: keep_hourly,
                daily: keep_daily,
                weekly: keep_weekly,
                monthly: keep_monthly,
                yearly: keep_yearly,
            };
            cli_maint::forget(cli_maint::ForgetArgs {
                dir: dir.as_deref(),
                repo: repo.as_deref(),
                names,
                policy,
                dry_run,
                prune,
                json,
                out: &out,
            })
        }
        Cmd::Prune { repo, dry_run, max_unused, grace, json, out, dir } => cli_maint::prune(cli_maint::PruneArgs {
            dir: dir.as_deref(),
            repo: repo.as_deref(),
            dry_run,
            max_unused: max_unused.map(|p| p / 100.0),
            grace_secs: grace,
            json,
            out: &out,
        }),
        Cmd::Verify { live: true, json, out, dir: Some(dir), .. } => cli_maint::verify_live(&dir, json, &out),
        Cmd::Verify { repo, read_data, subset, rebuild_index, repair, from, jobs, json, out, dir, .. } => {
            cli_maint::verify(cli_maint::VerifyArgs {
                dir: dir.as_deref(),
                repo: repo.as_deref(),
                read_data,
                subset,
                rebuild_index,
                repair,
                from: &from,
                jobs,
                json,
                out: &out,
            })
        }
        Cmd::Restore { repo, jobs, overwrite, heal_from, json, out, args } => {
            let show = out.show(json); // (before anything logs: --quiet mutes that)
            let (dir, spec, target) = match (repo.is_some(), args.as_slice()) {
                (true, [s, t]) => (None, s.clone(), PathBuf::from(t)),
                (false, [d, s, t]) => (Some(PathBuf::from(d)), s.clone(), PathBuf::from(t)),
                _ => bail!("give DIR SNAPSHOT[:PATH] TARGET, or --repo REPO SNAPSHOT[:PATH] TARGET"),
            };
            let (name, sub) = spec.split_once(':').unwrap_or((spec.as_str(), ""));
            check_heal_from(&heal_from)?;
            let r = repo_for(dir.as_deref(), repo.as_deref())?;
            let objects = snapfs::repo::objstore::Objects::open(r.store(), None)?;
            // a read that hits damage heals from another copy
            objects.set_healer(Some(snapfs::ops::repair::healer(snapfs::ops::replica::heal_sources(&r, &heal_from))));
            let all = snapfs::snapshot::list(&*r.store())?;
            let snap = snapfs::snapshot::find(&all, name)?;
            let _hold = match (&dir, repo.is_none()) {
                (Some(d), true) => Hold::start(d, &snap.id)?,
                _ => None,
            };
            let jobs = jobs.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2));
            let t0 = Instant::now();
            let watch = std::sync::Arc::new(snapfs::ops::restore::RestoreProgress::default());
            let opts = snapfs::ops::restore::RestoreOptions { jobs, overwrite, progress: Some(watch.clone()) };
            let stats = progress::run(
                show,
                "restore",
                || Some(progress::Tick::of_restore(&watch)),
                || snapfs::ops::restore::restore(&objects, snap, sub, &target, &opts),
                |_| progress::Final::Tick(progress::Tick::of_restore(&watch)),
            )?;
            if out.quiet {
                return Ok(());
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&stats)?);
            } else {
                println!(
                    "restored {}{} to {}: {} files, {} directories, {} other, {} hard links; {} written, {} already right, in {:.1} s",
                    snap.record.name,
                    if sub.is_empty() { String::new() } else { format!(":{sub}") },
                    target.display(),
                    stats.files,
                    stats.dirs,
                    stats.others,
                    stats.links,
                    util::human_bytes(stats.written),
                    util::human_bytes(stats.kept),
                    t0.elapsed().as_secs_f64()
                );
            }
            Ok(())
        }
        Cmd::Rollback { json, dir, snapshot, path } => rollback(&dir, &snapshot, path.as_deref().unwrap_or(""), json),
        Cmd::Browse { repo, snapshot, heal_from, foreground, ready_fd, mnt } => {
            check_heal_from(&heal_from)?;
            let key = cli.keys.for_repo(|| repo::Location::parse_canonical(&repo).ok())?;
            daemon::browse(daemon::BrowseArgs { repo, mnt, snapshot, heal_from, foreground, ready_fd, key })
        }
        Cmd::Snapshot { name, full, json, out, dir } => take_snapshot(&dir, name, full, json, &out),
        Cmd::List { repo, hosts, json, dir } => {
            let mut all = list(dir.as_deref(), repo.as_deref())?;
            if !hosts.is_empty() {
                all.retain(|s| hosts.contains(&s.record.host));
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                print_list(&all);
            }
            Ok(())
        }
        Cmd::Diff { repo, json, args } => {
            let (dir, a, b) = match (repo.is_some(), args.as_slice()) {
                (true, [a, b]) => (None, a, b),
                (false, [d, a, b]) => (Some(PathBuf::from(d)), a, b),
                _ => bail!("give DIR A B, or --repo REPO A B"),
            };
            let d = diff(dir.as_deref(), repo.as_deref(), a, b)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&d)?);
            } else {
                print_diff(&d);
            }
            Ok(())
        }
        Cmd::Replica { what } => {
            let mut out = progress::ProgressArgs { progress: progress::When::None, quiet: false };
            let (dir, req, json) = match what {
                ReplicaCmd::Add { json, dir, url } => {
                    (dir, Request::Replica { add: Some(url), remove: None, sync: false }, json)
                }
                ReplicaCmd::Remove { json, dir, url } => {
                    (dir, Request::Replica { add: None, remove: Some(url), sync: false }, json)
                }
                ReplicaCmd::Sync { json, out: o, dir } => {
                    out = o;
                    (dir, Request::Replica { add: None, remove: None, sync: true }, json)
                }
                ReplicaCmd::List { json, dir } => {
                    (dir, Request::Replica { add: None, remove: None, sync: false }, json)
                }
            };
            let Some(d) = mounted(Some(&dir), None) else {
                bail!(
                    "{} is not a snapfs mount: replicas are kept by the daemon of a mounted directory",
                    dir.display()
                );
            };
            if matches!(req, Request::Replica { sync: true, .. }) {
                daemon::syncfs(&d);
            }
            let list_now = Request::Replica { add: None, remove: None, sync: false };
            let poll = || {
                let r = control::call(&d, &list_now, Duration::from_secs(5)).ok()?;
                Some(progress::Tick::of_replicas(r.replicas.as_deref()?))
            };
            let r = progress::run(
                out.show(json),
                "replica-sync",
                poll,
                || control::call(&d, &req, Duration::from_secs(30 * 86400)),
                |r| match r {
                    Ok(snapfs::control::Reply { ok: true, replicas: Some(list), .. }) => {
                        progress::Final::Tick(progress::Tick::of_synced(list))
                    }
                    _ => progress::Final::AsSeen,
                },
            )
            .with_context(|| format!("asking the daemon of {}", d.display()))?;
            let list = r.answer("replica list", |r| r.replicas)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if !out.quiet {
                if list.is_empty() {
                    println!("no replicas");
                }
                for s in &list {
                    print_replica(s);
                }
            }
            if matches!(req, Request::Replica { sync: true, .. }) {
                if let Some(bad) = list.iter().find(|s| s.lag.snapshots_behind > 0 || s.lag.packs_behind > 0) {
                    bail!("replica {} is still behind: {}", bad.url, bad.last_error.clone().unwrap_or_default());
                }
            }
            Ok(())
        }
        Cmd::Status { check: true, repo, dir, .. } => {
            use snapfs::ops::metrics::Check;
            let (code, line) = match status(&dir, false, false, repo.as_deref()) {
                Ok(report) => {
                    let (c, why) = snapfs::ops::metrics::check(&report);
                    let word = match c {
                        Check::Ok => "OK",
                        Check::Warning => "WARNING",
                        Check::Critical => "CRITICAL",
                    };
                    let detail = if why.is_empty() { String::new() } else { format!(": {}", why.join("; ")) };
                    (c as i32, format!("SNAPFS {word} - {}{detail}", report.mountpoint))
                }
                Err(e) => (3, format!("SNAPFS UNKNOWN - {}: {e:#}", dir.display())),
            };
            println!("{line}");
            let _ = std::io::Write::flush(&mut std::io::stdout());
            std::process::exit(code);
        }
        Cmd::Status { json, files, ops, prometheus, repo, dir, .. } => {
            let report = status(&dir, files, ops || prometheus, repo.as_deref())?;
            if prometheus {
                print!("{}", snapfs::ops::metrics::render(&report));
                return Ok(());
            }
            if ops && report.ops.is_none() {
                bail!("{} is not mounted: request counters are a running mount's", dir.display());
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else if let (true, Some(o)) = (ops, &report.ops) {
                print_ops(o);
            } else {
                print_status(&report);
            }
            Ok(())
        }
        Cmd::Completions { shell } => {
            generate::completions(shell, &mut std::io::stdout().lock());
            Ok(())
        }
        Cmd::Man { dir } => {
            for p in generate::write_man_pages(&dir)? {
                println!("{}", p.display());
            }
            Ok(())
        }
    }
}

pub(crate) fn umount(dir: &Path, lazy: bool) -> Result<()> {
    let dir = daemon::canonical(dir);
    match control::call(&dir, &Request::Unmount { lazy }, Duration::from_secs(30)) {
        Ok(r) if r.ok => {
            // Wait for the daemon to save its state and exit.
            if let Some(pid) = r.pid {
                let t0 = Instant::now();
                while process_alive(pid) {
                    if t0.elapsed() > Duration::from_secs(60) {
                        bail!("unmounted, but daemon {pid} has not exited after 60 s");
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            println!("snapfs: unmounted {}", dir.display());
            Ok(())
        }
        Ok(r) => bail!("{}", r.error.unwrap_or_else(|| "unmount failed".into())),
        Err(_) => {
            if daemon::snapfs_mount_at(&dir).is_none() {
                bail!("{} is not a snapfs mount", dir.display());
            }
            // The daemon is gone (killed): remove the dead mount.
            match daemon::umount(&dir, lazy) {
                Ok(()) => {}
                Err(_) => daemon::umount(&dir, true).with_context(|| format!("unmounting {}", dir.display()))?,
            }
            println!("snapfs: removed the mount at {} (its daemon was not running)", dir.display());
            Ok(())
        }
    }
}

/// The repository of DIR (mounted or not) or given with --repo, reachable
/// from this process.
/// While a restore or rollback reads a snapshot, the daemon of the mount
/// keeps it from forget and retention (renewed until dropped).
pub(crate) struct Hold {
    _stop: std::sync::mpsc::Sender<()>,
}

impl Hold {
    const SECS: u64 = 60;

    /// None when `dir` is not a mount (nothing can forget meanwhile).
    fn start(dir: &Path, id: &str) -> Result<Option<Hold>> {
        let Some(d) = mounted(Some(dir), None) else { return Ok(None) };
        let req = Request::Hold { snapshot: id.to_string(), secs: Self::SECS };
        let r = control::call(&d, &req, Duration::from_secs(600))?;
        if !r.ok {
            bail!("{}", r.error.unwrap_or_else(|| "cannot hold the snapshot".into()));
        }
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                rx.recv_timeout(Duration::from_secs(Self::SECS / 3))
            {
                let _ = control::call(&d, &req, Duration::from_secs(60));
            }
        });
        Ok(Some(Hold { _stop: tx }))
    }
}

/// The directory, if it is a snapfs mount and no --repo was given (its
/// daemon then does the work).
pub(crate) fn mounted(dir: Option<&Path>, repo: Option<&str>) -> Option<PathBuf> {
    let d = daemon::canonical(dir?);
    (repo.is_none() && daemon::snapfs_mount_at(&d).is_some()).then_some(d)
}

/// The repository of DIR or --repo, unlocked (an encrypted one asks for its key).
pub(crate) fn repo_for(dir: Option<&Path>, repo: Option<&str>) -> Result<Repo> {
    let mut r = locate_repo(dir, repo)?;
    key_args().unlock(&mut r)?;
    Ok(r)
}

/// Each `--heal-from` is a repository location (refused before anything
/// is read; the copies are opened only at the first damage).
fn check_heal_from(urls: &[String]) -> Result<()> {
    for url in urls {
        repo::Location::parse(url).with_context(|| format!("--heal-from {url}"))?;
    }
    Ok(())
}

/// The repository of DIR or --repo, opened without its keys (for its
/// config and local state only).
pub(crate) fn locate_repo(dir: Option<&Path>, repo: Option<&str>) -> Result<Repo> {
    if let Some(d) = mounted(dir, repo) {
        let r = control::call(&d, &Request::Status { files: false, ops: false }, Duration::from_secs(30))
            .with_context(|| format!("asking the daemon of {}", d.display()))?;
        let s = r.answer("status", |r| r.status)?;
        // (a path through the daemon's descriptor, or a URL: used as is)
        return Ok(Repo::open_at(&repo::Location::parse(&s.repository_access)?, None)?);
    }
    offline_repo_locked(dir, repo)
}

/// The repository of an unmounted directory or given with --repo (a path
/// or an s3: URL; a repository elsewhere keeps its local state in DIR's
/// hidden .snapfs/cache when DIR is given, else in ~/.cache/snapfs).
pub(crate) fn offline_repo(dir: Option<&Path>, repo: Option<&str>) -> Result<Repo> {
    let mut r = offline_repo_locked(dir, repo)?;
    key_args().unlock(&mut r)?;
    Ok(r)
}

/// As [`offline_repo`], without the keys.
pub(crate) fn offline_repo_locked(dir: Option<&Path>, repo: Option<&str>) -> Result<Repo> {
    let cache = dir.map(|d| daemon::canonical(d).join(snapfs::live::REPO_NAME).join("cache"));
    let loc = match (repo, dir) {
        (Some(r), _) => repo::Location::parse_canonical(r)?,
        (None, Some(d)) => repo::Location::Local(daemon::canonical(d).join(snapfs::live::REPO_NAME)),
        (None, None) => bail!("give DIR or --repo REPO"),
    };
    Ok(Repo::open_at(&loc, cache.as_deref())?)
}

/// Whether `pid` is still running (a zombie waiting for its parent is not).
/// Whether any thread of `pid` is still running. The leader of an exiting
/// process turns zombie before its other threads are done; until the last
/// one is gone its descriptors (control socket, repository lock) stay open.
pub(crate) fn process_alive(pid: u32) -> bool {
    let live = |stat: &str| {
        let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
        !matches!(state, Some("Z") | Some("X") | None)
    };
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return false };
    tasks.flatten().any(|t| std::fs::read_to_string(t.path().join("stat")).is_ok_and(|s| live(&s)))
}
