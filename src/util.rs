//! Small helpers: sizes, times, random ids, error chains for messages.

use std::time::{SystemTime, UNIX_EPOCH};

/// Parse `65536`, `64K`, `64KiB`, `1M`, `1MiB`, `2G`.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// An age in words: `40 s`, `12 min`, `5 h`, `3 days`.
pub fn age_text(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3600),
        s => format!("{} days", s / 86_400),
    }
}

/// `1.5 MiB` style.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = (z - era * 146_097) as u64;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe as i64 + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `2026-11-24T10:15:00Z` for seconds since the epoch.
pub fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Seconds since the epoch of a UTC time as S3 listings give it
/// (`2026-12-03T08:35:01.000Z`, fractions ignored); None if it is not one.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    if !s.ends_with('Z') || !(b.len() == 20 || b[19] == b'.') {
        return None;
    }
    let n = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes().all(|c| c.is_ascii_digit()).then(|| t.parse().ok())?
    };
    let (y, m, d, hh, mm, ss) = (n(0..4)?, n(5..7)?, n(8..10)?, n(11..13)?, n(14..16)?, n(17..19)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // days from civil (the inverse of civil_from_days)
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// Seconds east of UTC of the local time zone at `secs` (TZ, /etc/localtime).
pub fn local_offset(secs: i64) -> i64 {
    let t = secs as libc::time_t;
    // SAFETY: a plain C struct, for which all-zero bytes are a valid value.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: every pointer is to a buffer or C string that outlives the call, passed with its true length; the result is checked.
    if unsafe { libc::localtime_r(&t, &mut tm) }.is_null() {
        return 0;
    }
    tm.tm_gmtoff
}

/// A place where tests may make the process die, as SIGKILL would: when
/// the environment has `SNAPFS_CRASH_AT=<name>`, abort there.
pub fn crash_point(name: &str) {
    if std::env::var_os("SNAPFS_CRASH_AT").is_some_and(|v| v == name) {
        eprintln!("snapfs: crash point {name}");
        std::process::abort();
    }
}

/// The message of a caught panic.
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    match (p.downcast_ref::<&str>(), p.downcast_ref::<String>()) {
        (Some(s), _) => s.to_string(),
        (_, Some(s)) => s.clone(),
        _ => "a panic".into(),
    }
}

/// A place where tests may make a panic happen, to show that it does not
/// take the daemon down: with `SNAPFS_PANIC_AT=<point>:<detail>[,...]`,
/// panic when `point` is reached with `detail` (asked for only then).
pub fn panic_point(point: &str, detail: impl FnOnce() -> Vec<u8>) {
    static AT: std::sync::OnceLock<Vec<(String, Vec<u8>)>> = std::sync::OnceLock::new();
    let at = AT.get_or_init(|| {
        let v = std::env::var("SNAPFS_PANIC_AT").unwrap_or_default();
        v.split(',').filter_map(|a| a.split_once(':')).map(|(p, d)| (p.to_string(), d.as_bytes().to_vec())).collect()
    });
    if at.iter().any(|(p, _)| p == point) {
        let detail = detail();
        if at.iter().any(|(p, d)| p == point && *d == detail) {
            panic!("test panic at {point}:{}", String::from_utf8_lossy(&detail));
        }
    }
}

pub fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// Milliseconds since the epoch (the schedule's clock).
pub fn unix_now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Microseconds since the epoch (to order a commit and a replica's round).
pub fn unix_now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

/// 16 random bytes as hex.
pub fn random_id() -> String {
    let mut b = [0u8; 16];
    // SAFETY: every pointer is to a buffer or C string that outlives the call, passed with its true length; the result is checked.
    let n = unsafe { libc::getrandom(b.as_mut_ptr() as *mut libc::c_void, b.len(), 0) };
    if n != b.len() as isize {
        // Fall back to hashing time and pid; ids only need to be unique.
        let seed = format!("{:?}{}", SystemTime::now(), std::process::id());
        b.copy_from_slice(&blake3::hash(seed.as_bytes()).as_bytes()[..16]);
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `dir/name` for paths relative to a root (`dir` empty: the root).
pub fn join_rel(dir: &[u8], name: &[u8]) -> Vec<u8> {
    if dir.is_empty() {
        name.to_vec()
    } else {
        [dir, b"/", name].concat()
    }
}

/// How deep the walks go: a directory more than this many levels below
/// the top of a walk (the protected directory, a snapshot's root, a restore
/// target) is refused with an error naming it ([`too_deep`]), never a crash
/// and never a tree silently cut short. Every walk keeps its levels on the
/// heap (no recursion); the daemon's walks keep few descriptors whatever
/// the depth (`sys::Parking`), restore and rollback one per level at most.
pub const MAX_DEPTH: usize = 16_384;

/// The error of a walk that met a directory deeper than [`MAX_DEPTH`].
pub fn too_deep(path: &[u8]) -> String {
    format!(
        "{}: more than {MAX_DEPTH} directory levels deep, deeper than snapfs goes; move or remove what lies below",
        show_path(path)
    )
}

/// A path for messages: whole if it is short, else its first and last
/// kilobyte with the number of levels in between (a deep path can be
/// megabytes long).
pub fn show_path(p: &[u8]) -> String {
    const KEEP: usize = 1024;
    if p.len() <= 4 * KEEP {
        return String::from_utf8_lossy(p).into_owned();
    }
    let levels = p.iter().filter(|b| **b == b'/').count() + 1;
    format!(
        "{}…{} ({levels} levels, {} bytes)",
        String::from_utf8_lossy(&p[..KEEP]),
        String::from_utf8_lossy(&p[p.len() - KEEP..]),
        p.len()
    )
}

/// Locks that carry on after a thread panicked while holding them: the
/// data they guard stays consistent step by step (each critical section
/// leaves it whole or not at all), and one panicking request must not stop
/// every later one. Lock order, where several are taken, is written on
/// the fields that hold them.
pub trait Locked<T: ?Sized> {
    fn locked(&self) -> std::sync::MutexGuard<'_, T>;
}

impl<T: ?Sized> Locked<T> for std::sync::Mutex<T> {
    fn locked(&self) -> std::sync::MutexGuard<'_, T> {
        self.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `Locked` for readers and writers.
pub trait RwLocked<T: ?Sized> {
    fn read_locked(&self) -> std::sync::RwLockReadGuard<'_, T>;
    fn write_locked(&self) -> std::sync::RwLockWriteGuard<'_, T>;
}

impl<T: ?Sized> RwLocked<T> for std::sync::RwLock<T> {
    fn read_locked(&self) -> std::sync::RwLockReadGuard<'_, T> {
        self.read().unwrap_or_else(|e| e.into_inner())
    }
    fn write_locked(&self) -> std::sync::RwLockWriteGuard<'_, T> {
        self.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// This machine's host name (empty when it cannot be read).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// An error and its causes (its `source()` chain), as `outer: inner: ...`:
/// what `{:#}` of an `anyhow::Error` prints, for errors that are not one.
pub fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut next = e.source();
    while let Some(c) = next {
        s.push_str(": ");
        s.push_str(&c.to_string());
        next = c.source();
    }
    s
}

/// `f()`, and at debug level how long it took (`what`).
pub fn timed_debug<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let t0 = std::time::Instant::now();
    let r = f();
    log::debug!("{what}: {} µs", t0.elapsed().as_micros());
    r
}

#[cfg(test)]
mod tests {
    #[test]
    fn s3_times_parse() {
        for t in [0, 1_795_515_300, 951_782_400, 4_102_444_799] {
            assert_eq!(parse_rfc3339(&rfc3339(t)), Some(t), "{t}");
        }
        assert_eq!(parse_rfc3339("2026-11-24T10:15:00.123Z"), Some(1_795_515_300));
        for bad in ["", "2026-11-24 10:15:00Z", "2026-13-24T10:15:00Z", "2026-11-24T10:15:00", "2026-11-24T1a:15:00Z"] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64K"), Some(65536));
        assert_eq!(parse_size("65536"), Some(65536));
        assert_eq!(parse_size("1MiB"), Some(1 << 20));
        assert_eq!(parse_size("x"), None);
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }

    #[test]
    fn long_paths_are_shortened_in_messages() {
        assert_eq!(show_path(b"a/b"), "a/b");
        let deep = b"d/".repeat(10_000);
        let s = show_path(&deep[..deep.len() - 1]);
        assert!(s.len() < 2100 + 50 && s.starts_with("d/d/") && s.ends_with("(10000 levels, 19999 bytes)"), "{s}");
        assert!(too_deep(b"x/y").starts_with("x/y: more than 16384 directory levels deep"));
    }

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_515_300), "2026-11-24T10:15:00Z");
    }
}
