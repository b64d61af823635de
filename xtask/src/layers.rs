//! `cargo xtask layers`: the dependencies between capagent's modules, checked against the
//! declared layers.
//!
//! Every path that names another module counts (`use crate::a::b`, `crate::a::f()` in code,
//! `super::super::x`, paths inside macros and attributes); comments and doc text do not, nor
//! test modules (`mod tests`, `tests.rs`: a test may borrow a fixture from anywhere). Two
//! rules:
//! * between the top-level modules of `agent/src`, an edge may only point to a lower layer
//!   of [`LAYERS`] (no upward import, no edge inside a layer, hence no cycle);
//! * inside any module, its child modules form no cycle (e.g. `proxy::dial` and
//!   `proxy::socks` do not import each other; a piece both need lives where both can
//!   use it). The parent itself (`mod.rs`) is left out: it declares its children.
//!
//! The source is read as Rust tokens (proc-macro2), not as text, so a module name in a string
//! or comment is no edge; `cargo modules dependencies` would draw the same graph but builds
//! rust-analyzer (minutes on the 2-core machine), which this does not need.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    str::FromStr as _,
};

use anyhow::{Context as _, Result, bail};
use proc_macro2::{Delimiter, TokenStream, TokenTree};

/// The top-level modules of the capagent library, lowest layer first. A module may use the
/// modules of the layers below its own, and no other. A new module must be placed here.
pub const LAYERS: &[(&str, &[&str])] = &[
    (
        "the records; signal flags; clock, process and netlink helpers; the TLS ClientHello",
        &[
            "model",
            "signals",
            "clock",
            "process",
            "netlink",
            "tls_hello",
        ],
    ),
    ("stopping a session", &["control"]),
    (
        "a session's counters (the status line, the daemon's metrics)",
        &["counters"],
    ),
    ("writers of records", &["output"]),
    ("the eBPF object: loading, BTF, sessions", &["kernel"]),
    (
        "TLS interception: CA, certificates, the interceptor",
        &["mitm"],
    ),
    ("HTTP/1.x heads and body framing", &["http1"]),
    ("changing traffic in flight: rules", &["rewrite"]),
    ("capabilities others build on", &["proxy", "trace"]),
    ("capabilities", &["capture", "dns", "intercept"]),
    (
        "the command line (capabilities' arguments composed)",
        &["cli"],
    ),
    ("the service running jobs", &["daemon"]),
    ("dispatch of the command line", &["cmd"]),
];

/// Edges that break the layers and are being removed elsewhere, with who removes them.
/// Tolerated while they exist; one that no longer exists must leave this list (a violation
/// says so), so the list only shrinks.
pub const PENDING: &[(&str, &str, &str)] = &[];

/// One module: its path from the crate root (`["proxy", "socks", "v5"]`).
type ModPath = Vec<String>;

/// Edges between modules, at full depth: `from` uses something under `to`.
#[derive(Default, Debug)]
pub struct Graph {
    pub edges: BTreeSet<(ModPath, ModPath)>,
    /// The modules that exist (files, and inline `mod name { }` as they are met).
    known: BTreeSet<ModPath>,
}

/// Reads every `.rs` file under `src` (a crate's source root: `lib.rs` and its modules).
pub fn scan(src: &Path) -> Result<Graph> {
    let mut graph = Graph::default();
    let mut files = Vec::new();
    collect(src, &mut files)?;
    let modules: Vec<(PathBuf, ModPath)> = files
        .into_iter()
        .filter_map(|f| {
            // main.rs, the binary, is above everything: left out.
            let m = module_of(f.strip_prefix(src).expect("under src"))?;
            Some((f, m))
        })
        .collect();
    graph.known = modules.iter().map(|(_, m)| m.clone()).collect();
    for (file, module) in modules {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let tokens = TokenStream::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: cannot tokenize: {e}", file.display()))?;
        let tokens: Vec<TokenTree> = tokens.into_iter().collect();
        walk(&tokens, &module, &mut graph);
    }
    Ok(graph)
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.path());
    for e in entries {
        let p = e.path();
        if p.is_dir() {
            collect(&p, out)?;
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    Ok(())
}

/// `proxy/socks/v5.rs` is `proxy::socks::v5`, `proxy/mod.rs` is `proxy`, `lib.rs` the root.
fn module_of(rel: &Path) -> Option<ModPath> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop()?;
    let stem = last.strip_suffix(".rs")?;
    match stem {
        "main" if parts.is_empty() => None,
        "lib" if parts.is_empty() => Some(Vec::new()),
        "mod" => Some(parts),
        _ => {
            parts.push(stem.to_string());
            Some(parts)
        }
    }
}

fn ident(t: Option<&TokenTree>) -> Option<String> {
    match t {
        Some(TokenTree::Ident(i)) => Some(i.to_string()),
        _ => None,
    }
}

/// `::` at `i` (two `:` puncts).
fn is_path_sep(tokens: &[TokenTree], i: usize) -> bool {
    matches!(
        (tokens.get(i), tokens.get(i + 1)),
        (Some(TokenTree::Punct(a)), Some(TokenTree::Punct(b))) if a.as_char() == ':' && b.as_char() == ':'
    )
}

/// Walks a token sequence of module `module`, recording the module paths it names.
fn walk(tokens: &[TokenTree], module: &ModPath, graph: &mut Graph) {
    let mut i = 0;
    while i < tokens.len() {
        // `mod name { ... }`: an inline module (e.g. `mod tests`), whose `super` is us.
        if ident(tokens.get(i)).as_deref() == Some("mod")
            && let Some(name) = ident(tokens.get(i + 1))
            && let Some(TokenTree::Group(g)) = tokens.get(i + 2)
            && g.delimiter() == Delimiter::Brace
        {
            let mut inner = module.clone();
            inner.push(name);
            graph.known.insert(inner.clone());
            let body: Vec<TokenTree> = g.stream().into_iter().collect();
            walk(&body, &inner, graph);
            i += 3;
            continue;
        }
        // A path that starts at the crate root or climbs out of this module.
        let start = ident(tokens.get(i));
        let preceded_by_sep = i >= 2 && is_path_sep(tokens, i - 2);
        if !preceded_by_sep
            && let Some(base) = match start.as_deref() {
                Some("crate") => Some(Vec::new()),
                Some("super") => Some(module[..module.len().saturating_sub(1)].to_vec()),
                _ => None,
            }
            && is_path_sep(tokens, i + 1)
        {
            i = path(tokens, i + 3, base, module, graph);
            continue;
        }
        if let TokenTree::Group(g) = &tokens[i] {
            let body: Vec<TokenTree> = g.stream().into_iter().collect();
            walk(&body, module, graph);
        }
        i += 1;
    }
}

/// Follows a path from `base` (the module reached so far) at `tokens[i]`; returns the index
/// after it. Records the deepest module named: segments count while they name a module of
/// `known` (`{a, b::c}` groups fan out).
fn path(
    tokens: &[TokenTree],
    mut i: usize,
    mut base: ModPath,
    from: &ModPath,
    g: &mut Graph,
) -> usize {
    loop {
        match tokens.get(i) {
            Some(TokenTree::Ident(id)) => {
                let s = id.to_string();
                if s == "super" {
                    base.pop();
                } else if s != "self" {
                    let mut next = base.clone();
                    next.push(s);
                    if !g.known.contains(&next) {
                        break; // an item of `base` (a type, function, re-export...)
                    }
                    base = next;
                }
                i += 1;
                if !is_path_sep(tokens, i) {
                    break;
                }
                i += 2;
            }
            Some(TokenTree::Group(grp)) if grp.delimiter() == Delimiter::Brace => {
                let body: Vec<TokenTree> = grp.stream().into_iter().collect();
                for item in body.split(|t| matches!(t, TokenTree::Punct(p) if p.as_char() == ',')) {
                    if !item.is_empty() {
                        path(item, 0, base.clone(), from, g);
                    }
                }
                return i + 1;
            }
            _ => break,
        }
    }
    record(g, from, base);
    i
}

fn record(g: &mut Graph, from: &ModPath, to: ModPath) {
    // Names of the module itself, of its children or of its ancestors (which declare it)
    // are not dependencies.
    if to.starts_with(from) || from.starts_with(&to) {
        return;
    }
    g.edges.insert((from.clone(), to));
}

/// Test code: a module `tests` or below one.
fn is_test(m: &ModPath) -> bool {
    m.iter().any(|s| s == "tests")
}

impl Graph {
    /// The edges of non-test code.
    fn product_edges(&self) -> impl Iterator<Item = &(ModPath, ModPath)> {
        self.edges
            .iter()
            .filter(|(f, t)| !is_test(f) && !is_test(t))
    }

    /// Edges between the top-level modules, with how many module-to-module edges make each.
    pub fn top_level(&self) -> BTreeMap<(String, String), usize> {
        let mut out = BTreeMap::new();
        for (from, to) in self.product_edges() {
            let (Some(f), Some(t)) = (from.first(), to.first()) else {
                continue;
            };
            if f != t {
                *out.entry((f.clone(), t.clone())).or_insert(0) += 1;
            }
        }
        out
    }

    /// Edges between the children of one module, for every module: parent -> (a, b).
    pub fn siblings(&self) -> BTreeMap<ModPath, BTreeSet<(String, String)>> {
        let mut out: BTreeMap<ModPath, BTreeSet<(String, String)>> = BTreeMap::new();
        for (from, to) in self.product_edges() {
            let common = from.iter().zip(to).take_while(|(a, b)| a == b).count();
            // Both below a common parent, each in a different child of it.
            if from.len() > common && to.len() > common && common > 0 {
                out.entry(from[..common].to_vec())
                    .or_default()
                    .insert((from[common].clone(), to[common].clone()));
            }
        }
        out
    }
}

/// The layer of a top-level module.
fn layer_of(m: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, mods)| mods.contains(&m))
}

fn is_pending(f: &str, t: &str) -> bool {
    PENDING.iter().any(|(a, b, _)| *a == f && *b == t)
}

/// The cycles of a directed graph, each as the members of one strongly connected component
/// of more than one node.
fn cycles(edges: &BTreeSet<(String, String)>) -> Vec<Vec<String>> {
    let nodes: BTreeSet<&String> = edges.iter().flat_map(|(a, b)| [a, b]).collect();
    let reach = |from: &String| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from];
        while let Some(n) = todo.pop() {
            for (a, b) in edges {
                if a == n && seen.insert(b) {
                    todo.push(b);
                }
            }
        }
        seen
    };
    let reaches: BTreeMap<&String, BTreeSet<&String>> =
        nodes.iter().map(|n| (*n, reach(n))).collect();
    let mut done = BTreeSet::new();
    let mut out = Vec::new();
    for n in &nodes {
        if done.contains(n) || !reaches[n].contains(n) {
            continue;
        }
        let comp: Vec<String> = nodes
            .iter()
            .filter(|m| reaches[n].contains(*m) && reaches[*m].contains(n))
            .map(|m| m.to_string())
            .collect();
        done.extend(nodes.iter().filter(|m| comp.contains(m)).copied());
        out.push(comp);
    }
    out
}

/// What breaks the rules, one line each.
pub fn violations(g: &Graph) -> Vec<String> {
    let mut out = Vec::new();
    let top = g.top_level();
    let mut modules: BTreeSet<&String> = BTreeSet::new();
    for (f, t) in top.keys() {
        modules.insert(f);
        modules.insert(t);
    }
    for m in &modules {
        if layer_of(m).is_none() {
            out.push(format!(
                "module `{m}` is in no layer (add it to LAYERS in xtask/src/layers.rs)"
            ));
        }
    }
    for (f, t, _) in PENDING {
        if !top.contains_key(&(f.to_string(), t.to_string())) {
            out.push(format!(
                "{f} -> {t} is gone: remove it from PENDING in xtask/src/layers.rs"
            ));
        }
    }
    for (f, t) in top.keys() {
        if let (Some(lf), Some(lt)) = (layer_of(f), layer_of(t))
            && lt >= lf
            && !is_pending(f, t)
        {
            let why = if lt == lf { "same layer" } else { "upward" };
            let at: Vec<String> = g
                .product_edges()
                .filter(|(a, b)| a.first() == Some(f) && b.first() == Some(t))
                .map(|(a, b)| format!("{} -> {}", a.join("::"), b.join("::")))
                .collect();
            out.push(format!("{f} -> {t} ({why}): {}", at.join(", ")));
        }
    }
    for (parent, edges) in g.siblings() {
        for cycle in cycles(&edges) {
            out.push(format!(
                "cycle inside {}: {}",
                parent.join("::"),
                cycle.join(" <-> ")
            ));
        }
    }
    out
}

/// `cargo xtask layers`: prints the top-level edges (and with `--all`, every edge) and
/// fails on a violation.
pub fn layers(all: bool, src: Option<PathBuf>) -> Result<()> {
    let src = src.unwrap_or_else(|| crate::util::workspace_root().join("agent/src"));
    let g = scan(&src)?;
    println!("layers (lowest first; a module uses only lower layers):");
    for (i, (what, mods)) in LAYERS.iter().enumerate() {
        println!("  {i}. {:<40} {}", mods.join(" "), what);
    }
    println!("edges between top-level modules (how many module-to-module edges make each):");
    for ((f, t), n) in g.top_level() {
        let note = if is_pending(&f, &t) {
            "  (pending removal)"
        } else {
            ""
        };
        println!("  {f} -> {t} ({n}){note}");
    }
    if all {
        println!("every edge (test code marked):");
        for (f, t) in &g.edges {
            let note = if is_test(f) || is_test(t) {
                "  (test)"
            } else {
                ""
            };
            println!("  {} -> {}{note}", f.join("::"), t.join("::"));
        }
    }
    let bad = violations(&g);
    if bad.is_empty() {
        println!("ok: no upward edge, no cycle");
        return Ok(());
    }
    for v in &bad {
        println!("violation: {v}");
    }
    bail!("{} layering violation(s)", bad.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edges_of(files: &[(&str, &str)]) -> BTreeSet<(String, String)> {
        let mut g = Graph::default();
        for m in [
            "model",
            "output",
            "output::text",
            "cli",
            "trace",
            "trace::target",
            "proxy",
            "proxy::dial",
            "proxy::socks",
            "proxy::socks::v4",
            "proxy::socks::v5",
            "proxy::socks::server",
        ] {
            g.known.insert(m.split("::").map(String::from).collect());
        }
        for (path, text) in files {
            let module = module_of(Path::new(path)).unwrap();
            let tokens: Vec<TokenTree> = TokenStream::from_str(text).unwrap().into_iter().collect();
            walk(&tokens, &module, &mut g);
        }
        g.edges
            .into_iter()
            .map(|(a, b)| (a.join("::"), b.join("::")))
            .collect()
    }

    fn set(pairs: &[(&str, &str)]) -> BTreeSet<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn paths_of_every_shape() {
        let got = edges_of(&[(
            "proxy/socks/v5.rs",
            r#"
            //! crate::daemon in a comment is no edge
            use crate::{model::Event, output::{self, text::TextConfig}};
            use super::super::dial::Dialer;
            use super::server;
            #[arg(default_value = crate::cli::DEFAULT)]
            fn f() { let s = "crate::cmd"; crate::trace::target::check_pid(1); }
            mod tests { use super::*; use super::super::v4; }
            "#,
        )]);
        assert_eq!(
            got,
            set(&[
                ("proxy::socks::v5", "model"),
                ("proxy::socks::v5", "output"),
                ("proxy::socks::v5", "output::text"),
                ("proxy::socks::v5", "proxy::dial"),
                ("proxy::socks::v5", "proxy::socks::server"),
                ("proxy::socks::v5", "cli"),
                ("proxy::socks::v5", "trace::target"),
                ("proxy::socks::v5::tests", "proxy::socks::v4"),
            ])
        );
    }

    #[test]
    fn upward_edges_and_sibling_cycles_are_violations() {
        let mut g = Graph::default();
        for (a, b) in [
            ("output", "cmd"),
            ("proxy::dial", "proxy::socks::v5"),
            ("proxy::socks::server", "proxy::dial"),
            ("trace::run", "model"),
            ("trace::tests", "cmd"),
            ("output::json::tests", "output::text"),
            ("output::text::tests", "output::json"),
        ] {
            let p = |s: &str| s.split("::").map(String::from).collect::<Vec<_>>();
            g.edges.insert((p(a), p(b)));
        }
        let v: Vec<String> = violations(&g)
            .into_iter()
            .filter(|v| !v.contains("PENDING"))
            .collect();
        assert_eq!(v.len(), 2, "{v:?}");
        assert!(v[0].starts_with("output -> cmd (upward)"), "{v:?}");
        assert_eq!(v[1], "cycle inside proxy: dial <-> socks");
    }

    /// The rules hold for capagent as it is (the check `cargo xtask test` runs).
    #[test]
    fn capagent_keeps_its_layers() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent/src");
        let g = scan(&src).unwrap();
        let bad = violations(&g);
        assert!(bad.is_empty(), "layering violations:\n{}", bad.join("\n"));
    }
}
