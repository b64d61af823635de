//! The metrics endpoint: a small HTTP/1.x server on its own thread answering `GET /metrics`
//! (and `GET /`) with the Prometheus text of the [`Registry`], one connection at a time
//! (scrapes are rare and small); and the client side `capagent status` uses.

use std::{
    io::{self, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use super::metrics::Registry;

/// Longest request head read.
const MAX_HEAD: usize = 8192;
const TIMEOUT: Duration = Duration::from_secs(2);

/// The media type of what [`Registry::render`] writes.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The response to one request head (`None`: not a complete head yet).
pub fn respond(head: &[u8], registry: &Registry) -> Option<Vec<u8>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    const TEXT: &str = "text/plain; charset=utf-8";
    let (status, body, content_type) = match req.parse(head) {
        Ok(httparse::Status::Partial) if head.len() < MAX_HEAD => return None,
        Ok(httparse::Status::Complete(_)) => match (req.method, req.path) {
            (Some("GET" | "HEAD"), Some("/metrics" | "/")) => {
                ("200 OK", registry.render(), OPENMETRICS)
            }
            (Some("GET" | "HEAD"), _) => {
                ("404 Not Found", "not found: try /metrics\n".into(), TEXT)
            }
            _ => ("405 Method Not Allowed", "GET /metrics only\n".into(), TEXT),
        },
        _ => ("400 Bad Request", "bad request\n".into(), TEXT),
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if req.method != Some("HEAD") {
        out.extend_from_slice(body.as_bytes());
    }
    Some(out)
}

fn serve_one(mut s: TcpStream, registry: &Registry) -> io::Result<()> {
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let resp = loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(r) = respond(&head, registry) {
            break r;
        }
    };
    s.write_all(&resp)?;
    let _ = s.shutdown(Shutdown::Write);
    Ok(())
}

/// The running endpoint.
pub struct MetricsServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Listens on `addr` and serves `registry` from a thread of its own.
    pub fn start(addr: SocketAddr, registry: Arc<Registry>) -> io::Result<MetricsServer> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("capagent-metrics".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if flag.load(Ordering::SeqCst) {
                        break;
                    }
                    match conn {
                        Ok(s) => {
                            if let Err(e) = serve_one(s, &registry) {
                                tracing::debug!("metrics endpoint: {e}");
                            }
                        }
                        Err(e) => {
                            tracing::warn!("metrics endpoint: accept failed: {e}");
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                }
            })?;
        Ok(MetricsServer {
            addr,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for MetricsServer {
    /// Stops the thread: raises the flag and wakes the accept with a connection.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, TIMEOUT);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `GET /metrics` from `addr`: the body.
pub fn fetch(addr: SocketAddr) -> anyhow::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())?;
    let mut resp = Vec::new();
    s.take(64 << 20).read_to_end(&mut resp)?;
    Ok(super::promtext::response_body(&resp)?.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_metrics_and_refuses_the_rest() {
        let registry = Arc::new(Registry::default());
        registry.set_jobs(&[("j".into(), "dns".into())]);
        let server =
            MetricsServer::start("127.0.0.1:0".parse().unwrap(), registry.clone()).unwrap();
        let body = fetch(server.addr).unwrap();
        assert!(
            body.contains("capagent_job_up{job=\"j\",kind=\"dns\"} 0\n"),
            "{body}"
        );
        assert!(respond(b"GET /metrics HTTP/1.1\r\n", &registry).is_none());
        let r = respond(b"POST /metrics HTTP/1.1\r\n\r\n", &registry).unwrap();
        assert!(r.starts_with(b"HTTP/1.1 405 "));
        let r = respond(b"GET /x HTTP/1.1\r\n\r\n", &registry).unwrap();
        assert!(r.starts_with(b"HTTP/1.1 404 "));
        let r = respond(b"\x16\x03\x01garbage\r\n\r\n", &registry).unwrap();
        assert!(r.starts_with(b"HTTP/1.1 400 "));
        let r = respond(b"HEAD / HTTP/1.1\r\n\r\n", &registry).unwrap();
        assert!(r.ends_with(b"\r\n\r\n"));
        drop(server);
    }
}
