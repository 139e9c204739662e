//! The mount-time scan: find what changed while nobody was watching.
//!
//! Walks the backing tree through descriptors (never through the mount) and
//! marks for full comparison every inode whose ctime is at or after the
//! threshold the tracker gives (the last durable point minus a margin): files
//! written after the last flush before a SIGKILL, and everything changed in
//! the backing directory while it was not mounted. A directory whose ctime is
//! new had names added or removed, so its entries are marked too.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::os::errno::{Errno, SysResult};
use crate::os::sys;
use crate::tracker::{Ancestry, Kind, Tracker};

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct ScanStats {
    pub dirs: u64,
    pub entries: u64,
    pub changed: u64,
    pub errors: u64,
    pub millis: u64,
}

/// Links of the directories seen so far, for the tracker's ancestor records.
struct Links(RefCell<HashMap<u64, (u64, OsString)>>);

impl Ancestry for Links {
    fn link_of(&self, ino: u64) -> Option<(u64, OsString)> {
        self.0.borrow().get(&ino).cloned()
    }
}

/// Scan the tree under `root` and mark everything with `ctime >= threshold_ns`.
/// (A panic is an error: the caller then compares everything.)
pub fn scan(root: BorrowedFd<'_>, tracker: &Tracker, threshold_ns: i128) -> SysResult<ScanStats> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| scan_tree(root, tracker, threshold_ns))).unwrap_or_else(
        |p| {
            log::error!("INTERNAL ERROR: the scan panicked: {}", crate::util::panic_message(&*p));
            Err(Errno::EIO)
        },
    )
}

fn scan_tree(root: BorrowedFd<'_>, tracker: &Tracker, threshold_ns: i128) -> SysResult<ScanStats> {
    let t0 = Instant::now();
    let mut stats = ScanStats::default();
    let root_fd = sys::open_path(root, c".")?;
    let root_st = sys::fstat(root_fd.as_fd())?;
    let dev = root_st.st_dev;
    let links = Links(RefCell::new(HashMap::new()));
    if sys::ctime_ns(&root_st) >= threshold_ns {
        tracker.entries(&links, root_st.st_ino);
        stats.changed += 1;
    }
    // The directories still to list, depth first (any depth, no recursion),
    // parked while they wait: a file handle each, not a descriptor.
    let parking = sys::Parking::new(root_fd.as_fd());
    let mut stack: Vec<(sys::LevelFd, u64)> = vec![(sys::LevelFd::new(root_fd), root_st.st_ino)];
    while let Some((mut dir, dir_ino)) = stack.pop() {
        match parking.ensure(&mut dir) {
            Ok(()) => {}
            Err(e) if e.0 == libc::ESTALE || e == Errno::ENOENT => continue, // removed meanwhile
            Err(e) => {
                log::warn!("scan: cannot open directory inode {dir_ino} again: {e}; marking it for a full comparison");
                tracker.full(&links, dir_ino, Kind::Dir, 0);
                stats.errors += 1;
                continue;
            }
        }
        let dir = dir.get()?;
        stats.dirs += 1;
        let entries = match sys::list_dir(dir) {
            Ok(e) => e,
            Err(e) => {
                log::warn!("scan: cannot list directory inode {dir_ino}: {e}; marking it for a full comparison");
                tracker.full(&links, dir_ino, Kind::Dir, 0);
                stats.errors += 1;
                continue;
            }
        };
        for e in entries {
            if crate::live::reserved::hidden(dir_ino == root_st.st_ino, e.name.as_encoded_bytes()) {
                continue;
            }
            stats.entries += 1;
            let Ok(c) = sys::cstr(&e.name) else { continue };
            let st = match sys::fstatat(dir, &c) {
                Ok(st) => st,
                Err(_) => {
                    // Vanished while we looked: the directory changed.
                    tracker.entries(&links, dir_ino);
                    continue;
                }
            };
            links.0.borrow_mut().insert(st.st_ino, (dir_ino, e.name.clone()));
            let kind = Kind::from_mode(st.st_mode);
            if sys::ctime_ns(&st) >= threshold_ns {
                stats.changed += 1;
                if kind == Kind::Dir {
                    tracker.entries(&links, st.st_ino);
                } else {
                    tracker.full(&links, st.st_ino, kind, st.st_size as u64);
                }
            }
            if kind == Kind::Dir && st.st_dev == dev {
                match sys::open_path(dir, &c) {
                    Ok(fd) => {
                        let mut waiting = sys::LevelFd::new(fd);
                        parking.park(&mut waiting);
                        stack.push((waiting, st.st_ino));
                    }
                    Err(err) => {
                        log::warn!("scan: cannot open directory {:?}: {err}", e.name);
                        stats.errors += 1;
                        tracker.full(&links, st.st_ino, Kind::Dir, 0);
                    }
                }
            } else if kind != Kind::Dir {
                // Only directories are needed as ancestors.
                links.0.borrow_mut().remove(&st.st_ino);
            }
        }
    }
    stats.millis = t0.elapsed().as_millis() as u64;
    Ok(stats)
}
