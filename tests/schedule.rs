//! Automatic snapshots: a schedule given at mount time or changed on the
//! running mount, retention applied to the automatic snapshots only, the
//! schedule kept across remounts, and runs missed while unmounted caught up
//! once; snapshots driven by change (a burst taken once it settles, none
//! while idle) and schedules refused before mounting. The trigger rules
//! themselves are unit-tested with a simulated clock in `ops/schedule.rs`.

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

/// The automatic snapshots' (name, time in s) in the repository.
fn auto_times(repo: &Path) -> Vec<(String, i64)> {
    let (ok, v) = json_of(&["list", "--json", "--repo", repo.to_str().unwrap()]);
    assert!(ok, "{v}");
    v.as_array()
        .unwrap()
        .iter()
        .filter(|s| s["name"].as_str().unwrap().starts_with("auto-"))
        .map(|s| (s["name"].as_str().unwrap().to_string(), s["time_sec"].as_i64().unwrap()))
        .collect()
}

fn unix_now_f() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64()
}

#[test]
fn a_burst_of_writes_is_taken_once_after_it_settles_and_idle_time_takes_none() {
    let t = tempfile::tempdir().unwrap();
    let (raw, mnt, repo) = (t.path().join("raw"), t.path().join("mnt"), t.path().join("repo"));
    fs::create_dir(&raw).unwrap();
    fs::create_dir(&mnt).unwrap();
    run_ok(&["init", "--encryption", "none", repo.to_str().unwrap()]);
    let opts = MountOpts {
        backing: Some(raw.clone()),
        repo: Some(repo.clone()),
        extra: ["--settle", "1s", "--max-age", "10s", "--keep", "last=5"].iter().map(|s| s.to_string()).collect(),
    };
    let m = Mounted::with(&mnt, opts);
    let s = schedule_of(&m.dir);
    assert_eq!((s["max_age"].as_str(), s["settle"].as_str(), s["every"].is_null()), (Some("10s"), Some("1s"), true));
    assert_eq!(s["worst_case_sec"], 10, "{s}");
    // scheduled snapshots run at the lowest CPU priority, the FUSE threads
    // that serve the writers at the normal one
    assert_eq!(thread_nice(m.pid(), "schedule"), Some(19));
    assert_eq!(thread_nice(m.pid(), "fuser-0"), Some(0));

    // nothing holds the directory yet: all of it is at risk, and taken
    // once it has been quiet for the settle time
    let s = wait_runs(&m.dir, 1, Duration::from_secs(10));
    assert_eq!(s["last_trigger"], "settle", "{s}");
    assert_eq!(auto_times(&repo).len(), 1);
    let st = status(&m.dir);
    assert!(st["dirty"]["oldest_change"].is_null() && st["dirty"]["no_snapshot"] == false, "{st}");
    assert!(st["health"]["schedule"]["next_run"].is_null(), "idle: nothing due: {st}");

    // idle: no snapshot
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(auto_times(&repo).len(), 1, "an idle directory takes no snapshot");

    // a burst of 3 s: a write (made durable, so the daemon hears of it now)
    // every 100 ms, none a second after the previous one
    let f = fs::OpenOptions::new().create(true).truncate(false).write(true).open(m.path("log")).unwrap();
    let mut max_gap = Duration::ZERO;
    let mut prev = Instant::now();
    let mut at_risk = None;
    for i in 0..30u64 {
        use std::os::unix::fs::FileExt;
        f.write_all_at(format!("{i:>8}\n").as_bytes(), i * 9).unwrap();
        f.sync_data().unwrap();
        max_gap = max_gap.max(prev.elapsed());
        prev = Instant::now();
        if i == 15 {
            // status shows what is at risk meanwhile
            at_risk = Some(status(&m.dir));
            prev = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let last_write = unix_now_f() - 0.1;
    let st = at_risk.unwrap();
    let d = &st["dirty"];
    assert!(d["files"].as_u64() >= Some(1) && d["bytes"].as_u64() > Some(0), "{st}");
    assert!(d["oldest_change_age_sec"].as_u64().is_some_and(|a| a <= 3), "{st}");
    assert_eq!(st["health"]["schedule"]["runs"], 1, "not in the middle of the burst: {st} (longest gap {max_gap:?})");
    let text = run_ok(&["status", m.dir.to_str().unwrap()]);
    assert!(text.contains("at risk:") && text.contains("at most 10 s"), "{text}");

    // one snapshot, once it has settled
    let s = wait_runs(&m.dir, 2, Duration::from_secs(8));
    assert_eq!(s["last_trigger"], "settle", "{s}");
    let autos = auto_times(&repo);
    assert_eq!(autos.len(), 2, "{autos:?} (longest gap between writes {max_gap:?})");
    let (name, time) = autos.last().unwrap().clone();
    assert!(time as f64 >= last_write.floor(), "taken after the burst: {time} vs {last_write}");
    assert!((time as f64) < last_write + 8.0, "{time} vs {last_write}");
    // the whole burst is in it
    let got = fs::read_to_string(m.path(&format!(".snapshots/{name}/log"))).unwrap();
    assert_eq!(got.lines().count(), 30);
    assert_eq!(got.lines().last().unwrap().trim(), "29");
    let st = status(&m.dir);
    assert!(st["dirty"]["oldest_change"].is_null(), "nothing at risk: {st}");

    // and nothing while idle again
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(auto_times(&repo).len(), 2, "no snapshot after the burst's");
    assert_eq!(schedule_of(&m.dir)["failures"], 0);

    // triggers given on the running mount replace the schedule's; the
    // retention stays
    run_ok(&["schedule", "--every", "1h", m.dir.to_str().unwrap()]);
    let s = schedule_of(&m.dir);
    assert_eq!(
        (s["every"].as_str(), s["max_age"].is_null(), s["keep"].as_str()),
        (Some("1h"), true, Some("last=5")),
        "{s}"
    );
    drop(f);
    m.umount();
}

#[test]
fn schedules_that_cannot_be_followed_are_refused_before_mounting() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("d");
    fs::create_dir(&d).unwrap();
    for (args, why) in [
        (&["--max-age", "5s", "--settle", "5s"][..], "shorter"),
        (&["--settle", "1s"][..], "--max-age"),
        (&["--keep", "last=3"][..], "--every"),
        (&["--max-dirty", "0"][..], "at least"),
        (&["--max-dirty", "lots"][..], "not a size"),
        (&["--max-age", "0s"][..], "at least"),
    ] {
        // in the background: a mount that wrongly goes ahead returns (and
        // is unmounted here) instead of holding the test
        let mut a = vec!["mount"];
        a.extend_from_slice(args);
        a.push(d.to_str().unwrap());
        let out = snapfs(&a);
        if is_mounted(&d) {
            snapfs(&["umount", d.to_str().unwrap()]);
            panic!("{args:?} mounted");
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(why), "{args:?}: {err}");
    }
}

/// The nice value of the daemon's thread named `name` (/proc/PID/task).
fn thread_nice(pid: u32, name: &str) -> Option<i64> {
    for t in fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let dir = t.ok()?.path();
        if fs::read_to_string(dir.join("comm")).ok()?.trim() != name {
            continue;
        }
        // the fields after the command's closing parenthesis: state is 3,
        // nice is 19
        let stat = fs::read_to_string(dir.join("stat")).ok()?;
        let rest = &stat[stat.rfind(')')? + 2..];
        return rest.split(' ').nth(19 - 3).and_then(|v| v.parse().ok());
    }
    None
}
