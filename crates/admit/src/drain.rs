//! The `drained()` future: resolves once the limiter is closed and the last
//! permit is gone.

use crate::inner::Inner;
use crate::loom::Arc;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Future returned by [`Limiter::drained`](crate::Limiter::drained): completes when the limiter is
/// closed and no permit is held.
#[must_use = "futures do nothing unless polled"]
pub struct Drained {
    inner: Arc<Inner>,
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
    pub(crate) fn new(inner: Arc<Inner>) -> Drained {
        Drained { inner, place: None }
    }
}

impl Future for Drained {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if this.inner.is_drained() {
            return Poll::Ready(());
        }
        this.inner.register_drain(&mut this.place, cx);
        // Re-check after registering so a drain between the first check
        // and the registration is not missed.
        if this.inner.is_drained() {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

impl Drop for Drained {
    fn drop(&mut self) {
        self.inner.release_drain(self.place);
    }
}
