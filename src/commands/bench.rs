//! `netvm bench POLICY --trace TRACE | --pcap FILE | --tests [--in-port PORT]`: classification throughput of the JIT and
//! the interpreter on one core.
//!
//! Frames are built (or read) into memory first; each engine then classifies them in bursts
//! of 32, cycling through the frames, for repeated timed runs; the report gives the median
//! run in million packets per second and nanoseconds per packet, and the JIT/interpreter
//! ratio. The time includes parsing every frame (both engines start from raw bytes). The
//! compile time (lowering and JIT) is reported too, and with the decision-forest strategy
//! what it built: trees, header and residual rules, table memory against the budget
//! (`--tree-budget-mb`), build time.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use netvm_compiler::classbench::parse_trace;
use netvm_compiler::testing::case_frame;
use netvm_compiler::{Interpreter, Jit, NO_PORT};

use super::classify::load_policy;

const BURST: usize = 32;

#[derive(clap::Args)]
pub struct Args {
    /// The policy file (or `std.NAME`).
    policy: String,
    /// A ClassBench trace (one frame is built per line).
    #[arg(long, conflicts_with_all = ["pcap", "tests"], required_unless_present_any = ["pcap", "tests"])]
    trace: Option<String>,
    /// A pcap or pcapng capture.
    #[arg(long, conflicts_with = "tests")]
    pcap: Option<String>,
    /// The frames of the policy's own test cases.
    #[arg(long)]
    tests: bool,
    /// The port every frame arrives on (default: unknown, so `in_port` tests are false).
    #[arg(long)]
    in_port: Option<String>,
    /// Timed runs per engine (the median is reported).
    #[arg(long, default_value_t = 7)]
    runs: usize,
    /// Minimum length of one run, in milliseconds.
    #[arg(long, default_value_t = 200)]
    run_ms: u64,
    /// Skip the interpreter (it is slow on large rule sets).
    #[arg(long)]
    jit_only: bool,
    /// The decision forest's memory budget, in MiB (its tables never exceed it; default 64
    /// per 10,000 rules, 64 to 256).
    #[arg(long)]
    tree_budget_mb: Option<usize>,
}

/// One line on what the JIT built: the strategy and, for a decision forest, its trees,
/// rules, memory against the budget and build time.
pub fn describe(jit: &Jit) -> String {
    match jit.tree_stats() {
        None => format!("{:?} strategy", jit.strategy()),
        Some(s) => format!(
            "{:?} strategy: {} tree{}, {} header rules + {} residual, tables {:.2} MB of a {:.0} MB budget{}, built in {:.1} ms",
            jit.strategy(),
            s.subtrees,
            if s.subtrees == 1 { "" } else { "s" },
            s.header_rules,
            s.residual_rules,
            s.bytes as f64 / 1e6,
            s.budget as f64 / (1u64 << 20) as f64,
            if s.budget_reached { " (reached: some leaves left uncut)" } else { "" },
            s.build_time.as_secs_f64() * 1e3
        ),
    }
}

/// Median packets per second over `runs` runs of at least `run` each.
fn measure(frames: &[Vec<u8>], runs: usize, run: Duration, mut burst: impl FnMut(&[&[u8]])) -> f64 {
    let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
    let chunks: Vec<&[&[u8]]> = refs.chunks(BURST).collect();
    let mut rates = Vec::new();
    // One untimed pass warms caches and the branch predictors.
    for c in &chunks {
        burst(c);
    }
    for _ in 0..runs.max(1) {
        let start = Instant::now();
        let mut packets = 0usize;
        'run: loop {
            for c in &chunks {
                burst(c);
                packets += c.len();
                if packets % 4096 < BURST && start.elapsed() >= run {
                    break 'run;
                }
            }
            if start.elapsed() >= run {
                break;
            }
        }
        rates.push(packets as f64 / start.elapsed().as_secs_f64());
    }
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}

pub fn run(args: Args) -> Result<ExitCode, String> {
    let started = Instant::now();
    let Some((policy, ir)) = load_policy(&args.policy)? else {
        return Ok(ExitCode::from(1));
    };
    let checked = started.elapsed();
    let frames: Vec<Vec<u8>> = match (&args.trace, &args.pcap) {
        _ if args.tests => policy
            .tests
            .iter()
            .flat_map(|t| &t.cases)
            .filter_map(|c| case_frame(c).ok())
            .collect(),
        (Some(trace), _) => {
            let text = std::fs::read_to_string(trace)
                .map_err(|e| format!("cannot read `{trace}`: {e}"))?;
            parse_trace(&text)
                .map_err(|e| format!("`{trace}`: {e}"))?
                .iter()
                .map(|h| h.frame())
                .collect()
        }
        (None, Some(pcap)) => super::explain::read_capture(pcap)?,
        (None, None) => return Err("give --trace or --pcap".into()),
    };
    let in_port = match &args.in_port {
        None => NO_PORT,
        Some(name) => policy
            .ports
            .iter()
            .position(|p| p.name == *name)
            .ok_or_else(|| format!("the policy has no port `{name}`"))?
            as u32,
    };
    if frames.is_empty() {
        return Err("no packets to classify".into());
    }
    let compile_started = Instant::now();
    let budget = match args.tree_budget_mb {
        None => netvm_compiler::jit::tree::default_budget(ir.rules.len()),
        Some(mb) => mb
            .checked_mul(1 << 20)
            .ok_or("--tree-budget-mb is too large")?,
    };
    let jit = Jit::compile_with_budget(&ir, netvm_compiler::jit::Strategy::Auto, budget)
        .map_err(|e| format!("cannot compile the policy: {e}"))?;
    let compiled = compile_started.elapsed();
    println!(
        "policy {} ({} rules, checked in {:.1} ms), {} frames; JIT compiled in {:.1} ms (check + JIT {:.1} ms; {})",
        args.policy,
        policy.rules.len(),
        checked.as_secs_f64() * 1e3,
        frames.len(),
        compiled.as_secs_f64() * 1e3,
        (checked + compiled).as_secs_f64() * 1e3,
        describe(&jit)
    );
    if let Some((stats, built)) = jit.payload_stats() {
        println!("{}", stats.describe(built));
    }
    println!(
        "bursts of {BURST}, median of {} runs of >= {} ms each, one core",
        args.runs, args.run_ms
    );
    let run = Duration::from_millis(args.run_ms);
    let mut out = [0u32; BURST];
    let jit_rate = measure(&frames, args.runs, run, |burst| {
        jit.classify_burst(burst, in_port, &mut out);
        std::hint::black_box(&out);
    });
    let report = |name: &str, rate: f64| {
        println!(
            "{name:<7} {:>9.2} Mpps {:>10.1} ns/packet",
            rate / 1e6,
            1e9 / rate
        );
    };
    report("jit", jit_rate);
    if !args.jit_only {
        let interp = Interpreter::new(ir).map_err(|e| format!("cannot compile the policy: {e}"))?;
        let interp_rate = measure(&frames, args.runs, run, |burst| {
            for (f, slot) in burst.iter().zip(out.iter_mut()) {
                *slot = interp.classify(f, NO_PORT).map_or(u32::MAX, |r| r as u32);
            }
            std::hint::black_box(&out);
        });
        report("interp", interp_rate);
        println!("jit/interp: {:.1}x", jit_rate / interp_rate);
    }
    Ok(ExitCode::SUCCESS)
}
