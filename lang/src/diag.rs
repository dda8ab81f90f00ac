//! Diagnostics: what went wrong, where, and how to fix it.
//!
//! Every diagnostic carries a stable code (`E005`, `W001`, ...; the catalogue is [`Code`]), a
//! primary span, optional secondary labels and an optional help line. Rendering follows rustc's
//! form (`error[E005]: message` / `--> file:line:col` / the source line with the span
//! underlined / `= help: ...`) through `annotate-snippets`, or one JSON object per diagnostic for
//! CI annotations.

use crate::source::{SourceMap, Span};
use annotate_snippets::{Level, Renderer, Snippet};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Information that needs no change (N001); never fails a check.
    Note,
    Warning,
    Error,
}

/// The catalogue of diagnostic codes. Codes are stable: tests and CI annotations key on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    /// E001: the text does not parse.
    Syntax,
    /// E002: a name that is not declared.
    UnknownName,
    /// E003: a name declared twice.
    Duplicate,
    /// E004: a field that is not in the catalogue.
    UnknownField,
    /// E005: a value of the wrong type for where it is used.
    TypeMismatch,
    /// E006: a value outside its type's range (or an empty range).
    OutOfRange,
    /// E007: a prefix with host bits set.
    HostBits,
    /// E008: an import that cannot be loaded.
    Import,
    /// E009: files that import each other.
    ImportCycle,
    /// E010: more than one of drop/out/to/chain/balance in a rule.
    ActionConflict,
    /// E011: a name of the wrong kind (a group where a vm is needed, ...).
    WrongKind,
    /// E012: a regex that does not compile.
    BadRegex,
    /// E013: a malformed literal (escape, integer, address, MAC).
    BadLiteral,
    /// E014: a test case that cannot be built or names no rule.
    BadTestCase,
    /// E015: a malformed chain.
    BadChain,
    /// E016: two `default` declarations.
    DuplicateDefault,
    /// E017: a `let` or `const` that refers to itself.
    Recursive,
    /// E018: a vm's `on_failure` names no known policy, or is given twice.
    BadFailurePolicy,
    /// E019: a predicate nested deeper than [`crate::MAX_NESTING`] (parentheses, `not`s, or
    /// `and`/`or` once `let`s are inlined).
    TooDeep,
    /// N001: a file's own declaration shadows a name one of its imports declares.
    ShadowsImport,
    /// W001: a rule that an earlier rule fully covers.
    Shadowed,
    /// W002: a const or let that nothing uses.
    Unused,
    /// W003: a vm that no rule reaches.
    UnreachedVm,
    /// W004: a rule with no forwarding action (its packets are dropped).
    NoFate,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Syntax => "E001",
            Code::UnknownName => "E002",
            Code::Duplicate => "E003",
            Code::UnknownField => "E004",
            Code::TypeMismatch => "E005",
            Code::OutOfRange => "E006",
            Code::HostBits => "E007",
            Code::Import => "E008",
            Code::ImportCycle => "E009",
            Code::ActionConflict => "E010",
            Code::WrongKind => "E011",
            Code::BadRegex => "E012",
            Code::BadLiteral => "E013",
            Code::BadTestCase => "E014",
            Code::BadChain => "E015",
            Code::DuplicateDefault => "E016",
            Code::Recursive => "E017",
            Code::BadFailurePolicy => "E018",
            Code::TooDeep => "E019",
            Code::ShadowsImport => "N001",
            Code::Shadowed => "W001",
            Code::Unused => "W002",
            Code::UnreachedVm => "W003",
            Code::NoFate => "W004",
        }
    }

    pub fn severity(self) -> Severity {
        if self.as_str().starts_with('N') {
            Severity::Note
        } else if self.as_str().starts_with('W') {
            Severity::Warning
        } else {
            Severity::Error
        }
    }
}

/// One finding about a policy.
#[derive(Debug, Clone)]
pub struct Diagnostic {
    pub code: Code,
    pub message: String,
    pub span: Span,
    /// Text under the primary span's underline.
    pub label: Option<String>,
    /// Secondary spans ("first defined here").
    pub notes: Vec<(Span, String)>,
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn new(code: Code, span: Span, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            code,
            message: message.into(),
            span,
            label: None,
            notes: Vec::new(),
            help: None,
        }
    }

    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }

    pub fn note(mut self, span: Span, text: impl Into<String>) -> Self {
        self.notes.push((span, text.into()));
        self
    }

    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    pub fn severity(&self) -> Severity {
        self.code.severity()
    }

    pub fn is_error(&self) -> bool {
        self.severity() == Severity::Error
    }

    /// rustc-style text with the source line and the span underlined.
    pub fn render(&self, sources: &SourceMap, color: bool) -> String {
        let file = sources.get(self.span.file);
        let level = match self.severity() {
            Severity::Error => Level::Error,
            Severity::Warning => Level::Warning,
            Severity::Note => Level::Note,
        };
        let range = clamp(self.span.range(), file.text.len());
        let mut snippet = Snippet::source(&file.text)
            .line_start(1)
            .origin(&file.name)
            .fold(true)
            .annotation(level.span(range).label(self.label.as_deref().unwrap_or("")));
        let mut other_files = Vec::new();
        for (span, text) in &self.notes {
            if span.file == self.span.file {
                snippet = snippet.annotation(
                    Level::Info
                        .span(clamp(span.range(), file.text.len()))
                        .label(text),
                );
            } else {
                other_files.push((span, text));
            }
        }
        let mut message = level
            .title(&self.message)
            .id(self.code.as_str())
            .snippet(snippet);
        for (span, text) in &other_files {
            let other = sources.get(span.file);
            message = message.snippet(
                Snippet::source(&other.text)
                    .line_start(1)
                    .origin(&other.name)
                    .fold(true)
                    .annotation(
                        Level::Info
                            .span(clamp(span.range(), other.text.len()))
                            .label(text),
                    ),
            );
        }
        if let Some(help) = &self.help {
            message = message.footer(Level::Help.title(help));
        }
        let renderer = if color {
            Renderer::styled()
        } else {
            Renderer::plain()
        };
        let text = renderer.render(message).to_string();
        text
    }

    /// The JSON form for CI annotations.
    pub fn to_json(&self, sources: &SourceMap) -> serde_json::Value {
        let file = sources.get(self.span.file);
        let (line, column) = file.line_col(self.span.start as usize);
        let (end_line, end_column) = file.line_col(self.span.end as usize);
        serde_json::json!({
            "file": file.name,
            "line": line,
            "column": column,
            "end": { "line": end_line, "column": end_column },
            "severity": self.severity(),
            "code": self.code.as_str(),
            "message": self.message,
            "help": self.help,
        })
    }
}

fn clamp(range: std::ops::Range<usize>, len: usize) -> std::ops::Range<usize> {
    let start = range.start.min(len);
    start..range.end.clamp(start, len)
}

/// Levenshtein distance, for did-you-mean suggestions.
/// Edit distance counting a swap of two neighbouring characters as one edit (optimal
/// string alignment), so that `ip.scr` is one edit from `ip.src`, as a typo is.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // d[i][j]: distance between a[..i] and b[..j]; three rows are enough.
    let mut before: Vec<usize> = Vec::new();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut cur = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut d = (prev[j - 1] + cost).min(prev[j] + 1).min(cur[j - 1] + 1);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d = d.min(before[j - 2] + 1);
            }
            cur[j] = d;
        }
        before = std::mem::replace(&mut prev, cur);
    }
    prev[b.len()]
}

/// The closest candidate to a misspelt name, if one is close enough to be a likely typo.
/// Ties go to the candidate of the typed name's length (a swap or a slip, rather than a
/// character more or less), then to the first in alphabetical order.
pub fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let limit = (name.chars().count() / 3).max(1);
    let len = name.chars().count();
    candidates
        .into_iter()
        .map(|c| (edit_distance(&name.to_lowercase(), &c.to_lowercase()), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, c)| (*d, c.chars().count().abs_diff(len), *c))
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        assert_eq!(
            did_you_mean("tcp.dprt", ["tcp.dport", "udp.dport"]),
            Some("tcp.dport")
        );
        assert_eq!(did_you_mean("ADMN", ["ADMIN", "WEB"]), Some("ADMIN"));
        assert_eq!(did_you_mean("zzz", ["ADMIN", "WEB"]), None);
    }

    #[test]
    fn a_swap_of_two_letters_is_one_edit() {
        assert_eq!(edit_distance("ip.scr", "ip.src"), 1);
        assert_eq!(edit_distance("ip.scr", "ip.dscp"), 2);
        let fields = ["ip.dscp", "ip.src", "ip.dst", "ip6.src"];
        assert_eq!(did_you_mean("ip.scr", fields), Some("ip.src"));
        assert_eq!(
            did_you_mean("tcp.dprot", ["tcp.dport", "udp.dport"]),
            Some("tcp.dport")
        );
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
