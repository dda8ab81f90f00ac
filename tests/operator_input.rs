//! What an operator meets around the policy: signals, closed pipes, mistyped options.
//! Each test runs the real binary.

mod support;

use std::io::{BufRead, BufReader, Read};
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::netvm;

const FW1_1K: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/data/classbench/fw1_1k"
);

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

/// Runs `netvm ARGS` with stdout a pipe whose reader is gone before the first byte.
fn with_closed_stdout(args: &[&str]) -> (std::process::ExitStatus, String) {
    let mut fds = [0i32; 2];
    // SAFETY: pipe fills two fds we own.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: closing the read end we own, so that every write fails with EPIPE.
    unsafe { libc::close(fds[0]) };
    // SAFETY: fds[1] is an open fd we own; the Stdio takes it over.
    let stdout = unsafe { <Stdio as std::os::fd::FromRawFd>::from_raw_fd(fds[1]) };
    let out = netvm()
        .args(args)
        .stdout(stdout)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    (out.status, text(&out.stderr))
}

#[test]
fn a_closed_stdout_ends_check_test_fmt_import_and_bench_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    // Enough output to fill any pipe buffer.
    let mut big = String::from("port src\nport sink\n");
    for i in 0..3000 {
        big.push_str(&format!(
            "rule r{i} : tcp.dport == {} => out sink\n",
            i % 60000 + 1
        ));
    }
    // Unused consts: warnings for `check` to print.
    for i in 0..2000 {
        big.push_str(&format!("const c{i} = {i}\n"));
    }
    big.push_str("test \"t\" {\n");
    for i in 0..200 {
        big.push_str(&format!("  tcp {{ tcp.dport = {} }} => rule r{i}\n", i + 1));
    }
    big.push_str("}\n");
    let path = dir.path().join("big.nvr");
    std::fs::write(&path, big).unwrap();
    let path = path.display().to_string();
    let cases: [&[&str]; 5] = [
        &["check", "--format", "json", &path],
        &["test", &path],
        &["fmt", &path],
        &["import", "classbench", FW1_1K],
        &[
            "bench",
            &path,
            "--tests",
            "--runs",
            "1",
            "--run-ms",
            "1",
            "--jit-only",
        ],
    ];
    for args in cases {
        let (status, stderr) = with_closed_stdout(args);
        assert!(
            !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
            "{args:?}: {stderr}"
        );
        assert!(
            status.code() != Some(101),
            "{args:?}: exit {status:?}: {stderr}"
        );
        assert!(
            status.success() || status.signal() == Some(libc::SIGPIPE),
            "{args:?}: exit {status:?}: {stderr}"
        );
    }
}

/// `netvm run` with the policy and `extra`; it must refuse before running anything.
fn run_refused(extra: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let policy = write_policy(dir.path());
    let out = netvm()
        .arg("run")
        .arg(&policy)
        .args(["--hugepages", "off", "--duration", "5"])
        .args(extra)
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{extra:?} ran: {stderr}");
    stderr
}

#[test]
fn mistyped_port_and_vm_options_are_refused_naming_the_valid_ones() {
    let stderr = run_refused(&["--bind", "src=null:foo=1", "--bind", "sink=null"]);
    assert!(
        stderr.contains("null: takes no options, not `foo=1`"),
        "{stderr}"
    );
    let stderr = run_refused(&["--bind", "src=gen:flow=4", "--bind", "sink=null"]);
    assert!(stderr.contains("unknown key `flow`"), "{stderr}");
    let vm_policy = "port src\nport sink\nvm fw\nrule all : tcp => chain fw -> out sink\n";
    for (spec, says) in [
        (
            "fw=forward:junk",
            "built-in `forward`: unexpected `junk`: it takes no arguments",
        ),
        (
            "fw=counter:x=1",
            "built-in `counter`: unknown option `x`: it takes no arguments",
        ),
        ("fw=delay:ms=3", "unknown option `ms`: it takes `us=...`"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let policy = dir.path().join("vm.nvr");
        std::fs::write(&policy, vm_policy).unwrap();
        let out = netvm()
            .arg("run")
            .arg(&policy)
            .args(["--bind", "src=null", "--bind", "sink=null", "--vm", spec])
            .args(["--hugepages", "off", "--duration", "5"])
            .output()
            .unwrap();
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{spec} ran: {stderr}");
        assert!(stderr.contains(says), "{spec}: {stderr}");
    }
}

#[test]
fn burst_0_names_the_flag() {
    let stderr = run_refused(&["--bind", "src=null", "--bind", "sink=null", "--burst", "0"]);
    assert!(
        stderr.contains("--burst 0: packets per receive burst must be 1..=64"),
        "{stderr}"
    );
}

#[test]
fn control_in_a_missing_directory_is_refused_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no/such/dir");
    let socket = missing.join("x.sock");
    let stderr = run_refused(&[
        "--bind",
        "src=null",
        "--bind",
        "sink=null",
        "--control",
        socket.to_str().unwrap(),
    ]);
    assert!(stderr.contains("does not exist"), "{stderr}");
    assert!(
        !dir.path().join("no").exists(),
        "created {}",
        missing.display()
    );
}
