//! The `drained()` future: resolves once the limiter is closed and the last
//! permit is gone.
//!
//! Waiters for the drain are few (a shutdown path or two), so they park in a
//! small fixed array of wakers; a waiter that finds every place taken polls
//! again on its next wake-up instead of parking, which is slower but never
//! misses the drain.

use crate::limiter::Limiter;
use crate::loom::{AtomicBool, AtomicWaker, Ordering};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

const PLACES: usize = 8;

pub(crate) struct DrainWakers {
    taken: [AtomicBool; PLACES],
    wakers: [AtomicWaker; PLACES],
}

impl DrainWakers {
    pub(crate) fn new() -> DrainWakers {
        DrainWakers {
            taken: std::array::from_fn(|_| AtomicBool::new(false)),
            wakers: std::array::from_fn(|_| AtomicWaker::new()),
        }
    }

    pub(crate) fn wake_all(&self) {
        for w in &self.wakers {
            w.wake();
        }
    }

    fn take_place(&self) -> Option<usize> {
        (0..PLACES).find(|&i| {
            self.taken[i]
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        })
    }
}

/// Future returned by [`Limiter::drained`]: completes when the limiter is
/// closed and no permit is held.
#[must_use = "futures do nothing unless polled"]
pub struct Drained {
    limiter: Limiter,
    place: Option<usize>,
}

impl std::fmt::Debug for Drained {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Drained")
            .field("place", &self.place)
            .finish()
    }
}

impl Drained {
    pub(crate) fn new(limiter: Limiter) -> Drained {
        Drained {
            limiter,
            place: None,
        }
    }
}

impl Future for Drained {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.limiter.is_drained() {
            return Poll::Ready(());
        }
        let inner = self.limiter.inner.clone();
        if self.place.is_none() {
            self.place = inner.drain.take_place();
        }
        match self.place {
            Some(i) => inner.drain.wakers[i].register(cx.waker()),
            None => cx.waker().wake_by_ref(),
        }
        // Re-check after registering so a drain between the first check
        // and the registration is not missed.
        if self.limiter.is_drained() {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

impl Drop for Drained {
    fn drop(&mut self) {
        if let Some(i) = self.place {
            self.limiter.inner.drain.taken[i].store(false, Ordering::Release);
        }
    }
}
