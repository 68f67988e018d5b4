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

/// Module → the modules of the same crate it names (the longest path that is a module).
fn imports(crate_dir: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let modules = modules(crate_dir);
    let longest = |parts: &[&str]| {
        (1..=parts.len())
            .rev()
            .map(|k| parts[..k].join("::"))
            .find(|m| modules.contains_key(m))
    };
    let mut graph = BTreeMap::new();
    for (name, path) in &modules {
        let code = code(path);
        let mut deps = BTreeSet::new();
        for parts in paths_after(&code, "crate::") {
            deps.extend(longest(&parts));
        }
        if let Some((parent, _)) = name.rsplit_once("::") {
            for parts in paths_after(&code, "super::") {
                let full: Vec<&str> = parent.split("::").chain(parts).collect();
                deps.insert(longest(&full).unwrap_or_else(|| parent.to_owned()));
            }
        }
        deps.remove(name);
        graph.insert(name.clone(), deps);
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
    // (`bench` is one module: nothing to loop.)
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

#[test]
fn no_client_crate_depends_on_a_daemon_crate() {
    for client in ["console", "bench", "client", "harness", "shared"] {
        let manifest =
            std::fs::read_to_string(workspace().join(client).join("Cargo.toml")).unwrap();
        let dependencies = manifest
            .split("\n[")
            .filter(|section| section.starts_with("dependencies]"))
            .collect::<String>();
        for daemon in ["nm", "ss", "daemon"] {
            assert!(
                !dependencies
                    .lines()
                    .any(|l| l.split(['=', ' ']).next() == Some(daemon)),
                "{client} depends on the daemon crate {daemon}"
            );
        }
    }
}
