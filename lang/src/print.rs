//! Syntax tree → canonical `.nvr` text (`netvm fmt`).
//!
//! The output parses back to an equal tree (a property test holds us to it): parentheses are
//! printed wherever the tree's grouping differs from what precedence would give, strings and
//! regexes are escaped, and integers keep their value (not their original base).

use std::fmt::Write as _;

use crate::ast::*;

/// Prints a whole file, one declaration per line (test blocks over several lines).
pub fn file(file: &File) -> String {
    let mut out = String::new();
    let mut last_kind: Option<std::mem::Discriminant<DeclKind>> = None;
    for decl in &file.decls {
        let kind = std::mem::discriminant(&decl.kind);
        let block = matches!(decl.kind, DeclKind::Test { .. });
        if last_kind.is_some() && (last_kind != Some(kind) || block) {
            out.push('\n');
        }
        out.push_str(&self::decl(decl));
        out.push('\n');
        last_kind = Some(kind);
    }
    out
}

pub fn decl(decl: &Decl) -> String {
    match &decl.kind {
        DeclKind::Import(ImportTarget::Std(m)) => format!("import std.{}", m.text),
        DeclKind::Import(ImportTarget::File { path, .. }) => {
            format!("import {}", string(path.as_bytes()))
        }
        DeclKind::Const { name, value } => format!("const {} = {}", name.text, self::value(value)),
        DeclKind::Let { name, pred } => format!("let {} = {}", name.text, self::pred(pred)),
        DeclKind::Port { name, binding } => match binding {
            None => format!("port {}", name.text),
            Some(b) => format!(
                "port {} = {}({})",
                name.text,
                b.driver.text,
                b.args
                    .as_deref()
                    .map(|a| string(a.as_bytes()))
                    .unwrap_or_default()
            ),
        },
        DeclKind::Vm {
            names,
            trusted,
            on_failure,
        } => {
            let names: Vec<&str> = names.iter().map(|n| n.text.as_str()).collect();
            let trust = match trusted {
                Some(true) => " trusted",
                Some(false) => " untrusted",
                None => "",
            };
            let on_failure: String = on_failure
                .iter()
                .map(|clause| format!(" on_failure {}", clause.word.text))
                .collect();
            format!("vm {}{trust}{on_failure}", names.join(", "))
        }
        DeclKind::Group { name, members } => {
            let members: Vec<&str> = members.iter().map(|n| n.text.as_str()).collect();
            format!("group {} = {{{}}}", name.text, members.join(", "))
        }
        DeclKind::Rule {
            name,
            before,
            pred,
            actions,
        } => {
            let before = before
                .as_ref()
                .map(|b| format!(" before {}", b.text))
                .unwrap_or_default();
            format!(
                "rule {}{before} : {} => {}",
                name.text,
                self::pred(pred),
                self::actions(actions)
            )
        }
        DeclKind::Default { actions } => format!("default => {}", self::actions(actions)),
        DeclKind::Test { title, cases } => {
            let mut out = format!("test {} {{\n", string(title.as_bytes()));
            for case in cases {
                let _ = writeln!(out, "  {}", self::case(case));
            }
            out.push('}');
            out
        }
    }
}

pub fn case(case: &Case) -> String {
    let assigns: Vec<String> = case
        .assigns
        .iter()
        .map(|a| format!("{} = {}", operand(&a.target), value(&a.value)))
        .collect();
    let packet = if assigns.is_empty() {
        format!("{} {{}}", case.proto.text)
    } else {
        format!("{} {{ {} }}", case.proto.text, assigns.join(", "))
    };
    let expect = match &case.expect {
        Expect::Rule(None) => "rule default".to_string(),
        Expect::Rule(Some(n)) => format!("rule {}", n.text),
        Expect::Actions(a) => actions(a),
    };
    format!("{packet} => {expect}")
}

pub fn actions(actions: &[Action]) -> String {
    actions.iter().map(action).collect::<Vec<_>>().join(", ")
}

fn action(action: &Action) -> String {
    match &action.kind {
        ActionKind::Drop => "drop".into(),
        ActionKind::Out(p) => format!("out {}", p.text),
        ActionKind::To(v) => format!("to {}", v.text),
        ActionKind::Mirror(v) => format!("mirror {}", v.text),
        ActionKind::Count(c) => format!("count {}", c.text),
        ActionKind::Balance(b) => balance(b),
        ActionKind::Chain(hops) => {
            let hops: Vec<String> = hops
                .iter()
                .map(|h| match h {
                    Hop::Vm(n) => n.text.clone(),
                    Hop::Out(p) => format!("out {}", p.text),
                    Hop::Drop(_) => "drop".into(),
                    Hop::Balance(b) => balance(b),
                })
                .collect();
            format!("chain {}", hops.join(" -> "))
        }
    }
}

fn balance(b: &Balance) -> String {
    let key = match &b.key {
        None => String::new(),
        Some(BalanceKey::Flow) => " by flow".into(),
        Some(BalanceKey::Field(p)) => format!(" by {}", p.text),
        Some(BalanceKey::Fields(ps)) => format!(
            " by ({})",
            ps.iter()
                .map(|p| p.text.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    format!("balance {}{key}", b.group.text)
}

/// Binding strength: `or` 1, `and` 2, `not` 3, atoms 4.
fn level(pred: &Pred) -> u8 {
    match pred.kind {
        PredKind::Or(_) => 1,
        PredKind::And(_) => 2,
        PredKind::Not(_) => 3,
        _ => 4,
    }
}

pub fn pred(pred: &Pred) -> String {
    // A child is parenthesised when it binds no tighter than its parent, so that the
    // re-parsed tree has the same shape (an `and` inside an `and` keeps its grouping).
    let child = |p: &Pred, parent: u8| {
        if level(p) <= parent {
            format!("({})", self::pred(p))
        } else {
            self::pred(p)
        }
    };
    match &pred.kind {
        PredKind::Or(items) => items
            .iter()
            .map(|p| child(p, 1))
            .collect::<Vec<_>>()
            .join(" or "),
        PredKind::And(items) => items
            .iter()
            .map(|p| child(p, 2))
            .collect::<Vec<_>>()
            .join(" and "),
        PredKind::Not(inner) => {
            if level(inner) < 3 {
                format!("not ({})", self::pred(inner))
            } else {
                format!("not {}", self::pred(inner))
            }
        }
        PredKind::Test(p) => p.text.clone(),
        PredKind::Compare {
            operand: o,
            mask,
            op,
            value: v,
        } => {
            let mask = mask
                .as_ref()
                .map(|m| format!(" & {}", scalar(m)))
                .unwrap_or_default();
            format!("{}{mask} {} {}", operand(o), op.as_str(), value(v))
        }
        PredKind::Member {
            operand: o,
            negated,
            value: v,
        } => {
            let op = if *negated { "not in" } else { "in" };
            format!("{} {op} {}", operand(o), value(v))
        }
        PredKind::Payload { op, arg } => format!("payload {} {}", op.as_str(), scalar(arg)),
    }
}

fn operand(o: &Operand) -> String {
    match o {
        Operand::Path(p) => p.text.clone(),
        Operand::PayloadByte { index, .. } => format!("payload[{index}]"),
    }
}

pub fn value(v: &Value) -> String {
    match &v.kind {
        ValueKind::Scalar(s) => scalar(s),
        ValueKind::Range(lo, hi) => format!("{}..{}", scalar(lo), scalar(hi)),
        ValueKind::Set(members) => {
            let members: Vec<String> = members
                .iter()
                .map(|m| match m {
                    Member::Scalar(s) => scalar(s),
                    Member::Range(lo, hi) => format!("{}..{}", scalar(lo), scalar(hi)),
                })
                .collect();
            format!("{{{}}}", members.join(", "))
        }
    }
}

pub fn scalar(s: &Scalar) -> String {
    match &s.kind {
        ScalarKind::Int(v, Radix::Decimal) => v.to_string(),
        ScalarKind::Int(v, Radix::Hex) => format!("0x{v:x}"),
        ScalarKind::Int(v, Radix::Binary) => format!("0b{v:b}"),
        ScalarKind::Addr { addr, prefix_len } => {
            let text = match addr {
                Addr::V4(a) => std::net::Ipv4Addr::from(*a).to_string(),
                Addr::V6(a) => std::net::Ipv6Addr::from(*a).to_string(),
                Addr::Mac(m) => {
                    let b = m.to_be_bytes();
                    format!(
                        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                        b[2], b[3], b[4], b[5], b[6], b[7]
                    )
                }
            };
            match prefix_len {
                Some(l) => format!("{text}/{l}"),
                None => text,
            }
        }
        ScalarKind::Str(bytes) => string(bytes),
        ScalarKind::Regex { pattern, flags } => format!("/{}/{flags}", pattern.replace('/', "\\/")),
        ScalarKind::Name(n) => n.clone(),
        ScalarKind::Invalid => "0".into(),
    }
}

/// A string literal for these bytes, escaping what must be escaped.
pub fn string(bytes: &[u8]) -> String {
    let mut out = String::from("\"");
    let text = String::from_utf8_lossy(bytes);
    let valid = std::str::from_utf8(bytes).is_ok();
    if valid {
        for c in text.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                    let _ = write!(out, "\\x{:02x}", c as u32);
                }
                c => out.push(c),
            }
        }
    } else {
        for &b in bytes {
            match b {
                b'"' => out.push_str("\\\""),
                b'\\' => out.push_str("\\\\"),
                b'\n' => out.push_str("\\n"),
                b'\r' => out.push_str("\\r"),
                b'\t' => out.push_str("\\t"),
                0x20..=0x7e => out.push(b as char),
                _ => {
                    let _ = write!(out, "\\x{b:02x}");
                }
            }
        }
    }
    out.push('"');
    out
}

/// Formats a whole source text: every declaration in canonical form, comments between
/// declarations and blank lines (collapsed to one) kept where they were. Refuses text with
/// syntax errors or with comments inside a declaration, which it could not keep.
pub fn format_source(text: &str) -> Result<String, String> {
    let (parsed, diags) = crate::parse::parse_file(crate::source::FileId(0), text);
    if let Some(d) = diags.iter().find(|d| d.is_error()) {
        let (line, col) = crate::source::SourceFile::new(String::new(), None, text.to_string())
            .line_col(d.span.start as usize);
        return Err(format!(
            "error at {line}:{col} ({}); run `netvm check` and fix it first",
            d.message
        ));
    }
    let mut out = String::new();
    let mut prev_end = 0usize;
    for decl in &parsed.decls {
        let range = decl.span().range();
        let comment = match &decl.kind {
            // Comments between the cases of a test block are kept; inside a case they are not.
            DeclKind::Test { cases, .. } => cases.iter().find_map(|c| {
                let r = c.loc.0.range();
                inner_comment(&text[r.clone()]).map(|i| r.start - range.start + i)
            }),
            _ => inner_comment(&text[range.clone()]),
        };
        if let Some(offset) = comment {
            let line = text[..range.start + offset].matches('\n').count() + 1;
            return Err(format!(
                "line {line}: a comment inside a declaration would be lost; move it above the declaration"
            ));
        }
        gap(&text[prev_end..range.start], prev_end == 0, &mut out);
        match &decl.kind {
            DeclKind::Test { title, cases } => test_block(text, decl, title, cases, &mut out),
            _ => out.push_str(&self::decl(decl)),
        }
        prev_end = range.end;
    }
    gap(&text[prev_end..], prev_end == 0, &mut out);
    if !out.ends_with('\n') {
        out.push('\n');
    }
    Ok(out)
}

/// A test block with the comments between its cases kept in place.
fn test_block(text: &str, decl: &Decl, title: &str, cases: &[Case], out: &mut String) {
    let _ = writeln!(out, "test {} {{", string(title.as_bytes()));
    let body_start = text[decl.span().range()]
        .find('{')
        .map_or(decl.span().start as usize, |i| {
            decl.span().start as usize + i + 1
        });
    let mut prev_end = body_start;
    for case in cases {
        let range = case.loc.0.range();
        case_gap(&text[prev_end..range.start], out);
        let _ = write!(out, "  {}", self::case(case));
        prev_end = range.end;
    }
    let body_end = decl.span().end as usize - 1;
    case_gap(&text[prev_end..body_end.max(prev_end)], out);
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out.push('}');
}

/// The comments between two cases: a same-line comment stays on the case's line, others go
/// on their own lines, indented like the cases.
fn case_gap(text: &str, out: &mut String) {
    let mut lines = text.split('\n');
    if let Some(comment) = comment_of(lines.next().unwrap_or("")) {
        if out.ends_with('{') || out.ends_with("{\n") {
            let _ = writeln!(out, "  {comment}");
        } else {
            let _ = write!(out, " {comment}");
        }
    }
    if !out.ends_with('\n') {
        out.push('\n');
    }
    let rest: Vec<&str> = lines.collect();
    let count = rest.len();
    let mut blank = false;
    for (i, line) in rest.iter().enumerate() {
        match comment_of(line) {
            Some(comment) => {
                if blank {
                    out.push('\n');
                }
                blank = false;
                let _ = writeln!(out, "  {comment}");
            }
            None if line.trim().is_empty() && i > 0 && i + 1 < count => blank = true,
            None => {}
        }
    }
    if blank {
        out.push('\n');
    }
}

/// Emits the comments and blank lines found between two declarations.
fn gap(text: &str, at_start: bool, out: &mut String) {
    let mut lines = text.split('\n');
    let first = lines.next().unwrap_or("");
    let rest: Vec<&str> = lines.collect();
    if let Some(comment) = comment_of(first) {
        if at_start {
            out.push_str(comment);
        } else {
            out.push(' ');
            out.push_str(comment);
        }
    }
    if rest.is_empty() && !at_start {
        // Two declarations on one line: put the next on its own line.
        if !out.is_empty() {
            out.push('\n');
        }
        return;
    }
    if !out.is_empty() {
        out.push('\n');
    }
    let mut blank = false;
    let count = rest.len();
    for (i, line) in rest.iter().enumerate() {
        let last = i + 1 == count;
        match comment_of(line) {
            Some(comment) => {
                if blank && !out.is_empty() {
                    out.push('\n');
                }
                blank = false;
                out.push_str(comment);
                out.push('\n');
            }
            None if line.trim().is_empty() && !last => blank = true,
            None => {}
        }
    }
    if blank && !out.is_empty() {
        out.push('\n');
    }
}

fn comment_of(line: &str) -> Option<&str> {
    let t = line.trim();
    (t.starts_with('#') || t.starts_with("//")).then_some(t)
}

/// The offset of a comment inside declaration text.
fn inner_comment(text: &str) -> Option<usize> {
    crate::parse::comment_start(text)
}
