//! `--hook CMD`: an external program that may change each message a proxy relays.
//!
//! capagent starts CMD (`sh -c CMD`) when the first message is to go to it, and speaks JSON
//! lines with it: one request per message on the hook's stdin, one answer per request on
//! its stdout, matched by `id` (requests from many connections may be in flight at once;
//! answers may come in any order). Its stderr is capagent's.
//!
//! ```text
//! -> {"id":1,"conn":3,"dir":"c2s","kind":"raw","client":"127.0.0.1:40112","target":"10.0.0.5:23","data":"aGVsbG8="}
//! <- {"id":1,"action":"replace","data":"SEVMTE8="}
//! ```
//!
//! `kind` is `raw` (a chunk of a relayed stream), `head` (an HTTP request or response head,
//! as the proxy sends it) or `body` (a piece of an HTTP body, decoded from its chunked
//! framing). `action` is `pass`, `replace` (with `data`), `drop` (the bytes are not sent)
//! or `close` (the connection is ended).
//!
//! A hook that fails never holds traffic: a message it does not answer within the timeout,
//! or at all (it crashed, exited, wrote a line that is no answer), passes unchanged. Each
//! kind of failure is logged once. A hook that died is started again at the first message
//! after a pause (1 s, doubling while it keeps dying without answering, at most 60 s); until
//! then messages pass unchanged.
//!
//! The protocol ([`encode_request`], [`parse_answer`]) is pure; [`Hook`] runs the child.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::sync::{mpsc, oneshot};

use super::stream::Edit;
use crate::model::Direction;

/// Default time a message waits for the hook's answer.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(1000);

/// Longest answer line read (longer: the hook is taken as broken).
const MAX_LINE: u64 = 64 << 20;

/// Requests queued for the hook's stdin; more are passed unchanged (the hook is too slow).
const QUEUE: usize = 1024;

/// The first pause before a dead hook is started again, and the longest.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The `rule` index of an [`Edit`] the hook made (replace or drop).
pub const HOOK_EDIT: usize = usize::MAX;
/// The `rule` index of the [`Edit`] recording a `close` answer (the bytes not sent).
pub const HOOK_CLOSE: usize = usize::MAX - 1;

/// What an edit record says made the change, when the hook did (else None: a rule).
pub fn origin(rule: usize) -> Option<&'static str> {
    match rule {
        HOOK_EDIT => Some("hook"),
        HOOK_CLOSE => Some("hook: close"),
        _ => None,
    }
}

/// What kind of message a request carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A chunk of a relayed stream, as read.
    Raw,
    /// An HTTP request or response head.
    Head,
    /// A piece of an HTTP body (without chunked framing).
    Body,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Raw => "raw",
            Kind::Head => "head",
            Kind::Body => "body",
        }
    }
}

/// One message for the hook.
#[derive(Clone, Copy, Debug)]
pub struct Message<'a> {
    /// The connection's number (the `fd` of its records when recording).
    pub conn: u32,
    /// Send: client to target (`c2s`).
    pub dir: Direction,
    pub kind: Kind,
    pub client: SocketAddr,
    /// The target as requested, once known.
    pub target: Option<&'a str>,
    pub data: &'a [u8],
}

/// The hook's answer to one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Replace(Vec<u8>),
    Drop,
    Close,
}

/// The request line (ending in `\n`) for message `id`.
pub fn encode_request(id: u64, m: &Message<'_>) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Request<'a> {
        id: u64,
        conn: u32,
        dir: &'static str,
        kind: &'static str,
        client: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        target: Option<&'a str>,
        data: String,
    }
    let r = Request {
        id,
        conn: m.conn,
        dir: match m.dir {
            Direction::Send => "c2s",
            Direction::Recv => "s2c",
        },
        kind: m.kind.as_str(),
        client: m.client.to_string(),
        target: m.target,
        data: base64::engine::general_purpose::STANDARD.encode(m.data),
    };
    let mut line = serde_json::to_vec(&r).expect("a request serializes");
    line.push(b'\n');
    line
}

/// Why an answer line is no answer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AnswerError {
    #[error("not a JSON answer object: {0}")]
    Json(String),
    #[error("unknown action {0:?} (pass, replace, drop or close)")]
    Action(String),
    #[error("\"replace\" without \"data\"")]
    NoData,
    #[error("\"data\" is not base64: {0}")]
    Base64(String),
}

/// Parses one answer line: its id and verdict. On an error, the id when the line had one
/// (so that message can pass at once instead of waiting for the timeout).
pub fn parse_answer(line: &[u8]) -> Result<(u64, Verdict), (Option<u64>, AnswerError)> {
    #[derive(serde::Deserialize)]
    struct Answer {
        id: u64,
        action: String,
        data: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct IdOnly {
        id: u64,
    }
    if line.trim_ascii_start().first() != Some(&b'{') {
        return Err((None, AnswerError::Json("not an object".into())));
    }
    let a: Answer = serde_json::from_slice(line).map_err(|e| {
        let id = serde_json::from_slice::<IdOnly>(line).ok().map(|i| i.id);
        (id, AnswerError::Json(e.to_string()))
    })?;
    let verdict = match a.action.as_str() {
        "pass" => Verdict::Pass,
        "drop" => Verdict::Drop,
        "close" => Verdict::Close,
        "replace" => {
            let data = a.data.ok_or((Some(a.id), AnswerError::NoData))?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data.as_bytes())
                .map_err(|e| (Some(a.id), AnswerError::Base64(e.to_string())))?;
            Verdict::Replace(bytes)
        }
        other => return Err((Some(a.id), AnswerError::Action(other.to_string()))),
    };
    Ok((a.id, verdict))
}

/// The edit that turns `before` into `after`, both starting at `offset` of the stream: the
/// bytes they share at the start and at the end left out.
pub fn edit_between(offset: u64, before: &[u8], after: &[u8]) -> Edit {
    let prefix = before.iter().zip(after).take_while(|(a, b)| a == b).count();
    let suffix = before[prefix..]
        .iter()
        .rev()
        .zip(after[prefix..].iter().rev())
        .take_while(|(a, b)| a == b)
        .count();
    Edit {
        rule: HOOK_EDIT,
        offset: offset + prefix as u64,
        before: before[prefix..before.len() - suffix].to_vec(),
        after: after[prefix..after.len() - suffix].to_vec(),
        decoded: None,
    }
}

/// `--hook CMD [--hook-timeout MS]`.
#[derive(Clone, Debug)]
pub struct HookSpec {
    pub command: String,
    pub timeout: Duration,
}

/// Kinds of failure, each logged once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
enum Failure {
    Start = 1,
    Died = 2,
    Garbage = 4,
    UnknownId = 8,
    Timeout = 16,
    Busy = 32,
}

enum State {
    NotStarted,
    Running {
        generation: u64,
        tx: mpsc::Sender<Vec<u8>>,
    },
    Dead {
        generation: u64,
        since: Instant,
        pause: Duration,
    },
}

struct Pending {
    generation: u64,
    tx: oneshot::Sender<Verdict>,
}

/// The hook program, shared by every connection of a proxy (started at the first message).
pub struct Hook {
    spec: HookSpec,
    next_id: AtomicU64,
    /// Connection numbers for connections that are not recorded (recorded ones have theirs).
    next_conn: AtomicU32,
    state: Mutex<State>,
    pending: Mutex<HashMap<u64, Pending>>,
    /// Deaths since the last valid answer (the pause before a restart doubles with each).
    deaths: AtomicU32,
    /// The [`Failure`]s logged so far.
    logged: AtomicU32,
}

impl Hook {
    pub fn new(spec: HookSpec) -> Arc<Hook> {
        Arc::new(Hook {
            spec,
            next_id: AtomicU64::new(1),
            next_conn: AtomicU32::new(1),
            state: Mutex::new(State::NotStarted),
            pending: Mutex::new(HashMap::new()),
            deaths: AtomicU32::new(0),
            logged: AtomicU32::new(0),
        })
    }

    /// A number for a connection that has none (not recorded).
    pub fn next_conn(&self) -> u32 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    fn log_once(&self, f: Failure, msg: impl FnOnce() -> String) {
        if self.logged.fetch_or(f as u32, Ordering::Relaxed) & f as u32 == 0 {
            tracing::warn!(
                "--hook {:?}: {} (traffic passes unchanged; this kind of failure is logged once)",
                self.spec.command,
                msg()
            );
        }
    }

    /// Asks the hook about `m`; Pass when it fails, is off, or does not answer in time.
    pub async fn ask(self: &Arc<Self>, m: &Message<'_>) -> Verdict {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let Some((generation, queue)) = self.running() else {
            return Verdict::Pass;
        };
        self.pending
            .lock()
            .expect("hook pending")
            .insert(id, Pending { generation, tx });
        if queue.try_send(encode_request(id, m)).is_err() {
            self.pending.lock().expect("hook pending").remove(&id);
            self.log_once(Failure::Busy, || {
                format!("{QUEUE} messages wait for it already")
            });
            return Verdict::Pass;
        }
        match tokio::time::timeout(self.spec.timeout, rx).await {
            Ok(Ok(v)) => v,
            // It died (logged where that was seen).
            Ok(Err(_)) => Verdict::Pass,
            Err(_) => {
                self.pending.lock().expect("hook pending").remove(&id);
                self.log_once(Failure::Timeout, || {
                    format!("no answer within {:?} (--hook-timeout)", self.spec.timeout)
                });
                Verdict::Pass
            }
        }
    }

    /// The running hook's generation and queue, starting it when it is not running (and
    /// its pause after dying is over); None while it is off.
    fn running(self: &Arc<Self>) -> Option<(u64, mpsc::Sender<Vec<u8>>)> {
        let mut state = self.state.lock().expect("hook state");
        let generation = match &*state {
            State::Running { generation, tx } => return Some((*generation, tx.clone())),
            State::NotStarted => 1,
            State::Dead {
                generation,
                since,
                pause,
            } => {
                if since.elapsed() < *pause {
                    return None;
                }
                tracing::info!("--hook {:?}: starting it again", self.spec.command);
                generation + 1
            }
        };
        match self.spawn(generation) {
            Ok(tx) => {
                *state = State::Running {
                    generation,
                    tx: tx.clone(),
                };
                Some((generation, tx))
            }
            Err(e) => {
                let pause = self.pause();
                self.log_once(Failure::Start, || {
                    format!("cannot start it: {e}; trying again in {pause:?}")
                });
                *state = State::Dead {
                    generation,
                    since: Instant::now(),
                    pause,
                };
                None
            }
        }
    }

    /// The pause before the next start after one more death.
    fn pause(&self) -> Duration {
        let deaths = self.deaths.fetch_add(1, Ordering::Relaxed).min(6);
        (FIRST_BACKOFF * (1 << deaths)).min(MAX_BACKOFF)
    }

    /// Starts `sh -c CMD` with a task writing its requests and one reading its answers.
    fn spawn(self: &Arc<Self>, generation: u64) -> std::io::Result<mpsc::Sender<Vec<u8>>> {
        let mut child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(&self.spec.command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            // Its own process group: a Ctrl-C for capagent does not kill it while capagent
            // still relays and writes out its records; capagent ends it (its stdin closes,
            // then it is killed with capagent's runtime).
            .process_group(0)
            .kill_on_drop(true)
            .spawn()?;
        let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(std::io::Error::other("no pipes to the child"));
        };
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(QUEUE);
        let hook = self.clone();
        tokio::spawn(async move {
            while let Some(line) = rx.recv().await {
                if stdin.write_all(&line).await.is_err() || stdin.flush().await.is_err() {
                    hook.died(generation, "stopped reading its input".into());
                    return;
                }
            }
            // The hook was replaced or capagent ends: its stdin closes.
        });
        let hook = self.clone();
        tokio::spawn(async move {
            let mut out = BufReader::new(stdout);
            let mut line = Vec::new();
            let why = loop {
                line.clear();
                match (&mut out).take(MAX_LINE).read_until(b'\n', &mut line).await {
                    Ok(0) => break None,
                    Err(e) => break Some(format!("reading its output: {e}")),
                    Ok(_) if !line.ends_with(b"\n") && line.len() as u64 >= MAX_LINE => {
                        break Some(format!("wrote a line longer than {MAX_LINE} bytes"));
                    }
                    Ok(_) => hook.answered(&line),
                }
            };
            let _ = child.start_kill();
            let status = child.wait().await;
            let why = why.unwrap_or_else(|| match status {
                Ok(s) => format!("ended ({s})"),
                Err(e) => format!("ended ({e})"),
            });
            hook.died(generation, why);
        });
        Ok(tx)
    }

    /// One line of the hook's output.
    fn answered(&self, line: &[u8]) {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        let (id, verdict) = match parse_answer(line) {
            Ok(a) => a,
            Err((id, e)) => {
                self.log_once(Failure::Garbage, || {
                    format!(
                        "bad answer {:?}: {e}",
                        String::from_utf8_lossy(&line[..line.len().min(200)])
                    )
                });
                // Its message (when the line says which) need not wait for the timeout.
                match id {
                    Some(id) => (id, Verdict::Pass),
                    None => return,
                }
            }
        };
        let waiting = self.pending.lock().expect("hook pending").remove(&id);
        match waiting {
            Some(p) => {
                self.deaths.store(0, Ordering::Relaxed);
                let _ = p.tx.send(verdict);
            }
            None if id != 0 && id < self.next_id.load(Ordering::Relaxed) => {
                // Answered after its timeout: that message has passed already.
            }
            None => self.log_once(Failure::UnknownId, || {
                format!("answer with an unknown id {id}")
            }),
        }
    }

    /// The hook of `generation` died: messages waiting for it pass; the next message after
    /// the pause starts it again.
    fn died(&self, generation: u64, why: String) {
        let mut state = self.state.lock().expect("hook state");
        if !matches!(&*state, State::Running { generation: g, .. } if *g == generation) {
            return;
        }
        let pause = self.pause();
        *state = State::Dead {
            generation,
            since: Instant::now(),
            pause,
        };
        drop(state);
        self.log_once(Failure::Died, || {
            format!("{why}; started again at the first message after {pause:?} (longer pauses while it keeps failing)")
        });
        // Dropping their senders lets the messages waiting for it pass now.
        self.pending
            .lock()
            .expect("hook pending")
            .retain(|_, p| p.generation != generation);
    }
}

/// Whether the relay goes on after a message went through the hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Go,
    /// The hook answered `close`: end the connection.
    Close,
}

/// The hook as one connection uses it: its number, endpoints, and the bytes passed on in
/// each direction (the offsets of the hook's edits).
pub struct Session {
    hook: Arc<Hook>,
    conn: u32,
    client: SocketAddr,
    target: OnceLock<String>,
    /// Bytes passed on: [client to target, target to client].
    sent: [AtomicU64; 2],
}

impl Session {
    pub fn new(hook: Arc<Hook>, conn: u32, client: SocketAddr) -> Session {
        Session {
            hook,
            conn,
            client,
            target: OnceLock::new(),
            sent: [AtomicU64::new(0), AtomicU64::new(0)],
        }
    }

    /// The target as requested (sent with each message from now on).
    pub fn set_target(&self, target: &str) {
        let _ = self.target.set(target.to_string());
    }

    /// Sends `out`, the bytes about to be passed on in `dir`, to the hook; replaces them with
    /// what it answers and appends the change to `edits`. A `close` answer empties `out`
    /// (recorded as an edit with the bytes not sent) and says so.
    pub async fn apply(
        &self,
        dir: Direction,
        kind: Kind,
        out: &mut Vec<u8>,
        edits: &mut Vec<Edit>,
    ) -> Flow {
        if out.is_empty() {
            return Flow::Go;
        }
        let m = Message {
            conn: self.conn,
            dir,
            kind,
            client: self.client,
            target: self.target.get().map(String::as_str),
            data: out,
        };
        let verdict = self.hook.ask(&m).await;
        let sent = &self.sent[usize::from(dir == Direction::Recv)];
        let offset = sent.load(Ordering::Relaxed);
        let flow = match verdict {
            Verdict::Pass => Flow::Go,
            Verdict::Replace(new) => {
                if new != *out {
                    edits.push(edit_between(offset, out, &new));
                    *out = new;
                }
                Flow::Go
            }
            Verdict::Drop => {
                edits.push(Edit {
                    rule: HOOK_EDIT,
                    offset,
                    before: std::mem::take(out),
                    after: Vec::new(),
                    decoded: None,
                });
                Flow::Go
            }
            Verdict::Close => {
                edits.push(Edit {
                    rule: HOOK_CLOSE,
                    offset,
                    before: std::mem::take(out),
                    after: Vec::new(),
                    decoded: None,
                });
                Flow::Close
            }
        };
        sent.fetch_add(out.len() as u64, Ordering::Relaxed);
        flow
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(data: &[u8]) -> Message<'_> {
        Message {
            conn: 3,
            dir: Direction::Send,
            kind: Kind::Raw,
            client: "127.0.0.1:40112".parse().unwrap(),
            target: Some("example.com:23"),
            data,
        }
    }

    #[test]
    fn request_line() {
        let line = encode_request(7, &msg(b"hi\n\x00"));
        assert_eq!(
            std::str::from_utf8(&line).unwrap(),
            "{\"id\":7,\"conn\":3,\"dir\":\"c2s\",\"kind\":\"raw\",\"client\":\"127.0.0.1:40112\",\"target\":\"example.com:23\",\"data\":\"aGkKAA==\"}\n"
        );
        let mut m = msg(b"");
        m.target = None;
        m.dir = Direction::Recv;
        m.kind = Kind::Head;
        let line = String::from_utf8(encode_request(8, &m)).unwrap();
        assert_eq!(
            line,
            "{\"id\":8,\"conn\":3,\"dir\":\"s2c\",\"kind\":\"head\",\"client\":\"127.0.0.1:40112\",\"data\":\"\"}\n"
        );
    }

    #[test]
    fn answers() {
        assert_eq!(
            parse_answer(br#"{"id":1,"action":"pass"}"#),
            Ok((1, Verdict::Pass))
        );
        assert_eq!(
            parse_answer(br#"{"action":"replace","data":"SEk=","id":2,"extra":[1]}"#),
            Ok((2, Verdict::Replace(b"HI".to_vec())))
        );
        assert_eq!(
            parse_answer(br#" {"id":3,"action":"drop"} "#),
            Ok((3, Verdict::Drop))
        );
        assert_eq!(
            parse_answer(br#"{"id":4,"action":"close"}"#),
            Ok((4, Verdict::Close))
        );
        // Errors keep the id when there is one.
        assert_eq!(
            parse_answer(br#"{"id":5,"action":"replace"}"#),
            Err((Some(5), AnswerError::NoData))
        );
        assert!(matches!(
            parse_answer(br#"{"id":6,"action":"replace","data":"!!"}"#),
            Err((Some(6), AnswerError::Base64(_)))
        ));
        assert!(matches!(
            parse_answer(br#"{"id":7,"action":"upper"}"#),
            Err((Some(7), AnswerError::Action(a))) if a == "upper"
        ));
        assert!(matches!(
            parse_answer(br#"{"id":8}"#),
            Err((Some(8), AnswerError::Json(_)))
        ));
        for bad in [
            &b"garbage"[..],
            b"",
            b"{\"id\":-1,\"action\":\"pass\"}",
            b"[1]",
        ] {
            assert!(matches!(parse_answer(bad), Err((None, _))), "{bad:?}");
        }
    }

    #[test]
    fn edits_leave_out_what_stays() {
        let e = edit_between(10, b"say Boo! now", b"say Yay! now");
        assert_eq!(
            (e.rule, e.offset, &e.before[..], &e.after[..]),
            (HOOK_EDIT, 14, &b"Boo"[..], &b"Yay"[..])
        );
        let e = edit_between(0, b"abc", b"abcabc");
        assert_eq!(
            (e.offset, &e.before[..], &e.after[..]),
            (3, &b""[..], &b"abc"[..])
        );
        let e = edit_between(0, b"aaa", b"a");
        assert_eq!(
            (e.offset, &e.before[..], &e.after[..]),
            (1, &b"aa"[..], &b""[..])
        );
        assert_eq!(origin(HOOK_EDIT), Some("hook"));
        assert_eq!(origin(0), None);
    }

    fn hook(command: &str, timeout_ms: u64) -> Arc<Hook> {
        Hook::new(HookSpec {
            command: command.into(),
            timeout: Duration::from_millis(timeout_ms),
        })
    }

    /// A hook in sh: answers with `action` for every request (echoing its id).
    fn sh_hook(action: &str) -> String {
        let action = action.replace('"', "\\\"");
        format!(
            r#"while read -r line; do id=${{line#*\"id\":}}; id=${{id%%,*}}; echo "{{\"id\":$id,{action}}}"; done"#
        )
    }

    #[tokio::test]
    async fn a_session_applies_answers_and_records_edits() {
        let s = Session::new(
            hook(&sh_hook(r#""action":"replace","data":"SEVMTE8=""#), 10_000),
            1,
            "127.0.0.1:1".parse().unwrap(),
        );
        let (mut out, mut edits) = (b"hello".to_vec(), Vec::new());
        let flow = s
            .apply(Direction::Send, Kind::Raw, &mut out, &mut edits)
            .await;
        assert_eq!((flow, &out[..]), (Flow::Go, &b"HELLO"[..]));
        let mut out = b"jello".to_vec();
        s.apply(Direction::Send, Kind::Raw, &mut out, &mut edits)
            .await;
        assert_eq!(
            edits
                .iter()
                .map(|e| (e.offset, &e.before[..], &e.after[..]))
                .collect::<Vec<_>>(),
            [
                (0, &b"hello"[..], &b"HELLO"[..]),
                (5, &b"jello"[..], &b"HELLO"[..])
            ]
        );
        let s = Session::new(
            hook(&sh_hook(r#""action":"close""#), 10_000),
            1,
            "127.0.0.1:1".parse().unwrap(),
        );
        let mut out = b"x".to_vec();
        let flow = s
            .apply(Direction::Recv, Kind::Raw, &mut out, &mut edits)
            .await;
        assert_eq!((flow, out.len()), (Flow::Close, 0));
        assert_eq!(edits.last().unwrap().rule, HOOK_CLOSE);
    }

    /// Answers are matched by id: two messages in flight, answered in the reverse order.
    #[tokio::test]
    async fn answers_in_any_order() {
        let h = hook(
            r#"read -r a; read -r b; a=${a#*\"id\":}; b=${b#*\"id\":}
               echo "{\"id\":${b%%,*},\"action\":\"drop\"}"; echo "{\"id\":${a%%,*},\"action\":\"close\"}"
               cat >/dev/null"#,
            10_000,
        );
        let (a, b) = (msg(b"a"), msg(b"b"));
        let (first, second) = tokio::join!(h.ask(&a), h.ask(&b));
        assert_eq!((first, second), (Verdict::Close, Verdict::Drop));
    }

    /// A hook that exits, one that never answers, and one that cannot start: messages pass
    /// (the first at once, the second after the timeout).
    #[tokio::test]
    async fn failing_hooks_pass() {
        let started = Instant::now();
        let h = hook("exit 3", 10_000);
        for _ in 0..3 {
            assert_eq!(h.ask(&msg(b"x")).await, Verdict::Pass);
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no timeout waited"
        );
        assert!(matches!(*h.state.lock().unwrap(), State::Dead { .. }));
        let h = hook("sleep 30", 100);
        let started = Instant::now();
        assert_eq!(h.ask(&msg(b"x")).await, Verdict::Pass);
        assert!(started.elapsed() >= Duration::from_millis(100));
        let h = hook(&sh_hook(r#""action":"drop""#), 10_000);
        assert_eq!(h.ask(&msg(b"x")).await, Verdict::Drop);
        let h = hook(&sh_hook(r#""action":"bogus""#), 10_000);
        let started = Instant::now();
        assert_eq!(h.ask(&msg(b"x")).await, Verdict::Pass);
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
