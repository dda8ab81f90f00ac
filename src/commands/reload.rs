//! `netvm reload POLICY [--control PATH]`: hand a new policy to a running `netvm run`
//! through its control socket. The switch checks, compiles and swaps it; this prints what
//! changed (rules added, removed, changed, moved) and how long check, compile and swap
//! took, or the diagnostics and why the running policy stays (exit 1).

use std::path::PathBuf;
use std::process::ExitCode;

use netvm_runtime::control::{resolve_socket, ControlClient, ControlError};

use crate::control_admin::client;

#[derive(clap::Args)]
pub struct Args {
    /// The new policy.
    policy: String,
    /// The switch's control socket (default: the only running switch's).
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<ExitCode, String> {
    let source = std::fs::read_to_string(&args.policy)
        .map_err(|e| format!("cannot read `{}`: {e}", args.policy))?;
    // The switch resolves `import "file"` relative to the policy's own directory.
    let origin = std::path::Path::new(&args.policy)
        .canonicalize()
        .map_or_else(|_| args.policy.clone(), |p| p.display().to_string());
    let socket = resolve_socket(args.control.as_deref()).map_err(|e| e.to_string())?;
    let mut client = ControlClient::connect(&socket).map_err(|e| e.to_string())?;
    match client::reload(&mut client, &origin, &source) {
        Ok(report) => {
            for warning in &report.warnings {
                eprintln!("{warning}\n");
            }
            println!("{report}");
            Ok(ExitCode::SUCCESS)
        }
        Err(ControlError::Remote(why)) => {
            eprintln!("{why}");
            eprintln!("netvm reload: {} was not applied", args.policy);
            Ok(ExitCode::from(1))
        }
        Err(e) => Err(e.to_string()),
    }
}
