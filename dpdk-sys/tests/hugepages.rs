//! EAL on huge pages: null, ring and pcap ports. Skips (with the reason) when fewer than 64
//! 2 MiB pages are free (`echo 64 > /proc/sys/vm/nr_hugepages`).

mod common;

fn free_hugepages() -> u64 {
    std::fs::read_to_string("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn virtual_ports_work_on_huge_pages() {
    let free = free_hugepages();
    if free < 40 {
        eprintln!("skipped: {free} free 2 MiB huge pages, 40 needed (echo 64 > /proc/sys/vm/nr_hugepages)");
        return;
    }
    let Some(eal) = common::init_or_skip(&common::eal_args(true)) else {
        return;
    };
    assert!(eal.has_hugepages());
    common::null_port_receives_and_transmits(&eal);
    common::ring_port_loops_back(&eal);
    common::null_port_keeps_the_symmetric_rss_key(&eal);
    common::a_reset_mbuf_is_like_a_fresh_one(&eal);
    let dir = std::env::temp_dir().join(format!("dpdk-sys-huge-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    common::pcap_port_is_byte_exact(&eal, &dir);
    std::fs::remove_dir_all(&dir).ok();
}
