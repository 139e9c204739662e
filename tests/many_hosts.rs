//! Several hosts backing up into one S3 repository at once (the Garage
//! cluster scripts/test starts): each a protected directory with a daemon
//! of its own (`--host NAME`, its own cache), content stored once across
//! hosts, snapshots kept apart per host, and prune deleting in two phases
//! while the others back up.

mod common;

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

fn mount_as(dir: &Path, url: &str, host: &str) -> Mounted {
    Mounted::with_args(dir, &["--repo", url, "--host", host])
}

fn snap_json(dir: &Path, name: &str) -> serde_json::Value {
    let (ok, v) = json_of(&["snapshot", "--json", dir.to_str().unwrap(), "--name", name]);
    assert!(ok, "snapshot {name} of {}: {v}", dir.display());
    v
}

fn names(list: &serde_json::Value) -> Vec<String> {
    list.as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap().to_string()).collect()
}

fn fill(d: &Path, seed: u64) {
    fs::create_dir_all(d.join("docs")).unwrap();
    fs::write(d.join("image.bin"), noise(seed, 6 << 20)).unwrap();
    for i in 0..40 {
        fs::write(d.join(format!("docs/f{i}")), noise(seed * 100 + i, 2000 + 500 * i as usize)).unwrap();
    }
}

#[test]
fn hosts_share_content_and_keep_their_snapshots_apart() {
    let t = tempfile::tempdir().unwrap();
    let url = s3_url("hosts");
    run_ok(&["init", "--encryption", "none", &url]);
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    fs::create_dir(&a).unwrap();
    fill(&a, 1);
    // b holds a copy of a's data
    assert!(std::process::Command::new("cp").args(["-a"]).arg(&a).arg(&b).status().unwrap().success());
    let ma = mount_as(&a, &url, "alpha");
    let mb = mount_as(&b, &url, "beta");
    let first = snap_json(&a, "nightly");
    let second = snap_json(&b, "nightly");
    let full = first["stats"]["added_bytes"].as_u64().unwrap();
    let again = second["stats"]["added_bytes"].as_u64().unwrap();
    // the second host's backup of the same data adds (almost) only metadata
    assert!(again * 20 < full, "second host added {again} bytes, the first {full}");
    assert_eq!(second["host"], "beta");
    // the same name on two hosts: two lineages, each sees its own
    assert_eq!(names(&json_of(&["list", "--json", a.to_str().unwrap()]).1), ["nightly"]);
    assert!(a.join(".snapshots/nightly/image.bin").exists());
    fs::write(b.join("docs/only-b"), b"b's own").unwrap();
    snap_json(&b, "later");
    assert_eq!(names(&json_of(&["list", "--json", b.to_str().unwrap()]).1), ["nightly", "later"]);
    assert!(!a.join(".snapshots/later").exists());
    // the incremental continued b's own lineage
    let (_, bl) = json_of(&["list", "--json", b.to_str().unwrap()]);
    assert_eq!(bl[1]["full"], false, "{bl}");
    // the repository as a whole holds both hosts'; --host picks
    let (_, all) = json_of(&["list", "--json", "--repo", &url]);
    assert_eq!(all.as_array().unwrap().len(), 3);
    let (_, only) = json_of(&["list", "--json", "--repo", &url, "--host", "beta"]);
    assert_eq!(names(&only), ["nightly", "later"]);
    let text = run_ok(&["list", "--repo", &url]);
    assert!(text.contains("alpha:") && text.contains("beta:"), "{text}");
    // keep rules apply per host and directory: keep-last 1 keeps one of each
    let (ok, f) = json_of(&["forget", "--json", "--repo", &url, "--keep-last", "1"]);
    assert!(ok, "{f}");
    assert_eq!(f["removed"].as_array().unwrap().len(), 1, "{f}");
    assert_eq!(f["removed"][0]["name"], "nightly");
    let (_, all) = json_of(&["list", "--json", "--repo", &url]);
    assert_eq!(all.as_array().unwrap().len(), 2, "{all}");
    ma.umount();
    mb.umount();
}

/// Prune on one host while another snapshots: a pack goes only a grace
/// after it was condemned, never while a snapshot may still use it, and
/// a snapshot taken meanwhile stores again what it would have reused.
#[test]
fn prune_in_two_phases_beside_a_host_that_backs_up() {
    let t = tempfile::tempdir().unwrap();
    let url = s3_url("prune2");
    run_ok(&["init", "--encryption", "none", &url]);
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    fs::create_dir(&a).unwrap();
    fs::create_dir(&b).unwrap();
    let ma = mount_as(&a, &url, "alpha");
    let mb = mount_as(&b, &url, "beta");
    let doomed = noise(7, 3 << 20);
    fs::write(a.join("doomed.bin"), &doomed).unwrap();
    snap_json(&a, "a1");
    fs::remove_file(a.join("doomed.bin")).unwrap();
    fs::write(a.join("kept.txt"), b"kept").unwrap();
    snap_json(&a, "a2");
    let ad = a.to_str().unwrap();
    run_ok(&["forget", ad, "a1"]);
    // packs younger than the grace are not condemned (they may be a
    // snapshot's in flight)
    let (ok, p) = json_of(&["prune", "--json", "--grace", "1h", ad]);
    assert!(ok, "{p}");
    assert!(p["packs_condemned"] == 0 && p["packs_young"].as_u64().unwrap() >= 1, "{p}");
    std::thread::sleep(Duration::from_millis(2100));
    // phase 1: condemned, nothing deleted
    let (ok, p) = json_of(&["prune", "--json", "--grace", "2s", ad]);
    assert!(ok, "{p}");
    assert!(p["packs_condemned"].as_u64().unwrap() >= 1 && p["packs_deleted"] == 0, "{p}");
    // another host now backs up the same bytes: it must not reuse the
    // condemned pack, so it stores them again
    fs::write(b.join("same.bin"), &doomed).unwrap();
    let s = snap_json(&b, "b1");
    assert!(s["stats"]["added_data_bytes"].as_u64().unwrap() >= doomed.len() as u64, "{s}");
    // before the grace: still nothing deleted
    let (_, p) = json_of(&["prune", "--json", "--grace", "1h", ad]);
    assert_eq!(p["packs_deleted"], 0, "{p}");
    assert!(p["packs_waiting"].as_u64().unwrap() >= 1, "{p}");
    std::thread::sleep(Duration::from_millis(1100));
    // phase 2, with b backing up all the while
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (b, stop) = (b.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) && n < 8 {
                fs::write(b.join(format!("w{n}")), noise(1000 + n, 200_000)).unwrap();
                snap_json(&b, &format!("loop{n}"));
                n += 1;
            }
            n
        })
    };
    let (ok, p) = json_of(&["prune", "--json", "--grace", "1s", ad]);
    assert!(ok, "{p}");
    assert!(p["packs_deleted"].as_u64().unwrap() >= 1, "{p}");
    for _ in 0..3 {
        let (ok, p) = json_of(&["forget", "--json", ad, "--keep-last", "1"]);
        assert!(ok, "{p}");
        let (ok, p) = json_of(&["prune", "--json", "--grace", "1s", ad]);
        assert!(ok, "{p}");
        std::thread::sleep(Duration::from_millis(1100));
    }
    stop.store(true, Ordering::SeqCst);
    let taken = writer.join().unwrap();
    assert!(taken > 0);
    // every snapshot of b reads back whole, and the repository verifies
    assert_eq!(fs::read(b.join(".snapshots/b1/same.bin")).unwrap(), doomed);
    for n in 0..taken {
        let got = fs::read(b.join(format!(".snapshots/loop{n}/w{n}"))).unwrap();
        assert_eq!(got, noise(1000 + n, 200_000), "loop{n}");
    }
    ma.umount();
    mb.umount();
    let (ok, v) = json_of(&["verify", "--json", "--read-data", "--repo", &url]);
    assert!(ok && v["ok"] == true, "{v}");
}
