//! `scripts/install` into a temporary prefix (with the test build of the
//! binary, not a release build): the installed binary runs, as itself and
//! as mount(8)'s helper; man pages, completions and systemd units are in
//! place, and the units pass `systemd-analyze verify` where it exists.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install")
}

fn ok(what: &str, out: &Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn found(tool: &str) -> bool {
    Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().is_ok_and(|o| o.status.success())
}

fn install(prefix: &Path, extra: &[&str]) -> String {
    let out = Command::new(script())
        .args(extra)
        .arg(prefix)
        .env("SNAPFS_BIN", common::bin())
        .env_remove("DESTDIR")
        .output()
        .expect("run scripts/install");
    ok("scripts/install", &out)
}

#[test]
fn install_script_fills_a_prefix() {
    let t = tempfile::tempdir().unwrap();
    let prefix = t.path().join("usr");
    let said = install(&prefix, &[]);
    assert!(said.contains("installed snapfs"), "{said}");

    // the binary runs
    let bin = prefix.join("bin/snapfs");
    let v = ok("snapfs --version", &Command::new(&bin).arg("--version").output().unwrap());
    assert!(v.starts_with("snapfs "), "{v}");
    assert!(std::fs::metadata(&bin).unwrap().permissions().mode() & 0o111 != 0);

    // the helper is the binary under mount(8)'s name: -f checks and mounts nothing
    let dir = t.path().join("data");
    std::fs::create_dir(&dir).unwrap();
    let d = dir.to_str().unwrap();
    for helper in ["mount.snapfs", "mount.fuse.snapfs"] {
        let h = prefix.join("sbin").join(helper);
        let out = Command::new(&h).args([d, d, "-f", "-o", "defaults,_netdev,repo=/backup/data,every=15m"]).output();
        let err = String::from_utf8_lossy(&out.as_ref().unwrap().stderr).into_owned();
        ok(helper, &out.unwrap());
        assert!(err.contains(&format!("snapfs mount --repo /backup/data --every 15m {d}")), "{helper}: {err}");
        let out = Command::new(&h).args([d, d, "-o", "evry=15m"]).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "an unknown option is a usage error");
        assert!(String::from_utf8_lossy(&out.stderr).contains("unknown option \"evry\""));
        assert!(!common::is_mounted(&dir));
    }

    // a man page for the command and for each subcommand
    let man = prefix.join("share/man/man1");
    for page in ["snapfs.1", "snapfs-mount.1", "snapfs-umount.1", "snapfs-verify.1", "snapfs-key-add.1"] {
        let text = std::fs::read_to_string(man.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.contains(".TH "), "{page}");
    }
    assert!(!man.join("snapfs-man.1").exists(), "the hidden generator has no page");
    if found("man") {
        let out = Command::new("man").args(["-w", "snapfs-mount"]).env("MANPATH", prefix.join("share/man")).output();
        let w = ok("man -w snapfs-mount", &out.unwrap());
        assert!(w.trim().ends_with("snapfs-mount.1"), "{w}");
    }

    // completions where each shell looks for them
    for (f, shell) in [
        ("share/bash-completion/completions/snapfs", "bash"),
        ("share/zsh/site-functions/_snapfs", "zsh"),
        ("share/fish/vendor_completions.d/snapfs.fish", "fish"),
    ] {
        let text = std::fs::read_to_string(prefix.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(text.contains("snapshot") && text.contains("restore"), "{f}");
        if found(shell) {
            // parses in its shell
            let flag = if shell == "fish" { "--no-execute" } else { "-n" };
            ok(&format!("{shell} {flag} {f}"), &Command::new(shell).arg(flag).arg(prefix.join(f)).output().unwrap());
        }
    }

    // the units, naming the installed binary
    let units = prefix.join("lib/systemd/system");
    let service = std::fs::read_to_string(units.join("snapfs@.service")).unwrap();
    assert!(service.contains(&format!("ExecStart={} mount --foreground", bin.display())), "{service}");
    assert!(service.contains(&format!("ExecStop=-{} umount %f", bin.display())), "{service}");
    assert!(service.contains("Type=notify"));
    let verify = std::fs::read_to_string(units.join("snapfs-verify@.service")).unwrap();
    assert!(verify.contains(&format!("ExecStart={} verify --read-data --subset 10", bin.display())), "{verify}");
    assert!(units.join("snapfs-verify@.timer").exists());
    if found("systemd-analyze") {
        // (MANPATH: the units' Documentation= pages are looked up too)
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .args(["snapfs@.service", "snapfs-verify@.service", "snapfs-verify@.timer"].map(|u| units.join(u)))
            .env("MANPATH", prefix.join("share/man"))
            .output()
            .unwrap();
        ok("systemd-analyze verify", &out);
        let complaints = String::from_utf8_lossy(&out.stderr);
        assert!(complaints.trim().is_empty(), "systemd-analyze verify:\n{complaints}");
    } else {
        eprintln!("systemd-analyze not found: the unit files are not verified");
    }

    // a second install over the first is fine; --systemd-dir moves the units
    let elsewhere = t.path().join("units");
    install(&prefix, &["--systemd-dir", elsewhere.to_str().unwrap()]);
    assert!(elsewhere.join("snapfs@.service").exists());
}

#[test]
fn install_script_refuses_a_relative_prefix() {
    let out = Command::new(script()).arg("relative/prefix").env("SNAPFS_BIN", common::bin()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("absolute"));
}
