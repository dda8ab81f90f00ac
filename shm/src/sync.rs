//! The atomics and cells the data structures are built from, switched to `loom`'s
//! model-checked versions under `--cfg loom`.
//!
//! Also the futex the rings' doorbells sleep on ([`futex_wait`], [`futex_wake`]).
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

/// A full (SeqCst) fence: orders a store before a later load of another location, which
/// Release/Acquire alone do not (the rings' doorbell needs it on both sides).
#[inline(always)]
pub(crate) fn fence_seq_cst() {
    #[cfg(loom)]
    loom::sync::atomic::fence(Ordering::SeqCst);
    #[cfg(not(loom))]
    std::sync::atomic::fence(Ordering::SeqCst);
}

/// Sleep while `word` holds `expected`, at most `timeout` (may return early). A shared
/// (not process-private) futex: the word may live in a region another process maps.
#[cfg(not(loom))]
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: std::time::Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `word` is a live, aligned 4-byte atomic for the duration of the call (the
    // kernel only compares it with `expected` and queues us on its address); `ts` is a
    // valid timespec on our stack. Any error (EAGAIN: the word changed, EINTR, ETIMEDOUT)
    // just means "poll again".
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
        );
    }
}

/// Under loom a wait is a yield (a futex may always wake spuriously).
#[cfg(loom)]
pub(crate) fn futex_wait(_word: &AtomicU32, _expected: u32, _timeout: std::time::Duration) {
    loom::thread::yield_now();
}

/// Wake whoever sleeps on `word` ([`futex_wait`]).
#[cfg(not(loom))]
pub(crate) fn futex_wake(word: &AtomicU32) {
    // SAFETY: `word` is a live, aligned atomic; FUTEX_WAKE only uses its address.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, i32::MAX);
    }
}

#[cfg(loom)]
pub(crate) fn futex_wake(_word: &AtomicU32) {}
