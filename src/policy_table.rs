//! The binary's bridge from the language to the runtime: a checked `netvm_lang::Policy`
//! becomes a `netvm_runtime::PolicyTable`, and a compiled classifier (the Cranelift JIT,
//! or the interpreter where the JIT refuses a policy) becomes a
//! `netvm_runtime::Classifier`. The runtime depends on neither crate; this file is the
//! only place that knows both sides.

use netvm_compiler::{Interpreter, Jit};
use netvm_lang::policy::{self as lang, Policy};
use netvm_runtime::policy::{BalanceKey, Fate, Hop};
use netvm_runtime::{Classifier, PolicyTable, Program, ProgramHandle, RuleAction};

fn key(key: &lang::BalanceKey) -> BalanceKey {
    match key {
        lang::BalanceKey::Flow => BalanceKey::Flow,
        lang::BalanceKey::Fields(fields) => BalanceKey::Fields(fields.clone()),
    }
}

fn hop(hop: &lang::Hop) -> Hop {
    match hop {
        lang::Hop::Vm(v) => Hop::Vm(*v),
        lang::Hop::Balance(b) => Hop::Balance {
            group: b.group,
            key: key(&b.key),
        },
        lang::Hop::Out(p) => Hop::Out(*p),
        lang::Hop::Drop => Hop::Drop,
    }
}

fn action(name: &str, actions: &lang::Actions) -> RuleAction {
    let fate = match &actions.fate {
        lang::Fate::Drop => Fate::Drop,
        lang::Fate::Out(p) => Fate::Out(*p),
        lang::Fate::To(v) => Fate::To(*v),
        lang::Fate::Chain(hops) => Fate::Chain(hops.iter().map(hop).collect()),
        lang::Fate::Balance(b) => Fate::Balance {
            group: b.group,
            key: key(&b.key),
        },
    };
    RuleAction {
        name: name.to_string(),
        fate,
        mirrors: actions.mirrors.clone(),
        counters: actions.counts.clone(),
    }
}

/// The runtime's table for `policy`, in the policy's declaration order.
pub fn policy_table(policy: &Policy) -> PolicyTable {
    PolicyTable {
        rules: policy
            .rules
            .iter()
            .map(|r| action(&r.name, &r.actions))
            .collect(),
        default: action("default", &policy.default),
        port_names: policy.ports.iter().map(|p| p.name.clone()).collect(),
        port_bindings: policy
            .ports
            .iter()
            .map(|p| {
                let (driver, arg) = p.binding.as_ref()?;
                Some(format!("{driver}({arg:?})"))
            })
            .collect(),
        vm_names: policy.vms.iter().map(|v| v.name.clone()).collect(),
        vm_trusted: policy.vms.iter().map(|v| v.trusted).collect(),
        vm_on_failure: policy
            .vms
            .iter()
            .map(|v| match v.on_failure {
                netvm_lang::policy::OnFailure::Drop => netvm_runtime::OnFailure::Drop,
                netvm_lang::policy::OnFailure::Bypass => netvm_runtime::OnFailure::Bypass,
            })
            .collect(),
        groups: policy.groups.iter().map(|g| g.members.clone()).collect(),
        counter_names: policy.counters.clone(),
    }
}

/// The JIT-compiled classifier.
pub struct JitClassifier(pub Jit);

impl Classifier for JitClassifier {
    fn n_rules(&self) -> usize {
        self.0.rule_count()
    }

    fn classify_burst(&self, frames: &[&[u8]], in_port: u32, out: &mut [u32]) {
        self.0.classify_burst(frames, in_port, out);
    }
}

/// The reference interpreter (slower; used when the JIT cannot compile a policy).
pub struct InterpClassifier(pub Interpreter);

impl Classifier for InterpClassifier {
    fn n_rules(&self) -> usize {
        self.0.ir().rules.len()
    }

    fn classify_burst(&self, frames: &[&[u8]], in_port: u32, out: &mut [u32]) {
        let default = self.n_rules() as u32;
        for (frame, slot) in frames.iter().zip(out.iter_mut()) {
            *slot = self
                .0
                .classify(frame, in_port)
                .map_or(default, |r| r as u32);
        }
    }
}

/// Compile `policy`: the JIT, or the interpreter with the JIT's refusal as the reason.
pub fn compile(policy: &Policy) -> Result<(Box<dyn Classifier>, String), String> {
    let ir = netvm_compiler::lower(policy);
    match Jit::compile(&ir) {
        Ok(jit) => {
            // The payload engine's share of the compile time and its memory, for the
            // reload report (the REPL's timing line).
            let engine = match jit.payload_stats() {
                Some((stats, built)) => format!("Cranelift JIT; {}", stats.describe(built)),
                None => "Cranelift JIT".to_string(),
            };
            Ok((Box::new(JitClassifier(jit)), engine))
        }
        Err(e) => {
            let interp = Interpreter::new(ir).map_err(|e| e.to_string())?;
            Ok((
                Box::new(InterpClassifier(interp)),
                format!("interpreter (the JIT refused: {e})"),
            ))
        }
    }
}

/// One rule: its text as the operator wrote it (what reports show) and its meaning (what
/// decides whether a reload changed it).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RuleText {
    pub name: String,
    /// The rule's predicate and actions as written, whitespace collapsed.
    pub text: String,
    /// A 64-bit hash of the lowered predicate (the classifier IR of this rule alone,
    /// consts, lets and sets resolved) and the actions by name. Rules with the same
    /// meaning classify and steer every packet alike, however they are written; an edited
    /// `const` changes the meaning of every rule that uses it.
    #[serde(skip)]
    pub meaning: u64,
}

/// Every rule of `policy` with its source text, from the `program` it was checked from
/// (whose syntax trees hold each rule's whole declaration).
pub fn rule_texts(policy: &Policy, program: &netvm_lang::Program) -> Vec<RuleText> {
    use std::collections::HashMap;
    use std::hash::{Hash, Hasher};
    // A checked rule keeps the span of its name; its declaration is found by that span.
    let mut written: HashMap<netvm_lang::Span, &str> = HashMap::new();
    for file in &program.files {
        let text = &program.sources.get(file.id).text;
        for decl in &file.ast.decls {
            if let netvm_lang::ast::DeclKind::Rule { name, .. } = &decl.kind {
                // From the `:` after the name (and any `before NAME`): the predicate's own
                // span starts inside its parentheses when it is wrapped in them.
                let body = text
                    .get(name.span().end as usize..decl.span().end as usize)
                    .and_then(|rest| rest.split_once(':'))
                    .map(|(_, body)| body);
                written.insert(name.span(), body.unwrap_or(""));
            }
        }
    }
    policy
        .rules
        .iter()
        .map(|r| {
            let actions = policy.describe_actions(&r.actions);
            let text = match written.get(&r.span) {
                Some(body) => body.split_whitespace().collect::<Vec<_>>().join(" "),
                None => format!("... => {actions}"),
            };
            let lowered = netvm_compiler::lower::lower_pred(&r.pred);
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            lowered.atoms.hash(&mut hasher);
            lowered.rules.hash(&mut hasher);
            lowered.literals.hash(&mut hasher);
            lowered.regexes.hash(&mut hasher);
            actions.hash(&mut hasher);
            RuleText {
                name: r.name.clone(),
                text,
                meaning: hasher.finish(),
            }
        })
        .collect()
}

/// What a reload changes, rule by rule (matched by name).
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PolicyDiff {
    pub added: Vec<RuleText>,
    pub removed: Vec<RuleText>,
    /// (before, after): same name, different meaning.
    pub changed: Vec<(RuleText, RuleText)>,
    /// Rules that kept their name and meaning but moved (order decides the first match).
    pub moved: usize,
    /// Added, removed and changed rules left out of the lists above by [`Self::capped`].
    #[serde(default)]
    pub not_listed: [usize; 3],
}

impl PolicyDiff {
    pub fn between(old: &[RuleText], new: &[RuleText]) -> PolicyDiff {
        use std::collections::{HashMap, HashSet};
        let old_at: HashMap<&str, (usize, &RuleText)> = old
            .iter()
            .enumerate()
            .map(|(i, r)| (r.name.as_str(), (i, r)))
            .collect();
        let new_names: HashSet<&str> = new.iter().map(|r| r.name.as_str()).collect();
        let mut diff = PolicyDiff::default();
        // Old positions of the unchanged rules, in their new order.
        let mut kept_positions = Vec::new();
        for r in new {
            match old_at.get(r.name.as_str()) {
                None => diff.added.push(r.clone()),
                Some((i, before)) => {
                    if before.meaning != r.meaning {
                        diff.changed.push(((*before).clone(), r.clone()));
                    } else {
                        kept_positions.push(*i);
                    }
                }
            }
        }
        // The fewest moves that give the new order: every unchanged rule outside a
        // longest run that kept its relative order (one rule moved up past three is one
        // move, not four).
        diff.moved = kept_positions.len() - longest_increasing_run(&kept_positions);
        diff.removed = old
            .iter()
            .filter(|r| !new_names.contains(r.name.as_str()))
            .cloned()
            .collect();
        diff
    }

    pub fn is_empty(&self) -> bool {
        self.counts() == [0, 0, 0] && self.moved == 0
    }

    /// How many rules were added, removed and changed (listed or not).
    pub fn counts(&self) -> [usize; 3] {
        [
            self.added.len() + self.not_listed[0],
            self.removed.len() + self.not_listed[1],
            self.changed.len() + self.not_listed[2],
        ]
    }

    /// The same diff listing at most `n` rules of each kind (the counts stay exact), to
    /// send a reload's report over the control socket.
    pub fn capped(&self, n: usize) -> PolicyDiff {
        let [added, removed, changed] = self.counts();
        PolicyDiff {
            added: self.added.iter().take(n).cloned().collect(),
            removed: self.removed.iter().take(n).cloned().collect(),
            changed: self.changed.iter().take(n).cloned().collect(),
            moved: self.moved,
            not_listed: [
                added - added.min(n),
                removed - removed.min(n),
                changed - changed.min(n),
            ],
        }
    }
}

impl std::fmt::Display for PolicyDiff {
    /// At most 20 lines per kind; the counts are always exact.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const SHOWN: usize = 20;
        if self.is_empty() {
            return writeln!(f, "no rule changes");
        }
        let [added, removed, changed] = self.counts();
        writeln!(
            f,
            "{added} added, {removed} removed, {changed} changed, {} moved",
            self.moved
        )?;
        for r in self.added.iter().take(SHOWN) {
            writeln!(f, "  + {}: {}", r.name, r.text)?;
        }
        for r in self.removed.iter().take(SHOWN) {
            writeln!(f, "  - {}: {}", r.name, r.text)?;
        }
        for (a, b) in self.changed.iter().take(SHOWN) {
            if a.text == b.text {
                writeln!(
                    f,
                    "  ~ {}: {} (same text; a const or let it uses changed)",
                    a.name, b.text
                )?;
            } else {
                writeln!(f, "  ~ {}: {}\n    -> {}", a.name, a.text, b.text)?;
            }
        }
        let hidden = self.added.len().saturating_sub(SHOWN)
            + self.removed.len().saturating_sub(SHOWN)
            + self.changed.len().saturating_sub(SHOWN)
            + self.not_listed.iter().sum::<usize>();
        if hidden > 0 {
            writeln!(f, "  ... and {hidden} more")?;
        }
        Ok(())
    }
}

/// The length of a longest strictly increasing subsequence (patience sorting).
fn longest_increasing_run(values: &[usize]) -> usize {
    let mut tails: Vec<usize> = Vec::new();
    for &v in values {
        match tails.binary_search(&v) {
            Ok(_) => {}
            Err(at) if at == tails.len() => tails.push(v),
            Err(at) => tails[at] = v,
        }
    }
    tails.len()
}

/// What [`reload`] did.
#[derive(Debug)]
pub struct Reloaded {
    /// "Cranelift JIT" or the interpreter with the JIT's reason.
    pub engine: String,
    /// Lowering and compiling the classifier, building the table, carrying counters.
    pub compile: std::time::Duration,
    /// The atomic pointer swap alone: the moment the data path moves over.
    pub swap: std::time::Duration,
    /// Rules whose counters carried over (same name).
    pub counters_carried: usize,
}

/// Hot-reload a checked `policy` into the switch behind `handle`.
///
/// Everything expensive happens here on the caller's thread, off the data path: lowering,
/// JIT compilation, the runtime table, the compatibility check (ports and VMs, with their
/// order, the ports' declared bindings and the VMs' trust, must stay as they are: refused
/// otherwise, nothing changed) and sharing the counters of rules that keep their name.
/// Then one atomic pointer swap ([`ProgramHandle::swap`]) installs the new program: the
/// switch loads the program once per burst, so every packet is classified and steered
/// wholly by the old or wholly by the new one. That holds for packets already queued to
/// VMs too: each finishes the chain of the program that classified it, every hop of it
/// (later VMs, the final `out` or drop), and is not re-classified.
///
/// The old program (its JIT code and tables) is freed when the last burst that loaded it
/// drops its guard and the last packet it classified has left its VMs, and not before —
/// here, at the end of this call, if nothing holds it. Callers must not reload
/// concurrently from two threads (the compatibility check and the counter carry-over read
/// the program installed when they ran).
pub fn reload(handle: &ProgramHandle, policy: &Policy) -> Result<Reloaded, String> {
    let start = std::time::Instant::now();
    let table = policy_table(policy);
    let (classifier, engine) = compile(policy)?;
    let mut program = Program::new(classifier, table).map_err(|e| e.to_string())?;
    handle
        .check_compatible(&program)
        .map_err(|e| e.to_string())?;
    let counters_carried = program.carry_counters_from(&handle.load());
    let compile_time = start.elapsed();
    let swap_start = std::time::Instant::now();
    let old = handle.swap(program).map_err(|e| e.to_string())?;
    let swap = swap_start.elapsed();
    drop(old);
    Ok(Reloaded {
        engine,
        compile: compile_time,
        swap,
        counters_carried,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(text: &str) -> Vec<RuleText> {
        let checked = netvm_lang::check_text("diff.nvr", text);
        let policy = checked.policy.as_ref().expect("test policies check");
        rule_texts(policy, &checked.program)
    }

    const BASE: &str = "const P = 22\nport a\nport b\n\
                        rule ssh : tcp.dport == P => drop\n\
                        rule web : tcp.dport == 80 => out b\n\
                        default => out b\n";

    #[test]
    fn an_edited_const_changes_the_rules_that_use_it_and_no_other() {
        let diff = PolicyDiff::between(&rules(BASE), &rules(&BASE.replace("= 22", "= 2222")));
        assert_eq!(diff.changed.len(), 1, "{diff}");
        assert_eq!(diff.changed[0].0.name, "ssh");
        assert!(diff.added.is_empty() && diff.removed.is_empty() && diff.moved == 0);
        assert!(diff.to_string().contains("a const or let it uses changed"));
    }

    /// The reload report (the REPL's timing line) names the payload engine's size and its
    /// share of the compile time when the policy has payload tests, and only then.
    #[test]
    fn the_engine_line_reports_the_payload_engine() {
        let compiled = |text: &str| {
            let checked = netvm_lang::check_text("payload.nvr", text);
            let policy = checked.policy.as_ref().expect("test policies check");
            compile(policy).map(|(_, engine)| engine).expect("compiles")
        };
        assert_eq!(compiled(BASE), "Cranelift JIT");
        let dpi =
            "port a\nrule a : payload contains \"evil\" or payload contains \"bad\" => drop\n\
                   rule b : payload matches /union\\s+select/i => drop\ndefault => out a\n";
        let engine = compiled(dpi);
        assert!(
            engine.starts_with("Cranelift JIT; payload engine 2 literals, 1 regexes (1 prefiltered), 2 gated rules, ")
                && engine.contains(" MiB per thread, built in "),
            "{engine}"
        );
    }

    #[test]
    fn a_rule_whose_predicate_starts_with_a_parenthesis_is_shown_whole() {
        let texts = rules(
            "port a\nport b\nrule p1 : ((tcp)) => drop\nrule p2 before p1: (udp or tcp) and ip => out b\n",
        );
        assert_eq!(texts[0].text, "(udp or tcp) and ip => out b");
        assert_eq!(texts[1].text, "((tcp)) => drop");
    }

    #[test]
    fn a_reformatted_rule_is_not_a_change() {
        let reformatted = BASE.replace(
            "rule web : tcp.dport == 80 => out b",
            "rule web:\n   (tcp.dport == 0x50)\n   => out b",
        );
        let diff = PolicyDiff::between(&rules(BASE), &rules(&reformatted));
        assert!(diff.is_empty(), "{diff}");
    }

    #[test]
    fn changed_actions_added_removed_and_moved_rules_are_reported() {
        let edited = "const P = 22\nport a\nport b\n\
                      rule web : tcp.dport == 80 => drop\n\
                      rule dns : udp.dport == 53 => out b\n\
                      default => out b\n";
        let diff = PolicyDiff::between(&rules(BASE), &rules(edited));
        assert_eq!(diff.changed.len(), 1);
        assert_eq!(diff.changed[0].1.text, "tcp.dport == 80 => drop");
        assert_eq!(diff.added[0].name, "dns");
        assert_eq!(diff.removed[0].name, "ssh");

        let swapped = "const P = 22\nport a\nport b\n\
                       rule web : tcp.dport == 80 => out b\n\
                       rule ssh : tcp.dport == P => drop\n\
                       default => out b\n";
        let diff = PolicyDiff::between(&rules(BASE), &rules(swapped));
        assert_eq!((diff.moved, diff.changed.len()), (1, 0), "{diff}");
    }

    #[test]
    fn a_reload_that_changes_a_ports_binding_is_refused_naming_the_port() {
        const BOUND: &str = "port lan = afpacket(\"veth0\")\nport wan\n\
                             rule web : tcp.dport == 80 => out wan\n\
                             default => drop\n";
        let policy = |text: &str| {
            let checked = netvm_lang::check_text("bound.nvr", text);
            checked.policy.expect("test policies check")
        };
        let running = policy(BOUND);
        let (classifier, _) = compile(&running).unwrap();
        let handle = ProgramHandle::new(Program::new(classifier, policy_table(&running)).unwrap());
        let installed = handle.load_full();
        let refused = |text: &str| {
            let err = reload(&handle, &policy(text)).unwrap_err();
            assert!(
                std::sync::Arc::ptr_eq(&handle.load_full(), &installed),
                "nothing changed: {err}"
            );
            err
        };
        let err = refused(&BOUND.replace("veth0", "veth1"));
        assert_eq!(
            err,
            "a reload cannot change the binding of port `lan` (running: afpacket(\"veth0\"); \
             new: afpacket(\"veth1\")); restart the switch for that"
        );
        let err = refused(&BOUND.replace("port wan", "port wan = afpacket(\"veth2\")"));
        assert!(
            err.contains("port `wan` (running: none declared; new: afpacket(\"veth2\"))"),
            "{err}"
        );
        let err = refused(&BOUND.replace(" = afpacket(\"veth0\")", ""));
        assert!(err.contains("port `lan`"), "{err}");
        // The same bindings with another rule: taken.
        reload(&handle, &policy(&BOUND.replace("80", "8080"))).unwrap();
        assert!(!std::sync::Arc::ptr_eq(&handle.load_full(), &installed));
    }
}
