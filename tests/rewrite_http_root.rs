//! The HTTP rules in `intercept` (root: per-process interception in a network namespace of
//! the test's own): `intercept --set-header ... --replace-http ... -- curl URL`, the request
//! changed as recorded, the response body changed (a different length) as curl prints it;
//! the same with `--as http` (capagent's HTTP handler), a response field dropped too.

use capagent_testkit::*;

#[test]
fn intercept_command_headers_and_body() {
    let ns = Netns::new("irwh");
    let dir = TempDir::new("intercept-rwh");
    std::fs::write(dir.join("index.html"), "per process\n").unwrap();
    let _http = python_http_server(&ns, &dir.join(""), "127.0.0.1", 8091);
    let jsonl = dir.join("rwh.jsonl");
    let rule = "s2c:body:/per process/changed in flight/";
    let mut c = ns.cmd(capagent());
    c.args([
        "intercept",
        "--format",
        "json",
        "-o",
        jsonl.to_str().unwrap(),
        "--set-header",
        "c2s:X-Test: yes",
        "--replace-http",
        rule,
        "--",
    ])
    .args(["curl", "-sS", "-m", "20", "http://127.0.0.1:8091/"]);
    let out = run_output("capagent -- curl", c, TIMEOUT);
    assert_eq!(out, "changed in flight\n");
    let evs = records(&jsonl);
    let data = |dir: &str| -> Vec<u8> {
        evs.iter()
            .filter(|e| e.ty() == "data" && e["dir"] == dir)
            .flat_map(|e| e.payload())
            .collect()
    };
    let up = String::from_utf8(data("send")).unwrap();
    assert!(up.starts_with("GET / HTTP/1.1\r\n"), "{up}");
    assert!(up.ends_with("Accept: */*\r\nX-Test: yes\r\n\r\n"), "{up}");
    let down = String::from_utf8(data("recv")).unwrap();
    assert!(down.contains("\r\nContent-Length: 18\r\n"), "{down}");
    assert!(down.ends_with("\r\n\r\nchanged in flight\n"), "{down}");
    let rules: Vec<&str> = evs
        .iter()
        .filter(|e| e["type"] == "edit")
        .map(|e| e["rule"].as_str().unwrap())
        .collect();
    let body = format!("--replace-http {rule}");
    assert_eq!(
        rules,
        ["--set-header c2s:X-Test: yes", body.as_str(), body.as_str()],
        "the field, the length, the body"
    );
}

/// The same rules with `intercept --as http` (capagent's HTTP handler parses the exchanges,
/// the rules apply to its messages): a field set in the request, one dropped from the
/// response (`Server`, which Python's http.server sends), the body replaced with its length
/// fixed; curl gets the changed response, the records show the messages as sent and the
/// edits.
#[test]
fn intercept_as_http_headers_and_body() {
    use capagent_testkit::Ev as _;
    let ns = Netns::new("irwa");
    let dir = TempDir::new("intercept-rwa");
    std::fs::write(dir.join("index.html"), "per process\n").unwrap();
    let _http = python_http_server(&ns, &dir.join(""), "127.0.0.1", 8092);
    let jsonl = dir.join("rwa.jsonl");
    let head = dir.join("head");
    let rule = "s2c:body:/per process/changed in flight/";
    let mut c = ns.cmd(capagent());
    c.args(["intercept", "--as", "http", "--format", "json", "-o"])
        .arg(&jsonl)
        .args(["--set-header", "c2s:X-Test: yes"])
        .args(["--drop-header", "s2c:Server"])
        .args(["--replace-http", rule, "--"])
        .args(["curl", "-sS", "-m", "20", "-D"])
        .arg(&head)
        .arg("http://127.0.0.1:8092/");
    let out = run_output("capagent --as http -- curl", c, TIMEOUT);
    assert_eq!(out, "changed in flight\n");
    // capagent's HTTP handler answers in HTTP/1.1 (the server spoke 1.0).
    let head = std::fs::read_to_string(&head).unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head:?}");
    assert!(head.contains("\r\nContent-Length: 18\r\n"), "{head:?}");
    assert!(
        !head.to_ascii_lowercase().contains("\r\nserver:"),
        "{head:?}"
    );
    let evs = parse_json_lines(&std::fs::read_to_string(&jsonl).unwrap());
    let data = |dir: &str| -> String {
        let bytes: Vec<u8> = evs
            .iter()
            .filter(|e| e.ty() == "data" && e["dir"] == dir)
            .flat_map(|e| e.payload())
            .collect();
        String::from_utf8(bytes).unwrap()
    };
    let up = data("send");
    assert!(up.starts_with("GET / HTTP/1.1\r\n"), "{up}");
    assert!(up.ends_with("\r\nX-Test: yes\r\n\r\n"), "{up}");
    let down = data("recv");
    assert!(down.contains("\r\nContent-Length: 18\r\n"), "{down}");
    assert!(!down.to_ascii_lowercase().contains("\r\nserver:"), "{down}");
    assert!(down.ends_with("\r\n\r\nchanged in flight\n"), "{down}");
    let rules: Vec<&str> = evs
        .iter()
        .filter(|e| e.ty() == "edit")
        .map(|e| e["rule"].as_str().unwrap())
        .collect();
    let body = format!("--replace-http {rule}");
    assert_eq!(
        rules,
        [
            "--set-header c2s:X-Test: yes",
            "--drop-header s2c:Server",
            body.as_str(),
            body.as_str()
        ],
        "the field set, the field dropped, the length, the body: {}",
        dump(&evs)
    );
}
