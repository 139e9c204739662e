//! Local attackers (issue 10): a second, unprivileged user on the machine
//! must not read or damage the backups, squat or fake the control socket,
//! make the daemon follow a planted link, or feed it requests without
//! bound; and bad input from the owner gets a clear error.
//!
//! Tests that are about the second user run commands as the real user
//! `tests` (see `common::other_user`).

mod common;

use std::ffi::CString;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn out_text(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Every file under `root` is 0600 and every directory 0700.
fn assert_private(root: &Path) {
    let mut todo = vec![root.to_path_buf()];
    let mut n = 0;
    while let Some(p) = todo.pop() {
        let m = fs::symlink_metadata(&p).unwrap();
        let mode = m.mode() & 0o7777;
        if m.is_dir() {
            assert_eq!(mode, 0o700, "{} is a directory of mode {mode:o}", p.display());
            todo.extend(fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        } else {
            assert_eq!(mode, 0o600, "{} is a file of mode {mode:o}", p.display());
        }
        n += 1;
    }
    assert!(n > 10, "walked only {n} entries of {}", root.display());
}

/// Run `args` as the second user.
fn other(args: &[&str]) -> std::process::Output {
    as_other(Command::new(args[0]).args(&args[1..])).output().unwrap()
}

#[test]
fn the_repository_is_private_whatever_the_umask() {
    // SAFETY: this test's own process (nextest runs one test per process).
    unsafe { libc::umask(0) };
    let t = open_tempdir();
    let repo = t.path().join("repo");
    let d = t.path().join("d");
    fs::create_dir(&d).unwrap();
    fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
    run_ok(&["init", "--encryption", "none", repo.to_str().unwrap()]);
    let m = Mounted::with(&d, MountOpts { repo: Some(repo.clone()), ..Default::default() });
    // a root-only file and a directory of its own
    fs::write(m.path("secret"), noise(7, 300_000)).unwrap();
    fs::set_permissions(m.path("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::create_dir(m.path("private")).unwrap();
    fs::write(m.path("private/f"), b"only root").unwrap();
    fs::set_permissions(m.path("private"), fs::Permissions::from_mode(0o700)).unwrap();
    // files created through the mount still get exactly the caller's mode
    fs::write(m.path("shared"), b"for all").unwrap();
    fs::set_permissions(m.path("shared"), fs::Permissions::from_mode(0o666)).unwrap();
    let c = CString::new(m.path("made-0666").as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid path; the descriptor is closed at once.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o666) };
    assert!(fd >= 0);
    // SAFETY: our descriptor.
    unsafe { libc::close(fd) };
    snap(&m.dir, "one");
    fs::write(m.path("secret"), noise(8, 300_000)).unwrap();
    snap(&m.dir, "two");
    // prune's repacks and forget
    run_ok(&["forget", m.dir.to_str().unwrap(), "one"]);
    run_ok(&["prune", "--max-unused", "0", m.dir.to_str().unwrap()]);
    let target = t.path().join("target");
    run_ok(&["restore", m.dir.to_str().unwrap(), "two", target.to_str().unwrap()]);
    assert_eq!(fs::metadata(m.path("made-0666")).unwrap().mode() & 0o777, 0o666);
    m.umount();
    assert_eq!(fs::metadata(d.join("made-0666")).unwrap().mode() & 0o777, 0o666);
    assert_private(&repo);
    // the second user can neither read, nor change, nor delete any of it
    let pack = {
        let mut packs = vec![];
        for e in fs::read_dir(repo.join("packs")).unwrap() {
            for f in fs::read_dir(e.unwrap().path()).unwrap() {
                packs.push(f.unwrap().path());
            }
        }
        packs.pop().unwrap()
    };
    let record = fs::read_dir(repo.join("snapshots")).unwrap().next().unwrap().unwrap().path();
    for args in [
        vec!["cat", pack.to_str().unwrap()],
        vec!["grep", "-r", "only root", repo.to_str().unwrap()],
        vec!["truncate", "-s", "0", record.to_str().unwrap()],
        vec!["rm", "-f", record.to_str().unwrap()],
        vec!["ls", repo.join("packs").to_str().unwrap()],
    ] {
        let o = other(&args);
        assert!(!o.status.success(), "{args:?} as the second user worked: {}", out_text(&o));
    }
    assert!(fs::metadata(&record).unwrap().len() > 0);
    run_ok(&["verify", "--read-data", "--repo", repo.to_str().unwrap()]);
}

#[test]
fn an_old_repository_is_made_private_and_verify_warns() {
    let t = open_tempdir();
    let d = t.path().join("d");
    fs::create_dir(&d).unwrap();
    fs::write(d.join("f"), b"data").unwrap();
    let m = Mounted::new(&d);
    snap(&m.dir, "s");
    m.umount();
    // as an older snapfs left it: everything open to everyone
    let repo = d.join(".snapfs");
    assert!(Command::new("chmod").args(["-R", "a+rwX", repo.to_str().unwrap()]).status().unwrap().success());
    let o = snapfs(&["verify", "--repo", repo.to_str().unwrap()]);
    assert!(o.status.success(), "{}", out_text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("WARNING: repository not private") && err.contains("others can write"), "{err}");
    // the daemon makes it private before it writes anything
    let m = Mounted::new(&d);
    assert!(m.log_text().contains("was not private"), "{}", m.log_text());
    m.umount();
    assert_private(&repo);
    let o = snapfs(&["verify", "--repo", repo.to_str().unwrap()]);
    assert!(!String::from_utf8_lossy(&o.stderr).contains("WARNING"), "{}", out_text(&o));
}

/// Fork a child that runs as the second user and binds the abstract socket
/// name the daemon of `mountpoint` used to answer on (`snapfs-<hash>`),
/// answering every connection with `reply`. Returns its pid.
fn squat_abstract_name(mountpoint: &Path, reply: &str) -> libc::pid_t {
    let name = snapfs::control::socket_name(mountpoint);
    let (uid, gid) = other_user();
    // SAFETY: sockaddr_un is plain data.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (i, b) in name.bytes().enumerate() {
        addr.sun_path[i + 1] = b as libc::c_char;
    }
    let len = (std::mem::size_of::<libc::sa_family_t>() + 1 + name.len()) as libc::socklen_t;
    let reply = format!("{reply}\n").into_bytes();
    // SAFETY: the child only makes system calls (no allocation, no locks)
    // and leaves with _exit.
    unsafe {
        let pid = libc::fork();
        assert!(pid >= 0);
        if pid == 0 {
            if libc::setgroups(0, std::ptr::null()) != 0 || libc::setgid(gid) != 0 || libc::setuid(uid) != 0 {
                libc::_exit(2);
            }
            let s = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            if libc::bind(s, &addr as *const _ as *const libc::sockaddr, len) != 0 || libc::listen(s, 16) != 0 {
                libc::_exit(3);
            }
            loop {
                let c = libc::accept(s, std::ptr::null_mut(), std::ptr::null_mut());
                if c >= 0 {
                    let mut buf = [0u8; 4096];
                    libc::read(c, buf.as_mut_ptr() as *mut libc::c_void, buf.len());
                    libc::write(c, reply.as_ptr() as *const libc::c_void, reply.len());
                    libc::close(c);
                }
            }
        }
        pid
    }
}

struct Reap(libc::pid_t);
impl Drop for Reap {
    fn drop(&mut self) {
        // SAFETY: the child we forked, by its pid.
        unsafe {
            libc::kill(self.0, libc::SIGKILL);
            libc::waitpid(self.0, std::ptr::null_mut(), 0);
        }
    }
}

#[test]
fn the_control_socket_cannot_be_squatted_or_faked() {
    let t = open_tempdir();
    let d = t.path().join("d");
    fs::create_dir(&d).unwrap();
    let d = d.canonicalize().unwrap();
    fs::write(d.join("f"), b"data").unwrap();
    // A fake daemon answers before the real one exists, claiming a healthy
    // mount and a repository of its choosing.
    let fake = snapfs::control::Reply {
        status: Some(snapfs::control::StatusReport {
            mounted: true,
            mountpoint: "FAKE".into(),
            repository_access: "/tmp/attacker-repo".into(),
            last_session: "clean".into(),
            ..Default::default()
        }),
        ..snapfs::control::Reply::ok()
    };
    let _squatter = Reap(squat_abstract_name(&d, &serde_json::to_string(&fake).unwrap()));
    std::thread::sleep(Duration::from_millis(200));
    // the squatted name does not block the real mount...
    let m = Mounted::new(&d);
    let st = status(&m.dir);
    // ...and the client believes only the real daemon
    assert_eq!(st["mountpoint"], d.to_str().unwrap(), "{st}");
    assert_eq!(st["pid"], m.pid(), "{st}");
    let sock = snapfs::control::runtime_dir(0).join(format!("{}.sock", snapfs::control::socket_name(&d)));
    assert!(sock.exists(), "{}", sock.display());
    // the second user cannot reach the daemon, nor put a socket beside it
    let o = as_other(Command::new(bin()).args(["status", d.to_str().unwrap()])).output().unwrap();
    assert!(!o.status.success() && out_text(&o).contains("permission denied"), "{}", out_text(&o));
    let o = other(&["touch", snapfs::control::runtime_dir(0).join("planted").to_str().unwrap()]);
    assert!(!o.status.success(), "{}", out_text(&o));
    // After the daemon dies, nothing it left can be taken over: the client
    // says the daemon is gone instead of believing the squatter.
    let pid = m.pid();
    // SAFETY: the daemon this test started, by its pid.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let mut m = m;
    m.wait_exit(Duration::from_secs(10));
    let o = snapfs(&["status", d.to_str().unwrap()]);
    assert!(!o.status.success(), "{}", out_text(&o));
    assert!(out_text(&o).contains("daemon is not running"), "{}", out_text(&o));
    let o = snapfs(&["umount", d.to_str().unwrap()]);
    assert!(o.status.success() && out_text(&o).contains("its daemon was not running"), "{}", out_text(&o));
    assert!(!is_mounted(&d));
}

#[test]
fn a_reply_from_another_process_than_the_lock_holder_is_not_trusted() {
    let t = tempfile::tempdir().unwrap();
    let mp = t.path().join("never-mounted");
    fs::create_dir(&mp).unwrap();
    let l = snapfs::control::listen(&mp).unwrap();
    let lock = snapfs::control::runtime_dir(0).join(format!("{}.lock", snapfs::control::socket_name(&mp)));
    // the pid the lock holds is ours: trusted
    let served = std::thread::spawn(move || {
        let (mut s, _) = l.listener.accept().unwrap();
        let mut b = [0u8; 100];
        let _ = s.read(&mut b);
        let _ = s.write_all(b"{\"ok\":true}\n");
        l
    });
    assert!(snapfs::control::connect(&mp).is_ok());
    let l = served.join().unwrap();
    // a lock naming another process: the peer is not the daemon
    fs::write(&lock, b"1").unwrap();
    let e = snapfs::control::connect(&mp).unwrap_err();
    assert!(e.to_string().contains("not trusted"), "{e}");
    drop(l);
}

#[test]
fn control_requests_are_bounded() {
    let t = open_tempdir();
    let d = t.path().join("d");
    fs::create_dir(&d).unwrap();
    let m = Mounted::new(&d);
    let sock = snapfs::control::runtime_dir(0).join(format!("{}.sock", snapfs::control::socket_name(&m.dir)));
    let rss = |pid: u32| -> u64 {
        let s = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let kb = |k: &str| {
            s.lines().find(|l| l.starts_with(k)).and_then(|l| l.split_whitespace().nth(1)).unwrap().parse().unwrap()
        };
        kb("VmRSS:")
    };
    let before = rss(m.pid());
    // 64 MiB with no newline: refused unread, memory does not follow
    let mut s = UnixStream::connect(&sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let chunk = vec![b'x'; 1 << 20];
    for _ in 0..64 {
        if s.write_all(&chunk).is_err() {
            break;
        }
    }
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    assert!(reply.contains("request too long"), "{reply}");
    assert!(rss(m.pid()) < before + 16 * 1024, "daemon grew from {before} KiB to {} KiB", rss(m.pid()));
    // hundreds of idle connections: bounded threads, and they time out
    let idle: Vec<UnixStream> = (0..300).filter_map(|_| UnixStream::connect(&sock).ok()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let threads = |pid: u32| {
        fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("Threads:").map(|v| v.trim().parse::<u64>().unwrap()))
            .unwrap()
    };
    assert!(threads(m.pid()) < 100, "{} threads for {} idle connections", threads(m.pid()), idle.len());
    // a slow client is cut off after the deadline
    let mut slow = UnixStream::connect(&sock).unwrap();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(6));
    let _ = slow.write_all(b"{\"cmd\":");
    let mut r = String::new();
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = slow.read_to_string(&mut r);
    assert!(r.is_empty() || r.contains("in time") || r.contains("busy"), "{r}");
    assert!(t0.elapsed() < Duration::from_secs(15));
    drop(idle);
    // the daemon still answers
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(status(&m.dir)["mounted"], true);
    m.umount();
}

#[test]
fn the_browse_log_is_private_and_never_follows_a_planted_link() {
    let t = open_tempdir();
    let d = t.path().join("d");
    fs::create_dir(&d).unwrap();
    fs::write(d.join("f"), b"data").unwrap();
    let m = Mounted::new(&d);
    snap(&m.dir, "s");
    m.umount();
    let mnt = t.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let mnt = mnt.canonicalize().unwrap();
    // the second user plants a link where the log used to go
    let victim = t.path().join("victim");
    fs::write(&victim, b"root's file\n").unwrap();
    let old = std::env::temp_dir().join(format!("{}.log", snapfs::control::socket_name(&mnt)));
    let _ = fs::remove_file(&old);
    let o = other(&["ln", "-s", victim.to_str().unwrap(), old.to_str().unwrap()]);
    assert!(o.status.success(), "{}", out_text(&o));
    struct Rm(PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = fs::remove_file(&self.0);
        }
    }
    let _rm = Rm(old.clone());
    let o = snapfs(&["browse", "--repo", d.join(".snapfs").to_str().unwrap(), mnt.to_str().unwrap()]);
    let _g = BrowseGuard(mnt.clone());
    assert!(o.status.success(), "{}", out_text(&o));
    let said = String::from_utf8_lossy(&o.stdout);
    let log = PathBuf::from(said.rsplit_once("log ").unwrap().1.trim_end().trim_end_matches(')'));
    assert!(log.starts_with("/run/snapfs"), "{said}");
    assert_eq!(fs::symlink_metadata(&log).unwrap().mode() & 0o7777, 0o600);
    assert_eq!(fs::read(mnt.join("s/f")).unwrap(), b"data");
    assert_eq!(fs::read(&victim).unwrap(), b"root's file\n");
}

#[test]
fn layouts_that_would_serve_themselves_are_refused() {
    let t = open_tempdir();
    let raw = t.path().join("raw");
    fs::create_dir_all(raw.join("sub")).unwrap();
    let o = snapfs(&["mount", "--backing", raw.to_str().unwrap(), raw.join("sub").to_str().unwrap()]);
    assert!(!o.status.success() && out_text(&o).contains("inside its backing directory"), "{}", out_text(&o));
    assert!(!is_mounted(&raw.join("sub")));
    let o = snapfs(&["mount", "/"]);
    assert!(!o.status.success() && out_text(&o).contains("refusing to protect /"), "{}", out_text(&o));
    let repo = raw.join("myrepo");
    run_ok(&["init", "--encryption", "none", repo.to_str().unwrap()]);
    let dir = t.path().join("shown");
    fs::create_dir(&dir).unwrap();
    let o =
        snapfs(&["mount", "--backing", raw.to_str().unwrap(), "--repo", repo.to_str().unwrap(), dir.to_str().unwrap()]);
    assert!(!o.status.success() && out_text(&o).contains("inside the backing directory"), "{}", out_text(&o));
    assert!(!is_mounted(&dir));
}

/// `system.posix_acl_access` giving owner rw, `uid` nothing, group and
/// others read.
fn acl_denying(uid: u32) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in
        [(1u16, 6u16, u32::MAX), (2, 0, uid), (4, 4, u32::MAX), (0x10, 4, u32::MAX), (0x20, 4, u32::MAX)]
    {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

#[test]
fn acls_deny_on_browse_mounts_as_on_the_live_mount() {
    let t = open_tempdir();
    let d = t.path().join("d");
    fs::create_dir(&d).unwrap();
    fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
    let m = Mounted::new(&d);
    let f = m.path("guarded");
    fs::write(&f, b"not for tests").unwrap();
    fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
    let (uid, _) = other_user();
    let acl = acl_denying(uid);
    let c = CString::new(f.as_os_str().as_bytes()).unwrap();
    // SAFETY: valid path, name and buffer.
    let r = unsafe {
        libc::setxattr(
            c.as_ptr(),
            c"system.posix_acl_access".as_ptr(),
            acl.as_ptr() as *const libc::c_void,
            acl.len(),
            0,
        )
    };
    assert_eq!(r, 0, "setxattr: {}", std::io::Error::last_os_error());
    snap(&m.dir, "s");
    let denied = |p: &Path| {
        let o = other(&["cat", p.to_str().unwrap()]);
        assert!(!o.status.success(), "{} readable by the denied user: {}", p.display(), out_text(&o));
    };
    denied(&f);
    denied(&m.path(".snapshots/s/guarded"));
    m.umount();
    let mnt = t.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let o = snapfs(&["browse", "--repo", d.join(".snapfs").to_str().unwrap(), mnt.to_str().unwrap()]);
    let _g = BrowseGuard(mnt.clone());
    assert!(o.status.success(), "{}", out_text(&o));
    assert_eq!(fs::read(mnt.join("s/guarded")).unwrap(), b"not for tests");
    denied(&mnt.join("s/guarded"));
}

#[test]
fn schedule_intervals_are_bounded() {
    let t = open_tempdir();
    let d = t.path().join("d");
    fs::create_dir(&d).unwrap();
    let m = Mounted::new(&d);
    let o = snapfs(&["schedule", "--every", "9223372036854775807s", m.dir.to_str().unwrap()]);
    assert!(!o.status.success(), "{}", out_text(&o));
    // a request sent by hand is checked by the daemon too
    let sched = |every, max_age, settle| snapfs::control::Request::Schedule {
        every,
        max_dirty: None,
        max_age,
        settle,
        keep: None,
        off: false,
    };
    for req in
        [sched(Some(u64::MAX), None, None), sched(None, Some(u64::MAX), None), sched(None, Some(60), Some(u64::MAX))]
    {
        let r = snapfs::control::call(&m.dir, &req, Duration::from_secs(10)).unwrap();
        assert!(!r.ok && r.error.as_deref().unwrap_or("").contains("at most"), "{r:?}");
    }
    std::thread::sleep(Duration::from_secs(2));
    let (ok, list) = json_of(&["list", "--json", m.dir.to_str().unwrap()]);
    assert!(ok && list.as_array().unwrap().is_empty(), "{list}");
    m.umount();
}

#[test]
fn a_damaged_state_database_is_moved_aside_and_rebuilt() {
    let t = open_tempdir();
    let d = t.path().join("d");
    fs::create_dir(&d).unwrap();
    let repo = t.path().join("repo");
    run_ok(&["init", "--encryption", "none", repo.to_str().unwrap()]);
    let opts = MountOpts { repo: Some(repo.clone()), ..Default::default() };
    let m = Mounted::with(&d, opts.clone());
    fs::write(m.path("a"), b"one").unwrap();
    snap(&m.dir, "s1");
    fs::write(m.path("b"), b"two").unwrap();
    m.umount();
    for damage in ["conf", "record"] {
        match damage {
            // one flipped byte in sled's own file
            "conf" => {
                let p = repo.join("state/conf");
                let mut b = fs::read(&p).unwrap();
                b[10] ^= 0xff;
                fs::write(&p, b).unwrap();
            }
            // a tracker record that does not decode
            _ => {
                let db = snapfs::repo::state::StateDb::open(&repo.join("state")).unwrap();
                db.tree("inodes").unwrap().insert(7u64.to_be_bytes(), &b"\xffgarbage"[..]).unwrap();
                db.flush().unwrap();
            }
        }
        let o = snapfs(&["status", "--repo", repo.to_str().unwrap(), d.to_str().unwrap()]);
        if damage == "conf" {
            assert!(!o.status.success() && out_text(&o).contains("damaged"), "{}", out_text(&o));
        }
        let m = Mounted::with(&d, opts.clone());
        let st = status(&m.dir);
        let errors = st["health"]["errors"].to_string();
        assert!(errors.contains("state database was damaged"), "{damage}: {st}");
        fs::write(m.path("c"), damage).unwrap();
        let (ok, s) = json_of(&["snapshot", "--json", "--name", &format!("after-{damage}"), m.dir.to_str().unwrap()]);
        assert!(ok, "{s}");
        assert_eq!(s["full"], true, "the dirty set was lost: the snapshot must read everything");
        assert_eq!(fs::read(m.path(&format!(".snapshots/after-{damage}/b"))).unwrap(), b"two");
        m.umount();
        run_ok(&["verify", "--read-data", "--repo", repo.to_str().unwrap()]);
    }
    let aside = fs::read_dir(&repo)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("state.corrupt-"))
        .count();
    assert_eq!(aside, 2);
}

#[test]
fn a_rollback_to_a_bad_path_leaves_no_safety_snapshot() {
    let t = open_tempdir();
    let d = t.path().join("d");
    fs::create_dir(&d).unwrap();
    let m = Mounted::new(&d);
    fs::write(m.path("f"), b"x").unwrap();
    snap(&m.dir, "s1");
    for bad in ["no/such/path", "../etc", "f/below-a-file"] {
        let o = snapfs(&["rollback", m.dir.to_str().unwrap(), "s1", bad]);
        assert!(!o.status.success(), "{bad}: {}", out_text(&o));
    }
    let (_, list) = json_of(&["list", "--json", m.dir.to_str().unwrap()]);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    m.umount();
}

#[test]
fn output_to_a_closed_pipe_ends_quietly() {
    let t = open_tempdir();
    let d = t.path().join("d");
    fs::create_dir(&d).unwrap();
    let m = Mounted::new(&d);
    for i in 0..3 {
        snap(&m.dir, &format!("s{i}"));
    }
    for args in [vec!["list", m.dir.to_str().unwrap()], vec!["status", m.dir.to_str().unwrap()]] {
        let mut c = Command::new(bin()).args(&args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        drop(c.stdout.take()); // the reader is gone before anything is written
        let o = c.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.contains("panicked") && o.status.code() != Some(101), "{args:?}: {:?} {err}", o.status);
    }
    // a reader that goes away after one line
    let mut c = Command::new(bin())
        .args(["list", m.dir.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(c.stdout.take().unwrap()), &mut first).unwrap(); // and the pipe closes
    assert!(first.starts_with("NAME"), "{first}");
    let o = c.wait_with_output().unwrap();
    // the rest fit in the pipe (exit 0) or met the closed end (SIGPIPE, as `ls` does): never an error
    assert!(
        o.status.success() || std::os::unix::process::ExitStatusExt::signal(&o.status) == Some(libc::SIGPIPE),
        "{:?}: {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.stderr.is_empty(), "{}", String::from_utf8_lossy(&o.stderr));
    // and through a shell pipeline: head's status, one line, nothing on stderr
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!("{} list {} | head -1", bin().display(), m.dir.display()))
        .output()
        .unwrap();
    assert!(o.status.success() && o.stderr.is_empty(), "{}", out_text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 1);
    m.umount();
}
