//! How the binary shows diagnostics: rustc-style text on stderr, or one JSON object per line
//! on stdout for CI annotations.

use std::io::IsTerminal;

use netvm_lang::{Checked, Diagnostic};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// Prints every diagnostic of a check.
pub fn diagnostics(checked: &Checked, format: Format) {
    print_all(&checked.diagnostics, checked, format);
}

pub fn print_all(diags: &[Diagnostic], checked: &Checked, format: Format) {
    let color = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    for diag in diags {
        match format {
            Format::Text => eprintln!("{}\n", diag.render(checked.sources(), color)),
            Format::Json => println!("{}", diag.to_json(checked.sources())),
        }
    }
}

/// Reads and checks a root: a path, or `std.NAME` for a stdlib module.
pub fn check_root(root: &str) -> Result<Checked, String> {
    match root.strip_prefix("std.") {
        Some(module) if !std::path::Path::new(root).exists() => {
            netvm_lang::check(netvm_lang::RootSource::Std(module.to_string()))
        }
        _ => netvm_lang::check_path(root),
    }
}
