//! Code generation: one Cranelift function per classifier,
//! `(frame: *const u8, len: usize, in_port: u32, scratch: *mut Scratch) -> u32`.
//!
//! The function parses the headers the policy needs ([`super::parse`]), then either tries the
//! rules in order with short-circuit branches (the linear strategy: each rule is a tree of
//! conditional branches over its atoms, so an atom a rule no longer needs is never computed),
//! or computes the decision-tree key and walks the tree's tables ([`super::tree`]). It returns
//! the index of the first matching rule, or `rules.len()` for the default.

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{types, AbiParam, Block, InstBuilder, Signature, Value};
use cranelift_frontend::FunctionBuilder;

use super::parse::{Level, Parse};
use super::payload::{netvm_jit_contains, netvm_jit_matches, netvm_jit_next};
use netvm_packet::{Field, FieldHeader, Proto};

use crate::ir::{Atom, Classifier, Expr, NO_PORT};

/// What the rule emitter needs besides the builder.
pub struct RuleEmitter<'a> {
    pub ir: &'a Classifier,
    pub parse: Parse,
    pub in_port: Value,
    pub scratch: Value,
    pub helper_sig: Option<cranelift_codegen::ir::SigRef>,
    /// Runs `(start, end)` of rules gated by payload atoms (see [`super::payload`]),
    /// ascending; empty without payload helpers.
    pub gated: &'a [(u32, u32)],
}

/// The parse level a whole classifier needs.
pub fn level_of(ir: &Classifier) -> Level {
    let all: Vec<usize> = (0..ir.rules.len()).collect();
    level_of_rules(ir, &all)
}

/// The parse level the rules numbered in `rules` need.
pub fn level_of_rules(ir: &Classifier, rules: &[usize]) -> Level {
    let mut used = vec![false; ir.atoms.len()];
    for &r in rules {
        ir.rules[r].for_each_atom(&mut |a| used[a] = true);
    }
    ir.atoms
        .iter()
        .zip(used)
        .filter(|(_, u)| *u)
        .map(|(a, _)| Level::of_atom(a))
        .max()
        .unwrap_or(Level::Eth)
}

/// The signature of the payload helpers (see [`super::payload`]).
pub fn helper_signature(call_conv: cranelift_codegen::isa::CallConv) -> Signature {
    let mut sig = Signature::new(call_conv);
    sig.params.push(AbiParam::new(types::I64));
    sig.params.push(AbiParam::new(types::I64));
    sig.params.push(AbiParam::new(types::I64));
    sig.params.push(AbiParam::new(types::I32));
    sig.returns.push(AbiParam::new(types::I32));
    sig
}

/// An integer constant of the field's width (i64, or i128 for IPv6 addresses).
fn constant(fb: &mut FunctionBuilder, wide: bool, v: u128) -> Value {
    if wide {
        let lo = fb.ins().iconst(types::I64, v as u64 as i64);
        let hi = fb.ins().iconst(types::I64, (v >> 64) as u64 as i64);
        fb.ins().iconcat(lo, hi)
    } else {
        fb.ins().iconst(types::I64, v as u64 as i64)
    }
}

/// `v` in one range, branch-free: `v - lo <= hi - lo` (unsigned), or `v == lo`.
fn in_range(fb: &mut FunctionBuilder, wide: bool, v: Value, lo: u128, hi: u128) -> Value {
    if lo == hi {
        let c = constant(fb, wide, lo);
        return fb.ins().icmp(IntCC::Equal, v, c);
    }
    let l = constant(fb, wide, lo);
    let d = fb.ins().isub(v, l);
    let w = constant(fb, wide, hi.wrapping_sub(lo));
    fb.ins().icmp(IntCC::UnsignedLessThanOrEqual, d, w)
}

/// Branches to `t` when `v` lies in one of the sorted, disjoint `ranges`, else to `f`: a
/// branch-free OR for a few ranges, a binary search for many.
pub fn branch_ranges(
    fb: &mut FunctionBuilder,
    wide: bool,
    v: Value,
    ranges: &[(u128, u128)],
    t: Block,
    f: Block,
) {
    if ranges.len() <= 4 {
        let mut acc = None;
        for &(lo, hi) in ranges {
            let c = in_range(fb, wide, v, lo, hi);
            acc = Some(match acc {
                None => c,
                Some(a) => fb.ins().bor(a, c),
            });
        }
        match acc {
            Some(c) => {
                fb.ins().brif(c, t, &[], f, &[]);
            }
            None => {
                fb.ins().jump(f, &[]);
            }
        }
        return;
    }
    let mid = ranges.len() / 2;
    let (lo, hi) = ranges[mid];
    let left = fb.create_block();
    let check = fb.create_block();
    let right = fb.create_block();
    let lo_c = constant(fb, wide, lo);
    let below = fb.ins().icmp(IntCC::UnsignedLessThan, v, lo_c);
    fb.ins().brif(below, left, &[], check, &[]);
    fb.switch_to_block(left);
    branch_ranges(fb, wide, v, &ranges[..mid], t, f);
    fb.switch_to_block(check);
    let hi_c = constant(fb, wide, hi);
    let inside = fb.ins().icmp(IntCC::UnsignedLessThanOrEqual, v, hi_c);
    fb.ins().brif(inside, t, &[], right, &[]);
    fb.switch_to_block(right);
    branch_ranges(fb, wide, v, &ranges[mid + 1..], t, f);
}

impl RuleEmitter<'_> {
    /// Branches to `t` when the atom holds, else to `f`. Leaves the builder in no open block.
    fn atom(&self, fb: &mut FunctionBuilder, atom: &Atom, t: Block, f: Block) {
        let p = &self.parse;
        match atom {
            Atom::Proto(proto) => {
                let c = p.proto_present(fb, *proto);
                fb.ins().brif(c, t, &[], f, &[]);
            }
            Atom::Field {
                field,
                mask,
                ranges,
            } => {
                let present = p.field_present(fb, *field);
                let read = fb.create_block();
                fb.ins().brif(present, read, &[], f, &[]);
                fb.switch_to_block(read);
                let wide = Parse::is_wide(*field);
                let mut v = p.field_load(fb, *field);
                if let Some(m) = mask {
                    let m = constant(fb, wide, *m);
                    v = fb.ins().band(v, m);
                }
                branch_ranges(fb, wide, v, ranges, t, f);
            }
            Atom::InPort { ranges } => {
                let known = fb
                    .ins()
                    .icmp_imm_u(IntCC::NotEqual, self.in_port, NO_PORT as i64);
                let read = fb.create_block();
                fb.ins().brif(known, read, &[], f, &[]);
                fb.switch_to_block(read);
                let v = fb.ins().uextend(types::I64, self.in_port);
                branch_ranges(fb, false, v, ranges, t, f);
            }
            Atom::PayloadByte {
                index,
                mask,
                ranges,
            } => {
                let eth = p.eth(fb);
                let has = fb.create_block();
                let read = fb.create_block();
                fb.ins().brif(eth, has, &[], f, &[]);
                fb.switch_to_block(has);
                let len = p.payload_len(fb);
                let long = fb
                    .ins()
                    .icmp_imm_u(IntCC::UnsignedGreaterThan, len, i64::from(*index));
                fb.ins().brif(long, read, &[], f, &[]);
                fb.switch_to_block(read);
                let start = p.payload_start(fb);
                let mut v = p.u8(fb, start, i32::from(*index));
                if let Some(m) = mask {
                    v = fb.ins().band_imm_u(v, i64::from(*m));
                }
                branch_ranges(fb, false, v, ranges, t, f);
            }
            Atom::StartsWith(lit) => {
                let eth = p.eth(fb);
                if lit.is_empty() {
                    fb.ins().brif(eth, t, &[], f, &[]);
                    return;
                }
                let has = fb.create_block();
                let read = fb.create_block();
                fb.ins().brif(eth, has, &[], f, &[]);
                fb.switch_to_block(has);
                let len = p.payload_len(fb);
                let long =
                    fb.ins()
                        .icmp_imm_u(IntCC::UnsignedGreaterThanOrEqual, len, lit.len() as i64);
                fb.ins().brif(long, read, &[], f, &[]);
                fb.switch_to_block(read);
                let start = p.payload_start(fb);
                // Byte by byte: literals are short, and each compare exits early.
                for (i, &byte) in lit.iter().enumerate() {
                    let v = p.u8(fb, start, i as i32);
                    let eq = fb.ins().icmp_imm_u(IntCC::Equal, v, i64::from(byte));
                    let next = fb.create_block();
                    fb.ins().brif(eq, next, &[], f, &[]);
                    fb.switch_to_block(next);
                }
                fb.ins().jump(t, &[]);
            }
            Atom::Contains(n) if self.ir.literals.get(*n).is_some_and(Vec::is_empty) => {
                let eth = p.eth(fb);
                fb.ins().brif(eth, t, &[], f, &[]);
            }
            Atom::Contains(n) => {
                self.helper(fb, netvm_jit_contains as *const () as usize, *n, t, f)
            }
            Atom::Matches(n) => self.helper(fb, netvm_jit_matches as *const () as usize, *n, t, f),
        }
    }

    /// A payload test answered by a Rust helper (see the ABI in [`super::payload`]).
    fn helper(&self, fb: &mut FunctionBuilder, func: usize, n: usize, t: Block, f: Block) {
        let eth = self.parse.eth(fb);
        let call = fb.create_block();
        fb.ins().brif(eth, call, &[], f, &[]);
        fb.switch_to_block(call);
        let n = fb.ins().iconst(types::I32, n as i64);
        match self.call_helper(fb, func, n) {
            Some(r) => fb.ins().brif(r, t, &[], f, &[]),
            // Unreachable by construction (the signature is imported whenever a payload
            // helper atom exists); answering "no match" keeps the code total anyway.
            None => fb.ins().jump(f, &[]),
        };
    }

    /// Calls payload helper `func` with argument `n` (an `i32`) on this frame's payload
    /// (present: the caller checked); `None` without the helper signature.
    fn call_helper(&self, fb: &mut FunctionBuilder, func: usize, n: Value) -> Option<Value> {
        let p = &self.parse;
        let sig = self.helper_sig?;
        let start = p.payload_start(fb);
        let len = p.payload_len(fb);
        let addr = fb.ins().iadd(p.ptr, start);
        let callee = fb.ins().iconst(types::I64, func as i64);
        let inst = fb
            .ins()
            .call_indirect(sig, callee, &[self.scratch, addr, len, n]);
        Some(fb.inst_results(inst)[0])
    }

    /// Rules `start..end`, all gated by payload atoms: one `netvm_jit_next` call names the
    /// first that can hold, a jump table goes there, and a rule that fails asks again from
    /// the next one. Without a payload every gated rule is false: straight to `after`.
    /// With a `bound` (see [`Self::rules_in_order`]), a rule numbered at or past it ends
    /// the search with the bound.
    fn gated_run(
        &self,
        fb: &mut FunctionBuilder,
        (start, end): (usize, usize),
        bound: Option<Value>,
        after: Block,
        finish: &mut dyn FnMut(&mut FunctionBuilder, Value),
    ) {
        use cranelift_codegen::ir::BlockArg;
        let dispatch = fb.create_block();
        let from = fb.append_block_param(dispatch, types::I32);
        let eth = self.parse.eth(fb);
        let first = fb.ins().iconst(types::I32, start as i64);
        fb.ins()
            .brif(eth, dispatch, &[BlockArg::Value(first)], after, &[]);
        fb.switch_to_block(dispatch);
        let entries: Vec<Block> = (start..end).map(|_| fb.create_block()).collect();
        match self.call_helper(fb, netvm_jit_next as *const () as usize, from) {
            Some(next) => {
                let mut table = cranelift_frontend::Switch::new();
                for (i, &b) in entries.iter().enumerate() {
                    table.set_entry((start + i) as u128, b);
                }
                table.emit(fb, next, after);
            }
            None => {
                fb.ins().jump(after, &[]);
            }
        }
        for (i, &entry) in entries.iter().enumerate() {
            let rule = start + i;
            fb.switch_to_block(entry);
            if let Some(b) = bound {
                self.stop_at_bound(fb, b, rule, finish);
            }
            let hit = fb.create_block();
            let miss = if rule + 1 < end {
                let b = fb.create_block();
                self.expr(fb, &self.ir.rules[rule], hit, b);
                fb.switch_to_block(b);
                let again = fb.ins().iconst(types::I32, (rule + 1) as i64);
                fb.ins().jump(dispatch, &[BlockArg::Value(again)]);
                None
            } else {
                Some(after)
            };
            if let Some(after) = miss {
                self.expr(fb, &self.ir.rules[rule], hit, after);
            }
            fb.switch_to_block(hit);
            let r = fb.ins().iconst(types::I32, rule as i64);
            finish(fb, r);
        }
    }

    /// Ends the search with `bound` (an `i32` rule index) when it is at most `rule`, else
    /// goes on in a fresh block: no rule from `rule` on can beat the bound.
    fn stop_at_bound(
        &self,
        fb: &mut FunctionBuilder,
        bound: Value,
        rule: usize,
        finish: &mut dyn FnMut(&mut FunctionBuilder, Value),
    ) {
        let beaten = fb.create_block();
        let go = fb.create_block();
        let stop = fb
            .ins()
            .icmp_imm_u(IntCC::UnsignedLessThanOrEqual, bound, rule as i64);
        fb.ins().brif(stop, beaten, &[], go, &[]);
        fb.switch_to_block(beaten);
        finish(fb, bound);
        fb.switch_to_block(go);
    }

    /// Branches to `t` when the expression holds, else to `f`, evaluating left to right and
    /// stopping as soon as the answer is known.
    pub fn expr(&self, fb: &mut FunctionBuilder, e: &Expr, t: Block, f: Block) {
        match e {
            Expr::Const(true) => {
                fb.ins().jump(t, &[]);
            }
            Expr::Const(false) => {
                fb.ins().jump(f, &[]);
            }
            Expr::Atom(a) => self.atom(fb, &self.ir.atoms[*a], t, f),
            Expr::Not(inner) => self.expr(fb, inner, f, t),
            Expr::And(items) | Expr::Or(items) => {
                let is_and = matches!(e, Expr::And(_));
                let Some((last, init)) = items.split_last() else {
                    fb.ins().jump(if is_and { t } else { f }, &[]);
                    return;
                };
                for item in init {
                    let next = fb.create_block();
                    if is_and {
                        self.expr(fb, item, next, f);
                    } else {
                        self.expr(fb, item, t, next);
                    }
                    fb.switch_to_block(next);
                }
                self.expr(fb, last, t, f);
            }
        }
    }

    /// A protocol header `e` cannot hold without: an atom on one of its fields (every
    /// comparison on an absent header is false) or its presence test, through `and`
    /// (any operand's) and `or` (all operands' alike). `None` when there is none.
    fn guard(&self, e: &Expr) -> Option<Proto> {
        match e {
            Expr::Atom(a) => match &self.ir.atoms[*a] {
                Atom::Proto(p) => Some(*p),
                // Presence of these is not their header's alone (see Parse::field_present).
                Atom::Field {
                    field: Field::EthType | Field::PktLen | Field::PayloadLen,
                    ..
                } => None,
                Atom::Field { field, .. } => match field.header() {
                    FieldHeader::Proto(p) => Some(p),
                    _ => None,
                },
                _ => None,
            },
            Expr::And(items) => items.iter().find_map(|i| self.guard(i)),
            Expr::Or(items) => {
                let first = self.guard(items.first()?)?;
                items[1..]
                    .iter()
                    .all(|i| self.guard(i) == Some(first))
                    .then_some(first)
            }
            Expr::Const(_) | Expr::Not(_) => None,
        }
    }

    /// The linear strategy: rules in order, first match returns its index. A run of
    /// consecutive rules that all need the same protocol header is skipped with one test
    /// of that header's presence (18 rules on `ip.src ...` cost one branch for an ARP
    /// frame, not 18); inside the run each rule still tests everything it needs. A run of
    /// rules gated by payload atoms is dispatched by the payload engine ([`Self::gated_run`]).
    pub fn rules_linear(&self, fb: &mut FunctionBuilder) {
        self.rules_linear_to(fb, &mut |fb, rule| {
            fb.ins().return_(&[rule]);
        });
    }

    /// [`rules_linear`](Self::rules_linear), ending each outcome (the first matching
    /// rule's index, or the default's, an `i32`) with `finish`, which must end the block
    /// (a return, or a jump to a block that takes the index).
    pub fn rules_linear_to(
        &self,
        fb: &mut FunctionBuilder,
        finish: &mut dyn FnMut(&mut FunctionBuilder, Value),
    ) {
        let all: Vec<usize> = (0..self.ir.rules.len()).collect();
        self.rules_in_order(fb, &all, None, finish);
    }

    /// The rules numbered in `rules` (ascending), first match wins, each outcome ended with
    /// `finish` as in [`rules_linear_to`](Self::rules_linear_to). With a `bound` (an `i32`
    /// rule index, e.g. the decision forest's answer), only rules numbered below it are
    /// tried and the bound is the outcome when none matches; without, the default is. A
    /// gated run (see [`Self::gated_run`]) whose rules all appear here, consecutively, is
    /// dispatched by the payload engine.
    pub fn rules_in_order(
        &self,
        fb: &mut FunctionBuilder,
        rules: &[usize],
        bound: Option<Value>,
        finish: &mut dyn FnMut(&mut FunctionBuilder, Value),
    ) {
        let guards: Vec<Option<Proto>> = rules
            .iter()
            .map(|&r| self.guard(&self.ir.rules[r]))
            .collect();
        // gate_at[k]: the gated run that starts at rules[k], when all of it follows there.
        let mut gate_at: Vec<Option<(usize, usize)>> = vec![None; rules.len()];
        for &(start, end) in self.gated {
            let (start, end) = (start as usize, end as usize);
            if let Ok(k) = rules.binary_search(&start) {
                if rules[k..].iter().take(end - start).copied().eq(start..end) {
                    gate_at[k] = Some((start, end));
                }
            }
        }
        let mut run_end: Option<(usize, Block)> = None;
        let mut k = 0;
        while k < rules.len() {
            let i = rules[k];
            if let Some(b) = bound {
                // Rules are ascending: from here on none can beat the bound.
                self.stop_at_bound(fb, b, i, finish);
            }
            if run_end.is_none() {
                if let Some((start, end)) = gate_at[k] {
                    let after = fb.create_block();
                    self.gated_run(fb, (start, end), bound, after, finish);
                    fb.switch_to_block(after);
                    k += end - start;
                    continue;
                }
                if let Some(g) = guards[k] {
                    // A header run stops where a gated run starts.
                    let len = guards[k..]
                        .iter()
                        .zip(&gate_at[k..])
                        .take_while(|&(&h, gate)| h == Some(g) && gate.is_none())
                        .count();
                    if len >= 2 {
                        let inside = fb.create_block();
                        let after = fb.create_block();
                        let present = self.parse.proto_present(fb, g);
                        fb.ins().brif(present, inside, &[], after, &[]);
                        fb.switch_to_block(inside);
                        run_end = Some((k + len - 1, after));
                    }
                }
            }
            let hit = fb.create_block();
            let next = match run_end {
                Some((last, after)) if last == k => {
                    run_end = None;
                    after
                }
                _ => fb.create_block(),
            };
            self.expr(fb, &self.ir.rules[i], hit, next);
            fb.switch_to_block(hit);
            let r = fb.ins().iconst(types::I32, i as i64);
            finish(fb, r);
            fb.switch_to_block(next);
            k += 1;
        }
        let d = match bound {
            Some(b) => b,
            None => fb.ins().iconst(types::I32, self.ir.rules.len() as i64),
        };
        finish(fb, d);
    }
}
