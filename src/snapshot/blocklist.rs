//! A file's block list in a snapshot: a tree of file nodes over blob ids
//! (holes are zero ids), built by reusing the previous list except for
//! dirty blocks, and read back block by block.

use super::*;
use crate::repo::objects::{self, Entry, FileNode, ObjKind, ObjectId};
use crate::repo::objstore::{ObjError, Objects};

// ---------------------------------------------------------------------------
// file block lists

/// Dirty block ranges, sorted.
pub(crate) struct Dirty<'a>(pub(crate) &'a [(u64, u64)]);

impl Dirty<'_> {
    pub(crate) fn contains(&self, b: u64) -> bool {
        let i = self.0.partition_point(|&(_, e)| e <= b);
        self.0.get(i).is_some_and(|&(s, _)| s <= b)
    }
    fn overlaps(&self, start: u64, end: u64) -> bool {
        let i = self.0.partition_point(|&(_, e)| e <= start);
        self.0.get(i).is_some_and(|&(s, _)| s < end)
    }
}

#[derive(Clone, Copy)]
enum Old {
    None,
    Node(ObjectId),
    /// A node the old tree did not have; its first descendant at the old
    /// root's level is the old root.
    Above,
}

struct FileTree<'a, F: FnMut(u64) -> SnapResult<ObjectId>> {
    objects: &'a Objects,
    dirty: Dirty<'a>,
    old_n: u64,
    new_n: u64,
    old_root: ObjectId,
    old_levels: u8,
    read: F,
}

impl<F: FnMut(u64) -> SnapResult<ObjectId>> FileTree<'_, F> {
    fn build(&mut self, old: Old, level: u8, start: u64) -> SnapResult<ObjectId> {
        let span = objects::node_span(level);
        let end = (start + span).min(self.new_n);
        if let Old::Node(id) = old {
            let old_end = (start + span).min(self.old_n);
            if old_end == end && !self.dirty.overlaps(start, end) {
                return Ok(id);
            }
        }
        let node = match old {
            Old::Node(id) if !id.is_zero() => Some(self.objects.node(&id)?),
            _ => None,
        };
        let mut entries = Vec::new();
        if level == 0 {
            for b in start..end {
                let keep = if b < self.old_n && !self.dirty.contains(b) {
                    node.as_ref().and_then(|n| n.entries.get((b - start) as usize).copied())
                } else {
                    None
                };
                entries.push(match keep {
                    Some(id) => id,
                    None => (self.read)(b)?,
                });
            }
        } else {
            let cspan = objects::node_span(level - 1);
            let count = (end - start).div_ceil(cspan);
            for k in 0..count {
                let child_old = match (&node, old) {
                    (Some(n), _) => n.entries.get(k as usize).map_or(Old::None, |id| Old::Node(*id)),
                    (None, Old::Above) if k == 0 => {
                        if level - 1 == self.old_levels {
                            Old::Node(self.old_root)
                        } else {
                            Old::Above
                        }
                    }
                    _ => Old::None,
                };
                entries.push(self.build(child_old, level - 1, start + k * cspan)?);
            }
        }
        let (id, _) = self.objects.put(ObjKind::FileNode, &FileNode { level, entries }.encode())?;
        Ok(id)
    }
}

/// Build the block list of a file of `new_n` blocks, reusing the old list
/// (`old`: root, levels, blocks) except for `dirty` blocks and blocks past
/// the old end; `read(b)` stores block `b` and gives its id.
pub fn build_block_list(
    objects: &Objects,
    new_n: u64,
    old: Option<(ObjectId, u8, u64)>,
    dirty: &[(u64, u64)],
    read: impl FnMut(u64) -> SnapResult<ObjectId>,
) -> SnapResult<(ObjectId, u8)> {
    if new_n == 0 {
        return Ok((ObjectId::ZERO, 0));
    }
    let levels = objects::levels_for(new_n);
    let (old_root, old_levels, old_n) = old.filter(|o| !o.0.is_zero() && o.2 > 0).unwrap_or((ObjectId::ZERO, 0, 0));
    let mut t = FileTree { objects, dirty: Dirty(dirty), old_n, new_n, old_root, old_levels, read };
    let start_old = if old_n == 0 {
        Old::None
    } else if levels > old_levels {
        Old::Above
    } else {
        // the file shrank to fewer levels: the new root is the old first descendant
        let mut id = old_root;
        for _ in levels..old_levels {
            let n = objects.node(&id)?;
            id = *n.entries.first().unwrap_or(&ObjectId::ZERO);
        }
        Old::Node(id)
    };
    let root = t.build(start_old, levels, 0)?;
    Ok((root, levels))
}

fn bad_list(id: ObjectId, what: &'static str) -> ObjError {
    ObjError::Decode { id, err: objects::DecodeError { what } }
}

/// Visit the block list of file `e` at block size `bs` in order: `f(first
/// block, count, id)` gets each stored block (count 1) and each run of
/// holes (zero id), which is skipped without reading it when a whole node
/// is holes (see [`objects::hole_node`]). The list must have the shape the
/// size needs: exactly `ceil(size / bs)` blocks, every node at its level.
/// Memory: one path of nodes; the cost grows with the stored blocks.
pub fn visit_blocks<E: From<ObjError>>(
    objects: &Objects,
    e: &Entry,
    bs: u64,
    mut f: impl FnMut(u64, u64, ObjectId) -> Result<(), E>,
) -> Result<(), E> {
    let n = e.block_count(bs);
    e.check_blocks(bs).map_err(|err| ObjError::Decode { id: e.content, err })?;
    if e.content.is_zero() {
        return if n > 0 { f(0, n, ObjectId::ZERO) } else { Ok(()) };
    }
    // (a reader that heals, heals the block list too: see Objects::set_healer)
    let node_of = |id: &ObjectId| objects.node_healing(id);
    // (node, level, first block), depth first, children in order
    let mut stack = vec![(e.content, e.levels, 0u64)];
    let mut next = 0u64;
    while let Some((id, level, start)) = stack.pop() {
        if start != next || start >= n {
            return Err(bad_list(e.content, "block list (more blocks than its size)").into());
        }
        let span = objects::node_span(level).min(n - start);
        if objects.is_hole(&id, level) {
            f(start, span, ObjectId::ZERO)?;
            next = start + span;
            continue;
        }
        let node = node_of(&id)?;
        if node.level != level {
            return Err(bad_list(id, "block list (a node at the wrong level)").into());
        }
        if level == 0 {
            for (k, b) in node.entries.iter().enumerate() {
                let blk = start + k as u64;
                if blk >= n {
                    return Err(bad_list(id, "block list (more blocks than its size)").into());
                }
                f(blk, 1, *b)?;
            }
            next = start + node.entries.len() as u64;
        } else {
            let cspan = objects::node_span(level - 1);
            for (k, c) in node.entries.iter().enumerate().rev() {
                stack.push((*c, level - 1, start + k as u64 * cspan));
            }
        }
    }
    if next != n {
        return Err(bad_list(e.content, "block list (fewer blocks than its size)").into());
    }
    Ok(())
}

/// Every block id of file `e`, in order (zero id: a hole): `ceil(size/bs)`
/// of them, checked as in [`visit_blocks`].
pub fn entry_blocks(objects: &Objects, e: &Entry, bs: u64) -> Result<Vec<ObjectId>, ObjError> {
    let mut out = Vec::new();
    visit_blocks(objects, e, bs, |_, count, id| {
        out.extend(std::iter::repeat_n(id, count as usize));
        Ok::<_, ObjError>(())
    })?;
    Ok(out)
}

/// Every block id of a block list (root, levels) in order, as stored
/// (zero id: a hole). Prefer [`entry_blocks`], which checks the list
/// against the file's size.
pub fn block_ids(objects: &Objects, root: ObjectId, levels: u8) -> Result<Vec<ObjectId>, ObjError> {
    if root.is_zero() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    let mut stack = vec![(root, levels)];
    // depth-first, children in order
    while let Some((id, level)) = stack.pop() {
        let n = objects.node(&id)?;
        if n.level != level {
            return Err(bad_list(id, "block list (a node at the wrong level)"));
        }
        if level == 0 {
            out.extend(n.entries);
        } else {
            for c in n.entries.iter().rev() {
                stack.push((*c, level - 1));
            }
        }
    }
    Ok(out)
}

/// The bytes of a file in a snapshot.
pub fn read_file(objects: &Objects, e: &Entry, bs: u64) -> Result<Vec<u8>, ObjError> {
    let mut out = Vec::with_capacity(e.size.min(1 << 30) as usize);
    visit_blocks(objects, e, bs, |b, count, id| {
        out.resize((b * bs) as usize, 0);
        if id.is_zero() {
            out.resize(((b + count) * bs).min(e.size) as usize, 0);
        } else {
            out.extend_from_slice(&objects.get(&id, ObjKind::Blob)?);
        }
        Ok::<_, ObjError>(())
    })?;
    out.resize(e.size as usize, 0);
    Ok(out)
}
