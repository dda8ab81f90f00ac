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

pub use crate::vm::{IdlePolicy, MAX_BURST};

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
                current: program.clone(),
                generation: 0,
                current_holds: 0,
                retired: Vec::new(),
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
        let last = engine.current.clone();
        engine.close_external(&last);
        self.external.engine.finished.store(true, Ordering::Release);

        shutdown.store(true, Ordering::Release);
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

/// What the switch remembers about a packet a VM thread holds.
#[derive(Debug, Clone, Copy)]
struct Pending {
    /// The packet's buffer in the shared pool.
    shared: u32,
    /// The index the VM was given: `shared` for trusted VMs, a private one otherwise.
    given: u32,
    rule: u32,
    /// Next hop of the chain once the VM is done.
    pos: u32,
    mirror: bool,
    /// The program the packet was classified by: it finishes that program's chain even
    /// if a reload installs another meanwhile.
    generation: u32,
}

/// The program that classified a packet, and its generation on this switch thread. It
/// goes with the packet from hop to hop: every hop of the chain, and the final `out` or
/// drop, is that program's, and each VM hop that queues the packet holds it alive
/// ([`Engine::hold`]) however many reloads come meanwhile.
#[derive(Clone, Copy)]
struct ClassifiedBy<'a> {
    program: &'a Program,
    generation: u32,
}

/// A VM run by another process: rings like a thread's, but the process may come and go.
struct ProcessLink {
    ext: Arc<ExternalVm>,
    ring_in: Ring,
    ring_out: Ring,
    /// Our ends while the VM is up.
    ends: Option<(RingProducer, RingConsumer)>,
    /// The last want word the engine acted on.
    seen: u64,
    /// Taken down for good (the switch is stopping); attaches are no longer taken.
    closed: bool,
    /// Packets the process holds, in the order it will answer.
    fifo: VecDeque<Pending>,
    /// Packets waiting for room in its ring (RX pauses meanwhile, as for threads).
    backlog: VecDeque<Pending>,
    /// When the process last answered while packets waited for it.
    last_progress: Instant,
    /// Declared stalled: packets for it are dropped (`vm_full`) until its ring is half
    /// empty again, so a process that stops draining cannot stall the switch.
    stalled: bool,
}

/// How long a VM process may leave a backlog waiting without answering anything before
/// the switch stops waiting for it and drops its overflow ([`SwitchConfig::process_stall`]).
pub const DEFAULT_PROCESS_STALL: Duration = Duration::from_millis(10);

enum Link {
    Inline(Box<dyn NetworkFunction>),
    Process(ProcessLink),
    Thread {
        tx: RingProducer,
        rx: RingConsumer,
        /// Packets the VM holds, in the order it will answer.
        fifo: VecDeque<Pending>,
        /// Packets waiting for room in the VM's queue.
        backlog: VecDeque<Pending>,
    },
}

struct VmSlot {
    trusted: bool,
    writes: bool,
    hold: Duration,
    /// Allocation cache over the VM's private pool (untrusted VMs).
    copy_cache: Option<PoolCache>,
    link: Link,
}

impl VmSlot {
    fn in_flight(&self) -> usize {
        match &self.link {
            Link::Inline(_) => 0,
            Link::Thread { fifo, backlog, .. } => fifo.len() + backlog.len(),
            Link::Process(p) => p.fifo.len() + p.backlog.len(),
        }
    }
}

impl Link {
    /// Packets a VM thread or process holds, in answer order.
    fn fifo_mut(&mut self) -> Option<&mut VecDeque<Pending>> {
        match self {
            Link::Thread { fifo, .. } => Some(fifo),
            Link::Process(p) => Some(&mut p.fifo),
            Link::Inline(_) => None,
        }
    }

    /// Whether the VM runs elsewhere and answers through a ring.
    fn queued(&self) -> bool {
        !matches!(self, Link::Inline(_))
    }

    /// Packets waiting for room in the VM's ring.
    fn backlog_mut(&mut self) -> Option<&mut VecDeque<Pending>> {
        match self {
            Link::Thread { backlog, .. } => Some(backlog),
            Link::Process(p) => Some(&mut p.backlog),
            Link::Inline(_) => None,
        }
    }

    fn backlog_len(&self) -> usize {
        match self {
            Link::Thread { backlog, .. } => backlog.len(),
            Link::Process(p) => p.backlog.len(),
            Link::Inline(_) => 0,
        }
    }
}

/// How long a stopping switch waits for VM processes to answer what they hold before it
/// counts those packets lost.
const PROCESS_GRACE: Duration = Duration::from_secs(2);

/// The switch thread's state.
struct Engine {
    /// The program new packets are classified by, and its generation.
    current: Arc<Program>,
    generation: u32,
    /// Packets queued to VMs under `current`.
    current_holds: usize,
    /// Programs replaced by a reload that queued packets still refer to:
    /// (generation, program, packets), freed when the count reaches 0.
    retired: Vec<(u32, Arc<Program>, usize)>,
    /// VMs run by processes (checked once per round for attach/detach).
    process_vms: Vec<usize>,
    process_stall: Duration,
    /// RX waits until every process VM is up or this instant passes.
    rx_gate: Option<Instant>,
    pool: PacketPool,
    cache: PoolCache,
    ports: Vec<Box<dyn Port>>,
    /// [`Port::has_tx`] of each port, asked once (not per packet).
    port_has_tx: Vec<bool>,
    tx_batches: Vec<Vec<u32>>,
    /// [`Port::device_domain`] of each port, asked once: frames received on a port of a
    /// domain are classified where the device put them, and those whose rule is just
    /// `out PORT` to a port of the same domain go there as they are (`device_batches`).
    port_domain: Vec<Option<usize>>,
    device_batches: Vec<Vec<DeviceFrame>>,
    /// [`rx_device`](Self::rx_device)'s per-burst arrays, kept so that no burst pays
    /// for initialising them.
    lent: Box<LentBurst>,
    vms: Vec<VmSlot>,
    /// Which switch thread this is: the counter shard it writes.
    shard: usize,
    stats: Arc<StatsShard>,
    burst_len: usize,
    ring_slots: usize,
}

/// One burst of frames a device lent the switch ([`Engine::rx_device`]).
struct LentBurst {
    frames: [DeviceFrame; MAX_BURST],
    /// Each frame's rule.
    rules: [u32; MAX_BURST],
    /// Frames whose rule is a plain `drop`, given straight back.
    dropped: [DeviceFrame; MAX_BURST],
    /// Frames that go out as they are, and the port each goes to.
    staged: [DeviceFrame; MAX_BURST],
    staged_port: [u32; MAX_BURST],
    /// Indices (into `frames`) of frames for the general path.
    general: [u8; MAX_BURST],
}

/// A burst's rule counts, added to a program's rule counters (one shard's) per run of
/// frames with the same rule rather than per frame: a burst is mostly one or two runs,
/// and consecutive load/store pairs on one counter would each wait for the one before.
struct RuleRuns<'a> {
    counters: &'a [Arc<RuleCounters>],
    rule: u32,
    packets: u64,
    bytes: u64,
}

impl<'a> RuleRuns<'a> {
    fn new(counters: &'a [Arc<RuleCounters>]) -> Self {
        RuleRuns {
            counters,
            rule: 0,
            packets: 0,
            bytes: 0,
        }
    }

    /// One frame of `bytes` bytes matched `rule` (an index into the counters).
    #[inline]
    fn add(&mut self, rule: u32, bytes: u64) {
        if rule != self.rule {
            self.finish();
            self.rule = rule;
        }
        self.packets += 1;
        self.bytes += bytes;
    }

    /// Add the current run to its counters.
    #[inline]
    fn finish(&mut self) {
        if self.packets > 0 {
            let rc = &self.counters[self.rule as usize];
            rc.packets.add(self.packets);
            rc.bytes.add(self.bytes);
            (self.packets, self.bytes) = (0, 0);
        }
    }
}

impl Drop for RuleRuns<'_> {
    /// The last run is added when the burst's count goes out of scope.
    fn drop(&mut self) {
        self.finish();
    }
}

/// Copy `len` bytes of buffer `from` (in `src`) into buffer `to` (in `dst`), which must
/// be exclusively held.
fn copy_buffer(src: &PacketPool, from: u32, dst: &PacketPool, to: u32) -> usize {
    // SAFETY: the switch holds a reference to `from` (nobody writes a buffer with more
    // than one reference, and a VM that holds it is not running on it: the switch only
    // copies buffers it has been handed back or has not sent yet), and `to` was just
    // allocated or returned to the switch, so it holds the only reference.
    unsafe {
        let Ok(bytes) = src.buf_data(from) else {
            return 0;
        };
        if dst.write_data(to, bytes).is_err() {
            return 0;
        }
        bytes.len()
    }
}

/// A copy made for a VM carries the packet's ingress port (a VM process reads it from the
/// buffer header). Copies back from a VM keep the original's port: a VM cannot change it.
fn carry_port(src: &PacketPool, from: u32, dst: &PacketPool, to: u32) {
    if let Ok(port) = src.port(from) {
        let _ = dst.set_port(to, port);
    }
}

impl Engine {
    fn poll_until_done(
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
                if !Arc::ptr_eq(&installed, &self.current) {
                    self.install(program.load_full());
                }
            }
            let prog = self.current.clone();
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
                if !stopping {
                    stopping = stop.load(Ordering::Relaxed)
                        || duration.is_some_and(|d| start.elapsed() >= d);
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

    /// One RX burst from `port`; returns packets received.
    fn rx(&mut self, prog: &Program, port: usize) -> usize {
        if let Some(domain) = self.port_domain[port] {
            return self.rx_device(prog, port, domain);
        }
        let mut indices = [0u32; MAX_BURST];
        let (n, oversize) = {
            let mut burst =
                RxBurst::new(&mut self.cache, &mut indices[..self.burst_len], port as u16);
            self.ports[port].rx_burst(&mut burst);
            (burst.len(), burst.oversize)
        };
        self.count_oversize(port, oversize);
        if n == 0 {
            return oversize as usize;
        }
        let mut rules = [0u32; MAX_BURST];
        let mut lens = [0usize; MAX_BURST];
        {
            let mut frames: [&[u8]; MAX_BURST] = [&[]; MAX_BURST];
            for (i, &index) in indices[..n].iter().enumerate() {
                // SAFETY: we allocated these buffers in this burst and hold their only
                // reference; nothing writes them until the frames array is dropped.
                frames[i] = unsafe { self.pool.buf_data(index) }.unwrap_or(&[]);
                lens[i] = frames[i].len();
            }
            prog.classifier
                .classify_burst(&frames[..n], port as u32, &mut rules[..n]);
        }
        let mut bytes = 0u64;
        let mut counted = RuleRuns::new(prog.rule_counters(self.shard));
        let default_rule = prog.table.rules.len() as u32;
        for i in 0..n {
            bytes += lens[i] as u64;
            let rule = rules[i].min(default_rule);
            counted.add(rule, lens[i] as u64);
            self.dispatch(prog, indices[i], rule);
        }
        let counters = &self.stats.ports[port];
        counters.rx_packets.add(n as u64);
        counters.rx_bytes.add(bytes);
        n + oversize as usize
    }

    /// Frames the port consumed as oversize: received, and dropped.
    fn count_oversize(&self, port: usize, oversize: u64) {
        if oversize > 0 {
            self.stats.ports[port].rx_packets.add(oversize);
            self.stats.count_drop(DropReason::Oversize, oversize);
        }
    }

    /// One RX burst from a port of device domain `domain`: the frames are classified
    /// where the device put them; a frame whose rule is just `out PORT` to a port of the
    /// same domain is batched for it as it is (no pool buffer, no header, no chain
    /// walk), one whose rule is just `drop` goes straight back; every other frame is adopted into a pool buffer and dispatched as
    /// [`rx`](Self::rx) does. Zero-copy either way: the device's buffers are the pool's.
    fn rx_device(&mut self, prog: &Program, port: usize, domain: usize) -> usize {
        let (n, oversize) = self.ports[port].rx_device(&mut self.lent.frames[..self.burst_len]);
        let n = n.min(self.burst_len);
        self.count_oversize(port, oversize);
        if n == 0 {
            return oversize as usize;
        }
        let lent = &mut *self.lent;
        {
            let mut bytes: [&[u8]; MAX_BURST] = [&[]; MAX_BURST];
            for (slot, frame) in bytes.iter_mut().zip(&lent.frames[..n]) {
                // SAFETY: the port lent us these frames for this burst and nobody writes
                // them until we give them back (after the slices are dropped).
                *slot = unsafe { frame.bytes() };
            }
            prog.classifier
                .classify_burst(&bytes[..n], port as u32, &mut lent.rules[..n]);
        }
        let default_rule = prog.table.rules.len() as u32;
        let mut total = 0u64;
        let mut general_n = 0;
        let mut dropped_n = 0;
        let mut staged_n = 0;
        {
            let mut counted = RuleRuns::new(prog.rule_counters(self.shard));
            for i in 0..n {
                let frame = lent.frames[i];
                let len = u64::from(frame.len);
                total += len;
                let rule = lent.rules[i].min(default_rule);
                lent.rules[i] = rule;
                counted.add(rule, len);
                // `Program` keeps both answers per rule: one load each, no lookup.
                match prog.direct_out(rule) {
                    Some(out) if self.port_domain.get(out) == Some(&Some(domain)) => {
                        lent.staged[staged_n] = frame;
                        lent.staged_port[staged_n] = out as u32;
                        staged_n += 1;
                    }
                    _ if prog.plain_drop(rule) => {
                        lent.dropped[dropped_n] = frame;
                        dropped_n += 1;
                    }
                    _ => {
                        lent.general[general_n] = i as u8;
                        general_n += 1;
                    }
                }
            }
        }
        // The frames that go out as they are join their port's batch a run of one port at
        // a time (a burst is mostly one run), not one push per frame.
        let mut k = 0;
        while k < staged_n {
            let out = lent.staged_port[k];
            let run = lent.staged_port[k..staged_n]
                .iter()
                .take_while(|&&p| p == out)
                .count();
            let out = out as usize;
            let batch = &mut self.device_batches[out];
            if batch.len() + run > MAX_BURST {
                Self::send_device_batch(&mut self.ports, &self.stats, batch, out);
            }
            batch.extend_from_slice(&lent.staged[k..k + run]);
            if batch.len() >= self.burst_len {
                Self::send_device_batch(&mut self.ports, &self.stats, batch, out);
            }
            k += run;
        }
        if dropped_n > 0 {
            self.ports[port].free_device(&self.lent.dropped[..dropped_n]);
            self.stats.count_drop(DropReason::Policy, dropped_n as u64);
        }
        for k in 0..general_n {
            let i = self.lent.general[k] as usize;
            let (frame, rule) = (self.lent.frames[i], self.lent.rules[i]);
            let mut held = [0u32; 1];
            let adopted = {
                let mut burst = RxBurst::new(&mut self.cache, &mut held, port as u16);
                self.ports[port].adopt_device(frame, &mut burst) && burst.len() == 1
            };
            if adopted {
                self.dispatch(prog, held[0], rule);
            } else {
                self.stats.count_drop(DropReason::NoBuffer, 1);
            }
        }
        let counters = &self.stats.ports[port];
        counters.rx_packets.add(n as u64);
        counters.rx_bytes.add(total);
        n + oversize as usize
    }

    /// A classified packet in pool buffer `index` to where its rule sends it.
    #[inline]
    fn dispatch(&mut self, prog: &Program, index: u32, rule: u32) {
        if let Some(port) = prog.direct_out(rule) {
            // All the rule does is `out PORT`: straight into that port's batch.
            return self.tx(port, index);
        }
        let action = prog.table.action(rule);
        for &c in &action.counters {
            prog.named_counters(self.shard)[c].add(1);
        }
        // `prog` is the program this burst loaded: the current one.
        let by = ClassifiedBy {
            program: prog,
            generation: self.generation,
        };
        for &m in &action.mirrors {
            if self.pool.clone_ref(index).is_ok() {
                self.stats.mirrored.add(1);
                self.visit(by, m, index, rule, 0, true);
            }
        }
        self.steer(by, index, rule, 0, None);
    }

    /// Send the device frames batched for `port`.
    fn flush_device(&mut self, port: usize) {
        let batch = &mut self.device_batches[port];
        if !batch.is_empty() {
            Self::send_device_batch(&mut self.ports, &self.stats, batch, port);
        }
    }

    /// Send `batch` (device frames for `port`) and empty it; what the port did not send
    /// is counted as a TX error. (Fields, not `&mut self`: the RX loop calls this while
    /// it holds its burst scratch.)
    fn send_device_batch(
        ports: &mut [Box<dyn Port>],
        stats: &StatsShard,
        batch: &mut Vec<DeviceFrame>,
        port: usize,
    ) {
        let (sent, bytes) = ports[port].tx_device(batch);
        let sent = sent.min(batch.len());
        if sent < batch.len() {
            stats.count_drop(DropReason::TxError, (batch.len() - sent) as u64);
        }
        let counters = &stats.ports[port];
        counters.tx_packets.add(sent as u64);
        counters.tx_bytes.add(bytes);
        batch.clear();
    }

    /// Walk the packet down the chain of the program that classified it (`by`) from hop
    /// `pos` (or first into `to_vm`) until it leaves, is dropped or is queued to a VM
    /// thread.
    fn steer(
        &mut self,
        by: ClassifiedBy<'_>,
        mut index: u32,
        rule: u32,
        mut pos: u32,
        mut to_vm: Option<usize>,
    ) {
        let mut visits = 0;
        loop {
            let vm = match to_vm.take() {
                Some(vm) => vm,
                None => match by.program.chain(rule).get(pos as usize) {
                    None => return self.drop(index, DropReason::ChainEnd),
                    Some(Hop::Drop) => return self.drop(index, DropReason::Policy),
                    Some(Hop::Out(port)) => return self.tx(*port, index),
                    Some(Hop::Vm(vm)) => {
                        pos += 1;
                        *vm
                    }
                    Some(Hop::Balance { group, key }) => {
                        pos += 1;
                        self.pick(by.program, *group, key, index)
                    }
                },
            };
            visits += 1;
            if visits > MAX_VISITS || vm >= self.vms.len() {
                return self.drop(index, DropReason::BadVerdict);
            }
            let Some((back, verdict)) = self.visit(by, vm, index, rule, pos, false) else {
                return;
            };
            index = back;
            match verdict {
                Verdict::Next => {}
                Verdict::Drop => return self.drop(index, DropReason::Vm),
                Verdict::Out(port) => return self.tx(port as usize, index),
                Verdict::To(vm) => to_vm = Some(vm as usize),
            }
        }
    }

    /// The group member for this packet: a symmetric hash of its flow or fields.
    fn pick(&self, prog: &Program, group: usize, key: &BalanceKey, index: u32) -> usize {
        let members = &prog.table.groups[group];
        // SAFETY: the switch holds a reference to `index` and no VM is running on it
        // (it is between hops); we only read.
        let frame = unsafe { self.pool.buf_data(index) }.unwrap_or(&[]);
        let decoded = Decoded::new(frame);
        let hash = match key {
            BalanceKey::Flow => flow_hash(&decoded),
            BalanceKey::Fields(fields) => {
                let mut values = [None; 8];
                for (v, f) in values.iter_mut().zip(fields) {
                    *v = decoded.field(*f);
                }
                fields_hash(&values[..fields.len().min(8)])
            }
        };
        let picked = members[hash as usize % members.len()];
        if !self.is_down(picked) {
            return picked;
        }
        // A member's process is down: spread over the live ones. With every member
        // down, the packet meets `on_failure`: bypass only if every member says so.
        let live = members.iter().filter(|&&m| !self.is_down(m)).count();
        if live > 0 {
            let nth = hash as usize % live;
            return members
                .iter()
                .copied()
                .filter(|&m| !self.is_down(m))
                .nth(nth)
                .unwrap_or(picked);
        }
        let on_failure = |m: usize| prog.table.vm_on_failure.get(m).copied().unwrap_or_default();
        members
            .iter()
            .copied()
            .find(|&m| on_failure(m) == OnFailure::Drop)
            .unwrap_or(picked)
    }

    /// Whether `vm` is a process VM with no process attached.
    fn is_down(&self, vm: usize) -> bool {
        matches!(self.vms.get(vm).map(|v| &v.link), Some(Link::Process(p)) if p.ends.is_none())
    }

    fn drop(&mut self, index: u32, reason: DropReason) {
        self.stats.count_drop(reason, 1);
        let _ = self.cache.free(index);
    }

    fn tx(&mut self, port: usize, index: u32) {
        match self.port_has_tx.get(port) {
            None => return self.drop(index, DropReason::BadVerdict),
            Some(false) => return self.drop(index, DropReason::NoTx),
            Some(true) => {}
        }
        self.tx_batches[port].push(index);
        if self.tx_batches[port].len() >= self.burst_len {
            self.flush(port);
        }
    }

    fn flush(&mut self, port: usize) {
        self.flush_device(port);
        let mut batch = std::mem::take(&mut self.tx_batches[port]);
        if batch.is_empty() {
            self.tx_batches[port] = batch;
            return;
        }
        // SAFETY: the switch holds one reference to every batched buffer, of the pool its
        // cache draws from, and hands them over here; nobody writes a buffer it holds a
        // reference to while it is batched (VMs are done with it, and a mirror's holder
        // only reads a buffer with two references).
        let (sent, bytes) = unsafe { self.ports[port].tx_buffers(&mut self.cache, &batch) };
        let sent = sent.min(batch.len());
        if sent < batch.len() {
            self.stats
                .count_drop(DropReason::TxError, (batch.len() - sent) as u64);
        }
        let counters = &self.stats.ports[port];
        counters.tx_packets.add(sent as u64);
        counters.tx_bytes.add(bytes);
        batch.clear();
        self.tx_batches[port] = batch;
    }

    /// A private copy of `index` in the shared pool (for a VM that writes a buffer
    /// someone else also references). Frees our reference to the original.
    fn unshare(&mut self, index: u32) -> Option<u32> {
        let copy = self.cache.alloc()?;
        copy_buffer(&self.pool, index, &self.pool, copy);
        carry_port(&self.pool, index, &self.pool, copy);
        let _ = self.cache.free(index);
        Some(copy)
    }

    /// Hand the packet to VM `vm`. Inline: run it and return the buffer and verdict.
    /// Thread: queue it under its program's generation (`by`) and return `None` (the
    /// answer comes through `drain_vm`).
    fn visit(
        &mut self,
        by: ClassifiedBy<'_>,
        vm: usize,
        mut index: u32,
        rule: u32,
        pos: u32,
        mirror: bool,
    ) -> Option<(u32, Verdict)> {
        if let Link::Process(p) = &self.vms[vm].link {
            if p.ends.is_none() {
                let mut on_failure = by
                    .program
                    .table
                    .vm_on_failure
                    .get(vm)
                    .copied()
                    .unwrap_or_default();
                if on_failure == OnFailure::Bypass
                    && by.program.chain(rule).get(pos as usize).is_none()
                {
                    // Nothing after the VM to go on to (`to VM`, or the last hop): the
                    // packet is lost to the down VM, not to the chain's end.
                    on_failure = OnFailure::Drop;
                }
                return self.visit_down(on_failure, index, mirror);
            }
        }
        let counters = &self.stats.vms[vm];
        if mirror {
            counters.mirrored_in.add(1);
        } else {
            counters.packets_in.add(1);
        }
        let slot = &self.vms[vm];
        if slot.trusted && slot.writes && self.pool.refcount(index).unwrap_or(0) > 1 {
            match self.unshare(index) {
                Some(copy) => index = copy,
                None => {
                    let _ = self.cache.free(index);
                    if mirror {
                        // A mirror copy is an extra reference, not a packet: settle it.
                        self.stats.mirrors_done.add(1);
                    } else {
                        self.stats.count_drop(DropReason::NoBuffer, 1);
                    }
                    return None;
                }
            }
        }
        let pending = Pending {
            shared: index,
            given: index,
            rule,
            pos,
            mirror,
            generation: by.generation,
        };
        if matches!(self.vms[vm].link, Link::Inline(_)) {
            let (index, verdict) = self.run_inline(vm, index, mirror);
            let pending = Pending {
                shared: index,
                given: index,
                ..pending
            };
            return self.answered(vm, pending, verdict);
        }
        if let Link::Process(p) = &self.vms[vm].link {
            if p.stalled || p.backlog.len() >= self.ring_slots {
                // Stalled, or as far behind as a whole ring: drop, never wait.
                if mirror {
                    self.stats.mirrors_done.add(1);
                } else {
                    self.stats.count_drop(DropReason::VmFull, 1);
                }
                let _ = self.cache.free(pending.shared);
                return None;
            }
        }
        // From here the packet is queued to the VM (its ring or its backlog).
        self.hold(pending.generation);
        let fits = self.vms[vm].link.backlog_len() == 0;
        if !(fits && self.send(vm, pending)) {
            if let Link::Process(p) = &mut self.vms[vm].link {
                if p.backlog.is_empty() {
                    p.last_progress = Instant::now();
                }
            }
            if let Some(backlog) = self.vms[vm].link.backlog_mut() {
                backlog.push_back(pending);
            }
        }
        None
    }

    /// A packet for a VM whose process is down: the policy's `on_failure` decides.
    fn visit_down(
        &mut self,
        on_failure: OnFailure,
        index: u32,
        mirror: bool,
    ) -> Option<(u32, Verdict)> {
        if mirror {
            // A down VM gets no copy; the extra reference is settled.
            self.stats.mirrors_done.add(1);
            let _ = self.cache.free(index);
            return None;
        }
        match on_failure {
            OnFailure::Bypass => Some((index, Verdict::Next)),
            OnFailure::Drop => {
                self.drop(index, DropReason::VmDown);
                None
            }
        }
    }

    /// Act on attach/detach requests from the control socket (one load per process VM).
    fn sync_external(&mut self, prog: &Program) {
        for i in 0..self.process_vms.len() {
            let vm = self.process_vms[i];
            let Link::Process(p) = &mut self.vms[vm].link else {
                continue;
            };
            let want = p.ext.want();
            if want == p.seen || p.closed {
                continue;
            }
            let up = external::word_up(want);
            if up && p.ends.is_none() {
                // SAFETY: we hold no end of either ring (ends is None), and the control
                // thread asks for "up" only for a new owner, after the previous owner's
                // "down" was acknowledged here: its process has exited or been cut off.
                let reset = unsafe { p.ring_in.reset().and(p.ring_out.reset()) };
                let claimed =
                    reset.and_then(|()| Ok((p.ring_in.producer()?, p.ring_out.consumer()?)));
                if let Ok(ends) = claimed {
                    p.ends = Some(ends);
                    let writes = p.ext.writes();
                    self.vms[vm].writes = writes;
                }
            } else if !up && p.ends.is_some() {
                self.take_down(prog, vm);
            }
            if let Link::Process(p) = &mut self.vms[vm].link {
                p.seen = want;
                p.ext.acknowledge(want);
            }
        }
    }

    /// A VM process is gone: take the answers it already wrote, then free every packet
    /// it still held (counted lost) and its private copies, and drop our ring ends.
    fn take_down(&mut self, prog: &Program, vm: usize) {
        // Bounded: a cut-off process that is still alive cannot keep us here.
        for _ in 0..=self.ring_slots / MAX_BURST {
            if self.drain_vm(prog, vm) == 0 {
                break;
            }
        }
        let Link::Process(p) = &mut self.vms[vm].link else {
            return;
        };
        p.ends = None;
        p.stalled = false;
        // Packets still waiting to be sent never reached it: dropped as for a down VM.
        let waiting: Vec<Pending> = p.backlog.drain(..).collect();
        for pending in waiting {
            self.release(pending.generation);
            if pending.mirror {
                self.stats.mirrors_done.add(1);
            } else {
                self.stats.count_drop(DropReason::VmDown, 1);
            }
            let _ = self.cache.free(pending.shared);
        }
        let Link::Process(p) = &mut self.vms[vm].link else {
            return;
        };
        let lost: Vec<Pending> = p.fifo.drain(..).collect();
        for pending in lost {
            self.release(pending.generation);
            if let Some(cache) = &mut self.vms[vm].copy_cache {
                let _ = cache.free(pending.given);
            }
            if pending.mirror {
                self.stats.mirrors_done.add(1);
            } else {
                self.stats.count_drop(DropReason::VmLost, 1);
            }
            let _ = self.cache.free(pending.shared);
        }
    }

    /// A process that has left its backlog waiting for `process_stall` without an
    /// answer is declared stalled: its backlog is dropped and so is what comes for it,
    /// until its ring is half empty again. Reads the clock only while a backlog waits.
    fn check_stalls(&mut self) {
        let mut now = None;
        for i in 0..self.process_vms.len() {
            let vm = self.process_vms[i];
            let ring_slots = self.ring_slots;
            let Link::Process(p) = &mut self.vms[vm].link else {
                continue;
            };
            if p.stalled {
                if p.fifo.len() <= ring_slots / 2 {
                    p.stalled = false;
                }
                continue;
            }
            if p.backlog.is_empty() {
                continue;
            }
            let now = *now.get_or_insert_with(Instant::now);
            if now.duration_since(p.last_progress) < self.process_stall {
                continue;
            }
            p.stalled = true;
            let dropped: Vec<Pending> = p.backlog.drain(..).collect();
            for pending in dropped {
                self.release(pending.generation);
                if pending.mirror {
                    self.stats.mirrors_done.add(1);
                } else {
                    self.stats.count_drop(DropReason::VmFull, 1);
                }
                let _ = self.cache.free(pending.shared);
            }
        }
    }

    /// A reload installed `program`: packets queued from now on belong to it; the one it
    /// replaces stays alive while queued packets still need its chains.
    fn install(&mut self, program: Arc<Program>) {
        let old = std::mem::replace(&mut self.current, program);
        if self.current_holds > 0 {
            self.retired
                .push((self.generation, old, self.current_holds));
        }
        self.generation = self.generation.wrapping_add(1);
        self.current_holds = 0;
    }

    /// A packet classified by program `generation` was queued to a VM. A retired
    /// generation is still listed here: the packet's previous hold is released only
    /// after this hop ([`drain_vm`](Self::drain_vm)).
    fn hold(&mut self, generation: u32) {
        if generation == self.generation {
            self.current_holds += 1;
        } else if let Some(r) = self.retired.iter_mut().find(|r| r.0 == generation) {
            r.2 += 1;
        }
    }

    /// That packet is done with its VM hop (and has taken its next one). A retired
    /// program goes with its last packet.
    fn release(&mut self, generation: u32) {
        if generation == self.generation {
            self.current_holds = self.current_holds.saturating_sub(1);
            return;
        }
        let Some(at) = self.retired.iter().position(|r| r.0 == generation) else {
            return;
        };
        let entry = &mut self.retired[at];
        entry.2 = entry.2.saturating_sub(1);
        if entry.2 == 0 {
            self.retired.swap_remove(at);
        }
    }

    /// The program of retired generation `generation`, while queued packets hold it.
    fn retired_program(&self, generation: u32) -> Option<Arc<Program>> {
        if generation == self.generation {
            return None;
        }
        let entry = self.retired.iter().find(|r| r.0 == generation)?;
        Some(entry.1.clone())
    }

    /// Whether every process VM is attached.
    fn processes_up(&self) -> bool {
        self.process_vms.iter().all(|&vm| match &self.vms[vm].link {
            Link::Process(p) => p.ends.is_some(),
            _ => true,
        })
    }

    /// The switch is stopping: take every process VM down for good.
    fn close_external(&mut self, prog: &Program) {
        for i in 0..self.process_vms.len() {
            let vm = self.process_vms[i];
            self.take_down(prog, vm);
            if let Link::Process(p) = &mut self.vms[vm].link {
                p.closed = true;
                let want = p.ext.want();
                p.ext.acknowledge(external::word(want >> 1, false));
            }
        }
    }

    /// Run an inline VM on buffer `index`; an untrusted VM works on a private copy,
    /// copied back unless this is a mirror visit. Returns the packet's buffer (a fresh
    /// one when the original was shared and had to be copied) and the verdict.
    fn run_inline(&mut self, vm: usize, index: u32, mirror: bool) -> (u32, Option<Verdict>) {
        let slot = &mut self.vms[vm];
        let Link::Inline(nf) = &mut slot.link else {
            return (index, None);
        };
        let deadline = (!slot.hold.is_zero()).then(|| Instant::now() + slot.hold);
        let mut index = index;
        let verdict = match &mut slot.copy_cache {
            None => {
                let exclusive = self.pool.refcount(index).unwrap_or(0) == 1;
                // SAFETY: the switch holds a reference to `index`; when it is the only
                // one the VM may write (exclusive), otherwise it only reads.
                unsafe {
                    if exclusive {
                        self.pool.buf_data_mut(index).ok().map(|bytes| {
                            let mut frame = Frame::exclusive(bytes);
                            let verdict = nf.process(&mut frame);
                            if frame.written() {
                                let _ = self.pool.forget_content(index);
                            }
                            verdict
                        })
                    } else {
                        self.pool
                            .buf_data(index)
                            .ok()
                            .map(|bytes| nf.process(&mut Frame::shared(bytes)))
                    }
                }
            }
            Some(cache) => match cache.alloc() {
                None => None,
                Some(copy) => {
                    let private = cache.pool().clone();
                    let tag = self.pool.content_tag(index).unwrap_or(0);
                    let mut copied = copy_buffer(&self.pool, index, &private, copy);
                    let mut written = false;
                    // SAFETY: `copy` was just allocated from the VM's private pool; the
                    // switch holds its only reference.
                    let verdict = unsafe { private.buf_data_mut(copy) }.ok().map(|bytes| {
                        let mut frame = Frame::exclusive(bytes);
                        let verdict = nf.process(&mut frame);
                        written = frame.written();
                        verdict
                    });
                    if !mirror {
                        if self.pool.refcount(index).unwrap_or(0) > 1 {
                            if let Some(fresh) = self.cache.alloc() {
                                let _ = self.cache.free(index);
                                index = fresh;
                            }
                        }
                        if self.pool.refcount(index).unwrap_or(0) == 1 {
                            let back = copy_buffer(&private, copy, &self.pool, index);
                            copied += back;
                            if !written && back > 0 {
                                // The copy brought back the very bytes it took, so
                                // what the tag said of them still holds.
                                let _ = self.pool.set_content_tag(index, tag);
                            }
                        }
                    }
                    let _ = cache.free(copy);
                    self.stats.vms[vm].copied_bytes.add(copied as u64);
                    verdict
                }
            },
        };
        if let Some(deadline) = deadline {
            while Instant::now() < deadline {
                std::hint::spin_loop();
            }
        }
        (index, verdict)
    }

    /// Queue a pending packet on a VM thread's ring; `false` when there is no room.
    fn send(&mut self, vm: usize, mut pending: Pending) -> bool {
        let ring_slots = self.ring_slots;
        let slot = &mut self.vms[vm];
        let (tx, fifo) = match &mut slot.link {
            Link::Thread { tx, fifo, .. } => (tx, fifo),
            Link::Process(ProcessLink {
                ends: Some((tx, _)),
                fifo,
                ..
            }) => (tx, fifo),
            _ => return false,
        };
        if fifo.len() >= ring_slots {
            return false;
        }
        if let Some(cache) = &mut slot.copy_cache {
            let Some(copy) = cache.alloc() else {
                return false;
            };
            let bytes = copy_buffer(&self.pool, pending.shared, cache.pool(), copy);
            carry_port(&self.pool, pending.shared, cache.pool(), copy);
            self.stats.vms[vm].copied_bytes.add(bytes as u64);
            pending.given = copy;
        }
        if !tx.enqueue(pending.given) {
            if let Some(cache) = &mut slot.copy_cache {
                let _ = cache.free(pending.given);
            }
            return false;
        }
        fifo.push_back(pending);
        true
    }

    /// Take a VM thread's answers; returns how many.
    fn drain_vm(&mut self, prog: &Program, vm: usize) -> usize {
        let mut answers = [0u32; MAX_BURST];
        let n = match &mut self.vms[vm].link {
            Link::Thread { rx, .. } => rx.dequeue_burst(&mut answers),
            Link::Process(ProcessLink {
                ends: Some((_, rx)),
                ..
            }) => rx.dequeue_burst(&mut answers),
            _ => 0,
        };
        if n > 0 {
            if let Link::Process(p) = &mut self.vms[vm].link {
                p.last_progress = Instant::now();
            }
        }
        for &answer in &answers[..n] {
            let (given, verdict) = vm::wire::decode(answer);
            let Some(fifo) = self.vms[vm].link.fifo_mut() else {
                break;
            };
            let Some(pending) = fifo.pop_front() else {
                // An answer for nothing we sent: ignore it rather than free a stranger.
                continue;
            };
            // The FIFO, not the VM, says which buffer this is; a VM that answers with
            // another index has its verdict ignored.
            let verdict = (given == pending.given).then_some(verdict);
            // Classified before a reload: the packet finishes the old program's chain.
            let retired = self.retired_program(pending.generation);
            if let Some((index, verdict)) = self.answered(vm, pending, verdict) {
                let by = match &retired {
                    Some(old) => ClassifiedBy {
                        program: old,
                        generation: pending.generation,
                    },
                    None => ClassifiedBy {
                        program: prog,
                        generation: self.generation,
                    },
                };
                self.apply(by, index, pending, verdict);
            }
            // Only now: a next VM hop has taken its own hold, so a retired program its
            // chain still needs is not freed in between.
            self.release(pending.generation);
        }
        // Room freed: move the backlog in.
        loop {
            let next = self.vms[vm]
                .link
                .backlog_mut()
                .and_then(|b| b.front().copied());
            let Some(pending) = next else { break };
            if !self.send(vm, pending) {
                break;
            }
            if let Some(backlog) = self.vms[vm].link.backlog_mut() {
                backlog.pop_front();
            }
        }
        n
    }

    /// A VM is done with `pending`: copy an untrusted VM's private frame back, settle
    /// mirrors and count the verdict. Returns the shared buffer and verdict to act on.
    fn answered(
        &mut self,
        vm: usize,
        pending: Pending,
        verdict: Option<Verdict>,
    ) -> Option<(u32, Verdict)> {
        let mut index = pending.shared;
        // Only a VM thread holds a private copy here (inline visits copied back already).
        // Compare kinds, not indices: a private index may equal a shared one.
        let thread = self.vms[vm].link.queued();
        if thread && self.vms[vm].copy_cache.is_some() {
            // Untrusted: copy the (possibly rewritten) frame back, then free the copy.
            if let Some(cache) = &mut self.vms[vm].copy_cache {
                let private = cache.pool().clone();
                if !pending.mirror {
                    if self.pool.refcount(index).unwrap_or(0) > 1 {
                        if let Some(copy) = self.cache.alloc() {
                            let _ = self.cache.free(index);
                            index = copy;
                        }
                    }
                    if self.pool.refcount(index).unwrap_or(0) == 1 {
                        let bytes = copy_buffer(&private, pending.given, &self.pool, index);
                        self.stats.vms[vm].copied_bytes.add(bytes as u64);
                    }
                }
                let _ = cache.free(pending.given);
            }
        }
        let counters = &self.stats.vms[vm];
        let verdict = verdict.unwrap_or(Verdict::Drop);
        if verdict == Verdict::Drop {
            counters.dropped.add(1);
        } else {
            counters.passed.add(1);
        }
        if pending.mirror {
            self.stats.mirrors_done.add(1);
            let _ = self.cache.free(index);
            return None;
        }
        Some((index, verdict))
    }

    fn apply(&mut self, by: ClassifiedBy<'_>, index: u32, pending: Pending, verdict: Verdict) {
        match verdict {
            Verdict::Next => self.steer(by, index, pending.rule, pending.pos, None),
            Verdict::Drop => self.drop(index, DropReason::Vm),
            Verdict::Out(port) => self.tx(port as usize, index),
            Verdict::To(vm) => self.steer(by, index, pending.rule, pending.pos, Some(vm as usize)),
        }
    }
}

/// A VM on its own thread: read indices, run the function, answer in order, over one
/// ring pair per switch thread.
struct VmWorker {
    nf: Box<dyn NetworkFunction>,
    /// The shared pool for a trusted VM, the VM's private pool for an untrusted one.
    pool: PacketPool,
    /// (packets in, answers out), one pair per switch thread.
    pairs: Vec<(RingConsumer, RingProducer)>,
    shutdown: Arc<AtomicBool>,
    idle: IdlePolicy,
    core: Option<usize>,
}

impl VmWorker {
    fn run(mut self) -> Box<dyn NetworkFunction> {
        if let Some(core) = self.core {
            // Running unpinned is slower, not wrong; the switch reports its own pinning.
            let _ = numa::pin_current_thread(core);
        }
        let shutdown = self.shutdown.clone();
        let mut pairs: Vec<(&mut RingConsumer, &mut RingProducer)> =
            self.pairs.iter_mut().map(|(rx, tx)| (rx, tx)).collect();
        vm::serve_pairs(self.nf.as_mut(), &self.pool, &mut pairs, self.idle, || {
            shutdown.load(Ordering::Acquire)
        });
        self.nf
    }
}
