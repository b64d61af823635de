//! pcapng output of `capagent capture -w`: one Interface Description Block per captured
//! interface (LINKTYPE_ETHERNET, or LINKTYPE_RAW for layer-3 devices, its real name,
//! nanosecond timestamps), one Enhanced Packet
//! Block per packet with the direction in `epb_flags` and the owner and socket cookie in a
//! comment (see [`super::session`]), and at the end one Interface Statistics Block per
//! interface with the kernel's drops.

use std::borrow::Cow;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::time::Duration;

use pcap_file::DataLink;
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::pcapng::blocks::enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption};
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::blocks::interface_statistics::{
    InterfaceStatisticsBlock, InterfaceStatisticsOption,
};

use super::{Iface, IfaceTotals, Packet};
use crate::output::pcapng::{FLAG_INBOUND, FLAG_OUTBOUND, open_output, section_header, to_io};
use agent_common::packet_dir;

/// Writes captured packets as pcapng.
pub struct CaptureWriter<W: Write> {
    w: PcapNgWriter<W>,
    /// ifindex of each interface, in IDB order (the position is the pcapng interface id).
    ifindexes: Vec<u32>,
}

impl CaptureWriter<BufWriter<Box<dyn Write + Send>>> {
    /// Writes to `path` (created or truncated, mode 0600 when created), or stdout for `-`.
    pub fn open(path: &Path, ifaces: &[Iface], snaplen: u32) -> io::Result<Self> {
        CaptureWriter::new(open_output(path)?, ifaces, snaplen)
    }
}

impl<W: Write> CaptureWriter<W> {
    /// Writes the section header and one IDB per interface.
    pub fn new(out: W, ifaces: &[Iface], snaplen: u32) -> io::Result<Self> {
        let mut w = PcapNgWriter::with_section_header(out, section_header()).map_err(to_io)?;
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
            ifindexes: ifaces.iter().map(|i| i.ifindex).collect(),
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
        let epb = EnhancedPacketBlock {
            interface_id: id as u32,
            timestamp: Duration::from_nanos(ts_ns),
            original_len: p.orig_len.max(p.data.len() as u32),
            data: Cow::Borrowed(p.data),
            options: vec![
                EnhancedPacketOption::Flags(flags),
                EnhancedPacketOption::Comment(Cow::Borrowed(comment)),
            ],
        };
        self.w.write_pcapng_block(epb).map_err(to_io)?;
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

    pub fn flush(&mut self) -> io::Result<()> {
        self.w.get_mut().flush()
    }

    pub fn into_inner(self) -> W {
        self.w.into_inner()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::LinkType;
    use pcap_file::pcapng::{Block, PcapNgReader};

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
        let bytes = w.into_inner();
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
