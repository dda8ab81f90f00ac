//! EAL on ordinary memory (`--no-huge`): null, ring and pcap ports.

mod common;

#[test]
fn virtual_ports_work_without_huge_pages() {
    let Some(eal) = common::init_or_skip(&common::eal_args(false)) else {
        return;
    };
    assert!(!eal.has_hugepages());
    assert!(eal.port_count() >= 2, "net_null0 and net_ring0 probed");
    common::null_port_receives_and_transmits(&eal);
    common::ring_port_loops_back(&eal);
    common::null_port_keeps_the_symmetric_rss_key(&eal);
    common::a_reset_mbuf_is_like_a_fresh_one(&eal);
    let dir = std::env::temp_dir().join(format!("dpdk-sys-no-huge-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    common::pcap_port_is_byte_exact(&eal, &dir);
    std::fs::remove_dir_all(&dir).ok();
    common::second_init_is_refused();
}
