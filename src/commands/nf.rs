//! `netvm nf`: run a built-in network function as its own process, attached to a VM of
//! a running switch through its control socket (the `netvm-nf` library does the work).

use std::path::PathBuf;
use std::process::ExitCode;

use netvm_nf::audit::MemoryAudit;
use netvm_nf::{AttachOptions, Nf};
use netvm_runtime::control;
use netvm_runtime::{numa, vm, IdlePolicy};

#[derive(clap::Args)]
pub struct Args {
    /// The built-in to run: forward, counter, drop-every:N, pcap-tap:FILE,
    /// rewrite:dscp=N, delay:us=N.
    builtin: String,
    /// The VM of the running switch's policy to attach to (bound there with
    /// `--vm NAME=process`).
    #[arg(long)]
    vm: String,
    /// The switch's control socket (default: the only running switch's).
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
    /// What the loop does when there is no work.
    #[arg(long, value_enum, default_value = "busy")]
    idle: Idle,
    /// Pin this process to a core.
    #[arg(long)]
    core: Option<usize>,
    /// After attaching, write what this process maps and holds of netvm's memory
    /// (memfd mappings and descriptors, from /proc/self) as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    audit: Option<PathBuf>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Idle {
    Busy,
    Sleep,
}

pub fn run(args: Args) -> Result<ExitCode, String> {
    let mut function = vm::builtin(&args.builtin).map_err(|e| e.to_string())?;
    if function.external() {
        return Err(
            "`process` is how a switch binds a VM to a process; run a built-in here".into(),
        );
    }
    let socket = control::resolve_socket(args.control.as_deref()).map_err(|e| e.to_string())?;
    if let Some(core) = args.core {
        numa::pin_current_thread(core).map_err(|e| format!("--core {core}: {e}"))?;
    }
    let options = AttachOptions {
        writes: function.writes(),
        idle: match args.idle {
            Idle::Busy => IdlePolicy::Busy,
            Idle::Sleep => IdlePolicy::Sleep,
        },
    };
    let mut nf = Nf::attach_with(&socket, &args.vm, options)
        .map_err(|e| format!("attaching to VM `{}` at {}: {e}", args.vm, socket.display()))?;
    let info = nf.info();
    eprintln!(
        "netvm nf {}: attached to VM `{}` of {} ({} region, {})",
        function.describe(),
        info.vm,
        socket.display(),
        info.region,
        if info.trusted {
            "trusted: packets in place, zero-copy"
        } else {
            "untrusted: private copies only"
        }
    );
    if let Some(path) = &args.audit {
        let audit = MemoryAudit::of_self().map_err(|e| format!("reading /proc/self: {e}"))?;
        let mut json = audit.to_json();
        json["region"] = serde_json::json!({
            "start": nf.region_range().start,
            "end": nf.region_range().end,
        });
        std::fs::write(
            path,
            serde_json::to_string_pretty(&json).unwrap_or_default() + "\n",
        )
        .map_err(|e| format!("--audit {}: {e}", path.display()))?;
    }
    nf.run_function(function.as_mut())
        .map_err(|e| e.to_string())?;
    eprintln!(
        "netvm nf {}: the switch has gone; exiting",
        function.describe()
    );
    if let Some(summary) = function.summary() {
        println!("{}: {summary}", args.vm);
    }
    function.finish()?;
    Ok(ExitCode::SUCCESS)
}
