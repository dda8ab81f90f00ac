//! Where every byte of the shared region is.
//!
//! This module owns the region's map and nothing else: section offsets, the header's
//! field offsets, and the buffer slot layout. Everything is an *offset* from the start of
//! the region or a *buffer index*, never a pointer, so a process that maps the region at
//! another address reads the same structures. The header is written once, by the creator,
//! before the region is shared, and is read-only afterwards; [`RegionLayout::parse`]
//! recomputes every offset from the header's sizes and rejects a header that disagrees
//! (wrong magic, another layout version, or corruption). Like smoltcp's `wire` modules the
//! header is a typed view over bytes ([`RegionHeader`]) plus an owned description
//! ([`RegionLayout`]) that can [`emit`](RegionLayout::emit) it. The per-buffer header
//! ([`BufHeader`]) is defined here too. This module does not map memory: see
//! [`region`](crate::region) for that.
//!
//! ```text
//! offset                      size                       contents
//! 0                           128                        RegionHeader (little-endian, read-only)
//! pool_line_offset            64                         pool line: reserved (zero; cache counts live per process)
//! free_ring_offset            mpmc_bytes(free_ring_slots) free buffer indices (MPMC ring)
//! rings_offset                ring_count * ring_stride   SPSC rings, ring_bytes(ring_slots) each
//! counters_offset             counter_count * 8 (+pad)   AtomicU64 counters
//! buffers_offset              buffer_count * 2240        buffers: 64 B BufHeader | 128 B headroom | 2048 B data room
//! total_bytes                                            rounded up to 2 MiB
//! ```
//! Every section starts on a 64-byte cache line.

use std::ops::Range;
use std::sync::atomic::{AtomicU16, AtomicU32};

use crate::mpmc::mpmc_bytes;
use crate::ring::{ring_bytes, CACHE_LINE, MAX_RING_SLOTS};

/// First eight bytes of every region.
pub const MAGIC: [u8; 8] = *b"NETVMRGN";
/// Bumped whenever any offset or structure in this file changes.
pub const LAYOUT_VERSION: u32 = 2;
/// Bytes of the region header.
pub const HEADER_BYTES: usize = 128;
/// Huge page size the region is rounded up to, huge pages or not.
pub const HUGE_PAGE_BYTES: usize = 2 << 20;

/// Bytes of packet data a buffer can hold after its headroom.
pub const BUF_DATA_ROOM: usize = 2048;
/// Bytes reserved before the data for encapsulation headers.
pub const BUF_HEADROOM: usize = 128;
/// Bytes of the per-buffer header (one cache line).
pub const BUF_HEADER_BYTES: usize = CACHE_LINE;
/// Distance between consecutive buffers: header, headroom and data room.
pub const BUF_STRIDE: usize = BUF_HEADER_BYTES + BUF_HEADROOM + BUF_DATA_ROOM;
/// Most buffers a region holds (keeps every offset well inside `u64` and indices in `u32`).
pub const MAX_BUFFERS: usize = 1 << 24;
/// Most SPSC rings a region holds.
pub const MAX_RINGS: usize = 1 << 16;
/// Most counters a region holds.
pub const MAX_COUNTERS: usize = 1 << 20;

const _: () = assert!(BUF_STRIDE % CACHE_LINE == 0);

/// The first cache line of every buffer. All fields are atomics so that a misbehaving
/// peer writing them concurrently is a logic error, never undefined behaviour; the owner
/// of the buffer uses `Relaxed` for everything but `refcount`.
#[repr(C, align(64))]
#[derive(Debug)]
pub struct BufHeader {
    /// References held (mirroring clones); 0 while the buffer is in the pool.
    pub refcount: AtomicU32,
    /// Offset of the first data byte from the start of the headroom.
    pub data_offset: AtomicU16,
    /// Bytes of packet data.
    pub data_len: AtomicU16,
    /// Port the packet arrived on (or is bound for).
    pub port: AtomicU16,
    /// What the bytes from the start of the data room hold, when a port knows: 0 for
    /// unknown, otherwise an id the port chose when it wrote them (the generator's
    /// prefilled mode names a template). Allocation keeps it; every write through the
    /// pool ([`write_data`], or a VM writing its frame) sets it back to 0, so a nonzero
    /// tag always describes the bytes as they are.
    ///
    /// [`write_data`]: crate::pool::PacketPool::write_data
    pub content_tag: AtomicU32,
}

const _: () = assert!(std::mem::size_of::<BufHeader>() == BUF_HEADER_BYTES);

/// Byte ranges of the header's fields, all little-endian.
pub mod field {
    use std::ops::Range;
    pub const MAGIC: Range<usize> = 0..8;
    pub const VERSION: Range<usize> = 8..12;
    pub const HEADER_BYTES: Range<usize> = 12..16;
    pub const TOTAL_BYTES: Range<usize> = 16..24;
    pub const BACKING: Range<usize> = 24..28;
    pub const BUFFER_COUNT: Range<usize> = 28..32;
    pub const BUFFER_STRIDE: Range<usize> = 32..36;
    pub const BUFFER_HEADROOM: Range<usize> = 36..40;
    pub const BUFFER_DATA_ROOM: Range<usize> = 40..44;
    pub const RING_COUNT: Range<usize> = 44..48;
    pub const RING_SLOTS: Range<usize> = 48..52;
    pub const FREE_RING_SLOTS: Range<usize> = 52..56;
    pub const COUNTER_COUNT: Range<usize> = 56..60;
    pub const POOL_LINE_OFFSET: Range<usize> = 64..72;
    pub const FREE_RING_OFFSET: Range<usize> = 72..80;
    pub const RINGS_OFFSET: Range<usize> = 80..88;
    pub const RING_STRIDE: Range<usize> = 88..96;
    pub const COUNTERS_OFFSET: Range<usize> = 96..104;
    pub const BUFFERS_OFFSET: Range<usize> = 104..112;
}

/// Why a region's layout could not be computed or a header could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("{what} must be between {min} and {max}, not {value}")]
    OutOfRange {
        what: &'static str,
        value: usize,
        min: usize,
        max: usize,
    },
    #[error("the region is {0} bytes, too small to hold a {HEADER_BYTES}-byte header")]
    Truncated(usize),
    #[error("not a netvm region (magic {0:02x?})")]
    BadMagic([u8; 8]),
    #[error("region layout version {found}, this build reads version {LAYOUT_VERSION}")]
    Version { found: u32 },
    #[error(
        "header field `{field}` is {found}, the layout computed from its sizes says {expected}"
    )]
    Mismatch {
        field: &'static str,
        expected: u64,
        found: u64,
    },
    #[error("header says the region is {expected} bytes but only {found} are mapped")]
    TooShort { expected: usize, found: usize },
    #[error("unknown backing code {0} in header")]
    BadBacking(u32),
}

/// What a region must hold. Sizes only; [`RegionLayout::new`] turns them into offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionConfig {
    /// Packet buffers in the pool.
    pub buffer_count: usize,
    /// SPSC rings (ports, VM queues).
    pub ring_count: usize,
    /// Slots in each SPSC ring (a power of two).
    pub ring_slots: usize,
    /// 64-bit counters (port statistics).
    pub counter_count: usize,
}

impl Default for RegionConfig {
    /// 8192 buffers (about 18 MiB), 16 rings of 1024 slots, 256 counters.
    fn default() -> Self {
        Self {
            buffer_count: 8192,
            ring_count: 16,
            ring_slots: 1024,
            counter_count: 256,
        }
    }
}

/// How the region's pages are backed; recorded in the header so attachers know too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BackingCode {
    SmallPages = 0,
    HugePages2M = 1,
}

impl BackingCode {
    fn from_u32(code: u32) -> Result<Self, LayoutError> {
        match code {
            0 => Ok(Self::SmallPages),
            1 => Ok(Self::HugePages2M),
            other => Err(LayoutError::BadBacking(other)),
        }
    }
}

/// Every offset of a region, computed from a [`RegionConfig`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionLayout {
    pub config: RegionConfig,
    pub(crate) backing: BackingCode,
    pub pool_line_offset: usize,
    pub free_ring_offset: usize,
    /// Power of two ≥ `buffer_count`, so every buffer fits in the free ring at once.
    pub free_ring_slots: usize,
    pub rings_offset: usize,
    pub ring_stride: usize,
    pub counters_offset: usize,
    pub buffers_offset: usize,
    /// Whole region, a multiple of [`HUGE_PAGE_BYTES`].
    pub total_bytes: usize,
}

fn check_range(
    what: &'static str,
    value: usize,
    min: usize,
    max: usize,
) -> Result<(), LayoutError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(LayoutError::OutOfRange {
            what,
            value,
            min,
            max,
        })
    }
}

const fn align_up(value: usize, align: usize) -> usize {
    value.div_ceil(align) * align
}

impl RegionLayout {
    /// Lay out a region for `config`. All sizes are bounded, so no offset overflows.
    pub fn new(config: RegionConfig) -> Result<Self, LayoutError> {
        check_range("buffer_count", config.buffer_count, 1, MAX_BUFFERS)?;
        check_range("ring_count", config.ring_count, 0, MAX_RINGS)?;
        check_range("counter_count", config.counter_count, 0, MAX_COUNTERS)?;
        check_range(
            "ring_slots",
            config.ring_slots,
            2,
            MAX_RING_SLOTS.min(1 << 20),
        )?;
        if !config.ring_slots.is_power_of_two() {
            return Err(LayoutError::OutOfRange {
                what: "ring_slots (a power of two)",
                value: config.ring_slots,
                min: 2,
                max: 1 << 20,
            });
        }
        let free_ring_slots = config.buffer_count.next_power_of_two().max(2);
        let pool_line_offset = HEADER_BYTES;
        let free_ring_offset = pool_line_offset + CACHE_LINE;
        let rings_offset = free_ring_offset + mpmc_bytes(free_ring_slots);
        let ring_stride = ring_bytes(config.ring_slots);
        let counters_offset = rings_offset + config.ring_count * ring_stride;
        let buffers_offset = counters_offset + align_up(config.counter_count * 8, CACHE_LINE);
        let end = buffers_offset + config.buffer_count * BUF_STRIDE;
        Ok(Self {
            config,
            backing: BackingCode::SmallPages,
            pool_line_offset,
            free_ring_offset,
            free_ring_slots,
            rings_offset,
            ring_stride,
            counters_offset,
            buffers_offset,
            total_bytes: align_up(end, HUGE_PAGE_BYTES),
        })
    }

    /// Byte range of SPSC ring `ring`, if it exists.
    pub fn ring_range(&self, ring: usize) -> Option<Range<usize>> {
        (ring < self.config.ring_count).then(|| {
            let start = self.rings_offset + ring * self.ring_stride;
            start..start + self.ring_stride
        })
    }

    /// Byte offset of counter `counter`, if it exists.
    pub fn counter_offset(&self, counter: usize) -> Option<usize> {
        (counter < self.config.counter_count).then(|| self.counters_offset + counter * 8)
    }

    /// Byte offset of buffer `index`'s header, if it exists. Its headroom starts
    /// [`BUF_HEADER_BYTES`] later and its data room [`BUF_HEADROOM`] after that.
    pub fn buffer_offset(&self, index: u32) -> Option<usize> {
        let index = index as usize;
        (index < self.config.buffer_count).then(|| self.buffers_offset + index * BUF_STRIDE)
    }

    /// Write this layout into a header.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, header: &mut RegionHeader<T>) {
        let c = &self.config;
        header.set(field::MAGIC, &MAGIC);
        header.set_u32(field::VERSION, LAYOUT_VERSION);
        header.set_u32(field::HEADER_BYTES, HEADER_BYTES as u32);
        header.set_u64(field::TOTAL_BYTES, self.total_bytes as u64);
        header.set_u32(field::BACKING, self.backing as u32);
        header.set_u32(field::BUFFER_COUNT, c.buffer_count as u32);
        header.set_u32(field::BUFFER_STRIDE, BUF_STRIDE as u32);
        header.set_u32(field::BUFFER_HEADROOM, BUF_HEADROOM as u32);
        header.set_u32(field::BUFFER_DATA_ROOM, BUF_DATA_ROOM as u32);
        header.set_u32(field::RING_COUNT, c.ring_count as u32);
        header.set_u32(field::RING_SLOTS, c.ring_slots as u32);
        header.set_u32(field::FREE_RING_SLOTS, self.free_ring_slots as u32);
        header.set_u32(field::COUNTER_COUNT, c.counter_count as u32);
        header.set_u64(field::POOL_LINE_OFFSET, self.pool_line_offset as u64);
        header.set_u64(field::FREE_RING_OFFSET, self.free_ring_offset as u64);
        header.set_u64(field::RINGS_OFFSET, self.rings_offset as u64);
        header.set_u64(field::RING_STRIDE, self.ring_stride as u64);
        header.set_u64(field::COUNTERS_OFFSET, self.counters_offset as u64);
        header.set_u64(field::BUFFERS_OFFSET, self.buffers_offset as u64);
    }

    /// Read a layout back from a header, recomputing every offset from the sizes and
    /// rejecting any field that disagrees.
    pub fn parse<T: AsRef<[u8]>>(header: &RegionHeader<T>) -> Result<Self, LayoutError> {
        let config = RegionConfig {
            buffer_count: header.u32(field::BUFFER_COUNT) as usize,
            ring_count: header.u32(field::RING_COUNT) as usize,
            ring_slots: header.u32(field::RING_SLOTS) as usize,
            counter_count: header.u32(field::COUNTER_COUNT) as usize,
        };
        let mut layout = Self::new(config)?;
        layout.backing = BackingCode::from_u32(header.u32(field::BACKING))?;
        let checks: [(&'static str, u64, u64); 13] = [
            (
                "header_bytes",
                HEADER_BYTES as u64,
                header.u32(field::HEADER_BYTES).into(),
            ),
            (
                "total_bytes",
                layout.total_bytes as u64,
                header.u64(field::TOTAL_BYTES),
            ),
            (
                "buffer_stride",
                BUF_STRIDE as u64,
                header.u32(field::BUFFER_STRIDE).into(),
            ),
            (
                "buffer_headroom",
                BUF_HEADROOM as u64,
                header.u32(field::BUFFER_HEADROOM).into(),
            ),
            (
                "buffer_data_room",
                BUF_DATA_ROOM as u64,
                header.u32(field::BUFFER_DATA_ROOM).into(),
            ),
            (
                "free_ring_slots",
                layout.free_ring_slots as u64,
                header.u32(field::FREE_RING_SLOTS).into(),
            ),
            (
                "pool_line_offset",
                layout.pool_line_offset as u64,
                header.u64(field::POOL_LINE_OFFSET),
            ),
            (
                "free_ring_offset",
                layout.free_ring_offset as u64,
                header.u64(field::FREE_RING_OFFSET),
            ),
            (
                "rings_offset",
                layout.rings_offset as u64,
                header.u64(field::RINGS_OFFSET),
            ),
            (
                "ring_stride",
                layout.ring_stride as u64,
                header.u64(field::RING_STRIDE),
            ),
            (
                "counters_offset",
                layout.counters_offset as u64,
                header.u64(field::COUNTERS_OFFSET),
            ),
            (
                "buffers_offset",
                layout.buffers_offset as u64,
                header.u64(field::BUFFERS_OFFSET),
            ),
            (
                "version",
                LAYOUT_VERSION as u64,
                header.u32(field::VERSION).into(),
            ),
        ];
        for (field, expected, found) in checks {
            if expected != found {
                return Err(LayoutError::Mismatch {
                    field,
                    expected,
                    found,
                });
            }
        }
        Ok(layout)
    }
}

/// A typed view of the region header over any byte buffer.
#[derive(Debug)]
pub struct RegionHeader<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> RegionHeader<T> {
    /// Wrap `buffer` without checking anything beyond its length (for writing a header).
    pub fn new_unchecked(buffer: T) -> Result<Self, LayoutError> {
        let len = buffer.as_ref().len();
        if len < HEADER_BYTES {
            return Err(LayoutError::Truncated(len));
        }
        Ok(Self { buffer })
    }

    /// Wrap `buffer`, checking its length, magic and layout version.
    pub fn new_checked(buffer: T) -> Result<Self, LayoutError> {
        let header = Self::new_unchecked(buffer)?;
        let mut magic = [0; 8];
        magic.copy_from_slice(&header.buffer.as_ref()[field::MAGIC]);
        if magic != MAGIC {
            return Err(LayoutError::BadMagic(magic));
        }
        let version = header.u32(field::VERSION);
        if version != LAYOUT_VERSION {
            return Err(LayoutError::Version { found: version });
        }
        Ok(header)
    }

    fn u32(&self, range: Range<usize>) -> u32 {
        let mut bytes = [0; 4];
        bytes.copy_from_slice(&self.buffer.as_ref()[range]);
        u32::from_le_bytes(bytes)
    }

    fn u64(&self, range: Range<usize>) -> u64 {
        let mut bytes = [0; 8];
        bytes.copy_from_slice(&self.buffer.as_ref()[range]);
        u64::from_le_bytes(bytes)
    }

    /// Total bytes the header says the region spans.
    pub fn total_bytes(&self) -> u64 {
        self.u64(field::TOTAL_BYTES)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> RegionHeader<T> {
    fn set(&mut self, range: Range<usize>, bytes: &[u8]) {
        self.buffer.as_mut()[range].copy_from_slice(bytes);
    }

    fn set_u32(&mut self, range: Range<usize>, value: u32) {
        self.set(range, &value.to_le_bytes());
    }

    fn set_u64(&mut self, range: Range<usize>, value: u64) {
        self.set(range, &value.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_section_starts_on_a_cache_line_and_sections_do_not_overlap() {
        let layout = RegionLayout::new(RegionConfig {
            buffer_count: 1000,
            ring_count: 3,
            ring_slots: 512,
            counter_count: 5,
        })
        .unwrap();
        let starts = [
            layout.pool_line_offset,
            layout.free_ring_offset,
            layout.rings_offset,
            layout.counters_offset,
            layout.buffers_offset,
        ];
        for (i, s) in starts.iter().enumerate() {
            assert_eq!(s % CACHE_LINE, 0, "section {i} at {s}");
        }
        assert!(starts.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(layout.free_ring_slots, 1024);
        assert_eq!(
            layout.rings_offset - layout.free_ring_offset,
            mpmc_bytes(1024)
        );
        assert_eq!(
            layout.ring_range(2),
            Some(layout.rings_offset + 2 * ring_bytes(512)..layout.counters_offset)
        );
        assert_eq!(layout.ring_range(3), None);
        assert_eq!(layout.counter_offset(4), Some(layout.counters_offset + 32));
        assert!(layout.counters_offset + 40 <= layout.buffers_offset);
        assert_eq!(
            layout.buffer_offset(999),
            Some(layout.buffers_offset + 999 * BUF_STRIDE)
        );
        assert_eq!(layout.buffer_offset(1000), None);
        assert_eq!(layout.total_bytes % HUGE_PAGE_BYTES, 0);
        assert!(layout.total_bytes >= layout.buffers_offset + 1000 * BUF_STRIDE);
    }

    #[test]
    fn a_header_round_trips_through_emit_and_parse() {
        let mut layout = RegionLayout::new(RegionConfig::default()).unwrap();
        layout.backing = BackingCode::HugePages2M;
        let mut bytes = [0u8; HEADER_BYTES];
        layout.emit(&mut RegionHeader::new_unchecked(&mut bytes[..]).unwrap());
        let parsed = RegionLayout::parse(&RegionHeader::new_checked(&bytes[..]).unwrap()).unwrap();
        assert_eq!(parsed, layout);
    }

    #[test]
    fn a_header_with_a_wrong_magic_version_or_offset_is_rejected() {
        let layout = RegionLayout::new(RegionConfig::default()).unwrap();
        let mut good = [0u8; HEADER_BYTES];
        layout.emit(&mut RegionHeader::new_unchecked(&mut good[..]).unwrap());

        let mut bad = good;
        bad[0] = b'X';
        assert!(matches!(
            RegionHeader::new_checked(&bad[..]),
            Err(LayoutError::BadMagic(_))
        ));

        let mut bad = good;
        bad[field::VERSION].copy_from_slice(&99u32.to_le_bytes());
        assert_eq!(
            RegionHeader::new_checked(&bad[..]).unwrap_err(),
            LayoutError::Version { found: 99 }
        );

        let mut bad = good;
        bad[field::BUFFERS_OFFSET].copy_from_slice(&64u64.to_le_bytes());
        let header = RegionHeader::new_checked(&bad[..]).unwrap();
        assert!(matches!(
            RegionLayout::parse(&header),
            Err(LayoutError::Mismatch {
                field: "buffers_offset",
                ..
            })
        ));

        assert_eq!(
            RegionHeader::new_checked(&good[..10]).unwrap_err(),
            LayoutError::Truncated(10)
        );
    }

    #[test]
    fn out_of_range_sizes_are_rejected() {
        let ok = RegionConfig::default();
        for bad in [
            RegionConfig {
                buffer_count: 0,
                ..ok
            },
            RegionConfig {
                buffer_count: MAX_BUFFERS + 1,
                ..ok
            },
            RegionConfig {
                ring_slots: 1000,
                ..ok
            },
            RegionConfig {
                ring_slots: 1,
                ..ok
            },
            RegionConfig {
                ring_count: MAX_RINGS + 1,
                ..ok
            },
        ] {
            assert!(RegionLayout::new(bad).is_err(), "{bad:?}");
        }
    }
}
