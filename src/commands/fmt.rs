//! `netvm fmt FILE...`: canonical layout, printed or written back.

use std::process::ExitCode;

use netvm_lang::print;

#[derive(clap::Args)]
pub struct Args {
    #[arg(required = true)]
    files: Vec<String>,
    /// Rewrite the files in place instead of printing.
    #[arg(long, conflicts_with = "check")]
    write: bool,
    /// Exit 1 if a file is not formatted (prints nothing else).
    #[arg(long)]
    check: bool,
}

pub fn run(args: Args) -> Result<ExitCode, String> {
    let mut unformatted = 0;
    for file in &args.files {
        let text =
            std::fs::read_to_string(file).map_err(|e| format!("cannot read `{file}`: {e}"))?;
        let formatted = print::format_source(&text).map_err(|e| format!("{file}: {e}"))?;
        if args.check {
            if formatted != text {
                eprintln!("{file}: not formatted");
                unformatted += 1;
            }
        } else if args.write {
            if formatted != text {
                std::fs::write(file, &formatted)
                    .map_err(|e| format!("cannot write `{file}`: {e}"))?;
            }
        } else {
            print!("{formatted}");
        }
    }
    Ok(if unformatted > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
