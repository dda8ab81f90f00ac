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
    /// With RSS, hash with [`symmetric_rss_key`] instead of the device's default key, so
    /// that both directions of a flow land on the same queue (falling back to the default
    /// key, and saying so in [`Rss::DefaultKey`], where the device refuses it).
    pub symmetric_rss_key: bool,
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
            symmetric_rss_key: true,
            promiscuous: true,
        }
    }
}

/// How a started port spreads flows over its receive queues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rss {
    /// One receive queue, or RSS not asked for.
    Off,
    /// The device hashes none of IP, TCP and UDP: everything arrives on queue 0 unless the
    /// device spreads flows its own way (`net_af_packet`'s kernel fanout does).
    Unsupported,
    /// RSS over IP/TCP/UDP with [`symmetric_rss_key`]: both directions of a flow hash to
    /// the same queue.
    Symmetric,
    /// RSS with the device's own key, which need not be symmetric; the reason the
    /// symmetric key is not in use.
    DefaultKey(String),
}

impl std::fmt::Display for Rss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rss::Off => write!(f, "no RSS"),
            Rss::Unsupported => write!(f, "no RSS (the device has none)"),
            Rss::Symmetric => write!(f, "RSS, symmetric key"),
            Rss::DefaultKey(why) => write!(f, "RSS, the device's default key ({why})"),
        }
    }
}

/// The symmetric Toeplitz key of `bytes` bytes: 0x6d5a repeated (Woo and Park, "Scalable
/// TCP Session Monitoring with Symmetric Receive-side Scaling", 2012). A key that repeats
/// every 16 bits hashes (src, dst, sport, dport) and (dst, src, dport, sport) alike,
/// because swapping the addresses (32 bits apart) and the ports (16 bits apart) shifts
/// each input bit by a multiple of the key's period.
pub fn symmetric_rss_key(bytes: usize) -> Vec<u8> {
    (0..bytes)
        .map(|i| if i % 2 == 0 { 0x6d } else { 0x5a })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::symmetric_rss_key;

    /// The Toeplitz hash RSS computes: for each set bit of `input`, XOR in the 32 bits of
    /// `key` starting at that bit's position.
    fn toeplitz(key: &[u8], input: &[u8]) -> u32 {
        let bit = |i: usize| (key[i / 8] >> (7 - i % 8)) & 1;
        let mut hash = 0u32;
        for (byte_at, byte) in input.iter().enumerate() {
            for b in 0..8 {
                if byte & (0x80 >> b) != 0 {
                    let start = byte_at * 8 + b;
                    let window = (0..32).fold(0u32, |w, i| (w << 1) | u32::from(bit(start + i)));
                    hash ^= window;
                }
            }
        }
        hash
    }

    fn tuple(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        [
            &src[..],
            &dst[..],
            &sport.to_be_bytes(),
            &dport.to_be_bytes(),
        ]
        .concat()
    }

    #[test]
    fn the_symmetric_key_hashes_both_directions_of_a_flow_alike() {
        let key = symmetric_rss_key(40);
        assert_eq!(&key[..4], &[0x6d, 0x5a, 0x6d, 0x5a]);
        let mut seed = 0x1234_5678u32;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        let mut distinct = std::collections::HashSet::new();
        for _ in 0..200 {
            let (a, b) = (next().to_be_bytes(), next().to_be_bytes());
            let (sport, dport) = (next() as u16, next() as u16);
            let forth = toeplitz(&key, &tuple(a, b, sport, dport));
            let back = toeplitz(&key, &tuple(b, a, dport, sport));
            assert_eq!(forth, back, "{a:?}:{sport} <-> {b:?}:{dport}");
            distinct.insert(forth % 4);
        }
        assert_eq!(distinct.len(), 4, "flows still spread over 4 queues");
    }

    #[test]
    fn the_usual_default_key_is_not_symmetric() {
        // Microsoft's RSS verification key, the default of many drivers (and of net_null).
        let key: [u8; 40] = [
            0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3,
            0x8f, 0xb0, 0xd0, 0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3,
            0x80, 0x30, 0xf2, 0x0c, 0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa,
        ];
        // The published check value: 66.9.149.187:2794 -> 161.142.100.80:1766.
        let t = tuple([66, 9, 149, 187], [161, 142, 100, 80], 2794, 1766);
        assert_eq!(toeplitz(&key, &t), 0x51cc_c178);
        let back = tuple([161, 142, 100, 80], [66, 9, 149, 187], 1766, 2794);
        assert_ne!(toeplitz(&key, &t), toeplitz(&key, &back));
    }
}
