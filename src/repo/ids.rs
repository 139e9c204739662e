//! Typed ids, parsed once at the edge: `ObjectId` (blake3 of an object's
//! kind and bytes; hex in JSON), `TreeId` (an object id known to name a
//! directory tree), `PackId` (a pack's name) and `SnapshotId`
//! (a snapshot record's name), each made only from a valid one, and
//! `ObjKind`.

use std::fmt;

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

    /// Whether `name` is the name of a file named by its contents (a pack,
    /// a record, a deletion plan) holding `bytes`.
    pub fn names(name: &str, bytes: &[u8]) -> bool {
        ObjectId::of(bytes).hex() == name
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

/// In JSON (snapshot records), an id is its hex string; anything else is
/// refused when the record is read.
impl serde::Serialize for ObjectId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.hex())
    }
}

impl<'de> serde::Deserialize<'de> for ObjectId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ObjectId, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        ObjectId::from_hex(&s).ok_or_else(|| serde::de::Error::custom("not an object id (64 hex digits)"))
    }
}

/// The id of a directory tree object. Made only where a tree is known to
/// be one: by writing a tree ([`crate::repo::objstore::Objects::put_tree`]),
/// from a snapshot record's top tree, or from a directory entry
/// ([`crate::repo::objects::Entry::subtree`]); so a block list or a blob
/// id is never read as a tree by mistake. In JSON it is the hex string.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct TreeId(ObjectId);

impl TreeId {
    /// The tree id inside a directory entry or a record; callers know the
    /// object is a tree (its kind is checked again when it is read).
    pub(crate) fn from_dir(id: ObjectId) -> TreeId {
        TreeId(id)
    }

    pub fn id(&self) -> ObjectId {
        self.0
    }

    pub fn short(&self) -> String {
        self.0.short()
    }
}

impl fmt::Display for TreeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for TreeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// The name of a pack: the hex blake3 of its bytes. Made only from a name
/// that is one (a file in `packs/` that is not is no pack of ours).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PackId(String);

impl PackId {
    pub fn parse(name: &str) -> Option<PackId> {
        ObjectId::from_hex(name).map(PackId::from_id)
    }

    pub fn from_id(id: ObjectId) -> PackId {
        PackId(id.hex())
    }

    pub fn id(&self) -> ObjectId {
        ObjectId::from_hex(&self.0).expect("a PackId is made from a valid name")
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for PackId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PackId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for PackId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0[..12])
    }
}

/// The name of a snapshot record: the hex blake3 of its JSON. Made only
/// from a name that is one; in JSON (a record's parent, `--json` output)
/// it is that hex string.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SnapshotId(String);

impl SnapshotId {
    pub fn parse(name: &str) -> Option<SnapshotId> {
        ObjectId::from_hex(name).map(SnapshotId::of_id)
    }

    /// The id of a record with these bytes.
    pub fn of_record(bytes: &[u8]) -> SnapshotId {
        SnapshotId::of_id(ObjectId::of(bytes))
    }

    fn of_id(id: ObjectId) -> SnapshotId {
        SnapshotId(id.hex())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 12 hex digits, as `list` shows them.
    pub fn short(&self) -> &str {
        &self.0[..12]
    }
}

impl std::ops::Deref for SnapshotId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.short())
    }
}

impl serde::Serialize for SnapshotId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for SnapshotId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<SnapshotId, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        SnapshotId::parse(&s).ok_or_else(|| serde::de::Error::custom("not a snapshot id (64 hex digits)"))
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
