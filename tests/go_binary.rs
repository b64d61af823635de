//! `trace::tls::go` against real Go binaries: the Go test client (tests/go/tlsclient) built
//! at test time by Debian's Go, normally and stripped (`-ldflags=-s -w`). The answers are
//! checked against independent tools: `go env GOVERSION` for the version, `go tool nm` for
//! the functions' addresses and sizes, `objdump` for the RET instructions, the bytes of the
//! file for the offsets. No root needed.

use std::process::Command;
use std::{collections::BTreeMap, time::Duration};

use capagent::trace::tls::go::{
    Architecture, CONN_READ, CONN_WRITE, FuncSource, GoElf, GoFunc, TlsHooks, tls_hooks,
};
use capagent_testkit::{GoBuild, TempDir, go_tls_client, run_output};

fn output(name: &str, program: &str, args: &[&str]) -> String {
    let mut cmd = Command::new(program);
    cmd.args(args);
    run_output(name, cmd, Duration::from_secs(60))
}

/// `go tool nm -size`: name → (address, size) of the text symbols.
fn go_nm(bin: &str) -> BTreeMap<String, (u64, u64)> {
    output("go tool nm", "go", &["tool", "nm", "-size", bin])
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (addr, size, kind) = (f.next()?, f.next()?, f.next()?);
            let name = f.collect::<Vec<_>>().join(" ");
            (kind == "T").then(|| {
                (
                    name,
                    (
                        u64::from_str_radix(addr, 16).unwrap(),
                        size.parse().unwrap(),
                    ),
                )
            })
        })
        .collect()
}

/// The addresses of the `ret` instructions objdump finds in `[start, start + size)`.
fn objdump_rets(bin: &str, start: u64, size: u64) -> Vec<u64> {
    output(
        "objdump",
        "objdump",
        &[
            "-d",
            "--no-show-raw-insn",
            &format!("--start-address={start:#x}"),
            &format!("--stop-address={:#x}", start + size),
            bin,
        ],
    )
    .lines()
    .filter_map(|l| {
        let (addr, insn) = l.trim().split_once(":\t")?;
        let mnemonic = insn.split_whitespace().next()?;
        (mnemonic == "ret" || mnemonic == "retq").then(|| u64::from_str_radix(addr, 16).unwrap())
    })
    .collect()
}

fn go_version() -> String {
    output("go env", "go", &["env", "GOVERSION"])
        .trim()
        .to_string()
}

/// The addresses of the RETs of `f`, from their file offsets.
fn ret_addresses(f: &GoFunc, rets: &[u64]) -> Vec<u64> {
    rets.iter()
        .map(|off| f.address + (off - f.file_offset))
        .collect()
}

/// What every real build must satisfy, checked against the file's own bytes and objdump.
fn check_hooks(bin: &str, data: &[u8], hooks: &TlsHooks) {
    assert_eq!(hooks.info.version, go_version());
    assert!(hooks.info.register_abi);
    assert_eq!(hooks.info.arch, Architecture::X86_64);
    for (f, rets) in [
        (&hooks.read, &hooks.read_rets),
        (&hooks.write, &hooks.write_rets),
    ] {
        let code = &data[f.file_offset as usize..][..f.size as usize];
        // Go's stack check on entry (`cmp rsp, [r14+16]`, or `lea r12, [rsp-N]` and
        // `cmp r12, [r14+16]` for a large frame) reads the goroutine from R14: a function
        // entry, of the register ABI.
        let small = code.starts_with(&[0x49, 0x3b, 0x66, 0x10]);
        let large = code.starts_with(&[0x4c, 0x8d, 0x64, 0x24])
            && code[5..].starts_with(&[0x4d, 0x3b, 0x66, 0x10])
            || code.starts_with(&[0x4c, 0x8d, 0xa4, 0x24])
                && code[8..].starts_with(&[0x4d, 0x3b, 0x66, 0x10]);
        assert!(
            small || large,
            "{}: entry bytes {:02x?}",
            f.name,
            &code[..12]
        );
        assert!(!rets.is_empty(), "{}: no RET", f.name);
        for &off in rets.iter() {
            assert_eq!(
                data[off as usize], 0xc3,
                "{} RET at file offset {off:#x}",
                f.name
            );
        }
        // The same instructions as objdump's linear sweep.
        assert_eq!(
            ret_addresses(f, rets),
            objdump_rets(bin, f.address, f.size),
            "{}",
            f.name
        );
    }
}

#[test]
fn normal_build_symtab_and_pclntab_agree_with_go_nm() {
    check_symbols(GoBuild::Normal);
}

#[test]
fn pie_build_symtab_and_pclntab_agree_with_go_nm() {
    check_symbols(GoBuild::Pie);
}

/// A build with symbols: `.symtab` and `.gopclntab` against `go tool nm`.
fn check_symbols(build: GoBuild) {
    let dir = TempDir::new("go-symbols");
    let bin = go_tls_client(&dir, build);
    let data = std::fs::read(&bin).unwrap();
    let go = GoElf::parse(&data).unwrap().expect("a Go binary");
    assert_eq!(go.info.version, go_version());
    let nm = go_nm(&bin);
    for name in [CONN_READ, CONN_WRITE] {
        let (address, size) = nm[name];
        let sym = go.function(name).unwrap().unwrap();
        assert_eq!(sym.source, FuncSource::Symtab);
        assert_eq!((sym.address, sym.size), (address, size), "{name}");
        // The runtime's table: the same entry; the size runs to the next function, over
        // the INT3 padding to its 32-byte alignment.
        let pcl = go.pclntab_function(name).unwrap().unwrap();
        assert_eq!(pcl.source, FuncSource::Pclntab);
        assert_eq!(
            (pcl.address, pcl.file_offset),
            (sym.address, sym.file_offset)
        );
        assert!(pcl.size >= sym.size && pcl.size < sym.size + 32, "{name}");
        let pad = &data[(sym.file_offset + sym.size) as usize..][..(pcl.size - sym.size) as usize];
        assert!(pad.iter().all(|&b| b == 0xcc), "{name}: padding {pad:02x?}");
        let next = nm
            .values()
            .filter(|(a, _)| *a > address)
            .map(|(a, _)| *a)
            .min()
            .unwrap();
        assert_eq!(pcl.address + pcl.size, next, "{name}");
    }
    let hooks = tls_hooks(&data).unwrap().expect("a Go binary");
    check_hooks(&bin, &data, &hooks);
    assert_eq!(hooks.read.source, FuncSource::Symtab);
}

/// A stripped build (`-ldflags=-s -w`) against the same program built with symbols.
fn check_stripped(normal: GoBuild, stripped: GoBuild) {
    let dir = TempDir::new("go-stripped");
    let normal = go_tls_client(&dir, normal);
    let stripped = go_tls_client(&dir, stripped);
    let data = std::fs::read(&stripped).unwrap();
    let go = GoElf::parse(&data).unwrap().expect("a Go binary");
    assert_eq!(go.symtab_function(CONN_READ).unwrap(), None, "no .symtab");
    let hooks = go.tls_hooks().unwrap();
    assert_eq!(hooks.read.source, FuncSource::Pclntab);
    assert_eq!(hooks.write.source, FuncSource::Pclntab);
    check_hooks(&stripped, &data, &hooks);
    // Stripping moves no code: the functions and their RETs are where the build with
    // symbols has them (go tool nm reads its symbols).
    let nm = go_nm(&normal);
    let normal_data = std::fs::read(&normal).unwrap();
    let normal_go = GoElf::parse(&normal_data).unwrap().unwrap();
    for (f, rets) in [
        (&hooks.read, &hooks.read_rets),
        (&hooks.write, &hooks.write_rets),
    ] {
        assert_eq!(f.address, nm[f.name].0, "{}", f.name);
        let sym = normal_go.symtab_function(f.name).unwrap().unwrap();
        assert_eq!(
            ret_addresses(f, rets),
            ret_addresses(&sym, &normal_go.ret_offsets(&sym).unwrap())
        );
    }
}

#[test]
fn stripped_build_found_through_pclntab() {
    check_stripped(GoBuild::Normal, GoBuild::Stripped);
}

#[test]
fn stripped_pie_build_found_through_pclntab() {
    check_stripped(GoBuild::Pie, GoBuild::StrippedPie);
}
