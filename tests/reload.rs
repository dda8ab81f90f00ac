//! `netvm reload` and `netvm repl --connect` against a real `netvm run --control PATH`:
//! the changed rules are reported with check/compile/swap times, a policy with errors or
//! with other ports or port bindings is refused with its diagnostics and the running one
//! stays, and a REPL attached through the socket edits the running switch.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const RUNNING: &str = "\
port src
port sink
rule udp  : udp => drop
rule rest : tcp => out sink
default         => out sink
";

/// A `netvm run` with its control socket at `dir/ctl.sock`, and its stderr lines.
struct Switch {
    child: Child,
    socket: PathBuf,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Switch {
    fn start(dir: &Path) -> Switch {
        let policy = dir.join("running.nvr");
        std::fs::write(&policy, RUNNING).unwrap();
        let socket = dir.join("ctl.sock");
        let mut child = Command::new(env!("CARGO_BIN_EXE_netvm"))
            .arg("run")
            .arg(&policy)
            .args(["--bind", "src=gen:flows=16,size=64", "--bind", "sink=null"])
            .args(["--duration", "30", "--hugepages", "off", "--idle", "sleep"])
            .arg("--control")
            .arg(&socket)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut switch = Switch {
            child,
            socket,
            lines,
            seen: Vec::new(),
        };
        switch.wait_for("control socket:");
        switch
    }

    fn wait_for(&mut self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(100)) {
                let hit = line.contains(needle);
                self.seen.push(line);
                if hit {
                    return;
                }
            }
        }
        panic!("no `{needle}` on stderr; saw:\n{}", self.seen.join("\n"));
    }

    fn reload(&self, dir: &Path, name: &str, text: &str) -> Output {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        Command::new(env!("CARGO_BIN_EXE_netvm"))
            .arg("reload")
            .arg(&path)
            .arg("--control")
            .arg(&self.socket)
            .output()
            .unwrap()
    }

    /// Ctrl-C, then the final table on stdout.
    fn stop(self) -> String {
        // SAFETY: kill with our own child's pid and a standard signal.
        assert_eq!(
            unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) },
            0
        );
        let out = self.child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success(), "netvm run failed:\n{stdout}");
        assert!(stdout.contains("rx = tx + dropped holds"), "{stdout}");
        stdout
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).to_string()
}

#[test]
fn reload_prints_the_changed_rules_and_how_long_each_step_took() {
    let dir = tempfile::tempdir().unwrap();
    let switch = Switch::start(dir.path());
    let edited = RUNNING.replace("udp => drop", "udp => out sink").replace(
        "rule rest",
        "rule dns  : udp.dport == 53 => drop\nrule rest",
    );
    let out = switch.reload(dir.path(), "edited.nvr", &edited);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(
        stdout.contains("1 added, 0 removed, 1 changed, 0 moved"),
        "{stdout}"
    );
    assert!(
        stdout.contains("+ dns: udp.dport == 53 => drop"),
        "{stdout}"
    );
    assert!(
        stdout.contains("~ udp: udp => drop\n    -> udp => out sink"),
        "{stdout}"
    );
    assert!(stdout.contains("compile (Cranelift JIT)"), "{stdout}");
    assert!(
        stdout.contains(" µs; counters carried over for 2 rules"),
        "{stdout}"
    );
    // Reformatting the same policy changes nothing.
    let out = switch.reload(dir.path(), "same.nvr", &edited.replace("  :", " :   "));
    assert!(
        text(&out.stdout).contains("no rule changes"),
        "{}",
        text(&out.stdout)
    );
    let table = switch.stop();
    assert!(
        table.contains("\ndns "),
        "the final table lists the new rule:\n{table}"
    );
}

#[test]
fn a_policy_with_errors_or_other_ports_or_bindings_is_refused_and_the_running_one_stays() {
    let dir = tempfile::tempdir().unwrap();
    let switch = Switch::start(dir.path());
    let broken = RUNNING.replace("rest : tcp => out sink", "rest : tcp => out nowhere");
    let out = switch.reload(dir.path(), "broken.nvr", &broken);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("error[E002]"), "{stderr}");
    assert!(
        stderr.contains("broken.nvr:4:"),
        "points into the file: {stderr}"
    );
    assert!(
        stderr.contains("still running the previous policy"),
        "{stderr}"
    );

    let more_ports = RUNNING.replace("port sink", "port sink\nport extra");
    let out = switch.reload(dir.path(), "ports.nvr", &more_ports);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("refused: a reload cannot change the ports"),
        "{stderr}"
    );

    // Another declared binding for a port that is already open: refused, not ignored.
    let rebound = RUNNING.replace("port sink", "port sink = afpacket(\"veth1\")");
    let out = switch.reload(dir.path(), "rebound.nvr", &rebound);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "refused: a reload cannot change the binding of port `sink` \
             (running: none declared; new: afpacket(\"veth1\"))"
        ),
        "{stderr}"
    );

    // The running policy is still the first one: reloading it changes nothing.
    let out = switch.reload(dir.path(), "again.nvr", RUNNING);
    assert!(out.status.success());
    assert!(
        text(&out.stdout).contains("no rule changes"),
        "{}",
        text(&out.stdout)
    );
    switch.stop();
}

#[test]
fn a_policy_larger_than_one_socket_message_travels_in_slices() {
    let dir = tempfile::tempdir().unwrap();
    let switch = Switch::start(dir.path());
    // ~150 KB of text (a message is at most 64 KiB), with non-ASCII in the comments.
    let mut big = RUNNING.to_string();
    for i in 0..2000 {
        big.push_str(&format!(
            "rule r{i:04} : udp.dport == {} => out sink  # règle {i}\n",
            1000 + i
        ));
    }
    let out = switch.reload(dir.path(), "big.nvr", &big);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(
        stdout.contains("2000 added, 0 removed, 0 changed"),
        "{stdout}"
    );
    assert!(stdout.contains("... and 1980 more"), "{stdout}");

    // A connected REPL reads the whole text back and every rule's counters (stdin is not
    // a terminal here: plain lines).
    let mut repl = Command::new(env!("CARGO_BIN_EXE_netvm"))
        .arg("repl")
        .arg("--connect")
        .arg(&switch.socket)
        .env("NETVM_HISTORY", dir.path().join("history"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let saved = dir.path().join("saved.nvr");
    let script = format!(":rules\n:save {}\n:quit\n", saved.display());
    std::io::Write::write_all(repl.stdin.as_mut().unwrap(), script.as_bytes()).unwrap();
    let out = repl.wait_with_output().unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("2002  r1999"), "{stdout}");
    assert_eq!(std::fs::read_to_string(&saved).unwrap(), big);
    switch.stop();
}

#[test]
fn a_repl_connected_through_the_socket_edits_the_running_switch() {
    use rexpect::session::spawn_command;
    let dir = tempfile::tempdir().unwrap();
    let switch = Switch::start(dir.path());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_netvm"));
    cmd.arg("repl")
        .arg("--connect")
        .arg(&switch.socket)
        .env("NETVM_HISTORY", dir.path().join("history"))
        .env("NO_COLOR", "1")
        .env("TERM", "xterm");
    let mut p = spawn_command(cmd, Some(20_000)).unwrap();
    p.exp_string("connected to the switch at").unwrap();
    p.exp_string("running.nvr").unwrap();
    p.exp_string("netvm> ").unwrap();
    p.send_line("rule dns before udp : udp.dport == 53 => out sink")
        .unwrap();
    p.exp_string("added rule `dns` before rule `udp`").unwrap();
    p.exp_string("+ dns: udp.dport == 53 => out sink").unwrap();
    p.exp_string("netvm> ").unwrap();
    p.send_line("rule udp : udp => out nowhere").unwrap();
    p.exp_string("<input 2>:1:23").unwrap();
    p.exp_string("the running policy is unchanged").unwrap();
    p.exp_string("netvm> ").unwrap();
    p.send_line(":rules").unwrap();
    p.exp_regex(r"1\s+dns\s+\d+").unwrap();
    p.exp_regex(r"2\s+udp\s+[1-9]\d*").unwrap();
    p.exp_string("netvm> ").unwrap();
    p.send_line(":stats").unwrap();
    p.exp_regex(r"src\s+[1-9]\d*").unwrap();
    p.exp_string("netvm> ").unwrap();
    p.send_line(":quit").unwrap();
    p.exp_eof().unwrap();
    let table = switch.stop();
    assert!(table.contains("\ndns "), "{table}");
}

#[test]
fn without_a_reachable_switch_reload_and_connect_exit_2_naming_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("p.nvr");
    std::fs::write(&policy, RUNNING).unwrap();
    let socket = dir.path().join("nobody.sock");
    let reload = Command::new(env!("CARGO_BIN_EXE_netvm"))
        .arg("reload")
        .arg(&policy)
        .arg("--control")
        .arg(&socket)
        .output()
        .unwrap();
    assert_eq!(reload.status.code(), Some(2));
    let stderr = text(&reload.stderr);
    assert!(
        stderr.contains("connecting to") && stderr.contains("nobody.sock"),
        "{stderr}"
    );
    let repl = Command::new(env!("CARGO_BIN_EXE_netvm"))
        .arg("repl")
        .arg("--connect")
        .arg(&socket)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(repl.status.code(), Some(2));
    assert!(text(&repl.stderr).contains("nobody.sock"));
    let missing = Command::new(env!("CARGO_BIN_EXE_netvm"))
        .args(["reload", "/nonexistent/policy.nvr", "--control"])
        .arg(&socket)
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(text(&missing.stderr).contains("cannot read `/nonexistent/policy.nvr`"));
}

#[test]
fn a_repl_switch_with_control_takes_a_netvm_reload_from_outside() {
    use rexpect::session::spawn_command;
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("running.nvr");
    std::fs::write(&policy, RUNNING).unwrap();
    let socket = dir.path().join("repl.sock");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_netvm"));
    cmd.arg("repl")
        .arg(&policy)
        .args(["--bind", "src=gen:flows=16,size=64", "--bind", "sink=null"])
        .args(["--hugepages", "off", "--idle", "sleep", "--buffers", "1024"])
        .arg("--control")
        .arg(&socket)
        .env("NETVM_HISTORY", dir.path().join("history"))
        .env("NO_COLOR", "1")
        .env("TERM", "xterm");
    let mut p = spawn_command(cmd, Some(20_000)).unwrap();
    p.exp_string("netvm> ").unwrap();
    let edited = dir.path().join("edited.nvr");
    std::fs::write(
        &edited,
        RUNNING.replace("rule rest", "rule dns : udp.dport == 53 => drop\nrule rest"),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_netvm"))
        .arg("reload")
        .arg(&edited)
        .arg("--control")
        .arg(&socket)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("+ dns"), "{}", text(&out.stdout));
    p.send_line(":show dns").unwrap();
    p.exp_string("rule dns : udp.dport == 53 => drop").unwrap();
    p.exp_string("netvm> ").unwrap();
    p.send_line(":quit").unwrap();
    p.exp_string("rx = tx + dropped holds").unwrap();
    p.exp_eof().unwrap();
    assert!(
        !socket.exists(),
        "the socket is removed when the REPL leaves"
    );
}

#[test]
fn a_policy_nested_too_deep_is_refused_with_e019_and_the_deepest_accepted_one_loads() {
    let dir = tempfile::tempdir().unwrap();
    let switch = Switch::start(dir.path());
    // 400 parentheses: passed `check` and then overflowed the connection thread.
    let deep = RUNNING.replace(
        "rule udp  : udp",
        &format!("rule udp  : {}udp{}", "(".repeat(400), ")".repeat(400)),
    );
    let out = switch.reload(dir.path(), "deep.nvr", &deep);
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    assert!(
        format!("{stdout}{stderr}").contains("E019"),
        "{stdout}\n{stderr}"
    );
    // The deepest the language accepts: 128 levels of not/or, as one predicate
    // (`(not (... or tcp.dport == 3) or tcp.dport == 5)`).
    let depth = netvm_lang::MAX_NESTING;
    let mut pred = "udp".to_string();
    for i in 1..depth {
        pred = if i % 2 == 0 {
            format!("not {pred}")
        } else {
            format!("({pred} or tcp.dport == {i})")
        };
    }
    let deepest = RUNNING.replace("rule udp  : udp", &format!("rule udp  : {pred}"));
    let out = switch.reload(dir.path(), "deepest.nvr", &deepest);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    // Still running, and still answering.
    let again = switch.reload(dir.path(), "running.nvr", RUNNING);
    assert!(again.status.success(), "{}", text(&again.stderr));
    switch.stop();
}
