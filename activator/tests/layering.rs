//! The activator's modules form a layered graph: no module reaches, through `crate::` paths
//! (imports, qualified paths and doc links alike), a module that reaches it back.
//!
//! Reads `src/` as text: every file is a module (`relay/mod.rs` is `relay`, `relay/request.rs`
//! is `relay::request`); a `crate::a::b` path (or `super::b` in `a::c`) points at the longest
//! module it names. Edges between a
//! module and its own parent or children are left out (a parent declares its children). Cycles
//! are looked for twice: between top-level modules (submodules folded into their top), and
//! between every module.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Graph = BTreeMap<String, BTreeSet<String>>;

/// Module path of each `.rs` file under `dir`, with its text.
fn modules(dir: &Path, prefix: &[String], out: &mut Vec<(Vec<String>, String)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read src")
        .map(|e| e.expect("entry").path())
        .collect();
    entries.sort();
    for p in entries {
        let name = p.file_stem().unwrap().to_string_lossy().to_string();
        if p.is_dir() {
            let mut sub = prefix.to_vec();
            sub.push(name);
            modules(&p, &sub, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            let mut m = prefix.to_vec();
            match name.as_str() {
                "lib" | "main" if prefix.is_empty() => continue, // the crate roots
                "mod" => {}
                _ => m.push(name),
            }
            out.push((m, std::fs::read_to_string(&p).expect("read file")));
        }
    }
}

fn ident_len(s: &str) -> usize {
    s.bytes()
        .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
        .count()
}

/// The paths of a use tree starting at `s` (just after `crate::`), each as its segments.
fn use_tree(s: &str, prefix: &[String], out: &mut Vec<Vec<String>>) {
    let mut path = prefix.to_vec();
    let mut rest = s;
    loop {
        let rest_trim = rest.trim_start();
        if let Some(inner) = rest_trim.strip_prefix('{') {
            // Split the group at its top-level commas.
            let mut depth = 0;
            let mut start = 0;
            for (i, c) in inner.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        use_tree(&inner[start..i], &path, out);
                        return;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        use_tree(&inner[start..i], &path, out);
                        start = i + 1;
                    }
                    _ => {}
                }
            }
            return;
        }
        let n = ident_len(rest_trim);
        if n == 0 {
            break;
        }
        let seg = &rest_trim[..n];
        if seg != "self" {
            path.push(seg.to_string());
        }
        rest = &rest_trim[n..];
        match rest.strip_prefix("::") {
            Some(r) => rest = r,
            None => break,
        }
    }
    out.push(path);
}

/// Every path of this crate in `text`, the text of module `module`: `crate::` paths, and
/// `super::` paths resolved against the module's parent.
fn crate_paths(text: &str, module: &[String]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let parent = &module[..module.len().saturating_sub(1)];
    for (word, prefix) in [("crate::", &[][..]), ("super::", parent)] {
        let mut at = 0;
        while let Some(i) = text[at..].find(word) {
            let start = at + i;
            let before = text[..start].bytes().last();
            at = start + word.len();
            // `zeroscale_activator::`, `my_crate::` or `super::super::` are not followed.
            if before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':') {
                continue;
            }
            use_tree(&text[at..], prefix, &mut out);
        }
    }
    out
}

/// The module graph of `src`, one node per file.
fn graph(src: &Path) -> Graph {
    let mut files = Vec::new();
    modules(src, &[], &mut files);
    let known: BTreeSet<Vec<String>> = files.iter().map(|(m, _)| m.clone()).collect();
    let mut g = Graph::new();
    for (m, text) in &files {
        let from = m.join("::");
        let edges = g.entry(from.clone()).or_default();
        for path in crate_paths(text, m) {
            // The longest prefix that is a module.
            let Some(to) = (1..=path.len())
                .rev()
                .map(|k| path[..k].to_vec())
                .find(|p| known.contains(p))
            else {
                continue; // an item of the crate root (`crate::Metrics`)
            };
            let related = to.starts_with(m) || m.starts_with(&to);
            if !related {
                edges.insert(to.join("::"));
            }
        }
    }
    g
}

/// The graph with every module folded into its top-level module.
fn top_level(g: &Graph) -> Graph {
    let top = |m: &str| m.split("::").next().unwrap_or(m).to_string();
    let mut out = Graph::new();
    for (from, tos) in g {
        let edges = out.entry(top(from)).or_default();
        for to in tos {
            if top(to) != top(from) {
                edges.insert(top(to));
            }
        }
    }
    out
}

/// One cycle of `g` (as the modules along it, first repeated at the end), if there is one.
fn find_cycle(g: &Graph) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn visit(
        g: &Graph,
        n: &str,
        marks: &mut BTreeMap<String, Mark>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        marks.insert(n.to_string(), Mark::Open);
        stack.push(n.to_string());
        for m in g.get(n).into_iter().flatten() {
            match marks.get(m.as_str()).copied().unwrap_or(Mark::New) {
                Mark::Open => {
                    let i = stack
                        .iter()
                        .position(|s| s == m)
                        .expect("open is on the stack");
                    let mut c = stack[i..].to_vec();
                    c.push(m.clone());
                    return Some(c);
                }
                Mark::New => {
                    if let Some(c) = visit(g, m, marks, stack) {
                        return Some(c);
                    }
                }
                Mark::Done => {}
            }
        }
        stack.pop();
        marks.insert(n.to_string(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for n in g.keys() {
        if marks.get(n).copied().unwrap_or(Mark::New) == Mark::New {
            let mut stack = Vec::new();
            if let Some(c) = visit(g, n, &mut marks, &mut stack) {
                return Some(c);
            }
        }
    }
    None
}

fn render(g: &Graph) -> String {
    g.iter()
        .map(|(k, v)| {
            format!(
                "{k} -> {}",
                v.iter().cloned().collect::<Vec<_>>().join(", ")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_module_graph_has_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let g = graph(&src);
    assert!(g.len() > 10, "src/ was not read: {g:?}");
    // `ZEROSCALE_PRINT_LAYERS=1 cargo test -p zeroscale-activator --test layering -- --nocapture`
    if std::env::var_os("ZEROSCALE_PRINT_LAYERS").is_some() {
        println!("{}", render(&top_level(&g)));
    }
    if let Some(c) = find_cycle(&top_level(&g)) {
        panic!(
            "import cycle between modules: {}\n{}",
            c.join(" -> "),
            render(&top_level(&g))
        );
    }
    if let Some(c) = find_cycle(&g) {
        panic!(
            "import cycle between submodules: {}\n{}",
            c.join(" -> "),
            render(&g)
        );
    }
}

#[test]
fn paths_and_cycles_are_found() {
    let text = "use crate::a::{self, B};\nuse crate::{b, c::{d::E, f}};\n/// [`x`](crate::g::h)\nzeroscale_activator::z; fn f() { crate::i::j(); }";
    let paths: Vec<String> = crate_paths(text, &[])
        .iter()
        .map(|p| p.join("::"))
        .collect();
    assert_eq!(paths, ["a", "a::B", "b", "c::d::E", "c::f", "g::h", "i::j"]);
    let module = ["relay".to_string(), "exchange".to_string()];
    let paths: Vec<String> = crate_paths("use super::{client::closed, request::Plan};", &module)
        .iter()
        .map(|p| p.join("::"))
        .collect();
    assert_eq!(paths, ["relay::client::closed", "relay::request::Plan"]);

    let g = |edges: &[(&str, &str)]| {
        let mut g = Graph::new();
        for (a, b) in edges {
            g.entry(a.to_string()).or_default().insert(b.to_string());
            g.entry(b.to_string()).or_default();
        }
        g
    };
    assert_eq!(find_cycle(&g(&[("a", "b"), ("b", "c"), ("a", "c")])), None);
    assert_eq!(
        find_cycle(&g(&[("a", "b"), ("b", "c"), ("c", "a")])),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    // Submodules fold into their top-level module: relay::x -> proxy -> relay is a cycle.
    let nested = g(&[("relay::x", "proxy"), ("proxy", "relay")]);
    assert_eq!(find_cycle(&nested), None);
    assert!(find_cycle(&top_level(&nested)).is_some());
}
