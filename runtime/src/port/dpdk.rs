//! `dpdk:DEVICE[,ARG=VALUE...]`: a DPDK ethdev as a switch port, receiving into and
//! sending from the shared pool's own buffers (feature `dpdk`).
//!
//! **Syntax.** `DEVICE` is a PCI address (`0000:01:00.0`, or `01:00.0`) or a DPDK virtual
//! device name (`net_null0`, `net_ring0`, `net_pcap0`, `net_af_packet0`, `net_tap0`,
//! `net_memif0`, `net_vhost0`, ...). The comma-separated `KEY=VALUE` items after it are
//! the device's own arguments (`net_pcap0,rx_pcap=in.pcap,tx_pcap=out.pcap`,
//! `net_af_packet0,iface=veth0`), passed to DPDK as written, except the keys netvm keeps
//! for itself: `rxq=N` and `txq=N` (queues to open, default 1). A device already created
//! through `--eal '--vdev=...'` or `-a` is used as it is.
//!
//! **EAL.** DPDK's environment is initialised once per process, by the first `dpdk` port
//! opened, with defaults for a machine without a NIC: `-l` the first allowed CPU (the
//! switch threads keep their own placement: the affinity the EAL sets is undone),
//! `--no-pci` unless that port is a PCI address (then `-a ADDRESS`), `--in-memory` on
//! huge pages when at least 16 are free, otherwise `--no-huge -m 256 --no-shconf`,
//! `--file-prefix=netvm-PID` (several instances side by side), `--no-telemetry` and
//! warnings-only logging. [`set_eal_args`] (`netvm run --eal '...'`) appends arguments and
//! suppresses the default each one replaces.
//!
//! **Zero copy.** The device's receive mempool is built over buffers of netvm's shared
//! pool: a DPDK "pinned external buffer" pool (`rte_pktmbuf_pool_create_extbuf`) whose
//! mbufs each point at one pool buffer's room (headroom + data room, so DPDK's
//! `data_off` is netvm's `data_offset`). The region is registered with the EAL as
//! external memory (`rte_extmem_register`, IOVA = VA when the EAL runs IOVA-as-VA, else
//! each page's physical address) and, for a PCI device under IOVA-as-VA, mapped for its
//! DMA (`rte_dev_dma_map`; untested here, no NIC).
//! - **RX.** A received mbuf's buffer *is* a pool buffer holding the frame: its data
//!   window is set from the mbuf and its index handed to the switch
//!   ([`RxBurst::push_held`](super::RxBurst::push_held)); the mbuf is re-pointed at a spare buffer (from the switch's
//!   cache) and freed back to DPDK. Invariant: every mbuf of that pool holds exactly one
//!   pool buffer nobody else references. Cost per packet: a spare buffer and two pointer
//!   stores instead of a memcpy; the pool lends `(rxq + txq) × 512 + 512` buffers to the
//!   device for as long as the port runs (plus one per frame of the file for a `net_pcap`
//!   with `infinite_rx=1`, whose driver keeps every frame of it in the receive pool).
//! - **TX**, frame only the switch holds (the common case): the switch sends by buffer
//!   ([`Port::tx_buffers`]) and hands over its reference. An mbuf of the same receive pool
//!   (one kept from RX, else a fresh one whose buffer becomes a spare) is re-pointed at the
//!   frame's buffer and takes that reference as its own. When the driver frees the mbuf it
//!   rejoins the pool with a buffer only it holds, as the invariant wants. Cost: an mbuf
//!   reset and re-point, no refcount update.
//! - **TX**, frame a mirror also holds: an mbuf with no data room of its own is attached
//!   to the buffer (`rte_pktmbuf_attach_extbuf`) holding the switch's reference, which
//!   DPDK's free callback drops when the driver is done. Cost: an mbuf and the decrement.
//!   (`tx_burst` with slices, whose caller keeps its references, takes one more per frame.)
//! - **Copies** happen only where no buffer can be lent: a received mbuf that is not one
//!   of ours (a frame another port's pool owns, or an attached buffer someone else also
//!   references, e.g. `net_ring` handing back what we sent while a mirror holds it) or a
//!   frame to send that does not lie in the pool. Each such byte is counted in
//!   [`DpdkCounters::copied_bytes`], shown in the port's description in the run report;
//!   for trusted VMs on DPDK ports it stays 0. (What a *driver* copies — `net_pcap`
//!   reading a file, `net_af_packet` from the kernel's ring — is that driver's I/O.)
//!
//! **Queues.** `rxq=N` opens N receive queues with RSS (IP/TCP/UDP hash) where the device
//! has it, keyed with the symmetric Toeplitz key (0x6d5a repeated) so that both directions
//! of a flow land on the same queue number — on every port, hence on the same switch
//! thread; a device that refuses the key keeps its own and the port's description says
//! so. `txq=N` opens N transmit queues. With one switch thread, it polls every receive
//! queue in turn and sends on queue 0. With several, [`Port::split`] hands thread `k` the
//! receive queues `k, k + threads, ...` and transmit queue `k` (a transmit queue is not
//! thread-safe, so `txq` must cover the threads too), all over the one started device
//! (an `Arc` the shares hold); each share keeps its own spare buffers and mbuf vectors,
//! the counters are the port's.
//!
//! The device is configured and started when the port learns the pool
//! ([`Port::attach_pool`]; until the switch calls that, at its first receive burst, or
//! when asked to send first, over the pool the frames lie in). Each polling thread
//! registers as an EAL thread at its first burst, so DPDK's per-lcore mempool caches serve
//! it. A share's [`Port::finish`] gives back its spare buffers and hands its queues to the
//! device; the port's own, last, stops and closes the device (flushing `tx_pcap` files),
//! drains every queue, empties every lcore's mempool cache and takes back every lent
//! buffer.
//!
//! **Per packet**, besides DPDK's own work: RX stores the data window and port straight
//! into the buffer's header (after prefetching the burst's headers and first data lines)
//! and re-points the mbuf; TX reads the refcount, stores 2 for a buffer only the switch
//! holds, and re-points an mbuf. No call into the C shim per packet: mbuf fields are read
//! and written inline (`dpdk_sys::Mbuf`, layout checked against the C compiler's at EAL
//! init); per burst one `rx_burst`/`tx_burst` and at most one `alloc_bulk`/`free_bulk`.
//!
//! Without the `dpdk` feature the driver still parses its arguments and then says how to
//! get it; with the feature and no DPDK on the build machine, DPDK's own message says so.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::{bad_args, Port, PortError};

/// Most receive or transmit queues a port opens.
pub const MAX_QUEUES: u16 = 64;

/// How to open a DPDK device, from `dpdk:DEVICE[,ARGS]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSpec {
    /// The ethdev name: a vdev name or a full PCI address (`0000:01:00.0`).
    pub name: String,
    /// The device's own arguments, comma-separated as given.
    pub device_args: String,
    /// Whether `name` is a PCI address.
    pub pci: bool,
    pub rx_queues: u16,
    pub tx_queues: u16,
}

/// A PCI address `DDDD:BB:DD.F` or `BB:DD.F`, normalised to the long form.
fn pci_address(text: &str) -> Option<String> {
    let hex = |s: &str, n: usize| s.len() == n && s.chars().all(|c| c.is_ascii_hexdigit());
    let (rest, function) = text.rsplit_once('.')?;
    if function.len() != 1 || !matches!(function.as_bytes()[0], b'0'..=b'7') {
        return None;
    }
    let parts: Vec<&str> = rest.split(':').collect();
    let (domain, bus, device) = match parts.as_slice() {
        [bus, device] => ("0000", *bus, *device),
        [domain, bus, device] => (*domain, *bus, *device),
        _ => return None,
    };
    (hex(domain, 4) && hex(bus, 2) && hex(device, 2))
        .then(|| format!("{domain}:{bus}:{device}.{function}").to_ascii_lowercase())
}

impl DeviceSpec {
    /// Parse the text after `dpdk:`.
    pub fn parse(args: &str) -> Result<DeviceSpec, PortError> {
        let mut items = args.split(',').map(str::trim);
        let device = items.next().unwrap_or_default();
        if device.is_empty() {
            return Err(bad_args(
                "dpdk",
                "expected DEVICE[,ARG=VALUE...], a PCI address (0000:01:00.0) or a DPDK \
                 virtual device (net_null0, net_ring0, net_pcap0,rx_pcap=in.pcap, \
                 net_af_packet0,iface=veth0, ...)",
            ));
        }
        let (name, pci) = match pci_address(device) {
            Some(address) => (address, true),
            None if device.contains('=') || device.contains(char::is_whitespace) => {
                return Err(bad_args(
                    "dpdk",
                    format!(
                        "`{device}` is not a device name: the first item is the device \
                         (a PCI address or a vdev such as net_pcap0), its arguments follow"
                    ),
                ))
            }
            None => (device.to_string(), false),
        };
        let mut spec = DeviceSpec {
            name,
            device_args: String::new(),
            pci,
            rx_queues: 1,
            tx_queues: 1,
        };
        let mut passed = Vec::new();
        for item in items.filter(|s| !s.is_empty()) {
            let (key, value) = item.split_once('=').unwrap_or((item, ""));
            let queues = |what: &str| -> Result<u16, PortError> {
                value
                    .parse::<u16>()
                    .ok()
                    .filter(|n| (1..=MAX_QUEUES).contains(n))
                    .ok_or_else(|| {
                        bad_args(
                            "dpdk",
                            format!(
                                "{what}={value}: expected a number of queues, 1 to {MAX_QUEUES}"
                            ),
                        )
                    })
            };
            match key {
                "rxq" => spec.rx_queues = queues("rxq")?,
                "txq" => spec.tx_queues = queues("txq")?,
                _ => passed.push(item),
            }
        }
        spec.device_args = passed.join(",");
        Ok(spec)
    }

    /// Whether this is a `net_pcap` reading a finite file (not `infinite_rx=1`), or with no
    /// receive side: its input drains.
    pub fn finite_pcap_rx(&self) -> bool {
        let arg = |k: &str| {
            self.device_args
                .split(',')
                .any(|kv| kv.split_once('=').is_some_and(|(key, _)| key == k))
        };
        self.name.starts_with("net_pcap")
            && !arg("rx_iface")
            && !arg("rx_iface_in")
            && !arg("iface")
            && !self.device_args.contains("infinite_rx=1")
    }

    /// For a `net_pcap` with `infinite_rx=1`: how many frames its `rx_pcap` files hold. The
    /// driver loads every one into an mbuf of the receive pool when the queue is set up and
    /// keeps them all for the run (replaying copies of them), so the receive pool must hold
    /// that many buffers beyond what the rings need. 0 for every other device.
    pub fn replayed_frames(&self) -> Result<usize, PortError> {
        if !self.name.starts_with("net_pcap")
            || !self.device_args.split(',').any(|kv| kv == "infinite_rx=1")
        {
            return Ok(0);
        }
        let mut total = 0;
        for kv in self.device_args.split(',') {
            if let Some(("rx_pcap", path)) = kv.split_once('=') {
                total += crate::port::pcap::read_frames(path)?.len();
            }
        }
        Ok(total)
    }

    /// The device as written (`name,args`, queues when not 1), for reports.
    pub fn display(&self) -> String {
        let mut text = self.name.clone();
        if !self.device_args.is_empty() {
            text.push(',');
            text.push_str(&self.device_args);
        }
        if self.rx_queues != 1 || self.tx_queues != 1 {
            text.push_str(&format!(
                " (rxq={}, txq={})",
                self.rx_queues, self.tx_queues
            ));
        }
        text
    }
}

/// Arguments for the EAL from `--eal`, appended to the defaults.
static EXTRA_EAL_ARGS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Split `--eal '...'` text into arguments (on whitespace; no quoting).
pub fn split_eal_args(text: &str) -> Vec<String> {
    text.split_whitespace().map(str::to_string).collect()
}

/// Arguments to append to the EAL's defaults; takes effect if the EAL is not yet
/// initialised (it initialises with the first `dpdk` port opened).
pub fn set_eal_args(args: Vec<String>) {
    if let Ok(mut extra) = EXTRA_EAL_ARGS.lock() {
        *extra = args;
    }
}

/// Free 2 MiB huge pages (`HugePages_Free` in `/proc/meminfo`; 0 when unreadable).
pub fn hugepages_free() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("HugePages_Free:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Free 2 MiB pages below which the EAL runs `--no-huge`.
pub const MIN_FREE_HUGEPAGES: u64 = 16;

/// The EAL's arguments: netvm's defaults for `first` (the port that initialises it), minus
/// those `extra` overrides, then `extra`.
pub fn eal_args(first: &DeviceSpec, extra: &[String], first_cpu: usize) -> Vec<String> {
    let has = |flags: &[&str]| {
        extra.iter().any(|a| {
            flags.iter().any(|f| {
                a == f || a.starts_with(&format!("{f}=")) || (f.len() == 2 && a.starts_with(f))
            })
        })
    };
    let mut args = Vec::new();
    if !has(&["-l", "-c", "--lcores"]) {
        args.extend(["-l".to_string(), first_cpu.to_string()]);
    }
    if first.pci {
        if !has(&["-a", "--allow"]) {
            args.extend(["-a".to_string(), first.name.clone()]);
        }
    } else if !has(&["-a", "--allow", "-b", "--block", "--no-pci"]) {
        args.push("--no-pci".into());
    }
    if !has(&["--file-prefix"]) {
        args.push(format!("--file-prefix=netvm-{}", std::process::id()));
    }
    let no_huge =
        has(&["--no-huge"]) || (!has(&["--in-memory"]) && hugepages_free() < MIN_FREE_HUGEPAGES);
    if no_huge {
        if !has(&["--no-huge"]) {
            args.push("--no-huge".into());
        }
        if !has(&["-m", "--socket-mem"]) {
            args.extend(["-m".to_string(), "256".to_string()]);
        }
        if !has(&["--no-shconf"]) {
            args.push("--no-shconf".into());
        }
    } else if !has(&["--in-memory"]) {
        args.push("--in-memory".into());
    }
    if !has(&["--no-telemetry", "--telemetry"]) {
        args.push("--no-telemetry".into());
    }
    if !has(&["--log-level"]) {
        args.push("--log-level=5".into());
    }
    args.extend(extra.iter().cloned());
    args
}

/// What one switch thread's share of a DPDK port did with bytes. On its own cache lines
/// and written only by that thread, so that shares polled by different threads never
/// write the same line.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct ShareCounters {
    /// Frames received.
    pub rx: AtomicU64,
    /// Frames received straight into a pool buffer (the mbuf's buffer handed over).
    pub rx_in_place: AtomicU64,
    /// Frames sent from their pool buffer (attached, not copied).
    pub tx_in_place: AtomicU64,
    /// Frames netvm had to copy between an mbuf and a pool buffer, either way.
    pub copied_packets: AtomicU64,
    /// Bytes of those copies.
    pub copied_bytes: AtomicU64,
}

/// What a DPDK port did with bytes, for the run report and tests: one [`ShareCounters`]
/// per switch thread (index: the thread), summed when read.
#[derive(Debug)]
pub struct DpdkCounters {
    shares: Box<[ShareCounters]>,
}

impl Default for DpdkCounters {
    fn default() -> Self {
        DpdkCounters {
            shares: (0..MAX_QUEUES).map(|_| ShareCounters::default()).collect(),
        }
    }
}

impl DpdkCounters {
    /// The counters switch thread `thread` writes (the last set for a larger index).
    pub fn share(&self, thread: usize) -> &ShareCounters {
        &self.shares[thread.min(self.shares.len() - 1)]
    }

    fn total(&self, counter: impl Fn(&ShareCounters) -> &AtomicU64) -> u64 {
        self.shares
            .iter()
            .map(|s| counter(s).load(Ordering::Relaxed))
            .sum()
    }

    pub fn rx_in_place(&self) -> u64 {
        self.total(|s| &s.rx_in_place)
    }

    pub fn tx_in_place(&self) -> u64 {
        self.total(|s| &s.tx_in_place)
    }

    pub fn copied_packets(&self) -> u64 {
        self.total(|s| &s.copied_packets)
    }

    pub fn copied_bytes(&self) -> u64 {
        self.total(|s| &s.copied_bytes)
    }

    /// `rx by thread: A/B/...` over the first `threads` switch threads.
    pub fn rx_by_thread(&self, threads: usize) -> String {
        let counts: Vec<String> = self
            .shares
            .iter()
            .take(threads)
            .map(|c| c.rx.load(Ordering::Relaxed).to_string())
            .collect();
        format!("rx by thread: {}", counts.join("/"))
    }

    /// `in place: rx N tx M; copied: P packets, B bytes`, for the port's description.
    pub fn summary(&self) -> String {
        format!(
            "in place: rx {} tx {}; copied: {} packets, {} bytes",
            self.rx_in_place(),
            self.tx_in_place(),
            self.copied_packets(),
            self.copied_bytes()
        )
    }
}

/// Add to a counter of this thread's [`ShareCounters`]: one writer, so a load and a
/// store, no locked instruction.
#[cfg(feature = "dpdk")]
fn bump(counter: &AtomicU64, by: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(by),
        Ordering::Relaxed,
    );
}

/// How to get the driver into a build that lacks it.
pub const HOW_TO_GET: &str = "rebuild netvm with the `dpdk` feature \
    (`cargo build --release --features dpdk`), on a machine with DPDK 22.11 or later \
    (Debian 12: `apt-get install libdpdk-dev pkg-config clang libclang-dev`)";

/// Open `dpdk:ARGS`.
pub fn open(args: &str) -> Result<Box<dyn Port>, PortError> {
    let spec = DeviceSpec::parse(args)?;
    #[cfg(feature = "dpdk")]
    {
        Ok(Box::new(DpdkPort::open(spec)?))
    }
    #[cfg(not(feature = "dpdk"))]
    {
        Err(PortError::Other(format!(
            "dpdk: port `{}` needs the DPDK driver, which this build of netvm does not have: {HOW_TO_GET}",
            spec.name
        )))
    }
}

#[cfg(feature = "dpdk")]
pub use driver::{eal_status, DpdkPort};

#[cfg(feature = "dpdk")]
mod driver {
    use std::ffi::c_void;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::{Arc, Mutex, OnceLock};
    use std::time::{Duration, Instant};

    use dpdk_sys::{Eal, ExternalBuffer, Mbuf, Mempool, PortConfig, Rss, RxQueue, TxQueue};

    use super::{bump, eal_args, DeviceSpec, DpdkCounters, ShareCounters, EXTRA_EAL_ARGS};
    use crate::layout::{BufHeader, BUF_HEADER_BYTES, BUF_STRIDE};
    use crate::pool::{PacketPool, PoolCache, BUF_ROOM};
    use crate::port::{DeviceFrame, Port, PortError, RxBurst};
    use crate::region::Backing;
    use crate::vm::MAX_BURST;

    /// Descriptors per RX and TX queue.
    const RING_SLOTS: u16 = 512;
    /// Buffers lent to the RX pool beyond the rings: bursts in flight and the lcore cache.
    const RX_SPARE_BUFFERS: usize = 512;
    /// Per-lcore mempool cache.
    const MEMPOOL_CACHE: u32 = 64;
    /// Received mbufs kept (their buffer handed to the switch) for sending, at most.
    const BARE_MBUFS: usize = 2 * MAX_BURST;
    /// A finite `net_pcap` input is drained after this long without a frame.
    const PCAP_DRAINED_AFTER: Duration = Duration::from_millis(200);
    /// `RTE_BAD_IOVA`.
    const BAD_IOVA: u64 = u64::MAX;

    /// The process's EAL, initialised by the first `dpdk` port (or why it could not be).
    static EAL: OnceLock<Result<EalState, String>> = OnceLock::new();

    struct EalState {
        eal: Eal,
        args: Vec<String>,
    }

    /// The EAL's arguments and whether it runs on huge pages, once initialised.
    pub fn eal_status() -> Option<(Vec<String>, bool)> {
        match EAL.get()? {
            Ok(state) => Some((state.args.clone(), state.eal.has_hugepages())),
            Err(_) => None,
        }
    }

    fn eal_for(first: &DeviceSpec) -> Result<&'static EalState, PortError> {
        let state = EAL.get_or_init(|| {
            let extra = EXTRA_EAL_ARGS.lock().map(|a| a.clone()).unwrap_or_default();
            let cpus = crate::numa::allowed_cpus().unwrap_or_default();
            let args = eal_args(first, &extra, cpus.first().copied().unwrap_or(0));
            let affinity = current_affinity();
            let result = dpdk_sys::eal::init(&args);
            // rte_eal_init pins this thread to the main lcore; threads spawned later
            // (the switch, VMs) inherit it. Give back the mask we had.
            if let Some(mask) = affinity {
                restore_affinity(&mask);
            }
            match result {
                Ok(eal) => Ok(EalState { eal, args }),
                Err(dpdk_sys::Error::DpdkMissing { reason }) => Err(format!(
                    "this build of netvm has the dpdk driver but found no DPDK when it was \
                     built ({reason}); {}",
                    dpdk_sys::INSTALL_HINT
                )),
                Err(e) => Err(format!(
                    "initialising DPDK's EAL with `{}` failed: {e}",
                    args.join(" ")
                )),
            }
        });
        state
            .as_ref()
            .map_err(|e| PortError::Other(format!("dpdk: {e}")))
    }

    fn current_affinity() -> Option<libc::cpu_set_t> {
        // SAFETY: all-zero is a valid cpu_set_t; sched_getaffinity fills it for this thread.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            (libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0)
                .then_some(set)
        }
    }

    fn restore_affinity(set: &libc::cpu_set_t) {
        // SAFETY: `set` is a valid mask read by sched_getaffinity; affects this thread only.
        unsafe {
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set);
        }
    }

    /// A pool some DPDK port of this process has started over.
    struct PoolInUse {
        pool: PacketPool,
        ports: usize,
        /// Its region is registered with the EAL as external memory.
        extmem: bool,
        /// Mempools of stopped devices over it, taken back when the last one stops.
        parked: Vec<Parked>,
    }

    /// The pools in use, so that each region is registered once, and so that a port asked
    /// to send before it has received (the switch sends to a port before polling it on
    /// its first round) finds the pool its frames come from.
    static POOLS_IN_USE: Mutex<Vec<PoolInUse>> = Mutex::new(Vec::new());

    /// The pool whose region holds `addr`, if a DPDK port uses it.
    fn pool_holding(addr: usize) -> Option<PacketPool> {
        let pools = POOLS_IN_USE.lock().ok()?;
        pools.iter().find_map(|p| {
            let region = p.pool.region();
            (region.base_addr()..region.base_addr() + region.len_bytes())
                .contains(&addr)
                .then(|| p.pool.clone())
        })
    }

    /// Names DPDK objects uniquely within the process.
    static NEXT_ID: AtomicU32 = AtomicU32::new(0);

    /// Where the pool's buffers are, for turning mbuf addresses into buffer indices and
    /// back. Shared with DPDK's release callback through a raw pointer, so it is kept
    /// alive as long as any attached mbuf may be.
    struct Zone {
        pool: PacketPool,
        /// Address of buffer 0's room (its headroom; an mbuf's `buf_addr`).
        room_base: usize,
        capacity: usize,
        /// The region's first byte, its page size, and each page's IO address (VA in
        /// IOVA-as-VA mode; else physical, read once here; `BAD_IOVA` when unknown).
        region_base: usize,
        page_bytes: usize,
        page_shift: u32,
        page_iovas: Vec<u64>,
        /// IO addresses are virtual addresses (the EAL's IOVA-as-VA mode): no table lookup.
        iova_is_va: bool,
    }

    impl Zone {
        fn new(pool: &PacketPool, eal: &'static Eal) -> Zone {
            let region = pool.region();
            let region_base = region.base_addr();
            let page_bytes = match region.backing() {
                Backing::HugePages2M => crate::layout::HUGE_PAGE_BYTES,
                Backing::SmallPages { .. } => 4096,
            };
            let pages = (region_base..region_base + region.len_bytes()).step_by(page_bytes);
            let iova_is_va = eal.iova_is_va();
            let page_iovas = if iova_is_va {
                pages.map(|a| a as u64).collect()
            } else {
                pages
                    .map(|a| eal.physical_address(a as *const u8).unwrap_or(BAD_IOVA))
                    .collect()
            };
            Zone {
                pool: pool.clone(),
                room_base: region_base + region.layout().buffers_offset + BUF_HEADER_BYTES,
                capacity: pool.capacity(),
                region_base,
                page_bytes,
                page_shift: page_bytes.trailing_zeros(),
                page_iovas,
                iova_is_va,
            }
        }

        #[inline]
        fn room(&self, index: u32) -> *mut u8 {
            (self.room_base + index as usize * BUF_STRIDE) as *mut u8
        }

        /// The header of buffer `index` (`None` outside the pool). The receive and
        /// transmit paths read and write it here rather than through [`PacketPool`]'s
        /// checked, `Result`-returning setters: the index comes from
        /// [`index_of_room`](Self::index_of_room) or [`locate`](Self::locate), already
        /// checked, and the window from an mbuf already bounded by `BUF_ROOM`.
        #[inline]
        fn header(&self, index: u32) -> Option<&BufHeader> {
            if index as usize >= self.capacity {
                return None;
            }
            let at = self.room_base - BUF_HEADER_BYTES + index as usize * BUF_STRIDE;
            // SAFETY: `index < capacity`, so `at` is the start of a slot of the region's
            // buffer array, which begins with a `BufHeader` (atomics only, valid in any
            // state) and is 64-byte aligned (array and stride are); the region stays
            // mapped while the zone lives (its pool holds it).
            Some(unsafe { &*(at as *const BufHeader) })
        }

        /// IO address of buffer `index`'s room. With physical addresses on 2 MiB pages a
        /// buffer may straddle two pages that are not physically adjacent: fine for
        /// virtual devices (no DMA); real NICs want vfio-pci (IOVA as VA). See docs/dpdk.md.
        #[inline]
        fn iova(&self, index: u32) -> u64 {
            if self.iova_is_va {
                return self.room(index) as u64;
            }
            let offset = self.room(index) as usize - self.region_base;
            // page_bytes is a power of two: shift and mask, no division per packet.
            match self.page_iovas.get(offset >> self.page_shift) {
                Some(&BAD_IOVA) | None => BAD_IOVA,
                Some(&page) => page + (offset & (self.page_bytes - 1)) as u64,
            }
        }

        /// Whether `addr` lies in one of the pool's buffers.
        #[inline]
        fn holds(&self, addr: usize) -> bool {
            addr.wrapping_sub(self.room_base) < self.capacity * BUF_STRIDE
        }

        /// The buffer whose room starts at `addr`.
        #[inline]
        fn index_of_room(&self, addr: usize) -> Option<u32> {
            let offset = addr.checked_sub(self.room_base)?;
            let index = offset / BUF_STRIDE;
            (offset % BUF_STRIDE == 0 && index < self.capacity).then_some(index as u32)
        }

        /// The buffer `bytes` lies in, and its offset in that buffer's room.
        #[inline]
        fn locate(&self, bytes: &[u8]) -> Option<(u32, usize)> {
            let offset = (bytes.as_ptr() as usize).checked_sub(self.room_base)?;
            let index = offset / BUF_STRIDE;
            let at = offset % BUF_STRIDE;
            (index < self.capacity && at + bytes.len() <= BUF_ROOM).then_some((index as u32, at))
        }
    }

    /// DPDK's callback when the last mbuf attached to a pool buffer is freed: drop the
    /// reference the attachment held.
    unsafe extern "C" fn release_buffer(addr: *mut c_void, opaque: *mut c_void) {
        // SAFETY: `opaque` is the `Arc<Zone>` pointer given at attach time, kept alive
        // (by the port, or leaked at finish) while any attached mbuf exists.
        let zone = unsafe { &*opaque.cast::<Zone>() };
        if let Some(index) = zone.index_of_room(addr as usize) {
            let _ = zone.pool.free(index);
        }
    }

    /// A frame to send from pool buffer `index`, whose reference the port holds.
    #[derive(Debug, Clone, Copy, Default)]
    struct Owned {
        index: u32,
        /// The frame's window in the buffer's room.
        offset: u16,
        len: u16,
        /// Nobody else holds the buffer (its refcount is 1, or 2 with a caller that lets
        /// go after the burst): it can become a receive-pool mbuf's own buffer.
        exclusive: bool,
        /// A copy netvm made (not counted as sent in place).
        copied: bool,
    }

    /// A started device and the buffers it has been lent, shared by the port and the
    /// shares split off it ([`Port::split`]); stopped by the port itself, last.
    struct Device {
        zone: Arc<Zone>,
        port: dpdk_sys::Port,
        rx_pool: Mempool,
        tx_pool: Mempool,
        /// The region's base, counted in [`POOLS_IN_USE`].
        region_base: usize,
        /// Receive queues of finished shares, drained when the device stops.
        returned: Mutex<Vec<RxQueue>>,
    }

    /// One switch thread's part of a started device: its queues, the pool buffers it
    /// keeps to re-point received mbufs at, and its mbuf vectors (empty between bursts).
    struct Running {
        device: Arc<Device>,
        rx_queues: Vec<RxQueue>,
        next_rx: usize,
        tx_queue: TxQueue,
        /// Pool buffers held to re-point received mbufs at.
        spare: Vec<u32>,
        rx_mbufs: Vec<Mbuf>,
        done_mbufs: Vec<Mbuf>,
        tx_mbufs: Vec<Mbuf>,
        pinned_mbufs: Vec<Mbuf>,
        /// Receive-pool mbufs whose frame went to the switch, kept to send the next frames
        /// on: no free to the mempool after RX and no allocation before TX.
        bare: BareMbufs,
        /// Last frame received (kept only for a finite `net_pcap` input).
        last_rx: Instant,
        /// The polling thread has been registered with the EAL (so the mempools' per-lcore
        /// caches serve it); done at the first burst, on the thread that polls.
        registered: bool,
    }

    impl Running {
        fn new(device: Arc<Device>, rx_queues: Vec<RxQueue>, tx_queue: TxQueue) -> Running {
            Running {
                device,
                rx_queues,
                next_rx: 0,
                tx_queue,
                spare: Vec::with_capacity(4 * MAX_BURST),
                rx_mbufs: Vec::with_capacity(MAX_BURST),
                done_mbufs: Vec::with_capacity(MAX_BURST),
                tx_mbufs: Vec::with_capacity(MAX_BURST),
                pinned_mbufs: Vec::with_capacity(MAX_BURST),
                bare: BareMbufs(Vec::with_capacity(BARE_MBUFS)),
                last_rx: Instant::now(),
                registered: false,
            }
        }

        #[inline]
        fn register(&mut self, eal: &Eal) {
            if !self.registered {
                // Only a cache for this thread's mempool use; without it DPDK still works.
                let _ = eal.register_thread();
                self.registered = true;
            }
        }
    }

    /// Receive-pool mbufs that point at a buffer they no longer hold (the switch has it).
    /// They must not go back to their mempool like that, where the next receive would
    /// write into the switch's frame: [`give_buffers`](Self::give_buffers) re-points them
    /// first, and dropping them otherwise leaks them (counted missing at stop) rather
    /// than freeing them.
    struct BareMbufs(Vec<Mbuf>);

    impl BareMbufs {
        /// Re-points every bare mbuf at a buffer of `spare` (or of the pool) and frees it.
        fn give_buffers(&mut self, zone: &Zone, spare: &mut Vec<u32>) {
            let mut done = Vec::with_capacity(self.0.len());
            while let Some(mut m) = self.0.pop() {
                let Some(buffer) = spare.pop().or_else(|| zone.pool.alloc()) else {
                    self.0.push(m);
                    break;
                };
                // SAFETY: `m` is a receive-pool mbuf (only those are kept bare) and
                // `buffer` a pool buffer we hold, which the mbuf now holds.
                unsafe { m.set_buffer(zone.room(buffer), zone.iova(buffer)) };
                done.push(m);
            }
            Mbuf::free_bulk(&mut done);
        }
    }

    impl Drop for BareMbufs {
        fn drop(&mut self) {
            for m in self.0.drain(..) {
                let _leaked = std::mem::ManuallyDrop::new(m);
            }
        }
    }

    /// How [`Running::take_in`] handed a received mbuf's frame to the switch.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum TakenIn {
        /// In the pool buffer DPDK wrote it to.
        InPlace,
        /// Copied into a fresh pool buffer (counted).
        Copied,
        /// Not at all: oversize (counted in the burst) or no buffer for it.
        Dropped,
    }

    impl Running {
        /// Fill `spare` up to twice a burst from the switch's cache.
        fn top_up_spare(&mut self, burst: &mut RxBurst<'_>) {
            let have = self.spare.len();
            if have >= 2 * MAX_BURST {
                return;
            }
            self.spare.resize(2 * MAX_BURST, 0);
            let got = burst.alloc_for_port(&mut self.spare[have..]);
            self.spare.truncate(have + got);
        }

        /// Hand one received mbuf's frame to the switch through `burst`: its own pool
        /// buffer when the mbuf is ours (the mbuf kept bare to send on, or re-pointed at
        /// a spare), the buffer an attachment of ours held, else a copy. The mbuf is
        /// kept or queued on `done_mbufs` to be freed.
        fn take_in(
            &mut self,
            mut m: Mbuf,
            burst: &mut RxBurst<'_>,
            mine: &ShareCounters,
        ) -> TakenIn {
            let device = &*self.device;
            let zone = &*device.zone;
            let port = burst.port;
            let len = m.len();
            let offset = m.data_offset() as usize;
            // Several segments (a frame larger than a buffer), or a window that does
            // not fit a pool buffer's room: not forwardable whole.
            if m.segments() != 1 || offset + len > BUF_ROOM {
                burst.count_oversize(len);
                self.done_mbufs.push(m);
                return TakenIn::Dropped;
            }
            let own = zone.index_of_room(m.buf_addr() as usize);
            let (index, taken) = match own.and_then(|i| Some((i, zone.header(i)?))) {
                // Ours: the frame is already in a pool buffer; hand it over and give
                // the mbuf a fresh one.
                Some((index, header)) if device.rx_pool.owns(&m) => {
                    if self.bare.0.len() < BARE_MBUFS {
                        // Kept to send on; its buffer (`index`) is the switch's now.
                        self.bare.0.push(m);
                    } else {
                        let Some(fresh) = self.spare.pop() else {
                            // No spare to give the mbuf: it keeps its buffer, the frame
                            // is lost (the pool is dry).
                            self.done_mbufs.push(m);
                            return TakenIn::Dropped;
                        };
                        // SAFETY: `fresh` is a pool buffer we hold and nobody else
                        // uses; its room is as long as the pool's external buffers;
                        // `index` is ours now (the mbuf's reference passes to the
                        // switch).
                        unsafe { m.set_buffer(zone.room(fresh), zone.iova(fresh)) };
                        self.done_mbufs.push(m);
                    }
                    // What `set_data`, `forget_content` and `set_port` would store,
                    // without their checks: `index` is in the pool and the window
                    // fits its room (both checked above).
                    header.data_offset.store(offset as u16, Ordering::Relaxed);
                    header.data_len.store(len as u16, Ordering::Relaxed);
                    header.content_tag.store(0, Ordering::Relaxed);
                    header.port.store(port, Ordering::Relaxed);
                    burst.push_held(index);
                    return TakenIn::InPlace;
                }
                // An mbuf we attached on transmit, looped back (net_ring), that
                // nobody else references: take over the attachment's reference.
                Some((index, _))
                    if m.external_refs() == Some(1)
                        && zone.pool.refcount(index) == Ok(1)
                        && zone.pool.clone_ref(index).is_ok() =>
                {
                    let pool = &zone.pool;
                    let _ = pool.set_data(index, offset, len);
                    let _ = pool.forget_content(index);
                    let _ = pool.set_port(index, port);
                    (index, TakenIn::InPlace)
                }
                _ => {
                    let pool = &zone.pool;
                    let Some(copy) = self.spare.pop() else {
                        self.done_mbufs.push(m);
                        return TakenIn::Dropped;
                    };
                    // SAFETY: `copy` is a pool buffer we hold alone.
                    if unsafe { pool.write_data(copy, m.data()) }.is_err() {
                        let _ = pool.free(copy);
                        burst.count_oversize(len);
                        self.done_mbufs.push(m);
                        return TakenIn::Dropped;
                    }
                    bump(&mine.copied_packets, 1);
                    bump(&mine.copied_bytes, len as u64);
                    let _ = pool.set_port(copy, port);
                    (copy, TakenIn::Copied)
                }
            };
            burst.push_held(index);
            self.done_mbufs.push(m);
            taken
        }
    }

    /// Free lent frames (of any port over a pool of ours).
    fn free_lent(frames: &[DeviceFrame]) {
        let mut mbufs: Vec<Mbuf> = frames
            .iter()
            // SAFETY: every lent frame comes back exactly once (Port::rx_device's
            // contract); this is its return.
            .map(|f| unsafe { Mbuf::from_handle(f.handle) })
            .collect();
        Mbuf::free_bulk(&mut mbufs);
    }

    enum State {
        Opened,
        Running(Box<Running>),
        Failed(String),
        Finished,
    }

    /// Which switch thread a port serves.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Role {
        /// The port as opened: all its queues for one thread, or thread 0's share after a
        /// split into `threads`. Its `finish` stops the device.
        Whole { threads: usize },
        /// Thread `thread`'s share of a port split into `threads`.
        Share { thread: usize, threads: usize },
    }

    impl Role {
        /// (this thread, threads).
        fn thread(self) -> (usize, usize) {
            match self {
                Role::Whole { threads } => (0, threads),
                Role::Share { thread, threads } => (thread, threads),
            }
        }
    }

    /// A DPDK ethdev bound to a switch port (or one switch thread's share of it).
    pub struct DpdkPort {
        spec: DeviceSpec,
        eal: &'static Eal,
        state: State,
        counters: Arc<DpdkCounters>,
        role: Role,
        /// A finite `net_pcap` input ([`DeviceSpec::finite_pcap_rx`], decided at open).
        finite_pcap: bool,
        pcap_drained: bool,
        /// The device's NUMA node, when DPDK knows it.
        numa_node: Option<usize>,
        /// How the device spreads flows over its receive queues (once started).
        rss: Option<Rss>,
    }

    impl DpdkPort {
        /// Initialise the EAL if this is the first port, and create or find the device.
        /// The device starts when the port learns the pool.
        pub fn open(spec: DeviceSpec) -> Result<DpdkPort, PortError> {
            let state = eal_for(&spec)?;
            let eal = &state.eal;
            let exists = eal.port_by_name(&spec.name).is_ok();
            if !exists {
                let created = if spec.pci {
                    let devargs = if spec.device_args.is_empty() {
                        spec.name.clone()
                    } else {
                        format!("{},{}", spec.name, spec.device_args)
                    };
                    eal.dev_probe(&devargs)
                } else {
                    eal.vdev_init(&spec.name, &spec.device_args)
                };
                created.map_err(|e| {
                    PortError::Other(format!(
                        "dpdk: could not create device `{}`: {e}{}",
                        spec.display(),
                        if spec.pci {
                            " (is it bound to vfio-pci or uio, and was the EAL started \
                             without --no-pci? bind the PCI port first or pass --eal '-a ADDRESS')"
                        } else {
                            " (check the vdev's name and arguments in DPDK's guide)"
                        }
                    ))
                })?;
            }
            let port_id = eal
                .port_by_name(&spec.name)
                .map_err(|e| PortError::Other(format!("dpdk: {e}")))?;
            Ok(DpdkPort {
                finite_pcap: spec.finite_pcap_rx(),
                numa_node: eal.port_numa_node(port_id).map(|n| n as usize),
                spec,
                eal,
                state: State::Opened,
                counters: Arc::new(DpdkCounters::default()),
                role: Role::Whole { threads: 1 },
                pcap_drained: false,
                rss: None,
            })
        }

        /// Live counters (copies, frames in place), readable while the switch runs; shared
        /// by the shares of a split port.
        pub fn counters(&self) -> Arc<DpdkCounters> {
            self.counters.clone()
        }

        /// Start the device over `pool` if it is not started yet.
        fn ensure_started(&mut self, pool: &PacketPool) -> Result<(), PortError> {
            match &self.state {
                State::Opened => {}
                State::Failed(e) => return Err(PortError::Other(e.clone())),
                State::Running(_) | State::Finished => return Ok(()),
            }
            match self.start(pool) {
                Ok(running) => {
                    self.state = State::Running(Box::new(running));
                    Ok(())
                }
                Err(e) => {
                    let message = format!("dpdk {}: {e}", self.spec.name);
                    self.state = State::Failed(message.clone());
                    Err(PortError::Other(message))
                }
            }
        }
        fn start(&mut self, pool: &PacketPool) -> Result<Running, String> {
            let eal = self.eal;
            let zone = Arc::new(Zone::new(pool, eal));
            let registered = register_region(eal, &zone)?;
            let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);

            // Receive rings, frames in flight on the transmit rings (sent from the same
            // pool when only the switch holds their buffer), bursts and the lcore cache;
            // plus, for a `net_pcap` replaying its file forever, one buffer per frame of
            // the file, which the driver holds for the whole run.
            let replayed = match self.spec.replayed_frames() {
                Ok(n) => n,
                Err(e) => {
                    unregister_region(eal, registered);
                    return Err(format!("counting the frames to replay: {e}"));
                }
            };
            let lent = (self.spec.rx_queues + self.spec.tx_queues) as usize * RING_SLOTS as usize
                + RX_SPARE_BUFFERS
                + replayed;
            let mut buffers = vec![0u32; lent];
            let got = pool.alloc_burst(&mut buffers);
            if got < lent {
                let _ = pool.free_burst(&buffers[..got]);
                unregister_region(eal, registered);
                let replay = if replayed > 0 {
                    format!(" and the {replayed} frames it replays")
                } else {
                    String::new()
                };
                return Err(format!(
                    "the device needs {lent} pool buffers for its receive rings{replay}, the \
                     pool has {got} free of {} (raise --buffers)",
                    pool.capacity()
                ));
            }
            let external: Vec<ExternalBuffer> = buffers
                .iter()
                .map(|&i| ExternalBuffer {
                    addr: zone.room(i),
                    iova: zone.iova(i),
                })
                .collect();
            let give_back = |why: String| {
                let _ = pool.free_burst(&buffers);
                unregister_region(eal, registered);
                why
            };
            // SAFETY: each buffer is a pool buffer's room (BUF_ROOM bytes) that we just
            // allocated, so nobody else uses it; they stay allocated until `finish`
            // takes them back from the pool's mbufs; the region outlives the port (the
            // switch holds it, and `zone` an Arc of it).
            let rx_pool = unsafe {
                Mempool::pinned_external(
                    eal,
                    &format!("netvm-rx{id}"),
                    &external,
                    BUF_ROOM as u16,
                    MEMPOOL_CACHE,
                    None,
                )
            }
            .map_err(|e| give_back(format!("creating the receive pool: {e}")))?;
            let tx_mbufs = self.spec.tx_queues as u32 * RING_SLOTS as u32 + 4 * MAX_BURST as u32;
            let tx_pool =
                Mempool::for_attached(eal, &format!("netvm-tx{id}"), tx_mbufs, MEMPOOL_CACHE, None)
                    .map_err(|e| give_back(format!("creating the transmit pool: {e}")))?;
            if self.spec.pci && eal.iova_is_va() {
                // A NIC behind vfio-pci may only DMA into memory mapped for it. The region's
                // IOVAs are its addresses here. The mapping stays until the process exits
                // (one switch per process; DPDK keeps the device after the port closes).
                let region = pool.region();
                // SAFETY: the region stays mapped and registered while the port runs (the
                // pool holds it; it is unregistered only after the device is closed).
                unsafe {
                    eal.dma_map(
                        &self.spec.name,
                        region.base_addr() as *mut u8,
                        region.base_addr() as u64,
                        region.len_bytes(),
                    )
                }
                .map_err(|e| give_back(format!("mapping the shared region for DMA: {e}")))?;
            }
            let config = PortConfig {
                rx_queues: self.spec.rx_queues,
                tx_queues: self.spec.tx_queues,
                rx_ring_slots: RING_SLOTS,
                tx_ring_slots: RING_SLOTS,
                rss: true,
                symmetric_rss_key: true,
                promiscuous: true,
            };
            let port = dpdk_sys::Port::start(eal, &self.spec.name, &config, &rx_pool)
                .map_err(|e| give_back(format!("starting the device: {e}")))?;
            self.rss = Some(port.rss().clone());
            let rx_queues = (0..self.spec.rx_queues)
                .map(|q| port.rx_queue(q))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            let tx_queue = port.tx_queue(0).map_err(|e| e.to_string())?;
            let device = Arc::new(Device {
                zone,
                port,
                rx_pool,
                tx_pool,
                region_base: registered,
                returned: Mutex::new(Vec::new()),
            });
            Ok(Running::new(device, rx_queues, tx_queue))
        }

        /// Poll this share's receive queues in turn until one gives frames (up to `max`,
        /// into `rx_mbufs`); keeps the finite-`net_pcap` drain clock. Returns how many.
        fn poll(&mut self, max: u16) -> usize {
            let State::Running(run) = &mut self.state else {
                return 0;
            };
            let run = &mut **run;
            run.register(self.eal);
            let queues = run.rx_queues.len();
            let mut received = 0;
            for _ in 0..queues {
                let q = run.next_rx;
                run.next_rx = if q + 1 == queues { 0 } else { q + 1 };
                received = run.rx_queues[q].rx_burst(&mut run.rx_mbufs, max);
                if received > 0 {
                    break;
                }
            }
            if self.finite_pcap {
                if received == 0 {
                    self.pcap_drained = run.last_rx.elapsed() >= PCAP_DRAINED_AFTER;
                    return 0;
                }
                run.last_rx = Instant::now();
            }
            received
        }

        fn receive(&mut self, burst: &mut RxBurst<'_>) {
            let State::Running(run) = &mut self.state else {
                return;
            };
            let want = burst.room().min(MAX_BURST);
            if want == 0 {
                return;
            }
            if run.spare.len() < want {
                run.top_up_spare(burst);
            }
            let max = want.min(run.spare.len());
            if max == 0 {
                return;
            }
            let received = self.poll(max as u16);
            if received == 0 {
                return;
            }
            let State::Running(run) = &mut self.state else {
                return;
            };
            let run = &mut **run;
            // The buffer headers the frames are handed over in, and the frames' first
            // bytes (the switch classifies them next), are in no cache yet: ask for them
            // all before touching the first.
            for m in &run.rx_mbufs {
                let room = m.buf_addr();
                prefetch(room.wrapping_sub(BUF_HEADER_BYTES));
                prefetch(room.wrapping_add(m.data_offset().into()));
            }
            let mine = self.counters.share(self.role.thread().0);
            let mut mbufs = std::mem::take(&mut run.rx_mbufs);
            // Counted per burst: a locked increment per frame costs as much as the rest.
            let mut in_place = 0;
            for m in mbufs.drain(..) {
                in_place += u64::from(run.take_in(m, burst, mine) == TakenIn::InPlace);
            }
            run.rx_mbufs = mbufs;
            bump(&mine.rx_in_place, in_place);
            bump(&mine.rx, received as u64);
            Mbuf::free_bulk(&mut run.done_mbufs);
        }

        /// [`Port::rx_device`]: the received mbufs, lent to the switch as they are.
        fn receive_lent(&mut self, out: &mut [DeviceFrame]) -> (usize, u64) {
            let max = out.len().min(MAX_BURST) as u16;
            if max == 0 {
                return (0, 0);
            }
            let received = self.poll(max);
            if received == 0 {
                return (0, 0);
            }
            let State::Running(run) = &mut self.state else {
                return (0, 0);
            };
            let run = &mut **run;
            // The switch classifies the frames next: bring their first bytes in.
            for m in &run.rx_mbufs {
                prefetch(m.buf_addr().wrapping_add(m.data_offset().into()));
            }
            let zone = &*run.device.zone;
            let (mut n, mut oversize, mut in_place) = (0, 0, 0);
            for m in run.rx_mbufs.drain(..) {
                let len = m.len();
                let offset = m.data_offset() as usize;
                // As `take_in`: a frame that no pool buffer could hold whole is consumed.
                if m.segments() != 1 || offset + len > BUF_ROOM {
                    oversize += 1;
                    run.done_mbufs.push(m);
                    continue;
                }
                in_place += u64::from(zone.holds(m.buf_addr() as usize));
                let data = m.buf_addr().wrapping_add(offset).cast_const();
                out[n] = DeviceFrame {
                    handle: m.into_handle(),
                    data,
                    len: len as u32,
                };
                n += 1;
            }
            let mine = self.counters.share(self.role.thread().0);
            bump(&mine.rx_in_place, in_place);
            bump(&mine.rx, received as u64);
            Mbuf::free_bulk(&mut run.done_mbufs);
            (n, oversize)
        }

        /// [`Port::tx_device`]: lent frames (of any port over the same pool) go to the
        /// transmit queue as they are; the unsent are freed.
        fn send_lent(&mut self, frames: &[DeviceFrame]) -> (usize, u64) {
            let State::Running(run) = &mut self.state else {
                free_lent(frames);
                return (0, 0);
            };
            let run = &mut **run;
            run.register(self.eal);
            let zone = &*run.device.zone;
            let (mut sent, mut bytes, mut in_place) = (0, 0, 0);
            for chunk in frames.chunks(MAX_BURST) {
                let mut out = std::mem::take(&mut run.tx_mbufs);
                for f in chunk {
                    // SAFETY: every lent frame comes back exactly once (Port::rx_device's
                    // contract); this is its return.
                    out.push(unsafe { Mbuf::from_handle(f.handle) });
                    in_place += u64::from(zone.holds(f.data as usize));
                }
                let n = run.tx_queue.tx_burst(&mut out);
                bytes += chunk[..n].iter().map(|f| u64::from(f.len)).sum::<u64>();
                sent += n;
                Mbuf::free_bulk(&mut out);
                run.tx_mbufs = out;
            }
            bump(
                &self.counters.share(self.role.thread().0).tx_in_place,
                in_place,
            );
            (sent, bytes)
        }

        /// [`Port::adopt_device`]: a lent frame of this port into a pool buffer, as
        /// [`Port::rx_burst`] hands frames over.
        fn adopt_lent(&mut self, frame: DeviceFrame, burst: &mut RxBurst<'_>) -> bool {
            // SAFETY: a frame this port lent, coming back once (Port::rx_device).
            let m = unsafe { Mbuf::from_handle(frame.handle) };
            let State::Running(run) = &mut self.state else {
                drop(m);
                return false;
            };
            let run = &mut **run;
            if run.spare.is_empty() {
                run.top_up_spare(burst);
            }
            let mine = self.counters.share(self.role.thread().0);
            let taken = run.take_in(m, burst, mine);
            Mbuf::free_bulk(&mut run.done_mbufs);
            taken != TakenIn::Dropped
        }

        /// Send `items` (at most [`MAX_BURST`] are taken), whose pool-buffer references
        /// this port holds: each reference goes to an mbuf, sent or not — a receive-pool
        /// mbuf re-pointed at the buffer when nobody else holds it (the mbuf then holds
        /// the one reference the receive pool's invariant asks for), else an mbuf
        /// attached to it, whose release callback drops the reference. Returns (frames
        /// sent, their bytes, items taken); the caller still holds the references of the
        /// items not taken (no mbuf was left for them).
        fn send_owned(&mut self, items: &[Owned]) -> (usize, u64, usize) {
            let State::Running(run) = &mut self.state else {
                return (0, 0, 0);
            };
            let run = &mut **run;
            run.register(self.eal);
            let items = &items[..items.len().min(MAX_BURST)];
            if items.is_empty() {
                return (0, 0, 0);
            }
            let device = &*run.device;
            let zone = &device.zone;
            // Receive-pool mbufs for the buffers nobody else holds: the bare ones first,
            // then fresh ones.
            let exclusive = items.iter().filter(|i| i.exclusive).count();
            let mut pinned = std::mem::take(&mut run.pinned_mbufs);
            let fresh = exclusive.saturating_sub(run.bare.0.len());
            if fresh > 0 && !device.rx_pool.alloc_bulk(&mut pinned, fresh) {
                pinned.clear();
            }
            let mut pinned_left = pinned.drain(..);
            let mut out = std::mem::take(&mut run.tx_mbufs);
            let opaque = Arc::as_ptr(zone).cast_mut().cast::<c_void>();
            let mut lens = [0u16; MAX_BURST];
            let (mut taken, mut in_place) = (0, 0);
            for item in items {
                let mut receive_mbuf = None;
                if item.exclusive {
                    if let Some(mut m) = run.bare.0.pop() {
                        m.reset();
                        receive_mbuf = Some(m);
                    } else if let Some(m) = pinned_left.next() {
                        match zone.index_of_room(m.buf_addr() as usize) {
                            Some(lent) => {
                                // The mbuf's own buffer is ours now: a spare for RX.
                                run.spare.push(lent);
                                receive_mbuf = Some(m);
                            }
                            None => run.done_mbufs.push(m),
                        }
                    }
                }
                let m = match receive_mbuf {
                    Some(mut m) => {
                        // SAFETY: `m` is a receive-pool mbuf holding no buffer of its own
                        // any more; `item.index` is a pool buffer whose only reference
                        // this port holds and gives to the mbuf; the window lies in its
                        // room (checked when the item was made).
                        unsafe {
                            m.set_buffer(zone.room(item.index), zone.iova(item.index));
                            m.set_data_window(item.offset, item.len);
                        }
                        m
                    }
                    None => {
                        let Some(mut m) = device.tx_pool.alloc() else {
                            break;
                        };
                        // SAFETY: a fresh mbuf of the attach pool; the buffer's room is
                        // BUF_ROOM bytes, held by the reference this port hands to the
                        // attachment until `release_buffer` drops it; nobody writes a
                        // buffer with more than one reference; `opaque` is the zone,
                        // alive while this port or any attached mbuf is (see `stop`).
                        unsafe {
                            m.attach_external(
                                zone.room(item.index),
                                zone.iova(item.index),
                                BUF_ROOM as u16,
                                item.offset,
                                item.len,
                                release_buffer,
                                opaque,
                            )
                        };
                        m
                    }
                };
                lens[out.len()] = item.len;
                out.push(m);
                taken += 1;
                in_place += u64::from(!item.copied);
            }
            bump(
                &self.counters.share(self.role.thread().0).tx_in_place,
                in_place,
            );
            run.done_mbufs.extend(pinned_left);
            run.pinned_mbufs = pinned;
            let sent = run.tx_queue.tx_burst(&mut out);
            let bytes = lens[..sent].iter().map(|&l| u64::from(l)).sum();
            // Unsent mbufs go back to their pools: a receive-pool one keeps its buffer
            // (and the reference), an attached one drops its reference.
            Mbuf::free_bulk(&mut out);
            Mbuf::free_bulk(&mut run.done_mbufs);
            run.tx_mbufs = out;
            if run.spare.len() > 4 * MAX_BURST {
                let _ = zone.pool.free_burst(&run.spare[2 * MAX_BURST..]);
                run.spare.truncate(2 * MAX_BURST);
            }
            (sent, bytes, taken)
        }

        /// Send frames the caller keeps its references to (`tx_burst`): a frame in the
        /// pool gets one more reference, for its mbuf; any other is copied into a fresh
        /// pool buffer (counted). Returns the frames sent.
        fn transmit(&mut self, frames: &[&[u8]]) -> usize {
            let State::Running(run) = &self.state else {
                return 0;
            };
            let zone = run.device.zone.clone();
            let pool = &zone.pool;
            let mine = self.counters.share(self.role.thread().0);
            let mut items = [Owned::default(); MAX_BURST];
            let mut n = 0;
            for frame in &frames[..frames.len().min(MAX_BURST)] {
                let held = zone.locate(frame).and_then(|(index, at)| {
                    let exclusive = zone.header(index)?.refcount.load(Ordering::Acquire) == 1;
                    pool.clone_ref(index).ok()?;
                    Some(Owned {
                        index,
                        offset: at as u16,
                        len: frame.len() as u16,
                        exclusive,
                        copied: false,
                    })
                });
                let item = match held {
                    Some(item) => item,
                    None => {
                        let Some(copy) = pool.alloc() else { break };
                        // SAFETY: `copy` was just allocated; ours alone.
                        if unsafe { pool.write_data(copy, frame) }.is_err() {
                            let _ = pool.free(copy);
                            break;
                        }
                        bump(&mine.copied_packets, 1);
                        bump(&mine.copied_bytes, frame.len() as u64);
                        Owned {
                            index: copy,
                            offset: crate::layout::BUF_HEADROOM as u16,
                            len: frame.len() as u16,
                            exclusive: true,
                            copied: true,
                        }
                    }
                };
                items[n] = item;
                n += 1;
            }
            let (sent, _, taken) = self.send_owned(&items[..n]);
            for item in &items[taken..n] {
                let _ = pool.free(item.index);
            }
            sent
        }

        /// [`Port::tx_buffers`]: the switch's references go to the device.
        ///
        /// # Safety
        /// As for [`Port::tx_buffers`].
        unsafe fn send_buffers(&mut self, cache: &mut PoolCache, indices: &[u32]) -> (usize, u64) {
            if matches!(self.state, State::Opened) {
                // Asked to send before the first poll: start over the switch's pool.
                let pool = cache.pool().clone();
                let _ = self.ensure_started(&pool);
            }
            let ours = match &self.state {
                State::Running(run) => {
                    run.device.zone.pool.region().base_addr() == cache.pool().region().base_addr()
                }
                _ => {
                    let _ = cache.free_burst(indices);
                    return (0, 0);
                }
            };
            if !ours {
                // SAFETY: forwarded from our caller.
                return unsafe { crate::port::send_and_free(self, cache, indices) };
            }
            let (mut sent, mut bytes) = (0, 0);
            for chunk in indices.chunks(MAX_BURST) {
                let mut items = [Owned::default(); MAX_BURST];
                let mut n = 0;
                if let State::Running(run) = &self.state {
                    let zone = &run.device.zone;
                    for &index in chunk {
                        let item = zone.header(index).and_then(|h| {
                            let offset = h.data_offset.load(Ordering::Relaxed);
                            let len = h.data_len.load(Ordering::Relaxed);
                            (offset as usize + len as usize <= BUF_ROOM).then(|| Owned {
                                index,
                                offset,
                                len,
                                exclusive: h.refcount.load(Ordering::Acquire) == 1,
                                copied: false,
                            })
                        });
                        match item {
                            Some(item) => {
                                items[n] = item;
                                n += 1;
                            }
                            // Not a buffer this port can send (out of the pool, or a
                            // window past its room): the reference goes back.
                            None => {
                                let _ = cache.free(index);
                            }
                        }
                    }
                }
                let (s, b, taken) = self.send_owned(&items[..n]);
                for item in &items[taken..n] {
                    let _ = cache.free(item.index);
                }
                sent += s;
                bytes += b;
            }
            (sent, bytes)
        }

        /// Ports for switch threads `1..threads`, each taking the receive queues `k, k +
        /// threads, ...` and transmit queue `k` of the started device; this port keeps
        /// thread 0's.
        fn split_device(&mut self, threads: usize) -> Result<Vec<Box<dyn Port>>, PortError> {
            let name = &self.spec.name;
            let (rxq, txq) = (self.spec.rx_queues as usize, self.spec.tx_queues as usize);
            if rxq < threads || txq < threads {
                let mut suggested = name.clone();
                if !self.spec.device_args.is_empty() {
                    suggested.push(',');
                    suggested.push_str(&self.spec.device_args);
                }
                return Err(PortError::Other(format!(
                    "dpdk {name}: {threads} switch threads need at least {threads} receive \
                     and {threads} transmit queues, one each (a transmit queue is not \
                     thread-safe), and the port has rxq={rxq}, txq={txq}: bind it as \
                     `dpdk:{suggested},rxq={},txq={}`, or run fewer switch threads",
                    rxq.max(threads),
                    txq.max(threads)
                )));
            }
            let run = match &mut self.state {
                State::Running(run) => run,
                State::Failed(e) => return Err(PortError::Other(e.clone())),
                State::Opened | State::Finished => {
                    return Err(PortError::Other(format!(
                        "dpdk {name}: split before the device started (the switch attaches \
                         the pool first)"
                    )))
                }
            };
            if self.role != (Role::Whole { threads: 1 }) {
                return Err(PortError::Other(format!("dpdk {name}: already split")));
            }
            // Every transmit queue first: nothing has moved if one cannot be had.
            let tx_queues = (1..threads)
                .map(|k| run.device.port.tx_queue(k as u16))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| PortError::Other(format!("dpdk {name}: {e}")))?;
            // Queue q goes to thread q % threads; run.rx_queues[q] is queue q.
            let mut shares: Vec<Vec<RxQueue>> = (0..threads).map(|_| Vec::new()).collect();
            for (q, queue) in std::mem::take(&mut run.rx_queues).into_iter().enumerate() {
                shares[q % threads].push(queue);
            }
            let mut shares = shares.into_iter();
            run.rx_queues = shares.next().unwrap_or_default();
            run.next_rx = 0;
            let mut ports: Vec<Box<dyn Port>> = Vec::with_capacity(threads - 1);
            for (k, (rx_queues, tx_queue)) in (1..threads).zip(shares.zip(tx_queues)) {
                ports.push(Box::new(DpdkPort {
                    spec: self.spec.clone(),
                    eal: self.eal,
                    state: State::Running(Box::new(Running::new(
                        run.device.clone(),
                        rx_queues,
                        tx_queue,
                    ))),
                    counters: self.counters.clone(),
                    role: Role::Share { thread: k, threads },
                    finite_pcap: self.finite_pcap,
                    pcap_drained: false,
                    numa_node: self.numa_node,
                    rss: self.rss.clone(),
                }));
            }
            self.role = Role::Whole { threads };
            Ok(ports)
        }

        /// A share's end: its receive queues go back to the device (drained when the port
        /// it was split from stops it), its spare buffers to the pool.
        fn finish_share(&mut self) {
            let State::Running(run) = std::mem::replace(&mut self.state, State::Finished) else {
                return;
            };
            let Running {
                device,
                rx_queues,
                mut spare,
                mut bare,
                ..
            } = *run;
            bare.give_buffers(&device.zone, &mut spare);
            let _ = device.zone.pool.free_burst(&spare);
            if let Ok(mut returned) = device.returned.lock() {
                returned.extend(rx_queues);
            };
        }

        /// Stop the device and take back every lent buffer (the port as opened; its shares
        /// have finished).
        fn stop(&mut self) -> Result<(), PortError> {
            if matches!(self.role, Role::Share { .. }) {
                self.finish_share();
                return Ok(());
            }
            let State::Running(run) = std::mem::replace(&mut self.state, State::Finished) else {
                return Ok(());
            };
            let Running {
                device,
                mut rx_queues,
                tx_queue,
                mut spare,
                mut bare,
                ..
            } = *run;
            bare.give_buffers(&device.zone, &mut spare);
            drop(bare);
            let _ = device.zone.pool.free_burst(&spare);
            if let Ok(mut returned) = device.returned.lock() {
                rx_queues.append(&mut returned);
            };
            // Frames still in the device (net_ring's ring) hold buffers: drain them.
            let mut drained = Vec::new();
            for q in rx_queues.iter_mut() {
                for _ in 0..1024 {
                    if q.rx_burst(&mut drained, MAX_BURST as u16) == 0 {
                        break;
                    }
                    Mbuf::free_bulk(&mut drained);
                }
            }
            // Every queue handle goes before `port`: the device stops with the last one.
            drop(rx_queues);
            {
                let _closed = tx_queue;
            }
            let device = Arc::try_unwrap(device).map_err(|device| {
                PortError::Other(format!(
                    "dpdk {}: {} shares of the port are still running at stop; the \
                     device stays up and their buffers are not back",
                    self.spec.name,
                    Arc::strong_count(&device) - 1
                ))
            })?;
            let Device {
                zone,
                port,
                rx_pool,
                tx_pool,
                region_base,
                returned: _,
            } = device;
            // Stops and closes the device (every queue handle is gone): its rings' mbufs
            // go back to their mempools (this device's, or another device's over the same
            // pool that the switch sent out here), pcap output is flushed.
            drop(port);
            // This device's mempools may still have mbufs in the rings of other devices
            // over the same region (frames received here and sent out there): they are
            // parked until the last of those devices stops, then their buffers are taken
            // back, all at once.
            let parked = Parked {
                name: self.spec.name.clone(),
                zone,
                rx_pool,
                tx_pool,
            };
            let Some(last) = park(region_base, parked) else {
                return Ok(());
            };
            let mut missing = Vec::new();
            for parked in last.parked {
                let name = parked.name.clone();
                let lost = take_back(parked);
                if lost > 0 {
                    missing.push(format!("{lost} of {name}"));
                }
            }
            if last.extmem {
                // SAFETY: no device uses the region any more (the last one just stopped)
                // and every mempool over it is gone.
                let _ = unsafe {
                    self.eal
                        .extmem_unregister(region_base as *mut u8, last.pool.region().len_bytes())
                };
            }
            if !missing.is_empty() {
                return Err(PortError::Other(format!(
                    "dpdk {}: mbufs still held by a driver at stop ({}); their pool buffers \
                     are not back",
                    self.spec.name,
                    missing.join(", ")
                )));
            }
            Ok(())
        }
    }

    /// A stopped device's mempools, kept until every device over the same region has
    /// stopped (another device may still hold their mbufs).
    struct Parked {
        name: String,
        zone: Arc<Zone>,
        rx_pool: Mempool,
        tx_pool: Mempool,
    }

    /// Park a stopped device's mempools with its region's entry in [`POOLS_IN_USE`];
    /// returns the entry, taken out of the list, when this was the last device over it.
    fn park(base: usize, parked: Parked) -> Option<PoolInUse> {
        let mut pools = POOLS_IN_USE.lock().ok()?;
        let pos = pools
            .iter()
            .position(|p| p.pool.region().base_addr() == base)?;
        pools[pos].parked.push(parked);
        pools[pos].ports -= 1;
        (pools[pos].ports == 0).then(|| pools.remove(pos))
    }

    /// Take back every pool buffer a stopped device's mempools were lent; returns how
    /// many mbufs a driver still holds (their buffers stay lent).
    fn take_back(parked: Parked) -> usize {
        let Parked {
            zone,
            rx_pool,
            tx_pool,
            ..
        } = parked;
        // SAFETY: every device over the region is stopped and every thread that polled
        // or sent on them has finished (their shares are gone), so nobody uses the
        // pools' caches.
        unsafe {
            rx_pool.flush_caches();
            tx_pool.flush_caches();
        }
        let pool = &zone.pool;
        let mut mbufs = Vec::new();
        let available = rx_pool.available() as usize;
        let mut missing = 0;
        if rx_pool.alloc_bulk(&mut mbufs, available) {
            let lent: Vec<u32> = mbufs
                .iter()
                .filter_map(|m| zone.index_of_room(m.buf_addr() as usize))
                .collect();
            let _ = pool.free_burst(&lent);
        }
        missing += (rx_pool.in_use() as usize).saturating_sub(mbufs.len());
        // The mbufs go back to the pool, which is then freed: none of them is used
        // again, so the buffers they still point at are not touched.
        drop(mbufs);
        drop(rx_pool);
        if tx_pool.in_use() > 0 {
            // A driver still holds attached mbufs; their release callbacks need the
            // zone, so it is kept for the life of the process.
            missing += tx_pool.in_use() as usize;
            std::mem::forget(zone.clone());
        }
        drop(tx_pool);
        missing
    }

    /// Ask the CPU to bring the cache line at `addr` in.
    #[inline(always)]
    fn prefetch(addr: *const u8) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a prefetch is a hint: it never faults and changes nothing, whatever the
        // address.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(addr.cast())
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = addr;
    }

    /// Count a port on the zone's pool; the first registers its region as external
    /// memory. Returns the region's base, for [`unregister_region`].
    fn register_region(eal: &Eal, zone: &Zone) -> Result<usize, String> {
        let region = zone.pool.region();
        let (base, bytes) = (region.base_addr(), region.len_bytes());
        let mut pools = POOLS_IN_USE.lock().map_err(|_| "a dpdk port panicked")?;
        if let Some(entry) = pools
            .iter_mut()
            .find(|p| p.pool.region().base_addr() == base)
        {
            entry.ports += 1;
            return Ok(base);
        }
        let known = !zone.page_iovas.contains(&BAD_IOVA);
        // SAFETY: the region is mapped (the pool holds it) for at least as long as the
        // port, which unregisters it at stop; base and bytes are multiples of the page size.
        let result = unsafe {
            eal.extmem_register(
                base as *mut u8,
                bytes,
                known.then_some(&zone.page_iovas[..]),
                zone.page_bytes,
            )
        };
        pools.push(PoolInUse {
            pool: zone.pool.clone(),
            ports: 1,
            // Drivers without DMA do not need it; real NICs report their own error.
            extmem: result.is_ok(),
            parked: Vec::new(),
        });
        Ok(base)
    }

    fn unregister_region(eal: &Eal, base: usize) {
        let Ok(mut pools) = POOLS_IN_USE.lock() else {
            return;
        };
        let Some(pos) = pools
            .iter()
            .position(|p| p.pool.region().base_addr() == base)
        else {
            return;
        };
        pools[pos].ports -= 1;
        if pools[pos].ports == 0 {
            let gone = pools.remove(pos);
            if gone.extmem {
                // SAFETY: no port uses the region any more (the last one just stopped).
                let _ = unsafe {
                    eal.extmem_unregister(base as *mut u8, gone.pool.region().len_bytes())
                };
            }
        }
    }

    impl Port for DpdkPort {
        fn describe(&self) -> String {
            let memory = if self.eal.has_hugepages() {
                "EAL on huge pages"
            } else {
                "EAL --no-huge"
            };
            let mut text = format!("dpdk {} ({memory}", self.spec.display());
            if let Some(rss) = self.rss.as_ref().filter(|_| self.spec.rx_queues > 1) {
                text.push_str(&format!("; {rss}"));
            }
            let started = !matches!(self.state, State::Opened | State::Failed(_));
            match self.role {
                Role::Share { thread, threads } => {
                    let rx: Vec<String> = (thread..self.spec.rx_queues as usize)
                        .step_by(threads)
                        .map(|q| q.to_string())
                        .collect();
                    text.push_str(&format!(
                        "; switch thread {thread} of {threads}: rx queues {}, tx queue {thread}",
                        rx.join(",")
                    ));
                }
                Role::Whole { threads } if threads > 1 => {
                    text.push_str(&format!(
                        "; {threads} switch threads, thread k on rx queues k, k+{threads}, \
                         ... and tx queue k"
                    ));
                    if started {
                        text.push_str(&format!("; {}", self.counters.rx_by_thread(threads)));
                    }
                }
                Role::Whole { .. } => {}
            }
            match &self.state {
                State::Failed(e) => text.push_str(&format!("; FAILED: {e}")),
                State::Opened => {}
                // Shared by every share of the port: the whole port's numbers.
                _ => text.push_str(&format!("; {}", self.counters.summary())),
            }
            text.push(')');
            text
        }

        fn attach_pool(&mut self, pool: &PacketPool) -> Result<(), PortError> {
            self.ensure_started(pool)
        }

        fn rx_burst(&mut self, burst: &mut RxBurst<'_>) {
            if matches!(self.state, State::Opened) {
                let pool = burst.pool().clone();
                if self.ensure_started(&pool).is_err() {
                    return;
                }
            }
            self.receive(burst);
        }

        fn rx_done(&self) -> bool {
            match self.state {
                State::Failed(_) | State::Finished => true,
                _ => self.pcap_drained,
            }
        }

        fn has_tx(&self) -> bool {
            !matches!(self.state, State::Failed(_))
        }

        fn tx_burst(&mut self, frames: &[&[u8]]) -> usize {
            if matches!(self.state, State::Opened) {
                // Asked to send before the first poll: start over the frames' pool.
                let Some(pool) = frames
                    .first()
                    .and_then(|f| pool_holding(f.as_ptr() as usize))
                else {
                    return 0;
                };
                if self.ensure_started(&pool).is_err() {
                    return 0;
                }
            }
            let mut sent = 0;
            while sent < frames.len() {
                let n = self.transmit(&frames[sent..]);
                if n == 0 {
                    break;
                }
                sent += n;
            }
            sent
        }

        unsafe fn tx_buffers(&mut self, cache: &mut PoolCache, indices: &[u32]) -> (usize, u64) {
            // SAFETY: forwarded from our caller.
            unsafe { self.send_buffers(cache, indices) }
        }

        fn finish(&mut self) -> Result<(), PortError> {
            if let State::Failed(e) = &self.state {
                return Err(PortError::Other(e.clone()));
            }
            self.stop()
        }

        fn rx_queues(&self) -> usize {
            self.spec.rx_queues.into()
        }

        fn numa_node(&self) -> Option<usize> {
            self.numa_node
        }

        fn split(&mut self, threads: usize) -> Result<Vec<Box<dyn Port>>, PortError> {
            if threads <= 1 {
                return Ok(Vec::new());
            }
            self.split_device(threads)
        }

        /// Every DPDK port over one shared pool is of one domain (the region's base):
        /// their devices send each other's mbufs, whose buffers all lie in that region
        /// and go back to their own mempool when freed; the mempools of stopped devices
        /// are kept until the last device over the region stops (see `stop`).
        fn device_domain(&self) -> Option<usize> {
            match &self.state {
                State::Running(run) => Some(run.device.region_base),
                _ => None,
            }
        }

        fn rx_device(&mut self, out: &mut [DeviceFrame]) -> (usize, u64) {
            self.receive_lent(out)
        }

        fn tx_device(&mut self, frames: &[DeviceFrame]) -> (usize, u64) {
            self.send_lent(frames)
        }

        fn free_device(&mut self, frames: &[DeviceFrame]) {
            free_lent(frames);
        }

        fn adopt_device(&mut self, frame: DeviceFrame, burst: &mut RxBurst<'_>) -> bool {
            self.adopt_lent(frame, burst)
        }
    }

    impl Drop for DpdkPort {
        fn drop(&mut self) {
            let _ = self.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(feature = "dpdk")]
    use crate::port::Port;

    #[test]
    fn netvm_keeps_rxq_and_txq_and_passes_every_other_argument_to_the_vdev() {
        let spec =
            DeviceSpec::parse("net_pcap0,rx_pcap=in.pcap,rxq=2,tx_pcap=out.pcap,txq=3").unwrap();
        assert_eq!(spec.name, "net_pcap0");
        assert_eq!(spec.device_args, "rx_pcap=in.pcap,tx_pcap=out.pcap");
        assert_eq!((spec.rx_queues, spec.tx_queues), (2, 3));
        assert!(!spec.pci);
        let plain = DeviceSpec::parse("net_null0").unwrap();
        assert_eq!((plain.device_args.as_str(), plain.rx_queues), ("", 1));
    }

    #[test]
    fn pci_addresses_are_recognised_and_normalised() {
        let spec = DeviceSpec::parse("01:00.1").unwrap();
        assert!(spec.pci);
        assert_eq!(spec.name, "0000:01:00.1");
        assert!(DeviceSpec::parse("0000:AF:00.0").unwrap().pci);
        assert!(!DeviceSpec::parse("net_ring0").unwrap().pci);
    }

    #[test]
    fn bad_device_specs_say_what_is_wrong() {
        let err = |s: &str| DeviceSpec::parse(s).unwrap_err().to_string();
        assert!(err("").contains("expected DEVICE"), "{}", err(""));
        assert!(err("rx_pcap=in.pcap").contains("is not a device name"));
        assert!(err("net_null0,rxq=0").contains("rxq=0: expected a number of queues"));
        assert!(err("net_null0,txq=x").contains("txq=x"));
    }

    #[test]
    fn eal_defaults_yield_to_the_operators_arguments() {
        let vdev = DeviceSpec::parse("net_null0").unwrap();
        let args = eal_args(&vdev, &[], 1);
        assert_eq!(&args[..2], ["-l", "1"]);
        assert!(args.contains(&"--no-pci".to_string()));
        assert!(args.iter().any(|a| a.starts_with("--file-prefix=netvm-")));
        assert!(
            args.contains(&"--in-memory".to_string()) || args.contains(&"--no-huge".to_string())
        );
        let extra = split_eal_args("--no-huge -m 512 -l 0 --file-prefix=mine");
        let args = eal_args(&vdev, &extra, 1);
        assert!(!args.contains(&"--in-memory".to_string()));
        assert_eq!(args.iter().filter(|a| *a == "-l").count(), 1);
        assert_eq!(args.iter().filter(|a| *a == "-m").count(), 1);
        assert_eq!(
            args.iter()
                .filter(|a| a.starts_with("--file-prefix"))
                .count(),
            1
        );
        let pci = DeviceSpec::parse("0000:01:00.0").unwrap();
        let args = eal_args(&pci, &[], 0);
        assert!(!args.contains(&"--no-pci".to_string()));
        assert!(args.windows(2).any(|w| w == ["-a", "0000:01:00.0"]));
    }

    /// Why the EAL cannot run here, if it cannot. `NETVM_DPDK_TEST_EAL` (e.g. `--no-huge`)
    /// is passed to the EAL, so CI runs these tests with and without huge pages.
    #[cfg(feature = "dpdk")]
    fn eal_skip_reason() -> Option<String> {
        if let Some(why) = dpdk_sys::missing_reason() {
            return Some(format!("DPDK is not available to this build: {why}"));
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Some("not root (the EAL needs huge pages or --no-huge with root)".into());
        }
        if let Ok(extra) = std::env::var("NETVM_DPDK_TEST_EAL") {
            set_eal_args(split_eal_args(&extra));
        }
        None
    }

    #[cfg(feature = "dpdk")]
    fn test_pool(buffers: usize) -> crate::pool::PacketPool {
        use crate::layout::RegionConfig;
        use crate::region::{HugepagePolicy, SharedRegion};
        let region = SharedRegion::create(
            RegionConfig {
                buffer_count: buffers,
                ring_count: 1,
                ring_slots: 16,
                counter_count: 0,
            },
            HugepagePolicy::Prefer,
        )
        .unwrap();
        crate::pool::PacketPool::new(region).unwrap()
    }

    /// Stop the port, drop the cache, and check that every buffer the port borrowed is back.
    #[cfg(feature = "dpdk")]
    fn finish_with_every_buffer_back(
        mut port: DpdkPort,
        cache: crate::pool::PoolCache,
        pool: &crate::pool::PacketPool,
    ) {
        port.finish().unwrap();
        drop(cache);
        assert_eq!(
            pool.available(),
            pool.capacity(),
            "every lent buffer is back"
        );
    }

    #[cfg(feature = "dpdk")]
    #[test]
    fn net_ring_hands_back_the_very_buffers_it_was_given_and_counts_the_one_it_must_copy() {
        use crate::port::RxBurst;
        if let Some(why) = eal_skip_reason() {
            eprintln!("SKIPPED net_ring zero-copy loopback: {why}");
            return;
        }
        let pool = test_pool(2048);
        let mut port = DpdkPort::open(DeviceSpec::parse("net_ring_zc0").unwrap()).unwrap();
        let counters = port.counters();
        port.attach_pool(&pool).unwrap();
        let lent = pool.capacity() - pool.available();
        assert!(
            lent >= 1024,
            "the port lends its receive ring buffers ({lent})"
        );

        let mut cache = pool.cache(64).unwrap();
        // 20 frames only the sender holds, then one a mirror also holds: its buffer cannot
        // join the device's receive pool, so it goes out attached and comes back as a
        // copy, which the counters must show.
        let mut sent = vec![0u32; 21];
        assert_eq!(cache.alloc_burst(&mut sent), 21);
        let mut expected = Vec::new();
        for (i, &index) in sent.iter().enumerate() {
            let frame: Vec<u8> = (0..60 + i).map(|b| (b * 7 + i) as u8).collect();
            // SAFETY: just allocated; ours alone.
            unsafe { pool.write_data(index, &frame).unwrap() };
            expected.push(frame);
        }
        let mirrored = sent[20];
        pool.clone_ref(mirrored).unwrap();
        {
            // SAFETY: we hold every buffer and nobody writes them.
            let frames: Vec<&[u8]> = sent
                .iter()
                .map(|&i| unsafe { pool.buf_data(i) }.unwrap())
                .collect();
            assert_eq!(port.tx_burst(&frames), 21);
        }
        // The switch lets go of its reference after sending; the mbufs in the ring keep
        // the buffers alive.
        cache.free_burst(&sent).unwrap();

        let mut out = [0u32; 64];
        let received = {
            let mut burst = RxBurst::new(&mut cache, &mut out[..32], 5);
            port.rx_burst(&mut burst);
            burst.len()
        };
        assert_eq!(received, 21);
        assert_eq!(
            &out[..20],
            &sent[..20],
            "the same buffers came back, in order"
        );
        assert_ne!(out[20], mirrored, "a shared buffer comes back as a copy");
        for (i, &index) in out[..21].iter().enumerate() {
            // SAFETY: the burst handed us these buffers.
            assert_eq!(unsafe { pool.buf_data(index) }.unwrap(), &expected[i][..]);
            assert_eq!(pool.port(index), Ok(5));
            assert_eq!(pool.refcount(index), Ok(1));
        }
        assert_eq!(
            pool.refcount(mirrored),
            Ok(1),
            "the attachment let go of it"
        );
        assert_eq!(counters.copied_packets(), 1);
        assert_eq!(counters.copied_bytes(), expected[20].len() as u64);
        assert_eq!(counters.tx_in_place(), 21);
        assert_eq!(counters.rx_in_place(), 20);
        cache.free_burst(&out[..21]).unwrap();
        cache.free(mirrored).unwrap();
        finish_with_every_buffer_back(port, cache, &pool);
    }

    #[cfg(feature = "dpdk")]
    #[test]
    fn net_null_receives_into_pool_buffers_and_gives_every_one_back() {
        use crate::port::RxBurst;
        if let Some(why) = eal_skip_reason() {
            eprintln!("SKIPPED net_null receive in place: {why}");
            return;
        }
        let pool = test_pool(2048);
        let mut port = DpdkPort::open(DeviceSpec::parse("net_null_zc0").unwrap()).unwrap();
        let counters = port.counters();
        let mut cache = pool.cache(64).unwrap();
        let region = pool.region();
        let (start, end) = (region.base_addr(), region.base_addr() + region.len_bytes());
        let mut total = 0;
        for _ in 0..50 {
            let mut out = [0u32; 32];
            let n = {
                let mut burst = RxBurst::new(&mut cache, &mut out, 0);
                port.rx_burst(&mut burst);
                burst.len()
            };
            for &index in &out[..n] {
                // SAFETY: the burst handed us the buffer.
                let data = unsafe { pool.buf_data(index) }.unwrap();
                let at = data.as_ptr() as usize;
                assert!(
                    at >= start && at < end,
                    "received data lies in the shared region"
                );
                assert_eq!(data.len(), 64, "net_null's default frame size");
            }
            // SAFETY: as above; nobody else reads them.
            let frames: Vec<&[u8]> = out[..n]
                .iter()
                .map(|&i| unsafe { pool.buf_data(i) }.unwrap())
                .collect();
            assert_eq!(port.tx_burst(&frames), n);
            cache.free_burst(&out[..n]).unwrap();
            total += n;
        }
        assert!(
            total >= 50 * 32 - 32,
            "net_null always has frames ({total})"
        );
        assert_eq!(counters.copied_bytes(), 0);
        assert_eq!(counters.rx_in_place(), total as u64);
        assert!(
            port.describe().contains("copied: 0 packets, 0 bytes"),
            "{}",
            port.describe()
        );
        finish_with_every_buffer_back(port, cache, &pool);
    }

    /// A capture of 100,000 frames replayed forever: the driver keeps one receive-pool mbuf
    /// per frame, so the port sizes its receive pool from the file (before, it lent 1,536
    /// buffers and DPDK refused any capture larger than that).
    #[cfg(feature = "dpdk")]
    #[test]
    fn net_pcap_replays_a_capture_of_100000_frames_forever() {
        use crate::port::RxBurst;
        if let Some(why) = eal_skip_reason() {
            eprintln!("SKIPPED net_pcap infinite_rx with a large capture: {why}");
            return;
        }
        const FRAMES: usize = 100_000;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.pcap");
        {
            use pcap_file::pcap::{PcapPacket, PcapWriter};
            let file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
            let mut writer = PcapWriter::new(file).unwrap();
            for i in 0..FRAMES as u32 {
                let mut frame = vec![0u8; 60];
                frame[..4].copy_from_slice(&i.to_be_bytes());
                let packet = PcapPacket::new(std::time::Duration::ZERO, 60, &frame);
                writer.write_packet(&packet).unwrap();
            }
        }
        let spec = format!("net_pcap_big0,rx_pcap={},infinite_rx=1", path.display());
        let spec = DeviceSpec::parse(&spec).unwrap();
        assert_eq!(spec.replayed_frames().unwrap(), FRAMES);
        let pool = test_pool(FRAMES + 4096);
        let mut port = DpdkPort::open(spec).unwrap();
        port.attach_pool(&pool).unwrap();
        assert!(pool.capacity() - pool.available() >= FRAMES + 1536);
        let mut cache = pool.cache(64).unwrap();
        // More than the file: the replay wraps around, every frame in order.
        let mut next = 0u32;
        for _ in 0..(FRAMES + 5000) / 32 {
            let mut out = [0u32; 32];
            let n = {
                let mut burst = RxBurst::new(&mut cache, &mut out, 0);
                port.rx_burst(&mut burst);
                burst.len()
            };
            for &index in &out[..n] {
                // SAFETY: the burst handed us the buffer.
                let data = unsafe { pool.buf_data(index) }.unwrap();
                assert_eq!(data.len(), 60);
                assert_eq!(data[..4], next.to_be_bytes(), "frames replay in file order");
                next = (next + 1) % FRAMES as u32;
            }
            cache.free_burst(&out[..n]).unwrap();
        }
        finish_with_every_buffer_back(port, cache, &pool);
    }

    #[cfg(feature = "dpdk")]
    #[test]
    fn lent_frames_go_out_another_device_as_they_are_and_every_buffer_comes_back() {
        use crate::port::{DeviceFrame, RxBurst};
        if let Some(why) = eal_skip_reason() {
            eprintln!("SKIPPED lent frames across devices: {why}");
            return;
        }
        let pool = test_pool(4096);
        let mut null = DpdkPort::open(DeviceSpec::parse("net_null_lent0").unwrap()).unwrap();
        let mut ring = DpdkPort::open(DeviceSpec::parse("net_ring_lent0").unwrap()).unwrap();
        null.attach_pool(&pool).unwrap();
        ring.attach_pool(&pool).unwrap();
        assert!(null.device_domain().is_some());
        assert_eq!(
            null.device_domain(),
            ring.device_domain(),
            "two DPDK ports over one pool are one domain"
        );
        let (null_counters, ring_counters) = (null.counters(), ring.counters());
        let mut cache = pool.cache(64).unwrap();
        let region = pool.region();
        let (start, end) = (region.base_addr(), region.base_addr() + region.len_bytes());

        // Lent by net_null, sent on as they are by net_ring, whose ring then holds mbufs
        // of net_null's mempool.
        let mut frames = [DeviceFrame::default(); 32];
        let (n, oversize) = null.rx_device(&mut frames);
        let mut half = [DeviceFrame::default(); 16];
        assert_eq!((n, oversize), (32, 0), "net_null always has frames");
        for f in &frames[..n] {
            let at = f.data as usize;
            assert!(
                at >= start && at < end,
                "a lent frame lies in the shared region"
            );
            assert_eq!(f.len, 64);
        }
        assert_eq!(ring.tx_device(&frames[..n]), (32, 32 * 64));

        // A lent frame adopted into a pool buffer, the rest freed.
        let (n, _) = null.rx_device(&mut frames);
        assert_eq!(n, 32);
        let mut held = [0u32; 1];
        let adopted = {
            let mut burst = RxBurst::new(&mut cache, &mut held, 0);
            null.adopt_device(frames[0], &mut burst) && burst.len() == 1
        };
        assert!(adopted, "a lent frame becomes a pool buffer");
        // SAFETY: the burst handed us the buffer; nobody else uses it.
        let data = unsafe { pool.buf_data(held[0]) }.unwrap();
        assert_eq!(
            data.as_ptr(),
            frames[0].data,
            "adopted in place, not copied"
        );
        null.free_device(&frames[1..n]);
        cache.free(held[0]).unwrap();

        // net_null stops first: its mempool must outlive the mbufs still in net_ring's
        // ring (parked until the last device over the pool stops).
        null.finish().unwrap();
        assert!(
            pool.available() < pool.capacity() - 32,
            "net_null's buffers are not taken back while net_ring holds its mbufs"
        );
        // Those frames come back through net_ring's receive side, lent again, and are
        // freed into net_null's parked mempool.
        let (back, _) = ring.rx_device(&mut half);
        assert_eq!(back, 16, "net_ring hands back what it was sent");
        ring.free_device(&half[..back]);
        assert_eq!(
            null_counters.copied_bytes() + ring_counters.copied_bytes(),
            0
        );
        assert_eq!(ring_counters.tx_in_place(), 32);
        // The other 16 are still in net_ring's ring: drained at its stop, and then every
        // buffer of both devices is taken back.
        finish_with_every_buffer_back(ring, cache, &pool);
    }

    #[cfg(feature = "dpdk")]
    #[test]
    fn several_queues_are_opened_and_all_polled_by_the_one_switch_thread() {
        use crate::port::RxBurst;
        if let Some(why) = eal_skip_reason() {
            eprintln!("SKIPPED several queues: {why}");
            return;
        }
        let pool = test_pool(4096);
        let mut port =
            DpdkPort::open(DeviceSpec::parse("net_null_mq0,rxq=3,txq=2").unwrap()).unwrap();
        port.attach_pool(&pool).unwrap();
        assert_eq!(
            pool.capacity() - pool.available(),
            (3 + 2) * 512 + 512,
            "buffers lent for 3 receive and 2 transmit rings"
        );
        let mut cache = pool.cache(64).unwrap();
        let mut total = 0;
        for _ in 0..6 {
            let mut out = [0u32; 32];
            let n = {
                let mut burst = RxBurst::new(&mut cache, &mut out, 0);
                port.rx_burst(&mut burst);
                burst.len()
            };
            total += n;
            cache.free_burst(&out[..n]).unwrap();
        }
        assert_eq!(
            total,
            6 * 32,
            "full bursts while the polls rotate over the queues"
        );
        finish_with_every_buffer_back(port, cache, &pool);
    }

    /// Polls `port` `rounds` times from the calling thread with a cache of its own,
    /// sending every frame back out; returns how many frames came in.
    #[cfg(feature = "dpdk")]
    fn poll_and_echo(port: &mut dyn Port, pool: &crate::pool::PacketPool, rounds: usize) -> usize {
        use crate::port::RxBurst;
        let mut cache = pool.cache(64).unwrap();
        let mut total = 0;
        for _ in 0..rounds {
            let mut out = [0u32; 32];
            let n = {
                let mut burst = RxBurst::new(&mut cache, &mut out, 3);
                port.rx_burst(&mut burst);
                burst.len()
            };
            // SAFETY: the burst handed us these buffers; nobody writes them.
            let frames: Vec<&[u8]> = out[..n]
                .iter()
                .map(|&i| unsafe { pool.buf_data(i) }.unwrap())
                .collect();
            assert_eq!(port.tx_burst(&frames), n);
            cache.free_burst(&out[..n]).unwrap();
            total += n;
        }
        total
    }

    #[cfg(feature = "dpdk")]
    #[test]
    fn a_port_split_in_two_is_polled_by_two_threads_and_gives_every_buffer_back() {
        if let Some(why) = eal_skip_reason() {
            eprintln!("SKIPPED split: {why}");
            return;
        }
        let pool = test_pool(8192);
        let mut port =
            DpdkPort::open(DeviceSpec::parse("net_null_split0,rxq=2,txq=2").unwrap()).unwrap();
        let counters = port.counters();
        assert_eq!(port.rx_queues(), 2);
        port.attach_pool(&pool).unwrap();
        assert_eq!(pool.capacity() - pool.available(), (2 + 2) * 512 + 512);
        let mut shares = port.split(2).unwrap();
        assert_eq!(
            shares.len(),
            1,
            "one port for thread 1; this one stays thread 0's"
        );
        let mut share = shares.pop().unwrap();
        let described = share.describe();
        assert!(
            described.contains("switch thread 1 of 2: rx queues 1, tx queue 1"),
            "{described}"
        );
        assert!(described.contains("RSS, symmetric key"), "{described}");
        assert!(
            port.describe()
                .contains("2 switch threads, thread k on rx queues k, k+2, ... and tx queue k"),
            "{}",
            port.describe()
        );
        assert!(port.split(2).is_err(), "a port splits once");

        let (mine, theirs) = std::thread::scope(|scope| {
            let pool = &pool;
            let other = scope.spawn(move || {
                let n = poll_and_echo(share.as_mut(), pool, 40);
                (n, share)
            });
            let mine = poll_and_echo(&mut port, pool, 40);
            let (theirs, share) = other.join().unwrap();
            share_back(share);
            (mine, theirs)
        });
        // net_null fills every burst on every queue.
        assert_eq!((mine, theirs), (40 * 32, 40 * 32));
        assert_eq!(
            counters.rx_in_place(),
            (mine + theirs) as u64,
            "the shares count into the port's counters"
        );
        assert_eq!(counters.copied_bytes(), 0);
        assert!(
            port.describe()
                .contains(&format!("rx by thread: {mine}/{theirs}")),
            "{}",
            port.describe()
        );
        port.finish().unwrap();
        assert_eq!(
            pool.available(),
            pool.capacity(),
            "every lent buffer is back, including those in the other thread's caches"
        );

        /// The switch finishes the shares before the port they came from.
        fn share_back(mut share: Box<dyn Port>) {
            share.finish().unwrap();
            assert!(share.rx_done(), "a finished share receives no more");
        }
    }

    #[cfg(feature = "dpdk")]
    #[test]
    fn a_split_is_refused_when_a_thread_would_lack_a_queue_of_its_own() {
        if let Some(why) = eal_skip_reason() {
            eprintln!("SKIPPED refused split: {why}");
            return;
        }
        let pool = test_pool(4096);
        let mut port = DpdkPort::open(DeviceSpec::parse("net_null_split1,rxq=2").unwrap()).unwrap();
        port.attach_pool(&pool).unwrap();
        let err = port
            .split(2)
            .err()
            .expect("one transmit queue for two threads")
            .to_string();
        assert!(err.contains("net_null_split1"), "{err}");
        assert!(err.contains("rxq=2, txq=1"), "{err}");
        assert!(err.contains("transmit queue is not thread-safe"), "{err}");
        assert!(
            err.contains("`dpdk:net_null_split1,rxq=2,txq=2`"),
            "says what to write: {err}"
        );
        let err = port.split(3).err().unwrap().to_string();
        assert!(err.contains("`dpdk:net_null_split1,rxq=3,txq=3`"), "{err}");
        assert!(
            port.split(1).unwrap().is_empty(),
            "one thread: nothing to split"
        );
        // Refused, the port runs on as one.
        assert_eq!(poll_and_echo(&mut port, &pool, 4), 4 * 32);
        port.finish().unwrap();
        assert_eq!(pool.available(), pool.capacity());
    }

    #[cfg(feature = "dpdk")]
    #[test]
    fn a_pool_too_small_for_the_rings_is_refused_with_the_number_needed() {
        if let Some(why) = eal_skip_reason() {
            eprintln!("SKIPPED small pool: {why}");
            return;
        }
        let pool = test_pool(1000);
        let mut port = DpdkPort::open(DeviceSpec::parse("net_null_small0").unwrap()).unwrap();
        let err = port.attach_pool(&pool).unwrap_err().to_string();
        assert!(err.contains("needs 1536 pool buffers"), "{err}");
        assert!(err.contains("raise --buffers"), "{err}");
        assert!(port.describe().contains("FAILED"), "{}", port.describe());
        assert!(port.rx_done() && !port.has_tx());
        assert_eq!(pool.available(), pool.capacity(), "nothing kept on failure");
    }

    #[cfg(not(feature = "dpdk"))]
    #[test]
    fn without_the_feature_a_dpdk_port_says_how_to_get_it() {
        let err = open("net_null0").err().expect("no driver").to_string();
        assert!(err.contains("--features dpdk"), "{err}");
        assert!(err.contains("libdpdk-dev"), "{err}");
    }
}
