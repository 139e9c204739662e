//! Times with the writeback cache (issue 11): after `syncfs` on the mount
//! (which `snapfs snapshot` does), every file shows one mtime through the
//! mount, in the backing directory, in `.snapshots`, on a browse mount, in
//! a restore, and after unmount and remount, whatever the mix of writes.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use common::*;

/// A small deterministic generator.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Random writes of every kind the kernel handles differently under the
/// writeback cache: small and large writes, appends, truncates up and
/// down, O_TRUNC rewrites, new files written at once, mmap stores,
/// fallocate, copy_file_range, and explicit times.
fn workload(dir: &Path, seed: u64, files: usize, ops: usize) {
    let mut r = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let path = |i: u64| dir.join(format!("f{i}"));
    for i in 0..files as u64 {
        fs::write(path(i), noise(i, r.below(200_000) as usize)).unwrap();
    }
    for _ in 0..ops {
        let p = path(r.below(files as u64));
        let open = || fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&p).unwrap();
        match r.below(10) {
            0 => open().write_all_at(&noise(r.next(), 1 + r.below(100) as usize), r.below(300_000)).unwrap(),
            1 => open().write_all_at(&noise(r.next(), 1 << 20), r.below(300_000)).unwrap(),
            2 => {
                use std::io::Write;
                fs::OpenOptions::new().append(true).open(&p).unwrap().write_all(&noise(r.next(), 4000)).unwrap()
            }
            3 => open().set_len(r.below(400_000)).unwrap(),
            4 => fs::write(&p, noise(r.next(), r.below(20) as usize)).unwrap(),
            5 => {
                let f = open();
                let len = f.metadata().unwrap().len() as usize;
                if len > 0 {
                    let off = r.below(len as u64) as usize;
                    // SAFETY: a shared mapping of `len` bytes of our file,
                    // written at one offset inside it, synced and unmapped.
                    unsafe {
                        let m = libc::mmap(
                            std::ptr::null_mut(),
                            len,
                            libc::PROT_READ | libc::PROT_WRITE,
                            libc::MAP_SHARED,
                            f.as_raw_fd(),
                            0,
                        );
                        assert_ne!(m, libc::MAP_FAILED);
                        *(m as *mut u8).add(off) ^= 0x5a;
                        libc::msync(m, len, libc::MS_SYNC);
                        libc::munmap(m, len);
                    }
                }
            }
            6 => {
                let f = open();
                // SAFETY: our descriptor.
                unsafe { libc::fallocate(f.as_raw_fd(), 0, r.below(300_000) as i64, 65536) };
            }
            7 => {
                let src = fs::File::open(path(r.below(files as u64))).unwrap();
                let dst = open();
                let (mut a, mut b) = (0i64, r.below(100_000) as i64);
                // SAFETY: our descriptors and offsets.
                unsafe { libc::copy_file_range(src.as_raw_fd(), &mut a, dst.as_raw_fd(), &mut b, 70_000, 0) };
            }
            8 => {
                let t = std::time::UNIX_EPOCH + std::time::Duration::new(1_600_000_000 + r.below(1000), 123_456_789);
                open().set_modified(t).unwrap();
            }
            _ => {
                // a new file, written and closed at once (`echo data > f`)
                let q = dir.join(format!("new{}", r.below(1_000_000)));
                fs::write(q, b"data\n").unwrap();
            }
        }
    }
}

type Times = BTreeMap<String, (i64, i64)>;

fn mtimes(dir: &Path) -> Times {
    let mut out = Times::new();
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let m = fs::symlink_metadata(e.path()).unwrap();
        if m.is_file() {
            out.insert(name.clone(), (m.mtime(), m.mtime_nsec()));
        }
        // ctime never runs behind mtime (which is only ever set to the past here)
        assert!((m.ctime(), m.ctime_nsec()) >= (m.mtime(), m.mtime_nsec()), "{name}: ctime before mtime");
    }
    out
}

fn same(want: &Times, got: &Times, what: &str) {
    assert_eq!(want.keys().collect::<Vec<_>>(), got.keys().collect::<Vec<_>>(), "{what}: files differ");
    let bad: Vec<String> =
        want.iter().filter(|(k, v)| got[*k] != **v).map(|(k, v)| format!("{k}: {v:?} vs {:?}", got[k])).collect();
    assert!(bad.is_empty(), "{what}: {} of {} mtimes differ: {bad:?}", bad.len(), want.len());
}

fn syncfs(dir: &Path) {
    let f = fs::File::open(dir).unwrap();
    // SAFETY: our descriptor.
    assert_eq!(unsafe { libc::syncfs(f.as_raw_fd()) }, 0);
}

#[test]
fn one_mtime_everywhere_under_the_writeback_cache() {
    let t = tempfile::tempdir().unwrap();
    let raw = t.path().join("raw");
    let mnt = t.path().join("mnt");
    fs::create_dir(&raw).unwrap();
    fs::create_dir(&mnt).unwrap();
    let opts = MountOpts { backing: Some(raw.clone()), ..Default::default() };
    let m = Mounted::with(&mnt, opts.clone());
    for (round, seed) in [11u64, 12, 13].into_iter().enumerate() {
        workload(&m.dir, seed, 40, 400);
        syncfs(&m.dir);
        let live = mtimes(&m.dir);
        same(&live, &mtimes(&raw), &format!("round {round}: backing after syncfs"));
        let name = format!("r{round}");
        snap(&m.dir, &name);
        same(&live, &mtimes(&m.dir), &format!("round {round}: through the mount after the snapshot"));
        same(&live, &mtimes(&m.path(&format!(".snapshots/{name}"))), &format!("round {round}: .snapshots"));
        let target = t.path().join(format!("restore{round}"));
        run_ok(&["restore", m.dir.to_str().unwrap(), &name, target.to_str().unwrap()]);
        same(&live, &mtimes(&target), &format!("round {round}: restore"));
    }
    let live = mtimes(&m.dir);
    m.umount();
    same(&live, &mtimes(&raw), "backing after unmount");
    let m = Mounted::with(&mnt, opts);
    same(&live, &mtimes(&m.dir), "after remount");
    m.umount();
    let b = t.path().join("browse");
    fs::create_dir(&b).unwrap();
    run_ok(&["browse", "--repo", raw.join(".snapfs").to_str().unwrap(), "--snapshot", "r2", b.to_str().unwrap()]);
    let _g = BrowseGuard(b.clone());
    let want = live.into_iter().filter(|(k, _)| raw.join(k).exists()).collect::<Times>();
    same(&want, &mtimes(&b), "browse");
}

#[test]
fn a_file_written_at_once_keeps_the_mtime_stat_showed() {
    // `echo data > f; stat f; snapfs snapshot; stat .snapshots/a/f; umount; stat f`
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("d");
    fs::create_dir(&d).unwrap();
    let m = Mounted::new(&d);
    let mut want = Times::new();
    for i in 0..200 {
        let p = m.path(&format!("x{i}.txt"));
        fs::write(&p, b"data\n").unwrap();
        let md = fs::metadata(&p).unwrap();
        want.insert(format!("x{i}.txt"), (md.mtime(), md.mtime_nsec()));
    }
    snap(&m.dir, "a");
    same(&want, &mtimes(&m.path(".snapshots/a")), ".snapshots");
    m.umount();
    same(&want, &mtimes(&d), "after unmount");
}
