//! The `snapfs` command line.

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "snapfs", version, about = "Protect a directory in place; incremental block-level snapshots")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    #[command(flatten)]
    keys: cli::keys::KeyArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a repository.
    Init {
        /// Block size, fixed for the repository's life (e.g. 64K, 1M).
        #[arg(long, default_value = "64K")]
        block_size: String,
        /// `none` for a repository that is not encrypted (by default it is,
        /// with a passphrase or a key file: see --password-file, --key-file).
        #[arg(long, value_name = "none", value_parser = ["none", "default"], default_value = "default")]
        encryption: String,
        /// Argon2id memory cost of the passphrase slot, in MiB (default 64).
        #[arg(long, value_name = "MIB")]
        kdf_memory: Option<u32>,
        /// Argon2id passes (default 3).
        #[arg(long, value_name = "N")]
        kdf_iterations: Option<u32>,
        /// Copy every snapshot of the repository OLD into the new one (each
        /// object re-read and sealed with the new keys): how a plain
        /// repository's history moves to an encrypted one.
        #[arg(long, value_name = "OLD")]
        copy_from: Option<String>,
        /// OLD's passphrase, if it is encrypted (else: a prompt).
        #[arg(long, value_name = "FILE", requires = "copy_from")]
        from_password_file: Option<PathBuf>,
        /// OLD's key file, if it is encrypted.
        #[arg(long, value_name = "FILE", requires = "copy_from", conflicts_with = "from_password_file")]
        from_key_file: Option<PathBuf>,
        /// Print the result as JSON (doc/USAGE.md, "JSON output").
        #[arg(long)]
        json: bool,
        repo: String,
    },
    /// An encrypted repository's key slots: list, add (--write-only for
    /// hosts that may write but not read), remove, passwd.
    Key {
        #[command(subcommand)]
        what: KeyCmd,
    },
    /// Protect DIR: mount snapfs over it (in place) or show --backing RAW at DIR.
    Mount {
        /// Show this directory at DIR instead of protecting DIR in place.
        #[arg(long, value_name = "RAW")]
        backing: Option<PathBuf>,
        /// Repository to use: a path, or s3:https://HOST[:PORT]/BUCKET[/PREFIX]
        /// (default: DIR/.snapfs inside the backing directory).
        #[arg(long)]
        repo: Option<String>,
        /// Where the local state of a repository elsewhere goes (default: the
        /// backing directory's hidden .snapfs/cache).
        #[arg(long, value_name = "DIR")]
        cache: Option<PathBuf>,
        /// Keep a copy of the repository there too (a path or an s3: URL),
        /// brought up to date after each snapshot; repeatable, remembered.
        #[arg(long = "replica", value_name = "URL")]
        replicas: Vec<String>,
        /// The host name snapshots are recorded under (default: this
        /// machine's); with the directory, it tells one host's snapshots from
        /// another's in a repository they share.
        #[arg(long, value_name = "NAME", value_parser = snapfs::snapshot::parse_host)]
        host: Option<String>,
        /// Stay in the foreground, logging to stderr (for systemd: with
        /// `Type=notify`, READY=1 goes to $NOTIFY_SOCKET once mounted).
        #[arg(long)]
        foreground: bool,
        /// FUSE worker threads.
        #[arg(long, default_value_t = 4)]
        threads: usize,
        /// Do not use the kernel's writeback cache (every write goes to the
        /// daemon at once; slower small writes).
        #[arg(long)]
        no_writeback: bool,
        /// Milliseconds between durable points of the tracking state.
        #[arg(long, default_value_t = 1000)]
        flush_ms: u64,
        /// Serve Prometheus metrics at http://ADDR/metrics (e.g.
        /// 127.0.0.1:9708). Every local user can read them: counts and
        /// times, the mount point, no file names.
        #[arg(long, value_name = "ADDR")]
        metrics: Option<std::net::SocketAddr>,
        #[command(flatten)]
        triggers: Triggers,
        #[arg(long, hide = true)]
        ready_fd: Option<i32>,
        dir: PathBuf,
    },
    /// Show or change the automatic snapshots of a mounted directory. The
    /// triggers given (--every, --max-dirty, --max-age, --settle) replace
    /// the schedule's; --keep alone changes only the retention.
    Schedule {
        #[command(flatten)]
        triggers: Triggers,
        /// No more automatic snapshots.
        #[arg(long, conflicts_with_all = ["every", "max_dirty", "max_age", "settle", "keep"])]
        off: bool,
        /// Print the result as JSON (doc/USAGE.md, "JSON output").
        #[arg(long)]
        json: bool,
        dir: PathBuf,
    },
    /// Unmount a protected directory, leaving the tracking state durable.
    Umount {
        /// Detach even if files are still open.
        #[arg(long)]
        lazy: bool,
        dir: PathBuf,
    },
    /// Snapshot a mounted directory (the first is full, later ones incremental).
    Snapshot {
        /// Name (default: the time, e.g. 2026-11-24T10.15.00Z).
        #[arg(long)]
        name: Option<String>,
        /// Re-read and re-hash every file instead of trusting the tracker.
        #[arg(long)]
        full: bool,
        /// Print the result as JSON (doc/USAGE.md, "JSON output").
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        out: cli::progress::ProgressArgs,
        dir: PathBuf,
    },
    /// List the snapshots of a directory or a repository.
    List {
        #[arg(long)]
        repo: Option<String>,
        /// Only the snapshots of this host (repeatable).
        #[arg(long = "host", value_name = "NAME")]
        hosts: Vec<String>,
        /// Print the result as JSON (doc/USAGE.md, "JSON output").
        #[arg(long)]
        json: bool,
        dir: Option<PathBuf>,
    },
    /// What changed between two snapshots (names or ids).
    Diff {
        #[arg(long)]
        repo: Option<String>,
        /// Print the result as JSON (doc/USAGE.md, "JSON output").
        #[arg(long)]
        json: bool,
        /// DIR A B, or with --repo just A B.
        #[arg(num_args = 2..=3)]
        args: Vec<String>,
    },
    /// Mount a repository's snapshots read-only (no live daemon needed).
    Browse {
        #[arg(long)]
        repo: String,
        /// Show just this snapshot at MNT.
        #[arg(long)]
        snapshot: Option<String>,
        /// A copy of this repository (a replica) that reads hitting damage
        /// heal from, beside the replicas kept with it; repeatable.
        #[arg(long, value_name = "REPO")]
        heal_from: Vec<String>,
        #[arg(long)]
        foreground: bool,
        #[arg(long, hide = true)]
        ready_fd: Option<i32>,
        mnt: PathBuf,
    },
    /// Restore a snapshot (or SNAPSHOT:PATH) into TARGET with parallel workers.
    Restore {
        #[arg(long)]
        repo: Option<String>,
        /// Workers (default: the number of cores).
        #[arg(short = 'j', long)]
        jobs: Option<usize>,
        /// Restore into a non-empty TARGET, rewriting only what differs.
        #[arg(long)]
        overwrite: bool,
        /// A copy of this repository (a replica) that reads hitting damage
        /// heal from, beside the replicas kept with it; repeatable.
        #[arg(long, value_name = "REPO")]
        heal_from: Vec<String>,
        /// Print the result as JSON (doc/USAGE.md, "JSON output").
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        out: cli::progress::ProgressArgs,
        /// [DIR] SNAPSHOT[:PATH] TARGET (DIR when not --repo)
        #[arg(num_args = 2..=3)]
        args: Vec<String>,
    },
    /// Revert a mounted directory (or PATH in it) to a snapshot, in place,
    /// after taking a safety snapshot; only what differs is written.
    Rollback {
        /// Print the result as JSON (doc/USAGE.md, "JSON output").
        #[arg(long)]
        json: bool,
        dir: PathBuf,
        snapshot: String,
        path: Option<String>,
    },
    /// Check the repository: every object every snapshot needs is there
    /// (and, with --read-data, re-hash the stored data). Exits non-zero on
    /// any damage, naming the damaged objects and the paths that need them.
    Verify {
        #[arg(long)]
        repo: Option<String>,
        /// Read and re-hash stored data (all packs, or --subset of them).
        #[arg(long)]
        read_data: bool,
        /// With --read-data: this percentage of the packs, chosen at random.
        #[arg(long, value_name = "PERCENT", value_parser = parse_percent)]
        subset: Option<f64>,
        /// Rebuild the index from the packs if it disagrees with them.
        #[arg(long)]
        rebuild_index: bool,
        /// With --read-data: heal what is damaged or missing from another
        /// copy (the mount's replicas, and each --from), then verify again.
        #[arg(long, requires = "read_data")]
        repair: bool,
        /// A copy of this repository (a replica) to heal from; repeatable.
        #[arg(long, value_name = "REPO", requires = "repair")]
        from: Vec<String>,
        /// Instead: compare the live directory with the latest snapshot
        /// plus the dirty set, and report any change the tracker missed.
        #[arg(long, requires = "dir", conflicts_with_all = ["repo", "read_data", "subset", "rebuild_index"])]
        live: bool,
        /// Parallel pack readers (default: the number of cores).
        #[arg(short = 'j', long)]
        jobs: Option<usize>,
        /// Print the result as JSON (doc/USAGE.md, "JSON output").
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        out: cli::progress::ProgressArgs,
        dir: Option<PathBuf>,
    },
    /// Remove snapshots: by name, or all but those the keep rules keep.
    /// Their space comes back with `prune` (or --prune).
    Forget {
        #[arg(long)]
        repo: Option<String>,
        /// Keep the newest N snapshots.
        #[arg(long, value_name = "N", default_value_t = 0)]
        keep_last: u32,
        /// Keep the newest snapshot of each of the last N hours that have one.
        #[arg(long, value_name = "N", default_value_t = 0)]
        keep_hourly: u32,
        #[arg(long, value_name = "N", default_value_t = 0)]
        keep_daily: u32,
        /// Weeks start on Monday.
        #[arg(long, value_name = "N", default_value_t = 0)]
        keep_weekly: u32,
        #[arg(long, value_name = "N", default_value_t = 0)]
        keep_monthly: u32,
        #[arg(long, value_name = "N", default_value_t = 0)]
        keep_yearly: u32,
        /// Show what would be removed; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Prune afterwards.
        #[arg(long)]
        prune: bool,
        /// Print the result as JSON (doc/USAGE.md, "JSON output").
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        out: cli::progress::ProgressArgs,
        /// [DIR] [NAME...] (DIR unless --repo)
        args: Vec<String>,
    },
    /// Reclaim the space of objects no snapshot references.
    Prune {
        #[arg(long)]
        repo: Option<String>,
        /// Show what would be done; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Rewrite packs with more than this percentage unused (default 20).
        #[arg(long, value_name = "PERCENT", value_parser = parse_percent)]
        max_unused: Option<f64>,
        /// In a repository several hosts share (s3:): how long condemned
        /// packs wait before a later prune deletes them (default 1h); longer
        /// than the lag of the store's listings, twice over.
        #[arg(long, value_name = "DURATION", value_parser = snapfs::ops::schedule::parse_duration)]
        grace: Option<u64>,
        /// Print the result as JSON (doc/USAGE.md, "JSON output").
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        out: cli::progress::ProgressArgs,
        dir: Option<PathBuf>,
    },
    /// Copies of a mounted directory's repository elsewhere (a bucket,
    /// another disk): add, remove, bring up to date now, or list them.
    Replica {
        #[command(subcommand)]
        what: ReplicaCmd,
    },
    /// Show the mount, the repository and the dirty set.
    Status {
        /// Print the result as JSON (doc/USAGE.md, "JSON output").
        #[arg(long)]
        json: bool,
        /// List dirty files with their dirty block ranges.
        #[arg(long)]
        files: bool,
        /// The mount's FUSE requests since it was mounted: count and the
        /// daemon's latency by opcode.
        #[arg(long)]
        ops: bool,
        /// Prometheus metrics in the text format (for node_exporter's
        /// textfile collector); with the request counters when mounted.
        #[arg(long, conflicts_with_all = ["json", "ops", "files"])]
        prometheus: bool,
        /// A monitoring check (Nagios plugin conventions): one line, exit 0
        /// ok, 1 warning, 2 critical, 3 unknown.
        #[arg(long, conflicts_with_all = ["json", "ops", "files", "prometheus"])]
        check: bool,
        /// Repository, when DIR is not mounted and the repository is not DIR/.snapfs.
        #[arg(long)]
        repo: Option<String>,
        dir: PathBuf,
    },
    /// Print the completion script for a shell (bash, zsh, fish), e.g.
    /// `snapfs completions bash > /etc/bash_completion.d/snapfs`.
    Completions { shell: clap_complete::Shell },
    /// Write the man pages (snapfs.1 and one per subcommand) into DIR.
    #[command(hide = true)]
    Man { dir: PathBuf },
}

/// When automatic snapshots are taken, and which are kept (`mount` and
/// `schedule`; any combination of the triggers).
#[derive(clap::Args)]
struct Triggers {
    /// Take a snapshot automatically every INTERVAL (30s, 15m, 1h, 1d).
    #[arg(long, value_name = "INTERVAL", value_parser = snapfs::ops::schedule::parse_interval)]
    every: Option<u64>,
    /// Take a snapshot as soon as SIZE of file data is dirty (64M, 1G).
    #[arg(long, value_name = "SIZE", value_parser = snapfs::ops::schedule::parse_max_dirty)]
    max_dirty: Option<u64>,
    /// Take a snapshot before any change is unprotected for longer than
    /// DURATION (the recovery point objective; 30s, 5m). An idle
    /// directory takes none.
    #[arg(long, value_name = "DURATION", value_parser = snapfs::ops::schedule::parse_interval)]
    max_age: Option<u64>,
    /// With --max-age: take the snapshot as soon as writes have paused
    /// for DURATION, so it lands between bursts (at the latest at --max-age).
    #[arg(long, value_name = "DURATION", value_parser = snapfs::ops::schedule::parse_interval, requires = "max_age")]
    settle: Option<u64>,
    /// Retention for the automatic snapshots, e.g. hourly=24,daily=7,weekly=4,monthly=12.
    #[arg(long, value_name = "RULES", value_parser = snapfs::ops::maint::Policy::parse)]
    keep: Option<snapfs::ops::maint::Policy>,
}

#[derive(Subcommand)]
enum KeyCmd {
    /// The key slots (the one in use marked *).
    List {
        #[arg(long)]
        repo: Option<String>,
        /// Print the result as JSON (doc/USAGE.md, "JSON output").
        #[arg(long)]
        json: bool,
        dir: Option<PathBuf>,
    },
    /// Add a slot: a passphrase (--new-password-file, or typed twice) or a
    /// new key file (--new-key-file, made there).
    Add {
        #[arg(long)]
        repo: Option<String>,
        /// A slot that can add snapshots but not read file contents back.
        #[arg(long)]
        write_only: bool,
        #[arg(long, value_name = "FILE")]
        new_password_file: Option<PathBuf>,
        #[arg(long, value_name = "FILE", conflicts_with = "new_password_file")]
        new_key_file: Option<PathBuf>,
        #[arg(long, value_name = "MIB")]
        kdf_memory: Option<u32>,
        #[arg(long, value_name = "N")]
        kdf_iterations: Option<u32>,
        dir: Option<PathBuf>,
    },
    /// Remove a slot (by name or unique prefix); the last full one stays.
    Remove {
        #[arg(long)]
        repo: Option<String>,
        /// [DIR] SLOT (DIR unless --repo)
        #[arg(num_args = 1..=2)]
        args: Vec<String>,
    },
    /// Replace the slot in use by one with a new passphrase (or key file).
    Passwd {
        #[arg(long)]
        repo: Option<String>,
        #[arg(long, value_name = "FILE")]
        new_password_file: Option<PathBuf>,
        #[arg(long, value_name = "FILE", conflicts_with = "new_password_file")]
        new_key_file: Option<PathBuf>,
        #[arg(long, value_name = "MIB")]
        kdf_memory: Option<u32>,
        #[arg(long, value_name = "N")]
        kdf_iterations: Option<u32>,
        dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ReplicaCmd {
    /// Make URL a replica (a path or s3:https://HOST/BUCKET/PREFIX); the
    /// history is copied in the background (`replica sync` waits for it).
    Add {
        /// Print the result as JSON (doc/USAGE.md, "JSON output").
        #[arg(long)]
        json: bool,
        dir: PathBuf,
        url: String,
    },
    /// Stop replicating to URL (its copy stays as it is).
    Remove {
        /// Print the result as JSON (doc/USAGE.md, "JSON output").
        #[arg(long)]
        json: bool,
        dir: PathBuf,
        url: String,
    },
    /// Copy what each replica lacks now, and wait.
    Sync {
        /// Print the result as JSON (doc/USAGE.md, "JSON output").
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        out: cli::progress::ProgressArgs,
        dir: PathBuf,
    },
    /// Each replica and how far behind it is.
    List {
        /// Print the result as JSON (doc/USAGE.md, "JSON output").
        #[arg(long)]
        json: bool,
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.first().is_some_and(|a| cli::mount_helper::is_helper(a)) {
        init_logging(false);
        snapfs::os::systemd::take_notify_socket();
        return cli::mount_helper::main(args);
    }
    let cli = Cli::parse_from(args);
    // The daemons log what they do (info); a command run by hand says only
    // what went wrong (warn), its result is on stdout. RUST_LOG overrides.
    init_logging(matches!(cli.cmd, Cmd::Mount { .. } | Cmd::Browse { .. }));
    // (still the only thread: no child, such as a --password-command, may
    // notify systemd in the daemon's name)
    snapfs::os::systemd::take_notify_socket();
    if !matches!(cli.cmd, Cmd::Mount { .. } | Cmd::Browse { .. }) {
        // A reader that goes away (`snapfs list | head`) ends us quietly,
        // as it does other Unix tools, instead of a panic in println!.
        // Daemons keep ignoring SIGPIPE (a client may hang up early).
        // SAFETY: resetting a signal's disposition to its default.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("snapfs: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Log lines on stderr: with a timestamp, except when stderr is the
/// journal, which stamps each line itself and takes its priority from a
/// `<N>` prefix (`journalctl -p warning` then finds the warnings).
fn init_logging(daemon: bool) {
    let default = if daemon { "info,fuser::session=error" } else { "warn,fuser::session=error" };
    let mut b = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default));
    if snapfs::os::systemd::stderr_is_journal() {
        b.format(|buf, r| {
            use std::io::Write;
            let prio = snapfs::os::systemd::priority(r.level());
            writeln!(buf, "<{prio}>[{} {}] {}", r.level(), r.target(), r.args())
        });
    } else {
        b.format_timestamp_millis();
    }
    b.init();
}

/// `10`, `10%`, `2.5`.
fn parse_percent(s: &str) -> std::result::Result<f64, String> {
    s.trim().trim_end_matches('%').parse::<f64>().map_err(|_| format!("{s:?} is not a percentage"))
}
