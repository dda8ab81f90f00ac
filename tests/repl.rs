//! `netvm repl` driven through a pseudo-terminal, as a person would use it: type a rule
//! and see the running switch's counters move, read errors that point into the typed
//! line, cancel with Ctrl-C, leave with Ctrl-D, complete with Tab, continue a block on
//! the next line, save a file that `netvm check` accepts, and find the history again.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rexpect::session::{spawn_command, PtySession};

const POLICY: &str = "\
import std.ports
port src
port sink
rule tcp_out : tcp => out sink
default => out sink
";

/// The REPL on `policy` in a pty: generator → switch → sink, history in `dir`.
fn repl(dir: &Path, policy: &Path) -> PtySession {
    repl_colored(dir, policy, false)
}

fn repl_colored(dir: &Path, policy: &Path, color: bool) -> PtySession {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_netvm"));
    cmd.arg("repl")
        .arg(policy)
        .args(["--bind", "src=gen:flows=16,size=64", "--bind", "sink=null"])
        .args(["--hugepages", "off", "--idle", "sleep", "--buffers", "1024"])
        .env("NETVM_HISTORY", dir.join("history"))
        .env("TERM", "xterm");
    if color {
        cmd.env_remove("NO_COLOR");
    } else {
        cmd.env("NO_COLOR", "1");
    }
    let mut p = spawn_command(cmd, Some(20_000)).expect("spawn netvm repl in a pty");
    p.exp_string("Type :help").expect("the banner");
    p.exp_string("netvm> ").expect("the prompt");
    p
}

fn policy_file(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("switch.nvr");
    std::fs::write(&path, POLICY).unwrap();
    path
}

/// Type `text` (no Enter unless it holds `\r`).
fn keys(p: &mut PtySession, text: &str) {
    p.send(text).unwrap();
    p.flush().unwrap();
}

/// Ask `:rules` until `rule`'s packet counter is above zero.
fn wait_for_packets(p: &mut PtySession, rule: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        p.send_line(":rules").unwrap();
        let (_, line) = p
            .exp_regex(&format!(r"{rule}\s+\d+"))
            .unwrap_or_else(|e| panic!("no `{rule}` row in :rules: {e}"));
        let n: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        p.exp_string("netvm> ").unwrap();
        if n > 0 {
            return n;
        }
        assert!(
            Instant::now() < deadline,
            "rule `{rule}` never matched a packet"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_typed_rule_takes_effect_in_the_running_switch() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = repl(dir.path(), &policy_file(dir.path()));
    p.send_line("rule udp_drop before tcp_out : udp => count udp_seen, drop")
        .unwrap();
    p.exp_string("added rule `udp_drop` before rule `tcp_out`")
        .unwrap();
    p.exp_string("+ udp_drop: udp => count udp_seen, drop")
        .unwrap();
    p.exp_regex(r"swap [0-9.]+ ").unwrap();
    p.exp_string("netvm> ").unwrap();
    // The generator sends UDP among its flows: the new rule's counter moves.
    wait_for_packets(&mut p, "udp_drop");
    p.send_line(":stats").unwrap();
    p.exp_regex(r"drop policy\s+[1-9]").unwrap();
    p.exp_string("netvm> ").unwrap();
    p.send_line(":explain udp { udp.dport = 53 }").unwrap();
    p.exp_string("matched: rule udp_drop").unwrap();
    p.exp_string("netvm> ").unwrap();
    p.send_line(":quit").unwrap();
    p.exp_string("rx = tx + dropped holds").unwrap();
    p.exp_eof().unwrap();
}

#[test]
fn an_error_points_into_the_typed_line_and_the_switch_keeps_running() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = repl(dir.path(), &policy_file(dir.path()));
    p.send_line("rule web : tcp.dport == 80 => out nowhere")
        .unwrap();
    p.exp_string("error[E002]").unwrap();
    // Line 1, column 35 of what was typed: `nowhere`.
    p.exp_string("<input 1>:1:35").unwrap();
    p.exp_string("no port of this name").unwrap();
    p.exp_string("the running policy is unchanged").unwrap();
    p.send_line("rule web : tcp.dprot == 80 => out sink")
        .unwrap();
    p.exp_string("<input 2>:1:12").unwrap();
    p.exp_string("did you mean `tcp.dport`?").unwrap();
    p.exp_string("netvm> ").unwrap();
    p.send_line(":rules").unwrap();
    p.exp_regex(r"tcp_out\s+\d+").unwrap();
    p.exp_string("netvm> ").unwrap();
    p.send_line(":quit").unwrap();
    p.exp_eof().unwrap();
}

#[test]
fn ctrl_c_cancels_the_line_and_ctrl_d_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = repl(dir.path(), &policy_file(dir.path()));
    keys(&mut p, "rule half : udp");
    p.send_control('c').unwrap();
    p.exp_string("line cancelled").unwrap();
    p.exp_string("netvm> ").unwrap();
    p.send_line(":show half").unwrap();
    p.exp_string("the policy declares no `half`").unwrap();
    p.exp_string("netvm> ").unwrap();
    p.send_control('d').unwrap();
    p.exp_string("switch stopped after").unwrap();
    p.exp_eof().unwrap();
    let history = std::fs::read_to_string(dir.path().join("history")).unwrap();
    assert!(history.contains(":show half"), "history: {history}");
    assert!(
        !history.contains("rule half"),
        "a cancelled line is not history"
    );
}

#[test]
fn tab_completes_commands_fields_and_declared_names() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = repl(dir.path(), &policy_file(dir.path()));
    keys(&mut p, ":sta\t");
    p.exp_string(":stats").unwrap();
    keys(&mut p, "\r");
    p.exp_string("rates over the last").unwrap();
    p.exp_string("netvm> ").unwrap();
    keys(&mut p, "rule dns : udp.dp\t");
    p.exp_string("udp.dport").unwrap();
    keys(&mut p, " == 53 => out si\t");
    p.exp_string("sink").unwrap();
    keys(&mut p, "\r");
    p.exp_string("added rule `dns`").unwrap();
    p.exp_string("netvm> ").unwrap();
    // Names from imports complete too (HTTPS from std.ports).
    keys(&mut p, "const MY_WEB = {HTTP, HTTPS_A\t");
    p.exp_string("HTTPS_ALT").unwrap();
    keys(&mut p, "}\r");
    p.exp_string("added const `MY_WEB`").unwrap();
    p.exp_string("netvm> ").unwrap();
    keys(&mut p, ":show tcp_o\t");
    p.exp_string("tcp_out").unwrap();
    keys(&mut p, "\r");
    p.exp_string("rule tcp_out : tcp => out sink").unwrap();
    p.exp_string("netvm> ").unwrap();
    p.send_line(":quit").unwrap();
    p.exp_eof().unwrap();
}

#[test]
fn a_test_block_continues_over_lines_and_save_writes_a_file_netvm_check_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = repl(dir.path(), &policy_file(dir.path()));
    keys(&mut p, "test \"udp goes out\" {\r");
    keys(&mut p, "  udp { udp.dport = 53 } => out sink\r");
    keys(&mut p, "}\r");
    p.exp_string("added test \"udp goes out\"").unwrap();
    p.exp_string("netvm> ").unwrap();
    p.send_line(":test").unwrap();
    p.exp_string("test result: ok. 1 passed; 0 failed").unwrap();
    p.exp_string("netvm> ").unwrap();
    p.send_line("rule web before tcp_out : tcp.dport == 80 => out sink")
        .unwrap();
    p.exp_string("added rule `web`").unwrap();
    p.exp_string("netvm> ").unwrap();
    let saved = dir.path().join("saved.nvr");
    p.send_line(&format!(":save {}", saved.display())).unwrap();
    p.exp_string("bytes); `netvm check").unwrap();
    p.exp_string("netvm> ").unwrap();
    p.send_line(":quit").unwrap();
    p.exp_eof().unwrap();

    let check = Command::new(env!("CARGO_BIN_EXE_netvm"))
        .arg("check")
        .arg(&saved)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let text = std::fs::read_to_string(&saved).unwrap();
    assert!(
        text.find("rule web").unwrap() < text.find("rule tcp_out").unwrap(),
        "{text}"
    );
    assert!(
        text.contains("udp { udp.dport = 53 } => out sink"),
        "{text}"
    );
}

#[test]
fn typed_input_is_highlighted_on_a_color_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = repl_colored(dir.path(), &policy_file(dir.path()), true);
    keys(&mut p, "rule web : tcp.dport == 80");
    // Keywords bold blue, fields cyan, numbers yellow, as the line is redrawn.
    p.exp_string("\x1b[1;34mrule\x1b[0m").unwrap();
    p.exp_string("\x1b[36mtcp.dport\x1b[0m").unwrap();
    p.exp_string("\x1b[33m80\x1b[0m").unwrap();
    p.send_control('c').unwrap();
    p.exp_string("line cancelled").unwrap();
    p.send_control('d').unwrap();
    p.exp_eof().unwrap();
}
