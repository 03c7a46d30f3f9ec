//! A connection waiting in the limiter's queue for a permit, up to a
//! deadline: what [`Policy::Wait`](crate::Policy::Wait) does with each
//! connection it holds.

use admit::{AcquireUntil, Permit, Rejected};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Sleep;

/// The queue timeout, as the deadline of a connection's
/// [`acquire_until`](admit::Limiter::acquire_until): the limiter decides
/// the timeout, so it counts it as one and its wait-time histogram labels
/// the wait `timeout`.
///
/// The timer is made on the first poll, and `acquire_until` polls its
/// deadline only once the connection has had to queue: it starts when the
/// connection joins the line, and a connection admitted at once makes no
/// timer.
#[derive(Debug)]
pub(crate) struct QueueDeadline {
    timeout: Duration,
    timer: Option<Pin<Box<Sleep>>>,
}

impl QueueDeadline {
    pub(crate) fn after(timeout: Duration) -> QueueDeadline {
        QueueDeadline {
            timeout,
            timer: None,
        }
    }
}

impl Future for QueueDeadline {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let timeout = self.timeout;
        self.timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)))
            .as_mut()
            .poll(cx)
    }
}

/// Waits in the limiter's FIFO queue for a permit for the connection `C`,
/// for at most a timeout. Resolves to the connection and the permit, or to
/// the connection and why it was not admitted, every reason (a timeout
/// too) counted by the limiter.
///
/// Needs a tokio runtime with the time driver.
#[must_use = "futures do nothing unless polled"]
pub(crate) struct Queued<C> {
    acquire: AcquireUntil<QueueDeadline>,
    conn: Option<C>,
}

impl<C> Queued<C> {
    /// Queues `conn`, continuing an `acquire` that was already polled (and
    /// so may already hold its place in the queue).
    pub(crate) fn new(acquire: AcquireUntil<QueueDeadline>, conn: C) -> Queued<C> {
        Queued {
            acquire,
            conn: Some(conn),
        }
    }
}

impl<C> std::fmt::Debug for Queued<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queued")
            .field("done", &self.conn.is_none())
            .finish_non_exhaustive()
    }
}

// Nothing in `Queued` is structurally pinned: the acquire is `Unpin` (its
// deadline's timer is boxed).
impl<C> Unpin for Queued<C> {}

impl<C> Future for Queued<C> {
    type Output = (C, Result<Permit, Rejected>);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let result = std::task::ready!(Pin::new(&mut this.acquire).poll(cx));
        let conn = this.conn.take().expect("Queued polled after it finished");
        Poll::Ready((conn, result))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use admit::Limiter;

    #[tokio::test]
    async fn a_wait_that_runs_out_is_counted_as_a_timeout() {
        let limiter = Limiter::builder()
            .capacity(1)
            .queue_limit(4)
            .build()
            .unwrap();
        let held = limiter.try_acquire().unwrap();
        let acquire = limiter.acquire_until(QueueDeadline::after(Duration::from_millis(10)));
        let (conn, result) = Queued::new(acquire, "conn").await;
        assert_eq!(conn, "conn");
        assert_eq!(result.unwrap_err(), Rejected::Timeout);
        assert_eq!(limiter.waiting(), 0);
        assert_eq!(limiter.health().snapshot().rejected_total["timeout"], 1);
        drop(held);
    }
}
