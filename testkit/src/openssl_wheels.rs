//! OpenSSL builds other than Debian's, for the `trace --tls` tests: the libssl and libcrypto
//! that `cargo xtask setup` takes from pinned manylinux wheels on PyPI (xtask's
//! `OPENSSL_WHEELS`: OpenSSL 1.1.1g and 3.3.1) into `openssl-wheels/VERSION/` under the cargo
//! target directory; and a TLS client on them with no C compiled against them: Python's
//! `ctypes` calling the library's own functions ([`CTYPES_CLIENT_PY`]).

use std::{
    fs,
    path::{Path, PathBuf},
};

use crate::TempDir;

/// One OpenSSL build from a wheel.
#[derive(Debug, Clone)]
pub struct WheelOpenssl {
    /// Its version as OpenSSL itself says it (`1.1.1g`).
    pub version: String,
    pub libssl: PathBuf,
    pub libcrypto: PathBuf,
    /// The other libraries of the wheel that libcrypto needs (its own libz), if any.
    pub deps: Vec<PathBuf>,
}

impl WheelOpenssl {
    /// The file name of its libssl (`libssl-dbe77c63.so.1.1.1g`).
    pub fn libssl_name(&self) -> String {
        self.libssl
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }
}

/// Where `cargo xtask setup` unpacks the wheels' libraries.
fn wheels_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
        .join("openssl-wheels")
}

/// The OpenSSL `version` that `cargo xtask setup` fetched. None (after saying why on stderr)
/// only when setup recorded that the download was impossible (`UNAVAILABLE`: no pip or no
/// registry); panics when setup was not run.
pub fn wheel_openssl(version: &str) -> Option<WheelOpenssl> {
    let root = wheels_dir();
    let dir = root.join(version);
    let find = |prefix: &str| {
        fs::read_dir(&dir)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
            })
    };
    if let (Some(libssl), Some(libcrypto)) = (find("libssl"), find("libcrypto")) {
        return Some(WheelOpenssl {
            version: version.to_string(),
            libssl,
            libcrypto,
            deps: find("libz").into_iter().collect(),
        });
    }
    if let Ok(why) = fs::read_to_string(root.join("UNAVAILABLE")) {
        eprintln!(
            "SKIPPED: OpenSSL {version} from a PyPI wheel is not available ({}): \
             `cargo xtask setup` could not download it",
            why.trim()
        );
        return None;
    }
    panic!(
        "no OpenSSL {version} in {}: run `cargo xtask setup` (it downloads it from PyPI)",
        dir.display()
    );
}

/// A TLS client on a given libssl through `ctypes`: `python SCRIPT DEPS LIBSSL PORT
/// REQUEST_HEX WRITE` (DEPS: the libraries libssl needs, `:`-separated, in load order)
/// connects to 127.0.0.1:PORT, `SSL_connect`s (no verification), writes
/// the request in one call (`WRITE`: `SSL_write`, `SSL_write_ex`, or `SSL_write_ex2` with
/// flags 0), reads
/// with `SSL_read` until the peer closes, and prints `FD n` (its socket) and `RECV hex`
/// (everything it read).
pub const CTYPES_CLIENT_PY: &str = r#"
import ctypes, socket, sys
deps, ssl_path, port, request, write = sys.argv[1:6]
# libssl needs its libcrypto (which may need libz) by soname: loaded first, globally.
for dep in deps.split(":"):
    ctypes.CDLL(dep, mode=ctypes.RTLD_GLOBAL)
ssl = ctypes.CDLL(ssl_path)
P, I, S = ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t
ssl.OPENSSL_init_ssl.argtypes = [ctypes.c_uint64, P]
ssl.TLS_client_method.restype = P
ssl.SSL_CTX_new.restype, ssl.SSL_CTX_new.argtypes = P, [P]
ssl.SSL_new.restype, ssl.SSL_new.argtypes = P, [P]
ssl.SSL_set_fd.argtypes = [P, I]
ssl.SSL_connect.argtypes = [P]
ssl.SSL_write.argtypes = [P, ctypes.c_char_p, I]
ssl.SSL_read.argtypes = [P, P, I]
ssl.SSL_free.argtypes = [P]
ssl.SSL_CTX_free.argtypes = [P]
assert ssl.OPENSSL_init_ssl(0, None) == 1
ctx = ssl.SSL_CTX_new(ssl.TLS_client_method())
assert ctx
s = ssl.SSL_new(ctx)
assert s
sock = socket.create_connection(("127.0.0.1", int(port)))
assert ssl.SSL_set_fd(s, sock.fileno()) == 1
r = ssl.SSL_connect(s)
assert r == 1, f"SSL_connect: {r}"
req = bytes.fromhex(request)
if write == "SSL_write_ex2":
    ssl.SSL_write_ex2.argtypes = [P, ctypes.c_char_p, S, ctypes.c_uint64, ctypes.POINTER(S)]
    n = S(0)
    assert ssl.SSL_write_ex2(s, req, len(req), 0, ctypes.byref(n)) == 1
    assert n.value == len(req), n.value
elif write == "SSL_write_ex":
    ssl.SSL_write_ex.argtypes = [P, ctypes.c_char_p, S, ctypes.POINTER(S)]
    n = S(0)
    assert ssl.SSL_write_ex(s, req, len(req), ctypes.byref(n)) == 1
    assert n.value == len(req), n.value
else:
    assert write == "SSL_write", write
    assert ssl.SSL_write(s, req, len(req)) == len(req)
buf = ctypes.create_string_buffer(16384)
got = b""
while True:
    n = ssl.SSL_read(s, buf, len(buf))
    if n <= 0:
        break
    got += buf.raw[:n]
print("FD", sock.fileno(), flush=True)
print("RECV", got.hex(), flush=True)
ssl.SSL_free(s)
ssl.SSL_CTX_free(ctx)
sock.close()
"#;

/// The arguments of [`CTYPES_CLIENT_PY`] after the interpreter (script saved in `dir`):
/// `request` to 127.0.0.1:`port` through `openssl`'s `write` function.
pub fn ctypes_client_args(
    dir: &TempDir,
    openssl: &WheelOpenssl,
    port: u16,
    request: &[u8],
    write: &str,
) -> Vec<String> {
    let script = dir.write("ctypes_client.py", CTYPES_CLIENT_PY);
    vec![
        script,
        openssl
            .deps
            .iter()
            .chain([&openssl.libcrypto])
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":"),
        openssl.libssl.display().to_string(),
        port.to_string(),
        crate::hex(request),
        write.to_string(),
    ]
}

/// What a [`CTYPES_CLIENT_PY`] printed: (its socket's fd, the bytes it received).
pub fn ctypes_client_result(stdout: &str) -> (i64, Vec<u8>) {
    let line = |prefix: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("ctypes client printed no {prefix:?}: {stdout}"))
            .to_string()
    };
    (
        line("FD ").parse().expect("FD"),
        crate::unhex(&line("RECV ")),
    )
}
