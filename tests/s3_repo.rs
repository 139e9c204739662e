//! Repositories on S3 (the Garage cluster scripts/test starts): every
//! command on an s3: repository, and clear errors for bad ones.

mod common;

use std::fs;
use std::path::Path;

use common::*;

fn out_text(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn init_refuses_what_is_not_an_empty_place_in_a_bucket() {
    let t = tempfile::tempdir().unwrap();
    let url = s3_url("init");
    let o = std::process::Command::new(bin())
        .args(["init", "--encryption", "none", &url])
        .current_dir(t.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", out_text(&o));
    // nothing made locally (an old bug made directories named s3:http:)
    assert_eq!(fs::read_dir(t.path()).unwrap().count(), 0);
    let o = snapfs(&["init", "--encryption", "none", &url]);
    assert!(!o.status.success() && out_text(&o).contains("already holds a snapfs repository"), "{}", out_text(&o));
    let base = std::env::var("SNAPFS_TEST_S3").unwrap();
    for (bad, says) in [
        (base.replace("snapfs-test", "no-such-bucket") + "/x", "no such bucket"),
        ("s3:http:/127.0.0.1:3900/snapfs-test".to_string(), "the form is"),
        ("s3:http://127.0.0.1:1/snapfs-test/x".to_string(), "gave up"),
    ] {
        let o = snapfs(&["init", "--encryption", "none", &bad]);
        assert!(!o.status.success() && out_text(&o).contains(says), "{bad}: {}", out_text(&o));
    }
    let o = std::process::Command::new(bin())
        .args(["init", "--encryption", "none", &s3_url("creds")])
        .env("AWS_SECRET_ACCESS_KEY", "0".repeat(64))
        .output()
        .unwrap();
    assert!(!o.status.success() && out_text(&o).contains("wrong credentials"), "{}", out_text(&o));
    // a prefix holding something else is not taken over
    let other = s3_url("other");
    run_ok(&["init", "--encryption", "none", &format!("{other}/inner")]);
    let o = snapfs(&["init", "--encryption", "none", &other]);
    assert!(!o.status.success() && out_text(&o).contains("not empty"), "{}", out_text(&o));
    // and a place with no repository says so
    let o = snapfs(&["list", "--repo", &s3_url("none")]);
    assert!(!o.status.success() && out_text(&o).contains("not a snapfs repository"), "{}", out_text(&o));
}

fn fill(d: &Path) {
    fs::create_dir_all(d.join("sub/deeper")).unwrap();
    for i in 0..30 {
        fs::write(d.join(format!("sub/f{i}")), noise(i, 1000 + 3000 * i as usize)).unwrap();
    }
    fs::write(d.join("big"), noise(99, 3 << 20)).unwrap();
    fs::write(d.join("sub/deeper/x"), b"x").unwrap();
    std::os::unix::fs::symlink("sub/f1", d.join("link")).unwrap();
}

#[test]
fn every_command_works_on_an_s3_repository() {
    let t = tempfile::tempdir().unwrap();
    let url = s3_url("cmds");
    run_ok(&["init", "--encryption", "none", &url]);
    let d = t.path().join("d");
    fs::create_dir(&d).unwrap();
    fill(&d);
    let before = model(&d);
    let opts = MountOpts { repo: Some(url.clone().into()), ..Default::default() };
    let m = Mounted::with(&d, opts.clone());
    let (ok, s1) = json_of(&["snapshot", "--json", "--name", "s1", m.dir.to_str().unwrap()]);
    assert!(ok && s1["full"] == true, "{s1}");
    write_at(&m.path("big"), 1 << 20, b"changed in the middle");
    fs::write(m.path("sub/new"), b"new").unwrap();
    let (ok, s2) = json_of(&["snapshot", "--json", "--name", "s2", m.dir.to_str().unwrap()]);
    assert!(ok && s2["full"] == false, "{s2}");
    // incremental: only the dirty block and metadata went up
    assert!(s2["stats"]["added_bytes"].as_u64().unwrap() < 200_000, "{s2}");
    let after = model(&m.dir);
    let d_s = m.dir.to_str().unwrap();
    let list = run_ok(&["list", d_s]);
    assert!(list.contains("s1") && list.contains("s2"), "{list}");
    let diff = run_ok(&["diff", d_s, "s1", "s2"]);
    assert!(diff.contains("big") && diff.contains("sub/new"), "{diff}");
    assert_same(&before, &model(&m.path(".snapshots/s1")), ".snapshots/s1");
    let r1 = t.path().join("r1");
    run_ok(&["restore", "-j", "4", d_s, "s1", r1.to_str().unwrap()]);
    assert_same(&before, &model(&r1), "restore s1");
    run_ok(&["verify", "--read-data", d_s]);
    m.umount();
    // the state lives in the backing directory's hidden .snapfs, not in the bucket
    assert!(d.join(".snapfs/cache").is_dir());
    // a remount goes on incrementally
    let m = Mounted::with(&d, opts);
    fs::write(m.path("sub/f3"), b"again").unwrap();
    let (ok, s3) = json_of(&["snapshot", "--json", "--name", "s3", m.dir.to_str().unwrap()]);
    assert!(ok && s3["full"] == false, "{s3}");
    m.umount();
    // offline, from anywhere, with nothing but the URL and the credentials
    let mnt = t.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    run_ok(&["browse", "--repo", &url, mnt.to_str().unwrap()]);
    {
        let _g = BrowseGuard(mnt.clone());
        assert_same(&after, &model(&mnt.join("s2")), "browse s2");
    }
    let r2 = t.path().join("r2");
    run_ok(&["restore", "--repo", &url, "-j", "8", "s2", r2.to_str().unwrap()]);
    assert_same(&after, &model(&r2), "restore --repo s2");
    run_ok(&["verify", "--read-data", "--repo", &url]);
    run_ok(&["forget", "--repo", &url, "s1", "s2"]);
    run_ok(&["prune", "--repo", &url]);
    run_ok(&["verify", "--read-data", "--repo", &url]);
    let list = run_ok(&["list", "--repo", &url]);
    assert!(list.contains("s3") && !list.contains("s1 "), "{list}");
    let r3 = t.path().join("r3");
    run_ok(&["restore", "--repo", &url, "s3", r3.to_str().unwrap()]);
    assert_eq!(fs::read(r3.join("sub/f3")).unwrap(), b"again");
    assert_eq!(fs::read(r3.join("big")).unwrap(), fs::read(d.join("big")).unwrap());
}

#[test]
fn scheduled_snapshots_go_to_the_bucket() {
    let t = tempfile::tempdir().unwrap();
    let url = s3_url("sched");
    run_ok(&["init", "--encryption", "none", &url]);
    let d = t.path().join("d");
    fs::create_dir(&d).unwrap();
    fs::write(d.join("f"), b"one").unwrap();
    let extra = vec!["--every".to_string(), "1s".into(), "--keep".into(), "last=2".into()];
    let m = Mounted::with(&d, MountOpts { repo: Some(url.clone().into()), extra, ..Default::default() });
    let t0 = std::time::Instant::now();
    loop {
        let (_, list) = json_of(&["list", "--json", m.dir.to_str().unwrap()]);
        let n = list.as_array().unwrap().iter().filter(|s| s["name"].as_str().unwrap().starts_with("auto-")).count();
        if n >= 2 {
            break;
        }
        assert!(t0.elapsed() < std::time::Duration::from_secs(30), "{list}");
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    m.umount();
    let (_, list) = json_of(&["list", "--json", "--repo", &url]);
    assert!((2..=3).contains(&list.as_array().unwrap().len()), "retention keeps the last 2: {list}");
}
