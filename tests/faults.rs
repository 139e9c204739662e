//! Backup-device faults: the repository's device full (a size-limited
//! tmpfs), the repository unreachable (hidden by a mount, moved away). The
//! live mount keeps serving and tracking, snapshots fail clearly, and the
//! first snapshot after the fault is fixed is complete.

mod common;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn mount_cmd(args: &[&str]) {
    let out = Command::new("mount").args(args).output().expect("run mount");
    assert!(out.status.success(), "mount {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A mount made by the test (tmpfs, bind), always unmounted on drop.
struct FsMount(PathBuf);

impl FsMount {
    fn tmpfs(at: &Path, size: &str) -> FsMount {
        mount_cmd(&["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", at.to_str().unwrap()]);
        FsMount(at.to_path_buf())
    }

    fn bind(from: &Path, at: &Path) -> FsMount {
        mount_cmd(&["--bind", from.to_str().unwrap(), at.to_str().unwrap()]);
        FsMount(at.to_path_buf())
    }

    fn resize(&self, size: &str) {
        mount_cmd(&["-o", &format!("remount,size={size}"), self.0.to_str().unwrap()]);
    }
}

impl Drop for FsMount {
    fn drop(&mut self) {
        let c = CString::new(self.0.as_os_str().as_bytes()).unwrap();
        unsafe {
            if libc::umount2(c.as_ptr(), 0) != 0 {
                libc::umount2(c.as_ptr(), libc::MNT_DETACH);
            }
        }
    }
}

fn snapshot_fails(dir: &Path) -> String {
    let out = snapfs(&["snapshot", dir.to_str().unwrap()]);
    assert!(!out.status.success(), "snapshot should fail: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn restore_equals(repo: &Path, name: &str, want: &BTreeMap<String, Node>, scratch: &Path) {
    let target = scratch.join(format!("restore-{name}"));
    run_ok(&["restore", "--repo", repo.to_str().unwrap(), name, target.to_str().unwrap()]);
    assert_same(want, &model(&target), &format!("restore of {name}"));
    fs::remove_dir_all(&target).unwrap();
}

fn latest_name(repo: &Path) -> String {
    let (_, v) = json_of(&["list", "--json", "--repo", repo.to_str().unwrap()]);
    v.as_array().and_then(|a| a.last()).and_then(|s| s["name"].as_str()).expect("a snapshot").to_string()
}

/// Fill the device holding `dir` with a file at `dir/filler`.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let p = dir.join("filler");
    let mut f = fs::File::create(&p).unwrap();
    let chunk = vec![0x5au8; 64 * 1024];
    loop {
        match f.write_all(&chunk) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling {}: {e}", p.display()),
        }
    }
    let _ = f.sync_all();
    p
}

#[test]
fn full_repository_device() {
    let t = tempfile::tempdir().unwrap();
    let (raw, mnt, dev) = (t.path().join("raw"), t.path().join("mnt"), t.path().join("dev"));
    for d in [&raw, &mnt, &dev] {
        fs::create_dir(d).unwrap();
    }
    let tmpfs = FsMount::tmpfs(&dev, "8m");
    let repo = dev.join("repo");
    run_ok(&["init", "--encryption", "none", repo.to_str().unwrap()]);
    // more incompressible data than the device holds
    fs::create_dir(raw.join("data")).unwrap();
    for i in 0..6 {
        fs::write(raw.join(format!("data/f{i}.bin")), noise(i, 2 << 20)).unwrap();
    }
    let m = Mounted::with(&mnt, MountOpts { backing: Some(raw.clone()), repo: Some(repo.clone()), extra: vec![] });

    let err = snapshot_fails(&m.dir);
    assert!(err.contains("No space left on device") && err.contains("device is full"), "{err}");
    // the live mount goes on: writes, reads, tracking
    fs::write(m.path("during.txt"), b"written while the repository is full").unwrap();
    write_at(&m.path("data/f1.bin"), 70_000, b"changed while full");
    assert_eq!(fs::read(m.path("during.txt")).unwrap(), b"written while the repository is full");
    let st = status(&m.dir);
    let dirty = dirty_paths(&st);
    assert!(dirty.iter().any(|p| p == "during.txt"), "{dirty:?}");
    assert!(ranges(&st, "data/f1.bin").is_some(), "{st}");
    let failing = st["health"]["failing"].as_str().unwrap_or_default().to_string();
    assert!(failing.contains("device is full"), "{st}");
    // an orderly error in the log, and no half-written pack left behind
    assert!(m.log_text().contains("SNAPSHOT FAILED"));

    // the fault is fixed: the first snapshot after it is complete
    tmpfs.resize("64m");
    let want = model(&raw);
    let out = run_ok(&["snapshot", "--name", "after-grow", m.dir.to_str().unwrap()]);
    assert!(out.contains("after-grow"));
    let st = status(&m.dir);
    assert!(st["health"]["failing"].is_null(), "{st}");

    // full again, during an incremental
    let filler = fill(&dev);
    fs::write(m.path("data/new.bin"), noise(99, 1 << 20)).unwrap();
    write_at(&m.path("data/f2.bin"), 0, &noise(100, 300_000));
    fs::remove_file(m.path("data/f3.bin")).unwrap();
    let err = snapshot_fails(&m.dir);
    assert!(err.contains("No space left on device"), "{err}");
    // enough new tracking records for the state database to need room
    fs::create_dir(m.path("many")).unwrap();
    for i in 0..2000 {
        fs::write(m.path(&format!("many/{i}")), b"x").unwrap();
    }
    // give the tracker's periodic flush the chance to hit the full device
    std::thread::sleep(Duration::from_millis(600));
    fs::write(m.path("data/later.txt"), b"after the failed snapshot").unwrap();
    let st = status(&m.dir);
    for p in ["data/new.bin", "data/f2.bin", "data/later.txt"] {
        assert!(dirty_paths(&st).iter().any(|d| d == p), "{p} not dirty: {st}");
    }
    let state = st["health"]["state_failing"]["error"].as_str().unwrap_or_default();
    assert!(state.contains("device is full"), "the state database should have failed: {st}");

    fs::remove_file(&filler).unwrap();
    // the tracking state is written back by itself once the device has room
    let t0 = Instant::now();
    while !status(&m.dir)["health"]["state_failing"].is_null() {
        assert!(t0.elapsed() < Duration::from_secs(15), "state database not recovered: {}", m.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(m.log_text().contains("state database usable again"));
    let want2 = model(&raw);
    let (ok, v) = json_of(&["snapshot", "--json", "--name", "after-free", m.dir.to_str().unwrap()]);
    assert!(ok, "{v}");
    assert_eq!(v["full"], false, "incremental after the fault: {v}");
    let (ok, v) = json_of(&["verify", "--json", "--read-data", m.dir.to_str().unwrap()]);
    assert!(ok && v["ok"] == true, "{v}");
    m.umount();

    // the tracking state was saved: the next mount is clean
    let m = Mounted::with(&mnt, MountOpts { backing: Some(raw.clone()), repo: Some(repo.clone()), extra: vec![] });
    assert_eq!(status(&m.dir)["last_session"], "clean");
    m.umount();
    restore_equals(&repo, "after-grow", &want, t.path());
    restore_equals(&repo, "after-free", &want2, t.path());
    assert_eq!(latest_name(&repo), "after-free");
    drop(tmpfs);
}

#[test]
fn unreachable_repository() {
    let t = tempfile::tempdir().unwrap();
    let (raw, mnt, empty) = (t.path().join("raw"), t.path().join("mnt"), t.path().join("empty"));
    for d in [&raw, &mnt, &empty] {
        fs::create_dir(d).unwrap();
    }
    let repo = t.path().join("repo");
    run_ok(&["init", "--encryption", "none", repo.to_str().unwrap()]);
    fs::write(raw.join("a.txt"), b"first").unwrap();
    let m = Mounted::with(&mnt, MountOpts { backing: Some(raw.clone()), repo: Some(repo.clone()), extra: vec![] });
    snap(&m.dir, "before");

    // another (empty) filesystem mounted over the repository
    let hidden = FsMount::bind(&empty, &repo);
    fs::write(m.path("b.txt"), b"while hidden").unwrap();
    let err = snapshot_fails(&m.dir);
    assert!(err.contains("unreachable"), "{err}");
    assert!(fs::read_dir(&empty).unwrap().next().is_none(), "nothing written into the wrong place");
    assert_eq!(fs::read(m.path("b.txt")).unwrap(), b"while hidden");
    drop(hidden);

    // the repository moved away
    let moved = t.path().join("repo-moved");
    fs::rename(&repo, &moved).unwrap();
    write_at(&m.path("a.txt"), 0, b"FIRST");
    let err = snapshot_fails(&m.dir);
    assert!(err.contains("unreachable"), "{err}");
    assert!(!repo.exists(), "the repository must not be created anew");
    let st = status(&m.dir);
    assert!(dirty_paths(&st).iter().any(|p| p == "a.txt"), "{st}");
    assert!(st["health"]["failing"].as_str().unwrap_or_default().contains("unreachable"), "{st}");
    fs::rename(&moved, &repo).unwrap();

    let want = model(&raw);
    let (ok, v) = json_of(&["snapshot", "--json", "--name", "back", m.dir.to_str().unwrap()]);
    assert!(ok, "{v}");
    m.umount();
    restore_equals(&repo, "back", &want, t.path());
}
