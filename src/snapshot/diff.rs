//! What changed between two snapshots: trees compared by id, descending
//! only where ids differ; files by their block lists.

use super::*;
use crate::repo::objects::{self, Entry, EntryKind, ObjectId, Time, Tree};
use crate::repo::objstore::{ObjError, Objects};
use crate::util;
use serde::{Deserialize, Serialize};

// ---------------------------------------------------------------------------
// comparing snapshots

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DiffEntry {
    pub path: String,
    /// "added", "removed", "modified"
    pub change: String,
    pub kind: String,
    /// Bytes that differ (files: changed blocks, clipped to the size).
    pub bytes: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DiffReport {
    pub from: String,
    pub to: String,
    pub added: u64,
    pub removed: u64,
    pub modified: u64,
    pub changed_bytes: u64,
    pub entries: Vec<DiffEntry>,
}

/// The root directory entry of a snapshot's top tree.
pub fn root_entry(objects: &Objects, top: ObjectId) -> Result<Entry, ObjError> {
    let t = objects.tree(&top)?;
    t.get(b".").cloned().ok_or(ObjError::Decode { id: top, err: objects::DecodeError { what: "snapshot top tree" } })
}

/// Differences between two snapshots (top trees), visiting only subtrees
/// whose ids differ.
pub fn diff(objects: &Objects, a: ObjectId, b: ObjectId, bs: u64) -> Result<Vec<DiffEntry>, ObjError> {
    let mut out = Vec::new();
    let (ra, rb) = (root_entry(objects, a)?, root_entry(objects, b)?);
    if (ra.mode, ra.uid, ra.gid, &ra.xattrs) != (rb.mode, rb.uid, rb.gid, &rb.xattrs) {
        out.push(DiffEntry { path: ".".into(), change: "modified".into(), kind: "dir".into(), bytes: 0 });
    }
    diff_trees(objects, ra.content, rb.content, b"", bs, &mut out)?;
    Ok(out)
}

fn changed_file_bytes(objects: &Objects, a: &Entry, b: &Entry, bs: u64) -> Result<u64, ObjError> {
    if a.content == b.content {
        return Ok(a.size.abs_diff(b.size));
    }
    let x = entry_blocks(objects, a, bs)?;
    let y = entry_blocks(objects, b, bs)?;
    let n = x.len().max(y.len());
    let mut bytes = 0;
    for i in 0..n {
        if x.get(i) != y.get(i) {
            let start = i as u64 * bs;
            let end = ((i as u64 + 1) * bs).min(a.size.max(b.size));
            bytes += end.saturating_sub(start);
        }
    }
    Ok(bytes)
}

fn diff_trees(
    objects: &Objects,
    a: ObjectId,
    b: ObjectId,
    path: &[u8],
    bs: u64,
    out: &mut Vec<DiffEntry>,
) -> Result<(), ObjError> {
    if a == b {
        return Ok(());
    }
    let ta = if a.is_zero() { Tree::default() } else { objects.tree(&a)? };
    let tb = if b.is_zero() { Tree::default() } else { objects.tree(&b)? };
    let mut i = 0;
    let mut j = 0;
    let show = |p: &[u8]| String::from_utf8_lossy(p).into_owned();
    let size_of = |e: &Entry| {
        if e.kind == EntryKind::Dir {
            e.totals.bytes
        } else if e.kind == EntryKind::File {
            e.size
        } else {
            0
        }
    };
    while i < ta.entries.len() || j < tb.entries.len() {
        let ea = ta.entries.get(i);
        let eb = tb.entries.get(j);
        let ord = match (ea, eb) {
            (Some(x), Some(y)) => x.name.cmp(&y.name),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        match ord {
            std::cmp::Ordering::Less => {
                let e = ea.unwrap();
                out.push(DiffEntry {
                    path: show(&util::join_rel(path, &e.name)),
                    change: "removed".into(),
                    kind: e.kind.name().into(),
                    bytes: size_of(e),
                });
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                let e = eb.unwrap();
                out.push(DiffEntry {
                    path: show(&util::join_rel(path, &e.name)),
                    change: "added".into(),
                    kind: e.kind.name().into(),
                    bytes: size_of(e),
                });
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                let (x, y) = (ea.unwrap(), eb.unwrap());
                let p = util::join_rel(path, &x.name);
                if x.kind != y.kind {
                    out.push(DiffEntry {
                        path: show(&p),
                        change: "removed".into(),
                        kind: x.kind.name().into(),
                        bytes: size_of(x),
                    });
                    out.push(DiffEntry {
                        path: show(&p),
                        change: "added".into(),
                        kind: y.kind.name().into(),
                        bytes: size_of(y),
                    });
                } else if x.kind == EntryKind::Dir {
                    let meta_changed = (x.mode, x.uid, x.gid, &x.xattrs) != (y.mode, y.uid, y.gid, &y.xattrs);
                    if meta_changed {
                        out.push(DiffEntry { path: show(&p), change: "modified".into(), kind: "dir".into(), bytes: 0 });
                    }
                    diff_trees(objects, x.content, y.content, &p, bs, out)?;
                } else {
                    let mut xs = x.clone();
                    let mut ys = y.clone();
                    // inode numbers, devices, link counts, allocation, ctime and
                    // atime do not make a change
                    xs.ino = 0;
                    ys.ino = 0;
                    (xs.dev, ys.dev, xs.blocks, ys.blocks) = (None, None, None, None);
                    xs.nlink = 0;
                    ys.nlink = 0;
                    xs.ctime = Time::default();
                    ys.ctime = Time::default();
                    xs.atime = Time::default();
                    ys.atime = Time::default();
                    if xs != ys {
                        let bytes = if x.kind == EntryKind::File { changed_file_bytes(objects, x, y, bs)? } else { 0 };
                        out.push(DiffEntry {
                            path: show(&p),
                            change: "modified".into(),
                            kind: x.kind.name().into(),
                            bytes,
                        });
                    }
                }
                i += 1;
                j += 1;
            }
        }
    }
    Ok(())
}
