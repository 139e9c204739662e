//! Snapshots show what stat showed (issue 11): holes and `st_blocks` in
//! `.snapshots` and browse mounts (`lseek`, `cp`, `tar -S`, `du`), inode
//! identity by (device, inode) across filesystems mounted inside the
//! protected directory, damaged records shown instead of vanishing; and
//! hostile repositories (issue 10, item 6) that must not take a browse
//! mount down.

mod common;

use std::ffi::CString;
use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use snapfs::repo::objects::{Entry, EntryKind, FileNode, ObjKind, ObjectId, SnapshotId, Time, Totals, Tree};
use snapfs::repo::objstore::Objects;
use snapfs::repo::store::{LocalStore, Store};
use snapfs::snapshot::{self, SnapshotRecord, SnapshotStats};

const BS: u64 = 65536;

fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// `lseek(fd, off, whence)`, or the errno.
fn seek(p: &Path, off: i64, whence: i32) -> Result<i64, i32> {
    let f = fs::File::open(p).unwrap();
    let r = unsafe { libc::lseek(f.as_raw_fd(), off, whence) };
    if r < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap())
    } else {
        Ok(r)
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn read_at(p: &Path, off: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut v = vec![0u8; len];
    fs::File::open(p).unwrap().read_exact_at(&mut v, off).unwrap();
    v
}

/// Bytes a file takes on disk (`du`).
fn allocated(p: &Path) -> u64 {
    fs::metadata(p).unwrap().blocks() * 512
}

/// Two files hold the same bytes (`cmp`: quick on local sparse files).
fn same_bytes(a: &Path, b: &Path) {
    run(Command::new("cmp").arg(a).arg(b));
}

/// A mount of `raw` at `mnt` (backing mode: the repository stays at
/// `raw/.snapfs`).
struct Setup {
    t: tempfile::TempDir,
    raw: PathBuf,
    m: Option<Mounted>,
}

fn setup() -> Setup {
    let t = tempfile::tempdir().unwrap();
    let raw = t.path().join("raw");
    let mnt = t.path().join("mnt");
    fs::create_dir(&raw).unwrap();
    fs::create_dir(&mnt).unwrap();
    let m = Mounted::with(&mnt, MountOpts { backing: Some(raw.clone()), ..Default::default() });
    Setup { t, raw, m: Some(m) }
}

impl Setup {
    fn mnt(&self) -> &Path {
        &self.m.as_ref().unwrap().dir
    }
    fn repo(&self) -> PathBuf {
        self.raw.join(".snapfs")
    }
    fn umount(&mut self) {
        self.m.take().unwrap().umount();
    }
}

/// A browse mount of `repo` at `mnt`, unmounted when dropped.
fn browse(repo: &Path, mnt: &Path) -> BrowseGuard {
    fs::create_dir_all(mnt).unwrap();
    let out = snapfs(&["browse", "--repo", repo.to_str().unwrap(), mnt.to_str().unwrap()]);
    assert!(out.status.success(), "browse: {}", String::from_utf8_lossy(&out.stderr));
    BrowseGuard(mnt.to_path_buf())
}

/// `truncate -s 1G f; dd 64 KiB of random at block 100 conv=notrunc`.
fn sparse_1g(p: &Path) -> Vec<u8> {
    run(Command::new("truncate").args(["-s", "1G"]).arg(p));
    let data = noise(11, 65536);
    write_at(p, 100 * 65536, &data);
    data
}

/// What a file in a snapshot folder must show, against the live file.
fn check_sparse(live: &Path, snap: &Path, scratch: &Path) {
    let (l, s) = (fs::metadata(live).unwrap(), fs::metadata(snap).unwrap());
    assert_eq!(s.len(), l.len());
    assert_eq!(s.blocks(), l.blocks(), "st_blocks of {} is not what stat showed", snap.display());
    assert!(s.blocks() <= 1024, "{} blocks reported for 64 KiB of data", s.blocks());
    // holes where the live file has them
    let d = 100 * 65536;
    assert_eq!(seek(snap, 0, libc::SEEK_DATA), Ok(d));
    assert_eq!(seek(snap, 0, libc::SEEK_HOLE), Ok(0));
    assert_eq!(seek(snap, d + 5, libc::SEEK_DATA), Ok(d + 5));
    assert_eq!(seek(snap, d, libc::SEEK_HOLE), Ok(d + 65536));
    assert_eq!(seek(snap, d + 65536, libc::SEEK_DATA), Err(libc::ENXIO));
    assert_eq!(seek(snap, (1 << 30) - 1, libc::SEEK_HOLE), Ok((1 << 30) - 1));
    assert_eq!(seek(snap, 1 << 30, libc::SEEK_DATA), Err(libc::ENXIO));
    // cp (default: --sparse=auto, as given explicitly too), tar -S
    fs::create_dir_all(scratch).unwrap();
    for (i, args) in [vec![], vec!["--sparse=auto"]].into_iter().enumerate() {
        let out = scratch.join(format!("cp{i}"));
        run(Command::new("cp").args(&args).arg(snap).arg(&out));
        same_bytes(live, &out);
        assert!(
            allocated(&out) <= 256 << 10,
            "cp {args:?} out of {}: {} bytes on disk",
            snap.display(),
            allocated(&out)
        );
    }
    let tar = scratch.join("t.tar");
    run(Command::new("tar")
        .arg("-S")
        .arg("-cf")
        .arg(&tar)
        .arg("-C")
        .arg(snap.parent().unwrap())
        .arg(snap.file_name().unwrap()));
    assert!(
        fs::metadata(&tar).unwrap().len() < 1 << 20,
        "tar -S kept no holes: {} bytes",
        fs::metadata(&tar).unwrap().len()
    );
    let x = scratch.join("x");
    fs::create_dir_all(&x).unwrap();
    run(Command::new("tar").arg("-xSf").arg(&tar).arg("-C").arg(&x));
    let got = x.join(snap.file_name().unwrap());
    same_bytes(live, &got);
    assert!(allocated(&got) <= 256 << 10, "tar -S round trip: {} bytes on disk", allocated(&got));
}

#[test]
fn sparse_files_keep_their_holes_in_snapshots_and_browse_mounts() {
    let mut s = setup();
    let f = s.mnt().join("sparse.img");
    let data = sparse_1g(&f);
    // a 1 TiB file with 1 MiB of data in the middle
    let big = s.mnt().join("big.img");
    run(Command::new("truncate").args(["-s", "1T"]).arg(&big));
    write_at(&big, 1 << 39, &noise(12, 1 << 20));
    fs::write(s.mnt().join("small"), b"x").unwrap();
    snap(s.mnt(), "a");
    let snapf = s.mnt().join(".snapshots/a/sparse.img");
    assert_eq!(read_at(&snapf, 100 * 65536, 65536), data);
    assert_eq!(read_at(&snapf, 99 * 65536, 65536), vec![0; 65536]);
    check_sparse(&s.raw.join("sparse.img"), &snapf, &s.t.path().join("out1"));
    assert_eq!(
        fs::metadata(s.mnt().join(".snapshots/a/sparse.img")).unwrap().blocks(),
        fs::metadata(&f).unwrap().blocks(),
        "stat -c %b in .snapshots equals the live one"
    );
    assert_eq!(
        fs::metadata(s.mnt().join(".snapshots/a/small")).unwrap().blocks(),
        fs::metadata(s.raw.join("small")).unwrap().blocks()
    );

    // the 1 TiB file copies out in well under a second and stays sparse
    let snapbig = s.mnt().join(".snapshots/a/big.img");
    assert_eq!(seek(&snapbig, 0, libc::SEEK_DATA), Ok(1 << 39));
    let out = s.t.path().join("big.out");
    let t0 = Instant::now();
    run(Command::new("cp").arg(&snapbig).arg(&out));
    let took = t0.elapsed();
    eprintln!(
        "cp of a 1 TiB sparse file with 1 MiB of data out of .snapshots: {took:?}, {} bytes on disk",
        allocated(&out)
    );
    assert!(took < Duration::from_secs(3), "cp of a 1 TiB sparse file took {took:?}");
    assert_eq!(fs::metadata(&out).unwrap().len(), 1 << 40);
    assert!(allocated(&out) <= 2 << 20, "{} bytes on disk", allocated(&out));
    assert_eq!(seek(&out, 0, libc::SEEK_DATA), Ok(1 << 39), "cp kept the hole before the data");
    assert_eq!(read_at(&out, 1 << 39, 1 << 20), noise(12, 1 << 20));
    fs::remove_file(&out).unwrap();

    // and on a browse mount
    s.umount();
    let bm = s.t.path().join("browse");
    let _g = browse(&s.repo(), &bm);
    check_sparse(&s.raw.join("sparse.img"), &bm.join("a/sparse.img"), &s.t.path().join("out2"));
}

// --- (device, inode)

/// A tmpfs mounted at a directory, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn new(p: &Path) -> Tmpfs {
        fs::create_dir_all(p).unwrap();
        run(Command::new("mount").args(["-t", "tmpfs", "-o", "size=64m", "tmpfs"]).arg(p));
        Tmpfs(p.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let p = c(&self.0);
        if unsafe { libc::umount2(p.as_ptr(), 0) } != 0 {
            unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

#[test]
fn filesystems_inside_with_colliding_inode_numbers_keep_their_files_and_links() {
    let t = tempfile::tempdir().unwrap();
    let raw = t.path().join("raw");
    let mnt = t.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    // three fresh tmpfs: their inode numbers start alike
    let _outer = Tmpfs::new(&raw);
    let _a = Tmpfs::new(&raw.join("a"));
    let _b = Tmpfs::new(&raw.join("b"));
    for (d, what) in [("a", "AAAA"), ("b", "BBBB")] {
        fs::write(raw.join(d).join("x"), what).unwrap();
        fs::hard_link(raw.join(d).join("x"), raw.join(d).join("y")).unwrap();
        fs::write(raw.join(d).join("other"), format!("{what} other")).unwrap();
    }
    let (ax, bx) = (fs::metadata(raw.join("a/x")).unwrap(), fs::metadata(raw.join("b/x")).unwrap());
    assert_eq!(ax.ino(), bx.ino(), "the test needs colliding inode numbers");
    assert_ne!(ax.dev(), bx.dev());
    // and an outer file with the same number, if the outer tmpfs gives one
    let mut k = 0;
    while fs::metadata(raw.join(format!("o{k}"))).map(|m| m.ino()).unwrap_or(0) != ax.ino() && k < 64 {
        k += 1;
        fs::write(raw.join(format!("o{k}")), format!("outer {k}")).unwrap();
    }

    let m = Mounted::with(&mnt, MountOpts { backing: Some(raw.clone()), ..Default::default() });
    snap(&m.dir, "s1");
    let s = m.dir.join(".snapshots/s1");
    assert_eq!(fs::read(s.join("a/x")).unwrap(), b"AAAA");
    assert_eq!(fs::read(s.join("b/x")).unwrap(), b"BBBB");
    assert_eq!(fs::read(s.join("b/y")).unwrap(), b"BBBB");
    let ino = |p: &str| fs::metadata(s.join(p)).unwrap().ino();
    assert_eq!(ino("a/x"), ino("a/y"));
    assert_eq!(ino("b/x"), ino("b/y"));
    assert_ne!(ino("a/x"), ino("b/x"), "two filesystems' inodes share a node in .snapshots");
    if k > 0 && fs::metadata(raw.join(format!("o{k}"))).unwrap().ino() == ax.ino() {
        assert_ne!(ino(&format!("o{k}")), ino("a/x"));
        assert_eq!(fs::read(s.join(format!("o{k}"))).unwrap(), format!("outer {k}").as_bytes());
    }
    // cp -a out of the snapshot keeps each group apart
    let cpa = t.path().join("cpa");
    run(Command::new("cp").arg("-a").arg(s.join(".")).arg(&cpa));
    assert_eq!(fs::read(cpa.join("b/y")).unwrap(), b"BBBB");
    m.umount();

    // restore: the links of each filesystem are intact and apart
    let out = t.path().join("out");
    run_ok(&["restore", "--repo", raw.join(".snapfs").to_str().unwrap(), "s1", out.to_str().unwrap()]);
    for (d, what) in [("a", "AAAA"), ("b", "BBBB")] {
        assert_eq!(fs::read(out.join(d).join("x")).unwrap(), what.as_bytes());
        assert_eq!(fs::read(out.join(d).join("y")).unwrap(), what.as_bytes());
        let (x, y) = (fs::metadata(out.join(d).join("x")).unwrap(), fs::metadata(out.join(d).join("y")).unwrap());
        assert_eq!((x.ino(), x.nlink()), (y.ino(), 2), "{d}/x and {d}/y are one file again");
    }
    assert_ne!(fs::metadata(out.join("a/x")).unwrap().ino(), fs::metadata(out.join("b/x")).unwrap().ino());

    // and on a browse mount
    let bm = t.path().join("browse");
    let _g = browse(&raw.join(".snapfs"), &bm);
    assert_eq!(fs::read(bm.join("s1/b/x")).unwrap(), b"BBBB");
    assert_ne!(fs::metadata(bm.join("s1/a/x")).unwrap().ino(), fs::metadata(bm.join("s1/b/x")).unwrap().ino());
}

// --- damaged records

/// Store `bytes` as a record under its own hash; returns the id.
fn put_record(repo: &Path, bytes: &[u8]) -> String {
    let id = ObjectId::of(bytes).hex();
    fs::write(repo.join("snapshots").join(&id), bytes).unwrap();
    id
}

#[test]
fn damaged_records_are_shown_named_and_give_eio() {
    let mut s = setup();
    fs::write(s.mnt().join("f"), b"data").unwrap();
    snap(s.mnt(), "good");
    snap(s.mnt(), "flipped");
    let repo = s.repo();
    let store = LocalStore::new(&repo);
    let all = snapshot::list(&store).unwrap();
    let flipped = all.iter().find(|x| x.record.name == "flipped").unwrap().id.to_string();
    // 1. a flipped byte: no longer matches its name
    let p = repo.join("snapshots").join(&flipped);
    let mut b = fs::read(&p).unwrap();
    let at = b.len() / 2;
    b[at] ^= 0x01;
    fs::write(&p, &b).unwrap();
    // 2. not JSON, though named by its hash
    let garbage = put_record(&repo, b"{ not json");
    // 3. a block size of 2^50, under its hash, named "huge"
    let mut rec = all[0].record.clone();
    rec.name = "huge".into();
    rec.block_size = 1 << 50;
    let huge = put_record(&repo, &serde_json::to_vec_pretty(&rec).unwrap());

    // list, through the daemon and offline
    let dir = s.mnt().to_str().unwrap().to_string();
    let out = run_ok(&["list", &dir]);
    for id in [&flipped, &garbage, &huge] {
        assert!(
            out.lines().any(|l| l.contains("DAMAGED") && l.contains(id.as_str())),
            "list does not name {id}:\n{out}"
        );
    }
    assert!(out.lines().any(|l| l.starts_with("good ")), "{out}");
    let (ok, v) = json_of(&["list", "--json", &dir]);
    assert!(ok);
    let arr = v.as_array().unwrap();
    assert_eq!(arr.len(), 4);
    for id in [&flipped, &garbage, &huge] {
        let e = arr.iter().find(|e| e["id"] == id.as_str()).unwrap_or_else(|| panic!("{id} not in --json"));
        assert!(e["damaged"].is_string(), "{e}");
    }
    assert!(arr.iter().find(|e| e["name"] == "good").unwrap().get("damaged").is_none());

    // .snapshots: the damaged ones exist, and give EIO on access
    let folder = s.mnt().join(".snapshots");
    let mut names: Vec<String> =
        fs::read_dir(&folder).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    let mut want = vec!["good".to_string(), "flipped".into(), "huge".into(), garbage.clone()];
    want.sort();
    assert_eq!(names, want);
    for n in ["flipped", "huge", garbage.as_str()] {
        let p = folder.join(n);
        assert!(fs::metadata(&p).unwrap().is_dir(), "{n} exists");
        let err = fs::read_dir(&p).and_then(|mut d| d.next().transpose()).expect_err("reading a damaged snapshot");
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{n}: {err}");
        assert_eq!(fs::metadata(p.join("f")).unwrap_err().raw_os_error(), Some(libc::EIO));
    }
    assert_eq!(fs::read(folder.join("good/f")).unwrap(), b"data");

    // verify names each
    let (ok, v) = json_of(&["verify", "--json", &dir]);
    assert!(!ok, "verify must fail");
    let damaged: Vec<&str> =
        v["damaged_records"].as_array().unwrap().iter().map(|d| d["name"].as_str().unwrap()).collect();
    for id in [&flipped, &garbage, &huge] {
        assert!(damaged.contains(&id.as_str()), "verify does not name {id}: {v}");
    }
    s.umount();

    // restore refuses the 2^50 record with a message (no abort)
    let target = s.t.path().join("restored");
    let out = snapfs(&["restore", "--repo", repo.to_str().unwrap(), &huge, target.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "restore: {}", String::from_utf8_lossy(&out.stderr));
    // (and restore given such a record directly refuses it too)
    let objects = Objects::open(Arc::new(LocalStore::new(&repo)), None).unwrap();
    let opts = snapfs::ops::restore::RestoreOptions { jobs: 1, overwrite: false, progress: None };
    let info = snapshot::SnapshotInfo { id: SnapshotId::parse(&huge).unwrap(), record: rec, damaged: None };
    let err = snapfs::ops::restore::restore(&objects, &info, "", &target, &opts).unwrap_err();
    assert!(format!("{err:#}").contains("block size"), "{err:#}");
    // forget removes a damaged record by its id; prune refuses while one is there
    let out = snapfs(&["prune", "--repo", repo.to_str().unwrap()]);
    assert!(!out.status.success(), "prune with damaged records must stop");
    for id in [&flipped, &garbage, &huge] {
        run_ok(&["forget", "--repo", repo.to_str().unwrap(), id]);
    }
    assert_eq!(snapshot::list_all(&store).unwrap().len(), 1);
}

// --- hostile repositories

fn file_entry(name: &str, size: u64, content: ObjectId, levels: u8) -> Entry {
    let t = Time { sec: 1_700_000_000, nsec: 0 };
    Entry {
        name: name.as_bytes().to_vec(),
        kind: EntryKind::File,
        mode: 0o644,
        uid: 0,
        gid: 0,
        size,
        mtime: t,
        atime: t,
        ctime: t,
        ino: 10 + name.len() as u64,
        dev: Some(1),
        nlink: 1,
        rdev: 0,
        blocks: None,
        content,
        levels,
        target: Vec::new(),
        xattrs: Vec::new(),
        totals: Totals::default(),
    }
}

/// A repository made by hand with one snapshot `evil`: `good` (one
/// block), `levels7` (an entry claiming 7 levels: the tree holding it is
/// rejected at decode, so it lives in its own directory `bad/`), and
/// `node7` (a block list whose root is a node of level 7).
fn crafted_repository(repo: &Path) {
    run(Command::new(bin()).args(["init", "--encryption", "none"]).arg(repo));
    let store: Arc<dyn Store> = Arc::new(LocalStore::new(repo));
    let o = Objects::open(store.clone(), None).unwrap();
    let (blob, _) = o.put(ObjKind::Blob, b"hello").unwrap();
    let (leaf, _) = o.put(ObjKind::FileNode, &FileNode { level: 0, entries: vec![blob] }.encode()).unwrap();
    let (node7, _) = o.put(ObjKind::FileNode, &FileNode { level: 7, entries: vec![leaf] }.encode()).unwrap();
    let bad = Tree { entries: vec![file_entry("levels7", 5 << 40, leaf, 7)] };
    let (bad_id, _) = o.put(ObjKind::Tree, &bad.encode()).unwrap();
    let mut bad_dir = file_entry("bad", 0, bad_id, 0);
    bad_dir.kind = EntryKind::Dir;
    bad_dir.mode = 0o755;
    bad_dir.totals = Totals { files: 1, dirs: 0, others: 0, bytes: 5 << 40 };
    let mut entries = vec![bad_dir, file_entry("good", 5, leaf, 0), file_entry("node7", 5, node7, 0)];
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    let (dir, _) = o.put(ObjKind::Tree, &Tree { entries }.encode()).unwrap();
    let mut root = file_entry(".", 0, dir, 0);
    root.kind = EntryKind::Dir;
    root.mode = 0o755;
    root.totals = Totals { files: 3, dirs: 1, others: 0, bytes: 10 + (5 << 40) };
    let (top, _) = o.put_tree(&Tree { entries: vec![root] }).unwrap();
    let (links, _) = o.put(ObjKind::Meta, &snapshot::encode_links(&Default::default())).unwrap();
    o.flush().unwrap();
    let record = SnapshotRecord {
        format: snapshot::RECORD_FORMAT,
        name: "evil".into(),
        time: "2026-01-01T00:00:00Z".into(),
        time_sec: 1_767_225_600,
        time_nsec: 0,
        tree: top,
        links,
        parent: None,
        full: true,
        source: "crafted".into(),
        host: "test".into(),
        block_size: BS,
        stats: SnapshotStats { files: 3, dirs: 2, logical_bytes: 10 + (5 << 40), ..Default::default() },
    };
    snapshot::commit(&*store, &record).unwrap();
}

#[test]
fn a_crafted_repository_gets_errors_not_a_dead_browse_mount() {
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("repo");
    crafted_repository(&repo);
    let bm = t.path().join("browse");
    let _g = browse(&repo, &bm);
    let s = bm.join("evil");
    assert_eq!(fs::read(s.join("good")).unwrap(), b"hello");
    assert_eq!(fs::read(s.join("node7")).unwrap_err().raw_os_error(), Some(libc::EIO));
    assert_eq!(seek(&s.join("node7"), 0, libc::SEEK_DATA), Err(libc::EIO));
    assert_eq!(
        fs::read_dir(s.join("bad")).and_then(|mut d| d.next().transpose()).unwrap_err().raw_os_error(),
        Some(libc::EIO)
    );
    // the mount is still there and serving
    assert!(is_mounted(&bm));
    assert_eq!(fs::read(s.join("good")).unwrap(), b"hello");
    drop(_g);

    // verify says what decode rejects
    let (ok, v) = json_of(&["verify", "--json", "--repo", repo.to_str().unwrap()]);
    assert!(!ok);
    let problems: Vec<String> =
        v["damaged_objects"].as_array().unwrap().iter().map(|d| d["problem"].to_string()).collect();
    assert!(problems.len() >= 2, "{v}");
    // restore stops with an error, not a panic or an abort
    let out = snapfs(&["restore", "--repo", repo.to_str().unwrap(), "evil", t.path().join("out").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_small_shared_subtree_cannot_expand_past_what_the_snapshot_records() {
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("repo");
    run(Command::new(bin()).args(["init", "--encryption", "none"]).arg(&repo));
    let store: Arc<dyn Store> = Arc::new(LocalStore::new(&repo));
    let o = Objects::open(store.clone(), None).unwrap();
    let (blob, _) = o.put(ObjKind::Blob, b"x").unwrap();
    let (leaf, _) = o.put(ObjKind::FileNode, &FileNode { level: 0, entries: vec![blob] }.encode()).unwrap();
    // one directory of 20 files, referenced 20 times: 400 files, 20 claimed
    let files: Vec<Entry> = (0..20).map(|i| file_entry(&format!("f{i:02}"), 1, leaf, 0)).collect();
    let (shared, _) = o.put(ObjKind::Tree, &Tree { entries: files }.encode()).unwrap();
    let dirs: Vec<Entry> = (0..20)
        .map(|i| {
            let mut d = file_entry(&format!("d{i:02}"), 0, shared, 0);
            d.kind = EntryKind::Dir;
            d.mode = 0o755;
            d.totals = Totals { files: 1, dirs: 0, others: 0, bytes: 1 };
            d
        })
        .collect();
    let (mid, _) = o.put(ObjKind::Tree, &Tree { entries: dirs }.encode()).unwrap();
    let mut root = file_entry(".", 0, mid, 0);
    root.kind = EntryKind::Dir;
    root.mode = 0o755;
    root.totals = Totals { files: 20, dirs: 20, others: 0, bytes: 20 };
    let (top, _) = o.put_tree(&Tree { entries: vec![root] }).unwrap();
    let (links, _) = o.put(ObjKind::Meta, &snapshot::encode_links(&Default::default())).unwrap();
    o.flush().unwrap();
    let record = SnapshotRecord {
        format: snapshot::RECORD_FORMAT,
        name: "bomb".into(),
        time: "2026-01-01T00:00:00Z".into(),
        time_sec: 1_767_225_600,
        time_nsec: 0,
        tree: top,
        links,
        parent: None,
        full: true,
        source: "crafted".into(),
        host: "test".into(),
        block_size: BS,
        stats: SnapshotStats { files: 20, dirs: 21, logical_bytes: 20, ..Default::default() },
    };
    snapshot::commit(&*store, &record).unwrap();
    let out_dir = t.path().join("out");
    let out = snapfs(&["restore", "--repo", repo.to_str().unwrap(), "bomb", out_dir.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("refusing to expand"), "{err}");
    let made = walk(&out_dir);
    assert!(made <= 41, "restore made {made} entries of a snapshot recording 40");
    // verify says the directories' totals are false
    let (ok, v) = json_of(&["verify", "--json", "--repo", repo.to_str().unwrap()]);
    assert!(!ok);
    assert!(v.to_string().contains("claims 1 files"), "{v}");
}

fn walk(d: &Path) -> usize {
    let Ok(rd) = fs::read_dir(d) else { return 0 };
    rd.map(|e| {
        let e = e.unwrap();
        1 + if e.file_type().unwrap().is_dir() { walk(&e.path()) } else { 0 }
    })
    .sum()
}
