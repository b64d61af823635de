//! `cargo xtask demo`: a newcomer's first run. Sets up the machine, builds capagent, starts a
//! throwaway HTTP server on 127.0.0.1 and traces `curl` fetching a page from it. Nothing
//! leaves the machine.
use std::{
    fs,
    io::{BufRead, BufReader},
    net::TcpStream,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    setup,
    util::{self, display, which},
};

pub fn demo(json: bool) -> Result<()> {
    setup::setup()?;
    let capagent = util::build_bins("capagent", &["capagent"], true)?
        .remove("capagent")
        .expect("built");
    for tool in ["python3", "curl"] {
        if which(tool).is_none() {
            bail!("{tool} not found (cargo xtask setup installs it)");
        }
    }

    let dir = std::env::temp_dir().join(format!("capagent-demo-{}", std::process::id()));
    fs::create_dir_all(&dir)?;
    fs::write(
        dir.join("index.html"),
        "<!doctype html><title>capagent demo</title><p>Hello from the capagent demo.</p>\n",
    )?;

    let mut server_cmd = Command::new("python3");
    server_cmd
        .args([
            "-u",
            "-m",
            "http.server",
            "0",
            "--bind",
            "127.0.0.1",
            "--directory",
        ])
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    eprintln!("+ {}", display(&server_cmd));
    let mut server = server_cmd
        .spawn()
        .context("cannot start python3 -m http.server")?;
    let result = (|| -> Result<()> {
        // "Serving HTTP on 127.0.0.1 port 41234 (http://127.0.0.1:41234/) ..."
        let mut line = String::new();
        BufReader::new(server.stdout.as_mut().expect("piped")).read_line(&mut line)?;
        let port: u16 = line
            .split_whitespace()
            .skip_while(|w| *w != "port")
            .nth(1)
            .and_then(|p| p.parse().ok())
            .with_context(|| format!("http.server did not report its port (got {line:?})"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("http.server is not accepting connections on port {port}");
            }
            thread::sleep(Duration::from_millis(50));
        }

        let url = format!("http://127.0.0.1:{port}/");
        let mut trace = if util::is_root() {
            Command::new(&capagent)
        } else {
            eprintln!("note: tracing needs root; running capagent through sudo");
            let mut c = Command::new("sudo");
            c.arg(&capagent);
            c
        };
        trace.arg("trace");
        if json {
            trace.args(["--format", "json"]);
        }
        trace.args(["--", "curl", "-s", "-o", "/dev/null", &url]);
        eprintln!();
        eprintln!("Tracing curl fetching {url} from a local python3 http.server:");
        util::run(&mut trace)
    })();
    util::kill(&mut server, false);
    let _ = server.wait();
    let _ = fs::remove_dir_all(&dir);
    result?;
    eprintln!();
    eprintln!(
        "Done. Next: `{} trace --help`, and `cargo xtask test` to run the test suite.",
        capagent.display()
    );
    Ok(())
}
