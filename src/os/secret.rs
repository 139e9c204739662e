//! Memory for key material: a page of its own, outside core dumps
//! (`MADV_DONTDUMP`), locked in RAM where the limit allows (`mlock`: never
//! written to swap), and zeroed before it is given back.
//!
//! Keys live here from the moment they are unwrapped until the process
//! ends or the holder is dropped. Passphrases and key-file contents pass
//! through [`Zeroizing`] buffers, wiped on drop.

use std::ptr::NonNull;

pub use zeroize::Zeroizing;

/// One page of secret bytes (at most [`SecretPage::CAPACITY`]).
pub struct SecretPage {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the page is owned by this value alone (no aliasing pointer
// escapes but through `&self`/`&mut self` borrows), like a Box<[u8]>.
unsafe impl Send for SecretPage {}
// SAFETY: shared access only reads the bytes, as for a Box<[u8]>.
unsafe impl Sync for SecretPage {}

const PAGE: usize = 4096;

impl SecretPage {
    pub const CAPACITY: usize = PAGE;

    /// A zeroed page holding `len` usable bytes.
    pub fn new(len: usize) -> SecretPage {
        assert!(len <= PAGE, "a secret page holds at most {PAGE} bytes");
        // SAFETY: an anonymous private mapping with no address hint; the result is checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            // (an allocation failure: as Vec would, give up)
            std::alloc::handle_alloc_error(std::alloc::Layout::from_size_align(PAGE, PAGE).expect("page layout"));
        }
        // SAFETY: `p` is the page just mapped; both calls only change how
        // the kernel treats it. Their failure leaves the page usable, so
        // it is logged, not fatal (mlock fails beyond RLIMIT_MEMLOCK).
        unsafe {
            if libc::madvise(p, PAGE, libc::MADV_DONTDUMP) != 0 {
                log::warn!("key memory: madvise(MADV_DONTDUMP): {}", std::io::Error::last_os_error());
            }
            if libc::mlock(p, PAGE) != 0 {
                log::debug!("key memory: mlock: {}", std::io::Error::last_os_error());
            }
        }
        SecretPage { ptr: NonNull::new(p.cast()).expect("mmap returns a non-null page"), len }
    }

    /// A page holding a copy of `bytes`.
    pub fn from_bytes(bytes: &[u8]) -> SecretPage {
        let mut p = SecretPage::new(bytes.len());
        p.as_mut().copy_from_slice(bytes);
        p
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl AsRef<[u8]> for SecretPage {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: the page is mapped readable for PAGE >= len bytes and lives as long as self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl AsMut<[u8]> for SecretPage {
    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` makes this the only borrow.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for SecretPage {
    fn drop(&mut self) {
        // SAFETY: the whole page is ours; zero it with volatile writes (not
        // optimized away), then unmap it (munlock is implied).
        unsafe {
            let p = self.ptr.as_ptr();
            for i in 0..PAGE {
                std::ptr::write_volatile(p.add(i), 0);
            }
            libc::munmap(p.cast(), PAGE);
        }
    }
}

impl std::fmt::Debug for SecretPage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretPage({} bytes)", self.len)
    }
}

/// Keep this process out of core dumps and ptrace by other processes of
/// the same user (`PR_SET_DUMPABLE` 0), once it holds keys: what the
/// ciphers copy of a key (round keys) lives in ordinary memory.
pub fn no_dumps() {
    // SAFETY: prctl with integer arguments only; the result is checked.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        log::warn!("prctl(PR_SET_DUMPABLE, 0): {}", std::io::Error::last_os_error());
    }
}

/// Fill `buf` from the kernel's random generator.
pub fn random(buf: &mut [u8]) {
    getrandom::getrandom(buf).expect("the kernel's random generator (getrandom) answers");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_hold_and_are_excluded_from_dumps() {
        let mut p = SecretPage::new(64);
        assert_eq!(p.as_ref(), &[0u8; 64][..]);
        p.as_mut()[..3].copy_from_slice(b"key");
        assert_eq!(&p.as_ref()[..3], b"key");
        let addr = p.ptr.as_ptr() as usize;
        // the kernel lists the page's mapping with the "dd" (do not dump) flag
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut in_ours = false;
        let mut flagged = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ') {
                if let Some((a, b)) = range.split_once('-') {
                    if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) {
                        in_ours = (a..b).contains(&addr);
                        continue;
                    }
                }
            }
            if in_ours && line.starts_with("VmFlags:") {
                flagged = line.split_whitespace().any(|f| f == "dd");
            }
        }
        assert!(flagged, "the key page is not marked MADV_DONTDUMP");
        let q = SecretPage::from_bytes(b"abc");
        assert_eq!(q.as_ref(), b"abc");
    }
}
