//! The guest attach record: how a network function in a QEMU guest learns which VM it is
//! and agrees with the switch on when its rings are live, with no socket between them.
//!
//! A guest sees one memory: the ivshmem device's BAR2, which is the region's memfd (the
//! shared pool for a trusted VM, the VM's private region for an untrusted one). PCI wants
//! a BAR whose size is a power of two, so the switch grows the memfd to
//! [`bar_bytes`]`(region)`; the last [`AREA_BYTES`] of it, past everything the region's
//! layout describes, are the *attach area*: [`SLOTS`] slots of [`SLOT_BYTES`], one per
//! guest that maps this memfd (the kernel command line says which: `netvm.slot=N`).
//!
//! ```text
//! slot offset  size  contents (little-endian)
//! 0            8     magic "NETVMGST"
//! 8            4     record version (RECORD_VERSION)
//! 12           4     length of the JSON that follows at 64
//! 16           8     offer: generation << 2 | state (switch writes; see Offer)
//! 24           8     answer: generation << 2 | writes << 1 | ready (guest writes)
//! 32           32    reserved (zero)
//! 64           ..    the attach reply as JSON (control::AttachReply), at most SLOT_BYTES - 64
//! ```
//!
//! The handshake, per boot (generation *g*, counted by the switch):
//! 1. the switch writes the record and stores offer = (*g*, [`Offer::Offered`]);
//! 2. the guest reads and checks it and stores answer = (*g*, ready, writes);
//! 3. the switch brings the VM up — fresh rings, its own ends claimed, exactly as for a
//!    process that attaches on the control socket — and stores offer = (*g*, [`Offer::Attached`]);
//! 4. the guest claims its ring ends and runs; when the offer leaves *Attached* (the switch
//!    stops: [`Offer::Closed`]) it finishes and powers off.
//!
//! A guest's death is QEMU's exit, which the switch sees directly; nothing here needs a
//! heartbeat. Everything a guest writes is checked: an answer for another generation, or a
//! slot whose magic or length is wrong, is ignored and never trusted as an offset.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::{MmapOptions, MmapRaw};

use crate::control::AttachReply;

/// First eight bytes of a slot.
pub const MAGIC: [u8; 8] = *b"NETVMGST";
/// Bumped whenever the slot's layout or the handshake changes.
pub const RECORD_VERSION: u32 = 1;
/// Bytes of one slot.
pub const SLOT_BYTES: usize = 16 << 10;
/// Slots in the area: guests that may map one memfd (trusted guests share the pool's).
pub const SLOTS: usize = 16;
/// Bytes at the end of the BAR that hold the slots.
pub const AREA_BYTES: usize = SLOT_BYTES * SLOTS;
/// Where the JSON starts in a slot.
const JSON_OFFSET: usize = 64;
/// The smallest BAR: one 2 MiB huge page (a hugetlb memfd grows in those).
const MIN_BAR: usize = 2 << 20;

/// The BAR size for a region of `region_bytes`: the region and the attach area, rounded up
/// to a power of two (what PCI needs) and to at least 2 MiB.
pub fn bar_bytes(region_bytes: usize) -> usize {
    (region_bytes + AREA_BYTES).next_power_of_two().max(MIN_BAR)
}

/// The switch's side of the handshake, in the low two bits of the offer word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// No guest may attach.
    None,
    /// The record is written; a guest of this generation may say it is ready.
    Offered,
    /// The switch has the VM up: rings are fresh and its ends claimed.
    Attached,
    /// The switch is stopping (or gave the slot up): finish and power off.
    Closed,
}

impl Offer {
    fn code(self) -> u64 {
        match self {
            Offer::None => 0,
            Offer::Offered => 1,
            Offer::Attached => 2,
            Offer::Closed => 3,
        }
    }

    fn from_code(code: u64) -> Offer {
        match code & 3 {
            1 => Offer::Offered,
            2 => Offer::Attached,
            3 => Offer::Closed,
            _ => Offer::None,
        }
    }
}

/// What the guest said: which generation it is, and whether it writes packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    pub generation: u64,
    pub writes: bool,
}

/// Why the attach area could not be mapped or read.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("the BAR is {0} bytes, too small to hold the attach area ({AREA_BYTES} bytes)")]
    TooSmall(usize),
    #[error("slot {0} does not exist (there are {SLOTS})")]
    NoSlot(usize),
    #[error("mapping the attach area: {0}")]
    Map(#[source] std::io::Error),
    #[error("slot {slot}: {why}")]
    Bad { slot: usize, why: String },
}

/// The attach area of a BAR, mapped from the memfd (the switch) or from the ivshmem
/// device's `resource2` file (a guest).
pub struct AttachArea {
    map: MmapRaw,
    /// Where the area starts in `map`.
    area_offset: usize,
}

// SAFETY: the mapping is shared memory accessed only through atomics and byte copies;
// nothing in it is a Rust reference that another thread could alias mutably.
unsafe impl Send for AttachArea {}
// SAFETY: as above.
unsafe impl Sync for AttachArea {}

impl AttachArea {
    /// Map the last [`AREA_BYTES`] of a BAR of `bar_bytes` bytes behind `fd`.
    pub fn map(fd: BorrowedFd<'_>, bar_bytes: usize) -> Result<AttachArea, AttachError> {
        if bar_bytes < AREA_BYTES || bar_bytes % 4096 != 0 {
            return Err(AttachError::TooSmall(bar_bytes));
        }
        // A hugetlb memfd maps only at 2 MiB offsets: map the BAR's last 2 MiB (or all of
        // a smaller one) and find the area at its end.
        let window = bar_bytes.min(MIN_BAR);
        let map = MmapOptions::new()
            .offset((bar_bytes - window) as u64)
            .len(window)
            .map_raw(fd.as_raw_fd())
            .map_err(AttachError::Map)?;
        Ok(AttachArea {
            map,
            area_offset: window - AREA_BYTES,
        })
    }

    fn slot_ptr(&self, slot: usize) -> Result<*mut u8, AttachError> {
        if slot >= SLOTS {
            return Err(AttachError::NoSlot(slot));
        }
        // SAFETY: slot < SLOTS, so the slot lies inside the area, which ends where the
        // mapping does.
        Ok(unsafe {
            self.map
                .as_mut_ptr()
                .add(self.area_offset + slot * SLOT_BYTES)
        })
    }

    fn word(&self, slot: usize, offset: usize) -> Result<&AtomicU64, AttachError> {
        let base = self.slot_ptr(slot)?;
        // SAFETY: offsets 16 and 24 are 8-aligned inside the slot (the mapping is
        // page-aligned); AtomicU64 has no invalid bit patterns, and the memory lives as
        // long as `self`.
        Ok(unsafe { &*base.add(offset).cast::<AtomicU64>() })
    }

    /// The switch: write `reply` into `slot` for boot `generation`, clear the guest's
    /// answer and offer the slot.
    pub fn offer(
        &self,
        slot: usize,
        generation: u64,
        reply: &AttachReply,
    ) -> Result<(), AttachError> {
        let json = serde_json::to_vec(reply).map_err(|e| AttachError::Bad {
            slot,
            why: e.to_string(),
        })?;
        if json.len() > SLOT_BYTES - JSON_OFFSET {
            return Err(AttachError::Bad {
                slot,
                why: format!(
                    "the attach record is {} bytes, more than a slot holds ({}): too many or too long port and VM names",
                    json.len(),
                    SLOT_BYTES - JSON_OFFSET
                ),
            });
        }
        self.word(slot, 16)?.store(0, Ordering::Release);
        self.word(slot, 24)?.store(0, Ordering::Release);
        let base = self.slot_ptr(slot)?;
        let mut head = [0u8; 16];
        head[..8].copy_from_slice(&MAGIC);
        head[8..12].copy_from_slice(&RECORD_VERSION.to_le_bytes());
        head[12..16].copy_from_slice(&(json.len() as u32).to_le_bytes());
        // SAFETY: both copies stay inside the slot (16 bytes at 0, json.len() bytes at 64,
        // checked above); no guest of this generation runs yet, so nobody reads meanwhile.
        unsafe {
            std::ptr::copy_nonoverlapping(head.as_ptr(), base, head.len());
            std::ptr::copy_nonoverlapping(json.as_ptr(), base.add(JSON_OFFSET), json.len());
        }
        self.set_offer(slot, generation, Offer::Offered)
    }

    /// The switch: store the offer word.
    pub fn set_offer(&self, slot: usize, generation: u64, offer: Offer) -> Result<(), AttachError> {
        self.word(slot, 16)?
            .store((generation << 2) | offer.code(), Ordering::Release);
        Ok(())
    }

    /// The offer word: generation and state.
    pub fn offer_state(&self, slot: usize) -> Result<(u64, Offer), AttachError> {
        let word = self.word(slot, 16)?.load(Ordering::Acquire);
        Ok((word >> 2, Offer::from_code(word)))
    }

    /// The switch: the guest's answer, if it said it is ready.
    pub fn answer(&self, slot: usize) -> Result<Option<Answer>, AttachError> {
        let word = self.word(slot, 24)?.load(Ordering::Acquire);
        Ok((word & 1 == 1).then_some(Answer {
            generation: word >> 2,
            writes: word & 2 != 0,
        }))
    }

    /// The guest: read and check the record of `slot` (offered or attached).
    pub fn read(&self, slot: usize) -> Result<(u64, AttachReply), AttachError> {
        let bad = |why: String| AttachError::Bad { slot, why };
        let (generation, offer) = self.offer_state(slot)?;
        if offer == Offer::None {
            return Err(bad("nothing offered yet".into()));
        }
        let base = self.slot_ptr(slot)?;
        let mut head = [0u8; 16];
        // SAFETY: 16 bytes at the start of a slot inside the mapping.
        unsafe { std::ptr::copy_nonoverlapping(base, head.as_mut_ptr(), head.len()) };
        if head[..8] != MAGIC {
            return Err(bad(format!("no attach record (magic {:02x?})", &head[..8])));
        }
        let version = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
        if version != RECORD_VERSION {
            return Err(bad(format!(
                "attach record version {version}, this guest reads version {RECORD_VERSION}: build the guest image with the same netvm"
            )));
        }
        let len = u32::from_le_bytes([head[12], head[13], head[14], head[15]]) as usize;
        if len > SLOT_BYTES - JSON_OFFSET {
            return Err(bad(format!("record length {len} is past the slot")));
        }
        let mut json = vec![0u8; len];
        // SAFETY: len <= SLOT_BYTES - 64, so the copy stays inside the slot.
        unsafe { std::ptr::copy_nonoverlapping(base.add(JSON_OFFSET), json.as_mut_ptr(), len) };
        let reply: AttachReply = serde_json::from_slice(&json)
            .map_err(|e| bad(format!("record is not an attach reply: {e}")))?;
        Ok((generation, reply))
    }

    /// The guest: say it is ready for `generation`.
    pub fn set_answer(&self, slot: usize, answer: Answer) -> Result<(), AttachError> {
        self.word(slot, 24)?.store(
            (answer.generation << 2) | (u64::from(answer.writes) << 1) | 1,
            Ordering::Release,
        );
        Ok(())
    }

    /// Raw access to a slot's answer word, for tests that play a hostile guest.
    #[doc(hidden)]
    pub fn scribble(&self, slot: usize, offset: usize, value: u64) -> Result<(), AttachError> {
        if offset % 8 != 0 || offset + 8 > SLOT_BYTES {
            return Err(AttachError::NoSlot(slot));
        }
        self.word(slot, offset)?.store(value, Ordering::Release);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsFd, FromRawFd, OwnedFd};

    fn memfd(bytes: usize) -> OwnedFd {
        // SAFETY: memfd_create with a static name; the fd is owned from here.
        let fd = unsafe { libc::memfd_create(c"netvm-attach-test".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: fd is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        std::fs::File::from(fd.try_clone().unwrap())
            .set_len(bytes as u64)
            .unwrap();
        fd
    }

    fn reply() -> AttachReply {
        AttachReply {
            vm: "fw".into(),
            vm_index: 1,
            trusted: false,
            region: "private".into(),
            ring_in: 0,
            ring_out: 1,
            layout: crate::layout::LAYOUT_VERSION,
            ports: vec!["a".into(), "b".into()],
            vms: vec!["x".into(), "fw".into()],
        }
    }

    #[test]
    fn bar_sizes_are_powers_of_two_with_room_for_the_area() {
        assert_eq!(bar_bytes(1), 2 << 20);
        assert_eq!(bar_bytes(4 << 20), 8 << 20);
        let b = bar_bytes((10 << 20) + 5);
        assert!(b.is_power_of_two() && b >= (10 << 20) + 5 + AREA_BYTES);
    }

    #[test]
    fn the_handshake_round_trips_through_two_mappings_of_one_memfd() {
        let bar = 2 << 20;
        let fd = memfd(bar);
        let switch = AttachArea::map(fd.as_fd(), bar).unwrap();
        let guest = AttachArea::map(fd.as_fd(), bar).unwrap();
        assert!(guest.read(3).is_err(), "nothing offered yet");
        switch.offer(3, 7, &reply()).unwrap();
        let (generation, got) = guest.read(3).unwrap();
        assert_eq!((generation, got), (7, reply()));
        assert_eq!(switch.answer(3).unwrap(), None);
        guest
            .set_answer(
                3,
                Answer {
                    generation: 7,
                    writes: true,
                },
            )
            .unwrap();
        assert_eq!(
            switch.answer(3).unwrap(),
            Some(Answer {
                generation: 7,
                writes: true
            })
        );
        switch.set_offer(3, 7, Offer::Attached).unwrap();
        assert_eq!(guest.offer_state(3).unwrap(), (7, Offer::Attached));
        // A new boot clears the old answer.
        switch.offer(3, 8, &reply()).unwrap();
        assert_eq!(switch.answer(3).unwrap(), None);
        assert!(switch.offer(SLOTS, 1, &reply()).is_err());
    }

    #[test]
    fn a_scribbled_slot_is_an_error_never_a_panic() {
        let bar = 2 << 20;
        let fd = memfd(bar);
        let area = AttachArea::map(fd.as_fd(), bar).unwrap();
        area.offer(0, 1, &reply()).unwrap();
        // Length past the slot.
        area.scribble(0, 8, u64::from(RECORD_VERSION) | (u64::MAX << 32))
            .unwrap();
        assert!(area
            .read(0)
            .unwrap_err()
            .to_string()
            .contains("past the slot"));
        // Wrong magic.
        area.scribble(0, 0, 0x4141).unwrap();
        assert!(area
            .read(0)
            .unwrap_err()
            .to_string()
            .contains("no attach record"));
        // Garbage JSON.
        area.offer(0, 1, &reply()).unwrap();
        area.scribble(0, 64, u64::MAX).unwrap();
        assert!(area
            .read(0)
            .unwrap_err()
            .to_string()
            .contains("not an attach reply"));
        assert!(AttachArea::map(fd.as_fd(), 4096).is_err());
    }
}
