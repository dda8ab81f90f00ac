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
use support::{
    netvm, port_row, positions_in_order, read_pcap, status, vm_row, wait_for, write_pcap, Proc,
};

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
    let (mut command, control) = support::run_command(dir, policy);
    command.args(args);
    let mut switch = Proc::spawn(command, dir.join("switch.log"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while UnixStream::connect(&control).is_err() {
        if let Some(code) = switch.wait(Duration::from_millis(20)) {
            panic!(
                "the switch exited ({code}) before listening:\n{}",
                switch.log()
            );
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for the control socket"
        );
    }
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

/// A switch running CHAIN with both VMs processes (not started here), port `a` bound to
/// `input` and `b` writing `output`: (switch, control socket). It waits up to 30 s for
/// the processes, and never drops a packet for a slow one (10 s stall limit): byte-exact
/// means no overflow however loaded the machine running the tests is, and in the kill
/// tests only the kill may cost frames.
fn start_chain_of_processes(
    dir: &Path,
    input: &str,
    output: &Path,
    stats: &Path,
) -> (Proc, std::path::PathBuf) {
    start_switch(
        dir,
        CHAIN,
        &[
            "--bind".into(),
            format!("a={input}"),
            "--bind".into(),
            format!("b=pcap:tx={}", output.display()),
            "--vm".into(),
            "fw=process".into(),
            "--vm".into(),
            "mon=process".into(),
            "--wait-for-vms".into(),
            "30".into(),
            "--vm-stall-ms".into(),
            "10000".into(),
            "--stats-json".into(),
            stats.display().to_string(),
        ],
    )
}

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
    let (mut switch, control) = start_chain_of_processes(
        dir.path(),
        &format!("pcap:rx={}", input.display()),
        &output,
        &stats,
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

fn port_rx(control: &Path, port: &str) -> u64 {
    status(control).map_or(0, |s| port_row(&s, port)["rx_packets"].as_u64().unwrap())
}

fn drops(status: &Value, reason: &str) -> u64 {
    status["drops"][reason].as_u64().unwrap()
}

/// CHAIN (`fw` trusted -> `mon` untrusted -> out b) from a paced capture into a capture,
/// both VMs processes; `victim` is SIGKILLed mid-stream and restarted under the same VM
/// name while the switch runs on. Every input frame must come out byte-exact, in order,
/// or be counted dropped for a reason that says why (lost in the killed VM, or sent to it
/// while it was down); everything read after the restart comes out; every buffer, shared
/// and private, comes back.
fn a_chain_of_two_processes_survives_a_sigkill_mid_stream(victim: &str) {
    const FRAMES: usize = 15_000;
    const PPS: usize = 3_000; // 5 s of input
    let dir = tempfile::tempdir().unwrap();
    let frames: Vec<Vec<u8>> = (0..FRAMES as u32)
        .map(|i| udp_frame(53, i % 17, i, &vec![i as u8; (i % 200) as usize]))
        .collect();
    let (input, output, stats) = (
        dir.path().join("in.pcap"),
        dir.path().join("out.pcap"),
        dir.path().join("stats.json"),
    );
    write_pcap(&input, &frames);
    let (mut switch, control) = start_chain_of_processes(
        dir.path(),
        &format!("pcap:rx={},pps={PPS}", input.display()),
        &output,
        &stats,
    );
    // The victim holds every packet 20 ms, so it always holds some when it is killed.
    let builtin = |vm: &str| {
        if vm == victim {
            "delay:us=20000"
        } else {
            "forward"
        }
    };
    let other = if victim == "fw" { "mon" } else { "fw" };
    let killed = start_nf(dir.path(), &control, builtin(victim), victim, &[]);
    let mut survivor = start_nf(dir.path(), &control, builtin(other), other, &[]);

    wait_for(
        "a quarter of the input read",
        Duration::from_secs(30),
        || port_rx(&control, "a") >= (FRAMES / 4) as u64,
    );
    killed.signal(libc::SIGKILL);
    wait_for(
        &format!("the switch to mark {victim} down"),
        Duration::from_secs(5),
        || status(&control).is_some_and(|s| vm_row(&s, victim)["state"] == "down"),
    );
    drop(killed);
    wait_for(
        "frames dropped for the down VM",
        Duration::from_secs(5),
        || status(&control).is_some_and(|s| drops(&s, "vm_down") > 0),
    );
    let read_while_down = port_rx(&control, "a");
    assert!(
        read_while_down < FRAMES as u64,
        "the kill did not land mid-stream: all {FRAMES} frames were read before {victim} was down"
    );

    // Restart: the same VM name, the same switch.
    let mut restarted = start_nf(dir.path(), &control, builtin(victim), victim, &[]);
    wait_for(
        &format!("{victim} to re-attach"),
        Duration::from_secs(10),
        || {
            status(&control).is_some_and(|s| {
                let row = vm_row(&s, victim);
                row["state"] == "up" && row["attaches"] == 2
            })
        },
    );
    // Let the burst in flight when it came up settle: what is read from here on was read
    // with both VMs up.
    std::thread::sleep(Duration::from_millis(300));
    let read_before_up = port_rx(&control, "a") as usize;
    assert!(
        read_before_up + 300 <= FRAMES,
        "too little input left after the restart ({read_before_up} of {FRAMES} read)"
    );

    assert_eq!(
        switch.wait(Duration::from_secs(60)),
        Some(0),
        "{}",
        switch.log()
    );
    assert_eq!(
        survivor.wait(Duration::from_secs(10)),
        Some(0),
        "{}",
        survivor.log()
    );
    assert_eq!(
        restarted.wait(Duration::from_secs(10)),
        Some(0),
        "{}",
        restarted.log()
    );
    assert!(
        switch.log().contains(&format!("VM `{victim}` is down")),
        "{}",
        switch.log()
    );

    // Output: input frames, byte-exact, in order, some left out.
    let out = read_pcap(&output);
    let positions = positions_in_order(&out, &frames);
    // Nothing read after the restart is missing.
    let missing: Vec<usize> = (read_before_up..FRAMES)
        .filter(|i| positions.binary_search(i).is_err())
        .collect();
    assert!(
        missing.is_empty(),
        "{} frames read after {victim} came back are missing (first {:?})",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert!(out.len() < FRAMES, "the kill cost no frame");

    // Exact accounting: each frame left out is counted, and only as lost in the killed VM
    // or dropped for the VM being down.
    let s = stats_json(&stats);
    let (n, sent) = (FRAMES as u64, out.len() as u64);
    assert_eq!(s["rx"], n, "{s}");
    assert_eq!(s["tx"], sent, "{s}");
    assert_eq!(s["ports"][0]["rx_packets"], n, "{s}");
    assert_eq!(s["ports"][1]["tx_packets"], sent, "{s}");
    let (lost, down) = (drops(&s, "vm_lost"), drops(&s, "vm_down"));
    assert!(lost > 0, "{victim} held packets when killed: {s}");
    assert!(down > 0, "{s}");
    for (reason, count) in s["drops"].as_object().unwrap() {
        if reason != "vm_lost" && reason != "vm_down" {
            assert_eq!(count, 0, "no `{reason}` drops expected: {s}");
        }
    }
    assert_eq!(
        lost + down,
        n - sent,
        "every frame left out is counted: {s}"
    );
    assert_eq!(s["dropped"], n - sent, "{s}");
    assert_eq!(s["balanced"], true, "{s}");
    // Per VM: the survivor passed everything it was given, the victim everything but what
    // it lost, and the last hop's answers are exactly what left.
    let count = |name: &str, key: &str| vm_row(&s, name)[key].as_u64().unwrap();
    assert_eq!(count(other, "packets_in"), count(other, "passed"), "{s}");
    assert_eq!(count(victim, "dropped") + count(other, "dropped"), 0, "{s}");
    assert!(
        count(victim, "packets_in") >= count(victim, "passed") + lost,
        "{s}"
    );
    assert_eq!(count("mon", "passed"), sent, "{s}");
    // The pool is whole again: every shared buffer and every private copy of `mon`.
    assert_eq!(s["buffers_returned"], s["buffers"], "{s}");
    assert_eq!(s["private_leaks"], serde_json::json!([]), "{s}");
    eprintln!(
        "{victim} killed: {sent} of {n} frames out, {lost} lost in it, {down} dropped while \
         it was down; {} read after the restart, all out",
        FRAMES - read_before_up
    );
}

#[test]
fn a_chain_of_two_processes_accounts_for_every_frame_when_the_first_is_killed_and_restarted() {
    a_chain_of_two_processes_survives_a_sigkill_mid_stream("fw");
}

#[test]
fn a_chain_of_two_processes_accounts_for_every_frame_when_the_second_is_killed_and_restarted() {
    a_chain_of_two_processes_survives_a_sigkill_mid_stream("mon");
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
            vec![br#"{"op":"hello","protocol":0,"layout":2}"#],
            0,
            "protocol 0 is not spoken here: this switch speaks protocols 1 to 2",
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
            // What is tested is where packets go, not how long a descheduled w1 may
            // leave them waiting: on a loaded machine the 10 ms default declared it
            // stalled and dropped packets (vm_full), on main too.
            "--vm-stall-ms".into(),
            "2000".into(),
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
                   7 packets passed, 2 out of state, 0 SYNs refused from outside, 1 not TCP";
    assert!(fw.log().contains(summary), "{}", fw.log());
}

#[test]
fn the_control_socket_is_0600_even_under_umask_0_and_another_uid_is_refused_while_the_switch_runs_on(
) {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.nvr");
    std::fs::write(&policy, "port a\nport b\nrule all : ip => out b\n").unwrap();
    let control = dir.path().join("control.sock");
    let mut command = netvm();
    command
        .arg("run")
        .arg(&policy)
        .arg("--control")
        .arg(&control)
        .args(["--hugepages", "off", "--idle", "sleep", "--duration", "60"])
        .args(["--bind", "a=gen:flows=4,size=64", "--bind", "b=null"]);
    // SAFETY: umask(2) is async-signal-safe; this runs in the child before exec.
    unsafe {
        command.pre_exec(|| {
            libc::umask(0);
            Ok(())
        });
    }
    let mut switch = Proc::spawn(command, dir.path().join("switch.log"));
    let path = control.clone();
    wait_for("the control socket", Duration::from_secs(20), || {
        UnixStream::connect(&path).is_ok()
    });
    let meta = std::fs::metadata(&control).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(
        meta.permissions().mode() & 0o7777,
        0o600,
        "the control socket is {:o}",
        meta.permissions().mode() & 0o7777
    );

    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root: cannot run a client as another uid; that half is skipped");
    } else {
        const NOBODY: u32 = 65534;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let status_as_nobody = || {
            let out = netvm()
                .args(["status", "--control"])
                .arg(&control)
                .uid(NOBODY)
                .gid(NOBODY)
                .output()
                .unwrap();
            assert!(!out.status.success(), "uid {NOBODY} was let in");
            String::from_utf8_lossy(&out.stderr).into_owned()
        };
        // The socket's mode keeps another uid out at connect(2)...
        let refused = status_as_nobody();
        assert!(refused.contains("Permission denied"), "{refused}");
        // ...and with the mode opened up by hand, the switch still refuses it by its
        // credentials (SO_PEERCRED), saying why.
        std::fs::set_permissions(&control, std::fs::Permissions::from_mode(0o666)).unwrap();
        let refused = status_as_nobody();
        assert!(
            refused
                .contains("permission denied: the switch runs as uid 0, this client as uid 65534"),
            "{refused}"
        );
        wait_for(
            "the refusal in the switch's log",
            Duration::from_secs(5),
            || switch.log().contains("refused a client"),
        );
        assert!(switch.log().contains("uid 65534"), "{}", switch.log());
    }
    // The switch runs on and still answers its own user.
    let before = status(&control).expect("status after the refusals")["rx"]
        .as_u64()
        .unwrap();
    wait_for(
        "the switch to keep receiving",
        Duration::from_secs(10),
        || status(&control).is_some_and(|s| s["rx"].as_u64().unwrap() > before),
    );
    switch.signal(libc::SIGINT);
    assert_eq!(
        switch.wait(Duration::from_secs(30)),
        Some(0),
        "{}",
        switch.log()
    );
}

/// The IP header's offset (behind any VLAN tags) and whether it is IPv6; `None` for
/// frames without IP. Decoded by the packet crate, not by the rewrite NF's own walker.
fn ip_header_of(frame: &[u8]) -> Option<(usize, bool)> {
    let d = netvm_packet::Decoded::new(frame);
    let v6 = d.has(netvm_packet::Proto::Ip6);
    if !v6 && !d.has(netvm_packet::Proto::Ip) {
        return None;
    }
    Some((usize::from(d.offsets().l3?), v6))
}

/// `frame` with its IP DSCP set to `dscp`, or `None` when it has no IP header. The ECN
/// bits stay; an IPv4 header checksum is recomputed from scratch (etherparse).
fn with_dscp(frame: &[u8], dscp: u8) -> Option<Vec<u8>> {
    let (l3, v6) = ip_header_of(frame)?;
    let mut f = frame.to_vec();
    if v6 {
        let word = u32::from_be_bytes(f[l3..l3 + 4].try_into().unwrap());
        let ecn = (word >> 20) & 0x3;
        let tc = (u32::from(dscp) << 2) | ecn;
        f[l3..l3 + 4].copy_from_slice(&((word & 0xf00f_ffff) | (tc << 20)).to_be_bytes());
    } else {
        f[l3 + 1] = (dscp << 2) | (f[l3 + 1] & 0x3);
        f[l3 + 10..l3 + 12].fill(0);
        let sum = etherparse::Ipv4HeaderSlice::from_slice(&f[l3..])
            .unwrap()
            .to_header()
            .calc_header_checksum();
        f[l3 + 10..l3 + 12].copy_from_slice(&sum.to_be_bytes());
    }
    Some(f)
}

/// IPv4 (plain and VLAN-tagged) and IPv6 frames with assorted DSCP and ECN bits, and ARP.
fn rewrite_input() -> Vec<Vec<u8>> {
    (0..800u32)
        .map(|i| {
            let base = match i % 4 {
                0 | 1 => BaseProto::Udp,
                2 => BaseProto::Tcp,
                _ => BaseProto::Arp,
            };
            let mut spec = PacketSpec::new(base);
            spec.payload = Some(i.to_be_bytes().repeat(1 + (i % 40) as usize));
            match i % 8 {
                1 => {
                    spec.set(Field::Ip6Src, 0xfd00 << 112 | u128::from(i))
                        .set(Field::Ip6Flow, u128::from(i * 7919) & 0xfffff);
                }
                2 | 6 => {
                    spec.set(Field::VlanId, u128::from(i % 4000 + 1));
                }
                _ => {}
            }
            let frame = spec.build().unwrap();
            // Arbitrary starting DSCP and ECN (ECN must survive the rewrite).
            let start = (i % 64) as u8;
            let mut frame = with_dscp(&frame, start).unwrap_or(frame);
            if let Some((l3, v6)) = ip_header_of(&frame) {
                let ecn = (i % 4) as u8;
                if v6 {
                    frame[l3 + 1] = (frame[l3 + 1] & !0x30) | (ecn << 4);
                } else {
                    frame[l3 + 1] = (frame[l3 + 1] & !0x3) | ecn;
                    frame = with_dscp(&frame, start).unwrap();
                }
            }
            frame
        })
        .collect()
}

#[test]
fn the_builtin_rewrite_run_as_processes_sets_dscp_byte_for_byte_and_leaves_mirrors_alone() {
    let frames = rewrite_input();
    assert!(frames
        .iter()
        .any(|f| ip_header_of(f).is_some_and(|(_, v6)| v6)));
    assert!(frames.iter().any(|f| ip_header_of(f).is_none()));
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str| dir.path().join(name).display().to_string();
    write_pcap(Path::new(&file("in.pcap")), &frames);
    // rw1 (trusted: in place, or on a copy while the mirror holds the buffer) sets DSCP
    // 10, `mid` records what it made, rw2 (untrusted: on its private copy) sets 46; `orig`
    // records the mirror copies, which must stay as they came in.
    let policy = "port a\nport b\n\
                  vm rw1 trusted\nvm mid trusted\nvm rw2\nvm orig trusted\n\
                  rule v4 : ip => mirror orig, chain rw1 -> mid -> rw2 -> out b\n\
                  rule v6 : ip6 => mirror orig, chain rw1 -> mid -> rw2 -> out b\n\
                  default => chain rw1 -> mid -> rw2 -> out b\n";
    let stats = file("stats.json");
    let (mut switch, control) = start_switch(
        dir.path(),
        policy,
        &[
            "--bind".into(),
            format!("a=pcap:rx={}", file("in.pcap")),
            "--bind".into(),
            format!("b=pcap:tx={}", file("out.pcap")),
            "--vm".into(),
            "rw1=process".into(),
            "--vm".into(),
            "rw2=process".into(),
            "--vm".into(),
            format!("mid=pcap-tap:{}", file("mid.pcap")),
            "--vm".into(),
            format!("orig=pcap-tap:{}", file("orig.pcap")),
            "--wait-for-vms".into(),
            "30".into(),
            "--vm-stall-ms".into(),
            "10000".into(),
            "--stats-json".into(),
            stats.clone(),
        ],
    );
    let mut rw1 = start_nf(dir.path(), &control, "rewrite:dscp=10", "rw1", &[]);
    let mut rw2 = start_nf(dir.path(), &control, "rewrite:dscp=46", "rw2", &[]);
    assert_eq!(
        switch.wait(Duration::from_secs(60)),
        Some(0),
        "{}",
        switch.log()
    );
    assert_eq!(rw1.wait(Duration::from_secs(10)), Some(0), "{}", rw1.log());
    assert_eq!(rw2.wait(Duration::from_secs(10)), Some(0), "{}", rw2.log());

    let rewritten = |dscp: u8| -> Vec<Vec<u8>> {
        frames
            .iter()
            .map(|f| with_dscp(f, dscp).unwrap_or_else(|| f.clone()))
            .collect()
    };
    let ip: Vec<Vec<u8>> = frames
        .iter()
        .filter(|f| ip_header_of(f).is_some())
        .cloned()
        .collect();
    let changed = rewritten(46)
        .iter()
        .zip(&frames)
        .filter(|(a, b)| a != b)
        .count();
    assert!(changed > 500, "the test rewrites too little: {changed}");
    let check = |name: &str, expected: &[Vec<u8>]| {
        let got = read_pcap(Path::new(&file(name)));
        assert_eq!(got.len(), expected.len(), "{name}");
        for (k, (g, e)) in got.iter().zip(expected).enumerate() {
            assert_eq!(g, e, "{name}: frame {k} differs");
        }
    };
    check("mid.pcap", &rewritten(10));
    check("out.pcap", &rewritten(46));
    check("orig.pcap", &ip);
    let s = stats_json(Path::new(&stats));
    assert_eq!(s["buffers_returned"], s["buffers"], "{s}");
    assert_eq!(s["balanced"], true, "{s}");
    let vms = s["vms"].as_array().unwrap();
    assert_eq!(vms[0]["copied_bytes"], 0, "rw1 is trusted: {s}");
    assert!(
        vms[2]["copied_bytes"].as_u64().unwrap() > 0,
        "rw2 copies: {s}"
    );
}

/// A `netvm-nf` function in a thread of this test, attached to VM `vm`: it records each
/// packet's ingress port (index and name) and payload sequence number, sends what came
/// in on `west` out port `log`, and visits VM `mark` with every even-numbered frame from
/// `east`, all by name. Returns what it recorded when the switch goes away.
fn steer_by_name(
    control: std::path::PathBuf,
    vm: &'static str,
) -> std::thread::JoinHandle<Vec<(u16, String, u32)>> {
    let mut nf = netvm_nf::Nf::attach_with(
        &control,
        vm,
        netvm_nf::AttachOptions {
            writes: false,
            idle: netvm_runtime::IdlePolicy::Sleep,
        },
    )
    .expect("attach");
    std::thread::spawn(move || {
        assert_eq!(nf.ports(), ["east", "west", "lan", "log"]);
        assert_eq!(nf.vms(), ["steer", "mark"]);
        for (e, expected) in [
            (
                nf.out("nope").unwrap_err(),
                "no port named `nope` in the switch's policy (its ports: east, west, lan, log)",
            ),
            (
                nf.to("nope").unwrap_err(),
                "no VM named `nope` in the switch's policy (its VMs: steer, mark)",
            ),
        ] {
            assert!(matches!(e, netvm_nf::NfError::UnknownName(_)));
            assert_eq!(e.to_string(), expected);
        }
        let to_log = nf.out("log").unwrap();
        let to_mark = nf.to("mark").unwrap();
        assert_eq!(
            (to_log, to_mark),
            (netvm_nf::Verdict::Out(3), netvm_nf::Verdict::To(1))
        );
        let mut seen = Vec::new();
        nf.run(|packet| {
            let data = packet.data();
            let seq = u32::from_be_bytes(data[data.len() - 4..].try_into().unwrap());
            let port = packet.in_port().expect("every frame came in on a port");
            seen.push((port.index, port.name.to_string(), seq));
            match port.name {
                "west" => to_log,
                _ if seq % 2 == 0 => to_mark,
                _ => netvm_nf::Verdict::Next,
            }
        })
        .unwrap();
        seen
    })
}

#[test]
fn an_nf_sees_the_ingress_port_by_name_and_steers_to_ports_and_vms_by_name() {
    for trust in ["trusted", "untrusted"] {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str| dir.path().join(name).display().to_string();
        let east: Vec<Vec<u8>> = (0..300).map(|i| udp_frame(53, 1, i, b"east")).collect();
        let west: Vec<Vec<u8>> = (1000..1200).map(|i| udp_frame(53, 2, i, b"west")).collect();
        write_pcap(Path::new(&file("east.pcap")), &east);
        write_pcap(Path::new(&file("west.pcap")), &west);
        let policy = format!(
            "port east\nport west\nport lan\nport log\nvm steer {trust}\nvm mark trusted\n\
             rule all : ip => chain steer -> out lan\n"
        );
        let stats = file("stats.json");
        let (mut switch, control) = start_switch(
            dir.path(),
            &policy,
            &[
                "--bind".into(),
                format!("east=pcap:rx={}", file("east.pcap")),
                "--bind".into(),
                format!("west=pcap:rx={}", file("west.pcap")),
                "--bind".into(),
                format!("lan=pcap:tx={}", file("out.pcap")),
                "--bind".into(),
                format!("log=pcap:tx={}", file("log.pcap")),
                "--vm".into(),
                "steer=process".into(),
                "--vm".into(),
                "mark=counter".into(),
                "--wait-for-vms".into(),
                "30".into(),
                "--vm-stall-ms".into(),
                "10000".into(),
                "--stats-json".into(),
                stats.clone(),
            ],
        );
        let nf = steer_by_name(control, "steer");
        assert_eq!(
            switch.wait(Duration::from_secs(60)),
            Some(0),
            "{}",
            switch.log()
        );
        let seen = nf.join().expect("the NF thread");

        // Every frame was seen once, with the port it came in on.
        let mut from_east: Vec<u32> = Vec::new();
        let mut from_west: Vec<u32> = Vec::new();
        for (index, name, seq) in &seen {
            match (index, name.as_str()) {
                (0, "east") => from_east.push(*seq),
                (1, "west") => from_west.push(*seq),
                other => panic!("{trust}: frame {seq} came in on {other:?}"),
            }
        }
        assert_eq!(from_east, (0..300).collect::<Vec<_>>(), "{trust}");
        assert_eq!(from_west, (1000..1200).collect::<Vec<_>>(), "{trust}");
        // West left by `log` (out, by name), east by the chain's `lan`; the even east
        // frames visited `mark` on the way (to, by name).
        assert_eq!(read_pcap(Path::new(&file("log.pcap"))), west, "{trust}");
        assert_eq!(read_pcap(Path::new(&file("out.pcap"))), east, "{trust}");
        let s = stats_json(Path::new(&stats));
        assert_eq!(s["vms"][1]["packets_in"], 150, "{trust}: {s}");
        assert_eq!(
            s["vms"][1]["summary"],
            format!("150 packets, {} bytes", 150 * east[0].len()),
            "{trust}: {s}"
        );
        assert_eq!(s["buffers_returned"], s["buffers"], "{trust}: {s}");
    }
}

#[test]
fn the_example_firewall_opens_connections_only_from_its_inside_port_and_sends_strays_out_by_name() {
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    const FIN: u8 = 0x01;
    const PSH: u8 = 0x08;
    let connection = vec![
        tcp_frame(true, SYN, 1),
        tcp_frame(false, SYN | ACK, 2),
        tcp_frame(true, PSH | ACK, 3),
        tcp_frame(false, FIN | ACK, 4),
        tcp_frame(true, FIN | ACK, 5),
    ];
    let strays = [tcp_frame(false, PSH | ACK, 9), tcp_frame(true, ACK, 8)];
    let mut lan_in = vec![strays[0].clone()];
    lan_in.extend(connection.iter().cloned());
    lan_in.push(strays[1].clone());
    // A SYN from outside, to a host inside: refused because of the port it came in on.
    let mut outside_syn = PacketSpec::new(BaseProto::Tcp);
    outside_syn
        .set(Field::IpSrc, 0xcb00_7109)
        .set(Field::IpDst, 0x0a00_0001)
        .set(Field::TcpDport, 22)
        .set(Field::TcpFlags, u128::from(SYN));
    let wan_in = vec![outside_syn.build().unwrap()];
    let binary = stateful_firewall_binary();
    for trust in ["trusted", "untrusted"] {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str| dir.path().join(name).display().to_string();
        write_pcap(Path::new(&file("lan.pcap")), &lan_in);
        write_pcap(Path::new(&file("wan.pcap")), &wan_in);
        let (mut switch, control) = start_switch(
            dir.path(),
            &format!(
                "port lan\nport wan\nport quarantine\nvm fw {trust}\n\
                 rule all : ip => chain fw -> out wan\n"
            ),
            &[
                "--bind".into(),
                format!("lan=pcap:rx={}", file("lan.pcap")),
                "--bind".into(),
                format!("wan=pcap:rx={},tx={}", file("wan.pcap"), file("out.pcap")),
                "--bind".into(),
                format!("quarantine=pcap:tx={}", file("strays.pcap")),
                "--vm".into(),
                "fw=process".into(),
                "--wait-for-vms".into(),
                "60".into(),
                "--vm-stall-ms".into(),
                "10000".into(),
            ],
        );
        let mut command = std::process::Command::new(&binary);
        command
            .arg(&control)
            .arg("fw")
            .args(["--inside", "lan", "--strays-to", "quarantine"]);
        let mut fw = Proc::spawn(command, dir.path().join("fw.log"));
        assert_eq!(
            switch.wait(Duration::from_secs(60)),
            Some(0),
            "{}",
            switch.log()
        );
        assert_eq!(fw.wait(Duration::from_secs(10)), Some(0), "{}", fw.log());
        assert_eq!(
            read_pcap(Path::new(&file("out.pcap"))),
            connection,
            "{trust}"
        );
        assert_eq!(
            read_pcap(Path::new(&file("strays.pcap"))),
            strays,
            "{trust}"
        );
        let summary = "1 connections opened, 1 closed, 0 open; \
                       5 packets passed, 2 out of state, 1 SYNs refused from outside, 0 not TCP";
        assert!(fw.log().contains(summary), "{trust}: {}", fw.log());
    }

    // A port name the policy lacks stops the firewall at attach, naming the ports.
    let dir = tempfile::tempdir().unwrap();
    let (mut switch, control) = start_switch(
        dir.path(),
        "port lan\nport wan\nvm fw trusted\nrule all : ip => chain fw -> out wan\n",
        &[
            "--bind".into(),
            "lan=gen:flows=2,size=64".into(),
            "--bind".into(),
            "wan=null".into(),
            "--vm".into(),
            "fw=process".into(),
            "--duration".into(),
            "30".into(),
        ],
    );
    let out = std::process::Command::new(&binary)
        .arg(&control)
        .arg("fw")
        .args(["--strays-to", "quarantine"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "--strays-to: no port named `quarantine` in the switch's policy (its ports: lan, wan)"
        ),
        "{stderr}"
    );
    switch.signal(libc::SIGINT);
    assert!(
        switch.wait(Duration::from_secs(30)).is_some(),
        "{}",
        switch.log()
    );
}
