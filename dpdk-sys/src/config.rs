//! Plain-data types shared by the DPDK and the no-DPDK builds: what to ask of a port and what
//! it reports.

/// How to configure a port before starting it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortConfig {
    pub rx_queues: u16,
    pub tx_queues: u16,
    /// Descriptors per RX queue (0: the driver's preferred size).
    pub rx_ring_slots: u16,
    /// Descriptors per TX queue (0: the driver's preferred size).
    pub tx_ring_slots: u16,
    /// Spread flows over the RX queues by RSS (IP/TCP/UDP hash), when there are several and
    /// the device supports it.
    pub rss: bool,
    /// Receive frames not addressed to the port's MAC (ignored by devices that cannot).
    pub promiscuous: bool,
}

impl Default for PortConfig {
    fn default() -> Self {
        PortConfig {
            rx_queues: 1,
            tx_queues: 1,
            rx_ring_slots: 0,
            tx_ring_slots: 0,
            rss: true,
            promiscuous: true,
        }
    }
}

/// What a device can do, from `rte_eth_dev_info_get`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortInfo {
    pub name: String,
    pub driver_name: String,
    pub max_rx_queues: u16,
    pub max_tx_queues: u16,
    /// NUMA node of the device (`None` when DPDK does not know, e.g. virtual devices).
    pub socket_id: Option<u32>,
    /// The RSS hash types (`RTE_ETH_RSS_*` bits) the device can compute.
    pub rss_offloads: u64,
}

/// Counters from `rte_eth_stats_get`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortStats {
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// Dropped by the device because the RX queues were full.
    pub rx_missed: u64,
    pub rx_errors: u64,
    pub tx_errors: u64,
    /// RX mbuf allocation failures.
    pub rx_no_mbuf: u64,
}

/// A buffer DPDK does not own, for a [`crate::Mempool`] of pinned external buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExternalBuffer {
    pub addr: *mut u8,
    /// IO address of `addr` (see [`crate::Eal::iova`]).
    pub iova: u64,
}
