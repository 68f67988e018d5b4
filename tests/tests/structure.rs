//! The layout's two rules, checked on the sources: no crate's modules import
//! each other in a loop, and no client crate depends on a daemon crate.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// Every module of `crate_dir`'s library, by path (`replication::queue`),
/// with its source file. Binaries (`main.rs`, `src/bin/`) are left out.
fn modules(crate_dir: &Path) -> BTreeMap<String, PathBuf> {
    fn walk(dir: &Path, src: &Path, out: &mut BTreeMap<String, PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                if path.file_name().unwrap() != "bin" {
                    walk(&path, src, out);
                }
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let relative = path.strip_prefix(src).unwrap().with_extension("");
            let mut parts: Vec<String> = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|p| p == "mod") {
                parts.pop();
            }
            let name = parts.join("::");
            if name != "lib" && name != "main" {
                out.insert(name, path);
            }
        }
    }
    let src = crate_dir.join("src");
    let mut out = BTreeMap::new();
    walk(&src, &src, &mut out);
    out
}

/// The code of a source file without comments and without its unit tests.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let text = text.split("#[cfg(test)]\nmod tests").next().unwrap();
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The paths named after each `prefix` (`crate::a::b::C` gives `a::b::C`).
fn paths_after<'a>(code: &'a str, prefix: &str) -> Vec<Vec<&'a str>> {
    code.match_indices(prefix)
        .map(|(i, _)| {
            let rest = &code[i + prefix.len()..];
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(rest.len());
            rest[..end].split("::").filter(|s| !s.is_empty()).collect()
        })
        .collect()
}

/// The paths of a `use` group after `prefix{` (`crate::{a::B, c::{D, E}}`
/// gives `a::B`, `c`), as well as the plain paths after `prefix`.
fn paths_named<'a>(code: &'a str, prefix: &str) -> Vec<Vec<&'a str>> {
    let mut found = paths_after(code, prefix);
    let group = format!("{prefix}{{");
    for (i, _) in code.match_indices(&group) {
        let inner = &code[i + group.len()..];
        let (mut depth, mut start) = (0usize, 0usize);
        for (j, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    found.push(first_path(&inner[start..j]));
                    break;
                }
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    found.push(first_path(&inner[start..j]));
                    start = j + 1;
                }
                _ => {}
            }
        }
    }
    found
}

/// `a::b::{C, D}` → [a, b].
fn first_path(item: &str) -> Vec<&str> {
    let item = item.trim();
    let end = item
        .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(item.len());
    item[..end].split("::").filter(|s| !s.is_empty()).collect()
}

/// Whether `ancestor` contains `module`. A submodule naming its ancestors
/// (`use super::*`: a child may use its parent's private items) is part of
/// the ancestor; only its other imports count. The ancestor's use of it
/// does count, so a child that imports a module importing its parent is a loop.
fn contains(ancestor: &str, module: &str) -> bool {
    module.starts_with(&format!("{ancestor}::"))
}

/// Module → the modules of the same crate it names (the longest path that
/// is a module): `crate::` paths, `super::` paths, and paths through its own
/// child modules; a submodule's links to its own ancestors left out.
fn imports(crate_dir: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let modules = modules(crate_dir);
    let longest = |parts: &[&str]| {
        (1..=parts.len())
            .rev()
            .map(|k| parts[..k].join("::"))
            .find(|m| modules.contains_key(m))
    };
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (name, path) in &modules {
        let code = code(path);
        let mut deps = BTreeSet::new();
        for parts in paths_named(&code, "crate::") {
            deps.extend(longest(&parts));
        }
        if let Some((parent, _)) = name.rsplit_once("::") {
            for parts in paths_named(&code, "super::") {
                let full: Vec<&str> = parent.split("::").chain(parts).collect();
                deps.insert(longest(&full).unwrap_or_else(|| parent.to_owned()));
            }
        }
        let children = modules
            .keys()
            .filter_map(|m| m.strip_prefix(&format!("{name}::")))
            .filter(|rest| !rest.contains("::"));
        for child in children {
            for parts in paths_after(&code, &format!("{child}::")) {
                let full: Vec<&str> = name.split("::").chain([child]).chain(parts).collect();
                deps.extend(longest(&full));
            }
        }
        deps.retain(|d| d != name && !contains(d, name));
        graph.entry(name.clone()).or_default().extend(deps);
        // A parent contains its children: what they import, it imports.
        if let Some((parent, _)) = name.rsplit_once("::") {
            graph
                .entry(parent.to_owned())
                .or_default()
                .insert(name.clone());
        }
    }
    graph
}

/// The loops of `graph` (its strongly connected components of more than one module).
fn loops(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Two modules are in one loop when each reaches the other.
    let reach = |from: &str| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.to_owned()];
        while let Some(m) = todo.pop() {
            for next in graph.get(&m).into_iter().flatten() {
                if seen.insert(next.clone()) {
                    todo.push(next.clone());
                }
            }
        }
        seen
    };
    let reaches: BTreeMap<&String, BTreeSet<String>> =
        graph.keys().map(|m| (m, reach(m))).collect();
    let mut found: Vec<Vec<String>> = Vec::new();
    for m in graph.keys() {
        let component: Vec<String> = graph
            .keys()
            .filter(|o| *o == m || (reaches[m].contains(*o) && reaches[*o].contains(m)))
            .cloned()
            .collect();
        if component.len() > 1 && !found.contains(&component) {
            found.push(component);
        }
    }
    found
}

#[test]
fn no_crate_has_an_import_loop() {
    let mut all = Vec::new();
    for name in ["shared", "daemon", "nm", "ss", "console", "harness"] {
        let graph = imports(&workspace().join(name));
        assert!(graph.len() >= 3, "{name}: no modules found");
        for found in loops(&graph) {
            all.push(format!("{name}: {}", found.join(" ↔ ")));
        }
    }
    assert!(
        all.is_empty(),
        "modules importing each other in a loop:\n{}",
        all.join("\n")
    );
}

#[test]
fn the_import_graph_sees_every_kind_of_path() {
    let nm = imports(&workspace().join("nm"));
    let ss = imports(&workspace().join("ss"));
    let edges: usize = nm.values().chain(ss.values()).map(BTreeSet::len).sum();
    assert!(edges > 60, "only {edges} imports found in nm and ss");
    // `use crate::state::Nm;`, `use crate::{a, b}`, `super::x::Y` and paths
    // through a child module are all seen.
    assert!(nm["replication::worker"].contains("state"));
    assert!(nm["replication::worker"].contains("replication::queue"));
    assert!(ss["server::commands"].contains("role"));
    assert!(ss["stream"].contains("nm_link"));
    let grouped = "use crate::{journal::Record, namespace::{Namespace, X}};";
    let paths: Vec<Vec<&str>> = paths_named(grouped, "crate::");
    assert!(paths.contains(&vec!["journal", "Record"]), "{paths:?}");
    assert!(paths.contains(&vec!["namespace"]), "{paths:?}");
}

#[test]
fn the_loop_check_finds_a_loop() {
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec!["a"]),
    ]
    .into_iter()
    .map(|(m, deps)| (m.into(), deps.into_iter().map(String::from).collect()))
    .collect();
    assert_eq!(loops(&graph), [vec!["a", "b", "c"]]);
}

/// The crates a manifest depends on, in any dependency section
/// (`[dependencies]`, `[dev-dependencies]`, `[target.….dependencies]`,
/// `[dependencies.name]`), however the entry is written.
fn dependencies(manifest: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut in_section = false;
    for line in manifest.lines().map(str::trim) {
        if let Some(header) = line.strip_prefix('[') {
            let header = header.trim_end_matches(']');
            let section = header.rsplit('.').next().unwrap_or(header);
            in_section = header.ends_with("dependencies");
            if !in_section && header.contains("dependencies.") {
                found.insert(section.to_owned());
            }
            continue;
        }
        if in_section {
            let key = line.split(['=', '.', ' ']).next().unwrap_or("");
            if !key.is_empty() && !key.starts_with('#') {
                found.insert(key.to_owned());
            }
        }
    }
    found
}

#[test]
fn no_client_crate_depends_on_a_daemon_crate() {
    for client in ["console", "bench", "client", "harness", "shared"] {
        let manifest =
            std::fs::read_to_string(workspace().join(client).join("Cargo.toml")).unwrap();
        let deps = dependencies(&manifest);
        assert!(
            deps.contains("tokio"),
            "{client}: no dependencies read: {deps:?}"
        );
        for daemon in ["nm", "ss", "daemon"] {
            assert!(
                !deps.contains(daemon),
                "{client} depends on the daemon crate {daemon}"
            );
        }
    }
}

#[test]
fn dependencies_are_read_however_they_are_written() {
    let manifest = "[dependencies]\nnm = { path = \"../nm\" }\nss.workspace = true\n\n[dev-dependencies]\ndaemon = \"1\"\n\n[dependencies.extra]\nversion = \"1\"\n\n[features]\nha = []\n";
    let deps = dependencies(manifest);
    assert_eq!(
        deps,
        ["daemon", "extra", "nm", "ss"]
            .map(String::from)
            .into_iter()
            .collect()
    );
}
