//! Where repository files live: a small write-once storage trait, and its
//! local-directory implementation.
//!
//! The contract, kept so that an S3-compatible object store can implement it
//! without a format change: files are named by their content (or by a hash
//! of it), written once and never modified; `put` of an existing name is a
//! no-op; nothing relies on rename or on the order of `list`; no lock is
//! needed for correctness. Only prune (not built yet) deletes.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::repo::crypto::Keys;
use crate::util::Locked;
use thiserror::Error;

/// The kinds of files in a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileKind {
    Pack,
    Snapshot,
    /// Key slots of an encrypted repository.
    Key,
    /// Deletion plans of prune on a repository several hosts write.
    Plan,
}

impl FileKind {
    fn dir(self) -> &'static str {
        match self {
            FileKind::Pack => "packs",
            FileKind::Snapshot => "snapshots",
            FileKind::Key => "keys",
            FileKind::Plan => "plans",
        }
    }
}

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("{kind:?} {name} not found in the repository")]
    NotFound { kind: FileKind, name: String },
    /// (The io error is in the message, not a `source`: shown once.)
    #[error("{path}: {err}{}", if err.raw_os_error() == Some(libc::ENOSPC) { " (the repository's device is full)" } else { "" })]
    Io { path: PathBuf, err: std::io::Error },
    #[error("{path}: short read ({got} of {want} bytes): the file is truncated")]
    Short { path: PathBuf, got: usize, want: usize },
    #[error("the repository at {0} is unreachable: its directory is gone (device not mounted?)")]
    Gone(PathBuf),
    /// An object store failed or refused (after retries where retrying helps).
    #[error("{location}: {msg}")]
    Remote { location: String, msg: String },
}

impl StoreError {
    /// Whether the failure is the device being full.
    pub fn is_enospc(&self) -> bool {
        matches!(self, StoreError::Io { err, .. } if err.raw_os_error() == Some(libc::ENOSPC))
    }
}

/// Storage failures reaching a reader are I/O errors (a missing file in a
/// snapshot's repository is damage, not "no such file"); a full device
/// says so.
impl crate::os::errno::ToErrno for StoreError {
    fn to_errno(&self) -> crate::os::errno::Errno {
        match self {
            StoreError::Io { err, .. } if err.raw_os_error() == Some(libc::ENOSPC) => {
                crate::os::errno::Errno(libc::ENOSPC)
            }
            _ => crate::os::errno::Errno::EIO,
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Write-once file storage.
pub trait Store: Send + Sync {
    /// Store `data` under `name`, durably, unless it exists already.
    fn put(&self, kind: FileKind, name: &str, data: &[u8]) -> StoreResult<()>;
    fn get(&self, kind: FileKind, name: &str) -> StoreResult<Vec<u8>>;
    /// `len` bytes at `off`; a file shorter than that is an error.
    fn get_range(&self, kind: FileKind, name: &str, off: u64, len: usize) -> StoreResult<Vec<u8>>;
    /// Up to `len` bytes at `off`, fewer where the file ends first (a read
    /// ahead of what is needed).
    fn get_range_upto(&self, kind: FileKind, name: &str, off: u64, len: usize) -> StoreResult<Vec<u8>> {
        let size = self.size(kind, name)?;
        self.get_range(kind, name, off, size.saturating_sub(off).min(len as u64) as usize)
    }
    fn size(&self, kind: FileKind, name: &str) -> StoreResult<u64>;
    fn list(&self, kind: FileKind) -> StoreResult<Vec<String>>;
    /// [`Store::list`], with when each file was written (seconds since the
    /// epoch, by the store's clock) where the store says it.
    fn list_times(&self, kind: FileKind) -> StoreResult<Vec<(String, Option<i64>)>> {
        Ok(self.list(kind)?.into_iter().map(|n| (n, None)).collect())
    }
    fn delete(&self, kind: FileKind, name: &str) -> StoreResult<()>;
    /// Remove what interrupted writes left behind, older than `age`.
    /// Returns how many.
    fn sweep(&self, _age: std::time::Duration) -> StoreResult<u64> {
        Ok(0)
    }
    /// The keys of an encrypted repository, for a store opened with them
    /// (see [`WithKeys`]).
    fn keys(&self) -> Option<std::sync::Arc<Keys>> {
        None
    }
    /// Whether other hosts may write the repository at the same time (an
    /// object store): prune then deletes in two phases (see `repo::plans`).
    fn shared(&self) -> bool {
        false
    }
    /// Whether each read is a round trip to another machine (an object
    /// store): objects are then read a chunk of their pack at a time (see
    /// `repo::readahead`).
    fn remote(&self) -> bool {
        false
    }
}

/// A store seen with the repository's keys: the same bytes (sealing is
/// the caller's: objects, packs and records use [`Store::keys`]), so
/// copies between stores (replicas) move ciphertext only.
pub struct WithKeys {
    inner: std::sync::Arc<dyn Store>,
    keys: std::sync::Arc<Keys>,
}

impl WithKeys {
    pub fn new(inner: std::sync::Arc<dyn Store>, keys: std::sync::Arc<Keys>) -> WithKeys {
        WithKeys { inner, keys }
    }
}

impl Store for WithKeys {
    fn put(&self, kind: FileKind, name: &str, data: &[u8]) -> StoreResult<()> {
        self.inner.put(kind, name, data)
    }
    fn get(&self, kind: FileKind, name: &str) -> StoreResult<Vec<u8>> {
        self.inner.get(kind, name)
    }
    fn get_range(&self, kind: FileKind, name: &str, off: u64, len: usize) -> StoreResult<Vec<u8>> {
        self.inner.get_range(kind, name, off, len)
    }
    fn get_range_upto(&self, kind: FileKind, name: &str, off: u64, len: usize) -> StoreResult<Vec<u8>> {
        self.inner.get_range_upto(kind, name, off, len)
    }
    fn size(&self, kind: FileKind, name: &str) -> StoreResult<u64> {
        self.inner.size(kind, name)
    }
    fn list(&self, kind: FileKind) -> StoreResult<Vec<String>> {
        self.inner.list(kind)
    }
    fn list_times(&self, kind: FileKind) -> StoreResult<Vec<(String, Option<i64>)>> {
        self.inner.list_times(kind)
    }
    fn delete(&self, kind: FileKind, name: &str) -> StoreResult<()> {
        self.inner.delete(kind, name)
    }
    fn sweep(&self, age: std::time::Duration) -> StoreResult<u64> {
        self.inner.sweep(age)
    }
    fn keys(&self) -> Option<std::sync::Arc<Keys>> {
        Some(self.keys.clone())
    }
    fn shared(&self) -> bool {
        self.inner.shared()
    }
    fn remote(&self) -> bool {
        self.inner.remote()
    }
}

/// A store in a local directory: `packs/<2 hex>/<name>`, `snapshots/<name>`.
/// Writes go to a temporary name, are fsynced, renamed without replacing,
/// and the directory is fsynced. Recently read packs stay open.
pub struct LocalStore {
    root: PathBuf,
    open_packs: std::sync::Mutex<lru::LruCache<String, std::sync::Arc<File>>>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |err| StoreError::Io { path: path.to_path_buf(), err }
}

impl LocalStore {
    pub fn new(root: &Path) -> LocalStore {
        let cap = std::num::NonZeroUsize::new(64).expect("non-zero");
        LocalStore { root: root.to_path_buf(), open_packs: std::sync::Mutex::new(lru::LruCache::new(cap)) }
    }

    /// An open pack (files are immutable, so a cached descriptor stays valid
    /// until prune deletes the file, which drops it from the cache).
    fn open_cached(&self, kind: FileKind, name: &str) -> StoreResult<std::sync::Arc<File>> {
        if kind != FileKind::Pack {
            return Ok(std::sync::Arc::new(self.open(kind, name)?));
        }
        if let Some(f) = self.open_packs.locked().get(name) {
            return Ok(f.clone());
        }
        let f = std::sync::Arc::new(self.open(kind, name)?);
        self.open_packs.locked().put(name.to_string(), f.clone());
        Ok(f)
    }

    fn dir_of(&self, kind: FileKind, name: &str) -> PathBuf {
        match kind {
            FileKind::Pack => self.root.join(kind.dir()).join(name.get(..2).unwrap_or("00")),
            FileKind::Snapshot | FileKind::Key | FileKind::Plan => self.root.join(kind.dir()),
        }
    }

    fn path(&self, kind: FileKind, name: &str) -> PathBuf {
        self.dir_of(kind, name).join(name)
    }

    /// Create one directory of the repository (its parent must exist).
    fn make_dir(&self, dir: &Path) -> StoreResult<()> {
        match crate::os::private::create_dir(dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !self.root.exists() => {
                Err(StoreError::Gone(self.root.clone()))
            }
            Err(e) => Err(io(dir)(e)),
        }
    }

    fn open(&self, kind: FileKind, name: &str) -> StoreResult<File> {
        let p = self.path(kind, name);
        File::open(&p).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                StoreError::NotFound { kind, name: name.to_string() }
            } else {
                StoreError::Io { path: p, err: e }
            }
        })
    }
}

impl Store for LocalStore {
    fn put(&self, kind: FileKind, name: &str, data: &[u8]) -> StoreResult<()> {
        let dir = self.dir_of(kind, name);
        let path = dir.join(name);
        if path.exists() {
            return Ok(());
        }
        // Never create the repository itself: a vanished repository (device
        // not mounted) must fail, not be recreated somewhere else.
        self.make_dir(&self.root.join(kind.dir()))?;
        if dir != self.root.join(kind.dir()) {
            self.make_dir(&dir)?;
        }
        let tmp = dir.join(format!(".{name}.{}.tmp", crate::util::random_id()));
        let r = (|| {
            let mut f = crate::os::private::new_file().open(&tmp)?;
            f.write_all(data)?;
            f.sync_all()?;
            drop(f);
            match nix_rename_noreplace(&tmp, &path) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => fs::remove_file(&tmp)?,
                Err(e) => return Err(e),
            }
            File::open(&dir)?.sync_all()
        })();
        if r.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        r.map_err(io(&path))
    }

    fn get(&self, kind: FileKind, name: &str) -> StoreResult<Vec<u8>> {
        let mut f = self.open(kind, name)?;
        let mut v = Vec::new();
        f.read_to_end(&mut v).map_err(io(&self.path(kind, name)))?;
        Ok(v)
    }

    fn get_range(&self, kind: FileKind, name: &str, off: u64, len: usize) -> StoreResult<Vec<u8>> {
        let f = self.open_cached(kind, name)?;
        let mut v = vec![0u8; len];
        let mut done = 0;
        while done < len {
            match f.read_at(&mut v[done..], off + done as u64) {
                Ok(0) => return Err(StoreError::Short { path: self.path(kind, name), got: done, want: len }),
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io(&self.path(kind, name))(e)),
            }
        }
        Ok(v)
    }

    fn size(&self, kind: FileKind, name: &str) -> StoreResult<u64> {
        let mut f = self.open(kind, name)?;
        f.seek(SeekFrom::End(0)).map_err(io(&self.path(kind, name)))
    }

    fn list(&self, kind: FileKind) -> StoreResult<Vec<String>> {
        let base = self.root.join(kind.dir());
        let mut out = Vec::new();
        let mut dirs = vec![base.clone()];
        while let Some(d) = dirs.pop() {
            let rd = match fs::read_dir(&d) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    if !self.root.exists() {
                        return Err(StoreError::Gone(self.root.clone()));
                    }
                    continue;
                }
                Err(e) => return Err(io(&d)(e)),
            };
            for e in rd {
                let e = e.map_err(io(&d))?;
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue;
                }
                let ft = e.file_type().map_err(io(&d))?;
                if ft.is_dir() && kind == FileKind::Pack && d == base {
                    dirs.push(e.path());
                } else if ft.is_file() {
                    out.push(name);
                }
            }
        }
        Ok(out)
    }

    fn sweep(&self, age: std::time::Duration) -> StoreResult<u64> {
        let mut n = 0;
        for kind in [FileKind::Pack, FileKind::Snapshot, FileKind::Key, FileKind::Plan] {
            self.sweep_dir(&self.root.join(kind.dir()), age, &mut n)?;
        }
        Ok(n)
    }

    fn delete(&self, kind: FileKind, name: &str) -> StoreResult<()> {
        self.open_packs.locked().pop(name);
        let p = self.path(kind, name);
        match fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io(&p)(e)),
        }
        // the removal is durable before the caller goes on
        let dir = self.dir_of(kind, name);
        File::open(&dir).and_then(|d| d.sync_all()).map_err(io(&dir))
    }
}

impl LocalStore {
    fn sweep_dir(&self, d: &Path, age: std::time::Duration, n: &mut u64) -> StoreResult<()> {
        let rd = match fs::read_dir(d) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io(d)(e)),
        };
        for e in rd {
            let e = e.map_err(io(d))?;
            let name = e.file_name().to_string_lossy().into_owned();
            let ft = e.file_type().map_err(io(d))?;
            if ft.is_dir() && !name.starts_with('.') {
                self.sweep_dir(&e.path(), age, n)?;
            } else if ft.is_file() && name.starts_with('.') && name.ends_with(".tmp") {
                let old = e.metadata().ok().and_then(|m| m.modified().ok()).and_then(|t| t.elapsed().ok());
                if old.is_some_and(|o| o >= age) && fs::remove_file(e.path()).is_ok() {
                    *n += 1;
                }
            }
        }
        Ok(())
    }
}

fn nix_rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let f = std::ffi::CString::new(from.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let t = std::ffi::CString::new(to.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: every pointer is to a buffer or C string that outlives the call, passed with its true length; the result is checked.
    let r = unsafe { libc::renameat2(libc::AT_FDCWD, f.as_ptr(), libc::AT_FDCWD, t.as_ptr(), libc::RENAME_NOREPLACE) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_once_and_ranges() {
        let t = tempfile::tempdir().unwrap();
        let s = LocalStore::new(t.path());
        s.put(FileKind::Pack, "abcdef", b"0123456789").unwrap();
        s.put(FileKind::Pack, "abcdef", b"other").unwrap(); // no overwrite
        assert_eq!(s.get(FileKind::Pack, "abcdef").unwrap(), b"0123456789");
        assert_eq!(s.get_range(FileKind::Pack, "abcdef", 2, 3).unwrap(), b"234");
        assert!(matches!(s.get_range(FileKind::Pack, "abcdef", 8, 5), Err(StoreError::Short { .. })));
        assert_eq!(s.size(FileKind::Pack, "abcdef").unwrap(), 10);
        s.put(FileKind::Snapshot, "s1", b"{}").unwrap();
        assert_eq!(s.list(FileKind::Pack).unwrap(), vec!["abcdef"]);
        assert_eq!(s.list(FileKind::Snapshot).unwrap(), vec!["s1"]);
        assert!(matches!(s.get(FileKind::Snapshot, "nope"), Err(StoreError::NotFound { .. })));
        s.delete(FileKind::Snapshot, "s1").unwrap();
        assert!(s.list(FileKind::Snapshot).unwrap().is_empty());
        // what an interrupted write leaves goes once it is old enough
        let tmp = t.path().join("packs/ab/.abcdef.1234.tmp");
        fs::write(&tmp, b"partial").unwrap();
        assert_eq!(s.sweep(std::time::Duration::from_secs(3600)).unwrap(), 0);
        assert_eq!(s.sweep(std::time::Duration::ZERO).unwrap(), 1);
        assert!(!tmp.exists());
        assert_eq!(s.list(FileKind::Pack).unwrap(), vec!["abcdef"]);
    }
}
