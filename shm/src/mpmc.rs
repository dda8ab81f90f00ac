//! A bounded multi-producer/multi-consumer ring of `u32` indices: the pool's free list.
//!
//! Dmitry Vyukov's bounded MPMC queue: each cell carries a sequence number that says
//! whose turn it is (`seq == pos`: free for the producer at `pos`; `seq == pos + 1`: full,
//! for the consumer at `pos`). A thread claims positions by CAS on the shared enqueue (or
//! dequeue) position, then writes (reads) its cells and hands each one over with a
//! `Release` store of its sequence number. Bursts claim a run of consecutive ready cells
//! with one CAS, so refilling a per-core cache costs one contended operation, not
//! thirty-two. Lock-free, no locks, no allocation.
//!
//! Why not `crossbeam_queue::ArrayQueue`: it owns a heap allocation and stores pointers
//! in it, so it cannot live in a region that another process maps at another address.
//! This ring is positions and indices only, laid out in place ([`mpmc_bytes`]).
//!
//! Positions are free-running `u32`s; a stalled thread whose CAS target wraps all the way
//! around (2^32 operations while it sleeps) could succeed wrongly, the usual ABA bound.
//! Peers sharing the ring are trusted not to scribble on it (in NetVM only the switch and
//! trusted VMs map the pool). Model-checked with loom in `tests/loom_ring.rs`.

use std::fmt;
use std::ptr::NonNull;
use std::sync::Arc;

use crate::ring::{check_slots, RingError, CACHE_LINE};
use crate::sync::{spin_hint, AtomicU32, Ordering, UnsafeCell};

/// Bytes of the header (three cache lines) that precede the cells.
pub const MPMC_HEADER_BYTES: usize = 3 * CACHE_LINE;
/// Bytes of one cell: sequence number and value.
pub const MPMC_CELL_BYTES: usize = 8;

/// Bytes an MPMC ring with `slots` cells occupies, rounded up to a whole cache line.
pub const fn mpmc_bytes(slots: usize) -> usize {
    MPMC_HEADER_BYTES + (slots * MPMC_CELL_BYTES).div_ceil(CACHE_LINE) * CACHE_LINE
}

#[repr(C, align(64))]
struct PositionLine {
    pos: AtomicU32,
}

#[repr(C, align(64))]
struct MetaLine {
    slots: u32,
}

#[repr(C)]
struct MpmcHeader {
    enqueue: PositionLine,
    dequeue: PositionLine,
    meta: MetaLine,
}

#[repr(C)]
struct Cell {
    seq: AtomicU32,
    value: UnsafeCell<u32>,
}

#[cfg(not(loom))]
const _: () = {
    assert!(std::mem::size_of::<MpmcHeader>() == MPMC_HEADER_BYTES);
    assert!(std::mem::size_of::<Cell>() == MPMC_CELL_BYTES);
};

struct HeapMpmc {
    header: Box<MpmcHeader>,
    cells: Box<[Cell]>,
}

// SAFETY: cells' values are only touched by the thread that claimed their position by
// CAS, with Acquire/Release handoff through the sequence numbers.
unsafe impl Send for HeapMpmc {}
// SAFETY: as above.
unsafe impl Sync for HeapMpmc {}

/// A view of one MPMC ring; every method takes `&self`. Cheap to clone.
#[derive(Clone)]
pub struct MpmcRing {
    header: NonNull<MpmcHeader>,
    cells: NonNull<Cell>,
    mask: u32,
    _memory: Arc<dyn Send + Sync>,
}

// SAFETY: all shared state is reached through atomics or through cells owned by
// position claims; `_memory` keeps the storage alive and is Send + Sync.
unsafe impl Send for MpmcRing {}
// SAFETY: as above.
unsafe impl Sync for MpmcRing {}

impl fmt::Debug for MpmcRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MpmcRing")
            .field("slots", &self.capacity())
            .field("len", &self.len())
            .finish()
    }
}

impl MpmcRing {
    /// An empty ring in its own heap allocation.
    pub fn with_slots(slots: usize) -> Result<Self, RingError> {
        let slots_u32 = check_slots(slots)?;
        let heap = Arc::new(HeapMpmc {
            header: Box::new(MpmcHeader {
                enqueue: PositionLine {
                    pos: AtomicU32::new(0),
                },
                dequeue: PositionLine {
                    pos: AtomicU32::new(0),
                },
                meta: MetaLine { slots: slots_u32 },
            }),
            cells: (0..slots_u32)
                .map(|i| Cell {
                    seq: AtomicU32::new(i),
                    value: UnsafeCell::new(0),
                })
                .collect(),
        });
        let header = NonNull::from(&*heap.header);
        let cells =
            NonNull::new(heap.cells.as_ptr().cast_mut()).ok_or(RingError::BadSlotCount(slots))?;
        Ok(Self {
            header,
            cells,
            mask: slots_u32 - 1,
            _memory: heap,
        })
    }

    /// Write an empty ring at `base`.
    ///
    /// # Safety
    /// `base` is 64-byte aligned, valid for writes of [`mpmc_bytes`]`(slots)` bytes, and
    /// not yet visible to anyone else.
    #[cfg(not(loom))]
    pub(crate) unsafe fn init_at(base: NonNull<u8>, slots: usize) -> Result<(), RingError> {
        let slots_u32 = check_slots(slots)?;
        // SAFETY: caller guarantees alignment, size and exclusive access; the header is
        // followed by `slots` 8-byte cells.
        unsafe {
            base.cast::<MpmcHeader>().write(MpmcHeader {
                enqueue: PositionLine {
                    pos: AtomicU32::new(0),
                },
                dequeue: PositionLine {
                    pos: AtomicU32::new(0),
                },
                meta: MetaLine { slots: slots_u32 },
            });
            let cells = base.add(MPMC_HEADER_BYTES).cast::<Cell>();
            for i in 0..slots_u32 {
                cells.add(i as usize).write(Cell {
                    seq: AtomicU32::new(i),
                    value: UnsafeCell::new(0),
                });
            }
        }
        Ok(())
    }

    /// A view of the ring [`MpmcRing::init_at`] wrote at `base`.
    ///
    /// # Safety
    /// `base` is 64-byte aligned, valid for [`mpmc_bytes`]`(slots)` bytes for as long as
    /// `memory` lives, and was initialised by `init_at` (possibly in another process).
    #[cfg(not(loom))]
    pub(crate) unsafe fn attach_at(
        base: NonNull<u8>,
        slots: usize,
        memory: Arc<dyn Send + Sync>,
    ) -> Result<Self, RingError> {
        let slots_u32 = check_slots(slots)?;
        let header = base.cast::<MpmcHeader>();
        // SAFETY: the meta line is written once before sharing and read-only afterwards.
        let found = unsafe { (*header.as_ptr()).meta.slots };
        if found != slots_u32 {
            return Err(RingError::Corrupt {
                expected: slots,
                found: found as usize,
            });
        }
        Ok(Self {
            header,
            // SAFETY: the cells follow the header inside the caller's block.
            cells: unsafe { base.add(MPMC_HEADER_BYTES) }.cast(),
            mask: slots_u32 - 1,
            _memory: memory,
        })
    }

    fn header(&self) -> &MpmcHeader {
        // SAFETY: `_memory` keeps the header alive and in place.
        unsafe { self.header.as_ref() }
    }

    #[inline(always)]
    fn cell(&self, pos: u32) -> &Cell {
        // SAFETY: `pos & mask < slots` and the cells array has `slots` entries.
        unsafe { &*self.cells.as_ptr().add((pos & self.mask) as usize) }
    }

    /// Number of cells.
    pub fn capacity(&self) -> usize {
        self.mask as usize + 1
    }

    /// Indices queued (claimed positions included). Exact when nobody is mid-operation.
    pub fn len(&self) -> usize {
        let h = self.header();
        let deq = h.dequeue.pos.load(Ordering::Acquire);
        let enq = h.enqueue.pos.load(Ordering::Acquire);
        (enq.wrapping_sub(deq) as usize).min(self.capacity())
    }

    /// Whether [`MpmcRing::len`] is zero.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Enqueue a prefix of `items` (as long as the ring has room for); returns its length.
    pub fn enqueue_burst(&self, items: &[u32]) -> usize {
        if items.is_empty() {
            return 0;
        }
        let enqueue = &self.header().enqueue.pos;
        let mut pos = enqueue.load(Ordering::Relaxed);
        loop {
            let mut n = 0;
            let mut first_seq = 0;
            while n < items.len() {
                let want = pos.wrapping_add(n as u32);
                let seq = self.cell(want).seq.load(Ordering::Acquire);
                if n == 0 {
                    first_seq = seq;
                }
                if seq != want {
                    break;
                }
                n += 1;
            }
            if n == 0 {
                if (first_seq.wrapping_sub(pos) as i32) < 0 {
                    return 0; // the cell still holds an index from a lap ago: full
                }
                // Someone else claimed `pos` already; catch up.
                spin_hint();
                pos = enqueue.load(Ordering::Relaxed);
                continue;
            }
            match enqueue.compare_exchange_weak(
                pos,
                pos.wrapping_add(n as u32),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    for (k, &item) in items[..n].iter().enumerate() {
                        let at = pos.wrapping_add(k as u32);
                        let cell = self.cell(at);
                        // SAFETY: our CAS claimed position `at`; its cell had
                        // `seq == at`, so no consumer reads it until our Release below.
                        cell.value.with_mut(|p| unsafe { p.write(item) });
                        cell.seq.store(at.wrapping_add(1), Ordering::Release);
                    }
                    return n;
                }
                Err(now) => {
                    spin_hint();
                    pos = now;
                }
            }
        }
    }

    /// Dequeue up to `out.len()` indices; returns how many were written to `out`.
    pub fn dequeue_burst(&self, out: &mut [u32]) -> usize {
        if out.is_empty() {
            return 0;
        }
        let dequeue = &self.header().dequeue.pos;
        let lap = self.mask.wrapping_add(1);
        let mut pos = dequeue.load(Ordering::Relaxed);
        loop {
            let mut n = 0;
            let mut first_seq = 0;
            while n < out.len() {
                let want = pos.wrapping_add(n as u32);
                let seq = self.cell(want).seq.load(Ordering::Acquire);
                if n == 0 {
                    first_seq = seq;
                }
                if seq != want.wrapping_add(1) {
                    break;
                }
                n += 1;
            }
            if n == 0 {
                if (first_seq.wrapping_sub(pos.wrapping_add(1)) as i32) < 0 {
                    return 0; // nothing published at `pos` yet: empty
                }
                spin_hint();
                pos = dequeue.load(Ordering::Relaxed);
                continue;
            }
            match dequeue.compare_exchange_weak(
                pos,
                pos.wrapping_add(n as u32),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    for (k, slot) in out[..n].iter_mut().enumerate() {
                        let at = pos.wrapping_add(k as u32);
                        let cell = self.cell(at);
                        // SAFETY: our CAS claimed position `at`, and our Acquire load saw
                        // `seq == at + 1`, the producer's Release after writing the value.
                        *slot = cell.value.with(|p| unsafe { p.read() });
                        cell.seq.store(at.wrapping_add(lap), Ordering::Release);
                    }
                    return n;
                }
                Err(now) => {
                    spin_hint();
                    pos = now;
                }
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn fills_to_capacity_then_refuses_and_drains_in_order() {
        let ring = MpmcRing::with_slots(8).unwrap();
        let items: Vec<u32> = (0..10).collect();
        assert_eq!(ring.enqueue_burst(&items), 8);
        assert_eq!(ring.enqueue_burst(&items), 0);
        assert_eq!(ring.len(), 8);
        let mut out = [0; 3];
        assert_eq!(ring.dequeue_burst(&mut out), 3);
        assert_eq!(out, [0, 1, 2]);
        assert_eq!(ring.enqueue_burst(&[20, 21, 22, 23]), 3);
        let mut out = [0; 16];
        assert_eq!(ring.dequeue_burst(&mut out), 8);
        assert_eq!(&out[..8], &[3, 4, 5, 6, 7, 20, 21, 22]);
        assert_eq!(ring.dequeue_burst(&mut out), 0);
    }

    #[test]
    fn several_threads_pass_indices_through_without_loss_or_duplication() {
        const PER_THREAD: u32 = 50_000;
        const THREADS: u32 = 4;
        let ring = MpmcRing::with_slots(64).unwrap();
        let mut handles = Vec::new();
        for t in 0..THREADS {
            let ring = ring.clone();
            handles.push(std::thread::spawn(move || {
                let mut next = t * PER_THREAD;
                let end = next + PER_THREAD;
                let mut got = Vec::new();
                let mut buf = [0u32; 8];
                while next < end || got.len() < PER_THREAD as usize {
                    if next < end {
                        let burst: Vec<u32> = (next..end.min(next + 5)).collect();
                        next += ring.enqueue_burst(&burst) as u32;
                    }
                    let want = (PER_THREAD as usize - got.len()).min(buf.len());
                    let n = ring.dequeue_burst(&mut buf[..want]);
                    got.extend_from_slice(&buf[..n]);
                    if n == 0 {
                        std::thread::yield_now();
                    }
                }
                got
            }));
        }
        let mut all: Vec<u32> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        all.sort_unstable();
        assert_eq!(all, (0..THREADS * PER_THREAD).collect::<Vec<_>>());
        assert!(ring.is_empty());
    }
}
