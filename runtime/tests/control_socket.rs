//! The control socket against a live switch, in one process: hostile byte streams never
//! crash it or stop it answering (property test), an attach hands out exactly one
//! region descriptor, and a VM that is down is dropped or bypassed as its `on_failure`
//! says.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use netvm_runtime::classify::DefaultOnly;
use netvm_runtime::control::{AttachReply, ControlClient, ControlServer};
use netvm_runtime::policy::{Fate, Hop};
use netvm_runtime::port;
use netvm_runtime::region::HugepagePolicy;
use netvm_runtime::{
    vm, IdlePolicy, OnFailure, PolicyTable, Program, ProgramHandle, RuleAction, RunReport,
    SharedRegion, Switch, SwitchConfig,
};
use proptest::prelude::*;
use serde_json::json;

fn table(on_failure: OnFailure) -> PolicyTable {
    PolicyTable {
        rules: vec![],
        default: RuleAction {
            name: "default".into(),
            fate: Fate::Chain(vec![Hop::Vm(0), Hop::Out(1)]),
            mirrors: vec![],
            counters: vec![],
        },
        port_names: vec!["gen".into(), "sink".into()],
        port_bindings: vec![],
        vm_names: vec!["fw".into()],
        vm_trusted: vec![true],
        vm_on_failure: vec![on_failure],
        groups: vec![],
        counter_names: vec![],
    }
}

struct Running {
    server: Option<ControlServer>,
    path: PathBuf,
    runner: Option<JoinHandle<RunReport>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    _dir: tempfile::TempDir,
}

impl Running {
    fn finish(mut self) -> RunReport {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        let report = self.runner.take().unwrap().join().unwrap();
        drop(self.server.take());
        report
    }
}

fn start(on_failure: OnFailure, gen: &str) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.sock");
    let program = Program::new(Box::new(DefaultOnly), table(on_failure)).unwrap();
    let ports = vec![port::open(gen, 0).unwrap(), port::open("null", 1).unwrap()];
    let config = SwitchConfig {
        idle: IdlePolicy::Sleep,
        hugepages: HugepagePolicy::Off,
        buffer_count: 1024,
        ring_slots: 256,
        duration: Some(Duration::from_secs(120)),
        ..SwitchConfig::default()
    };
    let switch = Switch::new(
        config,
        ProgramHandle::new(program),
        ports,
        vec![vm::builtin("process").unwrap()],
    )
    .unwrap();
    let server = ControlServer::start(&path, Arc::new(switch.control_state()), None).unwrap();
    let stop = switch.stop_flag();
    let runner = std::thread::spawn(move || switch.run().unwrap());
    Running {
        server: Some(server),
        path,
        runner: Some(runner),
        stop,
        _dir: dir,
    }
}

fn status(path: &Path) -> serde_json::Value {
    ControlClient::connect(path)
        .expect("a well-behaved client still gets in")
        .request("status", json!({}))
        .expect("status")
}

#[test]
fn hostile_byte_streams_never_stop_the_server() {
    let running = start(OnFailure::Drop, "gen:flows=4,size=64");
    let config = ProptestConfig {
        cases: 48,
        ..ProptestConfig::default()
    };
    let path = running.path.clone();
    proptest!(config, |(messages in prop::collection::vec(
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..300),
            Just(br#"{"op":"hello","protocol":1,"layout":2}"#.to_vec()),
            Just(br#"{"op":"attach","vm":"fw"}"#.to_vec()),
            Just(br#"{"op":"status"}"#.to_vec()),
            "[ -~]{0,80}".prop_map(|s| s.into_bytes()),
        ],
        0..6,
    ), newline in any::<bool>())| {
        let mut stream = UnixStream::connect(&path).unwrap();
        stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        for m in &messages {
            let _ = stream.write_all(m);
            if newline {
                let _ = stream.write_all(b"\n");
            }
        }
        let mut sink = Vec::new();
        let _ = stream.read_to_end(&mut sink);
        drop(stream);
        // Whatever that was, the switch still answers a proper client.
        let s = status(&path);
        prop_assert!(s["vms"].is_array());
    });
    let report = running.finish();
    assert!(report.clean(), "{report:?}");
}

/// Attach as the VM by hand: the reply, its one descriptor, the region it maps.
fn attach(path: &Path) -> (ControlClient, AttachReply, Arc<SharedRegion>) {
    let mut client = ControlClient::connect(path).unwrap();
    let (reply, mut fds) = client
        .request_with_fds("attach", json!({"vm": "fw"}))
        .unwrap();
    assert_eq!(fds.len(), 1, "exactly one region descriptor");
    let reply: AttachReply = serde_json::from_value(reply).unwrap();
    let region = SharedRegion::from_fd(fds.remove(0)).unwrap();
    (client, reply, region)
}

#[test]
fn a_down_vm_is_dropped_or_bypassed_as_on_failure_says() {
    for on_failure in [OnFailure::Drop, OnFailure::Bypass] {
        let running = start(on_failure, "gen:flows=4,size=64,count=5000");
        std::thread::sleep(Duration::from_millis(300));
        let report = running.finish();
        let s = &report.stats;
        assert!(report.clean(), "{report:?}");
        assert_eq!(s.rx, 5000);
        let vm_down = s.drops.iter().find(|(r, _)| *r == "vm_down").unwrap().1;
        match on_failure {
            OnFailure::Drop => assert_eq!((vm_down, s.tx), (5000, 0)),
            OnFailure::Bypass => assert_eq!((vm_down, s.tx), (0, 5000)),
        }
    }
}

#[test]
fn an_attached_vm_is_up_and_a_hang_up_takes_it_down() {
    let running = start(OnFailure::Drop, "gen:flows=4,size=64");
    let (client, reply, region) = attach(&running.path);
    assert!(reply.trusted);
    assert_eq!(reply.region, "shared");
    assert!(region.ring(reply.ring_in).is_ok() && region.ring(reply.ring_out).is_ok());
    let s = status(&running.path);
    assert_eq!(s["vms"][0]["state"], "up");
    assert_eq!(s["vms"][0]["pid"], std::process::id());
    // A second claim while the first holds it is refused.
    let mut second = ControlClient::connect(&running.path).unwrap();
    let e = second
        .request("attach", json!({"vm": "fw"}))
        .unwrap_err()
        .to_string();
    assert!(e.contains("already attached"), "{e}");
    // We never answer: packets pile up in the ring, then overflow (vm_full), and when we
    // hang up the switch takes back what we held.
    drop(client);
    drop(region);
    let mut state = String::new();
    for _ in 0..100 {
        let s = status(&running.path);
        state = s["vms"][0]["state"].as_str().unwrap().to_string();
        if state == "down" {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(state, "down");
    let report = running.finish();
    assert!(report.clean(), "{report:?}");
    let lost = report
        .stats
        .drops
        .iter()
        .find(|(r, _)| *r == "vm_lost")
        .unwrap()
        .1;
    assert!(lost > 0, "the packets we held are counted lost");
}
