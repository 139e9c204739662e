//! Repository objects: the byte encodings of file block lists and
//! directory trees, and the limits every decoded field is checked against.
//! (One file on purpose, with its tests: the encodings and their limits
//! are read together.)
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
//!
//! (About 620 lines of code and 230 of tests: the object formats byte by byte, their encoders and their validating
//! decoders side by side.)

use thiserror::Error;

pub use super::ids::{ObjKind, ObjectId, PackId, SnapshotId, TreeId};

#[derive(Debug, Error, PartialEq, Eq)]
#[error("malformed {what} object")]
pub struct DecodeError {
    pub what: &'static str,
}

/// A field outside the format's limits (or bytes that do not parse).
fn bad(what: &'static str) -> DecodeError {
    DecodeError { what }
}

// --- the format's limits, checked at decode (one place: here)

/// Deepest level of a file node: a node at level 6 covers 256^7 = 2^56
/// blocks, more than a file of 2^63 bytes in 4 KiB blocks holds (2^51).
pub const MAX_LEVEL: u8 = 6;
/// Largest file size (`off_t`).
pub const MAX_FILE_SIZE: u64 = i64::MAX as u64;
/// Longest name in a directory (bytes), as Linux allows.
pub const MAX_NAME: usize = 255;
/// Longest symlink target (PATH_MAX less its NUL).
pub const MAX_TARGET: usize = 4095;
/// Longest xattr name and value, as Linux allows.
pub const MAX_XATTR_NAME: usize = 255;
pub const MAX_XATTR_VALUE: usize = 65536;
/// Block sizes a repository may have.
pub const MIN_BLOCK_SIZE: u64 = 4 * 1024;
pub const MAX_BLOCK_SIZE: u64 = 16 * 1024 * 1024;
/// Largest object (uncompressed) of each kind: a blob holds one block, a
/// file node 256 ids; trees and link tables are bounded by this (a
/// directory of about 7 million entries).
pub const MAX_NODE_BYTES: usize = 6 + 32 * FANOUT;
pub const MAX_TREE_BYTES: usize = 1 << 30;

/// The largest decoded size an object of `kind` may have.
pub fn max_object_bytes(kind: ObjKind) -> usize {
    match kind {
        ObjKind::Blob => MAX_BLOCK_SIZE as usize,
        ObjKind::FileNode => MAX_NODE_BYTES,
        ObjKind::Tree | ObjKind::Meta => MAX_TREE_BYTES,
    }
}

/// Whether `bs` is a block size a repository may have.
pub fn valid_block_size(bs: u64) -> bool {
    bs.is_power_of_two() && (MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&bs)
}

/// A name a directory entry may have: not empty, `.` or `..`, no `/` or
/// NUL, at most 255 bytes.
pub fn valid_entry_name(n: &[u8]) -> bool {
    !n.is_empty() && n.len() <= MAX_NAME && n != b"." && n != b".." && !n.contains(&b'/') && !n.contains(&0)
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
    fn remaining(&self) -> usize {
        self.b.len()
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
        let what = "file node";
        let mut r = Rd { b, what };
        if r.u8()? != 1 {
            return Err(bad(what));
        }
        let level = r.u8()?;
        let n = r.u32()? as usize;
        if level > MAX_LEVEL || n == 0 || n > FANOUT {
            return Err(bad(what));
        }
        let entries = (0..n).map(|_| r.id()).collect::<Result<_, _>>()?;
        r.done()?;
        Ok(FileNode { level, entries })
    }
}

/// Blocks covered by one node at `level` (saturating past the format's
/// deepest level, never zero).
pub fn node_span(level: u8) -> u64 {
    (FANOUT as u64).saturating_pow(level as u32 + 1)
}

/// The id of a full node at `level` all of whose blocks are holes (256
/// zero ids at level 0; 256 of these at level 1, and so on): a reader
/// skips such a subtree without reading it.
/// (In a plain repository; an encrypted one's differ: see
/// `Objects::hole_node`.)
pub fn hole_node(level: u8) -> ObjectId {
    static HOLES: std::sync::OnceLock<Vec<ObjectId>> = std::sync::OnceLock::new();
    let h = HOLES.get_or_init(|| hole_nodes(ObjectId::of_object));
    h.get(level as usize).copied().unwrap_or(ObjectId::ZERO)
}

/// The all-hole node ids of every level, with ids made by `id_of`.
pub fn hole_nodes(id_of: impl Fn(ObjKind, &[u8]) -> ObjectId) -> Vec<ObjectId> {
    let mut out = Vec::new();
    let mut below = ObjectId::ZERO;
    for level in 0..=MAX_LEVEL {
        let id = id_of(ObjKind::FileNode, &FileNode { level, entries: vec![below; FANOUT] }.encode());
        out.push(id);
        below = id;
    }
    out
}

/// Whether the subtree `id` at `level` of a block list is all holes, by its
/// id alone (the zero id, or a full all-hole node).
pub fn is_hole(id: &ObjectId, level: u8) -> bool {
    id.is_zero() || *id == hole_node(level)
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
    pub fn from_u8(v: u8) -> Option<EntryKind> {
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
    /// Backing inode number and link count: hard links share `(dev, ino)`.
    pub ino: u64,
    /// Backing device (`st_dev`); `None` in format 1 trees, which did not
    /// record it.
    pub dev: Option<u64>,
    pub nlink: u32,
    pub rdev: u64,
    /// `st_blocks` (512-byte units) as stat showed it; `None` in format 1
    /// trees.
    pub blocks: Option<u64>,
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

/// Tree encoding written by this version (format 1 trees are read too).
pub const TREE_VERSION: u8 = 2;
/// Device index of an entry whose device was not recorded.
const NO_DEV: u16 = u16::MAX;
/// `blocks` of an entry whose `st_blocks` was not recorded.
const NO_BLOCKS: u64 = u64::MAX;
/// Fewest bytes an entry takes (format 1; format 2 takes 10 more): a
/// bound for what the count of a tree may claim.
const MIN_ENTRY_BYTES: usize = 117;

impl Tree {
    /// The encoding (format 2): see doc/DESIGN.md.
    pub fn encode(&self) -> Vec<u8> {
        let mut devs: Vec<u64> = Vec::new();
        for e in &self.entries {
            if let Some(d) = e.dev {
                if !devs.contains(&d) && devs.len() < NO_DEV as usize {
                    devs.push(d);
                }
            }
        }
        let mut v = Vec::with_capacity(64 + devs.len() * 8 + self.entries.len() * 130);
        v.push(TREE_VERSION);
        v.extend_from_slice(&(devs.len() as u16).to_le_bytes());
        for d in &devs {
            v.extend_from_slice(&d.to_le_bytes());
        }
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
            let dev = e.dev.and_then(|d| devs.iter().position(|x| *x == d)).map_or(NO_DEV, |i| i as u16);
            v.extend_from_slice(&dev.to_le_bytes());
            v.extend_from_slice(&e.nlink.to_le_bytes());
            v.extend_from_slice(&e.rdev.to_le_bytes());
            v.extend_from_slice(&e.blocks.unwrap_or(NO_BLOCKS).to_le_bytes());
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

    /// Decode a tree of format 1 or 2, checking every field against the
    /// format's limits: names (see [`valid_entry_name`]; a top tree is the
    /// one entry `.`, a directory), sorted and unique; kinds, modes,
    /// nanoseconds, sizes, levels, symlink targets, xattrs.
    pub fn decode(b: &[u8]) -> Result<Tree, DecodeError> {
        let what = "tree";
        let mut r = Rd { b, what };
        let version = r.u8()?;
        if version != 1 && version != 2 {
            return Err(bad(what));
        }
        let mut devs = Vec::new();
        if version >= 2 {
            let nd = r.u16()? as usize;
            if nd >= NO_DEV as usize || nd * 8 > r.remaining() {
                return Err(bad(what));
            }
            for _ in 0..nd {
                devs.push(r.u64()?);
            }
        }
        let n = r.u32()? as usize;
        if n > r.remaining() / MIN_ENTRY_BYTES {
            return Err(bad(what));
        }
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            let name = r.bytes16()?;
            let kind = EntryKind::from_u8(r.u8()?).ok_or(bad(what))?;
            let mode = r.u32()?;
            let uid = r.u32()?;
            let gid = r.u32()?;
            let size = r.u64()?;
            let mut time = || -> Result<Time, DecodeError> {
                let t = Time { sec: r.i64()?, nsec: r.u32()? };
                if t.nsec >= 1_000_000_000 {
                    return Err(bad(what));
                }
                Ok(t)
            };
            let mtime = time()?;
            let atime = time()?;
            let ctime = time()?;
            let ino = r.u64()?;
            let dev = if version >= 2 {
                match r.u16()? {
                    NO_DEV => None,
                    i => Some(*devs.get(i as usize).ok_or(bad(what))?),
                }
            } else {
                None
            };
            let nlink = r.u32()?;
            let rdev = r.u64()?;
            let blocks = if version >= 2 {
                match r.u64()? {
                    NO_BLOCKS => None,
                    x => Some(x),
                }
            } else {
                None
            };
            let content = r.id()?;
            let levels = r.u8()?;
            let target = r.bytes16()?;
            let nx = r.u16()? as usize;
            let mut xattrs: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(nx.min(r.remaining() / 6));
            for _ in 0..nx {
                let k = r.bytes16()?;
                let val = r.bytes32()?;
                let ok = !k.is_empty()
                    && k.len() <= MAX_XATTR_NAME
                    && !k.contains(&0)
                    && val.len() <= MAX_XATTR_VALUE
                    && xattrs.last().is_none_or(|(p, _)| *p < k);
                if !ok {
                    return Err(bad(what));
                }
                xattrs.push((k, val));
            }
            let totals = if kind == EntryKind::Dir {
                Totals { files: r.u64()?, dirs: r.u64()?, others: r.u64()?, bytes: r.u64()? }
            } else {
                Totals::default()
            };
            let e = Entry {
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
                dev,
                nlink,
                rdev,
                blocks,
                content,
                levels,
                target,
                xattrs,
                totals,
            };
            let top = n == 1 && e.name == b"." && e.kind == EntryKind::Dir;
            let sorted = entries.last().is_none_or(|p: &Entry| p.name < e.name);
            if !(top || valid_entry_name(&e.name)) || !sorted || !e.valid() {
                return Err(bad(what));
            }
            entries.push(e);
        }
        r.done()?;
        Ok(Tree { entries })
    }

    pub fn get(&self, name: &[u8]) -> Option<&Entry> {
        self.entries.binary_search_by(|e| e.name.as_slice().cmp(name)).ok().map(|i| &self.entries[i])
    }

    /// Whether this is a snapshot's top tree: the one entry `.`. (Decode
    /// lets it through; a directory's tree of this shape is damage.)
    pub fn is_top(&self) -> bool {
        self.entries.len() == 1 && self.entries[0].name == b"."
    }
}

impl Entry {
    /// The tree of a directory entry; `None` for any other kind.
    pub fn subtree(&self) -> Option<TreeId> {
        (self.kind == EntryKind::Dir).then(|| TreeId::from_dir(self.content))
    }

    /// The fields' limits that do not depend on the block size.
    fn valid(&self) -> bool {
        let file = self.kind == EntryKind::File;
        let symlink = self.kind == EntryKind::Symlink;
        self.mode & !0o7777 == 0
            && self.size <= MAX_FILE_SIZE
            && (if file { self.levels <= MAX_LEVEL } else { self.levels == 0 })
            && (file || self.kind == EntryKind::Dir || self.content.is_zero())
            && (!file || !self.content.is_zero() || self.levels == 0)
            && (if symlink {
                !self.target.is_empty() && self.target.len() <= MAX_TARGET && !self.target.contains(&0)
            } else {
                self.target.is_empty()
            })
    }

    /// Blocks of the file at block size `bs`.
    pub fn block_count(&self, bs: u64) -> u64 {
        self.size.div_ceil(bs.max(1))
    }

    /// Whether a file's block list has the shape its size needs at block
    /// size `bs` (the levels a builder gives it); every reader of a block
    /// list checks this first.
    pub fn check_blocks(&self, bs: u64) -> Result<(), DecodeError> {
        let n = self.block_count(bs);
        if self.content.is_zero() || (n > 0 && self.levels == levels_for(n)) {
            Ok(())
        } else {
            Err(bad("file entry (levels do not fit its size)"))
        }
    }
}

// ---------------------------------------------------------------------------
// link tables

/// path (relative, '/'-separated) -> inode, for non-directories with
/// `nlink > 1`: `u8 version=1 | u32 count | per entry: u32 path_len, path,
/// u64 ino`, sorted by path.
pub type LinkTable = std::collections::BTreeMap<Vec<u8>, u64>;

pub fn encode_links(t: &LinkTable) -> Vec<u8> {
    let mut v = vec![1u8];
    v.extend_from_slice(&(t.len() as u32).to_le_bytes());
    for (p, ino) in t {
        v.extend_from_slice(&(p.len() as u32).to_le_bytes());
        v.extend_from_slice(p);
        v.extend_from_slice(&ino.to_le_bytes());
    }
    v
}

/// Decode a link table: every path a sequence of valid names, sorted and
/// unique.
pub fn decode_links(b: &[u8]) -> Result<LinkTable, DecodeError> {
    let what = "link table";
    let mut r = Rd { b, what };
    if r.u8()? != 1 {
        return Err(bad(what));
    }
    let n = r.u32()? as usize;
    if n > r.remaining() / 13 {
        return Err(bad(what));
    }
    let mut t = LinkTable::new();
    let mut last: Option<Vec<u8>> = None;
    for _ in 0..n {
        let p = r.bytes32()?;
        let ino = r.u64()?;
        if !p.split(|c| *c == b'/').all(valid_entry_name) || last.as_ref().is_some_and(|l| *l >= p) {
            return Err(bad(what));
        }
        last = Some(p.clone());
        t.insert(p, ino);
    }
    r.done()?;
    Ok(t)
}

#[cfg(test)]
/// The format 1 encoding, byte for byte as snapfs wrote it before
/// format 2 (kept here to prove old repositories stay readable).
pub(crate) fn encode_v1(t: &Tree) -> Vec<u8> {
    let mut v = vec![1u8];
    v.extend_from_slice(&(t.entries.len() as u32).to_le_bytes());
    for e in &t.entries {
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
            dev: Some(2049),
            nlink: 2,
            rdev: 0,
            blocks: Some(24),
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
        dir.levels = 0;
        dir.dev = Some(7);
        dir.totals = Totals { files: 1, dirs: 2, others: 3, bytes: 4 };
        let mut unknown = entry("d");
        unknown.dev = None;
        unknown.blocks = None;
        let t = Tree { entries: vec![entry("a"), odd, dir, unknown] };
        let enc = t.encode();
        assert_eq!(enc[0], 2);
        // two devices in the table
        assert_eq!(u16::from_le_bytes([enc[1], enc[2]]), 2);
        assert_eq!(Tree::decode(&enc).unwrap(), t);
        assert!(Tree::decode(&enc[..enc.len() - 1]).is_err());
        assert!(t.get(b"a").is_some() && t.get(b"c").is_some() && t.get(b"e").is_none());
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
    fn format_1_trees_still_decode() {
        let mut a = entry("a");
        a.dev = None;
        a.blocks = None;
        let mut d = entry("dir");
        d.kind = EntryKind::Dir;
        d.levels = 0;
        d.dev = None;
        d.blocks = None;
        d.totals = Totals { files: 9, dirs: 8, others: 7, bytes: 6 };
        let t = Tree { entries: vec![a, d] };
        assert_eq!(Tree::decode(&encode_v1(&t)).unwrap(), t);
        // the top tree: one entry "."
        let mut root = t.entries[1].clone();
        root.name = b".".to_vec();
        let top = Tree { entries: vec![root] };
        assert!(Tree::decode(&encode_v1(&top)).unwrap().is_top());
    }

    fn rejected(f: impl FnOnce(&mut Entry)) -> bool {
        let mut e = entry("a");
        f(&mut e);
        let t = Tree { entries: vec![e] };
        Tree::decode(&t.encode()).is_err() && Tree::decode(&encode_v1(&t)).is_err()
    }

    #[test]
    fn decode_rejects_what_the_format_does_not_allow() {
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0b", &[b'x'; 256][..]] {
            assert!(rejected(|e| e.name = bad.to_vec()), "name {bad:?}");
        }
        assert!(rejected(|e| e.name = b"a\0b".to_vec()));
        assert!(!rejected(|e| e.name = vec![b'x'; 255]));
        assert!(rejected(|e| e.levels = 7), "levels 7");
        assert!(!rejected(|e| e.levels = 6));
        assert!(rejected(|e| e.mode = 0o100644), "file type bits in mode");
        assert!(rejected(|e| e.mtime.nsec = 1_000_000_000));
        assert!(rejected(|e| e.size = 1 << 63));
        assert!(rejected(|e| e.target = b"t".to_vec()), "a target on a file");
        assert!(
            rejected(|e| {
                e.kind = EntryKind::Symlink;
                e.levels = 0;
                e.content = ObjectId::ZERO;
            }),
            "a symlink without target"
        );
        assert!(!rejected(|e| {
            e.kind = EntryKind::Symlink;
            e.levels = 0;
            e.content = ObjectId::ZERO;
            e.target = b"x".to_vec();
        }));
        assert!(rejected(|e| e.xattrs.reverse()), "unsorted xattrs");
        assert!(rejected(|e| e.xattrs[0].0.clear()));
        assert!(rejected(|e| e.xattrs[0].1 = vec![0; MAX_XATTR_VALUE + 1]));
        // unsorted or repeated names
        let t = Tree { entries: vec![entry("b"), entry("a")] };
        assert!(Tree::decode(&t.encode()).is_err());
        let t = Tree { entries: vec![entry("a"), entry("a")] };
        assert!(Tree::decode(&t.encode()).is_err());
        // "." only as the one entry of a top tree, a directory
        let mut dot = entry(".");
        assert!(Tree::decode(&Tree { entries: vec![dot.clone()] }.encode()).is_err());
        dot.kind = EntryKind::Dir;
        dot.levels = 0;
        assert!(Tree::decode(&Tree { entries: vec![dot.clone()] }.encode()).is_ok());
        assert!(Tree::decode(&Tree { entries: vec![dot, entry("a")] }.encode()).is_err());
        // a count no bytes back
        let mut b = Tree { entries: vec![] }.encode();
        b[3..7].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Tree::decode(&b).is_err());
        // a device index past the table
        let mut b = Tree { entries: vec![entry("a")] }.encode();
        let at = 1 + 2 + 8 + 4 + 2 + 1 + 1 + 12 + 8 + 36 + 8;
        assert_eq!(u16::from_le_bytes([b[at], b[at + 1]]), 0);
        b[at] = 1;
        assert!(Tree::decode(&b).is_err());
        assert!(Tree::decode(&[3, 0, 0, 0, 0]).is_err(), "unknown version");
    }

    #[test]
    fn file_nodes_and_levels_are_bounded() {
        let n = FileNode { level: 7, entries: vec![ObjectId::ZERO] };
        assert!(FileNode::decode(&n.encode()).is_err());
        let n = FileNode { level: 0, entries: vec![] };
        assert!(FileNode::decode(&n.encode()).is_err());
        let n = FileNode { level: 0, entries: vec![ObjectId::ZERO; 257] };
        assert!(FileNode::decode(&n.encode()).is_err());
        assert_eq!(node_span(6), 1 << 56);
        assert_eq!(node_span(7), u64::MAX); // saturates, never 0
        assert_eq!(levels_for(MAX_FILE_SIZE / MIN_BLOCK_SIZE + 1), MAX_LEVEL);
        let mut e = entry("f");
        e.size = 300 * 4096;
        e.levels = 1;
        assert!(e.check_blocks(4096).is_ok());
        e.levels = 0;
        assert!(e.check_blocks(4096).is_err());
        e.content = ObjectId::ZERO; // all holes
        assert!(e.check_blocks(4096).is_ok());
    }

    #[test]
    fn hole_nodes_have_fixed_ids() {
        let l0 = FileNode { level: 0, entries: vec![ObjectId::ZERO; FANOUT] };
        assert_eq!(hole_node(0), ObjectId::of_object(ObjKind::FileNode, &l0.encode()));
        let l1 = FileNode { level: 1, entries: vec![hole_node(0); FANOUT] };
        assert_eq!(hole_node(1), ObjectId::of_object(ObjKind::FileNode, &l1.encode()));
        assert!(is_hole(&ObjectId::ZERO, 3) && is_hole(&hole_node(2), 2) && !is_hole(&hole_node(2), 1));
    }

    #[test]
    fn link_tables_are_checked() {
        let mut t = LinkTable::new();
        t.insert(b"a/b".to_vec(), 5);
        t.insert(b"c".to_vec(), 5);
        assert_eq!(decode_links(&encode_links(&t)), Ok(t));
        for bad in [&b""[..], b"a//b", b"../x", b"a/./b", b"/a", b"a\0"] {
            let mut t = LinkTable::new();
            t.insert(bad.to_vec(), 1);
            assert!(decode_links(&encode_links(&t)).is_err(), "{bad:?}");
        }
        let mut b = encode_links(&LinkTable::new());
        b[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_links(&b).is_err());
    }

    #[test]
    fn ids_in_hex() {
        let id = ObjectId::of(b"hello");
        assert_eq!(ObjectId::from_hex(&id.hex()), Some(id));
        assert_eq!(ObjectId::from_hex("zz"), None);
    }
}
