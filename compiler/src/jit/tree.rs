//! A HiCuts-style decision tree for large header-only rule sets (ClassBench and the like).
//!
//! **Which rule sets.** Every rule must be a conjunction of `Proto` atoms and unmasked `Field`
//! atoms on fields of at most 48 bits (everything but the IPv6 addresses), with no payload,
//! `in_port`, `or` or `not` ([`qualifies`]). Such a rule is a set of boxes in a small
//! D-dimensional space, one dimension per field or protocol the rule set mentions: a field
//! dimension's value is the field when present and a sentinel just above its largest value
//! when absent (so "absent makes every comparison false" is simply "the sentinel lies in no
//! range"); a protocol dimension is 0 or 1. A multi-range atom (`tcp.dport in {80, 443}`)
//! makes several boxes of one rule. Classifying a frame is then finding the lowest-numbered
//! rule with a box containing the frame's key — exactly the interpreter's first match.
//!
//! **Why a decision tree.** We considered the three classical families:
//! - tuple-space search hashes exact prefixes, but ClassBench's arbitrary port *ranges* either
//!   blow up into many prefix tuples or force a linear scan per tuple, and a first-match query
//!   must probe every tuple;
//! - bit-vector schemes (Lucent BV, ABV) cost O(rules / 64) words per dimension per packet:
//!   for 10,000 rules that is 157 words × 5 dimensions, several hundred nanoseconds;
//! - a decision tree (HiCuts, Gupta & McKeown 1999; HyperCuts) costs a few dependent loads
//!   plus a scan of a small leaf, handles ranges natively, and is simple to build.
//!
//! We build HiCuts: each internal node cuts one dimension of its (power-of-two aligned) region
//! into 2^k equal parts, so the child index is `(key >> shift) & mask` — two ALU operations
//! and one load per level. The dimension is the one whose best cut leaves the smallest largest
//! child; the number of cuts is the largest power of two whose replication stays within
//! `SPACE_FACTOR` × the node's boxes. Boxes shadowed inside a node's region (everything after
//! a box that covers the whole region) are dropped, which keeps wildcard-heavy sets small.
//! Leaves hold at most `LEAF_BOXES` boxes (more only when no cut separates them), in rule
//! order; identical leaves are shared.
//!
//! **What the JIT specialises.** The emitted code computes the key from the parsed headers
//! (only the fields the rule set uses), walks the node table, and scans the leaf with a loop
//! unrolled over the D dimensions: per box, D subtract-and-compare pairs and one branch. Each
//! leaf's boxes are copied contiguously into one table (a scan reads adjacent cache lines,
//! with no indirection), in 32-bit words when every dimension fits (see [`Tree::build`]).
//!
//! **The burst function** (what the switch calls) runs three passes over up to `MAX_BURST`
//! frames: parse and key every frame; walk the frames `WALK_GROUP` at a time in lockstep,
//! branch-free in registers, so that their chains of dependent node loads overlap, touching
//! each leaf's first box when its walk ends; then scan the leaves.
//!
//! **Measured** (acl1_10k, 9,831 rules): built in ~70 ms, depth 7.2 and 3.6 boxes scanned per
//! trace packet on average, tables 3.8 MB (nodes 0.5 MB, leaves 3.3 MB). One frame at a
//! time this ran at ~8.5 Mpps on the loaded 2-core VM; the burst function at ~11.7 Mpps.
//! Tried and measured worse: a level-by-level walk of all 32 frames through memory (the
//! bookkeeping costs more than the overlap saves: most node loads hit L2), larger leaves,
//! and larger space factors (fewer boxes scanned, more cache misses).

use std::collections::HashMap;

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{
    types, Block, BlockArg, InstBuilder, MemFlagsData, StackSlotData, StackSlotKind, Value,
};
use cranelift_frontend::FunctionBuilder;
use netvm_packet::{Field, Proto};

use super::codegen::RuleEmitter;
use super::parse::{Level, Parse};
use super::MAX_BURST;
use crate::ir::{Atom, Classifier, Expr};

/// A leaf may hold this many boxes before we try to cut it.
const LEAF_BOXES: usize = 8;
/// A cut may replicate boxes up to this factor of the node's box count.
const SPACE_FACTOR: usize = 4;
/// With 4-byte leaf words, the most 33-bit dimensions (flag bits 24..32 of the rule word).
const MAX_WIDE_DIMS: usize = 8;
/// The rule index bits of a 4-byte rule word.
const RULE_BITS: u64 = (1 << 24) - 1;
/// Frames walked together in the burst code.
const WALK_GROUP: usize = 8;
/// The most cuts of one node (2^8).
const MAX_CUT_BITS: u32 = 8;
const MAX_DEPTH: u32 = 24;
/// A rule whose multi-range atoms multiply to more boxes than this is not tree material.
const MAX_BOXES_PER_RULE: usize = 64;

/// One dimension of the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dim {
    /// The field's value, or `1 << bits` when absent.
    Field(Field),
    /// 1 when the header is present, else 0.
    Proto(Proto),
}

impl Dim {
    /// The width of the dimension's region (values `0 .. 1 << bits`).
    fn bits(self) -> u32 {
        match self {
            Dim::Field(f) => u32::from(f.ty().bits()) + 1,
            Dim::Proto(_) => 1,
        }
    }

    fn full(self) -> (u64, u64) {
        (0, (1u64 << self.bits()) - 1)
    }

    fn level(self) -> Level {
        match self {
            Dim::Field(f) => Level::of_field(f),
            Dim::Proto(p) => Level::of_proto(p),
        }
    }
}

/// A compiled decision tree: its key dimensions and the tables the emitted code walks.
pub struct Tree {
    dims: Vec<Dim>,
    /// The root's node word.
    root: u64,
    /// Node words: internal `dim | shift << 8 | mask << 16 | children << 32` (children is the
    /// index of the first child word here), or a leaf `1 << 63 | count << 32 | first`.
    nodes: Vec<u64>,
    /// The leaves' boxes, each leaf's boxes contiguous and in rule order, as native-endian
    /// words of `word_bytes` bytes: per box `1 + 2 × dims` words, the rule index, then
    /// `(lo, hi - lo)` per dimension. Words are 4 bytes when every dimension fits in 32 bits
    /// (ClassBench: halves the table), else 8. Stored in `u64`s for alignment.
    leaves: Vec<u64>,
    word_bytes: usize,
    /// With 4-byte words: the 33-bit dimensions, whose width's bit 32 is in the rule word.
    wide_dims: Vec<usize>,
    /// Boxes in `leaves`, and distinct boxes (for reports).
    leaf_boxes: usize,
    distinct_boxes: usize,
}

/// Whether a classifier's rules can all be expressed as boxes (see the module doc).
pub fn qualifies(ir: &Classifier) -> bool {
    rule_boxes_all(ir).is_some()
}

/// The conjuncts of a rule, when it is a plain conjunction of atoms.
fn conjuncts(e: &Expr) -> Option<Vec<usize>> {
    match e {
        Expr::Const(true) => Some(Vec::new()),
        Expr::Atom(a) => Some(vec![*a]),
        Expr::And(items) => items.iter().try_fold(Vec::new(), |mut acc, item| {
            acc.extend(conjuncts(item)?);
            Some(acc)
        }),
        _ => None,
    }
}

fn atom_dim(atom: &Atom) -> Option<Dim> {
    match atom {
        Atom::Proto(p) => Some(Dim::Proto(*p)),
        Atom::Field {
            field, mask: None, ..
        } if field.ty().bits() <= 48 => Some(Dim::Field(*field)),
        _ => None,
    }
}

/// The dimensions and, per rule, its boxes (`None` for a rule that can never match).
type Boxes = (Vec<Dim>, Vec<Option<Vec<Vec<(u64, u64)>>>>);

fn rule_boxes_all(ir: &Classifier) -> Option<Boxes> {
    let mut dims: Vec<Dim> = Vec::new();
    let mut rules = Vec::new();
    for rule in &ir.rules {
        if *rule == Expr::Const(false) {
            continue;
        }
        for a in conjuncts(rule)? {
            let d = atom_dim(&ir.atoms[a])?;
            if !dims.contains(&d) {
                dims.push(d);
            }
        }
    }
    for rule in &ir.rules {
        if *rule == Expr::Const(false) {
            rules.push(None);
            continue;
        }
        // Per dimension, the allowed ranges (intersection of the rule's atoms on it).
        let mut allowed: Vec<Vec<(u64, u64)>> = dims.iter().map(|d| vec![d.full()]).collect();
        for a in conjuncts(rule)? {
            let atom = &ir.atoms[a];
            let d = atom_dim(atom)?;
            let i = dims.iter().position(|x| *x == d)?;
            let ranges: Vec<(u64, u64)> = match atom {
                Atom::Proto(_) => vec![(1, 1)],
                Atom::Field { ranges, .. } => ranges
                    .iter()
                    .map(|&(lo, hi)| (lo as u64, hi as u64))
                    .collect(),
                _ => return None,
            };
            allowed[i] = intersect(&allowed[i], &ranges);
        }
        if allowed.iter().any(Vec::is_empty) {
            rules.push(None);
            continue;
        }
        let count: usize = allowed.iter().map(Vec::len).product();
        if count > MAX_BOXES_PER_RULE {
            return None;
        }
        let mut boxes: Vec<Vec<(u64, u64)>> = vec![Vec::new()];
        for ranges in &allowed {
            boxes = boxes
                .iter()
                .flat_map(|b| {
                    ranges.iter().map(move |&r| {
                        let mut b = b.clone();
                        b.push(r);
                        b
                    })
                })
                .collect();
        }
        rules.push(Some(boxes));
    }
    Some((dims, rules))
}

fn intersect(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for &(alo, ahi) in a {
        for &(blo, bhi) in b {
            let (lo, hi) = (alo.max(blo), ahi.min(bhi));
            if lo <= hi {
                out.push((lo, hi));
            }
        }
    }
    out.sort_unstable();
    out
}

struct Builder<'a> {
    /// Every box: its rule and its per-dimension ranges.
    boxes: &'a [(u32, Vec<(u64, u64)>)],
    nodes: Vec<u64>,
    /// Leaf words (logical, one value each); packed into `Tree::leaves` at the end.
    words: Vec<u64>,
    leaf_boxes: usize,
    leaves: HashMap<Vec<u32>, u64>,
}

const LEAF: u64 = 1 << 63;

impl Builder<'_> {
    fn leaf(&mut self, list: &[u32]) -> u64 {
        if let Some(&w) = self.leaves.get(list) {
            return w;
        }
        let first = self.words.len() as u64;
        for &b in list {
            let (rule, ranges) = &self.boxes[b as usize];
            self.words.push(u64::from(*rule));
            for &(lo, hi) in ranges {
                self.words.push(lo);
                self.words.push(hi - lo);
            }
        }
        self.leaf_boxes += list.len();
        let w = LEAF | (list.len() as u64) << 32 | first;
        self.leaves.insert(list.to_vec(), w);
        w
    }

    /// The node word for `list` (box indices, in rule order) inside `region`.
    fn node(&mut self, list: Vec<u32>, region: &[(u64, u64)], depth: u32) -> u64 {
        // Drop boxes that cannot win here: everything after one covering the whole region.
        let mut list = list;
        if let Some(cover) = list.iter().position(|&b| {
            self.boxes[b as usize]
                .1
                .iter()
                .zip(region)
                .all(|(&(lo, hi), &(rlo, rhi))| lo <= rlo && hi >= rhi)
        }) {
            list.truncate(cover + 1);
        }
        if list.len() <= LEAF_BOXES || depth >= MAX_DEPTH {
            return self.leaf(&list);
        }
        // Pick the dimension and cut count whose largest child is smallest.
        let mut best: Option<(usize, usize, u32)> = None; // (largest child, dim, cut bits)
        for (d, &(rlo, rhi)) in region.iter().enumerate() {
            let width_bits = 64 - (rhi - rlo).leading_zeros();
            let mut chosen = None;
            for c in 1..=MAX_CUT_BITS.min(width_bits) {
                let shift = width_bits - c;
                let n = 1usize << c;
                let mut diff = vec![0i64; n + 1];
                let mut total = 0usize;
                for &b in &list {
                    let (lo, hi) = self.boxes[b as usize].1[d];
                    let first = ((lo.max(rlo) - rlo) >> shift) as usize;
                    let last = ((hi.min(rhi) - rlo) >> shift) as usize;
                    diff[first] += 1;
                    diff[last + 1] -= 1;
                    total += last - first + 1;
                }
                if c > 1 && total + n > SPACE_FACTOR * list.len() {
                    break;
                }
                let mut run = 0i64;
                let mut largest = 0i64;
                for v in &diff[..n] {
                    run += v;
                    largest = largest.max(run);
                }
                chosen = Some((largest as usize, c));
            }
            if let Some((largest, c)) = chosen {
                if best.is_none_or(|(l, _, _)| largest < l) {
                    best = Some((largest, d, c));
                }
            }
        }
        let Some((largest, d, c)) = best else {
            return self.leaf(&list);
        };
        if largest >= list.len() {
            // No cut separates these boxes.
            return self.leaf(&list);
        }
        let (rlo, rhi) = region[d];
        let width_bits = 64 - (rhi - rlo).leading_zeros();
        let shift = width_bits - c;
        let n = 1usize << c;
        let mut children: Vec<Vec<u32>> = vec![Vec::new(); n];
        for &b in &list {
            let (lo, hi) = self.boxes[b as usize].1[d];
            let first = ((lo.max(rlo) - rlo) >> shift) as usize;
            let last = ((hi.min(rhi) - rlo) >> shift) as usize;
            for child in &mut children[first..=last] {
                child.push(b);
            }
        }
        let base = self.nodes.len();
        self.nodes.extend(std::iter::repeat_n(0, n));
        for (i, child) in children.into_iter().enumerate() {
            let mut sub = region.to_vec();
            let lo = rlo + ((i as u64) << shift);
            sub[d] = (lo, lo + ((1u64 << shift) - 1));
            let w = self.node(child, &sub, depth + 1);
            self.nodes[base + i] = w;
        }
        d as u64 | u64::from(shift) << 8 | ((n as u64) - 1) << 16 | (base as u64) << 32
    }
}

impl Tree {
    /// Builds the tree, or `None` when the rule set does not qualify.
    pub fn build(ir: &Classifier) -> Option<Tree> {
        let (dims, rules) = rule_boxes_all(ir)?;
        let mut boxes = Vec::new();
        for (r, rb) in rules.into_iter().enumerate() {
            for b in rb.into_iter().flatten() {
                boxes.push((r as u32, b));
            }
        }
        let region: Vec<(u64, u64)> = dims.iter().map(|d| d.full()).collect();
        let mut builder = Builder {
            boxes: &boxes,
            nodes: Vec::new(),
            words: Vec::new(),
            leaf_boxes: 0,
            leaves: HashMap::new(),
        };
        let root = builder.node((0..boxes.len() as u32).collect(), &region, 0);
        // The padding box (see `emit_leaf_start`).
        builder
            .words
            .extend(std::iter::repeat_n(0, 1 + 2 * dims.len()));
        let Builder {
            nodes,
            words,
            leaf_boxes,
            ..
        } = builder;
        // 4-byte words when everything fits: every dimension at most 33 bits wide (a 32-bit
        // field and its absent sentinel), at most `MAX_WIDE_DIMS` of them 33 bits wide, and
        // rule indices below 2^24. A 33-bit dimension's `lo` is always below 2^32 (ranges
        // come from field values; only a wildcard reaches the sentinel, and it starts at 0),
        // and bit 32 of its width is kept in bit `24 + its flag index` of the rule word.
        let wide_dims: Vec<usize> = (0..dims.len()).filter(|&d| dims[d].bits() == 33).collect();
        let narrow = dims.iter().all(|d| d.bits() <= 33)
            && wide_dims.len() <= MAX_WIDE_DIMS
            && ir.rules.len() < 1 << 24
            && boxes
                .iter()
                .all(|(_, r)| r.iter().all(|&(lo, _)| lo < 1 << 32));
        let word_bytes = if narrow { 4 } else { 8 };
        let mut bytes = Vec::with_capacity(words.len() * word_bytes + 8);
        if narrow {
            for b in words.chunks(1 + 2 * dims.len()) {
                let mut rule = b[0];
                for (f, &d) in wide_dims.iter().enumerate() {
                    rule |= (b[2 + 2 * d] >> 32) << (24 + f);
                }
                bytes.extend_from_slice(&(rule as u32).to_ne_bytes());
                for &w in &b[1..] {
                    bytes.extend_from_slice(&(w as u32).to_ne_bytes());
                }
            }
        } else {
            for &w in &words {
                bytes.extend_from_slice(&w.to_ne_bytes());
            }
        }
        let leaves = bytes
            .chunks(8)
            .map(|c| {
                let mut b = [0u8; 8];
                b[..c.len()].copy_from_slice(c);
                u64::from_ne_bytes(b)
            })
            .collect();
        Some(Tree {
            dims,
            root,
            nodes,
            leaves,
            word_bytes,
            wide_dims: if narrow { wide_dims } else { Vec::new() },
            leaf_boxes,
            distinct_boxes: boxes.len(),
        })
    }

    /// Logical word `i` of the leaf table.
    fn leaf_word(&self, i: usize) -> u64 {
        let at = i * self.word_bytes;
        let byte = |k: usize| (self.leaves[k / 8].to_ne_bytes())[k % 8];
        let mut b = [0u8; 8];
        for (k, slot) in b.iter_mut().enumerate().take(self.word_bytes) {
            *slot = byte(at + k);
        }
        if self.word_bytes == 4 {
            u64::from(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        } else {
            u64::from_ne_bytes(b)
        }
    }

    /// The parse level the key needs.
    pub(super) fn level(&self) -> Level {
        self.dims
            .iter()
            .map(|d| d.level())
            .max()
            .unwrap_or(Level::Eth)
    }

    /// Table sizes, for reports: (node words, boxes in leaves, distinct boxes, bytes).
    pub fn size(&self) -> (usize, usize, usize, usize) {
        (
            self.nodes.len(),
            self.leaf_boxes,
            self.distinct_boxes,
            self.nodes.len() * 8 + self.leaves.len() * 8,
        )
    }

    /// The tree walk done in Rust on a decoded frame: the rule (or `None`), the depth reached
    /// and the boxes scanned. For tests and for tuning the build parameters.
    pub fn lookup(&self, frame: &[u8]) -> (Option<usize>, usize, usize) {
        let d = netvm_packet::Decoded::new(frame);
        let key: Vec<u64> = self
            .dims
            .iter()
            .map(|dim| match *dim {
                Dim::Proto(p) => u64::from(d.has(p)),
                Dim::Field(f) => d.field(f).map_or(1u64 << f.ty().bits(), |v| v as u64),
            })
            .collect();
        let mut node = self.root;
        let mut depth = 0;
        while node & LEAF == 0 {
            let dim = (node & 0xff) as usize;
            let shift = (node >> 8) & 0xff;
            let mask = (node >> 16) & 0xffff;
            let idx = (node >> 32) + ((key[dim] >> shift) & mask);
            node = self.nodes[idx as usize];
            depth += 1;
        }
        let stride = 1 + 2 * self.dims.len();
        let first = (node & 0xffff_ffff) as usize;
        let count = ((node >> 32) & 0x7fff_ffff) as usize;
        for i in 0..count {
            let at = first + i * stride;
            let rule = self.leaf_word(at);
            let width = |k: usize| {
                let w = self.leaf_word(at + 2 + 2 * k);
                match self.wide_dims.iter().position(|&d| d == k) {
                    Some(f) => w | ((rule >> (24 + f)) & 1) << 32,
                    None => w,
                }
            };
            if key
                .iter()
                .enumerate()
                .all(|(k, &v)| v.wrapping_sub(self.leaf_word(at + 1 + 2 * k)) <= width(k))
            {
                let rule = if self.word_bytes == 4 {
                    rule & RULE_BITS
                } else {
                    rule
                };
                return (Some(rule as usize), depth, i + 1);
            }
        }
        (None, depth, count)
    }

    /// Emits the key computation from the parsed headers: one i64 per dimension.
    fn emit_key(&self, fb: &mut FunctionBuilder, p: &Parse) -> Vec<Value> {
        let i64t = types::I64;
        let mut keys = Vec::new();
        for dim in &self.dims {
            let k = match *dim {
                Dim::Proto(proto) => {
                    let c = p.proto_present(fb, proto);
                    fb.ins().uextend(i64t, c)
                }
                Dim::Field(field) => {
                    let present = p.field_present(fb, field);
                    let read = fb.create_block();
                    let join = fb.create_block();
                    let key = fb.append_block_param(join, i64t);
                    let sentinel = fb.ins().iconst(i64t, 1i64 << field.ty().bits());
                    fb.ins()
                        .brif(present, read, &[], join, &[BlockArg::Value(sentinel)]);
                    fb.switch_to_block(read);
                    let v = p.field_load(fb, field);
                    fb.ins().jump(join, &[BlockArg::Value(v)]);
                    fb.switch_to_block(join);
                    key
                }
            };
            keys.push(k);
        }
        keys
    }

    /// One step of the walk from the internal node word `node`: the child's word.
    /// `key_base` points at this frame's key (one i64 per dimension).
    fn emit_step(&self, fb: &mut FunctionBuilder, node: Value, key_base: Value) -> Value {
        let i64t = types::I64;
        // SAFETY (of the loads below, which Cranelift cannot check): `dim` < dims.len() by
        // construction of every internal word, so the key load stays in the frame's key;
        // `children + ((key >> shift) & mask)` < nodes.len() because the builder reserved
        // `mask + 1` child words at `children`; the tables live in this `Tree`, which the
        // `Jit` keeps alive as long as the code and never mutates.
        let table = MemFlagsData::trusted().with_readonly();
        let nodes = fb.ins().iconst(i64t, self.nodes.as_ptr() as i64);
        let dim = fb.ins().band_imm_u(node, 0xff);
        let key_off = fb.ins().ishl_imm_u(dim, 3);
        let key_addr = fb.ins().iadd(key_base, key_off);
        let key = fb.ins().load(i64t, MemFlagsData::trusted(), key_addr, 0);
        let shift = fb.ins().ushr_imm_u(node, 8);
        let shift = fb.ins().band_imm_u(shift, 0xff);
        let mask = fb.ins().ushr_imm_u(node, 16);
        let mask = fb.ins().band_imm_u(mask, 0xffff);
        let children = fb.ins().ushr_imm_u(node, 32);
        let idx = fb.ins().ushr(key, shift);
        let idx = fb.ins().band(idx, mask);
        let idx = fb.ins().iadd(children, idx);
        let off = fb.ins().ishl_imm_u(idx, 3);
        let addr = fb.ins().iadd(nodes, off);
        fb.ins().load(i64t, table, addr, 0)
    }

    /// The address of the first box of the leaf word `node`. There is always a whole box
    /// there, even for an empty leaf (the table ends with a padding box).
    fn emit_leaf_start(&self, fb: &mut FunctionBuilder, node: Value) -> Value {
        let leaves = fb.ins().iconst(types::I64, self.leaves.as_ptr() as i64);
        let first = fb.ins().band_imm_u(node, 0xffff_ffff);
        let start = fb.ins().imul_imm_u(first, self.word_bytes as i64);
        fb.ins().iadd(leaves, start)
    }

    /// The leaf scan of the leaf word `node`: boxes in rule order, the first containing the
    /// key wins. Jumps to `done` with the rule index (i32), or the default.
    fn emit_scan(
        &self,
        fb: &mut FunctionBuilder,
        node: Value,
        keys: &[Value],
        default: i64,
        done: Block,
    ) {
        if self.wide_dims.is_empty() {
            self.emit_scan_with(fb, node, keys, default, done, false);
            return;
        }
        // With every 33-bit key present (below 2^32), bit 32 of a width cannot change an
        // answer: `key - lo` is below 2^32 when `key >= lo` and wraps above 2^33 otherwise.
        // So only frames with an absent 32-bit field (not IPv4, for ClassBench) pay for it.
        let mut absent = None;
        for &d in &self.wide_dims {
            let a = fb.ins().icmp_imm_u(IntCC::Equal, keys[d], 1 << 32);
            absent = Some(match absent {
                None => a,
                Some(b) => fb.ins().bor(a, b),
            });
        }
        let (slow, fast) = (fb.create_block(), fb.create_block());
        if let Some(a) = absent {
            fb.ins().brif(a, slow, &[], fast, &[]);
        }
        fb.switch_to_block(fast);
        self.emit_scan_with(fb, node, keys, default, done, false);
        fb.switch_to_block(slow);
        self.emit_scan_with(fb, node, keys, default, done, true);
    }

    /// [`Tree::emit_scan`], reading the widths' bit 32 from the rule word or not.
    fn emit_scan_with(
        &self,
        fb: &mut FunctionBuilder,
        node: Value,
        keys: &[Value],
        default: i64,
        done: Block,
        width_high_bits: bool,
    ) {
        let i64t = types::I64;
        // SAFETY (of the loads below): a leaf's `count` boxes at word `first` lie in
        // `leaves` (the builder writes them so); the tables live as long as the code (see
        // `emit_step`).
        let table = MemFlagsData::trusted().with_readonly();
        let w = self.word_bytes as i64;
        let stride = (1 + 2 * self.dims.len() as i64) * w;
        let word = |fb: &mut FunctionBuilder, at: Value, index: i64| {
            let off = (index * w) as i32;
            if w == 4 {
                fb.ins().uload32(table, at, off)
            } else {
                fb.ins().load(i64t, table, at, off)
            }
        };
        let start = self.emit_leaf_start(fb, node);
        let count = fb.ins().ushr_imm_u(node, 32);
        let count = fb.ins().band_imm_u(count, 0x7fff_ffff);
        let len = fb.ins().imul_imm_u(count, stride);
        let end = fb.ins().iadd(start, len);
        let scan = fb.create_block();
        let at = fb.append_block_param(scan, i64t);
        let test = fb.create_block();
        let hit = fb.create_block();
        let next_box = fb.create_block();
        let miss = fb.create_block();
        fb.ins().jump(scan, &[BlockArg::Value(start)]);

        fb.switch_to_block(scan);
        let finished = fb.ins().icmp(IntCC::Equal, at, end);
        fb.ins().brif(finished, miss, &[], test, &[]);

        fb.switch_to_block(test);
        let b = at;
        let rule_word = (width_high_bits && !self.wide_dims.is_empty()).then(|| word(fb, b, 0));
        let mut all = None;
        for (i, &k) in keys.iter().enumerate() {
            let lo = word(fb, b, 1 + 2 * i as i64);
            let mut width = word(fb, b, 2 + 2 * i as i64);
            if let (Some(f), Some(r)) = (self.wide_dims.iter().position(|&d| d == i), rule_word) {
                // Bit 32 of the width, from bit 24 + f of the rule word.
                let high = fb.ins().ishl_imm_u(r, 8 - f as i64);
                let high = fb.ins().band_imm_u(high, 1 << 32);
                width = fb.ins().bor(width, high);
            }
            let d = fb.ins().isub(k, lo);
            let inside = fb.ins().icmp(IntCC::UnsignedLessThanOrEqual, d, width);
            all = Some(match all {
                None => inside,
                Some(a) => fb.ins().band(a, inside),
            });
        }
        match all {
            Some(c) => {
                fb.ins().brif(c, hit, &[], next_box, &[]);
            }
            None => {
                fb.ins().jump(hit, &[]);
            }
        }
        fb.switch_to_block(next_box);
        let after = fb.ins().iadd_imm_u(at, stride);
        fb.ins().jump(scan, &[BlockArg::Value(after)]);

        fb.switch_to_block(hit);
        let mut rule = word(fb, b, 0);
        if w == 4 {
            rule = fb.ins().band_imm_u(rule, RULE_BITS as i64);
        }
        let rule = fb.ins().ireduce(types::I32, rule);
        fb.ins().jump(done, &[BlockArg::Value(rule)]);

        fb.switch_to_block(miss);
        let d = fb.ins().iconst(types::I32, default);
        fb.ins().jump(done, &[BlockArg::Value(d)]);
    }

    /// The single-frame body: key computation, the walk and the leaf scan; returns the rule
    /// index.
    pub(super) fn emit(&self, fb: &mut FunctionBuilder, e: &RuleEmitter) {
        let i64t = types::I64;
        // The key, in registers for the leaf scan and in a stack slot for the walk.
        let slot = fb.create_sized_stack_slot(StackSlotData::new(
            StackSlotKind::ExplicitSlot,
            (self.dims.len().max(1) * 8) as u32,
            3,
        ));
        let keys = self.emit_key(fb, &e.parse);
        for (i, &k) in keys.iter().enumerate() {
            fb.ins().stack_store(i64t, k, slot, (i * 8) as i32);
        }
        let key_base = fb.ins().stack_addr(i64t, slot, 0);
        let node = self.emit_walk(fb, key_base);
        let done = fb.create_block();
        let rule = fb.append_block_param(done, types::I32);
        self.emit_scan(fb, node, &keys, e.ir.rules.len() as i64, done);
        fb.switch_to_block(done);
        fb.ins().return_(&[rule]);
    }

    /// The walk from the root to a leaf for the key at `key_base`: the leaf word.
    fn emit_walk(&self, fb: &mut FunctionBuilder, key_base: Value) -> Value {
        let i64t = types::I64;
        let walk = fb.create_block();
        let node = fb.append_block_param(walk, i64t);
        let inner = fb.create_block();
        let leaf = fb.create_block();
        let root = fb.ins().iconst(i64t, self.root as i64);
        fb.ins().jump(walk, &[BlockArg::Value(root)]);

        fb.switch_to_block(walk);
        let is_leaf = fb.ins().icmp_imm_u(IntCC::SignedLessThan, node, 0);
        fb.ins().brif(is_leaf, leaf, &[], inner, &[]);

        fb.switch_to_block(inner);
        let next = self.emit_step(fb, node, key_base);
        fb.ins().jump(walk, &[BlockArg::Value(next)]);

        fb.switch_to_block(leaf);
        node
    }

    /// The burst body, `(frames: *const *const u8, lens: *const usize, n: usize,
    /// out: *mut u32)` with `n <= MAX_BURST`. Two passes over the frames: the first parses
    /// each frame, stores its key and walks it to its leaf; the second scans the leaves.
    /// Keeping the leaf scans (whose exits are data-dependent branches) out of the parse and
    /// walk loop measured ~10% faster than one pass; walking the frames level by level
    /// together (to overlap cache misses) measured slower — most node loads hit the cache
    /// and the bookkeeping costs more than the overlap saves.
    pub(super) fn emit_burst(
        &self,
        fb: &mut FunctionBuilder,
        [ptrs, lens, n, out]: [Value; 4],
        default: i64,
    ) {
        let i64t = types::I64;
        let i32t = types::I32;
        let dims = self.dims.len().max(1);
        let key_bytes = (dims * 8) as i64;
        let slot = |fb: &mut FunctionBuilder, bytes: usize| {
            let s = fb.create_sized_stack_slot(StackSlotData::new(
                StackSlotKind::ExplicitSlot,
                bytes as u32,
                3,
            ));
            fb.ins().stack_addr(i64t, s, 0)
        };
        // SAFETY (of the stack loads and stores below): every index is a frame index < n <=
        // MAX_BURST (the caller clamps n), and each slot holds MAX_BURST entries.
        let keys_base = slot(fb, MAX_BURST * dims * 8);
        let leaf_base = slot(fb, MAX_BURST * 8);
        let touch_base = slot(fb, MAX_BURST * 4);
        let mem = MemFlagsData::trusted();
        let key_at = |fb: &mut FunctionBuilder, i: Value| {
            let off = fb.ins().imul_imm_u(i, key_bytes);
            fb.ins().iadd(keys_base, off)
        };
        let at = |fb: &mut FunctionBuilder, base: Value, i: Value, scale: i64| {
            let off = fb.ins().ishl_imm_u(i, scale);
            fb.ins().iadd(base, off)
        };

        // Pass 1: parse every frame, store its key.
        let walks = fb.create_block();
        let leaves = fb.create_block();
        let zero = fb.ins().iconst(i64t, 0);
        super::emit_frame_loop(fb, n, walks, |fb, i| {
            // SAFETY: the parse reads only inside each frame (see `parse`).
            let (ptr, len) = super::emit_frame(fb, ptrs, lens, i);
            let parse = Parse::emit(fb, ptr, len, self.level());
            let keys = self.emit_key(fb, &parse);
            let kb = key_at(fb, i);
            for (d, &k) in keys.iter().enumerate() {
                fb.ins().store(mem, k, kb, (d * 8) as i32);
            }
        });

        // Pass 2: the walks, WALK_GROUP frames at a time in lockstep, branch-free in
        // registers, so that their dependent chains of node loads overlap. A frame that has
        // reached its leaf keeps its word (its step is computed from the root's word, which is
        // always safe to step, and thrown away).
        let ghead = fb.create_block();
        let g = fb.append_block_param(ghead, i64t);
        let gbody = fb.create_block();
        let walk = fb.create_block();
        let step = fb.create_block();
        let stored = fb.create_block();
        let words: Vec<Value> = (0..WALK_GROUP)
            .map(|_| fb.append_block_param(walk, i64t))
            .collect();
        fb.ins().jump(ghead, &[BlockArg::Value(zero)]);
        fb.switch_to_block(ghead);
        let finished = fb.ins().icmp(IntCC::UnsignedGreaterThanOrEqual, g, n);
        fb.ins().brif(finished, leaves, &[], gbody, &[]);

        fb.switch_to_block(gbody);
        // Frames past the end repeat the last one (same key, same leaf, same store).
        let last = fb.ins().iadd_imm_u(n, -1);
        let frames: Vec<Value> = (0..WALK_GROUP as i64)
            .map(|k| {
                let f = fb.ins().iadd_imm_u(g, k);
                fb.ins().umin(f, last)
            })
            .collect();
        let key_bases: Vec<Value> = frames.iter().map(|&f| key_at(fb, f)).collect();
        let root = fb.ins().iconst(i64t, self.root as i64);
        let args: Vec<BlockArg> = (0..WALK_GROUP).map(|_| BlockArg::Value(root)).collect();
        fb.ins().jump(walk, &args);

        fb.switch_to_block(walk);
        let mut all = words[0];
        for &w in &words[1..] {
            all = fb.ins().band(all, w);
        }
        let all_leaves = fb.ins().icmp_imm_u(IntCC::SignedLessThan, all, 0);
        fb.ins().brif(all_leaves, stored, &[], step, &[]);

        fb.switch_to_block(step);
        let root = fb.ins().iconst(i64t, self.root as i64);
        let mut next_args = Vec::new();
        for (&w, &kb) in words.iter().zip(&key_bases) {
            let leaf = fb.ins().icmp_imm_u(IntCC::SignedLessThan, w, 0);
            let safe = fb.ins().select(leaf, root, w);
            let next = self.emit_step(fb, safe, kb);
            let next = fb.ins().select(leaf, w, next);
            next_args.push(BlockArg::Value(next));
        }
        fb.ins().jump(walk, &next_args);

        fb.switch_to_block(stored);
        for (&w, &f) in words.iter().zip(&frames) {
            let a = at(fb, leaf_base, f, 3);
            fb.ins().store(mem, w, a, 0);
            // Touch the leaf's first box now, so that its cache miss overlaps the other
            // walks instead of stalling the scan (Cranelift has no prefetch; a load whose
            // value is stored is one that cannot be removed).
            let first = self.emit_leaf_start(fb, w);
            let touched = fb.ins().load(
                types::I32,
                MemFlagsData::trusted().with_readonly(),
                first,
                0,
            );
            let a = at(fb, touch_base, f, 2);
            fb.ins().store(mem, touched, a, 0);
        }
        let g1 = fb.ins().iadd_imm_u(g, WALK_GROUP as i64);
        fb.ins().jump(ghead, &[BlockArg::Value(g1)]);

        // Pass 3: each frame's leaf.
        fb.switch_to_block(leaves);
        let exit = fb.create_block();
        super::emit_frame_loop(fb, n, exit, |fb, i| {
            let a = at(fb, leaf_base, i, 3);
            let node = fb.ins().load(i64t, mem, a, 0);
            let kb = key_at(fb, i);
            let keys: Vec<Value> = (0..self.dims.len())
                .map(|d| fb.ins().load(i64t, mem, kb, (d * 8) as i32))
                .collect();
            let done = fb.create_block();
            let rule = fb.append_block_param(done, i32t);
            self.emit_scan(fb, node, &keys, default, done);
            fb.switch_to_block(done);
            // SAFETY: the caller passes `out` with room for `n` u32s.
            let a = at(fb, out, i, 2);
            fb.ins().store(mem, rule, a, 0);
        });
        fb.ins().return_(&[]);
    }
}
