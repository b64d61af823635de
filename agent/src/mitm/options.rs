//! The TLS interception flags every proxy shares ([`TlsArgs`], flattened into
//! `capagent proxy forward|socks|http|reverse` and `capagent intercept`), and the options
//! they make ([`TlsOptions`]).
//!
//! Flags whose behaviour is not built yet are refused with a one-line "not implemented yet"
//! error rather than ignored: a user who asks for raw TLS in pcapng must not get
//! interception without it.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use super::passthrough::{Pattern, PatternError};

/// What pcapng holds of an intercepted connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum PcapTls {
    /// The plaintext stream (as `trace --tls` writes it).
    #[default]
    Plain,
    /// The real TLS bytes of both legs, with a Decryption Secrets Block.
    Raw,
}

/// `--tls` and the flags that go with it.
#[derive(Args, Debug, Clone, Default, PartialEq, Eq)]
#[command(next_help_heading = "TLS interception")]
pub struct TlsArgs {
    /// Intercept TLS: a connection whose first client bytes are a ClientHello (or whose
    /// client sends one later, STARTTLS) is answered with a certificate signed by capagent's
    /// CA and re-encrypted to the real server; the plaintext both ways is recorded.
    #[arg(long)]
    pub tls: bool,
    /// The CA's directory (ca.crt, ca.key; created on first use when missing). Default:
    /// /var/lib/capagent/ca for root, else $XDG_DATA_HOME/capagent/ca.
    #[arg(long, value_name = "DIR", requires = "tls")]
    pub ca_dir: Option<PathBuf>,
    /// Relay connections to hosts matching PATTERN untouched: a host glob (`*`, `?`;
    /// `*.example.com` matches example.com too) against the SNI (else the CONNECT/SOCKS
    /// host), or a CIDR / IP address against the target's address; repeatable.
    #[arg(long = "tls-passthrough", value_name = "PATTERN", requires = "tls")]
    pub tls_passthrough: Vec<String>,
    /// Do not verify the real servers' certificates (their subject is still recorded).
    #[arg(long, requires = "tls")]
    pub insecure: bool,
    /// Also trust the CA certificates in FILE (PEM) for the real servers, besides the
    /// system's roots.
    #[arg(long, value_name = "FILE", requires = "tls")]
    pub upstream_ca: Option<PathBuf>,
    /// Write the TLS secrets of both legs to FILE (NSS key log format, SSLKEYLOGFILE).
    #[arg(long, value_name = "FILE", requires = "tls")]
    pub keylog: Option<PathBuf>,
    /// What pcapng holds of intercepted connections: the plaintext (default) or the real
    /// TLS bytes with their secrets.
    #[arg(long, value_enum, value_name = "plain|raw", requires = "tls")]
    pub pcap_tls: Option<PcapTls>,
}

/// What `--tls` and its flags ask for (see [`TlsArgs`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// `--ca-dir` (None: the CA's default directory).
    pub ca_dir: Option<PathBuf>,
    /// `--insecure`.
    pub insecure: bool,
    /// `--upstream-ca`.
    pub upstream_ca: Option<PathBuf>,
    /// `--keylog`.
    pub keylog: Option<PathBuf>,
    /// `--pcap-tls`.
    pub pcap_tls: PcapTls,
    /// `--tls-passthrough`, in the order given.
    pub passthrough: Vec<Pattern>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OptionsError {
    #[error(transparent)]
    Passthrough(#[from] PatternError),
}

impl TlsArgs {
    /// The options, or None without `--tls`; an error for a bad `--tls-passthrough`.
    pub fn options(&self) -> Result<Option<TlsOptions>, OptionsError> {
        if !self.tls {
            return Ok(None);
        }
        Ok(Some(TlsOptions {
            ca_dir: self.ca_dir.clone(),
            insecure: self.insecure,
            upstream_ca: self.upstream_ca.clone(),
            keylog: self.keylog.clone(),
            pcap_tls: self.pcap_tls.unwrap_or_default(),
            passthrough: self
                .tls_passthrough
                .iter()
                .map(|p| Pattern::parse(p))
                .collect::<Result<_, _>>()?,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cmd {
        #[command(flatten)]
        tls: TlsArgs,
    }

    fn parse(args: &[&str]) -> Result<TlsArgs, clap::Error> {
        Cmd::try_parse_from(std::iter::once("x").chain(args.iter().copied())).map(|c| c.tls)
    }

    #[test]
    fn flags() {
        assert_eq!(parse(&[]).unwrap().options(), Ok(None));
        let a = parse(&[
            "--tls",
            "--ca-dir",
            "/tmp/ca",
            "--insecure",
            "--upstream-ca",
            "/tmp/up.pem",
            "--keylog",
            "/tmp/keys.log",
            "--pcap-tls",
            "plain",
            "--tls-passthrough",
            "*.example.com",
            "--tls-passthrough",
            "10.0.0.0/8",
        ])
        .unwrap();
        assert_eq!(
            a.options(),
            Ok(Some(TlsOptions {
                ca_dir: Some("/tmp/ca".into()),
                insecure: true,
                upstream_ca: Some("/tmp/up.pem".into()),
                keylog: Some("/tmp/keys.log".into()),
                pcap_tls: PcapTls::Plain,
                passthrough: vec![
                    Pattern::Host("*.example.com".into()),
                    Pattern::Net("10.0.0.0/8".parse().unwrap()),
                ],
            }))
        );
        // A bad pattern: one line saying which.
        assert_eq!(
            parse(&["--tls", "--tls-passthrough", "10.0.0.0/33"])
                .unwrap()
                .options()
                .unwrap_err()
                .to_string(),
            "--tls-passthrough \"10.0.0.0/33\": not a host glob (letters, digits, '-', '.', '_', '*', '?'), a CIDR or an IP address"
        );
        // The other flags need --tls.
        assert!(parse(&["--insecure"]).is_err());
        assert!(parse(&["--ca-dir", "/tmp/ca"]).is_err());
        assert!(parse(&["--keylog", "/tmp/k"]).is_err());
        assert!(parse(&["--tls-passthrough", "*"]).is_err());
    }
}
