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
//! Replies are `{"ok":true,...}` or `{"ok":false,"error":"..."}`.

use std::io::{self, ErrorKind};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::external::ExternalVms;
use crate::layout::LAYOUT_VERSION;
use crate::policy::ProgramHandle;
use crate::stats::{DropReason, Stats};

/// Bumped whenever a message changes shape. 2: the attach reply names the ports and VMs.
pub const PROTOCOL_VERSION: u32 = 2;
/// The oldest protocol this switch still serves (its messages are a subset of ours).
pub const MIN_PROTOCOL_VERSION: u32 = 1;
/// Longest message line, newline included.
pub const MAX_LINE: usize = 64 * 1024;
/// Most connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// The stack of each connection's thread. An [`AdminHandler`] checks and compiles
/// policies there (`netvm reload`); the language bounds a policy's nesting
/// (`netvm_lang::MAX_NESTING`) so that the deepest one it accepts needs under 4 MiB in
/// a debug build: four times that leaves room for what a handler adds.
pub const CONNECTION_STACK: usize = 16 << 20;
/// How long a peer may take to say hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The switch answered `{"ok":false,"error":...}`.
    #[error("{0}")]
    Remote(String),
    #[error("{0}")]
    NotFound(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> ControlError {
    let what = what.into();
    move |source| ControlError::Io { what, source }
}

/// What the binary answers on the socket (policy reload, rules, ...). The runtime answers
/// `hello`, `attach` and `status` itself and passes every other op here.
pub trait AdminHandler: Send + Sync + 'static {
    fn handle(&self, op: &str, args: &Value) -> Result<Value, String>;
}

/// A request, as parsed from one line. Unknown fields are kept for the admin handler.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub op: String,
    pub args: Value,
}

/// Parse one request line. Never panics; everything that is not a JSON object with a
/// string `op` is an error naming what was wrong.
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    if line.len() > MAX_LINE {
        return Err(format!("message longer than {MAX_LINE} bytes"));
    }
    let text = std::str::from_utf8(line).map_err(|e| format!("message is not UTF-8: {e}"))?;
    let value: Value =
        serde_json::from_str(text.trim_end()).map_err(|e| format!("message is not JSON: {e}"))?;
    let Value::Object(map) = &value else {
        return Err("message is not a JSON object".into());
    };
    let op = match map.get("op") {
        Some(Value::String(op)) if !op.is_empty() && op.len() <= 64 => op.clone(),
        Some(_) => return Err("`op` must be a short non-empty string".into()),
        None => return Err("message has no `op`".into()),
    };
    Ok(Request { op, args: value })
}

/// The client's hello.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Hello {
    pub protocol: u32,
    pub layout: u32,
    #[serde(default)]
    pub pid: u32,
}

/// Check a hello against what this switch speaks.
pub fn check_hello(args: &Value) -> Result<Hello, String> {
    let hello: Hello = serde_json::from_value(args.clone())
        .map_err(|e| format!("bad hello (expected protocol, layout, pid): {e}"))?;
    if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&hello.protocol) {
        return Err(format!(
            "control protocol {} is not spoken here: this switch speaks protocols \
             {MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION} (netvm {}); use the same netvm version \
             for the switch and its clients",
            hello.protocol,
            env!("CARGO_PKG_VERSION")
        ));
    }
    if hello.layout != LAYOUT_VERSION {
        return Err(format!(
            "shared region layout {} does not match this switch's layout {LAYOUT_VERSION} \
             (netvm {}); rebuild the network function against the same netvm",
            hello.layout,
            env!("CARGO_PKG_VERSION")
        ));
    }
    Ok(hello)
}

/// The `attach` request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AttachRequest {
    pub vm: String,
    /// Whether the function writes packets (it is then never handed a shared buffer).
    #[serde(default)]
    pub writes: bool,
}

/// The `attach` reply; the region's memfd travels with it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AttachReply {
    pub vm: String,
    pub vm_index: usize,
    pub trusted: bool,
    /// `shared` or `private`.
    pub region: String,
    pub ring_in: usize,
    pub ring_out: usize,
    pub layout: u32,
    /// The policy's ports by index: what a verdict's `Out(n)` and a buffer's ingress port
    /// number refer to (protocol 2; empty from a protocol 1 switch). Fixed for the
    /// switch's life: a reload that changes the ports is refused.
    #[serde(default)]
    pub ports: Vec<String>,
    /// The policy's VMs by index: what a verdict's `To(n)` refers to (protocol 2).
    #[serde(default)]
    pub vms: Vec<String>,
}

// ---------------------------------------------------------------------------------------
// Framing: newline-terminated JSON with optional descriptors, over recvmsg/sendmsg.

/// One end of a control connection.
pub struct Connection {
    stream: UnixStream,
    buffer: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl Connection {
    pub fn new(stream: UnixStream) -> Connection {
        Connection {
            stream,
            buffer: Vec::new(),
            fds: Vec::new(),
        }
    }

    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Send one message, with `fds` attached (SCM_RIGHTS).
    pub fn send(&mut self, message: &Value, fds: &[RawFd]) -> io::Result<()> {
        let mut line = serde_json::to_vec(message).map_err(io::Error::other)?;
        line.push(b'\n');
        let mut sent = 0;
        if !fds.is_empty() {
            sent = send_with_fds(&self.stream, &line, fds)?;
        }
        while sent < line.len() {
            use std::io::Write;
            sent += (&self.stream).write(&line[sent..])?;
        }
        Ok(())
    }

    /// Receive one line (without the newline) and every descriptor that came with it.
    /// `Ok(None)` on a clean end of stream.
    pub fn recv(&mut self) -> io::Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
        loop {
            if let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).take(end).collect();
                return Ok(Some((line, std::mem::take(&mut self.fds))));
            }
            if self.buffer.len() > MAX_LINE {
                return Err(io::Error::new(
                    ErrorKind::InvalidData,
                    format!("message longer than {MAX_LINE} bytes"),
                ));
            }
            let mut chunk = [0u8; 4096];
            let n = recv_with_fds(&self.stream, &mut chunk, &mut self.fds)?;
            if n == 0 {
                return if self.buffer.is_empty() {
                    Ok(None)
                } else {
                    Err(io::Error::new(
                        ErrorKind::UnexpectedEof,
                        "connection closed in the middle of a message",
                    ))
                };
            }
            self.buffer.extend_from_slice(&chunk[..n]);
        }
    }

    /// Whether the peer has hung up (a non-blocking peek).
    pub fn peer_gone(&self) -> bool {
        let mut byte = 0u8;
        // SAFETY: recv into a valid one-byte buffer on a socket we own.
        let n = unsafe {
            libc::recv(
                self.stream.as_raw_fd(),
                (&mut byte as *mut u8).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        if n == 0 {
            return true;
        }
        n < 0 && {
            let e = io::Error::last_os_error();
            !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted)
        }
    }
}

const MAX_FDS: usize = 4;

fn send_with_fds(stream: &UnixStream, bytes: &[u8], fds: &[RawFd]) -> io::Result<usize> {
    assert!(fds.len() <= MAX_FDS);
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of_val(fds) as u32) } as usize;
    let mut control = vec![0u64; space.div_ceil(8)];
    // SAFETY: msghdr is plain data; zeroed is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: `msg` points at `control`, which has room for one cmsg of `fds.len()`
    // descriptors (CMSG_SPACE); CMSG_FIRSTHDR is non-null for such a buffer, and
    // CMSG_DATA has room for the descriptors we copy. `iov` outlives the call.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of_val(fds) as u32) as _;
        std::ptr::copy_nonoverlapping(
            fds.as_ptr(),
            libc::CMSG_DATA(cmsg).cast::<RawFd>(),
            fds.len(),
        );
        let n = libc::sendmsg(stream.as_raw_fd(), &msg, libc::MSG_NOSIGNAL);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

fn recv_with_fds(stream: &UnixStream, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE((MAX_FDS * size_of::<RawFd>()) as u32) } as usize;
    let mut control = vec![0u64; space.div_ceil(8)];
    loop {
        // SAFETY: msghdr is plain data; zeroed is a valid value.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: every pointer in `msg` refers to live buffers of the stated sizes;
        // MSG_CMSG_CLOEXEC makes received descriptors close-on-exec.
        let n = unsafe { libc::recvmsg(stream.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        // SAFETY: the kernel filled `msg` (and `msg_controllen`); we walk its control
        // messages with the CMSG macros and take ownership of every SCM_RIGHTS
        // descriptor exactly once (each is a fresh descriptor in this process).
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                    let data_len = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                    let count = data_len / size_of::<RawFd>();
                    let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                    for i in 0..count {
                        let fd = data.add(i).read_unaligned();
                        fds.push(OwnedFd::from_raw_fd(fd));
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
        if msg.msg_flags & libc::MSG_CTRUNC != 0 {
            return Err(io::Error::new(
                ErrorKind::InvalidData,
                "too many descriptors attached to one message",
            ));
        }
        return Ok(n as usize);
    }
}

/// The peer's (pid, uid) from SO_PEERCRED.
pub fn peer_credentials(stream: &UnixStream) -> io::Result<(u32, u32)> {
    // SAFETY: ucred is plain data.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((cred.pid as u32, cred.uid))
}

// ---------------------------------------------------------------------------------------
// Where sockets live.

/// The directory `netvm run` puts its socket in when not told: `/run/netvm` when it can
/// be created (root), else `$XDG_RUNTIME_DIR/netvm`, else `/tmp/netvm-UID`.
pub fn default_socket_dir() -> PathBuf {
    let run = PathBuf::from("/run/netvm");
    if make_private_dir(&run).is_ok() {
        return run;
    }
    if let Some(xdg) = std::env::var_os("XDG_RUNTIME_DIR") {
        let dir = PathBuf::from(xdg).join("netvm");
        if make_private_dir(&dir).is_ok() {
            return dir;
        }
    }
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    PathBuf::from(format!("/tmp/netvm-{uid}"))
}

fn make_private_dir(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let meta = std::fs::metadata(dir)?;
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// The socket `netvm run` (pid `pid`) listens on when not given `--control`.
pub fn default_socket_path(pid: u32) -> PathBuf {
    default_socket_dir().join(format!("netvm-{pid}.sock"))
}

/// Which socket a client should use: `explicit`, else the only live switch's socket in
/// the default directory.
pub fn resolve_socket(explicit: Option<&Path>) -> Result<PathBuf, ControlError> {
    if let Some(path) = explicit {
        return Ok(path.to_path_buf());
    }
    let dir = default_socket_dir();
    let mut live = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "sock") && UnixStream::connect(&path).is_ok() {
                live.push(path);
            }
        }
    }
    live.sort();
    match live.len() {
        1 => Ok(live.remove(0)),
        0 => Err(ControlError::NotFound(format!(
            "no running switch found in {} (start one with `netvm run`, or pass --control PATH)",
            dir.display()
        ))),
        _ => Err(ControlError::NotFound(format!(
            "several switches are running; pick one with --control: {}",
            live.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

// ---------------------------------------------------------------------------------------
// Client.

/// A connected, greeted client.
pub struct ControlClient {
    connection: Connection,
    path: PathBuf,
}

impl ControlClient {
    /// Connect to the switch at `path` and say hello.
    pub fn connect(path: &Path) -> Result<ControlClient, ControlError> {
        let stream = UnixStream::connect(path)
            .map_err(io_err(format!("connecting to {}", path.display())))?;
        let mut client = ControlClient {
            connection: Connection::new(stream),
            path: path.to_path_buf(),
        };
        client.request(
            "hello",
            json!({
                "protocol": PROTOCOL_VERSION,
                "layout": LAYOUT_VERSION,
                "pid": std::process::id(),
            }),
        )?;
        Ok(client)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    /// Send `{"op": op, ...args}` and wait for the reply.
    pub fn request(&mut self, op: &str, args: Value) -> Result<Value, ControlError> {
        self.request_with_fds(op, args).map(|(v, _)| v)
    }

    /// As [`request`](Self::request), also returning descriptors sent with the reply.
    pub fn request_with_fds(
        &mut self,
        op: &str,
        args: Value,
    ) -> Result<(Value, Vec<OwnedFd>), ControlError> {
        let mut message = match args {
            Value::Object(map) => map,
            Value::Null => serde_json::Map::new(),
            other => {
                return Err(ControlError::Protocol(format!(
                    "request arguments must be an object, not {other}"
                )))
            }
        };
        message.insert("op".into(), Value::String(op.into()));
        if let Err(e) = self.connection.send(&Value::Object(message), &[]) {
            // A switch that refuses a peer before reading from it (another uid, too many
            // connections) has written why and hung up: say that, not "broken pipe".
            if let Ok(Some((line, _))) = self.connection.recv() {
                if let Some(error) = serde_json::from_slice::<Value>(&line)
                    .ok()
                    .as_ref()
                    .and_then(|r| r.get("error"))
                    .and_then(Value::as_str)
                {
                    return Err(ControlError::Remote(error.to_string()));
                }
            }
            return Err(io_err(format!("sending `{op}` to {}", self.path.display()))(e));
        }
        let (line, fds) = self
            .connection
            .recv()
            .map_err(io_err(format!("reading the reply to `{op}`")))?
            .ok_or_else(|| {
                ControlError::Protocol(format!("the switch closed the connection during `{op}`"))
            })?;
        let reply: Value = serde_json::from_slice(&line)
            .map_err(|e| ControlError::Protocol(format!("reply to `{op}` is not JSON: {e}")))?;
        match reply.get("ok") {
            Some(Value::Bool(true)) => Ok((reply, fds)),
            _ => Err(ControlError::Remote(
                reply
                    .get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("the switch refused the request without saying why")
                    .to_string(),
            )),
        }
    }
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
                let (kind, state, pid, fill, attaches) = match external {
                    Some(e) => (
                        "process",
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
    connections: Arc<Mutex<Vec<UnixStream>>>,
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
        // Only the default directory is netvm's to create (`default_socket_dir` does, 0700);
        // a path the operator gives must be in a directory that exists.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.is_dir() {
                return Err(ControlError::NotFound(format!(
                    "the directory {} does not exist (netvm creates only its own runtime directory, for the default socket; create it, or pick another --control PATH)",
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
                .spawn(move || accept_loop(listener, state, admin, stop, connections))
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
                let _ = c.shutdown(std::net::Shutdown::Both);
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
    connections: Arc<Mutex<Vec<UnixStream>>>,
) {
    // SAFETY: geteuid cannot fail.
    let own_uid = unsafe { libc::geteuid() };
    let mut workers: Vec<JoinHandle<()>> = Vec::new();
    while !stop.load(Ordering::Acquire) {
        workers.retain(|w| !w.is_finished());
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
        if workers.len() >= MAX_CONNECTIONS {
            let _ = connection.send(
                &json!({"ok": false, "error": format!("too many connections (at most {MAX_CONNECTIONS})")}),
                &[],
            );
            continue;
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
        if let (Ok(clone), Ok(mut list)) = (connection.stream().try_clone(), connections.lock()) {
            list.retain(peer_alive);
            list.push(clone);
        }
        let state = state.clone();
        let admin = admin.clone();
        let stop = stop.clone();
        if let Ok(worker) = thread::Builder::new()
            .name("netvm-control-conn".into())
            .stack_size(CONNECTION_STACK)
            .spawn(move || serve(connection, &state, admin.as_deref(), &stop))
        {
            workers.push(worker);
        }
    }
    for w in workers {
        let _ = w.join();
    }
}

fn peer_alive(stream: &UnixStream) -> bool {
    let mut pfd = libc::pollfd {
        fd: stream.as_raw_fd(),
        events: 0,
        revents: 0,
    };
    // SAFETY: poll on one valid pollfd with a zero timeout.
    unsafe { libc::poll(&mut pfd, 1, 0) };
    pfd.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) == 0
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
    let _ = connection.stream().set_read_timeout(Some(HELLO_TIMEOUT));
    let hello = match connection.recv() {
        Ok(Some((line, _))) => parse_request(&line).and_then(|r| {
            if r.op == "hello" {
                check_hello(&r.args)
            } else {
                Err(format!("the first message must be `hello`, not `{}`", r.op))
            }
        }),
        Ok(None) => return,
        Err(e) if e.kind() == ErrorKind::InvalidData => Err(e.to_string()),
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
    let _ = connection.stream().set_read_timeout(None);
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
        let line = match connection.recv() {
            Ok(Some((line, _))) => line,
            Ok(None) => break,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_or_name_what_is_wrong() {
        let r = parse_request(br#"{"op":"status"}"#).unwrap();
        assert_eq!(r.op, "status");
        assert!(parse_request(b"not json").unwrap_err().contains("not JSON"));
        assert!(parse_request(b"[1,2]")
            .unwrap_err()
            .contains("not a JSON object"));
        assert!(parse_request(br#"{"vm":"x"}"#)
            .unwrap_err()
            .contains("no `op`"));
        assert!(parse_request(br#"{"op":7}"#).unwrap_err().contains("`op`"));
        assert!(parse_request(&[0xff, 0xfe]).unwrap_err().contains("UTF-8"));
    }

    #[test]
    fn hello_checks_both_versions() {
        let good = json!({"protocol": PROTOCOL_VERSION, "layout": LAYOUT_VERSION, "pid": 1});
        assert!(check_hello(&good).is_ok());
        let old = json!({"protocol": PROTOCOL_VERSION + 1, "layout": LAYOUT_VERSION});
        let e = check_hello(&old).unwrap_err();
        assert!(
            e.contains(&format!("protocol {}", PROTOCOL_VERSION + 1)),
            "{e}"
        );
        let e = check_hello(&json!({"protocol": 0, "layout": LAYOUT_VERSION})).unwrap_err();
        assert!(
            e.contains("protocol 0")
                && e.contains(&format!(
                    "protocols {MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION}"
                )),
            "{e}"
        );
        // Protocol 1 peers are still served: protocol 2 only added attach reply fields.
        let v1 = json!({"protocol": 1, "layout": LAYOUT_VERSION, "pid": 1});
        assert_eq!(check_hello(&v1).unwrap().protocol, 1);
        let layout = json!({"protocol": PROTOCOL_VERSION, "layout": 999});
        assert!(check_hello(&layout).unwrap_err().contains("layout 999"));
        assert!(check_hello(&json!({"protocol": "one"})).is_err());
    }

    #[test]
    fn attach_replies_of_both_protocols_parse() {
        let v1 = json!({"ok": true, "vm": "fw", "vm_index": 0, "trusted": true,
            "region": "shared", "ring_in": 4, "ring_out": 5, "layout": LAYOUT_VERSION});
        let reply: AttachReply = serde_json::from_value(v1).unwrap();
        assert!(reply.ports.is_empty() && reply.vms.is_empty());
        let mut v2 = serde_json::to_value(AttachReply {
            ports: vec!["wan".into(), "lan".into()],
            vms: vec!["fw".into()],
            ..reply
        })
        .unwrap();
        assert_eq!(v2["ports"], json!(["wan", "lan"]));
        v2["ok"] = json!(true);
        let back: AttachReply = serde_json::from_value(v2).unwrap();
        assert_eq!(back.vms, ["fw"]);
    }

    proptest::proptest! {
        #[test]
        fn parsing_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = parse_request(&bytes);
        }

        #[test]
        fn hello_with_arbitrary_fields_never_panics(protocol in proptest::prelude::any::<i64>(), layout in proptest::prelude::any::<i64>(), extra in ".{0,40}") {
            let value = json!({"op": "hello", "protocol": protocol, "layout": layout, "extra": extra});
            let _ = check_hello(&value);
        }
    }
}
