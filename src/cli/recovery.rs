//! `rollback` (restore is in `mod.rs`; its work is `ops::restore`).

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use snapfs::control::{self, Request};
use snapfs::daemon::{self};
use snapfs::util;

use super::*;

pub(crate) fn rollback(dir: &Path, name: &str, path: &str, json: bool) -> Result<()> {
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
    snapfs::ops::rollback::rollback_check(&objects, &target, path, root.as_fd())?;
    // a safety snapshot of the directory as it is now
    daemon::syncfs(&dir);
    let safety = snapfs::snapshot::unique_name(
        &all,
        &format!("before-rollback-{}", snapfs::snapshot::default_name(util::unix_now())),
    );
    let reply =
        control::call(&dir, &Request::Snapshot { name: Some(safety), full: false }, Duration::from_secs(7 * 86400))?;
    let now = reply.answer("safety snapshot", |r| r.snapshot).context("safety snapshot")?;
    let st = snapfs::ops::rollback::rollback(&objects, &target, &now, path, root.as_fd())?;
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
