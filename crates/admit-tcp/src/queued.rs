//! A connection waiting in the limiter's queue for a permit, up to a
//! deadline: what [`Policy::Wait`](crate::Policy::Wait) does with each
//! connection it holds.

use admit::{Acquire, Limiter, Permit, Rejected};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Sleep;

/// Waits in `limiter`'s FIFO queue for a permit for the connection `C`,
/// for at most a timeout. Resolves to the connection and the permit, or to
/// the connection and why it was not admitted: a timeout is recorded in
/// the limiter's health as [`Rejected::Timeout`]; the other reasons were
/// already counted by the limiter.
///
/// Needs a tokio runtime with the time driver.
#[must_use = "futures do nothing unless polled"]
pub(crate) struct Queued<C> {
    acquire: Acquire,
    deadline: Pin<Box<Sleep>>,
    conn: Option<C>,
    limiter: Limiter,
}

impl<C> Queued<C> {
    /// Queues `conn` for a permit from `limiter` for at most `timeout`,
    /// continuing an `acquire` that was already polled (and so may already
    /// hold its place in the queue).
    pub(crate) fn with_acquire(
        limiter: &Limiter,
        acquire: Acquire,
        conn: C,
        timeout: Duration,
    ) -> Queued<C> {
        Queued {
            acquire,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            conn: Some(conn),
            limiter: limiter.clone(),
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

// Nothing in `Queued` is structurally pinned: the acquire is `Unpin` and
// the sleep is boxed.
impl<C> Unpin for Queued<C> {}

impl<C> Future for Queued<C> {
    type Output = (C, Result<Permit, Rejected>);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let result = match Pin::new(&mut this.acquire).poll(cx) {
            Poll::Ready(r) => r,
            Poll::Pending => {
                if this.deadline.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.limiter.record_rejection(Rejected::Timeout);
                Err(Rejected::Timeout)
            }
        };
        let conn = this.conn.take().expect("Queued polled after it finished");
        Poll::Ready((conn, result))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wait_that_runs_out_is_counted_as_a_timeout() {
        let limiter = Limiter::builder()
            .capacity(1)
            .queue_limit(4)
            .build()
            .unwrap();
        let held = limiter.try_acquire().unwrap();
        let queued = Queued::with_acquire(
            &limiter,
            limiter.acquire(),
            "conn",
            Duration::from_millis(10),
        );
        let (conn, result) = queued.await;
        assert_eq!(conn, "conn");
        assert_eq!(result.unwrap_err(), Rejected::Timeout);
        assert_eq!(limiter.health().snapshot().rejected_total["timeout"], 1);
        drop(held);
    }
}
