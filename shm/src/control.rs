//! The control protocol, as both ends speak it: message framing (JSON lines with
//! descriptors over `SCM_RIGHTS`), the versioned handshake, the attach request and reply,
//! where sockets live, and the client ([`ControlClient`]) that network-function processes
//! and operators' tools use. The server side (who may attach, `status`) is the switch's,
//! in `netvm-runtime`'s `control` module, which re-exports everything here.
//!
//! ```text
//! → {"op":"hello","protocol":2,"layout":2,"pid":1234}
//! ← {"ok":true,"protocol":2,"layout":2,"pid":99,"server":"netvm 0.1.0"}
//! ```
//!
//! A peer speaking a protocol outside [`MIN_PROTOCOL_VERSION`]..=[`PROTOCOL_VERSION`] or
//! another region layout version is refused with an error naming both versions
//! ([`check_hello`]). Messages are at most [`MAX_LINE`] bytes; [`parse_request`] turns
//! anything that is not a JSON object with a string `op` into an error, never a panic.

use std::io::{self, ErrorKind};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::layout::LAYOUT_VERSION;

/// Bumped whenever a message changes shape. 2: the attach reply names the ports and VMs.
pub const PROTOCOL_VERSION: u32 = 2;
/// The oldest protocol this switch still serves (its messages are a subset of ours).
pub const MIN_PROTOCOL_VERSION: u32 = 1;
/// Longest message line, newline included.
pub const MAX_LINE: usize = 64 * 1024;

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

/// An I/O error with what was being done, as a [`ControlError`].
pub fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> ControlError {
    let what = what.into();
    move |source| ControlError::Io { what, source }
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
        self.recv_by(None)
    }

    /// As [`recv`](Self::recv), giving up (`TimedOut`) at `deadline` however the bytes
    /// trickle in: the socket's read timeout is set to what is left before each read.
    pub fn recv_by(
        &mut self,
        deadline: Option<Instant>,
    ) -> io::Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
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
            if let Some(deadline) = deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::Error::new(ErrorKind::TimedOut, "timed out"));
                }
                self.stream.set_read_timeout(Some(left))?;
            }
            let mut chunk = [0u8; 4096];
            let n = match recv_with_fds(&self.stream, &mut chunk, &mut self.fds) {
                Err(e) if deadline.is_some() && e.kind() == ErrorKind::WouldBlock => {
                    return Err(io::Error::new(ErrorKind::TimedOut, "timed out"))
                }
                other => other?,
            };
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

/// Send `bytes` with `fds` attached (`SCM_RIGHTS`) in one `sendmsg`; returns the bytes sent.
pub fn send_with_fds(stream: &UnixStream, bytes: &[u8], fds: &[RawFd]) -> io::Result<usize> {
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

/// Whether `dir` is one of the directories netvm keeps its sockets in (the candidates of
/// [`default_socket_dir`]): the only ones it creates.
pub fn is_runtime_dir(dir: &Path) -> bool {
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    let mut own = vec![
        PathBuf::from("/run/netvm"),
        PathBuf::from(format!("/tmp/netvm-{uid}")),
    ];
    if let Some(xdg) = std::env::var_os("XDG_RUNTIME_DIR") {
        own.push(PathBuf::from(xdg).join("netvm"));
    }
    own.iter().any(|d| d == dir)
}

/// Creates `dir` (and its parents) and makes it 0700 when others could read it.
pub fn make_private_dir(dir: &Path) -> io::Result<()> {
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
    /// The last request found the connection closed by the switch.
    closed: bool,
}

/// How the switch's reply to a session it closes for being quiet begins.
pub const IDLE_CLOSED: &str = "closed: no request for";

impl ControlClient {
    /// Connect to the switch at `path` and say hello.
    pub fn connect(path: &Path) -> Result<ControlClient, ControlError> {
        let stream = UnixStream::connect(path)
            .map_err(io_err(format!("connecting to {}", path.display())))?;
        let mut client = ControlClient {
            connection: Connection::new(stream),
            path: path.to_path_buf(),
            closed: false,
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
    /// A session the switch closed for being quiet is reconnected and the request sent
    /// again, once (the switch closes it before reading anything, so nothing was done);
    /// an `attach` is never retried, it belongs to its connection.
    pub fn request_with_fds(
        &mut self,
        op: &str,
        args: Value,
    ) -> Result<(Value, Vec<OwnedFd>), ControlError> {
        match self.request_once(op, args.clone()) {
            Err(e) if self.closed && !matches!(op, "hello" | "attach" | "detach") => {
                match ControlClient::connect(&self.path) {
                    Ok(fresh) => *self = fresh,
                    Err(_) => return Err(e),
                }
                self.request_once(op, args)
            }
            other => other,
        }
    }

    fn request_once(
        &mut self,
        op: &str,
        args: Value,
    ) -> Result<(Value, Vec<OwnedFd>), ControlError> {
        self.closed = false;
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
                    self.closed = error.starts_with(IDLE_CLOSED);
                    return Err(ControlError::Remote(error.to_string()));
                }
            }
            self.closed = true;
            return Err(io_err(format!("sending `{op}` to {}", self.path.display()))(e));
        }
        let (line, fds) = self
            .connection
            .recv()
            .map_err(io_err(format!("reading the reply to `{op}`")))?
            .ok_or_else(|| {
                self.closed = true;
                ControlError::Protocol(format!("the switch closed the connection during `{op}`"))
            })?;
        let reply: Value = serde_json::from_slice(&line)
            .map_err(|e| ControlError::Protocol(format!("reply to `{op}` is not JSON: {e}")))?;
        match reply.get("ok") {
            Some(Value::Bool(true)) => Ok((reply, fds)),
            _ => {
                let error = reply
                    .get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("the switch refused the request without saying why");
                self.closed = error.starts_with(IDLE_CLOSED);
                Err(ControlError::Remote(error.to_string()))
            }
        }
    }
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
