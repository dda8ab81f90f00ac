//! Payload matching for JIT code: the `extern "C"` helpers that generated code calls, and the
//! automata behind them.
//!
//! All `contains` literals of a policy live in one Aho-Corasick automaton; each regex is a
//! lazy DFA (`regex-automata`'s hybrid engine, bounded memory) with the meta engine as a
//! fallback for the rare pattern that makes the lazy DFA give up. `starts_with` and
//! `payload[N]` are emitted inline and never come here.
//!
//! ## The ABI
//! Generated code calls, through a constant function pointer (no symbol lookup):
//!
//! ```text
//! extern "C" fn netvm_jit_contains(scratch: *mut Scratch, payload: *const u8, len: usize, literal: u32) -> u32
//! extern "C" fn netvm_jit_matches (scratch: *mut Scratch, payload: *const u8, len: usize, regex: u32)   -> u32
//! ```
//!
//! `scratch` is the per-packet state the engine passed in as the classifier's `ctx` argument;
//! `payload..payload+len` is the packet's payload (inside the frame, already bounds-checked by
//! the generated code); the result is 1 when the literal/regex is found, else 0. Generated code
//! calls a helper only when a rule still needs the answer (short-circuit evaluation), and the
//! helpers memoise per packet: the automaton runs at most once per packet (answering every
//! literal at once), each regex at most once. The helpers never panic and never unwind.

use aho_corasick::AhoCorasick;
use regex_automata::hybrid::dfa::{Cache, DFA};
use regex_automata::util::syntax;
use regex_automata::{nfa::thompson, Input};

use crate::interp::{build_regex, RegexError};

/// The compiled payload tests of one policy (shared, read-only).
pub struct PayloadMatcher {
    /// Non-empty literals; `ac_pattern[n]` is literal `n`'s pattern id in `literals`, or
    /// `u32::MAX` for the empty literal (which generated code never asks about).
    literals: Option<AhoCorasick>,
    literal_count: usize,
    ac_literal: Vec<usize>,
    regexes: Vec<CompiledRegex>,
}

struct CompiledRegex {
    lazy: Option<DFA>,
    meta: regex_automata::meta::Regex,
}

/// Per-packet (and per-thread) state of the payload helpers: memoised answers and DFA caches.
pub struct Scratch {
    literals_done: bool,
    literal_found: Vec<bool>,
    /// 0: not run on this packet, 1: no match, 2: match.
    regex_state: Vec<u8>,
    caches: Vec<Option<Cache>>,
    matcher: *const PayloadMatcher,
}

// SAFETY: `matcher` points into the `Jit` that created the scratch and is only dereferenced
// while that `Jit` is borrowed (the scratch never outlives a `classify` call's borrow of it);
// the lazy-DFA caches are plain owned data.
unsafe impl Send for Scratch {}

impl PayloadMatcher {
    pub fn new(literals: &[Vec<u8>], regexes: &[String]) -> Result<PayloadMatcher, RegexError> {
        let mut patterns = Vec::new();
        let mut ac_literal = Vec::new();
        for lit in literals {
            if lit.is_empty() {
                ac_literal.push(usize::MAX);
            } else {
                ac_literal.push(patterns.len());
                patterns.push(lit.clone());
            }
        }
        let automaton = if patterns.is_empty() {
            None
        } else {
            Some(AhoCorasick::new(&patterns).map_err(|e| RegexError {
                pattern: "<contains literals>".into(),
                message: e.to_string(),
            })?)
        };
        let regexes = regexes
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
            .collect::<Result<_, RegexError>>()?;
        Ok(PayloadMatcher {
            literals: automaton,
            literal_count: patterns.len(),
            ac_literal,
            regexes,
        })
    }

    /// Fresh per-thread state for this matcher.
    pub fn scratch(&self) -> Scratch {
        Scratch {
            literals_done: false,
            literal_found: vec![false; self.literal_count],
            regex_state: vec![0; self.regexes.len()],
            caches: self
                .regexes
                .iter()
                .map(|r| r.lazy.as_ref().map(DFA::create_cache))
                .collect(),
            matcher: self,
        }
    }
}

impl Scratch {
    /// Forgets the previous packet's answers (called before every packet).
    pub fn reset(&mut self) {
        if self.literals_done {
            self.literals_done = false;
            self.literal_found.iter_mut().for_each(|f| *f = false);
        }
        self.regex_state.iter_mut().for_each(|s| *s = 0);
    }

    fn contains(&mut self, payload: &[u8], literal: usize) -> bool {
        // SAFETY: see the `Send` impl: the matcher outlives every use of its scratch.
        let matcher = unsafe { &*self.matcher };
        let Some(&pattern) = matcher.ac_literal.get(literal) else {
            return false;
        };
        if pattern == usize::MAX {
            return true;
        }
        if !self.literals_done {
            self.literals_done = true;
            if let Some(ac) = &matcher.literals {
                for m in ac.find_overlapping_iter(payload) {
                    if let Some(f) = self.literal_found.get_mut(m.pattern().as_usize()) {
                        *f = true;
                    }
                }
            }
        }
        self.literal_found.get(pattern).copied().unwrap_or(false)
    }

    fn matches(&mut self, payload: &[u8], regex: usize) -> bool {
        // SAFETY: see the `Send` impl: the matcher outlives every use of its scratch.
        let matcher = unsafe { &*self.matcher };
        let (Some(re), Some(state)) = (matcher.regexes.get(regex), self.regex_state.get(regex))
        else {
            return false;
        };
        if *state != 0 {
            return *state == 2;
        }
        let lazy = match (&re.lazy, self.caches.get_mut(regex)) {
            (Some(dfa), Some(Some(cache))) => dfa
                .try_search_fwd(cache, &Input::new(payload).earliest(true))
                .ok()
                .map(|m| m.is_some()),
            _ => None,
        };
        let found = lazy.unwrap_or_else(|| re.meta.is_match(payload));
        self.regex_state[regex] = if found { 2 } else { 1 };
        found
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
