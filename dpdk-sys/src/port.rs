//! Ethdev ports: configure, start, and burst I/O through per-queue handles.
//!
//! DPDK's burst functions are not thread-safe on one queue, but distinct queues may run on
//! distinct threads. So a started [`Port`] hands out each [`RxQueue`] and [`TxQueue`] once;
//! a queue handle is `Send` (move it to its switch thread) and takes `&mut self` to burst.
//! The device is stopped and closed when the port and all its queue handles are gone.

use std::ffi::CStr;
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::eal::check;
use crate::{
    ffi, symmetric_rss_key, Eal, Error, Mbuf, Mempool, PortConfig, PortInfo, PortStats, Result, Rss,
};

/// A configured, started ethdev port.
#[derive(Debug)]
pub struct Port {
    inner: Arc<PortInner>,
    rss: Rss,
}

#[derive(Debug)]
struct PortInner {
    id: u16,
    rx_taken: Vec<AtomicBool>,
    tx_taken: Vec<AtomicBool>,
    /// Keeps the RX pool alive while the driver's rings hold its buffers.
    _pool: Mempool,
}

impl Drop for PortInner {
    fn drop(&mut self) {
        // SAFETY: no queue handle is left (each holds an Arc to this), so no burst is running;
        // stop and close release the buffers in the device's rings to the pool.
        unsafe {
            ffi::rte_eth_dev_stop(self.id);
            ffi::rte_eth_dev_close(self.id);
        }
    }
}

/// One RX queue of a port, to be polled by one thread.
#[derive(Debug)]
pub struct RxQueue {
    port: Arc<PortInner>,
    queue: u16,
    _not_sync: PhantomData<std::cell::Cell<()>>,
}

/// One TX queue of a port, to be fed by one thread.
#[derive(Debug)]
pub struct TxQueue {
    port: Arc<PortInner>,
    queue: u16,
    _not_sync: PhantomData<std::cell::Cell<()>>,
}

/// Reads a port's device info.
fn dev_info(port_id: u16) -> Result<ffi::rte_eth_dev_info> {
    let mut info = MaybeUninit::<ffi::rte_eth_dev_info>::zeroed();
    // SAFETY: info is a valid out pointer; DPDK fills it (an all-zero one is a valid value).
    let ret = unsafe { ffi::rte_eth_dev_info_get(port_id, info.as_mut_ptr()) };
    check("rte_eth_dev_info_get", ret)?;
    // SAFETY: zeroed is a valid rte_eth_dev_info (plain integers and pointers), and DPDK
    // filled it on success.
    Ok(unsafe { info.assume_init() })
}

/// The NUMA node of a port, `None` when unknown.
pub(crate) fn socket_of(port_id: u16) -> Option<u32> {
    // SAFETY: a read-only query; returns -1 (SOCKET_ID_ANY) when unknown or invalid.
    let socket = unsafe { ffi::rte_eth_dev_socket_id(port_id) };
    u32::try_from(socket).ok()
}

impl Port {
    /// Looks up `name`, configures it with `config`, sets up its queues with RX buffers from
    /// `pool`, and starts it.
    pub fn start(eal: &Eal, name: &str, config: &PortConfig, pool: &Mempool) -> Result<Port> {
        let id = eal.port_by_name(name)?;
        let config_error = |message: String| Error::Config { port: id, message };
        let info = dev_info(id)?;
        if config.rx_queues == 0 || config.rx_queues > info.max_rx_queues {
            return Err(config_error(format!(
                "{} RX queues asked, the device has 1 to {}",
                config.rx_queues, info.max_rx_queues
            )));
        }
        if config.tx_queues == 0 || config.tx_queues > info.max_tx_queues {
            return Err(config_error(format!(
                "{} TX queues asked, the device has 1 to {}",
                config.tx_queues, info.max_tx_queues
            )));
        }

        let mut conf = ffi::rte_eth_conf::default();
        // SAFETY: returns a constant.
        let rss_hf = unsafe { ffi::netvm_rte_eth_rss_ip_tcp_udp() } & info.flow_type_rss_offloads;
        let mut rss = Rss::Off;
        let mut key = Vec::new();
        if config.rss && config.rx_queues > 1 {
            rss = Rss::Unsupported;
            if rss_hf != 0 {
                conf.rxmode.mq_mode = ffi::rte_eth_rx_mq_mode_RTE_ETH_MQ_RX_RSS;
                conf.rx_adv_conf.rss_conf.rss_hf = rss_hf;
                rss = Rss::DefaultKey("not asked for".into());
                if config.symmetric_rss_key {
                    key = symmetric_rss_key(rss_key_bytes(&info).into());
                    rss = Rss::Symmetric;
                }
            }
        }
        let configure = |conf: &ffi::rte_eth_conf| {
            // SAFETY: conf is a valid configuration that DPDK copies (with the key it points
            // at, which outlives the call).
            let ret =
                unsafe { ffi::rte_eth_dev_configure(id, config.rx_queues, config.tx_queues, conf) };
            check("rte_eth_dev_configure", ret)
        };
        if rss == Rss::Symmetric {
            conf.rx_adv_conf.rss_conf.rss_key = key.as_mut_ptr();
            conf.rx_adv_conf.rss_conf.rss_key_len = rss_key_bytes(&info);
            if let Err(e) = configure(&conf) {
                // Some devices take no key at configure time: their own key, then.
                conf.rx_adv_conf.rss_conf.rss_key = std::ptr::null_mut();
                conf.rx_adv_conf.rss_conf.rss_key_len = 0;
                rss = Rss::DefaultKey(format!("the device refused the symmetric key: {e}"));
                configure(&conf)?;
            }
        } else {
            configure(&conf)?;
        }

        let socket = socket_of(id).map_or(ffi::SOCKET_ID_ANY as u32, |s| s);
        for q in 0..config.rx_queues {
            // SAFETY: the port is configured with this many queues; a NULL rxconf asks for the
            // driver's defaults; the pool outlives the port (PortInner holds a handle).
            let ret = unsafe {
                ffi::rte_eth_rx_queue_setup(
                    id,
                    q,
                    config.rx_ring_slots,
                    socket,
                    std::ptr::null(),
                    pool.as_ptr(),
                )
            };
            check("rte_eth_rx_queue_setup", ret)?;
        }
        for q in 0..config.tx_queues {
            // SAFETY: as above; a NULL txconf asks for the driver's defaults.
            let ret = unsafe {
                ffi::rte_eth_tx_queue_setup(id, q, config.tx_ring_slots, socket, std::ptr::null())
            };
            check("rte_eth_tx_queue_setup", ret)?;
        }
        // SAFETY: the port is configured and all its queues are set up.
        let ret = unsafe { ffi::rte_eth_dev_start(id) };
        check("rte_eth_dev_start", ret)?;
        if config.promiscuous {
            // SAFETY: the port is started. Devices without promiscuous mode report -ENOTSUP,
            // which changes nothing for them, so the result is not an error.
            unsafe { ffi::rte_eth_promiscuous_enable(id) };
        }

        if rss == Rss::Symmetric {
            // Many drivers apply the configured key at start, some (net_null) only through
            // the update call: make sure, then read back what the device keeps.
            rss = apply_rss_key(id, &mut key, rss_hf);
        }

        let taken = |n: u16| (0..n).map(|_| AtomicBool::new(false)).collect();
        Ok(Port {
            inner: Arc::new(PortInner {
                id,
                rx_taken: taken(config.rx_queues),
                tx_taken: taken(config.tx_queues),
                _pool: pool.clone(),
            }),
            rss,
        })
    }

    /// How the port spreads flows over its receive queues.
    pub fn rss(&self) -> &Rss {
        &self.rss
    }

    /// The RSS key the device holds now (`rte_eth_dev_rss_hash_conf_get`).
    pub fn rss_key(&self) -> Result<Vec<u8>> {
        let info = dev_info(self.inner.id)?;
        read_rss_key(self.inner.id, rss_key_bytes(&info))
    }

    /// DPDK's port id.
    pub fn id(&self) -> u16 {
        self.inner.id
    }

    /// What the device can do.
    pub fn info(&self) -> Result<PortInfo> {
        let info = dev_info(self.inner.id)?;
        let mut name = [0 as std::ffi::c_char; 64];
        // SAFETY: name is a 64-byte buffer, the size DPDK's names are limited to
        // (RTE_ETH_NAME_MAX_LEN), and DPDK NUL-terminates what it writes.
        let ret = unsafe { ffi::rte_eth_dev_get_name_by_port(self.inner.id, name.as_mut_ptr()) };
        check("rte_eth_dev_get_name_by_port", ret)?;
        // SAFETY: NUL-terminated by DPDK (checked above).
        let name = unsafe { CStr::from_ptr(name.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        let driver_name = if info.driver_name.is_null() {
            String::new()
        } else {
            // SAFETY: driver_name points to the driver's static name string.
            unsafe { CStr::from_ptr(info.driver_name) }
                .to_string_lossy()
                .into_owned()
        };
        Ok(PortInfo {
            name,
            driver_name,
            max_rx_queues: info.max_rx_queues,
            max_tx_queues: info.max_tx_queues,
            socket_id: socket_of(self.inner.id),
            rss_offloads: info.flow_type_rss_offloads,
        })
    }

    /// The device's counters.
    pub fn stats(&self) -> Result<PortStats> {
        let mut stats = ffi::rte_eth_stats::default();
        // SAFETY: stats is a valid out pointer.
        let ret = unsafe { ffi::rte_eth_stats_get(self.inner.id, &mut stats) };
        check("rte_eth_stats_get", ret)?;
        Ok(PortStats {
            rx_packets: stats.ipackets,
            tx_packets: stats.opackets,
            rx_bytes: stats.ibytes,
            tx_bytes: stats.obytes,
            rx_missed: stats.imissed,
            rx_errors: stats.ierrors,
            tx_errors: stats.oerrors,
            rx_no_mbuf: stats.rx_nombuf,
        })
    }

    /// Takes the handle of RX queue `queue` (once per queue).
    pub fn rx_queue(&self, queue: u16) -> Result<RxQueue> {
        take(&self.inner.rx_taken, queue).ok_or(Error::QueueUnavailable {
            port: self.inner.id,
            direction: "RX",
            queue,
        })?;
        Ok(RxQueue {
            port: Arc::clone(&self.inner),
            queue,
            _not_sync: PhantomData,
        })
    }

    /// Takes the handle of TX queue `queue` (once per queue).
    pub fn tx_queue(&self, queue: u16) -> Result<TxQueue> {
        take(&self.inner.tx_taken, queue).ok_or(Error::QueueUnavailable {
            port: self.inner.id,
            direction: "TX",
            queue,
        })?;
        Ok(TxQueue {
            port: Arc::clone(&self.inner),
            queue,
            _not_sync: PhantomData,
        })
    }
}

/// The device's RSS key length: what it reports, or the classic 40 bytes for a device
/// that reports none (`net_null` keeps a 40-byte key and says 0).
fn rss_key_bytes(info: &ffi::rte_eth_dev_info) -> u8 {
    if info.hash_key_size > 0 {
        info.hash_key_size
    } else {
        40
    }
}

/// Gives a started port `key` through `rte_eth_dev_rss_hash_update` and checks what it
/// kept: [`Rss::Symmetric`] when it reads back as `key` (or cannot be read back after an
/// accepted update), else why not.
fn apply_rss_key(id: u16, key: &mut [u8], rss_hf: u64) -> Rss {
    let Ok(len) = u8::try_from(key.len()) else {
        return Rss::DefaultKey(format!("a {}-byte key is too long", key.len()));
    };
    let mut conf = ffi::rte_eth_rss_conf {
        rss_key: key.as_mut_ptr(),
        rss_key_len: len,
        rss_hf,
    };
    // SAFETY: conf points at `key`, `len` bytes long, which DPDK copies.
    let updated = check("rte_eth_dev_rss_hash_update", unsafe {
        ffi::rte_eth_dev_rss_hash_update(id, &mut conf)
    });
    match (read_rss_key(id, len), updated) {
        (Ok(kept), _) if kept == key => Rss::Symmetric,
        (Ok(_), Err(e)) => Rss::DefaultKey(format!("the device refused the symmetric key: {e}")),
        (Ok(_), Ok(())) => Rss::DefaultKey("the device did not keep the symmetric key".into()),
        (Err(_), Ok(())) => Rss::Symmetric,
        (Err(_), Err(e)) => {
            // Taken at configure time, perhaps; the device cannot say which key it uses.
            Rss::DefaultKey(format!("the device cannot say which key it uses ({e})"))
        }
    }
}

fn read_rss_key(id: u16, len: u8) -> Result<Vec<u8>> {
    let mut key = vec![0u8; len.into()];
    let mut conf = ffi::rte_eth_rss_conf {
        rss_key: key.as_mut_ptr(),
        rss_key_len: len,
        rss_hf: 0,
    };
    // SAFETY: conf points at `len` writable bytes, the device's key size.
    let ret = unsafe { ffi::rte_eth_dev_rss_hash_conf_get(id, &mut conf) };
    check("rte_eth_dev_rss_hash_conf_get", ret)?;
    Ok(key)
}

fn take(flags: &[AtomicBool], queue: u16) -> Option<()> {
    let flag = flags.get(queue as usize)?;
    (!flag.swap(true, Ordering::AcqRel)).then_some(())
}

impl RxQueue {
    /// Receives up to `max` packets, appended to `out`; returns how many.
    pub fn rx_burst(&mut self, out: &mut Vec<Mbuf>, max: u16) -> usize {
        out.reserve(max as usize);
        let len = out.len();
        // SAFETY: the spare capacity holds at least `max` slots; Mbuf is a transparent
        // NonNull<rte_mbuf>, so DPDK writes valid Mbufs into the first n of them, which we
        // then own; this handle is the only user of (port, queue).
        unsafe {
            let slots = out.as_mut_ptr().add(len).cast::<*mut ffi::rte_mbuf>();
            let n = ffi::netvm_rte_eth_rx_burst(self.port.id, self.queue, slots, max) as usize;
            out.set_len(len + n);
            n
        }
    }

    pub fn queue(&self) -> u16 {
        self.queue
    }
}

impl TxQueue {
    /// Hands the packets at the front of `pkts` to the device; the ones it took are removed
    /// from `pkts` (the driver frees them once sent), the rest stay, in order. Returns how
    /// many were taken.
    pub fn tx_burst(&mut self, pkts: &mut Vec<Mbuf>) -> usize {
        let count = u16::try_from(pkts.len()).unwrap_or(u16::MAX);
        // SAFETY: pkts holds `count` live Mbufs, laid out as rte_mbuf pointers (repr
        // transparent); this handle is the only user of (port, queue).
        let sent = unsafe {
            ffi::netvm_rte_eth_tx_burst(self.port.id, self.queue, pkts.as_mut_ptr().cast(), count)
        };
        let sent = sent as usize;
        // SAFETY: the first `sent` Mbufs now belong to the driver: shift the rest down over
        // them without dropping them, then shrink the length.
        unsafe {
            let rest = pkts.len() - sent;
            std::ptr::copy(pkts.as_ptr().add(sent), pkts.as_mut_ptr(), rest);
            pkts.set_len(rest);
        }
        sent
    }

    pub fn queue(&self) -> u16 {
        self.queue
    }
}
