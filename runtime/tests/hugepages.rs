//! Huge-page backing, tested for real: this binary (its own process, so no other test
//! competes for the pages) reserves 2 MiB pages through `/proc/sys/vm/nr_hugepages` when
//! it runs as root, checks that `Require` gets them, and restores the old value.
//! Without root (or with `NETVM_TEST_NO_SYSCTL=1`) it only checks the refusal path.
#![cfg(not(loom))] // maps real shared memory, which loom cannot model

use std::fs;

use netvm_runtime::{Backing, HugepagePolicy, RegionConfig, RegionError, SharedRegion};

const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

fn meminfo(field: &str) -> Option<u64> {
    fs::read_to_string("/proc/meminfo")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Puts `nr_hugepages` back on drop, even when an assertion fails.
struct Restore(String);

impl Drop for Restore {
    fn drop(&mut self) {
        if let Err(e) = fs::write(NR_HUGEPAGES, &self.0) {
            eprintln!("could not restore {NR_HUGEPAGES} to {}: {e}", self.0.trim());
        }
    }
}

/// About 2.3 MB of buffers: rounds up to two 2 MiB pages.
fn two_page_config() -> RegionConfig {
    RegionConfig {
        buffer_count: 1000,
        ring_count: 2,
        ring_slots: 64,
        counter_count: 8,
    }
}

#[test]
fn require_refuses_and_prefer_falls_back_without_free_huge_pages_and_require_succeeds_once_reserved(
) {
    let free_before = meminfo("HugePages_Free:").unwrap_or(0);
    if free_before == 0 {
        match SharedRegion::create(two_page_config(), HugepagePolicy::Require) {
            Err(RegionError::HugePagesUnavailable(reason)) => {
                assert!(reason.contains("HugePages_Free = 0"), "{reason}")
            }
            other => panic!("Require without free huge pages gave {other:?}"),
        }
        let region = SharedRegion::create(two_page_config(), HugepagePolicy::Prefer).unwrap();
        assert!(region.backing().is_fallback(), "{}", region.backing());
    }

    let may_write = std::env::var_os("NETVM_TEST_NO_SYSCTL").is_none()
        // SAFETY: geteuid has no preconditions.
        && unsafe { libc::geteuid() } == 0;
    let Ok(original) = fs::read_to_string(NR_HUGEPAGES) else {
        eprintln!("skipping the reservation half: {NR_HUGEPAGES} is unreadable");
        return;
    };
    if !may_write {
        eprintln!("skipping the reservation half: not root, or NETVM_TEST_NO_SYSCTL is set");
        return;
    }
    let current: u64 = original.trim().parse().unwrap();
    if fs::write(NR_HUGEPAGES, (current + 4).to_string()).is_err() {
        eprintln!("skipping the reservation half: {NR_HUGEPAGES} is read-only here");
        return;
    }
    let _restore = Restore(original);
    let free = meminfo("HugePages_Free:").unwrap_or(0);
    if free < 2 {
        eprintln!("skipping: the kernel found only {free} free huge pages after reserving");
        return;
    }

    let region = SharedRegion::create(two_page_config(), HugepagePolicy::Require).unwrap();
    assert_eq!(region.backing(), &Backing::HugePages2M);
    assert_eq!(region.len_bytes(), 4 << 20);
    assert_eq!(meminfo("HugePages_Free:").unwrap_or(0), free - 2);
    // A second mapping learns the backing from the header.
    let other = SharedRegion::from_fd(region.fd().try_clone_to_owned().unwrap()).unwrap();
    assert_eq!(other.backing(), &Backing::HugePages2M);
    let mut tx = region.ring(0).unwrap().producer().unwrap();
    let mut rx = other.ring(0).unwrap().consumer().unwrap();
    assert_eq!(tx.enqueue_burst(&[1, 2, 3]), 3);
    let mut out = [0; 3];
    assert_eq!(rx.dequeue_burst(&mut out), 3);
    assert_eq!(out, [1, 2, 3]);
    eprintln!("{}", region.backing());
    drop((tx, rx, other, region));
    assert_eq!(meminfo("HugePages_Free:").unwrap_or(0), free);
}
