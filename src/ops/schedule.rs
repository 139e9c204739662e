//! Automatic snapshots and retention: `snapfs mount DIR --every 15m --keep
//! hourly=24,daily=7`, or driven by change (`--max-dirty 1G --max-age 5m
//! --settle 10s`), changed on a running mount with `snapfs schedule`.
//!
//! Two kinds of trigger, in any combination:
//! - the clock, `every`: a run is due `every` after the latest snapshot in
//!   the repository (of any kind), whether anything changed or not. At
//!   start-up a run that came due while the daemon was down is made once,
//!   not once per missed period; a run that takes longer than the period is
//!   followed by one run, not a burst.
//! - change: `max_dirty` (as soon as that many bytes are dirty), `max_age`
//!   (before the oldest unprotected change is older than that: the recovery
//!   point objective) and `settle` (as soon as writes have paused that
//!   long, so that snapshots land between the bursts of a workload; never
//!   later than `max_age`, which it needs). They read what the tracker
//!   knows ([`Risk`]): a directory with nothing unprotected takes no
//!   snapshot from them, however long it stays idle.
//!
//! A failed run is retried after a backoff that doubles from
//! `min(every, max_age, 1 min)` up to 1 min; no trigger fires before it
//! ends. Scheduled snapshots are named `auto-<time>`; retention (`--keep`)
//! applies to those only, so snapshots a user took by hand are never
//! forgotten by the daemon, and is followed by a prune when it forgot
//! something.
//!
//! Times are milliseconds since the epoch from the caller's clock
//! (injected in tests): settling within a second needs finer steps than
//! whole seconds, whose boundaries would cut a burst anywhere.
//!
//! (About 390 lines of code and 490 of tests: the scheduler is small; its tests drive it on a simulated clock.)

use serde::{Deserialize, Serialize};

use crate::ops::maint::Policy;

/// Scheduled snapshots are named with this prefix.
pub const AUTO_PREFIX: &str = "auto-";

/// When automatic snapshots are taken, and which of them are kept.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    /// Seconds between snapshots (the clock: also when nothing changed).
    #[serde(default)]
    pub every: Option<u64>,
    /// A snapshot as soon as this many bytes of file data are dirty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_dirty: Option<u64>,
    /// A snapshot before the oldest unprotected change is older than this
    /// many seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<u64>,
    /// A snapshot once writes have paused this many seconds (at the latest
    /// at `max_age`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settle: Option<u64>,
    /// Retention for the scheduled snapshots (empty: keep all).
    #[serde(default)]
    pub keep: Policy,
}

impl Schedule {
    /// A schedule that takes a snapshot every `secs`.
    pub fn every(secs: u64) -> Schedule {
        Schedule { every: Some(secs), ..Default::default() }
    }

    /// Whether some trigger is given (`keep` alone is not a schedule).
    pub fn has_trigger(&self) -> bool {
        self.every.is_some() || self.max_dirty.is_some() || self.max_age.is_some()
    }

    /// The schedule is one the scheduler can follow, or why not.
    pub fn check(&self) -> Result<(), String> {
        if !self.has_trigger() {
            return Err("give --every, --max-age or --max-dirty".into());
        }
        for (flag, v) in [("--every", self.every), ("--max-age", self.max_age), ("--settle", self.settle)] {
            if let Some(v) = v {
                check_interval(v).map_err(|e| format!("{flag}: {e}"))?;
            }
        }
        if self.max_dirty == Some(0) {
            return Err("--max-dirty must be at least 1 byte".into());
        }
        match (self.settle, self.max_age) {
            (Some(_), None) => Err("--settle waits at most --max-age: give --max-age too".into()),
            (Some(s), Some(a)) if s >= a => Err(format!(
                "--settle {} must be shorter than --max-age {} (it would never come first)",
                interval_text(s),
                interval_text(a)
            )),
            _ => Ok(()),
        }
    }

    /// Whatever was stored or sent: every period within bounds, a settle
    /// that cannot apply dropped; None if no trigger remains.
    fn bounded(self) -> Option<Schedule> {
        let clamp = |v: Option<u64>| v.map(|s| s.clamp(1, MAX_INTERVAL));
        let mut s = Schedule {
            every: clamp(self.every),
            max_dirty: self.max_dirty.map(|b| b.max(1)),
            max_age: clamp(self.max_age),
            settle: clamp(self.settle),
            keep: self.keep,
        };
        if s.max_age.is_none_or(|a| s.settle.is_some_and(|w| w >= a)) {
            s.settle = None;
        }
        s.has_trigger().then_some(s)
    }

    /// The longest a change can stay unprotected under this schedule, in
    /// seconds, not counting the time a snapshot takes (None: no bound in
    /// time, only `max_dirty`).
    pub fn worst_case(&self) -> Option<u64> {
        [self.every, self.max_age].into_iter().flatten().min()
    }

    /// `every 15m, max-dirty 64.0 MiB, max-age 5m, settle 10s`.
    pub fn text(&self) -> String {
        let mut parts = Vec::new();
        if let Some(e) = self.every {
            parts.push(format!("every {}", interval_text(e)));
        }
        if let Some(b) = self.max_dirty {
            parts.push(format!("max-dirty {}", crate::util::human_bytes(b)));
        }
        if let Some(a) = self.max_age {
            parts.push(format!("max-age {}", interval_text(a)));
        }
        if let Some(w) = self.settle {
            parts.push(format!("settle {}", interval_text(w)));
        }
        parts.join(", ")
    }
}

/// The longest interval between automatic snapshots: a year and a day.
pub const MAX_INTERVAL: u64 = 366 * 86_400;

/// The longest wait before a failed run is tried again.
pub const MAX_BACKOFF_MS: i64 = 60_000;

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

/// An amount of dirty data: `64M`, `1G`, `512K`, `1048576`; at least 1 byte.
pub fn parse_max_dirty(s: &str) -> Result<u64, String> {
    match crate::util::parse_size(s) {
        None => Err(format!("{s:?} is not a size (e.g. 512K, 64M, 1G)")),
        Some(0) => Err("the size must be at least 1 byte".into()),
        Some(n) => Ok(n),
    }
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

/// What no committed snapshot holds yet, as the tracker knows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Risk {
    /// Bytes of file data changed (counted only when the schedule has
    /// `max_dirty`: the count walks the dirty set).
    pub bytes: u64,
    /// When the oldest unprotected change was made (ms); None: nothing is.
    pub oldest_ms: Option<i64>,
    /// When the latest change was made (ms).
    pub last_ms: Option<i64>,
}

/// What made a run due.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Trigger {
    Every,
    MaxDirty,
    MaxAge,
    Settle,
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Trigger::Every => "every",
            Trigger::MaxDirty => "max-dirty",
            Trigger::MaxAge => "max-age",
            Trigger::Settle => "settle",
        })
    }
}

/// What `status` shows about the schedule.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ScheduleStatus {
    /// The period of the clock (`15m`), if there is one.
    pub every: Option<String>,
    #[serde(default)]
    pub max_dirty: Option<u64>,
    #[serde(default)]
    pub max_age: Option<String>,
    #[serde(default)]
    pub settle: Option<String>,
    /// The whole policy in words.
    #[serde(default)]
    pub policy: String,
    /// The longest a change stays unprotected under the policy, besides
    /// the time a snapshot takes (None: no bound in time).
    #[serde(default)]
    pub worst_case_sec: Option<u64>,
    pub keep: String,
    /// When the next run is due if nothing more changes (None: when
    /// something changes, or `max_dirty` is reached).
    pub next_run: Option<String>,
    pub next_run_in_sec: Option<i64>,
    /// The trigger that makes that run due.
    #[serde(default)]
    pub next_trigger: Option<String>,
    pub last_run: Option<String>,
    /// "ok: auto-... (N forgotten)" or "failed: ..."
    pub last_result: Option<String>,
    /// What made the last run due.
    #[serde(default)]
    pub last_trigger: Option<String>,
    pub runs: u64,
    pub failures: u64,
}

/// When runs are due, from the caller's clock and what the tracker says is
/// unprotected.
#[derive(Debug, Clone, Default)]
pub struct Scheduler {
    schedule: Option<Schedule>,
    /// When the clock (`every`) is due next.
    next_every: Option<i64>,
    /// After a failure: no run before this.
    retry_at: Option<i64>,
    /// Failures since the last success (each doubles the backoff).
    failing: u32,
    pub status: ScheduleStatus,
}

fn ms(secs: u64) -> i64 {
    (secs as i64).saturating_mul(1000)
}

impl Scheduler {
    /// Set or clear the schedule; `latest` is the time of the latest
    /// snapshot in the repository.
    pub fn set(&mut self, schedule: Option<Schedule>, latest: Option<i64>, now: i64) {
        let schedule = schedule.and_then(Schedule::bounded);
        self.next_every = schedule.as_ref().and_then(|s| s.every).map(|every| match latest {
            // overdue (missed while down, or a longer period before): once, now
            Some(t) if t.saturating_add(ms(every)) > now => t.saturating_add(ms(every)),
            _ => now,
        });
        let st = &mut self.status;
        st.every = schedule.as_ref().and_then(|s| s.every).map(interval_text);
        st.max_dirty = schedule.as_ref().and_then(|s| s.max_dirty);
        st.max_age = schedule.as_ref().and_then(|s| s.max_age).map(interval_text);
        st.settle = schedule.as_ref().and_then(|s| s.settle).map(interval_text);
        st.policy = schedule.as_ref().map(Schedule::text).unwrap_or_default();
        st.worst_case_sec = schedule.as_ref().and_then(Schedule::worst_case);
        st.keep = schedule.as_ref().map(|s| s.keep.to_string()).unwrap_or_default();
        self.schedule = schedule;
    }

    pub fn schedule(&self) -> Option<&Schedule> {
        self.schedule.as_ref()
    }

    /// When the next run is due if nothing more changes, and why; a run
    /// `max_dirty` makes due is due at once (`i64::MIN`).
    fn next(&self, risk: &Risk) -> Option<(i64, Trigger)> {
        let s = self.schedule.as_ref()?;
        let mut due: Vec<(i64, Trigger)> = Vec::with_capacity(4);
        if let Some(n) = self.next_every {
            due.push((n, Trigger::Every));
        }
        // change-driven triggers only while something is unprotected
        if let Some(oldest) = risk.oldest_ms {
            if s.max_dirty.is_some_and(|m| risk.bytes >= m) {
                due.push((i64::MIN, Trigger::MaxDirty));
            }
            if let Some(a) = s.max_age {
                due.push((oldest.saturating_add(ms(a)), Trigger::MaxAge));
            }
            if let Some(w) = s.settle {
                // nothing written since the oldest change was marked: it
                // has been quiet since then
                let last = risk.last_ms.unwrap_or(oldest).max(oldest);
                due.push((last.saturating_add(ms(w)), Trigger::Settle));
            }
        }
        let (at, why) = due.into_iter().min()?;
        // after a failure, nothing before the backoff ends
        Some((self.retry_at.map_or(at, |r| at.max(r)), why))
    }

    /// Whether a run is due at `now`, and why.
    pub fn due(&self, now: i64, risk: &Risk) -> Option<Trigger> {
        self.next(risk).filter(|(at, _)| now >= *at).map(|(_, why)| why)
    }

    /// When a run could come due next without another change (the caller
    /// looks again meanwhile for new changes and `max_dirty`).
    pub fn wake_at(&self, risk: &Risk) -> Option<i64> {
        self.next(risk).map(|(at, _)| at)
    }

    /// The backoff after the `n`th failure in a row: from
    /// `min(every, max_age, 1 min)` (1 s with `max_dirty` only), doubling,
    /// at most a minute.
    fn backoff(&self, n: u32) -> i64 {
        let Some(s) = &self.schedule else { return MAX_BACKOFF_MS };
        let base = [s.every, s.max_age].into_iter().flatten().min().map_or(1000, ms).clamp(1000, MAX_BACKOFF_MS);
        base.saturating_mul(1i64 << n.saturating_sub(1).min(16)).min(MAX_BACKOFF_MS)
    }

    /// A run that `why` made due started at `started` and has ended at `now`.
    pub fn ran(&mut self, started: i64, now: i64, why: Trigger, result: Result<String, String>) {
        let Some(s) = &self.schedule else { return };
        let every = s.every;
        self.status.runs += 1;
        self.status.last_run = Some(crate::util::rfc3339(started.div_euclid(1000)));
        self.status.last_trigger = Some(why.to_string());
        match &result {
            Ok(_) => {
                self.failing = 0;
                self.retry_at = None;
                // a run longer than the period is followed by one run, not
                // a burst; any run restarts the clock (it is relative to
                // the latest snapshot)
                self.next_every = every.map(|e| started.saturating_add(ms(e)).max(now));
            }
            Err(_) => {
                self.status.failures += 1;
                self.failing = self.failing.saturating_add(1);
                // the clock stays due: its run is the retry
                self.retry_at = Some(now.saturating_add(self.backoff(self.failing)));
            }
        }
        self.status.last_result = Some(match result {
            Ok(m) => format!("ok: {m}"),
            Err(e) => format!("failed: {e}"),
        });
    }

    /// The status as of `now` with `risk` unprotected.
    pub fn status_at(&self, now: i64, risk: &Risk) -> Option<ScheduleStatus> {
        self.schedule.as_ref()?;
        let mut s = self.status.clone();
        // a run due at once (max_dirty) or overdue shows as now
        let next = self.next(risk).map(|(at, why)| (at.max(now), why));
        s.next_run = next.map(|(at, _)| crate::util::rfc3339(at.div_euclid(1000)));
        s.next_run_in_sec = next.map(|(at, _)| at.saturating_sub(now).max(0).div_euclid(1000));
        s.next_trigger = next.map(|(_, why)| why.to_string());
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One second on the scheduler's clock.
    const S: i64 = 1000;

    fn every(secs: u64) -> Option<Schedule> {
        Some(Schedule::every(secs))
    }

    fn change(max_dirty: Option<u64>, max_age: Option<u64>, settle: Option<u64>) -> Option<Schedule> {
        let s = Schedule { max_dirty, max_age, settle, ..Default::default() };
        s.check().unwrap();
        Some(s)
    }

    const IDLE: Risk = Risk { bytes: 0, oldest_ms: None, last_ms: None };

    /// Run the scheduler over `[from, to)` one second at a time with nothing
    /// changing (the clock only); runs take `took` seconds. Returns the start
    /// times of the runs, in seconds.
    fn simulate(s: &mut Scheduler, from: i64, to: i64, took: i64) -> Vec<i64> {
        let mut runs = Vec::new();
        let mut now = from;
        while now < to {
            if let Some(why) = s.due(now * S, &IDLE) {
                runs.push(now);
                s.ran(now * S, (now + took) * S, why, Ok("x".into()));
                now += took.max(1);
            } else {
                now += 1;
            }
        }
        runs
    }

    /// A directory whose changes come at `writes` (ms, sorted; 4 KiB each),
    /// with a snapshot of everything before `from`, driven by `s` in steps of
    /// `step` ms; each run takes `took` ms and seals at its start (changes
    /// at that instant are in it, later ones stay unprotected), `fails(n)`
    /// says whether the `n`th run fails (its changes stay unprotected).
    struct Sim<'a> {
        writes: &'a [i64],
        step: i64,
        took: i64,
        fails: &'a dyn Fn(usize) -> bool,
    }

    /// What a simulation saw.
    #[derive(Debug, Default)]
    struct Seen {
        /// (start, trigger, succeeded) of each run.
        runs: Vec<(i64, Trigger, bool)>,
        /// The largest age of the oldest unprotected change at any step (ms).
        max_age: i64,
    }

    impl Seen {
        fn starts(&self) -> Vec<i64> {
            self.runs.iter().map(|r| r.0).collect()
        }
        fn triggers(&self) -> Vec<Trigger> {
            self.runs.iter().map(|r| r.1).collect()
        }
    }

    impl Sim<'_> {
        fn risk(&self, sealed: i64, now: i64) -> Risk {
            let open: Vec<i64> = self.writes.iter().copied().filter(|&w| w > sealed && w <= now).collect();
            Risk { bytes: 4096 * open.len() as u64, oldest_ms: open.first().copied(), last_ms: open.last().copied() }
        }

        fn run(&self, s: &mut Scheduler, from: i64, to: i64) -> Seen {
            let mut seen = Seen::default();
            let mut sealed = from - 1;
            let mut now = from;
            while now < to {
                let risk = self.risk(sealed, now);
                if let Some(o) = risk.oldest_ms {
                    seen.max_age = seen.max_age.max(now - o);
                }
                match s.due(now, &risk) {
                    Some(why) => {
                        let ok = !(self.fails)(seen.runs.len());
                        seen.runs.push((now, why, ok));
                        let end = now + self.took;
                        s.ran(now, end, why, if ok { Ok("auto-x".into()) } else { Err("unreachable".into()) });
                        if ok {
                            sealed = now;
                        }
                        now = end.max(now + self.step);
                    }
                    None => now += self.step,
                }
            }
            seen
        }
    }

    fn never(_: usize) -> bool {
        false
    }

    /// Changes every `gap` ms over `[from, to)`.
    fn writes(from: i64, to: i64, gap: i64) -> Vec<i64> {
        (from..to).step_by(gap as usize).collect()
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
    fn sizes() {
        assert_eq!(parse_max_dirty("64M"), Ok(64 << 20));
        assert_eq!(parse_max_dirty("1G"), Ok(1 << 30));
        assert_eq!(parse_max_dirty("512KiB"), Ok(512 << 10));
        assert_eq!(parse_max_dirty("4096"), Ok(4096));
        assert!(parse_max_dirty("0").is_err());
        assert!(parse_max_dirty("0M").is_err());
        assert!(parse_max_dirty("1.5G").is_err());
        assert!(parse_max_dirty("64X").is_err());
        assert!(parse_max_dirty("").is_err());
        assert!(parse_max_dirty("99999999999999G").is_err());
    }

    #[test]
    fn checks() {
        let s =
            |every, max_dirty, max_age, settle| Schedule { every, max_dirty, max_age, settle, ..Default::default() };
        assert!(s(None, None, None, None).check().unwrap_err().contains("--every"));
        assert!(s(None, None, None, Some(5)).check().is_err(), "settle alone is no trigger");
        assert!(s(Some(60), None, None, Some(5)).check().unwrap_err().contains("--max-age"));
        assert!(s(None, None, Some(10), Some(10)).check().unwrap_err().contains("shorter"));
        assert!(s(None, Some(0), None, None).check().is_err());
        assert!(s(None, None, Some(0), None).check().is_err());
        assert!(s(None, None, Some(MAX_INTERVAL + 1), None).check().is_err());
        for ok in [
            s(Some(900), None, None, None),
            s(None, Some(1 << 20), None, None),
            s(None, None, Some(10), Some(1)),
            s(Some(3600), Some(1 << 30), Some(300), Some(10)),
        ] {
            assert_eq!(ok.check(), Ok(()), "{ok:?}");
        }
        // the worst case is the tighter time bound; max_dirty alone has none
        assert_eq!(s(Some(3600), None, Some(300), Some(10)).worst_case(), Some(300));
        assert_eq!(s(Some(60), None, None, None).worst_case(), Some(60));
        assert_eq!(s(None, Some(1), None, None).worst_case(), None);
        assert_eq!(
            s(Some(3600), Some(64 << 20), Some(300), Some(10)).text(),
            "every 1h, max-dirty 64.0 MiB, max-age 5m, settle 10s"
        );
    }

    #[test]
    fn stored_schedules_of_older_versions_read() {
        // what a mount before change-driven triggers kept in `health`
        let s: Schedule = serde_json::from_str(r#"{"every":900,"keep":{"last":3}}"#).unwrap();
        assert_eq!(s.every, Some(900));
        assert_eq!((s.max_dirty, s.max_age, s.settle), (None, None, None));
        assert_eq!(s.keep.last, 3);
        let back: Schedule = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn regular_runs() {
        let mut s = Scheduler::default();
        let t0 = 1_000_000;
        // the last snapshot was 100 s ago: the first run is 800 s from now
        s.set(every(900), Some((t0 - 100) * S), t0 * S);
        assert!(s.due(t0 * S, &IDLE).is_none());
        assert_eq!(s.status_at(t0 * S, &IDLE).unwrap().next_run_in_sec, Some(800));
        let runs = simulate(&mut s, t0, t0 + 3 * 900, 5);
        assert_eq!(runs, vec![t0 + 800, t0 + 1700, t0 + 2600]);
        assert_eq!(s.status.runs, 3);
        assert_eq!(s.status.last_trigger.as_deref(), Some("every"));
    }

    #[test]
    fn missed_runs_are_caught_up_once() {
        let mut s = Scheduler::default();
        let t0 = 1_000_000;
        // down for ten periods
        s.set(every(60), Some((t0 - 600) * S), t0 * S);
        assert_eq!(s.due(t0 * S, &IDLE), Some(Trigger::Every));
        let runs = simulate(&mut s, t0, t0 + 150, 1);
        assert_eq!(runs, vec![t0, t0 + 60, t0 + 120]);
        // no snapshot at all yet: run now
        let mut s = Scheduler::default();
        s.set(every(60), None, t0 * S);
        assert!(s.due(t0 * S, &IDLE).is_some());
    }

    #[test]
    fn long_runs_do_not_pile_up() {
        let mut s = Scheduler::default();
        let t0 = 1_000_000;
        s.set(every(10), None, t0 * S);
        // each run takes 35 s: three periods each; one run follows each
        let runs = simulate(&mut s, t0, t0 + 100, 35);
        assert_eq!(runs, vec![t0, t0 + 35, t0 + 70]);
    }

    #[test]
    fn failures_retry_within_a_minute() {
        let mut s = Scheduler::default();
        let t0 = 1_000_000 * S;
        s.set(every(3600), None, t0);
        assert!(s.due(t0, &IDLE).is_some());
        s.ran(t0, t0 + S, Trigger::Every, Err("repository unreachable".into()));
        assert!(s.due(t0 + 30 * S, &IDLE).is_none());
        assert!(s.due(t0 + 61 * S, &IDLE).is_some());
        assert_eq!(s.status.failures, 1);
        assert!(s.status.last_result.as_deref().unwrap().starts_with("failed"));
        s.ran(t0 + 61 * S, t0 + 62 * S, Trigger::Every, Ok("auto-x".into()));
        assert!(s.due(t0 + (61 + 3599) * S, &IDLE).is_none());
        assert!(s.due(t0 + (61 + 3600) * S, &IDLE).is_some());
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
        for latest in [None, Some(t0 * S), Some(i64::MAX - 5), Some(i64::MIN)] {
            let mut s = Scheduler::default();
            // a stored or sent value beyond the bound is clamped, never wraps
            s.set(every(u64::MAX), latest, t0 * S);
            let runs = simulate(&mut s, t0, t0 + 100, 1);
            assert!(runs.len() <= 1, "{latest:?}: {runs:?}");
            s.ran(t0 * S, (t0 + 1) * S, Trigger::Every, Ok("x".into()));
            assert!(s.due((t0 + 100) * S, &IDLE).is_none());
            s.ran(i64::MAX - 1, i64::MAX, Trigger::Every, Err("x".into()));
            assert!(s.status_at(t0 * S, &IDLE).is_some());
        }
        // change-driven periods too, and changes at the ends of time
        let mut s = Scheduler::default();
        s.set(Some(Schedule { max_age: Some(u64::MAX), settle: Some(u64::MAX - 1), ..Default::default() }), None, 0);
        let r = Risk { bytes: 1, oldest_ms: Some(i64::MAX - 1), last_ms: Some(i64::MAX) };
        assert!(s.due(t0 * S, &r).is_none());
        let r = Risk { bytes: 1, oldest_ms: Some(i64::MIN), last_ms: None };
        assert_eq!(s.due(t0 * S, &r), Some(Trigger::MaxAge));
    }

    #[test]
    fn changing_and_clearing() {
        let mut s = Scheduler::default();
        let t0 = 1_000_000 * S;
        s.set(every(3600), Some(t0), t0);
        assert!(s.due(t0 + 100 * S, &IDLE).is_none());
        // shorter period on a running mount: due relative to the latest snapshot
        s.set(every(60), Some(t0), t0 + 100 * S);
        assert!(s.due(t0 + 100 * S, &IDLE).is_some());
        s.set(None, Some(t0), t0 + 100 * S);
        assert!(s.due(t0 + 100_000 * S, &IDLE).is_none());
        assert!(s.status_at(t0, &IDLE).is_none());
        // a stored schedule with no trigger left (keep alone) is none
        s.set(Some(Schedule::default()), Some(t0), t0);
        assert!(s.schedule().is_none());
        // a settle that cannot apply is dropped, the rest stays
        s.set(Some(Schedule { every: Some(60), settle: Some(5), ..Default::default() }), Some(t0), t0);
        assert_eq!(s.schedule().unwrap().settle, None);
    }

    #[test]
    fn an_idle_hour_takes_no_snapshot() {
        let t0 = 1_000_000 * S;
        for sched in
            [change(None, Some(10), Some(1)), change(Some(1), None, None), change(Some(64 << 20), Some(300), Some(10))]
        {
            let mut s = Scheduler::default();
            s.set(sched.clone(), Some(t0 - 10 * S), t0);
            let seen = Sim { writes: &[], step: 100, took: 500, fails: &never }.run(&mut s, t0, t0 + 3600 * S);
            assert!(seen.runs.is_empty(), "{sched:?}: {seen:?}");
            assert_eq!(s.status_at(t0, &IDLE).unwrap().next_run, None, "nothing due until something changes");
        }
        // the clock is blind: an hour of `every 15m` is four runs, idle or not
        // (the last snapshot is a period old: the first run is now)
        let mut s = Scheduler::default();
        s.set(Some(Schedule { every: Some(900), max_age: Some(10), ..Default::default() }), Some(t0 - 900 * S), t0);
        let seen = Sim { writes: &[], step: S, took: S, fails: &never }.run(&mut s, t0, t0 + 3600 * S);
        assert_eq!(seen.triggers(), vec![Trigger::Every; 4], "{seen:?}");
    }

    #[test]
    fn a_burst_is_taken_once_after_it_settles() {
        let t0 = 1_000_000 * S;
        let mut s = Scheduler::default();
        s.set(change(None, Some(10), Some(1)), Some(t0), t0);
        // 3 s of writes every 100 ms, then an idle hour
        let burst = writes(t0 + 10 * S, t0 + 13 * S, 100);
        let seen = Sim { writes: &burst, step: 50, took: 200, fails: &never }.run(&mut s, t0, t0 + 3600 * S);
        assert_eq!(seen.triggers(), vec![Trigger::Settle], "{seen:?}");
        let last = *burst.last().unwrap();
        assert_eq!(seen.runs[0].0, last + S, "one second after the last write");
        assert!(seen.max_age <= 4 * S, "{seen:?}");
        let st = s.status_at(t0 + 3600 * S, &IDLE).unwrap();
        assert_eq!((st.runs, st.last_trigger.as_deref()), (1, Some("settle")));
    }

    #[test]
    fn snapshots_land_between_bursts() {
        let t0 = 1_000_000 * S;
        let mut s = Scheduler::default();
        s.set(change(None, Some(10), Some(1)), Some(t0), t0);
        // bursts of 2 s, 3 s apart, for a minute
        let mut w = Vec::new();
        for b in 0..12 {
            w.extend(writes(t0 + b * 5 * S, t0 + b * 5 * S + 2 * S, 100));
        }
        let seen = Sim { writes: &w, step: 50, took: 300, fails: &never }.run(&mut s, t0, t0 + 120 * S);
        assert_eq!(seen.runs.len(), 12, "one per burst: {seen:?}");
        for (b, (at, why, _)) in seen.runs.iter().enumerate() {
            let quiet_from = t0 + b as i64 * 5 * S + 2 * S - 100;
            assert_eq!((*at, *why), (quiet_from + S, Trigger::Settle), "burst {b}");
        }
    }

    #[test]
    fn settling_never_waits_beyond_max_age() {
        let t0 = 1_000_000 * S;
        let mut s = Scheduler::default();
        s.set(change(None, Some(10), Some(1)), Some(t0), t0);
        // a writer that never pauses for a second: a change every 200 ms
        let w = writes(t0, t0 + 60 * S, 200);
        let seen = Sim { writes: &w, step: 50, took: 500, fails: &never }.run(&mut s, t0, t0 + 60 * S);
        assert_eq!(seen.triggers(), vec![Trigger::MaxAge; 5], "{seen:?}");
        // no change was unprotected for longer than the bound (and a step)
        assert!(seen.max_age <= 10 * S + 50, "{seen:?}");
        // then it pauses: the rest is taken when it has settled
        let w: Vec<i64> = w.into_iter().chain(writes(t0 + 60 * S, t0 + 62 * S, 200)).collect();
        let mut s = Scheduler::default();
        s.set(change(None, Some(10), Some(1)), Some(t0), t0);
        let seen = Sim { writes: &w, step: 50, took: 500, fails: &never }.run(&mut s, t0, t0 + 100 * S);
        assert_eq!(seen.runs.last().map(|r| (r.0, r.1)), Some((t0 + 62 * S - 200 + S, Trigger::Settle)), "{seen:?}");
    }

    #[test]
    fn max_age_bounds_every_change() {
        let t0 = 1_000_000 * S;
        let mut s = Scheduler::default();
        s.set(change(None, Some(5), None), Some(t0), t0);
        // a change every 300 ms for a minute, then quiet
        let w = writes(t0, t0 + 60 * S, 300);
        let seen = Sim { writes: &w, step: 100, took: 700, fails: &never }.run(&mut s, t0, t0 + 3600 * S);
        assert!(seen.max_age <= 5 * S + 100, "{seen:?}");
        assert!(seen.triggers().iter().all(|t| *t == Trigger::MaxAge));
        // the changes of each run's last ~5 s: 12 runs, and one for the tail
        assert!((12..=13).contains(&seen.runs.len()), "{seen:?}");
        assert!(seen.starts().windows(2).all(|p| p[1] - p[0] >= 5 * S - 300), "{seen:?}");
        assert!(*seen.starts().last().unwrap() < t0 + 66 * S, "nothing after the last change is protected");
        // a single change is taken max_age after it, not before
        let mut s = Scheduler::default();
        s.set(change(None, Some(5), None), Some(t0), t0);
        let one = [t0 + 1234];
        let seen = Sim { writes: &one, step: 1, took: 100, fails: &never }.run(&mut s, t0, t0 + 60 * S);
        assert_eq!(seen.starts(), vec![t0 + 1234 + 5 * S]);
    }

    #[test]
    fn max_dirty_is_a_threshold() {
        let t0 = 1_000_000 * S;
        let mut s = Scheduler::default();
        // 64 KiB: sixteen 4 KiB changes
        s.set(change(Some(64 << 10), None, None), Some(t0), t0);
        let w = writes(t0, t0 + 10 * S, 100);
        let seen = Sim { writes: &w, step: 10, took: 1, fails: &never }.run(&mut s, t0, t0 + 3600 * S);
        assert!(seen.triggers().iter().all(|t| *t == Trigger::MaxDirty));
        // a run each time the sixteenth change since the last one lands:
        // the 100 changes make 6 runs, the 4 left wait (no time bound)
        assert_eq!(seen.starts(), (1..=6).map(|k| t0 + (16 * k - 1) * 100).collect::<Vec<_>>(), "{seen:?}");
        assert!(s.status_at(t0 + 3600 * S, &IDLE).unwrap().worst_case_sec.is_none());
        // just below: nothing, however long
        let mut s = Scheduler::default();
        s.set(change(Some(64 << 10), None, None), Some(t0), t0);
        let w = writes(t0, t0 + 1500, 100);
        let seen = Sim { writes: &w, step: S, took: 1, fails: &never }.run(&mut s, t0, t0 + 3600 * S);
        assert!(seen.runs.is_empty(), "{seen:?}");
        // with max_age too, the rest is taken in time
        let mut s = Scheduler::default();
        s.set(change(Some(64 << 10), Some(30), None), Some(t0), t0);
        let seen = Sim { writes: &w, step: S, took: 1, fails: &never }.run(&mut s, t0, t0 + 3600 * S);
        assert_eq!(seen.runs.iter().map(|r| (r.0, r.1)).collect::<Vec<_>>(), vec![(t0 + 30 * S, Trigger::MaxAge)]);
    }

    #[test]
    fn failures_back_off_and_changes_stay_unprotected() {
        let t0 = 1_000_000 * S;
        let mut s = Scheduler::default();
        s.set(change(None, Some(5), Some(1)), Some(t0), t0);
        // one change; the first six runs fail (repository unreachable)
        let w = [t0 + S];
        let fails = |n: usize| n < 6;
        let seen = Sim { writes: &w, step: 100, took: 100, fails: &fails }.run(&mut s, t0, t0 + 600 * S);
        let starts = seen.starts();
        // settled after 1 s, then retries after 5, 10, 20, 40, 60, 60 s
        // (from the end of each failed run)
        let mut want = vec![t0 + 2 * S];
        for b in [5, 10, 20, 40, 60, 60] {
            want.push(want.last().unwrap() + 100 + b * S);
        }
        assert_eq!(starts, want, "{seen:?}");
        assert_eq!(seen.runs.iter().filter(|r| !r.2).count(), 6);
        assert!(seen.runs.last().unwrap().2);
        assert_eq!(s.status.failures, 6);
        assert_eq!(s.status.last_result.as_deref(), Some("ok: auto-x"));
        // a success ends the backoff: the next change is taken on time
        s.ran(t0, t0, Trigger::Settle, Err("x".into()));
        s.ran(t0, t0, Trigger::Settle, Ok("x".into()));
        let later = t0 + 1000 * S;
        let r = Risk { bytes: 1, oldest_ms: Some(later), last_ms: Some(later) };
        assert_eq!(s.due(later + S, &r), Some(Trigger::Settle));
        // a failed clock run is retried too, as is a change-driven one
        let mut s = Scheduler::default();
        s.set(Some(Schedule { every: Some(20), max_age: Some(600), ..Default::default() }), Some(t0), t0);
        s.ran(t0 + 20 * S, t0 + 21 * S, Trigger::Every, Err("x".into()));
        assert_eq!(s.due(t0 + 40 * S, &IDLE), None, "backoff min(every, max_age) = 20 s from the end");
        assert_eq!(s.due(t0 + 41 * S, &IDLE), Some(Trigger::Every));
    }

    #[test]
    fn settle_counts_from_the_oldest_change_when_nothing_was_written_since() {
        let t0 = 1_000_000 * S;
        let mut s = Scheduler::default();
        s.set(change(None, Some(10), Some(2)), Some(t0), t0);
        // nothing protected yet (e.g. no snapshot at all): at risk since t0
        let r = Risk { bytes: 0, oldest_ms: Some(t0), last_ms: None };
        assert_eq!(s.due(t0 + 2 * S - 1, &r), None);
        assert_eq!(s.due(t0 + 2 * S, &r), Some(Trigger::Settle));
        assert_eq!(s.wake_at(&r), Some(t0 + 2 * S));
        // a last change older than the oldest unprotected one (it was
        // protected) does not count either
        let r = Risk { bytes: 0, oldest_ms: Some(t0), last_ms: Some(t0 - 60 * S) };
        assert_eq!(s.due(t0 + S, &r), None);
    }

    #[test]
    fn the_clock_and_change_triggers_together() {
        let t0 = 1_000_000 * S;
        let mut s = Scheduler::default();
        s.set(Some(Schedule { every: Some(3600), max_age: Some(60), ..Default::default() }), Some(t0), t0);
        let w = [t0 + 100 * S];
        let seen = Sim { writes: &w, step: S, took: S, fails: &never }.run(&mut s, t0, t0 + 2 * 3600 * S);
        // the change is taken at 160 s, which restarts the clock
        assert_eq!(
            seen.runs.iter().map(|r| (r.0, r.1)).collect::<Vec<_>>(),
            vec![(t0 + 160 * S, Trigger::MaxAge), (t0 + 3760 * S, Trigger::Every)]
        );
        let st = s.status_at(t0 + 3760 * S, &IDLE).unwrap();
        assert_eq!((st.every.as_deref(), st.max_age.as_deref(), st.worst_case_sec), (Some("1h"), Some("1m"), Some(60)));
        assert_eq!((st.next_trigger.as_deref(), st.next_run_in_sec), (Some("every"), Some(3600)));
    }

    #[test]
    fn status_says_when_and_why() {
        let t0 = 1_000_000 * S;
        let mut s = Scheduler::default();
        s.set(change(Some(1 << 20), Some(300), Some(10)), Some(t0), t0);
        let st = s.status_at(t0, &IDLE).unwrap();
        assert_eq!(st.policy, "max-dirty 1.0 MiB, max-age 5m, settle 10s");
        assert_eq!((st.next_run, st.worst_case_sec), (None, Some(300)));
        // writing now: settle 10 s after the last write
        let r = Risk { bytes: 4096, oldest_ms: Some(t0), last_ms: Some(t0 + 5 * S) };
        let st = s.status_at(t0 + 6 * S, &r).unwrap();
        assert_eq!((st.next_run_in_sec, st.next_trigger.as_deref()), (Some(9), Some("settle")));
        // over the size: due now
        let r = Risk { bytes: 2 << 20, ..r };
        let st = s.status_at(t0 + 6 * S, &r).unwrap();
        assert_eq!((st.next_run_in_sec, st.next_trigger.as_deref()), (Some(0), Some("max-dirty")));
        assert_eq!(s.due(t0 + 6 * S, &r), Some(Trigger::MaxDirty));
    }
}
