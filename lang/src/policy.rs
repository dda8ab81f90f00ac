//! The checked policy: every name resolved, every value typed, every `let` inlined.
//!
//! This is what the checker hands to the compiler. Predicates are trees of typed atoms
//! (`field ∈ IntervalSet`, protocol present, payload test) that still carry the source span of
//! what the operator wrote, so `netvm explain` can show which sub-predicate held. Ports, VMs,
//! groups and counters are referred to by index into the policy's tables.

use netvm_packet::{BaseProto, Field, Proto};

use crate::interval::IntervalSet;
use crate::source::Span;

pub type PortId = usize;
pub type VmId = usize;
pub type GroupId = usize;
pub type CounterId = usize;

#[derive(Debug, Clone, PartialEq)]
pub struct Port {
    pub name: String,
    /// `port lan = afpacket("veth0")`: driver and its argument string.
    pub binding: Option<(String, String)>,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Vm {
    pub name: String,
    pub trusted: bool,
    /// What the switch does with packets for this VM while it is down
    /// (`vm NAME on_failure drop|bypass`; `Drop` when the declaration does not say).
    pub on_failure: OnFailure,
    pub span: Span,
}

/// A VM's failure policy: what happens to a packet whose path reaches the VM while its
/// process is down. The meaning for chains, `to`, `mirror` and `balance` is set out in
/// docs/language-notes.md ("VM failure"); the switch carries it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum OnFailure {
    /// Drop the packet, counted as lost to a down VM (the default).
    #[default]
    Drop,
    /// Skip the VM's hop and go on as if it had answered "next hop".
    Bypass,
}

impl OnFailure {
    pub const ALL: [OnFailure; 2] = [OnFailure::Drop, OnFailure::Bypass];

    /// The word written after `on_failure`.
    pub fn as_str(self) -> &'static str {
        match self {
            OnFailure::Drop => "drop",
            OnFailure::Bypass => "bypass",
        }
    }

    /// The policy a word after `on_failure` names, if any.
    pub fn from_word(word: &str) -> Option<OnFailure> {
        OnFailure::ALL.into_iter().find(|p| p.as_str() == word)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub name: String,
    pub members: Vec<VmId>,
    pub span: Span,
}

/// A predicate node with the span of the text it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Pred {
    pub kind: PredKind,
    pub span: Span,
}

impl Pred {
    /// Levels of the tree: 1 for a leaf, one more for each `and`/`or`/`not` above it.
    /// Walked with a stack of its own, so any depth can be measured.
    pub fn depth(&self) -> usize {
        let mut deepest = 0;
        let mut todo = vec![(self, 1usize)];
        while let Some((pred, level)) = todo.pop() {
            deepest = deepest.max(level);
            match &pred.kind {
                PredKind::And(items) | PredKind::Or(items) => {
                    todo.extend(items.iter().map(|p| (p, level + 1)));
                }
                PredKind::Not(inner) => todo.push((inner, level + 1)),
                _ => {}
            }
        }
        deepest
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum PredKind {
    True,
    False,
    /// The protocol header is present.
    Proto(Proto),
    /// The field is present and `(value & mask)` lies in `set`. A bool field tested bare is
    /// `set = {1}`.
    Field {
        field: Field,
        mask: Option<u128>,
        set: IntervalSet,
    },
    /// The input port is known and its index lies in `ports`.
    InPort {
        ports: IntervalSet,
    },
    /// `payload[index]` is present (index < payload.len) and `(byte & mask)` lies in `set`.
    PayloadByte {
        index: u16,
        mask: Option<u8>,
        set: IntervalSet,
    },
    /// A payload test; false when the payload is absent.
    Payload(PayloadTest),
    And(Vec<Pred>),
    Or(Vec<Pred>),
    Not(Box<Pred>),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PayloadTest {
    Contains(Vec<u8>),
    StartsWith(Vec<u8>),
    /// An unanchored search; `pattern` is regex-syntax text, flags already folded in as
    /// `(?i)`/`(?s)`, Unicode off, matching bytes.
    Matches {
        pattern: String,
        source: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BalanceKey {
    /// Symmetric 5-tuple hash: both directions of a connection pick the same VM.
    Flow,
    Fields(Vec<Field>),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Balance {
    pub group: GroupId,
    pub key: BalanceKey,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Hop {
    Vm(VmId),
    Balance(Balance),
    Out(PortId),
    Drop,
}

/// What finally happens to a packet.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Fate {
    Drop,
    Out(PortId),
    To(VmId),
    /// Hops in order; the last may be `Out` or `Drop`. Running out of hops drops.
    Chain(Vec<Hop>),
    Balance(Balance),
}

/// The resolved actions of a rule (or of the default).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Actions {
    pub fate: Fate,
    pub mirrors: Vec<VmId>,
    pub counts: Vec<CounterId>,
    /// False when the rule wrote no fate action (it then drops, with warning W004).
    pub explicit_fate: bool,
}

impl Actions {
    pub fn drop() -> Actions {
        Actions {
            fate: Fate::Drop,
            mirrors: Vec::new(),
            counts: Vec::new(),
            explicit_fate: true,
        }
    }

    /// Order-insensitive comparison (tests compare actions as a set).
    pub fn same_as(&self, other: &Actions) -> bool {
        let sorted = |v: &[usize]| {
            let mut v = v.to_vec();
            v.sort_unstable();
            v.dedup();
            v
        };
        self.fate == other.fate
            && sorted(&self.mirrors) == sorted(&other.mirrors)
            && sorted(&self.counts) == sorted(&other.counts)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: String,
    pub pred: Pred,
    pub actions: Actions,
    pub span: Span,
}

/// The expected outcome of a test case.
#[derive(Debug, Clone, PartialEq)]
pub enum Expectation {
    /// Index into `Policy::rules`; `None` is the default.
    Rule(Option<usize>),
    Actions(Actions),
}

/// One test case: a packet to build and what must happen to it.
#[derive(Debug, Clone, PartialEq)]
pub struct TestCase {
    pub base: BaseProto,
    pub fields: Vec<(Field, u128)>,
    pub payload: Option<Vec<u8>>,
    pub payload_bytes: Vec<(u16, u8)>,
    pub in_port: Option<PortId>,
    pub expect: Expectation,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Test {
    pub title: String,
    pub cases: Vec<TestCase>,
    pub span: Span,
}

/// A checked policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub ports: Vec<Port>,
    pub vms: Vec<Vm>,
    pub groups: Vec<Group>,
    pub counters: Vec<String>,
    pub rules: Vec<Rule>,
    pub default: Actions,
    pub default_span: Option<Span>,
    pub tests: Vec<Test>,
}

impl Policy {
    pub fn port_index(&self, name: &str) -> Option<PortId> {
        self.ports.iter().position(|p| p.name == name)
    }

    pub fn rule_index(&self, name: &str) -> Option<usize> {
        self.rules.iter().position(|r| r.name == name)
    }

    /// The actions of rule `index`, or the default's for `None`.
    pub fn actions_of(&self, index: Option<usize>) -> &Actions {
        index.map_or(&self.default, |i| &self.rules[i].actions)
    }

    /// How actions are written in the language (`mirror ids, chain fw -> out lan`).
    pub fn describe_actions(&self, actions: &Actions) -> String {
        let mut parts = Vec::new();
        for &m in &actions.mirrors {
            parts.push(format!("mirror {}", self.vms[m].name));
        }
        for &c in &actions.counts {
            parts.push(format!("count {}", self.counters[c]));
        }
        let balance = |b: &Balance| {
            let key = match &b.key {
                BalanceKey::Flow => String::new(),
                BalanceKey::Fields(f) if f.len() == 1 => format!(" by {}", f[0].name()),
                BalanceKey::Fields(f) => format!(
                    " by ({})",
                    f.iter().map(|f| f.name()).collect::<Vec<_>>().join(", ")
                ),
            };
            format!("balance {}{key}", self.groups[b.group].name)
        };
        let fate = match &actions.fate {
            Fate::Drop => "drop".to_string(),
            Fate::Out(p) => format!("out {}", self.ports[*p].name),
            Fate::To(v) => format!("to {}", self.vms[*v].name),
            Fate::Balance(b) => balance(b),
            Fate::Chain(hops) => {
                let hops: Vec<String> = hops
                    .iter()
                    .map(|h| match h {
                        Hop::Vm(v) => self.vms[*v].name.clone(),
                        Hop::Balance(b) => balance(b),
                        Hop::Out(p) => format!("out {}", self.ports[*p].name),
                        Hop::Drop => "drop".into(),
                    })
                    .collect();
                format!("chain {}", hops.join(" -> "))
            }
        };
        parts.push(fate);
        parts.join(", ")
    }
}
