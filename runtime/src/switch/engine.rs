//! One switch thread's state ([`Engine`]) and its poll loop: each round it installs a
//! reloaded program, syncs VM processes, takes an RX burst from every port (unless a VM
//! backlog or the process gate holds RX), drains every VM's answers and flushes every
//! port's TX batch, until the inputs are drained and nothing is in flight.
//!
//! The stages live next door: [`super::rx`], [`super::dispatch`], [`super::link`],
//! [`super::process`], [`super::tx`], [`super::generations`].

use super::*;

/// How long a stopping switch waits for VM processes to answer what they hold before it
/// counts those packets lost.
pub(super) const PROCESS_GRACE: Duration = Duration::from_secs(2);

/// The switch thread's state.
pub(super) struct Engine {
    /// The program new packets are classified by, and the retired ones queued packets
    /// still need.
    pub(super) gens: Generations,
    /// VMs run by processes (checked once per round for attach/detach).
    pub(super) process_vms: Vec<usize>,
    pub(super) process_stall: Duration,
    /// RX waits until every process VM is up or this instant passes.
    pub(super) rx_gate: Option<Instant>,
    pub(super) pool: PacketPool,
    pub(super) cache: PoolCache,
    pub(super) ports: Vec<Box<dyn Port>>,
    /// [`Port::has_tx`] of each port, asked once (not per packet).
    pub(super) port_has_tx: Vec<bool>,
    pub(super) tx_batches: Vec<Vec<u32>>,
    /// [`Port::device_domain`] of each port, asked once: frames received on a port of a
    /// domain are classified where the device put them, and those whose rule is just
    /// `out PORT` to a port of the same domain go there as they are (`device_batches`).
    pub(super) port_domain: Vec<Option<usize>>,
    pub(super) device_batches: Vec<Vec<DeviceFrame>>,
    /// [`rx_device`](Self::rx_device)'s per-burst arrays, kept so that no burst pays
    /// for initialising them.
    pub(super) lent: Box<LentBurst>,
    pub(super) vms: Vec<VmSlot>,
    /// VMs with indices staged for their ring ([`Engine::publish_all`]).
    pub(super) staged_vms: Vec<usize>,
    /// Which switch thread this is: the counter shard it writes.
    pub(super) shard: usize,
    pub(super) stats: Arc<StatsShard>,
    pub(super) burst_len: usize,
    pub(super) ring_slots: usize,
}

impl Engine {
    pub(super) fn poll_until_done(
        &mut self,
        program: &ProgramHandle,
        stop: &AtomicBool,
        duration: Option<Duration>,
        idle: IdlePolicy,
        start: Instant,
    ) {
        let mut idle_rounds = 0u32;
        let mut round = 0u64;
        let mut stopping = false;
        let mut drained_at: Option<Instant> = None;
        loop {
            round += 1;
            {
                let installed = program.load();
                if !Arc::ptr_eq(&installed, &self.gens.current) {
                    self.gens.install(program.load_full());
                }
            }
            let prog = self.gens.current.clone();
            if !self.process_vms.is_empty() {
                self.sync_external(&prog);
            }
            if !stopping && round % 256 == 0 {
                let expired = duration.is_some_and(|d| start.elapsed() >= d);
                stopping = expired || stop.load(Ordering::Relaxed);
            }
            let mut work = 0;
            let backlog: usize = self.vms.iter().map(|v| v.link.backlog_len()).sum();
            if !self.process_vms.is_empty() {
                self.check_stalls();
            }
            if let Some(deadline) = self.rx_gate {
                if self.processes_up() || Instant::now() >= deadline {
                    self.rx_gate = None;
                }
            }
            if !stopping && backlog == 0 && self.rx_gate.is_none() {
                for port in 0..self.ports.len() {
                    work += self.rx(&prog, port);
                }
            }
            for vm in 0..self.vms.len() {
                work += self.drain_vm(&prog, vm);
            }
            for port in 0..self.ports.len() {
                self.flush(port);
            }
            if work == 0 {
                let inputs_done = stopping || self.ports.iter().all(|p| p.rx_done());
                let in_flight: usize = self.vms.iter().map(VmSlot::in_flight).sum();
                if inputs_done && in_flight == 0 {
                    return;
                }
                if inputs_done {
                    // Only VM processes can hold packets this long (threads always
                    // answer): give them a grace period, then count the rest lost.
                    let since = *drained_at.get_or_insert_with(Instant::now);
                    if since.elapsed() >= PROCESS_GRACE {
                        self.close_external(&prog);
                        drained_at = None;
                    }
                }
                // The clock only every 64 idle rounds: reading it is a tenth of an idle
                // switch's time on a virtual machine, time a VM's answer waits for.
                if !stopping {
                    stopping = stop.load(Ordering::Relaxed)
                        || (idle_rounds % 64 == 0
                            && duration.is_some_and(|d| start.elapsed() >= d));
                }
                idle_rounds = idle_rounds.saturating_add(1);
                match idle {
                    IdlePolicy::Busy => std::hint::spin_loop(),
                    IdlePolicy::Sleep => {
                        let us = 1u64 << idle_rounds.min(10);
                        thread::sleep(Duration::from_micros(us.min(1000)));
                    }
                }
            } else {
                idle_rounds = 0;
            }
        }
    }
}
