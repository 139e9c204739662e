//! Repository objects: ids and the byte encodings of file block lists and
//! directory trees.
//!
//! Every object is named by the blake3 hash of its kind byte followed by its
//! (uncompressed) bytes. The kinds:
//! - **blob**: the bytes of one file block (at most the block size);
//! - **file node**: a level of a file's block list (see [`FileNode`]);
//! - **tree**: a directory's sorted entries with all their metadata.
//!
//! Snapshot records are not objects; they live as files of their own (see
//! `snapshot.rs`). The encodings are written down byte by byte in
//! doc/DESIGN.md; all integers are little-endian.

use std::fmt;

use thiserror::Error;

/// blake3 of an object's bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId(pub [u8; 32]);

impl ObjectId {
    /// The id used for "nothing": a hole in a file, an empty file.
    pub const ZERO: ObjectId = ObjectId([0; 32]);

    /// blake3 of some bytes (pack names, snapshot record ids).
    pub fn of(bytes: &[u8]) -> ObjectId {
        ObjectId(*blake3::hash(bytes).as_bytes())
    }

    /// The id of an object: blake3 of its kind byte and its bytes, so objects
    /// of different kinds never share an id (an empty tree and an empty link
    /// table have the same bytes).
    pub fn of_object(kind: ObjKind, bytes: &[u8]) -> ObjectId {
        let mut h = blake3::Hasher::new();
        h.update(&[kind as u8]);
        h.update(bytes);
        ObjectId(*h.finalize().as_bytes())
    }

    pub fn is_zero(&self) -> bool {
        self.0 == [0; 32]
    }

    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn short(&self) -> String {
        self.hex()[..12].to_string()
    }

    pub fn from_hex(s: &str) -> Option<ObjectId> {
        if s.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(ObjectId(out))
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.short())
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.hex())
    }
}

/// What an object is, as recorded in packs and the index.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ObjKind {
    Blob = 1,
    FileNode = 2,
    Tree = 3,
    /// Side tables of a snapshot (hard links).
    Meta = 4,
}

impl ObjKind {
    pub fn from_u8(v: u8) -> Option<ObjKind> {
        match v {
            1 => Some(ObjKind::Blob),
            2 => Some(ObjKind::FileNode),
            3 => Some(ObjKind::Tree),
            4 => Some(ObjKind::Meta),
            _ => None,
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
#[error("malformed {what} object")]
pub struct DecodeError {
    pub what: &'static str,
}

/// A cursor over bytes being decoded.
struct Rd<'a> {
    b: &'a [u8],
    what: &'static str,
}

impl<'a> Rd<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.b.len() < n {
            return Err(DecodeError { what: self.what });
        }
        let (a, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn id(&mut self) -> Result<ObjectId, DecodeError> {
        Ok(ObjectId(self.take(32)?.try_into().unwrap()))
    }
    fn bytes16(&mut self) -> Result<Vec<u8>, DecodeError> {
        let n = self.u16()? as usize;
        Ok(self.take(n)?.to_vec())
    }
    fn bytes32(&mut self) -> Result<Vec<u8>, DecodeError> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
    fn done(&self) -> Result<(), DecodeError> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(DecodeError { what: self.what })
        }
    }
}

/// Entries per file node: 256 ids of 32 bytes, an 8 KiB node. A file of
/// `n` blocks has `ceil(log_256(n))` levels (a 100 GiB file of 64 KiB blocks:
/// 3); one changed block rewrites one node per level.
pub const FANOUT: usize = 256;

/// One node of a file's block list. Level 0 entries are blob ids (zero id: a
/// hole, the block reads as zeros); level `k > 0` entries are ids of nodes of
/// level `k - 1`. A node at level `k` covers `FANOUT^(k+1)` blocks except the
/// last node of each level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileNode {
    pub level: u8,
    pub entries: Vec<ObjectId>,
}

impl FileNode {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(6 + 32 * self.entries.len());
        v.push(1);
        v.push(self.level);
        v.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for e in &self.entries {
            v.extend_from_slice(&e.0);
        }
        v
    }

    pub fn decode(b: &[u8]) -> Result<FileNode, DecodeError> {
        let mut r = Rd { b, what: "file node" };
        if r.u8()? != 1 {
            return Err(DecodeError { what: "file node" });
        }
        let level = r.u8()?;
        let n = r.u32()? as usize;
        if n > FANOUT {
            return Err(DecodeError { what: "file node" });
        }
        let entries = (0..n).map(|_| r.id()).collect::<Result<_, _>>()?;
        r.done()?;
        Ok(FileNode { level, entries })
    }
}

/// Blocks covered by one node at `level`.
pub fn node_span(level: u8) -> u64 {
    (FANOUT as u64).pow(level as u32 + 1)
}

/// Levels needed for a file of `blocks` blocks (at least one).
pub fn levels_for(blocks: u64) -> u8 {
    let mut level = 0u8;
    while node_span(level) < blocks {
        level += 1;
    }
    level
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKind {
    File = 1,
    Dir = 2,
    Symlink = 3,
    Fifo = 4,
    Socket = 5,
    CharDev = 6,
    BlockDev = 7,
}

impl EntryKind {
    pub fn from_mode(mode: u32) -> EntryKind {
        match mode & libc::S_IFMT {
            libc::S_IFDIR => EntryKind::Dir,
            libc::S_IFLNK => EntryKind::Symlink,
            libc::S_IFIFO => EntryKind::Fifo,
            libc::S_IFSOCK => EntryKind::Socket,
            libc::S_IFCHR => EntryKind::CharDev,
            libc::S_IFBLK => EntryKind::BlockDev,
            _ => EntryKind::File,
        }
    }
    fn from_u8(v: u8) -> Option<EntryKind> {
        Some(match v {
            1 => EntryKind::File,
            2 => EntryKind::Dir,
            3 => EntryKind::Symlink,
            4 => EntryKind::Fifo,
            5 => EntryKind::Socket,
            6 => EntryKind::CharDev,
            7 => EntryKind::BlockDev,
            _ => return None,
        })
    }
    pub fn name(&self) -> &'static str {
        match self {
            EntryKind::File => "file",
            EntryKind::Dir => "dir",
            EntryKind::Symlink => "symlink",
            EntryKind::Fifo => "fifo",
            EntryKind::Socket => "socket",
            EntryKind::CharDev => "chardev",
            EntryKind::BlockDev => "blockdev",
        }
    }
}

/// A time as seconds and nanoseconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, PartialOrd, Ord)]
pub struct Time {
    pub sec: i64,
    pub nsec: u32,
}

/// One name in a directory, with everything a snapshot keeps about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: Vec<u8>,
    pub kind: EntryKind,
    /// Permission bits, setuid/setgid/sticky included (no file type bits).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: Time,
    pub atime: Time,
    /// Recorded, not restorable: tells whether the inode changed.
    pub ctime: Time,
    /// Backing inode number and link count: hard links share `ino`.
    pub ino: u64,
    pub nlink: u32,
    pub rdev: u64,
    /// File: root of its block list (zero: empty). Dir: its tree.
    pub content: ObjectId,
    /// File: levels of its block list.
    pub levels: u8,
    /// Symlink target.
    pub target: Vec<u8>,
    /// Extended attributes, sorted by name.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Dir: what its subtree holds (encoded for directories only).
    pub totals: Totals,
}

/// What a directory's subtree holds, itself excluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Totals {
    pub files: u64,
    pub dirs: u64,
    pub others: u64,
    /// Sum of file sizes.
    pub bytes: u64,
}

impl Totals {
    pub fn add(&mut self, o: &Totals) {
        self.files += o.files;
        self.dirs += o.dirs;
        self.others += o.others;
        self.bytes += o.bytes;
    }
}

fn put_time(v: &mut Vec<u8>, t: Time) {
    v.extend_from_slice(&t.sec.to_le_bytes());
    v.extend_from_slice(&t.nsec.to_le_bytes());
}

fn put16(v: &mut Vec<u8>, b: &[u8]) {
    v.extend_from_slice(&(b.len() as u16).to_le_bytes());
    v.extend_from_slice(b);
}

/// A directory: entries sorted by name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tree {
    pub entries: Vec<Entry>,
}

impl Tree {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(64 + self.entries.len() * 120);
        v.push(1);
        v.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for e in &self.entries {
            put16(&mut v, &e.name);
            v.push(e.kind as u8);
            v.extend_from_slice(&e.mode.to_le_bytes());
            v.extend_from_slice(&e.uid.to_le_bytes());
            v.extend_from_slice(&e.gid.to_le_bytes());
            v.extend_from_slice(&e.size.to_le_bytes());
            put_time(&mut v, e.mtime);
            put_time(&mut v, e.atime);
            put_time(&mut v, e.ctime);
            v.extend_from_slice(&e.ino.to_le_bytes());
            v.extend_from_slice(&e.nlink.to_le_bytes());
            v.extend_from_slice(&e.rdev.to_le_bytes());
            v.extend_from_slice(&e.content.0);
            v.push(e.levels);
            put16(&mut v, &e.target);
            v.extend_from_slice(&(e.xattrs.len() as u16).to_le_bytes());
            for (k, val) in &e.xattrs {
                put16(&mut v, k);
                v.extend_from_slice(&(val.len() as u32).to_le_bytes());
                v.extend_from_slice(val);
            }
            if e.kind == EntryKind::Dir {
                for n in [e.totals.files, e.totals.dirs, e.totals.others, e.totals.bytes] {
                    v.extend_from_slice(&n.to_le_bytes());
                }
            }
        }
        v
    }

    pub fn decode(b: &[u8]) -> Result<Tree, DecodeError> {
        let what = "tree";
        let mut r = Rd { b, what };
        if r.u8()? != 1 {
            return Err(DecodeError { what });
        }
        let n = r.u32()? as usize;
        let mut entries = Vec::with_capacity(n.min(1 << 16));
        for _ in 0..n {
            let name = r.bytes16()?;
            let kind = EntryKind::from_u8(r.u8()?).ok_or(DecodeError { what })?;
            let mode = r.u32()?;
            let uid = r.u32()?;
            let gid = r.u32()?;
            let size = r.u64()?;
            let mut time = || -> Result<Time, DecodeError> { Ok(Time { sec: r.i64()?, nsec: r.u32()? }) };
            let mtime = time()?;
            let atime = time()?;
            let ctime = time()?;
            let ino = r.u64()?;
            let nlink = r.u32()?;
            let rdev = r.u64()?;
            let content = r.id()?;
            let levels = r.u8()?;
            let target = r.bytes16()?;
            let nx = r.u16()? as usize;
            let mut xattrs = Vec::with_capacity(nx);
            for _ in 0..nx {
                let k = r.bytes16()?;
                let val = r.bytes32()?;
                xattrs.push((k, val));
            }
            let totals = if kind == EntryKind::Dir {
                Totals { files: r.u64()?, dirs: r.u64()?, others: r.u64()?, bytes: r.u64()? }
            } else {
                Totals::default()
            };
            entries.push(Entry {
                name,
                kind,
                mode,
                uid,
                gid,
                size,
                mtime,
                atime,
                ctime,
                ino,
                nlink,
                rdev,
                content,
                levels,
                target,
                xattrs,
                totals,
            });
        }
        r.done()?;
        Ok(Tree { entries })
    }

    pub fn get(&self, name: &[u8]) -> Option<&Entry> {
        self.entries.binary_search_by(|e| e.name.as_slice().cmp(name)).ok().map(|i| &self.entries[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str) -> Entry {
        Entry {
            name: name.as_bytes().to_vec(),
            kind: EntryKind::File,
            mode: 0o4755,
            uid: 1,
            gid: 2,
            size: 12345,
            mtime: Time { sec: -5, nsec: 7 },
            atime: Time { sec: 100, nsec: 0 },
            ctime: Time { sec: 200, nsec: 999_999_999 },
            ino: 77,
            nlink: 2,
            rdev: 0,
            content: ObjectId::of(b"x"),
            levels: 1,
            target: vec![],
            xattrs: vec![(b"user.a".to_vec(), vec![0, 1, 2]), (b"user.b".to_vec(), vec![])],
            totals: Totals::default(),
        }
    }

    #[test]
    fn tree_round_trips() {
        let mut odd = entry("b");
        odd.name = b"b\xff".to_vec(); // names need not be UTF-8
        let mut dir = entry("c");
        dir.kind = EntryKind::Dir;
        dir.totals = Totals { files: 1, dirs: 2, others: 3, bytes: 4 };
        let t = Tree { entries: vec![entry("a"), odd, dir] };
        let enc = t.encode();
        assert_eq!(Tree::decode(&enc).unwrap(), t);
        assert!(Tree::decode(&enc[..enc.len() - 1]).is_err());
        assert!(t.get(b"a").is_some() && t.get(b"c").is_some() && t.get(b"d").is_none());
    }

    #[test]
    fn file_node_round_trips() {
        let n = FileNode { level: 0, entries: vec![ObjectId::ZERO, ObjectId::of(b"y")] };
        assert_eq!(FileNode::decode(&n.encode()).unwrap(), n);
        assert_eq!(levels_for(1), 0);
        assert_eq!(levels_for(256), 0);
        assert_eq!(levels_for(257), 1);
        assert_eq!(levels_for(256 * 256 + 1), 2);
    }

    #[test]
    fn ids_in_hex() {
        let id = ObjectId::of(b"hello");
        assert_eq!(ObjectId::from_hex(&id.hex()), Some(id));
        assert_eq!(ObjectId::from_hex("zz"), None);
    }
}
