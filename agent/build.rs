//! Builds the eBPF programs (`agent-ebpf`) for the bpf target with the nightly toolchain and
//! bpf-linker, and leaves the object in OUT_DIR for `include_bytes_aligned!`.
//!
//! Without bpf-linker (a machine where `cargo xtask setup` has not run) the userspace crates
//! still build and their unit tests still run: an empty object is embedded, and commands that
//! need the kernel side say so in one line.
use std::{env, fs, path::PathBuf};

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let object = out_dir.join("capagent-ebpf");
    println!("cargo:rerun-if-env-changed=CAPAGENT_SKIP_EBPF");
    let skip = env::var_os("CAPAGENT_SKIP_EBPF").is_some_and(|v| v == "1");
    if skip || which::which("bpf-linker").is_err() {
        println!(
            "cargo:warning=bpf-linker not found (or CAPAGENT_SKIP_EBPF=1): building capagent \
             without its eBPF programs; run `cargo xtask setup` to get them"
        );
        fs::write(&object, b"")?;
        return Ok(());
    }
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest_dir.join("../agent-ebpf");
    let ebpf_dir = ebpf_dir.to_str().expect("utf-8 path");
    println!("cargo:rerun-if-changed={ebpf_dir}/src");
    println!(
        "cargo:rerun-if-changed={}/../agent-common/src",
        manifest_dir.display()
    );
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "agent-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
