//! The trust stores `capagent ca install` puts capagent's CA into and `ca uninstall` takes it
//! out of: the system store (Debian's `update-ca-certificates`), NSS databases (Chrome's
//! `~/.pki/nssdb`, Firefox profiles; `certutil`) and the JDK's `cacerts` (`keytool`).
//!
//! Every path is under a root (`/` but for tests, which install into a copy of the store
//! in a temporary directory: `update-ca-certificates` is told every directory it uses).
//! The tools do the work (they know their stores' formats and hooks); this only finds the
//! stores and runs them.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The CA's file name in the system store (`/usr/local/share/ca-certificates/`).
pub const SYSTEM_NAME: &str = "capagent.crt";
/// The CA's nickname in NSS databases and its alias in Java keystores.
pub const ALIAS: &str = "capagent";
/// The alias Debian's ca-certificates-java hook gives the system store's copy.
const DEBIAN_JAVA_ALIAS: &str = "debian:capagent.pem";
/// The JDK's default keystore password (cacerts ships with it).
const JAVA_STOREPASS: &str = "changeit";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "{0}: permission denied (the system store needs root: sudo capagent ca install/uninstall)"
    )]
    NeedsRoot(PathBuf),
    #[error(
        "update-ca-certificates not found (Debian/Ubuntu package ca-certificates); elsewhere \
         copy the CA certificate into the system's anchors (Fedora: /etc/pki/ca-trust/source/anchors/, then update-ca-trust)"
    )]
    NoUpdateTool,
    #[error("{tool} failed ({status}): {stderr}")]
    Tool {
        tool: String,
        status: String,
        stderr: String,
    },
}

fn io_err(path: &Path, source: io::Error) -> StoreError {
    if source.kind() == io::ErrorKind::PermissionDenied {
        StoreError::NeedsRoot(path.to_path_buf())
    } else {
        StoreError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Where the stores are: `root` prefixes every path (`/` normally).
#[derive(Clone, Debug)]
pub struct Stores {
    pub root: PathBuf,
}

impl Stores {
    pub fn new(root: Option<&Path>) -> Stores {
        Stores {
            root: root.map_or_else(|| PathBuf::from("/"), Path::to_path_buf),
        }
    }

    fn under(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    fn is_real_root(&self) -> bool {
        self.root == Path::new("/")
    }

    /// The CA's copy in the system store.
    pub fn system_cert(&self) -> PathBuf {
        self.under("/usr/local/share/ca-certificates")
            .join(SYSTEM_NAME)
    }

    /// The bundle `update-ca-certificates` writes (what OpenSSL, curl, Python... read).
    pub fn system_bundle(&self) -> PathBuf {
        self.under("/etc/ssl/certs/ca-certificates.crt")
    }

    /// Copies the CA into the system store and runs update-ca-certificates. Returns what
    /// to tell the user.
    pub fn install_system(&self, ca_pem: &str) -> Result<String, StoreError> {
        let tool = update_tool()?;
        let dest = self.system_cert();
        let dir = dest.parent().expect("a directory");
        fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let already = fs::read_to_string(&dest).is_ok_and(|s| s == ca_pem);
        if !already {
            // Written beside, then renamed: the store never holds half a certificate.
            let tmp = dir.join(format!(".{SYSTEM_NAME}.tmp"));
            fs::write(&tmp, ca_pem).map_err(|e| io_err(&tmp, e))?;
            fs::rename(&tmp, &dest).map_err(|e| io_err(&dest, e))?;
        }
        let summary = self.update(&tool, false)?;
        let bundle = self.system_bundle();
        let in_bundle = fs::read_to_string(&bundle).is_ok_and(|b| b.contains(ca_pem.trim()));
        Ok(format!(
            "system store: {} {} ({summary}){}",
            if already { "kept" } else { "installed" },
            dest.display(),
            if in_bundle {
                format!("; in {}", bundle.display())
            } else {
                format!(
                    "; NOT found in {} (check update-ca-certificates)",
                    bundle.display()
                )
            }
        ))
    }

    /// Removes the CA from the system store (update-ca-certificates --fresh drops its
    /// links). Returns what to tell the user.
    pub fn uninstall_system(&self) -> Result<String, StoreError> {
        let dest = self.system_cert();
        match fs::remove_file(&dest) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(format!("system store: {} was not there", dest.display()));
            }
            Err(e) => return Err(io_err(&dest, e)),
        }
        let tool = update_tool()?;
        let summary = self.update(&tool, true)?;
        let mut said = format!("system store: removed {} ({summary})", dest.display());
        // Debian's Java hook imported the system store's copy into cacerts under its own
        // alias; a removal does not reach it (the hook only hears of additions here).
        if let Some(keystore) = self.java_keystore()
            && java_has(&keystore, DEBIAN_JAVA_ALIAS)?
        {
            java_delete(&keystore, DEBIAN_JAVA_ALIAS)?;
            said.push_str(&format!(
                "; removed {DEBIAN_JAVA_ALIAS} from {}",
                keystore.display()
            ));
        }
        Ok(said)
    }

    /// Runs update-ca-certificates on this root's directories.
    fn update(&self, tool: &Path, fresh: bool) -> Result<String, StoreError> {
        let mut cmd = Command::new(tool);
        if fresh {
            cmd.arg("--fresh");
        }
        if !self.is_real_root() {
            for (opt, dir) in [
                ("--certsconf", "/etc/ca-certificates.conf"),
                ("--certsdir", "/usr/share/ca-certificates"),
                ("--localcertsdir", "/usr/local/share/ca-certificates"),
                ("--etccertsdir", "/etc/ssl/certs"),
                ("--hooksdir", "/etc/ca-certificates/update.d"),
            ] {
                cmd.arg(opt).arg(self.under(dir));
            }
        }
        let out = run(&mut cmd, "update-ca-certificates")?;
        if fresh {
            // It re-adds every certificate: its count says nothing of the removal.
            return Ok("update-ca-certificates --fresh".to_string());
        }
        // Its last lines: "N added, M removed; done." (then the hooks).
        let stdout = String::from_utf8_lossy(&out.stdout);
        Ok(stdout.lines().find(|l| l.contains(" added, ")).map_or_else(
            || "updated".to_string(),
            |l| format!("update-ca-certificates: {}", l.trim_end_matches("; done.")),
        ))
    }

    /// The JDK's cacerts (under the root), when keytool is installed: `$JAVA_HOME` or
    /// keytool's own JDK, `lib/security/cacerts` with its links followed (Debian's is
    /// /etc/ssl/certs/java/cacerts).
    pub fn java_keystore(&self) -> Option<PathBuf> {
        let keytool = which("keytool")?;
        let java_home = std::env::var_os("JAVA_HOME")
            .map(PathBuf::from)
            .or_else(|| {
                let real = fs::canonicalize(&keytool).ok()?;
                Some(real.parent()?.parent()?.to_path_buf())
            })?;
        let cacerts = java_home.join("lib/security/cacerts");
        let cacerts = fs::canonicalize(&cacerts).unwrap_or(cacerts);
        let path = self.under(cacerts.to_str()?);
        path.exists().then_some(path)
    }

    /// Imports the CA into the JDK's cacerts as alias `capagent` (replacing an older one).
    pub fn install_java(&self, ca_path: &Path) -> Result<String, StoreError> {
        let Some(keystore) = self.java_keystore() else {
            return Ok("Java: keytool or the JDK's cacerts not found; skipped".to_string());
        };
        if java_has(&keystore, ALIAS)? {
            java_delete(&keystore, ALIAS)?;
        }
        let mut cmd = keytool(&keystore);
        cmd.args(["-importcert", "-noprompt", "-alias", ALIAS, "-file"])
            .arg(ca_path);
        run(&mut cmd, "keytool -importcert")?;
        Ok(format!(
            "Java: imported as alias {ALIAS} into {}",
            keystore.display()
        ))
    }

    pub fn uninstall_java(&self) -> Result<String, StoreError> {
        let Some(keystore) = self.java_keystore() else {
            return Ok("Java: keytool or the JDK's cacerts not found; skipped".to_string());
        };
        if !java_has(&keystore, ALIAS)? {
            return Ok(format!("Java: no alias {ALIAS} in {}", keystore.display()));
        }
        java_delete(&keystore, ALIAS)?;
        Ok(format!(
            "Java: removed alias {ALIAS} from {}",
            keystore.display()
        ))
    }

    /// The NSS databases of `home` (under the root): Chrome's/Chromium's ~/.pki/nssdb
    /// (made when missing: Chrome reads it once it exists) and every Firefox profile
    /// (cert9.db: the sql: format).
    fn nss_dbs(&self, home: &Path) -> Vec<PathBuf> {
        let home = self.under(home.to_str().unwrap_or("/nonexistent"));
        let mut dbs = vec![home.join(".pki/nssdb")];
        for profiles in [".mozilla/firefox", "snap/firefox/common/.mozilla/firefox"] {
            let Ok(entries) = fs::read_dir(home.join(profiles)) else {
                continue;
            };
            let mut found: Vec<PathBuf> = entries
                .filter_map(|e| Some(e.ok()?.path()))
                .filter(|p| p.join("cert9.db").exists())
                .collect();
            found.sort();
            dbs.extend(found);
        }
        dbs
    }

    /// Adds the CA to the NSS databases of `home` (trusted to issue server certificates);
    /// certutil runs as `user` when given (root installing for the user who ran sudo: the
    /// databases keep their owner).
    pub fn install_nss(
        &self,
        home: &Path,
        user: Option<&str>,
        ca_path: &Path,
    ) -> Result<String, StoreError> {
        let Some(certutil) = which("certutil") else {
            return Ok(
                "NSS: certutil not found (Debian: apt install libnss3-tools); skipped".to_string(),
            );
        };
        let mut done = Vec::new();
        for db in self.nss_dbs(home) {
            let sql = format!("sql:{}", db.display());
            if !db.join("cert9.db").exists() {
                let mut cmd = as_user(user, "mkdir");
                cmd.arg("-p").arg(&db);
                run(&mut cmd, "mkdir")?;
                let mut cmd = as_user(user, &certutil);
                cmd.args(["-N", "--empty-password", "-d", &sql]);
                run(&mut cmd, "certutil -N")?;
            }
            let mut cmd = as_user(user, &certutil);
            cmd.args(["-A", "-n", ALIAS, "-t", "C,,", "-d", &sql, "-i"])
                .arg(ca_path);
            run(&mut cmd, "certutil -A")?;
            done.push(db.display().to_string());
        }
        Ok(format!(
            "NSS: added {ALIAS} to {} (restart the browser)",
            done.join(", ")
        ))
    }

    pub fn uninstall_nss(&self, home: &Path, user: Option<&str>) -> Result<String, StoreError> {
        let Some(certutil) = which("certutil") else {
            return Ok(
                "NSS: certutil not found (Debian: apt install libnss3-tools); skipped".to_string(),
            );
        };
        let mut done = Vec::new();
        for db in self.nss_dbs(home) {
            if !db.join("cert9.db").exists() {
                continue;
            }
            let sql = format!("sql:{}", db.display());
            // Listed first: deleting a nickname that is not there is an error.
            let listed = as_user(user, &certutil)
                .args(["-L", "-n", ALIAS, "-d", &sql])
                .output()
                .is_ok_and(|o| o.status.success());
            if listed {
                let mut cmd = as_user(user, &certutil);
                cmd.args(["-D", "-n", ALIAS, "-d", &sql]);
                run(&mut cmd, "certutil -D")?;
                done.push(db.display().to_string());
            }
        }
        Ok(if done.is_empty() {
            format!("NSS: no {ALIAS} in any database")
        } else {
            format!("NSS: removed {ALIAS} from {}", done.join(", "))
        })
    }
}

/// `program`, run as `user` when given (runuser, util-linux).
fn as_user(user: Option<&str>, program: impl AsRef<std::ffi::OsStr>) -> Command {
    match user {
        None => Command::new(program),
        Some(user) => {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", user, "--"]).arg(program);
            cmd
        }
    }
}

fn update_tool() -> Result<PathBuf, StoreError> {
    which("update-ca-certificates").ok_or(StoreError::NoUpdateTool)
}

fn keytool(keystore: &Path) -> Command {
    let mut cmd = Command::new("keytool");
    cmd.arg("-keystore")
        .arg(keystore)
        .args(["-storepass", JAVA_STOREPASS]);
    cmd
}

fn java_has(keystore: &Path, alias: &str) -> Result<bool, StoreError> {
    let mut cmd = keytool(keystore);
    cmd.args(["-list", "-alias", alias]);
    let out = cmd.output().map_err(|e| io_err(Path::new("keytool"), e))?;
    Ok(out.status.success())
}

fn java_delete(keystore: &Path, alias: &str) -> Result<(), StoreError> {
    let mut cmd = keytool(keystore);
    cmd.args(["-delete", "-alias", alias]);
    run(&mut cmd, "keytool -delete").map(|_| ())
}

/// Runs a tool; a failure is an error with its first line of complaint.
fn run(cmd: &mut Command, what: &str) -> Result<Output, StoreError> {
    let out = cmd.output().map_err(|e| io_err(Path::new(what), e))?;
    if out.status.success() {
        return Ok(out);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let first = stderr
        .lines()
        .chain(stdout.lines())
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("no message")
        .to_string();
    Err(StoreError::Tool {
        tool: what.to_string(),
        status: out.status.to_string(),
        stderr: first,
    })
}

/// A program on $PATH, or in the sbin directories (which a user's PATH may lack).
fn which(name: &str) -> Option<PathBuf> {
    which::which(name)
        .or_else(|_| which::which_in(name, Some("/usr/sbin:/sbin"), "/"))
        .ok()
}
