//! The repository: where snapshots and their objects live, and the local
//! directory beside it for what only this machine needs.
//!
//! A repository is a local directory or a prefix in an S3 bucket
//! ([`Location`]), holding
//!
//! ```text
//! config      JSON: magic, format version, repository id, block size, creation time,
//!             and for an encrypted repository its scheme and a MAC under its keys
//! keys/       key slots of an encrypted repository (`keyslot`)
//! packs/      pack files (through the `Store` trait)
//! snapshots/  snapshot records
//! ```
//!
//! An encrypted repository (format 3) is opened in two steps: `open_at`
//! reads its config, [`Repo::unlock`] opens a key slot and checks the
//! config's MAC; from then on `store()` carries the keys, and objects,
//! packs and records are sealed and opened with them (`crypto`).
//!
//! and a local directory (`Repo::path`: the repository itself when local,
//! else a cache directory per repository id) holding
//!
//! ```text
//! lock     flock()ed by the daemon that uses it; holds its pid
//! state/   sled database with the dirty-set tracking state and index (rebuildable)
//! log      the daemon's log when it runs in the background
//! ```
//!
//! A local config is written once, at `init`, with the durable-write
//! sequence (temporary name, fsync, rename, fsync of the directory).
//!
//! (About 720 lines of code and 100 of tests: the repository's config, format checks, locations, locks and opening,
//! local and remote, which all decide together what a repository is.)

pub mod crypto;
pub mod ids;
pub mod index;
pub mod keyslot;
pub mod objects;
pub mod objstore;
pub mod pack;
pub mod plans;
pub mod readahead;
pub mod s3;
pub mod state;
pub mod store;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::repo::crypto::Keys;
use crate::repo::keyslot::{KdfParams, KeySource};
use crate::repo::s3::{S3Location, S3Store};
use crate::repo::store::{LocalStore, Store, StoreError, WithKeys};
use crate::util;

/// Where a repository lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Local(PathBuf),
    S3(S3Location),
}

impl Location {
    /// `s3:http[s]://HOST[:PORT]/BUCKET[/PREFIX]`, or a local path (as
    /// given: never resolved here, so that a daemon's own
    /// `/proc/self/fd/N/...` paths never touch its mount).
    pub fn parse(s: &str) -> Result<Location, RepoError> {
        if crate::repo::s3::is_s3(s) {
            return S3Location::parse(s).map(Location::S3).map_err(RepoError::BadLocation);
        }
        Ok(Location::Local(PathBuf::from(s)))
    }

    /// As `parse`, with a local path made absolute and symlink-free (for
    /// what a user typed).
    pub fn parse_canonical(s: &str) -> Result<Location, RepoError> {
        Ok(match Location::parse(s)? {
            Location::Local(p) => Location::Local(crate::os::mounts::canonical(&p)),
            l => l,
        })
    }

    pub fn is_local(&self) -> bool {
        matches!(self, Location::Local(_))
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Local(p) => write!(f, "{}", p.display()),
            Location::S3(l) => write!(f, "{l}"),
        }
    }
}

/// The default place for the local state of a repository elsewhere:
/// `$XDG_CACHE_HOME/snapfs` or `~/.cache/snapfs`.
pub fn default_cache() -> PathBuf {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    env("XDG_CACHE_HOME")
        .or_else(|| env("HOME").map(|h| h.join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"))
        .join("snapfs")
}

pub const MAGIC: &str = "snapfs-repository";
/// The repository format this build reads and writes: 2 may hold trees of
/// format 2 (device table, st_blocks); 1 holds only format 1 trees. A
/// format 1 repository is upgraded when a daemon first mounts it (its
/// next snapshot writes format 2 trees, which snapfs before 2 cannot read).
pub const FORMAT_VERSION: u32 = 2;
/// The format of an encrypted repository: as 2, with sealed packs and
/// records, keyed ids and key slots (snapfs before it cannot read one).
pub const ENCRYPTED_FORMAT: u32 = 3;
pub const DEFAULT_BLOCK_SIZE: u64 = 64 * 1024;
pub const MIN_BLOCK_SIZE: u64 = 4 * 1024;
pub const MAX_BLOCK_SIZE: u64 = 16 * 1024 * 1024;

#[derive(Debug, Error)]
pub enum RepoError {
    #[error("{0}")]
    BadLocation(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}: already holds a snapfs repository")]
    Exists(String),
    #[error("{at} holds another repository (id {id}): not a replica of this one")]
    OtherRepository { at: String, id: String },
    #[error("{0}: not a snapfs repository (no valid config file)")]
    NotARepo(PathBuf),
    #[error(
        "{path}: repository format {found} is newer than this snapfs understands ({ENCRYPTED_FORMAT}); upgrade snapfs"
    )]
    NewerFormat { path: PathBuf, found: u32 },
    #[error("{0}: already exists and is not empty; not creating a repository there")]
    NotEmpty(PathBuf),
    #[error("block size {0} is invalid: it must be a power of two between 4 KiB and 16 MiB")]
    BadBlockSize(u64),
    #[error("repository {path} is in use by another snapfs daemon{}", pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Locked { path: PathBuf, pid: Option<u32> },
    #[error("{0}: the state database is in use by another process (a running snapfs daemon?)")]
    StateInUse(PathBuf),
    /// sled refused the database or panicked reading it.
    #[error("state database {path} is damaged: {why}")]
    StateCorrupt { path: PathBuf, why: String },
    #[error("state database {path}: {source}")]
    State {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "repository {0} is encrypted: give its key (--password-file FILE, SNAPFS_PASSWORD_FILE, SNAPFS_PASSWORD, \
         --password-command CMD, --key-file FILE, or type the passphrase at the prompt)"
    )]
    NeedsKey(String),
    /// (The key error is in the message, not a `source`: shown once.)
    #[error("repository {0}: {1}")]
    Key(String, crate::repo::keyslot::KeyError),
    #[error("repository {0}: its config was changed (its MAC does not match its keys): edited by hand or damaged")]
    ConfigChanged(String),
    #[error(
        "repository {0}: its config says it is not encrypted, but it holds key slots: the config was replaced \
         (refusing to write plaintext into an encrypted repository)"
    )]
    Downgraded(String),
    #[error("repository {0}: unknown encryption {1:?}")]
    UnknownEncryption(String, String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> RepoError + '_ {
    move |source| RepoError::Io { path: path.to_path_buf(), source }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Config {
    pub magic: String,
    pub format: u32,
    pub id: String,
    pub block_size: u64,
    pub created: String,
    /// The encryption scheme ([`crypto::SCHEME`]) of an encrypted repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<String>,
    /// Of an encrypted repository: the MAC of this config (without it) under its keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

impl Config {
    pub fn is_encrypted(&self) -> bool {
        self.encryption.is_some()
    }

    /// The bytes the MAC covers: the config without its MAC, as JSON.
    fn mac_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&Config { mac: None, ..self.clone() }).expect("config serializes")
    }
}

/// An opened repository.
pub struct Repo {
    pub location: Location,
    /// The local directory for lock, state and log: the repository itself,
    /// or (for a repository elsewhere) its cache directory.
    pub path: PathBuf,
    pub config: Config,
    lock: Option<File>,
    store: std::sync::Arc<dyn Store>,
    /// Of an unlocked encrypted repository: its keys and the slot that opened them.
    keys: Option<(std::sync::Arc<Keys>, String)>,
}

impl std::fmt::Debug for Repo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repo").field("location", &self.location).field("path", &self.path).finish()
    }
}

/// Read a config, checking that it is one and that we can read its format.
fn parse_config(data: &[u8], shown: &Path) -> Result<Config, RepoError> {
    let value: serde_json::Value =
        serde_json::from_slice(data).map_err(|_| RepoError::NotARepo(shown.to_path_buf()))?;
    if value.get("magic").and_then(|m| m.as_str()) != Some(MAGIC) {
        return Err(RepoError::NotARepo(shown.to_path_buf()));
    }
    let found = value.get("format").and_then(|f| f.as_u64()).unwrap_or(0) as u32;
    if found > ENCRYPTED_FORMAT {
        return Err(RepoError::NewerFormat { path: shown.to_path_buf(), found });
    }
    let config: Config = serde_json::from_value(value).map_err(|_| RepoError::NotARepo(shown.to_path_buf()))?;
    check_block_size(config.block_size)?;
    let shown_s = || shown.display().to_string();
    match (&config.encryption, config.format) {
        (Some(s), _) if !crypto::SCHEMES.contains(&s.as_str()) => {
            return Err(RepoError::UnknownEncryption(shown_s(), s.clone()))
        }
        (Some(_), ENCRYPTED_FORMAT) if config.mac.is_some() => {}
        (None, f) if f < ENCRYPTED_FORMAT && config.mac.is_none() => {}
        _ => return Err(RepoError::ConfigChanged(shown_s())),
    }
    if config.id.is_empty() || !config.id.bytes().all(|b| b.is_ascii_hexdigit()) || config.id.len() > 64 {
        return Err(RepoError::NotARepo(shown.to_path_buf()));
    }
    Ok(config)
}

/// The config of the repository at `s3`, read and checked.
fn s3_config(store: &S3Store, s3: &S3Location) -> Result<Config, RepoError> {
    let shown = PathBuf::from(s3.to_string());
    match store.get_key(&s3.key("config"), None, (crate::repo::store::FileKind::Snapshot, "config")) {
        Ok(d) => parse_config(&d, &shown),
        Err(StoreError::NotFound { .. }) => {
            // say whether the bucket itself is the trouble
            store.check_bucket()?;
            Err(RepoError::NotARepo(shown))
        }
        Err(e) => Err(e.into()),
    }
}

fn new_config(block_size: u64) -> Config {
    Config {
        magic: MAGIC.into(),
        format: FORMAT_VERSION,
        id: util::random_id(),
        block_size,
        created: util::rfc3339(util::unix_now()),
        encryption: None,
        mac: None,
    }
}

/// How `init` encrypts a repository: the first slot's key source, what it
/// may do (full), and the passphrase's Argon2id cost.
pub struct Encryption<'a> {
    pub source: &'a KeySource,
    pub kdf: KdfParams,
}

/// A new config (and keys, for an encrypted repository: `config.mac` set).
fn new_config_with(block_size: u64, enc: Option<&Encryption>) -> (Config, Option<std::sync::Arc<Keys>>) {
    let mut c = new_config(block_size);
    let Some(_) = enc else { return (c, None) };
    c.format = ENCRYPTED_FORMAT;
    c.encryption = Some(crypto::SCHEME.into());
    let keys = std::sync::Arc::new(Keys::generate(&c.id));
    c.mac = Some(keys.config_mac(&c.mac_bytes()));
    (c, Some(keys))
}

pub fn check_block_size(bs: u64) -> Result<(), RepoError> {
    if !bs.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&bs) {
        return Err(RepoError::BadBlockSize(bs));
    }
    Ok(())
}

/// Write `data` to `dir/name` durably: temporary name, fsync, rename, fsync dir.
pub fn write_durably(dir: &Path, name: &str, data: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        // a leftover of an interrupted write goes first (never followed)
        match fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut f = crate::os::private::new_file().open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, dir.join(name))?;
    File::open(dir)?.sync_all()
}

impl Repo {
    /// Create a repository at `path` (which must not exist or be empty).
    pub fn init(path: &Path, block_size: u64) -> Result<Repo, RepoError> {
        Repo::init_with(path, block_size, None)
    }

    /// Create a repository at `path`, encrypted if `enc` says how. The
    /// first key slot is written before the config (the commit point).
    pub fn init_with(path: &Path, block_size: u64, enc: Option<&Encryption>) -> Result<Repo, RepoError> {
        check_block_size(block_size)?;
        match fs::read_dir(path) {
            Ok(mut rd) => {
                if rd.next().is_some() {
                    return Err(RepoError::NotEmpty(path.to_path_buf()));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                crate::os::private::create_dir_all(path).map_err(io_err(path))?;
            }
            Err(e) => return Err(io_err(path)(e)),
        }
        let (config, keys) = new_config_with(block_size, enc);
        for d in ["packs", "snapshots"] {
            crate::os::private::create_dir(&path.join(d)).map_err(io_err(path))?;
        }
        let mut repo = Repo::local(path, config.clone());
        if let (Some(k), Some(e)) = (&keys, enc) {
            crate::os::private::create_dir(&path.join("keys")).map_err(io_err(path))?;
            let slot = keyslot::add(&*repo.store, k, e.source, crypto::Access::Full, e.kdf)
                .map_err(|err| RepoError::Key(path.display().to_string(), err))?;
            repo.set_keys(k.clone(), slot);
        }
        let json = serde_json::to_vec_pretty(&config).expect("config serializes");
        write_durably(path, "config", &json).map_err(io_err(path))?;
        Ok(repo)
    }

    fn local(path: &Path, config: Config) -> Repo {
        let store = std::sync::Arc::new(LocalStore::new(path));
        Repo {
            location: Location::Local(path.to_path_buf()),
            path: path.to_path_buf(),
            config,
            lock: None,
            store,
            keys: None,
        }
    }

    fn set_keys(&mut self, keys: std::sync::Arc<Keys>, slot: String) {
        keys.use_scheme(self.config.encryption.as_deref().unwrap_or_default());
        let plain = self.store.clone();
        self.store = std::sync::Arc::new(WithKeys::new(plain, keys.clone()));
        self.keys = Some((keys, slot));
        // what the ciphers copy of the keys stays out of core dumps too
        crate::os::secret::no_dumps();
    }

    pub fn is_encrypted(&self) -> bool {
        self.config.is_encrypted()
    }

    /// The keys of an unlocked encrypted repository.
    pub fn keys(&self) -> Option<&std::sync::Arc<Keys>> {
        self.keys.as_ref().map(|(k, _)| k)
    }

    /// The key slot this repository was unlocked with.
    pub fn slot(&self) -> Option<&str> {
        self.keys.as_ref().map(|(_, s)| s.as_str())
    }

    /// Open an encrypted repository's keys with `src` and check its config
    /// against them. A plain repository needs none (Ok, nothing done).
    pub fn unlock(&mut self, src: &KeySource) -> Result<(), RepoError> {
        if !self.is_encrypted() || self.keys.is_some() {
            return Ok(());
        }
        let shown = self.location.to_string();
        let (keys, slot) =
            keyslot::unlock(&*self.store, &self.config.id, src).map_err(|e| RepoError::Key(shown.clone(), e))?;
        if self.config.mac.as_deref() != Some(keys.config_mac(&self.config.mac_bytes()).as_str()) {
            return Err(RepoError::ConfigChanged(shown));
        }
        self.set_keys(keys, slot);
        Ok(())
    }

    /// `unlock` with the source `get` gives, asked for only when the
    /// repository is encrypted; `None` from it is [`RepoError::NeedsKey`].
    pub fn unlock_with(&mut self, get: impl FnOnce() -> Option<KeySource>) -> Result<(), RepoError> {
        if !self.is_encrypted() || self.keys.is_some() {
            return Ok(());
        }
        let src = get().ok_or_else(|| RepoError::NeedsKey(self.location.to_string()))?;
        self.unlock(&src)
    }

    /// A plain config over a repository with key slots: refused (someone
    /// replaced an encrypted repository's config).
    fn check_not_downgraded(&self) -> Result<(), RepoError> {
        if !self.is_encrypted() && !self.store.list(crate::repo::store::FileKind::Key)?.is_empty() {
            return Err(RepoError::Downgraded(self.location.to_string()));
        }
        Ok(())
    }

    /// Open an existing repository, checking that it is one and that we can read its format.
    pub fn open(path: &Path) -> Result<Repo, RepoError> {
        let cfg_path = path.join("config");
        let data = match fs::read(&cfg_path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR) => {
                return Err(RepoError::NotARepo(path.to_path_buf()))
            }
            Err(e) => return Err(io_err(&cfg_path)(e)),
        };
        let r = Repo::local(path, parse_config(&data, path)?);
        r.check_not_downgraded()?;
        Ok(r)
    }

    /// Create a repository at `loc`; a remote one keeps its local state in
    /// `cache` (default: [`default_cache`]) under its id.
    pub fn init_at(
        loc: &Location,
        block_size: u64,
        cache: Option<&Path>,
        enc: Option<&Encryption>,
    ) -> Result<Repo, RepoError> {
        let s3 = match loc {
            Location::Local(p) => return Repo::init_with(p, block_size, enc),
            Location::S3(l) => l,
        };
        check_block_size(block_size)?;
        let store = S3Store::from_env(s3.clone())?;
        // the bucket answers with these credentials (a clear error for a
        // typo, wrong credentials or a missing bucket: nothing is created)
        store.check_bucket()?;
        let prefix = if s3.prefix.is_empty() { String::new() } else { format!("{}/", s3.prefix) };
        let keys = store.list_keys(&prefix)?;
        if keys.iter().any(|k| *k == s3.key("config")) {
            return Err(RepoError::Exists(s3.to_string()));
        }
        if !keys.is_empty() {
            return Err(RepoError::NotEmpty(PathBuf::from(s3.to_string())));
        }
        let (config, keys) = new_config_with(block_size, enc);
        let config_json = serde_json::to_vec_pretty(&config).expect("config serializes");
        let config_key = s3.key("config");
        let mut repo = Repo::remote(loc.clone(), store, config, cache)?;
        if let (Some(k), Some(e)) = (&keys, enc) {
            let slot = keyslot::add(&*repo.store, k, e.source, crypto::Access::Full, e.kdf)
                .map_err(|err| RepoError::Key(loc.to_string(), err))?;
            repo.set_keys(k.clone(), slot);
        }
        S3Store::from_env(s3.clone())?.put_key(&config_key, &config_json)?;
        Ok(repo)
    }

    /// Make `loc` a replica of the repository whose config is `config`: a
    /// new repository with the same config (id, block size), or one that
    /// already is a replica of it (a resumed `replica add`). Anything else
    /// there is refused.
    pub fn init_replica(loc: &Location, config: &Config) -> Result<Repo, RepoError> {
        let json = serde_json::to_vec_pretty(config).expect("config serializes");
        let same = |r: Repo| {
            if r.config.id == config.id && r.config.block_size == config.block_size {
                Ok(r)
            } else {
                Err(RepoError::OtherRepository { at: loc.to_string(), id: r.config.id })
            }
        };
        match Repo::open_at(loc, None) {
            Ok(r) => return same(r),
            Err(RepoError::NotARepo(_)) => {}
            Err(e) => return Err(e),
        }
        match loc {
            Location::Local(path) => {
                // an empty or missing directory only, as for init
                let r = Repo::init(path, config.block_size)?;
                write_durably(path, "config", &json).map_err(io_err(path))?;
                drop(r);
                Repo::open(path)
            }
            Location::S3(s3) => {
                let store = S3Store::from_env(s3.clone())?;
                store.check_bucket()?;
                let prefix = if s3.prefix.is_empty() { String::new() } else { format!("{}/", s3.prefix) };
                if !store.list_keys(&prefix)?.is_empty() {
                    return Err(RepoError::NotEmpty(PathBuf::from(s3.to_string())));
                }
                store.put_key(&s3.key("config"), &json)?;
                Repo::open_at(loc, None)
            }
        }
    }

    /// Open the repository at `loc` (see [`Repo::init_at`] for `cache`).
    /// The config of the repository at `loc` (parsed and checked as
    /// [`Repo::open_at`] does, without the rest of opening: one read).
    pub fn config_at(loc: &Location) -> Result<Config, RepoError> {
        match loc {
            Location::Local(p) => Repo::open(p).map(|r| r.config),
            Location::S3(s3) => s3_config(&S3Store::from_env(s3.clone())?, s3),
        }
    }

    pub fn open_at(loc: &Location, cache: Option<&Path>) -> Result<Repo, RepoError> {
        let s3 = match loc {
            Location::Local(p) => return Repo::open(p),
            Location::S3(l) => l,
        };
        let store = S3Store::from_env(s3.clone())?;
        let config = s3_config(&store, s3)?;
        let r = Repo::remote(loc.clone(), store, config, cache)?;
        r.check_not_downgraded()?;
        Ok(r)
    }

    fn remote(location: Location, store: S3Store, config: Config, cache: Option<&Path>) -> Result<Repo, RepoError> {
        let path = cache.map(Path::to_path_buf).unwrap_or_else(default_cache).join(&config.id);
        Ok(Repo { location, path, config, lock: None, store: std::sync::Arc::new(store), keys: None })
    }

    /// Write `config` in place of the repository's (a format upgrade: the
    /// only time a config is written again).
    pub fn rewrite_config(&mut self, mut config: Config) -> Result<(), RepoError> {
        if config.is_encrypted() {
            let keys = self.keys().ok_or_else(|| RepoError::NeedsKey(self.location.to_string()))?;
            config.mac = Some(keys.config_mac(&config.mac_bytes()));
        }
        let json = serde_json::to_vec_pretty(&config).expect("config serializes");
        match &self.location {
            Location::Local(p) => write_durably(p, "config", &json).map_err(io_err(p))?,
            Location::S3(s3) => S3Store::from_env(s3.clone())?.put_key(&s3.key("config"), &json)?,
        }
        self.config = config;
        Ok(())
    }

    /// Bring a repository of an older format to this one (the formats
    /// differ only in what new snapshots may write). Returns whether it did.
    pub fn upgrade(&mut self) -> Result<bool, RepoError> {
        if self.config.format >= FORMAT_VERSION {
            return Ok(false);
        }
        let mut c = self.config.clone();
        c.format = FORMAT_VERSION;
        self.rewrite_config(c)?;
        Ok(true)
    }

    /// Make the local directory (a remote repository's cache) exist.
    fn local_dir(&self) -> Result<(), RepoError> {
        if !self.location.is_local() {
            crate::os::private::create_dir_all(&self.path).map_err(io_err(&self.path))?;
        }
        Ok(())
    }

    /// Take the repository's exclusive lock for a daemon, recording our pid.
    pub fn lock(&mut self) -> Result<(), RepoError> {
        self.local_dir()?;
        let p = self.path.join("lock");
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(crate::os::private::FILE_MODE)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&p)
            .map_err(io_err(&p))?;
        // SAFETY: a system call on descriptors and values we own, without pointers; the result is checked.
        let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if r != 0 {
            let mut s = String::new();
            let _ = f.read_to_string(&mut s);
            return Err(RepoError::Locked { path: self.path.clone(), pid: s.trim().parse().ok() });
        }
        f.set_len(0).map_err(io_err(&p))?;
        f.rewind().map_err(io_err(&p))?;
        write!(f, "{}", std::process::id()).map_err(io_err(&p))?;
        self.lock = Some(f);
        Ok(())
    }

    pub fn state_path(&self) -> PathBuf {
        self.path.join("state")
    }

    /// Open the local state database (tracking state, index): sled at `state/`.
    /// A database sled refuses (or panics on) is `StateCorrupt`.
    pub fn open_state(&self) -> Result<std::sync::Arc<crate::repo::state::StateDb>, RepoError> {
        self.local_dir()?;
        let p = self.state_path();
        // sled creates its files with the process umask: a private
        // directory keeps them out of reach whatever their mode
        match crate::os::private::create_dir(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(io_err(&p)(e)),
            _ => {}
        }
        match std::panic::catch_unwind(|| crate::repo::state::StateDb::open(&p)) {
            Ok(Err(RepoError::State { path, source })) if is_corruption(&source) => {
                Err(RepoError::StateCorrupt { path, why: source.to_string() })
            }
            Ok(r) => r,
            Err(panic) => {
                Err(RepoError::StateCorrupt { path: p, why: format!("panic: {}", crate::util::panic_message(&*panic)) })
            }
        }
    }

    /// Move a damaged state database aside (`state.corrupt-<time>`, kept
    /// for inspection) so that a new one can take its place. Everything in
    /// it can be rebuilt: the index from the packs, and the dirty set by a
    /// full next snapshot. Returns a line saying what happened.
    pub fn quarantine_state(&self, why: &str) -> Result<String, RepoError> {
        let from = self.state_path();
        let base = format!("state.corrupt-{}", crate::util::unix_now());
        let mut to = self.path.join(&base);
        let mut k = 1;
        while to.exists() {
            to = self.path.join(format!("{base}-{k}"));
            k += 1;
        }
        fs::rename(&from, &to).map_err(io_err(&from))?;
        let note = format!(
            "the state database was damaged ({why}); moved aside to {}, a new one made: the index is rebuilt from \
             the packs, the dirty set is lost, so the next snapshot reads everything",
            to.file_name().unwrap_or_default().to_string_lossy()
        );
        log::error!("STATE DATABASE DAMAGED: {note}");
        Ok(note)
    }

    /// Open the state database, moving a damaged one aside and starting a
    /// new one (see `quarantine_state`); the note says so when it did.
    pub fn open_state_repaired(
        &self,
    ) -> Result<(std::sync::Arc<crate::repo::state::StateDb>, Option<String>), RepoError> {
        match self.open_state() {
            Err(RepoError::StateCorrupt { why, .. }) => {
                let note = self.quarantine_state(&why)?;
                Ok((self.open_state()?, Some(note)))
            }
            r => Ok((r?, None)),
        }
    }

    /// The repository's file storage.
    pub fn store(&self) -> std::sync::Arc<dyn crate::repo::store::Store> {
        self.store.clone()
    }

    pub fn log_path(&self) -> PathBuf {
        self.path.join("log")
    }

    pub fn block_size(&self) -> u64 {
        self.config.block_size
    }
}

/// Whether sled's error means the database itself is damaged (rather than
/// the device failing or the lock being held).
fn is_corruption(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Corruption { .. } | sled::Error::Unsupported(_) | sled::Error::ReportableBug(_))
}

/// The memory sled may keep for its pages (its default is 1 GiB, which a
/// repository of a million objects filled: the daemon's peak RSS was
/// 1.67 GiB after a full snapshot of a million files; see
/// `scripts/bench-million`). The kernel's page cache still holds the file.
const SLED_CACHE: u64 = 64 << 20;

/// Open a sled database. sled releases its file lock a moment after the
/// last handle is dropped (its threads hold it), so a lock conflict is
/// retried for up to two seconds before it is reported as "in use".
pub fn open_sled(path: &Path) -> Result<sled::Db, RepoError> {
    let t0 = std::time::Instant::now();
    loop {
        match sled::Config::new().path(path).flush_every_ms(None).cache_capacity(SLED_CACHE).open() {
            Ok(db) => return Ok(db),
            Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                if t0.elapsed() > std::time::Duration::from_secs(2) {
                    return Err(RepoError::StateInUse(path.to_path_buf()));
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(source) => return Err(RepoError::State { path: path.to_path_buf(), source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_open_and_errors() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("r");
        let r = Repo::init(&p, 65536).unwrap();
        let o = Repo::open(&p).unwrap();
        assert_eq!(r.config, o.config);
        assert!(matches!(Repo::init(&p, 65536), Err(RepoError::NotEmpty(_))));
        assert!(matches!(Repo::open(t.path()), Err(RepoError::NotARepo(_))));
        assert!(matches!(Repo::init(&t.path().join("x"), 1000), Err(RepoError::BadBlockSize(1000))));
        // a newer format is refused with a clear message
        let mut c = o.config.clone();
        c.format = ENCRYPTED_FORMAT + 1;
        fs::write(p.join("config"), serde_json::to_vec(&c).unwrap()).unwrap();
        let e = Repo::open(&p).unwrap_err();
        assert!(matches!(e, RepoError::NewerFormat { .. }));
        assert!(e.to_string().contains("newer"));
    }

    #[test]
    fn older_formats_are_upgraded_once() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("r");
        let r = Repo::init(&p, 65536).unwrap();
        let mut c = r.config.clone();
        c.format = 1;
        fs::write(p.join("config"), serde_json::to_vec(&c).unwrap()).unwrap();
        let mut o = Repo::open(&p).unwrap();
        assert_eq!(o.config.format, 1);
        assert!(o.upgrade().unwrap());
        assert!(!o.upgrade().unwrap());
        let again = Repo::open(&p).unwrap();
        assert_eq!(again.config.format, FORMAT_VERSION);
        assert_eq!(again.config.id, r.config.id);
        assert_eq!(
            fs::metadata(p.join("config")).map(|m| std::os::unix::fs::MetadataExt::mode(&m) & 0o777).unwrap(),
            0o600
        );
    }

    /// A repository made with the first scheme (blobs in AES-256-GCM-SIV)
    /// goes on sealing blobs so, and both open; a new one seals them with
    /// AES-256-GCM.
    #[test]
    fn each_scheme_seals_blobs_its_way() {
        use crate::repo::store::FileKind;
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("r");
        let src = KeySource::KeyFile(crate::os::secret::Zeroizing::new([7u8; 32]));
        let kdf = KdfParams { memory_kib: 8, iterations: 1, parallelism: 1 };
        let mut r = Repo::init_with(&p, 65536, Some(&Encryption { source: &src, kdf })).unwrap();
        assert_eq!(r.config.encryption.as_deref(), Some(crypto::SCHEME));
        let first_tag = |r: &Repo| {
            let o = crate::repo::objstore::Objects::open(r.store(), None).unwrap();
            let before: std::collections::HashSet<String> =
                r.store().list(FileKind::Pack).unwrap().into_iter().collect();
            let data: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
            o.put_again(crate::repo::objects::ObjKind::Blob, &data).unwrap();
            o.flush().unwrap();
            let new = r.store().list(FileKind::Pack).unwrap().into_iter().find(|n| !before.contains(n)).unwrap();
            let e = o.pack_entries(&new).unwrap()[0];
            let stored = r.store().get_range(FileKind::Pack, &new, e.offset, e.stored as usize).unwrap();
            assert_eq!(o.get(&e.id, crate::repo::objects::ObjKind::Blob).unwrap(), data);
            stored[0]
        };
        assert_eq!(first_tag(&r), 3, "AES-256-GCM");
        // the config of a repository of the first scheme (MAC'd anew)
        let mut c = r.config.clone();
        c.encryption = Some(crypto::SCHEME_V1.into());
        r.rewrite_config(c).unwrap();
        let mut o = Repo::open(&p).unwrap();
        o.unlock(&src).unwrap();
        assert_eq!(first_tag(&o), 2, "AES-256-GCM-SIV");
        // an unknown scheme is refused
        let mut c = o.config.clone();
        c.encryption = Some("rot13".into());
        fs::write(p.join("config"), serde_json::to_vec(&c).unwrap()).unwrap();
        assert!(matches!(Repo::open(&p), Err(RepoError::UnknownEncryption(..))));
    }

    #[test]
    fn lock_is_exclusive() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("r");
        Repo::init(&p, 65536).unwrap();
        let mut a = Repo::open(&p).unwrap();
        a.lock().unwrap();
        let mut b = Repo::open(&p).unwrap();
        let e = b.lock().unwrap_err();
        assert!(e.to_string().contains(&format!("pid {}", std::process::id())), "{e}");
    }
}
