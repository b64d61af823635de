//! Arbitrary bytes as netlink replies of every kind capagent reads (`capagent::netlink`): the
//! message and attribute framing, acknowledgements and dump answers (the `NLMSG_ERROR` code
//! to errno conversion), tc filter dumps, sock_diag socket dumps, nftables table dumps,
//! routing rule and route dumps; also what `capagent intercept` and the capture hygiene read
//! next to them (socket addresses, IP_ORIGDSTADDR control messages, `/proc/PID/fdinfo`
//! text), and the nftables batch builder over rules made from the input. None may panic; an
//! error is always a positive errno the kernel could send; a tc delete request is only ever
//! made for one filter, named by its priority and handle; every batch parses back.
#![no_main]

use capagent::capture::hygiene::prog_id_of_fdinfo;
use capagent::intercept::{nft, origdst, route};
use capagent::netlink::{self, DumpError, MAX_ERRNO, sock_diag, tc};
use libfuzzer_sys::fuzz_target;

fn check_delete(f: &tc::TcFilter) {
    let Some(req) = tc::del_filter_request(f, 7) else {
        // Refused only when the kernel would delete more than this filter.
        assert!(f.prio() == 0 || f.handle == 0);
        return;
    };
    assert!(f.prio() != 0 && f.handle != 0);
    let len = u32::from_ne_bytes(req[0..4].try_into().unwrap()) as usize;
    assert_eq!(len, req.len());
    assert_eq!(len % 4, 0);
    // tcmsg: ifindex, handle, parent, info as dumped.
    let word = |i: usize| u32::from_ne_bytes(req[i..i + 4].try_into().unwrap());
    assert_eq!(word(20) as i32, f.ifindex);
    assert_eq!(word(24), f.handle);
    assert_eq!(word(28), f.parent);
    assert_eq!(word(32), f.info);
}

/// Every message parser over one message (header included).
fn parse_one(msg: &[u8]) {
    if let Ok(Some(f)) = tc::parse_filter(msg) {
        if f.kind != "bpf" {
            assert!(f.bpf_name.is_none() && f.bpf_id.is_none());
        }
        check_delete(&f);
    }
    let _ = sock_diag::parse_socket(msg);
    let _ = nft::parse_table(msg);
    let _ = route::parse_rule(msg);
    let _ = route::parse_route(msg);
}

fuzz_target!(|data: &[u8]| {
    let mut seqs = Vec::new();
    for m in netlink::messages(data) {
        let Ok(m) = m else { break };
        seqs.push(m.seq);
        for a in netlink::attrs(m.payload) {
            if a.is_err() {
                break;
            }
        }
        if let Ok((code, _)) = netlink::error_of(m.payload)
            && code != 0
        {
            assert!((1..=MAX_ERRNO).contains(&netlink::errno_of(code)));
        }
    }
    // The answer to the request of the first message's sequence number, as a dump and as
    // acknowledgements.
    let seq = seqs.first().copied().unwrap_or(1);
    let mut msgs = Vec::new();
    match netlink::dump_part(data, seq, &mut msgs) {
        Err(DumpError::Kernel(e)) => assert!((1..=MAX_ERRNO).contains(&e), "errno {e}"),
        Err(DumpError::Malformed(_)) | Ok(_) => {}
    }
    for m in &msgs {
        parse_one(m);
    }
    parse_one(data);
    let mut pending = seqs.clone();
    let mut first_err = None;
    let _ = netlink::take_acks(data, &mut pending, &mut first_err);
    if let Some(e) = first_err {
        assert!((1..=MAX_ERRNO).contains(&e), "errno {e}");
    }

    let _ = origdst::sockaddr_from_bytes(data);
    let _ = origdst::parse_origdst_cmsgs(data);
    let _ = prog_id_of_fdinfo(&String::from_utf8_lossy(data));

    // A plan from the input's first bytes.
    if data.len() >= 8 {
        let ports: Vec<u16> = data[8..]
            .chunks(2)
            .take(4)
            .map(|c| u16::from_le_bytes([c[0], *c.get(1).unwrap_or(&0)]))
            .collect();
        let v6 = data[0] & 1 == 1;
        let dst = if v6 {
            std::net::IpAddr::from([u16::from(data[1]), 0, 0, 0, 0, 0, 0, u16::from(data[2])])
        } else {
            std::net::IpAddr::from([data[1], data[2], data[3], data[4]])
        };
        let iface: String = data[5..8].iter().map(|b| (b'a' + b % 26) as char).collect();
        let plan = nft::Plan {
            pid: u32::from(data[0]),
            tproxy: data[0] & 2 == 2,
            iface,
            local: data[0] & 4 == 4,
            ports,
            dsts: if data[0] & 8 == 8 {
                vec![(dst, data[5])]
            } else {
                vec![]
            },
            tcp4: Some(1000),
            tcp6: (data[0] & 16 == 16).then_some(1001),
            udp4: (data[0] & 32 == 32).then_some(1002),
            udp6: None,
            mark: 0xca00_0001,
            own_mark: 0xcb00_0001,
        };
        if let Ok((bytes, acks)) = nft::batch(&nft::capagent_ruleset(&plan), 1) {
            let n = netlink::messages(&bytes)
                .map(|m| m.expect("own batch parses"))
                .count();
            assert_eq!(n, acks.len() + 2);
        }
    }
});
