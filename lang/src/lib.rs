//! The `.nvr` policy language: text → checked [`Policy`].
//!
//! The stages, in order: [`parse`] (pest grammar → [`ast`], literals decoded), [`load`]
//! (imports: files relative to the importer, stdlib modules built in, cycles reported),
//! [`check`] (names resolved per file scope, values typed against the field catalogue, `let`s
//! inlined, warnings) → [`policy`]. [`print`] turns a syntax tree back into canonical text
//! (`netvm fmt`); [`import`] converts other tools' rule sets into `.nvr` text. Every problem is a [`diag::Diagnostic`] with a code, a span and, where one is
//! knowable, a fix; all of them are collected, never just the first.
//!
//! This crate knows nothing of machine code, interpreters or packets in flight: the compiler
//! crate takes a [`Policy`] from here.

pub mod ast;
pub mod check;
pub mod diag;
pub mod import;
pub mod interval;
pub mod load;
pub mod parse;
pub mod policy;
pub mod print;
pub mod source;

use std::path::PathBuf;

pub use diag::{Code, Diagnostic, Severity};

/// How deep a predicate may nest (E019): parentheses and `not`s as written, and
/// `and`/`or`/`not` levels once `let`s are inlined. Every stage after the parser (checker,
/// shadow analysis, lowering, the JIT, the interpreter, the printer) walks predicates
/// recursively; this bound keeps those walks well inside a 2 MiB thread stack, so a
/// policy that `check` accepts cannot overflow the thread that compiles it.
pub const MAX_NESTING: usize = 128;
pub use interval::IntervalSet;
pub use load::{Program, RootSource};
pub use policy::Policy;
pub use source::{FileId, SourceMap, Span};

/// The outcome of checking one root file: the checked policy (when there are no errors) and
/// every diagnostic, in file and source order.
#[derive(Debug, Clone)]
pub struct Checked {
    pub program: Program,
    pub policy: Option<Policy>,
    pub diagnostics: Vec<Diagnostic>,
}

impl Checked {
    pub fn sources(&self) -> &SourceMap {
        &self.program.sources
    }

    pub fn error_count(&self) -> usize {
        self.diagnostics.iter().filter(|d| d.is_error()).count()
    }

    pub fn warning_count(&self) -> usize {
        self.diagnostics
            .iter()
            .filter(|d| d.severity() == Severity::Warning)
            .count()
    }
}

/// Loads, parses and checks a root. `Err` only when the root itself cannot be read.
pub fn check(root: RootSource) -> Result<Checked, String> {
    let (program, mut diagnostics) = load::load(root)?;
    let (policy, check_diags) = check::check(&program);
    diagnostics.extend(check_diags);
    diagnostics.sort_by_key(|d| (d.span.file, d.span.start));
    let policy = if diagnostics.iter().any(Diagnostic::is_error) {
        None
    } else {
        policy
    };
    Ok(Checked {
        program,
        policy,
        diagnostics,
    })
}

/// Checks a file on disk.
pub fn check_path(path: impl Into<PathBuf>) -> Result<Checked, String> {
    check(RootSource::Path(path.into()))
}

/// Checks policy text that is not a file; its imports are relative to the working directory.
pub fn check_text(name: &str, text: &str) -> Checked {
    let root = RootSource::Text {
        name: name.to_string(),
        text: text.to_string(),
        dir: std::env::current_dir().unwrap_or_default(),
    };
    check(root).expect("text roots always load")
}
