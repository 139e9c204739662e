//! Property test against a model: random file operations through a real
//! mount, interleaved with snapshots; every snapshot, read back from the
//! repository, equals the model's state at that point.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use common::*;
use proptest::prelude::*;
use snapfs::repo::objects::EntryKind;
use snapfs::repo::objstore::Objects;
use snapfs::repo::store::{LocalStore, Store};
use snapfs::snapshot;

const BS: u64 = 65536;
const PATHS: [&str; 10] = ["f0", "f1", "f2", "f3", "d1/f0", "d1/f1", "d1/f2", "d2/f0", "d2/f1", "d2/deep/f0"];

#[derive(Debug, Clone)]
enum Op {
    Write { p: usize, off: u64, len: usize, seed: u8 },
    Truncate { p: usize, size: u64 },
    Remove { p: usize },
    Rename { from: usize, to: usize },
    Link { from: usize, to: usize },
    Snapshot { full: bool },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..PATHS.len(), 0u64..(5 * BS), 1usize..(BS as usize + 5000), any::<u8>())
            .prop_map(|(p, off, len, seed)| Op::Write { p, off, len, seed }),
        2 => (0..PATHS.len(), 0u64..(6 * BS)).prop_map(|(p, size)| Op::Truncate { p, size }),
        1 => (0..PATHS.len()).prop_map(|p| Op::Remove { p }),
        2 => (0..PATHS.len(), 0..PATHS.len()).prop_map(|(from, to)| Op::Rename { from, to }),
        1 => (0..PATHS.len(), 0..PATHS.len()).prop_map(|(from, to)| Op::Link { from, to }),
        2 => Just(Op::Snapshot { full: false }),
        1 => Just(Op::Snapshot { full: true }),
    ]
}

/// Regular files (path -> content).
type Files = BTreeMap<String, Vec<u8>>;

/// Paths to inode numbers, inodes to contents: hard links share an inode.
#[derive(Default, Clone, Debug)]
struct Model {
    paths: BTreeMap<String, u32>,
    inodes: BTreeMap<u32, Vec<u8>>,
    next: u32,
}

impl Model {
    fn content(&self, p: &str) -> Option<&Vec<u8>> {
        self.paths.get(p).map(|i| &self.inodes[i])
    }
    fn view(&self) -> BTreeMap<String, Vec<u8>> {
        self.paths.iter().map(|(p, i)| (p.clone(), self.inodes[i].clone())).collect()
    }
    fn gc(&mut self) {
        let live: std::collections::HashSet<u32> = self.paths.values().copied().collect();
        self.inodes.retain(|i, _| live.contains(i));
    }
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| seed.wrapping_add((i / 4096) as u8).wrapping_mul(31).wrapping_add(1)).collect()
}

/// mtimes (seconds, nanoseconds) of regular files.
type Times = BTreeMap<String, (i64, i64)>;

/// Every regular file of a snapshot with its content, and their mtimes.
fn read_back(repo: &str, id: &str) -> (BTreeMap<String, Vec<u8>>, Times) {
    let store: Arc<dyn Store> = match snapfs::repo::s3::S3Location::parse(repo) {
        Ok(loc) => Arc::new(snapfs::repo::s3::S3Store::from_env(loc).unwrap()),
        Err(_) => Arc::new(LocalStore::new(Path::new(repo))),
    };
    // an encrypted repository is read with its keys (the passphrase the test gave)
    let store = match std::env::var("SNAPFS_PASSWORD") {
        Ok(p) => {
            let mut r = snapfs::repo::Repo::open_at(&snapfs::repo::Location::parse(repo).unwrap(), None).unwrap();
            assert!(r.is_encrypted(), "the repository was made encrypted");
            let src = snapfs::repo::keyslot::KeySource::Passphrase(p.into_bytes().into());
            r.unlock(&src).unwrap();
            r.store()
        }
        Err(_) => store,
    };
    let objects = Objects::open(store.clone(), None).unwrap();
    let all = snapshot::list(&*store).unwrap();
    let s = snapshot::find(&all, id).unwrap();
    let root = snapshot::root_entry(&objects, s.root_tree().unwrap()).unwrap();
    let mut out = BTreeMap::new();
    let mut times = Times::new();
    let mut stack = vec![(root, String::new())];
    while let Some((dir, rel)) = stack.pop() {
        for e in objects.dir_tree(&dir).unwrap().entries {
            let name = String::from_utf8_lossy(&e.name).into_owned();
            let r = if rel.is_empty() { name } else { format!("{rel}/{name}") };
            match e.kind {
                EntryKind::Dir => stack.push((e.clone(), r)),
                EntryKind::File => {
                    times.insert(r.clone(), (e.mtime.sec, e.mtime.nsec as i64));
                    out.insert(r, snapshot::read_file(&objects, &e, BS).unwrap());
                }
                _ => {}
            }
        }
    }
    (out, times)
}

/// What `stat` shows of the files of `files` under `dir`.
fn live_times(dir: &Path, files: &Files) -> Times {
    use std::os::unix::fs::MetadataExt;
    files
        .keys()
        .map(|k| {
            let m = fs::metadata(dir.join(k)).unwrap();
            (k.clone(), (m.mtime(), m.mtime_nsec()))
        })
        .collect()
}

fn assert_times(want: &Times, got: &Times, what: &str) {
    let bad: Vec<_> = want.iter().filter(|(k, v)| got.get(*k) != Some(v)).map(|(k, v)| (k, v, got.get(k))).collect();
    assert!(bad.is_empty(), "{what}: mtimes differ from what stat showed: {bad:?}");
}

/// Allocation of regular files: `st_blocks`, and for each block of `BS`
/// whether `SEEK_DATA` finds data in it.
type Alloc = BTreeMap<String, (u64, Vec<bool>)>;

fn alloc_of(dir: &Path, files: &Files) -> Alloc {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    files
        .keys()
        .map(|k| {
            let f = fs::File::open(dir.join(k)).unwrap();
            let m = f.metadata().unwrap();
            let blocks = m.size().div_ceil(BS);
            let map = (0..blocks)
                .map(|b| {
                    // SAFETY: our descriptor; lseek takes no pointers.
                    let d = unsafe { libc::lseek(f.as_raw_fd(), (b * BS) as i64, libc::SEEK_DATA) };
                    d >= 0 && (d as u64) < (b + 1) * BS
                })
                .collect();
            (k.clone(), (m.blocks(), map))
        })
        .collect()
}

/// `got` holds what the live files held at the snapshot: a hole where they
/// had one, data where they had non-zero data (an all-zero block may be
/// either: snapshots store it as a hole); with `blocks`, the same st_blocks.
fn assert_alloc(want: &Alloc, files: &Files, got: &Alloc, blocks: bool, what: &str) {
    for (k, (wb, wmap)) in want {
        let (gb, gmap) = &got[k];
        if blocks {
            assert_eq!(wb, gb, "{what}: {k}: st_blocks {gb}, but stat showed {wb}");
        }
        assert_eq!(wmap.len(), gmap.len(), "{what}: {k}: blocks");
        let data = &files[k];
        for (b, (w, g)) in wmap.iter().zip(gmap).enumerate() {
            let zero = data[b * BS as usize..((b + 1) * BS as usize).min(data.len())].iter().all(|&x| x == 0);
            assert!(*w || !*g, "{what}: {k}: block {b} is data, but the file had a hole there");
            assert!(!*w || *g || zero, "{what}: {k}: block {b} is a hole, but the file had data there");
        }
    }
}

fn run(ops: &[Op]) {
    run_on(ops, None)
}

/// Run `ops` with the repository in the backing directory, or at `s3`;
/// encrypted when the test sets SNAPFS_PASSWORD (every snapfs it runs
/// then has the key: a new default repository is made encrypted with it).
fn run_on(ops: &[Op], s3: Option<String>) {
    let t = tempfile::tempdir().unwrap();
    let raw = t.path().join("raw");
    let mnt = t.path().join("mnt");
    for d in ["d1", "d2/deep"] {
        fs::create_dir_all(raw.join(d)).unwrap();
    }
    fs::create_dir(&mnt).unwrap();
    let repo = match &s3 {
        Some(url) => {
            match std::env::var_os("SNAPFS_PASSWORD") {
                Some(_) => run_ok(&["init", "--kdf-memory", "8", "--kdf-iterations", "1", url]),
                None => run_ok(&["init", "--encryption", "none", url]),
            };
            url.clone()
        }
        None => raw.join(".snapfs").to_str().unwrap().to_string(),
    };
    let m = Mounted::with(
        &mnt,
        MountOpts { backing: Some(raw.clone()), repo: s3.as_ref().map(Into::into), ..Default::default() },
    );
    // A writer runs all along, outside the model's files: every snapshot
    // must show one of the values it wrote (8 bytes in one page: with the
    // kernel's writeback cache a longer write may reach the daemon in parts).
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, path) = (stop.clone(), mnt.join("d1/busy"));
        std::thread::spawn(move || {
            let f = fs::OpenOptions::new().write(true).create(true).truncate(false).open(&path).unwrap();
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                f.write_all_at(&n.to_le_bytes(), 0).unwrap();
            }
            n
        })
    };
    let mut model = Model::default();
    let mut snaps = 0;
    // (snapshot name, the model at that point) for the restores at the end
    let taken: std::cell::RefCell<Vec<(String, Files, Times, Alloc)>> = Default::default();
    let check = |model: &Model, full: bool, snaps: &mut usize| {
        if *snaps > 0 {
            // the dirty set explains every change since the last snapshot,
            // with the writer going on
            let out = snapfs(&["verify", "--live", "--json", mnt.to_str().unwrap()]);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            assert!(
                out.status.success() && v["ok"] == true,
                "verify --live after snapshot {snaps}: {v}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut args = vec!["snapshot", "--json"];
        if full {
            args.push("--full");
        }
        args.push(mnt.to_str().unwrap());
        let out = snapfs(&args);
        assert!(out.status.success(), "snapshot: {}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let (mut got, got_times) = read_back(&repo, v["id"].as_str().unwrap());
        if let Some(busy) = got.remove("d1/busy") {
            // empty (not yet written) or one counter value
            assert!(busy.is_empty() || busy.len() == 8, "busy file of {} bytes in snapshot {snaps}", busy.len());
        }
        let want = model.view();
        // the snapshot's mtimes are what stat shows through the mount at its
        // instant (nothing but the busy writer writes until the next op)
        let want_times = live_times(&mnt, &want);
        assert_times(&want_times, &got_times, &format!("snapshot {snaps}"));
        let name = v["name"].as_str().unwrap().to_string();
        assert_times(
            &want_times,
            &live_times(&mnt.join(".snapshots").join(&name), &want),
            &format!(".snapshots/{name}"),
        );
        let want_alloc = alloc_of(&mnt, &want);
        assert_alloc(&want_alloc, &want, &alloc_of(&mnt.join(".snapshots").join(&name), &want), true, &name);
        taken.borrow_mut().push((name, want.clone(), want_times, want_alloc));
        if got != want {
            let short = |m: &BTreeMap<String, Vec<u8>>| -> Vec<(String, usize)> {
                m.iter().map(|(k, v)| (k.clone(), v.len())).collect()
            };
            let differing: Vec<&String> = want.keys().filter(|k| got.get(*k) != want.get(*k)).collect();
            panic!(
                "snapshot {} differs from the model\n want {:?}\n  got {:?}\n differing {:?}",
                snaps,
                short(&want),
                short(&got),
                differing
            );
        }
        *snaps += 1;
    };
    for op in ops {
        match op.clone() {
            Op::Write { p, off, len, seed } => {
                let path = PATHS[p];
                let bytes = data(len, seed);
                let f = fs::OpenOptions::new().write(true).create(true).truncate(false).open(mnt.join(path)).unwrap();
                f.write_all_at(&bytes, off).unwrap();
                let ino = match model.paths.get(path) {
                    Some(i) => *i,
                    None => {
                        model.next += 1;
                        model.paths.insert(path.into(), model.next);
                        model.inodes.insert(model.next, Vec::new());
                        model.next
                    }
                };
                let c = model.inodes.get_mut(&ino).unwrap();
                let end = off as usize + len;
                if c.len() < end {
                    c.resize(end, 0);
                }
                c[off as usize..end].copy_from_slice(&bytes);
            }
            Op::Truncate { p, size } => {
                let path = PATHS[p];
                if model.content(path).is_some() {
                    fs::OpenOptions::new().write(true).open(mnt.join(path)).unwrap().set_len(size).unwrap();
                    let ino = model.paths[path];
                    model.inodes.get_mut(&ino).unwrap().resize(size as usize, 0);
                }
            }
            Op::Remove { p } => {
                let path = PATHS[p];
                if model.paths.remove(path).is_some() {
                    fs::remove_file(mnt.join(path)).unwrap();
                    model.gc();
                }
            }
            Op::Rename { from, to } => {
                let (a, b) = (PATHS[from], PATHS[to]);
                if a != b && model.paths.contains_key(a) {
                    let same = model.paths.get(a) == model.paths.get(b);
                    fs::rename(mnt.join(a), mnt.join(b)).unwrap();
                    if !same {
                        let i = model.paths.remove(a).unwrap();
                        model.paths.insert(b.into(), i);
                        model.gc();
                    }
                }
            }
            Op::Link { from, to } => {
                let (a, b) = (PATHS[from], PATHS[to]);
                if model.paths.contains_key(a) && !model.paths.contains_key(b) {
                    fs::hard_link(mnt.join(a), mnt.join(b)).unwrap();
                    let i = model.paths[a];
                    model.paths.insert(b.into(), i);
                }
            }
            Op::Snapshot { full } => check(&model, full, &mut snaps),
        }
    }
    check(&model, false, &mut snaps);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(writer.join().unwrap() > 0);
    // every snapshot, restored and copied out of .snapshots, equals the model
    for (k, (name, want, want_times, want_alloc)) in taken.borrow().iter().enumerate() {
        let target = t.path().join(format!("restore{k}"));
        let out = snapfs(&["restore", "-j", "2", mnt.to_str().unwrap(), name, target.to_str().unwrap()]);
        assert!(out.status.success(), "restore {name}: {}", String::from_utf8_lossy(&out.stderr));
        let copy = t.path().join(format!("copy{k}"));
        let st = std::process::Command::new("cp")
            .arg("-a")
            .arg(mnt.join(".snapshots").join(name).join("."))
            .arg(&copy)
            .status()
            .unwrap();
        assert!(st.success());
        for (what, dir) in [("restore", &target), ("cp -a", &copy)] {
            assert_times(want_times, &live_times(dir, want), &format!("{what} of snapshot {name}"));
            assert_alloc(want_alloc, want, &alloc_of(dir, want), false, &format!("{what} of snapshot {name}"));
            let mut got = files_of(dir);
            got.remove("d1/busy");
            if &got != want {
                let differing: Vec<&String> =
                    want.keys().chain(got.keys()).filter(|k| got.get(*k) != want.get(*k)).collect();
                panic!("{what} of snapshot {name} differs from the model at {differing:?}");
            }
        }
    }
    m.umount();
    // and a browse mount of the repository shows the same
    let b = t.path().join("browse");
    fs::create_dir(&b).unwrap();
    let out = snapfs(&["browse", "--repo", &repo, b.to_str().unwrap()]);
    assert!(out.status.success(), "browse: {}", String::from_utf8_lossy(&out.stderr));
    let _g = BrowseGuard(b.clone());
    for (name, want, want_times, want_alloc) in taken.borrow().iter() {
        assert_times(want_times, &live_times(&b.join(name), want), &format!("browse of snapshot {name}"));
        assert_alloc(want_alloc, want, &alloc_of(&b.join(name), want), true, &format!("browse of snapshot {name}"));
    }
}

/// Every regular file under `dir` with its content.
fn files_of(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((d, rel)) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            let r = if rel.is_empty() { name } else { format!("{rel}/{name}") };
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push((e.path(), r));
            } else if ft.is_file() {
                out.insert(r, fs::read(e.path()).unwrap());
            }
        }
    }
    out
}

proptest! {
    // SNAPFS_MODEL_CASES=300 for a longer run by hand
    #![proptest_config(ProptestConfig {
        cases: std::env::var("SNAPFS_MODEL_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(12),
        max_shrink_iters: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn snapshots_equal_the_model(ops in prop::collection::vec(op(), 1..45)) {
        run(&ops);
    }
}

proptest! {
    // The same against a repository in the S3 bucket (scripts/test's
    // Garage cluster): fewer cases, each is slower.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("SNAPFS_MODEL_S3_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(3),
        max_shrink_iters: 16,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn snapshots_equal_the_model_on_s3(ops in prop::collection::vec(op(), 1..30)) {
        run_on(&ops, Some(s3_url("model")));
    }
}

proptest! {
    // The same on an encrypted repository.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("SNAPFS_MODEL_CASES").ok().and_then(|v| v.parse().ok()).map(|n: u32| n / 3).unwrap_or(4),
        max_shrink_iters: 32,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn snapshots_equal_the_model_encrypted(ops in prop::collection::vec(op(), 1..45)) {
        // (each test is a process of its own under nextest: this reaches
        // only the snapfs commands this test runs)
        std::env::set_var("SNAPFS_PASSWORD", "model passphrase");
        run(&ops);
    }
}

/// Cases found by the property test, kept.
#[test]
fn regression_hard_link_written_through_the_other_directory() {
    run(&[
        Op::Write { p: 4, off: 0, len: 10, seed: 1 },
        Op::Link { from: 4, to: 7 },
        Op::Snapshot { full: false },
        Op::Write { p: 7, off: 3, len: 5, seed: 2 },
        Op::Snapshot { full: false },
        Op::Write { p: 4, off: 2 * BS, len: 5, seed: 3 },
    ]);
}

#[test]
fn regression_truncate_then_grow_then_rename_into_a_clean_directory() {
    run(&[
        Op::Write { p: 5, off: 0, len: 3 * BS as usize, seed: 4 },
        Op::Write { p: 8, off: 0, len: 100, seed: 9 },
        Op::Snapshot { full: false },
        Op::Truncate { p: 5, size: 1000 },
        Op::Write { p: 5, off: 4 * BS, len: 10, seed: 5 },
        Op::Rename { from: 5, to: 9 },
        Op::Snapshot { full: false },
    ]);
}

#[test]
fn regression_rename_over_one_of_two_links_then_write_the_other() {
    run(&[
        Op::Write { p: 8, off: 181, len: 15719, seed: 39 },
        Op::Write { p: 1, off: 307984, len: 11954, seed: 212 },
        Op::Link { from: 8, to: 2 },
        Op::Rename { from: 1, to: 2 },
        Op::Snapshot { full: false },
        Op::Write { p: 8, off: 143948, len: 39137, seed: 143 },
        Op::Snapshot { full: false },
    ]);
}
