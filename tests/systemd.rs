//! The daemon under systemd, without systemd: the test is the service
//! manager. It binds the notification socket, starts `snapfs mount
//! --foreground` with `NOTIFY_SOCKET` (and `JOURNAL_STREAM` naming the
//! daemon's stderr), and checks `READY=1` arrives once the mount is
//! usable, `STOPPING=1` once at unmount, and the log lines carry a
//! priority and no timestamp.

mod common;

use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn recv(sock: &UnixDatagram, limit: Duration) -> Option<String> {
    sock.set_read_timeout(Some(limit)).unwrap();
    let mut buf = vec![0u8; 4096];
    match sock.recv(&mut buf) {
        Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => None,
        Err(e) => panic!("recv: {e}"),
    }
}

#[test]
fn notify_socket_hears_ready_when_mounted_and_stopping_at_umount() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("d");
    std::fs::create_dir(&d).unwrap();
    let d = d.canonicalize().unwrap();
    std::fs::write(d.join("before"), b"old").unwrap();
    let sock_path = t.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();

    let log = t.path().join("d.log");
    let logf = std::fs::File::create(&log).unwrap();
    let st = logf.metadata().unwrap();
    let seen_env = t.path().join("password-command-env");
    let mut cmd = Command::new(bin());
    cmd.args(["mount", "--foreground", "--flush-ms", "200"])
        // a child of the daemon (here the password command) must not inherit the socket
        .arg("--password-command")
        .arg(format!("printenv NOTIFY_SOCKET > {}; echo test-passphrase", seen_env.display()))
        .arg(&d)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("JOURNAL_STREAM", format!("{}:{}", st.dev(), st.ino()))
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(logf.try_clone().unwrap())
        .stderr(logf);
    let child = cmd.spawn().expect("spawn snapfs");
    // from here the guard unmounts and reaps whatever happens
    let m = Mounted { dir: d.clone(), child: Some(child), log };

    let ready = recv(&sock, Duration::from_secs(30)).unwrap_or_else(|| panic!("no READY=1:\n{}", m.log_text()));
    // the moment READY=1 arrives the mount serves files and the control socket answers
    assert!(is_mounted(&d), "READY=1 before the mount:\n{}", m.log_text());
    assert_eq!(std::fs::read(m.path("before")).unwrap(), b"old");
    std::fs::write(m.path("after"), b"new").unwrap();
    let s = status(&d);
    assert_eq!(s["mounted"], true, "{s}");
    let lines: Vec<&str> = ready.lines().collect();
    assert_eq!(lines[0], "READY=1", "{ready:?}");
    assert!(lines.iter().any(|l| l.starts_with("STATUS=protecting ")), "{ready:?}");
    assert_eq!(recv(&sock, Duration::from_millis(300)), None, "nothing more while mounted");
    assert_eq!(std::fs::read_to_string(&seen_env).unwrap(), "", "the password command saw NOTIFY_SOCKET");

    let log_path = m.log.clone();
    m.umount();
    let stopping = recv(&sock, Duration::from_secs(10)).expect("no STOPPING=1 at umount");
    assert!(stopping.starts_with("STOPPING=1\n"), "{stopping:?}");
    assert_eq!(recv(&sock, Duration::from_millis(300)), None, "STOPPING=1 is sent once");

    // journal format: a priority prefix, no timestamp of our own
    let text = std::fs::read_to_string(&log_path).unwrap();
    let first = text.lines().next().unwrap_or_default();
    assert!(text.lines().any(|l| l.starts_with("<6>[INFO snapfs")), "{text}");
    assert!(text.lines().all(|l| !l.starts_with('[') && !l.contains("Z INFO")), "{text}");
    assert!(first.starts_with('<'), "{text}");
}

#[test]
fn without_the_journal_logs_keep_their_timestamps() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("d");
    std::fs::create_dir(&d).unwrap();
    // JOURNAL_STREAM naming some other file: stderr is not the journal
    let m = Mounted::with_env(&d, MountOpts::default(), &[("JOURNAL_STREAM", "1:1")]);
    let log_path = m.log.clone();
    m.umount();
    let text = std::fs::read_to_string(&log_path).unwrap();
    assert!(text.lines().any(|l| l.starts_with("[20") && l.contains("Z INFO")), "{text}");
    assert!(!text.contains("<6>"), "{text}");
}
