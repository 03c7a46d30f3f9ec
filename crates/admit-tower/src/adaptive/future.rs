//! The response future of [`Adaptive`](super::Adaptive).

use super::layer::Shared;
use super::Classify;
use crate::{BoxError, Overloaded};
use admit::adaptive::Timer;
use admit::Permit;
use pin_project::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

/// The response future of [`Adaptive`](super::Adaptive): runs the inner
/// future, holding the request's permit, and reports the request's latency
/// and outcome when it completes.
#[pin_project]
pub struct ResponseFuture<F, C> {
    #[pin]
    inner: Option<F>,
    shed: Option<Overloaded>,
    running: Option<Running<C>>,
}

struct Running<C> {
    _permit: Option<Permit>,
    timer: Timer,
    shared: Arc<Shared>,
    classify: C,
}

impl<F, C> ResponseFuture<F, C> {
    pub(crate) fn shed(overloaded: Overloaded) -> Self {
        ResponseFuture {
            inner: None,
            shed: Some(overloaded),
            running: None,
        }
    }

    pub(crate) fn running(
        inner: F,
        permit: Option<Permit>,
        timer: Timer,
        shared: Arc<Shared>,
        classify: C,
    ) -> Self {
        ResponseFuture {
            inner: Some(inner),
            shed: None,
            running: Some(Running {
                _permit: permit,
                timer,
                shared,
                classify,
            }),
        }
    }
}

impl<F, C, Res, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<Res, E>>,
    E: Into<BoxError>,
    C: Classify<Res>,
{
    type Output = Result<Res, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Some(overloaded) = this.shed.take() {
            return Poll::Ready(Err(Box::new(overloaded)));
        }
        let inner = this
            .inner
            .as_mut()
            .as_pin_mut()
            .expect("ResponseFuture polled after completion");
        let result = ready!(inner.poll(cx)).map_err(Into::into);
        this.inner.set(None);
        if let Some(r) = this.running.take() {
            let outcome = r.classify.classify(result.as_ref());
            r.shared.sampler.finish(r.timer, outcome);
            // The permit goes with `r`: the request is over.
        }
        Poll::Ready(result)
    }
}

impl<F, C> std::fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("shed", &self.shed)
            .field("running", &self.running.is_some())
            .finish()
    }
}
