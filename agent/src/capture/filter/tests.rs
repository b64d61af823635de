//! Programs compiled by libpcap, run by [`cbpf::run`] on hand-built packets, against the
//! expected verdicts and against libpcap's own evaluator (`pcap_offline_filter`, what
//! `tcpdump -r` uses).

use etherparse::{PacketBuilder, PacketBuilderStep, VlanId};

use super::*;

const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];
const V4_A: [u8; 4] = [10, 0, 0, 1];
const V4_B: [u8; 4] = [192, 168, 1, 2];
const V6_A: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const V6_B: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

/// A named test packet: Ethernet frame, and whether it is an IP packet (so that its
/// Ethernet-less form is a valid raw-IP packet too).
struct Pkt {
    name: &'static str,
    frame: Vec<u8>,
    ip: bool,
}

fn build<T>(b: PacketBuilderStep<T>, payload: &[u8]) -> Vec<u8>
where
    PacketBuilderStep<T>: Writable,
{
    b.bytes(payload)
}

/// The last step of an etherparse builder, whatever the transport.
trait Writable {
    fn bytes(self, payload: &[u8]) -> Vec<u8>;
}

macro_rules! writable {
    ($($t:ty),*) => {$(
        impl Writable for PacketBuilderStep<$t> {
            fn bytes(self, payload: &[u8]) -> Vec<u8> {
                let mut v = Vec::new();
                self.write(&mut v, payload).unwrap();
                v
            }
        }
    )*};
}
writable!(
    etherparse::TcpHeader,
    etherparse::UdpHeader,
    etherparse::Icmpv4Header,
    etherparse::Icmpv6Header
);

fn eth() -> PacketBuilderStep<etherparse::Ethernet2Header> {
    PacketBuilder::ethernet2(MAC_A, MAC_B)
}

fn packets() -> Vec<Pkt> {
    let http_get = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut v = vec![
        Pkt {
            name: "v4 tcp 40000->80 syn",
            frame: build(
                eth().ipv4(V4_A, V4_B, 64).tcp(40000, 80, 1, 1024).syn(),
                &[],
            ),
            ip: true,
        },
        Pkt {
            name: "v4 tcp 80->40000 ack GET",
            frame: build(
                eth().ipv4(V4_B, V4_A, 64).tcp(80, 40000, 1, 1024).ack(5),
                http_get,
            ),
            ip: true,
        },
        Pkt {
            name: "v4 tcp 443->1234 ack",
            frame: build(
                eth().ipv4(V4_B, V4_A, 64).tcp(443, 1234, 1, 1024).ack(5),
                &[0; 100],
            ),
            ip: true,
        },
        Pkt {
            name: "v4 udp 5353->53",
            frame: build(eth().ipv4(V4_A, V4_B, 64).udp(5353, 53), b"query"),
            ip: true,
        },
        Pkt {
            name: "v4 udp 53->5353 from 192.168",
            frame: build(eth().ipv4(V4_B, V4_A, 64).udp(53, 5353), &[1; 300]),
            ip: true,
        },
        Pkt {
            name: "v4 icmp echo",
            frame: build(
                eth().ipv4(V4_A, V4_B, 64).icmpv4_echo_request(1, 1),
                &[0; 56],
            ),
            ip: true,
        },
        Pkt {
            name: "v6 tcp 40000->80 syn",
            frame: build(
                eth().ipv6(V6_A, V6_B, 64).tcp(40000, 80, 1, 1024).syn(),
                &[],
            ),
            ip: true,
        },
        Pkt {
            name: "v6 udp 1234->53",
            frame: build(eth().ipv6(V6_A, V6_B, 64).udp(1234, 53), b"q"),
            ip: true,
        },
        Pkt {
            name: "v6 icmp6 echo",
            frame: build(
                eth().ipv6(V6_B, V6_A, 64).icmpv6_echo_request(7, 1),
                &[0; 8],
            ),
            ip: true,
        },
        Pkt {
            name: "vlan v4 tcp 40000->80",
            frame: build(
                eth()
                    .single_vlan(VlanId::try_new(5).unwrap())
                    .ipv4(V4_A, V4_B, 64)
                    .tcp(40000, 80, 1, 1024),
                &[],
            ),
            ip: false,
        },
    ];
    // IPv4 with 4 bytes of options (NOPs): the TCP header moves, found through ldxb 4*([k]&0xf).
    let base = build(
        eth().ipv4(V4_A, V4_B, 64).tcp(40001, 80, 1, 1024).syn(),
        &[],
    );
    let mut opts = base[..34].to_vec();
    opts[14] = 0x46;
    let total = u16::from_be_bytes([opts[16], opts[17]]) + 4;
    opts[16..18].copy_from_slice(&total.to_be_bytes());
    opts.extend_from_slice(&[1, 1, 1, 1]);
    opts.extend_from_slice(&base[34..]);
    v.push(Pkt {
        name: "v4 options tcp 40001->80 syn",
        frame: opts,
        ip: true,
    });
    // A non-first fragment: its "ports" are payload bytes and must not match.
    let mut frag = build(eth().ipv4(V4_A, V4_B, 64).udp(7, 80), &[0; 20]);
    frag[20..22].copy_from_slice(&0x0010u16.to_be_bytes());
    v.push(Pkt {
        name: "v4 non-first fragment",
        frame: frag,
        ip: true,
    });
    // ARP request.
    let mut arp = Vec::new();
    arp.extend_from_slice(&[0xff; 6]);
    arp.extend_from_slice(&MAC_A);
    arp.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&MAC_A);
    arp.extend_from_slice(&V4_A);
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&V4_B);
    v.push(Pkt {
        name: "arp",
        frame: arp,
        ip: false,
    });
    v
}

const EXPRESSIONS: &[&str] = &[
    "tcp port 80",
    "udp and dst port 53",
    "icmp or icmp6",
    "not tcp",
    "host 10.0.0.1 and (port 80 or port 443)",
    "net 10.0.0.0/8",
    "src port 40000",
    "ip6",
    "ip",
    "tcp[tcpflags] & tcp-syn != 0",
    "tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-ack",
    "ip6 and tcp dst port 80",
    "src host fd00::1",
    "net fd00::/64 and udp",
    "portrange 1000-2000",
    "greater 200",
    "less 80",
    "len >= 100 and len <= 400",
    "vlan and tcp port 80",
    "ether host 02:00:00:00:00:0a",
    "arp",
    "ip[6:2] & 0x1fff != 0",
    "ip proto 17",
    "tcp[((tcp[12:1] & 0xf0) >> 2):4] = 0x47455420",
    "ip[2:2] / 4 > 10 and ip[2:2] % 7 != 3",
    "ip[2:2] * 2 - 40 > 100",
    "(ip[8] ^ 0xff) << 1 = 382 and ip[0] >> 4 = 4",
    "udp[8:4] = 0x71756572",
    "tcp[100] = 0",
    "",
];

/// Every expression on every packet, Ethernet and raw IP, whole and cut: our interpreter
/// accepts exactly what libpcap's accepts.
#[test]
fn interpreter_agrees_with_libpcap() {
    let mut checked = 0;
    for expr in EXPRESSIONS {
        for lt in [LinkType::Ethernet, LinkType::Raw] {
            let prog = match libpcap::compile(expr, lt.dlt()) {
                Ok(p) => p,
                // Some expressions exist only for Ethernet (vlan, ether host, arp).
                Err(e) if lt == LinkType::Raw => {
                    assert!(
                        expr.contains("vlan") || expr.contains("ether") || *expr == "arp",
                        "{expr}: {e}"
                    );
                    continue;
                }
                Err(e) => panic!("{expr}: {e}"),
            };
            cbpf::validate(&prog).unwrap_or_else(|e| panic!("{expr}: {e}"));
            for p in packets() {
                let data = match lt {
                    LinkType::Ethernet => &p.frame[..],
                    LinkType::Raw if p.ip => &p.frame[14..],
                    LinkType::Raw => continue,
                };
                let wirelen = data.len() as u32;
                for cut in [data.len(), 54.min(data.len()), 20.min(data.len())] {
                    let ours = cbpf::run(&prog, &data[..cut], wirelen);
                    let theirs =
                        libpcap::offline_filter(expr, lt.dlt(), &data[..cut], wirelen).unwrap();
                    assert_eq!(
                        ours != 0,
                        theirs,
                        "{expr:?} on {} ({lt:?}, {cut} of {wirelen} bytes)",
                        p.name
                    );
                    assert!(ours == 0 || ours == libpcap::ACCEPT_LEN, "{expr}: {ours}");
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 1000, "{checked}");
}

fn matching(expr: &str) -> Vec<&'static str> {
    let f = Filter::compile(expr, [LinkType::Ethernet]).unwrap();
    packets()
        .into_iter()
        .filter(|p| f.eval(LinkType::Ethernet, &p.frame, p.frame.len() as u32) != Some(0))
        .map(|p| p.name)
        .collect()
}

/// The verdicts themselves, for a few expressions (so the comparison above cannot pass by
/// both sides rejecting everything).
#[test]
fn expected_verdicts() {
    assert_eq!(
        matching("tcp port 80"),
        [
            "v4 tcp 40000->80 syn",
            "v4 tcp 80->40000 ack GET",
            "v6 tcp 40000->80 syn",
            "v4 options tcp 40001->80 syn"
        ]
    );
    assert_eq!(matching("icmp or icmp6"), ["v4 icmp echo", "v6 icmp6 echo"]);
    assert_eq!(
        matching("tcp[tcpflags] & tcp-syn != 0"),
        ["v4 tcp 40000->80 syn", "v4 options tcp 40001->80 syn"]
    );
    assert_eq!(
        matching("udp and dst port 53"),
        ["v4 udp 5353->53", "v6 udp 1234->53"]
    );
    assert_eq!(
        matching("tcp[((tcp[12:1] & 0xf0) >> 2):4] = 0x47455420"),
        ["v4 tcp 80->40000 ack GET"]
    );
    assert_eq!(matching("vlan and tcp port 80"), ["vlan v4 tcp 40000->80"]);
    assert_eq!(matching("arp"), ["arp"]);
    assert_eq!(matching("ip[6:2] & 0x1fff != 0"), ["v4 non-first fragment"]);
}

#[test]
fn raw_ip_programs_skip_no_ethernet_header() {
    let f = Filter::compile("udp and dst port 53", [LinkType::Ethernet, LinkType::Raw]).unwrap();
    assert_eq!(
        f.linktypes().collect::<Vec<_>>(),
        [LinkType::Ethernet, LinkType::Raw]
    );
    let p = build(eth().ipv4(V4_A, V4_B, 64).udp(5353, 53), b"query");
    let n = p.len() as u32;
    assert_eq!(f.eval(LinkType::Ethernet, &p, n), Some(libpcap::ACCEPT_LEN));
    assert_eq!(
        f.eval(LinkType::Raw, &p[14..], n - 14),
        Some(libpcap::ACCEPT_LEN)
    );
    // The Ethernet program on a raw packet, and the other way round, do not match.
    assert_eq!(f.eval(LinkType::Ethernet, &p[14..], n - 14), Some(0));
    assert_eq!(f.eval(LinkType::Raw, &p, n), Some(0));
}

#[test]
fn bad_expressions_are_one_line_errors() {
    let e = Filter::compile("tcp prt 80", [LinkType::Ethernet])
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("bad filter expression 'tcp prt 80': ") && e.contains("syntax error"),
        "{e}"
    );
    assert_eq!(e.lines().count(), 1);
    let e = Filter::compile("ether host 1:2:3:4:5:6", [LinkType::Raw])
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("bad filter expression"), "{e}");
    assert_eq!(
        Filter::expression(&["tcp".into(), "port".into(), "80".into()]),
        Some("tcp port 80".into())
    );
    assert_eq!(Filter::expression(&[]), None);
    assert_eq!(Filter::expression(&[" ".into()]), None);
}

/// A long expression (libpcap's optimizer takes seconds past a few hundred terms) compiles
/// into a long program with far jumps, still within the kernel's limit; past the limit
/// `cbpf::validate` refuses it (see its tests).
#[test]
fn long_expressions() {
    let ports: Vec<String> = (1..=100).map(|p| format!("port {p}")).collect();
    let expr = ports.join(" or ");
    let f = Filter::compile(&expr, [LinkType::Ethernet]).unwrap();
    let prog = f.program(LinkType::Ethernet).unwrap();
    assert!(
        prog.len() > 300 && prog.len() <= cbpf::MAX_INSNS,
        "{}",
        prog.len()
    );
    let p = build(eth().ipv4(V4_A, V4_B, 64).udp(5353, 100), b"x");
    assert_ne!(f.eval(LinkType::Ethernet, &p, p.len() as u32), Some(0));
    let p = build(eth().ipv4(V4_A, V4_B, 64).udp(5353, 101), b"x");
    assert_eq!(f.eval(LinkType::Ethernet, &p, p.len() as u32), Some(0));
}

/// Random valid programs (every opcode, small offsets so loads hit and miss the packet),
/// run by [`cbpf::run`] and by libpcap's `bpf_filter` on random packets: same results.
#[test]
fn interpreter_agrees_with_libpcaps_bpf_filter_on_random_programs() {
    use cbpf::op::*;
    const CODES: &[u16] = &[
        LD_W_ABS, LD_H_ABS, LD_B_ABS, LD_W_IND, LD_H_IND, LD_B_IND, LD_W_LEN, LD_IMM, LD_MEM,
        LDX_IMM, LDX_MEM, LDX_W_LEN, LDX_B_MSH, ST, STX, ALU_ADD_K, ALU_ADD_X, ALU_SUB_K,
        ALU_SUB_X, ALU_MUL_K, ALU_MUL_X, ALU_DIV_K, ALU_DIV_X, ALU_OR_K, ALU_OR_X, ALU_AND_K,
        ALU_AND_X, ALU_LSH_K, ALU_LSH_X, ALU_RSH_K, ALU_RSH_X, ALU_NEG, ALU_MOD_K, ALU_MOD_X,
        ALU_XOR_K, ALU_XOR_X, JMP_JA, JMP_JEQ_K, JMP_JEQ_X, JMP_JGT_K, JMP_JGT_X, JMP_JGE_K,
        JMP_JGE_X, JMP_JSET_K, JMP_JSET_X, RET_K, RET_A, MISC_TAX, MISC_TXA,
    ];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rnd = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let (mut valid, mut accepted) = (0, 0);
    for _ in 0..20_000 {
        let len = 1 + rnd(24) as usize;
        let mut prog: Vec<FilterInsn> = (0..len)
            .map(|_| {
                let code = CODES[rnd(CODES.len() as u64) as usize];
                let k = match rnd(4) {
                    0 => rnd(16) as u32,
                    1 => rnd(80) as u32,
                    2 => rnd(40) as u32,
                    _ => rnd(u64::from(u32::MAX)) as u32,
                };
                FilterInsn {
                    code,
                    jt: rnd(4) as u8,
                    jf: rnd(4) as u8,
                    k: if code == JMP_JA { rnd(4) as u32 } else { k },
                }
            })
            .collect();
        prog.push(FilterInsn {
            code: RET_A,
            ..FilterInsn::default()
        });
        if cbpf::validate(&prog).is_err() {
            continue;
        }
        valid += 1;
        let packet: Vec<u8> = (0..rnd(72)).map(|_| rnd(256) as u8).collect();
        for cut in [packet.len(), packet.len() / 2] {
            let wirelen = packet.len() as u32 + rnd(3) as u32;
            let ours = cbpf::run(&prog, &packet[..cut], wirelen);
            let theirs = libpcap::reference_run(&prog, &packet[..cut], wirelen).unwrap();
            assert_eq!(ours, theirs, "{prog:?} on {packet:?}[..{cut}]");
            accepted += u32::from(ours != 0);
        }
    }
    assert!(valid > 2_000 && accepted > 1_000, "{valid} {accepted}");
}
