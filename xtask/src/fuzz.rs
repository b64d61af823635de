//! `cargo xtask fuzz`: runs every cargo-fuzz target (the `[[bin]]`s of fuzz/Cargo.toml) for
//! a bounded time each, starting from its seeds (fuzz/seeds/NAME) and keeping what it finds
//! in fuzz/corpus/NAME. Fails when a target crashes (libFuzzer leaves the input in
//! fuzz/artifacts/NAME).
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::util::{self, display};

#[derive(Args, Debug)]
pub struct FuzzArgs {
    /// Seconds per target.
    #[arg(long, default_value_t = 30)]
    pub secs: u64,
    /// Only these targets (default: all).
    pub targets: Vec<String>,
}

/// The `[[bin]]` names of a cargo-fuzz manifest.
pub fn targets(manifest: &str) -> Vec<String> {
    manifest
        .split("[[bin]]")
        .skip(1)
        .filter_map(|block| {
            block
                .lines()
                .filter_map(|l| l.split_once('='))
                .find(|(k, _)| k.trim() == "name")
                .map(|(_, v)| v.trim().trim_matches('"').to_string())
        })
        .collect()
}

pub fn fuzz(args: FuzzArgs) -> Result<()> {
    let root = util::workspace_root();
    let manifest =
        std::fs::read_to_string(root.join("fuzz/Cargo.toml")).context("reading fuzz/Cargo.toml")?;
    let all = targets(&manifest);
    let chosen: Vec<String> = if args.targets.is_empty() {
        all.clone()
    } else {
        for t in &args.targets {
            if !all.contains(t) {
                bail!("no fuzz target {t:?} (targets: {})", all.join(", "));
            }
        }
        args.targets.clone()
    };
    let has_fuzz = Command::new("cargo")
        .args(["+nightly", "fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_fuzz {
        let mut install = Command::new("cargo");
        install.args(["install", "cargo-fuzz", "--locked"]);
        util::run(&mut install)?;
    }
    if root.join("fuzz/seeds/make_seeds.py").exists()
        && !root.join("fuzz/seeds/decode_record/calls").exists()
    {
        let mut seeds = Command::new("python3");
        seeds
            .arg(root.join("fuzz/seeds/make_seeds.py"))
            .current_dir(&root);
        util::run(&mut seeds)?;
    }
    let mut failed = Vec::new();
    for t in &chosen {
        let corpus = root.join("fuzz/corpus").join(t);
        std::fs::create_dir_all(&corpus)?;
        // The rustup proxy, so that +nightly selects the toolchain.
        let mut cmd = Command::new("cargo");
        cmd.current_dir(&root)
            .env("CAPAGENT_SKIP_EBPF", "1")
            .args(["+nightly", "fuzz", "run", t])
            .arg(&corpus);
        let seeds = root.join("fuzz/seeds").join(t);
        if seeds.is_dir() {
            cmd.arg(&seeds);
        }
        cmd.args([
            "--",
            &format!("-max_total_time={}", args.secs),
            "-rss_limit_mb=2048",
            "-print_final_stats=1",
        ]);
        eprintln!("+ {}", display(&cmd));
        let st = cmd
            .status()
            .with_context(|| format!("cannot run {}", display(&cmd)))?;
        if !st.success() {
            failed.push(t.clone());
        }
    }
    if !failed.is_empty() {
        bail!(
            "fuzz targets failed: {} (inputs in fuzz/artifacts/)",
            failed.join(", ")
        );
    }
    println!(
        "fuzzed {} targets for {} s each: no crash",
        chosen.len(),
        args.secs
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn bin_names() {
        let m = "[package]\nname = \"capagent-fuzz\"\n\n[[bin]]\nname = \"a\"\npath = \"x\"\n\n[[bin]]\npath = \"y\"\nname = \"b\"\n";
        assert_eq!(super::targets(m), ["a", "b"]);
    }
}
