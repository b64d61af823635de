//! The daemon's configuration file (`capagent daemon --config FILE`): pure parsing and
//! checking, no I/O.
//!
//! A job is written with the same names as the command line: `kind` is the subcommand
//! (`trace`, `capture`, `proxy forward`, `proxy socks`, `proxy http`, `proxy reverse`,
//! `dns`, `intercept`) and every other key is one of its long flags (`-` or `_` alike), so a
//! job means exactly what the same command means:
//!
//! ```toml
//! [[job]]
//! name = "lo-http"
//! kind = "capture"
//! interface = ["lo"]          # repeatable flags take arrays
//! snaplen = 96
//! filter = "tcp port 80"      # capture's FILTER EXPRESSION
//! ```
//!
//! `command = ["curl", "-s", "URL"]` is `-- CMD ARGS`. A key written with its dashes,
//! `"--name" = "*.example.com"`, is always a flag: for the flags that share a name with the
//! job's own keys (`name`, `kind`, `record`, `stdout`, `command`), such as `dns --name`. Outputs are the daemon's (rotating
//! files in the job's directory), so `output`, `write` and `format` are not job keys: `record
//! = ["json", "pcapng"]` chooses them. [`Config::parse`] turns the file into argv lists that
//! the CLI parser checks ([`check_job`]), with the line and column of anything wrong.

use std::{collections::BTreeMap, net::SocketAddr, ops::Range, time::Duration};

use serde::Deserialize;
use thiserror::Error;

/// A configuration error, located in the file.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("{line}:{column}: {message}")]
pub struct ConfigError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl ConfigError {
    fn at(text: &str, span: Option<Range<usize>>, message: impl Into<String>) -> ConfigError {
        let (line, column) = span.map_or((1, 1), |s| line_col(text, s.start));
        ConfigError {
            line,
            column,
            message: message.into(),
        }
    }
}

/// 1-based line and column (in characters) of byte offset `at`.
pub fn line_col(text: &str, at: usize) -> (usize, usize) {
    let at = at.min(text.len());
    let before = &text[..text.floor_char_boundary(at)];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, column)
}

/// What a job writes (files rotated in the job's directory).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Record {
    Text,
    Json,
    Pcapng,
}

impl Record {
    fn parse(s: &str) -> Option<Record> {
        match s {
            "text" => Some(Record::Text),
            "json" => Some(Record::Json),
            "pcapng" => Some(Record::Pcapng),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Record::Text => "text",
            Record::Json => "json",
            Record::Pcapng => "pcapng",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Record::Text => "log",
            Record::Json => "jsonl",
            Record::Pcapng => "pcapng",
        }
    }
}

/// Rotation and retention of output files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    /// Start a new file once the current one holds this many bytes (0: never by size).
    pub max_bytes: u64,
    /// Start a new file once the current one is this old (None: never by time).
    pub max_age: Option<Duration>,
    /// Keep at most this many closed files per job and kind (0: no limit).
    pub keep: usize,
    /// Delete closed files older than this (None: no limit).
    pub keep_age: Option<Duration>,
}

impl Default for Rotation {
    fn default() -> Self {
        Rotation {
            max_bytes: 100 << 20,
            max_age: Some(Duration::from_secs(3600)),
            keep: 24,
            keep_age: None,
        }
    }
}

/// One job: its name, its command line (without the program name), what it records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub name: String,
    /// The `kind` value: `trace`, `capture`, `proxy socks`, ...
    pub kind: String,
    /// e.g. `["proxy", "socks", "--listen", "127.0.0.1:1080"]`.
    pub argv: Vec<String>,
    /// What it writes; `record = []`: no files (metrics only). Default: `["pcapng"]` for
    /// capture, `["json"]` for the others.
    pub record: Vec<Record>,
    /// JSON lines also to the daemon's stdout (journald).
    pub stdout: bool,
    /// Where the job starts in the file (line, column), for messages.
    pub at: (usize, usize),
}

/// The whole file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub output_dir: String,
    /// Prometheus endpoint (`None`: `metrics = false`).
    pub metrics: Option<SocketAddr>,
    pub rotation: Rotation,
    pub jobs: Vec<Job>,
}

pub const DEFAULT_OUTPUT_DIR: &str = "/var/lib/capagent";
pub const DEFAULT_METRICS: &str = "127.0.0.1:9464";

/// Subcommands a job may run, as `kind` values.
const KINDS: &[(&str, &[&str])] = &[
    ("trace", &["trace"]),
    ("capture", &["capture"]),
    ("proxy forward", &["proxy", "forward"]),
    ("proxy socks", &["proxy", "socks"]),
    ("proxy http", &["proxy", "http"]),
    ("proxy reverse", &["proxy", "reverse"]),
    ("dns", &["dns"]),
    ("intercept", &["intercept"]),
];

/// Flags the daemon owns (outputs) and a job may not set.
const FORBIDDEN: &[&str] = &[
    "output",
    "write",
    "format",
    "no-summary",
    "duration",
    "no-record",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    daemon: Option<toml::Spanned<RawDaemon>>,
    #[serde(default)]
    job: Vec<toml::Spanned<BTreeMap<toml::Spanned<String>, toml::Spanned<toml::Value>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    output_dir: Option<String>,
    metrics: Option<toml::Spanned<toml::Value>>,
    rotate_size: Option<toml::Spanned<String>>,
    rotate_age: Option<toml::Spanned<String>>,
    keep: Option<usize>,
    keep_age: Option<toml::Spanned<String>>,
}

/// `"100MiB"`, `"512KiB"`, `"1GB"`, `"1000"` -> bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "KB" => 1000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// `"90s"`, `"15m"`, `"1h"`, `"7d"` -> duration.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return None,
    };
    n.checked_mul(secs).map(Duration::from_secs)
}

fn is_job_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !s.starts_with('.')
}

impl Config {
    /// Parses and checks the structure of `text` (each job's flags are checked by the CLI
    /// parser afterwards, [`check_job`]).
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let raw: RawFile = toml::from_str(text)
            .map_err(|e| ConfigError::at(text, e.span(), e.message().trim_end().to_string()))?;
        let mut cfg = Config {
            output_dir: DEFAULT_OUTPUT_DIR.to_string(),
            metrics: Some(DEFAULT_METRICS.parse().expect("valid default")),
            rotation: Rotation::default(),
            jobs: Vec::new(),
        };
        if let Some(d) = raw.daemon {
            let d = d.into_inner();
            if let Some(dir) = d.output_dir {
                cfg.output_dir = dir;
            }
            if let Some(m) = d.metrics {
                let span = m.span();
                cfg.metrics = match m.into_inner() {
                    toml::Value::Boolean(false) => None,
                    toml::Value::String(s) => Some(s.parse().map_err(|_| {
                        ConfigError::at(
                            text,
                            Some(span.clone()),
                            format!("metrics: not an address:port: {s:?}"),
                        )
                    })?),
                    _ => {
                        return Err(ConfigError::at(
                            text,
                            Some(span),
                            "metrics: an \"address:port\" string, or false",
                        ));
                    }
                };
            }
            let size = |v: Option<toml::Spanned<String>>,
                        what: &str|
             -> Result<Option<u64>, ConfigError> {
                v.map(|s| {
                    parse_size(s.get_ref()).ok_or_else(|| {
                        ConfigError::at(
                            text,
                            Some(s.span()),
                            format!("{what}: not a size (like \"100MiB\"): {:?}", s.get_ref()),
                        )
                    })
                })
                .transpose()
            };
            let dur = |v: Option<toml::Spanned<String>>,
                       what: &str|
             -> Result<Option<Option<Duration>>, ConfigError> {
                v.map(|s| {
                    if s.get_ref() == "never" {
                        return Ok(None);
                    }
                    parse_duration(s.get_ref()).map(Some).ok_or_else(|| {
                        ConfigError::at(text, Some(s.span()), format!("{what}: not a duration (like \"90s\", \"15m\", \"1h\", \"7d\", or \"never\"): {:?}", s.get_ref()))
                    })
                })
                .transpose()
            };
            if let Some(b) = size(d.rotate_size, "rotate_size")? {
                cfg.rotation.max_bytes = b;
            }
            if let Some(a) = dur(d.rotate_age, "rotate_age")? {
                cfg.rotation.max_age = a;
            }
            if let Some(k) = d.keep {
                cfg.rotation.keep = k;
            }
            if let Some(a) = dur(d.keep_age, "keep_age")? {
                cfg.rotation.keep_age = a;
            }
        }
        for table in raw.job {
            let job = parse_job(text, table)?;
            if let Some(prev) = cfg.jobs.iter().find(|j| j.name == job.name) {
                return Err(ConfigError {
                    line: job.at.0,
                    column: job.at.1,
                    message: format!(
                        "job name {:?} is used twice (first at line {})",
                        job.name, prev.at.0
                    ),
                });
            }
            if job.kind == "intercept"
                && let Some(prev) = cfg.jobs.iter().find(|j| j.kind == "intercept")
            {
                return Err(ConfigError {
                    line: job.at.0,
                    column: job.at.1,
                    message: format!(
                        "job {:?}: one intercept job per daemon (its nftables table and routing marks are named after the process; the other is {:?} at line {})",
                        job.name, prev.name, prev.at.0
                    ),
                });
            }
            cfg.jobs.push(job);
        }
        Ok(cfg)
    }
}

type RawJob = toml::Spanned<BTreeMap<toml::Spanned<String>, toml::Spanned<toml::Value>>>;

fn parse_job(text: &str, table: RawJob) -> Result<Job, ConfigError> {
    let span = table.span();
    let map = table.into_inner();
    let at = line_col(text, span.start);
    let err = |s: Range<usize>, m: String| ConfigError::at(text, Some(s), m);
    let get = |k: &str| map.iter().find(|(key, _)| key.get_ref() == k);
    let string = |k: &str| -> Result<Option<(String, Range<usize>)>, ConfigError> {
        match get(k) {
            None => Ok(None),
            Some((_, v)) => match v.get_ref() {
                toml::Value::String(s) => Ok(Some((s.clone(), v.span()))),
                _ => Err(err(v.span(), format!("{k}: a string"))),
            },
        }
    };
    let Some((name, name_span)) = string("name")? else {
        return Err(ConfigError::at(
            text,
            Some(span),
            "job without a name (name = \"...\")",
        ));
    };
    if !is_job_name(&name) {
        return Err(err(
            name_span,
            format!(
                "job name {name:?}: letters, digits, '-', '_' and '.' only (it names the job's directory)"
            ),
        ));
    }
    let Some((kind, kind_span)) = string("kind")? else {
        return Err(ConfigError::at(
            text,
            Some(span),
            format!("job {name:?} has no kind"),
        ));
    };
    let Some((_, prefix)) = KINDS.iter().find(|(k, _)| *k == kind) else {
        let kinds: Vec<&str> = KINDS.iter().map(|(k, _)| *k).collect();
        return Err(err(
            kind_span,
            format!(
                "job {name:?}: unknown kind {kind:?} (one of: {})",
                kinds.join(", ")
            ),
        ));
    };
    let mut argv: Vec<String> = prefix.iter().map(|s| s.to_string()).collect();
    let mut record: Option<Vec<Record>> = None;
    let mut stdout = false;
    let mut trailing: Vec<String> = Vec::new();
    let mut positional: Vec<String> = Vec::new();
    for (key, value) in &map {
        let k = key.get_ref().replace('_', "-");
        let vspan = value.span();
        // `"--name" = ...`: always a flag, for flags named like the job's own keys.
        if let Some(flag) = k.strip_prefix("--") {
            if FORBIDDEN.contains(&flag) || flag.is_empty() {
                return Err(err(
                    key.span(),
                    format!("job {name:?}: {k} cannot be set here"),
                ));
            }
            flag_args(flag, value.get_ref(), &mut argv)
                .map_err(|m| err(vspan, format!("{k}: {m}")))?;
            continue;
        }
        match k.as_str() {
            "name" | "kind" => {}
            "record" => {
                let items = strings(value.get_ref()).ok_or_else(|| {
                    err(
                        vspan.clone(),
                        "record: a list of \"text\", \"json\", \"pcapng\"".into(),
                    )
                })?;
                let record = record.get_or_insert_with(Vec::new);
                for s in items {
                    let r = Record::parse(&s).ok_or_else(|| {
                        err(
                            vspan.clone(),
                            format!("record: unknown output {s:?} (text, json, pcapng)"),
                        )
                    })?;
                    if !record.contains(&r) {
                        record.push(r);
                    }
                }
            }
            "stdout" => match value.get_ref() {
                toml::Value::Boolean(b) => stdout = *b,
                _ => return Err(err(vspan, "stdout: true or false".into())),
            },
            "command" => {
                trailing = strings(value.get_ref())
                    .filter(|v| !v.is_empty())
                    .ok_or_else(|| err(vspan, "command: a non-empty list of strings".into()))?;
            }
            "filter" if kind == "capture" => match value.get_ref() {
                toml::Value::String(s) => positional.push(s.clone()),
                _ => return Err(err(vspan, "filter: a string (tcpdump expression)".into())),
            },
            _ if FORBIDDEN.contains(&k.as_str()) => {
                return Err(err(
                    key.span(),
                    format!(
                        "job {name:?}: {k} is set by the daemon (record = [...] chooses the outputs, [] none)"
                    ),
                ));
            }
            _ => flag_args(&k, value.get_ref(), &mut argv)
                .map_err(|m| err(vspan, format!("{k}: {m}")))?,
        }
    }
    argv.extend(positional);
    if !trailing.is_empty() {
        argv.push("--".into());
        argv.extend(trailing);
    }
    let record = record.unwrap_or_else(|| {
        vec![if kind == "capture" {
            Record::Pcapng
        } else {
            Record::Json
        }]
    });
    Ok(Job {
        name,
        kind,
        argv,
        record,
        stdout,
        at,
    })
}

fn strings(v: &toml::Value) -> Option<Vec<String>> {
    match v {
        toml::Value::String(s) => Some(vec![s.clone()]),
        toml::Value::Array(a) => a
            .iter()
            .map(|x| match x {
                toml::Value::String(s) => Some(s.clone()),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

/// `--key value` (repeated for arrays; a bare `--key` for true; nothing for false).
fn flag_args(key: &str, v: &toml::Value, argv: &mut Vec<String>) -> Result<(), String> {
    let flag = format!("--{key}");
    let scalar = |x: &toml::Value| -> Result<String, String> {
        match x {
            toml::Value::String(s) => Ok(s.clone()),
            toml::Value::Integer(i) => Ok(i.to_string()),
            toml::Value::Float(f) => Ok(f.to_string()),
            _ => Err("a string, a number, a boolean or a list of them".into()),
        }
    };
    match v {
        toml::Value::Boolean(true) => argv.push(flag),
        toml::Value::Boolean(false) => {}
        toml::Value::Array(items) => {
            for x in items {
                argv.push(flag.clone());
                argv.push(scalar(x)?);
            }
        }
        x => {
            argv.push(flag);
            argv.push(scalar(x)?);
        }
    }
    Ok(())
}

/// Checks a job's command line with the CLI parser; the error names the job and its place.
pub fn check_job(job: &Job) -> Result<crate::cli::Command, ConfigError> {
    use clap::Parser as _;
    let argv = std::iter::once("capagent".to_string()).chain(job.argv.iter().cloned());
    crate::cli::Cli::try_parse_from(argv)
        .map(|c| c.command)
        .map_err(|e| {
            let text = e.to_string();
            let first = text
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("invalid")
                .trim()
                .trim_start_matches("error: ")
                .to_string();
            ConfigError {
                line: job.at.0,
                column: job.at.1,
                message: format!("job {:?}: {first}", job.name),
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
[daemon]
output_dir = "/tmp/capagent-test"
metrics = "127.0.0.1:9999"
rotate_size = "10MiB"
rotate_age = "15m"
keep = 5
keep_age = "7d"

[[job]]
name = "lo"
kind = "capture"
interface = ["lo", "eth0"]
snaplen = 96
record = ["pcapng"]

[[job]]
name = "curl"
kind = "trace"
follow_forks = true
no_follow_forks = false
command = ["curl", "-s", "http://127.0.0.1/"]
stdout = true
"#;

    #[test]
    fn parses_daemon_and_jobs_into_argv() {
        let c = Config::parse(EXAMPLE).unwrap();
        assert_eq!(c.output_dir, "/tmp/capagent-test");
        assert_eq!(c.metrics, Some("127.0.0.1:9999".parse().unwrap()));
        assert_eq!(
            c.rotation,
            Rotation {
                max_bytes: 10 << 20,
                max_age: Some(Duration::from_secs(900)),
                keep: 5,
                keep_age: Some(Duration::from_secs(7 * 86400)),
            }
        );
        assert_eq!(c.jobs.len(), 2);
        assert_eq!(
            c.jobs[0].argv,
            [
                "capture",
                "--interface",
                "lo",
                "--interface",
                "eth0",
                "--snaplen",
                "96"
            ]
        );
        assert_eq!(c.jobs[0].record, [Record::Pcapng]);
        assert_eq!(c.jobs[0].at, (10, 1));
        assert_eq!(
            c.jobs[1].argv,
            [
                "trace",
                "--follow-forks",
                "--",
                "curl",
                "-s",
                "http://127.0.0.1/"
            ]
        );
        assert_eq!(c.jobs[1].record, [Record::Json]);
        assert_eq!(c.jobs[1].kind, "trace");
        let d = Config::parse(
            "[[job]]\nname = \"a\"\nkind = \"capture\"\ninterface = \"lo\"\n[[job]]\nname = \"b\"\nkind = \"dns\"\nanswer = \"127.0.0.1\"\nrecord = []\n",
        )
        .unwrap();
        assert_eq!(d.jobs[0].record, [Record::Pcapng]);
        assert!(d.jobs[1].record.is_empty());
        assert!(c.jobs[1].stdout);
        for j in &c.jobs {
            check_job(j).unwrap();
        }
    }

    #[test]
    fn errors_have_line_and_column() {
        let e = Config::parse("[daemon]\nkeep = \"x\"\n").unwrap_err();
        assert_eq!((e.line, e.column), (2, 8), "{e}");
        let e = Config::parse("[[job]]\nname = \"a\"\nkind = \"nope\"\n").unwrap_err();
        assert_eq!((e.line, e.column), (3, 8));
        assert!(e.message.contains("unknown kind \"nope\""), "{e}");
        let e =
            Config::parse("[[job]]\nname = \"a\"\nkind = \"trace\"\noutput = \"x\"\n").unwrap_err();
        assert_eq!((e.line, e.column), (4, 1));
        let e = Config::parse("[daemon]\nrotate_size = \"12 parsecs\"\n").unwrap_err();
        assert_eq!(e.line, 2);
        let dup =
            "[[job]]\nname = \"a\"\nkind = \"trace\"\n[[job]]\nname = \"a\"\nkind = \"trace\"\n";
        let e = Config::parse(dup).unwrap_err();
        assert!(e.message.contains("used twice (first at line 1)"), "{e}");
        let two = "[[job]]\nname = \"a\"\nkind = \"intercept\"\n\n[[job]]\nname = \"b\"\nkind = \"intercept\"\n";
        let e = Config::parse(two).unwrap_err();
        assert_eq!((e.line, e.column), (5, 1));
        assert!(e.message.contains("one intercept job per daemon"), "{e}");
        let e = Config::parse("[[job]]\nname = \"../x\"\nkind = \"trace\"\n").unwrap_err();
        assert_eq!(e.line, 2);
        let e = Config::parse("[[job]\n").unwrap_err();
        assert_eq!(e.line, 1);
    }

    #[test]
    fn bad_flags_are_reported_by_the_cli_parser_at_the_job() {
        let c = Config::parse("\n[[job]]\nname = \"a\"\nkind = \"capture\"\nsnaplen = \"many\"\n")
            .unwrap();
        let e = check_job(&c.jobs[0]).unwrap_err();
        assert_eq!((e.line, e.column), (2, 1));
        assert!(e.message.starts_with("job \"a\": "), "{e}");
        assert!(e.message.contains("many"), "{e}");
        let c =
            Config::parse("[[job]]\nname = \"a\"\nkind = \"trace\"\nno_such_flag = 1\n").unwrap();
        let e = check_job(&c.jobs[0]).unwrap_err();
        assert!(e.message.contains("--no-such-flag"), "{e}");
        let c = Config::parse(
            "[[job]]\nname = \"d\"\nkind = \"dns\"\nanswer = \"127.0.0.1\"\n\"--name\" = [\"a.example\", \"*.b.example\"]\n",
        )
        .unwrap();
        assert_eq!(
            c.jobs[0].argv,
            [
                "dns",
                "--name",
                "a.example",
                "--name",
                "*.b.example",
                "--answer",
                "127.0.0.1"
            ]
        );
        check_job(&c.jobs[0]).unwrap();
        let e = Config::parse("[[job]]\nname = \"d\"\nkind = \"dns\"\n\"--write\" = \"x\"\n")
            .unwrap_err();
        assert_eq!((e.line, e.column), (4, 1), "{e}");
    }

    #[test]
    fn sizes_durations_positions() {
        assert_eq!(parse_size("100MiB"), Some(100 << 20));
        assert_eq!(parse_size("1GB"), Some(1_000_000_000));
        assert_eq!(parse_size("7"), Some(7));
        assert_eq!(parse_size("MiB"), None);
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("2d"), Some(Duration::from_secs(172800)));
        assert_eq!(parse_duration("1y"), None);
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("é\nx", 3), (2, 1));
    }
}
