//! The REPL's terminal: rustyline with persistent history, tab completion (commands,
//! keywords, the field catalogue, declared names, file paths), syntax highlighting and
//! multi-line input for unfinished declarations. Ctrl-C cancels the line being typed,
//! Ctrl-D on an empty line leaves. Every input goes to a [`ReplSession`]; nothing here
//! knows what a policy means.

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rustyline::completion::{Completer, FilenameCompleter, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::{CmdKind, Highlighter};
use rustyline::hint::Hinter;
use rustyline::history::DefaultHistory;
use rustyline::validate::{ValidationContext, ValidationResult, Validator};
use rustyline::{Context, Editor, Helper};

use super::{ReplSession, COMMANDS};

/// The language's keywords (LANGUAGE.md), for completion and highlighting.
pub const KEYWORDS: &[&str] = &[
    "import",
    "const",
    "let",
    "port",
    "vm",
    "group",
    "rule",
    "default",
    "test",
    "trusted",
    "untrusted",
    "and",
    "or",
    "not",
    "in",
    "contains",
    "starts_with",
    "matches",
    "drop",
    "out",
    "to",
    "chain",
    "balance",
    "by",
    "mirror",
    "count",
    "flow",
    "before",
];

/// Words that are not the language's but mean something in it: protocol tests, fields
/// (the catalogue of `netvm_packet`), `in_port` and `payload`.
fn catalogue() -> Vec<String> {
    let mut words: Vec<String> = netvm_packet::Proto::ALL
        .iter()
        .map(|p| p.name().to_string())
        .collect();
    words.extend(
        netvm_packet::Field::ALL
            .iter()
            .map(|f| f.name().to_string()),
    );
    words.extend(["in_port", "payload", "payload.len"].map(String::from));
    words
}

/// Commands whose argument is a file.
const FILE_COMMANDS: &[&str] = &[":load", ":diff", ":save"];
/// Commands whose argument is a declared name.
const NAME_COMMANDS: &[&str] = &[":show", ":del"];

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-')
}

/// Completions of the word that ends at `pos`: its start and the candidates, sorted.
/// `names` are the policy's declared names. `None` means "complete a file path".
pub fn complete_word(line: &str, pos: usize, names: &[String]) -> Option<(usize, Vec<String>)> {
    let before = &line[..pos];
    let start = before
        .char_indices()
        .rev()
        .find(|(_, c)| !is_word_char(*c))
        .map_or(0, |(i, c)| i + c.len_utf8());
    let word = &before[start..];
    let first = line.split_whitespace().next().unwrap_or("");
    let in_first_word = !before.trim_start().contains(char::is_whitespace);
    let candidates: Vec<String> = if line.trim_start().starts_with(':') {
        if in_first_word {
            COMMANDS.iter().map(|c| c.0.to_string()).collect()
        } else if FILE_COMMANDS.contains(&first) {
            return None;
        } else if NAME_COMMANDS.contains(&first) {
            names.to_vec()
        } else if first == ":explain" {
            catalogue()
        } else {
            Vec::new()
        }
    } else if first == "import" && !in_first_word {
        if !word.starts_with("std") {
            return None;
        }
        netvm_lang::load::STDLIB
            .iter()
            .map(|(name, _)| format!("std.{name}"))
            .collect()
    } else {
        let mut all: Vec<String> = KEYWORDS.iter().map(|k| k.to_string()).collect();
        all.extend(catalogue());
        all.extend(names.iter().cloned());
        all
    };
    let mut matches: Vec<String> = candidates
        .into_iter()
        .filter(|c| c.starts_with(word) && c != word)
        .collect();
    matches.sort();
    matches.dedup();
    Some((start, matches))
}

/// Whether `input` is an unfinished declaration that should continue on the next line:
/// an open `{` or `(`, a rule without `=>` yet, or a line that ends in an operator.
pub fn needs_more(input: &str) -> bool {
    let trimmed = input.trim();
    if trimmed.is_empty() || trimmed.starts_with(':') {
        return false;
    }
    let mut depth = 0i32;
    let mut in_string = false;
    let mut escaped = false;
    let mut code = String::new();
    for line in input.lines() {
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            if in_string {
                match c {
                    _ if escaped => escaped = false,
                    '\\' => escaped = true,
                    '"' => in_string = false,
                    _ => {}
                }
                continue;
            }
            match c {
                '"' => in_string = true,
                '#' => break,
                '/' if chars.peek() == Some(&'/') => break,
                '{' | '(' => depth += 1,
                '}' | ')' => depth -= 1,
                _ => {}
            }
            code.push(c);
        }
        code.push('\n');
    }
    if in_string || depth > 0 {
        return true;
    }
    let code = code.trim_end();
    let first = code.split_whitespace().next().unwrap_or("");
    if matches!(first, "rule" | "default") && !code.contains("=>") {
        return true;
    }
    ["=>", "->", ",", ":", "=", "and", "or", "not", "in"]
        .iter()
        .any(|end| {
            code.ends_with(end)
                && (!end.chars().all(char::is_alphabetic)
                    || code[..code.len() - end.len()].ends_with(char::is_whitespace))
        })
}

/// ANSI colors: keywords bold blue, fields cyan, strings green, numbers and addresses
/// yellow, comments dim, REPL commands magenta.
pub fn highlight_line(line: &str) -> String {
    const RESET: &str = "\x1b[0m";
    let fields = catalogue();
    let mut out = String::with_capacity(line.len() * 2);
    let mut chars = line.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c == '#' || (c == '/' && line[i..].starts_with("//")) {
            let end = line[i..].find('\n').map_or(line.len(), |n| i + n);
            out.push_str("\x1b[2m");
            out.push_str(&line[i..end]);
            out.push_str(RESET);
            while chars.peek().is_some_and(|(j, _)| *j < end) {
                chars.next();
            }
            continue;
        }
        if c == '"' {
            let mut end = line.len();
            let mut escaped = false;
            for (j, d) in line[i + 1..].char_indices() {
                if escaped {
                    escaped = false;
                } else if d == '\\' {
                    escaped = true;
                } else if d == '"' {
                    end = i + 1 + j + 1;
                    break;
                }
            }
            out.push_str("\x1b[32m");
            out.push_str(&line[i..end]);
            out.push_str(RESET);
            while chars.peek().is_some_and(|(j, _)| *j < end) {
                chars.next();
            }
            continue;
        }
        if is_word_char(c) {
            let mut end = line.len();
            while let Some(&(j, d)) = chars.peek() {
                if is_word_char(d) || d == '/' && c.is_ascii_digit() {
                    chars.next();
                } else {
                    end = j;
                    break;
                }
            }
            let word = &line[i..end];
            let color = if i == 0 && word.starts_with(':') {
                Some("\x1b[35m")
            } else if KEYWORDS.contains(&word) {
                Some("\x1b[1;34m")
            } else if fields.iter().any(|f| f == word) {
                Some("\x1b[36m")
            } else if word.starts_with(|c: char| c.is_ascii_digit()) {
                Some("\x1b[33m")
            } else {
                None
            };
            match color {
                Some(color) => {
                    out.push_str(color);
                    out.push_str(word);
                    out.push_str(RESET);
                }
                None => out.push_str(word),
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// The rustyline helper: completion, highlighting and the multi-line validator.
pub struct NvrHelper {
    /// The running policy's declared names, refreshed after every input.
    pub names: Arc<Mutex<Vec<String>>>,
    files: FilenameCompleter,
    color: bool,
}

impl Completer for NvrHelper {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let names = self.names.lock().map(|n| n.clone()).unwrap_or_default();
        match complete_word(line, pos, &names) {
            Some((start, words)) => Ok((
                start,
                words
                    .into_iter()
                    .map(|w| Pair {
                        display: w.clone(),
                        replacement: w,
                    })
                    .collect(),
            )),
            None => self.files.complete_path(line, pos),
        }
    }
}

impl Highlighter for NvrHelper {
    fn highlight<'l>(&self, line: &'l str, _pos: usize) -> Cow<'l, str> {
        if self.color {
            Cow::Owned(highlight_line(line))
        } else {
            Cow::Borrowed(line)
        }
    }

    fn highlight_char(&self, _line: &str, _pos: usize, kind: CmdKind) -> bool {
        self.color && kind != CmdKind::MoveCursor
    }
}

impl Validator for NvrHelper {
    fn validate(&self, ctx: &mut ValidationContext) -> rustyline::Result<ValidationResult> {
        Ok(if needs_more(ctx.input()) {
            ValidationResult::Incomplete
        } else {
            ValidationResult::Valid(None)
        })
    }
}

impl Hinter for NvrHelper {
    type Hint = String;
}

impl Helper for NvrHelper {}

/// Where history is kept: `$NETVM_HISTORY`, else `$XDG_STATE_HOME/netvm/history`, else
/// `~/.local/state/netvm/history`.
pub fn history_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NETVM_HISTORY") {
        return Some(PathBuf::from(p));
    }
    let state = match std::env::var_os("XDG_STATE_HOME") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(std::env::var_os("HOME")?).join(".local/state"),
    };
    Some(state.join("netvm/history"))
}

/// Read inputs until `:quit` or Ctrl-D, each handed to `session`; replies go to stdout.
pub fn run(session: &mut ReplSession, banner: &str) -> Result<(), String> {
    use std::io::IsTerminal;
    let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let config = rustyline::Config::builder()
        .auto_add_history(false)
        .completion_type(rustyline::CompletionType::List)
        .max_history_size(5000)
        .map_err(|e| e.to_string())?
        .build();
    let mut editor: Editor<NvrHelper, DefaultHistory> =
        Editor::with_config(config).map_err(|e| format!("starting the line editor: {e}"))?;
    let names = Arc::new(Mutex::new(session.declared_names()));
    editor.set_helper(Some(NvrHelper {
        names: names.clone(),
        files: FilenameCompleter::new(),
        color,
    }));
    let history = history_path();
    if let Some(path) = &history {
        // A missing history file is the first run, not an error.
        let _ = editor.load_history(path);
    }
    println!("{banner}");
    println!("Type :help for the commands, Ctrl-D to leave.");
    loop {
        match editor.readline("netvm> ") {
            Ok(input) => {
                if !input.trim().is_empty() {
                    let _ = editor.add_history_entry(input.as_str());
                    if let Some(path) = &history {
                        save_history(&mut editor, path);
                    }
                }
                let reply = session.handle(&input);
                if !reply.text.is_empty() {
                    print!("{}", reply.text);
                    if !reply.text.ends_with('\n') {
                        println!();
                    }
                }
                if reply.quit {
                    break;
                }
                if let Ok(mut n) = names.lock() {
                    *n = session.declared_names();
                }
            }
            Err(ReadlineError::Interrupted) => {
                println!("^C (line cancelled; Ctrl-D or :quit leaves)");
            }
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(format!("reading input: {e}")),
        }
    }
    Ok(())
}

fn save_history(editor: &mut Editor<NvrHelper, DefaultHistory>, path: &std::path::Path) {
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Err(e) = editor.save_history(path) {
        eprintln!("warning: cannot save history to {}: {e}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_complete_at_the_start_of_a_line() {
        let (start, words) = complete_word(":st", 3, &[]).unwrap();
        assert_eq!((start, words), (0, vec![":stats".to_string()]));
    }

    #[test]
    fn fields_keywords_and_declared_names_complete_in_declarations() {
        let names = vec!["web_traffic".to_string()];
        let (_, words) = complete_word("rule x : tcp.dp", 15, &names).unwrap();
        assert_eq!(words, ["tcp.dport"]);
        let (_, words) = complete_word("rule x : web_", 13, &names).unwrap();
        assert_eq!(words, ["web_traffic"]);
        let (_, words) = complete_word("rule x : tcp => bal", 19, &names).unwrap();
        assert_eq!(words, ["balance"]);
        let (_, words) = complete_word(":show web", 9, &names).unwrap();
        assert_eq!(words, ["web_traffic"]);
        assert!(
            complete_word(":load exa", 9, &names).is_none(),
            "file paths"
        );
        assert!(complete_word("import \"./la", 12, &names).is_none());
        let (_, words) = complete_word("import std.n", 12, &names).unwrap();
        assert_eq!(words, ["std.nets"]);
    }

    #[test]
    fn unfinished_declarations_continue_on_the_next_line() {
        assert!(needs_more("test \"t\" {"));
        assert!(needs_more("test \"t\" {\n  tcp { tcp.dport = 22 } => drop"));
        assert!(!needs_more(
            "test \"t\" {\n  tcp { tcp.dport = 22 } => drop\n}"
        ));
        assert!(needs_more("rule web : tcp and"));
        assert!(needs_more("rule web : tcp"));
        assert!(needs_more("rule web : tcp =>"));
        assert!(!needs_more("rule web : tcp => drop"));
        assert!(!needs_more("rule brand : tcp => drop # and"));
        assert!(!needs_more("const S = \"{\""));
        assert!(!needs_more(":explain tcp {"));
    }

    #[test]
    fn highlighting_colors_keywords_fields_strings_and_comments() {
        let out = highlight_line("rule a : tcp.dport == 22 => drop # x");
        assert!(out.contains("\x1b[1;34mrule\x1b[0m"));
        assert!(out.contains("\x1b[36mtcp.dport\x1b[0m"));
        assert!(out.contains("\x1b[33m22\x1b[0m"));
        assert!(out.contains("\x1b[2m# x\x1b[0m"));
        let plain = out.replace("\x1b[1;34m", "").replace("\x1b[36m", "");
        let plain = plain
            .replace("\x1b[33m", "")
            .replace("\x1b[2m", "")
            .replace("\x1b[0m", "");
        assert_eq!(plain, "rule a : tcp.dport == 22 => drop # x");
    }
}
