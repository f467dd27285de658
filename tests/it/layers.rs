//! The library's modules form layers: imports point down only, never in a circle.
//!
//! Read from the source itself (test code excluded): every `crate::…`, `super::…` and `self::…`
//! path in `src/` is an edge from its file to the module file it names. Two graphs must be
//! acyclic: the crate's top-level modules, and within each folder its sibling files (a folder's
//! `mod.rs` is the folder's face to the world, so edges into it are edges into the folder).
//! The top-level order is pinned below and drawn in ARCHITECTURE.md; changing it is a design
//! decision, not a side effect.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Top-level modules, lowest layer first; a module may import only modules of lower layers.
const LAYERS: &[&[&str]] = &[
    // Foundations: no crate imports.
    &["seed", "hash", "hub", "chat", "shard"],
    // What a metric is and computes: below the tasks that name metrics.
    &["metric"],
    // What a run is made of: tasks, and the models that score them.
    &["task", "backend"],
    &["sampler", "score", "corpus", "models", "cache"],
    // Prompts from demonstrations; the run folder's data types.
    &["prompt", "encoder", "record"],
    &["resume", "report", "validate", "bench"],
    &["evaluate", "merge"],
    &["run"],
];

/// A module's path from the crate root (`["backend", "candle", "hf"]`) and its source file.
struct Module {
    path: Vec<String>,
    file: PathBuf,
}

fn modules(src: &Path) -> Vec<Module> {
    let mut out = Vec::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            if p.extension().and_then(|e| e.to_str()) != Some("rs") {
                continue;
            }
            let rel = p.strip_prefix(src).unwrap();
            let mut path: Vec<String> = rel
                .iter()
                .map(|c| c.to_str().unwrap().trim_end_matches(".rs").to_string())
                .collect();
            match path.last().map(String::as_str) {
                Some("mod") | Some("lib") => {
                    path.pop();
                }
                // The binary's files are not part of the library's layers.
                Some("main") | Some("cli") if path.len() == 1 => continue,
                _ => {}
            }
            out.push(Module { path, file: p });
        }
    }
    out
}

/// The source without comments and without `#[cfg(test)]` items.
fn non_test_code(text: &str) -> String {
    let code: String = text
        .lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = String::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        let Some(open) = after.find('{') else {
            rest = "";
            break;
        };
        let mut depth = 0usize;
        let mut end = after.len();
        for (j, c) in after[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + j + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// Every path a `use` tree or expression names from `start` (just after `crate::`, ...),
/// with `{a, b::{c}}` groups expanded.
fn paths_from(code: &str, start: usize) -> Vec<Vec<String>> {
    fn tree(s: &[u8], i: &mut usize, prefix: &[String], out: &mut Vec<Vec<String>>) {
        let mut path = prefix.to_vec();
        loop {
            while *i < s.len() && s[*i].is_ascii_whitespace() {
                *i += 1;
            }
            if *i < s.len() && s[*i] == b'{' {
                *i += 1;
                loop {
                    tree(s, i, &path, out);
                    while *i < s.len() && s[*i].is_ascii_whitespace() {
                        *i += 1;
                    }
                    match s.get(*i) {
                        Some(b',') => *i += 1,
                        Some(b'}') => {
                            *i += 1;
                            return;
                        }
                        _ => return,
                    }
                    while *i < s.len() && s[*i].is_ascii_whitespace() {
                        *i += 1;
                    }
                    if s.get(*i) == Some(&b'}') {
                        *i += 1;
                        return;
                    }
                }
            }
            let begin = *i;
            while *i < s.len() && (s[*i].is_ascii_alphanumeric() || s[*i] == b'_') {
                *i += 1;
            }
            if *i == begin {
                out.push(path);
                return;
            }
            path.push(String::from_utf8_lossy(&s[begin..*i]).into_owned());
            if s[*i..].starts_with(b"::") {
                *i += 2;
            } else {
                out.push(path);
                return;
            }
        }
    }
    let mut out = Vec::new();
    let mut i = start;
    tree(code.as_bytes(), &mut i, &[], &mut out);
    out
}

/// Module paths named by `file`'s code, resolved to absolute module paths (items dropped later).
fn references(m: &Module) -> Vec<Vec<String>> {
    let code = non_test_code(&fs::read_to_string(&m.file).unwrap());
    // `super` is the module one up: for `a/x.rs` (`a::x`) and `a/mod.rs` (`a`) alike.
    let own = m.path.clone();
    let parent = own[..own.len().saturating_sub(1)].to_vec();
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    for (key, base) in [
        ("crate::", Some(Vec::new())),
        ("super::", Some(parent)),
        ("self::", Some(own.clone())),
    ] {
        let mut from = 0;
        while let Some(k) = code[from..].find(key) {
            let at = from + k;
            from = at + key.len();
            if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_') {
                continue;
            }
            // `super::super::x`
            let mut base = base.clone().unwrap();
            let mut start = from;
            while key == "super::" && code[start..].starts_with("super::") {
                base.pop();
                start += "super::".len();
            }
            for p in paths_from(&code, start) {
                let mut full = base.clone();
                full.extend(p);
                out.push(full);
            }
        }
    }
    out
}

/// The deepest known module that `path` starts with.
fn target(path: &[String], known: &BTreeSet<Vec<String>>) -> Option<Vec<String>> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| known.contains(p))
}

fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for m in edges.get(n).into_iter().flatten() {
            match state.get(m.as_str()).copied().unwrap_or(0) {
                1 => {
                    let i = stack.iter().position(|s| s == m).unwrap();
                    let mut c = stack[i..].to_vec();
                    c.push(m.clone());
                    return Some(c);
                }
                0 => {
                    if let Some(c) = visit(m, edges, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in edges.keys() {
        if state.get(n.as_str()).copied().unwrap_or(0) == 0 {
            let mut stack = Vec::new();
            if let Some(c) = visit(n, edges, &mut state, &mut stack) {
                return Some(c);
            }
        }
    }
    None
}

/// (top-level edges, sibling edges per folder) of the library in `src`.
#[allow(clippy::type_complexity)]
fn graphs(
    src: &Path,
) -> (
    BTreeMap<String, BTreeSet<String>>,
    BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
) {
    let mods = modules(src);
    let known: BTreeSet<Vec<String>> = mods.iter().map(|m| m.path.clone()).collect();
    let mut top: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut siblings: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for m in mods.iter().filter(|m| !m.path.is_empty()) {
        top.entry(m.path[0].clone()).or_default();
        for r in references(m) {
            let Some(t) = target(&r, &known) else {
                continue;
            };
            if t.is_empty() {
                continue;
            }
            if t[0] != m.path[0] {
                top.entry(m.path[0].clone())
                    .or_default()
                    .insert(t[0].clone());
            }
            // Sibling files of one folder: same parent, both below it.
            let folder = &m.path[..m.path.len() - 1];
            if m.path.len() >= 2 && t.len() > folder.len() && t[..folder.len()] == *folder {
                let (a, b) = (&m.path[folder.len()], &t[folder.len()]);
                if a != b {
                    siblings
                        .entry(folder.join("::"))
                        .or_default()
                        .entry(a.clone())
                        .or_default()
                        .insert(b.clone());
                }
            }
        }
    }
    (top, siblings)
}

fn src_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .join("src")
}

#[test]
fn top_level_modules_import_only_lower_layers() {
    let (top, _) = graphs(&src_dir());
    let layer: BTreeMap<&str, usize> = LAYERS
        .iter()
        .enumerate()
        .flat_map(|(i, l)| l.iter().map(move |m| (*m, i)))
        .collect();
    let mut wrong = Vec::new();
    for (from, tos) in &top {
        let Some(&lf) = layer.get(from.as_str()) else {
            wrong.push(format!(
                "`{from}` is in no layer of LAYERS (tests/layers.rs)"
            ));
            continue;
        };
        for to in tos {
            match layer.get(to.as_str()) {
                Some(&lt) if lt < lf => {}
                Some(&lt) => wrong.push(format!("{from} (layer {lf}) imports {to} (layer {lt})")),
                None => wrong.push(format!("`{to}` is in no layer of LAYERS (tests/layers.rs)")),
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_eq!(find_cycle(&top), None);
}

#[test]
fn sibling_files_have_no_import_cycle() {
    let (_, siblings) = graphs(&src_dir());
    assert!(siblings.contains_key("report"), "{siblings:?}");
    for (folder, edges) in &siblings {
        if let Some(c) = find_cycle(edges) {
            panic!("import cycle in src/{folder}: {}", c.join(" → "));
        }
    }
}

#[test]
fn the_reader_sees_cycles_and_groups() {
    let d = std::env::temp_dir().join(format!("icl-eval-layers-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(d.join("a")).unwrap();
    fs::write(d.join("lib.rs"), "pub mod a;\npub mod b;\n").unwrap();
    fs::write(d.join("a/mod.rs"), "pub mod x;\npub mod y;\n").unwrap();
    fs::write(
        d.join("a/x.rs"),
        "use super::{y::Y, z};\n// crate::b is only a comment\n",
    )
    .unwrap();
    fs::write(
        d.join("a/y.rs"),
        "fn f() { crate::a::x::g(); }\n#[cfg(test)]\nmod tests { use crate::b; }\n",
    )
    .unwrap();
    fs::write(d.join("b.rs"), "use crate::{a::x::{self, X}, seed};\n").unwrap();
    let (top, siblings) = graphs(&d);
    assert_eq!(top["b"], BTreeSet::from(["a".to_string()]));
    assert!(top["a"].is_empty(), "{top:?}");
    let c = find_cycle(&siblings["a"]).expect("x ↔ y");
    assert_eq!(c.len(), 3, "{c:?}");
    fs::remove_dir_all(&d).unwrap();
}
