//! Triage and steering: a classified packet goes to its rule's counters and mirrors, then
//! down its chain ([`Engine::steer`]) hop by hop until it leaves, is dropped or is queued
//! to a VM; a VM's verdict ([`Engine::apply`]) picks up the walk where it stopped.
//! `balance` hops pick a member by a symmetric hash ([`Engine::pick`]).

use super::*;

impl Engine {
    /// A classified packet in pool buffer `index` to where its rule sends it.
    #[inline]
    pub(super) fn dispatch(&mut self, prog: &Program, index: u32, rule: u32) {
        if let Some(port) = prog.direct_out(rule) {
            // All the rule does is `out PORT`: straight into that port's batch.
            return self.tx(port, index);
        }
        let action = prog.table.action(rule);
        for &c in &action.counters {
            prog.named_counters(self.shard)[c].add(1);
        }
        // `prog` is the program this burst loaded: the current one.
        let by = ClassifiedBy {
            program: prog,
            generation: self.gens.generation,
        };
        for &m in &action.mirrors {
            if self.pool.clone_ref(index).is_ok() {
                self.stats.mirrored.add(1);
                self.visit(by, m, index, rule, 0, true);
            }
        }
        self.steer(by, index, rule, 0, None);
    }

    /// Walk the packet down the chain of the program that classified it (`by`) from hop
    /// `pos` (or first into `to_vm`) until it leaves, is dropped or is queued to a VM
    /// thread.
    #[inline]
    pub(super) fn steer(
        &mut self,
        by: ClassifiedBy<'_>,
        mut index: u32,
        rule: u32,
        mut pos: u32,
        mut to_vm: Option<usize>,
    ) {
        let mut visits = 0;
        loop {
            let vm = match to_vm.take() {
                Some(vm) => vm,
                None => match by.program.chain(rule).get(pos as usize) {
                    None => return self.drop(index, DropReason::ChainEnd),
                    Some(Hop::Drop) => return self.drop(index, DropReason::Policy),
                    Some(Hop::Out(port)) => return self.tx(*port, index),
                    Some(Hop::Vm(vm)) => {
                        pos += 1;
                        *vm
                    }
                    Some(Hop::Balance { group, key }) => {
                        pos += 1;
                        self.pick(by.program, *group, key, index)
                    }
                },
            };
            visits += 1;
            if visits > MAX_VISITS || vm >= self.vms.len() {
                return self.drop(index, DropReason::BadVerdict);
            }
            let Some((back, verdict)) = self.visit(by, vm, index, rule, pos, false) else {
                return;
            };
            index = back;
            match verdict {
                Verdict::Next => {}
                Verdict::Drop => return self.drop(index, DropReason::Vm),
                Verdict::Out(port) => return self.tx(port as usize, index),
                Verdict::To(vm) => to_vm = Some(vm as usize),
            }
        }
    }

    /// The group member for this packet: a symmetric hash of its flow or fields.
    pub(super) fn pick(&self, prog: &Program, group: usize, key: &BalanceKey, index: u32) -> usize {
        let members = &prog.table.groups[group];
        // SAFETY: the switch holds a reference to `index` and no VM is running on it
        // (it is between hops); we only read.
        let frame = unsafe { self.pool.buf_data(index) }.unwrap_or(&[]);
        let decoded = Decoded::new(frame);
        let hash = match key {
            BalanceKey::Flow => flow_hash(&decoded),
            BalanceKey::Fields(fields) => {
                let mut values = [None; 8];
                for (v, f) in values.iter_mut().zip(fields) {
                    *v = decoded.field(*f);
                }
                fields_hash(&values[..fields.len().min(8)])
            }
        };
        let picked = members[hash as usize % members.len()];
        if !self.is_down(picked) {
            return picked;
        }
        // A member's process is down: spread over the live ones. With every member
        // down, the packet meets `on_failure`: bypass only if every member says so.
        let live = members.iter().filter(|&&m| !self.is_down(m)).count();
        if live > 0 {
            let nth = hash as usize % live;
            return members
                .iter()
                .copied()
                .filter(|&m| !self.is_down(m))
                .nth(nth)
                .unwrap_or(picked);
        }
        let on_failure = |m: usize| prog.table.vm_on_failure.get(m).copied().unwrap_or_default();
        members
            .iter()
            .copied()
            .find(|&m| on_failure(m) == OnFailure::Drop)
            .unwrap_or(picked)
    }

    /// Whether `vm` is a process VM with no process attached.
    #[inline]
    pub(super) fn is_down(&self, vm: usize) -> bool {
        matches!(self.vms.get(vm).map(|v| &v.link), Some(Link::Process(p)) if p.ends.is_none())
    }

    #[inline]
    pub(super) fn apply(
        &mut self,
        by: ClassifiedBy<'_>,
        index: u32,
        pending: Pending,
        verdict: Verdict,
    ) {
        match verdict {
            Verdict::Next => self.steer(by, index, pending.rule, pending.pos, None),
            Verdict::Drop => self.drop(index, DropReason::Vm),
            Verdict::Out(port) => self.tx(port as usize, index),
            Verdict::To(vm) => self.steer(by, index, pending.rule, pending.pos, Some(vm as usize)),
        }
    }
}
