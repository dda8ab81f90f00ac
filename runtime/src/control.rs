//! The control socket: how network-function processes attach to a running switch, and
//! how operators (`netvm status`, `netvm reload`, `netvm repl --connect`) talk to it.
//!
//! A Unix stream socket, mode 0600, whose peers must run as the switch's user or root
//! (checked with `SO_PEERCRED`). Messages are JSON objects, one per line (at most
//! [`MAX_LINE`] bytes). Every connection starts with a versioned handshake:
//!
//! ```text
//! → {"op":"hello","protocol":2,"layout":2,"pid":1234}
//! ← {"ok":true,"protocol":2,"layout":2,"pid":99,"server":"netvm 0.1.0"}
//! ```
//!
//! A peer speaking a protocol outside [`MIN_PROTOCOL_VERSION`]..=[`PROTOCOL_VERSION`] or
//! another region layout version gets `{"ok":false,"error":...}` naming both versions and
//! is disconnected; so is a peer that sends anything that is not a well-formed request.
//! Protocol 2 only added fields to the attach reply (a protocol 1 peer ignores them), so
//! the switch still serves protocol 1 peers; the reply's `protocol` is the one the
//! connection speaks. After the handshake:
//!
//! - `{"op":"attach","vm":"fw","writes":false}` — claim a VM bound as a process. The reply
//!   ([`AttachReply`]) carries the region's memfd as `SCM_RIGHTS`: the shared region for a
//!   trusted VM, the VM's private region (and nothing else) for an untrusted one, and the
//!   names of the policy's ports and VMs by index (protocol 2), which a verdict's port
//!   and VM numbers refer to. The connection is then the VM's lifeline: when it closes
//!   (the process exited or was killed) the switch takes the VM down at once and reclaims
//!   its buffers.
//! - `{"op":"status"}` — VMs, their processes, state, ring fill and counters, ports,
//!   drops ([`ControlState::status`]).
//! - anything else goes to the binary's [`AdminHandler`] (policy reload and friends).
//!
//! Limits ([`Limits`]): the whole hello within [`HELLO_TIMEOUT`], at most [`MAX_PENDING`]
//! connections waiting for theirs, sessions that are not attached VMs closed after
//! [`IDLE_TIMEOUT`] without a request, and when all [`MAX_CONNECTIONS`] are taken the
//! quietest session (else the oldest hello) makes way for the new client; refusals log who
//! holds the slots.
//!
//! Replies are `{"ok":true,...}` or `{"ok":false,"error":"..."}`.
//!
//! The wire side (framing, handshake, the attach request and reply, the client) lives in
//! `netvm-shm`, which network-function processes and guests link alone; it is re-exported
//! here, so `netvm_runtime::control::ControlClient` and friends keep their paths. This
//! module is the server.

use std::io::ErrorKind;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub use netvm_shm::control::*;

use crate::external::ExternalVms;
use crate::layout::LAYOUT_VERSION;
use crate::policy::ProgramHandle;
use crate::stats::{DropReason, Stats};

/// Most connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// The stack of each connection's thread. An [`AdminHandler`] checks and compiles
/// policies there (`netvm reload`); the language bounds a policy's nesting
/// (`netvm_lang::MAX_NESTING`) so that the deepest one it accepts needs under 4 MiB in
/// a debug build: four times that leaves room for what a handler adds.
pub const CONNECTION_STACK: usize = 16 << 20;
/// How long a peer may take to say hello: the whole handshake, however slowly it sends.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a session that is not an attached VM may stay silent before it is closed
/// (`netvm repl --connect` reconnects on its next request).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Most connections still saying hello at once: the rest of [`MAX_CONNECTIONS`] stays
/// for greeted clients (VM processes, `netvm status`, `netvm reload`).
pub const MAX_PENDING: usize = 16;

/// The control socket's connection limits ([`ControlServer::start_with`]); the default
/// is the constants above.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub max_pending: usize,
    pub hello_timeout: Duration,
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: MAX_CONNECTIONS,
            max_pending: MAX_PENDING,
            hello_timeout: HELLO_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
        }
    }
}

/// One connection's slot, as the acceptor sees it: who holds it and how.
struct Slot {
    /// A clone of the connection's socket, to close it (server stop, eviction).
    stream: UnixStream,
    pid: u32,
    state: Mutex<SlotState>,
}

#[derive(Debug, Clone)]
enum SlotState {
    /// Connected at this instant, not greeted yet.
    Hello(Instant),
    /// Closed by the acceptor to make room; its worker is on its way out.
    Closing,
    /// Greeted, not an attached VM; the instant of its last request.
    Session(Instant),
    /// An attached VM's lifeline: never closed for being quiet.
    Attached(String),
}

impl Slot {
    fn set(&self, state: SlotState) {
        if let Ok(mut s) = self.state.lock() {
            *s = state;
        }
    }

    fn get(&self) -> SlotState {
        self.state.lock().map_or(SlotState::Closing, |s| s.clone())
    }
}

/// "3 attached VMs (fw by process 12, ...), 2 sessions (processes 40, 41), 1 saying hello
/// (process 50)": who holds the slots, for the log.
fn holders(slots: &[Arc<Slot>]) -> String {
    let (mut vms, mut sessions, mut hello) = (Vec::new(), Vec::new(), Vec::new());
    for slot in slots {
        match slot.get() {
            SlotState::Attached(vm) => vms.push(format!("{vm} by process {}", slot.pid)),
            SlotState::Session(_) => sessions.push(slot.pid.to_string()),
            SlotState::Hello(_) => hello.push(slot.pid.to_string()),
            SlotState::Closing => {}
        }
    }
    let list = |v: &[String]| {
        let shown: Vec<&str> = v.iter().take(8).map(String::as_str).collect();
        let more = if v.len() > 8 { ", ..." } else { "" };
        format!("{}{more}", shown.join(", "))
    };
    format!(
        "{} attached VMs ({}), {} sessions (processes {}), {} saying hello (processes {})",
        vms.len(),
        list(&vms),
        sessions.len(),
        list(&sessions),
        hello.len(),
        list(&hello)
    )
}

/// What the binary answers on the socket (policy reload, rules, ...). The runtime answers
/// `hello`, `attach` and `status` itself and passes every other op here.
pub trait AdminHandler: Send + Sync + 'static {
    fn handle(&self, op: &str, args: &Value) -> Result<Value, String>;
}

// ---------------------------------------------------------------------------------------
// Server.

/// What the runtime knows to answer `status` and `attach`.
pub struct ControlState {
    pub external: Arc<ExternalVms>,
    pub stats: Arc<Stats>,
    pub program: ProgramHandle,
    pub port_drivers: Vec<String>,
    pub vm_functions: Vec<String>,
    pub started: Instant,
    /// Told one line per event an operator wants to see: a client refused, a VM
    /// attached, a VM down. The runtime prints nothing itself.
    pub log: Option<EventLog>,
}

/// Where [`ControlState`] reports events.
pub type EventLog = Arc<dyn Fn(&str) + Send + Sync>;

impl ControlState {
    fn log(&self, message: impl FnOnce() -> String) {
        if let Some(log) = &self.log {
            log(&message());
        }
    }

    /// The `status` reply: VMs (process, state, ring fill, counters), ports, drops.
    pub fn status(&self) -> Value {
        let program = self.program.load();
        let table = &program.table;
        let vms: Vec<Value> = table
            .vm_names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let c = self.stats.vm(i);
                let external = self.external.vms.iter().find(|e| e.vm == i);
                let guest = external.and_then(|e| e.guest());
                let (kind, state, pid, fill, attaches) = match external {
                    Some(e) => (
                        if guest.is_some() { "guest" } else { "process" },
                        if e.is_up() { "up" } else { "down" },
                        (e.pid() != 0).then_some(e.pid()),
                        if e.is_up() { e.ring_fill() } else { 0 },
                        e.attaches(),
                    ),
                    None => ("built-in", "up", None, 0, 0),
                };
                json!({
                    "name": name,
                    "function": self.vm_functions.get(i).cloned().unwrap_or_default(),
                    "kind": kind,
                    "trusted": table.vm_trusted.get(i).copied().unwrap_or(false),
                    "on_failure": table.vm_on_failure.get(i).copied().unwrap_or_default().name(),
                    "state": state,
                    "pid": pid,
                    "ring_fill": fill,
                    "attaches": attaches,
                    "packets_in": c.packets_in,
                    "mirrored_in": c.mirrored_in,
                    "passed": c.passed,
                    "dropped": c.dropped,
                    "copied_bytes": c.copied_bytes,
                    "guest": guest,
                })
            })
            .collect();
        let ports: Vec<Value> = table
            .port_names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let c = self.stats.port(i);
                json!({
                    "name": name,
                    "driver": self.port_drivers.get(i).cloned().unwrap_or_default(),
                    "rx_packets": c.rx_packets,
                    "tx_packets": c.tx_packets,
                })
            })
            .collect();
        let drops: serde_json::Map<String, Value> = DropReason::ALL
            .iter()
            .map(|&r| (r.name().to_string(), json!(self.stats.drops(r))))
            .collect();
        json!({
            "pid": std::process::id(),
            "uptime_s": self.started.elapsed().as_secs_f64(),
            "vms": vms,
            "ports": ports,
            "drops": drops,
            "rx": self.stats.rx_total(),
            "tx": self.stats.tx_total(),
            "dropped": self.stats.drop_total(),
        })
    }
}

/// A listening control socket; stops (and removes the socket file) on drop, closing
/// every connection so attached processes see the switch go.
pub struct ControlServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<Arc<Slot>>>>,
    acceptor: Option<JoinHandle<()>>,
}

impl ControlServer {
    /// Bind `path` (mode 0600) and serve in background threads. A stale socket file (no
    /// one listening) is replaced; a live one is an error.
    pub fn start(
        path: &Path,
        state: Arc<ControlState>,
        admin: Option<Arc<dyn AdminHandler>>,
    ) -> Result<ControlServer, ControlError> {
        ControlServer::start_with(path, state, admin, Limits::default())
    }

    /// As [`start`](Self::start), with other connection limits.
    pub fn start_with(
        path: &Path,
        state: Arc<ControlState>,
        admin: Option<Arc<dyn AdminHandler>>,
        limits: Limits,
    ) -> Result<ControlServer, ControlError> {
        // Only the default directory is netvm's to create (`default_socket_dir` does, 0700);
        // a path the operator gives must be in a directory that exists.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.is_dir() && is_runtime_dir(dir) {
                make_private_dir(dir).map_err(io_err(format!("creating {}", dir.display())))?;
            }
            if !dir.is_dir() {
                return Err(ControlError::NotFound(format!(
                    "the directory {} does not exist (netvm creates only its own runtime directories, /run/netvm, $XDG_RUNTIME_DIR/netvm and /tmp/netvm-UID; create it, or pick another --control PATH)",
                    dir.display()
                )));
            }
        }
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                return Err(ControlError::NotFound(format!(
                    "{} is in use by another running switch (pick another --control PATH)",
                    path.display()
                )));
            }
            std::fs::remove_file(path).map_err(io_err(format!(
                "removing the stale socket {}",
                path.display()
            )))?;
        }
        // Bind with a umask that leaves the socket 0600 from its first moment.
        // SAFETY: umask only changes this process's file-creation mask.
        let old = unsafe { libc::umask(0o177) };
        let bound = UnixListener::bind(path);
        // SAFETY: as above; restores the previous mask.
        unsafe { libc::umask(old) };
        let listener = bound.map_err(io_err(format!("binding {}", path.display())))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(io_err(format!("chmod 0600 {}", path.display())))?;
        listener
            .set_nonblocking(true)
            .map_err(io_err("making the control socket non-blocking"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(Mutex::new(Vec::new()));
        let acceptor = {
            let stop = stop.clone();
            let connections = connections.clone();
            thread::Builder::new()
                .name("netvm-control".into())
                .spawn(move || accept_loop(listener, state, admin, stop, connections, limits))
                .map_err(io_err("starting the control thread"))?
        };
        Ok(ControlServer {
            path: path.to_path_buf(),
            stop,
            connections,
            acceptor: Some(acceptor),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Ok(connections) = self.connections.lock() {
            for c in connections.iter() {
                let _ = c.stream.shutdown(std::net::Shutdown::Both);
            }
        }
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn accept_loop(
    listener: UnixListener,
    state: Arc<ControlState>,
    admin: Option<Arc<dyn AdminHandler>>,
    stop: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<Arc<Slot>>>>,
    limits: Limits,
) {
    // SAFETY: geteuid cannot fail.
    let own_uid = unsafe { libc::geteuid() };
    let mut workers: Vec<(JoinHandle<()>, Arc<Slot>)> = Vec::new();
    while !stop.load(Ordering::Acquire) {
        workers.retain(|(w, _)| !w.is_finished());
        if let Ok(mut list) = connections.lock() {
            list.retain(|slot| workers.iter().any(|(_, s)| Arc::ptr_eq(s, slot)));
        }
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                wait_readable(listener.as_fd().as_raw_fd(), 50);
                continue;
            }
            Err(_) => {
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let _ = stream.set_nonblocking(false);
        let mut connection = Connection::new(stream);
        let pid = peer_credentials(connection.stream()).map_or(0, |(pid, _)| pid);
        let slots: Vec<Arc<Slot>> = workers.iter().map(|(_, s)| s.clone()).collect();
        let refuse = |connection: &mut Connection, error: String| {
            state.log(|| {
                format!(
                    "refused a client (process {pid}): {error}; the slots: {}",
                    holders(&slots)
                )
            });
            let _ = connection.send(&json!({"ok": false, "error": error}), &[]);
        };
        // Room for the switch's own clients, which greet at once: when the hello slots
        // are full the oldest waiting connection makes way, and when every slot is taken
        // the session quiet the longest does (it reconnects when it next has something
        // to say), else the oldest waiting one. Attached VMs never make way.
        let live: Vec<(SlotState, &Arc<Slot>)> = slots
            .iter()
            .map(|s| (s.get(), s))
            .filter(|(st, _)| !matches!(st, SlotState::Closing))
            .collect();
        let oldest_hello = live
            .iter()
            .filter_map(|(st, s)| match st {
                SlotState::Hello(since) => Some((*since, *s)),
                _ => None,
            })
            .min_by_key(|(since, _)| *since);
        let quietest = live
            .iter()
            .filter_map(|(st, s)| match st {
                SlotState::Session(last) => Some((*last, *s)),
                _ => None,
            })
            .min_by_key(|(last, _)| *last);
        let pending = live
            .iter()
            .filter(|(st, _)| matches!(st, SlotState::Hello(_)))
            .count();
        let make_way = |(since, slot): (Instant, &Arc<Slot>), what: &str| {
            state.log(|| {
                format!(
                    "closed the connection of process {} ({what} for {:.1} s) to make room for process {pid}; the slots: {}",
                    slot.pid,
                    since.elapsed().as_secs_f64(),
                    holders(&slots)
                )
            });
            slot.set(SlotState::Closing);
            let _ = slot.stream.shutdown(std::net::Shutdown::Both);
        };
        if pending >= limits.max_pending {
            if let Some(oldest) = oldest_hello {
                make_way(oldest, "waiting for its hello");
            }
        } else if live.len() >= limits.max_connections {
            match (quietest, oldest_hello) {
                (Some(quiet), _) => make_way(quiet, "quiet"),
                (None, Some(oldest)) => make_way(oldest, "waiting for its hello"),
                (None, None) => {
                    refuse(
                        &mut connection,
                        format!(
                            "too many connections (at most {}, every one an attached VM)",
                            limits.max_connections
                        ),
                    );
                    continue;
                }
            }
        }
        match peer_credentials(connection.stream()) {
            Ok((_, uid)) if uid == own_uid || uid == 0 => {}
            Ok((pid, uid)) => {
                let error = format!(
                    "permission denied: the switch runs as uid {own_uid}, this client as uid {uid}"
                );
                state.log(|| format!("refused a client (process {pid}): {error}"));
                let _ = connection.send(&json!({"ok": false, "error": error}), &[]);
                continue;
            }
            Err(e) => {
                let _ = connection.send(
                    &json!({"ok": false, "error": format!("could not read peer credentials: {e}")}),
                    &[],
                );
                continue;
            }
        }
        let Ok(clone) = connection.stream().try_clone() else {
            continue;
        };
        let slot = Arc::new(Slot {
            stream: clone,
            pid,
            state: Mutex::new(SlotState::Hello(Instant::now())),
        });
        if let Ok(mut list) = connections.lock() {
            list.push(slot.clone());
        }
        let state = state.clone();
        let admin = admin.clone();
        let stop = stop.clone();
        let for_worker = slot.clone();
        if let Ok(worker) = thread::Builder::new()
            .name("netvm-control-conn".into())
            .stack_size(CONNECTION_STACK)
            .spawn(move || {
                serve(
                    connection,
                    &state,
                    admin.as_deref(),
                    &stop,
                    &for_worker,
                    limits,
                )
            })
        {
            workers.push((worker, slot));
        }
    }
    for (w, _) in workers {
        let _ = w.join();
    }
}

fn wait_readable(fd: RawFd, timeout_ms: i32) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on one valid pollfd.
    unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
}

fn error_reply(error: impl Into<String>) -> Value {
    json!({"ok": false, "error": error.into()})
}

fn ok_reply(mut value: Value) -> Value {
    match &mut value {
        Value::Object(map) => {
            map.insert("ok".into(), Value::Bool(true));
            value
        }
        Value::Null => json!({"ok": true}),
        other => json!({"ok": true, "value": other.take()}),
    }
}

/// One connection: hello, then requests until the peer goes; an attached VM is taken
/// down when it does.
fn serve(
    connection: Connection,
    state: &ControlState,
    admin: Option<&dyn AdminHandler>,
    stop: &AtomicBool,
    slot: &Slot,
    limits: Limits,
) {
    // The acceptor keeps a clone of the socket (to close it when the server stops), so
    // dropping ours would not hang up: shut the connection down on every way out.
    struct HangUp(Connection);
    impl Drop for HangUp {
        fn drop(&mut self) {
            let _ = self.0.stream().shutdown(std::net::Shutdown::Both);
        }
    }
    let mut guard = HangUp(connection);
    let connection = &mut guard.0;
    let hello = match connection.recv_by(Some(Instant::now() + limits.hello_timeout)) {
        Ok(Some((line, _))) => parse_request(&line).and_then(|r| {
            if r.op == "hello" {
                check_hello(&r.args)
            } else {
                Err(format!("the first message must be `hello`, not `{}`", r.op))
            }
        }),
        Ok(None) => return,
        Err(e) if e.kind() == ErrorKind::InvalidData => Err(e.to_string()),
        Err(e) if e.kind() == ErrorKind::TimedOut => Err(format!(
            "no hello within {:.1} s",
            limits.hello_timeout.as_secs_f64()
        )),
        Err(e) => Err(format!("reading hello: {e}")),
    };
    let hello = match hello {
        Ok(h) => h,
        Err(e) => {
            let pid = peer_credentials(connection.stream()).map_or(0, |(pid, _)| pid);
            state.log(|| format!("refused a client (process {pid}): {e}"));
            let _ = connection.send(&error_reply(e), &[]);
            return;
        }
    };
    slot.set(SlotState::Session(Instant::now()));
    let reply = json!({
        "ok": true,
        "protocol": hello.protocol,
        "layout": LAYOUT_VERSION,
        "pid": std::process::id(),
        "server": format!("netvm {}", env!("CARGO_PKG_VERSION")),
    });
    if connection.send(&reply, &[]).is_err() {
        return;
    }
    let peer_pid = peer_credentials(connection.stream()).map_or(hello.pid, |(pid, _)| pid);
    let mut attached: Option<(Arc<crate::external::ExternalVm>, u64)> = None;
    while !stop.load(Ordering::Acquire) {
        // An attached VM's connection is its lifeline and may stay quiet; any other
        // session is closed after `idle_timeout` without a request.
        let deadline = attached
            .is_none()
            .then(|| Instant::now() + limits.idle_timeout);
        let _ = connection.stream().set_read_timeout(None);
        let line = match connection.recv_by(deadline) {
            Ok(Some((line, _))) => line,
            Ok(None) => break,
            Err(e) if e.kind() == ErrorKind::TimedOut => {
                let idle = limits.idle_timeout.as_secs_f64();
                state.log(|| {
                    format!("closed the session of process {peer_pid}: no request for {idle:.1} s")
                });
                let _ = connection.send(&error_reply(format!("{IDLE_CLOSED} {idle:.1} s")), &[]);
                break;
            }
            Err(e) => {
                if e.kind() == ErrorKind::InvalidData {
                    let _ = connection.send(&error_reply(e.to_string()), &[]);
                }
                break;
            }
        };
        let request = match parse_request(&line) {
            Ok(r) => r,
            Err(e) => {
                let _ = connection.send(&error_reply(e), &[]);
                break;
            }
        };
        let outcome = match request.op.as_str() {
            "hello" => Err("already greeted".to_string()),
            "status" => Ok((state.status(), None)),
            "attach" => {
                let outcome = attach(state, &request.args, peer_pid, &mut attached);
                match (&outcome, &attached) {
                    (Ok(_), Some((vm, _))) => {
                        slot.set(SlotState::Attached(vm.name.clone()));
                        state.log(|| format!("VM `{}` attached by process {peer_pid}", vm.name))
                    }
                    (Err(e), _) => {
                        state.log(|| format!("attach by process {peer_pid} refused: {e}"))
                    }
                    _ => {}
                }
                outcome
            }
            "detach" => match attached.take() {
                Some((vm, owner)) => {
                    state.external.detach(&vm, owner);
                    Ok((json!({"vm": vm.name}), None))
                }
                None => Err("nothing is attached on this connection".into()),
            },
            op => match admin {
                Some(admin) => admin.handle(op, &request.args).map(|v| (v, None)),
                None => Err(format!("unknown request `{op}`")),
            },
        };
        if attached.is_none() {
            slot.set(SlotState::Session(Instant::now()));
        }
        let sent = match outcome {
            Ok((value, fd)) => {
                let fds: Vec<RawFd> = fd.iter().map(|f: &OwnedFd| f.as_raw_fd()).collect();
                connection.send(&ok_reply(value), &fds)
            }
            Err(e) => connection.send(&error_reply(e), &[]),
        };
        if sent.is_err() {
            break;
        }
    }
    if let Some((vm, owner)) = attached {
        state.external.detach(&vm, owner);
        state.log(|| {
            format!(
                "VM `{}` is down: process {peer_pid} hung up; the packets it held are reclaimed",
                vm.name
            )
        });
    }
}

fn attach(
    state: &ControlState,
    args: &Value,
    pid: u32,
    attached: &mut Option<(Arc<crate::external::ExternalVm>, u64)>,
) -> Result<(Value, Option<OwnedFd>), String> {
    if let Some((vm, _)) = attached {
        return Err(format!(
            "this connection already holds VM `{}`; one VM per connection",
            vm.name
        ));
    }
    let request: AttachRequest = serde_json::from_value(args.clone())
        .map_err(|e| format!("bad attach request (expected vm, writes): {e}"))?;
    if let Some(vm) = state.external.by_name(&request.vm) {
        if vm.guest().is_some() {
            return Err(format!(
                "VM `{}` runs in a QEMU guest (`--vm {}=guest`): netvm attaches it itself",
                request.vm, request.vm
            ));
        }
    }
    let program = state.program.load();
    let vm_names = program.table.vm_names.clone();
    let port_names = program.table.port_names.clone();
    drop(program);
    let grant = state
        .external
        .attach(&request.vm, pid, request.writes, &vm_names)?;
    let reply = AttachReply {
        vm: grant.vm.name.clone(),
        vm_index: grant.vm.vm,
        trusted: grant.vm.trusted,
        region: if grant.vm.trusted {
            "shared"
        } else {
            "private"
        }
        .into(),
        ring_in: grant.vm.ring_in,
        ring_out: grant.vm.ring_out,
        layout: LAYOUT_VERSION,
        ports: port_names,
        vms: vm_names,
    };
    *attached = Some((grant.vm.clone(), grant.owner));
    let value = serde_json::to_value(&reply).map_err(|e| e.to_string())?;
    Ok((value, Some(grant.region_fd)))
}
