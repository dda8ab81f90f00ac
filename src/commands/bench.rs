//! `netvm bench POLICY --trace TRACE | --pcap FILE | --tests [--in-port PORT]`: classification throughput of the JIT and
//! the interpreter on one core.
//!
//! Frames are built (or read) into memory first; each engine then classifies them in bursts
//! of 32, cycling through the frames, for repeated timed runs; the report gives the median
//! run in million packets per second and nanoseconds per packet, and the JIT/interpreter
//! ratio. The time includes parsing every frame (both engines start from raw bytes). The
//! compile time (lowering and JIT) is reported too.

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
    let jit = Jit::compile(&ir).map_err(|e| format!("cannot compile the policy: {e}"))?;
    let compiled = compile_started.elapsed();
    println!(
        "policy {} ({} rules, checked in {:.1} ms), {} frames; JIT: {:?} strategy, compiled in {:.1} ms",
        args.policy,
        policy.rules.len(),
        checked.as_secs_f64() * 1e3,
        frames.len(),
        jit.strategy(),
        compiled.as_secs_f64() * 1e3
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
