//! Tracking never misses a change: SIGKILL the daemon while writers run,
//! remount, and every block that differs from before is in the dirty set.

mod common;

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

const BS: u64 = 65536;
const FILES: usize = 8;
const SIZE: u64 = 32 * BS;

fn blocks_of(p: &std::path::Path) -> Vec<blake3::Hash> {
    let data = fs::read(p).unwrap_or_default();
    data.chunks(BS as usize).map(blake3::hash).collect()
}

fn covered(ranges: &[(u64, u64)], b: u64) -> bool {
    ranges.iter().any(|&(s, e)| s <= b && b < e)
}

/// Every block that differs between `before` and the backing files now must
/// be dirty; files that appeared or changed size must be dirty too.
fn check_nothing_missed(d: &std::path::Path, before: &HashMap<String, Vec<blake3::Hash>>, st: &serde_json::Value) {
    for i in 0..FILES {
        let name = format!("f{i}");
        let now = blocks_of(&d.join(&name));
        let old = &before[&name];
        let r = ranges(st, &name);
        for (b, h) in now.iter().enumerate() {
            if old.get(b) != Some(h) {
                let r = r.as_ref().unwrap_or_else(|| panic!("{name} changed (block {b}) but is not dirty"));
                assert!(covered(r, b as u64), "{name}: block {b} changed but dirty ranges are {r:?}");
            }
        }
        if now.len() != old.len() {
            assert!(r.is_some(), "{name} changed size but is not dirty");
        }
    }
}

#[test]
fn sigkill_during_writes_misses_nothing() {
    for round in 0..3u64 {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("d");
        fs::create_dir(&d).unwrap();
        for i in 0..FILES {
            fs::write(d.join(format!("f{i}")), vec![0u8; SIZE as usize]).unwrap();
        }
        // first mount: the epoch starts clean; remount to get a known baseline
        Mounted::new(&d).umount();
        let before: HashMap<String, Vec<blake3::Hash>> =
            (0..FILES).map(|i| (format!("f{i}"), blocks_of(&d.join(format!("f{i}"))))).collect();

        let m = Mounted::new(&d);
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let dir = m.dir.clone();
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut x: u64 = 0x9e3779b97f4a7c15 ^ ((w + 1) * (round + 3));
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let file = dir.join(format!("f{}", x % FILES as u64));
                        let off = (x >> 8) % (SIZE + 4 * BS); // sometimes past the end
                        let Ok(f) = fs::OpenOptions::new().write(true).open(&file) else {
                            break;
                        };
                        if f.write_all_at(&[(n % 251) as u8 + 1; 4096], off).is_err() {
                            break;
                        }
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        // kill at different moments: before, around and after a durable point (200 ms)
        std::thread::sleep(Duration::from_millis(150 + 170 * round));
        m.kill();
        stop.store(true, Ordering::Relaxed);
        let written: u64 = writers.into_iter().map(|w| w.join().unwrap()).sum();
        assert!(written > 0, "writers did nothing");

        let m = Mounted::new(&d);
        let st = wait_scan(&m.dir);
        assert_eq!(st["last_session"], "unclean");
        check_nothing_missed(&d, &before, &st);
        m.umount();
    }
}

#[test]
fn sigkill_right_after_mount_then_out_of_band_changes() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("d");
    fs::create_dir(&d).unwrap();
    for i in 0..FILES {
        fs::write(d.join(format!("f{i}")), vec![0u8; SIZE as usize]).unwrap();
    }
    Mounted::new(&d).umount();
    let before: HashMap<String, Vec<blake3::Hash>> =
        (0..FILES).map(|i| (format!("f{i}"), blocks_of(&d.join(format!("f{i}"))))).collect();
    let m = Mounted::new(&d);
    write_at(&m.path("f1"), 3 * BS, b"through the mount");
    m.kill();
    // changed below while nothing is mounted
    write_at(&d.join("f2"), 5 * BS, b"behind its back");
    let m = Mounted::new(&d);
    let st = wait_scan(&m.dir);
    check_nothing_missed(&d, &before, &st);
    assert!(ranges(&st, "f1").is_some() && ranges(&st, "f2").is_some());
    m.umount();
}
