//! A record: what changed about one backing inode in the epoch (flags,
//! dirty blocks, growth), and how it is kept in sled.

use crate::tracker::blockset::BlockSet;
use serde::{Deserialize, Serialize};
use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};

pub const META: u8 = 1;
pub const FULL: u8 = 2;
pub const CREATED: u8 = 4;
pub const ENTRIES: u8 = 8;
pub const DESCENDANT: u8 = 16;
/// The inode got a name this epoch (moved, or a new hard link): the next
/// snapshot may find it where the previous one had nothing, and read it
/// whole (copy-before-write must then save every block it changes).
pub const RENAMED: u8 = 32;

/// How far before the last durable point the mount-time scan looks (ns).
pub const SCAN_MARGIN_NS: i128 = 1_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    File,
    Dir,
    Other,
}

impl Kind {
    pub fn from_mode(mode: u32) -> Kind {
        match mode & libc::S_IFMT {
            libc::S_IFREG => Kind::File,
            libc::S_IFDIR => Kind::Dir,
            _ => Kind::Other,
        }
    }
    pub(crate) fn code(self) -> u8 {
        match self {
            Kind::File => 0,
            Kind::Dir => 1,
            Kind::Other => 2,
        }
    }
    pub(crate) fn from_code(c: u8) -> Option<Kind> {
        match c {
            0 => Some(Kind::File),
            1 => Some(Kind::Dir),
            2 => Some(Kind::Other),
            _ => None,
        }
    }
}

/// What changed about one inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub kind: Kind,
    pub flags: u8,
    pub parent: u64,
    pub name: OsString,
    pub size: u64,
    pub grown_from: Option<u64>,
    pub blocks: BlockSet,
}

impl Record {
    pub(crate) fn new(kind: Kind, parent: u64, name: OsString) -> Record {
        Record { kind, flags: 0, parent, name, size: 0, grown_from: None, blocks: BlockSet::new() }
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(40 + self.name.len());
        v.push(1u8);
        v.push(self.kind.code());
        v.push(self.flags);
        v.extend_from_slice(&self.parent.to_le_bytes());
        v.extend_from_slice(&self.size.to_le_bytes());
        v.extend_from_slice(&self.grown_from.unwrap_or(u64::MAX).to_le_bytes());
        v.extend_from_slice(&(self.name.len() as u32).to_le_bytes());
        v.extend_from_slice(self.name.as_bytes());
        v
    }

    pub(crate) fn decode(b: &[u8]) -> Option<Record> {
        if b.len() < 31 || b[0] != 1 {
            return None;
        }
        let kind = Kind::from_code(b[1])?;
        let u = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
        let nlen = u32::from_le_bytes(b[27..31].try_into().unwrap()) as usize;
        let name = b.get(31..31 + nlen)?.to_vec();
        let g = u(19);
        Some(Record {
            kind,
            flags: b[2],
            parent: u(3),
            size: u(11),
            grown_from: if g == u64::MAX { None } else { Some(g) },
            name: OsString::from_vec(name),
            blocks: BlockSet::new(),
        })
    }

    /// The union of an older record and a newer one for the same inode.
    pub fn merge(old: &Record, new: &Record) -> Record {
        let mut m = new.clone();
        m.flags |= old.flags;
        m.blocks.union_with(&old.blocks);
        m.grown_from = match (old.grown_from, new.grown_from) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        m
    }

    /// Whether this record says anything beyond "a descendant changed".
    pub fn is_dirty(&self) -> bool {
        self.flags & !DESCENDANT != 0 || !self.blocks.is_empty() || self.grown_from.is_some()
    }

    /// Dirty blocks as sorted `start..end` runs, clipped to the current size.
    pub fn dirty_ranges(&self, bs: u64) -> Vec<(u64, u64)> {
        if self.kind != Kind::File {
            return Vec::new();
        }
        let n = self.size.div_ceil(bs);
        if self.flags & FULL != 0 {
            return if n > 0 { vec![(0, n)] } else { Vec::new() };
        }
        let tail = self.grown_from.map(|g| g.min(n)).unwrap_or(n);
        let mut out: Vec<(u64, u64)> = self
            .blocks
            .ranges()
            .into_iter()
            .filter_map(|(s, e)| if s < tail { Some((s, e.min(tail))) } else { None })
            .collect();
        if tail < n {
            match out.last_mut() {
                Some(last) if last.1 == tail => last.1 = n,
                _ => out.push((tail, n)),
            }
        }
        out
    }

    /// (blocks, bytes) that are dirty.
    pub fn dirty_amount(&self, bs: u64) -> (u64, u64) {
        let ranges = self.dirty_ranges(bs);
        let blocks: u64 = ranges.iter().map(|(s, e)| e - s).sum();
        let mut bytes = blocks * bs;
        let n = self.size.div_ceil(bs);
        if let Some(&(_, e)) = ranges.last() {
            if e == n && !self.size.is_multiple_of(bs) {
                bytes -= bs - self.size % bs;
            }
        }
        (blocks, bytes)
    }
}
