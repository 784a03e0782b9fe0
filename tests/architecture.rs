//! ARCHITECTURE.md stays true: every path its code map names exists, and every source file
//! under `src/` and `settings/src/` is named in it (by its path, or by its file name in the bullet of its
//! folder), so a newcomer can find the room for a change from the map alone.

use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn architecture() -> String {
    std::fs::read_to_string(Path::new(ROOT).join("ARCHITECTURE.md")).unwrap()
}

/// The code map's items: one string per top-level bullet, continuation lines joined.
fn bullets(text: &str) -> Vec<String> {
    let map = text
        .split("## Code map")
        .nth(1)
        .expect("ARCHITECTURE.md has a Code map section");
    let map = map.split("\n## ").next().unwrap();
    let mut items: Vec<String> = Vec::new();
    for line in map.lines() {
        if let Some(rest) = line.strip_prefix("- ") {
            items.push(rest.to_string());
        } else if let Some(last) = items.last_mut() {
            last.push(' ');
            last.push_str(line.trim());
        }
    }
    items
}

/// Backticked words that look like repository paths.
fn paths(text: &str) -> Vec<String> {
    const TOP: [&str; 11] = [
        "src/",
        "tests/",
        "examples/",
        "dist/",
        "man/",
        "packaging/",
        "benches/",
        "fuzz/",
        "docs/",
        "scripts/",
        "settings/",
    ];
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|w| TOP.iter().any(|t| w.starts_with(t)) && !w.contains(' '))
        .map(|w| w.trim_end_matches([',', '.']).to_string())
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_path_in_the_code_map_exists() {
    let text = architecture();
    let missing: Vec<String> = paths(&text)
        .into_iter()
        .filter(|p| !Path::new(ROOT).join(p).exists())
        .collect();
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md names paths that do not exist: {missing:?}"
    );
}

#[test]
fn every_source_file_is_in_the_code_map() {
    let text = architecture();
    let items = bullets(&text);
    let mut files = Vec::new();
    rust_files(&Path::new(ROOT).join("src"), &mut files);
    rust_files(&Path::new(ROOT).join("settings/src"), &mut files);
    let mut unnamed = Vec::new();
    for file in files {
        let rel = file
            .strip_prefix(ROOT)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let (folder, name) = rel.rsplit_once('/').unwrap();
        let named = text.contains(&format!("`{rel}`"))
            || items.iter().any(|item| {
                item.contains(&format!("`{folder}/`")) && item.contains(&format!("`{name}`"))
            });
        if !named {
            unnamed.push(rel);
        }
    }
    assert!(
        unnamed.is_empty(),
        "ARCHITECTURE.md's code map does not name: {unnamed:?}"
    );
}

#[test]
fn the_checks_can_fail() {
    let items = bullets("## Code map\n\n- `src/a/` — `b.rs` (x),\n  `c.rs`.\n- `src/d.rs`\n\n## Next\n- `src/e.rs`\n");
    assert_eq!(items.len(), 2);
    assert!(items[0].contains("`c.rs`"));
    assert_eq!(
        paths("`src/x.rs` and `not/this` and `docs/a.md`."),
        ["src/x.rs", "docs/a.md"]
    );
}
