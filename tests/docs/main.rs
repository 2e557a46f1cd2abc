//! The repository stands on its own: every reference of the form `docs/<page>.md` or
//! `docs/<page>.md#<heading>` in the code, scripts and Markdown names a page in `docs/` and a
//! heading on it, every relative link in `docs/*.md` and `README.md` resolves, the index
//! (`docs/README.md`) links every page, and no file refers to notes that live outside the
//! repository. Anchors follow GitHub's rule for heading ids (lowercase; punctuation other than
//! `-` and `_` dropped; spaces become `-`; a repeated heading gets `-1`, `-2`, ...).
//!
//! Only std: the checks are plain text scans, so this target builds in seconds on top of the
//! crate's dependencies.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Folders whose files are scanned for references (recursively; `target/` and hidden folders
/// are skipped), besides the files at the root and `docs/` itself.
const SCANNED_DIRS: [&str; 9] = [
    "api-spec", "daemon", "client", "trainer", "tests", "examples", "systemd", "fuzz", ".ci",
];
/// Extensions of the files scanned.
const SCANNED_EXTS: [&str; 5] = ["rs", "toml", "sh", "py", "md"];

/// Names of notes that are not part of the repository. Built from pieces so that this file
/// does not contain them.
fn outside_notes() -> [String; 3] {
    [
        format!("{}.md", "DESIGN"),
        format!("{}.md", "orpo-reference"),
        format!("{}/shared", ".."),
    ]
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lies in the workspace root")
        .to_path_buf()
}

// ---------------------------------------------------------------------------------------------
// Text scanning: pure functions, tested below on text made up for the purpose.

/// A `docs/<page>.md[#anchor]` reference found in a text, with its 1-based line.
#[derive(Debug, PartialEq, Eq)]
struct Reference {
    line: usize,
    page: String,
    anchor: Option<String>,
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')
}

fn is_anchor_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '-')
}

/// Every `docs/<page>.md` reference in `text`, with the `#anchor` that follows it. A `docs/`
/// that continues a longer path or word (`trainer/docs/`, `mydocs/`) is not one.
fn references(text: &str) -> Vec<Reference> {
    let mut out = Vec::new();
    for (at, _) in text.match_indices("docs/") {
        let before = text[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || matches!(c, '/' | '.' | '_' | '-')) {
            continue;
        }
        let rest = &text[at + "docs/".len()..];
        let name_len = rest.find(|c| !is_name_char(c)).unwrap_or(rest.len());
        // A sentence may end right after the name: "see docs/orpo.md."
        let name = rest[..name_len].trim_end_matches('.');
        let Some(stem) = name.strip_suffix(".md") else {
            continue;
        };
        if stem.is_empty() {
            continue;
        }
        let after = &rest[name.len()..];
        let anchor = after.strip_prefix('#').map(|a| {
            let len = a.find(|c| !is_anchor_char(c)).unwrap_or(a.len());
            a[..len].to_string()
        });
        out.push(Reference {
            line: text[..at].matches('\n').count() + 1,
            page: name.to_string(),
            anchor,
        });
    }
    out
}

/// GitHub's id for a heading's text.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// `line` without inline code spans, and with links `[text](target)` reduced to their text.
fn heading_text(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ']' && chars.peek() == Some(&'(') {
            for c in chars.by_ref() {
                if c == ')' {
                    break;
                }
            }
            continue;
        }
        if c != '[' && c != '`' {
            out.push(c);
        }
    }
    out
}

/// The lines of a Markdown text that are not inside fenced code blocks, with their 1-based
/// numbers.
fn prose_lines(markdown: &str) -> Vec<(usize, &str)> {
    let mut fence: Option<&str> = None;
    let mut out = Vec::new();
    for (i, line) in markdown.lines().enumerate() {
        let trimmed = line.trim_start();
        let marker = ["```", "~~~"].into_iter().find(|m| trimmed.starts_with(m));
        match (fence, marker) {
            (None, Some(m)) => fence = Some(m),
            (Some(open), Some(m)) if open == m => fence = None,
            (None, None) => out.push((i + 1, line)),
            _ => {}
        }
    }
    out
}

/// The ids of every heading of a Markdown text, repeated headings numbered as GitHub does.
fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeSet::new();
    for (_, line) in prose_lines(markdown) {
        let hashes = line.chars().take_while(|&c| c == '#').count();
        if !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
            continue;
        }
        let text = line[hashes..].trim().trim_end_matches('#');
        let base = slug(&heading_text(text));
        let n = seen.entry(base.clone()).or_insert(0);
        out.insert(if *n == 0 {
            base.clone()
        } else {
            format!("{base}-{n}")
        });
        *n += 1;
    }
    out
}

/// The targets of the inline links `[text](target)` of a Markdown text, with their lines;
/// code (fenced or inline) is skipped.
fn links(markdown: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (number, line) in prose_lines(markdown) {
        let mut prose = String::new();
        for (i, part) in line.split('`').enumerate() {
            if i % 2 == 0 {
                prose.push_str(part);
            }
        }
        for (at, _) in prose.match_indices("](") {
            let rest = &prose[at + 2..];
            let end = rest.find([')', ' ']).unwrap_or(rest.len());
            out.push((number, rest[..end].to_string()));
        }
    }
    out
}

/// The pages of `docs/` by file name, each with its headings' ids.
struct Docs {
    pages: BTreeMap<String, BTreeSet<String>>,
}

impl Docs {
    fn load(dir: &Path) -> Docs {
        let mut pages = BTreeMap::new();
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "md") {
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                pages.insert(name, anchors(&read(&path)));
            }
        }
        Docs { pages }
    }

    /// What is wrong with a reference to `page` and `anchor`, if anything.
    fn check(&self, page: &str, anchor: Option<&str>) -> Option<String> {
        let Some(ids) = self.pages.get(page) else {
            return Some(format!("docs/{page} does not exist"));
        };
        match anchor {
            Some(a) if !ids.contains(a) => Some(format!(
                "docs/{page} has no heading with the id #{a} (ids: {})",
                ids.iter().cloned().collect::<Vec<_>>().join(", ")
            )),
            _ => None,
        }
    }

    /// Problems with the `docs/` references in `text` (named `label` in the messages).
    fn check_text(&self, label: &str, text: &str) -> Vec<String> {
        references(text)
            .into_iter()
            .filter_map(|r| {
                self.check(&r.page, r.anchor.as_deref())
                    .map(|why| format!("{label}:{}: {why}", r.line))
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// The repository.

fn read(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    String::from_utf8_lossy(&bytes).into_owned()
}

fn scanned(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| SCANNED_EXTS.contains(&e))
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let entry = entry.unwrap();
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            if name != "target" && !name.starts_with('.') {
                walk(&path, out);
            }
        } else if kind.is_file() && scanned(&path) {
            out.push(path);
        }
    }
}

/// Every file the checks read: the root's own files, `docs/`, and the scanned folders.
fn files() -> Vec<PathBuf> {
    let root = root();
    let mut out: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && scanned(p))
        .collect();
    walk(&root.join("docs"), &mut out);
    for dir in SCANNED_DIRS {
        walk(&root.join(dir), &mut out);
    }
    out.sort();
    out
}

fn relative(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string()
}

fn assert_none(what: &str, problems: Vec<String>) {
    assert!(problems.is_empty(), "{what}:\n  {}", problems.join("\n  "));
}

#[test]
fn docs_references_name_pages_and_headings_that_exist() {
    let docs = Docs::load(&root().join("docs"));
    let files = files();
    assert!(
        files.len() > 100,
        "the scan found only {} files; is the root right?",
        files.len()
    );
    let problems = files
        .iter()
        .flat_map(|f| docs.check_text(&relative(f), &read(f)))
        .collect();
    assert_none("references to docs/ that point nowhere", problems);
}

#[test]
fn links_in_the_docs_resolve() {
    let root = root();
    let docs = Docs::load(&root.join("docs"));
    let mut pages: Vec<PathBuf> = docs
        .pages
        .keys()
        .map(|name| root.join("docs").join(name))
        .collect();
    pages.push(root.join("README.md"));
    let mut problems = Vec::new();
    for page in &pages {
        let text = read(page);
        let dir = page.parent().unwrap();
        for (line, target) in links(&text) {
            if ["http://", "https://", "mailto:"]
                .iter()
                .any(|scheme| target.starts_with(scheme))
            {
                continue;
            }
            let (path, anchor) = match target.split_once('#') {
                Some((path, anchor)) => (path, Some(anchor)),
                None => (target.as_str(), None),
            };
            let file = if path.is_empty() {
                page.clone()
            } else {
                dir.join(path)
            };
            let at = format!("{}:{line}: link {target:?}", relative(page));
            if !file.exists() {
                problems.push(format!("{at}: {} does not exist", relative(&file)));
                continue;
            }
            if let Some(anchor) = anchor {
                let is_markdown = file.extension().is_some_and(|e| e == "md");
                if is_markdown && !anchors(&read(&file)).contains(anchor) {
                    problems.push(format!(
                        "{at}: {} has no heading with the id #{anchor}",
                        relative(&file)
                    ));
                }
            }
        }
    }
    assert_none("links that point nowhere", problems);
}

#[test]
fn the_index_links_every_page() {
    let dir = root().join("docs");
    let docs = Docs::load(&dir);
    let linked: BTreeSet<String> = links(&read(&dir.join("README.md")))
        .into_iter()
        .map(|(_, target)| target.split('#').next().unwrap_or_default().to_string())
        .collect();
    let missing: Vec<String> = docs
        .pages
        .keys()
        .filter(|p| p.as_str() != "README.md" && !linked.contains(p.as_str()))
        .map(|p| format!("docs/README.md does not link {p}"))
        .collect();
    assert_none("pages missing from the index", missing);
}

#[test]
fn nothing_refers_to_notes_outside_the_repository() {
    let notes = outside_notes();
    let mut problems = Vec::new();
    for file in files() {
        for (i, line) in read(&file).lines().enumerate() {
            for note in &notes {
                if line.contains(note.as_str()) {
                    problems.push(format!(
                        "{}:{}: refers to {note}, which is not in the repository; point at \
                         the matching page of docs/ instead",
                        relative(&file),
                        i + 1
                    ));
                }
            }
        }
    }
    assert_none("references to notes outside the repository", problems);
}

// ---------------------------------------------------------------------------------------------
// The checker itself, on made-up text: it must find what it is meant to find.

/// A `docs/` reference to `page` written without the literal prefix, so that this file holds
/// no broken reference of its own.
fn made_up(page: &str) -> String {
    format!("{}/{page}", "docs")
}

fn made_up_docs() -> Docs {
    let page =
        "# Title\n\n## The loss\n\n```sh\n# not a heading\n```\n\n## Metrics (TRL's names)\n\
                \n## Metrics (TRL's names)\n### `data.max_length`\n";
    Docs {
        pages: BTreeMap::from([("orpo.md".to_string(), anchors(page))]),
    }
}

#[test]
fn headings_get_githubs_ids() {
    assert_eq!(slug("The client (orpoctl)"), "the-client-orpoctl");
    assert_eq!(
        slug("Where orpod differs from TRL's defaults"),
        "where-orpod-differs-from-trls-defaults"
    );
    assert_eq!(slug("Speed & memory: 2x"), "speed--memory-2x");
    assert_eq!(
        slug("snake_case and kebab-case"),
        "snake_case-and-kebab-case"
    );
    let ids = made_up_docs().pages.remove("orpo.md").unwrap();
    let want = [
        "title",
        "the-loss",
        "metrics-trls-names",
        "metrics-trls-names-1",
        "datamax_length",
    ];
    assert_eq!(
        ids,
        want.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>()
    );
}

#[test]
fn the_checker_reports_missing_pages_and_headings() {
    let docs = made_up_docs();
    let good = format!(
        "//! See {}, {}.\n// and ({})",
        made_up("orpo.md#the-loss"),
        made_up("orpo.md"),
        made_up("orpo.md#metrics-trls-names-1")
    );
    assert_eq!(docs.check_text("good.rs", &good), Vec::<String>::new());

    let bad = format!(
        "first line\n# {}\n// {}: and {}",
        made_up("nope.md"),
        made_up("orpo.md#no-such-heading"),
        made_up("orpo.md#not-a-heading")
    );
    let problems = docs.check_text("bad.rs", &bad);
    assert_eq!(problems.len(), 3, "{problems:#?}");
    let missing = format!("bad.rs:2: {} does not exist", made_up("nope.md"));
    assert!(problems[0].starts_with(&missing), "{problems:#?}");
    let no_heading = format!(
        "bad.rs:3: {} has no heading with the id #no-such-heading",
        made_up("orpo.md")
    );
    assert!(problems[1].starts_with(&no_heading), "{problems:#?}");
    assert!(problems[2].contains("#not-a-heading"));
}

#[test]
fn only_real_references_are_picked_up() {
    let text = format!(
        "trainer/{a} my{a} https://example.invalid/{a} {b} {c} `{d}`",
        a = made_up("orpo.md"),
        b = made_up("source/x.md"),
        c = made_up(""),
        d = made_up("<page>.md#<heading>"),
    );
    assert_eq!(references(&text), vec![]);
    let text = format!("see {}.", made_up("design.md"));
    assert_eq!(
        references(&text),
        vec![Reference {
            line: 1,
            page: "design.md".into(),
            anchor: None
        }]
    );
    let md = "[a](design.md#x) `[b](code.md)`\n```\n[c](fenced.md)\n```\n[d](https://x.invalid/y)";
    let found: Vec<String> = links(md).into_iter().map(|(_, t)| t).collect();
    assert_eq!(found, ["design.md#x", "https://x.invalid/y"]);
}
