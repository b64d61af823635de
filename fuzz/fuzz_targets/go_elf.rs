//! Arbitrary bytes as an ELF file and as x86-64 code for `trace::tls::go` (what `trace --tls`
//! reads from every executable a traced process maps): no panic; the functions found lie in
//! the file and their RETs inside them; a RET scan yields increasing addresses inside the
//! code it was given.
#![no_main]

use capagent::trace::tls::go::{self, GoElf};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(elf)) = GoElf::parse(data) {
        let _ = go::release(&elf.info.version);
        for name in [go::CONN_READ, go::CONN_WRITE] {
            for f in [elf.symtab_function(name), elf.pclntab_function(name)] {
                let Ok(Some(f)) = f else { continue };
                let end = f.file_offset + f.size;
                assert!(end <= data.len() as u64, "{f:?} past the file");
                if let Ok(rets) = elf.ret_offsets(&f) {
                    assert!(rets.iter().all(|&r| r >= f.file_offset && r < end));
                }
            }
        }
        if let Ok(hooks) = elf.tls_hooks() {
            assert!(hooks.info.register_abi);
            assert!(!hooks.read_rets.is_empty() && !hooks.write_rets.is_empty());
        }
    }
    // The bytes as code at an address taken from the first 8 (so wrapping is tried too).
    let address = data
        .get(..8)
        .map_or(0x401000, |b| u64::from_le_bytes(b.try_into().unwrap()));
    if let Ok(rets) = go::ret_offsets(data, address) {
        let len = data.len() as u64;
        assert!(
            rets.windows(2)
                .all(|w| w[0].wrapping_sub(address) < w[1].wrapping_sub(address))
        );
        assert!(rets.iter().all(|r| r.wrapping_sub(address) < len));
    }
});
