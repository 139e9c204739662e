//! Monitoring: `mount --metrics ADDR` and `status --prometheus` give
//! Prometheus text that promtool accepts, the shipped alert rules load,
//! and every metric the rules and the dashboard use exists.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn promtool() -> &'static str {
    let ok = Command::new("promtool").arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(ok, "promtool is missing: scripts/install-test-deps installs it");
    "promtool"
}

/// `promtool check metrics` on `text`: Ok, or what it said.
fn check_metrics(text: &str) -> Result<(), String> {
    let mut c = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = c.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() {
        Ok(())
    } else {
        Err(said)
    }
}

/// GET `path` from `addr`: (status line, body).
fn get(addr: &str, path: &str) -> (String, String) {
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(c, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut all = String::new();
    c.read_to_string(&mut all).unwrap();
    let (head, body) = all.split_once("\r\n\r\n").unwrap_or((&all, ""));
    (head.lines().next().unwrap_or("").to_string(), body.to_string())
}

fn metrics_addr(m: &Mounted) -> String {
    let t0 = Instant::now();
    loop {
        let log = m.log_text();
        if let Some(i) = log.find("metrics at http://") {
            let rest = &log[i + "metrics at http://".len()..];
            return rest[..rest.find('/').unwrap()].to_string();
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "no metrics address in the log:\n{log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The value of the series `name` (first match) in exposition text.
fn value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The snapfs_ metric names an expression file uses.
fn names_used(p: &Path) -> BTreeSet<String> {
    let text = fs::read_to_string(p).unwrap();
    let mut out = BTreeSet::new();
    let mut rest = text.as_str();
    while let Some(i) = rest.find("snapfs_") {
        let tail = &rest[i..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        let name = &tail[..end];
        // a label (snapfs_repository="true") is not a metric
        if !tail[end..].starts_with('=') && !tail[end..].starts_with("\"") {
            out.insert(name.to_string());
        }
        rest = &tail[end..];
    }
    out
}

#[test]
fn the_endpoint_is_scraped_during_a_snapshot_and_everything_the_rules_use_exists() {
    let t = tempfile::tempdir().unwrap();
    let (d, repo, copy) = (t.path().join("d"), t.path().join("repo"), t.path().join("copy"));
    fs::create_dir(&d).unwrap();
    fs::write(d.join("big"), noise(3, 48 << 20)).unwrap();
    for i in 0..200 {
        fs::write(d.join(format!("f{i}")), noise(i, 3000)).unwrap();
    }
    run_ok(&["init", "--encryption", "none", repo.to_str().unwrap()]);
    let m = Mounted::with_args(
        &d,
        &[
            "--repo",
            repo.to_str().unwrap(),
            "--replica",
            copy.to_str().unwrap(),
            "--metrics",
            "127.0.0.1:0",
            "--max-age",
            "1h",
        ],
    );
    let addr = metrics_addr(&m);
    let dir = m.dir.to_str().unwrap().to_string();

    // scraped while a snapshot runs: answers, and parses
    let snap = {
        let dir = dir.clone();
        std::thread::spawn(move || run_ok(&["snapshot", "--name", "s1", &dir]))
    };
    let mut scrapes = 0;
    while !snap.is_finished() || scrapes == 0 {
        let (status, body) = get(&addr, "/metrics");
        assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
        check_metrics(&body).unwrap_or_else(|e| panic!("promtool: {e}\n{body}"));
        scrapes += 1;
    }
    snap.join().unwrap();
    run_ok(&["replica", "sync", &dir]);
    run_ok(&["verify", &dir]);
    fs::write(m.path("after"), b"unprotected").unwrap();

    let (_, body) = get(&addr, "/metrics");
    check_metrics(&body).unwrap_or_else(|e| panic!("promtool: {e}\n{body}"));
    assert_eq!(value(&body, "snapfs_mounted"), Some(1.0), "{body}");
    assert_eq!(value(&body, "snapfs_snapshots"), Some(1.0), "{body}");
    assert_eq!(value(&body, "snapfs_last_verify_success"), Some(1.0), "{body}");
    assert!(value(&body, "snapfs_dirty_files") >= Some(1.0), "{body}");
    assert!(value(&body, "snapfs_repository_size_bytes") > Some(48e6), "{body}");
    assert!(value(&body, "snapfs_last_snapshot_added_bytes") > Some(48e6), "{body}");
    assert_eq!(value(&body, "snapfs_schedule_worst_case_seconds"), Some(3600.0), "{body}");
    assert_eq!(value(&body, "snapfs_replica_snapshots_behind"), Some(0.0), "{body}");
    assert!(body.contains("snapfs_fuse_requests_total{") && body.contains("op=\"create\""), "{body}");
    assert!(body.contains("snapfs_fuse_request_duration_seconds_bucket{"), "{body}");
    assert!(!body.contains("f199") && !body.contains(repo.to_str().unwrap()), "no file names, no repository: {body}");

    // every metric the alert rules and the dashboard use is exported
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for f in ["dist/prometheus/snapfs-alerts.yml", "dist/grafana/snapfs-dashboard.json"] {
        let used = names_used(&root.join(f));
        assert!(used.len() >= 5, "{f}: {used:?}");
        for n in used {
            assert!(
                body.contains(&format!("\n{n}{{")) || body.contains(&format!("\n{n}_bucket{{")),
                "{f} uses {n}, not exported:\n{body}"
            );
        }
    }

    // the textfile form says the same, and other paths are not served
    let text = run_ok(&["status", "--prometheus", &dir]);
    check_metrics(&text).unwrap_or_else(|e| panic!("promtool: {e}\n{text}"));
    assert_eq!(value(&text, "snapfs_snapshots"), Some(1.0), "{text}");
    assert_eq!(get(&addr, "/").0, "HTTP/1.1 404 Not Found");
    // the monitoring check: snapshot, verify and replica fine
    let (code, line) = check_of(&dir, None);
    assert!(code == 0 && line.starts_with("SNAPFS OK - "), "{code} {line}");
    m.umount();
    let (code, line) = check_of(d.to_str().unwrap(), Some(&repo));
    assert!(code == 2 && line.contains("CRITICAL") && line.contains("not mounted"), "{code} {line}");

    // unmounted: the repository's side, mounted 0
    let text = run_ok(&["status", "--prometheus", "--repo", repo.to_str().unwrap(), d.to_str().unwrap()]);
    check_metrics(&text).unwrap_or_else(|e| panic!("promtool: {e}\n{text}"));
    assert_eq!(value(&text, "snapfs_mounted"), Some(0.0), "{text}");
    assert_eq!(value(&text, "snapfs_snapshots"), Some(1.0), "{text}");
}

#[test]
fn the_alert_rules_load_and_the_dashboard_parses() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(promtool())
        .args(["check", "rules"])
        .arg(root.join("dist/prometheus/snapfs-alerts.yml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let d: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(root.join("dist/grafana/snapfs-dashboard.json")).unwrap()).unwrap();
    let panels = d["panels"].as_array().unwrap();
    assert!(panels.len() >= 10);
    assert!(panels.iter().all(|p| p["targets"][0]["expr"].as_str().is_some_and(|e| e.contains("snapfs_"))));
}

#[test]
fn a_metrics_address_that_cannot_be_used_fails_the_mount() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("d");
    fs::create_dir(&d).unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let out = snapfs(&["mount", "--metrics", &addr, d.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--metrics") && err.contains(&addr), "{err}");
    assert!(!is_mounted(&d), "nothing mounted");
    let out = snapfs(&["mount", "--metrics", "not-an-address", d.to_str().unwrap()]);
    assert!(!out.status.success());
}

/// `snapfs status --check DIR`: (exit code, the line).
fn check_of(dir: &str, repo: Option<&Path>) -> (i32, String) {
    let mut args = vec!["status", "--check"];
    if let Some(r) = repo {
        args.extend(["--repo", r.to_str().unwrap()]);
    }
    args.push(dir);
    let out = snapfs(&args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(text.lines().count(), 1, "one line: {text:?} {}", String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap(), text.trim().to_string())
}

#[test]
fn the_check_says_unknown_critical_or_warning_with_nagios_exit_codes() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("d");
    fs::create_dir(&d).unwrap();
    // nothing there: unknown
    let (code, line) = check_of(d.to_str().unwrap(), None);
    assert!(code == 3 && line.starts_with("SNAPFS UNKNOWN - "), "{code} {line}");
    // mounted, nothing backed up yet: critical
    let m = Mounted::new(&d);
    let dir = m.dir.to_str().unwrap().to_string();
    let (code, line) = check_of(&dir, None);
    assert!(code == 2 && line.contains("no snapshot"), "{code} {line}");
    // a snapshot, never verified, the only repository on the data's disk: a warning
    snap(&m.dir, "s1");
    let (code, line) = check_of(&dir, None);
    assert!(code == 1 && line.starts_with("SNAPFS WARNING - ") && line.contains("never verified"), "{code} {line}");
    assert!(!line.contains("CRITICAL") && !line.contains("no snapshot"), "{line}");
    m.umount();
}
