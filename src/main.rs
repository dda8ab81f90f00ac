//! The `netvm` command: wires the language, the compiler and the runtime together.
//!
//! Exit codes: 0 success, 1 a policy has errors or a test failed, 2 usage errors (unknown
//! flags, unreadable files).

mod commands;
mod control_admin;
mod policy_table;
mod repl;
mod report;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "netvm",
    version,
    about = "A rule-programmable software switch: .nvr policies, JIT classifiers, zero-copy VMs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Parse, resolve, type-check and lower policies; report every problem.
    Check(commands::check::Args),
    /// Run the `test` blocks of policies (a stdlib module is named `std.NAME`).
    Test(commands::test::Args),
    /// Show how a policy classifies one packet, rule by rule.
    Explain(commands::explain::Args),
    /// Print policies in canonical layout (comments between declarations are kept).
    Fmt(commands::fmt::Args),
    /// Convert a rule set of another tool into a policy (printed on stdout).
    Import(commands::import::Args),
    /// Convert a header-only policy into another switch's rules (printed on stdout).
    Export(commands::export::Args),
    /// Classify a ClassBench trace: one line per packet, the rule's name or `default`.
    Classify(commands::classify::Args),
    /// Measure classification throughput (JIT and interpreter) on a trace or a capture.
    Bench(commands::bench::Args),
    /// Run the switch: bind ports and VMs, forward packets, print per-port/VM/rule counters.
    Run(commands::run::Args),
    /// Run a built-in network function as its own process, attached to a VM of a running
    /// switch (bound there with `--vm NAME=process`).
    Nf(commands::nf::Args),
    /// Show a running switch's VMs (processes, guests, state, ring fill), ports and drops.
    Status(commands::status::Args),
    /// Guest VMs: `netvm guest image -o FILE` builds the initramfs a guest boots.
    Guest(commands::guest::Args),
    /// Edit a switch's policy at a prompt: a switch in this process, or `--connect` to a
    /// running `netvm run`.
    Repl(commands::repl::Args),
    /// Hand a new policy to a running `netvm run` (control socket); print what changed.
    Reload(commands::reload::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Commands whose output is read by pipelines (`netvm check ... | head -1`) end quietly
    // when the reader goes, as Unix tools do, instead of panicking on a broken pipe. The
    // switch (`run`, `repl`, `nf`) keeps SIGPIPE ignored: a closed stdout must not kill it.
    if matches!(
        cli.command,
        Command::Check(_)
            | Command::Test(_)
            | Command::Explain(_)
            | Command::Fmt(_)
            | Command::Import(_)
            | Command::Classify(_)
            | Command::Bench(_)
            | Command::Status(_)
    ) {
        // SAFETY: restores the default disposition of one signal before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let result = match cli.command {
        Command::Check(args) => commands::check::run(args),
        Command::Test(args) => commands::test::run(args),
        Command::Explain(args) => commands::explain::run(args),
        Command::Fmt(args) => commands::fmt::run(args),
        Command::Import(args) => commands::import::run(args),
        Command::Export(args) => commands::export::run(args),
        Command::Classify(args) => commands::classify::run(args),
        Command::Bench(args) => commands::bench::run(args),
        Command::Run(args) => commands::run::run(args),
        Command::Nf(args) => commands::nf::run(args),
        Command::Status(args) => commands::status::run(args),
        Command::Guest(args) => commands::guest::run(args),
        Command::Repl(args) => commands::repl::run(args),
        Command::Reload(args) => commands::reload::run(args),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
    }
}
