//! Several switch threads (issue 7's RSS): each polls its own share of every port, and
//! together they forward, count and chain exactly what one switch thread does; VM
//! threads serve every switch thread over their own ring pairs; a reload reaches every
//! thread; what cannot be shared out is refused with a message that says what to do.

#[path = "../src/policy_table.rs"]
#[allow(dead_code)]
mod policy_table;

use std::process::Command;

use netvm_runtime::port::{self, Port};
use netvm_runtime::region::HugepagePolicy;
use netvm_runtime::{
    vm, IdlePolicy, NetworkFunction, Program, ProgramHandle, RunReport, Switch, SwitchConfig,
    SwitchError, VmMode,
};

/// Web traffic through a trusted VM with an untrusted one mirrored, a balanced group,
/// a named counter, and the rest straight out: every path the switch has.
const POLICY: &str = "
port wan
port lan
vm fw trusted
vm spy
vm a trusted
vm b trusted
group pair = {a, b}
rule web  : tcp.dport == 80 => count web, mirror spy, chain fw -> out lan
rule dns  : udp.dport == 53 => chain balance pair by flow -> out lan
rule icmp : icmp => drop
rule rest : in_port == wan => out lan
default => drop
";

fn compile(text: &str, threads: usize) -> Program {
    let checked = netvm_lang::check_text("threads.nvr", text);
    let policy = checked.policy.expect("the test policy checks");
    let (classifier, _) = policy_table::compile(&policy).unwrap();
    Program::new(classifier, policy_table::policy_table(&policy))
        .unwrap()
        .with_shards(threads)
}

fn vms(n: usize) -> Vec<Box<dyn NetworkFunction>> {
    (0..n).map(|_| vm::builtin("counter").unwrap()).collect()
}

fn config(threads: usize) -> SwitchConfig {
    SwitchConfig {
        idle: IdlePolicy::Sleep,
        hugepages: HugepagePolicy::Off,
        vm_mode: VmMode::Thread,
        buffer_count: 2048,
        ring_slots: 256,
        switch_threads: threads,
        ..SwitchConfig::default()
    }
}

fn run(threads: usize, packets: u64) -> (RunReport, Vec<u64>) {
    let ports: Vec<Box<dyn Port>> = vec![
        port::open(&format!("gen:flows=97,count={packets},size=128"), 0).unwrap(),
        port::open("null", 1).unwrap(),
    ];
    let switch = Switch::new(
        config(threads),
        ProgramHandle::new(compile(POLICY, threads)),
        ports,
        vms(4),
    )
    .unwrap();
    let stats = switch.stats();
    let report = switch.run().unwrap();
    // What each switch thread received by itself.
    let per_thread = (0..stats.shard_count())
        .map(|k| {
            stats
                .shard(k)
                .ports
                .iter()
                .map(|p| p.rx_packets.get())
                .sum()
        })
        .collect();
    (report, per_thread)
}

#[test]
fn two_switch_threads_forward_count_and_chain_exactly_what_one_does() {
    let packets = 30_001;
    let (one, _) = run(1, packets);
    let (two, per_thread) = run(2, packets);
    for report in [&one, &two] {
        assert!(report.clean(), "{report:#?}");
        assert_eq!(report.stats.rx, packets);
        assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    }
    // Both threads did real work, and between them received every packet once.
    assert_eq!(per_thread.len(), 2);
    assert_eq!(per_thread.iter().sum::<u64>(), packets);
    assert!(
        per_thread.iter().all(|&n| n > packets / 4),
        "flows spread over the threads: {per_thread:?}"
    );
    // Same traffic, same fates: rule, named and VM counters agree with one thread.
    assert_eq!(one.stats.rules, two.stats.rules);
    assert_eq!(one.stats.counters, two.stats.counters);
    assert_eq!(one.stats.drops, two.stats.drops);
    assert_eq!(
        (one.stats.tx, one.stats.mirrored),
        (two.stats.tx, two.stats.mirrored)
    );
    let vm_in = |r: &RunReport| -> Vec<(u64, u64, u64)> {
        r.stats
            .vms
            .iter()
            .map(|v| (v.packets_in, v.mirrored_in, v.copied_bytes))
            .collect()
    };
    assert_eq!(vm_in(&one), vm_in(&two));
    assert!(two
        .stats
        .vms
        .iter()
        .all(|v| v.packets_in + v.mirrored_in > 0));
}

#[test]
fn a_reload_reaches_every_switch_thread_and_keeps_each_threads_counters() {
    let handle = ProgramHandle::new(compile(POLICY, 2));
    let ports: Vec<Box<dyn Port>> = vec![
        port::open("gen:flows=64,size=64", 0).unwrap(),
        port::open("null", 1).unwrap(),
    ];
    let switch = Switch::new(config(2), handle.clone(), ports, vms(4)).unwrap();
    let stats = switch.stats();
    let stop = switch.stop_flag();
    let runner = std::thread::spawn(move || switch.run());
    let wait_for = |n: u64| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while stats.rx_total() < n && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    };
    wait_for(5_000);
    // A program built for one thread: the swap gives it a shard per running thread,
    // and `web` keeps its counters.
    let mut next = compile(&POLICY.replace("rule icmp : icmp => drop\n", ""), 1);
    let carried = next.carry_counters_from(&handle.load());
    assert_eq!(carried, 3, "web, dns and rest keep their names");
    drop(handle.swap(next).unwrap());
    assert_eq!(handle.load().shards(), 2);
    let rx_at_swap = stats.rx_total();
    wait_for(rx_at_swap + 5_000);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let report = runner.join().unwrap().unwrap();
    assert!(report.clean(), "{report:#?}");
    let names: Vec<&str> = report.stats.rules.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["web", "dns", "rest", "default"]);
    // Every packet was counted by exactly one rule of one of the two programs; the
    // three carried rules hold their counts from before the swap as well.
    let web = report.stats.rules[0].packets;
    assert!(web > 0 && report.stats.counters[0].1 == web);
}

fn refusal(threads: usize, mode: VmMode, ports: Vec<Box<dyn Port>>, nfs: usize) -> String {
    let policy = if nfs == 0 {
        "port wan\nport lan\nrule rest : in_port == wan => out lan\ndefault => drop\n"
    } else {
        POLICY
    };
    let config = SwitchConfig {
        vm_mode: mode,
        ..config(threads)
    };
    match Switch::new(
        config,
        ProgramHandle::new(compile(policy, threads)),
        ports,
        vms(nfs),
    ) {
        Ok(_) => panic!("{threads} switch threads were accepted"),
        Err(e) => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text = format!("{text}: {s}");
                source = s.source();
            }
            assert!(matches!(
                e,
                SwitchError::Threads { .. } | SwitchError::Port { .. }
            ));
            text
        }
    }
}

#[test]
fn what_cannot_be_shared_out_between_switch_threads_is_refused_with_what_to_do() {
    let gen_and_null = || -> Vec<Box<dyn Port>> {
        vec![
            port::open("gen:flows=8,count=10", 0).unwrap(),
            port::open("null", 1).unwrap(),
        ]
    };
    let inline = refusal(2, VmMode::Inline, gen_and_null(), 4);
    assert!(inline.contains("--vm-mode thread"), "{inline}");

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.pcap");
    let pcap: Vec<Box<dyn Port>> = vec![
        port::open("gen:flows=8,count=10", 0).unwrap(),
        port::open(&format!("pcap:tx={}", out.display()), 1).unwrap(),
    ];
    let single_queue = refusal(2, VmMode::Thread, pcap, 0);
    assert!(
        single_queue.contains("port `lan`") && single_queue.contains("one queue"),
        "{single_queue}"
    );

    let zero = refusal(0, VmMode::Thread, gen_and_null(), 0);
    assert!(zero.contains("expected 1 to"), "{zero}");
}

#[test]
fn netvm_run_takes_switch_threads_and_refuses_a_bad_count() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("p.nvr");
    std::fs::write(&policy, POLICY).unwrap();
    let stats = dir.path().join("stats.json");
    let out = Command::new(env!("CARGO_BIN_EXE_netvm"))
        .arg("run")
        .arg(&policy)
        .args([
            "--bind",
            "wan=gen:flows=32,count=20000",
            "--switch-threads",
            "2",
        ])
        .args(["--idle", "sleep", "--hugepages", "off", "--control", "none"])
        .arg("--stats-json")
        .arg(&stats)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("switch 1"),
        "the placement lists both: {stderr}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    assert_eq!(json["rx"], 20_000, "{json}");

    let bad = Command::new(env!("CARGO_BIN_EXE_netvm"))
        .arg("run")
        .arg(&policy)
        .args(["--switch-threads", "lots", "--control", "none"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("--switch-threads lots"), "{stderr}");
}
