//! The tree's architecture rules (issue 16), checked on the sources themselves:
//! (a) no import circle between the top-level modules of a crate, (b) no source file over
//! 600 lines of logic, (c) `#[expect(lint, reason = "...")]` instead of `#[allow(...)]`,
//! (d) one module style: `foo/mod.rs` folders, never `foo.rs` beside `foo/`.
//!
//! Plain text reading, no parser crate: comments and string literals are blanked first, then a
//! small token scan follows `crate::x`, `super::` chains and `use` groups. The graph is the
//! code that ships: `#[cfg(test)]` modules and test-only files are left out (a test may reach
//! up for a fixture). The fixture tests at the bottom prove the checker finds what it claims.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

/// The crates whose trees are read (those that exist).
const CRATES: &[&str] = &[
    "schemas",
    "dialect",
    "ingress",
    "workers",
    "analytics",
    "tests",
];
/// The most lines of logic (not blank, not comment, not a `#[cfg(test)]` module) in a file.
const MAX_LOGIC_LINES: usize = 600;

// ---------------------------------------------------------------------------------------------
// Checks on the real tree

#[test]
fn no_import_circle_between_the_top_level_modules_of_a_crate() {
    let mut report = String::new();
    for krate in read_crates() {
        for unit in krate.units() {
            for circle in unit.circles() {
                report.push_str(&circle);
            }
        }
    }
    assert!(report.is_empty(), "import circles:\n{report}");
}

#[test]
fn no_source_file_has_over_600_lines_of_logic() {
    let mut report = String::new();
    for krate in read_crates() {
        for unit in krate.units() {
            for (path, lines) in unit.long_files() {
                let _ = writeln!(report, "  {path}: {lines} lines of logic");
            }
        }
    }
    assert!(
        report.is_empty(),
        "files over {MAX_LOGIC_LINES} lines of logic:\n{report}"
    );
}

#[test]
fn no_allow_attribute_only_expect_with_a_reason() {
    let mut report = String::new();
    for krate in read_crates() {
        for file in &krate.all_files {
            for line in allow_attributes(&file.text) {
                let _ = writeln!(report, "  {}:{line}", file.shown);
            }
        }
    }
    assert!(
        report.is_empty(),
        "#[allow(...)] (use #[expect(lint, reason = \"...\")]):\n{report}"
    );
}

#[test]
fn one_module_style_mod_rs_folders() {
    let mut report = String::new();
    for krate in read_crates() {
        let paths: Vec<PathBuf> = krate.all_files.iter().map(|f| f.rel.clone()).collect();
        for (file, folder) in file_beside_folder(&paths) {
            let _ = writeln!(
                report,
                "  {0}/{1} beside {0}/{2}/ (use {0}/{2}/mod.rs)",
                krate.name,
                file.display(),
                folder.display()
            );
        }
    }
    assert!(report.is_empty(), "file + folder modules:\n{report}");
}

// ---------------------------------------------------------------------------------------------
// Reading the tree

struct SourceFile {
    /// Path inside the crate's folder, e.g. `src/budget/mod.rs`.
    rel: PathBuf,
    /// Path shown in reports, from the workspace root.
    shown: String,
    text: String,
}

struct Crate {
    name: String,
    /// Every `.rs` file of the crate (src, tests, benches), for rules (c) and (d).
    all_files: Vec<SourceFile>,
}

impl Crate {
    /// The module trees of the crate's `src/`: the library and main binary share one (main.rs
    /// declares no modules of its own here), each `src/bin/<name>` is its own.
    fn units(&self) -> Vec<Unit> {
        let mut units: BTreeMap<String, Vec<(Vec<String>, &SourceFile)>> = BTreeMap::new();
        for file in &self.all_files {
            let Ok(in_src) = file.rel.strip_prefix("src") else {
                continue;
            };
            let (unit, path) = module_path(in_src);
            let unit = match unit {
                Some(bin) => format!("{} (bin {bin})", self.name),
                None => self.name.clone(),
            };
            units.entry(unit).or_default().push((path, file));
        }
        units
            .into_iter()
            .map(|(name, files)| {
                Unit::new(
                    name,
                    files
                        .into_iter()
                        .map(|(path, f)| (path, f.shown.clone(), f.text.as_str()))
                        .collect(),
                )
            })
            .collect()
    }
}

fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

fn read_crates() -> Vec<Crate> {
    let root = workspace_root();
    let mut crates = Vec::new();
    for name in CRATES {
        let dir = root.join(name);
        if !dir.join("Cargo.toml").is_file() {
            continue;
        }
        let mut rels = Vec::new();
        walk(&dir, Path::new(""), &mut rels);
        rels.sort();
        let all_files = rels
            .into_iter()
            .map(|rel| {
                let full = dir.join(&rel);
                let text = fs::read_to_string(&full)
                    .unwrap_or_else(|e| panic!("cannot read {}: {e}", full.display()));
                SourceFile {
                    shown: format!("{name}/{}", rel.display()),
                    rel,
                    text,
                }
            })
            .collect();
        crates.push(Crate {
            name: (*name).to_string(),
            all_files,
        });
    }
    assert!(
        !crates.is_empty(),
        "no crate found under {}",
        root.display()
    );
    crates
}

fn walk(dir: &Path, rel: &Path, out: &mut Vec<PathBuf>) {
    let entries =
        fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    for entry in entries.flatten() {
        let name = entry.file_name();
        let path = entry.path();
        if path.is_dir() {
            if name == "target" || name.to_string_lossy().starts_with('.') {
                continue;
            }
            walk(&path, &rel.join(&name), out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(rel.join(&name));
        }
    }
}

/// The module path of a file under `src/`, and the binary it belongs to if it is under
/// `src/bin/`: `lib.rs` -> [], `a.rs` and `a/mod.rs` -> [a], `a/b.rs` -> [a, b],
/// `bin/x.rs` and `bin/x/main.rs` -> (x, []), `bin/x/args.rs` -> (x, [args]).
fn module_path(in_src: &Path) -> (Option<String>, Vec<String>) {
    let mut parts: Vec<String> = in_src
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let mut bin = None;
    if parts.len() >= 2 && parts[0] == "bin" {
        parts.remove(0);
        let first = parts.remove(0);
        bin = Some(first.trim_end_matches(".rs").to_string());
        if parts.is_empty() {
            return (bin, Vec::new());
        }
    }
    if let Some(last) = parts.pop() {
        let stem = last.trim_end_matches(".rs");
        let is_root = if bin.is_some() {
            parts.is_empty() && stem == "main"
        } else {
            parts.is_empty() && (stem == "lib" || stem == "main")
        };
        if stem != "mod" && !is_root {
            parts.push(stem.to_string());
        }
    }
    (bin, parts)
}

// ---------------------------------------------------------------------------------------------
// One module tree: its files, import edges and rules (a) and (b)

/// An import from one top-level module into another.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Edge {
    from: String,
    to: String,
    at: String,
}

struct Unit {
    name: String,
    /// Top-level modules (the first component of every file's module path).
    modules: BTreeSet<String>,
    edges: Vec<Edge>,
    /// Files that count for rule (b): (shown path, lines of logic).
    logic: Vec<(String, usize)>,
}

impl Unit {
    fn new(name: String, files: Vec<(Vec<String>, String, &str)>) -> Self {
        let scanned: Vec<(Vec<String>, String, Scan)> = files
            .into_iter()
            .map(|(path, shown, text)| {
                let scan = scan(text, &path);
                (path, shown, scan)
            })
            .collect();
        // Modules declared `#[cfg(test)] mod x;` and everything below them are test code.
        let mut test_only: BTreeSet<Vec<String>> = BTreeSet::new();
        for (path, _, scan) in &scanned {
            for name in &scan.test_mods {
                let mut child = path.clone();
                child.push(name.clone());
                test_only.insert(child);
            }
            if scan.whole_file_is_test {
                test_only.insert(path.clone());
            }
        }
        let is_test = |path: &[String]| {
            (1..=path.len()).any(|n| test_only.contains(&path[..n]))
                || path.last().is_some_and(|last| last == "tests")
        };
        let modules: BTreeSet<String> = scanned
            .iter()
            .filter_map(|(path, _, _)| path.first().cloned())
            .collect();
        // `crate::X`, X re-exported at the root from module m, is an import of m.
        let reexports: BTreeMap<String, String> = scanned
            .iter()
            .filter(|(path, _, _)| path.is_empty())
            .flat_map(|(_, _, scan)| scan.reexports.iter().cloned())
            .filter(|(name, module)| modules.contains(module) && !modules.contains(name))
            .collect();
        let mut edges = Vec::new();
        let mut logic = Vec::new();
        for (path, shown, scan) in &scanned {
            if is_test(path) {
                continue;
            }
            logic.push((shown.clone(), scan.logic_lines));
            let Some(from) = path.first() else {
                continue;
            };
            for (to, line) in &scan.targets {
                let to = reexports.get(to).unwrap_or(to);
                if to != from && modules.contains(to) {
                    edges.push(Edge {
                        from: from.clone(),
                        to: to.clone(),
                        at: format!("{shown}:{line}"),
                    });
                }
            }
        }
        edges.sort();
        Unit {
            name,
            modules,
            edges,
            logic,
        }
    }

    /// Each strongly connected component of two or more modules, with the imports inside it.
    fn components(&self) -> Vec<Vec<String>> {
        let mut graph: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for m in &self.modules {
            graph.entry(m.as_str()).or_default();
        }
        for e in &self.edges {
            graph
                .entry(e.from.as_str())
                .or_default()
                .insert(e.to.as_str());
        }
        strongly_connected(&graph)
            .into_iter()
            .filter(|c| c.len() > 1)
            .map(|c| c.into_iter().map(str::to_string).collect())
            .collect()
    }

    /// A report of each circle: its modules and the imports that close it.
    fn circles(&self) -> Vec<String> {
        self.components()
            .into_iter()
            .map(|component| {
                let set: BTreeSet<&str> = component.iter().map(String::as_str).collect();
                let mut out = format!(
                    "{}: {} modules in a circle: {}\n",
                    self.name,
                    component.len(),
                    component.join(", ")
                );
                let mut by_pair: BTreeMap<(&str, &str), Vec<&str>> = BTreeMap::new();
                for e in &self.edges {
                    if set.contains(e.from.as_str()) && set.contains(e.to.as_str()) {
                        by_pair
                            .entry((e.from.as_str(), e.to.as_str()))
                            .or_default()
                            .push(e.at.as_str());
                    }
                }
                for ((from, to), at) in by_pair {
                    let more = if at.len() > 1 {
                        format!(" (+{} more)", at.len() - 1)
                    } else {
                        String::new()
                    };
                    let _ = writeln!(out, "    {from} -> {to}   {}{more}", at[0]);
                }
                out
            })
            .collect()
    }

    fn long_files(&self) -> Vec<(String, usize)> {
        self.logic
            .iter()
            .filter(|(path, lines)| {
                *lines > MAX_LOGIC_LINES && !path.ends_with("/tests.rs") && path != "tests.rs"
            })
            .cloned()
            .collect()
    }
}

/// Tarjan's algorithm; components in the order they complete, each sorted.
fn strongly_connected<'a>(graph: &BTreeMap<&'a str, BTreeSet<&'a str>>) -> Vec<Vec<&'a str>> {
    struct State<'a> {
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        out: Vec<Vec<&'a str>>,
    }
    fn visit<'a>(v: &'a str, graph: &BTreeMap<&'a str, BTreeSet<&'a str>>, s: &mut State<'a>) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on_stack.insert(v);
        for &w in graph.get(v).into_iter().flatten() {
            if !s.index.contains_key(w) {
                visit(w, graph, s);
                let lw = s.low[w];
                let lv = s.low[v];
                s.low.insert(v, lv.min(lw));
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low[v];
                s.low.insert(v, lv.min(iw));
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w);
                if w == v {
                    break;
                }
            }
            component.sort_unstable();
            s.out.push(component);
        }
    }
    let mut s = State {
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for &v in graph.keys() {
        if !s.index.contains_key(v) {
            visit(v, graph, &mut s);
        }
    }
    s.out
}

// ---------------------------------------------------------------------------------------------
// Reading one file

/// The text with comments removed and string and char literals blanked (each character of a
/// literal becomes `_`), line breaks kept so that line numbers stay right.
fn code_only(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let ident = |ch: char| ch.is_alphanumeric() || ch == '_';
    // Copies a literal from `from` to `to` (exclusive), blanked.
    let blank = |out: &mut String, lit: &[char]| {
        for &ch in lit {
            out.push(if ch == '\n' { '\n' } else { '_' });
        }
    };
    while i < c.len() {
        let prev_ident = i > 0 && ident(c[i - 1]);
        match c[i] {
            '/' if c.get(i + 1) == Some(&'/') => {
                while i < c.len() && c[i] != '\n' {
                    i += 1;
                }
            }
            '/' if c.get(i + 1) == Some(&'*') => {
                let mut depth = 0;
                while i < c.len() {
                    if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                        depth += 1;
                        i += 2;
                    } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        if c[i] == '\n' {
                            out.push('\n');
                        }
                        i += 1;
                    }
                }
            }
            'r' | 'b' if !prev_ident && raw_string_start(&c, i).is_some() => {
                let (hashes, open) = raw_string_start(&c, i).unwrap_or((0, i));
                let mut j = open + 1;
                loop {
                    if j >= c.len() {
                        break;
                    }
                    if c[j] == '"' && (1..=hashes).all(|k| c.get(j + k) == Some(&'#')) {
                        j += 1 + hashes;
                        break;
                    }
                    j += 1;
                }
                blank(&mut out, &c[i..j.min(c.len())]);
                i = j;
            }
            '"' => {
                let mut j = i + 1;
                while j < c.len() && c[j] != '"' {
                    j += if c[j] == '\\' { 2 } else { 1 };
                }
                let end = (j + 1).min(c.len());
                blank(&mut out, &c[i..end]);
                i = end;
            }
            '\'' => {
                // A char literal ('x', '\n', '\u{7f}'), or else a lifetime or label.
                let end = if c.get(i + 1) == Some(&'\\') {
                    let mut j = i + 2;
                    while j < c.len() && c[j] != '\'' && c[j] != '\n' {
                        j += 1;
                    }
                    Some(j + 1)
                } else if c.get(i + 2) == Some(&'\'') {
                    Some(i + 3)
                } else {
                    None
                };
                match end {
                    Some(end) => {
                        let end = end.min(c.len());
                        blank(&mut out, &c[i..end]);
                        i = end;
                    }
                    None => {
                        out.push('\'');
                        i += 1;
                    }
                }
            }
            ch => {
                out.push(ch);
                i += 1;
            }
        }
    }
    out
}

/// At `r"`, `r#"`, `br"`, `br#"`: the number of `#` and the index of the opening quote.
fn raw_string_start(c: &[char], i: usize) -> Option<(usize, usize)> {
    let mut j = i;
    if c.get(j) == Some(&'b') {
        j += 1;
    }
    if c.get(j) != Some(&'r') {
        return None;
    }
    j += 1;
    let mut hashes = 0;
    while c.get(j) == Some(&'#') {
        hashes += 1;
        j += 1;
    }
    (c.get(j) == Some(&'"')).then_some((hashes, j))
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    PathSep,
    Punct(char),
}

fn tokens(code: &str) -> Vec<(Tok, usize)> {
    let c: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut line = 1;
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch.is_alphabetic() || ch == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            out.push((Tok::Ident(c[start..i].iter().collect()), line));
        } else if ch == ':' && c.get(i + 1) == Some(&':') {
            out.push((Tok::PathSep, line));
            i += 2;
        } else {
            out.push((Tok::Punct(ch), line));
            i += 1;
        }
    }
    out
}

#[derive(Debug, Default)]
struct Scan {
    /// The top-level module each `crate::`/`super::` path lands in, with its line; only
    /// from code outside `#[cfg(test)]` modules.
    targets: Vec<(String, usize)>,
    /// Modules this file declares as `#[cfg(test)] mod x;`.
    test_mods: Vec<String>,
    /// The file starts with `#![cfg(test)]`.
    whole_file_is_test: bool,
    /// In the crate root: `use m::...::X;` (or `as X`) re-exports, as (X, m), so that
    /// `crate::X` elsewhere counts as an import of `m`.
    reexports: Vec<(String, String)>,
    logic_lines: usize,
}

fn is_ident(tok: Option<&(Tok, usize)>, name: &str) -> bool {
    matches!(tok, Some((Tok::Ident(n), _)) if n == name)
}

fn is_punct(tok: Option<&(Tok, usize)>, p: char) -> bool {
    matches!(tok, Some((Tok::Punct(q), _)) if *q == p)
}

fn is_sep(tok: Option<&(Tok, usize)>) -> bool {
    matches!(tok, Some((Tok::PathSep, _)))
}

/// `#[cfg(test)]` (or `#![cfg(test)]`) at `i`: the number of tokens and whether inner.
fn cfg_test_at(t: &[(Tok, usize)], i: usize) -> Option<(usize, bool)> {
    if !is_punct(t.get(i), '#') {
        return None;
    }
    let inner = is_punct(t.get(i + 1), '!');
    let j = i + 1 + usize::from(inner);
    let found = is_punct(t.get(j), '[')
        && is_ident(t.get(j + 1), "cfg")
        && is_punct(t.get(j + 2), '(')
        && is_ident(t.get(j + 3), "test")
        && is_punct(t.get(j + 4), ')')
        && is_punct(t.get(j + 5), ']');
    found.then_some((j + 6 - i, inner))
}

/// The name a root `use` at `j` (after `use`) makes `crate::<name>`, and its first module:
/// `use m::a::X;` -> (X, m), `use m::Y as Z;` -> (Z, m); groups and globs give none.
fn root_reexport(t: &[(Tok, usize)], mut j: usize) -> Option<(String, String)> {
    if is_ident(t.get(j), "crate") && is_sep(t.get(j + 1)) {
        j += 2;
    }
    let Some((Tok::Ident(first), _)) = t.get(j) else {
        return None;
    };
    let mut name = first.clone();
    let mut k = j + 1;
    loop {
        match t.get(k) {
            Some((Tok::PathSep, _)) => match t.get(k + 1) {
                Some((Tok::Ident(next), _)) => {
                    name = next.clone();
                    k += 2;
                }
                _ => return None,
            },
            Some((Tok::Ident(kw), _)) if kw == "as" => match t.get(k + 1) {
                Some((Tok::Ident(alias), _)) => {
                    name = alias.clone();
                    k += 2;
                }
                _ => return None,
            },
            Some((Tok::Punct(';'), _)) => break,
            _ => return None,
        }
    }
    (name != *first && name != "_").then(|| (name, first.clone()))
}

/// The first segments of the path that starts at `j` (after `crate::` or a `super::` chain
/// that reached the crate root): `x` -> [x], `{a::B, c}` -> [a, c].
fn first_segments(t: &[(Tok, usize)], j: usize) -> Vec<String> {
    match t.get(j) {
        Some((Tok::Ident(name), _)) if name != "self" => vec![name.clone()],
        Some((Tok::Punct('{'), _)) => {
            let mut out = Vec::new();
            let mut depth = 0;
            let mut k = j;
            while let Some((tok, _)) = t.get(k) {
                match tok {
                    Tok::Punct('{') => depth += 1,
                    Tok::Punct('}') => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    Tok::Ident(name)
                        if depth == 1
                            && name != "self"
                            && (is_punct(t.get(k - 1), '{') || is_punct(t.get(k - 1), ',')) =>
                    {
                        out.push(name.clone())
                    }
                    _ => {}
                }
                k += 1;
            }
            out
        }
        _ => Vec::new(),
    }
}

/// Reads one file whose module path is `path`.
fn scan(text: &str, path: &[String]) -> Scan {
    let code = code_only(text);
    let t = tokens(&code);
    let mut out = Scan::default();
    let mut test_lines: Vec<(usize, usize)> = Vec::new();
    // Inline modules open at this point: name, brace depth outside it, test?, first line.
    let mut inline: Vec<(String, usize, bool, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut pending_test: Option<usize> = None;
    let mut i = 0;
    while i < t.len() {
        let in_test = inline.iter().any(|m| m.2);
        if let Some((len, inner)) = cfg_test_at(&t, i) {
            if inner && depth == 0 && inline.is_empty() {
                out.whole_file_is_test = true;
            } else if !inner {
                pending_test = pending_test.or(Some(t[i].1));
            }
            i += len;
            continue;
        }
        match &t[i].0 {
            Tok::Ident(kw) if kw == "mod" => {
                if let Some((Tok::Ident(name), _)) = t.get(i + 1) {
                    if is_punct(t.get(i + 2), '{') {
                        let start = pending_test.unwrap_or(t[i].1);
                        inline.push((name.clone(), depth, pending_test.is_some(), start));
                        depth += 1;
                        pending_test = None;
                        i += 3;
                        continue;
                    }
                    if is_punct(t.get(i + 2), ';') {
                        if pending_test.is_some() && !in_test {
                            out.test_mods.push(name.clone());
                        }
                        pending_test = None;
                        i += 3;
                        continue;
                    }
                }
            }
            Tok::Punct('{') => {
                depth += 1;
                pending_test = None;
            }
            Tok::Punct(';') => pending_test = None,
            Tok::Punct('}') => {
                depth = depth.saturating_sub(1);
                if inline.last().is_some_and(|m| m.1 == depth) {
                    if let Some((_, _, test, start)) = inline.pop() {
                        if test {
                            test_lines.push((start, t[i].1));
                        }
                    }
                }
            }
            Tok::Ident(kw) if kw == "use" && path.is_empty() && depth == 0 && !in_test => {
                out.reexports.extend(root_reexport(&t, i + 1));
            }
            Tok::Ident(kw) if kw == "crate" || kw == "super" => {
                let after_sep = i > 0 && is_sep(t.get(i - 1));
                let macro_crate = i > 0 && is_punct(t.get(i - 1), '$');
                if !after_sep && !macro_crate && is_sep(t.get(i + 1)) {
                    let mut base: Vec<String> = path.to_vec();
                    base.extend(inline.iter().map(|m| m.0.clone()));
                    let mut j = i;
                    let mut ok = true;
                    if kw == "crate" {
                        base.clear();
                        j += 2;
                    } else {
                        while is_ident(t.get(j), "super") && is_sep(t.get(j + 1)) {
                            if base.pop().is_none() {
                                ok = false;
                            }
                            j += 2;
                        }
                    }
                    if ok && !in_test {
                        let line = t[i].1;
                        match base.first() {
                            Some(top) => out.targets.push((top.clone(), line)),
                            None => out
                                .targets
                                .extend(first_segments(&t, j).into_iter().map(|s| (s, line))),
                        }
                    }
                    i = j;
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
    }
    out.logic_lines = code
        .lines()
        .enumerate()
        .filter(|(n, line)| {
            let n = n + 1;
            !line.trim().is_empty() && !test_lines.iter().any(|&(a, b)| a <= n && n <= b)
        })
        .count();
    out
}

/// Lines with an `#[allow(...)]` or `#![allow(...)]` attribute (also inside `cfg_attr`).
fn allow_attributes(text: &str) -> Vec<usize> {
    let code = code_only(text);
    let t = tokens(&code);
    let mut lines = Vec::new();
    for i in 0..t.len() {
        if !is_punct(t.get(i), '#') {
            continue;
        }
        let j = i + 1 + usize::from(is_punct(t.get(i + 1), '!'));
        if !is_punct(t.get(j), '[') {
            continue;
        }
        let mut k = j + 1;
        let mut depth = 1;
        while let Some((tok, _)) = t.get(k) {
            match tok {
                Tok::Punct('[') => depth += 1,
                Tok::Punct(']') => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                Tok::Ident(name) if name == "allow" && is_punct(t.get(k + 1), '(') => {
                    lines.push(t[i].1);
                    break;
                }
                _ => {}
            }
            k += 1;
        }
    }
    lines
}

/// Each `x.rs` that has a folder `x/` of `.rs` files beside it.
fn file_beside_folder(paths: &[PathBuf]) -> Vec<(PathBuf, PathBuf)> {
    let set: BTreeSet<&Path> = paths.iter().map(PathBuf::as_path).collect();
    let folders: BTreeSet<&Path> = paths.iter().filter_map(|p| p.parent()).collect();
    let mut out = Vec::new();
    for p in &set {
        if p.extension().is_some_and(|e| e == "rs") {
            let folder = p.with_extension("");
            if folders.contains(folder.as_path()) {
                out.push((p.to_path_buf(), folder));
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The checker on small fixtures

fn fixture(files: &[(&str, &str)]) -> Unit {
    let files = files
        .iter()
        .map(|(rel, text)| {
            let (_, path) = module_path(Path::new(rel));
            (path, format!("src/{rel}"), *text)
        })
        .collect();
    Unit::new("fixture".into(), files)
}

#[test]
fn checker_finds_a_circle_through_crate_super_and_use_groups() {
    let unit = fixture(&[
        ("lib.rs", "mod a;\nmod b;\nmod c;\nmod d;\n"),
        ("a.rs", "use crate::{b::Thing, d};\n"),
        ("b/mod.rs", "mod inner;\n"),
        ("b/inner.rs", "use super::super::c::X;\n"),
        ("c.rs", "pub fn f() {\n    crate::a::g()\n}\n"),
        ("d.rs", "pub fn leaf() {}\n"),
    ]);
    assert_eq!(
        unit.components(),
        vec![vec!["a".to_string(), "b".into(), "c".into()]]
    );
    let circles = unit.circles();
    assert_eq!(circles.len(), 1);
    let report = &circles[0];
    assert!(report.contains("a -> b   src/a.rs:1"), "{report}");
    assert!(report.contains("b -> c   src/b/inner.rs:1"), "{report}");
    assert!(report.contains("c -> a   src/c.rs:2"), "{report}");
    assert!(!report.contains("-> d"), "d is not in the circle: {report}");
}

#[test]
fn checker_follows_a_path_through_a_root_reexport() {
    let unit = fixture(&[
        (
            "lib.rs",
            "mod a;\nmod b;\npub(crate) use b::inner::Thing as Alias;\nuse a::Other;\n",
        ),
        (
            "a.rs",
            "pub fn f() -> crate::Alias { todo!() }\npub struct Other;\n",
        ),
        ("b/mod.rs", "pub mod inner;\n"),
        (
            "b/inner.rs",
            "pub struct Thing;\npub fn g() { crate::a::f(); }\n",
        ),
    ]);
    assert_eq!(unit.components(), vec![vec!["a".to_string(), "b".into()]]);
    let report = &unit.circles()[0];
    assert!(report.contains("a -> b   src/a.rs:1"), "{report}");
}

#[test]
fn checker_is_not_fooled_by_comments_strings_tests_or_local_super() {
    let unit = fixture(&[
        ("lib.rs", "mod a;\nmod b;\n"),
        ("a.rs", "use crate::b::B;\n"),
        (
            "b/mod.rs",
            r##"//! Links to [`crate::a`] in docs do not count.
mod inner;
#[cfg(test)]
mod fuzz;
/* use crate::a; */
pub(crate) fn f() -> &'static str { "crate::a::x" }
const R: &str = r#"super::a"#;
const C: char = '{';
macro_rules! m { () => { $crate::a::x() } }
pub struct B;
#[cfg(test)]
mod tests {
    use super::*;
    use crate::a;
}
"##,
        ),
        (
            "b/inner.rs",
            "use super::B;\nmod deeper {\n    use super::super::B;\n}\n",
        ),
        ("b/fuzz.rs", "use crate::a::Something;\n"),
    ]);
    assert_eq!(
        unit.components(),
        Vec::<Vec<String>>::new(),
        "{:?}",
        unit.edges
    );
    assert_eq!(
        unit.edges
            .iter()
            .map(|e| (&*e.from, &*e.to))
            .collect::<Vec<_>>(),
        vec![("a", "b")]
    );
}

#[test]
fn checker_counts_lines_of_logic_without_comments_blanks_or_the_test_module() {
    let mut text = String::from("//! Module docs.\n\nuse std::fmt;\n\n");
    for n in 0..3 {
        text.push_str(&format!(
            "// why\nfn f{n}() {{\n    let s = \"a\nb\";\n}}\n\n"
        ));
    }
    text.push_str("#[cfg(test)]\nmod tests {\n    #[test]\n    fn t() {}\n}\n");
    let scan = scan(&text, &["a".to_string()]);
    // `use` + 3 x (fn, let line, string's second line, closing brace).
    assert_eq!(scan.logic_lines, 1 + 3 * 4);

    let long = "fn f() {}\n".repeat(MAX_LOGIC_LINES + 1);
    let unit = fixture(&[
        ("lib.rs", "mod a;\n"),
        ("a.rs", &long),
        ("a/tests.rs", &long),
    ]);
    assert_eq!(
        unit.long_files(),
        vec![("src/a.rs".to_string(), MAX_LOGIC_LINES + 1)]
    );
}

#[test]
fn checker_finds_allow_attributes_but_not_expect_or_calls_named_allow() {
    let text = "#![allow(dead_code)]\n#[expect(clippy::unwrap_used, reason = \"x\")]\nfn f() { allow(vec![]); }\n#[cfg_attr(test, allow(unused))]\nfn g() {}\n// #[allow(x)]\n";
    assert_eq!(allow_attributes(text), vec![1, 4]);
}

#[test]
fn checker_finds_a_file_beside_its_folder() {
    let paths: Vec<PathBuf> = [
        "src/lib.rs",
        "src/api.rs",
        "src/api/chat.rs",
        "src/budget/mod.rs",
        "src/budget.txt",
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    assert_eq!(
        file_beside_folder(&paths),
        vec![(PathBuf::from("src/api.rs"), PathBuf::from("src/api"))]
    );
}

#[test]
fn module_paths_follow_the_file_tree() {
    let cases: &[(&str, Option<&str>, &[&str])] = &[
        ("lib.rs", None, &[]),
        ("main.rs", None, &[]),
        ("a.rs", None, &["a"]),
        ("a/mod.rs", None, &["a"]),
        ("a/b.rs", None, &["a", "b"]),
        ("bin/loadgen.rs", Some("loadgen"), &[]),
        ("bin/loadgen/main.rs", Some("loadgen"), &[]),
        ("bin/loadgen/args.rs", Some("loadgen"), &["args"]),
    ];
    for (rel, bin, path) in cases {
        let (b, p) = module_path(Path::new(rel));
        assert_eq!(b.as_deref(), *bin, "{rel}");
        assert_eq!(
            p,
            path.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            "{rel}"
        );
    }
}
