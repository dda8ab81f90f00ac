//! Counters the switch keeps: per port, per VM, per rule, per named counter, and drops
//! by reason.
//!
//! Each counter has one writer, its switch thread (several switch threads each write
//! their own shard, [`StatsShard`], and readers sum), so a bump is a relaxed load
//! and store (a plain `mov` on x86), not a locked read-modify-write; other threads (the
//! live display) read them relaxed and may see a value one burst old. The invariant the
//! switch keeps and [`StatsSnapshot::balanced`] checks: every received packet is either
//! transmitted or dropped for exactly one [`DropReason`]; mirror copies are counted apart
//! (`mirrored` made, `mirrors_done` consumed) because they are extra references, not
//! packets.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Why a packet did not leave by a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The policy said `drop` (or the default did).
    Policy,
    /// A chain ran out of hops without `out` or `drop`.
    ChainEnd,
    /// A VM's verdict was `drop`.
    Vm,
    /// Sent to a port that cannot transmit (a generator, a read-only capture).
    NoTx,
    /// The port driver failed to send it.
    TxError,
    /// Larger than a buffer's data room.
    Oversize,
    /// A verdict named a port or VM that does not exist, or the packet visited too many
    /// VMs (a `to` loop).
    BadVerdict,
    /// No buffer for a copy (copy-on-write for a writing VM, or an untrusted VM's copy).
    NoBuffer,
    /// Sent to a VM whose process is down (and whose policy says `on_failure drop`).
    VmDown,
    /// Held by a VM process when it died or detached; reclaimed by the switch.
    VmLost,
    /// A VM process's ring was full (it is stalled or slower than its traffic).
    VmFull,
}

impl DropReason {
    pub const ALL: [DropReason; 11] = [
        DropReason::Policy,
        DropReason::ChainEnd,
        DropReason::Vm,
        DropReason::NoTx,
        DropReason::TxError,
        DropReason::Oversize,
        DropReason::BadVerdict,
        DropReason::NoBuffer,
        DropReason::VmDown,
        DropReason::VmLost,
        DropReason::VmFull,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DropReason::Policy => "policy",
            DropReason::ChainEnd => "chain_end",
            DropReason::Vm => "vm_verdict",
            DropReason::NoTx => "port_cannot_tx",
            DropReason::TxError => "tx_error",
            DropReason::Oversize => "oversize",
            DropReason::BadVerdict => "bad_verdict",
            DropReason::NoBuffer => "no_buffer",
            DropReason::VmDown => "vm_down",
            DropReason::VmLost => "vm_lost",
            DropReason::VmFull => "vm_full",
        }
    }
}

/// A counter with one writer.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Add `n`. Only the owning (switch) thread calls this.
    #[inline(always)]
    pub fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Default)]
pub struct PortCounters {
    pub rx_packets: Counter,
    pub rx_bytes: Counter,
    pub tx_packets: Counter,
    pub tx_bytes: Counter,
}

#[derive(Debug, Default)]
pub struct VmCounters {
    /// Packets handed to the VM on a chain (mirror copies not included): queued for it,
    /// on its ring or in the switch's backlog for it. A packet still queued when a VM
    /// process dies is counted here and then again as a `vm_down` or `vm_lost` drop, so
    /// `packets_in` can exceed `passed + dropped`; the switch-wide drop counts are exact.
    pub packets_in: Counter,
    /// Mirror copies handed to it.
    pub mirrored_in: Counter,
    /// Verdicts other than drop.
    pub passed: Counter,
    pub dropped: Counter,
    /// Bytes copied into or out of its private region (untrusted VMs).
    pub copied_bytes: Counter,
}

#[derive(Debug, Default)]
pub struct RuleCounters {
    pub packets: Counter,
    pub bytes: Counter,
}

/// The counters one switch thread writes: its ports' share, VM hand-offs, drops.
#[derive(Debug)]
pub struct StatsShard {
    pub ports: Vec<PortCounters>,
    pub vms: Vec<VmCounters>,
    pub drops: [Counter; DropReason::ALL.len()],
    pub mirrored: Counter,
    pub mirrors_done: Counter,
}

impl StatsShard {
    fn new(ports: usize, vms: usize) -> StatsShard {
        StatsShard {
            ports: (0..ports).map(|_| PortCounters::default()).collect(),
            vms: (0..vms).map(|_| VmCounters::default()).collect(),
            drops: Default::default(),
            mirrored: Counter::default(),
            mirrors_done: Counter::default(),
        }
    }

    #[inline]
    pub fn count_drop(&self, reason: DropReason, n: u64) {
        self.drops[reason as usize].add(n);
    }
}

/// A port's counters summed over the switch threads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortTotals {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
}

/// A VM's counters summed over the switch threads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VmTotals {
    pub packets_in: u64,
    pub mirrored_in: u64,
    pub passed: u64,
    pub dropped: u64,
    pub copied_bytes: u64,
}

/// Every counter of one switch but the rules' (those live in the [`crate::Program`], so
/// that a hot reload can carry them over by name): one [`StatsShard`] per switch thread,
/// each written by that thread alone, so no counter is ever written by two threads.
/// Readers sum the shards.
#[derive(Debug)]
pub struct Stats {
    shards: Vec<Arc<StatsShard>>,
}

impl Stats {
    /// Counters for a switch with one switch thread.
    pub fn new(ports: usize, vms: usize) -> Stats {
        Stats::sharded(ports, vms, 1)
    }

    /// Counters for a switch with `threads` switch threads (at least one).
    pub fn sharded(ports: usize, vms: usize, threads: usize) -> Stats {
        Stats {
            shards: (0..threads.max(1))
                .map(|_| Arc::new(StatsShard::new(ports, vms)))
                .collect(),
        }
    }

    /// The shard switch thread `thread` writes (the last one for a larger index).
    pub fn shard(&self, thread: usize) -> Arc<StatsShard> {
        self.shards[thread.min(self.shards.len() - 1)].clone()
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    pub fn port_count(&self) -> usize {
        self.shards[0].ports.len()
    }

    pub fn vm_count(&self) -> usize {
        self.shards[0].vms.len()
    }

    fn sum(&self, f: impl Fn(&StatsShard) -> u64) -> u64 {
        self.shards.iter().map(|s| f(s)).sum()
    }

    /// Port `i`'s counters, summed (zeros for an index out of range).
    pub fn port(&self, i: usize) -> PortTotals {
        let get = |f: fn(&PortCounters) -> &Counter| {
            self.sum(|s| s.ports.get(i).map_or(0, |p| f(p).get()))
        };
        PortTotals {
            rx_packets: get(|p| &p.rx_packets),
            rx_bytes: get(|p| &p.rx_bytes),
            tx_packets: get(|p| &p.tx_packets),
            tx_bytes: get(|p| &p.tx_bytes),
        }
    }

    /// VM `i`'s counters, summed (zeros for an index out of range).
    pub fn vm(&self, i: usize) -> VmTotals {
        let get =
            |f: fn(&VmCounters) -> &Counter| self.sum(|s| s.vms.get(i).map_or(0, |v| f(v).get()));
        VmTotals {
            packets_in: get(|v| &v.packets_in),
            mirrored_in: get(|v| &v.mirrored_in),
            passed: get(|v| &v.passed),
            dropped: get(|v| &v.dropped),
            copied_bytes: get(|v| &v.copied_bytes),
        }
    }

    /// Packets dropped for `reason`.
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.sum(|s| s.drops[reason as usize].get())
    }

    pub fn mirrored(&self) -> u64 {
        self.sum(|s| s.mirrored.get())
    }

    pub fn mirrors_done(&self) -> u64 {
        self.sum(|s| s.mirrors_done.get())
    }

    pub fn rx_total(&self) -> u64 {
        self.sum(|s| s.ports.iter().map(|p| p.rx_packets.get()).sum())
    }

    pub fn tx_total(&self) -> u64 {
        self.sum(|s| s.ports.iter().map(|p| p.tx_packets.get()).sum())
    }

    pub fn drop_total(&self) -> u64 {
        self.sum(|s| s.drops.iter().map(Counter::get).sum())
    }
}

/// A port's counters with its name, at one moment: a row of the final report and of the
/// control socket's `stats` reply (one type for both, so they cannot drift apart).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortRow {
    pub name: String,
    pub driver: String,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
}

/// A VM's counters with its name, at one moment (final report and `stats` reply).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRow {
    pub name: String,
    pub function: String,
    pub trusted: bool,
    /// It runs on the switch thread (`--vm-mode inline`), not its own.
    pub inline: bool,
    pub packets_in: u64,
    pub mirrored_in: u64,
    pub passed: u64,
    pub dropped: u64,
    pub copied_bytes: u64,
    pub summary: Option<String>,
}

/// A rule's counters with its name, at one moment (final report and `stats` reply).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleRow {
    pub name: String,
    pub packets: u64,
    pub bytes: u64,
}

/// Every counter, with names, at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub ports: Vec<PortRow>,
    pub vms: Vec<VmRow>,
    /// Rules then `default`.
    pub rules: Vec<RuleRow>,
    pub counters: Vec<(String, u64)>,
    pub drops: Vec<(&'static str, u64)>,
    pub rx: u64,
    pub tx: u64,
    pub dropped: u64,
    pub mirrored: u64,
    pub mirrors_done: u64,
}

impl StatsSnapshot {
    /// rx = tx + drops, and every mirror copy was consumed.
    pub fn balanced(&self) -> bool {
        self.rx == self.tx + self.dropped && self.mirrored == self.mirrors_done
    }
}
