//! The REPL's logic, apart from the terminal: a [`ReplSession`] takes one input (a
//! command or a declaration, possibly over several lines) and returns what to show.
//!
//! The session edits the running policy as text ([`edit`]): a typed declaration is
//! spliced into the source, the whole text is checked here — so diagnostics about the
//! typed part point into what was typed, not into a synthetic file — and only a policy
//! that checks is sent to the switch ([`SwitchLink::install`]), which checks, compiles and
//! swaps it ([`LivePolicy::reload`]). The switch is in this process
//! ([`LocalSwitch`]) or behind a control socket ([`RemoteSwitch`]); the session cannot
//! tell, and reads the policy text back from it before every edit, so two operators
//! editing one switch see each other's changes.
//!
//! [`terminal`] is the rustyline front end (history, completion, highlighting,
//! multi-line input); it holds no policy logic.

pub mod edit;
pub mod terminal;

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use netvm_compiler::explain::explain;
use netvm_compiler::testing::{case_frame, case_port, run_tests};
use netvm_compiler::Interpreter;
use netvm_lang::source::SourceFile;
use netvm_lang::{Checked, Diagnostic, FileId, SourceMap, Span};

use crate::control_admin::{
    self, check_source, render_diagnostics, LivePolicy, ReloadReport, SwitchStats,
};
use crate::policy_table::{self, PolicyDiff};

/// The switch a session changes and reads.
pub trait SwitchLink {
    /// The running policy's name and source text.
    fn policy(&mut self) -> Result<(String, String), String>;
    /// Check, compile and swap in `source`; the error says why the running policy stays.
    fn install(&mut self, origin: &str, source: &str) -> Result<ReloadReport, String>;
    fn stats(&mut self) -> Result<SwitchStats, String>;
}

/// A switch in this process.
pub struct LocalSwitch(pub Arc<LivePolicy>);

impl SwitchLink for LocalSwitch {
    fn policy(&mut self) -> Result<(String, String), String> {
        Ok(self.0.source())
    }

    fn install(&mut self, origin: &str, source: &str) -> Result<ReloadReport, String> {
        self.0
            .reload(origin, source.to_string())
            .map_err(|e| e.full())
    }

    fn stats(&mut self) -> Result<SwitchStats, String> {
        Ok(self.0.stats())
    }
}

/// A `netvm run` reached through its control socket.
pub struct RemoteSwitch(pub netvm_runtime::control::ControlClient);

impl SwitchLink for RemoteSwitch {
    fn policy(&mut self) -> Result<(String, String), String> {
        control_admin::client::policy(&mut self.0).map_err(|e| e.to_string())
    }

    fn install(&mut self, origin: &str, source: &str) -> Result<ReloadReport, String> {
        control_admin::client::reload(&mut self.0, origin, source).map_err(|e| e.to_string())
    }

    fn stats(&mut self) -> Result<SwitchStats, String> {
        control_admin::client::stats(&mut self.0).map_err(|e| e.to_string())
    }
}

/// What the session answers to one input.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reply {
    pub text: String,
    /// Leave the REPL.
    pub quit: bool,
    /// The input failed (a diagnostic, a refused reload, a bad command).
    pub failed: bool,
}

impl Reply {
    fn ok(text: impl Into<String>) -> Reply {
        Reply {
            text: text.into(),
            ..Reply::default()
        }
    }

    fn error(text: impl Into<String>) -> Reply {
        Reply {
            text: text.into(),
            failed: true,
            ..Reply::default()
        }
    }
}

/// `rules` or `qit` typed where a declaration was expected (no declaration starts with
/// such a word): "did you mean :rules?".
fn command_without_colon(input: &str) -> Option<String> {
    const DECLARATIONS: [&str; 9] = [
        "import", "const", "let", "port", "vm", "group", "rule", "default", "test",
    ];
    let word = input
        .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .next()?;
    if word.is_empty() || DECLARATIONS.contains(&word) {
        return None;
    }
    let names = COMMANDS
        .iter()
        .map(|c| &c.0[1..])
        .chain(["quit", "exit", "help"]);
    let command = netvm_lang::diag::did_you_mean(word, names)?;
    Some(format!(
        "`{word}` does not start a declaration; did you mean :{command}? (commands start with `:`; :help lists them)"
    ))
}

/// The REPL's commands: name, argument, one line of help.
pub const COMMANDS: &[(&str, &str, &str)] = &[
    (":help", "", "list the commands"),
    (":load", "FILE", "check FILE and make it the running policy"),
    (":reload", "", "re-read the running policy's file from disk"),
    (
        ":rules",
        "",
        "the rules in order, with their packet and byte counters",
    ),
    (
        ":show",
        "NAME",
        "the declaration of a rule, const, let, port, vm or group",
    ),
    (
        ":stats",
        "",
        "ports, VMs, rules, counters and drops, with rates since the last :stats",
    ),
    (
        ":explain",
        "PACKET",
        "how the policy classifies a packet, as `netvm explain`",
    ),
    (":test", "", "run the policy's test blocks, as `netvm test`"),
    (
        ":vms",
        "",
        "the VMs: function, trust, packets in, passed, dropped",
    ),
    (
        ":ports",
        "",
        "the ports: driver, rx and tx packets and bytes",
    ),
    (
        ":diff",
        "FILE",
        "what reloading FILE would change, rule by rule",
    ),
    (":save", "FILE", "write the running policy's text to FILE"),
    (
        ":del",
        "NAME",
        "remove a rule (or const, let, group, test) and reload",
    ),
    (":quit", "", "leave (Ctrl-D too)"),
];

/// One operator's session against one switch.
pub struct ReplSession {
    link: Box<dyn SwitchLink>,
    /// The last `:stats`, for rates.
    last_stats: Option<(Instant, SwitchStats)>,
    /// Counts inputs, so each typed text gets its own name in diagnostics.
    inputs: usize,
    /// The policy text the completion names were computed from, and the names.
    names: Option<(String, Vec<String>)>,
}

impl ReplSession {
    pub fn new(link: Box<dyn SwitchLink>) -> ReplSession {
        ReplSession {
            link,
            last_stats: None,
            inputs: 0,
            names: None,
        }
    }

    /// Names the running policy can use (for completion): what it declares and what
    /// its imports declare (`SSH` from `std.ports`). Recomputed only when the text changed.
    pub fn declared_names(&mut self) -> Vec<String> {
        let Ok((origin, source)) = self.link.policy() else {
            return Vec::new();
        };
        if let Some((text, names)) = &self.names {
            if *text == source {
                return names.clone();
            }
        }
        let checked = check_source(&origin, &source);
        let mut names = edit::declared_names(&source);
        for file in checked.program.files.iter().skip(1) {
            for decl in &file.ast.decls {
                use netvm_lang::ast::DeclKind;
                if let DeclKind::Const { name, .. } | DeclKind::Let { name, .. } = &decl.kind {
                    names.push(name.text.clone());
                }
            }
        }
        names.sort();
        names.dedup();
        self.names = Some((source, names.clone()));
        names
    }

    /// Handle one input: a `:command` or a declaration.
    pub fn handle(&mut self, input: &str) -> Reply {
        let trimmed = input.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with("//") {
            return Reply::default();
        }
        self.inputs += 1;
        let result = match trimmed.strip_prefix(':') {
            Some(command) => self.command(command),
            None => match command_without_colon(trimmed) {
                Some(hint) => Err(hint),
                None => self.declaration(input),
            },
        };
        result.unwrap_or_else(Reply::error)
    }

    fn command(&mut self, command: &str) -> Result<Reply, String> {
        let (name, arg) = match command.split_once(char::is_whitespace) {
            Some((n, a)) => (n, a.trim()),
            None => (command, ""),
        };
        let needs = |what: &str| -> Result<(), String> {
            if arg.is_empty() {
                Err(format!(":{name} needs {what}"))
            } else {
                Ok(())
            }
        };
        match name {
            "help" | "h" | "?" => Ok(Reply::ok(help())),
            "quit" | "q" | "exit" => Ok(Reply {
                quit: true,
                ..Reply::default()
            }),
            "load" => {
                needs("a FILE")?;
                let source = std::fs::read_to_string(arg)
                    .map_err(|e| format!("cannot read `{arg}`: {e}"))?;
                // A switch behind a socket has its own working directory: name the file
                // (and so where its imports resolve) by its full path.
                let origin = std::path::Path::new(arg)
                    .canonicalize()
                    .map_or_else(|_| arg.to_string(), |p| p.display().to_string());
                self.install(&origin, source)
            }
            "reload" => {
                let (origin, _) = self.link.policy()?;
                let source = std::fs::read_to_string(&origin).map_err(|e| {
                    format!("cannot re-read `{origin}`: {e} (the policy was not loaded from a file; :load FILE)")
                })?;
                self.install(&origin, source)
            }
            "rules" => self.rules(),
            "show" => {
                needs("a NAME")?;
                self.show(arg)
            }
            "stats" => self.stats(),
            "ports" => self.ports(),
            "vms" => self.vms(),
            "explain" => {
                needs("a PACKET, e.g. tcp { tcp.dport = 22 }")?;
                self.explain(arg)
            }
            "test" => self.test(),
            "diff" => {
                needs("a FILE")?;
                self.diff(arg)
            }
            "save" => {
                needs("a FILE")?;
                let (_, source) = self.link.policy()?;
                std::fs::write(arg, &source).map_err(|e| format!("writing `{arg}`: {e}"))?;
                Ok(Reply::ok(format!(
                    "wrote {} ({} bytes); `netvm check {}` reads it back",
                    arg,
                    source.len(),
                    arg
                )))
            }
            "del" | "delete" => {
                needs("a NAME")?;
                let (origin, source) = self.link.policy()?;
                let (edited, what) = edit::delete(&source, arg)
                    .ok_or_else(|| format!("the policy declares no `{arg}`"))?;
                let mut reply = self.check_and_install(&origin, edited, None)?;
                if !reply.failed {
                    reply.text = format!("removed {what}\n{}", reply.text);
                }
                Ok(reply)
            }
            _ => {
                let names = COMMANDS.iter().map(|c| &c.0[1..]);
                let hint = netvm_lang::diag::did_you_mean(name, names)
                    .map(|s| format!(" (did you mean :{s}?)"))
                    .unwrap_or_default();
                Err(format!("unknown command :{name}{hint}; :help lists them"))
            }
        }
    }

    /// Install a whole new text (`:load`, `:reload`): diagnostics point into it.
    fn install(&mut self, origin: &str, source: String) -> Result<Reply, String> {
        self.check_and_install(origin, source, None)
    }

    /// A typed declaration: splice, check, install.
    fn declaration(&mut self, input: &str) -> Result<Reply, String> {
        let name = format!("<input {}>", self.inputs);
        let mut typed_map = SourceMap::default();
        let typed_file = typed_map.add(SourceFile::new(name, None, input.to_string()));
        let render = |d: &Diagnostic| format!("{}\n", d.render(&typed_map, false));
        let (decl, _) = match netvm_lang::parse::parse_decl(typed_file, input) {
            Ok(parsed) => parsed,
            Err(d) => return Ok(Reply::error(render(&d))),
        };
        let (origin, source) = self.link.policy()?;
        let spliced = match edit::splice(&source, input, &decl) {
            Ok(s) => s,
            Err(d) => return Ok(Reply::error(render(&d))),
        };
        let summary = spliced.summary.clone();
        let typed = Typed {
            name: typed_map.get(typed_file).name.clone(),
            text: input.to_string(),
            spliced: &spliced,
        };
        let mut reply = self.check_and_install(&origin, spliced.source.clone(), Some(typed))?;
        if !reply.failed {
            reply.text = format!("{summary}\n{}", reply.text);
        }
        Ok(reply)
    }

    /// Check `source`; show its errors (those in the typed part against the typed text)
    /// or install it and show what changed.
    fn check_and_install(
        &mut self,
        origin: &str,
        source: String,
        typed: Option<Typed<'_>>,
    ) -> Result<Reply, String> {
        let checked = check_source(origin, &source);
        let shown = match &typed {
            // Errors anywhere, warnings only about what was typed.
            Some(t) => {
                let (diags, map) = retarget(&checked, t);
                let mut text = String::new();
                for d in diags
                    .iter()
                    .filter(|d| d.is_error() || d.span.file != FileId(0))
                {
                    let _ = writeln!(text, "{}\n", d.render(&map, false));
                }
                text
            }
            None => render_diagnostics(&checked, |_| true),
        };
        if checked.policy.is_none() {
            return Ok(Reply::error(format!(
                "{shown}not applied: the policy would have errors; the running policy is unchanged"
            )));
        }
        match self.link.install(origin, &source) {
            Ok(report) => Ok(Reply::ok(format!("{shown}{report}"))),
            Err(e) => Ok(Reply::error(format!("{shown}{e}"))),
        }
    }

    fn running(&mut self) -> Result<(Checked, String), String> {
        let (origin, source) = self.link.policy()?;
        let checked = check_source(&origin, &source);
        if checked.policy.is_none() {
            return Err(format!(
                "the running policy's text no longer checks:\n{}",
                render_diagnostics(&checked, |d| d.is_error())
            ));
        }
        Ok((checked, source))
    }

    fn rules(&mut self) -> Result<Reply, String> {
        let (checked, _) = self.running()?;
        let policy = checked.policy.as_ref().expect("running() checked it");
        let texts = policy_table::rule_texts(policy, &checked.program);
        let stats = self.link.stats()?;
        let mut out = format!(
            "{:>3}  {:<16} {:>12} {:>14}  {}\n",
            "#", "rule", "packets", "bytes", "match => actions"
        );
        for (i, row) in stats.rules.iter().enumerate() {
            let text = texts
                .iter()
                .find(|t| t.name == row.name)
                .map(|t| t.text.clone())
                .unwrap_or_else(|| format!("=> {}", policy.describe_actions(&policy.default)));
            let number = if i < texts.len() {
                (i + 1).to_string()
            } else {
                "-".into()
            };
            let _ = writeln!(
                out,
                "{number:>3}  {:<16} {:>12} {:>14}  {text}",
                row.name, row.packets, row.bytes
            );
        }
        Ok(Reply::ok(out))
    }

    fn show(&mut self, name: &str) -> Result<Reply, String> {
        let (_, source) = self.link.policy()?;
        let Some(text) = edit::show(&source, name) else {
            let names = edit::declared_names(&source);
            let hint = netvm_lang::diag::did_you_mean(name, names.iter().map(String::as_str))
                .map(|s| format!(" (did you mean `{s}`?)"))
                .unwrap_or_default();
            return Err(format!("the policy declares no `{name}`{hint}"));
        };
        let mut out = format!("{text}\n");
        let stats = self.link.stats()?;
        if text.starts_with("rule") || name == "default" {
            if let Some(r) = stats.rules.iter().find(|r| r.name == name) {
                let _ = writeln!(out, "  matched {} packets, {} bytes", r.packets, r.bytes);
            }
        }
        Ok(Reply::ok(out))
    }

    fn stats(&mut self) -> Result<Reply, String> {
        let now = self.link.stats()?;
        let since = Instant::now();
        // Rates over the time since the last `:stats`, or since the switch started.
        let (dt, before) = match &self.last_stats {
            Some((at, before)) => (at.elapsed().as_secs_f64(), Some(before)),
            None => (now.elapsed_s, None),
        };
        let dt = dt.max(1e-9);
        let rate = |now: u64, before: Option<u64>| (now - before.unwrap_or(0).min(now)) as f64 / dt;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "up {:.1} s: rx {} tx {} dropped {}; rates over the last {:.1} s",
            now.elapsed_s, now.rx, now.tx, now.dropped, dt
        );
        let _ = writeln!(
            out,
            "{:<14} {:>12} {:>12} {:>12} {:>12}",
            "port", "rx pkts", "rx pps", "tx pkts", "tx pps"
        );
        for p in &now.ports {
            let b = before.and_then(|b| b.ports.iter().find(|x| x.name == p.name));
            let _ = writeln!(
                out,
                "{:<14} {:>12} {:>12.0} {:>12} {:>12.0}",
                p.name,
                p.rx_packets,
                rate(p.rx_packets, b.map(|b| b.rx_packets)),
                p.tx_packets,
                rate(p.tx_packets, b.map(|b| b.tx_packets)),
            );
        }
        if !now.vms.is_empty() {
            let _ = writeln!(
                out,
                "{:<14} {:>12} {:>12} {:>12}",
                "vm", "in", "in pps", "dropped"
            );
            for v in &now.vms {
                let b = before.and_then(|b| b.vms.iter().find(|x| x.name == v.name));
                let _ = writeln!(
                    out,
                    "{:<14} {:>12} {:>12.0} {:>12}",
                    v.name,
                    v.packets_in,
                    rate(v.packets_in, b.map(|b| b.packets_in)),
                    v.dropped
                );
            }
        }
        let _ = writeln!(out, "{:<14} {:>12} {:>12}", "rule", "packets", "pps");
        for r in &now.rules {
            let b = before.and_then(|b| b.rules.iter().find(|x| x.name == r.name));
            let _ = writeln!(
                out,
                "{:<14} {:>12} {:>12.0}",
                r.name,
                r.packets,
                rate(r.packets, b.map(|b| b.packets))
            );
        }
        for (name, n) in &now.counters {
            let _ = writeln!(out, "counter {name:<6} {n:>12}");
        }
        for (reason, n) in &now.drops {
            let _ = writeln!(out, "drop {reason:<9} {n:>12}");
        }
        self.last_stats = Some((since, now));
        Ok(Reply::ok(out))
    }

    fn ports(&mut self) -> Result<Reply, String> {
        let stats = self.link.stats()?;
        let mut out = format!(
            "{:<14} {:<34} {:>12} {:>12} {:>12} {:>12}\n",
            "port", "driver", "rx pkts", "rx bytes", "tx pkts", "tx bytes"
        );
        for p in &stats.ports {
            let _ = writeln!(
                out,
                "{:<14} {:<34} {:>12} {:>12} {:>12} {:>12}",
                p.name, p.driver, p.rx_packets, p.rx_bytes, p.tx_packets, p.tx_bytes
            );
        }
        Ok(Reply::ok(out))
    }

    fn vms(&mut self) -> Result<Reply, String> {
        let stats = self.link.stats()?;
        if stats.vms.is_empty() {
            return Ok(Reply::ok("the policy declares no VMs\n"));
        }
        let mut out = format!(
            "{:<14} {:<24} {:<10} {:>10} {:>10} {:>10} {:>10}\n",
            "vm", "function", "kind", "in", "mirrored", "passed", "dropped"
        );
        for v in &stats.vms {
            let _ = writeln!(
                out,
                "{:<14} {:<24} {:<10} {:>10} {:>10} {:>10} {:>10}",
                v.name,
                v.function,
                if v.trusted { "trusted" } else { "untrusted" },
                v.packets_in,
                v.mirrored_in,
                v.passed,
                v.dropped
            );
        }
        Ok(Reply::ok(out))
    }

    fn explain(&mut self, packet: &str) -> Result<Reply, String> {
        let (origin, source) = self.link.policy()?;
        match explain_packet(&origin, &source, packet) {
            Ok(text) => Ok(Reply::ok(text)),
            Err(text) => Ok(Reply::error(text)),
        }
    }

    fn test(&mut self) -> Result<Reply, String> {
        let (checked, _) = self.running()?;
        let policy = checked.policy.as_ref().expect("running() checked it");
        let engine = Interpreter::new(netvm_compiler::lower(policy)).map_err(|e| e.to_string())?;
        let sources = checked.sources();
        let (mut passed, mut failed) = (0, 0);
        let mut out = String::new();
        for outcome in run_tests(policy, &engine) {
            let test = &policy.tests[outcome.test];
            let case = &test.cases[outcome.case];
            let file = sources.get(case.span.file);
            let (line, _) = file.line_col(case.span.start as usize);
            let packet = file.snippet(case.span);
            let packet = packet.split("=>").next().unwrap_or(packet);
            let packet = packet.lines().map(str::trim).collect::<Vec<_>>().join(" ");
            match &outcome.failure {
                None => {
                    passed += 1;
                    let _ = writeln!(
                        out,
                        "test {}:{line} {} :: {packet}... ok",
                        file.name, test.title
                    );
                }
                Some(why) => {
                    failed += 1;
                    let _ = writeln!(
                        out,
                        "test {}:{line} {} :: {packet}... FAILED\n    {why}",
                        file.name, test.title
                    );
                }
            }
        }
        let verdict = if failed == 0 { "ok" } else { "FAILED" };
        let _ = writeln!(
            out,
            "test result: {verdict}. {passed} passed; {failed} failed"
        );
        Ok(Reply {
            text: out,
            failed: failed > 0,
            quit: false,
        })
    }

    fn diff(&mut self, file: &str) -> Result<Reply, String> {
        let (running, _) = self.running()?;
        let candidate = crate::report::check_root(file)?;
        let Some(new) = &candidate.policy else {
            return Ok(Reply::error(format!(
                "{}`{file}` has errors: reloading it would be refused",
                render_diagnostics(&candidate, |d| d.is_error())
            )));
        };
        let old = running.policy.as_ref().expect("running() checked it");
        let diff = PolicyDiff::between(
            &policy_table::rule_texts(old, &running.program),
            &policy_table::rule_texts(new, &candidate.program),
        );
        let mut out = diff.to_string();
        let (old, new) = (
            policy_table::policy_table(old),
            policy_table::policy_table(new),
        );
        if let Err(e) = old.check_compatible(&new) {
            out.push_str(&format!("a reload would be refused: {e}\n"));
        }
        Ok(Reply::ok(out))
    }
}

fn help() -> String {
    let mut out = String::from(
        "Type a declaration (rule, const, let, default, test ...) to add it to the running policy\n\
         or replace the one of the same name; `rule NAME before OTHER: ...` places a new rule.\n\
         Commands:\n",
    );
    for (name, arg, what) in COMMANDS {
        let _ = writeln!(out, "  {:<18} {what}", format!("{name} {arg}"));
    }
    out
}

/// The typed text of an input and where it went in the spliced source.
struct Typed<'a> {
    name: String,
    text: String,
    spliced: &'a edit::Spliced,
}

/// `checked`'s diagnostics with spans in the typed part of the root moved into a file of
/// their own holding the typed text (so `<input 3>:1:17` is line 1, column 17 of what
/// was typed), and the source map that holds it.
fn retarget(checked: &Checked, typed: &Typed<'_>) -> (Vec<Diagnostic>, SourceMap) {
    let mut map = checked.sources().clone();
    let file = map.add(SourceFile::new(
        typed.name.clone(),
        None,
        typed.text.clone(),
    ));
    let root = FileId(0);
    let move_span = |span: &mut Span| {
        if span.file != root {
            return;
        }
        if let (Some(start), Some(end)) = (
            typed.spliced.typed_offset(span.start as usize),
            typed.spliced.typed_offset(span.end as usize),
        ) {
            *span = Span::new(file, start, end.max(start));
        }
    };
    let mut diags = checked.diagnostics.clone();
    for d in &mut diags {
        move_span(&mut d.span);
        for (span, _) in &mut d.notes {
            move_span(span);
        }
    }
    // Errors about the typed text first: they are what the operator is looking at.
    diags.sort_by_key(|d| (d.span.file != file, d.span.start));
    (diags, map)
}

/// `netvm explain`'s output for `packet` (written as in a test case) against the policy
/// `source` named `origin`; `Err` holds the diagnostics, pointing into the packet text.
pub fn explain_packet(origin: &str, source: &str, packet: &str) -> Result<String, String> {
    let mut packet_map = SourceMap::default();
    let packet_file = packet_map.add(SourceFile::new("<packet>".into(), None, packet.to_string()));
    if let Err(d) = netvm_lang::parse::parse_case_packet(packet_file, packet) {
        return Err(format!("{}\n", d.render(&packet_map, false)));
    }
    let prefix = format!("{source}\ntest \"netvm explain\" {{\n  ");
    let text = format!("{prefix}{packet} => rule default\n}}\n");
    let checked = check_source(origin, &text);
    let spliced = edit::Spliced {
        source: text.clone(),
        at: prefix.len(),
        len: packet.len(),
        typed_start: 0,
        cut: None,
        summary: String::new(),
    };
    let typed = Typed {
        name: "<packet>".into(),
        text: packet.to_string(),
        spliced: &spliced,
    };
    let (diags, map) = retarget(&checked, &typed);
    let errors: String = diags
        .iter()
        .filter(|d| d.is_error())
        .map(|d| format!("{}\n\n", d.render(&map, false)))
        .collect();
    let Some(policy) = &checked.policy else {
        return Err(errors);
    };
    let case = policy
        .tests
        .last()
        .and_then(|t| t.cases.last())
        .ok_or("the packet did not parse as a test case")?;
    let frame = case_frame(case)?;
    let in_port = case_port(case);
    let explanation = explain(policy, &frame, in_port).map_err(|e| e.to_string())?;
    Ok(crate::commands::explain::render(
        policy,
        checked.sources(),
        &explanation,
        packet,
        in_port,
    ))
}

/// The policy `netvm repl` starts on when given none: two ports (a generator and a
/// sink under the default bindings), one trusted VM that web traffic passes through,
/// everything forwarded.
pub const STARTING_POLICY: &str = "\
# netvm repl's starting policy: type rules to add them, :save FILE to keep them
import std.ports

port wan
port lan
vm fw trusted

rule web : tcp.dport in {HTTP, HTTPS} => chain fw -> out lan
default => out lan
";

/// The name the starting policy goes by.
pub const STARTING_ORIGIN: &str = "<repl>";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control_admin::Bindings;
    use netvm_runtime::stats::Stats;
    use netvm_runtime::{Program, ProgramHandle};

    const POLICY: &str = "\
const SSH = 22
port wan
port lan
vm fw trusted
rule ssh : tcp.dport == SSH => drop
rule web : tcp.dport == 80 => to fw
default => out lan

test \"ssh is dropped\" {
  tcp { tcp.dport = 22 } => drop
}
";

    /// A session on a real program handle (no switch thread: nothing here needs packets).
    fn session() -> (ReplSession, Arc<LivePolicy>) {
        let checked = check_source("policy.nvr", POLICY);
        let policy = checked.policy.as_ref().expect("the test policy checks");
        let (classifier, _) = policy_table::compile(policy).unwrap();
        let handle = ProgramHandle::new(
            Program::new(classifier, policy_table::policy_table(policy)).unwrap(),
        );
        let live = Arc::new(LivePolicy::new(
            handle,
            Arc::new(Stats::new(2, 1)),
            Bindings::default(),
            "policy.nvr".into(),
            &checked,
        ));
        (ReplSession::new(Box::new(LocalSwitch(live.clone()))), live)
    }

    #[test]
    fn a_typed_rule_is_added_checked_and_swapped_in() {
        let (mut s, live) = session();
        let reply = s.handle("rule dns : udp.dport == 53 => out lan");
        assert!(!reply.failed, "{}", reply.text);
        assert!(reply.text.starts_with("added rule `dns`"), "{}", reply.text);
        assert!(
            reply.text.contains("1 added, 0 removed, 0 changed"),
            "{}",
            reply.text
        );
        assert!(live
            .source()
            .1
            .contains("rule dns : udp.dport == 53 => out lan\n"));
        let rules = s.handle(":rules").text;
        assert!(
            rules.contains("dns") && rules.contains("udp.dport == 53 => out lan"),
            "{rules}"
        );
    }

    #[test]
    fn an_error_points_into_the_typed_line_and_changes_nothing() {
        let (mut s, live) = session();
        let reply = s.handle("rule bad : tcp.dport == 22 => out nowhere");
        assert!(reply.failed);
        assert!(reply.text.contains("<input 1>:1:35"), "{}", reply.text);
        assert!(reply.text.contains("nowhere"), "{}", reply.text);
        assert!(reply.text.contains("the running policy is unchanged"));
        assert_eq!(live.source().1, POLICY);
        let syntax = s.handle("rule worse : tcp.dport == => drop");
        assert!(
            syntax.failed && syntax.text.contains("<input 2>:1:"),
            "{}",
            syntax.text
        );
    }

    #[test]
    fn an_edited_const_reports_the_rules_it_changes() {
        let (mut s, _) = session();
        let reply = s.handle("const SSH = 2222");
        assert!(!reply.failed, "{}", reply.text);
        assert!(
            reply.text.contains("replaced const `SSH`"),
            "{}",
            reply.text
        );
        assert!(reply.text.contains("~ ssh"), "{}", reply.text);
        assert!(
            reply.text.contains("0 added, 0 removed, 1 changed"),
            "{}",
            reply.text
        );
    }

    #[test]
    fn before_places_a_rule_and_del_removes_it() {
        let (mut s, live) = session();
        let reply = s.handle("rule http before ssh : tcp.dport == 8080 => out lan");
        assert!(!reply.failed, "{}", reply.text);
        let source = live.source().1;
        assert!(source.find("rule http").unwrap() < source.find("rule ssh").unwrap());
        assert!(!source.contains("before"), "{source}");
        let reply = s.handle(":del http");
        assert!(
            !reply.failed && reply.text.starts_with("removed rule `http`"),
            "{}",
            reply.text
        );
        assert_eq!(live.source().1, POLICY);
        assert!(s.handle(":del SSH").failed, "ssh still uses SSH");
    }

    #[test]
    fn a_rule_nested_too_deep_is_refused_with_e019_and_the_policy_stays() {
        let (mut s, live) = session();
        let deep = format!(
            "rule deep : {}tcp{} => drop",
            "(".repeat(1500),
            ")".repeat(1500)
        );
        let reply = s.handle(&deep);
        assert!(reply.failed);
        assert!(reply.text.contains("E019"), "{}", reply.text);
        assert_eq!(live.source().1, POLICY);
        let pred = format!("{}tcp{}", "not (".repeat(1500), ")".repeat(1500));
        let reply = s.handle(&format!(":explain {pred}"));
        assert!(reply.failed, "{}", reply.text);
    }

    #[test]
    fn a_new_port_is_refused_whole() {
        let (mut s, live) = session();
        let reply = s.handle("port extra");
        assert!(reply.failed);
        assert!(reply.text.contains("refused"), "{}", reply.text);
        assert_eq!(live.source().1, POLICY);
    }

    #[test]
    fn explain_test_show_and_help() {
        let (mut s, _) = session();
        let explained = s.handle(":explain tcp { tcp.dport = 80 }").text;
        assert!(explained.contains("matched: rule web"), "{explained}");
        let bad = s.handle(":explain tcp { tcp.dprot = 80 }");
        assert!(
            bad.failed && bad.text.contains("<packet>:1:7"),
            "{}",
            bad.text
        );
        let tests = s.handle(":test").text;
        assert!(
            tests.contains("test result: ok. 1 passed; 0 failed"),
            "{tests}"
        );
        assert_eq!(s.handle(":show SSH").text, "const SSH = 22\n");
        let names = s.declared_names();
        assert!(names.contains(&"web".to_string()) && names.contains(&"fw".to_string()));
        let help = s.handle(":help").text;
        for (name, _, _) in COMMANDS {
            assert!(help.contains(name), "{name} missing from :help");
        }
        assert!(s.handle(":statz").text.contains("did you mean :stats?"));
        for (typed, meant) in [
            ("rules", ":rules"),
            ("quit", ":quit"),
            ("stast", ":stats"),
            ("hepl", ":help"),
        ] {
            let reply = s.handle(typed);
            assert!(reply.failed, "{typed}");
            assert!(
                reply.text.contains(&format!("did you mean {meant}?")),
                "{typed}: {}",
                reply.text
            );
        }
        assert!(s.handle(":quit").quit);
    }

    #[test]
    fn load_and_reload_read_files_and_ports_and_vms_list_the_bindings() {
        let (mut s, live) = session();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("next.nvr");
        let path_text = path.to_str().unwrap();
        std::fs::write(&path, POLICY.replace("=> to fw", "=> out lan")).unwrap();
        let reply = s.handle(&format!(":load {path_text}"));
        assert!(!reply.failed, "{}", reply.text);
        assert!(
            reply.text.contains("0 added, 0 removed, 1 changed"),
            "{}",
            reply.text
        );
        assert_eq!(live.source().0, path_text);
        std::fs::write(&path, POLICY.replace("rule web", "rule www")).unwrap();
        let reply = s.handle(":reload");
        assert!(reply.text.contains("1 added, 1 removed"), "{}", reply.text);
        std::fs::write(&path, "port wan\nrule x : tcp => out nowhere\n").unwrap();
        let reply = s.handle(":reload");
        assert!(reply.failed, "{}", reply.text);
        assert!(reply.text.contains("next.nvr:2:"), "{}", reply.text);
        assert!(s
            .handle(":load /nonexistent.nvr")
            .text
            .contains("cannot read"));
        assert!(s.handle(":ports").text.contains("wan"));
        assert!(s.handle(":vms").text.contains("fw") && s.handle(":vms").text.contains("trusted"));
    }

    #[test]
    fn save_writes_a_file_that_checks_and_diff_compares_one() {
        let (mut s, _) = session();
        s.handle("rule dns before web : udp.dport == 53 => out lan");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("saved.nvr");
        let path = path.to_str().unwrap();
        assert!(!s.handle(&format!(":save {path}")).failed);
        let saved = netvm_lang::check_path(path).unwrap();
        assert_eq!(saved.error_count(), 0);
        let names: Vec<_> = saved
            .policy
            .unwrap()
            .rules
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(names, ["ssh", "dns", "web"]);
        std::fs::write(path, POLICY.replace("=> to fw", "=> drop")).unwrap();
        let diff = s.handle(&format!(":diff {path}")).text;
        assert!(diff.contains("0 added, 1 removed, 1 changed"), "{diff}");
        assert!(!diff.contains("refused"), "{diff}");
        std::fs::write(
            path,
            POLICY.replace("port lan", "port lan = afpacket(\"eth1\")"),
        )
        .unwrap();
        let diff = s.handle(&format!(":diff {path}")).text;
        assert!(
            diff.contains(
                "a reload would be refused: a reload cannot change the binding of port `lan`"
            ),
            "{diff}"
        );
    }
}
