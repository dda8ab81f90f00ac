//! How long `netvm check` takes on a 10,000-rule policy (ClassBench acl1_10k imported), and
//! on the examples. The bar: under 300 ms wall time for the 10k policy.
//!
//! `cargo bench -p netvm-lang --bench check`. Needs `../shared/data/classbench/acl1_10k`
//! (skipped with a note when absent).

use criterion::{criterion_group, criterion_main, Criterion};

fn acl_policy(name: &str) -> Option<String> {
    let path = format!(
        "{}/../../shared/data/classbench/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).ok()?;
    netvm_lang::import::classbench(&text, name).ok()
}

fn check(c: &mut Criterion) {
    let mut group = c.benchmark_group("check");
    group.sample_size(20);
    for name in ["acl1_1k", "acl1_10k"] {
        let Some(policy) = acl_policy(name) else {
            eprintln!("skipping {name}: ../shared/data/classbench is not there");
            continue;
        };
        group.bench_function(format!("{name} (parse+check+shadow)"), |b| {
            b.iter(|| {
                let checked = netvm_lang::check_text(name, &policy);
                assert!(checked.policy.is_some());
            })
        });
        group.bench_function(format!("{name} (parse only)"), |b| {
            b.iter(|| netvm_lang::parse::parse_file(netvm_lang::FileId(0), &policy))
        });
    }
    let quickstart = format!(
        "{}/../examples/edge-firewall.nvr",
        env!("CARGO_MANIFEST_DIR")
    );
    group.bench_function("examples/edge-firewall.nvr", |b| {
        b.iter(|| netvm_lang::check_path(&quickstart).expect("loads"))
    });
    group.finish();
}

criterion_group!(benches, check);
criterion_main!(benches);
