//! The dirty set after known sequences of operations equals exactly the
//! expected blocks (block size 64 KiB), observed through `snapfs status`.

mod common;

use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use common::*;

const BS: u64 = 65536;

/// A directory with `files` created before the first mount (so they are clean).
fn setup(files: &[(&str, u64)]) -> (tempfile::TempDir, std::path::PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("d");
    fs::create_dir(&d).unwrap();
    for (name, size) in files {
        let p = d.join(name);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        let f = fs::File::create(&p).unwrap();
        // real data, not holes, so that nothing but our writes changes
        let chunk = vec![7u8; 1 << 20];
        let mut done = 0;
        while done < *size {
            let n = (*size - done).min(chunk.len() as u64);
            f.write_all_at(&chunk[..n as usize], done).unwrap();
            done += n;
        }
    }
    (t, d)
}

#[test]
fn writes_across_block_boundaries() {
    let (_t, d) = setup(&[("f", 16 * BS)]);
    let m = Mounted::new(&d);
    write_at(&m.path("f"), BS - 10, &[1u8; 20]);
    write_at(&m.path("f"), 5 * BS, &[1u8]);
    write_at(&m.path("f"), 7 * BS, &vec![1u8; 2 * BS as usize]);
    let st = status(&m.dir);
    assert_eq!(ranges(&st, "f").unwrap(), vec![(0, 2), (5, 6), (7, 9)]);
    assert_eq!(st["dirty"]["files"], 1);
    assert_eq!(st["dirty"]["blocks"], 5);
    assert_eq!(st["dirty"]["bytes"], 5 * BS);
    m.umount();
}

#[test]
fn appends_mark_from_the_old_end() {
    let (_t, d) = setup(&[("log", 100 * 1024)]);
    let m = Mounted::new(&d);
    {
        use std::io::Write;
        let mut f = fs::OpenOptions::new().append(true).open(m.path("log")).unwrap();
        f.write_all(b"0123456789").unwrap();
    }
    let st = status(&m.dir);
    assert_eq!(ranges(&st, "log").unwrap(), vec![(1, 2)]);
    // the append lands after the old end: block 1 now ends 10 bytes later
    assert_eq!(fs::metadata(m.path("log")).unwrap().len(), 100 * 1024 + 10);
    assert_eq!(st["dirty"]["bytes"], 100 * 1024 + 10 - BS);
    // growing into new blocks
    {
        use std::io::Write;
        let mut f = fs::OpenOptions::new().append(true).open(m.path("log")).unwrap();
        f.write_all(&vec![3u8; 2 * BS as usize]).unwrap();
    }
    let st = status(&m.dir);
    assert_eq!(ranges(&st, "log").unwrap(), vec![(1, 4)]);
    m.umount();
}

#[test]
fn truncate_down_and_up() {
    let (_t, d) = setup(&[("f", 16 * BS), ("g", 16 * BS)]);
    let m = Mounted::new(&d);
    let f = fs::OpenOptions::new().write(true).open(m.path("f")).unwrap();
    f.set_len(200 * 1024).unwrap(); // block 3 is cut short, 4.. gone
    let st = status(&m.dir);
    assert_eq!(ranges(&st, "f").unwrap(), vec![(3, 4)]);
    assert!(changes(&st, "f").unwrap().contains(&"meta".to_string()));
    f.set_len(512 * 1024).unwrap(); // grows again from block 3
    let st = status(&m.dir);
    assert_eq!(ranges(&st, "f").unwrap(), vec![(3, 8)]);
    // an aligned truncate touches no remaining block
    fs::OpenOptions::new().write(true).open(m.path("g")).unwrap().set_len(4 * BS).unwrap();
    let st = status(&m.dir);
    assert_eq!(ranges(&st, "g").unwrap(), vec![]);
    assert_eq!(changes(&st, "g").unwrap(), vec!["meta"]);
    drop(f);
    m.umount();
}

#[test]
fn sparse_files() {
    let (_t, d) = setup(&[]);
    // a sparse 1 MiB file made before mounting
    fs::File::create(d.join("sparse")).unwrap().set_len(16 * BS).unwrap();
    let m = Mounted::new(&d);
    write_at(&m.path("sparse"), 700 * 1024, b"x");
    let st = status(&m.dir);
    assert_eq!(ranges(&st, "sparse").unwrap(), vec![(10, 11)]);
    // the file stays sparse
    let meta = fs::metadata(d.join("sparse")).unwrap_or_else(|_| fs::metadata(m.path("sparse")).unwrap());
    use std::os::unix::fs::MetadataExt;
    assert!(meta.blocks() * 512 < 4 * BS, "file lost its holes: {} blocks", meta.blocks());
    // a new file with a hole: created files are compared in full
    write_at(&m.path("new"), 10 * BS, b"y");
    let st = status(&m.dir);
    assert_eq!(ranges(&st, "new").unwrap(), vec![(0, 11)]);
    assert!(changes(&st, "new").unwrap().contains(&"created".to_string()));
    m.umount();
}

#[test]
fn mmap_writes() {
    let (_t, d) = setup(&[("m", 16 * BS)]);
    let m = Mounted::new(&d);
    let f = fs::OpenOptions::new().read(true).write(true).open(m.path("m")).unwrap();
    unsafe {
        let len = (16 * BS) as usize;
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        let b = p as *mut u8;
        *b.add((3 * BS + 5) as usize) = 42;
        *b.add((9 * BS) as usize) = 43;
        assert_eq!(libc::msync(p, len, libc::MS_SYNC), 0);
        libc::munmap(p, len);
    }
    drop(f);
    let st = status(&m.dir);
    assert_eq!(ranges(&st, "m").unwrap(), vec![(3, 4), (9, 10)]);
    let mut buf = [0u8; 1];
    fs::File::open(m.path("m")).unwrap().read_exact_at(&mut buf, 9 * BS).unwrap();
    assert_eq!(buf[0], 43);
    m.umount();
}

#[test]
fn rename_of_a_dirty_file_keeps_its_blocks() {
    let (_t, d) = setup(&[("a", 4 * BS), ("sub/keep", 10)]);
    let m = Mounted::new(&d);
    write_at(&m.path("a"), 2 * BS, b"z");
    fs::rename(m.path("a"), m.path("sub/b")).unwrap();
    let st = status(&m.dir);
    assert_eq!(ranges(&st, "sub/b").unwrap(), vec![(2, 3)]);
    assert!(ranges(&st, "a").is_none());
    assert!(changes(&st, "").unwrap().contains(&"entries".to_string()));
    assert!(changes(&st, "sub").unwrap().contains(&"entries".to_string()));
    // a renamed directory carries its dirty files along
    fs::rename(m.path("sub"), m.path("sub2")).unwrap();
    let st = status(&m.dir);
    assert_eq!(ranges(&st, "sub2/b").unwrap(), vec![(2, 3)]);
    m.umount();
}

#[test]
fn hard_links_share_one_record() {
    let (_t, d) = setup(&[("f", 4 * BS)]);
    fs::hard_link(d.join("f"), d.join("g")).unwrap();
    let m = Mounted::new(&d);
    write_at(&m.path("g"), BS, b"q");
    let st = status(&m.dir);
    assert_eq!(st["dirty"]["files"], 1);
    let files: Vec<_> = st["files"].as_array().unwrap().iter().filter(|f| f["kind"] == "file").collect();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0]["ranges"], serde_json::json!([[1, 2]]));
    // a new link is a metadata change of the inode and a change of the directory
    fs::hard_link(m.path("f"), m.path("h")).unwrap();
    let st = status(&m.dir);
    assert_eq!(st["dirty"]["files"], 1);
    assert!(changes(&st, "").unwrap().contains(&"entries".to_string()));
    m.umount();
}

#[test]
fn unlink_of_a_dirty_file_forgets_it() {
    let (_t, d) = setup(&[("f", 4 * BS), ("g", 4 * BS)]);
    fs::hard_link(d.join("g"), d.join("g2")).unwrap();
    let m = Mounted::new(&d);
    write_at(&m.path("f"), 0, b"a");
    write_at(&m.path("g"), 0, b"a");
    fs::remove_file(m.path("f")).unwrap();
    fs::remove_file(m.path("g")).unwrap(); // g2 remains: still dirty
    let st = status(&m.dir);
    let paths = dirty_paths(&st);
    assert!(!paths.iter().any(|p| p == "f"), "{paths:?}");
    assert_eq!(st["dirty"]["files"], 1);
    assert!(changes(&st, "").unwrap().contains(&"entries".to_string()));
    m.umount();
}

#[test]
fn metadata_changes() {
    let (_t, d) = setup(&[("f", 10), ("g", 10), ("h", 10)]);
    let m = Mounted::new(&d);
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(m.path("f"), fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(m.path("g"), Some(65534), None).unwrap();
    let c = std::ffi::CString::new(m.path("h").to_str().unwrap()).unwrap();
    let r = unsafe { libc::setxattr(c.as_ptr(), c"user.k".as_ptr(), b"v".as_ptr() as *const _, 1, 0) };
    assert_eq!(r, 0);
    let st = status(&m.dir);
    for p in ["f", "g", "h"] {
        assert_eq!(changes(&st, p).unwrap(), vec!["meta"], "{p}");
        assert_eq!(ranges(&st, p).unwrap(), vec![], "{p}");
    }
    assert_eq!(st["dirty"]["blocks"], 0);
    m.umount();
}

#[test]
fn punch_hole_fallocate_and_copy_file_range() {
    let (_t, d) = setup(&[("p", 16 * BS), ("src", 4 * BS), ("dst", 16 * BS)]);
    let m = Mounted::new(&d);
    let f = fs::OpenOptions::new().read(true).write(true).open(m.path("p")).unwrap();
    let r = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            (2 * BS) as i64,
            (2 * BS) as i64,
        )
    };
    assert_eq!(r, 0);
    // SEEK_HOLE passes through and finds the hole
    let hole = unsafe { libc::lseek(f.as_raw_fd(), 0, libc::SEEK_HOLE) };
    assert_eq!(hole as u64, 2 * BS);
    let data = unsafe { libc::lseek(f.as_raw_fd(), (2 * BS) as i64, libc::SEEK_DATA) };
    assert_eq!(data as u64, 4 * BS);
    let src = fs::File::open(m.path("src")).unwrap();
    let dst = fs::OpenOptions::new().write(true).open(m.path("dst")).unwrap();
    let mut oi: i64 = 0;
    let mut oo: i64 = (10 * BS) as i64;
    let n = unsafe { libc::copy_file_range(src.as_raw_fd(), &mut oi, dst.as_raw_fd(), &mut oo, BS as usize, 0) };
    assert_eq!(n as u64, BS);
    let st = status(&m.dir);
    assert_eq!(ranges(&st, "p").unwrap(), vec![(2, 4)]);
    assert_eq!(ranges(&st, "dst").unwrap(), vec![(10, 11)]);
    assert!(ranges(&st, "src").is_none());
    drop((f, src, dst));
    m.umount();
}

#[test]
fn dirty_set_survives_remount() {
    let (_t, d) = setup(&[("f", 16 * BS)]);
    let m = Mounted::new(&d);
    write_at(&m.path("f"), 3 * BS, b"1");
    let before = status(&m.dir);
    // past the scan's safety margin, so the remount finds nothing new
    std::thread::sleep(std::time::Duration::from_millis(1200));
    m.umount();
    // offline status reads the persisted state
    let off = status(&d);
    assert_eq!(off["mounted"], false);
    assert_eq!(off["last_session"], "clean");
    assert_eq!(ranges(&off, "f"), ranges(&before, "f"));
    let m = Mounted::new(&d);
    let st = wait_scan(&m.dir);
    assert_eq!(ranges(&st, "f").unwrap(), vec![(3, 4)]);
    // the times of the changes are kept in memory only: after a remount the
    // oldest counts from the start of its epoch, never later than it was
    let (mut now, mut then) = (st["dirty"].clone(), before["dirty"].clone());
    assert!(now["oldest_change"].as_str() <= then["oldest_change"].as_str(), "{now} {then}");
    for v in [&mut now, &mut then] {
        for k in ["oldest_change", "oldest_change_age_sec", "last_change"] {
            v.as_object_mut().unwrap().remove(k);
        }
    }
    assert_eq!(now, then);
    m.umount();
}

#[test]
fn changes_made_while_unmounted_are_found() {
    let (_t, d) = setup(&[("a", 4 * BS), ("b", 4 * BS), ("keep", 4 * BS), ("sub/c", 10)]);
    // Let the setup's ctimes fall out of the scan's safety margin (1 s).
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let m = Mounted::new(&d);
    m.umount();
    // Nothing mounted: change the backing directory directly.
    write_at(&d.join("a"), 0, b"out of band");
    fs::remove_file(d.join("sub/c")).unwrap();
    fs::write(d.join("new"), b"new file").unwrap();
    let m = Mounted::new(&d);
    let st = wait_scan(&m.dir);
    let paths = dirty_paths(&st);
    for p in ["a", "new", "sub"] {
        assert!(paths.contains(&p.to_string()), "{p} not dirty: {paths:?}");
    }
    assert_eq!(changes(&st, "a").unwrap()[0], "full");
    assert_eq!(ranges(&st, "a").unwrap(), vec![(0, 4)]);
    // and nothing else
    assert!(!paths.contains(&"keep".to_string()) && !paths.contains(&"b".to_string()), "{paths:?}");
    m.umount();
}
