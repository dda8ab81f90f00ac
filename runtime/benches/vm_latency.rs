//! What an idle VM costs and how long a packet waits at a light, paced load (issue 16):
//! for each VM configuration the switch first runs with no traffic (the CPU time of its
//! VM threads over that period, per VM, in % of a core), then at a paced rate (latency
//! from the source port's push to the sink port's transmit, p50/p99/max).
//!
//!   cargo bench -p netvm-runtime --bench vm_latency -- [PPS] [SECONDS] [ROUNDS]
//!
//! Switch on core 0, VM threads on core 1 (3 VMs: all three share it), busy polling
//! (`--idle busy`, netvm run's default), one flow of 64-byte frames, the forward VM.
//! Configurations alternate within each round; the medians over rounds are printed last.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use netvm_runtime::classify::DefaultOnly;
use netvm_runtime::policy::{Fate, Hop};
use netvm_runtime::port::{Port, RxBurst};
use netvm_runtime::region::HugepagePolicy;
use netvm_runtime::{
    vm, IdlePolicy, NetworkFunction, PolicyTable, Program, ProgramHandle, RuleAction, Switch,
    SwitchConfig, VmMode,
};

/// Idle for `idle`, then `count` frames, one every `interval`; remembers each push.
struct Paced {
    frame: Vec<u8>,
    start: Instant,
    idle: Duration,
    interval: Duration,
    count: usize,
    sent: Arc<Mutex<Vec<Instant>>>,
    next: usize,
}

impl Port for Paced {
    fn describe(&self) -> String {
        "paced".into()
    }

    fn rx_burst(&mut self, burst: &mut RxBurst<'_>) {
        let now = Instant::now();
        let since = now.saturating_duration_since(self.start + self.idle);
        let due = if now < self.start + self.idle {
            0
        } else {
            ((since.as_nanos() / self.interval.as_nanos().max(1)) as usize + 1).min(self.count)
        };
        let mut sent = self.sent.lock().unwrap();
        while self.next < due && burst.push(&self.frame) {
            sent.push(now);
            self.next += 1;
        }
    }

    fn rx_done(&self) -> bool {
        self.next >= self.count
    }

    fn has_tx(&self) -> bool {
        false
    }

    fn tx_burst(&mut self, _frames: &[&[u8]]) -> usize {
        0
    }
}

/// Records when each frame left.
struct Sink(Arc<Mutex<Vec<Instant>>>);

impl Port for Sink {
    fn describe(&self) -> String {
        "sink".into()
    }

    fn rx_burst(&mut self, _burst: &mut RxBurst<'_>) {}

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

/// CPU time (user + system, in clock ticks) of this process's threads named `netvm-vm*`.
fn vm_thread_ticks() -> u64 {
    let mut ticks = 0;
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !comm.starts_with("netvm-vm") {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // Fields after the `(comm)`: state is field 3, utime 14 and stime 15.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
        ticks += field(14).unwrap_or(0) + field(15).unwrap_or(0);
    }
    ticks
}

struct Outcome {
    idle_cpu_pct: f64,
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
}

fn run(vms: usize, mode: VmMode, pps: u64, seconds: f64) -> Outcome {
    let idle = Duration::from_secs(2);
    let count = (pps as f64 * seconds) as usize;
    let sent = Arc::new(Mutex::new(Vec::with_capacity(count)));
    let arrived = Arc::new(Mutex::new(Vec::with_capacity(count)));
    let ports: Vec<Box<dyn Port>> = vec![
        Box::new(Paced {
            frame: vec![0u8; 64],
            start: Instant::now(),
            idle,
            interval: Duration::from_nanos(1_000_000_000 / pps.max(1)),
            count,
            sent: sent.clone(),
            next: 0,
        }),
        Box::new(Sink(arrived.clone())),
    ];
    let mut chain: Vec<Hop> = (0..vms).map(Hop::Vm).collect();
    chain.push(Hop::Out(1));
    let table = PolicyTable {
        rules: vec![],
        default: RuleAction {
            name: "default".into(),
            fate: Fate::Chain(chain),
            mirrors: vec![],
            counters: vec![],
        },
        port_names: vec!["src".into(), "sink".into()],
        port_bindings: vec![],
        vm_names: (0..vms).map(|i| format!("vm{i}")).collect(),
        vm_trusted: vec![true; vms],
        vm_on_failure: Vec::new(),
        groups: vec![],
        counter_names: vec![],
    };
    let nfs: Vec<Box<dyn NetworkFunction>> =
        (0..vms).map(|_| vm::builtin("forward").unwrap()).collect();
    let program = Program::new(Box::new(DefaultOnly), table).unwrap();
    let config = SwitchConfig {
        vm_mode: mode,
        idle: IdlePolicy::Busy,
        hugepages: HugepagePolicy::Prefer,
        cores: Some(vec![0, 1]),
        ..SwitchConfig::default()
    };
    let switch = Switch::new(config, ProgramHandle::new(program), ports, nfs).unwrap();
    let running = std::thread::spawn(move || switch.run());
    // The idle period, less half a second for the VM threads to settle.
    std::thread::sleep(Duration::from_millis(500));
    let (t0, c0) = (Instant::now(), vm_thread_ticks());
    std::thread::sleep(idle - Duration::from_millis(600));
    let (t1, c1) = (Instant::now(), vm_thread_ticks());
    let report = running.join().unwrap().unwrap();
    assert!(report.clean(), "{report:#?}");
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let idle_cpu_pct = if vms == 0 || mode == VmMode::Inline {
        0.0
    } else {
        (c1 - c0) as f64 / hz / (t1 - t0).as_secs_f64() * 100.0 / vms as f64
    };
    let sent = sent.lock().unwrap();
    let arrived = arrived.lock().unwrap();
    assert_eq!(sent.len(), arrived.len(), "one flow, no drops: in order");
    let mut lat: Vec<f64> = sent
        .iter()
        .zip(arrived.iter())
        .map(|(s, a)| a.duration_since(*s).as_secs_f64() * 1e6)
        .collect();
    lat.sort_by(f64::total_cmp);
    let at = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
    Outcome {
        idle_cpu_pct,
        p50_us: at(0.5),
        p99_us: at(0.99),
        max_us: lat.last().copied().unwrap_or(0.0),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() {
    // `cargo bench` passes `--bench`; take the numbers among the arguments.
    let nums: Vec<f64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let pps = nums.first().copied().unwrap_or(20_000.0) as u64;
    let seconds = nums.get(1).copied().unwrap_or(2.0);
    let rounds = nums.get(2).copied().unwrap_or(3.0) as usize;
    let configs = [
        ("no VM", 0, VmMode::Inline),
        ("1 VM inline", 1, VmMode::Inline),
        ("1 VM thread (own core)", 1, VmMode::Thread),
        ("3 VM threads (2 cores)", 3, VmMode::Thread),
    ];
    let mut results: Vec<Vec<Outcome>> = configs.iter().map(|_| Vec::new()).collect();
    for round in 1..=rounds {
        for (c, &(name, vms, mode)) in configs.iter().enumerate() {
            let o = run(vms, mode, pps, seconds);
            println!(
                "round {round}  {name:<24} idle VM CPU {:5.1}%  latency p50 {:7.1} us  p99 {:7.1} us  max {:8.1} us",
                o.idle_cpu_pct, o.p50_us, o.p99_us, o.max_us
            );
            results[c].push(o);
        }
    }
    println!("medians over {rounds} rounds at {pps} pps:");
    for (c, &(name, _, _)) in configs.iter().enumerate() {
        let r = &results[c];
        println!(
            "median {name:<24} idle VM CPU {:5.1}%  latency p50 {:7.1} us  p99 {:7.1} us  max {:8.1} us",
            median(r.iter().map(|o| o.idle_cpu_pct).collect()),
            median(r.iter().map(|o| o.p50_us).collect()),
            median(r.iter().map(|o| o.p99_us).collect()),
            median(r.iter().map(|o| o.max_us).collect()),
        );
    }
}
