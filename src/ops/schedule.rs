//! Automatic snapshots and retention: `snapfs mount DIR --every 15m --keep
//! hourly=24,daily=7`, changed on a running mount with `snapfs schedule`.
//!
//! A run is due `every` after the latest snapshot in the repository (of any
//! kind). At start-up a run that came due while the daemon was down is
//! made once, not once per missed period; a run that takes longer than the
//! period is followed by one run, not a burst. A failed run is retried
//! after `min(every, 1 min)`. Scheduled snapshots are named `auto-<time>`;
//! retention (`--keep`) applies to those only, so snapshots a user took by
//! hand are never forgotten by the daemon, and is followed by a prune when
//! it forgot something.

use serde::{Deserialize, Serialize};

use crate::ops::maint::Policy;

/// Scheduled snapshots are named with this prefix.
pub const AUTO_PREFIX: &str = "auto-";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    /// Seconds between snapshots.
    pub every: u64,
    /// Retention for the scheduled snapshots (empty: keep all).
    #[serde(default)]
    pub keep: Policy,
}

/// The longest interval between automatic snapshots: a year and a day.
pub const MAX_INTERVAL: u64 = 366 * 86_400;

/// An interval within 1 s ..= `MAX_INTERVAL`, or why not.
pub fn check_interval(secs: u64) -> Result<u64, String> {
    match secs {
        0 => Err("the interval must be at least 1 s".into()),
        s if s > MAX_INTERVAL => Err(format!("the interval must be at most {} (366d)", interval_text(MAX_INTERVAL))),
        s => Ok(s),
    }
}

/// `30s`, `15m`, `1h`, `1d`, `90` (seconds), at most `MAX_INTERVAL`.
pub fn parse_interval(s: &str) -> Result<u64, String> {
    check_interval(parse_duration(s)?)
}

/// A duration in seconds: `N`, `Ns`, `Nm`, `Nh`, `Nd`, `Nw` (0 allowed).
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not an interval (e.g. 30s, 15m, 1h, 1d)"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" | "min" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (s, m, h, d, w)")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("{s:?} is too long"))
}

pub fn interval_text(secs: u64) -> String {
    match secs {
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// What `status` shows about the schedule.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ScheduleStatus {
    pub every: String,
    pub keep: String,
    pub next_run: Option<String>,
    pub next_run_in_sec: Option<i64>,
    pub last_run: Option<String>,
    /// "ok: auto-... (N forgotten)" or "failed: ..."
    pub last_result: Option<String>,
    pub runs: u64,
    pub failures: u64,
}

/// When runs are due. Times are seconds since the epoch from the caller's
/// clock (injectable in tests).
#[derive(Debug, Clone, Default)]
pub struct Scheduler {
    schedule: Option<Schedule>,
    next: Option<i64>,
    pub status: ScheduleStatus,
}

impl Scheduler {
    /// Set or clear the schedule; `latest` is the time of the latest
    /// snapshot in the repository.
    pub fn set(&mut self, schedule: Option<Schedule>, latest: Option<i64>, now: i64) {
        // whatever was stored or sent, the period stays within bounds
        let schedule = schedule.map(|s| Schedule { every: s.every.clamp(1, MAX_INTERVAL), ..s });
        self.next = schedule.as_ref().map(|s| match latest {
            // overdue (missed while down, or a longer period before): once, now
            Some(t) if t.saturating_add(s.every as i64) > now => t.saturating_add(s.every as i64),
            _ => now,
        });
        self.status.every = schedule.as_ref().map(|s| interval_text(s.every)).unwrap_or_default();
        self.status.keep = schedule.as_ref().map(|s| s.keep.to_string()).unwrap_or_default();
        self.schedule = schedule;
        self.update_next(now);
    }

    pub fn schedule(&self) -> Option<&Schedule> {
        self.schedule.as_ref()
    }

    /// Whether a run is due at `now`.
    pub fn due(&self, now: i64) -> bool {
        self.next.is_some_and(|n| now >= n)
    }

    /// A run that started at `started` has ended at `now`.
    pub fn ran(&mut self, started: i64, now: i64, result: Result<String, String>) {
        let Some(s) = &self.schedule else { return };
        self.status.runs += 1;
        self.status.last_run = Some(crate::util::rfc3339(started));
        self.next = Some(match &result {
            // a run longer than the period is followed by one run, not a burst
            Ok(_) => started.saturating_add(s.every as i64).max(now),
            Err(_) => {
                self.status.failures += 1;
                now.saturating_add((s.every as i64).min(60))
            }
        });
        self.status.last_result = Some(match result {
            Ok(m) => format!("ok: {m}"),
            Err(e) => format!("failed: {e}"),
        });
        self.update_next(now);
    }

    fn update_next(&mut self, now: i64) {
        self.status.next_run = self.next.map(crate::util::rfc3339);
        self.status.next_run_in_sec = self.next.map(|n| n.saturating_sub(now).max(0));
    }

    /// The status as of `now`.
    pub fn status_at(&self, now: i64) -> Option<ScheduleStatus> {
        self.schedule.as_ref()?;
        let mut s = self.status.clone();
        s.next_run_in_sec = self.next.map(|n| n.saturating_sub(now).max(0));
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every(secs: u64) -> Option<Schedule> {
        Some(Schedule { every: secs, keep: Policy::default() })
    }

    /// Run the scheduler over `[from, to)` one second at a time; runs take
    /// `took` seconds. Returns the start times of the runs.
    fn simulate(s: &mut Scheduler, from: i64, to: i64, took: i64) -> Vec<i64> {
        let mut runs = Vec::new();
        let mut now = from;
        while now < to {
            if s.due(now) {
                runs.push(now);
                s.ran(now, now + took, Ok("x".into()));
                now += took.max(1);
            } else {
                now += 1;
            }
        }
        runs
    }

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("15m"), Ok(900));
        assert_eq!(parse_interval("90"), Ok(90));
        assert_eq!(parse_interval("1h"), Ok(3600));
        assert_eq!(parse_interval("2d"), Ok(172_800));
        assert!(parse_interval("0s").is_err());
        assert!(parse_interval("5y").is_err());
        assert!(parse_interval("m").is_err());
        assert_eq!(interval_text(900), "15m");
        assert_eq!(interval_text(90), "90s");
    }

    #[test]
    fn regular_runs() {
        let mut s = Scheduler::default();
        let t0 = 1_000_000;
        // the last snapshot was 100 s ago: the first run is 800 s from now
        s.set(every(900), Some(t0 - 100), t0);
        assert!(!s.due(t0));
        assert_eq!(s.status_at(t0).unwrap().next_run_in_sec, Some(800));
        let runs = simulate(&mut s, t0, t0 + 3 * 900, 5);
        assert_eq!(runs, vec![t0 + 800, t0 + 1700, t0 + 2600]);
        assert_eq!(s.status.runs, 3);
    }

    #[test]
    fn missed_runs_are_caught_up_once() {
        let mut s = Scheduler::default();
        let t0 = 1_000_000;
        // down for ten periods
        s.set(every(60), Some(t0 - 600), t0);
        assert!(s.due(t0));
        let runs = simulate(&mut s, t0, t0 + 150, 1);
        assert_eq!(runs, vec![t0, t0 + 60, t0 + 120]);
        // no snapshot at all yet: run now
        let mut s = Scheduler::default();
        s.set(every(60), None, t0);
        assert!(s.due(t0));
    }

    #[test]
    fn long_runs_do_not_pile_up() {
        let mut s = Scheduler::default();
        let t0 = 1_000_000;
        s.set(every(10), None, t0);
        // each run takes 35 s: three periods each; one run follows each
        let runs = simulate(&mut s, t0, t0 + 100, 35);
        assert_eq!(runs, vec![t0, t0 + 35, t0 + 70]);
    }

    #[test]
    fn failures_retry_within_a_minute() {
        let mut s = Scheduler::default();
        let t0 = 1_000_000;
        s.set(every(3600), None, t0);
        assert!(s.due(t0));
        s.ran(t0, t0 + 1, Err("repository unreachable".into()));
        assert!(!s.due(t0 + 30));
        assert!(s.due(t0 + 61));
        assert_eq!(s.status.failures, 1);
        assert!(s.status.last_result.as_deref().unwrap().starts_with("failed"));
        s.ran(t0 + 61, t0 + 62, Ok("auto-x".into()));
        assert!(!s.due(t0 + 61 + 3599));
        assert!(s.due(t0 + 61 + 3600));
    }

    #[test]
    fn huge_intervals_are_bounded() {
        // `schedule --every 9223372036854775807s` once wrapped round and
        // snapshotted continuously
        assert!(parse_interval("9223372036854775807s").is_err());
        assert!(parse_interval("367d").is_err());
        assert_eq!(parse_interval("366d"), Ok(MAX_INTERVAL));
        assert!(check_interval(u64::MAX).is_err());
        let t0 = 1_000_000;
        for latest in [None, Some(t0), Some(i64::MAX - 5), Some(i64::MIN)] {
            let mut s = Scheduler::default();
            // a stored or sent value beyond the bound is clamped, never wraps
            s.set(every(u64::MAX), latest, t0);
            let runs = simulate(&mut s, t0, t0 + 100, 1);
            assert!(runs.len() <= 1, "{latest:?}: {runs:?}");
            s.ran(t0, t0 + 1, Ok("x".into()));
            assert!(!s.due(t0 + 100));
            s.ran(i64::MAX - 1, i64::MAX, Err("x".into()));
            assert!(s.status_at(t0).is_some());
        }
    }

    #[test]
    fn changing_and_clearing() {
        let mut s = Scheduler::default();
        let t0 = 1_000_000;
        s.set(every(3600), Some(t0), t0);
        assert!(!s.due(t0 + 100));
        // shorter period on a running mount: due relative to the latest snapshot
        s.set(every(60), Some(t0), t0 + 100);
        assert!(s.due(t0 + 100));
        s.set(None, Some(t0), t0 + 100);
        assert!(!s.due(t0 + 100_000));
        assert!(s.status_at(t0).is_none());
    }
}
