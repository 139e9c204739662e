//! Extended attributes, through `/proc/self/fd` paths (no `*at` form before Linux 6.13).

use super::*;
use crate::os::errno::{cvt, Errno, SysResult};
use crate::os::sys::cstr;
use std::ffi::OsStr;
use std::sync::atomic::Ordering;

impl LiveFs {
    /// Path for the xattr calls that have no `*at` form. Symlinks cannot be
    /// reached through `/proc/self/fd` without following them.
    pub(crate) fn xattr_path(&self, i: &Inode) -> SysResult<std::ffi::CString> {
        if i.is_symlink() {
            return Err(Errno::EPERM);
        }
        Ok(Self::proc_path(&self.fd(i)?))
    }

    pub fn setxattr(&self, nodeid: u64, name: &OsStr, value: &[u8], flags: i32) -> SysResult<()> {
        let _writers = self.writer();
        let i = self.inode(nodeid)?;
        let p = self.xattr_path(&i)?;
        let n = cstr(name)?;
        self.cap_meta(&i);
        self.observer.meta(self, i.ino, i.kind());
        i.no_caps.store(false, Ordering::SeqCst);
        // SAFETY: every pointer is to a buffer or C string that outlives the call, passed with its true length; the result is checked.
        cvt(unsafe {
            libc::setxattr(p.as_ptr(), n.as_ptr(), value.as_ptr() as *const libc::c_void, value.len(), flags)
        })
        .map(|_| ())
    }

    /// `size == 0` asks for the size only.
    pub fn getxattr(&self, nodeid: u64, name: &OsStr, size: u32) -> SysResult<Vec<u8>> {
        let i = self.inode(nodeid)?;
        if i.is_symlink() {
            return Err(Errno::ENODATA);
        }
        let caps = name == "security.capability";
        if caps && i.no_caps.load(Ordering::SeqCst) {
            return Err(Errno::ENODATA);
        }
        let p = self.xattr_path(&i)?;
        let n = cstr(name)?;
        let mut buf = vec![0u8; size as usize];
        let r =
            // SAFETY: every pointer is to a buffer or C string that outlives the call, passed with its true length; the result is checked.
            cvt(unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr() as *mut libc::c_void, buf.len()) });
        if caps && r == Err(Errno::ENODATA) {
            i.no_caps.store(true, Ordering::SeqCst);
        }
        let r = r?;
        if size == 0 {
            return Ok((r as u32).to_ne_bytes().to_vec());
        }
        buf.truncate(r as usize);
        Ok(buf)
    }

    pub fn listxattr(&self, nodeid: u64, size: u32) -> SysResult<Vec<u8>> {
        let i = self.inode(nodeid)?;
        if i.is_symlink() {
            return Ok(if size == 0 { 0u32.to_ne_bytes().to_vec() } else { Vec::new() });
        }
        let p = self.xattr_path(&i)?;
        let mut buf = vec![0u8; size as usize];
        // SAFETY: every pointer is to a buffer or C string that outlives the call, passed with its true length; the result is checked.
        let r = cvt(unsafe { libc::listxattr(p.as_ptr(), buf.as_mut_ptr() as *mut libc::c_char, buf.len()) })?;
        if size == 0 {
            return Ok((r as u32).to_ne_bytes().to_vec());
        }
        buf.truncate(r as usize);
        Ok(buf)
    }

    pub fn removexattr(&self, nodeid: u64, name: &OsStr) -> SysResult<()> {
        let _writers = self.writer();
        let i = self.inode(nodeid)?;
        let p = self.xattr_path(&i)?;
        let n = cstr(name)?;
        self.cap_meta(&i);
        self.observer.meta(self, i.ino, i.kind());
        // SAFETY: every pointer is to a buffer or C string that outlives the call, passed with its true length; the result is checked.
        cvt(unsafe { libc::removexattr(p.as_ptr(), n.as_ptr()) }).map(|_| ())
    }
}
