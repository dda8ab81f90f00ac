//! netvm's compiler: a checked [`Policy`](netvm_lang::Policy) → classifier IR → engines.
//!
//! The stages, in order: [`lower`] (policy → [`ir::Classifier`]: numbered atoms, payload
//! literals and regexes), [`ir`], [`interp`] (the reference interpreter, the oracle every
//! other engine is tested against), [`jit`] (the Cranelift JIT: native code over raw frames,
//! linear short-circuit code or a decision tree for large header-only rule sets). Beside
//! them, what runs on top of an engine: [`testing`] (a policy's `test` blocks), [`explain`] (`netvm explain`), [`flow_key`] (what a flow cache may key a header-only verdict on) and [`classbench`]
//! (ClassBench traces as frames, for `netvm classify`/`netvm bench`).
//!
//! This crate knows nothing of rings, ports or threads: the runtime takes a classifier from
//! here as an opaque function from frames to rule indices.

pub mod classbench;
pub mod explain;
pub mod flow_key;
pub mod interp;
pub mod ir;
pub mod jit;
pub mod lower;
pub mod openflow;
pub mod testing;

pub use interp::Interpreter;
pub use ir::{Classifier, NO_PORT};
pub use jit::{Jit, JitError};
pub use lower::lower;
