//! Text → [`ast::File`]: the pest grammar (`nvr.pest`) plus literal decoding.
//!
//! Declarations are parsed one at a time, so that a syntax error in one declaration is
//! reported and the parser resumes at the next line that starts a declaration: every error in
//! a file is reported in one run. Literals (integers, addresses, strings, regexes) are decoded
//! here and malformed ones reported (E013, E007); names are left unresolved for the checker.

use pest::iterators::Pair;
use pest::Parser as _;

use crate::ast::*;
use crate::diag::{Code, Diagnostic};
use crate::source::{FileId, Span};

#[derive(pest_derive::Parser)]
#[grammar = "nvr.pest"]
struct NvrParser;

/// The words that start a declaration; after a syntax error, parsing resumes at the next line
/// that begins with one of them.
const DECL_KEYWORDS: [&str; 9] = [
    "import", "const", "let", "port", "vm", "group", "rule", "default", "test",
];

/// Parses a whole file. Always returns a tree (of the declarations that parsed) and the
/// diagnostics found on the way.
pub fn parse_file(file: FileId, text: &str) -> (File, Vec<Diagnostic>) {
    let mut builder = Builder {
        file,
        offset: 0,
        diags: Vec::new(),
    };
    let mut decls = Vec::new();
    let mut pos = skip_trivia(text, 0);
    while pos < text.len() {
        // pest's descent recurses once per parenthesis: a declaration nested too deep is
        // refused before pest sees it, and parsing resumes at the next declaration.
        if let Some(deep) = too_deep(&text[pos..]) {
            builder.diags.push(deep.diagnostic(file, pos));
            pos = skip_trivia(text, next_decl_line(text, pos, pos + deep.at));
            continue;
        }
        // Parse up to the next line that starts a declaration first: pest's cost grows with
        // the input it is handed, and a 10,000-rule policy must check in well under a second.
        // The bounded parse counts only when it ends exactly there; otherwise (a declaration
        // that continues on such a line, or an error) the rest of the text decides.
        let bound = next_decl_line(text, pos, pos);
        if let Ok(mut pairs) = NvrParser::parse(Rule::one_decl, &text[pos..bound]) {
            let one = pairs.next().expect("one_decl always yields one pair");
            let decl_pair = one.into_inner().next().expect("one_decl holds a decl");
            let end = pos + decl_pair.as_span().end();
            if skip_trivia(text, end) == bound {
                builder.offset = pos;
                decls.push(builder.decl(decl_pair));
                pos = bound;
                continue;
            }
        }
        match NvrParser::parse(Rule::one_decl, &text[pos..]) {
            Ok(mut pairs) => {
                builder.offset = pos;
                let one = pairs.next().expect("one_decl always yields one pair");
                let decl_pair = one.into_inner().next().expect("one_decl holds a decl");
                let end = decl_pair.as_span().end();
                decls.push(builder.decl(decl_pair));
                pos = skip_trivia(text, pos + end);
            }
            Err(err) => {
                let at = pos + error_offset(&err);
                builder.diags.push(syntax_error(file, text, at, &err));
                pos = skip_trivia(text, next_decl_line(text, pos, at));
            }
        }
    }
    (File { decls }, builder.diags)
}

/// Parses a predicate typed on its own (REPL, tests).
pub fn parse_pred(file: FileId, text: &str) -> Result<(Pred, Vec<Diagnostic>), Diagnostic> {
    if let Some(deep) = too_deep(text) {
        return Err(deep.diagnostic(file, 0));
    }
    let mut pairs = NvrParser::parse(Rule::one_pred, text)
        .map_err(|err| syntax_error(file, text, error_offset(&err), &err))?;
    let mut builder = Builder {
        file,
        offset: 0,
        diags: Vec::new(),
    };
    let pred = pairs
        .next()
        .and_then(|p| p.into_inner().next())
        .expect("one_pred holds a pred");
    let pred = builder.pred(pred);
    Ok((pred, builder.diags))
}

/// Parses a packet written as in a test case, without the expectation:
/// `tcp { tcp.dport = 22, ip.src = 1.2.3.4 }` (`netvm explain`).
pub fn parse_case_packet(
    file: FileId,
    text: &str,
) -> Result<(Name, Vec<Assign>, Vec<Diagnostic>), Diagnostic> {
    let mut pairs = NvrParser::parse(Rule::one_case_packet, text)
        .map_err(|err| syntax_error(file, text, error_offset(&err), &err))?;
    let mut builder = Builder {
        file,
        offset: 0,
        diags: Vec::new(),
    };
    let mut inner = pairs.next().expect("one_case_packet").into_inner();
    let proto = builder.name(inner.next().expect("case proto"));
    let assigns = inner
        .filter(|p| p.as_rule() == Rule::assign)
        .map(|p| builder.assign(p))
        .collect();
    Ok((proto, assigns, builder.diags))
}

/// Parses a single declaration (the REPL's unit of input).
pub fn parse_decl(file: FileId, text: &str) -> Result<(Decl, Vec<Diagnostic>), Diagnostic> {
    let (parsed, mut diags) = parse_file(file, text);
    if let Some(pos) = diags
        .iter()
        .position(|d| matches!(d.code, Code::Syntax | Code::TooDeep))
    {
        return Err(diags.swap_remove(pos));
    }
    let mut decls = parsed.decls.into_iter();
    match (decls.next(), decls.next()) {
        (Some(decl), None) => Ok((decl, diags)),
        (None, _) => Err(Diagnostic::new(
            Code::Syntax,
            Span::new(file, 0, text.len()),
            "expected a declaration",
        )),
        (Some(_), Some(second)) => Err(Diagnostic::new(
            Code::Syntax,
            second.span(),
            "expected one declaration, found several",
        )),
    }
}

/// Where a declaration first nests deeper than [`crate::MAX_NESTING`].
struct TooDeep {
    /// Offset of the `(` or `not` that crossed the limit.
    at: usize,
    len: usize,
}

impl TooDeep {
    fn diagnostic(&self, file: FileId, base: usize) -> Diagnostic {
        let limit = crate::MAX_NESTING;
        Diagnostic::new(
            Code::TooDeep,
            Span::new(file, base + self.at, base + self.at + self.len),
            format!("predicate nested too deep: parentheses and `not`s nest more than {limit} levels here"),
        )
        .label(format!("level {} (the limit is {limit})", limit + 1))
        .help("split the predicate into `let`s, or flatten it: `a or b or c` needs no parentheses")
    }
}

/// A lexical pre-scan of one declaration (it stops at the first line that starts a
/// declaration while no parenthesis is open): the nesting of `(` plus the `not`s in
/// front of each operand. Strings, regexes and comments are skipped. `Some` when it
/// passes [`crate::MAX_NESTING`]: the parser's descent (and every later walk) stays
/// bounded. The count can only over-estimate the syntax tree's depth by the `not`s of
/// operands that are siblings, never under-estimate it.
fn too_deep(text: &str) -> Option<TooDeep> {
    let bytes = text.as_bytes();
    // For each open parenthesis, the level inside it.
    let mut open: Vec<usize> = Vec::new();
    let mut level = 0usize;
    let mut nots = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'\n' => {
                i += 1;
                if open.is_empty() && starts_decl(&text[i..]) {
                    return None;
                }
                continue;
            }
            b'#' => {
                i = line_end(text, i);
                continue;
            }
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                i = line_end(text, i);
                continue;
            }
            // A `/` right after an address character is a prefix length; otherwise it
            // opens a regex, which ends at the next unescaped `/` or the line's end.
            b'/' if i == 0
                || !(bytes[i - 1].is_ascii_hexdigit() || matches!(bytes[i - 1], b'.' | b':')) =>
            {
                i += 1;
                while i < bytes.len() && !matches!(bytes[i], b'/' | b'\n') {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
                nots = 0;
                continue;
            }
            b'"' => {
                i += 1;
                while i < bytes.len() && !matches!(bytes[i], b'"' | b'\n') {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
                nots = 0;
                continue;
            }
            b'(' => {
                level += nots + 1;
                nots = 0;
                if level > crate::MAX_NESTING {
                    return Some(TooDeep { at: i, len: 1 });
                }
                open.push(level);
                i += 1;
                continue;
            }
            b')' => {
                open.pop();
                level = open.last().copied().unwrap_or(0);
                nots = 0;
                i += 1;
                continue;
            }
            _ => {}
        }
        if b.is_ascii_alphanumeric() || b == b'_' {
            let start = i;
            while i < bytes.len()
                && (bytes[i].is_ascii_alphanumeric() || matches!(bytes[i], b'_' | b'.' | b'-'))
            {
                i += 1;
            }
            if &text[start..i] == "not" {
                nots += 1;
                if level + nots > crate::MAX_NESTING {
                    return Some(TooDeep { at: start, len: 3 });
                }
            } else {
                nots = 0;
            }
            continue;
        }
        if !b.is_ascii_whitespace() {
            nots = 0;
        }
        i += 1;
    }
    None
}

fn skip_trivia(text: &str, mut pos: usize) -> usize {
    let bytes = text.as_bytes();
    while pos < bytes.len() {
        match bytes[pos] {
            b' ' | b'\t' | b'\r' | b'\n' => pos += 1,
            b'#' => pos = line_end(text, pos),
            b'/' if bytes.get(pos + 1) == Some(&b'/') => pos = line_end(text, pos),
            _ => break,
        }
    }
    pos
}

fn line_end(text: &str, pos: usize) -> usize {
    text[pos..].find('\n').map_or(text.len(), |i| pos + i)
}

/// The start of the first line after the one holding `at` (and after `start`) whose first
/// word begins a declaration; the end of the text if there is none.
fn next_decl_line(text: &str, start: usize, at: usize) -> usize {
    let mut line = line_end(text, at.max(start));
    while line < text.len() {
        let begin = line + 1;
        if starts_decl(&text[begin..]) {
            return begin;
        }
        line = line_end(text, begin);
    }
    text.len()
}

/// Whether the line `line` begins with (after blanks) starts a declaration.
fn starts_decl(line: &str) -> bool {
    let rest = line.trim_start_matches([' ', '\t']);
    let word_end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    DECL_KEYWORDS.contains(&&rest[..word_end])
}

fn error_offset(err: &pest::error::Error<Rule>) -> usize {
    match err.location {
        pest::error::InputLocation::Pos(p) => p,
        pest::error::InputLocation::Span((s, _)) => s,
    }
}

fn syntax_error(file: FileId, text: &str, at: usize, err: &pest::error::Error<Rule>) -> Diagnostic {
    let found = text[at.min(text.len())..]
        .split(|c: char| c.is_whitespace())
        .next()
        .unwrap_or("");
    let end = (at + found.len().max(1)).min(text.len().max(at));
    let expected = match &err.variant {
        pest::error::ErrorVariant::ParsingError { positives, .. } => describe_expected(positives),
        pest::error::ErrorVariant::CustomError { message } => message.clone(),
    };
    let found_text = if found.is_empty() {
        "end of input".to_string()
    } else {
        format!("`{}`", found.chars().take(24).collect::<String>())
    };
    let mut diag = Diagnostic::new(
        Code::Syntax,
        Span::new(file, at, end),
        format!("syntax error: expected {expected}, found {found_text}"),
    )
    .label(format!("expected {expected}"));
    if found == "=" {
        diag = diag.help("comparisons are written `==`; `=` is only for test packet fields");
    } else if expected == "`drop` or `bypass`" {
        // The word is missing: point at the `on_failure` that wants it, not at whatever
        // follows (often the next declaration, on the next line).
        let before = text[..at.min(text.len())].trim_end();
        if let Some(start) = before.strip_suffix("on_failure").map(str::len) {
            diag.span = Span::new(file, start, before.len());
            diag.label = Some("`drop` or `bypass` must follow".into());
        }
        diag = diag.help(
            "`on_failure drop` (the default) drops the VM's packets while it is down; \
             `on_failure bypass` skips it",
        );
    } else if (found == "trusted" || found == "untrusted") && expected == "a declaration" {
        diag = diag.help(
            "a vm declaration says `trusted` or `untrusted` once, right after its names and \
             before `on_failure`: `vm fw trusted on_failure bypass`",
        );
    } else if DECL_KEYWORDS.contains(&found) && at > 0 {
        diag = diag.help("the previous declaration is incomplete");
    }
    diag
}

fn describe_expected(rules: &[Rule]) -> String {
    let mut names: Vec<&str> = Vec::new();
    for rule in rules {
        let name = match rule {
            Rule::name | Rule::ident | Rule::path | Rule::test_name => "a name",
            Rule::operand | Rule::payload_index => "a field",
            Rule::int | Rule::dec_int | Rule::hex_int | Rule::bin_int => "an integer",
            Rule::address => "an address",
            Rule::string => "a string",
            Rule::regex => "a regex",
            Rule::scalar | Rule::value | Rule::set | Rule::bounded => "a value",
            Rule::cmp_op => "a comparison operator",
            Rule::in_op | Rule::not_in | Rule::k_in => "`in`",
            Rule::pred | Rule::and_expr | Rule::not_expr | Rule::comparison => "a predicate",
            Rule::payload_test | Rule::payload_kw => "`contains`, `starts_with` or `matches`",
            Rule::action | Rule::actions => "an action",
            Rule::hop => "a chain hop",
            Rule::one_decl
            | Rule::import
            | Rule::const_decl
            | Rule::let_decl
            | Rule::port_decl
            | Rule::vm_decl
            | Rule::group_decl
            | Rule::rule_decl
            | Rule::default_decl
            | Rule::test_decl => "a declaration",
            Rule::EOI => "end of input",
            Rule::case => "a test case",
            Rule::assign => "a field assignment",
            Rule::trust => "`trusted` or `untrusted`",
            Rule::on_failure | Rule::k_on_failure => "`on_failure`",
            Rule::failure_policy => "`drop` or `bypass`",
            Rule::key => "a balance key",
            Rule::mask => "`&`",
            Rule::std_module => "`std.NAME`",
            Rule::binding => "a driver binding",
            Rule::expect_rule => "`rule NAME`",
            _ => "more input",
        };
        if !names.contains(&name) {
            names.push(name);
        }
    }
    match names.len() {
        0 => "something else".into(),
        1 => names[0].into(),
        _ => {
            let last = names.pop().unwrap_or_default();
            format!("{} or {}", names.join(", "), last)
        }
    }
}

struct Builder {
    file: FileId,
    /// Byte offset of the text pest saw within the file.
    offset: usize,
    diags: Vec<Diagnostic>,
}

impl Builder {
    fn span(&self, pair: &Pair<Rule>) -> Span {
        let s = pair.as_span();
        Span::new(self.file, self.offset + s.start(), self.offset + s.end())
    }

    fn loc(&self, pair: &Pair<Rule>) -> Loc {
        Loc(self.span(pair))
    }

    fn error(&mut self, code: Code, span: Span, message: impl Into<String>) -> &mut Diagnostic {
        self.diags.push(Diagnostic::new(code, span, message));
        self.diags.last_mut().expect("just pushed")
    }

    fn name(&self, pair: Pair<Rule>) -> Name {
        Name {
            text: pair.as_str().to_string(),
            loc: self.loc(&pair),
        }
    }

    fn path(&self, pair: Pair<Rule>) -> Path {
        Path {
            text: pair.as_str().to_string(),
            loc: self.loc(&pair),
        }
    }

    /// A node's span, ending at its last token (pest's span of a rule that ends in an optional
    /// part takes in the whitespace and comments after it).
    fn tight_loc(&self, pair: &Pair<Rule>) -> Loc {
        let mut span = self.span(pair);
        span.end = span.start + trimmed_len(pair.as_str()) as u32;
        Loc(span)
    }

    fn decl(&mut self, pair: Pair<Rule>) -> Decl {
        let loc = self.tight_loc(&pair);
        let rule = pair.as_rule();
        let mut inner = pair.into_inner().filter(|p| !is_keyword(p.as_rule()));
        let mut next = || inner.next().expect("grammar guarantees the child");
        let kind = match rule {
            Rule::import => {
                let target = next();
                match target.as_rule() {
                    Rule::std_module => {
                        let module = target.into_inner().next().expect("std module name");
                        DeclKind::Import(ImportTarget::Std(self.name(module)))
                    }
                    _ => {
                        let loc = self.loc(&target);
                        let bytes = self.string(target);
                        let path = String::from_utf8_lossy(&bytes).into_owned();
                        DeclKind::Import(ImportTarget::File { path, loc })
                    }
                }
            }
            Rule::const_decl => {
                let name = self.name(next());
                let value = self.value(next());
                DeclKind::Const { name, value }
            }
            Rule::let_decl => {
                let name = self.name(next());
                let pred = self.pred(next());
                DeclKind::Let { name, pred }
            }
            Rule::port_decl => {
                let name = self.name(next());
                let binding = inner.next().map(|b| {
                    let mut parts = b.into_inner();
                    let driver = self.name(parts.next().expect("driver name"));
                    let args = parts
                        .next()
                        .map(|s| String::from_utf8_lossy(&self.string(s)).into_owned());
                    PortBinding { driver, args }
                });
                DeclKind::Port { name, binding }
            }
            Rule::vm_decl => {
                let mut names = Vec::new();
                let mut trusted = None;
                let mut on_failure = Vec::new();
                for p in inner {
                    match p.as_rule() {
                        Rule::name => names.push(self.name(p)),
                        Rule::trust => {
                            let word = p.as_str();
                            trusted = Some(word == "trusted");
                        }
                        Rule::on_failure => {
                            let loc = self.tight_loc(&p);
                            let word = p
                                .into_inner()
                                .find(|w| w.as_rule() == Rule::failure_policy)
                                .expect("grammar: on_failure holds its word");
                            on_failure.push(OnFailureClause {
                                word: self.name(word),
                                loc,
                            });
                        }
                        _ => {}
                    }
                }
                DeclKind::Vm {
                    names,
                    trusted,
                    on_failure,
                }
            }
            Rule::group_decl => {
                let name = self.name(next());
                let members = inner.map(|p| self.name(p)).collect();
                DeclKind::Group { name, members }
            }
            Rule::rule_decl => {
                let name = self.name(next());
                let mut before = None;
                let mut pred = None;
                let mut actions = Vec::new();
                for p in inner {
                    match p.as_rule() {
                        Rule::before => {
                            let n = p.into_inner().next().expect("before name");
                            before = Some(self.name(n));
                        }
                        Rule::pred => pred = Some(self.pred(p)),
                        Rule::actions => actions = self.actions(p),
                        _ => {}
                    }
                }
                DeclKind::Rule {
                    name,
                    before,
                    pred: pred.expect("rule has a predicate"),
                    actions,
                }
            }
            Rule::default_decl => DeclKind::Default {
                actions: self.actions(next()),
            },
            Rule::test_decl => {
                let title_bytes = self.string(next());
                let title = String::from_utf8_lossy(&title_bytes).into_owned();
                let cases = inner.map(|p| self.case(p)).collect();
                DeclKind::Test { title, cases }
            }
            other => unreachable!("not a declaration rule: {other:?}"),
        };
        Decl { kind, loc }
    }

    fn case(&mut self, pair: Pair<Rule>) -> Case {
        let loc = self.tight_loc(&pair);
        let mut inner = pair.into_inner();
        let proto = self.name(inner.next().expect("case proto"));
        let mut assigns = Vec::new();
        let mut expect = Expect::Actions(Vec::new());
        for p in inner {
            match p.as_rule() {
                Rule::assign => assigns.push(self.assign(p)),
                Rule::expect_rule => {
                    let target = p
                        .into_inner()
                        .find(|q| q.as_rule() == Rule::name || q.as_rule() == Rule::k_default);
                    expect = Expect::Rule(match target {
                        Some(q) if q.as_rule() == Rule::name => Some(self.name(q)),
                        _ => None,
                    });
                }
                Rule::actions => expect = Expect::Actions(self.actions(p)),
                _ => {}
            }
        }
        Case {
            proto,
            assigns,
            expect,
            loc,
        }
    }

    fn assign(&mut self, pair: Pair<Rule>) -> Assign {
        let mut inner = pair.into_inner();
        let target_pair = inner
            .next()
            .and_then(|t| t.into_inner().next())
            .expect("assign target");
        let target = self.operand_inner(target_pair);
        let value = self.value(inner.next().expect("assign value"));
        Assign { target, value }
    }

    fn actions(&mut self, pair: Pair<Rule>) -> Vec<Action> {
        pair.into_inner().map(|a| self.action(a)).collect()
    }

    fn action(&mut self, pair: Pair<Rule>) -> Action {
        let loc = self.loc(&pair);
        let inner = pair.into_inner().next().expect("action body");
        let kind = match inner.as_rule() {
            Rule::drop => ActionKind::Drop,
            Rule::out => ActionKind::Out(self.first_name(inner)),
            Rule::to => ActionKind::To(self.first_name(inner)),
            Rule::mirror => ActionKind::Mirror(self.first_name(inner)),
            Rule::count => ActionKind::Count(self.first_name(inner)),
            Rule::balance => ActionKind::Balance(self.balance(inner)),
            Rule::chain => ActionKind::Chain(inner.into_inner().map(|h| self.hop(h)).collect()),
            other => unreachable!("not an action: {other:?}"),
        };
        Action { kind, loc }
    }

    fn first_name(&self, pair: Pair<Rule>) -> Name {
        let n = pair
            .into_inner()
            .find(|p| p.as_rule() == Rule::name)
            .expect("action names a target");
        self.name(n)
    }

    fn hop(&mut self, pair: Pair<Rule>) -> Hop {
        let inner = pair.into_inner().next().expect("hop body");
        match inner.as_rule() {
            Rule::out => Hop::Out(self.first_name(inner)),
            Rule::drop => Hop::Drop(self.loc(&inner)),
            Rule::balance => Hop::Balance(self.balance(inner)),
            _ => Hop::Vm(self.name(inner)),
        }
    }

    fn balance(&mut self, pair: Pair<Rule>) -> Balance {
        let loc = self.loc(&pair);
        let mut inner = pair.into_inner();
        let group = self.name(inner.next().expect("balance group"));
        let key = inner.next().map(|k| {
            let text = k.as_str().trim_start();
            let parts: Vec<Pair<Rule>> = k.into_inner().collect();
            if parts.first().map(|p| p.as_rule()) == Some(Rule::k_flow) {
                BalanceKey::Flow
            } else if text.starts_with('(') {
                BalanceKey::Fields(parts.into_iter().map(|p| self.path(p)).collect())
            } else {
                BalanceKey::Field(self.path(parts.into_iter().next().expect("key path")))
            }
        });
        Balance { group, key, loc }
    }

    fn pred(&mut self, pair: Pair<Rule>) -> Pred {
        let loc = self.tight_loc(&pair);
        match pair.as_rule() {
            Rule::pred => {
                let mut items: Vec<Pred> = pair.into_inner().map(|p| self.pred(p)).collect();
                if items.len() == 1 {
                    items.pop().expect("one item")
                } else {
                    Pred {
                        kind: PredKind::Or(items),
                        loc,
                    }
                }
            }
            Rule::and_expr => {
                let mut items: Vec<Pred> = pair.into_inner().map(|p| self.pred(p)).collect();
                if items.len() == 1 {
                    items.pop().expect("one item")
                } else {
                    Pred {
                        kind: PredKind::And(items),
                        loc,
                    }
                }
            }
            Rule::not_expr => {
                let mut nots = Vec::new();
                let mut primary = None;
                for p in pair.into_inner() {
                    if p.as_rule() == Rule::k_not {
                        nots.push(self.span(&p));
                    } else {
                        primary = Some(self.pred(p));
                    }
                }
                let mut pred = primary.expect("not_expr holds a primary");
                for not_span in nots.into_iter().rev() {
                    let span = not_span.to(pred.span());
                    pred = Pred {
                        kind: PredKind::Not(Box::new(pred)),
                        loc: Loc(span),
                    };
                }
                pred
            }
            Rule::test_name => {
                let path = self.path(pair.into_inner().next().expect("path"));
                Pred {
                    kind: PredKind::Test(path),
                    loc,
                }
            }
            Rule::comparison => {
                let mut inner = pair.into_inner();
                let operand = self.operand(inner.next().expect("operand"));
                let mut mask = None;
                let mut next = inner.next().expect("operator");
                if next.as_rule() == Rule::mask {
                    let scalar = next.into_inner().next().expect("mask value");
                    mask = Some(self.scalar(scalar));
                    next = inner.next().expect("operator");
                }
                let value = self.value(inner.next().expect("value"));
                let kind = match next.as_rule() {
                    Rule::not_in | Rule::in_op => PredKind::Member {
                        operand,
                        negated: next.as_rule() == Rule::not_in,
                        value,
                    },
                    _ => PredKind::Compare {
                        operand,
                        mask,
                        op: match next.as_str() {
                            "==" => CmpOp::Eq,
                            "!=" => CmpOp::Ne,
                            "<" => CmpOp::Lt,
                            "<=" => CmpOp::Le,
                            ">" => CmpOp::Gt,
                            _ => CmpOp::Ge,
                        },
                        value,
                    },
                };
                Pred { kind, loc }
            }
            Rule::payload_test => {
                let mut inner = pair.into_inner();
                let op = match inner.next().expect("payload op").as_str() {
                    "contains" => PayloadOp::Contains,
                    "starts_with" => PayloadOp::StartsWith,
                    _ => PayloadOp::Matches,
                };
                let arg = self.scalar(inner.next().expect("payload arg"));
                Pred {
                    kind: PredKind::Payload { op, arg },
                    loc,
                }
            }
            other => unreachable!("not a predicate rule: {other:?}"),
        }
    }

    fn operand(&mut self, pair: Pair<Rule>) -> Operand {
        let inner = pair.into_inner().next().expect("operand body");
        self.operand_inner(inner)
    }

    fn operand_inner(&mut self, inner: Pair<Rule>) -> Operand {
        match inner.as_rule() {
            Rule::payload_index => {
                let loc = self.loc(&inner);
                let int = inner.into_inner().next().expect("index");
                let index = self.int(int);
                Operand::PayloadByte { index, loc }
            }
            _ => Operand::Path(self.path(inner)),
        }
    }

    fn value(&mut self, pair: Pair<Rule>) -> Value {
        let loc = self.tight_loc(&pair);
        let inner = pair.into_inner().next().expect("value body");
        let kind = match inner.as_rule() {
            Rule::set => {
                let members = inner
                    .into_inner()
                    .map(|m| match self.bounded(m) {
                        (lo, Some(hi)) => Member::Range(lo, hi),
                        (scalar, None) => Member::Scalar(scalar),
                    })
                    .collect();
                ValueKind::Set(members)
            }
            _ => match self.bounded(inner) {
                (lo, Some(hi)) => ValueKind::Range(lo, hi),
                (scalar, None) => ValueKind::Scalar(scalar),
            },
        };
        Value { kind, loc }
    }

    /// A scalar, or the two ends of a range.
    fn bounded(&mut self, pair: Pair<Rule>) -> (Scalar, Option<Scalar>) {
        let mut inner = pair.into_inner();
        let lo = self.scalar(inner.next().expect("scalar"));
        let hi = inner.next().map(|p| self.scalar(p));
        (lo, hi)
    }

    fn scalar(&mut self, pair: Pair<Rule>) -> Scalar {
        let loc = self.loc(&pair);
        let inner = pair.into_inner().next().expect("scalar body");
        let kind = match inner.as_rule() {
            Rule::int => match parse_int(inner.as_str()) {
                Some(v) => ScalarKind::Int(v, radix_of(inner.as_str())),
                None => {
                    self.int(inner);
                    ScalarKind::Invalid
                }
            },
            Rule::address => self.address(inner),
            Rule::string => ScalarKind::Str(self.string(inner)),
            Rule::regex => {
                let mut parts = inner.into_inner();
                let body = parts.next().expect("regex body");
                let flags = parts
                    .next()
                    .map(|f| f.as_str().to_string())
                    .unwrap_or_default();
                for (i, c) in flags.char_indices() {
                    if c != 'i' && c != 's' {
                        let span = self.span(&body);
                        let at = span.end as usize + 1 + i;
                        self.error(
                            Code::BadRegex,
                            Span::new(self.file, at, at + c.len_utf8()),
                            format!("unknown regex flag `{c}`"),
                        )
                        .help = Some(
                            "the flags are `i` (case-insensitive) and `s` (`.` matches a newline)"
                                .into(),
                        );
                    }
                }
                ScalarKind::Regex {
                    pattern: body.as_str().replace("\\/", "/"),
                    flags,
                }
            }
            _ => ScalarKind::Name(inner.as_str().to_string()),
        };
        Scalar { kind, loc }
    }

    fn int(&mut self, pair: Pair<Rule>) -> u128 {
        let span = self.span(&pair);
        let text = pair.as_str();
        match parse_int(text) {
            Some(v) => v,
            None => {
                self.error(
                    Code::BadLiteral,
                    span,
                    format!("`{text}` is not a valid integer"),
                )
                .label = Some("too large or malformed".into());
                0
            }
        }
    }

    fn address(&mut self, pair: Pair<Rule>) -> ScalarKind {
        let span = self.span(&pair);
        let mut inner = pair.into_inner();
        let addr_pair = inner.next().expect("address text");
        let text = addr_pair.as_str();
        let prefix_pair = inner.next();
        let addr = match addr_pair.as_rule() {
            Rule::ipv4_text => text
                .parse::<std::net::Ipv4Addr>()
                .ok()
                .map(|a| Addr::V4(a.into())),
            _ => parse_mac(text).map(Addr::Mac).or_else(|| {
                text.parse::<std::net::Ipv6Addr>()
                    .ok()
                    .map(|a| Addr::V6(a.into()))
            }),
        };
        let Some(addr) = addr else {
            let what = if addr_pair.as_rule() == Rule::ipv4_text {
                "an IPv4 address (four numbers 0-255)"
            } else {
                "an IPv6 address or a MAC address"
            };
            self.error(Code::BadLiteral, span, format!("`{text}` is not {what}"));
            return ScalarKind::Invalid;
        };
        let Some(prefix_pair) = prefix_pair else {
            return ScalarKind::Addr {
                addr,
                prefix_len: None,
            };
        };
        let max_len = match addr {
            Addr::V4(_) => 32,
            Addr::V6(_) => 128,
            Addr::Mac(_) => {
                self.error(
                    Code::BadLiteral,
                    span,
                    "a MAC address takes no prefix length",
                );
                return ScalarKind::Addr {
                    addr,
                    prefix_len: None,
                };
            }
        };
        let len = prefix_pair.as_str().parse::<u32>().unwrap_or(u32::MAX);
        if len > max_len {
            self.error(
                Code::OutOfRange,
                self.span(&prefix_pair),
                format!("prefix length /{} is out of range", prefix_pair.as_str()),
            )
            .help = Some(format!("the prefix length is 0..{max_len}"));
            return ScalarKind::Addr {
                addr,
                prefix_len: Some(max_len as u8),
            };
        }
        let len = len as u8;
        let (host_bits_set, corrected) = match addr {
            Addr::V4(a) => {
                let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
                (
                    a & !mask != 0,
                    format!("{}/{len}", std::net::Ipv4Addr::from(a & mask)),
                )
            }
            Addr::V6(a) => {
                let mask = if len == 0 {
                    0
                } else {
                    u128::MAX << (128 - len)
                };
                (
                    a & !mask != 0,
                    format!("{}/{len}", std::net::Ipv6Addr::from(a & mask)),
                )
            }
            Addr::Mac(_) => (false, String::new()),
        };
        if host_bits_set {
            self.error(
                Code::HostBits,
                span,
                format!("prefix `{}` has host bits set", pair_text(text, len)),
            )
            .label = Some("bits after the prefix length must be zero".into());
            if let Some(d) = self.diags.last_mut() {
                d.help = Some(format!("did you mean `{corrected}`?"));
            }
        }
        ScalarKind::Addr {
            addr,
            prefix_len: Some(len),
        }
    }

    fn string(&mut self, pair: Pair<Rule>) -> Vec<u8> {
        let body = pair.into_inner().next().expect("string body");
        let start = self.span(&body).start as usize;
        let text = body.as_str();
        let mut out = Vec::with_capacity(text.len());
        let mut chars = text.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            if c != '\\' {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                continue;
            }
            let Some((_, e)) = chars.next() else { break };
            match e {
                'n' => out.push(b'\n'),
                'r' => out.push(b'\r'),
                't' => out.push(b'\t'),
                '\\' => out.push(b'\\'),
                '"' => out.push(b'"'),
                'x' => {
                    let hi = chars.next().map(|(_, c)| c);
                    let lo = chars.next().map(|(_, c)| c);
                    let byte = match (
                        hi.and_then(|c| c.to_digit(16)),
                        lo.and_then(|c| c.to_digit(16)),
                    ) {
                        (Some(h), Some(l)) => Some((h * 16 + l) as u8),
                        _ => None,
                    };
                    match byte {
                        Some(b) => out.push(b),
                        None => {
                            let end = (start + i + 4).min(start + text.len());
                            self.error(
                                Code::BadLiteral,
                                Span::new(self.file, start + i, end),
                                "`\\x` must be followed by two hex digits",
                            )
                            .help = Some("write a byte as `\\xHH`, e.g. `\\x13`".into());
                        }
                    }
                }
                other => {
                    let end = start + i + 1 + other.len_utf8();
                    self.error(
                        Code::BadLiteral,
                        Span::new(self.file, start + i, end),
                        format!("unknown escape `\\{other}`"),
                    )
                    .help = Some(r#"the escapes are \n \r \t \\ \" and \xHH"#.into());
                }
            }
        }
        out
    }
}

/// The length of `text` without the whitespace and comments that end it.
fn trimmed_len(text: &str) -> usize {
    let mut end = text.trim_end().len();
    loop {
        // A comment runs to the end of its line; drop a last line that is only a comment tail.
        let line_start = text[..end].rfind('\n').map_or(0, |i| i + 1);
        let line = &text[line_start..end];
        match comment_start(line) {
            Some(i) => end = text[..line_start + i].trim_end().len(),
            None => return end,
        }
    }
}

/// Where the first `#` or `//` comment starts in `text`, skipping strings, regex literals
/// and the `/` of prefixes (a `/` right after an address character).
pub(crate) fn comment_start(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' && bytes[i] != b'\n' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'#' => return Some(i),
            b'/' if bytes.get(i + 1) == Some(&b'/') => return Some(i),
            b'/' => {
                let prefix = i > 0
                    && (bytes[i - 1].is_ascii_hexdigit()
                        || bytes[i - 1] == b':'
                        || bytes[i - 1] == b'.');
                if !prefix {
                    i += 1;
                    while i < bytes.len() && bytes[i] != b'/' && bytes[i] != b'\n' {
                        i += if bytes[i] == b'\\' { 2 } else { 1 };
                    }
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

fn pair_text(addr: &str, len: u8) -> String {
    format!("{addr}/{len}")
}

fn is_keyword(rule: Rule) -> bool {
    matches!(
        rule,
        Rule::k_import
            | Rule::k_const
            | Rule::k_let
            | Rule::k_port
            | Rule::k_vm
            | Rule::k_group
            | Rule::k_rule
            | Rule::k_default
            | Rule::k_test
    )
}

fn radix_of(text: &str) -> Radix {
    if text.starts_with("0x") {
        Radix::Hex
    } else if text.starts_with("0b") {
        Radix::Binary
    } else {
        Radix::Decimal
    }
}

/// Decimal, `0x` hex or `0b` binary, with `_` separators.
pub fn parse_int(text: &str) -> Option<u128> {
    let clean: String = text.chars().filter(|&c| c != '_').collect();
    let (digits, radix) = if let Some(h) = clean.strip_prefix("0x") {
        (h, 16)
    } else if let Some(b) = clean.strip_prefix("0b") {
        (b, 2)
    } else {
        (clean.as_str(), 10)
    };
    if digits.is_empty() {
        return None;
    }
    u128::from_str_radix(digits, radix).ok()
}

/// Six groups of one or two hex digits separated by `:`.
fn parse_mac(text: &str) -> Option<u64> {
    let groups: Vec<&str> = text.split(':').collect();
    if groups.len() != 6 {
        return None;
    }
    let mut value = 0u64;
    for g in groups {
        if g.is_empty() || g.len() > 2 {
            return None;
        }
        value = value << 8 | u64::from_str_radix(g, 16).ok()?;
    }
    Some(value)
}
