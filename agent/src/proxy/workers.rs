//! Accepting and serving connections on one single-threaded runtime per CPU.
//!
//! A proxy connection is short and chatty: a SOCKS CONNECT is a dozen small reads and
//! writes. On tokio's work-stealing runtime each accepted connection spawned from the accept
//! loop wakes an idle worker that comes to steal it (a futex and a context switch per
//! connection, several per connection counting the parking), which cost more CPU than the
//! proxying itself. Here every worker thread runs its own current-thread runtime and its own
//! listening socket bound to the same address with SO_REUSEPORT: the kernel spreads incoming
//! connections over the listeners, and a connection lives, from accept to close, on the
//! thread that accepted it, without waking any other.
//!
//! Exclusivity: SO_REUSEPORT would let a second process of the same user share the port.
//! [`bind_exclusive`] first binds a plain socket to the address (failing like any bind if
//! anything listens there), then the shared listeners take its place.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// Backlog of each listener (tokio's default).
const BACKLOG: i32 = 1024;

/// The worker threads and their runtimes.
pub struct Workers {
    handles: Arc<[Handle]>,
    threads: Vec<(oneshot::Sender<()>, JoinHandle<()>)>,
}

impl Workers {
    /// One worker per CPU this process may run on (`n` when given).
    pub fn start(n: Option<usize>) -> io::Result<Workers> {
        let n = n
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1);
        let mut handles = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .thread_name(format!("capagent-worker-{i}"))
                .build()?;
            handles.push(rt.handle().clone());
            let (tx, rx) = oneshot::channel::<()>();
            let t = std::thread::Builder::new()
                .name(format!("capagent-worker-{i}"))
                .spawn(move || {
                    rt.spawn(timer_floor());
                    let _ = rt.block_on(rx);
                    // Cancels the connections still open (their records get a close).
                    rt.shutdown_timeout(Duration::from_secs(1));
                })?;
            threads.push((tx, t));
        }
        Ok(Workers {
            handles: handles.into(),
            threads,
        })
    }

    /// The runtimes, for [`super::Ctx`].
    pub fn handles(&self) -> Arc<[Handle]> {
        self.handles.clone()
    }

    /// Stops every runtime (cancelling its tasks) and waits for the threads.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        // Every runtime is told first, so that they wind down together.
        let joins: Vec<_> = std::mem::take(&mut self.threads)
            .into_iter()
            .map(|(tx, t)| {
                // Fails only if the thread is gone already.
                let _ = tx.send(());
                t
            })
            .collect();
        for t in joins {
            let _ = t.join();
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Period of [`timer_floor`].
const TIMER_FLOOR: Duration = Duration::from_secs(1);

/// Keeps a timer due within [`TIMER_FLOOR`] on the worker's runtime, so that the handshake
/// and dial timeouts of a new connection (seconds away) are never the earliest timer.
///
/// tokio wakes its I/O driver (a write to an eventfd and one more event to collect) when a
/// timer is registered earlier than the one the driver parked for, or when it parked with
/// none; on a current-thread runtime the timer is always registered from the runtime's own
/// thread, so that wake-up is wasted: it was one syscall in 27 of every SOCKS connection.
/// This costs one wake-up per second per worker.
async fn timer_floor() {
    loop {
        tokio::time::sleep(TIMER_FLOOR).await;
    }
}

/// A listening socket on `addr` that further [`bind_shared`] sockets can join: a plain
/// socket is bound first so that an address in use fails as usual (and a port 0 gets a
/// free port), then a SO_REUSEPORT listener takes its place.
pub fn bind_exclusive(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let probe = new_socket(addr)?;
    probe.bind(&addr.into())?;
    let addr = probe
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("bound to a non-IP address"))?;
    drop(probe);
    bind_shared(addr)
}

/// Another SO_REUSEPORT listener on `addr` (which a [`bind_exclusive`] listener holds).
pub fn bind_shared(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let s = new_socket(addr)?;
    s.set_reuse_port(true)?;
    s.bind(&addr.into())?;
    s.listen(BACKLOG)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// True when `l` was made by [`bind_exclusive`]/[`bind_shared`] (others can join it).
pub fn is_shared(l: &std::net::TcpListener) -> bool {
    SockRef::from(l).reuse_port().unwrap_or(false)
}

fn new_socket(addr: SocketAddr) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // As std and tokio do: a restarted proxy binds while old connections are in TIME_WAIT.
    s.set_reuse_address(true)?;
    // Accepted connections inherit TCP_NODELAY from the listener (Linux): no setsockopt
    // per connection (see [`super::accept_loop`]).
    s.set_tcp_nodelay(true)?;
    s.set_cloexec(true)?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_then_shared() {
        let a = bind_exclusive("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = a.local_addr().unwrap();
        assert_ne!(addr.port(), 0);
        assert!(is_shared(&a));
        // Others of ours can join...
        let b = bind_shared(addr).unwrap();
        assert_eq!(b.local_addr().unwrap(), addr);
        // ...but a second proxy on the same address fails as with a plain bind.
        let e = bind_exclusive(addr).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        // And a port somebody else listens on plainly is refused too.
        let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(!is_shared(&plain));
        let e = bind_exclusive(plain.local_addr().unwrap()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        // Connections accepted on our listeners have TCP_NODELAY without a setsockopt.
        let _c = std::net::TcpStream::connect(addr).unwrap();
        // (Either listener may get it; they are non-blocking.)
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let accepted = loop {
            if let Some(s) = [&a, &b].iter().find_map(|l| l.accept().ok()) {
                break s.0;
            }
            assert!(std::time::Instant::now() < deadline, "not accepted");
            std::thread::yield_now();
        };
        assert!(accepted.nodelay().unwrap());
    }

    #[test]
    fn workers_run_tasks_and_stop() {
        let w = Workers::start(Some(2)).unwrap();
        let hs = w.handles();
        assert_eq!(hs.len(), 2);
        let (tx, rx) = std::sync::mpsc::channel();
        for h in hs.iter() {
            let tx = tx.clone();
            h.spawn(async move {
                tx.send(std::thread::current().name().map(str::to_string))
                    .unwrap();
            });
        }
        let mut names: Vec<_> = (0..2).map(|_| rx.recv().unwrap().unwrap()).collect();
        names.sort();
        assert_eq!(names, ["capagent-worker-0", "capagent-worker-1"]);
        // A task that never ends is cancelled at shutdown.
        hs[0].spawn(std::future::pending::<()>());
        w.shutdown();
    }
}
