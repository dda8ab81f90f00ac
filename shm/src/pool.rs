//! The packet buffer pool over the shared region.
//!
//! [`PacketPool`] hands out buffer *indices* (`u32`) into the region's buffer array.
//! Free indices live in the region's lock-free MPMC free ring
//! ([`crate::mpmc::MpmcRing`]), so any process that maps the region can
//! allocate and free. Each switch or VM thread should allocate through its own
//! [`PoolCache`] (DPDK mempool's per-lcore cache): a local array that refills from and
//! flushes to the free ring in bursts, so the shared ring's cache lines are touched once
//! per burst rather than once per packet.
//!
//! Buffers are reference counted for mirroring: [`PacketPool::clone_ref`] adds a
//! reference, [`PacketPool::free`] drops one and returns the buffer to the pool when the
//! last one goes. Ownership rule, which the `unsafe` accessors rely on: **whoever holds a
//! reference to an index owns that buffer**; while the refcount is 1 the holder may
//! write its bytes, while it is above 1 every holder may only read them, and nobody
//! touches an index they do not hold. Indices are handed between threads and processes
//! through rings, whose Release/Acquire pairs order the buffer's bytes with the index.
//!
//! Accounting: [`PacketPool::available`] counts the free ring plus every buffer parked
//! in a cache made through this process's pool handle (each cache stores its own count
//! on its own cache line, so threads' caches share nothing per packet), so once all
//! threads are idle `available() == capacity()` proves every buffer came back. Bad input (an out-of-range index, a double free) is an error, never
//! a panic or an out-of-bounds access. This module does not know what a packet is.

use std::fmt;
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::layout::{BufHeader, BUF_DATA_ROOM, BUF_HEADER_BYTES, BUF_HEADROOM};
use crate::mpmc::MpmcRing;
use crate::region::{RegionError, SharedRegion};

/// `port` of a buffer that has not been given one.
pub const NO_PORT: u16 = u16::MAX;
/// Bytes of headroom plus data room: the most a buffer's data window can span.
pub const BUF_ROOM: usize = BUF_HEADROOM + BUF_DATA_ROOM;

/// What went wrong with a pool operation. Every variant is caller (or peer) misuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error("buffer index {index} is outside the pool (it has {capacity} buffers)")]
    BadIndex { index: u32, capacity: usize },
    #[error("buffer {0} is not allocated (double free, or a reference to a free buffer)")]
    NotAllocated(u32),
    #[error("data window {offset}+{len} does not fit in a buffer's {BUF_ROOM} bytes")]
    BadWindow { offset: usize, len: usize },
    #[error("buffer {index} has only {headroom} bytes of headroom, {wanted} requested")]
    NoHeadroom {
        index: u32,
        headroom: usize,
        wanted: usize,
    },
    #[error("the free ring is full: more indices freed than the pool has buffers")]
    FreeRingFull,
    #[error("cache length must be between 1 and {MAX_CACHE_LEN}, not {0}")]
    BadCacheLen(usize),
}

/// Largest per-core cache.
pub const MAX_CACHE_LEN: usize = 4096;

/// The buffer pool. Cheap to clone; every clone is the same pool.
#[derive(Clone)]
pub struct PacketPool {
    region: Arc<SharedRegion>,
    free: MpmcRing,
    buffers: NonNull<u8>,
    capacity: usize,
    /// How many buffers each of this process's [`PoolCache`]s holds, for
    /// [`available`](Self::available). Locked only when a cache is made or dropped and
    /// when counting, never on the data path.
    caches: Arc<Mutex<Vec<Arc<CachedCount>>>>,
}

/// Buffers parked in one [`PoolCache`]: written (a plain store) only by the thread that
/// owns the cache, read by whoever counts. On its own cache lines, so that caches of
/// different threads share nothing.
#[repr(align(128))]
#[derive(Debug, Default)]
struct CachedCount(AtomicUsize);

// SAFETY: the pool only reaches shared memory through atomics (free ring, buffer
// headers) or through the documented-unsafe byte accessors; the region is Send + Sync
// and kept alive by the Arc.
unsafe impl Send for PacketPool {}
// SAFETY: as above.
unsafe impl Sync for PacketPool {}

impl fmt::Debug for PacketPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PacketPool")
            .field("capacity", &self.capacity)
            .field("available", &self.available())
            .finish()
    }
}

impl PacketPool {
    /// The pool of `region`'s buffers. Any process that maps the region can open it.
    pub fn new(region: Arc<SharedRegion>) -> Result<Self, RegionError> {
        let free = region.free_ring()?;
        let buffers = region.at(region.layout().buffers_offset);
        let capacity = region.layout().config.buffer_count;
        Ok(Self {
            region,
            free,
            buffers,
            capacity,
            caches: Arc::new(Mutex::new(Vec::new())),
        })
    }

    /// The region the buffers live in.
    pub fn region(&self) -> &Arc<SharedRegion> {
        &self.region
    }

    /// Total buffers.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Buffers in the free ring or parked in a [`PoolCache`]. Exact when no thread is
    /// mid-operation; equal to [`capacity`](Self::capacity) when every buffer is back.
    pub fn available(&self) -> usize {
        let cached: usize = lock(&self.caches)
            .iter()
            .map(|c| c.0.load(Ordering::Acquire))
            .sum();
        self.free.len() + cached
    }

    /// A per-core cache holding up to `2 * cache_len` buffers, refilled and flushed
    /// `cache_len` at a time.
    pub fn cache(&self, cache_len: usize) -> Result<PoolCache, PoolError> {
        if !(1..=MAX_CACHE_LEN).contains(&cache_len) {
            return Err(PoolError::BadCacheLen(cache_len));
        }
        let count = Arc::new(CachedCount::default());
        lock(&self.caches).push(count.clone());
        Ok(PoolCache {
            pool: self.clone(),
            local: vec![0; 2 * cache_len].into_boxed_slice(),
            len: 0,
            cache_len,
            count,
        })
    }

    #[inline]
    fn check(&self, index: u32) -> Result<(), PoolError> {
        if (index as usize) < self.capacity {
            Ok(())
        } else {
            Err(PoolError::BadIndex {
                index,
                capacity: self.capacity,
            })
        }
    }

    #[inline]
    fn slot(&self, index: u32) -> Result<NonNull<u8>, PoolError> {
        self.check(index)?;
        // SAFETY: `index < capacity`, so the slot lies inside the buffer array.
        Ok(unsafe { self.buffers.add(index as usize * crate::layout::BUF_STRIDE) })
    }

    #[inline]
    fn header(&self, index: u32) -> Result<&BufHeader, PoolError> {
        // SAFETY: every slot starts with a BufHeader (all atomics, valid when zeroed),
        // 64-byte aligned because the buffer array and the stride are.
        Ok(unsafe { self.slot(index)?.cast::<BufHeader>().as_ref() })
    }

    /// Start loading buffer `index`'s header into this core's cache (a hint; nothing
    /// for an index out of range). A VM prefetches every header of a burst before it
    /// works on the first, so the misses on lines the switch's core last wrote overlap
    /// instead of stalling one after another.
    #[inline]
    pub fn prefetch_header(&self, index: u32) {
        let Ok(slot) = self.slot(index) else {
            return;
        };
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a prefetch is a hint that never faults, and the address is inside the
        // mapped region anyway.
        unsafe {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            _mm_prefetch::<_MM_HINT_T0>(slot.as_ptr().cast::<i8>());
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = slot;
    }

    /// Reset a just-allocated buffer: one reference, empty data after the headroom.
    #[inline]
    fn reset(&self, index: u32) {
        if let Ok(h) = self.header(index) {
            h.refcount.store(1, Ordering::Relaxed);
            h.data_offset.store(BUF_HEADROOM as u16, Ordering::Relaxed);
            h.data_len.store(0, Ordering::Relaxed);
            h.port.store(NO_PORT, Ordering::Relaxed);
        }
    }

    /// Allocate one buffer straight from the free ring (no cache).
    #[inline]
    pub fn alloc(&self) -> Option<u32> {
        let mut one = [0];
        (self.alloc_burst(&mut one) == 1).then_some(one[0])
    }

    /// Allocate up to `out.len()` buffers straight from the free ring; returns how many.
    #[inline]
    pub fn alloc_burst(&self, out: &mut [u32]) -> usize {
        let n = self.free.dequeue_burst(out);
        for &index in &out[..n] {
            self.reset(index);
        }
        n
    }

    /// Add a reference to an allocated buffer (for mirroring it to another port). The
    /// caller holds a reference (the ownership rule), so the count is at least 1 and
    /// cannot reach 0 meanwhile: one `fetch_add`, no compare-and-swap loop. A caller that
    /// breaks the rule and clones a free buffer gets [`PoolError::NotAllocated`] and the
    /// count is put back (racing an allocation of that very buffer, the misuse can still
    /// lose it, never reach out of bounds). Counts near `u32::MAX`, which no number of
    /// holders reaches, are refused the same way rather than wrapped.
    #[inline]
    pub fn clone_ref(&self, index: u32) -> Result<(), PoolError> {
        let refcount = &self.header(index)?.refcount;
        let previous = refcount.fetch_add(1, Ordering::Relaxed);
        if previous == 0 || previous >= u32::MAX / 2 {
            refcount.fetch_sub(1, Ordering::Relaxed);
            return Err(PoolError::NotAllocated(index));
        }
        Ok(())
    }

    /// References currently held on a buffer (0: it is free).
    #[inline]
    pub fn refcount(&self, index: u32) -> Result<u32, PoolError> {
        Ok(self.header(index)?.refcount.load(Ordering::Acquire))
    }

    /// Drop one reference; `Ok(true)` when it was the last, so the buffer must go back.
    #[inline]
    fn release(&self, index: u32) -> Result<bool, PoolError> {
        let refcount = &self.header(index)?.refcount;
        // The only holder (the common case: no mirror) is alone with the count: no other
        // thread may clone or free a buffer it does not hold, so a plain store ends it,
        // without a locked instruction (DPDK's `rte_pktmbuf_prefree_seg` does the same).
        // Acquire pairs with the Release decrements of earlier holders, as the fence
        // below does.
        if refcount.load(Ordering::Acquire) == 1 {
            refcount.store(0, Ordering::Relaxed);
            return Ok(true);
        }
        let previous = refcount
            // Release: our reads/writes of the buffer happen before whoever frees it last.
            .fetch_update(Ordering::Release, Ordering::Relaxed, |c| c.checked_sub(1))
            .map_err(|_| PoolError::NotAllocated(index))?;
        if previous == 1 {
            // Pairs with the other holders' Release decrements.
            fence(Ordering::Acquire);
            return Ok(true);
        }
        Ok(false)
    }

    /// Drop one reference to `index`; the last one returns the buffer to the free ring.
    #[inline]
    pub fn free(&self, index: u32) -> Result<(), PoolError> {
        if self.release(index)? && self.free.enqueue_burst(&[index]) == 0 {
            return Err(PoolError::FreeRingFull);
        }
        Ok(())
    }

    /// [`free`](Self::free) every index; bad ones are skipped and the first error returned.
    #[inline]
    pub fn free_burst(&self, indices: &[u32]) -> Result<(), PoolError> {
        let mut first_error = None;
        let mut batch = [0u32; 64];
        let mut len = 0;
        for &index in indices {
            match self.release(index) {
                Ok(true) => {
                    batch[len] = index;
                    len += 1;
                    if len == batch.len() {
                        self.return_to_ring(&batch[..len], &mut first_error);
                        len = 0;
                    }
                }
                Ok(false) => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        self.return_to_ring(&batch[..len], &mut first_error);
        first_error.map_or(Ok(()), Err)
    }

    fn return_to_ring(&self, indices: &[u32], first_error: &mut Option<PoolError>) {
        if self.free.enqueue_burst(indices) < indices.len() {
            first_error.get_or_insert(PoolError::FreeRingFull);
        }
    }

    /// The port recorded in the buffer (or [`NO_PORT`]).
    #[inline]
    pub fn port(&self, index: u32) -> Result<u16, PoolError> {
        Ok(self.header(index)?.port.load(Ordering::Relaxed))
    }

    /// Record the port the packet arrived on or leaves by.
    #[inline]
    pub fn set_port(&self, index: u32, port: u16) -> Result<(), PoolError> {
        self.header(index)?.port.store(port, Ordering::Relaxed);
        Ok(())
    }

    /// The buffer's content tag (see [`BufHeader::content_tag`]); 0: unknown.
    #[inline]
    pub fn content_tag(&self, index: u32) -> Result<u32, PoolError> {
        Ok(self.header(index)?.content_tag.load(Ordering::Relaxed))
    }

    /// Name what the data room holds, right after writing it (the caller holds the only
    /// reference).
    pub fn set_content_tag(&self, index: u32, tag: u32) -> Result<(), PoolError> {
        self.header(index)?
            .content_tag
            .store(tag, Ordering::Relaxed);
        Ok(())
    }

    /// The bytes changed: whoever writes through [`buf_data_mut`](Self::buf_data_mut)
    /// calls this ([`write_data`](Self::write_data) does it itself).
    #[inline]
    pub fn forget_content(&self, index: u32) -> Result<(), PoolError> {
        self.set_content_tag(index, 0)
    }

    /// The data window as (offset from the start of the headroom, length), clamped so a
    /// header scribbled on by a peer still yields an in-bounds window.
    #[inline]
    pub fn data_window(&self, index: u32) -> Result<(usize, usize), PoolError> {
        let h = self.header(index)?;
        let offset = (h.data_offset.load(Ordering::Relaxed) as usize).min(BUF_ROOM);
        let len = (h.data_len.load(Ordering::Relaxed) as usize).min(BUF_ROOM - offset);
        Ok((offset, len))
    }

    /// Whether the header's data window lies inside the buffer's room as written, before
    /// [`data_window`](Self::data_window) clamps it: a peer that wrote one past the buffer
    /// handed back garbage, which the switch refuses rather than sends on clamped.
    #[inline]
    pub fn data_window_is_sound(&self, index: u32) -> bool {
        self.header(index).is_ok_and(|h| {
            let offset = h.data_offset.load(Ordering::Relaxed) as usize;
            let len = h.data_len.load(Ordering::Relaxed) as usize;
            offset <= BUF_ROOM && len <= BUF_ROOM - offset
        })
    }

    /// Set the data window: `len` bytes starting `offset` bytes into the buffer's room
    /// (the headroom is `0..BUF_HEADROOM`). The bytes themselves are not touched.
    pub fn set_data(&self, index: u32, offset: usize, len: usize) -> Result<(), PoolError> {
        if offset > BUF_ROOM || len > BUF_ROOM - offset {
            return Err(PoolError::BadWindow { offset, len });
        }
        let h = self.header(index)?;
        // Both fit in u16: BUF_ROOM < 65536.
        h.data_offset.store(offset as u16, Ordering::Relaxed);
        h.data_len.store(len as u16, Ordering::Relaxed);
        Ok(())
    }

    /// Grow the data window `bytes` towards the front, into the headroom (for pushing
    /// an encapsulation header).
    pub fn prepend(&self, index: u32, bytes: usize) -> Result<(), PoolError> {
        let (offset, len) = self.data_window(index)?;
        if bytes > offset {
            return Err(PoolError::NoHeadroom {
                index,
                headroom: offset,
                wanted: bytes,
            });
        }
        self.set_data(index, offset - bytes, len + bytes)
    }

    #[inline]
    fn room(&self, index: u32) -> Result<NonNull<u8>, PoolError> {
        // SAFETY: the room follows the slot's header inside the slot.
        Ok(unsafe { self.slot(index)?.add(BUF_HEADER_BYTES) })
    }

    /// The buffer's data window.
    ///
    /// # Safety
    /// The caller holds a reference to `index` (allocated it, or received it through a
    /// ring or [`clone_ref`](Self::clone_ref)), keeps holding it for the returned
    /// lifetime, and nobody writes the buffer meanwhile (no [`buf_data_mut`] on it).
    ///
    /// [`buf_data_mut`]: Self::buf_data_mut
    #[inline]
    pub unsafe fn buf_data(&self, index: u32) -> Result<&[u8], PoolError> {
        let (offset, len) = self.data_window(index)?;
        let room = self.room(index)?;
        // SAFETY: `offset + len <= BUF_ROOM` (clamped), so the slice is inside this
        // buffer's room; the caller guarantees no concurrent writer.
        Ok(unsafe { std::slice::from_raw_parts(room.as_ptr().add(offset), len) })
    }

    /// The buffer's data window, writable.
    ///
    /// # Safety
    /// The caller holds the *only* reference to `index` (refcount 1, not shared with a
    /// mirror), keeps it for the returned lifetime, and takes no other slice of the same
    /// buffer meanwhile. A caller that writes calls [`forget_content`](Self::forget_content).
    // The buffer lives in shared memory, not in `self`: exclusivity is the caller's
    // contract (as with `UnsafeCell::get`), which is why this is an `unsafe fn`.
    #[allow(clippy::mut_from_ref)]
    #[inline]
    pub unsafe fn buf_data_mut(&self, index: u32) -> Result<&mut [u8], PoolError> {
        let (offset, len) = self.data_window(index)?;
        let room = self.room(index)?;
        // SAFETY: in bounds as in `buf_data`; the caller guarantees exclusivity.
        Ok(unsafe { std::slice::from_raw_parts_mut(room.as_ptr().add(offset), len) })
    }

    /// Copy `bytes` into the buffer right after the headroom and make them its data.
    ///
    /// # Safety
    /// As for [`buf_data_mut`](Self::buf_data_mut).
    pub unsafe fn write_data(&self, index: u32, bytes: &[u8]) -> Result<(), PoolError> {
        self.set_data(index, BUF_HEADROOM, bytes.len())?;
        self.forget_content(index)?;
        // SAFETY: forwarded from our caller.
        unsafe { self.buf_data_mut(index) }?.copy_from_slice(bytes);
        Ok(())
    }
}

/// A per-core cache in front of the pool's free ring. `Send`, not `Clone` or `Sync`:
/// one per thread. Dropping it flushes every cached buffer back to the free ring.
pub struct PoolCache {
    pool: PacketPool,
    local: Box<[u32]>,
    len: usize,
    cache_len: usize,
    /// `len` as the pool counts it, stored after every operation.
    count: Arc<CachedCount>,
}

/// The registry of cache counts, whether or not a thread panicked holding it (it is a
/// plain list; a half-done push or retain leaves it valid).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl fmt::Debug for PoolCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolCache")
            .field("cache_len", &self.cache_len)
            .field("cached", &self.len)
            .finish()
    }
}

impl PoolCache {
    /// The pool this cache draws from.
    #[inline]
    pub fn pool(&self) -> &PacketPool {
        &self.pool
    }

    /// Buffers parked in this cache.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the cache holds no buffers.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Pull buffers from the free ring until at least `needed` (and ideally
    /// `cache_len + needed`) are cached.
    fn refill(&mut self, needed: usize) {
        let want = (self.cache_len + needed).min(self.local.len()) - self.len;
        let got = self
            .pool
            .free
            .dequeue_burst(&mut self.local[self.len..self.len + want]);
        self.len += got;
        self.publish();
    }

    /// Tell the pool how many buffers this cache holds (a store to its own line).
    #[inline]
    fn publish(&self) {
        self.count.0.store(self.len, Ordering::Release);
    }

    /// Return the oldest `count` cached buffers to the free ring.
    fn flush(&mut self, count: usize) {
        let sent = self.pool.free.enqueue_burst(&self.local[..count]);
        self.local.copy_within(sent..self.len, 0);
        self.len -= sent;
        self.publish();
    }

    /// Allocate up to `out.len()` buffers; returns how many (fewer only when the pool
    /// runs dry).
    #[inline]
    pub fn alloc_burst(&mut self, out: &mut [u32]) -> usize {
        let mut done = 0;
        while done < out.len() {
            let chunk = (out.len() - done).min(self.cache_len);
            if self.len < chunk {
                self.refill(chunk);
            }
            let take = chunk.min(self.len);
            if take == 0 {
                break;
            }
            // Hand out the most recently cached (cache-warm) buffers first.
            out[done..done + take].copy_from_slice(&self.local[self.len - take..self.len]);
            self.len -= take;
            self.publish();
            for &index in &out[done..done + take] {
                self.pool.reset(index);
            }
            done += take;
        }
        done
    }

    /// Allocate one buffer.
    #[inline]
    pub fn alloc(&mut self) -> Option<u32> {
        let mut one = [0];
        (self.alloc_burst(&mut one) == 1).then_some(one[0])
    }

    /// Drop one reference to each index; buffers whose last reference this was go into
    /// the cache (flushing the oldest to the free ring when it is full). Bad indices are
    /// skipped and the first error returned.
    #[inline]
    pub fn free_burst(&mut self, indices: &[u32]) -> Result<(), PoolError> {
        let mut first_error = None;
        for &index in indices {
            match self.pool.release(index) {
                Ok(true) => {
                    if self.len == self.local.len() {
                        self.flush(self.cache_len);
                        if self.len == self.local.len() {
                            first_error.get_or_insert(PoolError::FreeRingFull);
                            continue;
                        }
                    }
                    self.local[self.len] = index;
                    self.len += 1;
                }
                Ok(false) => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        self.publish();
        first_error.map_or(Ok(()), Err)
    }

    /// Drop one reference to `index`.
    #[inline]
    pub fn free(&mut self, index: u32) -> Result<(), PoolError> {
        self.free_burst(&[index])
    }
}

impl Drop for PoolCache {
    fn drop(&mut self) {
        self.flush(self.len);
        // Anything the ring could not take (it cannot be full: it has room for every
        // buffer) would stay counted here; with len 0 the entry can go.
        if self.len == 0 {
            lock(&self.pool.caches).retain(|c| !Arc::ptr_eq(c, &self.count));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::RegionConfig;
    use crate::region::HugepagePolicy;

    fn pool(buffer_count: usize) -> PacketPool {
        let config = RegionConfig {
            buffer_count,
            ring_count: 1,
            ring_slots: 16,
            counter_count: 0,
        };
        PacketPool::new(SharedRegion::create(config, HugepagePolicy::Off).unwrap()).unwrap()
    }

    #[test]
    fn allocating_everything_then_freeing_everything_restores_the_exact_count() {
        let pool = pool(100);
        let mut all = vec![0; 150];
        assert_eq!(pool.alloc_burst(&mut all), 100);
        assert_eq!(pool.available(), 0);
        assert_eq!(pool.alloc(), None);
        let mut sorted = all[..100].to_vec();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        pool.free_burst(&all[..100]).unwrap();
        assert_eq!(pool.available(), 100);
    }

    #[test]
    fn a_cache_counts_its_buffers_as_available_and_returns_them_on_drop() {
        let pool = pool(1000);
        let mut cache = pool.cache(32).unwrap();
        let mut all = vec![0; 1000];
        assert_eq!(cache.alloc_burst(&mut all), 1000);
        assert_eq!(pool.available(), 0);
        assert_eq!(cache.alloc(), None);
        cache.free_burst(&all[..10]).unwrap();
        assert_eq!(cache.len(), 10);
        assert_eq!(pool.available(), 10);
        cache.free_burst(&all[10..]).unwrap();
        assert!(cache.len() <= 64);
        assert_eq!(pool.available(), 1000);
        let mut some = [0; 40];
        assert_eq!(cache.alloc_burst(&mut some), 40);
        assert_eq!(pool.available(), 960);
        cache.free_burst(&some).unwrap();
        drop(cache);
        assert_eq!(pool.available(), 1000);
        assert_eq!(pool.free.len(), 1000);
    }

    #[test]
    fn a_mirrored_buffer_returns_to_the_pool_only_after_the_last_free() {
        let pool = pool(4);
        let index = pool.alloc().unwrap();
        pool.clone_ref(index).unwrap();
        pool.clone_ref(index).unwrap();
        assert_eq!(pool.refcount(index), Ok(3));
        pool.free(index).unwrap();
        pool.free(index).unwrap();
        assert_eq!(pool.available(), 3);
        pool.free(index).unwrap();
        assert_eq!(pool.available(), 4);
        assert_eq!(pool.refcount(index), Ok(0));
    }

    #[test]
    fn double_frees_and_foreign_indices_are_errors_not_corruption() {
        let pool = pool(4);
        let index = pool.alloc().unwrap();
        pool.free(index).unwrap();
        assert_eq!(pool.free(index), Err(PoolError::NotAllocated(index)));
        assert_eq!(pool.clone_ref(index), Err(PoolError::NotAllocated(index)));
        assert_eq!(
            pool.free(4),
            Err(PoolError::BadIndex {
                index: 4,
                capacity: 4
            })
        );
        let mut cache = pool.cache(2).unwrap();
        let a = cache.alloc().unwrap();
        assert_eq!(
            cache.free_burst(&[a, 99, a]),
            Err(PoolError::BadIndex {
                index: 99,
                capacity: 4
            })
        );
        drop(cache);
        assert_eq!(pool.available(), 4);
        assert!(matches!(pool.cache(0), Err(PoolError::BadCacheLen(0))));
    }

    #[test]
    fn data_windows_stay_inside_the_buffer_and_prepend_uses_the_headroom() {
        let pool = pool(2);
        let index = pool.alloc().unwrap();
        assert_eq!(pool.data_window(index), Ok((BUF_HEADROOM, 0)));
        assert_eq!(pool.port(index), Ok(NO_PORT));
        // SAFETY: we allocated `index` and hold its only reference.
        unsafe { pool.write_data(index, b"payload").unwrap() };
        pool.prepend(index, 4).unwrap();
        // SAFETY: as above.
        unsafe { pool.buf_data_mut(index).unwrap()[..4].copy_from_slice(b"vlan") };
        // SAFETY: as above.
        assert_eq!(unsafe { pool.buf_data(index) }.unwrap(), b"vlanpayload");
        assert_eq!(
            pool.prepend(index, BUF_HEADROOM),
            Err(PoolError::NoHeadroom {
                index,
                headroom: BUF_HEADROOM - 4,
                wanted: BUF_HEADROOM
            })
        );
        assert!(pool.set_data(index, 100, BUF_ROOM).is_err());
        pool.set_data(index, 0, BUF_ROOM).unwrap();
        // SAFETY: as above.
        assert_eq!(unsafe { pool.buf_data(index) }.unwrap().len(), BUF_ROOM);
        // A peer scribbling an impossible window yields a clamped, in-bounds one.
        let h = pool.header(index).unwrap();
        h.data_offset.store(60_000, Ordering::Relaxed);
        h.data_len.store(60_000, Ordering::Relaxed);
        assert_eq!(pool.data_window(index), Ok((BUF_ROOM, 0)));
    }

    #[test]
    fn threads_with_caches_allocate_and_free_concurrently_without_loss_or_double_allocation() {
        use std::sync::atomic::AtomicBool;
        const BUFFERS: usize = 96; // small enough that caches and bursts run the pool dry
        const ROUNDS: usize = 3_000;
        let pool = pool(BUFFERS);
        let owned: Arc<Vec<AtomicBool>> =
            Arc::new((0..BUFFERS).map(|_| AtomicBool::new(false)).collect());
        let threads: Vec<_> = (0..4u8)
            .map(|t| {
                let pool = pool.clone();
                let owned = owned.clone();
                std::thread::spawn(move || {
                    let mut cache = pool.cache(16).unwrap();
                    let mut burst = [0u32; 24];
                    for round in 0..ROUNDS {
                        let want = 1 + (round + t as usize) % burst.len();
                        let n = cache.alloc_burst(&mut burst[..want]);
                        for &i in &burst[..n] {
                            assert!(
                                !owned[i as usize].swap(true, Ordering::AcqRel),
                                "{i} handed out twice"
                            );
                            // SAFETY: we just allocated `i` and hold its only reference.
                            unsafe { pool.write_data(i, &[t; 8]).unwrap() };
                        }
                        for &i in &burst[..n] {
                            // SAFETY: as above.
                            assert_eq!(unsafe { pool.buf_data(i) }.unwrap(), &[t; 8]);
                            owned[i as usize].store(false, Ordering::Release);
                        }
                        cache.free_burst(&burst[..n]).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(pool.available(), BUFFERS);
    }
}
