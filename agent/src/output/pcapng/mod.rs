//! pcapng output: the socket-level conversation as synthetic IP packets (LINKTYPE_RAW) that
//! Wireshark and tshark dissect. [`synth`] builds the packets; [`PcapngWriter`] writes one
//! Section Header Block, one Interface Description Block ("capagent-trace", nanosecond
//! timestamps) and one Enhanced Packet Block per packet, each with the direction in
//! `epb_flags` and the process in a comment (pcapng has no process option Wireshark 4.0 reads).
//! TLS key logs go into Decryption Secrets Blocks ([`secrets`]).
//!
//! Blocks are written whole into a buffer, so a killed agent leaves a file readable up to the
//! last block that reached it.

pub mod secrets;
pub mod synth;

use std::borrow::Cow;
use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use pcap_file::DataLink;
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::pcapng::blocks::enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption};
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::blocks::section_header::{SectionHeaderBlock, SectionHeaderOption};

use super::EventWriter;
use crate::model::{Direction, Event};
pub use synth::{Packet, Synth};

/// Interface name of the synthetic capture.
pub const IF_NAME: &str = "capagent-trace";
const BUFFER: usize = 256 * 1024;
/// epb_flags direction bits.
pub(crate) const FLAG_INBOUND: u32 = 0b01;
pub(crate) const FLAG_OUTBOUND: u32 = 0b10;

/// Where a pcapng file goes: `path` (created or truncated, mode 0600 when created: payloads
/// may hold secrets), or stdout for `-`; buffered.
pub(crate) fn open_output(path: &Path) -> io::Result<BufWriter<Box<dyn Write + Send>>> {
    let out: Box<dyn Write + Send> = if path.as_os_str() == "-" {
        Box::new(io::stdout())
    } else {
        Box::new(
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(path)?,
        )
    };
    Ok(BufWriter::with_capacity(BUFFER, out))
}

/// The section header every capagent pcapng file starts with.
pub(crate) fn section_header() -> SectionHeaderBlock<'static> {
    SectionHeaderBlock {
        options: vec![SectionHeaderOption::UserApplication(Cow::Owned(format!(
            "capagent {}",
            env!("CARGO_PKG_VERSION")
        )))],
        ..Default::default()
    }
}

/// A pcapng error as an I/O error.
pub(crate) fn to_io(e: pcap_file::PcapError) -> io::Error {
    match e {
        pcap_file::PcapError::IoError(e) => e,
        other => io::Error::other(other.to_string()),
    }
}

/// Writes events as pcapng into `W`.
///
/// Dropping it writes the TLS ciphertext the synthesiser still holds back (`trace --tls`:
/// connections whose plaintext did not come before the end; see [`synth`]).
pub struct PcapngWriter<W: Write> {
    /// Always `Some` but in [`PcapngWriter::into_inner`] and [`PcapngWriter::continue_in`]
    /// (which hand the output on, and the `Drop` impl then has nothing to do).
    w: Option<PcapNgWriter<W>>,
    synth: Synth,
}

impl PcapngWriter<BufWriter<Box<dyn Write + Send>>> {
    /// Writes to `path` (created or truncated, mode 0600 when created), or stdout for `-`.
    pub fn open(path: &Path) -> io::Result<Self> {
        PcapngWriter::new(open_output(path)?)
    }
}

impl<W: Write> PcapngWriter<W> {
    /// Writes the section and interface headers into `out`.
    pub fn new(out: W) -> io::Result<Self> {
        PcapngWriter::with_synth(out, Synth::new())
    }

    /// Ends this output and goes on in `out` (a new file with its own section and interface
    /// headers) with the same streams: their sequence numbers go on, so each file reads on
    /// its own and the files read as one when merged. Returns the previous output.
    pub fn continue_in<W2: Write>(mut self, out: W2) -> io::Result<(W, PcapngWriter<W2>)> {
        let next = PcapngWriter::with_synth(out, std::mem::take(&mut self.synth))?;
        Ok((self.take_inner(), next))
    }

    fn with_synth(out: W, synth: Synth) -> io::Result<Self> {
        let mut w = PcapNgWriter::with_section_header(out, section_header()).map_err(to_io)?;
        let idb = InterfaceDescriptionBlock {
            linktype: DataLink::RAW,
            snaplen: 0,
            options: vec![
                InterfaceDescriptionOption::IfName(Cow::Borrowed(IF_NAME)),
                InterfaceDescriptionOption::IfDescription(Cow::Borrowed(
                    "socket calls traced by capagent, as synthetic IP packets",
                )),
                InterfaceDescriptionOption::IfTsResol(9),
            ],
        };
        w.write_pcapng_block(idb).map_err(to_io)?;
        Ok(PcapngWriter { w: Some(w), synth })
    }

    fn writer(&mut self) -> &mut PcapNgWriter<W> {
        self.w
            .as_mut()
            .expect("the output is there until handed on")
    }

    fn take_inner(&mut self) -> W {
        self.w
            .take()
            .expect("the output is there until handed on")
            .into_inner()
    }

    /// Writes one synthetic packet.
    pub fn write_packet(&mut self, p: &Packet) -> io::Result<()> {
        let flags = match p.dir {
            Direction::Recv => FLAG_INBOUND,
            Direction::Send => FLAG_OUTBOUND,
        };
        let epb = EnhancedPacketBlock {
            interface_id: 0,
            timestamp: Duration::from_nanos(p.ts_ns),
            original_len: p.orig_len,
            data: Cow::Borrowed(&p.data),
            options: vec![
                EnhancedPacketOption::Flags(flags),
                EnhancedPacketOption::Comment(Cow::Borrowed(&p.comment)),
            ],
        };
        self.writer().write_pcapng_block(epb).map_err(to_io)?;
        Ok(())
    }

    /// Writes a Decryption Secrets Block of `key_log` (NSS key log lines), before the packets
    /// it decrypts; nothing for an empty key log.
    pub fn write_tls_secrets(&mut self, key_log: &[u8]) -> io::Result<()> {
        if key_log.is_empty() {
            return Ok(());
        }
        let w = self.writer();
        let dsb = secrets::decryption_secrets_block(w.section().endianness, key_log)?;
        w.get_mut().write_all(&dsb)
    }

    pub fn into_inner(mut self) -> W {
        self.take_inner()
    }
}

impl<W: Write> Drop for PcapngWriter<W> {
    fn drop(&mut self) {
        if self.w.is_none() {
            return;
        }
        for p in self.synth.release_all() {
            if self.write_packet(&p).is_err() {
                return;
            }
        }
        let _ = self.writer().get_mut().flush();
    }
}

impl<W: Write> EventWriter for PcapngWriter<W> {
    fn write_event(&mut self, ev: &Event) -> io::Result<()> {
        for p in self.synth.packets(ev) {
            self.write_packet(&p)?;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.writer().get_mut().flush()
    }

    fn write_tls_secrets(&mut self, key_log: &[u8]) -> io::Result<()> {
        PcapngWriter::write_tls_secrets(self, key_log)
    }
}

#[cfg(test)]
mod tests;
