//! The `acquire()` future: wait in the FIFO queue for a permit; and
//! `acquire_until()`, the same wait bounded by a deadline future.

use crate::error::Rejected;
use crate::inner::{Entry, Inner, Parking};
use crate::loom::Arc;
use crate::permit::Permit;
use crate::telemetry::WaitClock;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Future returned by [`Limiter::acquire`](crate::Limiter::acquire).
///
/// Cancel-safe: dropping it before it completes leaves the limiter as if it
/// had never been called, and a permit granted to it in the meantime goes to
/// the next waiter.
#[must_use = "futures do nothing unless polled"]
pub struct Acquire {
    inner: Arc<Inner>,
    phase: Phase,
    /// How long it queued, for the wait-time histogram (feature `metrics`).
    waited: WaitClock,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Start,
    Parked { ticket: u32, slot: u32, gen: u64 },
    Done,
}

impl std::fmt::Debug for Acquire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acquire")
            .field("phase", &self.phase)
            .finish()
    }
}

impl Acquire {
    pub(crate) fn new(inner: Arc<Inner>) -> Acquire {
        Acquire {
            inner,
            phase: Phase::Start,
            waited: WaitClock::default(),
        }
    }

    fn reject(&mut self, reason: Rejected) -> Poll<Result<Permit, Rejected>> {
        Poll::Ready(Err(self.reject_now(reason)))
    }

    /// Ends the wait with `reason`, counted.
    fn reject_now(&mut self, reason: Rejected) -> Rejected {
        self.phase = Phase::Done;
        self.waited.stop(self.inner.name(), reason.as_str());
        self.inner.count_rejection(reason);
        reason
    }

    fn permit(&mut self, lease: crate::inner::Lease) -> Permit {
        self.phase = Phase::Done;
        self.waited.stop(self.inner.name(), "granted");
        Permit::new(crate::stash::clone(&self.inner), lease)
    }

    /// Leaves the queue now, as a drop would, but hands back a permit
    /// granted meanwhile (counted as an admission) instead of passing it on.
    fn leave(&mut self) -> Option<Permit> {
        let Phase::Parked { ticket, slot, gen } = self.phase else {
            self.phase = Phase::Done;
            return None;
        };
        let permit = self.cancel(ticket, slot, gen)?;
        permit.count_admission();
        Some(permit)
    }

    /// Leaves the queue. Returns a permit if one was granted meanwhile.
    fn cancel(&mut self, ticket: u32, slot: u32, gen: u64) -> Option<Permit> {
        self.phase = Phase::Done;
        let lease = self.inner.cancel(ticket, slot, gen)?;
        Some(self.permit(lease))
    }

    /// Looks for a grant or a close; if neither, registers the waker and
    /// looks again (a grant between the look and the registration woke
    /// the old waker). `registered`: this poll's waker is registered
    /// already (by `park`), so one look is enough.
    fn poll_parked(
        &mut self,
        cx: &mut Context<'_>,
        ticket: u32,
        slot: u32,
        gen: u64,
        mut registered: bool,
    ) -> Poll<Result<Permit, Rejected>> {
        loop {
            if self.inner.is_granted(slot, gen) {
                let lease = self.inner.take_grant(slot, gen, true);
                return Poll::Ready(Ok(self.permit(lease)));
            }
            if self.inner.load().closed() {
                return match self.cancel(ticket, slot, gen) {
                    // Granted before the close: a real permit.
                    Some(permit) => {
                        permit.count_admission();
                        Poll::Ready(Ok(permit))
                    }
                    None => self.reject(Rejected::Closed),
                };
            }
            if registered {
                return Poll::Pending;
            }
            self.inner.register_waiter(slot, cx.waker());
            registered = true;
        }
    }
}

impl Future for Acquire {
    type Output = Result<Permit, Rejected>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        match this.phase {
            Phase::Done => panic!("Acquire polled after completion"),
            Phase::Parked { ticket, slot, gen } => this.poll_parked(cx, ticket, slot, gen, false),
            Phase::Start => {
                let ticket = match this.inner.enter() {
                    Err(reason) => return this.reject(reason),
                    Ok(Entry::Counted(lease)) => return Poll::Ready(Ok(this.permit(lease))),
                    Ok(Entry::Ticket(t)) => {
                        this.waited.start();
                        t
                    }
                };
                match this.inner.park(ticket, cx.waker()) {
                    Err(reason) => this.reject(reason),
                    Ok(Parking::Granted(lease)) => Poll::Ready(Ok(this.permit(lease))),
                    Ok(Parking::Parked(slot, gen)) => {
                        this.phase = Phase::Parked { ticket, slot, gen };
                        this.poll_parked(cx, ticket, slot, gen, true)
                    }
                }
            }
        }
    }
}

impl Drop for Acquire {
    fn drop(&mut self) {
        if let Phase::Parked { ticket, slot, gen } = self.phase {
            self.waited.stop(self.inner.name(), "cancelled");
            // A permit granted just before the drop is dropped in turn, which
            // passes it to the next waiter.
            drop(self.cancel(ticket, slot, gen));
        }
    }
}

pin_project_lite::pin_project! {
    /// Future returned by [`Limiter::acquire_until`](crate::Limiter::acquire_until):
    /// [`Acquire`] with a deadline.
    ///
    /// Cancel-safe like `Acquire`: dropping it leaves no trace.
    #[must_use = "futures do nothing unless polled"]
    pub struct AcquireUntil<F> {
        acquire: Acquire,
        #[pin]
        deadline: F,
    }
}

impl<F> AcquireUntil<F> {
    pub(crate) fn new(acquire: Acquire, deadline: F) -> AcquireUntil<F> {
        AcquireUntil { acquire, deadline }
    }
}

impl<F> std::fmt::Debug for AcquireUntil<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcquireUntil")
            .field("acquire", &self.acquire)
            .finish_non_exhaustive()
    }
}

impl<F: Future> Future for AcquireUntil<F> {
    type Output = Result<Permit, Rejected>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        // The permit first: a grant that arrives with the deadline wins, and
        // a free permit is taken without consulting the timer at all.
        if let Poll::Ready(result) = Pin::new(&mut *this.acquire).poll(cx) {
            return Poll::Ready(result);
        }
        if this.deadline.poll(cx).is_pending() {
            return Poll::Pending;
        }
        // Out of time: leave the queue now rather than at drop, so the
        // count and the queue are right before the caller sees the error.
        Poll::Ready(match this.acquire.leave() {
            Some(permit) => Ok(permit),
            None => Err(this.acquire.reject_now(Rejected::Timeout)),
        })
    }
}
