//! `netvm guest image`: build the initramfs a guest VM boots (cpio "newc", uncompressed):
//! the statically linked guest agent as `/init`, plus `/dev/console`, `/proc`, `/sys`.
//! `netvm run --vm NAME=guest` builds one itself when not given `image=`; this command is
//! for building it once, or around your own static NF binary (`--agent`).

use std::path::PathBuf;
use std::process::ExitCode;

use netvm_runtime::guest;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: GuestCommand,
}

#[derive(clap::Subcommand)]
enum GuestCommand {
    /// Write the guest initramfs.
    Image {
        /// Where to write it.
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
        /// The program to run as PID 1 (statically linked); default: the netvm guest
        /// agent ($NETVM_GUEST_AGENT, or netvm-guest-agent beside this binary or in the
        /// target directory).
        #[arg(long, value_name = "PATH")]
        agent: Option<PathBuf>,
    },
}

pub fn run(args: Args) -> Result<ExitCode, String> {
    match args.command {
        GuestCommand::Image { output, agent } => {
            let agent = match agent {
                Some(a) => a,
                None => guest::find_agent()?,
            };
            let image = guest::build_image(&agent)?;
            std::fs::write(&output, &image)
                .map_err(|e| format!("writing {}: {e}", output.display()))?;
            eprintln!(
                "netvm guest image: {} ({} bytes), /init = {}",
                output.display(),
                image.len(),
                agent.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
