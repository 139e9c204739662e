//! What a daemon run by systemd uses of it: the notification socket
//! (`Type=notify`: `READY=1` once the mount is usable, `STOPPING=1` when it
//! begins to unmount) and the journal stream (log lines without our own
//! timestamps, their priority as a `<N>` prefix).
//!
//! The protocol is sd_notify(3): each message is one datagram of
//! `KEY=VALUE` lines sent to the unix socket named in `$NOTIFY_SOCKET`, a
//! path or, starting with `@`, a name in the abstract namespace. The
//! variable is taken out of the environment when read, so no process the
//! daemon starts talks to systemd in its name. Without the variable every
//! call here does nothing.

use std::ffi::OsStr;
use std::os::fd::BorrowedFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

static SOCKET: OnceLock<Option<SocketAddr>> = OnceLock::new();
static STOPPING: AtomicBool = AtomicBool::new(false);

/// The address `$NOTIFY_SOCKET` names: `/path` or `@abstract`. Other kinds
/// (`vsock:`) are not supported and give None.
pub fn parse_address(v: &OsStr) -> Option<SocketAddr> {
    let b = v.as_bytes();
    match b.first() {
        Some(b'/') => SocketAddr::from_pathname(v).ok(),
        Some(b'@') => SocketAddr::from_abstract_name(&b[1..]).ok(),
        _ => None,
    }
}

/// Read `$NOTIFY_SOCKET` and remove it from the environment. `main` calls
/// this first, while the process has a single thread (changing the
/// environment is not safe while another thread may read it).
pub fn take_notify_socket() {
    SOCKET.get_or_init(|| {
        let v = std::env::var_os("NOTIFY_SOCKET")?;
        std::env::remove_var("NOTIFY_SOCKET");
        let a = parse_address(&v);
        if a.is_none() {
            log::warn!("NOTIFY_SOCKET={}: not a unix socket path or @name; not notifying", v.to_string_lossy());
        }
        a
    });
}

/// Send `msg` (lines of `KEY=VALUE`) to the service manager, if there is one.
pub fn notify(msg: &str) {
    let Some(Some(addr)) = SOCKET.get() else { return };
    let sent = UnixDatagram::unbound().and_then(|s| s.send_to_addr(msg.as_bytes(), addr));
    if let Err(e) = sent {
        log::warn!("cannot notify the service manager: {e}");
    }
}

/// `READY=1`: the mount is usable.
pub fn ready(status: &str) {
    notify(&format!("READY=1\nSTATUS={status}"));
}

/// `STOPPING=1`, once however often it is called: the mount is going away.
pub fn stopping(status: &str) {
    if !STOPPING.swap(true, Ordering::SeqCst) {
        notify(&format!("STOPPING=1\nSTATUS={status}"));
    }
}

/// Whether standard error is the journal: `$JOURNAL_STREAM` names its
/// device and inode (`DEV:INO`), as systemd sets it for a service whose
/// output goes there. (Not just "run by systemd": a service writing to a
/// file keeps its timestamps.)
pub fn stderr_is_journal() -> bool {
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else { return false };
    let Some((dev, ino)) = v.to_str().and_then(|s| s.split_once(':')) else { return false };
    // SAFETY: descriptor 2 stays open for the life of the process; it is only borrowed for one fstat.
    let fd = unsafe { BorrowedFd::borrow_raw(2) };
    let Ok(st) = super::sys::fstat(fd) else { return false };
    dev.parse::<u64>().ok() == Some(st.st_dev) && ino.parse::<u64>().ok() == Some(st.st_ino)
}

/// The syslog priority journald reads from a `<N>` line prefix.
pub fn priority(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_socket_addresses() {
        let p = parse_address(OsStr::new("/run/systemd/notify")).unwrap();
        assert_eq!(p.as_pathname(), Some(std::path::Path::new("/run/systemd/notify")));
        let a = parse_address(OsStr::new("@/org/freedesktop/systemd1/notify/42")).unwrap();
        assert_eq!(a.as_abstract_name(), Some(&b"/org/freedesktop/systemd1/notify/42"[..]));
        assert!(parse_address(OsStr::new("vsock:2:1234")).is_none());
        assert!(parse_address(OsStr::new("")).is_none());
    }

    #[test]
    fn notify_reaches_an_abstract_socket() {
        let name = format!("snapfs-test-notify-{}", std::process::id());
        let rx = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
        let addr = parse_address(OsStr::new(&format!("@{name}"))).unwrap();
        UnixDatagram::unbound().unwrap().send_to_addr(b"READY=1", &addr).unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }
}
