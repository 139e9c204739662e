//! The one place that decides which errno a failure becomes.
//!
//! Live passthrough code works with [`Errno`] directly (it mostly forwards what
//! the backing filesystem said). Higher layers have their own `thiserror` enums
//! and convert through [`ToErrno`], so that integrity failures always become
//! `EIO`, read-only views always `EROFS`, and nothing collapses into `ENOENT`.

use std::fmt;
use std::io;

/// A POSIX error number.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(pub i32);

/// Result of an operation that fails with an errno.
pub type SysResult<T> = Result<T, Errno>;

impl Errno {
    pub const EPERM: Errno = Errno(libc::EPERM);
    pub const ENOENT: Errno = Errno(libc::ENOENT);
    pub const EIO: Errno = Errno(libc::EIO);
    pub const EBADF: Errno = Errno(libc::EBADF);
    pub const EACCES: Errno = Errno(libc::EACCES);
    pub const EEXIST: Errno = Errno(libc::EEXIST);
    pub const EXDEV: Errno = Errno(libc::EXDEV);
    pub const ENOTDIR: Errno = Errno(libc::ENOTDIR);
    pub const EISDIR: Errno = Errno(libc::EISDIR);
    pub const EINVAL: Errno = Errno(libc::EINVAL);
    pub const ENOSPC: Errno = Errno(libc::ENOSPC);
    pub const EROFS: Errno = Errno(libc::EROFS);
    pub const ENOSYS: Errno = Errno(libc::ENOSYS);
    pub const ENODATA: Errno = Errno(libc::ENODATA);
    pub const ERANGE: Errno = Errno(libc::ERANGE);
    pub const EOPNOTSUPP: Errno = Errno(libc::EOPNOTSUPP);
    pub const ENOTSUP: Errno = Errno(libc::ENOTSUP);
    pub const EINTR: Errno = Errno(libc::EINTR);
    pub const EAGAIN: Errno = Errno(libc::EAGAIN);
    pub const ENXIO: Errno = Errno(libc::ENXIO);
    pub const ENOTEMPTY: Errno = Errno(libc::ENOTEMPTY);

    /// The calling thread's current `errno`.
    pub fn last() -> Errno {
        Errno(io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO))
    }

    pub fn raw(self) -> i32 {
        self.0
    }
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Errno({}: {})", self.0, io::Error::from_raw_os_error(self.0))
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", io::Error::from_raw_os_error(self.0))
    }
}

impl std::error::Error for Errno {}

impl From<io::Error> for Errno {
    fn from(e: io::Error) -> Errno {
        e.to_errno()
    }
}

impl From<Errno> for io::Error {
    fn from(e: Errno) -> io::Error {
        io::Error::from_raw_os_error(e.0)
    }
}

impl From<Errno> for fuser::Errno {
    fn from(e: Errno) -> fuser::Errno {
        fuser::Errno::from_i32(e.0)
    }
}

/// Anything that can say which errno it becomes at the FUSE boundary.
pub trait ToErrno {
    fn to_errno(&self) -> Errno;
}

impl ToErrno for io::Error {
    fn to_errno(&self) -> Errno {
        match self.raw_os_error() {
            Some(n) => Errno(n),
            // Errors that did not come from the kernel (e.g. short reads, bad
            // data) are I/O errors to the caller, never "not found".
            None => Errno::EIO,
        }
    }
}

impl ToErrno for Errno {
    fn to_errno(&self) -> Errno {
        *self
    }
}

/// Turn a libc return value (-1 on error) into a result.
pub fn cvt<T: IsMinusOne>(ret: T) -> SysResult<T> {
    if ret.is_minus_one() {
        Err(Errno::last())
    } else {
        Ok(ret)
    }
}

pub trait IsMinusOne: Copy {
    fn is_minus_one(self) -> bool;
}

macro_rules! impl_minus_one {
    ($($t:ty)*) => {$(impl IsMinusOne for $t { fn is_minus_one(self) -> bool { self == -1 } })*}
}
impl_minus_one!(i32 i64 isize);
