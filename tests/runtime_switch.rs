//! The switch through its library API: what an untrusted VM is handed, buffer
//! accounting at exit under load in both VM modes, a sleeping VM woken, and a chain of
//! VM threads delivering every packet once and in order per flow across a reload.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// Sends `per_wave` frames at once, then nothing for `gap`, `waves` times, and records
/// when each wave went out.
struct Waves {
    frame: Vec<u8>,
    per_wave: usize,
    gap: Duration,
    waves: usize,
    wave: usize,
    sent_in_wave: usize,
    next_at: Instant,
    sent_at: Arc<Mutex<Vec<Instant>>>,
}

impl Port for Waves {
    fn describe(&self) -> String {
        "waves".into()
    }

    fn rx_burst(&mut self, burst: &mut port::RxBurst<'_>) {
        if self.wave >= self.waves || Instant::now() < self.next_at {
            return;
        }
        if self.sent_in_wave == 0 {
            self.sent_at.lock().unwrap().push(Instant::now());
        }
        while self.sent_in_wave < self.per_wave && burst.push(&self.frame) {
            self.sent_in_wave += 1;
        }
        if self.sent_in_wave == self.per_wave {
            self.wave += 1;
            self.sent_in_wave = 0;
            self.next_at = Instant::now() + self.gap;
        }
    }

    fn rx_done(&self) -> bool {
        self.wave >= self.waves
    }

    fn has_tx(&self) -> bool {
        false
    }

    fn tx_burst(&mut self, _frames: &[&[u8]]) -> usize {
        0
    }
}

/// Records when each frame left.
struct Arrivals(Arc<Mutex<Vec<Instant>>>);

impl Port for Arrivals {
    fn describe(&self) -> String {
        "arrivals".into()
    }

    fn rx_burst(&mut self, _burst: &mut port::RxBurst<'_>) {}

    fn rx_done(&self) -> bool {
        true
    }

    fn has_tx(&self) -> bool {
        true
    }

    fn tx_burst(&mut self, frames: &[&[u8]]) -> usize {
        let now = Instant::now();
        self.0.lock().unwrap().extend(frames.iter().map(|_| now));
        frames.len()
    }
}

/// A VM thread with nothing to do sleeps on its ring's doorbell (it would otherwise
/// spin on a core it may share); when traffic resumes, the switch's kick wakes it at
/// once rather than when its sleep times out (`Backoff::MAX_SLEEP`, 500 ms). Each wave
/// after an idle gap must be through the VM in well under that (100 ms, for a loaded
/// CI machine; it takes well under 1 ms on a quiet one): without the kick a wave waits
/// a uniformly random part of the timeout, so four waves in a row all under 100 ms
/// would be a 1-in-600 accident.
#[test]
fn a_sleeping_vm_thread_is_woken_when_traffic_resumes() {
    const PER_WAVE: usize = 100;
    const WAVES: usize = 5;
    let sent_at = Arc::new(Mutex::new(Vec::new()));
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let ports: Vec<Box<dyn Port>> = vec![
        Box::new(Waves {
            frame: vec![0u8; 64],
            per_wave: PER_WAVE,
            gap: Duration::from_millis(200),
            waves: WAVES,
            wave: 0,
            sent_in_wave: 0,
            next_at: Instant::now(),
            sent_at: sent_at.clone(),
        }),
        Box::new(Arrivals(arrivals.clone())),
    ];
    let table = PolicyTable {
        rules: vec![],
        default: RuleAction {
            name: "default".into(),
            fate: Fate::Chain(vec![Hop::Vm(0), Hop::Out(1)]),
            mirrors: vec![],
            counters: vec![],
        },
        port_names: vec!["waves".into(), "sink".into()],
        port_bindings: vec![],
        vm_names: vec!["fw".into()],
        vm_trusted: vec![true],
        vm_on_failure: Vec::new(),
        groups: vec![],
        counter_names: vec![],
    };
    let vms: Vec<Box<dyn NetworkFunction>> = vec![netvm_runtime::vm::builtin("forward").unwrap()];
    let program = Program::new(Box::new(DefaultOnly), table).unwrap();
    let config = SwitchConfig {
        vm_mode: VmMode::Thread,
        idle: IdlePolicy::Sleep,
        hugepages: HugepagePolicy::Off,
        buffer_count: 1024,
        ring_slots: 256,
        ..SwitchConfig::default()
    };
    let switch = Switch::new(config, ProgramHandle::new(program), ports, vms).unwrap();
    let report = switch.run().unwrap();
    assert!(report.clean(), "{report:#?}");

    let sent_at = sent_at.lock().unwrap();
    let arrivals = arrivals.lock().unwrap();
    assert_eq!(arrivals.len(), PER_WAVE * WAVES, "every packet through");
    for wave in 1..WAVES {
        let through = arrivals[(wave + 1) * PER_WAVE - 1].duration_since(sent_at[wave]);
        assert!(
            through < Duration::from_millis(100),
            "wave {wave} after an idle gap took {through:?} to get through the VM"
        );
    }
}

/// Emits `count` frames over `flows` flows, each carrying its flow and its sequence
/// number within the flow (bytes 0..4 and 4..8), and swaps the program for `reload`
/// once half of them are out.
struct Sequenced {
    count: u32,
    flows: u32,
    sent: u32,
    reload: Option<(ProgramHandle, Program)>,
    old: Arc<Mutex<Option<Arc<Program>>>>,
}

impl Port for Sequenced {
    fn describe(&self) -> String {
        "sequenced".into()
    }

    fn rx_burst(&mut self, burst: &mut port::RxBurst<'_>) {
        if self.sent >= self.count / 2 {
            if let Some((handle, program)) = self.reload.take() {
                *self.old.lock().unwrap() = Some(handle.swap(program).unwrap());
            }
        }
        let mut frame = [0u8; 64];
        while self.sent < self.count {
            let (flow, seq) = (self.sent % self.flows, self.sent / self.flows);
            frame[..4].copy_from_slice(&flow.to_le_bytes());
            frame[4..8].copy_from_slice(&seq.to_le_bytes());
            if !burst.push(&frame) {
                break;
            }
            self.sent += 1;
        }
    }

    fn rx_done(&self) -> bool {
        self.sent >= self.count
    }

    fn has_tx(&self) -> bool {
        false
    }

    fn tx_burst(&mut self, _frames: &[&[u8]]) -> usize {
        0
    }
}

/// Records (flow, sequence) of every frame it transmits, in order.
struct SequenceSink(Arc<Mutex<Vec<(u32, u32)>>>);

impl Port for SequenceSink {
    fn describe(&self) -> String {
        "sequence sink".into()
    }

    fn rx_burst(&mut self, _burst: &mut port::RxBurst<'_>) {}

    fn rx_done(&self) -> bool {
        true
    }

    fn has_tx(&self) -> bool {
        true
    }

    fn tx_burst(&mut self, frames: &[&[u8]]) -> usize {
        let mut seen = self.0.lock().unwrap();
        for f in frames {
            let word = |at: usize| u32::from_le_bytes([f[at], f[at + 1], f[at + 2], f[at + 3]]);
            seen.push((word(0), word(4)));
        }
        frames.len()
    }
}

/// Every packet (the default rule) goes through three VM threads, then out port 1.
fn three_vm_chain() -> Program {
    let table = PolicyTable {
        rules: vec![],
        default: RuleAction {
            name: "default".into(),
            fate: Fate::Chain(vec![Hop::Vm(0), Hop::Vm(1), Hop::Vm(2), Hop::Out(1)]),
            mirrors: vec![],
            counters: vec![],
        },
        port_names: vec!["seq".into(), "sink".into()],
        port_bindings: vec![],
        vm_names: vec!["v0".into(), "v1".into(), "v2".into()],
        vm_trusted: vec![true, false, true],
        vm_on_failure: Vec::new(),
        groups: vec![],
        counter_names: vec![],
    };
    Program::new(Box::new(DefaultOnly), table).unwrap()
}

/// A chain of three VM threads (one untrusted, so private copies are in the path) with a
/// reload mid-stream delivers every packet exactly once and, per flow, in the order it
/// came in: packets queued in the chain when the new program lands finish the old one's
/// chain without being overtaken, duplicated or lost, and every buffer comes back.
#[test]
fn a_vm_thread_chain_delivers_every_packet_once_and_in_order_per_flow_across_a_reload() {
    const COUNT: u32 = 60_000;
    const FLOWS: u32 = 16;
    let handle = ProgramHandle::new(three_vm_chain());
    let old = Arc::new(Mutex::new(None));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let ports: Vec<Box<dyn Port>> = vec![
        Box::new(Sequenced {
            count: COUNT,
            flows: FLOWS,
            sent: 0,
            reload: Some((handle.clone(), three_vm_chain())),
            old: old.clone(),
        }),
        Box::new(SequenceSink(seen.clone())),
    ];
    let vms: Vec<Box<dyn NetworkFunction>> = (0..3)
        .map(|_| netvm_runtime::vm::builtin("forward").unwrap())
        .collect();
    let config = SwitchConfig {
        vm_mode: VmMode::Thread,
        idle: IdlePolicy::Sleep,
        hugepages: HugepagePolicy::Off,
        buffer_count: 2048,
        ring_slots: 256,
        ..SwitchConfig::default()
    };
    let switch = Switch::new(config, handle.clone(), ports, vms).unwrap();
    let report = switch.run().unwrap();
    assert!(report.clean(), "{report:#?}");

    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), COUNT as usize, "every packet out exactly once");
    let mut next = vec![0u32; FLOWS as usize];
    for &(flow, seq) in seen.iter() {
        assert!(flow < FLOWS, "a frame of no flow: {flow}");
        assert_eq!(
            seq, next[flow as usize],
            "flow {flow}: sequence {seq} where {} was due (lost, duplicated or reordered)",
            next[flow as usize]
        );
        next[flow as usize] += 1;
    }
    let old = old.lock().unwrap().clone().expect("the reload happened");
    let under_old = old.rule_totals()[0].0;
    let under_new = handle.load().rule_totals()[0].0;
    assert_eq!(under_old + under_new, u64::from(COUNT));
    assert!(
        under_old >= u64::from(COUNT / 2) && under_new > 0,
        "the reload came mid-stream: {under_old} / {under_new}"
    );
    for vm in &report.stats.vms {
        assert_eq!(vm.packets_in, u64::from(COUNT), "{}", vm.name);
        assert_eq!(vm.passed, u64::from(COUNT), "{}", vm.name);
    }
}
