//! The control socket: how `snapfs status`, `umount` (and later `snapshot`)
//! talk to a running daemon.
//!
//! A Unix stream socket in the abstract namespace, named after the blake3
//! hash of the mount point's canonical path, so it needs no file (nothing to
//! clean up after a SIGKILL, nothing inside the mount). One JSON request per
//! line, one JSON reply per line. Only root and the daemon's own user may talk
//! to it (checked with `SO_PEERCRED`).

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::tracker::{DirtyEntry, Summary};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    Status {
        #[serde(default)]
        files: bool,
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
        policy: crate::maint::Policy,
        #[serde(default)]
        dry_run: bool,
    },
    /// Show or change automatic snapshots.
    Schedule {
        #[serde(default)]
        every: Option<u64>,
        #[serde(default)]
        keep: Option<crate::maint::Policy>,
        #[serde(default)]
        off: bool,
    },
    /// Remove objects no snapshot references.
    Prune {
        #[serde(default)]
        dry_run: bool,
        #[serde(default)]
        max_unused: Option<f64>,
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
    pub scan: Option<crate::scan::ScanStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<crate::health::HealthReport>,
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
    pub task: Option<crate::check::ProgressView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify: Option<crate::check::VerifyReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live: Option<crate::livecheck::LiveReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forget: Option<crate::maint::ForgetReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prune: Option<crate::maint::PruneReport>,
}

impl Reply {
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
        }
    }
    pub fn err(msg: impl Into<String>) -> Reply {
        Reply { ok: false, error: Some(msg.into()), ..Reply::ok() }
    }
}

/// The abstract socket name for a mount point.
pub fn socket_name(mountpoint: &Path) -> String {
    let h = blake3::hash(mountpoint.as_os_str().as_encoded_bytes());
    format!("snapfs-{}", &h.to_hex()[..32])
}

fn abstract_addr(name: &str) -> (libc::sockaddr_un, libc::socklen_t) {
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = name.as_bytes();
    // sun_path[0] = 0 marks the abstract namespace.
    for (i, b) in bytes.iter().enumerate().take(addr.sun_path.len() - 1) {
        addr.sun_path[i + 1] = *b as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + 1 + bytes.len().min(addr.sun_path.len() - 1);
    (addr, len as libc::socklen_t)
}

fn unix_socket() -> std::io::Result<OwnedFd> {
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Bind the control socket for `mountpoint`.
pub fn listen(mountpoint: &Path) -> std::io::Result<UnixListener> {
    let fd = unix_socket()?;
    let (addr, len) = abstract_addr(&socket_name(mountpoint));
    let r = unsafe { libc::bind(fd.as_raw_fd(), &addr as *const _ as *const libc::sockaddr, len) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if unsafe { libc::listen(fd.as_raw_fd(), 16) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(UnixListener::from(fd))
}

/// Connect to the daemon of `mountpoint`, if one is listening.
pub fn connect(mountpoint: &Path) -> std::io::Result<UnixStream> {
    let fd = unix_socket()?;
    let (addr, len) = abstract_addr(&socket_name(mountpoint));
    let r = unsafe { libc::connect(fd.as_raw_fd(), &addr as *const _ as *const libc::sockaddr, len) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(UnixStream::from(fd))
}

/// Send one request and read the reply.
pub fn call(mountpoint: &Path, req: &Request, timeout: Duration) -> std::io::Result<Reply> {
    let mut s = connect(mountpoint)?;
    s.set_read_timeout(Some(timeout))?;
    let mut line = serde_json::to_string(req).map_err(std::io::Error::other)?;
    line.push('\n');
    s.write_all(line.as_bytes())?;
    let mut r = BufReader::new(s);
    let mut out = String::new();
    r.read_line(&mut out)?;
    if out.is_empty() {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "daemon closed the control connection"));
    }
    serde_json::from_str(&out).map_err(std::io::Error::other)
}

/// The uid of the process at the other end.
pub fn peer_uid(s: &UnixStream) -> Option<u32> {
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            &mut cred as *mut _ as *mut libc::c_void,
            &mut len,
        )
    };
    if r == 0 {
        Some(cred.uid)
    } else {
        None
    }
}

/// Serve requests until the listener is shut down; `handle` answers each,
/// one thread per connection (a snapshot may take long; status and progress
/// must still answer). `in_flight` is held (shared) from reading a request
/// until its reply is sent, so the daemon can wait for the reply to an
/// `unmount` before it exits.
pub fn serve(
    listener: UnixListener,
    in_flight: std::sync::Arc<std::sync::RwLock<()>>,
    handle: impl Fn(Request) -> Reply + Send + Sync + 'static,
) {
    let me = unsafe { libc::geteuid() };
    let handle = std::sync::Arc::new(handle);
    for conn in listener.incoming() {
        let Ok(mut s) = conn else { continue };
        let handle = handle.clone();
        let in_flight = in_flight.clone();
        let spawned = std::thread::Builder::new().name("control-conn".into()).spawn(move || {
            let allowed = matches!(peer_uid(&s), Some(u) if u == 0 || u == me);
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut line = String::new();
            {
                let mut r = BufReader::new(&s);
                if r.read_line(&mut line).is_err() {
                    return;
                }
            }
            let _busy = in_flight.read().unwrap_or_else(|e| e.into_inner());
            let reply = if !allowed {
                Reply::err("permission denied: only root and the daemon's user may control it")
            } else {
                match serde_json::from_str::<Request>(&line) {
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
                }
            };
            let mut out = serde_json::to_string(&reply).unwrap_or_else(|_| "{\"ok\":false}".into());
            out.push('\n');
            let _ = s.write_all(out.as_bytes());
        });
        if let Err(e) = spawned {
            log::error!("control connection: {e}");
        }
    }
}
