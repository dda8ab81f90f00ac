//! Checked [`Policy`] → classifier IR ([`Classifier`]).
//!
//! Lowering numbers the atoms (deduplicated), the payload literals and the regexes, and
//! simplifies constant sub-expressions (`false and x`, `not true`), so engines see only what
//! can vary per packet. It cannot fail: the checker has already rejected everything that could.

use std::collections::HashMap;

use netvm_lang::policy::{PayloadTest, Policy, Pred, PredKind};

use crate::ir::{Atom, AtomId, Classifier, Expr};

#[derive(Default)]
struct Lowering {
    atoms: Vec<Atom>,
    atom_ids: HashMap<Atom, AtomId>,
    literals: Vec<Vec<u8>>,
    literal_ids: HashMap<Vec<u8>, usize>,
    regexes: Vec<String>,
    regex_ids: HashMap<String, usize>,
}

/// Lowers a checked policy.
pub fn lower(policy: &Policy) -> Classifier {
    let mut lowering = Lowering::default();
    let rules = policy
        .rules
        .iter()
        .map(|r| lowering.expr(&r.pred))
        .collect();
    Classifier {
        atoms: lowering.atoms,
        rules,
        literals: lowering.literals,
        regexes: lowering.regexes,
    }
}

/// Lowers one predicate on its own (the REPL's `explain` of a typed predicate).
pub fn lower_pred(pred: &Pred) -> Classifier {
    let mut lowering = Lowering::default();
    let rule = lowering.expr(pred);
    Classifier {
        atoms: lowering.atoms,
        rules: vec![rule],
        literals: lowering.literals,
        regexes: lowering.regexes,
    }
}

impl Lowering {
    fn atom(&mut self, atom: Atom) -> Expr {
        if let Some(&id) = self.atom_ids.get(&atom) {
            return Expr::Atom(id);
        }
        let id = self.atoms.len();
        self.atoms.push(atom.clone());
        self.atom_ids.insert(atom, id);
        Expr::Atom(id)
    }

    /// The number of `item` in `list`, appending it the first time (hash-indexed: a policy
    /// of 10,000 literals lowers in linear time).
    fn number<T: Clone + Eq + std::hash::Hash>(
        list: &mut Vec<T>,
        ids: &mut HashMap<T, usize>,
        item: &T,
    ) -> usize {
        if let Some(&n) = ids.get(item) {
            return n;
        }
        list.push(item.clone());
        ids.insert(item.clone(), list.len() - 1);
        list.len() - 1
    }

    fn expr(&mut self, pred: &Pred) -> Expr {
        match &pred.kind {
            PredKind::True => Expr::Const(true),
            PredKind::False => Expr::Const(false),
            PredKind::Proto(p) => self.atom(Atom::Proto(*p)),
            PredKind::Field { field, mask, set } => {
                if set.is_empty() {
                    return Expr::Const(false);
                }
                self.atom(Atom::Field {
                    field: *field,
                    mask: *mask,
                    ranges: set.ranges().to_vec(),
                })
            }
            PredKind::InPort { ports } => {
                if ports.is_empty() {
                    return Expr::Const(false);
                }
                self.atom(Atom::InPort {
                    ranges: ports.ranges().to_vec(),
                })
            }
            PredKind::PayloadByte { index, mask, set } => {
                if set.is_empty() {
                    return Expr::Const(false);
                }
                self.atom(Atom::PayloadByte {
                    index: *index,
                    mask: *mask,
                    ranges: set.ranges().to_vec(),
                })
            }
            PredKind::Payload(PayloadTest::Contains(lit)) => {
                let n = Self::number(&mut self.literals, &mut self.literal_ids, lit);
                self.atom(Atom::Contains(n))
            }
            PredKind::Payload(PayloadTest::StartsWith(lit)) => {
                self.atom(Atom::StartsWith(lit.clone()))
            }
            PredKind::Payload(PayloadTest::Matches { pattern, .. }) => {
                let n = Self::number(&mut self.regexes, &mut self.regex_ids, pattern);
                self.atom(Atom::Matches(n))
            }
            PredKind::Not(inner) => match self.expr(inner) {
                Expr::Const(b) => Expr::Const(!b),
                Expr::Not(e) => *e,
                e => Expr::Not(Box::new(e)),
            },
            PredKind::And(items) => {
                let mut out = Vec::new();
                for item in items {
                    match self.expr(item) {
                        Expr::Const(true) => {}
                        Expr::Const(false) => return Expr::Const(false),
                        Expr::And(inner) => out.extend(inner),
                        e => out.push(e),
                    }
                }
                match out.len() {
                    0 => Expr::Const(true),
                    1 => out.pop().unwrap_or(Expr::Const(true)),
                    _ => Expr::And(out),
                }
            }
            PredKind::Or(items) => {
                let mut out = Vec::new();
                for item in items {
                    match self.expr(item) {
                        Expr::Const(false) => {}
                        Expr::Const(true) => return Expr::Const(true),
                        Expr::Or(inner) => out.extend(inner),
                        e => out.push(e),
                    }
                }
                match out.len() {
                    0 => Expr::Const(false),
                    1 => out.pop().unwrap_or(Expr::Const(false)),
                    _ => Expr::Or(out),
                }
            }
        }
    }
}
