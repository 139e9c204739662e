//! Self-healing (issue 14): `verify --read-data --repair` fetches what is
//! damaged or missing from another copy of the repository, checks it
//! against its id, writes it back, and no snapshot is lost.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;

fn packs_of(repo: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for sub in fs::read_dir(repo.join("packs")).unwrap() {
        for f in fs::read_dir(sub.unwrap().path()).unwrap() {
            out.push(f.unwrap().path());
        }
    }
    out.sort_by_key(|p| std::cmp::Reverse(fs::metadata(p).unwrap().len()));
    out
}

fn flip_middle(p: &Path) {
    let mut b = fs::read(p).unwrap();
    let at = b.len() / 2;
    b[at] ^= 0x55;
    fs::write(p, b).unwrap();
}

fn verify_json(args: &[&str]) -> (bool, serde_json::Value) {
    let mut a = vec!["verify", "--json", "--read-data"];
    a.extend(args);
    json_of(&a)
}

/// `restore --repo repo s1` into `dir/target` gives `want`.
fn restores_as(dir: &Path, repo: &str, target: &str, want: &std::collections::BTreeMap<String, Node>, what: &str) {
    let target = dir.join(target);
    run_ok(&["restore", "--repo", repo, "s1", target.to_str().unwrap()]);
    assert_same(want, &model(&target), what);
}

/// A protected directory with a local repository and a replica on another
/// disk; returns (repository, replica, the data as it was snapshotted).
fn with_replica(t: &Path) -> (PathBuf, PathBuf, std::collections::BTreeMap<String, Node>) {
    let (d, repo, copy) = (t.join("d"), t.join("repo"), t.join("second-disk"));
    fs::create_dir(&d).unwrap();
    fs::write(d.join("big"), noise(1, 20 << 20)).unwrap();
    for i in 0..30 {
        fs::write(d.join(format!("f{i}")), noise(100 + i, 5000 + 700 * i as usize)).unwrap();
    }
    run_ok(&["init", "--encryption", "none", repo.to_str().unwrap()]);
    let extra = ["--repo", repo.to_str().unwrap(), "--replica", copy.to_str().unwrap()];
    let m = Mounted::with_args(&d, &extra);
    snap(&m.dir, "s1");
    run_ok(&["replica", "sync", m.dir.to_str().unwrap()]);
    let want = model(&m.dir);
    m.umount();
    (repo, copy, want)
}

#[test]
fn a_damaged_and_a_lost_local_pack_heal_from_the_replica() {
    let t = tempfile::tempdir().unwrap();
    let (repo, copy, want) = with_replica(t.path());
    let r = repo.to_str().unwrap();
    let packs = packs_of(&repo);
    assert!(packs.len() >= 2, "{packs:?}");
    flip_middle(&packs[0]);
    fs::remove_file(&packs[1]).unwrap();
    let (ok, v) = verify_json(&["--repo", r]);
    assert!(!ok && v["ok"] == false, "{v}");
    // without another copy there is nothing to heal from: named, not hidden
    let lonely = t.path().join("lonely");
    fs::create_dir(&lonely).unwrap();
    let st = std::process::Command::new("cp").arg("-a").arg(&repo).arg(lonely.join("r")).status().unwrap();
    assert!(st.success());
    fs::remove_file(lonely.join("r/replicas")).ok();
    let (ok, v) = verify_json(&["--repair", "--repo", lonely.join("r").to_str().unwrap()]);
    assert!(!ok, "{v}");
    assert!(v["repair"]["failed"].to_string().contains("no other copy"), "{v}");
    // the repository's replica (remembered with it) heals it
    let (ok, v) = verify_json(&["--repair", "--repo", r]);
    assert!(ok && v["ok"] == true, "{v}");
    let rep = &v["repair"];
    assert!(!rep["repaired"].as_array().unwrap().is_empty(), "{v}");
    assert!(rep["repaired"].to_string().contains(copy.to_str().unwrap()), "{v}");
    // (whole packs, by name: the replica holds the very same packs)
    assert!(rep["repaired"].to_string().contains("pack "), "{v}");
    // clean afterwards, and the snapshot is whole
    let (ok, v) = verify_json(&["--repo", r]);
    assert!(ok, "{v}");
    restores_as(t.path(), r, "restored", &want, "restored after the repair");
    // the repair is counted in the repository's health
    let d = t.path().join("d");
    let (_, st) = json_of(&["status", "--json", "--repo", r, d.to_str().unwrap()]);
    assert!(st["health"]["repairs"].as_u64().unwrap() > 0, "{st}");
}

#[test]
fn a_damaged_replica_heals_from_the_primary_with_from() {
    let t = tempfile::tempdir().unwrap();
    let (repo, copy, want) = with_replica(t.path());
    let c = copy.to_str().unwrap();
    flip_middle(&packs_of(&copy)[0]);
    let (ok, _) = verify_json(&["--repo", c]);
    assert!(!ok);
    // a repository that is not a copy of this one is refused as a source
    let other = t.path().join("other");
    run_ok(&["init", "--encryption", "none", other.to_str().unwrap()]);
    let o = snapfs(&["verify", "--read-data", "--repair", "--repo", c, "--from", other.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("another repository"), "{o:?}");
    let (ok, v) = verify_json(&["--repair", "--repo", c, "--from", repo.to_str().unwrap()]);
    assert!(ok, "{v}");
    restores_as(t.path(), c, "restored", &want, "restored from the healed replica");
}

/// The same on the object store: a pack corrupted in the bucket, and one
/// deleted from it, heal from the local repository.
#[test]
fn a_bucket_replica_heals_from_the_local_repository() {
    let t = tempfile::tempdir().unwrap();
    let (d, repo) = (t.path().join("d"), t.path().join("repo"));
    fs::create_dir(&d).unwrap();
    fs::write(d.join("big"), noise(5, 20 << 20)).unwrap();
    fs::write(d.join("small"), b"small").unwrap();
    run_ok(&["init", "--encryption", "none", repo.to_str().unwrap()]);
    let url = s3_url("heal");
    let extra = ["--repo", repo.to_str().unwrap(), "--replica", &url];
    let m = Mounted::with_args(&d, &extra);
    snap(&m.dir, "s1");
    run_ok(&["replica", "sync", m.dir.to_str().unwrap()]);
    let want = model(&m.dir);
    m.umount();
    // damage the bucket through the S3 API: one pack rewritten with a bit
    // flipped, one deleted
    use snapfs::repo::store::{FileKind, Store};
    let s3 = snapfs::repo::s3::S3Store::from_env(snapfs::repo::s3::S3Location::parse(&url).unwrap()).unwrap();
    let mut packs = s3.list(FileKind::Pack).unwrap();
    assert!(packs.len() >= 2, "{packs:?}");
    packs.sort_by_key(|p| std::cmp::Reverse(s3.size(FileKind::Pack, p).unwrap()));
    let mut bytes = s3.get(FileKind::Pack, &packs[0]).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x55;
    s3.delete(FileKind::Pack, &packs[0]).unwrap();
    s3.put(FileKind::Pack, &packs[0], &bytes).unwrap();
    s3.delete(FileKind::Pack, &packs[1]).unwrap();
    let (ok, _) = verify_json(&["--repo", &url]);
    assert!(!ok);
    let (ok, v) = verify_json(&["--repair", "--repo", &url, "--from", repo.to_str().unwrap()]);
    assert!(ok && v["ok"] == true, "{v}");
    restores_as(t.path(), &url, "restored", &want, "restored from the healed bucket");
}

/// Through a mount's daemon: it heals from the replicas it keeps, and
/// `status` counts what it healed.
#[test]
fn a_mounted_directory_heals_from_its_replica() {
    let t = tempfile::tempdir().unwrap();
    let (repo, copy, want) = with_replica(t.path());
    let d = t.path().join("d");
    let extra = ["--repo", repo.to_str().unwrap(), "--replica", copy.to_str().unwrap()];
    let m = Mounted::with_args(&d, &extra);
    flip_middle(&packs_of(&repo)[0]);
    let dir = m.dir.to_str().unwrap();
    let (ok, v) = verify_json(&[dir]);
    assert!(!ok, "{v}");
    let (ok, v) = verify_json(&["--repair", dir]);
    assert!(ok && v["ok"] == true, "{v}");
    assert!(status(&m.dir)["health"]["repairs"].as_u64().unwrap() > 0);
    assert_same(&want, &model(&m.dir.join(".snapshots/s1")), ".snapshots/s1 after the repair");
    m.umount();
}

/// A read of `.snapshots` that hits a damaged object gets the replica's
/// copy (checked against its id) and writes it back.
#[test]
fn a_read_that_hits_damage_heals_from_the_replica() {
    let t = tempfile::tempdir().unwrap();
    let (repo, copy, want) = with_replica(t.path());
    let d = t.path().join("d");
    flip_middle(&packs_of(&repo)[0]);
    let extra = ["--repo", repo.to_str().unwrap(), "--replica", copy.to_str().unwrap()];
    let m = Mounted::with_args(&d, &extra);
    assert_same(&want, &model(&m.dir.join(".snapshots/s1")), ".snapshots/s1 read over damage");
    assert!(status(&m.dir)["health"]["repairs"].as_u64().unwrap() > 0);
    assert!(m.log_text().contains("REPAIRED object"), "{}", m.log_text());
    m.umount();
    // what was healed on read was written back: verify finds it sound
    // (the damaged copy is still in its pack: --repair replaces it)
    let (ok, v) = verify_json(&["--repair", "--repo", repo.to_str().unwrap()]);
    assert!(ok, "{v}");
}

/// `restore` over damage: a repository heals from the replicas kept with it
/// (no option needed), a replica from `--heal-from` the primary; without
/// another copy the restore fails, naming the damage.
#[test]
fn a_restore_that_hits_damage_heals_from_another_copy() {
    let t = tempfile::tempdir().unwrap();
    let (repo, copy, want) = with_replica(t.path());
    let (r, c) = (repo.to_str().unwrap(), copy.to_str().unwrap());
    flip_middle(&packs_of(&copy)[0]);
    let lost = t.path().join("lost");
    let o = snapfs(&["restore", "--repo", c, "s1", lost.to_str().unwrap()]);
    assert!(!o.status.success(), "a restore over damage with no copy to heal from succeeded");
    // a bad --heal-from is refused before anything is read
    let o = snapfs(&["restore", "--repo", c, "--heal-from", "s3:not a url", "s1", lost.to_str().unwrap()]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--heal-from"), "{o:?}");
    let packs_before = packs_of(&copy).len();
    let target = t.path().join("from-replica");
    let o = snapfs(&["restore", "--repo", c, "--heal-from", r, "s1", target.to_str().unwrap()]);
    assert!(o.status.success(), "{o:?}");
    assert_same(&want, &model(&target), "restored from the damaged replica, healed from the primary");
    assert!(String::from_utf8_lossy(&o.stderr).contains("REPAIRED object"), "{o:?}");
    // what was healed was written back, in a new pack
    assert!(packs_of(&copy).len() > packs_before, "no pack written back");
    // the primary, damaged: its kept replica heals it, no option needed
    flip_middle(&packs_of(&repo)[0]);
    restores_as(t.path(), r, "from-primary", &want, "restored from the damaged primary, healed from its replica");
}

/// A `browse` mount over a damaged repository reads through the damage
/// from `--heal-from`.
#[test]
fn a_browse_mount_heals_from_heal_from() {
    let t = tempfile::tempdir().unwrap();
    let (repo, copy, want) = with_replica(t.path());
    flip_middle(&packs_of(&copy)[0]);
    let mnt = t.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let _g = BrowseGuard(mnt.clone());
    let (c, r) = (copy.to_str().unwrap(), repo.to_str().unwrap());
    run_ok(&["browse", "--repo", c, "--heal-from", r, mnt.to_str().unwrap()]);
    let packs_before = packs_of(&copy).len();
    assert_same(&want, &model(&mnt.join("s1")), "browse over damage");
    run_ok(&["umount", mnt.to_str().unwrap()]);
    assert!(packs_of(&copy).len() > packs_before, "no pack written back");
}
