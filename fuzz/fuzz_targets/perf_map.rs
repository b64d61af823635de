//! Arbitrary bytes as a `/tmp/perf-PID.map` (`trace --stack` reads it for JIT frames; any
//! user can write it): no panic; the symbols are sorted, non-empty ranges; a lookup finds a
//! symbol holding the address.
#![no_main]

use capagent::trace::stack::perfmap::PerfMap;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let map = PerfMap::parse(data);
    let symbols = map.symbols();
    assert!(symbols.windows(2).all(|w| w[0].0 <= w[1].0));
    for (start, end, name) in symbols {
        assert!(start < end && !name.is_empty());
        for addr in [*start, end - 1, start.wrapping_add((end - start) / 2)] {
            let (_, found) = map.lookup(addr).expect("an address inside a symbol");
            assert!(found <= addr);
        }
    }
});
