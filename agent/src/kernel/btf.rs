//! Kernel struct field offsets resolved from BTF (helper-owned; being written).
