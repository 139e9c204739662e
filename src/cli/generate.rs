//! What is made from the argument definitions in `main.rs`, so it never
//! drifts from them: shell completions (`snapfs completions bash|zsh|fish`)
//! and man pages (`snapfs man DIR`, hidden: the install script's), one for
//! `snapfs(1)` and one for each subcommand (`snapfs-mount(1)`,
//! `snapfs-key-add(1)`, ...).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::CommandFactory;

/// The completion script for `shell`.
pub fn completions(shell: clap_complete::Shell, out: &mut dyn Write) {
    clap_complete::generate(shell, &mut crate::Cli::command(), "snapfs", out);
}

/// Every man page as (file name, roff): the command and each subcommand
/// that is not hidden, depth first.
pub fn man_pages() -> Result<Vec<(String, Vec<u8>)>> {
    let mut cmd = crate::Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut pages = Vec::new();
    add_pages(&cmd, &mut pages)?;
    Ok(pages)
}

fn add_pages(cmd: &clap::Command, pages: &mut Vec<(String, Vec<u8>)>) -> Result<()> {
    let man = clap_mangen::Man::new(cmd.clone()).manual("snapfs manual");
    let mut roff = Vec::new();
    man.render(&mut roff)?;
    pages.push((man.get_filename(), roff));
    // (clap's own `help` subcommands have no page)
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
        add_pages(sub, pages)?;
    }
    Ok(())
}

/// Write every man page into `dir` (made if missing); returns their paths.
pub fn write_man_pages(dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    man_pages()?
        .into_iter()
        .map(|(name, roff)| {
            let p = dir.join(name);
            std::fs::write(&p, roff).with_context(|| format!("writing {}", p.display()))?;
            Ok(p)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each visible subcommand as its path of names (`["key", "add"]`), with its long options.
    fn visible(cmd: &clap::Command, path: Vec<String>, out: &mut Vec<(Vec<String>, Vec<String>)>) {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
            let mut p = path.clone();
            p.push(sub.get_name().to_string());
            let longs = sub
                .get_arguments()
                .filter(|a| !a.is_hide_set())
                .filter_map(|a| a.get_long())
                .filter(|l| *l != "help")
                .map(|l| format!("--{l}"))
                .collect();
            out.push((p.clone(), longs));
            visible(sub, p, out);
        }
    }

    fn subcommands() -> Vec<(Vec<String>, Vec<String>)> {
        let mut out = Vec::new();
        visible(&crate::Cli::command(), vec![], &mut out);
        out
    }

    #[test]
    fn completions_name_every_subcommand() {
        let subs = subcommands();
        assert!(subs.iter().any(|(p, _)| p == &["mount"]) && subs.iter().any(|(p, _)| p == &["key", "add"]));
        assert!(!subs.iter().any(|(p, _)| p == &["man"]), "the hidden generator has no page or completion");
        for shell in [clap_complete::Shell::Bash, clap_complete::Shell::Zsh, clap_complete::Shell::Fish] {
            let mut out = Vec::new();
            completions(shell, &mut out);
            let text = String::from_utf8(out).unwrap();
            assert!(text.len() > 1000, "{shell}: {} bytes", text.len());
            for (path, longs) in &subs {
                let name = path.last().unwrap();
                assert!(text.contains(name.as_str()), "{shell} completion lacks {path:?}");
                for l in longs {
                    // (fish names options without their dashes: `-l repo`)
                    let bare = l.trim_start_matches('-');
                    assert!(text.contains(l.as_str()) || text.contains(&format!("-l {bare}")), "{shell}: {l}");
                }
            }
        }
    }

    #[test]
    fn man_pages_for_the_command_and_every_subcommand() {
        let dir = tempfile::tempdir().unwrap();
        let written = write_man_pages(dir.path()).unwrap();
        let subs = subcommands();
        assert_eq!(written.len(), subs.len() + 1, "{written:?}");
        let read = |name: &str| {
            let text = std::fs::read_to_string(dir.path().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
            // roff writes a minus as \-
            text.replace("\\-", "-")
        };
        let title = |page: &str| page.lines().find(|l| l.starts_with(".TH ")).unwrap_or_default().to_string();
        let top = read("snapfs.1");
        assert!(title(&top).contains("snapfs"), "{top}");
        for (path, longs) in &subs {
            let name = format!("snapfs-{}.1", path.join("-"));
            let page = read(&name);
            assert!(title(&page).contains(&format!("snapfs-{}", path.join("-"))), "{name}:\n{page}");
            assert!(page.contains("SYNOPSIS") && page.contains("DESCRIPTION"), "{name}");
            for l in longs {
                assert!(page.contains(l.as_str()), "{name} does not describe {l}");
            }
            if path.len() == 1 {
                assert!(top.contains(&path[0]), "snapfs(1) does not list {}", path[0]);
            }
        }
    }
}
