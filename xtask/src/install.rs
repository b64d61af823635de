//! `cargo xtask install`: the capagent binary, its systemd unit and the example
//! configuration, into place.
//!
//! - `PREFIX/bin/capagent` (built with `cargo build --release`, eBPF programs included, unless
//!   `--bin` names one);
//! - `PREFIX/lib/systemd/system/capagent.service`, from `packaging/capagent.service` with the
//!   binary and configuration paths of this installation;
//! - `SYSCONFDIR/capagent/capagent.toml`, from `packaging/capagent.toml`, unless a
//!   configuration is already there (it is never overwritten).
//!
//! `--root DIR` stages everything under DIR (like DESTDIR): the paths written inside the
//! files stay those of the real installation.
use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::util;

/// Paths the repository's unit file names, replaced at installation.
const UNIT_BIN: &str = "/usr/local/bin/capagent";
const UNIT_CONFIG: &str = "/etc/capagent/capagent.toml";

#[derive(Args, Debug)]
pub struct InstallArgs {
    /// Installation prefix: the binary goes to PREFIX/bin, the unit to
    /// PREFIX/lib/systemd/system.
    #[arg(long, default_value = "/usr/local", value_name = "DIR")]
    pub prefix: PathBuf,
    /// Configuration directory: the example configuration goes to
    /// SYSCONFDIR/capagent/capagent.toml (an existing one is kept).
    #[arg(long, default_value = "/etc", value_name = "DIR")]
    pub sysconfdir: PathBuf,
    /// Stage the files under this directory (DESTDIR); the paths inside them stay the same.
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Install this capagent binary instead of building one.
    #[arg(long, value_name = "FILE")]
    pub bin: Option<PathBuf>,
}

/// The repository's unit with the paths of an installation.
pub fn unit_for(template: &str, prefix: &Path, sysconfdir: &Path) -> String {
    template
        .replace(UNIT_BIN, &prefix.join("bin/capagent").display().to_string())
        .replace(
            UNIT_CONFIG,
            &sysconfdir
                .join("capagent/capagent.toml")
                .display()
                .to_string(),
        )
}

/// `path` under `root` (absolute paths are taken relative to it).
fn staged(root: Option<&Path>, path: &Path) -> PathBuf {
    match root {
        Some(r) => r.join(path.strip_prefix("/").unwrap_or(path)),
        None => path.to_path_buf(),
    }
}

fn write(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    // A running binary cannot be written over (ETXTBSY): replace the file instead.
    let tmp = path.with_extension("xtask-new");
    fs::write(&tmp, contents).with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))?;
    fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!("installed {}", path.display());
    Ok(())
}

/// Installs `bin` and the packaging files; returns the installed paths (binary, unit,
/// configuration).
pub fn install_files(args: &InstallArgs, bin: &Path) -> Result<[PathBuf; 3]> {
    if !args.prefix.is_absolute() || !args.sysconfdir.is_absolute() {
        bail!("--prefix and --sysconfdir must be absolute paths");
    }
    let packaging = util::workspace_root().join("packaging");
    let unit = fs::read_to_string(packaging.join("capagent.service"))
        .context("reading packaging/capagent.service")?;
    let config =
        fs::read(packaging.join("capagent.toml")).context("reading packaging/capagent.toml")?;
    let root = args.root.as_deref();

    let bin_to = staged(root, &args.prefix.join("bin/capagent"));
    let binary = fs::read(bin).with_context(|| format!("cannot read {}", bin.display()))?;
    write(&bin_to, &binary, 0o755)?;

    let unit_to = staged(
        root,
        &args.prefix.join("lib/systemd/system/capagent.service"),
    );
    write(
        &unit_to,
        unit_for(&unit, &args.prefix, &args.sysconfdir).as_bytes(),
        0o644,
    )?;

    let config_to = staged(root, &args.sysconfdir.join("capagent/capagent.toml"));
    if config_to.exists() {
        eprintln!("kept {} (it exists)", config_to.display());
    } else {
        // Job flags may hold credentials (--auth): readable by root only.
        write(&config_to, &config, 0o600)?;
    }
    Ok([bin_to, unit_to, config_to])
}

pub fn install(args: InstallArgs) -> Result<()> {
    let bin = match &args.bin {
        Some(b) => b.clone(),
        None => {
            let built = util::build_bins("capagent", &["capagent"], true)?;
            built["capagent"].clone()
        }
    };
    let [_, unit, config] = install_files(&args, &bin)?;
    if args.root.is_none() {
        eprintln!(
            "next: edit {}, then `systemctl daemon-reload && systemctl enable --now capagent` ({})",
            config.display(),
            unit.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn unit_paths_follow_the_installation() {
        let u = unit_for(
            "ExecStart=/usr/local/bin/capagent daemon --config /etc/capagent/capagent.toml\n",
            Path::new("/opt/ca"),
            Path::new("/srv/etc"),
        );
        assert_eq!(
            u,
            "ExecStart=/opt/ca/bin/capagent daemon --config /srv/etc/capagent/capagent.toml\n"
        );
        assert_eq!(
            staged(
                Some(Path::new("/tmp/r")),
                Path::new("/usr/local/bin/capagent")
            ),
            Path::new("/tmp/r/usr/local/bin/capagent")
        );
    }

    /// Installs into a temporary directory, twice (the configuration is kept the second
    /// time), and checks the unit with `systemd-analyze verify` where systemd is installed.
    #[test]
    fn installs_into_a_directory() {
        let dir = std::env::temp_dir().join(format!("capagent-install-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let fake_bin = dir.join("capagent-built");
        fs::create_dir_all(&dir).unwrap();
        fs::copy("/bin/true", &fake_bin).unwrap();
        let args = InstallArgs {
            prefix: dir.join("usr"),
            sysconfdir: dir.join("etc"),
            root: None,
            bin: Some(fake_bin.clone()),
        };
        let [bin, unit, config] = install_files(&args, &fake_bin).unwrap();
        assert_eq!(bin, dir.join("usr/bin/capagent"));
        assert_eq!(
            fs::metadata(&bin).unwrap().permissions().mode() & 0o777,
            0o755
        );
        assert_eq!(unit, dir.join("usr/lib/systemd/system/capagent.service"));
        let text = fs::read_to_string(&unit).unwrap();
        assert!(text.contains(&format!(
            "ExecStart={} daemon --config {}\n",
            bin.display(),
            config.display()
        )));
        assert!(!text.contains(UNIT_BIN));
        assert_eq!(
            fs::metadata(&config).unwrap().permissions().mode() & 0o777,
            0o600
        );
        fs::write(&config, "# mine\n").unwrap();
        install_files(&args, &fake_bin).unwrap();
        assert_eq!(fs::read_to_string(&config).unwrap(), "# mine\n");
        if util::which("systemd-analyze").is_some() {
            let out = Command::new("systemd-analyze")
                .arg("verify")
                .arg(&unit)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "systemd-analyze verify: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // Staged: the files under --root, the paths inside them without it.
        let staged_args = InstallArgs {
            prefix: PathBuf::from("/usr/local"),
            sysconfdir: PathBuf::from("/etc"),
            root: Some(dir.join("stage")),
            bin: None,
        };
        let [bin, unit, config] = install_files(&staged_args, &fake_bin).unwrap();
        assert_eq!(bin, dir.join("stage/usr/local/bin/capagent"));
        assert_eq!(config, dir.join("stage/etc/capagent/capagent.toml"));
        let text = fs::read_to_string(&unit).unwrap();
        assert!(text.contains(
            "ExecStart=/usr/local/bin/capagent daemon --config /etc/capagent/capagent.toml\n"
        ));
        fs::remove_dir_all(&dir).unwrap();
    }
}
