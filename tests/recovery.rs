//! Recovery: snapshots as read-only folders in the live mount, and the
//! standalone browse mount of a repository.

mod common;

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn errno_of(r: i32) -> i32 {
    if r == 0 {
        0
    } else {
        std::io::Error::last_os_error().raw_os_error().unwrap()
    }
}

fn fill(d: &Path) {
    fs::create_dir_all(d.join("a/b")).unwrap();
    fs::write(d.join("a/b/f"), b"hello\n").unwrap();
    fs::write(d.join("big"), (0..300_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>()).unwrap();
    fs::hard_link(d.join("a/b/f"), d.join("hl")).unwrap();
    std::os::unix::fs::symlink("a/b/f", d.join("sl")).unwrap();
    fs::set_permissions(d.join("big"), fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::chown(d.join("big"), Some(65534), Some(4242)).unwrap();
    let cp = c(&d.join("big"));
    assert_eq!(unsafe { libc::setxattr(cp.as_ptr(), c"user.k".as_ptr(), b"v".as_ptr() as *const _, 1, 0) }, 0);
}

fn snap(dir: &Path, name: &str) {
    let out = snapfs(&["snapshot", "--name", name, dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Every mutating call on `dir` (a read-only snapshot folder) fails with EROFS.
fn assert_read_only(dir: &Path) {
    let p = |n: &str| c(&dir.join(n));
    type Call<'a> = Box<dyn Fn() -> i32 + 'a>;
    let calls: Vec<(&str, Call)> = vec![
        ("create", Box::new(|| unsafe { libc::open(p("new").as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o644) }.min(0))),
        ("open for write", Box::new(|| unsafe { libc::open(p("big").as_ptr(), libc::O_WRONLY) }.min(0))),
        ("truncate", Box::new(|| unsafe { libc::truncate(p("big").as_ptr(), 0) })),
        ("mkdir", Box::new(|| unsafe { libc::mkdir(p("nd").as_ptr(), 0o755) })),
        ("unlink", Box::new(|| unsafe { libc::unlink(p("big").as_ptr()) })),
        ("rmdir", Box::new(|| unsafe { libc::rmdir(p("a/b").as_ptr()) })),
        ("rename", Box::new(|| unsafe { libc::rename(p("big").as_ptr(), p("big2").as_ptr()) })),
        ("link", Box::new(|| unsafe { libc::link(p("big").as_ptr(), p("big3").as_ptr()) })),
        ("symlink", Box::new(|| unsafe { libc::symlink(c"x".as_ptr(), p("sl2").as_ptr()) })),
        ("mkfifo", Box::new(|| unsafe { libc::mkfifo(p("fifo").as_ptr(), 0o644) })),
        ("chmod", Box::new(|| unsafe { libc::chmod(p("big").as_ptr(), 0o777) })),
        ("chown", Box::new(|| unsafe { libc::chown(p("big").as_ptr(), 1, 1) })),
        ("utimes", Box::new(|| unsafe { libc::utimensat(libc::AT_FDCWD, p("big").as_ptr(), std::ptr::null(), 0) })),
        (
            "setxattr",
            Box::new(|| unsafe {
                libc::setxattr(p("big").as_ptr(), c"user.x".as_ptr(), b"1".as_ptr() as *const _, 1, 0)
            }),
        ),
        ("removexattr", Box::new(|| unsafe { libc::removexattr(p("big").as_ptr(), c"user.k".as_ptr()) })),
    ];
    for (what, f) in calls {
        assert_eq!(errno_of(f()), libc::EROFS, "{what} in {}", dir.display());
    }
}

fn same_tree(a: &Path, b: &Path) {
    let out = Command::new("diff").arg("-r").arg("--no-dereference").arg(a).arg(b).output().unwrap();
    assert!(
        out.status.success(),
        "{} and {} differ:\n{}",
        a.display(),
        b.display(),
        String::from_utf8_lossy(&out.stdout)
    );
    for rel in ["big", "a/b/f", "hl"] {
        let (x, y) = (fs::metadata(a.join(rel)).unwrap(), fs::metadata(b.join(rel)).unwrap());
        assert_eq!(
            (x.mode(), x.uid(), x.gid(), x.mtime(), x.nlink()),
            (y.mode(), y.uid(), y.gid(), y.mtime(), y.nlink()),
            "{rel}"
        );
    }
}

#[test]
fn snapshots_folder_is_hidden_read_only_and_copyable() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("d");
    fs::create_dir(&d).unwrap();
    fill(&d);
    let m = Mounted::new(&d);
    snap(&m.dir, "s1");
    fs::write(m.path("a/b/f"), b"changed\n").unwrap();
    snap(&m.dir, "s2");
    // hidden from ls, reachable by path
    let names: Vec<_> = fs::read_dir(&m.dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(!names.iter().any(|n| n == ".snapshots"), "{names:?}");
    let mut listed: Vec<_> =
        fs::read_dir(m.path(".snapshots")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    listed.sort();
    assert_eq!(listed, vec!["s1", "s2"]);
    assert_eq!(fs::read(m.path(".snapshots/s1/a/b/f")).unwrap(), b"hello\n");
    assert_eq!(fs::read(m.path(".snapshots/s2/a/b/f")).unwrap(), b"changed\n");
    // metadata, xattrs, symlinks, hard links
    let big = fs::metadata(m.path(".snapshots/s1/big")).unwrap();
    assert_eq!((big.mode() & 0o7777, big.uid(), big.gid(), big.len()), (0o640, 65534, 4242, 300_000));
    assert_eq!(fs::read_link(m.path(".snapshots/s1/sl")).unwrap().to_str().unwrap(), "a/b/f");
    let (f, hl) =
        (fs::metadata(m.path(".snapshots/s1/a/b/f")).unwrap(), fs::metadata(m.path(".snapshots/s1/hl")).unwrap());
    assert_eq!((f.ino(), f.nlink()), (hl.ino(), 2));
    let live = fs::metadata(m.path("a/b/f")).unwrap();
    assert_ne!(f.ino(), live.ino(), "snapshot inode numbers must not collide with live ones");
    let mut buf = [0u8; 8];
    let n = unsafe {
        libc::getxattr(c(&m.path(".snapshots/s1/big")).as_ptr(), c"user.k".as_ptr(), buf.as_mut_ptr() as *mut _, 8)
    };
    assert_eq!(&buf[..n as usize], b"v");
    // read-only, and .snapshots itself cannot be replaced
    assert_read_only(&m.path(".snapshots/s1"));
    assert_eq!(errno_of(unsafe { libc::mkdir(c(&m.path(".snapshots")).as_ptr(), 0o755) }), libc::EEXIST);
    assert_eq!(errno_of(unsafe { libc::rmdir(c(&m.path(".snapshots")).as_ptr()) }), libc::EROFS);
    assert_eq!(
        errno_of(unsafe { libc::rename(c(&m.path("big")).as_ptr(), c(&m.path(".snapshots/s1/x")).as_ptr()) }),
        libc::EROFS
    );
    // hot recovery with cp, and cp -a of a whole snapshot
    let st = Command::new("cp").arg(m.path(".snapshots/s1/a/b/f")).arg(m.path("a/b/f")).status().unwrap();
    assert!(st.success());
    assert_eq!(fs::read(m.path("a/b/f")).unwrap(), b"hello\n");
    let out = t.path().join("out");
    let st = Command::new("cp").arg("-a").arg(m.path(".snapshots/s2/.")).arg(&out).status().unwrap();
    assert!(st.success());
    same_tree(&m.path(".snapshots/s2"), &out);
    assert_eq!(fs::metadata(out.join("hl")).unwrap().ino(), fs::metadata(out.join("a/b/f")).unwrap().ino());
    // stable inode numbers while mounted
    let again = fs::metadata(m.path(".snapshots/s1/a/b/f")).unwrap();
    assert_eq!(again.ino(), f.ino());
    m.umount();
}

fn browse(repo: &Path, mnt: &Path, extra: &[&str]) {
    let mut a = vec!["browse", "--repo", repo.to_str().unwrap()];
    a.extend_from_slice(extra);
    a.push(mnt.to_str().unwrap());
    let out = snapfs(&a);
    assert!(out.status.success(), "browse: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn browse_a_copy_of_the_repository() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("d");
    fs::create_dir(&d).unwrap();
    fill(&d);
    let m = Mounted::new(&d);
    snap(&m.dir, "s1");
    m.umount();
    // the repository alone, somewhere else; the protected directory is gone
    let copy = t.path().join("elsewhere");
    assert!(Command::new("cp").arg("-a").arg(d.join(".snapfs")).arg(&copy).status().unwrap().success());
    fs::remove_dir_all(copy.join("state")).unwrap();
    let expect = t.path().join("expect");
    assert!(Command::new("cp").arg("-a").arg(&d).arg(&expect).status().unwrap().success());
    fs::remove_dir_all(expect.join(".snapfs")).unwrap();
    fs::remove_dir_all(&d).unwrap();

    let mnt = t.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    browse(&copy, &mnt, &[]);
    let _g = BrowseGuard(mnt.clone());
    assert!(is_mounted(&mnt));
    same_tree(&expect, &mnt.join("s1"));
    assert_read_only(&mnt.join("s1"));
    assert_eq!(errno_of(unsafe { libc::mkdir(c(&mnt.join("x")).as_ptr(), 0o755) }), libc::EROFS);
    let out = snapfs(&["umount", mnt.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // one snapshot as the mount's root
    browse(&copy, &mnt, &["--snapshot", "s1"]);
    same_tree(&expect, &mnt);
    let out = snapfs(&["umount", mnt.to_str().unwrap()]);
    assert!(out.status.success());
    // an unknown snapshot is refused
    let out = snapfs(&["browse", "--repo", copy.to_str().unwrap(), "--snapshot", "nope", mnt.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"));
    assert!(!is_mounted(&mnt));
}

/// `t/d` with one snapshot `s1` of one file, `victim`, whose blocks are all
/// in the repository's only pack; one byte in the middle of that pack
/// flipped. Returns `t/d`.
fn damaged_repository(t: &Path) -> PathBuf {
    let d = t.join("d");
    fs::create_dir(&d).unwrap();
    fs::write(d.join("victim"), (0..200_000u32).map(|i| (i * 7 % 253) as u8).collect::<Vec<_>>()).unwrap();
    let m = Mounted::new(&d);
    snap(&m.dir, "s1");
    m.umount();
    // a data pack and a metadata pack: the data one (the larger) is damaged
    let mut packs: Vec<PathBuf> = walk_files(&d.join(".snapfs/packs"));
    assert_eq!(packs.len(), 2);
    packs.sort_by_key(|p| fs::metadata(p).unwrap().len());
    let mut bytes = fs::read(&packs[1]).unwrap();
    let mid = bytes.len() / 3;
    bytes[mid] ^= 0x40;
    fs::write(&packs[1], &bytes).unwrap();
    d
}

#[test]
fn damaged_pack_reads_fail_with_eio_naming_the_file() {
    let t = tempfile::tempdir().unwrap();
    let d = damaged_repository(t.path());

    let mnt = t.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let logf = t.path().join("browse.log");
    let child = Command::new(bin())
        .args(["browse", "--foreground", "--repo", d.join(".snapfs").to_str().unwrap(), mnt.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .stderr(fs::File::create(&logf).unwrap())
        .spawn()
        .unwrap();
    let mut child = ChildGuard(child);
    let _g = BrowseGuard(mnt.clone());
    let t0 = std::time::Instant::now();
    while !is_mounted(&mnt) {
        assert!(t0.elapsed() < std::time::Duration::from_secs(20), "browse did not mount");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let r = fs::read(mnt.join("s1/victim"));
    let err = r.expect_err("reading damaged data must fail");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    drop(_g);
    let _ = child.0.wait();
    let log = fs::read_to_string(&logf).unwrap();
    assert!(log.contains("snapshot s1") && log.contains("victim"), "log does not name the file:\n{log}");
}

/// Kills the daemon we started (our own child) if the test ends early.
struct ChildGuard(std::process::Child);
impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn walk_files(d: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(d).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk_files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn restore(args: &[&str]) -> std::process::Output {
    let mut a = vec!["restore"];
    a.extend_from_slice(args);
    snapfs(&a)
}

#[test]
fn restore_equals_every_snapshot_and_refuses_non_empty_targets() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("d");
    fs::create_dir(&d).unwrap();
    fill(&d);
    fs::File::create(d.join("sparse")).unwrap().set_len(1 << 22).unwrap();
    write_at(&d.join("sparse"), 1 << 21, b"island");
    // larger than a restore part (32 MiB): written by several workers
    fs::File::create(d.join("parted")).unwrap().set_len(70 << 20).unwrap();
    for off in [0u64, 33 << 20, 66 << 20, (70 << 20) - 6] {
        write_at(&d.join("parted"), off, b"island");
    }
    let c_fifo = c(&d.join("fifo"));
    assert_eq!(unsafe { libc::mkfifo(c_fifo.as_ptr(), 0o640) }, 0);
    let m = Mounted::new(&d);
    snap(&m.dir, "s1");
    let want1 = model(&m.path(".snapshots/s1"));
    fs::write(m.path("a/b/f"), b"second\n").unwrap();
    fs::remove_file(m.path("sl")).unwrap();
    fs::create_dir(m.path("newdir")).unwrap();
    fs::write(m.path("newdir/n"), vec![9u8; 100_000]).unwrap();
    write_at(&m.path("parted"), 40 << 20, b"changed");
    snap(&m.dir, "s2");
    let want2 = model(&m.path(".snapshots/s2"));
    for (name, want) in [("s1", &want1), ("s2", &want2)] {
        for j in ["1", "4"] {
            let target = t.path().join(format!("r-{name}-{j}"));
            let out = restore(&["-j", j, m.dir.to_str().unwrap(), name, target.to_str().unwrap()]);
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            assert_same(want, &model(&target), &format!("restore of {name} with -j {j}"));
            let (a, b) = (fs::metadata(target.join("hl")).unwrap(), fs::metadata(target.join("a/b/f")).unwrap());
            assert_eq!(a.ino(), b.ino(), "hard links restored as hard links");
            for sparse in ["sparse", "parted"] {
                let sp = fs::metadata(target.join(sparse)).unwrap();
                assert!(sp.blocks() * 512 < 1 << 20, "{sparse} restored with {} blocks", sp.blocks());
            }
            assert!(!target.join(".snapfs-restore").exists());
        }
    }
    // a non-empty target is refused, --overwrite rewrites only what differs
    // (and removes attributes the snapshot does not have)
    let target = t.path().join("r-s1-1");
    let cf = c(&target.join("sparse"));
    assert_eq!(unsafe { libc::setxattr(cf.as_ptr(), c"user.extra".as_ptr(), b"x".as_ptr() as *const _, 1, 0) }, 0);
    let out = restore(&[m.dir.to_str().unwrap(), "s2", target.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
    let out = restore(&["--overwrite", "--json", m.dir.to_str().unwrap(), "s2", target.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(st["written"].as_u64().unwrap() < 400_000, "overwrite rewrote too much: {st}");
    let mut got = model(&target);
    got.remove("sl"); // overwrite leaves what the snapshot does not have
    assert_same(&want2, &got, "overwrite s1 -> s2");
    // a subtree, from the repository alone
    m.umount();
    let sub = t.path().join("sub");
    let out = restore(&["--repo", d.join(".snapfs").to_str().unwrap(), "s2:newdir", sub.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(fs::read(sub.join("n")).unwrap(), vec![9u8; 100_000]);
}

#[test]
fn restore_never_writes_outside_the_target() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("d");
    fs::create_dir_all(d.join("a")).unwrap();
    fs::write(d.join("a/inside"), b"data").unwrap();
    // a symlink in the snapshot pointing outside: restored as a link, never followed
    let outside = t.path().join("outside");
    fs::create_dir(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, d.join("escape")).unwrap();
    let m = Mounted::new(&d);
    snap(&m.dir, "s1");
    m.umount();
    // the target holds a symlink where the snapshot has a directory
    let target = t.path().join("target");
    fs::create_dir(&target).unwrap();
    std::os::unix::fs::symlink(&outside, target.join("a")).unwrap();
    let out = restore(&["--overwrite", "--repo", d.join(".snapfs").to_str().unwrap(), "s1", target.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0, "something was written outside the target");
    assert!(fs::symlink_metadata(target.join("a")).unwrap().is_dir());
    assert_eq!(fs::read(target.join("a/inside")).unwrap(), b"data");
    assert_eq!(fs::read_link(target.join("escape")).unwrap(), outside);

    // the progress marker's name is a symlink to a file outside, or a fifo
    let victim = t.path().join("victim");
    fs::write(&victim, b"keep").unwrap();
    fs::set_permissions(&victim, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let target2 = t.path().join("target2");
    fs::create_dir(&target2).unwrap();
    std::os::unix::fs::symlink(&victim, target2.join(".snapfs-restore")).unwrap();
    let out = restore(&["--overwrite", "--repo", d.join(".snapfs").to_str().unwrap(), "s1", target2.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(fs::read(&victim).unwrap(), b"keep", "the marker was written through a symlink");
    assert!(!target2.join(".snapfs-restore").exists());
    // a symlink where a file's metadata is set later is never followed
    // (chmod of the restored entries goes through no link)
    let target3 = t.path().join("target3");
    fs::create_dir(&target3).unwrap();
    let c = c(&target3.join(".snapfs-restore"));
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let out = restore(&["--overwrite", "--repo", d.join(".snapfs").to_str().unwrap(), "s1", target3.to_str().unwrap()]);
    assert!(out.status.success(), "a fifo at the marker's name: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(fs::metadata(&victim).unwrap().permissions().mode() & 0o7777, 0o644);
}

#[test]
fn an_interrupted_restore_continues() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("d");
    fs::create_dir(&d).unwrap();
    for i in 0..300 {
        let data: Vec<u8> = (0..300_000u32).map(|x| ((x + i) % 249) as u8).collect();
        fs::write(d.join(format!("f{i}")), data).unwrap();
    }
    let m = Mounted::new(&d);
    snap(&m.dir, "s1");
    m.umount();
    let repo = d.join(".snapfs");
    let target = t.path().join("target");
    // kill the first run once some, not all, files are there
    let child = Command::new(bin())
        .args(["restore", "-j", "1", "--repo", repo.to_str().unwrap(), "s1", target.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut child = ChildGuard(child);
    let t0 = std::time::Instant::now();
    loop {
        let n = fs::read_dir(&target).map(|r| r.count()).unwrap_or(0);
        if n >= 5 {
            break;
        }
        assert!(t0.elapsed() < std::time::Duration::from_secs(30), "restore made no progress");
        std::thread::sleep(std::time::Duration::from_micros(500));
    }
    let _ = child.0.kill();
    let _ = child.0.wait();
    assert!(target.join(".snapfs-restore").exists(), "the first run finished before it could be interrupted");
    // run the same restore again, without --overwrite
    let out = restore(&["--repo", repo.to_str().unwrap(), "s1", target.to_str().unwrap()]);
    assert!(out.status.success(), "rerun failed: {}", String::from_utf8_lossy(&out.stderr));
    let mut want = model(&d);
    want.retain(|k, _| !k.starts_with(".snapfs"));
    assert_same(&want, &model(&target), "resumed restore");
}

#[test]
fn restore_of_damaged_data_fails_naming_the_file() {
    let t = tempfile::tempdir().unwrap();
    let d = damaged_repository(t.path());
    let target = t.path().join("target");
    let out = restore(&["--repo", d.join(".snapfs").to_str().unwrap(), "s1", target.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("victim") && err.contains("damaged"), "{err}");
}

#[test]
fn rollback_in_place_writes_only_what_changed() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("d");
    fs::create_dir(&d).unwrap();
    fill(&d);
    fs::write(d.join("large"), (0..(64 * 65536u32)).map(|i| (i % 247) as u8).collect::<Vec<_>>()).unwrap();
    let m = Mounted::new(&d);
    snap(&m.dir, "good");
    // damage a little of everything, with a file kept open (in use)
    let held = fs::File::open(m.path("large")).unwrap();
    write_at(&m.path("large"), 10 * 65536 + 5, b"oops");
    fs::write(m.path("a/b/f"), b"bad\n").unwrap();
    fs::remove_file(m.path("sl")).unwrap();
    fs::create_dir(m.path("junk")).unwrap();
    fs::write(m.path("junk/x"), b"x").unwrap();
    fs::set_permissions(m.path("big"), fs::Permissions::from_mode(0o600)).unwrap();
    snap(&m.dir, "later");
    let out = snapfs(&["rollback", "--json", m.dir.to_str().unwrap(), "good"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // one 64 KiB block of the large file, and the small file
    assert!(st["written"].as_u64().unwrap() <= 65536 + 64, "rollback wrote {}", st["written"]);
    drop(held);
    // the directory now equals the snapshot
    snap(&m.dir, "after");
    let out = snapfs(&["diff", "--json", m.dir.to_str().unwrap(), "good", "after"]);
    let diff: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(diff["entries"], serde_json::json!([]), "after rollback: {diff}");
    // all snapshots are kept, and a safety snapshot was taken
    let out = snapfs(&["list", "--json", m.dir.to_str().unwrap()]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = list.as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"later") && names.iter().any(|n| n.starts_with("before-rollback-")), "{names:?}");
    assert_same(
        &model(&m.path(".snapshots/later")),
        &model(&m.path(&format!(".snapshots/{}", names.iter().find(|n| n.starts_with("before-rollback-")).unwrap()))),
        "safety snapshot",
    );
    // a subtree only
    fs::write(m.path("a/b/f"), b"again\n").unwrap();
    fs::write(m.path("big"), b"other").unwrap();
    let out = snapfs(&["rollback", m.dir.to_str().unwrap(), "good", "a"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(fs::read(m.path("a/b/f")).unwrap(), b"hello\n");
    assert_eq!(fs::read(m.path("big")).unwrap(), b"other", "outside the path: untouched");
    // two files linked together since the snapshot: each gets its own back
    fs::write(m.path("x1"), b"one").unwrap();
    fs::write(m.path("x2"), b"two").unwrap();
    snap(&m.dir, "pair");
    fs::remove_file(m.path("x2")).unwrap();
    fs::hard_link(m.path("x1"), m.path("x2")).unwrap();
    let out = snapfs(&["rollback", m.dir.to_str().unwrap(), "pair"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(fs::read(m.path("x1")).unwrap(), b"one");
    assert_eq!(fs::read(m.path("x2")).unwrap(), b"two");
    m.umount();
}

/// Not as root: a restore run again over files it made read-only goes
/// through (they become writable for a moment, their mode is set after).
#[test]
fn restore_again_as_a_user_over_read_only_files() {
    let t = tempfile::tempdir().unwrap();
    fs::set_permissions(t.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let d = t.path().join("d");
    fs::create_dir(&d).unwrap();
    fs::write(d.join("ro"), b"read only").unwrap();
    fs::set_permissions(d.join("ro"), fs::Permissions::from_mode(0o444)).unwrap();
    std::os::unix::fs::chown(d.join("ro"), Some(1001), Some(1001)).unwrap();
    // (another owner than the user: not restored, as with tar)
    fs::write(d.join("roots"), b"root's").unwrap();
    let m = Mounted::new(&d);
    snap(&m.dir, "s1");
    m.umount();
    // the repository readable by the user
    let st = Command::new("chmod").args(["-R", "a+rX", d.join(".snapfs").to_str().unwrap()]).status().unwrap();
    assert!(st.success());
    let target = t.path().join("target");
    fs::create_dir(&target).unwrap();
    std::os::unix::fs::chown(&target, Some(1001), Some(1001)).unwrap();
    let as_user = |extra: &[&str]| {
        let mut cmd = Command::new(bin());
        cmd.args(["restore", "--repo", d.join(".snapfs").to_str().unwrap()]);
        cmd.args(extra).args(["s1", target.to_str().unwrap()]);
        unsafe {
            cmd.pre_exec(|| {
                if libc::setgid(1001) != 0 || libc::setuid(1001) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        };
        cmd.output().unwrap()
    };
    let out = as_user(&[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("owners are not restored"));
    assert_eq!(fs::metadata(target.join("roots")).unwrap().uid(), 1001);
    assert_eq!(fs::metadata(target.join("ro")).unwrap().permissions().mode() & 0o777, 0o444);
    let out = as_user(&["--overwrite"]);
    assert!(out.status.success(), "again: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(fs::read(target.join("ro")).unwrap(), b"read only");
    assert_eq!(fs::metadata(target.join("ro")).unwrap().permissions().mode() & 0o777, 0o444);
}
