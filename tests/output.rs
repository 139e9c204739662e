//! What the commands print for scripts: `--json` of every command against
//! doc/USAGE.md's table ("JSON output"), `--progress json` lines, no
//! progress without a terminal, and `--quiet` (a reader that goes away: tests/security.rs).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;

/// doc/USAGE.md's "JSON output" table: command -> (value, top-level fields).
fn documented() -> BTreeMap<String, (String, Vec<String>)> {
    let readme = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("doc/USAGE.md")).unwrap();
    let table = readme.split("## JSON output").nth(1).expect("a JSON output section in doc/USAGE.md");
    let mut doc = BTreeMap::new();
    for row in table.lines().skip_while(|l| !l.starts_with("| ---")).skip(1).take_while(|l| l.starts_with('|')) {
        let cells: Vec<&str> = row.trim_matches('|').split(" | ").map(str::trim).collect();
        let ticked = |cell: &str| -> Vec<String> { cell.split('`').skip(1).step_by(2).map(String::from).collect() };
        for cmd in ticked(cells[0]) {
            doc.insert(cmd, (cells[1].to_string(), ticked(cells[2])));
        }
    }
    assert!(doc.len() >= 15, "the table lists every command: {doc:?}");
    doc
}

struct Checker {
    doc: BTreeMap<String, (String, Vec<String>)>,
    seen: BTreeSet<String>,
}

impl Checker {
    /// `v`, the output of `cmd --json`, has the documented shape and fields.
    fn check(&mut self, cmd: &str, v: &serde_json::Value) {
        let (shape, fields) = self.doc.get(cmd).unwrap_or_else(|| panic!("{cmd}: not in the README's table"));
        let objects: Vec<&serde_json::Value> = match shape.as_str() {
            "object" => vec![v],
            "object or null" if v.is_null() => vec![],
            "object or null" => vec![v],
            "array of objects" => {
                let a = v.as_array().unwrap_or_else(|| panic!("{cmd}: not an array: {v}"));
                assert!(!a.is_empty(), "{cmd}: an empty array checks nothing");
                a.iter().collect()
            }
            other => panic!("{cmd}: unknown shape {other:?} in the README"),
        };
        for o in objects {
            let o = o.as_object().unwrap_or_else(|| panic!("{cmd}: not an object: {o}"));
            for f in fields {
                assert!(
                    o.contains_key(f),
                    "{cmd} --json lacks the documented {f:?}: {}",
                    serde_json::Value::from(o.clone())
                );
            }
        }
        self.seen.insert(cmd.to_string());
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn every_command_s_json_holds_the_fields_the_readme_lists() {
    let mut c = Checker { doc: documented(), seen: BTreeSet::new() };
    let t = open_tempdir();
    let repo = t.path().join("repo");
    let (ok, v) = json_of(&["init", "--json", "--encryption", "none", s(&repo)]);
    assert!(ok, "{v}");
    assert_eq!(v["encrypted"], false, "{v}");
    assert!(v["key_file"].is_null() && v["copied"].is_null(), "{v}");
    c.check("init", &v);

    // an encrypted one: init says so, and its key slots
    let pw = t.path().join("pw");
    fs::write(&pw, "correct horse battery\n").unwrap();
    let sealed = t.path().join("sealed");
    let cheap = ["--kdf-memory", "8", "--kdf-iterations", "1"];
    let (ok, v) = json_of(&[&["init", "--json", "--password-file", s(&pw)][..], &cheap, &[s(&sealed)]].concat());
    assert!(ok && v["encrypted"] == true, "{v}");
    c.check("init", &v);
    let (ok, v) = json_of(&["key", "list", "--json", "--password-file", s(&pw), "--repo", s(&sealed)]);
    assert!(ok && v[0]["current"] == true, "{v}");
    c.check("key list", &v);

    let d = t.path().join("d");
    fs::create_dir_all(d.join("sub")).unwrap();
    fs::write(d.join("a.txt"), b"one").unwrap();
    fs::write(d.join("sub/b.txt"), noise(1, 200_000)).unwrap();
    let m = Mounted::with(&d, MountOpts { repo: Some(repo.clone()), ..Default::default() });
    let dir = s(&m.dir);

    let (_, v) = json_of(&["status", "--json", dir]);
    assert_eq!(v["mounted"], true, "{v}");
    c.check("status", &v);
    let (_, v) = json_of(&["status", "--ops", "--json", dir]);
    c.check("status --ops", &v);

    let (ok, v) = json_of(&["snapshot", "--json", "--name", "s1", dir]);
    assert!(ok && v["name"] == "s1", "{v}");
    c.check("snapshot", &v);
    fs::write(m.path("a.txt"), b"two, longer").unwrap();
    snap(&m.dir, "s2");

    let (_, v) = json_of(&["list", "--json", dir]);
    assert_eq!(v.as_array().unwrap().len(), 2, "{v}");
    c.check("list", &v);
    let (_, v) = json_of(&["diff", "--json", dir, "s1", "s2"]);
    assert_eq!(v["modified"], 1, "{v}");
    c.check("diff", &v);

    let (_, v) = json_of(&["schedule", "--json", "--every", "1h", dir]);
    assert!(v["every"].is_string(), "{v}");
    c.check("schedule", &v);
    let (_, v) = json_of(&["schedule", "--json", "--off", dir]);
    assert!(v.is_null(), "{v}");
    c.check("schedule", &v);

    let (ok, v) = json_of(&["verify", "--json", "--read-data", dir]);
    assert!(ok && v["ok"] == true, "{v}");
    c.check("verify", &v);
    let (ok, v) = json_of(&["verify", "--live", "--json", dir]);
    assert!(ok && v["ok"] == true, "{v}");
    c.check("verify --live", &v);

    let target = t.path().join("restored");
    let (ok, v) = json_of(&["restore", "--json", dir, "s1", s(&target)]);
    assert!(ok && v["files"] == 2, "{v}");
    c.check("restore", &v);
    assert_eq!(fs::read(target.join("a.txt")).unwrap(), b"one");
    let (ok, v) = json_of(&["rollback", "--json", dir, "s1"]);
    assert!(ok, "{v}");
    c.check("rollback", &v);
    assert_eq!(fs::read(m.path("a.txt")).unwrap(), b"one");

    let (_, v) = json_of(&["forget", "--json", "--dry-run", dir, "s2"]);
    assert_eq!(v["removed"].as_array().unwrap().len(), 1, "{v}");
    c.check("forget", &v);
    let (ok, v) = json_of(&["forget", "--json", "--prune", dir, "s2"]);
    assert!(ok, "{v}");
    c.check("forget --prune", &v);
    let (ok, v) = json_of(&["prune", "--json", dir]);
    assert!(ok, "{v}");
    c.check("prune", &v);

    let replica = t.path().join("replica");
    let (ok, v) = json_of(&["replica", "add", "--json", dir, s(&replica)]);
    assert!(ok, "{v}");
    c.check("replica add", &v);
    let (ok, v) = json_of(&["replica", "sync", "--json", dir]);
    assert!(ok && v[0]["lag"]["snapshots_behind"] == 0, "{v}");
    c.check("replica sync", &v);
    let (_, v) = json_of(&["replica", "list", "--json", dir]);
    c.check("replica list", &v);
    let other = t.path().join("replica2");
    run_ok(&["replica", "add", dir, s(&other)]);
    let (ok, v) = json_of(&["replica", "remove", "--json", dir, s(&other)]);
    assert!(ok && v.as_array().unwrap().len() == 1, "{v}");
    c.check("replica remove", &v);

    // the repository read offline gives the same shapes
    m.umount();
    let (_, v) = json_of(&["list", "--json", "--repo", s(&repo)]);
    c.check("list", &v);
    let (ok, v) = json_of(&["verify", "--json", "--repo", s(&repo)]);
    assert!(ok, "{v}");
    c.check("verify", &v);

    let unchecked: Vec<_> = c.doc.keys().filter(|k| !c.seen.contains(*k)).collect();
    assert!(unchecked.is_empty(), "rows of the README's table this test does not run: {unchecked:?}");
}

/// Each line of `stderr` is a progress object of `task`; the last says done.
fn progress_lines(stderr: &[u8], task: &str) -> Vec<serde_json::Value> {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON progress line ({e}): {l:?}\n{text}")))
        .collect();
    assert!(!lines.is_empty(), "{task}: no progress line");
    for l in &lines {
        assert_eq!(l["type"], "progress", "{l}");
        assert_eq!(l["task"], task, "{l}");
        for f in ["phase", "bytes_done", "bytes_total", "items_done", "items_total", "items", "elapsed_sec", "done"] {
            assert!(l.get(f).is_some(), "{task}: progress line lacks {f}: {l}");
        }
    }
    let (last, rest) = lines.split_last().unwrap();
    assert_eq!(last["done"], true, "{last}");
    assert!(rest.iter().all(|l| l["done"] == false), "{text}");
    lines
}

#[test]
fn progress_is_json_lines_on_request_and_nothing_without_a_terminal() {
    let t = open_tempdir();
    let d = t.path().join("d");
    fs::create_dir(&d).unwrap();
    // enough that a snapshot and a restore take more than a moment
    for i in 0..4 {
        fs::write(d.join(format!("f{i}")), noise(i, 8 << 20)).unwrap();
    }
    let m = Mounted::new(&d);
    let dir = s(&m.dir);

    // no terminal here: stderr stays empty (no bar, no progress line)
    let o = snapfs(&["snapshot", "--name", "s1", dir]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("snapshot s1 "));
    assert!(o.stderr.is_empty(), "progress junk without a terminal: {:?}", String::from_utf8_lossy(&o.stderr));
    let target = t.path().join("r1");
    let o = snapfs(&["restore", dir, "s1", s(&target)]);
    assert!(o.status.success() && o.stderr.is_empty(), "{:?}", String::from_utf8_lossy(&o.stderr));

    // --progress json: lines that parse, the last with the final numbers
    fs::write(m.path("f0"), noise(10, 8 << 20)).unwrap();
    // (a sparse file: its hole counts as restored without a byte written)
    let f = fs::File::create(m.path("sparse")).unwrap();
    f.set_len(8 << 20).unwrap();
    drop(f);
    write_at(&m.path("sparse"), (8 << 20) - 4096, &noise(11, 4096));
    let o = snapfs(&["snapshot", "--progress", "json", "--full", "--name", "s2", dir]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines = progress_lines(&o.stderr, "snapshot");
    let last = lines.last().unwrap();
    assert!(last["bytes_done"].as_u64().unwrap() >= 32 << 20, "a full snapshot reads every byte: {last}");
    assert_eq!(last["items"], "files");

    let target = t.path().join("r2");
    let o = snapfs(&["restore", "--progress", "json", "--json", dir, "s2", s(&target)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice::<serde_json::Value>(&o.stdout).expect("stdout stays one JSON value");
    let lines = progress_lines(&o.stderr, "restore");
    let last = lines.last().unwrap();
    let all = (32 << 20) + (8 << 20);
    assert_eq!((last["bytes_done"].as_u64(), last["bytes_total"].as_u64()), (Some(all), Some(all)), "{last}");
    assert_eq!((last["items_done"].as_u64(), last["items_total"].as_u64()), (Some(5), Some(5)), "{last}");

    let o = snapfs(&["verify", "--read-data", "--progress", "json", dir]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    progress_lines(&o.stderr, "verify");
    let o = snapfs(&["prune", "--progress", "json", dir]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    progress_lines(&o.stderr, "prune");
    run_ok(&["replica", "add", dir, s(&t.path().join("replica"))]);
    let o = snapfs(&["replica", "sync", "--progress", "json", dir]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let last = progress_lines(&o.stderr, "replica-sync").pop().unwrap();
    assert_eq!(last["items_done"], 1, "{last}");

    // --quiet: nothing on stdout or stderr, the exit status as without it
    fs::write(m.path("f1"), b"small now").unwrap();
    let target = t.path().join("r3");
    for args in [
        vec!["snapshot", "--quiet", "--name", "s3", dir],
        vec!["restore", "--quiet", dir, "s3", s(&target)],
        vec!["verify", "--quiet", "--read-data", dir],
        vec!["forget", "--quiet", dir, "s1"],
        vec!["prune", "-q", dir],
        vec!["replica", "sync", "--quiet", dir],
    ] {
        let o = Command::new(bin()).args(&args).output().unwrap();
        assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
        assert!(o.stdout.is_empty() && o.stderr.is_empty(), "{args:?} --quiet said: {:?} {:?}", o.stdout, o.stderr);
    }
    assert_eq!(fs::read(target.join("f1")).unwrap(), b"small now");
    let o = snapfs(&["restore", "--quiet", dir, "no-such-snapshot", s(&t.path().join("r4"))]);
    assert!(!o.status.success() && !o.stderr.is_empty(), "an error still shows");
    m.umount();
}

/// On a terminal (a pty from util-linux's `script`), a restore draws a
/// bar on stderr, clears it, and then prints its report.
#[test]
fn a_restore_on_a_terminal_shows_a_bar_then_its_report() {
    let t = open_tempdir();
    let d = t.path().join("d");
    fs::create_dir(&d).unwrap();
    for i in 0..3 {
        fs::write(d.join(format!("f{i}")), noise(i, 4 << 20)).unwrap();
    }
    let m = Mounted::new(&d);
    snap(&m.dir, "s1");
    let target = t.path().join("r");
    let cmd = format!("{} restore {} s1 {}", bin().display(), m.dir.display(), target.display());
    let o = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("SNAPFS_PROGRESS_AFTER_MS", "0") // the bar at once, however quick the restore
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("script (util-linux) runs the restore on a pty");
    let screen = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{screen}");
    assert!(screen.contains("restore files") || screen.contains("restore directories"), "no bar: {screen:?}");
    let report = screen.find("restored s1 to ").unwrap_or_else(|| panic!("no report: {screen:?}"));
    assert!(!screen[report..].contains("restore files"), "the bar is drawn after the report: {screen:?}");
    assert_eq!(fs::read(target.join("f2")).unwrap(), noise(2, 4 << 20));
    m.umount();
}
