//! `netvm classify`'s library path on ClassBench: both engines match the `.expected` files on
//! every line, and the JIT compiles each set in under a second.
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

/// Checks every line of one set with both engines, and that the JIT compiles the set in under
/// a second (release builds; debug builds only report the time).
fn check_set(name: &str) {
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
    let (mut depth, mut scanned) = (0, 0);
    let mut portless = std::collections::BTreeMap::<u8, usize>::new();
    for (line, (h, &want)) in trace.iter().zip(&expected).enumerate() {
        let frame = h.frame();
        let i = interp.classify(&frame, NO_PORT).map_or(0, |r| r + 1);
        let j = jit.classify(&frame, NO_PORT).map_or(0, |r| r + 1);
        assert_eq!(i, j, "{name} line {}: the engines disagree", line + 1);
        // Frames of other protocols than TCP/UDP carry no ports. The data's expected rules
        // for those lines never have a port condition, so every line must match.
        assert_eq!(
            i,
            want,
            "{name} line {} (proto {}): got rule {i}",
            line + 1,
            h.proto
        );
        if let Some(t) = &tree {
            let (r, d, s) = t.lookup(&frame);
            assert_eq!(r.map_or(0, |r| r + 1), want);
            depth += d;
            scanned += s;
        }
        if !h.has_ports() {
            *portless.entry(h.proto).or_default() += 1;
        }
    }
    eprintln!(
        "{name}: {} lines equal to .expected with both engines (lines without ports, by protocol: {portless:?}); lowering + JIT ({:?}) took {compile:.1?}",
        trace.len(),
        jit.strategy()
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
    check_set("acl1_1k");
}

#[test]
fn acl1_10k_matches_expected_with_both_engines() {
    check_set("acl1_10k");
}

#[test]
fn fw1_1k_matches_expected_with_both_engines() {
    check_set("fw1_1k");
}
