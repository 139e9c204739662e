//! The protected mount: life cycle, refusals, permissions, POSIX passthrough.

mod common;

use std::ffi::CString;
use std::fs;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

fn tmp_dir() -> (tempfile::TempDir, std::path::PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("d");
    fs::create_dir(&d).unwrap();
    // let other users reach the mount point
    fs::set_permissions(t.path(), fs::Permissions::from_mode(0o755)).unwrap();
    (t, d)
}

fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

#[test]
fn in_place_mount_passes_through_and_hides_the_repository() {
    let (_t, d) = tmp_dir();
    fs::write(d.join("before"), b"old").unwrap();
    let m = Mounted::new(&d);
    assert_eq!(fs::read(m.path("before")).unwrap(), b"old");
    fs::write(m.path("after"), b"new").unwrap();
    let names: Vec<_> = fs::read_dir(&m.dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(!names.iter().any(|n| n == ".snapfs"), "{names:?}");
    assert_eq!(fs::metadata(m.path(".snapfs")).unwrap_err().raw_os_error(), Some(libc::ENOENT));
    assert_eq!(fs::create_dir(m.path(".snapfs")).unwrap_err().raw_os_error(), Some(libc::EPERM));
    assert_eq!(fs::write(m.path(".snapfs"), b"x").unwrap_err().raw_os_error(), Some(libc::EPERM));
    m.umount();
    assert!(!is_mounted(&d));
    // the write went to the real file, the repository lives beside it
    assert_eq!(fs::read(d.join("after")).unwrap(), b"new");
    assert!(d.join(".snapfs/config").exists());
}

#[test]
fn backing_mode_shows_raw_at_dir() {
    let (t, d) = tmp_dir();
    let raw = t.path().join("raw");
    fs::create_dir(&raw).unwrap();
    fs::write(raw.join("f"), b"raw data").unwrap();
    let m = Mounted::with(&d, MountOpts { backing: Some(raw.clone()), ..Default::default() });
    assert_eq!(fs::read(m.path("f")).unwrap(), b"raw data");
    fs::write(m.path("g"), b"via mount").unwrap();
    m.umount();
    assert_eq!(fs::read(raw.join("g")).unwrap(), b"via mount");
    assert!(raw.join(".snapfs/config").exists());
    assert!(!d.join("g").exists());
}

#[test]
fn background_mount_returns_ready_and_umount_cleans_up() {
    let (_t, d) = tmp_dir();
    let out = snapfs(&["mount", d.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // usable at once
    let ok = is_mounted(&d) && fs::write(d.join("x"), b"1").is_ok();
    let second = snapfs(&["mount", d.to_str().unwrap()]);
    let un = snapfs(&["umount", d.to_str().unwrap()]);
    if is_mounted(&d) {
        // never leave a mount behind, even when the assertions fail
        let _ = unsafe { libc::umount2(c(&d).as_ptr(), libc::MNT_DETACH) };
    }
    assert!(ok, "mount not usable when `snapfs mount` returned");
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("already protected"), "{err}");
    assert!(un.status.success(), "{}", String::from_utf8_lossy(&un.stderr));
    assert!(!is_mounted(&d));
    // `snapfs umount` returns after the daemon saved its state
    let st = status(&d);
    assert_eq!(st["last_session"], "clean");
}

#[test]
fn refusals_are_clear() {
    let (t, d) = tmp_dir();
    let out = snapfs(&["mount", t.path().join("missing").to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing"));
    // a --repo that is not a repository
    let notrepo = t.path().join("notrepo");
    fs::create_dir(&notrepo).unwrap();
    let out = snapfs(&["mount", "--repo", notrepo.to_str().unwrap(), d.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a snapfs repository"), "{err}");
    assert!(!is_mounted(&d));
    // a repository of a newer format
    let newer = t.path().join("newer");
    assert!(snapfs(&["init", "--encryption", "none", newer.to_str().unwrap()]).status.success());
    let mut cfg: serde_json::Value = serde_json::from_slice(&fs::read(newer.join("config")).unwrap()).unwrap();
    cfg["format"] = 99.into();
    fs::write(newer.join("config"), serde_json::to_vec(&cfg).unwrap()).unwrap();
    let out = snapfs(&["mount", "--repo", newer.to_str().unwrap(), d.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("newer"), "{}", String::from_utf8_lossy(&out.stderr));
    // a repository inside the mount point
    let out = snapfs(&["mount", "--repo", d.join("r").to_str().unwrap(), d.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(!is_mounted(&d));
    // init with a bad block size
    let out = snapfs(&["init", "--encryption", "none", "--block-size", "1000", t.path().join("bad").to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("power of two"));
}

#[test]
fn external_repository_with_its_block_size() {
    let (t, d) = tmp_dir();
    let r = t.path().join("repo");
    assert!(snapfs(&["init", "--encryption", "none", "--block-size", "4K", r.to_str().unwrap()]).status.success());
    fs::write(d.join("f"), vec![1u8; 64 * 1024]).unwrap();
    let m = Mounted::with(&d, MountOpts { repo: Some(r.clone()), ..Default::default() });
    write_at(&m.path("f"), 5000, b"x");
    let st = status(&m.dir);
    assert_eq!(st["block_size"], 4096);
    assert_eq!(ranges(&st, "f").unwrap(), vec![(1, 2)]);
    // a second daemon on the same repository is refused
    let (_t2, d2) = tmp_dir();
    let out = snapfs(&["mount", "--repo", r.to_str().unwrap(), d2.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!is_mounted(&d2));
    m.umount();
    assert!(!d.join(".snapfs").exists());
}

#[test]
fn plain_umount_and_signals_unmount_cleanly() {
    for how in ["umount", "TERM", "INT"] {
        let (_t, d) = tmp_dir();
        let mut m = Mounted::new(&d);
        write_at(&m.path("f"), 0, b"data");
        match how {
            "umount" => assert!(Command::new("umount").arg(&m.dir).status().unwrap().success()),
            "TERM" => unsafe { assert_eq!(libc::kill(m.pid() as i32, libc::SIGTERM), 0) },
            _ => unsafe { assert_eq!(libc::kill(m.pid() as i32, libc::SIGINT), 0) },
        };
        let st = m.wait_exit(Duration::from_secs(20)).unwrap();
        assert!(st.success(), "{how}: daemon exit {st}\n{}", m.log_text());
        assert!(!is_mounted(&d), "{how}");
        let s = status(&d);
        assert_eq!(s["last_session"], "clean", "{how}");
        assert!(dirty_paths(&s).contains(&"f".to_string()), "{how}");
    }
}

/// Run a shell `script` in a child process as uid/gid (with `groups`), returning its exit code.
fn as_user(uid: u32, gid: u32, groups: &[u32], script: &str) -> i32 {
    let groups = groups.to_vec();
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(script);
    unsafe {
        cmd.pre_exec(move || {
            // groups first: afterwards we are no longer allowed to
            if libc::setgroups(groups.len(), groups.as_ptr()) != 0 || libc::setgid(gid) != 0 || libc::setuid(uid) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.status().unwrap().code().unwrap_or(-1)
}

#[test]
fn other_users_and_permissions_behave_as_below() {
    let (_t, d) = tmp_dir();
    fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(d.join("public"), b"p").unwrap();
    fs::set_permissions(d.join("public"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(d.join("secret"), b"s").unwrap();
    fs::set_permissions(d.join("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::create_dir(d.join("open")).unwrap();
    fs::set_permissions(d.join("open"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::create_dir(d.join("group")).unwrap();
    std::os::unix::fs::chown(d.join("group"), Some(0), Some(4242)).unwrap();
    fs::set_permissions(d.join("group"), fs::Permissions::from_mode(0o2770)).unwrap();
    let m = Mounted::new(&d);
    let dir = m.dir.to_str().unwrap().to_string();
    let nobody = 65534;
    assert_eq!(as_user(nobody, nobody, &[], &format!("cat {dir}/public >/dev/null")), 0);
    assert_ne!(as_user(nobody, nobody, &[], &format!("cat {dir}/secret 2>/dev/null")), 0);
    assert_ne!(as_user(nobody, nobody, &[], &format!("touch {dir}/rootdir-file 2>/dev/null")), 0);
    assert_eq!(as_user(nobody, nobody, &[], &format!("echo hi > {dir}/open/mine && mkdir {dir}/open/sub")), 0);
    let meta = fs::metadata(m.path("open/mine")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (nobody, nobody));
    // supplementary group membership lets a user create in a group directory,
    // and the setgid directory gives the new file its group
    assert_eq!(as_user(nobody, nobody, &[4242], &format!("touch {dir}/group/g")), 0);
    let meta = fs::metadata(m.path("group/g")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (nobody, 4242));
    assert_ne!(as_user(nobody, nobody, &[], &format!("touch {dir}/group/h 2>/dev/null")), 0);
    // sticky directory: others cannot remove what they do not own
    fs::write(m.path("open/roots"), b"r").unwrap();
    assert_ne!(as_user(nobody, nobody, &[], &format!("rm -f {dir}/open/roots 2>/dev/null")), 0);
    // chmod of someone else's file is refused
    assert_ne!(as_user(nobody, nobody, &[], &format!("chmod 777 {dir}/public 2>/dev/null")), 0);
    m.umount();
}

#[test]
fn posix_operations_pass_through() {
    let (_t, d) = tmp_dir();
    let m = Mounted::new(&d);
    // symlink and readlink
    std::os::unix::fs::symlink("target/name", m.path("ln")).unwrap();
    assert_eq!(fs::read_link(m.path("ln")).unwrap().to_str().unwrap(), "target/name");
    // fifo, socket and device nodes
    let r = unsafe { libc::mkfifo(c(&m.path("fifo")).as_ptr(), 0o644) };
    assert_eq!(r, 0);
    assert!(fs::symlink_metadata(m.path("fifo")).unwrap().file_type().is_fifo_like());
    let r = unsafe { libc::mknod(c(&m.path("null")).as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) };
    assert_eq!(r, 0);
    assert_eq!(fs::symlink_metadata(m.path("null")).unwrap().rdev(), libc::makedev(1, 3));
    let sock = std::os::unix::net::UnixListener::bind(m.path("sock"));
    assert!(sock.is_ok(), "{sock:?}");
    drop(sock);
    // hard links
    fs::write(m.path("a"), b"aaa").unwrap();
    fs::hard_link(m.path("a"), m.path("b")).unwrap();
    let (ma, mb) = (fs::metadata(m.path("a")).unwrap(), fs::metadata(m.path("b")).unwrap());
    assert_eq!((ma.ino(), ma.nlink()), (mb.ino(), 2));
    // rename with NOREPLACE and EXCHANGE
    fs::write(m.path("x"), b"x").unwrap();
    fs::write(m.path("y"), b"y").unwrap();
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            c(&m.path("x")).as_ptr(),
            libc::AT_FDCWD,
            c(&m.path("y")).as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    assert_eq!((r, std::io::Error::last_os_error().raw_os_error()), (-1, Some(libc::EEXIST)));
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            c(&m.path("x")).as_ptr(),
            libc::AT_FDCWD,
            c(&m.path("y")).as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    assert_eq!(r, 0);
    assert_eq!(fs::read(m.path("x")).unwrap(), b"y");
    // O_EXCL, O_TRUNC, O_APPEND
    assert!(fs::OpenOptions::new().write(true).create_new(true).open(m.path("x")).is_err());
    fs::write(m.path("t"), b"long content").unwrap();
    fs::OpenOptions::new().write(true).truncate(true).open(m.path("t")).unwrap();
    assert_eq!(fs::metadata(m.path("t")).unwrap().len(), 0);
    for part in [b"ab".as_slice(), b"cd"] {
        fs::OpenOptions::new().append(true).open(m.path("t")).unwrap().write_all(part).unwrap();
    }
    assert_eq!(fs::read(m.path("t")).unwrap(), b"abcd");
    // utimensat with UTIME_OMIT keeps the other time
    let times =
        [libc::timespec { tv_sec: 1_000_000, tv_nsec: 5 }, libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT }];
    let before = fs::metadata(m.path("t")).unwrap();
    assert_eq!(unsafe { libc::utimensat(libc::AT_FDCWD, c(&m.path("t")).as_ptr(), times.as_ptr(), 0) }, 0);
    let after = fs::metadata(m.path("t")).unwrap();
    assert_eq!((after.atime(), after.atime_nsec()), (1_000_000, 5));
    assert_eq!((after.mtime(), after.mtime_nsec()), (before.mtime(), before.mtime_nsec()));
    // xattrs
    let p = c(&m.path("t"));
    assert_eq!(unsafe { libc::setxattr(p.as_ptr(), c"user.color".as_ptr(), b"blue".as_ptr() as *const _, 4, 0,) }, 0);
    let mut buf = [0u8; 64];
    let n = unsafe { libc::getxattr(p.as_ptr(), c"user.color".as_ptr(), buf.as_mut_ptr() as *mut _, buf.len()) };
    assert_eq!(&buf[..n as usize], b"blue");
    let n = unsafe { libc::listxattr(p.as_ptr(), buf.as_mut_ptr() as *mut _, buf.len()) };
    assert!(buf[..n as usize].windows(10).any(|w| w == b"user.color"));
    assert_eq!(unsafe { libc::removexattr(p.as_ptr(), c"user.color".as_ptr()) }, 0);
    let n = unsafe { libc::getxattr(p.as_ptr(), c"user.color".as_ptr(), buf.as_mut_ptr() as *mut _, buf.len()) };
    assert_eq!((n, std::io::Error::last_os_error().raw_os_error()), (-1, Some(libc::ENODATA)));
    // directories: mkdir, readdir of many entries, rmdir of non-empty fails
    fs::create_dir(m.path("many")).unwrap();
    for i in 0..1000 {
        fs::write(m.path(&format!("many/file-with-a-longish-name-{i:04}")), b"").unwrap();
    }
    assert_eq!(fs::read_dir(m.path("many")).unwrap().count(), 1000);
    assert_eq!(fs::remove_dir(m.path("many")).unwrap_err().raw_os_error(), Some(libc::ENOTEMPTY));
    // statfs answers
    let mut sv: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c(&m.dir).as_ptr(), &mut sv) }, 0);
    assert!(sv.f_namemax >= 255);
    // fsync and fdatasync
    let f = fs::OpenOptions::new().write(true).open(m.path("t")).unwrap();
    f.sync_all().unwrap();
    f.sync_data().unwrap();
    drop(f);
    m.umount();
}

trait FifoLike {
    fn is_fifo_like(&self) -> bool;
}
impl FifoLike for fs::FileType {
    fn is_fifo_like(&self) -> bool {
        use std::os::unix::fs::FileTypeExt;
        self.is_fifo()
    }
}

#[test]
fn file_locks_conflict_between_open_files() {
    let (_t, d) = tmp_dir();
    let m = Mounted::new(&d);
    fs::write(m.path("lock"), b"0123456789").unwrap();
    let a = fs::OpenOptions::new().read(true).write(true).open(m.path("lock")).unwrap();
    let b = fs::OpenOptions::new().read(true).write(true).open(m.path("lock")).unwrap();
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_start = 0;
    fl.l_len = 5;
    assert_eq!(unsafe { libc::fcntl(a.as_raw_fd(), libc::F_OFD_SETLK, &fl) }, 0);
    assert_eq!(unsafe { libc::fcntl(b.as_raw_fd(), libc::F_OFD_SETLK, &fl) }, -1);
    // flock too
    assert_eq!(unsafe { libc::flock(a.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }, 0);
    assert_eq!(unsafe { libc::flock(b.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }, -1);
    drop((a, b));
    m.umount();
}

#[test]
fn concurrent_writers_see_consistent_data() {
    let (_t, d) = tmp_dir();
    let m = Mounted::new(&d);
    let dir = m.dir.clone();
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let dir = dir.clone();
            std::thread::spawn(move || {
                let p = dir.join(format!("w{t}"));
                let data: Vec<u8> = (0..256 * 1024).map(|i| (i * 7 + t) as u8).collect();
                fs::write(&p, &data).unwrap();
                let mut back = Vec::new();
                fs::File::open(&p).unwrap().read_to_end(&mut back).unwrap();
                assert_eq!(back, data);
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let st = status(&m.dir);
    assert_eq!(st["dirty"]["files"], 4);
    m.umount();
}

#[test]
fn many_inodes_do_not_exhaust_descriptors() {
    // More inodes than this machine's open-file limit (20,000) allows a
    // passthrough to hold descriptors for.
    let (_t, d) = tmp_dir();
    let n = 25_000;
    for k in 0..25 {
        let sub = d.join(format!("s{k}"));
        fs::create_dir(&sub).unwrap();
        for i in 0..n / 25 {
            fs::write(sub.join(format!("f{i}")), format!("{k}/{i}")).unwrap();
        }
    }
    let m = Mounted::new(&d);
    let mut seen = 0;
    for k in 0..25 {
        for e in fs::read_dir(m.path(&format!("s{k}"))).unwrap() {
            let e = e.unwrap();
            assert!(e.metadata().unwrap().is_file());
            seen += 1;
        }
    }
    assert_eq!(seen, n);
    // every file is still reachable and right
    assert_eq!(fs::read_to_string(m.path("s0/f0")).unwrap(), "0/0");
    assert_eq!(fs::read_to_string(m.path("s24/f999")).unwrap(), "24/999");
    fs::write(m.path("s3/f7"), b"changed").unwrap();
    let fds = fs::read_dir(format!("/proc/{}/fd", m.pid())).unwrap().count();
    assert!(fds < 10_000, "daemon holds {fds} descriptors");
    let st = status(&m.dir);
    assert_eq!(st["dirty"]["files"], 1);
    m.umount();
}

#[test]
fn link_count_limit_is_the_backing_filesystems() {
    // pjdfstest's link_count_max is skipped on FUSE (glibc cannot know
    // LINK_MAX for it); check the same thing here: links up to the backing
    // limit succeed, the next one fails with EMLINK.
    let (_t, d) = tmp_dir();
    let mut sfs: libc::statfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statfs(c(&d).as_ptr(), &mut sfs) }, 0);
    if sfs.f_type != 0xEF53 {
        eprintln!("backing filesystem is not ext4; skipping");
        return;
    }
    let m = Mounted::new(&d);
    fs::write(m.path("f"), b"x").unwrap();
    fs::create_dir(m.path("links")).unwrap();
    let mut n = 1u32;
    loop {
        match fs::hard_link(m.path("f"), m.path(&format!("links/{n}"))) {
            Ok(()) => n += 1,
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EMLINK), "after {n} links: {e}");
                break;
            }
        }
        assert!(n <= 70_000, "no limit reached");
    }
    assert_eq!(n, 65_000, "ext4 allows 65,000 links");
    assert_eq!(fs::metadata(m.path("f")).unwrap().nlink(), 65_000);
    m.umount();
}

#[test]
fn a_directory_holding_something_else_at_dot_snapfs_is_refused() {
    let (_t, d) = tmp_dir();
    fs::create_dir(d.join(".snapfs")).unwrap();
    fs::write(d.join(".snapfs/unrelated"), b"x").unwrap();
    let out = snapfs(&["mount", d.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}/.snapfs: not a snapfs repository", d.display())), "{err}");
    assert!(!is_mounted(&d));
}

#[test]
fn preserved_mtimes_survive_the_writeback_cache() {
    // cp -a writes data (cached by the kernel), then sets the mtime; the
    // data reaches the daemon later and must not bump the mtime again.
    let (t, d) = tmp_dir();
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("old"), vec![5u8; 200_000]).unwrap();
    let times =
        [libc::timespec { tv_sec: 1_000_000_000, tv_nsec: 0 }, libc::timespec { tv_sec: 1_000_000_000, tv_nsec: 0 }];
    assert_eq!(unsafe { libc::utimensat(libc::AT_FDCWD, c(&src.join("old")).as_ptr(), times.as_ptr(), 0) }, 0);
    let m = Mounted::new(&d);
    let st = Command::new("cp").arg("-a").arg(src.join("old")).arg(m.path("old")).status().unwrap();
    assert!(st.success());
    m.umount();
    let meta = fs::metadata(d.join("old")).unwrap();
    assert_eq!(meta.mtime(), 1_000_000_000, "backing mtime after cp -a through the mount");
    assert_eq!(meta.len(), 200_000);
}

#[test]
fn status_ops_counts_the_requests_of_a_workload() {
    let (_t, d) = tmp_dir();
    let m = Mounted::new(&d);
    let dir = m.dir.to_str().unwrap().to_string();
    let count = |st: &serde_json::Value, op: &str| -> u64 {
        st["ops"]["ops"].as_array().unwrap().iter().find(|l| l["op"] == op).map_or(0, |l| l["count"].as_u64().unwrap())
    };
    let (ok, before) = json_of(&["status", "--ops", "--json", &dir]);
    assert!(ok, "{before}");
    for i in 0..20 {
        fs::write(m.path(&format!("f{i}")), b"x").unwrap();
    }
    fs::create_dir(m.path("sub")).unwrap();
    for i in 0..20 {
        assert!(fs::metadata(m.path(&format!("sub/missing{i}"))).is_err());
    }
    let (_, after) = json_of(&["status", "--ops", "--json", &dir]);
    // every create and mkdir reached the daemon, once each
    assert_eq!(count(&after, "create") - count(&before, "create"), 20, "{after}");
    assert_eq!(count(&after, "mkdir") - count(&before, "mkdir"), 1, "{after}");
    assert!(count(&after, "lookup") - count(&before, "lookup") >= 20, "{after}");
    for l in after["ops"]["ops"].as_array().unwrap() {
        let (n, p50, p99) =
            (l["count"].as_u64().unwrap(), l["p50_ns"].as_u64().unwrap(), l["p99_ns"].as_u64().unwrap());
        assert!(n > 0 && p50 > 0 && p50 <= p99, "{l}");
        let in_hist: u64 = l["hist"].as_array().unwrap().iter().map(|h| h[1].as_u64().unwrap()).sum();
        assert_eq!(in_hist, n, "{l}");
    }
    // a name that is not there is remembered as such: asked once, not
    // at every stat; a create through the mount fills it at once
    let before = after;
    for _ in 0..50 {
        assert!(fs::metadata(m.path("sub/missing0")).is_err());
    }
    let (_, after) = json_of(&["status", "--ops", "--json", &dir]);
    assert!(count(&after, "lookup") - count(&before, "lookup") <= 2, "{before}\n{after}");
    fs::write(m.path("sub/missing0"), b"here").unwrap();
    assert_eq!(fs::read(m.path("sub/missing0")).unwrap(), b"here");
    assert!(fs::read_dir(m.path("sub")).unwrap().any(|e| e.unwrap().file_name() == "missing0"));
    fs::remove_file(m.path("sub/missing0")).unwrap();
    assert!(fs::metadata(m.path("sub/missing0")).is_err());
    // the table names the opcodes
    let table = run_ok(&["status", "--ops", &dir]);
    assert!(table.contains("create") && table.contains("mkdir") && table.contains("p99 us"), "{table}");
    m.umount();
    // an unmounted directory has no counters
    let out = snapfs(&["status", "--ops", d.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not mounted"), "{out:?}");
}

#[test]
fn cached_directory_listings_follow_every_change_through_the_mount() {
    let (_t, d) = tmp_dir();
    fs::create_dir(d.join("sub")).unwrap();
    fs::write(d.join("sub/a"), b"a").unwrap();
    let m = Mounted::new(&d);
    let names = |rel: &str| -> Vec<String> {
        let mut v: Vec<String> =
            fs::read_dir(m.path(rel)).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    };
    let dir = m.dir.to_str().unwrap().to_string();
    let readdirs = || -> u64 {
        let (_, st) = json_of(&["status", "--ops", "--json", &dir]);
        st["ops"]["ops"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| l["op"] == "readdir" || l["op"] == "readdirplus")
            .map(|l| l["count"].as_u64().unwrap())
            .sum()
    };
    assert_eq!(names("sub"), ["a"]);
    // listed again unchanged: from the kernel's cache
    let before = readdirs();
    for _ in 0..5 {
        assert_eq!(names("sub"), ["a"]);
    }
    assert_eq!(readdirs(), before, "the listing came from the cache");
    // every kind of change shows at once
    fs::write(m.path("sub/b"), b"b").unwrap();
    assert_eq!(names("sub"), ["a", "b"]);
    fs::create_dir(m.path("sub/c")).unwrap();
    std::os::unix::fs::symlink("a", m.path("sub/l")).unwrap();
    fs::hard_link(m.path("sub/a"), m.path("sub/h")).unwrap();
    assert_eq!(names("sub"), ["a", "b", "c", "h", "l"]);
    fs::rename(m.path("sub/b"), m.path("sub/c/b2")).unwrap();
    assert_eq!(names("sub"), ["a", "c", "h", "l"]);
    assert_eq!(names("sub/c"), ["b2"]);
    fs::remove_file(m.path("sub/h")).unwrap();
    fs::remove_file(m.path("sub/c/b2")).unwrap();
    fs::remove_dir(m.path("sub/c")).unwrap();
    assert_eq!(names("sub"), ["a", "l"]);
    fs::rename(m.path("sub"), m.path("moved")).unwrap();
    assert_eq!(names("moved"), ["a", "l"]);
    assert!(!names(".").contains(&"sub".to_string()));
    m.umount();
}

#[test]
fn a_large_directory_lists_whole_and_resumes_where_it_was_told() {
    let (_t, d) = tmp_dir();
    fs::create_dir(d.join("big")).unwrap();
    let long = "n".repeat(120);
    let mut want: Vec<String> = (0..3000).map(|i| format!("{long}-{i}")).collect();
    for n in &want {
        fs::write(d.join("big").join(n), b"").unwrap();
    }
    want.sort();
    let m = Mounted::new(&d);
    let list = |p: &Path| -> Vec<String> {
        let mut v: Vec<String> =
            fs::read_dir(p).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    };
    assert_eq!(list(&m.path("big")), want, "every entry once");
    // with the attributes too (stat of each: readdirplus filled them)
    let sizes: usize =
        fs::read_dir(m.path("big")).unwrap().map(|e| e.unwrap().metadata().unwrap().len() as usize).sum();
    assert_eq!(sizes, 0);
    // telldir in the middle, read on, seekdir back: the same rest again
    unsafe {
        let p = c(&m.path("big"));
        let dir = libc::opendir(p.as_ptr());
        assert!(!dir.is_null());
        let name_of =
            |e: *mut libc::dirent| std::ffi::CStr::from_ptr((*e).d_name.as_ptr()).to_string_lossy().into_owned();
        let mut first = Vec::new();
        for _ in 0..1500 {
            first.push(name_of(libc::readdir(dir)));
        }
        // every name from where the stream stands to its end
        let to_end = || {
            let mut names = Vec::new();
            loop {
                let e = libc::readdir(dir);
                if e.is_null() {
                    return names;
                }
                names.push(name_of(e));
            }
        };
        let mark = libc::telldir(dir);
        let rest = to_end();
        libc::seekdir(dir, mark);
        let again = to_end();
        libc::closedir(dir);
        assert_eq!(rest, again, "resumed at the mark");
        let mut all: Vec<String> = first.into_iter().chain(rest).filter(|n| n != "." && n != "..").collect();
        all.sort();
        assert_eq!(all, want);
    }
    m.umount();
}
