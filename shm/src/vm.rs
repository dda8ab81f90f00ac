//! Network functions ("VMs") and the verdicts they return.
//!
//! A VM is a [`NetworkFunction`]: run by the switch on its own pinned thread (fed through
//! an SPSC ring, answering through another) or inline on the switch core, run to
//! completion, or by an NF process or a QEMU guest over the same rings (`netvm-nf`). Either way it sees one [`Frame`] at a time and returns
//! a [`Verdict`]. What it may touch is decided by the switch, not by the function:
//! a *trusted* VM's frame is the packet's buffer in the shared pool; an *untrusted* VM's
//! frame is a copy in the VM's private region, so it never holds a shared-pool index. A
//! function that declares [`NetworkFunction::writes`] is only ever handed a frame nobody
//! else references (the switch copies a mirrored buffer first), and gets it through
//! [`Frame::data_mut`].
//!
//! Built-ins ([`builtin`]): `forward`, `counter`, `drop-every:N`, `pcap-tap:FILE`,
//! `rewrite:dscp=N`, `delay:us=N`, and `process`: a VM run by another process that
//! attaches through the control socket (`netvm-runtime`'s `external` module).

use std::collections::VecDeque;
use std::fmt;
use std::fs::File;
use std::io::BufWriter;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::pool::PacketPool;
use crate::ring::{RingConsumer, RingProducer};

/// Largest burst: what the switch receives at once, and what a VM takes from its ring.
pub const MAX_BURST: usize = 64;

/// What polling threads do when there is no work.
///
/// A VM (thread or process) backs off in two steps either way ([`Backoff`]): it spins,
/// then sleeps on its ring's doorbell until the switch kicks it
/// ([`RingProducer::kick`], a system call only when the VM really sleeps). The
/// policies differ in how long it spins. The switch thread, which
/// polls ports, spins (`Busy`) or sleeps in growing steps up to 1 ms (`Sleep`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdlePolicy {
    /// Spin (lowest latency): the switch at 100% of its core; a VM spins about
    /// [`Backoff::BUSY_SPINS`] polls before it sleeps.
    Busy,
    /// Back off soon (laptops, CI, cores shared with other work).
    Sleep,
}

/// A VM's idle steps: spin, then sleep on the doorbell (without one: spin, then yield
/// or nap). One per serve loop; reset whenever there is work.
#[derive(Debug)]
pub struct Backoff {
    idle_rounds: u32,
    spins: u32,
    policy: IdlePolicy,
    /// Whether the producer's kick can reach us (not from inside a guest: the host's
    /// futex wake does not cross into it).
    doorbell: bool,
}

impl Backoff {
    /// Polls a busy VM spins through before it sleeps (or, with no doorbell, yields).
    pub const BUSY_SPINS: u32 = 1024;
    /// The longest one sleep lasts without a kick (so `stop` is asked now and then).
    pub const MAX_SLEEP: Duration = Duration::from_millis(500);

    pub fn new(policy: IdlePolicy) -> Backoff {
        let spins = match policy {
            IdlePolicy::Busy => Self::BUSY_SPINS,
            IdlePolicy::Sleep => 16,
        };
        Backoff {
            idle_rounds: 0,
            spins,
            policy,
            doorbell: true,
        }
    }

    /// For a VM whose switch cannot kick it (a guest): it never sleeps on the doorbell.
    /// A busy one spins, then yields for as long as it is idle; a `Sleep` one naps in
    /// short steps (the `short` of [`idle`](Self::idle)).
    pub fn without_doorbell(policy: IdlePolicy) -> Backoff {
        Backoff {
            doorbell: false,
            ..Backoff::new(policy)
        }
    }

    /// There was work: start over.
    #[inline]
    pub fn reset(&mut self) {
        self.idle_rounds = 0;
    }

    /// Idle rounds in a row so far.
    pub fn idle_rounds(&self) -> u32 {
        self.idle_rounds
    }

    /// One idle round. `rx` is the ring to sleep on (its producer kicks it); `None`
    /// when the VM must not sleep until kicked (it holds packets due at a time, or
    /// serves several rings): it then sleeps `short` at most.
    pub fn idle(&mut self, rx: Option<&mut RingConsumer>, short: Duration) {
        self.idle_rounds = self.idle_rounds.saturating_add(1);
        // No yield step before the sleep: on a core shared with other work a yield
        // hands the core away for a whole time slice (milliseconds) while packets
        // arrive, where a kicked sleeper is back at once.
        if self.idle_rounds <= self.spins {
            std::hint::spin_loop();
        } else {
            match rx {
                Some(rx) if self.doorbell => {
                    rx.sleep(Self::MAX_SLEEP);
                }
                _ if !self.doorbell && self.policy == IdlePolicy::Busy => {
                    std::thread::yield_now();
                }
                _ => std::thread::sleep(short),
            }
        }
    }

    /// Whether the last [`idle`](Self::idle) went past spinning.
    pub fn sleeping(&self) -> bool {
        self.idle_rounds > self.spins
    }
}

/// What a VM wants done with the packet it was handed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Continue with the next hop of the packet's chain.
    Next,
    Drop,
    /// Leave by this port now, skipping the rest of the chain.
    Out(u16),
    /// Visit this VM, then continue the chain where it was.
    To(u16),
}

/// Verdicts travel with the buffer index in one ring slot: index in the low 24 bits
/// (a region has at most 2^24 buffers), verdict code in the high 8.
pub mod wire {
    use super::Verdict;

    pub const INDEX_BITS: u32 = 24;
    pub const INDEX_MASK: u32 = (1 << INDEX_BITS) - 1;
    const NEXT: u32 = 0;
    const DROP: u32 = 1;
    const OUT_BASE: u32 = 2;
    /// Ports a verdict can name.
    pub const MAX_OUT_PORTS: u32 = 64;
    const TO_BASE: u32 = OUT_BASE + MAX_OUT_PORTS;
    /// VMs a verdict can name.
    pub const MAX_TO_VMS: u32 = 256 - TO_BASE;

    /// Pack; a verdict naming a port or VM beyond the limits becomes `Drop`.
    #[inline]
    pub fn encode(index: u32, verdict: Verdict) -> u32 {
        let code = match verdict {
            Verdict::Next => NEXT,
            Verdict::Drop => DROP,
            Verdict::Out(p) if u32::from(p) < MAX_OUT_PORTS => OUT_BASE + u32::from(p),
            Verdict::To(v) if u32::from(v) < MAX_TO_VMS => TO_BASE + u32::from(v),
            _ => DROP,
        };
        (code << INDEX_BITS) | (index & INDEX_MASK)
    }

    #[inline]
    pub fn decode(slot: u32) -> (u32, Verdict) {
        let code = slot >> INDEX_BITS;
        let verdict = match code {
            NEXT => Verdict::Next,
            DROP => Verdict::Drop,
            c if c < TO_BASE => Verdict::Out((c - OUT_BASE) as u16),
            c => Verdict::To((c - TO_BASE) as u16),
        };
        (slot & INDEX_MASK, verdict)
    }
}

/// The bytes a VM is handed: read-only, or writable when nobody else references them.
pub struct Frame<'a> {
    data: FrameData<'a>,
    written: bool,
}

enum FrameData<'a> {
    Shared(&'a [u8]),
    Exclusive(&'a mut [u8]),
}

impl<'a> Frame<'a> {
    pub fn shared(bytes: &'a [u8]) -> Frame<'a> {
        Frame {
            data: FrameData::Shared(bytes),
            written: false,
        }
    }

    pub fn exclusive(bytes: &'a mut [u8]) -> Frame<'a> {
        Frame {
            data: FrameData::Exclusive(bytes),
            written: false,
        }
    }

    pub fn data(&self) -> &[u8] {
        match &self.data {
            FrameData::Shared(b) => b,
            FrameData::Exclusive(b) => b,
        }
    }

    /// Writable bytes; `None` when other references to the buffer exist.
    pub fn data_mut(&mut self) -> Option<&mut [u8]> {
        match &mut self.data {
            FrameData::Shared(_) => None,
            FrameData::Exclusive(b) => {
                self.written = true;
                Some(b)
            }
        }
    }

    /// Whether the VM asked for writable bytes (and so may have changed them).
    pub fn written(&self) -> bool {
        self.written
    }
}

/// A network function. One instance per VM; it runs on one thread at a time.
pub trait NetworkFunction: Send {
    /// The built-in's name and arguments, for reports.
    fn describe(&self) -> String;

    /// Whether it writes packets (it then only ever gets exclusive frames).
    fn writes(&self) -> bool {
        false
    }

    /// How long each packet must stay with the VM before it leaves (`delay`).
    fn hold(&self) -> Duration {
        Duration::ZERO
    }

    fn process(&mut self, frame: &mut Frame<'_>) -> Verdict;

    /// Called once when the switch stops (flush files).
    fn finish(&mut self) -> Result<(), String> {
        Ok(())
    }

    /// A line for the final report (e.g. what `counter` saw).
    fn summary(&self) -> Option<String> {
        None
    }

    /// Whether this VM is run by another process that attaches through the control
    /// socket ([`External`]); the switch then never calls [`process`](Self::process).
    fn external(&self) -> bool {
        false
    }
}

/// The VM side of a ring pair: take indices from `rx`, run `nf` on each packet, answer
/// in order on `tx` (index and verdict in one slot, see [`wire`]). Packets are held for
/// [`NetworkFunction::hold`] before they are answered. Returns when `stop()` says so
/// with nothing held; `stop` is asked only when idle (so it may make a system call).
///
/// The same loop runs a VM thread inside the switch and a VM process (`netvm nf`), so
/// the two cost the same per packet.
pub fn serve(
    nf: &mut dyn NetworkFunction,
    pool: &PacketPool,
    rx: &mut RingConsumer,
    tx: &mut RingProducer,
    idle: IdlePolicy,
    stop: impl FnMut() -> bool,
) {
    serve_pairs(nf, pool, &mut [(rx, tx)], idle, stop)
}

/// [`serve`] over several ring pairs (one per switch thread, for a VM thread of a switch
/// with several): each pair is polled in turn and answered in its own order.
pub fn serve_pairs(
    nf: &mut dyn NetworkFunction,
    pool: &PacketPool,
    pairs: &mut [(&mut RingConsumer, &mut RingProducer)],
    idle: IdlePolicy,
    stop: impl FnMut() -> bool,
) {
    serve_with(nf, pool, pairs, Backoff::new(idle), stop)
}

/// [`serve_pairs`] with the caller's [`Backoff`] (a guest's, which has no doorbell).
pub fn serve_with(
    nf: &mut dyn NetworkFunction,
    pool: &PacketPool,
    pairs: &mut [(&mut RingConsumer, &mut RingProducer)],
    mut backoff: Backoff,
    mut stop: impl FnMut() -> bool,
) {
    let hold = nf.hold();
    let mut indices = [0u32; MAX_BURST];
    let mut held: Vec<VecDeque<(u32, Instant)>> = pairs.iter().map(|_| VecDeque::new()).collect();
    let mut answers = [0u32; MAX_BURST];
    loop {
        let mut worked = false;
        for ((rx, tx), held) in pairs.iter_mut().zip(held.iter_mut()) {
            let n = rx.dequeue_burst(&mut indices);
            if n == 0 && held.is_empty() {
                continue;
            }
            let now = Instant::now();
            let mut ready = 0;
            for &index in &indices[..n] {
                pool.prefetch_header(index);
            }
            for &index in &indices[..n] {
                let verdict = process_one(nf, pool, index);
                let answer = wire::encode(index, verdict);
                if hold.is_zero() {
                    answers[ready] = answer;
                    ready += 1;
                } else {
                    held.push_back((answer, now + hold));
                }
            }
            if !answer_all(tx, &answers[..ready], &mut stop) {
                return;
            }
            let mut released = 0;
            while let Some(&(answer, due)) = held.front() {
                if due > now || released == MAX_BURST {
                    break;
                }
                answers[released] = answer;
                released += 1;
                held.pop_front();
            }
            if !answer_all(tx, &answers[..released], &mut stop) {
                return;
            }
            worked |= n > 0 || released > 0;
        }
        if !worked {
            let nothing_held = held.iter().all(VecDeque::is_empty);
            // Asked every 64 idle rounds, and after every sleep.
            if nothing_held && (backoff.idle_rounds() % 64 == 0 || backoff.sleeping()) && stop() {
                return;
            }
            // Sleep until kicked only on the one ring a kick comes through, and only
            // with nothing due at a time; otherwise nap in short steps (a held packet
            // waits at most 50 us past its time, several switch threads at most 1 ms).
            let short = if nothing_held {
                Duration::from_millis(1)
            } else {
                Duration::from_micros(50)
            };
            let doorbell = match pairs {
                [(rx, _)] if nothing_held => Some(&mut **rx),
                _ => None,
            };
            backoff.idle(doorbell, short);
        } else {
            backoff.reset();
        }
    }
}

/// Run `nf` on buffer `index` of `pool`: writable when we hold its only reference.
fn process_one(nf: &mut dyn NetworkFunction, pool: &PacketPool, index: u32) -> Verdict {
    let exclusive = pool.refcount(index).unwrap_or(0) == 1;
    // SAFETY: the switch handed us `index` through our ring and does not touch it until
    // we answer; with one reference nobody else reads it, so we may write it.
    unsafe {
        if exclusive {
            match pool.buf_data_mut(index) {
                Ok(bytes) => {
                    let mut frame = Frame::exclusive(bytes);
                    let verdict = nf.process(&mut frame);
                    if frame.written() {
                        let _ = pool.forget_content(index);
                    }
                    verdict
                }
                Err(_) => Verdict::Drop,
            }
        } else {
            match pool.buf_data(index) {
                Ok(bytes) => nf.process(&mut Frame::shared(bytes)),
                Err(_) => Verdict::Drop,
            }
        }
    }
}

/// Put every answer on the ring. The switch never has more packets out with a VM than
/// the ring holds, so this only waits while the switch is draining; `false` when `stop`
/// says the switch is gone meanwhile.
fn answer_all(tx: &mut RingProducer, answers: &[u32], stop: &mut impl FnMut() -> bool) -> bool {
    let mut sent = 0;
    let mut spins = 0u32;
    while sent < answers.len() {
        sent += tx.enqueue_burst(&answers[sent..]);
        if sent < answers.len() {
            spins = spins.wrapping_add(1);
            if spins % (1 << 16) == 0 {
                if stop() {
                    return false;
                }
                std::thread::yield_now();
            }
            std::hint::spin_loop();
        }
    }
    true
}

/// Why a `--vm` argument was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuiltinError {
    #[error("unknown built-in VM `{0}` (expected forward, counter, drop-every:N, pcap-tap:FILE, rewrite:dscp=N, delay:us=N, or process for a network function process that attaches through the control socket)")]
    Unknown(String),
    #[error("built-in `{builtin}`: {why}")]
    BadArgs { builtin: String, why: String },
}

fn bad(builtin: &str, why: impl Into<String>) -> BuiltinError {
    BuiltinError::BadArgs {
        builtin: builtin.to_string(),
        why: why.into(),
    }
}

/// A built-in's arguments: `key=value` pairs whose keys are in `keys`, or one bare value
/// for the first key. Anything else is refused, naming the keys the built-in takes.
fn parse_args<'a>(
    builtin: &str,
    args: &'a str,
    keys: &[&'a str],
) -> Result<Vec<(&'a str, &'a str)>, BuiltinError> {
    let takes = || match keys {
        [] => "it takes no arguments".to_string(),
        [one] => format!("it takes `{one}=...` (or the value alone)"),
        many => format!(
            "it takes {}",
            many.iter()
                .map(|k| format!("`{k}=...`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut out = Vec::new();
    for item in args.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (key, value) = match item.split_once('=') {
            Some((k, v)) => (k.trim(), v.trim()),
            None => match keys.first() {
                Some(first) if out.is_empty() => (*first, item),
                _ => return Err(bad(builtin, format!("unexpected `{item}`: {}", takes()))),
            },
        };
        if !keys.contains(&key) {
            return Err(bad(builtin, format!("unknown option `{key}`: {}", takes())));
        }
        if out.iter().any(|(k, _)| *k == key) {
            return Err(bad(builtin, format!("`{key}` is given twice")));
        }
        out.push((key, value));
    }
    Ok(out)
}

fn arg<'a>(args: &[(&'a str, &'a str)], key: &str) -> Option<&'a str> {
    args.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

fn number<'a>(builtin: &str, args: &'a str, key: &'a str) -> Result<u64, BuiltinError> {
    let parsed = parse_args(builtin, args, &[key])?;
    let text = arg(&parsed, key).ok_or_else(|| bad(builtin, format!("needs `{key}=N`")))?;
    text.parse()
        .map_err(|_| bad(builtin, format!("`{text}` is not a number")))
}

/// Build a built-in from `NAME[:ARGS]` (`drop-every:3`, `rewrite:dscp=46`).
pub fn builtin(spec: &str) -> Result<Box<dyn NetworkFunction>, BuiltinError> {
    let (name, args) = spec.split_once(':').unwrap_or((spec, ""));
    Ok(match name {
        "forward" | "counter" | "process" => {
            parse_args(name, args, &[])?;
            match name {
                "forward" => Box::new(Forward),
                "counter" => Box::new(Counter::default()),
                _ => Box::new(External),
            }
        }
        "drop-every" => {
            let every = number(name, args, "n")?;
            if every == 0 {
                return Err(bad(name, "N must be at least 1"));
            }
            Box::new(DropEvery { every, seen: 0 })
        }
        "pcap-tap" => {
            let parsed = parse_args(name, args, &["file"])?;
            let path = arg(&parsed, "file").ok_or_else(|| bad(name, "needs a FILE"))?;
            Box::new(PcapTap::create(path).map_err(|e| bad(name, e))?)
        }
        "rewrite" => {
            let dscp = number(name, args, "dscp")?;
            if dscp > 63 {
                return Err(bad(name, "dscp must be 0..=63"));
            }
            Box::new(Rewrite { dscp: dscp as u8 })
        }
        "delay" => Box::new(Delay {
            hold: Duration::from_micros(number(name, args, "us")?),
        }),
        other => return Err(BuiltinError::Unknown(other.to_string())),
    })
}

/// A VM run by another process (`--vm NAME=process`): it attaches through the control
/// socket (`netvm nf`, or a program built on `netvm-nf`), and the switch talks to it
/// through rings. Until one attaches, the VM is down.
#[derive(Debug, Default)]
pub struct External;

impl NetworkFunction for External {
    fn describe(&self) -> String {
        "process".into()
    }

    fn process(&mut self, _frame: &mut Frame<'_>) -> Verdict {
        // Never called: the switch hands this VM's packets to its process.
        Verdict::Drop
    }

    fn external(&self) -> bool {
        true
    }
}

/// Returns every packet unchanged.
#[derive(Debug, Default)]
pub struct Forward;

impl NetworkFunction for Forward {
    fn describe(&self) -> String {
        "forward".into()
    }

    fn process(&mut self, _frame: &mut Frame<'_>) -> Verdict {
        Verdict::Next
    }
}

/// Counts packets and bytes, forwards everything.
#[derive(Debug, Default)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

impl NetworkFunction for Counter {
    fn describe(&self) -> String {
        "counter".into()
    }

    fn process(&mut self, frame: &mut Frame<'_>) -> Verdict {
        self.packets += 1;
        self.bytes += frame.data().len() as u64;
        Verdict::Next
    }

    fn summary(&self) -> Option<String> {
        Some(format!("{} packets, {} bytes", self.packets, self.bytes))
    }
}

/// Drops the N-th, 2N-th, ... packet it sees.
#[derive(Debug)]
pub struct DropEvery {
    every: u64,
    seen: u64,
}

impl NetworkFunction for DropEvery {
    fn describe(&self) -> String {
        format!("drop-every:{}", self.every)
    }

    fn process(&mut self, _frame: &mut Frame<'_>) -> Verdict {
        self.seen += 1;
        if self.seen % self.every == 0 {
            Verdict::Drop
        } else {
            Verdict::Next
        }
    }
}

/// Records every packet it sees to a pcap file, forwards everything.
pub struct PcapTap {
    path: String,
    writer: Option<pcap_file::pcap::PcapWriter<BufWriter<File>>>,
    error: Option<String>,
}

impl fmt::Debug for PcapTap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PcapTap").field("path", &self.path).finish()
    }
}

impl PcapTap {
    pub fn create(path: &str) -> Result<PcapTap, String> {
        let file = File::create(path).map_err(|e| format!("creating {path}: {e}"))?;
        let writer = pcap_file::pcap::PcapWriter::new(BufWriter::new(file))
            .map_err(|e| format!("writing the pcap header of {path}: {e}"))?;
        Ok(PcapTap {
            path: path.to_string(),
            writer: Some(writer),
            error: None,
        })
    }
}

/// Seconds since the epoch, as a pcap timestamp.
pub fn now_timestamp() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

impl NetworkFunction for PcapTap {
    fn describe(&self) -> String {
        format!("pcap-tap:{}", self.path)
    }

    fn process(&mut self, frame: &mut Frame<'_>) -> Verdict {
        if let Some(w) = &mut self.writer {
            let data = frame.data();
            let packet = pcap_file::pcap::PcapPacket::new(now_timestamp(), data.len() as u32, data);
            if let Err(e) = w.write_packet(&packet) {
                self.error.get_or_insert(e.to_string());
            }
        }
        Verdict::Next
    }

    fn finish(&mut self) -> Result<(), String> {
        if let Some(w) = self.writer.take() {
            use std::io::Write;
            w.into_writer()
                .flush()
                .map_err(|e| format!("flushing {}: {e}", self.path))?;
        }
        self.error
            .take()
            .map_or(Ok(()), |e| Err(format!("{}: {e}", self.path)))
    }
}

/// Sets the DSCP of IPv4 (fixing the header checksum) and IPv6 packets.
#[derive(Debug)]
pub struct Rewrite {
    dscp: u8,
}

/// Offset of the IP header and its ethertype, as the classifier decodes the frame
/// (`packet::decode`: at most two tags, a whole IPv4 header of version 4 and IHL ≥ 5, a
/// whole IPv6 header): a frame the classifier calls non-IP is not rewritten.
fn ip_header(frame: &[u8]) -> Option<(usize, u16)> {
    let decoded = netvm_packet::Decoded::new(frame);
    let l3 = usize::from(decoded.offsets().l3?);
    if decoded.has(netvm_packet::Proto::Ip) {
        Some((l3, 0x0800))
    } else if decoded.has(netvm_packet::Proto::Ip6) {
        Some((l3, 0x86dd))
    } else {
        None
    }
}

/// RFC 1624 incremental checksum update for one 16-bit word changing `old` → `new`.
fn checksum_update(checksum: u16, old: u16, new: u16) -> u16 {
    let mut sum = u32::from(!checksum) + u32::from(!old) + u32::from(new);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

impl NetworkFunction for Rewrite {
    fn describe(&self) -> String {
        format!("rewrite:dscp={}", self.dscp)
    }

    fn writes(&self) -> bool {
        true
    }

    fn process(&mut self, frame: &mut Frame<'_>) -> Verdict {
        let Some((l3, ethertype)) = ip_header(frame.data()) else {
            return Verdict::Next;
        };
        let Some(data) = frame.data_mut() else {
            return Verdict::Next;
        };
        match ethertype {
            0x0800 if data.len() >= l3 + 20 => {
                let old = u16::from_be_bytes([data[l3], data[l3 + 1]]);
                data[l3 + 1] = (self.dscp << 2) | (data[l3 + 1] & 0x03);
                let new = u16::from_be_bytes([data[l3], data[l3 + 1]]);
                let sum = u16::from_be_bytes([data[l3 + 10], data[l3 + 11]]);
                let sum = checksum_update(sum, old, new);
                data[l3 + 10..l3 + 12].copy_from_slice(&sum.to_be_bytes());
            }
            0x86dd if data.len() >= l3 + 40 => {
                // Traffic class is bits 4..12 of the first word; DSCP is its top six.
                let word = u16::from_be_bytes([data[l3], data[l3 + 1]]);
                let word = (word & 0xf03f) | (u16::from(self.dscp) << 6);
                data[l3..l3 + 2].copy_from_slice(&word.to_be_bytes());
            }
            _ => {}
        }
        Verdict::Next
    }
}

/// Holds every packet for a fixed time, then forwards it (a latency emulator).
#[derive(Debug)]
pub struct Delay {
    hold: Duration,
}

impl NetworkFunction for Delay {
    fn describe(&self) -> String {
        format!("delay:us={}", self.hold.as_micros())
    }

    fn hold(&self) -> Duration {
        self.hold
    }

    fn process(&mut self, _frame: &mut Frame<'_>) -> Verdict {
        Verdict::Next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_round_trip_through_a_ring_slot() {
        for v in [
            Verdict::Next,
            Verdict::Drop,
            Verdict::Out(0),
            Verdict::Out(63),
            Verdict::To(0),
            Verdict::To(189),
        ] {
            assert_eq!(wire::decode(wire::encode(0xabcdef, v)), (0xabcdef, v));
        }
        assert_eq!(
            wire::decode(wire::encode(1, Verdict::Out(64))).1,
            Verdict::Drop
        );
    }

    #[test]
    fn rewrite_sets_dscp_and_keeps_the_ipv4_checksum_valid() {
        let mut spec = netvm_packet::PacketSpec::new(netvm_packet::BaseProto::Tcp);
        spec.set(netvm_packet::Field::VlanId, 7);
        let mut frame = spec.build().unwrap();
        let mut nf = builtin("rewrite:dscp=46").unwrap();
        assert_eq!(nf.process(&mut Frame::exclusive(&mut frame)), Verdict::Next);
        let d = netvm_packet::Decoded::new(&frame);
        assert_eq!(d.field(netvm_packet::Field::IpDscp), Some(46));
        let l3 = d.offsets().l3.unwrap() as usize;
        let header = etherparse::Ipv4HeaderSlice::from_slice(&frame[l3..]).unwrap();
        assert_eq!(
            header.header_checksum(),
            header.to_header().calc_header_checksum()
        );
    }

    #[test]
    fn rewrite_leaves_frames_the_classifier_calls_non_ip_alone() {
        let mut nf = builtin("rewrite:dscp=46").unwrap();
        let ip = netvm_packet::PacketSpec::new(netvm_packet::BaseProto::Tcp)
            .build()
            .unwrap();
        let tagged = |tpid: u16, tags: usize| {
            let mut f = ip[..12].to_vec();
            for _ in 0..tags {
                f.extend_from_slice(&tpid.to_be_bytes());
                f.extend_from_slice(&[0, 7]);
            }
            f.extend_from_slice(&ip[12..]);
            f
        };
        let mut bad_version = ip.clone();
        bad_version[14] = 0x65; // ethertype IPv4, version 6
        let mut bad_ihl = ip.clone();
        bad_ihl[14] = 0x43; // IHL 3
        for (what, frame) in [
            ("three tags", tagged(0x8100, 3)),
            ("a 0x9100 tag", tagged(0x9100, 1)),
            ("version 6 behind 0x0800", bad_version),
            ("IHL 3", bad_ihl),
        ] {
            assert!(
                !netvm_packet::Decoded::new(&frame).has(netvm_packet::Proto::Ip),
                "{what}"
            );
            let mut copy = frame.clone();
            nf.process(&mut Frame::exclusive(&mut copy));
            assert_eq!(copy, frame, "{what} is not rewritten");
        }
        // Two tags are decoded, so rewritten.
        let mut two = tagged(0x8100, 2);
        nf.process(&mut Frame::exclusive(&mut two));
        let d = netvm_packet::Decoded::new(&two);
        assert_eq!(d.field(netvm_packet::Field::IpDscp), Some(46));
    }

    #[test]
    fn unknown_builtin_options_are_refused_naming_the_valid_ones() {
        for (spec, says) in [
            ("forward:junk", "takes no arguments"),
            ("counter:x=1", "unknown option `x`: it takes no arguments"),
            ("process:x", "takes no arguments"),
            ("delay:ms=5", "unknown option `ms`: it takes `us=...`"),
            ("rewrite:dscp=4,ecn=1", "unknown option `ecn`"),
            ("drop-every:3,4", "unexpected `4`"),
            ("delay:us=1,us=2", "given twice"),
        ] {
            let e = builtin(spec)
                .err()
                .unwrap_or_else(|| panic!("{spec} accepted"));
            assert!(e.to_string().contains(says), "{spec}: {e}");
        }
        assert!(builtin("forward").is_ok());
        assert!(builtin("drop-every:n=3").is_ok());
    }

    #[test]
    fn builtins_parse_their_arguments_and_refuse_bad_ones() {
        assert_eq!(builtin("drop-every:3").unwrap().describe(), "drop-every:3");
        assert_eq!(
            builtin("delay:us=5").unwrap().hold(),
            Duration::from_micros(5)
        );
        assert!(builtin("drop-every:0").is_err());
        assert!(builtin("rewrite:dscp=64").is_err());
        assert!(matches!(builtin("nat"), Err(BuiltinError::Unknown(_))));
        let mut nf = builtin("drop-every:2").unwrap();
        let bytes = [0u8; 60];
        let verdicts: Vec<Verdict> = (0..4)
            .map(|_| nf.process(&mut Frame::shared(&bytes[..])))
            .collect();
        assert_eq!(
            verdicts,
            [Verdict::Next, Verdict::Drop, Verdict::Next, Verdict::Drop]
        );
    }
}
