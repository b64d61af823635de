//! `cargo xtask test`: setup, unit tests of the default members, then the root integration
//! tests in tests/ (test targets of the capagent-tests crate behind its `root-tests`
//! feature), one at a time, then the proxy tests (behind `peer-tests`), then (`--fuzz-secs`)
//! every fuzz target, each counted as a test. Ends with the failed tests' reports again (CI
//! often shows only the tail of its log) and `N passed, N failed`.
use std::{
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

use crate::{
    setup,
    util::{self, display},
};

/// The crate of the integration tests (tests/Cargo.toml declares its test targets and the
/// features that gate them).
const TESTS_CRATE: &str = "capagent-tests";

#[derive(Default, Debug, PartialEq, Eq)]
pub struct Tally {
    pub passed: u64,
    pub failed: u64,
}

impl Tally {
    fn add(&mut self, other: &Tally) {
        self.passed += other.passed;
        self.failed += other.failed;
    }
}

/// Parses one libtest summary line: `test result: ok. 3 passed; 0 failed; 0 ignored; ...`.
pub fn parse_result_line(line: &str) -> Option<Tally> {
    let rest = line.trim().strip_prefix("test result: ")?;
    let (_, counts) = rest.split_once(". ")?;
    let mut tally = Tally::default();
    for part in counts.split(';') {
        let mut words = part.split_whitespace();
        let (Some(n), Some(what)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(n) = n.parse::<u64>() else { continue };
        match what {
            "passed" => tally.passed = n,
            "failed" => tally.failed = n,
            _ => {}
        }
    }
    Some(tally)
}

/// Collects libtest's reports of failed tests (`---- NAME stdout ----` up to the next report
/// or the `failures:` list), each cut to its last [`Failures::KEEP`] lines.
#[derive(Default)]
pub struct Failures {
    reports: Vec<Vec<String>>,
    open: bool,
}

impl Failures {
    const KEEP: usize = 40;

    pub fn feed(&mut self, line: &str) {
        if line.starts_with("---- ") && line.ends_with(" ----") {
            self.reports.push(vec![line.to_string()]);
            self.open = true;
        } else if line == "failures:" || line.starts_with("test result: ") {
            self.open = false;
        } else if self.open {
            let report = self.reports.last_mut().expect("open report");
            report.push(line.to_string());
            if report.len() > Self::KEEP + 1 {
                report.remove(1);
            }
        }
    }

    pub fn print(&self) {
        for report in &self.reports {
            for line in report {
                println!("{line}");
            }
        }
    }
}

/// Runs a `cargo test` command, echoing its stdout while summing its result lines.
/// Returns the tally and whether cargo succeeded.
fn cargo_test(cmd: &mut Command, failures: &mut Failures) -> Result<(Tally, bool)> {
    eprintln!("+ {}", display(cmd));
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {}", display(cmd)))?;
    let mut tally = Tally::default();
    let stdout = std::io::stdout();
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        {
            let mut out = stdout.lock();
            writeln!(out, "{line}")?;
            out.flush()?;
        }
        if let Some(t) = parse_result_line(&line) {
            tally.add(&t);
        }
        failures.feed(&line);
    }
    let status = child.wait()?;
    Ok((tally, status.success()))
}

pub fn test(integration_args: &[String], fuzz_secs: u64) -> Result<()> {
    if !util::is_root() {
        bail!("cargo xtask test must run as root (the integration tests load eBPF programs)");
    }
    setup::setup()?;

    // Binaries the integration tests can use, whatever their target dir.
    let capagent = util::build_bins("capagent", &["capagent"], false)?;
    let rr = util::build_bins("xtask", &["rr"], true)?;
    let manifest = std::fs::read_to_string(util::workspace_root().join("tests/Cargo.toml"))
        .context("reading tests/Cargo.toml")?;

    let mut total = Tally::default();
    let mut problems = Vec::new();
    let mut failures = Failures::default();

    // Unit tests: the default members (agent-ebpf only builds for the bpf target).
    let mut unit = util::cargo();
    unit.args([
        "test",
        "--workspace",
        "--no-fail-fast",
        "--exclude",
        "agent-ebpf",
    ]);
    let (tally, ok) = cargo_test(&mut unit, &mut failures)?;
    total.add(&tally);
    if !ok {
        problems.push(format!("unit tests: `{}` failed", display(&unit)));
    }

    let mut integ = util::cargo();
    integ.args([
        "test",
        "-p",
        TESTS_CRATE,
        "--features",
        "root-tests",
        "--no-fail-fast",
    ]);
    for t in tests_requiring(&manifest, "root-tests") {
        integ.args(["--test", &t]);
    }
    integ
        .arg("--")
        .arg("--test-threads=1")
        .args(integration_args)
        .env("CAPAGENT_BIN", &capagent["capagent"])
        .env("CAPAGENT_RR_BIN", &rr["rr"]);
    let (tally, ok) = cargo_test(&mut integ, &mut failures)?;
    total.add(&tally);
    if !ok {
        problems.push(format!("integration tests: `{}` failed", display(&integ)));
    }

    // Proxy tests: every test target behind the `peer-tests` feature (real clients and
    // servers on loopback; no root needed, no eBPF).
    let mut peers = util::cargo();
    peers.args([
        "test",
        "-p",
        TESTS_CRATE,
        "--features",
        "peer-tests",
        "--no-fail-fast",
    ]);
    for t in tests_requiring(&manifest, "peer-tests") {
        peers.args(["--test", &t]);
    }
    peers.args(["--", "--test-threads=2"]);
    peers
        .args(integration_args)
        .env("CAPAGENT_BIN", &capagent["capagent"]);
    let (tally, ok) = cargo_test(&mut peers, &mut failures)?;
    total.add(&tally);
    if !ok {
        problems.push(format!("proxy tests: `{}` failed", display(&peers)));
    }

    // Fuzzing last (`.ci/run`): each target is one test, passed when it ran its time
    // without a crash. Unoptimized builds: on a clean clone the optimized ones take longer
    // to build than all the fuzzing.
    if fuzz_secs > 0 {
        match crate::fuzz::run(fuzz_secs, &[], true) {
            Ok(results) => {
                for (t, ok) in results {
                    println!(
                        "fuzz {t} ({fuzz_secs} s) ... {}",
                        if ok { "ok" } else { "FAILED" }
                    );
                    if ok {
                        total.passed += 1;
                    } else {
                        total.failed += 1;
                        problems.push(format!(
                            "fuzz target {t} failed (its input is in fuzz/artifacts/{t}/)"
                        ));
                    }
                }
            }
            Err(e) => {
                total.failed += 1;
                problems.push(format!("fuzzing could not run: {e:#}"));
            }
        }
    }

    if !failures.reports.is_empty() {
        println!("\nreports of the failed tests, again:");
        failures.print();
    }
    for p in &problems {
        eprintln!("error: {p}");
    }
    println!("{} passed, {} failed", total.passed, total.failed);
    if total.failed > 0 || !problems.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}

/// Names of the `[[test]]` targets of a Cargo manifest whose `required-features` include
/// `feature`.
pub fn tests_requiring(manifest: &str, feature: &str) -> Vec<String> {
    let mut out = Vec::new();
    for block in manifest.split("[[test]]").skip(1) {
        // The block ends at the next table header.
        let block = block.split("\n[").next().unwrap_or("");
        let mut name = None;
        let mut wanted = false;
        for line in block.lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            match k.trim() {
                "name" => name = Some(v.trim().trim_matches('"').to_string()),
                "required-features" => wanted = v.contains(&format!("\"{feature}\"")),
                _ => {}
            }
        }
        if let (Some(n), true) = (name, wanted) {
            out.push(n);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_test_targets_by_feature() {
        let manifest = r#"
[features]
root-tests = []

[[test]]
name = "trace"
path = "trace.rs"
required-features = ["root-tests"]

[[test]]
name = "socks"
path = "socks.rs"
required-features = ["peer-tests"]

[dev-dependencies]
x = "1"

[[test]]
name = "forward"
required-features = ["peer-tests"]
"#;
        assert_eq!(
            tests_requiring(manifest, "peer-tests"),
            ["socks", "forward"]
        );
        assert_eq!(tests_requiring(manifest, "root-tests"), ["trace"]);
    }

    #[test]
    fn parses_result_lines() {
        assert_eq!(
            parse_result_line(
                "test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; \
                 finished in 0.01s"
            ),
            Some(Tally {
                passed: 12,
                failed: 0
            })
        );
        assert_eq!(
            parse_result_line("test result: FAILED. 3 passed; 2 failed; 0 ignored"),
            Some(Tally {
                passed: 3,
                failed: 2
            })
        );
        assert_eq!(parse_result_line("running 3 tests"), None);
    }

    #[test]
    fn collects_failure_reports() {
        let mut f = Failures::default();
        for line in [
            "test a ... ok",
            "test b ... FAILED",
            "",
            "failures:",
            "",
            "---- b stdout ----",
            "thread 'b' panicked at tests/x.rs:3:5:",
            "boom",
            "",
            "failures:",
            "    b",
            "",
            "test result: FAILED. 1 passed; 1 failed; 0 ignored",
        ] {
            f.feed(line);
        }
        assert_eq!(
            f.reports,
            [vec![
                "---- b stdout ----",
                "thread 'b' panicked at tests/x.rs:3:5:",
                "boom",
                ""
            ]]
        );
    }
}
