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
    /// Build the targets without optimizations (`cargo fuzz run --dev`): about a quarter of
    /// the build time, 3 to 20 times fewer inputs per second. CI uses it.
    #[arg(long)]
    pub dev: bool,
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
    let results = run(args.secs, &args.targets, args.dev)?;
    let failed: Vec<&str> = results
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(t, _)| t.as_str())
        .collect();
    if !failed.is_empty() {
        bail!(
            "fuzz targets failed: {} (inputs in fuzz/artifacts/)",
            failed.join(", ")
        );
    }
    println!(
        "fuzzed {} targets for {} s each: no crash",
        results.len(),
        args.secs
    );
    Ok(())
}

/// Runs `targets` (all when empty) for `secs` seconds each, each first replaying its corpus
/// and seeds; installs cargo-fuzz when missing; `dev`: unoptimized builds. Returns each
/// target and whether it ran without a crash. libFuzzer and cargo write to stderr only.
pub fn run(secs: u64, targets: &[String], dev: bool) -> Result<Vec<(String, bool)>> {
    let root = util::workspace_root();
    let manifest =
        std::fs::read_to_string(root.join("fuzz/Cargo.toml")).context("reading fuzz/Cargo.toml")?;
    let all = self::targets(&manifest);
    let chosen: Vec<String> = if targets.is_empty() {
        all.clone()
    } else {
        for t in targets {
            if !all.contains(t) {
                bail!("no fuzz target {t:?} (targets: {})", all.join(", "));
            }
        }
        targets.to_vec()
    };
    let has_fuzz = Command::new("cargo")
        .args(["+nightly", "fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_fuzz {
        let mut install = Command::new("cargo");
        install
            .args(["install", "cargo-fuzz", "--locked"])
            .stdout(std::io::stderr());
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
    let mut results = Vec::new();
    for t in &chosen {
        let corpus = root.join("fuzz/corpus").join(t);
        std::fs::create_dir_all(&corpus)?;
        // The rustup proxy, so that +nightly selects the toolchain.
        let mut cmd = Command::new("cargo");
        cmd.current_dir(&root)
            .env("CAPAGENT_SKIP_EBPF", "1")
            .args(["+nightly", "fuzz", "run", t]);
        if dev {
            cmd.arg("--dev");
        }
        cmd.arg(&corpus);
        let seeds = root.join("fuzz/seeds").join(t);
        if seeds.is_dir() {
            cmd.arg(&seeds);
        }
        cmd.args([
            "--",
            &format!("-max_total_time={secs}"),
            "-rss_limit_mb=2048",
            "-print_final_stats=1",
        ]);
        // Whatever the target prints goes to stderr: stdout stays for the caller's lines.
        cmd.stdout(std::io::stderr());
        eprintln!("+ {}", display(&cmd));
        let st = cmd
            .status()
            .with_context(|| format!("cannot run {}", display(&cmd)))?;
        results.push((t.clone(), st.success()));
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    #[test]
    fn bin_names() {
        let m = "[package]\nname = \"capagent-fuzz\"\n\n[[bin]]\nname = \"a\"\npath = \"x\"\n\n[[bin]]\npath = \"y\"\nname = \"b\"\n";
        assert_eq!(super::targets(m), ["a", "b"]);
    }
}
