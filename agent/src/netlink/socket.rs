//! [`Socket`]: a blocking netlink socket (`netlink-sys`) that sends requests and collects
//! their acknowledgements or dumps; what the replies mean is parsed by the pure functions of
//! [`super`].

use std::io;
use std::time::Duration;

use netlink_sys::SocketAddr;
use socket2::SockRef;

use super::{Malformed, dump_part, take_acks};

/// How long [`Socket::recv`] waits by default: replies never take long, and a kernel that
/// does not answer must not hang the agent.
const TIMEOUT: Duration = Duration::from_secs(5);

/// A netlink socket bound to a kernel-assigned port id, close-on-exec.
#[derive(Debug)]
pub struct Socket {
    sock: netlink_sys::Socket,
    port_id: u32,
    seq: u32,
}

fn invalid(e: Malformed) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl Socket {
    /// Opens a `NETLINK_<protocol>` socket (e.g. `libc::NETLINK_NETFILTER`).
    pub fn open(protocol: libc::c_int) -> io::Result<Socket> {
        let mut sock = netlink_sys::Socket::new(protocol as isize)?;
        let addr = sock.bind_auto()?;
        let s = Socket {
            sock,
            port_id: addr.port_number(),
            seq: (std::process::id() << 8) ^ 0x1000,
        };
        s.set_timeout(TIMEOUT)?;
        // Error messages carry the request; extended acks tell what was wrong. Kernels
        // without them still answer.
        let _ = s.sock.set_ext_ack(true);
        Ok(s)
    }

    /// The port id the kernel gave this socket.
    pub fn port_id(&self) -> u32 {
        self.port_id
    }

    /// A fresh sequence number.
    pub fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Marks `n` more sequence numbers as used (by a multi-message request).
    pub fn skip(&mut self, n: u32) {
        self.seq = self.seq.wrapping_add(n);
    }

    pub fn send(&self, buf: &[u8]) -> io::Result<()> {
        let n = self.sock.send_to(buf, &SocketAddr::new(0, 0), 0)?;
        if n != buf.len() {
            return Err(io::Error::other("short netlink send"));
        }
        Ok(())
    }

    /// One datagram from the kernel (several messages).
    pub fn recv(&self, buf: &mut Vec<u8>) -> io::Result<()> {
        buf.clear();
        buf.reserve(256 * 1024);
        loop {
            match self.sock.recv(buf, 0) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the kernel did not answer a netlink request",
                    ));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends `msgs` and waits for one acknowledgement per sequence number in `acks`; the
    /// first error code the kernel returned fails the call (after every answer came).
    pub fn transact(&self, msgs: &[u8], acks: &[u32]) -> io::Result<()> {
        self.send(msgs)?;
        let mut pending: Vec<u32> = acks.to_vec();
        let mut first_err: Option<i32> = None;
        let mut buf = Vec::new();
        while !pending.is_empty() {
            self.recv(&mut buf)?;
            take_acks(&buf, &mut pending, &mut first_err).map_err(invalid)?;
        }
        match first_err {
            Some(errno) => Err(io::Error::from_raw_os_error(errno)),
            None => Ok(()),
        }
    }

    /// Sends one request that asks for an acknowledgement (sequence `seq`) and waits for it.
    pub fn request(&self, msg: &[u8], seq: u32) -> io::Result<()> {
        self.transact(msg, &[seq])
    }

    /// Sends a dump request (sequence `seq`) and returns every message of the answer, each
    /// as its own byte vector (header included).
    pub fn dump(&self, req: &[u8], seq: u32) -> io::Result<Vec<Vec<u8>>> {
        self.send(req)?;
        let mut out = Vec::new();
        let mut buf = Vec::new();
        loop {
            self.recv(&mut buf)?;
            if dump_part(&buf, seq, &mut out).map_err(io::Error::from)? {
                return Ok(out);
            }
        }
    }

    /// Sets how long [`Socket::recv`] waits.
    pub fn set_timeout(&self, d: Duration) -> io::Result<()> {
        SockRef::from(&self.sock).set_read_timeout(Some(d))
    }
}
