//! netvm's shared-memory ABI: everything a network function outside the switch (a process,
//! or a QEMU guest) needs to map the switch's memory and trade packets with it, and
//! nothing of the switch itself.
//!
//! - [`layout`]: where every byte of a region is (header, rings, counters, buffers).
//! - [`region`]: a [`SharedRegion`] — one `memfd` on 2 MiB huge pages (or, loudly,
//!   ordinary pages), created by the switch and mapped by anyone at any address.
//! - [`ring`]: SPSC rings of buffer indices with claimed [`RingProducer`] /
//!   [`RingConsumer`] ends; [`mpmc`]: the MPMC ring behind the pool's free list.
//! - [`pool`]: the refcounted [`PacketPool`] over a region, with per-core caches.
//! - [`vm`]: the VM side of a ring pair — [`Verdict`], the ring slot wire format
//!   ([`vm::wire`]), the [`NetworkFunction`] trait, the built-ins and the serve loop the
//!   switch's VM threads, NF processes and guests all run.
//! - [`control`]: the control socket's wire protocol and its client.
//! - [`guest`]: the attach record a QEMU guest finds at the end of its ivshmem BAR, and
//!   the handshake that brings its rings up without a socket.
//!
//! `netvm-runtime` builds the switch on these modules and re-exports them under its own
//! paths; `netvm-nf` and the guest agent link this crate alone.
//!
//! Invariants: no pointers in shared memory (offsets and buffer indices only); no locks
//! on the data path; every index and offset read from shared memory is range-checked, so
//! nothing a peer writes makes this crate panic or touch memory outside the region.

#[cfg(not(loom))]
pub mod control;
#[cfg(not(loom))]
pub mod guest;
#[cfg(not(loom))]
pub mod layout;
pub mod mpmc;
#[cfg(not(loom))]
pub mod pool;
#[cfg(not(loom))]
pub mod region;
pub mod ring;
mod sync;
#[cfg(not(loom))]
pub mod vm;

#[cfg(not(loom))]
pub use layout::{LayoutError, RegionConfig, RegionLayout};
pub use mpmc::MpmcRing;
#[cfg(not(loom))]
pub use pool::{PacketPool, PoolCache, PoolError};
#[cfg(not(loom))]
pub use region::{Backing, HugepagePolicy, RegionError, SharedRegion};
pub use ring::{Ring, RingConsumer, RingEnd, RingError, RingProducer};
#[cfg(not(loom))]
pub use vm::{IdlePolicy, NetworkFunction, Verdict, MAX_BURST};
