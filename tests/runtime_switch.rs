//! The switch through its library API: what an untrusted VM is handed, and buffer
//! accounting at exit under load in both VM modes.

use std::sync::{Arc, Mutex};

use netvm_runtime::classify::DefaultOnly;
use netvm_runtime::policy::{Fate, Hop};
use netvm_runtime::port::{self, Port};
use netvm_runtime::region::HugepagePolicy;
use netvm_runtime::vm::Frame;
use netvm_runtime::{
    IdlePolicy, NetworkFunction, PolicyTable, Program, ProgramHandle, RuleAction, Switch,
    SwitchConfig, Verdict, VmMode,
};

/// Records the address of every frame it is handed.
struct Spy(Arc<Mutex<Vec<usize>>>);

impl NetworkFunction for Spy {
    fn describe(&self) -> String {
        "spy".into()
    }

    fn process(&mut self, frame: &mut Frame<'_>) -> Verdict {
        if let Ok(mut seen) = self.0.lock() {
            seen.push(frame.data().as_ptr() as usize);
        }
        Verdict::Next
    }
}

fn table() -> PolicyTable {
    PolicyTable {
        rules: vec![],
        default: RuleAction {
            name: "default".into(),
            fate: Fate::Chain(vec![Hop::Vm(0), Hop::Vm(1), Hop::Out(1)]),
            mirrors: vec![0],
            counters: vec![],
        },
        port_names: vec!["gen".into(), "sink".into()],
        port_bindings: vec![],
        vm_names: vec!["untrusted".into(), "trusted".into()],
        vm_trusted: vec![false, true],
        vm_on_failure: Vec::new(),
        groups: vec![],
        counter_names: vec![],
    }
}

fn run(mode: VmMode) {
    let untrusted_seen = Arc::new(Mutex::new(Vec::new()));
    let trusted_seen = Arc::new(Mutex::new(Vec::new()));
    let ports: Vec<Box<dyn Port>> = vec![
        port::open("gen:flows=16,count=20000,size=200", 0).unwrap(),
        port::open("null", 1).unwrap(),
    ];
    let vms: Vec<Box<dyn NetworkFunction>> = vec![
        Box::new(Spy(untrusted_seen.clone())),
        Box::new(Spy(trusted_seen.clone())),
    ];
    let program = Program::new(Box::new(DefaultOnly), table()).unwrap();
    let config = SwitchConfig {
        vm_mode: mode,
        idle: IdlePolicy::Sleep,
        hugepages: HugepagePolicy::Off,
        buffer_count: 1024,
        ring_slots: 256,
        ..SwitchConfig::default()
    };
    let switch = Switch::new(config, ProgramHandle::new(program), ports, vms).unwrap();
    let shared = switch.shared_region_range();
    let private = switch
        .private_region_range(0)
        .expect("untrusted VMs get a region");
    assert!(switch.private_region_range(1).is_none());
    let report = switch.run().unwrap();

    let untrusted = untrusted_seen.lock().unwrap();
    assert_eq!(
        untrusted.len(),
        40_000,
        "chain visit plus mirror copy per packet"
    );
    for &addr in untrusted.iter() {
        assert!(
            private.contains(&addr),
            "{addr:#x} outside {private:x?} ({mode:?})"
        );
        assert!(
            !shared.contains(&addr),
            "{addr:#x} in the shared pool ({mode:?})"
        );
    }
    let trusted = trusted_seen.lock().unwrap();
    assert_eq!(trusted.len(), 20_000);
    assert!(
        trusted.iter().all(|a| shared.contains(a)),
        "trusted VMs work in place"
    );

    assert!(report.clean(), "{report:#?}");
    assert_eq!(report.stats.rx, 20_000);
    assert_eq!(report.stats.tx, 20_000);
    assert_eq!(report.buffers_returned, 1024);
}

#[test]
fn untrusted_vm_is_only_handed_addresses_in_its_private_region_inline() {
    run(VmMode::Inline);
}

#[test]
fn untrusted_vm_is_only_handed_addresses_in_its_private_region_threaded() {
    run(VmMode::Thread);
}
