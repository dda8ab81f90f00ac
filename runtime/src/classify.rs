//! The one thing the runtime needs from the compiler: frames in, rule indices out.
//!
//! The switch calls [`Classifier::classify_burst`] once per RX burst. An implementation
//! (the `netvm-compiler` interpreter or its Cranelift JIT, adapted in the binary) writes,
//! for each frame, the index of the first matching rule, or [`Classifier::n_rules`] when
//! the default applies. This crate never looks inside a classifier and does not depend on
//! the compiler; keeping this trait tiny is what lets the data flow one way.

/// A compiled policy, as the switch sees it.
pub trait Classifier: Send + Sync {
    /// Rules in the policy; the value `classify_burst` writes for the default.
    fn n_rules(&self) -> usize;

    /// `out[i]` = rule index of `frames[i]` (all received on `in_port`), or `n_rules()`.
    /// `out` is at least as long as `frames`.
    fn classify_burst(&self, frames: &[&[u8]], in_port: u32, out: &mut [u32]);
}

/// Sends every packet to the default; for tests and for a policy with no rules.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultOnly;

impl Classifier for DefaultOnly {
    fn n_rules(&self) -> usize {
        0
    }

    fn classify_burst(&self, frames: &[&[u8]], _in_port: u32, out: &mut [u32]) {
        out[..frames.len()].fill(0);
    }
}

impl<F> Classifier for (usize, F)
where
    F: Fn(&[u8], u32) -> u32 + Send + Sync,
{
    fn n_rules(&self) -> usize {
        self.0
    }

    fn classify_burst(&self, frames: &[&[u8]], in_port: u32, out: &mut [u32]) {
        for (frame, slot) in frames.iter().zip(out.iter_mut()) {
            *slot = (self.1)(frame, in_port);
        }
    }
}
