//! Client side of the maintenance commands: verify, forget, prune.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use snapfs::control::{self, Request};
use snapfs::ops::health::Health;
use snapfs::ops::maint::{self, ForgetReport, Policy, PruneOptions, PruneReport};
use snapfs::ops::verify::{self, VerifyOptions, VerifyProgress, VerifyReport};
use snapfs::repo::objstore::Objects;
use snapfs::repo::{Repo, RepoError};
use snapfs::util;

use super::mounted;
use super::progress::{self, Final, ProgressArgs, Show, Tick};

/// The daemon's progress of the verify or prune it runs for us.
fn daemon_task(d: &Path) -> Option<Tick> {
    let v = control::call(d, &Request::Progress, Duration::from_secs(5)).ok()?.task?;
    Some(Tick::of_task(&v))
}

/// Run `work` while `p` shows how far it is.
fn with_task<T>(show: Show, task: &'static str, p: &VerifyProgress, work: impl FnOnce() -> T) -> T {
    progress::run(show, task, || Some(Tick::of_task(&p.view())), work, |_| Final::Tick(Tick::of_task(&p.view())))
}

/// Open an unmounted repository for exclusive maintenance.
fn lock_offline(dir: Option<&Path>, repo: Option<&str>, what: &str) -> Result<Repo> {
    let mut r = super::offline_repo(dir, repo)?;
    match r.lock() {
        Ok(()) => Ok(r),
        Err(RepoError::Locked { path, pid }) => {
            let who = pid.map(|p| format!(" (pid {p})")).unwrap_or_default();
            bail!(
                "{} is in use by a snapfs daemon{who}: run `snapfs {what} DIR` with the directory it protects",
                path.display()
            )
        }
        Err(e) => Err(e.into()),
    }
}

pub struct VerifyArgs<'a> {
    pub dir: Option<&'a Path>,
    pub repo: Option<&'a str>,
    pub read_data: bool,
    pub subset: Option<f64>,
    pub rebuild_index: bool,
    pub repair: bool,
    pub from: &'a [String],
    pub jobs: Option<usize>,
    pub json: bool,
    pub out: &'a ProgressArgs,
}

pub fn verify(a: VerifyArgs) -> Result<()> {
    if let Some(s) = a.subset {
        if !a.read_data {
            bail!("--subset goes with --read-data");
        }
        if !(s > 0.0 && s <= 100.0) {
            bail!("--subset takes a percentage above 0 and at most 100");
        }
    }
    let jobs = a.jobs.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)).max(1);
    let show = a.out.show(a.json);
    let report: VerifyReport = if let Some(d) = mounted(a.dir, a.repo) {
        let req = Request::Verify {
            read_data: a.read_data,
            subset: a.subset,
            rebuild_index: a.rebuild_index,
            repair: a.repair,
            from: a
                .from
                .iter()
                .map(|u| snapfs::repo::Location::parse_canonical(u).map(|l| l.to_string()))
                .collect::<Result<_, _>>()?,
        };
        let work = || control::call(&d, &req, Duration::from_secs(30 * 86400));
        let r = progress::run(show, "verify", || daemon_task(&d), work, Final::of_reply)
            .with_context(|| format!("asking the daemon of {}", d.display()))?;
        r.answer("verify report", |r| r.verify)?
    } else {
        let r = lock_offline(a.dir, a.repo, "verify")?;
        let (db, repaired) = r.open_state_repaired()?;
        let objects = Objects::open(r.store(), Some(&db))?;
        let health = Health::open(&db)?;
        if let Some(note) = repaired {
            eprintln!("snapfs: {note}");
            health.error("state", &note);
        }
        let p = Arc::new(VerifyProgress::default());
        let opts = VerifyOptions { read_data: a.read_data, subset: a.subset, jobs, block_size: Some(r.block_size()) };
        let report = if a.repair {
            // its replicas (kept with a local repository), and each --from
            let replicas = snapfs::ops::replica::Replicas::open(&r.path, r.store(), r.config.clone(), Box::new(|_| {}));
            let mut sources = replicas.sources();
            for url in a.from {
                sources.push(snapfs::ops::replica::source(url, &r.config.id, r.store().keys())?);
            }
            with_task(show, "verify", &p, || {
                snapfs::ops::repair::verify_and_repair(&objects, &opts, &health, &p, &sources)
            })?
        } else {
            with_task(show, "verify", &p, || verify::run(&objects, &opts, &health, &p))?
        };
        if a.rebuild_index && !report.index_problems.is_empty() {
            let n = objects.rebuild_index()?;
            eprintln!("snapfs: index rebuilt from {n} packs");
        }
        report
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if !a.out.quiet {
        print!("{}", verify::render(&report));
    } else if !report.ok {
        // quiet: what is damaged is the error
        eprint!("{}", verify::render(&report));
    }
    if let Ok(r) = super::locate_repo(a.dir, a.repo) {
        let exposed = snapfs::os::private::exposure(&r.path);
        for line in &exposed {
            eprintln!("snapfs: WARNING: repository not private: {line}");
        }
        if !exposed.is_empty() {
            eprintln!(
                "snapfs: other users can read or damage these backups; make it private with `chmod -R go= {}` \
                 (a daemon mounting it does so itself)",
                r.path.display()
            );
        }
    }
    if !report.ok {
        let hint = if !report.index_problems.is_empty() && !a.rebuild_index {
            " (the index can be rebuilt from the packs: --rebuild-index)"
        } else {
            ""
        };
        bail!("verify found damage{hint}");
    }
    Ok(())
}

/// `snapfs verify DIR --live`.
pub fn verify_live(dir: &Path, json: bool, out: &ProgressArgs) -> Result<()> {
    let Some(d) = mounted(Some(dir), None) else {
        bail!("{} is not a snapfs mount: --live compares a mounted directory with its dirty set", dir.display());
    };
    // what the kernel still holds goes to the daemon (and so to the tracker)
    snapfs::daemon::syncfs(&d);
    let work = || control::call(&d, &Request::VerifyLive, Duration::from_secs(30 * 86400));
    let r = progress::run(out.show(json), "verify-live", || daemon_task(&d), work, Final::of_reply)
        .with_context(|| format!("asking the daemon of {}", d.display()))?;
    let report = r.answer("verify --live report", |r| r.live)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if !out.quiet || !report.ok {
        let text = snapfs::ops::verify_live::render(&report);
        if out.quiet {
            eprint!("{text}");
        } else {
            print!("{text}");
        }
    }
    if !report.ok {
        bail!("the tracker missed {} changes: the next snapshot should be taken with --full", report.missed_count);
    }
    Ok(())
}

pub struct ForgetArgs<'a> {
    pub dir: Option<&'a Path>,
    pub repo: Option<&'a str>,
    pub names: Vec<String>,
    pub policy: Policy,
    pub dry_run: bool,
    pub prune: bool,
    pub json: bool,
    pub out: &'a ProgressArgs,
}

pub fn forget(a: ForgetArgs) -> Result<()> {
    a.out.show(a.json); // (--quiet mutes the logs too)
    let report: ForgetReport = if let Some(d) = mounted(a.dir, a.repo) {
        let req = Request::Forget { names: a.names.clone(), policy: a.policy.clone(), dry_run: a.dry_run };
        let r = control::call(&d, &req, Duration::from_secs(3600))
            .with_context(|| format!("asking the daemon of {}", d.display()))?;
        r.answer("forget report", |r| r.forget)?
    } else {
        let r = lock_offline(a.dir, a.repo, "forget")?;
        maint::forget(&*r.store(), &a.names, &a.policy, a.dry_run, None, &Default::default(), None)?
    };
    if a.json && !a.prune {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if !a.json && !a.out.quiet {
        let verb = if report.dry_run { "would remove" } else { "removed" };
        for s in &report.kept {
            let why = if s.reasons.is_empty() { String::new() } else { format!(" ({})", s.reasons.join(", ")) };
            println!("keep   {:<28} {}{why}", s.name, s.time);
        }
        for s in &report.removed {
            println!("remove {:<28} {}", s.name, s.time);
        }
        println!("{verb} {} snapshots, kept {}", report.removed.len(), report.kept.len());
    }
    if a.prune && a.dry_run {
        if !a.out.quiet {
            eprintln!("snapfs: --dry-run: not pruning (a prune now would not see these snapshots gone)");
        }
    } else if a.prune {
        let p = prune_report(&PruneArgs {
            dir: a.dir,
            repo: a.repo,
            dry_run: a.dry_run,
            max_unused: None,
            grace_secs: None,
            json: a.json,
            out: a.out,
        })?;
        if a.json {
            println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "forget": report, "prune": p }))?);
        } else if !a.out.quiet {
            print_prune(&p);
        }
    }
    Ok(())
}

#[derive(Clone, Copy)]
pub struct PruneArgs<'a> {
    pub dir: Option<&'a Path>,
    pub repo: Option<&'a str>,
    pub dry_run: bool,
    pub max_unused: Option<f64>,
    pub grace_secs: Option<u64>,
    pub json: bool,
    pub out: &'a ProgressArgs,
}

fn prune_report(a: &PruneArgs) -> Result<PruneReport> {
    let PruneArgs { dir, repo, dry_run, max_unused, grace_secs, json, out } = *a;
    let show = out.show(json);
    if let Some(d) = mounted(dir, repo) {
        let req = Request::Prune { dry_run, max_unused, grace_secs };
        let work = || control::call(&d, &req, Duration::from_secs(30 * 86400));
        let r = progress::run(show, "prune", || daemon_task(&d), work, Final::of_reply)
            .with_context(|| format!("asking the daemon of {}", d.display()))?;
        return Ok(r.answer("prune report", |r| r.prune)?);
    }
    let r = lock_offline(dir, repo, "prune")?;
    let (db, repaired) = r.open_state_repaired()?;
    if let Some(note) = repaired {
        eprintln!("snapfs: {note}");
    }
    let objects = Objects::open(r.store(), Some(&db))?;
    let health = Health::open(&db)?;
    let p = Arc::new(VerifyProgress::default());
    let d = PruneOptions::default();
    let opts = PruneOptions {
        dry_run,
        max_unused: max_unused.unwrap_or(d.max_unused),
        grace_secs: grace_secs.unwrap_or(d.grace_secs),
    };
    Ok(with_task(show, "prune", &p, || maint::run_prune(&objects, &opts, &health, &p))?)
}

fn print_prune(p: &PruneReport) {
    let verb = if p.dry_run { "would free" } else { "freed" };
    println!(
        "prune: {} snapshots use {} objects; {} packs ({}) -> {} packs ({})",
        p.snapshots,
        p.objects_in_use,
        p.packs_before,
        util::human_bytes(p.bytes_before),
        p.packs_after,
        util::human_bytes(p.bytes_after)
    );
    println!(
        "  {} packs deleted, {} repacked ({} copied into {} new), {} objects removed; {verb} {}; {} unused left in packs kept",
        p.packs_deleted,
        p.packs_repacked,
        util::human_bytes(p.bytes_copied),
        p.packs_written,
        p.objects_removed,
        util::human_bytes(p.bytes_freed),
        util::human_bytes(p.unused_bytes_kept)
    );
    if p.packs_condemned + p.packs_waiting + p.packs_rescued + p.packs_young > 0 {
        println!(
            "  shared repository: {} packs condemned now, {} waiting out the grace, {} kept (in use again), {} younger than the grace (not judged yet); condemned packs go at a prune after the grace",
            p.packs_condemned, p.packs_waiting, p.packs_rescued, p.packs_young
        );
    }
}

pub fn prune(a: PruneArgs) -> Result<()> {
    let p = prune_report(&a)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&p)?);
    } else if !a.out.quiet {
        print_prune(&p);
    }
    Ok(())
}
