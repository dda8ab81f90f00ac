//! Classification throughput, JIT against the reference interpreter.
//!
//! - `acl1_10k`: the ClassBench set imported as a policy (9,831 rules, decision tree), frames
//!   built from its trace (skipped when `../shared/data/classbench` is absent). The peer is
//!   DPDK rte_acl on pre-parsed tuples (22.0 Mpps scalar here, see BENCHMARKS.md).
//! - `edge_firewall`: `examples/edge-firewall.nvr` (linear code), frames built from its own
//!   test cases.
//!
//! Run: `cargo bench -p netvm-compiler --bench classify`.

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use netvm_compiler::classbench::parse_trace;
use netvm_compiler::testing::case_frame;
use netvm_compiler::{lower, Interpreter, Jit, NO_PORT};

const BURST: usize = 32;

fn bench_engines(
    c: &mut Criterion,
    name: &str,
    ir: netvm_compiler::Classifier,
    frames: &[Vec<u8>],
    interp_frames: usize,
) {
    let jit = Jit::compile(&ir).expect("compiles");
    let interp = Interpreter::new(ir).expect("compiles");
    let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Elements(refs.len() as u64));
    let mut out = [0u32; BURST];
    group.bench_function("jit", |b| {
        b.iter(|| {
            for burst in refs.chunks(BURST) {
                jit.classify_burst(burst, NO_PORT, &mut out);
                std::hint::black_box(&out);
            }
        })
    });
    let few = &refs[..interp_frames.min(refs.len())];
    group.throughput(Throughput::Elements(few.len() as u64));
    group.bench_function("interp", |b| {
        b.iter(|| {
            for f in few {
                std::hint::black_box(interp.classify(f, NO_PORT));
            }
        })
    });
    group.finish();
}

fn classify(c: &mut Criterion) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let data = root.join("../shared/data/classbench");
    if data.is_dir() {
        let rules = std::fs::read_to_string(data.join("acl1_10k")).expect("rules");
        let text = netvm_lang::import::classbench(&rules, "acl1_10k").expect("imports");
        let policy = netvm_lang::check_text("acl1_10k.nvr", &text)
            .policy
            .expect("checks");
        let trace = std::fs::read_to_string(data.join("acl1_10k_trace")).expect("trace");
        let frames: Vec<Vec<u8>> = parse_trace(&trace)
            .expect("parses")
            .iter()
            .map(|h| h.frame())
            .collect();
        bench_engines(c, "acl1_10k", lower(&policy), &frames, 256);
    } else {
        eprintln!("note: ../shared/data/classbench is absent; skipping acl1_10k");
    }
    let checked = netvm_lang::check_path(root.join("examples/edge-firewall.nvr")).expect("reads");
    let policy = checked.policy.expect("checks");
    let frames: Vec<Vec<u8>> = policy
        .tests
        .iter()
        .flat_map(|t| &t.cases)
        .filter_map(|c| case_frame(c).ok())
        .collect();
    bench_engines(c, "edge_firewall", lower(&policy), &frames, frames.len());
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = classify
}
criterion_main!(benches);
