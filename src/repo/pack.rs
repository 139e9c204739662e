//! Pack files: many objects in one write-once file, self-describing so the
//! index can be rebuilt from the packs alone.
//!
//! ```text
//! "SNAPFSP1"                                   8 bytes: magic and pack format 1
//! object data ...                              each zstd-compressed (or raw, see codec)
//! salt                                         32 random bytes no object claims
//! trailer: u32 count, then per object:         50 bytes each
//!     id [32] | kind u8 | codec u8 | offset u64 | stored u32 | raw u32
//! footer: trailer offset u64 | "SNAPFSPE"      16 bytes
//! ```
//! A pack is named by the blake3 hash of all its bytes. Objects are verified
//! against their id (blake3 of kind byte and raw bytes) every time they are read.
//!
//! In an encrypted repository a pack begins with "SNAPFSP2"; each object's
//! stored bytes are its (compressed) bytes sealed (`crypto`: `stored` counts
//! the sealed form), the trailer is sealed as a whole, and ids are keyed.
//! The footer stays plain: it says only where the trailer starts.

use thiserror::Error;

use crate::repo::crypto::{self, CryptoError, Keys, PackSealer};
use crate::repo::objects::{ObjKind, ObjectId};

pub const MAGIC: &[u8; 8] = b"SNAPFSP1";
/// The magic of a pack of an encrypted repository.
pub const SEALED_MAGIC: &[u8; 8] = b"SNAPFSP2";
pub const FOOTER_MAGIC: &[u8; 8] = b"SNAPFSPE";
const ENTRY_LEN: usize = 50;
/// Raw objects are stored as they are.
pub const CODEC_RAW: u8 = 0;
pub const CODEC_ZSTD: u8 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackEntry {
    pub id: ObjectId,
    pub kind: ObjKind,
    pub codec: u8,
    pub offset: u64,
    pub stored: u32,
    pub raw: u32,
}

#[derive(Debug, Error)]
pub enum PackError {
    #[error("pack {0}: not a snapfs pack or truncated")]
    Malformed(String),
    #[error("object {id}: stored bytes do not match its hash (damaged pack {pack})")]
    HashMismatch { id: ObjectId, pack: String },
    #[error("object {id} in pack {pack}: cannot decompress: {msg}")]
    Decompress { id: ObjectId, pack: String, msg: String },
    #[error(transparent)]
    Sealed(#[from] CryptoError),
    #[error("pack {0} is encrypted, and this repository is not (or no key was given)")]
    Encrypted(String),
    #[error("pack {0} is not encrypted, in an encrypted repository: not written by snapfs for it")]
    NotEncrypted(String),
}

/// Accumulates objects for one pack.
pub struct PackWriter {
    buf: Vec<u8>,
    entries: Vec<PackEntry>,
    /// One compression context for all objects (creating one per object
    /// showed in profiles).
    zstd: Option<zstd::bulk::Compressor<'static>>,
    /// For an encrypted repository: seals each object and the trailer.
    sealer: Option<PackSealer>,
}

impl PackWriter {
    /// A writer for a plain pack, or (with keys) a sealed one.
    pub fn new(keys: Option<&std::sync::Arc<Keys>>) -> PackWriter {
        let sealer = keys.map(|k| k.pack_sealer());
        let magic = if sealer.is_some() { SEALED_MAGIC } else { MAGIC };
        PackWriter { buf: magic.to_vec(), entries: Vec::new(), zstd: zstd::bulk::Compressor::new(3).ok(), sealer }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Add an object; returns the bytes it takes in the pack.
    pub fn add(&mut self, id: ObjectId, kind: ObjKind, raw: &[u8]) -> u32 {
        let compressed = match &mut self.zstd {
            Some(z) => z.compress(raw).ok(),
            None => zstd::bulk::compress(raw, 3).ok(),
        }
        .filter(|c| c.len() < raw.len());
        let (codec, data) = match &compressed {
            Some(c) => (CODEC_ZSTD, c.as_slice()),
            None => (CODEC_RAW, raw),
        };
        let sealed = self.sealer.as_ref().map(|s| s.seal(kind, &id, data));
        let data = sealed.as_deref().unwrap_or(data);
        let offset = self.buf.len() as u64;
        self.buf.extend_from_slice(data);
        let e = PackEntry { id, kind, codec, offset, stored: data.len() as u32, raw: raw.len() as u32 };
        self.entries.push(e);
        e.stored
    }

    /// Add an object as it is stored in another pack (prune copies objects
    /// without recompressing them). The caller has verified it.
    pub fn add_encoded(&mut self, e: &PackEntry, stored: &[u8]) {
        let offset = self.buf.len() as u64;
        self.buf.extend_from_slice(stored);
        self.entries.push(PackEntry { offset, ..*e });
    }

    /// The finished pack: its name, bytes and entries.
    pub fn finish(mut self) -> (crate::repo::objects::PackId, Vec<u8>, Vec<PackEntry>) {
        // A salt no object claims: every pack written has a name of its own,
        // even one holding exactly the objects of another (a host storing
        // again, in a shared repository, the bytes of a pack a prune has
        // condemned must not write that pack's name; a repaired pack is
        // never its damaged original).
        self.buf.extend_from_slice(crate::util::random_id().as_bytes());
        let trailer_off = self.buf.len() as u64;
        let mut t = Vec::with_capacity(4 + self.entries.len() * ENTRY_LEN);
        t.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for e in &self.entries {
            t.extend_from_slice(&e.id.0);
            t.push(e.kind as u8);
            t.push(e.codec);
            t.extend_from_slice(&e.offset.to_le_bytes());
            t.extend_from_slice(&e.stored.to_le_bytes());
            t.extend_from_slice(&e.raw.to_le_bytes());
        }
        match &self.sealer {
            Some(s) => self.buf.extend_from_slice(&s.keys().seal_trailer(&t)),
            None => self.buf.extend_from_slice(&t),
        }
        self.buf.extend_from_slice(&trailer_off.to_le_bytes());
        self.buf.extend_from_slice(FOOTER_MAGIC);
        let name = crate::repo::objects::PackId::from_id(ObjectId::of(&self.buf));
        (name, self.buf, self.entries)
    }
}

impl PackEntry {
    /// Whether the entry is within the format's limits: a known codec, a
    /// raw size its kind may have, stored bytes no more than the raw ones
    /// (zstd is kept only when smaller; a sealed object adds its fixed
    /// overhead), all of it in the pack before `trailer_off`. Every decoder
    /// checks this before it allocates.
    pub fn valid(&self, trailer_off: u64, sealed: bool) -> bool {
        let inner = if sealed {
            (self.stored as usize).checked_sub(crypto::overhead(self.kind))
        } else {
            Some(self.stored as usize)
        };
        let Some(inner) = inner else { return false };
        let sizes = match self.codec {
            CODEC_RAW => inner == self.raw as usize,
            CODEC_ZSTD => inner < self.raw as usize,
            _ => false,
        };
        sizes
            && self.raw as usize <= crate::repo::objects::max_object_bytes(self.kind)
            && self.offset >= MAGIC.len() as u64
            && self.offset.checked_add(self.stored as u64).is_some_and(|end| end <= trailer_off)
    }
}

/// Where the trailer starts, from the last 16 bytes of a pack.
pub fn parse_footer(pack: &str, footer: &[u8], size: u64) -> Result<u64, PackError> {
    if footer.len() != 16 || &footer[8..] != FOOTER_MAGIC {
        return Err(PackError::Malformed(pack.into()));
    }
    let off = u64::from_le_bytes(footer[..8].try_into().unwrap());
    if off < MAGIC.len() as u64 || off.checked_add(4 + 16).is_none_or(|end| end > size) {
        return Err(PackError::Malformed(pack.into()));
    }
    Ok(off)
}

/// The entries of a pack, from its trailer (without the footer), opened
/// with the repository's keys when it has them.
pub fn parse_trailer(keys: Option<&Keys>, pack: &str, t: &[u8], trailer_off: u64) -> Result<Vec<PackEntry>, PackError> {
    let bad = || PackError::Malformed(pack.into());
    let opened;
    let t = match keys {
        Some(k) => {
            opened = k.open_trailer(t, pack)?;
            &opened[..]
        }
        None => t,
    };
    if t.len() < 4 {
        return Err(bad());
    }
    let n = u32::from_le_bytes(t[..4].try_into().unwrap()) as usize;
    if n.checked_mul(ENTRY_LEN).and_then(|x| x.checked_add(4)) != Some(t.len()) {
        return Err(bad());
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let e = &t[4 + i * ENTRY_LEN..4 + (i + 1) * ENTRY_LEN];
        let kind = ObjKind::from_u8(e[32]).ok_or_else(bad)?;
        let entry = PackEntry {
            id: ObjectId(e[..32].try_into().unwrap()),
            kind,
            codec: e[33],
            offset: u64::from_le_bytes(e[34..42].try_into().unwrap()),
            stored: u32::from_le_bytes(e[42..46].try_into().unwrap()),
            raw: u32::from_le_bytes(e[46..50].try_into().unwrap()),
        };
        if !entry.valid(trailer_off, keys.is_some()) {
            return Err(bad());
        }
        out.push(entry);
    }
    Ok(out)
}

thread_local! {
    /// One decompression context per thread (creating one per object showed in profiles).
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        std::cell::RefCell::new(zstd::bulk::Decompressor::new().ok());
}

/// Which form a pack is in, from its first 8 bytes, checked against the
/// repository's (sealed when it has keys).
pub fn check_magic(pack: &str, head: &[u8], sealed: bool) -> Result<(), PackError> {
    match (head, sealed) {
        (h, false) if h == MAGIC => Ok(()),
        (h, true) if h == SEALED_MAGIC => Ok(()),
        (h, false) if h == SEALED_MAGIC => Err(PackError::Encrypted(pack.into())),
        (h, true) if h == MAGIC => Err(PackError::NotEncrypted(pack.into())),
        _ => Err(PackError::Malformed(pack.into())),
    }
}

/// Decode the stored bytes of an object (opening them with the
/// repository's keys when it has them) and check them against its id.
pub fn decode_object(keys: Option<&Keys>, pack: &str, e: &PackEntry, stored: &[u8]) -> Result<Vec<u8>, PackError> {
    // (an entry from the index, or a trailer: never allocate what it claims unchecked)
    if !e.valid(u64::MAX, keys.is_some()) || stored.len() != e.stored as usize {
        return Err(PackError::Malformed(pack.into()));
    }
    let opened;
    let stored = match keys {
        Some(k) => {
            opened = k.open_object(e.kind, &e.id, stored, &|| format!("object {} in pack {pack}", e.id))?;
            &opened[..]
        }
        None => stored,
    };
    let raw = match e.codec {
        CODEC_RAW => stored.to_vec(),
        CODEC_ZSTD => DECOMPRESSOR
            .with(|d| match &mut *d.borrow_mut() {
                Some(d) => d.decompress(stored, e.raw as usize),
                None => zstd::bulk::decompress(stored, e.raw as usize),
            })
            .map_err(|err| PackError::Decompress { id: e.id, pack: pack.into(), msg: err.to_string() })?,
        _ => return Err(PackError::Malformed(pack.into())),
    };
    let id = match keys {
        Some(k) => k.id_of(e.kind, &raw),
        None => ObjectId::of_object(e.kind, &raw),
    };
    if raw.len() != e.raw as usize || id != e.id {
        return Err(PackError::HashMismatch { id: e.id, pack: pack.into() });
    }
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_round_trip_and_damage() {
        let mut w = PackWriter::new(None);
        let a = vec![7u8; 10_000];
        let b = b"tiny".to_vec();
        w.add(ObjectId::of_object(ObjKind::Blob, &a), ObjKind::Blob, &a);
        w.add(ObjectId::of_object(ObjKind::Tree, &b), ObjKind::Tree, &b);
        let (name, bytes, entries) = w.finish();
        assert_eq!(name.as_str(), ObjectId::of(&bytes).hex());
        let size = bytes.len() as u64;
        let off = parse_footer(&name, &bytes[bytes.len() - 16..], size).unwrap();
        let parsed = parse_trailer(None, &name, &bytes[off as usize..bytes.len() - 16], off).unwrap();
        assert_eq!(parsed, entries);
        assert_eq!(parsed[0].codec, CODEC_ZSTD);
        assert_eq!(parsed[1].codec, CODEC_RAW);
        for (e, want) in parsed.iter().zip([&a, &b]) {
            let s = &bytes[e.offset as usize..(e.offset + e.stored as u64) as usize];
            assert_eq!(&decode_object(None, &name, e, s).unwrap(), want);
        }
        // a flipped byte is caught
        let e = parsed[1];
        let mut s = bytes[e.offset as usize..(e.offset + e.stored as u64) as usize].to_vec();
        s[0] ^= 1;
        assert!(matches!(decode_object(None, &name, &e, &s), Err(PackError::HashMismatch { .. })));
        // a truncated pack is caught
        assert!(parse_footer(&name, &bytes[bytes.len() - 20..bytes.len() - 4], size - 4).is_err());
    }

    #[test]
    fn sealed_packs_round_trip_and_hide_their_contents() {
        let keys = std::sync::Arc::new(Keys::generate("r"));
        let mut w = PackWriter::new(Some(&keys));
        let a = b"a recognisable plaintext a recognisable plaintext a recognisable plaintext".repeat(50);
        let b = b"tree bytes".to_vec();
        let (ia, ib) = (keys.id_of(ObjKind::Blob, &a), keys.id_of(ObjKind::Tree, &b));
        w.add(ia, ObjKind::Blob, &a);
        w.add(ib, ObjKind::Tree, &b);
        let (name, bytes, entries) = w.finish();
        assert!(bytes.starts_with(SEALED_MAGIC));
        check_magic(&name, &bytes[..8], true).unwrap();
        assert!(matches!(check_magic(&name, &bytes[..8], false), Err(PackError::Encrypted(_))));
        // nothing of the plaintext, the ids or the trailer shows
        for needle in [&b"recognisable"[..], &b"tree bytes"[..], &ia.0[..16], &ib.0[..16]] {
            assert!(!bytes.windows(needle.len()).any(|w| w == needle), "{needle:?} shows");
        }
        let size = bytes.len() as u64;
        let off = parse_footer(&name, &bytes[bytes.len() - 16..], size).unwrap();
        let t = &bytes[off as usize..bytes.len() - 16];
        assert!(parse_trailer(None, &name, t, off).is_err());
        let parsed = parse_trailer(Some(&keys), &name, t, off).unwrap();
        assert_eq!(parsed, entries);
        for (e, want) in parsed.iter().zip([&a, &b]) {
            let s = &bytes[e.offset as usize..(e.offset + e.stored as u64) as usize];
            assert_eq!(&decode_object(Some(&keys), &name, e, s).unwrap(), want);
            let mut bad = s.to_vec();
            let at = bad.len() / 2;
            bad[at] ^= 4;
            assert!(matches!(decode_object(Some(&keys), &name, e, &bad), Err(PackError::Sealed(_))));
        }
        // another repository's keys open nothing
        let other = Keys::generate("r");
        assert!(parse_trailer(Some(&other), &name, t, off).is_err());
    }
}
