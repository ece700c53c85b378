//! The house rules of docs/architecture.md ("Layers"), checked on the source itself so that a
//! change that breaks them fails the build, not a later reader:
//! - a module names only modules of layers below its own (no import circle, no upward name);
//! - no source file is longer than 700 lines before its test module.
//!
//! A module is a top-level module of the `eucora` crate (`src/<name>.rs` with `src/<name>/`); a
//! name is any `crate::<module>` path outside comments and test code.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The layers, lowest first: a module may name the modules of any layer before its own, and
/// none of its own layer or after it. docs/architecture.md draws the same table.
const LAYERS: &[&[&str]] = &[
    &["domain", "trace"],
    &["store"],
    &["projection", "read", "principals", "governance"],
    &["checkpoints"],
    &["telemetry"],
    &["write"],
    &[
        "connector",
        "deadlines",
        "evidence",
        "replay",
        "demo",
        "slo",
    ],
    &["forecast"],
    &["http"],
    &["ui"],
    &["config"],
    &["app"],
    &["cli"],
];

/// The longest a source file may be before its test module.
const MAX_LINES: usize = 700;

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The file's code before its test module, without comment lines; `None` for a file that is
/// all tests (`tests.rs`).
fn code(path: &Path) -> Option<String> {
    if path.file_name().is_some_and(|n| n == "tests.rs") {
        return None;
    }
    let text = std::fs::read_to_string(path).expect("a source file reads");
    let before_tests = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => &text,
    };
    Some(before_tests.to_string())
}

/// Every `crate::<module>` the code names, outside comment lines (`use crate::{a, b::c}` too).
fn named_modules(code: &str) -> BTreeSet<String> {
    let mut named = BTreeSet::new();
    for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let group = &group[..group.find('}').unwrap_or(group.len())];
                for item in group.split(',') {
                    let name = item.trim().split("::").next().unwrap_or_default();
                    if !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    {
                        named.insert(name.to_string());
                    }
                }
            } else {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    named.insert(name);
                }
            }
        }
    }
    named
}

fn crate_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn every_module_names_only_layers_below_its_own() {
    let src = crate_root().join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files.sort();
    let mut wrong = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&src).expect("under src");
        let first = relative.components().next().expect("a path");
        let module = first
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if module == "main" || module == "lib" {
            continue;
        }
        let Some(code) = code(file) else { continue };
        let Some(own) = layer_of(&module) else {
            wrong.push(format!(
                "src/{module} is in no layer: add it to LAYERS here and to docs/architecture.md"
            ));
            continue;
        };
        for named in named_modules(&code) {
            if named == module {
                continue;
            }
            match layer_of(&named) {
                Some(layer) if layer < own => {}
                Some(_) => wrong.push(format!(
                    "{} names crate::{named}, which is not in a layer below {module}'s",
                    relative.display()
                )),
                None => wrong.push(format!(
                    "{} names crate::{named}, which is in no layer",
                    relative.display()
                )),
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "the layers are broken:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn no_source_file_is_longer_than_the_limit_before_its_tests() {
    let root = crate_root();
    let mut files = Vec::new();
    for dir in ["src", "projections/src"] {
        sources(&root.join(dir), &mut files);
    }
    files.sort();
    assert!(
        files.len() > 50,
        "the sources were not found under {}",
        root.display()
    );
    let long: Vec<String> = files
        .iter()
        .filter_map(|file| {
            let lines = code(file)?.lines().count();
            (lines > MAX_LINES).then(|| {
                format!(
                    "{}: {lines} lines before its tests",
                    file.strip_prefix(&root).unwrap_or(file).display()
                )
            })
        })
        .collect();
    assert!(
        long.is_empty(),
        "files over {MAX_LINES} lines (split them by concern):\n{}",
        long.join("\n")
    );
}

#[test]
fn named_modules_are_read_from_paths_and_groups_but_not_comments() {
    let code = "use crate::store::Store;\n\
                use crate::{telemetry::Telemetry, write};\n\
                // crate::app is named in a comment only\n\
                let x = crate::domain::policy::duration(t);\n";
    let named: Vec<String> = named_modules(code).into_iter().collect();
    assert_eq!(named, ["domain", "store", "telemetry", "write"]);
}
