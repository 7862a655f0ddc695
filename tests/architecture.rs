//! The dependency rules between the crate's top-level modules (docs/architecture.md), checked on
//! the source text: every `use crate::…`, `crate::…` path and `super::` path that climbs out of
//! its top-level module in `src/**/*.rs` is an edge of the module graph. Test code counts too.
//! Each failure names the file and line of the import that breaks the rule.
//!
//! The binary (`src/main.rs`, `src/cli.rs`, `src/explain.rs`) reaches the library as `trunkline::…` and is the one
//! place allowed to call `runtime`; it is not part of the graph.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

/// Files of the binary crate, not of the library's module graph.
const BINARY: &[&str] = &["main.rs", "cli.rs", "explain.rs"];

/// One import of a top-level module by a file of another.
#[derive(Clone, Debug)]
struct Edge {
    from: String,
    to: String,
    file: PathBuf,
    line: usize,
    path: String,
}

impl fmt::Display for Edge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {} imports {} (`{}`)",
            self.file.display(),
            self.line,
            self.from,
            self.to,
            self.path
        )
    }
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, into: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("src/ is readable")
        .map(|e| e.expect("an entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, into);
        } else if path.extension().is_some_and(|e| e == "rs") {
            into.push(path);
        }
    }
}

/// The module path of a file: `src/call/gateway.rs` → `[call, gateway]`, `src/operator/
/// controller/mod.rs` → `[operator, controller]`, `src/lib.rs` → `[]`.
fn module_path(relative: &Path) -> Vec<String> {
    let mut parts: Vec<String> =
        relative.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop().expect("a file name");
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_string());
    }
    parts
}

/// The code of a line without its `//` comment (a `//` inside a string literal is kept: only a
/// `//` at the start or after a blank counts; URLs in strings have neither).
fn code(line: &str) -> &str {
    let trimmed = line.trim_start();
    if trimmed.starts_with("//") {
        return "";
    }
    match line.find(" //") {
        Some(at) if line[..at].matches('"').count().is_multiple_of(2) => &line[..at],
        _ => line,
    }
}

/// The full paths a `use` tree names: `crate::{a::{b, c}, d}` → `crate::a::b`, `crate::a::c`,
/// `crate::d`.
fn expand_use(tree: &str) -> Vec<String> {
    fn expand(prefix: &str, tree: &str, out: &mut Vec<String>) {
        let tree = tree.trim();
        if tree.is_empty() {
            return;
        }
        match tree.find('{') {
            Some(open) if tree.ends_with('}') => {
                let head = tree[..open].trim().trim_end_matches("::");
                let prefix = join(prefix, head);
                let inner = &tree[open + 1..tree.len() - 1];
                for part in split_top_level(inner) {
                    expand(&prefix, part, out);
                }
            }
            _ => {
                let item = tree.split(" as ").next().unwrap_or(tree).trim();
                out.push(join(prefix, item));
            }
        }
    }
    fn join(prefix: &str, rest: &str) -> String {
        match (prefix.is_empty(), rest.is_empty()) {
            (true, _) => rest.to_string(),
            (_, true) => prefix.to_string(),
            _ => format!("{prefix}::{rest}"),
        }
    }
    fn split_top_level(s: &str) -> Vec<&str> {
        let (mut depth, mut start, mut parts) = (0, 0, Vec::new());
        for (i, c) in s.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    parts.push(&s[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        parts.push(&s[start..]);
        parts
    }
    let mut out = Vec::new();
    expand("", tree, &mut out);
    out
}

/// The top-level module a path reaches from `module` (the module path the code is in,
/// including inline modules), if it leaves for another top-level module of the crate: `crate::x`
/// and `super::…` chains that climb to the crate root.
fn target(module: &[String], path: &str) -> Option<String> {
    let segments: Vec<&str> = path.split("::").map(str::trim).collect();
    match segments.first().copied() {
        Some("crate") => segments.get(1).map(|s| s.to_string()),
        Some("super") => {
            let supers = segments.iter().take_while(|s| **s == "super").count();
            if supers < module.len() {
                // Still inside the file's own top-level module.
                module.first().cloned()
            } else {
                segments.get(supers).map(|s| s.to_string())
            }
        }
        _ => None,
    }
}

/// Positions of every `crate::` and `super::` path that starts in `text` (not preceded by a
/// path segment or identifier character).
fn path_starts(text: &str) -> Vec<usize> {
    let mut at = Vec::new();
    for needle in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(found) = text[from..].find(needle) {
            let i = from + found;
            let before = text[..i].chars().last();
            let glued = before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':');
            if !glued {
                at.push(i);
            }
            from = i + needle.len();
        }
    }
    at.sort();
    at
}

/// The path that starts at `text[start..]`: identifiers and `::`.
fn path_at(text: &str, start: usize) -> &str {
    let rest = &text[start..];
    let mut end = 0;
    let bytes = rest.as_bytes();
    while end < bytes.len() {
        let c = bytes[end];
        if c.is_ascii_alphanumeric() || c == b'_' {
            end += 1;
        } else if rest[end..].starts_with("::") {
            end += 2;
        } else {
            break;
        }
    }
    rest[..end].trim_end_matches("::")
}

/// Every edge between top-level modules in the library's files.
fn edges() -> Vec<Edge> {
    let root = src();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let mut edges = Vec::new();
    for file in files {
        let relative = file.strip_prefix(&root).expect("under src/").to_path_buf();
        if BINARY.iter().any(|b| relative == Path::new(b)) {
            continue;
        }
        let file_module = module_path(&relative);
        let Some(top) = file_module.first().cloned() else {
            continue; // lib.rs: only `pub mod` lines.
        };
        let text = std::fs::read_to_string(&file).expect("a readable source file");
        let shown = Path::new("src").join(&relative);
        // Inline modules (`mod tests {`), by rustfmt's indentation: (indent, name).
        let mut inline: Vec<(usize, String)> = Vec::new();
        // A `use` statement spread over lines: (first line, text so far).
        let mut pending_use: Option<(usize, String)> = None;
        for (index, raw) in text.lines().enumerate() {
            let number = index + 1;
            let line = code(raw);
            let indent = raw.len() - raw.trim_start().len();
            if let Some((open, _)) = inline.last()
                && *open == indent
                && raw.trim() == "}"
            {
                inline.pop();
            }
            let mut module = file_module.clone();
            module.extend(inline.iter().map(|(_, name)| name.clone()));
            let trimmed = line.trim();
            if let Some(name) = inline_module(trimmed) {
                inline.push((indent, name));
            }

            let mut push = |path: &str, line: usize| {
                if let Some(to) = target(&module, path)
                    && to != top
                {
                    edges.push(Edge {
                        from: top.clone(),
                        to,
                        file: shown.clone(),
                        line,
                        path: path.to_string(),
                    });
                }
            };
            if let Some((first, mut statement)) = pending_use.take() {
                statement.push_str(trimmed);
                if statement.ends_with(';') {
                    for path in expand_use(statement.trim_end_matches(';')) {
                        push(&path, first);
                    }
                } else {
                    pending_use = Some((first, statement));
                }
                continue;
            }
            let use_tree = ["pub use ", "pub(crate) use ", "use "]
                .iter()
                .find_map(|p| trimmed.strip_prefix(p));
            if let Some(tree) = use_tree {
                if tree.ends_with(';') {
                    for path in expand_use(tree.trim_end_matches(';')) {
                        push(&path, number);
                    }
                } else {
                    pending_use = Some((number, tree.to_string()));
                }
                continue;
            }
            for start in path_starts(line) {
                push(path_at(line, start), number);
            }
        }
    }
    edges
}

/// `mod name {` (with any visibility), the opening of an inline module.
fn inline_module(line: &str) -> Option<String> {
    let rest = line.strip_suffix('{')?.trim_end();
    let rest = rest.strip_prefix("pub ").unwrap_or(rest);
    let rest = rest.strip_prefix("pub(crate) ").unwrap_or(rest);
    let name = rest.strip_prefix("mod ")?;
    name.chars().all(|c| c.is_alphanumeric() || c == '_').then(|| name.to_string())
}

/// The message of a broken rule: the rule, then one line per import that breaks it.
fn failures(rule: &str, bad: Vec<&Edge>) -> Option<String> {
    if bad.is_empty() {
        return None;
    }
    let lines: Vec<String> = bad.iter().map(|e| format!("  {e}")).collect();
    Some(format!("{rule}:\n{}", lines.join("\n")))
}

fn check(rule: &str, allowed: impl Fn(&Edge) -> bool) {
    let edges = edges();
    let broken = failures(rule, edges.iter().filter(|e| !allowed(e)).collect());
    assert!(broken.is_none(), "{}", broken.unwrap_or_default());
}

#[test]
fn the_scan_sees_the_imports_it_must_see() {
    // A check that finds nothing because it reads nothing would pass every rule.
    let edges = edges();
    let has = |from: &str, to: &str| edges.iter().any(|e| e.from == from && e.to == to);
    assert!(has("config", "api") && has("call", "sip") && has("operator", "config"), "{edges:#?}");
    assert_eq!(
        expand_use("crate::{a::{b, c as d}, e}"),
        ["crate::a::b", "crate::a::c", "crate::e"]
    );
    let module: Vec<String> = ["media", "relay", "tests"].map(String::from).to_vec();
    assert_eq!(target(&module, "super::super::ports::x").as_deref(), Some("media"));
    assert_eq!(target(&module, "super::super::super::sip::x").as_deref(), Some("sip"));
    assert_eq!(target(&module, "crate::call").as_deref(), Some("call"));
}

#[test]
fn api_imports_nothing_of_the_crate_but_itself() {
    check("api imports nothing of the crate but itself", |e| e.from != "api");
}

#[test]
fn config_imports_only_api() {
    check("config imports only api (it is pure: specs in, table and verdicts out)", |e| {
        e.from != "config" || e.to == "api"
    });
}

#[test]
fn sip_and_media_import_neither_call_operator_source_nor_runtime() {
    check("sip and media import neither call, operator, source nor runtime", |e| {
        !matches!(e.from.as_str(), "sip" | "media")
            || !matches!(e.to.as_str(), "call" | "operator" | "source" | "runtime")
    });
}

#[test]
fn call_imports_neither_operator_source_nor_runtime() {
    check("call imports neither operator, source nor runtime", |e| {
        e.from != "call" || !matches!(e.to.as_str(), "operator" | "source" | "runtime")
    });
}

#[test]
fn nothing_but_the_binary_imports_runtime() {
    check("nothing in the library imports runtime (only main.rs and cli.rs call it)", |e| {
        e.to != "runtime"
    });
}

#[test]
fn the_module_graph_has_no_cycle() {
    let edges = edges();
    let mut graph: BTreeMap<&str, BTreeMap<&str, &Edge>> = BTreeMap::new();
    for e in &edges {
        graph.entry(e.from.as_str()).or_default().entry(e.to.as_str()).or_insert(e);
    }
    // Depth-first search; a back edge closes a cycle, reported edge by edge.
    fn visit<'a>(
        node: &'a str,
        graph: &BTreeMap<&'a str, BTreeMap<&'a str, &'a Edge>>,
        stack: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
        cycles: &mut Vec<String>,
    ) {
        if done.contains(node) {
            return;
        }
        if let Some(at) = stack.iter().position(|n| *n == node) {
            let mut ring: Vec<&str> = stack[at..].to_vec();
            ring.push(node);
            let steps: Vec<String> =
                ring.windows(2).map(|w| format!("    {}", graph[w[0]][w[1]])).collect();
            cycles.push(format!("  {}:\n{}", ring.join(" → "), steps.join("\n")));
            return;
        }
        stack.push(node);
        for next in graph.get(node).into_iter().flat_map(|m| m.keys()) {
            visit(next, graph, stack, done, cycles);
        }
        stack.pop();
        done.insert(node);
    }
    let (mut stack, mut done, mut cycles) = (Vec::new(), BTreeSet::new(), Vec::new());
    for node in graph.keys() {
        visit(node, &graph, &mut stack, &mut done, &mut cycles);
    }
    assert!(
        cycles.is_empty(),
        "top-level modules that import each other (two modules in a cycle are one module, or a \
         missing one):\n{}",
        cycles.join("\n")
    );
}
