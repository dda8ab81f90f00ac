//! Scenarios shared by the EAL test binaries. The EAL initialises once per process, so each
//! binary (`no_huge.rs`, `hugepages.rs`) initialises it once, with its own memory mode, and
//! runs every scenario in one test.

#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use dpdk_sys::{eal, Eal, Mbuf, Mempool, Port, PortConfig};

/// EAL arguments for a machine without a NIC: no PCI scan, no files under /var/run, the two
/// virtual ports the scenarios use.
pub fn eal_args(huge: bool) -> Vec<String> {
    let mut args: Vec<String> = ["--no-pci", "--log-level=lib.eal:error", "--no-telemetry"]
        .map(String::from)
        .to_vec();
    if huge {
        args.extend(["--in-memory", "-m", "64"].map(String::from));
    } else {
        // --no-huge implies legacy memory, which --in-memory refuses; --no-shconf keeps the
        // run free of files all the same.
        args.extend(["--no-huge", "--no-shconf", "-m", "256"].map(String::from));
    }
    args.extend(["--vdev=net_null0", "--vdev=net_ring0"].map(String::from));
    args
}

/// `None` with a printed reason when this build has no DPDK.
pub fn init_or_skip(args: &[String]) -> Option<Eal> {
    if !dpdk_sys::AVAILABLE {
        eprintln!(
            "skipped: DPDK is not available to this build ({}); {}",
            dpdk_sys::missing_reason().unwrap_or("?"),
            dpdk_sys::INSTALL_HINT
        );
        return None;
    }
    match eal::init(args) {
        Ok(eal) => Some(eal),
        Err(e) => panic!("EAL init with {args:?} failed: {e}"),
    }
}

pub fn pool(eal: &Eal, name: &str) -> Mempool {
    Mempool::pktmbuf(eal, name, 4095, 256, dpdk_sys::DEFAULT_BUF_BYTES, None).expect("mbuf pool")
}

fn frame(i: u8, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x02]);
    f[12..14].copy_from_slice(&[0x88, 0xb5]); // local experimental ethertype
    for (k, b) in f[14..].iter_mut().enumerate() {
        *b = i.wrapping_mul(31).wrapping_add(k as u8);
    }
    f
}

fn mbuf_of(pool: &Mempool, bytes: &[u8]) -> Mbuf {
    let mut m = pool.alloc().expect("a free mbuf");
    assert!(m.extend_from_slice(bytes), "frame fits the mbuf");
    m
}

/// Bursts from `rx` until `want` packets arrived or a second passed.
fn rx_until(rx: &mut dpdk_sys::RxQueue, want: usize) -> Vec<Mbuf> {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(1);
    while got.len() < want && Instant::now() < deadline {
        rx.rx_burst(&mut got, 32);
    }
    got
}

/// net_null: RX makes packets out of the pool, TX takes and frees them.
pub fn null_port_receives_and_transmits(eal: &Eal) {
    let pool = pool(eal, "null_pool");
    let port =
        Port::start(eal, "net_null0", &PortConfig::default(), &pool).expect("start net_null0");
    let info = port.info().expect("info");
    assert_eq!(info.name, "net_null0");
    assert_eq!(info.driver_name, "net_null");
    let (mut rx, mut tx) = (port.rx_queue(0).unwrap(), port.tx_queue(0).unwrap());
    assert!(port.rx_queue(0).is_err(), "a queue is handed out once");

    let mut burst = Vec::new();
    let n = rx.rx_burst(&mut burst, 32);
    assert_eq!(n, 32, "net_null fills every burst");
    assert!(
        burst.iter().all(|m| m.len() == 64 && m.segments() == 1),
        "net_null packets are 64 bytes"
    );
    assert_eq!(pool.in_use() as usize, 32);
    let sent = tx.tx_burst(&mut burst);
    assert_eq!(sent, 32);
    assert!(burst.is_empty());
    assert_eq!(pool.in_use(), 0, "net_null frees what it transmits");

    let stats = port.stats().unwrap();
    assert_eq!((stats.rx_packets, stats.tx_packets), (32, 32));
    eprintln!("net_null0: {info:?}, {stats:?}");
}

/// net_ring: what goes out of TX queue 0 comes back on RX queue 0, byte for byte, without a
/// copy (the same buffers come back).
pub fn ring_port_loops_back(eal: &Eal) {
    let pool = pool(eal, "ring_pool");
    let port =
        Port::start(eal, "net_ring0", &PortConfig::default(), &pool).expect("start net_ring0");
    let (mut rx, mut tx) = (port.rx_queue(0).unwrap(), port.tx_queue(0).unwrap());
    let frames: Vec<Vec<u8>> = (0..20u8).map(|i| frame(i, 60 + i as usize * 50)).collect();
    let mut out: Vec<Mbuf> = frames.iter().map(|f| mbuf_of(&pool, f)).collect();
    let addresses: Vec<*const u8> = out.iter().map(|m| m.data().as_ptr()).collect();
    assert_eq!(tx.tx_burst(&mut out), frames.len());

    let back = rx_until(&mut rx, frames.len());
    assert_eq!(back.len(), frames.len());
    for ((m, f), a) in back.iter().zip(&frames).zip(&addresses) {
        assert_eq!(m.data(), &f[..]);
        assert_eq!(m.data().as_ptr(), *a, "the ring passes buffers, not bytes");
    }
    drop(back);
    assert_eq!(pool.in_use(), 0);
}

/// net_pcap: frames read from rx_pcap and sent to tx_pcap come out byte-exact.
pub fn pcap_port_is_byte_exact(eal: &Eal, dir: &Path) {
    let input = dir.join("in.pcap");
    let output = dir.join("out.pcap");
    let frames: Vec<Vec<u8>> = (0..50u8)
        .map(|i| frame(i, 60 + (i as usize * 29) % 1455))
        .collect();
    write_pcap(&input, &frames);
    let args = format!("rx_pcap={},tx_pcap={}", input.display(), output.display());
    eal.vdev_init("net_pcap0", &args).expect("create net_pcap0");

    // The port and its queues go at the end of this block: stop and close flush the pcap
    // writer.
    {
        let pool = pool(eal, "pcap_pool");
        let port =
            Port::start(eal, "net_pcap0", &PortConfig::default(), &pool).expect("start net_pcap0");
        let (mut rx, mut tx) = (port.rx_queue(0).unwrap(), port.tx_queue(0).unwrap());
        let mut got = rx_until(&mut rx, frames.len());
        assert_eq!(got.len(), frames.len());
        while !got.is_empty() {
            tx.tx_burst(&mut got);
        }
    }
    assert_eq!(read_pcap(&output), frames);
}

pub fn second_init_is_refused() {
    assert!(matches!(
        eal::init(&["--no-pci"]),
        Err(dpdk_sys::Error::EalAlreadyInitialised)
    ));
}

fn write_pcap(path: &Path, frames: &[Vec<u8>]) {
    let mut bytes = Vec::new();
    bytes.extend(0xa1b2_c3d4u32.to_le_bytes()); // microsecond timestamps
    bytes.extend(2u16.to_le_bytes());
    bytes.extend(4u16.to_le_bytes());
    bytes.extend([0u8; 8]); // thiszone, sigfigs
    bytes.extend(65535u32.to_le_bytes());
    bytes.extend(1u32.to_le_bytes()); // Ethernet
    for (i, f) in frames.iter().enumerate() {
        bytes.extend((i as u32).to_le_bytes());
        bytes.extend(0u32.to_le_bytes());
        bytes.extend((f.len() as u32).to_le_bytes());
        bytes.extend((f.len() as u32).to_le_bytes());
        bytes.extend(f);
    }
    std::fs::write(path, bytes).expect("write input pcap");
}

/// The frames of a little-endian pcap file, either timestamp precision.
fn read_pcap(path: &Path) -> Vec<Vec<u8>> {
    let bytes = std::fs::read(path).expect("read output pcap");
    let magic = u32::from_le_bytes(bytes[..4].try_into().unwrap());
    assert!(
        magic == 0xa1b2_c3d4 || magic == 0xa1b2_3c4d,
        "little-endian pcap, magic {magic:#x}"
    );
    let mut frames = Vec::new();
    let mut at = 24;
    while at + 16 <= bytes.len() {
        let caplen = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap()) as usize;
        frames.push(bytes[at + 16..at + 16 + caplen].to_vec());
        at += 16 + caplen;
    }
    frames
}

/// RSS over two queues of a `net_null` (which keeps the key it is given and reads it back):
/// the port uses the symmetric key; a one-queue port has no RSS.
pub fn null_port_keeps_the_symmetric_rss_key(eal: &Eal) {
    use dpdk_sys::{symmetric_rss_key, Rss};
    eal.vdev_init("net_null_rss0", "")
        .expect("create net_null_rss0");
    let pool = pool(eal, "rss_pool");
    let config = PortConfig {
        rx_queues: 2,
        tx_queues: 2,
        ..PortConfig::default()
    };
    {
        let port = Port::start(eal, "net_null_rss0", &config, &pool).expect("start net_null_rss0");
        assert_eq!(port.rss(), &Rss::Symmetric);
        let key = port.rss_key().expect("net_null reads its key back");
        assert_eq!(key.len(), 40);
        assert_eq!(key, symmetric_rss_key(40));
        // A vdev sits on the node of the thread that created it.
        assert_eq!(
            eal.port_numa_node(port.id()),
            port.info().unwrap().socket_id
        );
        assert_eq!(eal.port_numa_node(u16::MAX), None, "no such port");
    }

    eal.vdev_init("net_null_rss1", "")
        .expect("create net_null_rss1");
    let one = Port::start(eal, "net_null_rss1", &PortConfig::default(), &pool)
        .expect("start net_null_rss1");
    assert_eq!(one.rss(), &Rss::Off);
}

/// `Mbuf::reset` (inline) leaves an mbuf as `rte_pktmbuf_alloc` hands it out.
pub fn a_reset_mbuf_is_like_a_fresh_one(eal: &Eal) {
    let pool = pool(eal, "reset_pool");
    let mut m = mbuf_of(&pool, &frame(1, 200));
    // SAFETY: 10 + 100 bytes lie in the frame just written.
    unsafe { m.set_data_window(10, 100) };
    assert_eq!((m.len(), m.data_offset()), (100, 10));
    m.reset();
    let fresh = pool.alloc().expect("a free mbuf");
    assert_eq!(m.len(), 0);
    assert_eq!(m.data_len(), 0);
    assert_eq!(m.segments(), 1);
    assert_eq!(m.data_offset(), fresh.data_offset());
    assert_eq!(m.headroom(), fresh.headroom());
    assert_eq!(m.tailroom(), fresh.tailroom());
}
