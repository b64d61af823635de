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
//! Which listener gets a connection: the kernel hashes the connection's addresses, unless
//! the group's steering program ([`steer_local_by_cpu`]) picks one. For a connection from
//! this host (it arrives on the loopback device) the program picks the listener of the
//! worker numbered after the CPU the client connected from; a connection from elsewhere is
//! left to the hash. With the hash alone, busy connections bunch up on one worker now and
//! then while the other CPU idles (its worker has nothing ready, and the clients wait on the
//! first worker); local clients spread over the CPUs as the scheduler spreads them, and so do
//! their connections. `cargo xtask bench proxy`: the machine sat idle 8.7% of the SOCKS
//! turns with the hash and 1.7% with the steering, and the connection rate went from 1.06x to
//! 1.23x microsocks. A NIC's connections are not steered by CPU: a NIC with one queue
//! receives every SYN on one CPU, which would put every connection on one worker.
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

/// Index of the loopback device in every network namespace (the kernel's
/// `LOOPBACK_IFINDEX`).
const LOOPBACK_IFINDEX: u32 = 1;

/// Longest CPU list of a steering program: two instructions per CPU, within the classic
/// BPF limit of 4096 instructions (`BPF_MAXINSNS`); CPUs past it get the hash.
const STEER_CPUS_MAX: usize = 2000;

/// The classic BPF program of [`steer_local_by_cpu`]: for a connection arriving on the
/// loopback device, the index (in a reuseport group of `listeners` sockets) of the listener
/// for the CPU the SYN is processed on (the client's, on loopback): `cpus[j]` gets listener
/// `j % listeners`. Anything else returns an index past the group, which makes the kernel
/// fall back to its hash.
pub fn steering_program(cpus: &[usize], listeners: usize) -> Vec<libc::sock_filter> {
    let insn = |code: u32, jt: u8, jf: u8, k: u32| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    // Loads of ancillary data: offsets from SKF_AD_OFF (negative, as u32).
    let ancillary = |what: i32| (libc::SKF_AD_OFF + what) as u32;
    let ret = |k: u32| insn(libc::BPF_RET | libc::BPF_K, 0, 0, k);
    let hash = ret(u32::MAX);
    let listeners = listeners.max(1);
    let mut p = vec![
        insn(
            libc::BPF_LD | libc::BPF_W | libc::BPF_ABS,
            0,
            0,
            ancillary(libc::SKF_AD_IFINDEX),
        ),
        // Loopback: skip the next instruction; else take it.
        insn(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            1,
            0,
            LOOPBACK_IFINDEX,
        ),
        hash,
        insn(
            libc::BPF_LD | libc::BPF_W | libc::BPF_ABS,
            0,
            0,
            ancillary(libc::SKF_AD_CPU),
        ),
    ];
    for (j, &cpu) in cpus.iter().take(STEER_CPUS_MAX).enumerate() {
        // This CPU: fall into the return; else skip it.
        p.push(insn(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            0,
            1,
            cpu as u32,
        ));
        p.push(ret((j % listeners) as u32));
    }
    p.push(hash);
    p
}

/// Attaches [`steering_program`] to the reuseport group of `l` (one of `listeners`
/// listeners, in the order they were bound), for the CPUs this process may run on.
pub fn steer_local_by_cpu(l: &std::net::TcpListener, listeners: usize) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let cpus = allowed_cpus()?;
    let mut prog = steering_program(&cpus, listeners);
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_mut_ptr(),
    };
    // SAFETY: `fprog` points at `prog`, which outlives the call; the kernel copies the
    // program and checks it.
    let r = unsafe {
        libc::setsockopt(
            l.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&raw const fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The CPUs this thread may run on, in increasing order.
fn allowed_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: a zeroed cpu_set_t is an empty set; sched_getaffinity writes at most its size.
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Err(io::Error::last_os_error());
        }
        set
    };
    let max = 8 * std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: CPU_ISSET reads the set for a CPU number below its size.
    Ok((0..max)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect())
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

    /// Pins the calling thread to `cpu`.
    fn pin(cpu: usize) {
        // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes a CPU below its size.
        let r = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
        };
        assert_eq!(r, 0, "{}", io::Error::last_os_error());
    }

    /// Which of `ls` accepts the next connection.
    fn accepted_by(ls: &[std::net::TcpListener]) -> usize {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(i) = ls.iter().position(|l| l.accept().is_ok()) {
                return i;
            }
            assert!(std::time::Instant::now() < deadline, "not accepted");
            std::thread::yield_now();
        }
    }

    #[test]
    fn local_connections_go_to_the_listener_of_their_cpu() {
        let cpus = allowed_cpus().unwrap();
        assert!(!cpus.is_empty());
        let a = bind_exclusive("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = a.local_addr().unwrap();
        let ls = [a, bind_shared(addr).unwrap()];
        steer_local_by_cpu(&ls[0], ls.len()).unwrap();
        // From each CPU (the first four), ten connections: all to the listener numbered
        // after the CPU (the hash would spread them over both).
        for (j, &cpu) in cpus.iter().enumerate().take(4) {
            for _ in 0..10 {
                // Connected from a thread pinned to the CPU: on loopback the SYN reaches the
                // listener there.
                let c = std::thread::spawn(move || {
                    pin(cpu);
                    std::net::TcpStream::connect(addr).unwrap()
                })
                .join()
                .unwrap();
                assert_eq!(accepted_by(&ls), j % 2, "connected from CPU {cpu}");
                drop(c);
            }
        }
    }

    #[test]
    fn steering_program_shape() {
        let p = steering_program(&[0, 2, 5], 2);
        // ifindex, loopback?, hash, cpu, 3 x (cpu?, return), hash.
        assert_eq!(p.len(), 4 + 6 + 1);
        let rets: Vec<u32> = p[4..10].chunks(2).map(|x| x[1].k).collect();
        assert_eq!(rets, [0, 1, 0]);
        let cpus: Vec<u32> = p[4..10].chunks(2).map(|x| x[0].k).collect();
        assert_eq!(cpus, [0, 2, 5]);
        assert_eq!(p[2].k, u32::MAX);
        assert_eq!(p[10].k, u32::MAX);
        // Within the kernel's limit whatever the CPU count.
        assert!(steering_program(&(0..10_000).collect::<Vec<_>>(), 3).len() <= 4096);
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
