//! Fuzzing the decoders and the view (issue 10, item 6): random and
//! mutated trees, file nodes, link tables, pack trailers and footers,
//! stored objects and snapshot records must give errors, never a panic,
//! an unbounded allocation or a hang. Runs in a few seconds.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;

use proptest::prelude::*;
use snapfs::repo::crypto::Keys;
use snapfs::repo::objects::{self, Entry, EntryKind, FileNode, ObjKind, ObjectId, Time, Totals, Tree};
use snapfs::repo::objstore::Objects;
use snapfs::repo::pack::{self, PackEntry, PackWriter};
use snapfs::repo::store::{FileKind, LocalStore, Store};
use snapfs::snapshot::view::{View, VIEW_ROOT};
use snapfs::snapshot::{self, SnapshotRecord, SnapshotStats};

const BS: u64 = 4096;

fn config() -> ProptestConfig {
    ProptestConfig { cases: 512, max_shrink_iters: 64, failure_persistence: None, ..ProptestConfig::default() }
}

/// A mutation of some bytes: flips, overwrites, truncation, insertion.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Set(usize, u8),
    Truncate(usize),
    Insert(usize, Vec<u8>),
    /// A little-endian u32/u64 of extreme value written at a place (counts, lengths).
    Big(usize, bool),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..16)).prop_map(|(i, v)| Mutation::Insert(i, v)),
        (any::<usize>(), any::<bool>()).prop_map(|(i, w)| Mutation::Big(i, w)),
    ]
}

fn mutate(b: &mut Vec<u8>, ms: &[Mutation]) {
    for m in ms {
        let n = b.len().max(1);
        match m {
            Mutation::Flip(i, x) if !b.is_empty() => b[i % n] ^= x,
            Mutation::Set(i, x) if !b.is_empty() => b[i % n] = *x,
            Mutation::Truncate(i) => b.truncate(i % n),
            Mutation::Insert(i, v) => {
                let at = i % (b.len() + 1);
                b.splice(at..at, v.iter().copied());
            }
            Mutation::Big(i, wide) if !b.is_empty() => {
                let bytes: &[u8] = if *wide { &[0xff; 8] } else { &[0xff; 4] };
                let at = i % n;
                for (k, x) in bytes.iter().enumerate() {
                    if let Some(y) = b.get_mut(at + k) {
                        *y = *x;
                    }
                }
            }
            _ => {}
        }
    }
}

fn name() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(prop_oneof![Just(b'a'), Just(b'.'), Just(b'/'), Just(0u8), any::<u8>()], 0..8)
}

fn entry() -> impl Strategy<Value = Entry> {
    (name(), 1u8..=8, any::<u32>(), any::<u64>(), any::<u8>(), any::<u64>(), any::<i64>(), any::<u32>(), any::<bool>())
        .prop_map(|(name, kind, mode, size, levels, ino, sec, nsec, dev)| {
            let t = Time { sec, nsec };
            Entry {
                name,
                kind: EntryKind::from_u8(kind).unwrap_or(EntryKind::File),
                mode: mode & 0o7777,
                uid: 0,
                gid: 0,
                size: size >> 2,
                mtime: t,
                atime: t,
                ctime: t,
                ino,
                dev: dev.then_some(ino ^ 0x55),
                nlink: 1,
                rdev: 0,
                blocks: Some(size >> 9),
                content: ObjectId::of(&ino.to_le_bytes()),
                levels: levels % 8,
                target: Vec::new(),
                xattrs: vec![(b"user.x".to_vec(), vec![1, 2, 3])],
                totals: Totals::default(),
            }
        })
}

fn ops_on_objects(b: &[u8]) {
    let _ = Tree::decode(b);
    let _ = FileNode::decode(b);
    let _ = objects::decode_links(b);
    let _ = snapshot::decode_links(b);
}

fn ops_on_pack(name: &str, bytes: &[u8]) {
    ops_on_pack_with(None, name, bytes);
    ops_on_pack_with(Some(&KEYS), name, bytes);
}

/// The keys of the encrypted repository the fuzzed packs may come from.
static KEYS: std::sync::LazyLock<std::sync::Arc<Keys>> =
    std::sync::LazyLock::new(|| std::sync::Arc::new(Keys::generate("fuzz")));

fn ops_on_pack_with(keys: Option<&Keys>, name: &str, bytes: &[u8]) {
    let size = bytes.len() as u64;
    if bytes.len() < 16 {
        let _ = pack::parse_footer(name, bytes, size);
        return;
    }
    if let Ok(off) = pack::parse_footer(name, &bytes[bytes.len() - 16..], size) {
        let t = &bytes[off as usize..bytes.len() - 16];
        if let Ok(entries) = pack::parse_trailer(keys, name, t, off) {
            for e in entries {
                let s = &bytes[e.offset as usize..(e.offset + e.stored as u64) as usize];
                let _ = pack::decode_object(keys, name, &e, s);
            }
        }
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn random_bytes_never_panic_a_decoder(b in proptest::collection::vec(any::<u8>(), 0..600)) {
        ops_on_objects(&b);
        ops_on_pack("p", &b);
        let e = PackEntry { id: ObjectId::ZERO, kind: ObjKind::Tree, codec: b.first().copied().unwrap_or(1) % 3, offset: 8, stored: b.len() as u32, raw: u32::MAX };
        let _ = pack::decode_object(None, "p", &e, &b);
        let _ = pack::decode_object(Some(&KEYS), "p", &e, &b);
        let _ = KEYS.open_record(&b, "r");
        let _ = KEYS.open_trailer(&b, "p");
    }

    #[test]
    fn mutated_trees_nodes_and_links_never_panic(entries in proptest::collection::vec(entry(), 0..5), ms in proptest::collection::vec(mutation(), 1..4)) {
        let mut t = Tree { entries };
        t.entries.sort_by(|a, b| a.name.cmp(&b.name));
        let mut enc = t.encode();
        if let Ok(d) = Tree::decode(&enc) {
            prop_assert_eq!(d, t.clone());
        }
        mutate(&mut enc, &ms);
        ops_on_objects(&enc);
        let mut n = FileNode { level: (t.entries.len() % 8) as u8, entries: t.entries.iter().map(|e| e.content).collect() }.encode();
        mutate(&mut n, &ms);
        ops_on_objects(&n);
        let links: objects::LinkTable = t.entries.iter().map(|e| (e.name.clone(), e.ino)).collect();
        let mut l = objects::encode_links(&links);
        mutate(&mut l, &ms);
        ops_on_objects(&l);
    }

    #[test]
    fn mutated_packs_never_panic(objs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..5), ms in proptest::collection::vec(mutation(), 1..4)) {
        for keys in [None, Some(&*KEYS)] {
            let mut w = PackWriter::new(keys);
            for (i, o) in objs.iter().enumerate() {
                let kind = if i % 2 == 0 { ObjKind::Blob } else { ObjKind::Tree };
                let id = keys.map(|k| k.id_of(kind, o)).unwrap_or_else(|| ObjectId::of_object(kind, o));
                w.add(id, kind, o);
            }
            let (name, mut bytes, _) = w.finish();
            ops_on_pack_with(keys.map(|k| &**k), &name, &bytes);
            mutate(&mut bytes, &ms);
            ops_on_pack(&name, &bytes);
        }
    }
}

// --- the view over mutated repositories

fn file_entry(name: &str, ino: u64, size: u64, content: ObjectId, levels: u8) -> Entry {
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
        ino,
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

fn dir_entry(name: &str, ino: u64, content: ObjectId) -> Entry {
    let mut e = file_entry(name, ino, 0, content, 0);
    e.kind = EntryKind::Dir;
    e.mode = 0o755;
    e
}

/// Objects of a small real snapshot: a file of 300 blocks (two levels,
/// holes), a small file, a directory; `tweak` may replace the bytes of
/// the inner tree or of a file node before they are stored (under their
/// new ids) and the record's JSON.
struct Tweaks<'a> {
    tree: &'a dyn Fn(&mut Vec<u8>),
    node: &'a dyn Fn(&mut Vec<u8>),
    record: &'a dyn Fn(&mut Vec<u8>),
}

fn build(root: &Path, tw: &Tweaks) -> Arc<dyn Store> {
    let store: Arc<dyn Store> = Arc::new(LocalStore::new(root));
    let o = Objects::open(store.clone(), None).unwrap();
    let blob = |b: &[u8]| o.put(ObjKind::Blob, b).unwrap().0;
    let block = |b: u64| {
        let mut v = b.to_le_bytes().to_vec();
        // whole blocks, but the last (the file ends 10 bytes short)
        v.resize(if b == 299 { BS as usize - 10 } else { BS as usize }, 1);
        v
    };
    let data: Vec<ObjectId> =
        (0..300u64).map(|b| if b % 7 == 0 || b == 299 { blob(&block(b)) } else { ObjectId::ZERO }).collect();
    let mut leaves = Vec::new();
    for chunk in data.chunks(256) {
        leaves.push(o.put(ObjKind::FileNode, &FileNode { level: 0, entries: chunk.to_vec() }.encode()).unwrap().0);
    }
    let mut top_node = FileNode { level: 1, entries: leaves }.encode();
    (tw.node)(&mut top_node);
    let (big, _) = o.put(ObjKind::FileNode, &top_node).unwrap();
    let small = o.put(ObjKind::FileNode, &FileNode { level: 0, entries: vec![blob(b"small")] }.encode()).unwrap().0;
    let sub = Tree { entries: vec![file_entry("inner", 5, 5, small, 0)] };
    let (sub_id, _) = o.put(ObjKind::Tree, &sub.encode()).unwrap();
    let mut inner = Tree {
        entries: vec![
            file_entry("big", 3, 300 * BS - 10, big, 1),
            dir_entry("d", 4, sub_id),
            file_entry("small", 6, 5, small, 0),
        ],
    }
    .encode();
    (tw.tree)(&mut inner);
    let (dir, _) = o.put(ObjKind::Tree, &inner).unwrap();
    let (top, _) = o.put_tree(&Tree { entries: vec![dir_entry(".", 2, dir)] }).unwrap();
    let (links, _) = o.put(ObjKind::Meta, &objects::encode_links(&Default::default())).unwrap();
    o.flush().unwrap();
    let rec = SnapshotRecord {
        format: 1,
        name: "s".into(),
        time: "2026-01-01T00:00:00Z".into(),
        time_sec: 1,
        time_nsec: 0,
        tree: top,
        links,
        parent: None,
        full: true,
        source: String::new(),
        host: String::new(),
        block_size: BS,
        stats: SnapshotStats::default(),
    };
    let mut bytes = serde_json::to_vec_pretty(&rec).unwrap();
    (tw.record)(&mut bytes);
    store.put(FileKind::Snapshot, &ObjectId::of(&bytes).hex(), &bytes).unwrap();
    store
}

/// Every operation of the view over everything reachable, bounded.
fn drive(store: Arc<dyn Store>) {
    let Ok(o) = Objects::open(store, None) else { return };
    let v = View::new(Arc::new(o), BS, None);
    let mut todo = vec![VIEW_ROOT];
    let mut seen = 0;
    while let Some(id) = todo.pop() {
        seen += 1;
        if seen > 64 {
            break;
        }
        let _ = v.getattr(id);
        let _ = v.listxattr(id, 0);
        let _ = v.getxattr(id, OsStr::new("user.x"), 0);
        let _ = v.readlink(id);
        for off in [0u64, 1, BS - 1, 7 * BS, 299 * BS, 300 * BS, u64::MAX / 2] {
            let _ = v.read(id, off, 70_000);
            let _ = v.lseek(id, off as i64, libc::SEEK_DATA);
            let _ = v.lseek(id, off as i64, libc::SEEK_HOLE);
        }
        let _ = v.lseek(id, -1, libc::SEEK_DATA);
        let mut names = Vec::new();
        let _ = v.readdir(id, 0, |_, _, _, n| {
            names.push(n.to_os_string());
            names.len() > 100
        });
        for n in names {
            if n != "." && n != ".." {
                if let Ok(a) = v.lookup(id, &n) {
                    todo.push(a.ino.0);
                }
            }
        }
    }
}

fn apply(ms: &[Mutation]) -> impl Fn(&mut Vec<u8>) + '_ {
    move |b: &mut Vec<u8>| mutate(b, ms)
}

fn none(_: &mut Vec<u8>) {}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, ..config() })]

    #[test]
    fn the_view_over_mutated_objects_never_panics(which in 0u8..3, ms in proptest::collection::vec(mutation(), 1..4)) {
        let t = tempfile::tempdir().unwrap();
        let m = apply(&ms);
        let tw = match which {
            0 => Tweaks { tree: &m, node: &none, record: &none },
            1 => Tweaks { tree: &none, node: &m, record: &none },
            _ => Tweaks { tree: &none, node: &none, record: &m },
        };
        drive(build(t.path(), &tw));
    }

    #[test]
    fn the_view_over_mutated_packs_never_panics(ms in proptest::collection::vec(mutation(), 1..6)) {
        let t = tempfile::tempdir().unwrap();
        let store = build(t.path(), &Tweaks { tree: &none, node: &none, record: &none });
        for p in store.list(FileKind::Pack).unwrap() {
            let path = t.path().join("packs").join(&p[..2]).join(&p);
            let mut b = std::fs::read(&path).unwrap();
            mutate(&mut b, &ms);
            std::fs::write(&path, &b).unwrap();
        }
        drive(store);
    }
}

#[test]
fn an_unmutated_repository_reads_back() {
    let _ = env_logger::builder().is_test(true).try_init();
    let t = tempfile::tempdir().unwrap();
    let store = build(t.path(), &Tweaks { tree: &none, node: &none, record: &none });
    let v = View::new(Arc::new(Objects::open(store, None).unwrap()), BS, None);
    let s = v.lookup(VIEW_ROOT, OsStr::new("s")).unwrap();
    let big = v.lookup(s.ino.0, OsStr::new("big")).unwrap();
    assert_eq!(v.read(big.ino.0, 7 * BS, 8).unwrap(), 7u64.to_le_bytes());
    assert_eq!(v.lseek(big.ino.0, 1, libc::SEEK_DATA), Ok(1));
    assert_eq!(v.lseek(big.ino.0, BS as i64, libc::SEEK_DATA), Ok(7 * BS as i64));
    assert_eq!(v.read(big.ino.0, 300 * BS - 12, 100).unwrap(), vec![1, 1]);
    let d = v.lookup(s.ino.0, OsStr::new("d")).unwrap();
    let inner = v.lookup(d.ino.0, OsStr::new("inner")).unwrap();
    assert_eq!(v.read(inner.ino.0, 0, 100).unwrap(), b"small");
}
