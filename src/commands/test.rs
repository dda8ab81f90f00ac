//! `netvm test FILE...`: one line per case, then `test result: ok. N passed; 0 failed`.

use std::process::ExitCode;

use netvm_compiler::testing::run_tests;
use netvm_compiler::Interpreter;

use crate::report::{self, Format};

#[derive(clap::Args)]
pub struct Args {
    /// Policy files (or `std.NAME` for a stdlib module).
    #[arg(required = true)]
    files: Vec<String>,
}

pub fn run(args: Args) -> Result<ExitCode, String> {
    let mut passed = 0usize;
    let mut failed = 0usize;
    let mut broken = false;
    let mut failures = Vec::new();
    for file in &args.files {
        let checked = report::check_root(file)?;
        report::diagnostics(&checked, Format::Text);
        let Some(policy) = &checked.policy else {
            eprintln!("{file}: not tested, the policy has errors");
            broken = true;
            continue;
        };
        let engine = Interpreter::new(netvm_compiler::lower(policy)).map_err(|e| e.to_string())?;
        let sources = checked.sources();
        for outcome in run_tests(policy, &engine) {
            let test = &policy.tests[outcome.test];
            let case = &test.cases[outcome.case];
            let source = sources.get(case.span.file);
            let (line, _) = source.line_col(case.span.start as usize);
            let packet = source.snippet(case.span);
            let packet = packet.split("=>").next().unwrap_or(packet);
            // A case written over several lines is shown on one; strings keep their spaces.
            let packet = packet.lines().map(str::trim).collect::<Vec<_>>().join(" ");
            let status = if outcome.passed() { "ok" } else { "FAILED" };
            println!(
                "test {}:{line} {} :: {packet} ... {status}",
                source.name, test.title
            );
            match &outcome.failure {
                None => passed += 1,
                Some(why) => {
                    failed += 1;
                    failures.push(format!("{}:{line}: {}: {why}", source.name, test.title));
                }
            }
        }
    }
    if !failures.is_empty() {
        println!("\nfailures:");
        for f in &failures {
            println!("    {f}");
        }
        println!();
    }
    let verdict = if failed == 0 && !broken {
        "ok"
    } else {
        "FAILED"
    };
    println!("test result: {verdict}. {passed} passed; {failed} failed");
    Ok(if failed == 0 && !broken {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
