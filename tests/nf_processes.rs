//! VMs as separate processes, for real: `netvm run` with `--vm NAME=process`, network
//! functions started with `netvm nf`, packets through a chain of processes (byte-exact),
//! SIGKILL under load (the switch notices, reclaims every buffer, keeps the other chain
//! going, and a restarted process re-attaches), a stalled process (the switch does not
//! stall), and clients that misbehave on the control socket.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use netvm_packet::{BaseProto, Field, PacketSpec};
use serde_json::Value;
use support::{netvm, read_pcap, status, vm_row, wait_for, write_pcap, Proc};

fn udp_frame(dport: u16, flow: u32, seq: u32, payload: &[u8]) -> Vec<u8> {
    let mut spec = PacketSpec::new(BaseProto::Udp);
    spec.set(Field::IpSrc, 0x0a00_0000 + u128::from(flow))
        .set(Field::IpDst, 0xc0a8_0001)
        .set(Field::UdpSport, 1000 + u128::from(flow))
        .set(Field::UdpDport, u128::from(dport));
    let mut bytes = payload.to_vec();
    bytes.extend_from_slice(&seq.to_be_bytes());
    spec.payload = Some(bytes);
    spec.build().expect("test frames build")
}

fn start_switch(dir: &Path, policy: &str, args: &[String]) -> (Proc, std::path::PathBuf) {
    let policy_path = dir.join("policy.nvr");
    std::fs::write(&policy_path, policy).unwrap();
    let control = dir.join("control.sock");
    let mut command = netvm();
    command
        .arg("run")
        .arg(&policy_path)
        .arg("--control")
        .arg(&control)
        .args(["--hugepages", "off", "--idle", "sleep"])
        .args(args);
    let switch = Proc::spawn(command, dir.join("switch.log"));
    let path = control.clone();
    wait_for("the control socket", Duration::from_secs(20), || {
        UnixStream::connect(&path).is_ok()
    });
    (switch, control)
}

fn start_nf(dir: &Path, control: &Path, builtin: &str, vm: &str, extra: &[&str]) -> Proc {
    let mut command = netvm();
    command
        .args(["nf", builtin, "--vm", vm, "--idle", "sleep", "--control"])
        .arg(control)
        .args(extra);
    Proc::spawn(command, dir.join(format!("nf-{vm}-{}.log", now_ms())))
}

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn stats_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

const CHAIN: &str = "port a\nport b\nvm fw trusted\nvm mon\n\
                     rule all : ip => chain fw -> mon -> out b\n";

#[test]
fn a_chain_of_two_processes_delivers_every_frame_byte_exact() {
    let dir = tempfile::tempdir().unwrap();
    let frames: Vec<Vec<u8>> = (0..3000)
        .map(|i| udp_frame(53, i % 17, i, &vec![i as u8; (i % 300) as usize]))
        .collect();
    let input = dir.path().join("in.pcap");
    let output = dir.path().join("out.pcap");
    let stats = dir.path().join("stats.json");
    write_pcap(&input, &frames);
    let (mut switch, control) = start_switch(
        dir.path(),
        CHAIN,
        &[
            "--bind".into(),
            format!("a=pcap:rx={}", input.display()),
            "--bind".into(),
            format!("b=pcap:tx={}", output.display()),
            "--vm".into(),
            "fw=process".into(),
            "--vm".into(),
            "mon=process".into(),
            "--wait-for-vms".into(),
            "30".into(),
            // Byte-exact means no overflow: wait for the processes however loaded the
            // machine running the tests is.
            "--vm-stall-ms".into(),
            "10000".into(),
            "--stats-json".into(),
            stats.display().to_string(),
        ],
    );
    let audit = dir.path().join("fw-audit.json");
    let audit_arg = audit.display().to_string();
    let mut fw = start_nf(
        dir.path(),
        &control,
        "forward",
        "fw",
        &["--audit", &audit_arg],
    );
    let mut mon = start_nf(dir.path(), &control, "counter", "mon", &[]);
    let code = switch.wait(Duration::from_secs(60));
    assert_eq!(code, Some(0), "switch:\n{}", switch.log());
    // The processes see the switch go and exit on their own.
    assert_eq!(fw.wait(Duration::from_secs(10)), Some(0), "{}", fw.log());
    assert_eq!(mon.wait(Duration::from_secs(10)), Some(0), "{}", mon.log());
    assert!(mon.log().contains("mon: 3000 packets"), "{}", mon.log());

    assert_eq!(
        read_pcap(&output),
        frames,
        "the chain of processes changed frames"
    );
    let s = stats_json(&stats);
    assert_eq!(s["buffers_returned"], s["buffers"]);
    assert_eq!(s["balanced"], true);
    let vms = s["vms"].as_array().unwrap();
    assert_eq!(vms[0]["copied_bytes"], 0, "trusted: zero-copy");
    assert!(
        vms[1]["copied_bytes"].as_u64().unwrap() > 0,
        "untrusted: copies"
    );
    // A trusted process maps the shared pool (the untrusted one must not: see
    // tests/nf_untrusted.rs, which this contrast keeps honest).
    let audit: Value = serde_json::from_str(&std::fs::read_to_string(&audit).unwrap()).unwrap();
    assert!(
        audit["mappings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "memfd:netvm-region"),
        "{audit}"
    );
}

/// Two chains: UDP through the process VM `fw`, TCP through the built-in `other`.
const TWO_CHAINS: &str = "port a\nport b\nvm fw trusted\nvm other trusted\n\
                          rule u : udp => chain fw -> out b\n\
                          rule t : tcp => chain other -> out b\n\
                          default => drop\n";

fn packets_in(control: &Path, vm: &str) -> u64 {
    status(control).map_or(0, |s| vm_row(&s, vm)["packets_in"].as_u64().unwrap())
}

/// A switch running TWO_CHAINS from a generator for `seconds`, with `fw` attached and
/// passing packets: (switch, control socket, fw's process).
fn two_chains_with_fw(dir: &Path, seconds: u32, stats: &Path) -> (Proc, std::path::PathBuf, Proc) {
    let (switch, control) = start_switch(
        dir,
        TWO_CHAINS,
        &[
            "--bind".into(),
            "a=gen:flows=32,size=64,tcp=50,udp=50,icmp=0".into(),
            "--bind".into(),
            "b=null".into(),
            "--vm".into(),
            "fw=process".into(),
            "--wait-for-vms".into(),
            "30".into(),
            "--duration".into(),
            seconds.to_string(),
            "--stats-json".into(),
            stats.display().to_string(),
        ],
    );
    let fw = start_nf(dir, &control, "forward", "fw", &[]);
    wait_for("fw to pass packets", Duration::from_secs(20), || {
        packets_in(&control, "fw") > 1000
    });
    (switch, control, fw)
}

#[test]
fn a_killed_process_is_reclaimed_the_other_chain_runs_on_and_a_restart_reattaches() {
    let dir = tempfile::tempdir().unwrap();
    let stats = dir.path().join("stats.json");
    let (mut switch, control, fw) = two_chains_with_fw(dir.path(), 12, &stats);

    // Full load, then SIGKILL.
    fw.signal(libc::SIGKILL);
    let killed = Instant::now();
    wait_for("the switch to mark fw down", Duration::from_secs(5), || {
        status(&control).is_some_and(|s| vm_row(&s, "fw")["state"] == "down")
    });
    let noticed = killed.elapsed();
    drop(fw);
    let down = status(&control).unwrap();
    assert_eq!(vm_row(&down, "fw")["ring_fill"], 0);
    // The other chain keeps running while fw is down.
    let other_before = packets_in(&control, "other");
    std::thread::sleep(Duration::from_millis(500));
    let other_after = packets_in(&control, "other");
    assert!(
        other_after > other_before + 1000,
        "the TCP chain stalled: {other_before} -> {other_after}"
    );
    assert!(
        down["drops"]["vm_down"].as_u64().unwrap() > 0 || {
            std::thread::sleep(Duration::from_millis(200));
            status(&control).unwrap()["drops"]["vm_down"]
                .as_u64()
                .unwrap()
                > 0
        }
    );

    // Restart: the same VM name, no switch restart.
    let fw2 = start_nf(dir.path(), &control, "forward", "fw", &[]);
    wait_for("fw to come back", Duration::from_secs(10), || {
        status(&control).is_some_and(|s| {
            let row = vm_row(&s, "fw");
            row["state"] == "up" && row["attaches"] == 2
        })
    });
    let resumed = packets_in(&control, "fw");
    wait_for(
        "traffic through the restarted fw",
        Duration::from_secs(10),
        || packets_in(&control, "fw") > resumed + 1000,
    );

    assert_eq!(
        switch.wait(Duration::from_secs(60)),
        Some(0),
        "{}",
        switch.log()
    );
    drop(fw2);
    let s = stats_json(&stats);
    assert_eq!(
        s["buffers_returned"], s["buffers"],
        "every buffer back: {s}"
    );
    assert_eq!(s["balanced"], true, "rx = tx + drops: {s}");
    let drops = &s["drops"];
    assert!(drops["vm_down"].as_u64().unwrap() > 0, "{drops}");
    eprintln!(
        "noticed the kill in {:?} (status polling included); lost in the VM: {}, dropped while down: {}",
        noticed, drops["vm_lost"], drops["vm_down"]
    );
}

#[test]
fn a_stalled_process_fills_its_ring_and_the_switch_drops_the_overflow() {
    let dir = tempfile::tempdir().unwrap();
    let stats = dir.path().join("stats.json");
    let (mut switch, control, fw) = two_chains_with_fw(dir.path(), 8, &stats);
    // Alive but not draining.
    fw.signal(libc::SIGSTOP);
    wait_for("overflow drops", Duration::from_secs(10), || {
        status(&control).is_some_and(|s| s["drops"]["vm_full"].as_u64().unwrap() > 1000)
    });
    let other_before = packets_in(&control, "other");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        packets_in(&control, "other") > other_before + 1000,
        "the switch stalled"
    );
    // Still stalled when the switch stops: after its grace period the packets the
    // process holds are counted lost and every buffer comes back.
    assert_eq!(
        switch.wait(Duration::from_secs(60)),
        Some(0),
        "{}",
        switch.log()
    );
    fw.signal(libc::SIGCONT);
    let s = stats_json(&stats);
    assert_eq!(s["buffers_returned"], s["buffers"], "{s}");
    assert_eq!(s["balanced"], true, "{s}");
    assert!(s["drops"]["vm_lost"].as_u64().unwrap() > 0, "{s}");
}

/// Send raw lines on a fresh connection; the replies, until the switch hangs up.
fn raw_session(control: &Path, lines: &[&[u8]]) -> Vec<Value> {
    let mut stream = UnixStream::connect(control).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    for line in lines {
        let _ = stream.write_all(line);
        let _ = stream.write_all(b"\n");
    }
    let mut replies = Vec::new();
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { break };
        replies.push(serde_json::from_str(&line).expect("replies are JSON"));
    }
    replies
}

#[test]
fn misbehaving_clients_get_an_error_and_are_disconnected_and_the_switch_runs_on() {
    let dir = tempfile::tempdir().unwrap();
    let (mut switch, control) = start_switch(
        dir.path(),
        TWO_CHAINS,
        &[
            "--bind".into(),
            "a=gen:flows=4,size=64".into(),
            "--bind".into(),
            "b=null".into(),
            "--vm".into(),
            "fw=process".into(),
            "--duration".into(),
            "30".into(),
        ],
    );
    let hello = format!(
        r#"{{"op":"hello","protocol":{},"layout":{},"pid":1}}"#,
        netvm_runtime::control::PROTOCOL_VERSION,
        netvm_runtime::layout::LAYOUT_VERSION
    );
    // The error in reply `at`; a trailing bad line makes the switch hang up at the end.
    let error_at = |replies: &[Value], at: usize, expected: &str| -> String {
        let reply = replies
            .get(at)
            .unwrap_or_else(|| panic!("no reply {at} (expected `{expected}`): {replies:?}"));
        assert_eq!(reply["ok"], false, "{replies:?}");
        reply["error"].as_str().unwrap().to_string()
    };
    let huge = vec![b'x'; 100_000];
    let h = hello.as_bytes();
    let cases: Vec<(Vec<&[u8]>, usize, &str)> = vec![
        (vec![b"garbage"], 0, "not JSON"),
        (vec![b"\xff\xfe"], 0, "UTF-8"),
        (
            vec![br#"{"op":"status"}"#],
            0,
            "first message must be `hello`",
        ),
        (
            vec![br#"{"op":"hello","protocol":99,"layout":2}"#],
            0,
            "protocol 99",
        ),
        (
            vec![br#"{"op":"hello","protocol":1,"layout":77}"#],
            0,
            "layout 77",
        ),
        (vec![br#"{"op":"hello"}"#], 0, "bad hello"),
        (vec![&huge], 0, "longer than"),
        (
            vec![h, br#"{"op":"attach"}"#, b"bye"],
            1,
            "bad attach request",
        ),
        (
            vec![h, br#"{"op":"attach","vm":"nope"}"#, b"bye"],
            1,
            "no VM named `nope`",
        ),
        (
            vec![h, br#"{"op":"attach","vm":"other"}"#, b"bye"],
            1,
            "bound to a built-in",
        ),
        (vec![h, br#"{"op":"frobnicate"}"#, b"bye"], 1, "frobnicate"),
        (vec![h, h, b"bye"], 1, "already greeted"),
        (vec![h, br#"[1]"#], 1, "not a JSON object"),
        (vec![h, &huge], 1, "longer than"),
    ];
    for (lines, at, expected) in &cases {
        let replies = raw_session(&control, lines);
        let error = error_at(&replies, *at, expected);
        assert!(
            error.contains(expected),
            "expected `{expected}` in `{error}`"
        );
        assert_eq!(
            replies.len(),
            at + 1 + usize::from(lines.len() > at + 1),
            "{replies:?}"
        );
    }
    // A second attach of a held VM is refused while the first holder lives.
    let fw = start_nf(dir.path(), &control, "forward", "fw", &[]);
    wait_for("fw up", Duration::from_secs(10), || {
        status(&control).is_some_and(|s| vm_row(&s, "fw")["state"] == "up")
    });
    let replies = raw_session(&control, &[h, br#"{"op":"attach","vm":"fw"}"#, b"bye"]);
    assert!(error_at(&replies, 1, "already attached").contains("already attached"));
    // The switch is still healthy and counting, and says so to an operator.
    let s = status(&control).expect("status after the abuse");
    assert!(s["rx"].as_u64().unwrap() > 0);
    let table = netvm()
        .args(["status", "--control"])
        .arg(&control)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    let fw_line = table
        .lines()
        .find(|l| l.starts_with("fw "))
        .unwrap_or_default();
    assert!(
        fw_line.contains("process") && fw_line.contains("trusted") && fw_line.contains("up"),
        "{table}"
    );
    assert!(
        table.contains("other") && table.contains("built-in"),
        "{table}"
    );
    drop(fw);
    switch.signal(libc::SIGINT);
    assert!(
        switch.wait(Duration::from_secs(30)).is_some(),
        "{}",
        switch.log()
    );
}

#[test]
fn on_failure_bypass_skips_a_down_vm_and_balance_uses_the_live_members() {
    let dir = tempfile::tempdir().unwrap();
    let stats = dir.path().join("stats.json");
    let policy = "port a\nport b\n\
                  vm scrub trusted on_failure bypass\n\
                  vm w1, w2 trusted\n\
                  group web = {w1, w2}\n\
                  rule all : ip => chain scrub -> balance web -> out b\n";
    let (mut switch, control) = start_switch(
        dir.path(),
        policy,
        &[
            "--bind".into(),
            "a=gen:flows=64,size=64,count=20000".into(),
            "--bind".into(),
            "b=null".into(),
            "--vm".into(),
            "scrub=process".into(),
            "--vm".into(),
            "w1=process".into(),
            "--vm".into(),
            "w2=process".into(),
            "--wait-for-vms".into(),
            "3".into(),
            "--stats-json".into(),
            stats.display().to_string(),
        ],
    );
    // Only w1 comes: scrub stays down (bypassed), w2 stays down (its flows go to w1).
    let w1 = start_nf(dir.path(), &control, "forward", "w1", &[]);
    assert_eq!(
        switch.wait(Duration::from_secs(60)),
        Some(0),
        "{}",
        switch.log()
    );
    drop(w1);
    let s = stats_json(&stats);
    assert_eq!(s["tx"], 20000, "every packet out: {s}");
    assert_eq!(s["drops"]["vm_down"], 0, "{s}");
    let vms = s["vms"].as_array().unwrap();
    assert_eq!(vms[0]["packets_in"], 0, "scrub was bypassed");
    assert_eq!(
        vms[1]["packets_in"], 20000,
        "all flows went to the live member"
    );
    assert_eq!(vms[2]["packets_in"], 0);
    assert_eq!(s["buffers_returned"], s["buffers"]);
}

fn tcp_frame(client: bool, flags: u8, seq: u8) -> Vec<u8> {
    let (src, dst, sport, dport) = if client {
        (0x0a00_0001, 0x0a00_0002, 40000, 80)
    } else {
        (0x0a00_0002, 0x0a00_0001, 80, 40000)
    };
    let mut spec = PacketSpec::new(BaseProto::Tcp);
    spec.set(Field::IpSrc, src)
        .set(Field::IpDst, dst)
        .set(Field::TcpSport, sport)
        .set(Field::TcpDport, dport)
        .set(Field::TcpFlags, u128::from(flags));
    spec.payload = Some(vec![seq; 10]);
    spec.build().unwrap()
}

/// The from-scratch example NF (examples/nf/stateful_firewall.rs), built by cargo.
fn stateful_firewall_binary() -> std::path::PathBuf {
    let status = std::process::Command::new(env!("CARGO"))
        .args([
            "build",
            "-q",
            "-p",
            "netvm-nf",
            "--example",
            "stateful-firewall",
        ])
        .status()
        .unwrap();
    assert!(status.success(), "building the example");
    let netvm = std::path::PathBuf::from(env!("CARGO_BIN_EXE_netvm"));
    netvm.parent().unwrap().join("examples/stateful-firewall")
}

#[test]
fn the_example_stateful_firewall_passes_opened_connections_and_drops_strays() {
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    const FIN: u8 = 0x01;
    const PSH: u8 = 0x08;
    let connection = vec![
        tcp_frame(true, SYN, 1),
        tcp_frame(false, SYN | ACK, 2),
        tcp_frame(true, ACK, 3),
        tcp_frame(true, PSH | ACK, 4),
        tcp_frame(false, PSH | ACK, 5),
        tcp_frame(true, FIN | ACK, 6),
        tcp_frame(false, FIN | ACK, 7),
    ];
    // After both FINs the connection is closed: a late ACK is a stray too.
    let strays = [tcp_frame(true, ACK, 8), tcp_frame(false, PSH | ACK, 9)];
    let udp = udp_frame(53, 1, 1, b"query");
    let mut input = vec![strays[1].clone()];
    input.extend(connection.iter().cloned());
    input.push(udp.clone());
    input.push(strays[0].clone());

    let dir = tempfile::tempdir().unwrap();
    let (in_pcap, out_pcap) = (dir.path().join("in.pcap"), dir.path().join("out.pcap"));
    write_pcap(&in_pcap, &input);
    let (mut switch, control) = start_switch(
        dir.path(),
        "port a\nport b\nvm fw trusted\nrule all : ip => chain fw -> out b\n",
        &[
            "--bind".into(),
            format!("a=pcap:rx={}", in_pcap.display()),
            "--bind".into(),
            format!("b=pcap:tx={}", out_pcap.display()),
            "--vm".into(),
            "fw=process".into(),
            "--wait-for-vms".into(),
            "60".into(),
            "--vm-stall-ms".into(),
            "10000".into(),
        ],
    );
    let mut command = std::process::Command::new(stateful_firewall_binary());
    command.arg(&control).arg("fw");
    let mut fw = Proc::spawn(command, dir.path().join("fw.log"));
    assert_eq!(
        switch.wait(Duration::from_secs(60)),
        Some(0),
        "{}",
        switch.log()
    );
    assert_eq!(fw.wait(Duration::from_secs(10)), Some(0), "{}", fw.log());

    let mut expected = connection;
    expected.push(udp);
    assert_eq!(read_pcap(&out_pcap), expected);
    let summary = "1 connections opened, 1 closed, 0 open; \
                   7 packets passed, 2 dropped out of state, 1 not TCP";
    assert!(fw.log().contains(summary), "{}", fw.log());
}
