//! The reference interpreter: the spec's semantics, executed as plainly as possible.
//!
//! It decodes the frame with [`Decoded`] (which applies the absent-header rules), then tries
//! the rules in order, evaluating atoms straight from their definition. It is the oracle the
//! JIT is tested against, so it favours obviousness over speed: payload literals are found
//! with a plain substring search, regexes with `regex-automata`'s meta engine. Any input,
//! including an empty or truncated frame, is classified without panicking.

use netvm_packet::Decoded;
use regex_automata::meta::Regex;
use regex_automata::util::syntax;

use crate::ir::{Atom, Classifier, Expr, NO_PORT};

/// A regex that cannot be built (only size limits can fail: the checker validated the syntax).
#[derive(Debug, thiserror::Error)]
#[error("regex `{pattern}` cannot be compiled: {message}")]
pub struct RegexError {
    pub pattern: String,
    pub message: String,
}

/// Builds a payload regex the way every engine must: bytes, Unicode off, unanchored search.
pub fn build_regex(pattern: &str) -> Result<Regex, RegexError> {
    Regex::builder()
        .syntax(syntax::Config::new().unicode(false).utf8(false))
        .build(pattern)
        .map_err(|e| RegexError {
            pattern: pattern.to_string(),
            message: e.to_string(),
        })
}

pub struct Interpreter {
    ir: Classifier,
    regexes: Vec<Regex>,
}

impl Interpreter {
    pub fn new(ir: Classifier) -> Result<Interpreter, RegexError> {
        let regexes = ir
            .regexes
            .iter()
            .map(|p| build_regex(p))
            .collect::<Result<_, _>>()?;
        Ok(Interpreter { ir, regexes })
    }

    pub fn ir(&self) -> &Classifier {
        &self.ir
    }

    /// The index of the first matching rule, or `None` for the default. `in_port` is a port
    /// index, or [`NO_PORT`].
    pub fn classify(&self, frame: &[u8], in_port: u32) -> Option<usize> {
        let decoded = Decoded::new(frame);
        self.ir
            .rules
            .iter()
            .position(|rule| self.eval(rule, &decoded, in_port))
    }

    /// Whether one rule's expression holds.
    pub fn rule_holds(&self, rule: usize, frame: &[u8], in_port: u32) -> bool {
        let decoded = Decoded::new(frame);
        self.eval(&self.ir.rules[rule], &decoded, in_port)
    }

    fn eval(&self, expr: &Expr, decoded: &Decoded, in_port: u32) -> bool {
        match expr {
            Expr::Const(b) => *b,
            Expr::Atom(a) => self.atom_holds(&self.ir.atoms[*a], decoded, in_port),
            Expr::And(items) => items.iter().all(|e| self.eval(e, decoded, in_port)),
            Expr::Or(items) => items.iter().any(|e| self.eval(e, decoded, in_port)),
            Expr::Not(e) => !self.eval(e, decoded, in_port),
        }
    }

    /// One atom, from its definition.
    pub fn atom_holds(&self, atom: &Atom, decoded: &Decoded, in_port: u32) -> bool {
        let in_ranges =
            |v: u128, ranges: &[(u128, u128)]| ranges.iter().any(|&(lo, hi)| lo <= v && v <= hi);
        match atom {
            Atom::Proto(p) => decoded.has(*p),
            Atom::Field {
                field,
                mask,
                ranges,
            } => decoded
                .field(*field)
                .is_some_and(|v| in_ranges(v & mask.unwrap_or(u128::MAX), ranges)),
            Atom::InPort { ranges } => in_port != NO_PORT && in_ranges(u128::from(in_port), ranges),
            Atom::PayloadByte {
                index,
                mask,
                ranges,
            } => decoded
                .payload()
                .and_then(|p| p.get(usize::from(*index)))
                .is_some_and(|&b| in_ranges(u128::from(b & mask.unwrap_or(0xff)), ranges)),
            Atom::Contains(n) => decoded.payload().is_some_and(|p| {
                let lit = &self.ir.literals[*n];
                lit.is_empty() || p.windows(lit.len()).any(|w| w == lit.as_slice())
            }),
            Atom::StartsWith(lit) => decoded.payload().is_some_and(|p| p.starts_with(lit)),
            Atom::Matches(n) => decoded
                .payload()
                .is_some_and(|p| self.regexes[*n].is_match(p)),
        }
    }
}
