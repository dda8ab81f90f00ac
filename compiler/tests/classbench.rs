//! `netvm classify`'s library path on ClassBench: both engines match the `.expected` files on
//! every line of every shared set (the JIT on the whole trace, single frames and bursts; the
//! interpreter, which scans every rule, on every line of the 1K sets and on an evenly spaced
//! sample of the others, to keep debug-build CI time in seconds), and the JIT compiles each
//! set in under a second (asserted in release builds only).
//!
//! The data lives outside the repository (`../shared/data/classbench/`); without it the tests
//! print a note and pass.

use std::path::PathBuf;
use std::time::Instant;

use netvm_compiler::classbench::{parse_expected, parse_trace};
use netvm_compiler::{lower, Interpreter, Jit, NO_PORT};

fn data_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/classbench");
    dir.is_dir().then_some(dir)
}

/// Checks one set (see the module doc); the interpreter checks every `interp_every`-th line.
fn check_set(name: &str, interp_every: usize) {
    let Some(dir) = data_dir() else {
        eprintln!("note: ../shared/data/classbench is absent; skipping {name}");
        return;
    };
    let read = |file: String| {
        std::fs::read_to_string(dir.join(&file)).unwrap_or_else(|e| panic!("{file}: {e}"))
    };
    let text = netvm_lang::import::classbench(&read(name.to_string()), name).expect("imports");
    let checked = netvm_lang::check_text("policy.nvr", &text);
    let policy = checked.policy.expect("the imported policy checks");
    let started = Instant::now();
    let ir = lower(&policy);
    let jit = Jit::compile(&ir).expect("compiles");
    let compile = started.elapsed();
    if !cfg!(debug_assertions) {
        assert!(compile.as_secs_f64() < 1.0, "{name}: JIT took {compile:?}");
    }
    let interp = Interpreter::new(ir).expect("no regexes");
    let trace = parse_trace(&read(format!("{name}_trace"))).expect("parses");
    let expected = parse_expected(&read(format!("{name}_trace.expected"))).expect("parses");
    assert_eq!(trace.len(), expected.len());
    // The burst entry point (what `netvm bench` and the switch call) gives the same lines.
    let frames: Vec<Vec<u8>> = trace.iter().map(|h| h.frame()).collect();
    let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
    let mut out = [0u32; 32];
    for (b, burst) in refs.chunks(32).enumerate() {
        jit.classify_burst(burst, NO_PORT, &mut out);
        for (k, &got) in out[..burst.len()].iter().enumerate() {
            let line = b * 32 + k;
            let got = if got as usize >= jit.rule_count() {
                0
            } else {
                got as usize + 1
            };
            assert_eq!(got, expected[line], "{name} line {}: burst", line + 1);
        }
    }
    let tree = netvm_compiler::jit::tree::Tree::build(&lower(&policy));
    let (mut depth, mut scanned, mut interpreted) = (0, 0, 0);
    let mut portless = std::collections::BTreeMap::<u8, usize>::new();
    for (line, (h, &want)) in trace.iter().zip(&expected).enumerate() {
        let frame = &frames[line];
        let j = jit.classify(frame, NO_PORT).map_or(0, |r| r + 1);
        // Frames of other protocols than TCP/UDP carry no ports. The data's expected rules
        // for those lines never have a port condition, so every line must match.
        assert_eq!(
            j,
            want,
            "{name} line {} (proto {}): the JIT got rule {j}",
            line + 1,
            h.proto
        );
        if line % interp_every == 0 {
            let i = interp.classify(frame, NO_PORT).map_or(0, |r| r + 1);
            assert_eq!(i, want, "{name} line {}: the interpreter got {i}", line + 1);
            interpreted += 1;
        }
        if let Some(t) = &tree {
            let (r, d, s) = t.lookup(frame);
            assert_eq!(r.map_or(0, |r| r + 1), want);
            depth += d;
            scanned += s;
        }
        if !h.has_ports() {
            *portless.entry(h.proto).or_default() += 1;
        }
    }
    eprintln!(
        "{name}: {} lines equal to .expected with the JIT, {interpreted} with the interpreter (lines without ports, by protocol: {portless:?}); lowering + JIT ({:?}, {:?}) took {compile:.1?}",
        trace.len(),
        jit.strategy(),
        jit.tree_stats(),
    );
    if let Some(t) = &tree {
        eprintln!(
            "{name}: tree {:?} (node words, boxes in leaves, distinct boxes, table bytes); per packet: depth {:.2}, boxes scanned {:.2}",
            t.size(),
            depth as f64 / trace.len() as f64,
            scanned as f64 / trace.len() as f64
        );
    }
}

#[test]
fn acl1_1k_matches_expected_with_both_engines() {
    check_set("acl1_1k", 1);
}

#[test]
fn fw1_1k_matches_expected_with_both_engines() {
    check_set("fw1_1k", 1);
}

#[test]
fn acl1_10k_matches_expected_with_both_engines() {
    check_set("acl1_10k", 100);
}

#[test]
fn fw1_10k_matches_expected_with_both_engines() {
    check_set("fw1_10k", 100);
}

#[test]
fn ipc2_10k_matches_expected_with_both_engines() {
    check_set("ipc2_10k", 100);
}

#[test]
fn acl1_100k_matches_expected_with_both_engines() {
    check_set("acl1_100k", 1000);
}

#[test]
fn fw1_100k_matches_expected_with_both_engines() {
    check_set("fw1_100k", 1000);
}
