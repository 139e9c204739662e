//! Where an encrypted repository's key comes from, and `snapfs key`.
//!
//! A key is a passphrase or a key file. In restic's manner the passphrase
//! is read from `--password-file FILE`, `SNAPFS_PASSWORD_FILE`,
//! `SNAPFS_PASSWORD`, the first line `--password-command CMD` prints, or
//! a prompt on the terminal; a key file from `--key-file FILE` or
//! `SNAPFS_KEY_FILE`. A daemon started in the background gets the key
//! through a pipe (`--key-fd`, never its command line or environment).

use std::io::{BufRead, IsTerminal, Read, Write};
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use snapfs::os::secret::Zeroizing;
use snapfs::repo::crypto::Access;
use snapfs::repo::keyslot::{self, KdfParams, KeySource};
use snapfs::repo::Repo;

/// The key options every command takes.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct KeyArgs {
    /// Read an encrypted repository's passphrase from FILE (its first line).
    #[arg(long, global = true, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// Run CMD (with sh -c) and take the first line it prints as the passphrase.
    #[arg(long, global = true, value_name = "CMD")]
    pub password_command: Option<String>,
    /// Open an encrypted repository with this key file (`init --key-file`,
    /// `key add --new-key-file`).
    #[arg(long, global = true, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// (For a daemon: read the key from this descriptor.)
    #[arg(long, global = true, hide = true)]
    pub key_fd: Option<i32>,
}

/// The first line of `bytes`, without its line end.
fn first_line(bytes: &[u8]) -> Zeroizing<Vec<u8>> {
    let end = bytes.iter().position(|&b| b == b'\n').unwrap_or(bytes.len());
    let mut l = &bytes[..end];
    if l.last() == Some(&b'\r') {
        l = &l[..l.len() - 1];
    }
    Zeroizing::new(l.to_vec())
}

fn passphrase(p: Zeroizing<Vec<u8>>, from: &str) -> Result<KeySource> {
    if p.is_empty() {
        bail!("the passphrase from {from} is empty");
    }
    Ok(KeySource::Passphrase(p))
}

fn read_secret_file(path: &Path) -> Result<Zeroizing<Vec<u8>>> {
    let mut f = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut v = Zeroizing::new(Vec::new());
    Read::by_ref(&mut f).take(1 << 20).read_to_end(&mut v).with_context(|| format!("reading {}", path.display()))?;
    Ok(v)
}

fn key_file(path: &Path) -> Result<KeySource> {
    let text = read_secret_file(path)?;
    Ok(KeySource::KeyFile(keyslot::parse_key_file(&text).with_context(|| path.display().to_string())?))
}

impl KeyArgs {
    /// The key from the options or the environment, if one is given.
    pub fn explicit(&self) -> Result<Option<KeySource>> {
        if let Some(fd) = self.key_fd {
            return from_fd(fd).map(Some);
        }
        if let Some(p) = &self.key_file {
            return key_file(p).map(Some);
        }
        if let Some(p) = &self.password_file {
            return passphrase(first_line(&read_secret_file(p)?), &p.display().to_string()).map(Some);
        }
        if let Some(cmd) = &self.password_command {
            let out = std::process::Command::new("sh")
                .args(["-c", cmd])
                .stdin(std::process::Stdio::inherit())
                .stderr(std::process::Stdio::inherit())
                .output()
                .with_context(|| format!("running the password command {cmd:?}"))?;
            let stdout = Zeroizing::new(out.stdout);
            if !out.status.success() {
                bail!("the password command {cmd:?} failed ({})", out.status);
            }
            return passphrase(first_line(&stdout), "the password command").map(Some);
        }
        let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        if let Some(p) = env("SNAPFS_KEY_FILE") {
            return key_file(Path::new(&p)).map(Some);
        }
        if let Some(p) = env("SNAPFS_PASSWORD_FILE") {
            let p = PathBuf::from(p);
            return passphrase(first_line(&read_secret_file(&p)?), &p.display().to_string()).map(Some);
        }
        if let Some(p) = env("SNAPFS_PASSWORD") {
            return passphrase(Zeroizing::new(p.into_encoded_bytes()), "SNAPFS_PASSWORD").map(Some);
        }
        Ok(None)
    }

    /// The key: given, or typed at the terminal's prompt (if there is one).
    pub fn source(&self, what: &str) -> Result<Option<KeySource>> {
        if let Some(s) = self.explicit()? {
            return Ok(Some(s));
        }
        if std::io::stdin().is_terminal() {
            return prompt(&format!("passphrase for {what}: ")).map(|p| Some(KeySource::Passphrase(p)));
        }
        Ok(None)
    }

    /// The key for a daemon to open the repository at `loc` with: the one
    /// given, else (on a terminal, if the repository is encrypted) one
    /// typed at the prompt.
    pub fn for_repo(
        &self,
        loc: impl FnOnce() -> Option<snapfs::repo::Location>,
    ) -> Result<Option<std::sync::Arc<KeySource>>> {
        if let Some(s) = self.explicit()? {
            return Ok(Some(std::sync::Arc::new(s)));
        }
        if !std::io::stdin().is_terminal() {
            return Ok(None);
        }
        let Some(loc) = loc() else { return Ok(None) };
        match Repo::open_at(&loc, None) {
            Ok(r) if r.is_encrypted() => {
                let p = prompt(&format!("passphrase for repository {loc}: "))?;
                Ok(Some(std::sync::Arc::new(KeySource::Passphrase(p))))
            }
            // (plain, or not there yet: the daemon says what is wrong)
            _ => Ok(None),
        }
    }

    /// As [`KeyArgs::unlock`], from the flags alone (never the
    /// environment, which belongs to another repository then).
    pub fn unlock_no_env(&self, repo: &mut Repo) -> Result<()> {
        if !repo.is_encrypted() {
            return Ok(());
        }
        let src = match (&self.key_file, &self.password_file) {
            (Some(p), _) => Some(key_file(p)?),
            (None, Some(p)) => Some(passphrase(first_line(&read_secret_file(p)?), &p.display().to_string())?),
            (None, None) if std::io::stdin().is_terminal() => {
                Some(KeySource::Passphrase(prompt(&format!("passphrase for repository {}: ", repo.location))?))
            }
            (None, None) => None,
        };
        repo.unlock_with(|| src)?;
        Ok(())
    }

    /// Unlock `repo` if it is encrypted (asking for the key only then).
    pub fn unlock(&self, repo: &mut Repo) -> Result<()> {
        if !repo.is_encrypted() || repo.keys().is_some() {
            return Ok(());
        }
        let src = self.source(&format!("repository {}", repo.location))?;
        repo.unlock_with(|| src)?;
        Ok(())
    }
}

/// Read a key a parent put in a pipe (see [`KeySource::to_bytes`]).
fn from_fd(fd: i32) -> Result<KeySource> {
    // SAFETY: the descriptor was passed to us for this alone (by our own parent); we take it over.
    let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
    let mut v = Zeroizing::new(Vec::new());
    Read::by_ref(&mut f).take(1 << 20).read_to_end(&mut v).context("reading the key from the parent")?;
    KeySource::from_bytes(&v).ok_or_else(|| anyhow::anyhow!("no key came from the parent"))
}

/// Ask for a passphrase on the terminal without echo.
fn prompt(question: &str) -> Result<Zeroizing<Vec<u8>>> {
    let tty = std::fs::OpenOptions::new().read(true).write(true).open("/dev/tty").context("opening the terminal")?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&tty);
    // SAFETY: termios is plain data; tcgetattr fills it for our terminal descriptor (result checked).
    let mut old: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let have = unsafe { libc::tcgetattr(fd, &mut old) } == 0;
    if have {
        let mut quiet = old;
        quiet.c_lflag &= !libc::ECHO;
        quiet.c_lflag |= libc::ECHONL;
        // SAFETY: setting the attributes of our own terminal descriptor from a valid termios.
        unsafe { libc::tcsetattr(fd, libc::TCSAFLUSH, &quiet) };
    }
    let mut w = &tty;
    let _ = w.write_all(question.as_bytes());
    let mut line = Zeroizing::new(String::new());
    let r = std::io::BufReader::new(&tty).read_line(&mut line);
    if have {
        // SAFETY: restoring the attributes read above.
        unsafe { libc::tcsetattr(fd, libc::TCSAFLUSH, &old) };
    }
    r.context("reading the passphrase")?;
    let p = first_line(line.as_bytes());
    if p.is_empty() {
        bail!("no passphrase given");
    }
    Ok(p)
}

/// Where a new slot's key comes from (`init`, `key add`, `key passwd`): a
/// new key file made at (or read from) `new_key_file`, a passphrase read
/// from `new_password_file`, or one typed twice at the prompt; `fallback`
/// (the key options) when no new source is named.
pub fn new_source(
    new_password_file: Option<&Path>,
    new_key_file: Option<&Path>,
    fallback: Option<&KeyArgs>,
) -> Result<(KeySource, Option<PathBuf>)> {
    if let Some(p) = new_key_file {
        return make_or_read_key_file(p).map(|(s, made)| (s, made.then(|| p.to_path_buf())));
    }
    if let Some(p) = new_password_file {
        return Ok((passphrase(first_line(&read_secret_file(p)?), &p.display().to_string())?, None));
    }
    if let Some(k) = fallback {
        if let Some(p) = &k.key_file {
            return make_or_read_key_file(p).map(|(s, made)| (s, made.then(|| p.clone())));
        }
        if let Some(s) = k.explicit()? {
            return Ok((s, None));
        }
    }
    if !std::io::stdin().is_terminal() {
        bail!(
            "no passphrase for the new key: give --new-password-file FILE or --new-key-file FILE \
             (or, at init, --password-file / SNAPFS_PASSWORD / --key-file; or --encryption none)"
        );
    }
    let a = prompt("new passphrase: ")?;
    let b = prompt("the same again: ")?;
    if *a != *b {
        bail!("the two passphrases differ");
    }
    Ok((KeySource::Passphrase(a), None))
}

/// A key file's secret: read from `p`, or a new key file made there (0600,
/// never over an existing file). Returns whether it was made.
fn make_or_read_key_file(p: &Path) -> Result<(KeySource, bool)> {
    if p.exists() {
        return key_file(p).map(|s| (s, false));
    }
    let (text, secret) = keyslot::new_key_file();
    let mut f =
        snapfs::os::private::new_file().open(p).with_context(|| format!("creating the key file {}", p.display()))?;
    f.write_all(text.as_bytes()).and_then(|_| f.sync_all()).with_context(|| p.display().to_string())?;
    Ok((KeySource::KeyFile(secret), true))
}

/// The Argon2id cost asked for.
pub fn kdf(memory_mib: Option<u32>, iterations: Option<u32>) -> Result<KdfParams> {
    let d = KdfParams::default();
    let k = KdfParams {
        memory_kib: memory_mib.map(|m| m.saturating_mul(1024)).unwrap_or(d.memory_kib),
        iterations: iterations.unwrap_or(d.iterations),
        parallelism: d.parallelism,
    };
    k.check().map_err(|e| anyhow::anyhow!("key derivation cost: {e}"))?;
    Ok(k)
}

/// What `snapfs key ...` does.
pub enum KeyOp<'a> {
    List { json: bool },
    Add { write_only: bool, new_password_file: Option<&'a Path>, new_key_file: Option<&'a Path>, kdf: KdfParams },
    Remove { name: &'a str },
    Passwd { new_password_file: Option<&'a Path>, new_key_file: Option<&'a Path>, kdf: KdfParams },
}

pub fn key(repo: &mut Repo, keys: &KeyArgs, op: KeyOp) -> Result<()> {
    if !repo.is_encrypted() {
        bail!("repository {} is not encrypted: it has no keys", repo.location);
    }
    keys.unlock(repo)?;
    let store = repo.store();
    let id = repo.config.id.clone();
    let k = repo.keys().cloned().expect("unlocked");
    match op {
        KeyOp::List { json } => {
            let all = keyslot::list(&*store, &id, repo.slot())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                println!("{:<34} {:<11} {:<11} {:<21} HOST", "SLOT", "KIND", "ACCESS", "CREATED");
                for s in all {
                    let mark = if s.current { "*" } else { " " };
                    println!("{mark}{:<33} {:<11} {:<11} {:<21} {}", s.name, s.kind, s.access, s.created, s.host);
                }
            }
        }
        KeyOp::Add { write_only: false, .. } if k.access() != Access::Full => {
            bail!("a write-only key can add only write-only slots (give --write-only, or use a full key)")
        }
        KeyOp::Add { write_only, new_password_file, new_key_file, kdf } => {
            let (src, made) = new_source(new_password_file, new_key_file, None)?;
            let access = if write_only { Access::WriteOnly } else { Access::Full };
            let name = keyslot::add(&*store, &k, &src, access, kdf)?;
            if let Some(p) = made {
                println!("key file {} made (keep it safe: it opens the repository)", p.display());
            }
            println!("key slot {name} added ({access})");
        }
        KeyOp::Remove { .. } if k.access() != Access::Full => {
            bail!("a write-only key cannot remove key slots (that needs a full key)")
        }
        KeyOp::Remove { name } => {
            let s = keyslot::find(&*store, &id, name)?;
            keyslot::remove(&*store, &id, &s.name)?;
            println!("key slot {} removed", s.name);
        }
        KeyOp::Passwd { new_password_file, new_key_file, kdf } => {
            let old = repo.slot().expect("unlocked").to_string();
            let cur = keyslot::find(&*store, &id, &old)?;
            let (src, made) = new_source(new_password_file, new_key_file, None)?;
            let name = keyslot::add(&*store, &k, &src, cur.access, kdf)?;
            // (the new slot is there before the old goes)
            store.delete(snapfs::repo::store::FileKind::Key, &old)?;
            if let Some(p) = made {
                println!("key file {} made", p.display());
            }
            println!("key slot {old} replaced by {name}");
        }
    }
    Ok(())
}
