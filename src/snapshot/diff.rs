//! What changed between two snapshots: trees compared by id, descending
//! only where ids differ; files by their block lists.

use super::*;
use crate::repo::objects::{self, Entry, EntryKind, Time, Tree, TreeId};
use crate::repo::objstore::{ObjError, Objects};
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
pub fn root_entry(objects: &Objects, top: TreeId) -> Result<Entry, ObjError> {
    let t = objects.tree(&top)?;
    t.get(b".")
        .cloned()
        .ok_or(ObjError::Decode { id: top.id(), err: objects::DecodeError { what: "snapshot top tree" } })
}

/// Differences between two snapshots (top trees), visiting only subtrees
/// whose ids differ.
pub fn diff(objects: &Objects, a: TreeId, b: TreeId, bs: u64) -> Result<Vec<DiffEntry>, ObjError> {
    let mut out = Vec::new();
    let (ra, rb) = (root_entry(objects, a)?, root_entry(objects, b)?);
    if (ra.mode, ra.uid, ra.gid, &ra.xattrs) != (rb.mode, rb.uid, rb.gid, &rb.xattrs) {
        out.push(DiffEntry { path: ".".into(), change: "modified".into(), kind: "dir".into(), bytes: 0 });
    }
    if let (Some(ta), Some(tb)) = (ra.subtree(), rb.subtree()) {
        diff_trees(objects, ta, tb, b"", bs, &mut out)?;
    }
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

/// The differences below the trees `a` and `b` (at `path`), descending
/// only where ids differ. Depth-first in name order; the directories being
/// compared are kept on the heap (any depth), one path buffer for all.
fn diff_trees(
    objects: &Objects,
    a: TreeId,
    b: TreeId,
    path: &[u8],
    bs: u64,
    out: &mut Vec<DiffEntry>,
) -> Result<(), ObjError> {
    /// Two directories being compared, and how far.
    struct Pair {
        ta: Tree,
        tb: Tree,
        i: usize,
        j: usize,
        path_len: usize,
    }
    let load = |a: TreeId, b: TreeId, path_len: usize| -> Result<Pair, ObjError> {
        let ta = if a.id().is_zero() { Tree::default() } else { objects.tree(&a)? };
        let tb = if b.id().is_zero() { Tree::default() } else { objects.tree(&b)? };
        Ok(Pair { ta, tb, i: 0, j: 0, path_len })
    };
    if a == b {
        return Ok(());
    }
    let mut path = path.to_vec();
    let mut stack = vec![load(a, b, path.len())?];
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
    while let Some(f) = stack.last_mut() {
        path.truncate(f.path_len);
        let ea = f.ta.entries.get(f.i);
        let eb = f.tb.entries.get(f.j);
        let ord = match (ea, eb) {
            (None, None) => {
                stack.pop();
                continue;
            }
            (Some(x), Some(y)) => x.name.cmp(&y.name),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        let name = match ord {
            std::cmp::Ordering::Less => &ea.unwrap().name,
            _ => &eb.unwrap().name,
        };
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(name);
        let mut below = None;
        match ord {
            std::cmp::Ordering::Less => {
                let e = ea.unwrap();
                out.push(DiffEntry {
                    path: show(&path),
                    change: "removed".into(),
                    kind: e.kind.name().into(),
                    bytes: size_of(e),
                });
                f.i += 1;
            }
            std::cmp::Ordering::Greater => {
                let e = eb.unwrap();
                out.push(DiffEntry {
                    path: show(&path),
                    change: "added".into(),
                    kind: e.kind.name().into(),
                    bytes: size_of(e),
                });
                f.j += 1;
            }
            std::cmp::Ordering::Equal => {
                let (x, y) = (ea.unwrap(), eb.unwrap());
                let p = &path;
                if x.kind != y.kind {
                    out.push(DiffEntry {
                        path: show(p),
                        change: "removed".into(),
                        kind: x.kind.name().into(),
                        bytes: size_of(x),
                    });
                    out.push(DiffEntry {
                        path: show(p),
                        change: "added".into(),
                        kind: y.kind.name().into(),
                        bytes: size_of(y),
                    });
                } else if x.kind == EntryKind::Dir {
                    let meta_changed = (x.mode, x.uid, x.gid, &x.xattrs) != (y.mode, y.uid, y.gid, &y.xattrs);
                    if meta_changed {
                        out.push(DiffEntry { path: show(p), change: "modified".into(), kind: "dir".into(), bytes: 0 });
                    }
                    if x.content != y.content {
                        below = x.subtree().zip(y.subtree());
                    }
                } else {
                    let mut xs = x.clone();
                    let mut ys = y.clone();
                    // inode numbers, devices, link counts, allocation, ctime and
                    // atime do not make a change
                    xs.ino = 0;
                    ys.ino = 0;
                    xs.nlink = 0;
                    ys.nlink = 0;
                    xs.ctime = Time::default();
                    ys.ctime = Time::default();
                    xs.atime = Time::default();
                    ys.atime = Time::default();
                    (xs.dev, ys.dev, xs.blocks, ys.blocks) = (None, None, None, None);
                    if xs != ys {
                        let bytes = if x.kind == EntryKind::File { changed_file_bytes(objects, x, y, bs)? } else { 0 };
                        out.push(DiffEntry {
                            path: show(p),
                            change: "modified".into(),
                            kind: x.kind.name().into(),
                            bytes,
                        });
                    }
                }
                f.i += 1;
                f.j += 1;
            }
        }
        if let Some((x, y)) = below {
            stack.push(load(x, y, path.len())?);
        }
    }
    Ok(())
}
