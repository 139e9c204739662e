//! Shared helpers for tests that mount for real.
//!
//! [`Mounted`] runs `snapfs mount --foreground` as a child of the test and
//! always cleans up in `Drop`: unmount, wait for the daemon, and as a last
//! resort kill the child (our own pid, never by name) and detach the mount
//! lazily. Every test binary also runs under nextest's timeout.

#![allow(dead_code)]

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_snapfs"))
}

/// Run `snapfs ARGS` and return its output.
pub fn snapfs(args: &[&str]) -> Output {
    Command::new(bin()).args(args).env("RUST_LOG", "warn").output().expect("run snapfs")
}

pub fn is_mounted(dir: &Path) -> bool {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let Ok(s) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    s.lines().any(|l| {
        let mut f = l.split(' ');
        let mp = f.nth(4).unwrap_or("");
        mp == dir.to_str().unwrap_or("")
            && l.contains(" - fuse")
            && (l.contains("snapfs:") || l.contains("snapfs-browse:"))
    })
}

fn umount2(dir: &Path, flags: i32) -> bool {
    let c = CString::new(dir.as_os_str().as_bytes()).unwrap();
    unsafe { libc::umount2(c.as_ptr(), flags) == 0 }
}

/// A live snapfs mount owned by the test.
pub struct Mounted {
    pub dir: PathBuf,
    pub child: Option<Child>,
    pub log: PathBuf,
}

#[derive(Default, Clone)]
pub struct MountOpts {
    pub backing: Option<PathBuf>,
    pub repo: Option<PathBuf>, // a path or an s3: URL
    pub extra: Vec<String>,
}

impl Mounted {
    pub fn new(dir: &Path) -> Mounted {
        Self::with(dir, MountOpts::default())
    }

    pub fn with(dir: &Path, o: MountOpts) -> Mounted {
        Self::with_env(dir, o, &[])
    }

    /// With these extra arguments to `mount`.
    pub fn with_args(dir: &Path, args: &[&str]) -> Mounted {
        Self::with(dir, MountOpts { extra: args.iter().map(|s| s.to_string()).collect(), ..Default::default() })
    }

    /// With these variables in the daemon's environment.
    pub fn with_env(dir: &Path, o: MountOpts, env: &[(&str, &str)]) -> Mounted {
        let dir = dir.canonicalize().expect("mount point exists");
        let log = dir.parent().unwrap().join(format!("{}.log", dir.file_name().unwrap().to_string_lossy()));
        let logf = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let mut cmd = Command::new(bin());
        cmd.arg("mount").arg("--foreground").arg("--flush-ms").arg("200");
        if let Some(b) = &o.backing {
            cmd.arg("--backing").arg(b);
        }
        if let Some(r) = &o.repo {
            cmd.arg("--repo").arg(r);
        }
        cmd.args(&o.extra);
        cmd.arg(&dir);
        cmd.envs(env.iter().copied());
        cmd.env("RUST_LOG", "info").stdin(Stdio::null()).stdout(logf.try_clone().unwrap()).stderr(logf);
        let child = cmd.spawn().expect("spawn snapfs");
        let mut m = Mounted { dir: dir.clone(), child: Some(child), log };
        let t0 = Instant::now();
        loop {
            if is_mounted(&dir) {
                // the control socket is bound before mounting; the mount is ready
                break;
            }
            if let Some(st) = m.child.as_mut().unwrap().try_wait().unwrap() {
                let log = std::fs::read_to_string(&m.log).unwrap_or_default();
                m.child = None;
                panic!("snapfs exited ({st}) before mounting:\n{log}");
            }
            if t0.elapsed() > Duration::from_secs(20) {
                panic!("mount of {} not ready after 20 s", dir.display());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        m
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon running").id()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// Unmount with `snapfs umount` and wait for the daemon to exit cleanly.
    pub fn umount(mut self) {
        let out = snapfs(&["umount", self.dir.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "umount failed: {}\ndaemon log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log_text()
        );
        self.wait_exit(Duration::from_secs(20));
    }

    /// Wait for the daemon to exit; returns its exit status.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let t0 = Instant::now();
        let child = self.child.as_mut()?;
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                self.child = None;
                return Some(st);
            }
            if t0.elapsed() > limit {
                panic!("daemon still running after {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL the daemon (the process we started) and remove the dead mount.
    pub fn kill(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if !umount2(&self.dir, 0) {
            umount2(&self.dir, libc::MNT_DETACH);
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.child.is_none() && !is_mounted(&self.dir) {
            return;
        }
        if is_mounted(&self.dir) && !umount2(&self.dir, 0) {
            umount2(&self.dir, libc::MNT_DETACH);
        }
        if let Some(mut c) = self.child.take() {
            let t0 = Instant::now();
            loop {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                if t0.elapsed() > Duration::from_secs(10) {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// `snapfs status --json --files DIR` parsed.
pub fn status(dir: &Path) -> serde_json::Value {
    let out = snapfs(&["status", "--json", "--files", dir.to_str().unwrap()]);
    assert!(out.status.success(), "status failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("status json")
}

/// Dirty block ranges of `path` (relative to the mount root) in a status.
pub fn ranges(st: &serde_json::Value, path: &str) -> Option<Vec<(u64, u64)>> {
    st["files"].as_array()?.iter().find(|f| f["path"] == path).map(|f| {
        f["ranges"].as_array().unwrap().iter().map(|r| (r[0].as_u64().unwrap(), r[1].as_u64().unwrap())).collect()
    })
}

pub fn changes(st: &serde_json::Value, path: &str) -> Option<Vec<String>> {
    st["files"]
        .as_array()?
        .iter()
        .find(|f| f["path"] == path)
        .map(|f| f["changes"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_string()).collect())
}

pub fn dirty_paths(st: &serde_json::Value) -> Vec<String> {
    st["files"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap().to_string()).collect()
}

/// Wait until the mount-time scan has finished.
pub fn wait_scan(dir: &Path) -> serde_json::Value {
    let t0 = Instant::now();
    loop {
        let st = status(dir);
        if st["dirty"]["scan_pending"] == false {
            return st;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "scan did not finish");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn write_at(p: &Path, off: u64, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).create(true).truncate(false).open(p).unwrap();
    f.write_all_at(data, off).unwrap();
}

// --- comparing directory trees

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;

/// What a snapshot keeps about one path, as compared here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: (i64, i64),
    pub data: Vec<u8>,
    pub rdev: u64,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

pub fn xattrs_of(p: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut buf = vec![0u8; 65536];
    let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    if n <= 0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    for k in buf[..n as usize].split(|b| *b == 0).filter(|k| !k.is_empty()) {
        let ck = CString::new(k).unwrap();
        let mut v = vec![0u8; 65536];
        let m = unsafe { libc::lgetxattr(c.as_ptr(), ck.as_ptr(), v.as_mut_ptr() as *mut libc::c_void, v.len()) };
        if m >= 0 {
            v.truncate(m as usize);
            out.push((k.to_vec(), v));
        }
    }
    out.sort();
    out
}

/// The directory as it is now (skipping the repository).
pub fn model(root: &Path) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            if rel.is_empty() && (name == ".snapfs" || name == ".snapshots") {
                continue;
            }
            let path = e.path();
            let r = if rel.is_empty() { name.clone() } else { format!("{rel}/{name}") };
            let m = fs::symlink_metadata(&path).unwrap();
            let ft = m.file_type();
            let (kind, data) = if ft.is_dir() {
                stack.push((path.clone(), r.clone()));
                ("dir", Vec::new())
            } else if ft.is_file() {
                ("file", fs::read(&path).unwrap())
            } else if ft.is_symlink() {
                ("symlink", fs::read_link(&path).unwrap().as_os_str().as_bytes().to_vec())
            } else {
                ("other", Vec::new())
            };
            let node = Node {
                kind,
                mode: m.mode() & 0o7777,
                uid: m.uid(),
                gid: m.gid(),
                mtime: if kind == "dir" { (0, 0) } else { (m.mtime(), m.mtime_nsec()) },
                data,
                rdev: m.rdev(),
                xattrs: xattrs_of(&path),
            };
            out.insert(r, node);
        }
    }
    out
}

pub fn assert_same(want: &BTreeMap<String, Node>, got: &BTreeMap<String, Node>, what: &str) {
    let wk: Vec<_> = want.keys().collect();
    let gk: Vec<_> = got.keys().collect();
    assert_eq!(wk, gk, "{what}: paths differ");
    for (k, w) in want {
        let g = &got[k];
        if w != g {
            let short = |n: &Node| {
                format!(
                    "{} mode {:o} uid {} gid {} mtime {:?} {} bytes rdev {} xattrs {:?}",
                    n.kind,
                    n.mode,
                    n.uid,
                    n.gid,
                    n.mtime,
                    n.data.len(),
                    n.rdev,
                    n.xattrs
                )
            };
            panic!("{what}: {k} differs\n want {}\n  got {}", short(w), short(g));
        }
    }
}

/// Run `snapfs ARGS`, which must succeed; its standard output.
pub fn run_ok(args: &[&str]) -> String {
    let out = snapfs(args);
    assert!(
        out.status.success(),
        "snapfs {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn json_of(args: &[&str]) -> (bool, serde_json::Value) {
    let out = snapfs(args);
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "snapfs {args:?}: no JSON ({e}):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), v)
}

pub fn snap(dir: &Path, name: &str) {
    run_ok(&["snapshot", "--name", name, dir.to_str().unwrap()]);
}

pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Unmounts a browse mount even if the test fails.
pub struct BrowseGuard(pub PathBuf);

impl Drop for BrowseGuard {
    fn drop(&mut self) {
        if is_mounted(&self.0) {
            let out = snapfs(&["umount", self.0.to_str().unwrap()]);
            if !out.status.success() {
                umount2(&self.0, libc::MNT_DETACH);
            }
        }
    }
}

/// The unprivileged second user the security tests act as (`tests`, which
/// scripts/install-test-deps creates; made here if missing): (uid, gid).
pub fn other_user() -> (u32, u32) {
    let lookup = || {
        let name = CString::new("tests").unwrap();
        // SAFETY: a valid NUL-terminated name; the result is read at once.
        let pw = unsafe { libc::getpwnam(name.as_ptr()) };
        // SAFETY: non-null getpwnam results point to a valid passwd.
        (!pw.is_null()).then(|| unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
    };
    if let Some(ids) = lookup() {
        return ids;
    }
    let _ = Command::new("useradd").args(["-M", "-U", "-s", "/usr/sbin/nologin", "tests"]).status();
    lookup().expect("a user named tests (useradd failed)")
}

/// Make `cmd` run as the second user.
pub fn as_other(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    let (uid, gid) = other_user();
    cmd.uid(uid).gid(gid).env_remove("HOME")
}

/// A temporary directory others can traverse (as /backup or /home would be),
/// so that what keeps a second user out is the project's own modes.
pub fn open_tempdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    t
}

/// A fresh repository URL in the test cluster's bucket (a prefix of its
/// own per call). The cluster is started by scripts/test (or by hand:
/// `scripts/garage run cargo nextest run ...`).
pub fn s3_url(what: &str) -> String {
    let base = std::env::var("SNAPFS_TEST_S3").unwrap_or_else(|_| {
        panic!("S3 tests need the Garage cluster: run scripts/test, or `scripts/garage run cargo nextest run ...`")
    });
    format!("{base}/{what}-{}", snapfs::util::random_id())
}

/// The same repository through each node of the cluster.
pub fn s3_nodes(url: &str) -> Vec<String> {
    let base = std::env::var("SNAPFS_TEST_S3").unwrap();
    let rest = url.strip_prefix(&base).unwrap();
    std::env::var("SNAPFS_TEST_S3_NODES").unwrap().split_whitespace().map(|n| format!("{n}{rest}")).collect()
}

/// `scripts/garage ARGS` (fault injection on the test cluster).
pub fn garage(args: &[&str]) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/garage");
    let st = Command::new(script).args(args).status().unwrap();
    assert!(st.success(), "scripts/garage {args:?} failed");
}
