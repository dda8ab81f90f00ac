//! Helpers for tests that run `netvm run` and network-function processes for real.
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn netvm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_netvm"))
}

/// `netvm run` of `policy` (written to `dir/policy.nvr`) with its control socket at
/// `dir/control.sock`, no huge pages and idle threads sleeping, as the VM-process and guest
/// tests run it; the caller adds its own arguments. Returns the command and the socket.
pub fn run_command(dir: &Path, policy: &str) -> (Command, PathBuf) {
    let policy_path = dir.join("policy.nvr");
    std::fs::write(&policy_path, policy).unwrap();
    let control = dir.join("control.sock");
    let mut command = netvm();
    command
        .arg("run")
        .arg(&policy_path)
        .arg("--control")
        .arg(&control)
        .args(["--hugepages", "off", "--idle", "sleep"]);
    (command, control)
}

pub fn write_pcap(path: &Path, frames: &[Vec<u8>]) {
    let file = std::fs::File::create(path).unwrap();
    let mut w = pcap_file::pcap::PcapWriter::new(file).unwrap();
    for (i, f) in frames.iter().enumerate() {
        let ts = Duration::from_micros(i as u64);
        w.write_packet(&pcap_file::pcap::PcapPacket::new(ts, f.len() as u32, f))
            .unwrap();
    }
}

pub fn read_pcap(path: &Path) -> Vec<Vec<u8>> {
    let file = std::fs::File::open(path).unwrap();
    let mut r = pcap_file::pcap::PcapReader::new(file).unwrap();
    let mut out = Vec::new();
    while let Some(p) = r.next_packet() {
        out.push(p.unwrap().data.into_owned());
    }
    out
}

/// A child process killed (and reaped) when dropped; its stderr goes to a file.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(mut command: Command, log: PathBuf) -> Proc {
        let file = std::fs::File::create(&log).unwrap();
        let child = command
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .spawn()
            .unwrap();
        Proc { child, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
    }

    /// Wait for exit (at most `timeout`); the exit code, or None if it did not exit.
    pub fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status.code().unwrap_or(-1));
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Wait until `cond` holds, polling every 20 ms; panics with `what` after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `netvm status --json` of the switch at `control`.
pub fn status(control: &Path) -> Option<Value> {
    let out = netvm()
        .args(["status", "--json", "--control"])
        .arg(control)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// The status row of VM `name`.
pub fn vm_row<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["vms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no VM {name} in {status}"))
}

/// Where each frame of `output` sits in `input`, checking that `output` is `input` with
/// some frames left out: every output frame byte-exact and in input order. Panics naming
/// the first output frame that is not.
pub fn positions_in_order(output: &[Vec<u8>], input: &[Vec<u8>]) -> Vec<usize> {
    let mut positions = Vec::with_capacity(output.len());
    let mut next = 0;
    for (k, frame) in output.iter().enumerate() {
        let Some(offset) = input[next..].iter().position(|f| f == frame) else {
            panic!(
                "output frame {k} ({} bytes) is not an input frame after input frame {}: \
                 changed, duplicated or out of order",
                frame.len(),
                next as i64 - 1
            );
        };
        positions.push(next + offset);
        next += offset + 1;
    }
    positions
}

/// The status row of port `name`.
pub fn port_row<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no port {name} in {status}"))
}
