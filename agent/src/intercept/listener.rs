//! The transparent listeners: bind them, install the mechanism that feeds them (nftables
//! table, policy routing, cgroup hooks), accept, find each connection's original
//! destination, hand it to the [`Sink`], and remove everything at the end.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use tokio::io::Interest;
use tokio::net::{TcpListener, UdpSocket};

use super::cgroup::{HookOptions, Hooks, UdpOrigin};
use super::nft::{self, Nft, Plan};
use super::origdst;
use super::route::{self, Routing};
use super::sink::{Accepted, Sink, UdpDir, UdpFlow};
use super::{InterceptOptions, Mode, Outcome, listen_addr};
use crate::process::HeldChild;
use crate::proxy::Target;
use crate::proxy::dial::{UdpAssociation, Upstream};

/// A UDP flow with no datagram either way for this long ends.
const UDP_IDLE: Duration = Duration::from_secs(30);
const UDP_MAX: usize = 65535;

fn new_socket(addr: SocketAddr, ty: libc::c_int) -> io::Result<OwnedFd> {
    let family = if addr.is_ipv6() {
        libc::AF_INET6
    } else {
        libc::AF_INET
    };
    // SAFETY: plain socket(2), owned right after.
    let fd = unsafe { libc::socket(family, ty | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn bind(fd: &OwnedFd, addr: SocketAddr) -> io::Result<()> {
    let (ss, len) = origdst::sockaddr_bytes(addr);
    // SAFETY: ss holds a valid sockaddr of length len.
    if unsafe { libc::bind(fd.as_raw_fd(), (&raw const ss).cast(), len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A TCP listener on `addr` (transparent for tproxy).
fn tcp_listener(addr: SocketAddr, transparent: bool) -> io::Result<TcpListener> {
    let fd = new_socket(addr, libc::SOCK_STREAM)?;
    origdst::set_reuseaddr(fd.as_raw_fd())?;
    if addr.is_ipv6() {
        origdst::set_v6only(fd.as_raw_fd())?;
    }
    if transparent {
        origdst::set_transparent(fd.as_raw_fd(), addr.is_ipv6())?;
    }
    bind(&fd, addr)?;
    // SAFETY: listen on our bound socket.
    if unsafe { libc::listen(fd.as_raw_fd(), 1024) } != 0 {
        return Err(io::Error::last_os_error());
    }
    TcpListener::from_std(std::net::TcpListener::from(fd))
}

/// A UDP socket on `addr` (for tproxy: transparent, reporting each datagram's original
/// destination).
fn udp_listener(addr: SocketAddr, transparent: bool) -> io::Result<UdpSocket> {
    let fd = new_socket(addr, libc::SOCK_DGRAM)?;
    origdst::set_reuseaddr(fd.as_raw_fd())?;
    if addr.is_ipv6() {
        origdst::set_v6only(fd.as_raw_fd())?;
    }
    if transparent {
        origdst::set_transparent(fd.as_raw_fd(), addr.is_ipv6())?;
        origdst::set_recv_origdst(fd.as_raw_fd(), addr.is_ipv6())?;
    }
    bind(&fd, addr)?;
    UdpSocket::from_std(std::net::UdpSocket::from(fd))
}

/// A UDP socket that sends from `from`, an address that is not this host's (the original
/// destination of a tproxied flow).
fn spoofing_socket(from: SocketAddr) -> io::Result<UdpSocket> {
    let fd = new_socket(from, libc::SOCK_DGRAM)?;
    origdst::set_reuseaddr(fd.as_raw_fd())?;
    if from.is_ipv6() {
        origdst::set_v6only(fd.as_raw_fd())?;
    }
    origdst::set_transparent(fd.as_raw_fd(), from.is_ipv6())?;
    bind(&fd, from)?;
    UdpSocket::from_std(std::net::UdpSocket::from(fd))
}

/// A UDP socket connected to `to`, carrying `mark`.
async fn upstream_udp(to: SocketAddr, mark: u32) -> io::Result<UdpSocket> {
    let any = if to.is_ipv6() {
        "[::]:0".parse().expect("literal")
    } else {
        "0.0.0.0:0".parse().expect("literal")
    };
    let fd = new_socket(any, libc::SOCK_DGRAM)?;
    origdst::set_mark(fd.as_raw_fd(), mark)?;
    bind(&fd, any)?;
    let s = UdpSocket::from_std(std::net::UdpSocket::from(fd))?;
    s.connect(to).await?;
    Ok(s)
}

/// Everything installed for one run; dropped in field order (rules first, so no new
/// connection is caught while the rest goes).
#[derive(Default)]
struct Installed {
    nft: Option<Nft>,
    routing: Option<Routing>,
    hooks: Option<Arc<Hooks>>,
}

struct AcceptCtx {
    sink: Arc<dyn Sink>,
    mode: Mode,
    mark: u32,
    hooks: Option<Arc<Hooks>>,
}

fn how(mode: Mode) -> &'static str {
    match mode {
        Mode::Redirect => "redirect",
        Mode::Tproxy => "tproxy",
        Mode::Process => "process",
    }
}

/// The original destination of a connection accepted in `mode`.
fn original(
    ctx: &AcceptCtx,
    stream: &tokio::net::TcpStream,
    peer: SocketAddr,
    listen: SocketAddr,
) -> io::Result<(SocketAddr, Option<u32>)> {
    let orig = match ctx.mode {
        Mode::Redirect => (
            origdst::original_dst(stream.as_raw_fd(), listen.is_ipv6())?,
            None,
        ),
        Mode::Tproxy => (stream.local_addr()?, None),
        Mode::Process => {
            let hooks = ctx.hooks.as_ref().expect("hooks in process mode");
            let (a, pid) = hooks.origin(peer).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    "not a redirected connection (no original destination)",
                )
            })?;
            (a, Some(pid))
        }
    };
    // A connection made to the listener itself (not intercepted) would loop.
    let to_listener = orig.0.port() == listen.port() && origdst::is_local_address(orig.0.ip());
    let to_local = ctx.mode == Mode::Tproxy && origdst::is_local_address(orig.0.ip());
    if to_listener || to_local {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("connection to the listener itself ({})", orig.0),
        ));
    }
    Ok(orig)
}

async fn accept_loop(l: TcpListener, ctx: Arc<AcceptCtx>) {
    let listen = match l.local_addr() {
        Ok(a) => a,
        Err(_) => return,
    };
    loop {
        let (stream, peer) = match l.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("intercept: accept on {listen}: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (orig, pid) = match original(&ctx, &stream, peer, listen) {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!("intercept: {peer}: {e}; closed");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        // Where the client landed: the gateway's address for a redirect, the loopback
        // listener per process; for tproxy that is the original destination itself, so
        // the listener's own address says more.
        let landed = match ctx.mode {
            Mode::Tproxy => listen,
            _ => stream.local_addr().unwrap_or(listen),
        };
        tracing::info!(%peer, %orig, ?pid, "intercepted");
        let fut = ctx.sink.tcp(Accepted {
            client: stream,
            peer,
            listen: landed,
            orig,
            pid,
            how: how(ctx.mode),
            mark: ctx.mark,
        });
        tokio::spawn(fut);
    }
}

/// How a UDP listener learns where each datagram was going, and answers.
enum UdpIn {
    /// A control message of each datagram; answers from a transparent socket bound to the
    /// original destination.
    Tproxy,
    /// The per-process hooks' maps; answers from the listener itself (to a connected
    /// socket) or from a loopback socket of the flow's own whose answers the recvmsg hook
    /// shows as coming from the original destination.
    Process(Arc<Hooks>),
}

/// What every UDP flow of a listener shares.
struct UdpCtx {
    sink: Arc<dyn Sink>,
    mark: u32,
    how: UdpIn,
    /// `--upstream-proxy` (SOCKS5): datagrams go through a UDP association with it.
    upstream: Option<Upstream>,
}

/// Towards the original destination: a socket connected to it, or a SOCKS5 UDP
/// association.
enum UpUdp {
    Direct(UdpSocket),
    Socks(UdpAssociation, Target),
}

impl UpUdp {
    async fn open(orig: SocketAddr, ctx: &UdpCtx) -> io::Result<UpUdp> {
        match &ctx.upstream {
            None => Ok(UpUdp::Direct(upstream_udp(orig, ctx.mark).await?)),
            Some(up) => {
                let timeout = crate::proxy::Limits::default().handshake;
                let a = UdpAssociation::open(up, ctx.mark, timeout)
                    .await
                    .map_err(|e| io::Error::new(e.io().kind(), e.to_string()))?;
                tracing::info!(relay = %a.relay, %orig, "udp associate");
                Ok(UpUdp::Socks(a, Target::ip(orig)))
            }
        }
    }

    async fn send(&self, payload: &[u8]) -> io::Result<()> {
        match self {
            UpUdp::Direct(s) => s.send(payload).await.map(|_| ()),
            UpUdp::Socks(a, to) => a.send_to(to, payload).await,
        }
    }

    /// The next answer's payload, at the returned range of `buf`.
    async fn recv(&self, buf: &mut [u8]) -> io::Result<std::ops::Range<usize>> {
        match self {
            UpUdp::Direct(s) => s.recv(buf).await.map(|n| 0..n),
            UpUdp::Socks(a, _) => a.recv_from(buf).await.map(|(_, r)| r),
        }
    }
}

/// Where answers to the client are sent from.
enum ReplyFrom {
    /// A socket of the flow's own (tproxy: bound to the original destination; per process:
    /// a loopback socket filed in the hooks' map until the flow ends).
    Own(UdpSocket, Option<(Arc<Hooks>, SocketAddr)>),
    /// The listener (per process, to a connected socket).
    Listener(Arc<UdpSocket>),
}

impl ReplyFrom {
    async fn open(
        orig: SocketAddr,
        origin: Option<UdpOrigin>,
        listener: &Arc<UdpSocket>,
        how: &UdpIn,
    ) -> io::Result<ReplyFrom> {
        match (how, origin) {
            (UdpIn::Tproxy, _) => Ok(ReplyFrom::Own(spoofing_socket(orig)?, None)),
            (UdpIn::Process(_), None) => Err(io::Error::new(
                io::ErrorKind::NotFound,
                "not a redirected datagram (no original destination)",
            )),
            (UdpIn::Process(_), Some(o)) if o.connected => {
                Ok(ReplyFrom::Listener(listener.clone()))
            }
            (UdpIn::Process(h), Some(_)) => {
                let s = UdpSocket::bind(SocketAddr::new(listener.local_addr()?.ip(), 0)).await?;
                let at = s.local_addr()?;
                h.add_reply(at, orig).map_err(io::Error::other)?;
                Ok(ReplyFrom::Own(s, Some((h.clone(), at))))
            }
        }
    }

    async fn send_to(&self, payload: &[u8], client: SocketAddr) -> io::Result<usize> {
        let s = match self {
            ReplyFrom::Own(s, _) => s,
            ReplyFrom::Listener(s) => s.as_ref(),
        };
        s.send_to(payload, client).await
    }
}

impl Drop for ReplyFrom {
    fn drop(&mut self) {
        if let ReplyFrom::Own(_, Some((h, at))) = self {
            h.forget_reply(*at);
        }
    }
}

/// One intercepted UDP flow: the way to the original destination and its records.
struct Flow {
    up: Arc<UpUdp>,
    record: Arc<dyn UdpFlow>,
}

type Flows = Arc<Mutex<HashMap<(SocketAddr, SocketAddr), Arc<Flow>>>>;

async fn udp_loop(sock: UdpSocket, ctx: Arc<UdpCtx>) {
    let sock = Arc::new(sock);
    let listen = sock
        .local_addr()
        .unwrap_or_else(|_| listen_addr(Mode::Tproxy, false));
    let flows: Flows = Arc::default();
    let mut buf = vec![0u8; UDP_MAX];
    loop {
        if sock.readable().await.is_err() {
            return;
        }
        let d = match sock.try_io(Interest::READABLE, || {
            origdst::recv_with_origdst(sock.as_raw_fd(), &mut buf)
        }) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                tracing::info!("intercept udp: receive: {e}");
                continue;
            }
        };
        let (orig, origin) = match &ctx.how {
            UdpIn::Tproxy => {
                let Some(orig) = d
                    .orig_dst
                    .map(|a| SocketAddr::new(a.ip().to_canonical(), a.port()))
                else {
                    tracing::warn!(
                        "intercept udp: datagram from {} without its destination",
                        d.from
                    );
                    continue;
                };
                if origdst::is_local_address(orig.ip()) {
                    tracing::warn!(
                        "intercept udp: {} sent to this host ({orig}); dropped",
                        d.from
                    );
                    continue;
                }
                (orig, None)
            }
            UdpIn::Process(h) => {
                let Some(o) = h.udp_origin(d.from) else {
                    tracing::warn!(
                        "intercept udp: datagram from {} not redirected by the hooks; dropped",
                        d.from
                    );
                    continue;
                };
                if o.orig == listen {
                    continue;
                }
                (o.orig, Some(o))
            }
        };
        let payload = Bytes::copy_from_slice(&buf[..d.len]);
        let key = (d.from, orig);
        let existing = flows.lock().expect("flows lock").get(&key).cloned();
        let flow = match existing {
            Some(f) => f,
            None => match open_flow(d.from, orig, origin, listen, &ctx, &sock, &flows).await {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!("intercept udp: {} -> {orig}: {e}", d.from);
                    continue;
                }
            },
        };
        flow.record.datagram(UdpDir::Request, payload.clone()).await;
        if let Err(e) = flow.up.send(&payload).await {
            tracing::info!("intercept udp: {} -> {orig}: {e}", d.from);
        }
    }
}

async fn open_flow(
    client: SocketAddr,
    orig: SocketAddr,
    origin: Option<UdpOrigin>,
    listen: SocketAddr,
    ctx: &UdpCtx,
    listener: &Arc<UdpSocket>,
    flows: &Flows,
) -> io::Result<Arc<Flow>> {
    tracing::info!(%client, %orig, pid = ?origin.map(|o| o.pid), "intercepted udp flow");
    let up = Arc::new(UpUdp::open(orig, ctx).await?);
    let reply = ReplyFrom::open(orig, origin, listener, &ctx.how).await?;
    let how = match ctx.how {
        UdpIn::Tproxy => "tproxy",
        UdpIn::Process(_) => "process",
    };
    let pid = origin.map(|o| o.pid);
    let record: Arc<dyn UdpFlow> =
        Arc::from(ctx.sink.udp_flow(client, orig, listen, how, pid).await);
    let flow = Arc::new(Flow {
        up: up.clone(),
        record: record.clone(),
    });
    flows
        .lock()
        .expect("flows lock")
        .insert((client, orig), flow.clone());
    let flows = flows.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; UDP_MAX];
        loop {
            match tokio::time::timeout(UDP_IDLE, up.recv(&mut buf)).await {
                Ok(Ok(r)) => {
                    let payload = Bytes::copy_from_slice(&buf[r]);
                    record.datagram(UdpDir::Reply, payload.clone()).await;
                    if let Err(e) = reply.send_to(&payload, client).await {
                        tracing::info!("intercept udp: {orig} -> {client}: {e}");
                    }
                }
                Ok(Err(e)) => tracing::info!("intercept udp: from {orig}: {e}"),
                Err(_) => break,
            }
        }
        flows.lock().expect("flows lock").remove(&(client, orig));
        record.close().await;
        drop(reply);
    });
    Ok(flow)
}

/// Resolves when the run should stop: `stop` (a signal, the daemon), the duration, or the command's end (its
/// status then).
async fn stopped(
    stop: impl Future<Output = ()>,
    duration: Option<Duration>,
    child: Option<tokio::task::JoinHandle<io::Result<std::process::ExitStatus>>>,
) -> anyhow::Result<Option<std::process::ExitStatus>> {
    let timer = async {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    let child = async {
        match child {
            Some(h) => h.await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = stop => Ok(None),
        _ = timer => Ok(None),
        r = child => Ok(Some(r.context("waiting for the command")?.context("waiting for the command")?)),
    }
}

/// Binds, installs, serves until `stop` resolves (a stopped [`crate::control::Control`]),
/// `--duration` or the end of `-- CMD`, removes. With `--udp`, datagrams reach their
/// destinations through `udp_via` (a SOCKS5 upstream proxy) when given.
pub async fn serve(
    opts: &InterceptOptions,
    sink: Arc<dyn Sink>,
    udp_via: Option<Upstream>,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<Outcome> {
    let pid = std::process::id();
    let mode = opts.mode;
    let transparent = mode == Mode::Tproxy;
    let a4 = listen_addr(mode, false);
    let tcp4 = tcp_listener(a4, transparent).with_context(|| format!("cannot listen on {a4}"))?;
    let a6 = listen_addr(mode, true);
    let tcp6 = match tcp_listener(a6, transparent) {
        Ok(l) => Some(l),
        Err(e) => {
            eprintln!("capagent: warning: no IPv6 listener ({a6}: {e}): IPv6 is not intercepted");
            None
        }
    };
    let (mut udp4, mut udp6) = (None, None);
    if opts.udp {
        udp4 = Some(
            udp_listener(a4, transparent).with_context(|| format!("cannot listen on udp {a4}"))?,
        );
        if tcp6.is_some() {
            udp6 = udp_listener(a6, transparent).ok();
        }
    }
    let port = |l: &Option<TcpListener>| l.as_ref().and_then(|l| l.local_addr().ok());
    let uport = |l: &Option<UdpSocket>| l.as_ref().and_then(|l| l.local_addr().ok());
    let l4 = tcp4.local_addr()?;
    let l6 = port(&tcp6);
    let (u4, u6) = (uport(&udp4), uport(&udp6));

    let mut installed = Installed::default();
    let mut child = None;
    match mode {
        Mode::Redirect | Mode::Tproxy => {
            let plan = Plan {
                pid,
                tproxy: transparent,
                iface: opts.iface.clone().unwrap_or_default(),
                local: opts.local,
                ports: opts.ports.clone(),
                dsts: opts.dsts.clone(),
                tcp4: Some(l4.port()),
                tcp6: l6.map(|a| a.port()),
                udp4: u4.map(|a| a.port()),
                udp6: u6.map(|a| a.port()),
                mark: route::tproxy_mark(pid),
                own_mark: route::own_mark(pid),
            };
            if transparent {
                let mut r = Routing::open(plan.mark, plan.mark)?;
                r.add(libc::AF_INET as u8)?;
                if l6.is_some() {
                    r.add(libc::AF_INET6 as u8)?;
                }
                installed.routing = Some(r);
            }
            let mut n = Nft::open()?;
            n.apply(&nft::capagent_ruleset(&plan))?;
            if !n.owned {
                eprintln!(
                    "capagent: warning: this kernel cannot tie the nftables table to capagent; if capagent is killed, run `capagent cleanup`"
                );
            }
            installed.nft = Some(n);
        }
        Mode::Process => {
            let hooks = Arc::new(Hooks::start(&HookOptions {
                cgroup: opts.cgroup.clone(),
                proxy4: l4,
                proxy6: l6,
                ports: opts.ports.clone(),
                follow_forks: true,
                udp4: u4,
                udp6: u6,
            })?);
            for &p in &opts.pids {
                crate::process::check_pid(p)?;
                hooks.add_pid(p)?;
            }
            if !opts.command.is_empty() {
                let mut held = HeldChild::spawn(&opts.command, opts.command_stdout)?;
                hooks.add_pid(held.pid())?;
                held.release()?;
                child = Some(tokio::task::spawn_blocking(move || held.wait()));
            }
            installed.hooks = Some(hooks);
        }
    }
    let what = match mode {
        Mode::Redirect | Mode::Tproxy => format!(
            "{} on {}{}",
            how(mode),
            opts.iface.as_deref().unwrap_or("?"),
            if opts.local { " (and local)" } else { "" }
        ),
        Mode::Process => match (&opts.cgroup, opts.command.is_empty()) {
            (Some(c), _) => format!("cgroup {c}"),
            (None, false) => format!("command {}", opts.command[0]),
            (None, true) => format!(
                "pid {}",
                opts.pids
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        },
    };
    let mut listening = vec![format!("tcp {l4}")];
    listening.extend(l6.map(|a| format!("tcp {a}")));
    listening.extend(u4.map(|a| format!("udp {a}")));
    listening.extend(u6.map(|a| format!("udp {a}")));
    eprintln!(
        "capagent: intercepting {what}; listening on {}",
        listening.join(", ")
    );

    let ctx = Arc::new(AcceptCtx {
        sink: sink.clone(),
        mode,
        mark: route::own_mark(pid),
        hooks: installed.hooks.clone(),
    });
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(accept_loop(tcp4, ctx.clone()));
    if let Some(l) = tcp6 {
        tasks.spawn(accept_loop(l, ctx.clone()));
    }
    let udp_ctx = Arc::new(UdpCtx {
        sink: sink.clone(),
        mark: route::own_mark(pid),
        how: match &installed.hooks {
            Some(h) => UdpIn::Process(h.clone()),
            None => UdpIn::Tproxy,
        },
        upstream: udp_via,
    });
    for u in [udp4, udp6].into_iter().flatten() {
        tasks.spawn(udp_loop(u, udp_ctx.clone()));
    }
    let status = stopped(stop, opts.duration, child).await;
    // The rules go first, so nothing new is caught while the rest goes.
    drop(installed.nft.take());
    tasks.shutdown().await;
    drop(ctx);
    drop(udp_ctx);
    drop(installed);
    Ok(Outcome {
        exit_status: status?,
    })
}
