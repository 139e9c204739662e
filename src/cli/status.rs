//! `status`: what a mount, its repository and its replicas say, printed.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use snapfs::control::{self, Request, StatusReport};
use snapfs::daemon::{self};
use snapfs::repo::{self};
use snapfs::tracker::Tracker;
use snapfs::util;

pub(crate) fn status(dir: &Path, files: bool, ops: bool, repo: Option<&str>) -> Result<StatusReport> {
    let dir = daemon::canonical(dir);
    if daemon::snapfs_mount_at(&dir).is_some() {
        // Writes still in the kernel's page cache reach the daemon first.
        daemon::syncfs(&dir);
    }
    match control::call(&dir, &Request::Status { files, ops }, Duration::from_secs(30)) {
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
    let r = super::offline_repo_locked(Some(&dir), repo).map_err(|e| match e.downcast_ref::<repo::RepoError>() {
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
        ops: None,
        health: Some(snapfs::ops::health::report(&*r.store(), snapfs::ops::health::Health::open(&db).ok().as_ref())),
    })
}

pub(crate) fn print_replica(s: &snapfs::ops::replica::ReplicaStatus) {
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
    match (&s.oldest_change_not_copied, s.oldest_change_not_copied_age_sec) {
        (Some(t), Some(age)) => {
            println!("               oldest change not copied: {t} ({} ago)", util::age_text(age as i64))
        }
        _ if s.copied_before_us.is_some() => println!("               every change copied"),
        _ => {}
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

pub(crate) fn print_schedule(s: &snapfs::ops::schedule::ScheduleStatus) {
    let keep = if s.keep == "none" { "all".to_string() } else { s.keep.clone() };
    println!("  schedule:    {}; keeping {keep}", s.policy);
    match s.worst_case_sec {
        Some(w) => println!(
            "               a change stays unprotected at most {} (and the time a snapshot takes)",
            util::age_text(w as i64)
        ),
        None => println!("               no bound in time: a snapshot only when the dirty data reaches the size"),
    }
    let next = match (&s.next_run, s.next_run_in_sec) {
        (Some(n), Some(secs)) => {
            format!("next {n} (in {secs} s, {})", s.next_trigger.as_deref().unwrap_or("?"))
        }
        _ => "next when something changes".to_string(),
    };
    println!("               {next}; {} runs, {} failed", s.runs, s.failures);
    if let Some(r) = &s.last_result {
        let why = s.last_trigger.as_deref().map(|t| format!(" ({t})")).unwrap_or_default();
        println!("               last run {}{why}: {r}", s.last_run.clone().unwrap_or_default());
    }
}

pub(crate) fn print_health(h: &snapfs::ops::health::HealthReport) {
    match (&h.last_snapshot, &h.last_snapshot_time, h.last_snapshot_age_sec) {
        (Some(n), Some(t), Some(age)) => {
            println!("  last snapshot: {n} at {t} ({} ago), {} in all", util::age_text(age), h.snapshots)
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
    if h.repairs > 0 {
        println!("  repairs:     {} damaged or missing things healed from other copies (verify --repair)", h.repairs);
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

pub(crate) fn ranges_text(r: &[(u64, u64)]) -> String {
    let parts: Vec<String> =
        r.iter().map(|&(s, e)| if e == s + 1 { s.to_string() } else { format!("{}-{}", s, e - 1) }).collect();
    if parts.len() > 12 {
        format!("{} … ({} runs)", parts[..12].join(","), parts.len())
    } else {
        parts.join(",")
    }
}

pub(crate) fn print_status(s: &StatusReport) {
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
    match (&d.oldest_change, d.oldest_change_age_sec) {
        (Some(t), Some(age)) if d.no_snapshot => {
            println!(
                "  at risk:     all of it: no snapshot holds this directory yet (since {t}, {} ago)",
                util::age_text(age as i64)
            )
        }
        (Some(t), Some(age)) => println!(
            "  at risk:     {} in {} files; oldest change {t} ({} ago){}",
            util::human_bytes(d.bytes),
            d.files,
            util::age_text(age as i64),
            d.last_change.as_deref().map(|l| format!(", latest {l}")).unwrap_or_default()
        ),
        _ => println!("  at risk:     nothing (every change is in a snapshot)"),
    }
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

/// `status --ops`: the mount's requests by opcode, most time first.
pub(crate) fn print_ops(r: &snapfs::fuse::opstats::OpsReport) {
    let mut ops = r.ops.clone();
    ops.sort_by_key(|l| std::cmp::Reverse(l.total_ns));
    let total: u64 = ops.iter().map(|l| l.total_ns).sum();
    let us = |ns: u64| format!("{:.1}", ns as f64 / 1000.0);
    println!("FUSE requests since {} (the daemon's time answering each; the kernel's transport not included)", r.since);
    println!(
        "{:<16}{:>12}{:>12}{:>10}{:>10}{:>10}{:>10}{:>8}",
        "opcode", "requests", "total s", "mean us", "p50 us", "p90 us", "p99 us", "share"
    );
    for l in &ops {
        println!(
            "{:<16}{:>12}{:>12.3}{:>10}{:>10}{:>10}{:>10}{:>7.1}%",
            l.op,
            l.count,
            l.total_ns as f64 / 1e9,
            us(l.mean_ns()),
            us(l.p50_ns),
            us(l.p90_ns),
            us(l.p99_ns),
            100.0 * l.total_ns as f64 / total.max(1) as f64
        );
    }
    let n: u64 = ops.iter().map(|l| l.count).sum();
    println!("{:<16}{:>12}{:>12.3}", "all", n, total as f64 / 1e9);
}
