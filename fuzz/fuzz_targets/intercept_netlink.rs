//! The parsers `capagent intercept` runs over kernel replies and control messages (netlink
//! messages and attributes, nftables table dumps, routing rule and route dumps, socket
//! addresses, IP_ORIGDSTADDR control messages), and the nftables batch builder over rules
//! made from the input: none may panic, and every batch must parse back as netlink messages.
#![no_main]

use capagent::intercept::{nft, origdst, route};
use capagent::netlink;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for m in netlink::messages(data) {
        let Ok(m) = m else { break };
        for a in netlink::attrs(m.payload) {
            if a.is_err() {
                break;
            }
        }
        let _ = netlink::error_of(m.payload);
    }
    let _ = nft::parse_table(data);
    let _ = route::parse_rule(data);
    let _ = route::parse_route(data);
    let _ = origdst::sockaddr_from_bytes(data);
    let _ = origdst::parse_origdst_cmsgs(data);

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
        let iface: String = data[5..8]
            .iter()
            .map(|b| (b'a' + b % 26) as char)
            .collect();
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
            let n = netlink::messages(&bytes).map(|m| m.expect("own batch parses")).count();
            assert_eq!(n, acks.len() + 2);
        }
    }
});
