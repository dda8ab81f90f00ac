//! The classifier IR: what every engine (the reference interpreter, the Cranelift JIT)
//! executes.
//!
//! A policy becomes a list of rules, each an expression over numbered [`Atom`]s. Atoms are the
//! leaf tests, deduplicated across the whole policy (the same `tcp` or `ip.src in BOGONS`
//! written in twenty rules is one atom), so an engine can evaluate each at most once per
//! packet. Payload literals and regexes are numbered too, so that one multi-pattern automaton
//! can answer all of them in a single pass.

use netvm_packet::{Field, Proto};

pub type AtomId = usize;

/// The input port is not known (test packets without `in_port`): `in_port` tests are false.
pub const NO_PORT: u32 = u32::MAX;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Atom {
    /// The protocol header is present.
    Proto(Proto),
    /// The field is present and `value & mask` lies in one of `ranges` (sorted, disjoint).
    Field {
        field: Field,
        mask: Option<u128>,
        ranges: Vec<(u128, u128)>,
    },
    /// The input port is known and lies in one of `ranges`.
    InPort { ranges: Vec<(u128, u128)> },
    /// The payload has more than `index` bytes and `byte & mask` lies in `ranges`.
    PayloadByte {
        index: u16,
        mask: Option<u8>,
        ranges: Vec<(u128, u128)>,
    },
    /// The payload is present and contains literal number `n` (see [`Classifier::literals`]).
    Contains(usize),
    /// The payload is present and starts with these bytes.
    StartsWith(Vec<u8>),
    /// The payload is present and regex number `n` matches somewhere in it.
    Matches(usize),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Expr {
    Const(bool),
    Atom(AtomId),
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Not(Box<Expr>),
}

impl Expr {
    /// Calls `f` on every atom the expression mentions.
    pub fn for_each_atom(&self, f: &mut impl FnMut(AtomId)) {
        match self {
            Expr::Const(_) => {}
            Expr::Atom(a) => f(*a),
            Expr::And(v) | Expr::Or(v) => v.iter().for_each(|e| e.for_each_atom(f)),
            Expr::Not(e) => e.for_each_atom(f),
        }
    }
}

/// A whole policy's classifier: first matching rule wins, none matching is the default.
#[derive(Debug, Clone, PartialEq)]
pub struct Classifier {
    pub atoms: Vec<Atom>,
    /// One expression per rule, in priority order.
    pub rules: Vec<Expr>,
    /// `contains` literals, numbered as in [`Atom::Contains`].
    pub literals: Vec<Vec<u8>>,
    /// Regex patterns (regex-syntax text, bytes, Unicode off), numbered as in
    /// [`Atom::Matches`].
    pub regexes: Vec<String>,
}

impl Classifier {
    /// The header fields any rule reads (what an engine must extract).
    pub fn used_fields(&self) -> Vec<Field> {
        let mut fields: Vec<Field> = self
            .atoms
            .iter()
            .filter_map(|a| match a {
                Atom::Field { field, .. } => Some(*field),
                _ => None,
            })
            .collect();
        fields.sort_unstable();
        fields.dedup();
        fields
    }
}
