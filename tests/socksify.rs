//! Root integration tests of `capagent intercept --upstream-proxy` (socksify): programs with
//! no proxy settings forced through an upstream SOCKS5 or HTTP CONNECT proxy.
//!
//! Everything runs in one network namespace of the test's own, on its loopback: a line
//! server (Python, reporting the address each connection came from and the bytes it read),
//! the upstream proxy (a second capagent, `proxy socks` recording JSON; microsocks binding
//! its outgoing connections to 127.0.0.9; tinyproxy binding them to 127.0.0.10), and the
//! client started by `capagent intercept --upstream-proxy URL -- CMD`: the book's Java
//! `SocketClient` (connecting by address, no proxy settings) or curl. Each test checks the
//! answer the client printed, the bytes and peer the server saw (the upstream's address:
//! the connection went through it), and the records of both capagents.
//!
//! The gateway tests build their own namespaces (gateway and server; client, gateway and
//! server for the names a client resolved through the gateway).

use std::process::Command;

use capagent_testkit::proxy::{Agent, closed_tcp_port, open_of, recorded};
use capagent_testkit::*;
use serde_json::Value;

/// The book's TCP client: connects to HOST PORT (no proxy settings), sends MESSAGE and a
/// newline, prints the line it gets back.
const SOCKET_CLIENT: &str = r#"
import java.io.*;
import java.net.*;
import java.nio.charset.StandardCharsets;

public class SocketClient {
    public static void main(String[] args) throws Exception {
        try (Socket s = new Socket(args[0], Integer.parseInt(args[1]))) {
            s.setSoTimeout(20000);
            OutputStream out = s.getOutputStream();
            out.write((args[2] + "\n").getBytes(StandardCharsets.UTF_8));
            out.flush();
            BufferedReader in = new BufferedReader(
                new InputStreamReader(s.getInputStream(), StandardCharsets.UTF_8));
            System.out.println("ANSWER " + in.readLine());
        }
    }
}
"#;

/// A line server on 127.0.0.1 (or argv[2]): for each of argv[1] connections, prints `PEER
/// ADDRESS`, reads one line, prints `GOT HEX` and answers `echo:` + the line.
const LINE_SERVER: &str = r#"
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1", 0)); s.listen(8)
print("READY", s.getsockname()[1], flush=True)
for _ in range(int(sys.argv[1])):
    c, peer = s.accept()
    print("PEER", peer[0], flush=True)
    buf = b""
    while not buf.endswith(b"\n"):
        d = c.recv(4096)
        if not d:
            break
        buf += d
    print("GOT", buf.hex(), flush=True)
    c.sendall(b"echo:" + buf)
    c.close()
"#;

/// The intercept's one `open` of `target`: relayed through `via`, by `comm`.
fn intercept_open<'a>(evs: &'a [Value], target: &str, comm: &str, via: &str) -> &'a Value {
    let open = one(evs, &format!("open of {target}"), |e| {
        e.ty() == "open" && e["target"] == target
    });
    let proxy = open["proxy"].as_str().unwrap();
    assert!(
        proxy.starts_with("process pid=")
            && proxy.contains(&format!(" comm={comm}"))
            && proxy.ends_with(&format!(" via {via}")),
        "{open}"
    );
    assert_eq!(open.ret(), 0, "{open}");
    open
}

/// `capagent intercept --format json -o JSONL --upstream-proxy UPSTREAM -- CMD...` in `ns`,
/// to completion; its stdout (the command's).
fn socksify(ns: &Netns, jsonl: &std::path::Path, upstream: &str, cmd: &[&str]) -> String {
    let mut c = ns.cmd(capagent());
    c.args(["intercept", "--format", "json", "-o"])
        .arg(jsonl)
        .args(["--upstream-proxy", upstream, "--"])
        .args(cmd);
    run_output("capagent intercept --upstream-proxy", c, TIMEOUT * 2)
}

/// Runs the Java client through `upstream` against a fresh line server; returns the server
/// (its `PEER` line unread) and the intercept's records, after checking the answer and the
/// bytes the server read, and that the intercept recorded them.
fn java_through(ns: &Netns, dir: &TempDir, name: &str, upstream: &str, via: &str) -> Run {
    let mut server = Server::script(ns, dir, "line_server.py", LINE_SERVER, &["1".into()]);
    let client = dir.write("SocketClient.java", SOCKET_CLIENT);
    let jsonl = dir.join(&format!("{name}.jsonl"));
    let port = server.port.to_string();
    let msg = format!("hello through {name}");
    let out = socksify(
        ns,
        &jsonl,
        upstream,
        &["java", &client, "127.0.0.1", &port, &msg],
    );
    let line = format!("{msg}\n");
    assert_eq!(out, format!("ANSWER echo:{msg}\n"));
    let peer = server.proc.expect("PEER", TIMEOUT);
    assert_eq!(server.proc.expect("GOT", TIMEOUT), hex(line.as_bytes()));
    let evs = records(&jsonl);
    let target = format!("127.0.0.1:{port}");
    let open = intercept_open(&evs, &target, "java", via);
    assert_eq!(recorded(&evs, open.fd(), "send"), line.as_bytes());
    assert_eq!(
        recorded(&evs, open.fd(), "recv"),
        format!("echo:{line}").as_bytes()
    );
    Run { target, line, peer }
}

struct Run {
    /// The original destination, as recorded.
    target: String,
    /// The line the client sent.
    line: String,
    /// The address the server saw the connection come from.
    peer: String,
}

/// The Java client forced through `capagent proxy socks` (with a username and password):
/// the upstream capagent recorded the connection to the original destination with the same
/// bytes as the intercepting one.
#[test]
fn java_through_capagent_socks() {
    let ns = Netns::new("sxc");
    let dir = TempDir::new("socksify-capagent");
    let up_jsonl = dir.join("upstream.jsonl");
    let mut cmd = ns.cmd(capagent());
    cmd.args(["proxy", "socks", "--listen", "127.0.0.1:0", "--auth", "u:p"])
        .args(["--format", "json", "-o"])
        .arg(&up_jsonl);
    let upstream = Agent::spawn(cmd, 1);
    let url = format!("socks5://u:p@{}", upstream.addr());
    let via = format!("socks5://{}", upstream.addr());
    let run = java_through(&ns, &dir, "capagent", &url, &via);
    assert_eq!(run.peer, "127.0.0.1");
    upstream.stop();
    let evs = records(&up_jsonl);
    let open = open_of(&evs, "socks5 connect", &run.target);
    assert_eq!(open.ret(), 0, "{open}");
    assert_eq!(recorded(&evs, open.fd(), "send"), run.line.as_bytes());
    assert_eq!(
        recorded(&evs, open.fd(), "recv"),
        format!("echo:{}", run.line).as_bytes()
    );
}

/// The Java client forced through microsocks, whose outgoing connections come from
/// 127.0.0.9: the server sees that address.
#[test]
fn java_through_microsocks() {
    let ns = Netns::new("sxm");
    let dir = TempDir::new("socksify-microsocks");
    let port = closed_tcp_port();
    let mut cmd = ns.cmd("microsocks");
    cmd.args([
        "-i",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-b",
        "127.0.0.9",
    ]);
    cmd.args(["-u", "u", "-P", "p"]);
    let micro = Proc::spawn("microsocks", cmd);
    wait_listen(micro.pid(), port);
    let url = format!("socks5://u:p@127.0.0.1:{port}");
    let via = format!("socks5://127.0.0.1:{port}");
    let run = java_through(&ns, &dir, "microsocks", &url, &via);
    assert_eq!(run.peer, "127.0.0.9", "not through microsocks");
    drop(micro);
}

/// tinyproxy on 127.0.0.1, CONNECT to any port with Basic authentication, its outgoing
/// connections from 127.0.0.10.
fn tinyproxy(ns: &Netns, dir: &TempDir, user: &str, pass: &str) -> (Proc, u16) {
    let port = closed_tcp_port();
    let conf = dir.join("tinyproxy.conf");
    std::fs::write(
        &conf,
        format!(
            "Port {port}\nListen 127.0.0.1\nBind 127.0.0.10\nTimeout 60\nLogLevel Info\n\
             Allow 127.0.0.1\nBasicAuth {user} {pass}\n"
        ),
    )
    .unwrap();
    let mut cmd = ns.cmd("tinyproxy");
    cmd.arg("-d").arg("-c").arg(&conf);
    let p = Proc::spawn("tinyproxy", cmd);
    wait_listen(p.pid(), port);
    (p, port)
}

/// curl forced through tinyproxy's CONNECT: the page arrives, the HTTP server saw the request
/// come from tinyproxy's address, the intercept recorded request and response; a wrong
/// password fails the connection, recorded and logged with the reason.
#[test]
fn curl_through_tinyproxy_connect() {
    let ns = Netns::new("sxt");
    let dir = TempDir::new("socksify-tinyproxy");
    std::fs::write(dir.join("index.html"), "through tinyproxy\n").unwrap();
    let http = python_http_server(&ns, &dir.join(""), "127.0.0.1", 8093);
    let (tiny, port) = tinyproxy(&ns, &dir, "u", "p4ss");
    let jsonl = dir.join("tiny.jsonl");
    let url = "http://127.0.0.1:8093/";
    let out = socksify(
        &ns,
        &jsonl,
        &format!("http://u:p4ss@127.0.0.1:{port}"),
        &["curl", "-sS", "-m", "20", url],
    );
    assert_eq!(out, "through tinyproxy\n");
    // http.server logs each request with the client's address.
    http.wait_stderr("127.0.0.10 - - ", 1, TIMEOUT);
    let evs = records(&jsonl);
    let via = format!("http://127.0.0.1:{port}");
    let open = intercept_open(&evs, "127.0.0.1:8093", "curl", &via);
    let sent = recorded(&evs, open.fd(), "send");
    assert!(sent.starts_with(b"GET / HTTP/1.1\r\n"), "{sent:?}");
    let got = recorded(&evs, open.fd(), "recv");
    assert!(got.ends_with(b"\r\n\r\nthrough tinyproxy\n"), "{got:?}");

    // A wrong password: curl's connection is reset, the open record failed, the log says why.
    let bad = dir.join("bad.jsonl");
    let mut c = ns.cmd(capagent());
    c.args(["intercept", "--format", "json", "-o"])
        .arg(&bad)
        .args([
            "--upstream-proxy",
            &format!("http://u:wrong@127.0.0.1:{port}"),
            "--",
            "curl",
            "-sS",
            "-m",
            "20",
            url,
        ]);
    let mut p = Proc::spawn("capagent intercept (wrong password)", c);
    let st = p.wait(TIMEOUT * 2);
    assert!(!st.success(), "curl succeeded with a wrong password");
    let log = p.stderr();
    assert!(
        log.contains("rejected the username/password (401 Unauthorized)"),
        "{log}"
    );
    let evs = records(&bad);
    let open = one(&evs, "open of 127.0.0.1:8093", |e| {
        e.ty() == "open" && e["target"] == "127.0.0.1:8093"
    });
    assert_ne!(open.ret(), 0, "{open}");
    drop(tiny);
}

/// `--udp` cannot go through an HTTP upstream proxy (CONNECT carries no datagrams; SOCKS5
/// carries them by UDP ASSOCIATE): refused at once, in one line.
#[test]
fn udp_through_upstream_refused() {
    let mut c = Command::new(capagent());
    c.args([
        "intercept",
        "--mode",
        "tproxy",
        "--iface",
        "lo",
        "--udp",
        "--upstream-proxy",
        "http://127.0.0.1:3128",
    ]);
    let out = c.output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.trim_end(),
        "capagent: --udp through an http:// --upstream-proxy: HTTP CONNECT carries no datagrams (use socks5://)",
        "{err}"
    );
}

/// `--mode redirect --local` on a gateway whose own curl is intercepted, every port: capagent's
/// connection to the upstream (microsocks, beyond the same interface) carries its mark and
/// is not caught again; the HTTP server sees the request come from microsocks' host, not
/// from the gateway.
#[test]
fn gateway_local_through_microsocks() {
    let gw = Netns::new("sxg");
    let server = Netns::new("sxs");
    let dir = TempDir::new("socksify-gateway");
    let ok = |c: &mut Command| {
        let out = c.output().unwrap();
        assert!(out.status.success(), "{c:?}: {out:?}");
    };
    ok(Command::new("ip").args([
        "link",
        "add",
        "g1",
        "netns",
        &gw.name,
        "type",
        "veth",
        "peer",
        "name",
        "s0",
        "netns",
        &server.name,
    ]));
    for (ns, dev, addr) in [(&gw, "g1", "10.77.0.1/24"), (&server, "s0", "10.77.0.2/24")] {
        ns.ip(&["addr", "add", addr, "dev", dev]).unwrap();
        ns.ip(&["link", "set", dev, "up"]).unwrap();
    }
    std::fs::write(dir.join("index.html"), "through the gateway's upstream\n").unwrap();
    let http = python_http_server(&server, &dir.join(""), "10.77.0.2", 8080);
    let mut cmd = server.cmd("microsocks");
    cmd.args(["-i", "10.77.0.2", "-p", "1080"]);
    let micro = Proc::spawn("microsocks", cmd);
    wait_listen(micro.pid(), 1080);
    let jsonl = dir.join("gw.jsonl");
    let mut c = gw.cmd(capagent());
    c.args([
        "intercept",
        "--mode",
        "redirect",
        "--iface",
        "g1",
        "--local",
    ])
    .args(["--upstream-proxy", "socks5://10.77.0.2:1080"])
    .args(["--format", "json", "-o"])
    .arg(&jsonl);
    let mut agent = Proc::spawn("capagent intercept", c);
    agent.wait_stderr("capagent: intercepting", 1, TIMEOUT);
    let mut c = gw.cmd("curl");
    c.args(["-sS", "-m", "20", "http://10.77.0.2:8080/"]);
    assert_eq!(
        run_output("curl", c, TIMEOUT),
        "through the gateway's upstream\n"
    );
    // microsocks connects from the server's own address; without it, the gateway's.
    http.wait_stderr("10.77.0.2 - - ", 1, TIMEOUT);
    agent.terminate(TIMEOUT);
    let evs = records(&jsonl);
    assert_eq!(of_type(&evs, "open").len(), 1, "{}", dump(&evs));
    let open = one(&evs, "open of 10.77.0.2:8080", |e| {
        e.ty() == "open" && e["target"] == "10.77.0.2:8080"
    });
    assert_eq!(
        open["proxy"], "redirect via socks5://10.77.0.2:1080",
        "{open}"
    );
    assert_eq!(open.ret(), 0, "{open}");
    let sent = recorded(&evs, open.fd(), "send");
    assert!(sent.starts_with(b"GET / HTTP/1.1\r\n"), "{sent:?}");
    let got = recorded(&evs, open.fd(), "recv");
    assert!(
        got.ends_with(b"\r\n\r\nthrough the gateway's upstream\n"),
        "{got:?}"
    );
    drop(micro);
}

/// `--as socks --upstream-proxy`: curl talks SOCKS5 to a proxy address nothing listens on;
/// capagent's SOCKS server answers it and reaches the target through tinyproxy, which the
/// HTTP server sees the request come from.
#[test]
fn as_socks_through_tinyproxy() {
    let ns = Netns::new("sxa");
    let dir = TempDir::new("socksify-as-socks");
    std::fs::write(dir.join("index.html"), "socks answered here\n").unwrap();
    let http = python_http_server(&ns, &dir.join(""), "127.0.0.1", 8094);
    let (tiny, port) = tinyproxy(&ns, &dir, "u", "p4ss");
    let jsonl = dir.join("as-socks.jsonl");
    let mut c = ns.cmd(capagent());
    c.args(["intercept", "--as", "socks", "--format", "json", "-o"])
        .arg(&jsonl)
        .args([
            "--upstream-proxy",
            &format!("http://u:p4ss@127.0.0.1:{port}"),
        ])
        .args(["--", "curl", "-sS", "-m", "20", "--socks5", "127.0.0.1:1"])
        .arg("http://127.0.0.1:8094/");
    let out = run_output("capagent intercept --as socks", c, TIMEOUT * 2);
    assert_eq!(out, "socks answered here\n");
    http.wait_stderr("127.0.0.10 - - ", 1, TIMEOUT);
    let evs = records(&jsonl);
    let open = open_of(&evs, "socks5 connect", "127.0.0.1:8094");
    assert_eq!(open.ret(), 0, "{open}");
    let got = recorded(&evs, open.fd(), "recv");
    assert!(got.ends_with(b"\r\n\r\nsocks answered here\n"), "{got:?}");
    drop(tiny);
}

/// A gateway: client (10.78.1.2) → gateway (forwarding; capagent runs here) → server
/// (10.78.2.2), joined by veth pairs.
struct Gateway {
    client: Netns,
    gw: Netns,
    server: Netns,
}

impl Gateway {
    fn new(tag: &str) -> Gateway {
        let g = Gateway {
            client: Netns::new(&format!("{tag}c")),
            gw: Netns::new(&format!("{tag}g")),
            server: Netns::new(&format!("{tag}s")),
        };
        let ok = |c: &mut Command| {
            let out = c.output().unwrap();
            assert!(out.status.success(), "{c:?}: {out:?}");
        };
        ok(g.gw.cmd("sysctl").args(["-qw", "net.ipv4.ip_forward=1"]));
        for (a, a_dev, b, b_dev) in [
            (&g.client, "c0", &g.gw, "g0"),
            (&g.server, "s0", &g.gw, "g1"),
        ] {
            ok(Command::new("ip").args([
                "link", "add", a_dev, "netns", &a.name, "type", "veth", "peer", "name", b_dev,
                "netns", &b.name,
            ]));
        }
        for (ns, dev, addr) in [
            (&g.client, "c0", "10.78.1.2/24"),
            (&g.gw, "g0", "10.78.1.1/24"),
            (&g.gw, "g1", "10.78.2.1/24"),
            (&g.server, "s0", "10.78.2.2/24"),
        ] {
            ns.ip(&["addr", "add", addr, "dev", dev]).unwrap();
            ns.ip(&["link", "set", dev, "up"]).unwrap();
        }
        g.client
            .ip(&["route", "add", "default", "via", "10.78.1.1"])
            .unwrap();
        g.server
            .ip(&["route", "add", "default", "via", "10.78.2.1"])
            .unwrap();
        g
    }
}

/// Files `ip netns exec NS` mounts over /etc's (`/etc/netns/NS/FILE`), removed on drop.
struct NetnsEtc(std::path::PathBuf);

impl NetnsEtc {
    fn new(ns: &Netns, files: &[(&str, &str)]) -> NetnsEtc {
        let dir = std::path::Path::new("/etc/netns").join(&ns.name);
        std::fs::create_dir_all(&dir).unwrap();
        let etc = NetnsEtc(dir);
        for (file, text) in files {
            std::fs::write(etc.0.join(file), text).unwrap();
        }
        etc
    }
}

impl Drop for NetnsEtc {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Socksify by name on a gateway (`--mode tproxy`, every TCP port): the client, the book's
/// Java `SocketClient` given the name `app.example`, resolves it with the C library over TCP
/// (`options use-vc`) from `capagent dns` beyond the gateway, so the answer crosses the
/// intercept (relayed through the upstream like any connection), which learns the name of
/// the address; the connection to that address then goes to the upstream `capagent proxy
/// socks` as the name, which the upstream resolves itself (from the same `capagent dns`)
/// and records as the target. Both capagents record the bytes; the server sees the
/// connection come from the upstream's host. With `--no-upstream-names`, the address goes.
#[test]
fn gateway_names_through_capagent_socks() {
    gateway_names(false, Up::Socks);
}

/// [`gateway_names_through_capagent_socks`] through `capagent proxy http`'s CONNECT: the
/// upstream is asked `CONNECT app.example:PORT`.
#[test]
fn gateway_names_through_capagent_http_connect() {
    gateway_names(false, Up::HttpConnect);
}

/// [`gateway_names_through_capagent_socks`] with the client resolving over UDP, intercepted
/// with `--udp` (the DNS datagrams go through the upstream by UDP ASSOCIATE).
#[test]
fn gateway_names_over_udp_through_capagent_socks() {
    gateway_names(true, Up::Socks);
}

/// The upstream capagent of [`gateway_names`].
#[derive(Clone, Copy, PartialEq)]
enum Up {
    Socks,
    HttpConnect,
}

/// The gateway tests above: the client resolves over UDP (`--udp`) or TCP; the upstream is
/// `capagent proxy socks` or `capagent proxy http`.
fn gateway_names(udp: bool, up: Up) {
    let g = Gateway::new(match (udp, up) {
        (true, _) => "sxu",
        (false, Up::Socks) => "sxn",
        (false, Up::HttpConnect) => "sxh",
    });
    let dir = TempDir::new("socksify-names");
    let mut cmd = g.server.cmd(capagent());
    cmd.args(["dns", "--listen", "10.78.2.2:53", "--answer", "10.78.2.2"])
        .args(["--name", "app.example", "--ttl", "300"]);
    let dns = Agent::spawn(cmd, 1);
    let _server_etc = NetnsEtc::new(&g.server, &[("resolv.conf", "nameserver 10.78.2.2\n")]);
    let _client_etc = NetnsEtc::new(
        &g.client,
        &[(
            "resolv.conf",
            if udp {
                "nameserver 10.78.2.2\n"
            } else {
                "nameserver 10.78.2.2\noptions use-vc\n"
            },
        )],
    );
    // One line server for the run with names, one for the run without.
    let line_server = || {
        Server::script(
            &g.server,
            &dir,
            "line_server.py",
            LINE_SERVER,
            &["1".into(), "10.78.2.2".into()],
        )
    };
    let servers = [line_server(), line_server()];
    let up_jsonl = dir.join("upstream.jsonl");
    let mut cmd = g.server.cmd(capagent());
    let (kind, scheme, up_proxy) = match up {
        Up::Socks => ("socks", "socks5", "socks5 connect"),
        Up::HttpConnect => ("http", "http", "http connect"),
    };
    cmd.args(["proxy", kind, "--listen", "10.78.2.2:0"])
        .args(["--format", "json", "-o"])
        .arg(&up_jsonl);
    if up == Up::HttpConnect {
        let ports = format!("53,{},{}", servers[0].port, servers[1].port);
        cmd.args(["--connect-ports", &ports]);
    }
    let upstream = Agent::spawn(cmd, 1);
    let via = format!("{scheme}://{}", upstream.addr());
    let client = dir.write("SocketClient.java", SOCKET_CLIENT);

    let through = |mut server: Server, name: &str, extra: &[&str]| {
        let jsonl = dir.join(&format!("{name}.jsonl"));
        let mut c = g.gw.cmd(capagent());
        c.args(["intercept", "--mode", "tproxy", "--iface", "g0"])
            .args(["--upstream-proxy", &via])
            .args(if udp { &["--udp"][..] } else { &[] })
            .args(extra)
            .args(["--format", "json", "-o"])
            .arg(&jsonl);
        let mut agent = Proc::spawn("capagent intercept", c);
        agent.wait_stderr("capagent: intercepting", 1, TIMEOUT);
        let port = server.port.to_string();
        let msg = format!("hello {name}");
        let mut c = g.client.cmd("java");
        c.arg(&client).args(["app.example", &port, &msg]);
        assert_eq!(
            run_output("java SocketClient", c, TIMEOUT * 2),
            format!("ANSWER echo:{msg}\n")
        );
        assert_eq!(server.proc.expect("PEER", TIMEOUT), "10.78.2.2");
        let line = format!("{msg}\n");
        assert_eq!(server.proc.expect("GOT", TIMEOUT), hex(line.as_bytes()));
        agent.terminate(TIMEOUT);
        let evs = records(&jsonl);
        // The DNS went through the intercept (over TCP through the upstream), by address.
        let how = if udp { "tproxy udp" } else { "tproxy" };
        let dns_opens: Vec<&Value> = evs
            .iter()
            .filter(|e| e.ty() == "open" && e["target"] == "10.78.2.2:53")
            .collect();
        assert!(!dns_opens.is_empty(), "{}", dump(&evs));
        for o in dns_opens {
            assert!(o["proxy"].as_str().unwrap().starts_with(how), "{o}");
            assert_eq!(o.ret(), 0, "{o}");
        }
        (evs, port, line)
    };

    let [names_server, addr_server] = servers;
    let (evs, port, line) = through(names_server, "names", &[]);
    let target = format!("app.example:{port}");
    let open = one(&evs, &format!("open of {target}"), |e| {
        e.ty() == "open" && e["target"] == target
    });
    assert_eq!(open["proxy"], format!("tproxy via {via}"), "{open}");
    assert_eq!(open["resolved"], format!("10.78.2.2:{port}"), "{open}");
    assert_eq!(open.ret(), 0, "{open}");
    assert_eq!(recorded(&evs, open.fd(), "send"), line.as_bytes());
    assert_eq!(
        recorded(&evs, open.fd(), "recv"),
        format!("echo:{line}").as_bytes()
    );

    // --no-upstream-names: the address goes, as the program connected.
    let (evs, addr_port, _) = through(addr_server, "addresses", &["--no-upstream-names"]);
    let addr_target = format!("10.78.2.2:{addr_port}");
    let open = one(&evs, &format!("open of {addr_target}"), |e| {
        e.ty() == "open" && e["target"] == addr_target
    });
    assert_eq!(open.ret(), 0, "{open}");
    assert!(
        !evs.iter()
            .any(|e| e.ty() == "open" && e["target"] == target),
        "{}",
        dump(&evs)
    );

    upstream.stop();
    dns.stop();
    let evs = records(&up_jsonl);
    let open = open_of(&evs, up_proxy, &target);
    assert_eq!(open.ret(), 0, "{open}");
    assert_eq!(recorded(&evs, open.fd(), "send"), line.as_bytes());
    assert_eq!(
        recorded(&evs, open.fd(), "recv"),
        format!("echo:{line}").as_bytes()
    );
    let open = open_of(&evs, up_proxy, &addr_target);
    assert_eq!(open.ret(), 0, "{open}");
}

/// Socksify by name per process: `intercept --udp --upstream-proxy socks5://... -- java
/// SocketClient app.example PORT` in a namespace whose resolv.conf names a `capagent dns` on
/// loopback. The C library's DNS queries are the client's datagrams (`--udp`), carried to
/// the DNS server by UDP ASSOCIATE through the upstream; the intercept learns `app.example`
/// from the answer, so the connection to its address goes to the upstream `capagent proxy
/// socks` as the name, which resolves it itself (the same DNS server) and records
/// `app.example:PORT` as the target. Both capagents record the bytes; the intercept's
/// records hold the DNS flow, the question naming `app.example` and the answer its address.
///
/// An `http://` upstream has no per-process counterpart: `--udp` with it is refused
/// ([`udp_through_upstream_refused`]) and per process TCP to port 53 is not intercepted, so
/// there is no answer to learn names from; relaying DNS datagrams directly instead would
/// leak the program's lookups past the proxy it is forced through.
#[test]
fn per_process_names_over_udp_through_capagent_socks() {
    let ns = Netns::new("sxp");
    let dir = TempDir::new("socksify-process-names");
    let _etc = NetnsEtc::new(&ns, &[("resolv.conf", "nameserver 127.0.0.1\n")]);
    let mut cmd = ns.cmd(capagent());
    cmd.args(["dns", "--listen", "127.0.0.1:53", "--answer", "127.0.0.2"])
        .args(["--name", "app.example", "--ttl", "300"]);
    let dns = Agent::spawn(cmd, 1);
    let mut server = Server::script(
        &ns,
        &dir,
        "line_server.py",
        LINE_SERVER,
        &["1".into(), "127.0.0.2".into()],
    );
    let up_jsonl = dir.join("upstream.jsonl");
    let mut cmd = ns.cmd(capagent());
    cmd.args(["proxy", "socks", "--listen", "127.0.0.1:0", "--auth", "u:p"])
        .args(["--format", "json", "-o"])
        .arg(&up_jsonl);
    let upstream = Agent::spawn(cmd, 1);
    let via = format!("socks5://{}", upstream.addr());

    let client = dir.write("SocketClient.java", SOCKET_CLIENT);
    let jsonl = dir.join("names.jsonl");
    let port = server.port.to_string();
    let msg = "hello by name";
    let mut c = ns.cmd(capagent());
    c.args(["intercept", "--udp", "--format", "json", "-o"])
        .arg(&jsonl)
        .args([
            "--upstream-proxy",
            &format!("socks5://u:p@{}", upstream.addr()),
        ])
        .args(["--", "java", &client, "app.example", &port, msg]);
    assert_eq!(
        run_output(
            "capagent intercept --udp --upstream-proxy -- java",
            c,
            TIMEOUT * 2
        ),
        format!("ANSWER echo:{msg}\n")
    );
    let line = format!("{msg}\n");
    assert_eq!(server.proc.expect("GOT", TIMEOUT), hex(line.as_bytes()));

    let evs = records(&jsonl);
    let target = format!("app.example:{port}");
    let open = intercept_open(&evs, &target, "java", &via);
    assert_eq!(open["resolved"], format!("127.0.0.2:{port}"), "{open}");
    assert_eq!(recorded(&evs, open.fd(), "send"), line.as_bytes());
    assert_eq!(
        recorded(&evs, open.fd(), "recv"),
        format!("echo:{line}").as_bytes()
    );
    // The DNS flows: the client's datagrams to 127.0.0.1:53, through the upstream; a
    // question naming app.example and an answer carrying 127.0.0.2.
    let dns_opens: Vec<&Value> = evs
        .iter()
        .filter(|e| e.ty() == "open" && e["target"] == "127.0.0.1:53")
        .collect();
    assert!(!dns_opens.is_empty(), "{}", dump(&evs));
    let (mut questions, mut answers) = (Vec::new(), Vec::new());
    for o in dns_opens {
        let proxy = o["proxy"].as_str().unwrap();
        assert!(
            proxy.starts_with("process udp pid=") && proxy.ends_with(&format!(" via {via}")),
            "{o}"
        );
        assert_eq!(o.ret(), 0, "{o}");
        questions.extend(recorded(&evs, o.fd(), "send"));
        answers.extend(recorded(&evs, o.fd(), "recv"));
    }
    let name = b"\x03app\x07example\x00";
    let has = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    assert!(has(&questions, name), "{}", dump(&evs));
    assert!(has(&answers, name), "{}", dump(&evs));
    assert!(has(&answers, &[127, 0, 0, 2]), "{}", dump(&evs));
    assert!(
        !evs.iter()
            .any(|e| e.ty() == "open" && e["target"] == format!("127.0.0.2:{port}")),
        "the address went instead of the name: {}",
        dump(&evs)
    );

    upstream.stop();
    dns.stop();
    let evs = records(&up_jsonl);
    let open = open_of(&evs, "socks5 connect", &target);
    assert_eq!(open.ret(), 0, "{open}");
    assert_eq!(recorded(&evs, open.fd(), "send"), line.as_bytes());
    assert_eq!(
        recorded(&evs, open.fd(), "recv"),
        format!("echo:{line}").as_bytes()
    );
    // The DNS datagrams went through the upstream too, by UDP ASSOCIATE.
    assert!(
        evs.iter()
            .any(|e| e.ty() == "open" && e["proxy"] == "socks5 udp-associate"),
        "{}",
        dump(&evs)
    );
}
