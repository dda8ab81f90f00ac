//! The JIT's payload engine (compiler/src/jit/payload.rs) against the reference interpreter
//! on what stresses a multi-pattern scan: large literal and regex sets, literals that overlap
//! and contain one another, literals at the very start and end of the payload (and as the
//! whole payload), case-insensitive regexes, and rules that ask about literals in an order
//! unrelated to where they occur (so the literal scan stops early and is resumed). Each
//! classifier is random expressions over `contains` and `matches` atoms, so the first
//! matching rule depends on many literals' answers at once; every frame is a TCP packet
//! whose payload is drawn from a small alphabet, where literal hits are frequent. Most rules
//! are gated by payload atoms, so runs of them go through the engine's dispatch
//! (`netvm_jit_next`), including rules it names that then fail on a header test.

use netvm_compiler::ir::{Atom, Classifier, Expr};
use netvm_compiler::jit::Strategy;
use netvm_compiler::{Interpreter, Jit, NO_PORT};
use netvm_packet::{BaseProto, PacketSpec, Proto};

/// SplitMix64, as in tests/differential.rs.
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
}

/// Mostly `abc`, some upper case (for the `(?i)` regexes), some other bytes.
fn text(rng: &mut Rng, n: usize) -> Vec<u8> {
    const ALPHABET: &[u8] = b"aaabbbcccABC/ \x00\xff";
    (0..n)
        .map(|_| ALPHABET[rng.below(ALPHABET.len())])
        .collect()
}

/// `n` literals; with `min_len` 4 or more, only literals that long (which the engine's
/// hashed-window filter takes when there are more than 64).
fn literals(rng: &mut Rng, n: usize, min_len: usize) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = [&b"abc"[..], b"bcd", b"b", b"abcabc", b"cab", b"bc", b""]
        .iter()
        .map(|l| l.to_vec())
        .filter(|l| l.len() >= min_len)
        .collect();
    while out.len() < n {
        let len = min_len.max(1) + rng.below(7);
        let lit = text(rng, len);
        if !out.contains(&lit) {
            out.push(lit);
        }
    }
    out
}

/// `n` regexes; with `min_len` 4 or more, every literal prefix is that long (so the
/// caseless prefix filter is the hashed-window one), but for `""`, which has none.
fn regexes(rng: &mut Rng, n: usize, min_len: usize) -> Vec<String> {
    let mut out: Vec<String> = [
        r"(?i)abc",
        r"a[bc]+a",
        r"^ab",
        r"ca$",
        r"(?i)b\s*c/",
        r"",
        r"\x00\xff",
        r"(?i)(select|union)\s+all",
    ]
    .iter()
    .filter(|r| min_len < 4 || r.is_empty() || r.contains("select"))
    .map(|s| s.to_string())
    .collect();
    while out.len() < n {
        let len = min_len.max(2) + rng.below(4);
        let word: String = (0..len)
            .map(|_| ['a', 'b', 'c', 'B'][rng.below(4)])
            .collect();
        let re = match rng.below(5) {
            0 => format!(r"/{word}/[a-c]+"),
            1 => format!(r"(?i){word}\s+b"),
            2 => format!(r"{word}[^/]{{0,4}}c$"),
            3 => format!(r"(?i)^{word}"),
            _ => format!(r"{word}(ab|ba)*c"),
        };
        if !out.contains(&re) {
            out.push(re);
        }
    }
    out
}

fn random_expr(rng: &mut Rng, atoms: usize, depth: u32) -> Expr {
    if depth == 0 || rng.below(3) == 0 {
        return Expr::Atom(rng.below(atoms));
    }
    let items = (0..2 + rng.below(3))
        .map(|_| random_expr(rng, atoms, depth - 1))
        .collect();
    match rng.below(3) {
        0 => Expr::And(items),
        1 => Expr::Or(items),
        _ => Expr::Not(Box::new(random_expr(rng, atoms, depth - 1))),
    }
}

/// A classifier over `lits` literals and `res` regexes: `rules` random rules, then one rule
/// per literal and per regex in a shuffled order (each alone decides when it holds).
fn classifier(rng: &mut Rng, lits: usize, min_len: usize, res: usize, rules: usize) -> Classifier {
    let literals = literals(rng, lits, min_len);
    let regexes = regexes(rng, res, min_len);
    let mut atoms: Vec<Atom> = (0..literals.len()).map(Atom::Contains).collect();
    atoms.extend((0..regexes.len()).map(Atom::Matches));
    // Header atoms, so a rule the payload engine names can still fail (every frame is TCP).
    atoms.extend([Atom::Proto(Proto::Tcp), Atom::Proto(Proto::Udp)]);
    let mut rules: Vec<Expr> = (0..rules)
        .map(|_| random_expr(rng, atoms.len(), 3))
        .collect();
    let mut singles: Vec<usize> = (0..atoms.len() - 2).collect();
    for i in (1..singles.len()).rev() {
        singles.swap(i, rng.below(i + 1));
    }
    // Each alone, or behind a header test (`udp and ...` never holds here).
    rules.extend(singles.into_iter().map(|a| match rng.below(3) {
        0 => Expr::And(vec![Expr::Atom(atoms.len() - 1), Expr::Atom(a)]),
        1 => Expr::And(vec![Expr::Atom(atoms.len() - 2), Expr::Atom(a)]),
        _ => Expr::Atom(a),
    }));
    Classifier {
        atoms,
        rules,
        literals,
        regexes,
    }
}

fn tcp(payload: Vec<u8>) -> Vec<u8> {
    let mut spec = PacketSpec::new(BaseProto::Tcp);
    spec.payload = Some(payload);
    spec.build().expect("a TCP packet with a payload builds")
}

/// Payloads: random text, and literals placed at the start, at the end, overlapping each
/// other and as the whole payload.
fn payloads(rng: &mut Rng, ir: &Classifier, n: usize) -> Vec<Vec<u8>> {
    let mut out = vec![Vec::new()];
    for _ in 0..n {
        let len = rng.below(80);
        let mut p = text(rng, len);
        let lit = ir.literals[rng.below(ir.literals.len())].clone();
        match rng.below(5) {
            0 => p.splice(0..0, lit).for_each(drop),
            1 => p.extend_from_slice(&lit),
            2 => {
                // Two literals overlapping by one byte where they can.
                let other = &ir.literals[rng.below(ir.literals.len())];
                let mut both = lit;
                both.pop();
                both.extend_from_slice(other);
                let at = rng.below(p.len() + 1);
                p.splice(at..at, both).for_each(drop);
            }
            3 => p = lit,
            _ => {}
        }
        out.push(p);
    }
    out
}

fn agree(seed: u64, (lits, min_len): (usize, usize), res: usize, packets: usize) {
    let mut rng = Rng(seed);
    let ir = classifier(&mut rng, lits, min_len, res, 40);
    let jit = Jit::compile_with(&ir, Strategy::Linear).expect("the JIT compiles");
    let interp = Interpreter::new(ir.clone()).expect("the regexes compile");
    let frames: Vec<Vec<u8>> = payloads(&mut rng, &ir, packets)
        .into_iter()
        .map(tcp)
        .collect();
    for frame in &frames {
        assert_eq!(
            jit.classify(frame, NO_PORT),
            interp.classify(frame, NO_PORT),
            "seed {seed}, {lits} literals, {res} regexes, frame {frame:02x?}"
        );
    }
    // The same frames in bursts: the scratch is reset between packets.
    let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
    for burst in refs.chunks(netvm_compiler::jit::MAX_BURST) {
        let mut out = vec![u32::MAX; burst.len()];
        jit.classify_burst(burst, NO_PORT, &mut out);
        for (frame, got) in burst.iter().zip(&out) {
            let want = interp.classify(frame, NO_PORT).unwrap_or(ir.rules.len());
            assert_eq!(
                *got as usize, want,
                "burst, seed {seed}, frame {frame:02x?}"
            );
        }
    }
}

#[test]
fn small_literal_and_regex_sets_agree_with_the_interpreter() {
    for seed in 0..30 {
        agree(seed, (12, 0), 10, 150);
    }
}

/// Hundreds of literals (past the packed Teddy searcher's limit, so the DFA answers) and a
/// hundred regexes in one multi-pattern engine.
#[test]
fn large_literal_and_regex_sets_agree_with_the_interpreter() {
    for seed in 100..104 {
        agree(seed, (400, 0), 100, 300);
    }
}

/// More than 64 literals of 4 bytes or more: the hashed 4-byte-window filter (with its
/// anchored confirmation) finds the leftmost hit; the regex prefixes' filter is caseless.
#[test]
fn many_long_literals_through_the_window_filter_agree_with_the_interpreter() {
    for seed in 200..206 {
        agree(seed, (150, 4), 40, 300);
    }
}

/// Literals only, with and without an empty literal, so the literal scan alone decides.
#[test]
fn overlapping_literals_answer_each_literal() {
    let lits: Vec<Vec<u8>> = [&b"abcd"[..], b"bc", b"cd", b"d", b"abc", b"zz"]
        .iter()
        .map(|l| l.to_vec())
        .collect();
    // Rule `i` holds when literal `i` occurs and no literal before it does: the first
    // matching rule reveals every literal's answer in turn, for each order of the rules.
    for order in [[0, 1, 2, 3, 4, 5], [5, 3, 2, 1, 4, 0], [1, 5, 0, 4, 3, 2]] {
        let ir = Classifier {
            atoms: (0..lits.len()).map(Atom::Contains).collect(),
            rules: order.iter().map(|&i| Expr::Atom(i)).collect(),
            literals: lits.clone(),
            regexes: Vec::new(),
        };
        let jit = Jit::compile_with(&ir, Strategy::Linear).expect("the JIT compiles");
        let interp = Interpreter::new(ir.clone()).expect("no regexes");
        for payload in [
            &b"abcd"[..],
            b"xabcdx",
            b"xxbcd",
            b"dxxx",
            b"abc",
            b"xzz",
            b"zzabcd",
            b"bcbcd",
            b"",
            b"ab",
        ] {
            let frame = tcp(payload.to_vec());
            assert_eq!(
                jit.classify(&frame, NO_PORT),
                interp.classify(&frame, NO_PORT),
                "order {order:?}, payload {:?}",
                String::from_utf8_lossy(payload)
            );
        }
    }
}

/// Caseless regexes with long prefixes (the caseless hashed-window filter): a match written
/// in upper or mixed case is found, a near miss is not.
#[test]
fn caseless_regex_prefixes_match_in_any_case() {
    let regexes: Vec<String> = (0..70).map(|i| format!(r"(?i)w{i:02}abcd\s+x")).collect();
    let ir = Classifier {
        atoms: (0..regexes.len()).map(Atom::Matches).collect(),
        rules: (0..regexes.len()).map(Expr::Atom).collect(),
        literals: Vec::new(),
        regexes,
    };
    let jit = Jit::compile_with(&ir, Strategy::Linear).expect("the JIT compiles");
    let interp = Interpreter::new(ir.clone()).expect("the regexes compile");
    for (payload, want) in [
        ("..W07ABCD X..", Some(7)),
        ("w41AbCd\t\tx", Some(41)),
        ("W69abcd x", Some(69)),
        ("w05abcdx w06abcd", None),
        ("W1ABCD X", None),
    ] {
        let frame = tcp(payload.as_bytes().to_vec());
        assert_eq!(interp.classify(&frame, NO_PORT), want, "{payload}");
        assert_eq!(jit.classify(&frame, NO_PORT), want, "{payload}");
    }
}
