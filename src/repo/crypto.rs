//! Encryption at rest: the keys of an encrypted repository and what they
//! seal (objects, pack trailers, snapshot records, the config's MAC).
//!
//! An encrypted repository has four keys, made at random by `init`:
//!
//! - the **id key**: object ids are blake3 keyed with it (over the kind
//!   byte and the bytes), so an id tells nothing about content;
//! - the **metadata key**: AES-256-GCM-SIV over trees, block lists, link
//!   tables, pack trailers, snapshot records, and the config's MAC;
//! - the **data key pair** (X25519): file contents (blobs) are sealed to
//!   its public half. Each pack writer makes an ephemeral key pair; the
//!   pack key is blake3's `derive_key` over the Diffie-Hellman secret and
//!   both public keys, and every blob carries the ephemeral public key.
//!   Whoever holds only the public half (a write-only slot) can seal new
//!   blobs but open none, not even its own once the pack is written.
//!
//! Sealed forms (nonces are 12 random bytes from the kernel):
//!
//! ```text
//! metadata object  0x01 | nonce[12] | ciphertext+tag    AD: "snapfs object v1" | repo id | kind | id
//! blob             0x03 | ephemeral public key[32] | nonce[12] | ciphertext+tag   (same AD; AES-256-GCM)
//! blob (scheme 1)  0x02 | ephemeral public key[32] | nonce[12] | ciphertext+tag   (same AD; AES-256-GCM-SIV)
//! pack trailer     nonce[12] | ciphertext+tag           AD: "snapfs trailer v1" | repo id
//! snapshot record  "SNAPFSR2" | nonce[12] | ciphertext+tag   AD: "snapfs record v1" | repo id
//! ```
//!
//! Why random nonces are safe here: AES-GCM-SIV is nonce-misuse
//! resistant (a repeated nonce reveals only that the same plaintext was
//! sealed twice under the same AD), and 96 random bits keep even that
//! unlikely below 2^32 messages per key; blob keys change with every
//! pack. Blobs of the current scheme use AES-256-GCM (ring: over five
//! times as fast here, and restore opens every blob): not misuse
//! resistant, but a blob key seals only the few thousand blobs of one
//! pack, so 96 random bits do not repeat under it.
//!
//! Two hosts writing the same content still deduplicate: they hold
//! the same id key, so the same content has the same id wherever it is
//! written, and an id the index knows is not written again; the
//! ciphertexts need not be equal.

use std::sync::{Arc, Mutex};

use aes_gcm_siv::aead::{Aead, KeyInit, Payload};
use aes_gcm_siv::{Aes256GcmSiv, Nonce};
use thiserror::Error;

use crate::os::secret::{self, SecretPage, Zeroizing};
use crate::repo::ids::{ObjKind, ObjectId};
use crate::util::Locked;

/// The scheme named in the config of an encrypted repository made now:
/// blobs sealed with AES-256-GCM (tag 3), everything else with
/// AES-256-GCM-SIV.
pub const SCHEME: &str = "x25519-aes256gcm-aes256gcmsiv-blake3";
/// The first scheme: blobs sealed with AES-256-GCM-SIV too (tag 2). Its
/// repositories are read and written as they were (an older snapfs keeps
/// reading them).
pub const SCHEME_V1: &str = "x25519-aes256gcmsiv-blake3";
/// The schemes this snapfs opens.
pub const SCHEMES: [&str; 2] = [SCHEME, SCHEME_V1];

const NONCE: usize = 12;
const TAG: usize = 16;
const META_TAG: u8 = 1;
const BLOB_TAG: u8 = 2;
/// A blob sealed with AES-256-GCM (scheme [`SCHEME`]).
const BLOB_GCM_TAG: u8 = 3;
/// Bytes a sealed metadata object adds to its plaintext.
pub const META_OVERHEAD: usize = 1 + NONCE + TAG;
/// Bytes a sealed blob adds to its plaintext.
pub const BLOB_OVERHEAD: usize = 1 + 32 + NONCE + TAG;
/// What a sealed record begins with.
pub const RECORD_MAGIC: &[u8; 8] = b"SNAPFSR2";
/// The first bytes of a sealed deletion plan.
pub const PLAN_MAGIC: &[u8; 8] = b"SNAPFSD1";

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    /// Read and write everything.
    Full,
    /// Add snapshots and read their structure; open no file contents.
    WriteOnly,
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Access::Full => "full",
            Access::WriteOnly => "write-only",
        })
    }
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CryptoError {
    /// The tag did not match: the bytes were changed, or sealed with
    /// another key (another repository).
    #[error("{0} does not open with this repository's key: damaged, tampered with, or from another repository")]
    Tampered(String),
    #[error("{0} is malformed")]
    Malformed(String),
    /// A write-only key was asked to open file contents.
    #[error("file contents cannot be read with a write-only key (reading needs a full key)")]
    WriteOnly,
    /// A write-only key was asked to remove something.
    #[error("{0} needs a full key: this one is write-only (it adds snapshots, never removes them)")]
    NeedsFull(&'static str),
}

/// Refuse `what` (a removal) unless the keys, if any, are full.
pub fn require_full(keys: Option<&Keys>, what: &'static str) -> Result<(), CryptoError> {
    match keys {
        Some(k) if k.access() != Access::Full => Err(CryptoError::NeedsFull(what)),
        _ => Ok(()),
    }
}

// Layout of the key page.
const ID_KEY: std::ops::Range<usize> = 0..32;
const META_KEY: std::ops::Range<usize> = 32..64;
const DATA_SK: std::ops::Range<usize> = 64..96;
const DATA_PK: std::ops::Range<usize> = 96..128;
const KEYS_LEN: usize = 128;
const PAYLOAD_MAGIC: &[u8; 8] = b"SNAPFSK1";

/// The keys of one encrypted repository, held in a [`SecretPage`].
pub struct Keys {
    page: SecretPage,
    access: Access,
    repo_id: String,
    /// Pack keys of blobs read lately, by ephemeral public key (one
    /// Diffie-Hellman per pack, not per blob).
    pack_keys: Mutex<lru::LruCache<[u8; 32], Zeroizing<[u8; 32]>>>,
    /// New blobs are sealed with AES-256-GCM (the repository's scheme is
    /// [`SCHEME`]; see [`Keys::use_scheme`]), else with AES-256-GCM-SIV.
    blob_gcm: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keys({} key of repository {})", self.access, self.repo_id)
    }
}

fn cipher(key: &[u8]) -> Aes256GcmSiv {
    Aes256GcmSiv::new_from_slice(key).expect("a 32-byte key")
}

fn seal_with(key: &[u8], aad: &[u8], plain: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE];
    secret::random(&mut nonce);
    let ct = cipher(key).encrypt(Nonce::from_slice(&nonce), Payload { msg: plain, aad }).expect("sealing never fails");
    let mut out = Vec::with_capacity(NONCE + ct.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    out
}

fn open_with(key: &[u8], aad: &[u8], sealed: &[u8], what: &dyn Fn() -> String) -> Result<Vec<u8>, CryptoError> {
    if sealed.len() < NONCE + TAG {
        return Err(CryptoError::Malformed(what()));
    }
    let (nonce, ct) = sealed.split_at(NONCE);
    cipher(key).decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad }).map_err(|_| CryptoError::Tampered(what()))
}

impl Keys {
    fn with_page(page: SecretPage, access: Access, repo_id: &str) -> Keys {
        Keys {
            page,
            access,
            repo_id: repo_id.to_string(),
            pack_keys: Mutex::new(lru::LruCache::new(std::num::NonZeroUsize::new(256).expect("non-zero"))),
            blob_gcm: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Seal new blobs as the repository's scheme says (its config's
    /// `encryption`): AES-256-GCM for [`SCHEME`], AES-256-GCM-SIV for
    /// [`SCHEME_V1`]. Either is opened whatever the scheme.
    pub fn use_scheme(&self, scheme: &str) {
        self.blob_gcm.store(scheme == SCHEME, std::sync::atomic::Ordering::Relaxed);
    }

    /// New random keys for repository `repo_id`.
    pub fn generate(repo_id: &str) -> Keys {
        let mut page = SecretPage::new(KEYS_LEN);
        let p = page.as_mut();
        secret::random(&mut p[..DATA_SK.end]);
        let sk = x25519_dalek::StaticSecret::from(<[u8; 32]>::try_from(&p[DATA_SK]).expect("32 bytes"));
        p[DATA_PK].copy_from_slice(x25519_dalek::PublicKey::from(&sk).as_bytes());
        Keys::with_page(page, Access::Full, repo_id)
    }

    pub fn access(&self) -> Access {
        self.access
    }

    pub fn repo_id(&self) -> &str {
        &self.repo_id
    }

    /// The same keys without the data secret key.
    pub fn write_only(&self) -> Keys {
        let mut page = SecretPage::new(KEYS_LEN);
        page.as_mut().copy_from_slice(self.page.as_ref());
        page.as_mut()[DATA_SK].fill(0);
        let k = Keys::with_page(page, Access::WriteOnly, &self.repo_id);
        k.blob_gcm
            .store(self.blob_gcm.load(std::sync::atomic::Ordering::Relaxed), std::sync::atomic::Ordering::Relaxed);
        k
    }

    fn key(&self, r: std::ops::Range<usize>) -> &[u8] {
        &self.page.as_ref()[r]
    }

    fn id_key(&self) -> [u8; 32] {
        self.key(ID_KEY).try_into().expect("32 bytes")
    }

    /// The id of an object: blake3 keyed with the id key, over its kind
    /// byte and its bytes.
    pub fn id_of(&self, kind: ObjKind, raw: &[u8]) -> ObjectId {
        let mut h = blake3::Hasher::new_keyed(&Zeroizing::new(self.id_key()));
        h.update(&[kind as u8]);
        h.update(raw);
        ObjectId(*h.finalize().as_bytes())
    }

    fn object_aad(&self, kind: ObjKind, id: &ObjectId) -> Vec<u8> {
        let mut a = b"snapfs object v1\0".to_vec();
        a.extend_from_slice(self.repo_id.as_bytes());
        a.push(0);
        a.push(kind as u8);
        a.extend_from_slice(&id.0);
        a
    }

    fn aad(&self, domain: &str) -> Vec<u8> {
        let mut a = domain.as_bytes().to_vec();
        a.push(0);
        a.extend_from_slice(self.repo_id.as_bytes());
        a
    }

    /// A sealer for the objects of one pack (its own ephemeral data key).
    pub fn pack_sealer(self: &Arc<Self>) -> PackSealer {
        let mut esk = Zeroizing::new([0u8; 32]);
        secret::random(&mut *esk);
        let esk = x25519_dalek::StaticSecret::from(*esk);
        let epk = *x25519_dalek::PublicKey::from(&esk).as_bytes();
        let dpk = x25519_dalek::PublicKey::from(<[u8; 32]>::try_from(self.key(DATA_PK)).expect("32 bytes"));
        let shared = esk.diffie_hellman(&dpk);
        let key = pack_key(shared.as_bytes(), &epk, dpk.as_bytes());
        let gcm = self.blob_gcm.load(std::sync::atomic::Ordering::Relaxed).then(|| gcm_key(&key));
        PackSealer { keys: self.clone(), epk, key, gcm }
    }

    /// The plaintext of a sealed object (`what` names it in errors).
    pub fn open_object(
        &self,
        kind: ObjKind,
        id: &ObjectId,
        sealed: &[u8],
        what: &dyn Fn() -> String,
    ) -> Result<Vec<u8>, CryptoError> {
        let aad = self.object_aad(kind, id);
        match (kind, sealed.first()) {
            (ObjKind::Blob, Some(&tag @ (BLOB_TAG | BLOB_GCM_TAG))) if sealed.len() >= BLOB_OVERHEAD => {
                if self.access != Access::Full {
                    return Err(CryptoError::WriteOnly);
                }
                let epk: [u8; 32] = sealed[1..33].try_into().expect("32 bytes");
                let key = self.blob_key(&epk);
                if tag == BLOB_GCM_TAG {
                    open_gcm(&gcm_key(&key), &aad, &sealed[33..], what)
                } else {
                    open_with(&*key, &aad, &sealed[33..], what)
                }
            }
            (ObjKind::Blob, _) => Err(CryptoError::Malformed(what())),
            (_, Some(&META_TAG)) => open_with(self.key(META_KEY), &aad, &sealed[1..], what),
            _ => Err(CryptoError::Malformed(what())),
        }
    }

    fn blob_key(&self, epk: &[u8; 32]) -> Zeroizing<[u8; 32]> {
        if let Some(k) = self.pack_keys.locked().get(epk) {
            return k.clone();
        }
        let sk = x25519_dalek::StaticSecret::from(<[u8; 32]>::try_from(self.key(DATA_SK)).expect("32 bytes"));
        let shared = sk.diffie_hellman(&x25519_dalek::PublicKey::from(*epk));
        let key = pack_key(shared.as_bytes(), epk, self.key(DATA_PK));
        self.pack_keys.locked().put(*epk, key.clone());
        key
    }

    pub fn seal_trailer(&self, plain: &[u8]) -> Vec<u8> {
        seal_with(self.key(META_KEY), &self.aad("snapfs trailer v1"), plain)
    }

    pub fn open_trailer(&self, sealed: &[u8], pack: &str) -> Result<Vec<u8>, CryptoError> {
        open_with(self.key(META_KEY), &self.aad("snapfs trailer v1"), sealed, &|| format!("the trailer of pack {pack}"))
    }

    /// A file of its own in the repository, sealed whole: its magic, then
    /// the AEAD of `plain` under the metadata key, bound to `label`.
    fn seal_file(&self, magic: &[u8; 8], label: &str, plain: &[u8]) -> Vec<u8> {
        let mut out = magic.to_vec();
        out.extend_from_slice(&seal_with(self.key(META_KEY), &self.aad(label), plain));
        out
    }

    fn open_file(
        &self,
        magic: &[u8; 8],
        label: &str,
        sealed: &[u8],
        what: &dyn Fn() -> String,
    ) -> Result<Vec<u8>, CryptoError> {
        let body = sealed.strip_prefix(magic).ok_or_else(|| CryptoError::Malformed(what()))?;
        open_with(self.key(META_KEY), &self.aad(label), body, what)
    }

    pub fn seal_record(&self, plain: &[u8]) -> Vec<u8> {
        self.seal_file(RECORD_MAGIC, "snapfs record v1", plain)
    }

    pub fn open_record(&self, sealed: &[u8], id: &str) -> Result<Vec<u8>, CryptoError> {
        self.open_file(RECORD_MAGIC, "snapfs record v1", sealed, &|| format!("snapshot record {id}"))
    }

    /// A deletion plan (see `repo::plans`), sealed like a record.
    pub fn seal_plan(&self, plain: &[u8]) -> Vec<u8> {
        self.seal_file(PLAN_MAGIC, "snapfs deletion plan v1", plain)
    }

    pub fn open_plan(&self, sealed: &[u8], name: &str) -> Result<Vec<u8>, CryptoError> {
        self.open_file(PLAN_MAGIC, "snapfs deletion plan v1", sealed, &|| format!("deletion plan {name}"))
    }

    /// The MAC of a config's bytes (hex), which ties the config to the keys.
    pub fn config_mac(&self, bytes: &[u8]) -> String {
        let k = Zeroizing::new(blake3::derive_key("snapfs 2026 config mac v1", self.key(META_KEY)));
        blake3::keyed_hash(&k, bytes).to_hex().to_string()
    }

    /// The keys as a key slot holds them (sealed there): magic, access,
    /// repository id, then the keys (a write-only payload has no data
    /// secret key: zeros).
    pub(crate) fn payload(&self) -> Zeroizing<Vec<u8>> {
        let mut v = Zeroizing::new(Vec::with_capacity(8 + 2 + self.repo_id.len() + KEYS_LEN));
        v.extend_from_slice(PAYLOAD_MAGIC);
        v.push(match self.access {
            Access::Full => 1,
            Access::WriteOnly => 2,
        });
        v.push(self.repo_id.len() as u8);
        v.extend_from_slice(self.repo_id.as_bytes());
        v.extend_from_slice(self.page.as_ref());
        v
    }

    /// Keys from a slot's payload (checked: a well-formed payload whose
    /// public key matches its secret key, for a full one).
    pub(crate) fn from_payload(p: &[u8]) -> Option<Keys> {
        let rest = p.strip_prefix(PAYLOAD_MAGIC)?;
        let (&access, rest) = rest.split_first()?;
        let access = match access {
            1 => Access::Full,
            2 => Access::WriteOnly,
            _ => return None,
        };
        let (&n, rest) = rest.split_first()?;
        let (id, keys) = (rest.get(..n as usize)?, rest.get(n as usize..)?);
        if keys.len() != KEYS_LEN {
            return None;
        }
        let repo_id = std::str::from_utf8(id).ok()?;
        let page = SecretPage::from_bytes(keys);
        let k = Keys::with_page(page, access, repo_id);
        let sk_zero = k.key(DATA_SK).iter().all(|&b| b == 0);
        match access {
            Access::Full => {
                let sk = x25519_dalek::StaticSecret::from(<[u8; 32]>::try_from(k.key(DATA_SK)).ok()?);
                if x25519_dalek::PublicKey::from(&sk).as_bytes()[..] != *k.key(DATA_PK) {
                    return None;
                }
            }
            Access::WriteOnly if !sk_zero => return None,
            Access::WriteOnly => {}
        }
        Some(k)
    }
}

fn pack_key(shared: &[u8; 32], epk: &[u8; 32], dpk: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut m = Zeroizing::new(Vec::with_capacity(96));
    m.extend_from_slice(shared);
    m.extend_from_slice(epk);
    m.extend_from_slice(dpk);
    Zeroizing::new(blake3::derive_key("snapfs 2026 pack data key v1", &m))
}

/// AES-256-GCM under a pack key (blobs of scheme [`SCHEME`]).
fn gcm_key(key: &[u8; 32]) -> ring::aead::LessSafeKey {
    ring::aead::LessSafeKey::new(ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, key).expect("a 32-byte key"))
}

/// [`seal_with`] in AES-256-GCM: `nonce | ciphertext+tag`. A pack key seals
/// the blobs of one pack (a few thousand at most): random 96-bit nonces do
/// not repeat under it.
fn seal_gcm(key: &ring::aead::LessSafeKey, aad: &[u8], plain: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE];
    secret::random(&mut nonce);
    let mut out = Vec::with_capacity(NONCE + plain.len() + TAG);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plain);
    let tag = key
        .seal_in_place_separate_tag(
            ring::aead::Nonce::assume_unique_for_key(nonce),
            ring::aead::Aad::from(aad),
            &mut out[NONCE..],
        )
        .expect("sealing never fails");
    out.extend_from_slice(tag.as_ref());
    out
}

/// [`open_with`] in AES-256-GCM.
fn open_gcm(
    key: &ring::aead::LessSafeKey,
    aad: &[u8],
    sealed: &[u8],
    what: &dyn Fn() -> String,
) -> Result<Vec<u8>, CryptoError> {
    if sealed.len() < NONCE + TAG {
        return Err(CryptoError::Malformed(what()));
    }
    let (nonce, ct) = sealed.split_at(NONCE);
    let nonce = ring::aead::Nonce::try_assume_unique_for_key(nonce).map_err(|_| CryptoError::Malformed(what()))?;
    let mut buf = ct.to_vec();
    let n = key
        .open_in_place(nonce, ring::aead::Aad::from(aad), &mut buf)
        .map_err(|_| CryptoError::Tampered(what()))?
        .len();
    buf.truncate(n);
    Ok(buf)
}

/// Seals the objects of one pack.
pub struct PackSealer {
    keys: Arc<Keys>,
    epk: [u8; 32],
    key: Zeroizing<[u8; 32]>,
    /// The pack key as an AES-256-GCM key, when blobs are sealed so.
    gcm: Option<ring::aead::LessSafeKey>,
}

impl PackSealer {
    pub fn keys(&self) -> &Arc<Keys> {
        &self.keys
    }

    /// The sealed form of object `id` of `kind` whose (compressed) bytes are `plain`.
    pub fn seal(&self, kind: ObjKind, id: &ObjectId, plain: &[u8]) -> Vec<u8> {
        let aad = self.keys.object_aad(kind, id);
        let mut out = Vec::with_capacity(plain.len() + BLOB_OVERHEAD);
        if kind == ObjKind::Blob {
            out.push(if self.gcm.is_some() { BLOB_GCM_TAG } else { BLOB_TAG });
            out.extend_from_slice(&self.epk);
            out.extend_from_slice(&match &self.gcm {
                Some(gcm) => seal_gcm(gcm, &aad, plain),
                None => seal_with(&*self.key, &aad, plain),
            });
        } else {
            out.push(META_TAG);
            out.extend_from_slice(&seal_with(self.keys.key(META_KEY), &aad, plain));
        }
        out
    }
}

/// Bytes sealing adds to an object of `kind`.
pub fn overhead(kind: ObjKind) -> usize {
    if kind == ObjKind::Blob {
        BLOB_OVERHEAD
    } else {
        META_OVERHEAD
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_round_trip_and_every_flipped_bit_is_caught() {
        for scheme in SCHEMES {
            objects_round_trip_under(scheme);
        }
    }

    fn objects_round_trip_under(scheme: &str) {
        let k = Arc::new(Keys::generate("abc123"));
        k.use_scheme(scheme);
        let s = k.pack_sealer();
        let blob = s.seal(ObjKind::Blob, &k.id_of(ObjKind::Blob, b"b"), b"b");
        assert_eq!(blob[0], if scheme == SCHEME { BLOB_GCM_TAG } else { BLOB_TAG }, "{scheme}");
        // what either scheme sealed opens whatever the scheme is now
        k.use_scheme(if scheme == SCHEME { SCHEME_V1 } else { SCHEME });
        assert_eq!(k.open_object(ObjKind::Blob, &k.id_of(ObjKind::Blob, b"b"), &blob, &|| "b".into()).unwrap(), b"b");
        for kind in [ObjKind::Blob, ObjKind::Tree] {
            let plain = b"some bytes of an object".to_vec();
            let id = k.id_of(kind, &plain);
            let sealed = s.seal(kind, &id, &plain);
            assert_eq!(sealed.len(), plain.len() + overhead(kind));
            let what = || "x".to_string();
            assert_eq!(k.open_object(kind, &id, &sealed, &what).unwrap(), plain);
            for i in 0..sealed.len() {
                let mut b = sealed.clone();
                b[i] ^= 0x10;
                assert!(k.open_object(kind, &id, &b, &what).is_err(), "byte {i} of a {kind:?}");
            }
            // bound to its id and kind
            let other = k.id_of(kind, b"other");
            assert!(k.open_object(kind, &other, &sealed, &what).is_err());
            // and to this repository
            let stranger = Keys::from_payload(&k.payload()).map(|mut x| {
                x.repo_id = "other".into();
                x
            });
            assert!(stranger.unwrap().open_object(kind, &id, &sealed, &what).is_err());
        }
    }

    #[test]
    fn ids_are_keyed() {
        let a = Keys::generate("r");
        let b = Keys::generate("r");
        assert_ne!(a.id_of(ObjKind::Blob, b"x"), b.id_of(ObjKind::Blob, b"x"));
        assert_ne!(a.id_of(ObjKind::Blob, b"x"), ObjectId::of_object(ObjKind::Blob, b"x"));
        assert_ne!(a.id_of(ObjKind::Blob, b"x"), a.id_of(ObjKind::Tree, b"x"));
    }

    #[test]
    fn a_write_only_key_seals_blobs_it_cannot_open() {
        let full = Arc::new(Keys::generate("r"));
        let wo = Arc::new(full.write_only());
        assert_eq!(wo.access(), Access::WriteOnly);
        let s = wo.pack_sealer();
        let id = wo.id_of(ObjKind::Blob, b"secret data");
        let sealed = s.seal(ObjKind::Blob, &id, b"secret data");
        let what = || "x".to_string();
        assert_eq!(wo.open_object(ObjKind::Blob, &id, &sealed, &what), Err(CryptoError::WriteOnly));
        assert_eq!(full.open_object(ObjKind::Blob, &id, &sealed, &what).unwrap(), b"secret data");
        // metadata it can read
        let t = s.seal(ObjKind::Tree, &id, b"tree");
        assert_eq!(wo.open_object(ObjKind::Tree, &id, &t, &what).unwrap(), b"tree");
        // the payload round trip keeps what each may do
        let back = Keys::from_payload(&wo.payload()).unwrap();
        assert_eq!(back.access(), Access::WriteOnly);
        assert!(Keys::from_payload(&full.payload()).is_some());
        // a payload claiming full access without a matching secret key is refused
        let mut p = wo.payload().to_vec();
        p[8] = 1;
        assert!(Keys::from_payload(&p).is_none());
    }

    #[test]
    fn records_and_trailers_round_trip() {
        let k = Keys::generate("r");
        let r = k.seal_record(b"{\"name\":\"a\"}");
        assert!(r.starts_with(RECORD_MAGIC));
        assert_eq!(k.open_record(&r, "id").unwrap(), b"{\"name\":\"a\"}");
        let mut bad = r.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(matches!(k.open_record(&bad, "id"), Err(CryptoError::Tampered(_))));
        let t = k.seal_trailer(b"trailer");
        assert_eq!(k.open_trailer(&t, "p").unwrap(), b"trailer");
        // a record is not a trailer
        assert!(k.open_trailer(&r[8..], "p").is_err());
        assert_ne!(k.config_mac(b"a"), k.config_mac(b"b"));
    }
}
