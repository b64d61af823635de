//! pcapng Decryption Secrets Blocks (DSB, block type 0x0000000A): the TLS key log of the
//! sessions a file holds, so that Wireshark and tshark decrypt them without being given the
//! key log file. A DSB must come before the packets it decrypts (Wireshark reads a file
//! once, in order: a TLS 1.3 session whose keys come after its ServerHello stays encrypted).
//!
//! Layout (pcapng, draft-ietf-opsawg-pcapng section 4.7), every number in the section's byte
//! order: block type, block length, secrets type (0x544c534b, "TLSK": an NSS key log), secrets
//! length, the key log text padded with zeros to 32 bits, no options, the block length again.
//!
//! Written here by hand: pcap-file 2.0 (the newest) has no DSB (it reads one as an unknown
//! block), and [`inject`] copies a finished file's blocks as bytes, without parsing them.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, BufReader, BufWriter, Read, Write},
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::Path,
};

use pcap_file::Endianness;

/// The block type of a Decryption Secrets Block.
pub const DECRYPTION_SECRETS_BLOCK: u32 = 0x0000_000A;
/// Its secrets type for an NSS key log (TLS): "TLSK".
pub const TLS_KEY_LOG: u32 = 0x544c_534b;
const SECTION_HEADER_BLOCK: u32 = 0x0A0D_0D0A;
const INTERFACE_DESCRIPTION_BLOCK: u32 = 1;

fn u32_bytes(e: Endianness, v: u32) -> [u8; 4] {
    match e {
        Endianness::Big => v.to_be_bytes(),
        Endianness::Little => v.to_le_bytes(),
    }
}

fn u32_of(e: Endianness, b: [u8; 4]) -> u32 {
    match e {
        Endianness::Big => u32::from_be_bytes(b),
        Endianness::Little => u32::from_le_bytes(b),
    }
}

/// The Decryption Secrets Block of `key_log` (NSS key log text, e.g. the lines of
/// `mitm::keylog`) in byte order `e`. Fails when the text does not fit in a block.
pub fn decryption_secrets_block(e: Endianness, key_log: &[u8]) -> io::Result<Vec<u8>> {
    let pad = (4 - key_log.len() % 4) % 4;
    let block_len = u32::try_from(20 + key_log.len() + pad)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "key log too long for pcapng"))?;
    let mut b = Vec::with_capacity(block_len as usize);
    for v in [
        DECRYPTION_SECRETS_BLOCK,
        block_len,
        TLS_KEY_LOG,
        key_log.len() as u32,
    ] {
        b.extend_from_slice(&u32_bytes(e, v));
    }
    b.extend_from_slice(key_log);
    b.extend_from_slice(&[0; 3][..pad]);
    b.extend_from_slice(&u32_bytes(e, block_len));
    Ok(b)
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// Reads exactly `buf.len()` bytes, or none at the end of the input (false).
fn read_or_end(src: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match src.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(bad("truncated pcapng block header")),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Copies the pcapng file `src` into `dst` with a Decryption Secrets Block of `key_log` after
/// its section header and interface descriptions, before any other block (as `editcap
/// --inject-secrets` does). Blocks are copied as they are.
pub fn inject(mut src: impl Read, mut dst: impl Write, key_log: &[u8]) -> io::Result<()> {
    let mut shb = [0u8; 12];
    src.read_exact(&mut shb)
        .map_err(|_| bad("not a pcapng file"))?;
    let e = match shb[8..12] {
        [0x1A, 0x2B, 0x3C, 0x4D] => Endianness::Big,
        [0x4D, 0x3C, 0x2B, 0x1A] => Endianness::Little,
        _ => return Err(bad("not a pcapng file (no byte-order magic)")),
    };
    let word = |b: &[u8]| u32_of(e, b.try_into().expect("4 bytes"));
    if word(&shb[0..4]) != SECTION_HEADER_BLOCK {
        return Err(bad("not a pcapng file (no section header)"));
    }
    let copy_rest = |src: &mut dyn Read, dst: &mut dyn Write, len: u32, seen: usize| {
        let rest = (len as usize)
            .checked_sub(seen)
            .ok_or_else(|| bad("pcapng block shorter than its header"))?;
        let n = io::copy(&mut src.take(rest as u64), dst)?;
        if n != rest as u64 {
            return Err(bad("truncated pcapng block"));
        }
        Ok::<_, io::Error>(())
    };
    dst.write_all(&shb)?;
    copy_rest(&mut src, &mut dst, word(&shb[4..8]), 12)?;
    let dsb = decryption_secrets_block(e, key_log)?;
    let mut head = [0u8; 8];
    loop {
        if !read_or_end(&mut src, &mut head)? {
            // Interfaces but no packets: the secrets go last.
            return dst.write_all(&dsb);
        }
        if word(&head[0..4]) != INTERFACE_DESCRIPTION_BLOCK {
            break;
        }
        dst.write_all(&head)?;
        copy_rest(&mut src, &mut dst, word(&head[4..8]), 8)?;
    }
    dst.write_all(&dsb)?;
    dst.write_all(&head)?;
    io::copy(&mut src, &mut dst)?;
    Ok(())
}

/// [`inject`] into the file `path` itself: written beside it (same mode), then renamed over
/// it.
pub fn inject_file(path: &Path, key_log: &[u8]) -> io::Result<()> {
    let src = File::open(path)?;
    let mode = src.metadata()?.permissions().mode() & 0o7777;
    let mut name = std::ffi::OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(".capagent-secrets");
    let tmp = path.with_file_name(name);
    let result = (|| {
        let out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        let mut out = BufWriter::with_capacity(256 * 1024, out);
        inject(BufReader::with_capacity(256 * 1024, src), &mut out, key_log)?;
        out.into_inner().map_err(io::IntoInnerError::into_error)?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_LOG: &[u8] = b"CLIENT_RANDOM 0a0b 0c0d0e\n";

    #[test]
    fn block_bytes_big_and_little_endian() {
        // 26 bytes of text: 2 bytes of padding, block length 20 + 28 = 48.
        let mut want = vec![
            0, 0, 0, 0x0A, 0, 0, 0, 48, 0x54, 0x4c, 0x53, 0x4b, 0, 0, 0, 26,
        ];
        want.extend_from_slice(KEY_LOG);
        want.extend_from_slice(&[0, 0, 0, 0, 0, 48]);
        assert_eq!(
            decryption_secrets_block(Endianness::Big, KEY_LOG).unwrap(),
            want
        );
        let mut want = vec![
            0x0A, 0, 0, 0, 48, 0, 0, 0, 0x4b, 0x53, 0x4c, 0x54, 26, 0, 0, 0,
        ];
        want.extend_from_slice(KEY_LOG);
        want.extend_from_slice(&[0, 0, 48, 0, 0, 0]);
        assert_eq!(
            decryption_secrets_block(Endianness::Little, KEY_LOG).unwrap(),
            want
        );
        // A multiple of 4: no padding.
        let b = decryption_secrets_block(Endianness::Big, b"ABCD").unwrap();
        assert_eq!(
            b,
            [
                0, 0, 0, 0x0A, 0, 0, 0, 24, 0x54, 0x4c, 0x53, 0x4b, 0, 0, 0, 4, b'A', b'B', b'C',
                b'D', 0, 0, 0, 24
            ]
        );
    }

    /// A file as capagent's writers make it: section header, two interfaces, two packets.
    fn file(e: Endianness) -> (Vec<u8>, usize) {
        use pcap_file::{
            DataLink,
            pcapng::{
                PcapNgWriter,
                blocks::{
                    enhanced_packet::EnhancedPacketBlock,
                    interface_description::InterfaceDescriptionBlock,
                    section_header::SectionHeaderBlock,
                },
            },
        };
        let shb = SectionHeaderBlock {
            endianness: e,
            ..Default::default()
        };
        let mut w = PcapNgWriter::with_section_header(Vec::new(), shb).unwrap();
        for _ in 0..2 {
            w.write_pcapng_block(InterfaceDescriptionBlock {
                linktype: DataLink::RAW,
                snaplen: 0,
                options: vec![],
            })
            .unwrap();
        }
        let headers = w.get_ref().len();
        for (i, data) in [&b"abc"[..], b"0123456789"].into_iter().enumerate() {
            w.write_pcapng_block(EnhancedPacketBlock {
                interface_id: i as u32,
                timestamp: std::time::Duration::from_nanos(1_000 + i as u64),
                original_len: data.len() as u32,
                data: data.into(),
                options: vec![],
            })
            .unwrap();
        }
        (w.into_inner(), headers)
    }

    #[test]
    fn inject_puts_the_block_after_the_interfaces() {
        for e in [Endianness::Big, Endianness::Little] {
            let (orig, headers) = file(e);
            let mut out = Vec::new();
            inject(&orig[..], &mut out, KEY_LOG).unwrap();
            let dsb = decryption_secrets_block(e, KEY_LOG).unwrap();
            let want = [&orig[..headers], &dsb, &orig[headers..]].concat();
            assert!(out == want, "{e:?}");
            // pcap-file reads the result back: the DSB as an unknown block, before the packets.
            let mut r = pcap_file::pcapng::PcapNgReader::new(&out[..]).unwrap();
            let mut kinds = Vec::new();
            while let Some(b) = r.next_block() {
                kinds.push(match b.unwrap() {
                    pcap_file::pcapng::Block::InterfaceDescription(_) => "idb".to_string(),
                    pcap_file::pcapng::Block::EnhancedPacket(_) => "epb".to_string(),
                    pcap_file::pcapng::Block::Unknown(u) => format!("{:#x}", u.type_),
                    other => format!("{other:?}"),
                });
            }
            assert_eq!(kinds, ["idb", "idb", "0xa", "epb", "epb"]);
        }
        // No packets: the block goes last.
        let (orig, headers) = file(Endianness::Big);
        let mut out = Vec::new();
        inject(&orig[..headers], &mut out, KEY_LOG).unwrap();
        let dsb = decryption_secrets_block(Endianness::Big, KEY_LOG).unwrap();
        assert_eq!(out, [&orig[..headers], &dsb[..]].concat());
    }

    #[test]
    fn inject_refuses_what_is_not_pcapng() {
        let mut out = Vec::new();
        let pcap = [0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            inject(&pcap[..], &mut out, KEY_LOG).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        let (orig, headers) = file(Endianness::Big);
        assert_eq!(
            inject(&orig[..headers - 3], &mut Vec::new(), KEY_LOG)
                .unwrap_err()
                .kind(),
            io::ErrorKind::InvalidData,
            "a truncated interface block"
        );
    }

    #[test]
    fn inject_file_replaces_it_keeping_its_mode() {
        let dir = std::env::temp_dir().join(format!("capagent-dsb-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.pcapng");
        let (orig, headers) = file(Endianness::Big);
        fs::write(&path, &orig).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        inject_file(&path, KEY_LOG).unwrap();
        let dsb = decryption_secrets_block(Endianness::Big, KEY_LOG).unwrap();
        assert_eq!(
            fs::read(&path).unwrap(),
            [&orig[..headers], &dsb, &orig[headers..]].concat()
        );
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o640
        );
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1, "no temporary left");
        fs::write(&path, b"not pcapng at all").unwrap();
        assert!(inject_file(&path, KEY_LOG).is_err());
        assert_eq!(fs::read(&path).unwrap(), b"not pcapng at all");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1, "no temporary left");
        fs::remove_dir_all(&dir).unwrap();
    }
}
