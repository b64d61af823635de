//! Per-process interception with eBPF cgroup hooks (`--pid`, `--cgroup`, `-- CMD`): no
//! firewall rule at all. See `agent-ebpf/src/intercept.rs` for the kernel side.
//!
//! The programs are attached with BPF links to the cgroup v2 root (or to `--cgroup PATH`);
//! links go away with the agent's file descriptors, so even a SIGKILLed agent leaves no
//! attachment behind. [`Hooks::origin`] answers, for a connection the proxy accepted, where
//! it was going and which process made it.

use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use agent_common::intercept::{
    maps,
    progs::{CONNECT4, CONNECT6, EXIT, FORK, RECVMSG4, RECVMSG6, SENDMSG4, SENDMSG6, SOCKOPS},
};
use agent_common::{ClientKey, INTERCEPT_PORTS_MAX, InterceptConfig, OrigDst, UdpOrig};
use aya::maps::{HashMap, MapData};
use aya::programs::CgroupAttachMode;

use crate::kernel::{self, KernelError};

/// What every program name starts with (what `capagent cleanup` looks for).
pub const PROG_PREFIX: &str = "capagent_";

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error("no cgroup v2 hierarchy is mounted (looked in /proc/mounts)")]
    NoCgroup2,
    #[error("cgroup {0}: not a directory of the cgroup v2 hierarchy")]
    BadCgroup(String),
    #[error("cannot open cgroup {path}")]
    Open {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("attaching {prog} to cgroup {path}")]
    Attach {
        prog: &'static str,
        path: String,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("at most {INTERCEPT_PORTS_MAX} --port values in per-process mode")]
    TooManyPorts,
    #[error("eBPF map update")]
    Map(#[source] Box<aya::maps::MapError>),
}

/// Where the cgroup v2 hierarchy is mounted, from the lines of /proc/mounts.
pub fn cgroup2_mount(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_dev, dir, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(dir))
    })
}

/// The cgroup v2 hierarchy's root, from this process's mounts. When the agent runs in a
/// mount namespace of its own that lacks it while the host has it (`ip netns exec` mounts a
/// fresh /sys for its command), the hierarchy is mounted on that namespace's
/// `/sys/fs/cgroup`, an empty directory of the fresh sysfs: a view private to the agent's
/// namespace, which goes away with it.
pub fn cgroup2_root() -> Result<PathBuf, CgroupError> {
    let mine = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    if let Some(p) = cgroup2_mount(&mine) {
        return Ok(p);
    }
    let host = fs::read_to_string("/proc/1/mounts").unwrap_or_default();
    let own_ns = fs::read_link("/proc/self/ns/mnt").ok() != fs::read_link("/proc/1/ns/mnt").ok();
    let dir = Path::new("/sys/fs/cgroup");
    let empty = fs::read_dir(dir).is_ok_and(|mut d| d.next().is_none());
    if cgroup2_mount(&host).is_none() || !own_ns || !empty {
        return Err(CgroupError::NoCgroup2);
    }
    // SAFETY: mount(2) with NUL-terminated strings.
    let r = unsafe {
        libc::mount(
            c"cgroup2".as_ptr(),
            c"/sys/fs/cgroup".as_ptr(),
            c"cgroup2".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(CgroupError::NoCgroup2);
    }
    tracing::info!("mounted the cgroup v2 hierarchy on /sys/fs/cgroup in this mount namespace");
    Ok(dir.to_path_buf())
}

/// `--cgroup PATH`: an absolute path inside the hierarchy, or a path relative to its root.
pub fn resolve_cgroup(root: &Path, arg: &str) -> Result<PathBuf, CgroupError> {
    let p = if Path::new(arg).is_absolute() {
        PathBuf::from(arg)
    } else {
        root.join(arg.trim_start_matches('/'))
    };
    if !p.starts_with(root) || !p.join("cgroup.procs").exists() {
        return Err(CgroupError::BadCgroup(arg.to_string()));
    }
    Ok(p)
}

/// What the proxy's listeners are, for the kernel side.
#[derive(Debug, Clone)]
pub struct HookOptions {
    /// `--cgroup PATH`; None: the root (and only the chosen pids are redirected).
    pub cgroup: Option<String>,
    pub proxy4: SocketAddr,
    pub proxy6: Option<SocketAddr>,
    pub ports: Vec<u16>,
    pub follow_forks: bool,
    /// `--udp`: the UDP listeners (on `proxy4`'s and `proxy6`'s addresses).
    pub udp4: Option<SocketAddr>,
    pub udp6: Option<SocketAddr>,
}

/// The loaded and attached programs; dropping it detaches them.
pub struct Hooks {
    /// Owns the programs and their links (dropping it detaches them).
    _ebpf: aya::Ebpf,
    pids: Mutex<HashMap<MapData, u32, u8>>,
    by_client: Mutex<HashMap<MapData, ClientKey, OrigDst>>,
    udp_src: Mutex<HashMap<MapData, ClientKey, UdpOrig>>,
    udp_reply: Mutex<HashMap<MapData, ClientKey, OrigDst>>,
    pub cgroup: PathBuf,
}

/// Where an intercepted datagram was going, as the hooks filed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpOrigin {
    pub orig: SocketAddr,
    pub pid: u32,
    /// The socket is connected to `orig`: answers must come from the listener itself.
    pub connected: bool,
}

fn netns_cookie() -> u64 {
    let Ok(s) = std::net::UdpSocket::bind("127.0.0.1:0") else {
        return 0;
    };
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SO_NETNS_COOKIE (71), Linux 5.14+; without it every namespace is accepted.
    // SAFETY: getsockopt writes at most len bytes into cookie.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            71,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if r == 0 { cookie } else { 0 }
}

/// The configuration for the kernel side.
pub fn config(
    opts: &HookOptions,
    self_pid: u32,
    netns: u64,
) -> Result<InterceptConfig, CgroupError> {
    if opts.ports.len() > INTERCEPT_PORTS_MAX {
        return Err(CgroupError::TooManyPorts);
    }
    let mut c = InterceptConfig::new();
    c.self_pid = self_pid;
    c.all = u8::from(opts.cgroup.is_some());
    c.follow_forks = u8::from(opts.follow_forks);
    c.nports = opts.ports.len() as u8;
    for (i, p) in opts.ports.iter().enumerate() {
        c.ports[i] = *p;
    }
    if let IpAddr::V4(ip) = opts.proxy4.ip() {
        c.proxy_ip4 = u32::from_ne_bytes(ip.octets());
        c.proxy_port4 = opts.proxy4.port();
    }
    if let Some(SocketAddr::V6(a)) = opts.proxy6 {
        let o = a.ip().octets();
        for i in 0..4 {
            c.proxy_ip6[i] =
                u32::from_ne_bytes([o[i * 4], o[i * 4 + 1], o[i * 4 + 2], o[i * 4 + 3]]);
        }
        c.proxy_port6 = a.port();
    }
    if let Some(u) = opts.udp4 {
        c.udp_port4 = u.port();
    }
    if let (Some(u), Some(_)) = (opts.udp6, opts.proxy6) {
        c.udp_port6 = u.port();
    }
    c.netns_cookie = netns;
    Ok(c)
}

/// The map key for a connection whose client end the proxy sees as `peer`.
pub fn client_key(peer: SocketAddr) -> ClientKey {
    let mut k = ClientKey::default();
    match peer {
        SocketAddr::V4(a) => {
            k.family = libc::AF_INET as u16;
            k.addr[..4].copy_from_slice(&a.ip().octets());
        }
        SocketAddr::V6(a) => {
            k.family = libc::AF_INET6 as u16;
            k.addr = a.ip().octets();
        }
    }
    k.port = peer.port();
    k
}

/// The address an [`OrigDst`] holds (IPv4-mapped IPv6 addresses as IPv4).
pub fn orig_addr(o: &OrigDst) -> Option<SocketAddr> {
    let ip: IpAddr = match o.family as i32 {
        libc::AF_INET => Ipv4Addr::new(o.addr[0], o.addr[1], o.addr[2], o.addr[3]).into(),
        libc::AF_INET6 => Ipv6Addr::from(o.addr).to_canonical(),
        _ => return None,
    };
    Some(SocketAddr::new(ip, o.port))
}

impl Hooks {
    /// Loads the programs and attaches them to the cgroup.
    pub fn start(opts: &HookOptions) -> Result<Hooks, CgroupError> {
        kernel::require_root("capagent intercept")?;
        let root = cgroup2_root()?;
        let cgroup = match &opts.cgroup {
            Some(c) => resolve_cgroup(&root, c)?,
            None => root,
        };
        let cfg = config(opts, std::process::id(), netns_cookie())?;
        let mut ebpf = kernel::load_intercept(&cfg)?;
        let path = cgroup.display().to_string();
        let dir = fs::File::open(&cgroup).map_err(|source| CgroupError::Open {
            path: path.clone(),
            source,
        })?;
        // Through BPF links (kernel 5.7+), which always share the cgroup with other
        // programs; link_create wants no attach flags.
        // With --udp, the sendmsg/recvmsg hooks of each family with a UDP listener.
        let mut sock_addr = vec![CONNECT4, CONNECT6];
        if opts.udp4.is_some() {
            sock_addr.extend([SENDMSG4, RECVMSG4]);
        }
        if opts.udp6.is_some() {
            sock_addr.extend([SENDMSG6, RECVMSG6]);
        }
        for prog in sock_addr {
            let p = kernel::loaded_sock_addr(&mut ebpf, prog)?;
            p.attach(&dir, CgroupAttachMode::Single)
                .map_err(|source| CgroupError::Attach {
                    prog,
                    path: path.clone(),
                    source: Box::new(source),
                })?;
        }
        let p = kernel::loaded_sock_ops(&mut ebpf, SOCKOPS)?;
        p.attach(&dir, CgroupAttachMode::Single)
            .map_err(|source| CgroupError::Attach {
                prog: SOCKOPS,
                path: path.clone(),
                source: Box::new(source),
            })?;
        if opts.cgroup.is_none() {
            kernel::ensure_tracefs()?;
            kernel::attach_tracepoint(&mut ebpf, EXIT, "sched", "sched_process_exit")?;
            if opts.follow_forks {
                kernel::attach_tracepoint(&mut ebpf, FORK, "task", "task_newtask")?;
            }
        }
        let pids = kernel::take_map(&mut ebpf, maps::ICPT_PIDS)?;
        let by_client = kernel::take_map(&mut ebpf, maps::ICPT_BY_CLIENT)?;
        let udp_src = kernel::take_map(&mut ebpf, maps::ICPT_UDP_SRC)?;
        let udp_reply = kernel::take_map(&mut ebpf, maps::ICPT_UDP_REPLY)?;
        tracing::info!(cgroup = %path, "per-process hooks attached");
        Ok(Hooks {
            _ebpf: ebpf,
            pids: Mutex::new(pids),
            by_client: Mutex::new(by_client),
            udp_src: Mutex::new(udp_src),
            udp_reply: Mutex::new(udp_reply),
            cgroup,
        })
    }

    /// Redirects the connections of process `pid` (all its threads) from now on.
    pub fn add_pid(&self, pid: u32) -> Result<(), CgroupError> {
        self.pids
            .lock()
            .expect("pids lock")
            .insert(pid, 1, 0)
            .map_err(|e| CgroupError::Map(Box::new(e)))
    }

    /// Where the connection the proxy accepted from `peer` was going, and which process
    /// made it (the entry is consumed).
    pub fn origin(&self, peer: SocketAddr) -> Option<(SocketAddr, u32)> {
        let mut map = self.by_client.lock().expect("map lock");
        let mut keys = vec![client_key(peer)];
        // A dual-stack socket's IPv4 connection is keyed by its IPv4-mapped address.
        if let SocketAddr::V4(a) = peer {
            keys.push(client_key(SocketAddr::new(
                a.ip().to_ipv6_mapped().into(),
                a.port(),
            )));
        }
        for k in keys {
            if let Ok(o) = map.get(&k, 0) {
                let _ = map.remove(&k);
                return orig_addr(&o).map(|a| (a, o.pid));
            }
        }
        None
    }

    /// Where the datagram the UDP listener received from `from` was going (the entry stays:
    /// the socket may send more). Filed under the exact source, or under its address alone
    /// (a loopback address given to one socket and destination).
    pub fn udp_origin(&self, from: SocketAddr) -> Option<UdpOrigin> {
        let map = self.udp_src.lock().expect("map lock");
        let exact = client_key(from);
        let by_addr = client_key(SocketAddr::new(from.ip(), 0));
        [exact, by_addr].iter().find_map(|k| {
            let o = map.get(k, 0).ok()?;
            Some(UdpOrigin {
                orig: orig_addr(&o.dst)?,
                pid: o.dst.pid,
                connected: o.connected != 0,
            })
        })
    }

    /// Answers sent from `reply` (a socket of the agent's) are shown to the processes as
    /// coming from `orig` (the recvmsg hook), until [`Hooks::forget_reply`].
    pub fn add_reply(&self, reply: SocketAddr, orig: SocketAddr) -> Result<(), CgroupError> {
        let mut o = OrigDst::default();
        let k = client_key(orig);
        o.addr = k.addr;
        o.family = k.family;
        o.port = orig.port();
        self.udp_reply
            .lock()
            .expect("map lock")
            .insert(client_key(reply), o, 0)
            .map_err(|e| CgroupError::Map(Box::new(e)))
    }

    pub fn forget_reply(&self, reply: SocketAddr) {
        let _ = self
            .udp_reply
            .lock()
            .expect("map lock")
            .remove(&client_key(reply));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount() {
        let m = "cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw,nsdelegate 0 0\n";
        assert_eq!(
            cgroup2_mount(m),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(cgroup2_mount("proc /proc proc rw 0 0\n"), None);
    }

    #[test]
    fn config_layout() {
        let opts = HookOptions {
            cgroup: None,
            proxy4: "127.0.0.1:4000".parse().unwrap(),
            proxy6: Some("[::1]:4001".parse().unwrap()),
            ports: vec![80, 443],
            follow_forks: true,
            udp4: Some("127.0.0.1:4002".parse().unwrap()),
            udp6: Some("[::1]:4003".parse().unwrap()),
        };
        let c = config(&opts, 77, 9).unwrap();
        assert_eq!(c.proxy_ip4.to_ne_bytes(), [127, 0, 0, 1]);
        assert_eq!((c.proxy_port4, c.proxy_port6), (4000, 4001));
        assert_eq!(c.proxy_ip6[3].to_ne_bytes(), [0, 0, 0, 1]);
        assert_eq!((c.nports, c.ports[1], c.all, c.self_pid), (2, 443, 0, 77));
        assert_eq!((c.udp_port4, c.udp_port6), (4002, 4003));
        let many = HookOptions {
            ports: (1..=17).collect(),
            ..opts
        };
        assert!(config(&many, 1, 0).is_err());
    }

    #[test]
    fn keys_and_origins() {
        let k = client_key("127.0.0.1:5555".parse().unwrap());
        assert_eq!((k.family, k.port), (2, 5555));
        assert_eq!(&k.addr[..5], &[127, 0, 0, 1, 0]);
        let o = OrigDst {
            addr: Ipv6Addr::from([0, 0, 0, 0, 0, 0xffff, 0x0a00, 0x0001]).octets(),
            family: libc::AF_INET6 as u16,
            port: 80,
            pid: 3,
        };
        assert_eq!(orig_addr(&o), Some("10.0.0.1:80".parse().unwrap()));
    }
}
