//! Hot reload (issue 6): the switch keeps forwarding at full speed while its program is
//! swapped a thousand times between two JIT-compiled policies that send the same traffic
//! through different VM chains to different ports, and every packet is accounted for one
//! by one: it left once, by the port, through the VMs and with the bytes that one of the
//! two policies prescribes for it (or was dropped where one of them drops it), wholly by
//! that one; `netvm run` re-reads its policy on SIGHUP and keeps the running one when the
//! new one has errors or changes the ports.

#[path = "../src/policy_table.rs"]
#[allow(dead_code)]
mod policy_table;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use netvm_packet::{BaseProto, Field, PacketSpec};
use netvm_runtime::port::{Port, RxBurst};
use netvm_runtime::region::HugepagePolicy;
use netvm_runtime::vm::{self, Frame};
use netvm_runtime::{
    IdlePolicy, NetworkFunction, Program, ProgramHandle, Switch, SwitchConfig, Verdict, VmMode,
};

/// The SIGHUP test's policies: one drops UDP, one passes it.
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

/// Policy A: UDP through `s1` then `s2` out `x`, TCP through `mark` out `y`, the rest
/// dropped.
const POLICY_A: &str = "
port src
port x
port y
vm s1 trusted
vm s2
vm mark trusted
rule udp : udp => chain s1 -> s2 -> out x
rule tcp : tcp => chain mark -> out y
default        => drop
";

/// Policy B, the same rules with other fates: UDP through `s2`, `mark`, `s1` out `y`,
/// TCP dropped, the rest straight out `x`.
const POLICY_B: &str = "
port src
port x
port y
vm s1 trusted
vm s2
vm mark trusted
rule udp : udp => chain s2 -> mark -> s1 -> out y
rule tcp : tcp => drop
default        => out x
";

/// Port and VM indices, in the policies' declaration order.
const X: usize = 1;
const Y: usize = 2;
const S1: usize = 0;
const S2: usize = 1;
const MARK: usize = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Udp,
    Tcp,
    Icmp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Policy {
    A,
    B,
}

/// What `policy` prescribes for a packet of `kind`, as POLICY_A and POLICY_B say it: the
/// VMs it visits in order, and the port it leaves by (`None`: dropped).
fn prescribed(policy: Policy, kind: Kind) -> (&'static [usize], Option<usize>) {
    match (policy, kind) {
        (Policy::A, Kind::Udp) => (&[S1, S2], Some(X)),
        (Policy::A, Kind::Tcp) => (&[MARK], Some(Y)),
        (Policy::A, Kind::Icmp) => (&[], None),
        (Policy::B, Kind::Udp) => (&[S2, MARK, S1], Some(Y)),
        (Policy::B, Kind::Tcp) => (&[], None),
        (Policy::B, Kind::Icmp) => (&[], Some(X)),
    }
}

/// Every frame is this long; its last [`TAIL_BYTES`] are payload the test owns: the
/// sequence number the source gave it (8 bytes, big-endian), then its trace: how many
/// [`Stamp`] VMs it visited (1 byte) and their ids in visiting order (7 bytes).
const FRAME_BYTES: usize = 96;
const TAIL_BYTES: usize = 16;
const TRACE_BYTES: usize = 8;

fn seq_of(frame: &[u8]) -> u64 {
    let at = frame.len() - TAIL_BYTES;
    u64::from_be_bytes(frame[at..at + 8].try_into().unwrap())
}

/// A VM that appends its id to the packet's trace, so the chain a packet took can be
/// read off the packet that leaves.
struct Stamp(u8);

impl NetworkFunction for Stamp {
    fn describe(&self) -> String {
        format!("stamp:{}", self.0)
    }

    fn writes(&self) -> bool {
        true
    }

    fn process(&mut self, frame: &mut Frame<'_>) -> Verdict {
        let Some(data) = frame.data_mut().filter(|d| d.len() >= TAIL_BYTES) else {
            return Verdict::Drop;
        };
        let trace = data.len() - TRACE_BYTES;
        let hops = usize::from(data[trace]);
        if hops + 1 >= TRACE_BYTES {
            return Verdict::Drop;
        }
        data[trace + 1 + hops] = self.0;
        data[trace] += 1;
        Verdict::Next
    }
}

/// VM `vm`'s function: `s1` and `s2` stamp the trace, `mark` is the built-in DSCP
/// rewrite (which also fixes the IPv4 checksum).
fn vm_function(vm: usize) -> Box<dyn NetworkFunction> {
    match vm {
        S1 => Box::new(Stamp(1)),
        S2 => Box::new(Stamp(2)),
        _ => vm::builtin("rewrite:dscp=46").unwrap(),
    }
}

/// The source's frames, sent round robin: UDP, TCP and ICMP flows, each [`FRAME_BYTES`]
/// long with a zeroed tail.
fn templates() -> Vec<(Kind, Vec<u8>)> {
    let kinds = [
        Kind::Udp,
        Kind::Tcp,
        Kind::Udp,
        Kind::Icmp,
        Kind::Tcp,
        Kind::Udp,
        Kind::Tcp,
    ];
    kinds
        .iter()
        .enumerate()
        .map(|(flow, &kind)| {
            let base = match kind {
                Kind::Udp => BaseProto::Udp,
                Kind::Tcp => BaseProto::Tcp,
                Kind::Icmp => BaseProto::Icmp,
            };
            let mut spec = PacketSpec::new(base);
            spec.set(Field::IpSrc, 0x0a00_0001 + flow as u128);
            if kind != Kind::Icmp {
                spec.set(Field::L4Dport, 1000 + flow as u128);
            }
            let headers = spec.build().unwrap().len();
            spec.set(Field::PayloadLen, (FRAME_BYTES - headers) as u128);
            let frame = spec.build().unwrap();
            assert_eq!(frame.len(), FRAME_BYTES);
            (kind, frame)
        })
        .collect()
}

/// The port a packet leaves by and the frame that leaves; `None`: dropped.
type Fate = Option<(usize, Vec<u8>)>;

/// What `policy` does with `template`: its chain's VM functions run here, by hand.
fn expected(policy: Policy, kind: Kind, template: &[u8]) -> Fate {
    let (vms, port) = prescribed(policy, kind);
    let mut frame = template.to_vec();
    for &v in vms {
        let verdict = vm_function(v).process(&mut Frame::exclusive(&mut frame));
        assert_eq!(verdict, Verdict::Next);
    }
    port.map(|p| (p, frame))
}

/// The traffic source: the templates round robin, as fast as the switch takes them, each
/// frame numbered, until `done` is raised. `sent` is how many the switch took.
struct Numbered {
    frames: Vec<Vec<u8>>,
    next: u64,
    sent: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
}

impl Port for Numbered {
    fn describe(&self) -> String {
        "numbered".into()
    }

    fn rx_burst(&mut self, burst: &mut RxBurst<'_>) {
        while !self.rx_done() {
            let flow = (self.next % self.frames.len() as u64) as usize;
            let frame = &mut self.frames[flow];
            let at = frame.len() - TAIL_BYTES;
            frame[at..at + 8].copy_from_slice(&self.next.to_be_bytes());
            if !burst.push(frame) {
                break;
            }
            self.next += 1;
        }
        self.sent.store(self.next, Ordering::Release);
    }

    fn rx_done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    fn has_tx(&self) -> bool {
        false
    }

    fn tx_burst(&mut self, _frames: &[&[u8]]) -> usize {
        0
    }
}

/// What a [`Capture`] port sent: the frames of [`FRAME_BYTES`] back to back, any other
/// frame on its own.
#[derive(Default)]
struct Captured {
    frames: Vec<u8>,
    odd: Vec<Vec<u8>>,
}

/// An output port that keeps every frame it sends.
struct Capture(Arc<Mutex<Captured>>);

impl Port for Capture {
    fn describe(&self) -> String {
        "capture".into()
    }

    fn rx_burst(&mut self, _burst: &mut RxBurst<'_>) {}

    fn rx_done(&self) -> bool {
        true
    }

    fn has_tx(&self) -> bool {
        true
    }

    fn tx_burst(&mut self, frames: &[&[u8]]) -> usize {
        let mut captured = self.0.lock().unwrap();
        for frame in frames {
            if frame.len() == FRAME_BYTES {
                captured.frames.extend_from_slice(frame);
            } else {
                captured.odd.push(frame.to_vec());
            }
        }
        frames.len()
    }
}

fn checked(text: &str) -> netvm_lang::Policy {
    let checked = netvm_lang::check_text("reload.nvr", text);
    checked.policy.expect("test policies check")
}

/// What the test can tell of a fate, for messages: the port, the stamps and the DSCP
/// (`None`: dropped).
fn describe(outcome: Option<(usize, &[u8])>) -> String {
    let Some((port, frame)) = outcome else {
        return "drops it".into();
    };
    let trace = &frame[frame.len() - TRACE_BYTES..];
    let hops = usize::from(trace[0]).min(TRACE_BYTES - 1);
    let dscp = netvm_packet::Decoded::new(frame)
        .field(Field::IpDscp)
        .map_or("none".into(), |d| d.to_string());
    format!("port {port}, stamps {:?}, dscp {dscp}", &trace[1..1 + hops])
}

#[test]
fn a_thousand_swaps_under_load_send_every_packet_wholly_by_one_policy() {
    const SWAPS: usize = 1000;
    let (a, b) = (checked(POLICY_A), checked(POLICY_B));
    let (classifier, _) = policy_table::compile(&a).unwrap();
    let handle =
        ProgramHandle::new(Program::new(classifier, policy_table::policy_table(&a)).unwrap());
    let templates = templates();
    let sent = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let captures: [Arc<Mutex<Captured>>; 2] = Default::default();
    let ports: Vec<Box<dyn Port>> = vec![
        Box::new(Numbered {
            frames: templates.iter().map(|(_, f)| f.clone()).collect(),
            next: 0,
            sent: sent.clone(),
            done: done.clone(),
        }),
        Box::new(Capture(captures[0].clone())),
        Box::new(Capture(captures[1].clone())),
    ];
    // VMs on their own threads, so that at a swap packets wait in their rings with the
    // rest of the old program's chain still ahead of them.
    let config = SwitchConfig {
        vm_mode: VmMode::Thread,
        idle: IdlePolicy::Sleep,
        hugepages: HugepagePolicy::Off,
        buffer_count: 4096,
        ..SwitchConfig::default()
    };
    let burst_len = config.burst_len as u64;
    let vms = (0..3).map(vm_function).collect();
    let switch = Switch::new(config, handle.clone(), ports, vms).unwrap();
    let stats = switch.stats();
    let started = Instant::now();
    let runner = std::thread::spawn(move || switch.run());

    // Wait until the switch has received two bursts more: the switch thread loads the
    // program once per burst, before receiving, and counts the burst after classifying
    // it, so at most one of them was classified by a program installed before we got
    // here and at least one packet by the one installed now.
    let forward_some = || {
        let before = stats.rx_total();
        let deadline = Instant::now() + Duration::from_secs(20);
        while stats.rx_total() < before + 2 * burst_len {
            assert!(Instant::now() < deadline, "the switch stopped forwarding");
            std::thread::yield_now();
        }
    };
    // Packets inside VMs now (approximately: the counters are read one by one).
    let inside_vms = || -> u64 {
        (0..3)
            .map(|v| {
                let t = stats.vm(v);
                t.packets_in.saturating_sub(t.passed + t.dropped)
            })
            .sum()
    };

    // How long each swap took: the moment the data path moves over.
    let mut swap_times = Vec::with_capacity(SWAPS);
    let mut swaps_with_packets_inside = 0;
    // A compiled program of the policy that goes in next, taken back from the swap
    // before the last: every swap installs Cranelift-compiled code, but only the first
    // few compile it (tens of milliseconds each in a debug build).
    let mut spare: Option<Program> = None;
    let mut compiled = 1;
    for i in 0..SWAPS {
        forward_some();
        let next = if i % 2 == 0 { &b } else { &a };
        if inside_vms() > 0 {
            swaps_with_packets_inside += 1;
        }
        if i < 10 {
            // The library's reload: lower → Cranelift JIT → table → swap.
            let done = policy_table::reload(&handle, next).unwrap();
            assert_eq!(done.counters_carried, 2, "both rules keep their names");
            compiled += 1;
            swap_times.push(done.swap);
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
        swap_times.push(start.elapsed());
        // The old program is ours once the last burst that loaded it is over and the
        // last packet it classified has left the VMs.
        let deadline = Instant::now() + Duration::from_secs(20);
        spare = Some(loop {
            match Arc::try_unwrap(old) {
                Ok(program) => break program,
                Err(still_shared) => {
                    assert!(Instant::now() < deadline, "the switch kept the old program");
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
    forward_some();
    done.store(true, Ordering::Release);
    let report = runner.join().unwrap().unwrap();
    let elapsed = started.elapsed();
    let s = &report.stats;
    let sent = sent.load(Ordering::Acquire);

    assert!(
        report.clean(),
        "rx = tx + drops, every buffer back in every pool: {report:?}"
    );
    assert_eq!(
        s.rx, sent,
        "the switch received every frame the source sent"
    );
    let kind_of = |seq: u64| templates[(seq % templates.len() as u64) as usize].0;
    // Per template, what each policy sends out: the frame (with sequence number 0) and
    // the port.
    let outcomes: Vec<[Fate; 2]> = templates
        .iter()
        .map(|(kind, frame)| {
            let outcome = [
                expected(Policy::A, *kind, frame),
                expected(Policy::B, *kind, frame),
            ];
            assert_ne!(outcome[0], outcome[1], "A and B tell {kind:?} apart");
            outcome
        })
        .collect();

    // Which policy each packet's fate was, in the order the source sent them.
    let mut by: Vec<Option<Policy>> = vec![None; sent as usize];
    let mut wrong: Vec<String> = Vec::new();
    let mut tx = 0;
    for (port, capture) in [(X, &captures[0]), (Y, &captures[1])] {
        let capture = capture.lock().unwrap();
        for frame in &capture.odd {
            wrong.push(format!("a {}-byte frame left by port {port}", frame.len()));
        }
        for frame in capture.frames.chunks_exact(FRAME_BYTES) {
            tx += 1;
            let seq = seq_of(frame);
            let Some(slot) = by.get_mut(seq as usize) else {
                wrong.push(format!("packet {seq}, never sent, left by port {port}"));
                continue;
            };
            if slot.is_some() {
                wrong.push(format!("packet {seq} left twice (again by port {port})"));
                continue;
            }
            let mut unnumbered = frame.to_vec();
            let at = FRAME_BYTES - TAIL_BYTES;
            unnumbered[at..at + 8].fill(0);
            let outcome = &outcomes[(seq % templates.len() as u64) as usize];
            let mine = Some((port, unnumbered));
            *slot = [Policy::A, Policy::B]
                .into_iter()
                .zip(outcome)
                .find(|(_, o)| **o == mine)
                .map(|(p, _)| p);
            if slot.is_none() {
                let either = |o: &Fate| describe(o.as_ref().map(|(p, f)| (*p, f.as_slice())));
                wrong.push(format!(
                    "packet {seq} ({:?}) left by {}, as neither policy sends it \
                     (A: {}; B: {}); bytes {}",
                    kind_of(seq),
                    describe(Some((port, frame))),
                    either(&outcome[0]),
                    either(&outcome[1]),
                    frame.iter().map(|b| format!("{b:02x}")).collect::<String>(),
                ));
            }
        }
    }
    // A packet that did not leave was dropped: by the policy that drops its kind.
    let mut dropped = 0;
    for (seq, slot) in by.iter_mut().enumerate() {
        if slot.is_none() {
            dropped += 1;
            let kind = kind_of(seq as u64);
            *slot = [Policy::A, Policy::B]
                .into_iter()
                .find(|&p| prescribed(p, kind).1.is_none());
            if slot.is_none() {
                wrong.push(format!(
                    "packet {seq} ({kind:?}) never left, and neither policy drops it"
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {sent} packets lost or misclassified; the first:\n{}",
        wrong.len(),
        wrong[..wrong.len().min(10)].join("\n")
    );

    // The one switch thread classifies packets in the order the source sent them, and
    // every installed program classified some (`forward_some`): so the policies' runs
    // alternate A, B, A, ... once per swap, no packet of one run taken by the other
    // policy (a packet that left early, late, or by half of each chain would break a
    // run in two).
    let policies: Vec<Policy> = by.iter().map(|p| p.unwrap()).collect();
    let runs = 1 + policies.windows(2).filter(|w| w[0] != w[1]).count();
    assert_eq!(
        (runs, policies[0], policies[policies.len() - 1]),
        (SWAPS + 1, Policy::A, Policy::A),
        "one run of packets per installed program"
    );

    // The switch's own counts agree with the packets.
    assert_eq!(s.tx, tx, "{s:?}");
    assert_eq!(s.dropped, dropped, "{s:?}");
    let drop = |reason: &str| s.drops.iter().find(|d| d.0 == reason).map_or(0, |d| d.1);
    assert_eq!(drop("policy"), dropped, "no drops but the policies': {s:?}");
    let count = |f: &dyn Fn(u64, Policy) -> bool| {
        (0..sent)
            .filter(|&seq| f(seq, policies[seq as usize]))
            .count() as u64
    };
    let rule = |name: &str| s.rules.iter().find(|r| r.name == name).unwrap().packets;
    for (name, kind) in [
        ("udp", Kind::Udp),
        ("tcp", Kind::Tcp),
        ("default", Kind::Icmp),
    ] {
        assert_eq!(
            rule(name),
            count(&|seq, _| kind_of(seq) == kind),
            "rule `{name}` counted each of its packets once, over every swap"
        );
        for policy in [Policy::A, Policy::B] {
            assert!(
                count(&|seq, p| kind_of(seq) == kind && p == policy) > 0,
                "policy {policy:?} classified some {kind:?} packets"
            );
        }
    }
    let visits = |vm: usize| count(&|seq, p| prescribed(p, kind_of(seq)).0.contains(&vm));
    for vm in [S1, S2, MARK] {
        assert_eq!(s.vms[vm].packets_in, visits(vm), "VM {vm}: {s:?}");
    }
    assert!(
        swaps_with_packets_inside > 0,
        "some swaps found packets inside VMs"
    );
    let under_b = count(&|_, p| p == Policy::B);
    swap_times.sort();
    eprintln!(
        "{SWAPS} swaps in {elapsed:.1?}: {sent} packets, {} by A and {under_b} by B, \
         {dropped} dropped as prescribed; {swaps_with_packets_inside} swaps with packets \
         inside VMs; swap median {:?}, slowest {:?}",
        sent - under_b,
        swap_times[SWAPS / 2],
        swap_times[SWAPS - 1],
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
