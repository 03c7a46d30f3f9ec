//! The admission step both services share: take a permit at `call`, or wait
//! for one, then call the inner service.

use crate::error::Overloaded;
use admit::{AcquireUntil, Limiter, Permit};
use futures_util::task::noop_waker_ref;
use pin_project::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::time::Sleep;
use tower_service::Service;

/// What a layer does when the limiter has no free permit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnFull {
    /// Fail the request at once with [`Overloaded`] (the default).
    #[default]
    Shed,
    /// Wait in the limiter's FIFO queue (sized by
    /// [`admit::Builder::queue_limit`]); shed only when the queue is full or
    /// the limiter is closed, or when the request has waited longer than
    /// the layer's queue timeout, if it has one.
    Queue,
}

/// The configuration every service clone shares.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) limiter: Limiter,
    pub(crate) on_full: OnFull,
    pub(crate) retry_after: Duration,
    /// How long a request may wait in the queue; `None` waits as long as
    /// it takes.
    pub(crate) queue_timeout: Option<Duration>,
}

impl Config {
    pub(crate) fn new(limiter: Limiter) -> Config {
        Config {
            limiter,
            on_full: OnFull::Shed,
            retry_after: crate::DEFAULT_RETRY_AFTER,
            queue_timeout: None,
        }
    }

    /// The admission step of `call`. `inner` has been driven ready by the
    /// caller's `poll_ready`.
    pub(crate) fn call<S, Req>(&self, inner: &mut S, req: Req) -> Admission<S, Req>
    where
        S: Service<Req> + Clone,
    {
        let granted = match self.on_full {
            OnFull::Shed => self.limiter.try_acquire(),
            OnFull::Queue => {
                // Enter the queue now, in `call`, so the request keeps its
                // place in line; the first poll either admits at once or
                // parks a ticket that later polls pick up. The limiter
                // decides the timeout, so it counts it and the wait-time
                // histogram labels it `timeout`, as for any other caller.
                let mut acquire = self
                    .limiter
                    .acquire_until(QueueDeadline::new(self.queue_timeout));
                let mut cx = Context::from_waker(noop_waker_ref());
                match Pin::new(&mut acquire).poll(&mut cx) {
                    Poll::Ready(granted) => granted,
                    Poll::Pending => {
                        // The request must not reach the inner service
                        // before it is admitted, so take the ready service
                        // along and leave a fresh clone behind for the next
                        // `poll_ready`.
                        let fresh = inner.clone();
                        let ready = std::mem::replace(inner, fresh);
                        return Admission::Waiting {
                            acquire,
                            pending: Some((ready, req)),
                            retry_after: self.retry_after,
                        };
                    }
                }
            }
        };
        match granted {
            Ok(permit) => Admission::Called {
                future: inner.call(req),
                permit: Some(permit),
            },
            Err(reason) => Admission::Shed {
                error: Some(Overloaded::new(reason, self.retry_after)),
            },
        }
    }
}

/// The queue timeout, as the deadline of the request's `acquire_until`.
///
/// The timer is made on the first poll, and `acquire_until` polls its
/// deadline only once the request has had to queue: it starts when the
/// request joins the line, and a request admitted at once makes no timer
/// (nor needs tokio's time driver). Without a timeout it never fires.
#[derive(Debug)]
pub(crate) struct QueueDeadline {
    timeout: Option<Duration>,
    timer: Option<Pin<Box<Sleep>>>,
}

impl QueueDeadline {
    fn new(timeout: Option<Duration>) -> QueueDeadline {
        QueueDeadline {
            timeout,
            timer: None,
        }
    }
}

impl Future for QueueDeadline {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let Some(timeout) = self.timeout else {
            return Poll::Pending;
        };
        self.timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)))
            .as_mut()
            .poll(cx)
    }
}

/// The shared state machine of the response futures.
#[pin_project(project = AdmissionProj)]
pub(crate) enum Admission<S, Req>
where
    S: Service<Req>,
{
    Shed {
        error: Option<Overloaded>,
    },
    Waiting {
        #[pin]
        acquire: AcquireUntil<QueueDeadline>,
        pending: Option<(S, Req)>,
        retry_after: Duration,
    },
    Called {
        #[pin]
        future: S::Future,
        permit: Option<Permit>,
    },
}

/// What an admission ends with: the inner service's result and the permit
/// it ran under, or the reason it never ran.
pub(crate) type Outcome<R, E> = Result<(Result<R, E>, Permit), Overloaded>;

impl<S, Req> Admission<S, Req>
where
    S: Service<Req>,
{
    pub(crate) fn poll_outcome(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Outcome<S::Response, S::Error>> {
        loop {
            match self.as_mut().project() {
                AdmissionProj::Shed { error } => {
                    let error = error.take().expect("polled after completion");
                    return Poll::Ready(Err(error));
                }
                AdmissionProj::Waiting {
                    acquire,
                    pending,
                    retry_after,
                } => {
                    let granted = ready!(acquire.poll(cx));
                    let (mut service, req) = pending.take().expect("polled after completion");
                    match granted {
                        Ok(permit) => {
                            let future = service.call(req);
                            self.set(Admission::Called {
                                future,
                                permit: Some(permit),
                            });
                        }
                        Err(reason) => {
                            let error = Overloaded::new(reason, *retry_after);
                            self.set(Admission::Shed { error: None });
                            return Poll::Ready(Err(error));
                        }
                    }
                }
                AdmissionProj::Called { future, permit } => {
                    let result = ready!(future.poll(cx));
                    let permit = permit.take().expect("polled after completion");
                    return Poll::Ready(Ok((result, permit)));
                }
            }
        }
    }
}

impl<S, Req> std::fmt::Debug for Admission<S, Req>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Admission::Shed { error } => f.debug_struct("Shed").field("error", error).finish(),
            Admission::Waiting { acquire, .. } => {
                f.debug_struct("Waiting").field("acquire", acquire).finish()
            }
            Admission::Called { permit, .. } => {
                f.debug_struct("Called").field("permit", permit).finish()
            }
        }
    }
}
