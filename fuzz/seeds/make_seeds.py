#!/usr/bin/env python3
"""Writes seed inputs for the decode_record fuzz target into decode_record/, and for the
netlink target into netlink/ (tc filter and sock_diag dumps, acks and errors), and for the
filter_cbpf target into filter_cbpf/ (programs compiled by `tcpdump -dd`, with packets).

Each input is a sequence of frames [selector u8][len u16 LE][record bytes], the records laid
out as agent-common's #[repr(C)] structs (little-endian x86-64/arm64 layout).

    python3 fuzz/seeds/make_seeds.py
    CAPAGENT_SKIP_EBPF=1 cargo +nightly fuzz run decode_record fuzz/corpus/decode_record \
        fuzz/seeds/decode_record -- -max_total_time=60
    CAPAGENT_SKIP_EBPF=1 cargo +nightly fuzz run filter_cbpf fuzz/corpus/filter_cbpf \
        fuzz/seeds/filter_cbpf -- -max_total_time=60
"""
import os
import struct
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))


def hdr(kind, sc, flags, pid, tid, fd, ret, fam=2, typ=1, proto=6, state=1, sk=0x1000):
    sock = struct.pack('<QQHHHHHHI16s16s', sk, 7, fam, typ, proto, state, 40112, 5555, 0,
                       bytes([127, 0, 0, 1]), bytes([10, 0, 0, 1]))
    return struct.pack('<QHHHHIIiIq16s', 1000, kind, sc, flags, 0, pid, tid, fd, 0, ret,
                       b'curl') + sock


def data(sc, flags, tid, total, off, payload, idx=0, afam=0, ret=None):
    h = hdr(2, sc, flags | 8, 100, tid, 3, total if ret is None else ret)
    return (h + struct.pack('<QQII', total, off, len(payload), idx)
            + struct.pack('<HHI16s', afam, 53, 0, bytes([1, 2, 3, 4])) + payload)


def sock(sc, ret, addr, fam=2, state=1, args=(2, 1, 6, 0)):
    h = hdr(1, sc, 8, 100, 100, 3, ret, fam=fam, state=state)
    return h + struct.pack('<4QII', *args, len(addr), 0) + addr.ljust(128, b'\0')


def proc(sc, child, code):
    return hdr(3, sc, 0, 100, 100, -1, 0) + struct.pack('<II', child, code)


def tls(fn, flags, tid, total, off, payload, conn=0x55d0c0a1b2c0, fd=3, ret=None):
    h = hdr(4, fn, flags | (8 if fd >= 0 else 0), 100, tid, fd, total if ret is None else ret)
    return h + struct.pack('<QQIIQ', total, off, len(payload), 0, conn) + payload


def mmap_exec(dev, ino, fd, addr):
    h = hdr(3, 35, 0, 100, 100, fd, addr)
    # the file's inode number rides in hdr.sock.ino (offset 56 + 8)
    h = h[:64] + struct.pack('<Q', ino) + h[72:]
    return h + struct.pack('<II', dev, 0)


def frame(recs):
    return b''.join(bytes([0]) + struct.pack('<H', len(r)) + r for r in recs)


SIN = struct.pack('<H', 2) + bytes([0x15, 0xb3, 192, 168, 10, 1]) + bytes(8)
SUN = struct.pack('<H', 1) + b'/run/a.sock\0'
SEEDS = {
    'calls': [sock(1, 3, b''), sock(2, 0, SIN), data(7, 3, 100, 12, 0, b'Hello World!'),
              data(13, 1, 101, 9, 0, b'abc'), data(14, 3, 102, 2, 0, b'hi'),
              data(13, 0, 101, 9, 3, b'def'), data(13, 2, 101, 9, 6, b'ghi'), sock(17, 0, b'')],
    'unix': [sock(3, 0, SUN, fam=1), sock(6, 5, struct.pack('<H', 1), fam=1, state=10),
             data(14, 3, 100, 2, 0, b'hi'), sock(2, 0, struct.pack('<H', 1) + b'\0abs', fam=1),
             sock(17, 0, b'', fam=1)],
    'mmsg': [data(11, 1, 7, 3, 0, b'one', 0, 2), data(11, 2 | 16, 7, 3, 0, b'two', 1, 10),
             proc(32, 101, 0), proc(33, 0, 0), proc(34, 0, 0x100)],
    'lost': [data(13, 1, 1, 100000, 0, b'GET /'), data(13, 1 | 2 | 4, 1, 100000, 0, b'GET /'),
             data(8, 3, 2, 0, 0, b'', ret=-11)],
    # trace --tls: SSL_write (64) and a chunked SSL_read_ex (67) on fd 3, its ciphertext
    # write, a gnutls_record_recv (73) on an unknown fd, an executable mapping (35).
    'tls': [mmap_exec(254 << 20, 326798, 3, 0x7f0012345000), sock(2, 0, SIN),
            tls(64, 3, 100, 18, 0, b'GET / HTTP/1.1\r\n\r\n'), data(14, 3, 100, 5, 0, b'\x17\x03\x03\x00\x20'),
            tls(67, 1, 100, 15, 0, b'HTTP/1.0 '), tls(67, 2, 100, 15, 9, b'200 ok'),
            tls(73, 3, 101, 0, 0, b'', fd=-1, ret=-1), tls(65, 1 | 2 | 4, 100, 70000, 0, b'<html>')],
}



# netlink: rtnetlink replies as the kernel sends them to a RTM_GETTFILTER dump, and sock_diag
# replies to an inet_diag dump
# (nlmsghdr, tcmsg, rtattrs; native byte order, little-endian here).
def rta(ty, data):
    n = 4 + len(data)
    return struct.pack('<HH', n, ty) + data + bytes((-n) % 4)


def nlmsg(ty, body, flags=2):
    return struct.pack('<IHHII', 16 + len(body), ty, flags, 1, 0) + body


def tcfilter(ifindex, parent, handle, prio, kind, opts):
    tcm = struct.pack('<BBHiIII', 0, 0, 0, ifindex, handle, parent, (prio << 16) | 0x0300)
    return nlmsg(44, tcm + rta(1, kind + b'\0') + rta(11, struct.pack('<I', 0))
                 + rta(2 | 0x8000, opts))


BPF_OPTS = (rta(7, b'capture_egress\0') + rta(8, struct.pack('<I', 1))
            + rta(11, struct.pack('<I', 4242)) + rta(10, bytes(8)))
U32_OPTS = rta(1, struct.pack('<I', 0x10001))
DONE = nlmsg(3, struct.pack('<i', 0))
TC_SEEDS = {
    'dump': tcfilter(1, 0xfffffff3, 1, 49152, b'bpf', BPF_OPTS)
    + tcfilter(2, 0xfffffff2, 0x800, 7, b'u32', U32_OPTS) + DONE,
    'error': nlmsg(2, struct.pack('<i', -22) + bytes(16), 0),
    'ack': nlmsg(2, struct.pack('<i', 0) + bytes(16), 0),
    'fdinfo': b'pos:\t0\nflags:\t02000002\nprog_type:\t3\nprog_id:\t77\n',
    # inet_diag_msg: family, state, timer, retrans, sport, dport (big-endian), src, dst,
    # ifindex, cookie (two u32), expires, rqueue, wqueue, uid, inode.
    # A routing rule and a local route of capagent's (fib_rule_hdr / rtmsg, then rtattrs).
    'rule': nlmsg(32, struct.pack('<BBBBBBBBI', 2, 0, 0, 0, 0, 0, 0, 1, 0)
                  + rta(6, struct.pack('<I', 9000)) + rta(10, struct.pack('<I', 0xca000001))
                  + rta(16, struct.pack('<I', 0xffffffff)) + rta(15, struct.pack('<I', 0xca000001))
                  + rta(21, bytes([202]))) + DONE,
    'route': nlmsg(24, struct.pack('<BBBBBBBBI', 10, 0, 0, 0, 0, 202, 254, 2, 0)
                   + rta(15, struct.pack('<I', 0xca000001)) + rta(1, bytes(15) + b'\x01')
                   + rta(4, struct.pack('<I', 1))) + DONE,
    'sock_diag': nlmsg(20, struct.pack('<BBBB', 2, 10, 0, 0) + struct.pack('>HH', 8000, 0)
                       + bytes([127, 0, 0, 1]) + bytes(12) + bytes(16)
                       + struct.pack('<IIIIIIII', 0, 0x1234, 1, 0, 0, 0, 0, 4242)) + DONE,
}

FILTERS = {
    'tcp_port': 'tcp port 80',
    'udp_dst': 'udp and dst port 53',
    'icmp': 'icmp or icmp6',
    'host_ports': 'host 10.0.0.1 and (port 80 or port 443)',
    'syn': 'tcp[tcpflags] & tcp-syn != 0',
    'payload': 'tcp[((tcp[12:1] & 0xf0) >> 2):4] = 0x47455420',
    'arith': 'ip[2:2] / 4 > 10 and ip[2:2] % 7 != 3 and (ip[8] ^ 0xff) << 1 = 382',
}


def filter_seed(expr, packet):
    """[n][wirelen extra][n instructions][packet], the program from `tcpdump -dd`."""
    out = subprocess.run(['tcpdump', '-dd', '-y', 'EN10MB', expr], check=True,
                         capture_output=True, text=True).stdout
    insns = [tuple(int(v, 0) for v in line.strip(' {},').split(','))
             for line in out.splitlines() if line.strip().startswith('{')]
    code = b''.join(struct.pack('<HBBI', *i) for i in insns)
    return bytes([len(insns), 0]) + code + packet


def tcp_packet(sport, dport, flags, payload):
    tcp = struct.pack('>HHIIBBHHH', sport, dport, 1, 0, 5 << 4, flags, 1024, 0, 0) + payload
    ip = struct.pack('>BBHHHBBH4s4s', 0x45, 0, 20 + len(tcp), 1, 0x4000, 64, 6, 0,
                     bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
    return b'\x02\0\0\0\0\x0b\x02\0\0\0\0\x0a\x08\x00' + ip + tcp


if __name__ == '__main__':
    out = os.path.join(HERE, 'decode_record')
    os.makedirs(out, exist_ok=True)
    for name, recs in SEEDS.items():
        with open(os.path.join(out, name), 'wb') as f:
            f.write(frame(recs))
    out = os.path.join(HERE, 'netlink')
    os.makedirs(out, exist_ok=True)
    for name, data in TC_SEEDS.items():
        with open(os.path.join(out, name), 'wb') as f:
            f.write(data)
    out = os.path.join(HERE, 'filter_cbpf')
    os.makedirs(out, exist_ok=True)
    packet = tcp_packet(40000, 80, 0x02, b'GET / HTTP/1.1\r\n\r\n')
    for name, expr in FILTERS.items():
        with open(os.path.join(out, name), 'wb') as f:
            f.write(filter_seed(expr, packet))
