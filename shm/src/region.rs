//! The shared memory region: one `memfd` holding the packet buffers, the rings and the
//! counters, mapped `MAP_SHARED` so other processes (VMs) can map the same pages.
//!
//! [`SharedRegion::create`] makes the region on 2 MiB huge pages
//! (`memfd_create(MFD_HUGETLB | MFD_HUGE_2MB)`) or, when none are free and the
//! [`HugepagePolicy`] allows it, on ordinary pages, and reports which in a [`Backing`] the
//! caller must print at start-up: a switch on 4 KiB pages works but pays in TLB misses.
//! It then writes the header, the free ring (holding every buffer index) and the empty
//! SPSC rings; after that the region is shared and the header is read-only.
//! [`SharedRegion::from_fd`] maps an existing region (for instance in a child process that
//! inherited the fd) and validates its header against [`RegionLayout`].
//!
//! Invariants: nothing inside the region is a pointer, only offsets and buffer indices
//! (see [`layout`](crate::layout)); every view handed out ([`Ring`], the pool) holds an
//! `Arc` of the region, so the mapping outlives them. This module does not allocate
//! buffers (that is [`pool`](crate::pool)) or decide NUMA placement (that is
//! [`numa`](crate::numa)).

use std::ffi::CStr;
use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use memmap2::{MmapOptions, MmapRaw};

use crate::layout::{
    BackingCode, LayoutError, RegionConfig, RegionHeader, RegionLayout, HEADER_BYTES,
};
use crate::mpmc::MpmcRing;
use crate::ring::{Ring, RingError};

/// Whether the region must, may or must not use huge pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HugepagePolicy {
    /// Fail if no 2 MiB huge pages can be had.
    Require,
    /// Use huge pages if possible, else fall back to ordinary pages and say so.
    #[default]
    Prefer,
    /// Use ordinary pages.
    Off,
}

/// What the region's memory turned out to be. Print it at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backing {
    /// 2 MiB huge pages, as intended.
    HugePages2M,
    /// Ordinary pages. `fallback_reason` is set when huge pages were wanted but failed.
    SmallPages { fallback_reason: Option<String> },
}

impl Backing {
    /// True when huge pages were wanted but the region fell back to ordinary pages.
    pub fn is_fallback(&self) -> bool {
        matches!(
            self,
            Backing::SmallPages {
                fallback_reason: Some(_)
            }
        )
    }
}

impl fmt::Display for Backing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Backing::HugePages2M => f.write_str("shared region on 2 MiB huge pages"),
            Backing::SmallPages {
                fallback_reason: None,
            } => f.write_str("shared region on ordinary 4 KiB pages (huge pages off)"),
            Backing::SmallPages {
                fallback_reason: Some(reason),
            } => write!(
                f,
                "WARNING: shared region FELL BACK to ordinary 4 KiB pages because {reason}; \
                 expect more TLB misses (reserve pages with \
                 `echo 64 > /proc/sys/vm/nr_hugepages`)"
            ),
        }
    }
}

/// Why a region could not be created or mapped.
#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    #[error("invalid region layout")]
    Layout(#[from] LayoutError),
    #[error("2 MiB huge pages are required but unavailable: {0}")]
    HugePagesUnavailable(String),
    #[error("{what} failed")]
    Os {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("region has no ring {ring} (it has {ring_count})")]
    NoSuchRing { ring: usize, ring_count: usize },
    #[error("ring in the region is unusable")]
    Ring(#[from] RingError),
}

fn os(what: &'static str) -> impl FnOnce(io::Error) -> RegionError {
    move |source| RegionError::Os { what, source }
}

/// One mapped region. Shared through an `Arc`; every view keeps it alive.
pub struct SharedRegion {
    map: MmapRaw,
    fd: OwnedFd,
    layout: RegionLayout,
    backing: Backing,
}

impl fmt::Debug for SharedRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedRegion")
            .field("base", &self.map.as_ptr())
            .field("fd", &self.fd.as_raw_fd())
            .field("layout", &self.layout)
            .field("backing", &self.backing)
            .finish()
    }
}

fn memfd(name: &CStr, flags: libc::c_uint) -> io::Result<OwnedFd> {
    // SAFETY: `name` is a valid NUL-terminated string; memfd_create has no other inputs.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: memfd_create returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn hugepages_free() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("HugePages_Free:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Map `bytes` of `fd` shared, optionally pre-faulting every page.
fn map_fd(fd: &OwnedFd, bytes: usize, populate: bool) -> io::Result<MmapRaw> {
    let mut options = MmapOptions::new();
    options.len(bytes);
    if populate {
        options.populate();
    }
    options.map_raw(fd.as_raw_fd())
}

fn create_hugepage_backed(bytes: usize, name: &CStr) -> Result<(OwnedFd, MmapRaw), String> {
    let fd = memfd(
        name,
        libc::MFD_CLOEXEC | libc::MFD_HUGETLB | libc::MFD_HUGE_2MB,
    )
    .map_err(|e| format!("memfd_create(MFD_HUGETLB | MFD_HUGE_2MB) failed: {e}"))?;
    File::from(fd.try_clone().map_err(|e| format!("dup failed: {e}"))?)
        .set_len(bytes as u64)
        .map_err(|e| format!("sizing the huge-page memfd to {bytes} bytes failed: {e}"))?;
    // Populate so that a shortage shows up here, not as SIGBUS on the data path.
    let map = map_fd(&fd, bytes, true).map_err(|e| {
        let free = hugepages_free().map_or("unknown".to_string(), |n| n.to_string());
        format!(
            "mapping {} huge pages failed ({e}; HugePages_Free = {free})",
            bytes / crate::layout::HUGE_PAGE_BYTES
        )
    })?;
    Ok((fd, map))
}

fn create_small_page_backed(bytes: usize, name: &CStr) -> Result<(OwnedFd, MmapRaw), RegionError> {
    let fd = memfd(name, libc::MFD_CLOEXEC).map_err(os("memfd_create"))?;
    File::from(fd.try_clone().map_err(os("dup of the region memfd"))?)
        .set_len(bytes as u64)
        .map_err(os("sizing the region memfd"))?;
    let map = map_fd(&fd, bytes, false).map_err(os("mmap of the region"))?;
    Ok((fd, map))
}

impl SharedRegion {
    /// Create and initialise a region for `config`: every buffer free, every ring empty,
    /// every counter zero.
    pub fn create(
        config: RegionConfig,
        policy: HugepagePolicy,
    ) -> Result<Arc<SharedRegion>, RegionError> {
        Self::create_named(config, policy, c"netvm-region")
    }

    /// As [`create`](Self::create), naming the memfd (it shows in `/proc/PID/maps` and
    /// `/proc/PID/fd` of every process that maps or holds it: `memfd:NAME`).
    pub fn create_named(
        config: RegionConfig,
        policy: HugepagePolicy,
        name: &CStr,
    ) -> Result<Arc<SharedRegion>, RegionError> {
        let mut layout = RegionLayout::new(config)?;
        let bytes = layout.total_bytes;
        let (fd, map, backing) = match policy {
            HugepagePolicy::Off => {
                let (fd, map) = create_small_page_backed(bytes, name)?;
                let backing = Backing::SmallPages {
                    fallback_reason: None,
                };
                (fd, map, backing)
            }
            HugepagePolicy::Require => {
                let (fd, map) = create_hugepage_backed(bytes, name)
                    .map_err(RegionError::HugePagesUnavailable)?;
                (fd, map, Backing::HugePages2M)
            }
            HugepagePolicy::Prefer => match create_hugepage_backed(bytes, name) {
                Ok((fd, map)) => (fd, map, Backing::HugePages2M),
                Err(reason) => {
                    let (fd, map) = create_small_page_backed(bytes, name)?;
                    let backing = Backing::SmallPages {
                        fallback_reason: Some(reason),
                    };
                    (fd, map, backing)
                }
            },
        };
        layout.backing = match backing {
            Backing::HugePages2M => BackingCode::HugePages2M,
            Backing::SmallPages { .. } => BackingCode::SmallPages,
        };
        let region = SharedRegion {
            map,
            fd,
            layout,
            backing,
        };
        region.initialise()?;
        let region = Arc::new(region);
        region.fill_free_ring()?;
        Ok(region)
    }

    /// Write the header and every ring. Runs before the region is shared.
    fn initialise(&self) -> Result<(), RegionError> {
        let layout = &self.layout;
        // SAFETY: the mapping is `total_bytes` long (≥ HEADER_BYTES), freshly created and
        // not yet visible to anyone else, so a unique byte slice over the header is sound.
        let header_bytes =
            unsafe { std::slice::from_raw_parts_mut(self.map.as_mut_ptr(), HEADER_BYTES) };
        layout.emit(&mut RegionHeader::new_unchecked(header_bytes)?);
        // SAFETY: the layout puts the free ring and each SPSC ring at cache-line-aligned
        // offsets inside the mapping with room for `mpmc_bytes` / `ring_bytes`, and the
        // region is still private to us.
        unsafe {
            MpmcRing::init_at(self.at(layout.free_ring_offset), layout.free_ring_slots)?;
            for ring in 0..layout.config.ring_count {
                let range = layout.ring_range(ring).ok_or(RegionError::NoSuchRing {
                    ring,
                    ring_count: layout.config.ring_count,
                })?;
                Ring::init_at(self.at(range.start), layout.config.ring_slots)?;
            }
        }
        Ok(())
    }

    fn fill_free_ring(self: &Arc<Self>) -> Result<(), RegionError> {
        let free = self.free_ring()?;
        let count = self.layout.config.buffer_count as u32;
        let mut burst = [0u32; 64];
        let mut next = 0;
        while next < count {
            let len = (count - next).min(64) as usize;
            for (i, slot) in burst[..len].iter_mut().enumerate() {
                *slot = next + i as u32;
            }
            // The free ring has a slot for every buffer, so this always fits.
            let sent = free.enqueue_burst(&burst[..len]);
            if sent == 0 {
                return Err(RingError::Corrupt {
                    expected: count as usize,
                    found: next as usize,
                }
                .into());
            }
            next += sent as u32;
        }
        Ok(())
    }

    /// Map a region created by [`SharedRegion::create`], possibly in another process.
    /// Takes ownership of `fd`.
    pub fn from_fd(fd: OwnedFd) -> Result<Arc<SharedRegion>, RegionError> {
        let file = File::from(fd.try_clone().map_err(os("dup of the region fd"))?);
        let bytes = file.metadata().map_err(os("fstat of the region fd"))?.len() as usize;
        if bytes < HEADER_BYTES {
            return Err(LayoutError::Truncated(bytes).into());
        }
        let map = map_fd(&fd, bytes, false).map_err(os("mmap of the region"))?;
        let mut header = [0u8; HEADER_BYTES];
        // SAFETY: the mapping is at least HEADER_BYTES long; the header is read-only once
        // the region is shared, and we copy it out rather than keep a reference.
        unsafe {
            std::ptr::copy_nonoverlapping(map.as_ptr(), header.as_mut_ptr(), HEADER_BYTES);
        }
        let layout = RegionLayout::parse(&RegionHeader::new_checked(&header[..])?)?;
        if layout.total_bytes > bytes {
            return Err(LayoutError::TooShort {
                expected: layout.total_bytes,
                found: bytes,
            }
            .into());
        }
        let backing = match layout.backing {
            BackingCode::HugePages2M => Backing::HugePages2M,
            BackingCode::SmallPages => Backing::SmallPages {
                fallback_reason: None,
            },
        };
        Ok(Arc::new(SharedRegion {
            map,
            fd,
            layout,
            backing,
        }))
    }

    /// What backs the region's pages. Print it at start-up.
    pub fn backing(&self) -> &Backing {
        &self.backing
    }

    /// Where everything is.
    pub fn layout(&self) -> &RegionLayout {
        &self.layout
    }

    /// The memfd, to pass to another process (it is close-on-exec; clear that in the
    /// child, e.g. in `CommandExt::pre_exec`).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Bytes mapped.
    pub fn len_bytes(&self) -> usize {
        self.map.len()
    }

    /// Address the region is mapped at in this process (for diagnostics and `mbind`).
    pub fn base_addr(&self) -> usize {
        self.map.as_ptr() as usize
    }

    /// A view of SPSC ring `ring`; claim an end with [`Ring::producer`]/[`Ring::consumer`].
    pub fn ring(self: &Arc<Self>, ring: usize) -> Result<Ring, RegionError> {
        let range = self
            .layout
            .ring_range(ring)
            .ok_or(RegionError::NoSuchRing {
                ring,
                ring_count: self.layout.config.ring_count,
            })?;
        // SAFETY: the layout validated at create/from_fd puts an initialised ring of
        // `ring_slots` at this cache-line-aligned offset, and the Arc keeps it mapped.
        Ok(unsafe {
            Ring::attach_at(
                self.at(range.start),
                self.layout.config.ring_slots,
                self.clone(),
            )
        }?)
    }

    /// Counter `counter`, shared by every process that maps the region.
    pub fn counter(&self, counter: usize) -> Option<&AtomicU64> {
        let offset = self.layout.counter_offset(counter)?;
        // SAFETY: the offset is inside the counters section, 8-byte aligned (the section
        // is cache-line aligned), and the memory lives as long as `&self`. Zeroed memory
        // is a valid AtomicU64.
        Some(unsafe { self.at(offset).cast::<AtomicU64>().as_ref() })
    }

    /// The free-buffer ring.
    pub(crate) fn free_ring(self: &Arc<Self>) -> Result<MpmcRing, RegionError> {
        // SAFETY: the layout puts an initialised MPMC ring of `free_ring_slots` here, and
        // the Arc keeps it mapped.
        Ok(unsafe {
            MpmcRing::attach_at(
                self.at(self.layout.free_ring_offset),
                self.layout.free_ring_slots,
                self.clone(),
            )
        }?)
    }

    /// Pointer to byte `offset` of the region. Callers get offsets from `self.layout`,
    /// which are all below `total_bytes`.
    pub(crate) fn at(&self, offset: usize) -> NonNull<u8> {
        debug_assert!(offset < self.map.len());
        // SAFETY: the mapping is non-null and `offset` is inside it.
        unsafe { NonNull::new_unchecked(self.map.as_mut_ptr().add(offset)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> RegionConfig {
        RegionConfig {
            buffer_count: 64,
            ring_count: 2,
            ring_slots: 16,
            counter_count: 4,
        }
    }

    #[test]
    fn a_new_region_has_a_valid_header_and_empty_rings() {
        let region = SharedRegion::create(small(), HugepagePolicy::Off).unwrap();
        assert_eq!(
            region.backing(),
            &Backing::SmallPages {
                fallback_reason: None
            }
        );
        assert_eq!(region.len_bytes(), region.layout().total_bytes);
        assert!(region.ring(0).unwrap().is_empty());
        assert!(matches!(
            region.ring(2),
            Err(RegionError::NoSuchRing {
                ring: 2,
                ring_count: 2
            })
        ));
        assert_eq!(region.free_ring().unwrap().len(), 64);
        assert!(region.counter(3).is_some() && region.counter(4).is_none());
    }

    #[test]
    fn prefer_falls_back_loudly_or_gets_huge_pages() {
        let region = SharedRegion::create(small(), HugepagePolicy::Prefer).unwrap();
        match region.backing() {
            Backing::HugePages2M => {}
            Backing::SmallPages { fallback_reason } => {
                let reason = fallback_reason.as_ref().expect("a fallback says why");
                assert!(reason.contains("HugePages_Free") || reason.contains("memfd_create"));
                assert!(region.backing().to_string().starts_with("WARNING"));
            }
        }
        eprintln!("{}", region.backing());
    }

    #[test]
    fn a_second_mapping_of_the_fd_sees_the_same_rings_and_counters() {
        let region = SharedRegion::create(small(), HugepagePolicy::Off).unwrap();
        let fd = region.fd().try_clone_to_owned().unwrap();
        let other = SharedRegion::from_fd(fd).unwrap();
        assert_ne!(region.base_addr(), other.base_addr());
        assert_eq!(other.layout(), region.layout());
        let mut tx = region.ring(1).unwrap().producer().unwrap();
        assert_eq!(tx.enqueue_burst(&[5, 6, 7]), 3);
        // The claim flag lives in the region, so the other mapping sees it too.
        assert!(other.ring(1).unwrap().producer().is_err());
        let mut rx = other.ring(1).unwrap().consumer().unwrap();
        let mut out = [0; 8];
        assert_eq!(rx.dequeue_burst(&mut out), 3);
        assert_eq!(&out[..3], &[5, 6, 7]);
        region
            .counter(2)
            .unwrap()
            .store(42, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(
            other
                .counter(2)
                .unwrap()
                .load(std::sync::atomic::Ordering::Relaxed),
            42
        );
    }

    #[test]
    fn a_memfd_that_is_not_a_region_is_rejected() {
        let fd = memfd(c"not-a-region", libc::MFD_CLOEXEC).unwrap();
        File::from(fd.try_clone().unwrap()).set_len(4096).unwrap();
        assert!(matches!(
            SharedRegion::from_fd(fd),
            Err(RegionError::Layout(LayoutError::BadMagic(_)))
        ));
        let empty = memfd(c"empty", libc::MFD_CLOEXEC).unwrap();
        assert!(matches!(
            SharedRegion::from_fd(empty),
            Err(RegionError::Layout(LayoutError::Truncated(0)))
        ));
    }
}
