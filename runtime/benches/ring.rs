//! Ring and pool benchmarks, each against its peer in the same run.
//!
//! - `spsc_burst32`: moving bursts of 32 indices from a producer pinned to core 0 to a
//!   consumer pinned to core 1, through our [`Ring`] (one burst call per 32 items) and
//!   through `crossbeam_queue::ArrayQueue` (one push/pop per item, its only API). One
//!   criterion iteration = one burst of 32 items delivered.
//! - `pool_burst32`: allocating and freeing 32 buffers, through a [`PoolCache`] and
//!   straight from the shared free ring.
//!
//! `CARGO_TARGET_DIR=/tmp/target-runtime cargo bench -p netvm-runtime --bench ring`

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use crossbeam_queue::ArrayQueue;
use netvm_runtime::numa::pin_current_thread;
use netvm_runtime::{HugepagePolicy, PacketPool, RegionConfig, Ring, SharedRegion};

const BURST: usize = 32;
const RING_SLOTS: usize = 1024;
const PRODUCER_CORE: usize = 0;
const CONSUMER_CORE: usize = 1;

/// Pin, ignoring failure (a one-core machine still runs the bench, just unpinned).
fn pin(core: usize) {
    let _ = pin_current_thread(core);
}

fn spsc_ring(iters: u64) -> Duration {
    let ring = Ring::with_slots(RING_SLOTS).expect("valid ring");
    let (mut tx, mut rx) = ring.split().expect("fresh ring");
    let total = iters * BURST as u64;
    let ready = Arc::new(AtomicBool::new(false));
    let consumer = {
        let ready = ready.clone();
        std::thread::spawn(move || {
            pin(CONSUMER_CORE);
            ready.store(true, Ordering::Release);
            let mut out = [0u32; BURST];
            let mut got = 0u64;
            let mut sum = 0u64;
            while got < total {
                let n = rx.dequeue_burst(&mut out);
                for &v in &out[..n] {
                    sum = sum.wrapping_add(u64::from(v));
                }
                got += n as u64;
            }
            sum
        })
    };
    while !ready.load(Ordering::Acquire) {
        std::hint::spin_loop();
    }
    let burst: [u32; BURST] = std::array::from_fn(|i| i as u32);
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < total {
        let want = ((total - sent) as usize).min(BURST);
        sent += tx.enqueue_burst(&burst[..want]) as u64;
    }
    std::hint::black_box(consumer.join().expect("consumer"));
    start.elapsed()
}

fn crossbeam_queue(iters: u64) -> Duration {
    let queue = Arc::new(ArrayQueue::<u32>::new(RING_SLOTS));
    let total = iters * BURST as u64;
    let ready = Arc::new(AtomicBool::new(false));
    let consumer = {
        let queue = queue.clone();
        let ready = ready.clone();
        std::thread::spawn(move || {
            pin(CONSUMER_CORE);
            ready.store(true, Ordering::Release);
            let mut got = 0u64;
            let mut sum = 0u64;
            while got < total {
                // Drain up to a burst per round, like the ring consumer.
                for _ in 0..BURST {
                    match queue.pop() {
                        Some(v) => {
                            sum = sum.wrapping_add(u64::from(v));
                            got += 1;
                        }
                        None => break,
                    }
                }
            }
            sum
        })
    };
    while !ready.load(Ordering::Acquire) {
        std::hint::spin_loop();
    }
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < total {
        let want = (total - sent).min(BURST as u64);
        for i in 0..want {
            if queue.push(i as u32).is_err() {
                break;
            }
            sent += 1;
        }
    }
    std::hint::black_box(consumer.join().expect("consumer"));
    start.elapsed()
}

fn spsc(c: &mut Criterion) {
    pin(PRODUCER_CORE);
    let mut group = c.benchmark_group("spsc_burst32");
    group.throughput(Throughput::Elements(BURST as u64));
    group.bench_function("netvm_ring", |b| b.iter_custom(spsc_ring));
    group.bench_function("crossbeam_array_queue", |b| b.iter_custom(crossbeam_queue));
    group.finish();
}

fn pool(c: &mut Criterion) {
    pin(PRODUCER_CORE);
    let region =
        SharedRegion::create(RegionConfig::default(), HugepagePolicy::Prefer).expect("region");
    eprintln!("{}", region.backing());
    let pool = PacketPool::new(region).expect("pool");
    let mut group = c.benchmark_group("pool_burst32");
    group.throughput(Throughput::Elements(BURST as u64));
    let mut burst = [0u32; BURST];
    {
        let mut cache = pool.cache(256).expect("cache");
        group.bench_function("with_cache", |b| {
            b.iter(|| {
                let n = cache.alloc_burst(&mut burst);
                cache.free_burst(&burst[..n]).expect("free");
                n
            })
        });
    }
    group.bench_function("without_cache", |b| {
        b.iter(|| {
            let n = pool.alloc_burst(&mut burst);
            pool.free_burst(&burst[..n]).expect("free");
            n
        })
    });
    group.finish();
    assert_eq!(pool.available(), pool.capacity());
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20);
    targets = spsc, pool
}
criterion_main!(benches);
