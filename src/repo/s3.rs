//! A repository's files in an S3-compatible object store.
//!
//! `s3:http[s]://HOST[:PORT]/BUCKET[/PREFIX]` (restic's form), path-style
//! addressing. Objects live at `PREFIX/config`, `PREFIX/packs/XX/<id>`,
//! `PREFIX/snapshots/<id>`. Requests are signed with AWS SigV4 by
//! `rusty-s3` (a sans-IO signer) and sent with `ureq` (blocking, with a
//! connection pool): no async runtime, a small build, and the daemon's
//! threads stay what they are. Every request has timeouts (connect, and
//! each read and write: a hung node is cut off, not waited on) and is
//! retried with exponential backoff and full jitter on transport errors,
//! 5xx, 429 and 408.
//!
//! The store keeps the write-once contract without conditional requests
//! (Garage ignores `If-None-Match`): names are hashes of contents, so a
//! second PUT of a name writes the same bytes; nothing depends on listing
//! order or rename.
//!
//! Credentials come from `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`
//! (`AWS_SESSION_TOKEN`), else a credentials file (`SNAPFS_S3_CREDENTIALS`
//! or `AWS_SHARED_CREDENTIALS_FILE`, default `~/.aws/credentials`) in the
//! profile `AWS_PROFILE` (default `default`); never from the command line.
//! The region is `AWS_REGION` / `AWS_DEFAULT_REGION`, default `us-east-1`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};

use crate::repo::store::{FileKind, Store, StoreError, StoreResult};
use crate::util::Locked;

/// Where a repository lives in a bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    /// `http://host:port` or `https://host`.
    pub endpoint: String,
    pub bucket: String,
    /// Without leading or trailing `/`; may be empty.
    pub prefix: String,
}

impl std::fmt::Display for S3Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3:{}/{}", self.endpoint, self.bucket)?;
        if !self.prefix.is_empty() {
            write!(f, "/{}", self.prefix)?;
        }
        Ok(())
    }
}

/// Whether a repository argument names an object store.
pub fn is_s3(s: &str) -> bool {
    s.starts_with("s3:")
}

/// A bucket name as S3 allows it (3-63 of `a-z 0-9 . -`, starting and
/// ending with a letter or digit).
fn valid_bucket(b: &str) -> bool {
    (3..=63).contains(&b.len())
        && b.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
        && b.as_bytes()[0].is_ascii_alphanumeric()
        && b.as_bytes()[b.len() - 1].is_ascii_alphanumeric()
}

impl S3Location {
    /// Parse `s3:http[s]://HOST[:PORT]/BUCKET[/PREFIX]`.
    pub fn parse(s: &str) -> Result<S3Location, String> {
        let bad = |why: &str| format!("{s:?}: {why}; the form is s3:https://HOST[:PORT]/BUCKET[/PREFIX]");
        let rest = s.strip_prefix("s3:").ok_or_else(|| bad("not an s3: URL"))?;
        let (scheme, rest) = rest.split_once("://").ok_or_else(|| bad("no http:// or https://"))?;
        if scheme != "http" && scheme != "https" {
            return Err(bad(&format!("unknown scheme {scheme:?}")));
        }
        let (host, path) = rest.split_once('/').ok_or_else(|| bad("no bucket"))?;
        if host.is_empty() || host.contains(['@', '?', '#']) {
            return Err(bad("bad host"));
        }
        let endpoint = format!("{scheme}://{host}");
        url::Url::parse(&endpoint).map_err(|e| bad(&format!("bad host: {e}")))?;
        let path = path.trim_end_matches('/');
        let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
        if !valid_bucket(bucket) {
            return Err(bad(&format!("{bucket:?} is not a bucket name")));
        }
        if prefix.split('/').any(|p| p.is_empty() || p == "." || p == "..") && !prefix.is_empty() {
            return Err(bad("bad prefix"));
        }
        if prefix.contains(['?', '#', '\\']) {
            return Err(bad("bad prefix"));
        }
        Ok(S3Location { endpoint, bucket: bucket.into(), prefix: prefix.into() })
    }

    /// The key of a name under the prefix.
    pub fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}/{name}", self.prefix)
        }
    }
}

/// Read `key`/`secret` from an AWS credentials file (INI) in `profile`.
fn credentials_from_file(path: &Path, profile: &str) -> Result<Credentials, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("credentials file {}: {e}", path.display()))?;
    let (mut section, mut key, mut secret, mut token) = (String::new(), None, None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.trim().trim_start_matches("profile ").to_string();
            continue;
        }
        if section != profile {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim().to_string();
            match k.trim() {
                "aws_access_key_id" => key = Some(v),
                "aws_secret_access_key" => secret = Some(v),
                "aws_session_token" => token = Some(v),
                _ => {}
            }
        }
    }
    match (key, secret) {
        (Some(k), Some(s)) => Ok(match token {
            Some(t) => Credentials::new_with_token(k, s, t),
            None => Credentials::new(k, s),
        }),
        _ => Err(format!(
            "credentials file {}: no aws_access_key_id and aws_secret_access_key in [{profile}]",
            path.display()
        )),
    }
}

/// The credentials the environment names (see the module docs).
pub fn credentials() -> Result<Credentials, String> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if let (Some(k), Some(s)) = (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
        return Ok(match env("AWS_SESSION_TOKEN") {
            Some(t) => Credentials::new_with_token(k, s, t),
            None => Credentials::new(k, s),
        });
    }
    let profile = env("AWS_PROFILE").unwrap_or_else(|| "default".into());
    let file = env("SNAPFS_S3_CREDENTIALS")
        .or_else(|| env("AWS_SHARED_CREDENTIALS_FILE"))
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|h| Path::new(&h).join(".aws/credentials")).filter(|p| p.exists()));
    match file {
        Some(f) => credentials_from_file(&f, &profile),
        None => Err("no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or name a credentials \
                     file with SNAPFS_S3_CREDENTIALS (or AWS_SHARED_CREDENTIALS_FILE, ~/.aws/credentials)"
            .into()),
    }
}

/// How failed requests are tried again: up to `attempts` in all, the k-th
/// retry after a random delay in `[0, min(cap, base * 2^k)]` ("full
/// jitter": many clients failing together do not retry together).
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    pub attempts: u32,
    pub base: Duration,
    pub cap: Duration,
}

impl Default for Retry {
    fn default() -> Retry {
        Retry { attempts: 8, base: Duration::from_millis(100), cap: Duration::from_secs(10) }
    }
}

impl Retry {
    /// The delay before retry `k` (0-based), for a random `r` in [0, 1).
    pub fn delay(&self, k: u32, r: f64) -> Duration {
        let max = self.base.saturating_mul(1u32.checked_shl(k.min(20)).unwrap_or(u32::MAX)).min(self.cap);
        max.mul_f64(r.clamp(0.0, 1.0))
    }
}

/// A random number in [0, 1) (jitter only: no need for a good generator).
fn jitter() -> f64 {
    let mut b = [0u8; 8];
    // SAFETY: a buffer of 8 bytes; getrandom fills at most that.
    let n = unsafe { libc::getrandom(b.as_mut_ptr() as *mut libc::c_void, 8, 0) };
    if n != 8 {
        return 0.5;
    }
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// Timeouts of one request.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    /// Each read or write on the connection: a node that stops answering
    /// is cut off after this, and the request is retried.
    pub io: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts { connect: Duration::from_secs(5), io: Duration::from_secs(20) }
    }
}

/// What one attempt came to.
enum Outcome<T> {
    Done(T),
    /// Worth another attempt (transport error, 5xx, 429, 408).
    Again(String),
    /// Final.
    Fail(StoreError),
}

pub struct S3Store {
    loc: S3Location,
    bucket: Bucket,
    creds: Credentials,
    agent: ureq::Agent,
    retry: Retry,
    /// Snapshot records and deletion plans read so far. They are named by
    /// the hash of their bytes (and only kept when they match it), so a
    /// name is the same bytes for good: listing them again costs one LIST
    /// and a GET per new name, not a GET for every record at each snapshot.
    named: std::sync::Mutex<HashMap<Named, Arc<[u8]>>>,
}

/// A file named by its contents: its kind and name.
type Named = (FileKind, String);

/// How long a signed URL is valid: long enough for the slowest upload.
const SIGNED_FOR: Duration = Duration::from_secs(3600);

impl S3Store {
    pub fn new(
        loc: S3Location,
        creds: Credentials,
        region: &str,
        timeouts: Timeouts,
        retry: Retry,
    ) -> StoreResult<S3Store> {
        let endpoint = url::Url::parse(&loc.endpoint).map_err(|e| remote(&loc, format!("bad endpoint: {e}")))?;
        let bucket = Bucket::new(endpoint, UrlStyle::Path, loc.bucket.clone(), region.to_string())
            .map_err(|e| remote(&loc, format!("bad bucket: {e}")))?;
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(timeouts.connect))
            .timeout_per_read(Some(timeouts.io))
            .timeout_per_write(Some(timeouts.io))
            .timeout_recv_response(Some(timeouts.io))
            .max_redirects(0)
            .no_delay(true)
            .user_agent(concat!("snapfs/", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(S3Store { loc, bucket, creds, agent: config.into(), retry, named: Default::default() })
    }

    /// A store for `loc` with the environment's credentials and region.
    pub fn from_env(loc: S3Location) -> StoreResult<S3Store> {
        let creds = credentials().map_err(|e| remote(&loc, e))?;
        let region = std::env::var("AWS_REGION")
            .or_else(|_| std::env::var("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|_| "us-east-1".into());
        S3Store::new(loc, creds, &region, Timeouts::default(), Retry::default())
    }

    pub fn location(&self) -> &S3Location {
        &self.loc
    }

    fn key(&self, kind: FileKind, name: &str) -> String {
        match kind {
            FileKind::Pack => self.loc.key(&format!("packs/{}/{name}", name.get(..2).unwrap_or("00"))),
            FileKind::Snapshot => self.loc.key(&format!("snapshots/{name}")),
            FileKind::Key => self.loc.key(&format!("keys/{name}")),
            FileKind::Plan => self.loc.key(&format!("plans/{name}")),
        }
    }

    /// Run `attempt` until it is done, fails for good, or runs out of tries.
    fn with_retries<T>(&self, what: &str, mut attempt: impl FnMut() -> Outcome<T>) -> StoreResult<T> {
        let mut last = String::new();
        for k in 0..self.retry.attempts.max(1) {
            if k > 0 {
                let d = self.retry.delay(k - 1, jitter());
                log::info!("{}: {what}: {last}; retrying in {} ms", self.loc, d.as_millis());
                std::thread::sleep(d);
            }
            match attempt() {
                Outcome::Done(v) => return Ok(v),
                Outcome::Fail(e) => return Err(e),
                Outcome::Again(why) => last = why,
            }
        }
        Err(remote(&self.loc, format!("{what}: {last} (gave up after {} attempts)", self.retry.attempts)))
    }

    /// One request: `send` makes it; `done` turns a success into the value.
    fn request<T>(
        &self,
        what: &str,
        missing: Option<(FileKind, &str)>,
        send: impl Fn() -> Result<ureq::http::Response<ureq::Body>, ureq::Error>,
        done: impl Fn(ureq::http::Response<ureq::Body>) -> Result<T, String>,
    ) -> StoreResult<T> {
        self.with_retries(what, || match crate::util::timed_debug(what, &send) {
            Err(e) => Outcome::Again(e.to_string()),
            Ok(r) => {
                let code = r.status().as_u16();
                match code {
                    200..=299 => match done(r) {
                        Ok(v) => Outcome::Done(v),
                        Err(e) => Outcome::Again(e),
                    },
                    404 if missing.is_some() => {
                        let (kind, name) = missing.unwrap_or((FileKind::Pack, ""));
                        Outcome::Fail(StoreError::NotFound { kind, name: name.to_string() })
                    }
                    408 | 429 | 500..=599 => Outcome::Again(format!("HTTP {code}")),
                    _ => Outcome::Fail(remote(&self.loc, format!("{what}: {}", explain(code, &body_text(r))))),
                }
            }
        })
    }

    /// PUT `data` at `key`.
    pub fn put_key(&self, key: &str, data: &[u8]) -> StoreResult<()> {
        let url = self.bucket.put_object(Some(&self.creds), key).sign(SIGNED_FOR);
        self.request(&format!("PUT {key}"), None, || self.agent.put(url.as_str()).send(data), |_| Ok(()))
    }

    /// GET `key` whole, or `len` bytes at `off`.
    pub fn get_key(&self, key: &str, range: Option<(u64, usize)>, missing: (FileKind, &str)) -> StoreResult<Vec<u8>> {
        let url = self.bucket.get_object(Some(&self.creds), key).sign(SIGNED_FOR);
        self.request(
            &format!("GET {key}"),
            Some(missing),
            || {
                let mut r = self.agent.get(url.as_str());
                if let Some((off, len)) = range {
                    r = r.header("Range", format!("bytes={off}-{}", off + len.max(1) as u64 - 1));
                }
                r.call()
            },
            |mut r| {
                let mut body = r.body_mut().with_config().limit(u64::MAX).read_to_vec().map_err(|e| e.to_string())?;
                if let Some((_, len)) = range {
                    // (the whole object is the range that starts at 0 and
                    // reaches past its end)
                    if r.status().as_u16() == 200 && range.is_some_and(|(off, _)| off != 0) {
                        return Err("the server ignored the range".into());
                    }
                    body.truncate(len);
                }
                Ok(body)
            },
        )
    }

    /// The size of `key` (HEAD).
    pub fn size_key(&self, key: &str, missing: (FileKind, &str)) -> StoreResult<u64> {
        let url = self.bucket.head_object(Some(&self.creds), key).sign(SIGNED_FOR);
        self.request(
            &format!("HEAD {key}"),
            Some(missing),
            || self.agent.head(url.as_str()).call(),
            |r| {
                r.headers()
                    .get("content-length")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| "no Content-Length".to_string())
            },
        )
    }

    /// Every key under `prefix` (any order).
    pub fn list_keys(&self, prefix: &str) -> StoreResult<Vec<String>> {
        Ok(self.list_keys_times(prefix)?.into_iter().map(|(k, _)| k).collect())
    }

    /// The keys under `prefix`, each with its time (LastModified).
    pub fn list_keys_times(&self, prefix: &str) -> StoreResult<Vec<(String, Option<i64>)>> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut a = self.bucket.list_objects_v2(Some(&self.creds));
            a.with_prefix(prefix);
            if let Some(t) = &token {
                a.with_continuation_token(t.clone());
            }
            let url = a.sign(SIGNED_FOR);
            let page = self.request(
                &format!("LIST {prefix}"),
                None,
                || self.agent.get(url.as_str()).call(),
                |mut r| {
                    let text = r.body_mut().read_to_string().map_err(|e| e.to_string())?;
                    rusty_s3::actions::ListObjectsV2::parse_response(&text)
                        .map_err(|e| format!("a listing that does not parse: {e}"))
                },
            )?;
            out.extend(page.contents.into_iter().map(|c| {
                let t = c.last_modified.as_deref().and_then(crate::util::parse_rfc3339);
                (c.key, t)
            }));
            match page.next_continuation_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => return Ok(out),
            }
        }
    }

    /// DELETE `key` (a missing key is no error).
    pub fn delete_key(&self, key: &str) -> StoreResult<()> {
        let url = self.bucket.delete_object(Some(&self.creds), key).sign(SIGNED_FOR);
        self.request(&format!("DELETE {key}"), None, || self.agent.delete(url.as_str()).call(), |_| Ok(()))
    }

    /// Whether the bucket answers with these credentials (HEAD bucket):
    /// a clear error for a wrong endpoint, wrong credentials or a missing
    /// bucket.
    pub fn check_bucket(&self) -> StoreResult<()> {
        let url = self.bucket.head_bucket(Some(&self.creds)).sign(SIGNED_FOR);
        self.request("HEAD bucket", None, || self.agent.head(url.as_str()).call(), |_| Ok(()))
    }
}

fn remote(loc: &S3Location, msg: String) -> StoreError {
    StoreError::Remote { location: loc.to_string(), msg }
}

fn body_text(mut r: ureq::http::Response<ureq::Body>) -> String {
    r.body_mut().with_config().limit(64 * 1024).read_to_string().unwrap_or_default()
}

/// An S3 error reply, said plainly.
fn explain(code: u16, body: &str) -> String {
    let tag = |t: &str| {
        let open = format!("<{t}>");
        let close = format!("</{t}>");
        body.split_once(&open).and_then(|(_, r)| r.split_once(&close)).map(|(v, _)| v.to_string())
    };
    let s3code = tag("Code").unwrap_or_default();
    let hint = match (code, s3code.as_str()) {
        (403, _) | (_, "InvalidAccessKeyId") | (_, "SignatureDoesNotMatch") | (_, "AccessDenied") => {
            " (wrong credentials, or no access to this bucket)"
        }
        (404, _) | (_, "NoSuchBucket") => " (no such bucket)",
        (400, "AuthorizationHeaderMalformed") => " (wrong region?)",
        _ => "",
    };
    match tag("Message") {
        Some(m) => format!("HTTP {code} {s3code}: {m}{hint}"),
        None => format!("HTTP {code}{hint}"),
    }
}

impl Store for S3Store {
    fn shared(&self) -> bool {
        true
    }

    fn remote(&self) -> bool {
        true
    }

    fn get_range_upto(&self, kind: FileKind, name: &str, off: u64, len: usize) -> StoreResult<Vec<u8>> {
        // (a range past the end is cut short by the server)
        self.get_key(&self.key(kind, name), Some((off, len)), (kind, name))
    }

    fn put(&self, kind: FileKind, name: &str, data: &[u8]) -> StoreResult<()> {
        // Names are hashes of contents: writing again writes the same bytes,
        // so no existence check (and no conditional PUT) is needed.
        self.put_key(&self.key(kind, name), data)?;
        // (a record or plan we wrote is not read back: the next snapshot
        // lists it and would otherwise GET it)
        if matches!(kind, FileKind::Snapshot | FileKind::Plan) && crate::repo::ids::ObjectId::names(name, data) {
            self.named.locked().insert((kind, name.to_string()), Arc::from(data));
        }
        Ok(())
    }

    fn get(&self, kind: FileKind, name: &str) -> StoreResult<Vec<u8>> {
        let named = matches!(kind, FileKind::Snapshot | FileKind::Plan);
        if named {
            if let Some(b) = self.named.locked().get(&(kind, name.to_string())) {
                return Ok(b.to_vec());
            }
        }
        let v = self.get_key(&self.key(kind, name), None, (kind, name))?;
        if named && crate::repo::ids::ObjectId::names(name, &v) {
            self.named.locked().insert((kind, name.to_string()), Arc::from(&v[..]));
        }
        Ok(v)
    }

    fn get_range(&self, kind: FileKind, name: &str, off: u64, len: usize) -> StoreResult<Vec<u8>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let v = self.get_key(&self.key(kind, name), Some((off, len)), (kind, name))?;
        if v.len() < len {
            return Err(StoreError::Short { path: PathBuf::from(self.key(kind, name)), got: v.len(), want: len });
        }
        Ok(v)
    }

    fn size(&self, kind: FileKind, name: &str) -> StoreResult<u64> {
        self.size_key(&self.key(kind, name), (kind, name))
    }

    fn list(&self, kind: FileKind) -> StoreResult<Vec<String>> {
        Ok(self.list_times(kind)?.into_iter().map(|(n, _)| n).collect())
    }

    fn list_times(&self, kind: FileKind) -> StoreResult<Vec<(String, Option<i64>)>> {
        let dir = match kind {
            FileKind::Pack => "packs/",
            FileKind::Snapshot => "snapshots/",
            FileKind::Key => "keys/",
            FileKind::Plan => "plans/",
        };
        let prefix = self.loc.key(dir);
        Ok(self
            .list_keys_times(&prefix)?
            .into_iter()
            .filter_map(|(k, t)| k.rsplit('/').next().map(|n| (n.to_string(), t)))
            .filter(|(n, _)| !n.is_empty() && !n.starts_with('.'))
            .collect())
    }

    fn delete(&self, kind: FileKind, name: &str) -> StoreResult<()> {
        self.named.locked().remove(&(kind, name.to_string()));
        self.delete_key(&self.key(kind, name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let l = S3Location::parse("s3:http://127.0.0.1:3900/bucket/some/prefix/").unwrap();
        assert_eq!(l.endpoint, "http://127.0.0.1:3900");
        assert_eq!(l.bucket, "bucket");
        assert_eq!(l.prefix, "some/prefix");
        assert_eq!(l.key("config"), "some/prefix/config");
        assert_eq!(l.to_string(), "s3:http://127.0.0.1:3900/bucket/some/prefix");
        let l = S3Location::parse("s3:https://s3.example.com/my-bucket").unwrap();
        assert_eq!((l.bucket.as_str(), l.prefix.as_str()), ("my-bucket", ""));
        assert_eq!(l.key("config"), "config");
        for bad in [
            "s3:ftp://h/b",
            "s3:http://h",
            "s3:http:/127.0.0.1:3900/bucket",
            "s3:http://h/B_ad",
            "s3:http://h/b",
            "s3:http://h/bucket/../x",
            "s3:http://user@h/bucket",
            "http://h/bucket",
        ] {
            assert!(S3Location::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn credentials_files() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("credentials");
        std::fs::write(
            &f,
            "[default]\naws_access_key_id = A\naws_secret_access_key = B\n\n[profile other]\naws_access_key_id=C\n\
             aws_secret_access_key=D\naws_session_token=E\n",
        )
        .unwrap();
        let c = credentials_from_file(&f, "default").unwrap();
        assert_eq!((c.key(), c.secret()), ("A", "B"));
        let c = credentials_from_file(&f, "other").unwrap();
        assert_eq!((c.key(), c.secret(), c.token()), ("C", "D", Some("E")));
        assert!(credentials_from_file(&f, "missing").unwrap_err().contains("[missing]"));
        assert!(credentials_from_file(&t.path().join("none"), "default").is_err());
    }

    #[test]
    fn backoff_grows_to_a_cap_with_full_jitter() {
        let r = Retry { attempts: 8, base: Duration::from_millis(100), cap: Duration::from_secs(2) };
        assert_eq!(r.delay(0, 0.999_999), Duration::from_millis(100).mul_f64(0.999_999));
        assert_eq!(r.delay(3, 0.5), Duration::from_millis(400));
        assert_eq!(r.delay(10, 1.0), Duration::from_secs(2));
        assert_eq!(r.delay(1000, 0.5), Duration::from_secs(1));
        assert_eq!(r.delay(2, 0.0), Duration::ZERO);
        let j: Vec<f64> = (0..100).map(|_| jitter()).collect();
        assert!(j.iter().all(|x| (0.0..1.0).contains(x)));
        assert!(j.iter().any(|x| *x != j[0]));
    }

    #[test]
    fn error_replies_are_said_plainly() {
        let body = "<Error><Code>NoSuchBucket</Code><Message>Bucket not found: x</Message></Error>";
        assert_eq!(explain(404, body), "HTTP 404 NoSuchBucket: Bucket not found: x (no such bucket)");
        assert!(explain(403, "").contains("wrong credentials"));
    }
}
