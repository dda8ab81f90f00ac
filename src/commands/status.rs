//! `netvm status`: what a running switch's VMs, processes, rings and counters are doing,
//! asked over its control socket.

use std::path::PathBuf;
use std::process::ExitCode;

use netvm_runtime::control::{self, ControlClient};
use serde_json::{json, Value};

#[derive(clap::Args)]
pub struct Args {
    /// The switch's control socket (default: the only running switch's).
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
    /// Print the status as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<ExitCode, String> {
    let socket = control::resolve_socket(args.control.as_deref()).map_err(|e| e.to_string())?;
    let mut client = ControlClient::connect(&socket).map_err(|e| e.to_string())?;
    let mut status = client
        .request("status", json!({}))
        .map_err(|e| format!("{}: {e}", socket.display()))?;
    if let Value::Object(map) = &mut status {
        map.remove("ok");
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&status).unwrap_or_default()
        );
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", render(&socket, &status));
    Ok(ExitCode::SUCCESS)
}

fn num(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// The human table.
fn render(socket: &std::path::Path, s: &Value) -> String {
    let mut out = format!(
        "switch pid {} ({}), up {:.1} s: rx {} tx {} dropped {}\n",
        num(s, "pid"),
        socket.display(),
        s.get("uptime_s").and_then(Value::as_f64).unwrap_or(0.0),
        num(s, "rx"),
        num(s, "tx"),
        num(s, "dropped"),
    );
    out.push_str(&format!(
        "\n{:<12} {:<10} {:<9} {:<6} {:>8} {:>6} {:>12} {:>12} {:>10} {:>9}\n",
        "VM", "kind", "trust", "state", "pid", "ring", "in", "passed", "dropped", "attaches"
    ));
    for vm in s.get("vms").and_then(Value::as_array).into_iter().flatten() {
        let pid = vm
            .get("pid")
            .and_then(Value::as_u64)
            .map_or("-".to_string(), |p| p.to_string());
        out.push_str(&format!(
            "{:<12} {:<10} {:<9} {:<6} {:>8} {:>6} {:>12} {:>12} {:>10} {:>9}\n",
            text(vm, "name"),
            text(vm, "kind"),
            if vm.get("trusted").and_then(Value::as_bool).unwrap_or(false) {
                "trusted"
            } else {
                "untrusted"
            },
            text(vm, "state"),
            pid,
            num(vm, "ring_fill"),
            num(vm, "packets_in"),
            num(vm, "passed"),
            num(vm, "dropped"),
            num(vm, "attaches"),
        ));
        if let Some(g) = vm.get("guest").filter(|g| g.is_object()) {
            let accel = text(g, "accel");
            out.push_str(&format!(
                "{:<12} guest {}: QEMU pid {}, accel {}{}, boot-to-attach {}, {} boot(s), console {}\n",
                "",
                text(g, "state"),
                g.get("qemu_pid")
                    .and_then(Value::as_u64)
                    .map_or("-".to_string(), |p| p.to_string()),
                accel,
                if accel == "tcg" { " (EMULATED, slow)" } else { "" },
                g.get("boot_ms")
                    .and_then(Value::as_u64)
                    .map_or("-".to_string(), |ms| format!("{ms} ms")),
                num(g, "boots"),
                text(g, "console"),
            ));
            if let Some(why) = g.get("failure").and_then(Value::as_str) {
                out.push_str(&format!("{:<12} failed: {why}\n", ""));
            }
        }
    }
    out.push_str(&format!(
        "\n{:<12} {:<28} {:>12} {:>12}\n",
        "port", "driver", "rx", "tx"
    ));
    for port in s
        .get("ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        out.push_str(&format!(
            "{:<12} {:<28} {:>12} {:>12}\n",
            text(port, "name"),
            text(port, "driver"),
            num(port, "rx_packets"),
            num(port, "tx_packets"),
        ));
    }
    let drops: Vec<String> = s
        .get("drops")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    out.push_str(&format!(
        "\ndrops: {}\n",
        if drops.is_empty() {
            "none".to_string()
        } else {
            drops.join(", ")
        }
    ));
    out
}
