//! The API of a build without DPDK: the same types and signatures as the real layer, none of
//! them constructible. [`eal::init`] returns [`Error::DpdkMissing`]; every other entry point
//! needs an [`Eal`], so its body is unreachable (`match` on an empty enum). The raw-pointer
//! accessors (`as_ptr`, `into_raw`, `from_raw`) exist only with DPDK, beside [`crate::ffi`].

use crate::{Error, ExternalBuffer, ExternalFree, PortConfig, PortInfo, PortStats, Result, Rss};

/// No value: the types below hold one, so none of them can exist.
#[derive(Debug, Clone, Copy)]
enum Never {}

/// Always [`Error::DpdkMissing`] in this build: there is no mbuf to check.
pub fn check_mbuf_layout() -> Result<()> {
    Err(missing())
}

fn missing() -> Error {
    Error::DpdkMissing {
        reason: crate::missing_reason().unwrap_or("dpdk-sys was built without DPDK"),
    }
}

pub mod eal {
    use super::{missing, Never};
    use crate::Result;

    /// Proof that the EAL is initialised; never exists in a build without DPDK.
    #[derive(Debug)]
    pub struct Eal {
        pub(super) never: Never,
    }

    /// Always [`crate::Error::DpdkMissing`] in this build.
    pub fn init<S: AsRef<str>>(_args: &[S]) -> Result<Eal> {
        Err(missing())
    }

    /// Always `None` in this build.
    pub fn lcore_id() -> Option<u32> {
        None
    }

    impl Eal {
        /// # Safety
        /// Unreachable in this build (no `Eal` exists).
        pub unsafe fn cleanup(self) -> Result<()> {
            match self.never {}
        }
        pub fn has_hugepages(&self) -> bool {
            match self.never {}
        }
        pub fn port_count(&self) -> u16 {
            match self.never {}
        }
        pub fn port_by_name(&self, _name: &str) -> Result<u16> {
            match self.never {}
        }
        pub fn vdev_init(&self, _name: &str, _args: &str) -> Result<()> {
            match self.never {}
        }
        pub fn socket_id(&self) -> u32 {
            match self.never {}
        }
        pub fn dev_probe(&self, _devargs: &str) -> Result<()> {
            match self.never {}
        }
        pub fn port_numa_node(&self, _port_id: u16) -> Option<u32> {
            match self.never {}
        }
        pub fn iova_is_va(&self) -> bool {
            match self.never {}
        }
        pub fn iova(&self, _addr: *const u8) -> Option<u64> {
            match self.never {}
        }
        pub fn physical_address(&self, _addr: *const u8) -> Option<u64> {
            match self.never {}
        }
        pub fn register_thread(&self) -> Result<()> {
            match self.never {}
        }
        /// # Safety
        /// Unreachable in this build (no `Eal` exists).
        pub unsafe fn dma_map(
            &self,
            _name: &str,
            _addr: *mut u8,
            _iova: u64,
            _len: usize,
        ) -> Result<()> {
            match self.never {}
        }
        /// # Safety
        /// Unreachable in this build (no `Eal` exists).
        pub unsafe fn extmem_register(
            &self,
            _addr: *mut u8,
            _len: usize,
            _iovas: Option<&[u64]>,
            _page_bytes: usize,
        ) -> Result<()> {
            match self.never {}
        }
        /// # Safety
        /// Unreachable in this build (no `Eal` exists).
        pub unsafe fn extmem_unregister(&self, _addr: *mut u8, _len: usize) -> Result<()> {
            match self.never {}
        }
    }
}
pub use eal::Eal;

/// A pool of packet buffers; never exists in a build without DPDK.
#[derive(Debug, Clone)]
pub struct Mempool {
    never: Never,
}

impl Mempool {
    pub fn pktmbuf(
        eal: &Eal,
        _name: &str,
        _mbufs: u32,
        _cache_mbufs: u32,
        _data_room_bytes: u16,
        _socket_id: Option<u32>,
    ) -> Result<Mempool> {
        match eal.never {}
    }
    /// # Safety
    /// Unreachable in this build (no `Eal` exists).
    pub unsafe fn pinned_external(
        eal: &Eal,
        _name: &str,
        _buffers: &[ExternalBuffer],
        _buf_bytes: u16,
        _cache_mbufs: u32,
        _socket_id: Option<u32>,
    ) -> Result<Mempool> {
        match eal.never {}
    }
    pub fn for_attached(
        eal: &Eal,
        _name: &str,
        _mbufs: u32,
        _cache_mbufs: u32,
        _socket_id: Option<u32>,
    ) -> Result<Mempool> {
        match eal.never {}
    }
    pub fn alloc_bulk(&self, _out: &mut Vec<Mbuf>, _count: usize) -> bool {
        match self.never {}
    }
    pub fn owns(&self, _mbuf: &Mbuf) -> bool {
        match self.never {}
    }
    pub fn alloc(&self) -> Option<Mbuf> {
        match self.never {}
    }
    pub fn available(&self) -> u32 {
        match self.never {}
    }
    pub fn in_use(&self) -> u32 {
        match self.never {}
    }
    /// # Safety
    /// Unreachable in this build (no `Mempool` exists).
    pub unsafe fn flush_caches(&self) {
        match self.never {}
    }
}

/// One packet buffer; never exists in a build without DPDK.
#[derive(Debug)]
pub struct Mbuf {
    never: Never,
}

impl Mbuf {
    pub fn len(&self) -> usize {
        match self.never {}
    }
    pub fn is_empty(&self) -> bool {
        match self.never {}
    }
    pub fn segments(&self) -> u16 {
        match self.never {}
    }
    pub fn data(&self) -> &[u8] {
        match self.never {}
    }
    pub fn data_mut(&mut self) -> &mut [u8] {
        match self.never {}
    }
    pub fn append(&mut self, _bytes: u16) -> Option<&mut [u8]> {
        match self.never {}
    }
    pub fn extend_from_slice(&mut self, _bytes: &[u8]) -> bool {
        match self.never {}
    }
    pub fn headroom(&self) -> u16 {
        match self.never {}
    }
    pub fn tailroom(&self) -> u16 {
        match self.never {}
    }
    pub fn iova(&self) -> u64 {
        match self.never {}
    }
    pub fn data_offset(&self) -> u16 {
        match self.never {}
    }
    pub fn buf_addr(&self) -> *mut u8 {
        match self.never {}
    }
    pub fn data_len(&self) -> u16 {
        match self.never {}
    }
    /// # Safety
    /// Unreachable in this build (no `Mbuf` exists).
    pub unsafe fn set_data_window(&mut self, _offset: u16, _len: u16) {
        match self.never {}
    }
    pub fn reset(&mut self) {
        match self.never {}
    }
    pub fn into_handle(self) -> usize {
        match self.never {}
    }
    /// # Safety
    /// Never called with a valid handle in this build (no `Mbuf` exists): it reports the
    /// build's state by aborting the caller's assumption.
    pub unsafe fn from_handle(_handle: usize) -> Mbuf {
        unreachable!("no DPDK in this build: no mbuf handle can exist")
    }
    pub fn external_refs(&self) -> Option<u16> {
        match self.never {}
    }
    /// # Safety
    /// Unreachable in this build (no `Mbuf` exists).
    pub unsafe fn set_buffer(&mut self, _addr: *mut u8, _iova: u64) {
        match self.never {}
    }
    /// # Safety
    /// Unreachable in this build (no `Mbuf` exists).
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn attach_external(
        &mut self,
        _addr: *mut u8,
        _iova: u64,
        _buf_bytes: u16,
        _data_offset: u16,
        _data_bytes: u16,
        _release: ExternalFree,
        _opaque: *mut std::ffi::c_void,
    ) {
        match self.never {}
    }
    /// Empties `mbufs` (which can hold none in this build).
    pub fn free_bulk(mbufs: &mut Vec<Mbuf>) {
        mbufs.clear();
    }
}

/// A started port; never exists in a build without DPDK.
#[derive(Debug)]
pub struct Port {
    never: Never,
}

impl Port {
    pub fn start(eal: &Eal, _name: &str, _config: &PortConfig, _pool: &Mempool) -> Result<Port> {
        match eal.never {}
    }
    pub fn id(&self) -> u16 {
        match self.never {}
    }
    pub fn info(&self) -> Result<PortInfo> {
        match self.never {}
    }
    pub fn stats(&self) -> Result<PortStats> {
        match self.never {}
    }
    pub fn rx_queue(&self, _queue: u16) -> Result<RxQueue> {
        match self.never {}
    }
    pub fn tx_queue(&self, _queue: u16) -> Result<TxQueue> {
        match self.never {}
    }
    pub fn rss(&self) -> &Rss {
        match self.never {}
    }
    pub fn rss_key(&self) -> Result<Vec<u8>> {
        match self.never {}
    }
}

/// One RX queue; never exists in a build without DPDK.
#[derive(Debug)]
pub struct RxQueue {
    never: Never,
}

impl RxQueue {
    pub fn rx_burst(&mut self, _out: &mut Vec<Mbuf>, _max: u16) -> usize {
        match self.never {}
    }
    pub fn queue(&self) -> u16 {
        match self.never {}
    }
}

/// One TX queue; never exists in a build without DPDK.
#[derive(Debug)]
pub struct TxQueue {
    never: Never,
}

impl TxQueue {
    pub fn tx_burst(&mut self, _pkts: &mut Vec<Mbuf>) -> usize {
        match self.never {}
    }
    pub fn queue(&self) -> u16 {
        match self.never {}
    }
}
