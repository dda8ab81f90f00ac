//! Single-producer/single-consumer rings of `u32` buffer indices.
//!
//! A [`Ring`] is a view of a ring that lives either in the [`SharedRegion`](crate::SharedRegion)
//! (so another process can map it) or in an ordinary heap allocation (for in-process use and
//! for the loom model). It carries no data itself: to move indices you *claim* one of its
//! two ends, [`Ring::producer`] or [`Ring::consumer`]. The claim is a flag in the ring's own
//! memory, so the single-producer/single-consumer contract holds across threads *and*
//! processes: a second claim of the same end fails with [`RingError::AlreadyClaimed`] until
//! the first handle is dropped. The handles are `Send` but neither `Clone` nor `Sync`.
//!
//! Memory layout (all in one block, see [`ring_bytes`]): the producer's `head` on one
//! 64-byte line, the consumer's `tail` on the next, a read-mostly meta line (slot count,
//! claim flags, the consumer's doorbell), then `ring_slots` `u32` slots. Each handle keeps a private copy of the
//! other side's index and only re-reads the shared one when the copy says the ring is
//! full (or empty), so in steady state each side writes only its own line. Indices are
//! free-running `u32`s; a slot is `index & mask`. Synchronisation is one `Release` store of
//! `head` (or `tail`) per burst, paired with an `Acquire` load on the other side; no locks,
//! no CAS.
//!
//! An idle consumer may sleep ([`RingConsumer::sleep`]: a futex on the doorbell word,
//! shared between processes); the producer [kicks](RingProducer::kick) after a burst,
//! which costs a fence and a load while the consumer is awake and a system call only
//! when it sleeps.
//!
//! The ring trusts nothing it reads from the other side: a corrupted `head` or `tail` can
//! make a burst return garbage indices (which the pool rejects) but never makes this code
//! read or write outside the ring. Model-checked with loom (`tests/loom_ring.rs`).

use std::fmt;
use std::ptr::NonNull;
use std::sync::Arc;

use crate::sync::{AtomicU32, Ordering, UnsafeCell};

/// Bytes in one cache line; every ring line and every region section is aligned to it.
pub const CACHE_LINE: usize = 64;

/// Largest slot count a ring accepts (free-running `u32` indices need `slots <= 2^31`).
pub const MAX_RING_SLOTS: usize = 1 << 31;

/// Bytes of the header (three cache lines) that precede the slots.
pub const RING_HEADER_BYTES: usize = 3 * CACHE_LINE;

/// Bytes a ring with `ring_slots` slots occupies, rounded up to a whole cache line.
pub const fn ring_bytes(ring_slots: usize) -> usize {
    RING_HEADER_BYTES + (ring_slots * 4).div_ceil(CACHE_LINE) * CACHE_LINE
}

#[repr(C, align(64))]
struct ProducerLine {
    head: AtomicU32,
}

#[repr(C, align(64))]
struct ConsumerLine {
    tail: AtomicU32,
}

/// Written once at creation, then only the claim flags and the doorbell change.
#[repr(C, align(64))]
struct MetaLine {
    ring_slots: u32,
    producer_claimed: AtomicU32,
    consumer_claimed: AtomicU32,
    /// The doorbell: 1 while the consumer sleeps on this word (or is about to), set by
    /// the consumer ([`RingConsumer::sleep`]), cleared by whoever wakes it
    /// ([`RingProducer::kick`]). Written only around a sleep, so in steady state this
    /// line stays in both sides' caches.
    consumer_sleeping: AtomicU32,
}

#[repr(C)]
struct RingHeader {
    producer: ProducerLine,
    consumer: ConsumerLine,
    meta: MetaLine,
}

#[cfg(not(loom))]
const _: () = assert!(std::mem::size_of::<RingHeader>() == RING_HEADER_BYTES);

impl RingHeader {
    fn new(ring_slots: u32) -> Self {
        Self {
            producer: ProducerLine {
                head: AtomicU32::new(0),
            },
            consumer: ConsumerLine {
                tail: AtomicU32::new(0),
            },
            meta: MetaLine {
                ring_slots,
                producer_claimed: AtomicU32::new(0),
                consumer_claimed: AtomicU32::new(0),
                consumer_sleeping: AtomicU32::new(0),
            },
        }
    }
}

/// Why a ring could not be created, attached or claimed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// Slot counts must be a power of two between 2 and [`MAX_RING_SLOTS`].
    #[error("a ring needs a power-of-two slot count between 2 and 2^31, not {0}")]
    BadSlotCount(usize),
    /// The ring's header in shared memory does not match what the layout says.
    #[error("ring header says {found} slots where the region layout says {expected}")]
    Corrupt { expected: usize, found: usize },
    /// Someone (this or another process) already holds this end of the ring.
    #[error("the {0} end of this ring is already claimed")]
    AlreadyClaimed(RingEnd),
}

/// One end of a ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingEnd {
    Producer,
    Consumer,
}

impl fmt::Display for RingEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RingEnd::Producer => "producer",
            RingEnd::Consumer => "consumer",
        })
    }
}

/// Where a ring's memory came from; kept alive by every view of the ring.
type Keepalive = Arc<dyn Send + Sync>;

/// Heap storage for [`Ring::with_slots`]. Two boxes rather than one block so the loom
/// build (whose atomics are not plain memory) uses the same code.
struct HeapRing {
    header: Box<RingHeader>,
    slots: Box<[UnsafeCell<u32>]>,
}

// SAFETY: all shared mutation goes through atomics, and slots are written only by the
// one claimed producer and read only by the one claimed consumer after an Acquire/Release
// handoff; the boxes themselves are never moved or freed while a view exists.
unsafe impl Send for HeapRing {}
// SAFETY: as above.
unsafe impl Sync for HeapRing {}

/// A view of one SPSC ring; claim an end to use it. Cheap to clone.
#[derive(Clone)]
pub struct Ring {
    header: NonNull<RingHeader>,
    slots: NonNull<UnsafeCell<u32>>,
    mask: u32,
    _memory: Keepalive,
}

// SAFETY: a `Ring` only touches the header's atomics; the memory it points to is kept
// alive by `_memory` (the heap ring or the mapped region), which is itself Send + Sync.
unsafe impl Send for Ring {}
// SAFETY: as above; every method takes `&self` and uses atomics only.
unsafe impl Sync for Ring {}

impl fmt::Debug for Ring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring")
            .field("ring_slots", &self.capacity())
            .field("len", &self.len())
            .finish()
    }
}

/// `ring_slots` as a `u32` if it is a power of two in `2..=MAX_RING_SLOTS`.
pub(crate) fn check_slots(ring_slots: usize) -> Result<u32, RingError> {
    if !(2..=MAX_RING_SLOTS).contains(&ring_slots) || !ring_slots.is_power_of_two() {
        return Err(RingError::BadSlotCount(ring_slots));
    }
    u32::try_from(ring_slots).map_err(|_| RingError::BadSlotCount(ring_slots))
}

impl Ring {
    /// A ring in its own heap allocation, for use between threads of one process.
    pub fn with_slots(ring_slots: usize) -> Result<Ring, RingError> {
        let slots_u32 = check_slots(ring_slots)?;
        let heap = Arc::new(HeapRing {
            header: Box::new(RingHeader::new(slots_u32)),
            slots: (0..ring_slots).map(|_| UnsafeCell::new(0)).collect(),
        });
        let header = NonNull::from(&*heap.header);
        // `as_ptr` (not `&slots[0]`) so the pointer may reach every slot.
        let slots = NonNull::new(heap.slots.as_ptr().cast_mut())
            .ok_or(RingError::BadSlotCount(ring_slots))?;
        Ok(Ring {
            header,
            slots,
            mask: slots_u32 - 1,
            _memory: heap,
        })
    }

    /// Write a fresh, empty, unclaimed ring header at `base`.
    ///
    /// # Safety
    /// `base` is 64-byte aligned, valid for writes of [`ring_bytes`]`(ring_slots)` bytes,
    /// and nobody else is using that memory yet (region creation time).
    #[cfg(not(loom))]
    pub(crate) unsafe fn init_at(base: NonNull<u8>, ring_slots: usize) -> Result<(), RingError> {
        let slots_u32 = check_slots(ring_slots)?;
        // SAFETY: the caller guarantees alignment, size and exclusive access.
        unsafe {
            base.cast::<RingHeader>().write(RingHeader::new(slots_u32));
            let slots = base.add(RING_HEADER_BYTES).cast::<u32>();
            std::ptr::write_bytes(slots.as_ptr(), 0, ring_slots);
        }
        Ok(())
    }

    /// A view of the ring that [`Ring::init_at`] wrote at `base`.
    ///
    /// # Safety
    /// `base` is 64-byte aligned and valid for [`ring_bytes`]`(ring_slots)` bytes for as
    /// long as `memory` lives, and the memory was initialised by `init_at` (possibly in
    /// another process).
    #[cfg(not(loom))]
    pub(crate) unsafe fn attach_at(
        base: NonNull<u8>,
        ring_slots: usize,
        memory: Keepalive,
    ) -> Result<Ring, RingError> {
        let slots_u32 = check_slots(ring_slots)?;
        let header = base.cast::<RingHeader>();
        // SAFETY: the meta line is written once before the region is shared and never
        // again (except the claim atomics, which we do not read here).
        let found = unsafe { (*header.as_ptr()).meta.ring_slots };
        if found != slots_u32 {
            return Err(RingError::Corrupt {
                expected: ring_slots,
                found: found as usize,
            });
        }
        // SAFETY: the slots follow the header inside the block the caller vouched for.
        let slots = unsafe { base.add(RING_HEADER_BYTES) }.cast::<UnsafeCell<u32>>();
        Ok(Ring {
            header,
            slots,
            mask: slots_u32 - 1,
            _memory: memory,
        })
    }

    /// Make the ring empty and unclaimed again, for a new peer after the old one died.
    ///
    /// # Safety
    /// No handle to either end may exist, in this process or any other that is still
    /// running (the previous peer has exited or has been cut off and is no longer
    /// trusted to touch the ring), and no other thread may call this concurrently.
    #[cfg(not(loom))]
    pub unsafe fn reset(&self) -> Result<(), RingError> {
        // SAFETY: `header` is the 64-byte-aligned start of a block of
        // ring_bytes(capacity) bytes kept alive by `memory`; the caller guarantees
        // nobody uses it.
        unsafe { Ring::init_at(self.header.cast(), self.capacity()) }
    }

    #[inline]
    fn header(&self) -> &RingHeader {
        // SAFETY: `memory` keeps the header alive and in place for the life of `self`.
        unsafe { self.header.as_ref() }
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.mask as usize + 1
    }

    /// Indices currently queued. A snapshot: either side may move it right after.
    pub fn len(&self) -> usize {
        let h = self.header();
        let head = h.producer.head.load(Ordering::Acquire);
        let tail = h.consumer.tail.load(Ordering::Acquire);
        (head.wrapping_sub(tail) as usize).min(self.capacity())
    }

    /// Whether [`Ring::len`] is zero.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Claim the producer end. Fails while another handle (in any process) holds it.
    pub fn producer(&self) -> Result<RingProducer, RingError> {
        let h = self.header();
        h.meta
            .producer_claimed
            .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .map_err(|_| RingError::AlreadyClaimed(RingEnd::Producer))?;
        // The Acquire above pairs with the previous holder's Release on drop, so this
        // sees the last head it published.
        let head = h.producer.head.load(Ordering::Relaxed);
        let cached_tail = h.consumer.tail.load(Ordering::Acquire);
        Ok(RingProducer {
            ring: self.clone(),
            head,
            cached_tail,
        })
    }

    /// Claim the consumer end. Fails while another handle (in any process) holds it.
    pub fn consumer(&self) -> Result<RingConsumer, RingError> {
        let h = self.header();
        h.meta
            .consumer_claimed
            .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .map_err(|_| RingError::AlreadyClaimed(RingEnd::Consumer))?;
        let tail = h.consumer.tail.load(Ordering::Relaxed);
        let cached_head = h.producer.head.load(Ordering::Acquire);
        Ok(RingConsumer {
            ring: self.clone(),
            tail,
            cached_head,
        })
    }

    /// Wake the consumer if its doorbell says it sleeps (see [`RingProducer::kick`]);
    /// also for whoever must wake it without holding the producer end (a stopping
    /// switch).
    #[inline]
    pub fn wake_consumer(&self) -> bool {
        crate::sync::fence_seq_cst();
        let bell = &self.header().meta.consumer_sleeping;
        if bell.load(Ordering::Relaxed) == 0 || bell.swap(0, Ordering::Relaxed) == 0 {
            return false;
        }
        crate::sync::futex_wake(bell);
        true
    }

    /// Claim both ends at once (the usual in-process case).
    pub fn split(&self) -> Result<(RingProducer, RingConsumer), RingError> {
        let producer = self.producer()?;
        let consumer = self.consumer()?;
        Ok((producer, consumer))
    }

    #[inline(always)]
    fn slot(&self, index: u32) -> &UnsafeCell<u32> {
        // SAFETY: `index & mask < capacity`, and the slots array has `capacity` cells
        // inside the memory `self.memory` keeps alive.
        unsafe { &*self.slots.as_ptr().add((index & self.mask) as usize) }
    }
}

/// The producing end of a [`Ring`]. Exactly one exists per ring at a time.
pub struct RingProducer {
    ring: Ring,
    /// Our own index; the shared copy is only ever written by us.
    head: u32,
    /// The consumer's `tail` as last seen; refreshed only when the ring looks full.
    cached_tail: u32,
}

impl RingProducer {
    /// Enqueue as many of `items` as fit, in order; returns how many were enqueued.
    #[inline]
    pub fn enqueue_burst(&mut self, items: &[u32]) -> usize {
        let capacity = self.ring.mask.wrapping_add(1);
        // `saturating_sub`: a corrupted tail from the other side must not underflow.
        let mut free = capacity.saturating_sub(self.head.wrapping_sub(self.cached_tail)) as usize;
        if free < items.len() {
            // Acquire: the consumer's reads of the slots it released happen before our
            // writes to them.
            self.cached_tail = self.ring.header().consumer.tail.load(Ordering::Acquire);
            free = capacity.saturating_sub(self.head.wrapping_sub(self.cached_tail)) as usize;
        }
        let n = free.min(items.len());
        if n == 0 {
            return 0;
        }
        for (i, &item) in items[..n].iter().enumerate() {
            let slot = self.ring.slot(self.head.wrapping_add(i as u32));
            // SAFETY: slots in [head, cached_tail + capacity) belong to the producer
            // until it publishes them with the Release store below.
            slot.with_mut(|p| unsafe { p.write(item) });
        }
        self.head = self.head.wrapping_add(n as u32);
        self.ring
            .header()
            .producer
            .head
            .store(self.head, Ordering::Release);
        n
    }

    /// Enqueue one index; `false` when the ring is full.
    #[inline]
    pub fn enqueue(&mut self, item: u32) -> bool {
        self.enqueue_burst(&[item]) == 1
    }

    /// Wake the consumer if it sleeps ([`RingConsumer::sleep`]); call after enqueueing.
    /// Costs one fence and one load of a line that stays cached while the consumer is
    /// awake; a system call only when it really sleeps. Returns whether it woke it.
    #[inline]
    pub fn kick(&self) -> bool {
        self.ring.wake_consumer()
    }

    /// The ring this end belongs to.
    pub fn ring(&self) -> &Ring {
        &self.ring
    }
}

impl Drop for RingProducer {
    fn drop(&mut self) {
        self.ring
            .header()
            .meta
            .producer_claimed
            .store(0, Ordering::Release);
    }
}

impl fmt::Debug for RingProducer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RingProducer")
            .field("head", &self.head)
            .field("cached_tail", &self.cached_tail)
            .finish()
    }
}

/// The consuming end of a [`Ring`]. Exactly one exists per ring at a time.
pub struct RingConsumer {
    ring: Ring,
    tail: u32,
    /// The producer's `head` as last seen; refreshed only when the ring looks empty.
    cached_head: u32,
}

impl RingConsumer {
    /// Dequeue up to `out.len()` indices, in order; returns how many were written.
    #[inline]
    pub fn dequeue_burst(&mut self, out: &mut [u32]) -> usize {
        let capacity = self.ring.mask.wrapping_add(1);
        // `min`: a corrupted head from the other side must not make us read more than a
        // ring's worth of slots.
        let mut avail = self.cached_head.wrapping_sub(self.tail).min(capacity) as usize;
        if avail < out.len() {
            // Acquire: the producer's slot writes happen before our reads.
            self.cached_head = self.ring.header().producer.head.load(Ordering::Acquire);
            avail = self.cached_head.wrapping_sub(self.tail).min(capacity) as usize;
        }
        let n = avail.min(out.len());
        if n == 0 {
            return 0;
        }
        for (i, out) in out[..n].iter_mut().enumerate() {
            let slot = self.ring.slot(self.tail.wrapping_add(i as u32));
            // SAFETY: slots in [tail, cached_head) were published by the producer's
            // Release store of head, which our Acquire load observed.
            *out = slot.with(|p| unsafe { p.read() });
        }
        self.tail = self.tail.wrapping_add(n as u32);
        self.ring
            .header()
            .consumer
            .tail
            .store(self.tail, Ordering::Release);
        n
    }

    /// Sleep until the producer [kicks](RingProducer::kick) or `timeout` passes, unless
    /// the ring has items once the doorbell is set. May return early (a spurious wake);
    /// callers poll again either way. Returns whether it waited.
    ///
    /// No lost wake-up: the consumer stores the doorbell, then (after a SeqCst fence)
    /// reads `head`; the producer stores `head`, then (after its fence) reads the
    /// doorbell. Of two stores each followed by a fence, at least one is seen by the
    /// other side's load: either we see the new items and do not sleep, or the producer
    /// sees the doorbell and wakes us (and the futex wait returns at once if it already
    /// has).
    pub fn sleep(&mut self, timeout: std::time::Duration) -> bool {
        let h = self.ring.header();
        let bell = &h.meta.consumer_sleeping;
        bell.store(1, Ordering::Relaxed);
        crate::sync::fence_seq_cst();
        let head = h.producer.head.load(Ordering::Acquire);
        if head != self.tail {
            bell.store(0, Ordering::Relaxed);
            return false;
        }
        crate::sync::futex_wait(bell, 1, timeout);
        bell.store(0, Ordering::Relaxed);
        true
    }

    /// Dequeue one index.
    #[inline]
    pub fn dequeue(&mut self) -> Option<u32> {
        let mut one = [0];
        (self.dequeue_burst(&mut one) == 1).then_some(one[0])
    }

    /// The ring this end belongs to.
    pub fn ring(&self) -> &Ring {
        &self.ring
    }
}

impl Drop for RingConsumer {
    fn drop(&mut self) {
        self.ring
            .header()
            .meta
            .consumer_claimed
            .store(0, Ordering::Release);
    }
}

impl fmt::Debug for RingConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RingConsumer")
            .field("tail", &self.tail)
            .field("cached_head", &self.cached_head)
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn slot_counts_must_be_powers_of_two() {
        for bad in [0, 1, 3, 100, MAX_RING_SLOTS * 2] {
            assert_eq!(
                Ring::with_slots(bad).unwrap_err(),
                RingError::BadSlotCount(bad)
            );
        }
        assert_eq!(Ring::with_slots(8).unwrap().capacity(), 8);
    }

    #[test]
    fn header_lines_are_64_bytes_apart() {
        let ring = Ring::with_slots(4).unwrap();
        let h = ring.header();
        let base = h as *const RingHeader as usize;
        assert_eq!(base % CACHE_LINE, 0);
        assert_eq!(&h.producer.head as *const _ as usize - base, 0);
        assert_eq!(&h.consumer.tail as *const _ as usize - base, CACHE_LINE);
        assert_eq!(&h.meta as *const _ as usize - base, 2 * CACHE_LINE);
        assert_eq!(ring_bytes(4), 3 * 64 + 64);
        assert_eq!(ring_bytes(32), 3 * 64 + 128);
    }

    #[test]
    fn burst_stops_at_capacity_and_preserves_order() {
        let ring = Ring::with_slots(8).unwrap();
        let (mut tx, mut rx) = ring.split().unwrap();
        let items: Vec<u32> = (100..112).collect();
        assert_eq!(tx.enqueue_burst(&items), 8);
        assert_eq!(tx.enqueue_burst(&items), 0);
        assert_eq!(ring.len(), 8);
        let mut out = [0; 5];
        assert_eq!(rx.dequeue_burst(&mut out), 5);
        assert_eq!(out, [100, 101, 102, 103, 104]);
        assert_eq!(tx.enqueue_burst(&items[8..]), 4);
        let mut out = [0; 16];
        assert_eq!(rx.dequeue_burst(&mut out), 7);
        assert_eq!(&out[..7], &[105, 106, 107, 108, 109, 110, 111]);
        assert_eq!(rx.dequeue(), None);
        assert!(ring.is_empty());
    }

    #[test]
    fn each_end_can_be_claimed_once_until_dropped() {
        let ring = Ring::with_slots(4).unwrap();
        let tx = ring.producer().unwrap();
        assert_eq!(
            ring.producer().unwrap_err(),
            RingError::AlreadyClaimed(RingEnd::Producer)
        );
        let rx = ring.consumer().unwrap();
        assert_eq!(
            ring.clone().consumer().unwrap_err(),
            RingError::AlreadyClaimed(RingEnd::Consumer)
        );
        drop(tx);
        drop(rx);
        assert!(ring.split().is_ok());
    }

    #[test]
    fn a_reclaimed_end_continues_where_the_last_holder_stopped() {
        let ring = Ring::with_slots(4).unwrap();
        let mut tx = ring.producer().unwrap();
        assert!(tx.enqueue(7));
        assert!(tx.enqueue(8));
        drop(tx);
        let mut rx = ring.consumer().unwrap();
        assert_eq!(rx.dequeue(), Some(7));
        drop(rx);
        let mut tx = ring.producer().unwrap();
        assert!(tx.enqueue(9));
        let mut rx = ring.consumer().unwrap();
        let mut out = [0; 4];
        assert_eq!(rx.dequeue_burst(&mut out), 2);
        assert_eq!(&out[..2], &[8, 9]);
    }

    #[test]
    fn indices_wrap_around_u32_without_loss() {
        let ring = Ring::with_slots(4).unwrap();
        // Start both indices just below the u32 wrap point.
        let start = u32::MAX - 5;
        ring.header().producer.head.store(start, Ordering::Relaxed);
        ring.header().consumer.tail.store(start, Ordering::Relaxed);
        let (mut tx, mut rx) = ring.split().unwrap();
        for i in 0..20u32 {
            assert_eq!(tx.enqueue_burst(&[i, i + 1000, i + 2000]), 3);
            let mut out = [0; 3];
            assert_eq!(rx.dequeue_burst(&mut out), 3);
            assert_eq!(out, [i, i + 1000, i + 2000]);
        }
    }

    #[test]
    fn a_corrupted_head_never_reads_more_than_a_ring() {
        let ring = Ring::with_slots(4).unwrap();
        let mut rx = ring.consumer().unwrap();
        ring.header()
            .producer
            .head
            .store(1_000_000, Ordering::Release);
        let mut out = [0; 64];
        assert_eq!(rx.dequeue_burst(&mut out), 4);
    }

    #[test]
    fn two_threads_move_millions_of_sequence_numbers_without_loss_duplication_or_reordering() {
        const ITEMS: u32 = 4_000_000;
        let ring = Ring::with_slots(1024).unwrap();
        let (mut tx, mut rx) = ring.split().unwrap();
        let producer = std::thread::spawn(move || {
            let mut next = 0u32;
            let mut burst = [0u32; 32];
            let mut spins = 0u32;
            while next < ITEMS {
                let len = ((ITEMS - next) as usize).min(1 + (next as usize % 32));
                for (i, b) in burst[..len].iter_mut().enumerate() {
                    *b = next + i as u32;
                }
                let n = tx.enqueue_burst(&burst[..len]);
                next += n as u32;
                if n == 0 {
                    spins += 1;
                    if spins % 64 == 0 {
                        std::thread::yield_now();
                    }
                }
            }
        });
        let mut expected = 0u32;
        let mut out = [0u32; 32];
        let mut spins = 0u32;
        while expected < ITEMS {
            let n = rx.dequeue_burst(&mut out);
            for &got in &out[..n] {
                assert_eq!(got, expected, "lost, duplicated or reordered");
                expected += 1;
            }
            if n == 0 {
                spins += 1;
                if spins % 64 == 0 {
                    std::thread::yield_now();
                }
            }
        }
        producer.join().unwrap();
        assert_eq!(rx.dequeue(), None);
    }

    /// The doorbell never loses a wake-up: a consumer that sleeps whenever the ring is
    /// empty gets every item of a producer that kicks after every burst and pauses now
    /// and then (so the consumer really sleeps), and no sleep runs to its timeout. A
    /// lost wake-up (the kick's fence or the re-check of `head` missing) shows up as a
    /// sleep that lasts the whole timeout with items waiting.
    #[test]
    fn a_sleeping_consumer_is_always_woken_by_the_kick() {
        const ITEMS: u32 = 2_000_000;
        const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
        let ring = Ring::with_slots(256).unwrap();
        let (mut tx, mut rx) = ring.split().unwrap();
        let producer = std::thread::spawn(move || {
            let mut next = 0u32;
            let mut bursts = 0u32;
            let mut kicks = 0u32;
            while next < ITEMS {
                let len = (1 + next % 31).min(ITEMS - next) as usize;
                let burst: Vec<u32> = (next..next + len as u32).collect();
                let n = tx.enqueue_burst(&burst);
                next += n as u32;
                kicks += u32::from(tx.kick());
                bursts += 1;
                if bursts % 2048 == 0 {
                    // Long enough for the consumer to go to sleep.
                    std::thread::sleep(std::time::Duration::from_micros(200));
                }
            }
            kicks
        });
        let mut expected = 0u32;
        let mut out = [0u32; 32];
        let mut empty_polls = 0u32;
        let mut slept = 0u32;
        while expected < ITEMS {
            let n = rx.dequeue_burst(&mut out);
            for &got in &out[..n] {
                assert_eq!(got, expected, "lost, duplicated or reordered");
                expected += 1;
            }
            if n > 0 {
                empty_polls = 0;
                continue;
            }
            empty_polls += 1;
            if empty_polls > 16 {
                let start = std::time::Instant::now();
                if rx.sleep(TIMEOUT) {
                    slept += 1;
                    assert!(
                        start.elapsed() < TIMEOUT,
                        "a sleep ran to its timeout: lost wake-up at item {expected}"
                    );
                }
            }
        }
        let kicks = producer.join().unwrap();
        assert_eq!(rx.dequeue(), None);
        assert!(
            slept > 0 && kicks > 0,
            "the consumer never slept: nothing tested"
        );
    }

    /// The consumer re-checks the ring after ringing its doorbell: items enqueued
    /// before it (whose kick found no doorbell to answer) never wait out a sleep.
    #[test]
    fn a_consumer_does_not_sleep_on_items_already_queued() {
        let ring = Ring::with_slots(8).unwrap();
        let (mut tx, mut rx) = ring.split().unwrap();
        assert!(tx.enqueue(7));
        assert!(!tx.kick(), "nobody sleeps yet");
        let start = std::time::Instant::now();
        assert!(!rx.sleep(std::time::Duration::from_secs(2)));
        assert!(start.elapsed() < std::time::Duration::from_secs(1));
        assert_eq!(rx.dequeue(), Some(7));
    }
}
