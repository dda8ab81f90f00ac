//! Ports: where packets enter and leave the switch.
//!
//! A [`Port`] never touches the pool: on receive it pushes frame bytes into an
//! [`RxBurst`], which allocates and fills buffers (and refuses when the burst is full or
//! the pool is dry, so the port keeps the frame for the next poll); on transmit it is
//! handed byte slices and the switch frees the buffers afterwards. Drivers:
//! [`gen`] (synthetic traffic), [`null`] (a sink), [`pcap`] (files), [`afpacket`]
//! (a Linux raw socket) and [`dpdk`] (DPDK ethdevs, with the `dpdk` feature). [`open`]
//! builds one from a `--bind` argument, `DRIVER:ARGS`.
//!
//! The one exception to "never touches the pool" is [`dpdk`]: its receive buffers *are*
//! pool buffers (DPDK writes frames straight into them), so it receives with
//! [`RxBurst::push_held`] and learns the pool from [`Port::attach_pool`] (or, until the
//! switch calls that, from its first [`RxBurst`]); and it sends by buffer
//! ([`Port::tx_buffers`]), taking over the switch's reference to each frame rather than
//! being handed its bytes.

pub mod afpacket;
pub mod capture;
pub mod dpdk;
pub mod gen;
pub mod null;
pub mod pcap;

use crate::layout::{BUF_DATA_ROOM, BUF_HEADROOM};
use crate::pool::{PacketPool, PoolCache};

/// Why a port could not be opened or used.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error("unknown port driver `{0}` (expected gen, null, pcap, afpacket or dpdk)")]
    UnknownDriver(String),
    #[error("{driver}: {why}")]
    BadArgs { driver: &'static str, why: String },
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

pub(crate) fn bad_args(driver: &'static str, why: impl Into<String>) -> PortError {
    PortError::BadArgs {
        driver,
        why: why.into(),
    }
}

/// Parse `key=value,key=value`. Keys not in `allowed` are an error.
pub(crate) fn parse_args<'a>(
    driver: &'static str,
    args: &'a str,
    allowed: &[&str],
) -> Result<Vec<(&'a str, &'a str)>, PortError> {
    let mut out = Vec::new();
    for kv in args.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| bad_args(driver, format!("expected KEY=VALUE, not `{kv}`")))?;
        if !allowed.contains(&k) {
            return Err(bad_args(
                driver,
                format!("unknown key `{k}` (expected one of {})", allowed.join(", ")),
            ));
        }
        out.push((k, v));
    }
    Ok(out)
}

/// A port. Polled by one switch thread.
pub trait Port: Send {
    /// Driver and arguments, for reports.
    fn describe(&self) -> String;

    /// Push up to `burst.room()` received frames. Frames `burst` refuses stay with the
    /// port for the next call.
    fn rx_burst(&mut self, burst: &mut RxBurst<'_>);

    /// The port will never receive again (finite input drained, or no receive side).
    fn rx_done(&self) -> bool;

    /// Whether the port can transmit.
    fn has_tx(&self) -> bool;

    /// Transmit these frames; returns how many were sent (the rest are counted as
    /// dropped with reason `tx_error`).
    fn tx_burst(&mut self, frames: &[&[u8]]) -> usize;

    /// Send the frames held in pool buffers `indices`, taking over the caller's reference
    /// to every one of them, sent or not. Returns the frames sent and their bytes. The
    /// default sends each frame's bytes with [`Port::tx_burst`] and then frees every
    /// reference through `cache` ([`send_and_free`]); a driver whose device sends
    /// straight from pool buffers ([`dpdk`]) hands each reference to the device instead,
    /// which saves a reference-count update per frame.
    ///
    /// # Safety
    /// The caller holds one reference to each index of `cache`'s pool (and gives it up),
    /// and nobody writes those buffers during the call (the pool's ownership rule: only
    /// the sole holder may write).
    unsafe fn tx_buffers(&mut self, cache: &mut PoolCache, indices: &[u32]) -> (usize, u64) {
        // SAFETY: forwarded from our caller.
        unsafe { send_and_free(self, cache, indices) }
    }

    /// Flush buffered output; called when the switch stops.
    fn finish(&mut self) -> Result<(), PortError> {
        Ok(())
    }

    /// The shared pool the switch receives into, before the first poll. Ports whose
    /// device writes straight into pool buffers ([`dpdk`]) set themselves up here; the
    /// others ignore it.
    fn attach_pool(&mut self, _pool: &PacketPool) -> Result<(), PortError> {
        Ok(())
    }

    /// Receive queues the port spreads traffic over (RSS), each of which one switch
    /// thread can own: the switch runs this many switch threads unless told otherwise.
    fn rx_queues(&self) -> usize {
        1
    }

    /// The NUMA node the device sits on, when known: switch threads are pinned to its
    /// cores and the shared pool is placed on it.
    fn numa_node(&self) -> Option<usize> {
        None
    }

    /// For a switch with `threads` switch threads, each polling and sending on its own
    /// share of the port: returns the ports threads `1..threads` use, in order (this
    /// one stays thread 0's). Called once, after [`Port::attach_pool`], before any
    /// burst. Each returned port is polled by one thread only; the switch calls their
    /// [`Port::finish`] before this one's. Drivers with one queue refuse.
    fn split(&mut self, threads: usize) -> Result<Vec<Box<dyn Port>>, PortError> {
        Err(PortError::Other(format!(
            "`{}` has one queue and cannot be shared by {threads} switch threads (run one \
             switch thread, --switch-threads 1, or bind a driver with a queue per thread)",
            self.describe()
        )))
    }

    /// The device domain of this port, once it runs: ports of one domain (DPDK ports
    /// over the same shared pool) can send each other's [`DeviceFrame`]s as they are,
    /// with no pool buffer taken for them. `None` (the default): this port has no device
    /// frames, and [`Port::rx_device`] and the other `*_device` calls are never made.
    fn device_domain(&self) -> Option<usize> {
        None
    }

    /// Receive up to `out.len()` frames and lend them to the switch as they lie in the
    /// device's buffers (in the shared region for DPDK, so still zero-copy); returns how
    /// many, and how many were consumed as oversize (counted, freed). Every lent frame
    /// must come back through exactly one of [`tx_device`](Port::tx_device) (of a port
    /// of the same domain), [`free_device`](Port::free_device) or
    /// [`adopt_device`](Port::adopt_device), in the same burst.
    fn rx_device(&mut self, _out: &mut [DeviceFrame]) -> (usize, u64) {
        (0, 0)
    }

    /// Send device frames of this port's domain, taking them over, sent or not (the
    /// unsent are freed). Returns (frames sent, their bytes).
    fn tx_device(&mut self, frames: &[DeviceFrame]) -> (usize, u64) {
        self.free_device(frames);
        (0, 0)
    }

    /// Give back device frames nobody sends (dropped by the policy).
    fn free_device(&mut self, _frames: &[DeviceFrame]) {}

    /// Turn a device frame this port lent into a pool buffer pushed into `burst` (one
    /// reference, data window and port set), for the switch's general path (VMs,
    /// mirrors, chains, other ports). `false`: no buffer could take it (the pool is
    /// dry); the frame is gone (freed), the caller counts it dropped.
    fn adopt_device(&mut self, frame: DeviceFrame, _burst: &mut RxBurst<'_>) -> bool {
        self.free_device(&[frame]);
        false
    }
}

/// A received frame still held by its device (a DPDK mbuf), lent to the switch for one
/// burst: classified where it lies, then sent, freed or adopted into a pool buffer
/// ([`Port::rx_device`]).
#[derive(Debug, Clone, Copy)]
pub struct DeviceFrame {
    /// The driver's handle (an `rte_mbuf` pointer); opaque to the switch.
    pub handle: usize,
    /// The frame's first byte and length; readable until the frame is given back.
    pub data: *const u8,
    pub len: u32,
}

impl Default for DeviceFrame {
    fn default() -> Self {
        DeviceFrame {
            handle: 0,
            data: std::ptr::null(),
            len: 0,
        }
    }
}

// SAFETY: a DeviceFrame is a handle to a buffer owned by whoever holds the handle; it
// moves with its owner (the switch thread that polled it) and is only read by it.
unsafe impl Send for DeviceFrame {}

impl DeviceFrame {
    /// The frame's bytes.
    ///
    /// # Safety
    /// The frame is lent to the caller (received and not yet given back) and nobody
    /// writes it meanwhile.
    #[inline]
    pub unsafe fn bytes(&self) -> &[u8] {
        if self.data.is_null() {
            return &[];
        }
        // SAFETY: the caller's contract: `data` points at `len` readable bytes of a
        // frame lent to it.
        unsafe { std::slice::from_raw_parts(self.data, self.len as usize) }
    }
}

/// Frames per [`Port::tx_burst`] call that [`send_and_free`] makes.
const TX_CHUNK: usize = 64;

/// [`Port::tx_buffers`] for any port: send the frames' bytes with [`Port::tx_burst`],
/// then free every reference through `cache`.
///
/// # Safety
/// As for [`Port::tx_buffers`].
pub unsafe fn send_and_free<P: Port + ?Sized>(
    port: &mut P,
    cache: &mut PoolCache,
    indices: &[u32],
) -> (usize, u64) {
    let (mut sent, mut bytes) = (0, 0);
    for chunk in indices.chunks(TX_CHUNK) {
        {
            let pool = cache.pool();
            let mut frames: [&[u8]; TX_CHUNK] = [&[]; TX_CHUNK];
            for (slot, &index) in frames.iter_mut().zip(chunk) {
                // SAFETY: the caller holds a reference to `index` and nobody writes it
                // during the call; the slices are dropped before the references go.
                *slot = unsafe { pool.buf_data(index) }.unwrap_or(&[]);
            }
            let n = port.tx_burst(&frames[..chunk.len()]).min(chunk.len());
            bytes += frames[..n].iter().map(|f| f.len() as u64).sum::<u64>();
            sent += n;
        }
        let _ = cache.free_burst(chunk);
    }
    (sent, bytes)
}

/// Receive-side buffer allocation for one burst.
pub struct RxBurst<'a> {
    cache: &'a mut PoolCache,
    out: &'a mut [u32],
    len: usize,
    port: u16,
    pub(crate) oversize: u64,
    /// Their bytes: a port's rx bytes count every frame it received, dropped or not.
    pub(crate) oversize_bytes: u64,
    pub(crate) pool_dry: bool,
}

impl<'a> RxBurst<'a> {
    pub(crate) fn new(cache: &'a mut PoolCache, out: &'a mut [u32], port: u16) -> RxBurst<'a> {
        RxBurst {
            cache,
            out,
            len: 0,
            port,
            oversize: 0,
            oversize_bytes: 0,
            pool_dry: false,
        }
    }

    /// Frames the burst can still take.
    pub fn room(&self) -> usize {
        if self.pool_dry {
            0
        } else {
            self.out.len() - self.len
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The pool this burst allocates from.
    pub fn pool(&self) -> &PacketPool {
        self.cache.pool()
    }

    /// Allocate up to `out.len()` buffers from the switch's cache (for a port that lends
    /// buffers to its device); returns how many. The port holds them until it pushes
    /// them with [`push_held`](Self::push_held) or frees them.
    pub fn alloc_for_port(&mut self, out: &mut [u32]) -> usize {
        let n = self.cache.alloc_burst(out);
        if n < out.len() {
            self.pool_dry = true;
        }
        n
    }

    /// Emit a buffer the port already holds (one reference, its data window and port
    /// set): a frame the device wrote in place. `false`: the burst is full, keep it.
    pub fn push_held(&mut self, index: u32) -> bool {
        if self.len == self.out.len() {
            return false;
        }
        self.out[self.len] = index;
        self.len += 1;
        true
    }

    /// Consume a frame that cannot be forwarded whole (truncated by the driver, or
    /// larger than a buffer): it is counted as received and dropped as `oversize`.
    pub fn count_oversize(&mut self, len: usize) {
        self.oversize += 1;
        self.oversize_bytes += len as u64;
    }

    /// Copy `frame` into a fresh buffer. `false`: not taken (burst full or pool dry),
    /// keep it. Frames larger than a buffer's data room are consumed and counted
    /// (`oversize`), never truncated.
    pub fn push(&mut self, frame: &[u8]) -> bool {
        if self.room() == 0 {
            return false;
        }
        if frame.len() > BUF_DATA_ROOM {
            self.count_oversize(frame.len());
            return true;
        }
        let Some(index) = self.cache.alloc() else {
            self.pool_dry = true;
            return false;
        };
        let pool: &PacketPool = self.cache.pool();
        // SAFETY: we just allocated `index`, so ours is its only reference.
        let written = unsafe { pool.write_data(index, frame) };
        if written.is_err() || pool.set_port(index, self.port).is_err() {
            // Cannot happen for a fresh in-range buffer and a frame within the data room;
            // give the buffer back rather than forward garbage.
            let _ = self.cache.free(index);
            self.count_oversize(frame.len());
            return true;
        }
        self.out[self.len] = index;
        self.len += 1;
        true
    }
}

/// Content tags of prefilled frames: port `p`'s template `t` is `(p + 1) << 17 | (t + 1)`
/// (at most 65,536 templates a port, 256 ports).
const TAG_PORT_SHIFT: u32 = 17;

impl RxBurst<'_> {
    /// Emit a buffer that may still hold one of this port's `templates` from an earlier
    /// trip (its content tag says which, and every write since would have cleared it):
    /// such a buffer is sent as it is, without touching its bytes; any other buffer gets
    /// `templates[next]` written and tagged. Returns the template sent, or `None` when
    /// the burst refused (full, or the pool dry). Every template must fit a buffer.
    pub fn push_prefilled(&mut self, templates: &[Vec<u8>], next: usize) -> Option<usize> {
        if self.room() == 0 || next >= templates.len() {
            return None;
        }
        let Some(index) = self.cache.alloc() else {
            self.pool_dry = true;
            return None;
        };
        let pool: &PacketPool = self.cache.pool();
        let base = ((u32::from(self.port) & 0xff) + 1) << TAG_PORT_SHIFT;
        let tag = pool.content_tag(index).unwrap_or(0);
        let held = (tag >> TAG_PORT_SHIFT == base >> TAG_PORT_SHIFT)
            .then_some((tag & ((1 << TAG_PORT_SHIFT) - 1)) as usize)
            .filter(|&t| (1..=templates.len()).contains(&t))
            .map(|t| t - 1);
        let sent = match held {
            Some(t) => pool
                .set_data(index, BUF_HEADROOM, templates[t].len())
                .map(|()| t),
            // SAFETY: we just allocated `index`, so ours is its only reference.
            None => unsafe { pool.write_data(index, &templates[next]) }
                .and_then(|()| pool.set_content_tag(index, base | (next as u32 + 1)))
                .map(|()| next),
        };
        match sent.and_then(|t| pool.set_port(index, self.port).map(|()| t)) {
            Ok(t) => {
                self.out[self.len] = index;
                self.len += 1;
                Some(t)
            }
            Err(_) => {
                // Only a template larger than the data room gets here.
                let _ = self.cache.free(index);
                self.oversize += 1;
                Some(next)
            }
        }
    }
}

/// Open a port from `DRIVER:ARGS` (`gen:flows=4,count=1000`, `pcap:rx=in.pcap`, `null`).
/// `port_index` seeds the generator so two generated ports differ.
pub fn open(spec: &str, port_index: usize) -> Result<Box<dyn Port>, PortError> {
    let (driver, args) = spec.split_once(':').unwrap_or((spec, ""));
    Ok(match driver {
        "gen" => Box::new(gen::GenPort::new(
            &gen::GenConfig::parse(args)?,
            port_index,
        )?),
        "null" => {
            if !args.trim().is_empty() {
                return Err(bad_args(
                    "null",
                    format!("takes no options, not `{args}` (write `null`)"),
                ));
            }
            Box::new(null::NullPort)
        }
        "pcap" => Box::new(pcap::PcapPort::open(args)?),
        "afpacket" => Box::new(afpacket::AfPacketPort::open(args)?),
        "dpdk" => dpdk::open(args)?,
        other => return Err(PortError::UnknownDriver(other.to_string())),
    })
}
