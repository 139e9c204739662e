//! Encrypted repositories (issue 13): every command on format 3, key slots,
//! tampering named, nothing of the data or the key in the clear, and
//! hosts that may write but not read.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::*;

/// A cheap Argon2id cost for the tests' passphrase slots.
const CHEAP: [&str; 4] = ["--kdf-memory", "8", "--kdf-iterations", "1"];
/// What the protected files hold and are named: it must show nowhere in the repository.
const CANARY: &str = "canary-plaintext-7f3e9a";
const SECRET_NAME: &str = "secret-name-4c1d2b.txt";

struct Setup {
    t: tempfile::TempDir,
    repo: PathBuf,
    pw: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let t = tempfile::tempdir().unwrap();
        let pw = t.path().join("pw");
        fs::write(&pw, "correct horse battery\n").unwrap();
        let repo = t.path().join("repo");
        let mut args = vec!["init", "--password-file", pw.to_str().unwrap()];
        args.extend(CHEAP);
        args.push(repo.to_str().unwrap());
        let out = run_ok(&args);
        assert!(out.contains("encrypted"), "{out}");
        Setup { t, repo, pw }
    }
    fn r(&self) -> &str {
        self.repo.to_str().unwrap()
    }
    fn p(&self) -> &str {
        self.pw.to_str().unwrap()
    }
    fn dir(&self, name: &str) -> PathBuf {
        let d = self.t.path().join(name);
        fs::create_dir_all(&d).unwrap();
        d
    }
    fn mount(&self, dir: &Path, key: &[&str]) -> Mounted {
        let mut extra: Vec<String> = key.iter().map(|s| s.to_string()).collect();
        extra.extend(["--repo".to_string(), self.r().to_string()]);
        Mounted::with(dir, MountOpts { extra, ..Default::default() })
    }
}

/// Every file of the repository proper (what an observer of it, or of a
/// bucket holding it, sees): config, keys, packs, records.
fn repository_files(repo: &Path) -> Vec<PathBuf> {
    let mut out = vec![repo.join("config")];
    let mut stack: Vec<PathBuf> = ["keys", "packs", "snapshots"].iter().map(|d| repo.join(d)).collect();
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

/// Files under `dir` holding `needle`.
fn holding(files: &[PathBuf], needle: &[u8]) -> Vec<PathBuf> {
    files
        .iter()
        .filter(|f| fs::read(f).unwrap_or_default().windows(needle.len()).any(|w| w == needle))
        .cloned()
        .collect()
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten() {
            let e = e.unwrap();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                out.push(e.path());
            }
        }
    }
    out
}

fn fails_with(args: &[&str], want: &str) -> String {
    let out = snapfs(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "snapfs {args:?} should fail");
    assert!(err.contains(want), "snapfs {args:?}: wanted {want:?} in:\n{err}");
    err
}

#[test]
fn every_command_works_on_an_encrypted_repository() {
    let s = Setup::new();
    let d = s.dir("d");
    fs::write(d.join(SECRET_NAME), CANARY.repeat(1000)).unwrap();
    fs::create_dir(d.join("sub")).unwrap();
    fs::write(d.join("sub/big"), noise(1, 3_000_000)).unwrap();
    let m = s.mount(&d, &["--password-file", s.p()]);
    let dir = d.to_str().unwrap();
    snap(&d, "one");
    fs::write(d.join("sub/new"), format!("{CANARY} second")).unwrap();
    write_at(&d.join("sub/big"), 1_000_000, b"changed in place");
    snap(&d, "two");
    // through the daemon: list, diff, .snapshots, status, verify
    let out = run_ok(&["list", dir]);
    assert!(out.contains("one") && out.contains("two"), "{out}");
    let out = run_ok(&["diff", dir, "one", "two"]);
    assert!(out.contains("sub/new") && out.contains("sub/big"), "{out}");
    assert_eq!(fs::read(d.join(".snapshots/one").join(SECRET_NAME)).unwrap(), CANARY.repeat(1000).as_bytes());
    assert!(!d.join(".snapshots/one/sub/new").exists());
    let mut want = noise(1, 3_000_000);
    assert_eq!(fs::read(d.join(".snapshots/one/sub/big")).unwrap(), want);
    want[1_000_000..1_000_016].copy_from_slice(b"changed in place");
    assert_eq!(fs::read(d.join(".snapshots/two/sub/big")).unwrap(), want);
    let (ok, v) = json_of(&["verify", "--json", dir]);
    assert!(ok && v["ok"] == true, "{v}");
    let (ok, v) = json_of(&["verify", "--live", "--json", dir]);
    assert!(ok, "{v}");
    // rollback in place
    fs::write(d.join(SECRET_NAME), b"overwritten").unwrap();
    // (rollback and restore read the repository in the client: the key too)
    fails_with(&["rollback", dir, "one"], "is encrypted: give its key");
    run_ok(&["rollback", "--password-file", s.p(), dir, "one"]);
    assert_eq!(fs::read(d.join(SECRET_NAME)).unwrap(), CANARY.repeat(1000).as_bytes());
    // restore through the daemon's repository (the client asks for the key)
    let target = s.t.path().join("restored");
    run_ok(&["restore", "--password-file", s.p(), dir, "two", target.to_str().unwrap()]);
    assert_eq!(fs::read(target.join("sub/big")).unwrap(), want);
    m.umount();

    // offline, with the key: list, verify --read-data, restore, browse, forget, prune
    let key = ["--password-file", s.p()];
    let with = |args: &[&str]| -> Vec<String> {
        args.iter().map(|a| a.to_string()).chain(key.iter().map(|a| a.to_string())).collect()
    };
    let run = |args: &[&str]| run_ok(&with(args).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(run(&["list", "--repo", s.r()]).contains("two"));
    let out = run(&["verify", "--read-data", "--repo", s.r()]);
    assert!(out.contains("no damage"), "{out}");
    let t2 = s.t.path().join("restored-offline");
    run(&["restore", "-j", "3", "--repo", s.r(), "one", t2.to_str().unwrap()]);
    assert_eq!(fs::read(t2.join(SECRET_NAME)).unwrap(), CANARY.repeat(1000).as_bytes());
    let b = s.dir("browse");
    run(&["browse", "--repo", s.r(), b.to_str().unwrap()]);
    let _g = BrowseGuard(b.clone());
    assert_eq!(fs::read(b.join("two/sub/new")).unwrap(), format!("{CANARY} second").as_bytes());
    run_ok(&["umount", b.to_str().unwrap()]);
    run(&["forget", "--repo", s.r(), "one"]);
    run(&["prune", "--repo", s.r()]);
    let out = run(&["verify", "--read-data", "--repo", s.r()]);
    assert!(out.contains("no damage"), "{out}");
    let out = run(&["list", "--repo", s.r()]);
    assert!(!out.lines().any(|l| l.starts_with("one ")) && out.contains("two"), "{out}");

    // without the key: a clear error, nothing read
    let out = snapfs(&["list", "--repo", s.r()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("is encrypted: give its key"), "{err}");

    // nothing of the contents or the names is in the repository's files
    let files = repository_files(&s.repo);
    assert!(files.len() > 5, "{files:?}");
    for needle in [CANARY.as_bytes(), SECRET_NAME.as_bytes(), b"sub/new", &noise(1, 3_000_000)[..64]] {
        let found = holding(&files, needle);
        assert!(found.is_empty(), "{:?} found in {found:?}", String::from_utf8_lossy(&needle[..needle.len().min(30)]));
    }
    // nor the passphrase in the local state or the logs
    let mut local = files_under(&s.repo.join("state"));
    local.push(s.repo.join("log"));
    local.extend(files_under(s.t.path()).into_iter().filter(|p| p.extension().is_some_and(|e| e == "log")));
    assert!(holding(&local, b"correct horse").is_empty());
}

#[test]
fn a_default_repository_is_made_encrypted_with_the_key_given_at_mount() {
    let t = tempfile::tempdir().unwrap();
    let pw = t.path().join("pw");
    fs::write(&pw, "mount made it\n").unwrap();
    let d = t.path().join("d");
    fs::create_dir(&d).unwrap();
    fs::write(d.join("f"), CANARY).unwrap();
    let key = vec!["--password-file".to_string(), pw.to_str().unwrap().to_string()];
    let m = Mounted::with(&d, MountOpts { extra: key, ..Default::default() });
    snap(&d, "a");
    m.umount();
    let repo = d.join(".snapfs");
    let config: serde_json::Value = serde_json::from_slice(&fs::read(repo.join("config")).unwrap()).unwrap();
    assert_eq!(config["format"], 3, "{config}");
    assert!(holding(&repository_files(&repo), CANARY.as_bytes()).is_empty());
    // a background mount gets the key through a pipe: not in its
    // arguments, not in its environment
    let out = std::process::Command::new(bin())
        .env("SNAPFS_PASSWORD_FILE", &pw)
        .args(["mount", d.to_str().unwrap()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let _g = BrowseGuard(d.clone()); // (unmounts even if an assertion fails)
    let pid = status(&d)["pid"].as_u64().unwrap() as u32;
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(
        !String::from_utf8_lossy(&cmdline).contains(pw.to_str().unwrap()),
        "the key source is in the daemon's arguments"
    );
    let environ = fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(
        !String::from_utf8_lossy(&environ).contains("SNAPFS_PASSWORD"),
        "the daemon kept the key source in its environment"
    );
    // and it holds its keys out of core dumps
    let st = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let smaps = fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    assert!(
        smaps.lines().any(|l| l.starts_with("VmFlags:") && l.split_whitespace().any(|f| f == "dd")),
        "no MADV_DONTDUMP page"
    );
    assert!(st.contains("Name:"));
    assert_eq!(fs::read(d.join(".snapshots/a/f")).unwrap(), CANARY.as_bytes());
    run_ok(&["umount", d.to_str().unwrap()]);
}

#[test]
fn key_slots_are_added_changed_and_removed() {
    let s = Setup::new();
    let r = s.r();
    let with = |pw: &Path, args: &[&str]| -> String {
        let mut v: Vec<&str> = args.to_vec();
        v.extend(["--password-file", pw.to_str().unwrap(), "--repo", r]);
        run_ok(&v)
    };
    // wrong passphrase, no key source, a file that is no key file: each a clear error
    let bad = s.t.path().join("bad");
    fs::write(&bad, "not it\n").unwrap();
    fails_with(&["list", "--repo", r, "--password-file", bad.to_str().unwrap()], "wrong passphrase");
    fails_with(&["list", "--repo", r], "is encrypted: give its key");
    fails_with(&["list", "--repo", r, "--key-file", s.p()], "not a snapfs key file");
    // a second passphrase and a key file
    let pw2 = s.t.path().join("pw2");
    fs::write(&pw2, "second passphrase\n").unwrap();
    let mut add = vec!["key", "add", "--new-password-file", pw2.to_str().unwrap()];
    add.extend(CHEAP);
    with(&s.pw, &add);
    let kf = s.t.path().join("host.key");
    let out = with(&s.pw, &["key", "add", "--new-key-file", kf.to_str().unwrap()]);
    assert!(out.contains("made"), "{out}");
    let mode = fs::metadata(&kf).map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777).unwrap();
    assert_eq!(mode, 0o600);
    let (ok, v) = json_of(&["key", "list", "--json", "--password-file", s.p(), "--repo", r]);
    assert!(ok);
    let slots = v.as_array().unwrap().clone();
    assert_eq!(slots.len(), 3, "{v}");
    assert_eq!(slots.iter().filter(|s| s["current"] == true).count(), 1);
    let kslot = slots.iter().find(|s| s["kind"] == "key-file").unwrap()["name"].as_str().unwrap().to_string();
    // each opens it
    with(&pw2, &["list"]);
    run_ok(&["list", "--repo", r, "--key-file", kf.to_str().unwrap()]);
    // passwd replaces the slot in use: the old passphrase no longer opens
    let pw3 = s.t.path().join("pw3");
    fs::write(&pw3, "third passphrase\n").unwrap();
    let mut passwd = vec!["key", "passwd", "--new-password-file", pw3.to_str().unwrap()];
    passwd.extend(CHEAP);
    with(&pw2, &passwd);
    fails_with(&["list", "--repo", r, "--password-file", pw2.to_str().unwrap()], "wrong passphrase");
    with(&pw3, &["list"]);
    // remove by prefix: the key file opens nothing then
    with(&s.pw, &["key", "remove", &kslot[..8]]);
    fails_with(&["list", "--repo", r, "--key-file", kf.to_str().unwrap()], "no key-file slot");
    // the last full slot stays
    let (_, v) = json_of(&["key", "list", "--json", "--password-file", s.p(), "--repo", r]);
    let slots = v.as_array().unwrap();
    assert_eq!(slots.len(), 2, "{v}");
    let name = |cur: bool| slots.iter().find(|x| x["current"] == cur).unwrap()["name"].as_str().unwrap().to_string();
    with(&s.pw, &["key", "remove", &name(false)]);
    fails_with(&["key", "remove", "--password-file", s.p(), "--repo", r, &name(true)], "last key slot");
    fails_with(&["list", "--repo", r, "--password-file", pw3.to_str().unwrap()], "wrong passphrase");
    // a plain repository has no keys
    let plain = s.t.path().join("plain");
    run_ok(&["init", "--encryption", "none", plain.to_str().unwrap()]);
    fails_with(&["key", "list", "--repo", plain.to_str().unwrap()], "not encrypted");
}

/// A copy of the repository at `to` (each tamper test on its own copy).
fn copy_repo(from: &Path, to: &Path) {
    let st = std::process::Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap();
    assert!(st.success());
}

/// Flip one bit of `path` at `off` (from the end when negative).
fn flip(path: &Path, off: i64) {
    let mut b = fs::read(path).unwrap();
    let at = if off < 0 { (b.len() as i64 + off) as usize } else { off as usize };
    b[at] ^= 0x20;
    fs::write(path, b).unwrap();
}

/// The pack of file data (the larger of a snapshot's two: data and metadata).
fn data_pack(dir: &Path) -> PathBuf {
    let mut f = files_under(dir);
    assert_eq!(f.len(), 2, "{f:?}");
    f.sort_by_key(|p| fs::metadata(p).unwrap().len());
    f.pop().unwrap()
}

fn only_file(dir: &Path) -> PathBuf {
    let mut f = files_under(dir);
    assert_eq!(f.len(), 1, "{f:?}");
    f.pop().unwrap()
}

#[test]
fn tampering_is_named_and_never_gives_wrong_bytes() {
    let s = Setup::new();
    let d = s.dir("d");
    fs::write(d.join("f"), noise(9, 200_000)).unwrap();
    let m = s.mount(&d, &["--password-file", s.p()]);
    snap(&d, "one");
    m.umount();
    let key = ["--password-file", s.p()];
    let each = |name: &str| -> PathBuf {
        let r = s.t.path().join(name);
        copy_repo(&s.repo, &r);
        r
    };
    let cmd = |args: &[&str]| -> Vec<String> { args.iter().chain(key.iter()).map(|a| a.to_string()).collect() };
    let fails = |args: &[&str], want: &str| {
        let a = cmd(args);
        fails_with(&a.iter().map(String::as_str).collect::<Vec<_>>(), want)
    };

    // 1. pack data: a byte inside a sealed blob
    let r1 = each("r1");
    let pack = data_pack(&r1.join("packs"));
    let mut repo =
        snapfs::repo::Repo::open_at(&snapfs::repo::Location::parse(r1.to_str().unwrap()).unwrap(), None).unwrap();
    repo.unlock(&snapfs::repo::keyslot::KeySource::Passphrase(b"correct horse battery".to_vec().into())).unwrap();
    let objects = snapfs::repo::objstore::Objects::open(repo.store(), None).unwrap();
    let name = pack.file_name().unwrap().to_str().unwrap();
    let blob = objects
        .pack_entries(name)
        .unwrap()
        .into_iter()
        .find(|e| e.kind == snapfs::repo::objects::ObjKind::Blob)
        .unwrap();
    flip(&pack, (blob.offset + blob.stored as u64 / 2) as i64);
    let r = r1.to_str().unwrap();
    let err = fails(
        &["restore", "--repo", r, "one", s.t.path().join("t1").to_str().unwrap()],
        "does not open with this repository's key",
    );
    assert!(err.contains(&blob.id.to_string()[..12]) || err.contains(&blob.id.to_string()), "{err}");
    let out = snapfs(&cmd(&["verify", "--read-data", "--repo", r]).iter().map(String::as_str).collect::<Vec<_>>());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success() && text.contains("damaged"), "{text}");
    let b = s.dir("b1");
    run_ok(&cmd(&["browse", "--repo", r, b.to_str().unwrap()]).iter().map(String::as_str).collect::<Vec<_>>());
    let _g = BrowseGuard(b.clone());
    let e = fs::read(b.join("one/f")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    run_ok(&["umount", b.to_str().unwrap()]);

    // 2. the trailer: the pack cannot be indexed; its objects are missing, named
    let r2 = each("r2");
    let pack = data_pack(&r2.join("packs"));
    flip(&pack, -20);
    let r = r2.to_str().unwrap();
    let out = snapfs(&cmd(&["verify", "--repo", r]).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!out.status.success(), "verify passed a pack with a damaged trailer");

    // 3. a record: flipped, it is damaged; moved from another repository, it does not open
    let r3 = each("r3");
    let rec = only_file(&r3.join("snapshots"));
    flip(&rec, 40);
    let out = run_ok(&cmd(&["list", "--repo", r3.to_str().unwrap()]).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.contains("DAMAGED"), "{out}");
    let other = Setup::new();
    let od = other.dir("od");
    fs::write(od.join("x"), b"other").unwrap();
    let om = other.mount(&od, &["--password-file", other.p()]);
    snap(&od, "foreign");
    om.umount();
    let r4 = each("r4");
    let foreign = only_file(&other.repo.join("snapshots"));
    fs::copy(&foreign, r4.join("snapshots").join(foreign.file_name().unwrap())).unwrap();
    let (_, v) = json_of(
        &cmd(&["list", "--json", "--repo", r4.to_str().unwrap()]).iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let moved = v
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == foreign.file_name().unwrap().to_str().unwrap())
        .unwrap()
        .clone();
    assert!(moved["damaged"].as_str().unwrap().contains("does not open with this repository's key"), "{moved}");

    // 4. a key slot edited by hand
    let r5 = each("r5");
    let slot = only_file(&r5.join("keys"));
    let text = fs::read_to_string(&slot).unwrap().replace("\"full\"", "\"write-only\"");
    fs::write(&slot, text).unwrap();
    fails(&["list", "--repo", r5.to_str().unwrap()], "was changed");

    // 5. the config: a field changed, or made to say "not encrypted"
    let r6 = each("r6");
    let c = fs::read_to_string(r6.join("config")).unwrap().replace("65536", "131072");
    fs::write(r6.join("config"), c).unwrap();
    fails(&["list", "--repo", r6.to_str().unwrap()], "its config was changed");
    let r7 = each("r7");
    let mut c: serde_json::Value = serde_json::from_slice(&fs::read(r7.join("config")).unwrap()).unwrap();
    let o = c.as_object_mut().unwrap();
    o.remove("encryption");
    o.remove("mac");
    o.insert("format".into(), 2.into());
    fs::write(r7.join("config"), serde_json::to_vec(&c).unwrap()).unwrap();
    fails_with(&["list", "--repo", r7.to_str().unwrap()], "holds key slots");
}

/// Two hosts writing into one bucket: A with a full key, B with a
/// write-only one (the caches, hence the local state, are each host's own).
#[test]
fn a_write_only_host_snapshots_but_reads_no_contents() {
    let t = tempfile::tempdir().unwrap();
    let pw = t.path().join("pw");
    fs::write(&pw, "full key\n").unwrap();
    let url = s3_url("wo");
    let mut init = vec!["init", "--password-file", pw.to_str().unwrap()];
    init.extend(CHEAP);
    init.push(&url);
    run_ok(&init);
    let full = ["--password-file", pw.to_str().unwrap()];
    let mount = |dir: &Path, key: &[&str]| {
        let mut extra: Vec<String> = key.iter().map(|s| s.to_string()).collect();
        extra.extend(["--repo".to_string(), url.clone()]);
        Mounted::with(dir, MountOpts { extra, ..Default::default() })
    };
    // host A, full key
    let a = t.path().join("a");
    fs::create_dir(&a).unwrap();
    fs::write(a.join("a.txt"), CANARY).unwrap();
    let ma = mount(&a, &full);
    snap(&a, "a1");
    let wo = t.path().join("wo.key");
    let mut add = vec!["key", "add", "--write-only", "--new-key-file", wo.to_str().unwrap(), "--repo", &url];
    add.extend(full);
    run_ok(&add);
    // host B, write-only
    let wk = ["--key-file", wo.to_str().unwrap()];
    let b = t.path().join("b");
    fs::create_dir(&b).unwrap();
    fs::write(b.join("b.txt"), b"host b data").unwrap();
    let mb = mount(&b, &wk);
    snap(&b, "b1");
    fs::write(b.join("b2.txt"), b"more").unwrap();
    snap(&b, "b2");
    let bd = b.to_str().unwrap();
    // each host sees its own snapshots; the repository holds both
    // (by the name column: an id may begin with "a1")
    let names = |out: &str| -> Vec<String> {
        out.lines().skip(1).filter_map(|l| l.split_whitespace().next()).map(str::to_string).collect()
    };
    let out = run_ok(&["list", bd]);
    assert_eq!(names(&out), ["b1", "b2"], "{out}");
    let mut list_all = vec!["list", "--repo", &url];
    list_all.extend(wk);
    let out = run_ok(&list_all);
    assert!(names(&out).contains(&"a1".to_string()) && names(&out).contains(&"b2".to_string()), "{out}");
    // structure yes, contents no: not even its own
    assert_eq!(fs::metadata(b.join(".snapshots/b1/b.txt")).unwrap().len(), 11);
    let e = fs::read(b.join(".snapshots/b1/b.txt")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{e}");
    let (ok, v) = json_of(&["verify", "--json", bd]);
    assert!(ok && v["ok"] == true, "verify (structure) with a write-only key: {v}");
    fails_with(&["verify", "--read-data", bd], "needs a full key");
    // it removes nothing, and makes no full key
    fails_with(&["forget", bd, "a1"], "write-only");
    fails_with(&["prune", bd], "write-only");
    let mut key_add = vec!["key", "add", "--repo", &url, "--new-key-file", "/nonexistent/x"];
    key_add.extend(wk);
    fails_with(&key_add, "write-only");
    // a schedule with retention takes its snapshots and leaves retention
    // to a full key, without failing
    run_ok(&["schedule", "--every", "1s", "--keep", "last=1", bd]);
    let t0 = std::time::Instant::now();
    let sched = loop {
        let (_, st) = json_of(&["status", "--json", bd]);
        let sc = st["health"]["schedule"].clone();
        if sc["runs"].as_u64().unwrap_or(0) >= 2 {
            break sc;
        }
        assert!(t0.elapsed() < std::time::Duration::from_secs(30), "no scheduled runs: {st}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let last = sched["last_result"].as_str().unwrap_or_default().to_string();
    assert!(last.contains("retention left to a full key"), "{sched}");
    run_ok(&["schedule", "--off", bd]);
    assert!(names(&run_ok(&["list", bd])).contains(&"b1".to_string()), "a write-only schedule removed nothing");
    mb.umount();
    let target = t.path().join("t");
    let mut restore = vec!["restore", "--repo", &url, "a1", target.to_str().unwrap()];
    restore.extend(wk);
    fails_with(&restore, "write-only key");
    // host A, with the full key, reads what B wrote
    let a_sees = t.path().join("from-b");
    let mut restore = vec!["restore", "--repo", &url, "b2", a_sees.to_str().unwrap()];
    restore.extend(full);
    run_ok(&restore);
    assert_eq!(fs::read(a_sees.join("b.txt")).unwrap(), b"host b data");
    assert_eq!(fs::read(a_sees.join("b2.txt")).unwrap(), b"more");
    ma.umount();
}

#[test]
fn replicas_of_an_encrypted_repository_hold_ciphertext_and_its_key_slots() {
    let s = Setup::new();
    let d = s.dir("d");
    fs::write(d.join(SECRET_NAME), CANARY).unwrap();
    let copy = s.t.path().join("second-disk");
    let m = s.mount(&d, &["--password-file", s.p(), "--replica", copy.to_str().unwrap()]);
    snap(&d, "one");
    let dir = d.to_str().unwrap();
    run_ok(&["replica", "sync", dir]);
    // a slot added on the primary reaches the replica; one removed goes
    let pw2 = s.t.path().join("pw2");
    fs::write(&pw2, "second\n").unwrap();
    let mut add =
        vec!["key", "add", "--new-password-file", pw2.to_str().unwrap(), "--password-file", s.p(), "--repo", s.r()];
    add.extend(CHEAP);
    run_ok(&add);
    run_ok(&["replica", "sync", dir]);
    let c = copy.to_str().unwrap();
    run_ok(&["list", "--repo", c, "--password-file", pw2.to_str().unwrap()]);
    let (_, v) = json_of(&["key", "list", "--json", "--password-file", pw2.to_str().unwrap(), "--repo", s.r()]);
    let second =
        v.as_array().unwrap().iter().find(|x| x["current"] == true).unwrap()["name"].as_str().unwrap().to_string();
    run_ok(&["key", "remove", "--password-file", s.p(), "--repo", s.r(), &second]);
    run_ok(&["replica", "sync", dir]);
    fails_with(&["list", "--repo", c, "--password-file", pw2.to_str().unwrap()], "wrong passphrase");
    m.umount();
    // the replica alone: encrypted, nothing in the clear, restores with the key
    assert!(holding(&repository_files(&copy), CANARY.as_bytes()).is_empty());
    assert!(holding(&repository_files(&copy), SECRET_NAME.as_bytes()).is_empty());
    fails_with(&["list", "--repo", c], "is encrypted");
    let t = s.t.path().join("t");
    run_ok(&["restore", "--repo", c, "--password-file", s.p(), "one", t.to_str().unwrap()]);
    assert_eq!(fs::read(t.join(SECRET_NAME)).unwrap(), CANARY.as_bytes());
    run_ok(&["verify", "--read-data", "--repo", c, "--password-file", s.p()]);
}

#[test]
fn a_plain_history_moves_to_an_encrypted_repository() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("d");
    fs::create_dir_all(d.join("deep/er")).unwrap();
    fs::write(d.join(SECRET_NAME), CANARY).unwrap();
    fs::write(d.join("deep/er/big"), noise(3, 700_000)).unwrap();
    fs::hard_link(d.join(SECRET_NAME), d.join("deep/link")).unwrap();
    let f = fs::File::create(d.join("sparse")).unwrap();
    f.set_len(50 << 20).unwrap();
    write_at(&d.join("sparse"), 30 << 20, b"island");
    let m = Mounted::new(&d);
    snap(&d, "first");
    write_at(&d.join("deep/er/big"), 100_000, b"second version");
    snap(&d, "second");
    m.umount();
    let old = d.join(".snapfs");
    let new = t.path().join("new");
    let pw = t.path().join("pw");
    fs::write(&pw, "moved\n").unwrap();
    let mut init = vec!["init", "--password-file", pw.to_str().unwrap(), "--copy-from", old.to_str().unwrap()];
    init.extend(CHEAP);
    init.push(new.to_str().unwrap());
    let out = run_ok(&init);
    assert!(out.contains("copied 2 snapshots"), "{out}");
    assert!(holding(&repository_files(&new), CANARY.as_bytes()).is_empty());
    let key = ["--password-file", pw.to_str().unwrap()];
    let mut verify = vec!["verify", "--read-data", "--repo", new.to_str().unwrap()];
    verify.extend(key);
    run_ok(&verify);
    for name in ["first", "second"] {
        let a = t.path().join(format!("old-{name}"));
        let b = t.path().join(format!("new-{name}"));
        run_ok(&["restore", "--repo", old.to_str().unwrap(), name, a.to_str().unwrap()]);
        let mut r = vec!["restore", "--repo", new.to_str().unwrap(), name, b.to_str().unwrap()];
        r.extend(key);
        run_ok(&r);
        assert_same(&model(&a), &model(&b), name);
        // holes stay holes, links stay links
        assert!(fs::metadata(b.join("sparse")).map(|m| std::os::unix::fs::MetadataExt::blocks(&m)).unwrap() < 1024);
        let ino = |p: &Path| std::os::unix::fs::MetadataExt::ino(&fs::metadata(p).unwrap());
        assert_eq!(ino(&b.join(SECRET_NAME)), ino(&b.join("deep/link")));
    }
    // the copy is incremental where the old history was: the second
    // snapshot names the first as its parent
    let mut l = vec!["list", "--json", "--repo", new.to_str().unwrap()];
    l.extend(key);
    let (_, v) = json_of(&l);
    let a = v.as_array().unwrap();
    assert_eq!(a[1]["parent"], a[0]["id"], "{v}");
}
