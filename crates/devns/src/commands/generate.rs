//! `devns generate`: man pages and shell completions, made from the
//! command line's own definition, so they never drift from it. For
//! packagers: `devns generate man DIR` writes `devns.1` and one
//! `devns-SUBCOMMAND.1` per subcommand (nested ones too, such as
//! `devns-oci-profile.1`); `devns generate completions SHELL` prints the
//! script for SHELL.

use super::{Cli, Global};
use anyhow::{Context, Result};
use clap::CommandFactory;
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub what: What,
}

#[derive(Debug, clap::Subcommand)]
pub enum What {
    /// Write a man page for devns and each of its subcommands into DIR
    /// (section 1: devns.1, devns-run.1, ...).
    Man {
        /// The directory, made if missing.
        dir: PathBuf,
    },
    /// Print the completion script for SHELL (bash: install as
    /// /usr/share/bash-completion/completions/devns; zsh: _devns in
    /// /usr/share/zsh/vendor-completions; fish: devns.fish in
    /// /usr/share/fish/vendor_completions.d).
    Completions { shell: clap_complete::Shell },
}

pub fn run(_global: &Global, args: Args) -> Result<i32> {
    match args.what {
        What::Man { dir } => {
            let pages = man_pages(&dir)?;
            for p in pages {
                println!("{}", p.display());
            }
        }
        What::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "devns", &mut std::io::stdout().lock());
        }
    }
    Ok(0)
}

/// Writes the man pages into `dir`; returns their paths, devns.1 first.
pub fn man_pages(dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut out = Vec::new();
    write_pages(&cmd, dir, &mut out)?;
    Ok(out)
}

/// The page of `cmd`, then those of its visible subcommands.
fn write_pages(cmd: &clap::Command, dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let man = clap_mangen::Man::new(cmd.clone());
    let path = man.generate_to(dir).with_context(|| format!("cannot write a man page into {}", dir.display()))?;
    out.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub, dir, out)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every visible subcommand's file name, as `devns-a-b.1`.
    fn expected(cmd: &clap::Command, prefix: &str, out: &mut Vec<String>) {
        out.push(format!("{prefix}.1"));
        for s in cmd.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
            expected(s, &format!("{prefix}-{}", s.get_name()), out);
        }
    }

    #[test]
    fn every_subcommand_gets_a_man_page() {
        let dir = tempfile::tempdir().unwrap();
        let written = man_pages(dir.path()).unwrap();
        let mut want = Vec::new();
        expected(&Cli::command(), "devns", &mut want);
        let mut got: Vec<String> =
            written.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        got.sort();
        want.sort();
        assert_eq!(got, want);
        for name in ["devns.1", "devns-run.1", "devns-doctor.1", "devns-oci-profile.1", "devns-generate-man.1"] {
            assert!(want.iter().any(|w| w == name), "{name} expected");
        }
        assert!(!got.iter().any(|g| g.contains("hold")), "the hidden holder gets no page");
        for p in &written {
            let text = std::fs::read_to_string(p).unwrap();
            assert!(text.starts_with(".ie \\n(.g .ds Aq") || text.contains(".TH "), "{}: not roff", p.display());
            assert!(text.contains(".SH NAME"), "{}: no NAME section", p.display());
        }
    }
}
