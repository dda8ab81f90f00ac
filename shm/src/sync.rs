//! The atomics and cells the data structures are built from, switched to `loom`'s
//! model-checked versions under `--cfg loom`.
//!
//! Only the ring modules use this shim; the region and the pool, which place these
//! structures in mmap'd memory, are not compiled under loom (a loom atomic is a model
//! object, not four bytes you can put in a shared page). This module does nothing else.

#[cfg(loom)]
pub(crate) use loom::cell::UnsafeCell;
#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU32, Ordering};

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicU32, Ordering};

/// `std::cell::UnsafeCell` with loom's closure-based access API, so the ring code is
/// written once for both builds. `repr(transparent)`: in shared memory it is just a `T`.
#[cfg(not(loom))]
#[repr(transparent)]
#[derive(Debug)]
pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    pub(crate) const fn new(value: T) -> Self {
        Self(std::cell::UnsafeCell::new(value))
    }

    #[inline(always)]
    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    #[inline(always)]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

/// Back off inside a retry loop. Under loom this yields so the model checker can run
/// the thread that will let us make progress.
#[inline(always)]
pub(crate) fn spin_hint() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::hint::spin_loop();
}
