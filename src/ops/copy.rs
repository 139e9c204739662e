//! Copy a repository's history into another (`snapfs init NEW --copy-from
//! OLD`): the way from a plain repository to an encrypted one, or to new
//! keys. Object ids depend on the repository's id key, so nothing can be
//! copied as it is stored: every object is read, put anew (taking the new
//! repository's ids, sealing), and every tree, block list and record that
//! names it is rewritten with the new ids. What two snapshots share is
//! copied once (old id -> new id, remembered); the walks use explicit
//! stacks, so a tree of any depth the format allows is copied.

use std::collections::HashMap;

use crate::repo::objects::SnapshotId;
use crate::repo::objects::{EntryKind, FileNode, ObjKind, ObjectId, Tree, TreeId};
use crate::repo::objstore::{ObjError, Objects};
use crate::snapshot::{self, SnapError, SnapshotInfo};

/// What a copy did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct CopyReport {
    pub snapshots: u64,
    /// Damaged records of the old repository, left behind (named in the log).
    pub skipped: u64,
    pub objects: u64,
    /// Bytes of objects read from the old repository (uncompressed).
    pub bytes: u64,
}

struct Copier<'a> {
    from: &'a Objects,
    to: &'a Objects,
    /// Old id -> new id.
    ids: HashMap<ObjectId, ObjectId>,
    report: CopyReport,
}

impl Copier<'_> {
    fn put(&mut self, old: ObjectId, kind: ObjKind, raw: &[u8]) -> Result<ObjectId, ObjError> {
        let (new, _) = self.to.put(kind, raw)?;
        self.ids.insert(old, new);
        self.report.objects += 1;
        self.report.bytes += raw.len() as u64;
        Ok(new)
    }

    fn blob(&mut self, id: ObjectId) -> Result<ObjectId, ObjError> {
        if id.is_zero() {
            return Ok(id);
        }
        if let Some(n) = self.ids.get(&id) {
            return Ok(*n);
        }
        let raw = self.from.get(&id, ObjKind::Blob)?;
        self.put(id, ObjKind::Blob, &raw)
    }

    /// A block list node at `level` (at most `MAX_LEVEL` deep: recursion is bounded).
    fn node(&mut self, id: ObjectId, level: u8) -> Result<ObjectId, ObjError> {
        if id.is_zero() {
            return Ok(id);
        }
        if self.from.is_hole(&id, level) {
            // stored as the builder stores it (readers skip it by its id)
            let below = if level == 0 { ObjectId::ZERO } else { self.to.hole_node(level - 1) };
            let raw = FileNode { level, entries: vec![below; crate::repo::objects::FANOUT] }.encode();
            let (new, _) = self.to.put(ObjKind::FileNode, &raw)?;
            debug_assert_eq!(new, self.to.hole_node(level));
            return Ok(new);
        }
        if let Some(n) = self.ids.get(&id) {
            return Ok(*n);
        }
        let node = self.from.node(&id)?;
        if node.level != level {
            return Err(ObjError::Decode { id, err: crate::repo::objects::DecodeError { what: "block list node" } });
        }
        let mut entries = Vec::with_capacity(node.entries.len());
        for c in &node.entries {
            entries.push(if level == 0 { self.blob(*c)? } else { self.node(*c, level - 1)? });
        }
        let raw = FileNode { level, entries }.encode();
        self.put(id, ObjKind::FileNode, &raw)
    }

    /// A tree and everything below it, depth first, children before their
    /// parent (an explicit stack: any depth).
    fn tree(&mut self, root: TreeId) -> Result<TreeId, ObjError> {
        enum Step {
            Enter(ObjectId),
            Exit(ObjectId, Tree),
        }
        let mut stack = vec![Step::Enter(root.id())];
        while let Some(step) = stack.pop() {
            match step {
                Step::Enter(id) => {
                    if self.ids.contains_key(&id) {
                        continue;
                    }
                    let t = self.from.tree(&TreeId::from_dir(id))?;
                    let below: Vec<ObjectId> =
                        t.entries.iter().filter(|e| e.kind == EntryKind::Dir).map(|e| e.content).collect();
                    stack.push(Step::Exit(id, t));
                    stack.extend(below.into_iter().filter(|c| !self.ids.contains_key(c)).map(Step::Enter));
                }
                Step::Exit(id, mut t) => {
                    if self.ids.contains_key(&id) {
                        continue;
                    }
                    for e in &mut t.entries {
                        e.content = match e.kind {
                            EntryKind::Dir => *self.ids.get(&e.content).ok_or(ObjError::Missing(e.content))?,
                            EntryKind::File => self.node(e.content, e.levels)?,
                            _ => e.content,
                        };
                    }
                    let raw = t.encode();
                    self.put(id, ObjKind::Tree, &raw)?;
                }
            }
        }
        Ok(TreeId::from_dir(self.ids[&root.id()]))
    }

    fn meta(&mut self, id: ObjectId) -> Result<ObjectId, ObjError> {
        if let Some(n) = self.ids.get(&id) {
            return Ok(*n);
        }
        let raw = self.from.get(&id, ObjKind::Meta)?;
        self.put(id, ObjKind::Meta, &raw)
    }
}

/// Copy every sound snapshot of `from` into `to` (oldest first), each
/// record written after its objects are durable. `each` hears of every
/// snapshot copied.
pub fn copy_history(
    from: &Objects,
    to: &Objects,
    mut each: impl FnMut(&SnapshotInfo, &CopyReport),
) -> Result<CopyReport, SnapError> {
    let mut c = Copier { from, to, ids: HashMap::new(), report: CopyReport::default() };
    let mut new_ids: HashMap<SnapshotId, SnapshotId> = HashMap::new();
    for s in snapshot::list_all(&**from.store())? {
        if let Some(problem) = &s.damaged {
            log::error!("snapshot record {} is damaged ({problem}): not copied", s.id);
            c.report.skipped += 1;
            continue;
        }
        let mut record = s.record.clone();
        record.tree = c.tree(s.record.tree)?;
        record.links = c.meta(s.record.links)?;
        // (a parent that was not copied is no parent of the copy)
        record.parent = s.record.parent.as_ref().and_then(|p| new_ids.get(p)).cloned();
        to.flush()?;
        let info = snapshot::commit(&**to.store(), &record)?;
        new_ids.insert(s.id.clone(), info.id.clone());
        c.report.snapshots += 1;
        each(&info, &c.report);
    }
    Ok(c.report)
}
