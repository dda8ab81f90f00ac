//! netvm's runtime: the switch threads, their ports and VMs (threads, processes, QEMU
//! guests), the installed program and its counters, on the memory, rings and placement of
//! `netvm-shm` and [`numa`].
//!
//! What it is built on, from `netvm-shm` (the shared-memory ABI that NF processes and
//! guests link alone), re-exported here under the same paths:
//! - [`layout`]: where every byte of the shared region is (header, rings, buffers).
//! - [`region`]: the [`SharedRegion`], one `memfd` on 2 MiB huge pages (or, loudly,
//!   ordinary pages) that other processes can map at any address.
//! - [`ring`]: SPSC rings of buffer indices with claimed [`RingProducer`] /
//!   [`RingConsumer`] ends; [`mpmc`]: the MPMC ring behind the pool's free list.
//! - [`pool`]: the refcounted [`PacketPool`] with per-core [`PoolCache`]s.
//! - [`vm`]: verdicts, the ring slot wire format, [`NetworkFunction`], the built-ins and
//!   the VM serve loop.
//!
//! What it owns:
//! - [`numa`]: topology, `mbind`, core pinning and the thread placement planner.
//! - [`switch`], [`port`], [`policy`], [`stats`]: the switch engine, its port drivers,
//!   the installed program and its counters.
//! - [`guest`]: VMs in QEMU guests on the same memory (ivshmem), supervised here.
//! - [`external`]: VMs run by other processes; [`control`]: the control socket they
//!   (and operators' tools) connect to (its wire protocol and client come from
//!   `netvm-shm`).
//!
//! Invariants it keeps:
//! - **No pointers in shared memory.** Everything in the region is an offset or a buffer
//!   index, so every process that maps it sees the same structures (proved by
//!   `tests/cross_process.rs`).
//! - **No locks on the data path.** Rings hand over indices with one Release store and
//!   one Acquire load per burst; the free ring is lock-free (CAS per burst). Both are
//!   model-checked with loom:
//!   `RUSTFLAGS="--cfg loom" cargo test -p netvm-shm --release loom`.
//! - **Every buffer accounted for.** A buffer is in the free ring, in a [`PoolCache`], or
//!   held (refcount ≥ 1) by whoever received its index; with threads idle,
//!   [`PacketPool::available`] equals [`PacketPool::capacity`].
//! - **Bad input is an error.** Indices and ring positions read from shared memory are
//!   range-checked or clamped; nothing a peer writes makes this crate panic or access
//!   memory outside the region.
//!
//! What it does not do: parse or compile policies (that is `netvm-lang` and
//! `netvm-compiler`; the runtime takes a compiled classifier as an opaque function),
//! decode packets (`netvm-packet`), or print anything: it returns [`Backing`],
//! [`numa::Placement`] and typed errors for the binary to report.

#[cfg(not(loom))]
pub mod classify;
#[cfg(not(loom))]
pub mod control;
#[cfg(not(loom))]
pub mod external;
#[cfg(not(loom))]
pub mod guest;
#[cfg(not(loom))]
pub use netvm_shm::layout;
pub use netvm_shm::mpmc;
#[cfg(not(loom))]
pub mod numa;
#[cfg(not(loom))]
pub mod policy;
#[cfg(not(loom))]
pub use netvm_shm::pool;
#[cfg(not(loom))]
pub mod port;
#[cfg(not(loom))]
pub use netvm_shm::region;
pub use netvm_shm::ring;
#[cfg(not(loom))]
pub mod stats;
#[cfg(not(loom))]
pub mod switch;
#[cfg(not(loom))]
pub use netvm_shm::vm;

#[cfg(not(loom))]
pub use classify::Classifier;
#[cfg(not(loom))]
pub use control::{AdminHandler, ControlClient, ControlError, ControlServer, ControlState};
#[cfg(not(loom))]
pub use external::{ExternalVm, ExternalVms, OnFailure};
#[cfg(not(loom))]
pub use layout::{LayoutError, RegionConfig, RegionLayout};
pub use mpmc::MpmcRing;
#[cfg(not(loom))]
pub use numa::{NumaError, Placement, PlacementRequest, Topology};
#[cfg(not(loom))]
pub use policy::{PolicyTable, Program, ProgramHandle, RuleAction};
#[cfg(not(loom))]
pub use pool::{PacketPool, PoolCache, PoolError};
#[cfg(not(loom))]
pub use region::{Backing, HugepagePolicy, RegionError, SharedRegion};
pub use ring::{Ring, RingConsumer, RingEnd, RingError, RingProducer};
#[cfg(not(loom))]
pub use switch::{IdlePolicy, RunReport, Switch, SwitchConfig, SwitchError, VmMode};
#[cfg(not(loom))]
pub use vm::{NetworkFunction, Verdict};
