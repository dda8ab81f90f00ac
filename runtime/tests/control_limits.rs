//! The control socket's connection limits under clients that hold slots: a hello sent a
//! byte at a time is cut at the handshake's deadline, a quiet session is closed (and its
//! client reconnects on its next request), idle sessions and slow hellos make way for a
//! new client, and the log says who held the slots.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use netvm_runtime::classify::DefaultOnly;
use netvm_runtime::control::{ControlClient, ControlServer, ControlState, Limits};
use netvm_runtime::policy::Fate;
use netvm_runtime::port;
use netvm_runtime::region::HugepagePolicy;
use netvm_runtime::{PolicyTable, Program, ProgramHandle, RuleAction, Switch, SwitchConfig};
use serde_json::json;

struct Server {
    _server: ControlServer,
    path: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

fn serve(limits: Limits) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.sock");
    let table = PolicyTable {
        rules: vec![],
        default: RuleAction {
            name: "default".into(),
            fate: Fate::Drop,
            mirrors: vec![],
            counters: vec![],
        },
        port_names: vec!["p".into()],
        port_bindings: vec![],
        vm_names: vec![],
        vm_trusted: vec![],
        vm_on_failure: vec![],
        groups: vec![],
        counter_names: vec![],
    };
    let program = Program::new(Box::new(DefaultOnly), table).unwrap();
    let config = SwitchConfig {
        hugepages: HugepagePolicy::Off,
        buffer_count: 256,
        ..SwitchConfig::default()
    };
    let switch = Switch::new(
        config,
        ProgramHandle::new(program),
        vec![port::open("null", 0).unwrap()],
        vec![],
    )
    .unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut state: ControlState = switch.control_state();
    let sink = log.clone();
    state.log = Some(Arc::new(move |line: &str| {
        sink.lock().unwrap().push(line.to_string())
    }));
    let server = ControlServer::start_with(&path, Arc::new(state), None, limits).unwrap();
    Server {
        _server: server,
        path,
        log,
        _dir: dir,
    }
}

/// Reads until the switch hangs up; how long that took.
fn time_to_hang_up(stream: &mut UnixStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut buf = [0u8; 1024];
    while start.elapsed() < limit {
        match stream.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            _ => continue,
        }
    }
    None
}

#[test]
fn a_hello_trickled_a_byte_at_a_time_is_cut_at_the_handshake_deadline() {
    let limits = Limits {
        hello_timeout: Duration::from_millis(600),
        ..Limits::default()
    };
    let server = serve(limits);
    let mut stream = UnixStream::connect(&server.path).unwrap();
    let hello = br#"{"op":"hello","protocol":2,"layout":2,"pid":1}"#;
    let start = Instant::now();
    let writer = {
        let mut stream = stream.try_clone().unwrap();
        std::thread::spawn(move || {
            for b in hello {
                if stream.write_all(&[*b]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let took = time_to_hang_up(&mut stream, Duration::from_secs(4)).map(|_| start.elapsed());
    let _ = writer.join();
    let took = took.expect("the switch hung up on the slow hello");
    assert!(took < Duration::from_millis(1500), "after {took:?}");
    let log = server.log.lock().unwrap().join("\n");
    assert!(log.contains("no hello within 0.6 s"), "{log}");
}

#[test]
fn a_quiet_session_is_closed_and_its_client_reconnects_on_the_next_request() {
    let limits = Limits {
        idle_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let server = serve(limits);
    let mut client = ControlClient::connect(&server.path).unwrap();
    let mut raw = client.connection().stream().try_clone().unwrap();
    assert!(
        time_to_hang_up(&mut raw, Duration::from_secs(3)).is_some(),
        "a quiet session is closed"
    );
    let status = client.request("status", json!({})).expect("reconnected");
    assert_eq!(status["ok"], true);
    let log = server.log.lock().unwrap().join("\n");
    assert!(log.contains("no request for 0.3 s"), "{log}");
}

#[test]
fn idle_sessions_and_slow_hellos_make_way_for_a_new_client_and_the_log_names_them() {
    let limits = Limits {
        max_connections: 4,
        max_pending: 2,
        ..Limits::default()
    };
    let server = serve(limits);
    // Four greeted, silent sessions fill every slot.
    let mut idle: Vec<ControlClient> = (0..4)
        .map(|_| ControlClient::connect(&server.path).unwrap())
        .collect();
    let mut fresh = ControlClient::connect(&server.path).expect("room is made");
    assert_eq!(fresh.request("status", json!({})).unwrap()["ok"], true);
    let mut first = idle[0].connection().stream().try_clone().unwrap();
    assert!(
        time_to_hang_up(&mut first, Duration::from_secs(3)).is_some(),
        "the quietest session made way"
    );
    // Clients that never say hello fill the hello slots; a new one still gets in.
    let _silent: Vec<UnixStream> = (0..4)
        .map(|_| UnixStream::connect(&server.path).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut another = ControlClient::connect(&server.path).expect("still room");
    assert_eq!(another.request("status", json!({})).unwrap()["ok"], true);
    let log = server.log.lock().unwrap().join("\n");
    assert!(log.contains("to make room for process"), "{log}");
    assert!(log.contains("sessions (processes"), "{log}");
    idle.clear();
}
