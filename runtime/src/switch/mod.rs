//! The switch: ports → classifier → chains of VMs → ports, every packet accounted for.
//!
//! A switch thread (pinned to its core) runs a poll loop:
//! 1. **RX**: each port fills a burst of up to `burst_len` buffers; the burst is
//!    classified in one call; each packet's rule bumps its counters, mirrors get a second
//!    reference (`clone_ref`) and go to their VMs, and the packet starts down its chain.
//! 2. **VM output**: each VM thread's output ring is drained; every slot carries a buffer
//!    index and the VM's [`Verdict`] (see [`vm::wire`]), which decides the next step:
//!    the chain's next hop, drop, out PORT, or to another VM.
//! 3. **TX**: per-port batches are flushed to the drivers and the buffers freed.
//!
//! VMs run either on their own threads (SPSC rings both ways) or inline on the switch
//! core, run to completion ([`VmMode`]); the packet path is the same code. The switch
//! remembers what each in-flight packet was doing in a per-VM FIFO (VMs answer in order,
//! one answer per packet), so a VM never has to carry the chain position and an
//! untrusted VM never sees a shared-pool index: it gets an index into its *private*
//! region, the switch copies the frame in before and out after. A VM that writes is
//! never handed a buffer another reference can see (the switch copies a mirrored buffer
//! first). Backpressure, not loss: a VM with a full queue gets a backlog, and RX pauses
//! while any backlog is non-empty.
//!
//! At exit (inputs drained, `duration` elapsed, or the stop flag raised) RX stops, every
//! in-flight packet is finished, the VM threads are joined, and [`RunReport`] says
//! whether every buffer is back in every pool and whether rx = tx + drops.
//!
//! **Several switch threads** ([`SwitchConfig::switch_threads`], RSS): each runs the
//! same loop on its own core (next to the ports' NUMA node) over its own share of every
//! port ([`Port::split`]: a receive and a transmit queue of a multi-queue device, a
//! generator's share of the flows), with its own buffer cache, its own counter shard
//! ([`crate::stats::StatsShard`], and the program's rule counters per shard), and its
//! own ring pair to every VM thread, which serves all of them. No state is shared
//! between switch threads but the pool and the program handle, so nothing on the data
//! path is locked or contended. A flow stays on one thread as long as the device hashes
//! it to one queue. VMs run on their own threads then (inline VMs would need one
//! instance per switch thread), and VM processes need one switch thread.
//!
//! One file per stage: `engine` (the per-thread state and its poll loop), `rx`
//! (bursts in, classified), `dispatch` (counters, mirrors, the chain walk, verdicts),
//! `link` (handing packets to VMs and taking their answers, private copies),
//! `process` (VM processes coming and going), `tx` (batches out, drops) and
//! `generations` (reloads). This file builds a [`Switch`] and runs its threads.
//!
//! What it does not do yet: hot reload of the port or VM tables (a swapped [`Program`]
//! must keep them; in-flight packets finish on the program that classified them). Rule
//! and named counters belong to the [`Program`]; the final report shows the last
//! program's.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use netvm_packet::hash::{fields_hash, flow_hash};
use netvm_packet::Decoded;

use crate::control::ControlState;
use crate::external::{self, ExternalVm, ExternalVms, OnFailure};
use crate::layout::RegionConfig;
use crate::numa::{self, Placement, PlacementRequest, Topology};
use crate::policy::{BalanceKey, Hop, Program, ProgramHandle};
use crate::pool::{PacketPool, PoolCache};
use crate::port::{DeviceFrame, Port, RxBurst};
use crate::region::{Backing, HugepagePolicy, RegionError, SharedRegion};
use crate::ring::{Ring, RingConsumer, RingError, RingProducer};
use crate::stats::{
    DropReason, PortRow, RuleCounters, RuleRow, Stats, StatsShard, StatsSnapshot, VmRow,
};
use crate::vm::{self, Frame, NetworkFunction, Verdict};

mod dispatch;
mod engine;
mod generations;
mod link;
mod process;
mod rx;
mod tx;

pub use crate::vm::{IdlePolicy, MAX_BURST};
pub use process::DEFAULT_PROCESS_STALL;

use engine::Engine;
use generations::{ClassifiedBy, Generations};
use link::{Link, Pending, VmSlot, VmWorker};
use process::ProcessLink;
use rx::LentBurst;

/// Most switch threads one switch runs.
pub const MAX_SWITCH_THREADS: usize = 64;
/// Most VMs a packet may visit on one trip (bounds `to` loops).
pub const MAX_VISITS: usize = 32;

/// Where built-in VMs run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmMode {
    /// On the switch core, run to completion.
    Inline,
    /// Each on its own pinned thread, fed by SPSC rings.
    Thread,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchConfig {
    pub burst_len: usize,
    pub ring_slots: usize,
    pub buffer_count: usize,
    pub hugepages: HugepagePolicy,
    pub idle: IdlePolicy,
    pub vm_mode: VmMode,
    /// `--cores`; `None`: every core this process may use.
    pub cores: Option<Vec<usize>>,
    /// Stop after this long even if inputs are not drained.
    pub duration: Option<Duration>,
    /// Hold RX until every process VM has attached, or this long has passed (then the
    /// policy's `on_failure` applies to the missing ones).
    pub wait_for_processes: Option<Duration>,
    /// How long a VM process may leave packets waiting for it without answering before
    /// it is declared stalled and its overflow is dropped (RX pauses meanwhile).
    pub process_stall: Duration,
    /// Switch threads, each polling its own share of every port (a receive queue of a
    /// multi-queue device, [`Port::split`]) on its own core. 1: one thread polls all.
    pub switch_threads: usize,
}

impl Default for SwitchConfig {
    fn default() -> Self {
        SwitchConfig {
            burst_len: 32,
            ring_slots: 1024,
            buffer_count: 8192,
            hugepages: HugepagePolicy::Prefer,
            idle: IdlePolicy::Busy,
            vm_mode: VmMode::Inline,
            cores: None,
            duration: None,
            wait_for_processes: None,
            process_stall: DEFAULT_PROCESS_STALL,
            switch_threads: 1,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    #[error("the policy declares {expected} {what}, {found} were bound")]
    Count {
        what: &'static str,
        expected: usize,
        found: usize,
    },
    #[error("burst_len must be 1..={MAX_BURST}, not {0}")]
    BadBurst(usize),
    #[error("at most {max} {what} (a verdict names them in 8 bits)")]
    TooMany { what: &'static str, max: u32 },
    #[error("the shared region")]
    Region(#[from] RegionError),
    #[error("a VM ring")]
    Ring(#[from] RingError),
    #[error("the packet pool")]
    Pool(#[from] crate::pool::PoolError),
    #[error("placing threads")]
    Numa(#[from] crate::numa::NumaError),
    #[error("a VM thread panicked")]
    VmPanicked,
    #[error("a switch thread panicked")]
    SwitchPanicked,
    #[error("{threads} switch threads: {why}")]
    Threads { threads: usize, why: String },
    #[error("port `{port}` could not start on the shared pool")]
    Port {
        port: String,
        #[source]
        source: crate::port::PortError,
    },
}

/// An untrusted VM's own memory: a region holding only its private buffers and rings.
struct Private {
    region: Arc<SharedRegion>,
    pool: PacketPool,
}

/// A switch ready to run.
pub struct Switch {
    config: SwitchConfig,
    program: ProgramHandle,
    ports: Vec<Box<dyn Port>>,
    /// The ports of switch threads 1.. (each port's share, [`Port::split`]).
    split_ports: Vec<Vec<Box<dyn Port>>>,
    vms: Vec<Box<dyn NetworkFunction>>,
    region: Arc<SharedRegion>,
    pool: PacketPool,
    private: Vec<Option<Private>>,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
    placement: Placement,
    /// VMs run by other processes (`--vm NAME=process`).
    external: Arc<ExternalVms>,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub stats: StatsSnapshot,
    pub elapsed: Duration,
    pub buffers: usize,
    /// Buffers back in the shared pool at exit (must equal `buffers`).
    pub buffers_returned: usize,
    /// Untrusted VMs whose private pool is missing buffers at exit: (vm, missing).
    pub private_leaks: Vec<(String, usize)>,
    /// Problems that did not stop the run (pinning refused, a file not flushed).
    pub warnings: Vec<String>,
}

impl RunReport {
    /// Every buffer back and every packet accounted for.
    pub fn clean(&self) -> bool {
        self.buffers_returned == self.buffers
            && self.private_leaks.is_empty()
            && self.stats.balanced()
    }
}

impl Switch {
    /// Lay out memory, plan placement and check that the bindings match the program.
    /// `ports` and `vms` are in the program table's order.
    pub fn new(
        config: SwitchConfig,
        program: ProgramHandle,
        ports: Vec<Box<dyn Port>>,
        vms: Vec<Box<dyn NetworkFunction>>,
    ) -> Result<Switch, SwitchError> {
        let loaded = program.load();
        let table = &loaded.table;
        if ports.len() != table.port_names.len() {
            return Err(SwitchError::Count {
                what: "ports",
                expected: table.port_names.len(),
                found: ports.len(),
            });
        }
        if vms.len() != table.vm_names.len() {
            return Err(SwitchError::Count {
                what: "VMs",
                expected: table.vm_names.len(),
                found: vms.len(),
            });
        }
        if ports.len() > vm::wire::MAX_OUT_PORTS as usize {
            return Err(SwitchError::TooMany {
                what: "ports",
                max: vm::wire::MAX_OUT_PORTS,
            });
        }
        if vms.len() > vm::wire::MAX_TO_VMS as usize {
            return Err(SwitchError::TooMany {
                what: "VMs",
                max: vm::wire::MAX_TO_VMS,
            });
        }
        if !(1..=MAX_BURST).contains(&config.burst_len) {
            return Err(SwitchError::BadBurst(config.burst_len));
        }
        let threads = config.switch_threads;
        let refuse = |why: String| Err(SwitchError::Threads { threads, why });
        if threads == 0 || threads > MAX_SWITCH_THREADS {
            return refuse(format!("expected 1 to {MAX_SWITCH_THREADS}"));
        }
        if threads > 1 {
            if let Some(i) = vms.iter().position(|nf| nf.external()) {
                return refuse(format!(
                    "VM `{}` is a process, and VM processes attach to one switch thread \
                     (run with one switch thread)",
                    table.vm_names[i]
                ));
            }
            if config.vm_mode == VmMode::Inline && !vms.is_empty() {
                return refuse(
                    "VMs run inline on the switch core only with one switch thread; \
                     give them their own threads (--vm-mode thread)"
                        .into(),
                );
            }
            if loaded.shards() < threads {
                return refuse(format!(
                    "the program counts for {} (build it with Program::with_shards)",
                    loaded.shards()
                ));
            }
        }
        let region = SharedRegion::create(
            RegionConfig {
                buffer_count: config.buffer_count,
                // A ring pair per VM per switch thread: switch thread k, VM i uses
                // rings 2(kV + i) and 2(kV + i) + 1.
                ring_count: (2 * vms.len() * threads).max(1),
                ring_slots: config.ring_slots,
                counter_count: 0,
            },
            config.hugepages,
        )?;
        let pool = PacketPool::new(region.clone())?;
        // Ports whose device writes straight into pool buffers (dpdk) set up now, so a
        // failure stops the switch before it runs.
        let mut ports = ports;
        for (i, port) in ports.iter_mut().enumerate() {
            port.attach_pool(&pool)
                .map_err(|source| SwitchError::Port {
                    port: table.port_names[i].clone(),
                    source,
                })?;
        }
        let mut split_ports: Vec<Vec<Box<dyn Port>>> = (1..threads).map(|_| Vec::new()).collect();
        if threads > 1 {
            for (i, port) in ports.iter_mut().enumerate() {
                let shares = port.split(threads).map_err(|source| SwitchError::Threads {
                    threads,
                    why: format!("port `{}`: {source}", table.port_names[i]),
                })?;
                if shares.len() != threads - 1 {
                    return refuse(format!(
                        "port `{}` split into {} shares",
                        table.port_names[i],
                        shares.len() + 1
                    ));
                }
                for (k, share) in shares.into_iter().enumerate() {
                    split_ports[k].push(share);
                }
            }
        }
        let mut private = Vec::with_capacity(vms.len());
        for &trusted in &table.vm_trusted {
            private.push(if trusted {
                None
            } else {
                let region = SharedRegion::create_named(
                    RegionConfig {
                        buffer_count: threads * (config.ring_slots + 4 * MAX_BURST),
                        ring_count: 2 * threads,
                        ring_slots: config.ring_slots,
                        counter_count: 0,
                    },
                    // A private region that cannot get huge pages is slower, not wrong.
                    match config.hugepages {
                        HugepagePolicy::Off => HugepagePolicy::Off,
                        _ => HugepagePolicy::Prefer,
                    },
                    c"netvm-private",
                )?;
                let pool = PacketPool::new(region.clone())?;
                Some(Private { region, pool })
            });
        }
        let topology =
            Topology::detect().or_else(|_| numa::allowed_cpus().map(Topology::single_node))?;
        let cores = match &config.cores {
            Some(c) => Some(c.clone()),
            None => Some(numa::allowed_cpus()?),
        };
        let placement = numa::plan(
            &topology,
            &PlacementRequest {
                cores,
                switch_threads: threads,
                vm_threads: if config.vm_mode == VmMode::Thread {
                    vms.len()
                } else {
                    0
                },
                // Switch threads (and so their shares of the pool) go next to the
                // devices they poll.
                pool_node: ports
                    .iter()
                    .find_map(|p| p.numa_node())
                    .filter(|node| topology.nodes().iter().any(|n| n.id == *node)),
            },
        )?;
        let stats = Arc::new(Stats::sharded(ports.len(), vms.len(), threads));
        let mut external = Vec::new();
        for (i, nf) in vms.iter().enumerate() {
            if !nf.external() {
                continue;
            }
            // A trusted process maps the shared region; an untrusted one only its own.
            let (region, ring_in, ring_out) = match &private[i] {
                Some(p) => (p.region.clone(), 0, 1),
                None => (region.clone(), 2 * i, 2 * i + 1),
            };
            external.push(Arc::new(ExternalVm::new(
                table.vm_names[i].clone(),
                i,
                table.vm_trusted[i],
                region,
                ring_in,
                ring_out,
            )));
        }
        drop(loaded);
        Ok(Switch {
            config,
            program,
            ports,
            split_ports,
            vms,
            region,
            pool,
            private,
            stats,
            stop: Arc::new(AtomicBool::new(false)),
            placement,
            external: Arc::new(ExternalVms::new(external)),
        })
    }

    /// The VMs processes may attach to, for the control socket.
    pub fn external(&self) -> Arc<ExternalVms> {
        self.external.clone()
    }

    /// Everything the control socket needs to answer `attach` and `status` (set its
    /// `log` to see attach/detach events).
    pub fn control_state(&self) -> ControlState {
        ControlState {
            external: self.external.clone(),
            stats: self.stats.clone(),
            program: self.program.clone(),
            port_drivers: self.ports.iter().map(|p| p.describe()).collect(),
            vm_functions: self.vms.iter().map(|v| v.describe()).collect(),
            started: Instant::now(),
            log: None,
        }
    }

    /// What backs the shared region (print it at start-up).
    pub fn backing(&self) -> &Backing {
        self.region.backing()
    }

    /// Where the threads will run (print it at start-up).
    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    /// Live counters, readable while [`Switch::run`] runs on another thread.
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Raise it to stop the run (Ctrl-C); in-flight packets are still finished.
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Addresses of the shared region in this process.
    pub fn shared_region_range(&self) -> Range<usize> {
        let base = self.region.base_addr();
        base..base + self.region.len_bytes()
    }

    /// Addresses of VM `vm`'s private region (untrusted VMs only).
    pub fn private_region_range(&self, vm: usize) -> Option<Range<usize>> {
        let private = self.private.get(vm)?.as_ref()?;
        let base = private.region.base_addr();
        Some(base..base + private.region.len_bytes())
    }

    /// Names for the report, in table order.
    fn snapshot(&self, summaries: &[Option<String>], inline: bool) -> StatsSnapshot {
        snapshot(
            &self.stats,
            &self.program.load(),
            &self.ports,
            &self.vms,
            summaries,
            inline,
        )
    }

    /// Run until the inputs are drained, `duration` passes or the stop flag is raised.
    /// Switch thread 0 is the calling thread; threads 1.. are spawned for the run.
    pub fn run(mut self) -> Result<RunReport, SwitchError> {
        let start = Instant::now();
        let mut warnings = Vec::new();
        let threads = self.config.switch_threads;
        let switch_core = self.placement.threads.first().map(|t| t.core);
        if let Some(core) = switch_core {
            if let Err(e) = numa::pin_current_thread(core) {
                warnings.push(format!("{e}: {}", source_text(&e)));
            }
        }
        let program = self.program.load_full();
        let inline = self.config.vm_mode == VmMode::Inline;
        let shutdown = Arc::new(AtomicBool::new(false));
        let vm_count = self.vms.len();
        // Each switch thread's link to every VM, in VM order.
        let mut slots: Vec<Vec<VmSlot>> =
            (0..threads).map(|_| Vec::with_capacity(vm_count)).collect();
        let mut workers = Vec::new();
        // The placeholders of process VMs, given back to `self.vms` at the end.
        let mut externals = Vec::new();
        let vms = std::mem::take(&mut self.vms);
        for (i, nf) in vms.into_iter().enumerate() {
            let trusted = program.table.vm_trusted[i];
            let private = self.private[i]
                .as_ref()
                .map(|p| (p.pool.clone(), p.region.clone()));
            let writes = nf.writes();
            let hold = nf.hold();
            let copy_cache = || -> Result<Option<PoolCache>, SwitchError> {
                Ok(match &private {
                    Some((pool, _)) => Some(pool.cache(MAX_BURST)?),
                    None => None,
                })
            };
            let slot = |link: Link| -> Result<VmSlot, SwitchError> {
                Ok(VmSlot {
                    trusted,
                    writes,
                    hold,
                    copy_cache: copy_cache()?,
                    staged: Vec::with_capacity(MAX_BURST),
                    link,
                })
            };
            if nf.external() {
                // One switch thread (Switch::new refuses processes with more).
                let ext = self
                    .external
                    .vms
                    .iter()
                    .find(|e| e.vm == i)
                    .cloned()
                    .ok_or(SwitchError::VmPanicked)?;
                let ring_in = ext.region.ring(ext.ring_in)?;
                let ring_out = ext.region.ring(ext.ring_out)?;
                externals.push(nf);
                slots[0].push(slot(Link::Process(ProcessLink {
                    ext,
                    ring_in,
                    ring_out,
                    ends: None,
                    seen: 0,
                    closed: false,
                    backlog: VecDeque::new(),
                    last_progress: Instant::now(),
                    stalled: false,
                    fifo: VecDeque::with_capacity(self.config.ring_slots),
                }))?);
                continue;
            }
            if inline {
                // One switch thread (Switch::new refuses inline VMs with more).
                slots[0].push(slot(Link::Inline(nf))?);
                continue;
            }
            // A VM thread serves every switch thread, each over its own ring pair.
            let mut pairs = Vec::with_capacity(threads);
            for (k, engine_slots) in slots.iter_mut().enumerate() {
                let (ring_in, ring_out) = match &private {
                    Some((_, region)) => (region.ring(2 * k)?, region.ring(2 * k + 1)?),
                    None => {
                        let first = 2 * (k * vm_count + i);
                        (self.region.ring(first)?, self.region.ring(first + 1)?)
                    }
                };
                pairs.push((ring_in.consumer()?, ring_out.producer()?));
                engine_slots.push(slot(Link::Thread {
                    tx: ring_in.producer()?,
                    rx: ring_out.consumer()?,
                    fifo: VecDeque::with_capacity(self.config.ring_slots),
                    backlog: VecDeque::new(),
                })?);
            }
            let worker = VmWorker {
                nf,
                // An untrusted VM's worker holds its private pool and nothing else.
                pool: match &private {
                    Some((pool, _)) => pool.clone(),
                    None => self.pool.clone(),
                },
                pairs,
                shutdown: shutdown.clone(),
                idle: self.config.idle,
                core: self.placement.threads.get(threads + i).map(|t| t.core),
            };
            workers.push(
                thread::Builder::new()
                    .name(format!("netvm-vm{i}"))
                    .spawn(move || worker.run())
                    .map_err(|_| SwitchError::VmPanicked)?,
            );
        }
        let process_vms: Vec<usize> = slots[0]
            .iter()
            .enumerate()
            .filter(|(_, s)| matches!(s.link, Link::Process(_)))
            .map(|(i, _)| i)
            .collect();
        let port_sets = std::iter::once(std::mem::take(&mut self.ports))
            .chain(std::mem::take(&mut self.split_ports));
        let mut engines = Vec::with_capacity(threads);
        for (shard, (ports, vms)) in port_sets.zip(slots).enumerate() {
            let process_vms = if shard == 0 {
                process_vms.clone()
            } else {
                Vec::new()
            };
            let engine = Engine {
                gens: Generations::new(program.clone()),
                staged_vms: Vec::with_capacity(vm_count),
                process_stall: self.config.process_stall,
                rx_gate: self
                    .config
                    .wait_for_processes
                    .filter(|_| !process_vms.is_empty())
                    .map(|d| Instant::now() + d),
                process_vms,
                pool: self.pool.clone(),
                cache: self.pool.cache(2 * MAX_BURST)?,
                tx_batches: (0..ports.len())
                    .map(|_| Vec::with_capacity(MAX_BURST))
                    .collect(),
                port_has_tx: ports.iter().map(|p| p.has_tx()).collect(),
                port_domain: ports.iter().map(|p| p.device_domain()).collect(),
                device_batches: (0..ports.len())
                    .map(|_| Vec::with_capacity(MAX_BURST))
                    .collect(),
                lent: Box::new(LentBurst {
                    frames: [DeviceFrame::default(); MAX_BURST],
                    rules: [0; MAX_BURST],
                    dropped: [DeviceFrame::default(); MAX_BURST],
                    staged: [DeviceFrame::default(); MAX_BURST],
                    staged_port: [0; MAX_BURST],
                    general: [0; MAX_BURST],
                }),
                ports,
                vms,
                shard,
                stats: self.stats.shard(shard),
                burst_len: self.config.burst_len,
                ring_slots: self.config.ring_slots,
            };
            engines.push(engine);
        }
        let mut others = engines.split_off(1);
        let mut engine = engines.pop().ok_or(SwitchError::SwitchPanicked)?;
        let (handle, stop) = (&self.program, &*self.stop);
        let (duration, idle) = (self.config.duration, self.config.idle);
        let cores: Vec<Option<usize>> = (1..threads)
            .map(|k| self.placement.threads.get(k).map(|t| t.core))
            .collect();
        let mut panicked = false;
        thread::scope(|scope| {
            let mut running = Vec::new();
            for (mut other, core) in others.drain(..).zip(cores) {
                let spawned = thread::Builder::new()
                    .name(format!("netvm-switch{}", other.shard))
                    .spawn_scoped(scope, move || {
                        let pinned = core.map(numa::pin_current_thread);
                        other.poll_until_done(handle, stop, duration, idle, start);
                        let warning = match pinned {
                            Some(Err(e)) => Some(format!("{e}: {}", source_text(&e))),
                            _ => None,
                        };
                        (other, warning)
                    });
                match spawned {
                    Ok(h) => running.push(h),
                    Err(e) => {
                        // Its share of the ports goes unpolled: stop everyone.
                        warnings.push(format!("starting a switch thread: {e}"));
                        stop.store(true, Ordering::Relaxed);
                    }
                }
            }
            engine.poll_until_done(handle, stop, duration, idle, start);
            for h in running {
                match h.join() {
                    Ok((other, warning)) => {
                        warnings.extend(warning);
                        others.push(other);
                    }
                    Err(_) => panicked = true,
                }
            }
        });
        if panicked {
            return Err(SwitchError::SwitchPanicked);
        }
        // Processes still attached lose nothing now (every packet was answered, or
        // counted lost after the grace period); tell the control threads we are gone.
        let last = engine.gens.current.clone();
        engine.close_external(&last);
        self.external.engine.finished.store(true, Ordering::Release);

        shutdown.store(true, Ordering::Release);
        // A VM thread asleep on its doorbell sees the flag when woken.
        for slot in &engine.vms {
            if let Link::Thread { tx, .. } = &slot.link {
                tx.kick();
            }
        }
        let mut nfs: Vec<Option<Box<dyn NetworkFunction>>> = Vec::new();
        let mut joined = workers.into_iter();
        let mut externals = externals.into_iter();
        for slot in engine.vms.drain(..) {
            match slot.link {
                Link::Inline(nf) => nfs.push(Some(nf)),
                Link::Process(_) => nfs.push(externals.next()),
                Link::Thread { .. } => match joined.next().map(|w| w.join()) {
                    Some(Ok(nf)) => nfs.push(Some(nf)),
                    _ => nfs.push(None),
                },
            }
        }
        let mut summaries = Vec::new();
        for nf in nfs.iter_mut() {
            match nf {
                Some(nf) => {
                    if let Err(e) = nf.finish() {
                        warnings.push(e);
                    }
                    summaries.push(nf.summary());
                }
                None => {
                    warnings.push("a VM thread panicked".into());
                    summaries.push(None);
                }
            }
        }
        // Shares first: the port they were split from may close the device.
        for port in others.iter_mut().flat_map(|e| e.ports.iter_mut()) {
            if let Err(e) = port.finish() {
                warnings.push(format!("{e}"));
            }
        }
        drop(others);
        for port in engine.ports.iter_mut() {
            if let Err(e) = port.finish() {
                warnings.push(format!("{e}"));
            }
        }
        self.ports = std::mem::take(&mut engine.ports);
        self.vms = nfs.into_iter().flatten().collect();
        drop(engine);
        let stats = self.snapshot(&summaries, inline);
        let private_leaks = self
            .private
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                let p = p.as_ref()?;
                let missing = p.pool.capacity() - p.pool.available();
                (missing > 0).then(|| (stats.vms[i].name.clone(), missing))
            })
            .collect();
        Ok(RunReport {
            stats,
            elapsed: start.elapsed(),
            buffers: self.pool.capacity(),
            buffers_returned: self.pool.available(),
            private_leaks,
            warnings,
        })
    }
}

fn source_text(e: &dyn std::error::Error) -> String {
    e.source().map_or(String::new(), |s| s.to_string())
}

fn snapshot(
    stats: &Stats,
    program: &Program,
    ports: &[Box<dyn Port>],
    vms: &[Box<dyn NetworkFunction>],
    summaries: &[Option<String>],
    inline: bool,
) -> StatsSnapshot {
    let t = &program.table;
    StatsSnapshot {
        ports: (0..stats.port_count())
            .map(|i| {
                let c = stats.port(i);
                PortRow {
                    name: t.port_names.get(i).cloned().unwrap_or_default(),
                    driver: ports.get(i).map(|p| p.describe()).unwrap_or_default(),
                    rx_packets: c.rx_packets,
                    rx_bytes: c.rx_bytes,
                    tx_packets: c.tx_packets,
                    tx_bytes: c.tx_bytes,
                }
            })
            .collect(),
        vms: (0..stats.vm_count())
            .map(|i| {
                let c = stats.vm(i);
                VmRow {
                    name: t.vm_names.get(i).cloned().unwrap_or_default(),
                    function: vms.get(i).map(|v| v.describe()).unwrap_or_default(),
                    trusted: t.vm_trusted.get(i).copied().unwrap_or(false),
                    inline,
                    packets_in: c.packets_in,
                    mirrored_in: c.mirrored_in,
                    passed: c.passed,
                    dropped: c.dropped,
                    copied_bytes: c.copied_bytes,
                    summary: summaries.get(i).cloned().flatten(),
                }
            })
            .collect(),
        rules: program
            .rule_totals()
            .into_iter()
            .enumerate()
            .map(|(i, (packets, bytes))| RuleRow {
                name: t
                    .rules
                    .get(i)
                    .map_or_else(|| t.default.name.clone(), |r| r.name.clone()),
                packets,
                bytes,
            })
            .collect(),
        counters: t
            .counter_names
            .iter()
            .cloned()
            .zip(program.named_totals())
            .collect(),
        drops: DropReason::ALL
            .iter()
            .map(|&r| (r.name(), stats.drops(r)))
            .collect(),
        rx: stats.rx_total(),
        tx: stats.tx_total(),
        dropped: stats.drop_total(),
        mirrored: stats.mirrored(),
        mirrors_done: stats.mirrors_done(),
    }
}
