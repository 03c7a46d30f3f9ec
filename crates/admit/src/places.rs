//! A small fixed set of waker places for the few futures that wait on a
//! limiter-wide event (the drain, a change of health state).
//!
//! Such waiters are few, so they park in a fixed array instead of a list
//! (which would need a lock or unsafe code). A future that finds every place
//! taken asks to be polled again at once instead of parking: slower, but it
//! never misses the event.

use crate::loom::{AtomicBool, AtomicWaker, Ordering};
use std::task::Context;

pub(crate) struct WakerPlaces<const N: usize> {
    taken: [AtomicBool; N],
    wakers: [AtomicWaker; N],
}

impl<const N: usize> WakerPlaces<N> {
    pub(crate) fn new() -> Self {
        WakerPlaces {
            taken: std::array::from_fn(|_| AtomicBool::new(false)),
            wakers: std::array::from_fn(|_| AtomicWaker::new()),
        }
    }

    /// Registers the caller's waker in `place`, taking a place first if it
    /// has none.
    pub(crate) fn register(&self, place: &mut Option<usize>, cx: &mut Context<'_>) {
        if place.is_none() {
            *place = (0..N).find(|&i| {
                self.taken[i]
                    .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            });
        }
        match *place {
            Some(i) => self.wakers[i].register(cx.waker()),
            None => cx.waker().wake_by_ref(),
        }
    }

    /// Gives a place back (from the waiting future's `Drop`).
    pub(crate) fn release(&self, place: Option<usize>) {
        if let Some(i) = place {
            self.taken[i].store(false, Ordering::Release);
        }
    }

    pub(crate) fn wake_all(&self) {
        for w in &self.wakers {
            w.wake();
        }
    }
}
