//! The binary's bridge from the language to the runtime: a checked `netvm_lang::Policy`
//! becomes a `netvm_runtime::PolicyTable`, and a compiled classifier (the Cranelift JIT,
//! or the interpreter where the JIT refuses a policy) becomes a
//! `netvm_runtime::Classifier`. The runtime depends on neither crate; this file is the
//! only place that knows both sides.

use netvm_compiler::{Interpreter, Jit};
use netvm_lang::policy::{self as lang, Policy};
use netvm_runtime::policy::{BalanceKey, Fate, Hop};
use netvm_runtime::{Classifier, PolicyTable, RuleAction};

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
