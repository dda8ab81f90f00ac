//! What an operator meets around the policy: signals, closed pipes, mistyped options.
//! Each test runs the real binary.

mod support;

use std::io::{BufRead, BufReader, Read};
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::netvm;

const POLICY: &str = "\
port src
port sink
rule web : tcp.dport == 80 => out sink
default => drop
";

fn write_policy(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("p.nvr");
    std::fs::write(&path, POLICY).unwrap();
    path
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Reads stderr lines until one contains `needle` (or 20 s pass).
fn wait_for_line(stderr: &mut impl BufRead, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = String::new();
    while Instant::now() < deadline {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        seen.push_str(&line);
        if line.contains(needle) {
            return seen;
        }
    }
    panic!("no `{needle}` on stderr; saw:\n{seen}");
}

#[test]
fn sigterm_stops_netvm_run_like_sigint_with_the_report_the_stats_and_no_socket_left() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write_policy(dir.path());
    let socket = dir.path().join("ctl.sock");
    let stats = dir.path().join("stats.json");
    let mut child = netvm()
        .arg("run")
        .arg(&policy)
        .args(["--bind", "src=gen:flows=4,size=64", "--bind", "sink=null"])
        .args(["--duration", "60", "--hugepages", "off", "--idle", "sleep"])
        .arg("--control")
        .arg(&socket)
        .arg("--stats-json")
        .arg(&stats)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    wait_for_line(&mut stderr, "control socket:");
    assert!(socket.exists());
    // SAFETY: kill with our own child's pid and a standard signal.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "exit {status:?}\n{stdout}");
    assert!(stdout.contains("rx = tx + dropped holds"), "{stdout}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&stats).expect("stats written")).unwrap();
    assert!(json.is_object(), "{json}");
    assert!(!socket.exists(), "the control socket was removed");
}
