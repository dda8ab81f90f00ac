//! netvm's wire layer: where every byte of a frame is, and nothing else.
//!
//! - [`field`]: the `.nvr` field catalogue (names, types, owning header).
//! - [`decode`]: [`Decoded`], a zero-copy view over a raw Ethernet frame that applies the
//!   language's absent-header rules (a field is present only when its header is complete inside
//!   the captured bytes and well formed; the exact rules, payload bounds included, are in the
//!   module doc), [`Offsets`] (where the layers start) and [`format_value`]. It never reads out
//!   of bounds and never panics, for any input, including an empty slice.
//! - [`build`]: [`PacketSpec`], the owned description of a test packet, and the frame builder
//!   that `netvm test`, `netvm explain` and the ClassBench importer use.
//! - [`hash`]: flow hashing for `balance` (symmetric Toeplitz, as NICs use for RSS, for
//!   `by flow`; the standard-key Toeplitz over chosen values for `by FIELD`).
//!
//! Decoding and hashing use only the standard library (no `unsafe`); the builder writes bytes
//! by hand, and the tests check its frames with etherparse.
//!
//! This crate knows nothing of policies, rules or rings.

pub mod build;
pub mod decode;
pub mod field;
pub mod hash;

pub use build::{BaseProto, BuildError, PacketSpec};
pub use decode::{format_value, Decoded, Offsets};
pub use field::{Field, FieldHeader, FieldType, Proto};
