//! `netvm explain`: why a packet went where it went.
//!
//! Walks the policy's predicate trees (which keep their source spans) rule by rule, in order,
//! and records for every sub-predicate whether it held, up to and including the first rule
//! that matched. Leaves are evaluated by lowering them on their own and asking the reference
//! interpreter, so explain and classification cannot disagree.

use netvm_lang::policy::{Policy, Pred, PredKind};
use netvm_lang::Span;
use netvm_packet::Decoded;

use crate::interp::{Interpreter, RegexError};
use crate::lower::lower_pred;

/// One sub-predicate and whether it held.
#[derive(Debug, Clone)]
pub struct NodeTrace {
    pub span: Span,
    /// Nesting depth below the rule's predicate (0 = the whole predicate).
    pub depth: usize,
    pub held: bool,
}

#[derive(Debug, Clone)]
pub struct RuleTrace {
    pub rule: usize,
    pub matched: bool,
    pub nodes: Vec<NodeTrace>,
}

#[derive(Debug, Clone)]
pub struct Explanation {
    /// The decoded headers, one line each (`("tcp", "49152 -> 22 flags [S]")`).
    pub headers: Vec<(&'static str, String)>,
    pub rules: Vec<RuleTrace>,
    pub matched: Option<usize>,
    /// The resolved actions, as the language writes them.
    pub actions: String,
}

/// Explains how `policy` classifies `frame` arriving on `in_port`.
pub fn explain(policy: &Policy, frame: &[u8], in_port: u32) -> Result<Explanation, RegexError> {
    let decoded = Decoded::new(frame);
    let mut rules = Vec::new();
    let mut matched = None;
    for (i, rule) in policy.rules.iter().enumerate() {
        let mut nodes = Vec::new();
        let held = trace(&rule.pred, 0, frame, in_port, &mut nodes)?;
        rules.push(RuleTrace {
            rule: i,
            matched: held,
            nodes,
        });
        if held {
            matched = Some(i);
            break;
        }
    }
    Ok(Explanation {
        headers: decoded.describe(),
        rules,
        matched,
        actions: policy.describe_actions(policy.actions_of(matched)),
    })
}

fn trace(
    pred: &Pred,
    depth: usize,
    frame: &[u8],
    in_port: u32,
    out: &mut Vec<NodeTrace>,
) -> Result<bool, RegexError> {
    let slot = out.len();
    out.push(NodeTrace {
        span: pred.span,
        depth,
        held: false,
    });
    let held = match &pred.kind {
        PredKind::And(items) => {
            let mut all = true;
            for item in items {
                all &= trace(item, depth + 1, frame, in_port, out)?;
            }
            all
        }
        PredKind::Or(items) => {
            let mut any = false;
            for item in items {
                any |= trace(item, depth + 1, frame, in_port, out)?;
            }
            any
        }
        PredKind::Not(inner) => !trace(inner, depth + 1, frame, in_port, out)?,
        _ => {
            let engine = Interpreter::new(lower_pred(pred))?;
            engine.classify(frame, in_port) == Some(0)
        }
    };
    out[slot].held = held;
    Ok(held)
}
