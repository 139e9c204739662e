//! Deep trees (issue 10, item 3): a user's `mkdir d; cd d` thousands of
//! times must not take the mount down. Every walk (snapshot, verify,
//! verify --live, diff, restore, rollback, prune, the view) handles a
//! 4,000-level tree, whose paths are far longer than PATH_MAX; a tree
//! deeper than the limit gives a clear error and the daemon keeps serving.
//!
//! Paths that deep cannot be used by name: everything here goes through
//! descriptors (`openat`/`mkdirat` from the level above), and deep trees
//! are removed the same way, with O(1) descriptors.

mod common;

use std::ffi::{CStr, CString};
use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use common::*;

const DEPTH: usize = 4000;
const LIMIT: usize = snapfs::util::MAX_DEPTH;

fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_encoded_bytes()).unwrap()
}

fn open_dir_path(p: &Path) -> OwnedFd {
    let fd = unsafe { libc::open(c(p).as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    assert!(fd >= 0, "open {}: {}", p.display(), std::io::Error::last_os_error());
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn openat_dir(dir: RawFd, name: &CStr) -> std::io::Result<OwnedFd> {
    let fd = unsafe {
        libc::openat(dir, name.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Make `levels` nested directories `d` below `top`; returns the lowest.
fn make_chain(top: &Path, levels: usize) -> OwnedFd {
    let mut cur = open_dir_path(top);
    for i in 0..levels {
        let r = unsafe { libc::mkdirat(cur.as_raw_fd(), c"d".as_ptr(), 0o755) };
        assert_eq!(r, 0, "mkdirat at level {i}: {}", std::io::Error::last_os_error());
        cur = openat_dir(cur.as_raw_fd(), c"d").unwrap();
    }
    cur
}

/// Go down `levels` directories `d` from `top` (one descriptor at a time).
fn down(top: &Path, levels: usize) -> OwnedFd {
    let mut cur = open_dir_path(top);
    for i in 0..levels {
        cur = openat_dir(cur.as_raw_fd(), c"d").unwrap_or_else(|e| panic!("{}: level {i}: {e}", top.display()));
    }
    cur
}

fn write_at(dir: RawFd, name: &CStr, data: &[u8]) {
    let fd = unsafe { libc::openat(dir, name.as_ptr(), libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC, 0o644) };
    assert!(fd >= 0, "create {name:?}: {}", std::io::Error::last_os_error());
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let n = unsafe { libc::write(fd.as_raw_fd(), data.as_ptr() as *const _, data.len()) };
    assert_eq!(n, data.len() as isize);
}

fn read_at(dir: RawFd, name: &CStr) -> Vec<u8> {
    let fd = unsafe { libc::openat(dir, name.as_ptr(), libc::O_RDONLY | libc::O_NOFOLLOW) };
    assert!(fd >= 0, "open {name:?}: {}", std::io::Error::last_os_error());
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    fs::read(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap()
}

/// Remove `top/name` and everything below it, however deep: down one
/// level at a time, up again through `..`; never more than two
/// descriptors, never a long path.
fn rm_tree(top: &Path, name: &CStr) {
    let Ok(parent) = fs::File::open(top).map(OwnedFd::from) else { return };
    let Ok(mut cur) = openat_dir(parent.as_raw_fd(), name) else { return };
    let mut names: Vec<CString> = vec![name.to_owned()];
    loop {
        let mut sub = None;
        for e in fs::read_dir(format!("/proc/self/fd/{}", cur.as_raw_fd())).unwrap() {
            let e = e.unwrap();
            let n = CString::new(e.file_name().as_encoded_bytes()).unwrap();
            if e.file_type().unwrap().is_dir() {
                sub = Some(n);
                break;
            }
            assert_eq!(unsafe { libc::unlinkat(cur.as_raw_fd(), n.as_ptr(), 0) }, 0);
        }
        if let Some(n) = sub {
            cur = openat_dir(cur.as_raw_fd(), &n).unwrap();
            names.push(n);
            continue;
        }
        let n = names.pop().unwrap();
        let up =
            if names.is_empty() { parent.try_clone().unwrap() } else { openat_dir(cur.as_raw_fd(), c"..").unwrap() };
        drop(cur);
        let r = unsafe { libc::unlinkat(up.as_raw_fd(), n.as_ptr(), libc::AT_REMOVEDIR) };
        assert_eq!(r, 0, "rmdir: {}", std::io::Error::last_os_error());
        if names.is_empty() {
            return;
        }
        cur = up;
    }
}

/// The daemon runs, the mount answers, the control socket answers.
fn assert_alive(m: &mut Mounted, step: &str) {
    if let Some(st) = m.child.as_mut().unwrap().try_wait().unwrap() {
        panic!("after {step}: the daemon exited ({st}):\n{}", m.log_text());
    }
    assert!(is_mounted(&m.dir), "after {step}: not mounted");
    assert_eq!(fs::read(m.path("top.txt")).unwrap_or_default(), b"top\n", "after {step}: the mount does not answer");
    let out = snapfs(&["status", m.dir.to_str().unwrap()]);
    assert!(out.status.success(), "after {step}: status: {}", String::from_utf8_lossy(&out.stderr));
}

fn deep_path(levels: usize, leaf: &str) -> String {
    format!("{}{leaf}", "d/".repeat(levels))
}

#[test]
fn a_4000_level_tree_goes_through_every_walk() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("dir");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("top.txt"), b"top\n").unwrap();
    // the tree is made in the directory before it is protected (fast)
    {
        let bottom = make_chain(&dir, DEPTH);
        write_at(bottom.as_raw_fd(), c"f", b"version 1\n");
        let mid = down(&dir, DEPTH / 2);
        write_at(mid.as_raw_fd(), c"m", b"middle\n");
    }
    let target = t.path().join("target");
    struct Cleanup<'a>(&'a Path, &'a Path);
    impl Drop for Cleanup<'_> {
        fn drop(&mut self) {
            rm_tree(self.0, c"d");
            rm_tree(self.1, c"d");
        }
    }
    let _cleanup = Cleanup(&dir, &target);
    let mut m = Mounted::new(&dir);
    let d = m.dir.to_str().unwrap().to_string();
    let d = d.as_str();

    snap(&m.dir, "s1");
    assert_alive(&mut m, "the full snapshot");

    // change the bottom file through the mount
    write_at(down(&m.dir, DEPTH).as_raw_fd(), c"f", b"version 2, longer\n");
    let st = status(&m.dir);
    assert!(
        dirty_paths(&st).contains(&deep_path(DEPTH, "f")),
        "status --files names the deep file: {:?}",
        dirty_paths(&st).iter().map(|p| p.len()).collect::<Vec<_>>()
    );
    snap(&m.dir, "s2");
    assert_alive(&mut m, "the incremental snapshot");
    let (ok, list) = json_of(&["list", "--json", d]);
    assert!(ok);
    assert_eq!(list[1]["name"], "s2");
    assert_eq!(list[1]["full"], false, "the second snapshot is incremental");

    let (ok, v) = json_of(&["verify", "--json", "--read-data", d]);
    assert!(ok && v["ok"] == true, "verify --read-data: {v}");
    assert_alive(&mut m, "verify --read-data");
    let (ok, v) = json_of(&["verify", "--json", "--live", d]);
    assert!(ok && v["ok"] == true, "verify --live: {v}");
    assert_alive(&mut m, "verify --live");

    let (ok, v) = json_of(&["diff", "--json", d, "s1", "s2"]);
    assert!(ok, "diff: {v}");
    let entries = v["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "one change: {:?}", entries.iter().map(|e| &e["change"]).collect::<Vec<_>>());
    assert_eq!(entries[0]["path"], deep_path(DEPTH, "f"));
    assert_eq!(entries[0]["change"], "modified");
    assert_alive(&mut m, "diff");

    // restore (offline reading of the repository, writing by descriptors)
    run_ok(&["restore", d, "s2", target.to_str().unwrap()]);
    assert_eq!(read_at(down(&target, DEPTH).as_raw_fd(), c"f"), b"version 2, longer\n");
    assert_eq!(read_at(down(&target, DEPTH / 2).as_raw_fd(), c"m"), b"middle\n");
    assert_alive(&mut m, "restore");

    // the snapshot folders, by descriptors through the mount
    let snaps = m.path(".snapshots/s1");
    assert_eq!(read_at(down(&snaps, DEPTH).as_raw_fd(), c"f"), b"version 1\n");
    assert_alive(&mut m, "reading .snapshots/s1");

    // rollback to the first snapshot (through the mount)
    run_ok(&["rollback", d, "s1"]);
    assert_eq!(read_at(down(&m.dir, DEPTH).as_raw_fd(), c"f"), b"version 1\n");
    assert_alive(&mut m, "rollback");

    run_ok(&["forget", d, "s2"]);
    run_ok(&["prune", d]);
    assert_alive(&mut m, "forget and prune");
    let (ok, v) = json_of(&["verify", "--json", d]);
    assert!(ok && v["ok"] == true, "verify after prune: {v}");
    assert_eq!(read_at(down(&m.path(".snapshots/s1"), DEPTH).as_raw_fd(), c"f"), b"version 1\n");
    assert_alive(&mut m, "verify after prune");
    m.umount();
}

#[test]
fn a_tree_deeper_than_the_limit_is_a_clear_error() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("dir");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("top.txt"), b"top\n").unwrap();
    // LIMIT levels below the root are walked; one more is too deep
    make_chain(&dir, LIMIT + 1);
    struct Cleanup<'a>(&'a Path);
    impl Drop for Cleanup<'_> {
        fn drop(&mut self) {
            rm_tree(self.0, c"d");
        }
    }
    let _cleanup = Cleanup(&dir);
    let mut m = Mounted::new(&dir);
    let d = m.dir.to_str().unwrap().to_string();

    let out = snapfs(&["snapshot", "--name", "deep", &d]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a tree deeper than {LIMIT} levels is refused");
    assert!(err.contains("deeper than") && err.contains(&format!("{LIMIT}")), "a clear error: {err}");
    assert!(err.contains("d/d/d/d"), "the error names the path: {err}");
    assert!(err.len() < 20_000, "the path in the error is shortened: {} bytes", err.len());
    assert_alive(&mut m, "the failed snapshot");
    let (ok, list) = json_of(&["list", "--json", &d]);
    assert!(ok && list.as_array().unwrap().is_empty(), "no snapshot: {list}");

    // one level less (the lowest directory removed through the mount):
    // the snapshot is taken, the daemon did not keep anything half done
    let r = unsafe { libc::unlinkat(down(&m.dir, LIMIT).as_raw_fd(), c"d".as_ptr(), libc::AT_REMOVEDIR) };
    assert_eq!(r, 0, "rmdir: {}", std::io::Error::last_os_error());
    snap(&m.dir, "limit");
    assert_alive(&mut m, "a snapshot at the limit");
    let (ok, v) = json_of(&["verify", "--json", "--live", &d]);
    assert!(ok && v["ok"] == true, "verify --live: {v}");
    m.umount();
}

/// A panic in a FUSE callback, in a snapshot's walk or in a control
/// request (made to happen here with `SNAPFS_PANIC_AT`) is an error for
/// that one request; the mount and the daemon go on, and a failed
/// snapshot leaves nothing half done.
#[test]
fn no_panic_takes_the_mount_down() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("dir");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("top.txt"), b"top\n").unwrap();
    let env = [("SNAPFS_PANIC_AT", "lookup:boom,walk:trap,control:diff")];
    let mut m = Mounted::with_env(&dir, MountOpts::default(), &env);
    let d = m.dir.to_str().unwrap().to_string();
    snap(&m.dir, "s0");

    // more panics than there are FUSE workers (4)
    for i in 0..10 {
        let e = fs::metadata(m.path("boom")).expect_err("the lookup fails");
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "lookup {i}: {e}");
        assert_alive(&mut m, &format!("panic {i} in a lookup"));
    }

    // a panic in the middle of a snapshot's walk
    fs::write(m.path("a.txt"), b"changed after s0\n").unwrap();
    fs::create_dir(m.path("trap")).unwrap();
    let out = snapfs(&["snapshot", "--name", "bad", &d]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("internal error"), "the snapshot fails with an error: {err}");
    assert_alive(&mut m, "a panic in a snapshot");
    fs::remove_dir(m.path("trap")).unwrap();
    fs::write(m.path("b.txt"), b"written after the failed snapshot\n").unwrap();
    snap(&m.dir, "s1");
    let (ok, list) = json_of(&["list", "--json", &d]);
    assert!(ok && list.as_array().unwrap().len() == 2, "{list}");
    assert_eq!(list[1]["full"], false);
    assert_eq!(fs::read(m.path(".snapshots/s1/a.txt")).unwrap(), b"changed after s0\n");
    assert_eq!(fs::read(m.path(".snapshots/s1/b.txt")).unwrap(), b"written after the failed snapshot\n");
    let (ok, v) = json_of(&["verify", "--json", "--live", &d]);
    assert!(ok && v["ok"] == true, "verify --live: {v}");

    // a panic while answering a control request
    let out = snapfs(&["diff", &d, "s0", "s1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("internal error"), "diff fails with an error: {err}");
    assert_alive(&mut m, "a panic in a control request");
    assert!(m.log_text().contains("INTERNAL ERROR"), "the panics are logged");
    m.umount();
}
