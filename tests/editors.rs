//! The editor grammars under `editors/` (VS Code's TextMate grammar and the Vim syntax file)
//! against netvm's own lexical rules, run by the real editors' engines: Vim itself
//! (`vim -es`, `synID()` at every byte) and VS Code's tokenizer (`vscode-textmate` with
//! `vscode-oniguruma`, under node).
//!
//! The corpus is every example, every stdlib module, the complete example of LANGUAGE.md and
//! `tests/editors/edge-cases.nvr` (a valid policy, checked here first, holding the places where
//! a word, a number or a slash could be read as the wrong token). A small reference lexer,
//! written from `lang/src/nvr.pest`'s lexical rules, says what every byte is; both engines must
//! put every byte of every token in the token's class, leave plain names unhighlighted, and
//! the corpus must hold every token class.
//!
//! Without vim, or without node and the two npm packages (`.ci/run` installs them into
//! `$NVR_NODE_MODULES`, default `~/.cache/netvm-editors/node_modules`), that engine's half
//! says why it is skipped and what to install.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    Comment,
    String,
    Escape,
    Regex,
    Address,
    Number,
    Declaration,
    Trust,
    Logic,
    Action,
    Module,
    Field,
    Protocol,
    Driver,
    Operator,
    /// A name the operator chose: no highlighting at all.
    Name,
}

const ALL_CLASSES: [Class; 16] = [
    Class::Comment,
    Class::String,
    Class::Escape,
    Class::Regex,
    Class::Address,
    Class::Number,
    Class::Declaration,
    Class::Trust,
    Class::Logic,
    Class::Action,
    Class::Module,
    Class::Field,
    Class::Protocol,
    Class::Driver,
    Class::Operator,
    Class::Name,
];

#[derive(Debug)]
struct Token {
    line: usize,
    start: usize,
    end: usize,
    class: Class,
    text: String,
}

const DECLARATIONS: &[&str] = &[
    "import",
    "const",
    "let",
    "port",
    "vm",
    "group",
    "rule",
    "default",
    "test",
    "on_failure",
];
const TRUST: &[&str] = &["trusted", "untrusted"];
const LOGIC: &[&str] = &[
    "and",
    "or",
    "not",
    "in",
    "contains",
    "starts_with",
    "matches",
];
const ACTIONS: &[&str] = &[
    "drop", "out", "to", "chain", "balance", "by", "mirror", "count", "flow", "before",
];
const PROTOCOLS: &[&str] = &[
    "eth", "vlan", "arp", "ip", "ip6", "tcp", "udp", "icmp", "icmp6",
];
/// Words that start a field path (`tcp.dport`, `l4.sport`, `pkt.len`, `payload.len`).
const FIELD_ROOTS: &[&str] = &[
    "eth", "vlan", "arp", "ip", "ip6", "tcp", "udp", "icmp", "icmp6", "l4", "pkt", "payload",
];
const OPERATORS: &[&str] = &["=>", "->", "==", "!=", "<=", ">=", "..", "<", ">", "&", "="];

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_'
}

/// `ident_char` of the grammar: a letter, digit, `_`, or `-` not followed by `>`.
fn ident_char_at(s: &[u8], i: usize) -> bool {
    match s.get(i) {
        Some(b) if b.is_ascii_alphanumeric() || *b == b'_' => true,
        Some(b'-') => s.get(i + 1) != Some(&b'>'),
        _ => false,
    }
}

fn digits(s: &[u8], mut i: usize) -> usize {
    while i < s.len() && s[i].is_ascii_digit() {
        i += 1;
    }
    i
}

/// `ipv4_text ("/" prefix_len)?` at `i`, not followed by an identifier character.
fn ipv4_end(s: &[u8], i: usize) -> Option<usize> {
    let mut j = digits(s, i);
    if j == i {
        return None;
    }
    for _ in 0..3 {
        if s.get(j) != Some(&b'.') {
            return None;
        }
        let k = digits(s, j + 1);
        if k == j + 1 {
            return None;
        }
        j = k;
    }
    if s.get(j) == Some(&b'/') && digits(s, j + 1) > j + 1 {
        j = digits(s, j + 1);
    }
    (!ident_char_at(s, j) && s.get(j) != Some(&b'.') && s.get(j) != Some(&b':')).then_some(j)
}

/// The grammar's `colon_text ("/" prefix_len)?` (IPv6 addresses and MACs), with at least two
/// colons: one colon alone is punctuation (`rule a : b`) in every editor.
fn colon_end(s: &[u8], i: usize) -> Option<usize> {
    let mut j = i;
    let mut colons = 0;
    loop {
        let k = {
            let mut k = j;
            while k < s.len() && s[k].is_ascii_hexdigit() {
                k += 1;
            }
            k
        };
        if s.get(k) == Some(&b':') {
            colons += 1;
            j = k + 1;
        } else {
            j = k;
            break;
        }
    }
    if colons < 2 {
        return None;
    }
    for _ in 0..3 {
        if s.get(j) == Some(&b'.') && digits(s, j + 1) > j + 1 {
            j = digits(s, j + 1);
        } else {
            break;
        }
    }
    if s.get(j) == Some(&b'/') && digits(s, j + 1) > j + 1 {
        j = digits(s, j + 1);
    }
    (!ident_char_at(s, j)).then_some(j)
}

/// The grammar's `int`: `0x`/`0b`/decimal with `_`, not followed by an identifier character
/// or a colon.
fn int_end(s: &[u8], i: usize) -> Option<usize> {
    let rest = &s[i..];
    let j = if rest.starts_with(b"0x") || rest.starts_with(b"0b") {
        let hex = rest[1] == b'x';
        let mut j = i + 2;
        while j < s.len()
            && (s[j] == b'_'
                || (hex && s[j].is_ascii_hexdigit())
                || (!hex && (s[j] == b'0' || s[j] == b'1')))
        {
            j += 1;
        }
        (j > i + 2).then_some(j)?
    } else if rest.first()?.is_ascii_digit() {
        let mut j = i;
        while j < s.len() && (s[j].is_ascii_digit() || s[j] == b'_') {
            j += 1;
        }
        j
    } else {
        return None;
    };
    (!ident_char_at(s, j) && s.get(j) != Some(&b':')).then_some(j)
}

fn word_class(path: &str, next: Option<u8>) -> Class {
    let mut segments = path.split('.');
    let first = segments.next().unwrap_or("");
    let dotted = path.contains('.');
    if dotted {
        return if first == "std" {
            Class::Module
        } else if FIELD_ROOTS.contains(&first) {
            Class::Field
        } else {
            Class::Name
        };
    }
    if DECLARATIONS.contains(&path) {
        Class::Declaration
    } else if TRUST.contains(&path) {
        Class::Trust
    } else if LOGIC.contains(&path) {
        Class::Logic
    } else if ACTIONS.contains(&path) {
        Class::Action
    } else if PROTOCOLS.contains(&path) {
        Class::Protocol
    } else if path == "in_port" || path == "payload" {
        Class::Field
    } else if next == Some(b'(') {
        Class::Driver
    } else {
        Class::Name
    }
}

/// Every token of one line; punctuation (`{ } ( ) [ ] , :`) is not a token here.
fn lex_line(line_no: usize, line: &str, out: &mut Vec<Token>) {
    let s = line.as_bytes();
    let mut i = 0;
    let mut push = |start: usize, end: usize, class: Class| {
        out.push(Token {
            line: line_no,
            start,
            end,
            class,
            text: line[start..end].to_string(),
        })
    };
    while i < s.len() {
        let b = s[i];
        let rest = &s[i..];
        if b.is_ascii_whitespace() {
            i += 1;
        } else if b == b'#' || rest.starts_with(b"//") {
            push(i, s.len(), Class::Comment);
            break;
        } else if b == b'"' {
            let start = i;
            let mut j = i + 1;
            let mut pieces = Vec::new();
            while j < s.len() && s[j] != b'"' {
                if s[j] == b'\\' && j + 1 < s.len() {
                    let len = if s[j + 1] == b'x' { 4 } else { 2 };
                    pieces.push((j, (j + len).min(s.len())));
                    j += len;
                } else {
                    j += 1;
                }
            }
            let end = (j + 1).min(s.len());
            // The string's own bytes between escapes, then each escape.
            let mut at = start;
            for &(a, z) in &pieces {
                if a > at {
                    push(at, a, Class::String);
                }
                push(a, z, Class::Escape);
                at = z;
            }
            push(at, end, Class::String);
            i = end;
        } else if b == b'/' {
            let mut j = i + 1;
            while j < s.len() && s[j] != b'/' {
                j += if s[j] == b'\\' { 2 } else { 1 };
            }
            j = (j + 1).min(s.len());
            while j < s.len() && s[j].is_ascii_alphabetic() {
                j += 1;
            }
            push(i, j, Class::Regex);
            i = j;
        } else if let Some(j) = ipv4_end(s, i).or_else(|| colon_end(s, i)) {
            push(i, j, Class::Address);
            i = j;
        } else if let Some(j) = int_end(s, i) {
            push(i, j, Class::Number);
            i = j;
        } else if is_ident_start(b) {
            let mut j = i;
            loop {
                j += 1;
                while ident_char_at(s, j) {
                    j += 1;
                }
                if s.get(j) == Some(&b'.') && s.get(j + 1).copied().is_some_and(is_ident_start) {
                    j += 1;
                } else {
                    break;
                }
            }
            push(i, j, word_class(&line[i..j], s.get(j).copied()));
            i = j;
        } else if let Some(op) = OPERATORS.iter().find(|op| rest.starts_with(op.as_bytes())) {
            push(i, i + op.len(), Class::Operator);
            i += op.len();
        } else {
            i += 1;
        }
    }
}

fn lex(text: &str) -> Vec<Token> {
    let mut out = Vec::new();
    for (n, line) in text.split('\n').enumerate() {
        lex_line(n, line, &mut out);
    }
    out
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The corpus: (a name for messages, the file the engines read).
fn corpus(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for sub in ["examples", "stdlib", "tests/editors"] {
        let mut these: Vec<PathBuf> = std::fs::read_dir(root().join(sub))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "nvr"))
            .collect();
        these.sort();
        files.extend(these);
    }
    // LANGUAGE.md's complete example, when ../shared is beside the checkout (it is in CI).
    let spec = root().join("../shared/spec/LANGUAGE.md");
    if let Ok(text) = std::fs::read_to_string(&spec) {
        let block = text
            .split("```nvr\n")
            .nth(1)
            .and_then(|rest| rest.split("\n```").next())
            .expect("LANGUAGE.md has an ```nvr block");
        let path = dir.join("language-md-example.nvr");
        std::fs::write(&path, block).unwrap();
        files.push(path);
    } else {
        eprintln!(
            "note: {} not found; its example is left out",
            spec.display()
        );
    }
    files
}

/// What class an engine's name for a byte (a Vim syntax item, a TextMate scope) is.
fn engine_class(name: &str) -> Option<Class> {
    Some(match name {
        "-" => Class::Name,
        "nvrComment" | "comment.line.nvr" => Class::Comment,
        "nvrString" | "string.quoted.double.nvr" => Class::String,
        "nvrEscape" | "constant.character.escape.nvr" => Class::Escape,
        "nvrRegex" | "string.regexp.nvr" => Class::Regex,
        "nvrAddress" | "constant.other.address.nvr" => Class::Address,
        "nvrNumber" | "constant.numeric.nvr" => Class::Number,
        "nvrDeclaration" | "keyword.declaration.nvr" => Class::Declaration,
        "nvrTrust" | "storage.modifier.nvr" => Class::Trust,
        "nvrLogic" | "keyword.operator.word.nvr" => Class::Logic,
        "nvrAction" | "keyword.control.action.nvr" => Class::Action,
        "nvrModule" | "entity.name.namespace.nvr" => Class::Module,
        "nvrField" | "variable.language.field.nvr" => Class::Field,
        "nvrProtocol" | "support.type.protocol.nvr" => Class::Protocol,
        "nvrDriver" | "support.function.driver.nvr" => Class::Driver,
        "nvrOperator" | "keyword.operator.nvr" => Class::Operator,
        _ => return None,
    })
}

/// Compares one engine's per-byte names (`lines[n]` = names of line n's bytes) with the
/// reference tokens of `text`; returns one message per disagreement.
fn disagreements(engine: &str, file: &Path, text: &str, lines: &[Vec<String>]) -> Vec<String> {
    let mut problems = Vec::new();
    for token in lex(text) {
        let names = lines.get(token.line).cloned().unwrap_or_default();
        for byte in token.start..token.end {
            let name = names.get(byte).map(String::as_str).unwrap_or("<none>");
            if engine_class(name) != Some(token.class) {
                problems.push(format!(
                    "{engine}: {}:{}:{}: `{}` should be {:?}, byte {} is {name}",
                    file.display(),
                    token.line + 1,
                    token.start + 1,
                    token.text,
                    token.class,
                    byte + 1,
                ));
                break;
            }
        }
    }
    problems
}

fn split_names(line: &str) -> Vec<String> {
    line.split(' ')
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .collect()
}

fn vim_names(file: &Path, out: &Path) -> Option<Vec<Vec<String>>> {
    let status = Command::new("vim")
        .args(["-Nu", "NONE", "-i", "NONE", "-es"])
        .arg("-c")
        .arg(format!("set rtp^={}", root().join("editors/vim").display()))
        .args(["-c", "filetype on", "-c", "syntax on", "-c"])
        .arg(format!("edit {}", file.display()))
        .arg("-c")
        .arg(format!(
            "source {}",
            root().join("editors/test/vim-dump.vim").display()
        ))
        .args(["-c", "qa!"])
        .env("NVR_SYNTAX_OUT", out)
        .status()
        .ok()?;
    assert!(status.success(), "vim failed on {}", file.display());
    let text = std::fs::read_to_string(out).expect("vim wrote its dump");
    Some(text.split('\n').map(split_names).collect())
}

#[test]
fn every_token_class_of_the_language_appears_in_the_corpus() {
    let dir = tempfile::tempdir().unwrap();
    let mut seen = BTreeSet::new();
    for file in corpus(dir.path()) {
        let text = std::fs::read_to_string(&file).unwrap();
        seen.extend(lex(&text).into_iter().map(|t| t.class));
    }
    let missing: Vec<_> = ALL_CLASSES.iter().filter(|c| !seen.contains(c)).collect();
    assert!(missing.is_empty(), "no example holds {missing:?}");
}

#[test]
fn the_edge_case_policy_is_a_valid_policy_whose_tests_pass() {
    let file = root().join("tests/editors/edge-cases.nvr");
    let check = support::netvm()
        .args(["check", "--deny-warnings"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let test = support::netvm().arg("test").arg(&file).output().unwrap();
    assert!(
        test.status.success(),
        "{}",
        String::from_utf8_lossy(&test.stdout)
    );
}

#[test]
fn vim_highlights_every_token_as_the_language_defines_it() {
    if Command::new("vim").arg("--version").output().is_err() {
        eprintln!(
            "SKIPPED: vim is not installed (apt-get install vim); the Vim grammar is untested"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut problems = Vec::new();
    for file in corpus(dir.path()) {
        let text = std::fs::read_to_string(&file).unwrap();
        let names = vim_names(&file, &dir.path().join("vim.out")).unwrap();
        problems.extend(disagreements("vim", &file, &text, &names));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn vscode_textmate_highlights_every_token_as_the_language_defines_it() {
    let modules = std::env::var_os("NVR_NODE_MODULES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/netvm-editors/node_modules")
        });
    if !modules.join("vscode-textmate").is_dir()
        || Command::new("node").arg("--version").output().is_err()
    {
        eprintln!(
            "SKIPPED: node or vscode-textmate/vscode-oniguruma not found in {} \
             (npm install --prefix {} vscode-textmate@9 vscode-oniguruma@2); \
             the VS Code grammar is untested",
            modules.display(),
            modules.parent().unwrap_or(&modules).display()
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let files = corpus(dir.path());
    let output = Command::new("node")
        .arg(root().join("editors/test/textmate-dump.js"))
        .arg(root().join("editors/vscode/syntaxes/nvr.tmLanguage.json"))
        .args(&files)
        .env("NODE_PATH", &modules)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let dumps: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let mut problems = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let lines: Vec<Vec<String>> = dumps[file.to_str().unwrap()]
            .as_array()
            .expect("a dump per file")
            .iter()
            .map(|l| split_names(l.as_str().unwrap_or("")))
            .collect();
        problems.extend(disagreements("vscode-textmate", file, &text, &lines));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
