//! Replicas (issue 14): a protected directory keeps its local repository
//! and copies each snapshot to replicas (a bucket, another disk) in the
//! background; any replica is a complete repository.

mod common;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

fn replicas(dir: &Path) -> serde_json::Value {
    let (ok, v) = json_of(&["replica", "list", "--json", dir.to_str().unwrap()]);
    assert!(ok, "{v}");
    v
}

/// Wait until every replica has every snapshot and pack.
fn wait_caught_up(dir: &Path, limit: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        let v = replicas(dir);
        if v.as_array().unwrap().iter().all(|r| r["lag"]["snapshots_behind"] == 0 && r["lag"]["packs_behind"] == 0) {
            return t0.elapsed();
        }
        assert!(t0.elapsed() < limit, "replicas still behind after {limit:?}: {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_replica_in_the_bucket_gets_every_snapshot_and_restores_alone() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("d");
    fs::create_dir(&d).unwrap();
    for i in 0..20 {
        fs::write(d.join(format!("f{i}")), noise(i, 100_000)).unwrap();
    }
    let m = Mounted::new(&d);
    snap(&m.dir, "before-replica");
    // no copy off the disk yet: status says so loudly
    let st = status(&m.dir);
    assert!(st["warnings"][0].as_str().unwrap().contains("NOT A BACKUP AGAINST DISK FAILURE"), "{st}");
    let url = s3_url("replica");
    run_ok(&["replica", "add", m.dir.to_str().unwrap(), &url]);
    // the history is copied
    run_ok(&["replica", "sync", m.dir.to_str().unwrap()]);
    assert!(status(&m.dir)["warnings"].as_array().unwrap().is_empty());
    let list = run_ok(&["list", "--repo", &url]);
    assert!(list.contains("before-replica"), "{list}");
    // a small change is off the machine within a moment, by itself
    write_at(&m.path("f3"), 5000, b"changed");
    snap(&m.dir, "after");
    let lag = wait_caught_up(&m.dir, Duration::from_secs(10));
    eprintln!("replication lag after a small change: {lag:?}");
    let want = model(&m.dir);
    // forgotten on the primary, forgotten on the replica
    run_ok(&["forget", m.dir.to_str().unwrap(), "before-replica"]);
    run_ok(&["replica", "sync", m.dir.to_str().unwrap()]);
    let list = run_ok(&["list", "--repo", &url]);
    assert!(!list.contains("before-replica") && list.contains("after"), "{list}");
    m.umount();
    // a new machine with only the URL and the credentials
    let target = t.path().join("new-machine");
    run_ok(&["restore", "--repo", &url, "-j", "8", "after", target.to_str().unwrap()]);
    assert_same(&want, &model(&target), "restore from the replica");
    run_ok(&["verify", "--read-data", "--repo", &url]);
}

#[test]
fn replicas_are_remembered_and_refuse_other_repositories() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("d");
    fs::create_dir(&d).unwrap();
    fs::write(d.join("f"), b"data").unwrap();
    let copy = t.path().join("second-disk");
    let extra = vec!["--replica".to_string(), copy.to_str().unwrap().to_string()];
    let m = Mounted::with(&d, MountOpts { extra, ..Default::default() });
    snap(&m.dir, "s1");
    wait_caught_up(&m.dir, Duration::from_secs(10));
    // another repository is not taken over
    let other = s3_url("other");
    run_ok(&["init", "--encryption", "none", &other]);
    let o = snapfs(&["replica", "add", m.dir.to_str().unwrap(), &other]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("another repository"), "{o:?}");
    let o = snapfs(&["replica", "add", m.dir.to_str().unwrap(), "s3:http:/127.0.0.1:3900/snapfs-test"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("the form is"), "{o:?}");
    m.umount();
    // kept with the repository: the next mount goes on replicating
    let m = Mounted::new(&d);
    assert_eq!(replicas(&m.dir).as_array().unwrap().len(), 1);
    fs::write(m.path("g"), b"more").unwrap();
    snap(&m.dir, "s2");
    wait_caught_up(&m.dir, Duration::from_secs(10));
    m.umount();
    let list = run_ok(&["list", "--repo", copy.to_str().unwrap()]);
    assert!(list.contains("s1") && list.contains("s2"), "{list}");
    run_ok(&["verify", "--read-data", "--repo", copy.to_str().unwrap()]);
}

#[test]
fn status_says_how_old_the_oldest_change_not_on_a_replica_is() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("d");
    fs::create_dir(&d).unwrap();
    fs::write(d.join("f"), b"data").unwrap();
    let (copy, away) = (t.path().join("second-disk"), t.path().join("unplugged"));
    let extra = vec!["--replica".to_string(), copy.to_str().unwrap().to_string()];
    let m = Mounted::with(&d, MountOpts { extra, ..Default::default() });
    snap(&m.dir, "s1");
    // a snapshot counts as copied once a round that began after its commit
    // has succeeded (the round the commit wakes)
    let t0 = Instant::now();
    loop {
        let r = &replicas(&m.dir)[0];
        if r["copied_before_us"].is_i64() && r["oldest_change_not_copied"].is_null() {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "s1 still not copied: {r}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // a change no snapshot holds is not on the replica either
    fs::write(m.path("g"), b"more").unwrap();
    let st = status(&m.dir);
    let changed = st["dirty"]["oldest_change"].clone();
    assert!(changed.is_string(), "{st}");
    assert_eq!(st["replicas"][0]["oldest_change_not_copied"], changed, "{st}");
    // the replica's disk goes away: the snapshot holds the change, the
    // replica still lacks it, and says so as it ages
    fs::rename(&copy, &away).unwrap();
    snap(&m.dir, "s2");
    std::thread::sleep(Duration::from_secs(2));
    let st = status(&m.dir);
    assert!(st["dirty"]["oldest_change"].is_null(), "in s2: {st}");
    let r = &st["replicas"][0];
    assert_eq!(r["oldest_change_not_copied"], changed, "{st}");
    assert!(r["oldest_change_not_copied_age_sec"].as_u64() >= Some(2), "{st}");
    let text = run_ok(&["status", m.dir.to_str().unwrap()]);
    assert!(text.contains("oldest change not copied"), "{text}");
    // back: copied, nothing left behind
    fs::rename(&away, &copy).unwrap();
    run_ok(&["replica", "sync", m.dir.to_str().unwrap()]);
    let r = &replicas(&m.dir)[0];
    assert!(r["oldest_change_not_copied"].is_null() && r["lag"]["snapshots_behind"] == 0, "{r}");
    m.umount();
}
