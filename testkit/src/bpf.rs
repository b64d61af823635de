//! Kernel memory of a process's BPF maps.

use std::{fs, process::Command};

use serde_json::Value;

/// The BPF maps process `pid` holds: `(name, max_entries, memlock bytes)`, from its fds'
/// fdinfo (memlock, map id) and `bpftool map show id N` (the name).
pub fn bpf_maps_of(pid: u32) -> Vec<(String, u64, u64)> {
    let mut out = Vec::new();
    for fd in fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .flatten()
    {
        let Ok(info) = fs::read_to_string(fd.path()) else {
            continue;
        };
        let field = |key: &str| {
            info.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k == key).then(|| v.trim().parse::<u64>().ok())?
            })
        };
        let (Some(id), Some(max), Some(memlock)) =
            (field("map_id"), field("max_entries"), field("memlock"))
        else {
            continue;
        };
        let show = Command::new("bpftool")
            .args(["map", "show", "id", &id.to_string(), "-j"])
            .output()
            .expect("cannot run bpftool");
        let v: Value = serde_json::from_slice(&show.stdout).unwrap_or(Value::Null);
        let name = v["name"].as_str().unwrap_or("?").to_string();
        out.push((name, max, memlock));
    }
    out
}
