//! Hot reload (issue 6): the switch keeps forwarding at full speed while its program is
//! swapped a thousand times between two JIT-compiled policies, and loses or
//! misclassifies nothing;
//! `netvm run` re-reads its policy on SIGHUP and keeps the running one when the new one
//! has errors or changes the ports.

#[path = "../src/policy_table.rs"]
#[allow(dead_code)]
mod policy_table;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use netvm_runtime::port;
use netvm_runtime::region::HugepagePolicy;
use netvm_runtime::{IdlePolicy, Program, ProgramHandle, Switch, SwitchConfig};

const DROPS_UDP: &str = "
port src
port sink
rule udp  : udp => drop
rule rest : tcp => out sink
default         => out sink
";

const PASSES_UDP: &str = "
port src
port sink
rule udp  : udp => out sink
rule rest : tcp => out sink
default         => out sink
";

fn checked(text: &str) -> netvm_lang::Policy {
    let checked = netvm_lang::check_text("reload.nvr", text);
    checked.policy.expect("test policies check")
}

#[test]
fn a_thousand_swaps_under_load_lose_and_misclassify_nothing() {
    let (a, b) = (checked(DROPS_UDP), checked(PASSES_UDP));
    let (classifier, _) = policy_table::compile(&a).unwrap();
    let handle =
        ProgramHandle::new(Program::new(classifier, policy_table::policy_table(&a)).unwrap());
    let ports = vec![
        port::open("gen:flows=64,size=64", 0).unwrap(),
        port::open("null", 1).unwrap(),
    ];
    let config = SwitchConfig {
        idle: IdlePolicy::Busy,
        hugepages: HugepagePolicy::Off,
        buffer_count: 4096,
        ..SwitchConfig::default()
    };
    let switch = Switch::new(config, handle.clone(), ports, Vec::new()).unwrap();
    let stats = switch.stats();
    let stop = switch.stop_flag();
    let runner = std::thread::spawn(move || switch.run());

    let mut worst_swap = Duration::ZERO;
    // A compiled program of the policy that goes in next, taken back from the swap
    // before the last: every swap installs Cranelift-compiled code, but only the first
    // few compile it (tens of milliseconds each in a debug build).
    let mut spare: Option<Program> = None;
    let mut compiled = 1;
    for i in 0..1000 {
        // Let the switch forward some packets under each program.
        let before = stats.rx_total();
        let deadline = Instant::now() + Duration::from_secs(2);
        while stats.rx_total() < before + 64 && Instant::now() < deadline {
            std::hint::spin_loop();
        }
        let next = if i % 2 == 0 { &b } else { &a };
        if i < 10 {
            // The library's reload: lower → Cranelift JIT → table → swap.
            let done = policy_table::reload(&handle, next).unwrap();
            assert_eq!(done.counters_carried, 2, "both rules keep their names");
            compiled += 1;
            worst_swap = worst_swap.max(done.swap);
            continue;
        }
        let mut program = spare.take().unwrap_or_else(|| {
            compiled += 1;
            let (classifier, engine) = policy_table::compile(next).unwrap();
            assert_eq!(engine, "Cranelift JIT");
            Program::new(classifier, policy_table::policy_table(next)).unwrap()
        });
        assert_eq!(program.carry_counters_from(&handle.load()), 2);
        let start = Instant::now();
        let mut old = handle.swap(program).unwrap();
        worst_swap = worst_swap.max(start.elapsed());
        // The old program is ours once the last burst that loaded it is over.
        spare = Some(loop {
            match Arc::try_unwrap(old) {
                Ok(program) => break program,
                Err(still_shared) => {
                    old = still_shared;
                    std::thread::yield_now();
                }
            }
        });
    }
    assert_eq!(
        compiled, 12,
        "two programs compiled besides the library's ten"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let report = runner.join().unwrap().unwrap();
    let s = &report.stats;

    assert_eq!(report.buffers_returned, report.buffers, "every buffer back");
    assert_eq!(s.rx, s.tx + s.dropped, "rx = tx + drops");
    let rule = |name: &str| s.rules.iter().find(|r| r.name == name).unwrap().packets;
    let (udp, rest, default) = (rule("udp"), rule("rest"), rule("default"));
    assert_eq!(
        udp + rest + default,
        s.rx,
        "rule counters carried over every swap: each packet counted once"
    );
    let drop = |reason: &str| s.drops.iter().find(|d| d.0 == reason).map_or(0, |d| d.1);
    let policy_drops = drop("policy");
    assert_eq!(s.dropped, policy_drops, "no drops but the policy's");
    // Only `udp` under DROPS_UDP drops; everything else leaves by `sink`.
    assert!(policy_drops <= udp, "only UDP packets were dropped");
    assert_eq!(s.tx, rest + default + (udp - policy_drops));
    assert!(policy_drops > 0, "DROPS_UDP classified some packets");
    assert!(policy_drops < udp, "PASSES_UDP classified some UDP packets");
    eprintln!(
        "rx {} udp {udp} dropped {policy_drops}; slowest swap {:?}",
        s.rx, worst_swap
    );
}

/// Lines of the child's stderr, as they come.
fn lines(stderr: std::process::ChildStderr) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn wait_for(rx: &mpsc::Receiver<String>, seen: &mut Vec<String>, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            let hit = line.contains(needle);
            seen.push(line);
            if hit {
                return;
            }
        }
    }
    panic!("no `{needle}` on stderr; saw:\n{}", seen.join("\n"));
}

#[test]
fn sighup_with_a_broken_policy_keeps_the_running_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switch.nvr");
    std::fs::write(&path, DROPS_UDP).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_netvm"))
        .arg("run")
        .arg(&path)
        .args(["--bind", "src=gen:flows=16,size=64", "--bind", "sink=null"])
        .args(["--duration", "3", "--hugepages", "off", "--idle", "sleep"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = lines(child.stderr.take().unwrap());
    let mut seen = Vec::new();
    wait_for(&rx, &mut seen, "running for");
    let hup = |seen: &mut Vec<String>, text: &str, needle: &str| {
        std::fs::write(&path, text).unwrap();
        // SAFETY: kill with a valid pid of our own child and a standard signal.
        assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGHUP) }, 0);
        wait_for(&rx, seen, needle);
    };

    hup(
        &mut seen,
        &DROPS_UDP.replace("out sink\ndefault", "out nowhere\ndefault"),
        "rejected: the policy has errors",
    );
    assert!(
        seen.iter().any(|l| l.contains("nowhere")),
        "the diagnostic names the unknown port:\n{}",
        seen.join("\n")
    );
    hup(
        &mut seen,
        &DROPS_UDP.replace("port sink", "port sink\nport extra"),
        "refused",
    );
    assert!(seen.last().unwrap().contains("ports"));
    hup(&mut seen, PASSES_UDP, "reloaded");
    wait_for(&rx, &mut seen, "~ udp: udp => drop");
    wait_for(&rx, &mut seen, "-> udp => out sink");

    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exit 0:\n{stdout}\n{}",
        seen.join("\n")
    );
    assert!(stdout.contains("rx = tx + dropped holds"), "{stdout}");
}
