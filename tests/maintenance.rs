//! Healthy backups: verify finds damage and names what depends on it;
//! forget and prune reclaim space, also when killed, and never beside a
//! snapshot.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// A test directory: `raw` (the backing files, where the repository is at
/// `raw/.snapfs`) shown at `mnt`. Models are taken of `raw`: with the
/// writeback cache the kernel shows its own mtime for a just-written file
/// for a while, and the backing file's is what a snapshot records.
struct Dirs {
    raw: PathBuf,
    mnt: PathBuf,
}

impl Dirs {
    fn new(t: &Path) -> Dirs {
        let d = Dirs { raw: t.join("raw"), mnt: t.join("mnt") };
        fs::create_dir(&d.raw).unwrap();
        fs::create_dir(&d.mnt).unwrap();
        d
    }

    fn mount(&self) -> Mounted {
        Mounted::with(&self.mnt, MountOpts { backing: Some(self.raw.clone()), ..Default::default() })
    }

    fn repo(&self) -> PathBuf {
        self.raw.join(".snapfs")
    }
}

/// A repository with a few snapshots of changing data; returns the model of
/// each snapshot. Unmounted afterwards.
fn build_repo(d: &Dirs, rounds: usize) -> Vec<(String, BTreeMap<String, Node>)> {
    let m = d.mount();
    let mut models = Vec::new();
    fs::create_dir_all(m.path("docs/deep")).unwrap();
    for r in 0..rounds {
        // a file rewritten every round (its old blocks become garbage)
        fs::write(m.path("churn.bin"), noise(r as u64, 600_000)).unwrap();
        // files that accumulate
        fs::write(m.path(&format!("docs/deep/note{r}.txt")), format!("round {r}\n").repeat(100)).unwrap();
        fs::write(m.path(&format!("docs/kept{r}.bin")), noise(1000 + r as u64, 150_000)).unwrap();
        let name = format!("r{r}");
        snap(&m.dir, &name);
        models.push((name, model(&d.raw)));
    }
    m.umount();
    models
}

fn packs(repo: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for d in fs::read_dir(repo.join("packs")).unwrap() {
        for f in fs::read_dir(d.unwrap().path()).unwrap() {
            let p = f.unwrap().path();
            if !p.file_name().unwrap().to_string_lossy().starts_with('.') {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn repo_bytes(repo: &Path) -> u64 {
    packs(repo).iter().map(|p| fs::metadata(p).unwrap().len()).sum()
}

fn copy_tree(from: &Path, to: &Path) {
    let st = Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap();
    assert!(st.success());
}

/// Restore `name` from `repo` and compare with the model.
fn assert_restores(repo: &Path, name: &str, want: &BTreeMap<String, Node>, scratch: &Path) {
    let target = scratch.join(format!("restore-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&target);
    run_ok(&["restore", "--repo", repo.to_str().unwrap(), name, target.to_str().unwrap()]);
    assert_same(want, &model(&target), &format!("restore of {name}"));
    fs::remove_dir_all(&target).unwrap();
}

#[test]
fn verify_passes_on_a_good_repository_and_records_it() {
    let t = tempfile::tempdir().unwrap();
    let d = Dirs::new(t.path());
    build_repo(&d, 2);
    let repo = d.repo();
    let (ok, v) = json_of(&["verify", "--json", "--read-data", "--repo", repo.to_str().unwrap()]);
    assert!(ok, "{v}");
    assert_eq!(v["ok"], true);
    assert_eq!(v["snapshots"], 2);
    assert!(v["bytes_read"].as_u64().unwrap() > 900_000, "{v}");
    // a subset reads some packs, not all
    let (ok, v) = json_of(&["verify", "--json", "--read-data", "--subset", "30%", "--repo", repo.to_str().unwrap()]);
    assert!(ok, "{v}");
    assert!(v["packs_read"].as_u64().unwrap() >= 1 && v["packs_read"].as_u64().unwrap() < v["packs"].as_u64().unwrap());
    // status shows the last verify
    let out = snapfs(&["status", "--json", "--repo", repo.to_str().unwrap(), d.raw.to_str().unwrap()]);
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["health"]["last_verify"]["ok"], true, "{st}");
    assert_eq!(st["health"]["snapshots"], 2, "{st}");
    // a running daemon verifies through the mount, and status shows it
    let m = d.mount();
    let (ok, v) = json_of(&["verify", "--json", "--read-data", m.dir.to_str().unwrap()]);
    assert!(ok, "{v}");
    let st = status(&m.dir);
    assert_eq!(st["health"]["last_verify"]["read_data"], true, "{st}");
    assert!(st["health"]["repository_bytes"].as_u64().unwrap() > 0, "{st}");
    assert_eq!(st["health"]["last_snapshot"], "r1", "{st}");
    // and the repository cannot be verified behind its back
    let out = snapfs(&["verify", "--repo", repo.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use by a snapfs daemon"));
    m.umount();
}

/// Each kind of damage is found, named, and traced to snapshots and paths.
#[test]
fn verify_names_damage() {
    let t = tempfile::tempdir().unwrap();
    let d = Dirs::new(t.path());
    build_repo(&d, 3);
    let good = t.path().join("good");
    copy_tree(&d.repo(), &good);
    let fixture = |name: &str| {
        let p = t.path().join(name);
        copy_tree(&good, &p);
        p
    };
    let verify = |repo: &Path, data: bool| {
        let mut args = vec!["verify", "--json", "--repo", repo.to_str().unwrap()];
        if data {
            args.push("--read-data");
        }
        let (ok, v) = json_of(&args);
        assert_eq!(ok, v["ok"].as_bool().unwrap(), "exit status and report agree");
        v
    };
    let paths_of = |v: &serde_json::Value| -> Vec<String> {
        v["damaged_objects"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|o| o["used_by"].as_array().unwrap().iter())
            .flat_map(|u| {
                let s = u["snapshot"].as_str().unwrap().to_string();
                u["paths"].as_array().unwrap().iter().map(move |p| format!("{s}:{}", p.as_str().unwrap()))
            })
            .collect()
    };

    // the biggest pack holds file data: flip a byte in the middle of it
    let flipped = fixture("flipped");
    let big = packs(&flipped).into_iter().max_by_key(|p| fs::metadata(p).unwrap().len()).unwrap();
    let mut bytes = fs::read(&big).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    fs::write(&big, &bytes).unwrap();
    let v = verify(&flipped, true);
    assert_eq!(v["ok"], false);
    let big_name = big.file_name().unwrap().to_string_lossy().into_owned();
    assert!(v["damaged_packs"].as_array().unwrap().iter().any(|p| p["name"] == big_name.as_str()), "{v}");
    let objs = v["damaged_objects"].as_array().unwrap();
    assert!(!objs.is_empty(), "{v}");
    assert!(objs.iter().all(|o| o["pack"] == big_name.as_str()), "{v}");
    assert!(!paths_of(&v).is_empty(), "the damaged data is traced to files: {v}");
    // a damaged blob shows in a file's path, e.g. r0:churn.bin
    assert!(paths_of(&v).iter().all(|p| !p.ends_with(':')), "{v}");

    // a truncated pack is found without reading data
    let truncated = fixture("truncated");
    let p = packs(&truncated).into_iter().max_by_key(|p| fs::metadata(p).unwrap().len()).unwrap();
    let len = fs::metadata(&p).unwrap().len();
    fs::OpenOptions::new().write(true).open(&p).unwrap().set_len(len - 100).unwrap();
    let v = verify(&truncated, false);
    assert_eq!(v["ok"], false);
    let name = p.file_name().unwrap().to_string_lossy().into_owned();
    assert!(v["damaged_packs"].as_array().unwrap().iter().any(|x| x["name"] == name.as_str()), "{v}");
    assert!(!paths_of(&v).is_empty(), "{v}");

    // a missing object: the smallest pack (the last snapshot's metadata) is gone
    let missing = fixture("missing");
    let p = packs(&missing).into_iter().min_by_key(|p| fs::metadata(p).unwrap().len()).unwrap();
    fs::remove_file(&p).unwrap();
    let v = verify(&missing, false);
    assert_eq!(v["ok"], false);
    let objs = v["damaged_objects"].as_array().unwrap();
    assert!(
        objs.iter().any(|o| o["problem"].as_str().unwrap().contains("missing")
            || o["problem"].as_str().unwrap().contains("unreadable")),
        "{v}"
    );
    assert!(paths_of(&v).iter().any(|p| p.starts_with("r2:")), "the last snapshot depends on it: {v}");
    assert!(!v["index_problems"].as_array().unwrap().is_empty(), "the index still names the pack: {v}");

    // a missing index: the index entries are gone, the packs are fine
    let noindex = fixture("noindex");
    {
        let db = sled::open(noindex.join("state")).unwrap();
        db.open_tree("index").unwrap().clear().unwrap();
        db.flush().unwrap();
    }
    let v = verify(&noindex, false);
    assert_eq!(v["ok"], false);
    assert!(
        v["index_problems"].as_array().unwrap().iter().any(|p| p.as_str().unwrap().contains("missing from the index")),
        "{v}"
    );
    // rebuilding the index repairs it: the data was never lost
    let out = snapfs(&["verify", "--rebuild-index", "--repo", noindex.to_str().unwrap()]);
    assert!(!out.status.success(), "the run that finds the damage still reports it");
    let v = verify(&noindex, true);
    assert_eq!(v["ok"], true, "{v}");

    // a damaged snapshot record
    let record = fixture("record");
    let r = fs::read_dir(record.join("snapshots")).unwrap().next().unwrap().unwrap().path();
    let mut b = fs::read(&r).unwrap();
    b[10] ^= 1;
    fs::write(&r, b).unwrap();
    let v = verify(&record, false);
    assert_eq!(v["damaged_records"].as_array().unwrap().len(), 1, "{v}");

    // and the good copy is still good
    assert_eq!(verify(&good, true)["ok"], true);
}

#[test]
fn forget_by_rules_and_names_then_prune() {
    let t = tempfile::tempdir().unwrap();
    let dirs = Dirs::new(t.path());
    let models = build_repo(&dirs, 5);
    let repo = dirs.repo();
    let before = repo_bytes(&repo);
    let m = dirs.mount();
    let d = m.dir.to_str().unwrap();
    // nothing to forget without rules or names
    assert!(!snapfs(&["forget", d]).status.success());
    assert!(!snapfs(&["forget", "--keep-last", "1", d, "r0"]).status.success());
    assert!(!snapfs(&["forget", d, "nosuch"]).status.success());
    // a dry run changes nothing
    let (ok, v) = json_of(&["forget", "--json", "--keep-last", "2", "--dry-run", d]);
    assert!(ok);
    assert_eq!(v["removed"].as_array().unwrap().len(), 3);
    assert_eq!(fs::read_dir(m.path(".snapshots")).unwrap().count(), 5);
    // by rule, with prune
    let (ok, v) = json_of(&["forget", "--json", "--keep-last", "2", "--prune", d]);
    assert!(ok, "{v}");
    let kept: Vec<&str> = v["forget"]["kept"].as_array().unwrap().iter().map(|k| k["name"].as_str().unwrap()).collect();
    assert_eq!(kept, ["r3", "r4"]);
    assert!(v["prune"]["packs_deleted"].as_u64().unwrap() + v["prune"]["packs_repacked"].as_u64().unwrap() > 0);
    let names: Vec<String> =
        fs::read_dir(m.path(".snapshots")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
    assert_eq!(names.len(), 2, "{names:?}");
    // the kept snapshots are whole, through the mount too
    assert_same(&models[4].1, &model(&m.path(".snapshots/r4")), "r4 in .snapshots");
    let (ok, v) = json_of(&["verify", "--json", "--read-data", d]);
    assert!(ok, "{v}");
    // by name
    run_ok(&["forget", d, "r3"]);
    run_ok(&["prune", d]);
    // the next snapshot still works (incremental on r4)
    fs::write(m.path("later.txt"), b"after prune\n").unwrap();
    snap(&m.dir, "r5");
    let r5 = model(&dirs.raw);
    m.umount();
    let after = repo_bytes(&repo);
    assert!(after < before * 2 / 3, "prune freed space: {before} -> {after}");
    let (ok, v) = json_of(&["verify", "--json", "--read-data", "--repo", repo.to_str().unwrap()]);
    assert!(ok, "{v}");
    assert_eq!(v["snapshots"], 2);
    assert_restores(&repo, "r4", &models[4].1, t.path());
    assert_restores(&repo, "r5", &r5, t.path());
}

/// Killed at any point, prune leaves a repository that verifies and whose
/// kept snapshots restore; a later prune finishes the job.
#[test]
fn prune_killed_at_any_point() {
    let t = tempfile::tempdir().unwrap();
    let d = Dirs::new(t.path());
    let models = build_repo(&d, 4);
    let good = t.path().join("good");
    copy_tree(&d.repo(), &good);
    run_ok(&["forget", "--repo", good.to_str().unwrap(), "--keep-last", "2"]);
    let kept = &models[2..];
    let mut cases: Vec<(String, Option<u64>)> =
        ["prune-after-copy", "prune-after-reindex", "prune-mid-delete"].iter().map(|c| (c.to_string(), None)).collect();
    // and SIGKILL after a few delays
    for ms in [1u64, 5, 20, 60] {
        cases.push((String::new(), Some(ms)));
    }
    for (i, (point, delay)) in cases.iter().enumerate() {
        let repo = t.path().join(format!("case{i}"));
        copy_tree(&good, &repo);
        let mut cmd = Command::new(bin());
        cmd.args(["prune", "--repo", repo.to_str().unwrap()]).env("RUST_LOG", "warn");
        if !point.is_empty() {
            cmd.env("SNAPFS_CRASH_AT", point);
        }
        cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
        let mut child = cmd.spawn().unwrap();
        if let Some(ms) = delay {
            std::thread::sleep(std::time::Duration::from_millis(*ms));
            let _ = child.kill();
        }
        let st = child.wait().unwrap();
        if !point.is_empty() {
            assert!(!st.success(), "{point}: the crash point was reached");
        }
        let what = format!("case {i} ({point}{delay:?})");
        let (ok, v) = json_of(&["verify", "--json", "--read-data", "--repo", repo.to_str().unwrap()]);
        assert!(ok, "{what}: {v}");
        for (name, m) in kept {
            assert_restores(&repo, name, m, t.path());
        }
        // more is forgotten (objects in both an old and a new copy become
        // garbage) and a second prune completes
        run_ok(&["forget", "--repo", repo.to_str().unwrap(), "--keep-last", "1"]);
        run_ok(&["prune", "--repo", repo.to_str().unwrap()]);
        let (ok, v) = json_of(&["verify", "--json", "--read-data", "--repo", repo.to_str().unwrap()]);
        assert!(ok, "{what}, pruned again: {v}");
        let (name, m) = &kept[kept.len() - 1];
        assert_restores(&repo, name, m, t.path());
        let (_, p) = json_of(&["prune", "--json", "--dry-run", "--repo", repo.to_str().unwrap()]);
        assert_eq!(p["packs_deleted"], 0, "{what}: nothing left to prune: {p}");
        assert_eq!(p["packs_repacked"], 0, "{what}: nothing left to prune: {p}");
        fs::remove_dir_all(&repo).unwrap();
    }
}

/// Snapshots taken while forget and prune run: prune never removes what a
/// snapshot being taken uses.
#[test]
fn prune_beside_snapshots() {
    let t = tempfile::tempdir().unwrap();
    let dirs = Dirs::new(t.path());
    let m = dirs.mount();
    let d = m.dir.to_str().unwrap().to_string();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let models = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        s.spawn(|| {
            for r in 0..12 {
                fs::write(m.path("churn.bin"), noise(r, 300_000)).unwrap();
                fs::write(m.path(&format!("f{r}")), noise(500 + r, 50_000)).unwrap();
                let name = format!("s{r}");
                snap(&m.dir, &name);
                models.lock().unwrap().push((name, model(&dirs.raw)));
            }
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        s.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let out = snapfs(&["forget", "--keep-last", "3", "--prune", &d]);
                // an empty repository has nothing to forget; anything else must work
                assert!(
                    out.status.success() || String::from_utf8_lossy(&out.stderr).contains("no snapshot"),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        });
    });
    run_ok(&["forget", "--keep-last", "3", "--prune", &d]);
    let (ok, v) = json_of(&["verify", "--json", "--read-data", &d]);
    assert!(ok, "{v}");
    m.umount();
    let repo = dirs.repo();
    let models = models.into_inner().unwrap();
    for (name, want) in &models[models.len() - 3..] {
        assert_restores(&repo, name, want, t.path());
    }
}

#[test]
fn verify_beside_snapshots_and_forget_finds_no_damage() {
    let t = tempfile::tempdir().unwrap();
    let dirs = Dirs::new(t.path());
    let m = dirs.mount();
    let d = m.dir.to_str().unwrap().to_string();
    fs::write(m.path("base.bin"), noise(7, 2_000_000)).unwrap();
    snap(&m.dir, "base");
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        // snapshots (each a new pack) and forgets (records going away)
        s.spawn(|| {
            let mut r = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                fs::write(m.path(&format!("f{}", r % 5)), noise(100 + r, 200_000)).unwrap();
                snap(&m.dir, &format!("s{r}"));
                if r >= 3 {
                    run_ok(&["forget", &d, &format!("s{}", r - 3)]);
                }
                r += 1;
            }
        });
        for _ in 0..25 {
            let (ok, v) = json_of(&["verify", "--json", "--read-data", &d]);
            assert!(ok && v["ok"] == true, "verify beside snapshots: {v}");
        }
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    m.umount();
}

#[test]
fn browse_and_restore_beside_a_daemon_that_prunes() {
    let t = tempfile::tempdir().unwrap();
    let dirs = Dirs::new(t.path());
    let models = build_repo(&dirs, 4);
    let repo = dirs.repo();
    let m = dirs.mount();
    let bm = t.path().join("browse");
    fs::create_dir(&bm).unwrap();
    run_ok(&["browse", "--repo", repo.to_str().unwrap(), bm.to_str().unwrap()]);
    let _g = BrowseGuard(bm.clone());
    // known to the kernel before the prune (so no lookup at the browse
    // root, which would look for new packs, comes after it)
    assert!(fs::metadata(bm.join("r3/docs")).unwrap().is_dir());
    // the daemon moves the objects r3 needs into new packs, deletes the old
    let (ok, v) = json_of(&["forget", "--json", "--prune", m.dir.to_str().unwrap(), "r0", "r1", "r2"]);
    assert!(ok, "{v}");
    assert!(v["prune"]["packs_repacked"].as_u64().unwrap() + v["prune"]["packs_deleted"].as_u64().unwrap() > 0, "{v}");
    // the browse mount (its index built before) and a restore still read r3
    assert_same(&models[3].1, &model(&bm.join("r3")), "browse of r3 after prune");
    assert_restores(&repo, "r3", &models[3].1, t.path());
    drop(_g);
    m.umount();
}

#[test]
fn a_snapshot_being_restored_is_not_forgotten() {
    use snapfs::control::{call, Request};
    let t = tempfile::tempdir().unwrap();
    let dirs = Dirs::new(t.path());
    let m = dirs.mount();
    let d = m.dir.to_str().unwrap().to_string();
    fs::write(m.path("f"), b"0").unwrap();
    snap(&m.dir, "s0");
    fs::write(m.path("f"), b"1").unwrap();
    snap(&m.dir, "s1");
    let (_, list) = json_of(&["list", "--json", &d]);
    let id0 = list[0]["id"].as_str().unwrap().to_string();
    let hold = |secs| call(&m.dir, &Request::Hold { snapshot: id0.clone(), secs }, std::time::Duration::from_secs(30));
    assert!(hold(2).unwrap().ok);
    // by name and by rules: kept while held, with the reason
    let (ok, v) = json_of(&["forget", "--json", &d, "s0"]);
    assert!(ok, "{v}");
    assert_eq!(v["removed"], serde_json::json!([]), "{v}");
    assert!(v["kept"].to_string().contains("in use by a restore or rollback"), "{v}");
    let (_, v) = json_of(&["forget", "--json", "--keep-last", "1", &d]);
    assert_eq!(v["removed"], serde_json::json!([]), "{v}");
    // the hold ends by itself
    std::thread::sleep(std::time::Duration::from_millis(2200));
    let (ok, v) = json_of(&["forget", "--json", &d, "s0"]);
    assert!(ok && v["removed"][0]["name"] == "s0", "{v}");
    // a snapshot that is gone cannot be held
    let r = hold(10).unwrap();
    assert!(!r.ok && r.error.unwrap().contains("does not exist"));
    m.umount();
}
