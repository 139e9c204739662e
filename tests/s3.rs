//! The S3 store against the real 3-node Garage cluster that scripts/test
//! starts (replication factor 3): write-once objects, ranges, listings,
//! deletes, clear errors, and faults (a node killed, two nodes down, a
//! hung node).

mod common;

use std::time::{Duration, Instant};

use common::*;
use snapfs::repo::s3::{Retry, S3Location, S3Store, Timeouts};
use snapfs::repo::store::{FileKind, Store, StoreError};

fn store(url: &str) -> S3Store {
    S3Store::from_env(S3Location::parse(url).unwrap()).unwrap()
}

#[test]
fn objects_round_trip() {
    let url = s3_url("store");
    let s = store(&url);
    let data = noise(1, 3 << 20);
    s.put(FileKind::Pack, "ab01", &data).unwrap();
    s.put(FileKind::Pack, "ab01", &data).unwrap(); // the same name, the same bytes
    s.put(FileKind::Pack, "cd02", b"small").unwrap();
    s.put(FileKind::Snapshot, "s1", b"{}").unwrap();
    assert_eq!(s.get(FileKind::Pack, "ab01").unwrap(), data);
    assert_eq!(s.get_range(FileKind::Pack, "ab01", 1000, 70_000).unwrap(), &data[1000..71_000]);
    assert_eq!(s.get_range(FileKind::Pack, "cd02", 1, 3).unwrap(), b"mal");
    assert!(matches!(s.get_range(FileKind::Pack, "cd02", 3, 10), Err(StoreError::Short { .. })));
    assert_eq!(s.size(FileKind::Pack, "ab01").unwrap(), data.len() as u64);
    let mut packs = s.list(FileKind::Pack).unwrap();
    packs.sort();
    assert_eq!(packs, ["ab01", "cd02"]);
    assert_eq!(s.list(FileKind::Snapshot).unwrap(), ["s1"]);
    assert!(matches!(s.get(FileKind::Snapshot, "nope"), Err(StoreError::NotFound { .. })));
    assert!(matches!(s.size(FileKind::Pack, "nope"), Err(StoreError::NotFound { .. })));
    s.delete(FileKind::Pack, "cd02").unwrap();
    s.delete(FileKind::Pack, "cd02").unwrap(); // gone already: fine
    assert_eq!(s.list(FileKind::Pack).unwrap(), ["ab01"]);
    // every node of the cluster serves the same objects
    for n in s3_nodes(&url) {
        assert_eq!(store(&n).get(FileKind::Pack, "ab01").unwrap(), data, "{n}");
    }
}

#[test]
fn listings_page() {
    let s = store(&s3_url("pages"));
    let names: Vec<String> = (0..1100).map(|i| format!("{i:04}")).collect();
    std::thread::scope(|sc| {
        for chunk in names.chunks(140) {
            let s = &s;
            sc.spawn(move || {
                for n in chunk {
                    s.put(FileKind::Snapshot, n, b"x").unwrap();
                }
            });
        }
    });
    let mut got = s.list(FileKind::Snapshot).unwrap();
    got.sort();
    assert_eq!(got, names);
}

#[test]
fn bad_endpoints_credentials_and_buckets_are_clear_errors() {
    let url = s3_url("bad");
    let loc = S3Location::parse(&url).unwrap();
    let quick = Retry { attempts: 2, base: Duration::from_millis(10), cap: Duration::from_millis(10) };
    let t = Timeouts { connect: Duration::from_secs(2), io: Duration::from_secs(5) };
    let with = |loc: S3Location, key: &str| {
        S3Store::new(loc, rusty_s3::Credentials::new(key, "0".repeat(64)), "garage", t, quick).unwrap()
    };
    // wrong credentials
    let e = with(loc.clone(), "GK00000000000000000000000000").check_bucket().unwrap_err().to_string();
    assert!(e.contains("403") || e.contains("credentials"), "{e}");
    // a missing bucket
    let s = store(&url.replace("snapfs-test", "no-such-bucket"));
    let e = s.check_bucket().unwrap_err().to_string();
    assert!(e.contains("404") || e.contains("bucket"), "{e}");
    // nothing listens there
    let mut dead = loc.clone();
    dead.endpoint = "http://127.0.0.1:9".into();
    let t0 = Instant::now();
    let e = with(dead, "x").check_bucket().unwrap_err().to_string();
    assert!(e.contains("gave up after 2 attempts"), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert!(S3Location::parse("s3:http:/127.0.0.1:3900/bucket").is_err());
}
