//! The HTTP rules' flags: `--replace-http 'DIR:SCOPE:/REGEX/REPLACEMENT/[FLAGS]'`,
//! `--set-header 'DIR:NAME: VALUE'`, `--drop-header 'DIR:NAME'`, `--anticomp`,
//! `--decode-bodies`; parsed into [`HttpOptions`], which [`super::http::HttpRewriter`]
//! applies.
//!
//! Pure functions over the flags' text: no I/O.

use std::sync::Arc;

use clap::Args;

use super::rule::{self, Dir, Rule, RuleError};

#[derive(Debug, thiserror::Error)]
pub enum HttpRuleError {
    #[error("{rule:?}: expected {expected}")]
    Syntax {
        rule: String,
        expected: &'static str,
    },
    #[error(transparent)]
    Rule(#[from] RuleError),
}

const REPLACE: &str = "DIR:SCOPE:/REGEX/REPLACEMENT/[FLAGS] with DIR c2s, s2c or both, SCOPE line, header:NAME or body";

/// Where a `--replace-http` rule applies in a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The request or status line (without its line end).
    Line,
    /// The value of each field of this name (any case).
    Header(String),
    /// The body, decoded (chunked and content codings undone).
    Body,
}

/// What an HTTP rule does.
#[derive(Clone, Debug)]
pub enum Change {
    Replace {
        scope: Scope,
        rule: Arc<Rule>,
    },
    /// Fields of this name replaced by one with this value (added when absent).
    Set {
        name: String,
        value: Vec<u8>,
    },
    /// Fields of this name removed.
    Drop {
        name: String,
    },
}

/// One HTTP rule.
#[derive(Clone, Debug)]
pub struct HttpRule {
    /// The flag and its value as written (`--set-header c2s:X-A: 1`), for records.
    pub text: String,
    pub dir: Dir,
    pub change: Change,
}

/// Most body bytes held for the body rules (a larger body passes unchanged).
pub const DEFAULT_BODY_MAX: usize = 16 << 20;
/// Most decoded bytes a `--decode-bodies` record carries.
pub const DEFAULT_DECODED_MAX: usize = 64 << 10;

/// Every HTTP rule of a session.
#[derive(Clone, Debug)]
pub struct HttpOptions {
    pub rules: Vec<HttpRule>,
    /// `--anticomp`: requests lose `Accept-Encoding` and WebSocket `permessage-deflate`.
    pub anticomp: bool,
    /// `--decode-bodies`: compressed bodies are also recorded decoded, at most this many
    /// bytes.
    pub decode_bodies: Option<usize>,
    /// Most body bytes held for the body rules.
    pub body_max: usize,
}

impl Default for HttpOptions {
    /// No rules, the default limits.
    fn default() -> HttpOptions {
        HttpOptions {
            rules: Vec::new(),
            anticomp: false,
            decode_bodies: None,
            body_max: DEFAULT_BODY_MAX,
        }
    }
}

impl HttpOptions {
    /// Whether nothing is asked for (messages pass as they are, and are not even parsed).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty() && !self.anticomp && self.decode_bodies.is_none()
    }

    /// Index of `--anticomp` among the edits' rules (after the rules).
    pub fn anticomp_index(&self) -> usize {
        self.rules.len()
    }

    /// Index of `--decode-bodies` among the edits' rules.
    pub fn decoded_index(&self) -> usize {
        self.rules.len() + 1
    }

    /// The text records show for rule `i` (an index of [`super::stream::Edit::rule`] minus
    /// the raw rules before).
    pub fn text(&self, i: usize) -> String {
        match self.rules.get(i) {
            Some(r) => r.text.clone(),
            None if i == self.anticomp_index() => "--anticomp".into(),
            None => "--decode-bodies".into(),
        }
    }
}

/// The command-line flags of the HTTP rules (every proxy and `intercept`).
#[derive(Args, Debug, Clone, Default)]
pub struct HttpRuleArgs {
    /// Change HTTP messages: DIR:SCOPE:/REGEX/REPLACEMENT/[FLAGS] with SCOPE line,
    /// header:NAME or body (decoded; lengths fixed); repeatable (docs/rewrite.md).
    #[arg(long = "replace-http", value_name = "RULE")]
    pub replace_http: Vec<String>,
    /// Set an HTTP header field: 'DIR:NAME: VALUE' (replaces fields of that name); repeatable.
    #[arg(long = "set-header", value_name = "DIR:NAME: VALUE")]
    pub set_header: Vec<String>,
    /// Remove an HTTP header field: DIR:NAME; repeatable.
    #[arg(long = "drop-header", value_name = "DIR:NAME")]
    pub drop_header: Vec<String>,
    /// Remove Accept-Encoding (and WebSocket permessage-deflate) from requests, so servers
    /// answer uncompressed.
    #[arg(long)]
    pub anticomp: bool,
    /// Also record compressed HTTP bodies decoded (gzip, deflate, br, zstd), up to
    /// --decode-bodies-max bytes each.
    #[arg(long)]
    pub decode_bodies: bool,
    /// Most decoded bytes recorded per body with --decode-bodies.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_DECODED_MAX)]
    pub decode_bodies_max: usize,
    /// Largest body (as received) the body rules hold and change; larger ones pass unchanged.
    #[arg(long = "http-body-max", value_name = "BYTES", default_value_t = DEFAULT_BODY_MAX)]
    pub body_max: usize,
}

impl HttpRuleArgs {
    /// The rules (None when no HTTP flag is given); a bad rule is the error, naming its flag.
    pub fn options(&self) -> anyhow::Result<Option<Arc<HttpOptions>>> {
        let mut rules = Vec::new();
        for r in &self.replace_http {
            rules.push(parse_replace(r).map_err(|e| anyhow::anyhow!("--replace-http {e}"))?);
        }
        for r in &self.set_header {
            rules.push(parse_set(r).map_err(|e| anyhow::anyhow!("--set-header {e}"))?);
        }
        for r in &self.drop_header {
            rules.push(parse_drop(r).map_err(|e| anyhow::anyhow!("--drop-header {e}"))?);
        }
        let opts = HttpOptions {
            rules,
            anticomp: self.anticomp,
            decode_bodies: self.decode_bodies.then_some(self.decode_bodies_max),
            body_max: self.body_max,
        };
        Ok((!opts.is_empty()).then(|| Arc::new(opts)))
    }
}

fn dir_of(s: &str) -> Option<Dir> {
    match s {
        "c2s" => Some(Dir::C2s),
        "s2c" => Some(Dir::S2c),
        "both" => Some(Dir::Both),
        _ => None,
    }
}

/// A header field name: a token (RFC 9110 5.6.2).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// `--replace-http DIR:SCOPE:/REGEX/REPLACEMENT/[FLAGS]`.
pub fn parse_replace(text: &str) -> Result<HttpRule, HttpRuleError> {
    let syntax = || HttpRuleError::Syntax {
        rule: text.to_string(),
        expected: REPLACE,
    };
    let (dir, rest) = text.split_once(':').ok_or_else(syntax)?;
    let dir_s = dir;
    let dir = dir_of(dir).ok_or_else(syntax)?;
    let (scope, rest) = if let Some(r) = rest.strip_prefix("line:") {
        (Scope::Line, r)
    } else if let Some(r) = rest.strip_prefix("body:") {
        (Scope::Body, r)
    } else if let Some(r) = rest.strip_prefix("header:") {
        let (name, r) = r.split_once(':').ok_or_else(syntax)?;
        if !is_token(name) {
            return Err(syntax());
        }
        (Scope::Header(name.to_string()), r)
    } else {
        return Err(syntax());
    };
    let mut rule = rule::parse(&format!("{dir_s}:{rest}")).map_err(|e| match e {
        RuleError::Syntax(_) => syntax(),
        RuleError::Bad { why, .. } => HttpRuleError::Rule(RuleError::Bad {
            rule: text.to_string(),
            why,
        }),
    })?;
    rule.text = text.to_string();
    Ok(HttpRule {
        text: format!("--replace-http {text}"),
        dir,
        change: Change::Replace {
            scope,
            rule: Arc::new(rule),
        },
    })
}

/// `--set-header DIR:NAME: VALUE`.
pub fn parse_set(text: &str) -> Result<HttpRule, HttpRuleError> {
    let syntax = || HttpRuleError::Syntax {
        rule: text.to_string(),
        expected: "DIR:NAME: VALUE with DIR c2s, s2c or both",
    };
    let (dir, rest) = text.split_once(':').ok_or_else(syntax)?;
    let dir = dir_of(dir).ok_or_else(syntax)?;
    let (name, value) = rest.split_once(':').ok_or_else(syntax)?;
    let value = value.trim_matches([' ', '\t']);
    if !is_token(name) || value.contains(['\r', '\n']) {
        return Err(syntax());
    }
    Ok(HttpRule {
        text: format!("--set-header {text}"),
        dir,
        change: Change::Set {
            name: name.to_string(),
            value: value.as_bytes().to_vec(),
        },
    })
}

/// `--drop-header DIR:NAME`.
pub fn parse_drop(text: &str) -> Result<HttpRule, HttpRuleError> {
    let syntax = || HttpRuleError::Syntax {
        rule: text.to_string(),
        expected: "DIR:NAME with DIR c2s, s2c or both",
    };
    let (dir, name) = text.split_once(':').ok_or_else(syntax)?;
    let dir = dir_of(dir).ok_or_else(syntax)?;
    if !is_token(name) {
        return Err(syntax());
    }
    Ok(HttpRule {
        text: format!("--drop-header {text}"),
        dir,
        change: Change::Drop {
            name: name.to_string(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules() {
        let r = parse_replace("s2c:body:/Boo!/Yay!/i2").unwrap();
        assert_eq!(r.dir, Dir::S2c);
        assert_eq!(r.text, "--replace-http s2c:body:/Boo!/Yay!/i2");
        let Change::Replace { scope, rule } = &r.change else {
            panic!()
        };
        assert_eq!(*scope, Scope::Body);
        assert_eq!(
            (rule.limit, rule.replacement.as_slice()),
            (Some(2), &b"Yay!"[..])
        );
        let r = parse_replace("c2s:header:User-Agent:#curl/[0-9.]+#x#").unwrap();
        assert!(
            matches!(&r.change, Change::Replace { scope: Scope::Header(n), .. } if n == "User-Agent")
        );
        let r = parse_replace("both:line:/HTTP\\/1.1/HTTP\\/1.0/").unwrap();
        assert!(matches!(
            &r.change,
            Change::Replace {
                scope: Scope::Line,
                ..
            }
        ));
        let r = parse_set("c2s:X-Test:  a: b ").unwrap();
        assert!(
            matches!(&r.change, Change::Set { name, value } if name == "X-Test" && value == b"a: b")
        );
        let r = parse_drop("s2c:Server").unwrap();
        assert!(matches!(&r.change, Change::Drop { name } if name == "Server"));
    }

    #[test]
    fn bad_rules() {
        for s in [
            "",
            "s2c:/a/b/",
            "up:body:/a/b/",
            "s2c:head:/a/b/",
            "s2c:header::/a/b/",
            "s2c:body:/a/b",
        ] {
            let e = parse_replace(s).unwrap_err().to_string();
            assert!(e.contains("expected DIR:SCOPE:"), "{s}: {e}");
        }
        let e = parse_replace("s2c:body:/a(/b/").unwrap_err().to_string();
        assert!(e.ends_with("bad regex: unclosed group"), "{e}");
        assert!(parse_set("c2s:X-A").is_err());
        assert!(parse_set("c2s:X A: 1").is_err());
        assert!(parse_set("x:X-A: 1").is_err());
        assert!(parse_drop("c2s:").is_err());
        assert!(parse_drop("c2s:X:Y").is_err());
    }
}
