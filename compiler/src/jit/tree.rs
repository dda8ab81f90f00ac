//! A forest of HiCuts-style decision trees for the header rules of a policy (ClassBench and
//! the like), under a memory budget, beside the rules no tree can hold.
//!
//! **Which rules.** A *header rule* is a conjunction of `Proto` atoms and unmasked `Field`
//! atoms, with no payload, `in_port`, `or` or `not`, of at most `MAX_BOXES_PER_RULE` boxes.
//! Such a rule is a set of boxes in a small D-dimensional space, one dimension per field or
//! protocol the header rules mention: a field dimension's value is the field when present
//! and a sentinel just above its largest value when absent (so "absent makes every
//! comparison false" is simply "the sentinel lies in no range"); a protocol dimension is
//! 0 or 1. A 128-bit field (an IPv6 address) is four 32-bit dimensions, its parts, and each
//! of an atom's ranges becomes aligned prefixes, each one box over the parts (exact parts,
//! one ranged part, any-present-value parts), so an IPv6 ACL is cut like an IPv4 one. A
//! multi-range atom (`tcp.dport in {80, 443}`) makes several boxes of one rule. Finding the
//! lowest-numbered header rule with a box containing the frame's key is the interpreter's
//! first match among the header rules. Every other rule is *residual*: the
//! code runs the residual rules numbered below the trees' answer, in order, with the linear
//! strategy's code ([`super::codegen`]), so first-match order holds across both, and a
//! residual rule after all the header rules (one DPI rule after 10,000 ACL lines) is not even
//! looked at for a frame a header rule matches.
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
//! a box that covers the whole region) are dropped. Leaves hold at most `LEAF_BOXES` boxes
//! (more only when no cut separates them, or at the budget), in rule order; identical leaves
//! are shared.
//!
//! **Why a forest, partitioned by address wildcards.** One tree over a firewall set (fw1_10k:
//! 57% of the rules wildcard or shorter than /16 on the source, 24% on the destination)
//! replicates every wildcard-address rule into every cut of that address: the single tree took
//! 217 s and 15.8 GB. Of the three published remedies we chose EffiCuts/CutSplit-style
//! partitioning by *which address fields are small* (prefix /16 or longer — range below 2^16 —
//! on each 32-bit field dimension): rules small on the same address set share a tree, which
//! cuts those addresses without replicating anything large on them. It keeps the per-packet
//! cost of the trees we have (a few dependent loads and a short leaf scan per tree), and on
//! ClassBench it gives 1 to 4 trees (acl1: 96% of the rules small on both addresses). A
//! category with under `MERGE_PERCENT` % of the boxes joins a big one that cuts only
//! addresses it is small on, else one sharing a small address with it, else (under
//! `TINY_PERCENT` %) the largest: a separate tree for 65 rules costs a walk per packet, a few
//! replicated rules cost less — but fw1_10k's 428 rules wide on both addresses, merged into
//! the largest tree, took it to the budget (44 MB, 1.4 s) where apart they take 2–3 MB. rte_acl's
//! per-rule node cap spilling into further tries bounds memory too but its tries are bytewise
//! (up to 4 dependent loads per address); TupleMerge builds in milliseconds but probes every
//! tuple's hash table per packet. Measured numbers are in BENCHMARKS.md ("Decision forest").
//!
//! **The memory budget.** All trees of one classifier share one budget for their tables
//! (node words and leaf boxes; [`default_budget`]: 64 MiB per 10,000 rules, at least 64 and
//! at most 256 MiB, or [`Tree::build_with`]'s), split between the trees in proportion to
//! their boxes, the unused part of each passed on, and no tree may take more than
//! `REPLICATION_CAP` times its boxes' own bytes. The
//! builder keeps an exact account — bytes written plus, for every node not yet built, the
//! bytes of its boxes as one leaf, which is what it costs at most — and makes a node a leaf
//! whenever cutting it would take the account past the budget. So the tables never exceed the
//! budget (when even one leaf per tree of all boxes would, there is no forest and the policy
//! compiles linearly), and the build does bounded work.
//!
//! **What the JIT specialises.** The emitted code computes the key from the parsed headers
//! once (only the fields the rule set uses), walks each tree's node table, and scans the leaf
//! with a loop unrolled over the D dimensions: per box, D subtract-and-compare pairs and one
//! branch; the answer is the lowest rule of all trees. Each leaf's boxes are copied
//! contiguously into one table (a scan reads adjacent cache lines, with no indirection), in
//! 32-bit words when every dimension fits (see [`Tree::build_with`]).
//!
//! **The burst function** (what the switch calls) runs passes over up to `MAX_BURST` frames:
//! parse and key every frame; then per tree, walk the frames `WALK_GROUP` at a time in
//! lockstep, branch-free in registers, so that their chains of dependent node loads overlap,
//! touching each leaf's first box when its walk ends, and scan the leaves; last, only for the
//! frames whose answer is above the first residual rule, parse again and run the residual
//! rules (payload helpers get the thread's scratch, reset per frame).
//!
//! **Measured** (BENCHMARKS.md, "Decision forest"): fw1_10k 4 trees, 2.0 MB, 67 ms (one tree
//! before: 217 s, 15.8 GB); ipc2_10k 3 trees, 0.6 MB, 42 ms; acl1_10k 1 tree, 3.8 MB, 54–192
//! ms by load, depth 7.2 and 3.6 boxes scanned per trace packet; acl1_100k 1 tree, 102 MB,
//! seconds (the slowest build). Before the forest, one frame at a time ran acl1_10k at ~8.5
//! Mpps on the loaded 2-core VM; the burst function at ~11.7 Mpps. Tried and measured worse: a level-by-level walk of all 32 frames through memory (the
//! bookkeeping costs more than the overlap saves: most node loads hit L2), larger leaves,
//! and larger space factors (fewer boxes scanned, more cache misses).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{
    types, Block, BlockArg, InstBuilder, MemFlagsData, SigRef, StackSlotData, StackSlotKind, Value,
};
use cranelift_frontend::FunctionBuilder;
use netvm_packet::{Field, Proto};

use super::codegen::{level_of_rules, RuleEmitter};
use super::parse::{Level, Parse};
use super::MAX_BURST;
use crate::ir::{Atom, Classifier, Expr};

/// The smallest default budget for all the trees' tables of one classifier, in bytes (what
/// 10,000 rules get; see [`default_budget`]).
pub const DEFAULT_BUDGET: usize = 64 << 20;
/// The largest default budget.
pub const MAX_DEFAULT_BUDGET: usize = 256 << 20;

/// The default budget for a classifier of `rules` rules: 64 MiB per 10,000 rules, at least
/// [`DEFAULT_BUDGET`] and at most [`MAX_DEFAULT_BUDGET`].
pub fn default_budget(rules: usize) -> usize {
    (DEFAULT_BUDGET as u128 * rules as u128 / 10_000)
        .clamp(DEFAULT_BUDGET as u128, MAX_DEFAULT_BUDGET as u128) as usize
}
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
/// One tree's tables may take at most this many times its boxes' own bytes (and its share
/// of the budget): cutting boxes that overlap in every dimension removes one or two per
/// level while replicating the rest (fw1_100k's 1,870 rules wide on both addresses made 1.4
/// million leaf boxes, 82 MB, without this). Stopping each node at 7/8 progress instead kept
/// memory down but left acl1_10k scanning 24 boxes per packet instead of 3.6.
const REPLICATION_CAP: usize = 128;
/// The most cuts of one node (2^8).
const MAX_CUT_BITS: u32 = 8;
const MAX_DEPTH: u32 = 24;
/// A rule whose multi-range atoms multiply to more boxes than this is not tree material.
const MAX_BOXES_PER_RULE: usize = 64;
/// A range narrower than this on a 32-bit field dimension is *small* (a /16 prefix or longer).
const SMALL_WIDTH: u64 = 1 << 16;
/// Partition by at most this many address dimensions (at most 2^3 trees).
const MAX_PARTITION_DIMS: usize = 3;
/// A category with fewer than this percentage of the boxes joins another (see [`partition`]).
const MERGE_PERCENT: usize = 5;
/// A category with fewer than this percentage of the boxes may join one that cuts an address
/// it is large on.
const TINY_PERCENT: usize = 2;

/// One dimension of the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dim {
    /// The field's value, or `1 << bits` when absent.
    Field(Field),
    /// 1 when the header is present, else 0.
    Proto(Proto),
    /// 32-bit part `k` (0 = the most significant) of a 128-bit field (an IPv6 address), or
    /// `1 << 32` when absent.
    Part(Field, u8),
}

impl Dim {
    /// The width of the dimension's region (values `0 .. 1 << bits`).
    fn bits(self) -> u32 {
        match self {
            Dim::Field(f) => u32::from(f.ty().bits()) + 1,
            Dim::Proto(_) => 1,
            Dim::Part(..) => 33,
        }
    }

    /// The key value for a decoded frame (the Rust twin of `Tree::emit_key`).
    fn value(self, d: &netvm_packet::Decoded) -> u64 {
        match self {
            Dim::Proto(p) => u64::from(d.has(p)),
            Dim::Field(f) => d.field(f).map_or(1u64 << f.ty().bits(), |v| v as u64),
            Dim::Part(f, k) => d.field(f).map_or(1u64 << 32, |v| {
                (v >> (96 - 32 * u32::from(k))) as u64 & 0xffff_ffff
            }),
        }
    }

    fn full(self) -> (u64, u64) {
        (0, (1u64 << self.bits()) - 1)
    }

    fn level(self) -> Level {
        match self {
            Dim::Field(f) | Dim::Part(f, _) => Level::of_field(f),
            Dim::Proto(p) => Level::of_proto(p),
        }
    }
}

/// What the build did, for `netvm bench`/`netvm check` and the tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeStats {
    /// Rules in the trees, and residual rules (run after them, see the module doc).
    pub header_rules: usize,
    pub residual_rules: usize,
    /// Trees in the forest.
    pub subtrees: usize,
    /// Node words, boxes in leaves (with replication), distinct boxes.
    pub node_words: usize,
    pub leaf_boxes: usize,
    pub distinct_boxes: usize,
    /// Bytes of all tables, and the budget they were built under (never above it).
    pub bytes: usize,
    pub budget: usize,
    /// Whether some node was left a leaf because cutting it would have passed the budget.
    pub budget_reached: bool,
    /// Whether the key has IPv6 address parts.
    pub ipv6_dims: bool,
    /// The time the build took (boxes, partition, trees; not the code generation).
    pub build_time: Duration,
}

/// One tree of the forest: its root word and the tables the emitted code walks.
struct Part {
    /// The root's node word.
    root: u64,
    /// Node words: internal `dim | shift << 8 | mask << 16 | children << 32` (children is the
    /// index of the first child word here), or a leaf `1 << 63 | count << 32 | first`.
    nodes: Vec<u64>,
    /// The leaves' boxes, each leaf's boxes contiguous and in rule order, as native-endian
    /// words of `Tree::word_bytes` bytes: per box `1 + 2 × dims` words, the rule index, then
    /// `(lo, hi - lo)` per dimension, and one padding box at the end. Stored in `u64`s for
    /// alignment.
    leaves: Vec<u64>,
}

/// A compiled forest: the key dimensions, the trees, and the residual rules.
pub struct Tree {
    dims: Vec<Dim>,
    parts: Vec<Part>,
    /// Leaf words are 4 bytes when every dimension fits in 32 bits (ClassBench: halves the
    /// table), else 8.
    word_bytes: usize,
    /// With 4-byte words: the 33-bit dimensions, whose width's bit 32 is in the rule word.
    wide_dims: Vec<usize>,
    /// The rules no tree holds, in rule order.
    residual: Vec<usize>,
    stats: TreeStats,
}

/// Whether every rule of a classifier is a header rule (see the module doc).
pub fn qualifies(ir: &Classifier) -> bool {
    let (_, shapes) = analyse(ir);
    !shapes.iter().any(|s| matches!(s, Shape::Residual))
}

/// How many rules are header rules (what the trees would hold).
pub fn header_rules(ir: &Classifier) -> usize {
    let (_, shapes) = analyse(ir);
    shapes
        .iter()
        .filter(|s| matches!(s, Shape::Boxes(_)))
        .count()
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

/// An atom as the boxes it allows: per box, a range on each of some dimensions (one box of
/// one dimension for all but 128-bit fields, whose ranges become prefixes, each a box over
/// the four 32-bit parts).
fn atom_boxes(atom: &Atom) -> Option<Vec<Partial>> {
    match atom {
        Atom::Proto(p) => Some(vec![vec![(Dim::Proto(*p), (1, 1))]]),
        Atom::Field {
            field,
            mask: None,
            ranges,
        } if field.ty().bits() <= 48 => Some(
            ranges
                .iter()
                .map(|&(lo, hi)| vec![(Dim::Field(*field), (lo as u64, hi as u64))])
                .collect(),
        ),
        Atom::Field {
            field,
            mask: None,
            ranges,
        } if field.ty().bits() == 128 => {
            let mut out = Vec::new();
            for &(lo, hi) in ranges {
                for (base, len) in prefixes(lo, hi, MAX_BOXES_PER_RULE)? {
                    out.push(part_box(*field, base, len));
                    if out.len() > MAX_BOXES_PER_RULE {
                        return None;
                    }
                }
            }
            Some(out)
        }
        _ => None,
    }
}

/// `lo..=hi` (128-bit) as aligned prefixes `(base, length)`; `None` past `max` of them.
fn prefixes(lo: u128, hi: u128, max: usize) -> Option<Vec<(u128, u32)>> {
    if lo == 0 && hi == u128::MAX {
        return Some(vec![(0, 0)]);
    }
    let mut out = Vec::new();
    let mut lo = lo;
    loop {
        // The largest aligned block at `lo` within `hi` (a single value always is).
        let mut size = if lo == 0 {
            127
        } else {
            lo.trailing_zeros().min(127)
        };
        while lo
            .checked_add((1u128 << size) - 1)
            .is_none_or(|end| end > hi)
        {
            size -= 1;
        }
        out.push((lo, 128 - size));
        if out.len() > max {
            return None;
        }
        let last = lo + ((1u128 << size) - 1);
        if last >= hi {
            return Some(out);
        }
        lo = last + 1;
    }
}

/// The box of the prefix `base/len` of a 128-bit field over its four 32-bit parts: parts
/// inside the prefix exact, the part it ends in a range, the rest any present value.
fn part_box(field: Field, base: u128, len: u32) -> Partial {
    (0..4u8)
        .map(|k| {
            let part = (base >> (96 - 32 * u32::from(k))) as u64 & 0xffff_ffff;
            let start = 32 * u32::from(k);
            let range = if len >= start + 32 {
                (part, part)
            } else if len <= start {
                (0, 0xffff_ffff)
            } else {
                let host = (1u64 << (start + 32 - len)) - 1;
                (part & !host, (part & !host) | host)
            };
            (Dim::Part(field, k), range)
        })
        .collect()
}

/// What one rule is to the forest.
enum Shape {
    /// It can never match (no boxes, not residual either).
    Never,
    /// Its boxes, one range per dimension of [`analyse`]'s dims.
    Boxes(Vec<Vec<(u64, u64)>>),
    /// Not a header rule.
    Residual,
}

/// Per dimension a rule mentions, the ranges it allows; a rule is the product of its atoms'
/// alternatives, so it is kept as a list of partial boxes (dimension, range) instead.
type Partial = Vec<(Dim, (u64, u64))>;

/// The conjunction of two lists of partial boxes (`None` past `MAX_BOXES_PER_RULE`).
fn and_boxes(a: Vec<Partial>, b: &[Partial]) -> Option<Vec<Partial>> {
    let mut out = Vec::new();
    for x in &a {
        'next: for y in b {
            let mut boxed = x.clone();
            for &(d, (lo, hi)) in y {
                match boxed.iter_mut().find(|(e, _)| *e == d) {
                    Some((_, r)) => {
                        let (l, h) = (r.0.max(lo), r.1.min(hi));
                        if l > h {
                            continue 'next;
                        }
                        *r = (l, h);
                    }
                    None => boxed.push((d, (lo, hi))),
                }
            }
            out.push(boxed);
            if out.len() > MAX_BOXES_PER_RULE {
                return None;
            }
        }
    }
    Some(out)
}

/// The dimensions of the header rules and every rule's shape.
fn analyse(ir: &Classifier) -> (Vec<Dim>, Vec<Shape>) {
    // Per rule: `None` residual, else its partial boxes (none: it never matches).
    let mut dims: Vec<Dim> = Vec::new();
    let mut per_rule: Vec<Option<Vec<Partial>>> = Vec::new();
    for rule in &ir.rules {
        let partial = conjuncts(rule).and_then(|atoms| {
            atoms.iter().try_fold(vec![Vec::new()], |acc, &a| {
                and_boxes(acc, &atom_boxes(&ir.atoms[a])?)
            })
        });
        let partial = if *rule == Expr::Const(false) {
            Some(Vec::new())
        } else {
            partial
        };
        if let Some(boxes) = &partial {
            for b in boxes {
                for (d, _) in b {
                    if !dims.contains(d) {
                        dims.push(*d);
                    }
                }
            }
        }
        per_rule.push(partial);
    }
    let shapes = per_rule
        .into_iter()
        .map(|r| match r {
            None => Shape::Residual,
            Some(boxes) if boxes.is_empty() => Shape::Never,
            Some(boxes) => Shape::Boxes(
                boxes
                    .iter()
                    .map(|b| {
                        dims.iter()
                            .map(|d| {
                                b.iter()
                                    .find(|(x, _)| x == d)
                                    .map_or_else(|| d.full(), |&(_, r)| r)
                            })
                            .collect()
                    })
                    .collect(),
            ),
        })
        .collect();
    (dims, shapes)
}

/// Splits the boxes (indices into `boxes`, in rule order) into the forest's trees: by which
/// of the (first `MAX_PARTITION_DIMS`) 32-bit field dimensions each box is small on, small
/// categories joining the largest (see the module doc).
fn partition(dims: &[Dim], boxes: &[(u32, Vec<(u64, u64)>)]) -> Vec<Vec<u32>> {
    // The 32-bit fields and the top part of each IPv6 address.
    let addr: Vec<usize> = (0..dims.len())
        .filter(|&d| {
            matches!(dims[d], Dim::Part(_, 0))
                || (matches!(dims[d], Dim::Field(_)) && dims[d].bits() == 33)
        })
        .take(MAX_PARTITION_DIMS)
        .collect();
    let mut groups: Vec<Vec<u32>> = vec![Vec::new(); 1 << addr.len()];
    for (i, (_, b)) in boxes.iter().enumerate() {
        let mut cat = 0;
        for (k, &d) in addr.iter().enumerate() {
            let (lo, hi) = b[d];
            if hi - lo < SMALL_WIDTH {
                cat |= 1 << k;
            }
        }
        groups[cat].push(i as u32);
    }
    let total = boxes.len();
    let masks: Vec<usize> = (0..groups.len()).collect();
    let big = |g: usize, groups: &[Vec<u32>]| groups[g].len() * 100 >= total * MERGE_PERCENT;
    let largest_big = |pred: &dyn Fn(usize) -> bool, groups: &[Vec<u32>]| {
        masks
            .iter()
            .copied()
            .filter(|&g| big(g, groups) && pred(g))
            .max_by_key(|&g| groups[g].len())
    };
    // Where each small category goes: the largest big one cutting only addresses it is
    // small on; else the largest sharing one small address with it (which separates its
    // rules early); else, when tiny, the largest; else it stays a tree of its own.
    let mut target: Vec<usize> = masks.clone();
    for &c in &masks {
        if groups[c].is_empty() || big(c, &groups) {
            continue;
        }
        let tiny = groups[c].len() * 100 < total * TINY_PERCENT;
        let found = largest_big(&|g| g & !c == 0, &groups)
            .or_else(|| largest_big(&|g| g & c != 0, &groups))
            .or_else(|| {
                if tiny {
                    largest_big(&|_| true, &groups)
                } else {
                    None
                }
            });
        if let Some(t) = found {
            target[c] = t;
        }
    }
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); groups.len()];
    for (c, group) in groups.into_iter().enumerate() {
        out[target[c]].extend(group);
    }
    // Box indices stay in rule order within each tree.
    for g in &mut out {
        g.sort_unstable();
    }
    out.retain(|g| !g.is_empty());
    out.sort_by_key(|g| std::cmp::Reverse(g.len()));
    out
}

struct Builder<'a> {
    /// Every box: its rule and its per-dimension ranges.
    boxes: &'a [(u32, Vec<(u64, u64)>)],
    nodes: Vec<u64>,
    /// Leaf words (logical, one value each); packed into `Part::leaves` at the end.
    words: Vec<u64>,
    leaf_boxes: usize,
    leaves: HashMap<Vec<u32>, u64>,
    /// Bytes of one box in the packed leaf table.
    box_bytes: usize,
    /// Bytes written plus, for each node not yet built, its boxes as one leaf.
    charged: usize,
    budget: usize,
    budget_reached: bool,
}

const LEAF: u64 = 1 << 63;

impl Builder<'_> {
    /// The leaf word for `list`, whose boxes are charged (as pending) on entry.
    fn leaf(&mut self, list: &[u32]) -> u64 {
        if let Some(&w) = self.leaves.get(list) {
            self.charged -= list.len() * self.box_bytes;
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

    /// The node word for `list` (box indices, in rule order) inside `region`; the boxes are
    /// charged (as pending) on entry.
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
            self.charged -= (list.len() - cover - 1) * self.box_bytes;
            list.truncate(cover + 1);
        }
        if list.len() <= LEAF_BOXES || depth >= MAX_DEPTH {
            return self.leaf(&list);
        }
        // Pick the dimension and cut count whose largest child is smallest.
        // (largest child, dim, cut bits, boxes in all children)
        let mut best: Option<(usize, usize, u32, usize)> = None;
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
                chosen = Some((largest as usize, c, total));
            }
            if let Some((largest, c, total)) = chosen {
                if best.is_none_or(|(l, ..)| largest < l) {
                    best = Some((largest, d, c, total));
                }
            }
        }
        let Some((largest, d, c, total)) = best else {
            return self.leaf(&list);
        };
        if largest >= list.len() {
            // No cut separates these boxes.
            return self.leaf(&list);
        }
        let n = 1usize << c;
        // Cutting writes `n` node words and leaves the children pending instead of this
        // node: within the budget, or this node stays a leaf.
        let after = self.charged - list.len() * self.box_bytes + total * self.box_bytes + n * 8;
        if after > self.budget {
            self.budget_reached = true;
            return self.leaf(&list);
        }
        self.charged = after;
        let (rlo, rhi) = region[d];
        let width_bits = 64 - (rhi - rlo).leading_zeros();
        let shift = width_bits - c;
        let mut children: Vec<Vec<u32>> = vec![Vec::new(); n];
        for &b in &list {
            let (lo, hi) = self.boxes[b as usize].1[d];
            let first = ((lo.max(rlo) - rlo) >> shift) as usize;
            let last = ((hi.min(rhi) - rlo) >> shift) as usize;
            for child in &mut children[first..=last] {
                child.push(b);
            }
        }
        drop(list);
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

/// What the burst function's residual pass needs besides the forest.
pub(super) struct BurstEnv<'a> {
    pub ir: &'a Classifier,
    /// The burst's `in_port` (i32) and scratch pointer (null without payload helpers).
    pub in_port: Value,
    pub scratch: Value,
    pub helper_sig: Option<SigRef>,
    /// The scratch reset helper's signature and address, with payload helpers.
    pub reset: Option<(SigRef, i64)>,
    /// The payload engine's gated runs (see [`super::payload`]); empty without one.
    pub gated: &'a [(u32, u32)],
}

impl Tree {
    /// Builds the forest under [`default_budget`] (see [`Tree::build_with`]).
    pub fn build(ir: &Classifier) -> Option<Tree> {
        Tree::build_with(ir, default_budget(ir.rules.len()))
    }

    /// Builds the forest of the header rules with its tables within `budget` bytes; `None`
    /// when there is no header rule or even one leaf per tree would not fit.
    pub fn build_with(ir: &Classifier, budget: usize) -> Option<Tree> {
        let started = Instant::now();
        let (dims, shapes) = analyse(ir);
        let mut boxes = Vec::new();
        let mut residual = Vec::new();
        let mut header_rules = 0;
        for (r, shape) in shapes.into_iter().enumerate() {
            match shape {
                Shape::Never => {}
                Shape::Residual => residual.push(r),
                Shape::Boxes(rb) => {
                    header_rules += 1;
                    boxes.extend(rb.into_iter().map(|b| (r as u32, b)));
                }
            }
        }
        if header_rules == 0 {
            return None;
        }
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
        let box_bytes = (1 + 2 * dims.len()) * word_bytes;
        let region: Vec<(u64, u64)> = dims.iter().map(|d| d.full()).collect();

        let groups = partition(&dims, &boxes);
        let mut left_budget = budget;
        let mut left_boxes = boxes.len();
        let mut parts = Vec::new();
        let mut stats = TreeStats {
            header_rules,
            residual_rules: residual.len(),
            subtrees: groups.len(),
            node_words: 0,
            leaf_boxes: 0,
            distinct_boxes: boxes.len(),
            bytes: 0,
            budget,
            budget_reached: false,
            ipv6_dims: dims.iter().any(|d| matches!(d, Dim::Part(..))),
            build_time: Duration::ZERO,
        };
        for group in groups {
            // This tree's share of what is left, in proportion to its boxes.
            let share =
                (left_budget as u128 * group.len() as u128 / left_boxes.max(1) as u128) as usize;
            left_boxes -= group.len();
            // The tree as one leaf (plus the padding box) must fit at least.
            let charged = (group.len() + 1) * box_bytes + 8;
            if charged > share {
                return None;
            }
            let cap = share.min(charged.saturating_mul(REPLICATION_CAP));
            let mut builder = Builder {
                boxes: &boxes,
                nodes: Vec::new(),
                words: Vec::new(),
                leaf_boxes: 0,
                leaves: HashMap::new(),
                box_bytes,
                charged,
                budget: cap,
                budget_reached: false,
            };
            let root = builder.node(group, &region, 0);
            // The padding box (see `emit_leaf_start`).
            builder
                .words
                .extend(std::iter::repeat_n(0, 1 + 2 * dims.len()));
            let Builder {
                nodes,
                words,
                leaf_boxes,
                charged,
                budget_reached,
                ..
            } = builder;
            let leaves = pack(&words, dims.len(), narrow, &wide_dims);
            let bytes = nodes.len() * 8 + leaves.len() * 8;
            debug_assert!(bytes <= charged, "{bytes} > {charged}");
            stats.node_words += nodes.len();
            stats.leaf_boxes += leaf_boxes;
            stats.bytes += bytes;
            stats.budget_reached |= budget_reached;
            left_budget = left_budget.saturating_sub(bytes);
            parts.push(Part {
                root,
                nodes,
                leaves,
            });
        }
        stats.build_time = started.elapsed();
        Some(Tree {
            dims,
            parts,
            word_bytes,
            wide_dims: if narrow { wide_dims } else { Vec::new() },
            residual,
            stats,
        })
    }

    /// What the build did.
    pub fn stats(&self) -> &TreeStats {
        &self.stats
    }

    /// The rules the forest leaves to the linear code, in order.
    pub(super) fn residual(&self) -> &[usize] {
        &self.residual
    }

    /// Logical word `i` of a leaf table.
    fn leaf_word(&self, part: &Part, i: usize) -> u64 {
        let at = i * self.word_bytes;
        let byte = |k: usize| (part.leaves[k / 8].to_ne_bytes())[k % 8];
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
        let s = &self.stats;
        (s.node_words, s.leaf_boxes, s.distinct_boxes, s.bytes)
    }

    /// The forest's walk done in Rust on a decoded frame: the first matching *header* rule
    /// (or `None`; residual rules are not looked at), the depth reached and the boxes
    /// scanned, summed over the trees. For tests and for tuning the build parameters.
    pub fn lookup(&self, frame: &[u8]) -> (Option<usize>, usize, usize) {
        let d = netvm_packet::Decoded::new(frame);
        let key: Vec<u64> = self.dims.iter().map(|dim| dim.value(&d)).collect();
        let (mut best, mut depth, mut scanned) = (None::<usize>, 0, 0);
        for part in &self.parts {
            let mut node = part.root;
            while node & LEAF == 0 {
                let dim = (node & 0xff) as usize;
                let shift = (node >> 8) & 0xff;
                let mask = (node >> 16) & 0xffff;
                let idx = (node >> 32) + ((key[dim] >> shift) & mask);
                node = part.nodes[idx as usize];
                depth += 1;
            }
            let stride = 1 + 2 * self.dims.len();
            let first = (node & 0xffff_ffff) as usize;
            let count = ((node >> 32) & 0x7fff_ffff) as usize;
            for i in 0..count {
                scanned += 1;
                let at = first + i * stride;
                let rule = self.leaf_word(part, at);
                let width = |k: usize| {
                    let w = self.leaf_word(part, at + 2 + 2 * k);
                    match self.wide_dims.iter().position(|&d| d == k) {
                        Some(f) => w | ((rule >> (24 + f)) & 1) << 32,
                        None => w,
                    }
                };
                if key
                    .iter()
                    .enumerate()
                    .all(|(k, &v)| v.wrapping_sub(self.leaf_word(part, at + 1 + 2 * k)) <= width(k))
                {
                    let rule = if self.word_bytes == 4 {
                        rule & RULE_BITS
                    } else {
                        rule
                    } as usize;
                    best = Some(best.map_or(rule, |b| b.min(rule)));
                    break;
                }
            }
        }
        (best, depth, scanned)
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
                Dim::Field(field) | Dim::Part(field, _) => {
                    let present = p.field_present(fb, field);
                    let read = fb.create_block();
                    let join = fb.create_block();
                    let key = fb.append_block_param(join, i64t);
                    let absent = match *dim {
                        Dim::Part(..) => 1i64 << 32,
                        _ => 1i64 << field.ty().bits(),
                    };
                    let sentinel = fb.ins().iconst(i64t, absent);
                    fb.ins()
                        .brif(present, read, &[], join, &[BlockArg::Value(sentinel)]);
                    fb.switch_to_block(read);
                    let mut v = p.field_load(fb, field);
                    if let Dim::Part(_, k) = *dim {
                        // Part k of the i128 address: its bits 96 - 32k .. 128 - 32k.
                        let shifted = fb.ins().ushr_imm_u(v, 96 - 32 * i64::from(k));
                        let low = fb.ins().ireduce(i64t, shifted);
                        v = fb.ins().band_imm_u(low, 0xffff_ffff);
                    }
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
    fn emit_step(
        &self,
        fb: &mut FunctionBuilder,
        part: &Part,
        node: Value,
        key_base: Value,
    ) -> Value {
        let i64t = types::I64;
        // SAFETY (of the loads below, which Cranelift cannot check): `dim` < dims.len() by
        // construction of every internal word, so the key load stays in the frame's key;
        // `children + ((key >> shift) & mask)` < nodes.len() because the builder reserved
        // `mask + 1` child words at `children`; the tables live in this `Tree`, which the
        // `Jit` keeps alive as long as the code and never mutates.
        let table = MemFlagsData::trusted().with_readonly();
        let nodes = fb.ins().iconst(i64t, part.nodes.as_ptr() as i64);
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
    fn emit_leaf_start(&self, fb: &mut FunctionBuilder, part: &Part, node: Value) -> Value {
        let leaves = fb.ins().iconst(types::I64, part.leaves.as_ptr() as i64);
        let first = fb.ins().band_imm_u(node, 0xffff_ffff);
        let start = fb.ins().imul_imm_u(first, self.word_bytes as i64);
        fb.ins().iadd(leaves, start)
    }

    /// The leaf scan of the leaf word `node`: boxes in rule order, the first containing the
    /// key wins. Jumps to `done` with the rule index (i32), or the default.
    fn emit_scan(
        &self,
        fb: &mut FunctionBuilder,
        part: &Part,
        node: Value,
        keys: &[Value],
        default: i64,
        done: Block,
    ) {
        if self.wide_dims.is_empty() {
            self.emit_scan_with(fb, part, node, keys, default, done, false);
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
        self.emit_scan_with(fb, part, node, keys, default, done, false);
        fb.switch_to_block(slow);
        self.emit_scan_with(fb, part, node, keys, default, done, true);
    }

    /// [`Tree::emit_scan`], reading the widths' bit 32 from the rule word or not.
    #[allow(clippy::too_many_arguments)]
    fn emit_scan_with(
        &self,
        fb: &mut FunctionBuilder,
        part: &Part,
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
        let start = self.emit_leaf_start(fb, part, node);
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

    /// The single-frame body: key computation, each tree's walk and leaf scan, the lowest
    /// answer, then the residual rules below it (`e.parse` must reach their level); returns
    /// the rule index.
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
        let default = e.ir.rules.len() as i64;
        let mut best = None;
        for part in &self.parts {
            let node = self.emit_walk(fb, part, key_base);
            let done = fb.create_block();
            let rule = fb.append_block_param(done, types::I32);
            self.emit_scan(fb, part, node, &keys, default, done);
            fb.switch_to_block(done);
            best = Some(match best {
                None => rule,
                Some(b) => fb.ins().umin(b, rule),
            });
        }
        let best = best.unwrap_or_else(|| fb.ins().iconst(types::I32, default));
        e.rules_in_order(fb, &self.residual, Some(best), &mut |fb, r| {
            fb.ins().return_(&[r]);
        });
    }

    /// The walk from a tree's root to a leaf for the key at `key_base`: the leaf word.
    fn emit_walk(&self, fb: &mut FunctionBuilder, part: &Part, key_base: Value) -> Value {
        let i64t = types::I64;
        let walk = fb.create_block();
        let node = fb.append_block_param(walk, i64t);
        let inner = fb.create_block();
        let leaf = fb.create_block();
        let root = fb.ins().iconst(i64t, part.root as i64);
        fb.ins().jump(walk, &[BlockArg::Value(root)]);

        fb.switch_to_block(walk);
        let is_leaf = fb.ins().icmp_imm_u(IntCC::SignedLessThan, node, 0);
        fb.ins().brif(is_leaf, leaf, &[], inner, &[]);

        fb.switch_to_block(inner);
        let next = self.emit_step(fb, part, node, key_base);
        fb.ins().jump(walk, &[BlockArg::Value(next)]);

        fb.switch_to_block(leaf);
        node
    }

    /// The burst body, `(frames: *const *const u8, lens: *const usize, n: usize,
    /// out: *mut u32)` with `n <= MAX_BURST` (see the module doc for the passes). Keeping
    /// the leaf scans (whose exits are data-dependent branches) out of the parse and walk
    /// loop measured ~10% faster than one pass; walking the frames level by level together
    /// (to overlap cache misses) measured slower — most node loads hit the cache and the
    /// bookkeeping costs more than the overlap saves.
    pub(super) fn emit_burst(
        &self,
        fb: &mut FunctionBuilder,
        [ptrs, lens, n, out]: [Value; 4],
        env: &BurstEnv,
    ) {
        let i64t = types::I64;
        let i32t = types::I32;
        let default = env.ir.rules.len() as i64;
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
        let after_keys = fb.create_block();
        super::emit_frame_loop(fb, n, after_keys, |fb, i| {
            // SAFETY: the parse reads only inside each frame (see `parse`).
            let (ptr, len) = super::emit_frame(fb, ptrs, lens, i);
            let parse = Parse::emit(fb, ptr, len, self.level());
            let keys = self.emit_key(fb, &parse);
            let kb = key_at(fb, i);
            for (d, &k) in keys.iter().enumerate() {
                fb.ins().store(mem, k, kb, (d * 8) as i32);
            }
        });

        for (p, part) in self.parts.iter().enumerate() {
            // Pass 2: the walks, WALK_GROUP frames at a time in lockstep, branch-free in
            // registers, so that their dependent chains of node loads overlap. A frame that
            // has reached its leaf keeps its word (its step is computed from the root's word,
            // which is always safe to step, and thrown away).
            let zero = fb.ins().iconst(i64t, 0);
            let ghead = fb.create_block();
            let g = fb.append_block_param(ghead, i64t);
            let gbody = fb.create_block();
            let walk = fb.create_block();
            let step = fb.create_block();
            let stored = fb.create_block();
            let leaves = fb.create_block();
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
            let root = fb.ins().iconst(i64t, part.root as i64);
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
            let root = fb.ins().iconst(i64t, part.root as i64);
            let mut next_args = Vec::new();
            for (&w, &kb) in words.iter().zip(&key_bases) {
                let leaf = fb.ins().icmp_imm_u(IntCC::SignedLessThan, w, 0);
                let safe = fb.ins().select(leaf, root, w);
                let next = self.emit_step(fb, part, safe, kb);
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
                let first = self.emit_leaf_start(fb, part, w);
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

            // Pass 3: each frame's leaf; after the first tree, the lower of the answers.
            fb.switch_to_block(leaves);
            let after_scans = fb.create_block();
            super::emit_frame_loop(fb, n, after_scans, |fb, i| {
                let a = at(fb, leaf_base, i, 3);
                let node = fb.ins().load(i64t, mem, a, 0);
                let kb = key_at(fb, i);
                let keys: Vec<Value> = (0..self.dims.len())
                    .map(|d| fb.ins().load(i64t, mem, kb, (d * 8) as i32))
                    .collect();
                let done = fb.create_block();
                let rule = fb.append_block_param(done, i32t);
                // SAFETY: the caller passes `out` with room for `n` u32s.
                let a = at(fb, out, i, 2);
                if p == 0 {
                    self.emit_scan(fb, part, node, &keys, default, done);
                    fb.switch_to_block(done);
                    fb.ins().store(mem, rule, a, 0);
                    return;
                }
                // A leaf whose first box's rule is not below the answer so far cannot
                // lower it (boxes are in rule order; an empty leaf's first word is the next
                // leaf's or the padding box's, and skipping an empty leaf is right anyway).
                let before = fb.ins().load(i32t, mem, a, 0);
                let first = self.emit_leaf_start(fb, part, node);
                let table = MemFlagsData::trusted().with_readonly();
                // SAFETY: there is always a whole box at a leaf's start (see above).
                let mut first_rule = if self.word_bytes == 4 {
                    fb.ins().uload32(table, first, 0)
                } else {
                    fb.ins().load(i64t, table, first, 0)
                };
                if self.word_bytes == 4 {
                    first_rule = fb.ins().band_imm_u(first_rule, RULE_BITS as i64);
                }
                let before64 = fb.ins().uextend(i64t, before);
                let hopeless = fb
                    .ins()
                    .icmp(IntCC::UnsignedLessThanOrEqual, before64, first_rule);
                let scan = fb.create_block();
                let join = fb.create_block();
                let lowest = fb.append_block_param(join, i32t);
                fb.ins()
                    .brif(hopeless, join, &[BlockArg::Value(before)], scan, &[]);
                fb.switch_to_block(scan);
                self.emit_scan(fb, part, node, &keys, default, done);
                fb.switch_to_block(done);
                let min = fb.ins().umin(before, rule);
                fb.ins().jump(join, &[BlockArg::Value(min)]);
                fb.switch_to_block(join);
                fb.ins().store(mem, lowest, a, 0);
            });
        }

        // Pass 4: the residual rules, for the frames whose answer is above the first one.
        if let Some(&first) = self.residual.first() {
            let exit = fb.create_block();
            let level = level_of_rules(env.ir, &self.residual);
            super::emit_frame_loop(fb, n, exit, |fb, i| {
                let a = at(fb, out, i, 2);
                let found = fb.ins().load(i32t, mem, a, 0);
                let work = fb.create_block();
                let next = fb.create_block();
                let skip = fb
                    .ins()
                    .icmp_imm_u(IntCC::UnsignedLessThanOrEqual, found, first as i64);
                fb.ins().brif(skip, next, &[], work, &[]);
                fb.switch_to_block(work);
                if let Some((sig, reset)) = env.reset {
                    let callee = fb.ins().iconst(i64t, reset);
                    fb.ins().call_indirect(sig, callee, &[env.scratch]);
                }
                // SAFETY: the parse reads only inside each frame (see `parse`).
                let (ptr, len) = super::emit_frame(fb, ptrs, lens, i);
                let emitter = RuleEmitter {
                    ir: env.ir,
                    parse: Parse::emit(fb, ptr, len, level),
                    in_port: env.in_port,
                    scratch: env.scratch,
                    helper_sig: env.helper_sig,
                    gated: env.gated,
                };
                emitter.rules_in_order(fb, &self.residual, Some(found), &mut |fb, r| {
                    fb.ins().store(mem, r, a, 0);
                    fb.ins().jump(next, &[]);
                });
                fb.switch_to_block(next);
            });
        }
        fb.ins().return_(&[]);
    }
}

/// Packs logical leaf words (per box: rule, then `(lo, width)` per dimension) into the table
/// the code reads: 4-byte words with the wide dimensions' width bit 32 in the rule word when
/// `narrow`, else 8-byte words.
fn pack(words: &[u64], dims: usize, narrow: bool, wide_dims: &[usize]) -> Vec<u64> {
    let word_bytes = if narrow { 4 } else { 8 };
    let mut bytes = Vec::with_capacity(words.len() * word_bytes + 8);
    if narrow {
        for b in words.chunks(1 + 2 * dims) {
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
        for &w in words {
            bytes.extend_from_slice(&w.to_ne_bytes());
        }
    }
    bytes
        .chunks(8)
        .map(|c| {
            let mut b = [0u8; 8];
            b[..c.len()].copy_from_slice(c);
            u64::from_ne_bytes(b)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A firewall-like set generated here: every rule wildcards one address (alternating
    /// sides) and names a /24 or longer on the other, with port ranges — what replicates
    /// without partitioning (every cut of the named address copies every wildcard rule).
    fn wildcard_heavy(rules: usize) -> Classifier {
        let mut ir = Classifier {
            atoms: Vec::new(),
            rules: Vec::new(),
            literals: Vec::new(),
            regexes: Vec::new(),
        };
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let atom = |ir: &mut Classifier, a: Atom| {
            ir.atoms.push(a);
            Expr::Atom(ir.atoms.len() - 1)
        };
        for i in 0..rules {
            let len = 24 + (next() % 9) as u32;
            let host = (1u128 << (32 - len)) - 1;
            let addr = u128::from(next() as u32) & !host;
            let field = if i % 2 == 0 {
                Field::IpSrc
            } else {
                Field::IpDst
            };
            let lo = u128::from(next() as u16 % 2000);
            let a = atom(
                &mut ir,
                Atom::Field {
                    field,
                    mask: None,
                    ranges: vec![(addr, addr | host)],
                },
            );
            let p = atom(
                &mut ir,
                Atom::Field {
                    field: Field::TcpDport,
                    mask: None,
                    ranges: vec![(lo, lo + u128::from(next() as u16 % 3000))],
                },
            );
            ir.rules.push(Expr::And(vec![a, p]));
        }
        ir
    }

    fn frame(src: u32, dst: u32, dport: u16) -> Vec<u8> {
        let mut spec = netvm_packet::PacketSpec::new(netvm_packet::BaseProto::Tcp);
        spec.set(Field::IpSrc, u128::from(src));
        spec.set(Field::IpDst, u128::from(dst));
        spec.set(Field::TcpDport, u128::from(dport));
        spec.build().unwrap_or_default()
    }

    #[test]
    fn the_memory_budget_holds_on_a_wildcard_heavy_set() {
        let ir = wildcard_heavy(4000);
        for budget in [1 << 20, 4 << 20, DEFAULT_BUDGET] {
            let t = Tree::build_with(&ir, budget).expect("one leaf per tree fits");
            let s = t.stats();
            eprintln!("{s:?}");
            assert!(s.bytes <= budget, "{s:?}");
            // Partitioned: the source-wildcard and destination-wildcard halves apart.
            assert_eq!(s.subtrees, 2, "{s:?}");
            // Replication stays small: the two halves do not copy each other's rules.
            assert!(s.leaf_boxes < 8 * s.distinct_boxes, "{s:?}");
        }
        // Too small for even one leaf per tree: no forest at all.
        assert!(Tree::build_with(&ir, 1000).is_none());
        // Small budgets stop the cutting but keep the answers.
        let t = Tree::build_with(&ir, 150_000).expect("fits as big leaves");
        assert!(
            t.stats().budget_reached && t.stats().bytes <= 150_000,
            "{:?}",
            t.stats()
        );
        let interp = crate::Interpreter::new(ir.clone()).expect("no regexes");
        let mut state = 7u32;
        for k in 0..2000u32 {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            // Half the frames on a rule's own address, half random.
            let (src, dst) = match &ir.atoms[(2 * (k as usize % 4000)) % ir.atoms.len()] {
                Atom::Field { field, ranges, .. } if k % 2 == 0 => {
                    let a = ranges[0].0 as u32;
                    if *field == Field::IpSrc {
                        (a, state)
                    } else {
                        (state, a)
                    }
                }
                _ => (state, state.rotate_left(7)),
            };
            let f = frame(src, dst, (state % 5000) as u16);
            let want = interp.classify(&f, crate::NO_PORT);
            assert_eq!(t.lookup(&f).0, want, "frame {k}");
        }
    }
}
