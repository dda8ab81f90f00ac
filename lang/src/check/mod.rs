//! Name resolution and type checking: a loaded [`Program`] → a [`Policy`] plus diagnostics.
//!
//! Every file has its own scope: its own declarations plus those of the files it imports
//! directly (imports are not transitive). Each declaration is checked once, in its own file's
//! scope, so errors in imported files are reported where they are. The root file's rules,
//! default and tests make the policy; rules, defaults and tests of imported files are checked
//! but not imported. Warnings about unused names are given for the root file only.
//!
//! The checker never stops at the first error: a bad sub-expression becomes `false` (or is
//! dropped) after its diagnostic, and checking goes on.

mod shadow;
mod values;

use std::collections::HashMap;

use netvm_packet::{BaseProto, Field, FieldType, PacketSpec, Proto};

use crate::ast::{self, ActionKind, DeclKind, Expect, Operand, PredKind as AstPred};
use crate::diag::{did_you_mean, Code, Diagnostic};
use crate::interval::IntervalSet;
use crate::load::Program;
use crate::policy::*;
use crate::source::{FileId, Span};
use crate::MAX_NESTING;

use values::{ConstItem, ConstValue};

/// Names a field path can start with but that are not declarable.
const RESERVED: [&str; 4] = ["in_port", "payload", "l4", "pkt"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Const,
    Let,
    Port,
    Vm,
    Group,
}

impl Kind {
    fn noun(self) -> &'static str {
        match self {
            Kind::Const => "const",
            Kind::Let => "let",
            Kind::Port => "port",
            Kind::Vm => "vm",
            Kind::Group => "group",
        }
    }
}

type DeclId = usize;

/// A named declaration anywhere in the program.
struct Named {
    name: String,
    kind: Kind,
    file: FileId,
    /// Index of the declaration in its file.
    decl: usize,
    span: Span,
    /// Index into the policy's table for ports, vms and groups.
    table_index: usize,
    used: bool,
}

enum Memo<T> {
    Todo,
    InProgress,
    Done(Option<T>),
}

pub struct Checker<'p> {
    program: &'p Program,
    diags: Vec<Diagnostic>,
    named: Vec<Named>,
    scopes: Vec<HashMap<String, DeclId>>,
    consts: Vec<Memo<ConstItem>>,
    lets: Vec<Memo<Pred>>,
    ports: Vec<Port>,
    vms: Vec<Vm>,
    groups: Vec<Group>,
    /// Groups resolved to member vms, by table index.
    counters: Vec<String>,
    /// VMs (table index) reached from a root rule or default.
    reached_vms: Vec<bool>,
    /// VMs (table index) whose declaration repeats a name (already reported as E003).
    duplicate_vms: Vec<usize>,
    /// How many predicate levels (lets inlined) the checker is inside now (E019).
    depth: usize,
    /// E019 was reported for the declaration being checked: one report per declaration.
    too_deep: bool,
    /// Lets refused as too deep (E019 at the first): those built on them are too.
    deep_lets: Vec<DeclId>,
    /// How many let evaluations the checker is inside now.
    let_depth: usize,
    /// E019 was reported inside a let.
    deep_let_reported: bool,
    /// Per file: names two of its imports declare (E003 where used).
    ambiguous: Vec<HashMap<String, Vec<DeclId>>>,
}

/// Checks a loaded program. The policy is `None` when there are errors.
pub fn check(program: &Program) -> (Option<Policy>, Vec<Diagnostic>) {
    let mut checker = Checker {
        program,
        diags: Vec::new(),
        named: Vec::new(),
        scopes: Vec::new(),
        consts: Vec::new(),
        lets: Vec::new(),
        ports: Vec::new(),
        vms: Vec::new(),
        groups: Vec::new(),
        counters: Vec::new(),
        reached_vms: Vec::new(),
        duplicate_vms: Vec::new(),
        depth: 0,
        too_deep: false,
        deep_lets: Vec::new(),
        let_depth: 0,
        deep_let_reported: false,
        ambiguous: Vec::new(),
    };
    checker.declare();
    checker.build_scopes();
    let policy = checker.check_all();
    let has_errors = checker.diags.iter().any(Diagnostic::is_error);
    (if has_errors { None } else { Some(policy) }, checker.diags)
}

/// How an import is written: `std.ports` for `<std>/ports.nvr`, the path otherwise.
fn module_name(source_name: &str) -> String {
    match source_name
        .strip_prefix("<std>/")
        .and_then(|m| m.strip_suffix(".nvr"))
    {
        Some(module) => format!("std.{module}"),
        None => format!("`{source_name}`"),
    }
}

/// The failure policy of one vm declaration: its one `on_failure` clause, or the default
/// (`drop`). An unknown word or a second clause is E018; the first known word still counts, so
/// checking goes on.
fn failure_policy(
    names: &[ast::Name],
    clauses: &[ast::OnFailureClause],
    diags: &mut Vec<Diagnostic>,
) -> OnFailure {
    let words: Vec<&str> = OnFailure::ALL.iter().map(|p| p.as_str()).collect();
    let choices = "`on_failure drop` (the default) drops the VM's packets while it is down; \
                   `on_failure bypass` skips it";
    let mut chosen = None;
    for (i, clause) in clauses.iter().enumerate() {
        let word = &clause.word.text;
        match OnFailure::from_word(word) {
            Some(policy) => {
                chosen.get_or_insert(policy);
            }
            None => {
                let help = match did_you_mean(word, words.iter().copied()) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => choices.to_string(),
                };
                diags.push(
                    Diagnostic::new(
                        Code::BadFailurePolicy,
                        clause.word.span(),
                        format!("unknown `on_failure` policy `{word}`"),
                    )
                    .label("expected `drop` or `bypass`")
                    .help(help),
                );
            }
        }
        if i > 0 {
            let vms: Vec<&str> = names.iter().map(|n| n.text.as_str()).collect();
            let (noun, list) = match vms.len() {
                1 => ("vm", format!("`{}`", vms[0])),
                _ => ("vms", format!("`{}`", vms.join("`, `"))),
            };
            diags.push(
                Diagnostic::new(
                    Code::BadFailurePolicy,
                    clause.span(),
                    format!("`on_failure` is given twice for {noun} {list}"),
                )
                .label("given again here")
                .note(clauses[0].span(), "first given here")
                .help(format!("keep one: {choices}")),
            );
        }
    }
    chosen.unwrap_or_default()
}

impl<'p> Checker<'p> {
    fn error(&mut self, code: Code, span: Span, message: impl Into<String>) -> &mut Diagnostic {
        self.diags.push(Diagnostic::new(code, span, message));
        self.diags.last_mut().expect("just pushed")
    }

    fn push(&mut self, diag: Diagnostic) {
        self.diags.push(diag);
    }

    /// Collects every named declaration and gives ports, vms and groups their table index.
    fn declare(&mut self) {
        // Per vm declaration (file, index), resolved once however many names it lists.
        let mut failure_policies: HashMap<(FileId, usize), OnFailure> = HashMap::new();
        for file in &self.program.files {
            for (index, decl) in file.ast.decls.iter().enumerate() {
                let add = |name: &ast::Name, kind: Kind, named: &mut Vec<Named>| {
                    named.push(Named {
                        name: name.text.clone(),
                        kind,
                        file: file.id,
                        decl: index,
                        span: name.span(),
                        table_index: 0,
                        used: false,
                    });
                };
                match &decl.kind {
                    DeclKind::Const { name, .. } => add(name, Kind::Const, &mut self.named),
                    DeclKind::Let { name, .. } => add(name, Kind::Let, &mut self.named),
                    DeclKind::Port { name, .. } => add(name, Kind::Port, &mut self.named),
                    DeclKind::Group { name, .. } => add(name, Kind::Group, &mut self.named),
                    DeclKind::Vm {
                        names, on_failure, ..
                    } => {
                        for name in names {
                            add(name, Kind::Vm, &mut self.named);
                        }
                        let policy = failure_policy(names, on_failure, &mut self.diags);
                        failure_policies.insert((file.id, index), policy);
                    }
                    _ => {}
                }
            }
        }
        for id in 0..self.named.len() {
            let (name, span, kind) = (
                self.named[id].name.clone(),
                self.named[id].span,
                self.named[id].kind,
            );
            let n = &self.named[id];
            let decl = &self.program.files[n.file.0 as usize].ast.decls[n.decl];
            match (&decl.kind, kind) {
                (DeclKind::Port { binding, .. }, Kind::Port) => {
                    self.named[id].table_index = self.ports.len();
                    self.ports.push(Port {
                        name,
                        binding: binding
                            .as_ref()
                            .map(|b| (b.driver.text.clone(), b.args.clone().unwrap_or_default())),
                        span,
                    });
                }
                (DeclKind::Vm { trusted, .. }, Kind::Vm) => {
                    let on_failure = failure_policies
                        .get(&(n.file, n.decl))
                        .copied()
                        .unwrap_or_default();
                    self.named[id].table_index = self.vms.len();
                    self.vms.push(Vm {
                        name,
                        trusted: trusted.unwrap_or(false),
                        on_failure,
                        span,
                    });
                }
                (DeclKind::Group { .. }, Kind::Group) => {
                    self.named[id].table_index = self.groups.len();
                    self.groups.push(Group {
                        name,
                        members: Vec::new(),
                        span,
                    });
                }
                _ => {}
            }
        }
        self.consts = (0..self.named.len()).map(|_| Memo::Todo).collect();
        self.lets = (0..self.named.len()).map(|_| Memo::Todo).collect();
        self.reached_vms = vec![false; self.vms.len()];
    }

    /// Each file's scope: its own names first (duplicates reported), then its imports' own
    /// names (clashes with different declarations reported).
    fn build_scopes(&mut self) {
        let mut scopes = Vec::new();
        let mut duplicates = Vec::new();
        for file in &self.program.files {
            let mut scope: HashMap<String, DeclId> = HashMap::new();
            for (id, n) in self
                .named
                .iter()
                .enumerate()
                .filter(|(_, n)| n.file == file.id)
            {
                if Proto::from_name(&n.name).is_some() || RESERVED.contains(&n.name.as_str()) {
                    self.diags.push(
                        Diagnostic::new(
                            Code::Duplicate,
                            n.span,
                            format!("`{}` is a built-in name and cannot be declared", n.name),
                        )
                        .help("choose another name"),
                    );
                    continue;
                }
                if let Some(&first) = scope.get(&n.name) {
                    let first_span = self.named[first].span;
                    duplicates.push(id);
                    self.diags.push(
                        Diagnostic::new(
                            Code::Duplicate,
                            n.span,
                            format!("`{}` is declared twice", n.name),
                        )
                        .label("declared again here")
                        .note(first_span, "first declared here"),
                    );
                    continue;
                }
                scope.insert(n.name.clone(), id);
            }
            scopes.push(scope);
        }
        // A second declaration of a name is reported once, as E003, not also as unused.
        for id in duplicates {
            self.named[id].used = true;
            if self.named[id].kind == Kind::Vm {
                self.duplicate_vms.push(self.named[id].table_index);
            }
        }
        // Imported names join after every file's own names are known. A file's own
        // declaration shadows an imported one of the same name (a note, N001), so that a
        // name a module adds later cannot break its importers; two imports that declare
        // one name are an error only where the name is used (E003 at the use).
        let mut merged = scopes.clone();
        let mut ambiguous: Vec<HashMap<String, Vec<DeclId>>> = vec![HashMap::new(); scopes.len()];
        for file in &self.program.files {
            for &imported in &file.imports {
                let own = &scopes[imported.0 as usize];
                let mut entries: Vec<(&String, &DeclId)> = own.iter().collect();
                entries.sort_by_key(|(_, &id)| id);
                for (name, &id) in entries {
                    let scope = &mut merged[file.id.0 as usize];
                    match scope.get(name) {
                        None => {
                            scope.insert(name.clone(), id);
                        }
                        Some(&existing) if existing == id => {}
                        Some(&existing) if self.named[existing].file == file.id => {
                            let import_span = self.import_span(file.id, imported);
                            let module = module_name(&self.program.sources.get(imported).name);
                            self.diags.push(
                                Diagnostic::new(
                                    Code::ShadowsImport,
                                    self.named[existing].span,
                                    format!("`{name}` shadows the `{name}` that {module} declares"),
                                )
                                .label("this declaration is the one this file uses")
                                .note(import_span, "imported here")
                                .note(self.named[id].span, "the imported declaration"),
                            );
                        }
                        Some(&existing) => {
                            let both = ambiguous[file.id.0 as usize]
                                .entry(name.clone())
                                .or_insert_with(|| vec![existing]);
                            if !both.contains(&id) {
                                both.push(id);
                            }
                        }
                    }
                }
            }
        }
        self.ambiguous = ambiguous;
        self.scopes = merged;
    }

    fn import_span(&self, file: FileId, imported: FileId) -> Span {
        let program = self.program;
        let imported_name = &program.sources.get(imported).name;
        program.files[file.0 as usize]
            .ast
            .decls
            .iter()
            .find(|d| match &d.kind {
                DeclKind::Import(ast::ImportTarget::Std(m)) => {
                    imported_name == &format!("<std>/{}.nvr", m.text)
                }
                DeclKind::Import(ast::ImportTarget::File { .. }) => true,
                _ => false,
            })
            .map_or(Span::new(file, 0, 0), |d| d.span())
    }

    /// Looks a name up in a file's scope, reporting unknown names with a suggestion.
    fn lookup(&mut self, file: FileId, name: &str, span: Span, expected: &str) -> Option<DeclId> {
        if let Some(ids) = self.ambiguous[file.0 as usize].get(name).cloned() {
            for &id in &ids {
                self.named[id].used = true;
            }
            let mut diag = Diagnostic::new(
                Code::Duplicate,
                span,
                format!("`{name}` is declared in {} imported files", ids.len()),
            )
            .label("which one is meant is ambiguous");
            for &id in &ids {
                diag = diag.note(self.named[id].span, "declared here");
            }
            self.push(diag.help(format!(
                "declare `{name}` in this file to say which (it shadows both), or rename one"
            )));
            return None;
        }
        if let Some(&id) = self.scopes[file.0 as usize].get(name) {
            self.named[id].used = true;
            return Some(id);
        }
        let candidates: Vec<&str> = self.scopes[file.0 as usize]
            .keys()
            .map(String::as_str)
            .collect();
        let suggestion = did_you_mean(name, candidates).map(str::to_string);
        let mut diag = Diagnostic::new(Code::UnknownName, span, format!("unknown name `{name}`"))
            .label(format!("no {expected} of this name"));
        if let Some(s) = suggestion {
            diag = diag.help(format!("did you mean `{s}`?"));
        }
        self.push(diag);
        None
    }

    /// Looks up a name that must be of one kind.
    fn lookup_kind(&mut self, file: FileId, name: &ast::Name, kind: Kind) -> Option<usize> {
        let id = self.lookup(file, &name.text, name.span(), kind.noun())?;
        let found = self.named[id].kind;
        if found != kind {
            let def = self.named[id].span;
            let mut diag = Diagnostic::new(
                Code::WrongKind,
                name.span(),
                format!(
                    "`{}` is a {}, but a {} is needed here",
                    name.text,
                    found.noun(),
                    kind.noun()
                ),
            )
            .note(def, format!("`{}` is declared here", name.text));
            if found == Kind::Group && kind == Kind::Vm {
                diag = diag.help(format!(
                    "to spread packets over a group, write `balance {}`",
                    name.text
                ));
            }
            self.push(diag);
            return None;
        }
        Some(self.named[id].table_index)
    }

    fn check_all(&mut self) -> Policy {
        let program = self.program;
        // Groups first: balance needs their members.
        for n in 0..self.named.len() {
            if self.named[n].kind == Kind::Group {
                let (file, decl) = (self.named[n].file, self.named[n].decl);
                if let DeclKind::Group { members, .. } =
                    &program.files[file.0 as usize].ast.decls[decl].kind
                {
                    let mut ids = Vec::new();
                    for m in members {
                        if let Some(vm) = self.lookup_kind(file, m, Kind::Vm) {
                            if ids.contains(&vm) {
                                self.error(
                                    Code::Duplicate,
                                    m.span(),
                                    format!("`{}` is listed twice in the group", m.text),
                                );
                            } else {
                                ids.push(vm);
                            }
                        }
                    }
                    if members.is_empty() {
                        self.error(
                            Code::WrongKind,
                            self.named[n].span,
                            format!("group `{}` has no members", self.named[n].name),
                        )
                        .help = Some(
                            "a group lists at least one vm: `group web = {web1, web2}`".into(),
                        );
                    }
                    let index = self.named[n].table_index;
                    self.groups[index].members = ids;
                }
            }
        }
        // Every const and let, so that errors in unused ones are reported too.
        for n in 0..self.named.len() {
            match self.named[n].kind {
                Kind::Const => {
                    self.const_value(n);
                }
                Kind::Let => {
                    self.too_deep = false;
                    self.let_pred(n);
                }
                _ => {}
            }
        }
        // The usage marks so far come from consts and lets; rules decide what is used.
        let mut rules = Vec::new();
        let mut default: Option<(Actions, Span)> = None;
        let mut tests = Vec::new();
        let mut rule_names: HashMap<String, Span> = HashMap::new();
        let mut befores: Vec<(usize, ast::Name)> = Vec::new();
        for file in &program.files {
            let is_root = file.id == FileId(0);
            for decl in &file.ast.decls {
                match &decl.kind {
                    DeclKind::Rule {
                        name,
                        before,
                        pred,
                        actions,
                    } => {
                        self.too_deep = false;
                        let checked_pred = self.pred(file.id, pred);
                        let checked_actions = self.actions(file.id, actions, decl.span(), is_root);
                        if !is_root {
                            continue;
                        }
                        if let Some(first) = rule_names.get(&name.text) {
                            self.push(
                                Diagnostic::new(
                                    Code::Duplicate,
                                    name.span(),
                                    format!("rule `{}` is declared twice", name.text),
                                )
                                .note(*first, "first declared here"),
                            );
                        } else {
                            rule_names.insert(name.text.clone(), name.span());
                        }
                        if let Some(actions) = &checked_actions {
                            if !actions.explicit_fate {
                                self.push(
                                    Diagnostic::new(
                                        Code::NoFate,
                                        name.span(),
                                        format!(
                                            "rule `{}` has no drop, out, to, chain or balance: its packets are dropped",
                                            name.text
                                        ),
                                    )
                                    .help("add `drop` to say so, or `out PORT` to forward"),
                                );
                            }
                        }
                        if let Some(b) = before {
                            befores.push((rules.len(), b.clone()));
                        }
                        rules.push(Rule {
                            name: name.text.clone(),
                            pred: checked_pred,
                            actions: checked_actions.unwrap_or_else(Actions::drop),
                            span: name.span(),
                        });
                    }
                    DeclKind::Default { actions } => {
                        let checked = self.actions(file.id, actions, decl.span(), is_root);
                        if !is_root {
                            continue;
                        }
                        if let Some((_, first)) = &default {
                            let first = *first;
                            self.push(
                                Diagnostic::new(
                                    Code::DuplicateDefault,
                                    decl.span(),
                                    "a policy has at most one `default`",
                                )
                                .note(first, "first `default` here"),
                            );
                        } else if let Some(actions) = checked {
                            default = Some((actions, decl.span()));
                        }
                    }
                    _ => {}
                }
            }
        }
        let rules = self.apply_befores(rules, befores);
        let (default_actions, default_span) = match default {
            Some((a, s)) => (a, Some(s)),
            None => (Actions::drop(), None),
        };
        let mut policy = Policy {
            ports: std::mem::take(&mut self.ports),
            vms: std::mem::take(&mut self.vms),
            groups: std::mem::take(&mut self.groups),
            counters: Vec::new(),
            rules,
            default: default_actions,
            default_span,
            tests: Vec::new(),
        };
        // Tests of the root file, checked against the root's rules.
        for decl in &program.files[0].ast.decls {
            if let DeclKind::Test { title, cases } = &decl.kind {
                let mut checked_cases = Vec::new();
                for case in cases {
                    if let Some(c) = self.case(&policy, case) {
                        checked_cases.push(c);
                    }
                }
                tests.push(Test {
                    title: title.clone(),
                    cases: checked_cases,
                    span: decl.span(),
                });
            }
        }
        policy.tests = tests;
        policy.counters = std::mem::take(&mut self.counters);
        self.warn_unused(&policy);
        shadow::warn_shadowed(&policy, &mut self.diags);
        policy
    }

    fn apply_befores(
        &mut self,
        mut rules: Vec<Rule>,
        befores: Vec<(usize, ast::Name)>,
    ) -> Vec<Rule> {
        for (index, target) in befores {
            let name = rules[index].name.clone();
            let Some(from) = rules.iter().position(|r| r.name == name) else {
                continue;
            };
            let Some(to) = rules.iter().position(|r| r.name == target.text) else {
                let names: Vec<&str> = rules.iter().map(|r| r.name.as_str()).collect();
                let help =
                    did_you_mean(&target.text, names).map(|s| format!("did you mean `{s}`?"));
                let diag = Diagnostic::new(
                    Code::UnknownName,
                    target.span(),
                    format!("there is no rule `{}`", target.text),
                );
                self.push(match help {
                    Some(h) => diag.help(h),
                    None => diag,
                });
                continue;
            };
            if from > to {
                let rule = rules.remove(from);
                rules.insert(to, rule);
            }
        }
        rules
    }

    fn warn_unused(&mut self, policy: &Policy) {
        let cut_short = self.diags.iter().any(|d| d.code == Code::TooDeep);
        for n in 0..self.named.len() {
            let named = &self.named[n];
            if named.file != FileId(0) {
                continue;
            }
            match named.kind {
                // After E019 some uses were never walked: "unused" would be a guess.
                Kind::Const | Kind::Let if !named.used && !cut_short => {
                    let diag = Diagnostic::new(
                        Code::Unused,
                        named.span,
                        format!("{} `{}` is never used", named.kind.noun(), named.name),
                    )
                    .help("remove it, or use it in a rule");
                    self.diags.push(diag);
                }
                Kind::Vm
                    if !self.reached_vms[named.table_index]
                        && !self.duplicate_vms.contains(&named.table_index) =>
                {
                    let diag = Diagnostic::new(
                        Code::UnreachedVm,
                        named.span,
                        format!("no rule sends packets to vm `{}`", named.name),
                    )
                    .help(
                        "use it in `to`, `chain`, `mirror`, or a group that a rule balances over",
                    );
                    self.diags.push(diag);
                }
                _ => {}
            }
        }
        let _ = policy;
    }

    // ---- consts ------------------------------------------------------------------------------

    /// Evaluates a const or let once, reporting a declaration that depends on itself (E017).
    fn memoized<T: Clone>(
        &mut self,
        id: DeclId,
        table: fn(&mut Self) -> &mut Vec<Memo<T>>,
        evaluate: impl FnOnce(&mut Self, FileId, &'p DeclKind) -> Option<T>,
    ) -> Option<T> {
        match &table(self)[id] {
            Memo::Done(v) => return v.clone(),
            Memo::InProgress => {
                let span = self.named[id].span;
                let (noun, name) = (self.named[id].kind.noun(), self.named[id].name.clone());
                self.error(
                    Code::Recursive,
                    span,
                    format!("{noun} `{name}` refers to itself"),
                )
                .help = Some(format!("a {noun} cannot be defined in terms of itself"));
                table(self)[id] = Memo::Done(None);
                return None;
            }
            Memo::Todo => {}
        }
        table(self)[id] = Memo::InProgress;
        let (file, decl) = (self.named[id].file, self.named[id].decl);
        let program = self.program;
        let value = evaluate(
            self,
            file,
            &program.files[file.0 as usize].ast.decls[decl].kind,
        );
        // A cycle through this declaration has already stored `Done(None)`: keep it.
        let slot = &mut table(self)[id];
        if let Memo::InProgress = slot {
            *slot = Memo::Done(value.clone());
        }
        match slot {
            Memo::Done(v) => v.clone(),
            _ => value,
        }
    }

    fn const_value(&mut self, id: DeclId) -> Option<ConstItem> {
        self.memoized(
            id,
            |c| &mut c.consts,
            |c, file, kind| match kind {
                DeclKind::Const { value, .. } => c.resolve_value(file, value),
                _ => None,
            },
        )
    }

    /// Resolves a value expression (names → const values), without a type yet.
    fn resolve_value(&mut self, file: FileId, value: &ast::Value) -> Option<ConstItem> {
        let span = value.span();
        match &value.kind {
            ast::ValueKind::Scalar(s) => self.resolve_scalar(file, s),
            ast::ValueKind::Range(lo, hi) => {
                let lo = self.resolve_scalar(file, lo)?;
                let hi = self.resolve_scalar(file, hi)?;
                Some(ConstItem {
                    value: ConstValue::Range(Box::new(lo), Box::new(hi)),
                    span,
                })
            }
            ast::ValueKind::Set(members) => {
                let mut items = Vec::new();
                let mut ok = true;
                for m in members {
                    let item = match m {
                        ast::Member::Scalar(s) => self.resolve_scalar(file, s),
                        ast::Member::Range(lo, hi) => {
                            let span = lo.span().to(hi.span());
                            match (self.resolve_scalar(file, lo), self.resolve_scalar(file, hi)) {
                                (Some(lo), Some(hi)) => Some(ConstItem {
                                    value: ConstValue::Range(Box::new(lo), Box::new(hi)),
                                    span,
                                }),
                                _ => None,
                            }
                        }
                    };
                    match item {
                        Some(i) => items.push(i),
                        None => ok = false,
                    }
                }
                ok.then_some(ConstItem {
                    value: ConstValue::Set(items),
                    span,
                })
            }
        }
    }

    fn resolve_scalar(&mut self, file: FileId, scalar: &ast::Scalar) -> Option<ConstItem> {
        let span = scalar.span();
        let value = match &scalar.kind {
            ast::ScalarKind::Int(v, _) => ConstValue::Int(*v),
            ast::ScalarKind::Addr { addr, prefix_len } => match addr {
                ast::Addr::V4(a) => ConstValue::V4 {
                    addr: *a,
                    len: prefix_len.unwrap_or(32),
                },
                ast::Addr::V6(a) => ConstValue::V6 {
                    addr: *a,
                    len: prefix_len.unwrap_or(128),
                },
                ast::Addr::Mac(m) => ConstValue::Mac(*m),
            },
            ast::ScalarKind::Str(bytes) => ConstValue::Str(bytes.clone()),
            ast::ScalarKind::Regex { pattern, flags } => {
                let compiled = values::regex_pattern(pattern, flags);
                if let Err(message) = values::validate_regex(&compiled) {
                    self.error(Code::BadRegex, span, format!("invalid regex: {message}"))
                        .help =
                        Some("the syntax is that of Rust's regex crate, matching bytes".into());
                    return None;
                }
                ConstValue::Regex {
                    pattern: compiled,
                    source: format!("/{pattern}/{flags}"),
                }
            }
            ast::ScalarKind::Invalid => return None,
            ast::ScalarKind::Name(name) => {
                let id = self.lookup(file, name, span, "const")?;
                if self.named[id].kind != Kind::Const {
                    let kind = self.named[id].kind;
                    let def = self.named[id].span;
                    let mut diag = Diagnostic::new(
                        Code::WrongKind,
                        span,
                        format!("`{name}` is a {}, not a value", kind.noun()),
                    )
                    .note(def, "declared here");
                    if kind == Kind::Let {
                        diag = diag.help(format!(
                            "a let is a predicate: use `{name}` on its own, not as a value"
                        ));
                    }
                    self.push(diag);
                    return None;
                }
                let item = self.const_value(id)?;
                return Some(ConstItem {
                    value: item.value,
                    span,
                });
            }
        };
        Some(ConstItem { value, span })
    }

    // ---- predicates --------------------------------------------------------------------------

    fn let_pred(&mut self, id: DeclId) -> Option<Pred> {
        self.memoized(
            id,
            |c| &mut c.lets,
            |c, file, kind| match kind {
                DeclKind::Let { pred, .. } => {
                    // A let nested too deep is reported once, where it is declared; its
                    // users then see an erroneous let (None), not a second report.
                    let outer = std::mem::replace(&mut c.too_deep, false);
                    c.let_depth += 1;
                    let checked = c.pred(file, pred);
                    c.let_depth -= 1;
                    let deep = c.too_deep;
                    c.too_deep = outer || deep;
                    if deep {
                        c.deep_lets.push(id);
                    }
                    (!deep).then_some(checked)
                }
                _ => None,
            },
        )
    }

    fn pred(&mut self, file: FileId, pred: &ast::Pred) -> Pred {
        let span = pred.span();
        if self.depth >= MAX_NESTING {
            self.nested_too_deep(span, None);
            return Pred {
                kind: PredKind::False,
                span,
            };
        }
        self.depth += 1;
        let kind = self.pred_kind(file, pred);
        self.depth -= 1;
        Pred { kind, span }
    }

    /// E019, once per declaration, and once for all the lets (a chain of lets crosses the
    /// limit at many places): `via` is the `let` whose inlining crossed the limit.
    fn nested_too_deep(&mut self, span: Span, via: Option<(&str, usize)>) {
        if std::mem::replace(&mut self.too_deep, true) {
            return;
        }
        let in_let = self.let_depth > 0;
        if in_let && std::mem::replace(&mut self.deep_let_reported, true) {
            return;
        }
        let message = match via {
            Some((name, depth)) => format!(
                "predicate nested too deep: with `{name}` inlined here it nests {depth} levels (at most {MAX_NESTING})"
            ),
            None => format!(
                "predicate nested too deep: `and`/`or`/`not`, with `let`s inlined, nest more than {MAX_NESTING} levels here"
            ),
        };
        self.error(Code::TooDeep, span, message).help = Some(
            "flatten the predicate (`a or b or c` needs no parentheses), or build it from fewer nested `let`s"
                .into(),
        );
    }

    fn pred_kind(&mut self, file: FileId, pred: &ast::Pred) -> PredKind {
        match &pred.kind {
            AstPred::Or(items) => PredKind::Or(items.iter().map(|p| self.pred(file, p)).collect()),
            AstPred::And(items) => {
                PredKind::And(items.iter().map(|p| self.pred(file, p)).collect())
            }
            AstPred::Not(inner) => PredKind::Not(Box::new(self.pred(file, inner))),
            AstPred::Test(path) => self.test_path(file, path),
            AstPred::Compare {
                operand,
                mask,
                op,
                value,
            } => self.compare(file, operand, mask.as_ref(), *op, value),
            AstPred::Member {
                operand,
                negated,
                value,
            } => {
                let op = if *negated {
                    ast::CmpOp::Ne
                } else {
                    ast::CmpOp::Eq
                };
                self.compare(file, operand, None, op, value)
            }
            AstPred::Payload { op, arg } => self.payload_test(file, *op, arg),
        }
    }

    fn test_path(&mut self, file: FileId, path: &ast::Path) -> PredKind {
        let text = path.text.as_str();
        if let Some(proto) = Proto::from_name(text) {
            return PredKind::Proto(proto);
        }
        if let Some(field) = Field::from_name(text) {
            if field.ty() == FieldType::Bool {
                return PredKind::Field {
                    field,
                    mask: None,
                    set: IntervalSet::single(1),
                };
            }
            self.error(
                Code::TypeMismatch,
                path.span(),
                format!(
                    "`{text}` is a {} field, not a predicate",
                    field.ty().describe()
                ),
            )
            .help = Some(format!("compare it, e.g. `{text} == ...`"));
            return PredKind::False;
        }
        if text.contains('.') || RESERVED.contains(&text) {
            self.unknown_field(path);
            return PredKind::False;
        }
        if !self.scopes[file.0 as usize].contains_key(text) {
            // A misspelt protocol (`tpc`) is as likely as a misspelt let.
            let mut candidates: Vec<&str> = self.scopes[file.0 as usize]
                .iter()
                .filter(|(_, &id)| self.named[id].kind == Kind::Let)
                .map(|(n, _)| n.as_str())
                .collect();
            candidates.extend(Proto::ALL.iter().map(|p| p.name()));
            let suggestion = did_you_mean(text, candidates).map(str::to_string);
            let mut diag = Diagnostic::new(
                Code::UnknownName,
                path.span(),
                format!("unknown name `{text}`"),
            )
            .label("not a protocol, a bool field or a let");
            if let Some(s) = suggestion {
                diag = diag.help(format!("did you mean `{s}`?"));
            }
            self.push(diag);
            return PredKind::False;
        }
        let Some(id) = self.lookup(file, text, path.span(), "let or protocol") else {
            return PredKind::False;
        };
        if self.named[id].kind != Kind::Let {
            let kind = self.named[id].kind;
            let def = self.named[id].span;
            self.push(
                Diagnostic::new(
                    Code::WrongKind,
                    path.span(),
                    format!("`{text}` is a {}, not a predicate", kind.noun()),
                )
                .note(def, "declared here")
                .help(match kind {
                    Kind::Const => format!("compare a field with it, e.g. `ip.src in {text}`"),
                    Kind::Port => format!("test the input port with `in_port == {text}`"),
                    _ => "a predicate is a protocol, a comparison, or a `let`".to_string(),
                }),
            );
            return PredKind::False;
        }
        match self.let_pred(id) {
            // The let's tree replaces this node (one level of `self.depth`).
            Some(p) if self.depth - 1 + p.depth() > MAX_NESTING => {
                let depth = self.depth - 1 + p.depth();
                self.nested_too_deep(path.span(), Some((text, depth)));
                PredKind::False
            }
            Some(p) => p.kind,
            None => {
                // Built on a let that is too deep: as deep, without another report.
                if self.deep_lets.contains(&id) {
                    self.too_deep = true;
                }
                PredKind::False
            }
        }
    }

    fn unknown_field(&mut self, path: &ast::Path) {
        let mut names: Vec<&str> = Field::ALL.iter().map(|f| f.name()).collect();
        names.extend(["in_port", "payload", "payload.len"]);
        let mut diag = Diagnostic::new(
            Code::UnknownField,
            path.span(),
            format!("unknown field `{}`", path.text),
        )
        .label("not a field of the catalogue");
        if let Some(s) = did_you_mean(&path.text, names) {
            diag = diag.help(format!("did you mean `{s}`?"));
        }
        self.push(diag);
    }

    fn compare(
        &mut self,
        file: FileId,
        operand: &Operand,
        mask: Option<&ast::Scalar>,
        op: ast::CmpOp,
        value: &ast::Value,
    ) -> PredKind {
        match operand {
            Operand::PayloadByte { index, loc } => {
                let index = match u16::try_from(*index) {
                    Ok(i) => i,
                    Err(_) => {
                        self.error(Code::OutOfRange, loc.0, "payload index out of range")
                            .help = Some("payload[N] takes N in 0..65535".into());
                        return PredKind::False;
                    }
                };
                let ty = FieldType::Uint(8);
                let Some((mask, set)) = self.field_set(file, "payload[N]", ty, mask, op, value)
                else {
                    return PredKind::False;
                };
                PredKind::PayloadByte {
                    index,
                    mask: mask.map(|m| m as u8),
                    set,
                }
            }
            Operand::Path(path) => {
                if path.text == "in_port" {
                    return self.in_port(file, op, mask, value);
                }
                if path.text == "payload" {
                    self.error(
                        Code::TypeMismatch,
                        path.span(),
                        "`payload` is bytes and cannot be compared",
                    )
                    .help = Some(
                        "test it with `payload contains \"...\"`, `starts_with` or `matches /.../`, or compare `payload.len` or `payload[N]`".into(),
                    );
                    return PredKind::False;
                }
                let Some(field) = Field::from_name(&path.text) else {
                    if Proto::from_name(&path.text).is_some() {
                        self.error(
                            Code::TypeMismatch,
                            path.span(),
                            format!("`{}` is a protocol test and has no value", path.text),
                        )
                        .help = Some(format!("compare one of its fields, e.g. `{}.…`", path.text));
                    } else if path.text.contains('.') {
                        self.unknown_field(path);
                    } else {
                        self.lookup(file, &path.text, path.span(), "field");
                        if self.scopes[file.0 as usize].contains_key(&path.text) {
                            self.error(
                                Code::WrongKind,
                                path.span(),
                                format!("`{}` is not a field", path.text),
                            );
                        }
                    }
                    return PredKind::False;
                };
                if field.ty() == FieldType::Bool {
                    self.error(
                        Code::TypeMismatch,
                        path.span(),
                        format!(
                            "`{}` is a bool field and is tested on its own",
                            field.name()
                        ),
                    )
                    .help = Some(format!("write `{0}` or `not {0}`", field.name()));
                    return PredKind::False;
                }
                let Some((mask, set)) =
                    self.field_set(file, field.name(), field.ty(), mask, op, value)
                else {
                    return PredKind::False;
                };
                PredKind::Field { field, mask, set }
            }
        }
    }

    /// The set of (masked) values a comparison accepts.
    fn field_set(
        &mut self,
        file: FileId,
        what: &str,
        ty: FieldType,
        mask: Option<&ast::Scalar>,
        op: ast::CmpOp,
        value: &ast::Value,
    ) -> Option<(Option<u128>, IntervalSet)> {
        let mask = match mask {
            None => None,
            Some(m) => {
                let item = self.resolve_scalar(file, m)?;
                Some(values::single_value(self, &item, ty, what)?)
            }
        };
        let item = self.resolve_value(file, value)?;
        let first_new = self.diags.len();
        let set = self.typed_set(&item, ty, what, op);
        // A member that came from a const declared elsewhere is reported where it is used,
        // with a note at the member.
        let use_span = value.span();
        for diag in &mut self.diags[first_new..] {
            let inside = diag.span.file == use_span.file
                && diag.span.start >= use_span.start
                && diag.span.end <= use_span.end;
            if !inside {
                let member = diag.span;
                diag.span = use_span;
                diag.notes.push((member, "this member".into()));
            }
        }
        Some((mask, set?))
    }

    fn typed_set(
        &mut self,
        item: &ConstItem,
        ty: FieldType,
        what: &str,
        op: ast::CmpOp,
    ) -> Option<IntervalSet> {
        let max = ty.max_value();
        let set = match op {
            ast::CmpOp::Eq | ast::CmpOp::Ne => {
                let set = values::value_set(self, item, ty, what)?;
                if op == ast::CmpOp::Eq {
                    set
                } else {
                    set.complement(max)
                }
            }
            _ => {
                let v = values::single_value(self, item, ty, what)?;
                match op {
                    ast::CmpOp::Lt if v == 0 => IntervalSet::empty(),
                    ast::CmpOp::Lt => IntervalSet::range(0, v - 1),
                    ast::CmpOp::Le => IntervalSet::range(0, v),
                    ast::CmpOp::Gt if v >= max => IntervalSet::empty(),
                    ast::CmpOp::Gt => IntervalSet::range(v + 1, max),
                    _ => IntervalSet::range(v, max),
                }
            }
        };
        Some(set)
    }

    fn in_port(
        &mut self,
        file: FileId,
        op: ast::CmpOp,
        mask: Option<&ast::Scalar>,
        value: &ast::Value,
    ) -> PredKind {
        if let Some(m) = mask {
            self.error(Code::TypeMismatch, m.span(), "`in_port` cannot be masked");
            return PredKind::False;
        }
        if !matches!(op, ast::CmpOp::Eq | ast::CmpOp::Ne) {
            self.error(
                Code::TypeMismatch,
                value.span(),
                format!(
                    "`in_port` is a port name and cannot be compared with `{}`",
                    op.as_str()
                ),
            )
            .help = Some("use `==`, `!=`, `in` or `not in`".into());
            return PredKind::False;
        }
        let names: Vec<&ast::Scalar> = match &value.kind {
            ast::ValueKind::Scalar(s) => vec![s],
            ast::ValueKind::Set(members) => {
                let mut v = Vec::new();
                for m in members {
                    match m {
                        ast::Member::Scalar(s) => v.push(s),
                        ast::Member::Range(lo, hi) => {
                            self.error(
                                Code::TypeMismatch,
                                lo.span().to(hi.span()),
                                "ports have no order; list them",
                            );
                        }
                    }
                }
                v
            }
            ast::ValueKind::Range(..) => {
                self.error(
                    Code::TypeMismatch,
                    value.span(),
                    "ports have no order; list them",
                );
                return PredKind::False;
            }
        };
        let mut ports = Vec::new();
        for s in names {
            match &s.kind {
                ast::ScalarKind::Name(n) => {
                    let name = ast::Name {
                        text: n.clone(),
                        loc: s.loc,
                    };
                    if let Some(p) = self.lookup_kind(file, &name, Kind::Port) {
                        ports.push((p as u128, p as u128));
                    }
                }
                _ => {
                    self.error(
                        Code::TypeMismatch,
                        s.span(),
                        "`in_port` is compared with a port name",
                    );
                }
            }
        }
        let set = IntervalSet::from_ranges(ports);
        let set = if op == ast::CmpOp::Ne {
            set.complement(self.ports.len().saturating_sub(1) as u128)
        } else {
            set
        };
        PredKind::InPort { ports: set }
    }

    fn payload_test(&mut self, file: FileId, op: ast::PayloadOp, arg: &ast::Scalar) -> PredKind {
        let Some(item) = self.resolve_scalar(file, arg) else {
            return PredKind::False;
        };
        match (op, item.value) {
            (ast::PayloadOp::Contains, ConstValue::Str(b)) => {
                PredKind::Payload(PayloadTest::Contains(b))
            }
            (ast::PayloadOp::StartsWith, ConstValue::Str(b)) => {
                PredKind::Payload(PayloadTest::StartsWith(b))
            }
            (ast::PayloadOp::Matches, ConstValue::Regex { pattern, source }) => {
                PredKind::Payload(PayloadTest::Matches { pattern, source })
            }
            (ast::PayloadOp::Matches, other) => {
                self.error(
                    Code::TypeMismatch,
                    arg.span(),
                    format!(
                        "`payload matches` takes a regex, found {}",
                        other.describe()
                    ),
                )
                .help = Some("write a regex literal: `payload matches /GET \\/admin/i`".into());
                PredKind::False
            }
            (op, other) => {
                self.error(
                    Code::TypeMismatch,
                    arg.span(),
                    format!(
                        "`payload {}` takes a string, found {}",
                        op.as_str(),
                        other.describe()
                    ),
                )
                .help = Some(match other {
                    ConstValue::Regex { .. } => "use `payload matches` for a regex".into(),
                    _ => "write a string: `payload contains \"GET \"` (bytes as \\xHH)".into(),
                });
                PredKind::False
            }
        }
    }

    // ---- actions -----------------------------------------------------------------------------

    fn actions(
        &mut self,
        file: FileId,
        actions: &[ast::Action],
        decl_span: Span,
        is_root: bool,
    ) -> Option<Actions> {
        let mut fate: Option<(Fate, Span)> = None;
        let mut mirrors = Vec::new();
        let mut counts = Vec::new();
        let mut ok = true;
        for action in actions {
            let new_fate = match &action.kind {
                ActionKind::Drop => Some(Fate::Drop),
                ActionKind::Out(p) => match self.lookup_kind(file, p, Kind::Port) {
                    Some(p) => Some(Fate::Out(p)),
                    None => {
                        ok = false;
                        None
                    }
                },
                ActionKind::To(v) => match self.lookup_kind(file, v, Kind::Vm) {
                    Some(v) => {
                        self.reach(is_root, v);
                        Some(Fate::To(v))
                    }
                    None => {
                        ok = false;
                        None
                    }
                },
                ActionKind::Balance(b) => match self.balance(file, b, is_root) {
                    Some(b) => Some(Fate::Balance(b)),
                    None => {
                        ok = false;
                        None
                    }
                },
                ActionKind::Chain(hops) => match self.chain(file, hops, is_root) {
                    Some(h) => Some(Fate::Chain(h)),
                    None => {
                        ok = false;
                        None
                    }
                },
                ActionKind::Mirror(v) => {
                    match self.lookup_kind(file, v, Kind::Vm) {
                        Some(v) => {
                            self.reach(is_root, v);
                            mirrors.push(v);
                        }
                        None => ok = false,
                    }
                    None
                }
                ActionKind::Count(c) => {
                    if is_root {
                        let id = match self.counters.iter().position(|x| x == &c.text) {
                            Some(i) => i,
                            None => {
                                self.counters.push(c.text.clone());
                                self.counters.len() - 1
                            }
                        };
                        counts.push(id);
                    }
                    None
                }
            };
            if action.is_fate() {
                if let Some((_, first)) = &fate {
                    let first = *first;
                    self.push(
                        Diagnostic::new(
                            Code::ActionConflict,
                            action.span(),
                            "a rule has at most one of drop, out, to, chain and balance",
                        )
                        .label("second fate action")
                        .note(first, "first one here")
                        .help("to send a packet through several VMs, use `chain A -> B -> out PORT`; to copy it, `mirror VM`"),
                    );
                    ok = false;
                } else if let Some(f) = new_fate {
                    fate = Some((f, action.span()));
                } else {
                    fate = Some((Fate::Drop, action.span()));
                }
            }
        }
        let _ = decl_span;
        ok.then(|| {
            let explicit_fate = fate.is_some();
            Actions {
                fate: fate.map_or(Fate::Drop, |(f, _)| f),
                mirrors,
                counts,
                explicit_fate,
            }
        })
    }

    fn reach(&mut self, is_root: bool, vm: VmId) {
        if is_root {
            self.reached_vms[vm] = true;
        }
    }

    fn balance(&mut self, file: FileId, b: &ast::Balance, is_root: bool) -> Option<Balance> {
        let group = self.lookup_kind(file, &b.group, Kind::Group)?;
        if is_root {
            for vm in self.groups[group].members.clone() {
                self.reach(true, vm);
            }
        }
        let key = match &b.key {
            None | Some(ast::BalanceKey::Flow) => BalanceKey::Flow,
            Some(ast::BalanceKey::Field(p)) => BalanceKey::Fields(vec![self.key_field(p)?]),
            Some(ast::BalanceKey::Fields(ps)) => {
                let mut fields = Vec::new();
                for p in ps {
                    fields.push(self.key_field(p)?);
                }
                BalanceKey::Fields(fields)
            }
        };
        Some(Balance { group, key })
    }

    fn key_field(&mut self, path: &ast::Path) -> Option<Field> {
        match Field::from_name(&path.text) {
            Some(f) => Some(f),
            None => {
                self.unknown_field(path);
                None
            }
        }
    }

    fn chain(&mut self, file: FileId, hops: &[ast::Hop], is_root: bool) -> Option<Vec<Hop>> {
        let mut out = Vec::new();
        let mut ok = true;
        let mut terminal: Option<Span> = None;
        for hop in hops {
            if let Some(end) = terminal {
                self.push(
                    Diagnostic::new(
                        Code::BadChain,
                        hop.span(),
                        "nothing can follow `out` or `drop` in a chain",
                    )
                    .note(end, "the chain ends here")
                    .help("`out PORT` or `drop` is the last hop"),
                );
                ok = false;
                continue;
            }
            match hop {
                ast::Hop::Vm(name) => match self.lookup_kind(file, name, Kind::Vm) {
                    Some(v) => {
                        self.reach(is_root, v);
                        out.push(Hop::Vm(v));
                    }
                    None => ok = false,
                },
                ast::Hop::Balance(b) => match self.balance(file, b, is_root) {
                    Some(b) => out.push(Hop::Balance(b)),
                    None => ok = false,
                },
                ast::Hop::Out(p) => {
                    terminal = Some(hop.span());
                    match self.lookup_kind(file, p, Kind::Port) {
                        Some(p) => out.push(Hop::Out(p)),
                        None => ok = false,
                    }
                }
                ast::Hop::Drop(_) => {
                    terminal = Some(hop.span());
                    out.push(Hop::Drop);
                }
            }
        }
        ok.then_some(out)
    }

    // ---- tests -------------------------------------------------------------------------------

    fn case(&mut self, policy: &Policy, case: &ast::Case) -> Option<TestCase> {
        let root = FileId(0);
        let Some(base) = BaseProto::from_name(&case.proto.text) else {
            let names = ["eth", "arp", "ip", "ip6", "tcp", "udp", "icmp", "icmp6"];
            let mut diag = Diagnostic::new(
                Code::BadTestCase,
                case.proto.span(),
                format!("`{}` is not a packet kind", case.proto.text),
            )
            .label("unknown packet kind");
            diag = match did_you_mean(&case.proto.text, names) {
                Some(s) => diag.help(format!("did you mean `{s}`?")),
                None => diag.help(format!("a test packet is one of {}", names.join(", "))),
            };
            self.push(diag);
            return None;
        };
        let mut spec = PacketSpec::new(base);
        let mut in_port = None;
        let mut ok = true;
        for assign in &case.assigns {
            match &assign.target {
                Operand::PayloadByte { index, loc } => {
                    let item = self.resolve_value(root, &assign.value);
                    let byte = item.and_then(|i| {
                        values::single_value(self, &i, FieldType::Uint(8), "payload[N]")
                    });
                    match (u16::try_from(*index), byte) {
                        (Ok(i), Some(b)) => spec.payload_bytes.push((i, b as u8)),
                        (Err(_), _) => {
                            self.error(Code::OutOfRange, loc.0, "payload index out of range");
                            ok = false;
                        }
                        _ => ok = false,
                    }
                }
                Operand::Path(path) if path.text == "in_port" => {
                    let port = match &assign.value.kind {
                        ast::ValueKind::Scalar(ast::Scalar {
                            kind: ast::ScalarKind::Name(n),
                            loc,
                        }) => self.lookup_kind(
                            root,
                            &ast::Name {
                                text: n.clone(),
                                loc: *loc,
                            },
                            Kind::Port,
                        ),
                        _ => {
                            self.error(
                                Code::TypeMismatch,
                                assign.value.span(),
                                "`in_port` is set to a port name",
                            );
                            None
                        }
                    };
                    match port {
                        Some(p) => in_port = Some(p),
                        None => ok = false,
                    }
                }
                Operand::Path(path) if path.text == "payload" => {
                    match self.resolve_value(root, &assign.value).map(|i| i.value) {
                        Some(ConstValue::Str(b)) => spec.payload = Some(b),
                        Some(other) => {
                            self.error(
                                Code::TypeMismatch,
                                assign.value.span(),
                                format!("`payload` is set to a string, found {}", other.describe()),
                            );
                            ok = false;
                        }
                        None => ok = false,
                    }
                }
                Operand::Path(path) => {
                    let Some(field) = Field::from_name(&path.text) else {
                        self.unknown_field(path);
                        ok = false;
                        continue;
                    };
                    let value = if field.ty() == FieldType::Bool {
                        self.bool_value(&assign.value)
                    } else {
                        self.resolve_value(root, &assign.value).and_then(|item| {
                            values::single_value(self, &item, field.ty(), field.name())
                        })
                    };
                    match value {
                        Some(v) => {
                            spec.set(field, v);
                        }
                        None => ok = false,
                    }
                }
            }
        }
        let expect = match &case.expect {
            Expect::Rule(None) => Expectation::Rule(None),
            Expect::Rule(Some(name)) => match policy.rule_index(&name.text) {
                Some(i) => Expectation::Rule(Some(i)),
                None => {
                    let names: Vec<&str> = policy.rules.iter().map(|r| r.name.as_str()).collect();
                    let mut diag = Diagnostic::new(
                        Code::BadTestCase,
                        name.span(),
                        format!("there is no rule `{}`", name.text),
                    );
                    diag = match did_you_mean(&name.text, names) {
                        Some(s) => diag.help(format!("did you mean `rule {s}`?")),
                        None => diag.help("name a rule of this file, or `rule default`"),
                    };
                    self.push(diag);
                    return None;
                }
            },
            Expect::Actions(actions) => {
                let known_counters = self.counters.len();
                let checked = self.actions(root, actions, case.loc.0, false)?;
                // Counters named only in a test expectation exist in no rule: report them.
                let mut counts = Vec::new();
                for action in actions {
                    if let ActionKind::Count(c) = &action.kind {
                        match self.counters[..known_counters]
                            .iter()
                            .position(|x| x == &c.text)
                        {
                            Some(i) => counts.push(i),
                            None => {
                                self.error(
                                    Code::BadTestCase,
                                    c.span(),
                                    format!("no rule counts `{}`", c.text),
                                );
                                return None;
                            }
                        }
                    }
                }
                Expectation::Actions(Actions { counts, ..checked })
            }
        };
        if !ok {
            return None;
        }
        if let Err(e) = spec.build() {
            let mut diag = Diagnostic::new(
                Code::BadTestCase,
                case.proto.span().to(case.loc.0),
                format!("this test packet cannot be built: {e}"),
            );
            if let Some(field) = e.field {
                if let Some(a) = case.assigns.iter().find(|a| match &a.target {
                    Operand::Path(p) => p.text == field.name(),
                    _ => false,
                }) {
                    diag.span = a.target.span().to(a.value.span());
                }
            }
            self.push(diag);
            return None;
        }
        Some(TestCase {
            base,
            fields: spec.fields.clone(),
            payload: spec.payload.clone(),
            payload_bytes: spec.payload_bytes.clone(),
            in_port,
            expect,
            span: case.loc.0,
        })
    }

    fn bool_value(&mut self, value: &ast::Value) -> Option<u128> {
        if let ast::ValueKind::Scalar(s) = &value.kind {
            match &s.kind {
                ast::ScalarKind::Name(n) if n == "true" => return Some(1),
                ast::ScalarKind::Name(n) if n == "false" => return Some(0),
                ast::ScalarKind::Int(v, _) if *v <= 1 => return Some(*v),
                _ => {}
            }
        }
        self.error(
            Code::TypeMismatch,
            value.span(),
            "a bool field is set to `true` or `false`",
        );
        None
    }
}
