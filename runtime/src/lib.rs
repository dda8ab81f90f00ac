//! netvm's runtime foundation (work in progress).

pub mod ring;
mod sync;

pub use ring::{Ring, RingConsumer, RingEnd, RingError, RingProducer};
