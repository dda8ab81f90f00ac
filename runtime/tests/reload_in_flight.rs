//! Hot reload with packets in flight: a packet classified by the old program finishes the
//! old program's chain, even when it is still inside a VM when the new one is installed.

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
    let table = PolicyTable {
        rules: vec![],
        default: RuleAction {
            name: "default".into(),
            fate: Fate::Chain(vec![Hop::Vm(0), last]),
            mirrors: vec![],
            counters: vec![],
        },
        port_names: vec!["gen".into(), "sink".into()],
        vm_names: vec!["slow".into()],
        vm_trusted: vec![true],
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
