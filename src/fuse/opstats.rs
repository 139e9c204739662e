//! Per-opcode counters and latency histograms of a mount (`snapfs status
//! --ops`): how many requests of each kind the kernel sent, and how long
//! the daemon took to answer each, from the callback's start to its return
//! (the reply is sent inside it). What the kernel spends carrying a request
//! there and back is not in it; `perf` and `strace -c` on the daemon say
//! that (doc/DESIGN.md, "Where a small file's time goes").
//!
//! A request costs two clock reads and three relaxed atomic additions. The
//! histogram has four buckets per power of two of nanoseconds (19%
//! resolution), enough for medians and tails of requests that take from a
//! microsecond to seconds.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// The requests counted (FUSE opcodes a snapfs mount answers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Lookup,
    Forget,
    Getattr,
    Setattr,
    Readlink,
    Mknod,
    Mkdir,
    Unlink,
    Rmdir,
    Symlink,
    Rename,
    Link,
    Open,
    Read,
    Write,
    Flush,
    Release,
    Fsync,
    Opendir,
    Readdir,
    Readdirplus,
    Releasedir,
    Fsyncdir,
    Statfs,
    Setxattr,
    Getxattr,
    Listxattr,
    Removexattr,
    Access,
    Create,
    Fallocate,
    Lseek,
    CopyFileRange,
}

impl Op {
    pub const ALL: [Op; 33] = [
        Op::Lookup,
        Op::Forget,
        Op::Getattr,
        Op::Setattr,
        Op::Readlink,
        Op::Mknod,
        Op::Mkdir,
        Op::Unlink,
        Op::Rmdir,
        Op::Symlink,
        Op::Rename,
        Op::Link,
        Op::Open,
        Op::Read,
        Op::Write,
        Op::Flush,
        Op::Release,
        Op::Fsync,
        Op::Opendir,
        Op::Readdir,
        Op::Readdirplus,
        Op::Releasedir,
        Op::Fsyncdir,
        Op::Statfs,
        Op::Setxattr,
        Op::Getxattr,
        Op::Listxattr,
        Op::Removexattr,
        Op::Access,
        Op::Create,
        Op::Fallocate,
        Op::Lseek,
        Op::CopyFileRange,
    ];

    /// The opcode's name as the kernel's headers spell it, lower case.
    pub fn name(self) -> &'static str {
        match self {
            Op::Lookup => "lookup",
            Op::Forget => "forget",
            Op::Getattr => "getattr",
            Op::Setattr => "setattr",
            Op::Readlink => "readlink",
            Op::Mknod => "mknod",
            Op::Mkdir => "mkdir",
            Op::Unlink => "unlink",
            Op::Rmdir => "rmdir",
            Op::Symlink => "symlink",
            Op::Rename => "rename",
            Op::Link => "link",
            Op::Open => "open",
            Op::Read => "read",
            Op::Write => "write",
            Op::Flush => "flush",
            Op::Release => "release",
            Op::Fsync => "fsync",
            Op::Opendir => "opendir",
            Op::Readdir => "readdir",
            Op::Readdirplus => "readdirplus",
            Op::Releasedir => "releasedir",
            Op::Fsyncdir => "fsyncdir",
            Op::Statfs => "statfs",
            Op::Setxattr => "setxattr",
            Op::Getxattr => "getxattr",
            Op::Listxattr => "listxattr",
            Op::Removexattr => "removexattr",
            Op::Access => "access",
            Op::Create => "create",
            Op::Fallocate => "fallocate",
            Op::Lseek => "lseek",
            Op::CopyFileRange => "copy_file_range",
        }
    }
}

/// Buckets per power of two.
const SUB: u32 = 4;
/// 2^36 ns (69 s) and more share the last bucket.
const BUCKETS: usize = (36 * SUB) as usize;

/// The bucket of a latency in nanoseconds.
fn bucket(ns: u64) -> usize {
    // below 4 ns is below the clock's resolution anyway
    let ns = ns.max(4);
    let log = 63 - ns.leading_zeros();
    // the two bits below the leading one
    let sub = ((ns >> (log - 2)) & 3) as u32;
    ((log * SUB + sub) as usize).min(BUCKETS - 1)
}

/// The smallest latency (ns) that falls in bucket `b`'s successor: its
/// upper bound.
fn bucket_upper(b: usize) -> u64 {
    let (log, sub) = (b as u32 / SUB, b as u32 % SUB);
    let base = 1u64 << log;
    base + (base * u64::from(sub + 1)) / u64::from(SUB)
}

#[derive(Default)]
struct Cell {
    count: AtomicU64,
    ns: AtomicU64,
    hist: Vec<AtomicU64>,
}

/// The counters of one mount, shared by its session threads and the
/// control thread that reports them.
pub struct OpStats {
    cells: Vec<Cell>,
    since: String,
}

impl Default for OpStats {
    fn default() -> Self {
        OpStats::new()
    }
}

impl OpStats {
    pub fn new() -> OpStats {
        let cells = Op::ALL
            .iter()
            .map(|_| Cell { hist: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(), ..Default::default() })
            .collect();
        OpStats { cells, since: crate::util::rfc3339(crate::util::unix_now()) }
    }

    /// Counts a request of `op` when the returned guard drops.
    pub fn timer(&self, op: Op) -> Timer<'_> {
        Timer { cell: &self.cells[op as usize], t0: Instant::now() }
    }

    fn record(cell: &Cell, ns: u64) {
        cell.count.fetch_add(1, Relaxed);
        cell.ns.fetch_add(ns, Relaxed);
        cell.hist[bucket(ns)].fetch_add(1, Relaxed);
    }

    /// What has been counted since the mount, opcodes never sent left out.
    pub fn report(&self) -> OpsReport {
        let ops = Op::ALL
            .iter()
            .zip(&self.cells)
            .filter_map(|(op, c)| {
                let count = c.count.load(Relaxed);
                (count > 0).then(|| {
                    let hist: Vec<(u64, u64)> = c
                        .hist
                        .iter()
                        .enumerate()
                        .filter_map(|(b, n)| {
                            let n = n.load(Relaxed);
                            (n > 0).then_some((bucket_upper(b), n))
                        })
                        .collect();
                    OpLine::new(op.name(), count, c.ns.load(Relaxed), hist)
                })
            })
            .collect();
        OpsReport { since: self.since.clone(), ops }
    }
}

/// Records the time from its making to its drop.
pub struct Timer<'a> {
    cell: &'a Cell,
    t0: Instant,
}

impl Drop for Timer<'_> {
    fn drop(&mut self) {
        OpStats::record(self.cell, self.t0.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64);
    }
}

/// What `status --ops` shows.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct OpsReport {
    /// Counting since (RFC 3339): the mount.
    pub since: String,
    pub ops: Vec<OpLine>,
}

/// One opcode's requests.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct OpLine {
    pub op: String,
    pub count: u64,
    /// The daemon's time answering them, in all (ns).
    pub total_ns: u64,
    /// Latency quantiles (ns; each the upper bound of its bucket).
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    /// The histogram: (upper bound ns, requests), buckets that hold any.
    pub hist: Vec<(u64, u64)>,
}

impl OpLine {
    pub fn new(op: &str, count: u64, total_ns: u64, hist: Vec<(u64, u64)>) -> OpLine {
        let q = |f: f64| quantile(&hist, f);
        OpLine { op: op.to_string(), count, total_ns, p50_ns: q(0.5), p90_ns: q(0.9), p99_ns: q(0.99), hist }
    }

    pub fn mean_ns(&self) -> u64 {
        self.total_ns.checked_div(self.count).unwrap_or(0)
    }
}

/// The latency below which a fraction `f` of the requests fall.
fn quantile(hist: &[(u64, u64)], f: f64) -> u64 {
    let total: u64 = hist.iter().map(|h| h.1).sum();
    if total == 0 {
        return 0;
    }
    let want = ((total as f64) * f).ceil().max(1.0) as u64;
    let mut seen = 0;
    for &(ub, n) in hist {
        seen += n;
        if seen >= want {
            return ub;
        }
    }
    hist.last().map_or(0, |h| h.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_ordered_and_hold_their_values() {
        let mut last = 0;
        for b in 0..BUCKETS - 1 {
            let ub = bucket_upper(b);
            assert!(ub >= last, "bucket {b}");
            last = ub;
        }
        for ns in [1u64, 2, 3, 5, 7, 100, 999, 1000, 1001, 12_345, 1 << 20, 3 << 30] {
            let b = bucket(ns);
            assert!(ns < bucket_upper(b), "{ns} in bucket {b} below {}", bucket_upper(b));
            if ns >= 4 {
                assert!(ns >= bucket_upper(b - 1), "{ns} belongs before bucket {b}");
            }
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn a_report_counts_each_request_and_its_quantiles() {
        let s = OpStats::new();
        for ns in [1_000u64, 2_000, 3_000, 100_000] {
            OpStats::record(&s.cells[Op::Lookup as usize], ns);
        }
        drop(s.timer(Op::Read));
        let r = s.report();
        assert_eq!(r.ops.len(), 2, "{r:?}");
        let l = &r.ops[0];
        assert_eq!((l.op.as_str(), l.count, l.total_ns), ("lookup", 4, 106_000));
        assert!(l.p50_ns >= 2_000 && l.p50_ns < 2_500, "{l:?}");
        assert!(l.p99_ns >= 100_000 && l.p99_ns < 125_000, "{l:?}");
        assert_eq!(l.mean_ns(), 26_500);
        assert_eq!(r.ops[1].op, "read");
    }
}
