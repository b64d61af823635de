//! The HTTP rules in `intercept` (root: per-process interception in a network namespace of
//! the test's own): `intercept --set-header ... --replace-http ... -- curl URL`, the request
//! changed as recorded, the response body changed (a different length) as curl prints it.

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
