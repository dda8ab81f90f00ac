//! Editing a policy's source text one declaration at a time, as the REPL does.
//!
//! The policy stays text (what `:save` writes and `netvm check` reads back), so an edit is
//! a splice: a typed declaration replaces the one with the same name (rules by rule name;
//! `const`, `let`, `group`, `port` by name; `default`; a `test` by title), or is inserted
//! where a reader would look for it — a rule after the last rule, a `const` or `let` after
//! the last non-rule declaration. `rule NAME before OTHER: ...` (REPL syntax) is stored
//! without the `before OTHER` part, placed just above `OTHER`. Every splice reports where
//! the typed text landed, so diagnostics about the new text can point back into what was
//! typed. Nothing here checks meaning; the caller checks the spliced text.

use netvm_lang::ast::{Decl, DeclKind, ImportTarget};
use netvm_lang::{Code, Diagnostic, FileId, Span};

/// Which existing declaration a typed one replaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeclKey {
    Rule(String),
    /// `const`, `let`, `group`, `port` (one namespace).
    Named(String),
    Vm(Vec<String>),
    Default,
    Test(String),
    Import(String),
}

impl DeclKey {
    pub fn of(decl: &Decl) -> DeclKey {
        match &decl.kind {
            DeclKind::Rule { name, .. } => DeclKey::Rule(name.text.clone()),
            DeclKind::Const { name, .. }
            | DeclKind::Let { name, .. }
            | DeclKind::Group { name, .. }
            | DeclKind::Port { name, .. } => DeclKey::Named(name.text.clone()),
            DeclKind::Vm { names, .. } => {
                DeclKey::Vm(names.iter().map(|n| n.text.clone()).collect())
            }
            DeclKind::Default { .. } => DeclKey::Default,
            DeclKind::Test { title, .. } => DeclKey::Test(title.clone()),
            DeclKind::Import(ImportTarget::Std(m)) => DeclKey::Import(format!("std.{}", m.text)),
            DeclKind::Import(ImportTarget::File { path, .. }) => DeclKey::Import(path.clone()),
        }
    }

    /// Whether a declaration with this key declares `name` (for `:del` and `:show`).
    pub fn declares(&self, name: &str) -> bool {
        match self {
            DeclKey::Rule(n) | DeclKey::Named(n) | DeclKey::Test(n) => n == name,
            DeclKey::Vm(names) => names.iter().any(|n| n == name),
            DeclKey::Default => name == "default",
            DeclKey::Import(_) => false,
        }
    }
}

/// A spliced source and where the typed text went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spliced {
    pub source: String,
    /// The typed text's bytes `typed_start..` (minus `cut`) lie at `at..at + len` of
    /// `source`.
    pub at: usize,
    pub len: usize,
    pub typed_start: usize,
    /// `before OTHER`, removed from the typed text: a range of the typed text.
    pub cut: Option<std::ops::Range<usize>>,
    /// What the splice did, for the operator: "added rule `x`", "replaced const `Y`".
    pub summary: String,
}

impl Spliced {
    /// The offset in the typed text of `offset` in the spliced source, if it lies in the
    /// typed part.
    pub fn typed_offset(&self, offset: usize) -> Option<usize> {
        if offset < self.at || offset > self.at + self.len {
            return None;
        }
        let mut t = offset - self.at + self.typed_start;
        if let Some(cut) = &self.cut {
            if t >= cut.start {
                t += cut.len();
            }
        }
        Some(t)
    }
}

/// The declarations of `source`, parsed (with syntax errors, those that parse).
pub fn decls(source: &str) -> Vec<Decl> {
    netvm_lang::parse::parse_file(FileId(0), source).0.decls
}

/// Splice the declaration `decl`, parsed from `typed` (in file `typed_file`), into
/// `source`. Errors (a `before` naming no rule) point into `typed`.
pub fn splice(source: &str, typed: &str, decl: &Decl) -> Result<Spliced, Diagnostic> {
    let existing = decls(source);
    let key = DeclKey::of(decl);
    let span = decl.span();
    let (typed_start, typed_end) = (span.start as usize, span.end as usize);
    let mut cut = None;
    let mut before = None;
    if let DeclKind::Rule {
        name,
        before: Some(other),
        ..
    } = &decl.kind
    {
        cut = Some(name.span().end as usize..other.span().end as usize);
        before = Some(other.clone());
    }
    let mut text = typed[typed_start..typed_end].to_string();
    if let Some(c) = &cut {
        text.replace_range(c.start - typed_start..c.end - typed_start, "");
    }
    let kind = match &key {
        DeclKey::Rule(_) => "rule",
        DeclKey::Named(_) => match &decl.kind {
            DeclKind::Const { .. } => "const",
            DeclKind::Let { .. } => "let",
            DeclKind::Group { .. } => "group",
            _ => "port",
        },
        DeclKey::Vm(_) => "vm",
        DeclKey::Default => "default",
        DeclKey::Test(_) => "test",
        DeclKey::Import(_) => "import",
    };
    let label = match &key {
        DeclKey::Rule(n) | DeclKey::Named(n) => format!("{kind} `{n}`"),
        DeclKey::Vm(names) => format!("vm `{}`", names.join(", ")),
        DeclKey::Default => "default".to_string(),
        DeclKey::Test(t) => format!("test \"{t}\""),
        DeclKey::Import(i) => format!("import {i}"),
    };
    let same = existing.iter().find(|d| DeclKey::of(d) == key);
    let mut source = source.to_string();
    let mut summary;

    let place = if let Some(other) = &before {
        // Take the old rule out first, then insert above OTHER.
        if let Some(old) = same {
            remove_decl(&mut source, old.span());
        }
        let now = decls(&source);
        let Some(target) = now
            .iter()
            .find(|d| DeclKey::of(d) == DeclKey::Rule(other.text.clone()))
        else {
            let rules: Vec<String> = now
                .iter()
                .filter_map(|d| match &d.kind {
                    DeclKind::Rule { name, .. } => Some(name.text.clone()),
                    _ => None,
                })
                .collect();
            let mut diag = Diagnostic::new(
                Code::UnknownName,
                other.span(),
                format!(
                    "there is no rule `{}` to place this rule before",
                    other.text
                ),
            );
            if let Some(s) =
                netvm_lang::diag::did_you_mean(&other.text, rules.iter().map(String::as_str))
            {
                diag = diag.help(format!("did you mean `{s}`?"));
            }
            return Err(diag);
        };
        summary = format!(
            "{} {label} before rule `{}`",
            if same.is_some() { "moved" } else { "added" },
            other.text
        );
        Place::Before(line_start(&source, target.span().start as usize))
    } else if let Some(old) = same {
        summary = format!("replaced {label}");
        Place::Replace(old.span().range())
    } else {
        summary = format!("added {label}");
        let last = |pred: &dyn Fn(&DeclKind) -> bool| {
            existing
                .iter()
                .filter(|d| pred(&d.kind))
                .map(|d| d.span().end as usize)
                .max()
        };
        let is_rule = |k: &DeclKind| matches!(k, DeclKind::Rule { .. });
        let is_header = |k: &DeclKind| {
            !matches!(
                k,
                DeclKind::Rule { .. } | DeclKind::Default { .. } | DeclKind::Test { .. }
            )
        };
        match &key {
            DeclKey::Rule(_) => match last(&is_rule) {
                Some(end) => Place::AfterLineOf(end),
                None => match existing
                    .iter()
                    .find(|d| matches!(d.kind, DeclKind::Default { .. }))
                {
                    Some(d) => Place::Before(line_start(&source, d.span().start as usize)),
                    None => Place::End,
                },
            },
            DeclKey::Default | DeclKey::Test(_) => Place::End,
            _ => match last(&is_header) {
                Some(end) => Place::AfterLineOf(end),
                None => Place::Before(0),
            },
        }
    };
    let at = match place {
        Place::Replace(range) => {
            source.replace_range(range.clone(), &text);
            range.start
        }
        Place::Before(at) => {
            source.insert_str(at, &format!("{text}\n"));
            at
        }
        Place::AfterLineOf(end) => {
            let eol = source[end..].find('\n').map_or(source.len(), |i| end + i);
            source.insert_str(eol, &format!("\n{text}"));
            eol + 1
        }
        Place::End => {
            if !source.is_empty() && !source.ends_with('\n') {
                source.push('\n');
            }
            let at = source.len();
            source.push_str(&text);
            source.push('\n');
            at
        }
    };
    if summary.is_empty() {
        summary = label;
    }
    Ok(Spliced {
        source,
        at,
        len: text.len(),
        typed_start,
        cut,
        summary,
    })
}

enum Place {
    Replace(std::ops::Range<usize>),
    Before(usize),
    AfterLineOf(usize),
    End,
}

fn line_start(source: &str, offset: usize) -> usize {
    source[..offset].rfind('\n').map_or(0, |i| i + 1)
}

/// Remove the declaration at `span`, with its whole line when nothing but blanks or a
/// comment shares it.
fn remove_decl(source: &mut String, span: Span) {
    let (start, end) = (span.start as usize, span.end as usize);
    let from = line_start(source, start);
    let eol = source[end..].find('\n').map_or(source.len(), |i| end + i);
    let before_blank = source[from..start].trim().is_empty();
    let rest = source[end..eol].trim_start();
    let after_blank = rest.is_empty() || rest.starts_with('#') || rest.starts_with("//");
    if before_blank && after_blank {
        let to = (eol + 1).min(source.len());
        source.replace_range(from..to, "");
    } else {
        source.replace_range(start..end, "");
    }
}

/// `source` without the declaration that declares `name` (a rule first, then a const,
/// let, group, port, or a test by title). `None` when nothing declares it.
pub fn delete(source: &str, name: &str) -> Option<(String, String)> {
    let all = decls(source);
    let found = all
        .iter()
        .find(|d| matches!(DeclKey::of(d), DeclKey::Rule(ref n) if n == name))
        .or_else(|| all.iter().find(|d| DeclKey::of(d).declares(name)))?;
    let what = match DeclKey::of(found) {
        DeclKey::Rule(n) => format!("rule `{n}`"),
        DeclKey::Test(t) => format!("test \"{t}\""),
        DeclKey::Default => "default".to_string(),
        _ => format!("`{name}`"),
    };
    let mut source = source.to_string();
    remove_decl(&mut source, found.span());
    Some((source, what))
}

/// The source text of the declaration that declares `name` (rules first).
pub fn show(source: &str, name: &str) -> Option<String> {
    let all = decls(source);
    let found = all
        .iter()
        .find(|d| matches!(DeclKey::of(d), DeclKey::Rule(ref n) if n == name))
        .or_else(|| all.iter().find(|d| DeclKey::of(d).declares(name)))?;
    source.get(found.span().range()).map(str::to_string)
}

/// Names the policy text declares, for completion: rules, consts, lets, ports, VMs,
/// groups.
pub fn declared_names(source: &str) -> Vec<String> {
    let mut names = Vec::new();
    for d in decls(source) {
        match DeclKey::of(&d) {
            DeclKey::Rule(n) | DeclKey::Named(n) => names.push(n),
            DeclKey::Vm(v) => names.extend(v),
            _ => {}
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = "\
const SSH = 22
port wan
port lan

rule ssh : tcp.dport == SSH => drop   # no ssh
rule web : tcp.dport == 80 => out lan
default => out lan
";

    fn spliced(typed: &str) -> Result<Spliced, Diagnostic> {
        let (decl, _) = netvm_lang::parse::parse_decl(FileId(1), typed).expect("typed decl parses");
        splice(POLICY, typed, &decl)
    }

    #[test]
    fn a_new_rule_goes_after_the_last_rule() {
        let s = spliced("rule dns : udp.dport == 53 => out lan").unwrap();
        assert!(
            s.source
                .contains("out lan\nrule dns : udp.dport == 53 => out lan\ndefault"),
            "{}",
            s.source
        );
        assert_eq!(s.summary, "added rule `dns`");
        assert_eq!(
            &s.source[s.at..s.at + s.len],
            "rule dns : udp.dport == 53 => out lan"
        );
    }

    #[test]
    fn a_rule_with_the_same_name_is_replaced_in_place_keeping_its_comment() {
        let s = spliced("rule ssh : tcp.dport == 2222 => drop").unwrap();
        assert!(s
            .source
            .contains("rule ssh : tcp.dport == 2222 => drop   # no ssh\nrule web"));
        assert_eq!(s.summary, "replaced rule `ssh`");
    }

    #[test]
    fn before_places_the_rule_above_the_other_and_is_not_stored() {
        let typed = "rule dns before ssh : udp.dport == 53 => out lan";
        let s = spliced(typed).unwrap();
        assert!(
            s.source
                .contains("\nrule dns : udp.dport == 53 => out lan\nrule ssh"),
            "{}",
            s.source
        );
        // `udp` in the spliced text maps back to its column in the typed line.
        let udp = s.source.find("udp.dport").unwrap();
        assert_eq!(s.typed_offset(udp), typed.find("udp.dport"));
        assert_eq!(s.summary, "added rule `dns` before rule `ssh`");
    }

    #[test]
    fn before_an_unknown_rule_points_at_its_name_in_the_typed_line() {
        let typed = "rule dns before shh : udp => drop";
        let d = spliced(typed).unwrap_err();
        assert_eq!(d.span.range(), 16..19);
        assert_eq!(d.help.as_deref(), Some("did you mean `ssh`?"));
    }

    #[test]
    fn a_new_const_goes_after_the_header_declarations() {
        let s = spliced("const DNS = 53").unwrap();
        assert!(
            s.source.contains("port lan\nconst DNS = 53\n"),
            "{}",
            s.source
        );
    }

    #[test]
    fn delete_removes_the_whole_line_of_a_rule() {
        let (text, what) = delete(POLICY, "ssh").unwrap();
        assert!(!text.contains("no ssh"), "{text}");
        assert!(text.contains("\n\nrule web"), "{text}");
        assert_eq!(what, "rule `ssh`");
        assert!(delete(POLICY, "nothing").is_none());
    }

    #[test]
    fn adding_then_deleting_a_rule_gives_back_every_example_byte_for_byte() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "nvr") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let before = decls(&text).len();
            for typed in [
                "rule zz_new : udp.dport == 9 => drop",
                "const ZZ_NEW = 9",
                "test \"zz\" {\n  udp { udp.dport = 9 } => drop\n}",
            ] {
                let (decl, _) = netvm_lang::parse::parse_decl(FileId(1), typed).unwrap();
                let s = splice(&text, typed, &decl).unwrap();
                assert_eq!(decls(&s.source).len(), before + 1, "{}", path.display());
                assert_eq!(&s.source[s.at..s.at + s.len], typed);
                let name = match DeclKey::of(&decl) {
                    DeclKey::Rule(n) | DeclKey::Named(n) | DeclKey::Test(n) => n,
                    _ => unreachable!(),
                };
                let (back, _) = delete(&s.source, &name).unwrap();
                assert_eq!(back, text, "{} after {typed}", path.display());
            }
            seen += 1;
        }
        assert!(seen >= 4, "the examples were found");
    }

    #[test]
    fn show_finds_rules_and_consts() {
        assert_eq!(show(POLICY, "SSH").unwrap(), "const SSH = 22");
        assert_eq!(
            show(POLICY, "web").unwrap(),
            "rule web : tcp.dport == 80 => out lan"
        );
        assert_eq!(
            declared_names(POLICY),
            ["SSH", "wan", "lan", "ssh", "web"].map(String::from)
        );
    }
}
