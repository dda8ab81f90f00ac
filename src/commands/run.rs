//! `netvm run POLICY --bind PORT=DRIVER:ARGS... --vm VM=BUILTIN[:ARGS]...`: start the
//! switch and report what it did.
//!
//! With no `--bind`, ports use the binding written in the policy (`port lan =
//! afpacket("veth0")`) or else the embedded default: the first port a generator, the
//! others sinks; VMs without `--vm` run `forward`. An unbounded generator with no
//! `--duration` runs for 3 seconds. Live rates go to stderr (a spinner on a terminal,
//! plain lines otherwise); the final table goes to stdout, the same numbers as JSON to
//! `--stats-json`. Exit 0 when every buffer came back and rx = tx + drops, 1 when not,
//! 2 on usage errors.
//!
//! SIGHUP re-reads the policy file and hot-reloads it ([`LivePolicy::reload_file`]): errors
//! are printed as `netvm check` prints them and the running policy stays; a policy that
//! changes the ports or VMs is refused whole. Rule and named counters carry over for
//! names that stay; the final table lists the last policy's rules.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use netvm_runtime::control::{self, AdminHandler, ControlServer};
use netvm_runtime::guest::{self, GuestPlan, GuestReport, Guests};
use netvm_runtime::numa::parse_cpulist;
use netvm_runtime::port::{self, Port};
use netvm_runtime::region::HugepagePolicy;
use netvm_runtime::stats::StatsSnapshot;
use netvm_runtime::{
    vm, IdlePolicy, NetworkFunction, Program, ProgramHandle, RunReport, Switch, SwitchConfig,
    VmMode,
};

use crate::control_admin::{Bindings, LivePolicy};
use crate::policy_table;
use crate::report::{self, Format};

#[derive(clap::Args)]
pub struct Args {
    /// The policy to run.
    policy: String,
    #[command(flatten)]
    switch: SwitchArgs,
    /// Write the final counters as JSON.
    #[arg(long, value_name = "FILE")]
    stats_json: Option<String>,
}

/// How to bind and run the switch: shared by `netvm run` and `netvm repl`.
#[derive(clap::Args)]
pub struct SwitchArgs {
    /// Bind a port: `PORT=gen:flows=N,size=B,count=N[,prefilled=1]`,
    /// `PORT=pcap:rx=IN,tx=OUT[,pps=N]` (`pps`: replay IN at N frames a second), `PORT=null`, `PORT=afpacket:IFACE`, `PORT=dpdk:DEVICE[,ARGS][,rxq=N,txq=N]`
    /// (`--features dpdk` builds; see docs/dpdk.md).
    #[arg(long = "bind", value_name = "PORT=DRIVER:ARGS")]
    binds: Vec<String>,
    /// Arguments for DPDK's EAL, for `dpdk:` ports, appended to netvm's defaults
    /// (`--no-pci`, `--in-memory` or `--no-huge -m 256`, `--file-prefix=netvm-PID`, ...),
    /// e.g. `--eal '--no-huge -m 512'`.
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    eal: Option<String>,
    /// Run a VM as a built-in: forward, counter, drop-every:N, pcap-tap:FILE,
    /// rewrite:dscp=N, delay:us=N; or `process`: a network function process attaches to
    /// it through the control socket (`netvm nf BUILTIN --vm VM`, or a `netvm-nf` program);
    /// or `guest[:cpus=N,mem=SIZE,accel=auto|kvm|tcg,kernel=PATH,image=PATH,console=PATH,
    /// restart=yes|no,attach_timeout=S,nf=BUILTIN]`: a QEMU guest on the same memory
    /// (docs/guests.md; the kernel also from $NETVM_GUEST_KERNEL).
    #[arg(long = "vm", value_name = "VM=BUILTIN[:ARGS]")]
    vms: Vec<String>,
    /// The control socket (`netvm status`, `netvm reload`, `netvm nf`, `netvm repl
    /// --connect`); default `/run/netvm/netvm-PID.sock` (or under $XDG_RUNTIME_DIR or
    /// /tmp/netvm-UID when /run is not writable); `none` for no socket.
    #[arg(long, value_name = "PATH")]
    pub control: Option<String>,
    /// Hold RX until every `process` VM has attached, for at most this many seconds
    /// (then the policy's `on_failure` applies to the ones missing).
    #[arg(long, value_name = "SECONDS")]
    wait_for_vms: Option<f64>,
    /// How long a `process` VM may leave packets waiting without answering before the
    /// switch declares it stalled and drops its overflow (milliseconds; RX pauses
    /// meanwhile, as for any VM that falls behind).
    #[arg(long, value_name = "MS", default_value_t = 10.0)]
    vm_stall_ms: f64,
    /// Stop after this many seconds (default: when inputs drain; 3 s for a generator
    /// without count).
    #[arg(long)]
    duration: Option<f64>,
    /// Huge pages for the shared region.
    #[arg(long, value_enum, default_value = "prefer")]
    hugepages: Hugepages,
    /// Cores for the switch and VM threads (cpulist: `0-3,8`).
    #[arg(long)]
    cores: Option<String>,
    /// What idle polling threads do. `busy`: the switch thread spins; a VM thread or
    /// process with nothing to do spins about a thousand polls, then sleeps until the
    /// switch kicks its ring. `sleep`: the switch sleeps in growing
    /// steps up to 1 ms, and VMs go to sleep after a few empty polls.
    #[arg(long, value_enum, default_value = "busy")]
    idle: Idle,
    /// Where VMs run: inline on the switch core, on their own threads, or auto (threads
    /// when there is a core for each, inline otherwise).
    #[arg(long, value_enum, default_value = "auto")]
    vm_mode: Mode,
    /// Switch threads, each on its own core polling its own receive queue of every
    /// port (`dpdk:DEV,rxq=N,txq=N`; a `gen` port splits its flows, a `null` sink is
    /// shared out; other drivers have one queue). `auto`: as many as the ports have
    /// receive queues (1 for single-queue ports).
    #[arg(long, value_name = "N|auto", default_value = "auto")]
    switch_threads: String,
    /// Packets per RX burst.
    #[arg(long, default_value_t = 32)]
    burst: usize,
    /// Buffers in the shared pool.
    #[arg(long, default_value_t = 8192)]
    buffers: usize,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Hugepages {
    Require,
    Prefer,
    Off,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Idle {
    Busy,
    Sleep,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Mode {
    Auto,
    Inline,
    Thread,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static RELOAD_REQUESTED: AtomicBool = AtomicBool::new(false);

/// SIGINT (Ctrl-C) and SIGTERM (systemd, docker, `timeout`): stop, report, clean up.
extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

extern "C" fn on_sighup(_: libc::c_int) {
    RELOAD_REQUESTED.store(true, Ordering::Relaxed);
}

/// SIGHUP: re-read `path` and hot-reload it ([`LivePolicy::reload_file`]); returns what
/// to print. A policy with errors, or one that changes the ports or VMs, leaves the
/// running program in place.
fn reload_from_file(path: &str, live: &LivePolicy) -> String {
    match live.reload_file(path) {
        Ok(report) => {
            for warning in &report.warnings {
                eprintln!("{warning}\n");
            }
            report.to_string()
        }
        Err(e) => {
            eprint!("{}", e.diagnostics());
            format!("reload of {path} {e}")
        }
    }
}

fn split_binding<'a>(what: &str, arg: &'a str) -> Result<(&'a str, &'a str), String> {
    arg.split_once('=')
        .ok_or_else(|| format!("--{what} {arg}: expected NAME=VALUE"))
}

pub fn run(args: Args) -> Result<ExitCode, String> {
    let checked = report::check_root(&args.policy)?;
    report::diagnostics(&checked, Format::Text);
    let Some(policy) = &checked.policy else {
        eprintln!("{}: not run, the policy has errors", args.policy);
        return Ok(ExitCode::from(1));
    };
    let Launched {
        switch,
        live,
        engine,
        binding_lines,
        vm_mode,
        duration,
        guests: guest_plans,
    } = launch(&args.policy, &checked, &args.switch, true)?;

    // Before the banner: whoever waits for it may signal us at once.
    // SAFETY: the handlers only store to atomics, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_sigint as *const () as libc::sighandler_t);
        libc::signal(libc::SIGHUP, on_sighup as *const () as libc::sighandler_t);
    }
    eprintln!("netvm run {}", args.policy);
    eprintln!("  classifier: {engine}, {} rules", policy.rules.len());
    eprintln!("  {}", switch.backing());
    eprintln!(
        "  VMs: {}",
        match vm_mode {
            VmMode::Inline => "inline on the switch core (run to completion)",
            VmMode::Thread => "one thread each",
        }
    );
    for line in &binding_lines {
        eprintln!("{line}");
    }
    for line in switch.placement().to_string().lines() {
        eprintln!("  {line}");
    }
    // Admin requests (reload, rules, ...) are answered by the live policy; the runtime
    // answers hello, attach and status itself. The socket is up before the last banner
    // line, so a script that waits for that line can connect at once.
    let admin: Option<Arc<dyn AdminHandler>> = Some(live.clone());
    let control = start_control(&args.switch, &switch, admin)?;
    // Guests boot now; each attaches when its agent is up (`--wait-for-vms` holds RX).
    let guests = Guests::start(
        &switch.external(),
        &guest_plans,
        &policy
            .ports
            .iter()
            .map(|p| p.name.clone())
            .collect::<Vec<_>>(),
        &policy
            .vms
            .iter()
            .map(|v| v.name.clone())
            .collect::<Vec<_>>(),
        &control::default_socket_dir(),
        Arc::new(|event: &str| eprintln!("  {event}")),
    )?;
    if let Some(d) = duration {
        eprintln!(
            "  running for {:.1} s (Ctrl-C stops early)",
            d.as_secs_f64()
        );
    }

    let stats = switch.stats();
    let stop = switch.stop_flag();
    let done = Arc::new(AtomicBool::new(false));
    let runner = {
        let done = done.clone();
        std::thread::Builder::new()
            .name("netvm-switch".into())
            .spawn(move || {
                let r = switch.run();
                done.store(true, Ordering::Release);
                r
            })
            .map_err(|e| format!("starting the switch thread: {e}"))?
    };
    live_rates(&stats, &done, &stop, &mut || {
        reload_from_file(&args.policy, &live)
    });
    let report = runner
        .join()
        .map_err(|_| "the switch thread panicked".to_string())?
        .map_err(|e| error_chain(&e))?;

    // Closing the socket tells attached VM processes the switch is gone; guests are told
    // through their attach slots, and any QEMU still running after 10 s is killed.
    drop(control);
    let guest_reports = guests.stop();
    print_report(&report);
    print_guests(&guest_reports);
    if let Some(path) = &args.stats_json {
        let mut json = to_json(&report, &args.policy);
        json["guests"] = guests_json(&guest_reports);
        let json = serde_json::to_string_pretty(&json).map_err(|e| e.to_string())?;
        std::fs::write(path, json + "\n").map_err(|e| format!("writing {path}: {e}"))?;
    }
    Ok(if report.clean() && !guest::any_failed(&guest_reports) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// A switch built from a policy and the binding options, not yet running.
pub struct Launched {
    pub switch: Switch,
    /// The switch's policy and the one way to change it (SIGHUP, control socket, REPL).
    pub live: Arc<LivePolicy>,
    /// "Cranelift JIT" or the interpreter with the JIT's reason.
    pub engine: String,
    /// One line per port and VM: how it is bound.
    pub binding_lines: Vec<String>,
    pub vm_mode: VmMode,
    pub duration: Option<Duration>,
    /// The VMs bound to QEMU guests (`--vm NAME=guest...`), to start once the switch is.
    pub guests: Vec<GuestPlan>,
}

/// Compile the policy `checked` (named `origin`), open its ports and VMs as `args` bind
/// them (else as the policy's own bindings or the embedded defaults say) and build the
/// switch. With `bounded`, an unbounded generator and no `--duration` runs 3 seconds;
/// without, until stopped.
pub fn launch(
    origin: &str,
    checked: &netvm_lang::Checked,
    args: &SwitchArgs,
    bounded: bool,
) -> Result<Launched, String> {
    let policy = checked
        .policy
        .as_ref()
        .ok_or_else(|| format!("{origin}: the policy has errors"))?;
    if !(1..=netvm_runtime::switch::MAX_BURST).contains(&args.burst) {
        return Err(format!(
            "--burst {}: packets per receive burst must be 1..={}",
            args.burst,
            netvm_runtime::switch::MAX_BURST
        ));
    }
    let table = policy_table::policy_table(policy);
    let (classifier, engine) = policy_table::compile(policy)?;

    if let Some(eal) = &args.eal {
        port::dpdk::set_eal_args(port::dpdk::split_eal_args(eal));
    }
    let mut bound: Vec<Option<String>> = vec![None; policy.ports.len()];
    for b in &args.binds {
        let (name, spec) = split_binding("bind", b)?;
        let i = policy
            .port_index(name)
            .ok_or_else(|| format!("--bind {b}: the policy declares no port `{name}`"))?;
        bound[i] = Some(spec.to_string());
    }
    let mut unbounded_gen = false;
    let mut ports: Vec<Box<dyn Port>> = Vec::new();
    let mut binding_lines = Vec::new();
    let mut bindings = Bindings::default();
    for (i, p) in policy.ports.iter().enumerate() {
        let spec = match (&bound[i], &p.binding) {
            (Some(spec), _) => spec.clone(),
            (None, Some((driver, arg))) => format!("{driver}:{arg}"),
            (None, None) if i == 0 => "gen:flows=64,size=64,dpi=10".to_string(),
            (None, None) => "null".to_string(),
        };
        let port =
            port::open(&spec, i).map_err(|e| format!("port `{}`: {}", p.name, error_chain(&e)))?;
        if spec.starts_with("gen") && !port.rx_done() && !spec.contains("count=") {
            unbounded_gen = true;
        }
        binding_lines.push(format!("  port {:<12} {}", p.name, port.describe()));
        bindings.port_drivers.push(port.describe());
        ports.push(port);
    }
    let mut vm_specs: Vec<Option<String>> = vec![None; policy.vms.len()];
    for v in &args.vms {
        let (name, spec) = split_binding("vm", v)?;
        let i = policy
            .vms
            .iter()
            .position(|vm| vm.name == name)
            .ok_or_else(|| format!("--vm {v}: the policy declares no VM `{name}`"))?;
        vm_specs[i] = Some(spec.to_string());
    }
    let mut vms: Vec<Box<dyn NetworkFunction>> = Vec::new();
    let mut guests = Vec::new();
    for (i, v) in policy.vms.iter().enumerate() {
        let spec = vm_specs[i].clone().unwrap_or_else(|| "forward".to_string());
        let guest = if guest::is_guest_spec(&spec) {
            let spec = guest::parse_spec(&spec).map_err(|e| format!("vm `{}`: {e}", v.name))?;
            guests.push(GuestPlan {
                vm: v.name.clone(),
                spec: spec.clone(),
            });
            Some(spec)
        } else {
            None
        };
        // A guest is a process VM to the switch: netvm's supervisor attaches it.
        let nf = match &guest {
            Some(_) => vm::builtin("process"),
            None => vm::builtin(&spec),
        }
        .map_err(|e| format!("vm `{}`: {e}", v.name))?;
        bindings.vm_functions.push(match &guest {
            Some(g) => format!("guest {}", g.nf),
            None => nf.describe(),
        });
        binding_lines.push(format!(
            "  vm   {:<12} {} ({}{})",
            v.name,
            if let Some(g) = &guest {
                format!("guest: QEMU running `{}`", g.nf)
            } else if nf.external() {
                format!("process: attach with `netvm nf BUILTIN --vm {}`", v.name)
            } else {
                nf.describe()
            },
            if v.trusted {
                "trusted, zero-copy"
            } else {
                "untrusted, private copies"
            },
            match v.on_failure {
                netvm_lang::policy::OnFailure::Bypass => ", bypassed while down",
                netvm_lang::policy::OnFailure::Drop if nf.external() => ", dropped while down",
                netvm_lang::policy::OnFailure::Drop => "",
            }
        ));
        vms.push(nf);
    }

    let cores = match &args.cores {
        Some(list) => Some(parse_cpulist(list).map_err(|e| format!("--cores: {e}"))?),
        None => None,
    };
    let available = cores.as_ref().map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get()),
        Vec::len,
    );
    let switch_threads = match args.switch_threads.as_str() {
        "auto" => ports
            .iter()
            .map(|p| p.rx_queues())
            .max()
            .unwrap_or(1)
            .max(1),
        n => match n.parse::<usize>() {
            Ok(n) if (1..=netvm_runtime::switch::MAX_SWITCH_THREADS).contains(&n) => n,
            _ => {
                return Err(format!(
                    "--switch-threads {n}: expected auto or 1 to {}",
                    netvm_runtime::switch::MAX_SWITCH_THREADS
                ))
            }
        },
    };
    let vm_mode = match args.vm_mode {
        Mode::Inline => VmMode::Inline,
        Mode::Thread => VmMode::Thread,
        // Inline VMs run on the one switch thread; with several, VMs get threads.
        Mode::Auto if switch_threads > 1 => VmMode::Thread,
        Mode::Auto if available > vms.len() => VmMode::Thread,
        Mode::Auto => VmMode::Inline,
    };
    bindings.vms_inline = vm_mode == VmMode::Inline;
    let duration = match args.duration {
        Some(s) if s.is_finite() && s > 0.0 => Some(Duration::from_secs_f64(s)),
        Some(s) => {
            return Err(format!(
                "--duration {s}: expected a positive number of seconds"
            ))
        }
        None if unbounded_gen && bounded => Some(Duration::from_secs(3)),
        None => None,
    };
    let config = SwitchConfig {
        burst_len: args.burst,
        buffer_count: args.buffers,
        hugepages: match args.hugepages {
            Hugepages::Require => HugepagePolicy::Require,
            Hugepages::Prefer => HugepagePolicy::Prefer,
            Hugepages::Off => HugepagePolicy::Off,
        },
        idle: match args.idle {
            Idle::Busy => IdlePolicy::Busy,
            Idle::Sleep => IdlePolicy::Sleep,
        },
        vm_mode,
        cores,
        duration,
        wait_for_processes: match args.wait_for_vms {
            Some(s) if s.is_finite() && s >= 0.0 => Some(Duration::from_secs_f64(s)),
            Some(s) => return Err(format!("--wait-for-vms {s}: expected seconds")),
            None => None,
        },
        process_stall: if args.vm_stall_ms.is_finite() && args.vm_stall_ms > 0.0 {
            Duration::from_secs_f64(args.vm_stall_ms / 1e3)
        } else {
            return Err(format!(
                "--vm-stall-ms {}: expected a positive number of milliseconds",
                args.vm_stall_ms
            ));
        },
        switch_threads,
        ..SwitchConfig::default()
    };
    let program = Program::new(classifier, table)
        .map_err(|e| e.to_string())?
        .with_shards(switch_threads);
    let handle = ProgramHandle::new(program);
    let switch = Switch::new(config, handle.clone(), ports, vms).map_err(|e| error_chain(&e))?;
    let live = Arc::new(LivePolicy::new(
        handle,
        switch.stats(),
        bindings,
        origin.to_string(),
        checked,
    ));
    Ok(Launched {
        switch,
        live,
        engine,
        binding_lines,
        vm_mode,
        duration,
        guests,
    })
}

/// Start the control socket `args.control` names (default: one per process under
/// [`control::default_socket_dir`]) and print where it is.
pub fn start_control(
    args: &SwitchArgs,
    switch: &Switch,
    admin: Option<Arc<dyn AdminHandler>>,
) -> Result<Option<ControlServer>, String> {
    let path = match args.control.as_deref() {
        Some("none") => {
            eprintln!("  control socket: none (--control none)");
            return Ok(None);
        }
        Some(path) => std::path::PathBuf::from(path),
        None => control::default_socket_path(std::process::id()),
    };
    let mut state = switch.control_state();
    state.log = Some(Arc::new(|event: &str| eprintln!("  control: {event}")));
    let server = ControlServer::start(&path, Arc::new(state), admin)
        .map_err(|e| format!("--control {}: {}", path.display(), error_chain(&e)))?;
    eprintln!("  control socket: {}", path.display());
    Ok(Some(server))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

/// Print rates once a second until the switch finishes; forward Ctrl-C to it; on SIGHUP
/// run `reload` (on this thread, off the data path) and print what it says.
fn live_rates(
    stats: &netvm_runtime::stats::Stats,
    done: &AtomicBool,
    stop: &AtomicBool,
    reload: &mut dyn FnMut() -> String,
) {
    let tty = std::io::stderr().is_terminal();
    let bar = tty.then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    });
    let (mut last_rx, mut last_tx, mut last) = (0u64, 0u64, Instant::now());
    let start = Instant::now();
    while !done.load(Ordering::Acquire) {
        for _ in 0..20 {
            std::thread::sleep(Duration::from_millis(50));
            if INTERRUPTED.load(Ordering::Relaxed) {
                stop.store(true, Ordering::Relaxed);
            }
            if RELOAD_REQUESTED.swap(false, Ordering::Relaxed) {
                let message = reload();
                match &bar {
                    Some(bar) => bar.suspend(|| eprintln!("{message}")),
                    None => eprintln!("{message}"),
                }
            }
            if done.load(Ordering::Acquire) {
                break;
            }
        }
        let (rx, tx, drops) = (stats.rx_total(), stats.tx_total(), stats.drop_total());
        let secs = last.elapsed().as_secs_f64().max(1e-9);
        let line = format!(
            "{:5.1} s  rx {:8.3} Mpps  tx {:8.3} Mpps  total rx {rx}  tx {tx}  dropped {drops}",
            start.elapsed().as_secs_f64(),
            (rx - last_rx) as f64 / secs / 1e6,
            (tx - last_tx) as f64 / secs / 1e6,
        );
        (last_rx, last_tx, last) = (rx, tx, Instant::now());
        match &bar {
            Some(bar) => bar.set_message(line),
            None => eprintln!("{line}"),
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
}

fn mpps(packets: u64, elapsed: Duration) -> f64 {
    packets as f64 / elapsed.as_secs_f64().max(1e-9) / 1e6
}

fn print_report(report: &RunReport) {
    let s: &StatsSnapshot = &report.stats;
    let t = report.elapsed;
    println!(
        "\n{:<14} {:<34} {:>12} {:>12} {:>12} {:>12}",
        "port", "driver", "rx pkts", "rx bytes", "tx pkts", "tx bytes"
    );
    for p in &s.ports {
        println!(
            "{:<14} {:<34} {:>12} {:>12} {:>12} {:>12}",
            p.name,
            truncate(&p.driver, 34),
            p.rx_packets,
            p.rx_bytes,
            p.tx_packets,
            p.tx_bytes
        );
    }
    if !s.vms.is_empty() {
        println!(
            "\n{:<14} {:<24} {:<10} {:>10} {:>10} {:>10} {:>10} {:>12}",
            "vm", "function", "kind", "in", "mirrored", "passed", "dropped", "copied B"
        );
        for v in &s.vms {
            println!(
                "{:<14} {:<24} {:<10} {:>10} {:>10} {:>10} {:>10} {:>12}",
                v.name,
                truncate(&v.function, 24),
                if v.trusted { "trusted" } else { "untrusted" },
                v.packets_in,
                v.mirrored_in,
                v.passed,
                v.dropped,
                v.copied_bytes
            );
            if let Some(summary) = &v.summary {
                println!("{:<14} {summary}", "");
            }
        }
    }
    println!("\n{:<20} {:>12} {:>14}", "rule", "packets", "bytes");
    for r in &s.rules {
        println!("{:<20} {:>12} {:>14}", r.name, r.packets, r.bytes);
    }
    if !s.counters.is_empty() {
        println!("\n{:<20} {:>12}", "counter", "packets");
        for (name, n) in &s.counters {
            println!("{name:<20} {n:>12}");
        }
    }
    println!("\n{:<20} {:>12}", "drop reason", "packets");
    for (reason, n) in s.drops.iter().filter(|d| d.1 > 0) {
        if *reason == "oversize" {
            // Name the limit: a frame larger than a pool buffer's data room is dropped whole.
            println!(
                "{reason:<20} {n:>12}  (frames over {} bytes, a buffer's data room)",
                netvm_runtime::layout::BUF_DATA_ROOM
            );
            continue;
        }
        println!("{reason:<20} {n:>12}");
    }
    println!(
        "\n{:.3} s: rx {} ({:.3} Mpps), tx {}, dropped {}, mirrored {}",
        t.as_secs_f64(),
        s.rx,
        mpps(s.rx, t),
        s.tx,
        s.dropped,
        s.mirrored
    );
    println!(
        "accounting: rx = tx + dropped {}; mirror copies consumed {}/{}; buffers back {}/{}{}",
        if s.rx == s.tx + s.dropped {
            "holds"
        } else {
            "DOES NOT HOLD"
        },
        s.mirrors_done,
        s.mirrored,
        report.buffers_returned,
        report.buffers,
        if report.private_leaks.is_empty() {
            String::new()
        } else {
            format!("; private pools missing {:?}", report.private_leaks)
        }
    );
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
}

/// One paragraph per guest: boots, boot-to-attach, its console log, why it failed.
fn print_guests(reports: &[GuestReport]) {
    for g in reports {
        let times: Vec<String> = g
            .boot_to_attach
            .iter()
            .map(|t| format!("{:.2} s", t.as_secs_f64()))
            .collect();
        println!(
            "guest {}: {} boot(s), {} attach(es), {}, boot-to-attach {}; console log {}",
            g.vm,
            g.boots,
            g.attaches,
            g.accel.name(),
            if times.is_empty() {
                "-".to_string()
            } else {
                times.join(", ")
            },
            g.console.display()
        );
        if let Some(why) = &g.failure {
            eprintln!("error: guest {}: {why}", g.vm);
        }
    }
}

fn guests_json(reports: &[GuestReport]) -> serde_json::Value {
    reports
        .iter()
        .map(|g| {
            serde_json::json!({
                "vm": g.vm,
                "accel": g.accel.name(),
                "console": g.console.display().to_string(),
                "bar_bytes": g.bar_bytes,
                "region": g.region,
                "region_bytes": g.region_bytes,
                "boots": g.boots,
                "attaches": g.attaches,
                "boot_to_attach_s": g.boot_to_attach.iter().map(Duration::as_secs_f64).collect::<Vec<_>>(),
                "failure": g.failure,
            })
        })
        .collect()
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let cut: String = s.chars().take(n - 1).collect();
        format!("{cut}…")
    }
}

fn to_json(report: &RunReport, policy: &str) -> serde_json::Value {
    use serde_json::json;
    let s = &report.stats;
    json!({
        "policy": policy,
        "elapsed_s": report.elapsed.as_secs_f64(),
        "rx": s.rx,
        "tx": s.tx,
        "dropped": s.dropped,
        "rx_mpps": mpps(s.rx, report.elapsed),
        "mirrored": s.mirrored,
        "mirrors_done": s.mirrors_done,
        "balanced": s.balanced(),
        "buffers": report.buffers,
        "buffers_returned": report.buffers_returned,
        "private_leaks": report.private_leaks.iter().map(|(vm, n)| json!({"vm": vm, "missing": n})).collect::<Vec<_>>(),
        "drops": s.drops.iter().map(|(r, n)| (r.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
        "ports": s.ports.iter().map(|p| json!({
            "name": p.name, "driver": p.driver,
            "rx_packets": p.rx_packets, "rx_bytes": p.rx_bytes,
            "tx_packets": p.tx_packets, "tx_bytes": p.tx_bytes,
        })).collect::<Vec<_>>(),
        "vms": s.vms.iter().map(|v| json!({
            "name": v.name, "function": v.function, "trusted": v.trusted, "inline": v.inline,
            "packets_in": v.packets_in, "mirrored_in": v.mirrored_in, "passed": v.passed,
            "dropped": v.dropped, "copied_bytes": v.copied_bytes, "summary": v.summary,
        })).collect::<Vec<_>>(),
        "rules": s.rules.iter().map(|r| json!({"name": r.name, "packets": r.packets, "bytes": r.bytes})).collect::<Vec<_>>(),
        "counters": s.counters.iter().map(|(n, c)| (n.clone(), json!(c))).collect::<serde_json::Map<_, _>>(),
        "warnings": report.warnings,
    })
}
