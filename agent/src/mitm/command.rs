//! `capagent ca init|show|install|uninstall`: making capagent's CA, describing it, and
//! putting it into (or taking it out of) the trust stores of this machine.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::{Args, Subcommand};

use super::ca::Ca;
use super::store::Stores;

#[derive(Args, Debug, Clone)]
#[command(
    after_help = "Examples:\n  capagent ca init\n  capagent ca show\n  sudo capagent ca install --nss --java\n  curl --cacert \"$(capagent ca show --path)\" https://example.com/   # through a --tls proxy"
)]
pub struct CaArgs {
    #[command(subcommand)]
    pub action: CaCommand,
}

#[derive(Subcommand, Debug, Clone)]
pub enum CaCommand {
    /// Create capagent's CA (once): DIR/ca.crt (PEM) and DIR/ca.key (PKCS#8 PEM, mode 0600).
    Init(InitArgs),
    /// The CA's path, SHA-256 fingerprint, validity, subject, and how to trust it.
    Show(ShowArgs),
    /// Trust the CA system-wide (Debian: /usr/local/share/ca-certificates and
    /// update-ca-certificates; needs root), and optionally in NSS and Java.
    Install(StoreArgs),
    /// Remove what `ca install` added (same options).
    Uninstall(StoreArgs),
}

/// The CA directory.
#[derive(Args, Debug, Clone, Default)]
pub struct CaDirArg {
    /// The CA directory (default: /var/lib/capagent/ca for root, else
    /// $XDG_DATA_HOME/capagent/ca, i.e. ~/.local/share/capagent/ca).
    #[arg(long, value_name = "DIR")]
    pub ca_dir: Option<PathBuf>,
}

impl CaDirArg {
    pub fn dir(&self) -> PathBuf {
        self.ca_dir.clone().unwrap_or_else(Ca::default_dir)
    }
}

#[derive(Args, Debug, Clone)]
pub struct InitArgs {
    #[command(flatten)]
    pub dir: CaDirArg,
    /// An RSA 2048 CA (and RSA leaves) instead of ECDSA P-256, for clients without ECDSA.
    #[arg(long)]
    pub rsa: bool,
}

#[derive(Args, Debug, Clone)]
pub struct ShowArgs {
    #[command(flatten)]
    pub dir: CaDirArg,
    /// Print only the certificate's path (for scripts: curl --cacert "$(capagent ca show --path)").
    #[arg(long)]
    pub path: bool,
}

#[derive(Args, Debug, Clone)]
pub struct StoreArgs {
    #[command(flatten)]
    pub dir: CaDirArg,
    /// Also NSS databases (Chrome/Chromium ~/.pki/nssdb, Firefox profiles) with certutil
    /// (libnss3-tools), for the user who ran sudo.
    #[arg(long)]
    pub nss: bool,
    /// Also the JDK's cacerts keystore with keytool (alias capagent).
    #[arg(long)]
    pub java: bool,
    /// Prefix every store path with DIR (tests: a copy of the stores).
    #[arg(long, value_name = "DIR", hide = true)]
    pub root: Option<PathBuf>,
}

pub fn run(args: &CaArgs) -> anyhow::Result<()> {
    match &args.action {
        CaCommand::Init(a) => {
            let dir = a.dir.dir();
            let ca = Ca::init(&dir, a.rsa)?;
            println!("created {} CA in {}", key_type(&ca), dir.display());
            print!("{}", describe(&ca));
            Ok(())
        }
        CaCommand::Show(a) => {
            let ca = Ca::load(&a.dir.dir())?;
            if a.path {
                println!("{}", ca.cert_path().display());
            } else {
                print!("{}", describe(&ca));
            }
            Ok(())
        }
        CaCommand::Install(a) => {
            let ca = Ca::load(&a.dir.dir())?;
            let stores = Stores::new(a.root.as_deref());
            println!("{}", stores.install_system(ca.cert_pem())?);
            if a.nss {
                let (home, user) = nss_home(&stores)?;
                println!(
                    "{}",
                    stores.install_nss(&home, user.as_deref(), ca.cert_path())?
                );
            }
            if a.java {
                println!("{}", stores.install_java(ca.cert_path())?);
            }
            Ok(())
        }
        CaCommand::Uninstall(a) => {
            let stores = Stores::new(a.root.as_deref());
            println!("{}", stores.uninstall_system()?);
            if a.nss {
                let (home, user) = nss_home(&stores)?;
                println!("{}", stores.uninstall_nss(&home, user.as_deref())?);
            }
            if a.java {
                println!("{}", stores.uninstall_java()?);
            }
            Ok(())
        }
    }
}

fn key_type(ca: &Ca) -> &'static str {
    if ca.is_rsa() {
        "RSA 2048"
    } else {
        "ECDSA P-256"
    }
}

/// `YYYY-MM-DD HH:MM:SS UTC`.
fn utc(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let iso = crate::output::json::rfc3339(secs * 1_000_000_000);
    // 2026-12-03T12:00:00.000000000Z
    format!("{} {} UTC", &iso[..10], &iso[11..19])
}

/// What `ca show` (and `ca init`) print.
pub fn describe(ca: &Ca) -> String {
    let crt = ca.cert_path().display().to_string();
    format!(
        "certificate: {crt}\n\
         key:         {key}\n\
         subject:     {subject}\n\
         key type:    {kind}\n\
         SHA-256:     {fp}\n\
         valid:       {from} to {to}\n\
         \n\
         Trust it (clients of a --tls proxy must, or they refuse its certificates):\n\
         \x20 system store:  sudo capagent ca install [--nss] [--java]   (curl, OpenSSL, Go, git...)\n\
         \x20 curl:          curl --cacert {crt} ...\n\
         \x20 Python:        REQUESTS_CA_BUNDLE={crt} (requests), SSL_CERT_FILE={crt} (ssl, urllib)\n\
         \x20 Node:          NODE_EXTRA_CA_CERTS={crt}\n\
         \x20 git:           git -c http.sslCAInfo={crt} ...\n\
         \x20 Java, Firefox/Chrome, Android: see docs/tls-interception.md\n",
        key = ca.key_path().display(),
        subject = ca.subject(),
        kind = key_type(ca),
        fp = ca.fingerprint(),
        from = utc(ca.not_before()),
        to = utc(ca.not_after()),
    )
}

/// The home whose NSS databases get the CA, and the user to run certutil as: the user
/// who ran sudo (`SUDO_USER`), else $HOME.
fn nss_home(stores: &Stores) -> anyhow::Result<(PathBuf, Option<String>)> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if root
        && stores.root == Path::new("/")
        && let Some(user) = std::env::var("SUDO_USER").ok().filter(|u| u != "root")
    {
        let out = std::process::Command::new("getent")
            .args(["passwd", &user])
            .output()
            .context("getent passwd")?;
        let line = String::from_utf8_lossy(&out.stdout);
        let home = line
            .trim_end()
            .split(':')
            .nth(5)
            .filter(|h| !h.is_empty())
            .with_context(|| format!("no home directory for SUDO_USER {user}"))?;
        return Ok((PathBuf::from(home), Some(user)));
    }
    let home = std::env::var_os("HOME").context("HOME is not set (the NSS databases are in it)")?;
    Ok((PathBuf::from(home), None))
}
