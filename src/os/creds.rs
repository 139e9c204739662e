//! Per-thread credentials for requests that create inodes.
//!
//! The mount uses `default_permissions`, so the kernel checks every access with
//! the caller's full credentials (uid, gid, supplementary groups) against the
//! attributes we report, exactly as the underlying filesystem would. What the
//! kernel cannot do for us is give a new inode the right owner: for that the
//! worker thread switches its filesystem uid/gid to the caller's for the one
//! `openat`/`mkdirat`/`mknodat`/`symlinkat` call, so the backing filesystem
//! assigns owner, group (including setgid-directory inheritance) itself.
//!
//! `setfsuid` drops the filesystem capabilities from the thread's effective
//! set. The kernel has already allowed the operation, and the thread does not
//! carry the caller's supplementary groups, so we raise `CAP_DAC_OVERRIDE`,
//! `CAP_DAC_READ_SEARCH` and `CAP_FSETID` again for the duration; switching
//! fsuid back to 0 restores the rest. All of these are per-thread system calls
//! (the glibc wrappers for setresuid/setgroups would change every thread).

use crate::os::errno::{Errno, SysResult};

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
const CAP_DAC_OVERRIDE: u32 = 1;
const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_FSETID: u32 = 4;

fn capget() -> SysResult<[CapData; 2]> {
    let mut hdr = CapHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    let mut data = [CapData::default(); 2];
    // SAFETY: every pointer is to a buffer or C string that outlives the call, passed with its true length; the result is checked.
    let r = unsafe { libc::syscall(libc::SYS_capget, &mut hdr as *mut CapHeader, data.as_mut_ptr()) };
    if r != 0 {
        return Err(Errno::last());
    }
    Ok(data)
}

fn capset(data: &[CapData; 2]) -> SysResult<()> {
    let mut hdr = CapHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    // SAFETY: every pointer is to a buffer or C string that outlives the call, passed with its true length; the result is checked.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr()) };
    if r != 0 {
        return Err(Errno::last());
    }
    Ok(())
}

thread_local! {
    static OWN_UMASK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The daemon runs with umask 077, so that everything it creates for
/// itself (repository, sled, logs) is private. A request that creates an
/// inode through the mount carries a mode the kernel has already masked
/// with the caller's umask, so the thread serving it gets a umask of its
/// own, 0: `unshare(CLONE_FS)` detaches this thread's umask (and cwd and
/// root, which the daemon does not use) from the other threads. Done once
/// per thread. Should the kernel refuse, the whole process falls back to
/// umask 0 (repository files have explicit modes; sled's sit in a 0700
/// directory).
pub fn caller_umask() {
    OWN_UMASK.with(|done| {
        if done.get() {
            return;
        }
        // SAFETY: unshare(CLONE_FS) only gives this thread a private copy of
        // its filesystem attributes; it takes no pointers.
        if unsafe { libc::unshare(libc::CLONE_FS) } != 0 {
            log::error!("unshare(CLONE_FS) failed ({}): the daemon runs with umask 0", std::io::Error::last_os_error());
        }
        // SAFETY: umask cannot fail.
        unsafe { libc::umask(0) };
        done.set(true);
    });
}

/// While alive, the current thread acts on the filesystem as `uid:gid`.
pub struct AsCaller {
    switched: bool,
}

impl AsCaller {
    /// Switch this thread's filesystem identity. When the daemon does not run
    /// as root (or the caller is root) this does nothing.
    pub fn new(uid: u32, gid: u32) -> AsCaller {
        caller_umask();
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        if me != 0 || (uid == 0 && gid == 0) {
            return AsCaller { switched: false };
        }
        // SAFETY: a system call on descriptors and values we own, without pointers; the result is checked.
        unsafe {
            libc::syscall(libc::SYS_setfsgid, gid);
            libc::syscall(libc::SYS_setfsuid, uid);
        }
        if let Ok(mut caps) = capget() {
            let want = (1 << CAP_DAC_OVERRIDE) | (1 << CAP_DAC_READ_SEARCH) | (1 << CAP_FSETID);
            caps[0].effective |= want & caps[0].permitted;
            if let Err(e) = capset(&caps) {
                log::warn!("capset failed: {e}");
            }
        }
        AsCaller { switched: true }
    }
}

impl Drop for AsCaller {
    fn drop(&mut self) {
        if self.switched {
            // SAFETY: a system call on descriptors and values we own, without pointers; the result is checked.
            unsafe {
                libc::syscall(libc::SYS_setfsuid, 0);
                libc::syscall(libc::SYS_setfsgid, 0);
            }
            // fsuid back to 0 restores the filesystem capabilities from the
            // permitted set; make sure in case a kernel does not.
            if let Ok(mut caps) = capget() {
                if caps[0].effective != caps[0].permitted {
                    caps[0].effective = caps[0].permitted;
                    let _ = capset(&caps);
                }
            }
        }
    }
}

/// While alive, the current thread lacks `CAP_FSETID`, so the backing
/// filesystem clears setuid/setgid bits on a write or truncate as it would
/// for an unprivileged caller (the kernel asks us to, with
/// `FUSE_HANDLE_KILLPRIV_V2`, instead of checking xattrs on every write).
pub struct WithoutFsetid {
    dropped: bool,
}

impl WithoutFsetid {
    pub fn new(drop_it: bool) -> WithoutFsetid {
        if !drop_it {
            return WithoutFsetid { dropped: false };
        }
        match capget() {
            Ok(mut caps) if caps[0].effective & (1 << CAP_FSETID) != 0 => {
                caps[0].effective &= !(1 << CAP_FSETID);
                WithoutFsetid { dropped: capset(&caps).is_ok() }
            }
            _ => WithoutFsetid { dropped: false },
        }
    }
}

impl Drop for WithoutFsetid {
    fn drop(&mut self) {
        if self.dropped {
            if let Ok(mut caps) = capget() {
                caps[0].effective |= (1 << CAP_FSETID) & caps[0].permitted;
                let _ = capset(&caps);
            }
        }
    }
}
