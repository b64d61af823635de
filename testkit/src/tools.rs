//! Tools the tests run: the real Python interpreter.

use std::{path::Path, process::Command, sync::OnceLock};

/// The real Python interpreter (`sys.executable` of the `python3` in PATH), so that version
/// managers' wrapper scripts (pyenv shims) do not sit between capagent and the interpreter:
/// the process capagent starts then execs straight into Python, keeping its pid.
pub fn python() -> &'static str {
    static PY: OnceLock<String> = OnceLock::new();
    PY.get_or_init(|| {
        let out = Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .expect("python3 must be installed");
        assert!(out.status.success(), "python3 does not run");
        let exe = String::from_utf8(out.stdout).unwrap().trim().to_string();
        assert!(Path::new(&exe).is_absolute(), "odd sys.executable {exe:?}");
        exe
    })
}

/// The process name (comm) of [`python`]: the kernel takes it from the file name that was
/// executed, cut to 15 bytes.
pub fn python_comm() -> String {
    comm_of(python())
}

pub fn comm_of(path: &str) -> String {
    let base = Path::new(path).file_name().unwrap().to_str().unwrap();
    base.chars().take(15).collect()
}
