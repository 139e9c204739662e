//! Faults of the object store, each test on a 3-node Garage cluster of its
//! own (other tests share the one scripts/test starts): a node killed
//! during uploads, two nodes down, a hung node. Always stopped.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use snapfs::repo::s3::{Retry, S3Location, S3Store, Timeouts};
use snapfs::repo::store::{FileKind, Store};

/// A private cluster on ports from `port`; stopped (by the pids the script
/// recorded) when dropped, also when the test fails.
struct Cluster {
    dir: PathBuf,
    port: u16,
    env: Vec<(String, String)>,
}

impl Cluster {
    fn start(port: u16) -> Cluster {
        let dir = PathBuf::from(format!("/var/tmp/snapfs-garage-{port}"));
        let mut c = Cluster { dir, port, env: Vec::new() };
        let out = c.cmd(&["start"]).output().unwrap();
        assert!(out.status.success(), "cluster: {}", String::from_utf8_lossy(&out.stderr));
        for l in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some((k, v)) = l.strip_prefix("export ").and_then(|l| l.split_once('=')) {
                c.env.push((k.to_string(), v.trim_matches('"').to_string()));
            }
        }
        c
    }
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/garage"));
        c.args(args).env("SNAPFS_GARAGE_DIR", &self.dir).env("SNAPFS_GARAGE_PORT", self.port.to_string());
        c
    }
    fn run(&self, args: &[&str]) {
        assert!(self.cmd(args).status().unwrap().success(), "scripts/garage {args:?}");
    }
    fn var(&self, k: &str) -> String {
        self.env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap()
    }
    /// A store through node `n` (1..3) with the given retries.
    fn store(&self, n: u16, retry: Retry, io: Duration) -> S3Store {
        let url = format!("s3:http://127.0.0.1:{}/snapfs-test/faults", self.port + 10 * (n - 1));
        let creds = rusty_s3::Credentials::new(self.var("AWS_ACCESS_KEY_ID"), self.var("AWS_SECRET_ACCESS_KEY"));
        S3Store::new(
            S3Location::parse(&url).unwrap(),
            creds,
            "garage",
            Timeouts { connect: Duration::from_secs(2), io },
            retry,
        )
        .unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.cmd(&["stop"]).status();
    }
}

#[test]
fn a_node_killed_during_uploads_loses_nothing() {
    let c = Cluster::start(4000);
    let s = c.store(1, Retry::default(), Duration::from_secs(20));
    let data = noise(3, 1 << 20);
    std::thread::scope(|sc| {
        let up = sc.spawn(|| {
            for i in 0..40 {
                s.put(FileKind::Pack, &format!("{i:04x}"), &data).unwrap();
            }
        });
        std::thread::sleep(Duration::from_millis(300));
        c.run(&["kill", "2"]);
        up.join().unwrap();
    });
    for i in 0..40 {
        assert_eq!(s.get(FileKind::Pack, &format!("{i:04x}")).unwrap(), data);
    }
    // the node comes back and catches up
    c.run(&["start-node", "2"]);
    c.run(&["heal"]);
    let s2 = c.store(2, Retry::default(), Duration::from_secs(20));
    assert_eq!(s2.list(FileKind::Pack).unwrap().len(), 40);
}

#[test]
fn two_nodes_down_fail_clearly_and_recover() {
    let c = Cluster::start(4100);
    let quick = Retry { attempts: 3, base: Duration::from_millis(100), cap: Duration::from_millis(500) };
    let s = c.store(1, quick, Duration::from_secs(10));
    s.put(FileKind::Pack, "aa00", b"before").unwrap();
    c.run(&["kill", "2"]);
    c.run(&["kill", "3"]);
    let t0 = Instant::now();
    let e = s.put(FileKind::Pack, "aa01", b"during").unwrap_err().to_string();
    assert!(e.contains("gave up after 3 attempts"), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(40), "took {:?}", t0.elapsed());
    c.run(&["start-node", "2"]);
    c.run(&["start-node", "3"]);
    s.put(FileKind::Pack, "aa01", b"during").unwrap();
    assert_eq!(s.get(FileKind::Pack, "aa00").unwrap(), b"before");
}

#[test]
fn a_hung_node_is_timed_out_and_retried_not_waited_on() {
    let c = Cluster::start(4200);
    let patient = Retry { attempts: 30, base: Duration::from_millis(200), cap: Duration::from_secs(2) };
    let s = c.store(1, patient, Duration::from_secs(5));
    s.put(FileKind::Pack, "bb00", b"before").unwrap();
    c.run(&["pause", "3"]);
    // every request ends, with a bounded wait for each attempt
    let t0 = Instant::now();
    let r = s.put(FileKind::Pack, "bb01", b"during");
    let took = t0.elapsed();
    c.run(&["resume", "3"]);
    eprintln!("PUT with a hung node: {:?} after {took:?}", r.as_ref().map(|_| ()));
    assert!(took < Duration::from_secs(100), "took {took:?}");
    s.put(FileKind::Pack, "bb01", b"during").unwrap();
    assert_eq!(s.get(FileKind::Pack, "bb01").unwrap(), b"during");
}

#[test]
fn a_replica_behind_an_outage_catches_up_and_nothing_is_half_committed() {
    let c = Cluster::start(4300);
    for k in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"] {
        std::env::set_var(k, c.var(k));
    }
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("d");
    std::fs::create_dir(&d).unwrap();
    std::fs::write(d.join("f"), noise(1, 500_000)).unwrap();
    let url = format!("s3:http://127.0.0.1:{}/snapfs-test/outage", c.port);
    let m = Mounted::with(&d, MountOpts { extra: vec!["--replica".into(), url.clone()], ..Default::default() });
    let dir = m.dir.to_str().unwrap().to_string();
    run_ok(&["snapshot", "--name", "s1", &dir]);
    run_ok(&["replica", "sync", &dir]);
    // two of three nodes down: snapshots go on locally, the replica falls behind
    c.run(&["kill", "2"]);
    c.run(&["kill", "3"]);
    std::fs::write(m.path("g"), noise(2, 300_000)).unwrap();
    run_ok(&["snapshot", "--name", "s2", &dir]);
    let o = snapfs(&["replica", "sync", &dir]);
    let text = String::from_utf8_lossy(&o.stderr).to_string() + &String::from_utf8_lossy(&o.stdout);
    assert!(!o.status.success() && text.contains("behind"), "{text}");
    let st = status(&m.dir);
    let r = &st["replicas"][0];
    assert!(r["lag"]["snapshots_behind"].as_u64().unwrap() >= 1, "{st}");
    assert!(r["last_error"].as_str().unwrap().contains("gave up") || r["last_error"].is_string(), "{st}");
    // the nodes return: the replica catches up, complete
    c.run(&["start-node", "2"]);
    c.run(&["start-node", "3"]);
    run_ok(&["replica", "sync", &dir]);
    m.umount();
    let list = run_ok(&["list", "--repo", &url]);
    assert!(list.contains("s1") && list.contains("s2"), "{list}");
    run_ok(&["verify", "--read-data", "--repo", &url]);
}
