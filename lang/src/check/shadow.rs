//! W001: rules that an earlier rule fully covers, so they can never match.
//!
//! Each rule's predicate is put in disjunctive normal form over atoms: `field ∈ set` (one
//! interval set per field and mask, intersected within a conjunction), protocol presence, and
//! opaque atoms (payload tests, negations) that only cover an identical atom. Rule B is
//! shadowed when one earlier rule A covers every conjunction of B, and A's conjunction covers
//! B's when every constraint of A is implied by B's (B's set ⊆ A's set for each field A tests,
//! A's protocols present whenever B matches, A's opaque atoms among B's). This is sound (a
//! warning is never wrong) and complete for conjunctions of comparisons, ranges, prefixes and
//! sets. A rule whose normal form would exceed [`MAX_CONJUNCTS`] is not analysed.

use netvm_packet::{Field, FieldHeader, Proto};

use crate::diag::{Code, Diagnostic};
use crate::interval::IntervalSet;
use crate::policy::{PayloadTest, Policy, Pred, PredKind};
use crate::source::Span;

const MAX_CONJUNCTS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Key {
    Field(Field, Option<u128>),
    InPort,
    PayloadByte(u16, Option<u8>),
}

#[derive(Debug, Clone, Default)]
struct Conj {
    /// Sorted by key, one set per key.
    sets: Vec<(Key, IntervalSet)>,
    /// Bit per `Proto` that must be present.
    protos: u16,
    needs_l4: bool,
    needs_payload: bool,
    opaque: Vec<PredKind>,
}

fn proto_bit(p: Proto) -> u16 {
    1 << (p as u16)
}

impl Conj {
    fn and(&self, other: &Conj) -> Option<Conj> {
        let mut sets = self.sets.clone();
        for (key, set) in &other.sets {
            match sets.binary_search_by(|(k, _)| k.cmp(key)) {
                Ok(i) => {
                    let both = sets[i].1.intersect(set);
                    if both.is_empty() {
                        return None;
                    }
                    sets[i].1 = both;
                }
                Err(i) => sets.insert(i, (*key, set.clone())),
            }
        }
        let mut opaque = self.opaque.clone();
        for o in &other.opaque {
            if !opaque.contains(o) {
                opaque.push(o.clone());
            }
        }
        Some(Conj {
            sets,
            protos: self.protos | other.protos,
            needs_l4: self.needs_l4 || other.needs_l4,
            needs_payload: self.needs_payload || other.needs_payload,
            opaque,
        })
    }

    /// Protocols certainly present when this conjunction holds.
    fn implied_protos(&self) -> u16 {
        let mut bits = self.protos;
        for (key, _) in &self.sets {
            if let Key::Field(f, _) = key {
                if let FieldHeader::Proto(p) = f.header() {
                    bits |= proto_bit(p);
                }
            }
        }
        if bits & !proto_bit(Proto::Eth) != 0 {
            bits |= proto_bit(Proto::Eth);
        }
        bits
    }

    fn implies_l4(&self) -> bool {
        let p = self.implied_protos();
        self.needs_l4
            || p & (proto_bit(Proto::Tcp) | proto_bit(Proto::Udp)) != 0
            || self
                .sets
                .iter()
                .any(|(k, _)| matches!(k, Key::Field(f, _) if f.header() == FieldHeader::TcpOrUdp))
    }

    fn implies_payload(&self) -> bool {
        self.needs_payload
            || self.sets.iter().any(|(k, _)| {
                matches!(k, Key::PayloadByte(..))
                    || matches!(k, Key::Field(f, _) if f.header() == FieldHeader::Payload)
            })
    }

    /// Whether every packet satisfying `other` satisfies `self`.
    fn covers(&self, other: &Conj) -> bool {
        for (key, set) in &self.sets {
            match other.sets.binary_search_by(|(k, _)| k.cmp(key)) {
                Ok(i) if other.sets[i].1.is_subset(set) => {}
                _ => return false,
            }
        }
        if self.protos & !other.implied_protos() != 0 {
            return false;
        }
        if self.needs_l4 && !other.implies_l4() {
            return false;
        }
        if self.needs_payload && !other.implies_payload() {
            return false;
        }
        self.opaque.iter().all(|o| other.opaque.contains(o))
    }
}

/// Spans set to default, so that structurally equal predicates compare equal.
fn strip(pred: &Pred) -> PredKind {
    match &pred.kind {
        PredKind::And(v) => PredKind::And(v.iter().map(stripped).collect()),
        PredKind::Or(v) => PredKind::Or(v.iter().map(stripped).collect()),
        PredKind::Not(p) => PredKind::Not(Box::new(stripped(p))),
        other => other.clone(),
    }
}

fn stripped(pred: &Pred) -> Pred {
    Pred {
        kind: strip(pred),
        span: Span::default(),
    }
}

fn atom(key: Key, set: &IntervalSet) -> Conj {
    Conj {
        sets: vec![(key, set.clone())],
        ..Conj::default()
    }
}

/// The normal form; `None` when it grows too large.
fn dnf(pred: &Pred, negated: bool) -> Option<Vec<Conj>> {
    let opaque = || {
        let kind = strip(pred);
        let kind = if negated {
            PredKind::Not(Box::new(Pred {
                kind,
                span: Span::default(),
            }))
        } else {
            kind
        };
        Some(vec![Conj {
            opaque: vec![kind],
            ..Conj::default()
        }])
    };
    match (&pred.kind, negated) {
        (PredKind::True, false) | (PredKind::False, true) => Some(vec![Conj::default()]),
        (PredKind::True, true) | (PredKind::False, false) => Some(Vec::new()),
        (PredKind::Not(inner), _) => dnf(inner, !negated),
        (PredKind::And(items), false) | (PredKind::Or(items), true) => {
            let mut acc = vec![Conj::default()];
            for item in items {
                let next = dnf(item, negated)?;
                let mut product = Vec::new();
                for a in &acc {
                    for b in &next {
                        if let Some(c) = a.and(b) {
                            product.push(c);
                        }
                    }
                }
                if product.len() > MAX_CONJUNCTS {
                    return None;
                }
                acc = product;
            }
            Some(acc)
        }
        (PredKind::Or(items), false) | (PredKind::And(items), true) => {
            let mut all = Vec::new();
            for item in items {
                all.extend(dnf(item, negated)?);
                if all.len() > MAX_CONJUNCTS {
                    return None;
                }
            }
            Some(all)
        }
        (_, true) => opaque(),
        (PredKind::Proto(p), false) => Some(vec![Conj {
            protos: proto_bit(*p),
            ..Conj::default()
        }]),
        (PredKind::Field { field, mask, set }, false) => {
            if set.is_empty() {
                return Some(Vec::new());
            }
            let mut c = atom(Key::Field(*field, *mask), set);
            if field.header() == FieldHeader::TcpOrUdp {
                c.needs_l4 = true;
            }
            Some(vec![c])
        }
        (PredKind::InPort { ports }, false) => Some(vec![atom(Key::InPort, ports)]),
        (PredKind::PayloadByte { index, mask, set }, false) => {
            Some(vec![atom(Key::PayloadByte(*index, *mask), set)])
        }
        (PredKind::Payload(_), false) => {
            let mut forms = opaque()?;
            forms[0].needs_payload = true;
            Some(forms)
        }
    }
}

/// A conjunction whose every set is one interval, as a dense box over the policy's keys: the
/// fast path that makes the pairwise scan affordable for 10,000-rule policies.
struct Box_ {
    /// Bit `k` set when key `k` is constrained.
    keys: u64,
    lo: Vec<u128>,
    hi: Vec<u128>,
}

impl Box_ {
    /// Necessary for `a` to cover `b` (sufficient too, for the sets; protocols and opaque atoms
    /// are checked after).
    fn may_cover(&self, other: &Box_) -> bool {
        if self.keys & !other.keys != 0 {
            return false;
        }
        let mut bits = self.keys;
        while bits != 0 {
            let k = bits.trailing_zeros() as usize;
            if self.lo[k] > other.lo[k] || other.hi[k] > self.hi[k] {
                return false;
            }
            bits &= bits - 1;
        }
        true
    }
}

fn boxes(forms: &[Option<Vec<Conj>>]) -> Vec<Option<Box_>> {
    // Keys in order of how many distinct sets they take: the most selective is compared first.
    let mut distinct: std::collections::HashMap<Key, std::collections::HashSet<(u128, u128)>> =
        std::collections::HashMap::new();
    for conj in forms.iter().flatten().flatten() {
        for (key, set) in &conj.sets {
            if let Some(h) = set.hull() {
                distinct.entry(*key).or_default().insert(h);
            }
        }
    }
    let mut keys: Vec<(Key, usize)> = distinct.iter().map(|(k, v)| (*k, v.len())).collect();
    keys.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    if keys.len() > 64 {
        return forms.iter().map(|_| None).collect();
    }
    let index: std::collections::HashMap<Key, usize> =
        keys.iter().enumerate().map(|(i, (k, _))| (*k, i)).collect();
    forms
        .iter()
        .map(|form| {
            let [conj] = form.as_deref()? else {
                return None;
            };
            let mut b = Box_ {
                keys: 0,
                lo: vec![0; keys.len()],
                hi: vec![0; keys.len()],
            };
            for (key, set) in &conj.sets {
                let [(lo, hi)] = set.ranges() else {
                    return None;
                };
                let k = index[key];
                b.keys |= 1 << k;
                b.lo[k] = *lo;
                b.hi[k] = *hi;
            }
            Some(b)
        })
        .collect()
}

/// The aligned power-of-two block `[lo, hi]` is one (a prefix), if it is.
fn is_block(lo: u128, hi: u128) -> bool {
    let size_minus_one = hi - lo;
    size_minus_one & size_minus_one.wrapping_add(1) == 0 && lo & size_minus_one == 0
}

/// Every aligned block containing `[lo, hi]` whose size (`2^bits`) is among `sizes`.
fn enclosing_blocks(lo: u128, hi: u128, sizes: &[u32]) -> impl Iterator<Item = (u128, u128)> + '_ {
    sizes.iter().filter_map(move |&bits| {
        let mask = u128::MAX.checked_shl(bits).unwrap_or(0);
        let (blo, bhi) = (lo & mask, lo | !mask);
        (bhi >= hi).then_some((blo, bhi))
    })
}

/// A cheap hasher for the block index (keys are a few small integers; SipHash dominated
/// the lookups at 100,000 rules).
#[derive(Default)]
struct BlockHasher(u64);

impl std::hash::Hasher for BlockHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_u128(&mut self, v: u128) {
        self.write_u64(v as u64);
        self.write_u64((v >> 64) as u64);
    }
    fn write_usize(&mut self, v: usize) {
        self.write_u64(v as u64);
    }
}

type BlockIndex = std::collections::HashMap<
    (usize, u128, u128),
    Vec<usize>,
    std::hash::BuildHasherDefault<BlockHasher>,
>;

/// The key a box is indexed by: the most selective key whose set is an aligned block.
fn block_key(bx: &Box_) -> Option<(usize, u128, u128)> {
    let mut bits = bx.keys;
    while bits != 0 {
        let k = bits.trailing_zeros() as usize;
        if is_block(bx.lo[k], bx.hi[k]) {
            return Some((k, bx.lo[k], bx.hi[k]));
        }
        bits &= bits - 1;
    }
    None
}

/// The payload test an opaque atom is, if it is one (not negated).
fn payload_test(kind: &PredKind) -> Option<&PayloadTest> {
    match kind {
        PredKind::Payload(t) => Some(t),
        _ => None,
    }
}

/// Each conjunction's first payload test, when every conjunction has one.
fn payload_keys(form: Option<&[Conj]>) -> Option<Vec<&PayloadTest>> {
    let form = form.filter(|f| !f.is_empty())?;
    form.iter()
        .map(|c| c.opaque.iter().find_map(payload_test))
        .collect()
}

/// Adds a W001 for every root rule that one earlier rule covers.
///
/// Candidates are found through an index of aligned blocks: an earlier rule is indexed by
/// its most selective key whose set is a prefix (a block), and it can only cover a rule that
/// constrains that key to a set inside that block, so it is looked up, per key the later rule
/// constrains, among the (at most 129) blocks enclosing the later rule's set whose sizes were
/// indexed on that key. An earlier rule with no block but a payload test in each conjunction
/// is looked up by the later rule's payload tests. Only the rest (ranges only, no key, no
/// payload test) are compared directly. The answer is the earliest covering rule, as a scan
/// would find it.
pub fn warn_shadowed(policy: &Policy, diags: &mut Vec<Diagnostic>) {
    let forms: Vec<Option<Vec<Conj>>> = policy.rules.iter().map(|r| dnf(&r.pred, false)).collect();
    let boxes = boxes(&forms);
    let mut by_block = BlockIndex::default();
    let mut general: Vec<usize> = Vec::new();
    // Per key, the sizes (as bit counts) of the blocks indexed so far: only those need a
    // lookup.
    let mut block_sizes: Vec<Vec<u32>> = vec![Vec::new(); 64];
    // Earlier rules each of whose conjunctions has a payload test, listed under each
    // conjunction's first one: such a rule covers a conjunction only if that test is among
    // the conjunction's opaque atoms (10,000 `payload contains` rules are not compared
    // pairwise).
    let mut by_payload: std::collections::HashMap<&PayloadTest, Vec<usize>> =
        std::collections::HashMap::new();
    let covers = |a: usize, b: usize, b_form: &[Conj]| {
        if let (Some(a_box), Some(b_box)) = (&boxes[a], &boxes[b]) {
            if !a_box.may_cover(b_box) {
                return false;
            }
        }
        match &forms[a] {
            Some(a_form) => b_form
                .iter()
                .all(|cb| a_form.iter().any(|ca| ca.covers(cb))),
            None => false,
        }
    };
    for (b, rule) in policy.rules.iter().enumerate() {
        let indexed_key = boxes[b].as_ref().and_then(block_key);
        if let Some(b_form) = forms[b].as_ref().filter(|f| !f.is_empty()) {
            let mut coverer = general.iter().copied().find(|&a| covers(a, b, b_form));
            for test in b_form[0].opaque.iter().filter_map(payload_test) {
                if let Some(list) = by_payload.get(test) {
                    if let Some(a) = list.iter().copied().find(|&a| covers(a, b, b_form)) {
                        coverer = Some(coverer.map_or(a, |c| c.min(a)));
                    }
                }
            }
            match &boxes[b] {
                Some(bx) => {
                    let mut bits = bx.keys;
                    while bits != 0 {
                        let k = bits.trailing_zeros() as usize;
                        bits &= bits - 1;
                        for (lo, hi) in enclosing_blocks(bx.lo[k], bx.hi[k], &block_sizes[k]) {
                            let Some(list) = by_block.get(&(k, lo, hi)) else {
                                continue;
                            };
                            // Only rules before the best so far can improve on it.
                            let limit = coverer.unwrap_or(b);
                            if let Some(a) = list
                                .iter()
                                .copied()
                                .take_while(|&a| a < limit)
                                .find(|&a| covers(a, b, b_form))
                            {
                                coverer = Some(a);
                            }
                        }
                    }
                }
                // Not a box: every earlier rule is a candidate.
                None => {
                    coverer = (0..b).find(|&a| covers(a, b, b_form));
                }
            }
            if let Some(a) = coverer {
                let earlier = &policy.rules[a];
                diags.push(
                    Diagnostic::new(
                        Code::Shadowed,
                        rule.span,
                        format!(
                            "rule `{}` can never match: rule `{}` before it matches all its packets",
                            rule.name, earlier.name
                        ),
                    )
                    .label("shadowed")
                    .note(earlier.span, "this earlier rule covers it")
                    .help(format!(
                        "move `{}` above `{}`, or remove it",
                        rule.name, earlier.name
                    )),
                );
            }
        }
        match indexed_key {
            Some((k, lo, hi)) => {
                let bits = 128 - (hi - lo).leading_zeros();
                if !block_sizes[k].contains(&bits) {
                    block_sizes[k].push(bits);
                }
                by_block.entry((k, lo, hi)).or_default().push(b)
            }
            _ => match payload_keys(forms[b].as_deref()) {
                Some(keys) => {
                    for key in keys {
                        let list = by_payload.entry(key).or_default();
                        if list.last() != Some(&b) {
                            list.push(b);
                        }
                    }
                }
                None => general.push(b),
            },
        }
    }
}
