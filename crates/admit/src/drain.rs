//! The `drained()` future: resolves once the limiter is closed and the last
//! permit is gone.

use crate::limiter::Limiter;
use crate::places::WakerPlaces;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// How many `drained()` futures can park at once.
pub(crate) type DrainWakers = WakerPlaces<8>;

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
        inner.drain.register(&mut self.place, cx);
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
        self.limiter.inner.drain.release(self.place);
    }
}
