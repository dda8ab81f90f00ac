//! `netvm import classbench RULES > policy.nvr`: a ClassBench filter set as a policy.
//!
//! Rule `rN` is line N of the file, in order; each matches `ip.src`, `ip.dst`, `l4.sport`,
//! `l4.dport` and `ip.proto` as the line says, a wildcard adding no condition (TCP flags are
//! ignored, as rte_acl ignores them), action `drop`; unmatched packets go `out p0`.

use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    format: ImportFormat,
}

#[derive(clap::Subcommand)]
enum ImportFormat {
    /// A ClassBench rule file (`@SRC/LEN DST/LEN SLO : SHI DLO : DHI PROTO/MASK FLAGS/MASK`).
    Classbench {
        /// The rule file.
        rules: String,
    },
}

pub fn run(args: Args) -> Result<ExitCode, String> {
    let ImportFormat::Classbench { rules } = args.format;
    let text =
        std::fs::read_to_string(&rules).map_err(|e| format!("cannot read `{rules}`: {e}"))?;
    print!("{}", netvm_lang::import::classbench(&text, &rules)?);
    Ok(ExitCode::SUCCESS)
}
