//! Hot reload with packets in flight: a packet classified by the old program finishes the
//! old program's chain, even when it is still inside a VM when the new one is installed,
//! and every later hop of that chain (the next VM, the final `out` or drop) is the old
//! program's too.

use std::sync::Arc;
use std::time::{Duration, Instant};

use netvm_runtime::classify::DefaultOnly;
use netvm_runtime::policy::{Fate, Hop};
use netvm_runtime::port;
use netvm_runtime::region::HugepagePolicy;
use netvm_runtime::{
    vm, IdlePolicy, PolicyTable, Program, ProgramHandle, RuleAction, Switch, SwitchConfig, VmMode,
};

/// Every packet goes through VM 0, then `last`.
fn program(last: Hop) -> Program {
    chain_program(vec![Hop::Vm(0), last], &["gen", "sink"], &["slow"])
}

/// Every packet (the default rule) follows `chain`.
fn chain_program(chain: Vec<Hop>, ports: &[&str], vms: &[&str]) -> Program {
    let table = PolicyTable {
        rules: vec![],
        default: RuleAction {
            name: "default".into(),
            fate: Fate::Chain(chain),
            mirrors: vec![],
            counters: vec![],
        },
        port_names: ports.iter().map(|p| p.to_string()).collect(),
        port_bindings: vec![],
        vm_names: vms.iter().map(|v| v.to_string()).collect(),
        vm_trusted: vec![true; vms.len()],
        vm_on_failure: vec![],
        groups: vec![],
        counter_names: vec![],
    };
    Program::new(Box::new(DefaultOnly), table).unwrap()
}

#[test]
fn packets_in_a_vm_during_a_reload_finish_the_old_programs_chain() {
    let handle = ProgramHandle::new(program(Hop::Out(1)));
    let config = SwitchConfig {
        vm_mode: VmMode::Thread,
        idle: IdlePolicy::Sleep,
        hugepages: HugepagePolicy::Off,
        buffer_count: 2048,
        ring_slots: 256,
        ..SwitchConfig::default()
    };
    let ports = vec![
        port::open("gen:flows=8,size=64,count=3000", 0).unwrap(),
        port::open("null", 1).unwrap(),
    ];
    // Each packet stays 1 ms in the VM, so a few hundred are inside it at any moment.
    let vms = vec![vm::builtin("delay:us=1000").unwrap()];
    let switch = Switch::new(config, handle.clone(), ports, vms).unwrap();
    let stats = switch.stats();
    let runner = std::thread::spawn(move || switch.run().unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    while stats.rx_total() < 500 {
        assert!(Instant::now() < deadline, "the switch did not start");
        std::thread::sleep(Duration::from_micros(200));
    }
    // From now on: the same VM, then drop.
    let old = handle.swap(program(Hop::Drop)).unwrap();
    let report = runner.join().unwrap();

    assert!(report.clean(), "{report:?}");
    let under_old = old.rule_totals()[0].0;
    let under_new = handle.load().rule_totals()[0].0;
    assert_eq!(under_old + under_new, 3000);
    assert!(
        under_old >= 500 && under_new > 0,
        "{under_old} / {under_new}"
    );
    // Exactly the packets the old program classified left by port 1, in-flight ones
    // included; every packet of the new one was dropped by its chain.
    assert_eq!(report.stats.tx, under_old, "{:?}", report.stats);
    let policy_drops = report
        .stats
        .drops
        .iter()
        .find(|(r, _)| *r == "policy")
        .unwrap()
        .1;
    assert_eq!(policy_drops, under_new);
}

#[test]
fn every_hop_of_a_two_vm_chain_follows_the_program_that_classified_the_packet() {
    const PORTS: [&str; 3] = ["gen", "old_sink", "new_sink"];
    const VMS: [&str; 2] = ["first", "second"];
    // The same rule, before and after: the VMs in the other order, another port.
    let before = || chain_program(vec![Hop::Vm(0), Hop::Vm(1), Hop::Out(1)], &PORTS, &VMS);
    let after = || chain_program(vec![Hop::Vm(1), Hop::Vm(0), Hop::Out(2)], &PORTS, &VMS);
    let handle = ProgramHandle::new(before());
    let config = SwitchConfig {
        vm_mode: VmMode::Thread,
        idle: IdlePolicy::Sleep,
        hugepages: HugepagePolicy::Off,
        buffer_count: 2048,
        ring_slots: 256,
        ..SwitchConfig::default()
    };
    let ports = vec![
        port::open("gen:flows=8,size=64,count=3000", 0).unwrap(),
        port::open("null", 1).unwrap(),
        port::open("null", 2).unwrap(),
    ];
    // Half a millisecond in each VM: at the reload, hundreds of packets wait in the
    // first VM's ring with their second VM hop still ahead of them.
    let vms = vec![
        vm::builtin("delay:us=500").unwrap(),
        vm::builtin("delay:us=500").unwrap(),
    ];
    let switch = Switch::new(config, handle.clone(), ports, vms).unwrap();
    let stats = switch.stats();
    let runner = std::thread::spawn(move || switch.run().unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    while stats.rx_total() < 500 {
        assert!(Instant::now() < deadline, "the switch did not start");
        std::thread::sleep(Duration::from_micros(200));
    }
    let old = handle.swap(after()).unwrap();
    let report = runner.join().unwrap();

    assert!(
        report.clean(),
        "rx = tx + drops, every buffer back: {report:?}"
    );
    let under_old = old.rule_totals()[0].0;
    let under_new = handle.load().rule_totals()[0].0;
    assert_eq!(under_old + under_new, 3000);
    assert!(
        under_old >= 500 && under_new > 0,
        "{under_old} / {under_new}"
    );
    let s = &report.stats;
    assert_eq!(s.dropped, 0, "{s:?}");
    // Each packet left by the port of the program that classified it, in-flight ones
    // included (a packet that took its second VM hop under the new program would have
    // left by the new program's port).
    assert_eq!(
        (s.ports[1].tx_packets, s.ports[2].tx_packets),
        (under_old, under_new),
        "{s:?}"
    );
    // Both chains visit each VM once.
    assert_eq!(
        (s.vms[0].packets_in, s.vms[1].packets_in),
        (3000, 3000),
        "{s:?}"
    );
    assert_eq!(
        Arc::strong_count(&old),
        1,
        "the switch let go of the old program"
    );
}
