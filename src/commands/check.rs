//! `netvm check FILE...`

use std::process::ExitCode;

use crate::report::{self, Format};

#[derive(clap::Args)]
pub struct Args {
    /// Policy files (or `std.NAME` for a stdlib module).
    #[arg(required = true)]
    files: Vec<String>,
    /// Treat warnings as errors.
    #[arg(long)]
    deny_warnings: bool,
    /// `text` (rustc style, stderr) or `json` (one object per line, stdout).
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
}

pub fn run(args: Args) -> Result<ExitCode, String> {
    let mut errors = 0;
    let mut warnings = 0;
    for file in &args.files {
        let checked = report::check_root(file)?;
        report::diagnostics(&checked, args.format);
        errors += checked.error_count();
        warnings += checked.warning_count();
        if let Some(policy) = &checked.policy {
            // Lowering is part of checking: a policy that checks must compile.
            let classifier = netvm_compiler::lower(policy);
            netvm_compiler::Interpreter::new(classifier).map_err(|e| format!("{file}: {e}"))?;
        }
    }
    if args.format == Format::Text {
        let files = args.files.len();
        let noun = if files == 1 { "file" } else { "files" };
        let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
        eprintln!(
            "checked {files} {noun}: {}, {}",
            plural(errors, "error"),
            plural(warnings, "warning")
        );
    }
    let failed = errors > 0 || (args.deny_warnings && warnings > 0);
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
