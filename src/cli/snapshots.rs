//! `snapshot`, `list`, `diff`.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use snapfs::control::{self, Request};
use snapfs::daemon::{self};
use snapfs::util;

use super::*;

pub(crate) fn take_snapshot(
    dir: &Path,
    name: Option<String>,
    full: bool,
    json: bool,
    out: &progress::ProgressArgs,
) -> Result<()> {
    let dir = daemon::canonical(dir);
    if daemon::snapfs_mount_at(&dir).is_none() {
        bail!("{} is not a snapfs mount; mount it first (`snapfs mount {}`)", dir.display(), dir.display());
    }
    // Every write acknowledged so far reaches the daemon before it seals.
    daemon::syncfs(&dir);
    let poll = || {
        let p = control::call(&dir, &Request::Progress, Duration::from_secs(5)).ok()?.progress?;
        Some(progress::Tick::of_snapshot(&p))
    };
    let r = progress::run(
        out.show(json),
        "snapshot",
        poll,
        || control::call(&dir, &Request::Snapshot { name, full }, Duration::from_secs(7 * 86400)),
        |r| match r.as_ref().map(|r| r.snapshot.as_ref()) {
            Ok(Some(i)) => progress::Final::Tick(progress::Tick::of_snapshot(&i.record.stats)),
            _ => progress::Final::AsSeen,
        },
    );
    let r = r.with_context(|| format!("asking the daemon of {}", dir.display()))?;
    let Some(info) = r.snapshot else { bail!("{}", r.error.unwrap_or_else(|| "snapshot failed".into())) };
    if out.quiet {
        return Ok(());
    }
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

pub(crate) fn list(dir: Option<&Path>, repo: Option<&str>) -> Result<Vec<snapfs::snapshot::SnapshotInfo>> {
    if let Some(d) = mounted(dir, repo) {
        let r = control::call(&d, &Request::List, Duration::from_secs(60))
            .with_context(|| format!("asking the daemon of {}", d.display()))?;
        return Ok(r.answer("snapshot list", |r| r.snapshots)?);
    }
    let r = offline_repo(dir, repo)?;
    Ok(snapfs::snapshot::list_all(&*r.store())?)
}

pub(crate) fn diff(dir: Option<&Path>, repo: Option<&str>, a: &str, b: &str) -> Result<snapfs::snapshot::DiffReport> {
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

pub(crate) fn print_list(all: &[snapfs::snapshot::SnapshotInfo]) {
    if all.is_empty() {
        println!("no snapshots");
        return;
    }
    println!(
        "{:<28} {:<12} {:<20} {:>12} {:>12} {:>8}  HOST:DIRECTORY",
        "NAME", "ID", "TIME", "ADDED", "SIZE", "FILES"
    );
    for s in all.iter().filter(|s| s.damaged.is_none()) {
        let r = &s.record;
        println!(
            "{:<28} {:<12} {:<20} {:>12} {:>12} {:>8}  {}:{}",
            r.name,
            &s.id[..12.min(s.id.len())],
            r.time,
            util::human_bytes(r.stats.added_bytes),
            util::human_bytes(r.stats.logical_bytes),
            r.stats.files,
            r.host,
            r.source
        );
    }
    for s in all {
        if let Some(problem) = &s.damaged {
            let name = if s.record.name.is_empty() { String::new() } else { format!(" (named {:?})", s.record.name) };
            println!("DAMAGED snapshot record {}{name}: {problem}; run `snapfs verify`", s.id);
        }
    }
}

pub(crate) fn print_diff(d: &snapfs::snapshot::DiffReport) {
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
