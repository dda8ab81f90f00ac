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
        vm_names: policy.vms.iter().map(|v| v.name.clone()).collect(),
        vm_trusted: policy.vms.iter().map(|v| v.trusted).collect(),
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
        Ok(jit) => Ok((Box::new(JitClassifier(jit)), "Cranelift JIT".to_string())),
        Err(e) => {
            let interp = Interpreter::new(ir).map_err(|e| e.to_string())?;
            Ok((
                Box::new(InterpClassifier(interp)),
                format!("interpreter (the JIT refused: {e})"),
            ))
        }
    }
}

/// One rule as the operator wrote it, for reporting what a reload changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleText {
    pub name: String,
    /// The rule's predicate and actions as written, whitespace collapsed.
    pub text: String,
}

/// Every rule of `policy` with its source text from `sources`.
pub fn rule_texts(policy: &Policy, sources: &netvm_lang::SourceMap) -> Vec<RuleText> {
    policy
        .rules
        .iter()
        .map(|r| {
            let file = sources.get(r.span.file);
            let raw = file
                .text
                .get(r.span.start as usize..r.span.end as usize)
                .unwrap_or("");
            let mut text = raw.split_whitespace().collect::<Vec<_>>().join(" ");
            let actions = policy.describe_actions(&r.actions);
            if !text.contains("=>") {
                text = format!("{text} => {actions}");
            }
            RuleText {
                name: r.name.clone(),
                text,
            }
        })
        .collect()
}

/// What a reload changes, rule by rule (matched by name).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PolicyDiff {
    pub added: Vec<RuleText>,
    pub removed: Vec<RuleText>,
    /// (before, after), same name, different text.
    pub changed: Vec<(RuleText, RuleText)>,
    /// Rules that kept their name and text but moved (order decides the first match).
    pub moved: usize,
}

impl PolicyDiff {
    pub fn between(old: &[RuleText], new: &[RuleText]) -> PolicyDiff {
        use std::collections::HashMap;
        let old_at: HashMap<&str, (usize, &RuleText)> = old
            .iter()
            .enumerate()
            .map(|(i, r)| (r.name.as_str(), (i, r)))
            .collect();
        let new_names: std::collections::HashSet<&str> =
            new.iter().map(|r| r.name.as_str()).collect();
        let mut diff = PolicyDiff::default();
        let kept: Vec<&str> = old
            .iter()
            .map(|r| r.name.as_str())
            .filter(|n| new_names.contains(n))
            .collect();
        let mut kept_pos = 0;
        for r in new {
            match old_at.get(r.name.as_str()) {
                None => diff.added.push(r.clone()),
                Some((_, before)) => {
                    if before.text != r.text {
                        diff.changed.push(((*before).clone(), r.clone()));
                    } else if kept.get(kept_pos) != Some(&r.name.as_str()) {
                        diff.moved += 1;
                    }
                    kept_pos += 1;
                }
            }
        }
        diff.removed = old
            .iter()
            .filter(|r| !new_names.contains(r.name.as_str()))
            .cloned()
            .collect();
        diff
    }

    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.changed.is_empty()
            && self.moved == 0
    }
}

impl std::fmt::Display for PolicyDiff {
    /// At most 20 lines per kind; the counts are always exact.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const SHOWN: usize = 20;
        if self.is_empty() {
            return writeln!(f, "no rule changes");
        }
        writeln!(
            f,
            "{} added, {} removed, {} changed, {} moved",
            self.added.len(),
            self.removed.len(),
            self.changed.len(),
            self.moved
        )?;
        for r in self.added.iter().take(SHOWN) {
            writeln!(f, "  + {}: {}", r.name, r.text)?;
        }
        for r in self.removed.iter().take(SHOWN) {
            writeln!(f, "  - {}: {}", r.name, r.text)?;
        }
        for (a, b) in self.changed.iter().take(SHOWN) {
            writeln!(f, "  ~ {}: {}\n    -> {}", a.name, a.text, b.text)?;
        }
        let hidden = self.added.len().saturating_sub(SHOWN)
            + self.removed.len().saturating_sub(SHOWN)
            + self.changed.len().saturating_sub(SHOWN);
        if hidden > 0 {
            writeln!(f, "  ... and {hidden} more")?;
        }
        Ok(())
    }
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
/// order and trust, must stay as they are: refused otherwise, nothing changed) and
/// sharing the counters of rules that keep their name. Then one atomic pointer swap
/// ([`ProgramHandle::swap`]) installs the new program: the switch loads the program once
/// per burst, so every packet is classified and steered wholly by the old or wholly by
/// the new one. Packets already queued to VM threads continue on the new program's
/// chain for their rule index (clamped); they are not re-classified.
///
/// The old program (its JIT code and tables) is freed when the last burst that loaded it
/// drops its guard, and not before — here, at the end of this call, if no burst holds
/// it. Callers must not reload concurrently from two threads (the compatibility check
/// and the counter carry-over read the program installed when they ran).
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
