//! Payload matching for JIT code: the `extern "C"` helpers that generated code calls, and the
//! multi-pattern engine behind them.
//!
//! **Literals** (`payload contains`): every non-empty literal of the policy is in one
//! `Scanner`. Its first pass answers "does any literal occur, and where does the leftmost
//! start", stopping at the first hit: for up to 64 literals (or any shorter than 4 bytes) a
//! leftmost-first Aho-Corasick automaton (`aho-corasick`'s packed Teddy SIMD searcher for
//! small sets, a DFA otherwise); for more, a bitmap of the literals' hashed first 4 bytes
//! tested at every offset, each hit confirmed by an anchored automaton (`First`). In the
//! common case of no literal that is the whole scan. Only on a hit does a second automaton
//! (standard semantics, overlapping) run, from the leftmost hit's start (no occurrence starts
//! earlier), and only as far as the question asked needs: it stops at the asked literal's
//! first occurrence, keeps its position and the literals it passed, and resumes there when a
//! later rule asks about a literal it has not seen.
//!
//! **Regexes** (`payload matches`): every regex whose matches all begin with one of a finite
//! set of literal prefixes (`regex-syntax`'s prefix extractor: `GET /admin/[0-9]+` begins
//! with `GET /admin/`, `(?i)union\s+select` with `union` in any case) contributes those
//! prefixes, lowered to ASCII lower case, to one case-insensitive `Scanner` shared by all
//! regexes. One pass of it per packet tells which regexes can match at all; only those are
//! run, each on its own lazy DFA (`regex-automata`'s hybrid engine, bounded cache, with the
//! meta engine as the fallback for a pattern that makes the lazy DFA give up). A regex
//! without such prefixes (`""`, `.*x`, `[^a]b`) is run on every packet that asks.
//!
//! **Rules gated by payload tests.** A rule that cannot hold unless one of its payload
//! atoms does (`tcp and payload contains "x"`, `a or (b and payload matches /y/)` where `a`
//! and `b` are payload atoms too, ...) is *gated*. A run of consecutive gated rules is
//! emitted with a dispatch ([`netvm_jit_next`]): the engine completes its scans once and
//! names the first rule of the run, from a given one on, one of whose payload atoms holds;
//! the code jumps there (a jump table), and on that rule's failure asks again from the next.
//! So 10,000 `payload contains` rules cost one scan and one call per packet without a hit,
//! not 10,000 calls.
//!
//! Chosen by measurement (BENCHMARKS.md, `benches/dpi.sh`, against Hyperscan on the same
//! payloads, same run): the overlapping-only automaton of before scanned at 5–9 ns a byte,
//! an Aho-Corasick DFA of 10,000 literals at 30 (a 22 MiB table), the window filter at ~2;
//! `regex-automata`'s multi-pattern meta regex (`build_many`, `MatchKind::All`,
//! `which_overlapping_matches`) measured 12 µs per 1,500 B packet for 100 regexes and
//! 580 µs per 512 B packet for 1,000 (the lazy DFA of 1,000 unanchored patterns thrashes
//! its cache and falls back to the PikeVM), and disagreed with the per-pattern answer when
//! an empty pattern was among them. Hyperscan itself is not linked (the pure Rust engine is
//! what installs everywhere); it still measures 2–5x faster on 100 and 1,000 literals and
//! 2–6x on regexes, so an optional libhs binding is the open way to the issue's bars where
//! this engine misses them. The reference interpreter ([`crate::interp`], a plain
//! substring search and one meta regex per pattern) stays independent of it. `starts_with`
//! and `payload[N]` are emitted inline and never come here.
//!
//! ## The ABI
//! Generated code calls, through a constant function pointer (no symbol lookup):
//!
//! ```text
//! extern "C" fn netvm_jit_contains(scratch: *mut Scratch, payload: *const u8, len: usize, literal: u32) -> u32
//! extern "C" fn netvm_jit_matches (scratch: *mut Scratch, payload: *const u8, len: usize, regex: u32)   -> u32
//! extern "C" fn netvm_jit_next    (scratch: *mut Scratch, payload: *const u8, len: usize, rule: u32)    -> u32
//! ```
//!
//! `scratch` is the per-packet state the engine passed in as the classifier's `ctx` argument;
//! `payload..payload+len` is the packet's payload (inside the frame, already bounds-checked by
//! the generated code). `contains`/`matches` return 1 when the literal/regex is found, else 0;
//! `next` returns the first rule `r >= rule` of `rule`'s gated run with a payload atom that
//! holds, or the run's end. Generated code calls a helper only when a rule still needs the
//! answer (short-circuit evaluation), and the helpers memoise per packet (answers are
//! stamped with a per-packet generation, so forgetting them costs nothing however many
//! patterns there are). The helpers never panic and never unwind.

use aho_corasick::automaton::OverlappingState;
use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind as AcMatchKind};
use regex_automata::hybrid::dfa::{Cache, DFA};
use regex_automata::util::syntax;
use regex_automata::{nfa::thompson, Input};
use regex_syntax::hir::literal::{ExtractKind, Extractor};

use crate::interp::{build_regex, RegexError};
use crate::ir::{Atom, Classifier, Expr};

/// Most payload atoms one rule's gate may list (a rule with more is not gated).
const MAX_GATE_ATOMS: usize = 64;

/// Many literals searched at once: "any here?" in one pass, then "which?" on a hit.
struct Scanner {
    /// "Any pattern here, and the leftmost start".
    first: First,
    /// Standard semantics, for the overlapping scan after a hit.
    all: AhoCorasick,
    /// The patterns themselves, for the (unreachable) case the overlapping scan refuses.
    bytes: Vec<Box<[u8]>>,
    caseless: bool,
}

/// The most patterns the leftmost-first automaton answers for (its Teddy SIMD searcher
/// takes up to 64 case-sensitive patterns); larger sets of patterns of at least
/// [`WINDOW`] bytes go through the [`First::Filter`].
const TEDDY_MAX: usize = 64;
/// The window the filter hashes: every pattern's first 4 bytes.
const WINDOW: usize = 4;

/// How a `Scanner` finds the leftmost pattern start.
enum First {
    /// A leftmost-first automaton: Teddy for small case-sensitive sets, else a DFA (a
    /// contiguous NFA past 2,000 patterns, as fast here and a twentieth of the memory).
    Automaton(AhoCorasick),
    /// A bitmap of the patterns' hashed first [`WINDOW`] bytes, tested at every payload
    /// offset (one load, a multiply and a bit test per byte, all in a few hundred KiB);
    /// an offset whose window is in the set is confirmed by an anchored automaton there.
    /// For caseless scanners, windows and prefixes are hashed with `| 0x20` per byte (upper
    /// and lower case letters alike; other bytes may collide, which only costs a check).
    Filter {
        bits: Vec<u64>,
        shift: u32,
        fold: u32,
        anchored: AhoCorasick,
    },
}

impl First {
    fn hash(window: u32, shift: u32) -> usize {
        (window.wrapping_mul(0x9e37_79b1) >> shift) as usize
    }

    /// The leftmost offset where a pattern starts.
    fn find(&self, payload: &[u8]) -> Option<usize> {
        match self {
            First::Automaton(ac) => ac.find(payload).map(|m| m.start()),
            First::Filter {
                bits,
                shift,
                fold,
                anchored,
            } => {
                for (i, w) in payload.windows(WINDOW).enumerate() {
                    let h = Self::hash(u32::from_le_bytes([w[0], w[1], w[2], w[3]]) | fold, *shift);
                    if bits.get(h >> 6).is_some_and(|b| b >> (h & 63) & 1 != 0)
                        && anchored
                            .find(
                                aho_corasick::Input::new(payload)
                                    .range(i..)
                                    .anchored(aho_corasick::Anchored::Yes),
                            )
                            .is_some()
                    {
                        return Some(i);
                    }
                }
                None
            }
        }
    }
}

impl Scanner {
    fn new(patterns: &[&[u8]], caseless: bool) -> Result<Scanner, RegexError> {
        let builder = |kind: AcMatchKind, engine: AhoCorasickKind| {
            let mut b = AhoCorasick::builder();
            b.match_kind(kind)
                .ascii_case_insensitive(caseless)
                .kind(Some(engine));
            b
        };
        let built = |b: &aho_corasick::AhoCorasickBuilder| {
            b.build(patterns)
                .map_err(|e| too_big("<payload literals>", e))
        };
        let filter =
            (caseless || patterns.len() > TEDDY_MAX) && patterns.iter().all(|p| p.len() >= WINDOW);
        let first = if filter {
            let nbits = (patterns.len() * 128)
                .next_power_of_two()
                .clamp(1 << 12, 1 << 22);
            let shift = 32 - nbits.trailing_zeros();
            let fold = if caseless { 0x2020_2020 } else { 0 };
            let mut bits = vec![0u64; nbits / 64];
            for p in patterns {
                let w = u32::from_le_bytes([p[0], p[1], p[2], p[3]]) | fold;
                let h = First::hash(w, shift);
                bits[h >> 6] |= 1 << (h & 63);
            }
            let mut b = builder(AcMatchKind::LeftmostFirst, AhoCorasickKind::ContiguousNFA);
            b.start_kind(aho_corasick::StartKind::Anchored);
            First::Filter {
                bits,
                shift,
                fold,
                anchored: built(&b)?,
            }
        } else {
            let kind = if patterns.len() <= 2000 {
                AhoCorasickKind::DFA
            } else {
                AhoCorasickKind::ContiguousNFA
            };
            First::Automaton(built(&builder(AcMatchKind::LeftmostFirst, kind))?)
        };
        Ok(Scanner {
            first,
            // Only after a hit (a small share of packets): the smaller contiguous NFA.
            all: built(&builder(
                AcMatchKind::Standard,
                AhoCorasickKind::ContiguousNFA,
            ))?,
            bytes: patterns.iter().map(|&p| p.into()).collect(),
            caseless,
        })
    }

    fn len(&self) -> usize {
        self.bytes.len()
    }

    fn memory_usage(&self) -> usize {
        let first = match &self.first {
            First::Automaton(ac) => ac.memory_usage(),
            First::Filter { bits, anchored, .. } => bits.len() * 8 + anchored.memory_usage(),
        };
        first + self.all.memory_usage() + self.bytes.iter().map(|b| b.len() + 16).sum::<usize>()
    }
}

/// Where a packet's scan of one `Scanner` is.
enum ScanPhase {
    /// Nothing run yet on this packet.
    Fresh,
    /// The overlapping scan from `from` stopped at `state` (resumable).
    Scanning {
        from: usize,
        state: OverlappingState,
    },
    /// Every pattern of this packet is known.
    Done,
}

/// One thread's scan of one `Scanner`: `seen[p] == generation` when pattern `p` occurs in
/// the current packet, and `found` lists those patterns.
struct ScanState {
    phase: ScanPhase,
    seen: Vec<u32>,
    found: Vec<u32>,
}

impl ScanState {
    fn new(patterns: usize) -> ScanState {
        ScanState {
            phase: ScanPhase::Fresh,
            seen: vec![0; patterns],
            found: Vec::new(),
        }
    }

    fn reset(&mut self, wrapped: bool) {
        self.phase = ScanPhase::Fresh;
        self.found.clear();
        if wrapped {
            self.seen.iter_mut().for_each(|s| *s = 0);
        }
    }

    /// Scans `payload` until pattern `want` is seen (`true`), or to the end (`None`: to
    /// learn every pattern; `false` when `want` does not occur).
    fn advance(&mut self, sc: &Scanner, payload: &[u8], gen: u32, want: Option<usize>) -> bool {
        if let Some(w) = want {
            if self.seen.get(w) == Some(&gen) {
                return true;
            }
        }
        if let ScanPhase::Fresh = self.phase {
            self.phase = match sc.first.find(payload) {
                None => ScanPhase::Done,
                Some(start) => ScanPhase::Scanning {
                    from: start,
                    state: OverlappingState::start(),
                },
            };
        }
        let ScanPhase::Scanning { from, state } = &mut self.phase else {
            return false;
        };
        let input = aho_corasick::Input::new(payload).range(*from..);
        loop {
            if sc.all.try_find_overlapping(input.clone(), state).is_err() {
                // Unreachable (an unanchored standard-semantics automaton supports overlapping
                // search); answer the plain way, every pattern at once.
                self.phase = ScanPhase::Done;
                for (p, lit) in sc.bytes.iter().enumerate() {
                    let hit = payload.windows(lit.len()).any(|w| {
                        if sc.caseless {
                            w.eq_ignore_ascii_case(lit)
                        } else {
                            w == &lit[..]
                        }
                    });
                    if hit && self.seen[p] != gen {
                        self.seen[p] = gen;
                        self.found.push(p as u32);
                    }
                }
                return want.is_some_and(|w| self.seen.get(w) == Some(&gen));
            }
            match state.get_match() {
                None => {
                    self.phase = ScanPhase::Done;
                    return false;
                }
                Some(m) => {
                    let p = m.pattern().as_usize();
                    if let Some(s) = self.seen.get_mut(p) {
                        if *s != gen {
                            *s = gen;
                            self.found.push(p as u32);
                        }
                    }
                    if want == Some(p) {
                        return true;
                    }
                }
            }
        }
    }
}

struct CompiledRegex {
    lazy: Option<DFA>,
    meta: regex_automata::meta::Regex,
}

/// All regexes of a policy: the shared prefix prefilter and each regex's own engine.
struct Regexes {
    /// Lower-cased literal prefixes of the regexes that have them (case-insensitive).
    prefilter: Option<Scanner>,
    /// Prefilter pattern → the regexes it is a prefix of.
    regexes_of_prefix: Vec<Vec<u32>>,
    /// Whether each regex is behind the prefilter (else it runs whenever asked).
    filtered: Vec<bool>,
    /// The regexes that are not.
    unfiltered: Vec<u32>,
    each: Vec<CompiledRegex>,
}

/// The literal prefixes every match of `pattern` begins with, lower-cased, or `None` when
/// there is no such finite set of non-empty ones.
fn prefixes(pattern: &str) -> Option<Vec<Vec<u8>>> {
    let hir =
        syntax::parse_with(pattern, &syntax::Config::new().unicode(false).utf8(false)).ok()?;
    // Room for a case-insensitive word's variants (2^9 for nine letters), which lower-case
    // to one prefix below.
    let seq = Extractor::new()
        .kind(ExtractKind::Prefix)
        .limit_total(1024)
        .extract(&hir);
    let lits = seq.literals()?;
    if lits.is_empty() || lits.iter().any(|l| l.as_bytes().is_empty()) {
        return None;
    }
    let mut out: Vec<Vec<u8>> = lits
        .iter()
        .map(|l| l.as_bytes().to_ascii_lowercase())
        .collect();
    out.sort();
    out.dedup();
    Some(out)
}

impl Regexes {
    fn new(patterns: &[String]) -> Result<Regexes, RegexError> {
        let each = patterns
            .iter()
            .map(|p| {
                let lazy = DFA::builder()
                    .syntax(syntax::Config::new().unicode(false).utf8(false))
                    .thompson(thompson::Config::new().utf8(false))
                    .build(p)
                    .ok();
                Ok(CompiledRegex {
                    lazy,
                    meta: build_regex(p)?,
                })
            })
            .collect::<Result<Vec<_>, RegexError>>()?;
        let mut index: std::collections::HashMap<Vec<u8>, usize> = Default::default();
        let mut prefix_bytes: Vec<Vec<u8>> = Vec::new();
        let mut regexes_of_prefix: Vec<Vec<u32>> = Vec::new();
        let mut filtered = vec![false; patterns.len()];
        for (n, p) in patterns.iter().enumerate() {
            let Some(pre) = prefixes(p) else { continue };
            filtered[n] = true;
            for lit in pre {
                let id = *index.entry(lit.clone()).or_insert_with(|| {
                    prefix_bytes.push(lit);
                    regexes_of_prefix.push(Vec::new());
                    prefix_bytes.len() - 1
                });
                regexes_of_prefix[id].push(n as u32);
            }
        }
        let refs: Vec<&[u8]> = prefix_bytes.iter().map(Vec::as_slice).collect();
        let prefilter = if refs.is_empty() {
            None
        } else {
            Some(Scanner::new(&refs, true)?)
        };
        Ok(Regexes {
            prefilter,
            regexes_of_prefix,
            unfiltered: (0..patterns.len() as u32)
                .filter(|&n| !filtered[n as usize])
                .collect(),
            filtered,
            each,
        })
    }

    fn memory_usage(&self) -> usize {
        self.prefilter.as_ref().map_or(0, Scanner::memory_usage)
            + self
                .regexes_of_prefix
                .iter()
                .map(|v| v.len() * 4 + 24)
                .sum::<usize>()
            + self
                .each
                .iter()
                .map(|r| r.meta.memory_usage() + r.lazy.as_ref().map_or(0, DFA::memory_usage))
                .sum::<usize>()
    }
}

/// A payload atom a gated rule can need.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Need {
    /// Literal pattern (an index into the literal `Scanner`).
    Literal(u32),
    Regex(u32),
}

/// Which rules are gated by payload atoms (see the module docs), indexed for [`next`].
///
/// [`next`]: Scratch::next
struct Gates {
    /// `(start, end)` of each run of at least two consecutive gated rules.
    runs: Vec<(u32, u32)>,
    /// `run_end[r]`: the end of the run holding rule `r`, or `u32::MAX`.
    run_end: Vec<u32>,
    /// Literal pattern / regex → the gated rules that list it, ascending.
    rules_of_literal: Vec<Vec<u32>>,
    rules_of_regex: Vec<Vec<u32>>,
    /// Whether any gated rule lists a regex.
    any_regex: bool,
}

impl Gates {
    /// The payload atoms one of which must hold for `e` to hold, or `None`.
    fn need(ir: &Classifier, pattern_of: &[u32], e: &Expr) -> Option<Vec<Need>> {
        match e {
            Expr::Atom(a) => match ir.atoms.get(*a)? {
                Atom::Contains(n) => match *pattern_of.get(*n)? {
                    u32::MAX => None,
                    p => Some(vec![Need::Literal(p)]),
                },
                Atom::Matches(n) => Some(vec![Need::Regex(*n as u32)]),
                _ => None,
            },
            Expr::And(items) => items
                .iter()
                .filter_map(|i| Self::need(ir, pattern_of, i))
                .min_by_key(Vec::len),
            Expr::Or(items) if !items.is_empty() => {
                let mut all = Vec::new();
                for i in items {
                    all.extend(Self::need(ir, pattern_of, i)?);
                    if all.len() > MAX_GATE_ATOMS {
                        return None;
                    }
                }
                Some(all)
            }
            _ => None,
        }
    }

    fn new(ir: &Classifier, pattern_of: &[u32], literal_patterns: usize) -> Gates {
        let needs: Vec<Option<Vec<Need>>> = ir
            .rules
            .iter()
            .map(|r| Self::need(ir, pattern_of, r).filter(|n| n.len() <= MAX_GATE_ATOMS))
            .collect();
        let mut gates = Gates {
            runs: Vec::new(),
            run_end: vec![u32::MAX; ir.rules.len()],
            rules_of_literal: vec![Vec::new(); literal_patterns],
            rules_of_regex: vec![Vec::new(); ir.regexes.len()],
            any_regex: false,
        };
        let mut i = 0;
        while i < needs.len() {
            let len = needs[i..].iter().take_while(|n| n.is_some()).count();
            if len >= 2 {
                let (start, end) = (i as u32, (i + len) as u32);
                gates.runs.push((start, end));
                for (r, need) in needs.iter().enumerate().skip(i).take(len) {
                    gates.run_end[r] = end;
                    for need in need.iter().flatten() {
                        let list = match *need {
                            Need::Literal(p) => gates.rules_of_literal.get_mut(p as usize),
                            Need::Regex(n) => gates.rules_of_regex.get_mut(n as usize),
                        };
                        if let Some(list) = list {
                            if list.last() != Some(&(r as u32)) {
                                list.push(r as u32);
                            }
                        }
                    }
                }
            }
            i += len.max(1);
        }
        gates.any_regex = gates.rules_of_regex.iter().any(|r| !r.is_empty());
        gates
    }

    fn memory_usage(&self) -> usize {
        self.run_end.len() * 4
            + self.runs.len() * 8
            + self
                .rules_of_literal
                .iter()
                .chain(&self.rules_of_regex)
                .map(|v| v.len() * 4 + 24)
                .sum::<usize>()
    }
}

/// The compiled payload tests of one policy (shared, read-only).
pub struct PayloadMatcher {
    literals: Option<Scanner>,
    /// `pattern_of[n]`: literal `n`'s pattern id in `literals`, or `u32::MAX` for the empty
    /// literal (always contained).
    pattern_of: Vec<u32>,
    regexes: Regexes,
    gates: Gates,
}

/// What the payload engine of a policy holds (see [`PayloadMatcher::stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PayloadStats {
    pub literals: usize,
    pub regexes: usize,
    /// Regexes behind the shared literal-prefix prefilter.
    pub prefiltered_regexes: usize,
    /// Rules in runs that one dispatch call skips (see the module docs).
    pub gated_rules: usize,
    /// Heap bytes of the shared automata and tables.
    pub shared_bytes: usize,
    /// Heap bytes of one thread's scratch when fresh (memoised answers, scan states; the
    /// lazy DFA caches grow up to `regex-automata`'s bound, then are cleared, not grown).
    pub scratch_bytes: usize,
}

impl PayloadStats {
    /// One line for reports: `payload engine 10 literals, 2 regexes (2 prefiltered), 12
    /// gated rules, 1.20 MiB shared + 0.10 MiB per thread, built in 3.4 ms`.
    pub fn describe(&self, built: std::time::Duration) -> String {
        let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
        format!(
            "payload engine {} literals, {} regexes ({} prefiltered), {} gated rules, \
             {:.2} MiB shared + {:.2} MiB per thread, built in {:.1} ms",
            self.literals,
            self.regexes,
            self.prefiltered_regexes,
            self.gated_rules,
            mib(self.shared_bytes),
            mib(self.scratch_bytes),
            built.as_secs_f64() * 1e3
        )
    }
}

/// Per-packet (and per-thread) state of the payload helpers: memoised answers and the lazy
/// DFA caches.
pub struct Scratch {
    /// The current packet's generation: a stamp equal to it is an answer for this packet.
    generation: u32,
    literals: ScanState,
    prefixes: ScanState,
    /// The prefilter has run to the end on this packet and stamped `candidate`.
    prefixes_done: bool,
    /// `candidate[n] == generation`: a prefix of regex `n` occurs in this packet.
    candidate: Vec<u32>,
    /// `regex_answered[n] == generation`: `regex_hit[n]` is regex `n`'s answer.
    regex_answered: Vec<u32>,
    regex_hit: Vec<bool>,
    caches: Vec<Option<Cache>>,
    matcher: *const PayloadMatcher,
}

// SAFETY: `matcher` points into the `Jit` that created the scratch and is only dereferenced
// while that `Jit` is borrowed (the scratch never outlives a `classify` call's borrow of it);
// the lazy-DFA caches and the rest are plain owned data.
unsafe impl Send for Scratch {}

fn too_big(pattern: &str, e: impl std::fmt::Display) -> RegexError {
    RegexError {
        pattern: pattern.into(),
        message: e.to_string(),
    }
}

impl PayloadMatcher {
    pub fn new(ir: &Classifier) -> Result<PayloadMatcher, RegexError> {
        let mut patterns: Vec<&[u8]> = Vec::new();
        let pattern_of: Vec<u32> = ir
            .literals
            .iter()
            .map(|lit| {
                if lit.is_empty() {
                    u32::MAX
                } else {
                    patterns.push(lit);
                    (patterns.len() - 1) as u32
                }
            })
            .collect();
        let literals = if patterns.is_empty() {
            None
        } else {
            Some(Scanner::new(&patterns, false)?)
        };
        let gates = Gates::new(ir, &pattern_of, patterns.len());
        Ok(PayloadMatcher {
            literals,
            pattern_of,
            regexes: Regexes::new(&ir.regexes)?,
            gates,
        })
    }

    /// The runs of gated rules, `(start, end)`: the code dispatches into each through
    /// [`netvm_jit_next`].
    pub fn gated_runs(&self) -> &[(u32, u32)] {
        &self.gates.runs
    }

    /// Fresh per-thread state for this matcher.
    pub fn scratch(&self) -> Scratch {
        let regexes = self.regexes.each.len();
        Scratch {
            generation: 1,
            literals: ScanState::new(self.literals.as_ref().map_or(0, Scanner::len)),
            prefixes: ScanState::new(self.regexes.prefilter.as_ref().map_or(0, Scanner::len)),
            prefixes_done: false,
            candidate: vec![0; regexes],
            regex_answered: vec![0; regexes],
            regex_hit: vec![false; regexes],
            caches: self
                .regexes
                .each
                .iter()
                .map(|r| r.lazy.as_ref().map(DFA::create_cache))
                .collect(),
            matcher: self,
        }
    }

    /// Sizes, for `netvm bench` and the reload report.
    pub fn stats(&self) -> PayloadStats {
        let scratch = self.scratch();
        PayloadStats {
            literals: self.pattern_of.len(),
            regexes: self.regexes.each.len(),
            prefiltered_regexes: self.regexes.filtered.iter().filter(|&&f| f).count(),
            gated_rules: self.gates.runs.iter().map(|(s, e)| (e - s) as usize).sum(),
            shared_bytes: self.literals.as_ref().map_or(0, Scanner::memory_usage)
                + self.regexes.memory_usage()
                + self.gates.memory_usage()
                + self.pattern_of.len() * 4,
            scratch_bytes: (scratch.literals.seen.len() + scratch.prefixes.seen.len()) * 4
                + self.regexes.each.len() * 9
                + scratch
                    .caches
                    .iter()
                    .flatten()
                    .map(Cache::memory_usage)
                    .sum::<usize>(),
        }
    }
}

impl Scratch {
    /// Forgets the previous packet's answers (called before every packet; constant time).
    pub fn reset(&mut self) {
        self.generation = self.generation.wrapping_add(1);
        let wrapped = self.generation == 0;
        if wrapped {
            self.generation = 1;
            for v in [&mut self.candidate, &mut self.regex_answered] {
                v.iter_mut().for_each(|s| *s = 0);
            }
        }
        if wrapped || !matches!(self.literals.phase, ScanPhase::Fresh) {
            self.literals.reset(wrapped);
        }
        if wrapped || !matches!(self.prefixes.phase, ScanPhase::Fresh) {
            self.prefixes.reset(wrapped);
        }
        self.prefixes_done = false;
    }

    fn matcher(&self) -> &'static PayloadMatcher {
        // SAFETY: see the `Send` impl: the matcher outlives every use of its scratch (the
        // `'static` never escapes a helper call).
        unsafe { &*self.matcher }
    }

    fn contains(&mut self, payload: &[u8], literal: usize) -> bool {
        let matcher = self.matcher();
        match (matcher.pattern_of.get(literal), &matcher.literals) {
            (Some(&u32::MAX), _) => true,
            (Some(&p), Some(sc)) => {
                self.literals
                    .advance(sc, payload, self.generation, Some(p as usize))
            }
            // A number no literal has (generated code never asks).
            _ => false,
        }
    }

    fn matches(&mut self, payload: &[u8], regex: usize) -> bool {
        let matcher = self.matcher();
        let (Some(re), Some(&filtered)) = (
            matcher.regexes.each.get(regex),
            matcher.regexes.filtered.get(regex),
        ) else {
            return false;
        };
        let gen = self.generation;
        if self.regex_answered[regex] == gen {
            return self.regex_hit[regex];
        }
        if filtered {
            self.run_prefilter(payload);
            if self.candidate[regex] != gen {
                return false;
            }
        }
        let lazy = match (&re.lazy, self.caches.get_mut(regex)) {
            (Some(dfa), Some(Some(cache))) => dfa
                .try_search_fwd(cache, &Input::new(payload).earliest(true))
                .ok()
                .map(|m| m.is_some()),
            _ => None,
        };
        let found = lazy.unwrap_or_else(|| re.meta.is_match(payload));
        self.regex_answered[regex] = gen;
        self.regex_hit[regex] = found;
        found
    }

    /// Runs the regex prefilter over the whole payload (once per packet) and stamps the
    /// regexes one of whose prefixes occurs.
    fn run_prefilter(&mut self, payload: &[u8]) {
        if self.prefixes_done {
            return;
        }
        self.prefixes_done = true;
        let matcher = self.matcher();
        let Some(sc) = &matcher.regexes.prefilter else {
            return;
        };
        let gen = self.generation;
        self.prefixes.advance(sc, payload, gen, None);
        for &p in &self.prefixes.found {
            for &n in matcher
                .regexes
                .regexes_of_prefix
                .get(p as usize)
                .into_iter()
                .flatten()
            {
                if let Some(c) = self.candidate.get_mut(n as usize) {
                    *c = gen;
                }
            }
        }
    }

    /// The first rule `r >= from` of `from`'s gated run one of whose payload atoms holds, or
    /// the run's end.
    fn next(&mut self, payload: &[u8], from: usize) -> u32 {
        let matcher = self.matcher();
        let gates = &matcher.gates;
        let Some(&end) = gates.run_end.get(from) else {
            return u32::MAX;
        };
        let from = from as u32;
        let first_at_or_after = |rules: &[u32]| {
            let i = rules.partition_point(|&r| r < from);
            rules.get(i).copied().unwrap_or(u32::MAX)
        };
        let mut best = end;
        if let Some(sc) = &matcher.literals {
            self.literals.advance(sc, payload, self.generation, None);
            for &p in &self.literals.found {
                if let Some(rules) = gates.rules_of_literal.get(p as usize) {
                    best = best.min(first_at_or_after(rules));
                }
            }
        }
        if gates.any_regex {
            // Only regexes that can match: those a prefix of which occurs, and those
            // without a prefilter.
            self.run_prefilter(payload);
            let regexes = &matcher.regexes;
            let mut check = |scratch: &mut Scratch, n: usize| {
                let r = gates
                    .rules_of_regex
                    .get(n)
                    .map_or(u32::MAX, |r| first_at_or_after(r));
                if r < best && scratch.matches(payload, n) {
                    best = r;
                }
            };
            for i in 0..self.prefixes.found.len() {
                let p = self.prefixes.found[i] as usize;
                for &n in regexes.regexes_of_prefix.get(p).into_iter().flatten() {
                    check(self, n as usize);
                }
            }
            for &n in &regexes.unfiltered {
                check(self, n as usize);
            }
        }
        best.min(end)
    }
}

/// # Safety
/// `scratch` is a valid, exclusive `Scratch` pointer and `payload..payload+len` is readable
/// (the generated code passes a sub-slice of the frame it was given).
pub unsafe extern "C" fn netvm_jit_contains(
    scratch: *mut Scratch,
    payload: *const u8,
    len: usize,
    literal: u32,
) -> u32 {
    // SAFETY: the caller's contract above.
    let (scratch, payload) = unsafe { (&mut *scratch, std::slice::from_raw_parts(payload, len)) };
    u32::from(scratch.contains(payload, literal as usize))
}

/// # Safety
/// As [`netvm_jit_contains`].
pub unsafe extern "C" fn netvm_jit_matches(
    scratch: *mut Scratch,
    payload: *const u8,
    len: usize,
    regex: u32,
) -> u32 {
    // SAFETY: the caller's contract above.
    let (scratch, payload) = unsafe { (&mut *scratch, std::slice::from_raw_parts(payload, len)) };
    u32::from(scratch.matches(payload, regex as usize))
}

/// # Safety
/// As [`netvm_jit_contains`].
pub unsafe extern "C" fn netvm_jit_next(
    scratch: *mut Scratch,
    payload: *const u8,
    len: usize,
    rule: u32,
) -> u32 {
    // SAFETY: the caller's contract above.
    let (scratch, payload) = unsafe { (&mut *scratch, std::slice::from_raw_parts(payload, len)) };
    scratch.next(payload, rule as usize)
}
