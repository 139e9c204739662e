//! The control socket: how `snapfs status`, `umount` (and later `snapshot`)
//! talk to a running daemon.
//!
//! A Unix stream socket `snapfs-<blake3(mount point)>.sock` in the daemon
//! user's private runtime directory (root: `/run/snapfs`, 0700), beside a
//! lock file the daemon holds for its life, with its pid in it. Nobody else
//! can bind that name, so nobody can squat it or answer in the daemon's
//! place; the client still checks the peer (`SO_PEERCRED`: the directory's
//! owner, the pid in the lock) before it believes a reply. The daemon
//! checks the peer before it reads anything (root and its own user only),
//! reads one bounded request line within a deadline, and serves a bounded
//! number of connections at once. One JSON request per line, one JSON
//! reply per line.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::tracker::{DirtyEntry, Summary};
use crate::util::RwLocked;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    Status {
        #[serde(default)]
        files: bool,
        /// With the mount's request counters (`status --ops`).
        #[serde(default)]
        ops: bool,
    },
    /// Make the tracking state durable now.
    Flush,
    Unmount {
        #[serde(default)]
        lazy: bool,
    },
    /// Take a snapshot (the client has flushed the kernel's cache first).
    Snapshot {
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        full: bool,
    },
    /// Progress of a snapshot being taken.
    Progress,
    List,
    Diff {
        a: String,
        b: String,
    },
    /// Check the repository (`snapfs verify`).
    Verify {
        #[serde(default)]
        read_data: bool,
        #[serde(default)]
        subset: Option<f64>,
        #[serde(default)]
        rebuild_index: bool,
        /// Heal what is damaged from the replicas and these repositories.
        #[serde(default)]
        repair: bool,
        #[serde(default)]
        from: Vec<String>,
    },
    /// Compare the live directory with the latest snapshot and the dirty set
    /// (`snapfs verify DIR --live`).
    VerifyLive,
    /// Keep snapshot `snapshot` (an id) from forget and retention for
    /// `secs` seconds: a restore or rollback is reading it (renewed while
    /// it runs).
    Hold {
        snapshot: String,
        secs: u64,
    },
    /// Remove snapshot records by name or by keep rules.
    Forget {
        #[serde(default)]
        names: Vec<String>,
        #[serde(default)]
        policy: crate::ops::maint::Policy,
        #[serde(default)]
        dry_run: bool,
    },
    /// Show or change automatic snapshots: the triggers given replace the
    /// schedule's; `keep` alone changes only the retention.
    Schedule {
        #[serde(default)]
        every: Option<u64>,
        #[serde(default)]
        max_dirty: Option<u64>,
        #[serde(default)]
        max_age: Option<u64>,
        #[serde(default)]
        settle: Option<u64>,
        #[serde(default)]
        keep: Option<crate::ops::maint::Policy>,
        #[serde(default)]
        off: bool,
    },
    /// Show, add, remove or bring up to date the replicas.
    Replica {
        #[serde(default)]
        add: Option<String>,
        #[serde(default)]
        remove: Option<String>,
        #[serde(default)]
        sync: bool,
    },
    /// Remove objects no snapshot references.
    Prune {
        #[serde(default)]
        dry_run: bool,
        #[serde(default)]
        max_unused: Option<f64>,
        #[serde(default)]
        grace_secs: Option<u64>,
    },
}

/// What `snapfs status` shows.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StatusReport {
    pub mounted: bool,
    pub mountpoint: String,
    pub backing: String,
    pub repository: String,
    /// A path to the repository that other processes can use while the
    /// daemon runs (in-place mounts hide DIR/.snapfs behind the mount).
    #[serde(default)]
    pub repository_access: String,
    pub repository_id: String,
    pub block_size: u64,
    pub pid: Option<u32>,
    /// When the daemon mounted (RFC 3339).
    pub mounted_since: Option<String>,
    /// How the previous session ended: "first", "clean", "unclean".
    pub last_session: String,
    pub dirty: Summary,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<Vec<DirtyEntry>>,
    /// Inodes the kernel holds through the mount.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inodes: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scan: Option<crate::tracker::scan::ScanStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<crate::ops::health::HealthReport>,
    /// Copies of the repository elsewhere, and how far behind each is.
    #[serde(default)]
    pub replicas: Vec<crate::ops::replica::ReplicaStatus>,
    /// Loud facts about the protection (e.g. no copy off this disk).
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Requests by opcode since the mount, when asked (`--ops`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<crate::fuse::opstats::OpsReport>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<StatusReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<crate::snapshot::SnapshotInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshots: Option<Vec<crate::snapshot::SnapshotInfo>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff: Option<crate::snapshot::DiffReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<crate::snapshot::SnapshotStats>,
    /// Progress of a verify or prune.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task: Option<crate::ops::verify::ProgressView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify: Option<crate::ops::verify::VerifyReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live: Option<crate::ops::verify_live::LiveReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forget: Option<crate::ops::maint::ForgetReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prune: Option<crate::ops::maint::PruneReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<Vec<crate::ops::replica::ReplicaStatus>>,
}

/// A reply that is not the answer asked for.
#[derive(Debug, thiserror::Error)]
pub enum ReplyError {
    /// The daemon said why.
    #[error("{0}")]
    Daemon(String),
    #[error("the daemon's reply holds no {0}")]
    Empty(&'static str),
}

impl Reply {
    /// The part of the reply `pick` takes (`what` names it), or the
    /// daemon's error.
    pub fn answer<T>(self, what: &'static str, pick: impl FnOnce(Reply) -> Option<T>) -> Result<T, ReplyError> {
        if let Some(e) = self.error.clone().filter(|_| !self.ok) {
            return Err(ReplyError::Daemon(e));
        }
        pick(self).ok_or(ReplyError::Empty(what))
    }

    pub fn ok() -> Reply {
        Reply {
            ok: true,
            error: None,
            status: None,
            pid: Some(std::process::id()),
            snapshot: None,
            snapshots: None,
            diff: None,
            progress: None,
            task: None,
            verify: None,
            live: None,
            forget: None,
            prune: None,
            replicas: None,
        }
    }
    pub fn err(msg: impl Into<String>) -> Reply {
        Reply { ok: false, error: Some(msg.into()), ..Reply::ok() }
    }
}

/// The name of a mount point's socket and lock in the runtime directory.
pub fn socket_name(mountpoint: &Path) -> String {
    let h = blake3::hash(mountpoint.as_os_str().as_encoded_bytes());
    format!("snapfs-{}", &h.to_hex()[..32])
}

/// Where daemons run by `uid` keep their control sockets, locks and
/// (browse) logs: a directory only `uid` can enter. Root's is
/// `/run/snapfs`; another user's `/run/user/UID/snapfs` when their
/// runtime directory exists, else `/tmp/snapfs-UID`. Clients and daemons
/// derive it from the uid alone.
pub fn runtime_dir(uid: u32) -> PathBuf {
    if uid == 0 {
        return PathBuf::from("/run/snapfs");
    }
    let user = PathBuf::from(format!("/run/user/{uid}"));
    match std::fs::symlink_metadata(&user) {
        Ok(m) if m.is_dir() && m.uid() == uid => user.join("snapfs"),
        _ => PathBuf::from(format!("/tmp/snapfs-{uid}")),
    }
}

/// `dir` is a real directory owned by `uid` that nobody else can enter:
/// then only `uid` (and root) can have put anything in it.
pub fn check_private_dir(dir: &Path, uid: u32) -> std::io::Result<()> {
    let m = std::fs::symlink_metadata(dir)?;
    if !m.is_dir() || m.uid() != uid || m.mode() & 0o077 != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "{} is not a private directory of uid {uid} (a {}, owner {}, mode {:o}): refusing to use it",
                dir.display(),
                if m.is_dir() { "directory" } else { "non-directory" },
                m.uid(),
                m.mode() & 0o7777
            ),
        ));
    }
    Ok(())
}

/// Our runtime directory, created (0700) if missing, and checked.
pub fn own_runtime_dir() -> std::io::Result<PathBuf> {
    let me = euid();
    let dir = runtime_dir(me);
    match crate::os::private::create_dir(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    check_private_dir(&dir, me)?;
    Ok(dir)
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// A daemon's control socket: the listener, and the lock (held for the
/// daemon's life, holding its pid) that makes it the only one for its
/// mount point.
pub struct Listener {
    pub listener: UnixListener,
    _lock: std::fs::File,
}

/// Claim the control socket for `mountpoint` in our runtime directory.
/// Another live daemon for the same mount point holds the lock:
/// `AddrInUse`. A socket file left by a killed daemon is replaced.
pub fn listen(mountpoint: &Path) -> std::io::Result<Listener> {
    let dir = own_runtime_dir()?;
    let name = socket_name(mountpoint);
    let lock_path = dir.join(format!("{name}.lock"));
    let mut lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(crate::os::private::FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&lock_path)?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            std::io::Error::from(std::io::ErrorKind::AddrInUse)
        } else {
            e
        });
    }
    lock.set_len(0)?;
    write!(lock, "{}", std::process::id())?;
    lock.sync_all()?;
    let sock = dir.join(format!("{name}.sock"));
    match std::fs::remove_file(&sock) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(&sock)?;
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600))?;
    Ok(Listener { listener, _lock: lock })
}

/// The uid whose daemon serves `mountpoint`: the user that mounted it, or
/// ourselves when nothing is mounted there.
fn daemon_uid(mountpoint: &Path) -> u32 {
    crate::os::mounts::snapfs_mount_at(mountpoint).and_then(|m| m.fuse_user()).unwrap_or_else(euid)
}

/// Connect to the daemon of `mountpoint`, if one is listening, and make
/// sure it is the real one: only a daemon run by root or by ourselves is
/// trusted; its socket must sit in that user's private runtime directory,
/// and the peer must be that user's process whose pid the socket's lock
/// holds.
pub fn connect(mountpoint: &Path) -> std::io::Result<UnixStream> {
    let uid = daemon_uid(mountpoint);
    let me = euid();
    if uid != 0 && uid != me {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "the daemon of {} runs as uid {uid}: only root's daemons and your own are trusted",
                mountpoint.display()
            ),
        ));
    }
    let dir = runtime_dir(uid);
    match check_private_dir(&dir, uid) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(std::io::Error::new(std::io::ErrorKind::NotFound, "no daemon"))
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied && uid != me => return Err(denied()),
        r => r?,
    }
    let name = socket_name(mountpoint);
    let s = match UnixStream::connect(dir.join(format!("{name}.sock"))) {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return Err(denied()),
        r => r?,
    };
    let cred = peer_cred(&s)?;
    let recorded: Option<i32> =
        std::fs::read_to_string(dir.join(format!("{name}.lock"))).ok().and_then(|p| p.trim().parse().ok());
    if cred.uid != uid || recorded != Some(cred.pid) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "the control socket of {} is served by pid {} (uid {}), not by the daemon that holds its lock ({}): not trusted",
                mountpoint.display(),
                cred.pid,
                cred.uid,
                recorded.map(|p| p.to_string()).unwrap_or_else(|| "none".into())
            ),
        ));
    }
    Ok(s)
}

fn denied() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::PermissionDenied,
        "permission denied: only root and the daemon's user may control it",
    )
}

/// Send one request and read the reply.
pub fn call(mountpoint: &Path, req: &Request, timeout: Duration) -> std::io::Result<Reply> {
    let s = connect(mountpoint)?;
    s.set_read_timeout(Some(timeout))?;
    let mut line = serde_json::to_string(req).map_err(std::io::Error::other)?;
    line.push('\n');
    send_all(&s, line.as_bytes())?;
    let mut out = String::new();
    // a reply is bounded too (a status listing every dirty file is the largest)
    BufReader::new(s).take(MAX_REPLY).read_line(&mut out)?;
    if out.is_empty() {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "daemon closed the control connection"));
    }
    serde_json::from_str(&out).map_err(std::io::Error::other)
}

/// Write all of `buf` to the daemon without raising SIGPIPE: a command
/// ends on SIGPIPE (a closed stdout), but a daemon that hangs up is an
/// error to report, not a reason to die without a word.
fn send_all(s: &UnixStream, mut buf: &[u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: the pointer and length describe `buf`, which outlives the call; the result is checked.
        let n = unsafe { libc::send(s.as_raw_fd(), buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        buf = &buf[n as usize..];
    }
    Ok(())
}

/// The process at the other end of a Unix socket.
pub fn peer_cred(s: &UnixStream) -> std::io::Result<libc::ucred> {
    // SAFETY: ucred is plain data; zeroes are a valid value.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: the buffer and its length describe `cred`, which outlives the call.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            &mut cred as *mut _ as *mut libc::c_void,
            &mut len,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cred)
}

/// The largest request a daemon reads (forget's list of names is the
/// longest); anything longer is refused unread.
pub const MAX_REQUEST: u64 = 1 << 20;
/// The largest reply a client reads.
pub const MAX_REPLY: u64 = 1 << 30;
/// Connections served at once; more are answered "busy" and closed.
pub const MAX_CONNECTIONS: usize = 64;
/// The whole request line must arrive within this.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(5);

/// Read one request line of at most `MAX_REQUEST` bytes, all of it within
/// `REQUEST_DEADLINE` (a client sending a byte at a time cannot hold a
/// connection).
fn read_request(s: &UnixStream) -> std::io::Result<String> {
    let deadline = std::time::Instant::now() + REQUEST_DEADLINE;
    let mut line = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "request not sent in time"));
        }
        s.set_read_timeout(Some(left))?;
        let n = match (&*s).read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "no request"));
        }
        let end = buf[..n].iter().position(|&b| b == b'\n');
        line.extend_from_slice(&buf[..end.unwrap_or(n)]);
        if line.len() as u64 > MAX_REQUEST {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "request too long"));
        }
        if end.is_some() {
            return String::from_utf8(line).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidData));
        }
    }
}

/// Serve requests until the listener is shut down; `handle` answers each,
/// one thread per connection (a snapshot may take long; status and progress
/// must still answer). `in_flight` is held (shared) from reading a request
/// until its reply is sent, so the daemon can wait for the reply to an
/// `unmount` before it exits.
pub fn serve(
    listener: Listener,
    in_flight: std::sync::Arc<std::sync::RwLock<()>>,
    handle: impl Fn(Request) -> Reply + Send + Sync + 'static,
) {
    let me = euid();
    let handle = std::sync::Arc::new(handle);
    let open = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for conn in listener.listener.incoming() {
        let Ok(mut s) = conn else { continue };
        let send = |s: &mut UnixStream, reply: &Reply| {
            let mut out = serde_json::to_string(reply).unwrap_or_else(|_| "{\"ok\":false}".into());
            out.push('\n');
            let _ = s.set_write_timeout(Some(REQUEST_DEADLINE));
            let _ = s.write_all(out.as_bytes());
        };
        // who it is, before reading a byte
        if !matches!(peer_cred(&s), Ok(c) if c.uid == 0 || c.uid == me) {
            send(&mut s, &Reply::err("permission denied: only root and the daemon's user may control it"));
            continue;
        }
        if open.fetch_add(1, std::sync::atomic::Ordering::SeqCst) >= MAX_CONNECTIONS {
            open.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            send(&mut s, &Reply::err(format!("busy: {MAX_CONNECTIONS} control connections are open")));
            continue;
        }
        let handle = handle.clone();
        let in_flight = in_flight.clone();
        let open2 = open.clone();
        let spawned = std::thread::Builder::new().name("control-conn".into()).spawn(move || {
            match read_request(&s) {
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
                Err(e) => send(&mut s, &Reply::err(format!("bad request: {e}"))),
                Ok(line) => {
                    // held until the reply is sent (the daemon waits for the
                    // reply to an unmount before it exits)
                    let _busy = in_flight.read_locked();
                    let reply = match serde_json::from_str::<Request>(&line) {
                        // a panic answers an error; the daemon goes on
                        Ok(req) => std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            crate::util::panic_point("control", || {
                                let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                                v["cmd"].as_str().unwrap_or_default().as_bytes().to_vec()
                            });
                            handle(req)
                        }))
                        .unwrap_or_else(|p| {
                            let msg = crate::util::panic_message(&*p);
                            log::error!("INTERNAL ERROR: a control request panicked: {msg}; still serving");
                            Reply::err(format!("internal error in the daemon: {msg} (it goes on serving)"))
                        }),
                        Err(e) => Reply::err(format!("bad request: {e}")),
                    };
                    send(&mut s, &reply);
                }
            }
            open2.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        });
        if let Err(e) = spawned {
            open.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            log::error!("control connection: {e}");
        }
    }
}
