//! The Environment Abstraction Layer: DPDK's process-wide init, which probes devices, maps
//! memory and loads the drivers. It can run once per process; [`init`] enforces that and hands
//! out the [`Eal`] token every other type of this crate asks for as proof.

use std::ffi::{c_char, c_int, CStr, CString};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::{ffi, Error, Result};

static INITIALISED: AtomicBool = AtomicBool::new(false);

/// Proof that the EAL is initialised in this process.
#[derive(Debug)]
pub struct Eal {
    _private: (),
}

/// Initialises the EAL with `args` (as on a DPDK application's command line, without the
/// program name), e.g. `["--no-pci", "--in-memory", "--no-huge", "-m", "256",
/// "--vdev=net_null0"]`.
///
/// Fails with [`Error::EalAlreadyInitialised`] on a second call after a success, and with
/// [`Error::MbufLayout`], before DPDK is touched, when the DPDK it runs with lays out
/// `struct rte_mbuf` differently from the bindings ([`crate::check_mbuf_layout`]).
pub fn init<S: AsRef<str>>(args: &[S]) -> Result<Eal> {
    if INITIALISED.swap(true, Ordering::AcqRel) {
        return Err(Error::EalAlreadyInitialised);
    }
    let result = init_once(args);
    if result.is_err() {
        // DPDK resets its own run-once flag on most failures; let the caller retry.
        INITIALISED.store(false, Ordering::Release);
    }
    result
}

fn init_once<S: AsRef<str>>(args: &[S]) -> Result<Eal> {
    crate::check_mbuf_layout()?;
    let mut argv: Vec<*mut c_char> = Vec::with_capacity(args.len() + 2);
    for arg in std::iter::once("netvm").chain(args.iter().map(AsRef::as_ref)) {
        let arg = CString::new(arg).map_err(|_| Error::Nul {
            what: "an EAL argument",
            value: arg.into(),
        })?;
        // Leaked on purpose: the EAL may keep pointers into argv (getopt permutes it and
        // some options are kept as given), and this runs once per process.
        argv.push(CString::into_raw(arg));
    }
    let argc = c_int::try_from(argv.len()).map_err(|_| Error::Config {
        port: 0,
        message: "too many EAL arguments".into(),
    })?;
    argv.push(std::ptr::null_mut());
    let argv = argv.leak();
    // SAFETY: argv holds argc valid, NUL-terminated strings followed by NULL, all leaked so
    // they outlive the process's use of them; `INITIALISED` makes this the only call in
    // flight.
    let parsed = unsafe { ffi::rte_eal_init(argc, argv.as_mut_ptr()) };
    if parsed < 0 {
        return Err(call_error("rte_eal_init", errno()));
    }
    Ok(Eal { _private: () })
}

impl Eal {
    /// Releases the EAL's resources (huge pages, drivers, threads).
    ///
    /// # Safety
    /// Every [`crate::Port`], [`crate::Mempool`] and [`crate::Mbuf`] must be gone, and no
    /// DPDK call may run in this process afterwards (the EAL cannot be initialised again).
    pub unsafe fn cleanup(self) -> Result<()> {
        // SAFETY: the caller promises no DPDK object or call outlives this.
        let ret = unsafe { ffi::rte_eal_cleanup() };
        check("rte_eal_cleanup", ret)
    }

    /// Whether the EAL runs on huge pages (false under `--no-huge`).
    pub fn has_hugepages(&self) -> bool {
        // SAFETY: the EAL is initialised (`self` exists); a read-only query.
        unsafe { ffi::rte_eal_has_hugepages() != 0 }
    }

    /// Number of usable ethdev ports.
    pub fn port_count(&self) -> u16 {
        // SAFETY: the EAL is initialised; a read-only query.
        unsafe { ffi::rte_eth_dev_count_avail() }
    }

    /// The port id of a probed device (`net_null0`, `0000:01:00.0`, ...).
    pub fn port_by_name(&self, name: &str) -> Result<u16> {
        let c_name = CString::new(name).map_err(|_| Error::Nul {
            what: "a port name",
            value: name.into(),
        })?;
        let mut port_id = 0u16;
        // SAFETY: c_name is a valid C string and port_id a valid out pointer for the call.
        let ret = unsafe { ffi::rte_eth_dev_get_port_by_name(c_name.as_ptr(), &mut port_id) };
        if ret != 0 {
            return Err(Error::NoSuchPort(name.into()));
        }
        Ok(port_id)
    }

    /// The NUMA node of port `port_id`'s device, `None` when DPDK does not know
    /// (`SOCKET_ID_ANY`, as for virtual devices) or there is no such port.
    pub fn port_numa_node(&self, port_id: u16) -> Option<u32> {
        crate::port::socket_of(port_id)
    }

    /// Creates a virtual device after init, like `--vdev=NAME,ARGS` does at init
    /// (`("net_pcap0", "rx_pcap=in.pcap,tx_pcap=out.pcap")`).
    pub fn vdev_init(&self, name: &str, args: &str) -> Result<()> {
        let c_name = CString::new(name).map_err(|_| Error::Nul {
            what: "a vdev name",
            value: name.into(),
        })?;
        let c_args = CString::new(args).map_err(|_| Error::Nul {
            what: "vdev arguments",
            value: args.into(),
        })?;
        // SAFETY: both are valid C strings, copied by DPDK.
        let ret = unsafe { ffi::rte_vdev_init(c_name.as_ptr(), c_args.as_ptr()) };
        check("rte_vdev_init", ret)
    }

    /// Probes a device after init (hotplug): a PCI address or `NAME,ARGS` of a bus device.
    pub fn dev_probe(&self, devargs: &str) -> Result<()> {
        let c_args = CString::new(devargs).map_err(|_| Error::Nul {
            what: "device arguments",
            value: devargs.into(),
        })?;
        // SAFETY: a valid C string, copied by DPDK.
        let ret = unsafe { ffi::rte_dev_probe(c_args.as_ptr()) };
        check("rte_dev_probe", ret)
    }

    /// Whether IO addresses are virtual addresses (`RTE_IOVA_VA`, as with vfio or no
    /// device DMA at all); otherwise they are physical.
    pub fn iova_is_va(&self) -> bool {
        // SAFETY: a read-only query after init.
        unsafe { ffi::rte_eal_iova_mode() == ffi::rte_iova_mode_RTE_IOVA_VA }
    }

    /// The IO address of `addr` in DPDK memory or registered external memory, `None` when
    /// DPDK does not know it.
    pub fn iova(&self, addr: *const u8) -> Option<u64> {
        // SAFETY: a lookup in DPDK's memory map; never dereferences addr.
        let iova = unsafe { ffi::rte_mem_virt2iova(addr.cast()) };
        // SAFETY: returns a constant.
        (iova != unsafe { ffi::netvm_rte_bad_iova() }).then_some(iova)
    }

    /// The physical address of `addr` (from `/proc/self/pagemap`: a system call each, and
    /// root), `None` when it cannot be read.
    pub fn physical_address(&self, addr: *const u8) -> Option<u64> {
        // SAFETY: reads this process's page map; never dereferences addr.
        let phys = unsafe { ffi::rte_mem_virt2phy(addr.cast()) };
        // SAFETY: returns a constant.
        (phys != unsafe { ffi::netvm_rte_bad_iova() }).then_some(phys)
    }

    /// Maps `[addr, addr + len)` (registered external memory) for DMA by the device behind
    /// port `name`, at IO address `iova` (`rte_dev_dma_map`; what vfio-pci needs before a
    /// NIC may write into memory DPDK did not allocate).
    ///
    /// # Safety
    /// The range stays mapped and registered while the device may use it.
    pub unsafe fn dma_map(&self, name: &str, addr: *mut u8, iova: u64, len: usize) -> Result<()> {
        let port_id = self.port_by_name(name)?;
        let mut info = std::mem::MaybeUninit::<ffi::rte_eth_dev_info>::zeroed();
        // SAFETY: info is a valid out pointer; an all-zero rte_eth_dev_info is valid.
        let ret = unsafe { ffi::rte_eth_dev_info_get(port_id, info.as_mut_ptr()) };
        check("rte_eth_dev_info_get", ret)?;
        // SAFETY: filled by DPDK (or still zeroed, which is valid).
        let device = unsafe { info.assume_init() }.device;
        // SAFETY: device is the port's rte_device; the caller keeps the range mapped.
        let ret = unsafe { ffi::rte_dev_dma_map(device, addr.cast(), iova, len) };
        if ret < 0 {
            return Err(call_error("rte_dev_dma_map", errno()));
        }
        Ok(())
    }

    /// Makes the calling thread an EAL thread (an lcore id of its own), so that mempool
    /// per-lcore caches serve it. Does nothing on a thread that already has one.
    pub fn register_thread(&self) -> Result<()> {
        if lcore_id().is_some() {
            return Ok(());
        }
        // SAFETY: registers the calling thread; DPDK takes a free lcore slot or fails.
        let ret = unsafe { ffi::rte_thread_register() };
        if ret < 0 {
            return Err(call_error("rte_thread_register", errno()));
        }
        Ok(())
    }

    /// Registers `[addr, addr + len)`, made of `page_bytes` pages, as external memory, so
    /// DPDK's address lookups ([`Eal::iova`]) and drivers know it. `iovas`: the IO address
    /// of each page, or `None` to leave them unknown (`RTE_BAD_IOVA`).
    ///
    /// # Safety
    /// The range is mapped and stays mapped until [`Eal::extmem_unregister`]; `len` is a
    /// multiple of `page_bytes`, a power of two.
    pub unsafe fn extmem_register(
        &self,
        addr: *mut u8,
        len: usize,
        iovas: Option<&[u64]>,
        page_bytes: usize,
    ) -> Result<()> {
        let (table, pages) = match iovas {
            Some(t) => (t.as_ptr().cast_mut(), t.len() as u32),
            None => (std::ptr::null_mut(), 0),
        };
        // SAFETY: forwarded from the caller; the IOVA table, when given, has `pages`
        // entries and is copied by DPDK.
        let ret = unsafe { ffi::rte_extmem_register(addr.cast(), len, table, pages, page_bytes) };
        if ret < 0 {
            return Err(call_error("rte_extmem_register", errno()));
        }
        Ok(())
    }

    /// Forgets memory registered with [`Eal::extmem_register`].
    ///
    /// # Safety
    /// No mbuf or device uses the range any more.
    pub unsafe fn extmem_unregister(&self, addr: *mut u8, len: usize) -> Result<()> {
        // SAFETY: forwarded from the caller.
        let ret = unsafe { ffi::rte_extmem_unregister(addr.cast(), len) };
        if ret < 0 {
            return Err(call_error("rte_extmem_unregister", errno()));
        }
        Ok(())
    }

    /// NUMA node of the calling thread's lcore (0 on one-node machines and non-EAL threads
    /// that DPDK cannot place).
    pub fn socket_id(&self) -> u32 {
        // SAFETY: the EAL is initialised; reads the calling thread's lcore variables.
        unsafe { ffi::rte_socket_id() }
    }
}

/// The calling thread's lcore id, or `None` for a thread the EAL did not create.
pub fn lcore_id() -> Option<u32> {
    // SAFETY: reads a thread-local, valid on any thread (LCORE_ID_ANY when unset).
    let id = unsafe { ffi::netvm_rte_lcore_id() };
    (id != u32::MAX).then_some(id)
}

/// The calling thread's `rte_errno`.
pub(crate) fn errno() -> i32 {
    // SAFETY: reads a thread-local.
    unsafe { ffi::netvm_rte_errno() }
}

/// An [`Error::Call`] for a DPDK error code (positive or negative errno).
pub(crate) fn call_error(call: &'static str, code: i32) -> Error {
    let code = code.abs();
    // SAFETY: rte_strerror returns a pointer to a static or thread-local string for any code.
    let message = unsafe { CStr::from_ptr(ffi::rte_strerror(code)) }
        .to_string_lossy()
        .into_owned();
    Error::Call {
        call,
        code,
        message,
    }
}

/// `Ok` for a DPDK return value of 0 or more, the error otherwise.
pub(crate) fn check(call: &'static str, ret: c_int) -> Result<()> {
    if ret < 0 {
        Err(call_error(call, ret))
    } else {
        Ok(())
    }
}
