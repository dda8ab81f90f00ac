//! `netvm repl [POLICY] [--bind ...] [--vm ...]`: start a switch in this process and edit
//! its policy at a prompt; `netvm repl --connect [PATH]`: edit the policy of a running
//! `netvm run` through its control socket. The session logic is [`crate::repl`]; this
//! file starts and stops what it talks to.

use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use netvm_runtime::control::{resolve_socket, AdminHandler, ControlClient};

use crate::commands::run::{self, Launched, SwitchArgs};
use crate::control_admin::check_source;
use crate::repl::{self, LocalSwitch, RemoteSwitch, ReplSession};
use crate::report::{self, Format};

#[derive(clap::Args)]
pub struct Args {
    /// The policy to start on (default: a starting policy with ports `wan` (a generator)
    /// and `lan` (a sink) and a trusted VM `fw`).
    #[arg(conflicts_with = "connect")]
    policy: Option<String>,
    /// Attach to a running `netvm run` through its control socket instead of starting a
    /// switch (without PATH: the only running switch's socket). The binding options below
    /// are for an in-process switch and are ignored here; for one, `--control PATH` opens
    /// a control socket (none by default).
    #[arg(long, value_name = "PATH", num_args = 0..=1, default_missing_value = "")]
    connect: Option<String>,
    #[command(flatten)]
    switch: SwitchArgs,
}

pub fn run(args: Args) -> Result<ExitCode, String> {
    if let Some(path) = &args.connect {
        let explicit = (!path.is_empty()).then(|| std::path::Path::new(path));
        let socket = resolve_socket(explicit).map_err(|e| e.to_string())?;
        let client = ControlClient::connect(&socket).map_err(|e| e.to_string())?;
        let mut link = RemoteSwitch(client);
        let (origin, _) = repl::SwitchLink::policy(&mut link)?;
        let mut session = ReplSession::new(Box::new(link));
        let banner = format!(
            "netvm repl: connected to the switch at {} (running {origin})",
            socket.display()
        );
        repl::terminal::run(&mut session, &banner)?;
        return Ok(ExitCode::SUCCESS);
    }

    let (origin, checked) = match &args.policy {
        Some(path) => (path.clone(), report::check_root(path)?),
        None => (
            repl::STARTING_ORIGIN.to_string(),
            check_source(repl::STARTING_ORIGIN, repl::STARTING_POLICY),
        ),
    };
    report::diagnostics(&checked, Format::Text);
    let Some(policy) = &checked.policy else {
        eprintln!("{origin}: not started, the policy has errors");
        return Ok(ExitCode::from(1));
    };
    let Launched {
        switch,
        live,
        engine,
        binding_lines,
        guests,
        ..
    } = run::launch(&origin, &checked, &args.switch, false)?;
    if let Some(g) = guests.first() {
        return Err(format!(
            "--vm {}=guest: guests run under `netvm run` (then `netvm repl --connect`)",
            g.vm
        ));
    }
    // A control socket only when asked for (`--control PATH`): then `netvm reload`, `netvm
    // status` and another `netvm repl --connect` reach this switch too.
    let control = match args.switch.control {
        Some(_) => {
            let admin: Arc<dyn AdminHandler> = live.clone();
            run::start_control(&args.switch, &switch, Some(admin))?
        }
        None => None,
    };
    let stop = switch.stop_flag();
    let runner = std::thread::Builder::new()
        .name("netvm-switch".into())
        .spawn(move || switch.run())
        .map_err(|e| format!("starting the switch thread: {e}"))?;

    let mut banner = format!(
        "netvm repl: a switch on {origin} runs in this process ({engine}, {} rules)",
        policy.rules.len()
    );
    for line in &binding_lines {
        banner.push('\n');
        banner.push_str(line);
    }
    let mut session = ReplSession::new(Box::new(LocalSwitch(live)));
    let outcome = repl::terminal::run(&mut session, &banner);
    drop(control);

    stop.store(true, Ordering::Relaxed);
    let report = runner
        .join()
        .map_err(|_| "the switch thread panicked".to_string())?
        .map_err(|e| e.to_string())?;
    outcome?;
    let s = &report.stats;
    println!(
        "switch stopped after {:.1} s: rx {}, tx {}, dropped {}; rx = tx + dropped {}; buffers back {}/{}",
        report.elapsed.as_secs_f64(),
        s.rx,
        s.tx,
        s.dropped,
        if s.rx == s.tx + s.dropped { "holds" } else { "DOES NOT HOLD" },
        report.buffers_returned,
        report.buffers
    );
    Ok(if report.clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
