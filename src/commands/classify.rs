//! `netvm classify POLICY --trace TRACE [--engine jit|interp]`: one line per trace line, the
//! matched rule's name or `default`.
//!
//! The trace is a ClassBench header trace; each line becomes one Ethernet/IPv4 frame (see
//! [`netvm_compiler::classbench`]), so the classification includes frame parsing, as on the
//! switch's data path.

use std::io::Write;
use std::process::ExitCode;

use netvm_compiler::classbench::parse_trace;
use netvm_compiler::{lower, Interpreter, Jit, NO_PORT};

use crate::report::{self, Format};

/// Which classifier runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Engine {
    /// The Cranelift JIT (native code).
    Jit,
    /// The reference interpreter.
    Interp,
}

#[derive(clap::Args)]
pub struct Args {
    /// The policy file (or `std.NAME`).
    policy: String,
    /// A ClassBench trace: `SRC DST SPORT DPORT PROTO FLAGS FILTER` per line.
    #[arg(long)]
    trace: String,
    #[arg(long, value_enum, default_value = "jit")]
    engine: Engine,
}

/// Checks and lowers a policy, printing its diagnostics; `Ok(None)` when it has errors.
pub fn load_policy(
    path: &str,
) -> Result<Option<(netvm_lang::Policy, netvm_compiler::Classifier)>, String> {
    let checked = report::check_root(path)?;
    let Some(policy) = checked.policy.clone() else {
        // Only a policy with errors has none; warnings are `netvm check`'s business.
        report::diagnostics(&checked, Format::Text);
        return Ok(None);
    };
    let ir = lower(&policy);
    Ok(Some((policy, ir)))
}

/// One engine's classification of a frame.
type Classify = dyn Fn(&[u8]) -> Option<usize>;

pub fn run(args: Args) -> Result<ExitCode, String> {
    let Some((policy, ir)) = load_policy(&args.policy)? else {
        return Ok(ExitCode::from(1));
    };
    let text = std::fs::read_to_string(&args.trace)
        .map_err(|e| format!("cannot read `{}`: {e}", args.trace))?;
    let trace = parse_trace(&text).map_err(|e| format!("`{}`: {e}", args.trace))?;
    let classify: Box<Classify> = match args.engine {
        Engine::Jit => {
            let jit = Jit::compile(&ir).map_err(|e| format!("cannot compile the policy: {e}"))?;
            Box::new(move |f| jit.classify(f, NO_PORT))
        }
        Engine::Interp => {
            let interp =
                Interpreter::new(ir).map_err(|e| format!("cannot compile the policy: {e}"))?;
            Box::new(move |f| interp.classify(f, NO_PORT))
        }
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for header in &trace {
        let name = classify(&header.frame()).map_or("default", |r| policy.rules[r].name.as_str());
        if writeln!(out, "{name}").is_err() {
            // A closed pipe (`| head`) ends the output quietly.
            return Ok(ExitCode::SUCCESS);
        }
    }
    let _ = out.flush();
    Ok(ExitCode::SUCCESS)
}
