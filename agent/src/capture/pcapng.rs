//! pcapng output of `capagent capture -w`: one Interface Description Block per captured
//! interface (LINKTYPE_ETHERNET, or LINKTYPE_RAW for layer-3 devices, its real name,
//! nanosecond timestamps), one Enhanced Packet
//! Block per packet with the direction in `epb_flags` and the owner and socket cookie in a
//! comment (see [`super::session`]), and at the end one Interface Statistics Block per
//! interface with the kernel's drops.
//!
//! Enhanced Packet Blocks are laid out here (big-endian, like the section header pcap-file
//! writes) rather than by pcap-file, to write each packet from the ring buffer record without
//! an intermediate copy: small blocks are appended to a buffer, written out when it fills; a
//! packet of [`DIRECT_MIN`] bytes or more goes out in one `writev` with whatever is buffered,
//! its block header and its options, straight from the record. Writes of whole blocks only,
//! so a killed capagent leaves a file readable up to the last block that reached it.

use std::borrow::Cow;
use std::io::{self, IoSlice, Write};
use std::path::Path;

use pcap_file::DataLink;
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::blocks::interface_statistics::{
    InterfaceStatisticsBlock, InterfaceStatisticsOption,
};

use super::{Iface, IfaceTotals, Owner, Packet};
use crate::output::{
    PacketWriter,
    pcapng::{
        FLAG_INBOUND, FLAG_OUTBOUND, open_output, secrets::decryption_secrets_block,
        section_header, to_io,
    },
};
use agent_common::packet_dir;

/// Bytes buffered before they are written.
const BUFFER: usize = 256 * 1024;
/// Packets with at least this many bytes are written from the record, not copied into the
/// buffer first (a copy of this size costs about as much as a system call).
pub const DIRECT_MIN: usize = 16 * 1024;
const ENHANCED_PACKET_BLOCK: u32 = 6;
const OPT_COMMENT: u16 = 1;
const OPT_EPB_FLAGS: u16 = 2;

/// Writes captured packets as pcapng to `W` (unbuffered: the writer buffers itself).
pub struct CaptureWriter<W: Write> {
    /// Serializes the other blocks into the buffer (its inner `Vec`).
    w: PcapNgWriter<Vec<u8>>,
    /// `None` only once [`CaptureWriter::into_inner`] took it.
    out: Option<W>,
    /// ifindex of each interface, in IDB order (the position is the pcapng interface id).
    ifindexes: Vec<u32>,
    /// The options and trailer of a directly written packet.
    tail: Vec<u8>,
    /// The comment of the last packet written as a [`PacketWriter`].
    comments: CommentCache,
}

/// The pcapng comment of a packet.
pub fn comment(owner: Option<&Owner>, cookie: u64) -> String {
    match owner {
        Some(o) => format!("pid={} comm={} cookie={cookie}", o.pid, o.comm),
        None => format!("pid=? (no local socket: forwarded or not yet resolved) cookie={cookie}"),
    }
}

/// The comment of the last packet written, kept while the packets that follow have the
/// same owner and socket (a bulk transfer: every packet), so it is formatted once.
#[derive(Default)]
pub(crate) struct CommentCache {
    key: Option<(Option<Owner>, u64)>,
    text: String,
}

impl CommentCache {
    /// [`comment`]`(owner, cookie)`.
    pub(crate) fn get(&mut self, owner: Option<&Owner>, cookie: u64) -> &str {
        let hit = matches!(&self.key, Some((o, c)) if *c == cookie && o.as_ref() == owner);
        if !hit {
            self.text = comment(owner, cookie);
            self.key = Some((owner.cloned(), cookie));
        }
        &self.text
    }
}

impl CaptureWriter<Box<dyn Write + Send>> {
    /// Writes to `path` (created or truncated, mode 0600 when created), or stdout for `-`.
    pub fn open(path: &Path, ifaces: &[Iface], snaplen: u32) -> io::Result<Self> {
        let (out, _) = open_output(path)?.into_parts();
        CaptureWriter::new(out, ifaces, snaplen)
    }
}

fn be16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn be32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn pad4(len: usize) -> usize {
    (4 - len % 4) % 4
}

/// Writes all of `bufs` (the standard library's `write_all_vectored` is unstable).
fn write_all_vectored(out: &mut impl Write, mut bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match out.write_vectored(bufs) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl<W: Write> CaptureWriter<W> {
    /// Buffers the section header and one IDB per interface.
    pub fn new(out: W, ifaces: &[Iface], snaplen: u32) -> io::Result<Self> {
        let mut w = PcapNgWriter::with_section_header(Vec::with_capacity(BUFFER), section_header())
            .map_err(to_io)?;
        for iface in ifaces {
            let idb = InterfaceDescriptionBlock {
                linktype: DataLink::from(iface.linktype.linktype() as u32),
                snaplen,
                options: vec![
                    InterfaceDescriptionOption::IfName(Cow::Owned(iface.name.clone())),
                    InterfaceDescriptionOption::IfTsResol(9),
                ],
            };
            w.write_pcapng_block(idb).map_err(to_io)?;
        }
        Ok(CaptureWriter {
            w,
            out: Some(out),
            ifindexes: ifaces.iter().map(|i| i.ifindex).collect(),
            tail: Vec::new(),
            comments: CommentCache::default(),
        })
    }

    /// Writes one packet (`ts_ns`: wall clock) with `comment` (e.g. its owner and socket
    /// cookie); packets of other interfaces are skipped.
    pub fn write_packet(&mut self, p: &Packet<'_>, ts_ns: u64, comment: &str) -> io::Result<()> {
        let Some(id) = self.ifindexes.iter().position(|&i| i == p.ifindex) else {
            return Ok(());
        };
        let flags = if p.dir == packet_dir::EGRESS {
            FLAG_OUTBOUND
        } else {
            FLAG_INBOUND
        };
        // An option's length is 16 bits (and comments here are short).
        let comment = &comment.as_bytes()[..comment.len().min(0xfff0)];
        let data = p.data;
        let opts_len = 8 + 4 + comment.len() + pad4(comment.len()) + 4;
        let block_len = (28 + data.len() + pad4(data.len()) + opts_len + 4) as u32;
        // Header: type, length, interface, timestamp (high, low), captured and original length.
        let mut head = [0u8; 28];
        for (i, v) in [
            ENHANCED_PACKET_BLOCK,
            block_len,
            id as u32,
            (ts_ns >> 32) as u32,
            ts_ns as u32,
            data.len() as u32,
            p.orig_len.max(data.len() as u32),
        ]
        .into_iter()
        .enumerate()
        {
            head[4 * i..4 * i + 4].copy_from_slice(&v.to_be_bytes());
        }
        let direct = data.len() >= DIRECT_MIN;
        let tail = if direct {
            self.tail.clear();
            &mut self.tail
        } else {
            let buf = self.w.get_mut();
            buf.extend_from_slice(&head);
            buf.extend_from_slice(data);
            buf
        };
        // Data padding, epb_flags, the comment, end of options, the length again.
        tail.extend_from_slice(&[0; 3][..pad4(data.len())]);
        be16(tail, OPT_EPB_FLAGS);
        be16(tail, 4);
        be32(tail, flags);
        be16(tail, OPT_COMMENT);
        be16(tail, comment.len() as u16);
        tail.extend_from_slice(comment);
        tail.extend_from_slice(&[0; 3][..pad4(comment.len())]);
        tail.extend_from_slice(&[0; 4]);
        be32(tail, block_len);
        if direct {
            let buf = self.w.get_mut();
            let mut bufs = [
                IoSlice::new(buf),
                IoSlice::new(&head),
                IoSlice::new(data),
                IoSlice::new(&self.tail),
            ];
            write_all_vectored(self.out.as_mut().expect("until into_inner"), &mut bufs)?;
            buf.clear();
        } else if self.w.get_ref().len() >= BUFFER {
            self.write_buffer()?;
        }
        Ok(())
    }

    /// Writes the Interface Statistics Block of an interface: `isb_ifrecv` = every packet
    /// the capture program saw, `isb_ifdrop` = those lost because the ring buffer was full,
    /// and with a filter `isb_filteraccept` = those the filter accepted.
    pub fn write_stats(&mut self, t: &IfaceTotals, filtering: bool, ts_ns: u64) -> io::Result<()> {
        let Some(id) = self.ifindexes.iter().position(|&i| i == t.ifindex) else {
            return Ok(());
        };
        let accepted = t.submitted + t.dropped;
        let mut options = vec![
            InterfaceStatisticsOption::IsbIfRecv(accepted + t.filtered),
            InterfaceStatisticsOption::IsbIfDrop(t.dropped),
        ];
        if filtering {
            options.push(InterfaceStatisticsOption::IsbFilterAccept(accepted));
        }
        // pcap-file writes this timestamp as one u64 in the section's byte order, where
        // pcapng wants the high 32 bits first: swap the halves so readers see `ts_ns`.
        let timestamp = ts_ns.rotate_right(32);
        let isb = InterfaceStatisticsBlock {
            interface_id: id as u32,
            timestamp,
            options,
        };
        self.w.write_pcapng_block(isb).map_err(to_io)?;
        Ok(())
    }

    /// Writes a Decryption Secrets Block of `key_log` (NSS key log lines), before the packets
    /// it decrypts; nothing for an empty key log.
    pub fn write_tls_secrets(&mut self, key_log: &[u8]) -> io::Result<()> {
        if key_log.is_empty() {
            return Ok(());
        }
        let dsb = decryption_secrets_block(self.w.section().endianness, key_log)?;
        self.w.get_mut().extend_from_slice(&dsb);
        if self.w.get_ref().len() >= BUFFER {
            self.write_buffer()?;
        }
        Ok(())
    }

    fn write_buffer(&mut self) -> io::Result<()> {
        let buf = self.w.get_mut();
        if let Some(out) = self.out.as_mut()
            && !buf.is_empty()
        {
            out.write_all(buf)?;
            buf.clear();
        }
        Ok(())
    }

    /// Writes out what is buffered.
    pub fn flush(&mut self) -> io::Result<()> {
        self.write_buffer()?;
        self.out.as_mut().map_or(Ok(()), Write::flush)
    }

    /// Flushes and returns the output.
    pub fn into_inner(mut self) -> io::Result<W> {
        self.flush()?;
        Ok(self.out.take().expect("taken only here"))
    }
}

/// Packets with their owner and socket cookie in the comment; at the end one statistics
/// block per interface.
impl<W: Write> PacketWriter for CaptureWriter<W> {
    fn write_packet(
        &mut self,
        p: &Packet<'_>,
        ts_ns: u64,
        owner: Option<&Owner>,
    ) -> io::Result<()> {
        let mut comments = std::mem::take(&mut self.comments);
        let r = CaptureWriter::write_packet(self, p, ts_ns, comments.get(owner, p.cookie));
        self.comments = comments;
        r
    }

    fn flush(&mut self) -> io::Result<()> {
        CaptureWriter::flush(self)
    }

    fn finish(&mut self, totals: &[IfaceTotals], filtering: bool) -> io::Result<()> {
        let now = crate::clock::wall_ns();
        for t in totals {
            self.write_stats(t, filtering, now)?;
        }
        CaptureWriter::flush(self)
    }

    fn write_tls_secrets(&mut self, key_log: &[u8]) -> io::Result<()> {
        CaptureWriter::write_tls_secrets(self, key_log)
    }
}

impl<W: Write> Drop for CaptureWriter<W> {
    /// Like `BufWriter`: what is buffered is written (errors cannot be reported here).
    fn drop(&mut self) {
        let _ = self.write_buffer();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::LinkType;
    use pcap_file::pcapng::blocks::enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption};
    use pcap_file::pcapng::{Block, PcapNgReader};
    use std::time::Duration;

    /// Accepts at most 7 bytes per call: short writes, as a pipe may do.
    struct Trickle(Vec<u8>);

    impl Write for Trickle {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            let n = b.len().min(7);
            self.0.extend_from_slice(&b[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// The same file as pcap-file writes it (section header, IDB, EPBs with flags and comment).
    fn reference(packets: &[(Packet<'_>, u64, &str)]) -> Vec<u8> {
        let mut w = PcapNgWriter::with_section_header(Vec::new(), section_header()).unwrap();
        w.write_pcapng_block(InterfaceDescriptionBlock {
            linktype: DataLink::ETHERNET,
            snaplen: 65535,
            options: vec![
                InterfaceDescriptionOption::IfName(Cow::Borrowed("lo")),
                InterfaceDescriptionOption::IfTsResol(9),
            ],
        })
        .unwrap();
        for (p, ts, comment) in packets {
            let flags = if p.dir == packet_dir::EGRESS {
                FLAG_OUTBOUND
            } else {
                FLAG_INBOUND
            };
            w.write_pcapng_block(EnhancedPacketBlock {
                interface_id: 0,
                timestamp: Duration::from_nanos(*ts),
                original_len: p.orig_len.max(p.data.len() as u32),
                data: Cow::Borrowed(p.data),
                options: vec![
                    EnhancedPacketOption::Flags(flags),
                    EnhancedPacketOption::Comment(Cow::Borrowed(comment)),
                ],
            })
            .unwrap();
        }
        w.into_inner()
    }

    #[test]
    fn blocks_byte_for_byte_as_pcap_file_writes_them() {
        // Sizes around the padding and the direct-write threshold, comments of every padding.
        let sizes = [
            0,
            1,
            2,
            3,
            60,
            96,
            DIRECT_MIN - 1,
            DIRECT_MIN,
            DIRECT_MIN + 3,
            65535,
        ];
        let datas: Vec<Vec<u8>> = sizes
            .iter()
            .map(|&n| (0..n).map(|i| (i * 7 + n) as u8).collect())
            .collect();
        let comments = [
            "",
            "a",
            "pid=1 comm=x cookie=5",
            "abc",
            "pid=? (no local socket)",
        ];
        let packets: Vec<(Packet<'_>, u64, &str)> = datas
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let p = Packet {
                    ts_ns: 0,
                    cookie: 9,
                    ifindex: 1,
                    orig_len: if i % 2 == 0 { 131_032 } else { 0 },
                    dir: if i % 3 == 0 {
                        packet_dir::INGRESS
                    } else {
                        packet_dir::EGRESS
                    },
                    ino: 0,
                    owner: None,
                    data: d,
                };
                (
                    p,
                    1_700_000_000_123_456_789 + i as u64,
                    comments[i % comments.len()],
                )
            })
            .collect();
        let want = reference(&packets);
        let ifaces = [Iface {
            name: "lo".to_string(),
            ifindex: 1,
            loopback: true,
            linktype: LinkType::Ethernet,
        }];
        let mut w = CaptureWriter::new(Vec::new(), &ifaces, 65535).unwrap();
        let mut t = CaptureWriter::new(Trickle(Vec::new()), &ifaces, 65535).unwrap();
        for (p, ts, c) in &packets {
            w.write_packet(p, *ts, c).unwrap();
            t.write_packet(p, *ts, c).unwrap();
        }
        let got = w.into_inner().unwrap();
        assert_eq!(got.len(), want.len());
        assert!(
            got == want,
            "first difference at byte {:?}",
            got.iter().zip(&want).position(|(a, b)| a != b)
        );
        assert!(t.into_inner().unwrap().0 == want);
    }

    #[test]
    fn tls_secrets_between_the_packets_as_written() {
        let lo = Iface {
            name: "lo".to_string(),
            ifindex: 1,
            loopback: true,
            linktype: LinkType::Ethernet,
        };
        let headers = CaptureWriter::new(Vec::new(), std::slice::from_ref(&lo), 96)
            .unwrap()
            .into_inner()
            .unwrap();
        let data = [7u8; 60];
        let p = Packet {
            ts_ns: 0,
            cookie: 1,
            ifindex: 1,
            orig_len: 60,
            dir: packet_dir::EGRESS,
            ino: 0,
            owner: None,
            data: &data,
        };
        let mut one = CaptureWriter::new(Vec::new(), std::slice::from_ref(&lo), 96).unwrap();
        one.write_packet(&p, 5, "c").unwrap();
        let packet = one.into_inner().unwrap()[headers.len()..].to_vec();
        let key_log = b"CLIENT_RANDOM 0a0b 0c0d0e\n";
        let mut w = CaptureWriter::new(Vec::new(), &[lo], 96).unwrap();
        w.write_packet(&p, 5, "c").unwrap();
        PacketWriter::write_tls_secrets(&mut w, key_log).unwrap();
        w.write_tls_secrets(b"").unwrap();
        w.write_packet(&p, 5, "c").unwrap();
        let dsb = decryption_secrets_block(pcap_file::Endianness::Big, key_log).unwrap();
        let want = [&headers[..], &packet, &dsb, &packet].concat();
        assert!(w.into_inner().unwrap() == want);
    }

    #[test]
    fn dropping_writes_what_is_buffered() {
        let mut out = Vec::new();
        {
            let lo = Iface {
                name: "lo".to_string(),
                ifindex: 1,
                loopback: true,
                linktype: LinkType::Ethernet,
            };
            let w = CaptureWriter::new(&mut out, &[lo], 96).unwrap();
            drop(w);
        }
        assert!(!out.is_empty());
        let mut r = PcapNgReader::new(&out[..]).unwrap();
        assert!(matches!(
            r.next_block().unwrap().unwrap(),
            Block::InterfaceDescription(_)
        ));
    }

    #[test]
    fn writes_idb_epb_isb_readable_back() {
        let iface = |name: &str, ifindex, linktype| Iface {
            name: name.to_string(),
            ifindex,
            loopback: false,
            linktype,
        };
        let ifaces = vec![
            iface("lo", 1, LinkType::Ethernet),
            iface("eth0", 7, LinkType::Ethernet),
            iface("wg0", 9, LinkType::Raw),
        ];
        let mut w = CaptureWriter::new(Vec::new(), &ifaces, 96).unwrap();
        let data = [0u8; 60];
        let p = Packet {
            ts_ns: 0,
            cookie: 42,
            ifindex: 7,
            orig_len: 1514,
            dir: packet_dir::EGRESS,
            ino: 0,
            owner: None,
            data: &data,
        };
        w.write_packet(&p, 1_700_000_000_123_456_789, "cookie=42")
            .unwrap();
        let totals = IfaceTotals {
            ifindex: 7,
            submitted: 1,
            dropped: 3,
            filtered: 5,
        };
        w.write_stats(&totals, true, 1_700_000_001_000_000_000)
            .unwrap();
        let bytes = w.into_inner().unwrap();
        let mut r = PcapNgReader::new(&bytes[..]).unwrap();
        let mut names = Vec::new();
        let mut linktypes = Vec::new();
        let mut epbs = Vec::new();
        let mut isbs = Vec::new();
        while let Some(b) = r.next_block() {
            match b.unwrap() {
                Block::InterfaceDescription(idb) => {
                    linktypes.push(idb.linktype);
                    assert_eq!(idb.snaplen, 96);
                    for o in idb.options {
                        if let InterfaceDescriptionOption::IfName(n) = o {
                            names.push(n.to_string());
                        }
                    }
                }
                Block::EnhancedPacket(e) => epbs.push(e.into_owned()),
                Block::InterfaceStatistics(s) => isbs.push(s.into_owned()),
                _ => {}
            }
        }
        assert_eq!(names, ["lo", "eth0", "wg0"]);
        assert_eq!(
            linktypes,
            [DataLink::ETHERNET, DataLink::ETHERNET, DataLink::RAW]
        );
        assert_eq!(epbs.len(), 1);
        assert_eq!(epbs[0].interface_id, 1);
        assert_eq!(epbs[0].original_len, 1514);
        assert_eq!(epbs[0].data.len(), 60);
        assert_eq!(epbs[0].timestamp.as_nanos(), 1_700_000_000_123_456_789);
        assert!(
            epbs[0]
                .options
                .contains(&EnhancedPacketOption::Flags(FLAG_OUTBOUND))
        );
        assert!(
            epbs[0]
                .options
                .contains(&EnhancedPacketOption::Comment(Cow::Borrowed("cookie=42")))
        );
        assert_eq!(isbs.len(), 1);
        assert_eq!(isbs[0].interface_id, 1);
        assert!(
            isbs[0]
                .options
                .contains(&InterfaceStatisticsOption::IsbIfDrop(3))
        );
        assert!(
            isbs[0]
                .options
                .contains(&InterfaceStatisticsOption::IsbIfRecv(9))
        );
        assert!(
            isbs[0]
                .options
                .contains(&InterfaceStatisticsOption::IsbFilterAccept(4))
        );
    }
}
