//! Prometheus metrics (`snapfs status --prometheus DIR` for the textfile
//! collector, `snapfs mount --metrics ADDR` for a scrape endpoint): what
//! `status` knows, in the text exposition format 0.0.4. Every series has
//! the label `mountpoint`; none holds a file name or the repository's
//! location. The names follow Prometheus conventions (base units, `_total`
//! for counters, `_timestamp_seconds` for times); doc/DESIGN.md lists them
//! and `dist/prometheus/snapfs-alerts.yml` alerts on them.

use std::fmt::Write as _;

use crate::control::StatusReport;
use crate::fuse::opstats::OpsReport;

/// The upper bounds (seconds) of the exported latency histogram: powers of
/// four from about a microsecond, each the bound of one of the counters'
/// own buckets, so the cumulative counts are exact.
const LE_NS: [u64; 12] =
    [1 << 10, 1 << 12, 1 << 14, 1 << 16, 1 << 18, 1 << 20, 1 << 22, 1 << 24, 1 << 26, 1 << 28, 1 << 30, 1 << 32];

/// A label value, escaped as the format wants.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

struct Out {
    text: String,
    base: String,
}

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, extra: &str, v: f64) {
        let labels = if extra.is_empty() { self.base.clone() } else { format!("{},{extra}", self.base) };
        let _ = writeln!(self.text, "{name}{{{labels}}} {}", number(v));
    }

    fn one(&mut self, name: &str, kind: &str, help: &str, v: f64) {
        self.family(name, kind, help);
        self.sample(name, "", v);
    }
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

fn ts(rfc: Option<&str>) -> Option<f64> {
    rfc.and_then(crate::util::parse_rfc3339).map(|s| s as f64)
}

/// The metrics of a mount (or of an unmounted directory's repository).
pub fn render(s: &StatusReport) -> String {
    let mut o = Out { text: String::new(), base: format!("mountpoint=\"{}\"", label(&s.mountpoint)) };
    o.one("snapfs_mounted", "gauge", "1 if the directory is mounted and its daemon answers.", s.mounted as u8 as f64);
    let d = &s.dirty;
    o.one("snapfs_dirty_files", "gauge", "Files changed since the last snapshot.", d.files as f64);
    o.one("snapfs_dirty_bytes", "gauge", "Bytes of file data changed since the last snapshot.", d.bytes as f64);
    if let Some(age) = d.oldest_change_age_sec {
        o.one(
            "snapfs_oldest_unprotected_change_age_seconds",
            "gauge",
            "Age of the oldest change no snapshot holds yet.",
            age as f64,
        );
    }
    if let Some(h) = &s.health {
        o.one("snapfs_snapshots", "gauge", "Snapshots in the repository.", h.snapshots as f64);
        if let Some(t) = ts(h.last_snapshot_time.as_deref()) {
            o.one("snapfs_last_snapshot_timestamp_seconds", "gauge", "When the latest snapshot was taken.", t);
        }
        if let Some(a) = h.last_snapshot_age_sec {
            o.one("snapfs_last_snapshot_age_seconds", "gauge", "Age of the latest snapshot.", a as f64);
        }
        if let Some(ms) = h.last_snapshot_duration_ms {
            o.one(
                "snapfs_last_snapshot_duration_seconds",
                "gauge",
                "How long the latest snapshot took.",
                ms as f64 / 1000.0,
            );
        }
        if let Some(b) = h.last_snapshot_added_bytes {
            o.one(
                "snapfs_last_snapshot_added_bytes",
                "gauge",
                "Bytes the latest snapshot added to the repository.",
                b as f64,
            );
        }
        o.one(
            "snapfs_snapshots_failing",
            "gauge",
            "1 while snapshots fail (cleared by one that succeeds).",
            h.failing.is_some() as u8 as f64,
        );
        o.one("snapfs_repository_size_bytes", "gauge", "Bytes in the repository's packs.", h.repository_bytes as f64);
        o.one("snapfs_repository_packs", "gauge", "Packs in the repository.", h.packs as f64);
        o.one(
            "snapfs_repository_logical_bytes",
            "gauge",
            "Size of the files of all snapshots together.",
            h.logical_bytes_all as f64,
        );
        o.one(
            "snapfs_repository_dedup_ratio",
            "gauge",
            "Logical bytes of all snapshots over bytes stored.",
            h.dedup_ratio,
        );
        if let Some(v) = &h.last_verify {
            o.one("snapfs_last_verify_timestamp_seconds", "gauge", "When verify last ran.", v.time_sec as f64);
            o.one("snapfs_last_verify_success", "gauge", "1 if the last verify found no damage.", v.ok as u8 as f64);
            o.one("snapfs_last_verify_damage", "gauge", "Damaged things the last verify found.", v.damage as f64);
            o.one(
                "snapfs_last_verify_read_data",
                "gauge",
                "1 if the last verify read the data (--read-data).",
                v.read_data as u8 as f64,
            );
        }
        o.one("snapfs_repairs_total", "counter", "Objects healed from other copies.", h.repairs as f64);
        o.one(
            "snapfs_recent_errors",
            "gauge",
            "Errors in the daemon's recent error log (the last 20 at most).",
            h.errors.len() as f64,
        );
        o.one(
            "snapfs_state_save_failing",
            "gauge",
            "1 while the tracking state cannot be saved (the repository's device is full or gone).",
            h.state_failing.is_some() as u8 as f64,
        );
        if let Some(sc) = &h.schedule {
            o.one("snapfs_scheduled_snapshots_total", "counter", "Scheduled snapshot runs.", sc.runs as f64);
            o.one(
                "snapfs_scheduled_snapshot_failures_total",
                "counter",
                "Scheduled snapshot runs that failed.",
                sc.failures as f64,
            );
            if let Some(w) = sc.worst_case_sec {
                o.one(
                    "snapfs_schedule_worst_case_seconds",
                    "gauge",
                    "The longest a change stays unprotected under the schedule (besides a snapshot's time).",
                    w as f64,
                );
            }
        }
    }
    if !s.replicas.is_empty() {
        type Get = fn(&crate::ops::replica::ReplicaStatus) -> Option<f64>;
        let gauges: [(&str, &str, Get); 4] = [
            ("snapfs_replica_snapshots_behind", "Snapshots the replica lacks.", |r| {
                Some(r.lag.snapshots_behind as f64)
            }),
            ("snapfs_replica_bytes_behind", "Bytes of packs the replica lacks.", |r| Some(r.lag.bytes_behind as f64)),
            ("snapfs_replica_last_success_timestamp_seconds", "When the replica was last brought up to date.", |r| {
                r.last_success_sec.map(|t| t as f64)
            }),
            (
                "snapfs_replica_oldest_change_not_copied_age_seconds",
                "Age of the oldest change not yet on the replica.",
                |r| r.oldest_change_not_copied_age_sec.map(|t| t as f64),
            ),
        ];
        for (name, help, get) in gauges {
            o.family(name, "gauge", help);
            for r in &s.replicas {
                if let Some(v) = get(r) {
                    o.sample(name, &format!("replica=\"{}\"", label(&redact(&r.url))), v);
                }
            }
        }
    }
    if let Some(ops) = &s.ops {
        fuse_ops(&mut o, ops);
    }
    o.text
}

/// A replica's URL without anything secret in it (user information).
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let (auth, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match auth.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://{host}{path}"),
        None => url.to_string(),
    }
}

fn fuse_ops(o: &mut Out, ops: &OpsReport) {
    o.family("snapfs_fuse_requests_total", "counter", "FUSE requests answered, by opcode.");
    for l in &ops.ops {
        o.sample("snapfs_fuse_requests_total", &format!("op=\"{}\"", label(&l.op)), l.count as f64);
    }
    let name = "snapfs_fuse_request_duration_seconds";
    o.family(name, "histogram", "The daemon's time answering FUSE requests, by opcode.");
    for l in &ops.ops {
        let op = label(&l.op);
        for le in LE_NS {
            let n: u64 = l.hist.iter().filter(|h| h.0 <= le).map(|h| h.1).sum();
            o.sample(&format!("{name}_bucket"), &format!("op=\"{op}\",le=\"{}\"", number(le as f64 / 1e9)), n as f64);
        }
        o.sample(&format!("{name}_bucket"), &format!("op=\"{op}\",le=\"+Inf\""), l.count as f64);
        o.sample(&format!("{name}_sum"), &format!("op=\"{op}\""), l.total_ns as f64 / 1e9);
        o.sample(&format!("{name}_count"), &format!("op=\"{op}\""), l.count as f64);
    }
}

/// What `snapfs status --check` says (Nagios plugin conventions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Check {
    Ok = 0,
    Warning = 1,
    Critical = 2,
}

/// The state of a protected directory for a monitoring check, and why:
/// critical when changes are not tracked (not mounted), snapshots or the
/// tracking state fail, the last verify found damage or nothing is backed
/// up; a warning when the last snapshot is older than twice the schedule's
/// bound (a day without a schedule), no verify ran in 8 days, a replica
/// lags by more than an hour or failed, or status carries a warning (the
/// only repository on the data's own device).
pub fn check(s: &StatusReport) -> (Check, Vec<String>) {
    let mut out: Vec<(Check, String)> = Vec::new();
    let now = crate::util::unix_now();
    if !s.mounted {
        out.push((Check::Critical, "not mounted: changes are not tracked".into()));
    }
    if let Some(h) = &s.health {
        if let Some(f) = &h.failing {
            out.push((Check::Critical, format!("snapshots failing: {f}")));
        }
        if let Some(f) = &h.state_failing {
            out.push((Check::Critical, format!("tracking state not saved since {}: {}", f.since, f.error)));
        }
        match &h.last_verify {
            Some(v) if !v.ok => out.push((Check::Critical, format!("last verify found {} damaged", v.damage))),
            Some(v) if now - v.time_sec > 8 * 86_400 => {
                out.push((Check::Warning, format!("last verify {} ago", crate::util::age_text(now - v.time_sec))))
            }
            Some(_) => {}
            None => out.push((Check::Warning, "never verified".into())),
        }
        let bound = h.schedule.as_ref().and_then(|sc| sc.worst_case_sec).map_or(86_400, |w| 2 * w as i64);
        match h.last_snapshot_age_sec {
            None => out.push((Check::Critical, "no snapshot".into())),
            Some(a) if a > bound => {
                out.push((Check::Warning, format!("last snapshot {} ago", crate::util::age_text(a))))
            }
            Some(_) => {}
        }
    }
    for r in &s.replicas {
        if let Some(e) = &r.last_error {
            out.push((Check::Warning, format!("replica {}: {e}", redact(&r.url))));
        } else if r.oldest_change_not_copied_age_sec.is_some_and(|a| a > 3600) {
            out.push((Check::Warning, format!("replica {} lacks changes older than an hour", redact(&r.url))));
        }
    }
    for w in &s.warnings {
        out.push((Check::Warning, w.clone()));
    }
    let worst = out.iter().map(|o| o.0).max().unwrap_or(Check::Ok);
    out.sort_by_key(|o| std::cmp::Reverse(o.0));
    (worst, out.into_iter().map(|o| o.1).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuse::opstats::OpLine;

    #[test]
    fn a_status_renders_as_valid_exposition_lines() {
        let mut s = StatusReport { mounted: true, mountpoint: "/data/a \"b\"".into(), ..Default::default() };
        s.dirty.files = 3;
        s.dirty.bytes = 4096;
        s.ops = Some(OpsReport {
            since: String::new(),
            ops: vec![OpLine::new("lookup", 3, 30_000, vec![(1280, 1), (20_480, 2)])],
        });
        let t = render(&s);
        assert!(t.contains("snapfs_dirty_files{mountpoint=\"/data/a \\\"b\\\"\"} 3\n"), "{t}");
        assert!(t.contains("snapfs_fuse_requests_total{mountpoint=\"/data/a \\\"b\\\"\",op=\"lookup\"} 3\n"), "{t}");
        // cumulative buckets: one request under 4.096 us, all three under 32.768 us
        assert!(t.contains(",op=\"lookup\",le=\"0.000001024\"} 0\n"), "{t}");
        assert!(t.contains(",op=\"lookup\",le=\"0.000004096\"} 1\n"), "{t}");
        assert!(t.contains(",op=\"lookup\",le=\"0.000065536\"} 3\n"), "{t}");
        assert!(t.contains(",op=\"lookup\",le=\"+Inf\"} 3\n"), "{t}");
        assert!(t.contains(
            "snapfs_fuse_request_duration_seconds_sum{mountpoint=\"/data/a \\\"b\\\"\",op=\"lookup\"} 0.00003\n"
        ));
        // every sample belongs to a family declared before it
        let mut declared = std::collections::HashSet::new();
        for line in t.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                declared.insert(rest.split(' ').next().unwrap().to_string());
            } else if !line.starts_with('#') {
                let name = line.split('{').next().unwrap();
                let fam = ["_bucket", "_sum", "_count"].iter().find_map(|x| name.strip_suffix(x)).unwrap_or(name);
                assert!(declared.contains(fam) || declared.contains(name), "{line}");
            }
        }
    }

    #[test]
    fn a_check_is_as_bad_as_its_worst_finding() {
        use crate::ops::health::{HealthReport, VerifySummary};
        let now = crate::util::unix_now();
        let good = || StatusReport {
            mounted: true,
            health: Some(HealthReport {
                last_snapshot_age_sec: Some(60),
                last_verify: Some(VerifySummary { ok: true, time_sec: now - 3600, ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(check(&good()), (Check::Ok, vec![]));
        let mut s = good();
        s.health.as_mut().unwrap().last_snapshot_age_sec = Some(3 * 86_400);
        let (c, why) = check(&s);
        assert_eq!(c, Check::Warning);
        assert_eq!(why, ["last snapshot 3 days ago"]);
        s.mounted = false;
        s.health.as_mut().unwrap().last_verify.as_mut().unwrap().ok = false;
        s.health.as_mut().unwrap().last_verify.as_mut().unwrap().damage = 2;
        let (c, why) = check(&s);
        assert_eq!(c, Check::Critical);
        assert_eq!(why.len(), 3, "{why:?}");
        assert!(why[0].starts_with("not mounted") || why[0].starts_with("last verify found"), "{why:?}");
        assert_eq!(why[2], "last snapshot 3 days ago", "warnings after the critical findings");
        let mut s = good();
        s.health.as_mut().unwrap().last_verify = None;
        s.health.as_mut().unwrap().last_snapshot_age_sec = None;
        let (c, why) = check(&s);
        assert_eq!((c, why.len()), (Check::Critical, 2), "{why:?}");
    }

    #[test]
    fn replica_urls_lose_their_user_information() {
        assert_eq!(redact("s3:https://key:secret@host:9000/b"), "s3:https://host:9000/b");
        assert_eq!(redact("s3:http://127.0.0.1:3900/bucket/p"), "s3:http://127.0.0.1:3900/bucket/p");
        assert_eq!(redact("/backup/repo"), "/backup/repo");
    }
}
