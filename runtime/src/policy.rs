//! The runtime's view of a policy: what to do with a packet once the classifier has
//! named its rule, and the handle through which the switch reads it.
//!
//! [`PolicyTable`] is plain data built by the `netvm` binary from a checked
//! `netvm_lang::Policy` (this crate does not depend on the language, so data flows one
//! way: lang → compiler → binary → runtime). Ports, VMs, groups and counters are indices
//! into the tables the binary lays out in the same order as the policy declares them.
//!
//! [`Program`] pairs a table with the [`Classifier`] compiled from the same policy;
//! [`ProgramHandle`] holds it behind an [`arc_swap::ArcSwap`] so a hot reload can replace
//! both at once while switch threads keep forwarding: the data path takes one lock-free
//! `load` per burst and never waits. Validation ([`PolicyTable::validate`]) happens once,
//! before a table is installed, so the data path can index without re-checking.

use std::sync::Arc;

use arc_swap::ArcSwap;
use netvm_packet::Field;

use crate::classify::Classifier;
pub use crate::external::OnFailure;
use crate::stats::{Counter, RuleCounters};

/// How `balance` picks a group member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BalanceKey {
    /// Symmetric 5-tuple Toeplitz hash (`netvm_packet::hash::flow_hash`).
    Flow,
    /// Hash of these fields' values (`netvm_packet::hash::fields_hash`).
    Fields(Vec<Field>),
}

/// One step of a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hop {
    Vm(usize),
    Balance { group: usize, key: BalanceKey },
    Out(usize),
    Drop,
}

/// Where a packet ends up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    Drop,
    Out(usize),
    To(usize),
    /// Hops in order; running out of hops drops (reason `chain_end`).
    Chain(Vec<Hop>),
    Balance {
        group: usize,
        key: BalanceKey,
    },
}

impl Fate {
    /// The fate as a chain of hops, the one form the switch executes.
    pub fn hops(&self) -> Vec<Hop> {
        match self {
            Fate::Drop => vec![Hop::Drop],
            Fate::Out(p) => vec![Hop::Out(*p)],
            Fate::To(v) => vec![Hop::Vm(*v)],
            Fate::Chain(hops) => hops.clone(),
            Fate::Balance { group, key } => vec![Hop::Balance {
                group: *group,
                key: key.clone(),
            }],
        }
    }
}

/// What a rule (or the default) does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleAction {
    pub name: String,
    pub fate: Fate,
    /// VMs that get a second reference to the packet (their verdict is ignored).
    pub mirrors: Vec<usize>,
    /// Named counters to bump.
    pub counters: Vec<usize>,
}

/// Every rule's action, in rule order, plus the default (classifier result `n_rules`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyTable {
    pub rules: Vec<RuleAction>,
    pub default: RuleAction,
    pub port_names: Vec<String>,
    /// The binding each port's declaration names, as written (`port lan =
    /// afpacket("veth0")`: `afpacket("veth0")`), in `port_names` order (missing entries:
    /// none declared). Ports are opened once, so a reload may not change it.
    pub port_bindings: Vec<Option<String>>,
    pub vm_names: Vec<String>,
    /// `trusted` per VM, in `vm_names` order.
    pub vm_trusted: Vec<bool>,
    /// What happens to packets for a VM whose process is down, in `vm_names` order
    /// (missing entries: [`OnFailure::Drop`]). A reload may change it.
    pub vm_on_failure: Vec<OnFailure>,
    /// Members of each group (VM indices).
    pub groups: Vec<Vec<usize>>,
    pub counter_names: Vec<String>,
}

/// A table that refers to something that does not exist.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyTableError {
    #[error("rule `{rule}` refers to {what} {index}, but the policy has {count}")]
    Dangling {
        rule: String,
        what: &'static str,
        index: usize,
        count: usize,
    },
    #[error("group {0} has no members")]
    EmptyGroup(usize),
    #[error("vm_trusted has {found} entries for {expected} VMs")]
    TrustedLen { expected: usize, found: usize },
    #[error("the classifier reports {classifier} rules, the table has {table}")]
    RuleCount { classifier: usize, table: usize },
    #[error(
        "a reload cannot change the {what} (running: {running:?}; new: {new:?}); restart the switch for that"
    )]
    Bindings {
        what: &'static str,
        running: Vec<String>,
        new: Vec<String>,
    },
    #[error(
        "a reload cannot change the binding of port `{port}` (running: {running}; new: {new}); restart the switch for that"
    )]
    PortBinding {
        port: String,
        running: String,
        new: String,
    },
}

impl PolicyTable {
    /// The action for classifier result `rule` (`n_rules` or anything larger: default).
    #[inline]
    pub fn action(&self, rule: u32) -> &RuleAction {
        self.rules.get(rule as usize).unwrap_or(&self.default)
    }

    /// Check every index once, so the switch can trust them.
    pub fn validate(&self) -> Result<(), PolicyTableError> {
        if self.vm_trusted.len() != self.vm_names.len() {
            return Err(PolicyTableError::TrustedLen {
                expected: self.vm_names.len(),
                found: self.vm_trusted.len(),
            });
        }
        for (g, members) in self.groups.iter().enumerate() {
            if members.is_empty() {
                return Err(PolicyTableError::EmptyGroup(g));
            }
            for &m in members {
                self.check(&format!("group {g}"), "vm", m, self.vm_names.len())?;
            }
        }
        for action in self.rules.iter().chain(std::iter::once(&self.default)) {
            let rule = &action.name;
            for hop in action.fate.hops() {
                match hop {
                    Hop::Vm(v) => self.check(rule, "vm", v, self.vm_names.len())?,
                    Hop::Out(p) => self.check(rule, "port", p, self.port_names.len())?,
                    Hop::Balance { group, .. } => {
                        self.check(rule, "group", group, self.groups.len())?
                    }
                    Hop::Drop => {}
                }
            }
            for &m in &action.mirrors {
                self.check(rule, "vm", m, self.vm_names.len())?;
            }
            for &c in &action.counters {
                self.check(rule, "counter", c, self.counter_names.len())?;
            }
        }
        Ok(())
    }

    /// Whether a reload may replace this (running) table by `new`: the switch's ports,
    /// rings, private pools and threads are built from the port and VM tables, so those
    /// (names, order, ports' declared bindings and VMs' trust) must stay as they are.
    pub fn check_compatible(&self, new: &PolicyTable) -> Result<(), PolicyTableError> {
        let (o, n) = (self, new);
        if o.port_names != n.port_names {
            return Err(PolicyTableError::Bindings {
                what: "ports",
                running: o.port_names.clone(),
                new: n.port_names.clone(),
            });
        }
        let binding = |t: &PolicyTable, port: usize| t.port_bindings.get(port).cloned().flatten();
        for (port, name) in n.port_names.iter().enumerate() {
            let (running, new) = (binding(o, port), binding(n, port));
            if running != new {
                let show = |b: Option<String>| b.unwrap_or_else(|| "none declared".into());
                return Err(PolicyTableError::PortBinding {
                    port: name.clone(),
                    running: show(running),
                    new: show(new),
                });
            }
        }
        if o.vm_names != n.vm_names || o.vm_trusted != n.vm_trusted {
            let show = |t: &PolicyTable| {
                t.vm_names
                    .iter()
                    .zip(&t.vm_trusted)
                    .map(|(name, &trusted)| {
                        if trusted {
                            format!("{name} trusted")
                        } else {
                            name.clone()
                        }
                    })
                    .collect()
            };
            return Err(PolicyTableError::Bindings {
                what: "VMs",
                running: show(o),
                new: show(n),
            });
        }
        Ok(())
    }

    fn check(
        &self,
        rule: &str,
        what: &'static str,
        index: usize,
        count: usize,
    ) -> Result<(), PolicyTableError> {
        if index < count {
            Ok(())
        } else {
            Err(PolicyTableError::Dangling {
                rule: rule.to_string(),
                what,
                index,
                count,
            })
        }
    }
}

/// A classifier and the table of the policy it was compiled from.
pub struct Program {
    pub classifier: Box<dyn Classifier>,
    pub table: PolicyTable,
    /// Each rule's fate as hops, then the default's: what the switch walks.
    chains: Vec<Vec<Hop>>,
    /// Per rule then the default: the port, when all the rule does is `out PORT` (no
    /// mirror, no named counter, no VM), so the switch can batch it without a chain walk.
    direct_out: Vec<Option<u32>>,
    /// Per rule then the default: all the rule does is `drop` (no mirror, no named
    /// counter), so a frame a device lent the switch is given straight back.
    plain_drop: Vec<bool>,
    /// Per switch thread (shard): each rule's counters, then the default's. Shared
    /// (`Arc`) so a reload can hand a rule that keeps its name the very same counters:
    /// increments from bursts still on the old program land in them too. One shard per
    /// switch thread, so every counter has one writer.
    rule_counters: Vec<Vec<Arc<RuleCounters>>>,
    /// Per shard: the policy's named counters, in `table.counter_names` order.
    named_counters: Vec<Vec<Arc<Counter>>>,
}

impl std::fmt::Debug for Program {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Program")
            .field("n_rules", &self.classifier.n_rules())
            .field("table", &self.table)
            .finish()
    }
}

impl Program {
    /// Pair them, checking that they describe the same rules.
    pub fn new(
        classifier: Box<dyn Classifier>,
        table: PolicyTable,
    ) -> Result<Program, PolicyTableError> {
        table.validate()?;
        if classifier.n_rules() != table.rules.len() {
            return Err(PolicyTableError::RuleCount {
                classifier: classifier.n_rules(),
                table: table.rules.len(),
            });
        }
        let chains = table
            .rules
            .iter()
            .chain(std::iter::once(&table.default))
            .map(|a| a.fate.hops())
            .collect();
        let direct_out = table
            .rules
            .iter()
            .chain(std::iter::once(&table.default))
            .zip(&chains)
            .map(
                |(action, hops): (&RuleAction, &Vec<Hop>)| match hops.as_slice() {
                    [Hop::Out(port)] if action.mirrors.is_empty() && action.counters.is_empty() => {
                        u32::try_from(*port).ok()
                    }
                    _ => None,
                },
            )
            .collect();
        let plain_drop = table
            .rules
            .iter()
            .chain(std::iter::once(&table.default))
            .zip(&chains)
            .map(|(action, hops): (&RuleAction, &Vec<Hop>)| {
                matches!(hops.as_slice(), [Hop::Drop])
                    && action.mirrors.is_empty()
                    && action.counters.is_empty()
            })
            .collect();
        let mut program = Program {
            classifier,
            table,
            chains,
            direct_out,
            plain_drop,
            rule_counters: Vec::new(),
            named_counters: Vec::new(),
        };
        program.set_shards(1);
        Ok(program)
    }

    /// The same program with counters for `threads` switch threads (a switch refuses a
    /// program with fewer shards than it has switch threads).
    pub fn with_shards(mut self, threads: usize) -> Program {
        self.set_shards(threads);
        self
    }

    /// Grow (never shrink) to `threads` shards of fresh counters.
    fn set_shards(&mut self, threads: usize) {
        while self.rule_counters.len() < threads.max(1) {
            self.rule_counters.push(
                (0..=self.table.rules.len())
                    .map(|_| Arc::new(RuleCounters::default()))
                    .collect(),
            );
            self.named_counters.push(
                (0..self.table.counter_names.len())
                    .map(|_| Arc::new(Counter::default()))
                    .collect(),
            );
        }
    }

    /// How many switch threads can count into this program.
    pub fn shards(&self) -> usize {
        self.rule_counters.len()
    }

    /// Switch thread `shard`'s per-rule counters, one per rule then the default's.
    /// Only that thread writes them. (A shard past the last, which a switch never asks
    /// for, gets the last one.)
    #[inline]
    pub fn rule_counters(&self, shard: usize) -> &[Arc<RuleCounters>] {
        &self.rule_counters[shard.min(self.rule_counters.len() - 1)]
    }

    /// Switch thread `shard`'s named counters, in `table.counter_names` order.
    #[inline]
    pub fn named_counters(&self, shard: usize) -> &[Arc<Counter>] {
        &self.named_counters[shard.min(self.named_counters.len() - 1)]
    }

    /// Each rule's (then the default's) packets and bytes, summed over the shards.
    pub fn rule_totals(&self) -> Vec<(u64, u64)> {
        let mut totals = vec![(0, 0); self.table.rules.len() + 1];
        for shard in &self.rule_counters {
            for (t, c) in totals.iter_mut().zip(shard) {
                t.0 += c.packets.get();
                t.1 += c.bytes.get();
            }
        }
        totals
    }

    /// Each named counter, summed over the shards.
    pub fn named_totals(&self) -> Vec<u64> {
        let mut totals = vec![0; self.table.counter_names.len()];
        for shard in &self.named_counters {
            for (t, c) in totals.iter_mut().zip(shard) {
                *t += c.get();
            }
        }
        totals
    }

    /// Before installing `self` in place of `old`: take as many shards as `old` has, and
    /// share `old`'s counters for every rule (the default included) and named counter
    /// that keeps its name. Returns how many rule counters carried over. Call it off the
    /// data path, before the swap.
    pub fn carry_counters_from(&mut self, old: &Program) -> usize {
        use std::collections::HashMap;
        self.set_shards(old.shards());
        let old_rules: HashMap<&str, usize> = old
            .table
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| (r.name.as_str(), i))
            .collect();
        let mut carried = 0;
        for (i, rule) in self.table.rules.iter().enumerate() {
            if let Some(&j) = old_rules.get(rule.name.as_str()) {
                for (new, old) in self.rule_counters.iter_mut().zip(&old.rule_counters) {
                    new[i] = Arc::clone(&old[j]);
                }
                carried += 1;
            }
        }
        for (new, old) in self.rule_counters.iter_mut().zip(&old.rule_counters) {
            if let (Some(new), Some(old)) = (new.last_mut(), old.last()) {
                *new = Arc::clone(old);
            }
        }
        for (i, name) in self.table.counter_names.iter().enumerate() {
            if let Some(j) = old.table.counter_names.iter().position(|n| n == name) {
                for (new, old) in self.named_counters.iter_mut().zip(&old.named_counters) {
                    new[i] = Arc::clone(&old[j]);
                }
            }
        }
        carried
    }

    /// The port rule `rule` sends to when that is all it does (see `direct_out`).
    #[inline]
    pub fn direct_out(&self, rule: u32) -> Option<usize> {
        let last = self.direct_out.len() - 1;
        self.direct_out[(rule as usize).min(last)].map(|p| p as usize)
    }

    /// Whether all rule `rule` does is `drop` (see `plain_drop`).
    #[inline]
    pub fn plain_drop(&self, rule: u32) -> bool {
        let last = self.plain_drop.len() - 1;
        self.plain_drop[(rule as usize).min(last)]
    }

    /// The hops of rule `rule` (`n_rules` or more: the default's).
    #[inline]
    pub fn chain(&self, rule: u32) -> &[Hop] {
        let last = self.chains.len() - 1;
        &self.chains[(rule as usize).min(last)]
    }
}

/// The installed program, swappable atomically (hot reload) without locks on the data
/// path. Cheap to clone; every clone sees the same program.
#[derive(Clone, Debug)]
pub struct ProgramHandle {
    current: Arc<ArcSwap<Program>>,
}

impl ProgramHandle {
    pub fn new(program: Program) -> ProgramHandle {
        ProgramHandle {
            current: Arc::new(ArcSwap::from_pointee(program)),
        }
    }

    /// The program now installed. Hold the guard for one burst, not longer.
    #[inline]
    pub fn load(&self) -> arc_swap::Guard<Arc<Program>> {
        self.current.load()
    }

    /// The program now installed, as an owned `Arc` (for setup, not per burst).
    pub fn load_full(&self) -> Arc<Program> {
        self.current.load_full()
    }

    /// Whether `program` may replace the installed one
    /// ([`PolicyTable::check_compatible`]).
    pub fn check_compatible(&self, program: &Program) -> Result<(), PolicyTableError> {
        self.current.load().table.check_compatible(&program.table)
    }

    /// Install a new program in one atomic pointer swap and return the old one. Bursts
    /// already in flight finish with the old program; the next burst loads the new one.
    /// A program whose port or VM tables differ is refused ([`Self::check_compatible`])
    /// and nothing changes. The old program is freed when the returned `Arc`, the last
    /// in-flight burst's guard and the switch threads' hold on it (until they move over,
    /// and while packets it classified are still queued to VMs) are all gone, so the
    /// caller chooses where that cost falls (not inside the swap) unless packets are
    /// in flight.
    /// The new program gets at least as many counter shards as the old one has (one
    /// per switch thread).
    pub fn swap(&self, mut program: Program) -> Result<Arc<Program>, PolicyTableError> {
        self.check_compatible(&program)?;
        program.set_shards(self.current.load().shards());
        Ok(self.current.swap(Arc::new(program)))
    }
}
