//! The JIT against the reference interpreter: same rule index on every frame.
//!
//! Each proptest case is a seed. From it a deterministic generator builds a random classifier
//! over the whole field catalogue (every `Field`, every `Proto`, `in_port`, payload bytes,
//! `contains`, `starts_with`, `matches`; masks; single values, ranges and sets; `and`/`or`/`not`)
//! whose constants are drawn half the time from the frames under test, so rules do match; then
//! frames: built with `PacketSpec` to hit each rule, built from random specs, assembled by hand
//! to reach what the builder does not write (two VLAN tags, IPv4 options and fragments, IPv6
//! extension chains, short TCP data offsets, bogus lengths), plus every truncation of some and
//! random byte mutations of all. Each (policy, frame, in_port) triple is one comparison.
//!
//! Scale: `NETVM_DIFF_POLICIES` (default 200) policies per strategy. The default runs well over
//! 100,000 comparisons in a debug build in well under a minute; the long run is
//! `NETVM_DIFF_POLICIES=20000 cargo test --release -p netvm-compiler --test differential`
//! (recorded in BENCHMARKS.md). A failure prints the seed, the classifier and the frame.

use netvm_compiler::ir::{Atom, Classifier, Expr};
use netvm_compiler::jit::Strategy;
use netvm_compiler::{Interpreter, Jit, NO_PORT};
use netvm_packet::{BaseProto, Decoded, Field, FieldHeader, PacketSpec, Proto};
use proptest::prelude::*;
use std::sync::atomic::{AtomicU64, Ordering};

/// SplitMix64: small, deterministic, good enough for test generation.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

const WORDS: &[&[u8]] = &[
    b"GET ",
    b"evil",
    b"SSH-",
    b"ab",
    b"a",
    b"\x16\x03",
    b"",
    b"xyz",
];
const REGEXES: &[&str] = &[
    r"union\s+select",
    r"(?i)get /admin",
    r"^ab",
    r"a[bc]+d$",
    r"\x16\x03[\x00-\x03]",
    r"",
    r"x.{0,3}z",
];

fn payload(rng: &mut Rng) -> Vec<u8> {
    let mut p = Vec::new();
    for _ in 0..rng.below(5) {
        if rng.chance(2) {
            p.extend_from_slice(WORDS[rng.below(WORDS.len())]);
        } else {
            let n = rng.below(6);
            p.extend(rng.bytes(n));
        }
    }
    p
}

/// A random spec the builder accepts (or the default of its base).
fn random_frame(rng: &mut Rng) -> Vec<u8> {
    let base = *rng.pick(&BaseProto::ALL);
    let mut spec = PacketSpec::new(base);
    for _ in 0..rng.below(4) {
        let f = *rng.pick(Field::ALL);
        let mut v = u128::from(rng.next()) & f.ty().max_value();
        if matches!(f, Field::PktLen | Field::PayloadLen | Field::IpLen) {
            // Keep frames small: every truncation of some is classified.
            v %= 300;
        }
        spec.set(f, v);
    }
    if rng.chance(2) {
        spec.payload = Some(payload(rng));
    }
    spec.build()
        .or_else(|_| {
            let mut spec = PacketSpec::new(base);
            spec.payload = Some(payload(rng));
            spec.build()
        })
        .unwrap_or_default()
}

/// A frame assembled by hand: what the builder does not write.
fn handmade_frame(rng: &mut Rng) -> Vec<u8> {
    let mut f = rng.bytes(12);
    for _ in 0..rng.below(3) {
        f.extend_from_slice(if rng.chance(2) {
            &[0x81, 0]
        } else {
            &[0x88, 0xa8]
        });
        f.extend(rng.bytes(2));
    }
    let l3 = rng.below(4);
    let upper;
    match l3 {
        0 => {
            f.extend_from_slice(&[0x08, 0x00]);
            let ihl = if rng.chance(8) {
                rng.below(16)
            } else {
                5 + rng.below(3)
            };
            let start = f.len();
            f.push(if rng.chance(10) { 0x60 } else { 0x40 } | ihl as u8);
            f.extend(rng.bytes(ihl.max(5) * 4 - 1));
            upper = *rng.pick(&[6u8, 17, 1, 58, 47, 6, 17]);
            f[start + 9] = upper;
            if !rng.chance(5) {
                f[start + 6] = if rng.chance(2) { 0x20 } else { 0 };
                f[start + 7] = 0;
            }
            let total = ihl.max(5) * 4 + rng.below(80);
            if !rng.chance(4) {
                f[start + 2..start + 4].copy_from_slice(&(total as u16).to_be_bytes());
            }
        }
        1 => {
            f.extend_from_slice(&[0x86, 0xdd]);
            let start = f.len();
            f.push(if rng.chance(10) { 0x40 } else { 0x60 });
            f.extend(rng.bytes(39));
            let mut nh_at = start + 6;
            for _ in 0..rng.below(10) {
                let ext = *rng.pick(&[0u8, 43, 60, 44]);
                f[nh_at] = ext;
                let here = f.len();
                if ext == 44 {
                    f.extend(rng.bytes(8));
                    if rng.chance(2) {
                        f[here + 2] = 0;
                        f[here + 3] &= 0x07;
                    }
                } else {
                    let words = rng.below(3);
                    f.extend(rng.bytes(8 + words * 8));
                    f[here + 1] = words as u8;
                }
                nh_at = here;
            }
            upper = *rng.pick(&[6u8, 17, 58, 1, 59]);
            f[nh_at] = upper;
            let plen = f.len() - start - 40 + rng.below(60);
            if !rng.chance(4) {
                f[start + 4..start + 6].copy_from_slice(&(plen as u16).to_be_bytes());
            }
        }
        2 => {
            f.extend_from_slice(&[0x08, 0x06]);
            f.extend(rng.bytes(28));
            upper = 0;
        }
        _ => {
            f.extend(rng.bytes(2));
            upper = 0;
        }
    }
    match upper {
        6 => {
            let here = f.len();
            let doff = if rng.chance(6) {
                rng.below(16)
            } else {
                5 + rng.below(3)
            };
            f.extend(rng.bytes(doff.max(5) * 4));
            f[here + 12] = (doff as u8) << 4;
        }
        17 | 1 | 58 => f.extend(rng.bytes(8)),
        _ => {}
    }
    let p = payload(rng);
    f.extend(p);
    let pad = rng.below(8);
    f.extend(std::iter::repeat_n(0, pad));
    f
}

fn mutate(rng: &mut Rng, frame: &[u8]) -> Vec<u8> {
    let mut f = frame.to_vec();
    for _ in 0..1 + rng.below(3) {
        if f.is_empty() {
            break;
        }
        let i = rng.below(f.len());
        f[i] = rng.next() as u8;
    }
    if rng.chance(3) {
        let n = rng.below(f.len() + 1);
        f.truncate(n);
    }
    f
}

/// A value for `field`: half the time one a frame under test carries.
fn value_for(rng: &mut Rng, field: Field, seen: &[Vec<u8>]) -> u128 {
    let max = field.ty().max_value();
    if rng.chance(2) && !seen.is_empty() {
        if let Some(v) = Decoded::new(&seen[rng.below(seen.len())]).field(field) {
            return v;
        }
    }
    match rng.below(4) {
        0 => 0,
        1 => max,
        _ => (u128::from(rng.next()) << 64 | u128::from(rng.next())) & max,
    }
}

fn ranges_around(rng: &mut Rng, v: u128, max: u128) -> Vec<(u128, u128)> {
    let mut ranges = Vec::new();
    for i in 0..1 + rng.below(6) {
        let centre = if i == 0 {
            v
        } else {
            (u128::from(rng.next()) << 64 | u128::from(rng.next())) & max
        };
        let width = match rng.below(3) {
            0 => 0,
            1 => rng.below(16) as u128,
            _ => (u128::from(rng.next()) & max) >> rng.below(64),
        };
        let lo = centre.saturating_sub(width / 2);
        let hi = lo.saturating_add(width).min(max);
        ranges.push((lo, hi));
    }
    normalise(ranges)
}

/// Sorted, disjoint, non-adjacent ranges (what lowering produces).
fn normalise(mut ranges: Vec<(u128, u128)>) -> Vec<(u128, u128)> {
    ranges.sort_unstable();
    let mut out: Vec<(u128, u128)> = Vec::new();
    for (lo, hi) in ranges {
        match out.last_mut() {
            Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}

fn random_atom(rng: &mut Rng, seen: &[Vec<u8>], ir: &mut Classifier) -> Atom {
    match rng.below(12) {
        0 | 1 => Atom::Proto(*rng.pick(&Proto::ALL)),
        2 => Atom::InPort {
            ranges: {
                let v = rng.below(4) as u128;
                ranges_around(rng, v, 7)
            },
        },
        3 => {
            let index = rng.below(12) as u16;
            let v = seen
                .first()
                .and_then(|f| Decoded::new(f).payload()?.get(usize::from(index)).copied())
                .unwrap_or(0);
            Atom::PayloadByte {
                index,
                mask: rng.chance(3).then(|| rng.next() as u8),
                ranges: ranges_around(rng, u128::from(v), 255),
            }
        }
        4 => {
            let lit = WORDS[rng.below(WORDS.len())].to_vec();
            let n = match ir.literals.iter().position(|l| *l == lit) {
                Some(n) => n,
                None => {
                    ir.literals.push(lit);
                    ir.literals.len() - 1
                }
            };
            Atom::Contains(n)
        }
        5 => Atom::StartsWith(WORDS[rng.below(WORDS.len())].to_vec()),
        6 => {
            let re = rng.pick(REGEXES).to_string();
            let n = match ir.regexes.iter().position(|r| *r == re) {
                Some(n) => n,
                None => {
                    ir.regexes.push(re);
                    ir.regexes.len() - 1
                }
            };
            Atom::Matches(n)
        }
        _ => {
            let field = *rng.pick(Field::ALL);
            let max = field.ty().max_value();
            let v = value_for(rng, field, seen);
            let mask = rng.chance(5).then(|| {
                let m = (u128::from(rng.next()) << 64 | u128::from(rng.next())) & max;
                if rng.chance(2) {
                    // A prefix mask, as operators write them.
                    let bits = field.ty().bits();
                    let keep = rng.below(usize::from(bits) + 1) as u32;
                    max & !(max.checked_shr(keep).unwrap_or(0))
                } else {
                    m
                }
            });
            let v = v & mask.unwrap_or(u128::MAX);
            Atom::Field {
                field,
                mask,
                ranges: ranges_around(rng, v, max),
            }
        }
    }
}

fn random_expr(rng: &mut Rng, atoms: usize, depth: u32) -> Expr {
    if depth == 0 || rng.chance(3) {
        return match rng.below(20) {
            0 => Expr::Const(rng.chance(2)),
            _ => Expr::Atom(rng.below(atoms)),
        };
    }
    match rng.below(5) {
        0 => Expr::Not(Box::new(random_expr(rng, atoms, depth - 1))),
        1 | 2 => Expr::Or(
            (0..2 + rng.below(2))
                .map(|_| random_expr(rng, atoms, depth - 1))
                .collect(),
        ),
        _ => Expr::And(
            (0..2 + rng.below(3))
                .map(|_| random_expr(rng, atoms, depth - 1))
                .collect(),
        ),
    }
}

fn random_classifier(rng: &mut Rng, seen: &[Vec<u8>]) -> Classifier {
    let mut ir = Classifier {
        atoms: Vec::new(),
        rules: Vec::new(),
        literals: Vec::new(),
        regexes: Vec::new(),
    };
    for _ in 0..1 + rng.below(16) {
        let a = random_atom(rng, seen, &mut ir);
        if !ir.atoms.contains(&a) {
            ir.atoms.push(a);
        }
    }
    let n = ir.atoms.len();
    ir.rules = (0..1 + rng.below(10))
        .map(|_| random_expr(rng, n, 3))
        .collect();
    ir
}

/// A frame built to satisfy the field atoms of one rule (best effort: the builder refuses
/// fields of headers the stack does not have, and masks may move the value out again).
fn hit_frame(rng: &mut Rng, ir: &Classifier, rule: &Expr) -> Option<Vec<u8>> {
    let mut fields = Vec::new();
    rule.for_each_atom(&mut |a| {
        if let Atom::Field { field, ranges, .. } = &ir.atoms[a] {
            fields.push((*field, ranges[0].0));
        }
    });
    let base = if fields
        .iter()
        .any(|(f, _)| f.header() == FieldHeader::Proto(Proto::Icmp6))
    {
        BaseProto::Icmp6
    } else if fields
        .iter()
        .any(|(f, _)| f.header() == FieldHeader::Proto(Proto::Icmp))
    {
        BaseProto::Icmp
    } else if fields
        .iter()
        .any(|(f, _)| f.header() == FieldHeader::Proto(Proto::Udp))
    {
        BaseProto::Udp
    } else {
        *rng.pick(&[BaseProto::Tcp, BaseProto::Udp, BaseProto::Tcp])
    };
    let mut spec = PacketSpec::new(base);
    for (f, v) in fields {
        if !matches!(
            f,
            Field::PktLen | Field::PayloadLen | Field::IpLen | Field::EthType
        ) {
            spec.set(f, v);
        }
    }
    spec.payload = Some(payload(rng));
    spec.build().ok()
}

/// The first atom whose one-atom classifier the engines disagree on (for failure reports).
fn differing_atom(ir: &Classifier, frame: &[u8], port: u32) -> Option<Atom> {
    ir.atoms.iter().find_map(|a| {
        let one = Classifier {
            atoms: vec![a.clone()],
            rules: vec![Expr::Atom(0)],
            literals: ir.literals.clone(),
            regexes: ir.regexes.clone(),
        };
        let j = Jit::compile_with(&one, Strategy::Linear).ok()?;
        let i = Interpreter::new(one).ok()?;
        (j.classify(frame, port) != i.classify(frame, port)).then(|| a.clone())
    })
}

/// Per strategy: comparisons made and classifiers compiled as trees; of the forests, those
/// of several trees, those with residual rules and those built at their memory budget.
struct Counts {
    comparisons: AtomicU64,
    trees: AtomicU64,
    partitioned: AtomicU64,
    mixed: AtomicU64,
    at_budget: AtomicU64,
    ipv6: AtomicU64,
}

/// What a run generates.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// `random_classifier`.
    Random,
    /// `guarded_classifier`.
    Guarded,
    /// `random_tuple_classifier` (all header rules).
    Tuples,
    /// Header rules with random rules (payload, `or`, `not`, `in_port`, masks, IPv6) among
    /// them, and a random forest budget (often small enough to stop the cutting).
    Mixed,
}

fn policies() -> u32 {
    std::env::var("NETVM_DIFF_POLICIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

/// A header rule set of the shape the decision forest takes: conjunctions of protocol tests
/// and unmasked comparisons on fields (IPv6 addresses too, cut as four 32-bit parts), many
/// rules, some always or never matching.
fn random_tuple_classifier(rng: &mut Rng, seen: &[Vec<u8>]) -> Classifier {
    let fields: Vec<Field> = Field::ALL
        .iter()
        .copied()
        .filter(|f| f.ty().bits() <= 48 || f.ty().bits() == 128)
        .collect();
    let dims: Vec<Field> = (0..1 + rng.below(5)).map(|_| *rng.pick(&fields)).collect();
    let mut ir = Classifier {
        atoms: Vec::new(),
        rules: Vec::new(),
        literals: Vec::new(),
        regexes: Vec::new(),
    };
    let atom = |ir: &mut Classifier, a: Atom| match ir.atoms.iter().position(|x| *x == a) {
        Some(i) => Expr::Atom(i),
        None => {
            ir.atoms.push(a);
            Expr::Atom(ir.atoms.len() - 1)
        }
    };
    for _ in 0..1 + rng.below(150) {
        if rng.chance(40) {
            ir.rules.push(Expr::Const(rng.chance(3)));
            continue;
        }
        let mut items = Vec::new();
        for &field in &dims {
            if rng.chance(3) {
                continue;
            }
            let max = field.ty().max_value();
            let v = value_for(rng, field, seen);
            let ranges = if rng.chance(3) {
                ranges_around(rng, v, max)
            } else if rng.chance(2) {
                // A prefix, as ClassBench writes addresses.
                let bits = field.ty().bits();
                let keep = rng.below(usize::from(bits) + 1) as u32;
                let host = max.checked_shr(keep).unwrap_or(0);
                vec![(v & !host, (v & !host) | host)]
            } else {
                vec![(v, v)]
            };
            items.push(atom(
                &mut ir,
                Atom::Field {
                    field,
                    mask: None,
                    ranges,
                },
            ));
        }
        if rng.chance(4) {
            let p = *rng.pick(&Proto::ALL);
            items.push(atom(&mut ir, Atom::Proto(p)));
        }
        ir.rules.push(match items.len() {
            0 => Expr::Const(true),
            1 => items.remove(0),
            _ => Expr::And(items),
        });
    }
    ir
}

/// A random classifier whose rules come in runs that each need one protocol header (each
/// rule of a run `and`s that header's presence, or a field of it, with a random
/// expression, sometimes through an `or` of two such), the shape the linear strategy
/// guards with one presence test per run.
fn guarded_classifier(rng: &mut Rng, seen: &[Vec<u8>]) -> Classifier {
    let mut ir = random_classifier(rng, seen);
    let mut rules = Vec::new();
    while rules.len() < 4 + rng.below(12) {
        let proto = *rng.pick(&Proto::ALL);
        let guard = match ir.atoms.iter().position(|a| *a == Atom::Proto(proto)) {
            Some(i) => i,
            None => {
                ir.atoms.push(Atom::Proto(proto));
                ir.atoms.len() - 1
            }
        };
        let n = ir.atoms.len();
        for _ in 0..1 + rng.below(5) {
            let guarded =
                |rng: &mut Rng| Expr::And(vec![Expr::Atom(guard), random_expr(rng, n, 2)]);
            let rule = if rng.chance(4) {
                Expr::Or(vec![guarded(rng), guarded(rng)])
            } else {
                guarded(rng)
            };
            rules.push(rule);
        }
        if rng.chance(3) {
            rules.push(random_expr(rng, n, 2));
        }
    }
    ir.rules = rules;
    ir
}

/// A header rule set with random rules spliced in at random places (first-match order
/// across the forest and the residual rules is what this exercises).
fn mixed_classifier(rng: &mut Rng, seen: &[Vec<u8>]) -> Classifier {
    let mut ir = random_tuple_classifier(rng, seen);
    let other = random_classifier(rng, seen);
    let offset = ir.atoms.len();
    ir.atoms.extend(other.atoms);
    // The tuple classifier has no literals or regexes, so the other's numbering holds.
    ir.literals = other.literals;
    ir.regexes = other.regexes;
    fn shift(e: &Expr, by: usize) -> Expr {
        match e {
            Expr::Const(c) => Expr::Const(*c),
            Expr::Atom(a) => Expr::Atom(a + by),
            Expr::And(v) => Expr::And(v.iter().map(|x| shift(x, by)).collect()),
            Expr::Or(v) => Expr::Or(v.iter().map(|x| shift(x, by)).collect()),
            Expr::Not(x) => Expr::Not(Box::new(shift(x, by))),
        }
    }
    for rule in &other.rules {
        let at = rng.below(ir.rules.len() + 1);
        ir.rules.insert(at, shift(rule, offset));
    }
    ir
}

fn check_seed_with(seed: u64, strategy: Strategy, counts: &Counts, shape: Shape) {
    let mut rng = Rng(seed);
    let mut frames: Vec<Vec<u8>> = (0..8).map(|_| random_frame(&mut rng)).collect();
    frames.extend((0..8).map(|_| handmade_frame(&mut rng)));
    let ir = match shape {
        Shape::Tuples => random_tuple_classifier(&mut rng, &frames),
        Shape::Mixed => mixed_classifier(&mut rng, &frames),
        Shape::Guarded => guarded_classifier(&mut rng, &frames),
        Shape::Random => random_classifier(&mut rng, &frames),
    };
    for rule in ir.rules.iter().take(24) {
        if let Some(f) = hit_frame(&mut rng, &ir, rule) {
            frames.push(f);
        }
    }
    frames.push(Vec::new());
    let n = rng.below(100);
    frames.push(rng.bytes(n));
    let budget = match shape {
        Shape::Mixed if rng.chance(2) => 1 + rng.below(40_000),
        _ => netvm_compiler::jit::tree::default_budget(ir.rules.len()),
    };
    let jit =
        Jit::compile_with_budget(&ir, strategy, budget).expect("the JIT compiles every classifier");
    if jit.strategy() == Strategy::Tree {
        counts.trees.fetch_add(1, Ordering::Relaxed);
    }
    if let Some(stats) = jit.tree_stats() {
        assert!(stats.bytes <= budget, "seed {seed:#x}: {stats:?}");
        let add = |c: &AtomicU64, yes: bool| c.fetch_add(u64::from(yes), Ordering::Relaxed);
        add(&counts.partitioned, stats.subtrees > 1);
        add(&counts.mixed, stats.residual_rules > 0);
        add(&counts.at_budget, stats.budget_reached);
        add(&counts.ipv6, stats.ipv6_dims);
    }
    let forest_expected = budget == netvm_compiler::jit::tree::default_budget(ir.rules.len())
        && netvm_compiler::jit::tree::header_rules(&ir) > 0;
    if forest_expected || strategy == Strategy::Linear {
        assert_eq!(jit.strategy(), strategy, "seed {seed:#x}");
    }
    let interp = Interpreter::new(ir.clone()).expect("regexes compile");
    let checked = std::cell::RefCell::new(Vec::<Vec<u8>>::new());
    let check = |frame: &[u8], port: u32| {
        checked.borrow_mut().push(frame.to_vec());
        for port in [NO_PORT, port] {
            let want = interp.classify(frame, port);
            let got = jit.classify(frame, port);
            counts.comparisons.fetch_add(1, Ordering::Relaxed);
            if got != want {
                eprintln!(
                    "first differing atom: {:?}",
                    differing_atom(&ir, frame, port)
                );
            }
            assert_eq!(
                got, want,
                "seed {seed:#x} strategy {strategy:?}\nclassifier {ir:#?}\nframe ({} bytes) {frame:02x?} in_port {port}",
                frame.len()
            );
        }
    };
    let originals = frames.clone();
    for frame in &originals {
        check(frame, rng.below(5) as u32);
        for _ in 0..4 {
            let m = mutate(&mut rng, frame);
            check(&m, rng.below(5) as u32);
        }
    }
    // Every truncation of a few frames.
    for frame in originals
        .iter()
        .take(3)
        .chain(originals.iter().rev().take(2))
    {
        for n in 0..frame.len() {
            check(&frame[..n], 2);
        }
    }
    // The burst entry point (the linear loop or the tree walk) agrees with the
    // interpreter on every frame checked above, in bursts of every length up to
    // MAX_BURST, each burst from a random port (`in_port` atoms are loop invariants there).
    let all = checked.into_inner();
    let mut rest: &[Vec<u8>] = &all;
    let mut len = 1;
    while !rest.is_empty() {
        let (burst, tail) = rest.split_at(len.min(rest.len()));
        rest = tail;
        len = len % netvm_compiler::jit::MAX_BURST + 1;
        let port = rng.below(5) as u32;
        let refs: Vec<&[u8]> = burst.iter().map(Vec::as_slice).collect();
        let mut out = vec![u32::MAX; refs.len()];
        jit.classify_burst(&refs, port, &mut out);
        for (frame, got) in refs.iter().zip(&out) {
            let want = interp.classify(frame, port).unwrap_or(ir.rules.len());
            counts.comparisons.fetch_add(1, Ordering::Relaxed);
            assert_eq!(
                *got as usize, want,
                "burst, seed {seed:#x} strategy {strategy:?}, in_port {port}, frame {frame:02x?}"
            );
        }
    }
}

fn run(strategy: Strategy, shape: Shape) -> Counts {
    let counts = Counts {
        comparisons: AtomicU64::new(0),
        trees: AtomicU64::new(0),
        partitioned: AtomicU64::new(0),
        mixed: AtomicU64::new(0),
        at_budget: AtomicU64::new(0),
        ipv6: AtomicU64::new(0),
    };
    let started = std::time::Instant::now();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: policies(),
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let result = runner.run(&any::<u64>(), |seed| {
        check_seed_with(seed, strategy, &counts, shape);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    eprintln!(
        "{strategy:?}: {} policies ({} compiled as decision forests: {} of several trees, {} with residual rules, {} at their budget), {} comparisons, all equal ({:.1?})",
        policies(),
        load(&counts.trees),
        load(&counts.partitioned),
        load(&counts.mixed),
        load(&counts.at_budget),
        load(&counts.comparisons),
        started.elapsed()
    );
    counts
}

#[test]
fn jit_agrees_with_the_interpreter_on_random_policies() {
    run(Strategy::Linear, Shape::Random);
}

/// Runs of rules that need one header: the linear strategy skips each run with one
/// presence test (compiler/src/jit/codegen.rs, `rules_linear`).
#[test]
fn jit_agrees_with_the_interpreter_on_runs_of_rules_that_need_one_header() {
    run(Strategy::Linear, Shape::Guarded);
}

#[test]
fn decision_tree_agrees_with_the_interpreter_on_random_header_rule_sets() {
    let counts = run(Strategy::Tree, Shape::Tuples);
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    assert!(load(&counts.partitioned) > 0, "no forest of several trees");
    assert!(load(&counts.ipv6) > 0, "no forest with IPv6 dimensions");
}

/// Header rules with payload, `or`, `not`, `in_port`, masked and IPv6 rules among them: the
/// forest answers, the residual rules below its answer run after it (single and burst entry
/// points, payload scratch in the burst), and small budgets stop the cutting.
#[test]
fn decision_forest_with_residual_rules_agrees_with_the_interpreter() {
    let counts = run(Strategy::Tree, Shape::Mixed);
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    assert!(load(&counts.mixed) > 0, "no forest with residual rules");
    assert!(load(&counts.at_budget) > 0, "no forest built at its budget");
}

/// Switch threads share one `Jit` (payload scratch is per thread, no lock): two threads
/// classifying at once with two `Jit`s in turn, so each thread's scratch slot changes hands
/// between them on every burst, still agree with the interpreter on every frame.
#[test]
fn one_jit_shared_by_threads_agrees_with_the_interpreter_on_each() {
    for seed in 0..24u64 {
        let mut rng = Rng(seed.wrapping_mul(0x2545_f491_4f6c_dd1d));
        let mut frames: Vec<Vec<u8>> = (0..12).map(|_| random_frame(&mut rng)).collect();
        frames.extend((0..12).map(|_| handmade_frame(&mut rng)));
        let irs = [
            random_classifier(&mut rng, &frames),
            random_classifier(&mut rng, &frames),
        ];
        let jits: Vec<Jit> = irs
            .iter()
            .map(|ir| Jit::compile_with(ir, Strategy::Linear).expect("compiles"))
            .collect();
        let want: Vec<Vec<u32>> = irs
            .iter()
            .map(|ir| {
                let interp = Interpreter::new(ir.clone()).expect("regexes compile");
                frames
                    .iter()
                    .map(|f| interp.classify(f, 1).unwrap_or(ir.rules.len()) as u32)
                    .collect()
            })
            .collect();
        let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
        std::thread::scope(|scope| {
            for thread in 0..2 {
                let (jits, want, refs) = (&jits, &want, &refs);
                scope.spawn(move || {
                    for round in 0..40 {
                        let which = (round + thread) % 2;
                        let mut out = vec![u32::MAX; refs.len()];
                        jits[which].classify_burst(refs, 1, &mut out);
                        assert_eq!(
                            out, want[which],
                            "seed {seed}, thread {thread}, round {round}"
                        );
                    }
                });
            }
        });
    }
}

/// [`FlowKeySpec`](netvm_compiler::flow_key::FlowKeySpec): two frames (and ports) with equal
/// flow keys get the same rule from the interpreter, on random header rule sets and on
/// random policies (those that read the payload have no key, and are counted). Frames are
/// the generators' own plus byte mutations of each, so many differ only in bytes the
/// policy never reads and share a key; the test asserts that such pairs were checked.
#[test]
fn equal_flow_keys_get_equal_verdicts_from_the_interpreter() {
    use netvm_compiler::flow_key::FlowKeySpec;
    use std::collections::HashMap;
    let (mut shared, mut keyless, mut keyed) = (0u64, 0u64, 0u64);
    for seed in 0..u64::from(policies()) {
        let mut rng = Rng(seed ^ 0xf10c_ac4e);
        let mut frames: Vec<Vec<u8>> = (0..8).map(|_| random_frame(&mut rng)).collect();
        frames.extend((0..8).map(|_| handmade_frame(&mut rng)));
        let ir = if seed % 2 == 0 {
            random_tuple_classifier(&mut rng, &frames)
        } else {
            random_classifier(&mut rng, &frames)
        };
        let Some(spec) = FlowKeySpec::of(&ir) else {
            let reads_payload = ir.atoms.iter().any(|a| {
                matches!(
                    a,
                    Atom::PayloadByte { .. }
                        | Atom::Contains(_)
                        | Atom::StartsWith(_)
                        | Atom::Matches(_)
                )
            });
            assert!(
                reads_payload,
                "seed {seed:#x}: a header-only policy has no key"
            );
            keyless += 1;
            continue;
        };
        keyed += 1;
        for rule in ir.rules.iter().take(24) {
            if let Some(f) = hit_frame(&mut rng, &ir, rule) {
                frames.push(f);
            }
        }
        for i in 0..frames.len() {
            for _ in 0..6 {
                let m = mutate(&mut rng, &frames[i]);
                frames.push(m);
            }
        }
        let interp = Interpreter::new(ir.clone()).expect("regexes compile");
        let mut seen = HashMap::new();
        for frame in &frames {
            for port in [NO_PORT, 0, 1] {
                let verdict = interp.classify(frame, port);
                let key = spec.key(frame, port);
                match seen.entry(key) {
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert((verdict, frame.clone(), port));
                    }
                    std::collections::hash_map::Entry::Occupied(o) => {
                        let (want, first, first_port) = o.get();
                        assert_eq!(
                            verdict, *want,
                            "seed {seed:#x}: same flow key, different rules\n{ir:#?}\n\
                             {first:02x?} port {first_port}\n{frame:02x?} port {port}"
                        );
                        shared += u64::from(first != frame || *first_port != port);
                    }
                }
            }
        }
    }
    assert!(keyed > 0 && keyless > 0, "keyed {keyed}, keyless {keyless}");
    assert!(
        shared > 1000,
        "only {shared} distinct (frame, port) pairs shared a key"
    );
}
