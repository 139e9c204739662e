//! The daemon as a process: started in the background (re-executed with
//! `--foreground --ready-fd 3` in a new session, its output going to a
//! log, the parent waiting for `READY` or `ERROR <message>`), and the
//! signals that end it (SIGTERM, SIGINT, SIGHUP: unmount cleanly).

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use super::{canonical, check_dir, MountArgs};

pub(crate) fn spawn_background(args: &MountArgs) -> Result<()> {
    let dir = check_dir(&args.dir)?;
    let mut a: Vec<std::ffi::OsString> = vec!["mount".into()];
    if let Some(b) = &args.backing {
        a.extend(["--backing".into(), canonical(b).into_os_string()]);
    }
    if let Some(r) = &args.repo {
        a.extend(["--repo".into(), crate::repo::Location::parse_canonical(r)?.to_string().into()]);
    }
    if let Some(c) = &args.cache {
        a.extend(["--cache".into(), canonical(c).into_os_string()]);
    }
    a.extend([
        "--threads".into(),
        args.threads.to_string().into(),
        "--flush-ms".into(),
        args.flush_ms.to_string().into(),
    ]);
    if !args.writeback {
        a.push("--no-writeback".into());
    }
    // seconds and bytes, which the flags read as they are
    for (flag, v) in [
        ("--every", args.every),
        ("--max-dirty", args.max_dirty),
        ("--max-age", args.max_age),
        ("--settle", args.settle),
    ] {
        if let Some(v) = v {
            a.extend([flag.into(), v.to_string().into()]);
        }
    }
    if let Some(k) = &args.keep {
        a.extend(["--keep".into(), k.to_string().into()]);
    }
    for r in &args.replicas {
        a.extend(["--replica".into(), r.into()]);
    }
    if let Some(h) = &args.host {
        a.extend(["--host".into(), h.into()]);
    }
    if let Some(m) = &args.metrics {
        a.extend(["--metrics".into(), m.to_string().into()]);
    }
    let pid = spawn_daemon(a, &dir, args.key.as_deref())?;
    println!("snapfs: {} is protected (daemon pid {pid})", dir.display());
    Ok(())
}

/// Run `snapfs ARGS --foreground --ready-fd 3 DIR` in a new session and wait
/// for its one line: `READY` (returns its pid) or `ERROR <message>`.
///
/// A key is handed over through a pipe on descriptor 4 (`--key-fd 4`),
/// never on the command line or in the environment.
pub(crate) fn spawn_daemon(
    args: Vec<std::ffi::OsString>,
    dir: &Path,
    key: Option<&crate::repo::keyslot::KeySource>,
) -> Result<u32> {
    let key_pipe = key.map(key_pipe).transpose()?;
    let mut fds = [0 as RawFd; 2];
    // SAFETY: every pointer is to a buffer or C string that outlives the call, passed with its true length; the result is checked.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        bail!("pipe: {}", std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded: both descriptors are new and ours alone.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let exe = std::env::current_exe().context("cannot find the snapfs executable")?;
    let mut cmd = Command::new(exe);
    cmd.args(&args).arg("--foreground").arg("--ready-fd").arg("3");
    if key_pipe.is_some() {
        cmd.arg("--key-fd").arg("4");
        // (the parent read the key from them: the daemon needs none)
        for k in ["SNAPFS_PASSWORD", "SNAPFS_PASSWORD_FILE", "SNAPFS_KEY_FILE"] {
            cmd.env_remove(k);
        }
    }
    cmd.arg(dir);
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    let wfd = w.as_raw_fd();
    let kfd = key_pipe.as_ref().map(|k| k.as_raw_fd());
    // SAFETY: between fork and exec the closure only makes async-signal-safe system calls.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // (moved above 10 first: either may be 3 or 4 already)
            let high = |fd: RawFd| match libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10) {
                n if n < 0 => Err(std::io::Error::last_os_error()),
                n => Ok(n),
            };
            let (w3, k4) = (high(wfd)?, kfd.map(high).transpose()?);
            if libc::dup2(w3, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(k) = k4 {
                if libc::dup2(k, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("cannot start the snapfs daemon")?;
    drop(w);
    drop(key_pipe);
    let mut line = String::new();
    BufReader::new(std::fs::File::from(r)).read_line(&mut line)?;
    let line = line.trim_end();
    if line == "READY" {
        return Ok(child.id());
    }
    if let Some(msg) = line.strip_prefix("ERROR ") {
        let _ = child.wait();
        bail!("{msg}");
    }
    let status = child.wait()?;
    bail!("the snapfs daemon exited before the mount was ready ({status}); run with --foreground to see why")
}

/// A pipe holding the key (all of it written and the writing end closed:
/// a key is far smaller than a pipe's buffer); returns the reading end.
fn key_pipe(key: &crate::repo::keyslot::KeySource) -> Result<OwnedFd> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: every pointer is to a buffer that outlives the call, of the length the call expects; the result is checked.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        bail!("pipe: {}", std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded: both descriptors are new and ours alone.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let mut w = std::fs::File::from(w);
    w.write_all(&key.to_bytes()).context("handing the key to the daemon")?;
    Ok(r)
}

pub(crate) fn block_signals() -> libc::sigset_t {
    // SAFETY: a plain C struct, for which all-zero bytes are a valid value.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Report the outcome to the parent waiting on `ready_fd`.
/// A thread that waits for the blocked signals (SIGTERM, SIGINT, SIGHUP)
/// and unmounts; lazily if the mount is busy.
pub(crate) fn on_signals(
    sigset: libc::sigset_t,
    unmount: impl Fn(bool) -> std::io::Result<()> + Send + 'static,
) -> std::io::Result<()> {
    std::thread::Builder::new().name("signals".into()).spawn(move || loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: every pointer is to a buffer or C string that outlives the call, passed with its true length; the result is checked.
        if unsafe { libc::sigwait(&sigset, &mut sig) } != 0 {
            continue;
        }
        log::info!("signal {sig}: unmounting");
        match unmount(false) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                log::warn!("mount busy; detaching lazily");
                if let Err(e) = unmount(true) {
                    log::error!("unmount failed: {e}");
                }
            }
            Err(e) => log::error!("unmount failed: {e}"),
        }
    })?;
    Ok(())
}

pub(crate) fn notify(ready_fd: Option<RawFd>, msg: &str) {
    if let Some(fd) = ready_fd {
        // SAFETY: the descriptor was just returned by the kernel (checked) and nothing else owns or closes it.
        let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
        let _ = writeln!(f, "{msg}");
    }
}

pub(crate) fn ready_fd_is_background(args: &MountArgs) -> bool {
    args.ready_fd.is_some()
}

pub(crate) fn redirect_output_to(path: &Path) -> Result<()> {
    let f = crate::os::private::open_append(path).with_context(|| format!("log {}", path.display()))?;
    // SAFETY: dup2 onto stdout/stderr of descriptors we own.
    unsafe {
        libc::dup2(f.as_raw_fd(), 1);
        libc::dup2(f.as_raw_fd(), 2);
    }
    Ok(())
}
