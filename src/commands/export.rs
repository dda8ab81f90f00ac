//! `netvm export openflow POLICY [--port NAME=NUMBER]...`: a header-only policy as
//! `ovs-ofctl add-flows` text on stdout (the translation: [`netvm_compiler::openflow`]).
//!
//! The translation lives in the compiler crate, beside lowering and the interpreter, because
//! it is one more reading of the lowered classifier and its differential test against Open
//! vSwitch needs the interpreter and the policy, not the switch; this command only reads the
//! file, maps port names to numbers and prints. A rule that OpenFlow cannot express is
//! refused naming the rule (exit 2), a policy with errors prints them (exit 1).

use std::process::ExitCode;

use netvm_compiler::openflow;

use crate::commands::classify::load_policy;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    format: ExportFormat,
}

#[derive(clap::Subcommand)]
enum ExportFormat {
    /// OpenFlow flows for `ovs-ofctl add-flows BRIDGE FILE` (one table, rule order as
    /// descending priorities, cookie = rule number; the default has cookie 0xffff).
    Openflow {
        /// The policy file (or `std.NAME`).
        policy: String,
        /// A port's OpenFlow number (`--port lan=3`); the others are numbered 1, 2, ... in
        /// declaration order, skipping numbers given here.
        #[arg(long = "port", value_name = "NAME=NUMBER")]
        ports: Vec<String>,
    },
}

pub fn run(args: Args) -> Result<ExitCode, String> {
    let ExportFormat::Openflow { policy, ports } = args.format;
    let Some((checked, _)) = load_policy(&policy)? else {
        return Ok(ExitCode::from(1));
    };
    let numbers = openflow::port_numbers(&checked, &ports).map_err(|e| e.to_string())?;
    let export = openflow::export(&checked, &numbers).map_err(|e| format!("{policy}: {e}"))?;
    let mapping: Vec<String> = checked
        .ports
        .iter()
        .zip(&numbers)
        .map(|(p, n)| format!("{}={n}", p.name))
        .collect();
    println!(
        "# {policy} as OpenFlow by `netvm export openflow`: {} flows; ports {}",
        export.flows.len(),
        mapping.join(" ")
    );
    println!(
        "# load with: ovs-ofctl set-frags BRIDGE nx-match && ovs-ofctl add-flows BRIDGE FILE \
         (nx-match reads L4 fields in first fragments, as netvm does; OVS's default zeroes them)"
    );
    print!("{}", export.text(&checked));
    Ok(ExitCode::SUCCESS)
}
