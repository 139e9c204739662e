//! Progress of long commands (snapshot, restore, verify, prune, replica
//! sync): an `indicatif` bar on stderr when it is a terminal, one JSON
//! object a line on stderr when asked (`--progress json`), else nothing.
//!
//! The work reports through counters it already keeps (the daemon's
//! `Request::Progress`, `VerifyProgress`, `RestoreProgress`, the replicas'
//! status); a watcher thread polls them into a [`Tick`] and shows it, so
//! the work itself never draws or waits on the terminal.

use std::io::{IsTerminal, Write};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

/// `--progress`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum When {
    /// A bar when stderr is a terminal (and neither --json nor --quiet).
    #[default]
    Auto,
    /// One JSON object a line on stderr, about once a second, and a last
    /// one with "done": true.
    Json,
    /// No progress.
    None,
}

/// How a long command reports while it runs, and whether it says anything
/// when it is done.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ProgressArgs {
    /// Progress on stderr: auto (a bar on a terminal), json (one JSON
    /// object a line, for scripts), none.
    #[arg(long, value_enum, value_name = "HOW", default_value_t = When::Auto)]
    pub progress: When,
    /// Print nothing but errors and warnings (the exit status tells how it went).
    #[arg(short, long, conflicts_with = "json")]
    pub quiet: bool,
}

/// What is shown while the work runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Show {
    Nothing,
    Bar,
    Json,
}

impl ProgressArgs {
    /// What to show, for a command whose result goes out as JSON (`json`)
    /// or as text. With --quiet or --progress json, info logs are muted
    /// too (stderr then holds the progress lines, warnings and errors).
    pub fn show(&self, json: bool) -> Show {
        if self.quiet || self.progress == When::Json {
            mute_info_logs();
        }
        match self.progress {
            When::Json => Show::Json,
            When::None => Show::Nothing,
            When::Auto if self.quiet || json || !std::io::stderr().is_terminal() => Show::Nothing,
            When::Auto => Show::Bar,
        }
    }
}

/// Keep `info` log lines off stderr (warnings and errors still go).
fn mute_info_logs() {
    if log::max_level() > log::LevelFilter::Warn {
        log::set_max_level(log::LevelFilter::Warn);
    }
}

/// What a long task has done so far. Counts are of `items` (files, packs,
/// snapshots, replicas); a total is `None` while it is not known.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Tick {
    /// What it is doing now (e.g. "reading", "files", "packs", "data").
    pub phase: String,
    pub bytes_done: u64,
    pub bytes_total: Option<u64>,
    pub items_done: u64,
    pub items_total: Option<u64>,
    /// What the items are.
    pub items: &'static str,
}

/// One `--progress json` line.
#[derive(Serialize)]
struct Line<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    task: &'static str,
    #[serde(flatten)]
    tick: &'a Tick,
    elapsed_sec: f64,
    done: bool,
}

/// What the last progress line says, once the work is over.
pub enum Final {
    /// These numbers (from the result).
    Tick(Tick),
    /// The work succeeded: the last numbers polled, each count at its total.
    Completed,
    /// The last numbers polled, as they were (it failed).
    AsSeen,
}

impl Final {
    /// The last line's numbers, given the last ones polled.
    fn tick(self, seen: Option<Tick>) -> Tick {
        let seen = || seen.unwrap_or_else(|| Tick { phase: "starting".into(), ..Default::default() });
        match self {
            Final::Tick(t) => t,
            Final::AsSeen => seen(),
            Final::Completed => {
                let t = seen();
                Tick {
                    bytes_done: t.bytes_total.unwrap_or(t.bytes_done),
                    items_done: t.items_total.unwrap_or(t.items_done),
                    ..t
                }
            }
        }
    }

    /// `Completed` for a daemon's reply that says it is done, else `AsSeen`.
    pub fn of_reply<E>(r: &Result<snapfs::control::Reply, E>) -> Final {
        match r {
            Ok(r) if r.ok => Final::Completed,
            _ => Final::AsSeen,
        }
    }
}

/// Run `work` while its progress, as `poll` reads it, is shown as `show`
/// says; `last` tells what the final line holds. Returns what `work`
/// returned.
pub fn run<T>(
    show: Show,
    task: &'static str,
    poll: impl FnMut() -> Option<Tick> + Send,
    work: impl FnOnce() -> T,
    last: impl FnOnce(&T) -> Final,
) -> T {
    if show == Show::Nothing {
        return work();
    }
    let t0 = Instant::now();
    // info lines written under a bar would tear it (and are not JSON lines)
    let log_level = log::max_level();
    mute_info_logs();
    let r = std::thread::scope(|s| {
        let (stop, stopped) = mpsc::channel::<()>();
        let watcher = s.spawn(move || watch(show, task, t0, poll, stopped));
        let r = work();
        drop(stop);
        let (mut display, seen) = watcher.join().unwrap_or_else(|_| (Display::new(show, task, t0), None));
        display.finish(&last(&r).tick(seen));
        r
    });
    log::set_max_level(log_level);
    r
}

/// Poll and show until `stopped` says the work is over; the display and
/// the last tick seen.
fn watch(
    show: Show,
    task: &'static str,
    t0: Instant,
    mut poll: impl FnMut() -> Option<Tick>,
    stopped: mpsc::Receiver<()>,
) -> (Display, Option<Tick>) {
    let mut display = Display::new(show, task, t0);
    // a bar is not worth a flash for work done at once; a JSON line comes
    // each second
    let (first, every) = match show {
        Show::Json => (Duration::from_secs(1), Duration::from_secs(1)),
        _ => (Duration::from_millis(400), Duration::from_millis(200)),
    };
    // (tests show it at once: SNAPFS_PROGRESS_AFTER_MS=0)
    let first = std::env::var("SNAPFS_PROGRESS_AFTER_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(first, Duration::from_millis);
    let mut seen = None;
    let mut wait = first;
    while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(wait) {
        wait = every;
        if let Some(t) = poll() {
            display.update(&t);
            seen = Some(t);
        }
    }
    (display, seen)
}

struct Display {
    show: Show,
    task: &'static str,
    t0: Instant,
    bar: Option<ProgressBar>,
    /// The phase and shape of the bar's style now.
    style: Option<(String, Shape)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// A bar of bytes (their total known).
    Bytes,
    /// A bar of items.
    Items,
    /// A spinner with bytes and their rate.
    FlowingBytes,
    /// A spinner with counts.
    Counts,
}

impl Shape {
    fn of(t: &Tick) -> Shape {
        match (t.bytes_total, t.items_total) {
            (Some(total), _) if total > 0 => Shape::Bytes,
            (_, Some(total)) if total > 0 => Shape::Items,
            _ if t.bytes_done > 0 => Shape::FlowingBytes,
            _ => Shape::Counts,
        }
    }

    fn style(self) -> ProgressStyle {
        let template = match self {
            // (the bar takes the width the rest leaves: one line, never wrapped)
            Shape::Bytes => {
                "{prefix} {binary_bytes}/{binary_total_bytes}, {binary_bytes_per_sec}, ETA {eta}, {msg} [{wide_bar}]"
            }
            Shape::Items => "{prefix} {pos}/{len} {msg}, ETA {eta} [{wide_bar}]",
            Shape::FlowingBytes => "{spinner} {prefix}: {binary_bytes} ({binary_bytes_per_sec}) {msg}, {elapsed}",
            Shape::Counts => "{spinner} {prefix}: {msg}, {elapsed}",
        };
        ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ")
            .tick_chars("|/-\\ ")
    }
}

impl Display {
    fn new(show: Show, task: &'static str, t0: Instant) -> Display {
        Display { show, task, t0, bar: None, style: None }
    }

    fn update(&mut self, t: &Tick) {
        match self.show {
            Show::Nothing => {}
            Show::Json => self.json_line(t, false),
            Show::Bar => self.draw(t),
        }
    }

    fn json_line(&self, t: &Tick, done: bool) {
        let line = Line { kind: "progress", task: self.task, tick: t, elapsed_sec: self.elapsed(), done };
        if let Ok(s) = serde_json::to_string(&line) {
            let _ = writeln!(std::io::stderr().lock(), "{s}");
        }
    }

    fn elapsed(&self) -> f64 {
        (self.t0.elapsed().as_secs_f64() * 1000.0).round() / 1000.0
    }

    fn draw(&mut self, t: &Tick) {
        let shape = Shape::of(t);
        let counted = match (t.items_total, t.items) {
            (_, "") => String::new(),
            (Some(n), what) => format!("{}/{n} {what}", t.items_done),
            (None, what) => format!("{} {what}", t.items_done),
        };
        let (len, pos, msg) = match shape {
            Shape::Bytes => (t.bytes_total, t.bytes_done, counted),
            Shape::Items => {
                let bytes = match t.bytes_done {
                    0 => String::new(),
                    n => format!(", {}", snapfs::util::human_bytes(n)),
                };
                (t.items_total, t.items_done, format!("{}{bytes}", t.items))
            }
            Shape::FlowingBytes => (None, t.bytes_done, counted),
            Shape::Counts => (None, 0, counted),
        };
        if self.style.as_ref() != Some(&(t.phase.clone(), shape)) {
            // a new phase, a new bar: made whole before it is drawn, its
            // rate and ETA counted from what the phase has done so far
            if let Some(old) = self.bar.take() {
                old.finish_and_clear();
            }
            let bar = ProgressBar::hidden().with_style(shape.style()).with_prefix(format!("{} {}", self.task, t.phase));
            if let Some(len) = len {
                bar.set_length(len);
            }
            bar.set_position(pos);
            bar.set_message(msg.clone());
            bar.reset_eta();
            bar.set_draw_target(ProgressDrawTarget::stderr());
            bar.enable_steady_tick(Duration::from_millis(200));
            self.bar = Some(bar);
            self.style = Some((t.phase.clone(), shape));
        }
        let Some(bar) = &self.bar else { return };
        if let Some(len) = len {
            bar.set_length(len);
        }
        bar.set_position(pos);
        bar.set_message(msg);
    }

    /// The work is over: a last JSON line, or the bar cleared (the
    /// command's own report follows).
    fn finish(&mut self, t: &Tick) {
        match self.show {
            Show::Nothing => {}
            Show::Json => self.json_line(t, true),
            Show::Bar => {
                if let Some(bar) = self.bar.take() {
                    bar.finish_and_clear();
                }
            }
        }
    }
}

impl Tick {
    /// A snapshot being taken, as its daemon tells (no total: what a first
    /// snapshot reads is known once it has read it).
    pub fn of_snapshot(p: &snapfs::snapshot::SnapshotStats) -> Tick {
        Tick {
            phase: "reading".into(),
            bytes_done: p.read_bytes,
            items_done: p.files_read,
            items: "files",
            ..Default::default()
        }
    }

    /// A verify, prune or verify --live (`VerifyProgress`), by its phase.
    pub fn of_task(v: &snapfs::ops::verify::ProgressView) -> Tick {
        let phase = v.phase.clone();
        let (packs, snapshots) = ((v.packs_done, Some(v.packs_total)), (v.snapshots_done, Some(v.snapshots_total)));
        let bytes = (v.bytes_done, Some(v.bytes_total));
        let ((bytes_done, bytes_total), ((items_done, items_total), items)) = match v.phase.as_str() {
            "packs" => ((0, None), (packs, "packs")),
            "data" | "copying" => (bytes, (packs, "packs")),
            "snapshots" => ((0, None), (snapshots, "snapshots")),
            "live" => (bytes, ((0, None), "")),
            _ => ((0, None), ((0, None), "")),
        };
        Tick { phase, bytes_done, bytes_total, items_done, items_total, items }
    }

    /// A restore (`RestoreProgress`): the directories made, then the
    /// files written or found right, then their metadata and the links.
    pub fn of_restore(p: &snapfs::ops::restore::RestoreProgress) -> Tick {
        let v = p.view();
        match v.phase {
            "directories" => {
                Tick { phase: v.phase.into(), items_done: v.dirs, items: "directories", ..Default::default() }
            }
            phase => Tick {
                phase: phase.into(),
                bytes_done: v.bytes_done,
                bytes_total: Some(v.bytes_total),
                items_done: v.files_done,
                items_total: Some(v.files_total),
                items: "files",
            },
        }
    }

    /// A `replica sync`: the replicas take their rounds one after another,
    /// in the order listed; the bytes are those of the one copying now.
    pub fn of_replicas(list: &[snapfs::ops::replica::ReplicaStatus]) -> Tick {
        let now = list.iter().position(|s| s.syncing.is_some());
        let (bytes_done, bytes_total) = now.and_then(|i| list[i].syncing).unwrap_or((0, 0));
        Tick {
            phase: "copying".into(),
            bytes_done,
            bytes_total: Some(bytes_total),
            items_done: now.unwrap_or(0) as u64,
            items_total: Some(list.len() as u64),
            items: "replicas",
        }
    }

    /// A finished `replica sync`: every replica had its round (the bytes
    /// those rounds copied).
    pub fn of_synced(list: &[snapfs::ops::replica::ReplicaStatus]) -> Tick {
        let copied = list.iter().filter_map(|s| s.last_sync.as_ref()).map(|r| r.bytes_copied).sum();
        Tick {
            phase: "copying".into(),
            bytes_done: copied,
            bytes_total: Some(copied),
            items_done: list.len() as u64,
            items_total: Some(list.len() as u64),
            items: "replicas",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use snapfs::ops::verify::ProgressView;

    fn view(phase: &str) -> ProgressView {
        ProgressView {
            phase: phase.into(),
            packs_total: 10,
            packs_done: 4,
            bytes_total: 1000,
            bytes_done: 400,
            snapshots_total: 3,
            snapshots_done: 1,
        }
    }

    #[test]
    fn each_phase_of_a_verify_or_prune_counts_what_it_does() {
        let t = Tick::of_task(&view("data"));
        assert_eq!((t.bytes_done, t.bytes_total, t.items_done, t.items_total), (400, Some(1000), 4, Some(10)));
        assert_eq!((t.items, Shape::of(&t)), ("packs", Shape::Bytes));
        let t = Tick::of_task(&view("packs"));
        assert_eq!((t.bytes_total, t.items_done, t.items_total, Shape::of(&t)), (None, 4, Some(10), Shape::Items));
        let t = Tick::of_task(&view("snapshots"));
        assert_eq!((t.items, t.items_done, t.items_total), ("snapshots", 1, Some(3)));
        let t = Tick::of_task(&view("deleting"));
        assert_eq!((t.bytes_total, t.items_total, Shape::of(&t)), (None, None, Shape::Counts));
    }

    #[test]
    fn a_snapshot_has_no_total_and_spins_with_its_rate() {
        let st = snapfs::snapshot::SnapshotStats { files_read: 7, read_bytes: 5 << 20, ..Default::default() };
        let t = Tick::of_snapshot(&st);
        assert_eq!((t.bytes_done, t.bytes_total, t.items_done, t.items), (5 << 20, None, 7, "files"));
        assert_eq!(Shape::of(&t), Shape::FlowingBytes);
        assert_eq!(Shape::of(&Tick { bytes_done: 0, ..t }), Shape::Counts);
    }

    #[test]
    fn the_last_line_is_the_result_or_the_last_seen_completed_or_not() {
        let seen = Tick {
            phase: "copying".into(),
            bytes_done: 10,
            bytes_total: Some(50),
            items_done: 0,
            items_total: Some(2),
            items: "replicas",
        };
        let done = Final::Completed.tick(Some(seen.clone()));
        assert_eq!((done.bytes_done, done.items_done, done.phase.as_str()), (50, 2, "copying"));
        assert_eq!(Final::AsSeen.tick(Some(seen.clone())), seen);
        let given = Tick { phase: "reading".into(), ..Default::default() };
        assert_eq!(Final::Tick(given.clone()).tick(Some(seen)), given);
        // nothing polled before it ended: the totals stay unknown
        let none = Final::Completed.tick(None);
        assert_eq!((none.phase.as_str(), none.bytes_total, none.items_total), ("starting", None, None));
    }

    #[test]
    fn a_json_line_holds_every_field_even_unknown_totals() {
        let t = Tick { phase: "reading".into(), bytes_done: 3, items_done: 1, items: "files", ..Default::default() };
        let line = Line { kind: "progress", task: "snapshot", tick: &t, elapsed_sec: 1.5, done: false };
        let v: serde_json::Value = serde_json::to_value(&line).unwrap();
        let want = serde_json::json!({
            "type": "progress", "task": "snapshot", "phase": "reading", "bytes_done": 3, "bytes_total": null,
            "items_done": 1, "items_total": null, "items": "files", "elapsed_sec": 1.5, "done": false
        });
        assert_eq!(v, want);
    }

    #[test]
    fn quiet_and_json_output_turn_the_bar_off_but_not_json_lines() {
        let args = |progress, quiet| ProgressArgs { progress, quiet };
        assert_eq!(args(When::Auto, false).show(true), Show::Nothing);
        assert_eq!(args(When::None, false).show(false), Show::Nothing);
        assert_eq!(args(When::Json, false).show(true), Show::Json);
        assert_eq!(args(When::Json, true).show(false), Show::Json);
        assert_eq!(args(When::Auto, true).show(false), Show::Nothing);
    }
}
