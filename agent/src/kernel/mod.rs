//! Everything about the kernel side: BTF offsets, loading the eBPF object, capability checks.

pub mod btf;
