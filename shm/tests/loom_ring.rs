//! Model-checks the rings with loom: every interleaving (up to a preemption bound) of a
//! producer and a consumer, and of racing claims. Only built under `--cfg loom`:
//!
//! ```text
//! RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=/tmp/target-loom \
//!     cargo test -p netvm-shm --release loom
//! ```
//! (a separate target dir keeps the loom build from invalidating the normal one). Under
//! `--cfg loom` the crate compiles only the rings (over heap memory, with loom's atomics
//! and cells); the other test binaries compile to nothing.
#![cfg(loom)]

use loom::thread;
use netvm_shm::Ring;

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(f);
}

#[test]
fn loom_spsc_ring_hands_over_every_index_once_and_in_order_across_a_wrap() {
    model(|| {
        let ring = Ring::with_slots(2).expect("two slots is a valid ring");
        let (mut tx, mut rx) = ring.split().expect("fresh ring");
        let producer = thread::spawn(move || {
            let items = [1, 2, 3];
            let mut sent = 0;
            while sent < items.len() {
                let n = tx.enqueue_burst(&items[sent..]);
                sent += n;
                if n == 0 {
                    thread::yield_now();
                }
            }
        });
        let mut got = Vec::new();
        while got.len() < 3 {
            let mut out = [0; 2];
            let n = rx.dequeue_burst(&mut out);
            got.extend_from_slice(&out[..n]);
            if n == 0 {
                thread::yield_now();
            }
        }
        producer.join().expect("producer thread");
        assert_eq!(got, [1, 2, 3]);
        assert_eq!(rx.dequeue(), None);
    });
}

#[test]
fn loom_only_one_of_two_racing_claims_of_an_end_wins() {
    model(|| {
        let ring = Ring::with_slots(2).expect("two slots is a valid ring");
        let other = ring.clone();
        // The racer returns its handle, so both results are alive at once.
        let racer = thread::spawn(move || other.producer());
        let mine = ring.producer();
        let theirs = racer.join().expect("racing thread");
        assert!(mine.is_ok() != theirs.is_ok(), "exactly one claim wins");
    });
}

#[test]
fn loom_mpmc_free_ring_loses_and_duplicates_nothing_under_racing_bursts() {
    use netvm_shm::MpmcRing;
    model(|| {
        let ring = MpmcRing::with_slots(4).expect("four slots is a valid ring");
        assert_eq!(ring.enqueue_burst(&[10, 11]), 2);
        let other = ring.clone();
        // One thread takes two and gives back one new index while we do the same.
        let racer = thread::spawn(move || {
            let mut out = [0; 2];
            let n = other.dequeue_burst(&mut out);
            assert_eq!(other.enqueue_burst(&[20]), 1);
            out[..n].to_vec()
        });
        let mut out = [0; 2];
        let n = ring.dequeue_burst(&mut out);
        assert_eq!(ring.enqueue_burst(&[30]), 1);
        let mut seen = out[..n].to_vec();
        seen.extend(racer.join().expect("racing thread"));
        let mut rest = [0; 4];
        let left = ring.dequeue_burst(&mut rest);
        seen.extend_from_slice(&rest[..left]);
        seen.sort_unstable();
        assert_eq!(seen, [10, 11, 20, 30]);
    });
}
