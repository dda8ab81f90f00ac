//! `netvm-nf`: write a network function that runs as its own process.
//!
//! This crate is the NF author's side of netvm's VM processes, and nothing else: it
//! attaches to a VM of a running switch through the switch's control socket, maps the
//! memory the switch grants (the shared packet pool for a trusted VM, only the VM's
//! private region for an untrusted one), and hands out bursts of packets as safe views.
//! No `unsafe` is needed in NF code.
//!
//! ```no_run
//! use netvm_nf::{Nf, Verdict};
//!
//! let mut nf = Nf::attach("/run/netvm/netvm-1234.sock".as_ref(), "fw")?;
//! nf.run(|packet| {
//!     if packet.data().len() > 1500 { Verdict::Drop } else { Verdict::Next }
//! })?;
//! # Ok::<(), netvm_nf::NfError>(())
//! ```
//!
//! A packet is the buffer itself, in place (trusted VMs: zero-copy), or the switch's copy
//! in the VM's private region (untrusted VMs). [`Packet::data_mut`] gives writable bytes
//! when nobody else references the buffer (attach with [`AttachOptions::writes`] so that
//! the switch never hands a writer a shared buffer). [`Packet::in_port`] names the port
//! the packet arrived on. Every packet gets one verdict ([`Verdict::Next`] unless set):
//! next hop, drop, out PORT, or to VM. Ports and VMs are named as the policy names them:
//! [`Nf::out`] and [`Nf::to`] turn a name into a verdict once, at attach time, from the
//! names the switch sent in its attach reply (an unknown name is an error then, not a
//! dropped packet later). The run loop ends when the switch goes away; if this process
//! dies, the switch reclaims what it held.
//!
//! ```no_run
//! use netvm_nf::{Nf, Verdict};
//!
//! let mut nf = Nf::attach("/run/netvm/netvm-1234.sock".as_ref(), "fw")?;
//! let to_ids = nf.to("ids")?;         // Verdict::To(index of VM `ids`)
//! let quarantine = nf.out("log")?;    // Verdict::Out(index of port `log`)
//! nf.run(|packet| match packet.in_port().map(|p| p.name) {
//!     Some("wan") if packet.len() < 64 => quarantine,
//!     Some("wan") => to_ids,
//!     _ => Verdict::Next,
//! })?;
//! # Ok::<(), netvm_nf::NfError>(())
//! ```
//!
//! What it does not do: classify, steer or count — the switch does that. The wire
//! details (rings, verdict encoding, handshake) live in `netvm-shm`, the only netvm crate
//! this one links besides `netvm-packet`: no switch code runs in an NF.

use std::ops::Range;
use std::path::Path;

use netvm_shm::control::{AttachReply, ControlClient, ControlError};
use netvm_shm::pool::NO_PORT;
use netvm_shm::ring::{RingConsumer, RingProducer};
use netvm_shm::vm::{self, wire, Frame};
use netvm_shm::{PacketPool, SharedRegion};
use serde_json::json;

pub use netvm_shm::vm::{Backoff, IdlePolicy, NetworkFunction, Verdict, MAX_BURST};

pub mod audit;
pub mod guest;

#[derive(Debug, thiserror::Error)]
pub enum NfError {
    #[error("control socket: {0}")]
    Control(#[from] ControlError),
    #[error("the switch's reply to attach: {0}")]
    BadReply(String),
    #[error("mapping the region the switch granted: {0}")]
    Region(#[from] netvm_shm::RegionError),
    #[error("the switch sent no memory descriptor with its attach reply")]
    NoDescriptor,
    #[error("the VM's rings: {0}")]
    Ring(#[from] netvm_shm::RingError),
    /// Running in a guest: the ivshmem device or its attach record.
    #[error("{0}")]
    Guest(String),
    /// A port or VM name the switch's policy does not have (or one a verdict cannot
    /// carry).
    #[error("{0}")]
    UnknownName(String),
}

/// A port of the switch's policy: its index (what [`Verdict::Out`] carries) and name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRef<'a> {
    pub index: u16,
    pub name: &'a str,
}

/// `name`'s index in `names` (`what`: "port" or "VM"), below `limit` (what a verdict can
/// carry); the error lists the names there are.
fn resolve(names: &[String], what: &str, name: &str, limit: u32) -> Result<u16, NfError> {
    let Some(index) = names.iter().position(|n| n == name) else {
        return Err(NfError::UnknownName(if names.is_empty() {
            format!(
                "no {what} named `{name}`: the switch sent no {what} names \
                 (it speaks an older control protocol; use the same netvm version)"
            )
        } else {
            format!(
                "no {what} named `{name}` in the switch's policy (its {what}s: {})",
                names.join(", ")
            )
        }));
    };
    if index as u32 >= limit {
        return Err(NfError::UnknownName(format!(
            "{what} `{name}` is number {index}; a verdict can name only the first {limit}"
        )));
    }
    Ok(index as u16)
}

/// How to attach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttachOptions {
    /// The function writes packets: the switch then never hands it a buffer another
    /// reference can see (it copies a mirrored one first).
    pub writes: bool,
    /// What the loop does when there is no work.
    pub idle: IdlePolicy,
}

impl Default for AttachOptions {
    fn default() -> Self {
        AttachOptions {
            writes: false,
            idle: IdlePolicy::Busy,
        }
    }
}

/// How the NF is tied to the switch: its control connection (a process), or the attach
/// record in its BAR (a guest). Either says when the switch has gone.
enum Link {
    Socket(ControlClient),
    Guest(guest::GuestLink),
}

impl Link {
    fn switch_gone(&self) -> bool {
        match self {
            Link::Socket(client) => client.connection().peer_gone(),
            Link::Guest(link) => link.switch_gone(),
        }
    }

    /// How this link's VM waits when idle: on its ring's doorbell, except in a guest,
    /// where the switch's kick (a futex wake on the host) does not reach.
    fn backoff(&self, idle: IdlePolicy) -> Backoff {
        match self {
            Link::Socket(_) => Backoff::new(idle),
            Link::Guest(_) => Backoff::without_doorbell(idle),
        }
    }
}

/// A network function attached to one VM of a running switch.
pub struct Nf {
    link: Link,
    reply: AttachReply,
    pool: PacketPool,
    rx: RingConsumer,
    tx: RingProducer,
    idle: IdlePolicy,
    backoff: Backoff,
}

impl Nf {
    /// Attach to VM `vm` of the switch listening on `control`.
    pub fn attach(control: &Path, vm: &str) -> Result<Nf, NfError> {
        Nf::attach_with(control, vm, AttachOptions::default())
    }

    pub fn attach_with(control: &Path, vm: &str, options: AttachOptions) -> Result<Nf, NfError> {
        let mut client = ControlClient::connect(control)?;
        let (value, mut fds) =
            client.request_with_fds("attach", json!({"vm": vm, "writes": options.writes}))?;
        let reply: AttachReply =
            serde_json::from_value(value).map_err(|e| NfError::BadReply(e.to_string()))?;
        if fds.len() != 1 {
            return Err(NfError::NoDescriptor);
        }
        let region = SharedRegion::from_fd(fds.remove(0))?;
        Nf::on_region(Link::Socket(client), reply, region, options)
    }

    /// Claim the VM's ring ends in `region` as the switch granted them in `reply`.
    fn on_region(
        link: Link,
        reply: AttachReply,
        region: std::sync::Arc<SharedRegion>,
        options: AttachOptions,
    ) -> Result<Nf, NfError> {
        let pool = PacketPool::new(region.clone())?;
        let rx = region.ring(reply.ring_in)?.consumer()?;
        let tx = region.ring(reply.ring_out)?.producer()?;
        let backoff = link.backoff(options.idle);
        Ok(Nf {
            link,
            reply,
            pool,
            rx,
            tx,
            idle: options.idle,
            backoff,
        })
    }

    /// What the switch granted: VM name and index, trust, which region, ring numbers,
    /// and the policy's port and VM names by index.
    pub fn info(&self) -> &AttachReply {
        &self.reply
    }

    /// The policy's ports, by index.
    pub fn ports(&self) -> &[String] {
        &self.reply.ports
    }

    /// The policy's VMs, by index.
    pub fn vms(&self) -> &[String] {
        &self.reply.vms
    }

    /// The index of port `name` (what [`Verdict::Out`] carries).
    pub fn port_index(&self, name: &str) -> Result<u16, NfError> {
        resolve(&self.reply.ports, "port", name, wire::MAX_OUT_PORTS)
    }

    /// The index of VM `name` (what [`Verdict::To`] carries).
    pub fn vm_index(&self, name: &str) -> Result<u16, NfError> {
        resolve(&self.reply.vms, "VM", name, wire::MAX_TO_VMS)
    }

    /// The verdict "leave by port `name` now, skipping the rest of the chain". Resolve it
    /// once, before the loop: an unknown name is an error here, naming the ports there are.
    pub fn out(&self, name: &str) -> Result<Verdict, NfError> {
        self.port_index(name).map(Verdict::Out)
    }

    /// The verdict "visit VM `name`, then go on with the chain".
    pub fn to(&self, name: &str) -> Result<Verdict, NfError> {
        self.vm_index(name).map(Verdict::To)
    }

    /// Addresses of the region this process maps (for audits and diagnostics).
    pub fn region_range(&self) -> Range<usize> {
        let region = self.pool.region();
        region.base_addr()..region.base_addr() + region.len_bytes()
    }

    /// Whether the switch has gone away (its end of the control socket closed).
    pub fn switch_gone(&self) -> bool {
        self.link.switch_gone()
    }

    /// Take one burst (up to 64 packets), let `f` look at them and set verdicts, and
    /// answer the switch. Returns the number of packets (0: nothing was waiting).
    pub fn poll(&mut self, f: impl FnOnce(&mut [Packet<'_>])) -> usize {
        let mut indices = [0u32; MAX_BURST];
        let n = self.rx.dequeue_burst(&mut indices);
        if n == 0 {
            return 0;
        }
        let mut answers = [0u32; MAX_BURST];
        {
            let mut packets: Vec<Packet<'_>> = Vec::with_capacity(n);
            // The headers' misses overlap, as in the VM threads' loop.
            for &index in &indices[..n] {
                self.pool.prefetch_header(index);
            }
            for &index in &indices[..n] {
                let exclusive = self.pool.refcount(index).unwrap_or(0) == 1;
                // SAFETY: the switch handed us `index` through our ring and does not touch
                // it until we answer; it never hands out an index twice before the answer
                // (it tracks each in a FIFO), so the views in one burst are disjoint. With
                // one reference nobody else reads the bytes, so a writable view is sound.
                let frame = unsafe {
                    if exclusive {
                        self.pool.buf_data_mut(index).map(Frame::exclusive)
                    } else {
                        self.pool.buf_data(index).map(Frame::shared)
                    }
                };
                packets.push(Packet {
                    frame: frame.unwrap_or_else(|_| Frame::shared(&[])),
                    verdict: Verdict::Next,
                    index,
                    in_port: self.pool.port(index).unwrap_or(NO_PORT),
                    ports: &self.reply.ports,
                });
            }
            f(&mut packets);
            for (answer, packet) in answers.iter_mut().zip(&packets) {
                if packet.frame.written() {
                    let _ = self.pool.forget_content(packet.index);
                }
                *answer = wire::encode(packet.index, packet.verdict);
            }
        }
        let mut sent = 0;
        while sent < n {
            sent += self.tx.enqueue_burst(&answers[sent..n]);
            if sent < n {
                // The switch never has more out with us than the ring holds.
                std::hint::spin_loop();
            }
        }
        n
    }

    /// Call `f` on every packet until the switch goes away. `f` returns the verdict.
    pub fn run(&mut self, mut f: impl FnMut(&mut Packet<'_>) -> Verdict) -> Result<(), NfError> {
        loop {
            let n = self.poll(|burst| {
                for packet in burst {
                    packet.verdict = f(packet);
                }
            });
            if n > 0 {
                self.backoff.reset();
            } else if self.idle() {
                return Ok(());
            }
        }
    }

    /// Like [`run`](Self::run) with bursts: `f` sees each burst whole.
    pub fn run_bursts(&mut self, mut f: impl FnMut(&mut [Packet<'_>])) -> Result<(), NfError> {
        loop {
            let n = self.poll(&mut f);
            if n > 0 {
                self.backoff.reset();
            } else if self.idle() {
                return Ok(());
            }
        }
    }

    /// Run a [`NetworkFunction`] (a built-in, or your own) until the switch goes away,
    /// with the same loop a VM thread inside the switch runs.
    pub fn run_function(&mut self, function: &mut dyn NetworkFunction) -> Result<(), NfError> {
        let link = &self.link;
        let backoff = link.backoff(self.idle);
        vm::serve_with(
            function,
            &self.pool,
            &mut [(&mut self.rx, &mut self.tx)],
            backoff,
            || link.switch_gone(),
        );
        Ok(())
    }

    /// Back off after an empty poll (spin, yield, then sleep until the switch kicks our
    /// ring, as VM threads do: [`Backoff`]; a guest never sleeps on the ring); `true`
    /// when the switch has gone.
    fn idle(&mut self) -> bool {
        let rounds = self.backoff.idle_rounds();
        if (rounds % 64 == 0 || self.backoff.sleeping()) && self.switch_gone() {
            return true;
        }
        self.backoff
            .idle(Some(&mut self.rx), std::time::Duration::from_millis(1));
        false
    }
}

/// One packet of a burst: its bytes (in place for trusted VMs) and the verdict to give.
pub struct Packet<'a> {
    frame: Frame<'a>,
    verdict: Verdict,
    index: u32,
    /// The port number the switch recorded in the buffer header.
    in_port: u16,
    ports: &'a [String],
}

impl Packet<'_> {
    /// The frame's bytes, from the Ethernet header.
    pub fn data(&self) -> &[u8] {
        self.frame.data()
    }

    /// Writable bytes; `None` when another reference to the buffer exists (a mirror).
    pub fn data_mut(&mut self) -> Option<&mut [u8]> {
        self.frame.data_mut()
    }

    pub fn len(&self) -> usize {
        self.frame.data().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The port the packet arrived on, by index and name; `None` when the buffer names
    /// no port of the policy (a frame the switch made itself).
    pub fn in_port(&self) -> Option<PortRef<'_>> {
        let name = self.ports.get(usize::from(self.in_port))?;
        Some(PortRef {
            index: self.in_port,
            name,
        })
    }

    /// The headers, decoded by the same rules the switch's classifier uses.
    pub fn decode(&self) -> netvm_packet::Decoded<'_> {
        netvm_packet::Decoded::new(self.frame.data())
    }

    pub fn verdict(&self) -> Verdict {
        self.verdict
    }

    pub fn set_verdict(&mut self, verdict: Verdict) {
        self.verdict = verdict;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn names_resolve_to_their_index_and_unknown_ones_list_what_there_is() {
        let ports = names(&["wan", "lan", "log"]);
        assert_eq!(resolve(&ports, "port", "log", 64).unwrap(), 2);
        let e = resolve(&ports, "port", "lanx", 64).unwrap_err();
        assert_eq!(
            e.to_string(),
            "no port named `lanx` in the switch's policy (its ports: wan, lan, log)"
        );
        let e = resolve(&[], "VM", "ids", 190).unwrap_err();
        assert!(e.to_string().contains("sent no VM names"), "{e}");
    }

    #[test]
    fn a_name_beyond_what_a_verdict_carries_is_refused_not_turned_into_a_drop() {
        let ports: Vec<String> = (0..70).map(|i| format!("p{i}")).collect();
        assert_eq!(
            resolve(&ports, "port", "p63", wire::MAX_OUT_PORTS).unwrap(),
            63
        );
        let e = resolve(&ports, "port", "p64", wire::MAX_OUT_PORTS).unwrap_err();
        assert_eq!(
            e.to_string(),
            "port `p64` is number 64; a verdict can name only the first 64"
        );
    }
}
