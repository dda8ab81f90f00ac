//! Packet buffer pools ([`Mempool`], DPDK's `rte_pktmbuf_pool_create`) and the buffers
//! themselves ([`Mbuf`]).
//!
//! An [`Mbuf`] owns one DPDK packet buffer and returns it to its pool on drop; handing it to
//! [`crate::TxQueue::tx_burst`] passes ownership to the driver. A pool is freed when its last
//! [`Mempool`] handle goes and no buffer is out; with buffers still out (held by the program
//! or a driver's rings) it is leaked instead, so that no buffer outlives its memory.

use std::ffi::CString;
use std::ptr::NonNull;
use std::sync::Arc;

use crate::eal::{call_error, errno};
use crate::{ffi, Eal, Error, ExternalBuffer, ExternalFree, Result};

/// The `rte_mbuf` fields [`Mbuf`] reads and writes inline, named as in C, with their
/// offsets in bindgen's layout, in the order of the shim's `enum netvm_mbuf_field`; the
/// struct's size last.
fn rust_mbuf_layout() -> [(&'static str, usize); 18] {
    use std::mem::offset_of;
    type M = ffi::rte_mbuf;
    [
        ("buf_addr", offset_of!(M, buf_addr)),
        ("buf_iova", offset_of!(M, buf_iova)),
        ("data_off", offset_of!(M, data_off)),
        ("refcnt", offset_of!(M, refcnt)),
        ("nb_segs", offset_of!(M, nb_segs)),
        ("port", offset_of!(M, port)),
        ("ol_flags", offset_of!(M, ol_flags)),
        ("packet_type", offset_of!(M, __bindgen_anon_1.packet_type)),
        ("pkt_len", offset_of!(M, pkt_len)),
        ("data_len", offset_of!(M, data_len)),
        ("vlan_tci", offset_of!(M, vlan_tci)),
        ("vlan_tci_outer", offset_of!(M, vlan_tci_outer)),
        ("buf_len", offset_of!(M, buf_len)),
        ("pool", offset_of!(M, pool)),
        ("next", offset_of!(M, next)),
        ("tx_offload", offset_of!(M, __bindgen_anon_3.tx_offload)),
        ("shinfo", offset_of!(M, shinfo)),
        ("sizeof(struct rte_mbuf)", std::mem::size_of::<M>()),
    ]
}

/// Checks that the C compiler, with DPDK's flags, lays out `struct rte_mbuf` as the Rust
/// bindings do, field by field: [`Mbuf`]'s accessors read and write those fields inline,
/// without a call into DPDK. [`crate::eal::init`] runs it first, so a DPDK upgraded under
/// a built netvm is refused with [`Error::MbufLayout`] instead of misread.
pub fn check_mbuf_layout() -> Result<()> {
    let rust = rust_mbuf_layout();
    let mut c = [u64::MAX; 18];
    // SAFETY: `c` has room for the 18 values asked for; the shim writes at most that many.
    let fields = unsafe { ffi::netvm_rte_mbuf_layout(c.as_mut_ptr(), c.len() as u32) };
    if fields as usize != rust.len() {
        return Err(Error::MbufLayout {
            field: "number of fields checked",
            c: fields.into(),
            rust: rust.len() as u64,
        });
    }
    // SAFETY: returns a constant.
    let external = unsafe { ffi::netvm_rte_mbuf_f_external() };
    if external != ffi::RTE_MBUF_F_EXTERNAL {
        return Err(Error::MbufLayout {
            field: "RTE_MBUF_F_EXTERNAL",
            c: external,
            rust: ffi::RTE_MBUF_F_EXTERNAL,
        });
    }
    for ((field, rust), c) in rust.into_iter().zip(c) {
        if rust as u64 != c {
            return Err(Error::MbufLayout {
                field,
                c,
                rust: rust as u64,
            });
        }
    }
    Ok(())
}

/// A pool of packet buffers, cheap to clone (the handles share one DPDK mempool).
#[derive(Debug, Clone)]
pub struct Mempool {
    inner: Arc<PoolHandle>,
}

#[derive(Debug)]
struct PoolHandle(NonNull<ffi::rte_mempool>);

// SAFETY: DPDK mempools are multi-producer/multi-consumer (the default ring ops); get and put
// are safe from any thread, and the per-lcore caches are only used by EAL threads, each its own.
unsafe impl Send for PoolHandle {}
// SAFETY: as above; every method takes the pool by shared reference and DPDK synchronises.
unsafe impl Sync for PoolHandle {}

impl Drop for PoolHandle {
    fn drop(&mut self) {
        // SAFETY: the pointer came from rte_pktmbuf_pool_create and is still live (this is the
        // last handle); in_use_count only reads counters.
        let in_use = unsafe { ffi::rte_mempool_in_use_count(self.0.as_ptr()) };
        if in_use == 0 {
            // SAFETY: no buffer is out, so no live Mbuf or driver ring points into the pool.
            unsafe { ffi::rte_mempool_free(self.0.as_ptr()) };
        }
    }
}

/// A mempool name as DPDK takes it.
fn pool_name(name: &str) -> Result<CString> {
    CString::new(name).map_err(|_| Error::Nul {
        what: "a mempool name",
        value: name.into(),
    })
}

fn socket_or_any(socket_id: Option<u32>) -> i32 {
    socket_id.map_or(ffi::SOCKET_ID_ANY, |s| s as i32)
}

impl Mempool {
    /// Wraps what a pool-creating `call` returned (NULL: its `rte_errno`).
    fn created(raw: *mut ffi::rte_mempool, call: &'static str) -> Result<Mempool> {
        let raw = NonNull::new(raw).ok_or_else(|| call_error(call, errno()))?;
        Ok(Mempool {
            inner: Arc::new(PoolHandle(raw)),
        })
    }

    /// Creates a pool of `mbufs` buffers of `data_room_bytes` each (including the
    /// `RTE_PKTMBUF_HEADROOM` of 128 bytes; `ffi::RTE_MBUF_DEFAULT_BUF_SIZE` fits a 1518-byte
    /// frame), with a per-lcore cache of `cache_mbufs`, on NUMA node `socket_id` (`None`: any).
    /// `name` must be unique in the process (and across processes sharing a file prefix).
    pub fn pktmbuf(
        _eal: &Eal,
        name: &str,
        mbufs: u32,
        cache_mbufs: u32,
        data_room_bytes: u16,
        socket_id: Option<u32>,
    ) -> Result<Mempool> {
        let c_name = pool_name(name)?;
        let socket = socket_or_any(socket_id);
        // SAFETY: c_name is a valid C string (DPDK copies it); the EAL is initialised.
        let raw = unsafe {
            ffi::rte_pktmbuf_pool_create(
                c_name.as_ptr(),
                mbufs,
                cache_mbufs,
                0,
                data_room_bytes,
                socket,
            )
        };
        Mempool::created(raw, "rte_pktmbuf_pool_create")
    }

    /// A pool of `buffers.len()` mbufs whose data rooms are `buffers` — memory DPDK does not
    /// own (DPDK's "pinned external buffer" pool, `rte_pktmbuf_pool_create_extbuf`). Each
    /// mbuf stays attached to the buffer it points at; [`Mbuf::set_buffer`] re-points it.
    /// The mbuf headers themselves live in DPDK memory.
    ///
    /// # Safety
    /// Every buffer is `buf_bytes` long, writable, not otherwise used while an mbuf points
    /// at it, and outlives the pool and every mbuf taken from it; `iova` is the buffer's IO
    /// address as the EAL's IOVA mode defines it (or `RTE_BAD_IOVA` for devices that do no
    /// DMA).
    pub unsafe fn pinned_external(
        _eal: &Eal,
        name: &str,
        buffers: &[ExternalBuffer],
        buf_bytes: u16,
        cache_mbufs: u32,
        socket_id: Option<u32>,
    ) -> Result<Mempool> {
        let c_name = pool_name(name)?;
        let count = u32::try_from(buffers.len()).map_err(|_| Error::Config {
            port: 0,
            message: format!(
                "{} external buffers is too many for one pool",
                buffers.len()
            ),
        })?;
        let mut areas: Vec<ffi::rte_pktmbuf_extmem> = buffers
            .iter()
            .map(|b| ffi::rte_pktmbuf_extmem {
                buf_ptr: b.addr.cast(),
                buf_iova: b.iova,
                buf_len: buf_bytes.into(),
                elt_size: buf_bytes,
            })
            .collect();
        let socket = socket_or_any(socket_id);
        // SAFETY: c_name is a valid C string; `areas` holds `count` descriptors of buffers
        // the caller promises are valid for the pool's life; DPDK copies the descriptors.
        let raw = unsafe {
            ffi::rte_pktmbuf_pool_create_extbuf(
                c_name.as_ptr(),
                count,
                cache_mbufs,
                0,
                buf_bytes,
                socket,
                areas.as_mut_ptr(),
                count,
            )
        };
        Mempool::created(raw, "rte_pktmbuf_pool_create_extbuf")
    }

    /// A pool of `mbufs` mbufs with no data room of their own, each with room for the shared
    /// info of one external buffer: for [`Mbuf::attach_external`].
    pub fn for_attached(
        _eal: &Eal,
        name: &str,
        mbufs: u32,
        cache_mbufs: u32,
        socket_id: Option<u32>,
    ) -> Result<Mempool> {
        let c_name = pool_name(name)?;
        let socket = socket_or_any(socket_id);
        // SAFETY: returns a constant.
        let priv_bytes = unsafe { ffi::netvm_rte_mbuf_ext_shinfo_priv_bytes() };
        // SAFETY: c_name is a valid C string (DPDK copies it); the EAL is initialised.
        let raw = unsafe {
            ffi::rte_pktmbuf_pool_create(c_name.as_ptr(), mbufs, cache_mbufs, priv_bytes, 0, socket)
        };
        Mempool::created(raw, "rte_pktmbuf_pool_create")
    }

    /// Appends `count` buffers to `out`, all or none (`false` when the pool has fewer).
    #[inline]
    pub fn alloc_bulk(&self, out: &mut Vec<Mbuf>, count: usize) -> bool {
        let Ok(n) = u32::try_from(count) else {
            return false;
        };
        if n == 0 {
            return true;
        }
        out.reserve(count);
        let len = out.len();
        // SAFETY: the spare capacity holds `count` slots; Mbuf is a transparent
        // NonNull<rte_mbuf>, and on success DPDK wrote `count` live mbufs there, which we
        // then own. On failure it wrote nothing we keep.
        unsafe {
            let slots = out.as_mut_ptr().add(len).cast::<*mut ffi::rte_mbuf>();
            if ffi::netvm_rte_pktmbuf_alloc_bulk(self.as_ptr(), slots, n) != 0 {
                return false;
            }
            out.set_len(len + count);
        }
        true
    }

    /// Whether `mbuf` came from this pool.
    #[inline]
    pub fn owns(&self, mbuf: &Mbuf) -> bool {
        mbuf.header().pool == self.as_ptr()
    }

    /// One buffer, empty (length 0, default headroom), or `None` when the pool is exhausted.
    pub fn alloc(&self) -> Option<Mbuf> {
        // SAFETY: the pool is live while `self` is.
        let raw = unsafe { ffi::netvm_rte_pktmbuf_alloc(self.as_ptr()) };
        NonNull::new(raw).map(Mbuf)
    }

    /// Buffers free in the pool (including per-lcore caches).
    pub fn available(&self) -> u32 {
        // SAFETY: the pool is live; reads counters.
        unsafe { ffi::rte_mempool_avail_count(self.as_ptr()) }
    }

    /// Buffers taken from the pool and not yet returned.
    pub fn in_use(&self) -> u32 {
        // SAFETY: the pool is live; reads counters.
        unsafe { ffi::rte_mempool_in_use_count(self.as_ptr()) }
    }

    /// Returns the objects parked in every lcore's cache of this pool to its ring, so that
    /// [`alloc_bulk`](Self::alloc_bulk) on any one thread can take all of
    /// [`available`](Self::available) (which counts the caches; a thread reaches only its
    /// own). For taking back every buffer at the end, after the threads that used the pool
    /// have stopped.
    ///
    /// # Safety
    /// No thread uses the pool during the call (no get, put, burst or device on it).
    pub unsafe fn flush_caches(&self) {
        // SAFETY: the pool is live; the caller promises no concurrent user of its caches.
        unsafe { ffi::netvm_rte_mempool_flush_caches(self.as_ptr()) }
    }

    /// The DPDK mempool, for calls this layer does not wrap. Valid while any handle lives.
    pub fn as_ptr(&self) -> *mut ffi::rte_mempool {
        self.inner.0.as_ptr()
    }
}

/// One packet buffer, owned. Single-segment buffers are the norm for netvm's pools (the data
/// room fits a frame); [`Mbuf::data`] is the first segment.
#[derive(Debug)]
#[repr(transparent)]
pub struct Mbuf(NonNull<ffi::rte_mbuf>);

// SAFETY: an Mbuf is the only owner of its buffer; DPDK buffers may move between threads and
// are freed to a thread-safe pool.
unsafe impl Send for Mbuf {}
// SAFETY: shared access only reads the buffer's header and data.
unsafe impl Sync for Mbuf {}

impl Mbuf {
    /// The mbuf header. The fast-path accessors below read and write its plain fields
    /// directly (bindgen's layout tests pin their offsets), so they inline.
    #[inline]
    fn header(&self) -> &ffi::rte_mbuf {
        // SAFETY: self owns a live mbuf; shared access only reads it.
        unsafe { self.0.as_ref() }
    }

    /// Length of the whole packet (all segments).
    #[inline]
    pub fn len(&self) -> usize {
        self.header().pkt_len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of segments (1 for everything this crate allocates).
    #[inline]
    pub fn segments(&self) -> u16 {
        self.header().nb_segs
    }

    /// The bytes of the first segment.
    pub fn data(&self) -> &[u8] {
        // SAFETY: mtod points to data_len initialised bytes of the first segment, owned by
        // self and not mutated while the shared borrow lives.
        unsafe {
            let len = ffi::netvm_rte_pktmbuf_data_len(self.0.as_ptr()) as usize;
            std::slice::from_raw_parts(
                ffi::netvm_rte_pktmbuf_mtod(self.0.as_ptr()).cast::<u8>(),
                len,
            )
        }
    }

    /// The bytes of the first segment, writable in place.
    pub fn data_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `data`, and `&mut self` makes this borrow exclusive.
        unsafe {
            let len = ffi::netvm_rte_pktmbuf_data_len(self.0.as_ptr()) as usize;
            std::slice::from_raw_parts_mut(
                ffi::netvm_rte_pktmbuf_mtod(self.0.as_ptr()).cast::<u8>(),
                len,
            )
        }
    }

    /// Grows the packet by `bytes` at the tail and returns the new bytes (zeroed), or `None`
    /// when the last segment has no room for them.
    pub fn append(&mut self, bytes: u16) -> Option<&mut [u8]> {
        // SAFETY: self owns a live mbuf; append checks tailroom and returns NULL without it.
        let tail = unsafe { ffi::netvm_rte_pktmbuf_append(self.0.as_ptr(), bytes) };
        let tail = NonNull::new(tail.cast::<u8>())?;
        // SAFETY: append returned `bytes` writable bytes inside the buffer owned by self; they
        // may be uninitialised, so zero them before handing out a slice.
        unsafe {
            std::ptr::write_bytes(tail.as_ptr(), 0, bytes as usize);
            Some(std::slice::from_raw_parts_mut(
                tail.as_ptr(),
                bytes as usize,
            ))
        }
    }

    /// Appends a copy of `bytes`; `false` (and no change) when they do not fit.
    pub fn extend_from_slice(&mut self, bytes: &[u8]) -> bool {
        let Ok(n) = u16::try_from(bytes.len()) else {
            return false;
        };
        match self.append(n) {
            Some(tail) => {
                tail.copy_from_slice(bytes);
                true
            }
            None => false,
        }
    }

    /// Bytes free before the data (for prepending headers).
    pub fn headroom(&self) -> u16 {
        // SAFETY: self owns a live mbuf.
        unsafe { ffi::netvm_rte_pktmbuf_headroom(self.0.as_ptr()) }
    }

    /// Bytes free after the data in the last segment.
    pub fn tailroom(&self) -> u16 {
        // SAFETY: self owns a live mbuf.
        unsafe { ffi::netvm_rte_pktmbuf_tailroom(self.0.as_ptr()) }
    }

    /// IO address of the first data byte (what a device DMAs to or from).
    pub fn iova(&self) -> u64 {
        // SAFETY: self owns a live mbuf.
        unsafe { ffi::netvm_rte_pktmbuf_iova(self.0.as_ptr()) }
    }

    /// Offset of the first data byte from the start of the buffer (`data_off`).
    #[inline]
    pub fn data_offset(&self) -> u16 {
        self.header().data_off
    }

    /// Bytes of the first segment (`data_len`).
    #[inline]
    pub fn data_len(&self) -> u16 {
        self.header().data_len
    }

    /// Start of the buffer the mbuf points at (`buf_addr`; the data is
    /// [`data_offset`](Self::data_offset) bytes further).
    #[inline]
    pub fn buf_addr(&self) -> *mut u8 {
        self.header().buf_addr.cast()
    }

    /// Makes the single-segment packet `len` bytes at `offset` from the buffer's start.
    ///
    /// # Safety
    /// `offset + len` fits the buffer (`buf_len`), and those bytes are initialised.
    #[inline]
    pub unsafe fn set_data_window(&mut self, offset: u16, len: u16) {
        // SAFETY: self owns the mbuf exclusively (&mut); plain field stores.
        let m = unsafe { self.0.as_mut() };
        m.data_off = offset;
        m.data_len = len;
        m.pkt_len = len.into();
    }

    /// Resets the metadata of a single-segment mbuf as `rte_pktmbuf_reset` does (no
    /// offloads, flags but the external-buffer one cleared, one segment, no port, length
    /// 0, default headroom), inline: for sending an mbuf that was received, without
    /// freeing it to its pool and allocating it again.
    #[inline]
    pub fn reset(&mut self) {
        // SAFETY: self owns the mbuf exclusively (&mut); plain field stores, the fields
        // `check_mbuf_layout` pins.
        let m = unsafe { self.0.as_mut() };
        m.next = std::ptr::null_mut();
        m.pkt_len = 0;
        m.__bindgen_anon_3.tx_offload = 0;
        m.vlan_tci = 0;
        m.vlan_tci_outer = 0;
        m.nb_segs = 1;
        m.port = ffi::RTE_MBUF_PORT_INVALID as u16;
        m.ol_flags &= ffi::RTE_MBUF_F_EXTERNAL;
        m.__bindgen_anon_1.packet_type = 0;
        m.data_off = (ffi::RTE_PKTMBUF_HEADROOM as u16).min(m.buf_len);
        m.data_len = 0;
    }

    /// References to the external buffer this mbuf is attached to, `None` when its buffer is
    /// its own (a direct mbuf) or pinned to it.
    pub fn external_refs(&self) -> Option<u16> {
        // SAFETY: self owns a live mbuf; shinfo is valid when the EXTERNAL flag is set.
        unsafe {
            (ffi::netvm_rte_mbuf_has_extbuf(self.0.as_ptr()) != 0
                && !ffi::netvm_rte_mbuf_pool(self.0.as_ptr()).is_null())
            .then(|| ffi::netvm_rte_mbuf_ext_refcnt(self.0.as_ptr()))
        }
    }

    /// Re-points an mbuf of a [`Mempool::pinned_external`] pool at another buffer.
    ///
    /// # Safety
    /// The mbuf comes from a pinned external pool, `addr` is a buffer as long as that pool's
    /// buffers and meets [`Mempool::pinned_external`]'s conditions, and the old buffer is
    /// now the caller's to account for.
    #[inline]
    pub unsafe fn set_buffer(&mut self, addr: *mut u8, iova: u64) {
        // SAFETY: self owns the mbuf exclusively (&mut); the caller vouches for the buffer.
        let m = unsafe { self.0.as_mut() };
        m.buf_addr = addr.cast();
        m.buf_iova = iova;
    }

    /// Attaches the external buffer `[addr, addr + buf_bytes)` to a fresh mbuf of a
    /// [`Mempool::for_attached`] pool, the packet being `data_bytes` at `data_offset`.
    /// When the last mbuf attached to it is freed (by the program or a driver, on any
    /// thread), DPDK calls `release(addr, opaque)`.
    ///
    /// # Safety
    /// The mbuf comes from a [`Mempool::for_attached`] pool and has no buffer attached;
    /// the buffer stays valid and unwritten until `release` runs; `release` is safe to call
    /// from any thread with `opaque`, which must stay valid until then.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn attach_external(
        &mut self,
        addr: *mut u8,
        iova: u64,
        buf_bytes: u16,
        data_offset: u16,
        data_bytes: u16,
        release: ExternalFree,
        opaque: *mut std::ffi::c_void,
    ) {
        // SAFETY: forwarded from the caller; the pool's private area holds the shared info.
        unsafe {
            ffi::netvm_rte_pktmbuf_attach_extbuf(
                self.0.as_ptr(),
                addr.cast(),
                iova,
                buf_bytes,
                data_offset,
                data_bytes,
                Some(release),
                opaque,
            )
        }
    }

    /// Frees every mbuf in `mbufs` with one call (`rte_pktmbuf_free_bulk`), emptying it;
    /// no call when it is empty.
    #[inline]
    pub fn free_bulk(mbufs: &mut Vec<Mbuf>) {
        if mbufs.is_empty() {
            return;
        }
        let Ok(count) = u32::try_from(mbufs.len()) else {
            mbufs.clear();
            return;
        };
        // SAFETY: the vector holds `count` owned, live mbufs laid out as pointers (repr
        // transparent); after the call DPDK has them, so forget them without dropping.
        unsafe {
            ffi::rte_pktmbuf_free_bulk(mbufs.as_mut_ptr().cast(), count);
            mbufs.set_len(0);
        }
    }

    /// Gives up ownership; the caller must free the buffer (or hand it to DPDK).
    pub fn into_raw(self) -> *mut ffi::rte_mbuf {
        std::mem::ManuallyDrop::new(self).0.as_ptr()
    }

    /// Takes ownership of a buffer.
    ///
    /// # Safety
    /// `raw` must be a live mbuf that nothing else owns or will free.
    pub unsafe fn from_raw(raw: NonNull<ffi::rte_mbuf>) -> Mbuf {
        Mbuf(raw)
    }

    pub fn as_ptr(&self) -> *mut ffi::rte_mbuf {
        self.0.as_ptr()
    }
    /// Gives up ownership as an opaque handle (the mbuf's address) for code that must
    /// not name DPDK's types; [`Mbuf::from_handle`] takes it back.
    #[inline]
    pub fn into_handle(self) -> usize {
        self.into_raw() as usize
    }

    /// Takes back ownership of a handle made by [`Mbuf::into_handle`].
    ///
    /// # Safety
    /// `handle` came from [`Mbuf::into_handle`] and is taken back at most once.
    #[inline]
    pub unsafe fn from_handle(handle: usize) -> Mbuf {
        // SAFETY: the caller's contract: a live mbuf's address, owned by nobody else;
        // into_handle never yields 0 (it came from a NonNull).
        Mbuf(unsafe { NonNull::new_unchecked(handle as *mut ffi::rte_mbuf) })
    }
}

impl Drop for Mbuf {
    fn drop(&mut self) {
        // SAFETY: self is the only owner; the buffer (and its chain) goes back to its pool.
        unsafe { ffi::netvm_rte_pktmbuf_free(self.0.as_ptr()) }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_c_compiler_lays_out_rte_mbuf_as_the_bindings_do() {
        super::check_mbuf_layout().expect("same layout");
        let layout = super::rust_mbuf_layout();
        assert_eq!(layout[0], ("buf_addr", 0));
        // Two cache lines: the fields netvm touches per packet are all in the first.
        assert_eq!(layout[17].1, 128);
        assert!(layout[..14].iter().all(|&(_, at)| at < 64), "{layout:?}");
    }
}
