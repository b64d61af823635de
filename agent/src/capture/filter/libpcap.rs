//! The few libpcap calls capagent needs: compiling a filter expression into classic BPF for
//! a link type (`pcap_open_dead` + `pcap_compile`, exactly what tcpdump does), and, for the
//! tests, libpcap's own userspace evaluator (`pcap_offline_filter`).

use std::ffi::{CStr, CString, c_char, c_int, c_uint};

use agent_common::FilterInsn;

#[repr(C)]
struct PcapT {
    _private: [u8; 0],
}

#[repr(C)]
struct BpfProgram {
    bf_len: c_uint,
    bf_insns: *mut FilterInsn,
}

#[repr(C)]
struct PcapPkthdr {
    ts: libc::timeval,
    caplen: u32,
    len: u32,
}

#[link(name = "pcap")]
unsafe extern "C" {
    fn pcap_open_dead(linktype: c_int, snaplen: c_int) -> *mut PcapT;
    fn pcap_compile(
        p: *mut PcapT,
        fp: *mut BpfProgram,
        s: *const c_char,
        optimize: c_int,
        netmask: u32,
    ) -> c_int;
    fn pcap_geterr(p: *mut PcapT) -> *mut c_char;
    fn pcap_freecode(fp: *mut BpfProgram);
    fn pcap_close(p: *mut PcapT);
    fn pcap_offline_filter(fp: *const BpfProgram, h: *const PcapPkthdr, pkt: *const u8) -> c_int;
    fn bpf_filter(pc: *const FilterInsn, p: *const u8, wirelen: c_uint, buflen: c_uint) -> c_uint;
}

/// `PCAP_NETMASK_UNKNOWN`: `ip broadcast` then fails to compile instead of guessing.
const NETMASK_UNKNOWN: u32 = 0xffff_ffff;

/// The snapshot length compiled programs return for accepted packets (tcpdump's default);
/// the capture keeps `min(this, -s SNAPLEN)` bytes.
pub const ACCEPT_LEN: u32 = 262_144;

/// libpcap's `DLT_*` values of the link types capagent captures.
pub const DLT_EN10MB: c_int = 1;
pub const DLT_RAW: c_int = 12;

/// A dead libpcap handle (no device): only for compiling.
struct Dead(*mut PcapT);

impl Dead {
    fn open(dlt: c_int) -> Result<Dead, String> {
        // SAFETY: no pointers involved; a null return is handled.
        let p = unsafe { pcap_open_dead(dlt, ACCEPT_LEN as c_int) };
        if p.is_null() {
            return Err("libpcap could not open a handle".into());
        }
        Ok(Dead(p))
    }

    fn error(&self) -> String {
        // SAFETY: pcap_geterr returns the handle's NUL-terminated error buffer.
        let e = unsafe { CStr::from_ptr(pcap_geterr(self.0)) };
        e.to_string_lossy().trim().replace('\n', " ")
    }
}

impl Drop for Dead {
    fn drop(&mut self) {
        // SAFETY: opened by pcap_open_dead, closed once.
        unsafe { pcap_close(self.0) }
    }
}

/// A program compiled by libpcap (freed on drop).
struct Compiled(BpfProgram);

impl Compiled {
    fn insns(&self) -> &[FilterInsn] {
        if self.0.bf_insns.is_null() {
            return &[];
        }
        // SAFETY: libpcap allocated bf_len instructions, laid out like FilterInsn (the
        // struct bpf_insn of <pcap/bpf.h>: u16, u8, u8, u32).
        unsafe { std::slice::from_raw_parts(self.0.bf_insns, self.0.bf_len as usize) }
    }
}

impl Drop for Compiled {
    fn drop(&mut self) {
        // SAFETY: filled by a successful pcap_compile, freed once.
        unsafe { pcap_freecode(&mut self.0) }
    }
}

fn compile_raw(expr: &str, dlt: c_int) -> Result<(Dead, Compiled), String> {
    let c = CString::new(expr).map_err(|_| "the expression contains a NUL byte".to_string())?;
    let dead = Dead::open(dlt)?;
    let mut prog = BpfProgram {
        bf_len: 0,
        bf_insns: std::ptr::null_mut(),
    };
    // SAFETY: a live handle, a valid output struct and a NUL-terminated string. libpcap
    // 1.8 and later compile thread-safely.
    let r = unsafe { pcap_compile(dead.0, &mut prog, c.as_ptr(), 1, NETMASK_UNKNOWN) };
    if r != 0 {
        return Err(dead.error());
    }
    Ok((dead, Compiled(prog)))
}

/// Compiles `expr` (tcpdump's syntax, optimized like tcpdump does) for packets of link
/// type `dlt`; the error is libpcap's message.
pub fn compile(expr: &str, dlt: c_int) -> Result<Vec<FilterInsn>, String> {
    let (_dead, prog) = compile_raw(expr, dlt)?;
    Ok(prog.insns().to_vec())
}

/// libpcap's verdict on a packet (`pcap_offline_filter`: its own userspace BPF
/// interpreter, as `tcpdump -r` applies it): the value the program returns.
pub fn offline_filter(expr: &str, dlt: c_int, data: &[u8], wirelen: u32) -> Result<bool, String> {
    let (_dead, prog) = compile_raw(expr, dlt)?;
    let h = PcapPkthdr {
        ts: libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        },
        caplen: data.len() as u32,
        len: wirelen,
    };
    // SAFETY: a compiled program, a header whose caplen is the length of `data`.
    Ok(unsafe { pcap_offline_filter(&prog.0, &h, data.as_ptr()) } != 0)
}

/// libpcap's classic BPF interpreter (`bpf_filter`) run on `prog`: the reference for
/// [`super::cbpf::run`]. `None` when [`super::cbpf::validate`] refuses the program (libpcap
/// trusts its input: a program with a wild jump would make it read out of bounds).
pub fn reference_run(prog: &[FilterInsn], data: &[u8], wirelen: u32) -> Option<u32> {
    super::cbpf::validate(prog).ok()?;
    let buflen = u32::try_from(data.len()).ok()?;
    // SAFETY: a validated program (jumps inside it, returns at its end, scratch indexes in
    // range); libpcap bounds-checks every packet load against `buflen`.
    Some(unsafe { bpf_filter(prog.as_ptr(), data.as_ptr(), wirelen, buflen) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiles_like_tcpdump_d() {
        // `tcpdump -d -y EN10MB ip`:
        // (000) ldh [12]  (001) jeq #0x800 jt 2 jf 3  (002) ret #262144  (003) ret #0
        let p = compile("ip", DLT_EN10MB).unwrap();
        let got: Vec<(u16, u8, u8, u32)> = p.iter().map(|i| (i.code, i.jt, i.jf, i.k)).collect();
        assert_eq!(
            got,
            [
                (0x28, 0, 0, 12),
                (0x15, 0, 1, 0x800),
                (0x06, 0, 0, ACCEPT_LEN),
                (0x06, 0, 0, 0)
            ]
        );
        // On raw IP the version nibble is tested instead.
        let raw = compile("ip", DLT_RAW).unwrap();
        assert_eq!(raw[0].code, 0x30);
        assert_eq!(raw[0].k, 0);
    }

    #[test]
    fn errors_are_libpcaps_messages() {
        let e = compile("tcp port", DLT_EN10MB).unwrap_err();
        assert!(e.contains("syntax error"), "{e}");
        let e = compile("port 99999", DLT_EN10MB).unwrap_err();
        assert!(e.contains("99999"), "{e}");
        assert!(!e.contains('\n'));
        let e = compile("a\0b", DLT_EN10MB).unwrap_err();
        assert!(e.contains("NUL"), "{e}");
    }
}
