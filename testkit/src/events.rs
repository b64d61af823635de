//! capagent's JSON events: accessors and selections.

use base64::Engine as _;
use serde_json::Value;

/// Accessors of capagent's JSON events.
pub trait Ev {
    fn ty(&self) -> &str;
    fn str_of(&self, key: &str) -> Option<&str>;
    fn int(&self, key: &str) -> i64;
    fn syscall(&self) -> &str;
    fn pid(&self) -> u32;
    fn fd(&self) -> i64;
    fn ret(&self) -> i64;
    /// The captured payload (from `payload_b64`), checked against `captured` and the escaped
    /// `payload` field.
    fn payload(&self) -> Vec<u8>;
}

impl Ev for Value {
    fn ty(&self) -> &str {
        self["type"].as_str().expect("event without type")
    }
    fn str_of(&self, key: &str) -> Option<&str> {
        match &self[key] {
            Value::Null => None,
            Value::String(s) => Some(s),
            other => panic!("{key} is not a string or null: {other} in {self}"),
        }
    }
    fn int(&self, key: &str) -> i64 {
        self[key]
            .as_i64()
            .unwrap_or_else(|| panic!("{key} is not an integer in {self}"))
    }
    fn syscall(&self) -> &str {
        self["syscall"].as_str().expect("event without syscall")
    }
    fn pid(&self) -> u32 {
        self.int("pid") as u32
    }
    fn fd(&self) -> i64 {
        self.int("fd")
    }
    fn ret(&self) -> i64 {
        self.int("ret")
    }
    fn payload(&self) -> Vec<u8> {
        let b64 = self["payload_b64"]
            .as_str()
            .unwrap_or_else(|| panic!("no payload_b64 in {self}"));
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap_or_else(|e| panic!("bad base64 ({e}) in {self}"));
        assert_eq!(
            bytes.len() as i64,
            self.int("captured"),
            "captured != payload length: {self}"
        );
        assert_eq!(
            self["payload"].as_str().unwrap(),
            escape(&bytes),
            "escaped payload does not match payload_b64: {self}"
        );
        bytes
    }
}

/// strace-style escaping, as documented in agent/src/output/escape.rs.
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::new();
    for &b in bytes {
        match b {
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

pub fn of_type<'a>(evs: &'a [Value], ty: &str) -> Vec<&'a Value> {
    evs.iter().filter(|e| e.ty() == ty).collect()
}

pub fn of_pid(evs: &[Value], pid: u32) -> Vec<&Value> {
    evs.iter()
        .filter(|e| e.ty() != "lost" && e.pid() == pid)
        .collect()
}

/// Data events of `pid` on `fd` in direction `dir` (`"send"`/`"recv"`), in order.
pub fn data_on<'a>(evs: &'a [Value], pid: u32, fd: i64, dir: &str) -> Vec<&'a Value> {
    evs.iter()
        .filter(|e| {
            e.ty() == "data" && e.pid() == pid && e.fd() == fd && e["dir"].as_str() == Some(dir)
        })
        .collect()
}

/// The payloads of `evs` concatenated.
pub fn concat(evs: &[&Value]) -> Vec<u8> {
    evs.iter().flat_map(|e| e.payload()).collect()
}

/// The one event for which `pred` holds; panics when there are none or several.
pub fn one<'a>(evs: &'a [Value], what: &str, pred: impl Fn(&Value) -> bool) -> &'a Value {
    let found: Vec<&Value> = evs.iter().filter(|e| pred(e)).collect();
    assert_eq!(
        found.len(),
        1,
        "want exactly one {what}, found {}: {found:#?}\nall events:\n{}",
        found.len(),
        dump(evs)
    );
    found[0]
}

/// All events, one per line, for failure messages.
pub fn dump(evs: &[Value]) -> String {
    let mut s = String::new();
    for e in evs {
        s.push_str(&e.to_string());
        s.push('\n');
    }
    s
}

/// The pid of the process `capagent trace -- ...` started: the first `exec` event's pid.
pub fn exec_pid(evs: &[Value], comm: &str) -> u32 {
    let execs: Vec<&Value> = evs
        .iter()
        .filter(|e| e.ty() == "exec" && e.str_of("comm") == Some(comm))
        .collect();
    assert!(!execs.is_empty(), "no exec of {comm}:\n{}", dump(evs));
    execs[0].pid()
}

/// An `edit` record (`--replace`): (dir, rule, offset, before, after).
pub type EditRec = (String, String, u64, Vec<u8>, Vec<u8>);

/// The `edit` records, in order.
pub fn edits(evs: &[Value]) -> Vec<EditRec> {
    let b64 = |v: &Value| {
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap()
    };
    evs.iter()
        .filter(|e| e.ty() == "edit")
        .map(|e| {
            (
                e["dir"].as_str().unwrap().to_string(),
                e["rule"].as_str().unwrap().to_string(),
                e["offset"].as_u64().unwrap(),
                b64(&e["before_b64"]),
                b64(&e["after_b64"]),
            )
        })
        .collect()
}

/// The [`EditRec`] of `rule` changing `before` into `after` at `offset` in direction `dir`.
pub fn edit(dir: &str, rule: &str, offset: u64, before: &[u8], after: &[u8]) -> EditRec {
    (
        dir.into(),
        rule.into(),
        offset,
        before.to_vec(),
        after.to_vec(),
    )
}
