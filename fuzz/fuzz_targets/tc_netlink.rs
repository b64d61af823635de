//! Arbitrary bytes as rtnetlink replies to a tc filter dump (`capture::tcmsg::parse_reply`)
//! and as `/proc/PID/fdinfo` text (`capture::hygiene::prog_id_of_fdinfo`): never a panic, and
//! a delete request is only ever made for one filter, named by its priority and handle.
#![no_main]

use capagent::capture::hygiene::prog_id_of_fdinfo;
use capagent::capture::tcmsg::{self, TcFilter};
use libfuzzer_sys::fuzz_target;

fn check_delete(f: &TcFilter) {
    let Some(req) = tcmsg::del_filter_request(f, 7) else {
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

fuzz_target!(|data: &[u8]| {
    let r = tcmsg::parse_reply(data);
    for f in &r.filters {
        if f.kind != "bpf" {
            assert!(f.bpf_name.is_none() && f.bpf_id.is_none());
        }
        check_delete(f);
    }
    if let Some(e) = r.error {
        // A positive errno the kernel could send (1..=MAX_ERRNO), from an NLMSG_ERROR.
        assert!((1..=4095).contains(&e) && r.done, "error {e}");
    }
    let _ = prog_id_of_fdinfo(&String::from_utf8_lossy(data));
});
