//! The `snapfs` command line.

mod cli;

use cli::maint as cli_maint;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use snapfs::control::{self, Request, StatusReport};
use snapfs::daemon::{self, MountArgs};
use snapfs::repo::{self, Repo};
use snapfs::tracker::Tracker;
use snapfs::util;

#[derive(Parser)]
#[command(name = "snapfs", version, about = "Protect a directory in place; incremental block-level snapshots")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a repository.
    Init {
        /// Block size, fixed for the repository's life (e.g. 64K, 1M).
        #[arg(long, default_value = "64K")]
        block_size: String,
        repo: String,
    },
    /// Protect DIR: mount snapfs over it (in place) or show --backing RAW at DIR.
    Mount {
        /// Show this directory at DIR instead of protecting DIR in place.
        #[arg(long, value_name = "RAW")]
        backing: Option<PathBuf>,
        /// Repository to use: a path, or s3:https://HOST[:PORT]/BUCKET[/PREFIX]
        /// (default: DIR/.snapfs inside the backing directory).
        #[arg(long)]
        repo: Option<String>,
        /// Where the local state of a repository elsewhere goes (default: the
        /// backing directory's hidden .snapfs/cache).
        #[arg(long, value_name = "DIR")]
        cache: Option<PathBuf>,
        /// Keep a copy of the repository there too (a path or an s3: URL),
        /// brought up to date after each snapshot; repeatable, remembered.
        #[arg(long = "replica", value_name = "URL")]
        replicas: Vec<String>,
        /// Stay attached to the terminal (for systemd).
        #[arg(long)]
        foreground: bool,
        /// FUSE worker threads.
        #[arg(long, default_value_t = 4)]
        threads: usize,
        /// Do not use the kernel's writeback cache (every write goes to the
        /// daemon at once; slower small writes).
        #[arg(long)]
        no_writeback: bool,
        /// Milliseconds between durable points of the tracking state.
        #[arg(long, default_value_t = 1000)]
        flush_ms: u64,
        /// Take a snapshot automatically every INTERVAL (30s, 15m, 1h, 1d).
        #[arg(long, value_name = "INTERVAL", value_parser = snapfs::ops::schedule::parse_interval)]
        every: Option<u64>,
        /// Retention for the automatic snapshots, e.g. hourly=24,daily=7,weekly=4,monthly=12.
        #[arg(long, value_name = "RULES", value_parser = snapfs::ops::maint::Policy::parse, requires = "every")]
        keep: Option<snapfs::ops::maint::Policy>,
        #[arg(long, hide = true)]
        ready_fd: Option<i32>,
        dir: PathBuf,
    },
    /// Show or change the automatic snapshots of a mounted directory.
    Schedule {
        /// Take a snapshot every INTERVAL (30s, 15m, 1h, 1d).
        #[arg(long, value_name = "INTERVAL", value_parser = snapfs::ops::schedule::parse_interval)]
        every: Option<u64>,
        /// Retention for the automatic snapshots, e.g. hourly=24,daily=7.
        #[arg(long, value_name = "RULES", value_parser = snapfs::ops::maint::Policy::parse)]
        keep: Option<snapfs::ops::maint::Policy>,
        /// No more automatic snapshots.
        #[arg(long, conflicts_with_all = ["every", "keep"])]
        off: bool,
        #[arg(long)]
        json: bool,
        dir: PathBuf,
    },
    /// Unmount a protected directory, leaving the tracking state durable.
    Umount {
        /// Detach even if files are still open.
        #[arg(long)]
        lazy: bool,
        dir: PathBuf,
    },
    /// Snapshot a mounted directory (the first is full, later ones incremental).
    Snapshot {
        /// Name (default: the time, e.g. 2026-11-24T10.15.00Z).
        #[arg(long)]
        name: Option<String>,
        /// Re-read and re-hash every file instead of trusting the tracker.
        #[arg(long)]
        full: bool,
        #[arg(long)]
        json: bool,
        dir: PathBuf,
    },
    /// List the snapshots of a directory or a repository.
    List {
        #[arg(long)]
        repo: Option<String>,
        #[arg(long)]
        json: bool,
        dir: Option<PathBuf>,
    },
    /// What changed between two snapshots (names or ids).
    Diff {
        #[arg(long)]
        repo: Option<String>,
        #[arg(long)]
        json: bool,
        /// DIR A B, or with --repo just A B.
        #[arg(num_args = 2..=3)]
        args: Vec<String>,
    },
    /// Mount a repository's snapshots read-only (no live daemon needed).
    Browse {
        #[arg(long)]
        repo: String,
        /// Show just this snapshot at MNT.
        #[arg(long)]
        snapshot: Option<String>,
        #[arg(long)]
        foreground: bool,
        #[arg(long, hide = true)]
        ready_fd: Option<i32>,
        mnt: PathBuf,
    },
    /// Restore a snapshot (or SNAPSHOT:PATH) into TARGET with parallel workers.
    Restore {
        #[arg(long)]
        repo: Option<String>,
        /// Workers (default: the number of cores).
        #[arg(short = 'j', long)]
        jobs: Option<usize>,
        /// Restore into a non-empty TARGET, rewriting only what differs.
        #[arg(long)]
        overwrite: bool,
        #[arg(long)]
        json: bool,
        /// [DIR] SNAPSHOT[:PATH] TARGET (DIR when not --repo)
        #[arg(num_args = 2..=3)]
        args: Vec<String>,
    },
    /// Revert a mounted directory (or PATH in it) to a snapshot, in place,
    /// after taking a safety snapshot; only what differs is written.
    Rollback {
        #[arg(long)]
        json: bool,
        dir: PathBuf,
        snapshot: String,
        path: Option<String>,
    },
    /// Check the repository: every object every snapshot needs is there
    /// (and, with --read-data, re-hash the stored data). Exits non-zero on
    /// any damage, naming the damaged objects and the paths that need them.
    Verify {
        #[arg(long)]
        repo: Option<String>,
        /// Read and re-hash stored data (all packs, or --subset of them).
        #[arg(long)]
        read_data: bool,
        /// With --read-data: this percentage of the packs, chosen at random.
        #[arg(long, value_name = "PERCENT", value_parser = parse_percent)]
        subset: Option<f64>,
        /// Rebuild the index from the packs if it disagrees with them.
        #[arg(long)]
        rebuild_index: bool,
        /// Instead: compare the live directory with the latest snapshot
        /// plus the dirty set, and report any change the tracker missed.
        #[arg(long, requires = "dir", conflicts_with_all = ["repo", "read_data", "subset", "rebuild_index"])]
        live: bool,
        /// Parallel pack readers (default: the number of cores).
        #[arg(short = 'j', long)]
        jobs: Option<usize>,
        #[arg(long)]
        json: bool,
        dir: Option<PathBuf>,
    },
    /// Remove snapshots: by name, or all but those the keep rules keep.
    /// Their space comes back with `prune` (or --prune).
    Forget {
        #[arg(long)]
        repo: Option<String>,
        /// Keep the newest N snapshots.
        #[arg(long, value_name = "N", default_value_t = 0)]
        keep_last: u32,
        /// Keep the newest snapshot of each of the last N hours that have one.
        #[arg(long, value_name = "N", default_value_t = 0)]
        keep_hourly: u32,
        #[arg(long, value_name = "N", default_value_t = 0)]
        keep_daily: u32,
        /// Weeks start on Monday.
        #[arg(long, value_name = "N", default_value_t = 0)]
        keep_weekly: u32,
        #[arg(long, value_name = "N", default_value_t = 0)]
        keep_monthly: u32,
        #[arg(long, value_name = "N", default_value_t = 0)]
        keep_yearly: u32,
        /// Show what would be removed; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Prune afterwards.
        #[arg(long)]
        prune: bool,
        #[arg(long)]
        json: bool,
        /// [DIR] [NAME...] (DIR unless --repo)
        args: Vec<String>,
    },
    /// Reclaim the space of objects no snapshot references.
    Prune {
        #[arg(long)]
        repo: Option<String>,
        /// Show what would be done; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Rewrite packs with more than this percentage unused (default 20).
        #[arg(long, value_name = "PERCENT", value_parser = parse_percent)]
        max_unused: Option<f64>,
        #[arg(long)]
        json: bool,
        dir: Option<PathBuf>,
    },
    /// Copies of a mounted directory's repository elsewhere (a bucket,
    /// another disk): add, remove, bring up to date now, or list them.
    Replica {
        #[command(subcommand)]
        what: ReplicaCmd,
    },
    /// Show the mount, the repository and the dirty set.
    Status {
        #[arg(long)]
        json: bool,
        /// List dirty files with their dirty block ranges.
        #[arg(long)]
        files: bool,
        /// Repository, when DIR is not mounted and the repository is not DIR/.snapfs.
        #[arg(long)]
        repo: Option<String>,
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum ReplicaCmd {
    /// Make URL a replica (a path or s3:https://HOST/BUCKET/PREFIX); the
    /// history is copied in the background (`replica sync` waits for it).
    Add {
        #[arg(long)]
        json: bool,
        dir: PathBuf,
        url: String,
    },
    /// Stop replicating to URL (its copy stays as it is).
    Remove { dir: PathBuf, url: String },
    /// Copy what each replica lacks now, and wait.
    Sync {
        #[arg(long)]
        json: bool,
        dir: PathBuf,
    },
    /// Each replica and how far behind it is.
    List {
        #[arg(long)]
        json: bool,
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info,fuser::session=error"))
        .format_timestamp_millis()
        .init();
    let cli = Cli::parse();
    if !matches!(cli.cmd, Cmd::Mount { .. } | Cmd::Browse { .. }) {
        // A reader that goes away (`snapfs list | head`) ends us quietly,
        // as it does other Unix tools, instead of a panic in println!.
        // Daemons keep ignoring SIGPIPE (a client may hang up early).
        // SAFETY: resetting a signal's disposition to its default.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("snapfs: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Init { block_size, repo } => {
            let bs = util::parse_size(&block_size).with_context(|| format!("cannot read block size {block_size:?}"))?;
            let r = Repo::init_at(&repo::Location::parse_canonical(&repo)?, bs, None)?;
            println!("created repository {} (id {}, block size {})", r.location, r.config.id, util::human_bytes(bs));
            Ok(())
        }
        Cmd::Mount {
            backing,
            repo,
            cache,
            replicas,
            foreground,
            threads,
            no_writeback,
            flush_ms,
            every,
            keep,
            ready_fd,
            dir,
        } => {
            let writeback = !no_writeback;
            daemon::mount(MountArgs {
                dir,
                backing,
                repo,
                cache,
                replicas,
                foreground,
                threads,
                writeback,
                flush_ms,
                ready_fd,
                every,
                keep,
            })
        }
        Cmd::Schedule { every, keep, off, json, dir } => {
            let d = daemon::canonical(&dir);
            if daemon::snapfs_mount_at(&d).is_none() {
                bail!("{} is not a snapfs mount; give the schedule to `snapfs mount --every`", d.display());
            }
            let r = control::call(&d, &Request::Schedule { every, keep, off }, Duration::from_secs(60))
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
            })
        }
        Cmd::Prune { repo, dry_run, max_unused, json, dir } => {
            cli_maint::prune(dir.as_deref(), repo.as_deref(), dry_run, max_unused.map(|p| p / 100.0), json)
        }
        Cmd::Verify { live: true, json, dir: Some(dir), .. } => cli_maint::verify_live(&dir, json),
        Cmd::Verify { repo, read_data, subset, rebuild_index, jobs, json, dir, .. } => {
            cli_maint::verify(cli_maint::VerifyArgs {
                dir: dir.as_deref(),
                repo: repo.as_deref(),
                read_data,
                subset,
                rebuild_index,
                jobs,
                json,
            })
        }
        Cmd::Restore { repo, jobs, overwrite, json, args } => {
            let (dir, spec, target) = match (repo.is_some(), args.as_slice()) {
                (true, [s, t]) => (None, s.clone(), PathBuf::from(t)),
                (false, [d, s, t]) => (Some(PathBuf::from(d)), s.clone(), PathBuf::from(t)),
                _ => bail!("give DIR SNAPSHOT[:PATH] TARGET, or --repo REPO SNAPSHOT[:PATH] TARGET"),
            };
            let (name, sub) = spec.split_once(':').unwrap_or((spec.as_str(), ""));
            let r = repo_for(dir.as_deref(), repo.as_deref())?;
            let objects = snapfs::repo::objstore::Objects::open(r.store(), None)?;
            let all = snapfs::snapshot::list(&*r.store())?;
            let snap = snapfs::snapshot::find(&all, name)?;
            let _hold = match (&dir, repo.is_none()) {
                (Some(d), true) => Hold::start(d, &snap.id)?,
                _ => None,
            };
            let jobs = jobs.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2));
            let t0 = Instant::now();
            let opts = snapfs::ops::restore::RestoreOptions {
                jobs,
                overwrite,
                progress: !json && std::io::stderr().is_terminal(),
            };
            let stats = snapfs::ops::restore::restore(&objects, snap, sub, &target, &opts)?;
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
        Cmd::Browse { repo, snapshot, foreground, ready_fd, mnt } => {
            daemon::browse(daemon::BrowseArgs { repo, mnt, snapshot, foreground, ready_fd })
        }
        Cmd::Snapshot { name, full, json, dir } => take_snapshot(&dir, name, full, json),
        Cmd::List { repo, json, dir } => {
            let all = list(dir.as_deref(), repo.as_deref())?;
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
            let (dir, req, json) = match what {
                ReplicaCmd::Add { json, dir, url } => {
                    (dir, Request::Replica { add: Some(url), remove: None, sync: false }, json)
                }
                ReplicaCmd::Remove { dir, url } => {
                    (dir, Request::Replica { add: None, remove: Some(url), sync: false }, false)
                }
                ReplicaCmd::Sync { json, dir } => (dir, Request::Replica { add: None, remove: None, sync: true }, json),
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
            let r = control::call(&d, &req, Duration::from_secs(30 * 86400))
                .with_context(|| format!("asking the daemon of {}", d.display()))?;
            let list = r.answer("replica list", |r| r.replicas)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
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
        Cmd::Status { json, files, repo, dir } => {
            let report = status(&dir, files, repo.as_deref())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_status(&report);
            }
            Ok(())
        }
    }
}

/// `10`, `10%`, `2.5`.
fn parse_percent(s: &str) -> std::result::Result<f64, String> {
    s.trim().trim_end_matches('%').parse::<f64>().map_err(|_| format!("{s:?} is not a percentage"))
}

fn umount(dir: &Path, lazy: bool) -> Result<()> {
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

fn take_snapshot(dir: &Path, name: Option<String>, full: bool, json: bool) -> Result<()> {
    let dir = daemon::canonical(dir);
    if daemon::snapfs_mount_at(&dir).is_none() {
        bail!("{} is not a snapfs mount; mount it first (`snapfs mount {}`)", dir.display(), dir.display());
    }
    // Every write acknowledged so far reaches the daemon before it seals.
    daemon::syncfs(&dir);
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = if json || !std::io::stderr().is_terminal() {
        None
    } else {
        let (dir, done) = (dir.clone(), done.clone());
        Some(std::thread::spawn(move || show_progress(&dir, &done)))
    };
    let r = control::call(&dir, &Request::Snapshot { name, full }, Duration::from_secs(7 * 86400));
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    if let Some(w) = watcher {
        let _ = w.join();
    }
    let r = r.with_context(|| format!("asking the daemon of {}", dir.display()))?;
    let Some(info) = r.snapshot else { bail!("{}", r.error.unwrap_or_else(|| "snapshot failed".into())) };
    if json {
        println!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        let st = &info.record.stats;
        println!(
            "snapshot {} ({}) {}: {} files, {}; read {}, added {} in {} ms",
            info.record.name,
            &info.id[..12],
            if info.record.full { "full" } else { "incremental" },
            st.files,
            util::human_bytes(st.logical_bytes),
            util::human_bytes(st.read_bytes),
            util::human_bytes(st.added_bytes),
            st.duration_ms
        );
    }
    Ok(())
}

fn rollback(dir: &Path, name: &str, path: &str, json: bool) -> Result<()> {
    let dir = daemon::canonical(dir);
    if daemon::snapfs_mount_at(&dir).is_none() {
        bail!("{} is not a snapfs mount: rollback works on a mounted directory (restore works on any)", dir.display());
    }
    let r = repo_for(Some(&dir), None)?;
    let all = snapfs::snapshot::list(&*r.store())?;
    let target = snapfs::snapshot::find(&all, name)?.clone();
    let _hold = Hold::start(&dir, &target.id)?;
    let objects = snapfs::repo::objstore::Objects::open(r.store(), None)?;
    let root = std::fs::File::open(&dir).with_context(|| dir.display().to_string())?;
    use std::os::fd::AsFd;
    snapfs::ops::restore::rollback_check(&objects, &target, path, root.as_fd())?;
    // a safety snapshot of the directory as it is now
    daemon::syncfs(&dir);
    let safety = snapfs::snapshot::unique_name(
        &all,
        &format!("before-rollback-{}", snapfs::snapshot::default_name(util::unix_now())),
    );
    let reply =
        control::call(&dir, &Request::Snapshot { name: Some(safety), full: false }, Duration::from_secs(7 * 86400))?;
    let now = reply.answer("safety snapshot", |r| r.snapshot).context("safety snapshot")?;
    let st = snapfs::ops::restore::rollback(&objects, &target, &now, path, root.as_fd())?;
    if json {
        println!("{}", serde_json::to_string_pretty(&st)?);
    } else {
        println!(
            "rolled {}{} back to {} (safety snapshot {}): {} removed, {} restored, {} files patched, {} metadata changes, {} written",
            dir.display(),
            if path.is_empty() { String::new() } else { format!("/{path}") },
            target.record.name,
            st.safety_snapshot,
            st.removed,
            st.restored,
            st.patched_files,
            st.metadata,
            util::human_bytes(st.written)
        );
    }
    Ok(())
}

/// A progress line on stderr while a long snapshot runs.
fn show_progress(dir: &Path, done: &std::sync::atomic::AtomicBool) {
    util::progress_line(done, Duration::from_secs(2), Duration::from_millis(250), |t| {
        let p = control::call(dir, &Request::Progress, Duration::from_secs(5)).ok()?.progress?;
        Some(format!(
            "{} files read, {} directories, {} read, {:.0} s",
            p.files_read,
            p.dirs_walked,
            util::human_bytes(p.read_bytes),
            t.as_secs_f64()
        ))
    })
}

/// The repository of DIR (mounted or not) or given with --repo, reachable
/// from this process.
/// While a restore or rollback reads a snapshot, the daemon of the mount
/// keeps it from forget and retention (renewed until dropped).
struct Hold {
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
fn mounted(dir: Option<&Path>, repo: Option<&str>) -> Option<PathBuf> {
    let d = daemon::canonical(dir?);
    (repo.is_none() && daemon::snapfs_mount_at(&d).is_some()).then_some(d)
}

fn repo_for(dir: Option<&Path>, repo: Option<&str>) -> Result<Repo> {
    if let Some(d) = mounted(dir, repo) {
        let r = control::call(&d, &Request::Status { files: false }, Duration::from_secs(30))
            .with_context(|| format!("asking the daemon of {}", d.display()))?;
        let s = r.answer("status", |r| r.status)?;
        // (a path through the daemon's descriptor, or a URL: used as is)
        return Ok(Repo::open_at(&repo::Location::parse(&s.repository_access)?, None)?);
    }
    offline_repo(dir, repo)
}

/// The repository of an unmounted directory or given with --repo (a path
/// or an s3: URL; a repository elsewhere keeps its local state in DIR's
/// hidden .snapfs/cache when DIR is given, else in ~/.cache/snapfs).
fn offline_repo(dir: Option<&Path>, repo: Option<&str>) -> Result<Repo> {
    let cache = dir.map(|d| daemon::canonical(d).join(snapfs::live::REPO_NAME).join("cache"));
    let loc = match (repo, dir) {
        (Some(r), _) => repo::Location::parse_canonical(r)?,
        (None, Some(d)) => repo::Location::Local(daemon::canonical(d).join(snapfs::live::REPO_NAME)),
        (None, None) => bail!("give DIR or --repo REPO"),
    };
    Ok(Repo::open_at(&loc, cache.as_deref())?)
}

fn list(dir: Option<&Path>, repo: Option<&str>) -> Result<Vec<snapfs::snapshot::SnapshotInfo>> {
    if let Some(d) = mounted(dir, repo) {
        let r = control::call(&d, &Request::List, Duration::from_secs(60))
            .with_context(|| format!("asking the daemon of {}", d.display()))?;
        return Ok(r.answer("snapshot list", |r| r.snapshots)?);
    }
    let r = offline_repo(dir, repo)?;
    Ok(snapfs::snapshot::list_all(&*r.store())?)
}

fn diff(dir: Option<&Path>, repo: Option<&str>, a: &str, b: &str) -> Result<snapfs::snapshot::DiffReport> {
    if let Some(d) = mounted(dir, repo) {
        let r = control::call(&d, &Request::Diff { a: a.into(), b: b.into() }, Duration::from_secs(3600))
            .with_context(|| format!("asking the daemon of {}", d.display()))?;
        return Ok(r.answer("diff", |r| r.diff)?);
    }
    let r = offline_repo(dir, repo)?;
    // sled may be held by a daemon: an index in memory from the packs will do
    let objects = snapfs::repo::objstore::Objects::open(r.store(), None)?;
    let all = snapfs::snapshot::list(&*r.store())?;
    let sa = snapfs::snapshot::find(&all, a)?;
    let sb = snapfs::snapshot::find(&all, b)?;
    daemon::diff_report(&objects, sa, sb)
}

fn print_list(all: &[snapfs::snapshot::SnapshotInfo]) {
    if all.is_empty() {
        println!("no snapshots");
        return;
    }
    println!("{:<28} {:<12} {:<20} {:>12} {:>12} {:>8}", "NAME", "ID", "TIME", "ADDED", "SIZE", "FILES");
    for s in all.iter().filter(|s| s.damaged.is_none()) {
        let r = &s.record;
        println!(
            "{:<28} {:<12} {:<20} {:>12} {:>12} {:>8}",
            r.name,
            &s.id[..12.min(s.id.len())],
            r.time,
            util::human_bytes(r.stats.added_bytes),
            util::human_bytes(r.stats.logical_bytes),
            r.stats.files
        );
    }
    for s in all {
        if let Some(problem) = &s.damaged {
            let name = if s.record.name.is_empty() { String::new() } else { format!(" (named {:?})", s.record.name) };
            println!("DAMAGED snapshot record {}{name}: {problem}; run `snapfs verify`", s.id);
        }
    }
}

fn print_diff(d: &snapfs::snapshot::DiffReport) {
    for e in &d.entries {
        let sign = match e.change.as_str() {
            "added" => "+",
            "removed" => "-",
            _ => "M",
        };
        println!("{sign} {:<7} {} ({})", e.kind, e.path, util::human_bytes(e.bytes));
    }
    println!(
        "{} -> {}: {} added, {} removed, {} modified, {} changed",
        d.from,
        d.to,
        d.added,
        d.removed,
        d.modified,
        util::human_bytes(d.changed_bytes)
    );
}

/// Whether `pid` is still running (a zombie waiting for its parent is not).
/// Whether any thread of `pid` is still running. The leader of an exiting
/// process turns zombie before its other threads are done; until the last
/// one is gone its descriptors (control socket, repository lock) stay open.
fn process_alive(pid: u32) -> bool {
    let live = |stat: &str| {
        let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
        !matches!(state, Some("Z") | Some("X") | None)
    };
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return false };
    tasks.flatten().any(|t| std::fs::read_to_string(t.path().join("stat")).is_ok_and(|s| live(&s)))
}

fn status(dir: &Path, files: bool, repo: Option<&str>) -> Result<StatusReport> {
    let dir = daemon::canonical(dir);
    if daemon::snapfs_mount_at(&dir).is_some() {
        // Writes still in the kernel's page cache reach the daemon first.
        daemon::syncfs(&dir);
    }
    match control::call(&dir, &Request::Status { files }, Duration::from_secs(30)) {
        Ok(r) => {
            if let Some(s) = r.status {
                return Ok(s);
            }
            bail!("{}", r.error.unwrap_or_else(|| "daemon gave no status".into()));
        }
        // someone answers, but not a daemon we may trust
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => bail!("{e}"),
        Err(_) => {}
    }
    if daemon::snapfs_mount_at(&dir).is_some() {
        bail!(
            "{} is a snapfs mount whose daemon is not running (killed?); run `snapfs umount {}` and mount again",
            dir.display(),
            dir.display()
        );
    }
    let r = offline_repo(Some(&dir), repo).map_err(|e| match e.downcast_ref::<repo::RepoError>() {
        Some(repo::RepoError::NotARepo(p)) => {
            anyhow::anyhow!("{} is not mounted and has no repository at {} (give --repo)", dir.display(), p.display())
        }
        _ => e,
    })?;
    let repo_path = r.location.to_string();
    let db = r.open_state().map_err(|e| match e {
        e @ repo::RepoError::StateCorrupt { .. } => {
            anyhow::anyhow!("{e}; the next mount (or `snapfs verify --repo`) moves it aside and rebuilds it")
        }
        e => e.into(),
    })?;
    let (t, last, _) = Tracker::load(&db, r.block_size())
        .with_context(|| format!("reading tracking state in {}", r.path.display()))?;
    Ok(StatusReport {
        mounted: false,
        mountpoint: dir.display().to_string(),
        backing: dir.display().to_string(),
        repository: repo_path.clone(),
        repository_access: repo_path,
        repository_id: r.config.id.clone(),
        block_size: r.block_size(),
        pid: None,
        mounted_since: None,
        last_session: daemon::last_name(&last).into(),
        dirty: t.summary(),
        files: if files { Some(t.entries_list()) } else { None },
        inodes: None,
        scan: None,
        replicas: Vec::new(),
        warnings: Vec::new(),
        health: Some(snapfs::ops::health::report(&*r.store(), snapfs::ops::health::Health::open(&db).ok().as_ref())),
    })
}

fn print_replica(s: &snapfs::ops::replica::ReplicaStatus) {
    let l = &s.lag;
    let state = if l.snapshots_behind == 0 && l.packs_behind == 0 && s.last_success.is_some() {
        "up to date".to_string()
    } else {
        format!("{} snapshots, {} behind", l.snapshots_behind, util::human_bytes(l.bytes_behind))
    };
    println!("  replica:     {} ({state})", s.url);
    if let Some((done, total)) = s.syncing {
        println!("               copying: {} of {}", util::human_bytes(done), util::human_bytes(total));
    }
    match (&s.last_success, &s.last_error) {
        (Some(t), _) => println!("               last success {t}"),
        (None, None) => println!("               not synced yet"),
        _ => {}
    }
    if let (Some(e), Some(t)) = (&s.last_error, &s.last_error_time) {
        if s.last_success_sec.is_none() || s.last_error_time.as_deref() > s.last_success.as_deref() {
            println!("               LAST ERROR {t}: {e}");
        }
    }
}

fn print_schedule(s: &snapfs::ops::schedule::ScheduleStatus) {
    let keep = if s.keep == "none" { "all".to_string() } else { s.keep.clone() };
    println!("  schedule:    a snapshot every {}, keeping {keep}", s.every);
    if let (Some(n), Some(secs)) = (&s.next_run, s.next_run_in_sec) {
        println!("               next {n} (in {secs} s); {} runs, {} failed", s.runs, s.failures);
    }
    if let Some(r) = &s.last_result {
        println!("               last run {}: {r}", s.last_run.clone().unwrap_or_default());
    }
}

fn print_health(h: &snapfs::ops::health::HealthReport) {
    match (&h.last_snapshot, &h.last_snapshot_time, h.last_snapshot_age_sec) {
        (Some(n), Some(t), Some(age)) => {
            println!("  last snapshot: {n} at {t} ({} ago), {} in all", age_text(age), h.snapshots)
        }
        _ => println!("  last snapshot: none"),
    }
    println!(
        "  repository:  {} in {} packs; snapshots hold {} (latest {}); ratio {:.1}x",
        util::human_bytes(h.repository_bytes),
        h.packs,
        util::human_bytes(h.logical_bytes_all),
        util::human_bytes(h.logical_bytes_latest),
        h.dedup_ratio
    );
    match &h.last_verify {
        Some(v) => println!("  last verify: {} ({})", v.time, v.summary),
        None => println!("  last verify: never"),
    }
    if let Some(l) = &h.last_live_check {
        println!("  last verify --live: {} against {} ({})", l.time, l.snapshot, l.summary);
    }
    if let Some(s) = &h.schedule {
        print_schedule(s);
    }
    if let Some(f) = &h.failing {
        println!("  SNAPSHOTS ARE FAILING: {f}");
    }
    if let Some(f) = &h.state_failing {
        println!(
            "  TRACKING STATE NOT SAVED since {}: {} (tracking goes on in memory; retried every few seconds)",
            f.since, f.error
        );
    }
    if !h.errors.is_empty() {
        println!("  recent errors:");
        for e in h.errors.iter().rev().take(5) {
            println!("    {} {}: {}", e.time, e.during, e.error);
        }
    }
}

fn age_text(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3600),
        s => format!("{} days", s / 86_400),
    }
}

fn ranges_text(r: &[(u64, u64)]) -> String {
    let parts: Vec<String> =
        r.iter().map(|&(s, e)| if e == s + 1 { s.to_string() } else { format!("{}-{}", s, e - 1) }).collect();
    if parts.len() > 12 {
        format!("{} … ({} runs)", parts[..12].join(","), parts.len())
    } else {
        parts.join(",")
    }
}

fn print_status(s: &StatusReport) {
    println!("snapfs: {}", s.mountpoint);
    if s.mounted {
        println!(
            "  mounted:     yes (daemon pid {}, since {})",
            s.pid.map(|p| p.to_string()).unwrap_or_default(),
            s.mounted_since.clone().unwrap_or_default()
        );
    } else {
        println!("  mounted:     no");
    }
    if s.backing != s.mountpoint {
        println!("  backing:     {}", s.backing);
    }
    println!(
        "  repository:  {} (id {}, block size {})",
        s.repository,
        &s.repository_id[..s.repository_id.len().min(12)],
        util::human_bytes(s.block_size)
    );
    println!("  last session ended: {}", s.last_session);
    let d = &s.dirty;
    println!(
        "  dirty since {}: {} files, {} directories, {} other; {} blocks, {}",
        d.since,
        d.files,
        d.dirs,
        d.others,
        d.blocks,
        util::human_bytes(d.bytes)
    );
    if d.scan_pending {
        println!("  scan for changes made while unmounted: running");
    } else if let Some(sc) = &s.scan {
        println!(
            "  scan for changes made while unmounted: {} entries, {} changed, {} ms",
            sc.entries, sc.changed, sc.millis
        );
    }
    if let Some(h) = &s.health {
        print_health(h);
    }
    for r in &s.replicas {
        print_replica(r);
    }
    for w in &s.warnings {
        println!("  {w}");
    }
    if let Some(files) = &s.files {
        for f in files {
            let path = if f.path.is_empty() { ".".to_string() } else { f.path.clone() };
            let mut line =
                format!("  {:<40} {:<6} {}", path, format!("{:?}", f.kind).to_lowercase(), f.changes.join(","));
            if !f.ranges.is_empty() {
                line.push_str(&format!(
                    "  blocks {} ({} of {})",
                    ranges_text(&f.ranges),
                    util::human_bytes(f.bytes),
                    util::human_bytes(f.size)
                ));
            }
            println!("{line}");
        }
    }
}
