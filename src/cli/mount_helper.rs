//! `mount.snapfs`: the binary run under that name (a symlink) is the
//! helper mount(8) calls for an `/etc/fstab` line such as
//!
//! ```text
//! /data  /data  fuse.snapfs  defaults,repo=/backup/data,every=15m  0 0
//! ```
//!
//! mount(8) runs `mount.TYPE SOURCE DIR [-sfnv] [-o OPTIONS]`; for the
//! type `fuse.snapfs` it looks for `mount.fuse.snapfs`, for `snapfs` for
//! `mount.snapfs`, and both names lead here. The options become `snapfs
//! mount` flags (`repo=R` is `--repo R`, `every=15m` is `--every 15m`, ...;
//! the table is [`FLAGS`]), and the command runs as if typed: it returns
//! once the mount is ready, the daemon staying in the background. The
//! options every file system gets (`defaults`, `rw`, `nofail`, `noauto`,
//! `_netdev`, `x-systemd.*`, ...) are for mount(8) and systemd and are
//! ignored here; an option snapfs does not know is an error, unless `-s`.
//!
//! SOURCE must be DIR itself: snapfs protects a directory in place (a
//! different SOURCE would be a directory shown at DIR, which hides DIR's
//! own files, so it is refused rather than guessed at).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Parser;

/// Option names (as in fstab) and the `snapfs mount` flag each becomes;
/// `replica` may repeat, `keep` rules may also come as `keep-daily=7`.
const FLAGS: &[(&str, &str)] = &[
    ("repo", "--repo"),
    ("cache", "--cache"),
    ("replica", "--replica"),
    ("host", "--host"),
    ("every", "--every"),
    ("max-dirty", "--max-dirty"),
    ("max-age", "--max-age"),
    ("settle", "--settle"),
    ("threads", "--threads"),
    ("flush-ms", "--flush-ms"),
    ("metrics", "--metrics"),
    ("password-file", "--password-file"),
    ("key-file", "--key-file"),
];

/// Options without a value that become flags.
const SWITCHES: &[(&str, &str)] = &[("no-writeback", "--no-writeback"), ("nowriteback", "--no-writeback")];

/// Options for mount(8) and systemd, or what the mount is anyway (it is
/// always nosuid and nodev), ignored here.
const IGNORED: &[&str] = &[
    "defaults", "rw", "auto", "noauto", "nofail", "_netdev", "user", "users", "nouser", "owner", "group", "nosuid",
    "nodev", "exec", "async", "relatime", "loud", "silent",
];

/// Options that ask for what a snapfs mount does not do (yet): refused
/// rather than ignored, since ignoring them would leave the mount weaker
/// or different than the line says.
const REFUSED: &[(&str, &str)] = &[
    ("ro", "snapfs mounts read-write (it protects a directory in use); use `snapfs browse` for a read-only view"),
    ("suid", "a snapfs mount is always nosuid (set-user-id bits do not take effect through it)"),
    ("dev", "a snapfs mount is always nodev (device files do not open through it)"),
    ("noexec", "snapfs mount has no noexec option yet"),
    ("sync", "snapfs mount has no sync option (see --no-writeback)"),
];

const USAGE: &str = "usage: mount.snapfs DIR DIR [-sfnv] [-o OPTIONS]

mount(8)'s helper for snapfs: protects DIR in place, as `snapfs mount` does
(the directory is named twice). OPTIONS are snapfs mount's flags without
their dashes (repo=REPO, every=15m, max-age=5m, settle=10s, max-dirty=1G,
replica=URL, host=NAME, cache=DIR, password-file=FILE, key-file=FILE,
threads=N, flush-ms=N, metrics=ADDR, no-writeback; keep=hourly=24:daily=7 or
keep-daily=7); defaults, nofail, noauto, _netdev, x-* and other options for
mount(8) and systemd are ignored. -f: check only, -v: show the command,
-s: ignore unknown options. See snapfs-mount(1).";

/// What the helper's command line asks for.
#[derive(Debug, PartialEq)]
pub struct Helper {
    /// The `snapfs` command line that does it (`snapfs mount ... DIR`).
    pub argv: Vec<OsString>,
    /// `-f`: check everything, mount nothing.
    pub fake: bool,
    /// `-v`: show the command.
    pub verbose: bool,
    /// Options `-s` let through (unknown, ignored).
    pub sloppy_ignored: Vec<String>,
}

/// Whether the program was run as the mount helper (by its name).
pub fn is_helper(argv0: &std::ffi::OsStr) -> bool {
    let name = Path::new(argv0).file_name().unwrap_or(argv0).to_string_lossy();
    name == "mount.snapfs" || name == "mount.fuse.snapfs"
}

/// Run as mount(8)'s helper; exit codes as mount(8) gives them (1: a wrong
/// invocation, 32: the mount failed).
pub fn main(args: Vec<OsString>) -> ExitCode {
    if args.iter().skip(1).any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let h = match translate(&args[1..]) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("mount.snapfs: {e:#}");
            return ExitCode::from(1);
        }
    };
    for o in &h.sloppy_ignored {
        eprintln!("mount.snapfs: ignoring unknown option {o:?} (-s)");
    }
    if h.verbose || h.fake {
        let shown: Vec<String> = h.argv.iter().map(|a| a.to_string_lossy().into_owned()).collect();
        eprintln!("mount.snapfs: {}", shown.join(" "));
    }
    let cli = match crate::Cli::try_parse_from(&h.argv) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mount.snapfs: {}", e.to_string().trim_end());
            return ExitCode::from(1);
        }
    };
    if h.fake {
        return ExitCode::SUCCESS;
    }
    match super::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mount.snapfs: {e:#}");
            ExitCode::from(32)
        }
    }
}

/// The `snapfs mount` command line for `SOURCE DIR [-sfnv] [-o OPTIONS]
/// [-t TYPE]` (arguments after the program name).
pub fn translate(args: &[OsString]) -> Result<Helper> {
    let mut positional: Vec<&OsString> = Vec::new();
    let mut opts: Vec<String> = Vec::new();
    let (mut fake, mut verbose, mut sloppy) = (false, false, false);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if s == "-o" || s == "-t" || s == "-N" {
            let v = it.next().with_context(|| format!("{s} needs a value"))?;
            match &*s {
                "-o" => opts.push(v.to_str().context("the options are not UTF-8")?.to_string()),
                "-N" => bail!("-N (another mount namespace) is not supported"),
                _ => {} // the type: mount(8) chose us by it
            }
        } else if let Some(o) = s.strip_prefix("-o") {
            opts.push(o.to_string());
        } else if s.starts_with('-') && s.len() > 1 {
            for c in s[1..].chars() {
                match c {
                    'f' => fake = true,
                    'v' => verbose = true,
                    's' => sloppy = true,
                    'n' => {} // no /etc/mtab to write
                    _ => bail!("unknown flag -{c} (mount.snapfs --help)"),
                }
            }
        } else {
            positional.push(a);
        }
    }
    let &[source, dir] = positional.as_slice() else {
        bail!("usage: mount.snapfs DIR DIR [-sfnv] [-o OPTIONS] (the directory twice: it is protected in place)");
    };
    check_source(Path::new(source), Path::new(dir))?;

    let mut flags: Vec<OsString> = Vec::new();
    let mut keep: Vec<String> = Vec::new();
    let mut sloppy_ignored = Vec::new();
    for o in opts.iter().flat_map(|o| split_options(o)) {
        let (k, v) = match o.split_once('=') {
            Some((k, v)) => (k, Some(unquote(v))),
            None => (o.as_str(), None),
        };
        // (`user=NAME` is how mount(8) tells who mounts a `user` line)
        if IGNORED.contains(&k) || k.starts_with("x-") || k == "comment" {
            continue;
        }
        if let Some((_, why)) = REFUSED.iter().find(|(n, _)| *n == k) {
            bail!("option {k}: {why}");
        }
        let name = k.replace('_', "-");
        if let Some((_, flag)) = SWITCHES.iter().find(|(n, _)| *n == name) {
            if v.is_some() {
                bail!("option {k} takes no value");
            }
            flags.push(flag.into());
        } else if let Some((_, flag)) = FLAGS.iter().find(|(n, _)| *n == name) {
            let v = v.filter(|v| !v.is_empty()).with_context(|| format!("option {k} needs a value ({k}=...)"))?;
            flags.extend([flag.into(), v.into()]);
        } else if name == "keep" {
            let v = v.with_context(|| "option keep needs rules (keep=hourly=24:daily=7)")?;
            keep.extend(v.split([':', ',']).filter(|r| !r.is_empty()).map(str::to_string));
        } else if let Some(rule) = name.strip_prefix("keep-") {
            let v = v.with_context(|| format!("option {k} needs a count ({k}=7)"))?;
            keep.push(format!("{rule}={v}"));
        } else if sloppy {
            sloppy_ignored.push(o.clone());
        } else {
            let known: Vec<&str> = FLAGS.iter().chain(SWITCHES).map(|(n, _)| *n).collect();
            bail!("unknown option {k:?} (snapfs takes {}, keep=RULES, keep-RULE=N)", known.join(", "));
        }
    }
    if !keep.is_empty() {
        flags.extend(["--keep".into(), keep.join(",").into()]);
    }
    let mut argv: Vec<OsString> = vec!["snapfs".into(), "mount".into()];
    argv.extend(flags);
    argv.push(dir.clone());
    Ok(Helper { argv, fake, verbose, sloppy_ignored })
}

/// SOURCE and DIR must be the same directory.
fn check_source(source: &Path, dir: &Path) -> Result<()> {
    let real = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let (s, d): (PathBuf, PathBuf) = (real(source), real(dir));
    if s != d {
        bail!(
            "SOURCE {} is not the mount point {}: snapfs protects a directory in place, so the fstab line names it \
             twice (`{} {} fuse.snapfs ...`); to show another directory at {} use `snapfs mount --backing`",
            source.display(),
            dir.display(),
            dir.display(),
            dir.display(),
            dir.display()
        );
    }
    Ok(())
}

/// Split mount options at commas outside double quotes, as libmount does.
fn split_options(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in s.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out.retain(|o| !o.is_empty());
    out
}

fn unquote(v: &str) -> &str {
    v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(s: &[&str]) -> Vec<OsString> {
        s.iter().map(OsString::from).collect()
    }

    fn argv(h: &Helper) -> Vec<String> {
        h.argv.iter().map(|a| a.to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn fstab_options_become_mount_flags() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().to_str().unwrap();
        let h = translate(&args(&[
            d,
            d,
            "-o",
            "rw,defaults,nofail,_netdev,x-systemd.requires=backup.mount,repo=/backup/data,every=15m,max-age=5m,\
             keep=hourly=24:daily=7,keep-weekly=4,replica=s3:https://h:3900/b/p,replica=/mnt/copy,\
             password-file=/etc/snapfs/data.pass,no-writeback,max_dirty=1G",
        ]))
        .unwrap();
        assert_eq!(
            argv(&h),
            [
                "snapfs",
                "mount",
                "--repo",
                "/backup/data",
                "--every",
                "15m",
                "--max-age",
                "5m",
                "--replica",
                "s3:https://h:3900/b/p",
                "--replica",
                "/mnt/copy",
                "--password-file",
                "/etc/snapfs/data.pass",
                "--no-writeback",
                "--max-dirty",
                "1G",
                "--keep",
                "hourly=24,daily=7,weekly=4",
                d,
            ]
        );
        assert!(!h.fake && !h.verbose);
        // what comes out is a command line `snapfs` accepts
        let cli = crate::Cli::try_parse_from(&h.argv).unwrap();
        assert_eq!(cli.keys.password_file.as_deref(), Some(Path::new("/etc/snapfs/data.pass")));
        let crate::Cmd::Mount { triggers, no_writeback, replicas, dir, .. } = cli.cmd else { panic!("not a mount") };
        assert_eq!((triggers.every, triggers.max_age, triggers.max_dirty), (Some(900), Some(300), Some(1 << 30)));
        assert_eq!(triggers.keep.unwrap().to_string(), "hourly=24,daily=7,weekly=4");
        assert!(no_writeback);
        assert_eq!(replicas.len(), 2);
        assert_eq!(dir, Path::new(d));
    }

    #[test]
    fn every_option_in_the_table_is_a_mount_flag() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().to_str().unwrap();
        for (name, _) in FLAGS.iter().chain(SWITCHES) {
            let value = match *name {
                "every" | "max-age" | "settle" => "=1m",
                "max-dirty" => "=1G",
                "threads" | "flush-ms" => "=2",
                "host" => "=h1",
                "metrics" => "=127.0.0.1:9708",
                "no-writeback" | "nowriteback" => "",
                _ => "=/x",
            };
            // (settle needs max-age beside it)
            let o = if *name == "settle" { format!("max-age=5m,{name}{value}") } else { format!("{name}{value}") };
            let h = translate(&args(&[d, d, "-o", &o])).unwrap();
            if let Err(e) = crate::Cli::try_parse_from(&h.argv) {
                panic!("{name}: {:?} refused: {e}", argv(&h));
            }
        }
    }

    #[test]
    fn quotes_flags_and_option_forms() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().to_str().unwrap();
        let h = translate(&args(&["-fv", "-okeep=\"daily=7,weekly=4\"", d, d, "-t", "fuse.snapfs", "-n"])).unwrap();
        assert_eq!(argv(&h), ["snapfs", "mount", "--keep", "daily=7,weekly=4", d]);
        assert!(h.fake && h.verbose);
        // several -o, a trailing comma, and a path given another way
        let other = format!("{d}/.");
        let h = translate(&args(&[&other, d, "-o", "every=1h,", "-o", "defaults"])).unwrap();
        assert_eq!(argv(&h), ["snapfs", "mount", "--every", "1h", d]);
    }

    #[test]
    fn wrong_lines_are_clear_errors() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().to_str().unwrap();
        let e = |a: &[&str]| format!("{:#}", translate(&args(a)).unwrap_err());
        let m = e(&[d, d, "-o", "repo=/r,evry=15m"]);
        assert!(m.contains("unknown option \"evry\"") && m.contains("every"), "{m}");
        let m = e(&["/elsewhere", d, "-o", "repo=/r"]);
        assert!(m.contains("in place"), "{m}");
        assert!(e(&[d]).contains("usage"));
        assert!(e(&[d, d, "-o", "repo"]).contains("needs a value"));
        assert!(e(&[d, d, "-o", "repo="]).contains("needs a value"));
        assert!(e(&[d, d, "-o", "ro"]).contains("read-write"));
        assert!(e(&[d, d, "-o", "suid"]).contains("always nosuid"));
        assert!(e(&[d, d, "-o", "noexec"]).contains("noexec"));
        assert_eq!(argv(&translate(&args(&[d, d, "-o", "nosuid,nodev,exec"])).unwrap()), ["snapfs", "mount", d]);
        assert!(e(&[d, d, "-o", "no-writeback=1"]).contains("takes no value"));
        assert!(e(&[d, d, "-x"]).contains("-x"));
        // -s lets an unknown option through, named
        let h = translate(&args(&["-s", d, d, "-o", "evry=15m,every=1h"])).unwrap();
        assert_eq!(h.sloppy_ignored, ["evry=15m"]);
        assert_eq!(argv(&h), ["snapfs", "mount", "--every", "1h", d]);
    }

    #[test]
    fn helper_names() {
        assert!(is_helper("mount.snapfs".as_ref()));
        assert!(is_helper("/usr/local/sbin/mount.fuse.snapfs".as_ref()));
        assert!(!is_helper("/usr/local/bin/snapfs".as_ref()));
        assert!(!is_helper("umount.snapfs".as_ref()));
    }
}
