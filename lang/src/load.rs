//! Loading a policy and everything it imports: files relative to the importing file, stdlib
//! modules from inside the binary, each file parsed once, import cycles reported (E009).
//!
//! The root file is always [`FileId`]`(0)`; the others follow in the order they were first
//! imported (depth first). Loading never stops at the first problem: a file that cannot be
//! read is reported at the `import` that names it, and the rest is still loaded.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::ast::{DeclKind, File, ImportTarget};
use crate::diag::{did_you_mean, Code, Diagnostic};
use crate::parse::parse_file;
use crate::source::{FileId, SourceFile, SourceMap, Span};

/// The stdlib modules shipped inside the binary: `import std.NAME` loads `stdlib/NAME.nvr`.
pub const STDLIB: &[(&str, &str)] = &[
    ("ports", include_str!("../../stdlib/ports.nvr")),
    ("nets", include_str!("../../stdlib/nets.nvr")),
    ("tcp", include_str!("../../stdlib/tcp.nvr")),
    ("dpi", include_str!("../../stdlib/dpi.nvr")),
];

/// One loaded file: its syntax tree and the files its `import`s resolved to.
#[derive(Debug, Clone)]
pub struct LoadedFile {
    pub id: FileId,
    pub ast: File,
    /// The files this one imports directly, in order (unloadable imports left out).
    pub imports: Vec<FileId>,
}

/// A root file and its imports.
#[derive(Debug, Clone, Default)]
pub struct Program {
    pub sources: SourceMap,
    pub files: Vec<LoadedFile>,
}

/// Where the root's text comes from.
pub enum RootSource {
    /// A file on disk.
    Path(PathBuf),
    /// Text that is not a file (the REPL, tests); imports are relative to `dir`.
    Text {
        name: String,
        text: String,
        dir: PathBuf,
    },
    /// A stdlib module by name (`netvm test std.dpi`).
    Std(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum FileKey {
    Disk(PathBuf),
    Std(String),
    Text,
}

struct Loader {
    program: Program,
    diags: Vec<Diagnostic>,
    by_key: HashMap<FileKey, FileId>,
    /// Files whose imports are being loaded (for cycle detection), innermost last.
    stack: Vec<FileId>,
}

/// Loads the root and everything it imports. An unreadable root is returned as `Err`.
pub fn load(root: RootSource) -> Result<(Program, Vec<Diagnostic>), String> {
    let mut loader = Loader {
        program: Program::default(),
        diags: Vec::new(),
        by_key: HashMap::new(),
        stack: Vec::new(),
    };
    let (key, name, text, dir) = match root {
        RootSource::Path(path) => {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
            let canonical = path.canonicalize().unwrap_or_else(|_| path.clone());
            let dir = canonical
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default();
            (
                FileKey::Disk(canonical),
                path.display().to_string(),
                text,
                Some(dir),
            )
        }
        RootSource::Text { name, text, dir } => (FileKey::Text, name, text, Some(dir)),
        RootSource::Std(module) => {
            let text = std_text(&module).ok_or_else(|| {
                format!(
                    "there is no stdlib module `std.{module}` (the modules are {})",
                    std_names()
                )
            })?;
            (
                FileKey::Std(module.clone()),
                std_file_name(&module),
                text.to_string(),
                None,
            )
        }
    };
    let path = match &key {
        FileKey::Disk(p) => Some(p.clone()),
        _ => None,
    };
    loader.add(key, SourceFile::new(name, path, text), dir);
    Ok((loader.program, loader.diags))
}

fn std_text(module: &str) -> Option<&'static str> {
    STDLIB.iter().find(|(n, _)| *n == module).map(|(_, t)| *t)
}

fn std_names() -> String {
    STDLIB
        .iter()
        .map(|(n, _)| format!("std.{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn std_file_name(module: &str) -> String {
    format!("<std>/{module}.nvr")
}

impl Loader {
    /// Adds a file, parses it and loads its imports (depth first).
    fn add(&mut self, key: FileKey, source: SourceFile, dir: Option<PathBuf>) -> FileId {
        let text = source.text.clone();
        let id = self.program.sources.add(source);
        if key != FileKey::Text {
            self.by_key.insert(key, id);
        }
        let (ast, diags) = parse_file(id, &text);
        self.diags.extend(diags);
        self.program.files.push(LoadedFile {
            id,
            ast,
            imports: Vec::new(),
        });
        self.stack.push(id);
        let targets: Vec<(ImportTarget, Span)> = self.program.files[id.0 as usize]
            .ast
            .decls
            .iter()
            .filter_map(|d| match &d.kind {
                DeclKind::Import(t) => Some((t.clone(), d.span())),
                _ => None,
            })
            .collect();
        let mut imports = Vec::new();
        for (target, span) in targets {
            if let Some(imported) = self.import(&target, span, dir.as_deref()) {
                if !imports.contains(&imported) {
                    imports.push(imported);
                }
            }
        }
        self.stack.pop();
        self.program.files[id.0 as usize].imports = imports;
        id
    }

    fn import(&mut self, target: &ImportTarget, span: Span, dir: Option<&Path>) -> Option<FileId> {
        let (key, name, path, text, next_dir) = match target {
            ImportTarget::Std(module) => {
                let Some(text) = std_text(&module.text) else {
                    let names: Vec<&str> = STDLIB.iter().map(|(n, _)| *n).collect();
                    let mut diag = Diagnostic::new(
                        Code::Import,
                        module.span(),
                        format!("there is no stdlib module `std.{}`", module.text),
                    )
                    .label("unknown module");
                    diag = match did_you_mean(&module.text, names) {
                        Some(s) => diag.help(format!("did you mean `std.{s}`?")),
                        None => diag.help(format!("the stdlib modules are {}", std_names())),
                    };
                    self.diags.push(diag);
                    return None;
                };
                (
                    FileKey::Std(module.text.clone()),
                    std_file_name(&module.text),
                    None,
                    Some(text.to_string()),
                    None,
                )
            }
            ImportTarget::File { path, loc } => {
                let Some(dir) = dir else {
                    self.diags.push(Diagnostic::new(
                        Code::Import,
                        loc.0,
                        "a stdlib module cannot import files",
                    ));
                    return None;
                };
                let full = dir.join(path);
                let canonical = full.canonicalize().ok();
                let key = FileKey::Disk(canonical.clone().unwrap_or_else(|| full.clone()));
                let text = if self.by_key.contains_key(&key) {
                    None
                } else {
                    match std::fs::read_to_string(&full) {
                        Ok(t) => Some(t),
                        Err(e) => {
                            self.diags.push(
                                Diagnostic::new(
                                    Code::Import,
                                    loc.0,
                                    format!("cannot import `{path}`: {e}"),
                                )
                                .label(format!("looked for {}", display_path(&full)))
                                .help("file imports are relative to the importing file"),
                            );
                            return None;
                        }
                    }
                };
                let next_dir = canonical
                    .as_deref()
                    .and_then(Path::parent)
                    .map(Path::to_path_buf);
                (key, display_path(&full), canonical, text, next_dir)
            }
        };
        if let Some(&existing) = self.by_key.get(&key) {
            if let Some(pos) = self.stack.iter().position(|&f| f == existing) {
                let cycle: Vec<String> = self.stack[pos..]
                    .iter()
                    .chain(std::iter::once(&existing))
                    .map(|f| self.program.sources.get(*f).name.clone())
                    .collect();
                self.diags.push(
                    Diagnostic::new(
                        Code::ImportCycle,
                        span,
                        format!("import cycle: {}", cycle.join(" -> ")),
                    )
                    .label("this import closes the cycle")
                    .help("move the shared declarations into a third file that both import"),
                );
                return None;
            }
            return Some(existing);
        }
        let text = text?;
        Some(self.add(key, SourceFile::new(name, path, text), next_dir))
    }
}

/// The path relative to the working directory when it lies below it, as the operator typed it.
fn display_path(path: &Path) -> String {
    let cwd = std::env::current_dir().ok();
    // A missing file has no canonical form; its directory may.
    let canonical = path.canonicalize().unwrap_or_else(|_| {
        match (
            path.parent().and_then(|d| d.canonicalize().ok()),
            path.file_name(),
        ) {
            (Some(dir), Some(name)) => dir.join(name),
            _ => path.to_path_buf(),
        }
    });
    let shown = cwd
        .and_then(|cwd| canonical.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .unwrap_or(canonical);
    shown.display().to_string()
}
