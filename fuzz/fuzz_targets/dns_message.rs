//! Arbitrary bytes as a DNS query (UDP) and as a TCP stream of queries: the decision never
//! panics, and every reply capagent builds is a well-formed response with the query's ID.
//! The same bytes as a DNS response intercept learns names from: every name learned is one
//! a proxy can be given (`NAME:PORT` parses as a name target), and the cache stays bounded.
#![no_main]

use capagent::dns::answer::{self, Decision, Pattern, Policy, Unmatched};
use capagent::intercept::names::{self, Names};
use capagent::proxy::target::{Host, Target};
use hickory_proto::op::{Message, MessageType};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let policy = Policy {
        v4: "10.0.0.1".parse().unwrap(),
        v6: Some("fd00::1".parse().unwrap()),
        ttl: 60,
        names: vec![Pattern::parse("*.example.com").unwrap()],
        upstream: data.first().is_some_and(|b| b & 1 == 1),
        unmatched: Unmatched::Refused,
    };
    let check = |q: &[u8]| {
        if let Decision::Reply { bytes, .. } = answer::decide(q, &policy) {
            let m = Message::from_vec(&bytes).expect("capagent's replies parse");
            assert_eq!(m.metadata.message_type, MessageType::Response);
            assert_eq!(Some(m.metadata.id), answer::message_id(q));
        }
        if let Some(bytes) = answer::servfail(q, &policy) {
            assert!(Message::from_vec(&bytes).is_ok());
        }
    };
    check(data);
    let mut rest = data;
    while let Some((range, used)) = answer::tcp_frame(rest) {
        check(&rest[range]);
        rest = &rest[used..];
    }
    let _ = answer::tcp_framed(data);
    let learned = names::answers(data);
    for l in &learned {
        let t: Target = format!("{}:80", l.name).parse().expect("a learned name is a target");
        assert_eq!(t.host, Host::Name(l.name.clone()));
    }
    let cache = Names::new(2);
    assert_eq!(cache.learn(data), learned.len());
    assert!(cache.len() <= 2);
    if let Some(l) = learned.last() {
        // Within one answer the last record of an address wins; all carry the same name.
        assert_eq!(cache.name_of(l.addr).as_deref(), Some(l.name.as_str()));
    }
    if let Ok(s) = std::str::from_utf8(data)
        && let Ok(p) = Pattern::parse(s)
    {
        assert!(
            p.matches(&format!("a.{}", s.trim_start_matches("*.")))
                || matches!(p, Pattern::Exact(_))
        );
    }
});
