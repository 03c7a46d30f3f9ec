//! One place that chooses between the real synchronisation primitives and
//! loom's model-checked ones, so the rest of the crate never names either.
//!
//! Build with `RUSTFLAGS="--cfg admit_loom"` to run the loom models.

#[cfg(admit_loom)]
pub(crate) use loom::{
    sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    sync::Arc,
};

/// A waker cell with one interface whichever implementation is underneath.
#[derive(Default)]
pub(crate) struct AtomicWaker {
    #[cfg(admit_loom)]
    inner: loom::future::AtomicWaker,
    #[cfg(not(admit_loom))]
    inner: futures_util::task::AtomicWaker,
}

impl AtomicWaker {
    pub(crate) fn new() -> AtomicWaker {
        AtomicWaker::default()
    }

    pub(crate) fn register(&self, waker: &std::task::Waker) {
        #[cfg(admit_loom)]
        self.inner.register_by_ref(waker);
        #[cfg(not(admit_loom))]
        self.inner.register(waker);
    }

    pub(crate) fn wake(&self) {
        self.inner.wake();
    }
}
#[cfg(not(admit_loom))]
pub(crate) use std::sync::{
    atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    Arc,
};

/// Gives the CPU (or, under loom, the model) to another thread. Used only in
/// the one pathological case documented in `queue.rs`.
pub(crate) fn yield_now() {
    #[cfg(admit_loom)]
    loom::thread::yield_now();
    #[cfg(not(admit_loom))]
    std::thread::yield_now();
}
