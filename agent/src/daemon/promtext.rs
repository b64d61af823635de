//! Reading the metrics back (`capagent status`): the HTTP response of the metrics endpoint
//! and the Prometheus text exposition format, pure functions over bytes.
//!
//! The exposition parser reads what [`super::metrics`] writes and what Prometheus text
//! generally holds: `# HELP`/`# TYPE` and other comments are skipped, a sample is
//! `name{label="value",...} value [timestamp]`, label values escape `\\`, `\"` and `\n`.
//! Lines it cannot read are skipped (they do not hide the others).

/// One sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Every sample of `text`, in order.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

fn is_name_char(c: char, first: bool) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':' || (!first && c.is_ascii_digit())
}

/// One sample line, or None for comments, blank and unreadable lines.
pub fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line
        .char_indices()
        .find(|&(i, c)| !is_name_char(c, i == 0))
        .map_or(line.len(), |(i, _)| i);
    if name_end == 0 {
        return None;
    }
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(r) = rest.strip_prefix('{') {
        rest = r;
        loop {
            rest = rest.trim_start();
            if let Some(r) = rest.strip_prefix('}') {
                rest = r;
                break;
            }
            let key_end = rest
                .char_indices()
                .find(|&(i, c)| !is_name_char(c, i == 0))
                .map(|(i, _)| i)?;
            if key_end == 0 {
                return None;
            }
            let key = &rest[..key_end];
            rest = rest[key_end..].trim_start().strip_prefix('=')?;
            rest = rest.trim_start().strip_prefix('"')?;
            let mut value = String::new();
            let mut chars = rest.char_indices();
            let end = loop {
                let (i, c) = chars.next()?;
                match c {
                    '"' => break i,
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        '\\' => value.push('\\'),
                        '"' => value.push('"'),
                        other => {
                            value.push('\\');
                            value.push(other);
                        }
                    },
                    c => value.push(c),
                }
            };
            rest = &rest[end + 1..];
            labels.push((key.to_string(), value));
            rest = rest.trim_start();
            if let Some(r) = rest.strip_prefix(',') {
                rest = r;
            } else if !rest.starts_with('}') {
                return None;
            }
        }
    }
    let mut fields = rest.split_whitespace();
    let value = match fields.next()? {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().ok()?,
    };
    // An optional timestamp, nothing else.
    if let Some(ts) = fields.next()
        && ts.parse::<i64>().is_err()
    {
        return None;
    }
    if fields.next().is_some() {
        return None;
    }
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// Why an HTTP response was not a metrics page.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    #[error("not an HTTP response")]
    NotHttp,
    #[error("the response has no end of header")]
    Incomplete,
    #[error("HTTP status {0}")]
    Status(u16),
    #[error("the body is not UTF-8")]
    NotText,
}

/// The body of a complete HTTP/1.x response (read until the server closed) with status 200.
pub fn response_body(resp: &[u8]) -> Result<&str, ResponseError> {
    let rest = resp
        .strip_prefix(b"HTTP/1.")
        .ok_or(ResponseError::NotHttp)?;
    let status_line_end = rest
        .iter()
        .position(|&b| b == b'\n')
        .ok_or(ResponseError::Incomplete)?;
    let status_line =
        std::str::from_utf8(&rest[..status_line_end]).map_err(|_| ResponseError::NotHttp)?;
    let code: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or(ResponseError::NotHttp)?;
    let head_end = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
        .or_else(|| resp.windows(2).position(|w| w == b"\n\n").map(|i| i + 2))
        .ok_or(ResponseError::Incomplete)?;
    if code != 200 {
        return Err(ResponseError::Status(code));
    }
    std::str::from_utf8(&resp[head_end..]).map_err(|_| ResponseError::NotText)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_labels_and_escapes() {
        let text = "# HELP x y\n# TYPE x counter\nx 3\nup{job=\"a\\\"b\",kind=\"proxy socks\"} 1 1700000000000\n\
                    fill{job=\"c\"} 0.250000\nbad{job=\"a\" 1\nstate{error=\"line\\nnext \\\\ end\",} 1\n{x=\"1\"} 2\ninf +Inf\n";
        let s = parse(text);
        assert_eq!(s.len(), 5, "{s:?}");
        assert_eq!(s[0].name, "x");
        assert_eq!(s[0].value, 3.0);
        assert_eq!(s[1].label("job"), Some("a\"b"));
        assert_eq!(s[1].label("kind"), Some("proxy socks"));
        assert_eq!(s[2].value, 0.25);
        assert_eq!(s[3].label("error"), Some("line\nnext \\ end"));
        assert!(s[4].value.is_infinite());
        assert_eq!(parse_line("x 1 2 3"), None);
        assert_eq!(parse_line("x{y=\"1\"}"), None);
    }

    #[test]
    fn responses() {
        assert_eq!(
            response_body(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nx 1\n"),
            Ok("x 1\n")
        );
        assert_eq!(
            response_body(b"HTTP/1.0 404 Not Found\r\n\r\nnope"),
            Err(ResponseError::Status(404))
        );
        assert_eq!(response_body(b"SSH-2.0-x\r\n"), Err(ResponseError::NotHttp));
        assert_eq!(
            response_body(b"HTTP/1.1 200 OK\r\nX: y"),
            Err(ResponseError::Incomplete)
        );
    }
}
