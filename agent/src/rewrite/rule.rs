//! `--replace 'DIR:/REGEX/REPLACEMENT/[FLAGS]'`: parsing a rule, and the byte regex it makes.
//!
//! - `DIR` is `c2s` (client to server), `s2c` or `both`.
//! - The character after `DIR:` is the delimiter (usually `/`); a delimiter inside REGEX or
//!   REPLACEMENT is written `\/` (backslash, delimiter).
//! - REGEX is a byte regex (the `regex` crate's syntax, Unicode off): `\x00` matches the byte
//!   0, `.` any byte but `\n` (any byte with the `s` flag).
//! - REPLACEMENT is bytes: `\\`, `\n`, `\r`, `\t`, `\0` and `\xHH` are escapes, `$1` and
//!   `${name}` insert a group of the match, `$$` a dollar sign.
//! - FLAGS: `i` (ignore ASCII case), `s` (`.` matches `\n`), `m` (`^`/`$` at line ends), and
//!   a number: the most replacements the rule makes in one direction of one connection.
//!
//! Pure functions over the rule's text: no I/O.

use std::fmt;

use regex::bytes::{Regex, RegexBuilder};
use regex_automata::hybrid::dfa::DFA;
use regex_automata::util::syntax;

/// Which direction of a connection a rule applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// Client to server.
    C2s,
    /// Server to client.
    S2c,
    Both,
}

impl Dir {
    /// Whether a rule of this direction applies to the client-to-server direction
    /// (`to_server`) or the other one.
    pub fn applies(self, to_server: bool) -> bool {
        match self {
            Dir::Both => true,
            Dir::C2s => to_server,
            Dir::S2c => !to_server,
        }
    }
}

/// Most bytes a compiled rule may take (the regex and its lazy DFA each).
const SIZE_LIMIT: usize = 4 << 20;

/// One `--replace` rule, compiled.
#[derive(Clone)]
pub struct Rule {
    /// The rule as written (for records and messages).
    pub text: String,
    pub dir: Dir,
    /// The search.
    pub regex: Regex,
    /// The same pattern as a lazy DFA, run anchored to tell whether bytes at the end of what
    /// arrived may start a match that more bytes would complete.
    pub dfa: DFA,
    /// The replacement, escapes decoded (`$` group references left for expansion).
    pub replacement: Vec<u8>,
    /// Most replacements per direction of a connection.
    pub limit: Option<u64>,
}

impl fmt::Debug for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rule").field("text", &self.text).finish()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RuleError {
    #[error("{0:?}: expected DIR:/REGEX/REPLACEMENT/[FLAGS] with DIR c2s, s2c or both")]
    Syntax(String),
    #[error("{rule:?}: {why}")]
    Bad { rule: String, why: String },
}

impl std::str::FromStr for Rule {
    type Err = RuleError;

    fn from_str(s: &str) -> Result<Rule, RuleError> {
        parse(s)
    }
}

/// A regex error on one line: its last line (`error: unclosed group`) without the pattern
/// drawn above it (the rule, quoted before it, shows the pattern).
fn one_line(e: &str) -> &str {
    let last = e.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or(e);
    last.trim().strip_prefix("error: ").unwrap_or(last.trim())
}

/// Parses and compiles a `--replace` rule.
pub fn parse(text: &str) -> Result<Rule, RuleError> {
    let syntax_err = || RuleError::Syntax(text.to_string());
    let bad = |why: String| RuleError::Bad {
        rule: text.to_string(),
        why,
    };
    let (dir, rest) = text.split_once(':').ok_or_else(syntax_err)?;
    let dir = match dir {
        "c2s" => Dir::C2s,
        "s2c" => Dir::S2c,
        "both" => Dir::Both,
        _ => return Err(syntax_err()),
    };
    let mut chars = rest.chars();
    let delim = chars.next().ok_or_else(syntax_err)?;
    if delim.is_alphanumeric() || delim == '\\' || delim.is_whitespace() {
        return Err(syntax_err());
    }
    let parts = split_unescaped(chars.as_str(), delim);
    let [pattern, replacement, flags] = parts.as_slice() else {
        return Err(syntax_err());
    };
    if pattern.is_empty() {
        return Err(bad("empty regex".into()));
    }
    let mut limit = None;
    let (mut i, mut s, mut m) = (false, false, false);
    let digits: String = flags.chars().filter(|c| c.is_ascii_digit()).collect();
    for c in flags.chars().filter(|c| !c.is_ascii_digit()) {
        match c {
            'i' => i = true,
            's' => s = true,
            'm' => m = true,
            _ => return Err(bad(format!("unknown flag {c:?} (flags: i, s, m, a count)"))),
        }
    }
    if !digits.is_empty() {
        let n: u64 = digits
            .parse()
            .map_err(|_| bad(format!("bad count {digits:?}")))?;
        if n == 0 {
            return Err(bad("a count of 0 replaces nothing".into()));
        }
        limit = Some(n);
    }
    let regex = RegexBuilder::new(pattern)
        .unicode(false)
        .case_insensitive(i)
        .dot_matches_new_line(s)
        .multi_line(m)
        .size_limit(SIZE_LIMIT)
        .build()
        .map_err(|e| bad(format!("bad regex: {}", one_line(&e.to_string()))))?;
    if regex.is_match(b"") {
        return Err(bad("the regex matches the empty string".into()));
    }
    let dfa = DFA::builder()
        .syntax(
            syntax::Config::new()
                .unicode(false)
                .utf8(false)
                .case_insensitive(i)
                .dot_matches_new_line(s)
                .multi_line(m),
        )
        .configure(DFA::config().cache_capacity(SIZE_LIMIT))
        .build(pattern)
        .map_err(|e| bad(format!("bad regex: {}", one_line(&e.to_string()))))?;
    Ok(Rule {
        text: text.to_string(),
        dir,
        regex,
        dfa,
        replacement: unescape_replacement(replacement, text)?,
        limit,
    })
}

/// Splits `s` at each `delim` not escaped by a backslash; `\DELIM` becomes `DELIM`, other
/// escapes are kept as they are (the regex or the replacement reads them).
fn split_unescaped(s: &str, delim: char) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        let cur = parts.last_mut().expect("one part at least");
        match c {
            '\\' => match chars.next() {
                Some(n) if n == delim => cur.push(n),
                Some(n) => {
                    cur.push('\\');
                    cur.push(n);
                }
                None => cur.push('\\'),
            },
            c if c == delim => parts.push(String::new()),
            c => cur.push(c),
        }
    }
    parts
}

/// Decodes the escapes of a replacement into bytes.
fn unescape_replacement(s: &str, rule: &str) -> Result<Vec<u8>, RuleError> {
    let bad = |why: String| RuleError::Bad {
        rule: rule.to_string(),
        why,
    };
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        let Some(&e) = b.get(i + 1) else {
            return Err(bad("the replacement ends with a lone backslash".into()));
        };
        i += 2;
        out.push(match e {
            b'\\' => b'\\',
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'0' => 0,
            b'x' => {
                let hex = b
                    .get(i..i + 2)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| bad("\\x needs two hex digits in the replacement".into()))?;
                i += 2;
                hex
            }
            other => {
                return Err(bad(format!(
                    "unknown escape \\{} in the replacement (\\\\ \\n \\r \\t \\0 \\xHH)",
                    other as char
                )));
            }
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(s: &str) -> String {
        parse(s).unwrap_err().to_string()
    }

    #[test]
    fn rules() {
        let r = parse("s2c:/Boo!/Yay!/").unwrap();
        assert_eq!(r.dir, Dir::S2c);
        assert_eq!(r.replacement, b"Yay!");
        assert_eq!(r.limit, None);
        assert!(r.regex.is_match(b"xBoo!x"));
        let r = parse(r"c2s:/\x00\xff\//a\/b\x00\\$1\n/i3").unwrap();
        assert_eq!(r.dir, Dir::C2s);
        assert!(r.regex.is_match(b"\x00\xff/"));
        assert_eq!(r.replacement, b"a/b\x00\\$1\n");
        assert_eq!(r.limit, Some(3));
        let r = parse("both:#user=(\\w+)#user=${1}x#i").unwrap();
        assert_eq!(r.dir, Dir::Both);
        assert!(r.regex.is_match(b"USER=bob"));
        assert_eq!(r.replacement, b"user=${1}x");
        assert!(Dir::Both.applies(true) && Dir::Both.applies(false));
        assert!(Dir::C2s.applies(true) && !Dir::C2s.applies(false));
        assert!(Dir::S2c.applies(false) && !Dir::S2c.applies(true));
    }

    #[test]
    fn bad_rules() {
        let syntax = "expected DIR:/REGEX/REPLACEMENT/[FLAGS] with DIR c2s, s2c or both";
        for s in [
            "",
            "s2c",
            "up:/a/b/",
            "s2c:/a/b",
            "s2c:/a/b/c/d",
            "s2c:a/b/",
            "s2c:",
        ] {
            assert!(err(s).ends_with(syntax), "{s}: {}", err(s));
        }
        assert!(err("s2c://b/").ends_with("empty regex"));
        assert!(err("s2c:/a/b/q").contains("unknown flag 'q'"));
        assert!(err("s2c:/a/b/0").contains("a count of 0"));
        assert!(err("s2c:/a(/b/").ends_with("bad regex: unclosed group"));
        assert!(err("s2c:/a*/b/").contains("matches the empty string"));
        assert!(err(r"s2c:/a/b\q/").contains("unknown escape \\q"));
        assert!(err(r"s2c:/a/b\x4/").contains("two hex digits"));
        assert!(err("s2c:/a/b\\").ends_with(syntax));
    }
}
