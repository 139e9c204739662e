//! Automatic snapshots: a schedule given at mount time or changed on the
//! running mount, retention applied to the automatic snapshots only, the
//! schedule kept across remounts, and runs missed while unmounted caught up
//! once.

mod common;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

fn snapshot_names(repo: &Path) -> Vec<String> {
    let (ok, v) = json_of(&["list", "--json", "--repo", repo.to_str().unwrap()]);
    assert!(ok, "{v}");
    v.as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap().to_string()).collect()
}

fn autos(repo: &Path) -> Vec<String> {
    snapshot_names(repo).into_iter().filter(|n| n.starts_with("auto-")).collect()
}

fn schedule_of(dir: &Path) -> serde_json::Value {
    status(dir)["health"]["schedule"].clone()
}

fn wait_runs(dir: &Path, n: u64, limit: Duration) -> serde_json::Value {
    let t0 = Instant::now();
    loop {
        let s = schedule_of(dir);
        if s["runs"].as_u64().unwrap_or(0) >= n {
            return s;
        }
        assert!(t0.elapsed() < limit, "only {} scheduled runs after {limit:?}", s["runs"]);
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn scheduled_snapshots_with_retention_survive_remount_and_catch_up_once() {
    let t = tempfile::tempdir().unwrap();
    let (raw, mnt, repo) = (t.path().join("raw"), t.path().join("mnt"), t.path().join("repo"));
    fs::create_dir(&raw).unwrap();
    fs::create_dir(&mnt).unwrap();
    run_ok(&["init", "--encryption", "none", repo.to_str().unwrap()]);
    let opts = |extra: &[&str]| MountOpts {
        backing: Some(raw.clone()),
        repo: Some(repo.clone()),
        extra: extra.iter().map(|s| s.to_string()).collect(),
    };
    let m = Mounted::with(&mnt, opts(&["--every", "1s", "--keep", "last=2"]));
    fs::write(m.path("f.txt"), b"0").unwrap();
    snap(&m.dir, "manual");
    // the schedule's names are its own
    let out = snapfs(&["snapshot", "--name", "auto-mine", m.dir.to_str().unwrap()]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("schedule"));
    // keep writing while the schedule runs
    for i in 0..40 {
        fs::write(m.path("f.txt"), format!("{i}")).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        if schedule_of(&m.dir)["runs"].as_u64().unwrap_or(0) >= 4 {
            break;
        }
    }
    let s = wait_runs(&m.dir, 4, Duration::from_secs(15));
    assert_eq!(s["every"], "1s", "{s}");
    assert_eq!(s["failures"], 0, "{s}");
    // switched off on the running mount: no run after the one in flight
    let out = run_ok(&["schedule", "--off", m.dir.to_str().unwrap()]);
    assert!(out.contains("no automatic snapshots"), "{out}");
    std::thread::sleep(Duration::from_millis(1500));
    let names = snapshot_names(&repo);
    assert!(schedule_of(&m.dir).is_null());
    assert_eq!(autos(&repo).len(), 2, "retention keeps the last 2 automatic snapshots: {names:?}");
    assert!(names.contains(&"manual".to_string()), "retention never touches other snapshots: {names:?}");
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(snapshot_names(&repo), names, "no run after --off");
    // the forgotten snapshots' space was pruned and nothing kept was harmed
    let (ok, v) = json_of(&["verify", "--json", m.dir.to_str().unwrap()]);
    assert!(ok && v["ok"] == true, "{v}");

    // a new schedule on the running mount, kept across a remount
    run_ok(&["schedule", "--every", "4s", "--keep", "last=3", m.dir.to_str().unwrap()]);
    let s = schedule_of(&m.dir);
    assert_eq!((s["every"].as_str(), s["keep"].as_str()), (Some("4s"), Some("last=3")), "{s}");
    wait_runs(&m.dir, 1, Duration::from_secs(10));
    m.umount();
    let before = autos(&repo).len();

    // unmounted for more than two periods: exactly one catch-up run
    std::thread::sleep(Duration::from_secs(9));
    let m = Mounted::with(&mnt, opts(&[]));
    let s = wait_runs(&m.dir, 1, Duration::from_secs(5));
    assert_eq!(s["every"], "4s", "schedule reused without flags: {s}");
    std::thread::sleep(Duration::from_millis(1500));
    let s = schedule_of(&m.dir);
    assert_eq!(s["runs"], 1, "missed runs are caught up once: {s}");
    let after = autos(&repo).len();
    assert_eq!(after, (before + 1).min(3), "one catch-up snapshot");
    run_ok(&["schedule", "--off", m.dir.to_str().unwrap()]);
    m.umount();
}
