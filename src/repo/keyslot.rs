//! Key slots: the repository's keys, wrapped, in `keys/<name>` (the name
//! is the blake3 hash of the slot's bytes, so a slot edited by hand is
//! told from a wrong passphrase). A slot is opened by a passphrase
//! (Argon2id, its parameters and salt in the slot) or by a key file (32
//! random bytes; no stretching needed), and holds either every key
//! (`full`) or all but the data secret key (`write-only`).
//!
//! ```json
//! { "format": 1, "repository": "<id>", "kind": "passphrase" | "key-file",
//!   "access": "full" | "write-only", "created": "<RFC 3339>", "host": "...",
//!   "kdf": { "algorithm": "argon2id", "memory_kib": 65536, "iterations": 3,
//!            "parallelism": 1, "salt": "<hex>" },            (passphrase slots)
//!   "salt": "<hex>",                                         (key-file slots)
//!   "sealed": "<hex: nonce | AES-256-GCM-SIV of the keys>" }
//! ```
//! The sealed keys' AD is "snapfs key slot v1", the repository id, the kind
//! and the access: none of them can be changed without the slot failing.

use std::sync::Arc;

use aes_gcm_siv::aead::{Aead, KeyInit, Payload};
use aes_gcm_siv::{Aes256GcmSiv, Nonce};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::os::secret::{self, Zeroizing};
use crate::repo::crypto::{Access, Keys};
use crate::repo::store::{FileKind, Store, StoreError};

/// How a key is given: a passphrase, or a key file's secret.
pub enum KeySource {
    Passphrase(Zeroizing<Vec<u8>>),
    KeyFile(Zeroizing<[u8; 32]>),
}

impl KeySource {
    /// The bytes a daemon gets its key in from its parent (a pipe): `P`
    /// and a passphrase, or `K` and a key file's secret.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut v = Zeroizing::new(Vec::new());
        match self {
            KeySource::Passphrase(p) => {
                v.push(b'P');
                v.extend_from_slice(p);
            }
            KeySource::KeyFile(k) => {
                v.push(b'K');
                v.extend_from_slice(&**k);
            }
        }
        v
    }

    /// A copy (for a daemon that may need it again).
    pub fn clone_source(&self) -> KeySource {
        match self {
            KeySource::Passphrase(p) => KeySource::Passphrase(p.clone()),
            KeySource::KeyFile(k) => KeySource::KeyFile(k.clone()),
        }
    }

    pub fn from_bytes(b: &[u8]) -> Option<KeySource> {
        match b.split_first()? {
            (b'P', p) if !p.is_empty() => Some(KeySource::Passphrase(Zeroizing::new(p.to_vec()))),
            (b'K', k) => Some(KeySource::KeyFile(Zeroizing::new(k.try_into().ok()?))),
            _ => None,
        }
    }

    fn kind(&self) -> SlotKind {
        match self {
            KeySource::Passphrase(_) => SlotKind::Passphrase,
            KeySource::KeyFile(_) => SlotKind::KeyFile,
        }
    }
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KeySource::Passphrase(_) => "KeySource::Passphrase(..)",
            KeySource::KeyFile(_) => "KeySource::KeyFile(..)",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SlotKind {
    Passphrase,
    KeyFile,
}

impl std::fmt::Display for SlotKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SlotKind::Passphrase => "passphrase",
            SlotKind::KeyFile => "key-file",
        })
    }
}

/// Argon2id's cost. The defaults take about a quarter of a second here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for KdfParams {
    fn default() -> Self {
        KdfParams { memory_kib: 64 * 1024, iterations: 3, parallelism: 1 }
    }
}

impl KdfParams {
    /// Costs a slot may ask for: enough to mean something, bounded so
    /// that a crafted slot cannot make us allocate without end.
    pub fn check(&self) -> Result<(), String> {
        if !(8 * 1024..=4 * 1024 * 1024).contains(&self.memory_kib) {
            return Err(format!("memory {} KiB is outside 8 MiB..4 GiB", self.memory_kib));
        }
        if !(1..=100).contains(&self.iterations) || !(1..=16).contains(&self.parallelism) {
            return Err(format!("iterations {} or parallelism {} out of range", self.iterations, self.parallelism));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Kdf {
    algorithm: String,
    #[serde(flatten)]
    params: KdfParams,
    salt: String,
}

/// A key slot as stored (see the module comment).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeySlot {
    pub format: u32,
    pub repository: String,
    pub kind: SlotKind,
    pub access: Access,
    pub created: String,
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kdf: Option<Kdf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    salt: Option<String>,
    sealed: String,
}

/// A slot and its name, as `key list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SlotInfo {
    pub name: String,
    pub kind: SlotKind,
    pub access: Access,
    pub created: String,
    pub host: String,
    /// The slot this process opened the repository with.
    pub current: bool,
}

#[derive(Debug, Error)]
pub enum KeyError {
    #[error("wrong passphrase: no passphrase slot of this repository opens with it")]
    WrongPassphrase,
    #[error("wrong key file: no key-file slot of this repository opens with it")]
    WrongKeyFile,
    #[error("this repository has no {0} slot (see `snapfs key list`)")]
    NoSlot(SlotKind),
    #[error("key slot {0} was changed (its contents do not match its name): edited by hand or damaged")]
    Changed(String),
    #[error("key slot {name} is malformed: {why}")]
    Malformed { name: String, why: String },
    #[error("key slot {name} belongs to another repository ({found})")]
    OtherRepository { name: String, found: String },
    #[error("the repository is encrypted and has no key slots (keys/ empty or missing): it cannot be opened")]
    NoSlots,
    #[error("refusing to remove the last key slot that gives full access: the repository could not be read again")]
    LastFullSlot,
    #[error("no key slot {0}")]
    Unknown(String),
    #[error("a write-only key cannot make key slots (that needs a full key)")]
    WriteOnly,
    #[error("{0}")]
    KeyFile(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 1 << 20 {
        return None;
    }
    (0..s.len() / 2).map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()).collect()
}

fn aad(repo: &str, kind: SlotKind, access: Access) -> Vec<u8> {
    format!("snapfs key slot v1\0{repo}\0{kind}\0{access}").into_bytes()
}

fn wrapping_key(src: &KeySource, kdf: Option<&Kdf>, salt: &[u8]) -> Result<Zeroizing<[u8; 32]>, String> {
    let mut out = Zeroizing::new([0u8; 32]);
    match src {
        KeySource::Passphrase(p) => {
            let k = kdf.ok_or("a passphrase slot without kdf parameters")?;
            if k.algorithm != "argon2id" {
                return Err(format!("unknown kdf {:?}", k.algorithm));
            }
            k.params.check()?;
            let params = argon2::Params::new(k.params.memory_kib, k.params.iterations, k.params.parallelism, Some(32))
                .map_err(|e| e.to_string())?;
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
                .hash_password_into(p, salt, &mut *out)
                .map_err(|e| e.to_string())?;
        }
        KeySource::KeyFile(secret) => {
            let mut m = Zeroizing::new(secret.to_vec());
            m.extend_from_slice(salt);
            *out = blake3::derive_key("snapfs 2026 key-file slot v1", &m);
        }
    }
    Ok(out)
}

/// Make a slot holding `keys` (as much as `access` allows), opened by `src`.
pub fn make_slot(keys: &Keys, src: &KeySource, access: Access, kdf: KdfParams) -> Result<Vec<u8>, KeyError> {
    if keys.access() != Access::Full && access == Access::Full {
        return Err(KeyError::WriteOnly);
    }
    let kind = src.kind();
    let mut salt = [0u8; 16];
    secret::random(&mut salt);
    let kdf =
        (kind == SlotKind::Passphrase).then(|| Kdf { algorithm: "argon2id".into(), params: kdf, salt: hex(&salt) });
    let wrap = wrapping_key(src, kdf.as_ref(), &salt).map_err(|why| KeyError::Malformed { name: "new".into(), why })?;
    let payload = match access {
        Access::Full => keys.payload(),
        Access::WriteOnly => keys.write_only().payload(),
    };
    let mut nonce = [0u8; 12];
    secret::random(&mut nonce);
    let ct = Aes256GcmSiv::new_from_slice(&*wrap)
        .expect("32-byte key")
        .encrypt(Nonce::from_slice(&nonce), Payload { msg: &payload, aad: &aad(keys.repo_id(), kind, access) })
        .expect("sealing never fails");
    let slot = KeySlot {
        format: 1,
        repository: keys.repo_id().to_string(),
        kind,
        access,
        created: crate::util::rfc3339(crate::util::unix_now()),
        host: crate::util::hostname(),
        salt: (kind == SlotKind::KeyFile).then(|| hex(&salt)),
        kdf,
        sealed: hex(&[&nonce[..], &ct].concat()),
    };
    Ok(serde_json::to_vec_pretty(&slot).expect("a slot serializes"))
}

/// The name a slot's bytes are stored under.
pub fn slot_name(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex()[..32].to_string()
}

/// Read and check one slot: named by its hash, well-formed, of `repo`.
fn read_slot(store: &dyn Store, name: &str, repo: &str) -> Result<KeySlot, KeyError> {
    let bytes = store.get(FileKind::Key, name)?;
    if slot_name(&bytes) != name {
        return Err(KeyError::Changed(name.into()));
    }
    let slot: KeySlot = serde_json::from_slice(&bytes)
        .map_err(|e| KeyError::Malformed { name: name.into(), why: format!("not a key slot: {e}") })?;
    if slot.format != 1 {
        return Err(KeyError::Malformed { name: name.into(), why: format!("unknown slot format {}", slot.format) });
    }
    if slot.repository != repo {
        return Err(KeyError::OtherRepository { name: name.into(), found: slot.repository });
    }
    Ok(slot)
}

fn try_open(slot: &KeySlot, name: &str, src: &KeySource) -> Result<Option<Keys>, KeyError> {
    let bad = |why: String| KeyError::Malformed { name: name.into(), why };
    let salt = match (&slot.kdf, &slot.salt) {
        (Some(k), _) => unhex(&k.salt),
        (None, Some(s)) => unhex(s),
        (None, None) => None,
    }
    .filter(|s| (8..=64).contains(&s.len()))
    .ok_or_else(|| bad("no valid salt".into()))?;
    let sealed = unhex(&slot.sealed).filter(|s| s.len() > 12 + 16).ok_or_else(|| bad("no sealed keys".into()))?;
    let wrap = wrapping_key(src, slot.kdf.as_ref(), &salt).map_err(bad)?;
    let opened = Aes256GcmSiv::new_from_slice(&*wrap).expect("32-byte key").decrypt(
        Nonce::from_slice(&sealed[..12]),
        Payload { msg: &sealed[12..], aad: &aad(&slot.repository, slot.kind, slot.access) },
    );
    let Ok(payload) = opened.map(Zeroizing::new) else { return Ok(None) };
    let keys = Keys::from_payload(&payload).ok_or_else(|| bad("its keys are malformed".into()))?;
    if keys.access() != slot.access || keys.repo_id() != slot.repository {
        return Err(bad("its keys do not match what it says of them".into()));
    }
    Ok(Some(keys))
}

/// The slots of a repository, oldest first (each checked; a damaged one is
/// an error of its own).
/// A slot's name and what reading it gave.
type Read = (String, Result<KeySlot, KeyError>);

fn slots(store: &dyn Store, repo: &str) -> Result<Vec<Read>, KeyError> {
    let mut out: Vec<Read> = Vec::new();
    for name in store.list(FileKind::Key)? {
        let s = read_slot(store, &name, repo);
        out.push((name, s));
    }
    out.sort_by(|a, b| {
        let t = |x: &Result<KeySlot, KeyError>| x.as_ref().map(|s| s.created.clone()).unwrap_or_default();
        (t(&a.1), &a.0).cmp(&(t(&b.1), &b.0))
    });
    Ok(out)
}

/// Open the repository's keys with `src`: the first slot of its kind
/// that opens. Returns the keys and the slot's name.
pub fn unlock(store: &dyn Store, repo: &str, src: &KeySource) -> Result<(Arc<Keys>, String), KeyError> {
    let all = slots(store, repo)?;
    if all.is_empty() {
        return Err(KeyError::NoSlots);
    }
    let mut tried = 0;
    let mut damaged = None;
    for (name, slot) in &all {
        let slot = match slot {
            Ok(s) => s,
            Err(e) => {
                log::warn!("{e}");
                damaged.get_or_insert(name.clone());
                continue;
            }
        };
        if slot.kind != src.kind() {
            continue;
        }
        tried += 1;
        if let Some(k) = try_open(slot, name, src)? {
            return Ok((Arc::new(k), name.clone()));
        }
    }
    // Say what failed: a damaged slot may be the one that would have opened.
    match (tried, damaged, src.kind()) {
        (0, Some(d), _) => Err(read_slot(store, &d, repo).err().unwrap_or(KeyError::Changed(d))),
        (0, None, kind) => Err(KeyError::NoSlot(kind)),
        (_, _, SlotKind::Passphrase) => Err(KeyError::WrongPassphrase),
        (_, _, SlotKind::KeyFile) => Err(KeyError::WrongKeyFile),
    }
}

/// Add a slot holding `keys` (as `access` allows), opened by `src`. Returns its name.
pub fn add(
    store: &dyn Store,
    keys: &Keys,
    src: &KeySource,
    access: Access,
    kdf: KdfParams,
) -> Result<String, KeyError> {
    let bytes = make_slot(keys, src, access, kdf)?;
    let name = slot_name(&bytes);
    store.put(FileKind::Key, &name, &bytes)?;
    Ok(name)
}

/// The slots, for `key list`.
pub fn list(store: &dyn Store, repo: &str, current: Option<&str>) -> Result<Vec<SlotInfo>, KeyError> {
    let mut out = Vec::new();
    for (name, s) in slots(store, repo)? {
        let s = s?;
        out.push(SlotInfo {
            current: current == Some(name.as_str()),
            name,
            kind: s.kind,
            access: s.access,
            created: s.created,
            host: s.host,
        });
    }
    Ok(out)
}

/// Find a slot by name or unique prefix (4+ characters).
pub fn find(store: &dyn Store, repo: &str, key: &str) -> Result<SlotInfo, KeyError> {
    let all = list(store, repo, None)?;
    let m: Vec<_> = all.into_iter().filter(|s| s.name == key || (key.len() >= 4 && s.name.starts_with(key))).collect();
    match <[SlotInfo; 1]>::try_from(m) {
        Ok([one]) => Ok(one),
        Err(_) => Err(KeyError::Unknown(key.into())),
    }
}

/// Remove slot `name`, unless it is the last that gives full access.
pub fn remove(store: &dyn Store, repo: &str, name: &str) -> Result<(), KeyError> {
    let all = list(store, repo, None)?;
    let target = all.iter().find(|s| s.name == name).ok_or_else(|| KeyError::Unknown(name.into()))?;
    if target.access == Access::Full && all.iter().filter(|s| s.access == Access::Full).count() <= 1 {
        return Err(KeyError::LastFullSlot);
    }
    store.delete(FileKind::Key, name)?;
    Ok(())
}

// --- key files

const KEY_FILE_HEADER: &str = "snapfs key file v1";

/// The text of a new key file (a header line and 64 hex digits), and its secret.
pub fn new_key_file() -> (Zeroizing<String>, Zeroizing<[u8; 32]>) {
    let mut s = Zeroizing::new([0u8; 32]);
    secret::random(&mut *s);
    (Zeroizing::new(format!("{KEY_FILE_HEADER}\n{}\n", hex(&*s))), s)
}

/// The secret in a key file's text.
pub fn parse_key_file(text: &[u8]) -> Result<Zeroizing<[u8; 32]>, KeyError> {
    let bad = || KeyError::KeyFile("not a snapfs key file (a header line and 64 hex digits)".into());
    let text = std::str::from_utf8(text).map_err(|_| bad())?;
    let mut lines = text.lines();
    if lines.next() != Some(KEY_FILE_HEADER) {
        return Err(bad());
    }
    let h = Zeroizing::new(unhex(lines.next().ok_or_else(bad)?.trim()).ok_or_else(bad)?);
    let s: [u8; 32] = h.as_slice().try_into().map_err(|_| bad())?;
    Ok(Zeroizing::new(s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::store::LocalStore;

    fn cheap() -> KdfParams {
        KdfParams { memory_kib: 8 * 1024, iterations: 1, parallelism: 1 }
    }

    fn pass(p: &str) -> KeySource {
        KeySource::Passphrase(Zeroizing::new(p.as_bytes().to_vec()))
    }

    #[test]
    fn slots_open_with_their_source_and_nothing_else() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("keys")).unwrap();
        let store = LocalStore::new(t.path());
        let keys = Keys::generate("repo1");
        let a = add(&store, &keys, &pass("correct horse"), Access::Full, cheap()).unwrap();
        let (opened, name) = unlock(&store, "repo1", &pass("correct horse")).unwrap();
        assert_eq!(name, a);
        assert_eq!(
            opened.id_of(crate::repo::ids::ObjKind::Blob, b"x"),
            keys.id_of(crate::repo::ids::ObjKind::Blob, b"x")
        );
        assert!(matches!(unlock(&store, "repo1", &pass("wrong")), Err(KeyError::WrongPassphrase)));
        let (text, secret) = new_key_file();
        assert!(matches!(unlock(&store, "repo1", &KeySource::KeyFile(secret.clone())), Err(KeyError::NoSlot(_))));
        add(&store, &keys, &KeySource::KeyFile(parse_key_file(text.as_bytes()).unwrap()), Access::WriteOnly, cheap())
            .unwrap();
        let (wo, _) = unlock(&store, "repo1", &KeySource::KeyFile(secret)).unwrap();
        assert_eq!(wo.access(), Access::WriteOnly);
        // a write-only key makes no full slot
        assert!(matches!(add(&store, &wo, &pass("x"), Access::Full, cheap()), Err(KeyError::WriteOnly)));
        // the last full slot stays
        assert!(matches!(remove(&store, "repo1", &a), Err(KeyError::LastFullSlot)));
        assert_eq!(list(&store, "repo1", Some(&a)).unwrap().len(), 2);
        // a slot of another repository is not used
        assert!(matches!(unlock(&store, "repo2", &pass("correct horse")), Err(KeyError::OtherRepository { .. })));
        // a slot edited by hand is named as such
        let p = t.path().join("keys").join(&a);
        let mut b = std::fs::read(&p).unwrap();
        let at = b.len() - 5;
        b[at] ^= 1;
        std::fs::write(&p, b).unwrap();
        let e = unlock(&store, "repo1", &pass("correct horse")).unwrap_err();
        assert!(matches!(e, KeyError::Changed(_)), "{e}");
    }

    #[test]
    fn crafted_kdf_costs_are_refused() {
        assert!(KdfParams { memory_kib: 1 << 30, iterations: 3, parallelism: 1 }.check().is_err());
        assert!(KdfParams { memory_kib: 65536, iterations: 0, parallelism: 1 }.check().is_err());
        assert!(KdfParams::default().check().is_ok());
        assert!(parse_key_file(b"snapfs key file v1\nzz\n").is_err());
    }
}
