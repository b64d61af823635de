//! `/tmp/perf-PID.map`: the symbols a JIT (Node `--perf-basic-prof`, a Java agent, Python
//! 3.12+ `-X perf`) writes for its generated code, one `START SIZE NAME` line each (hex
//! numbers, with or without `0x`).

use std::sync::Arc;

/// The symbols of one perf map, sorted by start.
pub struct PerfMap {
    symbols: Vec<(u64, u64, Arc<str>)>,
}

/// `/tmp/perf-PID.map`.
pub fn path(pid: u32) -> String {
    format!("/tmp/perf-{pid}.map")
}

impl PerfMap {
    /// Reads `/tmp/perf-PID.map` when it exists.
    pub fn load(pid: u32) -> Option<PerfMap> {
        let text = std::fs::read(path(pid)).ok()?;
        Some(PerfMap::parse(&text))
    }

    /// Parses a perf map text; unparsable lines are left out. A later line for the same
    /// start wins; overlapping symbols are cut where the next one starts.
    pub fn parse(text: &[u8]) -> PerfMap {
        let mut symbols = Vec::new();
        for line in text.split(|&b| b == b'\n') {
            let Ok(line) = std::str::from_utf8(line) else {
                continue;
            };
            let mut parts = line.trim_end_matches('\r').splitn(3, ' ');
            let (Some(start), Some(size), Some(name)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok();
            let (Some(start), Some(size)) = (hex(start), hex(size)) else {
                continue;
            };
            let end = start.saturating_add(size);
            if end <= start || name.is_empty() {
                continue;
            }
            symbols.push((start, end, Arc::from(name)));
        }
        // Stable: equal starts keep their file order, and the last one stays (a JIT may
        // rewrite code in place); a symbol overlapping the next one ends where it starts.
        symbols.sort_by_key(|s| s.0);
        let mut kept: Vec<(u64, u64, Arc<str>)> = Vec::with_capacity(symbols.len());
        for s in symbols {
            match kept.last_mut() {
                Some(last) if last.0 == s.0 => *last = s,
                _ => kept.push(s),
            }
        }
        for i in 1..kept.len() {
            let next = kept[i].0;
            kept[i - 1].1 = kept[i - 1].1.min(next);
        }
        PerfMap { symbols: kept }
    }

    /// The symbols: (start, end, name), sorted by start.
    pub fn symbols(&self) -> &[(u64, u64, Arc<str>)] {
        &self.symbols
    }

    /// The name and start of the symbol holding `addr`.
    pub fn lookup(&self, addr: u64) -> Option<(Arc<str>, u64)> {
        let i = self.symbols.partition_point(|s| s.0 <= addr);
        let s = self.symbols.get(i.checked_sub(1)?)?;
        (addr < s.1).then(|| (s.2.clone(), s.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_looks_up() {
        let m = PerfMap::parse(
            b"7f0000001000 40 py::main:/tmp/x.py\n0x7f0000002000 0x10 LazyCompile:*f a.js:3\n\
              junk\n7f0000001000 20 py::newer:/tmp/x.py\n7f0000001f00 200 big\n",
        );
        assert_eq!(
            m.lookup(0x7f0000001010).unwrap().0.as_ref(),
            "py::newer:/tmp/x.py"
        );
        assert_eq!(m.lookup(0x7f0000001030), None, "replaced by the later line");
        assert_eq!(
            m.lookup(0x7f000000200f).unwrap().0.as_ref(),
            "LazyCompile:*f a.js:3"
        );
        assert_eq!(m.lookup(0x7f0000002010), None);
        // "big" overlaps the next symbol: cut at its start.
        assert_eq!(m.lookup(0x7f0000001fff).unwrap().0.as_ref(), "big");
        assert_eq!(
            m.lookup(0x7f0000002000).unwrap().0.as_ref(),
            "LazyCompile:*f a.js:3"
        );
        assert_eq!(m.lookup(0x10), None);
    }
}
