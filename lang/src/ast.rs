//! The syntax tree of one `.nvr` file, exactly as written, with a [`Span`] on every node.
//!
//! Nothing here is resolved or typed: names are text, literals are parsed into numbers but not
//! checked against a field's type. The checker (`check`) turns a set of these files into a
//! [`crate::policy::Policy`]; the printer (`print`) turns one back into canonical text.
//! Spans are ignored by equality so that print → parse round trips compare trees.

use crate::source::Span;

/// A span that every `PartialEq` treats as equal, so trees compare by content.
#[derive(Debug, Clone, Copy, Default)]
pub struct Loc(pub Span);

impl PartialEq for Loc {
    fn eq(&self, _: &Loc) -> bool {
        true
    }
}

/// An identifier as written.
#[derive(Debug, Clone, PartialEq)]
pub struct Name {
    pub text: String,
    pub loc: Loc,
}

impl Name {
    pub fn span(&self) -> Span {
        self.loc.0
    }
}

/// A dotted path: a field (`tcp.dport`), a protocol test (`tcp`), or a name (`web_traffic`).
#[derive(Debug, Clone, PartialEq)]
pub struct Path {
    pub text: String,
    pub loc: Loc,
}

impl Path {
    pub fn span(&self) -> Span {
        self.loc.0
    }
}

/// An address literal as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addr {
    V4(u32),
    V6(u128),
    Mac(u64),
}

/// How an integer literal was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Radix {
    Decimal,
    Hex,
    Binary,
}

/// A literal or a name in value position.
#[derive(Debug, Clone, PartialEq)]
pub enum ScalarKind {
    /// An integer and the base it was written in (10, 16 or 2), kept for `netvm fmt`.
    Int(u128, Radix),
    Addr {
        addr: Addr,
        prefix_len: Option<u8>,
    },
    Str(Vec<u8>),
    Regex {
        pattern: String,
        flags: String,
    },
    Name(String),
    /// A literal that did not decode (already reported); it resolves to nothing.
    Invalid,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Scalar {
    pub kind: ScalarKind,
    pub loc: Loc,
}

impl Scalar {
    pub fn span(&self) -> Span {
        self.loc.0
    }
}

/// One member of a set: a scalar or an inclusive range.
#[derive(Debug, Clone, PartialEq)]
pub enum Member {
    Scalar(Scalar),
    Range(Scalar, Scalar),
}

#[derive(Debug, Clone, PartialEq)]
pub enum ValueKind {
    Scalar(Scalar),
    Range(Scalar, Scalar),
    Set(Vec<Member>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Value {
    pub kind: ValueKind,
    pub loc: Loc,
}

impl Value {
    pub fn span(&self) -> Span {
        self.loc.0
    }
}

/// What a comparison reads: a path (`tcp.dport`, `in_port`, `payload.len`) or a payload byte.
#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    Path(Path),
    PayloadByte { index: u128, loc: Loc },
}

impl Operand {
    pub fn span(&self) -> Span {
        match self {
            Operand::Path(p) => p.span(),
            Operand::PayloadByte { loc, .. } => loc.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    pub fn as_str(self) -> &'static str {
        match self {
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadOp {
    Contains,
    StartsWith,
    Matches,
}

impl PayloadOp {
    pub fn as_str(self) -> &'static str {
        match self {
            PayloadOp::Contains => "contains",
            PayloadOp::StartsWith => "starts_with",
            PayloadOp::Matches => "matches",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum PredKind {
    Or(Vec<Pred>),
    And(Vec<Pred>),
    Not(Box<Pred>),
    /// A bare path: a protocol test, a bool field, or a `let` name.
    Test(Path),
    Compare {
        operand: Operand,
        mask: Option<Scalar>,
        op: CmpOp,
        value: Value,
    },
    Member {
        operand: Operand,
        negated: bool,
        value: Value,
    },
    Payload {
        op: PayloadOp,
        arg: Scalar,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Pred {
    pub kind: PredKind,
    pub loc: Loc,
}

impl Pred {
    pub fn span(&self) -> Span {
        self.loc.0
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum BalanceKey {
    Flow,
    Field(Path),
    Fields(Vec<Path>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Balance {
    pub group: Name,
    pub key: Option<BalanceKey>,
    pub loc: Loc,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Hop {
    Vm(Name),
    Balance(Balance),
    Out(Name),
    Drop(Loc),
}

impl Hop {
    pub fn span(&self) -> Span {
        match self {
            Hop::Vm(n) | Hop::Out(n) => n.span(),
            Hop::Balance(b) => b.loc.0,
            Hop::Drop(l) => l.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum ActionKind {
    Drop,
    Out(Name),
    To(Name),
    Chain(Vec<Hop>),
    Balance(Balance),
    Mirror(Name),
    Count(Name),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Action {
    pub kind: ActionKind,
    pub loc: Loc,
}

impl Action {
    pub fn span(&self) -> Span {
        self.loc.0
    }

    /// Whether this action decides the packet's fate (at most one per rule).
    pub fn is_fate(&self) -> bool {
        matches!(
            self.kind,
            ActionKind::Drop
                | ActionKind::Out(_)
                | ActionKind::To(_)
                | ActionKind::Chain(_)
                | ActionKind::Balance(_)
        )
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum ImportTarget {
    Std(Name),
    File { path: String, loc: Loc },
}

#[derive(Debug, Clone, PartialEq)]
pub struct PortBinding {
    pub driver: Name,
    pub args: Option<String>,
}

/// `on_failure WORD` on a vm declaration, as written (`WORD` is not yet known to be `drop`
/// or `bypass`).
#[derive(Debug, Clone, PartialEq)]
pub struct OnFailureClause {
    pub word: Name,
    /// From `on_failure` to the end of the word.
    pub loc: Loc,
}

impl OnFailureClause {
    pub fn span(&self) -> Span {
        self.loc.0
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Assign {
    pub target: Operand,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Expect {
    /// `=> rule NAME`; `None` for `rule default`.
    Rule(Option<Name>),
    Actions(Vec<Action>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    pub proto: Name,
    pub assigns: Vec<Assign>,
    pub expect: Expect,
    pub loc: Loc,
}

#[derive(Debug, Clone, PartialEq)]
pub enum DeclKind {
    Import(ImportTarget),
    Const {
        name: Name,
        value: Value,
    },
    Let {
        name: Name,
        pred: Pred,
    },
    Port {
        name: Name,
        binding: Option<PortBinding>,
    },
    Vm {
        names: Vec<Name>,
        trusted: Option<bool>,
        /// Every `on_failure WORD` clause, in source order; the checker accepts at most one,
        /// with a known word, and resolves it to [`crate::policy::OnFailure`].
        on_failure: Vec<OnFailureClause>,
    },
    Group {
        name: Name,
        members: Vec<Name>,
    },
    Rule {
        name: Name,
        before: Option<Name>,
        pred: Pred,
        actions: Vec<Action>,
    },
    Default {
        actions: Vec<Action>,
    },
    Test {
        title: String,
        cases: Vec<Case>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decl {
    pub kind: DeclKind,
    pub loc: Loc,
}

impl Decl {
    pub fn span(&self) -> Span {
        self.loc.0
    }
}

/// One parsed file: its declarations in source order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct File {
    pub decls: Vec<Decl>,
}
