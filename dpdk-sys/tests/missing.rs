//! A build without DPDK (`NETVM_NO_DPDK=1`, or no libdpdk-dev) reports `DpdkMissing` with how
//! to install it. In a build with DPDK this says so and checks nothing.

#[test]
fn build_without_dpdk_reports_how_to_install_it() {
    if dpdk_sys::AVAILABLE {
        eprintln!(
            "skipped: this build has DPDK; build with NETVM_NO_DPDK=1 to test the other path"
        );
        assert_eq!(dpdk_sys::missing_reason(), None);
        return;
    }
    let err = dpdk_sys::eal::init(&["--no-pci"]).expect_err("no EAL without DPDK");
    assert!(matches!(err, dpdk_sys::Error::DpdkMissing { .. }));
    let message = err.to_string();
    assert!(message.contains("apt-get install libdpdk-dev"), "{message}");
    assert!(dpdk_sys::missing_reason().is_some());
    assert_eq!(dpdk_sys::eal::lcore_id(), None);
}
