//! `snapfs verify DIR --live`: changes made through the mount are all in
//! the dirty set (none missed, also with writers running), and changes made
//! behind the tracker's back (straight into the backing directory) are each
//! found and named.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;

fn live(dir: &Path) -> (bool, serde_json::Value) {
    json_of(&["verify", "--live", "--json", dir.to_str().unwrap()])
}

fn setxattr(p: &Path, name: &str, value: &[u8]) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let r = unsafe { libc::lsetxattr(c.as_ptr(), n.as_ptr(), value.as_ptr() as *const libc::c_void, value.len(), 0) };
    assert_eq!(r, 0, "setxattr {}", p.display());
}

#[test]
fn live_verify_finds_nothing_missed_and_names_what_was() {
    let t = tempfile::tempdir().unwrap();
    let (raw, mnt) = (t.path().join("raw"), t.path().join("mnt"));
    fs::create_dir(&raw).unwrap();
    fs::create_dir(&mnt).unwrap();
    let m = Mounted::with(&mnt, MountOpts { backing: Some(raw.clone()), ..Default::default() });
    let bs = 65536u64;
    fs::create_dir_all(m.path("quiet/deeper")).unwrap();
    fs::create_dir_all(m.path("busy")).unwrap();
    fs::write(m.path("quiet/deeper/big.bin"), noise(1, 5 * bs as usize)).unwrap();
    fs::write(m.path("quiet/small.txt"), b"small").unwrap();
    fs::write(m.path("busy/log.bin"), noise(2, 4 * bs as usize)).unwrap();
    fs::write(m.path("busy/other.txt"), b"other").unwrap();
    std::os::unix::fs::symlink("quiet/small.txt", m.path("link")).unwrap();
    fs::hard_link(m.path("busy/other.txt"), m.path("quiet/other-link.txt")).unwrap();
    setxattr(&m.path("busy/other.txt"), "user.tag", b"1");

    // before any snapshot there is nothing to compare with
    let out = snapfs(&["verify", "--live", m.dir.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no snapshot yet"));
    snap(&m.dir, "s1");
    let (ok, v) = live(&m.dir);
    assert!(ok && v["ok"] == true, "{v}");
    assert!(v["files"].as_u64().unwrap() >= 4 && v["bytes_compared"].as_u64().unwrap() >= 9 * bs, "{v}");

    // changes through the mount: all in the dirty set
    write_at(&m.path("busy/log.bin"), bs + 10, b"changed");
    fs::OpenOptions::new().append(true).open(m.path("busy/log.bin")).unwrap().set_len(6 * bs).unwrap();
    fs::set_permissions(m.path("quiet/small.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    setxattr(&m.path("busy/other.txt"), "user.tag", b"2");
    fs::write(m.path("busy/new.txt"), b"new").unwrap();
    fs::rename(m.path("quiet/deeper"), m.path("busy/moved")).unwrap();
    write_at(&m.path("quiet/other-link.txt"), 0, b"OTHER");
    let (ok, v) = live(&m.dir);
    assert!(ok && v["ok"] == true && v["missed_count"] == 0, "{v}");
    fs::create_dir_all(m.path("doomed/a/b")).unwrap();
    for i in 0..300 {
        fs::write(m.path(&format!("doomed/a/b/f{i}")), noise(i, 3000)).unwrap();
    }
    fs::write(m.path("busy/trunc.bin"), noise(9, 6 * bs as usize)).unwrap();
    snap(&m.dir, "s2");

    // ... and with writers running during the check
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..2u64)
        .map(|w| {
            let (stop, p) = (stop.clone(), m.path(if w == 0 { "busy/log.bin" } else { "busy/moved/big.bin" }));
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    write_at(&p, (i * 7919 % 5) * 65536 + i % 1000, &i.to_le_bytes());
                    i += 1;
                }
            })
        })
        .collect();
    // ... one removing a tree the snapshot has, one cutting a file short
    let remover = {
        let p = m.path("doomed");
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(5));
            fs::remove_dir_all(p).unwrap();
        })
    };
    let cutter = {
        let (stop, p) = (stop.clone(), m.path("busy/trunc.bin"));
        std::thread::spawn(move || {
            let mut n = 6 * 65536u64;
            while !stop.load(Ordering::Relaxed) && n > 0 {
                fs::OpenOptions::new().write(true).open(&p).unwrap().set_len(n).unwrap();
                n = n.saturating_sub(4096);
            }
        })
    };
    for _ in 0..3 {
        let (ok, v) = live(&m.dir);
        assert!(ok && v["ok"] == true, "with writers: {v}");
    }
    remover.join().unwrap();
    cutter.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    snap(&m.dir, "s3");

    // behind the tracker's back, straight into the backing directory
    write_at(&raw.join("busy/moved/big.bin"), 3 * bs + 5, b"sneaky");
    fs::set_permissions(raw.join("quiet/small.txt"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(raw.join("quiet/unseen.txt"), b"unseen").unwrap();
    setxattr(&raw.join("busy/new.txt"), "user.hidden", b"x");
    // a file with a record: a block outside its dirty ranges
    write_at(&m.path("busy/log.bin"), 0, b"tracked");
    write_at(&raw.join("busy/log.bin"), 4 * bs + 1, b"untracked");
    let (ok, v) = live(&m.dir);
    assert!(!ok && v["ok"] == false, "{v}");
    let missed: Vec<(String, String)> = v["missed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| (x["path"].as_str().unwrap().to_string(), x["what"].as_str().unwrap().to_string()))
        .collect();
    let has = |path: &str, what: &str| missed.iter().any(|(p, w)| p == path && w.contains(what));
    assert!(has("busy/moved/big.bin", "block 3"), "{missed:?}");
    assert!(has("quiet/small.txt", "mode"), "{missed:?}");
    assert!(has("quiet/unseen.txt", "created"), "{missed:?}");
    assert!(has("busy/new.txt", "extended attributes"), "{missed:?}");
    assert!(has("busy/log.bin", "block 4"), "{missed:?}");
    assert!(!missed.iter().any(|(_, w)| w.contains("block 0")), "the tracked write is not a miss: {missed:?}");
    // the text report names them and exits non-zero
    let out = snapfs(&["verify", "--live", m.dir.to_str().unwrap()]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("CHANGES MISSED BY THE TRACKER") && text.contains("quiet/unseen.txt"), "{text}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--full"));
    // status shows it among the errors
    let st = status(&m.dir);
    assert!(st["health"]["errors"].to_string().contains("missed by the tracker"), "{st}");

    assert_eq!(st["health"]["last_live_check"]["ok"], false, "{st}");
    // a full snapshot brings the dirty set back in line
    run_ok(&["snapshot", "--full", m.dir.to_str().unwrap()]);
    let (ok, v) = live(&m.dir);
    assert!(ok && v["ok"] == true, "{v}");
    let st = status(&m.dir);
    assert_eq!(st["health"]["last_live_check"]["ok"], true, "{st}");
    assert_eq!(st["health"]["last_live_check"]["missed"], 0, "{st}");
    m.umount();
}
