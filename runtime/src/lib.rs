//! netvm's runtime foundation (work in progress).

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
pub use layout::{RegionConfig, RegionLayout};
pub use mpmc::MpmcRing;
#[cfg(not(loom))]
pub use pool::{PacketPool, PoolCache, PoolError};
#[cfg(not(loom))]
pub use region::{Backing, HugepagePolicy, RegionError, SharedRegion};
pub use ring::{Ring, RingConsumer, RingEnd, RingError, RingProducer};
