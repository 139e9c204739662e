//! Snapshots: full then incremental, read back from the repository and
//! compared with the directory; costs counted; point in time; crash safety.

mod common;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::*;
use snapfs::repo::objects::EntryKind;
use snapfs::repo::objstore::Objects;
use snapfs::repo::store::{LocalStore, Store};
use snapfs::snapshot;

const BS: u64 = 65536;

/// A snapshot read back from the repository at `repo`.
fn read_back(repo: &Path, name: &str) -> BTreeMap<String, Node> {
    let store: Arc<dyn Store> = Arc::new(LocalStore::new(repo));
    let objects = Objects::open(store.clone(), None).unwrap();
    let all = snapshot::list(&*store).unwrap();
    let s = snapshot::find(&all, name).unwrap();
    let root = snapshot::root_entry(&objects, s.root_tree().unwrap()).unwrap();
    let mut out = BTreeMap::new();
    let mut stack = vec![(root, String::new())];
    while let Some((dir, rel)) = stack.pop() {
        for e in objects.dir_tree(&dir).unwrap().entries {
            let name = String::from_utf8_lossy(&e.name).into_owned();
            let r = if rel.is_empty() { name } else { format!("{rel}/{name}") };
            let (kind, data) = match e.kind {
                EntryKind::Dir => {
                    stack.push((e.clone(), r.clone()));
                    ("dir", Vec::new())
                }
                EntryKind::File => ("file", snapshot::read_file(&objects, &e, BS).unwrap()),
                EntryKind::Symlink => ("symlink", e.target.clone()),
                _ => ("other", Vec::new()),
            };
            let node = Node {
                kind,
                mode: e.mode,
                uid: e.uid,
                gid: e.gid,
                mtime: if kind == "dir" { (0, 0) } else { (e.mtime.sec, e.mtime.nsec as i64) },
                data,
                rdev: e.rdev,
                xattrs: e.xattrs.clone(),
            };
            out.insert(r, node);
        }
    }
    out
}

fn snap(dir: &Path, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["snapshot", "--json"];
    a.extend_from_slice(args);
    a.push(dir.to_str().unwrap());
    let out = snapfs(&a);
    assert!(out.status.success(), "snapshot failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

struct Setup {
    _t: tempfile::TempDir,
    raw: PathBuf,
    m: Mounted,
}

/// A mount of `raw` at `mnt` (backing mode, so the repository stays
/// readable at raw/.snapfs while mounted).
fn setup(fill: impl FnOnce(&Path)) -> Setup {
    let t = tempfile::tempdir().unwrap();
    let raw = t.path().join("raw");
    let mnt = t.path().join("mnt");
    fs::create_dir(&raw).unwrap();
    fs::create_dir(&mnt).unwrap();
    fill(&raw);
    let m = Mounted::with(&mnt, MountOpts { backing: Some(raw.clone()), ..Default::default() });
    Setup { _t: t, raw, m }
}

fn repo(s: &Setup) -> PathBuf {
    s.raw.join(".snapfs")
}

fn rich_tree(d: &Path) {
    fs::create_dir_all(d.join("docs/deep/er")).unwrap();
    for i in 0..20 {
        fs::write(d.join(format!("docs/note{i}.txt")), format!("note {i}\n").repeat(i + 1)).unwrap();
    }
    let big: Vec<u8> = (0..(3 * BS + 1234) as usize).map(|i| (i * 31 % 251) as u8).collect();
    fs::write(d.join("big.bin"), &big).unwrap();
    fs::write(d.join("docs/deep/er/empty"), b"").unwrap();
    fs::File::create(d.join("sparse")).unwrap().set_len(40 * BS).unwrap();
    fs::OpenOptions::new().write(true).open(d.join("sparse")).unwrap().write_all_at(b"island", 20 * BS).unwrap();
    std::os::unix::fs::symlink("docs/note1.txt", d.join("link")).unwrap();
    fs::hard_link(d.join("docs/note2.txt"), d.join("hard")).unwrap();
    let c = CString::new(d.join("fifo").as_os_str().as_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o640) }, 0);
    let c = CString::new(d.join("null").as_os_str().as_bytes()).unwrap();
    assert_eq!(unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(1, 3)) }, 0);
    let c = CString::new(d.join("big.bin").as_os_str().as_bytes()).unwrap();
    assert_eq!(unsafe { libc::setxattr(c.as_ptr(), c"user.tag".as_ptr(), b"v1".as_ptr() as *const _, 2, 0) }, 0);
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(d.join("docs/note3.txt"), fs::Permissions::from_mode(0o4751)).unwrap();
    std::os::unix::fs::chown(d.join("docs/note4.txt"), Some(65534), Some(4242)).unwrap();
}

#[test]
fn full_then_incremental_snapshots_read_back_equal() {
    let s = setup(rich_tree);
    let first = snap(&s.m.dir, &["--name", "first"]);
    assert_eq!(first["full"], true);
    // Compared with the backing directory: with the writeback cache the
    // kernel shows its own mtime for a just-written file for a while; the
    // backing file's is what persists and what a snapshot records.
    assert_same(&model(&s.raw), &read_back(&repo(&s), "first"), "first");

    // change a little of everything
    let d = &s.m.dir;
    write_at(&d.join("big.bin"), BS + 10, b"changed");
    fs::write(d.join("docs/new.txt"), b"new file").unwrap();
    fs::remove_file(d.join("docs/note7.txt")).unwrap();
    fs::rename(d.join("docs/note8.txt"), d.join("docs/deep/moved.txt")).unwrap();
    write_at(&d.join("hard"), 0, b"via the other link");
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(d.join("docs/note9.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    let c = CString::new(d.join("big.bin").as_os_str().as_bytes()).unwrap();
    assert_eq!(unsafe { libc::setxattr(c.as_ptr(), c"user.tag".as_ptr(), b"v2".as_ptr() as *const _, 2, 0) }, 0);
    fs::OpenOptions::new().write(true).open(d.join("sparse")).unwrap().set_len(50 * BS).unwrap();
    fs::create_dir(d.join("newdir")).unwrap();
    std::os::unix::fs::symlink("nowhere", d.join("newdir/dangling")).unwrap();

    let second = snap(&s.m.dir, &["--name", "second"]);
    assert_eq!(second["full"], false);
    assert_eq!(second["parent"], first["id"]);
    assert_same(&model(&s.raw), &read_back(&repo(&s), "second"), "second");
    // the first snapshot is unchanged
    let first_again = read_back(&repo(&s), "first");
    assert_eq!(first_again["big.bin"].xattrs, vec![(b"user.tag".to_vec(), b"v1".to_vec())]);
    assert!(first_again.contains_key("docs/note7.txt"));
    // both links show the change
    let second_nodes = read_back(&repo(&s), "second");
    assert_eq!(second_nodes["hard"].data, second_nodes["docs/note2.txt"].data);
    assert!(second_nodes["hard"].data.starts_with(b"via the other link"));

    // a full snapshot agrees with the incremental one
    snap(&s.m.dir, &["--full", "--name", "third"]);
    assert_same(&read_back(&repo(&s), "second"), &read_back(&repo(&s), "third"), "full vs incremental");

    // diff names what changed
    let out = snapfs(&["diff", "--json", s.m.dir.to_str().unwrap(), "first", "second"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let diff: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let paths: Vec<(String, String)> = diff["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["change"].as_str().unwrap().to_string(), e["path"].as_str().unwrap().to_string()))
        .collect();
    for want in [
        ("modified", "big.bin"),
        ("added", "docs/new.txt"),
        ("removed", "docs/note7.txt"),
        ("removed", "docs/note8.txt"),
        ("added", "docs/deep/moved.txt"),
        ("modified", "docs/note9.txt"),
        ("added", "newdir"),
    ] {
        assert!(paths.contains(&(want.0.to_string(), want.1.to_string())), "{want:?} not in {paths:?}");
    }
    let big = diff["entries"].as_array().unwrap().iter().find(|e| e["path"] == "big.bin").unwrap();
    assert_eq!(big["bytes"], BS);
    s.m.umount();
}

#[test]
fn holes_stay_holes() {
    let s = setup(rich_tree);
    snap(&s.m.dir, &["--name", "a"]);
    let store: Arc<dyn Store> = Arc::new(LocalStore::new(&repo(&s)));
    let objects = Objects::open(store.clone(), None).unwrap();
    let all = snapshot::list(&*store).unwrap();
    let root = snapshot::root_entry(&objects, all[0].root_tree().unwrap()).unwrap();
    let t = objects.dir_tree(&root).unwrap();
    let e = t.get(b"sparse").unwrap();
    let ids = snapshot::block_ids(&objects, e.content, e.levels).unwrap();
    assert_eq!(ids.len(), 40);
    let data: Vec<usize> = ids.iter().enumerate().filter(|(_, id)| !id.is_zero()).map(|(i, _)| i).collect();
    assert_eq!(data, vec![20], "only the block with data is stored");
    s.m.umount();
}

#[test]
fn incremental_cost_follows_the_change() {
    let s = setup(|d| {
        let f = fs::File::create(d.join("large")).unwrap();
        let chunk: Vec<u8> = (0..(1 << 20)).map(|i| (i % 253) as u8).collect();
        for k in 0..64u64 {
            let mut c = chunk.clone();
            c[0] = k as u8; // no two MiB alike
            f.write_all_at(&c, k << 20).unwrap();
        }
        for i in 0..200 {
            fs::write(d.join(format!("small{i}")), format!("{i}")).unwrap();
        }
    });
    let first = snap(&s.m.dir, &[]);
    assert!(first["stats"]["read_bytes"].as_u64().unwrap() >= 64 << 20);
    // no change: nothing read, almost nothing added
    let none = snap(&s.m.dir, &[]);
    assert_eq!(none["stats"]["read_bytes"], 0);
    assert!(none["stats"]["added_bytes"].as_u64().unwrap() < 1024, "{}", none["stats"]);
    // k = 3 blocks changed in a 64 MiB file, 2 small files changed
    for b in [3u64, 500, 1000] {
        write_at(&s.m.path("large"), b * BS + 100, b"xyz");
    }
    fs::write(s.m.path("small7"), b"seven").unwrap();
    fs::write(s.m.path("small8"), b"eight").unwrap();
    let inc = snap(&s.m.dir, &[]);
    let read = inc["stats"]["read_bytes"].as_u64().unwrap();
    let added = inc["stats"]["added_raw_bytes"].as_u64().unwrap();
    assert!(read <= 3 * BS + 100, "read {read} bytes for 3 changed blocks");
    // 3 blocks + 2 tiny files + changed block-list nodes (64 MiB = 1024 blocks: one node) + trees
    assert!(added <= 3 * BS + 64 * 1024, "added {added} bytes");
    assert!(added >= 3 * BS, "added {added} bytes");
    assert_same(&model(&s.raw), &read_back(&repo(&s), inc["name"].as_str().unwrap()), "incremental");
    s.m.umount();
}

#[test]
fn point_in_time_with_writers_running() {
    // Each writer bumps a counter in file A, then in file B. At any instant
    // A == B or A == B + 1; a snapshot must show such an instant.
    let s = setup(|d| {
        for w in 0..3 {
            fs::write(d.join(format!("a{w}")), b"0").unwrap();
            fs::write(d.join(format!("b{w}")), b"0").unwrap();
        }
    });
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let dir = s.m.dir.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    let v = n.to_string();
                    // fsync: the daemon has each value before the next write
                    let fa = fs::OpenOptions::new().write(true).truncate(true).open(dir.join(format!("a{w}"))).unwrap();
                    fa.write_all_at(v.as_bytes(), 0).unwrap();
                    fa.sync_data().unwrap();
                    let fb = fs::OpenOptions::new().write(true).truncate(true).open(dir.join(format!("b{w}"))).unwrap();
                    fb.write_all_at(v.as_bytes(), 0).unwrap();
                    fb.sync_data().unwrap();
                }
                n
            })
        })
        .collect();
    let mut names = Vec::new();
    for _ in 0..5 {
        std::thread::sleep(std::time::Duration::from_millis(60));
        names.push(snap(&s.m.dir, &[])["name"].as_str().unwrap().to_string());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let total: u64 = writers.into_iter().map(|w| w.join().unwrap()).sum();
    assert!(total > 10, "writers made no progress: {total}");
    for n in names {
        let nodes = read_back(&repo(&s), &n);
        for w in 0..3 {
            let num = |f: &str| -> u64 {
                let d = &nodes[f].data;
                if d.is_empty() {
                    0 // truncated, not yet written: the instant between the two
                } else {
                    String::from_utf8_lossy(d).parse().unwrap()
                }
            };
            let (a, b) = (num(&format!("a{w}")), num(&format!("b{w}")));
            assert!(
                a == b || a == b + 1 || (b == 0 && a > 0) || (a == 0 && b > 0),
                "snapshot {n}: writer {w} shows a={a} b={b}"
            );
        }
    }
    s.m.umount();
}

#[test]
fn names_are_unique_and_checked() {
    let s = setup(|d| fs::write(d.join("f"), b"x").unwrap());
    snap(&s.m.dir, &["--name", "one"]);
    let dup = snapfs(&["snapshot", "--name", "one", s.m.dir.to_str().unwrap()]);
    assert!(!dup.status.success());
    assert!(String::from_utf8_lossy(&dup.stderr).contains("exists already"));
    let bad = snapfs(&["snapshot", "--name", "no/slash", s.m.dir.to_str().unwrap()]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not valid"));
    let a = snap(&s.m.dir, &[]);
    let b = snap(&s.m.dir, &[]);
    assert_ne!(a["name"], b["name"]);
    let out = snapfs(&["list", "--json", s.m.dir.to_str().unwrap()]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 3);
    // listed from the repository alone too
    let out = snapfs(&["list", "--json", "--repo", repo(&s).to_str().unwrap()]);
    let list2: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list, list2);
    s.m.umount();
}

#[test]
fn sigkill_during_snapshots_keeps_the_repository_consistent() {
    let s = setup(|d| {
        for i in 0..40 {
            let data: Vec<u8> = (0..(BS as usize * 2)).map(|x| (x * (i + 7) % 251) as u8).collect();
            fs::write(d.join(format!("f{i}")), data).unwrap();
        }
    });
    snap(&s.m.dir, &["--name", "base"]);
    let base_model = read_back(&repo(&s), "base");
    let Setup { _t, raw, m } = s;
    let mnt = m.dir.clone();
    let mut m = m;
    for round in 0..3u64 {
        // change things, then kill the daemon while a snapshot runs
        for i in 0..40 {
            write_at(&mnt.join(format!("f{i}")), (round * 7 + i) % 2 * BS, format!("round {round}").as_bytes());
        }
        let bin = bin();
        let dir = mnt.clone();
        let pending = std::thread::spawn(move || {
            std::process::Command::new(bin).args(["snapshot", dir.to_str().unwrap()]).output().unwrap()
        });
        std::thread::sleep(std::time::Duration::from_millis(2 + round * 3));
        m.kill();
        let _ = pending.join();
        m = Mounted::with(&mnt, MountOpts { backing: Some(raw.clone()), ..Default::default() });
        // earlier snapshots are intact, and the next snapshot equals the directory
        assert_same(&base_model, &read_back(&raw.join(".snapfs"), "base"), "base after crash");
        let next = snap(&mnt, &[]);
        assert_same(&model(&raw), &read_back(&raw.join(".snapfs"), next["name"].as_str().unwrap()), "after crash");
    }
    m.umount();
    drop(_t);
}

/// Wait until the daemon of `dir` reports a snapshot in progress (sealed).
fn wait_sealed(dir: &Path) {
    let t0 = std::time::Instant::now();
    loop {
        let out = std::process::Command::new("sh").arg("-c").arg("true").output().unwrap();
        let _ = out;
        let r =
            snapfs::control::call(dir, &snapfs::control::Request::Progress, std::time::Duration::from_secs(5)).unwrap();
        if r.progress.is_some() {
            return;
        }
        assert!(t0.elapsed() < std::time::Duration::from_secs(30), "no snapshot started");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Changes made while a snapshot is being read must not reach it, and
/// writers must not wait for it.
fn copy_before_write_round(s: &Setup, incremental: bool) {
    let d = s.m.dir.clone();
    let before = model(&s.raw);
    let bin = bin();
    let dir = d.clone();
    let t_start = std::time::Instant::now();
    let snap_thread = std::thread::spawn(move || {
        let out = std::process::Command::new(bin).args(["snapshot", "--json", dir.to_str().unwrap()]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (v, std::time::Instant::now())
    });
    wait_sealed(&d);
    // change everything while the snapshot reads
    let mut during = 0u32;
    let f = fs::OpenOptions::new().write(true).open(d.join("big")).unwrap();
    for b in (0..64u64).rev() {
        f.write_all_at(&[0xEE; 4096], b * BS + 17).unwrap();
        during += 1;
    }
    f.sync_all().unwrap();
    drop(f);
    fs::OpenOptions::new().write(true).open(d.join("trunc")).unwrap().set_len(1000).unwrap();
    fs::remove_file(d.join("gone")).unwrap();
    fs::rename(d.join("dir/moved"), d.join("moved-out")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(d.join("mode"), fs::Permissions::from_mode(0o600)).unwrap();
    let c = CString::new(d.join("xattr").as_os_str().as_bytes()).unwrap();
    assert_eq!(unsafe { libc::setxattr(c.as_ptr(), c"user.v".as_ptr(), b"later".as_ptr() as *const _, 5, 0) }, 0);
    fs::write(d.join("dir/new-during"), b"not in the snapshot").unwrap();
    let t_writes_done = std::time::Instant::now();
    let (v, t_end) = snap_thread.join().unwrap();
    assert_eq!(v["full"], !incremental);
    // The writes finished before the snapshot did: writers were not held off
    // for the snapshot (with the gate held throughout, they would have waited).
    assert!(t_writes_done < t_end, "writers waited for the snapshot");
    assert!(during == 64 && t_start < t_writes_done);
    let got = read_back(&repo(s), v["name"].as_str().unwrap());
    assert_same(&before, &got, "snapshot taken while changing");
}

#[test]
fn copy_before_write_keeps_the_sealed_state() {
    let s = setup(|d| {
        // big enough that reading it takes a while in a debug build
        fs::write(d.join("big"), noise(1, 64 << 20)).unwrap();
        fs::write(d.join("trunc"), noise(2, 5 * BS as usize)).unwrap();
        fs::write(d.join("gone"), noise(3, 3 * BS as usize)).unwrap();
        fs::create_dir(d.join("dir")).unwrap();
        fs::write(d.join("dir/moved"), noise(4, 2 * BS as usize)).unwrap();
        fs::write(d.join("mode"), b"m").unwrap();
        fs::write(d.join("xattr"), b"x").unwrap();
        let c = CString::new(d.join("xattr").as_os_str().as_bytes()).unwrap();
        assert_eq!(unsafe { libc::setxattr(c.as_ptr(), c"user.v".as_ptr(), b"sealed".as_ptr() as *const _, 6, 0) }, 0);
    });
    // first snapshot: full mode
    copy_before_write_round(&s, false);
    // make everything dirty again (a new epoch), restore the names, and do
    // the same during an incremental snapshot
    let d = &s.m.dir;
    fs::write(d.join("big"), noise(5, 64 << 20)).unwrap();
    fs::write(d.join("trunc"), noise(6, 5 * BS as usize)).unwrap();
    fs::write(d.join("gone"), noise(7, 3 * BS as usize)).unwrap();
    fs::rename(d.join("moved-out"), d.join("dir/moved")).unwrap();
    fs::remove_file(d.join("dir/new-during")).unwrap();
    write_at(&d.join("dir/moved"), 0, b"dirty again");
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(d.join("mode"), fs::Permissions::from_mode(0o644)).unwrap();
    let c = CString::new(d.join("xattr").as_os_str().as_bytes()).unwrap();
    assert_eq!(unsafe { libc::setxattr(c.as_ptr(), c"user.v".as_ptr(), b"sealed2".as_ptr() as *const _, 7, 0) }, 0);
    snapfs::daemon::syncfs(d);
    copy_before_write_round(&s, true);
    s.m.umount();
}

/// A file or directory that got a new name since the last snapshot is read
/// whole by the next one (the previous snapshot has nothing at that name):
/// changes made to it while the snapshot runs must not reach it.
#[test]
fn copy_before_write_keeps_renamed_files_and_directories() {
    let s = setup(|d| {
        fs::write(d.join("aaa-big"), noise(1, 64 << 20)).unwrap();
        fs::create_dir_all(d.join("zdir/sub")).unwrap();
        fs::write(d.join("zdir/sub/f.bin"), noise(2, 8 * BS as usize)).unwrap();
        fs::write(d.join("zfile.bin"), noise(3, 8 * BS as usize)).unwrap();
        fs::write(d.join("zlinked.bin"), noise(4, 8 * BS as usize)).unwrap();
        fs::create_dir(d.join("a0")).unwrap();
        fs::create_dir(d.join("zz")).unwrap();
        fs::write(d.join("a0/hl.bin"), noise(6, 4 * BS as usize)).unwrap();
        fs::hard_link(d.join("a0/hl.bin"), d.join("zz/hl.bin")).unwrap();
    });
    let d = s.m.dir.clone();
    snap(&d, &[]);
    // the big file is read first (names in order) and slowly
    fs::write(d.join("aaa-big"), noise(5, 64 << 20)).unwrap();
    fs::rename(d.join("zdir"), d.join("zdir2")).unwrap();
    fs::rename(d.join("zfile.bin"), d.join("zfile2.bin")).unwrap();
    fs::hard_link(d.join("zlinked.bin"), d.join("zlink2.bin")).unwrap();
    write_at(&d.join("a0/hl.bin"), 0, b"dirty before the seal");
    snapfs::daemon::syncfs(&d);
    let before = model(&s.raw);
    let bin = bin();
    let dir = d.clone();
    let snap_thread = std::thread::spawn(move || {
        let out = std::process::Command::new(bin).args(["snapshot", "--json", dir.to_str().unwrap()]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    });
    wait_sealed(&d);
    // a0/hl.bin is done by now (the walk reads aaa-big); zz/hl.bin, the
    // same inode, is not
    std::thread::sleep(std::time::Duration::from_millis(50));
    write_at(&d.join("a0/hl.bin"), BS, b"after the seal, through the first name");
    let f = fs::OpenOptions::new().write(true).open(d.join("zdir2/sub/f.bin")).unwrap();
    for b in 0..8u64 {
        f.write_all_at(&[0xEE; 100], b * BS).unwrap();
    }
    f.sync_all().unwrap();
    drop(f);
    fs::OpenOptions::new().write(true).open(d.join("zfile2.bin")).unwrap().set_len(10).unwrap();
    write_at(&d.join("zlink2.bin"), 3 * BS, b"after the seal");
    fs::write(d.join("zdir2/sub/new"), b"after the seal").unwrap();
    let v = snap_thread.join().unwrap();
    assert_eq!(v["full"], false);
    assert!(v["stats"]["duration_ms"].as_u64().unwrap() > 0);
    let got = read_back(&repo(&s), v["name"].as_str().unwrap());
    assert_same(&before, &got, "snapshot while renamed things changed");
    s.m.umount();
}
