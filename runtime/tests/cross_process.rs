//! Proves the region holds no pointers: a child process maps the same memfd at its own
//! address and sees the parent's rings, buffers and counters.
//!
//! The test binary re-runs itself as the child (`NETVM_CHILD_FD` set), passing the memfd
//! by inheritance: the fd is close-on-exec, so the parent clears that flag in the child
//! only, between fork and exec.
#![cfg(not(loom))] // maps real shared memory, which loom cannot model

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::atomic::Ordering;

use netvm_runtime::{HugepagePolicy, PacketPool, RegionConfig, SharedRegion};

const CHILD_FD: &str = "NETVM_CHILD_FD";
const PACKETS: u32 = 300;
const RING: usize = 1;
/// Counter slots the two processes use to report.
const PARENT_BASE: usize = 0;
const CHILD_BASE: usize = 1;
const CHILD_VERIFIED: usize = 2;

fn payload(seq: u32) -> Vec<u8> {
    let len = 60 + (seq as usize * 7) % 1400;
    (0..len).map(|i| (seq as usize * 31 + i) as u8).collect()
}

#[test]
fn child_process_drains_a_ring_filled_by_the_parent() {
    if let Ok(fd) = std::env::var(CHILD_FD) {
        child(fd.parse().expect("fd number"));
        return;
    }
    let config = RegionConfig {
        buffer_count: 512,
        ring_count: 2,
        ring_slots: 512,
        counter_count: 4,
    };
    let region = SharedRegion::create(config, HugepagePolicy::Prefer).expect("region");
    let pool = PacketPool::new(region.clone()).expect("pool");
    region
        .counter(PARENT_BASE)
        .expect("counter")
        .store(region.base_addr() as u64, Ordering::Relaxed);

    let mut tx = region
        .ring(RING)
        .expect("ring")
        .producer()
        .expect("producer");
    for seq in 0..PACKETS {
        let index = pool.alloc().expect("buffer");
        // SAFETY: we just allocated `index` and hold its only reference.
        unsafe { pool.write_data(index, &payload(seq)) }.expect("fits");
        pool.set_port(index, seq as u16).expect("index is valid");
        assert!(tx.enqueue(index));
    }
    assert_eq!(pool.available(), 512 - PACKETS as usize);
    // Let the child claim the consumer end; we keep the producer.
    let fd = region.fd().as_raw_fd();
    let mut child = Command::new(std::env::current_exe().expect("test binary"));
    child
        .args([
            "--exact",
            "child_process_drains_a_ring_filled_by_the_parent",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_FD, fd.to_string());
    // SAFETY: runs in the forked child before exec; fcntl is async-signal-safe and only
    // touches the child's copy of the descriptor table.
    unsafe {
        child.pre_exec(move || {
            if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let output = child.output().expect("spawn child");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "child failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("1 passed"),
        "child did not run the test:\n{stdout}"
    );

    let verified = region
        .counter(CHILD_VERIFIED)
        .expect("counter")
        .load(Ordering::Acquire);
    assert_eq!(verified, u64::from(PACKETS));
    assert!(region.ring(RING).expect("ring").is_empty());
    // The child freed every buffer through the shared free ring.
    assert_eq!(pool.available(), pool.capacity());
    let child_base = region
        .counter(CHILD_BASE)
        .expect("counter")
        .load(Ordering::Relaxed);
    eprintln!(
        "parent mapped the region at {:#x}, child at {child_base:#x} ({})",
        region.base_addr(),
        region.backing()
    );
    drop(tx);
}

fn child(fd: i32) {
    // SAFETY: the parent passed us this inherited descriptor, which nothing else in this
    // process owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let region = SharedRegion::from_fd(fd).expect("map the parent's region");
    let pool = PacketPool::new(region.clone()).expect("pool");
    region
        .counter(CHILD_BASE)
        .expect("counter")
        .store(region.base_addr() as u64, Ordering::Relaxed);
    // The parent still holds the producer end, and the claim lives in shared memory.
    assert!(region.ring(RING).expect("ring").producer().is_err());
    let mut rx = region
        .ring(RING)
        .expect("ring")
        .consumer()
        .expect("consumer");
    let mut burst = [0u32; 32];
    let mut seq = 0;
    loop {
        let n = rx.dequeue_burst(&mut burst);
        if n == 0 {
            break;
        }
        for &index in &burst[..n] {
            // SAFETY: the parent handed us `index` through the ring and kept no reference.
            let data = unsafe { pool.buf_data(index) }.expect("valid index");
            assert_eq!(data, payload(seq).as_slice(), "packet {seq}");
            assert_eq!(pool.port(index), Ok(seq as u16));
            seq += 1;
        }
        pool.free_burst(&burst[..n]).expect("free");
    }
    assert_eq!(seq, PACKETS);
    region
        .counter(CHILD_VERIFIED)
        .expect("counter")
        .store(u64::from(seq), Ordering::Release);
}
