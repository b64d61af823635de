//! Root integration tests of `capagent ca`: the real binary makes a CA and describes it
//! (checked against `openssl x509`), refuses to make it twice, installs it into and removes
//! it from a temporary copy of the system's trust store (update-ca-certificates told every
//! directory; the JDK's cacerts with keytool) leaving the copy as found, and a leaf of the CA
//! served by `openssl s_server` is accepted by curl trusting ca.crt (or the installed bundle).
//!
//! Needs root (the system store's tools; a network namespace for the server). Run with the
//! capagent binary in `CAPAGENT_BIN` (`cargo xtask test` sets it): `cargo test -p
//! capagent-tests --features root-tests --test ca -- --test-threads=1`.

use std::{
    collections::BTreeMap,
    fs,
    net::{IpAddr, Ipv4Addr},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use capagent::mitm::ca::{Ca, LeafSpec};
use capagent_testkit::*;

fn ca_cmd(args: &[&str]) -> Output {
    Command::new(capagent())
        .arg("ca")
        .args(args)
        .output()
        .expect("capagent")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs `capagent ca ARGS`, which must succeed; its stdout.
fn ca_ok(args: &[&str]) -> String {
    let out = ca_cmd(args);
    assert!(
        out.status.success(),
        "capagent ca {args:?}: {}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// `capagent ca ARGS` must fail with exit status 1 and one line on stderr; that line.
fn ca_err(args: &[&str]) -> String {
    let out = ca_cmd(args);
    assert_eq!(out.status.code(), Some(1), "capagent ca {args:?}: {out:?}");
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "not one line: {err:?}");
    err.trim_end().to_string()
}

fn openssl_x509(cert: &Path, what: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-in"])
        .arg(cert)
        .args(what)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    text(&out.stdout).trim_end().to_string()
}

/// The value of `ca show`'s line `key:  value`.
fn field<'a>(show: &'a str, key: &str) -> &'a str {
    show.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key}: in\n{show}"))
        .trim()
}

#[test]
fn init_show_and_init_twice() {
    let tmp = TempDir::new("ca-show");
    let dir = tmp.join("ca");
    let d = dir.to_str().unwrap();
    let out = ca_ok(&["init", "--ca-dir", d]);
    assert!(
        out.starts_with(&format!("created ECDSA P-256 CA in {d}\n")),
        "{out}"
    );
    let crt = dir.join("ca.crt");
    let key = dir.join("ca.key");
    assert_eq!(
        fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );

    let show = ca_ok(&["show", "--ca-dir", d]);
    assert_eq!(field(&show, "certificate"), crt.to_str().unwrap());
    assert_eq!(field(&show, "key"), key.to_str().unwrap());
    // The fingerprint openssl computes of the same file.
    let fp = openssl_x509(&crt, &["-fingerprint", "-sha256"]);
    assert_eq!(
        Some(field(&show, "SHA-256")),
        fp.strip_prefix("sha256 Fingerprint="),
        "{show}"
    );
    let host = fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(
        field(&show, "subject"),
        format!("CN=capagent CA ({}), O=capagent", host.trim())
    );
    assert_eq!(
        openssl_x509(&crt, &["-subject"]),
        format!("subject=CN = capagent CA ({}), O = capagent", host.trim())
    );
    // Validity as openssl reads it ("2026-12-02 12:15:35Z").
    let dates = openssl_x509(&crt, &["-dates", "-dateopt", "iso_8601"]);
    let date = |k: &str| {
        dates
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap()
            .trim_end_matches('Z')
            .to_string()
    };
    assert_eq!(
        field(&show, "valid"),
        format!("{} UTC to {} UTC", date("notBefore="), date("notAfter="))
    );
    assert_eq!(field(&show, "key type"), "ECDSA P-256");
    for how in [
        "sudo capagent ca install",
        &format!("curl --cacert {}", crt.display()),
        &format!("REQUESTS_CA_BUNDLE={}", crt.display()),
        &format!("NODE_EXTRA_CA_CERTS={}", crt.display()),
        &format!("http.sslCAInfo={}", crt.display()),
    ] {
        assert!(show.contains(how), "{how} not in\n{show}");
    }
    assert_eq!(
        ca_ok(&["show", "--path", "--ca-dir", d]),
        format!("{}\n", crt.display())
    );

    // Twice: refused, nothing changed.
    let before = (fs::read(&crt).unwrap(), fs::read(&key).unwrap());
    assert_eq!(
        ca_err(&["init", "--ca-dir", d]),
        format!(
            "capagent: {} already exists (the CA is made once; `capagent ca show` describes it)",
            crt.display()
        )
    );
    assert_eq!(before, (fs::read(&crt).unwrap(), fs::read(&key).unwrap()));
    // No CA there: one line.
    let none = tmp.join("none");
    assert_eq!(
        ca_err(&["show", "--ca-dir", none.to_str().unwrap()]),
        format!(
            "capagent: no CA in {} (`capagent ca init` creates it)",
            none.display()
        )
    );

    // --rsa.
    let rsa = tmp.join("rsa");
    let out = ca_ok(&["init", "--rsa", "--ca-dir", rsa.to_str().unwrap()]);
    assert!(out.contains("key type:    RSA 2048\n"), "{out}");
    let text = openssl_x509(&rsa.join("ca.crt"), &["-text"]);
    assert!(text.contains("Public-Key: (2048 bit)"), "{text}");
    assert!(text.contains("CA:TRUE"), "{text}");
}

/// A leaf of the CA in `dir` for localhost and 127.0.0.1, served by `openssl s_server` in
/// `ns`; curl in `ns` fetches its page trusting `cacert`; curl's output.
fn curl_through_s_server(tmp: &TempDir, dir: &Path, cacert: &Path) -> Output {
    let ca = Ca::load(dir).unwrap();
    let (chain, key) = ca
        .leaf_pem(&LeafSpec {
            common_name: Some("localhost".to_string()),
            dns: vec!["localhost".to_string()],
            ips: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
        })
        .unwrap();
    let chain = tmp.write("leaf.pem", chain);
    let key = tmp.write("leaf.key", key);
    let ns = Netns::new("ca");
    let server = OpensslServer::start_with(&ns, Path::new(&chain), Path::new(&key));
    let mut curl = ns.cmd("curl");
    curl.args(["-sS", "--max-time", "20", "--cacert"])
        .arg(cacert)
        .arg(format!("https://localhost:{}/", server.port));
    let out = curl.output().unwrap();
    drop(server);
    out
}

#[test]
fn curl_trusts_a_leaf_served_by_openssl() {
    let tmp = TempDir::new("ca-curl");
    let dir = tmp.join("ca");
    ca_ok(&["init", "--ca-dir", dir.to_str().unwrap()]);
    let out = curl_through_s_server(&tmp, &dir, &dir.join("ca.crt"));
    assert!(out.status.success(), "{out:?}");
    // s_server -www's page about the session.
    assert!(text(&out.stdout).contains("s_server -www"), "{out:?}");

    // Trusting another CA only: refused (60: peer certificate cannot be authenticated).
    let other = tmp.join("other");
    ca_ok(&["init", "--ca-dir", other.to_str().unwrap()]);
    let out = curl_through_s_server(&tmp, &dir, &other.join("ca.crt"));
    assert_eq!(out.status.code(), Some(60), "{out:?}");
}

/// Every entry under `root`: its path, and its symlink target or contents.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            let meta = fs::symlink_metadata(&p).unwrap();
            let mode = meta.permissions().mode() & 0o7777;
            if meta.file_type().is_symlink() {
                out.insert(rel, format!("-> {}", fs::read_link(&p).unwrap().display()));
            } else if meta.is_dir() {
                out.insert(rel, format!("dir {mode:o}"));
                walk(root, &p, out);
            } else if p.file_name().unwrap() == "cacerts" {
                // A keystore is rewritten by keytool: compared by its entries (keytool_list).
                out.insert(rel, format!("keystore {mode:o}"));
            } else {
                out.insert(rel, format!("{mode:o} {}", text(&fs::read(&p).unwrap())));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn keytool_list(keystore: &Path, alias: Option<&str>) -> Output {
    let mut cmd = Command::new("keytool");
    cmd.args(["-list", "-storepass", "changeit", "-keystore"])
        .arg(keystore);
    if let Some(a) = alias {
        cmd.args(["-alias", a]);
    }
    cmd.output().unwrap()
}

#[test]
fn install_and_uninstall_leave_a_store_as_found() {
    let tmp = TempDir::new("ca-store");
    let dir = tmp.join("ca");
    let d = dir.to_str().unwrap();
    ca_ok(&["init", "--ca-dir", d]);
    let ca_pem = fs::read_to_string(dir.join("ca.crt")).unwrap();

    // A copy of this machine's store: Debian's certificates and their list, the JDK's
    // cacerts, and the links and bundle update-ca-certificates makes of them.
    let root = tmp.join("root");
    let under = |p: &str| root.join(p.trim_start_matches('/'));
    for d in [
        "/etc/ssl/certs/java",
        "/usr/local/share/ca-certificates",
        "/usr/share",
        "/etc/ca-certificates/update.d",
    ] {
        fs::create_dir_all(under(d)).unwrap();
    }
    let cp = Command::new("cp")
        .args(["-a", "/usr/share/ca-certificates"])
        .arg(under("/usr/share"))
        .status()
        .unwrap();
    assert!(cp.success());
    fs::copy(
        "/etc/ca-certificates.conf",
        under("/etc/ca-certificates.conf"),
    )
    .unwrap();
    let cacerts = fs::canonicalize("/usr/lib/jvm/default-java/lib/security/cacerts")
        .or_else(|_| fs::canonicalize("/etc/ssl/certs/java/cacerts"))
        .expect("a JDK's cacerts (Debian: default-jdk-headless)");
    let keystore = under(cacerts.to_str().unwrap());
    fs::create_dir_all(keystore.parent().unwrap()).unwrap();
    fs::copy(&cacerts, &keystore).unwrap();
    let mut update = Command::new("update-ca-certificates");
    update.arg("--fresh");
    for (opt, d) in [
        ("--certsconf", "/etc/ca-certificates.conf"),
        ("--certsdir", "/usr/share/ca-certificates"),
        ("--localcertsdir", "/usr/local/share/ca-certificates"),
        ("--etccertsdir", "/etc/ssl/certs"),
        ("--hooksdir", "/etc/ca-certificates/update.d"),
    ] {
        update.arg(opt).arg(under(d));
    }
    let made = update.output().unwrap();
    assert!(made.status.success(), "{made:?}");
    let bundle = under("/etc/ssl/certs/ca-certificates.crt");
    assert!(fs::metadata(&bundle).unwrap().len() > 10_000);

    let found = snapshot(&root);
    let found_java = text(&keytool_list(&keystore, None).stdout);
    assert!(
        found_java.contains("Your keystore contains"),
        "{found_java}"
    );
    assert!(!keytool_list(&keystore, Some("capagent")).status.success());

    let r = root.to_str().unwrap();
    let out = ca_ok(&["install", "--java", "--ca-dir", d, "--root", r]);
    let installed = under("/usr/local/share/ca-certificates/capagent.crt");
    assert_eq!(
        out.lines().next().unwrap(),
        format!(
            "system store: installed {} (update-ca-certificates: 1 added, 0 removed); in {}",
            installed.display(),
            bundle.display()
        )
    );
    assert_eq!(fs::read_to_string(&installed).unwrap(), ca_pem);
    assert_eq!(
        fs::read_link(under("/etc/ssl/certs/capagent.pem")).unwrap(),
        installed
    );
    assert!(fs::read_to_string(&bundle).unwrap().contains(ca_pem.trim()));
    // OpenSSL's hashed directory finds it too (openssl rehash made the link).
    let hash = openssl_x509(&dir.join("ca.crt"), &["-hash"]);
    assert_eq!(
        fs::read_link(under(&format!("/etc/ssl/certs/{hash}.0"))).unwrap(),
        Path::new("capagent.pem")
    );
    assert_eq!(
        out.lines().nth(1).unwrap(),
        format!(
            "Java: imported as alias capagent into {}",
            keystore.display()
        )
    );
    let listed = keytool_list(&keystore, Some("capagent"));
    assert!(listed.status.success(), "{listed:?}");
    let fp = openssl_x509(&dir.join("ca.crt"), &["-fingerprint", "-sha256"]);
    let fp = fp.strip_prefix("sha256 Fingerprint=").unwrap();
    assert!(text(&listed.stdout).contains(fp), "{listed:?}");

    // A client trusting the installed bundle (what OpenSSL reads by default) accepts a leaf.
    let out = curl_through_s_server(&tmp, &dir, &bundle);
    assert!(text(&out.stdout).contains("s_server -www"), "{out:?}");

    // Again: kept as it is.
    let again = ca_ok(&["install", "--java", "--ca-dir", d, "--root", r]);
    assert!(
        again.starts_with(&format!("system store: kept {}", installed.display())),
        "{again}"
    );

    let out = ca_ok(&["uninstall", "--java", "--root", r]);
    assert_eq!(
        out,
        format!(
            "system store: removed {} (update-ca-certificates --fresh)\nJava: removed alias capagent from {}\n",
            installed.display(),
            keystore.display()
        )
    );
    let left = snapshot(&root);
    if left != found {
        let gone: Vec<_> = found.keys().filter(|k| !left.contains_key(*k)).collect();
        let new: Vec<_> = left
            .iter()
            .filter(|(k, v)| found.get(*k) != Some(v))
            .map(|(k, _)| k)
            .collect();
        panic!("the store changed: gone {gone:?}, new or changed {new:?}");
    }
    assert_eq!(text(&keytool_list(&keystore, None).stdout), found_java);

    // Once more: nothing to remove, nothing changed.
    let out = ca_ok(&["uninstall", "--root", r]);
    assert_eq!(
        out,
        format!("system store: {} was not there\n", installed.display())
    );
    assert!(snapshot(&root) == found);
}
