//! One line per packet, in the spirit of `tcpdump -n`:
//! `12:34:56.789012 lo In  IP 127.0.0.1.41234 > 127.0.0.1.8000: TCP len 78`.

use std::{
    io::{self, Write},
    net::IpAddr,
};

use agent_common::packet_dir;
use etherparse::{LaxNetSlice, LaxSlicedPacket, TransportSlice};

use super::{Iface, LinkType, Owner, Packet};
use crate::output::PacketWriter;

/// The end of a text line.
pub fn text_suffix(owner: Option<&Owner>) -> String {
    match owner {
        Some(o) => format!(" [{}:{}]", o.comm, o.pid),
        None => " [-]".to_string(),
    }
}

/// The text line of a packet (without its newline), as `capagent capture` prints it.
pub fn text_line(
    p: &Packet<'_>,
    ts_ns: u64,
    iface: Option<&Iface>,
    owner: Option<&Owner>,
) -> String {
    let (name, linktype) =
        iface.map_or(("?", LinkType::Ethernet), |i| (i.name.as_str(), i.linktype));
    format!(
        "{} {}{}",
        clock(ts_ns),
        describe(p, name, linktype),
        text_suffix(owner)
    )
}

/// Writes one [`text_line`] per packet of the captured interfaces into `W`.
pub struct TextLines<W: Write> {
    out: W,
    ifaces: Vec<Iface>,
}

impl<W: Write> TextLines<W> {
    pub fn new(out: W, ifaces: &[Iface]) -> TextLines<W> {
        TextLines {
            out,
            ifaces: ifaces.to_vec(),
        }
    }
}

impl<W: Write> PacketWriter for TextLines<W> {
    fn write_packet(
        &mut self,
        p: &Packet<'_>,
        ts_ns: u64,
        owner: Option<&Owner>,
    ) -> io::Result<()> {
        let iface = self.ifaces.iter().find(|i| i.ifindex == p.ifindex);
        writeln!(self.out, "{}", text_line(p, ts_ns, iface, owner))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// `HH:MM:SS.uuuuuu` in local time of a wall-clock timestamp.
pub fn clock(ts_ns: u64) -> String {
    let secs = (ts_ns / 1_000_000_000) as libc::time_t;
    let micros = (ts_ns % 1_000_000_000) / 1000;
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call.
    unsafe { libc::localtime_r(&secs, &mut tm) };
    format!(
        "{:02}:{:02}:{:02}.{micros:06}",
        tm.tm_hour, tm.tm_min, tm.tm_sec
    )
}

/// The part after the timestamp: interface, direction and a summary of the packet.
pub fn describe(p: &Packet<'_>, iface: &str, linktype: LinkType) -> String {
    let dir = if p.dir == packet_dir::EGRESS {
        "Out"
    } else {
        "In "
    };
    format!("{iface} {dir} {}", summary(p.data, p.orig_len, linktype))
}

fn endpoint(addr: IpAddr, port: Option<u16>) -> String {
    match port {
        Some(p) => format!("{addr}.{p}"),
        None => addr.to_string(),
    }
}

/// `IP src > dst: PROTO len N` for IPv4/IPv6 (N: the transport payload length the headers
/// announce), else the ethertype and the packet length.
pub fn summary(data: &[u8], orig_len: u32, linktype: LinkType) -> String {
    let pkt = match linktype {
        LinkType::Ethernet => LaxSlicedPacket::from_ethernet(data).ok(),
        LinkType::Raw => LaxSlicedPacket::from_ip(data).ok(),
    };
    let Some(pkt) = pkt else {
        return format!("truncated frame, len {orig_len}");
    };
    let (ip, src, dst, ip_payload) = match &pkt.net {
        Some(LaxNetSlice::Ipv4(v4)) => {
            let h = v4.header();
            let payload = usize::from(h.total_len()).saturating_sub(usize::from(h.ihl()) * 4);
            (
                "IP",
                IpAddr::V4(h.source_addr()),
                IpAddr::V4(h.destination_addr()),
                payload,
            )
        }
        Some(LaxNetSlice::Ipv6(v6)) => {
            let h = v6.header();
            (
                "IP6",
                IpAddr::V6(h.source_addr()),
                IpAddr::V6(h.destination_addr()),
                usize::from(h.payload_length()),
            )
        }
        Some(LaxNetSlice::Arp(_)) => return format!("ARP, len {orig_len}"),
        None => {
            let ethertype = pkt
                .link
                .as_ref()
                .and_then(|l| l.to_header())
                .map(|h| match h {
                    etherparse::LinkHeader::Ethernet2(e) => u16::from(e.ether_type),
                    _ => 0,
                })
                .unwrap_or(0);
            return format!("ethertype 0x{ethertype:04x}, len {orig_len}");
        }
    };
    let (proto, sport, dport, len) = match &pkt.transport {
        Some(TransportSlice::Tcp(t)) => (
            "TCP",
            Some(t.source_port()),
            Some(t.destination_port()),
            ip_payload.saturating_sub(usize::from(t.data_offset()) * 4),
        ),
        Some(TransportSlice::Udp(u)) => (
            "UDP",
            Some(u.source_port()),
            Some(u.destination_port()),
            usize::from(u.length()).saturating_sub(8),
        ),
        Some(TransportSlice::Icmpv4(_)) => ("ICMP", None, None, ip_payload),
        Some(TransportSlice::Icmpv6(_)) => ("ICMP6", None, None, ip_payload),
        Some(_) | None => ("proto ?", None, None, ip_payload),
    };
    format!(
        "{ip} {} > {}: {proto} len {len}",
        endpoint(src, sport),
        endpoint(dst, dport)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    #[test]
    fn tcp_over_ipv4() {
        let b = PacketBuilder::ethernet2([0; 6], [0; 6])
            .ipv4([127, 0, 0, 1], [127, 0, 0, 2], 64)
            .tcp(41234, 8000, 1, 65535);
        let payload = b"GET / HTTP/1.1\r\n\r\n";
        let mut buf = Vec::new();
        b.write(&mut buf, payload).unwrap();
        let s = summary(&buf, buf.len() as u32, LinkType::Ethernet);
        assert_eq!(s, "IP 127.0.0.1.41234 > 127.0.0.2.8000: TCP len 18");
        // Cut by the snaplen: the announced lengths still hold.
        let s = summary(&buf[..60], buf.len() as u32, LinkType::Ethernet);
        assert_eq!(s, "IP 127.0.0.1.41234 > 127.0.0.2.8000: TCP len 18");
        // The same packet on a layer-3 device: no Ethernet header.
        let s = summary(&buf[14..], buf.len() as u32 - 14, LinkType::Raw);
        assert_eq!(s, "IP 127.0.0.1.41234 > 127.0.0.2.8000: TCP len 18");
    }

    #[test]
    fn udp_over_ipv6_and_other() {
        let b = PacketBuilder::ethernet2([0; 6], [0; 6])
            .ipv6(
                [0; 16],
                [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                64,
            )
            .udp(5353, 53);
        let mut buf = Vec::new();
        b.write(&mut buf, &[1, 2, 3]).unwrap();
        assert_eq!(
            summary(&buf, buf.len() as u32, LinkType::Ethernet),
            "IP6 :: > ::1.53: UDP len 3".replace(":: >", "::.5353 >")
        );
        let mut arpish = vec![0u8; 12];
        arpish.extend_from_slice(&[0x88, 0xcc, 0, 0]);
        assert_eq!(
            summary(&arpish, 16, LinkType::Ethernet),
            "ethertype 0x88cc, len 16"
        );
        let p = Packet {
            ts_ns: 0,
            cookie: 0,
            ifindex: 1,
            orig_len: 16,
            dir: packet_dir::EGRESS,
            ino: 0,
            owner: None,
            data: &arpish,
        };
        assert_eq!(
            describe(&p, "eth0", LinkType::Ethernet),
            "eth0 Out ethertype 0x88cc, len 16"
        );
    }
}
